//! Artifacts of other workspace members for tests outside the daemon's crate. The daemon's
//! own tests get the binary from `CARGO_BIN_EXE_udp-director`; the client, C, C#, Node and
//! Godot tests live in other crates, so they find it next to themselves
//! (`target/<profile>/`). Under `cargo test --workspace` it is already there and fresh; run
//! alone, a test builds it first. It is rebuilt only when a source is newer than it: a
//! cargo build from inside a test resolves features for one package, not the workspace, and
//! would replace the workspace's binary with a differently built one.

use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::SystemTime;

/// The workspace root (testkit lives one level below it).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// `target/<profile>` of the running test.
pub fn profile_dir() -> io::Result<PathBuf> {
    let test = std::env::current_exe()?;
    // target/<profile>/deps/<test> → target/<profile>
    test.parent()
        .and_then(|deps| deps.parent())
        .map(Path::to_path_buf)
        .ok_or_else(|| io::Error::other(format!("no target dir above {}", test.display())))
}

/// The path of a fresh `udp-director` binary of the running test's profile.
pub fn director_exe() -> io::Result<PathBuf> {
    let root = workspace_root();
    fresh_artifact(
        &profile_dir()?.join("udp-director"),
        &[
            root.join("src"),
            root.join("Cargo.toml"),
            root.join("Cargo.lock"),
        ],
        &["-p", "udp-director", "--bin", "udp-director"],
    )
}

/// `artifact` if it is newer than every file under `sources`; otherwise built first with
/// `cargo build <args>` (in the test's profile).
pub fn fresh_artifact(artifact: &Path, sources: &[PathBuf], args: &[&str]) -> io::Result<PathBuf> {
    let built = std::fs::metadata(artifact).and_then(|m| m.modified()).ok();
    let newest = sources.iter().filter_map(|s| newest_under(s)).max();
    if built.is_some() && built >= newest {
        return Ok(artifact.to_path_buf());
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut build = Command::new(cargo);
    build
        .current_dir(workspace_root())
        .args(["build", "--quiet"])
        .args(args);
    if profile_dir()?.ends_with("release") {
        build.arg("--release");
    }
    let status = build.status()?;
    if !status.success() {
        return Err(io::Error::other(format!(
            "cargo build {args:?} failed: {status}"
        )));
    }
    if artifact.exists() {
        Ok(artifact.to_path_buf())
    } else {
        Err(io::Error::other(format!(
            "{} was not built",
            artifact.display()
        )))
    }
}

/// The latest modification time of `path` or of any file below it.
fn newest_under(path: &Path) -> Option<SystemTime> {
    let meta = std::fs::metadata(path).ok()?;
    if !meta.is_dir() {
        return meta.modified().ok();
    }
    std::fs::read_dir(path)
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| newest_under(&e.path()))
        .max()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_under_sees_files_in_subfolders() {
        let dir = crate::TempDir::new("newest").unwrap();
        std::fs::create_dir(dir.path.join("sub")).unwrap();
        std::fs::write(dir.path.join("sub/a.rs"), "x").unwrap();
        let file = std::fs::metadata(dir.path.join("sub/a.rs"))
            .unwrap()
            .modified()
            .unwrap();
        assert!(newest_under(&dir.path) >= Some(file));
        assert_eq!(newest_under(&dir.path.join("missing")), None);
    }
}
