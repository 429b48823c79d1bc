//! Metrics: one registry, every family registered once at start-up, handles passed by `Arc`.
//! Label values are small closed enums (direction, reason, result), never client addresses,
//! tokens or target names. The data plane does not touch these per datagram: workers count
//! locally and add their deltas here periodically (see `shell::udp`).
//!
//! Owns the families and their names. Must not import anything but the vocabulary (`model`,
//! `util`): metrics know what is counted, never who counts it.

use std::sync::atomic::{AtomicUsize, Ordering};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

use crate::model::{
    AllocationResult, AuthFailure, CloseReason, DropReason, ErrorCode, Protocol, QueryClose,
    Refusal, Rejection, TcpClose, TcpRefusal,
};

/// One label, static key and value.
pub(crate) type Label = [(&'static str, &'static str); 1];
/// Two labels, static keys and values.
pub(crate) type Label2 = [(&'static str, &'static str); 2];
/// `mapping` label: a name from the operator's config (bounded by the config, never by clients).
pub(crate) type MappingLabel = [(&'static str, String); 1];

/// Declares the metrics once: each family with its registered name, help text and (when
/// `Default` will not do) its initial value, so a family cannot exist without being
/// registered. The invocation below is the table of every family.
macro_rules! families {
    ($( $(#[$doc:meta])* $field:ident: $ty:ty = $name:literal, $help:literal $(=> $init:expr)?; )+) => {
        /// Every metric of the director. Prefix `udp_director_` is added by the registry.
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
                let mut registry = Registry::with_prefix("udp_director");
                $(
                    let $field: $ty = families!(@init $($init)?);
                    registry.register($name, $help, $field.clone());
                )+
                registry.register(
                    "build",
                    "Build information",
                    Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
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
    sessions_created: Counter = "sessions_created", "UDP sessions created";
    sessions_closed: Family<Label, Counter> = "sessions_closed", "UDP sessions closed, by reason";
    sessions_refused: Family<Label, Counter> = "sessions_refused", "New sessions refused, by reason (session_cap: maxSessions reached; client_ip_cap: maxSessionsPerClientIp; draining: shutting down)";
    session_resets: Counter = "session_resets", "Live sessions moved to another target by a reset (a token for another target)";
    sessions_moved: Counter = "sessions_moved", "Sessions taken over by a new client address redeeming their token (NAT rebinding; one session per token)";
    /// `sessions_by_protocol{protocol}`: live sessions per data-port protocol.
    sessions_by_protocol: Family<Label, Gauge> = "sessions_by_protocol", "Live sessions per data-port protocol (udp, tcp); their sum is sessions_active";
    datagrams: Family<Label, Counter> = "datagrams", "Datagrams proxied, by direction";
    bytes: Family<Label, Counter> = "bytes", "Payload bytes proxied, by direction";
    drops: Family<Label, Counter> = "datagrams_dropped", "Datagrams dropped, by reason";
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
    query_duration: Histogram = "query_duration_seconds", "Time from a complete request line to its answer"
        => Histogram::new(exponential_buckets(0.00005, 2.0, 15)); // 50 µs .. ~0.8 s
    query_connections: Gauge = "query_connections_active", "Open query connections";
    query_connections_closed: Family<Label, Counter> = "query_connections_closed", "Query connections closed, by reason (connection_cap, client_ip_cap: refused at accept; idle, lifetime, too_large, slow_reader, client_closed, tls_handshake)";
    allocations: Family<Label, Counter> = "allocations", "Agones allocations, by result (allocated, unallocated, contention, unusable, error, timeout, overloaded; reused: a player's allocation handed out again, no API call; rate_limited: over allocate.ratePerSecond/burst, no API call)";
    allocation_duration: Histogram = "allocation_duration_seconds", "Time from asking Agones for a GameServer to its answer (or the 2 s timeout)"
        => Histogram::new(exponential_buckets(0.001, 2.0, 13)); // 1 ms .. ~4 s
    tcp_sessions_created: Family<Label, Counter> = "tcp_sessions_created", "Relayed TCP data sessions opened by a token line";
    tcp_sessions_closed: Family<Label2, Counter> = "tcp_sessions_closed", "Relayed TCP data sessions ended, by reason (closed, idle, replaced, drained, error)";
    tcp_refused: Family<Label2, Counter> = "tcp_refused", "TCP data connections closed before relaying, by reason (no byte was sent to them)";
    tcp_bytes: Family<Label2, Counter> = "tcp_bytes", "Bytes relayed on TCP data ports, by direction";
    config_reloads: Family<Label, Counter> = "config_reloads", "Config reload attempts, by result";
    config_restart_required: Gauge = "config_restart_required", "1 when the config source changes keys that only a restart applies (ports, bind address, workers, buffers, maxTokens)";
    mapping_objects: Family<MappingLabel, Gauge> = "mapping_objects", "Objects cached per mapping (static mappings: endpoints); mapping names come from the config";
    mapping_synced: Family<MappingLabel, Gauge> = "mapping_synced", "1 when every cache behind the mapping has completed its first list";
    upstream_sockets: Gauge = "upstream_sockets", "Open upstream sockets (shared by sessions bound for different targets)";
    caches_synced: Gauge = "caches_synced", "1 when every resource source has synced at least once";
    draining: Gauge = "draining", "1 while shutting down";
    kube_watch_errors: Counter = "kube_watch_errors", "Errors from Kubernetes list/watch streams (API unreachable, 410 Gone, bad answers); caches keep serving";
    targets_skipped: Counter = "targets_skipped", "Matching resources skipped because no usable address or port could be read";
    memory_trims: Counter = "memory_trims", "Times free allocator memory was handed back to the kernel after the load fell by half";
}

/// Handles for the closed label sets counted on hot paths (indexed by the label enum's
/// `index()`), resolved once when the metrics are built.
#[derive(Default)]
pub struct Hot {
    /// `allocations_total{result}`, indexed by [`AllocationResult::index`].
    pub allocations: Vec<Counter>,
    /// `tcp_sessions_created_total{protocol="tcp"}`.
    pub tcp_sessions_created: Counter,
    /// The TCP share of `sessions_by_protocol`.
    pub tcp_sessions_active: Gauge,
    pub tcp_sessions_closed: Vec<Counter>,
    pub tcp_refused: Vec<Counter>,
    pub tcp_bytes_to_target: Counter,
    pub tcp_bytes_to_client: Counter,
}

impl Hot {
    fn resolve(m: &Metrics) -> Self {
        Self {
            allocations: AllocationResult::ALL
                .iter()
                .map(|r| Metrics::counter(&m.allocations, "result", r.as_str()))
                .collect(),
            tcp_sessions_created: Metrics::counter(&m.tcp_sessions_created, "protocol", "tcp"),
            tcp_sessions_active: m
                .sessions_by_protocol
                .get_or_create(&[("protocol", Protocol::Tcp.as_str())])
                .clone(),
            tcp_sessions_closed: TcpClose::ALL
                .iter()
                .map(|r| tcp_counter(&m.tcp_sessions_closed, "reason", r.as_str()))
                .collect(),
            tcp_refused: TcpRefusal::ALL
                .iter()
                .map(|r| tcp_counter(&m.tcp_refused, "reason", r.as_str()))
                .collect(),
            tcp_bytes_to_target: tcp_counter(&m.tcp_bytes, "direction", TO_TARGET),
            tcp_bytes_to_client: tcp_counter(&m.tcp_bytes, "direction", TO_CLIENT),
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

/// A handle for `{protocol="tcp", key=value}` (a function, so the family's lock guard ends
/// here and not at the end of a long expression holding several).
fn tcp_counter(
    family: &Family<Label2, Counter>,
    key: &'static str,
    value: &'static str,
) -> Counter {
    family
        .get_or_create(&[("protocol", "tcp"), (key, value)])
        .clone()
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
        assert!(text.contains("udp_director_build_info{version="), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
