//! A node in miniature, built from network namespaces: a client, a router, a director "pod"
//! and a target (game server), each joined to the router by a veth pair, the pod's end
//! named `eth0` as in a Kubernetes pod. Traffic between them really crosses veths and a
//! routing hop, which loopback never does: what the kernel fast path (SPEC §8) attaches to,
//! and where checksums are finished (or not) by the devices on the way.
//!
//! ```text
//!  client ns            router ns                     pod ns               target ns
//!  eth0 10.x.1.2 ── to-client 10.x.1.1
//!                       to-pod    10.x.2.1 ── eth0 10.x.2.2
//!                       to-target 10.x.3.1 ─────────────────────────────── eth0 10.x.3.2
//! ```
//!
//! Every veth is created inside the namespaces (`ip -n <router> link add ... peer ... netns
//! ...`), so nothing of a topology appears in the machine's own namespace and topologies of
//! tests running in parallel cannot clash; `x` still differs per instance so that addresses
//! in logs say which one they belong to. Dropping a [`Topology`] deletes its namespaces,
//! which deletes the veths with them. Processes started in a namespace must be dropped
//! first (declare the topology before them).
//!
//! Needs root (CAP_SYS_ADMIN for `ip netns add`, CAP_NET_ADMIN for the links); without it
//! [`Topology::new`] fails with a message that says so, it never skips.

use std::ffi::OsStr;
use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

use crate::child::{ChildDirector, TempDir};
use crate::scrape::Scrape;
use crate::yaml;

/// One of the four namespaces of a [`Topology`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ns {
    Client,
    Router,
    Pod,
    Target,
}

impl Ns {
    pub const ALL: [Ns; 4] = [Ns::Client, Ns::Router, Ns::Pod, Ns::Target];

    fn label(self) -> &'static str {
        match self {
            Ns::Client => "client",
            Ns::Router => "router",
            Ns::Pod => "pod",
            Ns::Target => "target",
        }
    }

    /// The third octet of this end's /24 (the router has one on each).
    fn subnet(self) -> Option<u8> {
        match self {
            Ns::Client => Some(1),
            Ns::Pod => Some(2),
            Ns::Target => Some(3),
            Ns::Router => None,
        }
    }
}

impl fmt::Display for Ns {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// The name of every leaf's interface (client, pod, target): the pod's must be `eth0` so
/// that `fastPath.interfaces: [eth0]` names it.
pub const LEAF_DEV: &str = "eth0";

/// Instances made by this process so far (names and subnets differ per instance).
static INSTANCES: AtomicU32 = AtomicU32::new(0);

/// Four namespaces and three veth pairs; deleted on drop.
#[derive(Debug)]
pub struct Topology {
    prefix: String,
    /// The second octet of every address of this instance.
    x: u8,
    /// Namespaces created so far (all four once `new` returns).
    created: Vec<Ns>,
}

impl Topology {
    /// Builds the four namespaces, the veth pairs, addresses, default routes through the
    /// router and forwarding in it. Fails, with what to do about it, where `ip netns` is not
    /// permitted.
    pub fn new() -> io::Result<Self> {
        let n = INSTANCES.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        // 10.64.0.0 .. 10.191.255.255: spread by process and instance.
        let x = 64 + ((pid.wrapping_mul(7).wrapping_add(n)) % 128) as u8;
        let mut topo = Self {
            prefix: format!("udt-{pid}-{n}"),
            x,
            created: Vec::new(),
        };
        // Dropped on any error below: whatever was made is deleted again.
        for ns in Ns::ALL {
            // A namespace of this name can only be left over from a crashed process that
            // had this pid before: no live process owns it.
            if Path::new("/var/run/netns").join(topo.name(ns)).exists() {
                let _ = ip(&["netns", "del", &topo.name(ns)]);
            }
            ip(&["netns", "add", &topo.name(ns)]).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!(
                        "cannot create network namespace {} (the netns tests need root with \
                         CAP_SYS_ADMIN and CAP_NET_ADMIN, and iproute2): {e}",
                        topo.name(ns)
                    ),
                )
            })?;
            topo.created.push(ns);
            topo.ip_in(ns, &["link", "set", "lo", "up"])?;
        }
        for leaf in [Ns::Client, Ns::Pod, Ns::Target] {
            let router_dev = router_dev(leaf);
            topo.ip_in(
                Ns::Router,
                &[
                    "link",
                    "add",
                    &router_dev,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    LEAF_DEV,
                    "netns",
                    &topo.name(leaf),
                ],
            )?;
            let router_addr = format!("{}/24", topo.router_addr(leaf));
            topo.ip_in(
                Ns::Router,
                &["addr", "add", &router_addr, "dev", &router_dev],
            )?;
            topo.ip_in(Ns::Router, &["link", "set", &router_dev, "up"])?;
            let leaf_addr = format!("{}/24", topo.addr(leaf));
            topo.ip_in(leaf, &["addr", "add", &leaf_addr, "dev", LEAF_DEV])?;
            topo.ip_in(leaf, &["link", "set", LEAF_DEV, "up"])?;
            topo.ip_in(
                leaf,
                &[
                    "route",
                    "add",
                    "default",
                    "via",
                    &topo.router_addr(leaf).to_string(),
                ],
            )?;
        }
        topo.set_forwarding(Ns::Router)?;
        Ok(topo)
    }

    /// The namespace's name under `/var/run/netns`: `udt-<pid>-<instance>-<ns>`.
    pub fn name(&self, ns: Ns) -> String {
        format!("{}-{ns}", self.prefix)
    }

    /// The address of a leaf (client, pod, target) on its interface; the router's on the
    /// client's side for [`Ns::Router`].
    pub fn addr(&self, ns: Ns) -> Ipv4Addr {
        match ns.subnet() {
            Some(s) => Ipv4Addr::new(10, self.x, s, 2),
            None => self.router_addr(Ns::Client),
        }
    }

    /// The router's address on `leaf`'s /24 (the leaf's default gateway).
    pub fn router_addr(&self, leaf: Ns) -> Ipv4Addr {
        Ipv4Addr::new(10, self.x, leaf.subnet().unwrap_or(1), 1)
    }

    /// Runs `f` on a thread that has entered `ns`'s network namespace, and returns what it
    /// returns. Sockets `f` creates stay in that namespace after the thread ends, and threads
    /// it spawns start in it; the calling thread is not moved.
    pub fn run_in<T: Send>(&self, ns: Ns, f: impl FnOnce() -> T + Send) -> io::Result<T> {
        let path = format!("/var/run/netns/{}", self.name(ns));
        let at = &path;
        std::thread::scope(|scope| {
            scope
                .spawn(move || {
                    let file = std::fs::File::open(at)?;
                    nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).map_err(
                        |e| io::Error::other(format!("setns into {at}: {e} (needs CAP_SYS_ADMIN)")),
                    )?;
                    Ok(f())
                })
                .join()
                .map_err(|_| io::Error::other(format!("a thread in {path} panicked")))?
        })
    }

    /// A config for a director in the pod: every listener on the pod's address, then
    /// `extra` and `mappings` as in [`yaml::director`].
    pub fn director_yaml(&self, extra: &str, mappings: &[String]) -> String {
        yaml::director_on(IpAddr::V4(self.addr(Ns::Pod)), extra, mappings)
    }

    /// The director binary `exe` started in the pod on `yaml` (see
    /// [`Topology::director_yaml`]). Its addresses are the pod's: reach them from a
    /// namespace ([`Topology::run_in`]), e.g. [`Topology::scrape`] for its `/metrics`.
    pub fn spawn_director(&self, exe: &Path, yaml: &str) -> io::Result<ChildDirector> {
        ChildDirector::spawn_command_yaml(
            self.command_in(Ns::Pod, exe),
            TempDir::new("netns")?,
            yaml,
        )
    }

    /// `/metrics` at `admin`, fetched from inside `ns`.
    pub fn scrape(&self, ns: Ns, admin: SocketAddr) -> io::Result<Scrape> {
        self.run_in(ns, || Scrape::fetch(admin))?
    }

    /// An echo server on `ns`'s address (a game server in the target namespace).
    pub fn echo_in(&self, ns: Ns) -> io::Result<crate::EchoServer> {
        let bind = SocketAddr::from((self.addr(ns), 0));
        self.run_in(ns, || crate::EchoServer::start(bind, b""))?
    }

    /// A UDP socket bound to `port` (0: any) on `ns`'s address; it stays in `ns`.
    pub fn socket_in(&self, ns: Ns, port: u16) -> io::Result<UdpSocket> {
        let addr = SocketAddr::from((self.addr(ns), port));
        self.run_in(ns, || UdpSocket::bind(addr))?
    }

    /// A UDP socket bound to `port` on the unspecified address in `ns`: it receives on
    /// every address of `ns`, as a daemon's wildcard listener does.
    pub fn socket_any_in(&self, ns: Ns, port: u16) -> io::Result<UdpSocket> {
        let addr = SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
        self.run_in(ns, || UdpSocket::bind(addr))?
    }

    /// Turns IPv4 forwarding on in `ns` (only the router forwards after [`Topology::new`],
    /// as a real pod does not). On in the pod, a route lookup there (the kernel fast path's)
    /// answers with an egress interface instead of "forwarding disabled".
    pub fn set_forwarding(&self, ns: Ns) -> io::Result<()> {
        self.exec_in(ns, &["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])
            .map(drop)
    }

    /// `program` as a command that runs in `ns` (`ip netns exec`, which execs it: the child's
    /// pid is the program's own). Add arguments, environment and pipes as usual.
    pub fn command_in(&self, ns: Ns, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec"])
            .arg(self.name(ns))
            .arg(program.as_ref());
        cmd
    }

    /// `cmd` started in `ns` under `ip netns exec`: its program, arguments, environment
    /// changes and working directory are carried over; its stdio is inherited (Command does
    /// not expose what was set: build with [`Topology::command_in`] to pipe it).
    pub fn spawn_in(&self, ns: Ns, cmd: &Command) -> io::Result<std::process::Child> {
        let mut wrapped = self.command_in(ns, cmd.get_program());
        wrapped.args(cmd.get_args());
        for (key, value) in cmd.get_envs() {
            match value {
                Some(v) => wrapped.env(key, v),
                None => wrapped.env_remove(key),
            };
        }
        if let Some(dir) = cmd.get_current_dir() {
            wrapped.current_dir(dir);
        }
        wrapped.spawn()
    }

    /// Turns TX checksum offload (and the offloads that depend on it) on or off at both
    /// ends of every veth. Off, every sender finishes its checksums in software and every
    /// receiver verifies them: a datagram rewritten without fixing its checksum is dropped
    /// and counted (see [`Topology::udp_in_csum_errors`]) instead of passing on trust.
    pub fn set_tx_offload(&self, on: bool) -> io::Result<()> {
        let state = if on { "on" } else { "off" };
        for (ns, dev) in self.veth_ends() {
            self.exec_in(ns, &["ethtool", "-K", &dev, "tx", state])?;
        }
        Ok(())
    }

    /// Whether TX checksum offload is on at `dev` in `ns` (`ethtool -k`).
    pub fn tx_offload(&self, ns: Ns, dev: &str) -> io::Result<bool> {
        let out = self.exec_in(ns, &["ethtool", "-k", dev])?;
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines()
            .find_map(|l| l.strip_prefix("tx-checksumming:"))
            .map(|v| v.trim().starts_with("on"))
            .ok_or_else(|| io::Error::other(format!("no tx-checksumming in `ethtool -k {dev}`")))
    }

    /// `Udp: InCsumErrors` of `ns` (`/proc/net/snmp` read inside it): datagrams its sockets'
    /// kernel refused for a bad checksum since the namespace was made.
    pub fn udp_in_csum_errors(&self, ns: Ns) -> io::Result<u64> {
        self.snmp(ns, "Udp", "InCsumErrors")
    }

    /// `Ip: ForwDatagrams` of `ns`: datagrams it routed on (the router's proof that traffic
    /// crossed it).
    pub fn forwarded(&self, ns: Ns) -> io::Result<u64> {
        self.snmp(ns, "Ip", "ForwDatagrams")
    }

    /// One counter of `ns`'s `/proc/net/snmp`.
    pub fn snmp(&self, ns: Ns, group: &str, field: &str) -> io::Result<u64> {
        let out = self.exec_in(ns, &["cat", "/proc/net/snmp"])?;
        snmp_value(&String::from_utf8_lossy(&out.stdout), group, field)
            .ok_or_else(|| io::Error::other(format!("no {group} {field} in {ns}'s /proc/net/snmp")))
    }

    /// `args` run in `ns` to completion; an error (with its stderr) unless it succeeded.
    pub fn exec_in(&self, ns: Ns, args: &[&str]) -> io::Result<Output> {
        let (program, rest) = args
            .split_first()
            .ok_or_else(|| io::Error::other("exec_in needs a program"))?;
        let mut cmd = self.command_in(ns, program);
        cmd.args(rest);
        checked(cmd, &format!("in {}: {}", self.name(ns), args.join(" ")))
    }

    /// `ip -n <ns> args`.
    fn ip_in(&self, ns: Ns, args: &[&str]) -> io::Result<Output> {
        let name = self.name(ns);
        let mut all = vec!["-n", name.as_str()];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// Both ends of every veth pair, as (namespace, device).
    fn veth_ends(&self) -> Vec<(Ns, String)> {
        [Ns::Client, Ns::Pod, Ns::Target]
            .into_iter()
            .flat_map(|leaf| [(leaf, LEAF_DEV.to_string()), (Ns::Router, router_dev(leaf))])
            .collect()
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for ns in self.created.drain(..).rev() {
            let _ = ip(&["netns", "del", &format!("{}-{ns}", self.prefix)]);
        }
    }
}

/// The router's end of the pair towards `leaf`: `to-client`, `to-pod`, `to-target`.
fn router_dev(leaf: Ns) -> String {
    format!("to-{leaf}")
}

/// `ip args`, checked.
fn ip(args: &[&str]) -> io::Result<Output> {
    let mut cmd = Command::new("ip");
    cmd.args(args);
    checked(cmd, &format!("ip {}", args.join(" ")))
}

/// Runs `cmd` to completion; an error naming `what` and carrying its stderr unless it
/// exited 0.
fn checked(mut cmd: Command, what: &str) -> io::Result<Output> {
    let out = cmd
        .output()
        .map_err(|e| io::Error::new(e.kind(), format!("{what}: {e}")))?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(io::Error::other(format!(
            "{what}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// A counter of `/proc/net/snmp` text: each group is a line of names and a line of values,
/// both starting with `<group>:`.
pub fn snmp_value(text: &str, group: &str, field: &str) -> Option<u64> {
    let prefix = format!("{group}:");
    let mut lines = text.lines().filter(|l| l.starts_with(&prefix));
    let names = lines.next()?;
    let values = lines.next()?;
    let at = names.split_whitespace().position(|n| n == field)?;
    values.split_whitespace().nth(at)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SNMP: &str = "\
Ip: Forwarding DefaultTTL InReceives InHdrErrors InAddrErrors ForwDatagrams
Ip: 1 64 812 0 0 400
Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors InCsumErrors IgnoredMulti MemErrors
Udp: 200 0 3 200 0 0 3 0 0
UdpLite: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors InCsumErrors IgnoredMulti MemErrors
UdpLite: 0 0 0 0 0 0 0 0 0
";

    #[test]
    fn snmp_counters_are_read_by_name_from_their_own_group() {
        assert_eq!(snmp_value(SNMP, "Udp", "InCsumErrors"), Some(3));
        assert_eq!(snmp_value(SNMP, "UdpLite", "InCsumErrors"), Some(0));
        assert_eq!(snmp_value(SNMP, "Ip", "ForwDatagrams"), Some(400));
        assert_eq!(snmp_value(SNMP, "Udp", "Missing"), None);
        assert_eq!(snmp_value(SNMP, "Tcp", "InSegs"), None);
    }

    /// Needs root, like every user of this module: fails (never skips) without it.
    #[test]
    fn topologies_side_by_side_are_routed_apart_and_deleted_on_drop() {
        let (a, b) = (Topology::new().unwrap(), Topology::new().unwrap());
        for ns in Ns::ALL {
            assert_ne!(a.name(ns), b.name(ns));
        }
        assert_ne!(
            a.addr(Ns::Target),
            b.addr(Ns::Target),
            "subnets per instance"
        );
        let target = SocketAddr::from((b.addr(Ns::Target), 0));
        let echo = b
            .run_in(Ns::Target, || crate::EchoServer::start(target, b""))
            .unwrap()
            .unwrap();
        // b's client reaches b's target through b's router, with offload on and off.
        let client = b.socket_in(Ns::Client, 0).unwrap();
        client
            .set_read_timeout(Some(std::time::Duration::from_secs(2)))
            .unwrap();
        let mut buf = [0u8; 16];
        for on in [true, false] {
            b.set_tx_offload(on).unwrap();
            assert_eq!(b.tx_offload(Ns::Router, "to-target").unwrap(), on);
            client.send_to(b"hello", echo.addr).unwrap();
            let (n, from) = client.recv_from(&mut buf).unwrap();
            assert_eq!((&buf[..n], from), (&b"hello"[..], echo.addr));
        }
        assert!(b.forwarded(Ns::Router).unwrap() >= 4);
        // A process spawned in a namespace sees that namespace's devices (and its env).
        let has_to_pod = |ns| {
            let mut cmd = Command::new("sh");
            cmd.args(["-c", "test -e /sys/class/net/$DEV"])
                .env("DEV", "to-pod");
            b.spawn_in(ns, &cmd).unwrap().wait().unwrap().success()
        };
        assert!(has_to_pod(Ns::Router));
        assert!(!has_to_pod(Ns::Target));
        assert_eq!(b.udp_in_csum_errors(Ns::Client).unwrap(), 0);
        // a's pod has no route to b's target.
        let from_a = a.socket_in(Ns::Pod, 0).unwrap();
        from_a
            .set_read_timeout(Some(std::time::Duration::from_millis(300)))
            .unwrap();
        let _ = from_a.send_to(b"hello", echo.addr);
        assert!(
            from_a.recv(&mut buf).is_err(),
            "a's pod must not reach b's target"
        );
        let names: Vec<String> = Ns::ALL.iter().map(|&ns| a.name(ns)).collect();
        drop(a);
        for name in names {
            assert!(
                !std::path::Path::new("/var/run/netns").join(&name).exists(),
                "dropping a topology deletes {name}"
            );
        }
    }

    #[test]
    fn every_leaf_has_its_own_subnet_and_the_router_is_its_gateway() {
        let subnets: Vec<u8> = [Ns::Client, Ns::Pod, Ns::Target]
            .iter()
            .filter_map(|n| n.subnet())
            .collect();
        assert_eq!(subnets, [1, 2, 3]);
        assert_eq!(Ns::Router.subnet(), None);
        assert_eq!(router_dev(Ns::Pod), "to-pod");
    }
}
