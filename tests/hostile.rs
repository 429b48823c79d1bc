//! The open internet, on loopback: floods, forged tokens, a saturated session cap, faults of
//! targets and of file descriptors. Every loop is bounded in count and time.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::*;
use testkit::EchoServer;
use testkit::{ChildDirector, Pacer, Rng, Scrape, TempDir, yaml};
use udp_director::config::ValidConfig;

const BIN: &str = env!("CARGO_BIN_EXE_udp-director");

fn echo() -> EchoServer {
    EchoServer::start("127.0.0.1:0".parse().unwrap(), b"").unwrap()
}

fn yaml_for(backend: SocketAddr, extra: &str) -> String {
    yaml::director(extra, &[yaml::echo_mapping(&[backend])])
}

fn bound_socket() -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_millis(1000)))
        .unwrap();
    s
}

/// Sends `datagrams` from `senders` sockets, pacing so the director's socket buffer is never
/// the bottleneck: after each burst it waits (bounded) for the director to count them.
fn flood(
    senders: &[UdpSocket],
    to: SocketAddr,
    datagrams: usize,
    mut make: impl FnMut(usize) -> Vec<u8>,
    mut processed: impl FnMut() -> f64,
) {
    const BURST: usize = 2_000;
    for start in (0..datagrams).step_by(BURST) {
        for i in start..(start + BURST).min(datagrams) {
            let _ = senders[i % senders.len()].send_to(&make(i), to);
        }
        let sent = (start + BURST).min(datagrams) as f64;
        eventually(Duration::from_secs(5), || processed() >= sent);
    }
}

/// Asserts no sender socket receives anything within `wait` (one poll over all of them).
fn assert_nothing_comes_back(senders: &[UdpSocket], wait: Duration) {
    let mut poll = mio::Poll::new().unwrap();
    let mut registered: Vec<mio::net::UdpSocket> = senders
        .iter()
        .map(|s| {
            let s = s.try_clone().unwrap();
            s.set_nonblocking(true).unwrap();
            mio::net::UdpSocket::from_std(s)
        })
        .collect();
    for (i, s) in registered.iter_mut().enumerate() {
        poll.registry()
            .register(s, mio::Token(i), mio::Interest::READABLE)
            .unwrap();
    }
    let mut events = mio::Events::with_capacity(16);
    poll.poll(&mut events, Some(wait)).unwrap();
    assert!(
        events.is_empty(),
        "a sender got something back (socket {:?})",
        events.iter().next().map(|e| e.token())
    );
    let mut buf = [0u8; 2048];
    for s in senders {
        match s.recv_from(&mut buf) {
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            other => panic!("a sender got something back: {other:?}"),
        }
    }
}

fn drops(admin: SocketAddr, reasons: &[&str]) -> f64 {
    Scrape::fetch(admin).unwrap().drops(reasons)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessionless_senders_get_nothing_back_whatever_they_send() {
    let backend = echo();
    let director = start(ValidConfig::from_yaml(&yaml_for(backend.addr, "")).unwrap()).await;
    let (data, admin) = (director.data_addr, director.admin_addr);
    let (sent, elapsed) = tokio::task::spawn_blocking(move || {
        let senders: Vec<UdpSocket> = (0..250).map(|_| bound_socket()).collect();
        let mut rng = Rng::new(0x5eed);
        let started = tokio::time::Instant::now();
        flood(
            &senders,
            data,
            100_000,
            |i| match i % 5 {
                0 => rng.bytes(200),
                1 => rng.uuid().into_bytes(),
                2 => [MAGIC, rng.uuid().as_bytes()].concat(),
                3 => {
                    // Behind the magic, anything but a PING (answered to anyone, by design:
                    // tests/proof_of_address.rs) or a RESPONSE's tag.
                    let mut tail = rng.bytes(40);
                    if matches!(tail[0], 2 | 3) {
                        tail[0] = 0;
                    }
                    [MAGIC, &tail[..]].concat()
                }
                _ => Vec::new(),
            },
            || {
                drops(
                    admin,
                    &["no_session", "invalid_token", "malformed_control", "empty"],
                )
            },
        );
        let elapsed = started.elapsed();
        assert_nothing_comes_back(&senders, Duration::from_millis(300));
        (100_000usize, elapsed)
    })
    .await
    .unwrap();
    let counted = drops(
        admin,
        &["no_session", "invalid_token", "malformed_control", "empty"],
    );
    println!(
        "reflection: {sent} datagrams from 250 ports in {elapsed:?}, {counted} counted as drops, 0 bytes back"
    );
    assert_eq!(counted, sent as f64, "every datagram counted by reason");
    assert_eq!(metric(admin, "udp_director_sessions_active"), 0.0);
    assert_eq!(metric(admin, "udp_director_upstream_sockets"), 0.0);
    assert_eq!(backend.received(), 0, "nothing reached the game server");
    director.stop().await;
}

#[test]
fn a_hundred_thousand_guessed_tokens_create_nothing_and_log_nothing() {
    let backend = echo();
    let tmp = TempDir::new("guess").unwrap();
    let config = tmp.path.join("config.yaml");
    std::fs::write(&config, yaml_for(backend.addr, "")).unwrap();
    let d = ChildDirector::spawn_logging(
        Path::new(BIN),
        tmp,
        &[std::ffi::OsStr::new("--config"), config.as_os_str()],
        "info",
    )
    .unwrap();
    // Settle: drain start-up lines.
    while d.logs.recv_timeout(Duration::from_millis(200)).is_ok() {}
    let senders: Vec<UdpSocket> = (0..100).map(|_| bound_socket()).collect();
    let mut rng = Rng::new(42);
    let started = tokio::time::Instant::now();
    let attempts = 100_000;
    flood(
        &senders,
        d.data,
        attempts,
        |i| match i % 10 {
            // Malformed: right length, one non-hex character.
            0 | 1 => {
                let mut t = rng.uuid().into_bytes();
                t[3] = b'g';
                t
            }
            2..=5 => rng.uuid().into_bytes(),
            _ => [MAGIC, rng.uuid().as_bytes()].concat(),
        },
        || {
            drops(
                d.admin,
                &["invalid_token", "no_session", "malformed_control"],
            )
        },
    );
    let elapsed = started.elapsed();
    let rejected = d.metric("udp_director_tokens_rejected_total{reason=\"invalid_token\"}");
    println!(
        "token guessing: {attempts} attempts in {elapsed:?}, {rejected} rejected as unknown, 0 sessions"
    );
    assert_eq!(
        rejected, 80_000.0,
        "well-formed guesses rejected and counted"
    );
    assert_eq!(
        drops(d.admin, &["no_session", "malformed_control"]),
        20_000.0,
        "malformed ones are not tokens"
    );
    assert_eq!(d.metric("udp_director_sessions_created_total"), 0.0);
    assert_eq!(d.metric("udp_director_sessions_active"), 0.0);
    let mut lines = Vec::new();
    while let Ok(l) = d.logs.recv_timeout(Duration::from_millis(300)) {
        lines.push(l);
    }
    assert!(
        lines.len() <= 4,
        "the flood is not logged line by line: {lines:#?}"
    );
    assert_nothing_comes_back(&senders, Duration::from_millis(50));
}

/// Ping-pongs on one live session, one round trip a millisecond, until stopped; (sent,
/// lost). `done` counts round trips as they complete.
fn live_traffic(
    socket: UdpSocket,
    data: SocketAddr,
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
) -> (u64, u64) {
    let (mut sent, mut lost) = (0u64, 0u64);
    let mut buf = [0u8; 64];
    let mut pacer = Pacer::new(Duration::from_millis(1));
    for seq in 0u64..50_000 {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        pacer.tick();
        socket.send_to(&seq.to_be_bytes(), data).unwrap();
        sent += 1;
        match socket.recv(&mut buf) {
            Ok(8) if buf[..8] == seq.to_be_bytes() => {}
            _ => lost += 1,
        }
        done.fetch_add(1, Ordering::Relaxed);
    }
    (sent, lost)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saturated_session_cap_refuses_newcomers_while_live_sessions_flow() {
    let backend = echo();
    let yaml = yaml_for(
        backend.addr,
        // All newcomers share 127.0.0.1: the per-IP cap is lifted so the global cap is what is tested.
        "maxSessions: 300\nmaxSessionsPerClientIp: 100000\ndefaultEndpoint: {resourceType: echo}\nlimits: {maxTokens: 100, queryRatePerSecond: 100000, queryBurst: 100000}",
    );
    let director = start(ValidConfig::from_yaml(&yaml).unwrap()).await;
    let tokens = Arc::clone(&director.tokens);
    let (q, data, admin) = (director.query_addr, director.data_addr, director.admin_addr);
    let report = tokio::task::spawn_blocking(move || {
        let live = bound_socket();
        let token = token_for(q, r#"{"resourceType":"echo"}"#);
        live.send_to(token.as_bytes(), data).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicU64::new(0));
        let traffic = {
            let (stop, done) = (Arc::clone(&stop), Arc::clone(&done));
            std::thread::spawn(move || live_traffic(live, data, stop, done))
        };
        // 3 000 newcomers (distinct source ports, tokenless: the default endpoint would take
        // every one of them) against a cap of 300, three datagrams each; each round sent once
        // the director has judged the previous one (each past the cap is a refusal).
        let flooders: Vec<UdpSocket> = (0..3_000).map(|_| bound_socket()).collect();
        for round in 0..3u8 {
            for s in &flooders {
                let _ = s.send_to(&[round; 32], data);
            }
            let refused = f64::from(round + 1) * 2_700.0;
            eventually(Duration::from_secs(5), || {
                metric(
                    admin,
                    "udp_director_sessions_refused_total{reason=\"session_cap\"}",
                ) >= refused
            });
        }
        // The token store under a flood of queries: bounded by maxTokens.
        for _ in 0..1_000 {
            let _ = testkit::query_raw(q, r#"{"resourceType":"echo"}"#);
        }
        let held = tokens.len();
        // The live client keeps playing past the query flood: 300 more round trips.
        let so_far = done.load(Ordering::Relaxed);
        eventually(Duration::from_secs(5), || {
            done.load(Ordering::Relaxed) >= so_far + 300
        });
        stop.store(true, Ordering::Relaxed);
        let (sent, lost) = traffic.join().unwrap();
        (sent, lost, held)
    })
    .await
    .unwrap();
    let (sent, lost, tokens_held) = report;
    let active = metric(admin, "udp_director_sessions_active");
    let refused = metric(
        admin,
        "udp_director_sessions_refused_total{reason=\"session_cap\"}",
    );
    println!(
        "cap flood: live session {sent} round trips, {lost} lost; {active} active (cap 300), {refused} refusals; {tokens_held} tokens held (cap 100)"
    );
    assert_eq!(active, 300.0, "exactly the cap");
    assert!(
        refused >= 2_700.0,
        "newcomers past the cap refused and counted: {refused}"
    );
    assert!(sent >= 200, "the live session kept flowing ({sent})");
    assert!(
        (lost as f64) < (sent as f64) * 0.001,
        "live loss {lost}/{sent} under 0.1 %"
    );
    assert!(tokens_held <= 100, "token store bounded: {tokens_held}");
    director.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_or_vanished_target_is_counted_and_hurts_nobody_else() {
    let good = echo();
    let gone = UdpSocket::bind("127.0.0.1:0").unwrap();
    let closed_port = gone.local_addr().unwrap().port();
    drop(gone);
    let vanishing = echo();
    let yaml = format!(
        "bindAddress: 127.0.0.1\nqueryPort: 0\ndataPort: 0\nadminPort: 0\ndataWorkers: 1\nresourceQueryMapping:\n  good:\n    static: [{{name: g, address: 127.0.0.1, port: {}}}]\n  closed:\n    static: [{{name: c, address: 127.0.0.1, port: {closed_port}}}]\n  vanishing:\n    static: [{{name: v, address: 127.0.0.1, port: {}}}]\n",
        good.addr.port(),
        vanishing.addr.port()
    );
    let director = start(ValidConfig::from_yaml(&yaml).unwrap()).await;
    let (q, data, admin) = (director.query_addr, director.data_addr, director.admin_addr);
    let vanishing_addr = vanishing.addr;
    let (bystander_ok, errors) = tokio::task::spawn_blocking(move || {
        // With one worker, all three sessions share upstream socket slot 0.
        let bystander = bound_socket();
        bystander
            .send_to(token_for(q, r#"{"resourceType":"good"}"#).as_bytes(), data)
            .unwrap();
        let to_closed = bound_socket();
        to_closed
            .send_to(
                token_for(q, r#"{"resourceType":"closed"}"#).as_bytes(),
                data,
            )
            .unwrap();
        let to_vanishing = bound_socket();
        to_vanishing
            .send_to(
                token_for(q, r#"{"resourceType":"vanishing"}"#).as_bytes(),
                data,
            )
            .unwrap();
        to_vanishing.send_to(b"before", data).unwrap();
        let mut buf = [0u8; 64];
        assert_eq!(to_vanishing.recv(&mut buf).ok(), Some(6));
        drop(vanishing);
        let mut ok = 0;
        for i in 0..200u32 {
            to_closed.send_to(b"into the void", data).unwrap();
            to_vanishing.send_to(b"after", data).unwrap();
            bystander.send_to(&i.to_be_bytes(), data).unwrap();
            if bystander.recv(&mut buf).ok() == Some(4) && buf[..4] == i.to_be_bytes() {
                ok += 1;
            }
        }
        eventually(Duration::from_secs(3), || {
            drops(admin, &["upstream_error"]) >= 1.0
        });
        (ok, drops(admin, &["upstream_error"]))
    })
    .await
    .unwrap();
    println!(
        "faults: bystander {bystander_ok}/200 answered; {errors} ICMP errors counted (vanished target was {vanishing_addr})"
    );
    assert_eq!(
        bystander_ok, 200,
        "the bystander sharing the socket lost nothing"
    );
    assert!(errors >= 1.0, "ICMP port-unreachable reports are counted");
    assert_eq!(
        metric(admin, "udp_director_sessions_active"),
        3.0,
        "no session was torn down"
    );
    director.stop().await;
}

#[test]
fn out_of_file_descriptors_refuses_new_sessions_and_keeps_old_ones() {
    let backend = echo();
    let tmp = TempDir::new("emfile").unwrap();
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
    let config = tmp.path.join("config.yaml");
    std::fs::write(
        &config,
        yaml_for(
            backend.addr,
            "dataWorkers: 1\ndefaultEndpoint: {resourceType: echo}",
        )
        .replace("dataWorkers: 2\n", ""),
    )
    .unwrap();
    let d = ChildDirector::spawn_args(
        &wrapper,
        tmp,
        &[std::ffi::OsStr::new("--config"), config.as_os_str()],
    )
    .unwrap();
    // Each session to the one target needs its own upstream socket: open sessions until the
    // director runs out of descriptors.
    let mut clients = Vec::new();
    let mut buf = [0u8; 16];
    for _ in 0..200 {
        let c = bound_socket();
        c.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        c.send_to(b"hi", d.data).unwrap();
        if c.recv(&mut buf).is_err() {
            break;
        }
        clients.push(c);
    }
    let established = clients.len();
    assert!(
        (10..190).contains(&established),
        "the descriptor limit was reached ({established} sessions)"
    );
    assert!(d.metric("udp_director_datagrams_dropped_total{reason=\"upstream_socket\"}") >= 1.0);
    // Old sessions keep flowing.
    for (i, c) in clients.iter().enumerate() {
        c.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        c.send_to(&(i as u32).to_be_bytes(), d.data).unwrap();
        assert_eq!(c.recv(&mut buf).ok(), Some(4), "session {i} still answers");
    }
    // Newcomers keep being refused (and counted), never crash the process.
    let before = d.metric("udp_director_datagrams_dropped_total{reason=\"upstream_socket\"}");
    for _ in 0..20 {
        let c = bound_socket();
        c.send_to(b"hi", d.data).unwrap();
    }
    assert!(eventually(Duration::from_secs(2), || {
        d.metric("udp_director_datagrams_dropped_total{reason=\"upstream_socket\"}")
            >= before + 20.0
    }));
    assert_eq!(
        d.metric("udp_director_sessions_active"),
        established as f64,
        "refused sessions leave nothing behind"
    );
    // A player with a token still gets in: the oldest default-endpoint session gives up its
    // socket (SPEC §3: they yield to token sessions whether the table or the descriptors
    // are full).
    let token = testkit::query_token(d.query, r#"{"resourceType":"echo"}"#)
        .unwrap()
        .token;
    let player = bound_socket();
    player
        .set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    player.send_to(token.as_bytes(), d.data).unwrap();
    player.send_to(b"player", d.data).unwrap();
    assert_eq!(
        player.recv(&mut buf).ok(),
        Some(6),
        "the token newcomer is answered"
    );
    assert!(eventually(Duration::from_secs(2), || d.metric(
        "udp_director_sessions_closed_total{reason=\"yielded_default_endpoint\"}"
    ) >= 1.0));
    assert_eq!(d.metric("udp_director_sessions_active"), established as f64);
    println!(
        "EMFILE: {established} sessions at 64 fds; 20 newcomers refused; all old sessions answered; a token newcomer took a default-endpoint session's socket"
    );
}

/// Opens `n` connections that each send one byte every `every`, for `total` (slowloris).
fn slowloris(addr: SocketAddr, n: usize, every: Duration, total: Duration) -> (usize, usize) {
    let mut conns: Vec<TcpStream> = (0..n)
        .filter_map(|_| TcpStream::connect(addr).ok())
        .collect();
    for c in &conns {
        let _ = c.set_nonblocking(true);
    }
    let opened = conns.len();
    let deadline = tokio::time::Instant::now() + total;
    let mut pacer = Pacer::new(every);
    while tokio::time::Instant::now() < deadline {
        pacer.tick();
        conns.retain_mut(|c| c.write(b" ").is_ok());
    }
    // Connections the server has closed read as EOF (or reset).
    let mut closed = 0;
    let mut buf = [0u8; 256];
    for c in &mut conns {
        let _ = c.set_nonblocking(false);
        let _ = c.set_read_timeout(Some(Duration::from_millis(50)));
        match c.read(&mut buf) {
            Ok(0) => closed += 1,
            Err(e) if e.kind() == ErrorKind::ConnectionReset => closed += 1,
            _ => {}
        }
    }
    (opened, closed + (opened - conns.len()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_good_client_is_answered_promptly_during_query_abuse() {
    let backend = echo();
    let yaml = yaml_for(
        backend.addr,
        // One loopback address stands in for the many hosts of a real attack.
        "limits: {queryIdleTimeoutSeconds: 2, queryMaxBytes: 1024, queryRatePerSecond: 100000, queryBurst: 100000, maxQueryConnectionsPerIp: 100000}",
    );
    let director = start(ValidConfig::from_yaml(&yaml).unwrap()).await;
    let (q, admin) = (director.query_addr, director.admin_addr);
    let (latencies, slow, codes) = tokio::task::spawn_blocking(move || {
        let attack = std::thread::spawn(move || {
            slowloris(q, 2_000, Duration::from_millis(500), Duration::from_secs(3))
        });
        // Hostile lines, each on its own connection, while the slowloris runs.
        let hostile: Vec<(&str, Vec<u8>)> = vec![
            ("too_large", vec![b'{'; 4096]),
            ("bad_request", b"{\"resourceType\":\"\xff\xfe\"}\n".to_vec()),
            ("bad_request", [&b"["[..].repeat(500)[..], b"\n"].concat()),
            (
                "bad_request",
                b"{\"resourceType\":\"echo\",\"x\":1}\n".to_vec(),
            ),
            ("bad_request", b"{\"resourceType\":7}\n".to_vec()),
            ("bad_request", b"{\"resourceType\":\"ec\0ho\"\0}\n".to_vec()),
        ];
        let mut codes = Vec::new();
        for (want, line) in hostile {
            let mut s = TcpStream::connect(q).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
            let _ = s.write_all(&line);
            let mut answer = String::new();
            let _ = s.read_to_string(&mut answer);
            let v: serde_json::Value = serde_json::from_str(answer.trim())
                .unwrap_or_else(|e| panic!("{want}: {e}: {answer:?}"));
            codes.push((want, v["error"]["code"].as_str().unwrap_or("").to_string()));
        }
        // A connection that sends requests and never reads: the server gives up on it.
        let mut deaf = TcpStream::connect(q).unwrap();
        deaf.set_nonblocking(true).unwrap();
        for _ in 0..20_000 {
            if deaf.write(b"{\"resourceType\":\"echo\"}\n").is_err() {
                break;
            }
        }
        // The well-behaved client: fresh connection per query, 300 queries, one every 5 ms.
        let mut latencies = Vec::new();
        let mut pacer = Pacer::new(Duration::from_millis(5));
        for _ in 0..300 {
            pacer.tick();
            let t = tokio::time::Instant::now();
            let answer = query(q, r#"{"resourceType":"echo"}"#);
            latencies.push(t.elapsed());
            assert!(answer["token"].is_string(), "{answer}");
        }
        let slow = attack.join().unwrap();
        (latencies, slow, codes)
    })
    .await
    .unwrap();
    for (want, got) in &codes {
        assert_eq!(want, got);
    }
    let mut sorted = latencies.clone();
    sorted.sort();
    let p50 = sorted[sorted.len() / 2];
    let p99 = sorted[sorted.len() * 99 / 100];
    let (opened, closed) = slow;
    println!(
        "query abuse: {opened} slowloris connections ({closed} closed by the idle deadline), 6 hostile lines, 1 deaf reader; good client p50 {p50:?} p99 {p99:?}"
    );
    assert!(
        opened >= 1_900,
        "the attack opened its connections ({opened})"
    );
    assert_eq!(
        closed, opened,
        "every slow connection was cut by the deadline"
    );
    assert!(
        p99 < Duration::from_millis(50),
        "good client starved: p99 {p99:?} (target 10 ms; figures in Docs/Benchmarks.md)"
    );
    assert!(
        eventually(Duration::from_secs(5), || {
            metric(admin, "udp_director_query_connections_active") == 0.0
        }),
        "slow and deaf connections are all gone"
    );
    director.stop().await;
}

/// A burst of sessions drains and the director hands the freed memory back: the trim counter
/// moves once the load has halved, and the anonymous RSS ends below the burst's peak. (The
/// full figure, 1 000 000 sessions against a before-reading, is `make soak`.)
#[test]
fn a_drained_burst_hands_its_memory_back() {
    let backend = echo();
    let d = ChildDirector::spawn_yaml(
        Path::new(BIN),
        TempDir::new("trim").unwrap(),
        // Tokenless sessions through the default endpoint (a token holds one session), all
        // from 127.0.0.1 (the per-IP cap lifted).
        &yaml_for(
            backend.addr,
            "sessionTimeoutSeconds: 6\nmaxSessions: 5000\nmaxSessionsPerClientIp: 5000\ndefaultEndpoint: {resourceType: echo}",
        ),
        &[],
    )
    .unwrap();
    let before = d.rss_anon_kib();
    let burst = 3_000usize;
    // In waves of 500, each sent once the director holds the previous ones' sessions.
    let mut clients: Vec<UdpSocket> = Vec::with_capacity(burst);
    for wave in 0..burst / 500 {
        for _ in 0..500 {
            let s = UdpSocket::bind("127.0.0.1:0").unwrap();
            s.send_to(b"x", d.data).unwrap();
            clients.push(s);
        }
        let held = ((wave + 1) * 500) as f64 * 0.9;
        eventually(Duration::from_secs(5), || {
            d.metric("udp_director_sessions_active") >= held
        });
    }
    // Most of the burst is enough (on a loaded machine a few token datagrams may be dropped
    // before the director reads them): a trim needs the load to fall by 1 000 and by half.
    assert!(
        eventually(Duration::from_secs(30), || {
            d.metric("udp_director_sessions_active") >= burst as f64 * 2.0 / 3.0
        }),
        "the burst was admitted: {} active, {} created, drops {}",
        d.metric("udp_director_sessions_active"),
        d.metric("udp_director_sessions_created_total"),
        drops(d.admin, &["no_session", "invalid_token", "expired_token"])
    );
    let peak = d.rss_anon_kib();
    assert_eq!(d.metric("udp_director_memory_trims_total"), 0.0);
    drop(clients);
    assert!(
        eventually(Duration::from_secs(30), || {
            d.metric("udp_director_sessions_active") == 0.0
                && d.metric("udp_director_memory_trims_total") >= 1.0
        }),
        "the drained burst was followed by a trim"
    );
    let after = d.rss_anon_kib();
    println!("anonymous RSS KiB: before {before}, {burst} sessions {peak}, drained {after}");
    assert!(
        after < peak,
        "memory went back: {after} KiB vs {peak} KiB at the peak"
    );
}
