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
//! Proof of address is modelled too: a token that needs proof is challenged (within the
//! per-network budget, counted per budget slot and second), and any client may answer any
//! challenge sent so far, with the right or another token, a garbled nonce, or late; no
//! session changes address but by a proof, nothing the director sends an unproved address
//! (challenge, PONG, replies to a default-endpoint session) is larger than what came from it.
//! A violation is returned as text, never panicked on here, so each driver fails its own way.
//!
//! Owns the simulation and its model. Must not be built into the director (test and `sim` feature only).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::{
    CloseReason, Closed, Decision, DropReason, Ledger, Output, Rules, SessionTable, SocketId,
    ToTarget,
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
    /// A RESPONSE to the `nth` challenge sent so far (by whichever client sends it), with
    /// that challenge's token or the `token`th issued one, its nonce garbled or not.
    Response {
        nth: u8,
        token: Option<u8>,
        garbled: bool,
    },
    /// A PING, one byte short when `short`.
    Ping { short: bool },
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
    /// The client the `nth` challenge went to answers it (with a garbled nonce when
    /// `garbled`).
    Answer {
        nth: u8,
        garbled: bool,
    },
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
    /// Bytes its client sent, and bytes delivered to it (amplification of a default session).
    bytes_in: u64,
    bytes_out: u64,
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
    /// Redeems: to this target, as this token key; `bound` when the sender's IP is the one
    /// it was issued to (otherwise only after proof of address).
    Redeems(u8, u128, bool),
    Expired,
    /// Never issued.
    Forged,
}

/// A challenge the table sent.
#[derive(Debug, Clone, Copy)]
struct Challenged {
    client: SocketAddr,
    /// Index in `issued` of the token it was for.
    issued: usize,
    nonce: [u8; 16],
    at: Instant,
}

/// Challenges and PONGs sent to one client network per second at most.
const PER_NET: u32 = super::proof::PER_NET_PER_SECOND;

impl Expect {
    /// Whether a refused token may be dropped for `reason` (an expired grant is forgotten
    /// once seen, so it may come back as unknown).
    fn drops_as(self, reason: DropReason) -> bool {
        match self {
            Expect::Redeems(..) => false,
            Expect::Expired => {
                matches!(reason, DropReason::ExpiredToken | DropReason::InvalidToken)
            }
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
    /// When the simulation started (the proofs' clock origin).
    start: Instant,
    challenges: Vec<Challenged>,
    /// The kernel fast path's map as the table's outputs filled it: session → its legs.
    kernel: HashMap<super::SessionId, super::Legs>,
    /// (budget, slot, second) → challenges or PONGs sent; budget 0: a network's
    /// challenges, 1: its PONGs, 2: a token's challenges outside its bound IP.
    budget: HashMap<(u8, usize, u64), u32>,
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
        let start = Instant::now();
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
            proofs: Arc::new(crate::session::Proofs::new(
                b"a test secret, thirty-two bytes.",
                start,
                2_000,
                5_000,
            )),
            amplification: 3,
        };
        let mut table = SessionTable::new(rules, Arc::clone(&ledger));
        table.set_fast_path(true);
        Ok(Self {
            table,
            ledger,
            tokens: TokenStore::new(10_000),
            issued: Vec::new(),
            model: HashMap::new(),
            cap,
            default_endpoint,
            draining: false,
            now: start,
            start,
            challenges: Vec::new(),
            budget: HashMap::new(),
            kernel: HashMap::new(),
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
            Op::Answer { nth, garbled } => {
                if !self.challenges.is_empty() {
                    let c = self.challenges[usize::from(*nth) % self.challenges.len()];
                    let payload = Payload::Response {
                        nth: *nth,
                        token: None,
                        garbled: *garbled,
                    };
                    self.client_sends(c.client, &payload)?;
                }
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
        let mut response: Option<(Option<Challenged>, usize, bool)> = None;
        let mut ping: Option<bool> = None;
        let mut token_of: Option<usize> = None;
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
                    token_of = Some(usize::from(*nth));
                    (b, Some(self.expected_redeem(&issued, client)), false)
                }
                None => (vec![b'n'; 3], None, false),
            },
            Payload::Reset { nth } => match self.issued.get(usize::from(*nth)).copied() {
                Some(issued) => {
                    token_of = Some(usize::from(*nth));
                    (
                        [MAGIC, issued.id.to_wire().as_bytes()].concat(),
                        Some(self.expected_redeem(&issued, client)),
                        true,
                    )
                }
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
            Payload::Response {
                nth,
                token,
                garbled,
            } => {
                if self.issued.is_empty() {
                    return Ok(());
                }
                let challenge = (!self.challenges.is_empty())
                    .then(|| self.challenges[usize::from(*nth) % self.challenges.len()]);
                let which = match (token, challenge) {
                    (Some(n), _) => usize::from(*n) % self.issued.len(),
                    (None, Some(c)) => c.issued,
                    (None, None) => 0,
                };
                let mut nonce = challenge.map_or([0; 16], |c| c.nonce);
                if *garbled {
                    nonce[15] ^= 1;
                }
                let issued = self.issued[which];
                response = Some((challenge, which, *garbled));
                (
                    [MAGIC, &[0x02], &nonce, issued.id.to_wire().as_bytes()].concat(),
                    Some(self.expected_redeem(&issued, client)),
                    true,
                )
            }
            Payload::Ping { short } => {
                ping = Some(*short);
                let b = [MAGIC, &[0x03], b"pingping", &[0u8; 16]].concat();
                let n = b.len() - usize::from(*short);
                (b[..n].to_vec(), None, true)
            }
        };
        let malformed = is_reset && redeems.is_none() && ping.is_none();
        let had = self.model.get(&client).copied();
        let decision = self
            .table
            .decide_client(client, &bytes, self.now, &self.tokens);
        let (closed, wake) = self.drain()?;
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
        if matches!(decision, Decision::Moved { .. }) && response.is_none() {
            return fail("a session changed address without a proof");
        }
        // Nothing sent to an address that has proved nothing is larger than what it sent.
        let answer_len = match decision {
            Decision::Challenge { .. } => {
                MAGIC.len() + crate::protocol::datagram::CHALLENGE_BODY_LEN
            }
            Decision::Pong { .. } => MAGIC.len() + crate::protocol::datagram::PONG_BODY_LEN,
            _ => 0,
        };
        if answer_len > bytes.len() {
            return fail("answered with more bytes than the datagram had");
        }
        if let Some(short) = ping {
            let expected_ok = !short && !self.draining && self.take_budget(client, true, None);
            return match decision {
                Decision::Drop(DropReason::ShortPing) if short => Ok(()),
                Decision::Drop(DropReason::Draining) if !short && self.draining => Ok(()),
                Decision::Pong { client: to, id, .. }
                    if expected_ok && to == client && &id == b"pingping" =>
                {
                    Ok(())
                }
                Decision::Drop(DropReason::PingOverBudget) if !short && !self.draining => {
                    if expected_ok {
                        fail("a ping within the budget was refused")
                    } else {
                        Ok(())
                    }
                }
                _ => fail("a ping is answered within its budget or dropped"),
            }
            .and_then(|()| {
                if closed.is_empty() {
                    Ok(())
                } else {
                    Err("a ping closed a session".into())
                }
            });
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
            let short_ping = matches!(payload, Payload::MalformedReset { tail: 3 });
            return match decision {
                Decision::Drop(DropReason::MalformedReset) if closed.is_empty() && !short_ping => {
                    Ok(())
                }
                Decision::Drop(DropReason::ShortPing) if closed.is_empty() && short_ping => Ok(()),
                Decision::Drop(DropReason::Draining)
                    if had.is_none() && self.draining && closed.is_empty() =>
                {
                    Ok(())
                }
                _ => fail("malformed resets are dropped"),
            };
        }
        if had.is_none() && self.draining {
            return match decision {
                Decision::Drop(DropReason::Draining) if closed.is_empty() => Ok(()),
                _ => fail("a newcomer while draining is refused as draining"),
            };
        }
        if let Some((challenge, which, garbled)) = response {
            let key = self.issued[which].id.0;
            let target = self.issued[which].target;
            return match (redeems, decision.clone()) {
                (Some(e @ (Expect::Expired | Expect::Forged)), Decision::Drop(reason))
                    if e.drops_as(reason) =>
                {
                    Ok(())
                }
                (Some(Expect::Redeems(..)), d) => {
                    let proves = challenge.filter(|c| {
                        !garbled && c.client == client && self.issued[c.issued].id.0 == key
                    });
                    match (proves, d) {
                        (None, Decision::Drop(DropReason::BadResponse)) => Ok(()),
                        (Some(c), Decision::Drop(DropReason::LateResponse))
                            if self.millis(self.now) - self.millis(c.at) > 2_000 =>
                        {
                            Ok(())
                        }
                        (Some(c), d) if self.millis(self.now) - self.millis(c.at) <= 2_000 => {
                            let opened = self.redeemed(
                                client,
                                had,
                                (target, key),
                                &d,
                                &closed,
                                &mut expect_closed,
                            );
                            match opened {
                                Ok(Some(m)) => {
                                    self.model.insert(client, m);
                                    self.closed_as_expected(&closed, &expect_closed)
                                        .or_else(|why| fail(&why))
                                }
                                Ok(None) => self
                                    .closed_as_expected(&closed, &expect_closed)
                                    .or_else(|why| fail(&why)),
                                Err(why) => fail(&why),
                            }
                        }
                        _ => fail("a response proves its token's address within 2 s, nothing else"),
                    }
                }
                _ => fail("wrong decision for a response"),
            };
        }
        // A token that redeems but needs proof: challenged, and nothing changes.
        if let Some(Expect::Redeems(_, key, bound)) = redeems {
            let own = had.is_some_and(|s| s.token == Some(key));
            let held_elsewhere = self.holder(key).is_some_and(|h| h != client);
            if !own && (!bound || held_elsewhere) {
                let within = self.take_budget(client, false, Some((key, bound)));
                return match decision {
                    Decision::Challenge { client: to, nonce } if within && to == client => {
                        self.challenges.push(Challenged {
                            client,
                            issued: token_of.ok_or("a challenge for no token")?,
                            nonce,
                            at: self.now,
                        });
                        Ok(())
                    }
                    Decision::Drop(DropReason::ChallengeOverBudget) if !within => Ok(()),
                    _ => fail("a token that needs proof is challenged within the budget"),
                }
                .and_then(|()| {
                    if closed.is_empty() {
                        Ok(())
                    } else {
                        Err("a challenge closed a session".into())
                    }
                });
            }
        }
        match had {
            Some(mut s) => {
                match (redeems, decision.clone()) {
                    (Some(Expect::Redeems(t, key, _)), d) => {
                        match self.redeemed(client, had, (t, key), &d, &closed, &mut expect_closed)
                        {
                            Ok(Some(m)) => s = m,
                            Ok(None) => return fail("a live session lost"),
                            Err(why) => return fail(&why),
                        }
                    }
                    (Some(e), Decision::Drop(reason)) if is_reset && e.drops_as(reason) => {}
                    (_, Decision::Forward(ToTarget { to, .. }))
                        if !is_reset && to == target_addr(s.target) =>
                    {
                        s.last = self.now;
                        s.bytes_in += bytes.len() as u64;
                    }
                    _ => return fail("wrong decision for a live session"),
                }
                self.model.insert(client, s);
            }
            None => {
                let full = self.model.len() >= self.cap;
                let ip_full = self.sessions_of(client.ip()) >= PER_IP;
                let default = self.default_endpoint && !is_reset;
                let opened: Option<Modelled> = match (redeems, decision.clone()) {
                    (Some(Expect::Redeems(t, key, _)), d) => {
                        match self.redeemed(client, had, (t, key), &d, &closed, &mut expect_closed)
                        {
                            Ok(m) => m,
                            Err(why) => return fail(&why),
                        }
                    }
                    (Some(e), Decision::Drop(reason)) if !default && e.drops_as(reason) => None,
                    (
                        None | Some(Expect::Expired | Expect::Forged),
                        Decision::Drop(DropReason::ClientIpCap),
                    ) if default && ip_full => None,
                    (
                        None | Some(Expect::Expired | Expect::Forged),
                        Decision::Drop(DropReason::SessionCap),
                    ) if default && full && !ip_full => None,
                    (
                        None | Some(Expect::Expired | Expect::Forged),
                        Decision::Open {
                            id,
                            first: Some(ToTarget { to, .. }),
                            redeemed: false,
                        },
                    ) if default && !full && !ip_full => {
                        let t = target_of(to).ok_or("default endpoint sent outside its targets")?;
                        self.check_opened(id, client, t)?;
                        let mut m = self.fresh(t, None, true);
                        m.bytes_in = bytes.len() as u64;
                        Some(m)
                    }
                    (None, Decision::Drop(DropReason::NoSession)) if !default => None,
                    _ => return fail("wrong decision for a newcomer"),
                };
                if let Some(m) = opened {
                    self.model.insert(client, m);
                }
            }
        }
        self.closed_as_expected(&closed, &expect_closed)
            .or_else(|why| fail(&why))
    }

    /// What a token for target `t` (key `key`) does once it needs no proof, or its proof
    /// completed: keeps or resets the client's session (the token's other holder closes as
    /// moved), moves the holder's session here, or opens one under the per-IP cap and the
    /// cap (for which a yielding session of the IP, or of the table, gives its place).
    /// Returns the client's modelled session afterwards.
    fn redeemed(
        &mut self,
        client: SocketAddr,
        had: Option<Modelled>,
        (t, key): (u8, u128),
        decision: &Decision,
        closed: &[Closed],
        expect_closed: &mut Vec<(SocketAddr, Option<CloseReason>)>,
    ) -> Result<Option<Modelled>, String> {
        if let Some(mut s) = had {
            match decision {
                Decision::Keep if t == s.target => {}
                Decision::Reset { id } if t != s.target => {
                    let (_, now_to, _) =
                        self.table.describe(*id).ok_or("reset lost the session")?;
                    if now_to.addr != target_addr(t) {
                        return Err("reset to the wrong target".into());
                    }
                    s.target = t;
                }
                _ => return Err("a redeemed token keeps or resets a live session".into()),
            }
            if let Some(other) = self.holder(key).filter(|c| *c != client) {
                self.model.remove(&other);
                expect_closed.push((other, Some(CloseReason::Moved)));
            }
            // Holding a token, a default-endpoint session is a token session.
            s.token = Some(key);
            s.default = false;
            s.last = self.now;
            return Ok(Some(s));
        }
        if let Some(holder) = self.holder(key) {
            let Decision::Moved { id, from } = decision else {
                return Err("the token's session moves to its proven address".into());
            };
            if holder != *from {
                return Err("moved a session that does not hold the token".into());
            }
            let (c, _, _) = self.table.describe(*id).ok_or("moved session missing")?;
            if c != client {
                return Err("the moved session is not the newcomer's".into());
            }
            return self
                .model
                .remove(from)
                .map(Some)
                .ok_or_else(|| "no model session to move".into());
        }
        let full = self.model.len() >= self.cap;
        let ip_full = self.sessions_of(client.ip()) >= PER_IP;
        let ip_yields = self
            .model
            .iter()
            .any(|(c, m)| c.ip() == client.ip() && m.yields());
        let yieldable = self.model.values().any(Modelled::yields);
        match decision {
            Decision::Drop(DropReason::ClientIpCap) if ip_full && !ip_yields => Ok(None),
            Decision::Drop(DropReason::SessionCap) if full && !ip_full && !yieldable => Ok(None),
            Decision::Open {
                id,
                first: None,
                redeemed: true,
            } if !ip_full || ip_yields => {
                if ip_full || full {
                    // Exactly one yielding session (of the IP when the IP is full) gave way.
                    let [victim] = closed else {
                        return Err("a full table or IP opened without one session yielding".into());
                    };
                    if ip_full && victim.client.ip() != client.ip() {
                        return Err("another IP's session yielded to the per-IP cap".into());
                    }
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
                        return Err("the wrong session yielded".into());
                    }
                    expect_closed.push((victim.client, None));
                }
                self.check_opened(*id, client, t)?;
                Ok(Some(self.fresh(t, Some(key), false)))
            }
            _ => Err("wrong decision for a token newcomer".into()),
        }
    }

    /// Checks the sessions closed on the side against the model's expectation.
    fn closed_as_expected(
        &self,
        closed: &[Closed],
        expect_closed: &[(SocketAddr, Option<CloseReason>)],
    ) -> Result<(), String> {
        let got: Vec<(SocketAddr, CloseReason)> =
            closed.iter().map(|c| (c.client, c.reason)).collect();
        let matches = got.len() == expect_closed.len()
            && got
                .iter()
                .zip(expect_closed)
                .all(|((c, r), (ec, er))| c == ec && er.is_none_or(|er| er == *r));
        if matches {
            Ok(())
        } else {
            Err(format!(
                "closed on the side {got:?}, expected {expect_closed:?}"
            ))
        }
    }

    fn millis(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.start).as_millis() as u64
    }

    /// Takes one challenge (or PONG, `ping`) from the budget of `client`'s network for this
    /// second, as the model counts it, and for a challenge outside the token's bound IP
    /// (`token: Some((key, false))`) from the token's too; false when one is spent.
    fn take_budget(&mut self, client: SocketAddr, ping: bool, token: Option<(u128, bool)>) -> bool {
        let proofs = Arc::clone(&self.table.rules().proofs);
        let net = self.ledger.net_of(client.ip());
        let second = self.millis(self.now) / 1_000;
        let mut take = |key: (u8, usize, u64), limit: u32| {
            let used = self.budget.entry(key).or_insert(0);
            if *used < limit {
                *used += 1;
                true
            } else {
                false
            }
        };
        take((u8::from(ping), proofs.slot_of(net), second), PER_NET)
            && match token {
                Some((key, false)) => take(
                    (2, proofs.token_slot_of(key), second),
                    super::proof::PER_TOKEN_PER_SECOND,
                ),
                _ => true,
            }
    }

    /// The model's view of redeeming `issued` from `client` now.
    fn expected_redeem(&self, issued: &Issued, client: SocketAddr) -> Expect {
        if self.now >= issued.expires {
            Expect::Expired
        } else {
            Expect::Redeems(issued.target, issued.id.0, issued.ip == client.ip())
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
            bytes_in: 0,
            bytes_out: 0,
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
        let (closed, _) = self.drain()?;
        if !closed.is_empty() {
            return Err(format!("a datagram from a target closed {closed:?}"));
        }
        // A default-endpoint client proved nothing: at most 3 × what it sent comes back.
        let over = |m: &Modelled| m.default && m.bytes_out + len as u64 > 3 * m.bytes_in;
        match (bound.as_slice(), decision.clone()) {
            ([], Decision::Drop(DropReason::UnknownSource)) => Ok(()),
            ([c], Decision::Deliver { client }) if *c == client => {
                if let Some(m) = self.model.get_mut(c) {
                    if over(m) {
                        return Err(format!("{c} was sent past 3 × what it sent"));
                    }
                    m.last = self.now;
                    m.answered = true;
                    m.bytes_out += len as u64;
                }
                Ok(())
            }
            ([c], Decision::Drop(DropReason::Amplification)) => match self.model.get_mut(c) {
                Some(m) if over(m) => {
                    m.answered = true;
                    Ok(())
                }
                _ => Err(format!(
                    "{c}'s reply dropped within its amplification budget"
                )),
            },
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
        let (closed, _) = self.drain()?;
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
        let (out, _) = self.drain()?;
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

    /// Takes the table's queued outputs: the sessions that ended and the workers to wake,
    /// after checking the fast-path entries among them against the map they fill (SPEC §8:
    /// an entry goes in once, comes out as it went in, and before its session's close).
    fn drain(&mut self) -> Result<(Vec<Closed>, Vec<u16>), String> {
        let mut out = Vec::new();
        self.table.take_outputs(&mut out);
        let (mut closed, mut wake) = (Vec::new(), Vec::new());
        for o in out {
            match o {
                Output::Closed(c) => {
                    if self.kernel.contains_key(&c.id) {
                        return Err(format!("{} closed with its legs in the kernel", c.client));
                    }
                    closed.push(*c);
                }
                Output::Wake(w) => wake.push(w),
                Output::FastPathAdd(legs) => {
                    if let Some(old) = self.kernel.insert(legs.id, legs) {
                        return Err(format!("{legs:?} added over {old:?}"));
                    }
                }
                Output::FastPathRemove(legs) => match self.kernel.remove(&legs.id) {
                    Some(old) if old == legs => {}
                    other => return Err(format!("{legs:?} removed, the map had {other:?}")),
                },
                _ => {}
            }
        }
        Ok((closed, wake))
    }

    /// Every entry of the kernel's map is a live, answered token session between the same
    /// client and target, over IPv4 (SPEC §8 "In the map").
    fn check_kernel(&self) -> Result<(), String> {
        for (id, legs) in &self.kernel {
            let (client, to, socket) = self
                .table
                .describe(*id)
                .ok_or_else(|| format!("{legs:?} of a session that is gone"))?;
            let m = self
                .model
                .get(&client)
                .ok_or_else(|| format!("{legs:?} of an unmodelled session"))?;
            let same = SocketAddr::V4(legs.client) == client
                && SocketAddr::V4(legs.target) == to.addr
                && legs.socket == socket;
            if !same || m.default || !m.answered {
                return Err(format!(
                    "{legs:?} in the kernel for {client} → {} ({m:?})",
                    to.addr
                ));
            }
        }
        Ok(())
    }

    fn check(&self) -> Result<(), String> {
        self.table.check_invariants();
        self.check_kernel()?;
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
