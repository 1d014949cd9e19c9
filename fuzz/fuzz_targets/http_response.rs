#![no_main]
//! HTTP response framing: no panic, head within the input.

use enforcer::l7::http::parse_response;
use enforcer::l7::Parse;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Parse::Complete(h) = parse_response(data, None) {
        assert!(h.head_len <= data.len());
    }
});
