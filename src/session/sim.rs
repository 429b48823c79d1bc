//! One operation model of a worker's session table, shared by the property test
//! (`session/tests.rs`, proptest strategies) and the fuzz target (`fuzz/fuzz_targets/session.rs`,
//! `arbitrary`): both build [`Op`] sequences and hand them to [`Sim::step`].
//!
//! A [`Sim`] is one table with a real token store, a real ledger and (optionally) a default
//! endpoint over eight static targets, on a virtual clock. Every datagram goes through
//! [`SessionTable::on_client_datagram`] / [`SessionTable::on_target_datagram`], exactly as the
//! shell sends it, and the [`Decision`] is checked against a small model of which client has
//! a session to which target; after every step the table's own invariants, the cap and the
//! ledger's counts are checked too. A violation is returned as text, never panicked on here,
//! so each driver fails its own way.
//!
//! Owns the simulation and its model. Must not be built into the director (test and `sim` feature only).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::{Decision, DropReason, Ledger, Rules, SessionTable, SocketId};
use crate::resolve::{SessionCounts, Target};
use crate::token::{TokenId, TokenStore};

/// Targets the simulation knows: 0..6 on 127.0.0.1, 6..8 on ::1.
pub const TARGETS: u8 = 8;
/// Client addresses the simulation uses.
pub const CLIENTS: u8 = 40;
const MAGIC: &[u8] = b"\xff\xff\xff\xffRESET";
const TOKEN_TTL: Duration = Duration::from_secs(30);

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
    /// The query server issues a token for target `target % TARGETS`.
    Issue {
        target: u8,
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
    timeout: Duration,
}

/// A table, its token store and ledger, and the model they are checked against.
pub struct Sim {
    table: SessionTable,
    ledger: Arc<Ledger>,
    tokens: TokenStore,
    issued: Vec<(TokenId, u8, Instant)>,
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
                crate::resolve::kube::Connect::Infer,
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
            session_timeout: Duration::from_secs(60),
            max_sessions: cap,
            default_route,
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
            Op::Issue { target: t } => {
                let id = self.tokens.issue(target(*t), self.now, TOKEN_TTL, false);
                self.issued.push((id, *t % TARGETS, self.now + TOKEN_TTL));
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
                    let closed = self
                        .table
                        .close(id, super::CloseReason::UpstreamError, self.now)
                        .ok_or("a looked-up session did not close")?;
                    if closed.client != addr {
                        return Err(format!("closed {} instead of {addr}", closed.client));
                    }
                    self.model.remove(&addr);
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
        // What the datagram is, and the model's expectation of a redeem: Some(Ok(target)),
        // Some(Err(expired)) for a token that will not redeem.
        let (bytes, redeems, is_reset): (Vec<u8>, Option<Result<u8, bool>>, bool) = match payload {
            Payload::Data { len } => {
                let n = usize::from(*len % 2_000) + 1;
                (vec![b'g'; n], None, false)
            }
            Payload::Empty => (Vec::new(), None, false),
            Payload::Token { nth, padded } => match self.issued.get(usize::from(*nth)) {
                Some(&(id, t, expires)) => {
                    let mut b = id.to_wire().into_bytes();
                    if *padded {
                        b.insert(0, b' ');
                        b.push(b'\n');
                    }
                    (b, Some(self.expected_redeem(t, expires)), false)
                }
                None => (vec![b'n'; 3], None, false),
            },
            Payload::Reset { nth } => match self.issued.get(usize::from(*nth)) {
                Some(&(id, t, expires)) => (
                    [MAGIC, id.to_wire().as_bytes()].concat(),
                    Some(self.expected_redeem(t, expires)),
                    true,
                ),
                None => ([MAGIC, b"x"].concat(), None, true),
            },
            Payload::Forged { bits, reset } => {
                let wire = TokenId(*bits).to_wire();
                let issued = self.issued.iter().any(|(id, _, _)| id.0 == *bits);
                if issued {
                    (vec![b'f'], None, false)
                } else if *reset {
                    ([MAGIC, wire.as_bytes()].concat(), Some(Err(false)), true)
                } else {
                    (wire.into_bytes(), Some(Err(false)), false)
                }
            }
            Payload::MalformedReset { tail } => ([MAGIC, &[*tail, b'?'][..]].concat(), None, true),
        };
        let malformed = is_reset && redeems.is_none();
        let had = self.model.get(&client).copied();
        let decision = self
            .table
            .on_client_datagram(client, &bytes, self.now, &self.tokens);
        let fail = |why: &str| {
            Err(format!(
                "{payload:?} from {client} (session {had:?}): {why}, got {decision:?}"
            ))
        };
        if is_reset
            && matches!(
                decision,
                Decision::Forward { .. }
                    | Decision::Open {
                        forward: Some(_),
                        ..
                    }
            )
        {
            return fail("a reset datagram was forwarded");
        }
        if bytes.is_empty() {
            return match decision {
                Decision::Drop(DropReason::Empty) => Ok(()),
                _ => fail("an empty datagram must be dropped"),
            };
        }
        if malformed {
            return match decision {
                Decision::Drop(DropReason::MalformedReset) => Ok(()),
                Decision::Drop(DropReason::Draining) if had.is_none() && self.draining => Ok(()),
                _ => fail("malformed resets are dropped"),
            };
        }
        match had {
            Some(mut s) => {
                match (redeems, decision) {
                    (Some(Ok(t)), Decision::Keep) if t == s.target => {}
                    (Some(Ok(t)), Decision::Reset { id, binding, .. }) if t != s.target => {
                        let (_, now_to, socket) =
                            self.table.describe(id).ok_or("reset lost the session")?;
                        if now_to.addr != target_addr(t) || socket != binding.socket {
                            return fail("reset to the wrong target or socket");
                        }
                        s.target = t;
                    }
                    (
                        Some(Err(_)),
                        Decision::Drop(DropReason::InvalidToken | DropReason::ExpiredToken),
                    ) if is_reset => {}
                    (None | Some(Err(_)), Decision::Forward { to, .. })
                        if !is_reset && to == target_addr(s.target) => {}
                    _ => return fail("wrong decision for a live session"),
                }
                if matches!(
                    decision,
                    Decision::Keep | Decision::Reset { .. } | Decision::Forward { .. }
                ) {
                    s.last = self.now;
                }
                self.model.insert(client, s);
            }
            None => {
                let full = self.model.len() >= self.cap;
                let default = self.default_endpoint && !is_reset;
                if self.draining && decision != Decision::Drop(DropReason::Draining) {
                    return fail("a newcomer while draining is refused as draining");
                }
                let expected_target = match (redeems, decision) {
                    (_, Decision::Drop(DropReason::Draining)) if self.draining => None,
                    (Some(Ok(_)), Decision::Drop(DropReason::SessionCap)) if full => None,
                    (
                        Some(Ok(t)),
                        Decision::Open {
                            forward: None,
                            redeemed: true,
                            ..
                        },
                    ) if !full => Some(t),
                    (
                        Some(Err(_)),
                        Decision::Drop(DropReason::InvalidToken | DropReason::ExpiredToken),
                    ) if !default => None,
                    (
                        None | Some(Err(_)),
                        Decision::Open {
                            forward: Some(to),
                            redeemed: false,
                            ..
                        },
                    ) if default && !full => {
                        Some(target_of(to).ok_or("default endpoint sent outside its targets")?)
                    }
                    (None | Some(Err(_)), Decision::Drop(DropReason::SessionCap))
                        if default && full =>
                    {
                        None
                    }
                    (None, Decision::Drop(DropReason::NoSession)) if !default => None,
                    _ => return fail("wrong decision for a newcomer"),
                };
                if self.draining && expected_target.is_some() {
                    return fail("a session opened while draining");
                }
                if let Some(t) = expected_target {
                    let Decision::Open { id, .. } = decision else {
                        return fail("opened without an id");
                    };
                    let (c, to, _) = self.table.describe(id).ok_or("opened session missing")?;
                    if c != client || to.addr != target_addr(t) {
                        return fail("opened the wrong session");
                    }
                    self.model.insert(
                        client,
                        Modelled {
                            target: t,
                            last: self.now,
                            timeout: self.table.rules().session_timeout,
                        },
                    );
                }
            }
        }
        Ok(())
    }

    /// The model's view of redeeming issued token for `t` that expires at `expires`.
    fn expected_redeem(&self, t: u8, expires: Instant) -> Result<u8, bool> {
        if self.now < expires { Ok(t) } else { Err(true) }
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
        let decision = self.table.on_target_datagram(socket, from, len, self.now);
        match (bound.as_slice(), decision) {
            ([], Decision::Drop(DropReason::UnknownSource)) => Ok(()),
            ([c], Decision::Deliver { client }) if *c == client => {
                if let Some(m) = self.model.get_mut(c) {
                    m.last = self.now;
                }
                Ok(())
            }
            _ => Err(format!(
                "from target {from} on {socket:?}: bound to {bound:?}, got {decision:?}"
            )),
        }
    }

    fn expire(&mut self) -> Result<(), String> {
        let mut out = Vec::new();
        self.table.expire(self.now, &mut out);
        for closed in &out {
            let m = self
                .model
                .remove(&closed.client)
                .ok_or_else(|| format!("expired {} which has no session", closed.client))?;
            if m.last + m.timeout > self.now {
                return Err(format!("closed {} while active", closed.client));
            }
        }
        if let Some((c, _)) = self
            .model
            .iter()
            .find(|(_, m)| m.last + m.timeout <= self.now)
        {
            return Err(format!("{c} idle past its timeout survived expire"));
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
