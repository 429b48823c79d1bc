//! The Node client (`clients/node`, plain ES modules over node:dgram) under `node --test`:
//! its unit tests (core with injected time, the conformance vectors) and its end-to-end test
//! against a real director started here (query -> token -> session -> reset -> resume),
//! asserting what each game server saw. Lives with the other languages' tests for their
//! shared harness (`common`); it does not use the C library.

mod common;

use std::process::Command;

use common::{assert_script_seen, director, root, run, GameServer};

#[test]
fn the_node_client_passes_its_tests_and_plays_through_the_director() {
    let (a, b) = (GameServer::start("a:"), GameServer::start("b:"));
    let d = director(&a, &b, "node");
    let out = run(Command::new("node")
        .current_dir(root().join("clients/node"))
        .args([
            "--test",
            "test/core.test.js",
            "test/vectors.test.js",
            "e2e/director.js",
        ])
        .env("UDP_DIRECTOR_QUERY", d.query.to_string())
        .env("UDP_DIRECTOR_DATA", d.data.to_string()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "node --test failed");
    assert!(stdout.contains("# fail 0"), "{stdout}");
    assert!(!stdout.contains("# pass 0"), "{stdout}");
    assert_script_seen(&a, &b, "js:");
}
