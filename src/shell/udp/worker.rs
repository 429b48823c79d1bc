//! One data-plane worker: a thread, a mio poll, the worker's data socket, its session table
//! and the upstream sockets that table's bindings need.
//!
//! The loop: receive a batch (`recvmmsg`), hand each datagram to the table
//! ([`SessionTable::on_client_datagram`] / [`SessionTable::on_target_datagram`]), carry out the
//! [`Decision`] it returns (send, open or close an upstream socket, count), expire idle
//! sessions, send the round's replies to clients together, flush counters. Per datagram that
//! is one hash lookup, one `last_seen` write and one send (a share of one `sendmmsg`, for a
//! reply): no allocation, no lock, no log line. Out of datagrams, the worker polls on or
//! sleeps as [`BusyPoll`] says. The worker decides nothing itself; its only report back into
//! the table is an upstream socket that could not be opened.
//!
//! Owns the event loop (upstream sockets are `upstream.rs`, replies `replies.rs`, counters
//! `counters.rs`). Must not
//! decide what a datagram means, resolve queries or redeem tokens itself.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token, Waker};
use socket2::Socket;
use tokio::time::Instant;

use super::counters::{Counts, Flusher, KernelReport};
use super::kernel_legs::KernelLegs;
use super::receive::{BATCH, Kind, Received, Receiver, SLOT};
use super::replies::Replies;
use super::upstream::{Upstreams, send_error, slot_of, token_of};
use super::{DataShared, SAMPLE_MAX, WorkerSample};
use crate::model::{Protocol, session_id};
use crate::protocol::datagram;
use crate::session::{
    CloseReason, Closed, Decision, DropReason, FlowStats, LastSeen, Output, SessionTable, SocketId,
    ToTarget, floor,
};
use crate::settings::Generation;
use crate::shell::fast_path::Matchers;
use crate::token::PortTokens;
use crate::util::busy_poll::BusyPoll;

const DATA: Token = Token(0);
const WAKE: Token = Token(1);
/// `recvmmsg` calls on one socket before the others get a turn.
const BUDGET: usize = 8;
/// Longest sleep: bounds how stale flushed metrics get.
const MAX_WAIT: Duration = Duration::from_millis(250);
/// Slots offered to a `recvmmsg` on a socket whose last call brought at most half as many
/// datagrams. A header is prepared for every slot offered, so offering all `BATCH` to a
/// socket that brings one datagram a turn (a quiet client, an upstream socket) spends
/// instructions on headers nobody fills. A call that fills them all is followed at once by
/// one offering `BATCH`, as a full batch always is.
const FEW: usize = 4;

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

pub(crate) struct Worker {
    index: usize,
    poll: Poll,
    waker: Arc<Waker>,
    data: UdpSocket,
    upstreams: Upstreams,
    table: SessionTable,
    shared: Arc<DataShared>,
    /// The live settings generation this worker runs with (reloaded when woken).
    settings: Arc<Generation>,
    /// `BATCH` receive slots of `SLOT` bytes, filled by one `recvmmsg`.
    rx: Box<[u8]>,
    /// Who sent each datagram in `rx`, and its length.
    got: [Received; BATCH],
    counts: Counts,
    flusher: Flusher,
    /// The spare output queue, swapped with the table's when its outputs are carried out.
    outputs: Vec<Output>,
    /// Access-log lines of default-endpoint sessions: at most 10 per 10 s per worker.
    default_access: crate::util::logbudget::LogBudget,
    /// Where each datagram of the batch being judged lies in `rx` (its handle is the index).
    spans: Vec<(usize, usize)>,
    /// Sockets whose receive budget ran out: read again without waiting.
    again: Vec<Token>,
    /// Whether to poll again instead of sleeping (`busyPollMicros`).
    busy: BusyPoll,
    /// Datagrams the last `recvmmsg` brought from the data socket (`[0]`) and from an
    /// upstream socket (`[1]`): how many slots the next one offers (see [`FEW`]).
    last_batch: [usize; 2],
    /// The last `/sessions` request answered.
    sampled: u64,
    /// A datagram with its PROXY v2 header in front (`proxyProtocol: v2`).
    proxied: Vec<u8>,
    /// The tokens as this worker's data port redeems them.
    tokens: PortTokens,
    /// This worker's sessions in the kernel fast path (none without one).
    kernel: KernelLegs,
    /// Replies to clients gathered this round, sent together.
    replies: Replies,
}

impl Worker {
    pub(crate) fn new(
        index: usize,
        port: usize,
        socket: Socket,
        buffer_bytes: usize,
        shared: Arc<DataShared>,
    ) -> io::Result<Self> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKE)?);
        let local = socket.local_addr()?.as_socket().ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "data socket has no IP address")
        })?;
        let mut data = UdpSocket::from_std(socket.into());
        poll.registry()
            .register(&mut data, DATA, Interest::READABLE)?;
        let settings = shared.settings.load();
        let now = Instant::now();
        let tokens = PortTokens::new(Arc::clone(&shared.tokens), port);
        let mut table = SessionTable::for_worker(
            settings.rules.clone(),
            Arc::clone(&shared.ledger),
            u16::try_from(index).unwrap_or(u16::MAX),
            local,
        );
        table.set_fast_path(shared.fast_path.is_some());
        Ok(Self {
            index,
            poll,
            waker,
            data,
            upstreams: Upstreams::new(buffer_bytes),
            table,
            kernel: KernelLegs::new(local.port()),
            replies: Replies::new(),
            flusher: Flusher::new(index, &shared.metrics, now),
            shared,
            busy: BusyPoll::new(settings.config.busy_poll, now),
            settings,
            rx: receive_ring(),
            got: [Received::default(); BATCH],
            counts: Counts::default(),
            outputs: Vec::with_capacity(floor::<Output>()),
            spans: Vec::with_capacity(BATCH),
            default_access: crate::util::logbudget::LogBudget::new(10, Duration::from_secs(10)),
            again: Vec::new(),
            last_batch: [BATCH; 2],
            sampled: 0,
            proxied: Vec::new(),
            tokens,
        })
    }

    pub(crate) fn waker(&self) -> Arc<Waker> {
        Arc::clone(&self.waker)
    }

    /// The worker's loop; returns after `stop` is set, with every session closed.
    pub(crate) fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        let mut ready: Vec<Token> = Vec::with_capacity(1024);
        // Holds raw pointers while a call runs, so it is made here, on the worker's thread.
        let mut receiver = Receiver::new();
        loop {
            if self.shared.stop.load(Ordering::Acquire) {
                let now = Instant::now();
                self.table.close_all(CloseReason::Drained, now);
                self.carry_out(&[], now);
                self.send_replies();
                self.flush(now);
                return;
            }
            let now = Instant::now();
            let busy = self.busy.spin(now);
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
            if busy && events.is_empty() && self.again.is_empty() {
                // Spinning must not keep anything runnable off this core.
                std::thread::yield_now();
            }
            ready.clear();
            ready.extend(events.iter().map(|e| e.token()));
            ready.append(&mut self.again);
            let now = Instant::now();
            for token in ready.iter().copied() {
                let more = match token {
                    WAKE => {
                        #[cfg(test)]
                        if self.shared.crash_a_worker.swap(false, Ordering::AcqRel) {
                            panic!("test: worker {} crashes on purpose", self.index);
                        }
                        self.reload();
                        self.answer_sample(now);
                        false
                    }
                    DATA => self.read_socket(None, now, &mut receiver),
                    t => match slot_of(t) {
                        Some(slot) => self.read_socket(Some(slot), now, &mut receiver),
                        None => false,
                    },
                };
                if more && !self.again.contains(&token) {
                    self.again.push(token);
                }
            }
            self.table.close_displaced(now);
            match &self.shared.fast_path {
                Some(fast_path) => self.table.expire_seen(now, &self.kernel.seen(fast_path)),
                None => self.table.expire(now),
            }
            self.carry_out(&[], now);
            // The round is over: its replies leave together.
            self.send_replies();
            // A mass expiry must not pin its peak in this scratch buffer.
            self.outputs.shrink_to(floor::<Output>());
            if now >= self.flusher.next_flush {
                self.flush(now);
            }
        }
    }

    /// Picks up the live settings; worker 0 also gives the fast path a changed magic.
    fn reload(&mut self) {
        let before = std::mem::replace(&mut self.settings, self.shared.settings.load());
        self.table.set_rules(self.settings.rules.clone());
        self.busy.set_window(self.settings.config.busy_poll);
        let rules = &self.settings.rules;
        if let Some(fast_path) = &self.shared.fast_path
            && self.index == 0
            && before.rules.magic != rules.magic
        {
            let matchers = Matchers::new(&rules.magic, rules.format);
            if let Err(e) = fast_path.set_matchers(&matchers) {
                tracing::error!(error = %e, "the fast path keeps the old magic");
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
        let mut sessions = self.table.sample(SAMPLE_MAX, now);
        if let Some(fast_path) = &self.shared.fast_path {
            let seen = self.kernel.seen(fast_path);
            for view in &mut sessions {
                add(&mut view.stats, self.kernel.carried(fast_path, view.id));
                // Idle since the last datagram either path carried.
                if let Some(at) = view.legs.and_then(|legs| seen.last_seen(&legs, now)) {
                    view.idle = view.idle.min(now.saturating_duration_since(at));
                }
            }
        }
        self.shared.samples.post(WorkerSample {
            request,
            worker: self.index,
            sessions,
        });
    }

    /// Receives up to `offer` (`FEW` or `BATCH`) datagrams from the data socket (`None`) or an
    /// upstream socket. `Ok(0)` never happens: an empty socket is `WouldBlock`.
    fn recv_batch(
        &mut self,
        from: Option<SocketId>,
        offer: usize,
        receiver: &mut Receiver,
    ) -> io::Result<usize> {
        let (kind, socket) = match from {
            None => (Kind::Data, &self.data),
            Some(id) => match self.upstreams.get(id) {
                Some(s) if id.v6 => (Kind::UpstreamV6, s),
                Some(s) => (Kind::UpstreamV4, s),
                None => return Err(io::ErrorKind::WouldBlock.into()),
            },
        };
        if offer <= FEW {
            receiver.recv::<FEW>(kind, socket, &mut self.rx, &mut self.got)
        } else {
            receiver.recv::<BATCH>(kind, socket, &mut self.rx, &mut self.got)
        }
    }

    /// Reads datagrams from one socket until it is empty or the budget is spent; true when
    /// the budget ran out first (the caller comes back without waiting).
    fn read_socket(
        &mut self,
        from: Option<SocketId>,
        now: Instant,
        receiver: &mut Receiver,
    ) -> bool {
        let kind = usize::from(from.is_some());
        for _ in 0..BUDGET {
            let offer = if self.last_batch[kind] * 2 <= FEW {
                FEW
            } else {
                BATCH
            };
            let n = match self.recv_batch(from, offer, receiver) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // An ICMP error from a target (port closed, host gone) surfaces here once;
                // the queued reports are read off so they neither pile up nor re-trigger.
                Err(_) => {
                    match from {
                        None => self.counts.dropped(DropReason::RecvError),
                        Some(id) => self.count_icmp_reports(id, 1),
                    }
                    continue;
                }
            };
            // A full call says more may wait: the next offers every slot.
            self.last_batch[kind] = if n == offer { BATCH } else { n };
            let rx = std::mem::take(&mut self.rx);
            self.spans.clear();
            // Our sockets never enable GRO: one datagram per slot. An empty datagram is one
            // empty span, judged (and dropped) by the table.
            for (i, got) in self.got.iter().take(n).enumerate() {
                let (start, end) = (i * SLOT, i * SLOT + got.len.min(SLOT));
                let handle = i as u32;
                self.spans.push((start, end));
                // The kernel names the sender of every UDP datagram; one without a sender
                // could be neither answered nor attributed, so it is left unread.
                let Some(sender) = got.from else { continue };
                let datagram = rx.get(start..end).unwrap_or_default();
                match from {
                    None => {
                        self.table
                            .on_client_datagram(handle, sender, datagram, now, &self.tokens)
                    }
                    Some(socket) => {
                        self.table
                            .on_target_datagram(handle, socket, sender, datagram.len(), now)
                    }
                }
            }
            self.carry_out(&rx, now);
            self.rx = rx;
            self.busy.arrived(now);
            if n < offer {
                return false; // a short batch: the socket was empty
            }
        }
        true
    }

    /// Carries out everything the table has queued, in order; `rx` holds the datagrams of the
    /// batch just judged (empty when none was). A socket that cannot be opened goes back to
    /// the table as an input, and what the table answers is carried out at once, before the
    /// rest (a retried open comes before the datagrams that need its socket).
    fn carry_out(&mut self, rx: &[u8], now: Instant) {
        if !self.table.has_outputs() {
            return;
        }
        let mut out = std::mem::take(&mut self.outputs);
        loop {
            self.table.swap_outputs(&mut out);
            if out.is_empty() {
                break;
            }
            // By reference: an entry is read where it lies, then all are dropped at once.
            for output in &out {
                self.carry_out_one(output, rx, now);
            }
            out.clear();
        }
        self.outputs = out;
    }

    #[inline]
    fn carry_out_one(&mut self, output: &Output, rx: &[u8], now: Instant) {
        match output {
            Output::Datagram { datagram, decision } => {
                let bytes = self
                    .spans
                    .get(*datagram as usize)
                    .and_then(|&(a, b)| rx.get(a..b))
                    .unwrap_or_default();
                self.carry_out_decision(decision, bytes);
            }
            &Output::OpenSocket { socket, session } => {
                let opened =
                    self.upstreams
                        .open(socket, self.poll.registry(), &self.shared.upstreams);
                if let Err(e) = opened {
                    tracing::debug!(worker = self.index, error = %e, "cannot open upstream socket");
                    self.counts.dropped(DropReason::UpstreamSocket);
                    self.table.on_socket_failed(socket, session, now);
                    // Rare (descriptors exhausted): a small vector of its own is fine here.
                    let mut answer = Vec::new();
                    self.table.swap_outputs(&mut answer);
                    for first in &answer {
                        self.carry_out_one(first, rx, now);
                    }
                }
            }
            &Output::CloseSocket(socket) => self.close_socket(socket),
            Output::Closed(closed) => self.finish_closed(closed, now),
            Output::Proved => self.counts.proved(),
            Output::FastPathAdd(legs) => {
                let port = self
                    .upstreams
                    .get(legs.socket)
                    .and_then(|s| s.local_addr().ok())
                    .map(|a| a.port());
                if let (Some(fast_path), Some(port)) = (&self.shared.fast_path, port) {
                    self.kernel.add(fast_path, legs, port);
                }
            }
            Output::FastPathRemove(legs) => {
                if let Some(fast_path) = &self.shared.fast_path {
                    self.kernel.remove(fast_path, legs.id);
                }
            }
            &Output::Wake(worker) => {
                if let Some(waker) = self
                    .shared
                    .wakers
                    .get()
                    .and_then(|w| w.get(usize::from(worker)))
                {
                    let _ = waker.wake();
                }
            }
        }
    }

    /// Does what the table decided for one datagram.
    #[inline]
    fn carry_out_decision(&mut self, decision: &Decision, datagram: &[u8]) {
        self.counts.decided(decision);
        match decision {
            Decision::Forward(to) => self.send_to_target(to, datagram),
            &Decision::Deliver { client } => {
                self.replies
                    .push(datagram, client, &self.data, &mut self.counts);
            }
            // A socket that failed to open was counted then (`upstream_socket`).
            Decision::Open {
                first: Some(first), ..
            } if self.upstreams.get(first.socket).is_some() => {
                self.send_to_target(first, datagram);
            }
            &Decision::Challenge { client, ref nonce } => {
                let mut out = std::mem::take(&mut self.proxied);
                datagram::write_challenge(&mut out, &self.table.rules().magic, nonce);
                self.send_to_client(&out, client);
                self.proxied = out;
            }
            &Decision::Pong {
                client,
                ref id,
                received_ns,
            } => {
                let mut out = std::mem::take(&mut self.proxied);
                let rules = self.table.rules();
                let sent_ns = rules.proofs.nanos(Instant::now());
                datagram::write_pong(&mut out, &rules.magic, id, received_ns, sent_ns);
                self.send_to_client(&out, client);
                self.proxied = out;
            }
            Decision::Open { .. }
            | Decision::Reset { .. }
            | Decision::Keep
            | Decision::Moved { .. }
            | Decision::Drop(_) => {}
        }
    }

    /// Sends a frame of the director's own (CHALLENGE, PONG) to a client; not counted as
    /// proxied traffic.
    fn send_to_client(&mut self, frame: &[u8], client: SocketAddr) {
        // Never ahead of a reply gathered before it.
        self.send_replies();
        if let Err(e) = self.data.send_to(frame, client) {
            self.counts
                .dropped(send_error(&e, DropReason::SendToClient));
        }
    }

    /// Sends a client's datagram towards its target, behind the session's PROXY v2 header
    /// when it has one. The bytes counted are the client's, not the header's.
    fn send_to_target(&mut self, to: &ToTarget, datagram: &[u8]) {
        let sent = match &to.header {
            None => self.upstreams.send(to.socket, datagram, to.to),
            Some(header) => {
                let mut out = std::mem::take(&mut self.proxied);
                out.clear();
                out.extend_from_slice(header);
                out.extend_from_slice(datagram);
                let sent = self.upstreams.send(to.socket, &out, to.to);
                self.proxied = out;
                sent
            }
        };
        self.count_sent(sent, datagram.len());
    }

    /// Sends the replies to clients gathered so far.
    fn send_replies(&mut self) {
        if !self.replies.is_empty() {
            self.replies.flush(&self.data, &mut self.counts);
        }
    }

    /// Counts a send towards a target of a client payload of `len` bytes.
    fn count_sent(&mut self, sent: super::upstream::Sent, len: usize) {
        self.counts
            .dropped_n(DropReason::UpstreamError, sent.reports);
        match sent.result {
            Ok(()) => {
                self.counts.datagrams_to_target += 1;
                self.counts.bytes_to_target += len as u64;
            }
            Err(reason) => self.counts.dropped(reason),
        }
    }

    /// Reads the ICMP reports queued on an upstream socket and counts them (at least
    /// `at_least`: the error that announced them).
    fn count_icmp_reports(&mut self, id: SocketId, at_least: usize) {
        let reports = self.upstreams.read_error_queue(id).max(at_least);
        self.counts.dropped_n(DropReason::UpstreamError, reports);
    }

    fn close_socket(&mut self, id: SocketId) {
        self.upstreams
            .close(id, self.poll.registry(), &self.shared.upstreams);
        self.again.retain(|t| *t != token_of(id));
    }

    fn finish_closed(&mut self, closed: &Closed, now: Instant) {
        let mut stats = closed.stats;
        add(&mut stats, self.kernel.finish(closed.id));
        self.counts.closed(closed.reason);
        self.shared.metrics.hot.session_duration[Protocol::Udp.index()]
            .observe(closed.duration.as_secs_f64());
        if !self.settings.config.access_log {
            return;
        }
        // Anyone can open default-endpoint sessions by the thousand: their lines are budgeted.
        if !closed.default_endpoint {
            access_log(closed, &stats, 0);
        } else if let Some(suppressed) = self.default_access.allow(now) {
            access_log(closed, &stats, suppressed);
        }
    }

    fn flush(&mut self, now: Instant) {
        let counts = std::mem::take(&mut self.counts);
        self.flusher.flush(
            counts,
            self.upstreams.open_count(),
            &self.shared.metrics,
            now,
        );
        if let Some(fast_path) = &self.shared.fast_path {
            let report = KernelReport {
                sessions: self.kernel.sessions,
                failed: std::mem::take(&mut self.kernel.failed),
                totals: (self.index == 0).then(|| fast_path.totals()),
            };
            self.flusher.flush_kernel(report, &self.shared.metrics);
        }
    }
}

/// Adds what the kernel carried to a session's own counts.
fn add(stats: &mut FlowStats, kernel: FlowStats) {
    stats.datagrams_to_target += kernel.datagrams_to_target;
    stats.bytes_to_target += kernel.bytes_to_target;
    stats.datagrams_to_client += kernel.datagrams_to_client;
    stats.bytes_to_client += kernel.bytes_to_client;
}

/// The access log: one structured line per closed session, target `udp_director::access`
/// (`RUST_LOG=udp_director::access=off` or `accessLog: false` silences it).
fn access_log(c: &Closed, stats: &FlowStats, suppressed: u64) {
    tracing::info!(
        target: "udp_director::access",
        protocol = "udp",
        session_id = c.token.map(session_id),
        player_id = c.target.player.as_deref(),
        client = %c.client,
        mapping = %c.target.mapping,
        namespace = %c.target.namespace,
        target_name = %c.target.name,
        target_addr = %c.target.addr,
        reason = c.reason.as_str(),
        duration_ms = c.duration.as_millis() as u64,
        datagrams_to_target = stats.datagrams_to_target,
        bytes_to_target = stats.bytes_to_target,
        datagrams_to_client = stats.datagrams_to_client,
        bytes_to_client = stats.bytes_to_client,
        default_endpoint = c.default_endpoint,
        suppressed,
        "session closed"
    );
}
