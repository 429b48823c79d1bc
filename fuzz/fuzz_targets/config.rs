//! The config loader: total on any text; an accepted config validates and survives a
//! serialize/parse round trip unchanged, its decoded values agreeing with the document
//! (`udp_director::invariants::config_text`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if let Err(e) = udp_director::invariants::config_text(text) {
        panic!("{e}");
    }
});
