//! Sets `UDP_DIRECTOR_REVISION` for `udp_director_build_info{revision}`: the variable of the
//! same name when the build sets it (the image build passes its `REVISION`), otherwise the
//! checkout's `git rev-parse --short=12 HEAD`. Without either (a source tarball, a clone
//! without git) nothing is set and the binary says `unknown`; the build never fails here.
//!
//! With the `fast-path` feature, also compiles the kernel fast path's TC program
//! (`bpf/fast_path.bpf.c`, SPEC §8) with clang into `$OUT_DIR/fast_path.bpf.o`, which
//! `src/shell/fast_path/kernel.rs` embeds. That needs clang and the BPF headers (Debian:
//! clang, libbpf-dev, linux-libc-dev); without them the build fails saying so. Without the
//! feature nothing here needs clang.

use std::path::{Path, PathBuf};
use std::process::Command;

const BPF_SOURCE: &str = "bpf/fast_path.bpf.c";

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!text.is_empty()).then_some(text)
}

fn main() {
    if std::env::var_os("CARGO_FEATURE_FAST_PATH").is_some()
        && let Err(message) = build_bpf()
    {
        eprintln!("error: cannot build the fast path's BPF program ({BPF_SOURCE}): {message}");
        std::process::exit(1);
    }
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

/// `clang -O2 -g -target bpf` over the program, with the target's asm headers on the path.
fn build_bpf() -> Result<(), String> {
    println!("cargo:rerun-if-changed={BPF_SOURCE}");
    println!("cargo:rerun-if-env-changed=CLANG");
    let out_dir = std::env::var_os("OUT_DIR").ok_or("OUT_DIR is not set")?;
    let object = Path::new(&out_dir).join("fast_path.bpf.o");
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    // What libbpf's __TARGET_ARCH_* calls the architecture.
    let bpf_arch = match arch.as_str() {
        "x86_64" | "x86" => "x86",
        "aarch64" => "arm64",
        "arm" => "arm",
        "riscv64" => "riscv",
        "powerpc64" => "powerpc",
        "s390x" => "s390",
        "loongarch64" => "loongarch",
        other => other,
    };
    let clang = std::env::var("CLANG").unwrap_or_else(|_| "clang".to_string());
    let mut cmd = Command::new(&clang);
    cmd.args(["-O2", "-g", "-target", "bpf", "-Wall", "-Werror"])
        .arg(format!("-D__TARGET_ARCH_{bpf_arch}"));
    // <linux/types.h> includes <asm/types.h>, which Debian keeps under the multiarch
    // directory (e.g. /usr/include/x86_64-linux-gnu); `-target bpf` does not look there.
    if let Some(dir) = asm_include_dir(&clang, &arch) {
        cmd.arg(format!("-I{}", dir.display()));
    }
    cmd.arg("-c").arg(BPF_SOURCE).arg("-o").arg(&object);
    let out = cmd.output().map_err(|e| {
        format!("cannot run `{clang}` ({e}): install clang and the BPF headers (Debian: apt-get install clang llvm libbpf-dev linux-libc-dev), or build without the `fast-path` feature")
    })?;
    if !out.status.success() {
        return Err(format!(
            "`{clang}` failed ({}); if a header is missing, install libbpf-dev and linux-libc-dev:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}

/// The directory holding `asm/types.h` for the target: the multiarch one clang or gcc name,
/// else `<arch>-linux-gnu`; `None` when `/usr/include/asm` exists (nothing to add) or none is
/// found (clang then says which header it misses).
fn asm_include_dir(clang: &str, arch: &str) -> Option<PathBuf> {
    if Path::new("/usr/include/asm/types.h").exists() {
        return None;
    }
    let asked = [clang, "gcc", "cc"].into_iter().find_map(|tool| {
        let out = Command::new(tool).arg("-print-multiarch").output().ok()?;
        let triple = String::from_utf8(out.stdout).ok()?.trim().to_string();
        (out.status.success() && !triple.is_empty()).then_some(triple)
    });
    asked
        .into_iter()
        .chain([format!("{arch}-linux-gnu")])
        .map(|triple| PathBuf::from("/usr/include").join(triple))
        .find(|dir| dir.join("asm/types.h").exists())
}
