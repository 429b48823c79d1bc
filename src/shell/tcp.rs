//! TCP data ports (SPEC §3, "TCP data ports"), the shell: accept (under the core's
//! pending-line caps and the descriptor budget upstream sockets share), read the token line
//! within 5 s, ask the core (`session::tcp::TcpPort::on_line`), connect to the target it
//! names, write the PROXY v2 header it rendered (if any) and relay both ways until either
//! side is done, the connection is idle for `sessionTimeoutSeconds`, a newer connection with
//! the same token replaces it, or the drain ends.
//!
//! One task per connection on the tokio runtime. The relay holds no buffer while both sides
//! are quiet: each direction waits for readability, borrows a 64 KiB buffer for the burst and
//! gives it back when the source would block; a slow receiver stops the reads from the other
//! side (at most one chunk is in flight per direction). Half-closes are passed on.
//!
//! Owns the sockets and the relay. Must not decide whether a line opens a session.

use std::io;
use std::net::{Shutdown, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};
use tokio::time::{Instant, timeout, timeout_at};

use super::udp::DataShared;
use crate::metrics::Metrics;
use crate::model::{TcpClose, TcpRefusal};
use crate::protocol::tcp_line::{Line, MAX_LINE, token_line};
use crate::session::tcp::{Pending, TcpOpen};

/// How long a client has to send its whole token line.
pub(crate) const TOKEN_LINE_DEADLINE: Duration = Duration::from_secs(5);
/// How long connecting to the target may take.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// The relay's read size per direction while bytes flow.
const CHUNK: usize = 64 * 1024;

/// What every connection of one TCP data port shares.
pub(crate) struct TcpPort {
    pub shared: Arc<DataShared>,
    /// The port's decisions, pending lines and token holders.
    core: crate::session::tcp::TcpPort,
}

impl TcpPort {
    pub(crate) fn new(index: usize, shared: Arc<DataShared>) -> Self {
        Self {
            core: crate::session::tcp::TcpPort::new(
                Arc::clone(&shared.tokens),
                index,
                shared.ledger.grouping(),
                Arc::clone(&shared.settings.load().known),
            ),
            shared,
        }
    }
}

/// A connection's places in the descriptor budget upstream sockets share
/// (`DataShared::upstreams`): one for the client's socket, one more for the target's once
/// it connects. Given back when dropped, so a full budget refuses newcomers instead of
/// failing `accept` for everyone.
struct Descriptors {
    shared: Arc<DataShared>,
    held: usize,
}

impl Descriptors {
    /// The client socket's place, or `None` when the budget is spent.
    fn for_client(shared: &Arc<DataShared>) -> Option<Self> {
        shared.upstreams.try_take().then(|| Self {
            shared: Arc::clone(shared),
            held: 1,
        })
    }

    /// One more place, for the target's socket.
    fn take_one_more(&mut self) -> bool {
        let took = self.shared.upstreams.try_take();
        self.held += usize::from(took);
        took
    }
}

impl Drop for Descriptors {
    fn drop(&mut self) {
        for _ in 0..self.held {
            self.shared.upstreams.give_back();
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
        // Lines still arriving are bounded in all and per client network, so a slowloris
        // flood from one network cannot take every place; their descriptors count in the
        // budget upstream sockets share.
        let limits = port.shared.settings.load().tcp;
        let waiting = match port.core.on_connect(peer.ip(), limits) {
            Ok(waiting) => waiting,
            Err(why) => {
                refuse(&port.shared.metrics, why);
                continue;
            }
        };
        let Some(fds) = Descriptors::for_client(&port.shared) else {
            refuse(&port.shared.metrics, TcpRefusal::Descriptors);
            continue;
        };
        let port = Arc::clone(&port);
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            connection(stream, peer, &port, (waiting, fds), shutdown).await;
        });
    }
}

fn refuse(metrics: &Metrics, why: TcpRefusal) {
    metrics.hot.tcp_refused[why.index()].inc();
}

/// One client connection: token line, the core's decision, connect, relay, accounting.
async fn connection(
    mut client: TcpStream,
    peer: SocketAddr,
    port: &TcpPort,
    (waiting, mut fds): (Pending, Descriptors),
    shutdown: watch::Receiver<bool>,
) {
    let metrics = &port.shared.metrics;
    let (head, token, rest) = match read_line(&mut client).await {
        Ok(line) => line,
        Err(why) => return refuse(metrics, why),
    };
    drop(waiting);
    // The address the client connected to, for the PROXY header; none: it is already gone.
    let Ok(local) = client.local_addr() else {
        return refuse(metrics, TcpRefusal::BadLine);
    };
    let generation = port.shared.settings.load();
    let limits = generation.tcp;
    let (idle, access) = (
        generation.config.session_timeout,
        generation.config.access_log,
    );
    drop(generation);
    let open = match port.core.on_line(
        &head[token],
        (peer, local),
        &port.shared.ledger,
        limits,
        Instant::now(),
    ) {
        Ok(open) => open,
        Err(why) => return refuse(metrics, why),
    };
    if !fds.take_one_more() {
        return refuse(metrics, TcpRefusal::Descriptors);
    }
    let upstream = match timeout(CONNECT_TIMEOUT, TcpStream::connect(open.target.addr)).await {
        Err(_) => return refuse(metrics, TcpRefusal::TargetTimeout),
        Ok(Err(_)) => return refuse(metrics, TcpRefusal::TargetRefused),
        Ok(Ok(s)) => s,
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    metrics.hot.tcp_sessions_created.inc();
    metrics.hot.tcp_sessions_active.inc();
    let started = Instant::now();
    let outcome = relay(
        &client,
        &upstream,
        (open.header.as_deref().unwrap_or_default(), &head[rest..]),
        idle,
        &open.replaced,
        shutdown,
    )
    .await;
    metrics.hot.tcp_sessions_active.dec();
    metrics.hot.tcp_sessions_closed[outcome.close.index()].inc();
    metrics.hot.tcp_bytes_to_target.inc_by(outcome.to_target);
    metrics.hot.tcp_bytes_to_client.inc_by(outcome.to_client);
    if access {
        access_log(peer, &open, &outcome, started.elapsed());
    }
    port.core.end(open);
}

/// Reads the token line (within [`TOKEN_LINE_DEADLINE`]): the bytes read, the token's range
/// and where the game's bytes start. Reads no further than a token line can reach: the
/// game's bytes stay in the socket unless they came in the same segment.
async fn read_line(
    client: &mut TcpStream,
) -> Result<(Vec<u8>, std::ops::Range<usize>, usize), TcpRefusal> {
    let mut head = Vec::with_capacity(MAX_LINE);
    let deadline = Instant::now() + TOKEN_LINE_DEADLINE;
    loop {
        match token_line(&head, MAX_LINE) {
            Line::Complete { token, rest } => return Ok((head, token, rest)),
            Line::Bad => return Err(TcpRefusal::BadLine),
            Line::Incomplete => {}
        }
        let mut chunk = [0u8; MAX_LINE];
        let room = MAX_LINE - head.len();
        match timeout_at(deadline, client.read(&mut chunk[..room])).await {
            Err(_) => return Err(TcpRefusal::LateToken),
            Ok(Ok(0)) | Ok(Err(_)) => return Err(TcpRefusal::BadLine),
            Ok(Ok(n)) => head.extend_from_slice(&chunk[..n]),
        }
    }
}

/// How a relay ended, and what it carried.
struct Outcome {
    close: TcpClose,
    to_target: u64,
    to_client: u64,
}

/// Relays `client` ⇄ `upstream` (after sending `header`, the director's PROXY v2 header if
/// any, then `first`, the bytes that followed the token line) until both directions are
/// closed, nothing moved for `idle`, `replaced` fires or the director stops.
async fn relay(
    client: &TcpStream,
    upstream: &TcpStream,
    (header, first): (&[u8], &[u8]),
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
        // Ours first, before any byte of the client's: a header the client sends is payload.
        if !header.is_empty() {
            write_all(upstream, header).await?;
        }
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
fn access_log(client: SocketAddr, open: &TcpOpen<'_>, o: &Outcome, duration: Duration) {
    let target = &open.target;
    tracing::info!(
        target: "udp_director::access",
        protocol = "tcp",
        client = %client,
        mapping = %target.mapping,
        namespace = %target.namespace,
        target_name = %target.name,
        target_addr = %target.addr,
        player = target.player.as_deref().unwrap_or_default(),
        reason = o.close.as_str(),
        duration_ms = duration.as_millis() as u64,
        bytes_to_target = o.to_target,
        bytes_to_client = o.to_client,
        "session closed"
    );
}
