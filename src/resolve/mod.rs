//! Resolution: from a query to one target. Owns the compiled mappings (allowed namespaces,
//! fixed selectors, the candidate source) and applies filters and load balancing.
//!
//! It does not issue tokens and does not touch sockets. Live session counts come in through
//! [`SessionCounts`], which the data plane's ledger implements.

pub mod select;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::{Value, json};

use crate::config::{self, Config, LoadBalancing, Mapping};
use crate::protocol::query::{ErrorCode, QueryError, QueryRequest, normalize_json_path};

use select::{ChoiceInputs, choose, selector_matches, status_matches};

/// Where a session goes. Shared by tokens and sessions; identity for counting is `addr`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The `resourceQueryMapping` key it was resolved through.
    pub mapping: String,
    pub namespace: String,
    pub name: String,
    pub addr: SocketAddr,
}

impl Target {
    pub fn new(mapping: &str, namespace: &str, name: &str, addr: SocketAddr) -> Self {
        Self {
            mapping: mapping.to_string(),
            namespace: namespace.to_string(),
            name: name.to_string(),
            // v4-mapped v6 addresses are stored as v4 so the data plane compares like with like.
            addr: SocketAddr::new(addr.ip().to_canonical(), addr.port()),
        }
    }
}

/// Live sessions per target address, as the data plane counts them.
pub trait SessionCounts {
    fn sessions_to(&self, addr: &SocketAddr) -> usize;
}

/// Something a query can match: a static endpoint or (later) a Kubernetes object, reduced to
/// what filters and load balancing need.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub namespace: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// The whole object as JSON, for status queries.
    pub object: Value,
    pub addr: SocketAddr,
}

impl Candidate {
    pub fn from_parts(
        namespace: &str,
        name: &str,
        labels: BTreeMap<String, String>,
        annotations: BTreeMap<String, String>,
        status: Value,
        addr: SocketAddr,
    ) -> Self {
        let object = json!({
            "metadata": {"name": name, "namespace": namespace, "labels": labels, "annotations": annotations},
            "status": if status.is_null() { json!({}) } else { status },
        });
        Self {
            namespace: namespace.to_string(),
            name: name.to_string(),
            labels,
            annotations,
            object,
            addr,
        }
    }
}

/// A successful resolution.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub target: Arc<Target>,
    /// Whether the answer may carry the target's address (`exposeTargetAddress`).
    pub expose_address: bool,
}

enum Source {
    Static(Vec<Candidate>),
}

struct CompiledMapping {
    name: String,
    default_namespace: String,
    allowed: BTreeSet<String>,
    fixed_labels: BTreeMap<String, String>,
    expose_address: bool,
    load_balancing: LoadBalancing,
    round_robin: AtomicUsize,
    source: Source,
}

/// All mappings of one config, compiled. Replaced whole on reload.
pub struct Resolver {
    mappings: BTreeMap<String, CompiledMapping>,
}

impl Resolver {
    /// Compiles a validated config.
    pub fn from_config(config: &Config) -> Self {
        let mappings = config
            .resource_query_mapping
            .iter()
            .map(|(name, m)| (name.clone(), compile(name, m, &config.load_balancing)))
            .collect();
        Self { mappings }
    }

    /// True once every source can answer (static sources always can).
    pub fn synced(&self) -> bool {
        self.mappings.values().all(|m| match m.source {
            Source::Static(_) => true,
        })
    }

    /// Resolves a query to one target, or the error code SPEC §2 prescribes.
    pub fn resolve(
        &self,
        req: &QueryRequest,
        counts: &dyn SessionCounts,
    ) -> Result<Resolved, QueryError> {
        let mapping = self.mappings.get(&req.resource_type).ok_or_else(|| {
            QueryError::new(
                ErrorCode::UnknownResourceType,
                format!(
                    "unknown resourceType `{}` (configured: {})",
                    req.resource_type,
                    self.mappings.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            )
        })?;
        let namespace = req
            .namespace
            .as_deref()
            .unwrap_or(&mapping.default_namespace);
        if !mapping.allowed.contains(namespace) {
            return Err(QueryError::new(
                ErrorCode::ForbiddenNamespace,
                format!(
                    "namespace `{namespace}` is not allowed for resourceType `{}`",
                    mapping.name
                ),
            ));
        }
        let status = match &req.status_query {
            Some(q) => Some((
                normalize_json_path(&q.json_path)
                    .map_err(|e| QueryError::new(ErrorCode::BadRequest, e.to_string()))?,
                q,
            )),
            None => None,
        };
        let Source::Static(candidates) = &mapping.source;
        let matches: Vec<&Candidate> = candidates
            .iter()
            .filter(|c| c.namespace == namespace)
            .filter(|c| selector_matches(&mapping.fixed_labels, &c.labels))
            .filter(|c| selector_matches(&req.label_selector, &c.labels))
            .filter(|c| selector_matches(&req.annotation_selector, &c.annotations))
            .filter(|c| match &status {
                Some((path, q)) => status_matches(&c.object, path, q.expected()),
                None => true,
            })
            .collect();
        let sessions: Vec<usize> = match mapping.load_balancing {
            LoadBalancing::LeastSessions => matches
                .iter()
                .map(|c| counts.sessions_to(&c.addr))
                .collect(),
            _ => Vec::new(),
        };
        let inputs = ChoiceInputs {
            sessions: &sessions,
            round_robin: match mapping.load_balancing {
                LoadBalancing::RoundRobin => mapping.round_robin.fetch_add(1, Ordering::Relaxed),
                _ => 0,
            },
            random: match mapping.load_balancing {
                LoadBalancing::Random => (uuid::Uuid::new_v4().as_u128() >> 64) as u64,
                _ => 0,
            },
        };
        let chosen = choose(&mapping.load_balancing, &matches, &inputs)
            .and_then(|i| matches.get(i))
            .ok_or_else(|| {
                QueryError::new(
                    ErrorCode::NoMatch,
                    format!("no {} in {namespace} matches the query", mapping.name),
                )
            })?;
        Ok(Resolved {
            target: Arc::new(Target::new(
                &mapping.name,
                &chosen.namespace,
                &chosen.name,
                chosen.addr,
            )),
            expose_address: mapping.expose_address,
        })
    }
}

fn compile(name: &str, m: &Mapping, global_lb: &LoadBalancing) -> CompiledMapping {
    let default_namespace = config::mapping_namespace(m).to_string();
    let mut candidates: Vec<Candidate> = m
        .static_endpoints
        .iter()
        .flatten()
        .map(|ep| {
            Candidate::from_parts(
                ep.namespace.as_deref().unwrap_or(&default_namespace),
                &ep.name,
                ep.labels.clone(),
                ep.annotations.clone(),
                ep.status.clone(),
                SocketAddr::new(ep.address, ep.port),
            )
        })
        .collect();
    // Deterministic order for `first`, round-robin and tie-breaking.
    candidates.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    CompiledMapping {
        name: name.to_string(),
        allowed: config::allowed_namespaces(m),
        default_namespace,
        fixed_labels: m.label_selector.clone(),
        expose_address: m.expose_target_address,
        load_balancing: m
            .load_balancing
            .clone()
            .unwrap_or_else(|| global_lb.clone()),
        round_robin: AtomicUsize::new(0),
        source: Source::Static(candidates),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::query::parse_request;
    use std::collections::HashMap;

    struct Counts(HashMap<SocketAddr, usize>);
    impl SessionCounts for Counts {
        fn sessions_to(&self, addr: &SocketAddr) -> usize {
            self.0.get(addr).copied().unwrap_or(0)
        }
    }

    const CONFIG: &str = r#"
resourceQueryMapping:
  echo:
    namespace: games
    namespaces: [games, eu]
    labelSelector: {tier: public}
    static:
      - {name: b, address: 127.0.0.1, port: 9002, labels: {tier: public, zone: b}, status: {state: Ready}}
      - {name: a, address: 127.0.0.1, port: 9001, labels: {tier: public, zone: a}, annotations: {status: accepting}, status: {state: Ready, players: 3}}
      - {name: c, address: 127.0.0.1, port: 9003, labels: {tier: public, zone: a}, status: {state: Shutdown}}
      - {name: hidden, address: 127.0.0.1, port: 9004, labels: {tier: internal}, status: {state: Ready}}
      - {name: eu1, namespace: eu, address: 127.0.0.1, port: 9005, labels: {tier: public}}
  exposed:
    exposeTargetAddress: true
    loadBalancing: {type: first}
    static:
      - {name: x, address: 10.1.2.3, port: 7654}
"#;

    fn resolver() -> Resolver {
        Resolver::from_config(&Config::from_yaml(CONFIG).unwrap())
    }

    fn q(resolver: &Resolver, json: &str, counts: &Counts) -> Result<Resolved, QueryError> {
        resolver.resolve(&parse_request(json.as_bytes()).unwrap(), counts)
    }

    fn no_counts() -> Counts {
        Counts(HashMap::new())
    }

    #[test]
    fn error_codes() {
        let r = resolver();
        let c = no_counts();
        let code = |json: &str| q(&r, json, &c).unwrap_err().code;
        assert_eq!(
            code(r#"{"resourceType":"nope"}"#),
            ErrorCode::UnknownResourceType
        );
        assert_eq!(
            code(r#"{"resourceType":"echo","namespace":"kube-system"}"#),
            ErrorCode::ForbiddenNamespace
        );
        assert_eq!(
            code(r#"{"resourceType":"echo","labelSelector":{"zone":"z"}}"#),
            ErrorCode::NoMatch
        );
    }

    #[test]
    fn filters_and_fixed_selector_apply() {
        let r = resolver();
        let c = no_counts();
        let name = |json: &str| q(&r, json, &c).unwrap().target.name.clone();
        // Fixed selector hides `hidden`; first by name among a, b (c is Shutdown but no status query).
        assert_eq!(
            name(r#"{"resourceType":"echo","labelSelector":{"zone":"b"}}"#),
            "b"
        );
        assert_eq!(
            name(r#"{"resourceType":"echo","annotationSelector":{"status":"accepting"}}"#),
            "a"
        );
        assert_eq!(
            name(
                r#"{"resourceType":"echo","labelSelector":{"zone":"a"},"statusQuery":{"jsonPath":"status.state","expectedValue":"Shutdown"}}"#
            ),
            "c"
        );
        assert_eq!(
            name(
                r#"{"resourceType":"echo","statusQuery":{"jsonPath":"{.status.players}","expectedValues":[3]}}"#
            ),
            "a"
        );
        assert_eq!(name(r#"{"resourceType":"echo","namespace":"eu"}"#), "eu1");
        let e = q(
            &r,
            r#"{"resourceType":"echo","labelSelector":{"tier":"internal"}}"#,
            &c,
        )
        .unwrap_err();
        assert_eq!(e.code, ErrorCode::NoMatch);
    }

    #[test]
    fn least_sessions_prefers_the_emptier_target() {
        let r = resolver();
        let counts = Counts([("127.0.0.1:9001".parse().unwrap(), 2)].into());
        let res = q(&r, r#"{"resourceType":"echo","statusQuery":{"jsonPath":"status.state","expectedValue":"Ready"}}"#, &counts).unwrap();
        assert_eq!(res.target.name, "b");
        assert!(!res.expose_address);
        assert_eq!(res.target.mapping, "echo");
    }

    #[test]
    fn exposure_follows_the_mapping() {
        let r = resolver();
        let res = q(&r, r#"{"resourceType":"exposed"}"#, &no_counts()).unwrap();
        assert!(res.expose_address);
        assert_eq!(res.target.addr, "10.1.2.3:7654".parse().unwrap());
        assert_eq!(res.target.namespace, "default");
    }
}
