//! Hot reload: watches the config source (the file, or a ConfigMap's `config.yaml`) and swaps
//! a new settings generation in whole (`settings::Generation`: config, resolver, table rules,
//! query limits), or rejects it whole. Live sessions are never touched: a generation applies
//! to new queries and sessions only. What a reload may change is decided in
//! `config::reload`. Also keeps the default endpoint's precomputed route in step with the
//! caches.
//!
//! The file is polled by path (not watched by inode): a mounted ConfigMap is updated by the
//! kubelet through a symlink swap of `..data`, which an inode watch would miss. A content
//! change is applied once two reads in a row agree, so a half-written file is not applied.
//!
//! Owns watching sources and storing generations. Must not touch live sessions.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;

use tokio::sync::watch;

use crate::config::ConfigError;
use crate::config::reload::{Overrides, reconcile};
use crate::k8s::{self, Connect, KubeError, watch_named_text};
use crate::metrics::Metrics;
use crate::resolve::kube::Watchers;
use crate::settings::{Generation, Settings};
use crate::shell::udp::DataShared;

/// The key of the watched ConfigMap that holds the YAML document.
pub const CONFIGMAP_KEY: &str = "config.yaml";
/// How often the config file is read.
pub const FILE_POLL: Duration = Duration::from_millis(250);

/// Where the config comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigSource {
    File(PathBuf),
    ConfigMap { namespace: String, name: String },
}

impl fmt::Display for ConfigSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigSource::File(p) => write!(f, "file {}", p.display()),
            ConfigSource::ConfigMap { namespace, name } => {
                write!(f, "ConfigMap {namespace}/{name} (key {CONFIGMAP_KEY})")
            }
        }
    }
}

/// What a reload attempt did.
#[derive(Debug)]
pub enum Outcome {
    /// Swapped in. Lists restart-only keys it changed (kept at their running values).
    Applied { needs_restart: Vec<&'static str> },
    /// Nothing a running process can apply changed.
    Unchanged { needs_restart: Vec<&'static str> },
    /// Invalid; the running config stays.
    Rejected(ConfigError),
}

/// The live settings and what a reload needs to build and announce a new generation.
pub struct Live {
    pub settings: Arc<Settings>,
    pub overrides: Overrides,
    pub watchers: Arc<Watchers>,
    /// Woken after a swap so the workers load the new generation.
    pub data: Arc<DataShared>,
    pub metrics: Arc<Metrics>,
}

impl Live {
    pub fn new(
        settings: Arc<Settings>,
        overrides: Overrides,
        watchers: Arc<Watchers>,
        data: Arc<DataShared>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            settings,
            overrides,
            watchers,
            data,
            metrics,
        }
    }

    /// The generation in force.
    pub fn current(&self) -> Arc<Generation> {
        self.settings.load()
    }

    /// Validates a YAML document whole and applies it, logging and counting the outcome.
    pub fn apply_text(&self, text: &str, source: &ConfigSource) -> Outcome {
        let outcome = match self.overrides.load(text) {
            Err(e) => Outcome::Rejected(e),
            Ok(proposed) => self.apply(proposed),
        };
        match &outcome {
            Outcome::Rejected(e) => {
                self.count("rejected");
                tracing::warn!(%source, error = %e, "config rejected; the running config stays in force");
            }
            Outcome::Applied { needs_restart } => {
                self.count("applied");
                let g = self.current();
                tracing::info!(
                    %source,
                    generation = g.number,
                    mappings = g.config.mappings.len(),
                    "config reloaded: applies to new queries and sessions; live sessions untouched"
                );
                warn_restart(source, needs_restart);
            }
            Outcome::Unchanged { needs_restart } => {
                tracing::debug!(%source, "config source changed, running config did not");
                warn_restart(source, needs_restart);
            }
        }
        self.metrics.config_restart_required.set(i64::from(matches!(
            &outcome,
            Outcome::Applied { needs_restart } | Outcome::Unchanged { needs_restart }
                if !needs_restart.is_empty()
        )));
        outcome
    }

    fn count(&self, result: &'static str) {
        self.metrics
            .config_reloads
            .get_or_create(&[("result", result)])
            .inc();
    }

    /// Swaps in a validated config (restart-only keys are kept at their running values)
    /// as one new generation, then wakes the workers to load it.
    fn apply(&self, proposed: crate::config::ValidConfig) -> Outcome {
        let running = self.current();
        let r = reconcile(running.config.raw(), proposed.into_raw());
        if !r.changed {
            return Outcome::Unchanged {
                needs_restart: r.needs_restart,
            };
        }
        // Restart-only keys now hold their running values: check the mix once more.
        let config = match r.effective.validate() {
            Ok(c) => c,
            Err(e) => return Outcome::Rejected(e),
        };
        // Built whole first (starts watchers for new mappings; existing ones are shared).
        let next = Generation::build(config, &self.watchers, Some(&running));
        self.settings.store(next);
        self.data.wake_all();
        Outcome::Applied {
            needs_restart: r.needs_restart,
        }
    }
}

fn warn_restart(source: &ConfigSource, keys: &[&'static str]) {
    if !keys.is_empty() {
        tracing::warn!(%source, keys = ?keys, "these keys changed but need a restart; their running values stay in force");
    }
}

/// How often the default endpoint's precomputed matches are checked against the caches.
pub const DEFAULT_ROUTE_REFRESH: Duration = Duration::from_millis(100);

/// Keeps the default endpoint's route in step with the caches: every
/// [`DEFAULT_ROUTE_REFRESH`] it recomputes the route's matches if a cache behind the resolver
/// has changed since (a sum of counters when nothing did). A new config brings a route
/// computed when it was swapped in, so this only follows cache changes.
pub async fn refresh_default_route(live: Arc<Live>, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(DEFAULT_ROUTE_REFRESH);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        // One generation: the route and the resolver it was built from.
        let generation = live.current();
        if let Some(route) = &generation.rules.default_route {
            route.refresh(&generation.resolver);
        }
        // The addresses tokens may name follow the caches too.
        let caches = generation.resolver.cache_generation();
        if generation.known.built_at() != caches {
            generation
                .known
                .replace(generation.resolver.known_addresses(), caches);
        }
    }
}

/// A file polled by path (a mounted ConfigMap or Secret is swapped by the kubelet through a
/// symlink, which an inode watch would miss): [`StableFile::poll`] hands out a content once
/// two reads in a row agree (a half-written file is never applied) and it differs from the
/// last one handed out.
pub(crate) struct StableFile {
    path: PathBuf,
    applied: Option<Vec<u8>>,
    previous: Option<Vec<u8>>,
    unreadable: bool,
}

/// What one poll of a [`StableFile`] found.
pub(crate) enum Polled {
    Unchanged,
    Changed(Vec<u8>),
    /// The file cannot be read (reported once until it can be read again).
    Unreadable(std::io::Error),
}

impl StableFile {
    /// `in_force`: the content already applied (not handed out again).
    pub(crate) fn new(path: PathBuf, in_force: Option<Vec<u8>>) -> Self {
        Self {
            path,
            previous: in_force.clone(),
            applied: in_force,
            unreadable: false,
        }
    }

    /// Polls every `every` until something other than [`Polled::Unchanged`] turns up;
    /// `None` at shutdown.
    pub(crate) async fn next(
        &mut self,
        every: Duration,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Option<Polled> {
        // Reads stay `every` apart, also across calls (two agreeing reads mean a settled file).
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => return None,
            }
            match self.poll().await {
                Polled::Unchanged => {}
                found => return Some(found),
            }
        }
    }

    pub(crate) async fn poll(&mut self) -> Polled {
        let bytes = match tokio::fs::read(&self.path).await {
            Ok(b) => b,
            Err(e) => {
                let first = !self.unreadable;
                self.unreadable = true;
                return if first {
                    Polled::Unreadable(e)
                } else {
                    Polled::Unchanged
                };
            }
        };
        self.unreadable = false;
        let stable = self.previous.as_ref() == Some(&bytes);
        self.previous = Some(bytes.clone());
        if stable && self.applied.as_ref() != Some(&bytes) {
            self.applied = Some(bytes.clone());
            Polled::Changed(bytes)
        } else {
            Polled::Unchanged
        }
    }
}

/// Reads the config file every [`FILE_POLL`] and applies a changed content once two reads
/// agree. Unreadable files (mid-swap, deleted) keep the running config.
pub async fn watch_file(live: Arc<Live>, path: PathBuf, mut shutdown: watch::Receiver<bool>) {
    let source = ConfigSource::File(path.clone());
    let mut file = StableFile::new(path, None);
    while let Some(found) = file.next(FILE_POLL, &mut shutdown).await {
        match found {
            Polled::Unchanged => {}
            Polled::Unreadable(e) => {
                tracing::warn!(%source, error = %e, "cannot read the config file; the running config stays in force");
            }
            Polled::Changed(bytes) => match std::str::from_utf8(&bytes) {
                Ok(text) => {
                    live.apply_text(text, &source);
                }
                Err(e) => {
                    live.count("rejected");
                    tracing::warn!(%source, error = %e, "config file is not UTF-8; the running config stays in force");
                }
            },
        }
    }
}

/// Watches one ConfigMap (by field selector, so RBAC can limit it by `resourceNames`) and
/// applies its `config.yaml` whenever it changes. A deleted ConfigMap or a missing key keeps
/// the running config.
pub async fn watch_configmap(
    live: Arc<Live>,
    namespace: String,
    name: String,
    mut shutdown: watch::Receiver<bool>,
) {
    let source = ConfigSource::ConfigMap {
        namespace: namespace.clone(),
        name: name.clone(),
    };
    let client = tokio::select! {
        c = live.watchers.client() => c,
        _ = shutdown.changed() => return,
    };
    let what = source.to_string();
    watch_named_text(
        Api::<ConfigMap>::namespaced(client, &namespace),
        &name,
        &what,
        &live.metrics.kube_watch_errors,
        shutdown,
        |cm: &ConfigMap| cm.data.as_ref().and_then(|d| d.get(CONFIGMAP_KEY)).cloned(),
        |text| match text {
            Some(t) => {
                live.apply_text(t, &source);
            }
            None => {
                live.count("rejected");
                tracing::warn!(%source, "the ConfigMap has no {CONFIGMAP_KEY} key; the running config stays in force");
            }
        },
    )
    .await;
}

/// Reads the ConfigMap's `config.yaml` once at start, retrying for up to 30 s (an API server
/// restarting alongside the director), then failing with the last error.
pub async fn fetch_configmap(
    connect: &Connect,
    namespace: &str,
    name: &str,
) -> Result<String, KubeError> {
    k8s::fetch_text(connect, namespace, name, CONFIGMAP_KEY, |cm: &ConfigMap| {
        cm.data.as_ref().and_then(|d| d.get(CONFIGMAP_KEY)).cloned()
    })
    .await
}
