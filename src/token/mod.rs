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

pub mod jose;
pub mod keys;
pub mod mint;
mod ports;
pub mod sealed;
pub mod store;
pub mod ticket;

use std::net::IpAddr;
use std::sync::Arc;

use tokio::time::Instant;

use crate::model::{Grant, Policy, Rejection, Spend, Target, TokenFormat, Use};
pub use keys::{KeyError, KeyRing, KeySet};
pub use ports::PortTokens;
pub use sealed::SealedTokens;
pub use store::TokenStore;

/// Turns a token into its key and target. The token stores implement it; the session table
/// calls it only for datagrams that carry a token, with the sending client's IP (client
/// binding).
pub trait Redeem {
    /// Opens `token` presented from `client` at `now`, using it up as far as `spend` says
    /// (a check, a redeem from its bound IP, or a redeem for a proven address).
    fn open_token(
        &self,
        token: &[u8],
        client: IpAddr,
        how: Use,
        now: Instant,
        spend: Spend,
    ) -> Result<Grant, Rejection>;

    /// Redeems `token` from `client`: refused (`wrong_client`) unless `client` is the IP it
    /// is bound to; a single-use token is used up.
    fn redeem(
        &self,
        token: &[u8],
        client: IpAddr,
        how: Use,
        now: Instant,
    ) -> Result<Grant, Rejection> {
        self.open_token(token, client, how, now, Spend::IfBound)
    }
}

/// What the query answer says about an issued token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issued {
    pub wire: String,
    /// What the data plane will know the token by (for `model::session_id` in the logs).
    pub key: crate::model::TokenKey,
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
    pub fn format(&self) -> TokenFormat {
        match self {
            Tokens::Uuid(_) => TokenFormat::Uuid,
            Tokens::Sealed(_) => TokenFormat::Sealed,
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
            Tokens::Uuid(store) => {
                let id = store.issue(target, client, now, policy);
                Ok(Issued {
                    wire: id.to_wire(),
                    key: id.0,
                    resume_seconds: None,
                })
            }
            Tokens::Sealed(sealed) => {
                let (wire, key) = sealed.issue_keyed(&target, client, now, policy)?;
                Ok(Issued {
                    wire,
                    key,
                    resume_seconds: Some(policy.resume.as_secs()),
                })
            }
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
            Tokens::Sealed(sealed) => sealed.sweep(now),
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

impl Redeem for Tokens {
    fn open_token(
        &self,
        token: &[u8],
        client: IpAddr,
        how: Use,
        now: Instant,
        spend: Spend,
    ) -> Result<Grant, Rejection> {
        match self {
            Tokens::Uuid(store) => store.open_wire(token, client, now, spend),
            Tokens::Sealed(sealed) => sealed.open_spending(token, client, how, now, spend),
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
