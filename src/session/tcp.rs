//! TCP data-port decisions (SPEC §3, "TCP data ports"), pure: what a token line becomes. The
//! shell accepts, frames the line (`protocol::tcp_line`), asks [`TcpPort::on_line`], connects
//! to the target it is given and relays; when the relay ends it hands the [`TcpOpen`] back
//! through [`TcpPort::end`].
//!
//! | line | decision |
//! | --- | --- |
//! | a token that does not redeem (bare-token rules: within `tokenTTLSeconds`, client binding) | refused with its rejection (`invalid_token`, `expired_token`, `unknown_key`, `wrong_client`) |
//! | a token with no target port for this data port | `invalid_token` |
//! | draining, the client IP's share or the cap full | refused with the ledger's refusal |
//! | otherwise | open: this connection holds the token on this port; one that held it is told to end (`replaced`) |
//!
//! Owns those decisions and the one-holder-per-token registry of the port. Must not do I/O.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::DashMap;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::ledger::{Ledger, Seat};
use crate::model::{Target, TcpRefusal, TokenKey, Use};
use crate::token::{PortTokens, Redeem, Tokens};

/// The caps a TCP token line is admitted under (from the settings in force).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpLimits {
    /// `maxSessions`, counted with UDP sessions.
    pub max_sessions: usize,
    /// `maxSessionsPerClientIp`, counted with UDP sessions.
    pub max_per_client_ip: usize,
}

/// One TCP data port: how its tokens redeem, and which connection holds each token.
pub struct TcpPort {
    tokens: PortTokens,
    holders: DashMap<TokenKey, (u64, Arc<Notify>), foldhash::fast::RandomState>,
    next: AtomicU64,
}

/// An admitted connection: where to connect, its places in the ledger (given back when it is
/// dropped) and the signal that a newer connection with its token has replaced it.
#[derive(Debug)]
pub struct TcpOpen<'a> {
    pub target: Arc<Target>,
    pub seat: Seat<'a>,
    pub replaced: Arc<Notify>,
    key: TokenKey,
    id: u64,
}

impl TcpPort {
    /// Data port `index` of `dataPorts` (a token's port for it).
    pub fn new(tokens: Arc<Tokens>, index: usize) -> Self {
        Self {
            tokens: PortTokens::new(tokens, index),
            holders: DashMap::with_hasher(Default::default()),
            next: AtomicU64::new(0),
        }
    }

    /// Input: the token of a complete line from `peer`. Redeems it (bare-token rules), admits
    /// the connection under `limits` and makes it the token's one holder on this port.
    pub fn on_line<'a>(
        &self,
        token: &[u8],
        peer: IpAddr,
        ledger: &'a Ledger,
        limits: TcpLimits,
        now: Instant,
    ) -> Result<TcpOpen<'a>, TcpRefusal> {
        let grant = self.tokens.redeem(token, peer, Use::Open, now)?;
        let seat = ledger.admit(peer, limits.max_sessions, limits.max_per_client_ip)?;
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let replaced = Arc::new(Notify::new());
        if let Some((_, old)) = self.holders.insert(grant.key, (id, Arc::clone(&replaced))) {
            old.notify_one();
        }
        Ok(TcpOpen {
            target: grant.target,
            seat,
            replaced,
            key: grant.key,
            id,
        })
    }

    /// Input: the connection's relay ended. It stops holding its token (unless a newer one
    /// already does) and its seat is given back.
    pub fn end(&self, open: TcpOpen<'_>) {
        self.holders
            .remove_if(&open.key, |_, (holder, _)| *holder == open.id);
    }

    /// Tokens held by a live connection on this port.
    pub fn held(&self) -> usize {
        self.holders.len()
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::time::Duration;

    use proptest::prelude::*;

    use super::*;
    use crate::model::{ClientBinding, Policy, Refusal};
    use crate::token::TokenStore;

    const LIMITS: TcpLimits = TcpLimits {
        max_sessions: 4,
        max_per_client_ip: 2,
    };

    fn port(tokens: usize) -> (TcpPort, Vec<String>, Instant) {
        let store = Tokens::Uuid(TokenStore::new(64));
        let now = Instant::now();
        let target = Arc::new(
            Target::new("m", "ns", "gs", SocketAddr::from(([10, 1, 0, 1], 7000)))
                .with_extra_ports(&[7001]),
        );
        let policy = Policy {
            ttl: Duration::from_secs(30),
            resume: Duration::from_secs(60),
            single_use: false,
            binding: ClientBinding::None,
        };
        let wires = (0..tokens)
            .map(|i| {
                let client = IpAddr::from([10, 0, 0, i as u8]);
                store
                    .issue(Arc::clone(&target), client, now, policy)
                    .unwrap()
                    .wire
            })
            .collect();
        (TcpPort::new(Arc::new(store), 1), wires, now)
    }

    #[test]
    fn a_line_opens_at_the_ports_target_and_a_second_replaces_the_first() {
        let (port, wires, now) = port(1);
        let ledger = Ledger::new();
        let ip = IpAddr::from([10, 0, 0, 9]);
        let first = port
            .on_line(wires[0].as_bytes(), ip, &ledger, LIMITS, now)
            .unwrap();
        assert_eq!(
            first.target.addr.port(),
            7001,
            "this data port's target port"
        );
        let second = port
            .on_line(wires[0].as_bytes(), ip, &ledger, LIMITS, now)
            .unwrap();
        // The first holder was told to end: its notification is stored.
        tokio_test_notified(&first.replaced);
        assert_eq!(port.held(), 1);
        port.end(first);
        assert_eq!(
            port.held(),
            1,
            "the replaced one does not release the newer holder"
        );
        assert_eq!(ledger.active(), 1);
        port.end(second);
        assert_eq!((port.held(), ledger.active()), (0, 0));
    }

    /// A stored `notify_one` permit completes `notified()` at its first poll.
    fn tokio_test_notified(n: &Notify) {
        use futures::FutureExt;
        assert!(n.notified().now_or_never().is_some(), "replaced");
    }

    #[test]
    fn refusals_name_the_rejection_or_the_ledger() {
        let (port, wires, now) = port(3);
        let ledger = Ledger::new();
        let ip = IpAddr::from([10, 0, 0, 9]);
        assert_eq!(
            port.on_line(b"not-a-token", ip, &ledger, LIMITS, now)
                .unwrap_err(),
            TcpRefusal::InvalidToken
        );
        let late = now + Duration::from_secs(31);
        assert_eq!(
            port.on_line(wires[0].as_bytes(), ip, &ledger, LIMITS, late)
                .unwrap_err(),
            TcpRefusal::ExpiredToken
        );
        let a = port.on_line(wires[1].as_bytes(), ip, &ledger, LIMITS, now);
        let b = port.on_line(wires[2].as_bytes(), ip, &ledger, LIMITS, now);
        assert!(a.is_ok() && b.is_ok());
        assert_eq!(
            port.on_line(wires[1].as_bytes(), ip, &ledger, LIMITS, now)
                .unwrap_err(),
            TcpRefusal::from(Refusal::ClientIpCap),
            "admission comes before replacement"
        );
        ledger.begin_drain();
        assert_eq!(
            port.on_line(
                wires[1].as_bytes(),
                IpAddr::from([10, 0, 0, 8]),
                &ledger,
                LIMITS,
                now
            )
            .unwrap_err(),
            TcpRefusal::Draining
        );
        drop((a, b));
        assert_eq!(
            ledger.active(),
            0,
            "refusals and dropped opens hold no place"
        );
    }

    proptest! {
        /// Over any sequence of lines and ends: at most one holder per token, the ledger
        /// counts exactly the live connections, and no IP holds more than its share.
        #[test]
        fn holders_and_places_stay_exact(
            ops in proptest::collection::vec((0usize..4, 0u8..3, any::<bool>()), 1..60)
        ) {
            let (port, wires, now) = port(4);
            let ledger = Ledger::new();
            let mut live: Vec<(usize, IpAddr, TcpOpen<'_>)> = Vec::new();
            for (token, ip, end) in ops {
                let ip = IpAddr::from([10, 0, 0, ip]);
                if end && !live.is_empty() {
                    let (_, _, open) = live.remove(0);
                    port.end(open);
                } else if let Ok(open) = port.on_line(wires[token].as_bytes(), ip, &ledger, LIMITS, now) {
                    // The one it replaced ends as its relay would.
                    if let Some(i) = live.iter().position(|(t, _, _)| *t == token) {
                        let (_, _, old) = live.remove(i);
                        port.end(old);
                    }
                    live.push((token, ip, open));
                }
                prop_assert_eq!(ledger.active(), live.len());
                prop_assert!(live.len() <= LIMITS.max_sessions);
                prop_assert_eq!(port.held(), live.len());
                for (_, ip, _) in &live {
                    prop_assert!(ledger.sessions_of_ip(*ip) <= LIMITS.max_per_client_ip);
                }
            }
        }
    }
}
