//! JSONPath compiled once: plain dotted paths (`$.status.state`) become a list of keys
//! (no parsing or allocation per object), anything else a pre-parsed jsonpath-rust query. Per query the
//! request's path is compiled once, then evaluated against every candidate.
//!
//! Owns path normalisation and evaluation. Must not know which objects it is run on.

use std::sync::Arc;

use jsonpath_rust::parser::model::JpQuery;
use jsonpath_rust::parser::parse_json_path;
use jsonpath_rust::query::js_path_process;
use serde_json::Value;

use crate::protocol::query::{JsonPathError, normalize_json_path};

#[derive(Debug, Clone)]
pub enum CompiledPath {
    /// `$.a.b.c` with plain keys, walked key by key (no parsing, no allocation).
    Keys(Vec<String>),
    /// A parsed query and its leading plain keys (`status.ports` of
    /// `status.ports[?(@.name=="x")].port`; empty when it starts with a wildcard or bracket).
    Query(Arc<JpQuery>, Vec<String>),
}

impl CompiledPath {
    /// Accepts every form `normalize_json_path` does.
    pub fn compile(path: &str) -> Result<Self, JsonPathError> {
        let rooted = normalize_json_path(path)?;
        let plain = rooted.strip_prefix("$.").filter(|rest| {
            rest.split('.').all(|k| {
                !k.is_empty()
                    && k.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            })
        });
        if let Some(rest) = plain {
            return Ok(Self::Keys(rest.split('.').map(str::to_string).collect()));
        }
        let prefix = plain_prefix(&rooted);
        parse_json_path(&rooted)
            .map(|q| Self::Query(Arc::new(q), prefix))
            .map_err(|e| JsonPathError {
                path: path.to_string(),
                reason: e.to_string(),
            })
    }

    /// Every value the path selects (empty when nothing matches).
    pub fn values<'a>(&self, object: &'a Value) -> Vec<&'a Value> {
        match self {
            Self::Keys(keys) => keys
                .iter()
                .try_fold(object, |v, k| v.get(k))
                .into_iter()
                .collect(),
            Self::Query(q, _) => js_path_process(q, object)
                .map(|refs| refs.into_iter().map(|r| r.val()).collect())
                .unwrap_or_default(),
        }
    }
}

impl CompiledPath {
    /// True when the path calls a regex function (`match()`, `search()`: the only ones
    /// jsonpath-rust has). It compiles the regex anew for every value tested, so such a path
    /// costs far more per candidate than any other; mappings refuse it unless `allowRegex`.
    pub fn uses_regex(&self) -> bool {
        match self {
            Self::Keys(_) => false,
            // Every `match`/`search` call renders as `match(`/`search(`; a string literal
            // holding that text is refused too, which errs on the safe side.
            Self::Query(q, _) => {
                let shown = q.to_string();
                shown.contains("match(") || shown.contains("search(")
            }
        }
    }

    /// The plain keys every value the path selects lies under: the whole path when it is
    /// plain, else the keys before its first index, filter, wildcard or recursive descent.
    /// Empty when the path can reach anywhere (`$..x`, `$[*]`).
    pub fn prefix(&self) -> &[String] {
        match self {
            Self::Keys(keys) => keys,
            Self::Query(_, prefix) => prefix,
        }
    }
}

/// The leading plain keys of a rooted path (`$.a.b[0].c` → `a`, `b`).
fn plain_prefix(rooted: &str) -> Vec<String> {
    let Some(rest) = rooted.strip_prefix("$.") else {
        return Vec::new();
    };
    let mut keys = Vec::new();
    for segment in rest.split('.') {
        let plain_len = segment
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
            .unwrap_or(segment.len());
        if plain_len > 0 {
            keys.push(segment[..plain_len].to_string());
        }
        if plain_len < segment.len() || segment.is_empty() {
            break;
        }
    }
    keys
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

#[cfg(test)]
#[path = "jsonpath_tests.rs"]
mod tests;
