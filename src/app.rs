//! Wiring: builds the shared state from a validated config, binds every listener, starts the
//! tasks and threads, and owns the shutdown order (drain → stop → join).
//!
//! Tests and the load tool call [`start`] to run the real listeners in-process on
//! OS-assigned ports; the binary calls [`run`], which adds signal handling.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::admin::{self, Readiness};
use crate::config::Config;
use crate::config::reload::Overrides;
use crate::metrics::Metrics;
use crate::net::{DataPlane, DataSettings, DataShared, FdBudget};
use crate::query_server::{self, QueryContext};
use crate::reload::{self, ConfigSource, Live};
use crate::resolve::Resolver;
use crate::session::Ledger;
use crate::token::TokenStore;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot bind the {what} listener on {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// A running director.
pub struct Running {
    pub query_addr: SocketAddr,
    pub data_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub metrics: Arc<Metrics>,
    pub ledger: Arc<Ledger>,
    pub tokens: Arc<TokenStore>,
    /// The config in force and what a reload swaps.
    pub live: Arc<Live>,
    shutdown: watch::Sender<bool>,
    data: Option<DataPlane>,
    tasks: Vec<JoinHandle<()>>,
}

/// How to start, beyond the config file.
#[derive(Debug, Clone, Default)]
pub struct StartOptions {
    /// How Kubernetes-backed mappings reach the API server (unused by static configs).
    pub kube: crate::resolve::kube::Connect,
    /// Command-line values re-applied to every reloaded document.
    pub overrides: Overrides,
    /// Watch this source and apply its changes live (`None`: no hot reload).
    pub reload: Option<ConfigSource>,
}

/// Binds every listener and starts serving with default options.
pub async fn start(config: Config) -> Result<Running, StartError> {
    start_with(config, StartOptions::default()).await
}

/// Binds every listener and starts serving. Returns once all are bound; Kubernetes caches
/// sync in the background (`/readyz` says when).
pub async fn start_with(config: Config, options: StartOptions) -> Result<Running, StartError> {
    let metrics = Arc::new(Metrics::new());
    let ledger = Arc::new(Ledger::new(config.max_sessions));
    let tokens = Arc::new(TokenStore::new(
        config.token_ttl(),
        config.limits.max_tokens,
        config.single_use_tokens,
    ));
    let watchers = Arc::new(crate::resolve::kube::Watchers::new(
        options.kube,
        metrics.kube_watch_errors.clone(),
        metrics.targets_skipped.clone(),
    ));
    let resolver = Arc::new(Resolver::new(&config, &watchers));
    let (shutdown, shutdown_rx) = watch::channel(false);

    let bind = |port| SocketAddr::new(config.bind_address, port);
    let query_listener = bind_tcp("query", bind(config.query_port)).await?;
    let admin_listener = bind_tcp("admin", bind(config.admin_port)).await?;
    let data_shared = Arc::new(DataShared::new(
        Arc::clone(&tokens),
        Arc::clone(&ledger),
        DataSettings::new(&config, &resolver),
        Arc::clone(&metrics),
    ));
    let resolver = Arc::new(RwLock::new(resolver));
    let workers = match config.data_workers {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let data_addr = bind(config.data_port);
    let data = DataPlane::start(
        data_addr,
        workers,
        config.socket_buffer_bytes,
        Arc::clone(&data_shared),
    )
    .map_err(|source| StartError::Bind {
        what: "data",
        addr: data_addr,
        source,
    })?;

    let fds = FdBudget::take();
    data_shared.upstreams.set_limit(fds.upstream());
    let local = |l: &TcpListener, what, addr| {
        l.local_addr()
            .map_err(|source| StartError::Bind { what, addr, source })
    };
    let query_addr = local(&query_listener, "query", bind(config.query_port))?;
    let admin_addr = local(&admin_listener, "admin", bind(config.admin_port))?;

    let query = Arc::new(QueryContext::new(
        Arc::clone(&resolver),
        Arc::clone(&tokens),
        Arc::clone(&ledger),
        Arc::clone(&metrics),
        config.limits.clone(),
    ));
    let readiness = Arc::new(Readiness {
        listening: AtomicBool::new(false),
        ledger: Arc::clone(&ledger),
        resolver: Arc::clone(&resolver),
    });
    let mappings = config.resource_query_mapping.len();
    let live = Arc::new(Live::new(
        config,
        options.overrides,
        watchers,
        resolver,
        Arc::clone(&data_shared),
        Arc::clone(&query),
        Arc::clone(&tokens),
        Arc::clone(&ledger),
        Arc::clone(&metrics),
    ));
    let mut tasks = vec![
        tokio::spawn(query_server::serve(
            query_listener,
            query,
            shutdown_rx.clone(),
        )),
        tokio::spawn(admin::serve(
            admin_listener,
            Arc::clone(&live),
            Arc::clone(&readiness),
            shutdown_rx.clone(),
        )),
    ];
    tasks.push(tokio::spawn(reload::refresh_default_route(
        Arc::clone(&live),
        shutdown_rx.clone(),
    )));
    tasks.push(tokio::spawn(crate::memory::keep(
        Arc::clone(&ledger),
        Arc::clone(&tokens),
        Arc::clone(&metrics),
        shutdown_rx.clone(),
    )));
    match options.reload {
        Some(ConfigSource::File(path)) => tasks.push(tokio::spawn(reload::watch_file(
            Arc::clone(&live),
            path,
            shutdown_rx,
        ))),
        Some(ConfigSource::ConfigMap { namespace, name }) => tasks.push(tokio::spawn(
            reload::watch_configmap(Arc::clone(&live), namespace, name, shutdown_rx),
        )),
        None => {}
    }
    readiness.listening.store(true, Ordering::SeqCst);
    let data_addr = data.local_addr();
    tracing::info!(
        query = %query_addr,
        data = %data_addr,
        admin = %admin_addr,
        workers,
        mappings,
        fd_limit = fds.limit,
        upstream_socket_budget = fds.upstream(),
        "udp-director listening"
    );
    Ok(Running {
        query_addr,
        data_addr,
        admin_addr,
        metrics,
        ledger,
        tokens,
        live,
        shutdown,
        data: Some(data),
        tasks,
    })
}

async fn bind_tcp(what: &'static str, addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { what, addr, source })
}

impl Running {
    /// Stops issuing tokens and creating sessions; `/readyz` turns 503; live sessions flow on.
    pub fn begin_drain(&self) {
        match &self.data {
            Some(data) => data.begin_drain(),
            None => self.ledger.begin_drain(),
        }
    }

    /// Closes every session and listener and waits for them.
    pub async fn stop(mut self) {
        let _ = self.shutdown.send(true);
        if let Some(data) = self.data.take() {
            let _ = tokio::task::spawn_blocking(move || data.stop()).await;
        }
        for task in self.tasks.drain(..) {
            let _ = task.await;
        }
    }
}

/// Runs until SIGTERM or SIGINT, then drains for `drainSeconds` (a second signal cuts the
/// drain short) and returns.
pub async fn run(config: Config, options: StartOptions) -> Result<(), StartError> {
    let running = start_with(config, options).await?;
    let mut signals = Signals::new();
    signals.next().await;
    // `drainSeconds` as reloaded last.
    let drain = Duration::from_secs(running.live.current().drain_seconds);
    tracing::info!(
        drain_seconds = drain.as_secs(),
        active_sessions = running.ledger.active(),
        "shutdown requested: draining (no new queries or sessions, live sessions keep flowing)"
    );
    running.begin_drain();
    tokio::select! {
        _ = tokio::time::sleep(drain) => {}
        _ = signals.next() => tracing::warn!("second signal: skipping the rest of the drain"),
    }
    tracing::info!(
        active_sessions = running.ledger.active(),
        "drain over: closing sessions and exiting"
    );
    running.stop().await;
    Ok(())
}

/// SIGTERM and SIGINT through one path.
struct Signals {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn new() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Self {
                term: signal(SignalKind::terminate()).ok(),
            }
        }
        #[cfg(not(unix))]
        Self {}
    }

    async fn next(&mut self) {
        #[cfg(unix)]
        {
            let term = async {
                match &mut self.term {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                _ = term => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
