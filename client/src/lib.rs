//! Client library for udp-director (SPEC §2, §3, §7): ask for a server, open a UDP session
//! with the token, and keep it alive across replica losses and load-balancer rehashes.
//!
//! ```no_run
//! use std::time::Duration;
//! use udp_director_client::{Query, Session};
//!
//! # fn main() -> std::io::Result<()> {
//! let query = "127.0.0.1:9000".parse().unwrap();
//! let data = "127.0.0.1:7777".parse().unwrap();
//! let grant = Query::new("echo").label("zone", "a").send(query)?;
//! let mut session = Session::open(data, &grant)?;
//! let mut buf = [0u8; 1500];
//! loop {
//!     session.send(b"player input")?;
//!     if let Some(n) = session.recv_timeout(&mut buf, Duration::from_millis(16))? {
//!         let _state = &buf[..n]; // the game server's reply
//!     }
//!     session.tick()?; // the resume rule: re-sends [magic][token] after silence and as a keepalive
//!     if session.needs_query() {
//!         break; // the token can no longer re-open the session: query again
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! The resume rule ([`Resume`]): when nothing has been heard from the director for
//! `silence` (default 500 ms), and then every `silence` while it stays quiet, the session
//! sends `[magic][token]`; it also sends it every `keepalive` (default 5 s, below every cloud
//! load balancer's UDP idle timeout). On a live session that datagram changes nothing and is
//! not forwarded; on a replica that has never seen the client it re-opens the session
//! (sealed tokens, within `resumeSeconds`). That is how a client survives a replica loss.
//!
//! Owns the client side of the wire protocols. Must not depend on the director's code.

use std::io::{self, BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

pub mod core;
pub mod frames;
#[cfg(feature = "tls")]
pub mod tls;

use crate::core::{Core, Incoming};
pub use crate::frames::DEFAULT_MAGIC;
use crate::frames::MAX_CONTROL_LEN;

/// A query (SPEC §2), built field by field and sent as one JSON line.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Query {
    resource_type: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    namespace: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty", serialize_with = "as_map")]
    label_selector: Vec<(String, String)>,
    #[serde(skip_serializing_if = "Vec::is_empty", serialize_with = "as_map")]
    annotation_selector: Vec<(String, String)>,
    #[serde(skip_serializing_if = "Option::is_none")]
    status_query: Option<StatusQuery>,
    #[serde(skip_serializing_if = "Option::is_none")]
    player_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ticket: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_ip: Option<std::net::IpAddr>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
struct StatusQuery {
    json_path: String,
    expected_values: Vec<String>,
}

fn as_map<S: serde::Serializer>(pairs: &[(String, String)], s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut map = s.serialize_map(Some(pairs.len()))?;
    for (k, v) in pairs {
        map.serialize_entry(k, v)?;
    }
    map.end()
}

impl Query {
    /// A query for `resource_type` (a key of the director's `resourceQueryMapping`).
    pub fn new(resource_type: &str) -> Self {
        Self {
            resource_type: resource_type.to_string(),
            ..Self::default()
        }
    }

    pub fn namespace(mut self, namespace: &str) -> Self {
        self.namespace = Some(namespace.to_string());
        self
    }

    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.label_selector.push((key.into(), value.into()));
        self
    }

    pub fn annotation(mut self, key: &str, value: &str) -> Self {
        self.annotation_selector.push((key.into(), value.into()));
        self
    }

    /// Matches when the JSONPath's value is one of `expected` (e.g. `status.state`, `Ready`).
    pub fn status(mut self, json_path: &str, expected: &[&str]) -> Self {
        self.status_query = Some(StatusQuery {
            json_path: json_path.into(),
            expected_values: expected.iter().map(|s| s.to_string()).collect(),
        });
        self
    }

    /// The player's id (1..=36 bytes of `A-Z a-z 0-9 . _ : @ -`): added to the Agones players
    /// list when the mapping allocates, and passed to the game server in the PROXY v2 header
    /// when the mapping has `proxyProtocol: v2`.
    pub fn player_id(mut self, id: &str) -> Self {
        self.player_id = Some(id.to_string());
        self
    }

    /// The player's ticket (SPEC §2, "Who may ask"): a JWT the studio's backend issued after
    /// authenticating the player, passed through unread. Required by mappings with
    /// `auth: ticket`; a missing or bad one is answered `unauthorized`.
    pub fn ticket(mut self, jwt: &str) -> Self {
        self.ticket = Some(jwt.to_string());
        self
    }

    /// The player's IP, for a backend asking on a player's behalf (a matchmaker): the token
    /// binds to it instead of the caller's. Only a caller with a client certificate the
    /// director trusts (`queryTls.clientCaFile`, see [`tls`] with the `tls` feature) may set
    /// it; from anyone else the query is `unauthorized`.
    pub fn client_ip(mut self, ip: std::net::IpAddr) -> Self {
        self.client_ip = Some(ip);
        self
    }

    /// The request line, without its newline.
    pub fn to_line(&self) -> String {
        // Strings and maps of strings always serialize.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Sends the query on a fresh connection and reads its answer.
    pub fn send(&self, query_addr: SocketAddr) -> Result<Grant, QueryError> {
        Queries::connect(query_addr)?.ask(self)
    }
}

/// A successful answer: the token and what it opens.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Grant {
    pub token: String,
    pub ttl_seconds: u64,
    /// Sealed tokens: how long `[magic][token]` re-opens the session on any replica.
    #[serde(default)]
    pub resume_seconds: Option<u64>,
    pub target: GrantTarget,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct GrantTarget {
    pub namespace: String,
    pub name: String,
    #[serde(default)]
    pub address: Option<String>,
    #[serde(default)]
    pub port: Option<u16>,
}

/// Why a query gave no token.
#[derive(Debug)]
pub enum QueryError {
    /// The connection failed.
    Io(io::Error),
    /// The director answered with an error (SPEC §2 codes: `no_match`, `rate_limited`, ...).
    Refused { code: String, message: String },
    /// The answer was not a SPEC §2 answer.
    Garbled(String),
}

impl std::fmt::Display for QueryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            QueryError::Io(e) => write!(f, "query connection failed: {e}"),
            QueryError::Refused { code, message } => write!(f, "{code}: {message}"),
            QueryError::Garbled(line) => write!(f, "not a query answer: {line:?}"),
        }
    }
}

impl std::error::Error for QueryError {}

impl From<io::Error> for QueryError {
    fn from(e: io::Error) -> Self {
        QueryError::Io(e)
    }
}

impl From<QueryError> for io::Error {
    fn from(e: QueryError) -> Self {
        match e {
            QueryError::Io(e) => e,
            other => io::Error::other(other.to_string()),
        }
    }
}

/// Reads one answer line.
pub fn parse_answer(line: &str) -> Result<Grant, QueryError> {
    #[derive(Deserialize)]
    struct Failure {
        error: FailureBody,
    }
    #[derive(Deserialize)]
    struct FailureBody {
        code: String,
        message: String,
    }
    if let Ok(grant) = serde_json::from_str::<Grant>(line) {
        return Ok(grant);
    }
    match serde_json::from_str::<Failure>(line) {
        Ok(f) => Err(QueryError::Refused {
            code: f.error.code,
            message: f.error.message,
        }),
        Err(_) => Err(QueryError::Garbled(line.trim().to_string())),
    }
}

/// A query connection kept open for several queries (one answer per line, in order).
pub struct Queries {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Queries {
    pub fn connect(query_addr: SocketAddr) -> io::Result<Self> {
        let stream = TcpStream::connect_timeout(&query_addr, Duration::from_secs(5))?;
        Self::over(stream)
    }

    /// Queries over a connection made by the caller (e.g. bound to one of several local
    /// addresses: tokens are bound to the IP a query comes from).
    pub fn from_stream(stream: TcpStream) -> io::Result<Self> {
        Self::over(stream)
    }

    fn over(stream: TcpStream) -> io::Result<Self> {
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        stream.set_nodelay(true)?;
        Ok(Self {
            writer: stream.try_clone()?,
            reader: BufReader::new(stream),
        })
    }

    pub fn ask(&mut self, query: &Query) -> Result<Grant, QueryError> {
        self.ask_line(&query.to_line())
    }

    /// Sends one raw request line and reads its answer.
    pub fn ask_line(&mut self, line: &str) -> Result<Grant, QueryError> {
        self.writer.write_all(line.trim_end().as_bytes())?;
        self.writer.write_all(b"\n")?;
        self.read_answer()
    }

    /// `n` answers to one query, pipelined in batches of 256 lines.
    pub fn ask_many(&mut self, query: &Query, n: usize) -> Result<Vec<Grant>, QueryError> {
        let line = format!("{}\n", query.to_line());
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let batch = (n - out.len()).min(256);
            self.writer.write_all(line.repeat(batch).as_bytes())?;
            for _ in 0..batch {
                out.push(self.read_answer()?);
            }
        }
        Ok(out)
    }

    fn read_answer(&mut self) -> Result<Grant, QueryError> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(QueryError::Io(io::ErrorKind::UnexpectedEof.into()));
        }
        parse_answer(&line)
    }
}

/// When a session sends `[magic][token]` on its own (the resume rule).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resume {
    /// Nothing heard for this long: send it (and again every `silence` while quiet).
    pub silence: Duration,
    /// Send it at least this often, heard or not (keeps NAT and load-balancer flows and the
    /// session alive; keep it below the path's UDP idle timeout).
    pub keepalive: Duration,
}

impl Default for Resume {
    fn default() -> Self {
        Self {
            silence: Duration::from_millis(500),
            keepalive: Duration::from_secs(5),
        }
    }
}

impl Resume {
    /// Whether to send `[magic][token]` now: `since_heard` since the last datagram from the
    /// director, `since_sent` since the last one this rule sent.
    pub fn due(&self, since_heard: Duration, since_sent: Duration) -> bool {
        (since_heard >= self.silence && since_sent >= self.silence) || since_sent >= self.keepalive
    }
}

/// One UDP session through the director: a socket driven by a [`core::Core`], which makes
/// every decision (token, resume rule, challenge responses, pings, nearest director,
/// failover); this shell only moves datagrams and reads the clock.
pub struct Session {
    socket: UdpSocket,
    core: Core,
    out: [u8; MAX_CONTROL_LEN],
}

impl Session {
    /// Opens a session to the director's data port `data` with `grant`, from a fresh socket,
    /// with the default magic and resume rule.
    pub fn open(data: SocketAddr, grant: &Grant) -> io::Result<Self> {
        Self::open_any(&[data], grant, core::Config::default())
    }

    /// Opens a session from `socket` (bound by the caller) with `magic` and `resume`.
    pub fn open_on(
        socket: UdpSocket,
        data: SocketAddr,
        grant: &Grant,
        magic: &[u8],
        resume: Resume,
    ) -> io::Result<Self> {
        let cfg = core::Config {
            magic: magic.to_vec(),
            resume,
            ..core::Config::default()
        };
        Self::open_with(socket, &[data], grant, cfg)
    }

    /// Opens a session through the nearest of several director data addresses (regions, or
    /// replicas with their own addresses), failing over to the next after
    /// `cfg.failover_after` of silence. With more than one address this blocks up to
    /// `cfg.probe_for` while the directors answer PINGs (a director that does not answer
    /// them ranks after those that do, in the given order).
    pub fn open_any(
        directors: &[SocketAddr],
        grant: &Grant,
        cfg: core::Config,
    ) -> io::Result<Self> {
        let local: SocketAddr = match directors.first() {
            Some(d) if d.is_ipv6() => ([0u16; 8], 0).into(),
            _ => ([0, 0, 0, 0], 0).into(),
        };
        Self::open_with(UdpSocket::bind(local)?, directors, grant, cfg)
    }

    /// [`Session::open_any`] from `socket` (bound by the caller). A zero `cfg.seed` is
    /// replaced by a random one.
    pub fn open_with(
        socket: UdpSocket,
        directors: &[SocketAddr],
        grant: &Grant,
        mut cfg: core::Config,
    ) -> io::Result<Self> {
        if cfg.seed == 0 {
            cfg.seed = random_seed();
        }
        let core = Core::new(
            directors,
            grant.token.as_bytes(),
            reopen_window(grant),
            cfg,
            Instant::now(),
        )
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let mut session = Self {
            socket,
            core,
            out: [0; MAX_CONTROL_LEN],
        };
        session.flush()?;
        let mut buf = [0u8; 2048];
        while session.core.is_probing() {
            let until = session.core.poll_timeout().unwrap_or_else(Instant::now);
            let left = until.saturating_duration_since(Instant::now());
            // PONGs feed the core on the way; no game data can come before the token left.
            session.recv_timeout(&mut buf, left)?;
            session.core.handle_timeout(Instant::now());
            session.flush()?;
        }
        Ok(session)
    }

    /// Continues the session from `socket` (bound by the caller to the new address: a phone
    /// that moved from Wi-Fi to cellular): `[magic][token]` leaves from it at once, the
    /// director challenges the new address, and this session answers while it reads
    /// ([`Session::recv_timeout`]); no new query while the token can re-open the session.
    pub fn rebind(&mut self, socket: UdpSocket) -> io::Result<()> {
        self.socket = socket;
        self.core.rebound(Instant::now());
        self.flush()
    }

    /// Sends one game datagram to the director in use.
    pub fn send(&self, payload: &[u8]) -> io::Result<()> {
        self.socket.send_to(payload, self.core.remote()).map(|_| ())
    }

    /// Waits up to `timeout` for game data through the director; `None` when none came.
    /// Control frames (challenges, pongs) are handled on the way; datagrams from anyone else
    /// are ignored.
    pub fn recv_timeout(&mut self, buf: &mut [u8], timeout: Duration) -> io::Result<Option<usize>> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            self.socket.set_read_timeout(Some(left))?;
            match self.socket.recv_from(buf) {
                Ok((n, from)) => {
                    let incoming = self.core.handle_datagram(Instant::now(), from, &buf[..n]);
                    self.flush()?;
                    if incoming == Incoming::Data {
                        return Ok(Some(n));
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Ok(None);
                }
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Applies the timers (resume rule, failover); true when it sent `[magic][token]`. Call
    /// it every frame.
    pub fn tick(&mut self) -> io::Result<bool> {
        let before = self.core.stats().resumes;
        self.core.handle_timeout(Instant::now());
        self.flush()?;
        Ok(self.core.stats().resumes > before)
    }

    /// Moves the session to the target of a new grant (same socket).
    pub fn switch(&mut self, grant: &Grant) -> io::Result<()> {
        self.core
            .switch(Instant::now(), grant.token.as_bytes(), reopen_window(grant))
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        self.flush()
    }

    /// Sends everything the core has waiting. A refused send (an ICMP error left on the
    /// socket by an earlier datagram) is the failover's business, not an error.
    fn flush(&mut self) -> io::Result<()> {
        let now = Instant::now();
        while let Some(t) = self.core.poll_transmit(now, &mut self.out) {
            match self.socket.send_to(&self.out[..t.len], t.destination) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Measures the round-trip time to every director address again (answers arrive through
    /// [`Session::recv_timeout`] and show in [`Session::directors`]).
    pub fn ping(&mut self) -> io::Result<()> {
        self.core.ping(Instant::now());
        self.flush()
    }

    /// The token can no longer re-open the session: query again and [`Session::switch`].
    pub fn needs_query(&self) -> bool {
        self.core.needs_query(Instant::now())
    }

    /// Times the resume rule (and failovers) sent `[magic][token]`.
    pub fn resumes(&self) -> u64 {
        self.core.stats().resumes
    }

    /// Counters: resumes, failovers, challenges answered, pongs, dropped datagrams.
    pub fn stats(&self) -> core::Stats {
        self.core.stats()
    }

    /// The director address in use.
    pub fn remote(&self) -> SocketAddr {
        self.core.remote()
    }

    /// The director addresses in order of preference, with their RTTs once measured.
    pub fn directors(&self) -> Vec<(SocketAddr, Option<Duration>)> {
        self.core.directors().collect()
    }

    /// How long since the director was last heard.
    pub fn silent_for(&self) -> Duration {
        self.core.silent_for(Instant::now())
    }

    pub fn socket(&self) -> &UdpSocket {
        &self.socket
    }

    pub fn token(&self) -> &str {
        // The core only holds tokens that came from a `&str` (a grant's).
        std::str::from_utf8(self.core.token()).unwrap_or_default()
    }
}

/// A seed for PING ids from std's per-process random hasher keys.
fn random_seed() -> u64 {
    use std::hash::BuildHasher;
    std::collections::hash_map::RandomState::new().hash_one(Instant::now()) | 1
}

/// Opens a relayed TCP connection on a `protocol: TCP` data port (SPEC §3, "TCP data ports"):
/// connects to `data`, writes the grant's token line, and returns the stream, from then on
/// connected to the game server. A rejected token shows as the director closing the stream
/// without a byte (a read returning 0 or an error); a grant opens at most one live TCP
/// connection per port (a newer one replaces it).
pub fn open_tcp(data: SocketAddr, grant: &Grant, timeout: Duration) -> io::Result<TcpStream> {
    let mut stream = TcpStream::connect_timeout(&data, timeout)?;
    stream.set_nodelay(true)?;
    stream.set_write_timeout(Some(timeout))?;
    stream.write_all(format!("{}\n", grant.token).as_bytes())?;
    stream.set_write_timeout(None)?;
    Ok(stream)
}

/// How long a grant may re-open a session: the resume window (sealed) or the TTL (uuid).
fn reopen_window(grant: &Grant) -> Duration {
    Duration::from_secs(
        grant
            .resume_seconds
            .unwrap_or(grant.ttl_seconds)
            .max(grant.ttl_seconds),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_serialize_as_the_spec_request() {
        let line = Query::new("gameserver")
            .namespace("game-servers")
            .label("agones.dev/fleet", "m-tutorial")
            .annotation("status", "accepting")
            .status("status.state", &["Ready", "Allocated"])
            .player_id("p-42")
            .to_line();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "resourceType": "gameserver",
                "namespace": "game-servers",
                "labelSelector": {"agones.dev/fleet": "m-tutorial"},
                "annotationSelector": {"status": "accepting"},
                "statusQuery": {"jsonPath": "status.state", "expectedValues": ["Ready", "Allocated"]},
                "playerId": "p-42"
            })
        );
        assert_eq!(Query::new("echo").to_line(), r#"{"resourceType":"echo"}"#);
    }

    #[test]
    fn answers_and_errors_are_read() {
        let ok = parse_answer(
            r#"{"token":"t","ttlSeconds":30,"resumeSeconds":600,"target":{"namespace":"n","name":"a"}}"#,
        )
        .unwrap();
        assert_eq!((ok.ttl_seconds, ok.resume_seconds), (30, Some(600)));
        assert_eq!(reopen_window(&ok), Duration::from_secs(600));
        match parse_answer(r#"{"error":{"code":"no_match","message":"none"}}"#) {
            Err(QueryError::Refused { code, .. }) => assert_eq!(code, "no_match"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(parse_answer("nope"), Err(QueryError::Garbled(_))));
    }

    #[test]
    fn the_resume_rule_fires_after_silence_and_as_a_keepalive() {
        let r = Resume::default();
        let ms = Duration::from_millis;
        assert!(!r.due(ms(100), ms(100)), "heard recently");
        assert!(r.due(ms(500), ms(500)), "500 ms of silence");
        assert!(
            !r.due(ms(900), ms(200)),
            "sent 200 ms ago: wait for the next 500 ms"
        );
        assert!(r.due(ms(1_000), ms(500)), "still silent: again");
        assert!(!r.due(ms(10), ms(4_999)), "heard, keepalive not due");
        assert!(r.due(ms(10), ms(5_000)), "keepalive");
    }

    #[test]
    fn a_session_sends_its_token_then_resumes_when_the_director_is_silent() {
        let director = UdpSocket::bind("127.0.0.1:0").unwrap();
        director
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let grant = parse_answer(
            r#"{"token":"tok","ttlSeconds":30,"target":{"namespace":"n","name":"a"}}"#,
        )
        .unwrap();
        let resume = Resume {
            silence: Duration::from_millis(30),
            keepalive: Duration::from_secs(60),
        };
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut s = Session::open_on(
            socket,
            director.local_addr().unwrap(),
            &grant,
            DEFAULT_MAGIC,
            resume,
        )
        .unwrap();
        let mut buf = [0u8; 64];
        let (n, from) = director.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"tok");
        // A reply from the director counts as heard; a stranger's does not.
        director.send_to(b"hi", from).unwrap();
        assert_eq!(
            s.recv_timeout(&mut buf, Duration::from_secs(2)).unwrap(),
            Some(2)
        );
        let stranger = UdpSocket::bind("127.0.0.1:0").unwrap();
        stranger.send_to(b"x", from).unwrap();
        assert_eq!(
            s.recv_timeout(&mut buf, Duration::from_millis(50)).unwrap(),
            None
        );
        assert!(s.silent_for() >= Duration::from_millis(30));
        assert!(s.tick().unwrap(), "silent: resume");
        let (n, _) = director.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], [DEFAULT_MAGIC, b"tok"].concat().as_slice());
        assert!(!s.tick().unwrap(), "not again at once");
        assert_eq!(s.resumes(), 1);
        assert!(!s.needs_query());
    }
}
