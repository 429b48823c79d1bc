//! Micro-benchmarks of the per-datagram decisions (no sockets): the session lookup and
//! touch on the client→target path, the reply-path lookup, and datagram classification.
//!
//!     cargo bench --bench datapath

use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use tokio::time::Instant;
use udp_director::protocol::datagram::classify;
use udp_director::resolve::Target;
use udp_director::session::{Connected, Ledger, SessionTable};

const MAGIC: &[u8] = b"\xff\xff\xff\xffRESET";

fn table(sessions: u32, targets: u16) -> (SessionTable, Vec<SocketAddr>, Vec<(u32, SocketAddr)>) {
    let mut t = SessionTable::new(Duration::from_secs(300));
    let ledger = Ledger::new(usize::MAX);
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
        if let Ok(Connected::New { binding, .. }) =
            t.connect(client, Arc::clone(&target), now, &ledger)
        {
            replies.push((binding.socket.index, target.addr));
        }
        clients.push(client);
    }
    (t, clients, replies)
}

fn bench(c: &mut Criterion) {
    let now = Instant::now();
    for sessions in [1_000u32, 100_000] {
        let (mut t, clients, replies) = table(sessions, 100);
        let mut i = 0usize;
        c.bench_function(&format!("client_to_target/{sessions}"), |b| {
            b.iter(|| {
                i = (i + 7919) % clients.len();
                let id = t.lookup(black_box(&clients[i])).unwrap();
                black_box(t.forward_from_client(id, 512, now))
            })
        });
        let mut j = 0usize;
        c.bench_function(&format!("target_to_client/{sessions}"), |b| {
            b.iter(|| {
                j = (j + 7919) % replies.len();
                let (index, from) = replies[j];
                let socket = udp_director::session::SocketId { v6: false, index };
                black_box(t.forward_from_target(socket, black_box(&from), 512, now))
            })
        });
    }
    let game = vec![0x42u8; 512];
    c.bench_function("classify/game_512B", |b| {
        b.iter(|| classify(black_box(&game), MAGIC))
    });
    let token = b"550e8400-e29b-41d4-a716-446655440000";
    c.bench_function("classify/token", |b| {
        b.iter(|| classify(black_box(token), MAGIC))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
