//! Who may read the operator views (SPEC §6), end to end with the real binary: `/` (the
//! operator page), `/sessions` and `/config` answer loopback callers, and others only with
//! `Authorization: Bearer` and the token of `adminTokenFile` (re-read within 2 s of a
//! change); everyone else gets 403.
//! Probes and `/metrics` stay open. The admin port binds `adminBindAddress`.
//!
//! A non-loopback caller needs a non-loopback address: each test runs in a network namespace
//! of its own (a thread that unshares its network namespace; the director, its child, starts
//! in it), with `lo` up and [`OUTSIDE`] added to it. No traffic leaves the namespace.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::Duration;

use testkit::{ChildDirector, TempDir, eventually};
use tokio::time::Instant;

const BIN: &str = env!("CARGO_BIN_EXE_udp-director");
/// The namespace's non-loopback address: the "cluster" caller.
const OUTSIDE: &str = "10.77.0.1";

/// Runs `f` on a thread in a fresh network namespace with `lo` up and [`OUTSIDE`] on it.
fn in_namespace<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
                .expect("unshare(CLONE_NEWNET) needs CAP_SYS_ADMIN");
            for args in [
                &["link", "set", "lo", "up"][..],
                &["addr", "add", &format!("{OUTSIDE}/32"), "dev", "lo"],
            ] {
                let status = std::process::Command::new("ip")
                    .args(args)
                    .status()
                    .unwrap();
                assert!(status.success(), "ip {args:?}");
            }
            f()
        })
        .join()
        .unwrap()
    })
}

/// GET `path` on `port` from `from` to `from` (its own address), with an optional
/// `Authorization` value: `(status, body)`.
fn get(from: &str, port: u16, path: &str, authorization: Option<&str>) -> (u16, String) {
    let ip: IpAddr = from.parse().unwrap();
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(SocketAddr::new(ip, 0)),
        socket2::Type::STREAM,
        None,
    )
    .unwrap();
    socket.bind(&SocketAddr::new(ip, 0).into()).unwrap();
    socket
        .connect_timeout(&SocketAddr::new(ip, port).into(), Duration::from_secs(5))
        .unwrap();
    let mut s: TcpStream = socket.into();
    assert_eq!(s.local_addr().unwrap().ip(), ip, "the caller's address");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let auth = authorization
        .map(|a| format!("Authorization: {a}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: director\r\n{auth}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_string());
    (status, body.unwrap_or_default())
}

/// A director with its admin port on every address of the namespace; `extra` YAML on top.
fn director(dir: TempDir, extra: &str) -> ChildDirector {
    let backend: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let yaml = testkit::yaml::director(
        &format!("adminBindAddress: 0.0.0.0\n{extra}"),
        &[testkit::yaml::static_mapping("echo", backend)],
    );
    ChildDirector::spawn_yaml(BIN.as_ref(), dir, &yaml, &[]).unwrap()
}

const OPERATOR_VIEWS: [&str; 4] = ["/", "/sessions", "/config", "/sessions?limit=1"];
const OPEN: [&str; 3] = ["/healthz", "/readyz", "/metrics"];

#[test]
fn operator_views_need_loopback_or_the_token_and_a_new_token_applies_within_2s() {
    in_namespace(|| {
        let dir = TempDir::new("admin-token").unwrap();
        let token_file = dir.path.join("token");
        std::fs::write(&token_file, "tok-1\n").unwrap();
        let d = director(dir, &format!("adminTokenFile: {}\n", token_file.display()));
        assert!(
            d.admin.ip().is_unspecified(),
            "admin binds adminBindAddress"
        );
        assert_eq!(
            d.query.ip().to_string(),
            "127.0.0.1",
            "the rest binds bindAddress"
        );
        let port = d.admin.port();
        assert!(eventually(Duration::from_secs(10), || get(
            OUTSIDE, port, "/readyz", None
        )
        .0 == 200));
        for path in OPEN {
            assert_eq!(get(OUTSIDE, port, path, None).0, 200, "{path} stays open");
        }
        for path in OPERATOR_VIEWS {
            let (status, body) = get(OUTSIDE, port, path, None);
            assert_eq!(status, 403, "{path} without a token");
            assert!(body.starts_with("forbidden"), "{body}");
            assert!(
                !body.contains("127.0.0.1") && !body.contains("tok-1"),
                "{body}"
            );
            for wrong in [
                "Bearer tok-2",
                "Bearer tok-",
                "Basic tok-1",
                "tok-1",
                "Bearer ",
            ] {
                assert_eq!(
                    get(OUTSIDE, port, path, Some(wrong)).0,
                    403,
                    "{path} {wrong}"
                );
            }
            assert_eq!(
                get(OUTSIDE, port, path, Some("Bearer tok-1")).0,
                200,
                "{path}"
            );
            // Loopback callers need nothing, and a wrong header does not lock them out.
            assert_eq!(get("127.0.0.1", port, path, None).0, 200, "{path}");
            assert_eq!(get("127.0.0.1", port, path, Some("Bearer nope")).0, 200);
        }
        let (_, config) = get(OUTSIDE, port, "/config", Some("Bearer tok-1"));
        assert!(config.contains("\"adminTokenFile\""), "{config}");

        // A new token (the kubelet swaps a mounted Secret) applies within 2 s; the old stops.
        std::fs::write(&token_file, "  tok-2 \n").unwrap();
        let changed = Instant::now();
        assert!(eventually(Duration::from_secs(5), || get(
            OUTSIDE,
            port,
            "/sessions",
            Some("Bearer tok-2")
        )
        .0 == 200));
        assert!(
            changed.elapsed() < Duration::from_secs(2),
            "{:?}",
            changed.elapsed()
        );
        assert_eq!(get(OUTSIDE, port, "/sessions", Some("Bearer tok-1")).0, 403);
        // An emptied file is no token: nobody off the host.
        std::fs::write(&token_file, "\n").unwrap();
        assert!(eventually(Duration::from_secs(5), || get(
            OUTSIDE,
            port,
            "/sessions",
            Some("Bearer tok-2")
        )
        .0 == 403));
        assert_eq!(get(OUTSIDE, port, "/sessions", Some("Bearer ")).0, 403);
        assert_eq!(get("127.0.0.1", port, "/sessions", None).0, 200);
    });
}

#[test]
fn without_a_token_file_only_loopback_callers_see_operator_views() {
    in_namespace(|| {
        let d = director(TempDir::new("admin-open").unwrap(), "");
        let port = d.admin.port();
        for path in OPEN {
            assert_eq!(get(OUTSIDE, port, path, None).0, 200, "{path} stays open");
        }
        for path in OPERATOR_VIEWS {
            for auth in [None, Some("Bearer "), Some("Bearer anything")] {
                assert_eq!(get(OUTSIDE, port, path, auth).0, 403, "{path} {auth:?}");
            }
            assert_eq!(get("127.0.0.1", port, path, None).0, 200, "{path}");
        }
    });
}

#[test]
fn the_admin_port_binds_bind_address_by_default() {
    in_namespace(|| {
        let backend: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let yaml = testkit::yaml::director("", &[testkit::yaml::static_mapping("echo", backend)]);
        let dir = TempDir::new("admin-default").unwrap();
        let d = ChildDirector::spawn_yaml(BIN.as_ref(), dir, &yaml, &[]).unwrap();
        assert_eq!(d.admin.ip().to_string(), "127.0.0.1");
        let outside: IpAddr = OUTSIDE.parse().unwrap();
        let refused = TcpStream::connect_timeout(
            &SocketAddr::new(outside, d.admin.port()),
            Duration::from_secs(2),
        );
        assert!(refused.is_err(), "nothing listens on {OUTSIDE}");
        assert_eq!(get("127.0.0.1", d.admin.port(), "/sessions", None).0, 200);
    });
}
