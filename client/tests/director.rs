//! The client library against the real director binary on loopback: what today's director
//! does (query → token → session → reset → resume), and a failover between two director
//! processes sharing sealed-token keys after one of them is killed. The director does not
//! answer PING or send CHALLENGE yet; those frames are tested against byte vectors
//! (`core`, `frames`, `conformance`).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use testkit::{ChildDirector, EchoServer, TempDir, director_exe, eventually, yaml};
use udp_director_client::{Query, Session, core};

fn director(yaml: &str, tag: &str) -> ChildDirector {
    let exe = director_exe().unwrap();
    ChildDirector::spawn_yaml(&exe, TempDir::new(tag).unwrap(), yaml, &[]).unwrap()
}

/// Sends `payload` until a reply starting with `prefix` comes back (a first datagram may
/// race the token's session being opened); the reply.
fn exchange(s: &mut Session, payload: &[u8], prefix: &str, within: Duration) -> Option<String> {
    exchange_counted(s, payload, prefix, within).map(|(reply, _)| reply)
}

/// [`exchange`], and how many times `payload` was sent.
fn exchange_counted(
    s: &mut Session,
    payload: &[u8],
    prefix: &str,
    within: Duration,
) -> Option<(String, u64)> {
    let mut buf = [0u8; 2048];
    let deadline = Instant::now() + within;
    let mut sends = 0;
    while Instant::now() < deadline {
        s.send(payload).unwrap();
        sends += 1;
        if let Some(n) = s
            .recv_timeout(&mut buf, Duration::from_millis(100))
            .unwrap()
        {
            let reply = String::from_utf8_lossy(&buf[..n]).into_owned();
            if reply.starts_with(prefix) {
                return Some((reply, sends));
            }
        }
        s.tick().unwrap();
    }
    None
}

#[test]
fn query_token_session_reset_and_resume_through_the_director() {
    let a = EchoServer::start("127.0.0.1:0".parse().unwrap(), b"a:").unwrap();
    let b = EchoServer::start("127.0.0.1:0".parse().unwrap(), b"b:").unwrap();
    let d = director(
        &yaml::director("", &[yaml::echo_mapping(&[a.addr, b.addr])]),
        "client-one",
    );
    let first = Query::new("echo")
        .label("zone", "z0")
        .send(d.query)
        .unwrap();
    let mut s = Session::open(d.data, &first).unwrap();
    assert_eq!(
        exchange(&mut s, b"hello", "a:", Duration::from_secs(5)).as_deref(),
        Some("a:hello")
    );

    // Reset: a new token behind the magic moves the session, same socket.
    let second = Query::new("echo")
        .label("zone", "z1")
        .send(d.query)
        .unwrap();
    s.switch(&second).unwrap();
    assert_eq!(
        exchange(&mut s, b"moved", "b:", Duration::from_secs(5)).as_deref(),
        Some("b:moved")
    );
    let seen_by_a = a.received();

    // Resume: silence makes the rule send [magic][token]; on a live session it changes
    // nothing and is not forwarded, and play goes on with b.
    let before = b.received();
    assert!(eventually(Duration::from_secs(3), || s.tick().unwrap()));
    assert!(s.resumes() >= 1);
    let (reply, sends) = exchange_counted(&mut s, b"still", "b:", Duration::from_secs(5)).unwrap();
    assert_eq!(reply, "b:still");
    assert!(
        eventually(Duration::from_secs(2), || b.received() == before + sends),
        "b saw exactly the game datagrams, not the resume"
    );
    assert_eq!(a.received(), seen_by_a, "nothing reached a after the reset");
    assert_eq!(s.stats().failovers, 0);
}

#[test]
fn a_killed_director_is_left_for_the_next_address_which_resumes_the_session() {
    let server = EchoServer::start("127.0.0.1:0".parse().unwrap(), b"gs:").unwrap();
    let keys = TempDir::new("client-keys").unwrap();
    let key_file = keys.path.join("token-keys");
    std::fs::write(
        &key_file,
        "k1 BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=\n",
    )
    .unwrap();
    let cfg = yaml::director(
        &format!(
            "tokenFormat: sealed\ntokenKeysFile: \"{}\"\n",
            key_file.display()
        ),
        &[yaml::echo_mapping(&[server.addr])],
    );
    let a = director(&cfg, "client-fo-a");
    let b = director(&cfg, "client-fo-b");
    let grant = Query::new("echo").send(a.query).unwrap();
    assert!(
        grant.resume_seconds.is_some(),
        "sealed tokens carry resumeSeconds"
    );

    let addrs: [SocketAddr; 2] = [a.data, b.data];
    let cfg = core::Config {
        failover_after: Duration::from_secs(1),
        ..core::Config::default()
    };
    let mut s = Session::open_any(&addrs, &grant, cfg).unwrap();
    // Both answer PINGs: the session opens on the nearer (either, on one host).
    assert!(
        s.directors().iter().all(|(_, rtt)| rtt.is_some()),
        "every director answered its PING: {:?}",
        s.directors()
    );
    let (mut first, second) = if s.remote() == a.data { (a, b) } else { (b, a) };
    assert!(eventually(Duration::from_secs(3), || {
        first.metric("udp_director_pings_total{outcome=\"answered\"}") >= 1.0
            && second.metric("udp_director_pings_total{outcome=\"answered\"}") >= 1.0
    }));
    assert_eq!(
        exchange(&mut s, b"one", "gs:", Duration::from_secs(5)).as_deref(),
        Some("gs:one")
    );

    // When the session last heard the game server: the failover is due a second later.
    let last_heard = Instant::now() - s.silent_for();
    first.kill_9().unwrap();
    assert_eq!(
        exchange(&mut s, b"two", "gs:", Duration::from_secs(10)).as_deref(),
        Some("gs:two"),
        "heard the game server again through the second director"
    );
    assert_eq!(s.remote(), second.data);
    assert_eq!(s.stats().failovers, 1);
    assert!(
        last_heard.elapsed() >= Duration::from_millis(990),
        "not before a second of silence"
    );
    // Counters are published every 100 ms: wait for the session to show.
    assert!(eventually(Duration::from_secs(3), || {
        second.metric("udp_director_sessions_active") >= 1.0
    }));
}
