//! Handing memory back after a burst.
//!
//! glibc's malloc keeps what a burst of sessions freed on its free lists: only the top of
//! each arena is ever returned, and one long-lived allocation above the freed space pins it.
//! A director that once held 10 000 sessions would stay at that high-water mark for the rest
//! of its life. [`TrimPolicy`] (pure, time as an argument) decides when the load has fallen
//! far enough to be worth a `malloc_trim(0)`, which gives every whole free page back to the
//! kernel; the shell's housekeeping task asks it once a second.
//!
//! The trim walks every arena under its lock, so it runs on a blocking thread and never more
//! often than [`TrimPolicy::MIN_INTERVAL`]. The data path does not allocate per datagram, so
//! it does not wait on those locks.
//!
//! [`tune_allocator`] sets glibc up for this before any thread starts: one arena (threads
//! that rarely allocate gain nothing from more, and each arena keeps its own freed pages) and
//! a fixed 128 KiB mmap threshold (a burst's large tables are mapped and unmapped whole
//! instead of raising the threshold and landing in the heap for good). `make soak` measures it.
//!
//! Owns allocator tuning and the trim decision. Must not import anything of the crate, nor
//! trim on a data thread.

use std::time::Duration;

use tokio::time::Instant;

/// When to trim: the load (live sessions plus outstanding tokens) has fallen to at most half
/// of its peak since the last trim, by at least [`TrimPolicy::MIN_DROP`], and the last trim
/// is at least [`TrimPolicy::MIN_INTERVAL`] ago.
#[derive(Debug, Clone)]
pub struct TrimPolicy {
    /// Highest load seen since the last trim.
    peak: usize,
    last_trim: Option<Instant>,
}

impl TrimPolicy {
    /// Smaller drops free too little to be worth walking the arenas.
    pub const MIN_DROP: usize = 1_000;
    pub const MIN_INTERVAL: Duration = Duration::from_secs(5);

    pub fn new() -> Self {
        Self {
            peak: 0,
            last_trim: None,
        }
    }

    /// Records the current load; true when a trim is due now (the caller then trims).
    pub fn observe(&mut self, load: usize, now: Instant) -> bool {
        self.peak = self.peak.max(load);
        let fallen = self.peak - load;
        let due = fallen >= Self::MIN_DROP
            && load <= self.peak / 2
            && self
                .last_trim
                .is_none_or(|t| now.saturating_duration_since(t) >= Self::MIN_INTERVAL);
        if due {
            self.peak = load;
            self.last_trim = Some(now);
        }
        due
    }
}

impl Default for TrimPolicy {
    fn default() -> Self {
        Self::new()
    }
}

/// glibc's arena count and mmap threshold, applied unless the operator set them.
pub const ARENA_MAX: i32 = 1;
pub const MMAP_THRESHOLD: i32 = 128 * 1024;

/// What [`tune_allocator`] did, for the start-up log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tuning {
    /// Both settings applied.
    Applied,
    /// `MALLOC_ARENA_MAX` or `MALLOC_MMAP_THRESHOLD_` is set: glibc already read the
    /// operator's choice, which wins; nothing changed.
    FromEnvironment,
    /// Not glibc (or glibc refused): the allocator runs with its defaults.
    Unsupported,
}

/// Applies [`ARENA_MAX`] and [`MMAP_THRESHOLD`]. Call first thing in `main`, before any
/// thread exists, so every thread's allocations land in the one arena.
pub fn tune_allocator() -> Tuning {
    let set = |name: &str| std::env::var_os(name).is_some();
    if set("MALLOC_ARENA_MAX") || set("MALLOC_MMAP_THRESHOLD_") {
        return Tuning::FromEnvironment;
    }
    if glibc_mallopt(Mallopt::ArenaMax, ARENA_MAX)
        && glibc_mallopt(Mallopt::MmapThreshold, MMAP_THRESHOLD)
    {
        Tuning::Applied
    } else {
        Tuning::Unsupported
    }
}

#[derive(Debug, Clone, Copy)]
enum Mallopt {
    ArenaMax,
    MmapThreshold,
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn glibc_mallopt(option: Mallopt, value: i32) -> bool {
    let param = match option {
        Mallopt::ArenaMax => nix::libc::M_ARENA_MAX,
        Mallopt::MmapThreshold => nix::libc::M_MMAP_THRESHOLD,
    };
    // SAFETY: mallopt takes two plain integers and changes glibc's own allocator parameters
    // under its lock; both parameters are documented for any value (an out-of-range one is
    // refused with 0), and it has no preconditions on the caller.
    unsafe { nix::libc::mallopt(param, value) == 1 }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn glibc_mallopt(_: Mallopt, _: i32) -> bool {
    false
}

/// Gives the allocator's whole free pages back to the kernel; true if any were returned.
/// A no-op (false) where the C library is not glibc.
pub fn release_free_memory() -> bool {
    glibc_trim()
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn glibc_trim() -> bool {
    // SAFETY: malloc_trim takes a plain integer, touches only glibc's own allocator state
    // under its arena locks, and has no preconditions on the caller (glibc ≥ 2.8 releases
    // free pages in every arena with madvise(MADV_DONTNEED)).
    unsafe { nix::libc::malloc_trim(0) == 1 }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn glibc_trim() -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn at(base: Instant, secs: u64) -> Instant {
        base + Duration::from_secs(secs)
    }

    #[test]
    fn trims_once_a_burst_has_drained() {
        let t0 = Instant::now();
        let mut p = TrimPolicy::new();
        assert!(!p.observe(0, t0), "nothing to hand back at start");
        assert!(!p.observe(10_000, at(t0, 1)));
        assert!(!p.observe(6_000, at(t0, 2)), "not yet halved");
        assert!(p.observe(5_000, at(t0, 3)), "halved from the peak");
        // The peak restarts from the trim: draining the rest is a new, smaller drop.
        assert!(
            !p.observe(4_500, at(t0, 9)),
            "less than MIN_DROP below the new peak"
        );
        assert!(p.observe(0, at(t0, 10)));
    }

    #[test]
    fn small_loads_never_trim() {
        let t0 = Instant::now();
        let mut p = TrimPolicy::new();
        for s in 0..100 {
            assert!(!p.observe(if s % 2 == 0 { 999 } else { 0 }, at(t0, s * 10)));
        }
    }

    #[test]
    fn a_trim_waits_for_the_interval_then_happens() {
        let t0 = Instant::now();
        let mut p = TrimPolicy::new();
        p.observe(20_000, t0);
        assert!(p.observe(0, at(t0, 1)));
        p.observe(20_000, at(t0, 2));
        assert!(
            !p.observe(0, at(t0, 3)),
            "within MIN_INTERVAL of the last trim"
        );
        assert!(!p.observe(0, at(t0, 5)));
        assert!(
            p.observe(0, at(t0, 6)),
            "the drained state is trimmed once due"
        );
        assert!(
            !p.observe(0, at(t0, 20)),
            "and not again without a new peak"
        );
    }

    proptest! {
        /// Over any load sequence: trims are at least MIN_INTERVAL apart, each follows a fall
        /// of at least MIN_DROP to at most half of the peak since the previous one, and a
        /// load that stays at zero after such a fall is trimmed within MIN_INTERVAL.
        #[test]
        fn trims_are_spaced_and_justified(
            steps in proptest::collection::vec((0usize..50_000, 0u64..3_000), 1..200)
        ) {
            let t0 = Instant::now();
            let mut p = TrimPolicy::new();
            let (mut now, mut peak, mut last): (Instant, usize, Option<Instant>) = (t0, 0, None);
            for (load, dt_ms) in steps {
                now += Duration::from_millis(dt_ms);
                peak = peak.max(load);
                if p.observe(load, now) {
                    prop_assert!(peak - load >= TrimPolicy::MIN_DROP && load <= peak / 2);
                    if let Some(l) = last {
                        prop_assert!(now - l >= TrimPolicy::MIN_INTERVAL);
                    }
                    last = Some(now);
                    peak = load;
                }
            }
            if peak >= TrimPolicy::MIN_DROP {
                let later = now + TrimPolicy::MIN_INTERVAL;
                prop_assert!(p.observe(0, later), "a drained burst is trimmed once due");
            }
        }
    }
}
