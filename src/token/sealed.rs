//! The `sealed` token format (SPEC §7): self-contained tokens any replica holding the key
//! opens, so a query answered by one replica is redeemed on another and a session lost with
//! a replica is re-opened elsewhere. Nothing is stored per token.
//!
//! Wire form: base64url without padding of
//!
//! ```text
//! [version = 1][key fingerprint: 2][nonce: 12][AES-256-GCM ciphertext + tag: 16]
//!                   ^ additional authenticated data: version and fingerprint
//! plaintext:
//! [flags][issued: 6, Unix ms][ttl: 4, ms][resume: 4, s][target ip: 4|16][target port: 2]
//! [client: 4 (IPv4) | 8 (IPv6 /64), when bound][mapping len][mapping][namespace len][namespace][name]
//! ```
//!
//! At most [`MAX_WIRE`] = 128 printable bytes: the names get what the fixed fields leave
//! (38 bytes with IPv4 target and client, 22 with IPv6), the longest cut first (names are
//! shown in logs and `/sessions`, never used to route). The nonce is random per token and
//! doubles as the token's identity in the session table ([`super::TokenKey`]). AES-256-GCM
//! through `ring` (already in the tree through kube's TLS): seal ≈ 0.7–0.9 µs, open ≈ 0.5 µs
//! (`cargo bench --bench tokens`).
//!
//! Owns the sealed layout. Must not read keys from anywhere (it is handed a [`KeyRing`]).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use moka::sync::Cache;
use ring::aead::{Aad, NONCE_LEN, Nonce};
use ring::rand::SecureRandom;
use tokio::time::Instant;

use super::keys::{KeyRing, KeySet};
use super::{Binding, ClientNet, Grant, IssueError, Policy, Rejection, Use, WallClock};
use crate::resolve::Target;

/// Longest wire form.
pub const MAX_WIRE: usize = 128;
/// Shortest wire form: header, nonce, tag and the smallest plaintext (IPv4 target, unbound,
/// empty names).
pub const MIN_WIRE: usize = (HEADER + NONCE_LEN + TAG + FIXED + 4 + 2 + 2) * 4 / 3;
const VERSION: u8 = 1;
const HEADER: usize = 3;
const TAG: usize = 16;
const MAX_RAW: usize = MAX_WIRE * 3 / 4;
const MAX_PLAIN: usize = MAX_RAW - HEADER - NONCE_LEN - TAG;
/// flags, issued, ttl, resume.
const FIXED: usize = 1 + 6 + 4 + 4;

const TARGET_V6: u8 = 1;
const BOUND: u8 = 2;
const BOUND_V6: u8 = 4;
const SINGLE_USE: u8 = 8;

/// Is `b` a character of the wire form?
pub fn is_wire_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

/// What a sealed token says, once opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contents {
    pub issued_ms: u64,
    pub ttl_ms: u32,
    pub resume_s: u32,
    pub single_use: bool,
    pub target: SocketAddr,
    pub client: Option<ClientNet>,
    pub mapping: String,
    pub namespace: String,
    pub name: String,
}

/// Seals and opens tokens with the keys in force.
pub struct SealedTokens {
    keys: KeyRing,
    clock: WallClock,
    random: ring::rand::SystemRandom,
    /// `singleUseTokens`: nonces already redeemed on this replica, kept for their window.
    replay: Cache<u128, Duration>,
    /// One shared target per address, so sessions opened from sealed tokens do not each
    /// carry their own copy of the names.
    targets: super::Interner,
}

struct ReplayExpiry;

impl moka::Expiry<u128, Duration> for ReplayExpiry {
    // The trait's signature names std's Instant; we never read it.
    #[allow(clippy::disallowed_types)]
    fn expire_after_create(
        &self,
        _key: &u128,
        window: &Duration,
        _created_at: std::time::Instant,
    ) -> Option<Duration> {
        Some(*window + Duration::from_secs(1))
    }
}

impl SealedTokens {
    pub fn new(keys: KeySet, clock: WallClock, replay_capacity: u64) -> Self {
        Self {
            keys: KeyRing::new(keys),
            clock,
            random: ring::rand::SystemRandom::new(),
            replay: Cache::builder()
                .max_capacity(replay_capacity)
                .expire_after(ReplayExpiry)
                .build(),
            targets: super::Interner::default(),
        }
    }

    pub fn keys(&self) -> &KeyRing {
        &self.keys
    }

    pub fn replay_len(&self) -> u64 {
        self.replay.run_pending_tasks();
        self.replay.entry_count()
    }

    pub fn sweep(&self) {
        self.replay.run_pending_tasks();
    }

    /// Seals a token for `target` issued at `now` to the client at `client`.
    pub fn issue(
        &self,
        target: &Target,
        client: IpAddr,
        now: Instant,
        policy: Policy,
    ) -> Result<String, IssueError> {
        let mut nonce = [0u8; NONCE_LEN];
        self.random
            .fill(&mut nonce)
            .map_err(|_| IssueError::Random)?;
        let contents = Contents {
            issued_ms: self.clock.unix_ms(now),
            ttl_ms: u32::try_from(policy.ttl.as_millis()).unwrap_or(u32::MAX),
            resume_s: u32::try_from(policy.resume.as_secs()).unwrap_or(u32::MAX),
            single_use: policy.single_use,
            target: target.addr,
            client: (policy.binding == Binding::Ip).then(|| ClientNet::of(client)),
            mapping: target.mapping.clone(),
            namespace: target.namespace.clone(),
            name: target.name.clone(),
        };
        Ok(seal(&self.keys.load(), nonce, &contents))
    }

    /// Opens a token presented by `client` at `now`: bare tokens within their TTL, resets
    /// within their resume window (or the TTL, whichever is longer).
    pub fn open(
        &self,
        wire: &[u8],
        client: IpAddr,
        how: Use,
        now: Instant,
    ) -> Result<Grant, Rejection> {
        let (key, c) = open(&self.keys.load(), wire)?;
        let now_ms = self.clock.unix_ms(now);
        let window_ms = match how {
            Use::Open => u64::from(c.ttl_ms),
            Use::Resume => u64::from(c.ttl_ms).max(u64::from(c.resume_s) * 1_000),
        };
        if now_ms >= c.issued_ms.saturating_add(window_ms) {
            return Err(Rejection::Expired);
        }
        if c.client.is_some_and(|net| net != ClientNet::of(client)) {
            return Err(Rejection::WrongClient);
        }
        if c.single_use {
            let mut fresh = false;
            self.replay.entry(key).or_insert_with_if(
                || {
                    fresh = true;
                    Duration::from_millis(window_ms)
                },
                |_| false,
            );
            if !fresh {
                return Err(Rejection::Unknown);
            }
        }
        Ok(Grant {
            key,
            target: self.target(&c),
        })
    }

    fn target(&self, c: &Contents) -> Arc<Target> {
        self.targets
            .get(&c.mapping, &c.namespace, &c.name, c.target)
    }
}

fn ip_bytes(ip: IpAddr, out: &mut Vec<u8>) {
    match ip {
        IpAddr::V4(v4) => out.extend_from_slice(&v4.octets()),
        IpAddr::V6(v6) => out.extend_from_slice(&v6.octets()),
    }
}

/// Cuts `s` to at most `len` bytes on a character boundary.
fn cut(s: &str, len: usize) -> &str {
    let mut n = len.min(s.len());
    while !s.is_char_boundary(n) {
        n -= 1;
    }
    &s[..n]
}

/// Seals `c` with the set's sealing key and `nonce`.
pub fn seal(keys: &KeySet, nonce: [u8; NONCE_LEN], c: &Contents) -> String {
    let target = super::canonical(c.target);
    let mut plain = Vec::with_capacity(MAX_PLAIN);
    let mut flags = 0;
    if target.is_ipv6() {
        flags |= TARGET_V6;
    }
    match c.client {
        Some(ClientNet::V4(_)) => flags |= BOUND,
        Some(ClientNet::V6Prefix(_)) => flags |= BOUND | BOUND_V6,
        None => {}
    }
    if c.single_use {
        flags |= SINGLE_USE;
    }
    plain.push(flags);
    plain.extend_from_slice(&c.issued_ms.to_be_bytes()[2..]);
    plain.extend_from_slice(&c.ttl_ms.to_be_bytes());
    plain.extend_from_slice(&c.resume_s.to_be_bytes());
    ip_bytes(target.ip(), &mut plain);
    plain.extend_from_slice(&target.port().to_be_bytes());
    match c.client {
        Some(ClientNet::V4(ip)) => plain.extend_from_slice(&ip),
        Some(ClientNet::V6Prefix(p)) => plain.extend_from_slice(&p),
        None => {}
    }
    // The names get what is left; the longest is cut first, a byte at a time.
    let budget = MAX_PLAIN - plain.len() - 2;
    let mut lens = [c.mapping.len(), c.namespace.len(), c.name.len()];
    lens[0] = lens[0].min(255);
    lens[1] = lens[1].min(255);
    while lens.iter().sum::<usize>() > budget {
        let longest = (0..3).max_by_key(|i| (lens[*i], *i)).unwrap_or(2);
        lens[longest] -= 1;
    }
    let mapping = cut(&c.mapping, lens[0]);
    let namespace = cut(&c.namespace, lens[1]);
    let name = cut(&c.name, lens[2]);
    plain.push(mapping.len() as u8);
    plain.extend_from_slice(mapping.as_bytes());
    plain.push(namespace.len() as u8);
    plain.extend_from_slice(namespace.as_bytes());
    plain.extend_from_slice(name.as_bytes());

    let key = keys.sealing();
    let header = [VERSION, key.fingerprint[0], key.fingerprint[1]];
    let mut raw = Vec::with_capacity(MAX_RAW);
    raw.extend_from_slice(&header);
    raw.extend_from_slice(&nonce);
    let tag = key
        .aead
        .seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(header),
            &mut plain,
        )
        // AES-GCM fails only past 64 GiB of input.
        .map_or([0; TAG], |t| {
            let mut b = [0; TAG];
            b.copy_from_slice(t.as_ref());
            b
        });
    raw.extend_from_slice(&plain);
    raw.extend_from_slice(&tag);
    URL_SAFE_NO_PAD.encode(raw)
}

/// Opens a wire token with whichever key of `keys` its fingerprint names. Returns the
/// token's key (its nonce) and contents; any change to any byte is `Unknown`.
pub fn open(keys: &KeySet, wire: &[u8]) -> Result<(u128, Contents), Rejection> {
    let wire = wire.trim_ascii();
    if wire.len() < MIN_WIRE || wire.len() > MAX_WIRE {
        return Err(Rejection::Unknown);
    }
    let mut raw = [0u8; MAX_RAW + 2];
    let len = URL_SAFE_NO_PAD
        .decode_slice(wire, &mut raw)
        .map_err(|_| Rejection::Unknown)?;
    if len < HEADER + NONCE_LEN + TAG + FIXED || raw[0] != VERSION {
        return Err(Rejection::Unknown);
    }
    let key = keys
        .by_fingerprint([raw[1], raw[2]])
        .ok_or(Rejection::UnknownKey)?;
    let header = [raw[0], raw[1], raw[2]];
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(&raw[HEADER..HEADER + NONCE_LEN]);
    let plain = key
        .aead
        .open_in_place(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(header),
            &mut raw[HEADER + NONCE_LEN..len],
        )
        .map_err(|_| Rejection::Unknown)?;
    let contents = parse(plain).ok_or(Rejection::Unknown)?;
    let mut id = [0u8; 16];
    id[..NONCE_LEN].copy_from_slice(&nonce);
    Ok((u128::from_be_bytes(id), contents))
}

/// Reads an authenticated plaintext (sealed by us, so malformed means a bug or an old
/// version: refused, never panicked on).
fn parse(p: &[u8]) -> Option<Contents> {
    let mut at = 0;
    let mut take = |n: usize| -> Option<&[u8]> {
        let s = p.get(at..at + n)?;
        at += n;
        Some(s)
    };
    let flags = *take(1)?.first()?;
    let mut issued = [0u8; 8];
    issued[2..].copy_from_slice(take(6)?);
    let ttl_ms = u32::from_be_bytes(take(4)?.try_into().ok()?);
    let resume_s = u32::from_be_bytes(take(4)?.try_into().ok()?);
    let ip = if flags & TARGET_V6 != 0 {
        IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(take(16)?).ok()?))
    } else {
        IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(take(4)?).ok()?))
    };
    let port = u16::from_be_bytes(take(2)?.try_into().ok()?);
    let client = match (flags & BOUND != 0, flags & BOUND_V6 != 0) {
        (false, _) => None,
        (true, false) => Some(ClientNet::V4(take(4)?.try_into().ok()?)),
        (true, true) => Some(ClientNet::V6Prefix(take(8)?.try_into().ok()?)),
    };
    let text = |b: &[u8]| std::str::from_utf8(b).ok().map(str::to_string);
    let n = usize::from(*take(1)?.first()?);
    let mapping = text(take(n)?)?;
    let n = usize::from(*take(1)?.first()?);
    let namespace = text(take(n)?)?;
    let name = text(p.get(at..)?)?;
    Some(Contents {
        issued_ms: u64::from_be_bytes(issued),
        ttl_ms,
        resume_s,
        single_use: flags & SINGLE_USE != 0,
        target: SocketAddr::new(ip, port),
        client,
        mapping,
        namespace,
        name,
    })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::super::keys::tests::line;
    use super::*;

    fn keys(id: &str, byte: u8) -> KeySet {
        KeySet::parse(&line(id, byte)).unwrap()
    }

    fn contents(target: &str, client: Option<IpAddr>, names: (&str, &str, &str)) -> Contents {
        Contents {
            issued_ms: 1_800_000_000_123,
            ttl_ms: 30_000,
            resume_s: 600,
            single_use: false,
            target: target.parse().unwrap(),
            client: client.map(ClientNet::of),
            mapping: names.0.into(),
            namespace: names.1.into(),
            name: names.2.into(),
        }
    }

    fn policy(binding: Binding, single_use: bool) -> Policy {
        Policy {
            ttl: Duration::from_secs(30),
            resume: Duration::from_secs(600),
            single_use,
            binding,
        }
    }

    #[test]
    fn round_trips_within_128_printable_bytes() {
        let k = keys("a", 7);
        let v4: IpAddr = "203.0.113.9".parse().unwrap();
        let v6: IpAddr = "2001:db8:1:2::9".parse().unwrap();
        for c in [
            contents(
                "10.1.2.3:7654",
                Some(v4),
                ("gameserver", "game-servers", "gs-7x2k"),
            ),
            contents("[fd00::1:2]:7654", Some(v6), ("gs", "ns", "n")),
            contents("10.1.2.3:1", None, ("", "", "")),
        ] {
            let wire = seal(&k, [9; NONCE_LEN], &c);
            assert!(
                wire.len() <= MAX_WIRE && wire.len() >= MIN_WIRE,
                "{}",
                wire.len()
            );
            assert!(wire.bytes().all(is_wire_byte), "{wire}");
            let (id, back) = open(&k, wire.as_bytes()).unwrap();
            assert_eq!(back, c);
            let mut want = [0u8; 16];
            want[..NONCE_LEN].copy_from_slice(&[9; NONCE_LEN]);
            assert_eq!(
                id,
                u128::from_be_bytes(want),
                "the nonce is the token's key"
            );
        }
    }

    #[test]
    fn long_names_are_cut_to_fit_the_longest_first() {
        let k = keys("a", 7);
        let long = "n".repeat(253);
        let c = contents(
            "[fd00::1:2]:7654",
            Some("2001:db8::1".parse().unwrap()),
            ("gameserver", "game-servers", &long),
        );
        let wire = seal(&k, [1; NONCE_LEN], &c);
        assert!(wire.len() <= MAX_WIRE, "{}", wire.len());
        let (_, back) = open(&k, wire.as_bytes()).unwrap();
        assert_eq!(back.target, c.target);
        // 22 bytes of names with an IPv6 target and client: the longest are cut to even out.
        assert!(
            "gameserver".starts_with(&back.mapping) && back.mapping.len() >= 6,
            "{back:?}"
        );
        assert!("game-servers".starts_with(&back.namespace), "{back:?}");
        assert!(back.name.starts_with("nnnn"), "{}", back.name);
        assert_eq!(
            back.mapping.len() + back.namespace.len() + back.name.len(),
            22
        );
        // Multi-byte names are cut on a character boundary.
        let c = contents("10.0.0.1:1", None, ("m", "ns", &"é".repeat(100)));
        let (_, back) = open(&k, seal(&k, [1; NONCE_LEN], &c).as_bytes()).unwrap();
        assert!(back.name.chars().all(|ch| ch == 'é'));
    }

    #[test]
    fn every_flipped_byte_and_another_key_are_refused() {
        let k = keys("a", 7);
        let c = contents(
            "10.1.2.3:7654",
            Some("10.0.0.1".parse().unwrap()),
            ("m", "ns", "gs"),
        );
        let wire = seal(&k, [3; NONCE_LEN], &c).into_bytes();
        for i in 0..wire.len() {
            for replacement in [b'A', b'z', b'-'] {
                let mut bad = wire.clone();
                if bad[i] == replacement {
                    continue;
                }
                bad[i] = replacement;
                assert!(open(&k, &bad).is_err(), "byte {i} -> {replacement}");
            }
        }
        let other = keys("b", 8);
        assert_eq!(open(&other, &wire).unwrap_err(), Rejection::UnknownKey);
        // Same id, different key material: the fingerprint matches, authentication fails.
        let impostor = keys("a", 9);
        assert_eq!(open(&impostor, &wire).unwrap_err(), Rejection::Unknown);
        assert_eq!(open(&k, b"").unwrap_err(), Rejection::Unknown);
        assert_eq!(open(&k, &[b'A'; 200]).unwrap_err(), Rejection::Unknown);
    }

    #[test]
    fn rotation_opens_with_any_listed_key_and_seals_with_the_first() {
        let old = keys("old", 1);
        let c = contents("10.1.2.3:7654", None, ("m", "ns", "gs"));
        let by_old = seal(&old, [5; NONCE_LEN], &c);
        let both = KeySet::parse(&format!("{}{}", line("new", 2), line("old", 1))).unwrap();
        assert!(
            open(&both, by_old.as_bytes()).is_ok(),
            "old tokens still open"
        );
        let by_new = seal(&both, [6; NONCE_LEN], &c);
        assert!(
            open(&keys("new", 2), by_new.as_bytes()).is_ok(),
            "sealed by the first"
        );
        let only_new = keys("new", 2);
        assert_eq!(
            open(&only_new, by_old.as_bytes()).unwrap_err(),
            Rejection::UnknownKey
        );
    }

    #[tokio::test(start_paused = true)]
    async fn ttl_resume_window_binding_and_single_use() {
        let t0 = Instant::now();
        let tokens = SealedTokens::new(keys("a", 7), WallClock::fixed(t0, 1_800_000_000_000), 100);
        let target = Target::new("m", "ns", "gs", "10.1.2.3:7654".parse().unwrap());
        let me: IpAddr = "10.0.0.1".parse().unwrap();
        let wire = tokens
            .issue(&target, me, t0, policy(Binding::Ip, false))
            .unwrap();
        let w = wire.as_bytes();
        let g = tokens.open(w, me, Use::Open, t0).unwrap();
        assert_eq!(g.target.addr, target.addr);
        let at = |s| t0 + Duration::from_secs(s);
        assert!(tokens.open(w, me, Use::Open, at(29)).is_ok());
        assert_eq!(
            tokens.open(w, me, Use::Open, at(30)).unwrap_err(),
            Rejection::Expired
        );
        assert!(
            tokens.open(w, me, Use::Resume, at(599)).is_ok(),
            "resume window"
        );
        assert_eq!(
            tokens.open(w, me, Use::Resume, at(600)).unwrap_err(),
            Rejection::Expired
        );
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        assert_eq!(
            tokens.open(w, other, Use::Open, t0).unwrap_err(),
            Rejection::WrongClient
        );
        let free = tokens
            .issue(&target, me, t0, policy(Binding::None, false))
            .unwrap();
        assert!(tokens.open(free.as_bytes(), other, Use::Open, t0).is_ok());
        let once = tokens
            .issue(&target, me, t0, policy(Binding::Ip, true))
            .unwrap();
        assert!(tokens.open(once.as_bytes(), me, Use::Open, t0).is_ok());
        assert_eq!(
            tokens.open(once.as_bytes(), me, Use::Open, t0).unwrap_err(),
            Rejection::Unknown
        );
        // Two tokens for one target share one Target.
        let g2 = tokens.open(free.as_bytes(), me, Use::Open, t0).unwrap();
        assert!(Arc::ptr_eq(&g.target, &g2.target));
        assert_ne!(g.key, g2.key, "each token is its own key");
    }

    proptest! {
        #[test]
        fn any_contents_round_trip_or_fit(
            a in any::<[u8; 4]>(), port in any::<u16>(), v6 in any::<bool>(), b6 in any::<[u8; 16]>(),
            bound in any::<Option<bool>>(), issued in 0u64..(1 << 48), ttl in any::<u32>(), resume in any::<u32>(),
            mapping in "[a-z0-9-]{0,40}", ns in "[a-z0-9-]{0,63}", name in "[a-z0-9-]{0,80}",
        ) {
            let k = keys("a", 7);
            let ip = if v6 { IpAddr::V6(Ipv6Addr::from(b6)) } else { IpAddr::V4(Ipv4Addr::from(a)) };
            let client = bound.map(|v6c| if v6c { IpAddr::V6(Ipv6Addr::from(b6)) } else { IpAddr::V4(Ipv4Addr::from(a)) });
            let c = Contents {
                issued_ms: issued, ttl_ms: ttl, resume_s: resume, single_use: port % 2 == 0,
                target: SocketAddr::new(ip, port), client: client.map(ClientNet::of),
                mapping: mapping.clone(), namespace: ns.clone(), name: name.clone(),
            };
            let wire = seal(&k, [4; NONCE_LEN], &c);
            prop_assert!(wire.len() <= MAX_WIRE);
            let (_, back) = open(&k, wire.as_bytes()).unwrap();
            prop_assert_eq!(back.target, super::super::canonical(c.target));
            prop_assert_eq!((back.issued_ms, back.ttl_ms, back.resume_s, back.client), (issued, ttl, resume, c.client));
            prop_assert!(mapping.starts_with(&back.mapping) && ns.starts_with(&back.namespace) && name.starts_with(&back.name));
        }
    }
}
