//! Replies to clients, gathered while a worker reads its ready sockets and sent with one
//! `sendmmsg` on the data socket: every target answer goes out of the same socket, so one
//! system call carries the answers of every session that spoke in the round. A round ends when
//! the worker has read every ready socket, when the batch is full, or before the worker sends
//! a frame of its own on the data socket (so a CHALLENGE or PONG never overtakes a reply).
//!
//! Owns the batch and its send. Must not decide where a datagram goes: the table has decided.

use std::io::{self, IoSlice};
use std::net::SocketAddr;

use mio::net::UdpSocket;
use rustix::net::{MMsgHdr, SendAncillaryBuffer, SendFlags, SocketAddrAny, sendmmsg};

use super::counters::Counts;
use super::upstream::send_error;
use crate::session::DropReason;

/// Replies sent per `sendmmsg` at most.
pub(super) const BATCH: usize = 32;
/// Bytes gathered before the batch is sent, whatever its count (large datagrams).
const MAX_BYTES: usize = 256 * 1024;

/// The replies of one round: their bytes back to back, and where each goes.
pub(super) struct Replies {
    bytes: Vec<u8>,
    /// Where each reply lies in `bytes`, and its client.
    replies: Vec<(usize, usize, SocketAddr)>,
    /// The clients of one `sendmmsg`, as the call takes them (scratch, reused).
    to: Vec<SocketAddrAny>,
    /// The address of the headers built but not sent.
    spare: SocketAddrAny,
}

impl Replies {
    pub(super) fn new() -> Self {
        Self {
            bytes: Vec::with_capacity(BATCH * 128),
            replies: Vec::with_capacity(BATCH),
            to: Vec::with_capacity(BATCH),
            spare: SocketAddrAny::from(SocketAddr::from(([0, 0, 0, 0], 0))),
        }
    }

    /// Adds a reply; sends the batch first when it is full.
    pub(super) fn push(
        &mut self,
        datagram: &[u8],
        client: SocketAddr,
        socket: &UdpSocket,
        counts: &mut Counts,
    ) {
        if self.replies.len() >= BATCH || self.bytes.len() + datagram.len() > MAX_BYTES {
            self.flush(socket, counts);
        }
        let start = self.bytes.len();
        self.bytes.extend_from_slice(datagram);
        self.replies.push((start, self.bytes.len(), client));
    }

    /// Sends every reply gathered, counting each as sent or dropped.
    pub(super) fn flush(&mut self, socket: &UdpSocket, counts: &mut Counts) {
        let mut at = 0;
        while at < self.replies.len() {
            // Every header offered is built: offer the smallest batch that holds the rest. A
            // round of one (a quiet worker, one client) is one `sendto`.
            let sent = match self.replies.len() - at {
                1 => self.send_one(socket, at),
                2..=4 => self.send::<4>(socket, at),
                5..=16 => self.send::<16>(socket, at),
                _ => self.send::<BATCH>(socket, at),
            };
            match sent {
                Ok(n) if n > 0 => {
                    let sent = self.replies.get(at..at + n).unwrap_or_default();
                    counts.datagrams_to_client += n as u64;
                    counts.bytes_to_client += sent.iter().map(|r| (r.1 - r.0) as u64).sum::<u64>();
                    at += n;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // The first reply could not be sent (a full buffer, a route gone): it is
                // dropped, the rest are tried.
                Ok(_) => {
                    counts.dropped(DropReason::SendToClient);
                    at += 1;
                }
                Err(e) => {
                    counts.dropped(send_error(&e, DropReason::SendToClient));
                    at += 1;
                }
            }
        }
        self.bytes.clear();
        self.replies.clear();
        // One burst of large datagrams must not pin its peak here.
        self.bytes.shrink_to(MAX_BYTES);
    }

    pub(super) fn is_empty(&self) -> bool {
        self.replies.is_empty()
    }

    /// The bytes of a reply.
    fn bytes_of(&self, reply: Option<&(usize, usize, SocketAddr)>) -> &[u8] {
        reply
            .and_then(|&(a, b, _)| self.bytes.get(a..b))
            .unwrap_or_default()
    }

    /// A round's only reply: one `sendto`, as a round of one needs no more.
    fn send_one(&self, socket: &UdpSocket, at: usize) -> io::Result<usize> {
        match self.replies.get(at) {
            Some(&(a, b, client)) => {
                socket.send_to(self.bytes.get(a..b).unwrap_or_default(), client)?;
                Ok(1)
            }
            None => Ok(0),
        }
    }

    /// One `sendmmsg` of up to `N` replies from reply `at`; how many the kernel took.
    fn send<const N: usize>(&mut self, socket: &UdpSocket, at: usize) -> io::Result<usize> {
        let batch = self.replies.get(at..).unwrap_or_default();
        let n = batch.len().min(N);
        self.to.clear();
        self.to
            .extend(batch.iter().take(n).map(|r| SocketAddrAny::from(r.2)));
        let iovs: [[IoSlice<'_>; 1]; N] =
            std::array::from_fn(|i| [IoSlice::new(self.bytes_of(batch.get(i)))]);
        let mut controls: [SendAncillaryBuffer<'_, '_, '_>; N] =
            std::array::from_fn(|_| SendAncillaryBuffer::default());
        // rustix borrows each part of a header for the call; those past `n` are not sent.
        let mut k = 0;
        let mut msgs = controls.each_mut().map(|control| {
            let iov: &[IoSlice<'_>] = iovs.get(k).map_or(&[], |v| v.as_slice());
            let to = self.to.get(k).unwrap_or(&self.spare);
            k += 1;
            MMsgHdr::new_with_addr(to, iov, control)
        });
        sendmmsg(
            socket,
            msgs.get_mut(..n).unwrap_or_default(),
            SendFlags::DONTWAIT,
        )
        .map_err(io::Error::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client() -> std::net::UdpSocket {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        s.set_nonblocking(true).unwrap();
        s
    }

    fn director() -> UdpSocket {
        UdpSocket::bind("127.0.0.1:0".parse().unwrap()).unwrap()
    }

    /// Every datagram waiting on `s` (the sends were local and are already queued).
    fn received(s: &std::net::UdpSocket) -> Vec<Vec<u8>> {
        let mut buf = [0u8; 70_000];
        let mut out = Vec::new();
        while let Ok(n) = s.recv(&mut buf) {
            out.push(buf[..n].to_vec());
        }
        out
    }

    #[test]
    fn replies_to_several_clients_leave_together_in_order_and_counted() {
        let (data, a, b) = (director(), client(), client());
        let mut replies = Replies::new();
        let mut counts = Counts::default();
        let sent: [(&[u8], &std::net::UdpSocket); 5] = [
            (b"a1", &a),
            (b"b1", &b),
            (b"a2-longer", &a),
            (b"", &b),
            (b"a3", &a),
        ];
        for (bytes, to) in sent {
            replies.push(bytes, to.local_addr().unwrap(), &data, &mut counts);
        }
        assert!(
            received(&a).is_empty(),
            "nothing leaves before the round ends"
        );
        replies.flush(&data, &mut counts);
        assert!(replies.is_empty());
        assert_eq!(received(&a), [&b"a1"[..], b"a2-longer", b"a3"]);
        assert_eq!(received(&b), [&b"b1"[..], b""]);
        assert_eq!(counts.datagrams_to_client, 5);
        assert_eq!(counts.bytes_to_client, 2 + 2 + 9 + 2);
    }

    #[test]
    fn a_full_batch_leaves_before_the_next_reply_is_gathered() {
        let (data, a) = (director(), client());
        let mut replies = Replies::new();
        let mut counts = Counts::default();
        for i in 0..=BATCH {
            let bytes = (i as u32).to_le_bytes();
            replies.push(&bytes, a.local_addr().unwrap(), &data, &mut counts);
        }
        assert_eq!(received(&a).len(), BATCH);
        assert_eq!(counts.datagrams_to_client, BATCH as u64);
        replies.flush(&data, &mut counts);
        assert_eq!(received(&a), [(BATCH as u32).to_le_bytes().to_vec()]);
    }

    #[test]
    fn large_replies_leave_before_the_batch_outgrows_its_bytes() {
        let (data, a) = (director(), client());
        let mut replies = Replies::new();
        let mut counts = Counts::default();
        let big = vec![7u8; 60_000];
        for _ in 0..4 {
            replies.push(&big, a.local_addr().unwrap(), &data, &mut counts);
        }
        assert_eq!((replies.replies.len(), counts.datagrams_to_client), (4, 0));
        // 4 × 60 000 bytes fit in MAX_BYTES, a fifth does not: the four leave first. (Only
        // the count is checked: a client's default buffer may not hold 240 kB.)
        replies.push(&big, a.local_addr().unwrap(), &data, &mut counts);
        assert_eq!((replies.replies.len(), replies.bytes.len()), (1, 60_000));
        assert_eq!(counts.datagrams_to_client, 4);
        replies.flush(&data, &mut counts);
        assert_eq!(counts.bytes_to_client, 5 * 60_000);
    }

    #[test]
    fn a_reply_that_cannot_be_sent_is_counted_and_the_rest_still_leave() {
        let (data, a) = (director(), client());
        let mut replies = Replies::new();
        let mut counts = Counts::default();
        let to = a.local_addr().unwrap();
        // Port 0 is refused by the kernel (EINVAL): first, in the middle and last.
        let nowhere = SocketAddr::from(([127, 0, 0, 1], 0));
        for (bytes, dest) in [
            (&b"x"[..], nowhere),
            (b"1", to),
            (b"x", nowhere),
            (b"2", to),
            (b"x", nowhere),
        ] {
            replies.push(bytes, dest, &data, &mut counts);
        }
        replies.flush(&data, &mut counts);
        assert_eq!(received(&a), [&b"1"[..], b"2"]);
        assert_eq!(counts.datagrams_to_client, 2);
        assert_eq!(counts.bytes_to_client, 2);
        assert_eq!(counts.drops_of(DropReason::SendToClient), 3);
    }
}
