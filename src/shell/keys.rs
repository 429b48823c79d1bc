//! Where sealed-token keys come from at run time (SPEC §7): the key file, polled by path
//! (a mounted Secret is updated by the kubelet through a symlink swap, which an inode watch
//! would miss) and applied once two reads agree, or a Secret's key `token-keys` watched
//! through the API. A changed text is parsed whole; an invalid one is rejected, logged and
//! counted, and the keys in force stay.
//!
//! The ticket JWKS (`queryAuth.jwksFile` / `jwksSecret`, key `jwks.json`) is watched the
//! same way, rejected whole when invalid.
//!
//! Owns watching key sources. Must not parse keys (`token::keys` does) or touch sessions.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use tokio::sync::watch;

use crate::k8s::watch_named_text;
use crate::k8s::{self, Connect, KubeError};
use crate::metrics::Metrics;
use crate::shell::reload::{Live, Polled, StableFile};
use crate::token::Tokens;
use crate::token::ticket::Jwks;

/// The Secret key that holds the key text.
pub(crate) const SECRET_KEY: &str = "token-keys";
/// How often the key file is read (a change applies within two polls: < 2 s).
pub(crate) const KEY_FILE_POLL: Duration = Duration::from_millis(500);

/// Applies a new key text, or keeps the keys in force; logs and counts either way.
fn apply(tokens: &Tokens, metrics: &Metrics, source: &str, text: &str) {
    let Some(ring) = tokens.key_ring() else {
        return;
    };
    match ring.replace(text) {
        Ok(set) => {
            metrics
                .token_key_reloads
                .get_or_create(&[("result", "applied")])
                .inc();
            metrics.token_keys.set(set.ids().len() as i64);
            tracing::info!(%source, keys = ?set.ids(), "token keys reloaded: the first seals, all open");
        }
        Err(e) => {
            metrics
                .token_key_reloads
                .get_or_create(&[("result", "rejected")])
                .inc();
            tracing::warn!(%source, error = %e, "token keys rejected; the keys in force stay");
        }
    }
}

/// Reads the key file every [`KEY_FILE_POLL`] and applies a changed content once two reads
/// agree. An unreadable file (mid-swap, deleted) keeps the keys in force.
pub(crate) async fn watch_file(
    tokens: Arc<Tokens>,
    metrics: Arc<Metrics>,
    path: PathBuf,
    mut shutdown: watch::Receiver<bool>,
) {
    let source = format!("file {}", path.display());
    if let Some(ring) = tokens.key_ring() {
        metrics.token_keys.set(ring.load().ids().len() as i64);
    }
    // The text read at start is in force.
    let in_force = tokio::fs::read(&path).await.ok();
    let mut file = StableFile::new(path, in_force);
    while let Some(found) = file.next(KEY_FILE_POLL, &mut shutdown).await {
        match found {
            Polled::Unchanged => {}
            Polled::Unreadable(e) => {
                tracing::warn!(%source, error = %e, "cannot read the token key file; the keys in force stay");
            }
            Polled::Changed(bytes) => {
                apply(&tokens, &metrics, &source, &String::from_utf8_lossy(&bytes));
            }
        }
    }
}

/// The key text of a Secret (its `token-keys` data, or `stringData` as some tools leave it).
fn secret_text(secret: &Secret) -> Option<String> {
    if let Some(bytes) = secret.data.as_ref().and_then(|d| d.get(SECRET_KEY)) {
        return Some(String::from_utf8_lossy(&bytes.0).into_owned());
    }
    secret
        .string_data
        .as_ref()
        .and_then(|d| d.get(SECRET_KEY))
        .cloned()
}

/// Reads the Secret's key text once at start, retrying for up to 30 s.
pub(crate) async fn fetch_secret(
    connect: &Connect,
    namespace: &str,
    name: &str,
) -> Result<String, KubeError> {
    k8s::fetch_text(connect, namespace, name, SECRET_KEY, secret_text).await
}

/// Watches one Secret (by field selector, so RBAC can limit it by `resourceNames`) and
/// applies its key text whenever it changes. A deleted Secret or a missing key keeps the
/// keys in force.
pub(crate) async fn watch_secret(
    tokens: Arc<Tokens>,
    live: Arc<Live>,
    namespace: String,
    name: String,
    mut shutdown: watch::Receiver<bool>,
) {
    let source = format!("Secret {namespace}/{name} (key {SECRET_KEY})");
    let metrics = Arc::clone(&live.metrics);
    if let Some(ring) = tokens.key_ring() {
        metrics.token_keys.set(ring.load().ids().len() as i64);
    }
    let client = tokio::select! {
        c = live.watchers.client() => c,
        _ = shutdown.changed() => return,
    };
    watch_named_text(
        Api::<Secret>::namespaced(client, &namespace),
        &name,
        &source,
        &metrics.kube_watch_errors,
        shutdown,
        secret_text,
        // The first event repeats what was fetched at start (applied again, harmless).
        |text| match text {
            Some(t) => apply(&tokens, &metrics, &source, t),
            None => {
                metrics
                    .token_key_reloads
                    .get_or_create(&[("result", "rejected")])
                    .inc();
                tracing::warn!(%source, "the Secret has no {SECRET_KEY} key; the keys in force stay");
            }
        },
    )
    .await;
}

/// The Secret key that holds a JWKS (`queryAuth.jwksSecret`).
pub(crate) const JWKS_SECRET_KEY: &str = "jwks.json";

/// Applies a new JWKS text, or keeps the keys in force; logs and counts either way.
fn apply_jwks(jwks: &Jwks, metrics: &Metrics, source: &str, text: &str) {
    match jwks.replace(text) {
        Ok(keys) => {
            metrics
                .jwks_reloads
                .get_or_create(&[("result", "applied")])
                .inc();
            metrics.jwks_keys.set(keys.len() as i64);
            tracing::info!(%source, kids = ?keys.kids(), "ticket keys (JWKS) reloaded");
        }
        Err(e) => {
            metrics
                .jwks_reloads
                .get_or_create(&[("result", "rejected")])
                .inc();
            tracing::warn!(%source, error = %e, "ticket keys (JWKS) rejected; the keys in force stay");
        }
    }
}

/// A JWKS Secret's text (its `jwks.json` data, or `stringData`).
fn jwks_secret_text(secret: &Secret) -> Option<String> {
    if let Some(bytes) = secret.data.as_ref().and_then(|d| d.get(JWKS_SECRET_KEY)) {
        return Some(String::from_utf8_lossy(&bytes.0).into_owned());
    }
    secret
        .string_data
        .as_ref()
        .and_then(|d| d.get(JWKS_SECRET_KEY))
        .cloned()
}

/// Reads the JWKS at start: the file, or the Secret (retrying for up to 30 s).
pub(crate) async fn read_jwks(
    source: &crate::config::KeySource,
    connect: &Connect,
) -> (String, Result<String, String>) {
    match source {
        crate::config::KeySource::File(path) => (
            format!("file {}", path.display()),
            tokio::fs::read_to_string(path)
                .await
                .map_err(|e| e.to_string()),
        ),
        crate::config::KeySource::Secret { namespace, name } => (
            format!("Secret {namespace}/{name} (key {JWKS_SECRET_KEY})"),
            k8s::fetch_text(connect, namespace, name, JWKS_SECRET_KEY, jwks_secret_text)
                .await
                .map_err(|e| e.to_string()),
        ),
    }
}

/// Polls the JWKS file like the token key file (a change applies within 2 s).
pub(crate) async fn watch_jwks_file(
    jwks: Arc<Jwks>,
    metrics: Arc<Metrics>,
    path: PathBuf,
    mut shutdown: watch::Receiver<bool>,
) {
    let source = format!("file {}", path.display());
    let in_force = tokio::fs::read(&path).await.ok();
    let mut file = StableFile::new(path, in_force);
    while let Some(found) = file.next(KEY_FILE_POLL, &mut shutdown).await {
        match found {
            Polled::Unchanged => {}
            Polled::Unreadable(e) => {
                tracing::warn!(%source, error = %e, "cannot read the JWKS file; the keys in force stay");
            }
            Polled::Changed(bytes) => {
                apply_jwks(&jwks, &metrics, &source, &String::from_utf8_lossy(&bytes));
            }
        }
    }
}

/// Watches the JWKS Secret and applies its `jwks.json` whenever it changes; a deleted Secret
/// or a missing key keeps the keys in force.
pub(crate) async fn watch_jwks_secret(
    jwks: Arc<Jwks>,
    live: Arc<Live>,
    namespace: String,
    name: String,
    mut shutdown: watch::Receiver<bool>,
) {
    let source = format!("Secret {namespace}/{name} (key {JWKS_SECRET_KEY})");
    let metrics = Arc::clone(&live.metrics);
    let client = tokio::select! {
        c = live.watchers.client() => c,
        _ = shutdown.changed() => return,
    };
    watch_named_text(
        Api::<Secret>::namespaced(client, &namespace),
        &name,
        &source,
        &metrics.kube_watch_errors,
        shutdown,
        jwks_secret_text,
        |text| match text {
            Some(t) => apply_jwks(&jwks, &metrics, &source, t),
            None => {
                metrics
                    .jwks_reloads
                    .get_or_create(&[("result", "rejected")])
                    .inc();
                tracing::warn!(%source, "the Secret has no {JWKS_SECRET_KEY} key; the keys in force stay");
            }
        },
    )
    .await;
}
