//! The session table: a pure state machine over client addresses, targets and upstream
//! socket slots, and the one place every data-plane decision is made.
//!
//! Inputs: [`SessionTable::on_client_datagram`] and [`SessionTable::on_target_datagram`] (in
//! `decide.rs`, one per datagram, with the shell's handle for it), the clock ([`expire`]),
//! other workers' displacements ([`close_displaced`]), a socket the shell could not open
//! ([`on_socket_failed`], sozu's `abort_flow`) and shutdown ([`close_all`]). Outputs: one
//! queue of [`Output`]s ([`take_outputs`]) the shell drains once per batch, in order: the
//! verdict on each datagram, sockets to open and close, sessions that ended, workers to wake.
//! The table takes `now` from its caller, redeems tokens through the [`Redeem`] it is
//! handed, admits sessions through its [`Ledger`], and never reads the clock, opens a socket,
//! resolves a query or logs. See `Docs/SessionLifecycle.md`.
//!
//! [`expire`]: SessionTable::expire
//! [`close_displaced`]: SessionTable::close_displaced
//! [`on_socket_failed`]: SessionTable::on_socket_failed
//! [`close_all`]: SessionTable::close_all
//! [`take_outputs`]: SessionTable::take_outputs
//! [`Redeem`]: crate::token::Redeem
//!
//! Upstream sockets are shared: socket slot `i` of a family carries at most one session per
//! target, so a target still sees every client on its own source port, while sessions bound
//! for different targets reuse the same sockets. The number of sockets is therefore the
//! largest number of sessions any single target has on this worker, not the session count.
//!
//! Idle expiry uses one min-heap of `(deadline, slot, generation)` entries, exactly one per
//! live session. A datagram only rewrites the session's `last_seen`; when an entry comes due
//! the real deadline is recomputed and the entry re-armed if the session was refreshed. Slot
//! generations make entries of closed sessions stale, so a stale deadline never closes a
//! session that reuses the slot.
//!
//! Owns sessions and every decision about them. Must not do I/O, read the clock or log.

mod decide;
pub mod ledger;
pub mod proof;
#[cfg(any(test, feature = "sim"))]
pub mod sim;
pub mod tcp;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::{SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

pub use crate::model::{CloseReason, DropReason, Refusal};
use crate::model::{Target, TokenKey};
pub use decide::Rules;
pub use ledger::{Displaced, Ledger, Owner, Seat};
pub use proof::Proofs;

type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// Index of a session in the table's slab.
pub type SessionId = u32;

/// An upstream socket slot: address family pool and index within it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SocketId {
    pub v6: bool,
    pub index: u32,
}

/// Datagram and byte counts of one session. `to_target` is client → target.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlowStats {
    pub datagrams_to_target: u64,
    pub bytes_to_target: u64,
    pub datagrams_to_client: u64,
    pub bytes_to_client: u64,
}

/// A datagram the shell sends towards a target: from upstream socket `socket` to `to`, after
/// the session's PROXY v2 header when its mapping wants one (rendered once at open).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToTarget {
    pub socket: SocketId,
    pub to: SocketAddr,
    pub header: Option<Arc<[u8]>>,
}

/// The verdict on one datagram. The datagram's bytes stay with the shell; a decision only
/// says where they go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Send the datagram towards the session's target.
    Forward(ToTarget),
    /// Send the datagram to `client` from the data socket.
    Deliver {
        client: SocketAddr,
    },
    /// A session was opened (its socket, if new, is an [`Output::OpenSocket`] before this);
    /// `first` is where the datagram goes when it is game traffic (a default-endpoint
    /// session's first datagram; a token is never forwarded).
    Open {
        id: SessionId,
        first: Option<ToTarget>,
        /// Opened by a token (counted as redeemed) rather than by the default endpoint.
        redeemed: bool,
    },
    /// A token moved the session to another target (sockets follow as outputs).
    Reset {
        id: SessionId,
    },
    /// A token for the session's own target (a retransmission or keepalive): nothing
    /// changes and nothing is forwarded.
    Keep,
    /// The token's session on this worker now belongs to this client (it was `from`): same
    /// target, same upstream socket, nothing forwarded.
    Moved {
        id: SessionId,
        from: SocketAddr,
    },
    /// The token needs proof of address (SPEC §3): send `[magic] 0x01 [nonce]` back to the
    /// sender from the data socket; nothing else changes.
    Challenge {
        client: SocketAddr,
        nonce: [u8; crate::protocol::datagram::NONCE_LEN],
    },
    /// A PING: send `[magic] 0x04 [id] [received_ns] [send time]` back to the sender.
    Pong {
        client: SocketAddr,
        id: [u8; crate::protocol::datagram::PING_ID_LEN],
        received_ns: u64,
    },
    Drop(DropReason),
}

/// A session's two legs as the kernel fast path keys them (SPEC §8): datagrams from
/// `client` to the data port go to `target` from upstream socket `socket`, and datagrams
/// from `target` to that socket go to `client` from the data port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Legs {
    pub id: SessionId,
    pub client: SocketAddrV4,
    pub target: SocketAddrV4,
    pub socket: SocketId,
}

/// When the kernel fast path last carried a datagram of a session's legs (the shell reads
/// its map); `None` when it carried none or has no fast path.
pub trait LastSeen {
    fn last_seen(&self, legs: &Legs, now: Instant) -> Option<Instant>;
}

/// No fast path: user space has seen every datagram.
pub struct UserSpaceOnly;

impl LastSeen for UserSpaceOnly {
    fn last_seen(&self, _: &Legs, _: Instant) -> Option<Instant> {
        None
    }
}

/// What the shell does, in the order the table queued it.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// The verdict on datagram `datagram` (the shell's handle for it in its batch).
    Datagram { datagram: u32, decision: Decision },
    /// Open the upstream socket of slot `socket`: session `session` is its first. A failure
    /// comes back as [`SessionTable::on_socket_failed`].
    OpenSocket {
        socket: SocketId,
        session: SessionId,
    },
    /// Close the upstream socket of slot `socket`: it carries no session any more.
    CloseSocket(SocketId),
    /// A session ended: count and log it. Boxed: rare, and the queue's entries stay the size
    /// of a datagram's verdict.
    Closed(Box<Closed>),
    /// Wake worker `n`: it holds a session displaced by a decision here.
    Wake(u16),
    /// A RESPONSE proved its address: the verdict that follows is what it completed.
    Proved,
    /// Put the session's legs in the kernel fast path: it is established (its target
    /// answered), IPv4 both ways, opened by a token, without a PROXY v2 header.
    FastPathAdd(Legs),
    /// Take these legs out of the kernel fast path, with what it carried on them: the session
    /// closes, moves to another target or another client address. Queued before anything
    /// that follows from the change (nothing more goes to the old target through the kernel).
    FastPathRemove(Legs),
}

/// A session that ended, with what the shell reports.
#[derive(Debug, Clone, PartialEq)]
pub struct Closed {
    pub id: SessionId,
    pub client: SocketAddr,
    pub target: Arc<Target>,
    pub reason: CloseReason,
    pub stats: FlowStats,
    pub duration: Duration,
    /// Opened by the default endpoint and never redeemed a token (its client proved nothing:
    /// its log line is budgeted).
    pub default_endpoint: bool,
    /// The token it held last (none: a default-endpoint session), for the log's `session_id`.
    pub token: Option<TokenKey>,
}

/// One live session as `/sessions` shows it.
#[derive(Debug, Clone)]
pub struct SessionView {
    /// Its legs while the kernel fast path carries it (its counts are then added by the shell).
    pub legs: Option<Legs>,
    pub id: SessionId,
    pub client: SocketAddr,
    pub target: Arc<Target>,
    pub age: Duration,
    pub idle: Duration,
    pub stats: FlowStats,
}

/// How a session was opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Token,
    DefaultEndpoint,
}

impl Origin {
    /// Why a yielding session of this origin closes (a token session yields only while
    /// unanswered).
    fn yielded(self) -> CloseReason {
        match self {
            Origin::DefaultEndpoint => CloseReason::YieldedDefault,
            Origin::Token => CloseReason::YieldedUnanswered,
        }
    }
}

#[derive(Debug)]
struct Session {
    client: SocketAddr,
    target: Arc<Target>,
    socket: SocketId,
    last_seen: Instant,
    created: Instant,
    timeout: Duration,
    /// Closes at `created + unanswered` unless its target has replied by then.
    unanswered: Duration,
    /// The token it holds (one session per token).
    token: Option<TokenKey>,
    origin: Origin,
    /// Its target has sent at least one datagram back.
    answered: bool,
    stats: FlowStats,
    /// The PROXY v2 header in front of every datagram to its target (`proxyProtocol: v2`),
    /// rendered when the session opens, moves or resets.
    header: Option<Arc<[u8]>>,
    /// Its place in the kernel fast path.
    kernel: Kernel,
}

/// A session's place in the kernel fast path (SPEC §8 "In the map").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kernel {
    /// Never carried there as it is (no fast path, IPv6, PROXY v2 header, default endpoint).
    Never,
    /// Goes in when its target next answers.
    Waiting,
    /// Its legs are in the map.
    In,
}

impl Session {
    /// When it closes if nothing more happens, and why.
    fn deadline(&self) -> (Instant, CloseReason) {
        let idle = self.last_seen + self.timeout;
        if !self.answered {
            let unanswered = self.created + self.unanswered;
            if unanswered < idle {
                return (unanswered, CloseReason::Unanswered);
            }
        }
        (idle, CloseReason::Idle)
    }

    /// May yield its place in a full table to a token newcomer.
    fn yields(&self) -> bool {
        self.origin == Origin::DefaultEndpoint || !self.answered
    }
}

#[derive(Debug)]
struct Slot {
    generation: u32,
    session: Option<Session>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Timer {
    at: Instant,
    id: SessionId,
    generation: u32,
}

/// Which socket slots a target occupies (bitset over slot indices).
#[derive(Debug, Default)]
struct TargetUse {
    used: Vec<u64>,
    count: u32,
}

impl TargetUse {
    fn first_free(&self) -> u32 {
        for (w, word) in self.used.iter().enumerate() {
            if *word != u64::MAX {
                return (w * 64) as u32 + word.trailing_ones();
            }
        }
        (self.used.len() * 64) as u32
    }

    fn set(&mut self, index: u32, on: bool) {
        let (w, b) = ((index / 64) as usize, index % 64);
        if self.used.len() <= w {
            // One word covers 64 socket slots. A target that needs more jumps straight to a
            // block above the thread cache's size (see FLOOR_BYTES) instead of doubling
            // through it; most targets never need a second word.
            if w > 0 {
                let want = floor::<u64>().max(w + 1);
                self.used.reserve(want.saturating_sub(self.used.len()));
            }
            self.used.resize(w + 1, 0);
        }
        if on {
            self.used[w] |= 1 << b;
        } else {
            self.used[w] &= !(1 << b);
        }
    }

    fn is_set(&self, index: u32) -> bool {
        let (w, b) = ((index / 64) as usize, index % 64);
        self.used.get(w).is_some_and(|word| word & (1 << b) != 0)
    }
}

/// One worker's sessions. See the module documentation.
#[derive(Debug)]
pub struct SessionTable {
    slots: Vec<Slot>,
    free: Vec<SessionId>,
    by_client: FastMap<SocketAddr, SessionId>,
    /// (socket slot, target) → the session bound there. One table for all slots, so a slot
    /// costs no allocation of its own (sessions come and go in waves without fragmenting).
    bound: FastMap<(SocketId, SocketAddr), SessionId>,
    /// `carried[v6][index]`: sessions bound on that socket slot; 0 means no open socket.
    carried: [Vec<u32>; 2],
    targets: FastMap<SocketAddr, TargetUse>,
    timers: BinaryHeap<Reverse<Timer>>,
    /// Admission (cap, draining) and per-target counts, shared with the other workers.
    ledger: Arc<Ledger>,
    /// Magic, idle timeout of new sessions, default route.
    rules: Rules,
    /// xorshift64* state for the default route's `random` strategy.
    rng: u64,
    /// This table's worker (token owners in the ledger name it).
    worker: u16,
    /// Sessions that may yield to a token newcomer, oldest first (lazily cleaned: entries
    /// of closed or answered sessions are skipped when reached).
    yielders: VecDeque<(SessionId, u32)>,
    /// What the shell must do, in order (see [`Output`]).
    out: Vec<Output>,
    /// The data socket's address (the destination PROXY v2 headers name).
    local: SocketAddr,
    /// The last session whose socket could not be opened (a second failure closes it).
    failed: Option<(SessionId, u32)>,
    /// The shell runs the kernel fast path: established sessions go in ([`Output::FastPathAdd`]).
    fast_path: bool,
}

/// Bytes each per-session structure starts with and returns to when the table empties.
///
/// Growth from here on moves blocks larger than glibc's per-thread cache takes (chunks up to
/// 1 032 bytes stay in the freeing thread's tcache, out of `malloc_trim`'s reach): a wave of
/// sessions then leaves nothing behind on the worker thread once its table is empty.
pub const FLOOR_BYTES: usize = 2048;

/// Elements of `T` that fill [`FLOOR_BYTES`].
pub const fn floor<T>() -> usize {
    let size = std::mem::size_of::<T>();
    FLOOR_BYTES.div_ceil(if size == 0 { 1 } else { size })
}

impl SessionTable {
    /// An empty table admitting sessions through `ledger` and judging datagrams by `rules`,
    /// for a data socket that is not bound (tests, benchmarks: PROXY v2 headers name
    /// `0.0.0.0:0` as the destination).
    pub fn new(rules: Rules, ledger: Arc<Ledger>) -> Self {
        Self::for_worker(rules, ledger, 0, SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// The table of worker `worker` (its sessions' owner in the ledger), whose data socket is
    /// bound to `local`.
    pub fn for_worker(rules: Rules, ledger: Arc<Ledger>, worker: u16, local: SocketAddr) -> Self {
        use std::hash::BuildHasher;
        let hasher = foldhash::fast::RandomState::default;
        Self {
            slots: Vec::with_capacity(floor::<Slot>()),
            free: Vec::with_capacity(floor::<SessionId>()),
            by_client: FastMap::with_capacity_and_hasher(
                floor::<(SocketAddr, SessionId)>(),
                hasher(),
            ),
            bound: FastMap::with_capacity_and_hasher(
                floor::<((SocketId, SocketAddr), SessionId)>(),
                hasher(),
            ),
            carried: [
                Vec::with_capacity(floor::<u32>()),
                Vec::with_capacity(floor::<u32>()),
            ],
            targets: FastMap::with_capacity_and_hasher(
                floor::<(SocketAddr, TargetUse)>(),
                hasher(),
            ),
            timers: BinaryHeap::with_capacity(floor::<Reverse<Timer>>()),
            ledger,
            rules,
            // Any non-zero seed; per table so workers do not pick in lockstep.
            rng: hasher().hash_one(0u8) | 1,
            worker,
            yielders: VecDeque::with_capacity(floor::<(SessionId, u32)>()),
            out: Vec::with_capacity(floor::<Output>()),
            local,
            failed: None,
            fast_path: false,
        }
    }

    /// The shell runs the kernel fast path (set once, before the first datagram).
    pub fn set_fast_path(&mut self, on: bool) {
        self.fast_path = on;
    }

    /// Where a session of `origin` from `client` to `target` with `header` starts in the
    /// fast path: only IPv4 token sessions without a PROXY v2 header ever go in (a
    /// default-endpoint session is under the amplification limit, which only user space
    /// counts).
    fn kernel_start(
        &self,
        origin: Origin,
        client: SocketAddr,
        target: SocketAddr,
        header: bool,
    ) -> Kernel {
        let v4 = v4(client).is_some() && v4(target).is_some();
        if self.fast_path && origin == Origin::Token && !header && v4 {
            Kernel::Waiting
        } else {
            Kernel::Never
        }
    }

    /// Replaces the rules for datagrams judged from now on (a reload). Live sessions keep
    /// their target, leg and timeout.
    pub fn set_rules(&mut self, rules: Rules) {
        self.rules = rules;
    }

    pub fn rules(&self) -> &Rules {
        &self.rules
    }

    pub fn ledger(&self) -> &Arc<Ledger> {
        &self.ledger
    }

    pub fn len(&self) -> usize {
        self.by_client.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_client.is_empty()
    }

    /// Open upstream socket slots (slots carrying at least one session).
    pub fn open_sockets(&self) -> usize {
        self.carried.iter().flatten().filter(|n| **n > 0).count()
    }

    /// The session of a client address, if any. Hot path: one hash lookup.
    #[inline]
    pub fn lookup(&self, client: &SocketAddr) -> Option<SessionId> {
        self.by_client.get(client).copied()
    }

    /// Records a client datagram on a live session and says where to send it.
    #[inline]
    fn forward_from_client(&mut self, id: SessionId, len: usize, now: Instant) -> Option<ToTarget> {
        let s = self.session_mut(id)?;
        s.last_seen = now;
        s.stats.datagrams_to_target += 1;
        s.stats.bytes_to_target += len as u64;
        Some(ToTarget {
            socket: s.socket,
            to: s.target.addr,
            header: s.header.clone(),
        })
    }

    /// Records a datagram that arrived on upstream socket `socket` from `from` and returns
    /// the client to deliver it to, or why it is dropped: `from` is not a target bound to
    /// that socket, or the session's client proved nothing and was sent its share already.
    #[inline]
    fn forward_from_target(
        &mut self,
        socket: SocketId,
        from: &SocketAddr,
        len: usize,
        now: Instant,
    ) -> Result<SocketAddr, DropReason> {
        let amplification = u64::from(self.rules.amplification);
        let id = *self
            .bound
            .get(&(socket, *from))
            .ok_or(DropReason::UnknownSource)?;
        let s = self.session_mut(id).ok_or(DropReason::UnknownSource)?;
        s.answered = true;
        // A default-endpoint client proved nothing: it gets at most `amplification` times
        // the bytes it sent (SPEC §3, QUIC's limit).
        if s.origin == Origin::DefaultEndpoint
            && s.stats.bytes_to_client + len as u64
                > s.stats.bytes_to_target.saturating_mul(amplification)
        {
            return Err(DropReason::Amplification);
        }
        s.last_seen = now;
        s.stats.datagrams_to_client += 1;
        s.stats.bytes_to_client += len as u64;
        let client = s.client;
        if s.kernel == Kernel::Waiting {
            s.kernel = Kernel::In;
            if let Some(legs) = legs_of(id, s) {
                self.out.push(Output::FastPathAdd(legs));
            }
        }
        Ok(client)
    }

    /// Opens a token session (holding no token) for a client without one, admitted by the
    /// ledger (per-IP cap, cap, draining). Callers that judge datagrams go through
    /// [`SessionTable::on_client_datagram`]; this is public for benchmarks and tests that
    /// need a table of a given shape (its outputs wait in the queue).
    pub fn open(
        &mut self,
        client: SocketAddr,
        target: Arc<Target>,
        now: Instant,
    ) -> Result<SessionId, Refusal> {
        debug_assert!(self.lookup(&client).is_none(), "open is for newcomers");
        self.ledger
            .admit(
                client.ip(),
                self.rules.max_sessions,
                self.rules.max_per_client_ip,
            )?
            .keep();
        Ok(self.insert_admitted(client, target, Origin::Token, now))
    }

    /// Inserts a session whose places under the cap and the per-IP cap the ledger has
    /// already granted.
    fn insert_admitted(
        &mut self,
        client: SocketAddr,
        target: Arc<Target>,
        origin: Origin,
        now: Instant,
    ) -> SessionId {
        let id = self.free.pop().unwrap_or_else(|| {
            self.slots.push(Slot {
                generation: 0,
                session: None,
            });
            (self.slots.len() - 1) as SessionId
        });
        let socket = self.bind(target.addr, id);
        self.ledger.target_added(target.addr);
        let (timeout, unanswered) = (self.rules.session_timeout, self.rules.unanswered_timeout);
        let header = self.header(client, &target);
        let kernel = self.kernel_start(origin, client, target.addr, header.is_some());
        let slot = &mut self.slots[id as usize];
        let session = Session {
            client,
            target,
            socket,
            last_seen: now,
            created: now,
            timeout,
            unanswered,
            token: None,
            origin,
            answered: false,
            stats: FlowStats::default(),
            header,
            kernel,
        };
        let (at, _) = session.deadline();
        slot.session = Some(session);
        let generation = slot.generation;
        self.timers.push(Reverse(Timer { at, id, generation }));
        self.yielders.push_back((id, generation));
        self.by_client.insert(client, id);
        self.compact_yielders();
        self.debug_check();
        id
    }

    /// The PROXY v2 header of a session from `client` to `target`, when its mapping wants one.
    fn header(&self, client: SocketAddr, target: &Target) -> Option<Arc<[u8]>> {
        target.proxy.then(|| {
            let mut out = Vec::with_capacity(64);
            crate::protocol::proxy::write_header(
                &mut out,
                client,
                self.local,
                target.player.as_deref(),
            );
            Arc::from(out)
        })
    }

    /// Moves a live session to `target`: the new slot is bound before the old one is let
    /// go (a slot that carries on is not cycled), and nothing from the old target is
    /// delivered afterwards. False when the session already goes to that address (a
    /// retransmitted token: nothing changes but the newer target identity, and the PROXY v2
    /// header when that identity renders another one).
    fn reset(&mut self, id: SessionId, target: Arc<Target>, now: Instant) -> bool {
        let Some(s) = self.session_mut(id) else {
            return false;
        };
        s.last_seen = now;
        if s.target.addr == target.addr {
            let rerender = s.target.proxy != target.proxy
                || (target.proxy && s.target.player != target.player);
            let client = s.client;
            s.target = Arc::clone(&target);
            if rerender {
                self.rerender_header(id, client, &target);
            }
            return false;
        }
        let (old_socket, old_target, client) = (s.socket, s.target.addr, s.client);
        self.leave_kernel(id);
        let socket = self.bind(target.addr, id);
        self.ledger.target_added(target.addr);
        self.unbind(old_socket, old_target);
        self.ledger.target_removed(old_target);
        let header = self.header(client, &target);
        let origin = self.session(id).map_or(Origin::Token, |s| s.origin);
        let kernel = self.kernel_start(origin, client, target.addr, header.is_some());
        if let Some(s) = self.session_mut(id) {
            s.socket = socket;
            s.target = target;
            s.header = header;
            // In again when the new target answers.
            s.kernel = kernel;
        }
        self.debug_check();
        true
    }

    /// A session whose target identity at the same address renders another PROXY v2 header
    /// (another `proxyProtocol`, another `playerId`): the new header from now on. Its legs
    /// leave the fast path first; they go back in when the target next answers, unless a
    /// header now keeps them out.
    fn rerender_header(&mut self, id: SessionId, client: SocketAddr, target: &Target) {
        self.leave_kernel(id);
        let header = self.header(client, target);
        let origin = self.session(id).map_or(Origin::Token, |s| s.origin);
        let kernel = self.kernel_start(origin, client, target.addr, header.is_some());
        if let Some(s) = self.session_mut(id) {
            s.header = header;
            s.kernel = kernel;
        }
    }

    /// A default-endpoint session that now holds a token becomes a token session (it may go
    /// in the fast path when its target next answers).
    fn promote(&mut self, id: SessionId) {
        let Some(s) = self.session(id) else {
            return;
        };
        if s.origin == Origin::Token {
            return;
        }
        let header = s.header.is_some();
        let kernel = self.kernel_start(Origin::Token, s.client, s.target.addr, header);
        if let Some(s) = self.session_mut(id) {
            s.origin = Origin::Token;
            s.kernel = kernel;
        }
    }

    /// Takes a session's legs out of the fast path if they are in (queued before whatever
    /// follows from the change); it waits for its target's next answer to go back in.
    fn leave_kernel(&mut self, id: SessionId) {
        let Some(s) = self.session_mut(id) else {
            return;
        };
        if s.kernel != Kernel::In {
            return;
        }
        s.kernel = Kernel::Waiting;
        if let Some(legs) = legs_of(id, s) {
            self.out.push(Output::FastPathRemove(legs));
        }
    }

    /// Closes one session, queueing its [`Output::Closed`] (and the socket it leaves empty).
    /// False when there is no such session.
    fn close(&mut self, id: SessionId, reason: CloseReason, now: Instant) -> bool {
        let Some(slot) = self.slots.get_mut(id as usize) else {
            return false;
        };
        let Some(s) = slot.session.take() else {
            return false;
        };
        let generation = slot.generation;
        slot.generation = slot.generation.wrapping_add(1);
        if s.kernel == Kernel::In
            && let Some(legs) = legs_of(id, &s)
        {
            self.out.push(Output::FastPathRemove(legs));
        }
        self.free.push(id);
        self.by_client.remove(&s.client);
        self.unbind(s.socket, s.target.addr);
        self.ledger.target_removed(s.target.addr);
        self.ledger.leave(s.client.ip());
        if let Some(key) = s.token {
            self.ledger.unclaim(
                key,
                Owner {
                    worker: self.worker,
                    id,
                    generation,
                },
            );
        }
        self.out.push(Output::Closed(Box::new(Closed {
            id,
            client: s.client,
            target: s.target,
            reason,
            stats: s.stats,
            duration: now.saturating_duration_since(s.created),
            default_endpoint: s.origin == Origin::DefaultEndpoint,
            token: s.token,
        })));
        self.debug_check();
        true
    }

    /// When [`SessionTable::expire`] next has work to do. Changes when a session is created
    /// or an entry comes due; a datagram never moves it (the entry is re-armed lazily), so
    /// the shell may wake early and find nothing to close.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse(t)| t.at)
    }

    /// Closes every session idle for its whole timeout at `now` (or never answered within
    /// `unansweredTimeoutSeconds`), for a table without a fast path.
    #[inline]
    pub fn expire(&mut self, now: Instant) {
        self.expire_seen(now, &UserSpaceOnly);
    }

    /// [`SessionTable::expire`], where a session the kernel carries is idle only when
    /// `kernel` has not seen its datagrams either (SPEC §8: the idle timeout counts them).
    /// The shell asks every loop turn: one comparison when nothing is due.
    #[inline]
    pub fn expire_seen(&mut self, now: Instant, kernel: &dyn LastSeen) {
        let due = self.timers.peek().is_some_and(|Reverse(t)| t.at <= now);
        if due || self.by_client.is_empty() {
            self.expire_due(now, kernel);
        }
    }

    fn expire_due(&mut self, now: Instant, kernel: &dyn LastSeen) {
        while let Some(Reverse(t)) = self.timers.peek().copied() {
            if t.at > now {
                break;
            }
            self.timers.pop();
            let Some(slot) = self.slots.get(t.id as usize) else {
                continue;
            };
            if slot.generation != t.generation {
                continue; // stale: the session it was armed for is gone
            }
            let Some(s) = &slot.session else {
                continue;
            };
            let (mut deadline, mut reason) = s.deadline();
            if deadline <= now
                && s.kernel == Kernel::In
                && let Some(legs) = legs_of(t.id, s)
                && let Some(seen) = kernel.last_seen(&legs, now)
                && let Some(s) = self.session_mut(t.id)
                && seen > s.last_seen
            {
                s.last_seen = seen;
                (deadline, reason) = s.deadline();
            }
            if deadline > now {
                self.timers.push(Reverse(Timer { at: deadline, ..t }));
            } else {
                self.close(t.id, reason, now);
            }
        }
        self.release_memory_if_empty();
    }

    /// Once the last session is gone, hands back the memory a past peak needed (a wave of
    /// 10 000 sessions leaves ~1 MB of slab and indexes otherwise), keeping the floor
    /// capacities. Only when empty: live sessions' slab indices pin the slab, and no timer
    /// entry may outlive its slot.
    fn release_memory_if_empty(&mut self) {
        if self.by_client.is_empty() && self.slots.capacity() > floor::<Slot>() {
            let (rules, ledger, rng) = (self.rules.clone(), Arc::clone(&self.ledger), self.rng);
            let out = std::mem::take(&mut self.out);
            let fast_path = self.fast_path;
            *self = Self::for_worker(rules, ledger, self.worker, self.local);
            self.fast_path = fast_path;
            self.rng = rng;
            self.out = out;
        }
    }

    /// Bytes the table's own structures hold (capacity, not length).
    pub fn capacity_hint(&self) -> usize {
        self.slots.capacity() * std::mem::size_of::<Slot>()
            + self.free.capacity() * std::mem::size_of::<SessionId>()
            + self.timers.capacity() * std::mem::size_of::<Timer>()
            + self.by_client.capacity() * std::mem::size_of::<(SocketAddr, SessionId)>()
            + self.bound.capacity() * std::mem::size_of::<((SocketId, SocketAddr), SessionId)>()
    }

    /// Closes every session (shutdown).
    pub fn close_all(&mut self, reason: CloseReason, now: Instant) {
        let ids: Vec<SessionId> = self.by_client.values().copied().collect();
        for id in ids {
            self.close(id, reason, now);
        }
        self.timers.clear();
        self.release_memory_if_empty();
    }

    /// Up to `limit` live sessions as the admin view shows them.
    pub fn sample(&self, limit: usize, now: Instant) -> Vec<SessionView> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(id, slot)| Some((id as SessionId, slot.session.as_ref()?)))
            .take(limit)
            .map(|(id, s)| SessionView {
                legs: if s.kernel == Kernel::In {
                    legs_of(id, s)
                } else {
                    None
                },
                id,
                client: s.client,
                target: Arc::clone(&s.target),
                age: now.saturating_duration_since(s.created),
                idle: now.saturating_duration_since(s.last_seen),
                stats: s.stats,
            })
            .collect()
    }

    /// The client, target and upstream socket of a live session (for checks and admin views).
    pub fn describe(&self, id: SessionId) -> Option<(SocketAddr, &Arc<Target>, SocketId)> {
        self.session(id).map(|s| (s.client, &s.target, s.socket))
    }

    fn session(&self, id: SessionId) -> Option<&Session> {
        self.slots.get(id as usize)?.session.as_ref()
    }

    fn session_mut(&mut self, id: SessionId) -> Option<&mut Session> {
        self.slots.get_mut(id as usize)?.session.as_mut()
    }

    /// Takes the lowest socket slot not yet carrying a session to `target`; the slot's
    /// first session queues its [`Output::OpenSocket`].
    fn bind(&mut self, target: SocketAddr, id: SessionId) -> SocketId {
        let v6 = target.is_ipv6();
        let usage = self.targets.entry(target).or_default();
        let index = usage.first_free();
        usage.set(index, true);
        usage.count += 1;
        let carried = &mut self.carried[v6 as usize];
        if carried.len() <= index as usize {
            carried.resize(index as usize + 1, 0);
        }
        let first = carried[index as usize] == 0;
        carried[index as usize] += 1;
        let socket = SocketId { v6, index };
        self.bound.insert((socket, target), id);
        if first {
            self.out.push(Output::OpenSocket {
                socket,
                session: id,
            });
        }
        socket
    }

    /// Frees a session's slot; a slot left empty queues its [`Output::CloseSocket`].
    fn unbind(&mut self, socket: SocketId, target: SocketAddr) {
        if self.bound.remove(&(socket, target)).is_none() {
            return;
        }
        let carried = &mut self.carried[socket.v6 as usize];
        let Some(count) = carried.get_mut(socket.index as usize) else {
            return;
        };
        *count = count.saturating_sub(1);
        if *count == 0 {
            self.out.push(Output::CloseSocket(socket));
        }
        while carried.last() == Some(&0) {
            carried.pop();
        }
        if let Some(usage) = self.targets.get_mut(&target) {
            usage.set(socket.index, false);
            usage.count = usage.count.saturating_sub(1);
            if usage.count == 0 {
                self.targets.remove(&target);
            }
        }
    }

    /// This table's owner record for session `id`.
    fn owner(&self, id: SessionId) -> Owner {
        Owner {
            worker: self.worker,
            id,
            generation: self.slots.get(id as usize).map_or(0, |s| s.generation),
        }
    }

    /// Makes session `id` the one holder of token `key`: a session of this table that held
    /// it closes (`Moved`); one on another worker is displaced (that worker closes it when
    /// woken).
    fn claim(&mut self, id: SessionId, key: TokenKey, now: Instant) {
        let owner = self.owner(id);
        let Some(s) = self.session_mut(id) else {
            return;
        };
        // A keepalive `[magic][token]` on the session holding it: nothing to record (and no
        // write to the shared ledger every few seconds per session). If another worker has
        // displaced it meanwhile, the displacement stands; it is not taken back.
        if s.token == Some(key) {
            return;
        }
        let previous_key = s.token.replace(key);
        if let Some(old) = previous_key.filter(|old| *old != key) {
            self.ledger.unclaim(old, owner);
        }
        match self.ledger.claim(key, owner) {
            Some(prev) if prev.worker == self.worker => {
                let live = self.slots.get(prev.id as usize).map(|s| s.generation);
                if live == Some(prev.generation) {
                    self.close(prev.id, CloseReason::Moved, now);
                }
            }
            Some(prev) => {
                self.ledger.displace(Displaced { key, owner: prev });
                self.out.push(Output::Wake(prev.worker));
            }
            None => {}
        }
    }

    /// A newcomer redeemed `key`, held by a session of this table: that session now belongs
    /// to `client` (same target, same upstream socket). `None` when no session of this table
    /// holds it.
    fn move_local(&mut self, key: TokenKey, client: SocketAddr) -> Option<Decision> {
        let prev = self.ledger.owner(key)?;
        if prev.worker != self.worker || self.owner(prev.id) != prev {
            return None;
        }
        if self.session(prev.id)?.token != Some(key) {
            return None;
        }
        let was_in = self.session(prev.id)?.kernel == Kernel::In;
        self.leave_kernel(prev.id);
        let s = self.session_mut(prev.id)?;
        let from = std::mem::replace(&mut s.client, client);
        let target = Arc::clone(&s.target);
        self.by_client.remove(&from);
        self.by_client.insert(client, prev.id);
        self.ledger.move_ip(from.ip(), client.ip());
        let header = self.header(client, &target);
        let kernel = self.kernel_start(Origin::Token, client, target.addr, header.is_some());
        if let Some(s) = self.session_mut(prev.id) {
            s.header = header;
            s.kernel = kernel;
            // Its target has answered already: the new client's legs go in at once.
            if was_in && kernel == Kernel::Waiting {
                s.kernel = Kernel::In;
                if let Some(legs) = legs_of(prev.id, s) {
                    self.out.push(Output::FastPathAdd(legs));
                }
            }
        }
        self.debug_check();
        Some(Decision::Moved { id: prev.id, from })
    }

    /// Closes the oldest session of client network `net` that may yield its place (the
    /// per-IP cap yields like the table does, SPEC §3). True when one did. Scans the
    /// yielders in order, leaving the others where they are.
    fn close_oldest_yielder_of(&mut self, net: crate::model::ClientNet, now: Instant) -> bool {
        let ledger = Arc::clone(&self.ledger);
        let found = self
            .yielders
            .iter()
            .enumerate()
            .find_map(|(at, (id, generation))| {
                let s = self
                    .slots
                    .get(*id as usize)
                    .filter(|slot| slot.generation == *generation)
                    .and_then(|slot| slot.session.as_ref())?;
                (s.yields() && ledger.net_of(s.client.ip()) == net).then_some((at, *id, s.origin))
            });
        let Some((at, id, origin)) = found else {
            return false;
        };
        self.yielders.remove(at);
        self.close(id, origin.yielded(), now)
    }

    /// Closes the oldest session that may yield its place (opened by the default endpoint,
    /// or never answered), never `keep`. True when one did.
    fn close_oldest_yielder(&mut self, keep: Option<SessionId>, now: Instant) -> bool {
        let mut kept = None;
        let mut found = None;
        while let Some((id, generation)) = self.yielders.pop_front() {
            let Some(s) = self
                .slots
                .get(id as usize)
                .filter(|slot| slot.generation == generation)
                .and_then(|slot| slot.session.as_ref())
            else {
                continue; // closed since it was queued
            };
            if Some(id) == keep {
                kept = Some((id, generation));
                continue;
            }
            if !s.yields() {
                continue; // answered since: it no longer yields
            }
            found = Some((id, s.origin));
            break;
        }
        if let Some(entry) = kept {
            self.yielders.push_front(entry);
        }
        let Some((id, origin)) = found else {
            return false;
        };
        self.close(id, origin.yielded(), now)
    }

    /// A token newcomer finds the table full: the oldest yielding session gives its place.
    fn yield_one(&mut self, now: Instant) -> bool {
        self.close_oldest_yielder(None, now)
    }

    /// Input: the shell could not open the socket of slot `socket` for session `id` (the
    /// descriptors are exhausted). A token session gets the socket of a session that may
    /// yield (SPEC §3: a default-endpoint or unanswered session gives way to a token, whether
    /// the table or the descriptors are full): yielders close, oldest first, until one leaves
    /// a socket empty (at most 16), and the open is asked again. Otherwise, or on a second
    /// failure for the same session, the session closes as `upstream_error`.
    pub fn on_socket_failed(&mut self, socket: SocketId, id: SessionId, now: Instant) {
        let Some(origin) = self.session(id).map(|s| s.origin) else {
            return;
        };
        let generation = self
            .slots
            .get(id as usize)
            .map_or(0, |slot| slot.generation);
        let again = self.failed == Some((id, generation));
        self.failed = Some((id, generation));
        if origin == Origin::Token && !again {
            for _ in 0..16 {
                let before = self.out.len();
                if !self.close_oldest_yielder(Some(id), now) {
                    break;
                }
                let freed = self.out[before..]
                    .iter()
                    .any(|o| matches!(o, Output::CloseSocket(_)));
                if freed {
                    self.out.push(Output::OpenSocket {
                        socket,
                        session: id,
                    });
                    return;
                }
            }
        }
        self.close(id, CloseReason::UpstreamError, now);
    }

    /// Keeps the yielders queue within a small multiple of the live sessions.
    fn compact_yielders(&mut self) {
        if self.yielders.len() > 2 * self.by_client.len() + 64 {
            let slots = &self.slots;
            self.yielders.retain(|(id, generation)| {
                slots.get(*id as usize).is_some_and(|slot| {
                    slot.generation == *generation
                        && slot.session.as_ref().is_some_and(Session::yields)
                })
            });
        }
    }

    /// True when outputs wait for the shell.
    #[inline]
    pub fn has_outputs(&self) -> bool {
        !self.out.is_empty()
    }

    /// Hands the shell every output queued since the last call, in order.
    pub fn take_outputs(&mut self, out: &mut impl Extend<Output>) {
        out.extend(self.out.drain(..));
    }

    /// Hands the shell the queue itself, in exchange for `spare` (empty; its capacity is
    /// reused for the next outputs): no output is copied on the way out.
    #[inline]
    pub fn swap_outputs(&mut self, spare: &mut Vec<Output>) {
        debug_assert!(spare.is_empty(), "the spare queue is empty");
        std::mem::swap(&mut self.out, spare);
    }

    /// Closes the sessions other workers displaced from this one (their tokens now open a
    /// session there). The shell asks every loop turn: nothing but one atomic load when no
    /// worker displaced anything.
    #[inline]
    pub fn close_displaced(&mut self, now: Instant) {
        if self.ledger.has_displaced() {
            self.close_displaced_now(now);
        }
    }

    fn close_displaced_now(&mut self, now: Instant) {
        let mut displaced = Vec::new();
        self.ledger.take_displaced(self.worker, &mut displaced);
        for d in displaced {
            let still = self.owner(d.owner.id) == d.owner
                && self
                    .session(d.owner.id)
                    .is_some_and(|s| s.token == Some(d.key));
            if still {
                self.close(d.owner.id, CloseReason::Moved, now);
            }
        }
    }

    /// The next number of the table's xorshift64* sequence.
    fn next_random(&mut self) -> u64 {
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// The whole-table check after a mutating call, in debug builds, while the table has
    /// fewer than 256 slots (slots only grow until the table empties): it costs O(sessions)
    /// per call, so past a few hundred sessions a debug build's end-to-end floods would spend
    /// their time here and fall seconds behind (the property tests check every step at any
    /// size).
    #[inline]
    fn debug_check(&self) {
        #[cfg(debug_assertions)]
        if self.slots.len() < 256 {
            self.check_invariants();
        }
    }

    /// Panics with a description if the table's structures disagree. Runs after every
    /// mutating call in debug builds (small tables) and after every step of the property
    /// tests.
    // Panicking is this checker's whole purpose; it runs in debug builds and tests only.
    #[allow(clippy::expect_used)]
    pub fn check_invariants(&self) {
        let live: Vec<(SessionId, &Session)> = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.session.as_ref().map(|s| (i as SessionId, s)))
            .collect();
        assert_eq!(live.len(), self.by_client.len(), "by_client size");
        assert_eq!(
            live.len() + self.free.len(),
            self.slots.len(),
            "slots are live or free"
        );
        let mut per_target: FastMap<SocketAddr, u32> = FastMap::default();
        for (id, s) in &live {
            assert_eq!(self.by_client.get(&s.client), Some(id), "client index");
            assert_eq!(
                self.bound.get(&(s.socket, s.target.addr)),
                Some(id),
                "session bound on its socket"
            );
            assert_eq!(s.socket.v6, s.target.addr.is_ipv6(), "socket family");
            let usage = self.targets.get(&s.target.addr).expect("target usage");
            assert!(usage.is_set(s.socket.index), "target slot bit");
            *per_target.entry(s.target.addr).or_default() += 1;
        }
        for (addr, usage) in &self.targets {
            assert_eq!(
                per_target.get(addr).copied(),
                Some(usage.count),
                "target count"
            );
            let bits: u32 = usage.used.iter().map(|w| w.count_ones()).sum();
            assert_eq!(bits, usage.count, "target bits");
        }
        assert_eq!(
            per_target.len(),
            self.targets.len(),
            "no empty target entries"
        );
        // Each (socket, target) pair carries exactly one session, and only live ones.
        assert_eq!(self.bound.len(), live.len(), "socket bindings");
        let mut per_slot: FastMap<SocketId, u32> = FastMap::default();
        for (socket, _) in self.bound.keys() {
            *per_slot.entry(*socket).or_default() += 1;
        }
        for (v6, carried) in self.carried.iter().enumerate() {
            for (index, n) in carried.iter().enumerate() {
                let socket = SocketId {
                    v6: v6 == 1,
                    index: index as u32,
                };
                assert_eq!(
                    per_slot.get(&socket).copied().unwrap_or(0),
                    *n,
                    "slot count"
                );
            }
            assert!(carried.last() != Some(&0), "no trailing empty slots");
        }
        assert!(
            per_slot.keys().all(|s| {
                self.carried[s.v6 as usize]
                    .get(s.index as usize)
                    .is_some_and(|n| *n > 0)
            }),
            "every leg's slot is counted"
        );
        // Exactly one timer entry per live session.
        let mut armed: FastMap<SessionId, u32> = FastMap::default();
        for Reverse(t) in self.timers.iter() {
            if self.slots[t.id as usize].generation == t.generation
                && self.slots[t.id as usize].session.is_some()
            {
                *armed.entry(t.id).or_default() += 1;
            }
        }
        for (id, _) in &live {
            assert_eq!(armed.get(id).copied(), Some(1), "one timer per session");
        }
    }
}

/// The IPv4 address of `addr`, also when it is IPv4-mapped on a dual-stack socket.
fn v4(addr: SocketAddr) -> Option<SocketAddrV4> {
    match addr {
        SocketAddr::V4(a) => Some(a),
        SocketAddr::V6(a) => a
            .ip()
            .to_ipv4_mapped()
            .map(|ip| SocketAddrV4::new(ip, a.port())),
    }
}

/// A session's legs, when both its ends are IPv4.
fn legs_of(id: SessionId, s: &Session) -> Option<Legs> {
    Some(Legs {
        id,
        client: v4(s.client)?,
        target: v4(s.target.addr)?,
        socket: s.socket,
    })
}

/// Direct answers for the tests and the simulation, which judge one datagram at a time.
#[cfg(any(test, feature = "sim"))]
impl SessionTable {
    /// Judges one client datagram and returns its verdict, leaving what it did on the side
    /// queued.
    pub fn decide_client(
        &mut self,
        client: SocketAddr,
        datagram: &[u8],
        now: Instant,
        tokens: &dyn crate::token::Redeem,
    ) -> Decision {
        self.on_client_datagram(u32::MAX, client, datagram, now, tokens);
        self.pop_decision()
    }

    /// Judges one datagram from a target and returns its verdict.
    pub fn decide_target(
        &mut self,
        socket: SocketId,
        from: SocketAddr,
        len: usize,
        now: Instant,
    ) -> Decision {
        self.on_target_datagram(u32::MAX, socket, from, len, now);
        self.pop_decision()
    }

    fn pop_decision(&mut self) -> Decision {
        match self.out.pop() {
            Some(Output::Datagram { decision, .. }) => decision,
            other => panic!("the verdict is queued last, found {other:?}"),
        }
    }

    /// Takes the queued sessions that ended and workers to wake (socket outputs are dropped:
    /// the table's own counts say which sockets are open).
    pub fn take_effects(&mut self, closed: &mut Vec<Closed>, wake: &mut Vec<u16>) {
        for output in self.out.drain(..) {
            match output {
                Output::Closed(c) => closed.push(*c),
                Output::Wake(w) => wake.push(w),
                _ => {}
            }
        }
    }

    /// Takes the queued sessions that ended.
    pub fn take_closed(&mut self) -> Vec<Closed> {
        let mut closed = Vec::new();
        self.take_effects(&mut closed, &mut Vec::new());
        closed
    }
}

#[cfg(test)]
mod tests;
