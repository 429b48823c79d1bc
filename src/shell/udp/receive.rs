//! Batched receive (`recvmmsg`) into a worker's receive ring, with a message header prepared
//! for each slot offered and no more: most calls bring one datagram (a quiet client, an
//! upstream socket's one answer), and a call that prepared all 32 headers would spend more on
//! them than on the datagram.
//!
//! Owns the headers, which live on the worker's thread (they hold raw pointers into the ring
//! while a call runs). Must not read what a datagram says.

use std::io::{self, IoSliceMut};
use std::net::{SocketAddr, SocketAddrV4};
use std::os::fd::AsRawFd;

use mio::net::UdpSocket;
use nix::sys::socket::{MsgFlags, MultiHeaders, SockaddrStorage, recvmmsg};

/// Slots a receive offers at most (one datagram per slot).
pub(super) const BATCH: usize = 32;
/// One receive slot: the largest UDP payload (65 507 bytes over IPv4) fits.
pub(super) const SLOT: usize = 65_536;

/// Which socket a receive is for. The kernel writes the length of the sender's address back
/// into a header, and the next call on that header offers only that much room: a socket's
/// family never changes, so each kind keeps headers of its own.
#[derive(Debug, Clone, Copy)]
pub(super) enum Kind {
    Data = 0,
    UpstreamV4 = 1,
    UpstreamV6 = 2,
}

/// What one received datagram was. `from` is `None` only if the kernel named no sender
/// (it always does for a UDP socket): such a datagram cannot be answered or attributed.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Received {
    pub(super) from: Option<SocketAddr>,
    pub(super) len: usize,
}

/// A worker's receive headers: not `Send`, so made on the worker's own thread.
pub(super) struct Receiver {
    headers: [MultiHeaders<SockaddrStorage>; 3],
}

impl Receiver {
    pub(super) fn new() -> Self {
        Self {
            headers: std::array::from_fn(|_| MultiHeaders::preallocate(BATCH, None)),
        }
    }

    /// One `recvmmsg` from `socket` into the first `N` slots of `rx`; what arrived goes in
    /// `got`. `Ok(0)` never happens: an empty socket is `WouldBlock`.
    pub(super) fn recv<const N: usize>(
        &mut self,
        kind: Kind,
        socket: &UdpSocket,
        rx: &mut [u8],
        got: &mut [Received],
    ) -> io::Result<usize> {
        let mut slots = rx.chunks_mut(SLOT);
        let mut iovs: [[IoSliceMut<'_>; 1]; N] =
            std::array::from_fn(|_| [IoSliceMut::new(slots.next().unwrap_or_default())]);
        let Some(headers) = self.headers.get_mut(kind as usize) else {
            return Err(io::ErrorKind::InvalidInput.into());
        };
        let messages = recvmmsg(
            socket.as_raw_fd(),
            headers,
            iovs.iter_mut(),
            MsgFlags::MSG_DONTWAIT,
            None,
        )
        .map_err(io::Error::from)?;
        let mut n = 0;
        for (message, slot) in messages.zip(got.iter_mut()) {
            *slot = Received {
                from: message.address.and_then(|a| std_addr(&a)),
                len: message.bytes,
            };
            n += 1;
        }
        Ok(n)
    }
}

/// The sender's address as std has it (an IPv4 sender on a dual-stack socket stays mapped).
fn std_addr(a: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = a.as_sockaddr_in() {
        return Some(SocketAddr::V4(SocketAddrV4::from(*v4)));
    }
    a.as_sockaddr_in6()
        .map(|v6| SocketAddr::V6(std::net::SocketAddrV6::from(*v6)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(v6: bool) -> (std::net::UdpSocket, UdpSocket) {
        let ip = if v6 { "[::1]:0" } else { "127.0.0.1:0" };
        let sender = std::net::UdpSocket::bind(ip).unwrap();
        let receiver = UdpSocket::bind(ip.parse().unwrap()).unwrap();
        (sender, receiver)
    }

    #[test]
    fn a_batch_brings_each_datagram_with_its_sender_and_length() {
        let (a, r) = pair(false);
        let b = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = r.local_addr().unwrap();
        a.send_to(b"first", to).unwrap();
        b.send_to(b"second!", to).unwrap();
        a.send_to(b"", to).unwrap();
        let mut rx = vec![0u8; BATCH * SLOT];
        let mut got = [Received::default(); BATCH];
        let mut receiver = Receiver::new();
        let n = receiver
            .recv::<4>(Kind::Data, &r, &mut rx, &mut got)
            .unwrap();
        assert_eq!(n, 3, "a short batch: the socket is drained");
        let sent = [
            (a.local_addr().unwrap(), &b"first"[..]),
            (b.local_addr().unwrap(), b"second!"),
            (a.local_addr().unwrap(), b""),
        ];
        for (i, (from, bytes)) in sent.into_iter().enumerate() {
            assert_eq!(got[i].from, Some(from));
            assert_eq!(&rx[i * SLOT..i * SLOT + got[i].len], bytes);
        }
        let empty = receiver.recv::<4>(Kind::Data, &r, &mut rx, &mut got);
        assert_eq!(empty.unwrap_err().kind(), io::ErrorKind::WouldBlock);
    }

    #[test]
    fn each_kind_keeps_room_for_its_own_addresses() {
        // An IPv4 receive leaves a 16-byte address length in its headers; IPv6 senders,
        // received next on their own kind, still arrive whole.
        let mut receiver = Receiver::new();
        let mut rx = vec![0u8; BATCH * SLOT];
        let mut got = [Received::default(); BATCH];
        let (a4, r4) = pair(false);
        a4.send_to(b"v4", r4.local_addr().unwrap()).unwrap();
        let n = receiver
            .recv::<4>(Kind::UpstreamV4, &r4, &mut rx, &mut got)
            .unwrap();
        assert_eq!((n, got[0].from), (1, a4.local_addr().ok()));
        let (a6, r6) = pair(true);
        a6.send_to(b"v6", r6.local_addr().unwrap()).unwrap();
        let n = receiver
            .recv::<4>(Kind::UpstreamV6, &r6, &mut rx, &mut got)
            .unwrap();
        assert_eq!((n, got[0].from), (1, a6.local_addr().ok()));
        assert_eq!(&rx[..got[0].len], b"v6");
    }

    #[test]
    fn a_full_batch_fills_every_slot_offered() {
        let (a, r) = pair(false);
        for i in 0..6u8 {
            a.send_to(&[i; 3], r.local_addr().unwrap()).unwrap();
        }
        let mut receiver = Receiver::new();
        let mut rx = vec![0u8; BATCH * SLOT];
        let mut got = [Received::default(); BATCH];
        let first = receiver.recv::<4>(Kind::Data, &r, &mut rx, &mut got);
        assert_eq!(first.unwrap(), 4);
        assert_eq!(&rx[3 * SLOT..3 * SLOT + 3], &[3; 3]);
        let rest = receiver.recv::<BATCH>(Kind::Data, &r, &mut rx, &mut got);
        assert_eq!(rest.unwrap(), 2);
        assert_eq!(&rx[SLOT..SLOT + 3], &[5; 3]);
    }
}
