//! The datagram classifier (token / control / data) against its definition, for any bytes
//! and any magic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use udp_director::protocol::datagram::{Datagram, classify, parse_token};
use udp_director::token::TokenId;

fuzz_target!(|input: (&[u8], &[u8])| {
    let (magic, datagram) = input;
    if magic.is_empty() || magic.len() > 32 {
        return;
    }
    match classify(datagram, magic) {
        Datagram::Control(t) => {
            assert!(datagram.starts_with(magic));
            assert_eq!(parse_token(&datagram[magic.len()..]), Some(t));
        }
        Datagram::MalformedControl => {
            assert!(datagram.starts_with(magic));
            assert_eq!(parse_token(&datagram[magic.len()..]), None);
        }
        Datagram::Token(t) => {
            assert!(!datagram.starts_with(magic));
            assert_eq!(parse_token(datagram), Some(t));
            // A token's wire form parses back to itself.
            assert_eq!(parse_token(t.to_wire().as_bytes()), Some(t));
        }
        Datagram::Data => {
            assert!(!datagram.starts_with(magic));
            assert_eq!(parse_token(datagram), None);
        }
    }
    // Any 128 bits survive the wire form.
    if datagram.len() >= 16 {
        let mut raw = [0u8; 16];
        raw.copy_from_slice(&datagram[..16]);
        let id = TokenId(u128::from_le_bytes(raw));
        assert_eq!(parse_token(id.to_wire().as_bytes()), Some(id));
    }
});
