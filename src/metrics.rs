//! Metrics: one registry, every family registered once at start-up, handles passed by `Arc`.
//! Label values are small closed enums (direction, reason, result, protocol) or mapping names
//! from the config, never client addresses, tokens, player ids or target names. The data
//! plane does not touch these per datagram: workers count locally and add their deltas here
//! periodically (see `shell::udp`).
//!
//! Every family is named `udp_director_*`, except the process families (`process_*`, the
//! name every Prometheus client library gives them), which the admin server sets from
//! `/proc/self` at each scrape.
//!
//! Owns the families and their names. Must not import anything but the vocabulary (`model`,
//! `util`): metrics know what is counted, never who counts it.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

use crate::model::{
    AllocationResult, AuthFailure, CloseReason, DropReason, ErrorCode, FastPathFailure,
    PingOutcome, ProofOutcome, Protocol, QueryClose, Refusal, Rejection, TcpClose, TcpRefusal,
};

/// The git revision the binary was built from (`build.rs`: `UDP_DIRECTOR_REVISION` from the
/// environment, else `git rev-parse`), or `unknown` (a source tarball, a clone without git).
pub(crate) const REVISION: &str = match option_env!("UDP_DIRECTOR_REVISION") {
    Some(r) => r,
    None => "unknown",
};

/// One label, static key and value.
pub(crate) type Label = [(&'static str, &'static str); 1];
/// `mapping` label: a name from the operator's config (bounded by the config, never by clients).
pub(crate) type MappingLabel = [(&'static str, String); 1];
/// `mapping` and `result` labels (`result`: the closed set of `queries_total`).
pub(crate) type MappingResult = [(&'static str, String); 2];
/// The name prefix of the director's own families.
const PREFIX: &str = "udp_director_";

/// Declares the metrics once: each family with its registered name, help text and (when
/// `Default` will not do) its initial value, so a family cannot exist without being
/// registered. The invocation below is the table of every family.
macro_rules! families {
    ($( $(#[$doc:meta])* $field:ident: $ty:ty = $name:literal, $help:literal $(=> $init:expr)?; )+) => {
        /// Every metric of the director. Prefix `udp_director_` is added to each name but
        /// the `process_*` ones.
        pub struct Metrics {
            registry: Registry,
            $( $(#[$doc])* pub $field: $ty, )+
            /// Handles of the closed label sets counted on hot paths, resolved once.
            pub hot: Hot,
            /// Bytes of the last `/metrics` text (sizes the next one's buffer).
            last_exposition: AtomicUsize,
        }

        impl Metrics {
            pub fn new() -> Self {
                let mut registry = Registry::default();
                $(
                    let $field: $ty = families!(@init $($init)?);
                    registry.register(full_name($name), $help, $field.clone());
                )+
                registry.register(
                    full_name("build"),
                    "Build information: the crate version and the git revision built",
                    Info::new(vec![
                        ("version", env!("CARGO_PKG_VERSION")),
                        ("revision", REVISION),
                    ]),
                );
                let mut m = Self {
                    registry,
                    $( $field, )+
                    hot: Hot::default(),
                    last_exposition: AtomicUsize::new(0),
                };
                m.hot = Hot::resolve(&m);
                zero_labels(&m);
                m
            }
        }
    };
    (@init) => { Default::default() };
    (@init $init:expr) => { $init };
}

families! {
    sessions_active: Gauge = "sessions_active", "Live sessions, UDP and TCP (sessions_by_protocol splits them)";
    sessions_created: Counter = "sessions_created", "UDP sessions created (TCP: tcp_sessions_created)";
    sessions_closed: Family<Label, Counter> = "sessions_closed", "UDP sessions closed, by reason (TCP: tcp_sessions_closed)";
    /// `session_duration_seconds{protocol}`: observed when a session ends.
    session_duration: Family<Label, Histogram> = "session_duration_seconds", "How long sessions lasted, from opening to closing, by data-port protocol (udp, tcp)"
        => Family::new_with_constructor(duration_histogram);
    sessions_refused: Family<Label, Counter> = "sessions_refused", "New sessions refused, by reason (session_cap: maxSessions reached; client_ip_cap: maxSessionsPerClientIp; draining: shutting down)";
    session_resets: Counter = "session_resets", "Live sessions moved to another target by a reset (a token for another target)";
    sessions_moved: Counter = "sessions_moved", "Sessions taken over by a new client address redeeming their token (NAT rebinding; one session per token)";
    /// `sessions_by_protocol{protocol}`: live sessions per data-port protocol.
    sessions_by_protocol: Family<Label, Gauge> = "sessions_by_protocol", "Live sessions per data-port protocol (udp, tcp); their sum is sessions_active";
    datagrams: Family<Label, Counter> = "datagrams", "Datagrams proxied, by direction";
    /// `datagram_bytes_total{direction}` (was `bytes_total`).
    bytes: Family<Label, Counter> = "datagram_bytes", "UDP payload bytes proxied, by direction (TCP: tcp_bytes)";
    drops: Family<Label, Counter> = "datagrams_dropped", "Datagrams dropped, by reason";
    path_challenges: Family<Label, Counter> = "path_challenges", "Proofs of address, by outcome (sent: CHALLENGE sent; proved: a RESPONSE completed an open, move or resume; bad_response, late_response; over_budget: 10/s per client network or pathChallengesPerSecond spent; too_large: the challenge would outgrow the datagram)";
    pings: Family<Label, Counter> = "pings", "PINGs, by outcome (answered with a PONG; over_budget: 10/s per client network or pingsPerSecond spent; short)";
    tokens_issued: Counter = "tokens_issued", "Tokens issued";
    tokens_redeemed: Counter = "tokens_redeemed", "Tokens redeemed by a datagram";
    tokens_rejected: Family<Label, Counter> = "tokens_rejected", "Token datagrams rejected, by reason";
    tokens_active: Gauge = "tokens_active", "Tokens held (issued, not yet expired or evicted)";
    token_key_reloads: Family<Label, Counter> = "token_key_reloads", "Token key source changes, by result (rejected: the keys in force stay)";
    token_keys: Gauge = "token_keys", "Sealed-token keys in force (the first seals, all open)";
    query_auth_failures: Family<Label, Counter> = "query_auth_failures", "Queries answered unauthorized, by reason (missing_ticket, malformed, algorithm, unknown_key, signature, expired, not_yet_valid, audience, issuer, subject, player_id, scope, client_ip)";
    jwks_reloads: Family<Label, Counter> = "jwks_reloads", "Ticket JWKS source changes (queryAuth), by result (rejected: the keys in force stay)";
    jwks_keys: Gauge = "jwks_keys", "Ticket verification keys (JWKS entries) in force";
    query_tls_reloads: Family<Label, Counter> = "query_tls_reloads", "queryTls certificate file changes, by result (rejected: the TLS config in force stays)";
    queries: Family<Label, Counter> = "queries", "Queries answered, by result";
    /// `mapping_queries_total{mapping,result}`: queries that named a mapping of the config.
    mapping_queries: Family<MappingResult, Counter> = "mapping_queries", "Queries answered per mapping (a resourceType in the config), by result";
    query_duration: Histogram = "query_duration_seconds", "Time from a complete request line to its answer"
        => Histogram::new(exponential_buckets(0.00005, 2.0, 15)); // 50 µs .. ~0.8 s
    query_connections: Gauge = "query_connections_active", "Open query connections";
    query_connections_closed: Family<Label, Counter> = "query_connections_closed", "Query connections closed, by reason (connection_cap, client_ip_cap: refused at accept; idle, lifetime, too_large, slow_reader, client_closed, tls_handshake)";
    allocations: Family<Label, Counter> = "allocations", "Agones allocations, by result (allocated, unallocated, contention, unusable, error, timeout, overloaded; reused: a player's allocation handed out again, no API call; rate_limited: over allocate.ratePerSecond/burst, no API call)";
    allocation_duration: Histogram = "allocation_duration_seconds", "Time from asking Agones for a GameServer to its answer (or the 2 s timeout)"
        => Histogram::new(exponential_buckets(0.001, 2.0, 13)); // 1 ms .. ~4 s
    tcp_sessions_created: Counter = "tcp_sessions_created", "Relayed TCP data sessions opened by a token line";
    tcp_sessions_closed: Family<Label, Counter> = "tcp_sessions_closed", "Relayed TCP data sessions ended, by reason (closed, idle, replaced, drained, error)";
    tcp_refused: Family<Label, Counter> = "tcp_refused", "TCP data connections closed before relaying, by reason (no byte was sent to them)";
    tcp_bytes: Family<Label, Counter> = "tcp_bytes", "Bytes relayed on TCP data ports, by direction";
    config_reloads: Family<Label, Counter> = "config_reloads", "Config reload attempts, by result";
    config_restart_required: Gauge = "config_restart_required", "1 when the config source changes keys that only a restart applies (ports, bind address, workers, buffers, maxTokens)";
    mapping_objects: Family<MappingLabel, Gauge> = "mapping_objects", "Objects cached per mapping (static mappings: endpoints); mapping names come from the config";
    mapping_synced: Family<MappingLabel, Gauge> = "mapping_synced", "1 when every cache behind the mapping has completed its first list";
    /// `mapping_sessions{mapping}`: set at each scrape.
    mapping_sessions: Family<MappingLabel, Gauge> = "mapping_sessions", "Live UDP sessions to the targets of each mapping (a target in two mappings counts in both)";
    fast_path_enabled: Gauge = "fast_path_enabled", "1 when the kernel fast path is loaded and attached (SPEC §8); 0 when off or it failed at start (fast_path_failures_total says why)";
    fast_path_sessions: Gauge = "fast_path_sessions", "Sessions whose datagrams the kernel fast path carries now";
    fast_path_datagrams: Family<Label, Counter> = "fast_path_datagrams", "Datagrams the kernel fast path carried, by direction (also counted in datagrams_total)";
    fast_path_failures: Family<Label, Counter> = "fast_path_failures", "Kernel fast path failures, by reason (at start: not_built, permission, kernel, interface, map; full: a session's legs did not fit in the map and it stayed in user space)";
    upstream_sockets: Gauge = "upstream_sockets", "Open upstream sockets (shared by sessions bound for different targets)";
    caches_synced: Gauge = "caches_synced", "1 when every resource source has synced at least once";
    draining: Gauge = "draining", "1 while shutting down";
    kube_watch_errors: Counter = "kube_watch_errors", "Errors from Kubernetes list/watch streams (API unreachable, 410 Gone, bad answers); caches keep serving";
    targets_skipped: Counter = "targets_skipped", "Matching resources skipped because no usable address or port could be read";
    memory_trims: Counter = "memory_trims", "Times free allocator memory was handed back to the kernel after the load fell by half";
    process_open_fds: Gauge = "process_open_fds", "Open file descriptors (sockets included): the scaling limit of a director";
    process_max_fds: Gauge = "process_max_fds", "The soft limit on open file descriptors (RLIMIT_NOFILE)";
    process_resident_memory: Gauge = "process_resident_memory_bytes", "Resident memory in bytes";
    process_cpu: Counter<f64, AtomicU64> = "process_cpu_seconds", "User and system CPU time spent, in seconds";
}

/// The registered name of a family: `process_*` as it is, the rest under [`PREFIX`].
fn full_name(name: &str) -> String {
    if name.starts_with("process_") {
        name.to_string()
    } else {
        format!("{PREFIX}{name}")
    }
}

/// Session durations: 1 s .. ~9 h in 16 doubling buckets (a game session is seconds to hours).
fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 2.0, 16))
}

/// Handles for the closed label sets counted on hot paths (indexed by the label enum's
/// `index()`), resolved once when the metrics are built.
#[derive(Default)]
pub struct Hot {
    /// `allocations_total{result}`, indexed by [`AllocationResult::index`].
    pub allocations: Vec<Counter>,
    /// `tcp_sessions_created_total`.
    pub tcp_sessions_created: Counter,
    /// The TCP share of `sessions_by_protocol`.
    pub tcp_sessions_active: Gauge,
    pub tcp_sessions_closed: Vec<Counter>,
    pub tcp_refused: Vec<Counter>,
    pub tcp_bytes_to_target: Counter,
    pub tcp_bytes_to_client: Counter,
    /// `session_duration_seconds{protocol}`, indexed by [`Protocol::index`].
    pub session_duration: Vec<Histogram>,
}

impl Hot {
    fn resolve(m: &Metrics) -> Self {
        Self {
            allocations: AllocationResult::ALL
                .iter()
                .map(|r| Metrics::counter(&m.allocations, "result", r.as_str()))
                .collect(),
            tcp_sessions_created: m.tcp_sessions_created.clone(),
            tcp_sessions_active: m
                .sessions_by_protocol
                .get_or_create(&[("protocol", Protocol::Tcp.as_str())])
                .clone(),
            tcp_sessions_closed: TcpClose::ALL
                .iter()
                .map(|r| Metrics::counter(&m.tcp_sessions_closed, "reason", r.as_str()))
                .collect(),
            tcp_refused: TcpRefusal::ALL
                .iter()
                .map(|r| Metrics::counter(&m.tcp_refused, "reason", r.as_str()))
                .collect(),
            tcp_bytes_to_target: Metrics::counter(&m.tcp_bytes, "direction", TO_TARGET),
            tcp_bytes_to_client: Metrics::counter(&m.tcp_bytes, "direction", TO_CLIENT),
            session_duration: Protocol::ALL
                .iter()
                .map(|p| {
                    m.session_duration
                        .get_or_create(&[("protocol", p.as_str())])
                        .clone()
                })
                .collect(),
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Prometheus text exposition of every metric.
    ///
    /// The buffer starts at the previous exposition's size, so a scrape makes one allocation
    /// instead of doubling through small ones that glibc would park in the thread's cache.
    pub fn encode(&self) -> String {
        let hint = self.last_exposition.load(Ordering::Relaxed);
        let mut out = String::with_capacity(hint.max(4096) + 1024);
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        self.last_exposition.store(out.len(), Ordering::Relaxed);
        out
    }

    /// Handle for one label value, resolved once and kept by the caller.
    pub fn counter(
        family: &Family<Label, Counter>,
        key: &'static str,
        value: &'static str,
    ) -> Counter {
        family.get_or_create(&[(key, value)]).clone()
    }
}

/// Makes every label value of the closed sets appear from the start, so dashboards and
/// alerts see zeros rather than absent series.
fn zero_labels(f: &Metrics) {
    let touch = |family: &Family<Label, Counter>,
                 key: &'static str,
                 values: &mut dyn Iterator<Item = &'static str>| {
        for v in values {
            let _ = family.get_or_create(&[(key, v)]);
        }
    };
    touch(
        &f.queries,
        "result",
        &mut ErrorCode::ALL.iter().map(|c| c.as_str()).chain(["ok"]),
    );
    touch(
        &f.query_connections_closed,
        "reason",
        &mut QueryClose::ALL.iter().map(|r| r.as_str()),
    );
    touch(
        &f.sessions_closed,
        "reason",
        &mut CloseReason::ALL.iter().map(|r| r.as_str()),
    );
    touch(
        &f.fast_path_failures,
        "reason",
        &mut FastPathFailure::ALL.iter().map(|r| r.as_str()),
    );
    touch(
        &f.fast_path_datagrams,
        "direction",
        &mut [TO_TARGET, TO_CLIENT].into_iter(),
    );
    touch(
        &f.sessions_refused,
        "reason",
        &mut Refusal::ALL.iter().map(|r| r.as_str()),
    );
    touch(
        &f.drops,
        "reason",
        &mut DropReason::ALL.iter().map(|r| r.as_str()),
    );
    touch(
        &f.tokens_rejected,
        "reason",
        &mut Rejection::ALL.iter().map(|r| r.as_str()),
    );
    touch(
        &f.path_challenges,
        "outcome",
        &mut ProofOutcome::ALL.iter().map(|r| r.as_str()),
    );
    touch(
        &f.pings,
        "outcome",
        &mut PingOutcome::ALL.iter().map(|r| r.as_str()),
    );
    for family in [&f.datagrams, &f.bytes] {
        touch(family, "direction", &mut [TO_TARGET, TO_CLIENT].into_iter());
    }
    touch(
        &f.query_auth_failures,
        "reason",
        &mut AuthFailure::ALL.iter().map(|r| r.as_str()),
    );
    for family in [
        &f.config_reloads,
        &f.token_key_reloads,
        &f.jwks_reloads,
        &f.query_tls_reloads,
    ] {
        touch(family, "result", &mut ["applied", "rejected"].into_iter());
    }
    for p in Protocol::ALL {
        let _ = f
            .sessions_by_protocol
            .get_or_create(&[("protocol", p.as_str())]);
    }
}

/// `direction` label values.
pub(crate) const TO_TARGET: &str = "client_to_target";
pub(crate) const TO_CLIENT: &str = "target_to_client";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_prefixed_names_and_zeroed_labels() {
        let m = Metrics::new();
        m.sessions_created.inc();
        let text = m.encode();
        assert!(
            text.contains("udp_director_sessions_created_total 1"),
            "{text}"
        );
        assert!(
            text.contains("udp_director_queries_total{result=\"no_match\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("udp_director_sessions_closed_total{reason=\"idle\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("udp_director_query_duration_seconds_bucket"),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "udp_director_build_info{{version=\"{}\",revision=\"{REVISION}\"}} 1",
                env!("CARGO_PKG_VERSION")
            )),
            "{text}"
        );
        for unprefixed in [
            "\nprocess_open_fds 0",
            "\nprocess_max_fds 0",
            "\nprocess_resident_memory_bytes 0",
            "\nprocess_cpu_seconds_total 0",
        ] {
            assert!(text.contains(unprefixed), "{unprefixed} in {text}");
        }
        assert!(!text.contains("udp_director_process_"), "{text}");
        for renamed in [
            "udp_director_datagram_bytes_total{direction=\"client_to_target\"} 0",
            "udp_director_tcp_bytes_total{direction=\"target_to_client\"} 0",
            "udp_director_tcp_refused_total{reason=\"late_token\"} 0",
            "udp_director_tcp_sessions_created_total 0",
            "udp_director_session_duration_seconds_count{protocol=\"udp\"} 0",
            "udp_director_session_duration_seconds_count{protocol=\"tcp\"} 0",
        ] {
            assert!(text.contains(renamed), "{renamed} in {text}");
        }
        assert!(!text.contains("udp_director_bytes_total"), "{text}");
        assert!(!text.contains("protocol=\"tcp\",reason"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
