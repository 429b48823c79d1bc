use super::sim::{Op, Payload, Sim};
use super::*;
use crate::model::{ClientBinding, Policy, TokenFormat};
use crate::token::TokenStore;
use proptest::prelude::*;

const TIMEOUT: Duration = Duration::from_secs(300);
const MAGIC: &[u8] = b"\xff\xff\xff\xffRESET";

fn rules(timeout: Duration, cap: usize) -> Rules {
    Rules {
        magic: MAGIC.to_vec(),
        format: TokenFormat::Uuid,
        session_timeout: timeout,
        max_sessions: cap,
        max_per_client_ip: 100_000,
        // Most tests here are about idle timeouts; unanswered ones have their own.
        unanswered_timeout: Duration::from_secs(100_000),
        default_route: None,
        known: Arc::new(crate::model::KnownTargets::everywhere()),
        proofs: Arc::new(crate::session::Proofs::new(
            b"a test secret, thirty-two bytes.",
            Instant::now(),
            2_000,
            5_000,
        )),
        amplification: 3,
    }
}

/// A table with the default rules admitting at most `cap` sessions, and its ledger.
fn table(cap: usize) -> (SessionTable, Arc<Ledger>) {
    let ledger = Arc::new(Ledger::new());
    (
        SessionTable::new(rules(TIMEOUT, cap), Arc::clone(&ledger)),
        ledger,
    )
}

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

fn establish(t: &mut SessionTable, c: u16, tp: u16, now: Instant) -> SessionId {
    t.open(client(c), target(tp), now).unwrap()
}

/// The upstream socket slot a session is bound on.
fn socket_of(t: &SessionTable, id: SessionId) -> SocketId {
    t.describe(id).unwrap().2
}

/// The socket outputs queued since the last look (opens and closes, in order).
fn socket_outputs(t: &mut SessionTable) -> Vec<Output> {
    let mut out = Vec::new();
    t.take_outputs(&mut out);
    out.retain(|o| matches!(o, Output::OpenSocket { .. } | Output::CloseSocket(_)));
    out
}

/// The session's target replies once (the session is answered from now on).
fn answer(t: &mut SessionTable, id: SessionId, now: Instant) {
    let (client, target, socket) = t.describe(id).map(|(c, t, s)| (c, t.addr, s)).unwrap();
    assert_eq!(
        t.decide_target(socket, target, 1, now),
        Decision::Deliver { client }
    );
}

/// Sends `datagram` from client `c` through the table's one decision function.
fn send(
    t: &mut SessionTable,
    tokens: &TokenStore,
    c: u16,
    datagram: &[u8],
    now: Instant,
) -> Decision {
    t.decide_client(client(c), datagram, now, tokens)
}

const POLICY: Policy = Policy {
    ttl: Duration::from_secs(30),
    resume: Duration::from_secs(30),
    single_use: false,
    binding: ClientBinding::Ip,
};

/// A token for target port `tp`, issued to the clients' IP.
fn token_for(tokens: &TokenStore, tp: u16, now: Instant) -> Vec<u8> {
    tokens
        .issue(target(tp), client(0).ip(), now, POLICY)
        .to_wire()
        .into_bytes()
}

fn reset_for(tokens: &TokenStore, tp: u16, now: Instant) -> Vec<u8> {
    [MAGIC, &token_for(tokens, tp, now)[..]].concat()
}

#[test]
fn a_token_opens_a_session_and_data_flows_both_ways() {
    let (mut t, l) = table(10);
    let tokens = TokenStore::new(100);
    let now = Instant::now();
    let token = token_for(&tokens, 9001, now);
    let Decision::Open {
        id,
        first: None,
        redeemed: true,
    } = send(&mut t, &tokens, 1, &token, now)
    else {
        panic!("a token opens a session and is not forwarded")
    };
    let socket = socket_of(&t, id);
    assert_eq!(
        socket_outputs(&mut t),
        [Output::OpenSocket {
            socket,
            session: id
        }]
    );
    assert_eq!(t.lookup(&client(1)), Some(id));
    assert_eq!(
        send(&mut t, &tokens, 1, b"game", now),
        Decision::Forward(ToTarget {
            socket,
            to: target(9001).addr,
            header: None,
        })
    );
    assert_eq!(
        t.decide_target(socket, target(9001).addr, 5, now),
        Decision::Deliver { client: client(1) }
    );
    // A stranger on the same socket is not delivered.
    assert_eq!(
        t.decide_target(socket, target(9009).addr, 5, now),
        Decision::Drop(DropReason::UnknownSource)
    );
    // The retransmitted token changes nothing and is not forwarded.
    assert_eq!(send(&mut t, &tokens, 1, &token, now), Decision::Keep);
    assert_eq!(l.active(), 1);
    assert_eq!(l.sessions_to(&target(9001).addr), 1);
}

use crate::resolve::SessionCounts;

#[test]
fn sockets_are_shared_across_targets_never_within_one() {
    let (mut t, _l) = table(1000);
    let now = Instant::now();
    // 3 clients to target A, 3 clients to target B: 3 sockets, each carrying A and B once.
    let mut sockets = Vec::new();
    for c in 0..6u16 {
        let tp = if c % 2 == 0 { 9001 } else { 9002 };
        let id = t.open(client(c), target(tp), now).unwrap();
        sockets.push(socket_of(&t, id));
    }
    assert_eq!(t.open_sockets(), 3);
    let opened: Vec<Output> = socket_outputs(&mut t);
    assert_eq!(
        opened.len(),
        3,
        "one open per slot, by its first session: {opened:?}"
    );
    assert_eq!(sockets[0], sockets[1]);
    assert_ne!(sockets[0], sockets[2]);
}

#[test]
fn reset_moves_the_session_and_releases_the_old_binding() {
    let (mut t, l) = table(10);
    let tokens = TokenStore::new(100);
    let now = Instant::now();
    let id = establish(&mut t, 1, 9001, now);
    let old = socket_of(&t, id);
    let reset = reset_for(&tokens, 9002, now);
    socket_outputs(&mut t);
    let Decision::Reset { id: moved } = send(&mut t, &tokens, 1, &reset, now) else {
        panic!("a valid reset moves the session")
    };
    assert_eq!(moved, id);
    let new = socket_of(&t, id);
    // Slot 0 carries on (bound to the new target before the old one is let go): not cycled.
    assert_eq!(new, old);
    assert_eq!(socket_outputs(&mut t), []);
    // Old target can no longer reach the client; the new one can.
    assert_eq!(
        t.decide_target(old, target(9001).addr, 1, now),
        Decision::Drop(DropReason::UnknownSource)
    );
    assert_eq!(
        t.decide_target(new, target(9002).addr, 1, now),
        Decision::Deliver { client: client(1) }
    );
    assert_eq!(l.sessions_to(&target(9001).addr), 0);
    assert_eq!(l.sessions_to(&target(9002).addr), 1);
    assert_eq!(l.active(), 1);
    // The same reset again changes nothing.
    assert_eq!(send(&mut t, &tokens, 1, &reset, now), Decision::Keep);
}

#[test]
fn bad_resets_change_nothing_and_token_lookalikes_are_game_traffic() {
    let (mut t, _l) = table(10);
    let tokens = TokenStore::new(100);
    let t0 = Instant::now();
    establish(&mut t, 1, 9001, t0);
    let forged = b"550e8400-e29b-41d4-a716-446655440000";
    let forged_reset = [MAGIC, &forged[..]].concat();
    assert_eq!(
        send(&mut t, &tokens, 1, &forged_reset, t0),
        Decision::Drop(DropReason::InvalidToken)
    );
    assert_eq!(
        send(&mut t, &tokens, 1, &[MAGIC, b"garbage"].concat(), t0),
        Decision::Drop(DropReason::MalformedReset)
    );
    let expired = reset_for(&tokens, 9002, t0);
    assert_eq!(
        send(&mut t, &tokens, 1, &expired, t0 + Duration::from_secs(30)),
        Decision::Drop(DropReason::ExpiredToken)
    );
    // A bare token-shaped datagram that redeems nothing is forwarded as game traffic.
    assert!(matches!(
        send(&mut t, &tokens, 1, forged, t0),
        Decision::Forward(ToTarget { to, .. }) if to == target(9001).addr
    ));
    assert_eq!(
        send(&mut t, &tokens, 1, b"", t0),
        Decision::Drop(DropReason::Empty)
    );
}

#[test]
fn newcomers_without_a_token_get_nothing() {
    let (mut t, l) = table(10);
    let tokens = TokenStore::new(100);
    let now = Instant::now();
    let forged = b"550e8400-e29b-41d4-a716-446655440000";
    for (datagram, reason) in [
        (b"hello".to_vec(), DropReason::NoSession),
        (forged.to_vec(), DropReason::InvalidToken),
        ([MAGIC, &forged[..]].concat(), DropReason::InvalidToken),
        ([MAGIC, b"x"].concat(), DropReason::MalformedReset),
        (Vec::new(), DropReason::Empty),
    ] {
        assert_eq!(
            send(&mut t, &tokens, 7, &datagram, now),
            Decision::Drop(reason)
        );
    }
    assert!(t.is_empty());
    assert_eq!(l.active(), 0);
}

#[test]
fn cap_and_drain_refuse_newcomers_not_existing_sessions() {
    let (mut t, l) = table(2);
    let tokens = TokenStore::new(100);
    let now = Instant::now();
    for c in [1, 2] {
        let id = establish(&mut t, c, 9001, now);
        answer(&mut t, id, now);
    }
    let token = token_for(&tokens, 9001, now);
    assert_eq!(
        send(&mut t, &tokens, 3, &token, now),
        Decision::Drop(DropReason::SessionCap)
    );
    assert_eq!(
        t.open(client(3), target(9001), now).unwrap_err(),
        Refusal::SessionCap
    );
    // Existing sessions may still move.
    let reset = reset_for(&tokens, 9002, now);
    assert!(matches!(
        send(&mut t, &tokens, 1, &reset, now),
        Decision::Reset { .. }
    ));
    t.set_rules(rules(TIMEOUT, 10));
    l.begin_drain();
    assert_eq!(
        send(&mut t, &tokens, 3, &token, now),
        Decision::Drop(DropReason::Draining)
    );
    assert!(matches!(
        send(&mut t, &tokens, 2, b"still here", now),
        Decision::Forward(_)
    ));
    assert_eq!(t.len(), 2);
}

#[test]
fn idle_sessions_expire_at_their_deadline_and_activity_defers_it() {
    let (mut t, l) = table(10);
    let tokens = TokenStore::new(100);
    let t0 = Instant::now();
    establish(&mut t, 1, 9001, t0);
    establish(&mut t, 2, 9001, t0);
    assert_eq!(t.poll_timeout(), Some(t0 + TIMEOUT));
    // Client 1 talks at t0+100s; client 2 stays silent.
    send(&mut t, &tokens, 1, b"x", t0 + Duration::from_secs(100));
    t.expire(t0 + TIMEOUT - Duration::from_millis(1));
    assert!(t.take_closed().is_empty());
    t.expire(t0 + TIMEOUT);
    let out = t.take_closed();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].client, client(2));
    assert_eq!(out[0].reason, CloseReason::Idle);
    // The refreshed session's entry was re-armed at its real deadline.
    assert_eq!(t.poll_timeout(), Some(t0 + Duration::from_secs(400)));
    socket_outputs(&mut t);
    t.expire(t0 + Duration::from_secs(400));
    assert_eq!(
        socket_outputs(&mut t),
        [Output::CloseSocket(SocketId {
            v6: false,
            index: 0
        })]
    );
    assert!(t.is_empty());
    assert_eq!(l.active(), 0);
    assert_eq!(t.open_sockets(), 0);
}

#[test]
fn a_stale_deadline_never_closes_a_reused_slot() {
    let (mut t, _l) = table(10);
    let t0 = Instant::now();
    let a = establish(&mut t, 1, 9001, t0);
    let socket = socket_of(&t, a);
    t.on_socket_failed(socket, a, t0); // nothing may yield: it closes
    assert_eq!(t.take_closed()[0].reason, CloseReason::UpstreamError);
    // Slot reused 200 s later by a new session.
    let t1 = t0 + Duration::from_secs(200);
    let b = establish(&mut t, 2, 9001, t1);
    assert_eq!(a, b);
    t.expire(t0 + TIMEOUT); // the old entry comes due
    assert!(t.take_closed().is_empty());
    assert_eq!(t.lookup(&client(2)), Some(b));
    t.expire(t1 + TIMEOUT);
    assert_eq!(t.take_closed().len(), 1);
}

#[test]
fn new_timeout_applies_to_new_sessions_only() {
    let (mut t, _l) = table(10);
    let t0 = Instant::now();
    establish(&mut t, 1, 9001, t0);
    t.set_rules(rules(Duration::from_secs(5), 10));
    establish(&mut t, 2, 9001, t0);
    t.expire(t0 + Duration::from_secs(5));
    assert_eq!(
        t.take_closed().iter().map(|c| c.client).collect::<Vec<_>>(),
        [client(2)]
    );
}

#[test]
fn sample_is_bounded_and_reports_age_idle_and_counts() {
    let (mut t, _l) = table(100);
    let tokens = TokenStore::new(100);
    let t0 = Instant::now();
    for c in 0..10 {
        establish(&mut t, c, 9001, t0);
    }
    send(&mut t, &tokens, 3, &[7u8; 100], t0 + Duration::from_secs(4));
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
    let (mut t, _l) = table(10_000);
    let t0 = Instant::now();
    let empty = t.capacity_hint();
    for c in 0..5_000u32 {
        let addr = SocketAddr::from(([10, (c >> 16) as u8, (c >> 8) as u8, c as u8], 5000));
        t.open(addr, target(9001), t0).unwrap();
    }
    assert!(t.capacity_hint() > 100_000);
    t.expire(t0 + TIMEOUT);
    assert_eq!(t.take_closed().len(), 5_000);
    assert_eq!(t.capacity_hint(), empty, "peak memory released");
    t.check_invariants();
    establish(&mut t, 1, 9001, t0 + TIMEOUT);
    assert_eq!(t.len(), 1);
    t.check_invariants();
}

#[test]
fn close_all_empties_everything() {
    let (mut t, l) = table(100);
    let t0 = Instant::now();
    for c in 0..20 {
        establish(&mut t, c, 9000 + (c % 3), t0);
    }
    t.close_all(CloseReason::Drained, t0);
    assert_eq!(t.take_closed().len(), 20);
    assert!(t.is_empty());
    assert_eq!(t.open_sockets(), 0);
    assert_eq!(l.active(), 0);
    assert_eq!(l.targets(), 0);
    t.check_invariants();
}

#[test]
fn default_endpoint_is_admitted_before_it_is_picked() {
    // The cap decides first: a full table refuses a tokenless newcomer without picking.
    let mut sim = Sim::new(1, true).unwrap();
    sim.step(&Op::FromClient {
        client: 1,
        payload: Payload::Data { len: 10 },
    })
    .unwrap();
    assert_eq!(sim.table().len(), 1);
    sim.step(&Op::FromClient {
        client: 2,
        payload: Payload::Data { len: 10 },
    })
    .unwrap();
    assert_eq!(sim.table().len(), 1);
    sim.finish().unwrap();
}

/// The nonce of a `Challenge` decision.
fn nonce_of(d: Decision) -> [u8; 16] {
    match d {
        Decision::Challenge { nonce, .. } => nonce,
        other => panic!("expected a challenge, got {other:?}"),
    }
}

/// `[magic] 0x02 [nonce] [token]`.
fn response(nonce: &[u8; 16], token: &[u8]) -> Vec<u8> {
    [MAGIC, &[0x02], nonce, token].concat()
}

/// The `Proved` output the last decision queued, if any (other outputs are kept).
fn proved(t: &mut SessionTable) -> bool {
    let mut out = Vec::new();
    t.take_outputs(&mut out);
    out.iter().any(|o| matches!(o, Output::Proved))
}

#[test]
fn one_session_per_token_a_second_address_moves_it_once_it_proves_it_receives_there() {
    let (mut t, l) = table(10);
    let tokens = TokenStore::new(100);
    let now = Instant::now();
    let token = token_for(&tokens, 9001, now);
    let Decision::Open { id, .. } = send(&mut t, &tokens, 1, &token, now) else {
        panic!("opens")
    };
    let socket = socket_of(&t, id);
    // The same token from another port of the same IP (a NAT rebinding, or a forger):
    // challenged, and nothing moves.
    let challenge = send(&mut t, &tokens, 2, &token, now);
    assert!(
        matches!(challenge, Decision::Challenge { client: c, .. } if c == client(2)),
        "{challenge:?}"
    );
    let nonce = nonce_of(challenge);
    assert_eq!(
        t.lookup(&client(1)),
        Some(id),
        "the session stays meanwhile"
    );
    assert_eq!(
        t.decide_target(socket, target(9001).addr, 3, now),
        Decision::Deliver { client: client(1) }
    );
    // Another address cannot use that nonce, nor can the right address with another token.
    assert_eq!(
        send(&mut t, &tokens, 3, &response(&nonce, &token), now),
        Decision::Drop(DropReason::BadResponse)
    );
    let other = token_for(&tokens, 9001, now);
    assert_eq!(
        send(&mut t, &tokens, 2, &response(&nonce, &other), now),
        Decision::Drop(DropReason::BadResponse)
    );
    // Too late is too late.
    let late = now + Duration::from_millis(2_001);
    assert_eq!(
        send(&mut t, &tokens, 2, &response(&nonce, &token), late),
        Decision::Drop(DropReason::LateResponse)
    );
    assert_eq!(t.lookup(&client(1)), Some(id));
    // The challenged address answers in time: the session is its now.
    let later = now + Duration::from_millis(1_500);
    assert_eq!(
        send(&mut t, &tokens, 2, &response(&nonce, &token), later),
        Decision::Moved {
            id,
            from: client(1)
        }
    );
    assert!(proved(&mut t));
    assert_eq!(t.len(), 1);
    assert_eq!(t.lookup(&client(2)), Some(id));
    assert_eq!(t.lookup(&client(1)), None);
    // Same upstream socket and target: the game server sees the same peer.
    assert_eq!(
        t.decide_target(socket, target(9001).addr, 3, later),
        Decision::Deliver { client: client(2) }
    );
    // A spray from many ports still holds one session, where it was; the ports' IP is sent
    // at most 10 challenges a second.
    let mut challenges = 0;
    for port in 3..200 {
        match send(&mut t, &tokens, port, &[MAGIC, &token[..]].concat(), later) {
            Decision::Challenge { .. } => challenges += 1,
            Decision::Drop(DropReason::ChallengeOverBudget) => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(challenges, 10);
    assert_eq!(t.lookup(&client(2)), Some(id));
    assert_eq!((t.len(), l.active(), l.claimed()), (1, 1, 1));
    t.check_invariants();
}

#[test]
fn a_token_from_another_ip_is_challenged_and_opens_only_once_answered() {
    let (mut t, _l) = table(10);
    let tokens = TokenStore::new(100);
    let now = Instant::now();
    let token = token_for(&tokens, 9001, now);
    let phone = SocketAddr::from(([10, 9, 9, 9], 4000));
    let forger = SocketAddr::from(([10, 9, 9, 8], 4000));
    let mut nonce = [0; 16];
    for d in [token.clone(), [MAGIC, &token[..]].concat()] {
        nonce = nonce_of(t.decide_client(phone, &d, now, &tokens));
    }
    assert!(t.is_empty(), "nothing opens before the proof");
    // A forger replaying the phone's response from its own address moves nothing.
    assert_eq!(
        t.decide_client(forger, &response(&nonce, &token), now, &tokens),
        Decision::Drop(DropReason::BadResponse)
    );
    assert!(t.is_empty());
    assert!(matches!(
        t.decide_client(phone, &response(&nonce, &token), now, &tokens),
        Decision::Open { .. }
    ));
    assert!(proved(&mut t));
    assert_eq!(t.len(), 1);
    // Redeeming from the bound IP (a `redeem` without proof, as the TCP port does) is still
    // refused from another IP.
    assert_eq!(
        tokens
            .redeem_wire(&token, phone.ip(), now)
            .map(|g| g.key)
            .unwrap_err(),
        crate::model::Rejection::WrongClient
    );
}

#[test]
fn unbound_tokens_always_need_proof_and_single_use_tokens_are_spent_by_the_proof() {
    let (mut t, _l) = table(10);
    let tokens = TokenStore::new(100);
    let now = Instant::now();
    let policy = Policy {
        binding: ClientBinding::None,
        single_use: true,
        ..POLICY
    };
    let token = tokens
        .issue(target(9001), client(0).ip(), now, policy)
        .to_wire()
        .into_bytes();
    // Even from the querying IP.
    let nonce = nonce_of(send(&mut t, &tokens, 1, &token, now));
    // The challenge did not use the single-use token up; the proof does.
    assert!(matches!(
        send(&mut t, &tokens, 1, &response(&nonce, &token), now),
        Decision::Open { .. }
    ));
    assert_eq!(
        send(&mut t, &tokens, 2, &response(&nonce, &token), now),
        Decision::Drop(DropReason::InvalidToken)
    );
}

#[test]
fn a_challenge_is_never_larger_than_what_caused_it() {
    let (mut t, _l) = table(10);
    let mut r = rules(TIMEOUT, 10);
    r.magic = vec![0xfe; 32];
    let magic = r.magic.clone();
    t.set_rules(r);
    let tokens = TokenStore::new(100);
    let now = Instant::now();
    let token = token_for(&tokens, 9001, now);
    let phone = SocketAddr::from(([10, 9, 9, 9], 4000));
    // 36 bytes of bare token cannot carry a 49-byte challenge.
    assert_eq!(
        t.decide_client(phone, &token, now, &tokens),
        Decision::Drop(DropReason::ChallengeTooLarge)
    );
    assert!(matches!(
        t.decide_client(phone, &[&magic[..], &token].concat(), now, &tokens),
        Decision::Challenge { .. }
    ));
}

#[test]
fn pings_are_answered_to_anyone_within_their_budget_and_never_larger() {
    let (mut t, l) = table(10);
    let tokens = TokenStore::new(100);
    let now = Instant::now();
    let ping = [MAGIC, &[0x03], b"abcdefgh", &[0u8; 16]].concat();
    let stranger = SocketAddr::from(([10, 9, 9, 9], 4000));
    let Decision::Pong {
        client: to,
        id,
        received_ns,
    } = t.decide_client(stranger, &ping, now + Duration::from_micros(5), &tokens)
    else {
        panic!("a ping is answered")
    };
    assert_eq!((to, &id), (stranger, b"abcdefgh"));
    assert!(received_ns >= 5_000);
    let mut answered = 1;
    for port in 0..50 {
        let from = SocketAddr::from(([10, 9, 9, 9], port));
        if let Decision::Pong { .. } = t.decide_client(from, &ping, now, &tokens) {
            answered += 1;
        }
    }
    assert_eq!(answered, 10, "10 a second to one network");
    assert_eq!(
        t.decide_client(stranger, &ping[..ping.len() - 1], now, &tokens),
        Decision::Drop(DropReason::ShortPing)
    );
    assert!(t.is_empty(), "a ping opens nothing");
    l.begin_drain();
    let other = SocketAddr::from(([10, 9, 9, 7], 4000));
    assert_eq!(
        t.decide_client(other, &ping, now, &tokens),
        Decision::Drop(DropReason::Draining)
    );
}

#[test]
fn a_default_endpoint_session_is_sent_at_most_three_times_what_its_client_sent() {
    let (mut t, _l) = table(10);
    let now = Instant::now();
    t.ledger()
        .admit(client(1).ip(), 10, usize::MAX)
        .unwrap()
        .keep();
    let id = t.insert_admitted(client(1), target(9002), Origin::DefaultEndpoint, now);
    let (socket, from) = (socket_of(&t, id), target(9002).addr);
    // Nothing back before the client sent anything.
    assert_eq!(
        t.decide_target(socket, from, 1, now),
        Decision::Drop(DropReason::Amplification)
    );
    t.forward_from_client(id, 10, now).unwrap();
    assert_eq!(
        t.decide_target(socket, from, 30, now),
        Decision::Deliver { client: client(1) }
    );
    assert_eq!(
        t.decide_target(socket, from, 1, now),
        Decision::Drop(DropReason::Amplification)
    );
    // The client sends more: replies flow again.
    t.forward_from_client(id, 1, now).unwrap();
    assert_eq!(
        t.decide_target(socket, from, 3, now),
        Decision::Deliver { client: client(1) }
    );
    // A token session is not limited.
    let other = t.open(client(2), target(9003), now).unwrap();
    assert_eq!(
        t.decide_target(socket_of(&t, other), target(9003).addr, 1_000, now),
        Decision::Deliver { client: client(2) }
    );
}

#[test]
fn a_default_endpoint_client_whose_token_arrives_late_becomes_a_token_session() {
    // Its first datagram (the token) was lost; its game data opened a default-endpoint
    // session; then the token, sent again bare or behind the magic, arrives. Naming the same
    // target or another, the session is a token session from then on: replies are no longer
    // limited to 3 × what it sent (the simulation checks every decision against that).
    use super::sim::client_addr;
    for (other_target, payload) in [
        (false, Payload::Reset { nth: 0 }),
        (
            false,
            Payload::Token {
                nth: 0,
                padded: false,
            },
        ),
        (true, Payload::Reset { nth: 0 }),
        (
            true,
            Payload::Token {
                nth: 0,
                padded: true,
            },
        ),
    ] {
        let mut sim = Sim::new(10, true).unwrap();
        sim.step(&Op::FromClient {
            client: 1,
            payload: Payload::Data { len: 3 },
        })
        .unwrap();
        let id = sim.table().lookup(&client_addr(1)).unwrap();
        let picked = (sim.table().describe(id).unwrap().1.addr.port() - 9_000) as u8;
        let to = if other_target {
            (picked + 1) % 6
        } else {
            picked
        };
        sim.step(&Op::Issue {
            target: to,
            client: 1,
        })
        .unwrap();
        sim.step(&Op::FromClient { client: 1, payload }).unwrap();
        let socket = sim.table().describe(id).unwrap().2;
        // 1 000 bytes back for the 4 it sent: delivered (the sim fails a wrong decision).
        for _ in 0..3 {
            sim.step(&Op::FromTarget {
                slot: socket.index as u8,
                target: to,
                len: 999,
            })
            .unwrap();
        }
        sim.finish().unwrap();
    }
}

#[test]
fn a_token_for_the_same_address_brings_its_header_and_the_fast_path() {
    let (mut t, _l) = table(10);
    t.set_fast_path(true);
    let tokens = TokenStore::new(100);
    let now = Instant::now();
    // A default-endpoint session to 9001: no header, never in the fast path ...
    t.ledger()
        .admit(client(1).ip(), 10, usize::MAX)
        .unwrap()
        .keep();
    let id = t.insert_admitted(client(1), target(9001), Origin::DefaultEndpoint, now);
    t.forward_from_client(id, 4, now).unwrap();
    let socket = socket_of(&t, id);
    let kernel = |t: &mut SessionTable| {
        let mut out = Vec::new();
        t.take_outputs(&mut out);
        out.retain(|o| matches!(o, Output::FastPathAdd(_) | Output::FastPathRemove(_)));
        out
    };
    kernel(&mut t);
    // ... whose client redeems a token for that same address: kept where it is, a token
    // session, in the fast path at its target's next answer.
    assert_eq!(
        send(&mut t, &tokens, 1, &reset_for(&tokens, 9001, now), now),
        Decision::Keep
    );
    assert_eq!(kernel(&mut t), []);
    assert_eq!(
        t.decide_target(socket, target(9001).addr, 1_000, now),
        Decision::Deliver { client: client(1) }
    );
    let added = kernel(&mut t);
    assert!(
        matches!(added.as_slice(), [Output::FastPathAdd(legs)] if legs.id == id),
        "{added:?}"
    );
    // A token naming the same address through a `proxyProtocol: v2` mapping, for a player:
    // its header from now on, and out of the fast path (the kernel adds no header).
    let named = Arc::new(Target {
        proxy: true,
        player: Some("p-1".into()),
        ..(*target(9001)).clone()
    });
    let wire = tokens.issue(named, client(0).ip(), now, POLICY).to_wire();
    let reset = [MAGIC, wire.as_bytes()].concat();
    assert_eq!(send(&mut t, &tokens, 1, &reset, now), Decision::Keep);
    let removed = kernel(&mut t);
    assert!(
        matches!(removed.as_slice(), [Output::FastPathRemove(legs)] if legs.id == id),
        "{removed:?}"
    );
    let Decision::Forward(to) = send(&mut t, &tokens, 1, b"game data", now) else {
        panic!("game data goes to the target")
    };
    let header = to.header.expect("a PROXY v2 header");
    assert!(header.windows(3).any(|w| w == b"p-1"), "{header:?}");
    assert_eq!(
        t.decide_target(socket, target(9001).addr, 100, now),
        Decision::Deliver { client: client(1) }
    );
    assert_eq!(
        kernel(&mut t),
        [],
        "a session with a header stays in user space"
    );
}

#[test]
fn per_ip_cap_refuses_that_ips_newcomers_only() {
    let (mut t, l) = table(100);
    let mut r = rules(TIMEOUT, 100);
    r.max_per_client_ip = 2;
    t.set_rules(r);
    let tokens = TokenStore::new(100);
    let now = Instant::now();
    for c in [1, 2] {
        let token = token_for(&tokens, 9001, now);
        let Decision::Open { id, .. } = send(&mut t, &tokens, c, &token, now) else {
            panic!("opens")
        };
        answer(&mut t, id, now);
    }
    let token = token_for(&tokens, 9001, now);
    assert_eq!(
        send(&mut t, &tokens, 3, &token, now),
        Decision::Drop(DropReason::ClientIpCap)
    );
    assert_eq!(
        DropReason::ClientIpCap.refusal(),
        Some(Refusal::ClientIpCap)
    );
    assert_eq!(l.sessions_of_ip(client(1).ip()), 2);
    // Another IP is unaffected.
    let other = SocketAddr::from(([10, 0, 0, 2], 1));
    let tokens_other = tokens
        .issue(target(9001), other.ip(), now, POLICY)
        .to_wire();
    assert!(matches!(
        t.decide_client(other, tokens_other.as_bytes(), now, &tokens),
        Decision::Open { .. }
    ));
}

#[test]
fn the_per_ip_cap_yields_that_ips_oldest_default_or_unanswered_session_to_a_token() {
    let (mut t, l) = table(100);
    let mut r = rules(TIMEOUT, 100);
    r.max_per_client_ip = 2;
    t.set_rules(r);
    let tokens = TokenStore::new(100);
    let now = Instant::now();
    // Another IP's yielding session is older, and is not touched.
    let stranger = SocketAddr::from(([10, 0, 0, 2], 1));
    l.admit(stranger.ip(), 100, 2).unwrap().keep();
    t.insert_admitted(stranger, target(9002), Origin::DefaultEndpoint, now);
    // The victim's IP is full of forged default-endpoint sessions.
    for c in [1, 2] {
        l.admit(client(c).ip(), 100, 2).unwrap().keep();
        t.insert_admitted(client(c), target(9002), Origin::DefaultEndpoint, now);
    }
    let token = token_for(&tokens, 9001, now);
    assert!(matches!(
        send(&mut t, &tokens, 3, &token, now),
        Decision::Open { .. }
    ));
    let closed = t.take_closed();
    assert_eq!(closed.len(), 1);
    assert_eq!(
        (closed[0].client, closed[0].reason),
        (client(1), CloseReason::YieldedDefault)
    );
    assert_eq!(l.sessions_of_ip(client(1).ip()), 2);
    assert!(t.lookup(&stranger).is_some());
    t.check_invariants();
}

#[test]
fn a_full_table_makes_room_for_a_token_from_default_or_unanswered_sessions_only() {
    let (mut t, l) = table(3);
    let tokens = TokenStore::new(100);
    let now = Instant::now();
    // One answered token session, one unanswered token session, one answered default-endpoint session.
    let answered = establish(&mut t, 1, 9001, now);
    answer(&mut t, answered, now);
    let _unanswered = establish(&mut t, 2, 9001, now);
    assert_eq!(l.active(), 3 - 1);
    t.ledger()
        .admit(client(3).ip(), 3, usize::MAX)
        .unwrap()
        .keep();
    let default = t.insert_admitted(client(3), target(9002), Origin::DefaultEndpoint, now);
    assert!(matches!(
        send(&mut t, &tokens, 3, b"hi", now),
        Decision::Forward(_)
    ));
    answer(&mut t, default, now);
    let mut closed = Vec::new();
    let mut wake = Vec::new();
    // First newcomer: the unanswered token session (the oldest that may yield) goes.
    let token = token_for(&tokens, 9001, now);
    assert!(matches!(
        send(&mut t, &tokens, 4, &token, now),
        Decision::Open { .. }
    ));
    t.take_effects(&mut closed, &mut wake);
    assert_eq!(closed.len(), 1);
    assert_eq!(
        (closed[0].client, closed[0].reason),
        (client(2), CloseReason::YieldedUnanswered)
    );
    // Second: the answered default-endpoint session goes.
    let token = token_for(&tokens, 9001, now);
    let t4 = t.lookup(&client(4)).unwrap();
    answer(&mut t, t4, now);
    assert!(matches!(
        send(&mut t, &tokens, 5, &token, now),
        Decision::Open { .. }
    ));
    closed.clear();
    t.take_effects(&mut closed, &mut wake);
    assert_eq!(
        (closed[0].client, closed[0].reason),
        (client(3), CloseReason::YieldedDefault)
    );
    // Third: only answered token sessions are left, so the newcomer is refused.
    let t5 = t.lookup(&client(5)).unwrap();
    answer(&mut t, t5, now);
    let token = token_for(&tokens, 9001, now);
    assert_eq!(
        send(&mut t, &tokens, 6, &token, now),
        Decision::Drop(DropReason::SessionCap)
    );
    assert!(t.take_closed().is_empty());
    assert_eq!(t.len(), 3);
    assert!(wake.is_empty());
    t.check_invariants();
}

#[test]
fn a_session_its_target_never_answers_closes_after_the_unanswered_timeout() {
    let (mut t, _l) = table(10);
    let mut r = rules(TIMEOUT, 10);
    r.unanswered_timeout = Duration::from_secs(5);
    t.set_rules(r);
    let t0 = Instant::now();
    let silent = establish(&mut t, 1, 9001, t0);
    let heard = establish(&mut t, 2, 9001, t0);
    answer(&mut t, heard, t0 + Duration::from_secs(1));
    assert_eq!(t.poll_timeout(), Some(t0 + Duration::from_secs(5)));
    t.expire(t0 + Duration::from_secs(5));
    let out = t.take_closed();
    assert_eq!(out.len(), 1);
    assert_eq!(t.describe(silent), None);
    assert_eq!(
        (out[0].client, out[0].reason),
        (client(1), CloseReason::Unanswered)
    );
    // The answered one lives to its idle timeout.
    t.expire(t0 + TIMEOUT);
    assert!(t.take_closed().is_empty());
    t.expire(t0 + Duration::from_secs(1) + TIMEOUT);
    assert_eq!(t.take_closed()[0].reason, CloseReason::Idle);
}

#[test]
fn a_token_redeemed_on_another_worker_displaces_its_session_here() {
    let ledger = Arc::new(Ledger::new());
    let local = SocketAddr::from(([127, 0, 0, 1], 7777));
    let mut w0 = SessionTable::for_worker(rules(TIMEOUT, 10), Arc::clone(&ledger), 0, local);
    let mut w1 = SessionTable::for_worker(rules(TIMEOUT, 10), Arc::clone(&ledger), 1, local);
    let tokens = TokenStore::new(100);
    let now = Instant::now();
    let token = token_for(&tokens, 9001, now);
    assert!(matches!(
        w0.decide_client(client(1), &token, now, &tokens),
        Decision::Open { .. }
    ));
    // The kernel hashed the new port to worker 1: it proves its address there (the
    // secret is the process's, shared by its workers), and opens.
    let nonce = nonce_of(w1.decide_client(client(2), &token, now, &tokens));
    assert!(matches!(
        w1.decide_client(client(2), &response(&nonce, &token), now, &tokens),
        Decision::Open { .. }
    ));
    let (mut closed, mut wake) = (Vec::new(), Vec::new());
    w1.take_effects(&mut closed, &mut wake);
    assert_eq!(wake, [0], "worker 0 is woken");
    assert!(closed.is_empty());
    w0.close_displaced(now);
    w0.take_effects(&mut closed, &mut wake);
    assert_eq!(closed.len(), 1);
    assert_eq!(
        (closed[0].client, closed[0].reason),
        (client(1), CloseReason::Moved)
    );
    assert_eq!(
        (w0.len(), w1.len(), ledger.active(), ledger.claimed()),
        (0, 1, 1, 1)
    );
    // Nothing is displaced twice.
    w0.close_displaced(now);
    assert!(w0.take_closed().is_empty());
}

fn payload() -> impl Strategy<Value = Payload> {
    prop_oneof![
        4 => (0u16..2000).prop_map(|len| Payload::Data { len }),
        1 => Just(Payload::Empty),
        3 => (0u8..12, any::<bool>()).prop_map(|(nth, padded)| Payload::Token { nth, padded }),
        3 => (0u8..12).prop_map(|nth| Payload::Reset { nth }),
        1 => (any::<u128>(), any::<bool>()).prop_map(|(bits, reset)| Payload::Forged { bits, reset }),
        1 => any::<u8>().prop_map(|tail| Payload::MalformedReset { tail }),
        3 => (any::<u8>(), proptest::option::of(0u8..12), proptest::bool::weighted(0.2))
            .prop_map(|(nth, token, garbled)| Payload::Response { nth, token, garbled }),
        1 => proptest::bool::weighted(0.2).prop_map(|short| Payload::Ping { short }),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0u8..8, 0u8..40).prop_map(|(target, client)| Op::Issue { target, client }),
        8 => (0u8..40, payload()).prop_map(|(client, payload)| Op::FromClient { client, payload }),
        2 => (0u8..12, 0u8..8, any::<u16>()).prop_map(|(slot, target, len)| Op::FromTarget { slot, target, len }),
        1 => (0u8..40).prop_map(|client| Op::SocketFailed { client }),
        // Mostly short steps (tokens live 30 s, unanswered sessions 5 s), sometimes long ones.
        3 => (0u32..8_000).prop_map(|millis| Op::Advance { millis }),
        1 => (0u32..200_000).prop_map(|millis| Op::Advance { millis }),
        2 => Just(Op::Expire),
        1 => any::<u8>().prop_map(|seconds| Op::SetTimeout { seconds }),
        3 => (any::<u8>(), proptest::bool::weighted(0.2))
            .prop_map(|(nth, garbled)| Op::Answer { nth, garbled }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Arbitrary datagrams (valid, expired, forged and malformed tokens and resets, data,
    /// empties) from new and known clients, datagrams from targets and strangers, socket
    /// failures, clock advances and expiries, through `on_client_datagram` and
    /// `on_target_datagram`; every decision checked against the model and every invariant
    /// after every step (`session::sim`).
    #[test]
    fn decisions_hold_under_arbitrary_datagrams(
        ops in proptest::collection::vec(op(), 1..200),
        cap in 1usize..30,
        default_endpoint in any::<bool>(),
        drain_at in proptest::option::of(0usize..200),
    ) {
        let mut sim = Sim::new(cap, default_endpoint).unwrap();
        for (i, op) in ops.iter().enumerate() {
            if drain_at == Some(i) {
                prop_assert_eq!(sim.step(&Op::Drain), Ok(()));
            }
            prop_assert_eq!(sim.step(op), Ok(()), "step {} {:?}", i, op);
        }
        prop_assert_eq!(sim.finish(), Ok(()));
    }
}

/// Every per-session structure starts (and, once empty, restarts) above glibc's per-thread
/// cache size, so a wave's growth and release never parks blocks in the worker's tcache.
#[test]
fn per_session_structures_start_above_the_thread_cache() {
    const TCACHE_MAX: usize = 1_032;
    let (t, _l) = table(1);
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

#[test]
fn the_output_queue_holds_verdicts_not_reports() {
    // Every datagram's verdict passes through the queue: its entries stay the size of a
    // verdict (a closed session's report is boxed).
    let size = std::mem::size_of::<Output>();
    assert!(size <= 80, "Output is {size} bytes");
}

#[test]
fn a_token_naming_a_target_its_mapping_does_not_know_opens_nothing() {
    let (mut t, l) = table(10);
    let known = Arc::new(crate::model::KnownTargets::new(
        Vec::new(),
        Duration::from_secs(60),
    ));
    let mut addrs = std::collections::HashMap::new();
    addrs.insert(
        "echo".to_string(),
        std::collections::HashSet::from([target(9001).addr]),
    );
    known.replace(addrs, 0);
    let mut r = rules(TIMEOUT, 10);
    r.known = Arc::clone(&known);
    t.set_rules(r);
    let tokens = TokenStore::new(100);
    let now = Instant::now();
    let stranger = token_for(&tokens, 9999, now);
    assert_eq!(
        send(&mut t, &tokens, 1, &stranger, now),
        Decision::Drop(DropReason::UnknownTarget)
    );
    assert_eq!(
        send(&mut t, &tokens, 1, &[MAGIC, &stranger[..]].concat(), now),
        Decision::Drop(DropReason::UnknownTarget)
    );
    assert_eq!(l.active(), 0, "nothing opened");
    // A known one opens; a reset towards the unknown one keeps the session where it is.
    let ok = token_for(&tokens, 9001, now);
    assert!(matches!(
        send(&mut t, &tokens, 1, &ok, now),
        Decision::Open { .. }
    ));
    assert_eq!(
        send(&mut t, &tokens, 1, &[MAGIC, &stranger[..]].concat(), now),
        Decision::Drop(DropReason::UnknownTarget)
    );
    assert_eq!(
        t.describe(t.lookup(&client(1)).unwrap()).unwrap().1.addr,
        target(9001).addr
    );
}

mod fast_path;
