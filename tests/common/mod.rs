//! Helpers shared by the end-to-end tests that are about this crate's in-process listeners:
//! start them on 127.0.0.1 with OS-assigned ports, and fake game servers and clients we
//! fully control. The generic harness (child director, metrics scrape, config builders,
//! deadline waits) is the `testkit` crate.
#![allow(dead_code)]

pub mod fake_kube;

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

#[allow(unused_imports)]
pub use testkit::eventually;
use testkit::yaml;
use udp_director::app::{self, Running};
use udp_director::config::ValidConfig;

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

    /// Answers the CHALLENGE the director sent for `token` (proof of address, SPEC §3):
    /// `[magic] 0x02 [nonce] [token]` back to the data port.
    pub fn prove(&self, token: &str) {
        let frame = self.recv().expect("a challenge");
        let nonce = testkit::client::challenge_nonce(&frame)
            .unwrap_or_else(|| panic!("a challenge: {frame:?}"));
        self.send(&testkit::client::response(&nonce, token.as_bytes()));
    }

    /// Sends a token datagram (bare or `[magic][token]`) and, when the director challenges
    /// this address for it within 300 ms (the token holds a session elsewhere, or this is
    /// another IP than its bound one), answers the challenge.
    pub fn redeem(&self, datagram: &[u8]) {
        self.send(datagram);
        let token = datagram.strip_prefix(MAGIC).unwrap_or(datagram);
        self.socket
            .set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let mut buf = [0u8; 256];
        if let Ok(n) = self.socket.recv(&mut buf)
            && let Some(nonce) = testkit::client::challenge_nonce(&buf[..n])
        {
            self.send(&testkit::client::response(&nonce, token));
        }
        self.socket
            .set_read_timeout(Some(Duration::from_millis(1500)))
            .unwrap();
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

/// A loopback config (`testkit::yaml::director`) with the mapping `echo` over the given
/// backends, named b0, b1, ... with label `zone: zN`.
pub fn config_for(backends: &[&Backend], extra: &str) -> ValidConfig {
    let addrs: Vec<SocketAddr> = backends.iter().map(|b| b.addr).collect();
    let text = yaml::director(extra, &[yaml::echo_mapping(&addrs)]);
    ValidConfig::from_yaml(&text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

pub async fn start(config: ValidConfig) -> Running {
    app::start(config).await.expect("director starts")
}

/// One query on a fresh connection; returns the answer as JSON.
pub fn query(addr: SocketAddr, request: &str) -> serde_json::Value {
    let line = testkit::query_raw(addr, request).unwrap();
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
    testkit::http_get(addr, path).unwrap()
}

/// The value of a metric series (exact name with labels) from `/metrics`.
pub fn metric(admin: SocketAddr, series: &str) -> f64 {
    testkit::Scrape::fetch(admin).unwrap().value(series)
}
