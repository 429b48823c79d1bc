//! An in-process HTTP server speaking the Kubernetes list/watch wire format, so the real kube
//! `Client` (pointed at it by a kubeconfig) runs its production code path against it.
//!
//! Supports `GET /api/v1/namespaces/{ns}/{plural}` and
//! `GET /apis/{group}/{version}/namespaces/{ns}/{plural}`, as a LIST (`…List` JSON with
//! `metadata.resourceVersion`, paginated by `limit`/`continue`) or, with `watch=true`, a chunked stream of
//! `{"type":…,"object":…}` lines: ADDED/MODIFIED/DELETED after the requested
//! resourceVersion, BOOKMARKs every 500 ms, and a 410 `ERROR` event when the requested
//! version has been compacted away. `labelSelector` equality terms and `fieldSelector`
//! `metadata.name`/`metadata.namespace` terms are honoured; `…/{plural}/{name}` is a GET of one
//! object (404 `Status` when absent). `POST …/allocation.agones.dev/v1/namespaces/{ns}/
//! gameserverallocations` allocates a stored GameServer the way Agones does (see
//! [`allocation`]).
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};

#[derive(Default)]
struct Store {
    rv: u64,
    /// (collection, namespace, name) → object
    objects: BTreeMap<(String, String, String), Value>,
    /// (rv, collection, namespace, type, object)
    log: Vec<(u64, String, String, &'static str, Value)>,
    /// Watches asking for a version below this get 410 Gone.
    compacted_below: u64,
    lists: HashMap<String, usize>,
    watches: HashMap<String, usize>,
    /// Answer every request with junk (see [`FakeKube::set_garbage`]).
    garbage: bool,
    /// Allocation requests received, and how the fake answers them.
    allocations: usize,
    allocation_delay: Duration,
    allocation_failure: Option<u16>,
}

pub struct FakeKube {
    pub addr: SocketAddr,
    store: Arc<Mutex<Store>>,
    /// Bumped to end every open watch stream.
    epoch: watch::Sender<u64>,
    /// The serving task, and what tells it to stop (gracefully: see [`FakeKube::stop`]).
    server: Mutex<Option<Serving>>,
}

/// A serving task and the sender that stops it gracefully.
type Serving = (
    tokio::task::JoinHandle<()>,
    tokio::sync::oneshot::Sender<()>,
);

/// `/apis/agones.dev/v1` + `gameservers` style collection key.
pub fn collection(api_version: &str, plural: &str) -> String {
    if api_version.contains('/') {
        format!("/apis/{api_version}/{plural}")
    } else {
        format!("/api/{api_version}/{plural}")
    }
}

impl FakeKube {
    pub async fn start() -> Arc<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (epoch, _) = watch::channel(0);
        let fake = Arc::new(Self {
            addr,
            store: Arc::new(Mutex::new(Store {
                rv: 100,
                ..Store::default()
            })),
            epoch,
            server: Mutex::new(None),
        });
        fake.serve(listener);
        fake
    }

    fn serve(self: &Arc<Self>, listener: tokio::net::TcpListener) {
        let app = Router::new().fallback(handle).with_state(Arc::clone(self));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await;
        });
        *self.server.lock().unwrap() = Some((task, stop));
    }

    /// Stops answering, as a server that is gone: the listener closes, open watches end and
    /// every connection closes (idle keep-alive ones at once) before this returns, so a
    /// client's next request cannot reach a connection that was still being served.
    pub async fn stop(&self) {
        let server = self.server.lock().unwrap().take();
        self.cut_watches();
        let Some((mut task, stop)) = server else {
            return;
        };
        let _ = stop.send(());
        // A request held back (`set_allocation_delay`) finishes first; past 5 s, cut it.
        if tokio::time::timeout(Duration::from_secs(5), &mut task)
            .await
            .is_err()
        {
            task.abort();
        }
    }

    /// Listens again on the same port.
    pub async fn restart(self: &Arc<Self>) {
        let listener = loop {
            match tokio::net::TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        self.serve(listener);
    }

    /// Ends every open watch stream (clients resume with their last resourceVersion).
    pub fn cut_watches(&self) {
        self.epoch.send_modify(|e| *e += 1);
    }

    /// While on, lists answer 200 with an HTML body, watches stream lines that are not JSON,
    /// and single GETs answer 500 with a body that is not a Status.
    pub fn set_garbage(&self, on: bool) {
        self.store.lock().unwrap().garbage = on;
        self.cut_watches();
    }

    /// Forgets history: resuming watches get 410 Gone and must relist.
    pub fn compact(&self) {
        let mut s = self.store.lock().unwrap();
        s.compacted_below = s.rv + 1;
        s.log.clear();
    }

    /// Creates or replaces an object (ADDED / MODIFIED).
    pub fn apply(&self, plural: &str, mut object: Value) {
        let mut s = self.store.lock().unwrap();
        s.rv += 1;
        let rv = s.rv;
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        let api_version = object["apiVersion"].as_str().unwrap().to_string();
        let key = (
            collection(&api_version, plural),
            object["metadata"]["namespace"]
                .as_str()
                .unwrap()
                .to_string(),
            object["metadata"]["name"].as_str().unwrap().to_string(),
        );
        let kind = if s.objects.contains_key(&key) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        s.objects.insert(key.clone(), object.clone());
        s.log.push((rv, key.0, key.1, kind, object));
        drop(s);
        self.cut_nothing();
    }

    /// Deletes an object (DELETED).
    pub fn delete(&self, api_version: &str, plural: &str, namespace: &str, name: &str) {
        let mut s = self.store.lock().unwrap();
        let key = (
            collection(api_version, plural),
            namespace.to_string(),
            name.to_string(),
        );
        if let Some(mut object) = s.objects.remove(&key) {
            s.rv += 1;
            let rv = s.rv;
            object["metadata"]["resourceVersion"] = json!(rv.to_string());
            s.log.push((rv, key.0, key.1, "DELETED", object));
        }
        drop(s);
        self.cut_nothing();
    }

    /// Wakes watch streams so they send new events.
    fn cut_nothing(&self) {
        self.epoch.send_modify(|_| {});
    }

    /// Allocation requests received so far.
    pub fn allocations(&self) -> usize {
        self.store.lock().unwrap().allocations
    }

    /// Holds every allocation answer back this long (a slow or black-holed API server).
    pub fn set_allocation_delay(&self, delay: Duration) {
        self.store.lock().unwrap().allocation_delay = delay;
    }

    /// Answers allocations with this HTTP status and a `Status` body (`None`: allocate).
    pub fn set_allocation_failure(&self, code: Option<u16>) {
        self.store.lock().unwrap().allocation_failure = code;
    }

    /// The stored object, if any.
    pub fn get(
        &self,
        api_version: &str,
        plural: &str,
        namespace: &str,
        name: &str,
    ) -> Option<Value> {
        let s = self.store.lock().unwrap();
        s.objects
            .get(&(
                collection(api_version, plural),
                namespace.to_string(),
                name.to_string(),
            ))
            .cloned()
    }

    /// LIST requests served for a collection.
    pub fn lists(&self, api_version: &str, plural: &str) -> usize {
        let s = self.store.lock().unwrap();
        s.lists
            .get(&collection(api_version, plural))
            .copied()
            .unwrap_or(0)
    }

    pub fn watches(&self, api_version: &str, plural: &str) -> usize {
        let s = self.store.lock().unwrap();
        s.watches
            .get(&collection(api_version, plural))
            .copied()
            .unwrap_or(0)
    }

    /// A kubeconfig file pointing at this server.
    pub fn kubeconfig(&self, dir: &std::path::Path) -> std::path::PathBuf {
        let path = dir.join("kubeconfig");
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://{}\nusers:\n- name: fake\n  user:\n    token: fake\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: default\ncurrent-context: fake\n",
                self.addr
            ),
        )
        .unwrap();
        path
    }
}

fn selector_matches(selector: &str, object: &Value) -> bool {
    selector.split(',').filter(|t| !t.is_empty()).all(|term| {
        let (k, v) = term.split_once('=').unwrap_or((term, ""));
        let v = v.trim_start_matches('=');
        object["metadata"]["labels"][k].as_str() == Some(v)
    })
}

/// `fieldSelector` terms the fake honours: `metadata.name=X` and `metadata.namespace=X`.
fn fields_match(selector: &str, object: &Value) -> bool {
    selector.split(',').filter(|t| !t.is_empty()).all(|term| {
        let (k, v) = term.split_once('=').unwrap_or((term, ""));
        let v = v.trim_start_matches('=');
        match k {
            "metadata.name" => object["metadata"]["name"].as_str() == Some(v),
            "metadata.namespace" => object["metadata"]["namespace"].as_str() == Some(v),
            _ => true,
        }
    })
}

/// Splits a request path into (collection, namespace, api_version, plural, name of a single
/// object GET).
fn parse_path(path: &str) -> Option<(String, String, String, String, Option<String>)> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (api_version, rest) = match parts.as_slice() {
        ["api", v, rest @ ..] => (v.to_string(), rest),
        ["apis", g, v, rest @ ..] => (format!("{g}/{v}"), rest),
        _ => return None,
    };
    match rest {
        ["namespaces", ns, plural] => Some((
            collection(&api_version, plural),
            ns.to_string(),
            api_version,
            plural.to_string(),
            None,
        )),
        ["namespaces", ns, plural, name] => Some((
            collection(&api_version, plural),
            ns.to_string(),
            api_version,
            plural.to_string(),
            Some(name.to_string()),
        )),
        _ => None,
    }
}

async fn handle(
    State(fake): State<Arc<FakeKube>>,
    method: Method,
    uri: Uri,
    Query(q): Query<HashMap<String, String>>,
    body: Bytes,
) -> Response {
    let Some((coll, ns, api_version, plural, single)) = parse_path(uri.path()) else {
        return (StatusCode::NOT_FOUND, "not found").into_response();
    };
    if method == Method::POST {
        if api_version != ALLOCATION_API || plural != "gameserverallocations" || single.is_some() {
            return status(
                405,
                "MethodNotAllowed",
                "the fake API server only creates GameServerAllocations",
            );
        }
        return allocation(&fake, &ns, &body).await;
    }
    if fake.store.lock().unwrap().garbage {
        let watch = matches!(q.get("watch").map(String::as_str), Some("true" | "1"));
        return if watch {
            (
                StatusCode::OK,
                [("content-type", "application/json")],
                "{\"type\":\"ADDED\",\"object\":42}\nnot json at all\n\u{0}\u{1}\n{\"type\":\"MODIFIED\"",
            )
                .into_response()
        } else if single.is_some() {
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "<html>upstream crashed</html>",
            )
                .into_response()
        } else {
            (
                StatusCode::OK,
                [("content-type", "application/json")],
                "<html><body>502 Bad Gateway</body></html>",
            )
                .into_response()
        };
    }
    if let Some(name) = single {
        let s = fake.store.lock().unwrap();
        return match s.objects.get(&(coll, ns, name.clone())) {
            Some(o) => (
                StatusCode::OK,
                [("content-type", "application/json")],
                o.to_string(),
            )
                .into_response(),
            None => (
                StatusCode::NOT_FOUND,
                [("content-type", "application/json")],
                json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                    "reason": "NotFound", "code": 404, "message": format!("{plural} {name:?} not found")})
                .to_string(),
            )
                .into_response(),
        };
    }
    let labels = q.get("labelSelector").cloned().unwrap_or_default();
    let fields = q.get("fieldSelector").cloned().unwrap_or_default();
    let selector_matches =
        move |_: &str, o: &Value| selector_matches(&labels, o) && fields_match(&fields, o);
    let selector = String::new();
    let is_watch = matches!(q.get("watch").map(String::as_str), Some("true" | "1"));
    if !is_watch {
        let mut s = fake.store.lock().unwrap();
        *s.lists.entry(coll.clone()).or_default() += 1;
        // Paginated as the API server does: `limit` items from the `continue` token on (here
        // the index of the next item), `metadata.continue` while more remain.
        let limit: usize = q
            .get("limit")
            .and_then(|v| v.parse().ok())
            .filter(|l| *l > 0)
            .unwrap_or(usize::MAX);
        let skip: usize = q.get("continue").and_then(|v| v.parse().ok()).unwrap_or(0);
        let mut matching = s
            .objects
            .iter()
            .filter(|((c, n, _), o)| *c == coll && *n == ns && selector_matches(&selector, o))
            .skip(skip);
        let items: Vec<Value> = matching
            .by_ref()
            .take(limit)
            .map(|(_, o)| o.clone())
            .collect();
        let mut metadata = json!({"resourceVersion": s.rv.to_string()});
        if matching.next().is_some() {
            metadata["continue"] = json!((skip + items.len()).to_string());
        }
        let body = json!({
            "apiVersion": api_version,
            "kind": "List",
            "metadata": metadata,
            "items": items,
        });
        return (
            StatusCode::OK,
            [("content-type", "application/json")],
            body.to_string(),
        )
            .into_response();
    }
    let from: u64 = q
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let timeout = q
        .get("timeoutSeconds")
        .and_then(|v| v.parse().ok())
        .unwrap_or(290u64);
    *fake
        .store
        .lock()
        .unwrap()
        .watches
        .entry(coll.clone())
        .or_default() += 1;
    let (tx, rx) = mpsc::channel::<Bytes>(1024);
    let mut epoch = fake.epoch.subscribe();
    let start_epoch = *epoch.borrow();
    let store = Arc::clone(&fake.store);
    tokio::spawn(async move {
        let line = |v: Value| Bytes::from(format!("{v}\n"));
        {
            let s = store.lock().unwrap();
            if from < s.compacted_below {
                let gone = json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1",
                    "metadata": {}, "status": "Failure", "reason": "Expired", "code": 410,
                    "message": format!("too old resource version: {from} ({})", s.compacted_below)}});
                let _ = tx.try_send(line(gone));
                return;
            }
        }
        let mut sent = from;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout);
        loop {
            let (events, rv) = {
                let s = store.lock().unwrap();
                let events: Vec<Value> = s
                    .log
                    .iter()
                    .filter(|(rv, c, n, _, o)| {
                        *rv > sent && *c == coll && *n == ns && selector_matches(&selector, o)
                    })
                    .map(|(_, _, _, t, o)| json!({"type": t, "object": o}))
                    .collect();
                (events, s.rv)
            };
            for e in events {
                if tx.send(line(e)).await.is_err() {
                    return;
                }
            }
            sent = rv;
            tokio::select! {
                changed = epoch.changed() => {
                    if changed.is_err() || is_cut(&epoch, start_epoch) {
                        return;
                    }
                }
                _ = tokio::time::sleep(Duration::from_millis(500)) => {
                    let bookmark = json!({"type": "BOOKMARK", "object": {"apiVersion": api_version,
                        "kind": plural, "metadata": {"resourceVersion": sent.to_string()}}});
                    if tx.send(line(bookmark)).await.is_err() {
                        return;
                    }
                }
                _ = tokio::time::sleep_until(deadline) => return,
            }
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, std::convert::Infallible>(b), rx))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(Body::from_stream(stream))
        .unwrap()
}

/// `send_modify(|_| {})` wakes without changing the epoch; a real cut changes it.
fn is_cut(epoch: &watch::Receiver<u64>, start: u64) -> bool {
    *epoch.borrow() != start
}

use udp_director::app::{self, Running, StartOptions};
use udp_director::config::ValidConfig;
use udp_director::k8s::Connect;

/// A director started on a config against a fake API server (through its kubeconfig).
pub struct Env {
    pub director: Running,
    _dir: testkit::TempDir,
}

pub async fn start(yaml: &str, fake: Arc<FakeKube>) -> Env {
    // The test keeps its own handle on `fake`; the director only needs its kubeconfig.
    let dir = testkit::TempDir::new("kube-test").unwrap();
    let kubeconfig = fake.kubeconfig(&dir.path);
    let config = ValidConfig::from_yaml(yaml).unwrap();
    let director = app::start_with(
        config,
        StartOptions {
            kube: Connect::Kubeconfig(kubeconfig),
            ..StartOptions::default()
        },
    )
    .await
    .unwrap();
    Env {
        director,
        _dir: dir,
    }
}

pub fn ready(d: &Running) -> bool {
    super::http_get(d.admin_addr, "/readyz").0 == 200
}

pub async fn wait(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < deadline {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cond()
}

const ALLOCATION_API: &str = "allocation.agones.dev/v1";
const AGONES_API: &str = "agones.dev/v1";

/// A Kubernetes `Status` error answer.
fn status(code: u16, reason: &str, message: &str) -> Response {
    (
        StatusCode::from_u16(code).unwrap(),
        [("content-type", "application/json")],
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "reason": reason, "code": code, "message": message})
        .to_string(),
    )
        .into_response()
}

/// `POST …/gameserverallocations` with Agones' semantics: the selectors are tried in order;
/// a GameServer matches one when its labels include `matchLabels`, its `status.state` is the
/// selector's `gameServerState` (default `Ready`) and every `lists` selector holds
/// (`minAvailable`/`maxAvailable` on `capacity - len(values)`, `containsValue`). Among the
/// matches `Packed` takes the fullest (least available in the first list selector), then the
/// first by name; `Distributed` the emptiest. The winner becomes `Allocated`, gets the
/// allocation's `metadata` and list `addValues` (up to capacity, no duplicates), and its
/// MODIFIED event goes to watchers. Everything happens under the store's lock, so concurrent
/// allocations never choose one server or one list slot twice. No match: `UnAllocated`.
async fn allocation(fake: &Arc<FakeKube>, ns: &str, body: &[u8]) -> Response {
    let (delay, failure) = {
        let mut s = fake.store.lock().unwrap();
        s.allocations += 1;
        (s.allocation_delay, s.allocation_failure)
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    if let Some(code) = failure {
        return status(code, "InternalError", "the allocator is down");
    }
    let Ok(mut gsa) = serde_json::from_slice::<Value>(body) else {
        return status(400, "BadRequest", "the body is not JSON");
    };
    if gsa["apiVersion"] != ALLOCATION_API || gsa["kind"] != "GameServerAllocation" {
        return status(400, "BadRequest", "not a GameServerAllocation");
    }
    let spec = gsa["spec"].clone();
    let mut s = fake.store.lock().unwrap();
    let coll = collection(AGONES_API, "gameservers");
    let empty = vec![json!({})];
    let selectors = spec["selectors"].as_array().unwrap_or(&empty);
    let distributed = spec["scheduling"] == "Distributed";
    let chosen = selectors.iter().find_map(|sel| {
        let state = sel["gameServerState"].as_str().unwrap_or("Ready");
        let lists = sel["lists"].as_object().cloned().unwrap_or_default();
        let available = |gs: &Value, list: &str| -> Option<i64> {
            let l = &gs["status"]["lists"][list];
            let capacity = l["capacity"].as_i64()?;
            Some(capacity - l["values"].as_array().map_or(0, |v| v.len() as i64))
        };
        let matching = s
            .objects
            .iter()
            .filter(|((c, n, _), _)| *c == coll && n == ns)
            .map(|(k, gs)| (k.2.clone(), gs))
            .filter(|(_, gs)| gs["metadata"]["deletionTimestamp"].is_null())
            .filter(|(_, gs)| gs["status"]["state"] == state)
            .filter(|(_, gs)| {
                sel["matchLabels"]
                    .as_object()
                    .is_none_or(|m| m.iter().all(|(k, v)| gs["metadata"]["labels"][k] == *v))
            })
            .filter(|(_, gs)| {
                lists.iter().all(|(name, ls)| {
                    let Some(free) = available(gs, name) else {
                        return false;
                    };
                    let min = ls["minAvailable"].as_i64().unwrap_or(0);
                    let max = ls["maxAvailable"]
                        .as_i64()
                        .filter(|m| *m > 0)
                        .unwrap_or(i64::MAX);
                    let contains = ls["containsValue"].as_str().is_none_or(|v| {
                        gs["status"]["lists"][name]["values"]
                            .as_array()
                            .is_some_and(|vs| vs.iter().any(|x| x == v))
                    });
                    free >= min && free <= max && contains
                })
            });
        let first_list = lists.keys().next().cloned();
        let rank = |gs: &Value| {
            let free = first_list
                .as_deref()
                .and_then(|l| available(gs, l))
                .unwrap_or(0);
            if distributed { -free } else { free }
        };
        // `min_by_key` keeps the first of equals: name order breaks ties.
        matching
            .min_by_key(|(_, gs)| rank(gs))
            .map(|(name, _)| name)
    });
    let Some(name) = chosen else {
        gsa["status"] = json!({"state": "UnAllocated"});
        return (
            StatusCode::CREATED,
            [("content-type", "application/json")],
            gsa.to_string(),
        )
            .into_response();
    };
    let key = (coll.clone(), ns.to_string(), name.clone());
    let mut gs = s.objects[&key].clone();
    gs["status"]["state"] = json!("Allocated");
    for part in ["labels", "annotations"] {
        if let Some(m) = spec["metadata"][part].as_object() {
            for (k, v) in m {
                gs["metadata"][part][k] = v.clone();
            }
        }
    }
    if let Some(actions) = spec["lists"].as_object() {
        for (list, action) in actions {
            let l = &mut gs["status"]["lists"][list];
            let capacity = l["capacity"].as_u64().unwrap_or(0) as usize;
            if !l["values"].is_array() {
                l["values"] = json!([]);
            }
            let values = l["values"].as_array_mut().unwrap();
            for v in action["addValues"].as_array().into_iter().flatten() {
                if values.len() < capacity && !values.contains(v) {
                    values.push(v.clone());
                }
            }
        }
    }
    s.rv += 1;
    let rv = s.rv;
    gs["metadata"]["resourceVersion"] = json!(rv.to_string());
    s.objects.insert(key.clone(), gs.clone());
    s.log.push((rv, key.0, key.1, "MODIFIED", gs.clone()));
    drop(s);
    fake.cut_nothing();
    gsa["metadata"]["namespace"] = json!(ns);
    gsa["status"] = json!({"state": "Allocated", "gameServerName": name,
        "ports": gs["status"]["ports"], "address": gs["status"]["address"],
        "addresses": gs["status"]["addresses"], "nodeName": gs["status"]["nodeName"],
        "source": "local", "metadata": {"labels": gs["metadata"]["labels"],
            "annotations": gs["metadata"]["annotations"]}});
    (
        StatusCode::CREATED,
        [("content-type", "application/json")],
        gsa.to_string(),
    )
        .into_response()
}
