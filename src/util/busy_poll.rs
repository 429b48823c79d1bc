//! When a data worker that has run out of datagrams polls again instead of sleeping
//! (`busyPollMicros`). Time is passed in.
//!
//! A sleeping worker pays a scheduler wake-up for its next datagram: tens of microseconds on a
//! virtual machine, on every hop of a round trip. Polling through a short gap skips it, but
//! spinning through a long one burns a core for nothing. So a worker spins only while spinning
//! pays: it spins for at most the window after a datagram, and only if the wait that brought
//! that datagram was itself shorter than the window. A worker whose traffic has gaps longer
//! than the window (60 Hz game clients, a quiet replica) sleeps through them, after at most one
//! window spent finding out; a worker in a tight request-reply exchange never sleeps. While it
//! spins, the worker yields the CPU between polls, so it takes none from anything runnable.
//!
//! Owns the decision. Must not poll, sleep or read the clock itself.

use std::time::Duration;

use tokio::time::Instant;

/// A worker's busy-poll state.
#[derive(Debug, Clone)]
pub struct BusyPoll {
    window: Duration,
    /// When the window opened by the last batch of datagrams closes.
    until: Instant,
    /// Whether the wait before that batch was within the window: spinning would have caught it.
    pays: bool,
}

impl BusyPoll {
    /// A worker that has not seen a datagram yet; `window` zero never spins.
    pub fn new(window: Duration, now: Instant) -> Self {
        Self {
            window,
            until: later(now, window),
            pays: true,
        }
    }

    /// A reload's new window; the evidence so far stays.
    pub fn set_window(&mut self, window: Duration) {
        let last = self.until.checked_sub(self.window).unwrap_or(self.until);
        self.until = later(last, window);
        self.window = window;
    }

    /// A batch of datagrams arrived at `now`.
    pub fn arrived(&mut self, now: Instant) {
        self.pays = now < self.until;
        self.until = later(now, self.window);
    }

    /// Whether a worker with nothing to read at `now` polls again without sleeping.
    pub fn spin(&self, now: Instant) -> bool {
        self.pays && now < self.until
    }
}

/// `at + window` (a window is at most a second: `MAX_BUSY_POLL_MICROS`).
fn later(at: Instant, window: Duration) -> Instant {
    at.checked_add(window).unwrap_or(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: Duration = Duration::from_micros(100);

    fn us(n: u64) -> Duration {
        Duration::from_micros(n)
    }

    #[test]
    fn spins_for_the_window_after_a_datagram_then_sleeps() {
        let t0 = Instant::now();
        let mut poll = BusyPoll::new(WINDOW, t0);
        poll.arrived(t0 + us(10));
        assert!(poll.spin(t0 + us(10)));
        assert!(poll.spin(t0 + us(109)));
        assert!(!poll.spin(t0 + us(110)), "the window ends");
    }

    #[test]
    fn a_wait_longer_than_the_window_means_sleeping_through_the_next_gap() {
        let t0 = Instant::now();
        let mut poll = BusyPoll::new(WINDOW, t0);
        poll.arrived(t0);
        // 60 Hz: the next datagram comes 16 ms later, long after the window.
        poll.arrived(t0 + Duration::from_millis(16));
        assert!(
            !poll.spin(t0 + Duration::from_millis(16) + us(1)),
            "spinning after a long wait would spin for nothing"
        );
        // A short wait again (the worker woke from its sleep quickly): spinning pays again.
        poll.arrived(t0 + Duration::from_millis(16) + us(40));
        assert!(poll.spin(t0 + Duration::from_millis(16) + us(41)));
    }

    #[test]
    fn a_zero_window_never_spins() {
        let t0 = Instant::now();
        let mut poll = BusyPoll::new(Duration::ZERO, t0);
        poll.arrived(t0);
        poll.arrived(t0);
        assert!(!poll.spin(t0));
    }

    #[test]
    fn a_reload_changes_the_window() {
        let t0 = Instant::now();
        let mut poll = BusyPoll::new(WINDOW, t0);
        poll.arrived(t0 + us(5));
        poll.set_window(Duration::ZERO);
        assert!(!poll.spin(t0 + us(6)));
        poll.set_window(WINDOW);
        assert!(poll.spin(t0 + us(6)));
    }
}
