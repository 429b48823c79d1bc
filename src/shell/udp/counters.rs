//! A worker's own counters and their flush into the shared metrics.
//!
//! The per-datagram path only adds to plain integers on the worker's own cache lines
//! ([`Counts`]); every [`FLUSH_EVERY`] the worker hands them to [`Flusher::flush`], which adds
//! them to pre-resolved Prometheus handles and logs one drop summary at most every
//! [`DROP_LOG_EVERY`]. Secondary families follow from drop reasons: an `invalid_token` drop is
//! a rejected token, a `session_cap` drop a refused session, and so on.
//!
//! Owns counting and the drop summary. Must not decide anything about a datagram.

use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use tokio::time::Instant;

use crate::metrics::{self, Metrics};
use crate::model::{
    CloseReason, DropReason, FastPathFailure, PingOutcome, ProofOutcome, Refusal, Rejection,
};
use crate::session::Decision;
use crate::shell::fast_path::Totals;

/// How often a worker adds its counts to the shared metrics.
pub(super) const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// Longest time between two drop summaries in the log.
const DROP_LOG_EVERY: Duration = Duration::from_secs(10);

/// Counts since the last flush.
#[derive(Default)]
pub(super) struct Counts {
    pub(super) datagrams_to_target: u64,
    pub(super) bytes_to_target: u64,
    pub(super) datagrams_to_client: u64,
    pub(super) bytes_to_client: u64,
    created: u64,
    resets: u64,
    moved: u64,
    redeemed: u64,
    closed: [u64; CloseReason::COUNT],
    drops: [u64; DropReason::COUNT],
    challenges: u64,
    proved: u64,
    pongs: u64,
}

impl Counts {
    #[inline]
    pub(super) fn dropped(&mut self, reason: DropReason) {
        self.drops[reason.index()] += 1;
    }

    /// Counts `n` drops of one reason (e.g. the ICMP reports read off an error queue).
    pub(super) fn dropped_n(&mut self, reason: DropReason, n: usize) {
        self.drops[reason.index()] += n as u64;
    }

    /// Drops counted for `reason` since the last flush.
    #[cfg(test)]
    pub(super) fn drops_of(&self, reason: DropReason) -> u64 {
        self.drops[reason.index()]
    }

    /// A RESPONSE completed a proof of address.
    pub(super) fn proved(&mut self) {
        self.proved += 1;
    }

    pub(super) fn closed(&mut self, reason: CloseReason) {
        self.closed[reason.index()] += 1;
    }

    /// What a decision says happened to sessions and tokens (sends are counted when they
    /// succeed, by the caller).
    #[inline]
    pub(super) fn decided(&mut self, decision: &Decision) {
        match decision {
            Decision::Open { redeemed, .. } => {
                self.created += 1;
                self.redeemed += u64::from(*redeemed);
            }
            Decision::Reset { .. } => {
                self.resets += 1;
                self.redeemed += 1;
            }
            Decision::Keep => self.redeemed += 1,
            Decision::Moved { .. } => {
                self.moved += 1;
                self.redeemed += 1;
            }
            Decision::Drop(reason) => self.dropped(*reason),
            Decision::Challenge { .. } => self.challenges += 1,
            Decision::Pong { .. } => self.pongs += 1,
            Decision::Forward { .. } | Decision::Deliver { .. } => {}
        }
    }
}

/// What a worker reports of the kernel fast path at a flush.
pub(super) struct KernelReport {
    /// This worker's sessions in the map now.
    pub(super) sessions: i64,
    /// Sessions whose legs could not go in since the last flush, by reason.
    pub(super) failed: [u64; FastPathFailure::COUNT],
    /// The program's totals (one worker reads them, so each datagram is added once).
    pub(super) totals: Option<Totals>,
}

/// Pre-resolved metric handles (in `ALL` order) and the drop-summary state.
pub(super) struct Flusher {
    worker: usize,
    datagrams_to_target: Counter,
    bytes_to_target: Counter,
    datagrams_to_client: Counter,
    bytes_to_client: Counter,
    closed: Vec<Counter>,
    drops: Vec<Counter>,
    rejected: Vec<Counter>,
    refused: Vec<Counter>,
    proofs: Vec<Counter>,
    pings: Vec<Counter>,
    /// Upstream sockets this worker last added to the shared gauge.
    sockets_reported: i64,
    /// Fast-path sessions this worker last added to the shared gauge.
    kernel_sessions_reported: i64,
    /// The fast path's totals when last added to the metrics (worker 0 adds them).
    kernel_totals_reported: Totals,
    /// When the next flush is due (a comparison per loop turn, no subtraction).
    pub(super) next_flush: Instant,
    last_drop_log: Instant,
    drops_since_log: u64,
}

impl Flusher {
    pub(super) fn new(worker: usize, m: &Metrics, now: Instant) -> Self {
        Self {
            worker,
            datagrams_to_target: Metrics::counter(&m.datagrams, "direction", metrics::TO_TARGET),
            bytes_to_target: Metrics::counter(&m.bytes, "direction", metrics::TO_TARGET),
            datagrams_to_client: Metrics::counter(&m.datagrams, "direction", metrics::TO_CLIENT),
            bytes_to_client: Metrics::counter(&m.bytes, "direction", metrics::TO_CLIENT),
            closed: CloseReason::ALL
                .iter()
                .map(|r| Metrics::counter(&m.sessions_closed, "reason", r.as_str()))
                .collect(),
            drops: DropReason::ALL
                .iter()
                .map(|r| Metrics::counter(&m.drops, "reason", r.as_str()))
                .collect(),
            rejected: Rejection::ALL
                .iter()
                .map(|r| Metrics::counter(&m.tokens_rejected, "reason", r.as_str()))
                .collect(),
            refused: Refusal::ALL
                .iter()
                .map(|r| Metrics::counter(&m.sessions_refused, "reason", r.as_str()))
                .collect(),
            proofs: ProofOutcome::ALL
                .iter()
                .map(|r| Metrics::counter(&m.path_challenges, "outcome", r.as_str()))
                .collect(),
            pings: PingOutcome::ALL
                .iter()
                .map(|r| Metrics::counter(&m.pings, "outcome", r.as_str()))
                .collect(),
            sockets_reported: 0,
            kernel_sessions_reported: 0,
            kernel_totals_reported: Totals::default(),
            next_flush: now + FLUSH_EVERY,
            last_drop_log: now,
            drops_since_log: 0,
        }
    }

    /// Adds what the kernel fast path did to the shared metrics: its datagrams and bytes
    /// count in `datagrams_total` and `datagram_bytes_total` as user space's do (SPEC §8).
    pub(super) fn flush_kernel(&mut self, r: KernelReport, m: &Metrics) {
        m.fast_path_sessions
            .inc_by(r.sessions - self.kernel_sessions_reported);
        self.kernel_sessions_reported = r.sessions;
        for (reason, n) in FastPathFailure::ALL.iter().zip(r.failed) {
            if n > 0 {
                Metrics::counter(&m.fast_path_failures, "reason", reason.as_str()).inc_by(n);
            }
        }
        let Some(now) = r.totals else {
            return;
        };
        let before = std::mem::replace(&mut self.kernel_totals_reported, now);
        let to_target = now
            .to_target
            .datagrams
            .saturating_sub(before.to_target.datagrams);
        let to_client = now
            .to_client
            .datagrams
            .saturating_sub(before.to_client.datagrams);
        self.datagrams_to_target.inc_by(to_target);
        self.datagrams_to_client.inc_by(to_client);
        self.bytes_to_target
            .inc_by(now.to_target.bytes.saturating_sub(before.to_target.bytes));
        self.bytes_to_client
            .inc_by(now.to_client.bytes.saturating_sub(before.to_client.bytes));
        Metrics::counter(&m.fast_path_datagrams, "direction", metrics::TO_TARGET).inc_by(to_target);
        Metrics::counter(&m.fast_path_datagrams, "direction", metrics::TO_CLIENT).inc_by(to_client);
    }

    /// Adds `c` to the shared metrics (`open_sockets`: this worker's upstream sockets now)
    /// and logs a drop summary when one is due.
    pub(super) fn flush(&mut self, c: Counts, open_sockets: i64, m: &Metrics, now: Instant) {
        self.datagrams_to_target.inc_by(c.datagrams_to_target);
        self.bytes_to_target.inc_by(c.bytes_to_target);
        self.datagrams_to_client.inc_by(c.datagrams_to_client);
        self.bytes_to_client.inc_by(c.bytes_to_client);
        m.sessions_created.inc_by(c.created);
        m.session_resets.inc_by(c.resets);
        m.sessions_moved.inc_by(c.moved);
        m.tokens_redeemed.inc_by(c.redeemed);
        for (handle, n) in self.closed.iter().zip(c.closed) {
            handle.inc_by(n);
        }
        for (handle, n) in self.drops.iter().zip(c.drops) {
            handle.inc_by(n);
        }
        let dropped = |r: DropReason| c.drops[r.index()];
        for reason in DropReason::ALL {
            if let Some(refusal) = reason.refusal() {
                self.refused[refusal.index()].inc_by(dropped(*reason));
            }
            if let Some(rejection) = reason.rejection() {
                self.rejected[rejection.index()].inc_by(dropped(*reason));
            }
            if let Some(outcome) = reason.proof() {
                self.proofs[outcome.index()].inc_by(dropped(*reason));
            }
            if let Some(outcome) = reason.ping() {
                self.pings[outcome.index()].inc_by(dropped(*reason));
            }
        }
        self.proofs[ProofOutcome::Sent.index()].inc_by(c.challenges);
        self.proofs[ProofOutcome::Proved.index()].inc_by(c.proved);
        self.pings[PingOutcome::Answered.index()].inc_by(c.pongs);
        m.upstream_sockets
            .inc_by(open_sockets - self.sockets_reported);
        self.sockets_reported = open_sockets;
        self.next_flush = now + FLUSH_EVERY;
        self.drops_since_log += c.drops.iter().sum::<u64>();
        let since = now.saturating_duration_since(self.last_drop_log);
        if since >= DROP_LOG_EVERY {
            if self.drops_since_log > 0 {
                tracing::warn!(
                    worker = self.worker,
                    dropped = self.drops_since_log,
                    seconds = since.as_secs(),
                    "datagrams dropped (by reason: udp_director_datagrams_dropped_total)"
                );
            }
            self.drops_since_log = 0;
            self.last_drop_log = now;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_feed_rejections_and_refusals() {
        let m = Metrics::new();
        let now = Instant::now();
        let mut f = Flusher::new(0, &m, now);
        let mut c = Counts::default();
        for d in [
            Decision::Drop(DropReason::InvalidToken),
            Decision::Drop(DropReason::ExpiredToken),
            Decision::Drop(DropReason::SessionCap),
            Decision::Drop(DropReason::Draining),
            Decision::Drop(DropReason::UpstreamError),
            Decision::Drop(DropReason::LateResponse),
            Decision::Drop(DropReason::ShortPing),
            Decision::Challenge {
                client: ([127, 0, 0, 1], 1).into(),
                nonce: [0; 16],
            },
            Decision::Challenge {
                client: ([127, 0, 0, 1], 1).into(),
                nonce: [1; 16],
            },
            Decision::Pong {
                client: ([127, 0, 0, 1], 1).into(),
                id: [0; 8],
                received_ns: 0,
            },
            Decision::Keep,
        ] {
            c.decided(&d);
        }
        c.proved();
        f.flush(c, 0, &m, now);
        let text = m.encode();
        for line in [
            "udp_director_tokens_rejected_total{reason=\"invalid_token\"} 1",
            "udp_director_tokens_rejected_total{reason=\"expired_token\"} 1",
            "udp_director_sessions_refused_total{reason=\"session_cap\"} 1",
            "udp_director_sessions_refused_total{reason=\"draining\"} 1",
            "udp_director_datagrams_dropped_total{reason=\"upstream_error\"} 1",
            "udp_director_datagrams_dropped_total{reason=\"malformed_control\"} 0",
            "udp_director_tokens_redeemed_total 1",
            "udp_director_path_challenges_total{outcome=\"sent\"} 2",
            "udp_director_path_challenges_total{outcome=\"proved\"} 1",
            "udp_director_path_challenges_total{outcome=\"late_response\"} 1",
            "udp_director_path_challenges_total{outcome=\"over_budget\"} 0",
            "udp_director_pings_total{outcome=\"answered\"} 1",
            "udp_director_pings_total{outcome=\"short\"} 1",
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
    }

    #[test]
    fn the_kernels_counts_join_the_totals_once_and_failures_keep_their_reason() {
        use crate::shell::fast_path::Count;
        let m = Metrics::new();
        let mut f = Flusher::new(0, &m, Instant::now());
        let mut failed = [0; FastPathFailure::COUNT];
        failed[FastPathFailure::Full.index()] = 2;
        failed[FastPathFailure::Map.index()] = 1;
        let totals = |n: u64| Totals {
            to_target: Count {
                datagrams: n,
                bytes: 64 * n,
            },
            to_client: Count {
                datagrams: n,
                bytes: 64 * n,
            },
        };
        let report = |sessions, failed, n| KernelReport {
            sessions,
            failed,
            totals: Some(totals(n)),
        };
        f.flush_kernel(report(3, failed, 10), &m);
        // The program's totals are cumulative: only what is new is added.
        f.flush_kernel(report(1, [0; FastPathFailure::COUNT], 25), &m);
        let text = m.encode();
        for line in [
            "udp_director_fast_path_failures_total{reason=\"full\"} 2",
            "udp_director_fast_path_failures_total{reason=\"map\"} 1",
            "udp_director_fast_path_sessions 1",
            "udp_director_fast_path_datagrams_total{direction=\"client_to_target\"} 25",
            "udp_director_datagrams_total{direction=\"target_to_client\"} 25",
            "udp_director_datagram_bytes_total{direction=\"client_to_target\"} 1600",
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
    }
}
