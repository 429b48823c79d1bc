//! Wiring: builds the shared state from a validated config, binds every listener, starts the
//! tasks and threads, and owns the shutdown order (drain → stop → join).
//!
//! Tests and the load tool call [`start`] to run the real listeners in-process on
//! OS-assigned ports; the binary calls [`run`], which adds signal handling.
//!
//! Owns wiring and the shutdown order. Must not decide anything about queries or datagrams.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::reload::Overrides;
use crate::config::{KeySource, Protocol, TokenFormat, ValidConfig, ValidDataPort, ValidQueryTls};
use crate::metrics::Metrics;
use crate::resolve::kube::Watchers;
use crate::session::Ledger;
use crate::settings::{Generation, Settings};
use crate::shell::admin::{self, Readiness};
use crate::shell::fast_path::{FastPath, Matchers};
use crate::shell::listen::{BindError, bind_std_stream, bind_stream, local};
use crate::shell::query::{self as query_server, QueryContext};
use crate::shell::reload::{self, ConfigSource, Live};
use crate::shell::tls;
use crate::shell::udp::{DataPlane, DataShared, FdBudget};
use crate::token::ticket::{Jwks, TicketKeys};
use crate::token::{KeySet, SealedTokens, TokenStore, Tokens, WallClock};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Bind(#[from] BindError),
    /// The sealed-token keys could not be loaded at start.
    #[error("cannot load the token keys from {source_name}: {problem}")]
    Keys {
        source_name: String,
        problem: String,
    },
    /// The query port's TLS files (`queryTls`) could not be loaded at start.
    #[error("cannot load the query port's TLS files (queryTls): {0}")]
    Tls(String),
    /// The ticket JWKS (`queryAuth`) could not be loaded at start.
    #[error("cannot load the ticket keys (queryAuth JWKS) from {source_name}: {problem}")]
    Jwks {
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
    /// The admin server's own thread (its own runtime: probes never wait on the shared one).
    admin: Option<std::thread::JoinHandle<()>>,
}

/// How to start, beyond the config file.
#[derive(Debug, Clone, Default)]
pub struct StartOptions {
    /// How Kubernetes-backed mappings reach the API server (unused by static configs).
    pub kube: crate::k8s::Connect,
    /// Command-line values re-applied to every reloaded document.
    pub overrides: Overrides,
    /// Watch this source and apply its changes live (`None`: no hot reload).
    pub reload: Option<ConfigSource>,
}

/// Binds every listener and starts serving with default options.
pub async fn start(config: ValidConfig) -> Result<Running, StartError> {
    start_with(config, StartOptions::default()).await
}

/// The TCP listeners, bound before anything starts serving.
struct Listeners {
    query: TcpListener,
    /// Served from the admin thread's own runtime, so not registered with this one.
    admin: std::net::TcpListener,
    /// TCP data ports: their position in `dataPorts` and listener.
    tcp_data: Vec<(usize, TcpListener)>,
}

impl Listeners {
    fn bind(config: &ValidConfig) -> Result<Self, BindError> {
        let mut tcp_data = Vec::new();
        for (i, d) in config.data_ports.iter().enumerate() {
            if d.protocol == Protocol::Tcp {
                tcp_data.push((i, bind_stream("TCP data", d.addr, config.reuse_port)?));
            }
        }
        Ok(Self {
            query: bind_stream("query", config.query_addr, config.reuse_port)?,
            admin: bind_std_stream("admin", config.admin_addr, false)?,
            tcp_data,
        })
    }

    /// The TCP data ports' local addresses, in `dataPorts` order; an error names the port's
    /// configured address.
    fn tcp_data_addrs(&self, ports: &[ValidDataPort]) -> Result<Vec<SocketAddr>, BindError> {
        let mut addrs = Vec::with_capacity(self.tcp_data.len());
        for (i, l) in &self.tcp_data {
            let configured = ports.get(*i).map(|p| p.addr);
            let configured = configured.unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
            addrs.push(local(l.local_addr(), "TCP data", configured)?);
        }
        Ok(addrs)
    }
}

/// Loads and attaches the kernel fast path when `fastPath.enabled` (SPEC §8). A failure is
/// one warning with the reason and a count of `fast_path_failures_total{reason}`: the
/// director then carries every datagram in user space, ready as before.
fn start_fast_path(config: &ValidConfig, metrics: &Metrics) -> Option<FastPath> {
    let wanted = config.fast_path.as_ref()?;
    let matchers = Matchers::new(&config.magic, config.token_format);
    match FastPath::start(&wanted.interfaces, config.max_sessions, &matchers) {
        Ok(fast_path) => {
            tracing::info!(attached = %fast_path.describe(), "kernel fast path on");
            metrics.fast_path_enabled.set(1);
            Some(fast_path)
        }
        Err(e) => {
            let reason = e.reason();
            tracing::warn!(
                reason = reason.as_str(),
                error = %e,
                "kernel fast path off: every datagram goes through user space"
            );
            Metrics::counter(&metrics.fast_path_failures, "reason", reason.as_str()).inc();
            None
        }
    }
}

/// Binds every listener and starts serving. Returns once all are bound; Kubernetes caches
/// sync in the background (`/readyz` says when).
pub async fn start_with(config: ValidConfig, options: StartOptions) -> Result<Running, StartError> {
    let metrics = Arc::new(Metrics::new());
    let ledger = Arc::new(Ledger::grouped(config.grouping));
    let tokens = Arc::new(make_tokens(&config, &options.kube).await?);
    let jwks = make_jwks(&config, &options.kube).await?;
    for warning in &config.warnings {
        tracing::warn!("{warning}");
    }
    let jwks_source = config.query_auth.as_ref().map(|a| a.source.clone());
    let tls = load_query_tls(&config).await?;
    let watchers = Arc::new(Watchers::new(
        options.kube.clone(),
        metrics.kube_watch_errors.clone(),
        metrics.targets_skipped.clone(),
    ));
    let listeners = Listeners::bind(&config)?;
    let kept = Kept::of(&config);
    let (settings, shared, data, fds) =
        start_data(config, &watchers, &kept, (&tokens, &ledger, &metrics))?;
    let query_addr = local(listeners.query.local_addr(), "query", kept.query_at)?;
    let admin_addr = local(listeners.admin.local_addr(), "admin", kept.admin_at)?;
    let live = Arc::new(Live::new(
        Arc::clone(&settings),
        options.overrides,
        watchers,
        Arc::clone(&shared),
        Arc::clone(&metrics),
    ));
    let (shutdown, shutdown_rx) = watch::channel(false);
    let readiness = Arc::new(Readiness {
        listening: AtomicBool::new(false),
        ledger: Arc::clone(&ledger),
        settings,
    });
    let tcp_addrs = listeners.tcp_data_addrs(&kept.data_ports)?;
    if let Some(keys) = jwks.as_ref().and_then(|j| j.load()) {
        metrics.jwks_keys.set(keys.len() as i64);
    }
    let (tasks, admin) = start_tasks(
        listeners,
        (&live, &readiness, &shared, &tokens),
        &kept,
        (tls, jwks, jwks_source),
        options.reload,
        shutdown_rx,
    )?;
    readiness.listening.store(true, Ordering::SeqCst);
    let data_addrs = in_port_order(&kept.data_ports, data.local_addrs(), &tcp_addrs);
    let data_addr = data_addrs.first().copied().unwrap_or(kept.query_at);
    let running = Running {
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
        admin: Some(admin),
    };
    log_listening(&running, &kept, &fds);
    Ok(running)
}

/// Starts the data plane on the first generation, in this order: the kernel fast path (when
/// configured), the settings built from `config`, the state the data plane shares, then the
/// UDP workers ([`start_data_plane`]).
fn start_data(
    config: ValidConfig,
    watchers: &Arc<Watchers>,
    kept: &Kept,
    (tokens, ledger, metrics): (&Arc<Tokens>, &Arc<Ledger>, &Arc<Metrics>),
) -> Result<(Arc<Settings>, Arc<DataShared>, DataPlane, FdBudget), BindError> {
    let fast_path = start_fast_path(&config, metrics);
    let settings = Arc::new(Settings::new(Generation::build(config, watchers, None)));
    let shared = Arc::new(DataShared::new(
        Arc::clone(tokens),
        Arc::clone(ledger),
        Arc::clone(&settings),
        Arc::clone(metrics),
        fast_path,
    ));
    let (data, fds) = start_data_plane(kept, &shared)?;
    Ok((settings, shared, data, fds))
}

/// Starts every task and thread, in this order: the admin thread, the query server and the
/// TCP data ports ([`serve`]), the query port's key watches ([`watch_query_keys`]), then the
/// background tasks ([`background`]).
fn start_tasks(
    listeners: Listeners,
    (live, readiness, shared, tokens): (
        &Arc<Live>,
        &Arc<Readiness>,
        &Arc<DataShared>,
        &Arc<Tokens>,
    ),
    kept: &Kept,
    (tls, jwks, jwks_source): (
        Option<QueryTlsInForce>,
        Option<Arc<Jwks>>,
        Option<KeySource>,
    ),
    reload_from: Option<ConfigSource>,
    shutdown: watch::Receiver<bool>,
) -> Result<(Vec<JoinHandle<()>>, std::thread::JoinHandle<()>), BindError> {
    let (mut tasks, admin) = serve(
        listeners,
        (live, readiness, kept.admin_token.clone()),
        (shared, jwks.clone(), tls.as_ref().map(|t| Arc::clone(&t.0))),
        &shutdown,
    )?;
    tasks.extend(watch_query_keys(tls, (jwks, jwks_source), live, &shutdown));
    tasks.extend(background(
        live,
        tokens,
        kept.key_source.clone(),
        reload_from,
        shutdown,
    ));
    Ok((tasks, admin))
}

/// What start-up still reads from the config after [`Generation::build`] has taken it.
struct Kept {
    data_ports: Vec<ValidDataPort>,
    key_source: Option<KeySource>,
    /// `dataWorkers` resolved (0: one per core).
    workers: usize,
    buffer_bytes: usize,
    reuse_port: bool,
    /// The configured query and admin addresses: errors name them, and the query one stands
    /// in for `data_addr` when no data port is bound.
    query_at: SocketAddr,
    admin_at: SocketAddr,
    /// How many mappings the config has (logged once listening).
    mappings: usize,
    admin_token: Option<PathBuf>,
}

impl Kept {
    /// Copies what start-up reads late, resolving `dataWorkers: 0` to one per core.
    fn of(config: &ValidConfig) -> Self {
        Self {
            data_ports: config.data_ports.clone(),
            key_source: config.key_source.clone(),
            workers: worker_count(config.data_workers),
            buffer_bytes: config.socket_buffer_bytes,
            reuse_port: config.reuse_port,
            query_at: config.query_addr,
            admin_at: config.admin_addr,
            mappings: config.mappings.len(),
            admin_token: config.admin_token_file.clone(),
        }
    }
}

/// The query port's TLS in force: the acceptor, the `queryTls` files and their content (what
/// the file watch compares against).
type QueryTlsInForce = (Arc<tls::QueryTls>, ValidQueryTls, tls::Pems);

/// Reads the query port's TLS files (`queryTls`) now, so a director with unusable ones does
/// not start.
async fn load_query_tls(config: &ValidConfig) -> Result<Option<QueryTlsInForce>, StartError> {
    let Some(files) = &config.query_tls else {
        return Ok(None);
    };
    let pems = tls::read(files)
        .await
        .map_err(|e| StartError::Tls(e.to_string()))?;
    let server = tls::server_config(&pems).map_err(|e| StartError::Tls(e.to_string()))?;
    let verifies = files.client_ca_file.is_some();
    tracing::info!(
        client_certificates = verifies,
        "query port speaks TLS (queryTls)"
    );
    Ok(Some((
        Arc::new(tls::QueryTls::new(server, verifies)),
        files.clone(),
        pems,
    )))
}

/// The watches of the query port's own keys, started in this order: its TLS files
/// (`queryTls`), then the ticket JWKS (`queryAuth`) from its file or Secret.
fn watch_query_keys(
    tls: Option<QueryTlsInForce>,
    (jwks, jwks_source): (Option<Arc<Jwks>>, Option<KeySource>),
    live: &Arc<Live>,
    shutdown: &watch::Receiver<bool>,
) -> Vec<JoinHandle<()>> {
    let mut tasks = Vec::new();
    if let Some((tls, files, pems)) = tls {
        tasks.push(tokio::spawn(tls::watch_files(
            tls,
            files,
            pems,
            Arc::clone(&live.metrics),
            shutdown.clone(),
        )));
    }
    if let (Some(jwks), Some(source)) = (jwks, jwks_source) {
        tasks.push(match source {
            KeySource::File(path) => tokio::spawn(crate::shell::keys::watch_jwks_file(
                jwks,
                Arc::clone(&live.metrics),
                path,
                shutdown.clone(),
            )),
            KeySource::Secret { namespace, name } => {
                tokio::spawn(crate::shell::keys::watch_jwks_secret(
                    jwks,
                    Arc::clone(live),
                    namespace,
                    name,
                    shutdown.clone(),
                ))
            }
        });
    }
    tasks
}

/// The one info line saying the director is listening, and where.
fn log_listening(running: &Running, kept: &Kept, fds: &FdBudget) {
    tracing::info!(
        query = %running.query_addr,
        data = %running.data_addr,
        data_ports = %running.data_addrs.iter().map(ToString::to_string).collect::<Vec<_>>().join(","),
        admin = %running.admin_addr,
        workers = kept.workers,
        mappings = kept.mappings,
        fd_limit = fds.limit,
        upstream_socket_budget = fds.upstream(),
        "udp-director listening"
    );
}

/// Starts the UDP data plane: UDP data ports go to its workers (TCP ones to listeners on the
/// runtime), each keeping its position in `dataPorts` (the token's port for it); then the
/// upstream socket budget is what the descriptors left.
fn start_data_plane(
    kept: &Kept,
    shared: &Arc<DataShared>,
) -> Result<(DataPlane, FdBudget), BindError> {
    let udp_ats: Vec<(usize, SocketAddr)> = kept
        .data_ports
        .iter()
        .enumerate()
        .filter(|(_, d)| d.protocol == Protocol::Udp)
        .map(|(i, d)| (i, d.addr))
        .collect();
    let first = udp_ats.first().map(|(_, a)| *a);
    let data = DataPlane::start(
        &udp_ats,
        kept.workers,
        kept.buffer_bytes,
        kept.reuse_port,
        Arc::clone(shared),
    )
    .map_err(|source| BindError {
        what: "data",
        addr: first.unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0))),
        source,
    })?;
    let fds = FdBudget::take();
    shared.upstreams.set_limit(fds.upstream());
    Ok((data, fds))
}

/// `dataWorkers`, with 0 meaning one per core.
fn worker_count(configured: usize) -> usize {
    match configured {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    }
}

/// Every data port's address in `dataPorts` order, from the UDP and TCP addresses bound.
fn in_port_order(
    ports: &[crate::config::ValidDataPort],
    udp: &[SocketAddr],
    tcp: &[SocketAddr],
) -> Vec<SocketAddr> {
    let (mut udp, mut tcp) = (udp.iter().copied(), tcp.iter().copied());
    ports
        .iter()
        .filter_map(|d| match d.protocol {
            Protocol::Udp => udp.next(),
            Protocol::Tcp => tcp.next(),
        })
        .collect()
}

/// The serving tasks on the shared runtime (query server, one accept loop per TCP data
/// port) and the admin server's own thread.
fn serve(
    listeners: Listeners,
    (live, readiness, admin_token): (&Arc<Live>, &Arc<Readiness>, Option<std::path::PathBuf>),
    (shared, jwks, tls): (
        &Arc<DataShared>,
        Option<Arc<Jwks>>,
        Option<Arc<tls::QueryTls>>,
    ),
    shutdown: &watch::Receiver<bool>,
) -> Result<(Vec<JoinHandle<()>>, std::thread::JoinHandle<()>), BindError> {
    let admin = admin::start(
        listeners.admin,
        (Arc::clone(live), Arc::clone(readiness)),
        admin_token,
        shutdown.clone(),
    )
    .map_err(|source| BindError::new("admin", live.current().config.admin_addr, source))?;
    let query = Arc::new(QueryContext::new(
        Arc::clone(&live.settings),
        Arc::clone(&shared.tokens),
        Arc::clone(&shared.ledger),
        Arc::clone(&live.metrics),
        (jwks, tls),
    ));
    let mut tasks = vec![tokio::spawn(query_server::serve(
        listeners.query,
        query,
        shutdown.clone(),
    ))];
    for (index, listener) in listeners.tcp_data {
        let port = Arc::new(crate::shell::tcp::TcpPort::new(index, Arc::clone(shared)));
        tasks.push(tokio::spawn(crate::shell::tcp::serve(
            listener,
            port,
            shutdown.clone(),
        )));
    }
    Ok((tasks, admin))
}

/// The background tasks: default-route refresh, housekeeping, key and config watches.
fn background(
    live: &Arc<Live>,
    tokens: &Arc<Tokens>,
    key_source: Option<KeySource>,
    reload_from: Option<ConfigSource>,
    shutdown: watch::Receiver<bool>,
) -> Vec<JoinHandle<()>> {
    let mut tasks = vec![
        tokio::spawn(reload::refresh_default_route(
            Arc::clone(live),
            shutdown.clone(),
        )),
        tokio::spawn(crate::shell::housekeeping::trim_after_bursts(
            Arc::clone(&live.data.ledger),
            Arc::clone(tokens),
            Arc::clone(&live.metrics),
            shutdown.clone(),
        )),
    ];
    match key_source {
        Some(KeySource::File(path)) => tasks.push(tokio::spawn(crate::shell::keys::watch_file(
            Arc::clone(tokens),
            Arc::clone(&live.metrics),
            path,
            shutdown.clone(),
        ))),
        Some(KeySource::Secret { namespace, name }) => {
            tasks.push(tokio::spawn(crate::shell::keys::watch_secret(
                Arc::clone(tokens),
                Arc::clone(live),
                namespace,
                name,
                shutdown.clone(),
            )))
        }
        None => {}
    }
    match reload_from {
        Some(ConfigSource::File(path)) => tasks.push(tokio::spawn(reload::watch_file(
            Arc::clone(live),
            path,
            shutdown,
        ))),
        Some(ConfigSource::ConfigMap { namespace, name }) => tasks.push(tokio::spawn(
            reload::watch_configmap(Arc::clone(live), namespace, name, shutdown),
        )),
        None => {}
    }
    tasks
}

/// The ticket JWKS (`queryAuth`), read (file) or fetched (Secret) now, so a director with
/// unusable ticket keys does not start.
async fn make_jwks(
    config: &ValidConfig,
    kube: &crate::k8s::Connect,
) -> Result<Option<Arc<Jwks>>, StartError> {
    let Some(auth) = &config.query_auth else {
        return Ok(None);
    };
    let (source_name, text) = crate::shell::keys::read_jwks(&auth.source, kube).await;
    let keys = text
        .and_then(|t| TicketKeys::parse(&t).map_err(|e| e.to_string()))
        .map_err(|problem| StartError::Jwks {
            source_name: source_name.clone(),
            problem,
        })?;
    tracing::info!(source = %source_name, kids = ?keys.kids(), audience = %auth.audience, "ticket keys (JWKS) loaded");
    Ok(Some(Arc::new(Jwks::new(keys))))
}

/// The token store of the configured format; sealed keys are read (file) or fetched (Secret)
/// now, so a director with unusable keys does not start.
async fn make_tokens(
    config: &ValidConfig,
    kube: &crate::k8s::Connect,
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
                        crate::shell::keys::SECRET_KEY
                    ),
                    crate::shell::keys::fetch_secret(kube, namespace, name)
                        .await
                        .map_err(|e| e.to_string()),
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
        if let Some(admin) = self.admin.take() {
            let _ = tokio::task::spawn_blocking(move || admin.join()).await;
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn config() -> ValidConfig {
        let backend: SocketAddr = "127.0.0.1:9".parse().unwrap();
        ValidConfig::from_yaml(&testkit::yaml::director(
            "",
            &[testkit::yaml::static_mapping("echo", backend)],
        ))
        .unwrap()
    }

    /// `(status, body)` of a GET from a thread of its own (never on the runtime under test).
    async fn get(admin: SocketAddr, path: &'static str) -> (u16, String) {
        tokio::task::spawn_blocking(move || testkit::http_get(admin, path).unwrap())
            .await
            .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dead_data_thread_fails_the_probes() {
        let running = start(config()).await.unwrap();
        let admin = running.admin_addr;
        assert_eq!(get(admin, "/healthz").await.0, 200);
        // One worker panics the next time it is woken.
        running
            .live
            .data
            .crash_a_worker
            .store(true, Ordering::SeqCst);
        running.live.data.wake_all();
        let failed = tokio::task::spawn_blocking(move || {
            testkit::eventually(Duration::from_secs(5), || {
                testkit::http_get(admin, "/healthz").is_ok_and(|(status, _)| status == 503)
            })
        })
        .await
        .unwrap();
        assert!(failed, "/healthz still answers 200 with a dead data thread");
        assert_eq!(running.live.data.dead_workers(), 1);
        let (status, body) = get(admin, "/healthz").await;
        assert_eq!(
            (status, body.as_str()),
            (503, "unhealthy: 1 data-plane thread(s) died\n")
        );
        let (status, body) = get(admin, "/readyz").await;
        assert_eq!(status, 503);
        assert!(body.contains("data-plane thread died"), "{body}");
        // An orderly stop is not a death.
        running.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_orderly_stop_counts_no_dead_worker() {
        let running = start(config()).await.unwrap();
        let data = Arc::clone(&running.live.data);
        running.stop().await;
        assert_eq!(data.dead_workers(), 0);
    }

    /// The admin server has its own thread: a shared runtime that cannot run anything (here
    /// a single-thread runtime blocked in a join) does not delay `/healthz`.
    #[tokio::test(flavor = "current_thread")]
    async fn probes_answer_while_the_shared_runtime_is_blocked() {
        let running = start(config()).await.unwrap();
        let admin = running.admin_addr;
        // Blocks this runtime's only thread until the probes have answered.
        let answers = std::thread::spawn(move || {
            [
                testkit::http_get(admin, "/healthz").map(|a| a.0).ok(),
                testkit::http_get(admin, "/metrics").map(|a| a.0).ok(),
            ]
        })
        .join()
        .unwrap();
        assert_eq!(answers, [Some(200), Some(200)]);
        running.stop().await;
    }
}
