//! A bound on how far YAML aliases may expand a config document, checked before serde builds
//! anything from it.
//!
//! serde_yaml 0.9 replays an anchored node at every alias (`*name`), so a few kilobytes of
//! nested aliases (a "billion laughs" document) expand to millions of nodes: 146 MB for a
//! 7 KB file here. Its own guard (a jump count of 100 × the events) bounds the jumps, not the
//! nodes they replay. This walks the document once through serde_yaml's own parser without
//! keeping anything (every node is visited and dropped, so the walk holds only the parser's
//! event list, linear in the text) and counts nodes; past [`node_budget`] it stops with one
//! error that names aliases. A document without aliases has at most about one node per byte,
//! so only alias expansion can exceed the budget; a few modest aliases (shared labels) stay
//! well inside it.
//!
//! Owns that bound. Must not decide anything about the config's values.

use std::cell::Cell;
use std::fmt;

use serde::de::{self, DeserializeSeed, EnumAccess, MapAccess, SeqAccess, VariantAccess, Visitor};

/// Nodes any document may expand to beyond one per byte of its text.
pub(super) const ALIAS_SLACK_NODES: usize = 10_000;

/// The most nodes a document of `len` bytes may expand to: one per byte plus
/// [`ALIAS_SLACK_NODES`].
pub(super) fn node_budget(len: usize) -> usize {
    len.saturating_add(ALIAS_SLACK_NODES)
}

/// `Err(budget)` when `text` expands past [`node_budget`] nodes. Any other problem (syntax,
/// several documents) is left to the real parse, which words it better.
pub(super) fn check(text: &str) -> Result<(), usize> {
    let budget = node_budget(text.len());
    let walk = Walk {
        left: &Cell::new(budget),
        exceeded: &Cell::new(false),
    };
    let exceeded = walk.exceeded;
    let _ = walk.deserialize(serde_yaml::Deserializer::from_str(text));
    if exceeded.get() { Err(budget) } else { Ok(()) }
}

/// Visits every node, counting it against `left`; keeps nothing.
#[derive(Clone, Copy)]
struct Walk<'a> {
    left: &'a Cell<usize>,
    exceeded: &'a Cell<bool>,
}

impl Walk<'_> {
    fn take<E: de::Error>(self) -> Result<(), E> {
        match self.left.get().checked_sub(1) {
            Some(left) => {
                self.left.set(left);
                Ok(())
            }
            None => {
                self.exceeded.set(true);
                Err(E::custom("the document expands past its node budget"))
            }
        }
    }
}

impl<'de> DeserializeSeed<'de> for Walk<'_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

macro_rules! scalar {
    ($($method:ident: $ty:ty),* $(,)?) => {
        $(fn $method<E: de::Error>(self, _: $ty) -> Result<(), E> { self.take() })*
    };
}

impl<'de> Visitor<'de> for Walk<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML node")
    }

    scalar!(visit_bool: bool, visit_i64: i64, visit_u64: u64, visit_i128: i128,
        visit_u128: u128, visit_f64: f64, visit_str: &str, visit_bytes: &[u8]);

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.take()
    }

    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        self.take()
    }

    fn visit_some<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        self.deserialize(d)
    }

    fn visit_newtype_struct<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        self.deserialize(d)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        self.take()?;
        while seq.next_element_seed(self)?.is_some() {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        self.take()?;
        while map.next_key_seed(self)?.is_some() {
            map.next_value_seed(self)?;
        }
        Ok(())
    }

    /// A tagged node (`!tag value`).
    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<(), A::Error> {
        self.take()?;
        let (_, variant) = data.variant_seed(self)?;
        variant.newtype_variant_seed(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ten levels of ten aliases each: 10^10 nodes from under 1 KB.
    pub(crate) fn billion_laughs() -> String {
        let mut doc = String::from("a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
        for i in 1..10 {
            let p = i - 1;
            doc.push_str(&format!(
                "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
            ));
        }
        doc
    }

    #[test]
    fn a_billion_laughs_stops_at_the_budget() {
        let doc = billion_laughs();
        let started = tokio::time::Instant::now();
        assert_eq!(check(&doc), Err(node_budget(doc.len())));
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
    }

    #[test]
    fn documents_without_or_with_modest_aliases_pass() {
        assert_eq!(check("a: 1\nb: [x, y, {c: d}]\n"), Ok(()));
        assert_eq!(check("l: &l {zone: a, tier: b}\nx: [*l, *l, *l]\n"), Ok(()));
        assert_eq!(check("!tag x"), Ok(()));
        assert_eq!(check(""), Ok(()));
        // A syntax error is the real parse's to report.
        assert_eq!(check("a: [1, 2"), Ok(()));
        // One node per byte of a dense document is within the budget.
        let dense = "[".to_string() + &"1,".repeat(50_000) + "1]";
        assert_eq!(check(&dense), Ok(()));
    }
}
