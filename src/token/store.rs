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

use super::Redeem;
use crate::model::{
    ClientBinding, ClientNet, Fit, Grant, Interner, Policy, Rejection, Spend, Target, TokenId, Use,
};
use crate::util::sync::lock;

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
    fn fit(&self, client: IpAddr) -> Fit {
        if self.flags & (BOUND_V4 | BOUND_V6) == 0 {
            return Fit::Unbound;
        }
        let (bits, kind) = pack(ClientNet::of(client));
        if kind == self.flags & (BOUND_V4 | BOUND_V6) && bits == self.client {
            Fit::Bound
        } else {
            Fit::OtherIp
        }
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
    targets: Interner,
}

impl TokenStore {
    /// A store holding at most `capacity` outstanding tokens (`limits.maxTokens`).
    pub fn new(capacity: u64) -> Self {
        Self {
            grants: DashMap::with_hasher(foldhash::fast::RandomState::default()),
            order: Mutex::new(VecDeque::new()),
            capacity: usize::try_from(capacity).unwrap_or(usize::MAX).max(1),
            epoch: Instant::now(),
            targets: Interner::default(),
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
            ClientBinding::Ip => pack(ClientNet::of(client)),
            ClientBinding::None => (0, 0),
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
        self.open(id, client, now, Spend::IfBound)
    }

    /// Opens a token presented from `client`, using it up as far as `spend` says.
    pub fn open(
        &self,
        id: TokenId,
        client: IpAddr,
        now: Instant,
        spend: Spend,
    ) -> Result<Grant, Rejection> {
        let (target, single_use, fit) = {
            let entry = self.grants.get(&id.0).ok_or(Rejection::Invalid)?;
            if self.ms(now) >= entry.expires_ms {
                drop(entry);
                self.grants.remove(&id.0);
                return Err(Rejection::Expired);
            }
            let fit = entry.fit(client);
            if spend == Spend::IfBound && fit == Fit::OtherIp {
                return Err(Rejection::WrongClient);
            }
            (
                Arc::clone(&entry.target),
                entry.flags & SINGLE_USE != 0,
                fit,
            )
        };
        if single_use && spend != Spend::Peek && self.grants.remove(&id.0).is_none() {
            return Err(Rejection::Invalid);
        }
        Ok(Grant {
            key: id.0,
            target,
            fit,
            single_use,
        })
    }

    /// Redeems a token in its wire form.
    pub fn redeem_wire(
        &self,
        wire: &[u8],
        client: IpAddr,
        now: Instant,
    ) -> Result<Grant, Rejection> {
        self.open_wire(wire, client, now, Spend::IfBound)
    }

    /// Opens a token in its wire form, using it up as far as `spend` says.
    pub fn open_wire(
        &self,
        wire: &[u8],
        client: IpAddr,
        now: Instant,
        spend: Spend,
    ) -> Result<Grant, Rejection> {
        let id = TokenId::from_wire(wire).ok_or(Rejection::Invalid)?;
        self.open(id, client, now, spend)
    }

    /// Tokens currently held.
    pub fn len(&self) -> u64 {
        self.grants.len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.grants.is_empty()
    }
}

impl Redeem for TokenStore {
    fn open_token(
        &self,
        token: &[u8],
        client: IpAddr,
        _how: Use,
        now: Instant,
        spend: Spend,
    ) -> Result<Grant, Rejection> {
        self.open_wire(token, client, now, spend)
    }
}

#[cfg(test)]
#[path = "store_tests.rs"]
mod tests;
