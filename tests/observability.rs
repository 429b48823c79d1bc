//! The chart's alert rules and Grafana dashboard name only series a director exposes
//! (its `udp_director_*` families and the `process_*` ones).
//! `k8s/helm/udp-director/files/series.json` is the one list of the series (and matcher label
//! values) that `files/alerts.yaml` and `files/dashboard.json` use: it must equal what those
//! files name, and every entry must be on the `/metrics` of a director started in-process
//! (after a query, a session and a rejected token, so every family has samples). A renamed
//! metric fails here until the rules, the dashboard and the list follow.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use common::{Backend, Client, config_for, establish, start, token_for};
use serde_json::Value;

type Labels = BTreeMap<String, BTreeMap<String, BTreeSet<String>>>;

fn files() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("k8s/helm/udp-director/files")
}

fn read(name: &str) -> String {
    std::fs::read_to_string(files().join(name)).unwrap()
}

/// The prefixes of the series the rules and the dashboard may name: the director's own and
/// the process families every Prometheus client exposes.
const PREFIXES: [&str; 2] = ["udp_director_", "process_"];

/// Where the next series name of [`PREFIXES`] starts in `text` (a prefix at the start of a
/// word, so `foo_process_x` is not one).
fn next_name(text: &str) -> Option<usize> {
    PREFIXES
        .iter()
        .filter_map(|prefix| {
            text.match_indices(prefix).map(|(at, _)| at).find(|&at| {
                !text[..at]
                    .chars()
                    .next_back()
                    .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
            })
        })
        .min()
}

/// `udp_director_*` and `process_*` names in `text`, and the label values of their `{...}`
/// matchers (`label="v"`, `label=~"a|b"`; the dashboard's `namespace` variable aside).
fn used(text: &str) -> (BTreeSet<String>, Labels) {
    let mut names = BTreeSet::new();
    let mut labels = Labels::new();
    let mut rest = text;
    while let Some(at) = next_name(rest) {
        rest = &rest[at..];
        let end = rest
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(rest.len());
        let name = rest[..end].to_string();
        rest = &rest[end..];
        if let Some(body) = rest.strip_prefix('{') {
            let body = &body[..body.find('}').unwrap()];
            for matcher in body.split(',') {
                let (label, value) = matcher
                    .split_once("=~")
                    .or_else(|| matcher.split_once('='))
                    .unwrap_or_else(|| panic!("{name}: matcher {matcher}"));
                let label = label.trim();
                if label == "namespace" {
                    continue;
                }
                let values = labels
                    .entry(name.clone())
                    .or_default()
                    .entry(label.to_string())
                    .or_default();
                values.extend(value.trim().trim_matches('"').split('|').map(String::from));
            }
        }
        names.insert(name);
    }
    (names, labels)
}

fn listed(doc: &Value, key: &str) -> Labels {
    serde_json::from_value(doc[key].clone()).unwrap()
}

/// The rules and the dashboard, without comment lines (which may mention a prefix).
fn rules_and_dashboard() -> String {
    let alerts: String = read("alerts.yaml")
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect();
    alerts + &read("dashboard.json")
}

#[test]
fn the_series_list_is_exactly_what_the_rules_and_the_dashboard_use() {
    let doc: Value = serde_json::from_str(&read("series.json")).unwrap();
    let (names, labels) = used(&rules_and_dashboard());
    let list: BTreeSet<String> = serde_json::from_value(doc["series"].clone()).unwrap();
    assert_eq!(
        names, list,
        "series.json lists every series used, nothing else"
    );
    assert!(names.len() >= 20, "{names:?}");
    assert_eq!(labels, listed(&doc, "labelValues"));
    let dashboard: Value = serde_json::from_str(&read("dashboard.json")).unwrap();
    assert!(dashboard["panels"].as_array().unwrap().len() >= 10);
}

#[test]
fn the_parser_sees_names_and_matchers() {
    let (names, labels) = used(
        r#"rate(udp_director_a_total{namespace=~"$namespace",reason="cap"}[5m]) / udp_director_b{result=~"x|y"}"#,
    );
    assert_eq!(
        names,
        BTreeSet::from(["udp_director_a_total".into(), "udp_director_b".into()])
    );
    assert_eq!(
        labels["udp_director_b"]["result"],
        BTreeSet::from(["x".into(), "y".into()])
    );
    assert_eq!(labels["udp_director_a_total"].len(), 1);
    let (names, _) = used("process_open_fds / process_max_fds * on (pod) my_process_x");
    assert_eq!(
        names,
        BTreeSet::from(["process_open_fds".into(), "process_max_fds".into()])
    );
}

/// Every sample of the exposition: series name and its label pairs.
fn samples(text: &str) -> Vec<(String, BTreeMap<String, String>)> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let head = l.rsplit_once(' ').unwrap().0;
            let (name, labels) = match head.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (head, ""),
            };
            let pairs = labels
                .split(',')
                .filter(|p| !p.is_empty())
                .map(|p| {
                    let (k, v) = p.split_once('=').unwrap();
                    (k.to_string(), v.trim_matches('"').to_string())
                })
                .collect();
            (name.to_string(), pairs)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_series_the_rules_and_the_dashboard_use_is_exposed_by_a_director() {
    let doc: Value = serde_json::from_str(&read("series.json")).unwrap();
    let b = Backend::new();
    let d = start(config_for(&[&b], "")).await;
    // A query, a session with traffic both ways, and a token nobody issued.
    let token = token_for(d.query_addr, r#"{"resourceType":"echo"}"#);
    let c = Client::new(d.data_addr);
    establish(&c, &token, &b);
    let stranger = Client::new(d.data_addr);
    stranger.send(b"00000000-0000-4000-8000-000000000000");
    assert!(common::eventually(Duration::from_secs(2), || {
        testkit::Scrape::fetch_or_empty(d.admin_addr).sum("udp_director_tokens_rejected_total")
            >= 1.0
    }));
    let scrape = testkit::Scrape::fetch(d.admin_addr).unwrap();
    let exposed = samples(scrape.text());
    let names: BTreeSet<&str> = exposed.iter().map(|(n, _)| n.as_str()).collect();
    let list: BTreeSet<String> = serde_json::from_value(doc["series"].clone()).unwrap();
    let missing: Vec<&String> = list
        .iter()
        .filter(|s| !names.contains(s.as_str()))
        .collect();
    assert!(missing.is_empty(), "not on /metrics: {missing:?}");
    let event_only = listed(&doc, "eventOnly");
    for (series, labels) in listed(&doc, "labelValues") {
        for (label, values) in labels {
            let seen: BTreeSet<&str> = exposed
                .iter()
                .filter(|(n, _)| *n == series)
                .filter_map(|(_, l)| l.get(&label).map(String::as_str))
                .collect();
            assert!(!seen.is_empty(), "{series} has no label {label}");
            for v in &values {
                let later = event_only
                    .get(&series)
                    .and_then(|l| l.get(&label))
                    .is_some_and(|vs| vs.contains(v));
                assert!(
                    seen.contains(v.as_str()) || later,
                    "{series}{{{label}=\"{v}\"}} is not on /metrics (has {seen:?})"
                );
            }
        }
    }
    d.stop().await;
}
