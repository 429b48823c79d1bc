//! The TCP data port's first line (SPEC §3, "TCP data ports"): the token, then `\n`, within a
//! bounded length; what follows in the same segment is the game's. Pure framing.
//!
//! Owns the line's layout. Must not redeem the token or touch sockets.

use super::token_wire::MAX_TOKEN;

/// The longest token line: the longest token (sealed) and `\r\n`.
pub const MAX_LINE: usize = MAX_TOKEN + 2;

/// Where the token line ends in the bytes that have arrived so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    /// No `\n` yet and still short enough.
    Incomplete,
    /// Longer than [`MAX_LINE`] without a `\n`, or an empty token.
    Bad,
    /// `token` is the trimmed token's range; game bytes start at `rest`.
    Complete {
        token: std::ops::Range<usize>,
        rest: usize,
    },
}

/// Frames the token line of `buf` (what a client sent first), at most `max` bytes with its
/// `\n`. Surrounding ASCII whitespace (and a `\r`) is not part of the token.
pub fn token_line(buf: &[u8], max: usize) -> Line {
    let Some(end) = buf.iter().take(max).position(|b| *b == b'\n') else {
        return if buf.len() >= max {
            Line::Bad
        } else {
            Line::Incomplete
        };
    };
    let line = &buf[..end];
    let start = line
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(end);
    let stop = line
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |i| i + 1);
    if start >= stop {
        return Line::Bad;
    }
    Line::Complete {
        token: start..stop,
        rest: end + 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_line_is_framed_trimmed_and_bounded() {
        let tok = "550e8400-e29b-41d4-a716-446655440000";
        let line = format!("{tok}\nGAME");
        assert_eq!(
            token_line(line.as_bytes(), MAX_LINE),
            Line::Complete {
                token: 0..36,
                rest: 37
            }
        );
        let line = format!("  {tok}\r\n");
        assert_eq!(
            token_line(line.as_bytes(), MAX_LINE),
            Line::Complete {
                token: 2..38,
                rest: 40
            }
        );
        assert_eq!(token_line(tok.as_bytes(), MAX_LINE), Line::Incomplete);
        assert_eq!(token_line(b"", MAX_LINE), Line::Incomplete);
        assert_eq!(token_line(b"\n", MAX_LINE), Line::Bad);
        assert_eq!(token_line(b" \r\n", MAX_LINE), Line::Bad);
        assert_eq!(token_line(&[b'a'; MAX_LINE], MAX_LINE), Line::Bad);
        // The newline must come within the bound.
        let mut long = vec![b'a'; MAX_LINE];
        long.push(b'\n');
        assert_eq!(token_line(&long, MAX_LINE), Line::Bad);
        let mut fits = vec![b'a'; MAX_LINE - 1];
        fits.push(b'\n');
        assert!(matches!(
            token_line(&fits, MAX_LINE),
            Line::Complete { rest, .. } if rest == MAX_LINE
        ));
    }
}
