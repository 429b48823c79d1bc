//! The kernel fast path's handle (SPEC §8): the TC program on the pod's interfaces and its
//! maps, as the data plane's workers see them.
//!
//! A session the table has put in the fast path has two legs, one per direction, each keyed
//! by where its datagrams come from and the local port they arrive at: the client leg
//! (client address → the data port) and the target leg (target address → the session's
//! upstream socket's port). The program rewrites a matching datagram to what the leg says
//! and sends it out with `bpf_redirect_neigh`; anything else goes up to the sockets
//! unchanged, so a miss is always safe.
//!
//! Owns loading, attaching, detaching and the map syscalls. Must not decide which sessions
//! are carried (that is `session`'s, through its outputs) nor when an entry goes in or out.

use std::net::SocketAddrV4;

use crate::model::FastPathFailure;

#[cfg(feature = "fast-path")]
mod kernel;

/// One leg: datagrams from `peer` to the director's local port `local_port`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LegKey {
    pub peer: SocketAddrV4,
    pub local_port: u16,
}

/// What the program does with a datagram that matches a leg: sends it to `to` from the
/// local address it arrived at and port `from_port`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rewrite {
    pub to: SocketAddrV4,
    pub from_port: u16,
    /// The client leg: a datagram that starts with the magic or is token-shaped goes up to
    /// the daemon instead (control frames, resumes, keepalive tokens). A target's datagrams
    /// are delivered whatever they hold, as in user space.
    pub from_client: bool,
}

/// Datagrams and payload bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Count {
    pub datagrams: u64,
    pub bytes: u64,
}

/// What the kernel carried on one leg, summed over CPUs; `last_seen_ns` is the latest
/// `CLOCK_MONOTONIC` time (ns, `bpf_ktime_get_ns`) a datagram matched it, 0 when none did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LegCounts {
    pub count: Count,
    pub last_seen_ns: u64,
}

/// Everything the program has carried since it was loaded, per direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub to_target: Count,
    pub to_client: Count,
}

/// What the program compares a client's datagrams with before carrying them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matchers {
    /// `controlPacketMagicBytes`, 1..=32 bytes: compared whole.
    pub magic: Vec<u8>,
    /// Payload lengths a token can have (padding included): a datagram of such a length
    /// made only of base64url characters and ASCII whitespace goes up.
    pub token_min: u16,
    pub token_max: u16,
}

impl Matchers {
    /// The magic and the token lengths of `format`, padding included.
    pub fn new(magic: &[u8], format: crate::model::TokenFormat) -> Self {
        use crate::protocol::datagram::{MAX_PADDING, token_lengths};
        let (min, max) = token_lengths(format);
        let len = |n: usize| u16::try_from(n).unwrap_or(u16::MAX);
        Self {
            magic: magic.to_vec(),
            token_min: len(min),
            token_max: len(max + 2 * MAX_PADDING),
        }
    }
}

/// Why the fast path is not on, or a session's legs did not go in. `reason()` is the label
/// of `udp_director_fast_path_failures_total{reason}`.
#[derive(Debug, thiserror::Error)]
pub enum FastPathError {
    #[error("this build has no kernel fast path (built without the `fast-path` feature)")]
    NotBuilt,
    #[error("not permitted (needs CAP_BPF and CAP_NET_ADMIN): {0}")]
    Permission(String),
    #[error("the kernel refused the program: {0}")]
    Kernel(String),
    #[error("cannot attach to interface {interface}: {reason}")]
    Interface { interface: String, reason: String },
    #[error("map operation failed: {0}")]
    Map(String),
    #[error("the fast path's map is full")]
    Full,
}

impl FastPathError {
    pub fn reason(&self) -> FastPathFailure {
        match self {
            FastPathError::NotBuilt => FastPathFailure::NotBuilt,
            FastPathError::Permission(_) => FastPathFailure::Permission,
            FastPathError::Kernel(_) => FastPathFailure::Kernel,
            FastPathError::Interface { .. } => FastPathFailure::Interface,
            FastPathError::Map(_) => FastPathFailure::Map,
            FastPathError::Full => FastPathFailure::Full,
        }
    }
}

/// How the program is hooked to an interface's TC ingress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    /// tcx where the kernel has it (Linux ≥ 6.6), a clsact qdisc and filter otherwise: what
    /// [`FastPath::start`] does.
    Auto,
    /// clsact even where tcx exists: the hook of kernels before 6.6, which newer ones keep
    /// (so it is tested here too).
    Clsact,
}

/// The loaded and attached program with its maps. Dropping it detaches the program.
/// Without the `fast-path` feature the type cannot be built ([`FastPath::start`] refuses).
pub struct FastPath {
    #[cfg(feature = "fast-path")]
    kernel: kernel::Kernel,
    #[cfg(not(feature = "fast-path"))]
    kernel: Never,
}

#[cfg(not(feature = "fast-path"))]
enum Never {}

// Without the feature every method's body is `match self.kernel {}`: its arguments go unread.
#[cfg_attr(not(feature = "fast-path"), allow(unused_variables))]
impl FastPath {
    /// Loads the program, removes any of ours a crashed run left on `interfaces`, attaches
    /// to their TC ingress (tcx where the kernel has it, clsact otherwise) and sizes the
    /// legs map for `max_sessions` sessions.
    pub fn start(
        interfaces: &[String],
        max_sessions: usize,
        matchers: &Matchers,
    ) -> Result<Self, FastPathError> {
        Self::start_hooked(interfaces, max_sessions, matchers, Hook::Auto)
    }

    /// [`FastPath::start`] with the hook chosen.
    pub fn start_hooked(
        interfaces: &[String],
        max_sessions: usize,
        matchers: &Matchers,
        hook: Hook,
    ) -> Result<Self, FastPathError> {
        #[cfg(feature = "fast-path")]
        {
            kernel::Kernel::start(interfaces, max_sessions, matchers, hook)
                .map(|kernel| Self { kernel })
        }
        #[cfg(not(feature = "fast-path"))]
        {
            let _ = (interfaces, max_sessions, matchers, hook);
            Err(FastPathError::NotBuilt)
        }
    }

    /// Puts a leg in the map (replacing one with the same key).
    pub fn insert(&self, key: LegKey, rewrite: Rewrite) -> Result<(), FastPathError> {
        #[cfg(feature = "fast-path")]
        return self.kernel.insert(key, rewrite);
        #[cfg(not(feature = "fast-path"))]
        match self.kernel {}
    }

    /// Takes a leg out of the map, with what the kernel carried on it (`None`: not there).
    pub fn remove(&self, key: LegKey) -> Option<LegCounts> {
        #[cfg(feature = "fast-path")]
        return self.kernel.remove(key);
        #[cfg(not(feature = "fast-path"))]
        match self.kernel {}
    }

    /// What the kernel has carried on a leg so far.
    pub fn counts(&self, key: LegKey) -> Option<LegCounts> {
        #[cfg(feature = "fast-path")]
        return self.kernel.counts(key);
        #[cfg(not(feature = "fast-path"))]
        match self.kernel {}
    }

    /// Everything carried since the program was loaded (per-CPU counters, summed).
    pub fn totals(&self) -> Totals {
        #[cfg(feature = "fast-path")]
        return self.kernel.totals();
        #[cfg(not(feature = "fast-path"))]
        match self.kernel {}
    }

    /// Legs in the map now.
    pub fn legs(&self) -> usize {
        #[cfg(feature = "fast-path")]
        return self.kernel.legs();
        #[cfg(not(feature = "fast-path"))]
        match self.kernel {}
    }

    /// Replaces what client datagrams are compared with (a reload changed the magic).
    pub fn set_matchers(&self, matchers: &Matchers) -> Result<(), FastPathError> {
        #[cfg(feature = "fast-path")]
        return self.kernel.set_matchers(matchers);
        #[cfg(not(feature = "fast-path"))]
        match self.kernel {}
    }

    /// Detaches the program from every interface (the data plane has closed every session);
    /// dropping the handle does the same.
    pub fn detach(&self) {
        #[cfg(feature = "fast-path")]
        return self.kernel.detach();
        #[cfg(not(feature = "fast-path"))]
        match self.kernel {}
    }

    /// How it is attached, for the start log line: e.g. `tcx on eth0`.
    pub fn describe(&self) -> String {
        #[cfg(feature = "fast-path")]
        return self.kernel.describe();
        #[cfg(not(feature = "fast-path"))]
        match self.kernel {}
    }
}

/// `CLOCK_MONOTONIC` now, in the nanoseconds `bpf_ktime_get_ns` counts (and `Instant` is
/// built on): turns a leg's `last_seen_ns` into an age.
pub fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| {
            u64::try_from(t.tv_sec()).unwrap_or(0) * 1_000_000_000
                + u64::try_from(t.tv_nsec()).unwrap_or(0)
        })
        .unwrap_or(0)
}
