//! TCP data-port decisions (SPEC §3, "TCP data ports"), pure: whether a connection may send
//! its token line, and what the line becomes. The shell accepts, asks
//! [`TcpPort::on_connect`] (a [`Pending`] place while the line arrives), frames the line
//! (`protocol::tcp_line`), asks [`TcpPort::on_line`], connects to the target it is given,
//! writes the [`TcpOpen::header`] it is given and relays; when the relay ends it hands the
//! [`TcpOpen`] back through [`TcpPort::end`].
//!
//! | connection | decision |
//! | --- | --- |
//! | its client network (IPv4 address, IPv6 /64) holds `maxSessionsPerClientIp` pending lines, or the port `limits.maxPendingTcpLines` | refused: `pending_cap` |
//! | otherwise | a [`Pending`] place until the line is read (or the connection ends) |
//!
//! | line | decision |
//! | --- | --- |
//! | a token that does not redeem (bare-token rules: within `tokenTTLSeconds`, client binding) | refused with its rejection (`invalid_token`, `expired_token`, `unknown_key`, `wrong_client`) |
//! | a token with no target port for this data port | `invalid_token` |
//! | draining, the client IP's share or the cap full | refused with the ledger's refusal |
//! | otherwise | open: this connection holds the token on this port; one that held it is told to end (`replaced`); on a `proxyProtocol: v2` target the connection starts with the director's PROXY v2 header (`STREAM`, the client's address, `playerId`), so a client's own header is only ever payload after it |
//!
//! Owns those decisions and the one-holder-per-token registry of the port. Must not do I/O.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::DashMap;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::ledger::{Ledger, Seat};
use crate::model::{ClientNet, Grouping, KnownTargets, Target, TcpRefusal, TokenKey, Use};
use crate::protocol::proxy::{MAX_HEADER, Transport, write_header_for};
use crate::token::{PortTokens, Redeem, Tokens};
use crate::util::bounded::Bounded;

/// The caps a TCP token line is admitted under (from the settings in force).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpLimits {
    /// `maxSessions`, counted with UDP sessions.
    pub max_sessions: usize,
    /// `maxSessionsPerClientIp`, counted with UDP sessions; also each client network's share
    /// of a port's pending lines.
    pub max_per_client_ip: usize,
    /// `limits.maxPendingTcpLines`: connections of one port still sending their line.
    pub max_pending: usize,
}

/// One TCP data port: how its tokens redeem, and which connection holds each token.
pub struct TcpPort {
    /// The targets a token may name.
    known: Arc<KnownTargets>,
    /// How pending lines are counted per client network (`limits.ipv6PrefixLength`).
    grouping: Grouping,
    tokens: PortTokens,
    holders: DashMap<TokenKey, (u64, Arc<Notify>), foldhash::fast::RandomState>,
    next: AtomicU64,
    pending: Arc<PendingLines>,
}

/// Connections of one port still sending their token line: in all and per client network.
#[derive(Debug)]
struct PendingLines {
    all: Bounded,
    per_net: DashMap<ClientNet, usize, foldhash::fast::RandomState>,
}

impl PendingLines {
    fn release_net(&self, net: ClientNet) {
        if let dashmap::Entry::Occupied(mut e) = self.per_net.entry(net) {
            if *e.get() <= 1 {
                e.remove();
            } else {
                *e.get_mut() -= 1;
            }
        }
    }
}

/// A connection's place among its port's pending lines (in all and in its client network's
/// share), given back when dropped: once its line is read, or when it is closed before.
#[derive(Debug)]
#[must_use = "a pending place is given back when dropped"]
pub struct Pending {
    lines: Arc<PendingLines>,
    net: ClientNet,
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.lines.all.give_back();
        self.lines.release_net(self.net);
    }
}

/// An admitted connection: where to connect, its places in the ledger (given back when it is
/// dropped) and the signal that a newer connection with its token has replaced it.
#[derive(Debug)]
pub struct TcpOpen<'a> {
    pub target: Arc<Target>,
    pub seat: Seat<'a>,
    pub replaced: Arc<Notify>,
    /// The PROXY v2 header (`STREAM`) to write to the target before any byte of the client's
    /// (`proxyProtocol: v2` targets only).
    pub header: Option<Vec<u8>>,
    key: TokenKey,
    id: u64,
}

impl TcpOpen<'_> {
    /// The token this connection holds (for the log's `session_id`).
    pub fn token(&self) -> TokenKey {
        self.key
    }
}

impl TcpPort {
    /// Data port `index` of `dataPorts` (a token's port for it).
    /// Data port `index` of `dataPorts`; its pending lines are counted per client network
    /// as `grouping` says (the ledger's, so every per-IP limit agrees).
    /// `known`: the targets tokens may name (shared with the UDP tables).
    pub fn new(
        tokens: Arc<Tokens>,
        index: usize,
        grouping: Grouping,
        known: Arc<KnownTargets>,
    ) -> Self {
        Self {
            grouping,
            known,
            tokens: PortTokens::new(tokens, index),
            holders: DashMap::with_hasher(Default::default()),
            next: AtomicU64::new(0),
            pending: Arc::new(PendingLines {
                all: Bounded::new(usize::MAX),
                per_net: DashMap::with_hasher(Default::default()),
            }),
        }
    }

    /// Input: a connection from `peer` was accepted. It may send its line while its client
    /// network holds fewer than `max_per_client_ip` pending lines and the port fewer than
    /// `max_pending`; otherwise `pending_cap`, and one network cannot fill the port.
    pub fn on_connect(&self, peer: IpAddr, limits: TcpLimits) -> Result<Pending, TcpRefusal> {
        let net = self.grouping.net(peer);
        {
            let mut count = self.pending.per_net.entry(net).or_insert(0);
            if *count >= limits.max_per_client_ip {
                let empty = *count == 0;
                drop(count);
                if empty {
                    self.pending.per_net.remove_if(&net, |_, n| *n == 0);
                }
                return Err(TcpRefusal::PendingCap);
            }
            *count += 1;
        }
        if !self.pending.all.try_take_within(limits.max_pending) {
            self.pending.release_net(net);
            return Err(TcpRefusal::PendingCap);
        }
        Ok(Pending {
            lines: Arc::clone(&self.pending),
            net,
        })
    }

    /// Connections of this port still sending their line.
    pub fn pending(&self) -> usize {
        self.pending.all.used()
    }

    /// Pending lines of `ip`'s client network.
    pub fn pending_of_ip(&self, ip: IpAddr) -> usize {
        self.pending
            .per_net
            .get(&self.grouping.net(ip))
            .map_or(0, |n| *n)
    }

    /// Input: the token of a complete line from `peer`, which connected to `local`. Redeems
    /// it (bare-token rules), admits the connection under `limits` and makes it the token's
    /// one holder on this port.
    pub fn on_line<'a>(
        &self,
        token: &[u8],
        (peer, local): (SocketAddr, SocketAddr),
        ledger: &'a Ledger,
        limits: TcpLimits,
        now: Instant,
    ) -> Result<TcpOpen<'a>, TcpRefusal> {
        let grant = self.tokens.redeem(token, peer.ip(), Use::Open, now)?;
        if !self.known.knows(&grant.target) {
            return Err(TcpRefusal::UnknownTarget);
        }
        let seat = ledger.admit(peer.ip(), limits.max_sessions, limits.max_per_client_ip)?;
        let header = grant.target.proxy.then(|| {
            let mut out = Vec::with_capacity(MAX_HEADER);
            let player = grant.target.player.as_deref();
            write_header_for(&mut out, Transport::Stream, peer, local, player);
            out
        });
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let replaced = Arc::new(Notify::new());
        if let Some((_, old)) = self.holders.insert(grant.key, (id, Arc::clone(&replaced))) {
            old.notify_one();
        }
        Ok(TcpOpen {
            target: grant.target,
            seat,
            replaced,
            header,
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
        max_pending: 3,
    };
    const LOCAL: SocketAddr = SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 7778);

    /// `ip` as a peer connected to [`LOCAL`].
    fn from(ip: IpAddr) -> (SocketAddr, SocketAddr) {
        (SocketAddr::new(ip, 40_000), LOCAL)
    }

    fn port(tokens: usize) -> (TcpPort, Vec<String>, Instant) {
        port_to(
            tokens,
            Target::new("m", "ns", "gs", SocketAddr::from(([10, 1, 0, 1], 7000))),
        )
    }

    fn port_to(tokens: usize, target: Target) -> (TcpPort, Vec<String>, Instant) {
        let store = Tokens::Uuid(TokenStore::new(64));
        let now = Instant::now();
        let target = Arc::new(target.with_extra_ports(&[7001]));
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
        (
            TcpPort::new(
                Arc::new(store),
                1,
                Grouping::DEFAULT,
                Arc::new(KnownTargets::everywhere()),
            ),
            wires,
            now,
        )
    }

    #[test]
    fn a_line_opens_at_the_ports_target_and_a_second_replaces_the_first() {
        let (port, wires, now) = port(1);
        let ledger = Ledger::new();
        let ip = IpAddr::from([10, 0, 0, 9]);
        let first = port
            .on_line(wires[0].as_bytes(), from(ip), &ledger, LIMITS, now)
            .unwrap();
        assert_eq!(
            first.target.addr.port(),
            7001,
            "this data port's target port"
        );
        assert!(
            first.header.is_none(),
            "no PROXY header without proxyProtocol"
        );
        let second = port
            .on_line(wires[0].as_bytes(), from(ip), &ledger, LIMITS, now)
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
            port.on_line(b"not-a-token", from(ip), &ledger, LIMITS, now)
                .unwrap_err(),
            TcpRefusal::InvalidToken
        );
        let late = now + Duration::from_secs(31);
        assert_eq!(
            port.on_line(wires[0].as_bytes(), from(ip), &ledger, LIMITS, late)
                .unwrap_err(),
            TcpRefusal::ExpiredToken
        );
        let a = port.on_line(wires[1].as_bytes(), from(ip), &ledger, LIMITS, now);
        let b = port.on_line(wires[2].as_bytes(), from(ip), &ledger, LIMITS, now);
        assert!(a.is_ok() && b.is_ok());
        assert_eq!(
            port.on_line(wires[1].as_bytes(), from(ip), &ledger, LIMITS, now)
                .unwrap_err(),
            TcpRefusal::from(Refusal::ClientIpCap),
            "admission comes before replacement"
        );
        ledger.begin_drain();
        assert_eq!(
            port.on_line(
                wires[1].as_bytes(),
                from(IpAddr::from([10, 0, 0, 8])),
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

    #[test]
    fn a_proxy_target_opens_with_the_directors_stream_header() {
        let target = Target::new("m", "ns", "gs", SocketAddr::from(([10, 1, 0, 1], 7000)))
            .with_proxy(true)
            .with_player(Some("p-9"));
        let (port, wires, now) = port_to(1, target);
        let ledger = Ledger::new();
        let peer = from(IpAddr::from([198, 51, 100, 7]));
        let open = port
            .on_line(wires[0].as_bytes(), peer, &ledger, LIMITS, now)
            .unwrap();
        let bytes = open.header.as_deref().expect("a header");
        let header = ppp::v2::Header::try_from(bytes).expect("ppp parses it");
        assert_eq!(header.command, ppp::v2::Command::Proxy);
        assert_eq!(header.protocol, ppp::v2::Protocol::Stream);
        assert_eq!(
            header.addresses,
            ppp::v2::Addresses::IPv4(ppp::v2::IPv4::new(
                [198, 51, 100, 7],
                [127, 0, 0, 1],
                40_000,
                7778
            ))
        );
        let tlvs: Vec<_> = header.tlvs().map(|t| t.unwrap().value.to_vec()).collect();
        assert_eq!(tlvs, [b"p-9".to_vec()]);
        assert_eq!(header.len(), bytes.len());
    }

    #[test]
    fn pending_lines_hold_a_share_per_client_network_and_a_cap_in_all() {
        let (port, _, _) = port(0);
        let (a, b, c) = (
            IpAddr::from([10, 0, 0, 1]),
            IpAddr::from([10, 0, 0, 2]),
            IpAddr::from([10, 0, 0, 3]),
        );
        let a1 = port.on_connect(a, LIMITS).unwrap();
        let _a2 = port.on_connect(a, LIMITS).unwrap();
        assert_eq!(
            port.on_connect(a, LIMITS).unwrap_err(),
            TcpRefusal::PendingCap,
            "a's share (2) is full"
        );
        let _b1 = port.on_connect(b, LIMITS).unwrap();
        assert_eq!(
            port.on_connect(c, LIMITS).unwrap_err(),
            TcpRefusal::PendingCap,
            "the port's cap (3) is full"
        );
        assert_eq!((port.pending(), port.pending_of_ip(c)), (3, 0));
        drop(a1);
        let _c1 = port.on_connect(c, LIMITS).unwrap();
        assert_eq!(port.pending_of_ip(a), 1);
        drop((_a2, _b1, _c1));
        let v6a: IpAddr = "2001:db8:0:1::1".parse().unwrap();
        let v6b: IpAddr = "2001:db8:0:1::2".parse().unwrap();
        let held = [
            port.on_connect(v6a, LIMITS).unwrap(),
            port.on_connect(v6b, LIMITS).unwrap(),
        ];
        assert_eq!(
            port.on_connect(v6b, LIMITS).unwrap_err(),
            TcpRefusal::PendingCap,
            "one /64 shares one share"
        );
        drop(held);
        assert_eq!(port.pending(), 0);
        assert!(port.pending.per_net.is_empty(), "no empty entries left");
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
                } else if let Ok(open) = port.on_line(wires[token].as_bytes(), from(ip), &ledger, LIMITS, now) {
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
