//! The data port's datagrams as a client writes and reads them (SPEC §3, §7): the token
//! datagram, the resume `[magic][token]`, and the proof-of-address frames, all behind the
//! director's `controlPacketMagicBytes` and told apart from a token by their first byte
//! (tokens are printable ASCII, so never 0x01..=0x04):
//!
//! ```text
//! [token]                                                  TOKEN     client -> director
//! [magic][token]                                           RESUME    client -> director
//! [magic] 0x01 [nonce: 16]                                 CHALLENGE director -> client
//! [magic] 0x02 [nonce: 16] [token]                         RESPONSE  client -> director
//! [magic] 0x03 [id: 8] [zeros: 16]                         PING      client -> director
//! [magic] 0x04 [id: 8] [receive ns: 8] [send ns: 8]        PONG      director -> client
//! ```
//!
//! A PING is as long as the PONG it asks for (`magic + 1 + 8 + 8 + 8`, 34 bytes with the
//! default 9-byte magic), so a director's answer is never larger than what caused it. Times in
//! a PONG are nanoseconds of the director's clock, big-endian; only their difference means
//! anything to a client.
//!
//! Pure and allocation-free: encoders write into a caller's buffer, the parser borrows.
//! Owns the byte layouts. Must not decide when a frame is sent.

/// The default magic (`controlPacketMagicBytes: FFFFFFFF5245534554`).
pub const DEFAULT_MAGIC: &[u8] = b"\xff\xff\xff\xffRESET";
/// `controlPacketMagicBytes` is 1..=32 bytes.
pub const MAX_MAGIC_LEN: usize = 32;
/// A uuid token is 36 bytes, a sealed one at most 128.
pub const MAX_TOKEN_LEN: usize = 128;
/// CHALLENGE and RESPONSE nonces.
pub const NONCE_LEN: usize = 16;
/// The client's bytes in a PING, echoed in its PONG.
pub const PING_ID_LEN: usize = 8;
/// After the magic: tag 1 + id 8 + receive time 8 + send time 8 = 25. A PING is padded to it.
pub const PONG_BODY_LEN: usize = 1 + PING_ID_LEN + 8 + 8;
/// After the magic: tag 1 + nonce 16.
pub const CHALLENGE_BODY_LEN: usize = 1 + NONCE_LEN;
/// The longest datagram a client core writes: a RESPONSE with the longest magic and token,
/// 32 + 1 + 16 + 128 = 177 bytes.
pub const MAX_CONTROL_LEN: usize = MAX_MAGIC_LEN + 1 + NONCE_LEN + MAX_TOKEN_LEN;

pub const TAG_CHALLENGE: u8 = 0x01;
pub const TAG_RESPONSE: u8 = 0x02;
pub const TAG_PING: u8 = 0x03;
pub const TAG_PONG: u8 = 0x04;

/// A control frame read from a datagram (only the ones a director sends to clients, and
/// the ones clients send, for tests and tools that watch both directions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame<'a> {
    Challenge {
        nonce: [u8; NONCE_LEN],
    },
    Response {
        nonce: [u8; NONCE_LEN],
        token: &'a [u8],
    },
    Ping {
        id: [u8; PING_ID_LEN],
    },
    Pong {
        id: [u8; PING_ID_LEN],
        receive_ns: u64,
        send_ns: u64,
    },
    /// `[magic][token]`.
    Resume {
        token: &'a [u8],
    },
}

/// Why bytes behind the magic are not a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// A known tag with the wrong length (`expected` bytes in all, `found`).
    Length {
        tag: u8,
        expected: usize,
        found: usize,
    },
    /// A RESPONSE whose bytes after the nonce are not a token.
    Token { tag: u8 },
    /// Neither a known tag nor a token.
    Unknown { first: Option<u8> },
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::Length {
                tag,
                expected,
                found,
            } => write!(
                f,
                "frame 0x{tag:02x} must be {expected} bytes with this magic, found {found}"
            ),
            FrameError::Token { tag } => write!(
                f,
                "frame 0x{tag:02x} must end with a token (1..=128 printable ASCII bytes)"
            ),
            FrameError::Unknown { first: Some(b) } => write!(
                f,
                "after the magic expected a tag 0x01..=0x04 or a token, found byte 0x{b:02x}"
            ),
            FrameError::Unknown { first: None } => {
                write!(f, "the magic alone: expected a tag or a token after it")
            }
        }
    }
}

impl std::error::Error for FrameError {}

/// Whether `token` can be sent as a token: 1..=128 printable ASCII bytes (so it can never
/// be taken for a control tag).
pub fn is_token(token: &[u8]) -> bool {
    !token.is_empty() && token.len() <= MAX_TOKEN_LEN && token.iter().all(|b| b.is_ascii_graphic())
}

/// Reads `datagram`: `Ok(None)` when it does not start with `magic` (ordinary traffic, or
/// a bare token), `Ok(Some(frame))` for a well-formed frame, `Err` for anything else behind
/// the magic.
pub fn parse<'a>(datagram: &'a [u8], magic: &[u8]) -> Result<Option<Frame<'a>>, FrameError> {
    let Some(body) = datagram.strip_prefix(magic).filter(|_| !magic.is_empty()) else {
        return Ok(None);
    };
    let exact = |tag: u8, body_len: usize| {
        if body.len() == body_len {
            Ok(())
        } else {
            Err(FrameError::Length {
                tag,
                expected: magic.len() + body_len,
                found: datagram.len(),
            })
        }
    };
    let array = |from: usize| -> [u8; 8] {
        let mut a = [0u8; 8];
        a.copy_from_slice(&body[from..from + 8]);
        a
    };
    match body.first().copied() {
        Some(TAG_CHALLENGE) => {
            exact(TAG_CHALLENGE, CHALLENGE_BODY_LEN)?;
            Ok(Some(Frame::Challenge {
                nonce: nonce_at(body),
            }))
        }
        Some(TAG_RESPONSE) => {
            let token = body.get(CHALLENGE_BODY_LEN..).unwrap_or_default();
            if !is_token(token) {
                return Err(FrameError::Token { tag: TAG_RESPONSE });
            }
            Ok(Some(Frame::Response {
                nonce: nonce_at(body),
                token,
            }))
        }
        Some(TAG_PING) => {
            exact(TAG_PING, PONG_BODY_LEN)?;
            Ok(Some(Frame::Ping { id: array(1) }))
        }
        Some(TAG_PONG) => {
            exact(TAG_PONG, PONG_BODY_LEN)?;
            Ok(Some(Frame::Pong {
                id: array(1),
                receive_ns: u64::from_be_bytes(array(9)),
                send_ns: u64::from_be_bytes(array(17)),
            }))
        }
        _ if is_token(body) => Ok(Some(Frame::Resume { token: body })),
        first => Err(FrameError::Unknown { first }),
    }
}

fn nonce_at(body: &[u8]) -> [u8; NONCE_LEN] {
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(&body[1..1 + NONCE_LEN]);
    nonce
}

/// Writes `parts` one after the other at the start of `out`; the length written. `out` is
/// at least [`MAX_CONTROL_LEN`] and every caller stays within it (magic ≤ 32, token ≤ 128).
fn put(out: &mut [u8; MAX_CONTROL_LEN], parts: &[&[u8]]) -> usize {
    let mut at = 0;
    for part in parts {
        out[at..at + part.len()].copy_from_slice(part);
        at += part.len();
    }
    at
}

/// `[token]`. `token` is at most [`MAX_TOKEN_LEN`] bytes (checked by the caller with
/// [`is_token`]).
pub fn write_token(out: &mut [u8; MAX_CONTROL_LEN], token: &[u8]) -> usize {
    put(out, &[token])
}

/// `[magic][token]`.
pub fn write_resume(out: &mut [u8; MAX_CONTROL_LEN], magic: &[u8], token: &[u8]) -> usize {
    put(out, &[magic, token])
}

/// `[magic] 0x02 [nonce] [token]`.
pub fn write_response(
    out: &mut [u8; MAX_CONTROL_LEN],
    magic: &[u8],
    nonce: &[u8; NONCE_LEN],
    token: &[u8],
) -> usize {
    put(out, &[magic, &[TAG_RESPONSE], nonce, token])
}

/// `[magic] 0x03 [id] [zeros]`, as long as a PONG.
pub fn write_ping(out: &mut [u8; MAX_CONTROL_LEN], magic: &[u8], id: &[u8; PING_ID_LEN]) -> usize {
    put(out, &[magic, &[TAG_PING], id, &[0u8; 16]])
}

/// `[magic] 0x01 [nonce]` (a director's frame; for tests and tools).
pub fn write_challenge(
    out: &mut [u8; MAX_CONTROL_LEN],
    magic: &[u8],
    nonce: &[u8; NONCE_LEN],
) -> usize {
    put(out, &[magic, &[TAG_CHALLENGE], nonce])
}

/// `[magic] 0x04 [id] [receive ns] [send ns]` (a director's frame; for tests and tools).
pub fn write_pong(
    out: &mut [u8; MAX_CONTROL_LEN],
    magic: &[u8],
    id: &[u8; PING_ID_LEN],
    receive_ns: u64,
    send_ns: u64,
) -> usize {
    put(
        out,
        &[
            magic,
            &[TAG_PONG],
            id,
            &receive_ns.to_be_bytes(),
            &send_ns.to_be_bytes(),
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &[u8] = b"550e8400-e29b-41d4-a716-446655440000";

    fn written(f: impl FnOnce(&mut [u8; MAX_CONTROL_LEN]) -> usize) -> Vec<u8> {
        let mut out = [0u8; MAX_CONTROL_LEN];
        let n = f(&mut out);
        out[..n].to_vec()
    }

    #[test]
    fn frames_match_their_byte_layouts() {
        let m = DEFAULT_MAGIC;
        assert_eq!(
            written(|o| write_resume(o, m, TOKEN)),
            [m, TOKEN].concat(),
            "resume"
        );
        let nonce: [u8; 16] = std::array::from_fn(|i| i as u8);
        let challenge = written(|o| write_challenge(o, m, &nonce));
        assert_eq!(
            challenge,
            b"\xff\xff\xff\xffRESET\x01\x00\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a\x0b\x0c\x0d\x0e\x0f"
        );
        let response = written(|o| write_response(o, m, &nonce, TOKEN));
        assert_eq!(response.len(), 9 + 1 + 16 + 36);
        assert_eq!(&response[9..10], [TAG_RESPONSE]);
        let ping = written(|o| write_ping(o, m, b"ABCDEFGH"));
        assert_eq!(ping.len(), 34, "34 bytes in all with the default magic");
        assert_eq!(&ping[9..18], b"\x03ABCDEFGH");
        assert!(ping[18..].iter().all(|&b| b == 0));
        let pong = written(|o| write_pong(o, m, b"ABCDEFGH", 1, 0x0102_0304_0506_0708));
        assert_eq!(pong.len(), ping.len(), "a PONG is no larger than its PING");
        assert_eq!(
            &pong[9..],
            b"\x04ABCDEFGH\0\0\0\0\0\0\0\x01\x01\x02\x03\x04\x05\x06\x07\x08"
        );
    }

    #[test]
    fn parse_reads_back_what_was_written_and_refuses_the_rest() {
        let m = DEFAULT_MAGIC;
        let nonce = [7u8; 16];
        assert_eq!(parse(b"game data", m), Ok(None));
        assert_eq!(parse(TOKEN, m), Ok(None), "a bare token is not a frame");
        assert_eq!(
            parse(&written(|o| write_challenge(o, m, &nonce)), m),
            Ok(Some(Frame::Challenge { nonce }))
        );
        let response = written(|o| write_response(o, m, &nonce, TOKEN));
        assert_eq!(
            parse(&response, m),
            Ok(Some(Frame::Response {
                nonce,
                token: TOKEN
            }))
        );
        assert_eq!(
            parse(&written(|o| write_ping(o, m, b"12345678")), m),
            Ok(Some(Frame::Ping { id: *b"12345678" }))
        );
        assert_eq!(
            parse(&written(|o| write_pong(o, m, b"12345678", 5, 9)), m),
            Ok(Some(Frame::Pong {
                id: *b"12345678",
                receive_ns: 5,
                send_ns: 9
            }))
        );
        assert_eq!(
            parse(&[m, TOKEN].concat(), m),
            Ok(Some(Frame::Resume { token: TOKEN }))
        );
        // A cut PONG, a long CHALLENGE, the magic alone, an unknown tag.
        let pong = written(|o| write_pong(o, m, b"12345678", 5, 9));
        assert_eq!(
            parse(&pong[..33], m),
            Err(FrameError::Length {
                tag: TAG_PONG,
                expected: 34,
                found: 33
            })
        );
        let mut long = written(|o| write_challenge(o, m, &nonce));
        long.push(0);
        assert!(matches!(parse(&long, m), Err(FrameError::Length { .. })));
        assert_eq!(parse(m, m), Err(FrameError::Unknown { first: None }));
        assert_eq!(
            parse(&[m, b"\x09"].concat(), m),
            Err(FrameError::Unknown { first: Some(9) })
        );
        let msg = parse(&pong[..33], m).unwrap_err().to_string();
        assert!(msg.contains("34") && msg.contains("33"), "{msg}");
    }

    #[test]
    fn a_custom_magic_changes_only_the_prefix() {
        let m = b"\xfe\xed";
        let ping = written(|o| write_ping(o, m, b"abcdefgh"));
        assert_eq!(ping.len(), 2 + PONG_BODY_LEN);
        assert_eq!(parse(&ping, m), Ok(Some(Frame::Ping { id: *b"abcdefgh" })));
        assert_eq!(parse(&ping, DEFAULT_MAGIC), Ok(None));
        // The longest frame fits the buffer.
        let magic = [0xAAu8; MAX_MAGIC_LEN];
        let token = [b'x'; MAX_TOKEN_LEN];
        let n = written(|o| write_response(o, &magic, &[0; 16], &token)).len();
        assert_eq!(n, MAX_CONTROL_LEN);
    }

    #[test]
    fn tokens_are_printable_ascii_of_bounded_length() {
        assert!(is_token(TOKEN));
        assert!(!is_token(b""));
        assert!(!is_token(b"with space"));
        assert!(!is_token(&[b'a'; 129]));
        assert!(is_token(&[b'a'; 128]));
        assert!(!is_token(b"\x01abc"));
    }
}
