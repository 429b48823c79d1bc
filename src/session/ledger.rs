//! The ledger: counts shared by every data-plane worker and read by the query server.
//! Global session cap (admission) and live sessions per target address (for leastSessions).
//! Written on session create/move/close only, never per datagram.

use std::net::SocketAddr;

use dashmap::DashMap;

use crate::bounded::Bounded;
use crate::resolve::SessionCounts;

#[derive(Debug)]
pub struct Ledger {
    sessions: Bounded,
    per_target: DashMap<SocketAddr, usize>,
}

impl Ledger {
    pub fn new(cap: usize) -> Self {
        Self {
            sessions: Bounded::new(cap),
            per_target: DashMap::new(),
        }
    }

    /// Takes one place under the cap, or returns false when the cap is reached.
    pub fn try_admit(&self) -> bool {
        self.sessions.try_take()
    }

    /// Gives back a place taken by [`Ledger::try_admit`].
    pub fn release(&self) {
        self.sessions.give_back();
    }

    pub fn active(&self) -> usize {
        self.sessions.used()
    }

    pub fn cap(&self) -> usize {
        self.sessions.limit()
    }

    /// Applies a new cap to future admissions; existing sessions are untouched.
    pub fn set_cap(&self, cap: usize) {
        self.sessions.set_limit(cap);
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
        let l = Ledger::new(2);
        assert!(l.try_admit());
        assert!(l.try_admit());
        assert!(!l.try_admit());
        l.release();
        assert!(l.try_admit());
        assert_eq!(l.active(), 2);
        l.set_cap(1);
        assert!(!l.try_admit());
    }

    #[test]
    fn per_target_counts_come_and_go() {
        let l = Ledger::new(10);
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
