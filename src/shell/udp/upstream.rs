//! A worker's upstream sockets: one per socket slot the session table binds, opened and
//! closed as its decisions say, within the process's file-descriptor budget.
//!
//! Owns the sockets, their registration with the worker's poll (the slot ↔ mio token
//! encoding), the ICMP error queue (`IP_RECVERR`) and the send that retries past another
//! target's ICMP report. Must not decide which session a socket serves: that is the table's.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use mio::net::UdpSocket;
use mio::{Interest, Registry, Token};
use socket2::{Domain, Protocol, Socket, Type};

use super::set_buffers;
use crate::session::{DropReason, SocketId, floor};
use crate::util::bounded::Bounded;

/// Tokens below this are the worker's own (data socket, waker).
const FIRST_UPSTREAM: usize = 2;

/// The mio token of an upstream socket slot: family in the low bit, index above it.
pub(super) fn token_of(id: SocketId) -> Token {
    Token(FIRST_UPSTREAM + ((id.index as usize) << 1 | usize::from(id.v6)))
}

/// The slot of an upstream token (`None` for the worker's own tokens).
pub(super) fn slot_of(token: Token) -> Option<SocketId> {
    let raw = token.0.checked_sub(FIRST_UPSTREAM)?;
    Some(SocketId {
        v6: raw & 1 == 1,
        index: u32::try_from(raw >> 1).ok()?,
    })
}

/// What a send to a target came to.
pub(super) struct Sent {
    /// ICMP reports read off the socket's error queue on the way (each an `upstream_error`).
    pub(super) reports: usize,
    /// Delivered to the kernel, or why not.
    pub(super) result: Result<(), DropReason>,
}

/// The worker's upstream sockets, per address family, indexed by slot.
pub(super) struct Upstreams {
    pools: [Vec<Option<UdpSocket>>; 2],
    open: i64,
    buffer_bytes: usize,
}

impl Upstreams {
    pub(super) fn new(buffer_bytes: usize) -> Self {
        Self {
            pools: [
                Vec::with_capacity(floor::<Option<UdpSocket>>()),
                Vec::with_capacity(floor::<Option<UdpSocket>>()),
            ],
            open: 0,
            buffer_bytes,
        }
    }

    /// Open sockets of this worker.
    pub(super) fn open_count(&self) -> i64 {
        self.open
    }

    pub(super) fn get(&self, id: SocketId) -> Option<&UdpSocket> {
        self.pools[usize::from(id.v6)]
            .get(id.index as usize)
            .and_then(Option::as_ref)
    }

    /// Opens the socket of slot `id` if the descriptor budget has room.
    pub(super) fn open(
        &mut self,
        id: SocketId,
        registry: &Registry,
        budget: &Bounded,
    ) -> io::Result<()> {
        if !budget.try_take() {
            return Err(io::Error::other(
                "upstream socket budget spent (file descriptor limit)",
            ));
        }
        let opened = self.open_within_budget(id, registry, budget);
        if opened.is_err() {
            budget.give_back();
        }
        opened
    }

    fn open_within_budget(
        &mut self,
        id: SocketId,
        registry: &Registry,
        budget: &Bounded,
    ) -> io::Result<()> {
        let (domain, any) = if id.v6 {
            (Domain::IPV6, SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)))
        } else {
            (Domain::IPV4, SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)))
        };
        let socket = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
        if id.v6 {
            socket.set_only_v6(true)?;
        }
        // Without IP_RECVERR an unconnected socket never hears of ICMP errors; with it the
        // next receive reports one and the error queue holds the details.
        let _ = if id.v6 {
            nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::Ipv6RecvErr, &true)
        } else {
            nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::Ipv4RecvErr, &true)
        };
        set_buffers(&socket, self.buffer_bytes);
        socket.set_nonblocking(true)?;
        socket.bind(&any.into())?;
        let mut socket = UdpSocket::from_std(socket.into());
        registry.register(&mut socket, token_of(id), Interest::READABLE)?;
        let pool = &mut self.pools[usize::from(id.v6)];
        let index = id.index as usize;
        if pool.len() <= index {
            pool.resize_with(index + 1, || None);
        }
        if let Some(mut old) = pool[index].replace(socket) {
            let _ = registry.deregister(&mut old);
            budget.give_back();
        } else {
            self.open += 1;
        }
        Ok(())
    }

    /// Closes the socket of slot `id` (nothing if it is not open) and gives its descriptor
    /// back to the budget.
    pub(super) fn close(&mut self, id: SocketId, registry: &Registry, budget: &Bounded) {
        let pool = &mut self.pools[usize::from(id.v6)];
        if let Some(mut socket) = pool.get_mut(id.index as usize).and_then(Option::take) {
            let _ = registry.deregister(&mut socket);
            self.open -= 1;
            budget.give_back();
        }
        while pool.last().is_some_and(Option::is_none) {
            pool.pop();
        }
        let least = floor::<Option<UdpSocket>>();
        if pool.capacity() > least && pool.len() < pool.capacity() / 4 {
            pool.shrink_to((pool.len() * 2).max(least));
        }
    }

    /// Sends `datagram` to `to` from slot `id`.
    ///
    /// A send can fail with an ICMP error some *other* target on this shared socket caused
    /// (the kernel reports it once, on whichever call comes next). Such a report is read off
    /// the error queue and the send is tried again, so no bystander loses a datagram.
    pub(super) fn send(&self, id: SocketId, datagram: &[u8], to: SocketAddr) -> Sent {
        let Some(socket) = self.get(id) else {
            return Sent {
                reports: 0,
                result: Err(DropReason::SendToTarget),
            };
        };
        let mut reports = 0;
        let mut sent = socket.send_to(datagram, to);
        if let Err(e) = &sent
            && is_icmp_report(e)
        {
            reports = self.read_error_queue(id).max(1);
            sent = socket.send_to(datagram, to);
        }
        Sent {
            reports,
            result: sent
                .map(|_| ())
                .map_err(|e| send_error(&e, DropReason::SendToTarget)),
        }
    }

    /// Reads the ICMP error reports queued on slot `id`; how many there were.
    pub(super) fn read_error_queue(&self, id: SocketId) -> usize {
        let Some(socket) = self.get(id) else {
            return 0;
        };
        let sock = socket2::SockRef::from(socket);
        let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 64];
        let flags = nix::sys::socket::MsgFlags::MSG_ERRQUEUE.bits();
        // Bounded: the queue holds at most a receive buffer's worth of reports.
        (0..1024)
            .take_while(|_| sock.recv_with_flags(&mut buf, flags).is_ok())
            .count()
    }
}

/// Errors the kernel raises from a queued ICMP report (IP_RECVERR), not from this call.
fn is_icmp_report(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::HostUnreachable
            | io::ErrorKind::NetworkUnreachable
    )
}

/// `EMSGSIZE` is its own reason; anything else is the caller's.
pub(super) fn send_error(e: &io::Error, otherwise: DropReason) -> DropReason {
    if e.raw_os_error() == Some(nix::errno::Errno::EMSGSIZE as i32) {
        DropReason::Oversize
    } else {
        otherwise
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_tokens_round_trip_and_skip_the_workers_own() {
        for v6 in [false, true] {
            for index in [0u32, 1, 2, 1_000, 70_000] {
                let id = SocketId { v6, index };
                assert!(token_of(id).0 >= FIRST_UPSTREAM);
                assert_eq!(slot_of(token_of(id)), Some(id));
            }
        }
        assert_eq!(slot_of(Token(0)), None);
        assert_eq!(slot_of(Token(1)), None);
    }
}
