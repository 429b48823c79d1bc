//! The query protocol (SPEC §2): one JSON object per line in, one per line out.
//!
//! Pure: parsing a request line and rendering an answer. Framing, limits and timeouts belong
//! to `shell::query`; what a request resolves to belongs to `resolve`.
//!
//! Owns the query wire format and error codes. Must not resolve queries or issue tokens.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Deserializer, Serialize};

use crate::model::ErrorCode;

/// A client's request, exactly as SPEC §2 describes it. Unknown fields are rejected by name.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct QueryRequest {
    pub resource_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub label_selector: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotation_selector: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_query: Option<StatusQuery>,
    /// The player's id: added to the Agones players list on allocation and sent to the game
    /// server in the PROXY v2 header (`proxyProtocol: v2`). 1..=[`PLAYER_ID_MAX`] bytes of
    /// `[A-Za-z0-9._:@-]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub player_id: Option<String>,
    /// The player's ticket (SPEC §2 "Who may ask"): a JWT from the studio's backend. Verified
    /// before anything else; its `sub` becomes the `playerId`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ticket: Option<String>,
    /// The player's IP, set by a verified backend caller (mTLS) asking on a player's behalf:
    /// the token binds to it instead of the caller's. From anyone else: `unauthorized`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ip: Option<IpAddr>,
}

/// Longest `playerId` (a UUID's length fits).
pub const PLAYER_ID_MAX: usize = 36;

/// Why a `playerId` is unusable, or `None` when it is fine.
pub fn player_id_problem(id: &str) -> Option<String> {
    if id.is_empty() || id.len() > PLAYER_ID_MAX {
        return Some(format!(
            "`playerId` must be 1..={PLAYER_ID_MAX} bytes, found {}",
            id.len()
        ));
    }
    id.chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '@' | '-')))
        .map(|c| format!("`playerId` may contain only A-Z a-z 0-9 . _ : @ -, found {c:?}"))
}

/// A JSONPath into the resource and the values that count as a match.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StatusQuery {
    pub json_path: String,
    /// One expected value; merged with `expectedValues`.
    #[serde(
        default,
        deserialize_with = "scalar_text_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub expected_value: Option<String>,
    #[serde(
        default,
        deserialize_with = "scalar_texts",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub expected_values: Vec<String>,
}

impl StatusQuery {
    /// All expected values, in the order given.
    pub fn expected(&self) -> impl Iterator<Item = &str> + Clone {
        self.expected_value
            .iter()
            .chain(self.expected_values.iter())
            .map(String::as_str)
    }
}

/// Numbers and booleans are accepted where a string is expected and compared by their text.
fn scalar_text(value: serde_json::Value) -> Result<String, String> {
    match value {
        serde_json::Value::String(s) => Ok(s),
        serde_json::Value::Number(n) => Ok(n.to_string()),
        serde_json::Value::Bool(b) => Ok(b.to_string()),
        other => Err(format!(
            "expected a string, number or boolean, found {other}"
        )),
    }
}

fn scalar_text_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let v = Option::<serde_json::Value>::deserialize(d)?;
    v.map(scalar_text)
        .transpose()
        .map_err(serde::de::Error::custom)
}

fn scalar_texts<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let v = Vec::<serde_json::Value>::deserialize(d)?;
    v.into_iter()
        .map(scalar_text)
        .collect::<Result<_, _>>()
        .map_err(serde::de::Error::custom)
}

/// An error answer: a code a program can branch on and a message a person can read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize)]
#[error("{code:?}: {message}")]
pub struct QueryError {
    pub code: ErrorCode,
    pub message: String,
}

impl QueryError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

/// The target named in a successful answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TargetRef {
    pub namespace: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

/// A successful answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TokenAnswer {
    pub token: String,
    pub ttl_seconds: u64,
    /// Sealed tokens: how long `[magic][token]` re-opens the session on any replica.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume_seconds: Option<u64>,
    pub target: TargetRef,
}

impl TargetRef {
    pub fn new(namespace: &str, name: &str, addr: Option<SocketAddr>) -> Self {
        Self {
            namespace: namespace.to_string(),
            name: name.to_string(),
            address: addr.map(|a| a.ip().to_string()),
            port: addr.map(|a| a.port()),
        }
    }
}

/// Renders an answer line, newline included.
pub fn render(answer: &Result<TokenAnswer, QueryError>) -> Vec<u8> {
    #[derive(Serialize)]
    struct ErrorAnswer<'a> {
        error: &'a QueryError,
    }
    let mut out = match answer {
        Ok(ok) => serde_json::to_vec(ok),
        Err(error) => serde_json::to_vec(&ErrorAnswer { error }),
    }
    // Serialising these plain structs cannot fail; keep a valid answer if it ever did.
    .unwrap_or_else(|_| {
        br#"{"error":{"code":"internal","message":"answer could not be encoded"}}"#.to_vec()
    });
    out.push(b'\n');
    out
}

/// Parses one request line (without its newline). Every failure is a `bad_request` whose
/// message says what was expected and what was found.
pub fn parse_request(line: &[u8]) -> Result<QueryRequest, QueryError> {
    let text = std::str::from_utf8(line).map_err(|e| {
        QueryError::new(
            ErrorCode::BadRequest,
            format!("request is not valid UTF-8 (at byte {})", e.valid_up_to()),
        )
    })?;
    let request: QueryRequest = serde_json::from_str(text).map_err(|e| {
        QueryError::new(
            ErrorCode::BadRequest,
            format!("expected one JSON object with a `resourceType`: {e}"),
        )
    })?;
    if request.resource_type.is_empty() {
        return Err(QueryError::new(
            ErrorCode::BadRequest,
            "`resourceType` must not be empty",
        ));
    }
    if let Some(problem) = request.player_id.as_deref().and_then(player_id_problem) {
        return Err(QueryError::new(ErrorCode::BadRequest, problem));
    }
    if let Some(status) = &request.status_query {
        check_client_path(&status.json_path)
            .map_err(|e| QueryError::new(ErrorCode::BadRequest, e.to_string()))?;
        normalize_json_path(&status.json_path)
            .map_err(|e| QueryError::new(ErrorCode::BadRequest, e.to_string()))?;
        if status.expected().next().is_none() {
            return Err(QueryError::new(
                ErrorCode::BadRequest,
                "`statusQuery` needs `expectedValue` or `expectedValues`",
            ));
        }
    }
    Ok(request)
}

/// A JSONPath that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("jsonPath {path:?} is not valid: {reason}")]
pub struct JsonPathError {
    pub path: String,
    pub reason: String,
}

/// Longest `statusQuery.jsonPath` a client may send, in bytes. Enough for
/// `status.ports[?(@.name=="default" && @.protocol=="UDP")].port` several times over.
pub const CLIENT_PATH_MAX_BYTES: usize = 256;

/// Deepest nesting of brackets and parentheses (outside string literals) in a client's
/// JSONPath: `a[?(@.b[?(@.c)])]` is 4 deep. Bounds the parser's recursion and how deep
/// filters nest.
pub const CLIENT_PATH_MAX_DEPTH: usize = 8;

/// Most commas (outside string literals) in a client's JSONPath. A union `[*,*]` repeats
/// what it selects, so unions in a row multiply; a few commas bound that to a constant.
pub const CLIENT_PATH_MAX_COMMAS: usize = 4;

/// The bounds on a client's JSONPath (SPEC §2 "Limits"), checked before it is parsed, so
/// that evaluating it costs at most a small multiple of the object's size per candidate:
/// at most [`CLIENT_PATH_MAX_BYTES`] bytes, brackets and parentheses nested at most
/// [`CLIENT_PATH_MAX_DEPTH`] deep, at most one recursive descent `..`, no `$` but the
/// leading root (an absolute query inside a filter re-walks the whole object per node), and
/// at most [`CLIENT_PATH_MAX_COMMAS`] commas. Regex functions are the mapping's call
/// (`allowRegex`, see `resolve`). Operator paths in the config are not bounded.
pub fn check_client_path(path: &str) -> Result<(), JsonPathError> {
    let err = |reason: String| JsonPathError {
        // Never echo a long path back whole.
        path: path.chars().take(64).collect(),
        reason,
    };
    if path.len() > CLIENT_PATH_MAX_BYTES {
        return Err(err(format!(
            "longer than {CLIENT_PATH_MAX_BYTES} bytes ({})",
            path.len()
        )));
    }
    let shape = PathShape::of(path);
    if shape.depth > CLIENT_PATH_MAX_DEPTH {
        return Err(err(format!(
            "brackets and parentheses nest {} deep; at most {CLIENT_PATH_MAX_DEPTH} allowed",
            shape.depth
        )));
    }
    if shape.descents > 1 {
        return Err(err(
            "at most one recursive descent `..` is allowed".to_string()
        ));
    }
    if shape.inner_roots > 0 {
        return Err(err(
            "`$` may only start the path; inside a filter use `@`".to_string()
        ));
    }
    if shape.commas > CLIENT_PATH_MAX_COMMAS {
        return Err(err(format!(
            "at most {CLIENT_PATH_MAX_COMMAS} commas (unions, function arguments) allowed"
        )));
    }
    Ok(())
}

/// What bounds a path's cost, counted outside quoted strings (`'..'`, `".."`, `\` escapes).
#[derive(Debug, Default, PartialEq, Eq)]
struct PathShape {
    /// The deepest nesting of `[` and `(`.
    depth: usize,
    /// `..` occurrences.
    descents: usize,
    /// `$` other than a leading one (after blanks and an optional `{`).
    inner_roots: usize,
    commas: usize,
}

impl PathShape {
    fn of(path: &str) -> Self {
        let mut shape = Self::default();
        let mut depth = 0usize;
        let mut quote: Option<char> = None;
        let mut escaped = false;
        let mut prev = None;
        let lead = path.trim_start().trim_start_matches('{').trim_start();
        let skip = path.len() - lead.len() + usize::from(lead.starts_with('$'));
        for (i, c) in path.char_indices() {
            match quote {
                Some(_) if escaped => escaped = false,
                Some(_) if c == '\\' => escaped = true,
                Some(q) if c == q => quote = None,
                Some(_) => {}
                None => match c {
                    '\'' | '"' => quote = Some(c),
                    '[' | '(' => {
                        depth += 1;
                        shape.depth = shape.depth.max(depth);
                    }
                    ']' | ')' => depth = depth.saturating_sub(1),
                    // `...` counts twice: over-counting only refuses.
                    '.' if prev == Some('.') => shape.descents += 1,
                    '$' if i >= skip => shape.inner_roots += 1,
                    ',' => shape.commas += 1,
                    _ => {}
                },
            }
            prev = Some(c);
        }
        shape
    }
}

/// Accepts kubectl-style (`status.state`, `.status.state`, `{.status.state}`) and `$`-rooted
/// paths and returns the `$`-rooted form jsonpath-rust understands, after checking it parses.
pub fn normalize_json_path(path: &str) -> Result<String, JsonPathError> {
    let err = |reason: &str| JsonPathError {
        path: path.to_string(),
        reason: reason.to_string(),
    };
    let trimmed = path.trim();
    let inner = match trimmed.strip_prefix('{') {
        Some(rest) => rest
            .strip_suffix('}')
            .ok_or_else(|| err("opening `{` without closing `}`"))?
            .trim(),
        None => trimmed,
    };
    if inner.is_empty() {
        return Err(err("empty path"));
    }
    let rooted = if inner.starts_with('$') {
        inner.to_string()
    } else if inner.starts_with('.') || inner.starts_with('[') {
        format!("${inner}")
    } else {
        format!("$.{inner}")
    };
    use jsonpath_rust::JsonPath;
    serde_json::Value::Null
        .query(&rooted)
        .map_err(|e| err(&e.to_string()))?;
    Ok(rooted)
}

#[cfg(test)]
#[path = "query_tests.rs"]
mod tests;
