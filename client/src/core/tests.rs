//! The core driven with injected time: no sockets, no sleeps.

use super::*;
use crate::frames::{DEFAULT_MAGIC, write_challenge, write_pong};

const TOKEN: &[u8] = b"550e8400-e29b-41d4-a716-446655440000";

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A core on `directors` created at `t0`, with a fixed PING seed.
fn core(directors: &[SocketAddr], t0: Instant) -> Core {
    let cfg = Config {
        seed: 42,
        ..Config::default()
    };
    Core::new(directors, TOKEN, Duration::from_secs(30), cfg, t0).unwrap()
}

/// Everything waiting to be sent at `now`.
fn drain(c: &mut Core, now: Instant) -> Vec<(SocketAddr, TransmitKind, Vec<u8>)> {
    let mut buf = [0u8; MAX_CONTROL_LEN];
    let mut out = Vec::new();
    while let Some(t) = c.poll_transmit(now, &mut buf) {
        out.push((t.destination, t.kind, buf[..t.len].to_vec()));
    }
    out
}

fn kinds(sent: &[(SocketAddr, TransmitKind, Vec<u8>)]) -> Vec<(SocketAddr, TransmitKind)> {
    sent.iter().map(|(a, k, _)| (*a, *k)).collect()
}

fn resume_bytes() -> Vec<u8> {
    [DEFAULT_MAGIC, TOKEN].concat()
}

/// The PONG a director would send for `ping`, having held it `held_ns`.
fn pong_for(ping: &[u8], held_ns: u64) -> Vec<u8> {
    let mut id = [0u8; 8];
    id.copy_from_slice(&ping[10..18]);
    let mut out = [0u8; MAX_CONTROL_LEN];
    let n = write_pong(&mut out, DEFAULT_MAGIC, &id, 1_000, 1_000 + held_ns);
    out[..n].to_vec()
}

/// Fires the timer at `poll_timeout` (asserting it is `expected`) and returns what it sent.
fn fire(c: &mut Core, expected: Instant) -> Vec<(SocketAddr, TransmitKind, Vec<u8>)> {
    let at = c.poll_timeout().unwrap();
    assert_eq!(at, expected, "the next deadline");
    c.handle_timeout(at - Duration::from_nanos(1));
    assert!(drain(c, at).is_empty(), "nothing is due a nanosecond early");
    c.handle_timeout(at);
    drain(c, at)
}

#[test]
fn one_director_gets_the_token_then_the_resume_rule_runs_on_silence_and_keepalive() {
    let t0 = Instant::now();
    let d = addr(7777);
    let mut c = core(&[d], t0);
    assert!(!c.is_probing());
    assert_eq!(c.remote(), d);
    let sent = drain(&mut c, t0);
    assert_eq!(sent, vec![(d, TransmitKind::Token, TOKEN.to_vec())]);

    // Silent since the open: [magic][token] at 500 ms, 1000 ms, ...
    let sent = fire(&mut c, t0 + ms(500));
    assert_eq!(sent, vec![(d, TransmitKind::Resume, resume_bytes())]);
    assert_eq!(fire(&mut c, t0 + ms(1000)).len(), 1);
    assert_eq!(c.stats().resumes, 2);

    // Game data keeps it quiet until the keepalive, 5 s after the last resume.
    for t in (1_100..6_000).step_by(100) {
        assert_eq!(c.handle_datagram(t0 + ms(t), d, b"state"), Incoming::Data);
        c.handle_timeout(t0 + ms(t));
        assert!(drain(&mut c, t0 + ms(t)).is_empty(), "at {t} ms");
    }
    assert_eq!(c.poll_timeout(), Some(t0 + ms(6_000)), "keepalive");
    c.handle_timeout(t0 + ms(6_000));
    assert_eq!(
        kinds(&drain(&mut c, t0 + ms(6_000))),
        vec![(d, TransmitKind::Resume)]
    );
    assert_eq!(c.silent_for(t0 + ms(6_000)), ms(100));
    // One address: no PING, no failover, ever.
    assert_eq!(c.stats().failovers, 0);
    c.handle_timeout(t0 + ms(60_000));
    assert_eq!(
        kinds(&drain(&mut c, t0 + ms(60_000))),
        vec![(d, TransmitKind::Resume)]
    );
}

#[test]
fn a_challenge_is_answered_with_its_nonce_and_the_token_to_the_challenger_only() {
    let t0 = Instant::now();
    let d = addr(7777);
    let mut c = core(&[d], t0);
    drain(&mut c, t0);
    let nonce: [u8; 16] = std::array::from_fn(|i| 0xA0 + i as u8);
    let mut frame = [0u8; MAX_CONTROL_LEN];
    let n = write_challenge(&mut frame, DEFAULT_MAGIC, &nonce);
    assert_eq!(c.handle_datagram(t0, d, &frame[..n]), Incoming::Challenge);
    let sent = drain(&mut c, t0);
    let expected = [DEFAULT_MAGIC, &[0x02], &nonce, TOKEN].concat();
    assert_eq!(sent, vec![(d, TransmitKind::Response, expected)]);
    assert_eq!(c.stats().challenges_answered, 1);
    // A challenge is not game data and does not count as heard.
    assert_eq!(c.silent_for(t0 + ms(10)), ms(10));

    // A stranger's challenge is never answered (no token to a forger's address).
    assert_eq!(
        c.handle_datagram(t0, addr(1), &frame[..n]),
        Incoming::Dropped(Dropped::Stranger)
    );
    // A flood: four wait, the rest are dropped; the queue drains and accepts again.
    for _ in 0..4 {
        assert_eq!(c.handle_datagram(t0, d, &frame[..n]), Incoming::Challenge);
    }
    assert_eq!(
        c.handle_datagram(t0, d, &frame[..n]),
        Incoming::Dropped(Dropped::ChallengeFlood)
    );
    assert_eq!(drain(&mut c, t0).len(), 4);
    assert_eq!(c.handle_datagram(t0, d, &frame[..n]), Incoming::Challenge);
    assert_eq!(c.stats().dropped, 2);
}

#[test]
fn the_nearest_director_by_rtt_gets_the_token() {
    let t0 = Instant::now();
    let (a, b, z) = (addr(1), addr(2), addr(3));
    let mut c = core(&[a, b, z], t0);
    assert!(c.is_probing());
    let pings = drain(&mut c, t0);
    assert_eq!(
        kinds(&pings),
        vec![
            (a, TransmitKind::Ping),
            (b, TransmitKind::Ping),
            (z, TransmitKind::Ping)
        ]
    );
    for (_, _, p) in &pings {
        assert_eq!(p.len(), 34);
        assert_eq!(&p[..10], b"\xff\xff\xff\xffRESET\x03");
    }
    assert_ne!(pings[0].2, pings[1].2, "each PING has its own id");
    // Game data while probing is not the game's, and no challenge is answered before the
    // token has left.
    assert_eq!(
        c.handle_datagram(t0, a, b"x"),
        Incoming::Dropped(Dropped::NotCurrent)
    );
    let mut challenge = [0u8; MAX_CONTROL_LEN];
    let n = write_challenge(&mut challenge, DEFAULT_MAGIC, &[1; 16]);
    assert_eq!(
        c.handle_datagram(t0, a, &challenge[..n]),
        Incoming::Dropped(Dropped::NotCurrent)
    );
    // b answers in 20 ms, z in 30 ms having held it 25 ms (5 ms of network), a never.
    assert_eq!(
        c.handle_datagram(t0 + ms(20), b, &pong_for(&pings[1].2, 0)),
        Incoming::Pong {
            from: b,
            rtt: ms(20)
        }
    );
    assert_eq!(
        c.handle_datagram(t0 + ms(30), z, &pong_for(&pings[2].2, 25_000_000)),
        Incoming::Pong {
            from: z,
            rtt: ms(5)
        }
    );
    // A PONG answers once.
    assert_eq!(
        c.handle_datagram(t0 + ms(31), z, &pong_for(&pings[2].2, 0)),
        Incoming::Dropped(Dropped::UnknownPong)
    );
    assert!(c.is_probing(), "a has not answered");
    assert!(
        drain(&mut c, t0 + ms(31)).is_empty(),
        "no token while probing"
    );
    let sent = fire(&mut c, t0 + ms(500));
    assert_eq!(sent, vec![(z, TransmitKind::Token, TOKEN.to_vec())]);
    assert_eq!(c.remote(), z);
    let order: Vec<_> = c.directors().collect();
    assert_eq!(
        order,
        vec![(z, Some(ms(5))), (b, Some(ms(20))), (a, None)],
        "by RTT, the silent one last"
    );
    assert_eq!(c.handle_datagram(t0 + ms(501), z, b"x"), Incoming::Data);
}

#[test]
fn probing_ends_as_soon_as_every_director_answered_and_a_silent_set_keeps_its_order() {
    let t0 = Instant::now();
    let (a, b) = (addr(1), addr(2));
    let mut c = core(&[a, b], t0);
    let pings = drain(&mut c, t0);
    c.handle_datagram(t0 + ms(9), b, &pong_for(&pings[1].2, 0));
    c.handle_datagram(t0 + ms(12), a, &pong_for(&pings[0].2, 0));
    assert!(!c.is_probing());
    assert_eq!(
        drain(&mut c, t0 + ms(12)),
        vec![(b, TransmitKind::Token, TOKEN.to_vec())]
    );

    // Nobody answers (today's director does not): the first address, after probe_for.
    let mut c = core(&[a, b], t0);
    drain(&mut c, t0);
    assert_eq!(
        kinds(&fire(&mut c, t0 + ms(500))),
        vec![(a, TransmitKind::Token)]
    );
}

#[test]
fn silence_fails_over_to_the_next_address_with_a_resume_and_wraps_around() {
    let t0 = Instant::now();
    let (a, b) = (addr(1), addr(2));
    let mut c = core(&[a, b], t0);
    drain(&mut c, t0);
    let open = t0 + ms(500);
    assert_eq!(kinds(&fire(&mut c, open)), vec![(a, TransmitKind::Token)]);
    c.handle_datagram(open + ms(100), a, b"state");

    // Silent from 600 ms: resumes (each with a PING to a) at 1100, 1600, ... 3100, then the
    // failover at 3600 sends [magic][token] to b.
    let mut t = open + ms(100);
    for _ in 0..5 {
        t += ms(500);
        let sent = fire(&mut c, t);
        assert_eq!(
            kinds(&sent),
            vec![(a, TransmitKind::Resume), (a, TransmitKind::Ping)]
        );
    }
    let sent = fire(&mut c, open + ms(100) + ms(3_000));
    assert_eq!(sent, vec![(b, TransmitKind::Resume, resume_bytes())]);
    assert_eq!(c.remote(), b);
    assert_eq!(c.stats().failovers, 1);
    assert_eq!(
        c.handle_datagram(t, a, b"late"),
        Incoming::Dropped(Dropped::NotCurrent),
        "the old address is not heard any more"
    );
    // b stays silent too: back to a 3 s later.
    let moved = c.poll_timeout().unwrap() - ms(500);
    let mut last = Vec::new();
    for _ in 0..6 {
        let at = c.poll_timeout().unwrap();
        c.handle_timeout(at);
        last = drain(&mut c, at);
    }
    assert_eq!(kinds(&last), vec![(a, TransmitKind::Resume)]);
    assert_eq!(c.poll_timeout().unwrap() - moved, ms(3_000) + ms(500));
    assert_eq!(c.stats().failovers, 2);
}

#[test]
fn a_pong_from_the_director_in_use_holds_off_the_failover() {
    let t0 = Instant::now();
    let (a, b) = (addr(1), addr(2));
    let mut c = core(&[a, b], t0);
    drain(&mut c, t0);
    let open = t0 + ms(500);
    fire(&mut c, open);
    // Silent: at 500 ms the resume and a PING; its PONG says a is alive.
    let sent = fire(&mut c, open + ms(500));
    let ping = &sent[1].2;
    assert!(matches!(
        c.handle_datagram(open + ms(510), a, &pong_for(ping, 0)),
        Incoming::Pong { .. }
    ));
    // The failover is now due 3 s after that PONG, not 3 s after the open.
    let mut at = c.poll_timeout().unwrap();
    while at < open + ms(510) + ms(3_000) {
        c.handle_timeout(at);
        for (to, _, _) in drain(&mut c, at) {
            assert_eq!(to, a, "no failover before {at:?}");
        }
        at = c.poll_timeout().unwrap();
    }
    c.handle_timeout(open + ms(3_510));
    assert_eq!(c.remote(), b);
}

#[test]
fn switch_sends_the_new_token_behind_the_magic_and_bad_input_is_refused() {
    let t0 = Instant::now();
    let d = addr(7777);
    let mut c = core(&[d], t0);
    drain(&mut c, t0);
    let new = b"aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee";
    c.switch(t0 + ms(100), new, Duration::from_secs(600))
        .unwrap();
    assert_eq!(
        drain(&mut c, t0 + ms(100)),
        vec![(d, TransmitKind::Resume, [DEFAULT_MAGIC, new].concat())]
    );
    assert_eq!(c.token(), new);
    assert!(!c.needs_query(t0 + ms(100) + Duration::from_secs(599)));
    assert!(c.needs_query(t0 + ms(100) + Duration::from_secs(600)));
    assert_eq!(
        c.switch(t0, b"has space", Duration::ZERO),
        Err(CoreError::BadToken)
    );
    assert_eq!(c.token(), new, "a refused switch changes nothing");

    let cfg = |magic: &[u8]| Config {
        magic: magic.to_vec(),
        ..Config::default()
    };
    let long = Duration::from_secs(30);
    assert_eq!(
        Core::new(&[], TOKEN, long, Config::default(), t0).unwrap_err(),
        CoreError::NoDirector
    );
    assert_eq!(
        Core::new(&[d], b"", long, Config::default(), t0).unwrap_err(),
        CoreError::BadToken
    );
    assert_eq!(
        Core::new(&[d], TOKEN, long, cfg(b""), t0).unwrap_err(),
        CoreError::BadMagic
    );
    assert_eq!(
        Core::new(&[d], TOKEN, long, cfg(&[1; 33]), t0).unwrap_err(),
        CoreError::BadMagic
    );
    assert!(CoreError::BadMagic.to_string().contains("1..=32"));
}

#[test]
fn game_data_that_looks_like_a_frame_but_is_none_stays_game_data() {
    let t0 = Instant::now();
    let d = addr(7777);
    let mut c = core(&[d], t0);
    drain(&mut c, t0);
    // Behind the magic, but the wrong length for a CHALLENGE or a PONG, or another tag.
    for datagram in [
        [DEFAULT_MAGIC, &[0x01, 1, 2]].concat(),
        [DEFAULT_MAGIC, &[0x04; 30]].concat(),
        [DEFAULT_MAGIC, b"\x09rest"].concat(),
        DEFAULT_MAGIC.to_vec(),
    ] {
        assert_eq!(c.handle_datagram(t0, d, &datagram), Incoming::Data);
    }
    // A PONG nobody asked for is not the game's either.
    let mut out = [0u8; MAX_CONTROL_LEN];
    let n = write_pong(&mut out, DEFAULT_MAGIC, &[0; 8], 0, 0);
    assert_eq!(
        c.handle_datagram(t0, d, &out[..n]),
        Incoming::Dropped(Dropped::UnknownPong)
    );
    // Duplicated addresses are one director.
    let c = core(&[d, d], t0);
    assert!(!c.is_probing());
}

#[test]
fn a_custom_magic_is_used_in_every_frame() {
    let t0 = Instant::now();
    let (a, b) = (addr(1), addr(2));
    let cfg = Config {
        magic: b"\xab\xcd".to_vec(),
        ..Config::default()
    };
    let mut c = Core::new(&[a, b], TOKEN, Duration::from_secs(30), cfg, t0).unwrap();
    let pings = drain(&mut c, t0);
    assert_eq!(pings[0].2.len(), 2 + 25);
    assert_eq!(&pings[0].2[..3], b"\xab\xcd\x03");
    c.handle_timeout(t0 + ms(500));
    drain(&mut c, t0 + ms(500));
    c.handle_timeout(t0 + ms(1_000));
    let sent = drain(&mut c, t0 + ms(1_000));
    assert_eq!(sent[0].2, [b"\xab\xcd".as_slice(), TOKEN].concat());
}

#[test]
fn a_new_local_address_sends_the_resume_at_once_and_forgets_old_challenges() {
    let t0 = Instant::now();
    let d = addr(7777);
    let mut c = core(&[d], t0);
    drain(&mut c, t0);
    // A challenge for the old address is waiting when the phone changes networks.
    let mut frame = [0u8; MAX_CONTROL_LEN];
    let n = write_challenge(&mut frame, DEFAULT_MAGIC, &[7; 16]);
    assert_eq!(c.handle_datagram(t0, d, &frame[..n]), Incoming::Challenge);
    let moved = t0 + ms(100);
    c.rebound(moved);
    assert_eq!(
        drain(&mut c, moved),
        vec![(d, TransmitKind::Resume, resume_bytes())],
        "only the resume leaves from the new address"
    );
    assert_eq!(c.stats().resumes, 1);
    // The new address's challenge is answered as any other.
    let n = write_challenge(&mut frame, DEFAULT_MAGIC, &[8; 16]);
    assert_eq!(
        c.handle_datagram(moved, d, &frame[..n]),
        Incoming::Challenge
    );
    assert_eq!(
        kinds(&drain(&mut c, moved)),
        vec![(d, TransmitKind::Response)]
    );
    // The resume rule counts from the rebind.
    assert_eq!(c.poll_timeout(), Some(moved + c.cfg.resume.silence));
}
