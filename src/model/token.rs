//! Token nouns: a token's key inside the data plane, the uuid token's bits, the format and
//! client binding tokens are issued under, how a token reached the data plane, and a
//! redeemed grant.
//!
//! Owns the token vocabulary. Must not import anything of the crate (sealing, stores and
//! redemption are `token`'s).

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::target::Target;

/// A token's identity inside the data plane: the UUID's bits, or a sealed token's nonce.
/// One live session per key per data port (SPEC §3).
pub type TokenKey = u128;

/// A uuid token as the data plane sees it: the UUID's 128 bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenId(pub u128);

impl TokenId {
    pub fn new_random() -> Self {
        Self(uuid::Uuid::new_v4().as_u128())
    }

    /// The 36-byte hyphenated wire form.
    pub fn to_wire(self) -> String {
        uuid::Uuid::from_u128(self.0).hyphenated().to_string()
    }

    /// Parses the wire form (surrounding ASCII whitespace trimmed).
    pub fn from_wire(bytes: &[u8]) -> Option<Self> {
        uuid::Uuid::try_parse_ascii(bytes.trim_ascii())
            .ok()
            .map(|u| Self(u.as_u128()))
    }
}

/// `tokenFormat`: what a token is and so what it looks like on the wire.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum TokenFormat {
    /// A 36-byte hyphenated UUID v4 naming a grant kept in this replica's memory.
    #[default]
    Uuid,
    /// Self-contained, authenticated and encrypted; any replica holding the key opens it.
    Sealed,
}

/// `tokenClientBinding`: whose datagrams may redeem a token.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum ClientBinding {
    /// Only the IP address that sent the query (for IPv6 its /64).
    #[default]
    Ip,
    /// Any address (clients whose query and datagrams leave from different addresses).
    None,
}

/// The rules a token is issued under (from the settings in force at issue).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub ttl: Duration,
    /// Sealed tokens: how long after issue `[magic][token]` re-opens a session.
    pub resume: Duration,
    pub single_use: bool,
    pub binding: ClientBinding,
}

/// How a token reached the data plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Use {
    /// A bare token (or a TCP token line): opens within `tokenTTLSeconds`.
    Open,
    /// `[magic][token]`: re-opens (sealed: within `tokenResumeSeconds`) or moves a session.
    Resume,
}

/// How far a token may be used up when it is opened (SPEC §3: a token that needs proof of
/// address is checked when it arrives and used up only when the proof completes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spend {
    /// Check only: a single-use token stays usable; a client IP other than the bound one is
    /// not refused but said in [`Grant::fit`].
    Peek,
    /// Redeem from this client IP: refused (`wrong_client`) when the token is bound to
    /// another IP; a single-use token is used up.
    IfBound,
    /// Redeem for an address that has proved it receives at it, whatever IP the token is
    /// bound to; a single-use token is used up.
    Proven,
}

/// Whether the IP a token arrived from is the one it is bound to (`tokenClientBinding`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fit {
    /// The token is bound to this IP (for IPv6 its /64).
    Bound,
    /// The token is bound to another IP: a handover needs proof of address.
    OtherIp,
    /// `tokenClientBinding: none`: any address, after proof of address.
    Unbound,
}

/// A redeemed token: its key and its target, and how the client's IP fits its binding.
#[derive(Debug, Clone)]
pub struct Grant {
    pub key: TokenKey,
    pub target: Arc<Target>,
    pub fit: Fit,
    /// Redeemable once (`singleUseTokens`): a [`Spend::Peek`] left it usable.
    pub single_use: bool,
}
