//! HTTP/1.x request heads: request line, headers and body framing. Shapes
//! that let two parsers disagree about where a request ends (smuggling) are
//! refused rather than guessed.

use nom::bytes::streaming::tag;

use super::head::{
    content_length, crlf, header_lines, lift, sp, token, transfer_encoding, trim_ows, Stop, TeState,
};
use crate::l7::{Body, Parse, RequestHead};
use crate::packed::Inline;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    Http10,
    Http11,
}

/// Byte range into `HttpRequest::head`.
type Span = (u32, u32);

/// Bytes of a request head held in the `HttpRequest` itself: what API
/// clients send (curl's GET is 78 bytes, the Star Wars POST 110). Longer
/// heads (browsers' cookies and user agents) go to the heap.
const HEAD_INLINE: usize = 200;

/// The bytes of one request head, in place or on the heap.
type HeadBytes = Inline<HEAD_INLINE>;

/// A parsed request head. It owns one copy of the head bytes (`HeadBytes`:
/// a usual head costs no allocation); attributes are ranges into it.
/// Header fields are not indexed: few rules test them, so `headers` reads
/// them again from the (already checked) head when asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpRequest {
    head: HeadBytes,
    method: Span,
    path: Span,
    /// Absolute-form target with an empty path: the path is "/".
    root_path: bool,
    host: Span,
    /// Where the first header line starts in `head`.
    fields: u32,
    pub version: Version,
    /// `Expect: 100-continue`: the client waits for a 100 (or a final reply) before the body.
    pub expect_continue: bool,
    /// `Connection: close` was sent.
    pub connection_close: bool,
}

impl HttpRequest {
    fn get(&self, s: Span) -> &[u8] {
        self.head
            .bytes()
            .get(s.0 as usize..s.1 as usize)
            .unwrap_or(&[])
    }
    pub fn method(&self) -> &[u8] {
        self.get(self.method)
    }
    /// Path and query as sent (for absolute-form, the part after the authority;
    /// `*` for asterisk-form; empty for CONNECT).
    pub fn path(&self) -> &[u8] {
        if self.root_path {
            b"/"
        } else {
            self.get(self.path)
        }
    }
    /// Host header, or the authority of an absolute-form / CONNECT target.
    pub fn host(&self) -> &[u8] {
        self.get(self.host)
    }
    /// Header fields in order, as (name, value without surrounding
    /// whitespace). The parse checked every line from `fields` on: each is
    /// `token ":" value CRLF` (no CR or LF inside), up to an empty line.
    pub fn headers(&self) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
        let fields = self.head.bytes().get(self.fields as usize..).unwrap_or(&[]);
        fields
            .split(|&c| c == b'\n')
            .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
            .take_while(|l| !l.is_empty())
            .map(|l| {
                let colon = l.iter().position(|&c| c == b':').unwrap_or(l.len());
                let (name, value) = l.split_at(colon);
                (name, trim_ows(value.get(1..).unwrap_or(&[])))
            })
    }
    /// Values of the headers called `name` (ASCII case-insensitive).
    pub fn header_values<'a>(&'a self, name: &'a [u8]) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.headers()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }
    pub fn is_head(&self) -> bool {
        self.method() == b"HEAD"
    }
    pub fn is_connect(&self) -> bool {
        self.method() == b"CONNECT"
    }
}

fn span(base: &[u8], part: &[u8]) -> Span {
    let start = part.as_ptr() as usize - base.as_ptr() as usize;
    (start as u32, (start + part.len()) as u32)
}

/// Parse one request head from the start of `buf`.
pub fn parse_request(buf: &[u8]) -> Parse<RequestHead<HttpRequest>> {
    match parse(buf) {
        Ok(h) => Parse::Complete(h),
        Err(Stop::NeedMore) => Parse::NeedMore,
        Err(Stop::Invalid(why)) => Parse::Invalid(why),
    }
}

fn parse(buf: &[u8]) -> Result<RequestHead<HttpRequest>, Stop> {
    // Heads are bounded by the stream layer; spans are u32.
    if buf.len() > u32::MAX as usize / 2 {
        return Err(Stop::Invalid("head too large"));
    }
    // RFC 9112 §2.2: empty lines before the request line are ignored.
    let mut i = buf;
    while let [b'\r' | b'\n', ..] = i {
        i = crlf(i)?;
    }
    let (i, method) = lift(token(i), "bad method")?;
    let (i, _) = lift(sp(i), "bad request line")?;
    let scanned = crate::l7::scan::target(i);
    let (target, i) = match scanned.len {
        n if n == i.len() => return Err(Stop::NeedMore),
        0 => return Err(Stop::Invalid("bad request-target")),
        n => i.split_at(n),
    };
    let (i, _) = lift(sp(i), "bad request line")?;
    let (i, _) = lift(tag(&b"HTTP/1."[..])(i), "unsupported HTTP version")?;
    // RFC 9110 §2.5: a later minor version is processed as the highest one
    // the recipient implements (nginx serves HTTP/1.2 as 1.1).
    let (version, later_minor) = match i.first() {
        None => return Err(Stop::NeedMore),
        Some(b'0') => (Version::Http10, false),
        Some(b'1') => (Version::Http11, false),
        Some(b'2'..=b'9') => (Version::Http11, true),
        Some(_) => return Err(Stop::Invalid("unsupported HTTP version")),
    };
    // Spaces before the line end (nginx takes them; the line still ends at
    // its CRLF for everyone).
    let mut i = &i[1..];
    while let [b' ', rest @ ..] = i {
        i = rest;
    }
    let i = crlf(i)?;
    let fields = (buf.len() - i.len()) as u32;

    let mut host_hdr: Option<&[u8]> = None;
    let mut cl = None;
    let mut te = TeState::default();
    let mut expect_continue = false;
    let mut connection_close = false;
    let rest = header_lines(i, |name, value| {
        // Only these five names matter here, and no two share a length:
        // most headers are passed over by one compare.
        if !matches!(name.len(), 4 | 6 | 10 | 14 | 17) {
            return Ok(());
        }
        if name.eq_ignore_ascii_case(b"host") {
            if host_hdr.is_some() {
                return Err(Stop::Invalid("repeated Host"));
            }
            if crate::l7::scan::bad_host(value) {
                return Err(Stop::Invalid("bad Host"));
            }
            host_hdr = Some(value);
        } else if name.eq_ignore_ascii_case(b"content-length") {
            content_length(value, &mut cl)?;
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            transfer_encoding(value, &mut te)?;
        } else if name.eq_ignore_ascii_case(b"expect") {
            expect_continue |= value.eq_ignore_ascii_case(b"100-continue");
        } else if name.eq_ignore_ascii_case(b"connection") {
            connection_close |= value
                .split(|&c| c == b',')
                .any(|t| trim_ows(t).eq_ignore_ascii_case(b"close"));
        }
        Ok(())
    })?;
    let head_len = buf.len() - rest.len();

    // Request-target forms (RFC 9112 §3.2).
    if scanned.fragment {
        return Err(Stop::Invalid("fragment in request-target"));
    }
    let mut path = target;
    let mut root_path = false;
    let mut authority: Option<&[u8]> = None;
    if method == b"CONNECT" {
        // authority-form: host:port, nothing else.
        if target.iter().any(|&c| matches!(c, b'/' | b'?' | b'@')) || !target.contains(&b':') {
            return Err(Stop::Invalid("CONNECT needs authority-form"));
        }
        authority = Some(target);
        path = &target[..0];
    } else if target == b"*" {
        if method != b"OPTIONS" {
            return Err(Stop::Invalid("asterisk-form outside OPTIONS"));
        }
    } else if target.first() != Some(&b'/') {
        let (auth, p) = split_absolute(target)?;
        authority = Some(auth);
        path = p;
        root_path = p.is_empty();
    }

    // Dot-segments: a server that normalises "/a/../b" to "/b" would serve
    // another path than the one judged. Clients normalise them before
    // sending; one that does not is refused (percent-encoded dots too).
    let path_only = || path.split(|&c| c == b'?').next().unwrap_or_default();
    if scanned.dots && path_only().split(|&c| c == b'/').any(is_dot_segment) {
        return Err(Stop::Invalid("dot-segment in path"));
    }

    let host = match (authority, host_hdr) {
        (Some(a), Some(h)) if !a.eq_ignore_ascii_case(h) => {
            return Err(Stop::Invalid("Host differs from request-target authority"))
        }
        (Some(a), _) => a,
        (None, Some(h)) => h,
        (None, None) => &buf[..0],
    };
    if version == Version::Http11 && host_hdr.is_none() {
        return Err(Stop::Invalid("HTTP/1.1 request without Host"));
    }

    let body = if te.present {
        if cl.is_some() {
            return Err(Stop::Invalid("both Content-Length and Transfer-Encoding"));
        }
        if version == Version::Http10 {
            return Err(Stop::Invalid("Transfer-Encoding in HTTP/1.0"));
        }
        if later_minor {
            // A server that does not take 1.x as 1.1 may not read chunked.
            return Err(Stop::Invalid("Transfer-Encoding in HTTP/1.2 or later"));
        }
        if !te.chunked_last || te.chunked_misplaced {
            return Err(Stop::Invalid("Transfer-Encoding does not end with chunked"));
        }
        Body::Chunked
    } else {
        match cl {
            Some(0) | None => Body::None,
            Some(n) => Body::Length(n),
        }
    };

    // Content on these has no defined meaning (RFC 9110 9.3): servers
    // disagree on whether they read it, and one that ignores it reads the
    // body as the next request, never judged as one.
    if body != Body::None && matches!(method, b"GET" | b"HEAD" | b"DELETE" | b"CONNECT" | b"TRACE")
    {
        return Err(Stop::Invalid("body on a method without body semantics"));
    }

    Ok(RequestHead {
        head_len,
        body,
        req: HttpRequest {
            head: HeadBytes::new(&buf[..head_len]),
            method: span(buf, method),
            path: span(buf, path),
            root_path,
            host: span(buf, host),
            fields,
            version,
            expect_continue,
            connection_close,
        },
    })
}

/// "." or "..", also written with `%2e`.
fn is_dot_segment(seg: &[u8]) -> bool {
    let mut dots = 0;
    let mut rest = seg;
    while !rest.is_empty() {
        if rest[0] == b'.' {
            rest = &rest[1..];
        } else if rest.len() >= 3 && rest[0] == b'%' && rest[1] == b'2' && rest[2] | 0x20 == b'e' {
            rest = &rest[3..];
        } else {
            return false;
        }
        dots += 1;
    }
    (1..=2).contains(&dots)
}

/// absolute-form `scheme://authority[/path...]` → (authority, path+query).
fn split_absolute(t: &[u8]) -> Result<(&[u8], &[u8]), Stop> {
    let bad = Stop::Invalid("bad request-target");
    let colon = t.iter().position(|&c| c == b':').ok_or(bad)?;
    let scheme = &t[..colon];
    if !(scheme.eq_ignore_ascii_case(b"http") || scheme.eq_ignore_ascii_case(b"https")) {
        return Err(bad);
    }
    let rest = t[colon + 1..].strip_prefix(b"//").ok_or(bad)?;
    let end = rest
        .iter()
        .position(|&c| matches!(c, b'/' | b'?'))
        .unwrap_or(rest.len());
    let (auth, path) = rest.split_at(end);
    // Userinfo is deprecated for http(s) and a classic confusion vector; a
    // query right after the authority would need a synthesized "/".
    if auth.is_empty() || auth.contains(&b'@') || path.first() == Some(&b'?') {
        return Err(bad);
    }
    Ok((auth, path))
}

/// A complete request head, parsed, for tests.
#[cfg(test)]
pub(crate) fn test_request(s: &str) -> HttpRequest {
    match parse_request(s.as_bytes()) {
        Parse::Complete(RequestHead { req, .. }) => req,
        o => panic!("{o:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> RequestHead<HttpRequest> {
        match parse_request(s.as_bytes()) {
            Parse::Complete(h) => h,
            other => panic!("{s:?}: {other:?}"),
        }
    }
    fn invalid(s: &str) -> &'static str {
        match parse_request(s.as_bytes()) {
            Parse::Invalid(w) => w,
            other => panic!("{s:?}: expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn dot_segments_are_refused_and_dots_elsewhere_are_not() {
        for t in [
            "/v1/../admin",
            "/./x",
            "/v1/%2e%2e/admin",
            "/v1/.%2E/x",
            "/a/..",
            "/..",
        ] {
            let req = format!("GET {t} HTTP/1.1\r\nHost: a\r\n\r\n");
            assert_eq!(invalid(&req), "dot-segment in path", "{t}");
        }
        for t in [
            "/v1/...",
            "/a.b/c",
            "/.well-known/x",
            "/v1/?q=../x",
            "/%2e%2e%2e",
        ] {
            let req = format!("GET {t} HTTP/1.1\r\nHost: a\r\n\r\n");
            ok(&req);
        }
    }

    #[test]
    fn simple_get() {
        let s = "GET /v1/ HTTP/1.1\r\nHost: deathstar\r\nUser-Agent: curl\r\n\r\nNEXT";
        let h = ok(s);
        assert_eq!(h.head_len, s.len() - 4);
        assert_eq!(h.body, Body::None);
        assert_eq!(h.req.method(), b"GET");
        assert_eq!(h.req.path(), b"/v1/");
        assert_eq!(h.req.host(), b"deathstar");
        assert_eq!(h.req.version, Version::Http11);
        let hs: Vec<_> = h.req.headers().collect();
        assert_eq!(
            hs,
            vec![(&b"Host"[..], &b"deathstar"[..]), (b"User-Agent", b"curl")]
        );
        assert_eq!(
            h.req.header_values(b"user-agent").collect::<Vec<_>>(),
            vec![b"curl"]
        );
    }

    #[test]
    fn split_at_every_byte_needs_more_then_same_result() {
        let cases = [
            "POST /v1/request-landing?x=1 HTTP/1.1\r\nHost: d\r\nContent-Length: 7\r\n\r\n",
            "PUT /p HTTP/1.1\r\nHost: d\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            "\r\nGET http://d:80/a HTTP/1.0\r\n\r\n",
            "OPTIONS * HTTP/1.0\r\n\r\n",
        ];
        for s in cases {
            let full = parse_request(s.as_bytes());
            assert!(matches!(full, Parse::Complete(_)), "{s:?}");
            for cut in 0..s.len() {
                assert_eq!(
                    parse_request(&s.as_bytes()[..cut]),
                    Parse::NeedMore,
                    "{s:?} @ {cut}"
                );
            }
            let mut longer = s.as_bytes().to_vec();
            longer.extend_from_slice(b"GET / HTTP/1.1\r\n");
            assert_eq!(parse_request(&longer), full);
        }
    }

    #[test]
    fn body_framing() {
        assert_eq!(
            ok("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 12\r\n\r\n").body,
            Body::Length(12)
        );
        assert_eq!(
            ok("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n").body,
            Body::None
        );
        assert_eq!(
            ok("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\ncontent-length: 3\r\n\r\n").body,
            Body::Length(3)
        );
        assert_eq!(
            ok("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n").body,
            Body::Chunked
        );
        assert_eq!(
            invalid("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n"),
            "conflicting Content-Length"
        );
        assert_eq!(
            invalid("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"),
            "both Content-Length and Transfer-Encoding"
        );
        assert_eq!(
            invalid("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n"),
            "Transfer-Encoding does not end with chunked"
        );
        assert_eq!(
            invalid("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"),
            "Transfer-Encoding does not end with chunked"
        );
        assert_eq!(
            invalid("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"),
            "Transfer-Encoding in HTTP/1.0"
        );
        assert_eq!(
            invalid("POST / HTTP/1.2\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"),
            "Transfer-Encoding in HTTP/1.2 or later"
        );
        invalid("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n");
    }

    #[test]
    fn request_line_shapes() {
        invalid("GET /a HTTP/1.1\nHost: a\r\n\r\n");
        invalid("GET /a HTTP/1.1\r\nHost: a\n\r\n");
        invalid("GET  /a HTTP/1.1\r\nHost: a\r\n\r\n");
        invalid("G(T /a HTTP/1.1\r\nHost: a\r\n\r\n");
        invalid("GET /a HTTP/2.0\r\nHost: a\r\n\r\n");
        // A later minor version is HTTP/1.1 (RFC 9110 §2.5), Host and all.
        let h = ok("GET /a HTTP/1.2\r\nHost: a\r\n\r\n");
        assert_eq!(h.req.version, Version::Http11);
        invalid("GET /a HTTP/1.2\r\n\r\n");
        invalid("GET /a HTTP/1.10\r\nHost: a\r\n\r\n");
        invalid("GET /a#frag HTTP/1.1\r\nHost: a\r\n\r\n");
        invalid("GET /\x7fa HTTP/1.1\r\nHost: a\r\n\r\n");
        // Spaces before the line end pass (nginx takes them); a tab does not.
        assert_eq!(ok("GET /a HTTP/1.1  \r\nHost: a\r\n\r\n").head_len, 30);
        invalid("GET /a HTTP/1.1\t\r\nHost: a\r\n\r\n");
        invalid("GET a HTTP/1.1\r\nHost: a\r\n\r\n");
        invalid("GET * HTTP/1.1\r\nHost: a\r\n\r\n");
        invalid("GET ftp://a/b HTTP/1.1\r\nHost: a\r\n\r\n");
        invalid("GET http://u@a/b HTTP/1.1\r\nHost: a\r\n\r\n");
        invalid("CONNECT /a HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(
            invalid("GET /a HTTP/1.1\r\nHost: a\r\n b\r\n\r\n"),
            "obs-fold or leading whitespace"
        );
        assert_eq!(
            invalid("GET / HTTP/1.1\r\nX: 1\r\n\r\n"),
            "HTTP/1.1 request without Host"
        );
        assert_eq!(
            invalid("GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n"),
            "repeated Host"
        );
        // Invalid is reported as soon as it is visible, without the full head.
        assert!(matches!(parse_request(b"GE\nT"), Parse::Invalid(_)));
    }

    /// HTTP/0.9 simple requests are refused: nginx reads the line alone,
    /// llhttp a header block after it (tests/http_differential.rs).
    #[test]
    fn simple_requests_of_http_0_9_are_refused() {
        assert_eq!(invalid("GET /foo/bar\r\n"), "bad request line");
        assert_eq!(
            invalid("GET /foo/bar HTTP/0.9\r\n\r\n"),
            "unsupported HTTP version"
        );
    }

    /// Control bytes in field values pass (they cannot move a line end);
    /// NUL, a bare CR and controls in Host do not.
    #[test]
    fn control_bytes_in_field_values() {
        let h = ok("POST / HTTP/1.1\r\nHost: a\r\nX: \x01v\x7f\x1b\r\nContent-Length: 1\r\n\r\nx");
        assert_eq!(
            h.req.header_values(b"x").next(),
            Some(&b"\x01v\x7f\x1b"[..])
        );
        assert_eq!(h.body, Body::Length(1));
        invalid("GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n");
        invalid("GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n");
        assert_eq!(invalid("GET / HTTP/1.1\r\nHost: a\x01\r\n\r\n"), "bad Host");
        invalid("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\x01\r\n\r\nx");
        invalid("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\x01\r\n\r\n");
        invalid("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: \x0bchunked\r\n\r\n");
        // Names stay tokens: a control byte or a space in one is refused.
        invalid("GET / HTTP/1.1\r\nHost: a\r\n\x01X: v\r\n\r\n");
        invalid("GET / HTTP/1.1\r\nHost: a\r\nX : v\r\n\r\n");
    }

    #[test]
    fn target_forms_and_host() {
        let h = ok("GET http://DeathStar:80/v1/x?y HTTP/1.1\r\nHost: deathstar:80\r\n\r\n");
        assert_eq!(h.req.path(), b"/v1/x?y");
        assert_eq!(h.req.host(), b"DeathStar:80");
        let h = ok("GET http://deathstar HTTP/1.0\r\n\r\n");
        assert_eq!(h.req.path(), b"/");
        assert_eq!(h.req.host(), b"deathstar");
        assert_eq!(
            invalid("GET http://a/x HTTP/1.1\r\nHost: b\r\n\r\n"),
            "Host differs from request-target authority"
        );
        let h = ok("CONNECT deathstar:443 HTTP/1.1\r\nHost: deathstar:443\r\n\r\n");
        assert_eq!(h.req.path(), b"");
        assert_eq!(h.req.host(), b"deathstar:443");
        assert!(h.req.is_connect());
        let h = ok("OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(h.req.path(), b"*");
        let h = ok("GET / HTTP/1.0\r\n\r\n");
        assert_eq!(h.req.host(), b"");
        assert_eq!(h.req.version, Version::Http10);
    }

    #[test]
    fn expect_connection_and_upgrade() {
        let h =
            ok("POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-Continue\r\nContent-Length: 1\r\n\r\n");
        assert!(h.req.expect_continue);
        assert!(!h.req.connection_close);
        let h = ok("GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Close\r\n\r\n");
        assert!(h.req.connection_close);
        let h =
            ok("GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n");
        assert_eq!(h.body, Body::None);
        assert_eq!(
            h.req.header_values(b"upgrade").next(),
            Some(&b"websocket"[..])
        );
    }

    /// A head read back the same in place and on the heap, at the boundary.
    #[test]
    fn heads_of_any_length_read_back() {
        let bare = "GET /v1/x HTTP/1.1\r\nHost: deathstar\r\nX-Pad: \r\n\r\n".len();
        for n in [
            0,
            HEAD_INLINE - bare - 1,
            HEAD_INLINE - bare,
            HEAD_INLINE - bare + 1,
            5000,
        ] {
            let pad = "p".repeat(n);
            let s = format!("GET /v1/x HTTP/1.1\r\nHost: deathstar\r\nX-Pad: {pad}\r\n\r\n");
            let h = ok(&s);
            assert_eq!(h.head_len, s.len());
            assert_eq!(!h.req.head.spilled(), s.len() <= HEAD_INLINE, "{n}");
            assert_eq!((h.req.method(), h.req.path()), (&b"GET"[..], &b"/v1/x"[..]));
            assert_eq!(h.req.host(), b"deathstar");
            assert_eq!(h.req.header_values(b"x-pad").next(), Some(pad.as_bytes()));
            assert_eq!(h.req.clone(), h.req);
        }
    }

    use proptest::prelude::*;

    proptest! {
        /// `headers` reads the fields again from the stored head: it gives
        /// every field in order, its value without surrounding blanks, also
        /// with blanks, controls and high bytes inside values.
        #[test]
        fn headers_are_read_back_as_sent(
            lead in 0usize..3,
            fields in prop::collection::vec(
                ("[A-Za-z0-9!#$%&'*+.^_`|~-]{1,10}", "[ \t]{0,2}", prop::collection::vec(
                    prop_oneof![Just(b' '), Just(b'\t'), 0x01u8..0x0a, 0x0bu8..0x0d, 0x0eu8..=0xff], 0..12),
                 "[ \t]{0,2}"),
                0..6),
        ) {
            let mut head = b"\r\n".repeat(lead);
            head.extend_from_slice(b"GET /x HTTP/1.0\r\n");
            let mut want = Vec::new();
            for (name, pre, value, post) in &fields {
                let lower = name.to_ascii_lowercase();
                if ["host", "content-length", "transfer-encoding", "expect", "connection"]
                    .contains(&lower.as_str())
                {
                    continue;
                }
                head.extend_from_slice(format!("{name}:{pre}").as_bytes());
                head.extend_from_slice(value);
                head.extend_from_slice(format!("{post}\r\n").as_bytes());
                want.push((name.as_bytes().to_vec(), trim_ows(value).to_vec()));
            }
            head.extend_from_slice(b"\r\n");
            let req = match parse_request(&head) {
                Parse::Complete(h) => h.req,
                o => return Err(TestCaseError::fail(format!("{o:?}"))),
            };
            let got: Vec<_> = req.headers().map(|(n, v)| (n.to_vec(), v.to_vec())).collect();
            prop_assert_eq!(got, want);
        }
    }

    #[test]
    fn leading_empty_lines_are_part_of_the_head() {
        let s = "\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n";
        assert_eq!(ok(s).head_len, s.len());
        invalid("\nGET / HTTP/1.1\r\nHost: a\r\n\r\n");
    }
}
