//! Proof of address (SPEC §3): the nonce a CHALLENGE carries, checked again when its
//! RESPONSE comes back without any state kept per challenge, and the budgets that bound
//! challenges and pings per client network and per replica.
//!
//! A nonce is `[issued: 4, ms of this process's clock, big-endian][mac: 12]` where `mac` is
//! HMAC-SHA-256 under a secret of this process over the issue time, the token's key and the
//! challenged address. Only an address that receives the CHALLENGE can answer it; a forger's
//! flood of challenges stores nothing, so it cannot crowd out the real player's proof, and a
//! response is checked with one HMAC. A response is good for [`RESPONSE_WINDOW`].
//!
//! Budgets are fixed one-second windows in atomics shared by every worker of the process:
//! per client network ([`PER_NET_PER_SECOND`]), per token ([`PER_TOKEN_PER_SECOND`]) and
//! per replica (`pathChallengesPerSecond`, `pingsPerSecond`), the first two in fixed arrays
//! of slots indexed by a seeded hash (keys that share a slot share its budget: memory stays
//! bounded whatever a forger sends).
//!
//! Which budgets a challenge draws on says who a forger can crowd out. A challenge to the
//! IP a token is bound to (a NAT rebinding) draws on that network's budget only: a flood
//! from other addresses, however wide, never delays it. Any other (a handover to a new IP,
//! or an unbound token) draws on the network's, then the token's, then the replica's: one
//! token sprayed from many addresses takes at most its own share of the replica's budget,
//! so it cannot delay other players' proofs, only (past the budgets) its own holder's
//! handover while the spray lasts.
//!
//! Owns nonces and budgets. Must not do I/O, read the clock or decide what a proof completes
//! (the session table does).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use ring::hmac;
use tokio::time::Instant;

use crate::model::{ClientNet, TokenKey};
use crate::protocol::datagram::NONCE_LEN;

/// How long after its CHALLENGE a RESPONSE completes a proof.
pub const RESPONSE_WINDOW: Duration = Duration::from_secs(2);

/// Challenges, and pings answered, per second to one client network (IPv4 address, IPv6
/// prefix).
pub const PER_NET_PER_SECOND: u32 = 10;

/// Challenges per second for one token to addresses outside its bound IP.
pub const PER_TOKEN_PER_SECOND: u32 = 10;

/// Per-network budget slots (a power of two).
const NET_SLOTS: usize = 4096;

/// Bytes of the nonce's MAC.
const MAC_LEN: usize = NONCE_LEN - 4;

/// Why a RESPONSE proves nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProofError {
    /// Not a nonce this process made for this token and address.
    Bad,
    /// Made for them, but more than [`RESPONSE_WINDOW`] ago (or in the future).
    Late,
}

/// The process's proof secret, clock origin and budgets; shared by every worker and kept
/// across reloads (a reload changes the rates only).
pub struct Proofs {
    key: hmac::Key,
    epoch: Instant,
    challenges_per_second: AtomicU32,
    pings_per_second: AtomicU32,
    challenges: AtomicU64,
    pings: AtomicU64,
    net_challenges: Box<[AtomicU64]>,
    token_challenges: Box<[AtomicU64]>,
    net_pings: Box<[AtomicU64]>,
    hasher: foldhash::fast::FixedState,
}

impl std::fmt::Debug for Proofs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proofs")
            .field("challenges_per_second", &self.challenges_per_second)
            .field("pings_per_second", &self.pings_per_second)
            .finish_non_exhaustive()
    }
}

impl Proofs {
    /// Proofs under `secret` (at least 32 random bytes in production), with times counted
    /// from `epoch`.
    pub fn new(
        secret: &[u8],
        epoch: Instant,
        challenges_per_second: u32,
        pings_per_second: u32,
    ) -> Self {
        let slots = || (0..NET_SLOTS).map(|_| AtomicU64::new(0)).collect();
        // The slot hash's seed comes from the secret: a forger cannot aim at a slot.
        let seed = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, secret), b"slots");
        let mut seed8 = [0u8; 8];
        seed8.copy_from_slice(&seed.as_ref()[..8]);
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
            epoch,
            challenges_per_second: AtomicU32::new(challenges_per_second),
            pings_per_second: AtomicU32::new(pings_per_second),
            challenges: AtomicU64::new(0),
            pings: AtomicU64::new(0),
            net_challenges: slots(),
            token_challenges: slots(),
            net_pings: slots(),
            hasher: foldhash::fast::FixedState::with_seed(u64::from_le_bytes(seed8)),
        }
    }

    /// Replaces the per-replica rates (a reload).
    pub fn set_rates(&self, challenges_per_second: u32, pings_per_second: u32) {
        self.challenges_per_second
            .store(challenges_per_second, Ordering::Relaxed);
        self.pings_per_second
            .store(pings_per_second, Ordering::Relaxed);
    }

    /// Nanoseconds of this process's clock at `now` (PONG times).
    pub fn nanos(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_nanos() as u64
    }

    fn millis(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_millis() as u64
    }

    fn mac(&self, issued: u32, key: TokenKey, addr: SocketAddr) -> hmac::Tag {
        let ip = match addr {
            SocketAddr::V4(a) => a.ip().to_ipv6_mapped(),
            SocketAddr::V6(a) => *a.ip(),
        };
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(&issued.to_be_bytes());
        ctx.update(&key.to_be_bytes());
        ctx.update(&ip.octets());
        ctx.update(&addr.port().to_be_bytes());
        ctx.sign()
    }

    /// The nonce challenging `addr` to prove it receives at it, for token `key`, at `now`.
    pub fn nonce(&self, key: TokenKey, addr: SocketAddr, now: Instant) -> [u8; NONCE_LEN] {
        // Wraps after 49 days; a nonce is good for two seconds.
        let issued = self.millis(now) as u32;
        let mut nonce = [0u8; NONCE_LEN];
        nonce[..4].copy_from_slice(&issued.to_be_bytes());
        nonce[4..].copy_from_slice(&self.mac(issued, key, addr).as_ref()[..MAC_LEN]);
        nonce
    }

    /// Whether `nonce`, answered from `addr` for token `key` at `now`, is one of ours for them
    /// and recent enough.
    pub fn check(
        &self,
        nonce: &[u8; NONCE_LEN],
        key: TokenKey,
        addr: SocketAddr,
        now: Instant,
    ) -> Result<(), ProofError> {
        let issued = u32::from_be_bytes([nonce[0], nonce[1], nonce[2], nonce[3]]);
        let tag = self.mac(issued, key, addr);
        let differ = tag.as_ref()[..MAC_LEN]
            .iter()
            .zip(&nonce[4..])
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if differ != 0 {
            return Err(ProofError::Bad);
        }
        let age = (self.millis(now) as u32).wrapping_sub(issued);
        if u128::from(age) > RESPONSE_WINDOW.as_millis() {
            return Err(ProofError::Late);
        }
        Ok(())
    }

    fn slot(&self, net: ClientNet) -> usize {
        use std::hash::BuildHasher;
        (self.hasher.hash_one(net) as usize) & (NET_SLOTS - 1)
    }

    fn token_slot(&self, key: TokenKey) -> usize {
        use std::hash::BuildHasher;
        (self.hasher.hash_one(key) as usize) & (NET_SLOTS - 1)
    }

    /// The budget slot of `net` (the simulation counts budgets as the table does).
    #[cfg(any(test, feature = "sim"))]
    pub fn slot_of(&self, net: ClientNet) -> usize {
        self.slot(net)
    }

    /// The budget slot of token `key`.
    #[cfg(any(test, feature = "sim"))]
    pub fn token_slot_of(&self, key: TokenKey) -> usize {
        self.token_slot(key)
    }

    fn second(&self, now: Instant) -> u32 {
        (self.millis(now) / 1_000) as u32
    }

    /// Takes one challenge for token `key` to `net`: from the network's budget alone when
    /// `net` is the token's bound network (`bound`), else from the network's, the token's and
    /// the replica's. False when one of them is spent for this second.
    pub fn try_challenge(&self, net: ClientNet, key: TokenKey, bound: bool, now: Instant) -> bool {
        let second = self.second(now);
        if !take(
            &self.net_challenges[self.slot(net)],
            second,
            PER_NET_PER_SECOND,
        ) {
            return false;
        }
        bound
            || take(
                &self.token_challenges[self.token_slot(key)],
                second,
                PER_TOKEN_PER_SECOND,
            ) && take(
                &self.challenges,
                second,
                self.challenges_per_second.load(Ordering::Relaxed),
            )
    }

    /// Takes one PONG from `net`'s budget and the replica's; false when either is spent for
    /// this second.
    pub fn try_ping(&self, net: ClientNet, now: Instant) -> bool {
        let second = self.second(now);
        take(&self.net_pings[self.slot(net)], second, PER_NET_PER_SECOND)
            && take(
                &self.pings,
                second,
                self.pings_per_second.load(Ordering::Relaxed),
            )
    }
}

/// Takes one from a one-second window packed as `[second: 32][count: 32]`; false when
/// `limit` are taken in `second` already.
fn take(cell: &AtomicU64, second: u32, limit: u32) -> bool {
    if limit == 0 {
        return false;
    }
    let mut current = cell.load(Ordering::Relaxed);
    loop {
        let (at, count) = ((current >> 32) as u32, current as u32);
        let next = if at != second {
            (u64::from(second) << 32) | 1
        } else if count < limit {
            current + 1
        } else {
            return false;
        };
        match cell.compare_exchange_weak(current, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return true,
            Err(seen) => current = seen,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn proofs(now: Instant) -> Proofs {
        Proofs::new(b"0123456789abcdef0123456789abcdef", now, 2_000, 5_000)
    }

    #[test]
    fn a_nonce_proves_its_token_and_address_only_within_the_window() {
        let t0 = Instant::now();
        let p = proofs(t0);
        let nonce = p.nonce(7, addr(1000), t0);
        assert_eq!(p.check(&nonce, 7, addr(1000), t0), Ok(()));
        let edge = t0 + RESPONSE_WINDOW;
        assert_eq!(p.check(&nonce, 7, addr(1000), edge), Ok(()));
        let late = edge + Duration::from_millis(1);
        assert_eq!(p.check(&nonce, 7, addr(1000), late), Err(ProofError::Late));
        assert_eq!(p.check(&nonce, 8, addr(1000), t0), Err(ProofError::Bad));
        assert_eq!(p.check(&nonce, 7, addr(1001), t0), Err(ProofError::Bad));
        let other_ip = SocketAddr::from(([127, 0, 0, 2], 1000));
        assert_eq!(p.check(&nonce, 7, other_ip, t0), Err(ProofError::Bad));
        // Moving the issue time forward breaks the MAC.
        let mut forged = nonce;
        forged[3] = forged[3].wrapping_add(1);
        assert_eq!(p.check(&forged, 7, addr(1000), t0), Err(ProofError::Bad));
        // Another process (another secret) does not accept it.
        let q = Proofs::new(b"another secret of thirty-two b..", t0, 1, 1);
        assert_eq!(q.check(&nonce, 7, addr(1000), t0), Err(ProofError::Bad));
    }

    #[test]
    fn a_nonce_from_the_future_is_late() {
        let t0 = Instant::now();
        let p = proofs(t0);
        let nonce = p.nonce(7, addr(1000), t0 + Duration::from_secs(10));
        assert_eq!(p.check(&nonce, 7, addr(1000), t0), Err(ProofError::Late));
    }

    #[test]
    fn challenges_are_bounded_per_network_and_per_replica() {
        let t0 = Instant::now();
        let p = Proofs::new(b"0123456789abcdef0123456789abcdef", t0, 25, 0);
        let net = |i: u8| ClientNet::of(IpAddr::V4(Ipv4Addr::new(10, 0, 0, i)));
        let taken = (0..50)
            .filter(|i| p.try_challenge(net(1), *i, false, t0))
            .count();
        assert_eq!(taken, PER_NET_PER_SECOND as usize);
        // The replica's 25 are shared: 10 went to net 1.
        let others = (2..10u8)
            .flat_map(|i| (0..20).map(move |_| i))
            .enumerate()
            .filter(|(k, i)| p.try_challenge(net(*i), 100 + *k as u128, false, t0))
            .count();
        assert_eq!(others, 15);
        // A token's bound network is not held to the replica's budget.
        let bound = (0..20)
            .filter(|_| p.try_challenge(net(20), 7, true, t0))
            .count();
        assert_eq!(bound, PER_NET_PER_SECOND as usize);
        // A new second, a new budget.
        assert!(p.try_challenge(net(1), 1, false, t0 + Duration::from_secs(1)));
        // Pings at rate 0 are never answered.
        assert!(!p.try_ping(net(1), t0));
        p.set_rates(25, 100);
        assert_eq!(
            (0..50).filter(|_| p.try_ping(net(11), t0)).count(),
            PER_NET_PER_SECOND as usize
        );
    }

    #[test]
    fn one_token_sprayed_from_many_networks_takes_its_own_share_only() {
        let t0 = Instant::now();
        let p = Proofs::new(b"0123456789abcdef0123456789abcdef", t0, 100, 0);
        let net = |i: u32| ClientNet::of(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)));
        let sprayed = (0..10_000)
            .filter(|i| p.try_challenge(net(*i), 42, false, t0))
            .count();
        assert_eq!(sprayed, PER_TOKEN_PER_SECOND as usize);
        // Other tokens still find the replica's budget.
        let others = (0..50u32)
            .filter(|i| p.try_challenge(net(20_000 + i), u128::from(*i) + 1_000, false, t0))
            .count();
        assert_eq!(others, 50);
    }

    #[test]
    fn nanos_count_from_the_epoch() {
        let t0 = Instant::now();
        let p = proofs(t0);
        assert_eq!(p.nanos(t0 + Duration::from_micros(3)), 3_000);
        assert_eq!(p.nanos(t0), 0);
    }
}
