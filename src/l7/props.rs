//! Property tests over all parsers: arbitrary bytes never panic and never
//! claim more than they were given; well-formed requests give NeedMore for
//! every strict prefix and the same result with trailing bytes.

use proptest::prelude::*;

use super::http::{parse_response, ChunkedDecoder, Http};
use super::memcache::{binary, Memcache};
use super::{Parse, Protocol, ReplyHead};

fn head_len<T>(p: &Parse<super::RequestHead<T>>) -> Option<usize> {
    match p {
        Parse::Complete(h) => Some(h.head_len),
        _ => None,
    }
}

fn reply_len(p: &Parse<ReplyHead>) -> Option<usize> {
    match p {
        Parse::Complete(h) => Some(h.head_len),
        _ => None,
    }
}

/// Requests of every shape the parsers accept, with random tokens inside.
fn http_request() -> impl Strategy<Value = Vec<u8>> {
    let method = prop::sample::select(vec![
        "GET", "POST", "PUT", "DELETE", "HEAD", "PATCH", "X-CUSTOM",
    ]);
    // Segments never "." or ".." (the parser refuses dot-segments).
    let path =
        "/([a-z0-9_-][a-z0-9._-]{0,5}/){0,3}([a-z0-9_-][a-z0-9._-]{0,5})?(\\?[a-z0-9=&]{0,10})?";
    let host = "[a-z]{1,10}(:[0-9]{1,5})?";
    let hdrs = prop::collection::vec(("[A-Za-z-]{1,12}", "[ -~]{0,20}"), 0..6);
    let framing = prop::sample::select(vec![
        "",
        "Content-Length: 5\r\n",
        "Transfer-Encoding: chunked\r\n",
        "Expect: 100-continue\r\nContent-Length: 1\r\n",
    ]);
    (method, path, host, hdrs, framing).prop_map(|(m, p, h, hs, f)| {
        let mut s = format!("{m} {p} HTTP/1.1\r\nHost: {h}\r\n");
        for (n, v) in hs {
            let lower = n.to_ascii_lowercase();
            if ["host", "content-length", "transfer-encoding"].contains(&lower.as_str()) {
                continue;
            }
            s.push_str(&format!("{n}: {}\r\n", v.trim()));
        }
        // Bodies only where a method has body semantics (the parser
        // refuses them on GET, HEAD and DELETE).
        if !["GET", "HEAD", "DELETE"].contains(&m) {
            s.push_str(f);
        }
        s.push_str("\r\n");
        s.into_bytes()
    })
}

fn mc_text_request() -> impl Strategy<Value = Vec<u8>> {
    let key = "[!-~]{1,40}";
    prop_oneof![
        prop::collection::vec(key, 1..5).prop_map(|ks| format!("get {}\r\n", ks.join(" "))),
        (key, 0u32..1000, any::<bool>()).prop_map(|(k, n, q)| format!(
            "set {k} 0 0 {n}{}\r\n",
            if q { " noreply" } else { "" }
        )),
        (key, any::<u64>()).prop_map(|(k, n)| format!("incr {k} {n}\r\n")),
        key.prop_map(|k| format!("mg {k} v f q\r\n")),
        (key, 0u32..100).prop_map(|(k, n)| format!("ms {k} {n} MA T0\r\n")),
        Just("stats slabs\r\n".to_string()),
    ]
    .prop_map(String::into_bytes)
}

fn mc_binary_request() -> impl Strategy<Value = Vec<u8>> {
    (
        prop::sample::select(vec![0x00u8, 0x01, 0x09, 0x0c, 0x0d, 0x11, 0x0e, 0x1c]),
        any::<u32>(),
        prop::collection::vec(any::<u8>(), 1..60),
        prop::collection::vec(any::<u8>(), 0..40),
    )
        .prop_map(|(op, opaque, key, value)| {
            let (extras, value): (&[u8], &[u8]) = match op {
                0x01 | 0x11 => (&[0; 8], &value),
                0x0e => (&[], &value),
                0x1c => (&[0; 4], &[]),
                _ => (&[], &[]),
            };
            binary::request(op, opaque, extras, &key, value)
        })
}

fn check_prefixes<P: Protocol>(mk: impl Fn() -> P, bytes: &[u8]) -> Result<(), TestCaseError> {
    let full = mk().parse_request(bytes);
    let n =
        head_len(&full).ok_or_else(|| TestCaseError::fail(format!("not complete: {full:?}")))?;
    prop_assert_eq!(n, bytes.len());
    for cut in 0..n {
        prop_assert!(
            matches!(mk().parse_request(&bytes[..cut]), Parse::NeedMore),
            "cut {}",
            cut
        );
    }
    let mut longer = bytes.to_vec();
    longer.extend_from_slice(b"GET /next HTTP/1.1\r\n");
    prop_assert_eq!(head_len(&mk().parse_request(&longer)), Some(n));
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        let n = bytes.len();
        prop_assert!(head_len(&Http::new().parse_request(&bytes)).is_none_or(|h| h <= n));
        prop_assert!(reply_len(&parse_response(&bytes, None)).is_none_or(|h| h <= n));
        prop_assert!(head_len(&Memcache::new().parse_request(&bytes)).is_none_or(|h| h <= n));
        prop_assert!(reply_len(&Memcache::new().parse_reply(&bytes, None)).is_none_or(|h| h <= n));
        if let Ok((used, _)) = ChunkedDecoder::new().feed(&bytes) {
            prop_assert!(used <= n);
        }
    }

    #[test]
    fn http_requests_split_anywhere(bytes in http_request()) {
        check_prefixes(Http::new, &bytes)?;
    }

    #[test]
    fn memcache_text_requests_split_anywhere(bytes in mc_text_request()) {
        check_prefixes(Memcache::new, &bytes)?;
    }

    #[test]
    fn memcache_binary_heads_split_anywhere(bytes in mc_binary_request()) {
        let full = Memcache::new().parse_request(&bytes);
        let n = head_len(&full).ok_or_else(|| TestCaseError::fail(format!("{full:?}")))?;
        for cut in 0..n {
            prop_assert!(matches!(Memcache::new().parse_request(&bytes[..cut]), Parse::NeedMore));
        }
        prop_assert_eq!(Memcache::new().parse_request(&bytes[..n]), full);
    }

    #[test]
    fn chunked_split_anywhere(chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 1..50), 0..5),
                              cut in any::<prop::sample::Index>()) {
        let mut body = Vec::new();
        for c in &chunks {
            body.extend_from_slice(format!("{:x};e=1\r\n", c.len()).as_bytes());
            body.extend_from_slice(c);
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(b"0\r\nT: x\r\n\r\n");
        let end = body.len();
        body.extend_from_slice(b"NEXT");
        let k = cut.index(body.len() + 1);
        let mut d = ChunkedDecoder::new();
        let (a, done_a) = d.feed(&body[..k]).unwrap();
        let (b, done_b) = if done_a { (0, true) } else { d.feed(&body[k..]).unwrap() };
        prop_assert_eq!((a + b, done_b), (end, true));
    }
}

/// Walk a pipelined byte stream the way the stream layer does: head, then
/// body by its framing, then the next head.
fn walk<P: Protocol>(p: &mut P, mut buf: &[u8]) -> Vec<String>
where
    P::Request: std::fmt::Debug,
{
    let mut seen = Vec::new();
    while !buf.is_empty() {
        let h = match p.parse_request(buf) {
            Parse::Complete(h) => h,
            o => panic!("{o:?} at {:?}", String::from_utf8_lossy(buf)),
        };
        seen.push(format!("{:?}", p.subject(&h.req)));
        buf = &buf[h.head_len..];
        let body = match h.body {
            super::Body::None => 0,
            super::Body::Length(n) => n as usize,
            super::Body::Chunked => {
                let (n, done) = ChunkedDecoder::new().feed(buf).unwrap();
                assert!(done);
                n
            }
        };
        buf = &buf[body..];
    }
    seen
}

#[test]
fn pipelined_http_with_bodies() {
    let s = b"POST /a HTTP/1.1\r\nHost: d\r\nContent-Length: 5\r\n\r\nhello\
PUT /b HTTP/1.1\r\nHost: d\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n\
GET /c HTTP/1.1\r\nHost: d\r\n\r\n";
    let seen = walk(&mut Http::new(), s);
    assert_eq!(seen.len(), 3);
    assert!(seen[0].contains("\"/a\"") && seen[1].contains("\"/b\"") && seen[2].contains("\"/c\""));
}

#[test]
fn pipelined_memcache_text_and_binary() {
    let s = b"set awing-coord 0 0 5\r\nhello\r\nget awing-coord xwing-coord\r\nms k 2 MA\r\nhi\r\nmn\r\n";
    let seen = walk(&mut Memcache::new(), s);
    assert_eq!(seen.len(), 4, "{seen:?}");
    assert!(seen[1].contains("xwing-coord") && seen[3].contains("mn"));
    let mut b = binary::request(0x01, 1, &[0; 8], b"k", b"value");
    b.extend(binary::request(0x09, 2, &[], b"k", &[]));
    b.extend(binary::request(0x0a, 3, &[], &[], &[]));
    let seen = walk(&mut Memcache::new(), &b);
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert!(
        seen[0].contains("\"set\"") && seen[1].contains("\"getq\"") && seen[2].contains("\"noop\"")
    );
}
