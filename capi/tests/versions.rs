//! One version for everything a release publishes: the client crate, the C library (its
//! crate, `ud_version()` and the header's UD_VERSION_* macros) and the npm package.

use std::path::Path;

fn manifest_version(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with("version = "))
        .unwrap_or_else(|| panic!("no version in {}", path.display()));
    line.trim_start_matches("version = ")
        .trim_matches('"')
        .to_string()
}

#[test]
fn every_published_package_has_the_same_version() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let capi = env!("CARGO_PKG_VERSION");
    assert_eq!(manifest_version(&root.join("client/Cargo.toml")), capi);
    let package: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("clients/node/package.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(package["version"], capi, "clients/node/package.json");
    let header = std::fs::read_to_string(root.join("capi/include/udp_director.h")).unwrap();
    let mut parts = capi.split('.');
    for name in ["MAJOR", "MINOR", "PATCH"] {
        let want = format!("#define UD_VERSION_{name} {}", parts.next().unwrap());
        assert!(header.contains(&want), "the header lacks {want}");
    }
    // The macros are cbindgen's rendering of capi/src/lib.rs's UD_VERSION_* constants
    // (tests/header.rs holds the header to the code).
}
