//! Sets `UDP_DIRECTOR_REVISION` for `udp_director_build_info{revision}`: the variable of the
//! same name when the build sets it (the image build passes its `REVISION`), otherwise the
//! checkout's `git rev-parse --short=12 HEAD`. Without either (a source tarball, a clone
//! without git) nothing is set and the binary says `unknown`; the build never fails here.

use std::path::PathBuf;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!text.is_empty()).then_some(text)
}

fn main() {
    println!("cargo:rerun-if-env-changed=UDP_DIRECTOR_REVISION");
    println!("cargo:rerun-if-changed=build.rs");
    let given = std::env::var("UDP_DIRECTOR_REVISION")
        .ok()
        .filter(|r| !r.trim().is_empty());
    let revision = given.or_else(|| {
        // Rebuild when HEAD moves: HEAD itself, the branch it names, and packed refs. Only
        // paths that exist are named (a missing one would rerun this script every build).
        let git_dir = git(&["rev-parse", "--git-dir"]).map(PathBuf::from);
        let common = git(&["rev-parse", "--git-common-dir"]).map(PathBuf::from);
        let head_ref = git(&["symbolic-ref", "-q", "HEAD"]);
        let mut watched = Vec::new();
        if let Some(dir) = &git_dir {
            watched.push(dir.join("HEAD"));
        }
        for dir in common.iter().chain(git_dir.iter()) {
            watched.push(dir.join("packed-refs"));
            if let Some(r) = &head_ref {
                watched.push(dir.join(r));
            }
        }
        for path in watched.iter().filter(|p| p.exists()) {
            println!("cargo:rerun-if-changed={}", path.display());
        }
        git(&["rev-parse", "--short=12", "HEAD"])
    });
    if let Some(r) = revision {
        // A label value: keep it to what a revision looks like.
        let clean: String = r
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
            .take(64)
            .collect();
        println!("cargo:rustc-env=UDP_DIRECTOR_REVISION={clean}");
    }
}
