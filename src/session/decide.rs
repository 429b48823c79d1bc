//! One decision per datagram (SPEC §3): what the data plane does with a datagram from a
//! client or from a target, decided here and nowhere else.
//!
//! A client datagram is classified once (`protocol::datagram`), then:
//!
//! | client | datagram | decision |
//! | --- | --- | --- |
//! | any | empty | `Drop(Empty)` |
//! | any | PING of at least a PONG's length | `Pong` within the budgets (10/s per client network, `pingsPerSecond`), else `Drop(PingOverBudget)`; `Drop(Draining)` while draining |
//! | any | shorter PING | `Drop(ShortPing)` |
//! | has a session | data | `Forward` |
//! | has a session | token or `[magic][token]` held by this session | `Keep` (a keepalive: nothing forwarded) |
//! | has a session | token or `[magic][token]` that redeems and needs no proof | `Reset` to its target (`Keep` when it already goes to that address); a default-endpoint session holds the token from then on and is a token session |
//! | has a session | bare token-shaped data that does not redeem | `Forward` (game traffic that looks like a token) |
//! | has a session | `[magic][token]` that does not redeem | `Drop(InvalidToken / UnknownKey / ExpiredToken / ...)` |
//! | any | `[magic]` + anything but a token or a client frame | `Drop(MalformedReset)`, never forwarded |
//! | any | a token that redeems but needs proof of address | `Challenge` within the budgets (10/s per client network, `pathChallengesPerSecond`), else `Drop(ChallengeOverBudget)`; nothing changes |
//! | any | RESPONSE with a nonce made for its token and this address within 2 s | `Proved`, then what the token does without proof: `Reset`, `Moved` or `Open` |
//! | any | RESPONSE with any other nonce | `Drop(BadResponse / LateResponse)` |
//! | newcomer | anything while draining | `Drop(Draining)` |
//! | newcomer | token or `[magic][token]` that redeems and needs no proof | `Open` (admitted by the per-IP cap and the cap; when either is full, a default-endpoint or unanswered session of that network, or of the table, yields), nothing forwarded |
//! | newcomer | `[magic][token]` that does not redeem | `Drop(...)`: a reset is never forwarded |
//! | newcomer | data or a bare token that does not redeem, default endpoint set | per-IP cap and cap *first*, then `Open` towards the default route's pick, datagram forwarded |
//! | newcomer | a bare token that does not redeem, no default endpoint | `Drop(InvalidToken / ...)` |
//! | newcomer | data, no default endpoint | `Drop(NoSession)` |
//!
//! A token needs proof of address (SPEC §3 "Proof of address") when it already holds a live
//! session at another address (a NAT rebinding, or a forger), when the sender's IP is not the
//! one it is bound to (a handover within its resume window), or when tokens are not bound
//! (`tokenClientBinding: none`). The challenge's nonce is a pure function of a secret, the
//! token, the address and `now` ([`super::proof`]), so a RESPONSE is checked without any
//! stored challenge. A bare token from its bound IP with no live session opens at once.
//!
//! A bare token redeems within its TTL, `[magic][token]` within its resume window (sealed
//! tokens, `tokenResumeSeconds`). Each verdict is queued as an [`Output::Datagram`] after
//! what it did on the side (a session that yielded its place or whose token moved away
//! closed, a socket opened or closed, a worker holding a displaced session to wake), all in
//! the one queue the shell drains.
//!
//! A datagram from a target is `Deliver`ed to the client bound to that (socket, target) pair,
//! or dropped (`UnknownSource`; `Amplification` past `defaultEndpoint.amplification` times
//! what a default-endpoint client sent).
//!
//! Owns every decision about a datagram. Must not do I/O, resolve queries, read the clock or log.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::proof::{ProofError, Proofs};
use super::{Decision, DropReason, Origin, Output, SessionId, SessionTable, SocketId};
use crate::model::{Fit, Grant, KnownTargets, Refusal, Rejection, Spend, TokenFormat, Use};
use crate::protocol::datagram::{CHALLENGE_BODY_LEN, Datagram, NONCE_LEN, PING_ID_LEN, classify};
use crate::resolve::DefaultRoute;
use crate::token::Redeem;

/// What the table judges datagrams by; replaced whole on reload ([`SessionTable::set_rules`]).
#[derive(Debug, Clone)]
pub struct Rules {
    /// The reset magic (`controlPacketMagicBytes`), 1..=32 bytes.
    pub magic: Vec<u8>,
    /// The configured `tokenFormat` (what its tokens look like).
    pub format: TokenFormat,
    /// Idle timeout given to sessions opened from now on.
    pub session_timeout: Duration,
    /// `maxSessions`: newcomers past it are refused, but for a token newcomer, for which a
    /// default-endpoint or unanswered session yields.
    pub max_sessions: usize,
    /// `maxSessionsPerClientIp` (per IPv4 address, per IPv6 /64).
    pub max_per_client_ip: usize,
    /// `unansweredTimeoutSeconds`: a session opened from now on that has had no reply from
    /// its target closes after this.
    pub unanswered_timeout: Duration,
    /// Where tokenless newcomers go (`defaultEndpoint`), precomputed off the data path.
    pub default_route: Option<Arc<DefaultRoute>>,
    /// The targets a token may name (its mapping's addresses, `targetNetworks`).
    pub known: Arc<KnownTargets>,
    /// The process's proof secret and the challenge and ping budgets (kept across reloads).
    pub proofs: Arc<Proofs>,
    /// `defaultEndpoint.amplification`: a default-endpoint session is sent at most this many
    /// times the bytes its client sent.
    pub amplification: u32,
}

impl SessionTable {
    /// Input: one datagram from `client` on the data port; `handle` is the shell's name for
    /// it in its batch. Queues the verdict ([`Output::Datagram`]) after whatever it closed or
    /// opened on the side. See the module documentation for the whole table of outcomes.
    #[inline]
    pub fn on_client_datagram(
        &mut self,
        handle: u32,
        client: SocketAddr,
        datagram: &[u8],
        now: Instant,
        tokens: &dyn Redeem,
    ) {
        let decision = self.judge_client(client, datagram, now, tokens);
        self.out.push(Output::Datagram {
            datagram: handle,
            decision,
        });
    }

    /// Input: one datagram of `len` bytes that arrived on upstream socket `socket` from
    /// `from`; queues its verdict.
    #[inline]
    pub fn on_target_datagram(
        &mut self,
        handle: u32,
        socket: SocketId,
        from: SocketAddr,
        len: usize,
        now: Instant,
    ) {
        let decision = if len == 0 {
            Decision::Drop(DropReason::Empty)
        } else {
            match self.forward_from_target(socket, &from, len, now) {
                Ok(client) => Decision::Deliver { client },
                Err(reason) => Decision::Drop(reason),
            }
        };
        self.out.push(Output::Datagram {
            datagram: handle,
            decision,
        });
    }

    /// Opens a token as far as `spend` says and checks its target is one its mapping knows
    /// (one lookup per redeem, none per datagram): a token naming any other address is
    /// refused as `unknown_target`, whatever key sealed it.
    fn redeem(
        &self,
        tokens: &dyn Redeem,
        token: &[u8],
        client: SocketAddr,
        how: Use,
        now: Instant,
        spend: Spend,
    ) -> Result<Grant, Rejection> {
        let grant = tokens.open_token(token, client.ip(), how, now, spend)?;
        if self.rules.known.knows(&grant.target) {
            Ok(grant)
        } else {
            Err(Rejection::UnknownTarget)
        }
    }

    #[inline]
    fn judge_client(
        &mut self,
        client: SocketAddr,
        datagram: &[u8],
        now: Instant,
        tokens: &dyn Redeem,
    ) -> Decision {
        if datagram.is_empty() {
            return Decision::Drop(DropReason::Empty);
        }
        let kind = classify(datagram, &self.rules.magic, self.rules.format);
        let live = self.lookup(&client);
        match kind {
            Datagram::Data => match live {
                Some(id) => self.forward(id, datagram.len(), now),
                None if self.ledger.draining() => Decision::Drop(DropReason::Draining),
                None => self.open_default(client, datagram.len(), now),
            },
            Datagram::Token(token) => {
                self.judge_token(live, client, token, Use::Open, datagram.len(), now, tokens)
            }
            Datagram::Reset(token) => self.judge_token(
                live,
                client,
                token,
                Use::Resume,
                datagram.len(),
                now,
                tokens,
            ),
            Datagram::Response { nonce, token } => {
                self.judge_response(live, client, nonce, token, now, tokens)
            }
            Datagram::Ping { id } => self.pong(client, id, now),
            Datagram::ShortPing => Decision::Drop(DropReason::ShortPing),
            Datagram::MalformedReset => Decision::Drop(DropReason::MalformedReset),
        }
    }

    /// A bare token (`Use::Open`) or `[magic][token]` (`Use::Resume`) from `client`, whose
    /// session on this worker is `live`.
    #[allow(clippy::too_many_arguments)]
    fn judge_token(
        &mut self,
        live: Option<SessionId>,
        client: SocketAddr,
        token: &[u8],
        how: Use,
        len: usize,
        now: Instant,
        tokens: &dyn Redeem,
    ) -> Decision {
        if live.is_none() && self.ledger.draining() {
            return Decision::Drop(DropReason::Draining);
        }
        let grant = match self.redeem(tokens, token, client, how, now, Spend::Peek) {
            Ok(grant) => grant,
            Err(r) => {
                return match (live, how) {
                    // Token-shaped game traffic on a live session.
                    (Some(id), Use::Open) => self.forward(id, len, now),
                    // A reset is never forwarded, not even to a default endpoint (SPEC §3).
                    (_, Use::Resume) => Decision::Drop(r.into()),
                    (None, Use::Open) if self.rules.default_route.is_none() => {
                        Decision::Drop(r.into())
                    }
                    // Token-shaped game traffic from a tokenless client.
                    (None, Use::Open) => self.open_default(client, len, now),
                };
            }
        };
        if let Some(id) = live
            && self.session(id).is_some_and(|s| s.token == Some(grant.key))
        {
            // Its own token: a retransmission or keepalive.
            return self.reset_to(id, grant, now);
        }
        if self.needs_proof(&grant) {
            return self.challenge(client, &grant, len, now);
        }
        let grant = if grant.single_use {
            match self.redeem(tokens, token, client, how, now, Spend::IfBound) {
                Ok(grant) => grant,
                Err(r) => return Decision::Drop(r.into()),
            }
        } else {
            grant
        };
        match live {
            Some(id) => self.reset_to(id, grant, now),
            None => self.open_redeemed(client, grant, now),
        }
    }

    /// A token needs proof of address when it holds a live session elsewhere in this process
    /// (the caller has ruled out the sender's own), when the sender's IP is not its bound
    /// one, or when tokens are not bound.
    fn needs_proof(&self, grant: &Grant) -> bool {
        grant.fit != Fit::Bound || self.ledger.owner(grant.key).is_some()
    }

    /// Challenges `client` to prove it receives at its address, within the budgets (see
    /// [`Proofs::try_challenge`]: the token's bound IP draws on its network's only) and never
    /// with more bytes than the `len` it sent.
    fn challenge(
        &mut self,
        client: SocketAddr,
        grant: &Grant,
        len: usize,
        now: Instant,
    ) -> Decision {
        if self.rules.magic.len() + CHALLENGE_BODY_LEN > len {
            return Decision::Drop(DropReason::ChallengeTooLarge);
        }
        let proofs = &self.rules.proofs;
        let net = self.ledger.net_of(client.ip());
        if !proofs.try_challenge(net, grant.key, grant.fit == Fit::Bound, now) {
            return Decision::Drop(DropReason::ChallengeOverBudget);
        }
        Decision::Challenge {
            client,
            nonce: proofs.nonce(grant.key, client, now),
        }
    }

    /// A RESPONSE from `client`: when its nonce proves the address for its token, the token
    /// does what it does without proof (reset this client's session, move its session here,
    /// or open one).
    fn judge_response(
        &mut self,
        live: Option<SessionId>,
        client: SocketAddr,
        nonce: &[u8; NONCE_LEN],
        token: &[u8],
        now: Instant,
        tokens: &dyn Redeem,
    ) -> Decision {
        if live.is_none() && self.ledger.draining() {
            return Decision::Drop(DropReason::Draining);
        }
        let grant = match self.redeem(tokens, token, client, Use::Resume, now, Spend::Peek) {
            Ok(grant) => grant,
            Err(r) => return Decision::Drop(r.into()),
        };
        match self.rules.proofs.check(nonce, grant.key, client, now) {
            Ok(()) => {}
            Err(ProofError::Bad) => return Decision::Drop(DropReason::BadResponse),
            Err(ProofError::Late) => return Decision::Drop(DropReason::LateResponse),
        }
        let grant = if grant.single_use {
            match self.redeem(tokens, token, client, Use::Resume, now, Spend::Proven) {
                Ok(grant) => grant,
                Err(r) => return Decision::Drop(r.into()),
            }
        } else {
            grant
        };
        self.out.push(Output::Proved);
        match live {
            Some(id) => self.reset_to(id, grant, now),
            None => self.open_redeemed(client, grant, now),
        }
    }

    /// A PING: answered to anyone within the budgets (not while draining: a client measuring
    /// regions should not pick a replica that is leaving).
    fn pong(&mut self, client: SocketAddr, id: [u8; PING_ID_LEN], now: Instant) -> Decision {
        if self.ledger.draining() {
            return Decision::Drop(DropReason::Draining);
        }
        let proofs = &self.rules.proofs;
        if !proofs.try_ping(self.ledger.net_of(client.ip()), now) {
            return Decision::Drop(DropReason::PingOverBudget);
        }
        Decision::Pong {
            client,
            id,
            received_ns: proofs.nanos(now),
        }
    }

    /// A newcomer with a redeemed token: the token's session on this worker moves here;
    /// otherwise a new session under the per-IP cap and the cap (for which a yielding session
    /// may close).
    fn open_redeemed(&mut self, client: SocketAddr, grant: Grant, now: Instant) -> Decision {
        if let Some(moved) = self.move_local(grant.key, client) {
            return moved;
        }
        let (cap, per_ip) = (self.rules.max_sessions, self.rules.max_per_client_ip);
        let ledger = Arc::clone(&self.ledger);
        let seat = match ledger.admit(client.ip(), cap, per_ip) {
            Err(Refusal::SessionCap) if self.yield_one(now) => {
                ledger.admit(client.ip(), cap, per_ip)
            }
            Err(Refusal::ClientIpCap)
                if self.close_oldest_yielder_of(ledger.net_of(client.ip()), now) =>
            {
                ledger.admit(client.ip(), cap, per_ip)
            }
            other => other,
        };
        match seat {
            Ok(seat) => seat.keep(),
            Err(refusal) => return Decision::Drop(refusal.into()),
        }
        let id = self.insert_admitted(client, grant.target, Origin::Token, now);
        self.claim(id, grant.key, now);
        Decision::Open {
            id,
            first: None,
            redeemed: true,
        }
    }

    /// A tokenless newcomer: admitted under the per-IP cap and the cap first (refusing costs
    /// no resolution work), then sent to the default route's pick with this datagram
    /// forwarded.
    fn open_default(&mut self, client: SocketAddr, len: usize, now: Instant) -> Decision {
        let Some(route) = self.rules.default_route.clone() else {
            return Decision::Drop(DropReason::NoSession);
        };
        let ledger = Arc::clone(&self.ledger);
        let seat = match ledger.admit(
            client.ip(),
            self.rules.max_sessions,
            self.rules.max_per_client_ip,
        ) {
            Ok(seat) => seat,
            Err(refusal) => return Decision::Drop(refusal.into()),
        };
        let random = self.next_random();
        let Some(target) = route.pick(self.ledger.as_ref(), random) else {
            return Decision::Drop(DropReason::NoDefaultTarget); // the seat is given back
        };
        seat.keep();
        let id = self.insert_admitted(client, target, Origin::DefaultEndpoint, now);
        match self.forward_from_client(id, len, now) {
            Some(first) => Decision::Open {
                id,
                first: Some(first),
                redeemed: false,
            },
            None => Decision::Drop(DropReason::NoSession),
        }
    }

    #[inline]
    fn forward(&mut self, id: SessionId, len: usize, now: Instant) -> Decision {
        match self.forward_from_client(id, len, now) {
            Some(to) => Decision::Forward(to),
            None => Decision::Drop(DropReason::NoSession),
        }
    }

    /// A redeemed token on a live session: the session holds it from now on and goes to its
    /// target. A default-endpoint session whose client sends a token (its first datagram, the
    /// token, was lost and it sent it again, SPEC §3) becomes a token session: no longer under
    /// the amplification limit, no longer yielding its place.
    fn reset_to(&mut self, id: SessionId, grant: Grant, now: Instant) -> Decision {
        self.claim(id, grant.key, now);
        let moved = self.reset(id, grant.target, now);
        self.promote(id);
        if moved {
            Decision::Reset { id }
        } else {
            Decision::Keep
        }
    }
}
