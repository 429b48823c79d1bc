//! Wiring: builds the shared state from a validated config, binds every listener, starts the
//! tasks and threads, and owns the shutdown order (drain → stop → join).
//!
//! Tests and the load tool call [`start`] to run the real listeners in-process on
//! OS-assigned ports; the binary calls [`run`], which adds signal handling.
//!
//! Owns wiring and the shutdown order. Must not decide anything about queries or datagrams.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::admin::{self, Readiness};
use crate::config::ValidConfig;
use crate::config::reload::Overrides;
use crate::config::{KeySource, Protocol, TokenFormat};
use crate::live::{Generation, Settings};
use crate::metrics::Metrics;
use crate::net::{DataPlane, DataShared, FdBudget};
use crate::query_server::{self, QueryContext};
use crate::reload::{self, ConfigSource, Live};
use crate::session::Ledger;
use crate::token::{KeySet, SealedTokens, TokenStore, Tokens, WallClock};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot bind the {what} listener on {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// The sealed-token keys could not be loaded at start.
    #[error("cannot load the token keys from {source_name}: {problem}")]
    Keys {
        source_name: String,
        problem: String,
    },
}

/// A running director.
pub struct Running {
    pub query_addr: SocketAddr,
    /// The main data port (the first of `dataPorts`).
    pub data_addr: SocketAddr,
    /// Every data port, in `dataPorts` order.
    pub data_addrs: Vec<SocketAddr>,
    pub admin_addr: SocketAddr,
    pub ledger: Arc<Ledger>,
    pub tokens: Arc<Tokens>,
    /// The config in force and what a reload swaps.
    pub(crate) live: Arc<Live>,
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
pub async fn start(config: ValidConfig) -> Result<Running, StartError> {
    start_with(config, StartOptions::default()).await
}

/// Binds every listener and starts serving. Returns once all are bound; Kubernetes caches
/// sync in the background (`/readyz` says when).
pub async fn start_with(config: ValidConfig, options: StartOptions) -> Result<Running, StartError> {
    let metrics = Arc::new(Metrics::new());
    let ledger = Arc::new(Ledger::new());
    let key_source = config.key_source.clone();
    let tokens = Arc::new(make_tokens(&config, &options.kube).await?);
    let reuse_port = config.reuse_port;
    let watchers = Arc::new(crate::resolve::kube::Watchers::new(
        options.kube,
        metrics.kube_watch_errors.clone(),
        metrics.targets_skipped.clone(),
    ));
    let (query_at, data_at, admin_at) = (config.query_addr, config.data_addr, config.admin_addr);
    // UDP data ports go to the data plane's workers, TCP ones to listeners on the runtime;
    // both keep their position in `dataPorts` (the token's port for them).
    let data_ports: Vec<(usize, SocketAddr, Protocol)> = config
        .data_ports
        .iter()
        .enumerate()
        .map(|(i, d)| (i, d.addr, d.protocol))
        .collect();
    let udp_ats: Vec<(usize, SocketAddr)> = data_ports
        .iter()
        .filter(|d| d.2 == Protocol::Udp)
        .map(|d| (d.0, d.1))
        .collect();
    let mut tcp_listeners = Vec::new();
    for &(i, addr, protocol) in &data_ports {
        if protocol == Protocol::Tcp {
            tcp_listeners.push((i, bind_stream("TCP data", addr, config.reuse_port)?));
        }
    }
    let (workers, buffer_bytes) = (config.data_workers, config.socket_buffer_bytes);
    let mappings = config.mappings.len();
    let settings = Arc::new(Settings::new(Generation::build(config, &watchers, None)));
    let (shutdown, shutdown_rx) = watch::channel(false);

    let query_listener = bind_query(query_at, reuse_port)?;
    let admin_listener = bind_tcp("admin", admin_at).await?;
    let data_shared = Arc::new(DataShared::new(
        Arc::clone(&tokens),
        Arc::clone(&ledger),
        Arc::clone(&settings),
        Arc::clone(&metrics),
    ));
    let workers = match workers {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let data = DataPlane::start(
        &udp_ats,
        workers,
        buffer_bytes,
        reuse_port,
        Arc::clone(&data_shared),
    )
    .map_err(|source| StartError::Bind {
        what: "data",
        addr: data_at,
        source,
    })?;

    let fds = FdBudget::take();
    data_shared.upstreams.set_limit(fds.upstream());
    let local = |l: &TcpListener, what, addr| {
        l.local_addr()
            .map_err(|source| StartError::Bind { what, addr, source })
    };
    let query_addr = local(&query_listener, "query", query_at)?;
    let admin_addr = local(&admin_listener, "admin", admin_at)?;

    let query = Arc::new(QueryContext::new(
        Arc::clone(&settings),
        Arc::clone(&tokens),
        Arc::clone(&ledger),
        Arc::clone(&metrics),
    ));
    let readiness = Arc::new(Readiness {
        listening: AtomicBool::new(false),
        ledger: Arc::clone(&ledger),
        settings: Arc::clone(&settings),
    });
    let live = Arc::new(Live::new(
        settings,
        options.overrides,
        watchers,
        Arc::clone(&data_shared),
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
    let mut tcp_addrs = Vec::with_capacity(tcp_listeners.len());
    for (index, listener) in tcp_listeners {
        tcp_addrs.push(local(&listener, "TCP data", data_at)?);
        let port = Arc::new(crate::net::tcp::TcpPort::new(
            index,
            Arc::clone(&data_shared),
        ));
        tasks.push(tokio::spawn(crate::net::tcp::serve(
            listener,
            port,
            shutdown_rx.clone(),
        )));
    }
    tasks.push(tokio::spawn(reload::refresh_default_route(
        Arc::clone(&live),
        shutdown_rx.clone(),
    )));
    tasks.push(tokio::spawn(crate::shell::housekeeping::trim_after_bursts(
        Arc::clone(&ledger),
        Arc::clone(&tokens),
        Arc::clone(&metrics),
        shutdown_rx.clone(),
    )));
    match key_source {
        Some(KeySource::File(path)) => tasks.push(tokio::spawn(crate::keysource::watch_file(
            Arc::clone(&tokens),
            Arc::clone(&metrics),
            path,
            shutdown_rx.clone(),
        ))),
        Some(KeySource::Secret { namespace, name }) => {
            tasks.push(tokio::spawn(crate::keysource::watch_secret(
                Arc::clone(&tokens),
                Arc::clone(&live),
                namespace,
                name,
                shutdown_rx.clone(),
            )))
        }
        None => {}
    }
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
    // Every data port's address in `dataPorts` order.
    let mut udp_addrs = data.local_addrs().iter();
    let mut tcp_addrs = tcp_addrs.into_iter();
    let data_addrs: Vec<SocketAddr> = data_ports
        .iter()
        .filter_map(|d| match d.2 {
            Protocol::Udp => udp_addrs.next().copied(),
            Protocol::Tcp => tcp_addrs.next(),
        })
        .collect();
    let data_addr = data_addrs.first().copied().unwrap_or(data_at);
    tracing::info!(
        query = %query_addr,
        data = %data_addr,
        data_ports = %data_addrs
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(","),
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
        data_addrs,
        admin_addr,
        ledger,
        tokens,
        live,
        shutdown,
        data: Some(data),
        tasks,
    })
}

/// The token store of the configured format; sealed keys are read (file) or fetched (Secret)
/// now, so a director with unusable keys does not start.
async fn make_tokens(
    config: &ValidConfig,
    kube: &crate::resolve::kube::Connect,
) -> Result<Tokens, StartError> {
    let now = tokio::time::Instant::now();
    match (config.token_format, &config.key_source) {
        (TokenFormat::Uuid, _) => Ok(Tokens::Uuid(TokenStore::new(config.limits.max_tokens))),
        (TokenFormat::Sealed, None) => Err(StartError::Keys {
            source_name: "nowhere".into(),
            problem: "tokenFormat: sealed needs tokenKeysFile or --token-keys-secret".into(),
        }),
        (TokenFormat::Sealed, Some(source)) => {
            let (name, text) = match source {
                KeySource::File(path) => (
                    format!("file {}", path.display()),
                    tokio::fs::read_to_string(path)
                        .await
                        .map_err(|e| e.to_string()),
                ),
                KeySource::Secret { namespace, name } => (
                    format!(
                        "Secret {namespace}/{name} (key {})",
                        crate::keysource::SECRET_KEY
                    ),
                    crate::keysource::fetch_secret(kube, namespace, name).await,
                ),
            };
            let keys = text
                .and_then(|t| KeySet::parse(&t).map_err(|e| e.to_string()))
                .map_err(|problem| StartError::Keys {
                    source_name: name.clone(),
                    problem,
                })?;
            tracing::info!(source = %name, keys = ?keys.ids(), "token keys loaded");
            Ok(Tokens::Sealed(SealedTokens::new(
                keys,
                WallClock::system(now),
                config.limits.max_tokens,
            )))
        }
    }
}

/// The query listener; with `reusePort` it joins the port's SO_REUSEPORT group.
fn bind_query(addr: SocketAddr, reuse_port: bool) -> Result<TcpListener, StartError> {
    bind_stream("query", addr, reuse_port)
}

/// A TCP listener (query or TCP data port); with `reusePort` in the port's SO_REUSEPORT group.
fn bind_stream(
    what: &'static str,
    addr: SocketAddr,
    reuse_port: bool,
) -> Result<TcpListener, StartError> {
    let bind = || -> std::io::Result<TcpListener> {
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )?;
        socket.set_reuse_address(true)?;
        if reuse_port {
            socket.set_reuse_port(true)?;
        }
        if addr.is_ipv6() {
            let _ = socket.set_only_v6(false);
        }
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        socket.listen(1024)?;
        TcpListener::from_std(socket.into())
    };
    bind().map_err(|source| StartError::Bind { what, addr, source })
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
pub async fn run(config: ValidConfig, options: StartOptions) -> Result<(), StartError> {
    let running = start_with(config, options).await?;
    let mut signals = Signals::new();
    signals.next().await;
    // `drainSeconds` as reloaded last.
    let drain = running.live.current().config.drain;
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
