//! Micro-benchmarks of the token formats (no sockets): issuing and redeeming a `uuid` token
//! through the in-memory store, and sealing and opening a `sealed` token (AES-256-GCM through
//! ring, base64url), as the query server and the data plane call them. First it prints the
//! resident memory 100 000 outstanding uuid tokens add (sealed tokens add none).
//!
//!     cargo bench --bench tokens

use std::hint::black_box;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use tokio::time::Instant;
use udp_director::model::{ClientBinding, Policy, Target, Use};
use udp_director::token::{KeySet, SealedTokens, TokenStore, WallClock};

const KEYS: &str = "bench AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n";

/// Resident set size of this process, KiB.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

fn bench(c: &mut Criterion) {
    let now = Instant::now();
    {
        let store = TokenStore::new(1_000_000);
        let target = Arc::new(Target::new("m", "n", "x", ([10, 0, 0, 1], 7654).into()));
        let policy = Policy {
            ttl: Duration::from_secs(30),
            resume: Duration::from_secs(30),
            single_use: false,
            binding: ClientBinding::Ip,
        };
        let client = IpAddr::from([203, 0, 113, 7]);
        let before = rss_kib();
        for _ in 0..100_000 {
            store.issue(Arc::clone(&target), client, now, policy);
        }
        println!(
            "uuid store: {} B of RSS per outstanding token (100 000 tokens)",
            (rss_kib().saturating_sub(before)) * 1024 / 100_000
        );
    }
    let client: IpAddr = "203.0.113.7"
        .parse()
        .unwrap_or(IpAddr::from([127, 0, 0, 1]));
    let target = Arc::new(Target::new(
        "gameserver",
        "game-servers",
        "simple-game-server-7x2k-abcde",
        "10.1.2.3:7654"
            .parse()
            .unwrap_or_else(|_| ([127, 0, 0, 1], 7654).into()),
    ));
    let policy = Policy {
        ttl: Duration::from_secs(30),
        resume: Duration::from_secs(600),
        single_use: false,
        binding: ClientBinding::Ip,
    };
    let Ok(keys) = KeySet::parse(KEYS) else {
        return;
    };
    let sealed = SealedTokens::new(keys, WallClock::system(now), 1_000);
    c.bench_function("sealed/seal", |b| {
        b.iter(|| black_box(sealed.issue(&target, client, now, policy)))
    });
    let Ok(wire) = sealed.issue(&target, client, now, policy) else {
        return;
    };
    c.bench_function("sealed/open", |b| {
        b.iter(|| black_box(sealed.open(black_box(wire.as_bytes()), client, Use::Open, now)))
    });
    let store = TokenStore::new(2_000_000);
    c.bench_function("uuid/issue", |b| {
        b.iter(|| black_box(store.issue(Arc::clone(&target), client, now, policy)))
    });
    let id = store
        .issue(Arc::clone(&target), client, now, policy)
        .to_wire();
    c.bench_function("uuid/redeem", |b| {
        b.iter(|| black_box(store.redeem_wire(black_box(id.as_bytes()), client, now)))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
