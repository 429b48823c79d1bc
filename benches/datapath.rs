//! Micro-benchmarks of the per-datagram decisions (no sockets): the table's whole decision
//! for a client datagram of a live session (classify, lookup, touch) and for a reply from a
//! target, datagram classification alone, and proof of address: a token that needs proof
//! (the CHALLENGE decision), a whole handover (challenge, then the RESPONSE that moves the
//! session), and a PING.
//!
//!     cargo bench --bench datapath

use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use tokio::time::Instant;
use udp_director::model::{ClientBinding, Policy, Target, TokenFormat};
use udp_director::protocol::datagram::classify;
use udp_director::session::{Ledger, Rules, SessionTable};
use udp_director::token::TokenStore;

const MAGIC: &[u8] = b"\xff\xff\xff\xffRESET";

fn table(sessions: u32, targets: u16) -> (SessionTable, Vec<SocketAddr>, Vec<(u32, SocketAddr)>) {
    let rules = Rules {
        magic: MAGIC.to_vec(),
        format: TokenFormat::Uuid,
        session_timeout: Duration::from_secs(300),
        max_sessions: usize::MAX,
        max_per_client_ip: usize::MAX,
        unanswered_timeout: Duration::from_secs(5),
        default_route: None,
        known: Arc::new(udp_director::model::KnownTargets::everywhere()),
        proofs: Arc::new(udp_director::session::Proofs::new(
            b"a test secret, thirty-two bytes.",
            Instant::now(),
            2_000,
            5_000,
        )),
        amplification: 3,
    };
    let mut t = SessionTable::new(rules, Arc::new(Ledger::new()));
    let now = Instant::now();
    let targets: Vec<Arc<Target>> = (0..targets)
        .map(|i| {
            Arc::new(Target::new(
                "b",
                "ns",
                &format!("t{i}"),
                SocketAddr::from(([10, 0, 0, 1], 7000 + i)),
            ))
        })
        .collect();
    let mut clients = Vec::new();
    let mut replies = Vec::new();
    for i in 0..sessions {
        let client = SocketAddr::from(([127, 0, (i >> 16) as u8, (i >> 8) as u8], i as u16));
        let target = Arc::clone(&targets[i as usize % targets.len()]);
        if let Some((_, _, socket)) = t
            .open(client, Arc::clone(&target), now)
            .ok()
            .and_then(|id| t.describe(id))
        {
            replies.push((socket.index, target.addr));
        }
        clients.push(client);
    }
    t.take_outputs(&mut Vec::new());
    (t, clients, replies)
}

fn bench(c: &mut Criterion) {
    let now = Instant::now();
    let tokens = TokenStore::new(1_000);
    let payload = vec![0x42u8; 512];
    for sessions in [1_000u32, 100_000] {
        let (mut t, clients, replies) = table(sessions, 100);
        // As the shell does it: judge, then drain the output queue.
        let mut out = Vec::with_capacity(64);
        let mut i = 0usize;
        c.bench_function(&format!("client_to_target/{sessions}"), |b| {
            b.iter(|| {
                i = (i + 7919) % clients.len();
                t.on_client_datagram(0, black_box(clients[i]), black_box(&payload), now, &tokens);
                t.take_outputs(&mut out);
                black_box(&out);
                out.clear();
            })
        });
        let mut j = 0usize;
        c.bench_function(&format!("target_to_client/{sessions}"), |b| {
            b.iter(|| {
                j = (j + 7919) % replies.len();
                let (index, from) = replies[j];
                let socket = udp_director::session::SocketId { v6: false, index };
                t.on_target_datagram(0, socket, black_box(from), 512, now);
                t.take_outputs(&mut out);
                black_box(&out);
                out.clear();
            })
        });
    }
    let game = vec![0x42u8; 512];
    c.bench_function("classify/game_512B", |b| {
        b.iter(|| classify(black_box(&game), MAGIC, TokenFormat::Uuid))
    });
    let token = b"550e8400-e29b-41d4-a716-446655440000";
    c.bench_function("classify/token", |b| {
        b.iter(|| classify(black_box(token), MAGIC, TokenFormat::Uuid))
    });
}

/// Proof-of-address decisions. The clock moves a second per iteration so the budgets (10 a
/// second per client network) never refuse: what is measured is the decision that sends
/// (checked once before each measurement). It wraps after 10^6 s, inside the token's TTL.
fn proofs(c: &mut Criterion) {
    let (mut t, _, _) = table(1_000, 10);
    let tokens = TokenStore::new(1_000);
    let start = Instant::now();
    let policy = Policy {
        ttl: Duration::from_secs(30 * 24 * 3600),
        resume: Duration::from_secs(30 * 24 * 3600),
        single_use: false,
        binding: ClientBinding::Ip,
    };
    let target = Arc::new(Target::new(
        "b",
        "ns",
        "t0",
        SocketAddr::from(([10, 0, 0, 1], 7000)),
    ));
    let home = SocketAddr::from(([127, 9, 0, 1], 40_000));
    let wire = tokens.issue(target, home.ip(), start, policy).to_wire();
    let token = wire.as_bytes();
    let mut out = Vec::with_capacity(64);
    t.on_client_datagram(0, home, token, start, &tokens);
    t.take_outputs(&mut out);
    out.clear();
    let nonce_of = |out: &[udp_director::session::Output]| {
        out.iter().find_map(|o| match o {
            udp_director::session::Output::Datagram {
                decision: udp_director::session::Decision::Challenge { nonce, .. },
                ..
            } => Some(*nonce),
            _ => None,
        })
    };
    let verdict = |out: &[udp_director::session::Output]| {
        out.iter()
            .rev()
            .find_map(|o| match o {
                udp_director::session::Output::Datagram { decision, .. } => Some(decision.clone()),
                _ => None,
            })
            .expect("a verdict")
    };
    let at = |second: u64| start + Duration::from_secs(1 + second % 1_000_000);
    // The token from another port of its IP: the session lives at `home`, so it is challenged.
    let mut second = 0u64;
    let other = SocketAddr::from(([127, 9, 0, 1], 1_023));
    t.on_client_datagram(0, other, token, at(0), &tokens);
    t.take_outputs(&mut out);
    assert!(matches!(
        verdict(&out),
        udp_director::session::Decision::Challenge { .. }
    ));
    out.clear();
    c.bench_function("proof/challenge", |b| {
        b.iter(|| {
            second += 1;
            let now = at(second);
            let port = 1_024 + (second % 30_000) as u16;
            let from = SocketAddr::from(([127, 9, 0, 1], port));
            t.on_client_datagram(0, black_box(from), black_box(token), now, &tokens);
            t.take_outputs(&mut out);
            black_box(&out);
            out.clear();
        })
    });
    // A whole handover between two addresses: the token from the other one (challenged),
    // then its RESPONSE (the session moves there).
    let magic = MAGIC;
    let mut addrs = [home, SocketAddr::from(([127, 9, 0, 1], 50_000))];
    let mut handover = |second: u64, at_: &mut [SocketAddr; 2], out: &mut Vec<_>| {
        let now = at(second);
        let to = at_[1];
        t.on_client_datagram(0, to, token, now, &tokens);
        t.take_outputs(out);
        let nonce = nonce_of(out).unwrap_or_default();
        out.clear();
        let response = [magic, &[2], &nonce, token].concat();
        t.on_client_datagram(0, to, black_box(&response), now, &tokens);
        t.take_outputs(out);
        at_.swap(0, 1);
    };
    second += 1;
    handover(second, &mut addrs, &mut out);
    assert!(matches!(
        verdict(&out),
        udp_director::session::Decision::Moved { .. }
    ));
    out.clear();
    c.bench_function("proof/handover", |b| {
        b.iter(|| {
            second += 1;
            handover(second, &mut addrs, &mut out);
            black_box(&out);
            out.clear();
        })
    });
    let ping = [MAGIC, &[3], b"abcdefgh", &[0u8; 16]].concat();
    t.on_client_datagram(0, other, &ping, at(second), &tokens);
    t.take_outputs(&mut out);
    assert!(matches!(
        verdict(&out),
        udp_director::session::Decision::Pong { .. }
    ));
    out.clear();
    c.bench_function("proof/ping", |b| {
        b.iter(|| {
            second += 1;
            let now = at(second);
            let from = SocketAddr::from(([127, 10, 0, 1], 1_024 + (second % 30_000) as u16));
            t.on_client_datagram(0, black_box(from), black_box(&ping), now, &tokens);
            t.take_outputs(&mut out);
            black_box(&out);
            out.clear();
        })
    });
}

criterion_group!(benches, bench, proofs);
criterion_main!(benches);
