//! Micro-benchmarks of the token formats (no sockets): issuing and redeeming a `uuid` token
//! through the in-memory store, and sealing and opening a `sealed` token (AES-256-GCM through
//! ring, base64url), as the query server and the data plane call them. First it prints the
//! resident memory 100 000 outstanding uuid tokens add (sealed tokens add none).
//!
//! Tickets (SPEC §2 "Who may ask"): verifying one ticket per algorithm (EdDSA, ES256, RS256
//! 2048-bit, HS256; keys generated at start), and queries answered from a static mapping by a
//! director on loopback, 256 pipelined on one connection per iteration, without a ticket and
//! with an EdDSA one, in the same run.
//!
//!     cargo bench --bench tokens
//!     cargo bench --bench tokens -- 'ticket|query'   # the tickets' figures only

use std::hint::black_box;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use jsonwebtoken::Algorithm;
use tokio::time::Instant;
use udp_director::model::{ClientBinding, Policy, Target, Use};
use udp_director::token::mint::{Minter, jwks};
use udp_director::token::ticket::{TicketKeys, TicketRules, verify};
use udp_director::token::{KeySet, SealedTokens, TokenStore, WallClock};
use udp_director_client::{Queries, Query};

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

/// `(alg, ticket)` for every ticket algorithm, and the JWKS verifying them all.
fn tickets_of_every_algorithm() -> Option<(Vec<(String, String)>, TicketKeys)> {
    use rsa::pkcs1::EncodeRsaPrivateKey;
    let rsa = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).ok()?;
    let rsa_der = rsa.to_pkcs1_der().ok()?;
    let minters = [
        Minter::generate(Algorithm::EdDSA, "ed").ok()?,
        Minter::generate(Algorithm::ES256, "es").ok()?,
        Minter::rsa("rs", rsa_der.as_bytes()).ok()?,
        Minter::generate(Algorithm::HS256, "hs").ok()?,
    ];
    let claims =
        serde_json::json!({"sub": "player-1", "aud": "udp-director", "exp": unix_now() + 3600});
    let tickets = minters
        .iter()
        .map(|m| Some((format!("{:?}", m.alg), m.mint(&claims).ok()?)))
        .collect::<Option<Vec<_>>>()?;
    let keys = TicketKeys::parse(&jwks(&minters.iter().collect::<Vec<_>>())).ok()?;
    Some((tickets, keys))
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn tickets(c: &mut Criterion) {
    let Some((tickets, keys)) = tickets_of_every_algorithm() else {
        return;
    };
    let rules = TicketRules {
        audience: "udp-director".to_string(),
        issuer: None,
        leeway: 5,
    };
    let now = unix_now();
    for (alg, jwt) in &tickets {
        if verify(&keys, jwt, &rules, now).is_err() {
            return;
        }
        c.bench_function(&format!("ticket/verify/{alg}"), |b| {
            b.iter(|| black_box(verify(&keys, black_box(jwt), &rules, now)))
        });
    }
}

/// Queries per second from a static mapping, with and without a ticket, through a director on
/// loopback (its query server, parsing, authorization, resolution, token issue).
fn queries(c: &mut Criterion) {
    let Ok(runtime) = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    else {
        return;
    };
    let Ok(minter) = Minter::generate(Algorithm::EdDSA, "ed") else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("udp-director-bench-{}", std::process::id()));
    let jwks_path = dir.join("jwks.json");
    if std::fs::create_dir_all(&dir).is_err()
        || std::fs::write(&jwks_path, jwks(&[&minter])).is_err()
    {
        return;
    }
    let yaml = format!(
        "bindAddress: 127.0.0.1\nqueryPort: 0\ndataPort: 0\nadminPort: 0\ndataWorkers: 1\n\
         limits: {{queryRatePerSecond: 1000000, queryBurst: 1000000, queryConnectionLifetimeSeconds: 3600}}\n\
         queryAuth: {{jwksFile: {}, audience: udp-director}}\n\
         resourceQueryMapping:\n  open:\n    static: [{{name: a, address: 127.0.0.1, port: 9}}]\n  \
         game:\n    auth: ticket\n    static: [{{name: a, address: 127.0.0.1, port: 9}}]\n",
        jwks_path.display()
    );
    let Ok(config) = udp_director::config::ValidConfig::from_yaml(&yaml) else {
        return;
    };
    let Ok(director) = runtime.block_on(udp_director::app::start(config)) else {
        return;
    };
    let claims =
        serde_json::json!({"sub": "player-1", "aud": "udp-director", "exp": unix_now() + 3600});
    let Ok(ticket) = minter.mint(&claims) else {
        return;
    };
    const PIPELINED: usize = 256;
    let mut group = c.benchmark_group("query");
    group.throughput(criterion::Throughput::Elements(PIPELINED as u64));
    for (name, query) in [
        ("cache/plain", Query::new("open")),
        ("cache/ticket-EdDSA", Query::new("game").ticket(&ticket)),
    ] {
        let Ok(mut conn) = Queries::connect(director.query_addr) else {
            return;
        };
        if conn.ask(&query).is_err() {
            return;
        }
        group.bench_function(name, |b| {
            b.iter(|| black_box(conn.ask_many(&query, PIPELINED).map(|g| g.len())))
        });
    }
    group.finish();
    runtime.block_on(director.stop());
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, bench, tickets, queries);
criterion_main!(benches);
