//! One direction for the house (Docs/Architecture.md): every module of `src/` imports only
//! from the floors beneath it. The allowed arrows are written here, once; the test reads every
//! file under `src/` and fails on a `crate::` path into any module not listed for it, naming
//! the file, the line and the arrow, so a change cannot quietly undo the layering.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Each top-level module of the crate and the modules it may import, bottom floor first.
/// A module not listed here fails the test: a new one must say where it stands.
const FLOORS: &[(&str, &[&str])] = &[
    // The vocabulary: the nouns and closed label sets every layer shares.
    ("model", &[]),
    ("util", &[]),
    // Wire formats, metrics and the Kubernetes client: on the vocabulary alone.
    ("protocol", &["model", "util"]),
    ("metrics", &["model", "util"]),
    ("k8s", &["model", "util"]),
    // Tokens and config: decoded values and keys.
    ("token", &["protocol", "model", "util"]),
    ("config", &["protocol", "model", "util"]),
    // Resolution: query → target.
    ("resolve", &["config", "k8s", "protocol", "model", "util"]),
    // Every data-plane decision.
    (
        "session",
        &[
            "token", "resolve", "config", "k8s", "protocol", "model", "util",
        ],
    ),
    // Test oracles (behind the `sim` feature).
    (
        "invariants",
        &["config", "protocol", "token", "model", "util"],
    ),
    // The one place a validated config becomes each layer's settings.
    (
        "settings",
        &[
            "session", "resolve", "k8s", "token", "config", "protocol", "model", "util",
        ],
    ),
    // Every socket, thread, task and watch.
    (
        "shell",
        &[
            "settings", "session", "resolve", "k8s", "token", "config", "protocol", "metrics",
            "model", "util",
        ],
    ),
    // Wiring.
    (
        "app",
        &[
            "shell", "settings", "session", "resolve", "k8s", "token", "config", "protocol",
            "metrics", "model", "util",
        ],
    ),
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file belongs to (`src/session/decide.rs` → `session`).
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy();
    first.trim_end_matches(".rs").to_string()
}

/// The code of a line without its `//` comment (string literals with `//` in them do not
/// name `crate::` paths here).
fn code(line: &str) -> &str {
    match line.find("//") {
        Some(i) => &line[..i],
        None => line,
    }
}

/// Every `crate::<module>` a line of code names.
fn imports(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = code(line);
    while let Some(i) = rest.find("crate::") {
        let before = rest[..i].chars().last();
        rest = &rest[i + "crate::".len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue; // e.g. `udp_director_crate::`
        }
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if !name.is_empty() {
            out.push(name);
        }
    }
    out
}

#[test]
fn every_import_points_down() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let floors: BTreeMap<&str, &[&str]> = FLOORS.iter().copied().collect();
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let mut wrong = Vec::new();
    for file in &files {
        let module = module_of(&src, file);
        if module == "lib" || module == "main" {
            continue; // the crate root declares the modules; the binary uses the public API
        }
        let Some(allowed) = floors.get(module.as_str()) else {
            wrong.push(format!(
                "{}: module `{module}` has no floor in tests/layers.rs",
                file.display()
            ));
            continue;
        };
        let text = std::fs::read_to_string(file).unwrap();
        for (n, line) in text.lines().enumerate() {
            for target in imports(line) {
                if target != module && !allowed.contains(&target.as_str()) {
                    wrong.push(format!(
                        "{}:{}: `{module}` imports `{target}` (allowed: {allowed:?})\n    {}",
                        file.display(),
                        n + 1,
                        line.trim()
                    ));
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports against the floors:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn the_floors_are_a_ladder_without_circles() {
    // Each module's allowed imports are listed above it: no two modules may import each other.
    let position: BTreeMap<&str, usize> = FLOORS
        .iter()
        .enumerate()
        .map(|(i, (m, _))| (*m, i))
        .collect();
    for (i, (module, allowed)) in FLOORS.iter().enumerate() {
        for a in *allowed {
            let at = position[a];
            assert!(at < i, "`{module}` may import `{a}`, which is not below it");
        }
    }
}

#[test]
fn the_checker_sees_an_upward_import() {
    assert_eq!(imports("use crate::shell::udp::DataShared;"), ["shell"]);
    assert_eq!(
        imports("    x: crate::model::Target, y: crate::util::sync::lock"),
        ["model", "util"]
    );
    assert!(imports("// use crate::shell::udp").is_empty());
    assert!(imports("use udp_director::shell::reload").is_empty());
}
