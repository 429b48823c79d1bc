//! A worker's sessions in the kernel fast path (SPEC §8): carries out the table's
//! [`Output::FastPathAdd`] and [`Output::FastPathRemove`] on the map, and adds what the
//! kernel carried to the sessions' counts (`/sessions`, the access log) and last-seen times
//! (the reaper).
//!
//! Owns the map keys of this worker's sessions and the kernel's counts of the legs it took
//! out. Must not decide which sessions go in or out: that is the table's.
//!
//! [`Output::FastPathAdd`]: crate::session::Output::FastPathAdd
//! [`Output::FastPathRemove`]: crate::session::Output::FastPathRemove

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

use crate::model::FastPathFailure;
use crate::session::{FlowStats, LastSeen, Legs, SessionId};
use crate::shell::fast_path::{FastPath, LegCounts, LegKey, Rewrite, monotonic_ns};

/// One session's place in the map, and what the kernel carried on legs taken out before.
#[derive(Default)]
struct Entry {
    /// (client leg, target leg) while they are in the map.
    keys: Option<(LegKey, LegKey)>,
    carried: FlowStats,
}

/// This worker's sessions in the fast path.
pub(super) struct KernelLegs {
    data_port: u16,
    entries: HashMap<SessionId, Entry, foldhash::fast::RandomState>,
    /// Sessions whose legs are in the map now.
    pub(super) sessions: i64,
    /// Sessions whose legs could not go in, by reason (`fast_path_failures_total{reason}`:
    /// `full` when the map is), since the last flush.
    pub(super) failed: [u64; FastPathFailure::COUNT],
}

impl KernelLegs {
    pub(super) fn new(data_port: u16) -> Self {
        Self {
            data_port,
            entries: HashMap::default(),
            sessions: 0,
            failed: [0; FastPathFailure::COUNT],
        }
    }

    /// Puts a session's two legs in the map; `upstream_port` is its upstream socket's.
    /// When they do not fit, the session stays in user space (a miss is always safe).
    pub(super) fn add(&mut self, fast_path: &FastPath, legs: &Legs, upstream_port: u16) {
        let client = LegKey {
            peer: legs.client,
            local_port: self.data_port,
        };
        let target = LegKey {
            peer: legs.target,
            local_port: upstream_port,
        };
        let to_target = Rewrite {
            to: legs.target,
            from_port: upstream_port,
            from_client: true,
        };
        let to_client = Rewrite {
            to: legs.client,
            from_port: self.data_port,
            from_client: false,
        };
        // The target leg first: a reply that comes back before the client leg is in is
        // delivered by user space either way.
        let inserted = fast_path
            .insert(target, to_client)
            .and_then(|()| fast_path.insert(client, to_target));
        let entry = self.entries.entry(legs.id).or_default();
        if let Err(e) = inserted {
            tracing::debug!(error = %e, "session stays in user space");
            self.failed[e.reason().index()] += 1;
            // Whatever went in comes out: a leg is carried both ways or not at all.
            take(
                fast_path,
                target,
                &mut entry.carried.datagrams_to_client,
                &mut entry.carried.bytes_to_client,
            );
            return;
        }
        if entry.keys.replace((client, target)).is_none() {
            self.sessions += 1;
        }
    }

    /// Takes a session's legs out of the map, keeping what the kernel carried on them.
    pub(super) fn remove(&mut self, fast_path: &FastPath, id: SessionId) {
        let Some(entry) = self.entries.get_mut(&id) else {
            return;
        };
        let Some((client, target)) = entry.keys.take() else {
            return;
        };
        self.sessions -= 1;
        let c = &mut entry.carried;
        take(
            fast_path,
            client,
            &mut c.datagrams_to_target,
            &mut c.bytes_to_target,
        );
        take(
            fast_path,
            target,
            &mut c.datagrams_to_client,
            &mut c.bytes_to_client,
        );
    }

    /// What the kernel carried for a session that ended (its legs were taken out first).
    pub(super) fn finish(&mut self, id: SessionId) -> FlowStats {
        self.entries
            .remove(&id)
            .map(|e| e.carried)
            .unwrap_or_default()
    }

    /// What the kernel has carried for a live session so far.
    pub(super) fn carried(&self, fast_path: &FastPath, id: SessionId) -> FlowStats {
        let Some(entry) = self.entries.get(&id) else {
            return FlowStats::default();
        };
        let mut stats = entry.carried;
        if let Some((client, target)) = entry.keys {
            let (c, t) = (counts(fast_path, client), counts(fast_path, target));
            stats.datagrams_to_target += c.count.datagrams;
            stats.bytes_to_target += c.count.bytes;
            stats.datagrams_to_client += t.count.datagrams;
            stats.bytes_to_client += t.count.bytes;
        }
        stats
    }

    /// The reaper's view of the map: when it last carried a datagram of these legs.
    pub(super) fn seen<'a>(&'a self, fast_path: &'a FastPath) -> Seen<'a> {
        Seen {
            legs: self,
            fast_path,
        }
    }
}

fn counts(fast_path: &FastPath, key: LegKey) -> LegCounts {
    fast_path.counts(key).unwrap_or_default()
}

/// Takes one leg out of the map, adding what it carried to `datagrams` and `bytes`.
fn take(fast_path: &FastPath, key: LegKey, datagrams: &mut u64, bytes: &mut u64) {
    if let Some(c) = fast_path.remove(key) {
        *datagrams += c.count.datagrams;
        *bytes += c.count.bytes;
    }
}

/// [`LastSeen`] over the map, for [`crate::session::SessionTable::expire_seen`].
pub(super) struct Seen<'a> {
    legs: &'a KernelLegs,
    fast_path: &'a FastPath,
}

impl LastSeen for Seen<'_> {
    fn last_seen(&self, legs: &Legs, now: Instant) -> Option<Instant> {
        let (client, target) = self.legs.entries.get(&legs.id)?.keys?;
        let seen_ns = counts(self.fast_path, client)
            .last_seen_ns
            .max(counts(self.fast_path, target).last_seen_ns);
        if seen_ns == 0 {
            return None;
        }
        let age = Duration::from_nanos(monotonic_ns().saturating_sub(seen_ns));
        now.checked_sub(age)
    }
}
