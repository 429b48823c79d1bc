//! Who may read the admin views that show players or topology (`/sessions`, `/config`, any
//! operator page; SPEC §6): a loopback caller (127.0.0.0/8, `::1`, or either as an IPv4-mapped
//! IPv6 address on a dual-stack listener), or a caller whose `Authorization` header is
//! `Bearer <token>` with the token from `adminTokenFile`. Nobody else, and nobody by token
//! while no token is configured (an empty file is no token). Probes and `/metrics` do not ask.
//!
//! | peer      | token configured | header              | allowed |
//! |-----------|------------------|---------------------|---------|
//! | loopback  | any              | any (even wrong)    | yes     |
//! | other     | no               | any                 | no      |
//! | other     | yes              | `Bearer <token>`    | yes     |
//! | other     | yes              | missing, other, bad | no      |
//!
//! Owns that decision. Must not read files or sockets.

use std::net::IpAddr;

/// The authentication scheme of the admin token (matched without regard to case, RFC 9110 §11.1).
pub const SCHEME: &str = "Bearer";

/// The decision: `peer` is the TCP peer's address, `authorization` the raw value of the
/// request's `Authorization` header (if any), `token` the configured token (trimmed).
#[must_use]
pub fn allowed(peer: IpAddr, authorization: Option<&[u8]>, token: Option<&str>) -> bool {
    if peer.to_canonical().is_loopback() {
        return true;
    }
    let Some(token) = token.filter(|t| !t.is_empty()) else {
        return false;
    };
    authorization
        .and_then(bearer)
        .is_some_and(|given| same(given, token.as_bytes()))
}

/// The credentials of a `Bearer` header value (`Bearer <credentials>`, one or more spaces).
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at_checked(SCHEME.len())?;
    if !scheme.eq_ignore_ascii_case(SCHEME.as_bytes()) || rest.first() != Some(&b' ') {
        return None;
    }
    let credentials = rest.trim_ascii();
    (!credentials.is_empty()).then_some(credentials)
}

/// Equality whose time depends on the lengths only, not on where the bytes first differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    const TOKEN: Option<&str> = Some("s3cret-token");

    #[test]
    fn loopback_callers_are_exempt_whatever_they_send() {
        for peer in [
            "127.0.0.1",
            "127.0.0.2",
            "127.255.255.254",
            "::1",
            "::ffff:127.0.0.1",
        ] {
            for header in [None, Some(&b"Bearer wrong"[..]), Some(b"garbage")] {
                for token in [None, TOKEN, Some("")] {
                    assert!(
                        allowed(ip(peer), header, token),
                        "{peer} {header:?} {token:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn others_need_the_configured_token() {
        for peer in [
            "10.0.0.7",
            "192.0.2.2",
            "::ffff:10.0.0.7",
            "fd00::2",
            "0.0.0.0",
            "::",
        ] {
            let p = ip(peer);
            assert!(allowed(p, Some(b"Bearer s3cret-token"), TOKEN), "{peer}");
            assert!(
                allowed(p, Some(b"bearer s3cret-token"), TOKEN),
                "{peer}: scheme case"
            );
            assert!(
                allowed(p, Some(b"Bearer   s3cret-token  "), TOKEN),
                "{peer}: spaces"
            );
            for refused in [
                None,
                Some(&b"Bearer wrong-token!"[..]),
                Some(b"Bearer s3cret-toke"),
                Some(b"Bearer s3cret-token2"),
                Some(b"Bearer "),
                Some(b"Bearer"),
                Some(b"Bearers3cret-token"),
                Some(b"Basic s3cret-token"),
                Some(b"s3cret-token"),
                Some(b""),
            ] {
                assert!(!allowed(p, refused, TOKEN), "{peer} {refused:?}");
            }
            // No token configured (or an empty file): nobody off the host.
            for token in [None, Some("")] {
                assert!(!allowed(p, Some(b"Bearer "), token), "{peer}");
                assert!(!allowed(p, Some(b"Bearer s3cret-token"), token), "{peer}");
                assert!(!allowed(p, None, token), "{peer}");
            }
        }
    }

    #[test]
    fn comparison_is_exact() {
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd"));
        assert!(!same(b"abc", b"ab"));
        assert!(same(b"", b""));
    }
}
