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
