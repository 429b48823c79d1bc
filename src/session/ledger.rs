//! The ledger: admission state and counts shared by every data-plane worker and read by the
//! query server and readiness. Live sessions against the cap (the cap itself is a setting,
//! passed in from the live generation), sessions per client IP (`maxSessionsPerClientIp`),
//! the draining flag (no new sessions while shutting down), live sessions per target
//! address (for leastSessions), and which session holds each token (one per token per
//! replica: a redemption on another worker displaces the old holder through a queue that
//! worker drains when woken). Written on session create/move/close and at shutdown only,
//! never per datagram.
//!
//! Owns admission and counts. Must not hold settings (the cap comes with each call) or sessions.

use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use dashmap::DashMap;

use super::{Refusal, SessionId};
use crate::model::{ClientNet, Grouping, TokenKey};
use crate::resolve::SessionCounts;
use crate::util::bounded::Bounded;
use crate::util::sync::lock;

/// A session somewhere in this process: its worker, slab index and slot generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    pub worker: u16,
    pub id: SessionId,
    pub generation: u32,
}

/// A session another worker must close because its token now opens a session elsewhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Displaced {
    pub key: TokenKey,
    pub owner: Owner,
}

type Fast = foldhash::fast::RandomState;

#[derive(Debug)]
pub struct Ledger {
    sessions: Bounded,
    draining: AtomicBool,
    per_target: DashMap<SocketAddr, usize>,
    per_ip: DashMap<ClientNet, usize, Fast>,
    owners: DashMap<TokenKey, Owner, Fast>,
    /// How clients are grouped into networks for the per-IP limits (restart-only).
    grouping: Grouping,
    displaced: Mutex<Vec<Displaced>>,
    displaced_len: AtomicUsize,
}

impl Default for Ledger {
    fn default() -> Self {
        Self::new()
    }
}

impl Ledger {
    pub fn new() -> Self {
        Self::grouped(Grouping::DEFAULT)
    }

    /// A ledger whose per-IP limits count IPv6 clients by `grouping` (`limits.ipv6PrefixLength`).
    pub fn grouped(grouping: Grouping) -> Self {
        Self {
            grouping,
            sessions: Bounded::new(usize::MAX),
            draining: AtomicBool::new(false),
            per_target: DashMap::new(),
            per_ip: DashMap::with_hasher(Fast::default()),
            owners: DashMap::with_hasher(Fast::default()),
            displaced: Mutex::new(Vec::new()),
            displaced_len: AtomicUsize::new(0),
        }
    }

    /// Admits one newcomer from `ip`, or says why not: draining first (a draining director
    /// refuses newcomers whatever the count), then the IP's share (`per_ip`; IPv6: its /64),
    /// then the cap. The one admission of every session, UDP or TCP, token or default
    /// endpoint: the [`Seat`] gives both places back when dropped, unless the caller
    /// [`Seat::keep`]s it for a session it then ends with [`Ledger::leave`].
    pub fn admit(&self, ip: IpAddr, cap: usize, per_ip: usize) -> Result<Seat<'_>, Refusal> {
        if self.draining() {
            return Err(Refusal::Draining);
        }
        let net = self.net_of(ip);
        {
            let mut count = self.per_ip.entry(net).or_insert(0);
            if *count >= per_ip {
                let empty = *count == 0;
                drop(count);
                if empty {
                    self.per_ip.remove_if(&net, |_, n| *n == 0);
                }
                return Err(Refusal::ClientIpCap);
            }
            *count += 1;
        }
        if !self.sessions.try_take_within(cap) {
            self.release_net(net);
            return Err(Refusal::SessionCap);
        }
        Ok(Seat {
            ledger: self,
            net,
            kept: false,
        })
    }

    /// How this ledger groups clients into networks (for the other per-IP limits).
    pub fn grouping(&self) -> Grouping {
        self.grouping
    }

    /// The network `ip` counts under for every per-IP limit (the one client-network notion:
    /// sessions here, and the query server's and TCP ports' per-IP shares).
    pub fn net_of(&self, ip: IpAddr) -> ClientNet {
        self.grouping.net(ip)
    }

    /// Gives back the places of a session admitted with a kept [`Seat`].
    pub fn leave(&self, ip: IpAddr) {
        self.sessions.give_back();
        self.release_net(self.net_of(ip));
    }

    /// A session that moved from one client IP to another takes the new IP's share with it
    /// (a move is never refused: the token's holder is one session wherever it is).
    pub fn move_ip(&self, from: IpAddr, to: IpAddr) {
        let (from, to) = (self.net_of(from), self.net_of(to));
        if from != to {
            self.release_net(from);
            *self.per_ip.entry(to).or_insert(0) += 1;
        }
    }

    fn release_net(&self, net: ClientNet) {
        if let dashmap::Entry::Occupied(mut e) = self.per_ip.entry(net) {
            if *e.get() <= 1 {
                e.remove();
            } else {
                *e.get_mut() -= 1;
            }
        }
    }

    /// Sessions a client IP holds.
    pub fn sessions_of_ip(&self, ip: IpAddr) -> usize {
        self.per_ip.get(&self.net_of(ip)).map_or(0, |n| *n)
    }

    /// Records `owner` as the holder of `key`; returns the previous holder.
    pub fn claim(&self, key: TokenKey, owner: Owner) -> Option<Owner> {
        self.owners.insert(key, owner).filter(|prev| *prev != owner)
    }

    /// The holder of `key`, if any.
    pub fn owner(&self, key: TokenKey) -> Option<Owner> {
        self.owners.get(&key).map(|o| *o)
    }

    /// Forgets `owner` as the holder of `key` (if it still is).
    pub fn unclaim(&self, key: TokenKey, owner: Owner) {
        self.owners.remove_if(&key, |_, o| *o == owner);
    }

    /// Tokens held by a session.
    pub fn claimed(&self) -> usize {
        self.owners.len()
    }

    /// Asks `d.owner.worker` to close a session whose token moved to another worker.
    pub fn displace(&self, d: Displaced) {
        lock(&self.displaced).push(d);
        self.displaced_len.fetch_add(1, Ordering::Release);
    }

    /// True when some worker has displacements to take: one atomic load, for the workers'
    /// every loop turn.
    #[inline]
    pub fn has_displaced(&self) -> bool {
        self.displaced_len.load(Ordering::Acquire) != 0
    }

    /// Moves the displacements addressed to `worker` into `out`. Cheap when there are none.
    pub fn take_displaced(&self, worker: u16, out: &mut Vec<Displaced>) {
        if !self.has_displaced() {
            return;
        }
        let mut all = lock(&self.displaced);
        let before = all.len();
        all.retain(|d| {
            let mine = d.owner.worker == worker;
            if mine {
                out.push(*d);
            }
            !mine
        });
        self.displaced_len
            .fetch_sub(before - all.len(), Ordering::Release);
    }

    /// From now on no new sessions (and no new tokens: the query server reads this too).
    pub fn begin_drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
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

    /// Live sessions per target address (what `leastSessions` reads), for the operator page.
    pub fn per_target(&self) -> Vec<(SocketAddr, usize)> {
        self.per_target
            .iter()
            .map(|e| (*e.key(), *e.value()))
            .collect()
    }
}

/// A newcomer's places under the cap and its IP's share, given back when dropped (a refusal
/// further on, a TCP connection that ends) unless kept for a session of the table.
#[derive(Debug)]
#[must_use = "a seat is given back when dropped"]
pub struct Seat<'a> {
    ledger: &'a Ledger,
    net: ClientNet,
    kept: bool,
}

impl Seat<'_> {
    /// The session holds its places from now on; [`Ledger::leave`] gives them back.
    pub fn keep(mut self) {
        self.kept = true;
    }
}

impl Drop for Seat<'_> {
    fn drop(&mut self) {
        if !self.kept {
            self.ledger.sessions.give_back();
            self.ledger.release_net(self.net);
        }
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

    const ANY_IP: usize = usize::MAX;

    #[test]
    fn admission_respects_the_cap_and_gives_back_what_is_not_kept() {
        let l = Ledger::new();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        l.admit(ip, 2, ANY_IP).unwrap().keep();
        {
            let _held = l.admit(ip, 2, ANY_IP).unwrap();
            assert_eq!(l.admit(ip, 2, ANY_IP).unwrap_err(), Refusal::SessionCap);
            assert_eq!(l.active(), 2);
        }
        assert_eq!(l.active(), 1, "a dropped seat gives its place back");
        l.admit(ip, 2, ANY_IP).unwrap().keep();
        assert_eq!(
            l.admit(ip, 1, ANY_IP).unwrap_err(),
            Refusal::SessionCap,
            "a lowered cap refuses newcomers"
        );
        l.begin_drain();
        assert_eq!(l.admit(ip, 10, ANY_IP).unwrap_err(), Refusal::Draining);
        assert_eq!(l.active(), 2, "a refusal takes no place");
        l.leave(ip);
        l.leave(ip);
        assert_eq!((l.active(), l.sessions_of_ip(ip)), (0, 0));
    }

    #[test]
    fn per_ip_admission_counts_ipv4_addresses_and_ipv6_slash_64s() {
        let l = Ledger::new();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        l.admit(a, 10, 2).unwrap().keep();
        l.admit(a, 10, 2).unwrap().keep();
        assert_eq!(l.admit(a, 10, 2).unwrap_err(), Refusal::ClientIpCap);
        assert_eq!(l.active(), 2, "an IP refusal takes no place under the cap");
        l.admit(b, 10, 2).unwrap().keep();
        l.leave(a);
        l.admit(a, 10, 2).unwrap().keep();
        let v6a: IpAddr = "2001:db8:0:1::1".parse().unwrap();
        let v6b: IpAddr = "2001:db8:0:1::2".parse().unwrap();
        l.admit(v6a, 10, 1).unwrap().keep();
        assert_eq!(
            l.admit(v6b, 10, 1).unwrap_err(),
            Refusal::ClientIpCap,
            "same /64"
        );
        l.move_ip(a, v6b);
        assert_eq!((l.sessions_of_ip(a), l.sessions_of_ip(v6a)), (1, 2));
        for ip in [a, b, v6a, v6a] {
            l.leave(ip);
        }
        assert_eq!(l.sessions_of_ip(a) + l.sessions_of_ip(b), 0);
        assert!(l.per_ip.is_empty(), "no empty entries left");
    }

    #[test]
    fn token_owners_and_displacements() {
        let l = Ledger::new();
        let first = Owner {
            worker: 0,
            id: 1,
            generation: 0,
        };
        let second = Owner {
            worker: 1,
            id: 7,
            generation: 3,
        };
        assert_eq!(l.claim(42, first), None);
        assert_eq!(
            l.claim(42, first),
            None,
            "claiming again is not a displacement"
        );
        assert_eq!(l.claim(42, second), Some(first));
        l.unclaim(42, first);
        assert_eq!(l.owner(42), Some(second), "a stale owner cannot unclaim");
        l.displace(Displaced {
            key: 42,
            owner: first,
        });
        let mut out = Vec::new();
        l.take_displaced(1, &mut out);
        assert!(out.is_empty());
        l.take_displaced(0, &mut out);
        assert_eq!(
            out,
            [Displaced {
                key: 42,
                owner: first
            }]
        );
        l.unclaim(42, second);
        assert_eq!(l.claimed(), 0);
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
