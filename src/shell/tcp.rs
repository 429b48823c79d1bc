//! TCP data ports (SPEC §3, "TCP data ports"): a client connects, writes its token and `\n`
//! within 5 s, and from then on its bytes are relayed both ways to a connection the director
//! opens to the token's target on this port's target port.
//!
//! One task per connection on the tokio runtime. The relay holds no buffer while both sides
//! are quiet: each direction waits for readability, borrows a 64 KiB buffer for the burst and
//! gives it back when the source would block; a slow receiver stops the reads from the other
//! side (at most one chunk is in flight per direction). Half-closes are passed on. The
//! connection counts as a session in the shared ledger (`maxSessions`,
//! `maxSessionsPerClientIp`, drain), ends after `sessionTimeoutSeconds` with no byte either
//! way, and a newer connection with the same token replaces it.
//!
//! Owns the token-line framing ([`token_line`], pure) and the relay. Must not resolve targets
//! or issue tokens.

use std::io;
use std::net::{IpAddr, Shutdown, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use dashmap::DashMap;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};
use tokio::time::{Instant, timeout, timeout_at};

use super::udp::DataShared;
use crate::metrics::Metrics;
use crate::model::{Target, TcpClose, TcpRefusal, TokenKey, Use};
use crate::token::Redeem;
use crate::util::bounded::{Bounded, Place};

/// How long a client has to send its whole token line.
pub(crate) const TOKEN_LINE_DEADLINE: Duration = Duration::from_secs(5);
/// How long connecting to the target may take.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest token line: the longest token (sealed) and `\r\n`.
pub(crate) const MAX_LINE: usize = crate::protocol::token_wire::MAX_TOKEN + 2;
/// The relay's read size per direction while bytes flow.
const CHUNK: usize = 64 * 1024;

/// Where the token line ends in the bytes that have arrived so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Line {
    /// No `\n` yet and still short enough.
    Incomplete,
    /// Longer than [`MAX_LINE`] without a `\n`, or an empty token.
    Bad,
    /// `token` is the trimmed token's range; game bytes start at `rest`.
    Complete {
        token: std::ops::Range<usize>,
        rest: usize,
    },
}

/// Frames the token line of `buf` (what a client sent first), at most `max` bytes with its
/// `\n`. Surrounding ASCII whitespace (and a `\r`) is not part of the token.
pub(crate) fn token_line(buf: &[u8], max: usize) -> Line {
    let Some(end) = buf.iter().take(max).position(|b| *b == b'\n') else {
        return if buf.len() >= max {
            Line::Bad
        } else {
            Line::Incomplete
        };
    };
    let line = &buf[..end];
    let start = line
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(end);
    let stop = line
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |i| i + 1);
    if start >= stop {
        return Line::Bad;
    }
    Line::Complete {
        token: start..stop,
        rest: end + 1,
    }
}

/// What every connection of one TCP data port shares.
pub(crate) struct TcpPort {
    /// Its position in `dataPorts` (the token's port for it).
    pub index: usize,
    pub shared: Arc<DataShared>,
    /// The live connection of each token on this port, and how to end it.
    owners: DashMap<TokenKey, (u64, Arc<Notify>)>,
    next_id: AtomicU64,
    /// Connections still sending their token line (held under `limits.maxQueryConnections`).
    pending: Arc<Bounded>,
}

impl TcpPort {
    pub(crate) fn new(index: usize, shared: Arc<DataShared>) -> Self {
        Self {
            index,
            shared,
            owners: DashMap::new(),
            next_id: AtomicU64::new(0),
            pending: Arc::new(Bounded::new(usize::MAX)),
        }
    }
}

/// Accepts connections until `shutdown`, or until the director drains (then the listener
/// closes and newcomers are refused by the kernel; live connections go on).
pub(crate) async fn serve(
    listener: TcpListener,
    port: Arc<TcpPort>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut drain_check = tokio::time::interval(Duration::from_millis(100));
    loop {
        let (stream, peer) = tokio::select! {
            accepted = super::listen::accept_or_back_off(&listener, "TCP data") => match accepted {
                Some(pair) => pair,
                None => continue,
            },
            _ = drain_check.tick() => {
                if port.shared.ledger.draining() {
                    return;
                }
                continue;
            }
            _ = shutdown.changed() => return,
        };
        if port.shared.ledger.draining() {
            refuse(&port.shared.metrics, TcpRefusal::Draining);
            continue;
        }
        // Lines still arriving are bounded, so a slowloris flood cannot take every descriptor.
        let cap = port
            .shared
            .settings
            .load()
            .query
            .limits
            .max_query_connections;
        let Some(waiting) = Place::within(&port.pending, cap) else {
            refuse(&port.shared.metrics, TcpRefusal::PendingCap);
            continue;
        };
        let port = Arc::clone(&port);
        let shutdown = shutdown.clone();
        tokio::spawn(async move { connection(stream, peer, &port, waiting, shutdown).await });
    }
}

fn refuse(metrics: &Metrics, why: TcpRefusal) {
    metrics.tcp_refused[why.index()].inc();
}

/// One client connection: token line, admission, connect, relay, accounting.
async fn connection(
    mut client: TcpStream,
    peer: SocketAddr,
    port: &TcpPort,
    waiting: Place,
    shutdown: watch::Receiver<bool>,
) {
    let metrics = &port.shared.metrics;
    let mut head = Vec::with_capacity(MAX_LINE);
    let deadline = Instant::now() + TOKEN_LINE_DEADLINE;
    let (token, rest) = loop {
        match token_line(&head, MAX_LINE) {
            Line::Complete { token, rest } => break (token, rest),
            Line::Bad => return refuse(metrics, TcpRefusal::BadLine),
            Line::Incomplete => {}
        }
        // Read no further than a token line can reach: the game's bytes stay in the socket
        // unless they came in the same segment.
        let mut chunk = [0u8; MAX_LINE];
        let room = MAX_LINE - head.len();
        match timeout_at(deadline, client.read(&mut chunk[..room])).await {
            Err(_) => return refuse(metrics, TcpRefusal::LateToken),
            Ok(Ok(0)) | Ok(Err(_)) => return refuse(metrics, TcpRefusal::BadLine),
            Ok(Ok(n)) => head.extend_from_slice(&chunk[..n]),
        }
    };
    drop(waiting);
    let now = Instant::now();
    let grant = match port
        .shared
        .tokens
        .redeem(&head[token], peer.ip(), Use::Open, now)
    {
        Ok(g) => g,
        Err(r) => {
            return refuse(metrics, TcpRefusal::from(r));
        }
    };
    let Some(target) = grant.target.on_data_port(port.index) else {
        return refuse(metrics, TcpRefusal::InvalidToken);
    };
    let generation = port.shared.settings.load();
    let config = &generation.config;
    let Some(_seat) = Seat::admit(
        &port.shared.ledger,
        peer.ip(),
        config.max_sessions,
        config.max_sessions_per_client_ip,
    )
    .map_err(|why| refuse(metrics, why))
    .ok() else {
        return;
    };
    let upstream = match timeout(CONNECT_TIMEOUT, TcpStream::connect(target.addr)).await {
        Err(_) => return refuse(metrics, TcpRefusal::TargetTimeout),
        Ok(Err(_)) => return refuse(metrics, TcpRefusal::TargetRefused),
        Ok(Ok(s)) => s,
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    // One connection per token on this port: a newer one replaces it.
    let id = port.next_id.fetch_add(1, Ordering::Relaxed);
    let replaced = Arc::new(Notify::new());
    if let Some((_, old)) = port.owners.insert(grant.key, (id, Arc::clone(&replaced))) {
        old.notify_one();
    }
    metrics.tcp_sessions_created.inc();
    metrics.tcp_sessions_active.inc();
    let started = Instant::now();
    let idle = config.session_timeout;
    let access = config.access_log;
    drop(generation);
    let outcome = relay(&client, &upstream, &head[rest..], idle, &replaced, shutdown).await;
    port.owners
        .remove_if(&grant.key, |_, (owner, _)| *owner == id);
    metrics.tcp_sessions_active.dec();
    metrics.tcp_sessions_closed[outcome.close.index()].inc();
    metrics.tcp_bytes_to_target.inc_by(outcome.to_target);
    metrics.tcp_bytes_to_client.inc_by(outcome.to_client);
    if access {
        access_log(peer, &target, &outcome, started.elapsed());
    }
}

/// A place in the session ledger (and the client IP's share), given back when dropped.
struct Seat<'a> {
    ledger: &'a crate::session::Ledger,
    ip: IpAddr,
}

impl<'a> Seat<'a> {
    fn admit(
        ledger: &'a crate::session::Ledger,
        ip: IpAddr,
        cap: usize,
        per_ip: usize,
    ) -> Result<Self, TcpRefusal> {
        let refusal = TcpRefusal::from;
        ledger.try_admit_ip(ip, per_ip).map_err(refusal)?;
        if let Err(r) = ledger.try_admit(cap) {
            ledger.release_ip(ip);
            return Err(refusal(r));
        }
        Ok(Self { ledger, ip })
    }
}

impl Drop for Seat<'_> {
    fn drop(&mut self) {
        self.ledger.release();
        self.ledger.release_ip(self.ip);
    }
}

/// How a relay ended, and what it carried.
struct Outcome {
    close: TcpClose,
    to_target: u64,
    to_client: u64,
}

/// Relays `client` ⇄ `upstream` (after sending `first`, the bytes that followed the token
/// line) until both directions are closed, nothing moved for `idle`, `replaced` fires or the
/// director stops.
async fn relay(
    client: &TcpStream,
    upstream: &TcpStream,
    first: &[u8],
    idle: Duration,
    replaced: &Notify,
    mut shutdown: watch::Receiver<bool>,
) -> Outcome {
    // Milliseconds from `origin` to the last byte moved either way.
    let origin = Instant::now();
    let moved = AtomicU64::new(0);
    let (to_target, to_client) = (AtomicU64::new(0), AtomicU64::new(0));
    let clock = Clock {
        origin,
        last: &moved,
    };
    let work = async {
        if !first.is_empty() {
            write_all(upstream, first).await?;
            to_target.fetch_add(first.len() as u64, Ordering::Relaxed);
        }
        let up = pump(client, upstream, &to_target, &clock);
        let down = pump(upstream, client, &to_client, &clock);
        tokio::try_join!(up, down).map(|_| ())
    };
    tokio::pin!(work);
    let close = loop {
        let quiet_until = origin + Duration::from_millis(moved.load(Ordering::Relaxed)) + idle;
        tokio::select! {
            done = &mut work => break match done {
                Ok(()) => TcpClose::Closed,
                Err(_) => TcpClose::Error,
            },
            _ = tokio::time::sleep_until(quiet_until) => {
                let last = origin + Duration::from_millis(moved.load(Ordering::Relaxed));
                if Instant::now() >= last + idle {
                    break TcpClose::Idle;
                }
            }
            _ = replaced.notified() => break TcpClose::Replaced,
            _ = shutdown.changed() => break TcpClose::Drained,
        }
    };
    Outcome {
        close,
        to_target: to_target.load(Ordering::Relaxed),
        to_client: to_client.load(Ordering::Relaxed),
    }
}

/// When a relay last moved a byte, for the idle timeout.
struct Clock<'a> {
    origin: Instant,
    last: &'a AtomicU64,
}

impl Clock<'_> {
    fn touch(&self) {
        let ms = self.origin.elapsed().as_millis() as u64;
        self.last.fetch_max(ms, Ordering::Relaxed);
    }
}

/// One direction: bytes from `from` to `to` until `from` ends, then the end is passed on
/// (`to`'s write side shut). The buffer exists only while bytes are ready.
async fn pump(
    from: &TcpStream,
    to: &TcpStream,
    count: &AtomicU64,
    clock: &Clock<'_>,
) -> io::Result<()> {
    loop {
        from.readable().await?;
        let mut buf = vec![0u8; CHUNK];
        loop {
            match from.try_read(&mut buf) {
                Ok(0) => {
                    // Half-close: the peer sees our FIN; the other direction goes on.
                    let _ = socket2::SockRef::from(to).shutdown(Shutdown::Write);
                    return Ok(());
                }
                Ok(n) => {
                    write_all(to, &buf[..n]).await?;
                    count.fetch_add(n as u64, Ordering::Relaxed);
                    clock.touch();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
    }
}

async fn write_all(to: &TcpStream, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        to.writable().await?;
        match to.try_write(bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The access log line of a relayed TCP session (same target as UDP's).
fn access_log(client: SocketAddr, target: &Target, o: &Outcome, duration: Duration) {
    tracing::info!(
        target: "udp_director::access",
        protocol = "tcp",
        client = %client,
        mapping = %target.mapping,
        namespace = %target.namespace,
        target_name = %target.name,
        target_addr = %target.addr,
        reason = o.close.as_str(),
        duration_ms = duration.as_millis() as u64,
        bytes_to_target = o.to_target,
        bytes_to_client = o.to_client,
        "session closed"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_line_is_framed_trimmed_and_bounded() {
        let tok = "550e8400-e29b-41d4-a716-446655440000";
        let line = format!("{tok}\nGAME");
        assert_eq!(
            token_line(line.as_bytes(), MAX_LINE),
            Line::Complete {
                token: 0..36,
                rest: 37
            }
        );
        let line = format!("  {tok}\r\n");
        assert_eq!(
            token_line(line.as_bytes(), MAX_LINE),
            Line::Complete {
                token: 2..38,
                rest: 40
            }
        );
        assert_eq!(token_line(tok.as_bytes(), MAX_LINE), Line::Incomplete);
        assert_eq!(token_line(b"", MAX_LINE), Line::Incomplete);
        assert_eq!(token_line(b"\n", MAX_LINE), Line::Bad);
        assert_eq!(token_line(b" \r\n", MAX_LINE), Line::Bad);
        assert_eq!(token_line(&[b'a'; MAX_LINE], MAX_LINE), Line::Bad);
        // The newline must come within the bound.
        let mut long = vec![b'a'; MAX_LINE];
        long.push(b'\n');
        assert_eq!(token_line(&long, MAX_LINE), Line::Bad);
        let mut fits = vec![b'a'; MAX_LINE - 1];
        fits.push(b'\n');
        assert!(matches!(
            token_line(&fits, MAX_LINE),
            Line::Complete { rest, .. } if rest == MAX_LINE
        ));
    }
}
