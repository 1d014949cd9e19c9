#![no_main]
//! memcached text requests and replies: no panic, heads within the input,
//! and a complete request is NeedMore when cut short.

use enforcer::l7::memcache::text;
use enforcer::l7::memcache::Memcache;
use enforcer::l7::{Parse, Protocol};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let full = text::parse(data);
    if let Parse::Complete(h) = &full {
        assert!(h.head_len <= data.len());
        assert_eq!(text::parse(&data[..h.head_len - 1]), Parse::NeedMore);
        let mut m = Memcache::new();
        let _ = m.deny_reply(&h.req, &enforcer::config::DenyReply::default());
        let _ = m.subject(&h.req);
        if let Parse::Complete(r) = m.parse_reply(data, Some(&h.req)) {
            assert!(r.head_len <= data.len());
        }
    }
    if let Parse::Complete(r) = Memcache::new().parse_reply(data, None) {
        assert!(r.head_len <= data.len());
    }
});
