//! The default endpoint, resolved ahead of time so the data plane never resolves.
//!
//! A tokenless newcomer is sent wherever `defaultEndpoint` resolves to. Matching that query
//! (mapping, namespace, selectors, status query, addresses) is the expensive part and reads
//! the caches; it runs here, off the data threads: once when the route is built with a new
//! config, and again by [`DefaultRoute::refresh`] whenever a cache behind the resolver has
//! applied a watch event. The data plane only makes the load-balancing choice among the
//! precomputed matches ([`DefaultRoute::pick`]: lock-free, live session counts from the
//! ledger), after it has admitted the session under the cap.
//!
//! Owns the precomputed matches. Must not read the clock or touch sockets.

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use arc_swap::ArcSwap;

use super::select::choose_among;
use super::{Resolver, SessionCounts, Target, capacity_of};
use crate::config::LoadBalancing;
use crate::protocol::query::QueryRequest;

/// The default endpoint's query and its current matches.
pub struct DefaultRoute {
    pub(super) request: QueryRequest,
    pub(super) load_balancing: LoadBalancing,
    pub(super) round_robin: AtomicUsize,
    pub(super) state: ArcSwap<RouteState>,
}

/// The matches at one cache generation, sorted by namespace/name (the order ties and
/// round-robin follow).
#[derive(Default)]
pub(super) struct RouteState {
    generation: u64,
    picks: Vec<Pick>,
}

/// One precomputed match.
struct Pick {
    target: Arc<Target>,
    /// `(current, max)` for `labelArithmetic`.
    capacity: Option<(u64, u64)>,
}

impl std::fmt::Debug for DefaultRoute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.state.load();
        f.debug_struct("DefaultRoute")
            .field("resource_type", &self.request.resource_type)
            .field("generation", &state.generation)
            .field("matches", &state.picks.len())
            .finish()
    }
}

impl DefaultRoute {
    /// Recomputes the matches if a cache behind `resolver` changed since the last time.
    /// Cheap when nothing changed (a sum of counters); called by the control plane.
    pub fn refresh(&self, resolver: &Resolver) {
        if self.state.load().generation != resolver.cache_generation() {
            self.recompute(resolver);
        }
    }

    pub(super) fn recompute(&self, resolver: &Resolver) {
        // Read before matching: a change racing with this only causes one more recompute.
        let generation = resolver.cache_generation();
        let mut picks: Vec<Pick> = resolver
            .with_matches(&self.request, |mapping, _, matches| {
                matches
                    .iter()
                    .map(|m| Pick {
                        target: Arc::new(
                            Target::new(&mapping.name, m.namespace, m.name, m.addr)
                                .with_extra_ports(&m.extra_ports)
                                .with_proxy(mapping.proxy),
                        ),
                        capacity: capacity_of(&mapping.load_balancing, m.labels, m.annotations),
                    })
                    .collect()
            })
            // Not synced yet, or nothing to match: no default target until a cache changes.
            .unwrap_or_default();
        picks.sort_by(|a, b| {
            (&a.target.namespace, &a.target.name).cmp(&(&b.target.namespace, &b.target.name))
        });
        self.state.store(Arc::new(RouteState { generation, picks }));
    }

    /// Chooses a target among the current matches with the mapping's load balancing, or
    /// `None` when nothing matches (or `labelArithmetic` finds no room). `random` feeds the
    /// `random` strategy.
    pub fn pick(&self, counts: &dyn SessionCounts, random: u64) -> Option<Arc<Target>> {
        let state = self.state.load();
        let picks = &state.picks;
        // Picks are sorted, so their index is their key.
        let keys: Vec<usize> = (0..picks.len()).collect();
        let chosen = choose_among(
            &self.load_balancing,
            &keys,
            |i| picks[i].target.addr,
            |i| picks[i].capacity,
            counts,
            &self.round_robin,
            || random,
        )?;
        picks.get(chosen).map(|p| Arc::clone(&p.target))
    }
}
