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
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::time::{Instant, timeout_at};

use crate::config::Limits;
use crate::metrics::Metrics;
use crate::protocol::query::{
    ErrorCode, QueryError, TargetRef, TokenAnswer, parse_request, render,
};
use crate::resolve::Resolver;
use crate::session::Ledger;
use crate::token::TokenStore;

/// What the query server needs; shared by every connection.
pub struct QueryContext {
    pub resolver: Arc<RwLock<Arc<Resolver>>>,
    pub tokens: Arc<TokenStore>,
    pub ledger: Arc<Ledger>,
    pub metrics: Arc<Metrics>,
    pub limits: Limits,
    pub draining: Arc<AtomicBool>,
    rate: DefaultKeyedRateLimiter<IpAddr>,
    connections: Arc<Semaphore>,
}

impl QueryContext {
    pub fn new(
        resolver: Arc<RwLock<Arc<Resolver>>>,
        tokens: Arc<TokenStore>,
        ledger: Arc<Ledger>,
        metrics: Arc<Metrics>,
        limits: Limits,
        draining: Arc<AtomicBool>,
    ) -> Self {
        let per_second = NonZeroU32::new(limits.query_rate_per_second).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(limits.query_burst).unwrap_or(NonZeroU32::MIN);
        Self {
            rate: RateLimiter::keyed(Quota::per_second(per_second).allow_burst(burst)),
            connections: Arc::new(Semaphore::new(limits.max_query_connections)),
            resolver,
            tokens,
            ledger,
            metrics,
            limits,
            draining,
        }
    }

    fn idle(&self) -> Duration {
        Duration::from_secs(self.limits.query_idle_timeout_seconds)
    }

    /// Answers one request line from `peer`.
    pub fn answer(&self, line: &[u8], peer: IpAddr) -> Vec<u8> {
        let started = Instant::now();
        let result = self.resolve_line(line, peer, started);
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

    fn resolve_line(
        &self,
        line: &[u8],
        peer: IpAddr,
        now: Instant,
    ) -> Result<TokenAnswer, QueryError> {
        if self.rate.check_key(&peer).is_err() {
            return Err(QueryError::new(
                ErrorCode::RateLimited,
                format!(
                    "more than {} queries per second from {peer}; retry later",
                    self.limits.query_rate_per_second
                ),
            ));
        }
        if self.draining.load(Ordering::Relaxed) {
            return Err(QueryError::new(
                ErrorCode::Unavailable,
                "director is shutting down; query another replica",
            ));
        }
        let request = parse_request(line)?;
        let resolver = match self.resolver.read() {
            Ok(r) => Arc::clone(&r),
            Err(p) => Arc::clone(&p.into_inner()),
        };
        let resolved = resolver.resolve(&request, self.ledger.as_ref())?;
        let target = Arc::clone(&resolved.target);
        let token = self.tokens.issue(resolved.target, now);
        self.metrics.tokens_issued.inc();
        Ok(TokenAnswer {
            token: token.to_wire(),
            ttl_seconds: self.tokens.ttl().as_secs(),
            target: TargetRef::new(
                &target.namespace,
                &target.name,
                resolved.expose_address.then_some(target.addr),
            ),
        })
    }

    /// Forgets rate-limit state of sources that have been quiet (bounded memory).
    pub fn prune_rate_limits(&self) {
        self.rate.retain_recent();
        self.rate.shrink_to_fit();
    }
}

/// Accepts connections until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    ctx: Arc<QueryContext>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut prune = tokio::time::interval(Duration::from_secs(60));
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(error = %e, "query accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = prune.tick() => { ctx.prune_rate_limits(); continue; }
            _ = shutdown.changed() => return,
        };
        let Ok(permit) = Arc::clone(&ctx.connections).try_acquire_owned() else {
            refuse_connection(&stream, &ctx);
            continue;
        };
        let ctx = Arc::clone(&ctx);
        tokio::spawn(async move {
            ctx.metrics.query_connections.inc();
            handle(stream, peer, &ctx).await;
            ctx.metrics.query_connections.dec();
            drop(permit);
        });
    }
}

/// Over `maxQueryConnections`: one error line written without waiting, then close.
fn refuse_connection(stream: &TcpStream, ctx: &QueryContext) {
    let answer = render(&Err(QueryError::new(
        ErrorCode::Unavailable,
        format!(
            "too many concurrent query connections (limit {}); retry shortly",
            ctx.limits.max_query_connections
        ),
    )));
    ctx.metrics
        .queries
        .get_or_create(&[("result", ErrorCode::Unavailable.as_str())])
        .inc();
    // A fresh socket's send buffer is empty, so this does not block; if it fails the client
    // sees a close, which is all we can offer without spending a task on it.
    let _ = stream.try_write(&answer);
}

async fn handle(mut stream: TcpStream, peer: SocketAddr, ctx: &QueryContext) {
    let _ = stream.set_nodelay(true);
    let max = ctx.limits.query_max_bytes;
    let mut buf: Vec<u8> = Vec::with_capacity(1024.min(max + 1));
    let mut chunk = vec![0u8; 4096];
    let mut deadline = Instant::now() + ctx.idle();
    loop {
        // Answer every complete line already buffered.
        while let Some(end) = buf.iter().position(|b| *b == b'\n') {
            let line = trim_cr(&buf[..end]);
            if line.len() > max {
                let _ =
                    write_answer(&mut stream, &too_large(ctx, max), deadline_from_now(ctx)).await;
                return;
            }
            if !line.trim_ascii().is_empty() {
                let answer = ctx.answer(line, peer.ip());
                if !write_answer(&mut stream, &answer, deadline_from_now(ctx)).await {
                    return;
                }
            }
            buf.drain(..=end);
            deadline = Instant::now() + ctx.idle();
        }
        if buf.len() > max {
            let _ = write_answer(&mut stream, &too_large(ctx, max), deadline_from_now(ctx)).await;
            return;
        }
        match timeout_at(deadline, stream.read(&mut chunk)).await {
            Err(_) => return, // idle: the request did not arrive in time
            Ok(Err(_)) => return,
            Ok(Ok(0)) => {
                // Half-close: a last request without a newline is still answered.
                let line = trim_cr(&buf);
                if !line.trim_ascii().is_empty() {
                    let answer = ctx.answer(line, peer.ip());
                    let _ = write_answer(&mut stream, &answer, deadline_from_now(ctx)).await;
                }
                let _ = stream.shutdown().await;
                return;
            }
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

fn deadline_from_now(ctx: &QueryContext) -> Instant {
    Instant::now() + ctx.idle()
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
