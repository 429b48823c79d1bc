use super::*;

#[test]
fn parses_the_spec_example() {
    let line = br#"{"resourceType": "gameserver", "namespace": "game-servers",
            "labelSelector": {"agones.dev/fleet": "m-tutorial", "map": "de_dust2"},
            "annotationSelector": {"status": "accepting"},
            "statusQuery": {"jsonPath": "status.state", "expectedValues": ["Ready", "Allocated"]}}"#;
    let r = parse_request(line).unwrap();
    assert_eq!(r.resource_type, "gameserver");
    assert_eq!(r.namespace.as_deref(), Some("game-servers"));
    assert_eq!(r.label_selector["map"], "de_dust2");
    let sq = r.status_query.unwrap();
    assert_eq!(sq.expected().collect::<Vec<_>>(), ["Ready", "Allocated"]);
}

#[test]
fn expected_value_accepts_one_string_and_scalars() {
    let r = parse_request(br#"{"resourceType":"x","statusQuery":{"jsonPath":"$.a","expectedValue":"Ready","expectedValues":[7777,true]}}"#).unwrap();
    assert_eq!(
        r.status_query.unwrap().expected().collect::<Vec<_>>(),
        ["Ready", "7777", "true"]
    );
}

#[test]
fn bad_requests_say_what_is_wrong() {
    let cases: [(&[u8], &str); 8] = [
        (b"not json", "expected one JSON object"),
        (b"{\"resourceType\": 5}", "invalid type"),
        (
            b"{\"resourceType\":\"x\",\"colour\":1}",
            "unknown field `colour`",
        ),
        (b"{}", "missing field `resourceType`"),
        (b"\xff\xfe", "not valid UTF-8"),
        (b"{\"resourceType\":\"\"}", "must not be empty"),
        (
            b"{\"resourceType\":\"x\",\"statusQuery\":{\"jsonPath\":\"a\"}}",
            "expectedValue",
        ),
        (b"{\"resourceType\":\"x\x00\"}", "control character"),
    ];
    for (line, needle) in cases {
        let e = parse_request(line).unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest);
        assert!(e.message.contains(needle), "{:?} -> {}", line, e.message);
    }
}

#[test]
fn deeply_nested_json_is_a_bad_request_not_a_stack_overflow() {
    let mut line = b"{\"resourceType\":\"x\",\"labelSelector\":".to_vec();
    line.extend(std::iter::repeat_n(b'[', 100_000));
    let e = parse_request(&line).unwrap_err();
    assert_eq!(e.code, ErrorCode::BadRequest);
}

#[test]
fn json_path_forms_normalise_to_dollar_rooted() {
    for p in [
        "status.state",
        ".status.state",
        "$.status.state",
        "{.status.state}",
    ] {
        assert_eq!(normalize_json_path(p).unwrap(), "$.status.state", "{p}");
    }
    assert_eq!(
        normalize_json_path("status.ports[?(@.name==\"default\")].port").unwrap(),
        "$.status.ports[?(@.name==\"default\")].port"
    );
    assert!(normalize_json_path("{.status").is_err());
    assert!(normalize_json_path("").is_err());
    assert!(normalize_json_path("$[").is_err());
}

#[test]
fn answers_render_as_one_line() {
    let ok = render(&Ok(TokenAnswer {
        resume_seconds: None,
        token: "t".into(),
        ttl_seconds: 30,
        target: TargetRef::new("ns", "gs", None),
    }));
    assert_eq!(
        ok,
        b"{\"token\":\"t\",\"ttlSeconds\":30,\"target\":{\"namespace\":\"ns\",\"name\":\"gs\"}}\n"
    );
    let err = render(&Err(QueryError::new(ErrorCode::NoMatch, "none")));
    assert_eq!(
        err,
        b"{\"error\":{\"code\":\"no_match\",\"message\":\"none\"}}\n"
    );
    let exposed = TargetRef::new("ns", "gs", Some("10.0.0.1:7654".parse().unwrap()));
    assert_eq!(exposed.address.as_deref(), Some("10.0.0.1"));
    assert_eq!(exposed.port, Some(7654));
}

#[test]
fn player_ids_are_checked_for_length_and_characters() {
    let ok = parse_request(br#"{"resourceType":"gs","playerId":"p-42@eu:a_b.c"}"#).unwrap();
    assert_eq!(ok.player_id.as_deref(), Some("p-42@eu:a_b.c"));
    let uuid = uuid::Uuid::new_v4().to_string();
    let line = format!(r#"{{"resourceType":"gs","playerId":"{uuid}"}}"#);
    assert!(parse_request(line.as_bytes()).is_ok(), "a UUID fits");
    for bad in [
        r#""""#.to_string(),
        format!(r#""{}""#, "x".repeat(PLAYER_ID_MAX + 1)),
        r#""a b""#.to_string(),
        r#""<script>""#.to_string(),
        r#""é""#.to_string(),
        "42".to_string(),
    ] {
        let line = format!(r#"{{"resourceType":"gs","playerId":{bad}}}"#);
        let e = parse_request(line.as_bytes()).unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest, "{bad}: {}", e.message);
    }
}

#[test]
fn client_paths_are_bounded_in_length_depth_descents_roots_and_commas() {
    for ok in [
        "status.state",
        "{.status.state}",
        " $.status.ports[?(@.name==\"default\")].port",
        "$..port",
        "status.ports[?(@.name=='a,b,c,d,e,f' && @.x == '$..y')].port",
        "a[?(@.b[?(@.c[?(@.d)])])]",
    ] {
        assert_eq!(check_client_path(ok), Ok(()), "{ok}");
    }
    let long = format!("status.{}", "a".repeat(CLIENT_PATH_MAX_BYTES));
    for (bad, why) in [
        (long.as_str(), "longer than"),
        ("a[?(@.b[?(@.c[?(@.d[?(@.e[?(@.f)])])])])]", "nest 10 deep"),
        ("$..a..b", "recursive descent"),
        ("$...a", "recursive descent"),
        ("a[?($.b == 1)]", "`$` may only start"),
        ("a[*,*][*,*][*,*][*,*][*,*]", "commas"),
    ] {
        let e = check_client_path(bad).unwrap_err();
        assert!(e.reason.contains(why), "{bad}: {}", e.reason);
    }
    let e = parse_request(
        br#"{"resourceType":"gs","statusQuery":{"jsonPath":"$..a..b","expectedValue":"x"}}"#,
    )
    .unwrap_err();
    assert_eq!(e.code, ErrorCode::BadRequest);
}
