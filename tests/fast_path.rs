//! The kernel fast path end to end (SPEC §8): the real director, built with the `fast-path`
//! feature, in a pod namespace whose `eth0` it attaches its TC program to; a client and game
//! servers in namespaces of their own, joined through a router namespace (`testkit::netns`).
//!
//! What each test proves is SPEC §3's behaviour with the kernel carrying the datagrams:
//! after the first exchange the daemon's sockets see nothing of a session (its counters say
//! the kernel carried them); a reset and a proved move take the old legs out first; the idle
//! timeout counts what the kernel carried; control frames, tokens and resumes still reach
//! user space; checksums hold with offload off; totals on `/metrics` are the same with the
//! fast path on and off; without the capabilities the director says why and runs as before.
//! Needs root (CAP_SYS_ADMIN, CAP_NET_ADMIN, CAP_BPF); without it the tests fail and say so.
#![cfg(feature = "fast-path")]

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::time::Duration;

use tokio::time::Instant;

use testkit::client::{challenge_nonce, response};
use testkit::netns::{LEAF_DEV, Ns, Topology};
use testkit::{ChildDirector, EchoServer, Scrape, eventually, query_token, yaml};

const BIN: &str = env!("CARGO_BIN_EXE_udp-director");
const FAST_PATH: &str = "fastPath: {enabled: true, interfaces: [eth0]}\n";
const DEFAULT_MAGIC: &[u8] = b"\xff\xff\xff\xffRESET";

fn topology() -> Topology {
    Topology::new().unwrap_or_else(|e| {
        panic!("the fast path tests build network namespaces and need root here: {e}")
    })
}

/// An echo server in the target namespace.
fn echo_in_target(topo: &Topology) -> EchoServer {
    topo.echo_in(Ns::Target).unwrap()
}

/// The director in the pod on `extra` and one static mapping per `(name, backend)`.
fn director(topo: &Topology, extra: &str, backends: &[(&str, SocketAddr)]) -> ChildDirector {
    let mappings: Vec<String> = backends
        .iter()
        .map(|(name, addr)| yaml::static_mapping(name, *addr))
        .collect();
    let yaml = topo.director_yaml(&format!("accessLog: false\n{extra}"), &mappings);
    topo.spawn_director(Path::new(BIN), &yaml)
        .unwrap_or_else(|e| panic!("the director in the pod namespace: {e}\n{yaml}"))
}

fn scrape(topo: &Topology, d: &ChildDirector) -> Scrape {
    topo.scrape(Ns::Pod, d.admin).unwrap()
}

fn metric(topo: &Topology, d: &ChildDirector, series: &str) -> f64 {
    scrape(topo, d).value(series)
}

/// Waits (polling /metrics) until `series` reads `want`; panics with the scrape otherwise.
fn await_metric(topo: &Topology, d: &ChildDirector, series: &str, want: f64) {
    if !eventually(Duration::from_secs(10), || metric(topo, d, series) == want) {
        panic!("{series} is not {want}:\n{}", scrape(topo, d).text());
    }
}

fn kernel_carried(topo: &Topology, d: &ChildDirector) -> (f64, f64) {
    let m = scrape(topo, d);
    (
        m.value("udp_director_fast_path_datagrams_total{direction=\"client_to_target\"}"),
        m.value("udp_director_fast_path_datagrams_total{direction=\"target_to_client\"}"),
    )
}

/// A token for `mapping`, asked from the client namespace.
fn token(topo: &Topology, d: &ChildDirector, mapping: &str) -> Vec<u8> {
    let query = d.query;
    let request = format!(r#"{{"resourceType":"{mapping}"}}"#);
    topo.run_in(Ns::Client, || query_token(query, &request))
        .unwrap()
        .unwrap_or_else(|e| panic!("a token from the client namespace: {e}"))
        .token
        .into_bytes()
}

/// A UDP socket in the client namespace with a short read timeout.
fn client_socket(topo: &Topology) -> UdpSocket {
    let s = topo.socket_in(Ns::Client, 0).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(1_500)))
        .unwrap();
    s
}

/// `n` round trips of 64 B from `client` through the director, each echoed back intact
/// from the data port before the next is sent.
fn play(client: &UdpSocket, d: &ChildDirector, tag: &str, n: usize) {
    let mut buf = [0u8; 256];
    for i in 0..n {
        let payload = format!("{tag}{i:06}{}", "x".repeat(64 - tag.len() - 6));
        client.send_to(payload.as_bytes(), d.data).unwrap();
        let (len, from) = client
            .recv_from(&mut buf)
            .unwrap_or_else(|e| panic!("{tag} round trip {i} of {n} did not come back: {e}"));
        assert_eq!(from, d.data, "replies come from the data port");
        assert_eq!(&buf[..len], payload.as_bytes(), "{tag} round trip {i}");
    }
}

/// Opens a session for `mapping` from `client` (its token, then one round trip: the target
/// has answered, so the session is established and goes into the kernel).
fn open(topo: &Topology, d: &ChildDirector, client: &UdpSocket, mapping: &str) -> Vec<u8> {
    let token = token(topo, d, mapping);
    client.send_to(&token, d.data).unwrap();
    play(client, d, "open", 1);
    token
}

/// Nothing arrives on `socket` within `within` (what did arrive is in the panic).
fn silent(socket: &UdpSocket, within: Duration) {
    socket.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 256];
    if let Ok((n, from)) = socket.recv_from(&mut buf) {
        panic!(
            "expected nothing, got {:?} from {from}",
            String::from_utf8_lossy(&buf[..n])
        );
    }
    socket
        .set_read_timeout(Some(Duration::from_millis(1_500)))
        .unwrap();
}

/// The programs on the pod's `eth0` ingress: tcx links (which bpftool 7.1 does not list) and
/// clsact filters.
fn attached(topo: &Topology) -> Vec<String> {
    let mut names = topo
        .run_in(Ns::Pod, || {
            let (_, programs) = aya::programs::SchedClassifier::query_tcx(
                LEAF_DEV,
                aya::programs::TcAttachType::Ingress,
            )
            .expect("query tcx");
            programs
                .iter()
                .map(|p| p.name_as_str().unwrap_or("?").to_string())
                .collect::<Vec<_>>()
        })
        .unwrap();
    let out = topo
        .exec_in(
            Ns::Pod,
            &["tc", "filter", "show", "dev", LEAF_DEV, "ingress"],
        )
        .unwrap();
    names.extend(
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter(|w| w.contains("udp_director_fp"))
            .map(str::to_string),
    );
    names
}

/// The director in the pod with the fast path's own log lines (`RUST_LOG`) kept.
fn director_logging(topo: &Topology, extra: &str, backend: SocketAddr) -> ChildDirector {
    let yaml = topo.director_yaml(
        &format!("accessLog: false\n{extra}"),
        &[yaml::static_mapping("echo", backend)],
    );
    let dir = testkit::TempDir::new("fastpath-logs").unwrap();
    let config = dir.path.join("config.yaml");
    std::fs::write(&config, &yaml).unwrap();
    ChildDirector::spawn_command(
        topo.command_in(Ns::Pod, BIN),
        dir,
        &[std::ffi::OsStr::new("--config"), config.as_os_str()],
        &[(
            "RUST_LOG",
            "warn,udp_director::app=info,udp_director::shell::fast_path=info",
        )],
    )
    .unwrap_or_else(|e| panic!("the director in the pod namespace: {e}\n{yaml}"))
}

#[test]
fn established_sessions_are_carried_by_the_kernel_with_offload_on_and_off() {
    let topo = topology();
    let echo = echo_in_target(&topo);
    let d = director(
        &topo,
        &format!("adminBindAddress: 127.0.0.1\n{FAST_PATH}"),
        &[("echo", echo.addr)],
    );
    assert_eq!(metric(&topo, &d, "udp_director_fast_path_enabled"), 1.0);
    assert_eq!(attached(&topo), ["udp_director_fp"]);

    for (round, offload) in [(1.0, true), (2.0, false)] {
        topo.set_tx_offload(offload).unwrap();
        let client = client_socket(&topo);
        open(&topo, &d, &client, "echo");
        await_metric(&topo, &d, "udp_director_fast_path_sessions", round);
        let user_before = user_space_datagrams(&scrape(&topo, &d));
        let kernel_before = kernel_carried(&topo, &d);
        play(&client, &d, "play", 200);
        // The workers publish counters every 100 ms; the kernel's are read then too.
        eventually(Duration::from_secs(5), || {
            kernel_carried(&topo, &d).0 >= kernel_before.0 + 200.0
        });
        let (to_target, to_client) = kernel_carried(&topo, &d);
        assert_eq!(
            (to_target - kernel_before.0, to_client - kernel_before.1),
            (200.0, 200.0),
            "the kernel carried every datagram after the first exchange (offload {offload})"
        );
        assert_eq!(
            user_space_datagrams(&scrape(&topo, &d)),
            user_before,
            "the daemon's sockets saw none of them"
        );
        for ns in [Ns::Client, Ns::Target] {
            assert_eq!(
                topo.udp_in_csum_errors(ns).unwrap(),
                0,
                "checksum errors at the receivers in {ns} (offload {offload})"
            );
        }
    }
    // `/sessions` counts what the kernel carried with what the daemon did (its admin port is
    // on the pod's loopback here: operator views are open to loopback callers).
    let admin = d.admin;
    let (status, body) = topo
        .run_in(Ns::Pod, || testkit::http_get(admin, "/sessions"))
        .unwrap()
        .unwrap();
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let mut seen: Vec<(u64, u64)> = v["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["datagramsToTarget"].as_u64().unwrap(),
                s["datagramsToClient"].as_u64().unwrap(),
            )
        })
        .collect();
    seen.sort();
    assert_eq!(seen, [(201, 201), (201, 201)], "{body}");
    // 2 × (1 token + 201 game datagrams) reached the echo: the tokens were not forwarded.
    assert_eq!(echo.received(), 2 * 201);
    let m = scrape(&topo, &d);
    assert_eq!(
        m.sum("udp_director_datagrams_total"),
        2.0 * 2.0 * 201.0,
        "datagrams_total counts the kernel's too:\n{}",
        m.text()
    );
}

/// Datagrams the daemon's sockets carried: every datagram proxied minus the kernel's.
fn user_space_datagrams(m: &Scrape) -> f64 {
    m.sum("udp_director_datagrams_total") - m.sum("udp_director_fast_path_datagrams_total")
}

#[test]
fn a_reset_mid_stream_leaves_nothing_of_the_old_target_reaching_the_client() {
    let topo = topology();
    // The old target is a socket the test answers by hand, so it can speak after the switch.
    let old = topo.socket_in(Ns::Target, 0).unwrap();
    old.set_read_timeout(Some(Duration::from_millis(1_500)))
        .unwrap();
    let new = echo_in_target(&topo);
    let d = director(
        &topo,
        FAST_PATH,
        &[("old", old.local_addr().unwrap()), ("new", new.addr)],
    );
    let client = client_socket(&topo);
    let token = token(&topo, &d, "old");
    client.send_to(&token, d.data).unwrap();
    // Round trips through the old target, answered by the test.
    let mut buf = [0u8; 256];
    let mut director_side = None;
    for i in 0..20 {
        let payload = format!("old{i:03}");
        client.send_to(payload.as_bytes(), d.data).unwrap();
        let (n, from) = old.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], payload.as_bytes());
        director_side = Some(from);
        old.send_to(&buf[..n], from).unwrap();
        let (n, _) = client.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], payload.as_bytes());
    }
    await_metric(&topo, &d, "udp_director_fast_path_sessions", 1.0);
    let carried = kernel_carried(&topo, &d);
    assert!(
        carried.0 >= 18.0,
        "the kernel carried the old session: {carried:?}"
    );
    // The switch: `[magic][token]` for the new target from the same client.
    let reset = [DEFAULT_MAGIC, &token_for(&topo, &d, "new")[..]].concat();
    client.send_to(&reset, d.data).unwrap();
    eventually(Duration::from_secs(5), || {
        metric(&topo, &d, "udp_director_session_resets_total") == 1.0
    });
    // The old target keeps talking to the address the session used: none of it may reach
    // the client (its leg left the kernel before the reset was carried out).
    let from_old = director_side.unwrap();
    for i in 0..10 {
        old.send_to(format!("stale{i}").as_bytes(), from_old)
            .unwrap();
    }
    play(&client, &d, "new", 50);
    silent(&client, Duration::from_millis(300));
    eventually(Duration::from_secs(5), || {
        metric(
            &topo,
            &d,
            "udp_director_datagrams_dropped_total{reason=\"unknown_source\"}",
        ) == 10.0
    });
    assert_eq!(
        metric(
            &topo,
            &d,
            "udp_director_datagrams_dropped_total{reason=\"unknown_source\"}"
        ),
        10.0,
        "user space dropped what the old target sent after the switch"
    );
    // The new target answered: the session is back in the kernel, towards it.
    await_metric(&topo, &d, "udp_director_fast_path_sessions", 1.0);
    let after = kernel_carried(&topo, &d);
    assert!(
        after.0 >= carried.0 + 45.0,
        "the kernel carries the session to its new target: {carried:?} → {after:?}"
    );
}

fn token_for(topo: &Topology, d: &ChildDirector, mapping: &str) -> Vec<u8> {
    token(topo, d, mapping)
}

#[test]
fn the_idle_timeout_counts_what_the_kernel_carried() {
    let topo = topology();
    let echo = echo_in_target(&topo);
    let d = director(
        &topo,
        &format!("sessionTimeoutSeconds: 2\n{FAST_PATH}"),
        &[("echo", echo.addr)],
    );
    let client = client_socket(&topo);
    open(&topo, &d, &client, "echo");
    await_metric(&topo, &d, "udp_director_fast_path_sessions", 1.0);
    // Twice the idle timeout of traffic the daemon never sees: the session must live on.
    let until = Instant::now() + Duration::from_secs(4);
    let mut rounds = 0;
    let mut pacer = testkit::Pacer::new(Duration::from_millis(50));
    while Instant::now() < until {
        play(&client, &d, "keep", 1);
        rounds += 1;
        pacer.tick();
    }
    let m = scrape(&topo, &d);
    assert_eq!(
        m.value("udp_director_sessions_closed_total{reason=\"idle\"}"),
        0.0,
        "reaped while the kernel carried its datagrams ({rounds} round trips):\n{}",
        m.text()
    );
    assert_eq!(m.value("udp_director_fast_path_sessions"), 1.0);
    // Silence: reaped after its timeout, its legs out of the map.
    await_metric(
        &topo,
        &d,
        "udp_director_sessions_closed_total{reason=\"idle\"}",
        1.0,
    );
    await_metric(&topo, &d, "udp_director_fast_path_sessions", 0.0);
    // Its address has no session now: a datagram goes up and is dropped, not carried.
    client.send_to(b"after the reap", d.data).unwrap();
    silent(&client, Duration::from_millis(300));
}

#[test]
fn control_frames_tokens_and_resumes_reach_user_space_with_a_custom_magic() {
    let topo = topology();
    let echo = echo_in_target(&topo);
    let magic = b"\xab\xcd\xef\x01\x02\x03";
    let d = director(
        &topo,
        &format!("controlPacketMagicBytes: ABCDEF010203\n{FAST_PATH}"),
        &[("echo", echo.addr)],
    );
    let client = client_socket(&topo);
    let token = open(&topo, &d, &client, "echo");
    await_metric(&topo, &d, "udp_director_fast_path_sessions", 1.0);
    let echoed = echo.received();
    let mut buf = [0u8; 256];
    // A PING is answered by the daemon (the kernel would have carried it to the game).
    let mut ping = magic.to_vec();
    ping.extend_from_slice(&[0x03, 1, 2, 3, 4, 5, 6, 7, 8]);
    ping.resize(magic.len() + 25, 0);
    client.send_to(&ping, d.data).unwrap();
    let (n, _) = client.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..magic.len()], magic, "a PONG");
    assert_eq!(buf[magic.len()], 0x04, "a PONG");
    assert_eq!(n, magic.len() + 25);
    // `[magic][token]` and the bare token on the session holding it: keepalives, forwarded
    // nowhere.
    client
        .send_to(&[&magic[..], &token[..]].concat(), d.data)
        .unwrap();
    client.send_to(&token, d.data).unwrap();
    // Game data that starts like the magic but not with all of it is game data: carried.
    let mut lookalike = magic[..5].to_vec();
    lookalike.extend_from_slice(b" game data");
    client.send_to(&lookalike, d.data).unwrap();
    let (n, _) = client.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], &lookalike[..]);
    assert_eq!(
        echo.received(),
        echoed + 1,
        "the keepalives reached the game server"
    );
    eventually(Duration::from_secs(5), || {
        metric(&topo, &d, "udp_director_pings_total{outcome=\"answered\"}") == 1.0
            && metric(&topo, &d, "udp_director_tokens_redeemed_total") == 3.0
    });
    let m = scrape(&topo, &d);
    assert_eq!(
        m.value("udp_director_pings_total{outcome=\"answered\"}"),
        1.0,
        "{}",
        m.text()
    );
    assert_eq!(
        m.value("udp_director_tokens_redeemed_total"),
        3.0,
        "the open and both keepalives were judged by the daemon"
    );
}

#[test]
fn a_datagram_with_ip_options_goes_up_and_is_forwarded_by_the_daemon() {
    let topo = topology();
    let echo = echo_in_target(&topo);
    let d = director(&topo, FAST_PATH, &[("echo", echo.addr)]);
    let client = client_socket(&topo);
    open(&topo, &d, &client, "echo");
    await_metric(&topo, &d, "udp_director_fast_path_sessions", 1.0);
    play(&client, &d, "kern", 10);
    let to_target = "udp_director_datagrams_total{direction=\"client_to_target\"}";
    eventually(Duration::from_secs(5), || {
        kernel_carried(&topo, &d).0 == 10.0
    });
    let (kernel_before, all_before) = (kernel_carried(&topo, &d), metric(&topo, &d, to_target));
    // The same client address, with three NOPs in its IP header: the program does not parse
    // options, so the datagram goes up and the daemon forwards it like any other.
    let (SocketAddr::V4(from), SocketAddr::V4(to)) = (client.local_addr().unwrap(), d.data) else {
        panic!("IPv4 topology")
    };
    topo.run_in(Ns::Client, || {
        testkit::forge::Forger::namespaced()?.send_with_options(
            from,
            to,
            &[1, 1, 1, 0],
            b"with IP options",
        )
    })
    .unwrap()
    .unwrap();
    let mut buf = [0u8; 256];
    let (n, _) = client.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"with IP options", "echoed back");
    eventually(Duration::from_secs(5), || {
        metric(&topo, &d, to_target) == all_before + 1.0
    });
    assert_eq!(metric(&topo, &d, to_target), all_before + 1.0);
    assert_eq!(
        kernel_carried(&topo, &d).0,
        kernel_before.0,
        "not carried by the kernel"
    );
}

#[test]
fn only_a_proved_address_takes_the_session_from_the_kernel() {
    let topo = topology();
    let echo = echo_in_target(&topo);
    let d = director(&topo, FAST_PATH, &[("echo", echo.addr)]);
    let player = client_socket(&topo);
    let token = open(&topo, &d, &player, "echo");
    await_metric(&topo, &d, "udp_director_fast_path_sessions", 1.0);
    // The same token from another address (a rebinding or a forger): challenged by the
    // daemon, and meanwhile the kernel keeps carrying the player.
    let other = client_socket(&topo);
    other.send_to(&token, d.data).unwrap();
    let mut buf = [0u8; 256];
    let (n, _) = other.recv_from(&mut buf).unwrap();
    let nonce = challenge_nonce(&buf[..n]).expect("a CHALLENGE");
    play(&player, &d, "still", 20);
    // The other address proves it receives there: the session is its. On the player's
    // worker it moves, carried at once; on another worker (the kernel hashes addresses to
    // workers) a session opens there and the player's closes as `moved`, carried once its
    // target has answered.
    other.send_to(&response(&nonce, &token), d.data).unwrap();
    let moved = || {
        let m = scrape(&topo, &d);
        m.value("udp_director_sessions_moved_total")
            + m.value("udp_director_sessions_closed_total{reason=\"moved\"}")
    };
    assert!(
        eventually(Duration::from_secs(5), || moved() == 1.0),
        "the session did not move:\n{}",
        scrape(&topo, &d).text()
    );
    let before = kernel_carried(&topo, &d);
    play(&other, &d, "moved", 20);
    eventually(Duration::from_secs(5), || {
        kernel_carried(&topo, &d).0 >= before.0 + 19.0
    });
    let carried = kernel_carried(&topo, &d).0 - before.0;
    assert!(
        (19.0..=20.0).contains(&carried),
        "the kernel carries the proved address: {carried}"
    );
    // The old address is not carried any more: its datagrams go up and find no session.
    player.send_to(b"from the old address", d.data).unwrap();
    silent(&player, Duration::from_millis(300));
    assert_eq!(metric(&topo, &d, "udp_director_fast_path_sessions"), 1.0);
}

#[test]
fn totals_are_the_same_with_the_fast_path_on_and_off_and_exit_detaches() {
    let topo = topology();
    let echo = echo_in_target(&topo);
    let mut totals = Vec::new();
    for extra in ["", FAST_PATH] {
        let mut d = director_logging(&topo, &format!("drainSeconds: 1\n{extra}"), echo.addr);
        let client = client_socket(&topo);
        open(&topo, &d, &client, "echo");
        play(&client, &d, "same", 100);
        let want = 2.0 * 101.0;
        eventually(Duration::from_secs(5), || {
            scrape(&topo, &d).sum("udp_director_datagrams_total") >= want
        });
        let m = scrape(&topo, &d);
        totals.push((
            m.sum("udp_director_datagrams_total"),
            m.sum("udp_director_datagram_bytes_total"),
            m.sum("udp_director_fast_path_datagrams_total"),
        ));
        d.terminate().unwrap();
        assert!(d.wait_exit(Duration::from_secs(20)).is_some(), "exits");
        // Everything it printed, up to its last line.
        let last = if extra.is_empty() {
            "drain over"
        } else {
            "kernel fast path detached"
        };
        let mut logs: Vec<String> = Vec::new();
        eventually(Duration::from_secs(5), || {
            logs.extend(d.logs.try_iter());
            logs.iter().any(|l| l.contains(last))
        });
        if !extra.is_empty() {
            assert!(
                logs.iter()
                    .any(|l| l.contains("kernel fast path detached")
                        && l.contains("\"legs_left\":0")),
                "the drain took every leg out before the program was detached:\n{}\n{}",
                d.startup.join("\n"),
                logs.join("\n")
            );
        }
        assert!(
            attached(&topo).is_empty(),
            "left on eth0: {:?}",
            attached(&topo)
        );
    }
    assert_eq!(totals[0].0, totals[1].0, "datagrams: {totals:?}");
    assert_eq!(totals[0].1, totals[1].1, "bytes: {totals:?}");
    assert_eq!(totals[0].2, 0.0);
    assert_eq!(
        totals[1].2, 200.0,
        "the kernel carried all but the first exchange"
    );
}

#[test]
fn without_the_capabilities_the_director_says_why_and_runs_in_user_space() {
    let topo = topology();
    let echo = echo_in_target(&topo);
    let yaml = topo.director_yaml(
        &format!("accessLog: false\n{FAST_PATH}"),
        &[yaml::static_mapping("echo", echo.addr)],
    );
    // Root without CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN and CAP_PERFMON, as a restricted
    // pod is.
    let mut cmd = topo.command_in(Ns::Pod, "setpriv");
    cmd.args([
        "--bounding-set=-bpf,-net_admin,-sys_admin,-perfmon",
        "--inh-caps=-all",
        "--",
        BIN,
    ]);
    let d = ChildDirector::spawn_command_yaml(
        cmd,
        testkit::TempDir::new("fastpath-nocaps").unwrap(),
        &yaml,
    )
    .unwrap_or_else(|e| panic!("the director without capabilities: {e}"));
    let m = scrape(&topo, &d);
    assert_eq!(m.value("udp_director_fast_path_enabled"), 0.0);
    assert_eq!(
        m.value("udp_director_fast_path_failures_total{reason=\"permission\"}"),
        1.0,
        "{}",
        m.text()
    );
    let logs: Vec<String> = d.startup.iter().cloned().chain(d.logs.try_iter()).collect();
    assert_eq!(
        logs.iter()
            .filter(|l| l.contains("kernel fast path off"))
            .count(),
        1,
        "one line says why:\n{}",
        logs.join("\n")
    );
    let admin = d.admin;
    let (status, _) = topo
        .run_in(Ns::Pod, || testkit::http_get(admin, "/readyz"))
        .unwrap()
        .unwrap();
    assert_eq!(status, 200, "ready as before");
    let client = client_socket(&topo);
    open(&topo, &d, &client, "echo");
    play(&client, &d, "user", 50);
    assert!(attached(&topo).is_empty());
}
