//! Metrics: one registry, every family registered once at start-up, handles passed by `Arc`.
//! Label values are small closed enums (direction, reason, result), never client addresses,
//! tokens or target names. The data plane does not touch these per datagram: workers count
//! locally and add their deltas here periodically (see `net::worker`).

use std::sync::atomic::{AtomicUsize, Ordering};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

use crate::model::{
    AllocationResult, CloseReason, DropReason, ErrorCode, Protocol, Refusal, Rejection, TcpClose,
    TcpRefusal,
};

/// One label, static key and value.
pub(crate) type Label = [(&'static str, &'static str); 1];
/// Two labels, static keys and values.
pub(crate) type Label2 = [(&'static str, &'static str); 2];
/// `mapping` label: a name from the operator's config (bounded by the config, never by clients).
pub(crate) type MappingLabel = [(&'static str, String); 1];

/// Every metric of the director. Prefix `udp_director_` is added by the registry.
pub struct Metrics {
    registry: Registry,
    pub sessions_active: Gauge,
    pub sessions_created: Counter,
    pub sessions_closed: Family<Label, Counter>,
    pub sessions_refused: Family<Label, Counter>,
    pub session_resets: Counter,
    pub sessions_moved: Counter,
    pub token_key_reloads: Family<Label, Counter>,
    pub token_keys: Gauge,
    pub datagrams: Family<Label, Counter>,
    pub bytes: Family<Label, Counter>,
    pub drops: Family<Label, Counter>,
    pub tokens_issued: Counter,
    pub tokens_redeemed: Counter,
    pub tokens_rejected: Family<Label, Counter>,
    pub queries: Family<Label, Counter>,
    pub query_duration: Histogram,
    pub query_connections: Gauge,
    /// `allocations_total{result}`, indexed by [`AllocationResult::index`].
    pub allocations: [Counter; AllocationResult::COUNT],
    pub allocation_duration: Histogram,
    /// TCP data ports (`protocol="tcp"` families; UDP sessions are `sessions_*`).
    pub tcp_sessions_active: Gauge,
    pub tcp_sessions_created: Counter,
    pub tcp_sessions_closed: [Counter; TcpClose::COUNT],
    pub tcp_refused: [Counter; TcpRefusal::COUNT],
    pub tcp_bytes_to_target: Counter,
    pub tcp_bytes_to_client: Counter,
    /// `sessions_by_protocol{protocol}`: live sessions per data-port protocol.
    pub sessions_by_protocol: Family<Label, Gauge>,
    pub config_reloads: Family<Label, Counter>,
    pub config_restart_required: Gauge,
    pub mapping_objects: Family<MappingLabel, Gauge>,
    pub mapping_synced: Family<MappingLabel, Gauge>,
    pub tokens_active: Gauge,
    pub upstream_sockets: Gauge,
    pub caches_synced: Gauge,
    pub draining: Gauge,
    pub kube_watch_errors: Counter,
    pub targets_skipped: Counter,
    pub memory_trims: Counter,
    /// Bytes of the last `/metrics` text (sizes the next one's buffer).
    last_exposition: AtomicUsize,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("udp_director");
        let allocations = Family::<Label, Counter>::default();
        let tcp_created = Family::<Label, Counter>::default();
        let tcp_closed = Family::<Label2, Counter>::default();
        let tcp_refused = Family::<Label2, Counter>::default();
        let tcp_bytes = Family::<Label2, Counter>::default();
        let m = Self {
            sessions_active: Gauge::default(),
            sessions_created: Counter::default(),
            sessions_closed: Family::default(),
            sessions_refused: Family::default(),
            session_resets: Counter::default(),
            sessions_moved: Counter::default(),
            token_key_reloads: Family::default(),
            token_keys: Gauge::default(),
            datagrams: Family::default(),
            bytes: Family::default(),
            drops: Family::default(),
            tokens_issued: Counter::default(),
            tokens_redeemed: Counter::default(),
            tokens_rejected: Family::default(),
            queries: Family::default(),
            // 50 µs .. ~0.8 s
            query_duration: Histogram::new(
                prometheus_client::metrics::histogram::exponential_buckets(0.00005, 2.0, 15),
            ),
            query_connections: Gauge::default(),
            tcp_sessions_active: Gauge::default(),
            tcp_sessions_created: Metrics::counter(&tcp_created, "protocol", "tcp"),
            tcp_sessions_closed: std::array::from_fn(|i| {
                tcp_counter(&tcp_closed, "reason", TcpClose::ALL[i].as_str())
            }),
            tcp_refused: std::array::from_fn(|i| {
                tcp_counter(&tcp_refused, "reason", TcpRefusal::ALL[i].as_str())
            }),
            tcp_bytes_to_target: tcp_counter(&tcp_bytes, "direction", TO_TARGET),
            tcp_bytes_to_client: tcp_counter(&tcp_bytes, "direction", TO_CLIENT),
            sessions_by_protocol: Family::default(),
            // Handles into the registered family, one per result (all present from the start).
            allocations: std::array::from_fn(|i| {
                Self::counter(&allocations, "result", AllocationResult::ALL[i].as_str())
            }),
            // 1 ms .. ~4 s
            allocation_duration: Histogram::new(
                prometheus_client::metrics::histogram::exponential_buckets(0.001, 2.0, 13),
            ),
            config_reloads: Family::default(),
            config_restart_required: Gauge::default(),
            mapping_objects: Family::default(),
            mapping_synced: Family::default(),
            tokens_active: Gauge::default(),
            upstream_sockets: Gauge::default(),
            caches_synced: Gauge::default(),
            draining: Gauge::default(),
            kube_watch_errors: Counter::default(),
            targets_skipped: Counter::default(),
            memory_trims: Counter::default(),
            last_exposition: AtomicUsize::new(0),
            registry: Registry::default(),
        };
        registry.register(
            "sessions_active",
            "Live UDP sessions",
            m.sessions_active.clone(),
        );
        registry.register(
            "sessions_created",
            "UDP sessions created",
            m.sessions_created.clone(),
        );
        registry.register(
            "sessions_closed",
            "UDP sessions closed, by reason",
            m.sessions_closed.clone(),
        );
        registry.register(
            "sessions_refused",
            "New sessions refused, by reason (cap: maxSessions reached; draining: shutting down)",
            m.sessions_refused.clone(),
        );
        registry.register(
            "session_resets",
            "Live sessions moved to another target by a reset (a token for another target)",
            m.session_resets.clone(),
        );
        registry.register(
            "datagrams",
            "Datagrams proxied, by direction",
            m.datagrams.clone(),
        );
        registry.register(
            "bytes",
            "Payload bytes proxied, by direction",
            m.bytes.clone(),
        );
        registry.register(
            "datagrams_dropped",
            "Datagrams dropped, by reason",
            m.drops.clone(),
        );
        registry.register("tokens_issued", "Tokens issued", m.tokens_issued.clone());
        registry.register(
            "tokens_redeemed",
            "Tokens redeemed by a datagram",
            m.tokens_redeemed.clone(),
        );
        registry.register(
            "tokens_rejected",
            "Token datagrams rejected, by reason",
            m.tokens_rejected.clone(),
        );
        registry.register("queries", "Queries answered, by result", m.queries.clone());
        registry.register(
            "query_duration_seconds",
            "Time from a complete request line to its answer",
            m.query_duration.clone(),
        );
        registry.register(
            "query_connections_active",
            "Open query connections",
            m.query_connections.clone(),
        );
        registry.register(
            "config_reloads",
            "Config reload attempts, by result",
            m.config_reloads.clone(),
        );
        registry.register(
            "config_restart_required",
            "1 when the config source changes keys that only a restart applies (ports, bind address, workers, buffers, maxTokens)",
            m.config_restart_required.clone(),
        );
        registry.register(
            "mapping_objects",
            "Objects cached per mapping (static mappings: endpoints); mapping names come from the config",
            m.mapping_objects.clone(),
        );
        registry.register(
            "mapping_synced",
            "1 when every cache behind the mapping has completed its first list",
            m.mapping_synced.clone(),
        );
        registry.register(
            "sessions_moved",
            "Sessions taken over by a new client address redeeming their token (NAT rebinding; one session per token)",
            m.sessions_moved.clone(),
        );
        registry.register(
            "token_key_reloads",
            "Token key source changes, by result (rejected: the keys in force stay)",
            m.token_key_reloads.clone(),
        );
        registry.register(
            "token_keys",
            "Sealed-token keys in force (the first seals, all open)",
            m.token_keys.clone(),
        );
        registry.register(
            "memory_trims",
            "Times free allocator memory was handed back to the kernel after the load fell by half",
            m.memory_trims.clone(),
        );
        registry.register(
            "tokens_active",
            "Tokens held (issued, not yet expired or evicted)",
            m.tokens_active.clone(),
        );
        registry.register(
            "upstream_sockets",
            "Open upstream sockets (shared by sessions bound for different targets)",
            m.upstream_sockets.clone(),
        );
        registry.register(
            "caches_synced",
            "1 when every resource source has synced at least once",
            m.caches_synced.clone(),
        );
        registry.register("draining", "1 while shutting down", m.draining.clone());
        registry.register(
            "kube_watch_errors",
            "Errors from Kubernetes list/watch streams (API unreachable, 410 Gone, bad answers); caches keep serving",
            m.kube_watch_errors.clone(),
        );
        registry.register(
            "targets_skipped",
            "Matching resources skipped because no usable address or port could be read",
            m.targets_skipped.clone(),
        );
        registry.register(
            "build",
            "Build information",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        registry.register(
            "allocations",
            "Agones allocations, by result (allocated, unallocated, contention, unusable, error, timeout, overloaded)",
            allocations,
        );
        registry.register(
            "allocation_duration_seconds",
            "Time from asking Agones for a GameServer to its answer (or the 2 s timeout)",
            m.allocation_duration.clone(),
        );
        registry.register(
            "tcp_sessions_created",
            "Relayed TCP data sessions opened by a token line",
            tcp_created,
        );
        registry.register(
            "tcp_sessions_closed",
            "Relayed TCP data sessions ended, by reason (closed, idle, replaced, drained, error)",
            tcp_closed,
        );
        registry.register(
            "tcp_refused",
            "TCP data connections closed before relaying, by reason (no byte was sent to them)",
            tcp_refused,
        );
        registry.register(
            "tcp_bytes",
            "Bytes relayed on TCP data ports, by direction",
            tcp_bytes,
        );
        registry.register(
            "sessions_by_protocol",
            "Live sessions per data-port protocol (udp, tcp); their sum is sessions_active",
            m.sessions_by_protocol.clone(),
        );
        for p in Protocol::ALL {
            let _ = m
                .sessions_by_protocol
                .get_or_create(&[("protocol", p.as_str())]);
        }
        for r in Rejection::ALL {
            let _ = m.tokens_rejected.get_or_create(&[("reason", r.as_str())]);
        }
        // Make every label value appear from the start so dashboards and alerts see zeros.
        for code in ErrorCode::ALL {
            let _ = m.queries.get_or_create(&[("result", code.as_str())]);
        }
        let _ = m.queries.get_or_create(&[("result", "ok")]);
        for reason in CloseReason::ALL {
            let _ = m
                .sessions_closed
                .get_or_create(&[("reason", reason.as_str())]);
        }
        for reason in Refusal::ALL {
            let _ = m
                .sessions_refused
                .get_or_create(&[("reason", reason.as_str())]);
        }
        for reason in DropReason::ALL {
            let _ = m.drops.get_or_create(&[("reason", reason.as_str())]);
        }
        for dir in [TO_TARGET, TO_CLIENT] {
            let _ = m.datagrams.get_or_create(&[("direction", dir)]);
            let _ = m.bytes.get_or_create(&[("direction", dir)]);
        }
        for result in ["applied", "rejected"] {
            let _ = m.config_reloads.get_or_create(&[("result", result)]);
            let _ = m.token_key_reloads.get_or_create(&[("result", result)]);
        }
        Self { registry, ..m }
    }

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
