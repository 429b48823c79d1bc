//! A client's network: what the token client binding compares, and what every per-IP limit
//! counts (query rate, query connections, sessions, TCP lines in progress) — one notion,
//! grouped by [`Grouping`].
//!
//! Owns the notion. Must not import anything of the crate.

use std::net::IpAddr;

/// A client's network: an IPv4 address, or an IPv6 prefix (the bits past the prefix length
/// are zero).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClientNet {
    V4([u8; 4]),
    V6Prefix([u8; 8]),
}

impl ClientNet {
    /// The network a token's client binding compares: an IPv4 address or an IPv6 /64.
    pub fn of(ip: IpAddr) -> Self {
        Grouping::DEFAULT.net(ip)
    }
}

/// How the per-IP limits group IPv6 clients: by their first `limits.ipv6PrefixLength` bits
/// (an IPv4 client is always its own address). A /48 customer holds 65 536 /64s: grouping by
/// /48 keeps it to one share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grouping {
    v6_prefix: u8,
}

impl Grouping {
    /// IPv6 by /64 (SPEC's default).
    pub const DEFAULT: Grouping = Grouping { v6_prefix: 64 };
    /// Shortest prefix accepted (one share for a whole /32 is already an operator's choice).
    pub const MIN_PREFIX: u8 = 32;
    /// Longest prefix accepted: a /64 is the smallest network a client is given.
    pub const MAX_PREFIX: u8 = 64;

    /// Grouping by `v6_prefix` bits; `None` outside `MIN_PREFIX..=MAX_PREFIX`.
    pub fn new(v6_prefix: u8) -> Option<Self> {
        (Self::MIN_PREFIX..=Self::MAX_PREFIX)
            .contains(&v6_prefix)
            .then_some(Self { v6_prefix })
    }

    pub fn v6_prefix(self) -> u8 {
        self.v6_prefix
    }

    /// The network `ip` is counted under.
    pub fn net(self, ip: IpAddr) -> ClientNet {
        match ip.to_canonical() {
            IpAddr::V4(v4) => ClientNet::V4(v4.octets()),
            IpAddr::V6(v6) => {
                let high = u64::from_be_bytes(v6.octets()[..8].try_into().unwrap_or([0; 8]));
                let mask = u64::MAX << (64 - u32::from(self.v6_prefix.min(64)));
                ClientNet::V6Prefix((high & mask).to_be_bytes())
            }
        }
    }
}

impl Default for Grouping {
    fn default() -> Self {
        Self::DEFAULT
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_clients_group_by_the_prefix_ipv4_by_address() {
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        let by64 = Grouping::DEFAULT;
        assert_ne!(by64.net(a), by64.net(b));
        assert_eq!(
            by64.net(a),
            ClientNet::of("2001:db8:1:2::ffff".parse().unwrap())
        );
        let by48 = Grouping::new(48).unwrap();
        assert_eq!(by48.net(a), by48.net(b), "one /48");
        assert_ne!(by48.net(a), by48.net("2001:db8:2::1".parse().unwrap()));
        let v4: IpAddr = "10.0.0.1".parse().unwrap();
        assert_eq!(by48.net(v4), ClientNet::V4([10, 0, 0, 1]));
        assert_eq!(
            by48.net("::ffff:10.0.0.1".parse().unwrap()),
            by48.net(v4),
            "v4-mapped is the v4 client"
        );
        assert!(Grouping::new(31).is_none() && Grouping::new(65).is_none());
    }
}
