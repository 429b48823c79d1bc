//! The checked-in C header is what cbindgen generates from the crate now: change the ABI,
//! regenerate (`cd capi && cbindgen --config cbindgen.toml --output include/udp_director.h`)
//! and commit both. Needs the `cbindgen` binary (`make test-deps` installs Debian's).

use std::process::Command;

#[test]
fn the_checked_in_header_is_what_cbindgen_generates() {
    let capi = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = std::env::temp_dir().join(format!("udp_director-{}.h", std::process::id()));
    let status = Command::new("cbindgen")
        .current_dir(capi)
        .args(["--quiet", "--config", "cbindgen.toml", "--output"])
        .arg(&out)
        .status()
        .expect("cbindgen is installed (make test-deps)");
    assert!(status.success(), "cbindgen failed");
    let generated = std::fs::read_to_string(&out).unwrap();
    let _ = std::fs::remove_file(&out);
    let checked_in = std::fs::read_to_string(capi.join("include/udp_director.h")).unwrap();
    assert!(
        generated.contains("ud_core_poll_transmit") && generated.contains("UD_MAX_CONTROL_LEN 177"),
        "cbindgen left the functions out"
    );
    assert!(
        generated == checked_in,
        "capi/include/udp_director.h is stale: regenerate it with cbindgen (see this test's header)"
    );
}
