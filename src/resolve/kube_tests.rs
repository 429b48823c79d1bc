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

#[test]
fn snapshot_candidates_use_the_shortest_posting_list() {
    let obj = |name: &str, labels: Value| -> Arc<Cached> {
        Arc::new(
            serde_json::from_value(json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "namespace": "n", "labels": labels}}))
            .unwrap(),
        )
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
        snap.candidates(&sel)
            .map(|o| o.0.as_ref().unwrap().metadata.name.clone().unwrap())
            .collect()
    };
    assert_eq!(names(&[]).len(), 3);
    assert_eq!(names(&[("map", "y")]), ["b"]);
    // A superset is fine (callers re-check every term); a missing value means nothing.
    assert!(names(&[("fleet", "f"), ("map", "x")]).contains(&"a".to_string()));
    assert!(names(&[("fleet", "nope")]).is_empty());
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
    let svc: Cached = serde_json::from_value(json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "gs-1", "namespace": "g", "labels": {"gs": "gs-1"}},
            "spec": {"clusterIP": "10.96.0.10", "ports": [{"name": "game", "port": 7777}]}}))
    .unwrap();
    let services = vec![Arc::new(svc)];
    let labels = [("gs".to_string(), "gs-1".to_string())].into();
    assert_eq!(
        service_address(&labels, "gs", "game", &services),
        Some("10.96.0.10:7777".parse().unwrap())
    );
    assert_eq!(service_address(&labels, "gs", "other", &services), None);
    assert_eq!(
        service_address(&Default::default(), "gs", "game", &services),
        None
    );
}
