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

use crate::l7::{Parse, Protocol, ReplyHead, RequestHead};
use crate::log::Subject;

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

/// Body of the denial, as Cilium's Envoy filter sends it (its default
/// `denied_403_body` "Access denied" with CRLF appended).
pub const DENY_BODY: &[u8] = b"Access denied\r\n";
/// Sent when a request head did not arrive in time; the connection ends.
pub const TIMEOUT_REPLY: &[u8] = b"HTTP/1.1 408 Request Timeout\r\nContent-Type: text/plain\r\nContent-Length: 17\r\nConnection: close\r\n\r\nRequest timeout\r\n";

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

    fn deny_reply(&self, req: &HttpRequest) -> Option<Vec<u8>> {
        let close = req.version == Version::Http10 || req.connection_close;
        let mut out = Vec::with_capacity(128);
        out.extend_from_slice(b"HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\n");
        out.extend_from_slice(format!("Content-Length: {}\r\n", DENY_BODY.len()).as_bytes());
        if close {
            out.extend_from_slice(b"Connection: close\r\n");
        }
        out.extend_from_slice(b"\r\n");
        // A response to HEAD carries the length but never the body; sending
        // it would desynchronise the client's framing of the next response.
        if !req.is_head() {
            out.extend_from_slice(DENY_BODY);
        }
        Some(out)
    }

    fn expects_reply(&self, _req: &HttpRequest) -> bool {
        true
    }

    fn subject(&self, req: &HttpRequest) -> Subject {
        let s = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        Subject::Http {
            method: s(req.method()),
            host: s(req.host()),
            path: s(req.path()),
        }
    }

    fn unparsed_subject(&self) -> Subject {
        Subject::Http {
            method: String::new(),
            host: String::new(),
            path: String::new(),
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
            h.deny_reply(&r).unwrap(),
            b"HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nContent-Length: 15\r\n\r\nAccess denied\r\n"
        );
        let r10 = req("GET / HTTP/1.0\r\n\r\n");
        let close = req("GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
        for r in [r10, close] {
            let d = h.deny_reply(&r).unwrap();
            assert!(d.windows(19).any(|w| w == b"Connection: close\r\n"));
            assert!(d.ends_with(b"\r\n\r\nAccess denied\r\n"));
        }
        let head = req("HEAD /v1/ HTTP/1.1\r\nHost: deathstar\r\n\r\n");
        let d = h.deny_reply(&head).unwrap();
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
        let d = h.deny_reply(&r).unwrap();
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
