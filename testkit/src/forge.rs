//! Forged UDP datagrams on loopback: an IPv4 raw socket (`IP_HDRINCL`) sends datagrams whose
//! source address and port are whatever the test says (127.x.y.z only), as an attacker on the
//! open internet can. Needs CAP_NET_RAW (root on these machines). Destinations must be
//! loopback; every call sends a bounded number of datagrams.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};

use crate::wait::Pacer;

/// A raw IPv4 socket that writes whole IP packets.
pub struct Forger {
    socket: Socket,
    packet: Vec<u8>,
    /// Made inside a network namespace of the test's own (`testkit::netns`): its packets can
    /// reach nothing but that topology, so any address in it may be named.
    namespaced: bool,
}

impl Forger {
    /// Fails (EPERM) without CAP_NET_RAW.
    pub fn new() -> io::Result<Self> {
        // IPPROTO_RAW: the caller supplies the IP header (IP_HDRINCL is implied).
        let socket = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::from(255)))?;
        let _ = socket.set_send_buffer_size(4 << 20);
        Ok(Self {
            socket,
            packet: Vec::with_capacity(1500),
            namespaced: false,
        })
    }

    /// A forger for a test's own network namespaces: create it inside one (e.g. in
    /// [`crate::netns::Topology::run_in`]), where only that topology's addresses are routed.
    pub fn namespaced() -> io::Result<Self> {
        let mut forger = Self::new()?;
        forger.namespaced = true;
        Ok(forger)
    }

    /// Sends one UDP datagram from `from` to `to` (both on 127.0.0.0/8).
    pub fn send(&mut self, from: SocketAddrV4, to: SocketAddrV4, payload: &[u8]) -> io::Result<()> {
        self.send_with_options(from, to, &[], payload)
    }

    /// Sends one UDP datagram whose IP header carries `options` (a multiple of 4 bytes, at
    /// most 40: e.g. `[1, 1, 1, 0]`, three NOPs and the end of the list).
    pub fn send_with_options(
        &mut self,
        from: SocketAddrV4,
        to: SocketAddrV4,
        options: &[u8],
        payload: &[u8],
    ) -> io::Result<()> {
        if !self.namespaced && (!from.ip().is_loopback() || !to.ip().is_loopback()) {
            return Err(io::Error::other("forged datagrams stay on 127.0.0.0/8"));
        }
        if !options.len().is_multiple_of(4) || options.len() > 40 {
            return Err(io::Error::other(
                "IP options come in words of 4 bytes, 40 at most",
            ));
        }
        let udp_len = 8 + payload.len();
        let header = 20 + options.len();
        let total = header + udp_len;
        let p = &mut self.packet;
        p.clear();
        // IPv4 header: version 4, IHL in words; the kernel fills the checksum (and, for IHL 5,
        // the total length).
        p.extend_from_slice(&[
            0x40 | (header / 4) as u8,
            0,
            (total >> 8) as u8,
            total as u8,
            0,
            0,
            0x40,
            0,
            64,
            17,
            0,
            0,
        ]);
        p.extend_from_slice(&from.ip().octets());
        p.extend_from_slice(&to.ip().octets());
        p.extend_from_slice(options);
        // UDP header, checksum 0 (none, allowed over IPv4).
        p.extend_from_slice(&from.port().to_be_bytes());
        p.extend_from_slice(&to.port().to_be_bytes());
        p.extend_from_slice(&(udp_len as u16).to_be_bytes());
        p.extend_from_slice(&[0, 0]);
        p.extend_from_slice(payload);
        let dest = SocketAddr::V4(SocketAddrV4::new(*to.ip(), 0));
        loop {
            match self.socket.send_to(p, &dest.into()) {
                Ok(_) => return Ok(()),
                // The send buffer is full: the flood outruns the loopback device; wait a bit.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) if e.raw_os_error() == Some(105) => std::thread::yield_now(), // ENOBUFS
                Err(e) => return Err(e),
            }
        }
    }

    /// Sends `n` datagrams to `to`, the `i`-th from `source(i)` with `payload(i)`, paced to
    /// `per_second`. Returns how many were sent.
    pub fn flood(
        &mut self,
        to: SocketAddrV4,
        n: usize,
        per_second: u64,
        mut source: impl FnMut(usize) -> SocketAddrV4,
        mut payload: impl FnMut(usize) -> Vec<u8>,
    ) -> io::Result<usize> {
        // Paced in slices of 1 ms worth of datagrams.
        let per_ms = (per_second / 1_000).max(1) as usize;
        let mut pacer = Pacer::new(Duration::from_millis(1));
        let mut sent = 0;
        while sent < n {
            for _ in 0..per_ms.min(n - sent) {
                self.send(source(sent), to, &payload(sent))?;
                sent += 1;
            }
            pacer.tick();
        }
        Ok(sent)
    }
}

/// The `i`-th of up to 16 million distinct forged sources 127.a.b.c (never 127.0.0.x, where
/// the tests' real clients and servers live), with a port that varies too.
pub fn forged_source(i: usize) -> SocketAddrV4 {
    let n = (i % 16_000_000) as u32 + 256;
    let ip = Ipv4Addr::new(127, (n >> 16) as u8, (n >> 8) as u8, n as u8);
    SocketAddrV4::new(ip, 1_024 + (i % 60_000) as u16)
}
