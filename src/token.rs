//! Tokens: UUID v4 grants from the query server to the data plane, held in a bounded moka
//! cache. A token names a target and expires `tokenTTLSeconds` after issue.
//!
//! The store is shared by the query server (issue) and every data-plane worker (redeem). Expiry
//! is decided against the `now` the caller passes, so it is exact and testable; moka's own TTL
//! only reclaims memory.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use moka::sync::Cache;
use tokio::time::Instant;

use crate::resolve::Target;

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
}

#[derive(Debug)]
struct Grant {
    target: Arc<Target>,
    expires_at: Instant,
    /// The TTL it was issued with (memory is reclaimed a little after it).
    ttl: Duration,
}

/// moka's per-entry expiry: each grant is reclaimed a second after its own TTL, so a TTL
/// changed by a reload applies to tokens issued from then on and never cuts older ones short.
struct GrantExpiry;

impl moka::Expiry<TokenId, Arc<Grant>> for GrantExpiry {
    // The trait's signature names std's Instant; we never read it.
    #[allow(clippy::disallowed_types)]
    fn expire_after_create(
        &self,
        _key: &TokenId,
        grant: &Arc<Grant>,
        _created_at: std::time::Instant,
    ) -> Option<Duration> {
        Some(grant.ttl + Duration::from_secs(1))
    }
}

/// Why a token did not redeem. Counted, never shown to the sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// Never issued, evicted, or already used under `singleUseTokens`.
    Unknown,
    Expired,
}

/// Issued tokens, bounded in number.
pub struct TokenStore {
    cache: Cache<TokenId, Arc<Grant>>,
    /// TTL of tokens issued from now on, in milliseconds (changed by reloads).
    ttl_ms: AtomicU64,
    single_use: AtomicBool,
}

impl TokenStore {
    pub fn new(ttl: Duration, capacity: u64, single_use: bool) -> Self {
        let cache = Cache::builder()
            .max_capacity(capacity)
            // The exact check is `expires_at`; this only frees memory.
            .expire_after(GrantExpiry)
            .build();
        Self {
            cache,
            ttl_ms: AtomicU64::new(ttl.as_millis() as u64),
            single_use: AtomicBool::new(single_use),
        }
    }

    pub fn ttl(&self) -> Duration {
        Duration::from_millis(self.ttl_ms.load(Ordering::Relaxed))
    }

    /// Applies a reloaded `tokenTTLSeconds` and `singleUseTokens` to tokens issued from now on.
    pub fn reconfigure(&self, ttl: Duration, single_use: bool) {
        self.ttl_ms.store(ttl.as_millis() as u64, Ordering::Relaxed);
        self.single_use.store(single_use, Ordering::Relaxed);
    }

    /// Issues a fresh token for `target`, valid until `now + ttl`.
    pub fn issue(&self, target: Arc<Target>, now: Instant) -> TokenId {
        let id = TokenId::new_random();
        let ttl = self.ttl();
        self.cache.insert(
            id,
            Arc::new(Grant {
                target,
                expires_at: now + ttl,
                ttl,
            }),
        );
        id
    }

    /// Redeems a token. Under `singleUseTokens` the first successful redeem removes it, so two
    /// racing redeems cannot both win.
    pub fn redeem(&self, id: TokenId, now: Instant) -> Result<Arc<Target>, Rejection> {
        let grant = if self.single_use.load(Ordering::Relaxed) {
            self.cache.remove(&id)
        } else {
            self.cache.get(&id)
        }
        .ok_or(Rejection::Unknown)?;
        if now >= grant.expires_at {
            self.cache.invalidate(&id);
            return Err(Rejection::Expired);
        }
        Ok(Arc::clone(&grant.target))
    }

    /// Tokens currently held (approximate; moka applies writes lazily).
    pub fn len(&self) -> u64 {
        self.cache.run_pending_tasks();
        self.cache.entry_count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl crate::session::Redeem for TokenStore {
    fn redeem(&self, token: TokenId, now: Instant) -> Result<Arc<Target>, Rejection> {
        TokenStore::redeem(self, token, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> Arc<Target> {
        Arc::new(Target::new(
            "echo",
            "default",
            "a",
            "127.0.0.1:9001".parse().unwrap(),
        ))
    }

    #[test]
    fn redeemable_until_expiry_then_rejected() {
        let store = TokenStore::new(Duration::from_secs(30), 100, false);
        let t0 = Instant::now();
        let id = store.issue(target(), t0);
        assert!(store.redeem(id, t0).is_ok());
        assert!(store.redeem(id, t0 + Duration::from_secs(29)).is_ok());
        assert_eq!(
            store.redeem(id, t0 + Duration::from_secs(30)).unwrap_err(),
            Rejection::Expired
        );
    }

    #[test]
    fn single_use_tokens_redeem_once() {
        let store = TokenStore::new(Duration::from_secs(30), 100, true);
        let now = Instant::now();
        let id = store.issue(target(), now);
        assert!(store.redeem(id, now).is_ok());
        assert_eq!(store.redeem(id, now).unwrap_err(), Rejection::Unknown);
    }

    #[test]
    fn reconfigure_applies_to_tokens_issued_afterwards() {
        let store = TokenStore::new(Duration::from_secs(30), 100, false);
        let t0 = Instant::now();
        let old = store.issue(target(), t0);
        store.reconfigure(Duration::from_secs(5), true);
        assert_eq!(store.ttl(), Duration::from_secs(5));
        let new = store.issue(target(), t0);
        let later = t0 + Duration::from_secs(10);
        assert_eq!(store.redeem(new, later).unwrap_err(), Rejection::Expired);
        assert!(store.redeem(old, later).is_ok(), "issued under 30 s");
        assert_eq!(
            store.redeem(old, later).unwrap_err(),
            Rejection::Unknown,
            "single-use now"
        );
    }

    #[test]
    fn unknown_tokens_are_rejected() {
        let store = TokenStore::new(Duration::from_secs(30), 100, false);
        assert_eq!(
            store.redeem(TokenId(42), Instant::now()).unwrap_err(),
            Rejection::Unknown
        );
    }

    #[test]
    fn capacity_is_bounded() {
        let store = TokenStore::new(Duration::from_secs(30), 50, false);
        let now = Instant::now();
        for _ in 0..500 {
            store.issue(target(), now);
        }
        assert!(store.len() <= 50, "{}", store.len());
    }

    #[test]
    fn wire_form_round_trips_through_the_codec() {
        let id = TokenId::new_random();
        let wire = id.to_wire();
        assert_eq!(wire.len(), 36);
        assert_eq!(
            crate::protocol::datagram::parse_token(wire.as_bytes()),
            Some(id)
        );
    }
}
