//! PROXY protocol v2 headers towards game servers (SPEC §4, `proxyProtocol: v2`): the
//! binary header HAProxy specifies, command PROXY over `DGRAM` (UDP) or `STREAM` (TCP data
//! ports), source = the client's address, destination = the director's data address, and
//! the query's `playerId` in a `PP2_TYPE_UNIQUE_ID` TLV. A header is written in front of
//! every datagram to such a mapping's targets (replies carry none), and once at the start of
//! every TCP connection to them. Tested against the independent `ppp` parser.
//!
//! Owns the header layout. Must not decide which datagrams get one.

use std::net::{IpAddr, SocketAddr};

/// The 12-byte signature every v2 header starts with.
pub const SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// Version 2, command PROXY.
const VERSION_PROXY: u8 = 0x21;
/// Address family (high nibble: 1 = AF_INET, 2 = AF_INET6) | transport (low nibble:
/// 1 = SOCK_STREAM, 2 = SOCK_DGRAM).
const AF_INET: u8 = 0x10;
const AF_INET6: u8 = 0x20;
/// `PP2_TYPE_UNIQUE_ID`: an opaque id of at most 128 bytes.
pub const TLV_UNIQUE_ID: u8 = 0x05;
const UNIQUE_ID_MAX: usize = 128;
/// Longest header: IPv6 addresses and a full unique id.
pub const MAX_HEADER: usize = 16 + 36 + 3 + UNIQUE_ID_MAX;

/// What the header's transport nibble says the proxied connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// `SOCK_STREAM`: a TCP data port's connection.
    Stream = 0x1,
    /// `SOCK_DGRAM`: a UDP datagram.
    Datagram = 0x2,
}

/// Appends the header for a datagram from `client` received on `local` to `out`. Both are
/// IPv4 (as such or v4-mapped) → an IPv4 header; otherwise IPv6, with IPv4 ones mapped.
/// A `player` longer than the TLV allows is cut (the query limits it far below that).
pub fn write_header(
    out: &mut Vec<u8>,
    client: SocketAddr,
    local: SocketAddr,
    player: Option<&str>,
) {
    write_header_for(out, Transport::Datagram, client, local, player);
}

/// [`write_header`] for either transport: a TCP connection's header says `Stream`.
pub fn write_header_for(
    out: &mut Vec<u8>,
    transport: Transport,
    client: SocketAddr,
    local: SocketAddr,
    player: Option<&str>,
) {
    let (src, dst) = (client.ip().to_canonical(), local.ip().to_canonical());
    let player = player.map(|p| &p.as_bytes()[..p.len().min(UNIQUE_ID_MAX)]);
    let tlv = player.map_or(0, |p| 3 + p.len());
    out.extend_from_slice(&SIGNATURE);
    out.push(VERSION_PROXY);
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            out.push(AF_INET | transport as u8);
            out.extend_from_slice(&((12 + tlv) as u16).to_be_bytes());
            out.extend_from_slice(&s.octets());
            out.extend_from_slice(&d.octets());
        }
        _ => {
            let v6 = |ip: IpAddr| match ip {
                IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                IpAddr::V6(v6) => v6,
            };
            out.push(AF_INET6 | transport as u8);
            out.extend_from_slice(&((36 + tlv) as u16).to_be_bytes());
            out.extend_from_slice(&v6(src).octets());
            out.extend_from_slice(&v6(dst).octets());
        }
    }
    out.extend_from_slice(&client.port().to_be_bytes());
    out.extend_from_slice(&local.port().to_be_bytes());
    if let Some(p) = player {
        out.push(TLV_UNIQUE_ID);
        out.extend_from_slice(&(p.len() as u16).to_be_bytes());
        out.extend_from_slice(p);
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv6Addr;

    use ppp::v2;

    use super::*;

    fn parse(bytes: &[u8]) -> (v2::Addresses, Vec<(u8, Vec<u8>)>, usize) {
        parse_as(bytes, v2::Protocol::Datagram)
    }

    fn parse_as(
        bytes: &[u8],
        protocol: v2::Protocol,
    ) -> (v2::Addresses, Vec<(u8, Vec<u8>)>, usize) {
        let header = v2::Header::try_from(bytes).expect("ppp parses it");
        assert_eq!(header.command, v2::Command::Proxy);
        assert_eq!(header.protocol, protocol);
        let tlvs = header
            .tlvs()
            .map(|t| {
                let t = t.expect("a valid TLV");
                (t.kind, t.value.to_vec())
            })
            .collect();
        (header.addresses, tlvs, header.len())
    }

    #[test]
    fn ipv4_header_with_a_player_id() {
        let mut out = Vec::new();
        let client: SocketAddr = "203.0.113.9:51234".parse().unwrap();
        let local: SocketAddr = "10.0.0.5:7777".parse().unwrap();
        write_header(&mut out, client, local, Some("p-42"));
        out.extend_from_slice(b"game");
        let (addresses, tlvs, len) = parse(&out);
        assert_eq!(
            addresses,
            v2::Addresses::IPv4(v2::IPv4::new([203, 0, 113, 9], [10, 0, 0, 5], 51234, 7777))
        );
        assert_eq!(tlvs, [(TLV_UNIQUE_ID, b"p-42".to_vec())]);
        assert_eq!(
            &out[len..],
            b"game",
            "the payload follows the header intact"
        );
    }

    #[test]
    fn ipv6_and_mixed_families() {
        let mut out = Vec::new();
        let client: SocketAddr = "[2001:db8::9]:4000".parse().unwrap();
        let local: SocketAddr = "[::]:7777".parse().unwrap();
        write_header(&mut out, client, local, None);
        let (addresses, tlvs, len) = parse(&out);
        let v2::Addresses::IPv6(v6) = addresses else {
            panic!("IPv6: {addresses:?}");
        };
        assert_eq!(
            v6.source_address,
            "2001:db8::9".parse::<Ipv6Addr>().unwrap()
        );
        assert_eq!((v6.source_port, v6.destination_port), (4000, 7777));
        assert!(tlvs.is_empty());
        assert_eq!(len, out.len());
        // A v4-mapped client on a dual-stack socket is an IPv4 client.
        let mut out = Vec::new();
        let mapped: SocketAddr = "[::ffff:198.51.100.7]:9".parse().unwrap();
        write_header(
            &mut out,
            mapped,
            "[::ffff:10.0.0.5]:7777".parse().unwrap(),
            None,
        );
        let (addresses, _, _) = parse(&out);
        assert!(
            matches!(addresses, v2::Addresses::IPv4(a) if a.source_address == std::net::Ipv4Addr::new(198, 51, 100, 7))
        );
        // An IPv4 client on an IPv6 wildcard socket: both mapped into an IPv6 header.
        let mut out = Vec::new();
        write_header(&mut out, "198.51.100.7:9".parse().unwrap(), local, None);
        let (addresses, _, _) = parse(&out);
        assert!(matches!(addresses, v2::Addresses::IPv6(a)
            if a.source_address == "198.51.100.7".parse::<std::net::Ipv4Addr>().unwrap().to_ipv6_mapped()));
        assert!(out.len() <= MAX_HEADER);
    }

    #[test]
    fn stream_headers_for_tcp_connections() {
        let mut out = Vec::new();
        let client: SocketAddr = "203.0.113.9:51234".parse().unwrap();
        let local: SocketAddr = "10.0.0.5:7778".parse().unwrap();
        write_header_for(&mut out, Transport::Stream, client, local, Some("p-7"));
        // Signature, version/command, TCP over IPv4, 12 address bytes + a 6-byte TLV.
        assert_eq!(&out[..16], b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x12");
        out.extend_from_slice(b"game");
        let (addresses, tlvs, len) = parse_as(&out, v2::Protocol::Stream);
        assert_eq!(
            addresses,
            v2::Addresses::IPv4(v2::IPv4::new([203, 0, 113, 9], [10, 0, 0, 5], 51234, 7778))
        );
        assert_eq!(tlvs, [(TLV_UNIQUE_ID, b"p-7".to_vec())]);
        assert_eq!(&out[len..], b"game");
        let mut out = Vec::new();
        let v6: SocketAddr = "[2001:db8::9]:4000".parse().unwrap();
        write_header_for(
            &mut out,
            Transport::Stream,
            v6,
            "[::1]:7778".parse().unwrap(),
            None,
        );
        let (addresses, tlvs, len) = parse_as(&out, v2::Protocol::Stream);
        assert!(matches!(addresses, v2::Addresses::IPv6(a) if a.source_port == 4000));
        assert!(tlvs.is_empty());
        assert_eq!((len, out[13]), (out.len(), 0x21), "TCP over IPv6");
    }
}
