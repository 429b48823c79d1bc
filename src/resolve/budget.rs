//! The allocation budget (SPEC §4): allocation is the expensive verb, so each allocating
//! mapping spends it carefully.
//!
//! | the query                                             | outcome                        |
//! |-------------------------------------------------------|--------------------------------|
//! | a player who was allocated a server for the same ask  | [`Decision::Reuse`]: that      |
//! | (mapping, namespace, labels) within `tokenTTLSeconds` | server again, no API call      |
//! | that player's allocation for it is still running      | [`Decision::Join`]: wait for   |
//! |                                                       | it, then decide again          |
//! | otherwise, with a token left in the mapping's bucket  | [`Decision::Allocate`]         |
//! | otherwise                                             | [`Decision::RateLimited`]      |
//!
//! The bucket holds `allocate.burst` tokens and refills at `allocate.ratePerSecond`; a reuse
//! or a join draws nothing from it. An allocation for a player holds a [`Pending`] until it
//! ends (recorded or not): queries of the same player that arrive meanwhile join it instead of
//! allocating a second server. Queries without a player id are never reused (nothing says two of
//! them are the same player) but still draw from the bucket.
//!
//! Pure: time comes in as `now`; the query shell reads the clock. Memory is bounded: at most
//! [`REUSE_MAX`] remembered allocations per mapping, the oldest forgotten first.
//!
//! Owns the budget decision. Must not call the API or issue tokens.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::Resolved;
use crate::util::sync::lock;

/// Most remembered allocations per mapping (a player id and a target each, a few hundred
/// bytes): past it the oldest are forgotten, and their players allocate again.
pub const REUSE_MAX: usize = 65_536;

/// What one allocating query may do.
#[derive(Debug)]
pub enum Decision {
    /// This player's allocation for the same ask, still within its TTL.
    Reuse(Resolved),
    /// This player's allocation for the same ask is running: wait until it changes (it ends),
    /// then decide again.
    Join(watch::Receiver<bool>),
    /// Ask Agones (a token was taken from the bucket); for a player, holding its [`Pending`].
    Allocate(Option<Pending>),
    /// The bucket is empty: `rate_limited`, no API call.
    RateLimited,
}

/// A player's allocation in progress: others of the same ask join it. Dropped when the
/// allocation ends, after a success was recorded; the joiners then decide again.
#[derive(Debug)]
pub struct Pending {
    budget: Arc<Budget>,
    key: String,
    done: watch::Sender<bool>,
}

impl Pending {
    /// Remembers the allocation for this player (before the joiners are woken).
    pub fn record(&self, resolved: Resolved, now: Instant) {
        self.budget.record(self.key.clone(), resolved, now);
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        lock(&self.budget.pending).remove(&self.key);
        let _ = self.done.send(true);
    }
}

/// A token bucket: `burst` tokens, refilled at `rate` per second.
#[derive(Debug, Clone)]
pub struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Option<Instant>,
}

impl Bucket {
    /// A full bucket.
    pub fn new(rate_per_second: u32, burst: u32) -> Self {
        Self {
            rate: f64::from(rate_per_second),
            burst: f64::from(burst.max(1)),
            tokens: f64::from(burst.max(1)),
            last: None,
        }
    }

    /// Takes one token at `now`; false when none is left.
    pub fn take(&mut self, now: Instant) -> bool {
        if let Some(last) = self.last {
            let elapsed = now.saturating_duration_since(last).as_secs_f64();
            self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        }
        self.last = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Remembered allocations by ask, each until its deadline; insertion order is deadline order
/// (one TTL per mapping), so the oldest are at the front of `order`.
#[derive(Debug, Default)]
pub struct Reuse {
    held: HashMap<String, (Resolved, Instant)>,
    order: VecDeque<(Instant, String)>,
}

impl Reuse {
    /// The allocation remembered for `key`, if it has not expired at `now`.
    pub fn get(&mut self, key: &str, now: Instant) -> Option<Resolved> {
        match self.held.get(key) {
            Some((resolved, until)) if *until > now => Some(resolved.clone()),
            Some(_) => {
                self.held.remove(key);
                None
            }
            None => None,
        }
    }

    /// Remembers `resolved` for `key` until `until`, forgetting what expired and, past
    /// [`REUSE_MAX`], the oldest.
    pub fn put(&mut self, key: String, resolved: Resolved, now: Instant, until: Instant) {
        while let Some((deadline, _)) = self.order.front() {
            if *deadline > now && self.order.len() < REUSE_MAX {
                break;
            }
            if let Some((deadline, old)) = self.order.pop_front()
                && self.held.get(&old).is_some_and(|(_, d)| *d == deadline)
            {
                self.held.remove(&old);
            }
        }
        self.held.insert(key.clone(), (resolved, until));
        self.order.push_back((until, key));
    }

    /// Allocations remembered (expired ones not yet swept included).
    pub fn len(&self) -> usize {
        self.held.len()
    }

    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }
}

/// One allocating mapping's budget: its bucket and its remembered allocations.
#[derive(Debug)]
pub struct Budget {
    ttl: Duration,
    bucket: Mutex<Bucket>,
    reuse: Mutex<Reuse>,
    /// Players' allocations in progress (at most one per key, bounded by the queries
    /// waiting on the API).
    pending: Mutex<HashMap<String, watch::Receiver<bool>>>,
}

impl Budget {
    /// `ttl`: how long an allocation is handed out again (`tokenTTLSeconds`).
    pub fn new(rate_per_second: u32, burst: u32, ttl: Duration) -> Self {
        Self {
            ttl,
            bucket: Mutex::new(Bucket::new(rate_per_second, burst)),
            reuse: Mutex::new(Reuse::default()),
            pending: Mutex::new(HashMap::new()),
        }
    }

    /// What the query with this reuse key (`None`: no player id) may do at `now`.
    pub fn decide(self: &Arc<Self>, key: Option<&str>, now: Instant) -> Decision {
        let Some(key) = key else {
            return if lock(&self.bucket).take(now) {
                Decision::Allocate(None)
            } else {
                Decision::RateLimited
            };
        };
        if let Some(resolved) = lock(&self.reuse).get(key, now) {
            return Decision::Reuse(resolved);
        }
        let mut pending = lock(&self.pending);
        if let Some(running) = pending.get(key) {
            return Decision::Join(running.clone());
        }
        if !lock(&self.bucket).take(now) {
            return Decision::RateLimited;
        }
        let (done, running) = watch::channel(false);
        pending.insert(key.to_string(), running);
        Decision::Allocate(Some(Pending {
            budget: Arc::clone(self),
            key: key.to_string(),
            done,
        }))
    }

    /// Remembers a successful allocation for its player's key.
    pub fn record(&self, key: String, resolved: Resolved, now: Instant) {
        lock(&self.reuse).put(key, resolved, now, now + self.ttl);
    }

    /// Allocations remembered now.
    pub fn remembered(&self) -> usize {
        lock(&self.reuse).len()
    }
}

/// The reuse key of a query: its player, namespace and label selector (the same player asking
/// for another map is another ask). `None` without a player id.
pub fn reuse_key(
    player: Option<&str>,
    namespace: &str,
    labels: &std::collections::BTreeMap<String, String>,
) -> Option<String> {
    let player = player?;
    // Length-prefixed parts: no two different asks share a key.
    let mut key = String::with_capacity(64);
    for part in std::iter::once(player)
        .chain(std::iter::once(namespace))
        .chain(labels.iter().flat_map(|(k, v)| [k.as_str(), v.as_str()]))
    {
        key.push_str(&part.len().to_string());
        key.push(':');
        key.push_str(part);
    }
    Some(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Target;
    use std::collections::BTreeMap;
    use std::sync::Arc;

    fn resolved(name: &str) -> Resolved {
        Resolved {
            target: Arc::new(Target::new(
                "gs",
                "ns",
                name,
                "127.0.0.1:7000".parse().unwrap(),
            )),
            expose_address: false,
        }
    }

    fn name(d: &Decision) -> String {
        match d {
            Decision::Reuse(r) => r.target.name.to_string(),
            Decision::Join(_) => "join".to_string(),
            Decision::Allocate(_) => "allocate".to_string(),
            Decision::RateLimited => "rate_limited".to_string(),
        }
    }

    fn pending(d: Decision) -> Pending {
        match d {
            Decision::Allocate(Some(p)) => p,
            other => panic!("expected an allocation for a player, got {other:?}"),
        }
    }

    #[test]
    fn the_bucket_gives_its_burst_then_refills_at_the_rate() {
        let t0 = Instant::now();
        let mut b = Bucket::new(2, 3);
        assert!((0..3).all(|_| b.take(t0)));
        assert!(!b.take(t0));
        // Half a second at 2/s: one token.
        assert!(b.take(t0 + Duration::from_millis(500)));
        assert!(!b.take(t0 + Duration::from_millis(500)));
        // Long quiet: never more than the burst.
        let later = t0 + Duration::from_secs(60);
        assert!((0..3).all(|_| b.take(later)));
        assert!(!b.take(later));
    }

    #[test]
    fn the_same_player_gets_the_same_server_within_the_ttl_without_spending() {
        let t0 = Instant::now();
        let budget = Arc::new(Budget::new(1, 1, Duration::from_secs(30)));
        let key = reuse_key(Some("p1"), "ns", &BTreeMap::new()).unwrap();
        let first = pending(budget.decide(Some(&key), t0));
        first.record(resolved("gs-1"), t0);
        drop(first);
        for i in 0..100 {
            let now = t0 + Duration::from_millis(i * 10);
            assert_eq!(name(&budget.decide(Some(&key), now)), "gs-1");
        }
        // Another player finds the bucket empty (the first allocation spent it).
        let other = reuse_key(Some("p2"), "ns", &BTreeMap::new()).unwrap();
        assert_eq!(name(&budget.decide(Some(&other), t0)), "rate_limited");
        // After the TTL the player allocates again.
        let after = t0 + Duration::from_secs(30);
        assert_eq!(name(&budget.decide(Some(&key), after)), "allocate");
    }

    #[test]
    fn queries_without_a_player_always_spend() {
        let t0 = Instant::now();
        let budget = Arc::new(Budget::new(1, 2, Duration::from_secs(30)));
        assert_eq!(name(&budget.decide(None, t0)), "allocate");
        assert_eq!(name(&budget.decide(None, t0)), "allocate");
        assert_eq!(name(&budget.decide(None, t0)), "rate_limited");
    }

    #[test]
    fn a_players_second_query_joins_the_allocation_in_progress() {
        let t0 = Instant::now();
        let budget = Arc::new(Budget::new(1, 5, Duration::from_secs(30)));
        let key = reuse_key(Some("p1"), "ns", &BTreeMap::new()).unwrap();
        // A failed allocation: the joiner is woken and allocates itself.
        let first = pending(budget.decide(Some(&key), t0));
        let Decision::Join(woken) = budget.decide(Some(&key), t0) else {
            panic!("a second query joins");
        };
        assert!(!woken.has_changed().unwrap());
        drop(first);
        assert!(woken.has_changed().unwrap_or(true));
        let second = pending(budget.decide(Some(&key), t0));
        // A successful one: joiners find it recorded.
        let Decision::Join(woken) = budget.decide(Some(&key), t0) else {
            panic!("a third query joins");
        };
        second.record(resolved("gs-7"), t0);
        drop(second);
        assert!(woken.has_changed().unwrap_or(true));
        assert_eq!(name(&budget.decide(Some(&key), t0)), "gs-7");
        // Joins and reuses took nothing from the bucket: two allocations, three tokens left.
        for _ in 0..3 {
            assert_eq!(name(&budget.decide(None, t0)), "allocate");
        }
        assert_eq!(name(&budget.decide(None, t0)), "rate_limited");
        assert!(lock(&budget.pending).is_empty());
    }

    #[test]
    fn keys_tell_asks_apart() {
        let labels = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert_eq!(reuse_key(None, "ns", &labels(&[])), None);
        let a = reuse_key(Some("p"), "ns", &labels(&[("map", "dust")]));
        let b = reuse_key(Some("p"), "ns", &labels(&[("map", "nuke")]));
        let c = reuse_key(Some("p"), "other", &labels(&[("map", "dust")]));
        let d = reuse_key(Some("p:"), "ns", &labels(&[]));
        let e = reuse_key(Some("p"), ":ns", &labels(&[]));
        let all = [a, b, c, d, e];
        for (i, x) in all.iter().enumerate() {
            for y in &all[i + 1..] {
                assert_ne!(x, y);
            }
        }
    }

    #[test]
    fn memory_is_bounded_and_the_oldest_go_first() {
        let t0 = Instant::now();
        let mut reuse = Reuse::default();
        let until = t0 + Duration::from_secs(30);
        for i in 0..REUSE_MAX + 10 {
            reuse.put(format!("p{i}"), resolved("gs"), t0, until);
        }
        assert!(reuse.len() <= REUSE_MAX);
        assert!(reuse.order.len() <= REUSE_MAX);
        assert!(reuse.get("p0", t0).is_none());
        assert!(reuse.get(&format!("p{}", REUSE_MAX + 9), t0).is_some());
        // Overwriting one key many times keeps one entry, and the deque bounded.
        let mut reuse = Reuse::default();
        for i in 0..(REUSE_MAX as u64 + 10) {
            let now = t0 + Duration::from_nanos(i);
            reuse.put(
                "same".to_string(),
                resolved("gs"),
                now,
                now + Duration::from_secs(30),
            );
        }
        assert_eq!(reuse.len(), 1);
        assert!(reuse.order.len() <= REUSE_MAX);
        // Expired entries go at the next put.
        let late = t0 + Duration::from_secs(120);
        reuse.put(
            "new".to_string(),
            resolved("gs"),
            late,
            late + Duration::from_secs(30),
        );
        assert_eq!(reuse.len(), 1);
        assert!(reuse.get("same", late).is_none());
    }
}
