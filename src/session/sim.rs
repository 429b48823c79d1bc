//! One operation model of a worker's session table, shared by the property test
//! (`session/tests.rs`, proptest strategies) and the fuzz target (`fuzz/fuzz_targets/session.rs`,
//! `arbitrary`): both build [`Op`] sequences and hand them to [`Sim::step`].
//!
//! A [`Sim`] is one table with a real token store, a real ledger and (optionally) a default
//! endpoint over eight static targets, on a virtual clock. Every datagram goes through
//! [`SessionTable::on_client_datagram`] / [`SessionTable::on_target_datagram`], exactly as the
//! shell sends it, and the [`Decision`] is checked against a small model of which client has
//! a session to which target, holding which token, opened how and answered or not; after
//! every step the table's own invariants, the cap, the per-IP cap and the ledger's counts are
//! checked too. Tokens are bound to the IP they were issued to and 40 clients share 8 IPs, so
//! forged sources (another IP with someone's token, the same IP from many ports) are part of
//! every run: the model demands at most one session per token and that a token newcomer finds
//! a place in a full table whenever a default-endpoint or unanswered session could yield.
//! A violation is returned as text, never panicked on here, so each driver fails its own way.
//!
//! Owns the simulation and its model. Must not be built into the director (test and `sim` feature only).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::{
    CloseReason, Closed, Decision, DropReason, Ledger, Rules, SessionTable, SocketId, ToTarget,
};
use crate::model::Target;
use crate::model::{ClientBinding, Policy, TokenFormat, TokenId};
use crate::resolve::SessionCounts;
use crate::token::TokenStore;

/// Targets the simulation knows: 0..6 on 127.0.0.1, 6..8 on ::1.
pub const TARGETS: u8 = 8;
/// Client addresses the simulation uses.
pub const CLIENTS: u8 = 40;
const MAGIC: &[u8] = b"\xff\xff\xff\xffRESET";
const TOKEN_TTL: Duration = Duration::from_secs(30);
const UNANSWERED: Duration = Duration::from_secs(5);
/// Sessions one client IP may hold (8 IPs × 4 ≥ any cap the drivers use).
pub const PER_IP: usize = 4;

/// What a client sends.
#[derive(Debug, Clone)]
#[cfg_attr(feature = "sim", derive(arbitrary::Arbitrary))]
pub enum Payload {
    /// Game traffic of `len + 1` bytes (never token-shaped).
    Data { len: u16 },
    /// Nothing at all.
    Empty,
    /// The `nth` issued token, bare (optionally padded with whitespace).
    Token { nth: u8, padded: bool },
    /// `[magic][nth issued token]`.
    Reset { nth: u8 },
    /// A token-shaped datagram that was never issued, bare or as a reset.
    Forged { bits: u128, reset: bool },
    /// The magic followed by bytes that are not a token.
    MalformedReset { tail: u8 },
}

/// One step of the simulation.
#[derive(Debug, Clone)]
#[cfg_attr(feature = "sim", derive(arbitrary::Arbitrary))]
pub enum Op {
    /// The query server issues a token for target `target % TARGETS` to the IP of client
    /// `client % CLIENTS`.
    Issue {
        target: u8,
        client: u8,
    },
    /// Client `client % CLIENTS` sends a datagram to the data port.
    FromClient {
        client: u8,
        payload: Payload,
    },
    /// Target `target % TARGETS` sends `len` bytes to upstream socket slot `slot`.
    FromTarget {
        slot: u8,
        target: u8,
        len: u16,
    },
    /// The shell could not open (or lost) the upstream socket of this client's session.
    SocketFailed {
        client: u8,
    },
    Advance {
        millis: u32,
    },
    Expire,
    /// Sessions opened from now on get this idle timeout (1..=30 s).
    SetTimeout {
        seconds: u8,
    },
    /// SIGTERM: no new sessions from now on.
    Drain,
}

#[derive(Debug, Clone, Copy)]
struct Modelled {
    target: u8,
    last: Instant,
    created: Instant,
    timeout: Duration,
    /// The token key it holds.
    token: Option<u128>,
    default: bool,
    answered: bool,
}

impl Modelled {
    fn deadline(&self) -> Instant {
        let idle = self.last + self.timeout;
        if self.answered {
            idle
        } else {
            idle.min(self.created + UNANSWERED)
        }
    }

    fn yields(&self) -> bool {
        self.default || !self.answered
    }
}

/// An issued token: its id, target, expiry and the IP it is bound to.
#[derive(Debug, Clone, Copy)]
struct Issued {
    id: TokenId,
    target: u8,
    expires: Instant,
    ip: std::net::IpAddr,
}

/// What redeeming a datagram's token should do.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// Redeems: to this target, as this token key.
    Redeems(u8, u128),
    Expired,
    /// Issued to another IP.
    Wrong,
    /// Never issued.
    Forged,
}

impl Expect {
    /// Whether a refused token may be dropped for `reason` (an expired grant is forgotten
    /// once seen, so it may come back as unknown).
    fn drops_as(self, reason: DropReason) -> bool {
        match self {
            Expect::Redeems(..) => false,
            Expect::Expired => {
                matches!(reason, DropReason::ExpiredToken | DropReason::InvalidToken)
            }
            Expect::Wrong => reason == DropReason::WrongClient,
            Expect::Forged => reason == DropReason::InvalidToken,
        }
    }
}

/// A table, its token store and ledger, and the model they are checked against.
pub struct Sim {
    table: SessionTable,
    ledger: Arc<Ledger>,
    tokens: TokenStore,
    issued: Vec<Issued>,
    model: HashMap<SocketAddr, Modelled>,
    cap: usize,
    default_endpoint: bool,
    draining: bool,
    now: Instant,
}

/// The address of simulated target `n`.
pub fn target_addr(n: u8) -> SocketAddr {
    let n = n % TARGETS;
    let port = 9_000 + u16::from(n);
    if n < 6 {
        SocketAddr::from(([127, 0, 0, 1], port))
    } else {
        SocketAddr::from(([0, 0, 0, 0, 0, 0, 0, 1], port))
    }
}

fn target_of(addr: SocketAddr) -> Option<u8> {
    (0..TARGETS).find(|n| target_addr(*n) == addr)
}

/// The address of simulated client `n`.
pub fn client_addr(n: u8) -> SocketAddr {
    let n = n % CLIENTS;
    SocketAddr::from(([10, 0, 0, n % 8], 40_000 + u16::from(n)))
}

fn target(n: u8) -> Arc<Target> {
    Arc::new(Target::new(
        "sim",
        "default",
        &format!("t{}", n % TARGETS),
        target_addr(n),
    ))
}

impl Sim {
    /// A table admitting at most `cap` sessions, with 60 s idle timeouts, and a default
    /// endpoint (leastSessions over all eight targets) when `default_endpoint`.
    pub fn new(cap: usize, default_endpoint: bool) -> Result<Self, String> {
        let ledger = Arc::new(Ledger::new());
        let default_route = if default_endpoint {
            let mut yaml = String::from(
                "defaultEndpoint: {resourceType: sim}\nresourceQueryMapping:\n  sim:\n    static:\n",
            );
            for n in 0..TARGETS {
                let a = target_addr(n);
                yaml.push_str(&format!(
                    "      - {{name: t{n}, address: \"{}\", port: {}}}\n",
                    a.ip(),
                    a.port()
                ));
            }
            let config = crate::config::ValidConfig::from_yaml(&yaml).map_err(|e| e.to_string())?;
            let watchers = crate::resolve::kube::Watchers::new(
                crate::k8s::Connect::Infer,
                Default::default(),
                Default::default(),
            );
            let resolver = crate::resolve::Resolver::new(&config, &watchers);
            let query = config
                .default_endpoint
                .as_ref()
                .ok_or("no default endpoint in the sim config")?;
            Some(Arc::new(
                resolver
                    .default_route(query)
                    .ok_or("the default endpoint names no mapping")?,
            ))
        } else {
            None
        };
        let rules = Rules {
            magic: MAGIC.to_vec(),
            format: TokenFormat::Uuid,
            session_timeout: Duration::from_secs(60),
            max_sessions: cap,
            max_per_client_ip: PER_IP,
            unanswered_timeout: UNANSWERED,
            default_route,
            // Every token here names one of the eight targets; tests.rs covers the refusal.
            known: Arc::new(crate::model::KnownTargets::everywhere()),
        };
        Ok(Self {
            table: SessionTable::new(rules, Arc::clone(&ledger)),
            ledger,
            tokens: TokenStore::new(10_000),
            issued: Vec::new(),
            model: HashMap::new(),
            cap,
            default_endpoint,
            draining: false,
            now: Instant::now(),
        })
    }

    pub fn table(&self) -> &SessionTable {
        &self.table
    }

    /// Applies one operation and checks everything that must hold afterwards.
    pub fn step(&mut self, op: &Op) -> Result<(), String> {
        match op {
            Op::Issue { target: t, client } => {
                let ip = client_addr(*client).ip();
                let policy = Policy {
                    ttl: TOKEN_TTL,
                    resume: TOKEN_TTL,
                    single_use: false,
                    binding: ClientBinding::Ip,
                };
                let id = self.tokens.issue(target(*t), ip, self.now, policy);
                self.issued.push(Issued {
                    id,
                    target: *t % TARGETS,
                    expires: self.now + TOKEN_TTL,
                    ip,
                });
            }
            Op::FromClient { client, payload } => {
                self.client_sends(client_addr(*client), payload)?
            }
            Op::FromTarget {
                slot,
                target: t,
                len,
            } => self.target_sends(*slot, *t, *len)?,
            Op::SocketFailed { client } => {
                let addr = client_addr(*client);
                if let Some(id) = self.table.lookup(&addr) {
                    self.socket_failed(addr, id)?;
                }
            }
            Op::Advance { millis } => self.now += Duration::from_millis(u64::from(*millis)),
            Op::Expire => self.expire()?,
            Op::SetTimeout { seconds } => {
                let mut rules = self.table.rules().clone();
                rules.session_timeout = Duration::from_secs(u64::from(seconds % 30) + 1);
                self.table.set_rules(rules);
            }
            Op::Drain => {
                self.ledger.begin_drain();
                self.draining = true;
            }
        }
        self.check()
    }

    /// Expires everything and checks the table, ledger and sockets end empty.
    pub fn finish(&mut self) -> Result<(), String> {
        self.now += Duration::from_secs(3_600);
        self.expire()?;
        if !self.table.is_empty() || self.ledger.active() != 0 || self.table.open_sockets() != 0 {
            return Err(format!(
                "after every timeout: {} sessions, {} admitted, {} sockets",
                self.table.len(),
                self.ledger.active(),
                self.table.open_sockets()
            ));
        }
        if self.ledger.targets() != 0 {
            return Err("per-target counts left behind".into());
        }
        Ok(())
    }

    fn client_sends(&mut self, client: SocketAddr, payload: &Payload) -> Result<(), String> {
        // What the datagram is, and the model's expectation of a redeem.
        let (bytes, redeems, is_reset): (Vec<u8>, Option<Expect>, bool) = match payload {
            Payload::Data { len } => {
                let n = usize::from(*len % 2_000) + 1;
                (vec![b'g'; n], None, false)
            }
            Payload::Empty => (Vec::new(), None, false),
            Payload::Token { nth, padded } => match self.issued.get(usize::from(*nth)).copied() {
                Some(issued) => {
                    let mut b = issued.id.to_wire().into_bytes();
                    if *padded {
                        b.insert(0, b' ');
                        b.push(b'\n');
                    }
                    (b, Some(self.expected_redeem(&issued, client)), false)
                }
                None => (vec![b'n'; 3], None, false),
            },
            Payload::Reset { nth } => match self.issued.get(usize::from(*nth)).copied() {
                Some(issued) => (
                    [MAGIC, issued.id.to_wire().as_bytes()].concat(),
                    Some(self.expected_redeem(&issued, client)),
                    true,
                ),
                None => ([MAGIC, b"x"].concat(), None, true),
            },
            Payload::Forged { bits, reset } => {
                let wire = TokenId(*bits).to_wire();
                let issued = self.issued.iter().any(|i| i.id.0 == *bits);
                if issued {
                    (vec![b'f'], None, false)
                } else if *reset {
                    (
                        [MAGIC, wire.as_bytes()].concat(),
                        Some(Expect::Forged),
                        true,
                    )
                } else {
                    (wire.into_bytes(), Some(Expect::Forged), false)
                }
            }
            Payload::MalformedReset { tail } => ([MAGIC, &[*tail, b'?'][..]].concat(), None, true),
        };
        let malformed = is_reset && redeems.is_none();
        let had = self.model.get(&client).copied();
        let decision = self
            .table
            .decide_client(client, &bytes, self.now, &self.tokens);
        let mut closed: Vec<Closed> = Vec::new();
        let mut wake = Vec::new();
        self.table.take_effects(&mut closed, &mut wake);
        let fail = |why: &str| {
            Err(format!(
                "{payload:?} from {client} (session {had:?}): {why}, got {decision:?}"
            ))
        };
        if !wake.is_empty() {
            return fail("one worker has nobody to wake");
        }
        if is_reset
            && matches!(
                decision,
                Decision::Forward(_) | Decision::Open { first: Some(_), .. }
            )
        {
            return fail("a reset datagram was forwarded");
        }
        // The side closes the model expects (checked against `closed` at the end).
        let mut expect_closed: Vec<(SocketAddr, Option<CloseReason>)> = Vec::new();
        if bytes.is_empty() {
            return match decision {
                Decision::Drop(DropReason::Empty) if closed.is_empty() => Ok(()),
                _ => fail("an empty datagram must be dropped"),
            };
        }
        if malformed {
            return match decision {
                Decision::Drop(DropReason::MalformedReset) if closed.is_empty() => Ok(()),
                Decision::Drop(DropReason::Draining)
                    if had.is_none() && self.draining && closed.is_empty() =>
                {
                    Ok(())
                }
                _ => fail("malformed resets are dropped"),
            };
        }
        match had {
            Some(mut s) => {
                match (redeems, decision.clone()) {
                    (Some(Expect::Redeems(t, key)), d) => {
                        match d {
                            Decision::Keep if t == s.target => {}
                            Decision::Reset { id } if t != s.target => {
                                let (_, now_to, _) =
                                    self.table.describe(id).ok_or("reset lost the session")?;
                                if now_to.addr != target_addr(t) {
                                    return fail("reset to the wrong target");
                                }
                                s.target = t;
                            }
                            _ => return fail("a redeemed token keeps or resets a live session"),
                        }
                        if let Some(other) = self.holder(key).filter(|c| *c != client) {
                            self.model.remove(&other);
                            expect_closed.push((other, Some(CloseReason::Moved)));
                        }
                        s.token = Some(key);
                        s.last = self.now;
                    }
                    (Some(e), Decision::Drop(reason)) if is_reset && e.drops_as(reason) => {}
                    (_, Decision::Forward(ToTarget { to, .. }))
                        if !is_reset && to == target_addr(s.target) =>
                    {
                        s.last = self.now;
                    }
                    _ => return fail("wrong decision for a live session"),
                }
                self.model.insert(client, s);
            }
            None => {
                let full = self.model.len() >= self.cap;
                let ip_full = self.sessions_of(client.ip()) >= PER_IP;
                let default = self.default_endpoint && !is_reset;
                let yieldable = self.model.values().any(Modelled::yields);
                if self.draining {
                    return match decision {
                        Decision::Drop(DropReason::Draining) if closed.is_empty() => Ok(()),
                        _ => fail("a newcomer while draining is refused as draining"),
                    };
                }
                let opened: Option<Modelled> = match (redeems, decision.clone()) {
                    (Some(Expect::Redeems(_, key)), Decision::Moved { id, from }) => {
                        if self.holder(key) != Some(from) {
                            return fail("moved a session that does not hold the token");
                        }
                        let (c, _, _) = self.table.describe(id).ok_or("moved session missing")?;
                        if c != client {
                            return fail("the moved session is not the newcomer's");
                        }
                        let m = self.model.remove(&from).ok_or("no model session to move")?;
                        Some(m)
                    }
                    (Some(Expect::Redeems(..)), Decision::Drop(DropReason::ClientIpCap))
                        if ip_full =>
                    {
                        None
                    }
                    (Some(Expect::Redeems(..)), Decision::Drop(DropReason::SessionCap))
                        if full && !yieldable && !ip_full =>
                    {
                        None
                    }
                    (
                        Some(Expect::Redeems(t, key)),
                        Decision::Open {
                            id,
                            first: None,
                            redeemed: true,
                        },
                    ) if !ip_full => {
                        if self.holder(key).is_some() {
                            return fail("a second session for one token");
                        }
                        if full {
                            // Exactly one yielding session gave its place.
                            let [victim] = closed.as_slice() else {
                                return fail("a full table opened without one session yielding");
                            };
                            let m = self
                                .model
                                .remove(&victim.client)
                                .ok_or("yielded a session the model does not have")?;
                            let want = if m.default {
                                CloseReason::YieldedDefault
                            } else {
                                CloseReason::YieldedUnanswered
                            };
                            if !m.yields() || victim.reason != want {
                                return fail("the wrong session yielded");
                            }
                            expect_closed.push((victim.client, None));
                        }
                        self.check_opened(id, client, t)?;
                        Some(self.fresh(t, Some(key), false))
                    }
                    (Some(e), Decision::Drop(reason)) if !default && e.drops_as(reason) => None,
                    (
                        None | Some(Expect::Expired | Expect::Wrong | Expect::Forged),
                        Decision::Drop(DropReason::ClientIpCap),
                    ) if default && ip_full => None,
                    (
                        None | Some(Expect::Expired | Expect::Wrong | Expect::Forged),
                        Decision::Drop(DropReason::SessionCap),
                    ) if default && full && !ip_full => None,
                    (
                        None | Some(Expect::Expired | Expect::Wrong | Expect::Forged),
                        Decision::Open {
                            id,
                            first: Some(ToTarget { to, .. }),
                            redeemed: false,
                        },
                    ) if default && !full && !ip_full => {
                        let t = target_of(to).ok_or("default endpoint sent outside its targets")?;
                        self.check_opened(id, client, t)?;
                        Some(self.fresh(t, None, true))
                    }
                    (None, Decision::Drop(DropReason::NoSession)) if !default => None,
                    _ => return fail("wrong decision for a newcomer"),
                };
                if let Some(m) = opened {
                    self.model.insert(client, m);
                }
            }
        }
        let got: Vec<(SocketAddr, CloseReason)> =
            closed.iter().map(|c| (c.client, c.reason)).collect();
        let matches = got.len() == expect_closed.len()
            && got
                .iter()
                .zip(&expect_closed)
                .all(|((c, r), (ec, er))| c == ec && er.is_none_or(|er| er == *r));
        if !matches {
            return fail(&format!(
                "closed on the side {got:?}, expected {expect_closed:?}"
            ));
        }
        Ok(())
    }

    /// The model's view of redeeming `issued` from `client` now.
    fn expected_redeem(&self, issued: &Issued, client: SocketAddr) -> Expect {
        if self.now >= issued.expires {
            Expect::Expired
        } else if issued.ip != client.ip() {
            Expect::Wrong
        } else {
            Expect::Redeems(issued.target, issued.id.0)
        }
    }

    /// The client whose modelled session holds token `key`.
    fn holder(&self, key: u128) -> Option<SocketAddr> {
        self.model
            .iter()
            .find(|(_, m)| m.token == Some(key))
            .map(|(c, _)| *c)
    }

    fn sessions_of(&self, ip: std::net::IpAddr) -> usize {
        self.model.keys().filter(|c| c.ip() == ip).count()
    }

    fn fresh(&self, target: u8, token: Option<u128>, default: bool) -> Modelled {
        Modelled {
            target,
            last: self.now,
            created: self.now,
            timeout: self.table.rules().session_timeout,
            token,
            default,
            answered: false,
        }
    }

    fn check_opened(&self, id: super::SessionId, client: SocketAddr, t: u8) -> Result<(), String> {
        let (c, to, _) = self.table.describe(id).ok_or("opened session missing")?;
        if c != client || to.addr != target_addr(t) {
            return Err(format!("opened the wrong session for {client}"));
        }
        Ok(())
    }

    fn target_sends(&mut self, slot: u8, t: u8, len: u16) -> Result<(), String> {
        let from = target_addr(t);
        let socket = SocketId {
            v6: from.is_ipv6(),
            index: u32::from(slot % 12),
        };
        let len = usize::from(len % 1_500) + 1;
        // The client the table must deliver to: the one whose session to `from` is bound on
        // `socket` (at most one, by the socket-sharing rule).
        let bound: Vec<SocketAddr> = self
            .model
            .iter()
            .filter(|(_, m)| target_addr(m.target) == from)
            .filter_map(|(c, _)| {
                let id = self.table.lookup(c)?;
                let (_, _, s) = self.table.describe(id)?;
                (s == socket).then_some(*c)
            })
            .collect();
        let decision = self.table.decide_target(socket, from, len, self.now);
        match (bound.as_slice(), decision.clone()) {
            ([], Decision::Drop(DropReason::UnknownSource)) => Ok(()),
            ([c], Decision::Deliver { client }) if *c == client => {
                if let Some(m) = self.model.get_mut(c) {
                    m.last = self.now;
                    m.answered = true;
                }
                Ok(())
            }
            _ => Err(format!(
                "from target {from} on {socket:?}: bound to {bound:?}, got {decision:?}"
            )),
        }
    }

    /// The shell could not open a session's socket: a token session may take a yielding
    /// session's socket once; the second failure closes it (`upstream_error`).
    fn socket_failed(&mut self, addr: SocketAddr, id: super::SessionId) -> Result<(), String> {
        let (_, _, socket) = self.table.describe(id).ok_or("no description")?;
        self.table.on_socket_failed(socket, id, self.now);
        self.table.on_socket_failed(socket, id, self.now);
        let closed = self.table.take_closed();
        if !closed
            .iter()
            .any(|c| c.client == addr && c.reason == CloseReason::UpstreamError)
        {
            return Err(format!("{addr}'s socket failed twice but it did not close"));
        }
        for c in &closed {
            let m = self
                .model
                .remove(&c.client)
                .ok_or_else(|| format!("closed {} which has no session", c.client))?;
            let yielded = matches!(
                c.reason,
                CloseReason::YieldedDefault | CloseReason::YieldedUnanswered
            );
            if c.client != addr && !(yielded && m.yields()) {
                return Err(format!(
                    "{} closed as {:?} for {addr}'s socket",
                    c.client, c.reason
                ));
            }
        }
        Ok(())
    }

    fn expire(&mut self) -> Result<(), String> {
        self.table.expire(self.now);
        let out = self.table.take_closed();
        for closed in &out {
            let m = self
                .model
                .remove(&closed.client)
                .ok_or_else(|| format!("expired {} which has no session", closed.client))?;
            if m.deadline() > self.now {
                return Err(format!("closed {} while active", closed.client));
            }
            let unanswered = !m.answered && m.created + UNANSWERED < m.last + m.timeout;
            let want = if unanswered {
                CloseReason::Unanswered
            } else {
                CloseReason::Idle
            };
            if closed.reason != want {
                return Err(format!(
                    "{} closed as {:?}, not {want:?}",
                    closed.client, closed.reason
                ));
            }
        }
        if let Some((c, _)) = self.model.iter().find(|(_, m)| m.deadline() <= self.now) {
            return Err(format!("{c} past its deadline survived expire"));
        }
        Ok(())
    }

    fn check(&self) -> Result<(), String> {
        self.table.check_invariants();
        let n = self.table.len();
        if n != self.model.len() || self.ledger.active() != n {
            return Err(format!(
                "table {n}, model {}, ledger {}",
                self.model.len(),
                self.ledger.active()
            ));
        }
        if n > self.cap {
            return Err(format!("{n} sessions over a cap of {}", self.cap));
        }
        for host in 0..8u8 {
            let ip = std::net::IpAddr::from([10, 0, 0, host]);
            let modelled = self.sessions_of(ip);
            if modelled > PER_IP || self.ledger.sessions_of_ip(ip) != modelled {
                return Err(format!(
                    "{ip}: {modelled} sessions, ledger {}",
                    self.ledger.sessions_of_ip(ip)
                ));
            }
        }
        let tokens = self.model.values().filter(|m| m.token.is_some()).count();
        if self.ledger.claimed() != tokens {
            return Err(format!(
                "{tokens} token sessions, ledger claims {}",
                self.ledger.claimed()
            ));
        }
        if self.table.open_sockets() > n {
            return Err("more sockets than sessions".into());
        }
        for t in 0..TARGETS {
            let modelled = self.model.values().filter(|m| m.target == t).count();
            if self.ledger.sessions_to(&target_addr(t)) != modelled {
                return Err(format!("ledger count for target {t} is off"));
            }
        }
        for (c, m) in &self.model {
            let id = self
                .table
                .lookup(c)
                .ok_or("a modelled session is missing")?;
            let (_, to, _) = self.table.describe(id).ok_or("no description")?;
            if to.addr != target_addr(m.target) {
                return Err(format!("{c} goes to {} not target {}", to.addr, m.target));
            }
        }
        Ok(())
    }
}
