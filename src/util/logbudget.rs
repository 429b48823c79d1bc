//! A budget for log lines an outsider can cause (a flood of default-endpoint sessions, a
//! failing allocator): at most so many lines per window, the rest counted and reported with
//! the next line allowed, so a flood shows up in the log without flooding it. Time is passed
//! in.
//!
//! Owns the budget. Must not log or read the clock itself.

use std::time::Duration;

use tokio::time::Instant;

/// At most `per_window` lines per `window`.
#[derive(Debug, Clone)]
pub struct LogBudget {
    window: Duration,
    per_window: u32,
    start: Option<Instant>,
    used: u32,
    suppressed: u64,
}

impl LogBudget {
    pub const fn new(per_window: u32, window: Duration) -> Self {
        Self {
            window,
            per_window,
            start: None,
            used: 0,
            suppressed: 0,
        }
    }

    /// `Some(n)` when a line may be written now (`n` lines were suppressed since the last
    /// one written); `None` when this one is suppressed.
    pub fn allow(&mut self, now: Instant) -> Option<u64> {
        let fresh = self
            .start
            .is_none_or(|s| now.saturating_duration_since(s) >= self.window);
        if fresh {
            self.start = Some(now);
            self.used = 0;
        }
        if self.used < self.per_window {
            self.used += 1;
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed += 1;
            None
        }
    }
}

/// A [`LogBudget`] shared by tasks (held only while deciding, never across an await).
#[derive(Debug)]
pub struct SharedLogBudget(std::sync::Mutex<LogBudget>);

impl SharedLogBudget {
    pub const fn new(per_window: u32, window: Duration) -> Self {
        Self(std::sync::Mutex::new(LogBudget::new(per_window, window)))
    }

    /// See [`LogBudget::allow`].
    pub fn allow(&self, now: Instant) -> Option<u64> {
        super::sync::lock(&self.0).allow(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_past_the_budget_are_counted_and_reported_with_the_next() {
        let t0 = Instant::now();
        let mut b = LogBudget::new(2, Duration::from_secs(10));
        assert_eq!(b.allow(t0), Some(0));
        assert_eq!(b.allow(t0), Some(0));
        for _ in 0..5 {
            assert_eq!(b.allow(t0 + Duration::from_secs(9)), None);
        }
        assert_eq!(b.allow(t0 + Duration::from_secs(10)), Some(5));
        assert_eq!(b.allow(t0 + Duration::from_secs(10)), Some(0));
        assert_eq!(b.allow(t0 + Duration::from_secs(11)), None);
    }
}
