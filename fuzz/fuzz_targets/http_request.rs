#![no_main]
//! HTTP request heads: no panic, head within the input, and a complete head
//! parses identically when more bytes follow and as NeedMore when cut short;
//! its header fields read back as names and values.

use enforcer::l7::http::Http;
use enforcer::l7::{Parse, Protocol};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut p = Http::new();
    let full = p.parse_request(data);
    if let Parse::Complete(h) = &full {
        assert!(h.head_len <= data.len());
        let head = &data[..h.head_len];
        assert_eq!(p.parse_request(head), full.clone());
        if h.head_len > 0 {
            assert_eq!(p.parse_request(&head[..h.head_len - 1]), Parse::NeedMore);
        }
        // Header fields are read again from the stored head when asked.
        for (name, value) in h.req.headers() {
            assert!(!name.is_empty() && !name.contains(&b':'));
            assert!(!value.iter().any(|c| matches!(c, 0 | b'\r' | b'\n')));
        }
        let _ = p.subject(&h.req);
        let _ = p.deny_reply(&h.req, &enforcer::config::DenyReply::default());
    }
});
