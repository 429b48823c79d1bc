//! The header-only C++ wrapper (`clients/cpp/udp_director.hpp`, the one the Unreal guide
//! uses) and its example compiled with the system C++ compiler (C++17, warnings as errors)
//! and run against a real director, asserting what each game server saw.

mod common;

use std::process::Command;

use common::{assert_script_seen, director, library_dir, path_str, root, run, GameServer};

#[test]
fn a_cpp_program_queries_plays_resets_and_resumes_through_the_director() {
    let lib = library_dir();
    let exe = std::env::temp_dir().join(format!("udp-director-cpp-{}", std::process::id()));
    let status = Command::new("c++")
        .args(["-std=c++17", "-Wall", "-Wextra", "-Werror", "-I"])
        .arg(root().join("capi/include"))
        .arg("-I")
        .arg(root().join("clients/cpp"))
        .arg(root().join("clients/cpp/example.cpp"))
        .arg("-L")
        .arg(&lib)
        .args([
            "-ludp_director",
            &format!("-Wl,-rpath,{}", path_str(&lib)),
            "-o",
        ])
        .arg(&exe)
        .status()
        .expect("a C++ compiler (c++)");
    assert!(status.success(), "c++ failed");
    let (a, b) = (GameServer::start("a:"), GameServer::start("b:"));
    let d = director(&a, &b, "cpp-play");
    let out = run(Command::new(&exe).args([d.query.to_string(), d.data.to_string()]));
    let _ = std::fs::remove_file(&exe);
    assert!(out.status.success(), "the C++ program failed");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("refused unknown_resource_type"), "{stdout}");
    assert!(stdout.contains("reply b:cpp:after-resume"), "{stdout}");
    assert!(stdout.contains(&format!("remote {}", d.data)), "{stdout}");
    assert_script_seen(&a, &b, "cpp:");
}
