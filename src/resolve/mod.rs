//! Resolution: from a query to one target. Owns the compiled mappings (allowed namespaces,
//! fixed selectors, the candidate source) and applies filters and load balancing.
//!
//! Live session counts come in through [`SessionCounts`], which the data plane's ledger
//! implements; Kubernetes objects through the watch caches of `kube.rs`.
//!
//! Owns mappings and choosing targets. Must not issue tokens, touch sockets or know about
//! sessions.

pub mod allocate;
pub mod budget;
pub mod kube;
pub mod lean;
pub mod route;
pub mod select;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use serde_json::{Value, json};

use crate::config::{self, Addressing, LoadBalancing, ValidConfig, ValidMapping, ValidSource};
use crate::model::{ErrorCode, Target};
use crate::protocol::jsonpath::CompiledPath;
use crate::protocol::query::{QueryError, QueryRequest};

pub use route::DefaultRoute;
use route::RouteState;
use select::{choose_among, selector_matches, status_matches};

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
    /// `None` when the endpoint has no port for some data port (never matched).
    pub addr: Option<SocketAddr>,
    pub extra_ports: Vec<u16>,
}

impl Candidate {
    pub fn from_parts(
        namespace: &str,
        name: &str,
        labels: BTreeMap<String, String>,
        annotations: BTreeMap<String, String>,
        status: Value,
        addr: Option<SocketAddr>,
        extra_ports: Vec<u16>,
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
            extra_ports,
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
    /// `allocate:`: every query asks Agones; nothing is cached.
    Allocate {
        spec: config::ValidAllocate,
        /// Every data port's port rule.
        ports: Vec<config::PortRule>,
        in_flight: Arc<tokio::sync::Semaphore>,
        client: crate::k8s::ClientCell,
        /// `allocate.ratePerSecond`/`burst` and the allocations handed out again.
        budget: Arc<budget::Budget>,
    },
    Kube {
        /// One cache per allowed namespace.
        caches: BTreeMap<String, kube::Watched>,
        address: AddressRule,
    },
}

enum AddressRule {
    /// Read when each object is cached ([`kube::Object::addr`]).
    Direct,
    /// Per-namespace Service caches.
    Service {
        label: String,
        port_name: String,
        /// Every data port's target port (`Mapping`: `port_name`).
        ports: Vec<config::TargetPort>,
        services: BTreeMap<String, kube::Watched>,
    },
}

/// A match before load balancing: borrowed from a candidate or a cached object.
struct Match<'a> {
    namespace: &'a str,
    name: &'a str,
    addr: SocketAddr,
    /// The ports of the data ports after the first.
    extra_ports: std::borrow::Cow<'a, [u16]>,
    labels: &'a dyn lean::LabelSet,
    annotations: &'a dyn lean::LabelSet,
}

struct CompiledMapping {
    name: String,
    default_namespace: String,
    allowed: BTreeSet<String>,
    fixed_labels: BTreeMap<String, String>,
    expose_address: bool,
    /// `allowRegex`: clients' status queries may call `match()`/`search()`.
    allow_regex: bool,
    /// `proxyProtocol: v2`.
    proxy: bool,
    load_balancing: LoadBalancing,
    round_robin: AtomicUsize,
    source: Source,
}

/// One mapping's cache as metrics show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MappingStatus {
    pub name: String,
    pub objects: usize,
    pub synced: bool,
}

/// All mappings of one config, compiled. Replaced whole on reload.
pub struct Resolver {
    mappings: BTreeMap<String, CompiledMapping>,
    skipped: prometheus_client::metrics::counter::Counter,
}

impl Resolver {
    /// Compiles a validated config with static mappings only (Kubernetes mappings would
    /// start watchers on a default client; use [`Resolver::new`] to share them).
    #[cfg(test)]
    pub fn from_config(config: &ValidConfig) -> Self {
        Self::new(
            config,
            &kube::Watchers::new(
                crate::k8s::Connect::Infer,
                Default::default(),
                Default::default(),
            ),
        )
    }

    /// Compiles a validated config; Kubernetes mappings get (shared) watch caches from
    /// `watchers`. Must run inside a tokio runtime when the config has Kubernetes mappings.
    pub fn new(config: &ValidConfig, watchers: &kube::Watchers) -> Self {
        let mappings = config
            .mappings
            .iter()
            .map(|(name, m)| {
                (
                    name.clone(),
                    compile(m, &config.data_ports, config.token_ttl, watchers),
                )
            })
            .collect();
        Self {
            mappings,
            skipped: watchers.skipped.clone(),
        }
    }

    /// True once every cache has completed its first list (static sources always have).
    pub fn synced(&self) -> bool {
        self.unsynced().is_empty()
    }

    /// Descriptions of the caches that have not synced yet.
    pub fn unsynced(&self) -> Vec<String> {
        let mut out = Vec::new();
        for m in self.mappings.values() {
            if let Source::Kube { caches, address } = &m.source {
                let services = match address {
                    AddressRule::Service { services, .. } => Some(services.values()),
                    AddressRule::Direct => None,
                };
                for w in caches.values().chain(services.into_iter().flatten()) {
                    if !w.synced() {
                        out.push(w.what.clone());
                    }
                }
            }
        }
        out
    }

    /// Per mapping: objects cached (static: endpoints) and whether every cache behind it
    /// has synced once. For metrics; `Watched::len` reads the store's length (O(1), no copy).
    pub fn mapping_status(&self) -> Vec<MappingStatus> {
        self.mappings
            .iter()
            .map(|(name, m)| {
                let (objects, synced) = match &m.source {
                    Source::Static(c) => (c.len(), true),
                    Source::Allocate { .. } => (0, true),
                    Source::Kube { caches, address } => {
                        let services = match address {
                            AddressRule::Service { services, .. } => Some(services.values()),
                            AddressRule::Direct => None,
                        };
                        (
                            caches.values().map(|c| c.len()).sum(),
                            caches
                                .values()
                                .chain(services.into_iter().flatten())
                                .all(|w| w.synced()),
                        )
                    }
                };
                MappingStatus {
                    name: name.clone(),
                    objects,
                    synced,
                }
            })
            .collect()
    }

    /// Resolves a query to one target, or the error code SPEC §2 prescribes.
    pub fn resolve(
        &self,
        req: &QueryRequest,
        counts: &dyn SessionCounts,
    ) -> Result<Resolved, QueryError> {
        self.with_matches(req, |mapping, namespace, matches| {
            let keys: Vec<(&str, &str)> = matches.iter().map(|m| (m.namespace, m.name)).collect();
            let lb = &mapping.load_balancing;
            let chosen = choose_among(
                lb,
                &keys,
                |i| matches[i].addr,
                |i| capacity_of(lb, matches[i].labels, matches[i].annotations),
                counts,
                &mapping.round_robin,
                || (uuid::Uuid::new_v4().as_u128() >> 64) as u64,
            )
            .and_then(|i| matches.get(i))
            .ok_or_else(|| no_match(mapping, namespace, matches.is_empty()))?;
            Ok(Resolved {
                target: Arc::new(
                    Target::new(&mapping.name, chosen.namespace, chosen.name, chosen.addr)
                        .with_extra_ports(&chosen.extra_ports)
                        .with_proxy(mapping.proxy)
                        .with_player(req.player_id.as_deref()),
                ),
                expose_address: mapping.expose_address,
            })
        })?
    }

    /// The default endpoint's route: its query's matches now, refreshed by
    /// [`DefaultRoute::refresh`] when a cache behind them changes. `None` when the query names no
    /// mapping of this resolver (validation rules that out).
    pub fn default_route(&self, req: &QueryRequest) -> Option<DefaultRoute> {
        let mapping = self.mappings.get(&req.resource_type)?;
        let route = DefaultRoute {
            request: req.clone(),
            load_balancing: mapping.load_balancing.clone(),
            round_robin: AtomicUsize::new(0),
            state: arc_swap::ArcSwap::from_pointee(RouteState::default()),
        };
        route.recompute(self);
        Some(route)
    }

    /// Every address each mapping's targets have now, on every data port: static endpoints
    /// and the objects of its watch caches (allocating mappings keep none: what this replica
    /// allocates is learned as it happens). What tokens may name (`model::KnownTargets`).
    pub fn known_addresses(&self) -> HashMap<String, HashSet<SocketAddr>> {
        let with_ports = |set: &mut HashSet<SocketAddr>, addr: SocketAddr, extra: &[u16]| {
            set.insert(addr);
            set.extend(extra.iter().map(|p| SocketAddr::new(addr.ip(), *p)));
        };
        let mut out = HashMap::new();
        for (name, m) in &self.mappings {
            let mut set = HashSet::new();
            match &m.source {
                Source::Static(candidates) => {
                    for c in candidates {
                        if let Some(addr) = c.addr {
                            with_ports(&mut set, addr, &c.extra_ports);
                        }
                    }
                }
                Source::Allocate { .. } => {}
                Source::Kube { caches, address } => {
                    for (namespace, cache) in caches {
                        let services = match address {
                            AddressRule::Service { services, .. } => services
                                .get(namespace)
                                .map(kube::Watched::objects)
                                .unwrap_or_default(),
                            AddressRule::Direct => Vec::new(),
                        };
                        for o in cache.objects() {
                            let found = match address {
                                AddressRule::Direct => o.addr.map(|a| (a, o.extra_ports.to_vec())),
                                AddressRule::Service {
                                    label,
                                    port_name,
                                    ports,
                                    ..
                                } => kube::service_ports(
                                    &o.labels, label, port_name, ports, &services,
                                ),
                            };
                            if let Some((addr, extra)) = found {
                                with_ports(&mut set, addr, &extra);
                            }
                        }
                    }
                }
            }
            out.insert(name.clone(), set);
        }
        out
    }

    /// Sum of the change counters of every cache behind this resolver: moves whenever any of
    /// them applies a watch event (static mappings never move it).
    pub fn cache_generation(&self) -> u64 {
        self.watched()
            .map(|w| w.generation())
            .fold(0u64, u64::wrapping_add)
    }

    /// Every cache behind this resolver (resource caches and Service caches).
    fn watched(&self) -> impl Iterator<Item = &kube::Watched> {
        self.mappings.values().flat_map(|m| {
            let (caches, services) = match &m.source {
                Source::Static(_) | Source::Allocate { .. } => (None, None),
                Source::Kube { caches, address } => (
                    Some(caches.values()),
                    match address {
                        AddressRule::Service { services, .. } => Some(services.values()),
                        AddressRule::Direct => None,
                    },
                ),
            };
            caches
                .into_iter()
                .flatten()
                .chain(services.into_iter().flatten())
        })
    }

    /// Applies the query's mapping, namespace, selectors and status query and hands the
    /// matches (borrowed from the cache snapshot) to `f`.
    /// The query's mapping and namespace, or `unknown_resource_type` / `forbidden_namespace`.
    fn mapping_for<'a>(
        &'a self,
        req: &'a QueryRequest,
    ) -> Result<(&'a CompiledMapping, &'a str), QueryError> {
        let mapping = self.mappings.get(&req.resource_type).ok_or_else(|| {
            QueryError::new(
                ErrorCode::UnknownResourceType,
                // The configured names are not listed: they are the operator's, not the client's.
                format!("unknown resourceType `{}`", req.resource_type),
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
        Ok((mapping, namespace))
    }

    /// For a query on an allocating mapping at `now`, what the budget allows: the allocation
    /// to run (the query server awaits it), the player's allocation again, or `rate_limited`;
    /// `None` for every other mapping (use [`Resolver::resolve`]).
    pub fn allocation(
        &self,
        req: &QueryRequest,
        now: tokio::time::Instant,
    ) -> Result<Option<allocate::Allocating>, QueryError> {
        let (mapping, namespace) = self.mapping_for(req)?;
        let Source::Allocate {
            spec,
            ports,
            in_flight,
            client,
            budget,
        } = &mapping.source
        else {
            return Ok(None);
        };
        // The request is checked (and its body built) before anything is spent.
        let body = allocate::request(spec, &mapping.fixed_labels, req)?;
        let reuse_key = budget::reuse_key(req.player_id.as_deref(), namespace, &req.label_selector);
        Ok(Some(match budget.decide(reuse_key.as_deref(), now) {
            budget::Decision::Reuse(resolved) => allocate::Allocating::Reused(resolved),
            budget::Decision::Join(running) => allocate::Allocating::Join(running),
            budget::Decision::RateLimited => allocate::Allocating::RateLimited(QueryError::new(
                ErrorCode::RateLimited,
                format!(
                    "resourceType `{}` allocates at most {} GameServers per second on this replica (burst {}); retry later",
                    mapping.name, spec.rate_per_second, spec.burst
                ),
            )),
            budget::Decision::Allocate(pending) => {
                allocate::Allocating::Run(Box::new(allocate::Allocation {
                    client: client.clone(),
                    namespace: namespace.to_string(),
                    body,
                    ports: ports.clone(),
                    in_flight: Arc::clone(in_flight),
                    limit: spec.max_in_flight,
                    mapping: mapping.name.clone(),
                    proxy: mapping.proxy,
                    player: req.player_id.clone(),
                    expose_address: mapping.expose_address,
                    pending,
                }))
            }
        }))
    }

    fn with_matches<R>(
        &self,
        req: &QueryRequest,
        f: impl FnOnce(&CompiledMapping, &str, &[Match<'_>]) -> R,
    ) -> Result<R, QueryError> {
        let (mapping, namespace) = self.mapping_for(req)?;
        let filters = Filters::new(mapping, req)?;
        let matches: Vec<Match<'_>> = match &mapping.source {
            Source::Allocate { .. } => {
                return Err(QueryError::new(
                    ErrorCode::Internal,
                    format!(
                        "resourceType `{}` allocates; it has no cache to pick from",
                        mapping.name
                    ),
                ));
            }
            Source::Static(candidates) => candidates
                .iter()
                .filter(|c| c.namespace == namespace)
                .filter(|c| filters.candidate(c))
                .filter_map(|c| Some((c, c.addr?)))
                .map(|(c, addr)| Match {
                    namespace: &c.namespace,
                    name: &c.name,
                    addr,
                    extra_ports: std::borrow::Cow::Borrowed(&c.extra_ports),
                    labels: &c.labels,
                    annotations: &c.annotations,
                })
                .collect(),
            Source::Kube { caches, address } => {
                let (objects, services) = synced_snapshots(caches, address, namespace)?;
                return Ok(f(
                    mapping,
                    namespace,
                    &self.cached_matches(&filters, address, namespace, &objects, &services),
                ));
            }
        };
        Ok(f(mapping, namespace, &matches))
    }

    /// The cached objects that pass the filters and have an address.
    fn cached_matches<'a>(
        &self,
        filters: &Filters<'_>,
        address: &'a AddressRule,
        namespace: &'a str,
        objects: &'a kube::Snapshot,
        services: &[Arc<kube::Object>],
    ) -> Vec<Match<'a>> {
        objects
            .candidates(&filters.req.label_selector)
            .filter(|o| filters.selectors(&o.labels, &o.annotations))
            .filter(|o| filters.cached_status(o))
            .filter_map(|o| {
                let (addr, extra_ports) = match address {
                    AddressRule::Direct => (o.addr, std::borrow::Cow::Borrowed(&o.extra_ports[..])),
                    AddressRule::Service {
                        label,
                        port_name,
                        ports,
                        ..
                    } => match kube::service_ports(&o.labels, label, port_name, ports, services) {
                        Some((addr, ports)) => (Some(addr), std::borrow::Cow::Owned(ports)),
                        None => (None, std::borrow::Cow::Owned(Vec::new())),
                    },
                };
                let Some(addr) = addr else {
                    // Matches but cannot be reached (not scheduled yet, no such port).
                    self.skipped.inc();
                    return None;
                };
                Some(Match {
                    namespace: o.namespace.as_deref().unwrap_or(namespace),
                    name: &o.name,
                    addr,
                    extra_ports,
                    labels: &o.labels,
                    annotations: &o.annotations,
                })
            })
            .collect()
    }
}

/// A namespace's cache snapshot and its Services (Service addressing), or `unavailable`
/// while either has not synced.
fn synced_snapshots(
    caches: &BTreeMap<String, kube::Watched>,
    address: &AddressRule,
    namespace: &str,
) -> Result<(Arc<kube::Snapshot>, Vec<Arc<kube::Object>>), QueryError> {
    let cache = caches.get(namespace).ok_or_else(|| {
        QueryError::new(
            ErrorCode::Internal,
            format!("no cache for namespace `{namespace}`"),
        )
    })?;
    if !cache.synced() {
        return Err(QueryError::new(
            ErrorCode::Unavailable,
            format!(
                "the cache of {} has not synced with the Kubernetes API yet",
                cache.what
            ),
        ));
    }
    let services = match address {
        AddressRule::Service { services, .. } => match services.get(namespace) {
            Some(svc) if svc.synced() => svc.objects(),
            Some(svc) => {
                return Err(QueryError::new(
                    ErrorCode::Unavailable,
                    format!("the cache of {} has not synced yet", svc.what),
                ));
            }
            None => Vec::new(),
        },
        AddressRule::Direct => Vec::new(),
    };
    Ok((cache.snapshot(), services))
}

/// A query's selectors and status query against a mapping, compiled once per query.
struct Filters<'a> {
    mapping: &'a CompiledMapping,
    req: &'a QueryRequest,
    status: Option<(CompiledPath, &'a crate::protocol::query::StatusQuery)>,
}

impl<'a> Filters<'a> {
    fn new(mapping: &'a CompiledMapping, req: &'a QueryRequest) -> Result<Self, QueryError> {
        let status = match &req.status_query {
            Some(q) => {
                let path = CompiledPath::compile(&q.json_path)
                    .map_err(|e| QueryError::new(ErrorCode::BadRequest, e.to_string()))?;
                if path.uses_regex() && !mapping.allow_regex {
                    return Err(QueryError::new(
                        ErrorCode::BadRequest,
                        format!(
                            "jsonPath may not use match() or search() on resourceType `{}` (the mapping does not set allowRegex)",
                            mapping.name
                        ),
                    ));
                }
                Some((path, q))
            }
            None => None,
        };
        Ok(Self {
            mapping,
            req,
            status,
        })
    }

    /// The mapping's fixed labels and the query's label and annotation selectors.
    fn selectors(&self, labels: &dyn lean::LabelSet, annotations: &dyn lean::LabelSet) -> bool {
        selector_matches(&self.mapping.fixed_labels, labels)
            && selector_matches(&self.req.label_selector, labels)
            && selector_matches(&self.req.annotation_selector, annotations)
    }

    /// A static endpoint: selectors and the status query on its whole object.
    fn candidate(&self, c: &Candidate) -> bool {
        self.selectors(&c.labels, &c.annotations)
            && match &self.status {
                Some((path, q)) => status_matches(&c.object, path, q.expected()),
                None => true,
            }
    }

    /// A cached object's status query: on its kept fields, or (`metadata.*`) on a view of
    /// its kept metadata.
    fn cached_status(&self, o: &kube::Object) -> bool {
        match &self.status {
            None => true,
            Some((path, q)) if path.prefix().first().is_some_and(|k| k == "metadata") => {
                status_matches(&o.metadata_view(), path, q.expected())
            }
            Some((path, q)) => o.data.path_matches(path, q.expected()),
        }
    }
}

fn no_match(mapping: &CompiledMapping, namespace: &str, nothing_matched: bool) -> QueryError {
    let why = if nothing_matched {
        "matches the query"
    } else {
        "has free capacity (labelArithmetic)"
    };
    QueryError::new(
        ErrorCode::NoMatch,
        format!("no {} in {namespace} {why}", mapping.name),
    )
}

/// `(current, max)` for `labelArithmetic`, read from a match's labels or annotations.
fn capacity_of(
    lb: &LoadBalancing,
    labels: &dyn lean::LabelSet,
    annotations: &dyn lean::LabelSet,
) -> Option<(u64, u64)> {
    match lb {
        LoadBalancing::LabelArithmetic {
            current_label,
            max_label,
            ..
        } => Some((
            select::label_number(labels, annotations, current_label)?,
            select::label_number(labels, annotations, max_label)?,
        )),
        _ => None,
    }
}

/// A data port's target port as a kube port rule, given the mapping's own.
fn port_rule(target: &config::TargetPort, own: &config::PortRule) -> config::PortRule {
    match target {
        config::TargetPort::Mapping => own.clone(),
        config::TargetPort::Name(n) => config::PortRule::Name(n.clone()),
        config::TargetPort::Fixed(p) => config::PortRule::Fixed(*p),
    }
}

/// A static endpoint's port for a data port: `ports` by name (or `default`, or the first,
/// for the mapping's own rule), else `port`.
fn static_port(ep: &config::StaticEndpoint, target: &config::TargetPort) -> Option<u16> {
    let named = |name: &str| ep.ports.iter().find(|p| p.name == name).map(|p| p.port);
    match target {
        config::TargetPort::Fixed(p) => Some(*p),
        config::TargetPort::Name(n) => named(n).or(ep.port),
        config::TargetPort::Mapping => ep
            .port
            .or_else(|| named("default"))
            .or_else(|| ep.ports.first().map(|p| p.port)),
    }
}

/// A Kubernetes mapping that picks from watch caches: one cache per allowed namespace
/// (filtered by the fixed selector on the API server too), and Service caches when targets
/// are addressed through a Service.
fn watched_source(
    m: &ValidMapping,
    k: &config::KubeSource,
    targets: &[config::TargetPort],
    watchers: &kube::Watchers,
) -> Source {
    let api = kube::api_resource(&k.group, &k.version, &k.resource, &k.kind);
    // The fixed selector is applied by the API server too: less to cache.
    let labels = m
        .fixed_labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let keep = match &k.address {
        Addressing::Direct { path, port } => {
            let rules: Vec<config::PortRule> = targets.iter().map(|t| port_rule(t, port)).collect();
            kube::Keep::direct(path, &rules, &k.cache_fields)
        }
        Addressing::Service { .. } => kube::Keep::with(&k.cache_fields),
    };
    let caches = m
        .allowed
        .iter()
        .map(|ns| (ns.clone(), watchers.watch(&api, ns, &labels, &keep)))
        .collect();
    let address = match &k.address {
        Addressing::Service { label, port_name } => AddressRule::Service {
            label: label.clone(),
            port_name: port_name.clone(),
            ports: targets.to_vec(),
            services: m
                .allowed
                .iter()
                .map(|ns| {
                    let keep = kube::Keep::services();
                    (ns.clone(), watchers.watch(&kube::services(), ns, "", &keep))
                })
                .collect(),
        },
        Addressing::Direct { .. } => AddressRule::Direct,
    };
    Source::Kube { caches, address }
}

fn compile(
    m: &ValidMapping,
    data_ports: &[config::ValidDataPort],
    token_ttl: std::time::Duration,
    watchers: &kube::Watchers,
) -> CompiledMapping {
    let targets: Vec<config::TargetPort> = data_ports.iter().map(|d| d.target.clone()).collect();
    let source = match (&m.source, &m.allocate) {
        (ValidSource::Kube(k), Some(spec)) => {
            let own = match &k.address {
                Addressing::Direct { port, .. } => port.clone(),
                // Validation allows only direct addressing with `allocate`.
                Addressing::Service { port_name, .. } => config::PortRule::Name(port_name.clone()),
            };
            Source::Allocate {
                spec: spec.clone(),
                ports: targets.iter().map(|t| port_rule(t, &own)).collect(),
                in_flight: Arc::new(tokio::sync::Semaphore::new(spec.max_in_flight)),
                client: watchers.client_cell(),
                budget: Arc::new(budget::Budget::new(
                    spec.rate_per_second,
                    spec.burst,
                    token_ttl,
                )),
            }
        }
        (ValidSource::Kube(k), None) => watched_source(m, k, &targets, watchers),
        // Validation sorted them by namespace/name: the order `first`, round-robin and ties use.
        (ValidSource::Static(endpoints), _) => Source::Static(
            endpoints
                .iter()
                .map(|ep| {
                    let ports: Option<Vec<u16>> =
                        targets.iter().map(|t| static_port(ep, t)).collect();
                    let (addr, extra) = match ports.as_deref() {
                        Some([first, rest @ ..]) => {
                            (Some(SocketAddr::new(ep.address, *first)), rest.to_vec())
                        }
                        _ => (None, Vec::new()),
                    };
                    Candidate::from_parts(
                        ep.namespace.as_deref().unwrap_or(&m.default_namespace),
                        &ep.name,
                        ep.labels.clone(),
                        ep.annotations.clone(),
                        ep.status.clone(),
                        addr,
                        extra,
                    )
                })
                .collect(),
        ),
    };
    CompiledMapping {
        name: m.name.clone(),
        allowed: m.allowed.clone(),
        default_namespace: m.default_namespace.clone(),
        fixed_labels: m.fixed_labels.clone(),
        expose_address: m.expose_address,
        allow_regex: m.allow_regex,
        proxy: m.proxy_protocol,
        load_balancing: m.load_balancing.clone(),
        round_robin: AtomicUsize::new(0),
        source,
    }
}

#[cfg(test)]
mod tests;
