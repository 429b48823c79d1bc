//! The datagram classifier (token / reset / data) against an independent oracle, for any bytes
//! and any magic (`udp_director::invariants::datagram`, also a property test).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (&[u8], &[u8])| {
    let (magic, datagram) = input;
    if magic.len() > 32 {
        return;
    }
    if let Err(e) = udp_director::invariants::datagram(datagram, magic) {
        panic!("{e}");
    }
});
