//! Every closed set of reasons and results the director counts, with the maps between them
//! side by side: one refusal vocabulary. A token that does not redeem is a [`Rejection`]; a
//! newcomer the ledger turns away is a [`Refusal`]; what happens to a datagram is a
//! [`DropReason`], to a TCP data connection a [`TcpRefusal`]. A rejection or refusal reaches
//! operators under one label value in every family that counts it (the tests below hold the
//! maps to that).
//!
//! Owns the label sets. Must not import anything of the crate.

use super::labels::closed_labels;

closed_labels! {
    /// Why a token did not redeem. Counted (`tokens_rejected_total{reason}`), never shown
    /// to the sender.
    pub enum Rejection {
        /// Never issued, evicted, already used under `singleUseTokens`, (sealed) altered, or
        /// not a token of this director at all.
        Invalid => "invalid_token",
        Expired => "expired_token",
        /// Sealed with a key this replica does not hold (removed by rotation, or another key).
        UnknownKey => "unknown_key",
        /// Issued to another client IP (`tokenClientBinding: ip`).
        WrongClient => "wrong_client",
        /// Names a target its mapping does not know (not a static endpoint, not in a watch
        /// cache, not allocated here) and outside `targetNetworks`: a leaked or misused key.
        UnknownTarget => "unknown_target",
    }
}

closed_labels! {
    /// Why the ledger turned a newcomer away (`sessions_refused_total{reason}`).
    pub enum Refusal {
        /// `maxSessions` reached.
        SessionCap => "session_cap",
        /// `maxSessionsPerClientIp` reached for the newcomer's IP (IPv6: its /64).
        ClientIpCap => "client_ip_cap",
        /// Shutting down: no new sessions.
        Draining => "draining",
    }
}

closed_labels! {
    /// Why a session ended. A label value of `udp_director_sessions_closed_total`.
    pub enum CloseReason {
        /// No datagram either way for the session timeout.
        Idle => "idle",
        /// The director shut down.
        Drained => "drained",
        /// The upstream socket could not be opened or failed.
        UpstreamError => "upstream_error",
        /// No reply from the target within `unansweredTimeoutSeconds`.
        Unanswered => "unanswered",
        /// Its token opened a session for another address (a NAT rebinding seen on
        /// another worker, or a forger: one session per token).
        Moved => "moved",
        /// Yielded its place in a full table to a token newcomer: opened by the default
        /// endpoint.
        YieldedDefault => "yielded_default_endpoint",
        /// Yielded its place in a full table to a token newcomer: never answered.
        YieldedUnanswered => "yielded_unanswered",
    }
}

closed_labels! {
    /// Why a datagram was not delivered. A label value of
    /// `udp_director_datagrams_dropped_total`. The session table decides those down to
    /// `amplification_limit`; the shell reports the I/O failures after them.
    pub enum DropReason {
        Empty => "empty",
        /// Not a token, not from a session, and no default endpoint.
        NoSession => "no_session",
        /// [`Rejection::Invalid`].
        InvalidToken => "invalid_token",
        /// [`Rejection::Expired`].
        ExpiredToken => "expired_token",
        /// [`Rejection::UnknownKey`].
        UnknownKey => "unknown_key",
        /// [`Rejection::WrongClient`].
        WrongClient => "wrong_client",
        /// [`Rejection::UnknownTarget`].
        UnknownTarget => "unknown_target",
        /// Starts with the control magic but no token follows (label kept from the wire
        /// contract, where it is called the control datagram).
        MalformedReset => "malformed_control",
        /// [`Refusal::SessionCap`].
        SessionCap => "session_cap",
        /// [`Refusal::ClientIpCap`].
        ClientIpCap => "client_ip_cap",
        /// [`Refusal::Draining`].
        Draining => "draining",
        /// The default endpoint's query matches nothing (or nothing has room).
        NoDefaultTarget => "no_default_target",
        /// Arrived on an upstream socket from something that is not a bound target.
        UnknownSource => "unknown_source",
        /// A token needed proof of address, but the sender's network or the replica had
        /// sent its challenges for this second (SPEC §3).
        ChallengeOverBudget => "challenge_over_budget",
        /// A token needed proof of address, but the challenge would be larger than the
        /// datagram (a bare token after a long magic): send `[magic][token]` instead.
        ChallengeTooLarge => "challenge_too_large",
        /// A RESPONSE whose nonce this replica did not make for that token and address.
        BadResponse => "bad_response",
        /// A RESPONSE more than 2 s after its challenge.
        LateResponse => "late_response",
        /// A PING past the sender's network's or the replica's budget for this second.
        PingOverBudget => "ping_over_budget",
        /// A PING shorter than its PONG would be.
        ShortPing => "short_ping",
        /// A reply to a default-endpoint client past `defaultEndpoint.amplification` times
        /// what it sent.
        Amplification => "amplification_limit",
        /// An upstream socket could not be opened (e.g. EMFILE).
        UpstreamSocket => "upstream_socket",
        /// Sending towards a target failed.
        SendToTarget => "send_to_target",
        /// Sending towards a client failed.
        SendToClient => "send_to_client",
        /// A receive call failed.
        RecvError => "recv_error",
        /// Larger than the path towards its destination takes (`EMSGSIZE`).
        Oversize => "oversize",
        /// An upstream socket reported an error (e.g. ICMP port unreachable from a target).
        UpstreamError => "upstream_error",
    }
}

closed_labels! {
    /// Why a TCP data connection was closed before relaying. A label value of
    /// `udp_director_tcp_refused_total`.
    pub enum TcpRefusal {
        /// [`Rejection::Invalid`] (or a line that is not a token at all).
        InvalidToken => "invalid_token",
        /// [`Rejection::Expired`].
        ExpiredToken => "expired_token",
        /// [`Rejection::UnknownKey`].
        UnknownKey => "unknown_key",
        /// [`Rejection::WrongClient`].
        WrongClient => "wrong_client",
        /// [`Rejection::UnknownTarget`].
        UnknownTarget => "unknown_target",
        /// No complete token line within 5 s (slowloris included).
        LateToken => "late_token",
        /// A line too long for a token, or an empty one, or the client closed first.
        BadLine => "bad_line",
        /// Too many connections on this port, or from the client's network
        /// (`maxSessionsPerClientIp`), were still sending their line.
        PendingCap => "pending_cap",
        /// [`Refusal::SessionCap`].
        SessionCap => "session_cap",
        /// [`Refusal::ClientIpCap`].
        ClientIpCap => "client_ip_cap",
        /// [`Refusal::Draining`].
        Draining => "draining",
        /// The target refused the connection or reset it.
        TargetRefused => "target_refused",
        /// The target did not accept within 2 s.
        TargetTimeout => "target_timeout",
        /// The descriptor budget upstream sockets share was spent (a pending line takes one
        /// place, a relayed connection two).
        Descriptors => "descriptors",
    }
}

closed_labels! {
    /// Why a relayed TCP session ended. A label value of `udp_director_tcp_sessions_closed_total`.
    pub enum TcpClose {
        /// Both sides closed their direction.
        Closed => "closed",
        /// No byte either way for `sessionTimeoutSeconds`.
        Idle => "idle",
        /// A newer connection with the same token took over.
        Replaced => "replaced",
        /// The director shut down after its drain.
        Drained => "drained",
        /// A read or write failed (reset by either side).
        Error => "error",
    }
}

closed_labels! {
    /// How an allocation ended. A label value of `udp_director_allocations_total`.
    pub enum AllocationResult {
        /// Agones allocated a server and the director read its address.
        Allocated => "allocated",
        /// No server matched or had room (`no_match`).
        Unallocated => "unallocated",
        /// Agones answered `Contention` (`unavailable`, retry).
        Contention => "contention",
        /// A server was allocated but had no usable address or named port.
        Unusable => "unusable",
        /// The API answered an error or could not be reached.
        Error => "error",
        /// No answer within 2 s.
        Timeout => "timeout",
        /// `maxInFlight` allocations were already running.
        Overloaded => "overloaded",
        /// The player's allocation for the same ask within `tokenTTLSeconds`, handed out
        /// again without asking Agones.
        Reused => "reused",
        /// Over `allocate.ratePerSecond`/`burst`: refused before any API call.
        RateLimited => "rate_limited",
    }
}

closed_labels! {
    /// Why a query was answered `unauthorized` (`query_auth_failures_total{reason}`).
    pub enum AuthFailure {
        /// The mapping needs a ticket (`auth: ticket`) and the query carries none.
        MissingTicket => "missing_ticket",
        /// Not a compact JWS, not JSON, a claim of the wrong type, or no `exp`.
        Malformed => "malformed",
        /// `alg: none`, an algorithm not supported, or not the algorithm of the key
        /// (algorithm confusion).
        Algorithm => "algorithm",
        /// A `kid` not in the JWKS (or no `kid` and no single key of the algorithm), or no
        /// `queryAuth` at all.
        UnknownKey => "unknown_key",
        /// The signature does not verify.
        Signature => "signature",
        /// `exp` (plus `leewaySeconds`) has passed.
        Expired => "expired",
        /// `nbf` or `iat` lies ahead (beyond `leewaySeconds`).
        NotYetValid => "not_yet_valid",
        /// No `aud`, or not `queryAuth.audience`.
        Audience => "audience",
        /// No `iss`, or not `queryAuth.issuer`.
        Issuer => "issuer",
        /// `sub` missing or not usable as a player id.
        Subject => "subject",
        /// The query's `playerId` differs from the ticket's `sub`.
        PlayerId => "player_id",
        /// The ticket's `udpDirector` claim does not permit the query.
        Scope => "scope",
        /// `clientIp` from a caller that is not a verified backend.
        ClientIp => "client_ip",
    }
}

closed_labels! {
    /// The error codes of SPEC §2 (the wire spelling is the label), also the `result` label
    /// of `udp_director_queries_total` besides `ok`.
    pub enum ErrorCode {
        BadRequest => "bad_request",
        TooLarge => "too_large",
        UnknownResourceType => "unknown_resource_type",
        ForbiddenNamespace => "forbidden_namespace",
        NoMatch => "no_match",
        Unavailable => "unavailable",
        RateLimited => "rate_limited",
        /// A missing, bad or out-of-scope ticket, or a caller claiming what only a verified
        /// backend may (SPEC §2 "Who may ask").
        Unauthorized => "unauthorized",
        Internal => "internal",
    }
}

impl serde::Serialize for ErrorCode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

closed_labels! {
    /// Why the query server closed a connection (`query_connections_closed_total{reason}`).
    /// The first two are refusals at accept, answered `unavailable` before closing.
    pub enum QueryClose {
        /// `limits.maxQueryConnections` connections were open.
        ConnectionCap => "connection_cap",
        /// The client's network held `limits.maxQueryConnectionsPerIp` connections.
        ClientIpCap => "client_ip_cap",
        /// No query was answered within `limits.queryIdleTimeoutSeconds` (empty or partial
        /// lines do not count).
        Idle => "idle",
        /// Open for `limits.queryConnectionLifetimeSeconds`.
        Lifetime => "lifetime",
        /// A request line over `limits.queryMaxBytes` (answered `too_large`).
        TooLarge => "too_large",
        /// The client did not read an answer in time.
        SlowReader => "slow_reader",
        /// The client closed (or reset) the connection.
        ClientClosed => "client_closed",
        /// `queryTls`: no TLS handshake within the idle timeout, or it failed (not TLS, a
        /// client certificate that does not chain to `clientCaFile`).
        TlsHandshake => "tls_handshake",
    }
}

closed_labels! {
    /// What became of a proof of address (SPEC §3): a label value of
    /// `udp_director_path_challenges_total{outcome}`.
    pub enum ProofOutcome {
        /// A CHALLENGE was sent.
        Sent => "sent",
        /// A RESPONSE completed an open, move or resume.
        Proved => "proved",
        /// [`DropReason::BadResponse`].
        BadResponse => "bad_response",
        /// [`DropReason::LateResponse`].
        LateResponse => "late_response",
        /// [`DropReason::ChallengeOverBudget`].
        OverBudget => "over_budget",
        /// [`DropReason::ChallengeTooLarge`].
        TooLarge => "too_large",
    }
}

closed_labels! {
    /// What became of a PING: a label value of `udp_director_pings_total{outcome}`.
    pub enum PingOutcome {
        /// A PONG was sent.
        Answered => "answered",
        /// [`DropReason::PingOverBudget`].
        OverBudget => "over_budget",
        /// [`DropReason::ShortPing`].
        Short => "short",
    }
}

closed_labels! {
    /// Why the kernel fast path is off or a session stayed out of it: a label value of
    /// `udp_director_fast_path_failures_total{reason}` (SPEC §8).
    pub enum FastPathFailure {
        /// `fastPath.enabled` in a build without the `fast-path` feature.
        NotBuilt => "not_built",
        /// No CAP_BPF or CAP_NET_ADMIN.
        Permission => "permission",
        /// The kernel refused the program (too old, or the verifier).
        Kernel => "kernel",
        /// An interface of `fastPath.interfaces` is missing or refused the attach.
        Interface => "interface",
        /// A map operation failed.
        Map => "map",
        /// A session's legs did not fit in the map (it stays in user space).
        Full => "full",
    }
}

closed_labels! {
    /// A data port's transport (`dataPorts[].protocol`, the `protocol` label).
    pub enum Protocol {
        Udp => "udp",
        /// A TCP connection whose first line is the token, then relayed to the target.
        Tcp => "tcp",
    }
}

impl From<Rejection> for DropReason {
    fn from(r: Rejection) -> Self {
        match r {
            Rejection::Invalid => DropReason::InvalidToken,
            Rejection::Expired => DropReason::ExpiredToken,
            Rejection::UnknownKey => DropReason::UnknownKey,
            Rejection::WrongClient => DropReason::WrongClient,
            Rejection::UnknownTarget => DropReason::UnknownTarget,
        }
    }
}

impl From<Refusal> for DropReason {
    fn from(r: Refusal) -> Self {
        match r {
            Refusal::SessionCap => DropReason::SessionCap,
            Refusal::ClientIpCap => DropReason::ClientIpCap,
            Refusal::Draining => DropReason::Draining,
        }
    }
}

impl From<Rejection> for TcpRefusal {
    fn from(r: Rejection) -> Self {
        match r {
            Rejection::Invalid => TcpRefusal::InvalidToken,
            Rejection::Expired => TcpRefusal::ExpiredToken,
            Rejection::UnknownKey => TcpRefusal::UnknownKey,
            Rejection::WrongClient => TcpRefusal::WrongClient,
            Rejection::UnknownTarget => TcpRefusal::UnknownTarget,
        }
    }
}

impl From<Refusal> for TcpRefusal {
    fn from(r: Refusal) -> Self {
        match r {
            Refusal::SessionCap => TcpRefusal::SessionCap,
            Refusal::ClientIpCap => TcpRefusal::ClientIpCap,
            Refusal::Draining => TcpRefusal::Draining,
        }
    }
}

impl DropReason {
    /// The rejection this drop is, for `tokens_rejected_total`.
    pub const fn rejection(self) -> Option<Rejection> {
        match self {
            DropReason::InvalidToken => Some(Rejection::Invalid),
            DropReason::ExpiredToken => Some(Rejection::Expired),
            DropReason::UnknownKey => Some(Rejection::UnknownKey),
            DropReason::WrongClient => Some(Rejection::WrongClient),
            DropReason::UnknownTarget => Some(Rejection::UnknownTarget),
            _ => None,
        }
    }

    /// The proof outcome this drop is, for `path_challenges_total`.
    pub const fn proof(self) -> Option<ProofOutcome> {
        match self {
            DropReason::BadResponse => Some(ProofOutcome::BadResponse),
            DropReason::LateResponse => Some(ProofOutcome::LateResponse),
            DropReason::ChallengeOverBudget => Some(ProofOutcome::OverBudget),
            DropReason::ChallengeTooLarge => Some(ProofOutcome::TooLarge),
            _ => None,
        }
    }

    /// The ping outcome this drop is, for `pings_total`.
    pub const fn ping(self) -> Option<PingOutcome> {
        match self {
            DropReason::PingOverBudget => Some(PingOutcome::OverBudget),
            DropReason::ShortPing => Some(PingOutcome::Short),
            _ => None,
        }
    }

    /// The refusal this drop is, for `sessions_refused_total`.
    pub const fn refusal(self) -> Option<Refusal> {
        match self {
            DropReason::SessionCap => Some(Refusal::SessionCap),
            DropReason::ClientIpCap => Some(Refusal::ClientIpCap),
            DropReason::Draining => Some(Refusal::Draining),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rejection_has_one_label_in_every_family() {
        for r in Rejection::ALL {
            let drop = DropReason::from(*r);
            assert_eq!(drop.as_str(), r.as_str());
            assert_eq!(drop.rejection(), Some(*r));
            assert_eq!(TcpRefusal::from(*r).as_str(), r.as_str());
        }
    }

    #[test]
    fn a_refusal_has_one_label_in_every_family() {
        for r in Refusal::ALL {
            let drop = DropReason::from(*r);
            assert_eq!(drop.as_str(), r.as_str());
            assert_eq!(drop.refusal(), Some(*r));
            assert_eq!(TcpRefusal::from(*r).as_str(), r.as_str());
        }
        let mapped = DropReason::ALL
            .iter()
            .filter(|d| d.refusal().is_some() || d.rejection().is_some())
            .count();
        assert_eq!(
            mapped,
            Refusal::COUNT + Rejection::COUNT,
            "no drop maps twice"
        );
    }

    #[test]
    fn error_codes_serialize_as_their_label() {
        for code in ErrorCode::ALL {
            assert_eq!(
                serde_json::to_string(code).unwrap(),
                format!("\"{}\"", code.as_str())
            );
        }
    }
}
