//! HTTP/1.x: request parser (smuggling shapes refused), response framing,
//! chunked decoding, Cilium's `rules.http` matching and the 403 reply.

mod chunked;
mod head;
mod request;
mod response;
mod rule;

use serde::Deserialize;

pub use chunked::{ChunkError, ChunkedDecoder};
pub use request::{parse_request, HttpRequest, Version};
pub use response::parse_response;
pub use rule::HttpRule;

use crate::config::DenyReply;
use crate::l7::{Parse, Protocol, ReplyHead, RequestHead};
use crate::log::{Subject, Text};

/// `rules.http[]` item as written in a CiliumNetworkPolicy.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpRuleSpec {
    pub method: Option<String>,
    pub path: Option<String>,
    pub host: Option<String>,
    #[serde(default)]
    pub headers: Vec<String>,
    #[serde(default)]
    pub header_matches: Vec<HeaderMatchSpec>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HeaderMatchSpec {
    pub name: String,
    pub value: Option<String>,
    /// LOG, ADD, DELETE, REPLACE; absent means a mismatch denies.
    pub mismatch: Option<String>,
    pub secret: Option<serde_yaml::Value>,
}

/// Error in a rule; `field` is relative to the rule ("path", "headerMatches[0].mismatch").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleError {
    pub field: String,
    pub message: String,
}

impl std::fmt::Display for RuleError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

impl std::error::Error for RuleError {}

/// Body of the default denial, as Cilium's Envoy filter sends it (its
/// default `denied_403_body` "Access denied" with CRLF appended).
pub const DENY_BODY: &[u8] = b"Access denied\r\n";
/// Sent when a request head did not arrive in time; the connection ends.
pub const TIMEOUT_REPLY: &[u8] = b"HTTP/1.1 408 Request Timeout\r\nContent-Type: text/plain\r\nContent-Length: 17\r\nConnection: close\r\n\r\nRequest timeout\r\n";

/// The reason phrase of a status code (clients ignore it; people read it).
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        402 => "Payment Required",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        407 => "Proxy Authentication Required",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        418 => "I'm a teapot",
        421 => "Misdirected Request",
        423 => "Locked",
        429 => "Too Many Requests",
        451 => "Unavailable For Legal Reasons",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Denied",
    }
}

/// HTTP/1.x on one connection. Stateless: the framing of a reply depends only
/// on the request it answers, which the stream layer passes in.
#[derive(Debug, Default, Clone)]
pub struct Http {}

impl Http {
    pub fn new() -> Self {
        Http {}
    }
}

impl Protocol for Http {
    type Request = HttpRequest;
    type Rule = HttpRule;

    fn parse_request(&mut self, buf: &[u8]) -> Parse<RequestHead<HttpRequest>> {
        request::parse_request(buf)
    }

    /// A head ends with a line feed (the empty line), so nothing changes
    /// until one arrives; an invalid head is found then, or at the limit.
    fn head_may_end(&self, buf: &[u8], old: usize) -> bool {
        buf.get(old..).is_some_and(|new| new.contains(&b'\n'))
    }

    fn parse_reply(&mut self, buf: &[u8], req: Option<&HttpRequest>) -> Parse<ReplyHead> {
        response::parse_response(buf, req)
    }

    /// HAProxy's answer to `timeout http-request`: 408, then the
    /// connection closes.
    fn timeout_reply(&self) -> Option<Vec<u8>> {
        Some(TIMEOUT_REPLY.to_vec())
    }

    /// The reply's values were checked when read (`config::check_*`): a
    /// status with a body, header lines without CR/LF and none of the
    /// framing headers, which are ours: the length is the body's, and the
    /// connection stays open unless the request itself closes it.
    fn deny_reply(&self, req: &HttpRequest, reply: &DenyReply) -> Option<Vec<u8>> {
        let close = req.version == Version::Http10 || req.connection_close;
        let body_len = reply.http_body.len() + 2;
        let mut out = Vec::with_capacity(128 + body_len);
        let status = reply.http_status;
        let head = format!(
            "HTTP/1.1 {status} {}\r\nContent-Type: {}\r\nContent-Length: {body_len}\r\n",
            reason_phrase(status),
            reply.http_content_type
        );
        out.extend_from_slice(head.as_bytes());
        for (name, value) in &reply.http_headers {
            out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
        }
        if close {
            out.extend_from_slice(b"Connection: close\r\n");
        }
        out.extend_from_slice(b"\r\n");
        // A response to HEAD carries the length but never the body; sending
        // it would desynchronise the client's framing of the next response.
        if !req.is_head() {
            out.extend_from_slice(reply.http_body.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        Some(out)
    }

    fn expects_reply(&self, _req: &HttpRequest) -> bool {
        true
    }

    fn subject(&self, req: &HttpRequest) -> Subject {
        // RFC 9110's methods need no copy in the log event.
        const METHODS: [&str; 9] = [
            "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
        ];
        let m = req.method();
        let method = match METHODS.iter().find(|k| k.as_bytes() == m) {
            Some(k) => std::borrow::Cow::Borrowed(*k),
            None => std::borrow::Cow::Owned(String::from_utf8_lossy(m).into_owned()),
        };
        Subject::Http {
            method,
            host: Text::from_lossy(req.host()),
            path: Text::from_lossy(req.path()),
        }
    }

    fn unparsed_subject(&self) -> Subject {
        Subject::Http {
            method: "".into(),
            host: "".into(),
            path: "".into(),
        }
    }

    fn rule_matches(&self, req: &HttpRequest, rule: &HttpRule) -> bool {
        rule.matches(req)
    }
}

#[cfg(test)]
mod tests {
    use super::request::test_request as req;
    use super::*;

    #[test]
    fn deny_reply_matches_envoy() {
        let h = Http::new();
        let r = req("PUT /v1/exhaust-port HTTP/1.1\r\nHost: deathstar\r\n\r\n");
        assert_eq!(
            h.deny_reply(&r, &DenyReply::default()).unwrap(),
            b"HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nContent-Length: 15\r\n\r\nAccess denied\r\n"
        );
        let r10 = req("GET / HTTP/1.0\r\n\r\n");
        let close = req("GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
        for r in [r10, close] {
            let d = h.deny_reply(&r, &DenyReply::default()).unwrap();
            assert!(d.windows(19).any(|w| w == b"Connection: close\r\n"));
            assert!(d.ends_with(b"\r\n\r\nAccess denied\r\n"));
        }
        let head = req("HEAD /v1/ HTTP/1.1\r\nHost: deathstar\r\n\r\n");
        let d = h.deny_reply(&head, &DenyReply::default()).unwrap();
        assert!(
            d.ends_with(b"Content-Length: 15\r\n\r\n"),
            "{:?}",
            String::from_utf8_lossy(&d)
        );
        assert!(matches!(
            parse_response(&d, Some(&head)),
            Parse::Complete(ReplyHead {
                body: crate::l7::ReplyBody::None,
                ..
            })
        ));
        // The denial parses as one complete response of the advertised length.
        let d = h.deny_reply(&r, &DenyReply::default()).unwrap();
        match parse_response(&d, Some(&r)) {
            Parse::Complete(ReplyHead {
                head_len,
                body: crate::l7::ReplyBody::Length(n),
                last: true,
                ..
            }) => {
                assert_eq!(head_len as u64 + n, d.len() as u64)
            }
            o => panic!("{o:?}"),
        }
    }

    #[test]
    fn a_custom_denial_keeps_its_framing() {
        let h = Http::new();
        let reply = DenyReply {
            http_status: 451,
            http_body: "{\"error\": \"not for you\"}".into(),
            http_content_type: "application/json".into(),
            http_headers: vec![("X-Denied-By".into(), "enforcer".into())],
            ..DenyReply::default()
        };
        let r = req("GET /v1/secret HTTP/1.1\r\nHost: deathstar\r\n\r\n");
        let d = h.deny_reply(&r, &reply).unwrap();
        let text = String::from_utf8(d.clone()).unwrap();
        assert_eq!(
            text,
            "HTTP/1.1 451 Unavailable For Legal Reasons\r\nContent-Type: application/json\r\n\
             Content-Length: 26\r\nX-Denied-By: enforcer\r\n\r\n{\"error\": \"not for you\"}\r\n"
        );
        match parse_response(&d, Some(&r)) {
            Parse::Complete(ReplyHead {
                head_len,
                body: crate::l7::ReplyBody::Length(n),
                last: true,
                ..
            }) => assert_eq!(head_len as u64 + n, d.len() as u64),
            o => panic!("{o:?}"),
        }
        // An empty body still frames: CRLF only.
        let empty = DenyReply {
            http_body: String::new(),
            ..reply
        };
        assert!(h
            .deny_reply(&r, &empty)
            .unwrap()
            .ends_with(b"Content-Length: 2\r\nX-Denied-By: enforcer\r\n\r\n\r\n"));
    }

    #[test]
    fn subject_and_dispatch() {
        let mut h = Http::new();
        let r = req("POST /v1/request-landing HTTP/1.1\r\nHost: deathstar\r\n\r\n");
        assert_eq!(
            h.subject(&r),
            Subject::Http {
                method: "POST".into(),
                host: "deathstar".into(),
                path: "/v1/request-landing".into()
            }
        );
        assert!(h.expects_reply(&r));
        let spec = HttpRuleSpec {
            method: Some("POST".into()),
            ..Default::default()
        };
        let http_rule = HttpRule::compile(&spec).unwrap();
        assert!(h.rule_matches(&r, &http_rule));
        let spec = HttpRuleSpec {
            method: Some("GET".into()),
            ..Default::default()
        };
        assert!(!h.rule_matches(&r, &HttpRule::compile(&spec).unwrap()));
        // A rule of another protocol cannot be passed: `Protocol::Rule`.
        assert!(matches!(
            h.parse_reply(b"HTTP/1.1 200 OK\r\n\r\n", Some(&r)),
            Parse::Complete(_)
        ));
    }
}
