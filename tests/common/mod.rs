//! Helpers shared by the end-to-end tests: start the real listeners on 127.0.0.1 with
//! OS-assigned ports, fake game servers we fully control, and deadline-bounded polling.
#![allow(dead_code)]

pub mod fake_kube;
pub mod helm_lite;

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use udp_director::app::{self, Running};
use udp_director::config::Config;

pub const MAGIC: &[u8] = b"\xff\xff\xff\xffRESET";

/// A fake game server: a plain UDP socket the test reads and writes itself.
pub struct Backend {
    pub socket: UdpSocket,
    pub addr: SocketAddr,
}

impl Backend {
    pub fn new() -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(1500)))
            .unwrap();
        let addr = socket.local_addr().unwrap();
        Self { socket, addr }
    }

    /// Next datagram and its source, or None after the read timeout.
    pub fn recv(&self) -> Option<(Vec<u8>, SocketAddr)> {
        let mut buf = vec![0u8; 65_536];
        match self.socket.recv_from(&mut buf) {
            Ok((n, from)) => Some((buf[..n].to_vec(), from)),
            Err(_) => None,
        }
    }

    /// Asserts nothing arrives within `wait`.
    pub fn expect_silence(&self, wait: Duration) {
        expect_silence(&self.socket, wait);
    }
}

/// A game client: one UDP socket talking to the director's data port.
pub struct Client {
    pub socket: UdpSocket,
    pub data: SocketAddr,
}

impl Client {
    pub fn new(data: SocketAddr) -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(1500)))
            .unwrap();
        Self { socket, data }
    }

    pub fn send(&self, payload: &[u8]) {
        self.socket.send_to(payload, self.data).unwrap();
    }

    pub fn recv(&self) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; 65_536];
        match self.socket.recv_from(&mut buf) {
            Ok((n, from)) => {
                assert_eq!(from, self.data, "replies come from the data port");
                Some(buf[..n].to_vec())
            }
            Err(_) => None,
        }
    }

    /// Asserts nothing arrives within `wait`.
    pub fn expect_silence(&self, wait: Duration) {
        expect_silence(&self.socket, wait);
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.socket.local_addr().unwrap()
    }
}

/// Asserts `socket` receives nothing within `wait` (then restores the usual read timeout).
fn expect_silence(socket: &UdpSocket, wait: Duration) {
    socket.set_read_timeout(Some(wait)).unwrap();
    let mut buf = vec![0u8; 65_536];
    let got = socket
        .recv_from(&mut buf)
        .ok()
        .map(|(n, from)| (buf[..n].to_vec(), from));
    socket
        .set_read_timeout(Some(Duration::from_millis(1500)))
        .unwrap();
    assert!(got.is_none(), "expected silence, got {got:?}");
}

/// A static mapping `echo` over the given backends, named b0, b1, ... with label `zone: zN`.
pub fn config_for(backends: &[&Backend], extra: &str) -> Config {
    let mut yaml =
        String::from("bindAddress: 127.0.0.1\nqueryPort: 0\ndataPort: 0\nadminPort: 0\n");
    if !extra.contains("dataWorkers") {
        yaml.push_str("dataWorkers: 2\n");
    }
    yaml.push_str(extra);
    yaml.push_str("\nresourceQueryMapping:\n  echo:\n    static:\n");
    for (i, b) in backends.iter().enumerate() {
        yaml.push_str(&format!(
            "      - {{name: b{i}, address: 127.0.0.1, port: {}, labels: {{zone: z{i}}}, status: {{state: Ready}}}}\n",
            b.addr.port()
        ));
    }
    Config::from_yaml(&yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"))
}

pub async fn start(config: Config) -> Running {
    app::start(config).await.expect("director starts")
}

/// One query on a fresh connection; returns the answer as JSON.
pub fn query(addr: SocketAddr, request: &str) -> serde_json::Value {
    let line = udp_director::devtools::query_raw(addr, request).unwrap();
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"))
}

pub fn token_for(addr: SocketAddr, request: &str) -> String {
    let answer = query(addr, request);
    answer["token"]
        .as_str()
        .unwrap_or_else(|| panic!("no token in {answer}"))
        .to_string()
}

/// Connects `client` with `token` and proves the session with one round trip through
/// `backend`. Returns the source address the backend sees for this session.
pub fn establish(client: &Client, token: &str, backend: &Backend) -> SocketAddr {
    client.send(token.as_bytes());
    client.send(b"hello");
    let (got, from) = backend
        .recv()
        .expect("backend receives the first data datagram");
    assert_eq!(got, b"hello", "the token datagram itself is not forwarded");
    backend.socket.send_to(b"welcome", from).unwrap();
    assert_eq!(client.recv().as_deref(), Some(&b"welcome"[..]));
    from
}

/// Plain HTTP GET against the admin server: (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    udp_director::devtools::http_get(addr, path).unwrap()
}

/// The value of a metric line (exact series name with labels) from `/metrics`.
pub fn metric(admin: SocketAddr, series: &str) -> f64 {
    let (_, body) = http_get(admin, "/metrics");
    body.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.trim().parse().ok())
        })
        .unwrap_or(0.0)
}

/// Polls `cond` every 20 ms until it holds or `within` passes.
pub fn eventually(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if cond() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::park_timeout(Duration::from_millis(20));
    }
}
