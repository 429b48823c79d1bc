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
//! [client: 4 (IPv4) | 8 (IPv6 /64), when bound][n][n ports: 2 each, with several data ports]
//! [player len][player id, when there is one]
//! [mapping len][mapping][namespace len][namespace][name]
//! ```
//!
//! Flags: target is IPv6, bound, bound to an IPv6 /64, single use, PROXY v2 towards the
//! target (the mapping's `proxyProtocol`), a player id follows, extra data ports follow. The player id is what the game
//! server is told (PROXY v2 TLV), so it is never cut: a query whose `playerId` does not fit
//! ([`player_room`]) is refused.
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

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use dashmap::DashMap;
use ring::aead::{Aad, NONCE_LEN, Nonce};
use ring::rand::SecureRandom;
use tokio::time::Instant;

use super::keys::{KeyRing, KeySet};
use super::{IssueError, WallClock};
use crate::model::{
    ClientBinding, ClientNet, Fit, Grant, Interner, Policy, Rejection, Spend, Target, Use,
    canonical,
};
pub use crate::protocol::token_wire::{MAX_WIRE, MIN_WIRE, is_wire_byte};

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
const PROXY_V2: u8 = 16;
const PLAYER: u8 = 32;
const EXTRA_PORTS: u8 = 64;

// The wire shape the datagram codec knows (`protocol::token_wire`) is this layout's: the
// shortest token is header, nonce, tag and the smallest plaintext (IPv4 target and port,
// unbound, empty names: two length bytes), base64url without padding.
const _: () = assert!(MIN_WIRE == (HEADER + NONCE_LEN + TAG + FIXED + 4 + 2 + 2) * 4 / 3);

/// What a sealed token says, once opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contents {
    pub issued_ms: u64,
    pub ttl_ms: u32,
    pub resume_s: u32,
    pub single_use: bool,
    pub target: SocketAddr,
    pub client: Option<ClientNet>,
    /// Datagrams to the target carry a PROXY v2 header.
    pub proxy: bool,
    pub player: Option<String>,
    /// The target's ports on the data ports after the first (`dataPorts`).
    pub extra_ports: Vec<u16>,
    pub mapping: String,
    pub namespace: String,
    pub name: String,
}

/// The longest player id a token for `target` bound to `client` can carry (the names then
/// get nothing; they are display-only).
pub fn player_room(target: SocketAddr, client: Option<ClientNet>, extra_ports: usize) -> usize {
    let ip = if canonical(target).is_ipv6() { 16 } else { 4 };
    let bound = match client {
        None => 0,
        Some(ClientNet::V4(_)) => 4,
        Some(ClientNet::V6Prefix(_)) => 8,
    };
    let ports = if extra_ports == 0 {
        0
    } else {
        1 + 2 * extra_ports
    };
    MAX_PLAIN.saturating_sub(FIXED + ip + 2 + bound + ports + 1 + 2)
}

/// Seals and opens tokens with the keys in force.
pub struct SealedTokens {
    keys: KeyRing,
    clock: WallClock,
    random: ring::rand::SystemRandom,
    /// `singleUseTokens`: nonces already redeemed on this replica, kept until their window
    /// ends (Unix ms). Bounded by `limits.maxTokens`; full, it refuses (fails closed) rather
    /// than forget a used token.
    replay: DashMap<u128, u64, foldhash::fast::RandomState>,
    replay_capacity: usize,
    /// One shared target per address, so sessions opened from sealed tokens do not each
    /// carry their own copy of the names.
    targets: Interner,
}

impl SealedTokens {
    pub fn new(keys: KeySet, clock: WallClock, replay_capacity: u64) -> Self {
        Self {
            keys: KeyRing::new(keys),
            clock,
            random: ring::rand::SystemRandom::new(),
            replay: DashMap::with_hasher(Default::default()),
            replay_capacity: usize::try_from(replay_capacity).unwrap_or(usize::MAX),
            targets: Interner::default(),
        }
    }

    pub fn keys(&self) -> &KeyRing {
        &self.keys
    }

    pub fn replay_len(&self) -> u64 {
        self.replay.len() as u64
    }

    /// Forgets used single-use tokens whose window has ended (nothing can redeem them now).
    pub fn sweep(&self, now: Instant) {
        let now_ms = self.clock.unix_ms(now);
        self.replay.retain(|_, until| *until > now_ms);
    }

    /// Records a single-use token's first redemption; false when it was used before, or when
    /// the set is full even after forgetting ended windows (fail closed: a forgotten used
    /// token could be redeemed again).
    fn first_use(&self, key: u128, until_ms: u64, now: Instant) -> bool {
        if self.replay.contains_key(&key) {
            return false;
        }
        if self.replay.len() >= self.replay_capacity {
            self.sweep(now);
            if self.replay.len() >= self.replay_capacity {
                return false;
            }
        }
        self.replay.insert(key, until_ms).is_none()
    }

    /// Seals a token for `target` issued at `now` to the client at `client`.
    pub fn issue(
        &self,
        target: &Target,
        client: IpAddr,
        now: Instant,
        policy: Policy,
    ) -> Result<String, IssueError> {
        self.issue_keyed(target, client, now, policy)
            .map(|(wire, _)| wire)
    }

    /// [`Sealed::issue`], with the key the data plane will know the token by (its nonce).
    pub fn issue_keyed(
        &self,
        target: &Target,
        client: IpAddr,
        now: Instant,
        policy: Policy,
    ) -> Result<(String, u128), IssueError> {
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
            client: (policy.binding == ClientBinding::Ip).then(|| ClientNet::of(client)),
            proxy: target.proxy,
            player: target.player.as_deref().map(str::to_string),
            extra_ports: target.extra_ports.to_vec(),
            mapping: target.mapping.clone(),
            namespace: target.namespace.clone(),
            name: target.name.clone(),
        };
        if let Some(player) = &contents.player {
            let max = player_room(contents.target, contents.client, contents.extra_ports.len());
            if player.len() > max {
                return Err(IssueError::PlayerIdTooLong {
                    len: player.len(),
                    max,
                });
            }
        }
        Ok((seal(&self.keys.load(), nonce, &contents), key_of(nonce)))
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
        self.open_spending(wire, client, how, now, Spend::IfBound)
    }

    /// [`SealedTokens::open`], using a single-use token up as far as `spend` says.
    pub fn open_spending(
        &self,
        wire: &[u8],
        client: IpAddr,
        how: Use,
        now: Instant,
        spend: Spend,
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
        let fit = match c.client {
            None => Fit::Unbound,
            Some(net) if net == ClientNet::of(client) => Fit::Bound,
            Some(_) => Fit::OtherIp,
        };
        if spend == Spend::IfBound && fit == Fit::OtherIp {
            return Err(Rejection::WrongClient);
        }
        // Remembered until no use of it could redeem any more (the longer of TTL and resume).
        let last_ms = c
            .issued_ms
            .saturating_add(u64::from(c.ttl_ms).max(u64::from(c.resume_s) * 1_000));
        let used = c.single_use
            && match spend {
                Spend::Peek => self.replay.contains_key(&key),
                Spend::IfBound | Spend::Proven => !self.first_use(key, last_ms, now),
            };
        if used {
            return Err(Rejection::Invalid);
        }
        Ok(Grant {
            key,
            target: self.target(&c),
            fit,
            single_use: c.single_use,
        })
    }

    fn target(&self, c: &Contents) -> Arc<Target> {
        match &c.player {
            // A player's target is its own (the interner shares targets between players).
            Some(player) => Arc::new(
                Target::new(&c.mapping, &c.namespace, &c.name, c.target)
                    .with_proxy(c.proxy)
                    .with_extra_ports(&c.extra_ports)
                    .with_player(Some(player)),
            ),
            None => self.targets.get(
                (&c.mapping, &c.namespace, &c.name),
                c.target,
                c.proxy,
                &c.extra_ports,
            ),
        }
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

/// A sealed token's key in the data plane: its nonce, in the high bytes.
fn key_of(nonce: [u8; NONCE_LEN]) -> u128 {
    let mut id = [0u8; 16];
    id[..NONCE_LEN].copy_from_slice(&nonce);
    u128::from_be_bytes(id)
}

/// Seals `c` with the set's sealing key and `nonce`.
pub fn seal(keys: &KeySet, nonce: [u8; NONCE_LEN], c: &Contents) -> String {
    let plain = plaintext(c);
    enclose(keys, nonce, plain)
}

/// The plaintext of `c` in the layout of the module header, the names cut to what is left.
fn plaintext(c: &Contents) -> Vec<u8> {
    let target = canonical(c.target);
    let mut plain = Vec::with_capacity(MAX_PLAIN);
    // `issue` has checked it fits; a longer one (a bug) is cut rather than overflow the token.
    let player = c
        .player
        .as_deref()
        .map(|p| cut(p, player_room(target, c.client, c.extra_ports.len())));
    // `dataPorts` is at most 4 entries (validated), so this never cuts.
    let extra_ports = &c.extra_ports[..c.extra_ports.len().min(8)];
    plain.push(flags_of(
        c,
        target,
        player.is_some(),
        !extra_ports.is_empty(),
    ));
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
    if !extra_ports.is_empty() {
        plain.push(extra_ports.len() as u8);
        for p in extra_ports {
            plain.extend_from_slice(&p.to_be_bytes());
        }
    }
    if let Some(player) = player {
        plain.push(player.len() as u8);
        plain.extend_from_slice(player.as_bytes());
    }
    push_names(c, &mut plain);
    plain
}

/// The flags byte of `c` (canonical `target`; whether a player id and extra ports follow).
fn flags_of(c: &Contents, target: SocketAddr, player: bool, extra_ports: bool) -> u8 {
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
    if c.proxy {
        flags |= PROXY_V2;
    }
    if extra_ports {
        flags |= EXTRA_PORTS;
    }
    if player {
        flags |= PLAYER;
    }
    flags
}

/// Appends mapping, namespace and name to `plain` in what [`MAX_PLAIN`] leaves; the longest
/// is cut first, a byte at a time.
fn push_names(c: &Contents, plain: &mut Vec<u8>) {
    let budget = MAX_PLAIN.saturating_sub(plain.len() + 2);
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
}

/// Encrypts `plain` in place under the set's sealing key and `nonce` (version and
/// fingerprint as additional data) and encodes header, nonce, ciphertext and tag.
fn enclose(keys: &KeySet, nonce: [u8; NONCE_LEN], mut plain: Vec<u8>) -> String {
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
        return Err(Rejection::Invalid);
    }
    let mut raw = [0u8; MAX_RAW + 2];
    let len = URL_SAFE_NO_PAD
        .decode_slice(wire, &mut raw)
        .map_err(|_| Rejection::Invalid)?;
    if len < HEADER + NONCE_LEN + TAG + FIXED || raw[0] != VERSION {
        return Err(Rejection::Invalid);
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
        .map_err(|_| Rejection::Invalid)?;
    let contents = parse(plain).ok_or(Rejection::Invalid)?;
    Ok((key_of(nonce), contents))
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
    let mut extra_ports = Vec::new();
    if flags & EXTRA_PORTS != 0 {
        let n = usize::from(*take(1)?.first()?);
        for _ in 0..n {
            extra_ports.push(u16::from_be_bytes(take(2)?.try_into().ok()?));
        }
    }
    let player = if flags & PLAYER != 0 {
        let n = usize::from(*take(1)?.first()?);
        Some(text(take(n)?)?)
    } else {
        None
    };
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
        proxy: flags & PROXY_V2 != 0,
        player,
        extra_ports,
        mapping,
        namespace,
        name,
    })
}

#[cfg(test)]
#[path = "sealed_tests.rs"]
mod tests;
