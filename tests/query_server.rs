//! End to end on loopback: the TCP query protocol, its error codes and its limits.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::*;
use serde_json::Value;

fn connect(addr: std::net::SocketAddr) -> (TcpStream, BufReader<TcpStream>) {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let r = BufReader::new(s.try_clone().unwrap());
    (s, r)
}

fn read_answer(r: &mut BufReader<TcpStream>) -> Value {
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"))
}

fn code(v: &Value) -> &str {
    v["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("not an error: {v}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_queries_on_one_connection_are_answered_in_order() {
    let b = Backend::new();
    let d = start(config_for(&[&b], "")).await;
    let (mut s, mut r) = connect(d.query_addr);
    // Three requests in one write, one of them bad, plus a CRLF line and a blank line.
    s.write_all(b"{\"resourceType\":\"echo\"}\n{\"resourceType\":\"nope\"}\n\n{\"resourceType\":\"echo\",\"namespace\":\"default\"}\r\n").unwrap();
    let a1 = read_answer(&mut r);
    assert_eq!(a1["token"].as_str().unwrap().len(), 36);
    assert_eq!(a1["ttlSeconds"], 30);
    assert_eq!(a1["target"]["namespace"], "default");
    assert_eq!(a1["target"]["name"], "b0");
    assert!(
        a1["target"].get("address").is_none(),
        "address hidden unless exposeTargetAddress"
    );
    assert_eq!(code(&read_answer(&mut r)), "unknown_resource_type");
    assert!(read_answer(&mut r)["token"].is_string());
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_without_newline_is_answered_on_half_close() {
    let b = Backend::new();
    let d = start(config_for(&[&b], "")).await;
    let (mut s, mut r) = connect(d.query_addr);
    s.write_all(br#"{"resourceType":"echo"}"#).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    assert!(read_answer(&mut r)["token"].is_string());
    let mut rest = String::new();
    r.read_to_string(&mut rest).unwrap();
    assert!(rest.is_empty(), "connection closes after the answer");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_code_is_a_json_answer() {
    let b = Backend::new();
    let d = start(config_for(&[&b], "")).await;
    let cases = [
        ("not json", "bad_request"),
        (r#"{"resourceType": 7}"#, "bad_request"),
        (r#"{"resourceType":"echo","colour":"red"}"#, "bad_request"),
        (r#"{"resourceType":"nope"}"#, "unknown_resource_type"),
        (
            r#"{"resourceType":"echo","namespace":"kube-system"}"#,
            "forbidden_namespace",
        ),
        (
            r#"{"resourceType":"echo","labelSelector":{"zone":"mars"}}"#,
            "no_match",
        ),
        (
            r#"{"resourceType":"echo","statusQuery":{"jsonPath":"status.state","expectedValue":"Shutdown"}}"#,
            "no_match",
        ),
    ];
    let (mut s, mut r) = connect(d.query_addr);
    for (req, want) in cases {
        s.write_all(req.as_bytes()).unwrap();
        s.write_all(b"\n").unwrap();
        let a = read_answer(&mut r);
        assert_eq!(code(&a), want, "{req} -> {a}");
        assert!(!a["error"]["message"].as_str().unwrap().is_empty());
    }
    // Unknown fields are named in the message.
    s.write_all(b"{\"resourceType\":\"echo\",\"colour\":1}\n")
        .unwrap();
    assert!(
        read_answer(&mut r)["error"]["message"]
            .as_str()
            .unwrap()
            .contains("colour")
    );
    // Invalid UTF-8 and NUL bytes.
    s.write_all(b"\xff\xfe\n{\"resourceType\":\"e\x00\"}\n")
        .unwrap();
    assert_eq!(code(&read_answer(&mut r)), "bad_request");
    assert_eq!(code(&read_answer(&mut r)), "bad_request");
    assert!(eventually(Duration::from_secs(2), || metric(
        d.admin_addr,
        "udp_director_queries_total{result=\"bad_request\"}"
    ) == 6.0));
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_lines_answer_too_large_and_close() {
    let b = Backend::new();
    let d = start(config_for(&[&b], "limits: {queryMaxBytes: 1024}\n")).await;
    let (mut s, mut r) = connect(d.query_addr);
    // No newline at all: the limit trips on buffered bytes.
    let _ = s.write_all(&vec![b'x'; 5000]);
    assert_eq!(code(&read_answer(&mut r)), "too_large");
    let mut rest = Vec::new();
    let _ = r.read_to_end(&mut rest);
    assert!(rest.is_empty());
    // The server still serves others.
    assert!(query(d.query_addr, r#"{"resourceType":"echo"}"#)["token"].is_string());
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_even_if_they_trickle() {
    let b = Backend::new();
    let d = start(config_for(&[&b], "limits: {queryIdleTimeoutSeconds: 1}\n")).await;
    let (mut s, mut r) = connect(d.query_addr);
    let started = tokio::time::Instant::now();
    // Trickle a byte every 200 ms (bounded: at most 25 bytes); the request deadline does not move.
    let trickler = std::thread::spawn(move || {
        let mut pacer = testkit::Pacer::new(Duration::from_millis(200));
        for _ in 0..25 {
            pacer.tick();
            if s.write_all(b" ").is_err() {
                return;
            }
        }
    });
    let mut buf = [0u8; 16];
    let closed = matches!(r.get_mut().read(&mut buf), Ok(0) | Err(_));
    assert!(
        closed,
        "a trickling connection is closed by the request deadline"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert!(started.elapsed() >= Duration::from_millis(900));
    trickler.join().unwrap();
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_ip_rate_limit_answers_rate_limited() {
    let b = Backend::new();
    let d = start(config_for(
        &[&b],
        "limits: {queryRatePerSecond: 1, queryBurst: 3}\n",
    ))
    .await;
    let (mut s, mut r) = connect(d.query_addr);
    let mut codes = Vec::new();
    for _ in 0..5 {
        s.write_all(b"{\"resourceType\":\"echo\"}\n").unwrap();
        let a = read_answer(&mut r);
        codes.push(a["error"]["code"].as_str().unwrap_or("ok").to_string());
    }
    assert_eq!(codes[..3], ["ok", "ok", "ok"]);
    assert!(codes[3..].iter().all(|c| c == "rate_limited"), "{codes:?}");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_limit_get_unavailable() {
    let b = Backend::new();
    let d = start(config_for(&[&b], "limits: {maxQueryConnections: 2}\n")).await;
    let (_s1, _r1) = connect(d.query_addr);
    let (_s2, _r2) = connect(d.query_addr);
    // Let the server accept both before the third arrives.
    assert!(eventually(Duration::from_secs(2), || metric(
        d.admin_addr,
        "udp_director_query_connections_active"
    ) == 2.0));
    let (_s3, mut r3) = connect(d.query_addr);
    assert_eq!(code(&read_answer(&mut r3)), "unavailable");
    drop((_s1, _r1));
    assert!(eventually(Duration::from_secs(2), || metric(
        d.admin_addr,
        "udp_director_query_connections_active"
    ) < 2.0));
    assert!(query(d.query_addr, r#"{"resourceType":"echo"}"#)["token"].is_string());
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expose_target_address_puts_address_and_port_in_the_answer() {
    let b = Backend::new();
    let yaml = format!(
        "bindAddress: 127.0.0.1\nqueryPort: 0\ndataPort: 0\nadminPort: 0\nresourceQueryMapping:\n  gs:\n    namespace: games\n    exposeTargetAddress: true\n    static:\n      - {{name: gs-1, address: 127.0.0.1, port: {}}}\n",
        b.addr.port()
    );
    let d = start(udp_director::config::ValidConfig::from_yaml(&yaml).unwrap()).await;
    let a = query(d.query_addr, r#"{"resourceType":"gs"}"#);
    assert_eq!(a["target"]["namespace"], "games");
    assert_eq!(a["target"]["name"], "gs-1");
    assert_eq!(a["target"]["address"], "127.0.0.1");
    assert_eq!(a["target"]["port"], b.addr.port());
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_sessions_spreads_clients_over_targets() {
    let (a, b) = (Backend::new(), Backend::new());
    let d = start(config_for(&[&a, &b], "")).await;
    let mut names = Vec::new();
    for i in 0..4 {
        let answer = query(d.query_addr, r#"{"resourceType":"echo"}"#);
        names.push(answer["target"]["name"].as_str().unwrap().to_string());
        let c = Client::new(d.data_addr);
        let backend = if names[i] == "b0" { &a } else { &b };
        establish(&c, answer["token"].as_str().unwrap(), backend);
        std::mem::forget(c); // keep the client's port reserved so sessions stay distinct
    }
    assert_eq!(names, ["b0", "b1", "b0", "b1"]);
    d.stop().await;
}

/// A connection from another loopback address: another client network.
fn connect_from(src: [u8; 4], addr: std::net::SocketAddr) -> (TcpStream, BufReader<TcpStream>) {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let from = std::net::SocketAddr::from((src, 0));
    s.bind(&from.into()).unwrap();
    s.connect(&addr.into()).unwrap();
    let s: TcpStream = s.into();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let r = BufReader::new(s.try_clone().unwrap());
    (s, r)
}

fn closed_by(admin: std::net::SocketAddr, reason: &str) -> f64 {
    metric(
        admin,
        &format!("udp_director_query_connections_closed_total{{reason=\"{reason}\"}}"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_lines_do_not_keep_query_connections_open() {
    let b = Backend::new();
    let d = start(config_for(
        &[&b],
        "limits: {maxQueryConnections: 5, queryIdleTimeoutSeconds: 1}\n",
    ))
    .await;
    let (query_addr, admin) = (d.query_addr, d.admin_addr);
    tokio::task::spawn_blocking(move || {
        let attackers: Vec<TcpStream> = (0..5).map(|_| connect(query_addr).0).collect();
        assert!(eventually(Duration::from_secs(2), || metric(
            admin,
            "udp_director_query_connections_active"
        ) == 5.0));
        let started = tokio::time::Instant::now();
        // Each attacker sends `\n` every 200 ms (bounded: at most 20 rounds, 4 s).
        let flood = std::thread::spawn(move || {
            let mut pacer = testkit::Pacer::new(Duration::from_millis(200));
            let mut attackers = attackers;
            for _ in 0..20 {
                pacer.tick();
                attackers.retain_mut(|s| s.write_all(b"\n").is_ok());
            }
        });
        let freed = eventually(Duration::from_secs(4), || {
            metric(admin, "udp_director_query_connections_active") == 0.0
        });
        let held_for = started.elapsed();
        eprintln!("empty-line attack: 5 of 5 slots held for {held_for:?} (idle timeout 1 s)");
        assert!(freed, "empty lines kept the slots for {held_for:?}");
        assert!(held_for < Duration::from_millis(2500), "{held_for:?}");
        assert_eq!(closed_by(admin, "idle"), 5.0);
        // A good client is served while the attackers keep writing into closed sockets.
        assert!(query(query_addr, r#"{"resourceType":"echo"}"#)["token"].is_string());
        flood.join().unwrap();
    })
    .await
    .unwrap();
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_lines_draw_from_the_rate_limit() {
    let b = Backend::new();
    let d = start(config_for(
        &[&b],
        "limits: {queryRatePerSecond: 1, queryBurst: 3}\n",
    ))
    .await;
    let (mut s, mut r) = connect(d.query_addr);
    let mut flood = vec![b'\n'; 20];
    flood.extend_from_slice(b"{\"resourceType\":\"echo\"}\n");
    s.write_all(&flood).unwrap();
    // No answer for the empty lines; the query after them finds the bucket empty.
    assert_eq!(code(&read_answer(&mut r)), "rate_limited");
    assert!(
        metric(
            d.admin_addr,
            "udp_director_queries_total{result=\"rate_limited\"}"
        ) >= 17.0
    );
    // Another client network is not limited.
    let (mut s2, mut r2) = connect_from([127, 0, 0, 2], d.query_addr);
    s2.write_all(b"{\"resourceType\":\"echo\"}\n").unwrap();
    assert!(read_answer(&mut r2)["token"].is_string());
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_network_holds_at_most_its_share_of_query_connections() {
    let b = Backend::new();
    let d = start(config_for(
        &[&b],
        "limits: {maxQueryConnections: 10, maxQueryConnectionsPerIp: 2}\n",
    ))
    .await;
    let (mut s1, mut r1) = connect(d.query_addr);
    let (_s2, _r2) = connect(d.query_addr);
    assert!(eventually(Duration::from_secs(2), || metric(
        d.admin_addr,
        "udp_director_query_connections_active"
    ) == 2.0));
    let (_s3, mut r3) = connect(d.query_addr);
    let refused = read_answer(&mut r3);
    assert_eq!(code(&refused), "unavailable");
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("maxQueryConnectionsPerIp"),
        "{refused}"
    );
    assert_eq!(closed_by(d.admin_addr, "client_ip_cap"), 1.0);
    assert_eq!(closed_by(d.admin_addr, "connection_cap"), 0.0);
    // The two admitted connections and other networks are still served.
    s1.write_all(b"{\"resourceType\":\"echo\"}\n").unwrap();
    assert!(read_answer(&mut r1)["token"].is_string());
    let (mut s4, mut r4) = connect_from([127, 0, 0, 2], d.query_addr);
    s4.write_all(b"{\"resourceType\":\"echo\"}\n").unwrap();
    assert!(read_answer(&mut r4)["token"].is_string());
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_connection_ends_after_its_lifetime_even_when_busy() {
    let b = Backend::new();
    let d = start(config_for(
        &[&b],
        "limits: {queryConnectionLifetimeSeconds: 1, queryIdleTimeoutSeconds: 10}\n",
    ))
    .await;
    let (query_addr, admin) = (d.query_addr, d.admin_addr);
    tokio::task::spawn_blocking(move || {
        let (mut s, mut r) = connect(query_addr);
        let started = tokio::time::Instant::now();
        let mut pacer = testkit::Pacer::new(Duration::from_millis(200));
        let mut answered = 0;
        // At most 20 queries (4 s); every one before the close gets a token.
        for _ in 0..20 {
            pacer.tick();
            if s.write_all(b"{\"resourceType\":\"echo\"}\n").is_err() {
                break;
            }
            let mut line = String::new();
            if matches!(r.read_line(&mut line), Ok(0) | Err(_)) {
                break;
            }
            let a: Value = serde_json::from_str(&line).unwrap();
            assert!(a["token"].is_string(), "{a}");
            answered += 1;
        }
        let lived = started.elapsed();
        assert!(answered >= 4, "{answered}");
        assert!(
            lived >= Duration::from_millis(900) && lived < Duration::from_millis(2500),
            "{lived:?}"
        );
        assert!(eventually(Duration::from_secs(2), || closed_by(
            admin, "lifetime"
        ) == 1.0));
        assert!(query(query_addr, r#"{"resourceType":"echo"}"#)["token"].is_string());
    })
    .await
    .unwrap();
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_resource_types_are_not_told_the_configured_names() {
    let b = Backend::new();
    let d = start(config_for(&[&b], "")).await;
    let a = query(d.query_addr, r#"{"resourceType":"nope"}"#);
    assert_eq!(code(&a), "unknown_resource_type");
    let message = a["error"]["message"].as_str().unwrap();
    assert!(!message.contains("echo"), "{message}");
    d.stop().await;
}

/// `count` static endpoints in mappings `plain` and `rx` (`allowRegex: true`), each with a
/// status of a few ports and players, so a status query has something to walk.
fn many_endpoints(b: &Backend, count: usize, extra: &str) -> udp_director::config::ValidConfig {
    let mut endpoints = String::new();
    for i in 0..count {
        endpoints.push_str(&format!(
            "      - {{name: gs-{i}, address: 127.0.0.1, port: {}, status: {{state: Ready, ports: [{{name: default, port: 7{i:03}}}, {{name: voice, port: 8{i:03}}}, {{name: query, port: 9{i:03}}}], players: {{count: {i}, ids: [a, b, c, d]}}}}}}\n",
            b.addr.port()
        ));
    }
    let yaml = testkit::yaml::director(
        extra,
        &[
            format!("  plain:\n    static:\n{endpoints}"),
            format!("  rx:\n    allowRegex: true\n    static:\n{endpoints}"),
        ],
    );
    udp_director::config::ValidConfig::from_yaml(&yaml).unwrap()
}

fn status_query(resource_type: &str, path: &str, expected: &str) -> String {
    serde_json::json!({
        "resourceType": resource_type,
        "statusQuery": {"jsonPath": path, "expectedValue": expected},
    })
    .to_string()
}

/// The regex attack of the hardening issue (116 bytes): a regex per string per candidate.
const REGEX_ATTACK: &str = "$..*[?search(@, '^(a|aa|aaa|b|bb|bbb|c|cc|ccc|d|dd|ddd)+(x|y|z)*(.*)*$') || match(@, '(.*a){5}(.*b){5}[0-9]+')]";

/// The costliest path the bounds allow: 256 bytes, one `..`, filters nested 8 deep, no
/// regex, matching nothing (so every candidate is walked).
fn worst_allowed_path() -> String {
    let mut path = String::from(
        "$..[?(@.*[?(@.*[?(@.*[?(@.name == 'none' || @.port == 'none' || @.count == 'none'",
    );
    let close = ")])])])].port";
    while path.len() + close.len() + 14 <= 256 {
        path.push_str(" || @.a == 'z'");
    }
    path.push_str(close);
    assert!(path.len() <= 256, "{}", path.len());
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regex_status_queries_are_refused_unless_the_mapping_allows_them() {
    let b = Backend::new();
    let d = start(many_endpoints(&b, 2, "")).await;
    let path = "status.ports[?match(@.name, 'def.*')].port";
    let refused = query(d.query_addr, &status_query("plain", path, "7000"));
    assert_eq!(code(&refused), "bad_request");
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("allowRegex"),
        "{refused}"
    );
    assert_eq!(
        query(d.query_addr, &status_query("rx", path, "7000"))["target"]["name"],
        "gs-0"
    );
    // Bounds on every client path, whatever the mapping.
    for bad in [
        format!("status.{}", "a".repeat(300)),
        "$..a..b".to_string(),
        "status.ports[?($.status.state == 'Ready')].port".to_string(),
    ] {
        assert_eq!(
            code(&query(d.query_addr, &status_query("rx", &bad, "x"))),
            "bad_request"
        );
    }
    assert_eq!(
        metric(
            d.admin_addr,
            "udp_director_queries_total{result=\"bad_request\"}"
        ),
        4.0
    );
    // The longest allowed path is served.
    let worst = worst_allowed_path();
    assert_eq!(
        code(&query(d.query_addr, &status_query("plain", &worst, "x"))),
        "no_match"
    );
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_answers_quickly_while_worst_case_queries_run() {
    let b = Backend::new();
    let d = start(many_endpoints(
        &b,
        200,
        "limits: {queryRatePerSecond: 100000, queryBurst: 100000, maxQueryConnectionsPerIp: 64}\n",
    ))
    .await;
    let (query_addr, admin) = (d.query_addr, d.admin_addr);
    tokio::task::spawn_blocking(move || {
        let worst = status_query("plain", &worst_allowed_path(), "x");
        let attack = status_query("plain", REGEX_ATTACK, "x");
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        // 20 clients, half with the regex attack, half with the worst allowed path; each
        // query on its own connection, at most 200 each.
        let clients: Vec<_> = (0..20)
            .map(|i| {
                let (request, want) = if i % 2 == 0 {
                    (worst.clone(), "no_match")
                } else {
                    (attack.clone(), "bad_request")
                };
                let stop = std::sync::Arc::clone(&stop);
                std::thread::spawn(move || {
                    let mut slowest = Duration::ZERO;
                    for _ in 0..200 {
                        if stop.load(std::sync::atomic::Ordering::Relaxed) {
                            break;
                        }
                        let started = tokio::time::Instant::now();
                        let a = query(query_addr, &request);
                        slowest = slowest.max(started.elapsed());
                        assert_eq!(code(&a), want, "{a}");
                    }
                    slowest
                })
            })
            .collect();
        // Let the queries get going, then probe /healthz 20 times.
        assert!(eventually(Duration::from_secs(5), || metric(
            admin,
            "udp_director_queries_total{result=\"no_match\"}"
        ) >= 20.0));
        let mut probes = Vec::new();
        let mut pacer = testkit::Pacer::new(Duration::from_millis(50));
        for _ in 0..20 {
            pacer.tick();
            let started = tokio::time::Instant::now();
            let (status, _) = http_get(admin, "/healthz");
            probes.push(started.elapsed());
            assert_eq!(status, 200);
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let slowest: Vec<Duration> = clients.into_iter().map(|c| c.join().unwrap()).collect();
        let worst_probe = probes.iter().max().copied().unwrap_or_default();
        eprintln!(
            "/healthz under 20 worst-case query clients: max {worst_probe:?}; slowest query round trip {:?}",
            slowest.iter().max()
        );
        assert!(worst_probe < Duration::from_millis(50), "{probes:?}");
    })
    .await
    .unwrap();
    d.stop().await;
}
