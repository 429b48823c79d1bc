//! The query request parser: total on any bytes; what it accepts survives a render/parse
//! round trip; what it refuses is a `bad_request`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use udp_director::protocol::query::{ErrorCode, parse_request};

fuzz_target!(|line: &[u8]| {
    match parse_request(line) {
        Ok(request) => {
            assert!(!request.resource_type.is_empty());
            let again = serde_json::to_vec(&request).expect("a parsed request serializes");
            assert_eq!(parse_request(&again).expect("round trip"), request);
        }
        Err(e) => assert_eq!(e.code, ErrorCode::BadRequest),
    }
});
