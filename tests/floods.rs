//! Forged floods (SPEC §3 "Sessions a forger cannot hold"): datagrams from forged source
//! addresses on 127.0.0.0/8, sent through a raw socket as an attacker on the open internet
//! can, while a live player keeps playing and newcomers keep arriving. Each flood is bounded
//! (50 000 datagrams) and stays on loopback. It is paced at 10 000/s, a rate this debug build
//! of the director takes on two shared cores with the flooder, the player and the newcomers
//! beside it; the release binary's figures at attack rates are `make floods` (Benchmarks.md).
//!
//! - a replayed token from 50 000 forged addresses: challenged (proof of address, SPEC §3),
//!   never answered, so nothing opens; the same with `tokenClientBinding: none`;
//! - the live player's own token from 50 000 forged ports of its IP: its session stays
//!   where it is, and that IP is sent at most 10 challenges a second;
//! - forged game data with `defaultEndpoint` on, from 10 000 addresses (and 2 500 ports of
//!   one address) to a game server that answers 100 bytes to each: sessions up to the per-IP
//!   cap and a full table, every token newcomer still gets in (default-endpoint sessions
//!   yield), and the forged sources are sent at most 3 × the bytes they sent.
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

/// Bytes the legitimate clients sent through the director and got back from it.
#[derive(Default, Clone, Copy)]
struct Bytes {
    sent: u64,
    received: u64,
}

/// The live player: a numbered datagram every 2 ms until stopped; returns (sent, answered)
/// and its bytes.
fn live_player(
    data: SocketAddr,
    grant: udp_director_client::Grant,
    stop: Arc<AtomicBool>,
    warmed: std::sync::mpsc::Sender<()>,
) -> ((u64, u64), Bytes) {
    let mut session = Session::open(data, &grant).unwrap();
    let mut bytes = Bytes::default();
    let mut buf = [0u8; 256];
    // Proven before counting starts.
    let ready = Instant::now() + Duration::from_secs(5);
    while Instant::now() < ready {
        session.send(b"warm-up").unwrap();
        bytes.sent += 7;
        if let Some(n) = session
            .recv_timeout(&mut buf, Duration::from_millis(50))
            .unwrap()
        {
            bytes.received += n as u64;
            break;
        }
    }
    let _ = warmed.send(());
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
            bytes.sent += 8;
        }
        while let Ok((n, _)) = socket.recv_from(&mut buf) {
            bytes.received += n as u64;
            // The game server's answer: its prefix, then the 8 bytes sent.
            if n >= 8 {
                answered += 1;
                last_answered = Instant::now();
            }
        }
        // After the stop, wait for stragglers: answered, or 500 ms without any.
        if stopping && (answered >= sent || last_answered.elapsed() > Duration::from_millis(500)) {
            return ((sent, answered), bytes);
        }
        pacer.tick();
    }
}

/// Newcomers: one every 50 ms while `run` holds; each queries, opens a session with the
/// client library and must hear its server within 3 s. Returns (tried, connected) and their
/// bytes.
fn newcomers(
    query: SocketAddr,
    data: SocketAddr,
    run: &AtomicBool,
    at_least: usize,
    spread: bool,
) -> ((u64, u64), Bytes) {
    let (mut tried, mut ok) = (0u64, 0u64);
    let mut bytes = Bytes::default();
    let mut pacer = testkit::Pacer::new(Duration::from_millis(50));
    let until = Instant::now() + Duration::from_secs(30);
    while (run.load(Ordering::Relaxed) || (tried as usize) < at_least) && Instant::now() < until {
        tried += 1;
        let grant = match Query::new("echo").send(query) {
            Ok(grant) => grant,
            Err(e) => {
                println!("newcomer {tried}: no token: {e}");
                continue;
            }
        };
        // Spread: each from an address of its own (players behind different addresses; an
        // unbound token needs proof from wherever it comes).
        let mut session = if spread {
            let ip = std::net::Ipv4Addr::new(127, 0, 2, 1 + (tried % 250) as u8);
            let socket = UdpSocket::bind((ip, 0)).unwrap();
            Session::open_on(
                socket,
                data,
                &grant,
                b"\xff\xff\xff\xffRESET",
                udp_director_client::Resume::default(),
            )
            .unwrap()
        } else {
            Session::open(data, &grant).unwrap()
        };
        let mut buf = [0u8; 256];
        // A player retries for seconds; 5 s leaves room for a CI machine whose two cores the
        // flood's sender and the director share with other jobs.
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            session.send(b"hello").unwrap();
            bytes.sent += 5;
            if let Ok(Some(n)) = session.recv_timeout(&mut buf, Duration::from_millis(50)) {
                bytes.received += n as u64;
                ok += 1;
                break;
            }
            let _ = session.tick();
        }
        if Instant::now() >= deadline {
            println!(
                "newcomer {tried}: no echo within 5 s ({:?})",
                session.stats()
            );
        }
        // Late answers to the repeated hellos still count as received.
        while let Ok(Some(n)) = session.recv_timeout(&mut buf, Duration::from_millis(5)) {
            bytes.received += n as u64;
        }
        pacer.tick();
    }
    ((tried, ok), bytes)
}

struct Report {
    flooded: usize,
    during: (u64, u64),
    after: (u64, u64),
    live: (u64, u64),
    held: f64,
    /// What the live player and the newcomers sent and received.
    legit: Bytes,
    /// How long the flood took.
    seconds: f64,
}

/// The tokens a forger may use: one it asked for itself, and the live player's (captured).
struct Tokens {
    attacker: String,
    live: String,
}

/// Runs one flood against a fresh director on `extra` whose game server answers each
/// datagram with `prefix` and the datagram; `payload(tokens, i)` / `source(i)` make the
/// forged datagrams.
async fn flood(
    extra: &str,
    spread: bool,
    prefix: &[u8],
    count: usize,
    rate: u64,
    source: impl FnMut(usize) -> SocketAddrV4 + Send + 'static,
    payload: impl Fn(&Tokens, usize) -> Vec<u8> + Send + 'static,
) -> (Report, udp_director::app::Running) {
    let _alone = ONE_AT_A_TIME.lock().await;
    let echo = EchoServer::start("127.0.0.1:0".parse().unwrap(), prefix).unwrap();
    let yaml = testkit::yaml::director(
        &format!("limits: {{queryRatePerSecond: 100000, queryBurst: 100000}}\n{extra}"),
        &[testkit::yaml::echo_mapping(&[echo.addr])],
    );
    let d = start(ValidConfig::from_yaml(&yaml).unwrap()).await;
    let (query, data) = (d.query_addr, d.data_addr);
    let report = tokio::task::spawn_blocking(move || {
        let _echo = echo;
        let mut forger = Forger::new().expect("raw sockets (CAP_NET_RAW) on this machine");
        let live_grant = Query::new("echo").send(query).unwrap();
        let tokens = Tokens {
            attacker: Query::new("echo").send(query).unwrap().token,
            live: live_grant.token.clone(),
        };
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let live = {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || live_player(data, live_grant, stop, ready_tx))
        };
        // The live player holds its session before the flood starts (or gave up warming up).
        let _ = ready_rx.recv_timeout(Duration::from_secs(6));
        let flooding = Arc::new(AtomicBool::new(true));
        let during = {
            let flooding = Arc::clone(&flooding);
            std::thread::spawn(move || newcomers(query, data, &flooding, 10, spread))
        };
        let started = Instant::now();
        let flooded = forger
            .flood(v4(data), count, rate, source, |i| payload(&tokens, i))
            .unwrap();
        let seconds = started.elapsed().as_secs_f64();
        flooding.store(false, Ordering::Relaxed);
        let during = during.join().unwrap();
        let after = newcomers(query, data, &AtomicBool::new(false), 10, spread);
        stop.store(true, Ordering::Relaxed);
        let live = live.join().unwrap();
        (flooded, during, after, live, seconds)
    })
    .await
    .unwrap();
    let admin = d.admin_addr;
    let (flooded, (during, during_bytes), (after, after_bytes), (live, live_bytes), seconds) =
        report;
    // Sessions besides the live player's and the newcomers' (each newcomer holds one).
    let legit = 1.0 + (during.1 + after.1) as f64;
    eventually(Duration::from_secs(2), || {
        metric(admin, "udp_director_sessions_active") >= legit
    });
    let held = metric(admin, "udp_director_sessions_active") - legit;
    let all = [during_bytes, after_bytes, live_bytes];
    (
        Report {
            flooded,
            during,
            after,
            live,
            held,
            legit: Bytes {
                sent: all.iter().map(|b| b.sent).sum(),
                received: all.iter().map(|b| b.received).sum(),
            },
            seconds,
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

/// Challenges sent, and refused over budget, so far.
fn challenges(admin: SocketAddr) -> (f64, f64) {
    (
        metric(
            admin,
            "udp_director_path_challenges_total{outcome=\"sent\"}",
        ),
        metric(
            admin,
            "udp_director_path_challenges_total{outcome=\"over_budget\"}",
        ),
    )
}

async fn replayed_token_opens_nothing(binding: &str) {
    // With unbound tokens every newcomer proves its address; each comes from its own (one
    // IP is sent 10 challenges a second at most).
    let spread = !binding.is_empty();
    let (r, d) = flood(binding, spread, b"", FLOOD, RATE, forged_source, |t, _| {
        t.attacker.as_bytes().to_vec()
    })
    .await;
    check(&format!("replayed token ({binding:?})"), &r);
    assert!(
        r.held <= 0.0,
        "the forged addresses hold no session: {}",
        r.held
    );
    let (sent, over) = challenges(d.admin_addr);
    println!(
        "replayed token ({binding:?}): {sent} challenges sent, {over} over budget, in {:.1} s",
        r.seconds
    );
    assert!(
        sent + over >= FLOOD as f64 * 0.9,
        "each replay was challenged or refused over budget: {sent} + {over}"
    );
    if binding.is_empty() {
        // Bound tokens from their own IP open at once: no proof was needed, none completed.
        assert_eq!(
            metric(
                d.admin_addr,
                "udp_director_path_challenges_total{outcome=\"proved\"}"
            ),
            0.0,
            "no forged address proved anything"
        );
    }
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_replayed_from_fifty_thousand_forged_addresses_opens_nothing() {
    replayed_token_opens_nothing("").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unbound_token_replayed_from_fifty_thousand_forged_addresses_opens_nothing() {
    replayed_token_opens_nothing("tokenClientBinding: none\n").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_token_sprayed_from_fifty_thousand_ports_of_its_ip_stays_where_it_is() {
    // Ports below the ephemeral range, so no real client's address is forged (a forger who
    // can send from a player's exact address and port can speak for that player anyway).
    let source = |i: usize| SocketAddrV4::new([127, 0, 0, 1].into(), 1_024 + (i % 30_000) as u16);
    let (r, d) = flood("", false, b"", FLOOD, RATE, source, |t, i| {
        if i % 2 == 0 {
            t.live.as_bytes().to_vec()
        } else {
            [b"\xff\xff\xff\xffRESET".as_slice(), t.live.as_bytes()].concat()
        }
    })
    .await;
    check("live token sprayed from its IP", &r);
    let admin = d.admin_addr;
    assert!(r.held <= 0.0, "the spray holds no session: {}", r.held);
    let moved = metric(admin, "udp_director_sessions_moved_total");
    let displaced = metric(
        admin,
        "udp_director_sessions_closed_total{reason=\"moved\"}",
    );
    assert_eq!(
        (moved, displaced),
        (0.0, 0.0),
        "the sprayed session stayed where it was"
    );
    let (sent, over) = challenges(admin);
    let per_second = sent / r.seconds;
    println!(
        "live token sprayed from its IP: {sent} challenges to 127.0.0.1 in {:.1} s ({per_second:.1}/s), {over} over budget",
        r.seconds
    );
    // 10 a second, fixed one-second windows: at most one window more than the seconds.
    assert!(
        sent <= 10.0 * (r.seconds.ceil() + 1.0),
        "at most 10 challenges a second to the sprayed IP: {sent} in {:.1} s",
        r.seconds
    );
    assert!(
        over >= FLOOD as f64 * 0.9,
        "the rest refused over budget: {over}"
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
    // The game server answers 100 bytes more than each datagram: a reflector, were the
    // director to pass it on.
    let prefix = [b'r'; 100];
    // 12 500 at 2 500/s against maxSessions 10 000: every forged datagram here opens a
    // session and an upstream socket and the game server answers each one, so the table
    // fills and every token newcomer after that takes a default-endpoint session's place.
    let (r, d) = flood(
        "defaultEndpoint: {resourceType: echo}\nmaxSessions: 10000\n",
        false,
        &prefix,
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
    // Every byte the director passed either way that the legitimate clients did not send or
    // receive was the forged sources'.
    let to_target = metric(
        admin,
        "udp_director_datagram_bytes_total{direction=\"client_to_target\"}",
    );
    let to_client = metric(
        admin,
        "udp_director_datagram_bytes_total{direction=\"target_to_client\"}",
    );
    let from_forged = to_target - r.legit.sent as f64;
    let to_forged = to_client - r.legit.received as f64;
    let limited = metric(
        admin,
        "udp_director_datagrams_dropped_total{reason=\"amplification_limit\"}",
    );
    println!(
        "default-endpoint flood: {per_ip} refused by the per-IP cap, {yielded} default-endpoint sessions yielded to token newcomers; forged sources sent {from_forged} bytes and were sent {to_forged} ({:.2} ×), {limited} replies dropped by the amplification limit",
        to_forged / from_forged.max(1.0)
    );
    assert!(r.held > 9_000.0, "the flood filled the table: {}", r.held);
    assert!(
        yielded >= 1.0,
        "token newcomers took default-endpoint sessions' places"
    );
    assert!(
        from_forged >= 100_000.0,
        "the forged datagrams were passed to the game server: {from_forged} bytes"
    );
    assert!(
        to_forged <= 3.0 * from_forged,
        "at most 3 × the bytes the forged sources sent: {to_forged} for {from_forged}"
    );
    assert!(
        limited >= 1_000.0,
        "replies past 3 × were dropped: {limited}"
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
