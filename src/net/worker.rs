//! One data-plane worker: a thread, a mio poll, the worker's data socket, its session table
//! and the upstream sockets that table's bindings need.
//!
//! Per datagram it does one hash lookup, one `last_seen` write and one send. It never
//! allocates on that path, never logs per datagram and holds no lock; drops are counted by
//! reason and summarised in the log at most every ten seconds.

use std::io::{self, IoSliceMut};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token, Waker};
use prometheus_client::metrics::counter::Counter;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::time::Instant;

use super::{DataSettings, DataShared, SAMPLE_MAX, WorkerSample, set_buffers};
use crate::metrics::{self, Metrics};
use crate::protocol::datagram::{Datagram, classify};
use crate::resolve::Target;
use crate::session::{CloseReason, Closed, Connected, SessionId, SessionTable, SocketId, floor};
use crate::token::Rejection;

const DATA: Token = Token(0);
const WAKE: Token = Token(1);
/// `recvmmsg` calls on one socket before the others get a turn.
const BUDGET: usize = 8;
/// Longest sleep: bounds how stale flushed metrics get.
const MAX_WAIT: Duration = Duration::from_millis(250);
const FLUSH_EVERY: Duration = Duration::from_millis(100);
const DROP_LOG_EVERY: Duration = Duration::from_secs(10);
/// Datagrams per `recvmmsg` call.
const BATCH: usize = quinn_udp::BATCH_SIZE;
/// One receive slot: the largest UDP payload (65 507 bytes over IPv4) fits.
const SLOT: usize = 65_536;

/// Why a datagram was not delivered. A label value of `udp_director_datagrams_dropped_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    Empty,
    /// Not a token, not from a session, and no default endpoint.
    NoSession,
    InvalidToken,
    ExpiredToken,
    MalformedControl,
    SessionCap,
    Draining,
    /// The default endpoint query resolved to nothing.
    NoDefaultTarget,
    /// An upstream socket could not be opened (e.g. EMFILE).
    UpstreamSocket,
    /// Sending towards a target failed.
    SendToTarget,
    /// Sending towards a client failed.
    SendToClient,
    /// Arrived on an upstream socket from something that is not a bound target.
    UnknownSource,
    /// A receive call failed.
    RecvError,
    /// Larger than the path towards its destination takes (`EMSGSIZE`).
    Oversize,
    /// An upstream socket reported an error (e.g. ICMP port unreachable from a target).
    UpstreamError,
}

impl DropReason {
    pub const ALL: [DropReason; 15] = [
        DropReason::Empty,
        DropReason::NoSession,
        DropReason::InvalidToken,
        DropReason::ExpiredToken,
        DropReason::MalformedControl,
        DropReason::SessionCap,
        DropReason::Draining,
        DropReason::NoDefaultTarget,
        DropReason::UpstreamSocket,
        DropReason::SendToTarget,
        DropReason::SendToClient,
        DropReason::UnknownSource,
        DropReason::RecvError,
        DropReason::Oversize,
        DropReason::UpstreamError,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Empty => "empty",
            DropReason::NoSession => "no_session",
            DropReason::InvalidToken => "invalid_token",
            DropReason::ExpiredToken => "expired_token",
            DropReason::MalformedControl => "malformed_control",
            DropReason::SessionCap => "session_cap",
            DropReason::Draining => "draining",
            DropReason::NoDefaultTarget => "no_default_target",
            DropReason::UpstreamSocket => "upstream_socket",
            DropReason::SendToTarget => "send_to_target",
            DropReason::SendToClient => "send_to_client",
            DropReason::UnknownSource => "unknown_source",
            DropReason::RecvError => "recv_error",
            DropReason::Oversize => "oversize",
            DropReason::UpstreamError => "upstream_error",
        }
    }
}

/// Counts kept on the worker's own cache lines and added to the shared metrics periodically.
#[derive(Default)]
struct LocalStats {
    datagrams_to_target: u64,
    bytes_to_target: u64,
    datagrams_to_client: u64,
    bytes_to_client: u64,
    created: u64,
    resets: u64,
    redeemed: u64,
    closed: [u64; CloseReason::ALL.len()],
    drops: [u64; DropReason::ALL.len()],
    rejected_unknown: u64,
    rejected_expired: u64,
    refused_cap: u64,
    refused_draining: u64,
}

/// Pre-resolved metric handles, in the same order as the local arrays.
struct Handles {
    datagrams_to_target: Counter,
    bytes_to_target: Counter,
    datagrams_to_client: Counter,
    bytes_to_client: Counter,
    closed: Vec<Counter>,
    drops: Vec<Counter>,
    rejected_unknown: Counter,
    rejected_expired: Counter,
    refused_cap: Counter,
    refused_draining: Counter,
}

impl Handles {
    fn new(m: &Metrics) -> Self {
        Self {
            datagrams_to_target: Metrics::counter(&m.datagrams, "direction", metrics::TO_TARGET),
            bytes_to_target: Metrics::counter(&m.bytes, "direction", metrics::TO_TARGET),
            datagrams_to_client: Metrics::counter(&m.datagrams, "direction", metrics::TO_CLIENT),
            bytes_to_client: Metrics::counter(&m.bytes, "direction", metrics::TO_CLIENT),
            closed: CloseReason::ALL
                .iter()
                .map(|r| Metrics::counter(&m.sessions_closed, "reason", r.as_str()))
                .collect(),
            drops: DropReason::ALL
                .iter()
                .map(|r| Metrics::counter(&m.drops, "reason", r.as_str()))
                .collect(),
            rejected_unknown: Metrics::counter(&m.tokens_rejected, "reason", "unknown"),
            rejected_expired: Metrics::counter(&m.tokens_rejected, "reason", "expired"),
            refused_cap: Metrics::counter(&m.sessions_refused, "reason", "cap"),
            refused_draining: Metrics::counter(&m.sessions_refused, "reason", "draining"),
        }
    }
}

fn close_index(r: CloseReason) -> usize {
    CloseReason::ALL.iter().position(|x| *x == r).unwrap_or(0)
}

fn drop_index(r: DropReason) -> usize {
    DropReason::ALL.iter().position(|x| *x == r).unwrap_or(0)
}

/// Errors the kernel raises from a queued ICMP report (IP_RECVERR), not from this call.
fn is_icmp_report(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::HostUnreachable
            | io::ErrorKind::NetworkUnreachable
    )
}

/// `EMSGSIZE` is its own reason; anything else is the caller's.
fn send_error(e: &io::Error, otherwise: DropReason) -> DropReason {
    if e.raw_os_error() == Some(nix::errno::Errno::EMSGSIZE as i32) {
        DropReason::Oversize
    } else {
        otherwise
    }
}

fn upstream_token(id: SocketId) -> Token {
    Token(2 + ((id.index as usize) << 1 | usize::from(id.v6)))
}

fn socket_of(token: Token) -> SocketId {
    let raw = token.0 - 2;
    SocketId {
        v6: raw & 1 == 1,
        index: (raw >> 1) as u32,
    }
}

/// The `BATCH × SLOT` receive ring with the first byte of every slot written now, so the
/// page that holds any datagram up to ~4 KB is resident from the start: the first burst takes
/// no page faults on the hot path, and the ring's working set is part of the baseline rather
/// than growth that appears with the first 32-datagram batch (`make soak`). The rest of a
/// slot is touched only by larger datagrams.
fn receive_ring() -> Box<[u8]> {
    let mut rx = vec![0u8; BATCH * SLOT].into_boxed_slice();
    for slot in rx.chunks_mut(SLOT) {
        if let Some(first) = slot.first_mut() {
            *first = 1;
        }
    }
    rx
}

pub struct Worker {
    index: usize,
    poll: Poll,
    waker: Arc<Waker>,
    data: UdpSocket,
    upstreams: [Vec<Option<UdpSocket>>; 2],
    table: SessionTable,
    shared: Arc<DataShared>,
    settings: Arc<DataSettings>,
    /// `BATCH` receive slots of `SLOT` bytes, filled by one `recvmmsg`.
    rx: Box<[u8]>,
    metas: [quinn_udp::RecvMeta; BATCH],
    /// Batched receive. Built on a throwaway socket so ours stay plain: no GRO coalescing,
    /// no control messages to decode.
    udp: quinn_udp::UdpSocketState,
    buffer_bytes: usize,
    stats: LocalStats,
    handles: Handles,
    closed: Vec<Closed>,
    again: Vec<Token>,
    open_sockets: i64,
    /// What this worker last added to the shared socket gauge.
    flushed: i64,
    last_flush: Instant,
    /// When a datagram last arrived (for `busyPollMicros`).
    last_datagram: Instant,
    last_drop_log: Instant,
    /// Drops by this worker since its last drop summary.
    drops_since_log: u64,
    /// The last `/sessions` request answered.
    sampled: u64,
}

impl Worker {
    pub fn new(
        index: usize,
        socket: Socket,
        buffer_bytes: usize,
        shared: Arc<DataShared>,
    ) -> io::Result<Self> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKE)?);
        let mut data = UdpSocket::from_std(socket.into());
        poll.registry()
            .register(&mut data, DATA, Interest::READABLE)?;
        let settings = shared.settings();
        let now = Instant::now();
        Ok(Self {
            index,
            poll,
            waker,
            data,
            upstreams: [
                Vec::with_capacity(floor::<Option<UdpSocket>>()),
                Vec::with_capacity(floor::<Option<UdpSocket>>()),
            ],
            table: SessionTable::new(settings.session_timeout),
            handles: Handles::new(&shared.metrics),
            shared,
            settings,
            rx: receive_ring(),
            metas: [quinn_udp::RecvMeta::default(); BATCH],
            udp: quinn_udp::UdpSocketState::new(
                (&std::net::UdpSocket::bind("127.0.0.1:0")?).into(),
            )?,
            buffer_bytes,
            stats: LocalStats::default(),
            closed: Vec::with_capacity(floor::<Closed>()),
            again: Vec::new(),
            open_sockets: 0,
            flushed: 0,
            last_flush: now,
            last_datagram: now,
            last_drop_log: now,
            drops_since_log: 0,
            sampled: 0,
        })
    }

    pub fn waker(&self) -> Arc<Waker> {
        Arc::clone(&self.waker)
    }

    /// The worker's loop; returns after `stop` is set, with every session closed.
    pub fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        let mut ready: Vec<Token> = Vec::with_capacity(1024);
        loop {
            if self.shared.stop.load(Ordering::Acquire) {
                let now = Instant::now();
                let ledger = Arc::clone(&self.shared.ledger);
                let mut closed = std::mem::take(&mut self.closed);
                self.table
                    .close_all(CloseReason::Drained, now, &ledger, &mut closed);
                self.finish_closed(&mut closed);
                self.flush(now);
                return;
            }
            let now = Instant::now();
            let busy = now.saturating_duration_since(self.last_datagram) < self.settings.busy_poll;
            let wait = if self.again.is_empty() && !busy {
                self.table
                    .poll_timeout()
                    .map(|at| at.saturating_duration_since(now) + Duration::from_millis(1))
                    .unwrap_or(MAX_WAIT)
                    .min(MAX_WAIT)
            } else {
                Duration::ZERO
            };
            if let Err(e) = self.poll.poll(&mut events, Some(wait)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    tracing::error!(worker = self.index, error = %e, "poll failed");
                }
                continue;
            }
            ready.clear();
            ready.extend(events.iter().map(|e| e.token()));
            ready.append(&mut self.again);
            let now = Instant::now();
            for token in ready.iter().copied() {
                let more = match token {
                    WAKE => {
                        self.settings = self.shared.settings();
                        self.table.set_timeout(self.settings.session_timeout);
                        self.answer_sample(now);
                        false
                    }
                    DATA => self.drain(None, now),
                    t => self.drain(Some(socket_of(t)), now),
                };
                if more && !self.again.contains(&token) {
                    self.again.push(token);
                }
            }
            let ledger = Arc::clone(&self.shared.ledger);
            let mut closed = std::mem::take(&mut self.closed);
            self.table.expire(now, &ledger, &mut closed);
            self.finish_closed(&mut closed);
            // A mass expiry must not pin its peak in this scratch buffer.
            closed.shrink_to(floor::<Closed>());
            self.closed = closed;
            if now.saturating_duration_since(self.last_flush) >= FLUSH_EVERY {
                self.flush(now);
            }
        }
    }

    /// Posts a sample of this worker's sessions if `/sessions` asked since the last one.
    fn answer_sample(&mut self, now: Instant) {
        let request = self.shared.samples.requested();
        if request == self.sampled {
            return;
        }
        self.sampled = request;
        self.shared.samples.post(WorkerSample {
            request,
            worker: self.index,
            sessions: self.table.sample(SAMPLE_MAX, now),
        });
    }

    /// Receives up to `BATCH` datagrams from the data socket (`None`) or an upstream socket.
    /// `Ok(0)` never happens: an empty socket is `WouldBlock`.
    fn recv_batch(&mut self, from: Option<SocketId>) -> io::Result<usize> {
        let socket = match from {
            None => &self.data,
            Some(id) => match self.upstreams[usize::from(id.v6)]
                .get(id.index as usize)
                .and_then(Option::as_ref)
            {
                Some(s) => s,
                None => return Err(io::ErrorKind::WouldBlock.into()),
            },
        };
        let mut slots = self.rx.chunks_mut(SLOT);
        let mut iovs: [IoSliceMut<'_>; BATCH] =
            std::array::from_fn(|_| IoSliceMut::new(slots.next().unwrap_or_default()));
        self.udp.recv(socket.into(), &mut iovs, &mut self.metas)
    }

    /// Reads datagrams from one socket until it is empty or the budget is spent; true when
    /// the budget ran out first (the caller comes back without waiting).
    fn drain(&mut self, from: Option<SocketId>, now: Instant) -> bool {
        for _ in 0..BUDGET {
            let n = match self.recv_batch(from) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // An ICMP error from a target (port closed, host gone) surfaces here once;
                // the queued reports are read off so they neither pile up nor re-trigger.
                Err(_) => {
                    match from {
                        None => self.drop(DropReason::RecvError),
                        Some(id) => {
                            let reports = self.drain_error_queue(id);
                            for _ in 0..reports.max(1) {
                                self.drop(DropReason::UpstreamError);
                            }
                        }
                    }
                    continue;
                }
            };
            let rx = std::mem::take(&mut self.rx);
            for i in 0..n {
                let meta = self.metas[i];
                let slot = &rx[i * SLOT..i * SLOT + meta.len.min(SLOT)];
                if slot.is_empty() {
                    self.drop(DropReason::Empty);
                    continue;
                }
                // Our sockets never enable GRO, so stride == len; split anyway if it differs.
                for datagram in slot.chunks(meta.stride.clamp(1, SLOT)) {
                    match from {
                        None => self.on_client_datagram(datagram, meta.addr, now),
                        Some(socket) => self.on_target_datagram(socket, datagram, meta.addr, now),
                    }
                }
            }
            self.rx = rx;
            self.last_datagram = now;
            if n < BATCH {
                return false; // a short batch: the socket was empty
            }
        }
        true
    }

    fn on_client_datagram(&mut self, datagram: &[u8], client: SocketAddr, now: Instant) {
        if let Some(id) = self.table.lookup(&client) {
            match classify(datagram, &self.settings.magic) {
                Datagram::Data => self.forward_to_target(id, datagram, now),
                Datagram::Token(token) => match self.shared.tokens.redeem(token, now) {
                    // A retransmitted or new token from a live client: rebind, never forward.
                    Ok(target) => {
                        self.stats.redeemed += 1;
                        self.connect(client, target, now);
                    }
                    // Game traffic that merely looks like a token.
                    Err(_) => self.forward_to_target(id, datagram, now),
                },
                Datagram::Control(token) => match self.shared.tokens.redeem(token, now) {
                    Ok(target) => {
                        self.stats.redeemed += 1;
                        self.connect(client, target, now);
                    }
                    Err(r) => self.reject(r),
                },
                Datagram::MalformedControl => self.drop(DropReason::MalformedControl),
            }
            return;
        }
        if self.shared.draining.load(Ordering::Relaxed) {
            self.stats.refused_draining += 1;
            return self.drop(DropReason::Draining);
        }
        let redeemed = match classify(datagram, &self.settings.magic) {
            Datagram::Token(token) | Datagram::Control(token) => {
                Some(self.shared.tokens.redeem(token, now))
            }
            // Magic-prefixed datagrams are never forwarded, not even to a default endpoint.
            Datagram::MalformedControl => return self.drop(DropReason::MalformedControl),
            Datagram::Data => None,
        };
        match redeemed {
            Some(Ok(target)) => {
                self.stats.redeemed += 1;
                // The token datagram itself is not forwarded.
                self.connect(client, target, now);
            }
            Some(Err(r)) if self.settings.default_endpoint.is_none() => self.reject(r),
            _ => self.connect_default(client, datagram, now),
        }
    }

    /// Tokenless first datagram: a session to the default endpoint, datagram forwarded.
    fn connect_default(&mut self, client: SocketAddr, datagram: &[u8], now: Instant) {
        let Some(query) = &self.settings.default_endpoint else {
            return self.drop(DropReason::NoSession);
        };
        let resolver = match self.shared.resolver.read() {
            Ok(r) => Arc::clone(&r),
            Err(p) => Arc::clone(&p.into_inner()),
        };
        let target = match resolver.resolve(query, self.shared.ledger.as_ref()) {
            Ok(resolved) => resolved.target,
            Err(_) => return self.drop(DropReason::NoDefaultTarget),
        };
        if let Some(id) = self.connect(client, target, now) {
            self.forward_to_target(id, datagram, now);
        }
    }

    /// Executes a bind decision: opens/closes upstream sockets as the table says.
    fn connect(
        &mut self,
        client: SocketAddr,
        target: Arc<Target>,
        now: Instant,
    ) -> Option<SessionId> {
        let ledger = Arc::clone(&self.shared.ledger);
        let (id, binding, released) = match self.table.connect(client, target, now, &ledger) {
            Err(_) => {
                self.stats.refused_cap += 1;
                self.drop(DropReason::SessionCap);
                return None;
            }
            Ok(Connected::Unchanged { id }) => return Some(id),
            Ok(Connected::New { id, binding }) => {
                self.stats.created += 1;
                (id, binding, None)
            }
            Ok(Connected::Moved {
                id,
                binding,
                released,
                ..
            }) => {
                self.stats.resets += 1;
                (id, binding, released)
            }
        };
        if released == Some(binding.socket) {
            // The freed slot is the new one: keep its socket open rather than cycle it.
            return Some(id);
        }
        if let Some(old) = released {
            self.close_socket(old);
        }
        if binding.open_socket
            && let Err(e) = self.open_socket(binding.socket)
        {
            tracing::debug!(worker = self.index, error = %e, "cannot open upstream socket");
            self.drop(DropReason::UpstreamSocket);
            if let Some(c) = self
                .table
                .close(id, CloseReason::UpstreamError, now, &ledger)
            {
                let mut closed = vec![c];
                self.finish_closed(&mut closed);
            }
            return None;
        }
        Some(id)
    }

    fn forward_to_target(&mut self, id: SessionId, datagram: &[u8], now: Instant) {
        let Some((socket, to)) = self.table.forward_from_client(id, datagram.len(), now) else {
            return self.drop(DropReason::NoSession);
        };
        let send = |w: &Self| {
            w.upstreams[usize::from(socket.v6)]
                .get(socket.index as usize)
                .and_then(Option::as_ref)
                .map(|s| s.send_to(datagram, to))
        };
        let mut sent = send(self);
        // A send can fail with an ICMP error some *other* target on this shared socket
        // caused (the kernel reports it once, on whichever call comes next). Count that
        // report against the upstream and send again, so no bystander loses a datagram.
        if let Some(Err(e)) = &sent
            && is_icmp_report(e)
        {
            let reports = self.drain_error_queue(socket);
            for _ in 0..reports.max(1) {
                self.drop(DropReason::UpstreamError);
            }
            sent = send(self);
        }
        match sent {
            Some(Ok(_)) => {
                self.stats.datagrams_to_target += 1;
                self.stats.bytes_to_target += datagram.len() as u64;
            }
            Some(Err(e)) => self.drop(send_error(&e, DropReason::SendToTarget)),
            None => self.drop(DropReason::SendToTarget),
        }
    }

    /// A datagram from `from` on an upstream socket: to its session's client, or dropped.
    fn on_target_datagram(
        &mut self,
        socket: SocketId,
        datagram: &[u8],
        from: SocketAddr,
        now: Instant,
    ) {
        match self
            .table
            .forward_from_target(socket, &from, datagram.len(), now)
        {
            Some(client) => match self.data.send_to(datagram, client) {
                Ok(_) => {
                    self.stats.datagrams_to_client += 1;
                    self.stats.bytes_to_client += datagram.len() as u64;
                }
                Err(e) => self.drop(send_error(&e, DropReason::SendToClient)),
            },
            None => self.drop(DropReason::UnknownSource),
        }
    }

    /// Reads (and counts) the ICMP error reports queued on an upstream socket.
    fn drain_error_queue(&mut self, id: SocketId) -> usize {
        let Some(socket) = self.upstreams[usize::from(id.v6)]
            .get(id.index as usize)
            .and_then(Option::as_ref)
        else {
            return 0;
        };
        let sock = socket2::SockRef::from(socket);
        let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 64];
        let flags = nix::sys::socket::MsgFlags::MSG_ERRQUEUE.bits();
        // Bounded: the queue holds at most a receive buffer's worth of reports.
        (0..1024)
            .take_while(|_| sock.recv_with_flags(&mut buf, flags).is_ok())
            .count()
    }

    fn open_socket(&mut self, id: SocketId) -> io::Result<()> {
        if !self.shared.upstreams.try_take() {
            return Err(io::Error::other(
                "upstream socket budget spent (file descriptor limit)",
            ));
        }
        let opened = self.open_socket_within_budget(id);
        if opened.is_err() {
            self.shared.upstreams.give_back();
        }
        opened
    }

    fn open_socket_within_budget(&mut self, id: SocketId) -> io::Result<()> {
        let (domain, any) = if id.v6 {
            (Domain::IPV6, SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)))
        } else {
            (Domain::IPV4, SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)))
        };
        let socket = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
        if id.v6 {
            socket.set_only_v6(true)?;
        }
        // Without IP_RECVERR an unconnected socket never hears of ICMP errors; with it the
        // next receive reports one and the error queue holds the details.
        let _ = if id.v6 {
            nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::Ipv6RecvErr, &true)
        } else {
            nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::Ipv4RecvErr, &true)
        };
        set_buffers(&socket, self.buffer_bytes);
        socket.set_nonblocking(true)?;
        socket.bind(&any.into())?;
        let mut socket = UdpSocket::from_std(socket.into());
        self.poll
            .registry()
            .register(&mut socket, upstream_token(id), Interest::READABLE)?;
        let pool = &mut self.upstreams[usize::from(id.v6)];
        let index = id.index as usize;
        if pool.len() <= index {
            pool.resize_with(index + 1, || None);
        }
        if let Some(mut old) = pool[index].replace(socket) {
            let _ = self.poll.registry().deregister(&mut old);
            self.shared.upstreams.give_back();
        } else {
            self.open_sockets += 1;
        }
        Ok(())
    }

    fn close_socket(&mut self, id: SocketId) {
        let pool = &mut self.upstreams[usize::from(id.v6)];
        if let Some(mut socket) = pool.get_mut(id.index as usize).and_then(Option::take) {
            let _ = self.poll.registry().deregister(&mut socket);
            self.open_sockets -= 1;
            self.shared.upstreams.give_back();
        }
        while pool.last().is_some_and(Option::is_none) {
            pool.pop();
        }
        let least = floor::<Option<UdpSocket>>();
        if pool.capacity() > least && pool.len() < pool.capacity() / 4 {
            pool.shrink_to((pool.len() * 2).max(least));
        }
        self.again.retain(|t| *t != upstream_token(id));
    }

    fn finish_closed(&mut self, closed: &mut Vec<Closed>) {
        for c in closed.drain(..) {
            self.stats.closed[close_index(c.reason)] += 1;
            if let Some(socket) = c.released {
                self.close_socket(socket);
            }
            if self.settings.access_log {
                access_log(&c);
            }
        }
    }

    #[inline]
    fn drop(&mut self, reason: DropReason) {
        self.stats.drops[drop_index(reason)] += 1;
    }

    fn reject(&mut self, r: Rejection) {
        match r {
            Rejection::Unknown => {
                self.stats.rejected_unknown += 1;
                self.drop(DropReason::InvalidToken);
            }
            Rejection::Expired => {
                self.stats.rejected_expired += 1;
                self.drop(DropReason::ExpiredToken);
            }
        }
    }

    /// Adds local counts to the shared metrics and logs a drop summary at most every 10 s.
    fn flush(&mut self, now: Instant) {
        let s = std::mem::take(&mut self.stats);
        let h = &self.handles;
        let m = &self.shared.metrics;
        h.datagrams_to_target.inc_by(s.datagrams_to_target);
        h.bytes_to_target.inc_by(s.bytes_to_target);
        h.datagrams_to_client.inc_by(s.datagrams_to_client);
        h.bytes_to_client.inc_by(s.bytes_to_client);
        m.sessions_created.inc_by(s.created);
        m.session_resets.inc_by(s.resets);
        m.tokens_redeemed.inc_by(s.redeemed);
        h.rejected_unknown.inc_by(s.rejected_unknown);
        h.rejected_expired.inc_by(s.rejected_expired);
        h.refused_cap.inc_by(s.refused_cap);
        h.refused_draining.inc_by(s.refused_draining);
        for (c, n) in h.closed.iter().zip(s.closed) {
            c.inc_by(n);
        }
        for (c, n) in h.drops.iter().zip(s.drops) {
            c.inc_by(n);
        }
        let previous = std::mem::replace(&mut self.flushed, self.open_sockets);
        m.upstream_sockets.inc_by(self.open_sockets - previous);
        self.last_flush = now;
        self.drops_since_log += s.drops.iter().sum::<u64>();
        if now.saturating_duration_since(self.last_drop_log) >= DROP_LOG_EVERY {
            if self.drops_since_log > 0 {
                tracing::warn!(
                    worker = self.index,
                    dropped = self.drops_since_log,
                    seconds = now.saturating_duration_since(self.last_drop_log).as_secs(),
                    "datagrams dropped (by reason: udp_director_datagrams_dropped_total)"
                );
            }
            self.drops_since_log = 0;
            self.last_drop_log = now;
        }
    }
}

/// The access log: one structured line per closed session, target `udp_director::access`
/// (`RUST_LOG=udp_director::access=off` or `accessLog: false` silences it).
fn access_log(c: &Closed) {
    tracing::info!(
        target: "udp_director::access",
        client = %c.client,
        mapping = %c.target.mapping,
        namespace = %c.target.namespace,
        target_name = %c.target.name,
        target_addr = %c.target.addr,
        reason = c.reason.as_str(),
        duration_ms = c.duration.as_millis() as u64,
        datagrams_to_target = c.stats.datagrams_to_target,
        bytes_to_target = c.stats.bytes_to_target,
        datagrams_to_client = c.stats.datagrams_to_client,
        bytes_to_client = c.stats.bytes_to_client,
        "session closed"
    );
}
