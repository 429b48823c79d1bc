//! The real `udp-director` binary: config errors, environment overrides, and the SIGTERM
//! drain (readyz 503, live sessions keep flowing, exit 0).

mod common;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use testkit::{ChildDirector, Rng, TempDir, yaml};

const BIN: &str = env!("CARGO_BIN_EXE_udp-director");

fn write_config(dir: &TempDir, yaml: &str) -> PathBuf {
    let path = dir.path.join("config.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

fn static_yaml(backend: &Backend, extra: &str) -> String {
    yaml::director(extra, &[yaml::echo_mapping(&[backend.addr])])
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
        (
            "fastpath-reuseport",
            "reusePort: true\nfastPath: {enabled: true}\nresourceQueryMapping: {e: {static: [{name: a, address: 127.0.0.1, port: 1}]}}\n",
            "reusePort",
        ),
        #[cfg(not(feature = "fast-path"))]
        (
            "fastpath-not-built",
            "fastPath: {enabled: true}\nresourceQueryMapping: {e: {static: [{name: a, address: 127.0.0.1, port: 1}]}}\n",
            "--features fast-path",
        ),
    ];
    for (name, yaml, needle) in cases {
        let dir = TempDir::new(name).unwrap();
        let path = write_config(&dir, yaml);
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
    let dir = TempDir::new("env").unwrap();
    let path = write_config(&dir, &static_yaml(&b, ""));
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
    let mut d = ChildDirector::spawn_yaml(
        Path::new(BIN),
        TempDir::new("drain").unwrap(),
        &static_yaml(&b, "drainSeconds: 2"),
        &[],
    )
    .unwrap();
    assert_eq!(http_get(d.admin, "/readyz").0, 200);
    let c = Client::new(d.data);
    let token = token_for(d.query, r#"{"resourceType":"echo"}"#);
    let peer = establish(&c, &token, &b);

    d.terminate().unwrap();
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
    // The newcomer's token was refused as a draining newcomer (counted), and reached nobody.
    assert!(eventually(Duration::from_secs(2), || d.metric(
        "udp_director_sessions_refused_total{reason=\"draining\"}"
    ) >= 1.0));
    b.expect_silence(Duration::from_millis(200));

    let status = d
        .wait_exit(Duration::from_secs(6))
        .expect("exits after drainSeconds");
    assert!(status.success(), "{status:?}");
}

#[test]
fn a_flood_of_bad_datagrams_is_counted_not_logged() {
    let b = Backend::new();
    let d = ChildDirector::spawn_logging(
        Path::new(BIN),
        TempDir::new("flood").unwrap(),
        &[
            OsStr::new("--config"),
            write_config(&TempDir::new("flood-config").unwrap(), &static_yaml(&b, "")).as_os_str(),
        ],
        "info",
    );
    let d = d.unwrap();
    // Settle: the start-up lines are not the flood's.
    while d.logs.recv_timeout(Duration::from_millis(200)).is_ok() {}
    let attacker = Client::new(d.data);
    let mut rng = Rng::new(3);
    let n = 5_000usize;
    // Bursts of 500, each sent once the director has counted the previous one, so the
    // socket buffers are never what drops them: this test is about logging, not loss.
    for burst in 0..n / 500 {
        for i in burst * 500..(burst + 1) * 500 {
            match i % 3 {
                0 => attacker.send(&rng.bytes(40)),
                1 => attacker.send(rng.uuid().as_bytes()),
                _ => attacker.send(&[MAGIC, b"junk"].concat()),
            }
        }
        let sent = ((burst + 1) * 500) as f64;
        eventually(Duration::from_secs(5), || {
            d.scrape()
                .drops(&["no_session", "invalid_token", "malformed_control"])
                >= sent
        });
    }
    let counted = d
        .scrape()
        .drops(&["no_session", "invalid_token", "malformed_control"]);
    assert_eq!(counted, n as f64, "drops are counted by reason");
    attacker.expect_silence(Duration::from_millis(100));
    let lines: Vec<String> = d.logs.try_iter().collect();
    assert!(
        lines.len() < 10,
        "{} log lines for {n} bad datagrams: {lines:?}",
        lines.len()
    );
}

#[test]
fn an_override_rescues_a_file_that_alone_is_invalid() {
    let dir = TempDir::new("rescue").unwrap();
    // Query and admin both on 9000: refused as it stands...
    let path = write_config(
        &dir,
        "queryPort: 9000\nadminPort: 9000\nresourceQueryMapping: {e: {static: [{name: a, address: 127.0.0.1, port: 1}]}}\n",
    );
    let out = Command::new(BIN)
        .args(["--check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("adminPort"));
    // ...and valid once the command line moves the admin port, by flag or by environment.
    for (flag, env) in [(Some("--admin-port=9100"), None), (None, Some("9100"))] {
        let mut cmd = Command::new(BIN);
        cmd.args(["--check-config", "--config"]).arg(&path);
        if let Some(f) = flag {
            cmd.arg(f);
        }
        if let Some(v) = env {
            cmd.env("UDP_DIRECTOR_ADMIN_PORT", v);
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("adminPort: 9100"));
    }
}

#[test]
fn process_metrics_are_what_proc_says_and_build_info_names_the_revision() {
    let b = Backend::new();
    let dir = TempDir::new("process-metrics").unwrap();
    let d = ChildDirector::spawn_yaml(Path::new(BIN), dir, &static_yaml(&b, ""), &[]).unwrap();
    // A few sessions, so the descriptors are more than the listeners' (each holds an upstream
    // socket slot on its worker).
    let clients: Vec<Client> = (0..4).map(|_| Client::new(d.data)).collect();
    for c in &clients {
        establish(c, &token_for(d.query, r#"{"resourceType":"echo"}"#), &b);
    }
    let scrape = d.scrape();
    let fds = scrape.value("process_open_fds");
    let seen = d.open_fds() as f64;
    // The scrape's own connection comes and goes: within a few of /proc's count.
    assert!(
        (fds - seen).abs() <= 3.0 && fds >= 8.0,
        "process_open_fds {fds}, /proc/{}/fd has {seen}",
        d.pid()
    );
    assert!(scrape.value("process_max_fds") >= fds);
    let rss = scrape.value("process_resident_memory_bytes");
    let proc_rss = (d.rss_kib() * 1024) as f64;
    assert!(
        rss > 1_000_000.0 && (rss - proc_rss).abs() < proc_rss * 0.25,
        "process_resident_memory_bytes {rss}, VmRSS {proc_rss}"
    );
    let cpu = scrape.value("process_cpu_seconds_total");
    assert!(cpu > 0.0 && cpu < 600.0, "process_cpu_seconds_total {cpu}");
    // The binary was built by the same cargo run as this test: the same revision (or none).
    let revision = option_env!("UDP_DIRECTOR_REVISION").unwrap_or("unknown");
    let build = format!(
        "udp_director_build_info{{version=\"{}\",revision=\"{revision}\"}}",
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(scrape.value(&build), 1.0, "{build} in\n{}", scrape.text());
}
