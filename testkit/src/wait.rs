//! Waiting without fixed sleeps: poll a condition with a deadline, or pace a sender.
//!
//! These are the only two places the harness sleeps (`std::thread::sleep` is banned
//! elsewhere by `clippy.toml`): between polls of a deadline-bounded wait, and between the
//! sends of a paced traffic generator. A test never sleeps to let something happen; it
//! waits for the counter or the reply that proves it did.

use std::time::Duration;

use tokio::time::Instant;

/// How long a poll waits before asking again.
pub const POLL_EVERY: Duration = Duration::from_millis(20);

/// Polls `cond` every [`POLL_EVERY`] until it holds or `within` passes; whether it held.
pub fn eventually(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if cond() {
            return true;
        }
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        pause((deadline - now).min(POLL_EVERY));
    }
}

/// A fixed rate for traffic generators: [`Pacer::tick`] returns when the next send is due.
/// Lateness is not made up with bursts.
#[derive(Debug)]
pub struct Pacer {
    every: Duration,
    next: Instant,
}

impl Pacer {
    pub fn new(every: Duration) -> Self {
        Self {
            every,
            next: Instant::now(),
        }
    }

    /// Waits until the next tick is due.
    pub fn tick(&mut self) {
        let now = Instant::now();
        if self.next > now {
            pause(self.next - now);
        }
        self.next = self.next.max(now) + self.every;
    }
}

/// The one real sleep: the interval of a poll or a pacer, never a wait for an outcome.
#[allow(clippy::disallowed_methods)]
pub fn pause(d: Duration) {
    std::thread::sleep(d);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eventually_returns_as_soon_as_the_condition_holds_and_gives_up_at_the_deadline() {
        let mut calls = 0;
        assert!(eventually(Duration::from_secs(5), || {
            calls += 1;
            calls == 3
        }));
        assert_eq!(calls, 3);
        let started = Instant::now();
        assert!(!eventually(Duration::from_millis(60), || false));
        assert!(started.elapsed() >= Duration::from_millis(60));
    }

    #[test]
    fn a_pacer_spaces_its_ticks() {
        let mut p = Pacer::new(Duration::from_millis(5));
        let started = Instant::now();
        for _ in 0..5 {
            p.tick();
        }
        assert!(started.elapsed() >= Duration::from_millis(20));
    }
}
