//! A config that passed validation, with every value the program uses already decoded: the
//! magic bytes, durations, listener addresses, each mapping's namespaces, load balancing and
//! compiled JSONPaths. Nothing downstream re-derives these or needs a fallback: a
//! `ValidConfig` exists only through [`super::Config::validate`].
//!
//! Owns the decoded form of a config. Must not parse, read files beyond `load`, or resolve anything.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use crate::model::Protocol;

use super::{AllocationMetadata, Config, ConfigError, LoadBalancing, Scheduling, StaticEndpoint};
use crate::protocol::jsonpath::CompiledPath;

/// A validated config: its decoded values, which is all the rest of the program reads. The
/// document as written stays inside `config` (for `/config`, `--check-config` and deciding
/// what a reload changed).
#[derive(Debug, Clone)]
pub struct ValidConfig {
    pub(super) raw: Config,
    /// `controlPacketMagicBytes`, decoded: 1..=32 bytes.
    pub magic: Vec<u8>,
    /// TTL, resume window, single use and client binding of tokens issued from now on.
    pub token_policy: crate::model::Policy,
    /// Sealed tokens: where the keys come from (always set with `tokenFormat: sealed`).
    pub key_source: Option<super::KeySource>,
    pub unanswered_timeout: Duration,
    pub token_ttl: Duration,
    pub session_timeout: Duration,
    pub drain: Duration,
    pub busy_poll: Duration,
    pub query_addr: SocketAddr,
    /// The main data port's address (the first of `data_ports`).
    pub data_addr: SocketAddr,
    /// Every data port, in order; one token opens a session on each.
    pub data_ports: Vec<ValidDataPort>,
    /// `adminBindAddress` (default: `bindAddress`) and `adminPort`.
    pub admin_addr: SocketAddr,
    /// `adminTokenFile`: the Bearer token for operator views off the host, re-read while running.
    pub admin_token_file: Option<std::path::PathBuf>,
    pub mappings: BTreeMap<String, ValidMapping>,
    pub token_format: crate::model::TokenFormat,
    /// `limits`: the query server's and the token store's.
    pub limits: super::Limits,
    pub max_sessions: usize,
    pub max_sessions_per_client_ip: usize,
    /// Join SO_REUSEPORT groups (several processes on one host share the ports).
    pub reuse_port: bool,
    /// Data-plane worker threads; 0 = one per core.
    pub data_workers: usize,
    pub socket_buffer_bytes: usize,
    /// One access-log line per closed session.
    pub access_log: bool,
    /// Where tokenless newcomers go.
    pub default_endpoint: Option<crate::protocol::query::QueryRequest>,
    /// `defaultEndpoint.amplification` (3 when unset).
    pub amplification: u32,
    /// `pathChallengesPerSecond`: challenges this replica sends per second at most.
    pub path_challenges_per_second: u32,
    /// `pingsPerSecond`: PINGs this replica answers per second at most.
    pub pings_per_second: u32,
    /// `limits.ipv6PrefixLength`: how every per-IP limit groups IPv6 clients.
    pub grouping: crate::model::Grouping,
    /// `targetNetworks`: where tokens may name targets besides what their mapping knows.
    pub target_networks: Vec<crate::model::Network>,
    /// `queryAuth`: how tickets are verified (set whenever a mapping has `auth: ticket`).
    pub query_auth: Option<ValidQueryAuth>,
    /// `queryTls`: TLS on the query port and the backend callers' CA.
    pub query_tls: Option<ValidQueryTls>,
    /// `fastPath` when enabled (and possible in this build, without `reusePort`).
    pub fast_path: Option<ValidFastPath>,
    /// What is accepted but unwise (an allocating mapping with `auth: none`): logged as a
    /// warning at every start.
    pub warnings: Vec<String>,
}

/// An enabled `fastPath`: the interfaces to attach the TC program to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidFastPath {
    pub interfaces: Vec<String>,
}

/// A validated `queryTls`: the PEM files, read at start and re-read on change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidQueryTls {
    pub cert_file: std::path::PathBuf,
    pub key_file: std::path::PathBuf,
    pub client_ca_file: Option<std::path::PathBuf>,
}

/// A validated `queryAuth`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidQueryAuth {
    /// The JWKS file or Secret (key `jwks.json`).
    pub source: super::KeySource,
    pub audience: String,
    pub issuer: Option<String>,
    /// `leewaySeconds`.
    pub leeway: u64,
}

/// A data port and which port of the target its sessions go to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidDataPort {
    pub addr: SocketAddr,
    pub target: TargetPort,
    pub protocol: Protocol,
}

/// A data port's target port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetPort {
    /// The mapping's own port rule (`portName`/`portPath`/`port`, the Service port, a static
    /// endpoint's `port`): the one-port form and a first entry without a target port.
    Mapping,
    /// The target's port of this name.
    Name(String),
    Fixed(u16),
}

/// One `resourceQueryMapping` entry, resolved against the config's defaults.
#[derive(Debug, Clone)]
pub struct ValidMapping {
    pub name: String,
    /// The namespace queries default to.
    pub default_namespace: String,
    /// The namespaces clients may ask for (always contains `default_namespace`).
    pub allowed: BTreeSet<String>,
    /// ANDed with every client's selector.
    pub fixed_labels: BTreeMap<String, String>,
    pub expose_address: bool,
    /// `allowRegex`: clients' JSONPaths may use `match()` and `search()`.
    pub allow_regex: bool,
    /// `proxyProtocol: v2`: datagrams to this mapping's targets carry a PROXY v2 header.
    pub proxy_protocol: bool,
    /// The mapping's own, or the global one.
    pub load_balancing: LoadBalancing,
    pub source: ValidSource,
    /// `allocate:`: queries allocate an Agones GameServer instead of picking from a cache.
    pub allocate: Option<ValidAllocate>,
    /// Who may query it (`auth`, defaulted).
    pub auth: super::Auth,
}

/// A validated `allocate:` block.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidAllocate {
    pub scheduling: Scheduling,
    pub prefer_allocated: bool,
    pub players_list: Option<String>,
    pub metadata: AllocationMetadata,
    pub max_in_flight: usize,
    /// `allocate.ratePerSecond` and `allocate.burst`: the mapping's allocation bucket.
    pub rate_per_second: u32,
    pub burst: u32,
}

#[derive(Debug, Clone)]
pub enum ValidSource {
    Static(Vec<StaticEndpoint>),
    Kube(KubeSource),
}

/// A Kubernetes resource and how a target's address is read from it.
#[derive(Debug, Clone)]
pub struct KubeSource {
    /// `""` for the core group.
    pub group: String,
    pub version: String,
    /// Lowercase plural, e.g. `gameservers`.
    pub resource: String,
    /// For logs; defaults to `resource`.
    pub kind: String,
    pub address: Addressing,
    /// `cacheFields`: more of each object the cache keeps.
    pub cache_fields: Vec<CompiledPath>,
}

#[derive(Debug, Clone)]
pub enum Addressing {
    /// An IP at `path` in the object and a port by `port`.
    Direct { path: CompiledPath, port: PortRule },
    /// The Service in the namespace whose `label` equals the object's: its ClusterIP and
    /// the port named `port_name`.
    Service { label: String, port_name: String },
}

/// How a mapping finds a target's port next to `addressPath`.
#[derive(Debug, Clone)]
pub enum PortRule {
    /// Agones `status.ports[].name` → `port`, or a pod's `spec.containers[].ports[].name` →
    /// `containerPort`.
    Name(String),
    /// A JSONPath to a number (or numeric string).
    Path(CompiledPath),
    /// 1..=65535.
    Fixed(u16),
}

impl ValidConfig {
    /// Parses and validates a YAML document (no overrides; see `config::reload::Overrides`).
    pub fn from_yaml(text: &str) -> Result<Self, ConfigError> {
        Config::parse(text)?.validate()
    }

    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_yaml(&text)
    }

    /// The document as written (after overrides), for the config module's own views and
    /// reload decisions.
    pub(crate) fn raw(&self) -> &Config {
        &self.raw
    }

    pub(crate) fn into_raw(self) -> Config {
        self.raw
    }

    /// The config with every default filled in, as YAML (`--check-config`).
    pub fn to_yaml(&self) -> Result<String, ConfigError> {
        serde_yaml::to_string(&self.raw).map_err(|e| ConfigError::Parse(e.to_string()))
    }
}
