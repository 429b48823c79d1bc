//! Tokens: UUID v4 grants from the query server to the data plane, held in a bounded moka
//! cache. A token names a target and expires `tokenTTLSeconds` after issue.
//!
//! The store is shared by the query server (issue) and every data-plane worker (redeem). Expiry
//! is decided against the `now` the caller passes, so it is exact and testable; moka's own TTL
//! only reclaims memory. A grant carries the TTL and single-use rule it was issued under
//! (from the live settings), so a reload changes tokens issued afterwards only; the store
//! holds no settings of its own.
//!
//! Owns issued tokens. Must not resolve targets or decide what a redeem means for a session.

use std::sync::Arc;
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
    /// Issued under `singleUseTokens`: the first redeem removes it.
    single_use: bool,
}

/// moka's per-entry expiry: each grant is reclaimed a second after its own TTL, so a TTL
/// changed by a reload never cuts older tokens short.
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
}

impl TokenStore {
    /// A store holding at most `capacity` outstanding tokens (`limits.maxTokens`).
    pub fn new(capacity: u64) -> Self {
        let cache = Cache::builder()
            .max_capacity(capacity)
            // The exact check is `expires_at`; this only frees memory.
            .expire_after(GrantExpiry)
            .build();
        Self { cache }
    }

    /// Issues a fresh token for `target`, valid until `now + ttl`; redeemable once when
    /// `single_use`.
    pub fn issue(
        &self,
        target: Arc<Target>,
        now: Instant,
        ttl: Duration,
        single_use: bool,
    ) -> TokenId {
        let id = TokenId::new_random();
        self.cache.insert(
            id,
            Arc::new(Grant {
                target,
                expires_at: now + ttl,
                ttl,
                single_use,
            }),
        );
        id
    }

    /// Redeems a token. A single-use token is removed by its first successful redeem; of two
    /// racing redeems only the one whose removal took it wins.
    pub fn redeem(&self, id: TokenId, now: Instant) -> Result<Arc<Target>, Rejection> {
        let grant = self.cache.get(&id).ok_or(Rejection::Unknown)?;
        if now >= grant.expires_at {
            self.cache.invalidate(&id);
            return Err(Rejection::Expired);
        }
        if grant.single_use && self.cache.remove(&id).is_none() {
            return Err(Rejection::Unknown);
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
        let store = TokenStore::new(100);
        let t0 = Instant::now();
        let id = store.issue(target(), t0, Duration::from_secs(30), false);
        assert!(store.redeem(id, t0).is_ok());
        assert!(store.redeem(id, t0 + Duration::from_secs(29)).is_ok());
        assert_eq!(
            store.redeem(id, t0 + Duration::from_secs(30)).unwrap_err(),
            Rejection::Expired
        );
    }

    #[test]
    fn single_use_tokens_redeem_once() {
        let store = TokenStore::new(100);
        let now = Instant::now();
        let id = store.issue(target(), now, Duration::from_secs(30), true);
        assert!(store.redeem(id, now).is_ok());
        assert_eq!(store.redeem(id, now).unwrap_err(), Rejection::Unknown);
    }

    #[test]
    fn each_token_keeps_the_ttl_and_rule_it_was_issued_under() {
        let store = TokenStore::new(100);
        let t0 = Instant::now();
        let old = store.issue(target(), t0, Duration::from_secs(30), false);
        let new = store.issue(target(), t0, Duration::from_secs(5), true);
        let later = t0 + Duration::from_secs(10);
        assert_eq!(store.redeem(new, later).unwrap_err(), Rejection::Expired);
        assert!(store.redeem(old, later).is_ok(), "issued under 30 s");
        assert!(store.redeem(old, later).is_ok(), "not single-use");
        let once = store.issue(target(), t0, Duration::from_secs(5), true);
        assert!(store.redeem(once, t0).is_ok());
        assert_eq!(store.redeem(once, t0).unwrap_err(), Rejection::Unknown);
    }

    #[test]
    fn unknown_tokens_are_rejected() {
        let store = TokenStore::new(100);
        assert_eq!(
            store.redeem(TokenId(42), Instant::now()).unwrap_err(),
            Rejection::Unknown
        );
    }

    #[test]
    fn capacity_is_bounded() {
        let store = TokenStore::new(50);
        let now = Instant::now();
        for _ in 0..500 {
            store.issue(target(), now, Duration::from_secs(30), false);
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
