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
