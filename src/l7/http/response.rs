//! HTTP/1.x response framing (RFC 9112 §6.3): where one response ends, so
//! that replies and injected denials reach the client in request order.

use nom::bytes::streaming::{tag, take_while, take_while_m_n};

use super::head::{
    content_length, crlf, header_lines, is_value_char, lift, transfer_encoding, Stop, TeState,
};
use super::request::HttpRequest;
use crate::l7::{Parse, ReplyBody, ReplyHead};

/// Parse one response head from the start of `buf`; `req` is the request it
/// answers (HEAD and CONNECT change the framing).
pub fn parse_response(buf: &[u8], req: Option<&HttpRequest>) -> Parse<ReplyHead> {
    match parse(buf, req) {
        Ok(h) => Parse::Complete(h),
        Err(Stop::NeedMore) => Parse::NeedMore,
        Err(Stop::Invalid(why)) => Parse::Invalid(why),
    }
}

fn parse(buf: &[u8], req: Option<&HttpRequest>) -> Result<ReplyHead, Stop> {
    let (i, _) = lift(tag(&b"HTTP/1."[..])(buf), "bad status line")?;
    let (i, _) = match i.first() {
        None => return Err(Stop::NeedMore),
        Some(b'0' | b'1') => (&i[1..], ()),
        Some(_) => return Err(Stop::Invalid("unsupported HTTP version")),
    };
    let (i, _) = lift(tag(&b" "[..])(i), "bad status line")?;
    let (i, code) = lift(
        take_while_m_n(3, 3, |c: u8| c.is_ascii_digit())(i),
        "bad status code",
    )?;
    let status = code.iter().fold(0u16, |a, &d| a * 10 + u16::from(d - b'0'));
    // The reason phrase (and its leading SP) may be empty.
    let i = match i.first() {
        Some(b' ') => lift(take_while(is_value_char)(&i[1..]), "bad reason phrase")?.0,
        _ => i,
    };
    let i = crlf(i)?;

    let mut cl = None;
    let mut te = TeState::default();
    let rest = header_lines(i, |name, value| {
        if name.eq_ignore_ascii_case(b"content-length") {
            content_length(value, &mut cl)?;
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            transfer_encoding(value, &mut te)?;
        }
        Ok(())
    })?;
    let head_len = buf.len() - rest.len();
    let head_req = req.is_some_and(HttpRequest::is_head);
    let connect = req.is_some_and(HttpRequest::is_connect);

    let (body, last) = match status {
        101 => (ReplyBody::UntilClose, true),
        100..=199 => (ReplyBody::None, false),
        _ if head_req => (ReplyBody::None, true),
        204 | 304 => (ReplyBody::None, true),
        200..=299 if connect => (ReplyBody::UntilClose, true),
        _ if te.present => {
            if cl.is_some() {
                return Err(Stop::Invalid("both Content-Length and Transfer-Encoding"));
            }
            if te.chunked_last && !te.chunked_misplaced {
                (ReplyBody::Chunked, true)
            } else {
                (ReplyBody::UntilClose, true)
            }
        }
        _ => match cl {
            Some(0) => (ReplyBody::None, true),
            Some(n) => (ReplyBody::Length(n), true),
            None => (ReplyBody::UntilClose, true),
        },
    };
    Ok(ReplyHead {
        head_len,
        body,
        last,
        unsolicited: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::l7::http::request::test_request as req;

    fn reply(s: &str, r: Option<&HttpRequest>) -> ReplyHead {
        match parse_response(s.as_bytes(), r) {
            Parse::Complete(h) => h,
            o => panic!("{s:?}: {o:?}"),
        }
    }

    #[test]
    fn framing_by_status_and_headers() {
        let get = req("GET / HTTP/1.1\r\nHost: a\r\n\r\n");
        let head = req("HEAD / HTTP/1.1\r\nHost: a\r\n\r\n");
        let s = "HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n";
        let h = reply(s, Some(&get));
        assert_eq!(
            (h.head_len, h.body, h.last, h.unsolicited),
            (s.len(), ReplyBody::Length(12), true, false)
        );
        assert_eq!(reply(s, Some(&head)).body, ReplyBody::None);
        assert_eq!(reply(s, None).body, ReplyBody::Length(12));
        let c = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(reply(c, Some(&get)).body, ReplyBody::Chunked);
        let g = "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n";
        assert_eq!(reply(g, Some(&get)).body, ReplyBody::UntilClose);
        assert_eq!(
            reply("HTTP/1.0 200 OK\r\n\r\n", Some(&get)).body,
            ReplyBody::UntilClose
        );
        assert_eq!(
            reply(
                "HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n",
                Some(&get)
            )
            .body,
            ReplyBody::None
        );
        assert_eq!(
            reply("HTTP/1.1 304 Not Modified\r\n\r\n", Some(&get)).body,
            ReplyBody::None
        );
        assert_eq!(
            reply("HTTP/1.1 404 \r\nContent-Length: 0\r\n\r\n", Some(&get)).body,
            ReplyBody::None
        );
        assert_eq!(
            reply("HTTP/1.1 503\r\nContent-Length: 26\r\n\r\n", Some(&get)).body,
            ReplyBody::Length(26)
        );
    }

    #[test]
    fn interim_upgrade_and_connect() {
        let get = req("GET / HTTP/1.1\r\nHost: a\r\n\r\n");
        let h = reply("HTTP/1.1 100 Continue\r\n\r\n", Some(&get));
        assert_eq!((h.body, h.last), (ReplyBody::None, false));
        let h = reply(
            "HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\n",
            Some(&get),
        );
        assert!(!h.last);
        let h = reply(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
            Some(&get),
        );
        assert_eq!((h.body, h.last), (ReplyBody::UntilClose, true));
        let conn = req("CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n");
        assert_eq!(
            reply("HTTP/1.1 200 OK\r\n\r\n", Some(&conn)).body,
            ReplyBody::UntilClose
        );
        assert_eq!(
            reply(
                "HTTP/1.1 407 Auth\r\nContent-Length: 3\r\n\r\n",
                Some(&conn)
            )
            .body,
            ReplyBody::Length(3)
        );
    }

    #[test]
    fn split_and_invalid() {
        let s = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n";
        for cut in 0..s.len() {
            assert_eq!(
                parse_response(&s[..cut], None),
                Parse::NeedMore,
                "cut {cut}"
            );
        }
        for bad in [
            &b"HTTP/2 200 OK\r\n\r\n"[..],
            b"HTTP/1.1 20 OK\r\n\r\n",
            b"HTTP/1.1 2000 OK\r\n\r\n",
            b"HTTP/1.1 200 OK\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"SSH-2.0-OpenSSH\r\n",
        ] {
            assert!(
                matches!(parse_response(bad, None), Parse::Invalid(_)),
                "{bad:?}"
            );
        }
    }
}
