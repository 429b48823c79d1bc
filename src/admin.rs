//! Admin HTTP server: `/metrics` (Prometheus text), `/healthz` (the process answers) and
//! `/readyz` (listeners bound, every resource source synced once, not draining). Read-only;
//! it binds `bindAddress` like the other listeners and must not be exposed publicly.

use std::sync::Arc;
use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::metrics::Metrics;
use crate::resolve::Resolver;
use crate::session::Ledger;

/// Readiness inputs. Liveness does not depend on any of them.
pub struct Readiness {
    /// Latched once every listener is bound.
    pub listening: AtomicBool,
    pub draining: Arc<AtomicBool>,
    pub resolver: Arc<RwLock<Arc<Resolver>>>,
}

impl Readiness {
    /// `Ok` when ready, otherwise why not.
    pub fn check(&self) -> Result<(), &'static str> {
        if self.draining.load(Ordering::Relaxed) {
            return Err("draining");
        }
        if !self.listening.load(Ordering::Relaxed) {
            return Err("listeners not bound");
        }
        let synced = match self.resolver.read() {
            Ok(r) => r.synced(),
            Err(p) => p.into_inner().synced(),
        };
        if !synced {
            return Err("resource caches not synced");
        }
        Ok(())
    }
}

#[derive(Clone)]
struct AdminState {
    metrics: Arc<Metrics>,
    ledger: Arc<Ledger>,
    readiness: Arc<Readiness>,
}

pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    ledger: Arc<Ledger>,
    readiness: Arc<Readiness>,
    mut shutdown: watch::Receiver<bool>,
) {
    let app = Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(AdminState {
            metrics,
            ledger,
            readiness,
        });
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
    s.metrics.sessions_active.set(s.ledger.active() as i64);
    s.metrics.caches_synced.set(i64::from(
        s.readiness.check() != Err("resource caches not synced"),
    ));
    s.metrics
        .draining
        .set(i64::from(s.readiness.draining.load(Ordering::Relaxed)));
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.encode(),
    )
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
