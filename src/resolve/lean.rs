//! Compact JSON for the watch caches (SPEC §4: cached objects keep only what routing reads).
//!
//! `serde_json::Value` spends a whole B-tree node (≈ 630 bytes) on every object, however
//! small, so a cached GameServer's few status fields cost kilobytes. [`Lean`] stores an
//! object as one exactly-sized slice of entries and shares every key and short string
//! through [`Strings`] (fleet names, states, port names repeat across thousands of objects),
//! so the same fields take a few hundred bytes. Labels and annotations are [`Pairs`]: a
//! sorted slice looked up by binary search.
//!
//! Status queries walk a `Lean` directly for plain paths (`status.state`); a path with
//! filters or indexes is run by jsonpath-rust on the subtree under its plain prefix,
//! converted back to a `Value` for that one evaluation.
//!
//! Owns the compact representation. Must not decide what is kept (that is `kube::Keep`).

use std::borrow::Cow;
use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};

use serde_json::{Number, Value};

use crate::protocol::jsonpath::CompiledPath;
use crate::util::sync::lock;

/// A JSON value stored compactly (24 bytes inline, children in exactly-sized slices).
#[derive(Debug, Clone, PartialEq)]
pub enum Lean {
    Null,
    Bool(bool),
    Number(Number),
    String(Arc<str>),
    Array(Box<[Lean]>),
    /// Entries in document order; keys are unique.
    Object(Box<[(Arc<str>, Lean)]>),
}

/// Labels or annotations as stored: sorted `(key, value)` pairs.
type PairSlice = Arc<[(Arc<str>, Arc<str>)]>;

/// Strings shared between cached objects: keys, and values up to [`Strings::SHORT`] bytes.
/// Bounded: past [`Strings::CAPACITY`] distinct strings new ones are simply not shared.
#[derive(Debug, Default)]
pub struct Strings {
    set: Mutex<HashSet<Arc<str>>>,
    /// Whole label (or annotation) sets: a fleet's GameServers mostly carry the same ones.
    pairs: Mutex<HashSet<PairSlice>>,
}

impl Strings {
    /// Longest value shared (longer ones are rarely repeated: ids, hashes).
    pub const SHORT: usize = 48;
    /// Most distinct strings kept.
    pub const CAPACITY: usize = 65_536;

    /// The shared copy of `s` (or a fresh one when the set is full or `s` is long).
    pub fn get(&self, s: &str) -> Arc<str> {
        if s.len() > Self::SHORT {
            return Arc::from(s);
        }
        let mut set = lock(&self.set);
        if let Some(shared) = set.get(s) {
            return Arc::clone(shared);
        }
        let fresh: Arc<str> = Arc::from(s);
        if set.len() < Self::CAPACITY {
            set.insert(Arc::clone(&fresh));
        }
        fresh
    }

    /// The shared copy of a whole set of pairs (bounded like the strings).
    fn pairs(&self, pairs: Vec<(Arc<str>, Arc<str>)>) -> PairSlice {
        let mut set = lock(&self.pairs);
        if let Some(shared) = set.get(pairs.as_slice()) {
            return Arc::clone(shared);
        }
        let fresh: PairSlice = pairs.into();
        if set.len() < Self::CAPACITY {
            set.insert(Arc::clone(&fresh));
        }
        fresh
    }

    /// Distinct strings shared so far.
    pub fn len(&self) -> usize {
        lock(&self.set).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Lean {
    /// Converts `v`, sharing keys and short strings through `strings`.
    pub fn from_value(v: Value, strings: &Strings) -> Self {
        match v {
            Value::Null => Lean::Null,
            Value::Bool(b) => Lean::Bool(b),
            Value::Number(n) => Lean::Number(n),
            Value::String(s) => Lean::String(strings.get(&s)),
            Value::Array(items) => Lean::Array(
                items
                    .into_iter()
                    .map(|v| Lean::from_value(v, strings))
                    .collect(),
            ),
            Value::Object(map) => Lean::Object(
                map.into_iter()
                    .map(|(k, v)| (strings.get(&k), Lean::from_value(v, strings)))
                    .collect(),
            ),
        }
    }

    /// Back to a `Value` (for a jsonpath-rust evaluation).
    pub fn to_value(&self) -> Value {
        match self {
            Lean::Null => Value::Null,
            Lean::Bool(b) => Value::Bool(*b),
            Lean::Number(n) => Value::Number(n.clone()),
            Lean::String(s) => Value::String(s.to_string()),
            Lean::Array(items) => Value::Array(items.iter().map(Lean::to_value).collect()),
            Lean::Object(entries) => Value::Object(
                entries
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_value()))
                    .collect(),
            ),
        }
    }

    /// The member `key` of an object.
    pub fn get(&self, key: &str) -> Option<&Lean> {
        match self {
            Lean::Object(entries) => entries.iter().find(|(k, _)| &**k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// The value at a path of plain keys.
    pub fn walk<S: AsRef<str>>(&self, keys: &[S]) -> Option<&Lean> {
        keys.iter().try_fold(self, |v, k| v.get(k.as_ref()))
    }

    pub fn as_array(&self) -> Option<&[Lean]> {
        match self {
            Lean::Array(items) => Some(items),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Lean::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_u64(&self) -> Option<u64> {
        match self {
            Lean::Number(n) => n.as_u64(),
            _ => None,
        }
    }

    /// The text a scalar compares by (as `jsonpath::value_text` for a `Value`).
    pub fn text(&self) -> Option<Cow<'_, str>> {
        match self {
            Lean::String(s) => Some(Cow::Borrowed(s)),
            Lean::Number(n) => Some(Cow::Owned(n.to_string())),
            Lean::Bool(b) => Some(Cow::Borrowed(if *b { "true" } else { "false" })),
            _ => None,
        }
    }

    /// Whether a value `path` selects has one of the `expected` texts. Plain paths walk the
    /// lean tree; others run on the subtree under the path's plain prefix.
    pub fn path_matches<'a>(
        &self,
        path: &CompiledPath,
        expected: impl Iterator<Item = &'a str> + Clone,
    ) -> bool {
        let hit = |t: Cow<'_, str>| expected.clone().any(|e| e == t);
        match path {
            CompiledPath::Keys(keys) => self.walk(keys).and_then(Lean::text).is_some_and(hit),
            CompiledPath::Query(..) => {
                let prefix = path.prefix();
                let Some(sub) = self.walk(prefix) else {
                    return false;
                };
                let mut value = sub.to_value();
                for k in prefix.iter().rev() {
                    value = Value::Object([(k.clone(), value)].into_iter().collect());
                }
                path.values(&value)
                    .into_iter()
                    .any(|v| crate::protocol::jsonpath::value_text(v).is_some_and(hit))
            }
        }
    }
}

/// Labels or annotations: sorted by key, looked up by binary search.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pairs(PairSlice);

impl Default for Pairs {
    fn default() -> Self {
        Self(Arc::new([]))
    }
}

impl Pairs {
    /// From a map (already sorted), sharing keys, short values and whole equal sets through
    /// `strings`.
    pub fn from_map(map: BTreeMap<String, String>, strings: &Strings) -> Self {
        if map.is_empty() {
            return Self::default();
        }
        Self(
            strings.pairs(
                map.into_iter()
                    .map(|(k, v)| (strings.get(&k), strings.get(&v)))
                    .collect(),
            ),
        )
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (&**k, &**v))
    }

    /// As a `Value` map (a `metadata.*` view for status queries).
    pub fn to_value(&self) -> Value {
        Value::Object(
            self.iter()
                .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
                .collect(),
        )
    }
}

/// Something labels are looked up in: a static endpoint's map or a cached object's pairs.
pub trait LabelSet {
    fn label(&self, key: &str) -> Option<&str>;
}

impl LabelSet for BTreeMap<String, String> {
    fn label(&self, key: &str) -> Option<&str> {
        self.get(key).map(String::as_str)
    }
}

impl LabelSet for Pairs {
    fn label(&self, key: &str) -> Option<&str> {
        self.0
            .binary_search_by(|(k, _)| (**k).cmp(key))
            .ok()
            .and_then(|i| self.0.get(i))
            .map(|(_, v)| &**v)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn round_trips_and_shares_strings() {
        let strings = Strings::default();
        let v = json!({"state": "Ready", "ports": [{"name": "default", "port": 7654}],
            "ok": true, "none": null, "ratio": 1.5});
        let a = Lean::from_value(v.clone(), &strings);
        let b = Lean::from_value(v.clone(), &strings);
        assert_eq!(a.to_value(), v);
        let (Some(Lean::String(x)), Some(Lean::String(y))) = (a.get("state"), b.get("state"))
        else {
            panic!("strings");
        };
        assert!(Arc::ptr_eq(x, y), "one copy of a repeated value");
        let long = "x".repeat(Strings::SHORT + 1);
        assert!(!Arc::ptr_eq(&strings.get(&long), &strings.get(&long)));
    }

    #[test]
    fn paths_match_like_on_the_full_value() {
        let v = json!({"status": {"state": "Ready", "players": 3, "full": false,
            "ports": [{"name": "rcon", "port": 7001}, {"name": "default", "port": 7654}]}});
        let lean = Lean::from_value(v.clone(), &Strings::default());
        for (path, expected, want) in [
            ("status.state", "Ready", true),
            ("status.state", "Allocated", false),
            ("status.players", "3", true),
            ("status.full", "false", true),
            ("status.ports[?(@.name=='default')].port", "7654", true),
            ("status.ports[?(@.name=='default')].port", "7001", false),
            ("status.ports[0].name", "rcon", true),
            ("status.missing", "x", false),
            ("$..port", "7001", true),
        ] {
            let p = CompiledPath::compile(path).unwrap();
            assert_eq!(
                lean.path_matches(&p, [expected].into_iter()),
                want,
                "{path} == {expected}"
            );
        }
    }

    #[test]
    fn pairs_look_up_by_key() {
        let map: BTreeMap<String, String> = [("b", "2"), ("a", "1"), ("c", "3")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let strings = Strings::default();
        let pairs = Pairs::from_map(map.clone(), &strings);
        assert!(
            Arc::ptr_eq(&pairs.0, &Pairs::from_map(map, &strings).0),
            "equal sets are shared"
        );
        assert_eq!(pairs.label("a"), Some("1"));
        assert_eq!(pairs.label("c"), Some("3"));
        assert_eq!(pairs.label("d"), None);
        assert_eq!(pairs.iter().count(), 3);
    }
}
