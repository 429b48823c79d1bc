//! The `uuid` token format: 36-byte UUID v4 tokens naming grants held in this process's
//! memory, shared by the query server (issue) and every data-plane worker (redeem).
//!
//! Lean by construction: an outstanding token is one packed 48-byte map entry (key and a
//! 32-byte grant) and a 16-byte key in an issue-order FIFO, which reclaims expired grants
//! and, past `limits.maxTokens`, evicts the oldest. Expiry itself is
//! decided against the `now` the caller passes (the FIFO only frees memory), so a TTL
//! changed by a reload never cuts older tokens short.
//!
//! Owns issued uuid tokens. Must not resolve targets or decide what a redeem means for a session.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use dashmap::DashMap;
use tokio::time::Instant;

use super::{Binding, ClientNet, Grant, Policy, Rejection};
use crate::resolve::Target;
use crate::sync::lock;

/// A token as the data plane sees it: the UUID's 128 bits.
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

    /// Parses the wire form (the codec has already checked its shape and trimmed it).
    pub fn from_wire(bytes: &[u8]) -> Option<Self> {
        uuid::Uuid::try_parse_ascii(bytes.trim_ascii())
            .ok()
            .map(|u| Self(u.as_u128()))
    }
}

/// One grant, packed: 32 bytes (the target is shared by every token for it).
#[derive(Debug)]
struct Entry {
    target: Arc<Target>,
    /// Milliseconds after the store's epoch.
    expires_ms: u64,
    /// The querying client's IPv4 address or IPv6 /64 (`flags` says which), when bound.
    client: u64,
    flags: u8,
}

const BOUND_V4: u8 = 1;
const BOUND_V6: u8 = 2;
const SINGLE_USE: u8 = 4;

fn pack(net: ClientNet) -> (u64, u8) {
    match net {
        ClientNet::V4(ip) => (u64::from(u32::from_be_bytes(ip)), BOUND_V4),
        ClientNet::V6Prefix(p) => (u64::from_be_bytes(p), BOUND_V6),
    }
}

impl Entry {
    fn admits(&self, client: IpAddr) -> bool {
        if self.flags & (BOUND_V4 | BOUND_V6) == 0 {
            return true;
        }
        let (bits, kind) = pack(ClientNet::of(client));
        kind == self.flags & (BOUND_V4 | BOUND_V6) && bits == self.client
    }
}

/// Issued uuid tokens, bounded in number.
pub struct TokenStore {
    grants: DashMap<u128, Entry, foldhash::fast::RandomState>,
    /// Tokens in issue order, for reclaiming and evicting. May hold keys already gone from
    /// `grants` (redeemed single-use tokens).
    order: Mutex<VecDeque<u128>>,
    capacity: usize,
    /// Expiries are kept as milliseconds after this.
    epoch: Instant,
    /// Tokens for one target share one `Target` (the resolver makes one per query).
    targets: super::Interner,
}

impl TokenStore {
    /// A store holding at most `capacity` outstanding tokens (`limits.maxTokens`).
    pub fn new(capacity: u64) -> Self {
        Self {
            grants: DashMap::with_hasher(foldhash::fast::RandomState::default()),
            order: Mutex::new(VecDeque::new()),
            capacity: usize::try_from(capacity).unwrap_or(usize::MAX).max(1),
            epoch: Instant::now(),
            targets: super::Interner::default(),
        }
    }

    fn ms(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.epoch).as_millis() as u64
    }

    /// Issues a fresh token for `target` to the client at `client`, valid until
    /// `now + policy.ttl`.
    pub fn issue(
        &self,
        target: Arc<Target>,
        client: IpAddr,
        now: Instant,
        policy: Policy,
    ) -> TokenId {
        let id = TokenId::new_random();
        let (client, mut flags) = match policy.binding {
            Binding::Ip => pack(ClientNet::of(client)),
            Binding::None => (0, 0),
        };
        if policy.single_use {
            flags |= SINGLE_USE;
        }
        self.grants.insert(
            id.0,
            Entry {
                target: self.targets.share(target),
                expires_ms: self.ms(now + policy.ttl),
                client,
                flags,
            },
        );
        let mut order = lock(&self.order);
        order.push_back(id.0);
        self.reclaim(&mut order, now);
        id
    }

    /// Drops expired (or already removed) grants at the front of the issue order and evicts
    /// the oldest past the capacity.
    fn reclaim(&self, order: &mut VecDeque<u128>, now: Instant) {
        let now_ms = self.ms(now);
        while let Some(&key) = order.front() {
            let over = order.len() > self.capacity;
            let done = self.grants.get(&key).is_none_or(|e| e.expires_ms <= now_ms);
            if over || done {
                order.pop_front();
                self.grants.remove(&key);
            } else {
                break;
            }
        }
    }

    /// Reclaims expired grants and hands back the memory a past burst needed.
    pub fn sweep(&self, now: Instant) {
        let mut order = lock(&self.order);
        self.reclaim(&mut order, now);
        if order.len() < order.capacity() / 4 {
            order.shrink_to_fit();
            self.grants.shrink_to_fit();
        }
    }

    /// Redeems a token for a client at `client`. A single-use token is removed by its first
    /// successful redeem; of two racing redeems only the one whose removal took it wins.
    pub fn redeem(&self, id: TokenId, client: IpAddr, now: Instant) -> Result<Grant, Rejection> {
        let (target, single_use) = {
            let entry = self.grants.get(&id.0).ok_or(Rejection::Unknown)?;
            if self.ms(now) >= entry.expires_ms {
                drop(entry);
                self.grants.remove(&id.0);
                return Err(Rejection::Expired);
            }
            if !entry.admits(client) {
                return Err(Rejection::WrongClient);
            }
            (Arc::clone(&entry.target), entry.flags & SINGLE_USE != 0)
        };
        if single_use && self.grants.remove(&id.0).is_none() {
            return Err(Rejection::Unknown);
        }
        Ok(Grant { key: id.0, target })
    }

    /// Redeems a token in its wire form.
    pub fn redeem_wire(
        &self,
        wire: &[u8],
        client: IpAddr,
        now: Instant,
    ) -> Result<Grant, Rejection> {
        let id = TokenId::from_wire(wire).ok_or(Rejection::Unknown)?;
        self.redeem(id, client, now)
    }

    /// Tokens currently held.
    pub fn len(&self) -> u64 {
        self.grants.len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.grants.is_empty()
    }
}

impl crate::session::Redeem for TokenStore {
    fn redeem(
        &self,
        token: &[u8],
        client: IpAddr,
        _how: super::Use,
        now: Instant,
    ) -> Result<Grant, Rejection> {
        self.redeem_wire(token, client, now)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const HERE: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1));

    fn target() -> Arc<Target> {
        Arc::new(Target::new(
            "echo",
            "default",
            "a",
            "127.0.0.1:9001".parse().unwrap(),
        ))
    }

    fn policy(ttl: u64, single_use: bool) -> Policy {
        Policy {
            ttl: Duration::from_secs(ttl),
            resume: Duration::from_secs(600),
            single_use,
            binding: Binding::Ip,
        }
    }

    #[test]
    fn redeemable_until_expiry_then_rejected() {
        let store = TokenStore::new(100);
        let t0 = Instant::now();
        let id = store.issue(target(), HERE, t0, policy(30, false));
        assert!(store.redeem(id, HERE, t0).is_ok());
        assert!(store.redeem(id, HERE, t0 + Duration::from_secs(29)).is_ok());
        assert_eq!(
            store
                .redeem(id, HERE, t0 + Duration::from_secs(30))
                .unwrap_err(),
            Rejection::Expired
        );
    }

    #[test]
    fn single_use_tokens_redeem_once() {
        let store = TokenStore::new(100);
        let now = Instant::now();
        let id = store.issue(target(), HERE, now, policy(30, true));
        assert!(store.redeem(id, HERE, now).is_ok());
        assert_eq!(store.redeem(id, HERE, now).unwrap_err(), Rejection::Unknown);
    }

    #[test]
    fn each_token_keeps_the_ttl_and_rule_it_was_issued_under() {
        let store = TokenStore::new(100);
        let t0 = Instant::now();
        let old = store.issue(target(), HERE, t0, policy(30, false));
        let new = store.issue(target(), HERE, t0, policy(5, true));
        let later = t0 + Duration::from_secs(10);
        assert_eq!(
            store.redeem(new, HERE, later).unwrap_err(),
            Rejection::Expired
        );
        assert!(store.redeem(old, HERE, later).is_ok(), "issued under 30 s");
        assert!(store.redeem(old, HERE, later).is_ok(), "not single-use");
        let once = store.issue(target(), HERE, t0, policy(5, true));
        assert!(store.redeem(once, HERE, t0).is_ok());
        assert_eq!(
            store.redeem(once, HERE, t0).unwrap_err(),
            Rejection::Unknown
        );
    }

    #[test]
    fn a_bound_token_redeems_only_from_its_clients_address() {
        let store = TokenStore::new(100);
        let now = Instant::now();
        let id = store.issue(target(), HERE, now, policy(30, false));
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        assert_eq!(
            store.redeem(id, other, now).unwrap_err(),
            Rejection::WrongClient
        );
        assert!(store.redeem(id, HERE, now).is_ok());
        let v6: IpAddr = "2001:db8:1:2::7".parse().unwrap();
        let id = store.issue(target(), v6, now, policy(30, false));
        let same_64: IpAddr = "2001:db8:1:2:ffff::1".parse().unwrap();
        let other_64: IpAddr = "2001:db8:1:3::7".parse().unwrap();
        assert!(
            store.redeem(id, same_64, now).is_ok(),
            "the /64 is the client"
        );
        assert_eq!(
            store.redeem(id, other_64, now).unwrap_err(),
            Rejection::WrongClient
        );
        let free = store.issue(
            target(),
            HERE,
            now,
            Policy {
                binding: Binding::None,
                ..policy(30, false)
            },
        );
        assert!(store.redeem(free, other, now).is_ok(), "binding none");
    }

    #[test]
    fn tokens_for_one_target_share_one_target() {
        let store = TokenStore::new(100);
        let now = Instant::now();
        // The resolver hands out a fresh Arc per query.
        let a = store.issue(target(), HERE, now, policy(30, false));
        let b = store.issue(target(), HERE, now, policy(30, false));
        let (ga, gb) = (
            store.redeem(a, HERE, now).unwrap(),
            store.redeem(b, HERE, now).unwrap(),
        );
        assert!(Arc::ptr_eq(&ga.target, &gb.target));
        let renamed = Arc::new(Target::new(
            "echo",
            "default",
            "z",
            "127.0.0.1:9001".parse().unwrap(),
        ));
        let c = store.issue(renamed, HERE, now, policy(30, false));
        assert_eq!(
            store.redeem(c, HERE, now).unwrap().target.name,
            "z",
            "names are never mixed up"
        );
    }

    #[test]
    fn a_grant_stays_packed() {
        assert_eq!(std::mem::size_of::<Entry>(), 32);
        assert!(std::mem::size_of::<(u128, Entry)>() <= 48);
    }

    #[test]
    fn unknown_tokens_are_rejected() {
        let store = TokenStore::new(100);
        assert_eq!(
            store.redeem(TokenId(42), HERE, Instant::now()).unwrap_err(),
            Rejection::Unknown
        );
    }

    #[test]
    fn capacity_is_bounded_and_the_oldest_go_first() {
        let store = TokenStore::new(50);
        let now = Instant::now();
        let first = store.issue(target(), HERE, now, policy(30, false));
        let mut last = first;
        for _ in 0..500 {
            last = store.issue(target(), HERE, now, policy(30, false));
        }
        assert_eq!(store.len(), 50);
        assert_eq!(
            store.redeem(first, HERE, now).unwrap_err(),
            Rejection::Unknown
        );
        assert!(store.redeem(last, HERE, now).is_ok());
    }

    #[test]
    fn expired_grants_are_reclaimed() {
        let store = TokenStore::new(1_000);
        let t0 = Instant::now();
        for _ in 0..100 {
            store.issue(target(), HERE, t0, policy(5, false));
        }
        let long = store.issue(target(), HERE, t0, policy(60, false));
        assert_eq!(store.len(), 101);
        store.sweep(t0 + Duration::from_secs(6));
        assert_eq!(store.len(), 1);
        assert!(
            store
                .redeem(long, HERE, t0 + Duration::from_secs(6))
                .is_ok()
        );
        // Issuing reclaims expired grants at the front on its own.
        store.issue(
            target(),
            HERE,
            t0 + Duration::from_secs(61),
            policy(5, false),
        );
        assert_eq!(store.len(), 1);
    }

    #[test]
    fn wire_form_round_trips_through_the_codec() {
        let id = TokenId::new_random();
        let wire = id.to_wire();
        assert_eq!(wire.len(), 36);
        let shape = crate::protocol::datagram::TokenShape::Uuid;
        assert_eq!(
            shape.token(wire.as_bytes()).and_then(TokenId::from_wire),
            Some(id)
        );
    }
}
