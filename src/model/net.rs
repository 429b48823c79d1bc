//! A client's network: what every per-IP limit and the token client binding compare.
//!
//! Owns the notion. Must not import anything of the crate.

use std::net::IpAddr;

/// The address a client binding and the per-IP limits compare: an IPv4 address, or the /64
/// of an IPv6 one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClientNet {
    V4([u8; 4]),
    V6Prefix([u8; 8]),
}

impl ClientNet {
    pub fn of(ip: IpAddr) -> Self {
        match ip.to_canonical() {
            IpAddr::V4(v4) => ClientNet::V4(v4.octets()),
            IpAddr::V6(v6) => {
                let mut prefix = [0; 8];
                prefix.copy_from_slice(&v6.octets()[..8]);
                ClientNet::V6Prefix(prefix)
            }
        }
    }
}
