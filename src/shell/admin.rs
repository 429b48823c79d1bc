//! Admin HTTP server: `/metrics` (Prometheus text), `/healthz` (the process answers and every
//! data-plane thread is alive), `/readyz` (listeners bound, every resource source synced
//! once, not draining), `/config` (the config in force as JSON, control-packet magic
//! redacted), `/sessions` (the count and a bounded sample) and `/`, the operator page (one
//! HTML document over the same sources, rendered by `protocol::operator_page`). Read-only.
//!
//! It binds `adminBindAddress` (default: `bindAddress`) and runs on a thread of its own with
//! a single-thread runtime, so work on the shared runtime (queries, watches) can never delay
//! a probe. `/`, `/config` and `/sessions` show topology and players' addresses: they answer only
//! callers `protocol::admin_access::allowed` admits (loopback, or `Authorization: Bearer`
//! with the token of `adminTokenFile`, polled by path); everyone else gets 403. Probes and
//! `/metrics` stay open.
//!
//! Owns the admin endpoints and the admin token in force. Must not change any other state.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use std::time::Duration;

use arc_swap::ArcSwapOption;
use axum::extract::{ConnectInfo, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::reload::redacted_json;
use crate::config::{LoadBalancing, TokenFormat, ValidConfig, ValidMapping, ValidSource};
use crate::metrics::{Label, Metrics};
use crate::protocol::admin_access;
use crate::protocol::operator_page::{
    self, KeyState, MappingRow, Page, ReloadState, SessionRow, TargetRow,
};
use crate::resolve::MappingStatus;
use crate::session::{Ledger, SessionView};
use crate::settings::{Generation, Settings};
use crate::shell::reload::{Live, Polled, StableFile};

/// Readiness inputs. Liveness does not depend on any of them.
pub(crate) struct Readiness {
    /// Latched once every listener is bound.
    pub listening: AtomicBool,
    /// Draining (no new sessions) is the ledger's.
    pub ledger: Arc<Ledger>,
    pub settings: Arc<Settings>,
}

impl Readiness {
    /// `Ok` when ready, otherwise why not.
    pub(crate) fn check(&self) -> Result<(), &'static str> {
        if self.ledger.draining() {
            return Err("draining");
        }
        if !self.listening.load(Ordering::Relaxed) {
            return Err("listeners not bound");
        }
        if !self.settings.load().resolver.synced() {
            return Err("resource caches not synced");
        }
        Ok(())
    }
}

#[derive(Clone)]
struct AdminState {
    live: Arc<Live>,
    readiness: Arc<Readiness>,
    /// The Bearer token in force (`None`: loopback callers only).
    token: Arc<ArcSwapOption<String>>,
}

/// How often `adminTokenFile` is read (a change applies within two polls: < 2 s).
pub(crate) const TOKEN_FILE_POLL: Duration = Duration::from_millis(500);
/// A longer token file is refused (a token is a line, not a document).
const TOKEN_MAX_BYTES: usize = 4096;
/// The body of a refused operator view: why, nothing more.
const FORBIDDEN: &str =
    "forbidden: this view answers loopback callers or Authorization: Bearer <admin token>\n";

/// Starts the admin server on a thread of its own with a single-thread runtime. Returns once
/// the thread runs; it ends at `shutdown` (or when the sender is dropped).
pub(crate) fn start(
    listener: std::net::TcpListener,
    (live, readiness): (Arc<Live>, Arc<Readiness>),
    token_file: Option<PathBuf>,
    shutdown: watch::Receiver<bool>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("admin".into())
        .spawn(move || {
            runtime.block_on(async move {
                let listener = match TcpListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::error!(error = %e, "admin listener unusable");
                        return;
                    }
                };
                let token = Arc::new(ArcSwapOption::empty());
                if let Some(path) = token_file {
                    let in_force = tokio::fs::read(&path).await;
                    let source = path.display().to_string();
                    match &in_force {
                        Ok(bytes) => apply_token(&token, &source, bytes),
                        Err(e) => tracing::warn!(file = %source, error = %e, "cannot read adminTokenFile: operator views answer loopback callers only"),
                    }
                    tokio::spawn(watch_token(
                        Arc::clone(&token),
                        StableFile::new(path, in_force.ok()),
                        source,
                        shutdown.clone(),
                    ));
                }
                serve(listener, AdminState { live, readiness, token }, shutdown).await;
            });
        })
}

/// The token a file's content holds: trimmed; empty or oversized is none.
fn token_of(bytes: &[u8]) -> Result<Option<String>, &'static str> {
    if bytes.len() > TOKEN_MAX_BYTES {
        return Err("longer than 4096 bytes");
    }
    let text = std::str::from_utf8(bytes).map_err(|_| "not UTF-8")?.trim();
    Ok((!text.is_empty()).then(|| text.to_string()))
}

/// Puts a new token file content in force (an unusable one means no token: loopback only).
fn apply_token(token: &ArcSwapOption<String>, source: &str, bytes: &[u8]) {
    match token_of(bytes) {
        Ok(Some(t)) => {
            token.store(Some(Arc::new(t)));
            tracing::info!(file = %source, "admin token loaded");
        }
        Ok(None) => {
            token.store(None);
            tracing::warn!(file = %source, "adminTokenFile is empty: operator views answer loopback callers only");
        }
        Err(why) => {
            token.store(None);
            tracing::warn!(file = %source, problem = why, "adminTokenFile unusable: operator views answer loopback callers only");
        }
    }
}

/// Reads the token file every [`TOKEN_FILE_POLL`]; a changed content applies once two reads
/// agree. An unreadable file (mid-swap, deleted) keeps the token in force.
async fn watch_token(
    token: Arc<ArcSwapOption<String>>,
    mut file: StableFile,
    source: String,
    mut shutdown: watch::Receiver<bool>,
) {
    while let Some(found) = file.next(TOKEN_FILE_POLL, &mut shutdown).await {
        match found {
            Polled::Unchanged => {}
            Polled::Unreadable(e) => {
                tracing::warn!(file = %source, error = %e, "cannot read adminTokenFile; the token in force stays");
            }
            Polled::Changed(bytes) => apply_token(&token, &source, &bytes),
        }
    }
}

/// Lets a request to an operator view through when `admin_access::allowed` says so.
async fn operator_only(
    State(s): State<AdminState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Response {
    let authorization = request
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes());
    let token = s.token.load();
    if admin_access::allowed(
        peer.ip(),
        authorization,
        token.as_deref().map(String::as_str),
    ) {
        next.run(request).await
    } else {
        tracing::debug!(%peer, path = %request.uri().path(), "operator view refused");
        (StatusCode::FORBIDDEN, FORBIDDEN).into_response()
    }
}

/// Sessions `/sessions` lists unless `?limit=` asks for fewer (at most [`SESSIONS_MAX`]).
pub(crate) const SESSIONS_DEFAULT: usize = 100;
pub(crate) const SESSIONS_MAX: usize = 1_000;

async fn serve(listener: TcpListener, state: AdminState, mut shutdown: watch::Receiver<bool>) {
    let operator = Router::new()
        .route("/config", get(config_handler))
        .route("/sessions", get(sessions_handler))
        .route("/", get(page_handler))
        .route_layer(middleware::from_fn_with_state(state.clone(), operator_only));
    let app = Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .merge(operator)
        .with_state(state);
    let result = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move {
        let _ = shutdown.changed().await;
    })
    .await;
    if let Err(e) = result {
        tracing::error!(error = %e, "admin server failed");
    }
}

/// 200 while every data-plane thread runs; 503 once one has died (a panic, or an exit
/// before shutdown), so the kubelet restarts a process whose data plane is gone.
async fn healthz(State(s): State<AdminState>) -> impl IntoResponse {
    match s.live.data.dead_workers() {
        0 => (StatusCode::OK, "ok\n".to_string()),
        n => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("unhealthy: {n} data-plane thread(s) died\n"),
        ),
    }
}

async fn metrics_handler(State(s): State<AdminState>) -> impl IntoResponse {
    refresh_gauges(&s);
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.live.metrics.encode(),
    )
}

/// Sets the gauges read from shared state rather than counted (sessions, tokens, caches,
/// drain) to their current values; returns the mappings' cache status it read.
fn refresh_gauges(s: &AdminState) -> Vec<MappingStatus> {
    let live = &s.live;
    let m = &live.metrics;
    let active = live.data.ledger.active() as i64;
    m.sessions_active.set(active);
    // The relays keep the TCP share up to date; UDP is the rest of the ledger's count.
    let tcp = m.hot.tcp_sessions_active.get();
    m.sessions_by_protocol
        .get_or_create(&[("protocol", "udp")])
        .set((active - tcp).max(0));
    m.tokens_active
        .set(i64::try_from(live.data.tokens.len()).unwrap_or(i64::MAX));
    let status = live.settings.load().resolver.mapping_status();
    // Mappings removed by a reload disappear from the exposition.
    m.mapping_objects.clear();
    m.mapping_synced.clear();
    for st in &status {
        let label = [("mapping", st.name.clone())];
        m.mapping_objects
            .get_or_create(&label)
            .set(st.objects as i64);
        m.mapping_synced
            .get_or_create(&label)
            .set(i64::from(st.synced));
    }
    m.caches_synced
        .set(i64::from(status.iter().all(|st| st.synced)));
    // Live sessions per mapping: the ledger's per-target counts (what leastSessions reads)
    // joined with the addresses each mapping knows.
    let by_address = live.settings.load().known.mappings_by_address();
    let mut per_mapping: std::collections::BTreeMap<&str, i64> =
        status.iter().map(|st| (st.name.as_str(), 0)).collect();
    for (addr, n) in live.data.ledger.per_target() {
        for mapping in by_address.get(&addr).into_iter().flatten() {
            if let Some(count) = per_mapping.get_mut(mapping.as_str()) {
                *count += i64::try_from(n).unwrap_or(i64::MAX);
            }
        }
    }
    m.mapping_sessions.clear();
    for (mapping, n) in per_mapping {
        m.mapping_sessions
            .get_or_create(&[("mapping", mapping.to_string())])
            .set(n);
    }
    super::process::refresh(m);
    m.draining.set(i64::from(s.readiness.ledger.draining()));
    status
}

async fn config_handler(State(s): State<AdminState>) -> impl IntoResponse {
    Json(redacted_json(&s.live.settings.load().config))
}

#[derive(Debug, Deserialize)]
struct SessionsQuery {
    limit: Option<usize>,
}

async fn sessions_handler(
    State(s): State<AdminState>,
    Query(q): Query<SessionsQuery>,
) -> impl IntoResponse {
    let limit = q.limit.unwrap_or(SESSIONS_DEFAULT).min(SESSIONS_MAX);
    let sample = s
        .live
        .data
        .sample_sessions(limit, Duration::from_secs(1))
        .await;
    let sessions: Vec<Value> = sample
        .iter()
        .map(|v| {
            json!({
                "client": v.client.to_string(),
                "target": {
                    "mapping": v.target.mapping,
                    "namespace": v.target.namespace,
                    "name": v.target.name,
                    "address": v.target.addr.to_string(),
                },
                "ageSeconds": v.age.as_secs_f64(),
                "idleSeconds": v.idle.as_secs_f64(),
                "datagramsToTarget": v.stats.datagrams_to_target,
                "datagramsToClient": v.stats.datagrams_to_client,
                "bytesToTarget": v.stats.bytes_to_target,
                "bytesToClient": v.stats.bytes_to_client,
            })
        })
        .collect();
    Json(json!({
        "count": s.live.data.ledger.active(),
        "sampled": sessions.len(),
        "limit": limit,
        "sessions": sessions,
    }))
}

/// `Ok` when `/readyz` answers 200, otherwise why not.
fn readiness(s: &AdminState) -> Result<(), &'static str> {
    let alive = match s.live.data.dead_workers() {
        0 => Ok(()),
        _ => Err("a data-plane thread died"),
    };
    alive.and_then(|()| s.readiness.check())
}

async fn readyz(State(s): State<AdminState>) -> impl IntoResponse {
    match readiness(&s) {
        Ok(()) => (StatusCode::OK, "ready\n".to_string()),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        ),
    }
}

/// Sessions the operator page lists (a sample, like `/sessions`), and targets it lists.
const PAGE_SESSIONS: usize = 50;
const PAGE_TARGETS: usize = 100;
/// The page reloads itself this often.
const PAGE_REFRESH_SECONDS: u32 = 5;

/// `/`: the operator page, gathered from what `/metrics`, `/sessions`, `/config` and
/// `/readyz` read.
async fn page_handler(State(s): State<AdminState>) -> impl IntoResponse {
    let status = refresh_gauges(&s);
    let sample = s
        .live
        .data
        .sample_sessions(PAGE_SESSIONS, Duration::from_secs(1))
        .await;
    let generation = s.live.settings.load();
    let config = &generation.config;
    let m = &s.live.metrics;
    let mappings = mapping_rows(&status, config, m);
    let (targets, targets_omitted) = target_rows(&s, &generation, &sample);
    let sessions = session_rows(&sample);
    let page = Page {
        version: env!("CARGO_PKG_VERSION").to_string(),
        revision: crate::metrics::REVISION.to_string(),
        not_ready: readiness(&s).err().map(str::to_string),
        draining: s.readiness.ledger.draining(),
        refresh_seconds: PAGE_REFRESH_SECONDS,
        sessions_active: gauge_value(&m.sessions_active),
        max_sessions: config.max_sessions as u64,
        by_protocol: sessions_by_protocol(m),
        mappings,
        targets,
        targets_omitted,
        sessions,
        reload: reload_state(generation.number, m),
        keys: key_state(config, m),
    };
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        operator_page::render(&page),
    )
}

/// A gauge as the page shows it (a negative value, which no gauge here should hold, as 0).
fn gauge_value(g: &Gauge) -> u64 {
    u64::try_from(g.get()).unwrap_or(0)
}

/// A `{result}` counter's value (`applied`, `rejected`).
fn result_count(family: &Family<Label, Counter>, result: &'static str) -> u64 {
    Metrics::counter(family, "result", result).get()
}

/// The Mappings section: each mapping's cache status, where its targets come from, its
/// strategy and its live sessions (`mapping_sessions`).
fn mapping_rows(status: &[MappingStatus], config: &ValidConfig, m: &Metrics) -> Vec<MappingRow> {
    status
        .iter()
        .map(|st| {
            let mapping = config.mappings.get(&st.name);
            MappingRow {
                name: st.name.clone(),
                source: source_name(mapping).to_string(),
                load_balancing: mapping
                    .map(|v| load_balancing_name(&v.load_balancing))
                    .unwrap_or_default()
                    .to_string(),
                objects: st.objects as u64,
                synced: st.synced,
                sessions: gauge_value(
                    &m.mapping_sessions
                        .get_or_create(&[("mapping", st.name.clone())]),
                ),
            }
        })
        .collect()
}

/// Where a mapping's targets come from: `allocate`, `static` or `kubernetes` (empty when
/// the config in force no longer has it).
fn source_name(mapping: Option<&ValidMapping>) -> &'static str {
    match mapping {
        Some(v) if v.allocate.is_some() => "allocate",
        Some(v) => match v.source {
            ValidSource::Static(_) => "static",
            ValidSource::Kube(_) => "kubernetes",
        },
        None => "",
    }
}

/// The targets section: targets with live sessions on this replica, most first, at most
/// `PAGE_TARGETS` of them, and how many more were left out. A target is named by a sampled
/// session to it, else by the mappings that know its address.
fn target_rows(
    s: &AdminState,
    generation: &Generation,
    sample: &[SessionView],
) -> (Vec<TargetRow>, usize) {
    let by_address = generation.known.mappings_by_address();
    let mut per_target = s.live.data.ledger.per_target();
    per_target.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let targets_omitted = per_target.len().saturating_sub(PAGE_TARGETS);
    let targets = per_target
        .into_iter()
        .take(PAGE_TARGETS)
        .map(|(addr, n)| TargetRow {
            addr: Some(addr),
            name: sample
                .iter()
                .find(|v| v.target.addr == addr)
                .map(|v| {
                    format!(
                        "{}/{}/{}",
                        v.target.mapping, v.target.namespace, v.target.name
                    )
                })
                .or_else(|| {
                    by_address
                        .get(&addr)
                        .map(|ms| ms.iter().map(String::as_str).collect::<Vec<_>>().join(", "))
                })
                .unwrap_or_default(),
            sessions: n as u64,
        })
        .collect();
    (targets, targets_omitted)
}

/// The Sessions section: one row per sampled live session.
fn session_rows(sample: &[SessionView]) -> Vec<SessionRow> {
    sample
        .iter()
        .map(|v| SessionRow {
            client: v.client.to_string(),
            mapping: v.target.mapping.clone(),
            target: format!("{}/{}", v.target.namespace, v.target.name),
            target_addr: v.target.addr.to_string(),
            player: v.target.player.as_deref().map(str::to_string),
            age_seconds: v.age.as_secs_f64(),
            idle_seconds: v.idle.as_secs_f64(),
            bytes_to_target: v.stats.bytes_to_target,
            bytes_to_client: v.stats.bytes_to_client,
        })
        .collect()
}

/// Live sessions per data-port protocol, every protocol listed (`sessions_by_protocol`).
fn sessions_by_protocol(m: &Metrics) -> Vec<(String, u64)> {
    crate::model::Protocol::ALL
        .iter()
        .map(|p| {
            let n = m
                .sessions_by_protocol
                .get_or_create(&[("protocol", p.as_str())])
                .get();
            (p.as_str().to_string(), u64::try_from(n).unwrap_or(0))
        })
        .collect()
}

/// Config reloads since start and the generation in force.
fn reload_state(generation: u64, m: &Metrics) -> ReloadState {
    ReloadState {
        generation,
        applied: result_count(&m.config_reloads, "applied"),
        rejected: result_count(&m.config_reloads, "rejected"),
        restart_required: m.config_restart_required.get() != 0,
    }
}

/// The token format, the keys in force, their reloads and the tokens held.
fn key_state(config: &ValidConfig, m: &Metrics) -> KeyState {
    KeyState {
        format: match config.token_format {
            TokenFormat::Uuid => "uuid",
            TokenFormat::Sealed => "sealed",
        }
        .to_string(),
        keys_in_force: gauge_value(&m.token_keys),
        reloads_applied: result_count(&m.token_key_reloads, "applied"),
        reloads_rejected: result_count(&m.token_key_reloads, "rejected"),
        tokens_active: gauge_value(&m.tokens_active),
    }
}

/// The config's name of a load-balancing strategy.
fn load_balancing_name(lb: &LoadBalancing) -> &'static str {
    match lb {
        LoadBalancing::LeastSessions => "leastSessions",
        LoadBalancing::First => "first",
        LoadBalancing::RoundRobin => "roundRobin",
        LoadBalancing::Random => "random",
        LoadBalancing::LabelArithmetic { .. } => "labelArithmetic",
    }
}
