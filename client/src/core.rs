//! The client's data-port logic as a state machine without sockets or clocks (sans-IO, the
//! quinn-proto way): the shell feeds it what arrived ([`Core::handle_datagram`]) and the
//! passing of time ([`Core::handle_timeout`]), each with an injected `now`, and drains what to
//! send ([`Core::poll_transmit`]) and when to wake up ([`Core::poll_timeout`]). Game datagrams
//! never pass through it: the shell sends them to [`Core::remote`] itself, and hands received
//! ones to the game when the core says [`Incoming::Data`].
//!
//! What it decides, and when:
//!
//! | event | decision |
//! | --- | --- |
//! | created with one director address | send the token to it |
//! | created with several | PING each; when all answered or `probe_for` passed, send the token to the nearest (lowest RTT; unanswered ones rank last, in the given order) |
//! | nothing heard from the game server (through the director) for `resume.silence`, and again every `silence` while quiet | `[magic][token]` to the director in use (re-opens the session on a replica that lost it); with several addresses, also a PING to it |
//! | `resume.keepalive` since the last `[magic][token]` | `[magic][token]` (keeps NAT and load-balancer flows alive) |
//! | the shell moved to a new local address ([`Core::rebound`]: Wi-Fi to cellular) | `[magic][token]` to the director in use at once (the director challenges the new address, the RESPONSE completes the handover; no new query) |
//! | several addresses and `failover_after` (3 s) with nothing heard and no PONG from the director in use | move to the next address in RTT order (wrapping) and send `[magic][token]` there |
//! | CHALLENGE from a director address (after the token left) | RESPONSE with its nonce and the token, to that address (at most 4 waiting) |
//! | PONG matching the last PING to that address | an RTT sample: (now − sent) − (director's send − receive time) |
//! | anything else from the director in use | game data |
//! | from any other source | dropped (never handed to the game) |
//!
//! A token is what [`crate::frames::is_token`] accepts, a magic 1..=32 bytes; both checked
//! once, so every frame fits [`MAX_CONTROL_LEN`] and encoding cannot fail.
//!
//! Owns the client's timers and choices. Must not touch sockets or read the clock.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::Resume;
use crate::frames::{self, Frame, MAX_CONTROL_LEN, MAX_MAGIC_LEN, NONCE_LEN, PING_ID_LEN};

/// How many RESPONSEs may wait to be sent; more CHALLENGEs are dropped (a director sends at
/// most 10 a second to one IP, and the shell drains the queue after every datagram).
const MAX_PENDING_RESPONSES: usize = 4;

/// How the core behaves. `Default` is the SPEC's client: default magic, resume after 500 ms
/// of silence and every 5 s, fail over after 3 s, wait up to 500 ms for PONGs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The director's `controlPacketMagicBytes` (1..=32 bytes).
    pub magic: Vec<u8>,
    pub resume: Resume,
    /// With several director addresses: silence (no game data, no PONG from the director in
    /// use) after which the next address is tried (SPEC §3: 3 s).
    pub failover_after: Duration,
    /// With several director addresses: how long to wait for their PONGs before choosing.
    pub probe_for: Duration,
    /// Seeds the 8-byte PING ids (the shell passes a random one, tests a fixed one).
    pub seed: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            magic: frames::DEFAULT_MAGIC.to_vec(),
            resume: Resume::default(),
            failover_after: Duration::from_secs(3),
            probe_for: Duration::from_millis(500),
            seed: 0,
        }
    }
}

/// Why a core cannot be made or given a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CoreError {
    /// No director address was given.
    NoDirector,
    /// The token is not 1..=128 printable ASCII bytes.
    BadToken,
    /// The magic is not 1..=32 bytes.
    BadMagic,
}

impl std::fmt::Display for CoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CoreError::NoDirector => "expected at least one director data address, got none",
            CoreError::BadToken => "expected a token of 1..=128 printable ASCII bytes",
            CoreError::BadMagic => "expected a magic of 1..=32 bytes",
        })
    }
}

impl std::error::Error for CoreError {}

/// One datagram to send: the first `len` bytes of the buffer given to
/// [`Core::poll_transmit`], to `destination`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transmit {
    pub destination: SocketAddr,
    pub len: usize,
    pub kind: TransmitKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransmitKind {
    /// The bare token: opens the session.
    Token,
    /// `[magic][token]`: resume, keepalive, switch or failover.
    Resume,
    /// `[magic] 0x02 [nonce] [token]`: the answer to a CHALLENGE.
    Response,
    /// `[magic] 0x03 [id] [zeros]`.
    Ping,
}

/// What a received datagram was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Incoming {
    /// Game data from the director in use: hand it to the game.
    Data,
    /// A CHALLENGE: a RESPONSE is waiting in [`Core::poll_transmit`].
    Challenge,
    /// A PONG: a round-trip time to `from`.
    Pong { from: SocketAddr, rtt: Duration },
    /// Not for the game, and nothing to do.
    Dropped(Dropped),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dropped {
    /// From an address that is none of the directors'.
    Stranger,
    /// Game data from a director address not in use (before a failover, or while probing),
    /// or a CHALLENGE while probing (no token has been sent yet).
    NotCurrent,
    /// A PONG that answers no PING in flight.
    UnknownPong,
    /// A CHALLENGE while [`MAX_PENDING_RESPONSES`] RESPONSEs were still waiting.
    ChallengeFlood,
}

/// Counters a game may show or log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// `[magic][token]` sent by the resume rule and by failovers.
    pub resumes: u64,
    pub failovers: u64,
    pub challenges_answered: u64,
    pub pongs: u64,
    pub dropped: u64,
}

#[derive(Debug, Clone)]
struct Director {
    addr: SocketAddr,
    /// Smoothed round-trip time (RFC 6298's 7/8 + 1/8), once a PONG came.
    rtt: Option<Duration>,
    /// The PING in flight: its id, and when it left (set by `poll_transmit`).
    ping: Option<([u8; PING_ID_LEN], Option<Instant>)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    Token(SocketAddr),
    Resume(SocketAddr),
    Response(SocketAddr, [u8; NONCE_LEN]),
    Ping(SocketAddr),
}

/// The client side of one session (see the module header).
#[derive(Debug, Clone)]
pub struct Core {
    cfg: Config,
    token: Vec<u8>,
    granted: Instant,
    reopen_for: Duration,
    directors: Vec<Director>,
    current: usize,
    /// Some while waiting for PONGs to choose a director.
    probe_until: Option<Instant>,
    /// Last game datagram from the director in use.
    last_heard: Instant,
    /// Last PONG from the director in use.
    last_alive: Instant,
    /// Last `[magic][token]` or token sent by the rule (or the open).
    last_resume: Instant,
    /// Last choice or failover.
    last_move: Instant,
    queue: VecDeque<Pending>,
    pings: u64,
    stats: Stats,
}

impl Core {
    /// A session with `token`, which may re-open it for `reopen_for` (the grant's resume
    /// window, or its TTL for uuid tokens), through the first reachable of `directors` (data
    /// port addresses, in order of preference when none answers a PING).
    pub fn new(
        directors: &[SocketAddr],
        token: &[u8],
        reopen_for: Duration,
        cfg: Config,
        now: Instant,
    ) -> Result<Self, CoreError> {
        if directors.is_empty() {
            return Err(CoreError::NoDirector);
        }
        if !frames::is_token(token) {
            return Err(CoreError::BadToken);
        }
        if cfg.magic.is_empty() || cfg.magic.len() > MAX_MAGIC_LEN {
            return Err(CoreError::BadMagic);
        }
        let mut unique: Vec<Director> = Vec::with_capacity(directors.len());
        for &addr in directors {
            if !unique.iter().any(|d| d.addr == addr) {
                unique.push(Director {
                    addr,
                    rtt: None,
                    ping: None,
                });
            }
        }
        let directors = unique;
        let mut core = Self {
            cfg,
            token: token.to_vec(),
            granted: now,
            reopen_for,
            directors,
            current: 0,
            probe_until: None,
            last_heard: now,
            last_alive: now,
            last_resume: now,
            last_move: now,
            queue: VecDeque::new(),
            pings: 0,
            stats: Stats::default(),
        };
        if core.directors.len() == 1 {
            core.queue.push_back(Pending::Token(core.directors[0].addr));
        } else {
            core.probe_until = Some(now + core.cfg.probe_for);
            core.ping(now);
        }
        core.check_invariants();
        Ok(core)
    }

    /// Where game datagrams go now (while probing: the first address given).
    pub fn remote(&self) -> SocketAddr {
        self.directors[self.current].addr
    }

    /// Still waiting for PONGs before choosing a director (no token sent yet).
    pub fn is_probing(&self) -> bool {
        self.probe_until.is_some()
    }

    pub fn token(&self) -> &[u8] {
        &self.token
    }

    pub fn magic(&self) -> &[u8] {
        &self.cfg.magic
    }

    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// The director addresses in their current order of preference (after probing: by RTT),
    /// each with its smoothed RTT once a PONG came.
    pub fn directors(&self) -> impl Iterator<Item = (SocketAddr, Option<Duration>)> + '_ {
        self.directors.iter().map(|d| (d.addr, d.rtt))
    }

    /// How long since game data last came through the director in use.
    pub fn silent_for(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.last_heard)
    }

    /// The token can no longer re-open the session: query again and [`Core::switch`].
    pub fn needs_query(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.granted) >= self.reopen_for
    }

    /// Moves the session to the target of a new token (same socket, same director).
    pub fn switch(
        &mut self,
        now: Instant,
        token: &[u8],
        reopen_for: Duration,
    ) -> Result<(), CoreError> {
        if !frames::is_token(token) {
            return Err(CoreError::BadToken);
        }
        self.token.clear();
        self.token.extend_from_slice(token);
        self.granted = now;
        self.reopen_for = reopen_for;
        if self.probe_until.is_none() {
            self.queue_once(Pending::Resume(self.remote()));
            self.last_resume = now;
        }
        self.check_invariants();
        Ok(())
    }

    /// The shell now sends from another local address (a phone moved from Wi-Fi to cellular,
    /// or the socket was re-created): `[magic][token]` goes to the director in use at once,
    /// which challenges the new address and moves (or re-opens) the session when the
    /// RESPONSE comes back, without a new query while the token's window lasts.
    pub fn rebound(&mut self, now: Instant) {
        if self.probe_until.is_none() {
            // Challenges sent to the old address can no longer be answered from here.
            self.queue.retain(|p| !matches!(p, Pending::Response(..)));
            self.last_resume = now;
            self.stats.resumes += 1;
            self.queue_once(Pending::Resume(self.remote()));
        }
        self.check_invariants();
    }

    /// Queues a PING to every director address (a new one replaces one still in flight);
    /// the answers come back as [`Incoming::Pong`] and in [`Core::directors`].
    pub fn ping(&mut self, _now: Instant) {
        for i in 0..self.directors.len() {
            self.queue_ping(i);
        }
    }

    /// Reads one datagram that arrived from `from`.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, datagram: &[u8]) -> Incoming {
        let incoming = self.classify(now, from, datagram);
        if let Incoming::Dropped(_) = incoming {
            self.stats.dropped += 1;
        }
        self.check_invariants();
        incoming
    }

    fn classify(&mut self, now: Instant, from: SocketAddr, datagram: &[u8]) -> Incoming {
        let Some(i) = self.directors.iter().position(|d| d.addr == from) else {
            return Incoming::Dropped(Dropped::Stranger);
        };
        match frames::parse(datagram, &self.cfg.magic) {
            Ok(Some(Frame::Challenge { nonce })) => {
                // No token has left while probing: no director can have a reason to ask
                // for proof of it, and the token goes out only to the chosen one.
                if self.probe_until.is_some() {
                    return Incoming::Dropped(Dropped::NotCurrent);
                }
                let waiting = self
                    .queue
                    .iter()
                    .filter(|p| matches!(p, Pending::Response(..)))
                    .count();
                if waiting >= MAX_PENDING_RESPONSES {
                    return Incoming::Dropped(Dropped::ChallengeFlood);
                }
                self.queue.push_back(Pending::Response(from, nonce));
                Incoming::Challenge
            }
            Ok(Some(Frame::Pong {
                id,
                receive_ns,
                send_ns,
            })) => self.pong(now, i, id, receive_ns, send_ns),
            // Everything else from the director, even bytes behind the magic that are no frame
            // a director sends, is the game server's: the director forwards it verbatim.
            _ => {
                if self.probe_until.is_some() || i != self.current {
                    return Incoming::Dropped(Dropped::NotCurrent);
                }
                self.last_heard = now;
                Incoming::Data
            }
        }
    }

    fn pong(
        &mut self,
        now: Instant,
        i: usize,
        id: [u8; PING_ID_LEN],
        receive_ns: u64,
        send_ns: u64,
    ) -> Incoming {
        let d = &mut self.directors[i];
        let Some((_, Some(sent))) = d.ping.filter(|(expected, _)| *expected == id) else {
            return Incoming::Dropped(Dropped::UnknownPong);
        };
        d.ping = None;
        let held = Duration::from_nanos(send_ns.saturating_sub(receive_ns));
        let sample = now.saturating_duration_since(sent).saturating_sub(held);
        d.rtt = Some(match d.rtt {
            None => sample,
            Some(srtt) => (srtt * 7 + sample) / 8,
        });
        let from = d.addr;
        self.stats.pongs += 1;
        if self.probe_until.is_some() {
            if self.directors.iter().all(|d| d.rtt.is_some()) {
                self.choose(now);
            }
        } else if i == self.current {
            self.last_alive = now;
        }
        Incoming::Pong { from, rtt: sample }
    }

    /// When [`Core::handle_timeout`] has something to do next. Changes after every call of
    /// `handle_datagram`, `handle_timeout`, `switch` and `ping`; a shell asks again after
    /// each. Always `Some`: the resume rule never ends.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        if let Some(until) = self.probe_until {
            return Some(until);
        }
        let r = self.cfg.resume;
        let resume =
            (self.last_heard.max(self.last_resume) + r.silence).min(self.last_resume + r.keepalive);
        Some(match self.failover_at() {
            Some(at) => resume.min(at),
            None => resume,
        })
    }

    fn failover_at(&self) -> Option<Instant> {
        (self.directors.len() > 1).then(|| {
            self.last_heard.max(self.last_alive).max(self.last_move) + self.cfg.failover_after
        })
    }

    /// Applies the timers at `now` (early calls are harmless: nothing is due).
    pub fn handle_timeout(&mut self, now: Instant) {
        if let Some(until) = self.probe_until {
            if now >= until {
                self.choose(now);
            }
        } else if self.failover_at().is_some_and(|at| now >= at) {
            self.current = (self.current + 1) % self.directors.len();
            self.last_move = now;
            self.last_resume = now;
            self.stats.failovers += 1;
            self.stats.resumes += 1;
            self.queue_once(Pending::Resume(self.remote()));
        } else {
            let since_heard = now.saturating_duration_since(self.last_heard);
            let since_sent = now.saturating_duration_since(self.last_resume);
            if self.cfg.resume.due(since_heard, since_sent) {
                self.last_resume = now;
                self.stats.resumes += 1;
                self.queue_once(Pending::Resume(self.remote()));
                // Silent: is the director itself still there? A PONG says yes and holds off
                // the failover; only worth asking when there is somewhere to fail over to.
                if self.directors.len() > 1 && since_heard >= self.cfg.resume.silence {
                    self.queue_ping(self.current);
                }
            }
        }
        self.check_invariants();
    }

    /// The next datagram to send, written into `buf`; `None` when nothing waits. Call until
    /// `None` after every `handle_*`, `switch` and `ping`.
    pub fn poll_transmit(
        &mut self,
        now: Instant,
        buf: &mut [u8; MAX_CONTROL_LEN],
    ) -> Option<Transmit> {
        let pending = self.queue.pop_front()?;
        let magic = &self.cfg.magic;
        let (destination, len, kind) = match pending {
            Pending::Token(to) => (
                to,
                frames::write_token(buf, &self.token),
                TransmitKind::Token,
            ),
            Pending::Resume(to) => (
                to,
                frames::write_resume(buf, magic, &self.token),
                TransmitKind::Resume,
            ),
            Pending::Response(to, nonce) => {
                self.stats.challenges_answered += 1;
                (
                    to,
                    frames::write_response(buf, magic, &nonce, &self.token),
                    TransmitKind::Response,
                )
            }
            Pending::Ping(to) => {
                let ping = self
                    .directors
                    .iter_mut()
                    .find(|d| d.addr == to)
                    .and_then(|d| d.ping.as_mut());
                let id = match ping {
                    Some((id, sent)) => {
                        *sent = Some(now);
                        *id
                    }
                    None => unreachable_ping_id(),
                };
                (to, frames::write_ping(buf, magic, &id), TransmitKind::Ping)
            }
        };
        Some(Transmit {
            destination,
            len,
            kind,
        })
    }

    /// Orders the directors by RTT (unanswered last, in the given order), takes the first
    /// and sends it the token.
    fn choose(&mut self, now: Instant) {
        self.probe_until = None;
        self.directors
            .sort_by_key(|d| (d.rtt.is_none(), d.rtt.unwrap_or_default()));
        // Pings still waiting were for the old order; their answers are not needed.
        self.queue.retain(|p| !matches!(p, Pending::Ping(_)));
        for d in &mut self.directors {
            d.ping = None;
        }
        self.current = 0;
        self.last_heard = now;
        self.last_alive = now;
        self.last_resume = now;
        self.last_move = now;
        self.queue.push_back(Pending::Token(self.directors[0].addr));
    }

    fn queue_ping(&mut self, i: usize) {
        self.pings += 1;
        let id = splitmix64(self.cfg.seed.wrapping_add(self.pings)).to_be_bytes();
        self.directors[i].ping = Some((id, None));
        self.queue_once(Pending::Ping(self.directors[i].addr));
    }

    fn queue_once(&mut self, p: Pending) {
        if !self.queue.contains(&p) {
            self.queue.push_back(p);
        }
    }

    /// What every public mutation keeps (debug builds only).
    fn check_invariants(&self) {
        debug_assert!(self.current < self.directors.len());
        debug_assert!(frames::is_token(&self.token));
        debug_assert!(
            self.queue
                .iter()
                .filter(|p| matches!(p, Pending::Response(..)))
                .count()
                <= MAX_PENDING_RESPONSES
        );
        debug_assert!(self.queue.iter().all(|p| {
            match p {
                Pending::Ping(to) => self
                    .directors
                    .iter()
                    .any(|d| d.addr == *to && d.ping.is_some()),
                Pending::Token(to) | Pending::Resume(to) | Pending::Response(to, _) => {
                    self.directors.iter().any(|d| d.addr == *to)
                }
            }
        }));
        debug_assert!(
            self.probe_until.is_none()
                || !self.queue.iter().any(|p| matches!(p, Pending::Token(_)))
        );
    }
}

/// A queued PING always has its id set (`queue_ping` sets both); should that ever not hold,
/// an all-zero id is sent and its PONG is simply not recognised.
fn unreachable_ping_id() -> [u8; PING_ID_LEN] {
    [0; PING_ID_LEN]
}

/// SplitMix64: well-spread ids from a seed and a counter (not a secret: a PONG only carries
/// an RTT, and an id only tells this client's PONGs from stray ones).
fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests;
