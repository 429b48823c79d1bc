//! Where a session goes: [`Target`], shared by tokens and sessions, and the [`Interner`]
//! that keeps one shared value per address so outstanding tokens and sessions do not each
//! carry their own copy of the names.
//!
//! Owns the target noun. Must not import anything of the crate.

use std::net::SocketAddr;
use std::sync::Arc;

/// Where a session goes. Shared by tokens and sessions; identity for counting is `addr`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The `resourceQueryMapping` key it was resolved through.
    pub mapping: String,
    pub namespace: String,
    pub name: String,
    pub addr: SocketAddr,
    /// `proxyProtocol: v2`: every datagram towards the target starts with a PROXY v2 header.
    pub proxy: bool,
    /// The query's `playerId` (sent in the PROXY v2 header).
    pub player: Option<Box<str>>,
    /// `dataPorts` after the first: the target's port for each (same IP as `addr`).
    pub extra_ports: Box<[u16]>,
}

impl Target {
    pub fn new(mapping: &str, namespace: &str, name: &str, addr: SocketAddr) -> Self {
        Self {
            mapping: mapping.to_string(),
            namespace: namespace.to_string(),
            name: name.to_string(),
            // v4-mapped v6 addresses are stored as v4 so the data plane compares like with like.
            addr: canonical(addr),
            proxy: false,
            player: None,
            extra_ports: Box::new([]),
        }
    }

    pub fn with_extra_ports(mut self, ports: &[u16]) -> Self {
        self.extra_ports = ports.into();
        self
    }

    /// This target as data port `index` sees it: the same object at that port's address.
    /// `None` when it has no port for it (a token issued under other `dataPorts`).
    pub fn on_data_port(&self, index: usize) -> Option<Target> {
        if index == 0 {
            return Some(self.clone());
        }
        let port = *self.extra_ports.get(index - 1)?;
        let mut t = self.clone();
        t.addr = SocketAddr::new(self.addr.ip(), port);
        Some(t)
    }

    pub fn with_proxy(mut self, proxy: bool) -> Self {
        self.proxy = proxy;
        self
    }

    pub fn with_player(mut self, player: Option<&str>) -> Self {
        self.player = player.map(Box::from);
        self
    }
}

/// A target's address as tokens, sessions and the stores compare it (v4-mapped → v4).
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

/// One shared [`Target`] per address and names: the resolver builds a fresh one per query,
/// and every outstanding token and session would otherwise keep its own copy of the names.
/// The one interner of the process: token stores, sealed tokens and per-port redemption all
/// share targets through it.
pub struct Interner {
    targets: moka::sync::Cache<SocketAddr, Arc<Target>>,
}

impl Default for Interner {
    fn default() -> Self {
        Self {
            targets: moka::sync::Cache::new(65_536),
        }
    }
}

impl Interner {
    /// The shared target equal to `mapping`/`namespace`/`name` at `addr` with `proxy` and
    /// `extra_ports` (no player), built only when none is shared yet: opening a sealed token
    /// allocates nothing for a target seen before.
    pub fn get(
        &self,
        (mapping, namespace, name): (&str, &str, &str),
        addr: SocketAddr,
        proxy: bool,
        extra_ports: &[u16],
    ) -> Arc<Target> {
        if let Some(t) = self.targets.get(&addr)
            && t.mapping == mapping
            && t.namespace == namespace
            && t.name == name
            && t.proxy == proxy
            && *t.extra_ports == *extra_ports
            && t.player.is_none()
        {
            return t;
        }
        let t = Arc::new(
            Target::new(mapping, namespace, name, addr)
                .with_proxy(proxy)
                .with_extra_ports(extra_ports),
        );
        self.targets.insert(addr, Arc::clone(&t));
        t
    }

    /// `target`, or the shared one equal to it. A player's target is never shared.
    pub fn share(&self, target: Arc<Target>) -> Arc<Target> {
        if target.player.is_some() {
            return target;
        }
        match self.targets.get(&target.addr) {
            Some(t) if *t == *target => t,
            _ => {
                self.targets.insert(target.addr, Arc::clone(&target));
                target
            }
        }
    }

    /// `target` as data port `index` sees it, shared like any other target; `None` when it
    /// has no port for that data port.
    pub fn on_data_port(&self, target: &Arc<Target>, index: usize) -> Option<Arc<Target>> {
        if index == 0 {
            return Some(Arc::clone(target));
        }
        Some(self.share(Arc::new(target.on_data_port(index)?)))
    }
}

/// An IP network (`targetNetworks` entries): an address and a prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    pub addr: std::net::IpAddr,
    pub prefix: u8,
}

impl Network {
    /// Parses `10.0.0.0/8` or `fd00::/8` (a bare address is its own /32 or /128).
    pub fn parse(text: &str) -> Option<Self> {
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a.trim().parse().ok()?, p.trim().parse().ok()?),
            None => {
                let a: std::net::IpAddr = text.trim().parse().ok()?;
                (a, if a.is_ipv4() { 32 } else { 128 })
            }
        };
        let max = if matches!(addr, std::net::IpAddr::V4(_)) {
            32
        } else {
            128
        };
        (prefix <= max).then_some(Self { addr, prefix })
    }

    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (std::net::IpAddr::V4(net), std::net::IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (std::net::IpAddr::V6(net), std::net::IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// The addresses a sealed or uuid token may name (SPEC hardening: a token — or a leaked key —
/// must not open a relay to any address of the pod network): what each mapping currently
/// knows (static endpoints, watch caches; replaced whole when a cache changes), what this
/// replica allocated recently, and `targetNetworks`. One lookup per open, none per datagram.
pub struct KnownTargets {
    /// `targetNetworks` (replaced on reload).
    networks: arc_swap::ArcSwap<Vec<Network>>,
    /// Mapping → every address its targets have, on every data port.
    known:
        arc_swap::ArcSwap<std::collections::HashMap<String, std::collections::HashSet<SocketAddr>>>,
    /// Targets this replica handed out tokens for (allocations included: allocating
    /// mappings keep no cache), for as long as a token naming them can be used.
    allocated: moka::sync::Cache<(String, SocketAddr), ()>,
    /// The cache generation `known` was built at.
    built_at: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for KnownTargets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KnownTargets")
            .field("networks", &self.networks.load())
            .field("mappings", &self.known.load().len())
            .field("allocated", &self.allocated.entry_count())
            .finish()
    }
}

impl KnownTargets {
    /// Allocated targets are remembered for `remember` (the longest a token can be used).
    pub fn new(networks: Vec<Network>, remember: std::time::Duration) -> Self {
        Self {
            networks: arc_swap::ArcSwap::from_pointee(networks),
            known: arc_swap::ArcSwap::from_pointee(Default::default()),
            allocated: moka::sync::Cache::builder()
                .max_capacity(1_000_000)
                .time_to_live(remember)
                .build(),
            built_at: std::sync::atomic::AtomicU64::new(u64::MAX),
        }
    }

    /// Every address (tests and benchmarks that are not about this check).
    pub fn everywhere() -> Self {
        let all = ["0.0.0.0/0", "::/0"]
            .iter()
            .filter_map(|n| Network::parse(n));
        Self::new(all.collect(), std::time::Duration::from_secs(1))
    }

    /// `targetNetworks` from a reloaded config.
    pub fn set_networks(&self, networks: Vec<Network>) {
        self.networks.store(std::sync::Arc::new(networks));
    }

    /// Whether a token may open a session to `target`.
    pub fn knows(&self, target: &Target) -> bool {
        self.networks
            .load()
            .iter()
            .any(|n| n.contains(target.addr.ip()))
            || self
                .known
                .load()
                .get(&target.mapping)
                .is_some_and(|addrs| addrs.contains(&target.addr))
            || self
                .allocated
                .contains_key(&(target.mapping.clone(), target.addr))
    }

    /// Replaces what the mappings know, built at cache generation `generation`.
    pub fn replace(
        &self,
        known: std::collections::HashMap<String, std::collections::HashSet<SocketAddr>>,
        generation: u64,
    ) {
        self.known.store(std::sync::Arc::new(known));
        self.built_at
            .store(generation, std::sync::atomic::Ordering::Release);
    }

    /// The cache generation the known addresses were built at (`u64::MAX`: never).
    pub fn built_at(&self) -> u64 {
        self.built_at.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The mappings each known address belongs to: what the caches know and what this
    /// replica allocated (a target in two mappings is in both). For per-mapping counts at a
    /// scrape, never on a data path.
    pub fn mappings_by_address(
        &self,
    ) -> std::collections::HashMap<SocketAddr, std::collections::BTreeSet<String>> {
        let mut out: std::collections::HashMap<SocketAddr, std::collections::BTreeSet<String>> =
            std::collections::HashMap::new();
        for (mapping, addrs) in self.known.load().iter() {
            for addr in addrs {
                out.entry(*addr).or_default().insert(mapping.clone());
            }
        }
        for (key, ()) in self.allocated.iter() {
            let (mapping, addr) = key.as_ref();
            out.entry(*addr).or_default().insert(mapping.clone());
        }
        out
    }

    /// Remembers a target this replica handed a token out for (resolved or allocated): its
    /// address on every data port. A token opens at once even before the next refresh of
    /// the caches' addresses.
    pub fn learn(&self, target: &Target) {
        self.allocated
            .insert((target.mapping.clone(), target.addr), ());
        for port in target.extra_ports.iter() {
            let addr = SocketAddr::new(target.addr.ip(), *port);
            self.allocated.insert((target.mapping.clone(), addr), ());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mappings_by_address_joins_known_and_allocated() {
        let k = KnownTargets::new(Vec::new(), std::time::Duration::from_secs(60));
        let a: SocketAddr = "10.0.0.1:7000".parse().unwrap();
        let b: SocketAddr = "10.0.0.2:7000".parse().unwrap();
        k.replace(
            [
                ("arena".to_string(), [a].into_iter().collect()),
                ("duel".to_string(), [a, b].into_iter().collect()),
            ]
            .into_iter()
            .collect(),
            1,
        );
        k.learn(&Target::new("fleet", "ns", "gs-1", b));
        let by = k.mappings_by_address();
        let names = |addr| by[&addr].iter().cloned().collect::<Vec<String>>();
        assert_eq!(names(a), ["arena", "duel"]);
        assert_eq!(names(b), ["duel", "fleet"]);
        assert_eq!(by.len(), 2);
    }

    #[test]
    fn networks_parse_and_contain() {
        let n = Network::parse("10.4.0.0/16").unwrap();
        assert!(n.contains("10.4.9.9".parse().unwrap()));
        assert!(!n.contains("10.5.0.1".parse().unwrap()));
        assert!(n.contains("::ffff:10.4.0.1".parse().unwrap()), "v4-mapped");
        let v6 = Network::parse("fd00::/8").unwrap();
        assert!(v6.contains("fd12::1".parse().unwrap()));
        assert!(!v6.contains("10.4.0.1".parse().unwrap()));
        assert_eq!(Network::parse("10.0.0.1").unwrap().prefix, 32);
        assert!(Network::parse("10.0.0.0/33").is_none() && Network::parse("x/8").is_none());
        assert!(
            Network::parse("0.0.0.0/0")
                .unwrap()
                .contains("1.2.3.4".parse().unwrap())
        );
    }

    #[test]
    fn a_target_is_known_by_its_mapping_a_network_or_an_allocation() {
        let at = |s: &str| Target::new("gs", "ns", "a", s.parse().unwrap());
        let k = KnownTargets::new(
            vec![Network::parse("192.168.0.0/24").unwrap()],
            std::time::Duration::from_secs(60),
        );
        assert!(!k.knows(&at("10.0.0.1:7000")));
        assert!(k.knows(&at("192.168.0.9:7000")), "targetNetworks");
        let mut known = std::collections::HashMap::new();
        known.insert(
            "gs".to_string(),
            std::collections::HashSet::from(["10.0.0.1:7000".parse().unwrap()]),
        );
        k.replace(known, 3);
        assert!(k.knows(&at("10.0.0.1:7000")));
        assert!(!k.knows(&at("10.0.0.1:7001")), "another port");
        assert!(
            !k.knows(&Target::new(
                "other",
                "ns",
                "a",
                "10.0.0.1:7000".parse().unwrap()
            )),
            "another mapping's address"
        );
        let allocated = at("10.0.0.2:7000").with_extra_ports(&[7100]);
        k.learn(&allocated);
        assert!(k.knows(&allocated));
        assert!(k.knows(&at("10.0.0.2:7100")), "its other data ports too");
        assert_eq!(k.built_at(), 3);
    }
}
