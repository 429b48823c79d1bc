//! The data plane's I/O shell: UDP sockets and the threads that run them.
//!
//! `dataWorkers` threads (default: one per core) each own an SO_REUSEPORT socket on the data
//! port, a [`crate::session::SessionTable`] and that table's upstream sockets. The kernel
//! hashes a client's address to one worker, so a session lives on one thread and the per-datagram
//! path takes no lock. Workers share only the token store, the ledger (cap, draining and
//! per-target counts, written on session changes) and the metrics (flushed periodically).
//!
//! Owns sockets, threads and the settings workers pick up when woken. Must not decide what a
//! datagram means: that is `session`'s.

mod counters;
mod kernel_legs;
mod receive;
mod replies;
mod upstream;
mod worker;

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};

use crate::metrics::Metrics;
use crate::session::{Ledger, SessionView};
use crate::settings::Settings;
use crate::token::Tokens;
use crate::util::bounded::Bounded;
use crate::util::sync::lock;

/// `/sessions` asks every worker for a sample of its table through this board: the admin
/// task bumps `requested` and wakes the workers; each posts its answer tagged with the
/// request it saw. Workers never block on it.
#[derive(Default)]
pub struct SampleBoard {
    requested: AtomicU64,
    answers: Mutex<Vec<WorkerSample>>,
}

/// One worker's answer.
#[derive(Debug, Clone)]
pub struct WorkerSample {
    pub request: u64,
    pub worker: usize,
    pub sessions: Vec<SessionView>,
}

impl SampleBoard {
    /// The newest request, for workers to compare with the last one they answered.
    pub fn requested(&self) -> u64 {
        self.requested.load(Ordering::Acquire)
    }

    pub fn post(&self, answer: WorkerSample) {
        let mut answers = lock(&self.answers);
        answers.retain(|a| a.worker != answer.worker);
        answers.push(answer);
    }

    fn collect(&self, request: u64) -> Vec<WorkerSample> {
        lock(&self.answers)
            .iter()
            .filter(|a| a.request >= request)
            .cloned()
            .collect()
    }
}

/// State shared by all workers and the control plane.
pub struct DataShared {
    pub tokens: Arc<Tokens>,
    pub ledger: Arc<Ledger>,
    /// The live settings; workers load a generation when woken.
    pub settings: Arc<Settings>,
    pub metrics: Arc<Metrics>,
    /// Close everything and exit.
    pub stop: AtomicBool,
    /// Upstream sockets open across all workers, and how many the descriptor limit allows
    /// while leaving a reserve for the query and admin servers (see [`FdBudget`]).
    pub upstreams: Bounded,
    /// Set once the workers run: how to wake each of them.
    pub wakers: OnceLock<Vec<Arc<mio::Waker>>>,
    pub samples: SampleBoard,
    /// The kernel fast path, when `fastPath.enabled` and it loaded (SPEC §8). Dropped with
    /// the data plane: the program is detached.
    pub fast_path: Option<crate::shell::fast_path::FastPath>,
    /// Workers that ended other than by `stop` (a panic): `/healthz` fails while non-zero.
    dead_workers: AtomicUsize,
    /// Tests only: the next worker woken panics (to prove `/healthz` sees it).
    #[cfg(test)]
    pub(crate) crash_a_worker: AtomicBool,
}

/// Held by each worker thread for its whole life: dropped by a panic or by a return before
/// `stop`, it counts the worker dead.
struct Liveness(Arc<DataShared>, usize);

impl Drop for Liveness {
    fn drop(&mut self) {
        if std::thread::panicking() || !self.0.stop.load(Ordering::Acquire) {
            self.0.dead_workers.fetch_add(1, Ordering::AcqRel);
            tracing::error!(
                worker = self.1,
                "a data-plane worker died: /healthz and /readyz now answer 503"
            );
        }
    }
}

/// Most sessions one worker reports to `/sessions`.
pub(crate) const SAMPLE_MAX: usize = 1_000;

impl DataShared {
    pub fn new(
        tokens: Arc<Tokens>,
        ledger: Arc<Ledger>,
        settings: Arc<Settings>,
        metrics: Arc<Metrics>,
        fast_path: Option<crate::shell::fast_path::FastPath>,
    ) -> Self {
        Self {
            fast_path,
            tokens,
            ledger,
            settings,
            metrics,
            stop: AtomicBool::new(false),
            upstreams: Bounded::new(usize::MAX),
            wakers: OnceLock::new(),
            samples: SampleBoard::default(),
            dead_workers: AtomicUsize::new(0),
            #[cfg(test)]
            crash_a_worker: AtomicBool::new(false),
        }
    }

    /// Worker threads that died (0 while the data plane is whole).
    pub fn dead_workers(&self) -> usize {
        self.dead_workers.load(Ordering::Acquire)
    }

    /// Wakes every worker (to load the current settings, answer a sample, drain or stop).
    pub fn wake_all(&self) {
        for waker in self.wakers.get().into_iter().flatten() {
            let _ = waker.wake();
        }
    }

    /// Up to `limit` live sessions, gathered from every worker within `within`.
    pub async fn sample_sessions(&self, limit: usize, within: Duration) -> Vec<SessionView> {
        let workers = self.wakers.get().map_or(0, Vec::len);
        let request = self.samples.requested.fetch_add(1, Ordering::AcqRel) + 1;
        self.wake_all();
        let deadline = tokio::time::Instant::now() + within;
        let mut answers = self.samples.collect(request);
        while answers.len() < workers && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
            answers = self.samples.collect(request);
        }
        let mut sessions: Vec<SessionView> = answers.into_iter().flat_map(|a| a.sessions).collect();
        sessions.truncate(limit);
        sessions
    }
}

/// The running data plane.
pub(crate) struct DataPlane {
    /// One per data port, in `dataPorts` order.
    local_addrs: Vec<SocketAddr>,
    shared: Arc<DataShared>,
    workers: Vec<(JoinHandle<()>, Arc<mio::Waker>)>,
}

impl DataPlane {
    /// For each data port: binds `workers` sockets to its address (port 0: one OS-chosen
    /// port shared by them) and starts a thread for each. The workers' sockets of a port
    /// always form one SO_REUSEPORT group; without `reuse_port` the port must be free first,
    /// so a second process cannot join the group by accident and take a share of the
    /// clients. Workers are numbered across ports (the ledger's owners name them).
    pub(crate) fn start(
        addrs: &[(usize, SocketAddr)],
        workers: usize,
        buffer_bytes: usize,
        reuse_port: bool,
        shared: Arc<DataShared>,
    ) -> io::Result<Self> {
        let workers = workers.max(1);
        let mut local_addrs = Vec::with_capacity(addrs.len());
        let mut sockets = Vec::with_capacity(addrs.len() * workers);
        for &(port, ref addr) in addrs {
            if !reuse_port && addr.port() != 0 {
                ensure_free(*addr)?;
            }
            let first = bind_reuseport(*addr, buffer_bytes)?;
            let local_addr = first.local_addr()?.as_socket().ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidInput, "data socket has no IP address")
            })?;
            sockets.push((port, first));
            for _ in 1..workers {
                sockets.push((port, bind_reuseport(local_addr, buffer_bytes)?));
            }
            local_addrs.push(local_addr);
        }
        let mut handles = Vec::with_capacity(sockets.len());
        for (i, (port, socket)) in sockets.into_iter().enumerate() {
            let worker = worker::Worker::new(i, port, socket, buffer_bytes, Arc::clone(&shared))?;
            let waker = worker.waker();
            let watched = Arc::clone(&shared);
            let handle = std::thread::Builder::new()
                .name(format!("data-{i}"))
                .spawn(move || {
                    let _alive = Liveness(watched, i);
                    worker.run();
                })?;
            handles.push((handle, waker));
        }
        let _ = shared
            .wakers
            .set(handles.iter().map(|(_, w)| Arc::clone(w)).collect());
        Ok(Self {
            local_addrs,
            shared,
            workers: handles,
        })
    }

    /// Every UDP data port's address, in `dataPorts` order.
    pub(crate) fn local_addrs(&self) -> &[SocketAddr] {
        &self.local_addrs
    }

    /// Stops new sessions; live sessions keep flowing.
    pub(crate) fn begin_drain(&self) {
        self.shared.ledger.begin_drain();
        self.wake_all();
    }

    /// Closes every session and joins the workers.
    pub(crate) fn stop(self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.wake_all();
        for (handle, _) in self.workers {
            if handle.join().is_err() {
                tracing::error!("a data-plane worker panicked");
            }
        }
        // Every session closed with its worker, its legs out of the map: the program goes.
        if let Some(fast_path) = &self.shared.fast_path {
            fast_path.detach();
        }
    }

    fn wake_all(&self) {
        for (_, waker) in &self.workers {
            let _ = waker.wake();
        }
    }
}

/// Fails with `AddrInUse` when some socket holds `addr` (a probe bound without SO_REUSEPORT
/// and dropped at once).
fn ensure_free(addr: SocketAddr) -> io::Result<()> {
    let probe = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        let _ = probe.set_only_v6(false);
    }
    probe.bind(&addr.into()).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("{e} (another process holds the data port; set reusePort: true to share it)"),
        )
    })
}

fn bind_reuseport(addr: SocketAddr, buffer_bytes: usize) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_port(true)?;
    if addr.is_ipv6() {
        // `::` serves IPv4 clients too, as v4-mapped addresses.
        let _ = socket.set_only_v6(false);
    }
    set_buffers(&socket, buffer_bytes);
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(socket)
}

/// Best effort: the kernel clamps to net.core.{r,w}mem_max.
pub(crate) fn set_buffers(socket: &Socket, bytes: usize) {
    let _ = socket.set_recv_buffer_size(bytes);
    let _ = socket.set_send_buffer_size(bytes);
}

/// File descriptors: the process raises its soft limit to the hard limit at start (as nginx's
/// `worker_rlimit_nofile` would) and upstream sockets may use what is left after a reserve,
/// so running out refuses new sessions while old ones, `/metrics` and queries keep working.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FdBudget {
    /// The soft limit in force after raising it.
    pub limit: u64,
    /// Descriptors open when the budget was taken (listeners, epoll, runtime).
    pub in_use: u64,
    /// Kept free for query and admin connections and the API client.
    pub reserve: u64,
}

impl FdBudget {
    /// Upstream sockets the data plane may open.
    pub(crate) fn upstream(&self) -> usize {
        let free = self.limit.saturating_sub(self.in_use + self.reserve);
        usize::try_from(free).unwrap_or(usize::MAX)
    }

    /// A reserve of 1/16 of the limit, at least 16 and at most 1 024 descriptors.
    pub(crate) fn reserve_for(limit: u64) -> u64 {
        (limit / 16).clamp(16, 1_024)
    }

    /// Raises the soft RLIMIT_NOFILE to the hard limit and measures what is in use.
    pub(crate) fn take() -> Self {
        use nix::sys::resource::{Resource, getrlimit, setrlimit};
        let limit = match getrlimit(Resource::RLIMIT_NOFILE) {
            Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
            {
                Ok(()) => hard,
                Err(_) => soft,
            },
            Ok((soft, _)) => soft,
            Err(_) => 1_024,
        };
        let in_use = std::fs::read_dir("/proc/self/fd")
            .map(|d| d.count() as u64)
            .unwrap_or(64);
        Self {
            limit,
            in_use,
            reserve: Self::reserve_for(limit),
        }
    }
}
