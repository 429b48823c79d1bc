//! Kubernetes resource sources: watch-driven in-memory caches (kube-rs watcher + reflector)
//! for any resource through `DynamicObject` + `ApiResource`, so a CRD needs no Rust type.
//!
//! One watcher per distinct (resource, namespace, fixed label selector), with kube's default
//! backoff; `managedFields` are dropped before caching and the object's metadata is copied
//! into its JSON so status queries and address paths see the whole object. Objects that do
//! not deserialize are held as `DeserializeGuard` errors and skipped, so one malformed object
//! cannot stop a stream. Queries read the caches; nothing here is called per query except
//! [`Watched::objects`] and the pure extraction functions.
//!
//! Owns the watch caches and address extraction. Must not choose targets or touch sessions.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use kube::core::{ApiResource, DeserializeGuard, DynamicObject, GroupVersionKind};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use serde_json::{Value, json};
use tokio::sync::OnceCell;

use crate::protocol::jsonpath::CompiledPath;
use crate::resolve::select::value_text;
use crate::sync::lock;

/// A cached object: the object or why it did not deserialize.
pub type Cached = DeserializeGuard<DynamicObject>;

/// How to reach the API server.
#[derive(Debug, Clone, Default)]
pub enum Connect {
    /// In-cluster config or `KUBECONFIG` / `~/.kube/config` (kube's inference).
    #[default]
    Infer,
    /// A specific kubeconfig file.
    Kubeconfig(PathBuf),
}

/// One cache and whether it has completed its first full list.
#[derive(Clone)]
pub struct Watched {
    store: Store<Cached>,
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
    objects: Vec<Arc<Cached>>,
    by_label: HashMap<(String, String), Vec<u32>>,
}

impl Snapshot {
    fn build(objects: Vec<Arc<Cached>>) -> Self {
        let mut by_label: HashMap<(String, String), Vec<u32>> = HashMap::new();
        for (i, o) in objects.iter().enumerate() {
            if let Ok(o) = &o.0 {
                for (k, v) in o.metadata.labels.iter().flatten() {
                    by_label
                        .entry((k.clone(), v.clone()))
                        .or_default()
                        .push(i as u32);
                }
            }
        }
        Self { objects, by_label }
    }

    /// Objects that may satisfy `selector` (equality terms): the shortest posting list among
    /// its terms, or everything for an empty selector. Callers still apply every filter.
    pub fn candidates<'a>(
        &'a self,
        selector: &BTreeMap<String, String>,
    ) -> Box<dyn Iterator<Item = &'a Arc<Cached>> + 'a> {
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
    pub fn objects(&self) -> Vec<Arc<Cached>> {
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
    connect: Connect,
    /// Watch-stream errors (outages), and matches skipped for lack of an address.
    pub errors: prometheus_client::metrics::counter::Counter,
    pub skipped: prometheus_client::metrics::counter::Counter,
    client: Arc<OnceCell<Client>>,
    started: Mutex<HashMap<String, Watched>>,
}

impl Watchers {
    /// `errors` and `skipped` are the counters to add to (e.g. the registered metrics).
    pub fn new(
        connect: Connect,
        errors: prometheus_client::metrics::counter::Counter,
        skipped: prometheus_client::metrics::counter::Counter,
    ) -> Self {
        Self {
            connect,
            errors,
            skipped,
            client: Arc::new(OnceCell::new()),
            started: Mutex::new(HashMap::new()),
        }
    }

    /// The shared client, created on first use; retries with backoff until it can be built.
    pub async fn client(&self) -> Client {
        client_with_retry(&self.client, &self.connect, "config watch").await
    }

    /// The cache for `resource` in `namespace` filtered by `labels` (a Kubernetes label
    /// selector string, may be empty), starting its watcher on first use. Must be called
    /// inside a tokio runtime.
    pub fn watch(&self, resource: &ApiResource, namespace: &str, labels: &str) -> Watched {
        let key = format!(
            "{}/{}/{}|{namespace}|{labels}",
            resource.group, resource.version, resource.plural
        );
        let mut started = lock(&self.started);
        if let Some(w) = started.get(&key) {
            return w.clone();
        }
        let writer = reflector::store::Writer::new(resource.clone());
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
            connect: self.connect.clone(),
            client: Arc::clone(&self.client),
            resource: resource.clone(),
            namespace: namespace.to_string(),
            labels: labels.to_string(),
            synced: Arc::clone(&watched.synced),
            generation: Arc::clone(&watched.generation),
            errors: self.errors.clone(),
            what,
        };
        tokio::spawn(task.run(writer));
        started.insert(key, watched.clone());
        watched
    }
}

struct WatchTask {
    connect: Connect,
    client: Arc<OnceCell<Client>>,
    resource: ApiResource,
    namespace: String,
    labels: String,
    synced: Arc<AtomicBool>,
    generation: Arc<AtomicU64>,
    errors: prometheus_client::metrics::counter::Counter,
    what: String,
}

impl WatchTask {
    async fn run(self, writer: reflector::store::Writer<Cached>) {
        let client = self.client_with_retry().await;
        let api: Api<Cached> = Api::namespaced_with(client, &self.namespace, &self.resource);
        let mut config = watcher::Config::default();
        if !self.labels.is_empty() {
            config = config.labels(&self.labels);
        }
        let stream = watcher(api, config)
            .default_backoff()
            .modify(prepare)
            .reflect(writer);
        let mut stream = std::pin::pin!(stream);
        let mut failing = false;
        while let Some(event) = stream.next().await {
            if event.is_ok() {
                // The reflector has applied it: snapshots built before are stale now.
                self.generation.fetch_add(1, Ordering::AcqRel);
            }
            match event {
                Ok(watcher::Event::InitDone) => {
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

    async fn client_with_retry(&self) -> Client {
        client_with_retry(&self.client, &self.connect, &self.what).await
    }
}

async fn client_with_retry(cell: &OnceCell<Client>, connect: &Connect, what: &str) -> Client {
    let mut delay = Duration::from_millis(250);
    loop {
        let connect = connect.clone();
        match cell
            .get_or_try_init(|| async move { make_client(&connect).await })
            .await
        {
            Ok(client) => return client.clone(),
            Err(e) => {
                tracing::warn!(cache = %what, error = %e, "no Kubernetes client yet; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(10));
            }
        }
    }
}

/// A client for `connect` (kubeconfig file, in-cluster config or `KUBECONFIG`).
pub async fn make_client(connect: &Connect) -> Result<Client, String> {
    let config = match connect {
        Connect::Infer => kube::Config::infer().await.map_err(|e| e.to_string())?,
        Connect::Kubeconfig(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
                .await
                .map_err(|e| format!("{}: {e}", path.display()))?
        }
    };
    Client::try_from(config).map_err(|e| e.to_string())
}

/// Drops `managedFields` and kubectl's last-applied copy of the object (often most of its
/// size, never useful for routing), and copies metadata into the object's JSON (`data`), so
/// JSONPath sees `metadata.*` as well as `spec`/`status`.
fn prepare(obj: &mut Cached) {
    if let Ok(o) = &mut obj.0 {
        o.metadata.managed_fields = None;
        if let Some(a) = &mut o.metadata.annotations {
            a.remove("kubectl.kubernetes.io/last-applied-configuration");
        }
        let meta = json!({
            "name": o.metadata.name,
            "namespace": o.metadata.namespace,
            "labels": o.metadata.labels,
            "annotations": o.metadata.annotations,
        });
        if let Value::Object(map) = &mut o.data {
            map.insert("metadata".to_string(), meta);
        }
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

/// Service-based addressing: the Service whose `label` equals the object's, its ClusterIP and
/// the port named `port_name`.
pub fn service_address(
    object_labels: &BTreeMap<String, String>,
    label: &str,
    port_name: &str,
    services: &[Arc<Cached>],
) -> Option<SocketAddr> {
    let wanted = object_labels.get(label)?;
    services.iter().find_map(|svc| {
        let svc = svc.0.as_ref().ok()?;
        if svc.metadata.labels.as_ref()?.get(label) != Some(wanted) {
            return None;
        }
        let ip: IpAddr = svc
            .data
            .pointer("/spec/clusterIP")?
            .as_str()?
            .parse()
            .ok()?;
        let port = svc
            .data
            .pointer("/spec/ports")?
            .as_array()?
            .iter()
            .find(|p| p.get("name").and_then(Value::as_str) == Some(port_name))?
            .get("port")?
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())?;
        Some(SocketAddr::new(ip.to_canonical(), port))
    })
}

#[cfg(test)]
#[path = "kube_tests.rs"]
mod tests;
