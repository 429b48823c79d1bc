//! Tokens: what the query server grants and the data plane redeems (SPEC §3, §7).
//!
//! Two formats, chosen at start by `tokenFormat`:
//! - `uuid` (default): a 36-byte UUID v4 naming a grant held in this process's memory
//!   ([`store::TokenStore`]); only the replica that issued it can redeem it.
//! - `sealed`: a self-contained, authenticated and encrypted token ([`sealed`]) that any
//!   replica holding the key opens; nothing is stored per token (but a replay set when
//!   `singleUseTokens` is on).
//!
//! Both carry the target, the expiry, the resume window and the client binding they were
//! issued under ([`Policy`]), so a reload changes tokens issued afterwards only. Expiry is
//! decided against the `now` the caller passes, so it is exact and testable.
//!
//! Owns issuing and redeeming tokens. Must not decide what a redeem means for a session
//! (the session table does) or resolve targets.

pub mod keys;
pub mod sealed;
pub mod store;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::resolve::Target;
pub use keys::{KeyError, KeyRing, KeySet};
pub use sealed::SealedTokens;
pub use store::{TokenId, TokenStore};

/// A token's identity inside the data plane: the UUID's bits, or a sealed token's nonce.
/// One live session per key per worker (SPEC §3).
pub type TokenKey = u128;

/// `tokenFormat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Uuid,
    Sealed,
}

/// `tokenClientBinding`: whose datagrams may redeem a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Binding {
    /// Only the IP address that sent the query (for IPv6 its /64).
    Ip,
    /// Any address (clients whose query and datagrams leave from different addresses).
    None,
}

/// The rules a token is issued under (from the live settings).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub ttl: Duration,
    /// Sealed tokens: how long after issue `[magic][token]` re-opens a session.
    pub resume: Duration,
    pub single_use: bool,
    pub binding: Binding,
}

/// The address a client binding compares: an IPv4 address, or the /64 of an IPv6 one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClientNet {
    V4([u8; 4]),
    V6Prefix([u8; 8]),
}

impl ClientNet {
    pub fn of(ip: IpAddr) -> Self {
        match ip.to_canonical() {
            IpAddr::V4(v4) => ClientNet::V4(v4.octets()),
            IpAddr::V6(v6) => {
                let mut prefix = [0; 8];
                prefix.copy_from_slice(&v6.octets()[..8]);
                ClientNet::V6Prefix(prefix)
            }
        }
    }
}

/// Why a token did not redeem. Counted, never shown to the sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// Never issued, evicted, already used under `singleUseTokens`, or (sealed) altered.
    Unknown,
    /// Sealed with a key this replica does not hold (removed by rotation, or another key).
    UnknownKey,
    Expired,
    /// Issued to another client IP (`tokenClientBinding: ip`).
    WrongClient,
}

/// A redeemed token: its key and its target.
#[derive(Debug, Clone)]
pub struct Grant {
    pub key: TokenKey,
    pub target: Arc<Target>,
}

/// How a token reached the data plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Use {
    /// A bare token: opens within `tokenTTLSeconds`.
    Open,
    /// `[magic][token]`: re-opens (sealed: within `tokenResumeSeconds`) or moves a session.
    Resume,
}

/// What the query answer says about an issued token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issued {
    pub wire: String,
    /// Sealed tokens: the resume window in seconds.
    pub resume_seconds: Option<u64>,
}

/// Why a token could not be issued.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    #[error("no token key is loaded")]
    NoKey,
    #[error("the system random generator failed")]
    Random,
    #[error(
        "`playerId` of {len} bytes does not fit a sealed token for this target and client (at most {max})"
    )]
    PlayerIdTooLong { len: usize, max: usize },
}

/// The tokens of one process, in the format it was started with.
pub enum Tokens {
    Uuid(TokenStore),
    Sealed(SealedTokens),
}

impl Tokens {
    pub fn format(&self) -> Format {
        match self {
            Tokens::Uuid(_) => Format::Uuid,
            Tokens::Sealed(_) => Format::Sealed,
        }
    }

    /// Issues a token for `target` to the client at `client`.
    pub fn issue(
        &self,
        target: Arc<Target>,
        client: IpAddr,
        now: Instant,
        policy: Policy,
    ) -> Result<Issued, IssueError> {
        match self {
            Tokens::Uuid(store) => Ok(Issued {
                wire: store.issue(target, client, now, policy).to_wire(),
                resume_seconds: None,
            }),
            Tokens::Sealed(sealed) => Ok(Issued {
                wire: sealed.issue(&target, client, now, policy)?,
                resume_seconds: Some(policy.resume.as_secs()),
            }),
        }
    }

    /// Outstanding tokens held in memory (uuid), or the replay set's size (sealed).
    pub fn len(&self) -> u64 {
        match self {
            Tokens::Uuid(store) => store.len(),
            Tokens::Sealed(sealed) => sealed.replay_len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Reclaims memory of expired entries (the memory task calls this after bursts).
    pub fn sweep(&self, now: Instant) {
        match self {
            Tokens::Uuid(store) => store.sweep(now),
            Tokens::Sealed(sealed) => sealed.sweep(),
        }
    }

    /// The key ring of sealed tokens, to swap keys into.
    pub fn key_ring(&self) -> Option<&KeyRing> {
        match self {
            Tokens::Uuid(_) => None,
            Tokens::Sealed(sealed) => Some(sealed.keys()),
        }
    }
}

impl crate::session::Redeem for Tokens {
    fn redeem(
        &self,
        token: &[u8],
        client: IpAddr,
        how: Use,
        now: Instant,
    ) -> Result<Grant, Rejection> {
        match self {
            Tokens::Uuid(store) => store.redeem_wire(token, client, now),
            Tokens::Sealed(sealed) => sealed.open(token, client, how, now),
        }
    }
}

/// Wall-clock milliseconds for sealed tokens, read through the caller's `now`: an anchor
/// pairs one monotonic instant with the Unix time at that instant, so expiry stays a pure
/// function of the `now` passed in (and paused test clocks work), while every process on a
/// host (or in a cluster with synchronised clocks) agrees on what a token's expiry means.
#[derive(Debug, Clone, Copy)]
pub struct WallClock {
    at: Instant,
    unix_ms: u64,
}

impl WallClock {
    /// Anchors at the system's current time.
    pub fn system(now: Instant) -> Self {
        let unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        Self { at: now, unix_ms }
    }

    /// Anchors `now` at a given Unix time (tests).
    pub fn fixed(now: Instant, unix_ms: u64) -> Self {
        Self { at: now, unix_ms }
    }

    pub fn unix_ms(&self, now: Instant) -> u64 {
        if now >= self.at {
            self.unix_ms + now.duration_since(self.at).as_millis() as u64
        } else {
            self.unix_ms
                .saturating_sub(self.at.duration_since(now).as_millis() as u64)
        }
    }
}

/// One shared [`Target`] per address and names: the resolver builds a fresh one per query,
/// and every outstanding token and session would otherwise keep its own copy of the names.
pub struct Interner {
    targets: moka::sync::Cache<SocketAddr, Arc<Target>>,
}

impl Default for Interner {
    fn default() -> Self {
        Self {
            targets: moka::sync::Cache::new(65_536),
        }
    }
}

impl Interner {
    /// The shared target equal to `mapping`/`namespace`/`name` at `addr` with `proxy` and
    /// `extra_ports` (no player), built only when none is shared yet: opening a sealed token
    /// allocates nothing for a target seen before.
    pub fn get(
        &self,
        (mapping, namespace, name): (&str, &str, &str),
        addr: SocketAddr,
        proxy: bool,
        extra_ports: &[u16],
    ) -> Arc<Target> {
        if let Some(t) = self.targets.get(&addr)
            && t.mapping == mapping
            && t.namespace == namespace
            && t.name == name
            && t.proxy == proxy
            && *t.extra_ports == *extra_ports
            && t.player.is_none()
        {
            return t;
        }
        let t = Arc::new(
            Target::new(mapping, namespace, name, addr)
                .with_proxy(proxy)
                .with_extra_ports(extra_ports),
        );
        self.targets.insert(addr, Arc::clone(&t));
        t
    }

    /// `target`, or the shared one equal to it. A player's target is never shared.
    pub fn share(&self, target: Arc<Target>) -> Arc<Target> {
        if target.player.is_some() {
            return target;
        }
        match self.targets.get(&target.addr) {
            Some(t) if *t == *target => t,
            _ => {
                self.targets.insert(target.addr, Arc::clone(&target));
                target
            }
        }
    }
}

/// A target's address as sealed tokens and the stores compare it.
pub(crate) fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}
