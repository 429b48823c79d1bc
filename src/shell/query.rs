//! The TCP query server (SPEC §2): framing, limits and timeouts around
//! parse → resolve → issue token. Every request line gets exactly one answer line, errors
//! included; a connection is closed only after its last answer, on a limit, or on a timeout.
//!
//! Limits: `queryMaxBytes` per line (answer `too_large`, then close), a deadline of
//! `queryIdleTimeoutSeconds` for each request to arrive complete and be answered (bytes
//! trickling in and empty lines do not extend it: only an answered query re-arms it, so a
//! slow or chatty client cannot pin a connection), the same deadline for writing an answer
//! (a client that never reads is dropped), `queryConnectionLifetimeSeconds` per connection
//! (closed after the answer in progress), `maxQueryConnections` concurrent connections and
//! `maxQueryConnectionsPerIp` of them per client network (newcomers get `unavailable` and are
//! closed), and a per-client-network token bucket (`rate_limited`) that empty lines draw
//! from too. Every close is counted by reason (`query_connections_closed_total`).
//!
//! Resolving a query against a cache is CPU work: it runs on tokio's blocking pool, never on
//! the async workers that serve the other sockets and the probes.
//!
//! Every answer is counted (`queries_total`, and `mapping_queries_total` when the request
//! named a mapping of the config) and logged as one access-log line (`query answered`:
//! client, result, mapping, player id, target, the `session_id` its token's session will be
//! logged with), at most [`QUERY_LOG_PER_SECOND`] lines a second; the next line written says
//! how many were suppressed.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::{Instant, timeout_at};

use crate::config::Auth;
use crate::config::Limits;
use crate::metrics::Metrics;
use crate::model::{
    AllocationResult, AuthFailure, ClientNet, ErrorCode, QueryClose, Target, TokenKey, session_id,
};
use crate::protocol::query::{
    QueryError, QueryRequest, TargetRef, TokenAnswer, parse_request, render,
};
use crate::resolve::Resolved;
use crate::resolve::allocate::{ALLOCATION_TIMEOUT, Allocating, Allocation};
use crate::session::Ledger;
use crate::settings::{Generation, Settings};
use crate::shell::tls::QueryTls;
use crate::token::ticket::{self, Jwks, Refused};
use crate::token::{IssueError, Tokens};
use crate::util::bounded::{Bounded, Place};
use crate::util::logbudget::LogBudget;
use crate::util::sync::lock;

/// What the query server needs; shared by every connection.
pub(crate) struct QueryContext {
    /// The live settings: each request uses one generation's resolver, limits and token rules.
    pub settings: Arc<Settings>,
    pub tokens: Arc<Tokens>,
    pub ledger: Arc<Ledger>,
    pub metrics: Arc<Metrics>,
    /// Open connections, held under `maxQueryConnections` at accept.
    open: Arc<Bounded>,
    /// Open connections per client network, held under `maxQueryConnectionsPerIp`.
    per_net: Arc<PerNet>,
    /// Resolutions running on the blocking pool, at most one per core: more would only
    /// queue for the CPU while crowding out the async workers (probes, the other sockets).
    resolving: Arc<tokio::sync::Semaphore>,
    /// The query lines of the access log, sampled under load.
    log_budget: Mutex<LogBudget>,
    /// The ticket JWKS in force (`queryAuth`), reloaded by `shell::keys`.
    jwks: Option<Arc<Jwks>>,
    /// `queryTls`: every connection starts with a TLS handshake.
    tls: Option<Arc<QueryTls>>,
}

/// Query lines the access log writes per second at most (a client cannot flood the log).
pub(crate) const QUERY_LOG_PER_SECOND: u32 = 50;

/// What the log line and the per-mapping count of one query need, gathered while answering.
#[derive(Default)]
struct QueryTrace {
    /// The request's `resourceType`, when it is a mapping of the config.
    mapping: Option<String>,
    player: Option<String>,
    target: Option<Arc<Target>>,
    token: Option<TokenKey>,
}

/// Who is asking, as the connection proves it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Caller {
    /// The connection's peer address.
    pub ip: IpAddr,
    /// A backend whose client certificate chains to `queryTls.clientCaFile`: needs no ticket
    /// and may set `clientIp` and `playerId`.
    pub backend: bool,
}

impl Caller {
    pub(crate) fn plain(ip: IpAddr) -> Self {
        Self { ip, backend: false }
    }
}

/// Open query connections per client network; entries go when their last connection does.
#[derive(Default)]
struct PerNet {
    open: Mutex<HashMap<ClientNet, usize>>,
}

/// One connection of a client network, given back when dropped.
struct NetPlace {
    nets: Arc<PerNet>,
    net: ClientNet,
}

impl PerNet {
    fn admit(self: &Arc<Self>, net: ClientNet, max: usize) -> Option<NetPlace> {
        let mut open = lock(&self.open);
        let held = open.entry(net).or_insert(0);
        if *held >= max {
            return None;
        }
        *held += 1;
        Some(NetPlace {
            nets: Arc::clone(self),
            net,
        })
    }
}

impl Drop for NetPlace {
    fn drop(&mut self) {
        let mut open = lock(&self.nets.open);
        if let Some(held) = open.get_mut(&self.net) {
            *held = held.saturating_sub(1);
            if *held == 0 {
                open.remove(&self.net);
            }
        }
    }
}

impl QueryContext {
    pub(crate) fn new(
        settings: Arc<Settings>,
        tokens: Arc<Tokens>,
        ledger: Arc<Ledger>,
        metrics: Arc<Metrics>,
        (jwks, tls): (Option<Arc<Jwks>>, Option<Arc<QueryTls>>),
    ) -> Self {
        Self {
            open: Arc::new(Bounded::new(usize::MAX)),
            per_net: Arc::default(),
            resolving: Arc::new(tokio::sync::Semaphore::new(
                std::thread::available_parallelism().map_or(1, usize::from),
            )),
            settings,
            tokens,
            ledger,
            metrics,
            log_budget: Mutex::new(LogBudget::new(QUERY_LOG_PER_SECOND, Duration::from_secs(1))),
            jwks,
            tls,
        }
    }

    /// The limits new connections and requests get.
    pub(crate) fn limits(&self) -> Limits {
        self.settings.load().query.limits.clone()
    }

    fn admit(&self, max: usize) -> Option<Place> {
        Place::within(&self.open, max)
    }

    /// An empty line from `peer`: never answered, but it draws from the client's rate limit
    /// (counted as `rate_limited` once the bucket is empty).
    fn empty_line(&self, peer: IpAddr) {
        let generation = self.settings.load();
        if generation
            .query
            .rate
            .check_key(&self.ledger.net_of(peer))
            .is_err()
        {
            self.count_query(ErrorCode::RateLimited.as_str());
        }
    }

    fn count_query(&self, result: &'static str) {
        self.metrics
            .queries
            .get_or_create(&[("result", result)])
            .inc();
    }

    fn count_close(&self, reason: QueryClose) {
        self.metrics
            .query_connections_closed
            .get_or_create(&[("reason", reason.as_str())])
            .inc();
    }

    /// Answers one request line from `caller`.
    pub(crate) async fn answer(&self, line: &[u8], caller: Caller) -> Vec<u8> {
        let started = Instant::now();
        let generation = self.settings.load();
        let mut trace = QueryTrace::default();
        let result = self
            .resolve_line(line, caller, started, &generation, &mut trace)
            .await;
        let label = match &result {
            Ok(_) => "ok",
            Err(e) => e.code.as_str(),
        };
        self.count_query(label);
        if let Some(mapping) = &trace.mapping {
            self.metrics
                .mapping_queries
                .get_or_create(&[("mapping", mapping.clone()), ("result", label.to_string())])
                .inc();
        }
        let elapsed = started.elapsed();
        self.metrics.query_duration.observe(elapsed.as_secs_f64());
        if generation.config.access_log {
            self.log_query(caller.ip, label, &trace, elapsed);
        }
        render(&result)
    }

    /// The query's access-log line, when the budget allows one now.
    fn log_query(&self, peer: IpAddr, result: &str, trace: &QueryTrace, elapsed: Duration) {
        let Some(suppressed) = lock(&self.log_budget).allow(Instant::now()) else {
            return;
        };
        let target = trace.target.as_deref();
        tracing::info!(
            target: "udp_director::access",
            client = %peer,
            result,
            mapping = trace.mapping.as_deref(),
            player_id = trace.player.as_deref(),
            namespace = target.map(|t| t.namespace.as_str()),
            target_name = target.map(|t| t.name.as_str()),
            target_addr = target.map(|t| tracing::field::display(t.addr)),
            session_id = trace.token.map(session_id),
            duration_us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
            suppressed,
            "query answered"
        );
    }

    /// One request line to its answer, each step in its order: admission (rate limit,
    /// draining) before the line is even parsed, who may ask before any resolution or API
    /// call, then the target (an allocation, or a pick from the caches) and its token.
    async fn resolve_line(
        &self,
        line: &[u8],
        caller: Caller,
        now: Instant,
        generation: &Arc<Generation>,
        trace: &mut QueryTrace,
    ) -> Result<TokenAnswer, QueryError> {
        self.admit_query(caller.ip, generation)?;
        let request = self.authorized_request(line, caller, generation)?;
        if generation
            .config
            .mappings
            .contains_key(&request.resource_type)
        {
            trace.mapping = Some(request.resource_type.clone());
        }
        // After authorizing: with a ticket, the player is its `sub`.
        trace.player.clone_from(&request.player_id);
        // A verified backend asks for a player: the token binds to the player's IP.
        let bind_to = request.client_ip.unwrap_or(caller.ip);
        let decided = decide_allocation(&request, generation).await?;
        let resolved = self.resolve_decided(decided, request, generation).await?;
        self.issue_answer(resolved, bind_to, now, generation, trace)
    }

    /// Admission, before any work on the line: the client network's rate limit
    /// (`rate_limited`), then a draining director (`unavailable`).
    fn admit_query(&self, peer: IpAddr, generation: &Generation) -> Result<(), QueryError> {
        let policy = &generation.query;
        if policy.rate.check_key(&self.ledger.net_of(peer)).is_err() {
            return Err(QueryError::new(
                ErrorCode::RateLimited,
                format!(
                    "more than {} queries per second from {peer}; retry later",
                    policy.limits.query_rate_per_second
                ),
            ));
        }
        if self.ledger.draining() {
            return Err(QueryError::new(
                ErrorCode::Unavailable,
                "director is shutting down; query another replica",
            ));
        }
        Ok(())
    }

    /// The parsed request once [`Self::authorize`] lets it through; a refusal is counted by
    /// reason (`query_auth_failures_total`) and answered `unauthorized`.
    fn authorized_request(
        &self,
        line: &[u8],
        caller: Caller,
        generation: &Generation,
    ) -> Result<QueryRequest, QueryError> {
        let mut request = parse_request(line)?;
        self.authorize(&mut request, caller, generation)
            .map_err(|refused| {
                self.metrics
                    .query_auth_failures
                    .get_or_create(&[("reason", refused.reason.as_str())])
                    .inc();
                QueryError::new(ErrorCode::Unauthorized, refused.message)
            })?;
        Ok(request)
    }

    /// The target the decision leads to: the allocation run (and counted), the player's
    /// allocation reused, `rate_limited` by the allocation budget, or (`None`) a pick from
    /// the caches.
    async fn resolve_decided(
        &self,
        decided: Option<Allocating>,
        request: QueryRequest,
        generation: &Arc<Generation>,
    ) -> Result<Resolved, QueryError> {
        match decided {
            Some(Allocating::Run(allocation)) => self.allocate(*allocation).await,
            Some(Allocating::Reused(resolved)) => {
                self.metrics.hot.allocations[AllocationResult::Reused.index()].inc();
                Ok(resolved)
            }
            Some(Allocating::RateLimited(e)) => {
                self.metrics.hot.allocations[AllocationResult::RateLimited.index()].inc();
                Err(e)
            }
            // Waited for in `decide_allocation`.
            Some(Allocating::Join(_)) => Err(QueryError::new(
                ErrorCode::Unavailable,
                "an allocation for this player is still running; retry shortly",
            )),
            None => self.resolve_on_pool(request, generation).await,
        }
    }

    /// Picks the target from the caches: CPU work over the candidates, so on the blocking
    /// pool (at most one per core), off the async workers.
    async fn resolve_on_pool(
        &self,
        request: QueryRequest,
        generation: &Arc<Generation>,
    ) -> Result<Resolved, QueryError> {
        let permit = Arc::clone(&self.resolving).acquire_owned().await;
        let generation = Arc::clone(generation);
        let ledger = Arc::clone(&self.ledger);
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            generation.resolver.resolve(&request, ledger.as_ref())
        })
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "query resolution did not finish");
            QueryError::new(ErrorCode::Internal, "query resolution failed")
        })?
    }

    /// Issues the token for `resolved`, bound to `bind_to`, and the answer that carries it;
    /// the target is made known to the data plane first, and the trace gets target and token.
    fn issue_answer(
        &self,
        resolved: Resolved,
        bind_to: IpAddr,
        now: Instant,
        generation: &Generation,
        trace: &mut QueryTrace,
    ) -> Result<TokenAnswer, QueryError> {
        // The data plane opens sessions only to targets it knows: this one, at once.
        generation.known.learn(&resolved.target);
        let target = Arc::clone(&resolved.target);
        let config = &generation.config;
        let issued = self
            .tokens
            .issue(resolved.target, bind_to, now, config.token_policy)
            .map_err(|e| match e {
                IssueError::PlayerIdTooLong { .. } => {
                    QueryError::new(ErrorCode::BadRequest, e.to_string())
                }
                _ => {
                    tracing::error!(error = %e, "cannot issue a token");
                    QueryError::new(ErrorCode::Internal, "cannot issue a token right now")
                }
            })?;
        self.metrics.tokens_issued.inc();
        trace.target = Some(Arc::clone(&target));
        trace.token = Some(issued.key);
        Ok(TokenAnswer {
            token: issued.wire,
            ttl_seconds: config.token_ttl.as_secs(),
            resume_seconds: issued.resume_seconds,
            target: TargetRef::new(
                &target.namespace,
                &target.name,
                resolved.expose_address.then_some(target.addr),
            ),
        })
    }

    /// Who may ask (SPEC §2 "Who may ask"), before any resolution or API call: `clientIp`
    /// only from a verified backend; a ticket whenever the mapping needs one (a backend needs
    /// none), and verified whenever one is given. A verified ticket makes the query its own
    /// (`playerId = sub`, its scope's labels ANDed in).
    fn authorize(
        &self,
        request: &mut QueryRequest,
        caller: Caller,
        generation: &Generation,
    ) -> Result<(), Refused> {
        let refuse = |reason: AuthFailure, message: &str| Refused {
            reason,
            message: message.to_string(),
        };
        if request.client_ip.is_some() && !caller.backend {
            return Err(refuse(
                AuthFailure::ClientIp,
                "`clientIp` may be set only by a backend with a client certificate (queryTls)",
            ));
        }
        if caller.backend {
            return Ok(());
        }
        let needs_ticket = generation
            .config
            .mappings
            .get(&request.resource_type)
            .is_some_and(|m| m.auth == Auth::Ticket);
        let Some(jwt) = request.ticket.take() else {
            return if needs_ticket {
                Err(refuse(
                    AuthFailure::MissingTicket,
                    "this resourceType needs a ticket: send `\"ticket\": \"<JWT from your game's backend>\"`",
                ))
            } else {
                Ok(())
            };
        };
        let (Some(rules), Some(keys)) = (
            generation.query.tickets.as_ref(),
            self.jwks.as_ref().and_then(|j| j.load()),
        ) else {
            return Err(refuse(
                AuthFailure::UnknownKey,
                "this director verifies no tickets (no queryAuth); leave `ticket` out",
            ));
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let ticket = ticket::verify(&keys, &jwt, rules, now)?;
        ticket::permit(&ticket, request)
    }

    /// Runs one Agones allocation and counts how it ended.
    async fn allocate(&self, allocation: Allocation) -> Result<Resolved, QueryError> {
        let started = Instant::now();
        let (result, resolved) = allocation.run().await;
        self.metrics.hot.allocations[result.index()].inc();
        if result != AllocationResult::Overloaded {
            self.metrics
                .allocation_duration
                .observe(started.elapsed().as_secs_f64());
        }
        resolved
    }

    /// Forgets rate-limit state of sources that have been quiet (bounded memory).
    pub(crate) fn prune_rate_limits(&self) {
        let generation = self.settings.load();
        generation.query.rate.retain_recent();
        generation.query.rate.shrink_to_fit();
    }
}

/// What the allocation budget makes of `request` (`None`: not an allocating mapping). A
/// player's allocation for the same ask that is still running after two waits makes the
/// query `unavailable`.
async fn decide_allocation(
    request: &QueryRequest,
    generation: &Generation,
) -> Result<Option<Allocating>, QueryError> {
    let mut joins = 0;
    loop {
        match generation.resolver.allocation(request, Instant::now())? {
            // The player's allocation is running: wait for it (at most its timeout, twice),
            // then decide again (reuse it, or allocate if it failed).
            Some(Allocating::Join(mut running)) if joins < 2 => {
                joins += 1;
                let _ = tokio::time::timeout(
                    ALLOCATION_TIMEOUT + Duration::from_millis(500),
                    running.changed(),
                )
                .await;
            }
            Some(Allocating::Join(_)) => {
                return Err(QueryError::new(
                    ErrorCode::Unavailable,
                    "an allocation for this player is still running; retry shortly",
                ));
            }
            other => return Ok(other),
        }
    }
}

/// Accepts connections until `shutdown` turns true.
pub(crate) async fn serve(
    listener: TcpListener,
    ctx: Arc<QueryContext>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut prune = tokio::time::interval(Duration::from_secs(60));
    loop {
        let (stream, peer) = tokio::select! {
            accepted = super::listen::accept_or_back_off(&listener, "query") => match accepted {
                Some(pair) => pair,
                None => continue,
            },
            _ = prune.tick() => { ctx.prune_rate_limits(); continue; }
            _ = shutdown.changed() => return,
        };
        let limits = ctx.limits();
        let per_ip = limits.max_query_connections_per_ip;
        let Some(net_place) = ctx.per_net.admit(ctx.ledger.net_of(peer.ip()), per_ip) else {
            refuse_connection(
                &stream,
                &ctx,
                QueryClose::ClientIpCap,
                format!(
                    "too many query connections from your address (maxQueryConnectionsPerIp {per_ip}); close one and retry"
                ),
            );
            continue;
        };
        let max = limits.max_query_connections;
        let Some(place) = ctx.admit(max) else {
            refuse_connection(
                &stream,
                &ctx,
                QueryClose::ConnectionCap,
                format!("too many concurrent query connections (limit {max}); retry shortly"),
            );
            continue;
        };
        let ctx = Arc::clone(&ctx);
        tokio::spawn(async move {
            let _places = (place, net_place);
            ctx.metrics.query_connections.inc();
            let _ = stream.set_nodelay(true);
            let closed = match &ctx.tls {
                None => handle(stream, Caller::plain(peer.ip()), &ctx, &limits).await,
                Some(tls) => {
                    let idle = Duration::from_secs(limits.query_idle_timeout_seconds);
                    match timeout_at(Instant::now() + idle, tls.acceptor().accept(stream)).await {
                        Ok(Ok(stream)) => {
                            // Offered and verified against clientCaFile (an unverifiable one
                            // failed the handshake).
                            let backend = tls.verifies_clients
                                && stream
                                    .get_ref()
                                    .1
                                    .peer_certificates()
                                    .is_some_and(|c| !c.is_empty());
                            let caller = Caller {
                                ip: peer.ip(),
                                backend,
                            };
                            handle(stream, caller, &ctx, &limits).await
                        }
                        _ => QueryClose::TlsHandshake,
                    }
                }
            };
            ctx.count_close(closed);
            ctx.metrics.query_connections.dec();
        });
    }
}

/// Over `maxQueryConnections` or `maxQueryConnectionsPerIp`: one `unavailable` line
/// written without waiting, then close.
fn refuse_connection(stream: &TcpStream, ctx: &QueryContext, why: QueryClose, message: String) {
    let answer = render(&Err(QueryError::new(ErrorCode::Unavailable, message)));
    ctx.count_query(ErrorCode::Unavailable.as_str());
    ctx.count_close(why);
    if ctx.tls.is_some() {
        // A TLS client could not read a plain line: the close is the answer.
        return;
    }
    // A fresh socket's send buffer is empty, so this does not block; if it fails the client
    // sees a close, which is all we can offer without spending a task on it.
    let _ = stream.try_write(&answer);
}

/// Serves one connection (plain TCP or TLS) until a limit, a timeout or the client ends it;
/// why it ended.
async fn handle<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    caller: Caller,
    ctx: &QueryContext,
    limits: &Limits,
) -> QueryClose {
    let idle = Duration::from_secs(limits.query_idle_timeout_seconds);
    let max = limits.query_max_bytes;
    let accepted = Instant::now();
    let end_of_life = accepted + Duration::from_secs(limits.query_connection_lifetime_seconds);
    let mut buf: Vec<u8> = Vec::with_capacity(1024.min(max + 1));
    let mut chunk = vec![0u8; 4096];
    // Re-armed only by an answered query.
    let mut deadline = accepted + idle;
    // `buf[..scanned]` holds no newline (the start of a line still arriving).
    let mut scanned = 0;
    loop {
        // Answer every complete line already buffered, then drop them in one drain.
        let mut start = 0;
        while let Some(pos) = buf[scanned..].iter().position(|b| *b == b'\n') {
            let end = scanned + pos;
            let line = trim_cr(&buf[start..end]);
            start = end + 1;
            scanned = start;
            if line.len() > max {
                let _ =
                    write_answer(&mut stream, &too_large(ctx, max), Instant::now() + idle).await;
                return QueryClose::TooLarge;
            }
            if line.trim_ascii().is_empty() {
                ctx.empty_line(caller.ip);
                continue;
            }
            let answer = ctx.answer(line, caller).await;
            if !write_answer(&mut stream, &answer, Instant::now() + idle).await {
                return QueryClose::SlowReader;
            }
            deadline = Instant::now() + idle;
            if Instant::now() >= end_of_life {
                return QueryClose::Lifetime;
            }
        }
        buf.drain(..start);
        scanned = buf.len();
        if buf.len() > max {
            let _ = write_answer(&mut stream, &too_large(ctx, max), Instant::now() + idle).await;
            return QueryClose::TooLarge;
        }
        match timeout_at(deadline.min(end_of_life), stream.read(&mut chunk)).await {
            Err(_) if deadline <= end_of_life => return QueryClose::Idle,
            Err(_) => return QueryClose::Lifetime,
            Ok(Err(_)) => return QueryClose::ClientClosed,
            Ok(Ok(0)) => {
                // Half-close: a last request without a newline is still answered.
                let line = trim_cr(&buf);
                if !line.trim_ascii().is_empty() {
                    let answer = ctx.answer(line, caller).await;
                    let _ = write_answer(&mut stream, &answer, Instant::now() + idle).await;
                }
                let _ = stream.shutdown().await;
                return QueryClose::ClientClosed;
            }
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

fn too_large(ctx: &QueryContext, max: usize) -> Vec<u8> {
    ctx.count_query(ErrorCode::TooLarge.as_str());
    render(&Err(QueryError::new(
        ErrorCode::TooLarge,
        format!("request line exceeds {max} bytes; closing"),
    )))
}

fn trim_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Writes one answer; false when the client is gone or does not read in time.
async fn write_answer<S: AsyncWrite + Unpin>(
    stream: &mut S,
    answer: &[u8],
    deadline: Instant,
) -> bool {
    matches!(
        timeout_at(deadline, stream.write_all(answer)).await,
        Ok(Ok(()))
    )
}
