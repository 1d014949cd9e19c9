#![no_main]
//! Chunked decoder: the end found is the same however the input is split.

use enforcer::l7::http::ChunkedDecoder;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&cut, body)) = data.split_first() else {
        return;
    };
    let whole = ChunkedDecoder::new().feed(body);
    let k = usize::from(cut).min(body.len());
    let mut d = ChunkedDecoder::new();
    let split = d.feed(&body[..k]).and_then(|(a, done)| {
        if done {
            Ok((a, true))
        } else {
            d.feed(&body[k..]).map(|(b, done)| (a + b, done))
        }
    });
    match (whole, split) {
        (Ok(w), Ok(s)) => assert_eq!(w, s),
        (Err(_), Err(_)) => {}
        (w, s) => panic!("whole {w:?} vs split {s:?}"),
    }
});
