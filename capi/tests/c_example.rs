//! The C example (`capi/examples/c/session.c`) compiled with the system `cc` against the
//! checked-in header and the shared library, then run: the whole client path against a real
//! director (asserting what each game server saw), once on the library's socket and once on
//! the program's own socket driving the sans-IO core, and the core against the conformance
//! vectors' challenge.

mod common;

use std::process::Command;

use common::{assert_script_seen, director, library_dir, path_str, root, run, GameServer};

/// Compiles the example to a file of its own (`tag`: tests run in parallel).
fn compile(tag: &str) -> std::path::PathBuf {
    let lib = library_dir();
    let out = std::env::temp_dir().join(format!(
        "udp-director-c-session-{tag}-{}",
        std::process::id()
    ));
    let status = Command::new("cc")
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-I"])
        .arg(root().join("capi/include"))
        .arg(root().join("capi/examples/c/session.c"))
        .arg("-L")
        .arg(&lib)
        .args([
            "-ludp_director",
            &format!("-Wl,-rpath,{}", path_str(&lib)),
            "-o",
        ])
        .arg(&out)
        .status()
        .expect("a C compiler (cc)");
    assert!(status.success(), "cc failed");
    out
}

#[test]
fn a_c_program_queries_plays_resets_and_resumes_through_the_director() {
    let exe = compile("play");
    let (a, b) = (GameServer::start("a:"), GameServer::start("b:"));
    let d = director(&a, &b, "c-play");
    let out = run(Command::new(&exe).args(["play", &d.query.to_string(), &d.data.to_string()]));
    let _ = std::fs::remove_file(&exe);
    assert!(out.status.success(), "the C program failed");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("refused unknown_resource_type:"),
        "{stdout}"
    );
    assert!(stdout.contains("reply b:c:after-resume"), "{stdout}");
    assert!(stdout.contains(&format!("remote {}", d.data)), "{stdout}");
    assert!(stdout.trim_end().ends_with("done"), "{stdout}");
    assert_script_seen(&a, &b, "c:");
}

#[test]
fn a_c_program_drives_the_core_on_its_own_socket_through_the_director() {
    let exe = compile("core");
    let (a, b) = (GameServer::start("a:"), GameServer::start("b:"));
    let d = director(&a, &b, "c-core");
    let out = run(Command::new(&exe).args(["core", &d.query.to_string(), &d.data.to_string()]));
    let _ = std::fs::remove_file(&exe);
    assert!(out.status.success(), "the C program failed");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("reply b:core:after-resume"), "{stdout}");
    assert!(stdout.trim_end().ends_with("done"), "{stdout}");
    assert_script_seen(&a, &b, "core:");
}

#[test]
fn the_core_through_c_answers_the_vectors_challenge() {
    let exe = compile("vectors");
    let [magic, token, challenge, reply] = common::challenge_vector();
    let out = run(Command::new(&exe).args(["vectors", &magic, &token, &challenge, &reply]));
    assert!(out.status.success());
    // A wrong expectation must fail: the program really compares.
    let out = run(Command::new(&exe).args(["vectors", &magic, &token, &challenge, &challenge]));
    let _ = std::fs::remove_file(&exe);
    assert!(!out.status.success());
}
