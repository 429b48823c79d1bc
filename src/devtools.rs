//! Helpers for local development, the demo, the load tool and the tests: a UDP echo server
//! standing in for a game server, and a blocking query client. Not used by the director.

use std::io::{self, BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::protocol::query::TokenAnswer;

/// A UDP echo server on its own thread. Replies `prefix ++ payload` to the sender.
pub struct EchoServer {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    received: Arc<AtomicU64>,
    handle: Option<JoinHandle<()>>,
}

impl EchoServer {
    pub fn start(bind: SocketAddr, prefix: &[u8]) -> io::Result<Self> {
        let socket = UdpSocket::bind(bind)?;
        let sock = socket2::SockRef::from(&socket);
        let _ = sock.set_recv_buffer_size(4 << 20);
        let _ = sock.set_send_buffer_size(4 << 20);
        socket.set_read_timeout(Some(Duration::from_millis(50)))?;
        let addr = socket.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let received = Arc::new(AtomicU64::new(0));
        let (stop2, received2, prefix) =
            (Arc::clone(&stop), Arc::clone(&received), prefix.to_vec());
        let handle = std::thread::Builder::new()
            .name(format!("echo-{}", addr.port()))
            .spawn(move || {
                let mut buf = vec![0u8; 65_536];
                let mut out = prefix.clone();
                while !stop2.load(Ordering::Relaxed) {
                    let Ok((n, from)) = socket.recv_from(&mut buf) else {
                        continue;
                    };
                    received2.fetch_add(1, Ordering::Relaxed);
                    if prefix.is_empty() {
                        let _ = socket.send_to(&buf[..n], from);
                    } else {
                        out.truncate(prefix.len());
                        out.extend_from_slice(&buf[..n]);
                        let _ = socket.send_to(&out, from);
                    }
                }
            })?;
        Ok(Self {
            addr,
            stop,
            received,
            handle: Some(handle),
        })
    }

    /// Datagrams received so far.
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Sends one query line and reads one answer line (blocking, with a timeout).
pub fn query_raw(addr: SocketAddr, request: &str) -> io::Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(request.trim_end().as_bytes())?;
    stream.write_all(b"\n")?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    Ok(line)
}

/// Queries for a token; an error answer becomes an `io::Error` carrying its text.
pub fn query_token(addr: SocketAddr, request: &str) -> io::Result<TokenAnswer> {
    let line = query_raw(addr, request)?;
    serde_json::from_str(&line)
        .map_err(|_| io::Error::other(format!("query failed: {}", line.trim())))
}

/// Plain HTTP/1.1 GET (for the admin server): `(status, body)`.
pub fn http_get(addr: SocketAddr, path: &str) -> io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: director\r\nConnection: close\r\n\r\n"
    )?;
    let mut out = String::new();
    io::Read::read_to_string(&mut s, &mut out)?;
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}
