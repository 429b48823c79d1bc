//! The kernel fast path as the table drives it (SPEC §8): which sessions go in, when, and
//! that their legs come out before anything that follows from a change.

use super::*;

fn v4(a: SocketAddr) -> SocketAddrV4 {
    match a {
        SocketAddr::V4(a) => a,
        SocketAddr::V6(_) => panic!("{a} is not IPv4"),
    }
}

/// A table that runs the fast path.
fn carrying(cap: usize) -> SessionTable {
    let (mut t, _) = table(cap);
    t.set_fast_path(true);
    t
}

fn legs(t: &SessionTable, id: SessionId) -> Legs {
    let (c, to, socket) = t.describe(id).unwrap();
    Legs {
        id,
        client: v4(c),
        target: v4(to.addr),
        socket,
    }
}

/// Every output queued since the last look, without socket opens and closes.
fn outputs(t: &mut SessionTable) -> Vec<Output> {
    let mut out = Vec::new();
    t.take_outputs(&mut out);
    out.retain(|o| !matches!(o, Output::OpenSocket { .. } | Output::CloseSocket(_)));
    out
}

fn kernel_outputs(t: &mut SessionTable) -> Vec<Output> {
    let mut out = outputs(t);
    out.retain(|o| matches!(o, Output::FastPathAdd(_) | Output::FastPathRemove(_)));
    out
}

/// The reaper's view of the kernel: it carried something at `at` (or nothing).
struct Carried(Option<Instant>);

impl LastSeen for Carried {
    fn last_seen(&self, _: &Legs, _: Instant) -> Option<Instant> {
        self.0
    }
}

/// Client 1 opens a session to 9001 with a token, its target answers: it is in the kernel.
/// Its id, token and legs.
fn in_the_kernel(
    t: &mut SessionTable,
    tokens: &TokenStore,
    now: Instant,
) -> (SessionId, Vec<u8>, Legs) {
    let token = token_for(tokens, 9001, now);
    let Decision::Open { id, .. } = send(t, tokens, 1, &token, now) else {
        panic!("opens")
    };
    answer(t, id, now);
    let legs = legs(t, id);
    assert_eq!(kernel_outputs(t), [Output::FastPathAdd(legs)]);
    (id, token, legs)
}

#[test]
fn an_ipv4_token_session_goes_in_when_its_target_answers_and_only_once() {
    let mut t = carrying(10);
    let now = Instant::now();
    let id = establish(&mut t, 1, 9001, now);
    assert!(
        kernel_outputs(&mut t).is_empty(),
        "not before its target answers"
    );
    let before = legs(&t, id);
    let socket = before.socket;
    t.on_target_datagram(7, socket, target(9001).addr, 10, now);
    assert_eq!(
        outputs(&mut t),
        [
            Output::FastPathAdd(before),
            Output::Datagram {
                datagram: 7,
                decision: Decision::Deliver { client: client(1) }
            }
        ],
        "in before the reply is delivered"
    );
    answer(&mut t, id, now);
    assert!(kernel_outputs(&mut t).is_empty(), "in once");
    // Its client's datagrams that still reach user space (a miss) are forwarded as ever.
    assert!(matches!(
        t.decide_client(client(1), b"game", now, &TokenStore::new(1)),
        Decision::Forward(_)
    ));
}

#[test]
fn without_a_fast_path_or_for_sessions_it_cannot_carry_nothing_goes_in() {
    let now = Instant::now();
    // No fast path.
    let (mut plain, _) = table(10);
    let id = establish(&mut plain, 1, 9001, now);
    answer(&mut plain, id, now);
    assert!(kernel_outputs(&mut plain).is_empty());
    // A PROXY v2 header in front of every datagram: only user space writes it.
    let mut t = carrying(10);
    let mut proxied = Target::new(
        "echo",
        "default",
        "p",
        SocketAddr::from(([127, 0, 0, 1], 9002)),
    );
    proxied.proxy = true;
    let id = t.open(client(2), Arc::new(proxied), now).unwrap();
    answer(&mut t, id, now);
    assert!(kernel_outputs(&mut t).is_empty(), "PROXY v2");
    // IPv6.
    let six = Arc::new(Target::new(
        "echo",
        "default",
        "six",
        SocketAddr::from(([0, 0, 0, 0, 0, 0, 0, 1], 9003)),
    ));
    let id = t.open(client(3), six, now).unwrap();
    answer(&mut t, id, now);
    assert!(kernel_outputs(&mut t).is_empty(), "IPv6");
}

#[test]
fn a_default_endpoint_session_stays_in_user_space_under_its_amplification_limit() {
    let mut sim = Sim::new(10, true).unwrap();
    let ops = [
        Op::FromClient {
            client: 1,
            payload: Payload::Data { len: 100 },
        },
        Op::FromTarget {
            slot: 0,
            target: 0,
            len: 10,
        },
    ];
    for op in &ops {
        sim.step(op).unwrap();
    }
    // The sim checks every entry; a default session would fail its check. Make sure the
    // session exists and was answered, so the check had something to refuse.
    let id = sim.table().lookup(&super::super::sim::client_addr(1));
    assert!(id.is_some());
}

#[test]
fn a_reset_takes_the_old_legs_out_first_and_the_new_target_puts_them_back() {
    let (mut t, tokens, now) = (carrying(10), TokenStore::new(100), Instant::now());
    let (id, _, old) = in_the_kernel(&mut t, &tokens, now);
    // Moved to 9002 by `[magic][token]` from its own address.
    assert_eq!(
        send(&mut t, &tokens, 1, &reset_for(&tokens, 9002, now), now),
        Decision::Reset { id }
    );
    let mut out = Vec::new();
    t.take_outputs(&mut out);
    assert_eq!(
        out.first(),
        Some(&Output::FastPathRemove(old)),
        "the old legs come out before anything else: {out:?}"
    );
    assert!(
        !out.iter().any(|o| matches!(o, Output::FastPathAdd(_))),
        "not back in before the new target answers"
    );
    // A late datagram from the old target is user space's to drop.
    assert_eq!(
        t.decide_target(old.socket, target(9001).addr, 5, now),
        Decision::Drop(DropReason::UnknownSource)
    );
    answer(&mut t, id, now);
    let new = legs(&t, id);
    assert_eq!(new.target, v4(target(9002).addr));
    assert_eq!(kernel_outputs(&mut t), [Output::FastPathAdd(new)]);
}

#[test]
fn a_proved_move_to_another_address_swaps_the_legs_at_once() {
    let (mut t, tokens, now) = (carrying(10), TokenStore::new(100), Instant::now());
    let (id, token, old) = in_the_kernel(&mut t, &tokens, now);
    // Another address asks: challenged, nothing comes out of the kernel meanwhile.
    let nonce = nonce_of(send(&mut t, &tokens, 2, &token, now));
    assert!(
        kernel_outputs(&mut t).is_empty(),
        "a challenge moves nothing"
    );
    assert_eq!(
        send(&mut t, &tokens, 2, &response(&nonce, &token), now),
        Decision::Moved {
            id,
            from: client(1)
        }
    );
    let new = Legs {
        client: v4(client(2)),
        ..old
    };
    assert_eq!(
        kernel_outputs(&mut t),
        [Output::FastPathRemove(old), Output::FastPathAdd(new)],
        "the old client's leg out, the new one in (its target has answered already)"
    );
}

#[test]
fn the_reaper_counts_what_the_kernel_carried_and_legs_come_out_before_the_close() {
    let mut t = carrying(10);
    let now = Instant::now();
    let id = establish(&mut t, 1, 9001, now);
    answer(&mut t, id, now);
    let l = legs(&t, id);
    kernel_outputs(&mut t);
    // Past the idle timeout as user space saw it, but the kernel carried a datagram 1 s ago.
    let due = now + TIMEOUT + Duration::from_secs(1);
    t.expire_seen(due, &Carried(Some(due - Duration::from_secs(1))));
    assert_eq!(
        t.lookup(&client(1)),
        Some(id),
        "not idle: the kernel saw it"
    );
    assert!(outputs(&mut t).is_empty());
    // Nothing since: reaped, its legs out before its close.
    let later = due + TIMEOUT;
    t.expire_seen(later, &Carried(Some(due - Duration::from_secs(1))));
    let out = outputs(&mut t);
    assert_eq!(out.first(), Some(&Output::FastPathRemove(l)));
    assert!(
        matches!(out.get(1), Some(Output::Closed(c)) if c.reason == CloseReason::Idle && c.id == id),
        "{out:?}"
    );
}

#[test]
fn drain_takes_every_session_out_of_the_kernel() {
    let mut t = carrying(10);
    let now = Instant::now();
    let mut all = Vec::new();
    for c in 1..=3 {
        let id = establish(&mut t, c, 9001, now);
        answer(&mut t, id, now);
        all.push(legs(&t, id));
    }
    kernel_outputs(&mut t);
    t.close_all(CloseReason::Drained, now);
    let out = outputs(&mut t);
    for l in &all {
        let removed = out
            .iter()
            .position(|o| *o == Output::FastPathRemove(*l))
            .unwrap_or_else(|| panic!("{l:?} not removed: {out:?}"));
        let closed = out
            .iter()
            .position(|o| matches!(o, Output::Closed(c) if c.id == l.id))
            .unwrap();
        assert!(removed < closed, "out before closed");
    }
}
