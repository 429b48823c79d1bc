//! Configuration: plain serde types with the SPEC §5 defaults ([`Config::parse`], serde
//! only), and [`Config::validate`], which turns a parsed document (with any command-line
//! overrides applied) into either a [`ValidConfig`] the rest of the program may trust, its
//! values decoded once, or one error that names the key and says what is wrong.
//!
//! Owns parsing and validation. Must not open sockets, read the clock or know how a mapping
//! is resolved; `resolve` builds its sources from a [`ValidMapping`].

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::protocol::jsonpath::CompiledPath;
use crate::protocol::query::QueryRequest;

mod expansion;
pub mod reload;
mod valid;

pub use crate::model::{ClientBinding, Protocol, TokenFormat};
pub use valid::{
    Addressing, KubeSource, PortRule, TargetPort, ValidAllocate, ValidConfig, ValidDataPort,
    ValidFastPath, ValidMapping, ValidQueryAuth, ValidQueryTls, ValidSource,
};

/// Everything that can be wrong with a configuration, phrased for the operator who wrote it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The YAML did not match the schema; serde_yaml's message names the key path and line.
    #[error("config is not valid: {0}")]
    Parse(String),
    /// The YAML parsed but a value is unusable.
    #[error("config key `{key}`: {problem}")]
    Invalid { key: String, problem: String },
}

fn invalid(key: impl Into<String>, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        problem: problem.into(),
    }
}

/// `defaultEndpoint`: a query (the SPEC §2 request, resolved for every tokenless newcomer)
/// and how many times the bytes its client sent such a session may be sent back.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DefaultEndpoint {
    #[serde(flatten)]
    pub query: QueryRequest,
    pub amplification: u32,
}

impl<'de> Deserialize<'de> for DefaultEndpoint {
    /// The query's keys and `amplification` side by side; every other key is refused by the
    /// query's own parser, by name.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let mut map = serde_yaml::Mapping::deserialize(d)?;
        let amplification = match map.remove("amplification") {
            None => defaults::amplification(),
            Some(v) => {
                u32::deserialize(v).map_err(|e| D::Error::custom(format!("amplification: {e}")))?
            }
        };
        let query =
            QueryRequest::deserialize(serde_yaml::Value::Mapping(map)).map_err(D::Error::custom)?;
        Ok(Self {
            query,
            amplification,
        })
    }
}

/// The whole configuration file. Keys are camelCase; unknown keys are rejected so that a typo
/// (`sesionTimeoutSeconds`) is an error rather than a silently ignored setting.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Config {
    #[serde(default = "defaults::bind_address")]
    pub bind_address: IpAddr,
    /// TCP query port; 0 asks the OS for a free port (useful for tests, logged at start).
    #[serde(default = "defaults::query_port")]
    pub query_port: u16,
    /// UDP data port; 0 asks the OS for a free port.
    #[serde(default = "defaults::data_port")]
    pub data_port: u16,
    /// Several data ports (SPEC §3): one token opens a session on each, towards the same
    /// target object's matching port. Replaces `dataPort` when set.
    #[serde(default)]
    pub data_ports: Option<Vec<DataPortEntry>>,
    /// Admin HTTP port; 0 asks the OS for a free port.
    #[serde(default = "defaults::admin_port")]
    pub admin_port: u16,
    /// Address the admin server binds; default: `bindAddress`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_bind_address: Option<IpAddr>,
    /// A file whose content (trimmed) is the Bearer token that opens `/sessions`, `/config`
    /// and other operator views to callers off the host (loopback callers need none). Polled:
    /// a new token applies within 2 s. Without it only loopback callers see those views.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_token_file: Option<std::path::PathBuf>,
    #[serde(
        default = "defaults::token_ttl",
        rename = "tokenTTLSeconds",
        alias = "tokenTtlSeconds"
    )]
    pub token_ttl_seconds: u64,
    #[serde(default = "defaults::session_timeout")]
    pub session_timeout_seconds: u64,
    #[serde(default = "defaults::max_sessions")]
    pub max_sessions: usize,
    #[serde(default = "defaults::drain_seconds")]
    pub drain_seconds: u64,
    #[serde(default)]
    pub single_use_tokens: bool,
    /// `uuid` (default): tokens held in this replica's memory; `sealed`: self-contained
    /// tokens any replica holding the key opens (SPEC §7).
    #[serde(default)]
    pub token_format: TokenFormat,
    /// Sealed tokens: the key file (one `<id> <base64 of 32 bytes>` a line, the first seals).
    #[serde(default)]
    pub token_keys_file: Option<std::path::PathBuf>,
    /// Sealed tokens: `NAMESPACE/NAME` of a Secret whose key `token-keys` holds the keys.
    #[serde(default)]
    pub token_keys_secret: Option<String>,
    /// Sealed tokens: how long after issue `[magic][token]` re-opens a session.
    #[serde(default = "defaults::token_resume")]
    pub token_resume_seconds: u64,
    /// `ip` (default): a token redeems only from the IP that sent its query (IPv6: the /64).
    #[serde(default)]
    pub token_client_binding: ClientBinding,
    /// Sessions one client IP (IPv6: one /64) may hold.
    #[serde(default = "defaults::max_sessions_per_client_ip")]
    pub max_sessions_per_client_ip: usize,
    /// A session whose target has not replied within this closes.
    #[serde(default = "defaults::unanswered_timeout")]
    pub unanswered_timeout_seconds: u64,
    /// Join SO_REUSEPORT groups on the query and data ports, so several director processes
    /// on one host share them.
    #[serde(default)]
    pub reuse_port: bool,
    #[serde(default = "defaults::magic")]
    pub control_packet_magic_bytes: String,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub load_balancing: LoadBalancing,
    #[serde(default)]
    pub default_endpoint: Option<DefaultEndpoint>,
    /// Challenges (proof of address, SPEC §3) this replica sends per second at most.
    #[serde(default = "defaults::path_challenges_per_second")]
    pub path_challenges_per_second: u32,
    /// PINGs this replica answers per second at most (0: none).
    #[serde(default = "defaults::pings_per_second")]
    pub pings_per_second: u32,
    /// Data-plane worker threads, each with its own SO_REUSEPORT socket; 0 = one per core.
    #[serde(default)]
    pub data_workers: usize,
    /// After the last datagram, keep polling without sleeping for this many microseconds
    /// (0 = off), yielding the CPU between polls. Trades CPU for latency: a reply that comes
    /// back within the window finds the worker awake, saving a scheduler wake-up per hop. A
    /// worker spins only while its last wait was shorter than the window
    /// ([`crate::util::busy_poll`]), so traffic with longer gaps costs at most one window per
    /// short gap; nothing while no traffic flows.
    #[serde(default = "defaults::busy_poll_micros")]
    pub busy_poll_micros: u64,
    /// SO_RCVBUF/SO_SNDBUF requested for every UDP socket (the kernel may clamp it).
    #[serde(default = "defaults::socket_buffer_bytes")]
    pub socket_buffer_bytes: usize,
    /// One info line per closed session (target `udp_director::access`).
    #[serde(default = "defaults::access_log")]
    pub access_log: bool,
    #[serde(default)]
    pub resource_query_mapping: BTreeMap<String, Mapping>,
    /// Networks (CIDRs) a token may name a target in besides the addresses its mapping
    /// knows (static endpoints, watch caches, allocations by this replica), e.g. the game
    /// servers' pod CIDR for allocating mappings resumed on other replicas.
    #[serde(default)]
    pub target_networks: Vec<String>,
    /// Player tickets (SPEC §2 "Who may ask"): where the JWKS comes from and what every
    /// ticket must carry. Needed by every mapping with `auth: ticket`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query_auth: Option<QueryAuth>,
    /// TLS on the query port, and backend callers by client certificate (SPEC §2 "Who may
    /// ask"). Without it the query port is plain TCP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query_tls: Option<QueryTls>,
    /// The kernel fast path (SPEC §8): established sessions forwarded by a TC program.
    #[serde(default)]
    pub fast_path: FastPath,
}

/// `fastPath` (SPEC §8).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FastPath {
    /// Load and attach the TC program at start (a failure is logged; user space carries all).
    #[serde(default)]
    pub enabled: bool,
    /// The interfaces client and target datagrams arrive on (the pod's interface).
    #[serde(default = "defaults::fast_path_interfaces")]
    pub interfaces: Vec<String>,
}

impl Default for FastPath {
    fn default() -> Self {
        Self {
            enabled: false,
            interfaces: defaults::fast_path_interfaces(),
        }
    }
}

/// `queryTls`: the query port's certificate, and the CA backend callers' certificates chain to.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct QueryTls {
    /// PEM certificate chain, leaf first.
    pub cert_file: std::path::PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: std::path::PathBuf,
    /// PEM CA certificates: a caller whose client certificate chains to one is a verified
    /// backend (no ticket needed; may set `clientIp` and `playerId`).
    #[serde(default)]
    pub client_ca_file: Option<std::path::PathBuf>,
}

/// `queryAuth`: how tickets are verified.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct QueryAuth {
    /// A JWKS file, re-read within 2 s of a change (like `tokenKeysFile`).
    #[serde(default)]
    pub jwks_file: Option<std::path::PathBuf>,
    /// `NAMESPACE/NAME` of a Secret whose key `jwks.json` holds the JWKS, watched.
    #[serde(default)]
    pub jwks_secret: Option<String>,
    /// The `aud` every ticket must carry.
    #[serde(default)]
    pub audience: String,
    /// The `iss` every ticket must carry, when set.
    #[serde(default)]
    pub issuer: Option<String>,
    /// Clock skew allowed on `exp`, `nbf` and `iat`.
    #[serde(default = "defaults::leeway")]
    pub leeway_seconds: u64,
}

/// Who may query a mapping (`auth`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Auth {
    /// Anyone (the default for mappings that pick from a cache).
    None,
    /// A valid ticket, or a verified backend caller (the default for `allocate:` mappings).
    Ticket,
}

/// Where sealed-token keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    File(std::path::PathBuf),
    Secret { namespace: String, name: String },
}

/// Limits on the query server and the token store.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Limits {
    #[serde(default = "defaults::query_max_bytes")]
    pub query_max_bytes: usize,
    #[serde(default = "defaults::query_idle_timeout")]
    pub query_idle_timeout_seconds: u64,
    #[serde(default = "defaults::max_query_connections")]
    pub max_query_connections: usize,
    #[serde(default = "defaults::query_rate")]
    pub query_rate_per_second: u32,
    #[serde(default = "defaults::query_burst")]
    pub query_burst: u32,
    /// A query connection is closed this long after it was accepted (after answering a
    /// request in progress), so no client holds a slot forever.
    #[serde(default = "defaults::query_connection_lifetime")]
    pub query_connection_lifetime_seconds: u64,
    /// Query connections one client network (IPv4 address, IPv6 /64) may hold at once.
    #[serde(default = "defaults::max_query_connections_per_ip")]
    pub max_query_connections_per_ip: usize,
    /// Upper bound on outstanding tokens; past it the oldest are evicted.
    #[serde(default = "defaults::max_tokens")]
    pub max_tokens: u64,
    /// How every per-IP limit counts IPv6 clients: by their first this many bits (32..=64).
    #[serde(default = "defaults::ipv6_prefix_length")]
    pub ipv6_prefix_length: u8,
    /// Connections of one TCP data port still sending their token line (each client
    /// network also holds at most `maxSessionsPerClientIp` of them).
    #[serde(default = "defaults::max_pending_tcp_lines")]
    pub max_pending_tcp_lines: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            query_max_bytes: defaults::query_max_bytes(),
            query_idle_timeout_seconds: defaults::query_idle_timeout(),
            max_query_connections: defaults::max_query_connections(),
            query_rate_per_second: defaults::query_rate(),
            query_burst: defaults::query_burst(),
            query_connection_lifetime_seconds: defaults::query_connection_lifetime(),
            max_query_connections_per_ip: defaults::max_query_connections_per_ip(),
            max_tokens: defaults::max_tokens(),
            ipv6_prefix_length: defaults::ipv6_prefix_length(),
            max_pending_tcp_lines: defaults::max_pending_tcp_lines(),
        }
    }
}

/// How one target is chosen among the resources that match a query.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(tag = "type", rename_all = "camelCase", deny_unknown_fields)]
pub enum LoadBalancing {
    /// Fewest live sessions on this director; ties go to the first by namespace/name.
    #[default]
    LeastSessions,
    /// The first match by namespace/name.
    First,
    /// Rotate through the matches in namespace/name order.
    RoundRobin,
    /// Uniformly random among the matches.
    Random,
    /// Capacity from the target's own labels or annotations: eligible when
    /// `current + sessions + overlap <= max`; the most free capacity wins.
    #[serde(rename_all = "camelCase")]
    LabelArithmetic {
        /// Label (or annotation) holding the players already on the target.
        current_label: String,
        /// Label (or annotation) holding the target's capacity.
        max_label: String,
        /// Head-room kept free on every target.
        #[serde(default)]
        overlap: u64,
    },
}

/// One entry of `resourceQueryMapping`: where the candidates for a `resourceType` come from.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Mapping {
    /// A fixed list of endpoints; no Kubernetes needed.
    #[serde(default, rename = "static")]
    pub static_endpoints: Option<Vec<StaticEndpoint>>,
    /// Kubernetes API group of the resource (`""` for the core group).
    #[serde(default)]
    pub group: Option<String>,
    #[serde(default)]
    pub version: Option<String>,
    /// Plural resource name, e.g. `gameservers`.
    #[serde(default)]
    pub resource: Option<String>,
    /// Kind of the resource (e.g. `GameServer`); only used in logs, defaults to `resource`.
    #[serde(default)]
    pub kind: Option<String>,
    /// The mapping's own namespace; also the default namespace of queries.
    #[serde(default)]
    pub namespace: Option<String>,
    /// Namespaces clients may ask for; default: only `namespace`.
    #[serde(default)]
    pub namespaces: Option<Vec<String>>,
    /// Fixed selector ANDed with every client's.
    #[serde(default)]
    pub label_selector: BTreeMap<String, String>,
    #[serde(default)]
    pub address_path: Option<String>,
    #[serde(default)]
    pub port_name: Option<String>,
    #[serde(default)]
    pub port_path: Option<String>,
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default)]
    pub service_selector_label: Option<String>,
    #[serde(default)]
    pub service_target_port_name: Option<String>,
    /// Include the target's address and port in query answers.
    #[serde(default)]
    pub expose_target_address: bool,
    /// Let clients' `statusQuery.jsonPath` use the regex functions `match()` and `search()`.
    /// Off by default: jsonpath-rust compiles the regex again for every value it tests, so
    /// one such query can cost seconds of CPU over many candidates.
    #[serde(default)]
    pub allow_regex: bool,
    /// Overrides the global `loadBalancing` for this mapping.
    #[serde(default)]
    pub load_balancing: Option<LoadBalancing>,
    /// `v2`: every datagram to this mapping's targets starts with a PROXY protocol v2 header
    /// carrying the client's address (and the query's `playerId`). Off by default.
    #[serde(default)]
    pub proxy_protocol: Option<ProxyProtocol>,
    /// Kubernetes mappings: JSONPaths of fields the cache keeps besides labels, annotations,
    /// `status` and what the address paths read (for status queries on e.g. `spec.*`).
    #[serde(default)]
    pub cache_fields: Vec<String>,
    /// Agones mappings: allocate a GameServer per query (a `GameServerAllocation`) instead of
    /// picking one from the cache.
    #[serde(default)]
    pub allocate: Option<Allocate>,
    /// Who may query this mapping: `none` or `ticket` (default: `ticket` with `allocate:`,
    /// else `none`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<Auth>,
}

/// `allocate:` on an Agones GameServer mapping (SPEC §4, "Agones allocation").
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Allocate {
    /// How Agones picks among the candidates (its default: `Packed`).
    #[serde(default)]
    pub scheduling: Scheduling,
    /// First an `Allocated` server with room in `playersList`, then a `Ready` one.
    #[serde(default)]
    pub prefer_allocated: bool,
    /// The Agones List holding player ids: a server needs one free slot in it, and the
    /// query's `playerId` is added to it on allocation.
    #[serde(default)]
    pub players_list: Option<String>,
    /// Labels and annotations Agones puts on the allocated GameServer.
    #[serde(default)]
    pub metadata: AllocationMetadata,
    /// Allocations this director runs at once for the mapping; past it, `unavailable`.
    #[serde(default)]
    pub max_in_flight: Option<usize>,
    /// Allocations per second this replica may start for the mapping (a token bucket with
    /// `burst`); past it, `rate_limited` before any API call. Default 20.
    #[serde(default)]
    pub rate_per_second: Option<u32>,
    /// The bucket's size: allocations at once after a quiet spell. Default 40.
    #[serde(default)]
    pub burst: Option<u32>,
}

/// Agones `scheduling` of a `GameServerAllocation`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
pub enum Scheduling {
    /// Fill the busiest nodes and servers first (fewer nodes, cheaper scale-down).
    #[default]
    Packed,
    /// Spread players over servers and nodes.
    Distributed,
}

/// Labels and annotations applied on allocation.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct AllocationMetadata {
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

/// Default of `allocate.maxInFlight`.
pub const ALLOCATIONS_IN_FLIGHT: usize = 64;
/// Default of `allocate.ratePerSecond` (SPEC §4).
pub const ALLOCATION_RATE: u32 = 20;
/// Default of `allocate.burst` (SPEC §4).
pub const ALLOCATION_BURST: u32 = 40;

/// One entry of `dataPorts`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DataPortEntry {
    /// The port the director listens on (0: OS-assigned).
    pub port: u16,
    /// The target's port of this name: Agones `status.ports[].name`, a pod's
    /// `containerPorts[].name`, a Service's port name, a static endpoint's `ports[].name`.
    #[serde(default)]
    pub target_port_name: Option<String>,
    /// A fixed target port instead.
    #[serde(default)]
    pub target_port: Option<u16>,
    /// `UDP` (the default) or `TCP` (a relayed connection opened by the token line).
    #[serde(default)]
    pub protocol: Option<String>,
}

/// A static endpoint's named port (`ports: [{name: voice, port: 9002}]`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NamedPort {
    pub name: String,
    pub port: u16,
}

/// `proxyProtocol` versions.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum ProxyProtocol {
    #[serde(rename = "v2")]
    V2,
}

/// A static endpoint behaves exactly like a Kubernetes object: labels, annotations and
/// `status` are matched by the same selectors and status queries.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StaticEndpoint {
    pub name: String,
    /// Defaults to the mapping's namespace.
    #[serde(default)]
    pub namespace: Option<String>,
    pub address: IpAddr,
    /// The port of every data port (and of any the endpoint does not name in `ports`).
    #[serde(default)]
    pub port: Option<u16>,
    /// Named ports, for `dataPorts` entries with `targetPortName`.
    #[serde(default)]
    pub ports: Vec<NamedPort>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    #[serde(default)]
    pub status: serde_json::Value,
}

/// Namespace a static mapping uses when it names none.
pub const DEFAULT_NAMESPACE: &str = "default";

mod defaults {
    use std::net::{IpAddr, Ipv4Addr};
    pub(super) fn bind_address() -> IpAddr {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    }
    pub(super) fn query_port() -> u16 {
        9000
    }
    pub(super) fn data_port() -> u16 {
        7777
    }
    pub(super) fn admin_port() -> u16 {
        8080
    }
    pub(super) fn token_ttl() -> u64 {
        30
    }
    pub(super) fn session_timeout() -> u64 {
        300
    }
    pub(super) fn max_sessions() -> usize {
        100_000
    }
    pub(super) fn drain_seconds() -> u64 {
        10
    }
    pub(super) fn token_resume() -> u64 {
        600
    }
    pub(super) fn max_sessions_per_client_ip() -> usize {
        256
    }
    pub(super) fn unanswered_timeout() -> u64 {
        5
    }
    pub(super) fn path_challenges_per_second() -> u32 {
        2_000
    }
    pub(super) fn pings_per_second() -> u32 {
        5_000
    }
    pub(super) fn amplification() -> u32 {
        3
    }
    pub(super) fn magic() -> String {
        "FFFFFFFF5245534554".to_string()
    }
    pub(super) fn query_max_bytes() -> usize {
        16 * 1024
    }
    pub(super) fn query_idle_timeout() -> u64 {
        10
    }
    pub(super) fn max_query_connections() -> usize {
        10_000
    }
    pub(super) fn max_pending_tcp_lines() -> usize {
        10_000
    }
    pub(super) fn query_rate() -> u32 {
        50
    }
    pub(super) fn query_burst() -> u32 {
        100
    }
    pub(super) fn query_connection_lifetime() -> u64 {
        60
    }
    pub(super) fn max_query_connections_per_ip() -> usize {
        16
    }
    pub(super) fn max_tokens() -> u64 {
        1_000_000
    }
    pub(super) fn ipv6_prefix_length() -> u8 {
        64
    }
    pub(super) fn busy_poll_micros() -> u64 {
        100
    }
    pub(super) fn fast_path_interfaces() -> Vec<String> {
        vec!["eth0".to_string()]
    }
    pub(super) fn access_log() -> bool {
        true
    }
    pub(super) fn leeway() -> u64 {
        5
    }
    pub(super) fn socket_buffer_bytes() -> usize {
        4 * 1024 * 1024
    }
}

/// Most entries of `dataPorts` (a token carries a port for each).
pub const MAX_DATA_PORTS: usize = 4;

/// Longest duration any `...Seconds` key accepts: 30 days (2 592 000 s). Deadlines are
/// clock readings plus these, so the bound keeps every one far from overflowing.
pub const MAX_SECONDS: u64 = 30 * 24 * 60 * 60;
/// Most sessions, sessions per client IP, outstanding tokens and `overlap`: 10 000 000.
pub const MAX_COUNT: u64 = 10_000_000;
/// Most query connections, and the per-IP query rate and burst: 1 000 000.
pub const MAX_CONNECTIONS: u64 = 1_000_000;
/// Longest query line: 1 MiB.
pub const MAX_QUERY_BYTES: u64 = 1024 * 1024;
/// Most data-plane worker threads per data port: 1 024 (each holds a 2 MiB receive ring).
pub const MAX_DATA_WORKERS: u64 = 1_024;
/// Longest busy-poll window: 1 s (1 000 000 µs).
pub const MAX_BUSY_POLL_MICROS: u64 = 1_000_000;
/// Largest socket buffer requested: 1 GiB (the kernel clamps it lower anyway).
pub const MAX_SOCKET_BUFFER_BYTES: u64 = 1024 * 1024 * 1024;
/// Most Agones allocations in flight per mapping: 10 000.
pub const MAX_ALLOCATIONS_IN_FLIGHT: u64 = 10_000;

/// Longest reset magic (`controlPacketMagicBytes`) accepted (SPEC §5: 1..=32 bytes).
pub const MAX_MAGIC_LEN: usize = 32;
/// Largest `defaultEndpoint.amplification`.
pub const MAX_AMPLIFICATION: u32 = 100;

impl Config {
    /// Parses a YAML document (serde only: types, defaults, unknown keys). Validate it with
    /// [`Config::validate`] once any overrides are applied.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        // An empty file is an empty mapping, not a parse error.
        let text = if text.trim().is_empty() { "{}" } else { text };
        // Alias expansion is bounded before serde builds anything (see `expansion`).
        expansion::check(text).map_err(|budget| {
            ConfigError::Parse(format!(
                "YAML aliases (`*name` of an `&name` anchor) expand this {} byte document past {budget} nodes; write the values out instead of nesting aliases",
                text.len()
            ))
        })?;
        serde_yaml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))
    }

    /// Checks every value that serde's types cannot express and decodes them. The first
    /// problem found wins.
    pub fn validate(self) -> Result<ValidConfig, ConfigError> {
        let magic = self.magic()?;
        self.check_numbers()?;
        let key_source = self.key_source()?;
        self.check_admin_port()?;
        self.check_label_arithmetic()?;
        if self.resource_query_mapping.is_empty() {
            return Err(invalid(
                "resourceQueryMapping",
                "must define at least one resource type, e.g. `echo: {static: [{name: a, address: 127.0.0.1, port: 9001}]}`",
            ));
        }
        let query_auth = self.query_auth()?;
        let (mappings, warnings) = self.mappings(query_auth.is_some())?;
        self.check_default_endpoint()?;
        let fast_path = self.fast_path()?;
        let addr = |port| SocketAddr::new(self.bind_address, port);
        let data_ports = self.data_ports()?;
        self.check_static_ports(&data_ports)?;
        let token_policy = crate::model::Policy {
            ttl: Duration::from_secs(self.token_ttl_seconds),
            resume: Duration::from_secs(self.token_resume_seconds),
            single_use: self.single_use_tokens,
            binding: self.token_client_binding,
        };
        Ok(ValidConfig {
            magic,
            token_policy,
            key_source,
            unanswered_timeout: Duration::from_secs(self.unanswered_timeout_seconds),
            token_ttl: Duration::from_secs(self.token_ttl_seconds),
            session_timeout: Duration::from_secs(self.session_timeout_seconds),
            drain: Duration::from_secs(self.drain_seconds),
            busy_poll: Duration::from_micros(self.busy_poll_micros),
            query_addr: addr(self.query_port),
            data_addr: data_ports.first().map_or(addr(self.data_port), |d| d.addr),
            data_ports,
            admin_addr: SocketAddr::new(
                self.admin_bind_address.unwrap_or(self.bind_address),
                self.admin_port,
            ),
            admin_token_file: self.admin_token_file()?,
            mappings,
            token_format: self.token_format,
            limits: self.limits.clone(),
            max_sessions: self.max_sessions,
            max_sessions_per_client_ip: self.max_sessions_per_client_ip,
            reuse_port: self.reuse_port,
            data_workers: self.data_workers,
            socket_buffer_bytes: self.socket_buffer_bytes,
            access_log: self.access_log,
            default_endpoint: self.default_endpoint.as_ref().map(|d| d.query.clone()),
            amplification: self
                .default_endpoint
                .as_ref()
                .map_or_else(defaults::amplification, |d| d.amplification),
            path_challenges_per_second: self.path_challenges_per_second,
            pings_per_second: self.pings_per_second,
            grouping: crate::model::Grouping::new(self.limits.ipv6_prefix_length)
                .unwrap_or_default(),
            target_networks: self.target_networks()?,
            query_auth,
            query_tls: self.query_tls()?,
            fast_path,
            warnings,
            raw: self,
        })
    }

    /// `adminPort` differs from `queryPort` (unless the query port is off). Query and admin
    /// are both TCP; the UDP data port may share a number with either.
    fn check_admin_port(&self) -> Result<(), ConfigError> {
        if self.query_port != 0 && self.query_port == self.admin_port {
            return Err(invalid(
                "adminPort",
                format!("{} is already used by `queryPort`", self.admin_port),
            ));
        }
        Ok(())
    }

    /// Every `labelArithmetic` (the global `loadBalancing` first, then each mapping's) names
    /// both of its labels.
    fn check_label_arithmetic(&self) -> Result<(), ConfigError> {
        for (key, lb) in std::iter::once(("loadBalancing".to_string(), &self.load_balancing)).chain(
            self.resource_query_mapping.iter().filter_map(|(name, m)| {
                m.load_balancing
                    .as_ref()
                    .map(|lb| (format!("resourceQueryMapping.{name}.loadBalancing"), lb))
            }),
        ) {
            if let LoadBalancing::LabelArithmetic {
                current_label,
                max_label,
                ..
            } = lb
                && (current_label.is_empty() || max_label.is_empty())
            {
                return Err(invalid(
                    key,
                    "labelArithmetic needs `currentLabel` and `maxLabel`",
                ));
            }
        }
        Ok(())
    }

    /// Every mapping, validated in name order, and the warnings they earn (an allocating
    /// mapping anyone may query). A `ticket` mapping needs `queryAuth` (`has_query_auth`).
    fn mappings(
        &self,
        has_query_auth: bool,
    ) -> Result<(BTreeMap<String, ValidMapping>, Vec<String>), ConfigError> {
        let mut mappings = BTreeMap::new();
        let mut warnings = Vec::new();
        for (name, mapping) in &self.resource_query_mapping {
            let valid = validate_mapping(name, mapping, &self.load_balancing)?;
            if valid.auth == Auth::Ticket && !has_query_auth {
                return Err(invalid(
                    format!("resourceQueryMapping.{name}.auth"),
                    format!(
                        "`ticket`{} needs `queryAuth` (e.g. `queryAuth: {{jwksFile: /etc/udp-director/jwks/jwks.json, audience: udp-director}}`); or set `auth: none` to let anyone query it",
                        if mapping.auth.is_none() {
                            " (the default for a mapping with `allocate:`)"
                        } else {
                            ""
                        }
                    ),
                ));
            }
            if valid.auth == Auth::None && valid.allocate.is_some() {
                warnings.push(format!(
                    "resourceQueryMapping.{name} allocates with `auth: none`: anyone who reaches the query port can allocate GameServers (SPEC §2 \"Who may ask\"); set `queryAuth` and drop `auth: none`"
                ));
            }
            mappings.insert(name.clone(), valid);
        }
        Ok((mappings, warnings))
    }

    /// `fastPath`, checked: refused in a build without the `fast-path` feature and together
    /// with `reusePort` (another process's sessions would be invisible to this one's map).
    fn fast_path(&self) -> Result<Option<ValidFastPath>, ConfigError> {
        let f = &self.fast_path;
        if !f.enabled {
            return Ok(None);
        }
        if self.reuse_port {
            return Err(invalid(
                "fastPath.enabled",
                "cannot be combined with `reusePort: true`: the program's map would hold one process's sessions while the kernel spreads datagrams over all of them",
            ));
        }
        if !cfg!(feature = "fast-path") {
            return Err(invalid(
                "fastPath.enabled",
                "this build has no kernel fast path: build with `--features fast-path` (the image is), or set `enabled: false`",
            ));
        }
        if f.interfaces.is_empty() {
            return Err(invalid(
                "fastPath.interfaces",
                "name at least one interface, e.g. `[eth0]`",
            ));
        }
        for name in &f.interfaces {
            // IFNAMSIZ is 16 with the terminating NUL.
            if name.is_empty() || name.len() > 15 || name.contains(['/', ' ', '\0']) {
                return Err(invalid(
                    "fastPath.interfaces",
                    format!("`{name}` is not an interface name (1..=15 bytes, no `/` or spaces)"),
                ));
            }
        }
        Ok(Some(ValidFastPath {
            interfaces: f.interfaces.clone(),
        }))
    }

    /// `queryAuth`, decoded: exactly one JWKS source and an audience.
    fn query_auth(&self) -> Result<Option<ValidQueryAuth>, ConfigError> {
        let Some(a) = &self.query_auth else {
            return Ok(None);
        };
        let source = match (&a.jwks_file, &a.jwks_secret) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "queryAuth.jwksFile",
                    "set either `jwksFile` or `jwksSecret`, not both",
                ));
            }
            (None, None) => {
                return Err(invalid(
                    "queryAuth",
                    "needs the keys tickets are signed with: `jwksFile: /etc/udp-director/jwks/jwks.json` or `jwksSecret: NAMESPACE/NAME` (key `jwks.json`)",
                ));
            }
            (Some(path), None) if path.as_os_str().is_empty() => {
                return Err(invalid("queryAuth.jwksFile", "must be a file path"));
            }
            (Some(path), None) => KeySource::File(path.clone()),
            (None, Some(text)) => {
                let Some((namespace, name)) = text
                    .split_once('/')
                    .filter(|(ns, n)| !ns.is_empty() && !n.is_empty() && !n.contains('/'))
                else {
                    return Err(invalid(
                        "queryAuth.jwksSecret",
                        format!("{text:?} is not NAMESPACE/NAME"),
                    ));
                };
                KeySource::Secret {
                    namespace: namespace.to_string(),
                    name: name.to_string(),
                }
            }
        };
        if a.audience.trim().is_empty() {
            return Err(invalid(
                "queryAuth.audience",
                "is required: the `aud` every ticket must carry, e.g. `udp-director`",
            ));
        }
        if a.issuer.as_deref().is_some_and(|i| i.trim().is_empty()) {
            return Err(invalid(
                "queryAuth.issuer",
                "must not be empty (leave it out to accept any `iss`)",
            ));
        }
        at_most(
            "queryAuth.leewaySeconds",
            a.leeway_seconds,
            300,
            " (5 minutes)",
        )?;
        Ok(Some(ValidQueryAuth {
            source,
            audience: a.audience.clone(),
            issuer: a.issuer.clone(),
            leeway: a.leeway_seconds,
        }))
    }

    /// `queryTls`: the files, each a path.
    fn query_tls(&self) -> Result<Option<ValidQueryTls>, ConfigError> {
        let Some(t) = &self.query_tls else {
            return Ok(None);
        };
        for (key, path) in [
            ("queryTls.certFile", Some(&t.cert_file)),
            ("queryTls.keyFile", Some(&t.key_file)),
            ("queryTls.clientCaFile", t.client_ca_file.as_ref()),
        ] {
            if path.is_some_and(|p| p.as_os_str().is_empty()) {
                return Err(invalid(
                    key,
                    "must be a PEM file path, e.g. /etc/udp-director/tls/tls.crt",
                ));
            }
        }
        Ok(Some(ValidQueryTls {
            cert_file: t.cert_file.clone(),
            key_file: t.key_file.clone(),
            client_ca_file: t.client_ca_file.clone(),
        }))
    }

    /// `adminTokenFile`: a path, if given.
    fn admin_token_file(&self) -> Result<Option<std::path::PathBuf>, ConfigError> {
        match &self.admin_token_file {
            Some(path) if path.as_os_str().is_empty() => Err(invalid(
                "adminTokenFile",
                "must be a file path, e.g. /etc/udp-director/admin/token (or leave it out)",
            )),
            other => Ok(other.clone()),
        }
    }

    /// `targetNetworks`, decoded.
    fn target_networks(&self) -> Result<Vec<crate::model::Network>, ConfigError> {
        self.target_networks
            .iter()
            .enumerate()
            .map(|(i, text)| {
                crate::model::Network::parse(text).ok_or_else(|| {
                    invalid(
                        format!("targetNetworks[{i}]"),
                        format!("{text:?} is not a network; expected e.g. \"10.4.0.0/16\" or \"fd00::/8\""),
                    )
                })
            })
            .collect()
    }

    /// `controlPacketMagicBytes`, decoded: hex of 1..=32 bytes.
    fn magic(&self) -> Result<Vec<u8>, ConfigError> {
        let magic = hex::decode(&self.control_packet_magic_bytes).map_err(|e| {
            invalid(
                "controlPacketMagicBytes",
                format!(
                    "{:?} is not hex ({e}); expected e.g. \"FFFFFFFF5245534554\"",
                    self.control_packet_magic_bytes
                ),
            )
        })?;
        if magic.is_empty() || magic.len() > MAX_MAGIC_LEN {
            return Err(invalid(
                "controlPacketMagicBytes",
                format!(
                    "must decode to 1..={MAX_MAGIC_LEN} bytes, found {}",
                    magic.len()
                ),
            ));
        }
        Ok(magic)
    }

    /// Counts and durations that must be positive or fit the token format.
    fn check_numbers(&self) -> Result<(), ConfigError> {
        if crate::model::Grouping::new(self.limits.ipv6_prefix_length).is_none() {
            return Err(invalid(
                "limits.ipv6PrefixLength",
                format!(
                    "must be {}..={} (bits of an IPv6 address counted as one client), found {}",
                    crate::model::Grouping::MIN_PREFIX,
                    crate::model::Grouping::MAX_PREFIX,
                    self.limits.ipv6_prefix_length
                ),
            ));
        }
        positive("tokenTTLSeconds", self.token_ttl_seconds)?;
        positive("sessionTimeoutSeconds", self.session_timeout_seconds)?;
        positive("maxSessions", self.max_sessions as u64)?;
        positive("limits.queryMaxBytes", self.limits.query_max_bytes as u64)?;
        positive(
            "limits.queryIdleTimeoutSeconds",
            self.limits.query_idle_timeout_seconds,
        )?;
        positive(
            "limits.maxQueryConnections",
            self.limits.max_query_connections as u64,
        )?;
        positive(
            "limits.queryRatePerSecond",
            u64::from(self.limits.query_rate_per_second),
        )?;
        positive("limits.queryBurst", u64::from(self.limits.query_burst))?;
        positive(
            "limits.queryConnectionLifetimeSeconds",
            self.limits.query_connection_lifetime_seconds,
        )?;
        positive(
            "limits.maxQueryConnectionsPerIp",
            self.limits.max_query_connections_per_ip as u64,
        )?;
        positive("limits.maxTokens", self.limits.max_tokens)?;
        positive(
            "limits.maxPendingTcpLines",
            self.limits.max_pending_tcp_lines as u64,
        )?;
        positive(
            "maxSessionsPerClientIp",
            self.max_sessions_per_client_ip as u64,
        )?;
        positive("unansweredTimeoutSeconds", self.unanswered_timeout_seconds)?;
        positive(
            "pathChallengesPerSecond",
            u64::from(self.path_challenges_per_second),
        )?;
        at_most(
            "pathChallengesPerSecond",
            u64::from(self.path_challenges_per_second),
            MAX_CONNECTIONS,
            "",
        )?;
        at_most(
            "pingsPerSecond",
            u64::from(self.pings_per_second),
            MAX_CONNECTIONS,
            "",
        )?;
        self.check_maxima()
    }

    /// Every duration and count below its documented maximum ([`MAX_SECONDS`] and friends):
    /// the data plane adds these to clock readings and sizes tables by them, so a value past
    /// the maximum would overflow a deadline (a panicking data thread) or ask for memory
    /// the process cannot have. The maxima are far above any useful setting. Sealed tokens
    /// carry the TTL in milliseconds and the resume window in seconds, 32 bits each; 30 days
    /// fits both.
    fn check_maxima(&self) -> Result<(), ConfigError> {
        self.check_second_maxima()?;
        self.check_count_maxima()?;
        self.check_mapping_maxima()
    }

    /// The durations in seconds, each at most [`MAX_SECONDS`] (30 days).
    fn check_second_maxima(&self) -> Result<(), ConfigError> {
        let l = &self.limits;
        let seconds = [
            ("tokenTTLSeconds", self.token_ttl_seconds),
            ("sessionTimeoutSeconds", self.session_timeout_seconds),
            ("drainSeconds", self.drain_seconds),
            ("tokenResumeSeconds", self.token_resume_seconds),
            ("unansweredTimeoutSeconds", self.unanswered_timeout_seconds),
            (
                "limits.queryIdleTimeoutSeconds",
                l.query_idle_timeout_seconds,
            ),
            (
                "limits.queryConnectionLifetimeSeconds",
                l.query_connection_lifetime_seconds,
            ),
        ];
        for (key, value) in seconds {
            at_most(key, value, MAX_SECONDS, " (30 days)")?;
        }
        Ok(())
    }

    /// The global counts, sizes and rates, each at most its own maximum.
    fn check_count_maxima(&self) -> Result<(), ConfigError> {
        let l = &self.limits;
        let counts = [
            ("maxSessions", self.max_sessions as u64, MAX_COUNT),
            (
                "maxSessionsPerClientIp",
                self.max_sessions_per_client_ip as u64,
                MAX_COUNT,
            ),
            ("limits.maxTokens", l.max_tokens, MAX_COUNT),
            (
                "limits.maxQueryConnections",
                l.max_query_connections as u64,
                MAX_CONNECTIONS,
            ),
            (
                "limits.queryRatePerSecond",
                u64::from(l.query_rate_per_second),
                MAX_CONNECTIONS,
            ),
            (
                "limits.queryBurst",
                u64::from(l.query_burst),
                MAX_CONNECTIONS,
            ),
            (
                "limits.maxQueryConnectionsPerIp",
                l.max_query_connections_per_ip as u64,
                MAX_CONNECTIONS,
            ),
            (
                "limits.maxPendingTcpLines",
                l.max_pending_tcp_lines as u64,
                MAX_CONNECTIONS,
            ),
            (
                "limits.queryMaxBytes",
                l.query_max_bytes as u64,
                MAX_QUERY_BYTES,
            ),
            ("dataWorkers", self.data_workers as u64, MAX_DATA_WORKERS),
            (
                "busyPollMicros",
                self.busy_poll_micros,
                MAX_BUSY_POLL_MICROS,
            ),
            (
                "socketBufferBytes",
                self.socket_buffer_bytes as u64,
                MAX_SOCKET_BUFFER_BYTES,
            ),
        ];
        for (key, value, max) in counts {
            at_most(key, value, max, "")?;
        }
        Ok(())
    }

    /// Per mapping: the `labelArithmetic` overlap (the global one, then the mapping's) and the
    /// allocation limits.
    fn check_mapping_maxima(&self) -> Result<(), ConfigError> {
        for (name, m) in &self.resource_query_mapping {
            let lb = m.load_balancing.iter().map(|lb| {
                (
                    format!("resourceQueryMapping.{name}.loadBalancing.overlap"),
                    lb,
                )
            });
            for (key, lb) in
                std::iter::once(("loadBalancing.overlap".to_string(), &self.load_balancing))
                    .chain(lb)
            {
                if let LoadBalancing::LabelArithmetic { overlap, .. } = lb {
                    at_most(&key, *overlap, MAX_COUNT, "")?;
                }
            }
            if let Some(n) = m.allocate.as_ref().and_then(|a| a.max_in_flight) {
                at_most(
                    &format!("resourceQueryMapping.{name}.allocate.maxInFlight"),
                    n as u64,
                    MAX_ALLOCATIONS_IN_FLIGHT,
                    "",
                )?;
            }
            for (field, value) in m
                .allocate
                .iter()
                .flat_map(|a| [("ratePerSecond", a.rate_per_second), ("burst", a.burst)])
            {
                if let Some(n) = value {
                    at_most(
                        &format!("resourceQueryMapping.{name}.allocate.{field}"),
                        u64::from(n),
                        MAX_CONNECTIONS,
                        "",
                    )?;
                }
            }
        }
        Ok(())
    }

    /// `defaultEndpoint` names a mapping that picks from a cache, in an allowed namespace.
    fn check_default_endpoint(&self) -> Result<(), ConfigError> {
        if let Some(DefaultEndpoint {
            query: default,
            amplification,
        }) = &self.default_endpoint
        {
            let amplification = *amplification;
            if !(1..=MAX_AMPLIFICATION).contains(&amplification) {
                return Err(invalid(
                    "defaultEndpoint.amplification",
                    format!(
                        "must be 1..={MAX_AMPLIFICATION} (times the bytes a default-endpoint client sent), found {amplification}"
                    ),
                ));
            }
            let Some(mapping) = self.resource_query_mapping.get(&default.resource_type) else {
                return Err(invalid(
                    "defaultEndpoint.resourceType",
                    format!(
                        "`{}` is not a key of resourceQueryMapping",
                        default.resource_type
                    ),
                ));
            };
            if let Some(ns) = &default.namespace
                && !allowed_namespaces(mapping).contains(ns)
            {
                return Err(invalid(
                    "defaultEndpoint.namespace",
                    format!(
                        "`{ns}` is not allowed by mapping `{}`",
                        default.resource_type
                    ),
                ));
            }
            if mapping.auth == Some(Auth::Ticket) {
                return Err(invalid(
                    "defaultEndpoint.resourceType",
                    format!(
                        "`{}` has `auth: ticket`; a default endpoint would serve it to datagrams without one — point it at a mapping with `auth: none`",
                        default.resource_type
                    ),
                ));
            }
            if default.ticket.is_some() || default.client_ip.is_some() {
                return Err(invalid(
                    "defaultEndpoint",
                    "`ticket` and `clientIp` belong to a client's query, not to the default endpoint",
                ));
            }
            if mapping.allocate.is_some() {
                return Err(invalid(
                    "defaultEndpoint.resourceType",
                    format!(
                        "`{}` allocates GameServers; a default endpoint would allocate one per tokenless datagram — point it at a mapping that picks from a cache",
                        default.resource_type
                    ),
                ));
            }
            if let Some(status) = &default.status_query {
                CompiledPath::compile(&status.json_path)
                    .map_err(|e| invalid("defaultEndpoint.statusQuery.jsonPath", e.to_string()))?;
            }
        }
        Ok(())
    }

    /// A static endpoint that cannot serve every data port would never match: say so.
    fn check_static_ports(&self, data_ports: &[ValidDataPort]) -> Result<(), ConfigError> {
        for (name, m) in &self.resource_query_mapping {
            for (i, ep) in m.static_endpoints.iter().flatten().enumerate() {
                for (j, d) in data_ports.iter().enumerate() {
                    if let TargetPort::Name(port) = &d.target
                        && ep.port.is_none()
                        && !ep.ports.iter().any(|p| p.name == *port)
                    {
                        return Err(invalid(
                            format!("resourceQueryMapping.{name}.static[{i}].ports"),
                            format!(
                                "has no port named `{port}` for dataPorts[{j}]: add it to `ports` or set `port`"
                            ),
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

impl Config {
    /// `dataPorts`, or the one-port form (`dataPort`, the mapping's own port rule).
    fn data_ports(&self) -> Result<Vec<ValidDataPort>, ConfigError> {
        let addr = |port| SocketAddr::new(self.bind_address, port);
        let Some(entries) = &self.data_ports else {
            return Ok(vec![ValidDataPort {
                addr: addr(self.data_port),
                target: TargetPort::Mapping,
                protocol: Protocol::Udp,
            }]);
        };
        if entries.is_empty() {
            return Err(invalid(
                "dataPorts",
                "must list at least one port (or use `dataPort`)",
            ));
        }
        if self.data_port != defaults::data_port() && self.data_port != entries[0].port {
            return Err(invalid(
                "dataPort",
                "set either `dataPort` or `dataPorts`, not both (the first of `dataPorts` is the main data port)",
            ));
        }
        if entries.len() > MAX_DATA_PORTS {
            return Err(invalid(
                "dataPorts",
                format!("at most {MAX_DATA_PORTS} ports"),
            ));
        }
        let mut seen = BTreeSet::new();
        let mut out = Vec::with_capacity(entries.len());
        for (i, e) in entries.iter().enumerate() {
            let protocol = self.data_port_protocol(i, e, &mut seen)?;
            let target = data_port_target(i, e)?;
            out.push(ValidDataPort {
                addr: addr(e.port),
                target,
                protocol,
            });
        }
        Ok(out)
    }

    /// Entry `i`'s protocol: UDP or TCP, the first one UDP, no number twice per protocol,
    /// and a TCP port never the query or admin port.
    fn data_port_protocol(
        &self,
        i: usize,
        e: &DataPortEntry,
        seen: &mut BTreeSet<(Protocol, u16)>,
    ) -> Result<Protocol, ConfigError> {
        let key = |field: &str| format!("dataPorts[{i}].{field}");
        let protocol = match e.protocol.as_deref() {
            None => Protocol::Udp,
            Some(p) if p.eq_ignore_ascii_case("udp") => Protocol::Udp,
            Some(p) if p.eq_ignore_ascii_case("tcp") => Protocol::Tcp,
            Some(p) => {
                return Err(invalid(
                    key("protocol"),
                    format!("{p:?} is not a data port protocol; use `UDP` or `TCP`"),
                ));
            }
        };
        if i == 0 && protocol == Protocol::Tcp {
            return Err(invalid(
                key("protocol"),
                "the first data port is the main UDP port (resets, the default endpoint); list TCP ports after it",
            ));
        }
        if e.port != 0 && !seen.insert((protocol, e.port)) {
            return Err(invalid(
                key("port"),
                format!("{} {} is listed twice", protocol.as_str(), e.port),
            ));
        }
        if protocol == Protocol::Tcp
            && e.port != 0
            && (e.port == self.query_port || e.port == self.admin_port)
        {
            return Err(invalid(
                key("port"),
                format!(
                    "TCP {} is already the {} port",
                    e.port,
                    if e.port == self.query_port {
                        "query"
                    } else {
                        "admin"
                    }
                ),
            ));
        }
        Ok(protocol)
    }

    /// The sealed-token key source, checked against `tokenFormat`.
    fn key_source(&self) -> Result<Option<KeySource>, ConfigError> {
        let secret = match &self.token_keys_secret {
            None => None,
            Some(text) => {
                let Some((namespace, name)) = text
                    .split_once('/')
                    .filter(|(ns, n)| !ns.is_empty() && !n.is_empty() && !n.contains('/'))
                else {
                    return Err(invalid(
                        "tokenKeysSecret",
                        format!("{text:?} is not NAMESPACE/NAME"),
                    ));
                };
                Some(KeySource::Secret {
                    namespace: namespace.to_string(),
                    name: name.to_string(),
                })
            }
        };
        let source = match (&self.token_keys_file, secret) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "tokenKeysFile",
                    "set either `tokenKeysFile` or `tokenKeysSecret` (--token-keys-secret), not both",
                ));
            }
            (Some(path), None) => Some(KeySource::File(path.clone())),
            (None, secret) => secret,
        };
        match (self.token_format, &source) {
            (TokenFormat::Sealed, None) => Err(invalid(
                "tokenFormat",
                "`sealed` needs its keys: set `tokenKeysFile` (or --token-keys-secret NAMESPACE/NAME)",
            )),
            (TokenFormat::Uuid, Some(_)) => Err(invalid(
                if self.token_keys_file.is_some() {
                    "tokenKeysFile"
                } else {
                    "tokenKeysSecret"
                },
                "token keys are only used with `tokenFormat: sealed`",
            )),
            _ => Ok(source),
        }
    }
}

/// Entry `i`'s target port: by name, fixed, or (the first entry only) the mapping's own.
fn data_port_target(i: usize, e: &DataPortEntry) -> Result<TargetPort, ConfigError> {
    let key = |field: &str| format!("dataPorts[{i}].{field}");
    let target = match (&e.target_port_name, e.target_port) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                key("targetPortName"),
                "give `targetPortName` or `targetPort`, not both",
            ));
        }
        (Some(name), None) if name.is_empty() => {
            return Err(invalid(key("targetPortName"), "must not be empty"));
        }
        (Some(name), None) => TargetPort::Name(name.clone()),
        (None, Some(0)) => {
            return Err(invalid(key("targetPort"), "must be 1..=65535, found 0"));
        }
        (None, Some(p)) => TargetPort::Fixed(p),
        (None, None) if i == 0 => TargetPort::Mapping,
        (None, None) => {
            return Err(invalid(
                key("targetPortName"),
                "a second data port needs `targetPortName` (e.g. `voice`) or `targetPort`",
            ));
        }
    };
    Ok(target)
}

/// The namespaces a mapping lets clients ask for.
pub fn allowed_namespaces(mapping: &Mapping) -> BTreeSet<String> {
    match &mapping.namespaces {
        Some(list) if !list.is_empty() => list.iter().cloned().collect(),
        _ => std::iter::once(mapping_namespace(mapping).to_string()).collect(),
    }
}

/// The namespace queries default to for a mapping.
pub fn mapping_namespace(mapping: &Mapping) -> &str {
    mapping.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE)
}

fn at_most(key: &str, value: u64, max: u64, unit: &str) -> Result<(), ConfigError> {
    if value > max {
        Err(invalid(
            key,
            format!("must be at most {max}{unit}, found {value}"),
        ))
    } else {
        Ok(())
    }
}

fn positive(key: &str, value: u64) -> Result<(), ConfigError> {
    if value == 0 {
        Err(invalid(key, "must be greater than 0"))
    } else {
        Ok(())
    }
}

/// One mapping: its name, its source, its namespaces, then its `allocate:`; the first problem
/// wins. A mapping without its own `loadBalancing` takes `global_lb`.
fn validate_mapping(
    name: &str,
    mapping: &Mapping,
    global_lb: &LoadBalancing,
) -> Result<ValidMapping, ConfigError> {
    if name.is_empty() {
        return Err(invalid(
            "resourceQueryMapping",
            "a resource type name must not be empty",
        ));
    }
    let source = mapping_source(name, mapping)?;
    check_namespaces(name, mapping)?;
    Ok(ValidMapping {
        name: name.to_string(),
        default_namespace: mapping_namespace(mapping).to_string(),
        allowed: allowed_namespaces(mapping),
        fixed_labels: mapping.label_selector.clone(),
        expose_address: mapping.expose_target_address,
        allow_regex: mapping.allow_regex,
        proxy_protocol: mapping.proxy_protocol == Some(ProxyProtocol::V2),
        allocate: match &mapping.allocate {
            Some(a) => Some(validate_allocate(name, mapping, a, &source)?),
            None => None,
        },
        load_balancing: mapping
            .load_balancing
            .clone()
            .unwrap_or_else(|| global_lb.clone()),
        auth: mapping.auth.unwrap_or(if mapping.allocate.is_some() {
            Auth::Ticket
        } else {
            Auth::None
        }),
        source,
    })
}

/// Where a mapping's targets come from: its `static` endpoints (sorted) or a Kubernetes
/// resource, never both and never neither.
fn mapping_source(name: &str, mapping: &Mapping) -> Result<ValidSource, ConfigError> {
    let key = |field: &str| format!("resourceQueryMapping.{name}.{field}");
    let is_kube = mapping.resource.is_some() || mapping.version.is_some();
    match (&mapping.static_endpoints, is_kube) {
        (Some(_), true) => Err(invalid(
            key("static"),
            "a mapping is either `static` or a Kubernetes resource (group/version/resource), not both",
        )),
        (None, false) => Err(invalid(
            format!("resourceQueryMapping.{name}"),
            "needs either `static: [...]` endpoints or a Kubernetes `version` and `resource`",
        )),
        (None, true) => Ok(ValidSource::Kube(validate_kube(name, mapping)?)),
        (Some(endpoints), false) => {
            if !mapping.cache_fields.is_empty() {
                return Err(invalid(
                    key("cacheFields"),
                    "only applies to Kubernetes mappings (a static endpoint keeps everything)",
                ));
            }
            validate_static(name, mapping, endpoints)?;
            let mut endpoints = endpoints.clone();
            // Deterministic order for `first`, round-robin and tie-breaking.
            endpoints.sort_by(|a, b| {
                let ns = |e: &StaticEndpoint| {
                    e.namespace
                        .clone()
                        .unwrap_or_else(|| mapping_namespace(mapping).to_string())
                };
                (ns(a), &a.name).cmp(&(ns(b), &b.name))
            });
            Ok(ValidSource::Static(endpoints))
        }
    }
}

/// `namespaces`, when given, includes the mapping's own `namespace` and no empty name.
fn check_namespaces(name: &str, mapping: &Mapping) -> Result<(), ConfigError> {
    let key = |field: &str| format!("resourceQueryMapping.{name}.{field}");
    if let Some(list) = &mapping.namespaces {
        if let Some(ns) = &mapping.namespace
            && !list.contains(ns)
        {
            return Err(invalid(
                key("namespaces"),
                format!("must include the mapping's own namespace `{ns}`"),
            ));
        }
        if list.iter().any(|n| n.is_empty()) {
            return Err(invalid(key("namespaces"), "must not contain an empty name"));
        }
    }
    Ok(())
}

/// `allocate:` only makes sense on Agones GameServers addressed the way an allocation answers
/// (`status.address` and a port by name or a fixed one), and replaces cache-side choices.
fn validate_allocate(
    name: &str,
    m: &Mapping,
    a: &Allocate,
    source: &ValidSource,
) -> Result<ValidAllocate, ConfigError> {
    check_allocating_mapping(name, m, source)?;
    check_allocate_settings(name, a)?;
    Ok(ValidAllocate {
        scheduling: a.scheduling,
        prefer_allocated: a.prefer_allocated,
        players_list: a.players_list.clone(),
        metadata: a.metadata.clone(),
        max_in_flight: a.max_in_flight.unwrap_or(ALLOCATIONS_IN_FLIGHT),
        rate_per_second: a.rate_per_second.unwrap_or(ALLOCATION_RATE),
        burst: a.burst.unwrap_or(ALLOCATION_BURST),
    })
}

/// The mapping around `allocate:`: an Agones GameServer resource, addressed by
/// `status.address` and a port by name (or a fixed one), with no `loadBalancing` or
/// `cacheFields` (Agones chooses, and nothing is cached).
fn check_allocating_mapping(
    name: &str,
    m: &Mapping,
    source: &ValidSource,
) -> Result<(), ConfigError> {
    let key = |field: &str| format!("resourceQueryMapping.{name}.{field}");
    let ValidSource::Kube(k) = source else {
        return Err(invalid(
            key("allocate"),
            "only applies to Agones GameServer mappings, not `static` endpoints",
        ));
    };
    if k.group != "agones.dev" || k.resource != "gameservers" {
        return Err(invalid(
            key("allocate"),
            format!(
                "allocates Agones GameServers: needs `group: agones.dev` and `resource: gameservers`, found `{}`/`{}`",
                k.group, k.resource
            ),
        ));
    }
    match &k.address {
        Addressing::Direct { path, port } => {
            if !matches!(path, CompiledPath::Keys(keys) if keys == &["status", "address"]) {
                return Err(invalid(
                    key("addressPath"),
                    format!(
                        "an allocation answers with `status.address`; use `addressPath: status.address`, found `{}`",
                        m.address_path.as_deref().unwrap_or_default()
                    ),
                ));
            }
            if matches!(port, PortRule::Path(_)) {
                return Err(invalid(
                    key("portPath"),
                    "an allocation answers with `status.ports`; use `portName` (or a fixed `port`)",
                ));
            }
        }
        Addressing::Service { .. } => {
            return Err(invalid(
                key("serviceSelectorLabel"),
                "an allocation answers with the GameServer's own address; use `addressPath: status.address` + `portName`",
            ));
        }
    }
    if m.load_balancing.is_some() {
        return Err(invalid(
            key("loadBalancing"),
            "Agones chooses the server of an allocation; use `allocate.scheduling` (Packed | Distributed)",
        ));
    }
    if !m.cache_fields.is_empty() {
        return Err(invalid(
            key("cacheFields"),
            "an allocating mapping keeps no cache (Agones is asked on every query)",
        ));
    }
    Ok(())
}

/// The `allocate:` block's own keys: `playersList`, `preferAllocated`, `metadata` and the
/// limits (`maxInFlight`, `ratePerSecond`, `burst`: omitted or at least 1).
fn check_allocate_settings(name: &str, a: &Allocate) -> Result<(), ConfigError> {
    let key = |field: &str| format!("resourceQueryMapping.{name}.{field}");
    if let Some(list) = &a.players_list
        && (list.is_empty() || list.len() > 63)
    {
        return Err(invalid(
            key("allocate.playersList"),
            "must be the name of an Agones List (1..=63 characters), e.g. `players`",
        ));
    }
    if a.prefer_allocated && a.players_list.is_none() {
        return Err(invalid(
            key("allocate.preferAllocated"),
            "needs `playersList`: without a list an Allocated server has no notion of room",
        ));
    }
    for (what, map) in [
        ("labels", &a.metadata.labels),
        ("annotations", &a.metadata.annotations),
    ] {
        if let Some(k) = map.keys().find(|k| k.is_empty()) {
            return Err(invalid(
                key(&format!("allocate.metadata.{what}")),
                format!("keys must not be empty, found {k:?}"),
            ));
        }
    }
    if a.max_in_flight == Some(0) {
        return Err(invalid(
            key("allocate.maxInFlight"),
            "must be at least 1 (omit it for the default)",
        ));
    }
    for (field, value) in [("ratePerSecond", a.rate_per_second), ("burst", a.burst)] {
        if value == Some(0) {
            return Err(invalid(
                key(&format!("allocate.{field}")),
                format!(
                    "must be at least 1 (omit it for the default: ratePerSecond {ALLOCATION_RATE}, burst {ALLOCATION_BURST})"
                ),
            ));
        }
    }
    Ok(())
}

/// A Kubernetes mapping: which resource, and exactly one way to find a target address.
fn validate_kube(name: &str, m: &Mapping) -> Result<KubeSource, ConfigError> {
    let key = |field: &str| format!("resourceQueryMapping.{name}.{field}");
    let nonempty = |field: &str, v: &Option<String>| -> Result<String, ConfigError> {
        match v {
            Some(s) if !s.trim().is_empty() => Ok(s.clone()),
            _ => Err(invalid(
                key(field),
                "is required for a Kubernetes mapping, e.g. `v1`, `pods`",
            )),
        }
    };
    let version = nonempty("version", &m.version)?;
    let resource = nonempty("resource", &m.resource)?;
    if m.resource
        .as_deref()
        .is_some_and(|r| r.contains('/') || r.chars().any(char::is_uppercase))
    {
        return Err(invalid(
            key("resource"),
            "must be the lowercase plural name, e.g. `gameservers`",
        ));
    }
    let address = kube_address(name, m)?;
    let compile = |field: &str, path: &str| {
        CompiledPath::compile(path).map_err(|e| invalid(key(field), e.to_string()))
    };
    let cache_fields = m
        .cache_fields
        .iter()
        .enumerate()
        .map(|(i, p)| compile(&format!("cacheFields[{i}]"), p))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(KubeSource {
        cache_fields,
        group: m.group.clone().unwrap_or_default(),
        kind: m.kind.clone().unwrap_or_else(|| resource.clone()),
        version,
        resource,
        address,
    })
}

/// How a Kubernetes mapping finds a target address: exactly one of `addressPath` with one
/// port rule, or `serviceSelectorLabel` + `serviceTargetPortName`.
fn kube_address(name: &str, m: &Mapping) -> Result<Addressing, ConfigError> {
    let key = |field: &str| format!("resourceQueryMapping.{name}.{field}");
    let direct = m.address_path.is_some();
    let service = m.service_selector_label.is_some() || m.service_target_port_name.is_some();
    let compile = |field: &str, path: &str| {
        CompiledPath::compile(path).map_err(|e| invalid(key(field), e.to_string()))
    };
    let address = match (direct, service) {
        (true, true) => {
            return Err(invalid(
                key("addressPath"),
                "use either `addressPath` + a port, or `serviceSelectorLabel` + `serviceTargetPortName`, not both",
            ));
        }
        (false, false) => {
            return Err(invalid(
                format!("resourceQueryMapping.{name}"),
                "needs an address: `addressPath: status.address` with `portName`, `portPath` or `port`, or `serviceSelectorLabel` + `serviceTargetPortName`",
            ));
        }
        (true, false) => {
            let ports = [
                m.port_name.is_some(),
                m.port_path.is_some(),
                m.port.is_some(),
            ];
            if ports.iter().filter(|p| **p).count() != 1 {
                return Err(invalid(
                    key("portName"),
                    "give exactly one of `portName`, `portPath` or `port` with `addressPath`",
                ));
            }
            if m.port == Some(0) {
                return Err(invalid(key("port"), "must be 1..=65535, found 0"));
            }
            let path = compile("addressPath", m.address_path.as_deref().unwrap_or_default())?;
            let port = match (&m.port_name, &m.port_path, m.port) {
                (Some(name), None, None) => PortRule::Name(name.clone()),
                (None, Some(p), None) => PortRule::Path(compile("portPath", p)?),
                (None, None, Some(p)) => PortRule::Fixed(p),
                _ => {
                    return Err(invalid(
                        key("portName"),
                        "give exactly one of `portName`, `portPath` or `port` with `addressPath`",
                    ));
                }
            };
            Addressing::Direct { path, port }
        }
        (false, true) => {
            let (Some(label), Some(port_name)) =
                (&m.service_selector_label, &m.service_target_port_name)
            else {
                return Err(invalid(
                    key("serviceSelectorLabel"),
                    "`serviceSelectorLabel` and `serviceTargetPortName` go together",
                ));
            };
            if m.port_name.is_some() || m.port_path.is_some() || m.port.is_some() {
                return Err(invalid(
                    key("serviceTargetPortName"),
                    "service-based addressing takes its port from the Service; remove `portName`/`portPath`/`port`",
                ));
            }
            Addressing::Service {
                label: label.clone(),
                port_name: port_name.clone(),
            }
        }
    };
    Ok(address)
}

fn validate_static(
    name: &str,
    mapping: &Mapping,
    endpoints: &[StaticEndpoint],
) -> Result<(), ConfigError> {
    if endpoints.is_empty() {
        return Err(invalid(
            format!("resourceQueryMapping.{name}.static"),
            "must list at least one endpoint, e.g. `- {name: a, address: 127.0.0.1, port: 9001}`",
        ));
    }
    let allowed = allowed_namespaces(mapping);
    let mut seen = BTreeSet::new();
    for (i, ep) in endpoints.iter().enumerate() {
        let key = |field: &str| format!("resourceQueryMapping.{name}.static[{i}].{field}");
        if ep.name.is_empty() {
            return Err(invalid(key("name"), "must not be empty"));
        }
        match (ep.port, ep.ports.is_empty()) {
            (Some(0), _) => return Err(invalid(key("port"), "must be 1..=65535, found 0")),
            (None, true) => {
                return Err(invalid(
                    key("port"),
                    "is required (or `ports: [{name: default, port: 9001}]`)",
                ));
            }
            _ => {}
        }
        let mut names = BTreeSet::new();
        for (j, p) in ep.ports.iter().enumerate() {
            if p.port == 0 {
                return Err(invalid(
                    key(&format!("ports[{j}].port")),
                    "must be 1..=65535, found 0",
                ));
            }
            if p.name.is_empty() || !names.insert(p.name.as_str()) {
                return Err(invalid(
                    key(&format!("ports[{j}].name")),
                    format!("must be a non-empty name used once, found {:?}", p.name),
                ));
            }
        }
        if ep.address.is_unspecified() || ep.address.is_multicast() {
            return Err(invalid(
                key("address"),
                format!("{} cannot be a unicast target", ep.address),
            ));
        }
        let ns = ep
            .namespace
            .as_deref()
            .unwrap_or(mapping_namespace(mapping));
        if !allowed.contains(ns) {
            return Err(invalid(
                key("namespace"),
                format!("`{ns}` is not among the mapping's namespaces"),
            ));
        }
        if !seen.insert((ns.to_string(), ep.name.clone())) {
            return Err(invalid(
                key("name"),
                format!("duplicate endpoint name `{}` in namespace `{ns}`", ep.name),
            ));
        }
        if !(ep.status.is_null() || ep.status.is_object()) {
            return Err(invalid(key("status"), "must be a mapping of fields"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
