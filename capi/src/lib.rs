//! C ABI for udp-director clients, over `udp-director-client`: the blocking query and the
//! socket-owning session for games that let the library do the I/O (`ud_query_*`,
//! `ud_session_*`), and the sans-IO core for engines that own their sockets and clock
//! (`ud_core_*`: feed it datagrams and time, send what it says). The header
//! `include/udp_director.h` is generated from this file by cbindgen; its preamble states the
//! ownership rules, and each function below states what it borrows and what it hands over.
//!
//! Every exported function runs inside [`guard`]: a Rust panic is caught and becomes
//! `UD_STATUS_PANIC`, never an unwind into C. Times for the core are microseconds on any
//! monotonic clock the caller chooses (only differences matter).
//!
//! Owns the C boundary. Must not make decisions of its own: those are the core's.

// The C ABI cannot be written without `unsafe`: exported `#[no_mangle]` functions and raw
// pointers from C callers. Allowed for this crate only (the workspace denies it); each block
// carries a `SAFETY:` comment stating what the caller's contract guarantees.
#![allow(unsafe_code)]
// The exported functions are for C callers, whose pointer contract is the header's; they are
// safe `extern "C"` functions so C sees plain prototypes, and every raw pointer goes through
// the checked helpers below (NULL refused, one `SAFETY:` comment each).
#![allow(clippy::not_unsafe_ptr_arg_deref)]

use std::cell::RefCell;
use std::ffi::{c_char, CStr, CString};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

use udp_director_client::core::{self, Core, Dropped, Incoming, TransmitKind};
use udp_director_client::frames::{self, MAX_CONTROL_LEN};
use udp_director_client::{parse_answer, Grant, Query, QueryError, Resume, Session};

/// The longest datagram `ud_core_poll_transmit` writes: a RESPONSE with a 32-byte magic and a
/// 128-byte token, 32 + 1 + 16 + 128. Its buffer must hold at least this many bytes. (A
/// literal, so cbindgen can write it; a test keeps it equal to the client's constant.)
pub const UD_MAX_CONTROL_LEN: usize = 177;

/// The library's version, the same as `ud_version()` (the workspace's version scheme: the
/// Rust crates, this library and the npm package move together).
pub const UD_VERSION_MAJOR: u32 = 0;
pub const UD_VERSION_MINOR: u32 = 1;
pub const UD_VERSION_PATCH: u32 = 0;

/// What a call did. Anything but `UD_STATUS_OK` leaves a message for
/// `ud_last_error_message` (`UD_STATUS_TIMEOUT` too).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UdStatus {
    Ok = 0,
    /// A NULL pointer, a string that is not UTF-8, an address, token or magic that does not
    /// parse.
    InvalidArgument = 1,
    /// A socket or connection failed.
    Io = 2,
    /// The director answered the query with an error; the message starts with its code
    /// (`no_match: ...`, `unauthorized: ...`, SPEC §2).
    Refused = 3,
    /// The director's answer was not a query answer.
    Garbled = 4,
    /// Nothing arrived in time (`ud_session_recv`).
    Timeout = 5,
    /// An out-buffer was smaller than needed.
    BufferTooSmall = 6,
    /// A bug inside the library: the handle involved must only be freed.
    Panic = 7,
}

/// What a datagram given to `ud_core_handle_datagram` was.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UdIncoming {
    /// Game data from the director in use: hand it to the game.
    Data = 0,
    /// A CHALLENGE: its RESPONSE waits in `ud_core_poll_transmit`.
    Challenge = 1,
    /// A PONG: the RTT shows in `ud_core_director`.
    Pong = 2,
    /// Not for the game (a stranger, an old director, a stray PONG, a challenge flood).
    Dropped = 3,
}

/// What a transmit from `ud_core_poll_transmit` is.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UdTransmitKind {
    Token = 0,
    Resume = 1,
    Response = 2,
    Ping = 3,
}

/// An IP address and port. `family` is 4 or 6; an IPv4 address is in `ip[0..4]`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdAddr {
    pub family: u8,
    pub port: u16,
    pub ip: [u8; 16],
}

/// How sessions and cores behave. Fill it with `ud_config_default`, then change fields.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct UdConfig {
    /// The director's `controlPacketMagicBytes`, 1..=32 bytes, borrowed for the call; NULL
    /// for the default `FF FF FF FF 'R' 'E' 'S' 'E' 'T'`.
    pub magic: *const u8,
    pub magic_len: usize,
    /// Resume after this much silence, and again every as much while it lasts (500).
    pub silence_ms: u32,
    /// Resume at least this often (5000).
    pub keepalive_ms: u32,
    /// With several director addresses: fail over after this much silence (3000).
    pub failover_after_ms: u32,
    /// With several director addresses: wait this long for PONGs before choosing (500).
    pub probe_for_ms: u32,
    /// Seeds PING ids; 0 picks a random seed.
    pub seed: u64,
}

/// Counters of a session or core.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct UdStats {
    pub resumes: u64,
    pub failovers: u64,
    pub challenges_answered: u64,
    pub pongs: u64,
    pub dropped: u64,
}

/// One datagram `ud_core_poll_transmit` wrote: `len` bytes of the caller's buffer, to
/// `destination`. `len` 0: nothing to send.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct UdTransmit {
    pub destination: UdAddr,
    pub len: usize,
    pub kind: UdTransmitKind,
}

/// A query being built (opaque).
pub struct UdQuery {
    query: Query,
}

/// A successful query answer (opaque): the token and what it opens.
pub struct UdGrant {
    grant: Grant,
    token: CString,
    namespace: CString,
    name: CString,
}

/// A session owning its UDP socket (opaque).
pub struct UdSession {
    session: Session,
}

/// The sans-IO core (opaque): no socket, no clock.
pub struct UdCore {
    core: Core,
    /// The caller's microsecond `base_us` is this instant.
    base: Instant,
    base_us: u64,
}

// ---------------------------------------------------------------------------------------
// Errors and the panic guard.

struct Error {
    status: UdStatus,
    message: String,
}

fn err(status: UdStatus, message: impl std::fmt::Display) -> Error {
    Error {
        status,
        message: message.to_string(),
    }
}

fn invalid(message: impl std::fmt::Display) -> Error {
    err(UdStatus::InvalidArgument, message)
}

thread_local! {
    static LAST_ERROR: RefCell<String> = const { RefCell::new(String::new()) };
}

/// Runs `f` with panics caught; records the message of a failure for this thread.
fn guard(f: impl FnOnce() -> Result<(), Error>) -> UdStatus {
    let outcome = catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|_| {
        Err(err(
            UdStatus::Panic,
            "a panic inside udp-director (a bug): free the handle involved and report it",
        ))
    });
    match outcome {
        Ok(()) => UdStatus::Ok,
        Err(e) => {
            LAST_ERROR.with(|m| *m.borrow_mut() = e.message);
            e.status
        }
    }
}

fn from_io(e: std::io::Error) -> Error {
    match e.kind() {
        std::io::ErrorKind::InvalidInput => invalid(e),
        _ => err(UdStatus::Io, e),
    }
}

fn from_query(e: QueryError) -> Error {
    match e {
        QueryError::Io(e) => err(UdStatus::Io, format!("query connection failed: {e}")),
        QueryError::Refused { code, message } => {
            err(UdStatus::Refused, format!("{code}: {message}"))
        }
        QueryError::Garbled(line) => {
            err(UdStatus::Garbled, format!("not a query answer: {line:?}"))
        }
    }
}

// ---------------------------------------------------------------------------------------
// Pointer helpers: the only places raw pointers from C are read.

/// A borrowed string argument.
fn text<'a>(p: *const c_char, what: &str) -> Result<&'a str, Error> {
    if p.is_null() {
        return Err(invalid(format!("{what}: expected a string, got NULL")));
    }
    // SAFETY: non-NULL, and the caller's contract (header preamble) is a NUL-terminated
    // string that stays valid for the duration of the call.
    let s = unsafe { CStr::from_ptr(p) };
    s.to_str()
        .map_err(|_| invalid(format!("{what}: expected UTF-8")))
}

/// A borrowed byte buffer argument (`len` 0 may come with NULL).
fn bytes<'a>(p: *const u8, len: usize, what: &str) -> Result<&'a [u8], Error> {
    if len == 0 {
        return Ok(&[]);
    }
    if p.is_null() {
        return Err(invalid(format!("{what}: expected {len} bytes, got NULL")));
    }
    // SAFETY: non-NULL; the caller guarantees `len` readable bytes for the call.
    Ok(unsafe { std::slice::from_raw_parts(p, len) })
}

/// A borrowed mutable byte buffer argument.
fn bytes_mut<'a>(p: *mut u8, len: usize, what: &str) -> Result<&'a mut [u8], Error> {
    if p.is_null() {
        return Err(invalid(format!("{what}: expected a buffer, got NULL")));
    }
    // SAFETY: non-NULL; the caller guarantees `len` writable bytes, not aliased, for the call.
    Ok(unsafe { std::slice::from_raw_parts_mut(p, len) })
}

/// A handle argument.
fn handle<'a, T>(p: *mut T, what: &str) -> Result<&'a mut T, Error> {
    // SAFETY: the caller passes NULL or a live handle from this library, used by one thread
    // at a time; as_mut turns NULL into None.
    unsafe { p.as_mut() }.ok_or_else(|| invalid(format!("{what}: expected a handle, got NULL")))
}

/// A borrowed read-only struct argument.
fn borrowed<'a, T>(p: *const T, what: &str) -> Result<&'a T, Error> {
    // SAFETY: the caller passes NULL or a valid, initialised value for the call.
    unsafe { p.as_ref() }.ok_or_else(|| invalid(format!("{what}: expected a pointer, got NULL")))
}

/// Writes an out-parameter.
fn put<T>(p: *mut T, value: T, what: &str) -> Result<(), Error> {
    if p.is_null() {
        return Err(invalid(format!(
            "{what}: expected an out-pointer, got NULL"
        )));
    }
    // SAFETY: non-NULL and, by the caller's contract, valid for a write of one `T`; `write`
    // does not read or drop the old (possibly uninitialised) value.
    unsafe { p.write(value) };
    Ok(())
}

/// Hands a new handle to C.
fn hand_over<T>(out: *mut *mut T, value: T, what: &str) -> Result<(), Error> {
    put(out, Box::into_raw(Box::new(value)), what)
}

/// Takes a handle back from C and drops it (NULL: nothing).
fn free<T>(p: *mut T) {
    if !p.is_null() {
        // SAFETY: non-NULL handles come from `hand_over` (Box::into_raw) and the caller frees
        // each once, after its last use.
        drop(unsafe { Box::from_raw(p) });
    }
}

/// Copies `s` and a NUL into `buf` (truncated to fit); the length `s` needs with its NUL.
fn copy_out(s: &str, buf: *mut c_char, cap: usize) -> usize {
    if !buf.is_null() && cap > 0 {
        let n = s.len().min(cap - 1);
        // SAFETY: non-NULL; the caller guarantees `cap` writable bytes; `n + 1 <= cap`, and
        // `s` (Rust-owned) cannot overlap the caller's buffer.
        unsafe {
            std::ptr::copy_nonoverlapping(s.as_ptr(), buf.cast::<u8>(), n);
            buf.add(n).write(0);
        }
    }
    s.len() + 1
}

fn addr_from(a: &UdAddr) -> Result<SocketAddr, Error> {
    let ip = match a.family {
        4 => IpAddr::V4(Ipv4Addr::new(a.ip[0], a.ip[1], a.ip[2], a.ip[3])),
        6 => IpAddr::V6(Ipv6Addr::from(a.ip)),
        f => return Err(invalid(format!("address family: expected 4 or 6, got {f}"))),
    };
    Ok(SocketAddr::new(ip, a.port))
}

fn addr_to(s: SocketAddr) -> UdAddr {
    let mut ip = [0u8; 16];
    let family = match s.ip() {
        IpAddr::V4(v4) => {
            ip[..4].copy_from_slice(&v4.octets());
            4
        }
        IpAddr::V6(v6) => {
            ip = v6.octets();
            6
        }
    };
    UdAddr {
        family,
        port: s.port(),
        ip,
    }
}

fn stats_to(s: core::Stats) -> UdStats {
    UdStats {
        resumes: s.resumes,
        failovers: s.failovers,
        challenges_answered: s.challenges_answered,
        pongs: s.pongs,
        dropped: s.dropped,
    }
}

fn config_from(c: Option<&UdConfig>) -> Result<core::Config, Error> {
    let Some(c) = c else {
        return Ok(core::Config::default());
    };
    let magic = if c.magic.is_null() {
        frames::DEFAULT_MAGIC.to_vec()
    } else {
        bytes(c.magic, c.magic_len, "config.magic")?.to_vec()
    };
    let ms = |v: u32| Duration::from_millis(u64::from(v));
    Ok(core::Config {
        magic,
        resume: Resume {
            silence: ms(c.silence_ms),
            keepalive: ms(c.keepalive_ms),
        },
        failover_after: ms(c.failover_after_ms),
        probe_for: ms(c.probe_for_ms),
        seed: c.seed,
    })
}

fn reopen_window(g: &Grant) -> Duration {
    Duration::from_secs(g.resume_seconds.unwrap_or(g.ttl_seconds).max(g.ttl_seconds))
}

fn grant_handle(grant: Grant) -> Result<UdGrant, Error> {
    let c =
        |s: &str| CString::new(s).map_err(|_| err(UdStatus::Garbled, "a NUL inside the answer"));
    Ok(UdGrant {
        token: c(&grant.token)?,
        namespace: c(&grant.target.namespace)?,
        name: c(&grant.target.name)?,
        grant,
    })
}

// ---------------------------------------------------------------------------------------
// Library.

/// The library's version, e.g. "0.1.0" (static; do not free).
#[no_mangle]
pub extern "C" fn ud_version() -> *const c_char {
    static VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), "\0");
    VERSION.as_ptr().cast()
}

/// Copies this thread's last error message into `buf` (`cap` bytes, NUL-terminated,
/// truncated to fit); returns the size the whole message needs, NUL included (1: none).
/// `buf` may be NULL to ask for the size.
#[no_mangle]
pub extern "C" fn ud_last_error_message(buf: *mut c_char, cap: usize) -> usize {
    catch_unwind(|| LAST_ERROR.with(|m| copy_out(&m.borrow(), buf, cap))).unwrap_or(0)
}

/// Fills `out` with the defaults (default magic, 500 ms / 5 s / 3 s / 500 ms, random seed).
#[no_mangle]
pub extern "C" fn ud_config_default(out: *mut UdConfig) -> UdStatus {
    guard(|| {
        let d = core::Config::default();
        let ms = |d: Duration| u32::try_from(d.as_millis()).unwrap_or(u32::MAX);
        put(
            out,
            UdConfig {
                magic: std::ptr::null(),
                magic_len: 0,
                silence_ms: ms(d.resume.silence),
                keepalive_ms: ms(d.resume.keepalive),
                failover_after_ms: ms(d.failover_after),
                probe_for_ms: ms(d.probe_for),
                seed: 0,
            },
            "out",
        )
    })
}

/// Parses "127.0.0.1:7777" or "[::1]:7777" into `out`.
#[no_mangle]
pub extern "C" fn ud_addr_parse(text_addr: *const c_char, out: *mut UdAddr) -> UdStatus {
    guard(|| {
        let s = text(text_addr, "address")?;
        let a: SocketAddr = s
            .parse()
            .map_err(|_| invalid(format!("address: expected IP:PORT, got {s:?}")))?;
        put(out, addr_to(a), "out")
    })
}

/// Writes `addr` as text into `buf` (like `ud_last_error_message`); returns the size needed,
/// 0 when `addr` is NULL or not an address.
#[no_mangle]
pub extern "C" fn ud_addr_format(addr: *const UdAddr, buf: *mut c_char, cap: usize) -> usize {
    catch_unwind(|| {
        borrowed(addr, "addr")
            .and_then(addr_from)
            .map_or(0, |a| copy_out(&a.to_string(), buf, cap))
    })
    .unwrap_or(0)
}

// ---------------------------------------------------------------------------------------
// Queries (SPEC §2).

/// A new query for `resource_type`, handed to `*out` (free with `ud_query_free`).
#[no_mangle]
pub extern "C" fn ud_query_new(resource_type: *const c_char, out: *mut *mut UdQuery) -> UdStatus {
    guard(|| {
        let kind = text(resource_type, "resource_type")?;
        hand_over(
            out,
            UdQuery {
                query: Query::new(kind),
            },
            "out",
        )
    })
}

/// Frees a query (NULL: nothing).
#[no_mangle]
pub extern "C" fn ud_query_free(query: *mut UdQuery) {
    let _ = catch_unwind(AssertUnwindSafe(|| free(query)));
}

fn edit_query(query: *mut UdQuery, f: impl FnOnce(Query) -> Result<Query, Error>) -> UdStatus {
    guard(|| {
        let q = handle(query, "query")?;
        // On a clone, so a refused edit leaves the query as it was.
        q.query = f(q.query.clone())?;
        Ok(())
    })
}

#[no_mangle]
pub extern "C" fn ud_query_namespace(query: *mut UdQuery, namespace: *const c_char) -> UdStatus {
    edit_query(query, |q| Ok(q.namespace(text(namespace, "namespace")?)))
}

/// Adds `key = value` to the label selector.
#[no_mangle]
pub extern "C" fn ud_query_label(
    query: *mut UdQuery,
    key: *const c_char,
    value: *const c_char,
) -> UdStatus {
    edit_query(query, |q| {
        Ok(q.label(text(key, "key")?, text(value, "value")?))
    })
}

/// Adds `key = value` to the annotation selector.
#[no_mangle]
pub extern "C" fn ud_query_annotation(
    query: *mut UdQuery,
    key: *const c_char,
    value: *const c_char,
) -> UdStatus {
    edit_query(query, |q| {
        Ok(q.annotation(text(key, "key")?, text(value, "value")?))
    })
}

/// Matches when the value at `json_path` is one of the `n` strings of `expected`.
#[no_mangle]
pub extern "C" fn ud_query_status(
    query: *mut UdQuery,
    json_path: *const c_char,
    expected: *const *const c_char,
    n: usize,
) -> UdStatus {
    edit_query(query, |q| {
        let path = text(json_path, "json_path")?;
        let values = if n == 0 {
            Vec::new()
        } else {
            if expected.is_null() {
                return Err(invalid("expected: NULL with n > 0"));
            }
            // SAFETY: non-NULL; the caller guarantees `n` readable string pointers.
            let ptrs = unsafe { std::slice::from_raw_parts(expected, n) };
            ptrs.iter()
                .map(|&p| text(p, "expected[i]"))
                .collect::<Result<Vec<_>, _>>()?
        };
        Ok(q.status(path, &values))
    })
}

/// The player's id (sent to the game server in the PROXY v2 header).
#[no_mangle]
pub extern "C" fn ud_query_player_id(query: *mut UdQuery, player_id: *const c_char) -> UdStatus {
    edit_query(query, |q| Ok(q.player_id(text(player_id, "player_id")?)))
}

/// The player's ticket (a JWT from the studio's backend), passed through unread.
#[no_mangle]
pub extern "C" fn ud_query_ticket(query: *mut UdQuery, ticket: *const c_char) -> UdStatus {
    edit_query(query, |q| Ok(q.ticket(text(ticket, "ticket")?)))
}

/// The request line (without newline) into `buf`, like `ud_last_error_message`; returns the
/// size needed, 0 for a NULL query.
#[no_mangle]
pub extern "C" fn ud_query_line(query: *const UdQuery, buf: *mut c_char, cap: usize) -> usize {
    catch_unwind(|| borrowed(query, "query").map_or(0, |q| copy_out(&q.query.to_line(), buf, cap)))
        .unwrap_or(0)
}

/// Sends the query to `query_addr` ("host-ip:port") on a fresh TCP connection and waits for
/// the answer (up to 5 s each for connect and answer). On success the grant is handed to
/// `*out` (free with `ud_grant_free`); the query stays the caller's.
#[no_mangle]
pub extern "C" fn ud_query_send(
    query: *const UdQuery,
    query_addr: *const c_char,
    out: *mut *mut UdGrant,
) -> UdStatus {
    guard(|| {
        let q = borrowed(query, "query")?;
        let s = text(query_addr, "query_addr")?;
        let addr: SocketAddr = s
            .parse()
            .map_err(|_| invalid(format!("query_addr: expected IP:PORT, got {s:?}")))?;
        let grant = q.query.send(addr).map_err(from_query)?;
        hand_over(out, grant_handle(grant)?, "out")
    })
}

// ---------------------------------------------------------------------------------------
// Grants.

/// Reads one answer line (for callers that do their own TCP); the grant is handed to `*out`.
#[no_mangle]
pub extern "C" fn ud_grant_parse(line: *const c_char, out: *mut *mut UdGrant) -> UdStatus {
    guard(|| {
        let grant = parse_answer(text(line, "line")?).map_err(from_query)?;
        hand_over(out, grant_handle(grant)?, "out")
    })
}

/// Frees a grant (NULL: nothing); strings returned by `ud_grant_*` die with it.
#[no_mangle]
pub extern "C" fn ud_grant_free(grant: *mut UdGrant) {
    let _ = catch_unwind(AssertUnwindSafe(|| free(grant)));
}

fn grant_str(grant: *const UdGrant, f: impl FnOnce(&UdGrant) -> &CString) -> *const c_char {
    catch_unwind(AssertUnwindSafe(|| {
        borrowed(grant, "grant").map_or(std::ptr::null(), |g| f(g).as_ptr())
    }))
    .unwrap_or(std::ptr::null())
}

/// The token (owned by the grant; NULL for a NULL grant).
#[no_mangle]
pub extern "C" fn ud_grant_token(grant: *const UdGrant) -> *const c_char {
    grant_str(grant, |g| &g.token)
}

/// The target's namespace (owned by the grant).
#[no_mangle]
pub extern "C" fn ud_grant_target_namespace(grant: *const UdGrant) -> *const c_char {
    grant_str(grant, |g| &g.namespace)
}

/// The target's name (owned by the grant).
#[no_mangle]
pub extern "C" fn ud_grant_target_name(grant: *const UdGrant) -> *const c_char {
    grant_str(grant, |g| &g.name)
}

/// `ttlSeconds` (0 for a NULL grant).
#[no_mangle]
pub extern "C" fn ud_grant_ttl_seconds(grant: *const UdGrant) -> u64 {
    catch_unwind(|| borrowed(grant, "grant").map_or(0, |g| g.grant.ttl_seconds)).unwrap_or(0)
}

/// `resumeSeconds` (sealed tokens), 0 when the answer has none.
#[no_mangle]
pub extern "C" fn ud_grant_resume_seconds(grant: *const UdGrant) -> u64 {
    catch_unwind(|| borrowed(grant, "grant").map_or(0, |g| g.grant.resume_seconds.unwrap_or(0)))
        .unwrap_or(0)
}

/// How long the token may re-open a session: max(resumeSeconds, ttlSeconds).
#[no_mangle]
pub extern "C" fn ud_grant_reopen_seconds(grant: *const UdGrant) -> u64 {
    catch_unwind(|| borrowed(grant, "grant").map_or(0, |g| reopen_window(&g.grant).as_secs()))
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------------
// Sessions: the library owns the socket.

/// Opens a session with `grant` through the first reachable of the `n` director data
/// addresses (strings "ip:port"; with several it PINGs them and blocks up to
/// `config.probe_for_ms` to pick the nearest). `config` may be NULL (defaults). The session
/// is handed to `*out` (free with `ud_session_free`); the grant stays the caller's.
#[no_mangle]
pub extern "C" fn ud_session_open(
    directors: *const *const c_char,
    n: usize,
    grant: *const UdGrant,
    config: *const UdConfig,
    out: *mut *mut UdSession,
) -> UdStatus {
    guard(|| {
        if directors.is_null() || n == 0 {
            return Err(invalid("directors: expected at least one address"));
        }
        // SAFETY: non-NULL; the caller guarantees `n` readable string pointers.
        let ptrs = unsafe { std::slice::from_raw_parts(directors, n) };
        let addrs = ptrs
            .iter()
            .map(|&p| {
                let s = text(p, "directors[i]")?;
                s.parse::<SocketAddr>()
                    .map_err(|_| invalid(format!("directors: expected IP:PORT, got {s:?}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let g = borrowed(grant, "grant")?;
        // SAFETY (inside `borrowed`): NULL or a valid UdConfig for the call.
        let cfg = config_from(if config.is_null() {
            None
        } else {
            Some(borrowed(config, "config")?)
        })?;
        let session = Session::open_any(&addrs, &g.grant, cfg).map_err(from_io)?;
        hand_over(out, UdSession { session }, "out")
    })
}

/// Closes the socket and frees the session (NULL: nothing).
#[no_mangle]
pub extern "C" fn ud_session_free(session: *mut UdSession) {
    let _ = catch_unwind(AssertUnwindSafe(|| free(session)));
}

/// Sends one game datagram (`len` bytes, borrowed for the call).
#[no_mangle]
pub extern "C" fn ud_session_send(
    session: *mut UdSession,
    data: *const u8,
    len: usize,
) -> UdStatus {
    guard(|| {
        let s = handle(session, "session")?;
        s.session.send(bytes(data, len, "data")?).map_err(from_io)
    })
}

/// Waits up to `timeout_ms` for game data; its length in `*out_len`. `UD_STATUS_TIMEOUT`
/// when none came. Control frames are handled on the way. A datagram longer than `cap` is
/// cut (UDP): pass 65536 bytes to never lose any.
#[no_mangle]
pub extern "C" fn ud_session_recv(
    session: *mut UdSession,
    buf: *mut u8,
    cap: usize,
    timeout_ms: u32,
    out_len: *mut usize,
) -> UdStatus {
    guard(|| {
        let s = handle(session, "session")?;
        let buf = bytes_mut(buf, cap, "buf")?;
        let got = s
            .session
            .recv_timeout(buf, Duration::from_millis(u64::from(timeout_ms)))
            .map_err(from_io)?;
        match got {
            Some(n) => put(out_len, n, "out_len"),
            None => {
                put(out_len, 0, "out_len")?;
                Err(err(UdStatus::Timeout, "no game data within the timeout"))
            }
        }
    })
}

/// Applies the resume rule and failover; `*resumed` (may be NULL) is true when it sent
/// `[magic][token]`. Call every frame.
#[no_mangle]
pub extern "C" fn ud_session_tick(session: *mut UdSession, resumed: *mut bool) -> UdStatus {
    guard(|| {
        let s = handle(session, "session")?;
        let sent = s.session.tick().map_err(from_io)?;
        if !resumed.is_null() {
            put(resumed, sent, "resumed")?;
        }
        Ok(())
    })
}

/// Moves the session to the target of `grant` (same socket); the grant stays the caller's.
#[no_mangle]
pub extern "C" fn ud_session_switch(session: *mut UdSession, grant: *const UdGrant) -> UdStatus {
    guard(|| {
        let s = handle(session, "session")?;
        let g = borrowed(grant, "grant")?;
        s.session.switch(&g.grant).map_err(from_io)
    })
}

/// PINGs every director address again (RTTs arrive through `ud_session_recv`).
#[no_mangle]
pub extern "C" fn ud_session_ping(session: *mut UdSession) -> UdStatus {
    guard(|| handle(session, "session")?.session.ping().map_err(from_io))
}

/// The director address in use.
#[no_mangle]
pub extern "C" fn ud_session_remote(session: *mut UdSession, out: *mut UdAddr) -> UdStatus {
    guard(|| {
        let s = handle(session, "session")?;
        put(out, addr_to(s.session.remote()), "out")
    })
}

/// The session's local address (the one the game server's director sees).
#[no_mangle]
pub extern "C" fn ud_session_local(session: *mut UdSession, out: *mut UdAddr) -> UdStatus {
    guard(|| {
        let s = handle(session, "session")?;
        let local = s.session.socket().local_addr().map_err(from_io)?;
        put(out, addr_to(local), "out")
    })
}

#[no_mangle]
pub extern "C" fn ud_session_stats(session: *mut UdSession, out: *mut UdStats) -> UdStatus {
    guard(|| {
        let s = handle(session, "session")?;
        put(out, stats_to(s.session.stats()), "out")
    })
}

/// Whether the token can no longer re-open the session (query again and switch).
#[no_mangle]
pub extern "C" fn ud_session_needs_query(session: *mut UdSession, out: *mut bool) -> UdStatus {
    guard(|| {
        let s = handle(session, "session")?;
        put(out, s.session.needs_query(), "out")
    })
}

// ---------------------------------------------------------------------------------------
// The sans-IO core: the caller owns sockets and clock.

impl UdCore {
    fn at(&self, now_us: u64) -> Instant {
        self.base + Duration::from_micros(now_us.saturating_sub(self.base_us))
    }

    fn us(&self, at: Instant) -> u64 {
        let since = at.saturating_duration_since(self.base).as_micros();
        self.base_us
            .saturating_add(u64::try_from(since).unwrap_or(u64::MAX))
    }
}

/// A core for `token` (re-opening for `reopen_seconds`) through the `n` director addresses
/// (`directors`, borrowed), created at `now_us`. `config` may be NULL. Handed to `*out`
/// (free with `ud_core_free`). Then loop: `ud_core_poll_transmit` until it writes nothing,
/// sleep/poll your socket until `ud_core_poll_timeout`, feed `ud_core_handle_datagram` and
/// `ud_core_handle_timeout`.
#[no_mangle]
pub extern "C" fn ud_core_new(
    directors: *const UdAddr,
    n: usize,
    token: *const c_char,
    reopen_seconds: u64,
    config: *const UdConfig,
    now_us: u64,
    out: *mut *mut UdCore,
) -> UdStatus {
    guard(|| {
        if directors.is_null() || n == 0 {
            return Err(invalid("directors: expected at least one address"));
        }
        // SAFETY: non-NULL; the caller guarantees `n` readable UdAddr values.
        let list = unsafe { std::slice::from_raw_parts(directors, n) };
        let addrs = list.iter().map(addr_from).collect::<Result<Vec<_>, _>>()?;
        let token = text(token, "token")?;
        let mut cfg = config_from(if config.is_null() {
            None
        } else {
            Some(borrowed(config, "config")?)
        })?;
        if cfg.seed == 0 {
            cfg.seed = random_seed();
        }
        let base = Instant::now();
        let core = Core::new(
            &addrs,
            token.as_bytes(),
            Duration::from_secs(reopen_seconds),
            cfg,
            base,
        )
        .map_err(invalid)?;
        hand_over(
            out,
            UdCore {
                core,
                base,
                base_us: now_us,
            },
            "out",
        )
    })
}

fn random_seed() -> u64 {
    use std::hash::BuildHasher;
    std::collections::hash_map::RandomState::new().hash_one(Instant::now()) | 1
}

/// Frees a core (NULL: nothing).
#[no_mangle]
pub extern "C" fn ud_core_free(core: *mut UdCore) {
    let _ = catch_unwind(AssertUnwindSafe(|| free(core)));
}

/// Reads one datagram (`len` bytes, borrowed) that arrived from `from`; what it was in `*out`.
#[no_mangle]
pub extern "C" fn ud_core_handle_datagram(
    core: *mut UdCore,
    now_us: u64,
    from: *const UdAddr,
    data: *const u8,
    len: usize,
    out: *mut UdIncoming,
) -> UdStatus {
    guard(|| {
        let c = handle(core, "core")?;
        let from = addr_from(borrowed(from, "from")?)?;
        let data = bytes(data, len, "data")?;
        let now = c.at(now_us);
        let kind = match c.core.handle_datagram(now, from, data) {
            Incoming::Data => UdIncoming::Data,
            Incoming::Challenge => UdIncoming::Challenge,
            Incoming::Pong { .. } => UdIncoming::Pong,
            Incoming::Dropped(
                Dropped::Stranger
                | Dropped::NotCurrent
                | Dropped::UnknownPong
                | Dropped::ChallengeFlood,
            ) => UdIncoming::Dropped,
        };
        put(out, kind, "out")
    })
}

/// Applies the timers at `now_us`.
#[no_mangle]
pub extern "C" fn ud_core_handle_timeout(core: *mut UdCore, now_us: u64) -> UdStatus {
    guard(|| {
        let c = handle(core, "core")?;
        let now = c.at(now_us);
        c.core.handle_timeout(now);
        Ok(())
    })
}

/// When to call `ud_core_handle_timeout` next, in the caller's microseconds.
#[no_mangle]
pub extern "C" fn ud_core_poll_timeout(core: *mut UdCore, out_us: *mut u64) -> UdStatus {
    guard(|| {
        let c = handle(core, "core")?;
        let at = c.core.poll_timeout().map_or(u64::MAX, |at| c.us(at));
        put(out_us, at, "out_us")
    })
}

/// Writes the next datagram to send into `buf` (`cap` >= `UD_MAX_CONTROL_LEN`) and describes
/// it in `*out`; `out->len` 0 when nothing waits. Call until then after every `ud_core_*`
/// call that feeds the core.
#[no_mangle]
pub extern "C" fn ud_core_poll_transmit(
    core: *mut UdCore,
    now_us: u64,
    buf: *mut u8,
    cap: usize,
    out: *mut UdTransmit,
) -> UdStatus {
    guard(|| {
        let c = handle(core, "core")?;
        if cap < UD_MAX_CONTROL_LEN {
            return Err(err(
                UdStatus::BufferTooSmall,
                format!("buf: expected at least {MAX_CONTROL_LEN} bytes, got {cap}"),
            ));
        }
        let buf = bytes_mut(buf, cap, "buf")?;
        let frame: &mut [u8; MAX_CONTROL_LEN] = (&mut buf[..MAX_CONTROL_LEN])
            .try_into()
            .map_err(|_| err(UdStatus::BufferTooSmall, "buf"))?;
        let now = c.at(now_us);
        let t = match c.core.poll_transmit(now, frame) {
            Some(t) => UdTransmit {
                destination: addr_to(t.destination),
                len: t.len,
                kind: match t.kind {
                    TransmitKind::Token => UdTransmitKind::Token,
                    TransmitKind::Resume => UdTransmitKind::Resume,
                    TransmitKind::Response => UdTransmitKind::Response,
                    TransmitKind::Ping => UdTransmitKind::Ping,
                },
            },
            None => UdTransmit {
                destination: addr_to(c.core.remote()),
                len: 0,
                kind: UdTransmitKind::Token,
            },
        };
        put(out, t, "out")
    })
}

/// Where game datagrams go now.
#[no_mangle]
pub extern "C" fn ud_core_remote(core: *mut UdCore, out: *mut UdAddr) -> UdStatus {
    guard(|| {
        let c = handle(core, "core")?;
        put(out, addr_to(c.core.remote()), "out")
    })
}

/// Moves the session to a new token's target (a RESUME with it waits to be sent).
#[no_mangle]
pub extern "C" fn ud_core_switch(
    core: *mut UdCore,
    now_us: u64,
    token: *const c_char,
    reopen_seconds: u64,
) -> UdStatus {
    guard(|| {
        let c = handle(core, "core")?;
        let token = text(token, "token")?;
        let now = c.at(now_us);
        c.core
            .switch(now, token.as_bytes(), Duration::from_secs(reopen_seconds))
            .map_err(invalid)
    })
}

/// Queues a PING to every director address.
#[no_mangle]
pub extern "C" fn ud_core_ping(core: *mut UdCore, now_us: u64) -> UdStatus {
    guard(|| {
        let c = handle(core, "core")?;
        let now = c.at(now_us);
        c.core.ping(now);
        Ok(())
    })
}

#[no_mangle]
pub extern "C" fn ud_core_stats(core: *mut UdCore, out: *mut UdStats) -> UdStatus {
    guard(|| {
        let c = handle(core, "core")?;
        put(out, stats_to(c.core.stats()), "out")
    })
}

/// Whether the core is still waiting for PONGs before sending its token.
#[no_mangle]
pub extern "C" fn ud_core_is_probing(core: *mut UdCore, out: *mut bool) -> UdStatus {
    guard(|| {
        let c = handle(core, "core")?;
        put(out, c.core.is_probing(), "out")
    })
}

/// The `i`-th director in order of preference: its address and smoothed RTT in µs (0 until
/// a PONG came). `UD_STATUS_INVALID_ARGUMENT` past the last.
#[no_mangle]
pub extern "C" fn ud_core_director(
    core: *mut UdCore,
    i: usize,
    out_addr: *mut UdAddr,
    out_rtt_us: *mut u64,
) -> UdStatus {
    guard(|| {
        let c = handle(core, "core")?;
        let (addr, rtt) = c
            .core
            .directors()
            .nth(i)
            .ok_or_else(|| invalid(format!("i: no director {i}")))?;
        put(out_addr, addr_to(addr), "out_addr")?;
        let us = rtt.map_or(0, |r| u64::try_from(r.as_micros()).unwrap_or(u64::MAX));
        put(out_rtt_us, us, "out_rtt_us")
    })
}

/// Whether the token can no longer re-open the session at `now_us`.
#[no_mangle]
pub extern "C" fn ud_core_needs_query(core: *mut UdCore, now_us: u64, out: *mut bool) -> UdStatus {
    guard(|| {
        let c = handle(core, "core")?;
        let now = c.at(now_us);
        put(out, c.core.needs_query(now), "out")
    })
}

#[cfg(test)]
mod tests;
