//! The ledger: admission state and counts shared by every data-plane worker and read by the
//! query server and readiness. Live sessions against the cap (the cap itself is a setting,
//! passed in from the live generation), the draining flag (no new sessions while shutting
//! down) and live sessions per target address (for leastSessions). Written on session
//! create/move/close and at shutdown only, never per datagram.
//!
//! Owns admission and counts. Must not hold settings (the cap comes with each call) or sessions.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};

use dashmap::DashMap;

use super::Refusal;
use crate::bounded::Bounded;
use crate::resolve::SessionCounts;

#[derive(Debug)]
pub struct Ledger {
    sessions: Bounded,
    draining: AtomicBool,
    per_target: DashMap<SocketAddr, usize>,
}

impl Default for Ledger {
    fn default() -> Self {
        Self::new()
    }
}

impl Ledger {
    pub fn new() -> Self {
        Self {
            sessions: Bounded::new(usize::MAX),
            draining: AtomicBool::new(false),
            per_target: DashMap::new(),
        }
    }

    /// Takes one place under the cap, or says why not (draining first: a draining director
    /// refuses newcomers whatever the count).
    pub fn try_admit(&self, cap: usize) -> Result<(), Refusal> {
        if self.draining() {
            return Err(Refusal::Draining);
        }
        if self.sessions.try_take_within(cap) {
            Ok(())
        } else {
            Err(Refusal::Cap)
        }
    }

    /// From now on no new sessions (and no new tokens: the query server reads this too).
    pub fn begin_drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Gives back a place taken by [`Ledger::try_admit`].
    pub fn release(&self) {
        self.sessions.give_back();
    }

    pub fn active(&self) -> usize {
        self.sessions.used()
    }

    pub fn target_added(&self, addr: SocketAddr) {
        *self.per_target.entry(addr).or_insert(0) += 1;
    }

    pub fn target_removed(&self, addr: SocketAddr) {
        if let dashmap::Entry::Occupied(mut e) = self.per_target.entry(addr) {
            if *e.get() <= 1 {
                e.remove();
            } else {
                *e.get_mut() -= 1;
            }
        }
    }

    /// Number of distinct targets with at least one session.
    pub fn targets(&self) -> usize {
        self.per_target.len()
    }
}

impl SessionCounts for Ledger {
    fn sessions_to(&self, addr: &SocketAddr) -> usize {
        self.per_target.get(addr).map(|c| *c).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admission_respects_the_cap() {
        let l = Ledger::new();
        assert_eq!(l.try_admit(2), Ok(()));
        assert_eq!(l.try_admit(2), Ok(()));
        assert_eq!(l.try_admit(2), Err(Refusal::Cap));
        l.release();
        assert_eq!(l.try_admit(2), Ok(()));
        assert_eq!(l.active(), 2);
        assert_eq!(
            l.try_admit(1),
            Err(Refusal::Cap),
            "a lowered cap refuses newcomers"
        );
        l.begin_drain();
        assert_eq!(l.try_admit(10), Err(Refusal::Draining));
        assert_eq!(l.active(), 2, "a refusal takes no place");
    }

    #[test]
    fn per_target_counts_come_and_go() {
        let l = Ledger::new();
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        l.target_added(a);
        l.target_added(a);
        assert_eq!(l.sessions_to(&a), 2);
        l.target_removed(a);
        l.target_removed(a);
        assert_eq!(l.sessions_to(&a), 0);
        assert_eq!(l.targets(), 0);
        l.target_removed(a);
        assert_eq!(l.sessions_to(&a), 0);
    }
}
