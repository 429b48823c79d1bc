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
