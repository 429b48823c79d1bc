use super::*;

fn cp(p: &str) -> CompiledPath {
    CompiledPath::compile(p).unwrap()
}

#[test]
fn agones_gameserver_address() {
    let gs = json!({"status": {"state": "Ready", "address": "10.0.0.7",
            "ports": [{"name": "rcon", "port": 7001}, {"name": "default", "port": 7654}]}});
    assert_eq!(
        direct_address(
            &gs,
            &cp("$.status.address"),
            &PortRule::Name("default".into())
        ),
        Some("10.0.0.7:7654".parse().unwrap())
    );
    assert_eq!(
        direct_address(
            &gs,
            &cp("$.status.address"),
            &PortRule::Path(cp("$.status.ports[?(@.name == 'rcon')].port"))
        ),
        Some("10.0.0.7:7001".parse().unwrap())
    );
    assert_eq!(
        direct_address(&gs, &cp("$.status.address"), &PortRule::Name("nope".into())),
        None
    );
    let unscheduled = json!({"status": {"state": "Scheduled"}});
    assert_eq!(
        direct_address(&unscheduled, &cp("$.status.address"), &PortRule::Fixed(7)),
        None
    );
    let hostname = json!({"status": {"address": "gs.example"}});
    assert_eq!(
        direct_address(&hostname, &cp("$.status.address"), &PortRule::Fixed(7)),
        None
    );
}

fn received(v: Value) -> Received {
    serde_json::from_value(v).unwrap()
}

#[test]
fn snapshot_candidates_use_the_shortest_posting_list() {
    let strings = Strings::default();
    let obj = |name: &str, labels: Value| -> Arc<Object> {
        Arc::new(lean_object(
            received(json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "namespace": "n", "labels": labels}})),
            &Keep::with([]),
            &strings,
        ))
    };
    let snap = Snapshot::build(vec![
        obj("a", json!({"fleet": "f", "map": "x"})),
        obj("b", json!({"fleet": "f", "map": "y"})),
        obj("c", json!({"fleet": "g", "map": "x"})),
    ]);
    let names = |sel: &[(&str, &str)]| -> Vec<String> {
        let sel: BTreeMap<String, String> = sel
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        snap.candidates(&sel).map(|o| o.name.to_string()).collect()
    };
    assert_eq!(names(&[]).len(), 3);
    assert_eq!(names(&[("map", "y")]), ["b"]);
    // A superset is fine (callers re-check every term); a missing value means nothing.
    assert!(names(&[("fleet", "f"), ("map", "x")]).contains(&"a".to_string()));
    assert!(names(&[("fleet", "nope")]).is_empty());
}

/// A GameServer as Agones writes it, with its pod template.
fn agones_gameserver() -> Value {
    json!({"apiVersion": "agones.dev/v1", "kind": "GameServer",
        "metadata": {"name": "gs-1", "namespace": "g", "uid": "u-1", "resourceVersion": "7",
            "labels": {"agones.dev/fleet": "f1"},
            "annotations": {"agones.dev/sdk-version": "1.44.0",
                "kubectl.kubernetes.io/last-applied-configuration": "{\"huge\": true}"},
            "ownerReferences": [{"apiVersion": "agones.dev/v1", "kind": "GameServerSet", "name": "f1-x", "uid": "u-0"}],
            "managedFields": [{"manager": "agones"}]},
        "spec": {"ports": [{"name": "default", "containerPort": 7654}], "players": {"initialCapacity": 4},
            "template": {"spec": {"containers": [{"name": "game", "image": "game:1", "env": [{"name": "A", "value": "B"}]}]}}},
        "status": {"state": "Ready", "address": "10.0.0.7", "nodeName": "node-a", "reservedUntil": null,
            "ports": [{"name": "default", "port": 7654}],
            "addresses": [{"type": "InternalIP", "address": "10.0.0.7"}],
            "lists": {"players": {"capacity": 10, "values": []}}}})
}

#[test]
fn a_lean_object_keeps_what_routing_reads_and_nothing_else() {
    let strings = Strings::default();
    let keep = Keep::direct(
        &cp("status.address"),
        &[PortRule::Name("default".into())],
        [],
    );
    let o = lean_object(received(agones_gameserver()), &keep, &strings);
    assert_eq!(o.addr, Some("10.0.0.7:7654".parse().unwrap()));
    assert_eq!((&*o.name, o.namespace.as_deref()), ("gs-1", Some("g")));
    assert_eq!(o.labels.label("agones.dev/fleet"), Some("f1"));
    assert_eq!(
        o.annotations.label("agones.dev/sdk-version"),
        Some("1.44.0")
    );
    assert_eq!(
        o.annotations
            .label("kubectl.kubernetes.io/last-applied-configuration"),
        None
    );
    assert_eq!(
        o.data.to_value(),
        json!({"status": {"state": "Ready", "address": "10.0.0.7", "nodeName": "node-a",
            "ports": [{"name": "default", "port": 7654}]}}),
        "non-null status scalars and the ports portName reads; no spec, no lists, no addresses"
    );
    // cacheFields keeps more, and a path that can reach anywhere keeps everything.
    let keep = Keep::direct(
        &cp("status.address"),
        &[PortRule::Fixed(7)],
        [&cp("status.lists.players"), &cp("spec.players")],
    );
    let o = lean_object(received(agones_gameserver()), &keep, &strings);
    assert_eq!(
        o.data
            .walk(&["status", "lists", "players", "capacity"])
            .and_then(Lean::as_u64),
        Some(10)
    );
    assert_eq!(
        o.data
            .walk(&["spec", "players", "initialCapacity"])
            .and_then(Lean::as_u64),
        Some(4)
    );
    assert!(o.data.walk(&["spec", "template"]).is_none());
    assert_eq!(o.addr, Some("10.0.0.7:7".parse().unwrap()));
    let everything = Keep::direct(
        &cp("status.address"),
        &[PortRule::Fixed(7)],
        [&cp("$..image")],
    );
    let o = lean_object(received(agones_gameserver()), &everything, &strings);
    assert!(o.data.walk(&["spec", "template"]).is_some());
}

#[test]
fn an_address_path_into_metadata_is_read_before_pruning() {
    let keep = Keep::direct(&cp("metadata.annotations.ip"), &[PortRule::Fixed(9)], []);
    let o = lean_object(
        received(json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "namespace": "n", "annotations": {"ip": "10.1.1.1"}}})),
        &keep,
        &Strings::default(),
    );
    assert_eq!(o.addr, Some("10.1.1.1:9".parse().unwrap()));
}

#[test]
fn pod_container_port_by_name() {
    let pod = json!({"spec": {"containers": [
            {"name": "sidecar", "ports": [{"name": "metrics", "containerPort": 9100}]},
            {"name": "game", "ports": [{"name": "game", "containerPort": 7777, "protocol": "UDP"}]}]},
            "status": {"podIP": "10.1.2.3"}});
    assert_eq!(
        direct_address(&pod, &cp("$.status.podIP"), &PortRule::Name("game".into())),
        Some("10.1.2.3:7777".parse().unwrap())
    );
}

#[test]
fn service_by_label_and_port_name() {
    let svc = lean_object(
        received(json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "gs-1", "namespace": "g", "labels": {"gs": "gs-1"}},
            "spec": {"clusterIP": "10.96.0.10", "ports": [{"name": "game", "port": 7777}],
                "selector": {"app": "x"}}})),
        &Keep::services(),
        &Strings::default(),
    );
    assert!(
        svc.data.walk(&["spec", "selector"]).is_none(),
        "only the ClusterIP and ports"
    );
    let services = vec![Arc::new(svc)];
    let labels: BTreeMap<String, String> = [("gs".to_string(), "gs-1".to_string())].into();
    assert_eq!(
        service_address(&labels, "gs", "game", &services),
        Some("10.96.0.10:7777".parse().unwrap())
    );
    assert_eq!(service_address(&labels, "gs", "other", &services), None);
    assert_eq!(
        service_address(&BTreeMap::new(), "gs", "game", &services),
        None
    );
}

#[test]
fn every_data_port_is_read_when_an_object_is_cached() {
    let strings = Strings::default();
    let gs = json!({"apiVersion": "agones.dev/v1", "kind": "GameServer",
        "metadata": {"name": "gs-1", "namespace": "g"},
        "status": {"state": "Ready", "address": "10.0.0.7",
            "ports": [{"name": "default", "port": 7654}, {"name": "voice", "port": 7655}]}});
    let rules = [
        PortRule::Name("default".into()),
        PortRule::Name("voice".into()),
    ];
    let o = lean_object(
        received(gs.clone()),
        &Keep::direct(&cp("status.address"), &rules, []),
        &strings,
    );
    assert_eq!(o.addr, Some("10.0.0.7:7654".parse().unwrap()));
    assert_eq!(&*o.extra_ports, [7655]);
    // A server without every data port's port cannot take the token: no address.
    let rules = [
        PortRule::Name("default".into()),
        PortRule::Name("chat".into()),
    ];
    let o = lean_object(
        received(gs),
        &Keep::direct(&cp("status.address"), &rules, []),
        &strings,
    );
    assert_eq!(o.addr, None);
}
