//! Micro-benchmarks of the per-datagram decisions (no sockets): the table's whole decision
//! for a client datagram of a live session (classify, lookup, touch) and for a reply from a
//! target, and datagram classification alone.
//!
//!     cargo bench --bench datapath

use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use tokio::time::Instant;
use udp_director::model::{Target, TokenFormat};
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

criterion_group!(benches, bench);
criterion_main!(benches);
