//! What a token looks like on the wire, for the codecs that must recognise one without
//! opening it (the datagram classifier, the TCP token line): a uuid token is a 36-byte
//! hyphenated UUID, a sealed token base64url characters of a bounded length. The sealed
//! layout itself is `token::sealed`'s, which checks at compile time that it agrees.
//!
//! Owns the token's wire shape. Must not open, redeem or seal tokens.

/// Length of a hyphenated UUID: 32 hex digits + 4 hyphens.
pub const UUID_LEN: usize = 36;

/// Longest sealed token.
pub const MAX_WIRE: usize = 128;

/// Shortest sealed token: base64url of header (3), nonce (12), tag (16) and the smallest
/// plaintext (15 fixed bytes, an IPv4 target of 4 and its port of 2, two empty-name length
/// bytes): 54 raw bytes → 72 characters.
pub const MIN_WIRE: usize = (3 + 12 + 16 + 15 + 4 + 2 + 2) * 4 / 3;

/// Is `b` a character of a sealed token's wire form (base64url)?
pub fn is_wire_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

/// The longest token of any format.
pub const MAX_TOKEN: usize = MAX_WIRE;
