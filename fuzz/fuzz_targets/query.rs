//! The query request parser: total on any bytes; what it accepts survives a serialize/parse
//! round trip; what it refuses is a `bad_request` (`udp_director::invariants::query_line`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|line: &[u8]| {
    if let Err(e) = udp_director::invariants::query_line(line) {
        panic!("{e}");
    }
});
