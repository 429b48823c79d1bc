use super::*;

const MINIMAL: &str = "resourceQueryMapping:\n  echo:\n    static:\n      - {name: a, address: 127.0.0.1, port: 9001}\n";

fn err(yaml: &str) -> String {
    ValidConfig::from_yaml(yaml).unwrap_err().to_string()
}

#[test]
fn defaults_match_the_spec() {
    let c = ValidConfig::from_yaml(MINIMAL).unwrap();
    assert_eq!(c.query_addr.port(), 9000);
    assert_eq!(c.data_addr.port(), 7777);
    assert_eq!(c.admin_addr.port(), 8080);
    assert_eq!(c.token_ttl, Duration::from_secs(30));
    assert_eq!(c.session_timeout, Duration::from_secs(300));
    assert_eq!(c.max_sessions, 100_000);
    assert_eq!(c.drain, Duration::from_secs(10));
    assert!(!c.token_policy.single_use);
    assert_eq!(c.magic, b"\xff\xff\xff\xffRESET");
    assert_eq!(c.limits.query_max_bytes, 16384);
    assert_eq!(c.limits.query_idle_timeout_seconds, 10);
    assert_eq!(c.limits.max_query_connections, 10_000);
    assert_eq!(c.limits.max_pending_tcp_lines, 10_000);
    assert_eq!(c.limits.query_rate_per_second, 50);
    assert_eq!(c.limits.query_burst, 100);
    assert_eq!(
        c.mappings["echo"].load_balancing,
        LoadBalancing::LeastSessions
    );
    assert_eq!(c.query_addr.ip().to_string(), "0.0.0.0");
    assert_eq!(c.busy_poll, Duration::from_micros(100));
    assert!(c.default_endpoint.is_none());
}

#[test]
fn token_ttl_accepts_both_spellings() {
    let a = ValidConfig::from_yaml(&format!("tokenTTLSeconds: 7\n{MINIMAL}")).unwrap();
    let b = ValidConfig::from_yaml(&format!("tokenTtlSeconds: 7\n{MINIMAL}")).unwrap();
    assert_eq!(a.token_ttl, Duration::from_secs(7));
    assert_eq!(b.token_ttl, Duration::from_secs(7));
}

#[test]
fn bad_magic_names_the_key() {
    let e = err(&format!("controlPacketMagicBytes: ZZ\n{MINIMAL}"));
    assert!(e.contains("controlPacketMagicBytes"), "{e}");
    assert!(e.contains("not hex"), "{e}");
    let e = err(&format!("controlPacketMagicBytes: \"\"\n{MINIMAL}"));
    assert!(e.contains("1..=32 bytes"), "{e}");
    let long = "AB".repeat(33);
    let e = err(&format!("controlPacketMagicBytes: {long}\n{MINIMAL}"));
    assert!(e.contains("found 33"), "{e}");
}

#[test]
fn unknown_load_balancing_type_is_rejected() {
    let e = err(&format!("loadBalancing: {{type: fastest}}\n{MINIMAL}"));
    assert!(e.contains("loadBalancing"), "{e}");
    assert!(e.contains("fastest"), "{e}");
}

#[test]
fn static_endpoint_without_address_names_the_path() {
    let e = err("resourceQueryMapping:\n  echo:\n    static:\n      - {name: a, port: 9001}\n");
    assert!(e.contains("address"), "{e}");
    assert!(e.contains("resourceQueryMapping.echo.static[0]"), "{e}");
}

#[test]
fn endpoint_port_zero_is_rejected_but_listener_port_zero_is_ephemeral() {
    let e = err(
        "resourceQueryMapping:\n  echo:\n    static:\n      - {name: a, address: 127.0.0.1, port: 0}\n",
    );
    assert!(
        e.contains("resourceQueryMapping.echo.static[0].port"),
        "{e}"
    );
    let c = ValidConfig::from_yaml(&format!(
        "queryPort: 0\ndataPort: 0\nadminPort: 0\n{MINIMAL}"
    ))
    .unwrap();
    assert_eq!(c.query_addr.port(), 0);
}

#[test]
fn duplicate_endpoint_names_are_rejected() {
    let e = err(
        "resourceQueryMapping:\n  echo:\n    static:\n      - {name: a, address: 127.0.0.1, port: 1}\n      - {name: a, address: 127.0.0.1, port: 2}\n",
    );
    assert!(e.contains("duplicate endpoint name `a`"), "{e}");
    assert!(e.contains("static[1].name"), "{e}");
}

#[test]
fn unknown_keys_are_rejected_by_name() {
    let e = err(&format!("sesionTimeoutSeconds: 5\n{MINIMAL}"));
    assert!(e.contains("sesionTimeoutSeconds"), "{e}");
}

#[test]
fn zero_values_are_rejected() {
    for key in ["tokenTTLSeconds", "sessionTimeoutSeconds", "maxSessions"] {
        let e = err(&format!("{key}: 0\n{MINIMAL}"));
        assert!(e.contains(key) && e.contains("greater than 0"), "{e}");
    }
    let e = err(&format!("limits: {{queryBurst: 0}}\n{MINIMAL}"));
    assert!(e.contains("limits.queryBurst"), "{e}");
    let e = err(&format!("limits: {{maxPendingTcpLines: 0}}\n{MINIMAL}"));
    assert!(e.contains("limits.maxPendingTcpLines"), "{e}");
}

#[test]
fn colliding_tcp_ports_are_rejected() {
    let e = err(&format!("queryPort: 9100\nadminPort: 9100\n{MINIMAL}"));
    assert!(e.contains("adminPort"), "{e}");
    // UDP and TCP may share a number.
    ValidConfig::from_yaml(&format!("queryPort: 9100\ndataPort: 9100\n{MINIMAL}")).unwrap();
}

#[test]
fn default_endpoint_must_name_a_mapping() {
    let e = err(&format!(
        "defaultEndpoint: {{resourceType: nope}}\n{MINIMAL}"
    ));
    assert!(e.contains("defaultEndpoint.resourceType"), "{e}");
    ValidConfig::from_yaml(&format!(
        "defaultEndpoint: {{resourceType: echo}}\n{MINIMAL}"
    ))
    .unwrap();
    let e = err(&format!(
        "defaultEndpoint: {{resourceType: echo, statusQuery: {{jsonPath: \"$[\", expectedValue: x}}}}\n{MINIMAL}"
    ));
    assert!(e.contains("defaultEndpoint.statusQuery.jsonPath"), "{e}");
}

#[test]
fn mappings_need_a_source() {
    let e = err("resourceQueryMapping:\n  echo: {}\n");
    assert!(e.contains("resourceQueryMapping.echo"), "{e}");
    let e = err("resourceQueryMapping: {}\n");
    assert!(e.contains("at least one resource type"), "{e}");
    let e = err("resourceQueryMapping:\n  echo:\n    static: []\n");
    assert!(e.contains("at least one endpoint"), "{e}");
}

#[test]
fn kube_mappings_need_a_resource_and_one_address_mode() {
    let base = "resourceQueryMapping:\n  gs:\n    group: agones.dev\n    version: v1\n    resource: gameservers\n    namespace: game-servers\n";
    ValidConfig::from_yaml(&format!(
        "{base}    addressPath: status.address\n    portName: default\n"
    ))
    .unwrap();
    ValidConfig::from_yaml(&format!(
        "{base}    serviceSelectorLabel: app\n    serviceTargetPortName: game\n"
    ))
    .unwrap();
    let e = err(base);
    assert!(e.contains("needs an address"), "{e}");
    let e = err(&format!("{base}    addressPath: status.address\n"));
    assert!(e.contains("resourceQueryMapping.gs.portName"), "{e}");
    let e = err(&format!(
        "{base}    addressPath: status.address\n    portName: a\n    port: 1\n"
    ));
    assert!(e.contains("exactly one"), "{e}");
    let e = err(&format!("{base}    addressPath: \"$[\"\n    port: 7\n"));
    assert!(e.contains("resourceQueryMapping.gs.addressPath"), "{e}");
    let e = err(&format!("{base}    serviceSelectorLabel: app\n"));
    assert!(e.contains("go together"), "{e}");
    let e = err(
        "resourceQueryMapping:\n  p:\n    resource: pods\n    addressPath: status.podIP\n    port: 7\n",
    );
    assert!(e.contains("resourceQueryMapping.p.version"), "{e}");
    let e = err(
        "resourceQueryMapping:\n  p:\n    version: v1\n    resource: Pods\n    addressPath: status.podIP\n    port: 7\n",
    );
    assert!(e.contains("lowercase plural"), "{e}");
}

#[test]
fn endpoint_namespace_must_be_allowed() {
    let e = err(
        "resourceQueryMapping:\n  echo:\n    namespace: games\n    static:\n      - {name: a, namespace: kube-system, address: 127.0.0.1, port: 1}\n",
    );
    assert!(e.contains("static[0].namespace"), "{e}");
    ValidConfig::from_yaml("resourceQueryMapping:\n  echo:\n    namespace: games\n    namespaces: [games, eu]\n    static:\n      - {name: a, namespace: eu, address: 127.0.0.1, port: 1}\n").unwrap();
}

#[test]
fn empty_document_is_all_defaults_but_needs_a_mapping() {
    let e = err("");
    assert!(e.contains("resourceQueryMapping"), "{e}");
}

#[test]
fn cache_fields_are_jsonpaths_of_kubernetes_mappings() {
    let kube = "resourceQueryMapping:\n  gs:\n    group: agones.dev\n    version: v1\n    resource: gameservers\n    addressPath: status.address\n    portName: default\n";
    let c = ValidConfig::from_yaml(&format!(
        "{kube}    cacheFields: [status.lists.players, \"spec.template.metadata\"]\n"
    ))
    .unwrap();
    let ValidSource::Kube(k) = &c.mappings["gs"].source else {
        panic!("a Kubernetes mapping");
    };
    assert_eq!(k.cache_fields.len(), 2);
    let e = err(&format!("{kube}    cacheFields: [\"$[\"]\n"));
    assert!(e.contains("resourceQueryMapping.gs.cacheFields[0]"), "{e}");
    let e = err(&format!("{MINIMAL}    cacheFields: [status.x]\n"));
    assert!(e.contains("only applies to Kubernetes mappings"), "{e}");
}

#[test]
fn data_ports_decode_and_the_command_line_moves_the_first() {
    let text = format!(
        "dataPorts:\n  - {{port: 7777, targetPortName: default}}\n  - {{port: 7778, targetPort: 9002}}\n{MINIMAL}"
    );
    let c = ValidConfig::from_yaml(&text).unwrap();
    assert_eq!(c.data_ports.len(), 2);
    assert_eq!(c.data_addr.port(), 7777);
    assert_eq!(c.data_ports[0].target, TargetPort::Name("default".into()));
    assert_eq!(c.data_ports[1].target, TargetPort::Fixed(9002));
    let mut raw = Config::parse(&text).unwrap();
    reload::Overrides {
        data_port: Some(7000),
        ..Default::default()
    }
    .apply(&mut raw);
    let c = raw.validate().unwrap();
    assert_eq!(
        c.data_ports
            .iter()
            .map(|d| d.addr.port())
            .collect::<Vec<_>>(),
        [7000, 7778]
    );
    // The one-port form: the mapping's own port rule.
    let c = ValidConfig::from_yaml(MINIMAL).unwrap();
    assert_eq!(c.data_ports.len(), 1);
    assert_eq!(c.data_ports[0].target, TargetPort::Mapping);
}

const ALLOCATING: &str = "resourceQueryMapping:\n  gs:\n    group: agones.dev\n    version: v1\n    resource: gameservers\n    namespace: game-servers\n    addressPath: status.address\n    portName: default\n    auth: none\n";

const QUERY_AUTH: &str = "queryAuth: {jwksFile: /etc/jwks.json, audience: udp-director}\n";

#[test]
fn allocating_mappings_need_tickets_by_default() {
    let bare = ALLOCATING.replace("    auth: none\n", "");
    let e = err(&format!("{bare}    allocate: {{}}\n"));
    assert!(
        e.contains("resourceQueryMapping.gs.auth")
            && e.contains("queryAuth")
            && e.contains("auth: none"),
        "{e}"
    );
    let c = ValidConfig::from_yaml(&format!("{QUERY_AUTH}{bare}    allocate: {{}}\n")).unwrap();
    assert_eq!(c.mappings["gs"].auth, crate::config::Auth::Ticket);
    assert!(c.warnings.is_empty());
    let a = c.query_auth.unwrap();
    assert_eq!(a.audience, "udp-director");
    assert_eq!((a.issuer, a.leeway), (None, 5));
    assert_eq!(a.source, KeySource::File("/etc/jwks.json".into()));
    // `auth: none` on an allocating mapping: accepted, with a warning for every start.
    let c = ValidConfig::from_yaml(&format!("{ALLOCATING}    allocate: {{}}\n")).unwrap();
    assert_eq!(c.mappings["gs"].auth, crate::config::Auth::None);
    assert_eq!(c.warnings.len(), 1);
    assert!(
        c.warnings[0].contains("resourceQueryMapping.gs") && c.warnings[0].contains("auth: none")
    );
    // A cache mapping asks nothing unless told to.
    let c = ValidConfig::from_yaml(MINIMAL).unwrap();
    assert_eq!(c.mappings["echo"].auth, crate::config::Auth::None);
    let e = err(&MINIMAL.replace("  echo:\n", "  echo:\n    auth: ticket\n"));
    assert!(e.contains("resourceQueryMapping.echo.auth"), "{e}");
    assert!(
        ValidConfig::from_yaml(&format!(
            "{QUERY_AUTH}{}",
            MINIMAL.replace("  echo:\n", "  echo:\n    auth: ticket\n")
        ))
        .is_ok()
    );
}

#[test]
fn query_auth_is_checked_whole() {
    let doc = |auth: &str| format!("queryAuth: {auth}\n{MINIMAL}");
    let e = err(&doc("{audience: a}"));
    assert!(e.contains("`queryAuth`") && e.contains("jwksFile"), "{e}");
    let e = err(&doc("{jwksFile: /a, jwksSecret: ns/b, audience: a}"));
    assert!(
        e.contains("queryAuth.jwksFile") && e.contains("not both"),
        "{e}"
    );
    let e = err(&doc("{jwksFile: /a}"));
    assert!(e.contains("queryAuth.audience"), "{e}");
    let e = err(&doc("{jwksSecret: nope, audience: a}"));
    assert!(
        e.contains("queryAuth.jwksSecret") && e.contains("NAMESPACE/NAME"),
        "{e}"
    );
    let e = err(&doc("{jwksFile: /a, audience: a, issuer: ''}"));
    assert!(e.contains("queryAuth.issuer"), "{e}");
    let e = err(&doc("{jwksFile: /a, audience: a, leewaySeconds: 301}"));
    assert!(e.contains("queryAuth.leewaySeconds"), "{e}");
    let e = err(&doc("{jwksFile: /a, audience: a, colour: red}"));
    assert!(e.contains("colour"), "{e}");
    let c = ValidConfig::from_yaml(&doc(
        "{jwksSecret: udp/jwks, audience: a, issuer: https://auth.example.com, leewaySeconds: 0}",
    ))
    .unwrap();
    let a = c.query_auth.unwrap();
    assert_eq!(
        a.source,
        KeySource::Secret {
            namespace: "udp".into(),
            name: "jwks".into()
        }
    );
    assert_eq!(a.issuer.as_deref(), Some("https://auth.example.com"));
    assert_eq!(a.leeway, 0);
    // The default endpoint serves tokenless datagrams: never a mapping that needs tickets.
    let e = err(&format!(
        "{QUERY_AUTH}defaultEndpoint: {{resourceType: echo}}\n{}",
        MINIMAL.replace("  echo:\n", "  echo:\n    auth: ticket\n")
    ));
    assert!(
        e.contains("defaultEndpoint") && e.contains("auth: ticket"),
        "{e}"
    );
    let e = err(&format!(
        "defaultEndpoint: {{resourceType: echo, clientIp: 10.0.0.1}}\n{MINIMAL}"
    ));
    assert!(e.contains("clientIp"), "{e}");
}

#[test]
fn allocate_decodes_with_agones_defaults() {
    let c = ValidConfig::from_yaml(&format!("{ALLOCATING}    allocate: {{}}\n")).unwrap();
    let a = c.mappings["gs"].allocate.clone().unwrap();
    assert_eq!(a.scheduling, Scheduling::Packed);
    assert!(!a.prefer_allocated);
    assert_eq!(a.players_list, None);
    assert_eq!(a.max_in_flight, ALLOCATIONS_IN_FLIGHT);
    assert_eq!((a.rate_per_second, a.burst), (20, 40));
    let c = ValidConfig::from_yaml(&format!(
        "{ALLOCATING}    allocate:\n      scheduling: Distributed\n      preferAllocated: true\n      playersList: players\n      maxInFlight: 3\n      ratePerSecond: 5\n      burst: 7\n      metadata: {{labels: {{by: director}}, annotations: {{a: b}}}}\n"
    ))
    .unwrap();
    let a = c.mappings["gs"].allocate.clone().unwrap();
    assert_eq!(a.scheduling, Scheduling::Distributed);
    assert!(a.prefer_allocated);
    assert_eq!(a.players_list.as_deref(), Some("players"));
    assert_eq!(a.max_in_flight, 3);
    assert_eq!((a.rate_per_second, a.burst), (5, 7));
    assert_eq!(a.metadata.labels["by"], "director");
    assert!(
        ValidConfig::from_yaml(MINIMAL).unwrap().mappings["echo"]
            .allocate
            .is_none()
    );
}

#[test]
fn allocate_refuses_what_an_allocation_cannot_answer() {
    let with = |extra: &str| err(&format!("{ALLOCATING}{extra}"));
    let e = err(
        "resourceQueryMapping:\n  s:\n    static: [{name: a, address: 127.0.0.1, port: 9}]\n    allocate: {}\n",
    );
    assert!(
        e.contains("resourceQueryMapping.s.allocate") && e.contains("static"),
        "{e}"
    );
    let e = err(&(ALLOCATING
        .replace("resource: gameservers", "resource: pods")
        .replace("    group: agones.dev\n", "")
        + "    allocate: {}\n"));
    assert!(e.contains("agones.dev"), "{e}");
    let e = err(&(ALLOCATING.replace("status.address", "status.podIP") + "    allocate: {}\n"));
    assert!(
        e.contains("addressPath") && e.contains("status.address"),
        "{e}"
    );
    let e = err(
        &(ALLOCATING.replace("portName: default", "portPath: status.ports[0].port")
            + "    allocate: {}\n"),
    );
    assert!(e.contains("portPath"), "{e}");
    let e = with("    allocate: {}\n    loadBalancing: {type: first}\n");
    assert!(
        e.contains("loadBalancing") && e.contains("scheduling"),
        "{e}"
    );
    let e = with("    allocate: {}\n    cacheFields: [spec.x]\n");
    assert!(e.contains("cacheFields"), "{e}");
    let e = with("    allocate: {preferAllocated: true}\n");
    assert!(
        e.contains("preferAllocated") && e.contains("playersList"),
        "{e}"
    );
    let e = with("    allocate: {playersList: ''}\n");
    assert!(e.contains("playersList"), "{e}");
    let e = with("    allocate: {maxInFlight: 0}\n");
    assert!(e.contains("maxInFlight"), "{e}");
    let e = with("    allocate: {ratePerSecond: 0}\n");
    assert!(
        e.contains("allocate.ratePerSecond") && e.contains("at least 1"),
        "{e}"
    );
    let e = with("    allocate: {burst: 0}\n");
    assert!(e.contains("allocate.burst"), "{e}");
    let e = with("    allocate: {burst: 1000001}\n");
    assert!(e.contains("allocate.burst") && e.contains("at most"), "{e}");
    let e = with("    allocate: {scheduling: Random}\n");
    assert!(e.contains("scheduling") || e.contains("Random"), "{e}");
    let e = with("    allocate: {metadata: {labels: {'': x}}}\n");
    assert!(e.contains("allocate.metadata.labels"), "{e}");
    let e = with("    allocate: {playerList: players}\n");
    assert!(e.contains("playerList"), "{e}");
    let e = with("    allocate: {}\ndefaultEndpoint: {resourceType: gs}\n");
    assert!(
        e.contains("defaultEndpoint") && e.contains("allocates"),
        "{e}"
    );
}

#[test]
fn a_tcp_data_port_may_not_take_the_query_or_admin_port() {
    let e = err(&format!(
        "queryPort: 7100\ndataPorts:\n  - {{port: 7777}}\n  - {{port: 7100, protocol: TCP, targetPort: 9}}\n{MINIMAL}"
    ));
    assert!(
        e.contains("dataPorts[1].port") && e.contains("query port"),
        "{e}"
    );
    let e = err(&format!(
        "dataPorts:\n  - {{port: 7777}}\n  - {{port: 8080, protocol: TCP, targetPort: 9}}\n{MINIMAL}"
    ));
    assert!(e.contains("admin port"), "{e}");
    // UDP may share a number with a TCP listener.
    let c = ValidConfig::from_yaml(&format!(
        "dataPorts:\n  - {{port: 9000}}\n  - {{port: 7777, protocol: TCP, targetPort: 9}}\n{MINIMAL}"
    ))
    .unwrap();
    assert_eq!(c.data_ports[1].protocol, Protocol::Tcp);
    assert_eq!(c.data_ports[0].protocol, Protocol::Udp);
}

#[test]
fn query_connection_limits_and_allow_regex_have_spec_defaults_and_named_errors() {
    let c = ValidConfig::from_yaml(MINIMAL).unwrap();
    assert_eq!(c.limits.query_connection_lifetime_seconds, 60);
    assert_eq!(c.limits.max_query_connections_per_ip, 16);
    assert!(!c.mappings["echo"].allow_regex);
    let set = ValidConfig::from_yaml(
        "limits: {queryConnectionLifetimeSeconds: 5, maxQueryConnectionsPerIp: 2}\nresourceQueryMapping:\n  echo:\n    allowRegex: true\n    static:\n      - {name: a, address: 127.0.0.1, port: 9001}\n",
    )
    .unwrap();
    assert_eq!(set.limits.query_connection_lifetime_seconds, 5);
    assert_eq!(set.limits.max_query_connections_per_ip, 2);
    assert!(set.mappings["echo"].allow_regex);
    for key in ["queryConnectionLifetimeSeconds", "maxQueryConnectionsPerIp"] {
        let e = err(&format!("limits: {{{key}: 0}}\n{MINIMAL}"));
        assert!(e.contains(&format!("limits.{key}")), "{e}");
    }
}

#[test]
fn every_duration_and_count_has_a_maximum_named_in_the_error() {
    // (top-level YAML, key named in the error, the maximum): the maximum is accepted, one more
    // is refused with the key and the maximum.
    let cases: &[(&str, &str, u64)] = &[
        (
            "sessionTimeoutSeconds",
            "sessionTimeoutSeconds",
            MAX_SECONDS,
        ),
        ("tokenTTLSeconds", "tokenTTLSeconds", MAX_SECONDS),
        ("drainSeconds", "drainSeconds", MAX_SECONDS),
        ("tokenResumeSeconds", "tokenResumeSeconds", MAX_SECONDS),
        (
            "unansweredTimeoutSeconds",
            "unansweredTimeoutSeconds",
            MAX_SECONDS,
        ),
        ("maxSessions", "maxSessions", MAX_COUNT),
        (
            "maxSessionsPerClientIp",
            "maxSessionsPerClientIp",
            MAX_COUNT,
        ),
        ("dataWorkers", "dataWorkers", MAX_DATA_WORKERS),
        ("busyPollMicros", "busyPollMicros", MAX_BUSY_POLL_MICROS),
        (
            "socketBufferBytes",
            "socketBufferBytes",
            MAX_SOCKET_BUFFER_BYTES,
        ),
        (
            "limits: {queryIdleTimeoutSeconds",
            "limits.queryIdleTimeoutSeconds",
            MAX_SECONDS,
        ),
        ("limits: {maxTokens", "limits.maxTokens", MAX_COUNT),
        (
            "limits: {maxQueryConnections",
            "limits.maxQueryConnections",
            MAX_CONNECTIONS,
        ),
        (
            "limits: {queryRatePerSecond",
            "limits.queryRatePerSecond",
            MAX_CONNECTIONS,
        ),
        ("limits: {queryBurst", "limits.queryBurst", MAX_CONNECTIONS),
        (
            "limits: {queryConnectionLifetimeSeconds",
            "limits.queryConnectionLifetimeSeconds",
            MAX_SECONDS,
        ),
        (
            "limits: {maxQueryConnectionsPerIp",
            "limits.maxQueryConnectionsPerIp",
            MAX_CONNECTIONS,
        ),
        (
            "limits: {maxPendingTcpLines",
            "limits.maxPendingTcpLines",
            MAX_CONNECTIONS,
        ),
        (
            "limits: {queryMaxBytes",
            "limits.queryMaxBytes",
            MAX_QUERY_BYTES,
        ),
        (
            "loadBalancing: {type: labelArithmetic, currentLabel: c, maxLabel: m, overlap",
            "loadBalancing.overlap",
            MAX_COUNT,
        ),
    ];
    for (yaml_key, key, max) in cases {
        let close = if yaml_key.contains('{') { "}" } else { "" };
        let doc = |v: u64| format!("{yaml_key}: {v}{close}\n{MINIMAL}");
        assert!(
            ValidConfig::from_yaml(&doc(*max)).is_ok(),
            "{key} = {max} is allowed"
        );
        let e = err(&doc(max + 1));
        assert!(
            e.contains(&format!("`{key}`")) && e.contains(&format!("at most {max}")),
            "{key}: {e}"
        );
    }
}

#[test]
fn a_session_timeout_that_would_overflow_a_deadline_is_refused() {
    // u64::MAX seconds panicked the data threads (`Instant + Duration` overflow).
    let e = err(&format!("sessionTimeoutSeconds: {}\n{MINIMAL}", u64::MAX));
    assert!(
        e.contains("sessionTimeoutSeconds") && e.contains("at most 2592000 (30 days)"),
        "{e}"
    );
    let e = err(&format!("tokenTTLSeconds: {}\n{MINIMAL}", u64::MAX));
    assert!(e.contains("tokenTTLSeconds"), "{e}");
}

#[test]
fn a_billion_laughs_config_is_one_error_naming_aliases() {
    // The laughs sit in a static endpoint's `status` (any JSON), where serde_yaml would
    // expand them: 10^9 strings.
    let mut laughs = String::from("x0: &x0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]");
    for i in 1..9 {
        let p = i - 1;
        laughs.push_str(&format!(
            ", x{i}: &x{i} [*x{p}, *x{p}, *x{p}, *x{p}, *x{p}, *x{p}, *x{p}, *x{p}, *x{p}, *x{p}]"
        ));
    }
    let doc = format!(
        "resourceQueryMapping:\n  echo:\n    static:\n      - {{name: a, address: 127.0.0.1, port: 9001, status: {{{laughs}}}}}\n"
    );
    let started = tokio::time::Instant::now();
    let e = err(&doc);
    assert!(e.contains("YAML aliases") && e.contains("nodes"), "{e}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    // Modest aliases still work.
    let shared = "resourceQueryMapping:\n  echo:\n    static:\n      - {name: a, address: 127.0.0.1, port: 9001, labels: &l {zone: a}}\n      - {name: b, address: 127.0.0.1, port: 9002, labels: *l}\n";
    let c = ValidConfig::from_yaml(shared).unwrap();
    let ValidSource::Static(eps) = &c.mappings["echo"].source else {
        panic!("static")
    };
    assert_eq!(eps[1].labels["zone"], "a");
}

#[test]
fn admin_bind_address_defaults_to_bind_address_and_token_file_is_decoded() {
    let c = ValidConfig::from_yaml(&format!("bindAddress: 127.0.0.1\n{MINIMAL}")).unwrap();
    assert_eq!(c.admin_addr, "127.0.0.1:8080".parse().unwrap());
    assert_eq!(c.admin_token_file, None);
    let c = ValidConfig::from_yaml(&format!(
        "bindAddress: 127.0.0.1\nadminBindAddress: \"::\"\nadminTokenFile: /etc/udp-director/admin/token\n{MINIMAL}"
    ))
    .unwrap();
    assert_eq!(c.admin_addr, "[::]:8080".parse().unwrap());
    assert_eq!(c.query_addr.ip().to_string(), "127.0.0.1");
    assert_eq!(
        c.admin_token_file.as_deref(),
        Some(std::path::Path::new("/etc/udp-director/admin/token"))
    );
    let e = err(&format!("adminTokenFile: \"\"\n{MINIMAL}"));
    assert!(e.contains("`adminTokenFile`"), "{e}");
    let e = err(&format!("adminBindAddress: nowhere\n{MINIMAL}"));
    assert!(e.contains("adminBindAddress"), "{e}");
}

#[test]
fn allocations_in_flight_have_a_maximum() {
    let doc = |n: u64| format!("{ALLOCATING}    allocate: {{maxInFlight: {n}}}\n");
    assert!(ValidConfig::from_yaml(&doc(MAX_ALLOCATIONS_IN_FLIGHT)).is_ok());
    let e = err(&doc(MAX_ALLOCATIONS_IN_FLIGHT + 1));
    assert!(
        e.contains("`resourceQueryMapping.gs.allocate.maxInFlight`") && e.contains("at most 10000"),
        "{e}"
    );
}

#[test]
fn query_tls_needs_its_files() {
    let doc = |tls: &str| format!("queryTls: {tls}\n{MINIMAL}");
    let c = ValidConfig::from_yaml(&doc("{certFile: /tls.crt, keyFile: /tls.key}")).unwrap();
    let t = c.query_tls.unwrap();
    assert_eq!(t.cert_file, std::path::PathBuf::from("/tls.crt"));
    assert_eq!(t.client_ca_file, None);
    let c = ValidConfig::from_yaml(&doc(
        "{certFile: /tls.crt, keyFile: /tls.key, clientCaFile: /ca.crt}",
    ))
    .unwrap();
    assert_eq!(
        c.query_tls.unwrap().client_ca_file,
        Some(std::path::PathBuf::from("/ca.crt"))
    );
    assert!(err(&doc("{certFile: /tls.crt}")).contains("keyFile"));
    let e = err(&doc("{certFile: '', keyFile: /k}"));
    assert!(e.contains("queryTls.certFile"), "{e}");
    assert!(err(&doc("{certFile: /c, keyFile: /k, caFile: /x}")).contains("caFile"));
    assert!(ValidConfig::from_yaml(MINIMAL).unwrap().query_tls.is_none());
}

#[test]
fn the_fast_path_is_off_by_default_and_restart_only() {
    let c = ValidConfig::from_yaml(MINIMAL).unwrap();
    assert_eq!(c.fast_path, None);
    assert!(reload::RESTART_ONLY.contains(&"fastPath"));
}

#[test]
fn the_fast_path_is_refused_with_reuse_port_and_with_bad_interfaces() {
    let e = err(&format!(
        "reusePort: true\nfastPath: {{enabled: true}}\n{MINIMAL}"
    ));
    assert!(
        e.contains("fastPath.enabled") && e.contains("reusePort"),
        "{e}"
    );
    // Off, anything goes (nothing is loaded).
    ValidConfig::from_yaml(&format!(
        "reusePort: true\nfastPath: {{enabled: false}}\n{MINIMAL}"
    ))
    .unwrap();
    let e = err(&format!("fastPath: {{enabled: true, nope: 1}}\n{MINIMAL}"));
    assert!(e.contains("nope"), "{e}");
}

#[cfg(not(feature = "fast-path"))]
#[test]
fn the_fast_path_is_refused_in_a_build_without_it() {
    let e = err(&format!("fastPath: {{enabled: true}}\n{MINIMAL}"));
    assert!(
        e.contains("fastPath.enabled") && e.contains("--features fast-path"),
        "{e}"
    );
}

#[cfg(feature = "fast-path")]
#[test]
fn the_fast_path_names_its_interfaces() {
    let c = ValidConfig::from_yaml(&format!("fastPath: {{enabled: true}}\n{MINIMAL}")).unwrap();
    assert_eq!(c.fast_path.unwrap().interfaces, ["eth0"]);
    let c = ValidConfig::from_yaml(&format!(
        "fastPath: {{enabled: true, interfaces: [veth0, eth1]}}\n{MINIMAL}"
    ))
    .unwrap();
    assert_eq!(c.fast_path.unwrap().interfaces, ["veth0", "eth1"]);
    for bad in ["[]", "[\"\"]", "[a/b]", "[abcdefghijklmnopq]"] {
        let e = err(&format!(
            "fastPath: {{enabled: true, interfaces: {bad}}}\n{MINIMAL}"
        ));
        assert!(e.contains("fastPath.interfaces"), "{bad}: {e}");
    }
}
