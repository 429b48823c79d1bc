//! The fast path's kernel side from user space: loads `bpf/fast_path.bpf.c` (built by
//! `build.rs` into `OUT_DIR`), attaches it to TC ingress, and reads and writes its maps.
//!
//! Map keys and values are byte arrays laid out exactly as the C structs in the program's
//! header say (the crate has no `unsafe`, so no `Pod` structs): addresses and ports in
//! network byte order, counters and flags in the host's. Every map call happens on a session
//! change or a reaper pass, never per datagram; the maps sit behind one mutex because several
//! workers share the handle.
//!
//! Owns the bpf(2) and netlink calls. Must not decide which legs are in the map.

use std::io;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use aya::maps::{Array, MapData, MapError, PerCpuArray, PerCpuHashMap, PerCpuValues};
use aya::programs::tc::{self, NlOptions, SchedClassifierLinkId, TcAttachOptions};
use aya::programs::{LinkOrder, ProgramError, SchedClassifier, TcAttachType};
use aya::{Ebpf, EbpfError, EbpfLoader, include_bytes_aligned};

use super::{Count, FastPathError, Hook, LegCounts, LegKey, Matchers, Rewrite, Totals};
use crate::util::sync::lock;

/// The program, as `build.rs` compiled it.
static PROGRAM: &[u8] = include_bytes_aligned!(concat!(env!("OUT_DIR"), "/fast_path.bpf.o"));

/// The program's function name: also the name of its clsact filter, by which a crashed
/// run's leftovers are found and removed.
pub(crate) const PROGRAM_NAME: &str = "udp_director_fp";

const LEGS: &str = "legs";
const MATCHERS: &str = "matchers";
const TOTALS: &str = "totals";

/// `struct leg_key`: peer IPv4 (4), peer port (2), local port (2).
const KEY_LEN: usize = 8;
/// `struct leg`: to IPv4 (4), to port (2), from port (2), flags (4), zero (4), datagrams (8),
/// bytes (8), last seen ns (8). A multiple of 8: per-CPU values are laid out at that stride.
const LEG_LEN: usize = 40;
/// `struct matchers`: magic length (4), token min (2), token max (2), magic (32).
const MATCHERS_LEN: usize = 40;
/// `struct count`: datagrams (8), bytes (8).
const COUNT_LEN: usize = 16;
/// The longest magic the program compares (`MAGIC_MAX`).
const MAGIC_MAX: usize = 32;
/// `LEG_FROM_CLIENT`.
const FLAG_FROM_CLIENT: u32 = 1;
/// `totals` indices.
const DIR_TO_TARGET: u32 = 0;
const DIR_TO_CLIENT: u32 = 1;
/// How much of a verifier log an error keeps: its end, where the refusal is.
const LOG_EXCERPT: usize = 600;

type Key = [u8; KEY_LEN];
type Leg = [u8; LEG_LEN];

/// How the program is attached to one interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Tcx,
    Clsact,
}

struct Maps {
    legs: PerCpuHashMap<MapData, Key, Leg>,
    matchers: Array<MapData, [u8; MATCHERS_LEN]>,
    totals: PerCpuArray<MapData, [u8; COUNT_LEN]>,
}

pub(crate) struct Kernel {
    maps: Mutex<Maps>,
    /// Legs in the map: every insert and delete goes through this handle and the program
    /// never adds or deletes one, so counting them here is exact (and O(1), unlike a walk).
    legs: AtomicUsize,
    nr_cpus: usize,
    /// The loaded program and its links (detached by `detach`, or on drop).
    ebpf: Mutex<Ebpf>,
    links: Mutex<Vec<SchedClassifierLinkId>>,
    attached: Vec<(String, Mode)>,
}

impl Kernel {
    pub(crate) fn start(
        interfaces: &[String],
        max_sessions: usize,
        matchers: &Matchers,
        hook: Hook,
    ) -> Result<Self, FastPathError> {
        let matchers = matchers_bytes(matchers)?;
        if interfaces.is_empty() {
            return Err(FastPathError::Interface {
                interface: String::new(),
                reason: "no interface given".to_string(),
            });
        }
        for interface in interfaces {
            nix::net::if_::if_nametoindex(interface.as_str()).map_err(|e| {
                FastPathError::Interface {
                    interface: interface.clone(),
                    reason: format!("no such interface ({e})"),
                }
            })?;
        }
        raise_memlock();
        let nr_cpus = aya::util::nr_cpus()
            .map_err(|(what, e)| FastPathError::Kernel(format!("{what}: {e}")))?;
        // Two legs per session.
        let max_entries = u32::try_from(max_sessions.saturating_mul(2))
            .unwrap_or(u32::MAX)
            .max(2);
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(LEGS, max_entries)
            .load(PROGRAM)
            .map_err(load_error)?;

        let program: &mut SchedClassifier = ebpf
            .program_mut(PROGRAM_NAME)
            .ok_or_else(|| {
                FastPathError::Kernel(format!("no program {PROGRAM_NAME} in the object"))
            })?
            .try_into()
            .map_err(program_error)?;
        program.load().map_err(program_error)?;

        let mut links = Vec::new();
        let mut attached = Vec::new();
        for (i, interface) in interfaces.iter().enumerate() {
            // Named twice: attached once.
            if interfaces[..i].contains(interface) {
                continue;
            }
            remove_stale(interface);
            let (link, mode) = attach(program, interface, hook)?;
            links.push(link);
            attached.push((interface.clone(), mode));
        }

        let mut maps = Maps {
            legs: take_map(&mut ebpf, LEGS)?,
            matchers: take_map(&mut ebpf, MATCHERS)?,
            totals: take_map(&mut ebpf, TOTALS)?,
        };
        maps.matchers
            .set(0, matchers, 0)
            .map_err(|e| map_error("writing the matchers", e))?;
        Ok(Self {
            maps: Mutex::new(maps),
            legs: AtomicUsize::new(0),
            nr_cpus,
            ebpf: Mutex::new(ebpf),
            links: Mutex::new(links),
            attached,
        })
    }

    pub(crate) fn insert(&self, key: LegKey, rewrite: Rewrite) -> Result<(), FastPathError> {
        let values = PerCpuValues::try_from(vec![leg_bytes(rewrite); self.nr_cpus])
            .map_err(|e| FastPathError::Map(format!("per-CPU values: {e}")))?;
        let key = key_bytes(key);
        let mut maps = lock(&self.maps);
        // A new key first, so the count of legs knows whether one was added or replaced.
        match maps.legs.insert(key, values, BPF_NOEXIST) {
            Ok(()) => {
                self.legs.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(e) if errno(&e) == Some(nix::libc::EEXIST) => {
                let values = PerCpuValues::try_from(vec![leg_bytes(rewrite); self.nr_cpus])
                    .map_err(|e| FastPathError::Map(format!("per-CPU values: {e}")))?;
                maps.legs
                    .insert(key, values, BPF_EXIST)
                    .map_err(insert_error)
            }
            Err(e) => Err(insert_error(e)),
        }
    }

    pub(crate) fn remove(&self, key: LegKey) -> Option<LegCounts> {
        let key = key_bytes(key);
        let mut maps = lock(&self.maps);
        // Datagrams carried between this read and the delete are not counted: the window is
        // one syscall, under the lock every other map call takes.
        let counts = read_leg(&maps.legs, &key);
        match maps.legs.remove(&key) {
            Ok(()) => {
                self.legs.fetch_sub(1, Ordering::Relaxed);
                Some(counts.unwrap_or_default())
            }
            Err(e) if errno(&e) == Some(nix::libc::ENOENT) => None,
            Err(e) => {
                tracing::warn!(error = %e, "fast path: deleting a leg failed");
                counts
            }
        }
    }

    pub(crate) fn counts(&self, key: LegKey) -> Option<LegCounts> {
        read_leg(&lock(&self.maps).legs, &key_bytes(key))
    }

    pub(crate) fn totals(&self) -> Totals {
        let maps = lock(&self.maps);
        let read = |dir: u32| {
            maps.totals
                .get(&dir, 0)
                .map(|per_cpu| sum_counts(per_cpu.iter()))
                .unwrap_or_default()
        };
        Totals {
            to_target: read(DIR_TO_TARGET),
            to_client: read(DIR_TO_CLIENT),
        }
    }

    pub(crate) fn legs(&self) -> usize {
        self.legs.load(Ordering::Relaxed)
    }

    pub(crate) fn set_matchers(&self, matchers: &Matchers) -> Result<(), FastPathError> {
        let bytes = matchers_bytes(matchers)?;
        lock(&self.maps)
            .matchers
            .set(0, bytes, 0)
            .map_err(|e| map_error("writing the matchers", e))
    }

    pub(crate) fn describe(&self) -> String {
        let mut parts: Vec<String> = Vec::new();
        for mode in [Mode::Tcx, Mode::Clsact] {
            let on: Vec<&str> = self
                .attached
                .iter()
                .filter(|(_, m)| *m == mode)
                .map(|(i, _)| i.as_str())
                .collect();
            if !on.is_empty() {
                let name = match mode {
                    Mode::Tcx => "tcx",
                    Mode::Clsact => "clsact",
                };
                parts.push(format!("{name} on {}", on.join(", ")));
            }
        }
        parts.join("; ")
    }
}

impl Kernel {
    /// Detaches the program from every interface (once: later calls find nothing to do).
    pub(crate) fn detach(&self) {
        let links: Vec<_> = lock(&self.links).drain(..).collect();
        if links.is_empty() {
            return;
        }
        // The data plane closed every session first: 0 unless a leg was left behind (which
        // the kernel would have gone on carrying until now).
        tracing::info!(legs_left = self.legs(), "kernel fast path detached");
        let mut ebpf = lock(&self.ebpf);
        let Some(program) = ebpf.program_mut(PROGRAM_NAME) else {
            return;
        };
        let program: Result<&mut SchedClassifier, _> = program.try_into();
        if let Ok(program) = program {
            for link in links {
                if let Err(e) = program.detach(link) {
                    tracing::warn!(error = %e, "fast path: detaching the program failed");
                }
            }
        }
    }
}

impl Drop for Kernel {
    fn drop(&mut self) {
        // Whatever is left (the program, its maps) goes with `ebpf`.
        self.detach();
    }
}

const BPF_NOEXIST: u64 = 1;
const BPF_EXIST: u64 = 2;

/// Before Linux 5.11 BPF maps are charged to RLIMIT_MEMLOCK (often 64 KiB or 8 MiB in a
/// container), which the legs map outgrows; later kernels charge the cgroup and ignore it.
/// Raised as far as allowed: unlimited with CAP_SYS_RESOURCE, else the soft limit to the hard.
fn raise_memlock() {
    use nix::sys::resource::{RLIM_INFINITY, Resource, getrlimit, setrlimit};
    if setrlimit(Resource::RLIMIT_MEMLOCK, RLIM_INFINITY, RLIM_INFINITY).is_ok() {
        return;
    }
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_MEMLOCK)
        && soft < hard
    {
        let _ = setrlimit(Resource::RLIMIT_MEMLOCK, hard, hard);
    }
}

/// Attaches to `interface`'s ingress: tcx where the kernel has it, clsact otherwise.
fn attach(
    program: &mut SchedClassifier,
    interface: &str,
    hook: Hook,
) -> Result<(SchedClassifierLinkId, Mode), FastPathError> {
    if hook == Hook::Auto {
        let tcx = program.attach_with_options(
            interface,
            TcAttachType::Ingress,
            TcAttachOptions::TcxOrder(LinkOrder::default()),
        );
        let tcx_error = match tcx {
            Ok(link) => return Ok((link, Mode::Tcx)),
            Err(e) => e,
        };
        if is_permission(program_errno(&tcx_error)) {
            return Err(FastPathError::Permission(format!(
                "attaching to {interface}: {}",
                chain(&tcx_error)
            )));
        }
        tracing::debug!(interface, error = %chain(&tcx_error), "fast path: no tcx, trying clsact");
    }
    match tc::qdisc_add_clsact(interface) {
        Ok(()) => {}
        Err(tc::TcError::AlreadyAttached) => {}
        Err(tc::TcError::NetlinkError(e)) if e.raw_os_error() == Some(nix::libc::EEXIST) => {}
        Err(e) => {
            let e = ProgramError::from(e);
            return Err(attach_error(interface, &e));
        }
    }
    program
        .attach_with_options(
            interface,
            TcAttachType::Ingress,
            TcAttachOptions::Netlink(NlOptions::default()),
        )
        .map(|link| (link, Mode::Clsact))
        .map_err(|e| attach_error(interface, &e))
}

/// Removes our clsact filters a crashed run left on `interface` (tcx links die with their
/// process). Nothing there is the common case; a failure only means nothing was removed.
fn remove_stale(interface: &str) {
    match tc::qdisc_detach_program(interface, TcAttachType::Ingress, PROGRAM_NAME) {
        Ok(()) => tracing::info!(
            interface,
            "fast path: removed a program left by an earlier run"
        ),
        Err(tc::TcError::IoError(e)) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => tracing::debug!(interface, error = %e, "fast path: no stale program removed"),
    }
}

fn take_map<M>(ebpf: &mut Ebpf, name: &str) -> Result<M, FastPathError>
where
    M: TryFrom<aya::maps::Map, Error = MapError>,
{
    let map = ebpf
        .take_map(name)
        .ok_or_else(|| FastPathError::Kernel(format!("no map {name} in the object")))?;
    M::try_from(map).map_err(|e| map_error(name, e))
}

fn read_leg(legs: &PerCpuHashMap<MapData, Key, Leg>, key: &Key) -> Option<LegCounts> {
    match legs.get(key, 0) {
        Ok(per_cpu) => Some(sum_legs(per_cpu.iter())),
        Err(MapError::KeyNotFound) => None,
        Err(e) => {
            tracing::warn!(error = %e, "fast path: reading a leg failed");
            None
        }
    }
}

// ---- layouts (the program's header is the other half) ----

fn key_bytes(key: LegKey) -> Key {
    let mut b = [0u8; KEY_LEN];
    b[0..4].copy_from_slice(&key.peer.ip().octets());
    b[4..6].copy_from_slice(&key.peer.port().to_be_bytes());
    b[6..8].copy_from_slice(&key.local_port.to_be_bytes());
    b
}

fn leg_bytes(rewrite: Rewrite) -> Leg {
    let mut b = [0u8; LEG_LEN];
    b[0..4].copy_from_slice(&rewrite.to.ip().octets());
    b[4..6].copy_from_slice(&rewrite.to.port().to_be_bytes());
    b[6..8].copy_from_slice(&rewrite.from_port.to_be_bytes());
    let flags = if rewrite.from_client {
        FLAG_FROM_CLIENT
    } else {
        0
    };
    b[8..12].copy_from_slice(&flags.to_ne_bytes());
    b
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_ne_bytes(v)
}

/// One leg's per-CPU values: counts summed, the latest last-seen time.
fn sum_legs<'a>(per_cpu: impl Iterator<Item = &'a Leg>) -> LegCounts {
    per_cpu.fold(LegCounts::default(), |acc, v| LegCounts {
        count: Count {
            datagrams: acc.count.datagrams.wrapping_add(u64_at(v, 16)),
            bytes: acc.count.bytes.wrapping_add(u64_at(v, 24)),
        },
        last_seen_ns: acc.last_seen_ns.max(u64_at(v, 32)),
    })
}

fn sum_counts<'a>(per_cpu: impl Iterator<Item = &'a [u8; COUNT_LEN]>) -> Count {
    per_cpu.fold(Count::default(), |acc, v| Count {
        datagrams: acc.datagrams.wrapping_add(u64_at(v, 0)),
        bytes: acc.bytes.wrapping_add(u64_at(v, 8)),
    })
}

/// Where the program would see a leg's peer as, for tests and logs.
#[cfg(test)]
fn key_of(b: &Key) -> LegKey {
    use std::net::{Ipv4Addr, SocketAddrV4};
    LegKey {
        peer: SocketAddrV4::new(
            Ipv4Addr::new(b[0], b[1], b[2], b[3]),
            u16::from_be_bytes([b[4], b[5]]),
        ),
        local_port: u16::from_be_bytes([b[6], b[7]]),
    }
}

fn matchers_bytes(m: &Matchers) -> Result<[u8; MATCHERS_LEN], FastPathError> {
    if m.magic.is_empty() || m.magic.len() > MAGIC_MAX {
        return Err(FastPathError::Map(format!(
            "the magic must be 1 to {MAGIC_MAX} bytes, got {}",
            m.magic.len()
        )));
    }
    if m.token_min > m.token_max {
        return Err(FastPathError::Map(format!(
            "token lengths {}..={} are empty",
            m.token_min, m.token_max
        )));
    }
    let mut b = [0u8; MATCHERS_LEN];
    // At most MAGIC_MAX, checked above.
    let len = u32::try_from(m.magic.len()).unwrap_or(0);
    b[0..4].copy_from_slice(&len.to_ne_bytes());
    b[4..6].copy_from_slice(&m.token_min.to_ne_bytes());
    b[6..8].copy_from_slice(&m.token_max.to_ne_bytes());
    b[8..8 + m.magic.len()].copy_from_slice(&m.magic);
    Ok(b)
}

// ---- errors ----

fn errno_of(e: &io::Error) -> Option<i32> {
    e.raw_os_error()
}

fn is_permission(errno: Option<i32>) -> bool {
    matches!(errno, Some(nix::libc::EPERM) | Some(nix::libc::EACCES))
}

fn errno(e: &MapError) -> Option<i32> {
    match e {
        MapError::SyscallError(s) => errno_of(&s.io_error),
        MapError::CreateError { io_error, .. } => errno_of(io_error),
        MapError::IoError(e) => errno_of(e),
        _ => None,
    }
}

fn program_errno(e: &ProgramError) -> Option<i32> {
    match e {
        ProgramError::LoadError { io_error, .. } => errno_of(io_error),
        ProgramError::SyscallError(s) => errno_of(&s.io_error),
        ProgramError::MapError(m) => errno(m),
        ProgramError::TcError(tc::TcError::IoError(e)) => errno_of(e),
        ProgramError::TcError(tc::TcError::NetlinkError(e)) => e.raw_os_error(),
        _ => None,
    }
}

/// An error with its sources, on one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = s.source();
    }
    text
}

fn load_error(e: EbpfError) -> FastPathError {
    match e {
        EbpfError::ProgramError(p) => program_error(p),
        EbpfError::MapError(m) => {
            if is_permission(errno(&m)) {
                FastPathError::Permission(format!(
                    "creating the maps (needs CAP_BPF; before Linux 5.11 also a RLIMIT_MEMLOCK \
                     the maps fit in): {}",
                    chain(&m)
                ))
            } else {
                FastPathError::Kernel(format!("creating the maps: {}", chain(&m)))
            }
        }
        EbpfError::BtfError(b) => {
            let text = chain(&b);
            if text.contains("Operation not permitted") {
                FastPathError::Permission(format!("loading BTF: {text}"))
            } else {
                FastPathError::Kernel(format!("loading BTF: {text}"))
            }
        }
        other => FastPathError::Kernel(chain(&other)),
    }
}

/// A refused load: no capability (EPERM, or EACCES before the verifier ran) is `Permission`;
/// anything the verifier said is `Kernel`, with the end of its log.
fn program_error(e: ProgramError) -> FastPathError {
    if let ProgramError::LoadError {
        io_error,
        verifier_log,
    } = &e
    {
        return refused_load(io_error, &verifier_log.to_string());
    }
    if is_permission(program_errno(&e)) {
        FastPathError::Permission(chain(&e))
    } else {
        FastPathError::Kernel(chain(&e))
    }
}

fn refused_load(io_error: &io::Error, log: &str) -> FastPathError {
    let code = errno_of(io_error);
    if code == Some(nix::libc::EPERM) || (code == Some(nix::libc::EACCES) && log.trim().is_empty())
    {
        return FastPathError::Permission(format!("loading the program: {io_error}"));
    }
    FastPathError::Kernel(format!(
        "the verifier refused the program ({io_error}): …{}",
        excerpt(log)
    ))
}

fn attach_error(interface: &str, e: &ProgramError) -> FastPathError {
    let code = program_errno(e);
    if is_permission(code) {
        return FastPathError::Permission(format!("attaching to {interface}: {}", chain(e)));
    }
    FastPathError::Interface {
        interface: interface.to_string(),
        reason: chain(e),
    }
}

fn insert_error(e: MapError) -> FastPathError {
    match errno(&e) {
        Some(nix::libc::E2BIG) => FastPathError::Full,
        _ => map_error("inserting a leg", e),
    }
}

fn map_error(what: &str, e: MapError) -> FastPathError {
    FastPathError::Map(format!("{what}: {}", chain(&e)))
}

/// The last `LOG_EXCERPT` bytes of a verifier log (on a character boundary), on one line.
fn excerpt(log: &str) -> String {
    let log = log.trim();
    let mut start = log.len().saturating_sub(LOG_EXCERPT);
    while !log.is_char_boundary(start) {
        start += 1;
    }
    log[start..].split('\n').collect::<Vec<_>>().join(" | ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, SocketAddrV4};

    fn addr(a: [u8; 4], port: u16) -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::from(a), port)
    }

    #[test]
    fn the_handle_can_be_shared_by_the_workers() {
        fn shared<T: Send + Sync>() {}
        shared::<super::super::FastPath>();
    }

    #[test]
    fn a_key_is_peer_address_peer_port_local_port_in_network_order() {
        let key = LegKey {
            peer: addr([10, 1, 2, 3], 0x1234),
            local_port: 7777,
        };
        let b = key_bytes(key);
        assert_eq!(b, [10, 1, 2, 3, 0x12, 0x34, 0x1e, 0x61]);
        assert_eq!(key_of(&b), key);
    }

    #[test]
    fn a_leg_is_where_to_and_from_which_port_with_zeroed_counters() {
        let b = leg_bytes(Rewrite {
            to: addr([192, 168, 0, 9], 9001),
            from_port: 40000,
            from_client: true,
        });
        assert_eq!(&b[0..8], &[192, 168, 0, 9, 0x23, 0x29, 0x9c, 0x40]);
        assert_eq!(
            u32::from_ne_bytes([b[8], b[9], b[10], b[11]]),
            FLAG_FROM_CLIENT
        );
        assert!(b[12..].iter().all(|&x| x == 0));
        let target = leg_bytes(Rewrite {
            to: addr([192, 168, 0, 9], 9001),
            from_port: 40000,
            from_client: false,
        });
        assert_eq!(&target[8..12], &[0, 0, 0, 0]);
    }

    #[test]
    fn per_cpu_leg_values_are_summed_with_the_latest_last_seen() {
        let mut a = [0u8; LEG_LEN];
        a[16..24].copy_from_slice(&3u64.to_ne_bytes());
        a[24..32].copy_from_slice(&300u64.to_ne_bytes());
        a[32..40].copy_from_slice(&1_000u64.to_ne_bytes());
        let mut b = [0u8; LEG_LEN];
        b[16..24].copy_from_slice(&2u64.to_ne_bytes());
        b[24..32].copy_from_slice(&50u64.to_ne_bytes());
        b[32..40].copy_from_slice(&5_000u64.to_ne_bytes());
        let idle = [0u8; LEG_LEN];
        let sum = sum_legs([a, idle, b].iter());
        assert_eq!(
            sum,
            LegCounts {
                count: Count {
                    datagrams: 5,
                    bytes: 350
                },
                last_seen_ns: 5_000
            }
        );
        assert_eq!(sum_legs([idle].iter()), LegCounts::default());
    }

    #[test]
    fn per_cpu_totals_are_summed() {
        let mut a = [0u8; COUNT_LEN];
        a[0..8].copy_from_slice(&7u64.to_ne_bytes());
        a[8..16].copy_from_slice(&700u64.to_ne_bytes());
        let mut b = [0u8; COUNT_LEN];
        b[0..8].copy_from_slice(&1u64.to_ne_bytes());
        b[8..16].copy_from_slice(&64u64.to_ne_bytes());
        assert_eq!(
            sum_counts([a, b].iter()),
            Count {
                datagrams: 8,
                bytes: 764
            }
        );
    }

    #[test]
    fn matchers_carry_the_whole_magic_and_the_token_lengths() {
        let magic = b"\xff\xff\xff\xffRESET".to_vec();
        let b = matchers_bytes(&Matchers {
            magic: magic.clone(),
            token_min: 36,
            token_max: 52,
        })
        .unwrap();
        assert_eq!(u32::from_ne_bytes([b[0], b[1], b[2], b[3]]), 9);
        assert_eq!(u16::from_ne_bytes([b[4], b[5]]), 36);
        assert_eq!(u16::from_ne_bytes([b[6], b[7]]), 52);
        assert_eq!(&b[8..17], magic.as_slice());
        assert!(b[17..].iter().all(|&x| x == 0));
        let long = matchers_bytes(&Matchers {
            magic: vec![0xab; 32],
            token_min: 1,
            token_max: 1,
        })
        .unwrap();
        assert_eq!(&long[8..40], &[0xab; 32]);
    }

    #[test]
    fn matchers_the_program_cannot_compare_are_refused() {
        for magic in [Vec::new(), vec![1u8; 33]] {
            let e = matchers_bytes(&Matchers {
                magic,
                token_min: 36,
                token_max: 36,
            })
            .unwrap_err();
            assert_eq!(e.reason().as_str(), "map");
        }
        let e = matchers_bytes(&Matchers {
            magic: vec![1],
            token_min: 40,
            token_max: 39,
        })
        .unwrap_err();
        assert!(matches!(e, FastPathError::Map(_)));
    }

    #[test]
    fn a_verifier_excerpt_keeps_the_end_on_one_line() {
        let log = format!(
            "{}\nR1 invalid mem access 'scalar'\nprocessed 12 insns",
            "x".repeat(2000)
        );
        let e = excerpt(&log);
        assert!(e.len() <= LOG_EXCERPT + 10);
        assert!(e.ends_with("R1 invalid mem access 'scalar' | processed 12 insns"));
        assert!(!e.contains('\n'));
    }

    #[test]
    fn no_capability_is_permission_and_a_verifier_refusal_is_kernel() {
        let no_cap = refused_load(&io::Error::from_raw_os_error(nix::libc::EPERM), "");
        assert_eq!(no_cap.reason().as_str(), "permission");
        let refused = refused_load(
            &io::Error::from_raw_os_error(nix::libc::EACCES),
            "0: (b7) r0 = 0\nR2 !read_ok",
        );
        assert_eq!(refused.reason().as_str(), "kernel");
        assert!(refused.to_string().contains("R2 !read_ok"));
        let full = insert_error(MapError::SyscallError(aya::sys::SyscallError {
            call: "bpf_map_update_elem",
            io_error: io::Error::from_raw_os_error(nix::libc::E2BIG),
        }));
        assert!(matches!(full, FastPathError::Full));
    }
}
