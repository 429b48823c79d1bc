//! Kubernetes-backed mappings end to end: the real kube client (through a kubeconfig) against
//! an in-process fake API server, queries over TCP, sessions over UDP to loopback backends.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::fake_kube::{Env, FakeKube, ready, start, wait};
use common::*;
use serde_json::{Value, json};

const AGONES: &str = "agones.dev/v1";

fn gameserver(name: &str, state: &str, port: u16) -> Value {
    json!({"apiVersion": AGONES, "kind": "GameServer",
        "metadata": {"name": name, "namespace": "game-servers", "labels": {"agones.dev/fleet": "f1"},
            "managedFields": [{"manager": "agones", "operation": "Update"}]},
        "spec": {"ports": [{"name": "default", "containerPort": 7654}]},
        "status": {"state": state, "address": "127.0.0.1", "ports": [{"name": "default", "port": port}]}})
}

/// A GameServer as Agones writes it: owner reference, finalizers, SDK annotations, the pod
/// template in `spec`, addresses and a players list in `status` (≈ 3 KB of JSON).
fn realistic_gameserver(name: &str, state: &str, port: u16) -> Value {
    json!({"apiVersion": AGONES, "kind": "GameServer",
        "metadata": {"name": name, "namespace": "game-servers", "generateName": "f1-x7k2p-",
            "uid": "6f1c2a8e-5b7d-4c1e-9a3f-2d8e7b6c5a41", "generation": 4,
            "creationTimestamp": "2026-11-30T10:00:00Z",
            "labels": {"agones.dev/fleet": "f1", "agones.dev/gameserverset": "f1-x7k2p", "map": "de_dust2"},
            "annotations": {"agones.dev/sdk-version": "1.44.0", "agones.dev/ready-container-id": "containerd://4b1f0c9e8d7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b1c0"},
            "finalizers": ["agones.dev/controller"],
            "ownerReferences": [{"apiVersion": "agones.dev/v1", "kind": "GameServerSet", "name": "f1-x7k2p",
                "uid": "0d9e8f7a-6b5c-4d3e-2f1a-0b9c8d7e6f5a", "controller": true, "blockOwnerDeletion": true}],
            "managedFields": [{"manager": "agones-controller", "operation": "Update", "apiVersion": "agones.dev/v1",
                "time": "2026-11-30T10:00:05Z", "fieldsType": "FieldsV1",
                "fieldsV1": {"f:status": {".": {}, "f:address": {}, "f:ports": {}, "f:state": {}}}}]},
        "spec": {"container": "game", "ports": [{"name": "default", "portPolicy": "Dynamic", "containerPort": 7654, "protocol": "UDP", "hostPort": port}],
            "health": {"initialDelaySeconds": 5, "periodSeconds": 5, "failureThreshold": 3},
            "scheduling": "Packed", "sdkServer": {"logLevel": "Info", "grpcPort": 9357, "httpPort": 9358},
            "lists": {"players": {"capacity": 10, "values": []}},
            "eviction": {"safe": "Never"},
            "template": {"metadata": {"creationTimestamp": null, "labels": {"app": "game"}},
                "spec": {"containers": [{"name": "game", "image": "us-docker.pkg.dev/agones-images/examples/simple-game-server:0.35",
                    "args": ["-automaticShutdownDelayMin", "10", "-readyDelaySec", "2"],
                    "env": [{"name": "LOG_LEVEL", "value": "info"}, {"name": "REGION", "value": "eu-west-1"},
                        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
                    "resources": {"limits": {"cpu": "500m", "memory": "256Mi"}, "requests": {"cpu": "250m", "memory": "128Mi"}},
                    "securityContext": {"runAsNonRoot": true, "allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}},
                    "volumeMounts": [{"name": "config", "mountPath": "/etc/game", "readOnly": true}]}],
                    "volumes": [{"name": "config", "configMap": {"name": "game-config"}}],
                    "nodeSelector": {"pool": "game"},
                    "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "game", "effect": "NoExecute"}],
                    "terminationGracePeriodSeconds": 30}}},
        "status": {"state": state, "address": "127.0.0.1", "ports": [{"name": "default", "port": port}],
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}, {"type": "Hostname", "address": "node-a"},
                {"type": "PodIP", "address": "10.4.2.17"}],
            "nodeName": "node-a", "reservedUntil": null, "players": null, "counters": {},
            "lists": {"players": {"capacity": 10, "values": []}}, "eviction": {"safe": "Never"}}})
}

const GS_CONFIG: &str = "bindAddress: 127.0.0.1\nqueryPort: 0\ndataPort: 0\nadminPort: 0\nresourceQueryMapping:\n  gameserver:\n    group: agones.dev\n    version: v1\n    resource: gameservers\n    kind: GameServer\n    namespace: game-servers\n    labelSelector: {agones.dev/fleet: f1}\n    addressPath: status.address\n    portName: default\n";

const READY: &str = r#"{"resourceType":"gameserver","statusQuery":{"jsonPath":"status.state","expectedValue":"Ready"}}"#;

/// A fake API server holding one Ready GameServer `gs-1`, and a director synced to it.
async fn ready_with_gs1() -> (Arc<FakeKube>, Env) {
    let fake = FakeKube::start().await;
    fake.apply("gameservers", gameserver("gs-1", "Ready", 7001));
    let env = start(GS_CONFIG, Arc::clone(&fake)).await;
    assert!(wait(Duration::from_secs(10), || ready(&env.director)).await);
    (fake, env)
}

/// Blocking socket work off the runtime threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gameservers_resolve_from_the_watch_cache_and_proxy() {
    let (a, b) = (Backend::new(), Backend::new());
    let fake = FakeKube::start().await;
    fake.apply("gameservers", gameserver("gs-a", "Ready", a.addr.port()));
    fake.apply(
        "gameservers",
        gameserver("gs-b", "Allocated", b.addr.port()),
    );
    let env = start(GS_CONFIG, Arc::clone(&fake)).await;
    let d = &env.director;
    assert!(
        wait(Duration::from_secs(10), || ready(d)).await,
        "readyz turns 200 once synced"
    );

    let (q, data) = (d.query_addr, d.data_addr);
    let answer = blocking(move || query(q, READY)).await;
    assert_eq!(answer["target"]["name"], "gs-a", "{answer}");
    assert_eq!(answer["target"]["namespace"], "game-servers");
    let token = answer["token"].as_str().unwrap().to_string();
    let a = blocking(move || {
        let c = Client::new(data);
        establish(&c, &token, &a);
        a
    })
    .await;

    // Queries come from the cache: 1000 of them cause no LIST.
    let lists = fake.lists(AGONES, "gameservers");
    blocking(move || {
        let mut s = std::net::TcpStream::connect(q).unwrap();
        use std::io::{BufRead, Write};
        let mut r = std::io::BufReader::new(s.try_clone().unwrap());
        let mut line = String::new();
        for _ in 0..1000 {
            s.write_all(b"{\"resourceType\":\"gameserver\"}\n").unwrap();
            line.clear();
            r.read_line(&mut line).unwrap();
            // Rate limiting may answer some; none may be anything but a token or rate_limited.
            assert!(
                line.contains("token") || line.contains("rate_limited"),
                "{line}"
            );
        }
    })
    .await;
    assert_eq!(
        fake.lists(AGONES, "gameservers"),
        lists,
        "queries caused a LIST"
    );

    // A state change reaches queries within a second.
    fake.apply("gameservers", gameserver("gs-a", "Shutdown", a.addr.port()));
    let gone = wait(Duration::from_secs(1), || {
        query(q, READY)["error"]["code"] == "no_match"
    })
    .await;
    assert!(gone, "a Shutdown GameServer stops matching within 1 s");
    fake.apply("gameservers", gameserver("gs-b", "Ready", b.addr.port()));
    assert!(
        wait(Duration::from_secs(1), || query(q, READY)["target"]["name"]
            == "gs-b")
        .await
    );
    fake.delete(AGONES, "gameservers", "game-servers", "gs-b");
    assert!(
        wait(Duration::from_secs(1), || query(q, READY)["error"]["code"]
            == "no_match")
        .await
    );
    env.director.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_resume_after_cuts_and_relist_after_410() {
    let (fake, env) = ready_with_gs1().await;
    let d = &env.director;
    let q = d.query_addr;
    let lists = fake.lists(AGONES, "gameservers");

    // A dropped watch resumes from its resourceVersion: no relist needed.
    fake.cut_watches();
    fake.apply("gameservers", gameserver("gs-2", "Ready", 7002));
    let by_name = |name: &'static str| {
        move || {
            let r = query(
                q,
                &format!(
                    r#"{{"resourceType":"gameserver","statusQuery":{{"jsonPath":"metadata.name","expectedValue":"{name}"}}}}"#
                ),
            );
            r["target"]["name"] == name
        }
    };
    assert!(
        wait(Duration::from_secs(10), by_name("gs-2")).await,
        "update after a cut watch"
    );

    // History compacted: the resumed watch gets 410 Gone and the watcher relists.
    fake.compact();
    fake.cut_watches();
    fake.apply("gameservers", gameserver("gs-3", "Ready", 7003));
    assert!(
        wait(Duration::from_secs(10), by_name("gs-3")).await,
        "update after 410"
    );
    assert!(
        fake.lists(AGONES, "gameservers") > lists,
        "410 triggers a relist"
    );
    env.director.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_api_server_keeps_the_last_known_state() {
    let (fake, env) = ready_with_gs1().await;
    let d = &env.director;
    fake.stop().await;
    let q = d.query_addr;
    for _ in 0..5 {
        assert_eq!(
            blocking(move || query(q, READY)).await["target"]["name"],
            "gs-1"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ready(d), "stays ready on the last known state");
    assert!(
        wait(Duration::from_secs(5), || metric(
            d.admin_addr,
            "udp_director_kube_watch_errors_total"
        ) >= 1.0)
        .await,
        "the outage is counted"
    );
    env.director.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flapping_api_answering_garbage_neither_crashes_nor_empties_the_cache() {
    let (fake, env) = ready_with_gs1().await;
    let d = &env.director;
    let q = d.query_addr;
    let errors_before = metric(d.admin_addr, "udp_director_kube_watch_errors_total");
    // Flap: garbage, down, garbage, up — several times, with queries all along.
    for round in 0..3 {
        fake.set_garbage(true);
        for _ in 0..5 {
            let answer = blocking(move || query(q, READY)).await;
            assert_eq!(answer["target"]["name"], "gs-1", "round {round}: {answer}");
            tokio::time::sleep(Duration::from_millis(60)).await;
        }
        fake.stop().await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            blocking(move || query(q, READY)).await["target"]["name"],
            "gs-1"
        );
        fake.restart().await;
        fake.set_garbage(false);
    }
    assert!(ready(d), "the cache still serves its last good state");
    assert!(
        metric(d.admin_addr, "udp_director_kube_watch_errors_total") > errors_before,
        "the garbage is counted"
    );
    assert_eq!(
        metric(
            d.admin_addr,
            "udp_director_mapping_objects{mapping=\"gameserver\"}"
        ),
        1.0
    );
    // Sane again: changes flow in.
    fake.apply("gameservers", gameserver("gs-1", "Shutdown", 7001));
    fake.apply("gameservers", gameserver("gs-2", "Ready", 7002));
    assert!(
        wait(
            Duration::from_secs(15),
            || query(q, READY)["target"]["name"] == "gs-2"
        )
        .await,
        "the watch recovers once the API server answers sensibly"
    );
    env.director.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starting_with_the_api_down_is_unready_until_it_comes_up() {
    let fake = FakeKube::start().await;
    fake.apply("gameservers", gameserver("gs-1", "Ready", 7001));
    fake.stop().await;
    let env = start(GS_CONFIG, Arc::clone(&fake)).await;
    let d = &env.director;
    let q = d.query_addr;
    assert_eq!(http_get(d.admin_addr, "/readyz").0, 503);
    assert_eq!(
        blocking(move || query(q, READY)).await["error"]["code"],
        "unavailable"
    );
    fake.restart().await;
    assert!(
        wait(Duration::from_secs(20), || ready(d)).await,
        "ready once the API answers"
    );
    assert_eq!(
        blocking(move || query(q, READY)).await["target"]["name"],
        "gs-1"
    );
    env.director.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_by_container_port_name_and_services_by_label() {
    let backend = Backend::new();
    let fake = FakeKube::start().await;
    let pod = |name: &str, phase: &str| {
        json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "games", "labels": {"app": "game", "gs": name}},
        "spec": {"containers": [{"name": "game", "ports": [{"name": "udp-game", "containerPort": backend.addr.port(), "protocol": "UDP"}]}]},
        "status": {"phase": phase, "podIP": "127.0.0.1"}})
    };
    fake.apply("pods", pod("pod-1", "Running"));
    fake.apply("pods", pod("pod-2", "Pending"));
    // A malformed body (containers not a list, podIP a number) is skipped and the stream goes
    // on. (Broken *metadata* cannot come from a real API server, which validates it.)
    fake.apply(
        "pods",
        json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "broken", "namespace": "games", "labels": {"app": "game"}},
            "spec": {"containers": "not-a-list"}, "status": {"phase": "Running", "podIP": 12345}}),
    );
    fake.apply("services", json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "svc-pod-1", "namespace": "games", "labels": {"gs": "pod-1"}},
        "spec": {"clusterIP": "127.0.0.1", "ports": [{"name": "game", "port": backend.addr.port()}]}}));
    let yaml = "bindAddress: 127.0.0.1\nqueryPort: 0\ndataPort: 0\nadminPort: 0\nresourceQueryMapping:\n  pod:\n    version: v1\n    resource: pods\n    namespace: games\n    exposeTargetAddress: true\n    addressPath: status.podIP\n    portName: udp-game\n  viaservice:\n    version: v1\n    resource: pods\n    namespace: games\n    exposeTargetAddress: true\n    serviceSelectorLabel: gs\n    serviceTargetPortName: game\n";
    let env = start(yaml, Arc::clone(&fake)).await;
    let d = &env.director;
    let ok = wait(Duration::from_secs(10), || ready(d)).await;
    assert!(
        ok,
        "lists pods {} services {}, watches pods {} services {}",
        fake.lists("v1", "pods"),
        fake.lists("v1", "services"),
        fake.watches("v1", "pods"),
        fake.watches("v1", "services")
    );
    let q = d.query_addr;
    let running = r#"{"resourceType":"pod","statusQuery":{"jsonPath":"{.status.phase}","expectedValue":"Running"}}"#;
    let a = blocking(move || query(q, running)).await;
    assert_eq!(a["target"]["name"], "pod-1", "{a}");
    assert_eq!(a["target"]["port"], backend.addr.port());
    let s = blocking(move || query(q, r#"{"resourceType":"viaservice"}"#)).await;
    assert_eq!(
        s["target"]["name"], "pod-1",
        "only pod-1 has a Service: {s}"
    );
    assert_eq!(s["target"]["address"], "127.0.0.1");
    // The stream survived the malformed object: later changes still arrive.
    fake.apply("pods", pod("pod-2", "Running"));
    let both = wait(Duration::from_secs(2), || {
        query(
            q,
            &running.replace(
                "Running\"}}",
                "Running\"},\"labelSelector\":{\"gs\":\"pod-2\"}}",
            ),
        )["target"]["name"]
            == "pod-2"
    })
    .await;
    assert!(both);
    let token = a["token"].as_str().unwrap().to_string();
    let data = d.data_addr;
    blocking(move || establish(&Client::new(data), &token, &backend)).await;
    env.director.stop().await;
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("VmRSS:")?
                    .trim()
                    .trim_end_matches(" kB")
                    .parse()
                    .ok()
            })
        })
        .unwrap_or(0)
}

/// 10 000 GameServers in the cache: every query is answered from memory (no LIST), selectors
/// and status queries still pick correctly. Prints the query latency and the memory the cache
/// takes (figures for Docs/Benchmarks.md; nothing here asserts on time).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_gameservers_are_served_from_memory() {
    let fake = FakeKube::start().await;
    for i in 0..10_000u16 {
        let state = if i % 2 == 0 { "Ready" } else { "Allocated" };
        let mut gs = gameserver(&format!("gs-{i:05}"), state, 7000 + (i % 1000));
        gs["metadata"]["labels"]["map"] = json!(format!("map-{}", (i / 2) % 10));
        fake.apply("gameservers", gs);
    }
    let before = rss_kib();
    let yaml = GS_CONFIG.replace(
        "resourceQueryMapping:",
        "limits: {queryRatePerSecond: 1000000, queryBurst: 1000000}\nresourceQueryMapping:",
    );
    let env = start(&yaml, Arc::clone(&fake)).await;
    let d = &env.director;
    assert!(wait(Duration::from_secs(30), || ready(d)).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = rss_kib();
    let lists = fake.lists(AGONES, "gameservers");
    let q = d.query_addr;
    let rtts = blocking(move || {
        use std::io::{BufRead, Write};
        let mut s = std::net::TcpStream::connect(q).unwrap();
        s.set_nodelay(true).unwrap();
        let mut r = std::io::BufReader::new(s.try_clone().unwrap());
        let mut line = String::new();
        let mut rtts = Vec::new();
        for i in 0..1000 {
            let req = format!(
                r#"{{"resourceType":"gameserver","labelSelector":{{"map":"map-{}"}},"statusQuery":{{"jsonPath":"status.state","expectedValue":"Ready"}}}}"#,
                i % 10
            );
            let t = tokio::time::Instant::now();
            s.write_all(req.as_bytes()).unwrap();
            s.write_all(b"\n").unwrap();
            line.clear();
            r.read_line(&mut line).unwrap();
            rtts.push(t.elapsed().as_micros() as u64);
            let v: Value = serde_json::from_str(&line).unwrap();
            let name = v["target"]["name"].as_str().unwrap_or_else(|| panic!("{line}"));
            let n: u16 = name[3..].parse().unwrap();
            assert_eq!(n % 2, 0, "only Ready servers");
            assert_eq!((n / 2) % 10, (i % 10) as u16, "the selected map");
        }
        rtts
    })
    .await;
    assert_eq!(
        fake.lists(AGONES, "gameservers"),
        lists,
        "no LIST per query"
    );
    let p = |q: f64| testkit::load::percentile(&rtts, q);
    eprintln!(
        "10 000 cached GameServers: query latency p50 {} µs, p99 {} µs (client-side, one connection); process RSS {} -> {} KiB (+{} KiB for the cache)",
        p(50.0),
        p(99.0),
        before,
        after,
        after.saturating_sub(before)
    );
    env.director.stop().await;
}

/// The director's own memory for 10 000 cached GameServers as Agones writes them (pod
/// template and all): the real binary as a child process, its RSS before the API server comes
/// up and after the cache has synced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_of_ten_thousand_cached_gameservers_in_the_director_process() {
    let fake = FakeKube::start().await;
    for i in 0..10_000u16 {
        fake.apply(
            "gameservers",
            realistic_gameserver(&format!("gs-{i:05}"), "Ready", 7000),
        );
    }
    fake.stop().await;
    let dir = testkit::TempDir::new("kube-mem").unwrap();
    let kubeconfig = fake.kubeconfig(&dir.path);
    let exe = std::path::PathBuf::from(env!("CARGO_BIN_EXE_udp-director"));
    let yaml = GS_CONFIG.to_string();
    let child = blocking(move || {
        let args = [std::ffi::OsStr::new("--kubeconfig"), kubeconfig.as_os_str()];
        testkit::ChildDirector::spawn_yaml(&exe, dir, &yaml, &args).unwrap()
    })
    .await;
    let admin = child.admin;
    assert_eq!(
        http_get(admin, "/readyz").0,
        503,
        "unready while the API is down"
    );
    let before = child.rss_kib();
    fake.restart().await;
    assert!(
        wait(Duration::from_secs(30), || http_get(admin, "/readyz").0
            == 200)
        .await
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = child.rss_kib();
    assert!(after > before);
    let per_object = (after - before) * 1024 / 10_000;
    eprintln!(
        "director process RSS with 10 000 cached GameServers: {before} -> {after} KiB (+{} KiB, {per_object} B per object incl. decode buffers the allocator keeps)",
        after - before,
    );
    // The figure is ≈ 1.3 KB (Docs/Benchmarks.md); whole objects took ≈ 34 KB. Twice the bar
    // leaves room for a noisy allocator and still fails if the caches stop being lean.
    assert!(
        per_object <= 3_000,
        "{per_object} B per cached GameServer: the caches keep more than routing reads"
    );
}

fn key_secret(text: &str) -> Value {
    use base64::Engine;
    json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {"name": "token-keys", "namespace": "udp"},
        "data": {"token-keys": base64::engine::general_purpose::STANDARD.encode(text)}})
}

fn key_line(id: &str, byte: u8) -> String {
    use base64::Engine;
    format!(
        "{id} {}\n",
        base64::engine::general_purpose::STANDARD.encode([byte; 32])
    )
}

/// `--token-keys-secret` (here `tokenKeysSecret`): the keys are fetched from the Secret at
/// start and its changes applied through the watch; an invalid text is rejected whole and
/// counted, and a key removed from the Secret stops opening its tokens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealed_token_keys_come_from_a_watched_secret() {
    let fake = FakeKube::start().await;
    fake.apply("secrets", key_secret(&key_line("k1", 1)));
    let backend = Backend::new();
    let yaml = testkit::yaml::director(
        "tokenFormat: sealed\ntokenKeysSecret: udp/token-keys\n",
        &[testkit::yaml::echo_mapping(&[backend.addr])],
    );
    let env = start(&yaml, Arc::clone(&fake)).await;
    let d = &env.director;
    let (query, data, admin) = (d.query_addr, d.data_addr, d.admin_addr);
    let reloads = move |result: &str| {
        metric(
            admin,
            &format!("udp_director_token_key_reloads_total{{result=\"{result}\"}}"),
        )
    };
    let first = blocking(move || token_for(query, r#"{"resourceType":"echo"}"#)).await;
    assert!(
        first.len() <= 128 && first.len() != 36,
        "a sealed token: {first}"
    );
    let b = Arc::new(backend);
    let open = {
        let b = Arc::clone(&b);
        move |datagram: Vec<u8>| {
            let b = Arc::clone(&b);
            async move {
                blocking(move || {
                    let c = Client::new(data);
                    // A token already holding a session (at an earlier client's address) is
                    // challenged first: proof of address.
                    c.redeem(&datagram);
                    c.send(b"ping");
                    b.recv().is_some_and(|(got, _)| got == b"ping")
                })
                .await
            }
        }
    };
    let magic = b"\xff\xff\xff\xffRESET".to_vec();
    assert!(open(first.clone().into_bytes()).await);
    let watched = reloads("applied");

    // Rotation, step 1: a new key first, the old one kept.
    fake.apply(
        "secrets",
        key_secret(&format!("{}{}", key_line("k2", 2), key_line("k1", 1))),
    );
    assert!(wait(Duration::from_secs(10), || reloads("applied") > watched).await);
    let second = blocking(move || token_for(query, r#"{"resourceType":"echo"}"#)).await;
    assert!(open([magic.clone(), first.clone().into_bytes()].concat()).await);

    // An invalid Secret is rejected whole; the keys in force stay.
    fake.apply("secrets", key_secret("nonsense"));
    assert!(wait(Duration::from_secs(10), || reloads("rejected") >= 1.0).await);
    assert!(open([magic.clone(), second.clone().into_bytes()].concat()).await);

    // Step 2: the old key removed.
    let before = reloads("applied");
    fake.apply("secrets", key_secret(&key_line("k2", 2)));
    assert!(wait(Duration::from_secs(10), || reloads("applied") > before).await);
    assert!(open([magic.clone(), second.into_bytes()].concat()).await);
    assert!(!open([magic, first.into_bytes()].concat()).await);
    assert!(
        wait(Duration::from_secs(3), || metric(
            admin,
            "udp_director_tokens_rejected_total{reason=\"unknown_key\"}"
        ) >= 1.0)
        .await
    );
    assert_eq!(metric(admin, "udp_director_token_keys"), 1.0);
    env.director.stop().await;
}

/// Lean caches (SPEC §4): status scalars, the ports `portName` reads, labels, annotations and
/// metadata answer queries as before; a field outside what is kept (`status.lists`) matches
/// only once the mapping lists it in `cacheFields`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lean_caches_answer_from_the_kept_fields_and_cache_fields_keep_more() {
    let fake = FakeKube::start().await;
    let backend = Backend::new();
    fake.apply(
        "gameservers",
        realistic_gameserver("gs-1", "Ready", backend.addr.port()),
    );
    let with_lists = GS_CONFIG.replace(
        "  gameserver:\n",
        "  withlists:\n    group: agones.dev\n    version: v1\n    resource: gameservers\n    namespace: game-servers\n    addressPath: status.address\n    portName: default\n    cacheFields: [status.lists.players]\n  gameserver:\n",
    );
    let env = start(&with_lists, Arc::clone(&fake)).await;
    let d = &env.director;
    assert!(wait(Duration::from_secs(10), || ready(d)).await);
    let q = d.query_addr;
    let ask = move |mapping: &str, path: &str, value: &str| {
        let line = json!({"resourceType": mapping,
            "statusQuery": {"jsonPath": path, "expectedValue": value}})
        .to_string();
        blocking(move || query(q, &line))
    };
    for (mapping, path, value) in [
        ("gameserver", "status.state", "Ready"),
        ("gameserver", "status.nodeName", "node-a"),
        (
            "gameserver",
            "status.ports[?(@.name=='default')].port",
            &backend.addr.port().to_string(),
        ),
        ("gameserver", "metadata.labels.map", "de_dust2"),
        (
            "gameserver",
            "metadata.annotations['agones.dev/sdk-version']",
            "1.44.0",
        ),
        ("withlists", "status.lists.players.capacity", "10"),
    ] {
        let a = ask(mapping, path, value).await;
        assert_eq!(a["target"]["name"], "gs-1", "{mapping} {path}: {a}");
    }
    for (path, value) in [
        ("status.lists.players.capacity", "10"),
        ("spec.container", "game"),
    ] {
        let a = ask("gameserver", path, value).await;
        assert_eq!(a["error"]["code"], "no_match", "{path} is not kept: {a}");
    }
    env.director.stop().await;
}
