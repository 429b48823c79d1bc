//! A counter with a limit, shared between threads: places are taken while fewer than the
//! limit are in use and given back later. Live sessions under the cap (`session::Ledger`)
//! and the upstream socket budget (`shell::udp::DataShared`) are both this; [`Place`] holds one for
//! as long as it lives.
//!
//! Owns one counter and its limit. Must not know what it counts.

use std::sync::atomic::{AtomicUsize, Ordering};

#[derive(Debug)]
pub struct Bounded {
    limit: AtomicUsize,
    used: AtomicUsize,
}

impl Bounded {
    pub fn new(limit: usize) -> Self {
        Self {
            limit: AtomicUsize::new(limit),
            used: AtomicUsize::new(0),
        }
    }

    /// Takes one place, or returns false when the limit is reached.
    pub fn try_take(&self) -> bool {
        self.try_take_within(self.limit.load(Ordering::Relaxed))
    }

    /// Takes one place while fewer than `limit` are used (a limit the caller holds, e.g. the
    /// session cap of the live settings).
    pub fn try_take_within(&self, limit: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .is_ok()
    }

    /// Gives back a place taken by [`Bounded::try_take`] (never below zero).
    pub fn give_back(&self) {
        let _ = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }

    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    pub fn limit(&self) -> usize {
        self.limit.load(Ordering::Relaxed)
    }

    /// Applies to future takes; places already taken stay taken.
    pub fn set_limit(&self, limit: usize) {
        self.limit.store(limit, Ordering::Relaxed);
    }
}

/// One place taken from a shared [`Bounded`], given back when dropped (connections admitted
/// under a limit: query connections, TCP token lines in progress).
#[derive(Debug)]
pub(crate) struct Place(std::sync::Arc<Bounded>);

impl Place {
    /// A place in `bounded` while fewer than `limit` are used.
    pub(crate) fn within(bounded: &std::sync::Arc<Bounded>, limit: usize) -> Option<Self> {
        bounded
            .try_take_within(limit)
            .then(|| Self(std::sync::Arc::clone(bounded)))
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        self.0.give_back();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_up_to_the_limit_and_never_goes_negative() {
        let b = Bounded::new(2);
        assert!(b.try_take() && b.try_take());
        assert!(!b.try_take());
        b.give_back();
        assert!(b.try_take());
        b.set_limit(1);
        assert!(!b.try_take());
        for _ in 0..5 {
            b.give_back();
        }
        assert_eq!(b.used(), 0);
    }
}
