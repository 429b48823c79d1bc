//! The Node client (`clients/node`, plain ES modules over node:dgram) under `node --test`:
//! its unit tests (core with injected time, the conformance vectors) and its end-to-end tests
//! against a real director started here (query -> token -> session -> reset -> resume, and a
//! failover from a silent address), asserting what each game server saw. Lives with the other languages' tests for their
//! shared harness (`common`); it does not use the C library.

mod common;

use std::process::Command;

use common::{director, root, run, GameServer};

#[test]
fn the_node_client_passes_its_tests_and_plays_through_the_director() {
    let (a, b) = (GameServer::start("a:"), GameServer::start("b:"));
    let d = director(&a, &b, "node");
    // A director address that never answers PINGs: listed first, ranked last.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    silent
        .set_read_timeout(Some(std::time::Duration::from_millis(100)))
        .unwrap();
    let out = run(Command::new("node")
        .current_dir(root().join("clients/node"))
        .args([
            "--test",
            "test/core.test.js",
            "test/vectors.test.js",
            "e2e/director.js",
        ])
        .env("UDP_DIRECTOR_QUERY", d.query.to_string())
        .env("UDP_DIRECTOR_DATA", d.data.to_string())
        .env(
            "UDP_DIRECTOR_SILENT",
            silent.local_addr().unwrap().to_string(),
        ));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "node --test failed");
    assert!(stdout.contains("# fail 0"), "{stdout}");
    assert!(!stdout.contains("# pass 0"), "{stdout}");
    let dedup = |mut v: Vec<String>| {
        v.dedup();
        v
    };
    assert_eq!(dedup(a.seen()), ["js:hello-a"]);
    assert_eq!(
        dedup(b.seen()),
        ["js:hello-b", "js:after-resume", "js:nearest"],
        "the nearest-director test's datagrams reached b only through the director"
    );
    // The silent address (listed first) was only PINGed: the director answered, so the
    // token went to the director and never to it.
    let mut buf = [0u8; 256];
    let (mut pings, mut tokens) = (0, 0);
    while let Ok((n, _)) = silent.recv_from(&mut buf) {
        let frame = &buf[..n];
        if frame.starts_with(b"\xff\xff\xff\xffRESET") && frame.get(9) == Some(&3) {
            pings += 1;
        }
        if n == 36 && frame.iter().all(|c| c.is_ascii_graphic()) {
            tokens += 1;
        }
    }
    assert!(pings >= 1, "the silent address was PINGed");
    assert_eq!(tokens, 0, "no token went to the silent address");
}
