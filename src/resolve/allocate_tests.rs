use super::*;
use crate::config::AllocationMetadata;
use serde_json::json;

fn spec() -> ValidAllocate {
    ValidAllocate {
        scheduling: Scheduling::Packed,
        prefer_allocated: false,
        players_list: None,
        metadata: AllocationMetadata::default(),
        max_in_flight: 8,
        rate_per_second: 20,
        burst: 40,
    }
}

fn query(json: serde_json::Value) -> QueryRequest {
    serde_json::from_value(json).unwrap()
}

fn fixed() -> BTreeMap<String, String> {
    BTreeMap::from([("agones.dev/fleet".to_string(), "f1".to_string())])
}

#[test]
fn a_plain_query_asks_for_one_ready_server_with_every_label() {
    let req = query(json!({"resourceType": "gs", "labelSelector": {"map": "dust"}}));
    let body = request(&spec(), &fixed(), &req).unwrap();
    assert_eq!(
        serde_json::to_value(&body).unwrap(),
        json!({"apiVersion": "allocation.agones.dev/v1", "kind": "GameServerAllocation",
            "metadata": {},
            "spec": {"scheduling": "Packed", "selectors": [
                {"matchLabels": {"agones.dev/fleet": "f1", "map": "dust"}, "gameServerState": "Ready"}]}})
    );
}

#[test]
fn prefer_allocated_with_a_players_list_is_agones_own_recipe() {
    let mut s = spec();
    s.prefer_allocated = true;
    s.players_list = Some("players".to_string());
    s.scheduling = Scheduling::Distributed;
    s.metadata.labels.insert("director".into(), "eu".into());
    let req = query(json!({"resourceType": "gs", "playerId": "p-1"}));
    let body = serde_json::to_value(request(&s, &fixed(), &req).unwrap()).unwrap();
    let room = json!({"players": {"minAvailable": 1}});
    assert_eq!(
        body["spec"],
        json!({"scheduling": "Distributed",
            "selectors": [
                {"matchLabels": {"agones.dev/fleet": "f1"}, "gameServerState": "Allocated", "lists": room},
                {"matchLabels": {"agones.dev/fleet": "f1"}, "gameServerState": "Ready", "lists": room}],
            "lists": {"players": {"addValues": ["p-1"]}},
            "metadata": {"labels": {"director": "eu"}}})
    );
}

#[test]
fn a_players_list_without_a_player_id_still_needs_room_but_adds_nothing() {
    let mut s = spec();
    s.players_list = Some("players".to_string());
    let body = request(&s, &fixed(), &query(json!({"resourceType": "gs"}))).unwrap();
    assert!(body.spec.lists.is_empty());
    assert_eq!(
        body.spec.selectors[0].lists["players"].min_available,
        Some(1)
    );
}

#[test]
fn queries_agones_cannot_express_are_refused_before_asking() {
    let bad = |j| request(&spec(), &fixed(), &query(j)).unwrap_err();
    let e = bad(json!({"resourceType": "gs", "annotationSelector": {"a": "b"}}));
    assert_eq!(e.code, ErrorCode::BadRequest);
    assert!(e.message.contains("annotationSelector"), "{}", e.message);
    let e = bad(json!({"resourceType": "gs",
        "statusQuery": {"jsonPath": "status.state", "expectedValue": "Ready"}}));
    assert_eq!(e.code, ErrorCode::BadRequest);
    let e = bad(json!({"resourceType": "gs", "labelSelector": {"agones.dev/fleet": "f2"}}));
    assert_eq!(e.code, ErrorCode::NoMatch);
    // Repeating the fixed label is fine.
    assert!(
        request(
            &spec(),
            &fixed(),
            &query(json!({"resourceType": "gs", "labelSelector": {"agones.dev/fleet": "f1"}}))
        )
        .is_ok()
    );
}

fn answer(j: serde_json::Value) -> AllocationStatus {
    serde_json::from_value(j).unwrap()
}

#[test]
fn an_allocated_answer_gives_address_and_every_named_port() {
    let status = answer(json!({"state": "Allocated", "gameServerName": "gs-7",
        "address": "10.0.0.7", "nodeName": "n1", "source": "local",
        "ports": [{"name": "default", "port": 7001}, {"name": "voice", "port": 7002}]}));
    let rules = [
        PortRule::Name("default".into()),
        PortRule::Name("voice".into()),
        PortRule::Fixed(9000),
    ];
    assert_eq!(
        read_answer(&status, &rules).unwrap(),
        Allocated {
            name: "gs-7".into(),
            addr: "10.0.0.7:7001".parse().unwrap(),
            extra_ports: vec![7002, 9000],
        }
    );
}

#[test]
fn a_hostname_address_falls_back_to_an_ip_among_addresses() {
    let status = answer(json!({"state": "Allocated", "gameServerName": "gs",
        "address": "node-a.internal",
        "addresses": [{"type": "Hostname", "address": "node-a"}, {"type": "ExternalIP", "address": "2001:db8::7"}],
        "ports": [{"name": "default", "port": 7001}]}));
    let a = read_answer(&status, &[PortRule::Name("default".into())]).unwrap();
    assert_eq!(a.addr, "[2001:db8::7]:7001".parse().unwrap());
}

#[test]
fn every_other_answer_is_an_error_code_and_a_result_label() {
    let rules = [PortRule::Name("default".into())];
    let case = |j| {
        let (result, e) = read_answer(&answer(j), &rules).unwrap_err();
        (result, e.code)
    };
    assert_eq!(
        case(json!({"state": "UnAllocated"})),
        (AllocationResult::Unallocated, ErrorCode::NoMatch)
    );
    assert_eq!(
        case(json!({"state": "Contention"})),
        (AllocationResult::Contention, ErrorCode::Unavailable)
    );
    assert_eq!(
        case(json!({"state": "Exploded"})),
        (AllocationResult::Error, ErrorCode::Unavailable)
    );
    assert_eq!(
        case(json!({})),
        (AllocationResult::Error, ErrorCode::Unavailable)
    );
    let allocated = |extra: serde_json::Value| {
        let mut j = json!({"state": "Allocated", "gameServerName": "gs", "address": "10.0.0.1",
            "ports": [{"name": "default", "port": 7001}]});
        for (k, v) in extra.as_object().unwrap() {
            j[k] = v.clone();
        }
        j
    };
    for bad in [
        json!({"address": ""}),
        json!({"address": "not-an-ip"}),
        json!({"ports": []}),
        json!({"ports": [{"name": "other", "port": 7001}]}),
        json!({"ports": [{"name": "default", "port": 0}]}),
        json!({"ports": [{"name": "default", "port": 70000}]}),
        json!({"ports": [{"name": "default", "port": -1}]}),
        json!({"gameServerName": ""}),
    ] {
        assert_eq!(
            case(allocated(bad.clone())),
            (AllocationResult::Unusable, ErrorCode::Unavailable),
            "{bad}"
        );
    }
}

#[test]
fn the_resource_is_agones_allocation_v1() {
    use kube::Resource;
    assert_eq!(
        GameServerAllocation::url_path(&(), Some("game-servers")),
        "/apis/allocation.agones.dev/v1/namespaces/game-servers/gameserverallocations"
    );
    assert_eq!(
        GameServerAllocation::api_version(&()),
        "allocation.agones.dev/v1"
    );
}

#[test]
fn nulls_in_an_answer_read_as_absent() {
    let status = answer(
        json!({"state": "Allocated", "gameServerName": "gs", "address": null,
        "addresses": [{"type": null, "address": "10.0.0.2"}], "nodeName": null,
        "ports": [{"name": "default", "port": 7001}]}),
    );
    let a = read_answer(&status, &[PortRule::Name("default".into())]).unwrap();
    assert_eq!(a.addr, "10.0.0.2:7001".parse().unwrap());
}
