//! Admin HTTP server: `/metrics` (Prometheus text), `/healthz` (the process answers),
//! `/readyz` (listeners bound, every resource source synced once, not draining), `/config`
//! (the config in force as JSON, control-packet magic redacted) and `/sessions` (the count
//! and a bounded sample). Read-only; it binds `bindAddress` like the other listeners and must
//! not be exposed publicly (it shows client addresses and the routing config).
//!
//! Owns the admin endpoints. Must not change any state.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::reload::redacted_json;
use crate::session::Ledger;
use crate::settings::Settings;
use crate::shell::reload::Live;

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
}

/// Sessions `/sessions` lists unless `?limit=` asks for fewer (at most [`SESSIONS_MAX`]).
pub(crate) const SESSIONS_DEFAULT: usize = 100;
pub(crate) const SESSIONS_MAX: usize = 1_000;

pub(crate) async fn serve(
    listener: TcpListener,
    live: Arc<Live>,
    readiness: Arc<Readiness>,
    mut shutdown: watch::Receiver<bool>,
) {
    let app = Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/config", get(config_handler))
        .route("/sessions", get(sessions_handler))
        .with_state(AdminState { live, readiness });
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = shutdown.changed().await;
        })
        .await;
    if let Err(e) = result {
        tracing::error!(error = %e, "admin server failed");
    }
}

async fn metrics_handler(State(s): State<AdminState>) -> impl IntoResponse {
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
    m.draining.set(i64::from(s.readiness.ledger.draining()));
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        m.encode(),
    )
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

async fn readyz(State(s): State<AdminState>) -> impl IntoResponse {
    match s.readiness.check() {
        Ok(()) => (StatusCode::OK, "ready\n".to_string()),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        ),
    }
}
