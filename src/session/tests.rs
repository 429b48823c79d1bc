use super::*;
use proptest::prelude::*;

const TIMEOUT: Duration = Duration::from_secs(300);

fn target(port: u16) -> Arc<Target> {
    Arc::new(Target::new(
        "echo",
        "default",
        &format!("t{port}"),
        SocketAddr::from(([127, 0, 0, 1], port)),
    ))
}

fn client(port: u16) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, 1], port))
}

fn establish(t: &mut SessionTable, l: &Ledger, c: u16, tp: u16, now: Instant) -> SessionId {
    match t.connect(client(c), target(tp), now, l).unwrap() {
        Connected::New { id, .. } => id,
        other => panic!("expected a new session, got {other:?}"),
    }
}

#[test]
fn new_session_opens_a_socket_and_forwards_both_ways() {
    let (mut t, l, now) = (SessionTable::new(TIMEOUT), Ledger::new(10), Instant::now());
    let r = t.connect(client(1), target(9001), now, &l).unwrap();
    let Connected::New { id, binding } = r else {
        panic!()
    };
    assert!(binding.open_socket);
    assert_eq!(t.lookup(&client(1)), Some(id));
    let (sock, to) = t.forward_from_client(id, 10, now).unwrap();
    assert_eq!(to, target(9001).addr);
    assert_eq!(
        t.forward_from_target(sock, &target(9001).addr, 5, now),
        Some(client(1))
    );
    // A stranger on the same socket is not delivered.
    assert_eq!(
        t.forward_from_target(sock, &target(9009).addr, 5, now),
        None
    );
    assert_eq!(l.active(), 1);
    assert_eq!(l.sessions_to(&target(9001).addr), 1);
}

use crate::resolve::SessionCounts;

#[test]
fn sockets_are_shared_across_targets_never_within_one() {
    let (mut t, l, now) = (
        SessionTable::new(TIMEOUT),
        Ledger::new(1000),
        Instant::now(),
    );
    // 3 clients to target A, 3 clients to target B: 3 sockets, each carrying A and B once.
    let mut sockets = Vec::new();
    for c in 0..6u16 {
        let tp = if c % 2 == 0 { 9001 } else { 9002 };
        let r = t.connect(client(c), target(tp), now, &l).unwrap();
        let Connected::New { binding, .. } = r else {
            panic!()
        };
        sockets.push(binding);
    }
    assert_eq!(t.open_sockets(), 3);
    assert!(sockets[0].open_socket && !sockets[1].open_socket);
    assert_eq!(sockets[0].socket, sockets[1].socket);
    assert_ne!(sockets[0].socket, sockets[2].socket);
}

#[test]
fn reset_moves_the_session_and_releases_the_old_binding() {
    let (mut t, l, now) = (SessionTable::new(TIMEOUT), Ledger::new(10), Instant::now());
    let id = establish(&mut t, &l, 1, 9001, now);
    let (old_sock, _) = t.forward_from_client(id, 1, now).unwrap();
    let r = t.connect(client(1), target(9002), now, &l).unwrap();
    let Connected::Moved {
        binding, released, ..
    } = r
    else {
        panic!("{r:?}")
    };
    assert_eq!(released, Some(old_sock));
    assert!(binding.open_socket);
    // Old target can no longer reach the client; the new one can.
    assert_eq!(
        t.forward_from_target(old_sock, &target(9001).addr, 1, now),
        None
    );
    assert_eq!(
        t.forward_from_target(binding.socket, &target(9002).addr, 1, now),
        Some(client(1))
    );
    assert_eq!(l.sessions_to(&target(9001).addr), 0);
    assert_eq!(l.sessions_to(&target(9002).addr), 1);
    assert_eq!(l.active(), 1);
    // A retransmitted token for the same target changes nothing.
    assert!(matches!(
        t.connect(client(1), target(9002), now, &l).unwrap(),
        Connected::Unchanged { .. }
    ));
}

#[test]
fn cap_refuses_newcomers_not_existing_sessions() {
    let (mut t, l, now) = (SessionTable::new(TIMEOUT), Ledger::new(2), Instant::now());
    establish(&mut t, &l, 1, 9001, now);
    establish(&mut t, &l, 2, 9001, now);
    assert_eq!(
        t.connect(client(3), target(9001), now, &l).unwrap_err(),
        Refusal::Cap
    );
    // Existing sessions may still move.
    assert!(matches!(
        t.connect(client(1), target(9002), now, &l).unwrap(),
        Connected::Moved { .. }
    ));
}

#[test]
fn idle_sessions_expire_at_their_deadline_and_activity_defers_it() {
    let (mut t, l, t0) = (SessionTable::new(TIMEOUT), Ledger::new(10), Instant::now());
    let a = establish(&mut t, &l, 1, 9001, t0);
    establish(&mut t, &l, 2, 9001, t0);
    assert_eq!(t.poll_timeout(), Some(t0 + TIMEOUT));
    // Client 1 talks at t0+100s; client 2 stays silent.
    t.forward_from_client(a, 1, t0 + Duration::from_secs(100))
        .unwrap();
    let mut out = Vec::new();
    t.expire(t0 + TIMEOUT - Duration::from_millis(1), &l, &mut out);
    assert!(out.is_empty());
    t.expire(t0 + TIMEOUT, &l, &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].client, client(2));
    assert_eq!(out[0].reason, CloseReason::Idle);
    // The refreshed session's entry was re-armed at its real deadline.
    assert_eq!(t.poll_timeout(), Some(t0 + Duration::from_secs(400)));
    out.clear();
    t.expire(t0 + Duration::from_secs(400), &l, &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].released.map(|s| s.index), Some(0));
    assert!(t.is_empty());
    assert_eq!(l.active(), 0);
    assert_eq!(t.open_sockets(), 0);
}

#[test]
fn a_stale_deadline_never_closes_a_reused_slot() {
    let (mut t, l, t0) = (SessionTable::new(TIMEOUT), Ledger::new(10), Instant::now());
    let a = establish(&mut t, &l, 1, 9001, t0);
    t.close(a, CloseReason::UpstreamError, t0, &l).unwrap();
    // Slot reused 200 s later by a new session.
    let t1 = t0 + Duration::from_secs(200);
    let b = establish(&mut t, &l, 2, 9001, t1);
    assert_eq!(a, b);
    let mut out = Vec::new();
    t.expire(t0 + TIMEOUT, &l, &mut out); // the old entry comes due
    assert!(out.is_empty());
    assert_eq!(t.lookup(&client(2)), Some(b));
    t.expire(t1 + TIMEOUT, &l, &mut out);
    assert_eq!(out.len(), 1);
}

#[test]
fn new_timeout_applies_to_new_sessions_only() {
    let (mut t, l, t0) = (SessionTable::new(TIMEOUT), Ledger::new(10), Instant::now());
    establish(&mut t, &l, 1, 9001, t0);
    t.set_timeout(Duration::from_secs(5));
    establish(&mut t, &l, 2, 9001, t0);
    let mut out = Vec::new();
    t.expire(t0 + Duration::from_secs(5), &l, &mut out);
    assert_eq!(
        out.iter().map(|c| c.client).collect::<Vec<_>>(),
        [client(2)]
    );
}

#[test]
fn sample_is_bounded_and_reports_age_idle_and_counts() {
    let (mut t, l, t0) = (SessionTable::new(TIMEOUT), Ledger::new(100), Instant::now());
    for c in 0..10 {
        establish(&mut t, &l, c, 9001, t0);
    }
    let id = t.lookup(&client(3)).unwrap();
    let t1 = t0 + Duration::from_secs(4);
    t.forward_from_client(id, 100, t1);
    let now = t0 + Duration::from_secs(5);
    assert_eq!(t.sample(4, now).len(), 4);
    let all = t.sample(1_000, now);
    assert_eq!(all.len(), 10);
    let three = all.iter().find(|v| v.client == client(3)).unwrap();
    assert_eq!(three.age, Duration::from_secs(5));
    assert_eq!(three.idle, Duration::from_secs(1));
    assert_eq!(three.stats.bytes_to_target, 100);
    assert_eq!(three.target.addr.port(), 9001);
}

#[test]
fn an_emptied_table_gives_its_peak_memory_back_and_stays_usable() {
    let (mut t, l, t0) = (
        SessionTable::new(TIMEOUT),
        Ledger::new(10_000),
        Instant::now(),
    );
    let empty = t.capacity_hint();
    for c in 0..5_000u32 {
        let addr = SocketAddr::from(([10, (c >> 16) as u8, (c >> 8) as u8, c as u8], 5000));
        let target = Arc::new(Target::new(
            "e",
            "default",
            "a",
            "127.0.0.1:9001".parse().unwrap(),
        ));
        t.connect(addr, target, t0, &l).unwrap();
    }
    assert!(t.capacity_hint() > 100_000);
    let mut out = Vec::new();
    t.expire(t0 + TIMEOUT, &l, &mut out);
    assert_eq!(out.len(), 5_000);
    assert_eq!(t.capacity_hint(), empty, "peak memory released");
    t.check_invariants();
    establish(&mut t, &l, 1, 9001, t0 + TIMEOUT);
    assert_eq!(t.len(), 1);
    t.check_invariants();
}

#[test]
fn close_all_empties_everything() {
    let (mut t, l, t0) = (SessionTable::new(TIMEOUT), Ledger::new(100), Instant::now());
    for c in 0..20 {
        establish(&mut t, &l, c, 9000 + (c % 3), t0);
    }
    let mut out = Vec::new();
    t.close_all(CloseReason::Drained, t0, &l, &mut out);
    assert_eq!(out.len(), 20);
    assert!(t.is_empty());
    assert_eq!(t.open_sockets(), 0);
    assert_eq!(l.active(), 0);
    assert_eq!(l.targets(), 0);
    t.check_invariants();
}

#[derive(Debug, Clone)]
enum Op {
    Connect {
        client: u8,
        target: u8,
    },
    /// The query server issues a token for a target.
    Issue {
        target: u8,
    },
    /// A client's datagram carries the n-th issued token (valid, expired or unknown).
    Redeem {
        client: u8,
        token: u8,
    },
    FromClient {
        client: u8,
        len: u16,
    },
    FromTarget {
        socket: u8,
        target: u8,
    },
    Close {
        client: u8,
    },
    Advance {
        millis: u32,
    },
    Expire,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..40, 0u8..6).prop_map(|(client, target)| Op::Connect { client, target }),
        2 => (0u8..6).prop_map(|target| Op::Issue { target }),
        3 => (0u8..40, 0u8..12).prop_map(|(client, token)| Op::Redeem { client, token }),
        4 => (0u8..40, 0u16..2000).prop_map(|(client, len)| Op::FromClient { client, len }),
        2 => (0u8..12, 0u8..6).prop_map(|(socket, target)| Op::FromTarget { socket, target }),
        1 => (0u8..40).prop_map(|client| Op::Close { client }),
        3 => (0u32..200_000).prop_map(|millis| Op::Advance { millis }),
        2 => Just(Op::Expire),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Drives the table with arbitrary operations and checks, after every step: its internal
    /// invariants, the cap, the socket-sharing rule, the ledger, and the reaping contract
    /// (nothing active is closed, nothing idle survives an expire).
    #[test]
    fn table_invariants_hold_under_arbitrary_ops(ops in proptest::collection::vec(op(), 1..200), cap in 1usize..30) {
        let timeout = Duration::from_secs(60);
        let mut t = SessionTable::new(timeout);
        let ledger = Ledger::new(cap);
        let token_ttl = Duration::from_secs(30);
        let store = crate::token::TokenStore::new(token_ttl, 1_000, false);
        // Issued tokens with their target port and expiry.
        let mut issued: Vec<(crate::token::TokenId, u16, Instant)> = Vec::new();
        let t0 = Instant::now();
        let mut now = t0;
        // Model: last activity per client with a session.
        let mut model: HashMap<SocketAddr, (Instant, u16)> = HashMap::new();
        let mut most_ever = 0usize;
        for op in ops {
            match op {
                Op::Connect { client: c, target: tp } => {
                    let tp = 9000 + u16::from(tp);
                    let had = model.contains_key(&client(c.into()));
                    match t.connect(client(c.into()), target(tp), now, &ledger) {
                        Ok(_) => { model.insert(client(c.into()), (now, tp)); }
                        Err(Refusal::Cap) => prop_assert!(!had && model.len() >= cap),
                    }
                }
                Op::Issue { target: tp } => {
                    let tp = 9000 + u16::from(tp);
                    issued.push((store.issue(target(tp), now), tp, now + token_ttl));
                }
                Op::Redeem { client: c, token } => {
                    let Some(&(id, tp, expires)) = issued.get(usize::from(token)) else { continue };
                    let before = model.get(&client(c.into())).copied();
                    match store.redeem(id, now) {
                        Ok(tgt) => {
                            prop_assert!(now < expires, "an expired token redeemed");
                            prop_assert_eq!(tgt.addr.port(), tp);
                            let had = before.is_some();
                            match t.connect(client(c.into()), tgt, now, &ledger) {
                                Ok(_) => { model.insert(client(c.into()), (now, tp)); }
                                Err(Refusal::Cap) => prop_assert!(!had && model.len() >= cap),
                            }
                        }
                        Err(_) => {
                            prop_assert!(now >= expires, "a live token was rejected");
                            // An expired token changes nothing.
                            prop_assert_eq!(model.get(&client(c.into())).copied(), before);
                        }
                    }
                }
                Op::FromClient { client: c, len } => {
                    let addr = client(c.into());
                    if let Some(id) = t.lookup(&addr) {
                        let (_, to) = t.forward_from_client(id, len.into(), now).unwrap();
                        let entry = model.get_mut(&addr).unwrap();
                        prop_assert_eq!(to.port(), entry.1);
                        entry.0 = now;
                    } else {
                        prop_assert!(!model.contains_key(&addr));
                    }
                }
                Op::FromTarget { socket, target: tp } => {
                    let tp = 9000 + u16::from(tp);
                    let sock = SocketId { v6: false, index: socket.into() };
                    if let Some(c) = t.forward_from_target(sock, &target(tp).addr, 1, now) {
                        let entry = model.get_mut(&c).unwrap();
                        prop_assert_eq!(entry.1, tp, "delivered only from the bound target");
                        entry.0 = now;
                    }
                }
                Op::Close { client: c } => {
                    if let Some(id) = t.lookup(&client(c.into())) {
                        t.close(id, CloseReason::UpstreamError, now, &ledger).unwrap();
                        model.remove(&client(c.into()));
                    }
                }
                Op::Advance { millis } => now += Duration::from_millis(millis.into()),
                Op::Expire => {
                    let mut out = Vec::new();
                    t.expire(now, &ledger, &mut out);
                    for closed in &out {
                        let (last, _) = model.remove(&closed.client).unwrap();
                        prop_assert!(last + timeout <= now, "closed an active session");
                    }
                    for (last, _) in model.values() {
                        prop_assert!(*last + timeout > now, "an idle session survived expire");
                    }
                }
            }
            t.check_invariants();
            prop_assert!(t.len() <= cap);
            prop_assert_eq!(t.len(), model.len());
            prop_assert_eq!(ledger.active(), model.len());
            // Sockets are shared: never more than sessions, nor than the most sessions any one
            // target has had at once (slots are not compacted when a lower one frees up).
            let mut per_target: HashMap<u16, usize> = HashMap::new();
            for (_, tp) in model.values() { *per_target.entry(*tp).or_default() += 1; }
            most_ever = most_ever.max(per_target.values().copied().max().unwrap_or(0));
            prop_assert!(t.open_sockets() <= most_ever);
            prop_assert!(t.open_sockets() <= t.len());
            for (tp, n) in &per_target {
                prop_assert_eq!(ledger.sessions_to(&target(*tp).addr), *n);
            }
        }
        // After a long enough advance everything is reaped.
        let mut out = Vec::new();
        t.expire(now + timeout, &ledger, &mut out);
        prop_assert!(t.is_empty());
        prop_assert_eq!(ledger.active(), 0);
        prop_assert_eq!(t.open_sockets(), 0);
        prop_assert_eq!(ledger.targets(), 0);
    }
}

/// Every per-session structure starts (and, once empty, restarts) above glibc's per-thread
/// cache size, so a wave's growth and release never parks blocks in the worker's tcache.
#[test]
fn per_session_structures_start_above_the_thread_cache() {
    const TCACHE_MAX: usize = 1_032;
    let t = SessionTable::new(TIMEOUT);
    let bytes = [
        t.slots.capacity() * std::mem::size_of::<Slot>(),
        t.free.capacity() * std::mem::size_of::<SessionId>(),
        t.timers.capacity() * std::mem::size_of::<Reverse<Timer>>(),
        t.carried[0].capacity() * std::mem::size_of::<u32>(),
        t.carried[1].capacity() * std::mem::size_of::<u32>(),
        t.by_client.capacity() * std::mem::size_of::<(SocketAddr, SessionId)>(),
        t.bound.capacity() * std::mem::size_of::<((SocketId, SocketAddr), SessionId)>(),
        t.targets.capacity() * std::mem::size_of::<(SocketAddr, TargetUse)>(),
    ];
    for (i, b) in bytes.iter().enumerate() {
        assert!(*b > TCACHE_MAX, "structure {i} starts at {b} bytes");
    }
    assert!(t.capacity_hint() < 64 * 1024, "the floor stays small");
}
