//! memcached binary protocol requests: a 24-byte header, then extras, key
//! and value. The head the stream layer holds is header + extras + key.

use super::command::{is_quiet, Command};
use super::text::MAX_KEY;
use super::{Keys, McRequest};
use crate::l7::{Body, Parse, RequestHead};

pub const HEADER_LEN: usize = 24;
pub const MAGIC_REQUEST: u8 = 0x80;
pub const MAGIC_RESPONSE: u8 = 0x81;

/// Fixed fields of a binary header (request or response).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub magic: u8,
    pub opcode: u8,
    pub key_len: u16,
    pub extras_len: u8,
    pub data_type: u8,
    /// vbucket id in requests, status in responses.
    pub vbucket_or_status: u16,
    pub body_len: u32,
    pub opaque: u32,
}

impl Header {
    /// Read a header; None when fewer than 24 bytes are available.
    pub fn read(b: &[u8]) -> Option<Header> {
        let h: &[u8; HEADER_LEN] = b.get(..HEADER_LEN)?.try_into().ok()?;
        Some(Header {
            magic: h[0],
            opcode: h[1],
            key_len: u16::from_be_bytes([h[2], h[3]]),
            extras_len: h[4],
            data_type: h[5],
            vbucket_or_status: u16::from_be_bytes([h[6], h[7]]),
            body_len: u32::from_be_bytes([h[8], h[9], h[10], h[11]]),
            opaque: u32::from_be_bytes([h[12], h[13], h[14], h[15]]),
        })
    }

    /// Extras and key fit in the body; returns the value length.
    pub fn value_len(&self) -> Option<u32> {
        self.body_len
            .checked_sub(u32::from(self.extras_len) + u32::from(self.key_len))
    }
}

#[derive(Clone, Copy)]
enum Key {
    Required,
    Forbidden,
    Optional,
}

/// What a request with this opcode must look like: extras lengths allowed,
/// key, and whether a value may follow. None: opcode unknown.
fn shape(op: u8) -> Option<(&'static [u8], Key, bool)> {
    use Key::*;
    Some(match op {
        0x00 | 0x09 | 0x0c | 0x0d => (&[0], Required, false), // get*
        0x01..=0x03 | 0x11..=0x13 => (&[8], Required, true),  // set/add/replace
        0x04 | 0x14 => (&[0], Required, false),               // delete
        0x05 | 0x06 | 0x15 | 0x16 => (&[20], Required, false), // incr/decr
        0x07 | 0x17 | 0x0a | 0x0b | 0x20 => (&[0], Forbidden, false), // quit, noop, version, sasl list
        0x08 | 0x18 => (&[0, 4], Forbidden, false),                   // flush [expiration]
        0x0e | 0x0f | 0x19 | 0x1a => (&[0], Required, true),          // append/prepend
        0x10 => (&[0], Optional, false),                              // stat [group]
        0x1b => (&[4], Forbidden, false),                             // verbosity
        0x1c | 0x1d | 0x1e | 0x23 | 0x24 => (&[4], Required, false),  // touch, gat*
        0x21 | 0x22 => (&[0], Required, true), // sasl auth/step: mechanism + data
        // Range, vbucket and tap commands: no fixed shape we enforce.
        0x30..=0x47 => (&[], Optional, true),
        _ => return None,
    })
}

pub fn parse(buf: &[u8]) -> Parse<RequestHead<McRequest>> {
    if buf.first().is_some_and(|&m| m != MAGIC_REQUEST) {
        return Parse::Invalid("bad magic");
    }
    let Some(h) = Header::read(buf) else {
        return Parse::NeedMore;
    };
    if h.data_type != 0 {
        return Parse::Invalid("unknown data type");
    }
    let Some((extras, key_rule, value_ok)) = shape(h.opcode) else {
        return Parse::Invalid("unknown opcode");
    };
    let Some(value_len) = h.value_len() else {
        return Parse::Invalid("extras and key longer than body");
    };
    if !extras.is_empty() && !extras.contains(&h.extras_len) {
        return Parse::Invalid("bad extras length");
    }
    match key_rule {
        Key::Required if h.key_len == 0 => return Parse::Invalid("missing key"),
        Key::Forbidden if h.key_len != 0 => return Parse::Invalid("unexpected key"),
        _ => {}
    }
    // memcached does not implement these: it answers "unknown command" and
    // then skips the whole body although it already consumed extras and key,
    // so its idea of where the request ends matches ours (and the spec's)
    // only when both are empty. Anything else would desynchronise us.
    if matches!(h.opcode, 0x1b | 0x30..=0x47) && (h.extras_len != 0 || h.key_len != 0) {
        return Parse::Invalid("opcode memcached frames differently");
    }
    if usize::from(h.key_len) > MAX_KEY {
        return Parse::Invalid("key too long");
    }
    if !value_ok && value_len != 0 {
        return Parse::Invalid("unexpected value");
    }
    let head_len = HEADER_LEN + usize::from(h.extras_len) + usize::from(h.key_len);
    let Some(key) = buf.get(HEADER_LEN + usize::from(h.extras_len)..head_len) else {
        return Parse::NeedMore;
    };
    let keys = if key.is_empty() {
        Keys::new()
    } else {
        Keys::one(key)
    };
    Parse::Complete(RequestHead {
        head_len,
        body: if value_len == 0 {
            Body::None
        } else {
            Body::Length(u64::from(value_len))
        },
        req: McRequest {
            command: Command::Binary(h.opcode),
            keys,
            noreply: is_quiet(h.opcode),
            opaque: h.opaque,
        },
    })
}

/// The error response the client gets for a denied request.
pub fn deny_response(opcode: u8, opaque: u32) -> Vec<u8> {
    const BODY: &[u8] = b"access denied";
    let mut out = Vec::with_capacity(HEADER_LEN + BODY.len());
    out.extend_from_slice(&[MAGIC_RESPONSE, opcode, 0, 0, 0, 0]);
    out.extend_from_slice(&0x0008u16.to_be_bytes());
    out.extend_from_slice(&(BODY.len() as u32).to_be_bytes());
    out.extend_from_slice(&opaque.to_be_bytes());
    out.extend_from_slice(&[0; 8]);
    out.extend_from_slice(BODY);
    out
}

/// Build a request (tests, benches, fuzz seeds).
pub fn request(opcode: u8, opaque: u32, extras: &[u8], key: &[u8], value: &[u8]) -> Vec<u8> {
    let mut out = vec![MAGIC_REQUEST, opcode];
    out.extend_from_slice(&(key.len() as u16).to_be_bytes());
    out.push(extras.len() as u8);
    out.extend_from_slice(&[0, 0, 0]);
    out.extend_from_slice(&((extras.len() + key.len() + value.len()) as u32).to_be_bytes());
    out.extend_from_slice(&opaque.to_be_bytes());
    out.extend_from_slice(&[0; 8]);
    out.extend_from_slice(extras);
    out.extend_from_slice(key);
    out.extend_from_slice(value);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::l7::memcache::command::opcode_name;

    fn ok(b: &[u8]) -> RequestHead<McRequest> {
        match parse(b) {
            Parse::Complete(h) => h,
            o => panic!("{b:?}: {o:?}"),
        }
    }

    #[test]
    fn get_and_set() {
        let b = request(0x00, 7, &[], b"awing-coord", &[]);
        let h = ok(&b);
        assert_eq!((h.head_len, h.body), (24 + 11, Body::None));
        assert_eq!(h.req.command, Command::Binary(0));
        assert_eq!((h.req.opaque, h.req.noreply), (7, false));
        assert_eq!(h.req.keys, Keys::one(b"awing-coord"));
        let b = request(0x11, 9, &[0; 8], b"k", b"value");
        let h = ok(&b);
        assert_eq!(
            (h.head_len, h.body, h.req.noreply),
            (24 + 8 + 1, Body::Length(5), true)
        );
        for cut in 0..h.head_len {
            assert_eq!(parse(&b[..cut]), Parse::NeedMore, "cut {cut}");
        }
        assert_eq!(parse(&b[..h.head_len]), Parse::Complete(h));
    }

    #[test]
    fn every_known_opcode_with_its_shape() {
        // (opcode, extras, key, value)
        type Case = (u8, &'static [u8], &'static [u8], &'static [u8]);
        let cases: &[Case] = &[
            (0x00, &[], b"k", &[]),
            (0x01, &[0; 8], b"k", b"v"),
            (0x02, &[0; 8], b"k", b"v"),
            (0x03, &[0; 8], b"k", b"v"),
            (0x04, &[], b"k", &[]),
            (0x05, &[0; 20], b"k", &[]),
            (0x06, &[0; 20], b"k", &[]),
            (0x07, &[], &[], &[]),
            (0x08, &[], &[], &[]),
            (0x08, &[0; 4], &[], &[]),
            (0x09, &[], b"k", &[]),
            (0x0a, &[], &[], &[]),
            (0x0b, &[], &[], &[]),
            (0x0c, &[], b"k", &[]),
            (0x0d, &[], b"k", &[]),
            (0x0e, &[], b"k", b"v"),
            (0x0f, &[], b"k", b"v"),
            (0x10, &[], &[], &[]),
            (0x10, &[], b"items", &[]),
            (0x11, &[0; 8], b"k", b"v"),
            (0x12, &[0; 8], b"k", b"v"),
            (0x13, &[0; 8], b"k", b"v"),
            (0x14, &[], b"k", &[]),
            (0x15, &[0; 20], b"k", &[]),
            (0x16, &[0; 20], b"k", &[]),
            (0x17, &[], &[], &[]),
            (0x18, &[0; 4], &[], &[]),
            (0x19, &[], b"k", b"v"),
            (0x1a, &[], b"k", b"v"),
            (0x1c, &[0; 4], b"k", &[]),
            (0x1d, &[0; 4], b"k", &[]),
            (0x1e, &[0; 4], b"k", &[]),
            (0x20, &[], &[], &[]),
            (0x21, &[], b"PLAIN", b"\0u\0p"),
            (0x22, &[], b"PLAIN", b"x"),
            (0x23, &[0; 4], b"k", &[]),
            (0x24, &[0; 4], b"k", &[]),
        ];
        for &(op, ex, k, v) in cases {
            let h = ok(&request(op, 1, ex, k, v));
            assert_eq!(h.head_len, 24 + ex.len() + k.len(), "{op:#x}");
            assert_eq!(
                h.body,
                if v.is_empty() {
                    Body::None
                } else {
                    Body::Length(v.len() as u64)
                }
            );
            assert_eq!(h.req.noreply, is_quiet(op));
            assert!(opcode_name(op).is_some());
        }
    }

    #[test]
    fn invalid_shapes() {
        let mut bad_magic = request(0x00, 0, &[], b"k", &[]);
        bad_magic[0] = 0x81;
        assert_eq!(parse(&bad_magic), Parse::Invalid("bad magic"));
        assert_eq!(parse(&bad_magic[..1]), Parse::Invalid("bad magic"));
        assert_eq!(
            parse(&request(0x55, 0, &[], b"k", &[])),
            Parse::Invalid("unknown opcode")
        );
        assert_eq!(
            parse(&request(0x00, 0, &[], &[], &[])),
            Parse::Invalid("missing key")
        );
        assert_eq!(
            parse(&request(0x00, 0, &[], b"k", b"v")),
            Parse::Invalid("unexpected value")
        );
        assert_eq!(
            parse(&request(0x01, 0, &[0; 4], b"k", b"v")),
            Parse::Invalid("bad extras length")
        );
        assert_eq!(
            parse(&request(0x0a, 0, &[], b"k", &[])),
            Parse::Invalid("unexpected key")
        );
        assert_eq!(
            parse(&request(0x00, 0, &[], &[b'k'; 251], &[])),
            Parse::Invalid("key too long")
        );
        let mut short_body = request(0x00, 0, &[], b"key", &[]);
        short_body[11] = 2; // body length 2 < key length 3
        assert_eq!(
            parse(&short_body),
            Parse::Invalid("extras and key longer than body")
        );
        let mut dt = request(0x00, 0, &[], b"k", &[]);
        dt[5] = 1;
        assert_eq!(parse(&dt), Parse::Invalid("unknown data type"));
    }

    #[test]
    fn opcodes_memcached_does_not_implement_only_without_extras_or_key() {
        // Spec-shaped verbosity carries 4 extras bytes; memcached 1.6 would
        // then skip 4 bytes of the next request.
        assert_eq!(
            parse(&request(0x1b, 0, &[0; 4], &[], &[])),
            Parse::Invalid("opcode memcached frames differently")
        );
        assert_eq!(
            parse(&request(0x30, 0, &[], b"k", &[])),
            Parse::Invalid("opcode memcached frames differently")
        );
        let h = ok(&request(0x31, 0, &[], &[], b"value"));
        assert_eq!((h.head_len, h.body), (24, Body::Length(5)));
    }

    #[test]
    fn denial_copies_opcode_and_opaque() {
        let d = deny_response(0x01, 0xdeadbeef);
        let h = Header::read(&d).unwrap();
        assert_eq!(
            (h.magic, h.opcode, h.vbucket_or_status, h.opaque),
            (0x81, 0x01, 8, 0xdeadbeef)
        );
        assert_eq!(h.body_len as usize, d.len() - 24);
        assert_eq!(&d[24..], b"access denied");
    }
}
