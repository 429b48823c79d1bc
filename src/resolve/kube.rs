//! Kubernetes resource sources: watch-driven in-memory caches (kube-rs watcher + reflector)
//! for any resource through `DynamicObject` + `ApiResource`, so a CRD needs no Rust type.
//!
//! One watcher per distinct (resource, namespace, fixed label selector, what is kept), with
//! kube's default backoff. Caches are lean (SPEC §4): each object is reduced to an [`Object`]
//! before the reflector stores it: name, namespace, labels and annotations (no other
//! metadata), the target address read once by the mapping's rule, and in compact form
//! ([`super::lean`]) only the fields [`Keep`] names: `status`'s scalars, what the mapping's
//! paths reach and its `cacheFields`. Queries read the caches; nothing here is called per query except
//! [`Watched::snapshot`] / [`Watched::objects`] and the pure lookups.
//!
//! Owns the watch caches and address extraction. Must not choose targets or touch sessions.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures::{StreamExt, TryStreamExt};
use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::reflector::{self, Lookup, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use serde_json::{Value, json};

use super::lean::{LabelSet, Lean, Pairs, Strings};
use crate::k8s::{ClientCell, Connect};
use crate::protocol::jsonpath::CompiledPath;
use crate::protocol::jsonpath::value_text;
use crate::util::sync::lock;

/// What the API sends. No `DeserializeGuard`: a `DynamicObject` fails to decode only when
/// its metadata does, which fails the guard's fallback too, and the guard would buffer and
/// copy every object once more while decoding.
pub type Received = DynamicObject;

/// A cached object, reduced to what routing reads.
#[derive(Debug, Clone)]
pub struct Object {
    pub name: Box<str>,
    pub namespace: Option<Arc<str>>,
    pub labels: Pairs,
    pub annotations: Pairs,
    /// Direct addressing: the target read by the mapping's `addressPath` and port rule when
    /// the object was cached (`None`: not scheduled yet, no such port, or service-based).
    pub addr: Option<SocketAddr>,
    /// The ports of the data ports after the first (`dataPorts`), read with `addr`.
    pub extra_ports: Box<[u16]>,
    /// The kept fields ([`Keep`]), compact.
    pub data: Lean,
}

/// The reflector keys objects by name and namespace; the resource is the cache's, so no
/// per-object copy of it (`DynamicType = ()`), and no resourceVersion or uid is kept.
impl Lookup for Object {
    type DynamicType = ();

    fn kind(_: &()) -> std::borrow::Cow<'_, str> {
        "".into()
    }
    fn group(_: &()) -> std::borrow::Cow<'_, str> {
        "".into()
    }
    fn version(_: &()) -> std::borrow::Cow<'_, str> {
        "".into()
    }
    fn plural(_: &()) -> std::borrow::Cow<'_, str> {
        "".into()
    }
    fn name(&self) -> Option<std::borrow::Cow<'_, str>> {
        Some(std::borrow::Cow::Borrowed(&self.name))
    }
    fn namespace(&self) -> Option<std::borrow::Cow<'_, str>> {
        self.namespace.as_deref().map(std::borrow::Cow::Borrowed)
    }
    fn resource_version(&self) -> Option<std::borrow::Cow<'_, str>> {
        None
    }
    fn uid(&self) -> Option<std::borrow::Cow<'_, str>> {
        None
    }
}

impl Object {
    /// A `metadata.*` view for a status query that reads metadata.
    pub fn metadata_view(&self) -> Value {
        json!({"metadata": {
            "name": &*self.name,
            "namespace": self.namespace.as_deref(),
            "labels": self.labels.to_value(),
            "annotations": self.annotations.to_value(),
        }})
    }
}

/// One cache and whether it has completed its first full list.
#[derive(Clone)]
pub struct Watched {
    store: Store<Object>,
    synced: Arc<AtomicBool>,
    /// Bumped by the watch task after every event it applied.
    generation: Arc<AtomicU64>,
    /// The last snapshot and the generation it was built at.
    snapshot: Arc<Mutex<Option<Built>>>,
    pub what: String,
}

/// A snapshot and the cache generation it was built at.
type Built = (u64, Arc<Snapshot>);

/// The cache's objects at one moment, with a label index, shared by every query until the
/// next change. Built lazily by the first query after a change: O(objects) once, instead of
/// a full scan on every query.
pub struct Snapshot {
    objects: Vec<Arc<Object>>,
    by_label: HashMap<(String, String), Vec<u32>>,
}

impl Snapshot {
    fn build(objects: Vec<Arc<Object>>) -> Self {
        let mut by_label: HashMap<(String, String), Vec<u32>> = HashMap::new();
        for (i, o) in objects.iter().enumerate() {
            for (k, v) in o.labels.iter() {
                by_label
                    .entry((k.to_string(), v.to_string()))
                    .or_default()
                    .push(i as u32);
            }
        }
        Self { objects, by_label }
    }

    /// Objects that may satisfy `selector` (equality terms): the shortest posting list among
    /// its terms, or everything for an empty selector. Callers still apply every filter.
    pub fn candidates<'a>(
        &'a self,
        selector: &BTreeMap<String, String>,
    ) -> Box<dyn Iterator<Item = &'a Arc<Object>> + 'a> {
        let mut shortest: Option<&Vec<u32>> = None;
        for (k, v) in selector {
            match self.by_label.get(&(k.clone(), v.clone())) {
                None => return Box::new(std::iter::empty()),
                Some(list) if shortest.is_none_or(|s| list.len() < s.len()) => {
                    shortest = Some(list)
                }
                Some(_) => {}
            }
        }
        match shortest {
            Some(list) => Box::new(list.iter().filter_map(|i| self.objects.get(*i as usize))),
            None => Box::new(self.objects.iter()),
        }
    }

    pub fn len(&self) -> usize {
        self.objects.len()
    }

    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }
}

impl Watched {
    pub fn synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    /// Every cached object (cheap: `Arc` clones).
    pub fn objects(&self) -> Vec<Arc<Object>> {
        self.store.state()
    }

    /// The current snapshot, rebuilt only if the cache changed since the last one.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        let generation = self.generation.load(Ordering::Acquire);
        let mut slot = lock(&self.snapshot);
        if let Some((built_at, snap)) = slot.as_ref()
            && *built_at == generation
        {
            return Arc::clone(snap);
        }
        // Read after the generation: a change racing with this build only causes one more
        // rebuild later, never a stale snapshot tagged as current.
        let snap = Arc::new(Snapshot::build(self.store.state()));
        *slot = Some((generation, Arc::clone(&snap)));
        snap
    }

    /// Objects cached (the store's length under its read lock; no copy).
    pub fn len(&self) -> usize {
        self.store.len()
    }

    pub fn is_empty(&self) -> bool {
        self.store.is_empty()
    }

    /// Watch events applied so far: moves whenever the cache changes.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }
}

/// Starts and shares watchers; lives as long as the process.
pub struct Watchers {
    /// Watch-stream errors (outages), and matches skipped for lack of an address.
    pub errors: prometheus_client::metrics::counter::Counter,
    pub skipped: prometheus_client::metrics::counter::Counter,
    client: ClientCell,
    started: Mutex<HashMap<String, Watched>>,
    /// Keys and short strings shared by every cached object.
    strings: Arc<Strings>,
}

impl Watchers {
    /// `errors` and `skipped` are the counters to add to (e.g. the registered metrics).
    pub fn new(
        connect: Connect,
        errors: prometheus_client::metrics::counter::Counter,
        skipped: prometheus_client::metrics::counter::Counter,
    ) -> Self {
        Self {
            errors,
            skipped,
            client: ClientCell::new(connect),
            started: Mutex::new(HashMap::new()),
            strings: Arc::new(Strings::default()),
        }
    }

    /// The shared client as a handle that tries once per use (for requests with a deadline).
    pub fn client_cell(&self) -> ClientCell {
        self.client.clone()
    }

    /// The shared client, created on first use; retries with backoff until it can be built.
    pub async fn client(&self) -> Client {
        self.client.get_or_wait("config watch").await
    }

    /// The cache for `resource` in `namespace` filtered by `labels` (a Kubernetes label
    /// selector string, may be empty), starting its watcher on first use. Must be called
    /// inside a tokio runtime.
    pub fn watch(
        &self,
        resource: &ApiResource,
        namespace: &str,
        labels: &str,
        keep: &Keep,
    ) -> Watched {
        let key = format!(
            "{}/{}/{}|{namespace}|{labels}|{keep:?}",
            resource.group, resource.version, resource.plural
        );
        let mut started = lock(&self.started);
        if let Some(w) = started.get(&key) {
            return w.clone();
        }
        let writer = reflector::store::Writer::new(());
        let store = writer.as_reader();
        let what = format!(
            "{} in {namespace}{}",
            resource.plural,
            if labels.is_empty() {
                String::new()
            } else {
                format!(" ({labels})")
            }
        );
        let watched = Watched {
            store,
            synced: Arc::new(AtomicBool::new(false)),
            generation: Arc::new(AtomicU64::new(0)),
            snapshot: Arc::new(Mutex::new(None)),
            what: what.clone(),
        };
        let task = WatchTask {
            client: self.client.clone(),
            resource: resource.clone(),
            namespace: namespace.to_string(),
            labels: labels.to_string(),
            synced: Arc::clone(&watched.synced),
            generation: Arc::clone(&watched.generation),
            errors: self.errors.clone(),
            keep: keep.clone(),
            strings: Arc::clone(&self.strings),
            what,
        };
        tokio::spawn(task.run(writer));
        started.insert(key, watched.clone());
        watched
    }
}

struct WatchTask {
    client: ClientCell,
    resource: ApiResource,
    namespace: String,
    labels: String,
    synced: Arc<AtomicBool>,
    generation: Arc<AtomicU64>,
    errors: prometheus_client::metrics::counter::Counter,
    keep: Keep,
    strings: Arc<Strings>,
    what: String,
}

impl WatchTask {
    async fn run(self, writer: reflector::store::Writer<Object>) {
        let client = self.client.get_or_wait(&self.what).await;
        let api: Api<Received> = Api::namespaced_with(client, &self.namespace, &self.resource);
        // Pages of 100: a relist decodes one page at a time, and fewer objects decoded at once
        // leave the lean ones packed more densely once the page is freed.
        let mut config = watcher::Config::default().page_size(100);
        if !self.labels.is_empty() {
            config = config.labels(&self.labels);
        }
        let (keep, strings) = (self.keep.clone(), Arc::clone(&self.strings));
        let stream = watcher(api, config)
            .default_backoff()
            .map_ok(move |event| lean_event(event, &keep, &strings));
        let stream = reflector::reflector(writer, stream);
        let mut stream = std::pin::pin!(stream);
        let mut failing = false;
        while let Some(event) = stream.next().await {
            if event.is_ok() {
                // The reflector has applied it: snapshots built before are stale now.
                self.generation.fetch_add(1, Ordering::AcqRel);
            }
            match event {
                Ok(watcher::Event::InitDone) => {
                    // A (re)list decoded every page of the collection whole; what the lean
                    // objects did not keep is free now: hand it back to the kernel.
                    tokio::task::spawn_blocking(crate::util::memory::release_free_memory);
                    if !self.synced.swap(true, Ordering::AcqRel) {
                        tracing::info!(cache = %self.what, "resource cache synced");
                    } else if failing {
                        tracing::info!(cache = %self.what, "resource watch resumed (relisted)");
                    }
                    failing = false;
                }
                Ok(_) => {
                    if failing {
                        tracing::info!(cache = %self.what, "resource watch resumed");
                        failing = false;
                    }
                }
                Err(e) => {
                    self.errors.inc();
                    // The backoff spaces these out; the cache keeps serving its last state.
                    if !failing {
                        tracing::warn!(cache = %self.what, error = %e, "resource watch failing; serving the last known state");
                    }
                    failing = true;
                }
            }
        }
    }
}

/// What a cache keeps of each object besides its name, namespace, labels and annotations,
/// and how it reads the target address: computed from a mapping (SPEC §4, "cached objects
/// keep only what routing reads").
///
/// Kept: every non-null scalar directly under `status` (`state`, `address`, `podIP`, `phase`, …),
/// the subtrees the mapping's `addressPath`/`portPath` reach, `status.ports` for `portName`,
/// and the mapping's `cacheFields`. A status query on anything else (`status.lists`, `spec.*`
/// unless listed in `cacheFields`) sees nothing there and does not match; `metadata.*` is
/// answered from the kept name, namespace, labels and annotations.
#[derive(Debug, Clone, Default)]
pub struct Keep {
    /// Key paths kept whole, none under another.
    paths: BTreeSet<Vec<String>>,
    /// The scalars directly under `status`.
    status_scalars: bool,
    /// The whole object: some path can reach anywhere (`$..x`).
    everything: bool,
    /// Direct addressing: how the target address is read when an object is cached, with a
    /// port rule per data port.
    address: Option<(CompiledPath, Vec<PortRule>)>,
}

impl Keep {
    /// Direct addressing by `address` and a port rule per data port, keeping what `extra`
    /// paths reach.
    pub fn direct<'a>(
        address: &CompiledPath,
        ports: &[PortRule],
        extra: impl IntoIterator<Item = &'a CompiledPath>,
    ) -> Self {
        let mut keep = Self::with(extra);
        keep.add_path(address);
        for port in ports {
            match port {
                PortRule::Path(p) => keep.add_path(p),
                PortRule::Name(_) => keep.add(vec!["status".to_string(), "ports".to_string()]),
                PortRule::Fixed(_) => {}
            }
        }
        keep.address = Some((address.clone(), ports.to_vec()));
        keep
    }

    /// `status`'s scalars and what `paths` reach (service-based addressing reads labels only).
    pub fn with<'a>(paths: impl IntoIterator<Item = &'a CompiledPath>) -> Self {
        let mut keep = Self {
            status_scalars: true,
            ..Self::default()
        };
        for path in paths {
            keep.add_path(path);
        }
        keep
    }

    /// What a Service cache keeps: its ClusterIP and ports.
    pub fn services() -> Self {
        let mut keep = Self::default();
        keep.add(vec!["spec".to_string(), "clusterIP".to_string()]);
        keep.add(vec!["spec".to_string(), "ports".to_string()]);
        keep
    }

    fn add_path(&mut self, path: &CompiledPath) {
        match path.prefix() {
            [] => self.everything = true,
            // Answered from the kept metadata.
            [first, ..] if first == "metadata" => {}
            prefix => self.add(prefix.to_vec()),
        }
    }

    fn add(&mut self, path: Vec<String>) {
        if self.paths.iter().any(|p| path.starts_with(p)) {
            return;
        }
        self.paths.retain(|p| !p.starts_with(&path));
        self.paths.insert(path);
    }

    /// The kept part of `data` (moved out of it, not copied).
    fn prune(&self, data: &mut Value) -> Value {
        if self.everything {
            return std::mem::take(data);
        }
        let mut out = serde_json::Map::new();
        if self.status_scalars
            && let Some(Value::Object(status)) = data.get("status")
        {
            let scalars: serde_json::Map<String, Value> = status
                .iter()
                // A null matches nothing, like an absent field: not kept.
                .filter(|(_, v)| !(v.is_object() || v.is_array() || v.is_null()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            out.insert("status".to_string(), Value::Object(scalars));
        }
        for path in &self.paths {
            let pointer: String = path.iter().map(|k| format!("/{}", escape(k))).collect();
            if let Some(value) = data.pointer_mut(&pointer).map(Value::take) {
                put(&mut out, path, value);
            }
        }
        Value::Object(out)
    }
}

/// A key as a JSON pointer segment.
fn escape(key: &str) -> Cow<'_, str> {
    if key.contains(['~', '/']) {
        Cow::Owned(key.replace('~', "~0").replace('/', "~1"))
    } else {
        Cow::Borrowed(key)
    }
}

/// Inserts `value` at `path` under `map`, creating objects on the way (over a scalar kept
/// from `status` when a deeper path under it is kept too).
fn put(map: &mut serde_json::Map<String, Value>, path: &[String], value: Value) {
    match path {
        [] => {}
        [last] => {
            map.insert(last.clone(), value);
        }
        [first, rest @ ..] => {
            let next = map
                .entry(first.clone())
                .or_insert_with(|| Value::Object(serde_json::Map::new()));
            if !next.is_object() {
                *next = Value::Object(serde_json::Map::new());
            }
            if let Value::Object(inner) = next {
                put(inner, rest, value);
            }
        }
    }
}

/// Reduces every object of a watch event to its lean form.
fn lean_event(
    event: watcher::Event<Received>,
    keep: &Keep,
    strings: &Strings,
) -> watcher::Event<Object> {
    let lean = |o: Received| lean_object(o, keep, strings);
    match event {
        watcher::Event::Apply(o) => watcher::Event::Apply(lean(o)),
        watcher::Event::Delete(o) => watcher::Event::Delete(lean(o)),
        watcher::Event::InitApply(o) => watcher::Event::InitApply(lean(o)),
        watcher::Event::Init => watcher::Event::Init,
        watcher::Event::InitDone => watcher::Event::InitDone,
    }
}

/// The lean form of one received object: the address read from the whole object first, then
/// only what `keep` names. kubectl's last-applied copy is never kept.
pub fn lean_object(received: Received, keep: &Keep, strings: &Strings) -> Object {
    let DynamicObject { metadata, data, .. } = received;
    let mut data = data;
    let mut annotations = metadata.annotations.unwrap_or_default();
    annotations.remove("kubectl.kubernetes.io/last-applied-configuration");
    let labels = metadata.labels.unwrap_or_default();
    let addrs = keep.address.as_ref().and_then(|(path, ports)| {
        let reads_metadata = |p: &CompiledPath| p.prefix().first().is_some_and(|k| k == "metadata");
        let port_reads_metadata = ports
            .iter()
            .any(|port| matches!(port, PortRule::Path(p) if reads_metadata(p)));
        let view;
        let object = if reads_metadata(path) || port_reads_metadata {
            let mut v = data.clone();
            if let Value::Object(map) = &mut v {
                map.insert(
                    "metadata".to_string(),
                    json!({"name": metadata.name, "namespace": metadata.namespace,
                        "labels": labels, "annotations": annotations}),
                );
            }
            view = v;
            &view
        } else {
            &data
        };
        // Every data port's port, or none: a target must serve them all.
        let all: Option<Vec<SocketAddr>> = ports
            .iter()
            .map(|port| direct_address(object, path, port))
            .collect();
        all
    });
    let (addr, extra_ports) = match addrs.as_deref() {
        Some([first, rest @ ..]) => (
            Some(*first),
            rest.iter().map(SocketAddr::port).collect::<Box<[u16]>>(),
        ),
        _ => (None, Box::default()),
    };
    let kept = keep.prune(&mut data);
    Object {
        name: metadata.name.unwrap_or_default().into(),
        namespace: metadata.namespace.as_deref().map(|n| strings.get(n)),
        labels: Pairs::from_map(labels, strings),
        annotations: Pairs::from_map(annotations, strings),
        addr,
        extra_ports,
        data: Lean::from_value(kept, strings),
    }
}

/// The `ApiResource` of a mapping (`group` "" is the core group).
pub fn api_resource(group: &str, version: &str, resource: &str, kind: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), resource)
}

/// Services, for service-based addressing.
pub fn services() -> ApiResource {
    api_resource("", "v1", "services", "Service")
}

pub use crate::config::PortRule;

/// The first scalar `path` selects, as text.
fn first_text(object: &Value, path: &CompiledPath) -> Option<String> {
    path.values(object)
        .into_iter()
        .find_map(|v| value_text(v).map(|t| t.into_owned()))
}

/// Direct addressing: an IP at `address_path` and a port by `port`. `None` when the object
/// has no usable address (not yet scheduled, a hostname, a missing port).
pub fn direct_address(
    object: &Value,
    address_path: &CompiledPath,
    port: &PortRule,
) -> Option<SocketAddr> {
    let ip: IpAddr = first_text(object, address_path)?.trim().parse().ok()?;
    let port = match port {
        PortRule::Fixed(p) => *p,
        PortRule::Path(path) => first_text(object, path)?.trim().parse().ok()?,
        PortRule::Name(name) => named_port(object, name)?,
    };
    (port != 0).then(|| SocketAddr::new(ip.to_canonical(), port))
}

fn named_port(object: &Value, name: &str) -> Option<u16> {
    let by_name = |list: &Value, port_key: &str| -> Option<u16> {
        list.as_array()?
            .iter()
            .find(|p| p.get("name").and_then(Value::as_str) == Some(name))?
            .get(port_key)?
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
    };
    // Agones GameServer: status.ports[] {name, port}.
    if let Some(p) = object
        .pointer("/status/ports")
        .and_then(|l| by_name(l, "port"))
    {
        return Some(p);
    }
    // Pod: spec.containers[].ports[] {name, containerPort}.
    object
        .pointer("/spec/containers")?
        .as_array()?
        .iter()
        .find_map(|c| c.get("ports").and_then(|l| by_name(l, "containerPort")))
}

/// Service-based addressing: the Service whose `label` equals the object's, its ClusterIP,
/// the port of each data port (`Mapping`: the port named `port_name`; a name: that Service
/// port; fixed: as is). The first is the target address, the rest its extra ports.
pub fn service_ports(
    object_labels: &dyn LabelSet,
    label: &str,
    port_name: &str,
    ports: &[crate::config::TargetPort],
    services: &[Arc<Object>],
) -> Option<(SocketAddr, Vec<u16>)> {
    use crate::config::TargetPort;
    let wanted = object_labels.label(label)?;
    services.iter().find_map(|svc| {
        if svc.labels.label(label) != Some(wanted) {
            return None;
        }
        let ip: IpAddr = svc
            .data
            .walk(&["spec", "clusterIP"])?
            .as_str()?
            .parse()
            .ok()?;
        let named = |name: &str| {
            svc.data
                .walk(&["spec", "ports"])?
                .as_array()?
                .iter()
                .find(|p| p.get("name").and_then(Lean::as_str) == Some(name))?
                .get("port")?
                .as_u64()
                .and_then(|p| u16::try_from(p).ok())
        };
        let numbers: Option<Vec<u16>> = ports
            .iter()
            .map(|t| match t {
                TargetPort::Mapping => named(port_name),
                TargetPort::Name(n) => named(n),
                TargetPort::Fixed(p) => Some(*p),
            })
            .collect();
        let numbers = numbers?;
        let (first, rest) = numbers.split_first()?;
        Some((SocketAddr::new(ip.to_canonical(), *first), rest.to_vec()))
    })
}

/// [`service_ports`] for the one-port form.
pub fn service_address(
    object_labels: &dyn LabelSet,
    label: &str,
    port_name: &str,
    services: &[Arc<Object>],
) -> Option<SocketAddr> {
    service_ports(
        object_labels,
        label,
        port_name,
        &[crate::config::TargetPort::Mapping],
        services,
    )
    .map(|(addr, _)| addr)
}

#[cfg(test)]
#[path = "kube_tests.rs"]
mod tests;
