//! Proof of address (SPEC §3 "Proof of address") end to end on the real binary: two processes
//! in one SO_REUSEPORT group with sealed tokens from one key file, standing in for replicas
//! behind a load balancer (the kernel hashes each client address to one of them, so a player
//! that changes address may land on the other).
//!
//! - a player queries from 127.0.0.1 and plays, then continues from 127.0.0.2 (a phone moving
//!   from Wi-Fi to cellular) with `[magic][token]`: challenged, answered, playing again within
//!   1 s with no new query; a forger on 127.0.0.3 replaying the player's datagrams (the resume
//!   and the RESPONSE) moves nothing;
//! - 50 such handovers through the client library's `Session::rebind` (each to an address of
//!   its own), timed;
//! - while one player's token is sprayed from 50 000 forged addresses, another player's
//!   handover is not delayed, the sprayed player's completes, and no forged address holds a
//!   session;
//! - PING is answered with a PONG no larger, at most 10 a second to one IP.

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use base64::Engine;
use testkit::forge::{Forger, forged_source};
use testkit::{ChildDirector, EchoServer, TempDir, eventually, yaml};
use tokio::time::Instant;
use udp_director_client::{Query, Session};

const BIN: &str = env!("CARGO_BIN_EXE_udp-director");
const MAGIC: &[u8] = b"\xff\xff\xff\xffRESET";

/// Two replicas on one key file and one set of ports, in front of one echo server.
struct Replicas {
    procs: Vec<ChildDirector>,
    _echo: EchoServer,
    _keys: TempDir,
}

impl Replicas {
    fn start() -> Self {
        let echo = EchoServer::start("127.0.0.1:0".parse().unwrap(), b"").unwrap();
        let keys = TempDir::new("keys").unwrap();
        let key_file = keys.path.join("token-keys");
        std::fs::write(
            &key_file,
            format!(
                "k1 {}\n",
                base64::engine::general_purpose::STANDARD.encode([9u8; 32])
            ),
        )
        .unwrap();
        let yaml = yaml::director(
            &format!(
                "reusePort: true\ntokenFormat: sealed\ntokenKeysFile: \"{}\"\naccessLog: false\n\
                 limits: {{queryRatePerSecond: 10000, queryBurst: 10000}}\n",
                key_file.display()
            ),
            &[yaml::echo_mapping(&[echo.addr])],
        );
        let first =
            ChildDirector::spawn_yaml(Path::new(BIN), TempDir::new("p0").unwrap(), &yaml, &[])
                .unwrap();
        let (q, d) = (
            first.query.port().to_string(),
            first.data.port().to_string(),
        );
        let second = ChildDirector::spawn_yaml(
            Path::new(BIN),
            TempDir::new("p1").unwrap(),
            &yaml,
            &[
                "--query-port".as_ref(),
                q.as_ref(),
                "--data-port".as_ref(),
                d.as_ref(),
            ],
        )
        .unwrap();
        Self {
            procs: vec![first, second],
            _echo: echo,
            _keys: keys,
        }
    }

    fn query(&self) -> SocketAddr {
        self.procs[0].query
    }

    fn data(&self) -> SocketAddr {
        self.procs[0].data
    }

    /// A series summed over both processes.
    fn sum(&self, series: &str) -> f64 {
        self.procs.iter().map(|p| p.metric(series)).sum()
    }
}

fn bound(ip: &str) -> UdpSocket {
    let socket = UdpSocket::bind((ip.parse::<std::net::IpAddr>().unwrap(), 0)).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();
    socket
}

/// Sends `payload` from `socket` every 20 ms until the echo comes back; the time it took.
fn plays(
    socket: &UdpSocket,
    data: SocketAddr,
    payload: &[u8],
    within: Duration,
) -> Option<Duration> {
    let start = Instant::now();
    let mut buf = [0u8; 256];
    while start.elapsed() < within {
        socket.send_to(payload, data).unwrap();
        while let Ok(n) = socket.recv(&mut buf) {
            if &buf[..n] == payload {
                return Some(start.elapsed());
            }
        }
    }
    None
}

/// Waits for a CHALLENGE on `socket`; its nonce.
fn challenge(socket: &UdpSocket) -> Option<[u8; 16]> {
    let mut buf = [0u8; 256];
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        if let Ok(n) = socket.recv(&mut buf)
            && let Some(nonce) = testkit::client::challenge_nonce(&buf[..n])
        {
            return Some(nonce);
        }
    }
    None
}

#[test]
fn a_player_moving_to_another_address_plays_on_after_proving_it_and_a_forger_moves_nothing() {
    let r = Replicas::start();
    let data = r.data();
    let grant = Query::new("echo").send(r.query()).unwrap();
    let token = grant.token.as_bytes();
    let resume = [MAGIC, token].concat();

    let wifi = bound("127.0.0.1");
    wifi.send_to(token, data).unwrap();
    assert!(plays(&wifi, data, b"on wifi", Duration::from_secs(3)).is_some());

    // The phone moves to cellular: another IP than the token is bound to.
    let cell = bound("127.0.0.2");
    let forger = bound("127.0.0.3");
    let moved = Instant::now();
    cell.send_to(&resume, data).unwrap();
    let nonce = challenge(&cell).expect("the new address is challenged");
    let response = testkit::client::response(&nonce, token);
    // A forger with the token, replaying what the player sent from its own address: the
    // resume gets it a challenge of its own, which it does not answer; the replayed
    // RESPONSE is for another address.
    forger.send_to(&resume, data).unwrap();
    forger.send_to(&response, data).unwrap();
    cell.send_to(&response, data).unwrap();
    let playing = plays(&cell, data, b"on cellular", Duration::from_secs(3))
        .map(|_| moved.elapsed())
        .expect("plays again from the new address");
    println!("handover by hand: playing again {playing:?} after the resume left");
    assert!(playing < Duration::from_secs(1), "{playing:?}");
    assert!(
        plays(&forger, data, b"forged", Duration::from_millis(300)).is_none(),
        "the forger has no session"
    );
    assert!(eventually(Duration::from_secs(2), || {
        r.sum("udp_director_path_challenges_total{outcome=\"proved\"}") == 1.0
            && r.sum("udp_director_path_challenges_total{outcome=\"bad_response\"}") >= 1.0
    }));
    assert_eq!(
        r.sum("udp_director_tokens_issued_total"),
        1.0,
        "no new query"
    );
}

#[test]
fn fifty_handovers_through_the_client_library_each_play_on_within_a_second() {
    let r = Replicas::start();
    let data = r.data();
    let mut times = Vec::new();
    for i in 0..50u32 {
        let grant = Query::new("echo").send(r.query()).unwrap();
        let mut session = Session::open(data, &grant).unwrap();
        let payload = i.to_be_bytes();
        assert!(hears(&mut session, &payload, Duration::from_secs(3)).is_some());
        // Each from an address of its own: one address is sent 10 challenges a second.
        session
            .rebind(bound(&format!("127.0.1.{}", 10 + i)))
            .unwrap();
        let took = hears(&mut session, &payload, Duration::from_secs(3))
            .unwrap_or_else(|| panic!("handover {i} plays on"));
        times.push(took);
    }
    times.sort();
    let (median, p99) = (times[times.len() / 2], times[times.len() * 99 / 100]);
    // Counters are published every 100 ms.
    assert!(eventually(Duration::from_secs(2), || r
        .sum("udp_director_path_challenges_total{outcome=\"proved\"}")
        >= 50.0));
    println!(
        "50 handovers (127.0.0.1 -> 127.0.1.x, two replicas): median {median:?}, p99 {p99:?}, max {:?}; {} proofs completed",
        times.last().unwrap(),
        r.sum("udp_director_path_challenges_total{outcome=\"proved\"}")
    );
    assert!(p99 < Duration::from_secs(1), "{times:?}");
    assert_eq!(r.sum("udp_director_tokens_issued_total"), 50.0);
}

/// Sends `payload` every 10 ms through `session` until it comes back; how long that took.
fn hears(session: &mut Session, payload: &[u8], within: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut buf = [0u8; 256];
    while start.elapsed() < within {
        session.send(payload).unwrap();
        if let Some(n) = session
            .recv_timeout(&mut buf, Duration::from_millis(10))
            .unwrap()
            && &buf[..n] == payload
        {
            return Some(start.elapsed());
        }
        session.tick().unwrap();
    }
    None
}

#[test]
fn a_sprayed_token_cannot_delay_other_players_handovers_and_its_own_completes() {
    let r = Replicas::start();
    let data = r.data();
    let sprayed = Query::new("echo").send(r.query()).unwrap();
    let other = Query::new("echo").send(r.query()).unwrap();
    let mut victim = Session::open(data, &sprayed).unwrap();
    let mut bystander = Session::open(data, &other).unwrap();
    assert!(hears(&mut victim, b"victim", Duration::from_secs(3)).is_some());
    assert!(hears(&mut bystander, b"bystander", Duration::from_secs(3)).is_some());

    // 50 000 forged addresses (one datagram from each) at 10 000/s, all with the victim's
    // token behind the magic.
    let spraying = Arc::new(AtomicBool::new(true));
    let spray = {
        let (token, spraying) = (sprayed.token.clone(), Arc::clone(&spraying));
        let to = match data {
            SocketAddr::V4(a) => a,
            SocketAddr::V6(_) => unreachable!("loopback IPv4"),
        };
        std::thread::spawn(move || {
            let mut forger = Forger::new().expect("raw sockets (CAP_NET_RAW) on this machine");
            let payload = [MAGIC, token.as_bytes()].concat();
            let started = Instant::now();
            let n = forger
                .flood(to, 50_000, 10_000, forged_source, |_| payload.clone())
                .unwrap();
            spraying.store(false, Ordering::Relaxed);
            (n, started.elapsed())
        })
    };
    // The spray is under way once the replicas refuse its challenges over budget.
    assert!(eventually(Duration::from_secs(3), || r.sum(
        "udp_director_path_challenges_total{outcome=\"over_budget\"}"
    ) >= 100.0));
    assert!(spraying.load(Ordering::Relaxed), "the spray is still on");
    // Another player changes address mid-spray: not delayed.
    bystander.rebind(bound("127.0.0.4")).unwrap();
    let bystander_took = hears(&mut bystander, b"bystander", Duration::from_secs(3))
        .expect("the bystander plays on");
    let bystander_during = spraying.load(Ordering::Relaxed);
    // The sprayed player changes address too: it completes (at the latest once the spray's
    // share of the token's challenge budget is no longer all taken).
    victim.rebind(bound("127.0.0.5")).unwrap();
    let victim_took =
        hears(&mut victim, b"victim", Duration::from_secs(15)).expect("the victim plays on");
    let (sprayed_n, spray_time) = spray.join().unwrap();
    println!(
        "{sprayed_n} forged resumes in {spray_time:?}: a bystander's handover took {bystander_took:?} (during the spray: {bystander_during}), the sprayed player's {victim_took:?}"
    );
    assert!(
        bystander_during,
        "the bystander's handover ran during the spray"
    );
    assert!(
        bystander_took < Duration::from_secs(1),
        "{bystander_took:?}"
    );
    // Only the two players hold sessions (a moved session's old replica may keep its copy
    // until idle: at most two more).
    assert!(eventually(Duration::from_secs(2), || r
        .sum("udp_director_sessions_active")
        <= 4.0));
    assert!(
        r.sum("udp_director_path_challenges_total{outcome=\"sent\"}") <= 2.0 * 10.0 * 8.0,
        "the spray drew on its token's budget only"
    );
}

#[test]
fn pings_are_answered_with_a_pong_no_larger_at_most_ten_a_second_to_one_ip() {
    let r = Replicas::start();
    let data = r.data();
    let pinger = bound("127.0.0.6");
    let ping = [MAGIC, &[3], b"12345678", &[0u8; 16]].concat();
    let sent_at = Instant::now();
    for _ in 0..30 {
        pinger.send_to(&ping, data).unwrap();
    }
    let mut pongs = Vec::new();
    let mut buf = [0u8; 256];
    let until = Instant::now() + Duration::from_millis(500);
    while Instant::now() < until {
        if let Ok(n) = pinger.recv(&mut buf) {
            pongs.push(buf[..n].to_vec());
        }
    }
    let rtt = sent_at.elapsed();
    assert!(!pongs.is_empty(), "PINGs are answered");
    // One replica answers a flow (reusePort hashes it to one): 10 a second, within the
    // second the 30 were sent in (or 20 if it straddled two).
    assert!(pongs.len() <= 20, "{} PONGs", pongs.len());
    for pong in &pongs {
        assert!(
            pong.len() <= ping.len(),
            "a PONG is no larger than its PING"
        );
        assert_eq!(&pong[..MAGIC.len()], MAGIC);
        assert_eq!(pong[MAGIC.len()], 4);
        assert_eq!(&pong[MAGIC.len() + 1..MAGIC.len() + 9], b"12345678");
        let time = |at: usize| u64::from_be_bytes(pong[at..at + 8].try_into().unwrap());
        let (received, sent) = (time(MAGIC.len() + 9), time(MAGIC.len() + 17));
        assert!(received <= sent, "sent after it was received");
        assert!(
            Duration::from_nanos(sent - received) < rtt,
            "held no longer than the round trip"
        );
    }
    // A shorter PING is dropped.
    pinger.send_to(&ping[..ping.len() - 1], data).unwrap();
    assert!(eventually(Duration::from_secs(2), || {
        r.sum("udp_director_pings_total{outcome=\"short\"}") == 1.0
            && r.sum("udp_director_pings_total{outcome=\"answered\"}") == pongs.len() as f64
    }));
}
