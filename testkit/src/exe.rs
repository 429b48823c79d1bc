//! The director binary for tests outside the daemon's crate. The daemon's own tests get its
//! path from `CARGO_BIN_EXE_udp-director`; the client, C, C# and Node tests live in other
//! crates, so they find it next to themselves (`target/<profile>/udp-director`) after asking
//! cargo to build it (a no-op when it is fresh, as under `cargo test --workspace`).

use std::io;
use std::path::PathBuf;
use std::process::Command;

/// The workspace root (testkit lives one level below it).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// The path of a fresh `udp-director` binary of the running test's profile.
pub fn director_exe() -> io::Result<PathBuf> {
    let test = std::env::current_exe()?;
    // target/<profile>/deps/<test> → target/<profile>
    let profile_dir = test
        .parent()
        .and_then(|deps| deps.parent())
        .ok_or_else(|| io::Error::other(format!("no target dir above {}", test.display())))?
        .to_path_buf();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut build = Command::new(cargo);
    build.current_dir(workspace_root()).args([
        "build",
        "--quiet",
        "-p",
        "udp-director",
        "--bin",
        "udp-director",
    ]);
    if profile_dir.ends_with("release") {
        build.arg("--release");
    }
    let status = build.status()?;
    if !status.success() {
        return Err(io::Error::other(format!(
            "cargo build of udp-director failed: {status}"
        )));
    }
    let exe = profile_dir.join("udp-director");
    if exe.exists() {
        Ok(exe)
    } else {
        Err(io::Error::other(format!("{} was not built", exe.display())))
    }
}
