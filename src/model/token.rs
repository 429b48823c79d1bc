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

/// The id logs give the session a token opens (`session_id`, 16 hex digits): the query line
/// that issued the token and the access line of the session it opened carry the same one, on
/// every replica (a resumed session keeps it), so support can follow a player from query to
/// server to session. The first 8 bytes of SHA-256 over a fixed label and the key: the token
/// cannot be recovered from it, and nothing but a log line ever computes it.
#[must_use]
pub fn session_id(key: TokenKey) -> String {
    let mut input = [0u8; 24 + 16];
    input[..24].copy_from_slice(b"udp-director session id\0");
    input[24..].copy_from_slice(&key.to_be_bytes());
    let digest = ring::digest::digest(&ring::digest::SHA256, &input);
    hex::encode(&digest.as_ref()[..8])
}

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

#[cfg(test)]
mod tests {
    #[test]
    fn session_ids_are_stable_short_and_distinct() {
        let a = super::session_id(0x1234_5678_9abc_def0_1122_3344_5566_7788);
        assert_eq!(a.len(), 16);
        assert!(a.bytes().all(|b| b.is_ascii_hexdigit()), "{a}");
        assert_eq!(
            a,
            super::session_id(0x1234_5678_9abc_def0_1122_3344_5566_7788)
        );
        assert_ne!(
            a,
            super::session_id(0x1234_5678_9abc_def0_1122_3344_5566_7789)
        );
        assert!(!a.contains("12345678"), "not the key's digits");
    }
}
