//! What the sans-IO core costs per datagram and per timer, on the paths a game hits every
//! frame: game data from the director, a PONG, the resume rule firing and its datagram
//! written. `cargo bench -p udp-director-client --bench core`.

use std::hint::black_box;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use udp_director_client::core::{Config, Core};
use udp_director_client::frames::{self, DEFAULT_MAGIC, MAX_CONTROL_LEN};

const TOKEN: &[u8] = b"550e8400-e29b-41d4-a716-446655440000";

fn bench(c: &mut Criterion) {
    let d: SocketAddr = "127.0.0.1:7777".parse().unwrap();
    let t0 = Instant::now();
    let mut buf = [0u8; MAX_CONTROL_LEN];
    let mut core = Core::new(&[d], TOKEN, Duration::from_secs(30), Config::default(), t0).unwrap();
    while core.poll_transmit(t0, &mut buf).is_some() {}
    let payload = [7u8; 512];
    c.bench_function("handle_datagram: 512 B of game data", |b| {
        b.iter(|| black_box(core.handle_datagram(t0, d, black_box(&payload))))
    });

    let mut pong = [0u8; MAX_CONTROL_LEN];
    let n = frames::write_pong(&mut pong, DEFAULT_MAGIC, &[1; 8], 1, 2);
    c.bench_function("handle_datagram: a PONG nobody asked for", |b| {
        b.iter(|| black_box(core.handle_datagram(t0, d, black_box(&pong[..n]))))
    });

    let mut now = t0;
    c.bench_function("handle_timeout + poll_transmit: one resume", |b| {
        b.iter(|| {
            now += Duration::from_millis(500);
            core.handle_timeout(now);
            black_box(core.poll_transmit(now, &mut buf))
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
