//! TCP data ports end to end (SPEC §3, "TCP data ports"): the token line opens a relayed
//! connection to the token's target on the entry's port; the same token opens the UDP
//! session. Real listeners on 127.0.0.1, real sockets.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, timeout};
use udp_director::app::Running;
use udp_director::config::ValidConfig;

/// One game server: a UDP `default` port (`udp`) and a TCP `chat` port (`tcp`).
fn config(udp: &Backend, tcp: u16, extra: &str) -> ValidConfig {
    config_on(udp, tcp, extra, "")
}

/// [`config`] with `mapping_extra` (indented keys) in the mapping.
fn config_on(udp: &Backend, tcp: u16, extra: &str, mapping_extra: &str) -> ValidConfig {
    let mapping = format!(
        "  game:\n{mapping_extra}    static:\n      - {{name: gs-0, address: 127.0.0.1, ports: [{{name: default, port: {}}}, {{name: chat, port: {tcp}}}]}}\n",
        udp.addr.port()
    );
    // Queries unthrottled, unless the test sets its own limits.
    let limits = if extra.contains("limits:") {
        ""
    } else {
        "limits: {queryRatePerSecond: 100000, queryBurst: 100000}\n"
    };
    let yaml = testkit::yaml::director(
        &format!(
            "{limits}dataPorts:\n  - {{port: 0, targetPortName: default}}\n  - {{port: 0, protocol: TCP, targetPortName: chat}}\n{extra}"
        ),
        &[mapping],
    );
    ValidConfig::from_yaml(&yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"))
}

fn token(d: &Running) -> String {
    token_for(d.query_addr, r#"{"resourceType":"game"}"#)
}

fn tcp_port(d: &Running) -> SocketAddr {
    d.data_addrs[1]
}

/// Connects and sends `token` + `\n` + `then`.
async fn open(d: &Running, token: &str, then: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(tcp_port(d)).await.unwrap();
    let mut line = format!("{token}\n").into_bytes();
    line.extend_from_slice(then);
    s.write_all(&line).await.unwrap();
    s
}

/// Reads until EOF (or an error, e.g. a reset), within 10 s; what arrived.
async fn read_to_end(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("the connection ends");
    out
}

fn refused(d: &Running, reason: &str) -> f64 {
    metric(
        d.admin_addr,
        &format!("udp_director_tcp_refused_total{{reason=\"{reason}\"}}"),
    )
}

fn closed(d: &Running, reason: &str) -> f64 {
    metric(
        d.admin_addr,
        &format!("udp_director_tcp_sessions_closed_total{{reason=\"{reason}\"}}"),
    )
}

async fn poll(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cond()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_line_opens_a_relay_and_never_reaches_the_server() {
    let udp = Backend::new();
    let server = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let d = start(config(&udp, server.local_addr().unwrap().port(), "")).await;
    let token = token(&d);
    let mut client = open(&d, &token, b"hello").await;
    let (mut upstream, _) = server.accept().await.unwrap();
    let mut got = [0u8; 5];
    upstream.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"hello", "the token line is not forwarded");
    upstream.write_all(b"world").await.unwrap();
    let mut back = [0u8; 5];
    client.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, b"world");
    // The same token opens the UDP session to the same server.
    let game = Client::new(d.data_addr);
    establish(&game, &token, &udp);
    assert_eq!(
        metric(
            d.admin_addr,
            "udp_director_sessions_by_protocol{protocol=\"tcp\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            d.admin_addr,
            "udp_director_sessions_by_protocol{protocol=\"udp\"}"
        ),
        1.0
    );
    // Both directions must end for the session to close.
    drop(client);
    assert_eq!(read_to_end(&mut upstream).await, b"");
    drop(upstream);
    assert!(poll(Duration::from_secs(5), || closed(&d, "closed") == 1.0).await);
    assert!(poll(Duration::from_secs(5), || d.ledger.active() == 1).await);
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[0] ^ seed)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixteen_mib_each_way_arrive_intact_and_half_closes_pass_both_ways() {
    const SIZE: usize = 16 << 20;
    let udp = Backend::new();
    let server = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let d = start(config(&udp, server.local_addr().unwrap().port(), "")).await;
    // Client first closes its side: the server still answers in full after seeing the EOF.
    let client = open(&d, &token(&d), b"").await;
    let (upstream, _) = server.accept().await.unwrap();
    let (mut cr, mut cw) = client.into_split();
    let (mut ur, mut uw) = upstream.into_split();
    let up = pattern(1, SIZE);
    let down = pattern(2, SIZE);
    let send_up = tokio::spawn({
        let up = up.clone();
        async move {
            cw.write_all(&up).await.unwrap();
            cw.shutdown().await.unwrap();
            cw
        }
    });
    let server_side = tokio::spawn({
        let down = down.clone();
        async move {
            let mut got = Vec::with_capacity(SIZE);
            ur.read_to_end(&mut got).await.unwrap();
            // The client's half-close arrived; this direction is still open.
            uw.write_all(&down).await.unwrap();
            uw.shutdown().await.unwrap();
            got
        }
    });
    let mut got_down = Vec::with_capacity(SIZE);
    timeout(Duration::from_secs(60), cr.read_to_end(&mut got_down))
        .await
        .unwrap()
        .unwrap();
    let _cw = send_up.await.unwrap();
    let got_up = server_side.await.unwrap();
    assert!(
        got_up == up,
        "client → server intact ({} bytes)",
        got_up.len()
    );
    assert!(
        got_down == down,
        "server → client intact ({} bytes)",
        got_down.len()
    );

    // The server closes first: the client still sends after seeing the EOF.
    let mut client = open(&d, &token(&d), b"").await;
    let (mut upstream, _) = server.accept().await.unwrap();
    upstream.shutdown().await.unwrap();
    let mut buf = [0u8; 1];
    assert_eq!(
        timeout(Duration::from_secs(5), client.read(&mut buf))
            .await
            .unwrap()
            .unwrap(),
        0
    );
    client.write_all(b"after").await.unwrap();
    let mut got = [0u8; 5];
    upstream.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"after");
    drop(client);
    assert_eq!(read_to_end(&mut upstream).await, b"");
    drop(upstream);
    assert!(poll(Duration::from_secs(5), || closed(&d, "closed") == 2.0).await);
    assert!(
        metric(
            d.admin_addr,
            "udp_director_tcp_bytes_total{direction=\"client_to_target\"}"
        ) >= SIZE as f64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_and_slow_lines_are_closed_without_a_byte_and_counted() {
    let udp = Backend::new();
    let server = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let d = start(config(
        &udp,
        server.local_addr().unwrap().port(),
        "tokenTTLSeconds: 1\n",
    ))
    .await;
    // Not a token; a line too long to be one; a token from another client IP is covered by
    // the UDP suite (same redeem path).
    let mut s = open(&d, "550e8400-e29b-41d4-a716-446655440000", b"x").await;
    assert_eq!(read_to_end(&mut s).await, b"");
    let mut s = TcpStream::connect(tcp_port(&d)).await.unwrap();
    let _ = s.write_all(&[b'a'; 200]).await;
    assert_eq!(read_to_end(&mut s).await, b"");
    // Expired: issued, then older than tokenTTLSeconds.
    let stale = token(&d);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut s = open(&d, &stale, b"x").await;
    assert_eq!(read_to_end(&mut s).await, b"");
    // Slowloris: one byte a second never completes the line; cut at 5 s.
    let started = Instant::now();
    let mut s = TcpStream::connect(tcp_port(&d)).await.unwrap();
    let mut cut = false;
    for _ in 0..10 {
        if s.write_all(b"5").await.is_err() {
            cut = true;
            break;
        }
        let mut b = [0u8; 1];
        match timeout(Duration::from_secs(1), s.read(&mut b)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                cut = true;
                break;
            }
            Ok(Ok(_)) => panic!("a byte was sent"),
            Err(_) => {}
        }
    }
    assert!(cut, "the slow line was cut");
    assert!(
        started.elapsed() >= Duration::from_millis(4500),
        "{:?}",
        started.elapsed()
    );
    assert!(
        poll(Duration::from_secs(5), || {
            // The store may already have swept the expired token: then it is unknown.
            refused(&d, "invalid_token") + refused(&d, "expired_token") == 2.0
                && refused(&d, "bad_line") == 1.0
                && refused(&d, "late_token") == 1.0
        })
        .await
    );
    // Nothing reached the game server.
    assert!(
        timeout(Duration::from_millis(50), server.accept())
            .await
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusing_or_black_holed_target_closes_the_client() {
    let udp = Backend::new();
    // Refusing: nothing listens on the port.
    let gone = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let gone_port = gone.local_addr().unwrap().port();
    drop(gone);
    let d = start(config(&udp, gone_port, "")).await;
    let mut s = open(&d, &token(&d), b"x").await;
    assert_eq!(read_to_end(&mut s).await, b"");
    assert!(
        poll(Duration::from_secs(5), || refused(&d, "target_refused")
            == 1.0)
        .await
    );

    // Black-holed: a listener that never accepts, its backlog full, drops the SYNs.
    let hole = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    hole.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    hole.listen(0).unwrap();
    let hole_addr = hole.local_addr().unwrap().as_socket().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..4 {
        if let Ok(Ok(c)) = timeout(Duration::from_millis(200), TcpStream::connect(hole_addr)).await
        {
            fillers.push(c);
        }
    }
    let d = start(config(&udp, hole_addr.port(), "")).await;
    let started = Instant::now();
    let mut s = open(&d, &token(&d), b"x").await;
    assert_eq!(read_to_end(&mut s).await, b"");
    assert!(
        started.elapsed() >= Duration::from_millis(1900),
        "{:?}",
        started.elapsed()
    );
    assert!(
        poll(Duration::from_secs(5), || refused(&d, "target_timeout")
            == 1.0)
        .await
    );
}

/// An echo server for every accepted connection.
async fn echo_server() -> SocketAddr {
    let server = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = server.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = server.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_connections_at_once_each_reach_the_server() {
    let udp = Backend::new();
    let echo = echo_server().await;
    let d = start(config(&udp, echo.port(), "maxSessionsPerClientIp: 2000\n")).await;
    let query_addr = d.query_addr;
    let tokens: Vec<String> = tokio::task::spawn_blocking(move || {
        (0..1000)
            .map(|_| token_for(query_addr, r#"{"resourceType":"game"}"#))
            .collect()
    })
    .await
    .unwrap();
    let mut conns = Vec::new();
    for (i, t) in tokens.iter().enumerate() {
        conns.push((i, open(&d, t, format!("n{i:04}").as_bytes()).await));
    }
    for (i, c) in &mut conns {
        let mut got = [0u8; 5];
        timeout(Duration::from_secs(20), c.read_exact(&mut got))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, *format!("n{i:04}").as_bytes());
    }
    assert_eq!(d.ledger.active(), 1000);
    drop(conns);
    assert!(poll(Duration::from_secs(10), || d.ledger.active() == 0).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_rules_apply_replaced_capped_idle_and_drained() {
    let udp = Backend::new();
    let echo = echo_server().await;
    let d = start(config(
        &udp,
        echo.port(),
        "maxSessions: 2\nsessionTimeoutSeconds: 1\n",
    ))
    .await;
    // A newer connection with the same token replaces the older one.
    let t = token(&d);
    let mut first = open(&d, &t, b"a").await;
    let mut b = [0u8; 1];
    first.read_exact(&mut b).await.unwrap();
    let mut second = open(&d, &t, b"b").await;
    second.read_exact(&mut b).await.unwrap();
    assert_eq!(read_to_end(&mut first).await, b"");
    assert!(poll(Duration::from_secs(5), || closed(&d, "replaced") == 1.0).await);
    // The cap (2) counts TCP sessions: one more fits, the next is refused.
    let mut third = open(&d, &token(&d), b"c").await;
    third.read_exact(&mut b).await.unwrap();
    let mut fourth = open(&d, &token(&d), b"d").await;
    assert_eq!(read_to_end(&mut fourth).await, b"");
    assert_eq!(refused(&d, "session_cap"), 1.0);
    // Idle: nothing either way for 1 s closes both.
    assert_eq!(read_to_end(&mut second).await, b"");
    assert_eq!(read_to_end(&mut third).await, b"");
    assert!(poll(Duration::from_secs(5), || closed(&d, "idle") == 2.0).await);
    assert!(poll(Duration::from_secs(5), || d.ledger.active() == 0).await);

    // Drain: the listener closes, a live connection keeps relaying until stop.
    let mut live = open(&d, &token(&d), b"e").await;
    live.read_exact(&mut b).await.unwrap();
    d.begin_drain();
    assert!(
        poll(Duration::from_secs(5), || {
            std::net::TcpStream::connect_timeout(&tcp_port(&d), Duration::from_millis(200)).is_err()
        })
        .await,
        "no new TCP data connections while draining"
    );
    live.write_all(b"f").await.unwrap();
    live.read_exact(&mut b).await.unwrap();
    assert_eq!(&b, b"f");
    d.stop().await;
    assert_eq!(read_to_end(&mut live).await, b"");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_ip_holds_at_most_its_share_of_tcp_and_udp_sessions() {
    let udp = Backend::new();
    let echo = echo_server().await;
    let d = start(config(&udp, echo.port(), "maxSessionsPerClientIp: 2\n")).await;
    // A UDP session and a TCP one fill 127.0.0.1's share of 2.
    let t = token(&d);
    let game = Client::new(d.data_addr);
    establish(&game, &t, &udp);
    let mut chat = open(&d, &t, b"a").await;
    let mut b = [0u8; 1];
    chat.read_exact(&mut b).await.unwrap();
    let mut third = open(&d, &token(&d), b"b").await;
    assert_eq!(read_to_end(&mut third).await, b"");
    assert_eq!(refused(&d, "client_ip_cap"), 1.0);
    // Closing one gives the place back.
    drop(chat);
    assert!(
        poll(Duration::from_secs(5), || d
            .ledger
            .sessions_of_ip("127.0.0.1".parse().unwrap())
            == 1)
        .await
    );
    let mut again = open(&d, &token(&d), b"c").await;
    again.read_exact(&mut b).await.unwrap();
    assert_eq!(&b, b"c");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_still_sending_their_line_are_bounded() {
    let udp = Backend::new();
    let echo = echo_server().await;
    let d = start(config(
        &udp,
        echo.port(),
        "limits: {maxPendingTcpLines: 2, queryRatePerSecond: 100000, queryBurst: 100000}\n",
    ))
    .await;
    // Two silent connections take the places for lines in progress; a third is closed at
    // once (not after 5 s), counted.
    let _a = TcpStream::connect(tcp_port(&d)).await.unwrap();
    let _b = TcpStream::connect(tcp_port(&d)).await.unwrap();
    assert!(poll(Duration::from_secs(5), || refused(&d, "pending_cap") == 0.0).await);
    let started = Instant::now();
    let mut c = TcpStream::connect(tcp_port(&d)).await.unwrap();
    assert_eq!(read_to_end(&mut c).await, b"");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(refused(&d, "pending_cap"), 1.0);
    // Once a line completes, its place is free again.
    drop(_a);
    assert!(poll(Duration::from_secs(5), || refused(&d, "bad_line") == 1.0).await);
    let mut ok = open(&d, &token(&d), b"z").await;
    let mut b = [0u8; 1];
    ok.read_exact(&mut b).await.unwrap();
    assert_eq!(&b, b"z");
}

/// Connects from `source` (a loopback address) to `to`.
async fn connect_from(source: &str, to: SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::new(source.parse().unwrap(), 0))
        .unwrap();
    socket.connect(to).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_ip_cannot_take_every_pending_line() {
    let udp = Backend::new();
    let echo = echo_server().await;
    let d = start(config(
        &udp,
        echo.port(),
        "tokenClientBinding: none\nmaxSessionsPerClientIp: 2\nlimits: {maxPendingTcpLines: 3, queryRatePerSecond: 100000, queryBurst: 100000}\n",
    ))
    .await;
    // 127.0.0.1 takes its share (2) of the lines in progress; its third is closed at once.
    let _a = connect_from("127.0.0.1", tcp_port(&d)).await;
    let _b = connect_from("127.0.0.1", tcp_port(&d)).await;
    let started = Instant::now();
    let mut c = connect_from("127.0.0.1", tcp_port(&d)).await;
    assert_eq!(read_to_end(&mut c).await, b"");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "closed at once, not at the line deadline: {:?}",
        started.elapsed()
    );
    assert!(poll(Duration::from_secs(5), || refused(&d, "pending_cap") == 1.0).await);
    // Another IP still gets in, and is relayed.
    let mut other = connect_from("127.0.0.2", tcp_port(&d)).await;
    other
        .write_all(format!("{}\nz", token(&d)).as_bytes())
        .await
        .unwrap();
    let mut b = [0u8; 1];
    timeout(Duration::from_secs(5), other.read_exact(&mut b))
        .await
        .expect("relayed")
        .unwrap();
    assert_eq!(&b, b"z");
    assert_eq!(refused(&d, "pending_cap"), 1.0, "nobody else was refused");
}

/// A PROXY v2 header a client writes itself: TCP over IPv4 from 6.6.6.6:8080, player "admin".
fn forged_header() -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x14".to_vec();
    h.extend_from_slice(&[6, 6, 6, 6, 127, 0, 0, 1, 0x1f, 0x90, 0x1e, 0x62]);
    h.extend_from_slice(b"\x05\x00\x05admin");
    assert!(
        ppp::v2::Header::try_from(&h[..]).is_ok(),
        "a header parsers accept"
    );
    h
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_mapping_hears_the_directors_header_first_and_a_forged_one_after_it() {
    use ppp::v2;
    let udp = Backend::new();
    let server = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let d = start(config_on(
        &udp,
        server.local_addr().unwrap().port(),
        "",
        "    proxyProtocol: v2\n",
    ))
    .await;
    let token = token_for(
        d.query_addr,
        r#"{"resourceType":"game","playerId":"player-7f3a"}"#,
    );
    let mut payload = forged_header();
    payload.extend_from_slice(b"hello");
    let mut client = open(&d, &token, &payload).await;
    let (mut upstream, _) = server.accept().await.unwrap();
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !(got.len() > payload.len() && got.ends_with(b"hello")) {
        let mut buf = [0u8; 512];
        let n = tokio::time::timeout_at(deadline, upstream.read(&mut buf))
            .await
            .expect("the header and the payload arrive")
            .unwrap();
        assert!(n > 0, "the relay ended early: {got:?}");
        got.extend_from_slice(&buf[..n]);
    }
    // The target's parser takes the first header: the director's, naming the real client.
    let ours = v2::Header::try_from(&got[..]).expect("a PROXY v2 header `ppp` accepts");
    assert_eq!(ours.command, v2::Command::Proxy);
    assert_eq!(ours.protocol, v2::Protocol::Stream);
    let client_addr = client.local_addr().unwrap();
    assert_eq!(
        ours.addresses,
        v2::Addresses::IPv4(v2::IPv4::new(
            [127, 0, 0, 1],
            [127, 0, 0, 1],
            client_addr.port(),
            tcp_port(&d).port()
        ))
    );
    let player: Vec<_> = ours
        .tlvs()
        .map(|t| t.unwrap())
        .filter(|t| t.kind == 0x05)
        .map(|t| t.value.to_vec())
        .collect();
    assert_eq!(player, [b"player-7f3a".to_vec()]);
    // The client's own header is payload after it, byte for byte.
    assert_eq!(&got[ours.len()..], &payload[..]);
    // And the client is served both ways.
    upstream.write_all(b"world").await.unwrap();
    let mut back = [0u8; 5];
    client.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, b"world");
    drop(client);
    assert_eq!(read_to_end(&mut upstream).await, b"");
    drop(upstream);
    assert!(poll(Duration::from_secs(5), || closed(&d, "closed") == 1.0).await);
    assert_eq!(
        metric(
            d.admin_addr,
            "udp_director_tcp_bytes_total{direction=\"client_to_target\"}"
        ),
        payload.len() as f64,
        "the client's bytes are counted as its own, ours are not"
    );
}

/// A TCP echo server on plain threads (the child-process test below has no runtime).
fn std_echo() -> SocketAddr {
    let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = server.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in server.incoming().flatten() {
            std::thread::spawn(move || {
                let mut w = s.try_clone().unwrap();
                let mut r = s;
                let _ = std::io::copy(&mut r, &mut w);
            });
        }
    });
    addr
}

/// Opens a relay with a fresh token on the child's TCP port and checks one echo; `None` when
/// the director closed it instead.
fn relay_child(d: &testkit::ChildDirector, i: usize) -> Option<std::net::TcpStream> {
    use std::io::{Read, Write};
    let token = testkit::query_token(d.query, r#"{"resourceType":"game"}"#)
        .unwrap()
        .token;
    let mut s = std::net::TcpStream::connect(d.data_ports[1]).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    s.write_all(format!("{token}\nn{i:04}").as_bytes()).ok()?;
    let mut got = [0u8; 5];
    s.read_exact(&mut got).ok()?;
    assert_eq!(got, *format!("n{i:04}").as_bytes());
    Some(s)
}

#[test]
fn a_spent_descriptor_budget_refuses_tcp_newcomers_and_keeps_live_relays() {
    use std::io::{Read, Write};
    const BIN: &str = env!("CARGO_BIN_EXE_udp-director");
    let echo = std_echo();
    let udp = Backend::new();
    let tmp = testkit::TempDir::new("tcp-fds").unwrap();
    // The kernel's own limit, set for the director alone by a wrapper.
    let wrapper = tmp.path.join("limited.sh");
    std::fs::write(
        &wrapper,
        format!("#!/bin/sh\nulimit -n 64 || exit 97\nexec {BIN} \"$@\"\n"),
    )
    .unwrap();
    std::process::Command::new("chmod")
        .arg("+x")
        .arg(&wrapper)
        .status()
        .unwrap();
    let mapping = format!(
        "  game:\n    static:\n      - {{name: gs-0, address: 127.0.0.1, ports: [{{name: default, port: {}}}, {{name: chat, port: {}}}]}}\n",
        udp.addr.port(),
        echo.port()
    );
    let yaml = testkit::yaml::director(
        "dataWorkers: 1\nmaxSessionsPerClientIp: 1000\nlimits: {queryRatePerSecond: 100000, queryBurst: 100000}\ndataPorts:\n  - {port: 0, targetPortName: default}\n  - {port: 0, protocol: TCP, targetPortName: chat}\n",
        &[mapping],
    );
    let d = testkit::ChildDirector::spawn_yaml(&wrapper, tmp, &yaml, &[]).unwrap();
    let descriptors = "udp_director_tcp_refused_total{reason=\"descriptors\"}";
    // Each relay takes two places of the budget: open relays until a newcomer is refused.
    let mut live = Vec::new();
    for i in 0..100 {
        match relay_child(&d, i) {
            Some(s) => live.push((i, s)),
            None => break,
        }
    }
    let established = live.len();
    println!("TCP at 64 fds: {established} relays before the budget refused a newcomer");
    assert!(
        (3..40).contains(&established),
        "the descriptor budget was reached ({established} relays)"
    );
    assert!(d.metric(descriptors) >= 1.0);
    // Live relays keep flowing.
    for (i, s) in &mut live {
        s.write_all(format!("m{i:04}").as_bytes()).unwrap();
        let mut got = [0u8; 5];
        s.read_exact(&mut got)
            .unwrap_or_else(|e| panic!("relay {i} still flows: {e}"));
        assert_eq!(got, *format!("m{i:04}").as_bytes());
    }
    // Newcomers keep being refused at once (and counted); the process keeps accepting.
    let before = d.metric(descriptors);
    for i in 0..5 {
        assert!(relay_child(&d, 1000 + i).is_none(), "newcomer {i} refused");
    }
    assert!(eventually(Duration::from_secs(2), || d.metric(descriptors)
        >= before + 5.0));
    assert_eq!(
        d.metric("udp_director_sessions_by_protocol{protocol=\"tcp\"}"),
        established as f64
    );
    // A relay that ends gives its places back: the next newcomer gets in.
    drop(live.pop());
    let mut again = None;
    assert!(
        eventually(Duration::from_secs(5), || {
            again = relay_child(&d, 2000);
            again.is_some()
        }),
        "a freed budget admits newcomers again"
    );
}
