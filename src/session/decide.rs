//! One decision per datagram (SPEC §3): what the data plane does with a datagram from a
//! client or from a target, decided here and nowhere else.
//!
//! A client datagram is classified once (`protocol::datagram`), then:
//!
//! | client | datagram | decision |
//! | --- | --- | --- |
//! | any | empty | `Drop(Empty)` |
//! | has a session | data | `Forward` |
//! | has a session | token or `[magic][token]` that redeems | `Reset` to its target, or `Keep` when it is the session's own (a keepalive: nothing forwarded) |
//! | has a session | bare token-shaped data that does not redeem | `Forward` (game traffic that looks like a token) |
//! | has a session | `[magic][token]` that does not redeem | `Drop(InvalidToken / UnknownKey / ExpiredToken / WrongClient)` |
//! | any | `[magic]` + anything but a token | `Drop(MalformedReset)`, never forwarded |
//! | newcomer | anything while draining | `Drop(Draining)` |
//! | newcomer | token or `[magic][token]` that redeems, token held by a session of this worker | `Moved`: that session now belongs to this address (a NAT rebinding) |
//! | newcomer | token or `[magic][token]` that redeems, past `maxSessionsPerClientIp` | `Drop(ClientIpCap)` |
//! | newcomer | token or `[magic][token]` that redeems | `Open` (admitted by the cap; when full, a default-endpoint or unanswered session yields), nothing forwarded; a session holding the token on another worker is displaced |
//! | newcomer | `[magic][token]` that does not redeem | `Drop(...)`: a reset is never forwarded |
//! | newcomer | data or a bare token that does not redeem, default endpoint set | per-IP cap and cap *first*, then `Open` towards the default route's pick, datagram forwarded |
//! | newcomer | a bare token that does not redeem, no default endpoint | `Drop(InvalidToken / ...)` |
//! | newcomer | data, no default endpoint | `Drop(NoSession)` |
//!
//! A bare token redeems within its TTL, `[magic][token]` within its resume window (sealed
//! tokens, `tokenResumeSeconds`). Each verdict is queued as an [`Output::Datagram`] after
//! what it did on the side (a session that yielded its place or whose token moved away
//! closed, a socket opened or closed, a worker holding a displaced session to wake), all in
//! the one queue the shell drains.
//!
//! A datagram from a target is `Deliver`ed to the client bound to that (socket, target) pair,
//! or dropped (`UnknownSource`).
//!
//! Owns every decision about a datagram. Must not do I/O, resolve queries, read the clock or log.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::{Decision, DropReason, Origin, Output, SessionId, SessionTable, SocketId};
use crate::model::{Grant, KnownTargets, Refusal, Rejection, TokenFormat, Use};
use crate::protocol::datagram::{Datagram, classify};
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
                Some(client) => Decision::Deliver { client },
                None => Decision::Drop(DropReason::UnknownSource),
            }
        };
        self.out.push(Output::Datagram {
            datagram: handle,
            decision,
        });
    }

    /// Redeems a token and checks its target is one its mapping knows (one lookup per
    /// redeem, none per datagram): a token naming any other address is refused as
    /// `unknown_target`, whatever key sealed it.
    fn redeem(
        &self,
        tokens: &dyn Redeem,
        token: &[u8],
        client: SocketAddr,
        how: Use,
        now: Instant,
    ) -> Result<Grant, Rejection> {
        let grant = tokens.redeem(token, client.ip(), how, now)?;
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
        match self.lookup(&client) {
            Some(id) => self.judge_live(id, client, kind, datagram.len(), now, tokens),
            None => self.judge_newcomer(client, kind, datagram.len(), now, tokens),
        }
    }

    #[inline]
    fn judge_live(
        &mut self,
        id: SessionId,
        client: SocketAddr,
        kind: Datagram<'_>,
        len: usize,
        now: Instant,
        tokens: &dyn Redeem,
    ) -> Decision {
        match kind {
            Datagram::Data => self.forward(id, len, now),
            Datagram::Token(token) => match self.redeem(tokens, token, client, Use::Open, now) {
                Ok(grant) => self.reset_to(id, grant, now),
                Err(_) => self.forward(id, len, now),
            },
            Datagram::Reset(token) => match self.redeem(tokens, token, client, Use::Resume, now) {
                Ok(grant) => self.reset_to(id, grant, now),
                Err(r) => Decision::Drop(r.into()),
            },
            Datagram::MalformedReset => Decision::Drop(DropReason::MalformedReset),
        }
    }

    fn judge_newcomer(
        &mut self,
        client: SocketAddr,
        kind: Datagram<'_>,
        len: usize,
        now: Instant,
        tokens: &dyn Redeem,
    ) -> Decision {
        if self.ledger.draining() {
            return Decision::Drop(DropReason::Draining);
        }
        match kind {
            // A reset is never forwarded, not even to a default endpoint (SPEC §3).
            Datagram::Reset(token) => match self.redeem(tokens, token, client, Use::Resume, now) {
                Ok(grant) => self.open_redeemed(client, grant, now),
                Err(r) => Decision::Drop(r.into()),
            },
            Datagram::MalformedReset => Decision::Drop(DropReason::MalformedReset),
            Datagram::Token(token) => match self.redeem(tokens, token, client, Use::Open, now) {
                Ok(grant) => self.open_redeemed(client, grant, now),
                Err(r) if self.rules.default_route.is_none() => Decision::Drop(r.into()),
                // Token-shaped game traffic from a tokenless client.
                Err(_) => self.open_default(client, len, now),
            },
            Datagram::Data => self.open_default(client, len, now),
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

    fn reset_to(&mut self, id: SessionId, grant: Grant, now: Instant) -> Decision {
        self.claim(id, grant.key, now);
        if self.reset(id, grant.target, now) {
            Decision::Reset { id }
        } else {
            Decision::Keep
        }
    }
}
