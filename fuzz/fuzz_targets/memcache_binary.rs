#![no_main]
//! memcached binary requests and responses: no panic, heads within the input.

use enforcer::l7::memcache::{binary, Memcache};
use enforcer::l7::{Parse, Protocol};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Parse::Complete(h) = binary::parse(data) {
        assert!(h.head_len <= data.len());
        assert_eq!(binary::parse(&data[..h.head_len - 1]), Parse::NeedMore);
        let mut m = Memcache::new();
        if let Some(d) = m.deny_reply(&h.req, &enforcer::config::DenyReply::default()) {
            assert_eq!(
                binary::Header::read(&d).map(|x| x.opaque),
                Some(h.req.opaque)
            );
        }
        let mut resp = data.to_vec();
        resp[0] = binary::MAGIC_RESPONSE;
        if let Parse::Complete(r) = m.parse_reply(&resp, Some(&h.req)) {
            assert!(r.head_len <= resp.len());
        }
    }
});
