//! Pure selection: does a candidate match a query, and which of the matches gets the session.
//! No I/O, no clock; randomness and round-robin state come in as arguments.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::config::LoadBalancing;
use crate::resolve::path::CompiledPath;

/// True when every `key: value` pair is present in `have`.
pub fn selector_matches(
    selector: &BTreeMap<String, String>,
    have: &BTreeMap<String, String>,
) -> bool {
    selector
        .iter()
        .all(|(k, v)| have.get(k).is_some_and(|h| h == v))
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

/// The text a JSON scalar compares by: strings as themselves, numbers and booleans as written.
pub fn value_text(v: &Value) -> Option<std::borrow::Cow<'_, str>> {
    match v {
        Value::String(s) => Some(std::borrow::Cow::Borrowed(s)),
        Value::Number(n) => Some(std::borrow::Cow::Owned(n.to_string())),
        Value::Bool(b) => Some(std::borrow::Cow::Borrowed(if *b {
            "true"
        } else {
            "false"
        })),
        _ => None,
    }
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

/// Parses a label/annotation value as a non-negative integer.
pub fn label_number(
    labels: &BTreeMap<String, String>,
    annotations: &BTreeMap<String, String>,
    key: &str,
) -> Option<u64> {
    labels
        .get(key)
        .or_else(|| annotations.get(key))
        .and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cp(p: &str) -> CompiledPath {
        CompiledPath::compile(p).unwrap()
    }
    use proptest::prelude::*;
    use serde_json::json;

    fn cand(name: &str) -> String {
        name.to_string()
    }

    #[test]
    fn selectors_are_anded_equality() {
        let have: BTreeMap<_, _> =
            [("a".to_string(), "1".to_string()), ("b".into(), "2".into())].into();
        let sel = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert!(selector_matches(&sel(&[]), &have));
        assert!(selector_matches(&sel(&[("a", "1")]), &have));
        assert!(selector_matches(&sel(&[("a", "1"), ("b", "2")]), &have));
        assert!(!selector_matches(&sel(&[("a", "2")]), &have));
        assert!(!selector_matches(&sel(&[("c", "1")]), &have));
    }

    #[test]
    fn status_query_compares_text_forms() {
        let obj = json!({"status": {"state": "Ready", "players": 3, "open": true,
            "ports": [{"name": "default", "port": 7654}, {"name": "rcon", "port": 7655}]}});
        assert!(status_matches(
            &obj,
            &cp("$.status.state"),
            ["Allocated", "Ready"].into_iter()
        ));
        assert!(!status_matches(
            &obj,
            &cp("$.status.state"),
            ["Shutdown"].into_iter()
        ));
        assert!(status_matches(
            &obj,
            &cp("$.status.players"),
            ["3"].into_iter()
        ));
        assert!(status_matches(
            &obj,
            &cp("$.status.open"),
            ["true"].into_iter()
        ));
        assert!(status_matches(
            &obj,
            &cp("$.status.ports[?(@.name == 'default')].port"),
            ["7654"].into_iter()
        ));
        assert!(status_matches(
            &obj,
            &cp("$.status.ports[1].port"),
            ["7655"].into_iter()
        ));
        assert!(!status_matches(
            &obj,
            &cp("$.status.missing"),
            ["Ready"].into_iter()
        ));
        assert!(!status_matches(
            &obj,
            &cp("$.status.state"),
            std::iter::empty()
        ));
    }

    #[test]
    fn first_and_round_robin() {
        let m = [cand("a"), cand("b"), cand("c")];
        let inputs = |rr| ChoiceInputs {
            sessions: &[5, 1, 1],
            round_robin: rr,
            random: 0,
            capacity: &[],
        };
        assert_eq!(choose(&LoadBalancing::First, &m, &inputs(0)), Some(0));
        let picks: Vec<_> = (0..6)
            .map(|rr| choose(&LoadBalancing::RoundRobin, &m, &inputs(rr)).unwrap())
            .collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
        assert_eq!(
            choose(&LoadBalancing::LeastSessions, &m, &inputs(0)),
            Some(1)
        );
        assert_eq!(
            choose::<String>(&LoadBalancing::First, &[], &inputs(0)),
            None
        );
        // Order of the slice does not matter, only the keys.
        let shuffled = [cand("c"), cand("a"), cand("b")];
        let inputs2 = |rr| ChoiceInputs {
            sessions: &[1, 1, 5],
            round_robin: rr,
            random: 0,
            capacity: &[],
        };
        assert_eq!(
            choose(&LoadBalancing::First, &shuffled, &inputs2(0)),
            Some(1)
        );
        let picks: Vec<_> = (0..3)
            .map(|rr| choose(&LoadBalancing::RoundRobin, &shuffled, &inputs2(rr)).unwrap())
            .collect();
        assert_eq!(picks, [1, 2, 0]);
        assert_eq!(
            choose(&LoadBalancing::LeastSessions, &shuffled, &inputs2(0)),
            Some(1)
        );
    }

    proptest! {
        /// Placing N sessions one at a time with leastSessions over M equal targets leaves
        /// every target within one session of every other.
        #[test]
        fn least_sessions_spreads_within_one(m in 1usize..20, n in 0usize..400) {
            let refs: Vec<String> = (0..m).map(|i| cand(&format!("c{i:02}"))).collect();
            let mut sessions = vec![0usize; m];
            for _ in 0..n {
                let i = choose(&LoadBalancing::LeastSessions, &refs,
                    &ChoiceInputs { sessions: &sessions, round_robin: 0, random: 0, capacity: &[] }).unwrap();
                sessions[i] += 1;
            }
            let (lo, hi) = (sessions.iter().min().unwrap(), sessions.iter().max().unwrap());
            prop_assert!(hi - lo <= 1);
        }

        /// labelArithmetic never picks a target with `current + sessions + overlap > max`,
        /// and picks one with the most free capacity whenever any is eligible.
        #[test]
        fn label_arithmetic_respects_capacity(
            targets in proptest::collection::vec((proptest::option::of((0u64..50, 0u64..60)), 0usize..20), 1..20),
            overlap in 0u64..5,
        ) {
            let keys: Vec<String> = (0..targets.len()).map(|i| format!("t{i:02}")).collect();
            let capacity: Vec<Option<(u64, u64)>> = targets.iter().map(|t| t.0).collect();
            let sessions: Vec<usize> = targets.iter().map(|t| t.1).collect();
            let lb = LoadBalancing::LabelArithmetic { current_label: "c".into(), max_label: "m".into(), overlap };
            let eligible = |i: usize| capacity[i].is_some_and(|(c, m)| c + sessions[i] as u64 + overlap <= m);
            let free = |i: usize| capacity[i].map(|(c, m)| m - c - sessions[i] as u64 - overlap);
            match choose(&lb, &keys, &ChoiceInputs { sessions: &sessions, round_robin: 0, random: 0, capacity: &capacity }) {
                Some(i) => {
                    prop_assert!(eligible(i));
                    for j in (0..keys.len()).filter(|j| eligible(*j)) {
                        prop_assert!(free(j) <= free(i));
                    }
                }
                None => prop_assert!((0..keys.len()).all(|j| !eligible(j))),
            }
        }

        #[test]
        fn random_always_picks_a_match(m in 1usize..50, r in any::<u64>()) {
            let refs: Vec<String> = (0..m).map(|i| cand(&format!("c{i}"))).collect();
            let i = choose(&LoadBalancing::Random, &refs,
                &ChoiceInputs { sessions: &vec![0; m], round_robin: 0, random: r, capacity: &[] }).unwrap();
            prop_assert!(i < m);
        }
    }
}
