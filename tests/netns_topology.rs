//! The director as a pod sees it: client, pod and game server in network namespaces of their
//! own, joined through a router namespace by veth pairs (`testkit::netns`), the pod's
//! interface named `eth0`. Datagrams cross real devices and a routing hop, which loopback
//! never does: the topology the kernel fast path (SPEC §8) is tested and measured on.
//!
//! Runs without the `fast-path` feature: the user-space path through this topology, with TX
//! checksum offload on (the veth default) and off at both ends of every veth, where every
//! receiver verifies every checksum. Needs root (CAP_SYS_ADMIN, CAP_NET_ADMIN); without it
//! the test fails and says so.

use std::net::UdpSocket;
use std::path::Path;
use std::time::Duration;

use testkit::netns::{LEAF_DEV, Ns, Topology};
use testkit::{ChildDirector, EchoServer, eventually, query_token, yaml};

const BIN: &str = env!("CARGO_BIN_EXE_udp-director");

/// Datagrams per session, each one a round trip that must come back.
const ROUND_TRIPS: usize = 100;

fn topology() -> Topology {
    Topology::new().unwrap_or_else(|e| {
        panic!("the netns tests build network namespaces and need root here: {e}")
    })
}

/// An echo server in the target namespace.
fn echo_in_target(topo: &Topology) -> EchoServer {
    topo.echo_in(Ns::Target).unwrap()
}

/// The director in the pod with one static endpoint, the echo in the target namespace.
fn director_in_pod(topo: &Topology, echo: &EchoServer) -> ChildDirector {
    let yaml = topo.director_yaml(
        "accessLog: false\n",
        &[yaml::static_mapping("echo", echo.addr)],
    );
    topo.spawn_director(Path::new(BIN), &yaml)
        .unwrap_or_else(|e| panic!("the director in the pod namespace: {e}\n{yaml}"))
}

/// From the client namespace: a token over the query port, then [`ROUND_TRIPS`] datagrams
/// of 64 B, each echoed back through the director before the next is sent. Panics on the
/// first datagram that does not come back intact from the director's data port.
fn play_session(topo: &Topology, director: &ChildDirector) {
    let query = director.query;
    let token = topo
        .run_in(Ns::Client, || {
            query_token(query, r#"{"resourceType":"echo"}"#)
        })
        .unwrap()
        .unwrap_or_else(|e| panic!("a token from the client namespace: {e}"))
        .token;
    let client: UdpSocket = topo.socket_in(Ns::Client, 0).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    client.send_to(token.as_bytes(), director.data).unwrap();
    let mut buf = [0u8; 256];
    for i in 0..ROUND_TRIPS {
        let payload = format!("{i:04} {}", "x".repeat(59));
        assert_eq!(payload.len(), 64);
        client.send_to(payload.as_bytes(), director.data).unwrap();
        let (n, from) = client
            .recv_from(&mut buf)
            .unwrap_or_else(|e| panic!("round trip {i} of {ROUND_TRIPS} did not come back: {e}"));
        assert_eq!(from, director.data, "replies come from the data port");
        assert_eq!(&buf[..n], payload.as_bytes(), "round trip {i}");
    }
}

#[test]
fn a_session_through_the_pod_namespace_with_checksum_offload_on_and_off() {
    let topo = topology();
    let echo = echo_in_target(&topo);
    let director = director_in_pod(&topo, &echo);
    assert_eq!(director.query.ip(), topo.addr(Ns::Pod));
    assert_eq!(director.data.ip(), topo.addr(Ns::Pod));
    assert!(
        topo.tx_offload(Ns::Pod, LEAF_DEV).unwrap(),
        "a veth starts with TX checksum offload on"
    );

    // Offload on: checksums left partial by the sender are trusted along the way.
    play_session(&topo, &director);
    assert_eq!(
        echo.received(),
        ROUND_TRIPS as u64,
        "the token is not forwarded"
    );
    let forwarded = topo.forwarded(Ns::Router).unwrap();
    assert!(
        forwarded >= 4 * ROUND_TRIPS as u64,
        "every round trip crosses the router four times (client→pod→target→pod→client): {forwarded}"
    );

    // Offload off at both ends of every veth: every checksum is computed by its sender and
    // verified by its receiver.
    topo.set_tx_offload(false).unwrap();
    for (ns, dev) in [
        (Ns::Client, LEAF_DEV),
        (Ns::Pod, LEAF_DEV),
        (Ns::Target, LEAF_DEV),
        (Ns::Router, "to-client"),
        (Ns::Router, "to-pod"),
        (Ns::Router, "to-target"),
    ] {
        assert!(
            !topo.tx_offload(ns, dev).unwrap(),
            "TX offload off at {dev} in {ns}"
        );
    }
    play_session(&topo, &director);
    assert_eq!(echo.received(), 2 * ROUND_TRIPS as u64);
    for ns in [Ns::Client, Ns::Pod, Ns::Target] {
        assert_eq!(
            topo.udp_in_csum_errors(ns).unwrap(),
            0,
            "UDP checksum errors at the receivers in {ns}"
        );
    }

    // The director's own account (its workers publish counters in batches: polled until
    // they show both sessions): two sessions, every datagram proxied both ways, none dropped.
    let scrape = || topo.scrape(Ns::Pod, director.admin).unwrap();
    let all_counted = |m: &testkit::Scrape| {
        m.value("udp_director_sessions_created_total") >= 2.0
            && m.sum("udp_director_datagrams_total") >= (4 * ROUND_TRIPS) as f64
    };
    eventually(Duration::from_secs(10), || all_counted(&scrape()));
    let m = scrape();
    assert_eq!(
        m.value("udp_director_sessions_created_total"),
        2.0,
        "{}",
        m.text()
    );
    assert_eq!(
        m.sum("udp_director_datagrams_total"),
        (4 * ROUND_TRIPS) as f64,
        "{}",
        m.text()
    );
    assert_eq!(
        m.sum("udp_director_datagrams_dropped_total"),
        0.0,
        "{}",
        m.text()
    );
}
