//! The core under arbitrary sequences of time, datagrams (game data, challenges, PONGs right
//! and wrong, garbage, strangers), switches and pings, driven the way a shell drives it (every
//! deadline fired in order), with what must always hold checked after every step.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use udp_director_client::core::{Config, Core, Incoming, TransmitKind};
use udp_director_client::frames::{self, DEFAULT_MAGIC, Frame, MAX_CONTROL_LEN};

const TOKEN: &[u8] = b"550e8400-e29b-41d4-a716-446655440000";
const OTHER: &[u8] = b"AQAbpL1pX3mYqK8cD9eF0gHiJkLmNoPqRsTuVwXyZ-_0123456789abcdef";

#[derive(Debug, Clone)]
enum Op {
    /// Let this many ms pass (every deadline on the way fired).
    Wait(u64),
    /// Game data from director `i` (`i == n`: a stranger).
    Data(usize),
    Challenge(usize, [u8; 16]),
    /// A PONG to the last PING sent to director `i` (or a made-up id if none).
    Pong(usize, u64),
    Garbage(usize, Vec<u8>),
    Switch,
    Ping,
}

fn op(n: usize) -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u64..4_000).prop_map(Op::Wait),
        3 => (0..=n).prop_map(Op::Data),
        1 => (0..=n, any::<[u8; 16]>()).prop_map(|(i, nonce)| Op::Challenge(i, nonce)),
        2 => (0..=n, 0u64..5_000_000).prop_map(|(i, held)| Op::Pong(i, held)),
        1 => (0..=n, proptest::collection::vec(any::<u8>(), 0..40)).prop_map(|(i, g)| Op::Garbage(i, g)),
        1 => Just(Op::Switch),
        1 => Just(Op::Ping),
    ]
}

struct World {
    core: Core,
    directors: Vec<SocketAddr>,
    stranger: SocketAddr,
    now: Instant,
    /// Last PING id sent to each director.
    pings: Vec<Option<[u8; 8]>>,
    tokens_sent: usize,
    token: &'static [u8],
    cfg: Config,
}

impl World {
    fn from(&self, i: usize) -> SocketAddr {
        self.directors.get(i).copied().unwrap_or(self.stranger)
    }

    /// Drains and checks every transmit.
    fn drain(&mut self) {
        let mut buf = [0u8; MAX_CONTROL_LEN];
        while let Some(t) = self.core.poll_transmit(self.now, &mut buf) {
            let bytes = &buf[..t.len];
            let to = self.directors.iter().position(|d| *d == t.destination);
            assert!(to.is_some(), "sent to a stranger: {t:?}");
            if self.core.is_probing() {
                assert_eq!(t.kind, TransmitKind::Ping, "only PINGs while probing");
            }
            match (t.kind, frames::parse(bytes, DEFAULT_MAGIC)) {
                (TransmitKind::Token, Ok(None)) => {
                    assert_eq!(bytes, self.token);
                    self.tokens_sent += 1;
                }
                (TransmitKind::Resume, Ok(Some(Frame::Resume { token }))) => {
                    assert_eq!(token, self.token)
                }
                (TransmitKind::Response, Ok(Some(Frame::Response { token, .. }))) => {
                    assert_eq!(token, self.token)
                }
                (TransmitKind::Ping, Ok(Some(Frame::Ping { id }))) => {
                    assert_eq!(bytes.len(), DEFAULT_MAGIC.len() + 25);
                    self.pings[to.unwrap()] = Some(id);
                }
                (kind, parsed) => panic!("{kind:?} written as {parsed:?}"),
            }
        }
        assert!(self.tokens_sent <= 1, "the bare token goes out once");
    }

    /// Lets `ms` pass, firing each deadline when it falls due.
    fn wait(&mut self, ms: u64) {
        let until = self.now + Duration::from_millis(ms);
        loop {
            let at = self
                .core
                .poll_timeout()
                .expect("the resume rule never ends");
            assert!(
                at > self.now,
                "a deadline at or before now would spin the shell"
            );
            assert!(
                at - self.now <= self.cfg.resume.keepalive.max(self.cfg.probe_for),
                "never asleep longer than the keepalive"
            );
            if at > until {
                break;
            }
            self.now = at;
            self.core.handle_timeout(at);
            self.drain();
        }
        self.now = until;
    }

    fn apply(&mut self, op: &Op) {
        let before = self.core.stats();
        match op {
            Op::Wait(ms) => self.wait(*ms),
            Op::Data(i) => {
                let from = self.from(*i);
                let got = self.core.handle_datagram(self.now, from, b"state");
                if got == Incoming::Data {
                    assert_eq!(from, self.core.remote());
                    assert!(!self.core.is_probing());
                    assert_eq!(self.core.silent_for(self.now), Duration::ZERO);
                }
            }
            Op::Challenge(i, nonce) => {
                let mut f = [0u8; MAX_CONTROL_LEN];
                let n = frames::write_challenge(&mut f, DEFAULT_MAGIC, nonce);
                let from = self.from(*i);
                let got = self.core.handle_datagram(self.now, from, &f[..n]);
                assert_ne!(got, Incoming::Data, "a challenge is never game data");
                if from == self.stranger {
                    assert!(matches!(got, Incoming::Dropped(_)));
                }
            }
            Op::Pong(i, held) => {
                let id = self.pings.get(*i).copied().flatten().unwrap_or([9; 8]);
                let mut f = [0u8; MAX_CONTROL_LEN];
                let n = frames::write_pong(&mut f, DEFAULT_MAGIC, &id, 1_000, 1_000 + held);
                let got = self.core.handle_datagram(self.now, self.from(*i), &f[..n]);
                assert_ne!(got, Incoming::Data, "a PONG is never game data");
                if let Incoming::Pong { from, .. } = got {
                    assert_eq!(from, self.from(*i));
                    self.pings[*i] = None;
                }
            }
            Op::Garbage(i, bytes) => {
                let mut d = DEFAULT_MAGIC.to_vec();
                d.extend_from_slice(bytes);
                let from = self.from(*i);
                let got = self.core.handle_datagram(self.now, from, &d);
                assert_ne!(got, Incoming::Challenge);
            }
            Op::Switch => {
                self.token = if self.token == TOKEN { OTHER } else { TOKEN };
                self.core
                    .switch(self.now, self.token, Duration::from_secs(600))
                    .unwrap();
            }
            Op::Ping => self.core.ping(self.now),
        }
        self.drain();
        let after = self.core.stats();
        assert!(after.resumes >= before.resumes && after.failovers >= before.failovers);
        assert!(after.failovers <= after.resumes);
        if self.directors.len() == 1 {
            assert_eq!(after.failovers, 0);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    #[test]
    fn the_core_keeps_its_promises_under_any_sequence(
        n in 1usize..4,
        ops in proptest::collection::vec(op(3), 1..60),
    ) {
        let directors: Vec<SocketAddr> =
            (0..n).map(|i| SocketAddr::from(([127, 0, 0, 1], 7000 + i as u16))).collect();
        let now = Instant::now();
        let cfg = Config { seed: 7, ..Config::default() };
        let core = Core::new(&directors, TOKEN, Duration::from_secs(30), cfg.clone(), now).unwrap();
        let mut w = World {
            core,
            directors,
            stranger: "127.0.0.1:1".parse().unwrap(),
            now,
            pings: vec![None; n],
            tokens_sent: 0,
            token: TOKEN,
            cfg,
        };
        w.drain();
        for op in &ops {
            w.apply(&op.clone());
        }
        // Whatever happened, a minute later the token has gone out and the session is not
        // left waiting for PONGs.
        w.wait(60_000);
        prop_assert!(!w.core.is_probing());
        prop_assert_eq!(w.tokens_sent, 1);
    }
}
