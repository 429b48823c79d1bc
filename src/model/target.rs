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
