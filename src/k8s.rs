//! Kubernetes client plumbing, in one place: how to reach the API server ([`Connect`]), the
//! process's one shared client ([`ClientCell`]), one retry policy with jitter for start-up
//! reads ([`retry`], backon), reading one named object's text ([`fetch_text`]) and following
//! it through a watch ([`watch_named_text`]). Errors are typed ([`KubeError`]) so a caller
//! decides by kind, never by the text of a message.
//!
//! Owns the client and the retry policy. Must not know what is read (config, keys) or what a
//! cache keeps; `resolve::kube` builds its caches on [`ClientCell`].

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use futures::StreamExt;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use tokio::sync::{OnceCell, watch};

/// How to reach the API server.
#[derive(Debug, Clone, Default)]
pub enum Connect {
    /// In-cluster config or `KUBECONFIG` / `~/.kube/config` (kube's inference).
    #[default]
    Infer,
    /// A specific kubeconfig file.
    Kubeconfig(PathBuf),
}

/// What went wrong talking to the API server.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    /// No client could be built (no kubeconfig, no in-cluster config, a bad file).
    #[error("no Kubernetes client: {0}")]
    Client(String),
    /// The API answered an error or could not be reached.
    #[error("cannot read {what}: {source}")]
    Api {
        what: String,
        #[source]
        source: kube::Error,
    },
    /// The object exists but lacks the key the director reads.
    #[error("{what} has no key {key}")]
    NoKey { what: String, key: &'static str },
}

impl KubeError {
    /// Worth asking again: the API may come back; a missing key will not appear by asking.
    pub fn is_transient(&self) -> bool {
        !matches!(self, KubeError::NoKey { .. })
    }
}

/// A client for `connect` (kubeconfig file, in-cluster config or `KUBECONFIG`).
pub async fn make_client(connect: &Connect) -> Result<Client, KubeError> {
    let config = match connect {
        Connect::Infer => kube::Config::infer()
            .await
            .map_err(|e| KubeError::Client(e.to_string()))?,
        Connect::Kubeconfig(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| KubeError::Client(format!("{}: {e}", path.display())))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
                .await
                .map_err(|e| KubeError::Client(format!("{}: {e}", path.display())))?
        }
    };
    Client::try_from(config).map_err(|e| KubeError::Client(e.to_string()))
}

/// The process's one client, created on first use and shared by every watch and request.
#[derive(Clone, Default)]
pub struct ClientCell {
    cell: Arc<OnceCell<Client>>,
    connect: Connect,
}

impl ClientCell {
    pub fn new(connect: Connect) -> Self {
        Self {
            cell: Arc::new(OnceCell::new()),
            connect,
        }
    }

    /// The client, or why none can be built now (one attempt: for requests with a deadline).
    pub async fn get(&self) -> Result<Client, KubeError> {
        self.cell
            .get_or_try_init(|| make_client(&self.connect))
            .await
            .cloned()
    }

    /// The client, asking again with backoff and jitter until one can be built (watch tasks,
    /// which have nothing to do without one). `what` names the caller in the log.
    pub async fn get_or_wait(&self, what: &str) -> Client {
        let policy = ExponentialBuilder::default()
            .with_jitter()
            .with_min_delay(Duration::from_millis(250))
            .with_max_delay(Duration::from_secs(10))
            .without_max_times();
        let attempt = || self.get();
        match attempt
            .retry(policy)
            .sleep(tokio::time::sleep)
            .notify(|e: &KubeError, _| {
                tracing::warn!(source = %what, error = %e, "no Kubernetes client yet; retrying");
            })
            .await
        {
            Ok(client) => client,
            // Unreachable with `without_max_times`; wait for the next try rather than panic.
            Err(_) => std::future::pending().await,
        }
    }
}

/// Runs `attempt` until it succeeds, fails permanently ([`KubeError::is_transient`]), or
/// `within` has passed; exponential backoff from 200 ms to 5 s with jitter, each retry
/// logged as `what`. The one retry loop of start-up reads.
pub async fn retry<T, F, Fut>(what: &str, within: Duration, attempt: F) -> Result<T, KubeError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, KubeError>>,
{
    let policy = ExponentialBuilder::default()
        .with_jitter()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(5))
        .with_total_delay(Some(within))
        .without_max_times();
    attempt
        .retry(policy)
        .sleep(tokio::time::sleep)
        .when(KubeError::is_transient)
        .notify(|e: &KubeError, _| tracing::warn!(source = %what, error = %e, "retrying"))
        .await
}

/// Reads `key` of one named object (`text_of` picks it out) once at start, retrying for up
/// to 30 s (an API server restarting alongside the director).
pub async fn fetch_text<K>(
    connect: &Connect,
    namespace: &str,
    name: &str,
    key: &'static str,
    text_of: impl Fn(&K) -> Option<String>,
) -> Result<String, KubeError>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + fmt::Debug,
    K::DynamicType: Default,
{
    let what = format!("{} {namespace}/{name}", K::kind(&Default::default()));
    retry(&what, Duration::from_secs(30), || async {
        let client = make_client(connect).await?;
        let object = Api::<K>::namespaced(client, namespace)
            .get(name)
            .await
            .map_err(|source| KubeError::Api {
                what: what.clone(),
                source,
            })?;
        text_of(&object).ok_or_else(|| KubeError::NoKey {
            what: what.clone(),
            key,
        })
    })
    .await
}

/// Watches one object by name (a `metadata.name` field selector, so RBAC can limit it by
/// `resourceNames`) and hands `on_change` the text `text_of` reads from it each time that
/// text changes (`None`: the object lacks it). Watch errors are counted and logged once per
/// outage; what is in force stays meanwhile. Returns at shutdown.
pub async fn watch_named_text<K>(
    api: Api<K>,
    name: &str,
    what: &str,
    errors: &prometheus_client::metrics::counter::Counter,
    mut shutdown: watch::Receiver<bool>,
    text_of: impl Fn(&K) -> Option<String>,
    mut on_change: impl FnMut(Option<&str>),
) where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + fmt::Debug + Send + 'static,
{
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let stream = watcher(api, config).default_backoff().applied_objects();
    let mut stream = std::pin::pin!(stream);
    let mut last: Option<String> = None;
    let mut failing = false;
    loop {
        let item = tokio::select! {
            item = stream.next() => item,
            _ = shutdown.changed() => return,
        };
        let Some(item) = item else { return };
        let object = match item {
            Ok(object) => object,
            Err(e) => {
                errors.inc();
                if !failing {
                    tracing::warn!(source = %what, error = %e, "watch failing; what is in force stays");
                }
                failing = true;
                continue;
            }
        };
        failing = false;
        let text = text_of(&object);
        if text != last {
            on_change(text.as_deref());
            last = text;
        }
    }
}
