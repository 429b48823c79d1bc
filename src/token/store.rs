//! The `uuid` token format: 36-byte UUID v4 tokens naming grants held in this process's
//! memory, shared by the query server (issue) and every data-plane worker (redeem).
//!
//! Lean by construction (an outstanding token is one map entry and one queue entry, about
//! 130 bytes): grants live in a sharded map; a FIFO of `(expiry, token)` in issue order
//! reclaims expired grants and, past `limits.maxTokens`, evicts the oldest. Expiry itself is
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

#[derive(Debug)]
struct Entry {
    target: Arc<Target>,
    expires_at: Instant,
    /// `tokenClientBinding: ip`: the querying client's address (/64 for IPv6).
    client: Option<ClientNet>,
    /// Issued under `singleUseTokens`: the first redeem removes it.
    single_use: bool,
}

/// Issued uuid tokens, bounded in number.
pub struct TokenStore {
    grants: DashMap<u128, Entry, foldhash::fast::RandomState>,
    /// Issue order, for reclaiming and evicting. May hold keys already gone from `grants`.
    order: Mutex<VecDeque<(Instant, u128)>>,
    capacity: usize,
}

impl TokenStore {
    /// A store holding at most `capacity` outstanding tokens (`limits.maxTokens`).
    pub fn new(capacity: u64) -> Self {
        Self {
            grants: DashMap::with_hasher(foldhash::fast::RandomState::default()),
            order: Mutex::new(VecDeque::new()),
            capacity: usize::try_from(capacity).unwrap_or(usize::MAX).max(1),
        }
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
        let expires_at = now + policy.ttl;
        self.grants.insert(
            id.0,
            Entry {
                target,
                expires_at,
                client: (policy.binding == Binding::Ip).then(|| ClientNet::of(client)),
                single_use: policy.single_use,
            },
        );
        let mut order = lock(&self.order);
        order.push_back((expires_at, id.0));
        self.reclaim(&mut order, now);
        id
    }

    /// Drops expired grants at the front of the issue order and evicts the oldest past the
    /// capacity.
    fn reclaim(&self, order: &mut VecDeque<(Instant, u128)>, now: Instant) {
        while let Some(&(expires_at, key)) = order.front() {
            if expires_at <= now || order.len() > self.capacity {
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
            if now >= entry.expires_at {
                drop(entry);
                self.grants.remove(&id.0);
                return Err(Rejection::Expired);
            }
            if entry.client.is_some_and(|c| c != ClientNet::of(client)) {
                return Err(Rejection::WrongClient);
            }
            (Arc::clone(&entry.target), entry.single_use)
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
