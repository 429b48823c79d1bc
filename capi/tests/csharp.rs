//! The C# binding (`clients/csharp/UdpDirector.cs`, P/Invoke over the C library) and its
//! example compiled with Mono's `mcs` and run with `mono`: the whole client path against a
//! real director with a custom `controlPacketMagicBytes` (asserting what each game server
//! saw), and a query line from the conformance vectors. `make test-deps` installs Mono (Debian's mono-mcs, mono-runtime).

mod common;

use std::process::Command;

use common::{assert_script_seen, director_with, library_dir, root, run, vectors, GameServer};

/// Compiles the binding and the example into one program (`tag`: tests run in parallel).
fn compile(tag: &str) -> std::path::PathBuf {
    let out =
        std::env::temp_dir().join(format!("udp-director-cs-{tag}-{}.exe", std::process::id()));
    let status = Command::new("mcs")
        .args(["-langversion:6", "-warnaserror", "-nologo"])
        .arg(format!("-out:{}", out.display()))
        .arg(root().join("clients/csharp/UdpDirector.cs"))
        .arg(root().join("clients/csharp/Example.cs"))
        .status()
        .expect("Mono's mcs is installed (make test-deps)");
    assert!(status.success(), "mcs failed");
    out
}

fn mono(exe: &std::path::Path) -> Command {
    let mut cmd = Command::new("mono");
    cmd.arg(exe).env("LD_LIBRARY_PATH", library_dir());
    cmd
}

#[test]
fn a_csharp_program_queries_plays_resets_and_resumes_through_the_director() {
    let exe = compile("play");
    let (a, b) = (GameServer::start("a:"), GameServer::start("b:"));
    // A custom magic: the reset only moves the session if the binding passes it through.
    let magic = "C0FFEE01";
    let d = director_with(
        &format!("controlPacketMagicBytes: \"{magic}\"\n"),
        &a,
        &b,
        "cs-play",
    );
    let out = run(mono(&exe).args(["play", &d.query.to_string(), &d.data.to_string(), magic]));
    let _ = std::fs::remove_file(&exe);
    assert!(out.status.success(), "the C# program failed");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("refused unknown_resource_type"), "{stdout}");
    assert!(stdout.contains("reply b:cs:after-resume"), "{stdout}");
    assert!(stdout.contains(&format!("remote {}", d.data)), "{stdout}");
    assert!(stdout.trim_end().ends_with("done"), "{stdout}");
    assert_script_seen(&a, &b, "cs:");
}

#[test]
fn the_csharp_query_line_is_the_vectors() {
    let exe = compile("vectors");
    let v = vectors();
    let case = v["queries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["builder"]["ticket"].is_string())
        .unwrap();
    let b = &case["builder"];
    let args = [
        "query-line",
        b["resourceType"].as_str().unwrap(),
        b["ticket"].as_str().unwrap(),
        case["line"].as_str().unwrap(),
    ];
    let out = run(mono(&exe).args(args));
    assert!(out.status.success());
    // A different expectation fails: the program really compares.
    let out = run(mono(&exe).args([
        "query-line",
        "duel",
        "other",
        case["line"].as_str().unwrap(),
    ]));
    let _ = std::fs::remove_file(&exe);
    assert!(!out.status.success());
}
