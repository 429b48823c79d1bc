//! Housekeeping on the control runtime: once a second, reclaim expired tokens and hand free
//! memory back to the kernel after a burst (when `util::memory::TrimPolicy` says so).
//!
//! Owns the timer and the blocking trim call. Must not decide when to trim (the policy does).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::metrics::Metrics;
use crate::session::Ledger;
use crate::token::Tokens;
use crate::util::memory::{TrimPolicy, release_free_memory};

/// Checks the load once a second and trims when [`TrimPolicy`] says so, until shutdown.
pub(crate) async fn trim_after_bursts(
    ledger: Arc<Ledger>,
    tokens: Arc<Tokens>,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut policy = TrimPolicy::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        tokens.sweep(Instant::now());
        let load = ledger.active() + usize::try_from(tokens.len()).unwrap_or(usize::MAX);
        if !policy.observe(load, Instant::now()) {
            continue;
        }
        let returned = tokio::task::spawn_blocking(release_free_memory)
            .await
            .unwrap_or(false);
        metrics.memory_trims.inc();
        tracing::debug!(load, returned, "returned free memory to the kernel");
    }
}
