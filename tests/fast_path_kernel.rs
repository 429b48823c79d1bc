//! The kernel fast path's program and loader (SPEC §8), in network namespaces these tests
//! create (`testkit::netns::Topology`): a client, the director's "pod" (the program on its
//! `eth0`), a target, joined through a router. Legs go in by hand through `FastPath`, as
//! the session table's outputs would put them. Needs root (CAP_BPF, CAP_NET_ADMIN),
//! iproute2, ethtool and setpriv (util-linux, for the run without capabilities).
#![cfg(feature = "fast-path")]

use std::io::ErrorKind;
use std::net::{SocketAddrV4, UdpSocket};
use std::process::Command;
use std::time::Duration;

use testkit::netns::{Ns, Topology};
use udp_director::shell::fast_path::{
    Count, FastPath, FastPathError, Hook, LegKey, Matchers, Rewrite, monotonic_ns,
};

const DATA_PORT: u16 = 7777;
const UPSTREAM_PORT: u16 = 40_000;
const TARGET_PORT: u16 = 9001;
const CLIENT_PORT: u16 = 50_123;
const MAGIC: &[u8] = b"\xff\xff\xff\xffRESET";
/// A token-shaped payload: 36 base64url bytes and a newline.
const TOKEN: &[u8] = b"AbCdEfGhIjKlMnOpQrStUvWxYz0123456789\n";
/// How long a datagram that should arrive may take.
const ARRIVES: Duration = Duration::from_secs(2);
/// How long a socket that should stay silent is watched.
const SILENT: Duration = Duration::from_millis(200);

fn matchers() -> Matchers {
    Matchers {
        magic: MAGIC.to_vec(),
        token_min: 36,
        token_max: 52,
    }
}

/// A topology whose pod does not forward, as a real pod does not: the program's route
/// lookup answers "forwarding disabled" and datagrams leave by the interface they came in on.
fn topology() -> Topology {
    Topology::new().expect("topology (these tests need root with CAP_BPF and CAP_NET_ADMIN)")
}

/// A topology whose pod forwards: the program's route lookup answers with the egress
/// interface.
fn topology_forwarding() -> Topology {
    let topo = topology();
    topo.set_forwarding(Ns::Pod).expect("forwarding in the pod");
    topo
}

/// `ns`'s address and `port`.
fn at(topo: &Topology, ns: Ns, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(topo.addr(ns), port)
}

/// The filters on the pod's `eth0` ingress (`tc filter show`): where a clsact program is.
fn pod_filters(topo: &Topology) -> String {
    let out = topo
        .exec_in(Ns::Pod, &["tc", "filter", "show", "dev", "eth0", "ingress"])
        .unwrap_or_else(|e| panic!("{e} (these tests need iproute2)"));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `Udp: ... InCsumErrors` in `ns`.
fn udp_checksum_errors(topo: &Topology, ns: Ns) -> u64 {
    topo.udp_in_csum_errors(ns).expect("InCsumErrors")
}

fn with_timeout(socket: std::io::Result<UdpSocket>) -> UdpSocket {
    let socket = socket.expect("bind");
    socket.set_read_timeout(Some(ARRIVES)).expect("timeout");
    socket
}

fn start(topo: &Topology, max_sessions: usize) -> FastPath {
    start_on(topo, &["eth0"], max_sessions)
}

fn start_on(topo: &Topology, interfaces: &[&str], max_sessions: usize) -> FastPath {
    start_hooked(topo, interfaces, max_sessions, Hook::Auto)
}

fn start_hooked(topo: &Topology, interfaces: &[&str], max_sessions: usize, hook: Hook) -> FastPath {
    let interfaces: Vec<String> = interfaces.iter().map(|i| i.to_string()).collect();
    let started = topo
        .run_in(Ns::Pod, move || {
            FastPath::start_hooked(&interfaces, max_sessions, &matchers(), hook)
        })
        .expect("into the pod");
    started.unwrap_or_else(|e| {
        panic!("start: {e} (these tests need root with CAP_BPF and CAP_NET_ADMIN)")
    })
}

/// Drops the handle inside the pod's namespace (a clsact detach goes by ifindex there).
fn stop(topo: &Topology, fast_path: FastPath) {
    topo.run_in(Ns::Pod, move || drop(fast_path))
        .expect("into the pod");
}

/// The client's and the target's legs of one session, as the session table would put them.
fn legs(topo: &Topology) -> [(LegKey, Rewrite); 2] {
    [
        (
            LegKey {
                peer: at(topo, Ns::Client, CLIENT_PORT),
                local_port: DATA_PORT,
            },
            Rewrite {
                to: at(topo, Ns::Target, TARGET_PORT),
                from_port: UPSTREAM_PORT,
                from_client: true,
            },
        ),
        (
            LegKey {
                peer: at(topo, Ns::Target, TARGET_PORT),
                local_port: UPSTREAM_PORT,
            },
            Rewrite {
                to: at(topo, Ns::Client, CLIENT_PORT),
                from_port: DATA_PORT,
                from_client: false,
            },
        ),
    ]
}

/// One session's sockets: the client, the target, and the director's two in the pod.
struct Session {
    client: UdpSocket,
    target: UdpSocket,
    data: UdpSocket,
    upstream: UdpSocket,
    /// The director's data and upstream addresses.
    data_addr: SocketAddrV4,
    upstream_addr: SocketAddrV4,
}

impl Session {
    fn new(topo: &Topology) -> Self {
        Session {
            client: with_timeout(topo.socket_in(Ns::Client, CLIENT_PORT)),
            target: with_timeout(topo.socket_in(Ns::Target, TARGET_PORT)),
            data: with_timeout(topo.socket_any_in(Ns::Pod, DATA_PORT)),
            upstream: with_timeout(topo.socket_in(Ns::Pod, UPSTREAM_PORT)),
            data_addr: at(topo, Ns::Pod, DATA_PORT),
            upstream_addr: at(topo, Ns::Pod, UPSTREAM_PORT),
        }
    }

    fn client_sends(&self, payload: &[u8]) {
        self.client
            .send_to(payload, self.data_addr)
            .expect("client send");
    }

    fn target_sends(&self, payload: &[u8]) {
        self.target
            .send_to(payload, self.upstream_addr)
            .expect("target send");
    }
}

fn receive(socket: &UdpSocket, what: &str) -> (Vec<u8>, SocketAddrV4) {
    let mut buf = vec![0u8; 65_536];
    match socket.recv_from(&mut buf) {
        Ok((n, std::net::SocketAddr::V4(from))) => (buf[..n].to_vec(), from),
        Ok((_, from)) => panic!("{what}: datagram from an IPv6 address {from}"),
        Err(e) => panic!("{what}: nothing arrived within {ARRIVES:?} ({e})"),
    }
}

fn assert_silent(socket: &UdpSocket, what: &str) {
    socket.set_read_timeout(Some(SILENT)).expect("timeout");
    let mut buf = [0u8; 2048];
    match socket.recv_from(&mut buf) {
        Ok((n, from)) => panic!("{what}: got {n} bytes from {from}, expected nothing"),
        Err(e) => assert!(
            matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
            "{what}: {e}"
        ),
    }
    socket.set_read_timeout(Some(ARRIVES)).expect("timeout");
}

/// Game traffic: binary, not token-shaped, not the magic.
fn game(i: u8, len: usize) -> Vec<u8> {
    (0..len).map(|j| i.wrapping_add(j as u8) | 0x80).collect()
}

#[test]
fn a_session_is_carried_both_ways_with_the_directors_addresses_and_counted() {
    let topo = topology();
    let s = Session::new(&topo);
    let fp = start(&topo, 16);
    assert!(fp.describe().contains("eth0"), "{}", fp.describe());
    let [(client_key, to_target), (target_key, to_client)] = legs(&topo);
    fp.insert(client_key, to_target).expect("insert client leg");
    fp.insert(target_key, to_client).expect("insert target leg");
    assert_eq!(fp.legs(), 2);
    // Replacing a leg keeps one leg.
    fp.insert(target_key, to_client)
        .expect("replace target leg");
    assert_eq!(fp.legs(), 2);

    let before = monotonic_ns();
    let sizes = [1usize, 64, 1200];
    for (i, &len) in sizes.iter().enumerate() {
        let payload = game(i as u8, len);
        s.client_sends(&payload);
        let (got, from) = receive(&s.target, "target");
        assert_eq!(got, payload);
        assert_eq!(from, s.upstream_addr, "source towards the target");

        let reply = game(100 + i as u8, len + 3);
        s.target_sends(&reply);
        let (got, from) = receive(&s.client, "client");
        assert_eq!(got, reply);
        assert_eq!(from, s.data_addr, "source towards the client");
    }
    let after = monotonic_ns();
    // The kernel carried them: the director's sockets saw nothing.
    assert_silent(&s.data, "pod data socket");
    assert_silent(&s.upstream, "pod upstream socket");

    let sent: u64 = sizes.iter().map(|&n| n as u64).sum();
    let client_leg = fp.counts(client_key).expect("client leg");
    assert_eq!(
        client_leg.count,
        Count {
            datagrams: 3,
            bytes: sent
        }
    );
    assert!(
        (before..=after).contains(&client_leg.last_seen_ns),
        "last seen {} not in [{before}, {after}]",
        client_leg.last_seen_ns
    );
    let target_leg = fp.counts(target_key).expect("target leg");
    assert_eq!(
        target_leg.count,
        Count {
            datagrams: 3,
            bytes: sent + 9
        }
    );
    assert!(target_leg.last_seen_ns >= client_leg.last_seen_ns && target_leg.last_seen_ns <= after);
    let totals = fp.totals();
    assert_eq!(totals.to_target, client_leg.count);
    assert_eq!(totals.to_client, target_leg.count);

    // Out of the map: what it carried comes back, and the next datagram goes up.
    assert_eq!(fp.remove(client_key), Some(client_leg));
    assert_eq!(fp.remove(client_key), None);
    assert_eq!(fp.counts(client_key), None);
    assert_eq!(fp.legs(), 1);
    s.client_sends(b"\x81after");
    let (got, from) = receive(&s.data, "pod data socket after remove");
    assert_eq!(got, b"\x81after");
    assert_eq!(
        from,
        at(&topo, Ns::Client, CLIENT_PORT),
        "unchanged on the way up"
    );
    assert_silent(&s.target, "target after remove");
    assert_eq!(fp.totals(), totals, "a miss is not counted");
    stop(&topo, fp);
}

#[test]
fn control_frames_and_tokens_go_up_unchanged_and_the_whole_magic_is_compared() {
    let topo = topology();
    let s = Session::new(&topo);
    let fp = start(&topo, 16);
    for (key, rewrite) in legs(&topo) {
        fp.insert(key, rewrite).expect("insert");
    }
    let mut reset = MAGIC.to_vec();
    reset.extend_from_slice(TOKEN.trim_ascii());
    let mut response = MAGIC.to_vec();
    response.push(0x02);
    response.extend_from_slice(&[0u8; 16]);
    let only_magic = MAGIC.to_vec();
    let padded = b"  \t AbCdEfGhIjKlMnOpQrStUvWxYz0123456789-_ \r\n".to_vec();
    for up in [reset, response, only_magic, TOKEN.to_vec(), padded] {
        s.client_sends(&up);
        let (got, from) = receive(&s.data, "pod data socket");
        assert_eq!(got, up, "unchanged");
        assert_eq!(from, at(&topo, Ns::Client, CLIENT_PORT));
    }
    assert_silent(&s.target, "target");
    assert_eq!(
        fp.counts(legs(&topo)[0].0).expect("leg").count,
        Count::default()
    );

    // Carried: part of the magic only, a token's length with a byte no token has, a token
    // one byte too long, and everything the target sends (even the magic).
    let mut partial = MAGIC[..MAGIC.len() - 1].to_vec();
    partial.extend_from_slice(b"XYZ");
    let mut not_token = TOKEN.to_vec();
    not_token[10] = b'.';
    let long_token = [b'A'; 53].to_vec();
    for carried in [partial, not_token, long_token] {
        s.client_sends(&carried);
        let (got, _) = receive(&s.target, "target");
        assert_eq!(got, carried);
    }
    let mut from_target = MAGIC.to_vec();
    from_target.extend_from_slice(TOKEN);
    s.target_sends(&from_target);
    assert_eq!(receive(&s.client, "client").0, from_target);
    assert_silent(&s.data, "pod data socket");
    assert_silent(&s.upstream, "pod upstream socket");

    // A reload's new magic: the old one is now game traffic, the new one goes up.
    fp.set_matchers(&Matchers {
        magic: b"NEWMAGIC".to_vec(),
        token_min: 36,
        token_max: 52,
    })
    .expect("set matchers");
    let mut old = MAGIC.to_vec();
    old.push(0x03);
    s.client_sends(&old);
    assert_eq!(receive(&s.target, "target").0, old);
    s.client_sends(b"NEWMAGIC\x03ping");
    assert_eq!(receive(&s.data, "pod data socket").0, b"NEWMAGIC\x03ping");

    // Sealed tokens are longer: the program reads them 32 bytes at a time, to the last.
    fp.set_matchers(&Matchers {
        magic: MAGIC.to_vec(),
        token_min: 60,
        token_max: 144,
    })
    .expect("set matchers");
    let sealed: Vec<u8> = (0..130u8)
        .map(|i| {
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"[usize::from(i) % 64]
        })
        .collect();
    s.client_sends(&sealed);
    assert_eq!(receive(&s.data, "pod data socket").0, sealed);
    let mut last_byte_off = sealed.clone();
    last_byte_off[129] = b'=';
    s.client_sends(&last_byte_off);
    assert_eq!(receive(&s.target, "target").0, last_byte_off);

    // A datagram larger than the MTU leaves the client in fragments: they go up and the
    // pod's stack reassembles them.
    let big = game(7, 3000);
    s.client_sends(&big);
    assert_eq!(receive(&s.data, "pod data socket").0, big);
    assert_silent(&s.target, "target");
    stop(&topo, fp);
}

#[test]
fn a_datagram_without_a_udp_checksum_stays_without_one() {
    let topo = topology();
    let s = Session::new(&topo);
    let fp = start(&topo, 16);
    for (key, rewrite) in legs(&topo) {
        fp.insert(key, rewrite).expect("insert");
    }
    // A UDP header by hand with checksum 0 ("none" in IPv4), from the client's port, on a raw
    // socket in the client's namespace (the kernel adds the IP header, nothing else).
    let raw = topo
        .run_in(Ns::Client, || {
            socket2::Socket::new(
                socket2::Domain::IPV4,
                socket2::Type::RAW,
                Some(socket2::Protocol::UDP),
            )
            .expect("raw socket")
        })
        .expect("into the client");
    let payload = game(3, 100);
    let mut datagram = Vec::new();
    datagram.extend_from_slice(&CLIENT_PORT.to_be_bytes());
    datagram.extend_from_slice(&DATA_PORT.to_be_bytes());
    datagram.extend_from_slice(&u16::try_from(8 + payload.len()).expect("len").to_be_bytes());
    datagram.extend_from_slice(&[0, 0]);
    datagram.extend_from_slice(&payload);
    raw.send_to(&datagram, &at(&topo, Ns::Pod, 0).into())
        .expect("raw send");
    // Carried, still valid at the target: a checksum computed from the 0 would be wrong
    // and the target's stack would drop the datagram.
    let (got, from) = receive(&s.target, "target");
    assert_eq!(got, payload);
    assert_eq!(from, s.upstream_addr);
    assert_eq!(udp_checksum_errors(&topo, Ns::Target), 0);
    assert_silent(&s.data, "pod data socket");
    assert_eq!(fp.counts(legs(&topo)[0].0).expect("leg").count.datagrams, 1);
    stop(&topo, fp);
}

#[test]
fn checksums_hold_with_tx_checksum_offload_off_at_both_ends() {
    // With forwarding on, so the route lookup's own answer is used here (the other tests
    // take the "forwarding disabled" way out).
    let topo = topology_forwarding();
    topo.set_tx_offload(false)
        .unwrap_or_else(|e| panic!("{e} (this test needs ethtool)"));
    let s = Session::new(&topo);
    let fp = start(&topo, 16);
    for (key, rewrite) in legs(&topo) {
        fp.insert(key, rewrite).expect("insert");
    }
    let before = (
        udp_checksum_errors(&topo, Ns::Target),
        udp_checksum_errors(&topo, Ns::Client),
    );
    for i in 0..20u8 {
        let payload = game(i, 17 + 61 * usize::from(i));
        s.client_sends(&payload);
        assert_eq!(receive(&s.target, "target").0, payload);
        s.target_sends(&payload);
        assert_eq!(receive(&s.client, "client").0, payload);
    }
    assert_eq!(
        fp.counts(legs(&topo)[0].0).expect("leg").count.datagrams,
        20
    );
    assert_eq!(
        fp.counts(legs(&topo)[1].0).expect("leg").count.datagrams,
        20
    );
    assert_eq!(
        (
            udp_checksum_errors(&topo, Ns::Target),
            udp_checksum_errors(&topo, Ns::Client)
        ),
        before,
        "UDP checksum errors at the receivers"
    );
    stop(&topo, fp);
}

/// The programs on the pod's `eth0` ingress: tcx links (which bpftool 7.1 does not list) and
/// clsact filters.
fn attached(topo: &Topology) -> Vec<String> {
    let mut names = topo
        .run_in(Ns::Pod, || {
            // A kernel without tcx (before 6.6) refuses the query: nothing is attached that way.
            let programs = aya::programs::SchedClassifier::query_tcx(
                "eth0",
                aya::programs::TcAttachType::Ingress,
            )
            .map(|(_, programs)| programs)
            .unwrap_or_default();
            programs
                .iter()
                .map(|p| p.name_as_str().unwrap_or("?").to_string())
                .collect::<Vec<_>>()
        })
        .expect("into the pod");
    let filters = pod_filters(topo);
    names.extend(
        filters
            .split_whitespace()
            .filter(|w| w.contains("udp_director_fp"))
            .map(|w| w.to_string()),
    );
    names
}

#[test]
fn the_clsact_hook_of_older_kernels_carries_and_detaches_like_tcx() {
    let topo = topology();
    let s = Session::new(&topo);
    let fp = start_hooked(&topo, &["eth0"], 16, Hook::Clsact);
    assert_eq!(fp.describe(), "clsact on eth0");
    for (key, rewrite) in legs(&topo) {
        fp.insert(key, rewrite).expect("insert");
    }
    let filters = pod_filters(&topo);
    assert!(
        filters.contains("udp_director_fp"),
        "no clsact filter: {filters}"
    );
    s.client_sends(b"\x90carried");
    assert_eq!(receive(&s.target, "target").0, b"\x90carried");
    s.target_sends(b"\x90back");
    assert_eq!(receive(&s.client, "client").0, b"\x90back");

    stop(&topo, fp);
    assert_eq!(attached(&topo), Vec::<String>::new(), "still attached");
    s.client_sends(b"\x90up");
    assert_eq!(receive(&s.data, "pod data socket").0, b"\x90up");
    assert_silent(&s.target, "target");
}

#[test]
fn dropping_the_handle_detaches_the_program() {
    let topo = topology();
    let s = Session::new(&topo);
    // Named twice, attached once.
    let fp = start_on(&topo, &["eth0", "eth0"], 16);
    assert!(
        ["tcx on eth0", "clsact on eth0"].contains(&fp.describe().as_str()),
        "{}",
        fp.describe()
    );
    for (key, rewrite) in legs(&topo) {
        fp.insert(key, rewrite).expect("insert");
    }
    assert_eq!(attached(&topo), vec!["udp_director_fp".to_string()]);
    s.client_sends(b"\x90carried");
    assert_eq!(receive(&s.target, "target").0, b"\x90carried");

    stop(&topo, fp);
    assert_eq!(attached(&topo), Vec::<String>::new(), "still attached");
    let filters = pod_filters(&topo);
    assert!(
        !filters.contains("udp_director_fp"),
        "clsact filter left: {filters}"
    );
    s.client_sends(b"\x90up");
    assert_eq!(receive(&s.data, "pod data socket").0, b"\x90up");
    assert_silent(&s.target, "target");
}

#[test]
fn a_program_left_by_a_crashed_run_is_removed_at_start() {
    use aya::programs::tc::{self, NlOptions, TcAttachOptions};
    use aya::programs::{SchedClassifier, TcAttachType};

    let topo = topology();
    // What a crashed run on a kernel without tcx leaves: our program as a clsact filter,
    // which outlives its process.
    topo.run_in(Ns::Pod, || {
        let object = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/fast_path.bpf.o"));
        let mut ebpf = aya::Ebpf::load(object).expect("load");
        let program: &mut SchedClassifier = ebpf
            .program_mut("udp_director_fp")
            .expect("program")
            .try_into()
            .expect("classifier");
        program.load().expect("load program");
        tc::qdisc_add_clsact("eth0").expect("clsact");
        let link = program
            .attach_with_options(
                "eth0",
                TcAttachType::Ingress,
                TcAttachOptions::Netlink(NlOptions::default()),
            )
            .expect("attach");
        // Keep the filter: the link is forgotten, as a crash would.
        let link = program.take_link(link).expect("take link");
        std::mem::forget(link);
    })
    .expect("into the pod");
    let filters = pod_filters(&topo);
    assert!(
        filters.contains("udp_director_fp"),
        "stale filter set up: {filters}"
    );

    let fp = start(&topo, 16);
    let filters = pod_filters(&topo);
    assert!(
        !filters.contains("udp_director_fp"),
        "stale filter left: {filters}"
    );
    assert!(fp.describe().contains("eth0"));
    stop(&topo, fp);
}

#[test]
fn the_map_holds_two_legs_per_session_and_then_is_full() {
    let topo = topology();
    let fp = start(&topo, 1);
    let leg = |port: u16| LegKey {
        peer: at(&topo, Ns::Client, port),
        local_port: DATA_PORT,
    };
    let [(_, rewrite), _] = legs(&topo);
    fp.insert(leg(1), rewrite).expect("first leg");
    fp.insert(leg(2), rewrite).expect("second leg");
    assert!(matches!(
        fp.insert(leg(3), rewrite),
        Err(FastPathError::Full)
    ));
    assert_eq!(fp.legs(), 2);
    assert!(fp.remove(leg(1)).is_some());
    fp.insert(leg(3), rewrite).expect("room again");
    assert_eq!(fp.legs(), 2);
    stop(&topo, fp);
}

#[test]
fn an_interface_that_does_not_exist_is_an_interface_error() {
    match FastPath::start(&["udfp-nope0".to_string()], 16, &matchers()) {
        Err(FastPathError::Interface { interface, .. }) => assert_eq!(interface, "udfp-nope0"),
        Err(e) => panic!("expected an interface error, got {e}"),
        Ok(_) => panic!("started on an interface that does not exist"),
    }
}

/// The child's marker: set, this test is the process without capabilities.
const UNPRIVILEGED: &str = "UDFP_TEST_UNPRIVILEGED_CHILD";

#[test]
fn without_the_capabilities_start_is_refused_as_permission() {
    if std::env::var_os(UNPRIVILEGED).is_some() {
        match FastPath::start(&["lo".to_string()], 16, &matchers()) {
            Err(FastPathError::Permission(reason)) => println!("PERMISSION: {reason}"),
            Err(e) => panic!(
                "expected a permission error, got {} ({e})",
                e.reason().as_str()
            ),
            Ok(fp) => panic!("started without capabilities: {}", fp.describe()),
        }
        return;
    }
    // This test binary again, as root with an empty bounding set: no capability at all.
    let exe = std::env::current_exe().expect("test binary");
    let out = Command::new("setpriv")
        .args(["--bounding-set=-all", "--inh-caps=-all", "--"])
        .arg(exe)
        .args([
            "without_the_capabilities_start_is_refused_as_permission",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(UNPRIVILEGED, "1")
        .output()
        .expect("setpriv (util-linux)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("PERMISSION: "),
        "child: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}
