//! The real `udp-director` binary: config errors, environment overrides, and the SIGTERM
//! drain (readyz 503, live sessions keep flowing, exit 0).

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::*;

const BIN: &str = env!("CARGO_BIN_EXE_udp-director");

fn write_config(name: &str, yaml: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("udp-director-test-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("config.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

struct Director {
    child: Child,
    /// Log lines printed after the start-up line.
    logs: mpsc::Receiver<String>,
    query: SocketAddr,
    data: SocketAddr,
    admin: SocketAddr,
}

impl Drop for Director {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the binary with JSON logs and reads the bound addresses from its start-up line.
fn spawn(config: &PathBuf, envs: &[(&str, &str)]) -> Director {
    let child = Command::new(BIN)
        .arg("--config")
        .arg(config)
        .arg("--log-format")
        .arg("json")
        .envs(envs.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    // Owned by the guard from here on: killed and reaped on every path, panics included.
    let unbound: SocketAddr = "0.0.0.0:0".parse().unwrap();
    let (tx, rx) = mpsc::channel();
    let mut d = Director {
        child,
        logs: rx,
        query: unbound,
        data: unbound,
        admin: unbound,
    };
    let stdout = d.child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let line = d
            .logs
            .recv_timeout(left)
            .expect("start-up line within 20 s");
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if v["message"] == "udp-director listening" {
            let addr = |k: &str| v[k].as_str().unwrap().parse().unwrap();
            (d.query, d.data, d.admin) = (addr("query"), addr("data"), addr("admin"));
            return d;
        }
    }
}

fn static_yaml(backend: &Backend, extra: &str) -> String {
    format!(
        "bindAddress: 127.0.0.1\nqueryPort: 0\ndataPort: 0\nadminPort: 0\n{extra}\nresourceQueryMapping:\n  echo:\n    static:\n      - {{name: a, address: 127.0.0.1, port: {}}}\n",
        backend.addr.port()
    )
}

#[test]
fn invalid_config_stops_with_one_clear_message() {
    let cases = [
        (
            "magic",
            "controlPacketMagicBytes: XYZ\nresourceQueryMapping: {e: {static: [{name: a, address: 127.0.0.1, port: 1}]}}\n",
            "controlPacketMagicBytes",
        ),
        (
            "lb",
            "loadBalancing: {type: fastest}\nresourceQueryMapping: {e: {static: [{name: a, address: 127.0.0.1, port: 1}]}}\n",
            "fastest",
        ),
        (
            "noaddr",
            "resourceQueryMapping: {e: {static: [{name: a, port: 1}]}}\n",
            "address",
        ),
        (
            "dup",
            "resourceQueryMapping: {e: {static: [{name: a, address: 127.0.0.1, port: 1}, {name: a, address: 127.0.0.1, port: 2}]}}\n",
            "duplicate endpoint name",
        ),
    ];
    for (name, yaml, needle) in cases {
        let path = write_config(name, yaml);
        let out = Command::new(BIN)
            .arg("--config")
            .arg(&path)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{name}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(needle), "{name}: {stderr}");
        assert!(
            !stderr.contains("panicked") && !stderr.contains("backtrace"),
            "{stderr}"
        );
    }
    let out = Command::new(BIN)
        .arg("--config")
        .arg("/nonexistent/udp-director.yaml")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/udp-director.yaml"));
}

#[test]
fn example_config_is_valid() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config.example.yaml");
    let out = Command::new(BIN)
        .args(["--config", path, "--check-config"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn environment_overrides_the_config_file() {
    let b = Backend::new();
    let path = write_config("env", &static_yaml(&b, ""));
    let out = Command::new(BIN)
        .args(["--check-config", "--config"])
        .arg(&path)
        .env("UDP_DIRECTOR_MAX_SESSIONS", "42")
        .env("UDP_DIRECTOR_SESSION_TIMEOUT_SECONDS", "7")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("maxSessions: 42"), "{text}");
    assert!(text.contains("sessionTimeoutSeconds: 7"), "{text}");
    // A bad value from the environment is rejected like a bad file value.
    let out = Command::new(BIN)
        .args(["--check-config", "--config"])
        .arg(&path)
        .env("UDP_DIRECTOR_MAX_SESSIONS", "0")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("maxSessions"));
}

#[test]
fn sigterm_drains_live_sessions_then_exits_zero() {
    let b = Backend::new();
    let path = write_config("drain", &static_yaml(&b, "drainSeconds: 2"));
    let mut d = spawn(&path, &[]);
    assert_eq!(http_get(d.admin, "/readyz").0, 200);
    let c = Client::new(d.data);
    let token = token_for(d.query, r#"{"resourceType":"echo"}"#);
    let peer = establish(&c, &token, &b);

    let status = Command::new("kill")
        .args(["-TERM", &d.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert!(eventually(Duration::from_secs(2), || http_get(
        d.admin, "/readyz"
    )
    .0 == 503));
    // Queries are refused, new sessions are refused, the live session keeps flowing.
    assert_eq!(
        query(d.query, r#"{"resourceType":"echo"}"#)["error"]["code"],
        "unavailable"
    );
    let newcomer = Client::new(d.data);
    newcomer.send(token.as_bytes());
    newcomer.send(b"new");
    c.send(b"during-drain");
    assert_eq!(b.recv().unwrap().0, b"during-drain");
    b.socket.send_to(b"reply", peer).unwrap();
    assert_eq!(c.recv().unwrap(), b"reply");
    b.expect_silence(Duration::from_millis(200));

    let exited = eventually(Duration::from_secs(6), || {
        matches!(d.child.try_wait(), Ok(Some(_)))
    });
    assert!(exited, "exits after drainSeconds");
    let status = d.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
}

#[test]
fn a_flood_of_bad_datagrams_is_counted_not_logged() {
    let b = Backend::new();
    let path = write_config("flood", &static_yaml(&b, ""));
    let d = spawn(&path, &[("RUST_LOG", "info")]);
    let attacker = Client::new(d.data);
    let n = 5_000;
    for i in 0..n {
        match i % 3 {
            0 => attacker.send(b"garbage"),
            1 => attacker.send(b"00000000-0000-4000-8000-000000000000"),
            _ => attacker.send(&[MAGIC, b"junk"].concat()),
        }
        if i % 500 == 499 {
            // Stay within the socket buffers: this test is about logging, not loss.
            std::thread::park_timeout(Duration::from_millis(5));
        }
    }
    let counted = eventually(Duration::from_secs(5), || {
        let dropped: f64 = ["no_session", "invalid_token", "malformed_control"]
            .iter()
            .map(|r| {
                metric(
                    d.admin,
                    &format!("udp_director_datagrams_dropped_total{{reason=\"{r}\"}}"),
                )
            })
            .sum();
        dropped >= f64::from(n) * 0.95
    });
    assert!(counted, "drops are counted by reason");
    attacker.expect_silence(Duration::from_millis(100));
    let lines: Vec<String> = d.logs.try_iter().collect();
    assert!(
        lines.len() < 10,
        "{} log lines for {n} bad datagrams: {lines:?}",
        lines.len()
    );
}
