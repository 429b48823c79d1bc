//! The data-port datagram codec (SPEC §3): is a datagram a token, a reset or game traffic?
//! Pure and allocation-free; the session table calls it on every client datagram, so it must
//! stay cheap and total. It does not look tokens up.
//!
//! Layout of a reset datagram (the SPEC's "control datagram"; its magic is the config key
//! `controlPacketMagicBytes`):
//!
//! ```text
//! [magic: 1..=32 bytes, default FF FF FF FF 'R' 'E' 'S' 'E' 'T'][token: 36 ASCII bytes]
//! ```
//!
//! Whitespace around the token is ignored (`echo $TOKEN | nc -u` appends a newline).
//!
//! Owns the datagram layout. Must not redeem tokens or know about sessions.

use crate::token::TokenId;

/// Length of a hyphenated UUID: 32 hex digits + 4 hyphens.
pub const TOKEN_LEN: usize = 36;

/// Longest run of surrounding whitespace we look through; a datagram longer than
/// `magic + TOKEN_LEN + 2 * MAX_PADDING` is game traffic without further inspection.
pub const MAX_PADDING: usize = 8;

/// What a datagram is, before anyone looks the token up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Datagram {
    /// Exactly a token (whitespace aside).
    Token(TokenId),
    /// `[magic][token]`: move (or re-open) the session to the token's target.
    Reset(TokenId),
    /// Starts with the magic but what follows is not a token. Never forwarded.
    MalformedReset,
    /// Anything else: game traffic.
    Data,
}

/// Classifies a datagram. `magic` must be non-empty (the config guarantees it).
#[inline]
pub fn classify(datagram: &[u8], magic: &[u8]) -> Datagram {
    if !magic.is_empty() && datagram.starts_with(magic) {
        return match parse_token(&datagram[magic.len()..]) {
            Some(token) => Datagram::Reset(token),
            None => Datagram::MalformedReset,
        };
    }
    match parse_token(datagram) {
        Some(token) => Datagram::Token(token),
        None => Datagram::Data,
    }
}

/// Parses a hyphenated UUID with optional surrounding ASCII whitespace.
#[inline]
pub fn parse_token(bytes: &[u8]) -> Option<TokenId> {
    // Cheap length gate first: almost all game traffic fails here.
    if bytes.len() < TOKEN_LEN || bytes.len() > TOKEN_LEN + 2 * MAX_PADDING {
        return None;
    }
    let trimmed = bytes.trim_ascii();
    if trimmed.len() != TOKEN_LEN {
        return None;
    }
    // At most MAX_PADDING bytes of whitespace on each side, not 2 × MAX_PADDING on one.
    let leading = bytes.len() - bytes.trim_ascii_start().len();
    if leading > MAX_PADDING || bytes.len() - leading - TOKEN_LEN > MAX_PADDING {
        return None;
    }
    uuid::Uuid::try_parse_ascii(trimmed)
        .ok()
        .map(|u| TokenId(u.as_u128()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAGIC: &[u8] = b"\xff\xff\xff\xffRESET";
    const TOKEN: &[u8; 36] = b"550e8400-e29b-41d4-a716-446655440000";

    fn id() -> TokenId {
        TokenId(0x550e8400_e29b_41d4_a716_446655440000)
    }

    #[test]
    fn bare_token_with_or_without_whitespace() {
        assert_eq!(classify(TOKEN, MAGIC), Datagram::Token(id()));
        let padded = [b" ".as_slice(), TOKEN, b"\r\n"].concat();
        assert_eq!(classify(&padded, MAGIC), Datagram::Token(id()));
        let eight = [b"        ".as_slice(), TOKEN, b"        "].concat();
        assert_eq!(classify(&eight, MAGIC), Datagram::Token(id()));
        // Nine on one side is past the limit even though the total would fit.
        let nine = [b"         ".as_slice(), TOKEN].concat();
        assert_eq!(classify(&nine, MAGIC), Datagram::Data);
    }

    #[test]
    fn reset_datagram() {
        let pkt = [MAGIC, TOKEN.as_slice()].concat();
        assert_eq!(classify(&pkt, MAGIC), Datagram::Reset(id()));
        let pkt = [MAGIC, TOKEN.as_slice(), b"\n"].concat();
        assert_eq!(classify(&pkt, MAGIC), Datagram::Reset(id()));
    }

    #[test]
    fn malformed_reset_is_never_data() {
        assert_eq!(classify(MAGIC, MAGIC), Datagram::MalformedReset);
        let pkt = [MAGIC, b"not-a-token".as_slice()].concat();
        assert_eq!(classify(&pkt, MAGIC), Datagram::MalformedReset);
        let pkt = [MAGIC, &TOKEN[..35]].concat();
        assert_eq!(classify(&pkt, MAGIC), Datagram::MalformedReset);
    }

    #[test]
    fn other_shapes_are_data() {
        for d in [
            b"".as_slice(),
            b"hello",
            &TOKEN[..35],
            b"550e8400e29b41d4a716446655440000", // simple form: 32 bytes, not a token
            b"{550e8400-e29b-41d4-a716-446655440000}", // braced: 38 bytes
            b"550e8400-e29b-41d4-a716-44665544000g",
            &[0u8; 1200],
        ] {
            assert_eq!(classify(d, MAGIC), Datagram::Data, "{d:?}");
        }
        // Inner whitespace is not trimmed.
        let mut inner = TOKEN.to_vec();
        inner[8] = b' ';
        assert_eq!(classify(&inner, MAGIC), Datagram::Data);
    }

    #[test]
    fn custom_magic() {
        let pkt = [b"\x01".as_slice(), TOKEN].concat();
        assert_eq!(classify(&pkt, b"\x01"), Datagram::Reset(id()));
        assert_eq!(classify(&pkt, MAGIC), Datagram::Data);
    }
}
