//! A UDP echo server on its own thread, standing in for a game server in the demo, the
//! examples, the tests and the load tool. Not used by the director.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

/// A UDP echo server on its own thread. Replies `prefix ++ payload` to the sender.
pub struct EchoServer {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    received: Arc<AtomicU64>,
    handle: Option<JoinHandle<()>>,
}

/// PROXY protocol v2 signature (the director's `proxyProtocol: v2`).
const PROXY_V2: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

/// `datagram` without a leading PROXY v2 header (as a game server reading it would see it).
pub fn strip_proxy_header(datagram: &[u8]) -> &[u8] {
    if datagram.len() >= 16 && datagram.starts_with(PROXY_V2) {
        let len = usize::from(u16::from_be_bytes([datagram[14], datagram[15]]));
        datagram.get(16 + len..).unwrap_or_default()
    } else {
        datagram
    }
}

impl EchoServer {
    pub fn start(bind: SocketAddr, prefix: &[u8]) -> io::Result<Self> {
        Self::start_with(bind, prefix, false)
    }

    /// With `strip_proxy`, a PROXY v2 header in front of a datagram is read off and not
    /// echoed (the game server's side of `proxyProtocol: v2`).
    pub fn start_with(bind: SocketAddr, prefix: &[u8], strip_proxy: bool) -> io::Result<Self> {
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
                    let payload = if strip_proxy {
                        strip_proxy_header(&buf[..n])
                    } else {
                        &buf[..n]
                    };
                    if prefix.is_empty() {
                        let _ = socket.send_to(payload, from);
                    } else {
                        out.truncate(prefix.len());
                        out.extend_from_slice(payload);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_proxy_header_is_read_off_and_anything_else_left_alone() {
        let mut d = PROXY_V2.to_vec();
        d.extend_from_slice(&[0x21, 0x12, 0, 12]);
        d.extend_from_slice(&[127, 0, 0, 1, 127, 0, 0, 1, 0, 9, 0, 10]);
        d.extend_from_slice(b"payload");
        assert_eq!(strip_proxy_header(&d), b"payload");
        assert_eq!(strip_proxy_header(b"plain"), b"plain");
        assert_eq!(
            strip_proxy_header(&d[..20]),
            b"",
            "a cut header leaves nothing"
        );
    }
}
