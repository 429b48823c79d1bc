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
//! Control frames (SPEC §3 "Proof of address") follow the same magic and are told apart from
//! a token by their first byte (a token is printable ASCII):
//!
//! ```text
//! [magic] 0x01 [nonce: 16]                            CHALLENGE  director -> client
//! [magic] 0x02 [nonce: 16] [token]                    RESPONSE   client -> director
//! [magic] 0x03 [id: 8] [zeros: 16]                    PING       anyone -> director (at least this long)
//! [magic] 0x04 [id: 8] [receive ns: 8] [send ns: 8]   PONG       director -> the pinger
//! ```
//!
//! Owns the datagram layout. Must not redeem tokens or know about sessions.

use super::token_wire::{MAX_WIRE, MIN_WIRE, UUID_LEN, is_wire_byte};
use crate::model::{TokenFormat, TokenId};

/// Length of a hyphenated UUID: 32 hex digits + 4 hyphens.
pub const TOKEN_LEN: usize = UUID_LEN;

/// Longest run of surrounding whitespace we look through on each side; a longer datagram
/// is game traffic without further inspection.
pub const MAX_PADDING: usize = 8;

/// The shortest and longest token of `format` without its padding: a datagram of
/// `min..=max + 2 × MAX_PADDING` bytes may be a token (the kernel fast path sends every such
/// datagram made of token and whitespace characters up to be judged here).
pub const fn token_lengths(format: TokenFormat) -> (usize, usize) {
    match format {
        TokenFormat::Uuid => (TOKEN_LEN, TOKEN_LEN),
        TokenFormat::Sealed => (MIN_WIRE, MAX_WIRE),
    }
}

/// The token inside `bytes` (surrounding whitespace trimmed), if `bytes` has the shape of
/// `format`'s tokens.
#[inline]
pub fn token_of(format: TokenFormat, bytes: &[u8]) -> Option<&[u8]> {
    let (min, max) = token_lengths(format);
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

/// CHALLENGE frame tag (director -> client).
pub const TAG_CHALLENGE: u8 = 0x01;
/// RESPONSE frame tag (client -> director).
pub const TAG_RESPONSE: u8 = 0x02;
/// PING frame tag (anyone -> director).
pub const TAG_PING: u8 = 0x03;
/// PONG frame tag (director -> the pinger).
pub const TAG_PONG: u8 = 0x04;
/// Bytes of a CHALLENGE/RESPONSE nonce.
pub const NONCE_LEN: usize = 16;
/// The pinger's bytes, echoed in the PONG.
pub const PING_ID_LEN: usize = 8;
/// After the magic: a CHALLENGE's tag and nonce.
pub const CHALLENGE_BODY_LEN: usize = 1 + NONCE_LEN;
/// After the magic: a PONG's tag, id, receive and send times; a PING is at least this long,
/// so a PONG is never larger than its PING.
pub const PONG_BODY_LEN: usize = 1 + PING_ID_LEN + 8 + 8;

/// What a datagram is, before anyone looks the token up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Datagram<'a> {
    /// Exactly a token (whitespace aside): the token's bytes.
    Token(&'a [u8]),
    /// `[magic][token]`: move, re-open or keep the session with the token's target.
    Reset(&'a [u8]),
    /// `[magic] 0x02 [nonce] [token]`: the answer to a CHALLENGE.
    Response {
        nonce: &'a [u8; NONCE_LEN],
        token: &'a [u8],
    },
    /// `[magic] 0x03 [id] [..]` of at least a PONG's length.
    Ping { id: [u8; PING_ID_LEN] },
    /// A PING shorter than its PONG would be: dropped.
    ShortPing,
    /// Starts with the magic but what follows is neither a token nor a frame a client sends.
    /// Never forwarded.
    MalformedReset,
    /// Anything else: game traffic.
    Data,
}

/// Classifies a datagram. `magic` must be non-empty (the config guarantees it).
#[inline]
pub fn classify<'a>(datagram: &'a [u8], magic: &[u8], format: TokenFormat) -> Datagram<'a> {
    if !magic.is_empty() && datagram.starts_with(magic) {
        let body = &datagram[magic.len()..];
        return match body.first() {
            Some(&TAG_RESPONSE) => response(format, &body[1..]),
            Some(&TAG_PING) => ping(&body[1..]),
            _ => match token_of(format, body) {
                Some(token) => Datagram::Reset(token),
                None => Datagram::MalformedReset,
            },
        };
    }
    match token_of(format, datagram) {
        Some(token) => Datagram::Token(token),
        None => Datagram::Data,
    }
}

/// The body of a RESPONSE after its tag: a nonce, then a token.
fn response(format: TokenFormat, rest: &[u8]) -> Datagram<'_> {
    let Some((nonce, token)) = rest.split_first_chunk::<NONCE_LEN>() else {
        return Datagram::MalformedReset;
    };
    match token_of(format, token) {
        Some(token) => Datagram::Response { nonce, token },
        None => Datagram::MalformedReset,
    }
}

/// The body of a PING after its tag: the pinger's id and padding to a PONG's length.
fn ping(rest: &[u8]) -> Datagram<'_> {
    if rest.len() + 1 < PONG_BODY_LEN {
        return Datagram::ShortPing;
    }
    match rest.first_chunk::<PING_ID_LEN>() {
        Some(id) => Datagram::Ping { id: *id },
        None => Datagram::ShortPing,
    }
}

/// Writes `[magic] 0x01 [nonce]` into `out` (cleared first).
pub fn write_challenge(out: &mut Vec<u8>, magic: &[u8], nonce: &[u8; NONCE_LEN]) {
    out.clear();
    out.extend_from_slice(magic);
    out.push(TAG_CHALLENGE);
    out.extend_from_slice(nonce);
}

/// Writes `[magic] 0x04 [id] [received] [sent]` into `out` (cleared first); times in
/// nanoseconds of the director's clock, big-endian.
pub fn write_pong(
    out: &mut Vec<u8>,
    magic: &[u8],
    id: &[u8; PING_ID_LEN],
    received_ns: u64,
    sent_ns: u64,
) {
    out.clear();
    out.extend_from_slice(magic);
    out.push(TAG_PONG);
    out.extend_from_slice(id);
    out.extend_from_slice(&received_ns.to_be_bytes());
    out.extend_from_slice(&sent_ns.to_be_bytes());
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
    fn frames_are_told_apart_from_tokens_by_their_first_byte() {
        let nonce = [7u8; NONCE_LEN];
        let response = [MAGIC, &[TAG_RESPONSE], &nonce, TOKEN.as_slice()].concat();
        assert_eq!(
            classify(&response, MAGIC, U),
            Datagram::Response {
                nonce: &nonce,
                token: id()
            }
        );
        let short_nonce = [MAGIC, &[TAG_RESPONSE], &nonce[..15]].concat();
        assert_eq!(classify(&short_nonce, MAGIC, U), Datagram::MalformedReset);
        let no_token = [MAGIC, &[TAG_RESPONSE], &nonce, b"nope"].concat();
        assert_eq!(classify(&no_token, MAGIC, U), Datagram::MalformedReset);

        let ping = [MAGIC, &[TAG_PING], b"12345678", &[0u8; 16]].concat();
        assert_eq!(ping.len(), 34, "34 bytes in all with the default magic");
        assert_eq!(
            classify(&ping, MAGIC, U),
            Datagram::Ping { id: *b"12345678" }
        );
        assert_eq!(classify(&ping[..33], MAGIC, U), Datagram::ShortPing);
        let long = [ping.as_slice(), &[0u8; 100]].concat();
        assert_eq!(
            classify(&long, MAGIC, U),
            Datagram::Ping { id: *b"12345678" }
        );
        // What the director sends is never what a client may send it.
        let challenge = [MAGIC, &[TAG_CHALLENGE], &nonce].concat();
        assert_eq!(classify(&challenge, MAGIC, U), Datagram::MalformedReset);
        let mut pong = Vec::new();
        write_pong(&mut pong, MAGIC, b"12345678", 1, 2);
        assert_eq!(pong.len(), ping.len(), "a PONG is no larger than its PING");
        assert_eq!(classify(&pong, MAGIC, U), Datagram::MalformedReset);
        let mut out = Vec::new();
        write_challenge(&mut out, MAGIC, &nonce);
        assert_eq!(out, challenge);
        assert_eq!(out.len(), MAGIC.len() + CHALLENGE_BODY_LEN);
    }

    /// The conformance vectors every client is tested against read the same here.
    #[test]
    fn conformance_vectors_classify_as_their_kind() {
        let text = include_str!("../../conformance/vectors.json");
        let vectors: serde_json::Value = serde_json::from_str(text).unwrap();
        let bytes = |v: &serde_json::Value| hex::decode(v.as_str().unwrap()).unwrap();
        let mut seen = 0;
        for v in vectors["datagrams"].as_array().unwrap() {
            let wire = bytes(&v["hex"]);
            let magic = v.get("magic").map_or_else(|| MAGIC.to_vec(), bytes);
            let token = v.get("token").map(|t| t.as_str().unwrap().as_bytes());
            let format = match token {
                Some(t) if t.len() != TOKEN_LEN => TokenFormat::Sealed,
                _ => U,
            };
            let got = classify(&wire, &magic, format);
            match v["kind"].as_str().unwrap() {
                "token" => assert_eq!(got, Datagram::Token(token.unwrap())),
                "resume" => assert_eq!(got, Datagram::Reset(token.unwrap())),
                "response" => {
                    let nonce: [u8; NONCE_LEN] = bytes(&v["nonce"]).try_into().unwrap();
                    assert_eq!(
                        got,
                        Datagram::Response {
                            nonce: &nonce,
                            token: token.unwrap()
                        }
                    );
                }
                "ping" => {
                    let id: [u8; PING_ID_LEN] = bytes(&v["id"]).try_into().unwrap();
                    assert_eq!(got, Datagram::Ping { id }, "{v}");
                }
                "challenge" => {
                    let nonce: [u8; NONCE_LEN] = bytes(&v["nonce"]).try_into().unwrap();
                    let mut out = Vec::new();
                    write_challenge(&mut out, &magic, &nonce);
                    assert_eq!(out, wire, "{v}");
                }
                "pong" => {
                    assert_eq!(got, Datagram::MalformedReset, "{v}");
                    let id: [u8; PING_ID_LEN] = bytes(&v["id"]).try_into().unwrap();
                    let time = |k: &str| v[k].as_str().unwrap().parse::<u64>().unwrap();
                    let mut out = Vec::new();
                    write_pong(&mut out, &magic, &id, time("receiveNs"), time("sendNs"));
                    assert_eq!(out, wire, "{v}");
                }
                other => panic!("unknown kind {other}"),
            }
            seen += 1;
        }
        assert!(seen >= 10, "the vectors were read");
    }

    #[test]
    fn custom_magic() {
        let pkt = [b"\x01".as_slice(), TOKEN].concat();
        assert_eq!(classify(&pkt, b"\x01", U), Datagram::Reset(id()));
        assert_eq!(classify(&pkt, MAGIC, U), Datagram::Data);
    }
}
