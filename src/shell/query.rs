//! The TCP query server (SPEC §2): framing, limits and timeouts around
//! parse → resolve → issue token. Every request line gets exactly one answer line, errors
//! included; a connection is closed only after its last answer, on a limit, or on a timeout.
//!
//! Limits: `queryMaxBytes` per line (answer `too_large`, then close), a deadline of
//! `queryIdleTimeoutSeconds` for each request to arrive complete (bytes trickling in do not
//! extend it, so a slow client cannot pin a connection), the same deadline for writing an
//! answer (a client that never reads is dropped), `maxQueryConnections` concurrent
//! connections (newcomers get `unavailable` and are closed), and a per-source-IP token bucket
//! (`rate_limited`).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::{Instant, timeout_at};

use crate::config::Limits;
use crate::metrics::Metrics;
use crate::model::AllocationResult;
use crate::model::ErrorCode;
use crate::protocol::query::{QueryError, TargetRef, TokenAnswer, parse_request, render};
use crate::resolve::Resolved;
use crate::resolve::allocate::Allocation;
use crate::session::Ledger;
use crate::settings::{Generation, Settings};
use crate::token::{IssueError, Tokens};
use crate::util::bounded::{Bounded, Place};

/// What the query server needs; shared by every connection.
pub(crate) struct QueryContext {
    /// The live settings: each request uses one generation's resolver, limits and token rules.
    pub settings: Arc<Settings>,
    pub tokens: Arc<Tokens>,
    pub ledger: Arc<Ledger>,
    pub metrics: Arc<Metrics>,
    /// Open connections, held under `maxQueryConnections` at accept.
    open: Arc<Bounded>,
}

impl QueryContext {
    pub(crate) fn new(
        settings: Arc<Settings>,
        tokens: Arc<Tokens>,
        ledger: Arc<Ledger>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            open: Arc::new(Bounded::new(usize::MAX)),
            settings,
            tokens,
            ledger,
            metrics,
        }
    }

    /// The limits new connections and requests get.
    pub(crate) fn limits(&self) -> Limits {
        self.settings.load().query.limits.clone()
    }

    fn admit(&self, max: usize) -> Option<Place> {
        Place::within(&self.open, max)
    }

    /// Answers one request line from `peer`.
    pub(crate) async fn answer(&self, line: &[u8], peer: IpAddr) -> Vec<u8> {
        let started = Instant::now();
        let generation = self.settings.load();
        let result = self.resolve_line(line, peer, started, &generation).await;
        let label = match &result {
            Ok(_) => "ok",
            Err(e) => e.code.as_str(),
        };
        self.metrics
            .queries
            .get_or_create(&[("result", label)])
            .inc();
        self.metrics
            .query_duration
            .observe(started.elapsed().as_secs_f64());
        render(&result)
    }

    async fn resolve_line(
        &self,
        line: &[u8],
        peer: IpAddr,
        now: Instant,
        generation: &Generation,
    ) -> Result<TokenAnswer, QueryError> {
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
        let request = parse_request(line)?;
        let resolved = match generation.resolver.allocation(&request)? {
            Some(allocation) => self.allocate(allocation).await?,
            None => generation
                .resolver
                .resolve(&request, self.ledger.as_ref())?,
        };
        let target = Arc::clone(&resolved.target);
        let config = &generation.config;
        let issued = self
            .tokens
            .issue(resolved.target, peer, now, config.token_policy)
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
        let Some(place) = ctx.admit(limits.max_query_connections) else {
            refuse_connection(&stream, &ctx, limits.max_query_connections);
            continue;
        };
        let ctx = Arc::clone(&ctx);
        tokio::spawn(async move {
            let _place = place;
            ctx.metrics.query_connections.inc();
            handle(stream, peer, &ctx, &limits).await;
            ctx.metrics.query_connections.dec();
        });
    }
}

/// Over `maxQueryConnections`: one error line written without waiting, then close.
fn refuse_connection(stream: &TcpStream, ctx: &QueryContext, max: usize) {
    let answer = render(&Err(QueryError::new(
        ErrorCode::Unavailable,
        format!("too many concurrent query connections (limit {max}); retry shortly"),
    )));
    ctx.metrics
        .queries
        .get_or_create(&[("result", ErrorCode::Unavailable.as_str())])
        .inc();
    // A fresh socket's send buffer is empty, so this does not block; if it fails the client
    // sees a close, which is all we can offer without spending a task on it.
    let _ = stream.try_write(&answer);
}

async fn handle(mut stream: TcpStream, peer: SocketAddr, ctx: &QueryContext, limits: &Limits) {
    let _ = stream.set_nodelay(true);
    let idle = Duration::from_secs(limits.query_idle_timeout_seconds);
    let max = limits.query_max_bytes;
    let mut buf: Vec<u8> = Vec::with_capacity(1024.min(max + 1));
    let mut chunk = vec![0u8; 4096];
    let mut deadline = Instant::now() + idle;
    loop {
        // Answer every complete line already buffered.
        while let Some(end) = buf.iter().position(|b| *b == b'\n') {
            let line = trim_cr(&buf[..end]);
            if line.len() > max {
                let _ =
                    write_answer(&mut stream, &too_large(ctx, max), Instant::now() + idle).await;
                return;
            }
            if !line.trim_ascii().is_empty() {
                let answer = ctx.answer(line, peer.ip()).await;
                if !write_answer(&mut stream, &answer, Instant::now() + idle).await {
                    return;
                }
            }
            buf.drain(..=end);
            deadline = Instant::now() + idle;
        }
        if buf.len() > max {
            let _ = write_answer(&mut stream, &too_large(ctx, max), Instant::now() + idle).await;
            return;
        }
        match timeout_at(deadline, stream.read(&mut chunk)).await {
            Err(_) => return, // idle: the request did not arrive in time
            Ok(Err(_)) => return,
            Ok(Ok(0)) => {
                // Half-close: a last request without a newline is still answered.
                let line = trim_cr(&buf);
                if !line.trim_ascii().is_empty() {
                    let answer = ctx.answer(line, peer.ip()).await;
                    let _ = write_answer(&mut stream, &answer, Instant::now() + idle).await;
                }
                let _ = stream.shutdown().await;
                return;
            }
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

fn too_large(ctx: &QueryContext, max: usize) -> Vec<u8> {
    ctx.metrics
        .queries
        .get_or_create(&[("result", ErrorCode::TooLarge.as_str())])
        .inc();
    render(&Err(QueryError::new(
        ErrorCode::TooLarge,
        format!("request line exceeds {max} bytes; closing"),
    )))
}

fn trim_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Writes one answer; false when the client is gone or does not read in time.
async fn write_answer(stream: &mut TcpStream, answer: &[u8], deadline: Instant) -> bool {
    matches!(
        timeout_at(deadline, stream.write_all(answer)).await,
        Ok(Ok(()))
    )
}
