//! The `udp-director` binary: CLI → config → `app::run`. The only place `anyhow` is used.
//!
//! Owns the command line and the process exit. Must not hold logic the tests cannot reach through `app`.

// No panics on paths a client, a config or the API server can reach: errors or counted drops.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use tracing_subscriber::EnvFilter;

use udp_director::app::StartOptions;
use udp_director::config::reload::Overrides;
use udp_director::k8s::Connect;
use udp_director::shell::reload::{self, ConfigSource};

/// Kubernetes-native UDP session director for game servers.
///
/// Every flag can also be set through the environment variable shown; flags override the
/// config file.
#[derive(Debug, Parser)]
#[command(name = "udp-director", version, about)]
struct Cli {
    /// Path of the YAML config file.
    #[arg(
        long,
        env = "UDP_DIRECTOR_CONFIG",
        default_value = "/etc/udp-director/config.yaml"
    )]
    config: PathBuf,
    /// Log format: human-readable text or one JSON object per line.
    #[arg(long, env = "UDP_DIRECTOR_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Overrides `bindAddress`.
    #[arg(long, env = "UDP_DIRECTOR_BIND_ADDRESS")]
    bind_address: Option<IpAddr>,
    /// Overrides `queryPort` (0: OS-assigned).
    #[arg(long, env = "UDP_DIRECTOR_QUERY_PORT")]
    query_port: Option<u16>,
    /// Overrides `dataPort` (0: OS-assigned).
    #[arg(long, env = "UDP_DIRECTOR_DATA_PORT")]
    data_port: Option<u16>,
    /// Overrides `adminPort` (0: OS-assigned).
    #[arg(long, env = "UDP_DIRECTOR_ADMIN_PORT")]
    admin_port: Option<u16>,
    /// Overrides `maxSessions`.
    #[arg(long, env = "UDP_DIRECTOR_MAX_SESSIONS")]
    max_sessions: Option<usize>,
    /// Overrides `sessionTimeoutSeconds`.
    #[arg(long, env = "UDP_DIRECTOR_SESSION_TIMEOUT_SECONDS")]
    session_timeout_seconds: Option<u64>,
    /// Overrides `tokenTTLSeconds`.
    #[arg(long, env = "UDP_DIRECTOR_TOKEN_TTL_SECONDS")]
    token_ttl_seconds: Option<u64>,
    /// Overrides `drainSeconds`.
    #[arg(long, env = "UDP_DIRECTOR_DRAIN_SECONDS")]
    drain_seconds: Option<u64>,
    /// Overrides `dataWorkers` (0: one per core).
    #[arg(long, env = "UDP_DIRECTOR_DATA_WORKERS")]
    data_workers: Option<usize>,
    /// Take the config from this ConfigMap's `config.yaml` key instead of `--config`, and
    /// apply its changes live (`NAMESPACE/NAME`).
    #[arg(long, env = "UDP_DIRECTOR_CONFIGMAP", value_parser = parse_configmap)]
    configmap: Option<(String, String)>,
    /// Sealed-token keys from this Secret's `token-keys` key, watched through the API
    /// (`NAMESPACE/NAME`; instead of `tokenKeysFile`).
    #[arg(long, env = "UDP_DIRECTOR_TOKEN_KEYS_SECRET")]
    token_keys_secret: Option<String>,
    /// Do not watch the config source for changes.
    #[arg(long, env = "UDP_DIRECTOR_NO_RELOAD")]
    no_reload: bool,
    /// Kubeconfig for Kubernetes-backed mappings (default: in-cluster, then KUBECONFIG).
    #[arg(long, env = "UDP_DIRECTOR_KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// Validate the config, print it with defaults filled in, and exit.
    #[arg(long)]
    check_config: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The director's allocator settings, before any thread exists (see udp_director::util::memory).
    let allocator = udp_director::util::memory::tune_allocator();
    init_logging(cli.log_format);
    tracing::debug!(?allocator, "allocator settings");
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One message, on stderr, naming the key; no backtrace.
            eprintln!("udp-director: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let overrides = Overrides {
        bind_address: cli.bind_address,
        query_port: cli.query_port,
        data_port: cli.data_port,
        admin_port: cli.admin_port,
        max_sessions: cli.max_sessions,
        session_timeout_seconds: cli.session_timeout_seconds,
        token_ttl_seconds: cli.token_ttl_seconds,
        drain_seconds: cli.drain_seconds,
        data_workers: cli.data_workers,
        token_keys_secret: cli.token_keys_secret.clone(),
    };
    let kube = match &cli.kubeconfig {
        Some(path) => Connect::Kubeconfig(path.clone()),
        None => Connect::Infer,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("control")
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    let (source, text) = match &cli.configmap {
        Some((namespace, name)) => {
            let source = ConfigSource::ConfigMap {
                namespace: namespace.clone(),
                name: name.clone(),
            };
            let text = runtime.block_on(reload::fetch_configmap(&kube, namespace, name))?;
            (source, text)
        }
        None => {
            let text = std::fs::read_to_string(&cli.config)
                .with_context(|| format!("cannot read config file {}", cli.config.display()))?;
            (ConfigSource::File(cli.config.clone()), text)
        }
    };
    let config = overrides
        .load(&text)
        .with_context(|| format!("invalid config from {source}"))?;
    if cli.check_config {
        print!("{}", config.to_yaml()?);
        return Ok(());
    }
    let options = StartOptions {
        kube,
        overrides,
        reload: (!cli.no_reload).then_some(source),
    };
    runtime.block_on(udp_director::app::run(config, options))?;
    tracing::info!("stopped");
    Ok(())
}

fn parse_configmap(value: &str) -> Result<(String, String), String> {
    match value.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok((ns.to_string(), name.to_string()))
        }
        _ => Err(format!("expected NAMESPACE/NAME, got {value:?}")),
    }
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}
