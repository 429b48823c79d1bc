//! Operating the director, end to end. Hot reload: the real binary on a kubelet-style mounted
//! ConfigMap directory (symlink swap of `..data`), and a watched ConfigMap through the fake
//! API server, while live sessions carry steady traffic and the config is replaced, valid and
//! invalid. The admin views (`/config`, `/sessions`) and the access log.

mod common;

use std::ffi::OsStr;
use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use common::fake_kube::FakeKube;
use common::*;
use serde_json::{Value, json};
use testkit::EchoServer;
use testkit::yaml::static_mapping;
use testkit::{ChildDirector, Pacer, TempDir};
use udp_director::app::{self, StartOptions};
use udp_director::config::ValidConfig;
use udp_director::k8s::Connect;
use udp_director::shell::reload::ConfigSource;

const BIN: &str = env!("CARGO_BIN_EXE_udp-director");

fn echo() -> EchoServer {
    EchoServer::start("127.0.0.1:0".parse().unwrap(), b"").unwrap()
}

fn doc(extra: &str, mappings: &[String]) -> String {
    testkit::yaml::director(extra, mappings)
}

/// Writes a new version the way the kubelet updates a mounted ConfigMap: a fresh timestamped
/// directory, a temporary `..data` symlink to it renamed over the old one (atomic), and
/// `config.yaml -> ..data/config.yaml` created once.
fn kubelet_write(dir: &Path, version: u32, yaml: &str) {
    let versioned = dir.join(format!("..2026_11_22_v{version}"));
    std::fs::create_dir_all(&versioned).unwrap();
    std::fs::write(versioned.join("config.yaml"), yaml).unwrap();
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(versioned.file_name().unwrap(), &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
    let link = dir.join("config.yaml");
    if std::fs::symlink_metadata(&link).is_err() {
        std::os::unix::fs::symlink("..data/config.yaml", &link).unwrap();
    }
}

/// Clients ping-ponging through their sessions until stopped; counts what never came back.
struct Traffic {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    lost: Arc<AtomicU64>,
    threads: Vec<JoinHandle<()>>,
}

impl Traffic {
    /// One thread per client socket (each already has a session); a datagram every ~2 ms.
    fn start(clients: Vec<UdpSocket>, data: SocketAddr) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let lost = Arc::new(AtomicU64::new(0));
        let threads = clients
            .into_iter()
            .map(|socket| {
                let (stop, sent, lost) = (stop.clone(), sent.clone(), lost.clone());
                std::thread::spawn(move || {
                    socket
                        .set_read_timeout(Some(Duration::from_secs(1)))
                        .unwrap();
                    let mut buf = [0u8; 64];
                    let mut pacer = Pacer::new(Duration::from_millis(2));
                    // Bounded: at most 30 000 round trips (a minute) even if never stopped.
                    for seq in 0u64..30_000 {
                        if stop.load(Ordering::Relaxed) {
                            return;
                        }
                        pacer.tick();
                        socket.send_to(&seq.to_be_bytes(), data).unwrap();
                        sent.fetch_add(1, Ordering::Relaxed);
                        match socket.recv(&mut buf) {
                            Ok(8) if buf[..8] == seq.to_be_bytes() => {}
                            _ => {
                                lost.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                })
            })
            .collect();
        Self {
            stop,
            sent,
            lost,
            threads,
        }
    }

    /// Stops and returns (sent, lost).
    fn finish(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        (
            self.sent.load(Ordering::Relaxed),
            self.lost.load(Ordering::Relaxed),
        )
    }
}

/// A client socket with a live session to whatever `request` resolves to, proven by one echo.
fn session(query_addr: SocketAddr, data: SocketAddr, request: &str) -> UdpSocket {
    let token = token_for(query_addr, request);
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(1500)))
        .unwrap();
    socket.send_to(token.as_bytes(), data).unwrap();
    socket.send_to(b"ping", data).unwrap();
    let mut buf = [0u8; 16];
    let n = socket.recv(&mut buf).expect("echo through the new session");
    assert_eq!(&buf[..n], b"ping");
    socket
}

fn admin_json(admin: SocketAddr, path: &str) -> Value {
    let (status, body) = http_get(admin, path);
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"))
}

/// Waits for a log line whose JSON contains every `needle`.
fn wait_log(d: &ChildDirector, needles: &[&str], within: Duration) -> Option<String> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let line = d.logs.recv_timeout(left).ok()?;
        if needles.iter().all(|n| line.contains(n)) {
            return Some(line);
        }
    }
}

#[test]
fn mounted_configmap_swaps_apply_live_and_lose_nothing() {
    let (a, b) = (echo(), echo());
    let tmp = TempDir::new("reload").unwrap();
    let dir = tmp.path.clone();
    let v1 = doc("", &[static_mapping("echo", a.addr)]);
    kubelet_write(&dir, 1, &v1);
    let config = dir.join("config.yaml");
    let d = ChildDirector::spawn_args(
        Path::new(BIN),
        tmp,
        &[OsStr::new("--config"), config.as_os_str()],
    )
    .unwrap();

    let clients: Vec<UdpSocket> = (0..4)
        .map(|_| session(d.query, d.data, r#"{"resourceType":"echo"}"#))
        .collect();
    let traffic = Traffic::start(clients, d.data);

    // v2: a new mapping and a new TTL take effect within 2 s.
    let v2 = doc(
        "tokenTTLSeconds: 7",
        &[
            static_mapping("echo", a.addr),
            static_mapping("second", b.addr),
        ],
    );
    kubelet_write(&dir, 2, &v2);
    let started = tokio::time::Instant::now();
    assert!(
        eventually(Duration::from_secs(2), || {
            query(d.query, r#"{"resourceType":"second"}"#)["token"].is_string()
        }),
        "the new mapping answers within 2 s"
    );
    let took = started.elapsed();
    let answer = query(d.query, r#"{"resourceType":"second"}"#);
    assert_eq!(answer["ttlSeconds"], 7, "{answer}");
    let second = session(d.query, d.data, r#"{"resourceType":"second"}"#);
    assert_eq!(
        d.metric("udp_director_config_reloads_total{result=\"applied\"}"),
        1.0
    );

    // v3: invalid as a whole; rejected with the key named; v2 stays in force.
    kubelet_write(
        &dir,
        3,
        &v2.replace(
            "tokenTTLSeconds: 7",
            "tokenTTLSeconds: 7\ncontrolPacketMagicBytes: zz",
        ),
    );
    let line = wait_log(
        &d,
        &["config rejected", "controlPacketMagicBytes"],
        Duration::from_secs(3),
    );
    assert!(line.is_some(), "a rejection naming the key is logged");
    assert_eq!(
        d.metric("udp_director_config_reloads_total{result=\"rejected\"}"),
        1.0
    );
    assert!(query(d.query, r#"{"resourceType":"second"}"#)["token"].is_string());

    // v4: a port change is reported as needing a restart and not applied.
    kubelet_write(&dir, 4, &v2.replace("queryPort: 0", "queryPort: 1"));
    assert!(eventually(Duration::from_secs(3), || {
        d.metric("udp_director_config_restart_required") == 1.0
    }));
    assert_eq!(admin_json(d.admin, "/config")["queryPort"], 0);
    assert!(query(d.query, r#"{"resourceType":"second"}"#)["token"].is_string());

    // v5: the mapping the live sessions came from is removed; they keep flowing.
    let v5 = doc(
        "tokenTTLSeconds: 7\nsessionTimeoutSeconds: 120",
        &[static_mapping("second", b.addr)],
    );
    kubelet_write(&dir, 5, &v5);
    assert!(eventually(Duration::from_secs(2), || {
        query(d.query, r#"{"resourceType":"echo"}"#)["error"]["code"] == "unknown_resource_type"
    }));
    let config_view = admin_json(d.admin, "/config");
    assert_eq!(config_view["sessionTimeoutSeconds"], 120);
    assert_eq!(
        config_view["controlPacketMagicBytes"],
        "<redacted: 9 bytes>"
    );
    // Traffic runs on past the last swap: 100 more round trips.
    let so_far = traffic.sent.load(Ordering::Relaxed);
    assert!(eventually(Duration::from_secs(5), || {
        traffic.sent.load(Ordering::Relaxed) >= so_far + 100
    }));

    let (sent, lost) = traffic.finish();
    println!(
        "reload under traffic: {sent} round trips, {lost} lost; new mapping live after {took:?}"
    );
    assert!(sent > 100, "traffic flowed ({sent})");
    assert_eq!(lost, 0, "no datagram lost across reloads");
    let sessions = admin_json(d.admin, "/sessions");
    assert_eq!(sessions["count"], 5, "{sessions}");
    assert_eq!(
        d.metric("udp_director_sessions_closed_total{reason=\"idle\"}")
            + d.metric("udp_director_sessions_closed_total{reason=\"upstream_error\"}"),
        0.0
    );
    drop(second);
}

#[test]
fn sessions_endpoint_shows_a_bounded_sample() {
    let a = echo();
    let tmp = TempDir::new("sessions").unwrap();
    let d = ChildDirector::spawn_yaml(
        Path::new(BIN),
        tmp,
        &doc("", &[static_mapping("echo", a.addr)]),
        &[],
    )
    .unwrap();
    let clients: Vec<UdpSocket> = (0..5)
        .map(|_| session(d.query, d.data, r#"{"resourceType":"echo"}"#))
        .collect();
    let all = admin_json(d.admin, "/sessions");
    assert_eq!(all["count"], 5);
    let listed = all["sessions"].as_array().unwrap();
    assert_eq!(listed.len(), 5, "{all}");
    let mine: Vec<String> = clients
        .iter()
        .map(|c| c.local_addr().unwrap().to_string())
        .collect();
    for s in listed {
        assert!(
            mine.contains(&s["client"].as_str().unwrap().to_string()),
            "{s}"
        );
        assert_eq!(s["target"]["name"], "echo-0");
        assert_eq!(s["target"]["mapping"], "echo");
        assert_eq!(s["datagramsToTarget"], 1);
        assert_eq!(s["datagramsToClient"], 1);
        assert!(s["ageSeconds"].as_f64().unwrap() >= s["idleSeconds"].as_f64().unwrap());
    }
    let two = admin_json(d.admin, "/sessions?limit=2");
    assert_eq!(two["count"], 5);
    assert_eq!(two["sessions"].as_array().unwrap().len(), 2);
    let capped = admin_json(d.admin, "/sessions?limit=1000000");
    assert_eq!(capped["limit"], 1000);
}

fn configmap(yaml: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "udp-director", "namespace": "games"},
        "data": {"config.yaml": yaml},
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watched_configmap_applies_valid_and_rejects_invalid() {
    let fake = FakeKube::start().await;
    let (a, b) = (echo(), echo());
    let v1 = doc("", &[static_mapping("echo", a.addr)]);
    fake.apply("configmaps", configmap(&v1));
    // A decoy in the same namespace must not be read.
    let mut decoy = configmap("not: [valid");
    decoy["metadata"]["name"] = json!("other");
    fake.apply("configmaps", decoy);
    let dir = TempDir::new("cm").unwrap();
    let director = app::start_with(
        ValidConfig::from_yaml(&v1).unwrap(),
        StartOptions {
            kube: Connect::Kubeconfig(fake.kubeconfig(&dir.path)),
            reload: Some(ConfigSource::ConfigMap {
                namespace: "games".into(),
                name: "udp-director".into(),
            }),
            ..StartOptions::default()
        },
    )
    .await
    .unwrap();
    let (q, data, admin) = (director.query_addr, director.data_addr, director.admin_addr);
    let live = tokio::task::spawn_blocking(move || session(q, data, r#"{"resourceType":"echo"}"#))
        .await
        .unwrap();

    let v2 = doc(
        "",
        &[
            static_mapping("echo", a.addr),
            static_mapping("second", b.addr),
        ],
    );
    fake.apply("configmaps", configmap(&v2));
    let ok = tokio::task::spawn_blocking(move || {
        eventually(Duration::from_secs(2), || {
            query(q, r#"{"resourceType":"second"}"#)["token"].is_string()
        })
    })
    .await
    .unwrap();
    assert!(ok, "the ConfigMap's new mapping answers within 2 s");

    fake.apply("configmaps", configmap("maxSessions: 0\n"));
    let rejected = tokio::task::spawn_blocking(move || {
        eventually(Duration::from_secs(3), || {
            metric(
                admin,
                "udp_director_config_reloads_total{result=\"rejected\"}",
            ) == 1.0
        })
    })
    .await
    .unwrap();
    assert!(rejected);
    let mut no_key = configmap("");
    no_key["data"] = json!({"other.yaml": "x"});
    fake.apply("configmaps", no_key);
    let (still, echoed) = tokio::task::spawn_blocking(move || {
        let rejected_twice = eventually(Duration::from_secs(3), || {
            metric(
                admin,
                "udp_director_config_reloads_total{result=\"rejected\"}",
            ) == 2.0
        });
        let answer = query(q, r#"{"resourceType":"second"}"#);
        live.send_to(b"still", data).unwrap();
        let mut buf = [0u8; 8];
        let n = live.recv(&mut buf).unwrap_or(0);
        (
            rejected_twice && answer["token"].is_string(),
            buf[..n].to_vec(),
        )
    })
    .await
    .unwrap();
    assert!(
        still,
        "invalid documents leave the last good config in force"
    );
    assert_eq!(echoed, b"still", "the live session was not touched");
    assert_eq!(
        metric(
            admin,
            "udp_director_config_reloads_total{result=\"applied\"}"
        ),
        1.0
    );
    director.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_starts_from_a_configmap() {
    let fake = FakeKube::start().await;
    let a = echo();
    fake.apply(
        "configmaps",
        configmap(&doc("", &[static_mapping("echo", a.addr)])),
    );
    let dir = TempDir::new("cm-bin").unwrap();
    let kubeconfig = fake.kubeconfig(&dir.path);
    let d = tokio::task::spawn_blocking(move || {
        ChildDirector::spawn_args(
            Path::new(BIN),
            dir,
            &[
                OsStr::new("--configmap"),
                OsStr::new("games/udp-director"),
                OsStr::new("--kubeconfig"),
                kubeconfig.as_os_str(),
            ],
        )
        .unwrap()
    })
    .await
    .unwrap();
    let q = d.query;
    let answer = tokio::task::spawn_blocking(move || query(q, r#"{"resourceType":"echo"}"#))
        .await
        .unwrap();
    assert!(answer["token"].is_string(), "{answer}");

    // A missing ConfigMap key is a clear start-up error.
    let mut bad = configmap("");
    bad["metadata"]["name"] = json!("empty");
    bad["data"] = json!({});
    fake.apply("configmaps", bad);
    let dir = TempDir::new("cm-bin-bad").unwrap();
    let kubeconfig = fake.kubeconfig(&dir.path);
    let out = tokio::process::Command::new(BIN)
        .args(["--configmap", "games/empty", "--kubeconfig"])
        .arg(&kubeconfig)
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("ConfigMap games/empty has no key config.yaml"),
        "{stderr}"
    );
}

#[test]
fn access_log_has_one_line_per_closed_session_and_can_be_switched_off() {
    let a = echo();
    let tmp = TempDir::new("access").unwrap();
    let dir = tmp.path.clone();
    kubelet_write(
        &dir,
        1,
        &doc(
            "sessionTimeoutSeconds: 1",
            &[static_mapping("echo", a.addr)],
        ),
    );
    let config = dir.join("config.yaml");
    let d = ChildDirector::spawn_logging(
        Path::new(BIN),
        tmp,
        &[OsStr::new("--config"), config.as_os_str()],
        "warn,udp_director::app=info,udp_director::access=info",
    )
    .unwrap();
    let client = session(
        d.query,
        d.data,
        r#"{"resourceType":"echo","playerId":"p-7"}"#,
    );
    let line = wait_log(&d, &["session closed"], Duration::from_secs(5))
        .expect("an access-log line when the session idles out");
    let v: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["target"], "udp_director::access", "{v}");
    assert_eq!(v["client"], client.local_addr().unwrap().to_string());
    assert_eq!(v["mapping"], "echo");
    assert_eq!(v["target_name"], "echo-0");
    assert_eq!(v["target_addr"], a.addr.to_string());
    // The player (a ticket's `sub` when the query carried one).
    assert_eq!(v["player"], "p-7");
    assert_eq!(v["reason"], "idle");
    assert_eq!(v["datagrams_to_target"], 1);
    assert_eq!(v["bytes_to_target"], 4);
    assert_eq!(v["datagrams_to_client"], 1);
    assert_eq!(v["bytes_to_client"], 4);
    assert!(v["duration_ms"].as_u64().unwrap() >= 1000, "{v}");

    // Switched off by a reload: the next close is counted but not logged.
    kubelet_write(
        &dir,
        2,
        &doc(
            "sessionTimeoutSeconds: 1\naccessLog: false",
            &[static_mapping("echo", a.addr)],
        ),
    );
    assert!(eventually(Duration::from_secs(3), || {
        admin_json(d.admin, "/config")["accessLog"] == false
    }));
    let _quiet = session(d.query, d.data, r#"{"resourceType":"echo"}"#);
    assert!(eventually(Duration::from_secs(5), || {
        d.metric("udp_director_sessions_closed_total{reason=\"idle\"}") == 2.0
    }));
    assert!(
        wait_log(&d, &["session closed"], Duration::from_millis(300)).is_none(),
        "no access-log line once accessLog is false"
    );
}
