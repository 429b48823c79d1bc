//! The settings: the one place a validated config becomes what each layer reads. One
//! [`Generation`] of everything a reload may change (the validated config, the resolver built
//! from it, the session table's rules, the query limits and their rate limiter, the TCP
//! limits), built whole and swapped whole through one [`Settings`] cell.
//!
//! Readers load the current generation lock-free (no poison handling anywhere) and use that
//! one value for a whole decision, so a query or a datagram never sees half of a reload.
//! The data plane's workers keep the generation they loaded and pick up a new one when
//! woken. Shared *state* (live sessions in the ledger, issued tokens) is not here: a
//! generation holds settings only.
//!
//! Owns building a generation from a validated config. Must not read sockets or files, touch
//! sessions or decide what a reload may change (`config::reload` does); building a resolver
//! may start watch tasks for new Kubernetes mappings (through `resolve::kube::Watchers`).

use std::num::NonZeroU32;
use std::sync::Arc;

use arc_swap::ArcSwap;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::config::{Limits, ValidConfig};
use crate::model::{ClientNet, KnownTargets};
use crate::resolve::Resolver;
use crate::resolve::kube::Watchers;
use crate::session::tcp::TcpLimits;
use crate::session::{Proofs, Rules};
use crate::token::ticket::TicketRules;

/// Everything a reload may change, as one value.
pub struct Generation {
    /// Counts swaps from 0 (the config the process started with).
    pub number: u64,
    pub config: ValidConfig,
    pub resolver: Resolver,
    /// What the session tables judge datagrams by (magic, timeout, cap, default route).
    pub rules: Rules,
    pub query: QueryPolicy,
    /// What TCP data-port token lines are admitted under.
    pub tcp: TcpLimits,
    /// The targets tokens may name; one value shared by every generation (what this replica
    /// allocated is remembered across reloads), refreshed when a cache changes.
    pub known: Arc<KnownTargets>,
}

/// The query server's limits and the per-client-network rate limiter built from them (an
/// IPv4 address or an IPv6 /64, like every per-IP limit).
pub struct QueryPolicy {
    pub limits: Limits,
    /// Keyed by client network (`limits.ipv6PrefixLength`), like every per-IP limit.
    pub rate: Arc<DefaultKeyedRateLimiter<ClientNet>>,
    /// What every ticket must carry (`queryAuth`), when tickets are verified.
    pub tickets: Option<TicketRules>,
}

impl Generation {
    /// Builds the generation for `config`. With a `previous` one, watches of unchanged
    /// mappings are shared (through `watchers`) and the rate limiter's buckets are kept when
    /// the rate did not change. Must run inside a tokio runtime when the config has
    /// Kubernetes mappings.
    pub fn build(config: ValidConfig, watchers: &Watchers, previous: Option<&Generation>) -> Self {
        let resolver = Resolver::new(&config, watchers);
        let default_route = config
            .default_endpoint
            .as_ref()
            .and_then(|q| resolver.default_route(q))
            .map(Arc::new);
        let known = match previous {
            Some(p) => {
                p.known.set_networks(config.target_networks.clone());
                Arc::clone(&p.known)
            }
            None => Arc::new(KnownTargets::new(
                config.target_networks.clone(),
                config.token_policy.resume.max(config.token_policy.ttl),
            )),
        };
        known.replace(resolver.known_addresses(), resolver.cache_generation());
        let (challenges, pings) = (config.path_challenges_per_second, config.pings_per_second);
        let proofs = match previous {
            Some(p) => {
                p.rules.proofs.set_rates(challenges, pings);
                Arc::clone(&p.rules.proofs)
            }
            None => Arc::new(Proofs::new(
                &proof_secret(),
                tokio::time::Instant::now(),
                challenges,
                pings,
            )),
        };
        let rules = Rules {
            magic: config.magic.clone(),
            format: config.token_format,
            session_timeout: config.session_timeout,
            max_sessions: config.max_sessions,
            max_per_client_ip: config.max_sessions_per_client_ip,
            unanswered_timeout: config.unanswered_timeout,
            default_route,
            known: Arc::clone(&known),
            proofs,
            amplification: config.amplification,
        };
        let mut query = QueryPolicy::new(config.limits.clone(), previous.map(|p| &p.query));
        query.tickets = config.query_auth.as_ref().map(|a| TicketRules {
            audience: a.audience.clone(),
            issuer: a.issuer.clone(),
            leeway: a.leeway,
        });
        let tcp = TcpLimits {
            max_sessions: config.max_sessions,
            max_per_client_ip: config.max_sessions_per_client_ip,
            max_pending: config.limits.max_pending_tcp_lines,
        };
        Self {
            number: previous.map_or(0, |p| p.number + 1),
            config,
            resolver,
            rules,
            query,
            tcp,
            known,
        }
    }
}

/// The process's secret for proof-of-address nonces: 32 bytes from the system's random
/// source (through uuid's, as token ids are), never stored.
fn proof_secret() -> [u8; 32] {
    let mut secret = [0u8; 32];
    secret[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    secret[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    secret
}

impl QueryPolicy {
    fn new(limits: Limits, previous: Option<&QueryPolicy>) -> Self {
        // Keep the buckets (and who is being limited) when the rate did not change.
        let rate = match previous {
            Some(p)
                if p.limits.query_rate_per_second == limits.query_rate_per_second
                    && p.limits.query_burst == limits.query_burst =>
            {
                Arc::clone(&p.rate)
            }
            _ => {
                // Validation guarantees both are > 0.
                let per_second =
                    NonZeroU32::new(limits.query_rate_per_second).unwrap_or(NonZeroU32::MIN);
                let burst = NonZeroU32::new(limits.query_burst).unwrap_or(NonZeroU32::MIN);
                Arc::new(RateLimiter::keyed(
                    Quota::per_second(per_second).allow_burst(burst),
                ))
            }
        };
        Self {
            limits,
            rate,
            tickets: None,
        }
    }
}

/// The one cell holding the current generation, shared by every reader.
pub struct Settings {
    current: ArcSwap<Generation>,
}

impl Settings {
    pub fn new(first: Generation) -> Self {
        Self {
            current: ArcSwap::from_pointee(first),
        }
    }

    /// The generation in force (lock-free; keep it for the whole decision).
    pub fn load(&self) -> Arc<Generation> {
        self.current.load_full()
    }

    /// Swaps in a new generation whole.
    pub fn store(&self, next: Generation) {
        self.current.store(Arc::new(next));
    }
}
