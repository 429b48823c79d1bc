//! Every per-IP limit counts an IPv6 client per `limits.ipv6PrefixLength` (SPEC §2; default
//! 64): many addresses of one /64 — or of one /48 when so configured — are one client, so a
//! customer cannot walk past `maxSessionsPerClientIp` or the query rate with fresh addresses.
//!
//! Runs in a network namespace of its own (root has CAP_NET_ADMIN here): addresses of
//! 2001:db8::/32 are put on its loopback and the director listens on `::`.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket};
use std::process::Command;
use std::time::Duration;

use common::{metric, start};
use testkit::EchoServer;
use udp_director::config::ValidConfig;

/// Client addresses the namespace's loopback carries.
const ADDRS: &[&str] = &[
    "2001:db8:1:0::1",
    "2001:db8:1:0::2",
    "2001:db8:1:0::3",
    "2001:db8:1:1::1",
    "2001:db8:1:2::1",
    "2001:db8:2:0::1",
];

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Runs `body` on a thread in a fresh network namespace with `ADDRS` on its loopback. Every
/// thread and socket the body creates (the director's included) lives in that namespace.
fn in_namespace(body: impl FnOnce() + Send + 'static) {
    std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
            .expect("a network namespace of the test's own (needs CAP_SYS_ADMIN)");
        let ip_cmd = |args: &[&str]| {
            let status = Command::new("ip").args(args).status().expect("iproute2");
            assert!(status.success(), "ip {args:?}");
        };
        ip_cmd(&["link", "set", "lo", "up"]);
        for a in ADDRS {
            ip_cmd(&[
                "-6",
                "addr",
                "add",
                &format!("{a}/128"),
                "dev",
                "lo",
                "nodad",
            ]);
        }
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
            .block_on(async move { tokio::task::spawn_blocking(body).await.unwrap() });
    })
    .join()
    .expect("the test body");
}

fn director_config(backend: &EchoServer, extra: &str) -> ValidConfig {
    let text = format!(
        "bindAddress: \"::\"\nqueryPort: 0\ndataPort: 0\nadminPort: 0\naccessLog: false\n\
         tokenClientBinding: none\n{extra}\nresourceQueryMapping:\n  echo:\n    static:\n      \
         - {{name: b0, address: 127.0.0.1, port: {}}}\n",
        backend.addr.port()
    );
    ValidConfig::from_yaml(&text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

/// One query from `from` (a TCP connection bound to that address): the answer line.
fn query_from(from: IpAddr, query: SocketAddr) -> String {
    let socket = socket2::Socket::new(socket2::Domain::IPV6, socket2::Type::STREAM, None).unwrap();
    socket.bind(&SocketAddr::new(from, 0).into()).unwrap();
    let to = SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), query.port());
    socket
        .connect_timeout(&to.into(), Duration::from_secs(5))
        .unwrap();
    let mut stream: TcpStream = socket.into();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream.write_all(b"{\"resourceType\":\"echo\"}\n").unwrap();
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).unwrap();
    line
}

fn token(answer: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(answer).unwrap();
    v["token"]
        .as_str()
        .unwrap_or_else(|| panic!("no token: {answer}"))
        .to_string()
}

/// A client at `from` redeems `token` (answering the director's challenge: unbound tokens
/// always need proof of address) and sends one datagram; true when the game server's echo
/// comes back (a session was opened for it).
fn plays(from: &str, data: SocketAddr, token: &str) -> bool {
    let socket = UdpSocket::bind((ip(from), 0)).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(700)))
        .unwrap();
    let to = SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), data.port());
    socket.send_to(token.as_bytes(), to).unwrap();
    let mut buf = [0u8; 64];
    let Ok(n) = socket.recv(&mut buf) else {
        return false;
    };
    let nonce = testkit::client::challenge_nonce(&buf[..n])
        .unwrap_or_else(|| panic!("a challenge: {:?}", &buf[..n]));
    socket
        .send_to(&testkit::client::response(&nonce, token.as_bytes()), to)
        .unwrap();
    socket.send_to(b"ping", to).unwrap();
    socket.recv(&mut buf).is_ok()
}

/// `maxSessionsPerClientIp: 2` against clients of one /64, of one /48 and of another /48,
/// with IPv6 clients grouped by `prefix` bits: which of them get a session.
fn sessions_admitted(prefix: u8) -> (Vec<bool>, f64) {
    let (tx, rx) = std::sync::mpsc::channel();
    in_namespace(move || {
        let rt = tokio::runtime::Handle::current();
        let backend = EchoServer::start("127.0.0.1:0".parse().unwrap(), b"").unwrap();
        let config = director_config(
            &backend,
            &format!("maxSessionsPerClientIp: 2\nlimits: {{ipv6PrefixLength: {prefix}}}"),
        );
        let d = rt.block_on(start(config));
        // One token per client (a token holds one session), asked for from ::1.
        let served: Vec<bool> = [
            "2001:db8:1:0::1",
            "2001:db8:1:0::2",
            "2001:db8:1:0::3",
            "2001:db8:1:1::1",
            "2001:db8:2:0::1",
        ]
        .iter()
        .map(|from| {
            let token = token(&query_from(ip("::1"), d.query_addr));
            plays(from, d.data_addr, &token)
        })
        .collect();
        let refused = metric(
            d.admin_addr,
            "udp_director_sessions_refused_total{reason=\"client_ip_cap\"}",
        );
        rt.block_on(d.stop());
        tx.send((served, refused)).unwrap();
    });
    rx.recv().unwrap()
}

#[test]
fn a_slash_64_is_one_client_by_default() {
    let (served, refused) = sessions_admitted(64);
    // Two of one /64, the third of it refused; another /64 and another /48 are others.
    assert_eq!(served, [true, true, false, true, true], "by /64");
    assert_eq!(refused, 1.0);
}

#[test]
fn a_slash_48_is_one_client_when_configured() {
    let (served, refused) = sessions_admitted(48);
    // 2001:db8:1::/48 holds two sessions in all; 2001:db8:2::/48 is another client.
    assert_eq!(served, [true, true, false, false, true], "by /48");
    assert_eq!(refused, 2.0);
}

#[test]
fn the_query_rate_counts_a_network_not_an_address() {
    let (tx, rx) = std::sync::mpsc::channel();
    in_namespace(move || {
        let rt = tokio::runtime::Handle::current();
        let backend = EchoServer::start("127.0.0.1:0".parse().unwrap(), b"").unwrap();
        let config = director_config(
            &backend,
            "limits: {ipv6PrefixLength: 48, queryRatePerSecond: 1, queryBurst: 2}",
        );
        let d = rt.block_on(start(config));
        let codes: Vec<String> = [
            "2001:db8:1:0::1",
            "2001:db8:1:1::1",
            "2001:db8:1:2::1",
            "2001:db8:2:0::1",
        ]
        .iter()
        .map(|from| {
            let answer: serde_json::Value =
                serde_json::from_str(&query_from(ip(from), d.query_addr)).unwrap();
            answer["error"]["code"].as_str().unwrap_or("ok").to_string()
        })
        .collect();
        rt.block_on(d.stop());
        tx.send(codes).unwrap();
    });
    assert_eq!(
        rx.recv().unwrap(),
        ["ok", "ok", "rate_limited", "ok"],
        "three /64s of one /48 share its bucket of 2; another /48 has its own"
    );
}
