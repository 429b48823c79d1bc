//! Forged floods (SPEC §3 "Sessions a forger cannot hold"): datagrams from forged source
//! addresses on 127.0.0.0/8, sent through a raw socket as an attacker on the open internet
//! can, while a live player keeps playing and newcomers keep arriving. Each flood is bounded
//! (50 000 datagrams) and stays on loopback. It is paced at 10 000/s, a rate this debug build
//! of the director takes on two shared cores with the flooder, the player and the newcomers
//! beside it; the release binary's figures at attack rates are `make floods` (Benchmarks.md).
//!
//! - a replayed token from 50 000 forged addresses: refused (bound to its query's IP);
//! - the same token from 25 000 forged ports of its own IP: one session, moved each time;
//! - forged game data with `defaultEndpoint` on, from 10 000 addresses (and 2 500 ports of
//!   one address): sessions up to the per-IP cap and a full table, and every token newcomer
//!   still gets in (default-endpoint sessions yield).
//!
//! In each: every newcomer during and after the flood connects, the live player loses at
//! most 1 % of its round trips.

mod common;

use std::net::{SocketAddr, SocketAddrV4, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::*;
use testkit::forge::{Forger, forged_source};
use testkit::{EchoServer, eventually};
use tokio::time::Instant;
use udp_director::config::ValidConfig;
use udp_director_client::{Query, Session};

const FLOOD: usize = 50_000;

/// One flood at a time: each needs the machine's two cores to itself.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
const RATE: u64 = 10_000;

fn v4(addr: SocketAddr) -> SocketAddrV4 {
    match addr {
        SocketAddr::V4(a) => a,
        SocketAddr::V6(_) => panic!("loopback IPv4 expected"),
    }
}

/// The live player: a numbered datagram every 2 ms until stopped; returns (sent, answered).
fn live_player(query: SocketAddr, data: SocketAddr, stop: Arc<AtomicBool>) -> (u64, u64) {
    let grant = Query::new("echo").send(query).unwrap();
    let mut session = Session::open(data, &grant).unwrap();
    let mut buf = [0u8; 64];
    // Proven before counting starts.
    let ready = Instant::now() + Duration::from_secs(5);
    while Instant::now() < ready {
        session.send(b"warm-up").unwrap();
        if session
            .recv_timeout(&mut buf, Duration::from_millis(50))
            .unwrap()
            .is_some()
        {
            break;
        }
    }
    let socket = session.socket().try_clone().unwrap();
    socket.set_nonblocking(true).unwrap();
    let (mut sent, mut answered) = (0u64, 0u64);
    let mut pacer = testkit::Pacer::new(Duration::from_millis(2));
    let until = Instant::now() + Duration::from_secs(60);
    let mut last_answered = Instant::now();
    loop {
        let stopping = stop.load(Ordering::Relaxed) || Instant::now() > until;
        if !stopping {
            socket.send_to(&sent.to_le_bytes(), data).unwrap();
            sent += 1;
        }
        while let Ok((n, _)) = socket.recv_from(&mut buf) {
            if n == 8 {
                answered += 1;
                last_answered = Instant::now();
            }
        }
        // After the stop, wait for stragglers: answered, or 500 ms without any.
        if stopping && (answered >= sent || last_answered.elapsed() > Duration::from_millis(500)) {
            return (sent, answered);
        }
        pacer.tick();
    }
}

/// Newcomers: one every 50 ms while `run` holds; each queries, opens a session with the
/// client library and must hear its server within 3 s. Returns (tried, connected).
fn newcomers(query: SocketAddr, data: SocketAddr, run: &AtomicBool, at_least: usize) -> (u64, u64) {
    let (mut tried, mut ok) = (0u64, 0u64);
    let mut pacer = testkit::Pacer::new(Duration::from_millis(50));
    let until = Instant::now() + Duration::from_secs(30);
    while (run.load(Ordering::Relaxed) || (tried as usize) < at_least) && Instant::now() < until {
        tried += 1;
        let Ok(grant) = Query::new("echo").send(query) else {
            continue;
        };
        let mut session = Session::open(data, &grant).unwrap();
        let mut buf = [0u8; 64];
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            session.send(b"hello").unwrap();
            if let Ok(Some(_)) = session.recv_timeout(&mut buf, Duration::from_millis(50)) {
                ok += 1;
                break;
            }
            let _ = session.tick();
        }
        pacer.tick();
    }
    (tried, ok)
}

struct Report {
    flooded: usize,
    during: (u64, u64),
    after: (u64, u64),
    live: (u64, u64),
    held: f64,
}

/// Runs one flood against a fresh director on `extra`; `payload(i)` / `source(i)` make the
/// forged datagrams (the attacker's own token is passed in).
async fn flood(
    extra: &str,
    count: usize,
    rate: u64,
    source: impl FnMut(usize) -> SocketAddrV4 + Send + 'static,
    payload: impl Fn(&str, usize) -> Vec<u8> + Send + 'static,
) -> (Report, udp_director::app::Running) {
    let _alone = ONE_AT_A_TIME.lock().await;
    let echo = EchoServer::start("127.0.0.1:0".parse().unwrap(), b"").unwrap();
    let yaml = testkit::yaml::director(
        &format!("limits: {{queryRatePerSecond: 100000, queryBurst: 100000}}\n{extra}"),
        &[testkit::yaml::echo_mapping(&[echo.addr])],
    );
    let d = start(ValidConfig::from_yaml(&yaml).unwrap()).await;
    let (query, data) = (d.query_addr, d.data_addr);
    let report = tokio::task::spawn_blocking(move || {
        let _echo = echo;
        let mut forger = Forger::new().expect("raw sockets (CAP_NET_RAW) on this machine");
        let attacker = Query::new("echo").send(query).unwrap().token;
        let stop = Arc::new(AtomicBool::new(false));
        let live = {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || live_player(query, data, stop))
        };
        let flooding = Arc::new(AtomicBool::new(true));
        let during = {
            let flooding = Arc::clone(&flooding);
            std::thread::spawn(move || newcomers(query, data, &flooding, 10))
        };
        let flooded = forger
            .flood(v4(data), count, rate, source, |i| payload(&attacker, i))
            .unwrap();
        flooding.store(false, Ordering::Relaxed);
        let during = during.join().unwrap();
        let after = newcomers(query, data, &AtomicBool::new(false), 10);
        stop.store(true, Ordering::Relaxed);
        let live = live.join().unwrap();
        (flooded, during, after, live)
    })
    .await
    .unwrap();
    let admin = d.admin_addr;
    // Sessions besides the live player's and the newcomers' (each newcomer holds one).
    let legit = 1.0 + (report.1.1 + report.2.1) as f64;
    eventually(Duration::from_secs(2), || {
        metric(admin, "udp_director_sessions_active") >= legit
    });
    let held = metric(admin, "udp_director_sessions_active") - legit;
    let (flooded, during, after, live) = report;
    (
        Report {
            flooded,
            during,
            after,
            live,
            held,
        },
        d,
    )
}

fn check(name: &str, r: &Report) {
    let lost = r.live.0 - r.live.1.min(r.live.0);
    println!(
        "{name}: {} forged datagrams; newcomers connected during {}/{} and after {}/{}; live player lost {lost}/{} ({:.2} %); sessions held by the flood {}",
        r.flooded,
        r.during.1,
        r.during.0,
        r.after.1,
        r.after.0,
        r.live.0,
        lost as f64 * 100.0 / r.live.0.max(1) as f64,
        r.held
    );
    assert_eq!(
        r.during.1, r.during.0,
        "{name}: every newcomer during the flood connected"
    );
    assert_eq!(
        r.after.1, r.after.0,
        "{name}: every newcomer after the flood connected"
    );
    assert!(
        r.live.0 > 200,
        "{name}: the live player played ({})",
        r.live.0
    );
    assert!(
        lost as f64 <= r.live.0 as f64 * 0.01,
        "{name}: live loss {lost}/{} over 1 %",
        r.live.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_replayed_from_fifty_thousand_forged_addresses_opens_nothing() {
    let (r, d) = flood("", FLOOD, RATE, forged_source, |token, _| {
        token.as_bytes().to_vec()
    })
    .await;
    check("replayed token", &r);
    assert!(
        r.held <= 0.0,
        "the forged addresses hold no session: {}",
        r.held
    );
    let refused = metric(
        d.admin_addr,
        "udp_director_tokens_rejected_total{reason=\"wrong_client\"}",
    );
    assert!(
        refused >= FLOOD as f64 * 0.9,
        "refused as bound to another IP: {refused}"
    );
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_sprayed_from_twenty_five_thousand_ports_of_its_ip_holds_one_session() {
    // Ports below the ephemeral range, so no real client's address is forged (a forger who
    // can send from a player's exact address and port can speak for that player anyway).
    let source = |i: usize| SocketAddrV4::new([127, 0, 0, 1].into(), 1_024 + (i % 30_000) as u16);
    // 25 000 at 5 000/s: a redemption hashed to the other worker opens (and the old worker
    // closes) a session and its upstream socket each time.
    let (r, d) = flood("", FLOOD / 2, RATE / 2, source, |token, _| {
        token.as_bytes().to_vec()
    })
    .await;
    check("same-IP port spray", &r);
    assert!(
        r.held <= 1.0,
        "one session for the sprayed token: {}",
        r.held
    );
    // Each redemption moved the one session: in place on the same worker, or (the kernel
    // hashed the new port to the other worker) opened there and closed here as `moved`.
    let moved = metric(d.admin_addr, "udp_director_sessions_moved_total");
    let displaced = metric(
        d.admin_addr,
        "udp_director_sessions_closed_total{reason=\"moved\"}",
    );
    assert!(
        moved + displaced >= FLOOD as f64 / 2.0 * 0.9,
        "the one session moved with each redemption: {moved} in place, {displaced} across workers"
    );
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_game_data_with_a_default_endpoint_cannot_keep_token_newcomers_out() {
    // Every fifth datagram from one address's many ports (the per-IP cap), the rest from
    // 40 000 addresses; the descriptors run out long before maxSessions.
    let source = |i: usize| {
        if i.is_multiple_of(5) {
            SocketAddrV4::new([127, 0, 1, 1].into(), 2_000 + (i % 50_000) as u16)
        } else {
            forged_source(i + 1_000)
        }
    };
    // 12 500 at 2 500/s against maxSessions 10 000: every forged datagram here opens a
    // session and an upstream socket and the game server answers each one, so the table
    // fills and every token newcomer after that takes a default-endpoint session's place.
    let (r, d) = flood(
        "defaultEndpoint: {resourceType: echo}\nmaxSessions: 10000\n",
        FLOOD / 4,
        2_500,
        source,
        |_, i| format!("forged game data {i}").into_bytes(),
    )
    .await;
    check("default-endpoint flood", &r);
    let admin = d.admin_addr;
    let per_ip = metric(
        admin,
        "udp_director_sessions_refused_total{reason=\"client_ip_cap\"}",
    );
    assert!(
        per_ip >= 1_000.0,
        "one address's ports stopped at 256 sessions: {per_ip} refused"
    );
    let yielded = metric(
        admin,
        "udp_director_sessions_closed_total{reason=\"yielded_default_endpoint\"}",
    );
    println!(
        "default-endpoint flood: {per_ip} refused by the per-IP cap, {yielded} default-endpoint sessions yielded to token newcomers"
    );
    assert!(r.held > 9_000.0, "the flood filled the table: {}", r.held);
    assert!(
        yielded >= 1.0,
        "token newcomers took default-endpoint sessions' places"
    );
    d.stop().await;
}

#[test]
fn forged_sources_stay_on_loopback() {
    let mut forger = Forger::new().expect("raw sockets");
    let sink = UdpSocket::bind("127.0.0.1:0").unwrap();
    let to = v4(sink.local_addr().unwrap());
    assert!(
        forger
            .send(SocketAddrV4::new([10, 0, 0, 1].into(), 1), to, b"x")
            .is_err()
    );
    assert!(
        forger
            .send(
                forged_source(0),
                SocketAddrV4::new([10, 0, 0, 1].into(), 1),
                b"x"
            )
            .is_err()
    );
    forger.send(forged_source(7), to, b"forged").unwrap();
    sink.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut buf = [0u8; 16];
    let (n, from) = sink.recv_from(&mut buf).unwrap();
    assert_eq!(
        (&buf[..n], from),
        (&b"forged"[..], SocketAddr::V4(forged_source(7)))
    );
}
