//! Agones allocation (SPEC §4, "Agones allocation"): a query on a mapping with `allocate:`
//! creates a `GameServerAllocation` (allocation.agones.dev/v1) instead of picking a server from
//! a cache, so Agones — the one shared truth across every director replica — marks the chosen
//! server `Allocated` and counts its players list.
//!
//! Owns the typed request and answer, how a query becomes a request ([`request`]) and how an
//! answer becomes a target ([`read_answer`]), both pure; and the bounded API call
//! ([`Allocation::run`]: 2 s, `maxInFlight`). Must not cache GameServers or issue tokens.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, PostParams};
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

use super::Resolved;
use crate::config::{PortRule, Scheduling, ValidAllocate};
use crate::k8s::ClientCell;
use crate::model::ErrorCode;
use crate::model::{AllocationResult, Target};
use crate::protocol::query::{QueryError, QueryRequest};
use crate::util::logbudget::SharedLogBudget;

/// How long one allocation may take, client creation included (SPEC §4).
pub const ALLOCATION_TIMEOUT: Duration = Duration::from_secs(2);

/// A `GameServerAllocation` as Agones' v1 API defines it (the fields the director writes and
/// reads; Agones ignores absent optional ones).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GameServerAllocation {
    #[serde(default = "api_version")]
    pub api_version: String,
    #[serde(default = "kind")]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: AllocationSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<AllocationStatus>,
}

fn api_version() -> String {
    "allocation.agones.dev/v1".to_string()
}

fn kind() -> String {
    "GameServerAllocation".to_string()
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AllocationSpec {
    /// Tried in order; the first with a match wins.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub selectors: Vec<GameServerSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduling: Option<Scheduling>,
    /// Applied to the allocated GameServer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<MetadataPatch>,
    /// List actions applied on allocation (`addValues`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub lists: BTreeMap<String, ListAction>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GameServerSelector {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
    /// `Ready` (Agones' default) or `Allocated`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub game_server_state: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub lists: BTreeMap<String, ListSelector>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListSelector {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_available: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_available: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contains_value: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListAction {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub add_values: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MetadataPatch {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// What Agones answers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AllocationStatus {
    /// `Allocated`, `UnAllocated` or `Contention`.
    #[serde(default, deserialize_with = "null_as_default")]
    pub state: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub game_server_name: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub ports: Vec<StatusPort>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub address: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub addresses: Vec<NodeAddress>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub node_name: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StatusPort {
    #[serde(default, deserialize_with = "null_as_default")]
    pub name: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub port: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeAddress {
    #[serde(default, rename = "type", deserialize_with = "null_as_default")]
    pub kind: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub address: String,
}

/// Agones omits empty fields; an API answer with `null` in their place reads as empty too.
fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Option::unwrap_or_default)
}

impl kube::Resource for GameServerAllocation {
    type DynamicType = ();
    type Scope = k8s_openapi::NamespaceResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        "GameServerAllocation".into()
    }
    fn group(_: &()) -> Cow<'_, str> {
        "allocation.agones.dev".into()
    }
    fn version(_: &()) -> Cow<'_, str> {
        "v1".into()
    }
    fn plural(_: &()) -> Cow<'_, str> {
        "gameserverallocations".into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// Failed allocations are counted (`allocations_total{result}`); their warnings are at most
/// 10 per 10 s, the rest counted in the next line's `suppressed` (a failing allocator under
/// load must not flood the log).
static WARNINGS: SharedLogBudget = SharedLogBudget::new(10, Duration::from_secs(10));

/// The `GameServerAllocation` a query asks for: the query's labels ANDed with the mapping's
/// fixed ones; with `playersList`, a free slot in it (and the `playerId` added); with
/// `preferAllocated`, first an `Allocated` server with room, then a `Ready` one.
///
/// Agones selects by labels only: a query with `annotationSelector` or `statusQuery` is
/// `bad_request` (the state is what allocation chooses), and one whose labels contradict the
/// mapping's fixed ones is `no_match` without asking.
pub fn request(
    spec: &ValidAllocate,
    fixed: &BTreeMap<String, String>,
    req: &QueryRequest,
) -> Result<GameServerAllocation, QueryError> {
    refuse_non_label_selection(req)?;
    let labels = anded_labels(fixed, req)?;
    let meta = &spec.metadata;
    Ok(GameServerAllocation {
        api_version: api_version(),
        kind: kind(),
        metadata: ObjectMeta::default(),
        spec: AllocationSpec {
            selectors: selectors(spec, &labels),
            scheduling: Some(spec.scheduling),
            metadata: (!meta.labels.is_empty() || !meta.annotations.is_empty()).then(|| {
                MetadataPatch {
                    labels: meta.labels.clone(),
                    annotations: meta.annotations.clone(),
                }
            }),
            lists: player_slot(spec, req),
        },
        status: None,
    })
}

/// `bad_request` for what Agones cannot select by: `annotationSelector`, then `statusQuery`.
fn refuse_non_label_selection(req: &QueryRequest) -> Result<(), QueryError> {
    if !req.annotation_selector.is_empty() {
        return Err(QueryError::new(
            ErrorCode::BadRequest,
            format!(
                "resourceType `{}` allocates through Agones, which selects by labels only; remove `annotationSelector`",
                req.resource_type
            ),
        ));
    }
    if req.status_query.is_some() {
        return Err(QueryError::new(
            ErrorCode::BadRequest,
            format!(
                "resourceType `{}` allocates through Agones, which picks Ready (or Allocated with room) servers itself; remove `statusQuery`",
                req.resource_type
            ),
        ));
    }
    Ok(())
}

/// The mapping's fixed labels with the query's ANDed in; the first query label that
/// contradicts a fixed one is `no_match`.
fn anded_labels(
    fixed: &BTreeMap<String, String>,
    req: &QueryRequest,
) -> Result<BTreeMap<String, String>, QueryError> {
    let mut labels = fixed.clone();
    for (k, v) in &req.label_selector {
        if labels.get(k).is_some_and(|fixed| fixed != v) {
            return Err(QueryError::new(
                ErrorCode::NoMatch,
                format!("label `{k}={v}` contradicts the mapping's fixed selector"),
            ));
        }
        labels.insert(k.clone(), v.clone());
    }
    Ok(labels)
}

/// The selectors Agones tries in order: with `preferAllocated`, an `Allocated` server
/// first, then a `Ready` one; each with room in `playersList` when there is one.
fn selectors(spec: &ValidAllocate, labels: &BTreeMap<String, String>) -> Vec<GameServerSelector> {
    let room: BTreeMap<String, ListSelector> = spec
        .players_list
        .iter()
        .map(|list| {
            (
                list.clone(),
                ListSelector {
                    min_available: Some(1),
                    ..ListSelector::default()
                },
            )
        })
        .collect();
    let selector = |state: &str| GameServerSelector {
        match_labels: labels.clone(),
        game_server_state: Some(state.to_string()),
        lists: room.clone(),
    };
    let mut selectors = Vec::with_capacity(2);
    if spec.prefer_allocated {
        selectors.push(selector("Allocated"));
    }
    selectors.push(selector("Ready"));
    selectors
}

/// The list action that takes the player's slot: the `playerId` added to `playersList`
/// when both are given, else none.
fn player_slot(spec: &ValidAllocate, req: &QueryRequest) -> BTreeMap<String, ListAction> {
    match (&spec.players_list, &req.player_id) {
        (Some(list), Some(player)) => BTreeMap::from([(
            list.clone(),
            ListAction {
                add_values: vec![player.clone()],
            },
        )]),
        _ => BTreeMap::new(),
    }
}

/// An allocated server as the director addresses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocated {
    pub name: String,
    /// The first data port's address.
    pub addr: SocketAddr,
    /// The ports of the data ports after the first.
    pub extra_ports: Vec<u16>,
}

/// Reads Agones' answer: the server's name, its IP (`address`, else the first IP among
/// `addresses`) and, for each data port's rule, its port (`status.ports` by name, or fixed).
pub fn read_answer(
    status: &AllocationStatus,
    rules: &[PortRule],
) -> Result<Allocated, (AllocationResult, QueryError)> {
    match status.state.as_str() {
        "Allocated" => {}
        "UnAllocated" => {
            return Err((
                AllocationResult::Unallocated,
                QueryError::new(
                    ErrorCode::NoMatch,
                    "Agones found no GameServer that matches the query and has room",
                ),
            ));
        }
        "Contention" => {
            return Err((
                AllocationResult::Contention,
                QueryError::new(
                    ErrorCode::Unavailable,
                    "Agones is busy with other allocations (Contention); retry",
                ),
            ));
        }
        other => {
            return Err((
                AllocationResult::Error,
                QueryError::new(
                    ErrorCode::Unavailable,
                    format!("Agones answered an unknown allocation state {other:?}"),
                ),
            ));
        }
    }
    let unusable = |why: String| {
        (
            AllocationResult::Unusable,
            QueryError::new(
                ErrorCode::Unavailable,
                format!("allocated GameServer `{}` {why}", status.game_server_name),
            ),
        )
    };
    let ip: IpAddr = std::iter::once(status.address.as_str())
        .chain(status.addresses.iter().map(|a| a.address.as_str()))
        .find_map(|a| a.parse().ok())
        .ok_or_else(|| unusable("has no IP address".to_string()))?;
    let ports = rules
        .iter()
        .map(|rule| match rule {
            PortRule::Fixed(p) => Ok(*p),
            PortRule::Name(name) => status
                .ports
                .iter()
                .find(|p| &p.name == name)
                .and_then(|p| u16::try_from(p.port).ok().filter(|p| *p != 0))
                .ok_or_else(|| unusable(format!("has no usable port named `{name}`"))),
            PortRule::Path(_) => Err(unusable(
                "cannot be addressed by `portPath` (validation rules it out)".to_string(),
            )),
        })
        .collect::<Result<Vec<u16>, _>>()?;
    let Some((first, rest)) = ports.split_first() else {
        return Err(unusable("has no data port".to_string()));
    };
    if status.game_server_name.is_empty() {
        return Err(unusable("has no name".to_string()));
    }
    Ok(Allocated {
        name: status.game_server_name.clone(),
        addr: SocketAddr::new(ip, *first),
        extra_ports: rest.to_vec(),
    })
}

/// What the allocation budget made of a query ([`super::Resolver::allocation`]).
pub enum Allocating {
    /// Ask Agones.
    Run(Box<Allocation>),
    /// The player's allocation for the same ask, handed out again (no API call).
    Reused(Resolved),
    /// The player's allocation for the same ask is running: wait for it to change, then ask
    /// the resolver again.
    Join(tokio::sync::watch::Receiver<bool>),
    /// Over `allocate.ratePerSecond`/`burst`: no API call.
    RateLimited(QueryError),
}

/// One query's allocation, ready to run: built by [`super::Resolver::allocation`].
pub struct Allocation {
    pub(super) client: ClientCell,
    pub(super) namespace: String,
    pub(super) body: GameServerAllocation,
    /// Every data port's port rule.
    pub(super) ports: Vec<PortRule>,
    pub(super) in_flight: Arc<Semaphore>,
    pub(super) limit: usize,
    pub(super) mapping: String,
    pub(super) proxy: bool,
    pub(super) player: Option<String>,
    pub(super) expose_address: bool,
    /// A player's allocation: where its success is remembered, and what its joiners wait on.
    pub(super) pending: Option<super::budget::Pending>,
}

impl Allocation {
    /// Asks Agones, within [`ALLOCATION_TIMEOUT`] and the mapping's in-flight limit.
    pub async fn run(self) -> (AllocationResult, Result<Resolved, QueryError>) {
        let Ok(_permit) = Arc::clone(&self.in_flight).try_acquire_owned() else {
            return (
                AllocationResult::Overloaded,
                Err(QueryError::new(
                    ErrorCode::Unavailable,
                    format!(
                        "{} allocations are already in flight for `{}`; retry shortly",
                        self.limit, self.mapping
                    ),
                )),
            );
        };
        let call = async {
            let client = self.client.get().await.map_err(|e| e.to_string())?;
            Api::<GameServerAllocation>::namespaced(client, &self.namespace)
                .create(&PostParams::default(), &self.body)
                .await
                .map_err(describe)
        };
        let answer = match tokio::time::timeout(ALLOCATION_TIMEOUT, call).await {
            Err(_) => {
                if let Some(suppressed) = WARNINGS.allow(tokio::time::Instant::now()) {
                    tracing::warn!(mapping = %self.mapping, namespace = %self.namespace, suppressed, "allocation timed out");
                }
                return (
                    AllocationResult::Timeout,
                    Err(QueryError::new(
                        ErrorCode::Unavailable,
                        format!(
                            "no allocation within {} s (the API was slow or kept answering 'retry later'); retry",
                            ALLOCATION_TIMEOUT.as_secs()
                        ),
                    )),
                );
            }
            Ok(Err(e)) => {
                if let Some(suppressed) = WARNINGS.allow(tokio::time::Instant::now()) {
                    tracing::warn!(mapping = %self.mapping, namespace = %self.namespace, error = %e, suppressed, "allocation failed");
                }
                return (
                    AllocationResult::Error,
                    Err(QueryError::new(
                        ErrorCode::Unavailable,
                        format!("the allocation failed ({e}); retry"),
                    )),
                );
            }
            Ok(Ok(answer)) => answer,
        };
        let status = answer.status.unwrap_or_default();
        match read_answer(&status, &self.ports) {
            Ok(a) => {
                let resolved = Resolved {
                    target: Arc::new(
                        Target::new(&self.mapping, &self.namespace, &a.name, a.addr)
                            .with_extra_ports(&a.extra_ports)
                            .with_proxy(self.proxy)
                            .with_player(self.player.as_deref()),
                    ),
                    expose_address: self.expose_address,
                };
                if let Some(pending) = &self.pending {
                    pending.record(resolved.clone(), tokio::time::Instant::now());
                }
                (AllocationResult::Allocated, Ok(resolved))
            }
            Err((result, e)) => {
                if result == AllocationResult::Unusable
                    && let Some(suppressed) = WARNINGS.allow(tokio::time::Instant::now())
                {
                    tracing::warn!(mapping = %self.mapping, error = %e.message, suppressed, "allocated GameServer is unusable");
                }
                (result, Err(e))
            }
        }
    }
}

/// A kube error as the client may read it: the API's code and reason, not its internals.
fn describe(e: kube::Error) -> String {
    match e {
        kube::Error::Api(s) => format!("Kubernetes API answered {} {}", s.code, s.reason),
        kube::Error::SerdeError(_) => "the answer was not a GameServerAllocation".to_string(),
        other => {
            tracing::debug!(error = %other, "allocation transport error");
            "the Kubernetes API could not be reached".to_string()
        }
    }
}

#[cfg(test)]
#[path = "allocate_tests.rs"]
mod tests;
