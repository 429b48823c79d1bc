//! Pure selection: does a candidate match a query, and which of the matches gets the session.
//! No I/O, no clock; randomness and round-robin state come in as arguments.
//!
//! Owns matching and choosing. Must not read caches, the clock or randomness itself.

use std::collections::BTreeMap;

use serde_json::Value;

use super::lean::LabelSet;
use crate::config::LoadBalancing;
use crate::protocol::jsonpath::{CompiledPath, value_text};

/// True when every `key: value` pair is present in `have`.
pub fn selector_matches(selector: &BTreeMap<String, String>, have: &dyn LabelSet) -> bool {
    selector
        .iter()
        .all(|(k, v)| have.label(k).is_some_and(|h| h == v))
}

/// True when a value `path` selects equals one of
/// `expected` by its text form. A missing field or an unusable path is simply no match.
pub fn status_matches<'a>(
    object: &Value,
    path: &CompiledPath,
    expected: impl Iterator<Item = &'a str> + Clone,
) -> bool {
    path.values(object)
        .iter()
        .any(|v| value_text(v).is_some_and(|t| expected.clone().any(|e| e == t)))
}

/// Inputs to a load-balancing choice that are not in the candidates themselves.
pub struct ChoiceInputs<'a> {
    /// Live sessions on this director per candidate, in candidate order.
    pub sessions: &'a [usize],
    /// Monotonic counter for round-robin (the caller increments it per choice).
    pub round_robin: usize,
    /// A random number for `random`.
    pub random: u64,
    /// `(current, max)` per match for `labelArithmetic` (`None`: values missing or not numbers).
    pub capacity: &'a [Option<(u64, u64)>],
}

/// Picks one of the matches, identified by their `keys` (namespace/name; any order). Ties
/// and round-robin follow key order, so the choice is deterministic whatever order a cache
/// returns objects in. Linear time: no sort per query.
pub fn choose<K: Ord>(lb: &LoadBalancing, keys: &[K], inputs: &ChoiceInputs<'_>) -> Option<usize> {
    let n = keys.len();
    if n == 0 {
        return None;
    }
    let sessions = |i: usize| inputs.sessions.get(i).copied().unwrap_or(0);
    Some(match lb {
        LoadBalancing::First => (0..n).min_by(|a, b| keys[*a].cmp(&keys[*b]))?,
        LoadBalancing::LeastSessions => (0..n).min_by(|a, b| {
            sessions(*a)
                .cmp(&sessions(*b))
                .then_with(|| keys[*a].cmp(&keys[*b]))
        })?,
        LoadBalancing::RoundRobin => {
            let mut order: Vec<usize> = (0..n).collect();
            let k = inputs.round_robin % n;
            order.select_nth_unstable_by(k, |a, b| keys[*a].cmp(&keys[*b]));
            order[k]
        }
        LoadBalancing::Random => (inputs.random % n as u64) as usize,
        LoadBalancing::LabelArithmetic { overlap, .. } => {
            // Free capacity after this director's live sessions and the overlap head-room.
            let free = |i: usize| -> Option<u64> {
                let (current, max) = inputs.capacity.get(i).copied().flatten()?;
                max.checked_sub(current)?
                    .checked_sub(sessions(i) as u64)?
                    .checked_sub(*overlap)
            };
            (0..n)
                .filter_map(|i| free(i).map(|f| (i, f)))
                .min_by(|(a, fa), (b, fb)| fb.cmp(fa).then_with(|| keys[*a].cmp(&keys[*b])))
                .map(|(i, _)| i)?
        }
    })
}

/// Picks among the matches identified by `keys` with `lb`, gathering only what the strategy
/// reads: live sessions per match (`addr_of` + `counts`) for `leastSessions` and
/// `labelArithmetic`, `(current, max)` (`capacity_of`) for `labelArithmetic`, the next
/// round-robin number (incremented here) or `random()`. The one place a query and the
/// default route both choose through.
pub fn choose_among<K: Ord>(
    lb: &LoadBalancing,
    keys: &[K],
    addr_of: impl Fn(usize) -> std::net::SocketAddr,
    capacity_of: impl Fn(usize) -> Option<(u64, u64)>,
    counts: &dyn super::SessionCounts,
    round_robin: &std::sync::atomic::AtomicUsize,
    random: impl FnOnce() -> u64,
) -> Option<usize> {
    let n = keys.len();
    let sessions: Vec<usize> = match lb {
        LoadBalancing::LeastSessions | LoadBalancing::LabelArithmetic { .. } => {
            (0..n).map(|i| counts.sessions_to(&addr_of(i))).collect()
        }
        _ => Vec::new(),
    };
    let capacity: Vec<Option<(u64, u64)>> = match lb {
        LoadBalancing::LabelArithmetic { .. } => (0..n).map(capacity_of).collect(),
        _ => Vec::new(),
    };
    let inputs = ChoiceInputs {
        sessions: &sessions,
        round_robin: match lb {
            LoadBalancing::RoundRobin => {
                round_robin.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            }
            _ => 0,
        },
        random: match lb {
            LoadBalancing::Random => random(),
            _ => 0,
        },
        capacity: &capacity,
    };
    choose(lb, keys, &inputs)
}

/// Parses a label/annotation value as a non-negative integer.
pub fn label_number(labels: &dyn LabelSet, annotations: &dyn LabelSet, key: &str) -> Option<u64> {
    labels
        .label(key)
        .or_else(|| annotations.label(key))
        .and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
#[path = "select_tests.rs"]
mod tests;
