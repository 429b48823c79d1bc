//! The data-port datagram codec (SPEC §3): is a datagram a token, a reset or game traffic?
//! Pure and allocation-free; the session table calls it on every client datagram, so it must
//! stay cheap and total. It does not look tokens up.
//!
//! Layout of a reset datagram (the SPEC's "control datagram"; its magic is the config key
//! `controlPacketMagicBytes`):
//!
//! ```text
//! [magic: 1..=32 bytes, default FF FF FF FF 'R' 'E' 'S' 'E' 'T'][token]
//! ```
//!
//! A token has the shape of the configured `tokenFormat` ([`token_of`]): a hyphenated UUID
//! (36 bytes) or a sealed token (base64url, `token_wire::MIN_WIRE..=MAX_WIRE` bytes).
//!
//! Whitespace around the token is ignored (`echo $TOKEN | nc -u` appends a newline).
//!
//! Owns the datagram layout. Must not redeem tokens or know about sessions.

use super::token_wire::{MAX_WIRE, MIN_WIRE, UUID_LEN, is_wire_byte};
use crate::model::{TokenFormat, TokenId};

/// Length of a hyphenated UUID: 32 hex digits + 4 hyphens.
pub const TOKEN_LEN: usize = UUID_LEN;

/// Longest run of surrounding whitespace we look through on each side; a longer datagram
/// is game traffic without further inspection.
pub const MAX_PADDING: usize = 8;

/// The token inside `bytes` (surrounding whitespace trimmed), if `bytes` has the shape of
/// `format`'s tokens.
#[inline]
pub fn token_of(format: TokenFormat, bytes: &[u8]) -> Option<&[u8]> {
    let (min, max) = match format {
        TokenFormat::Uuid => (TOKEN_LEN, TOKEN_LEN),
        TokenFormat::Sealed => (MIN_WIRE, MAX_WIRE),
    };
    // Cheap length gate first: almost all game traffic fails here.
    if bytes.len() < min || bytes.len() > max + 2 * MAX_PADDING {
        return None;
    }
    let trimmed = bytes.trim_ascii();
    if trimmed.len() < min || trimmed.len() > max {
        return None;
    }
    // At most MAX_PADDING bytes of whitespace on each side, not 2 × MAX_PADDING on one.
    let leading = bytes.len() - bytes.trim_ascii_start().len();
    if leading > MAX_PADDING || bytes.len() - leading - trimmed.len() > MAX_PADDING {
        return None;
    }
    let ok = match format {
        TokenFormat::Uuid => uuid::Uuid::try_parse_ascii(trimmed).is_ok(),
        TokenFormat::Sealed => trimmed.iter().all(|b| is_wire_byte(*b)),
    };
    ok.then_some(trimmed)
}

/// What a datagram is, before anyone looks the token up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Datagram<'a> {
    /// Exactly a token (whitespace aside): the token's bytes.
    Token(&'a [u8]),
    /// `[magic][token]`: move, re-open or keep the session with the token's target.
    Reset(&'a [u8]),
    /// Starts with the magic but what follows is not a token. Never forwarded.
    MalformedReset,
    /// Anything else: game traffic.
    Data,
}

/// Classifies a datagram. `magic` must be non-empty (the config guarantees it).
#[inline]
pub fn classify<'a>(datagram: &'a [u8], magic: &[u8], format: TokenFormat) -> Datagram<'a> {
    if !magic.is_empty() && datagram.starts_with(magic) {
        return match token_of(format, &datagram[magic.len()..]) {
            Some(token) => Datagram::Reset(token),
            None => Datagram::MalformedReset,
        };
    }
    match token_of(format, datagram) {
        Some(token) => Datagram::Token(token),
        None => Datagram::Data,
    }
}

/// Parses a hyphenated UUID token with optional surrounding ASCII whitespace.
#[inline]
pub fn parse_token(bytes: &[u8]) -> Option<TokenId> {
    token_of(TokenFormat::Uuid, bytes).and_then(TokenId::from_wire)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAGIC: &[u8] = b"\xff\xff\xff\xffRESET";
    const TOKEN: &[u8; 36] = b"550e8400-e29b-41d4-a716-446655440000";

    const U: TokenFormat = TokenFormat::Uuid;

    fn id() -> &'static [u8] {
        TOKEN
    }

    #[test]
    fn parse_token_reads_the_uuid() {
        assert_eq!(
            parse_token(TOKEN),
            Some(TokenId(0x550e8400_e29b_41d4_a716_446655440000))
        );
    }

    #[test]
    fn sealed_shape_is_base64url_of_the_sealed_lengths() {
        let s = TokenFormat::Sealed;
        let token = vec![b'A'; MIN_WIRE];
        assert_eq!(classify(&token, MAGIC, s), Datagram::Token(&token));
        let long = vec![b'-'; MAX_WIRE];
        let pkt = [MAGIC, &long, b"\n"].concat();
        assert_eq!(classify(&pkt, MAGIC, s), Datagram::Reset(&long));
        assert_eq!(classify(&[b'A'; MAX_WIRE + 1], MAGIC, s), Datagram::Data);
        assert_eq!(classify(&[b'A'; MIN_WIRE - 1], MAGIC, s), Datagram::Data);
        let mut bad = token.clone();
        bad[3] = b'+';
        assert_eq!(classify(&bad, MAGIC, s), Datagram::Data);
        // A UUID is not a sealed token, nor the other way round.
        assert_eq!(classify(TOKEN, MAGIC, s), Datagram::Data);
        assert_eq!(classify(&token, MAGIC, U), Datagram::Data);
    }

    #[test]
    fn bare_token_with_or_without_whitespace() {
        assert_eq!(classify(TOKEN, MAGIC, U), Datagram::Token(id()));
        let padded = [b" ".as_slice(), TOKEN, b"\r\n"].concat();
        assert_eq!(classify(&padded, MAGIC, U), Datagram::Token(id()));
        let eight = [b"        ".as_slice(), TOKEN, b"        "].concat();
        assert_eq!(classify(&eight, MAGIC, U), Datagram::Token(id()));
        // Nine on one side is past the limit even though the total would fit.
        let nine = [b"         ".as_slice(), TOKEN].concat();
        assert_eq!(classify(&nine, MAGIC, U), Datagram::Data);
    }

    #[test]
    fn reset_datagram() {
        let pkt = [MAGIC, TOKEN.as_slice()].concat();
        assert_eq!(classify(&pkt, MAGIC, U), Datagram::Reset(id()));
        let pkt = [MAGIC, TOKEN.as_slice(), b"\n"].concat();
        assert_eq!(classify(&pkt, MAGIC, U), Datagram::Reset(id()));
    }

    #[test]
    fn malformed_reset_is_never_data() {
        assert_eq!(classify(MAGIC, MAGIC, U), Datagram::MalformedReset);
        let pkt = [MAGIC, b"not-a-token".as_slice()].concat();
        assert_eq!(classify(&pkt, MAGIC, U), Datagram::MalformedReset);
        let pkt = [MAGIC, &TOKEN[..35]].concat();
        assert_eq!(classify(&pkt, MAGIC, U), Datagram::MalformedReset);
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
            assert_eq!(classify(d, MAGIC, U), Datagram::Data, "{d:?}");
        }
        // Inner whitespace is not trimmed.
        let mut inner = TOKEN.to_vec();
        inner[8] = b' ';
        assert_eq!(classify(&inner, MAGIC, U), Datagram::Data);
    }

    #[test]
    fn custom_magic() {
        let pkt = [b"\x01".as_slice(), TOKEN].concat();
        assert_eq!(classify(&pkt, b"\x01", U), Datagram::Reset(id()));
        assert_eq!(classify(&pkt, MAGIC, U), Datagram::Data);
    }
}
