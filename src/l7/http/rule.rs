//! Cilium's `rules.http` semantics: regexes over the whole method, path and
//! host; header presence / equality; `headerMatches` with mismatch actions.

use regex::bytes::Regex;

use super::request::HttpRequest;
use super::{HeaderMatchSpec, HttpRuleSpec, RuleError};

/// A compiled rule: regexes are anchored and compiled once.
#[derive(Debug, Clone)]
pub struct HttpRule {
    method: Option<Matcher>,
    path: Option<Matcher>,
    host: Option<Matcher>,
    headers: Vec<HeaderTest>,
    /// `headerMatches` with `mismatch: LOG`: reported, never denying.
    logged: Vec<HeaderTest>,
}

#[derive(Debug, Clone)]
struct HeaderTest {
    name: String,
    /// None: the header must be present.
    value: Option<String>,
}

impl HeaderTest {
    fn passes(&self, req: &HttpRequest) -> bool {
        let mut vals = req.header_values(self.name.as_bytes());
        match &self.value {
            None => vals.next().is_some(),
            Some(want) => vals.any(|v| v == want.as_bytes()),
        }
    }
}

fn err(field: impl Into<String>, message: impl Into<String>) -> RuleError {
    RuleError {
        field: field.into(),
        message: message.into(),
    }
}

/// One anchored regex of a rule. Most rules name a method, a path or a
/// prefix (`GET`, `/v1/request-landing`, `/v1/.*`, `GET|HEAD`): those are
/// compared as bytes, which costs a few nanoseconds where a regex search
/// costs tens. Every form means exactly what the regex means; the regex is
/// kept for the one case where a byte test cannot decide (`Prefix`).
#[derive(Debug, Clone)]
enum Matcher {
    /// The pattern is one of these literals (no metacharacter in any).
    AnyOf(Vec<Vec<u8>>),
    /// `literal.*`: `.` is any UTF-8 scalar but LF, so a rest of ASCII
    /// without LF is a match by bytes alone; any other rest asks the regex.
    Prefix(Vec<u8>, Regex),
    Regex(Regex),
}

impl Matcher {
    fn compile(s: &str) -> Result<Matcher, regex::Error> {
        // Compiled in any case: a pattern the regex crate refuses is an
        // error whatever form it has.
        let re = Regex::new(&format!("^(?:{s})$"))?;
        // Outside a class only these are special (`-`, `&`, `~` act inside
        // classes only, `#` and blanks only under the `x` flag, which takes
        // a parenthesis to set): without them the regex matches the string
        // itself and nothing else.
        let literal = |p: &str| !p.contains(|c| "\\.+*?()|[]{}^$".contains(c));
        if let Some(p) = s.strip_suffix(".*").filter(|p| literal(p)) {
            return Ok(Matcher::Prefix(p.as_bytes().to_vec(), re));
        }
        if s.split('|').all(literal) {
            return Ok(Matcher::AnyOf(
                s.split('|').map(|p| p.as_bytes().to_vec()).collect(),
            ));
        }
        Ok(Matcher::Regex(re))
    }

    fn matches(&self, v: &[u8]) -> bool {
        match self {
            Matcher::AnyOf(lits) => lits.iter().any(|l| l == v),
            Matcher::Prefix(p, re) => match v.strip_prefix(p.as_slice()) {
                None => false,
                Some(rest) if rest.is_ascii() => !rest.contains(&b'\n'),
                Some(_) => re.is_match(v),
            },
            Matcher::Regex(re) => re.is_match(v),
        }
    }
}

fn anchored(field: &str, re: &Option<String>) -> Result<Option<Matcher>, RuleError> {
    match re {
        None => Ok(None),
        Some(s) => Matcher::compile(s)
            .map(Some)
            .map_err(|e| err(field, format!("invalid regular expression: {e}"))),
    }
}

fn header_name(field: &str, name: &str) -> Result<String, RuleError> {
    if name.is_empty() || !name.bytes().all(super::head::is_tchar) {
        return Err(err(field, format!("invalid header name {name:?}")));
    }
    Ok(name.to_string())
}

impl HttpRule {
    pub fn compile(spec: &HttpRuleSpec) -> Result<HttpRule, RuleError> {
        let mut headers = Vec::new();
        for (k, h) in spec.headers.iter().enumerate() {
            let field = format!("headers[{k}]");
            let (name, value) = match h.split_once(':') {
                Some((n, v)) => (n.trim(), Some(v.trim().to_string())),
                None => (h.trim(), None),
            };
            headers.push(HeaderTest {
                name: header_name(&field, name)?,
                value,
            });
        }
        let mut logged = Vec::new();
        for (k, m) in spec.header_matches.iter().enumerate() {
            let HeaderMatchSpec {
                name,
                value,
                mismatch,
                secret,
            } = m;
            let field = format!("headerMatches[{k}]");
            if secret.is_some() {
                return Err(err(format!("{field}.secret"), "secrets are not supported"));
            }
            let test = HeaderTest {
                name: header_name(&format!("{field}.name"), name)?,
                value: value.clone(),
            };
            match mismatch.as_deref() {
                None => headers.push(test),
                Some("LOG") => logged.push(test),
                Some(a @ ("ADD" | "DELETE" | "REPLACE")) => {
                    return Err(err(
                        format!("{field}.mismatch"),
                        format!(
                            "mismatch action {a} is not supported (requests are not rewritten)"
                        ),
                    ))
                }
                Some(other) => {
                    return Err(err(
                        format!("{field}.mismatch"),
                        format!("unknown mismatch action {other:?} (LOG, ADD, DELETE, REPLACE)"),
                    ))
                }
            }
        }
        Ok(HttpRule {
            method: anchored("method", &spec.method)?,
            path: anchored("path", &spec.path)?,
            host: anchored("host", &spec.host)?,
            headers,
            logged,
        })
    }

    /// True when every field given in the rule matches the request.
    pub fn matches(&self, req: &HttpRequest) -> bool {
        let re = |r: &Option<Matcher>, v: &[u8]| r.as_ref().is_none_or(|r| r.matches(v));
        re(&self.method, req.method())
            && re(&self.path, req.path())
            && re(&self.host, req.host())
            && self.headers.iter().all(|h| h.passes(req))
    }

    /// Names of `mismatch: LOG` header matches the request does not satisfy
    /// (for the verdict log; they never deny).
    pub fn logged_mismatches<'a>(
        &'a self,
        req: &'a HttpRequest,
    ) -> impl Iterator<Item = &'a str> + 'a {
        self.logged
            .iter()
            .filter(|h| !h.passes(req))
            .map(|h| h.name.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::l7::http::request::test_request as req;

    fn rule(y: &str) -> HttpRule {
        let spec: HttpRuleSpec = serde_yaml::from_str(y).unwrap();
        HttpRule::compile(&spec).unwrap()
    }
    fn compile_err(y: &str) -> RuleError {
        let spec: HttpRuleSpec = serde_yaml::from_str(y).unwrap();
        HttpRule::compile(&spec).unwrap_err()
    }

    #[test]
    fn star_wars_rules() {
        let landing = rule("{method: POST, path: /v1/request-landing}");
        let post = req(
            "POST /v1/request-landing HTTP/1.1\r\nHost: deathstar\r\nContent-Length: 0\r\n\r\n",
        );
        let put = req("PUT /v1/exhaust-port HTTP/1.1\r\nHost: deathstar\r\n\r\n");
        let post_q = req("POST /v1/request-landing?x HTTP/1.1\r\nHost: deathstar\r\n\r\n");
        let post_longer = req("POST /v1/request-landing/x HTTP/1.1\r\nHost: deathstar\r\n\r\n");
        assert!(landing.matches(&post));
        assert!(!landing.matches(&put));
        assert!(!landing.matches(&post_q), "the whole path+query must match");
        assert!(!landing.matches(&post_longer), "anchored at the end");
        let any_v1 = rule("{method: GET, path: \"/v1/.*\"}");
        assert!(any_v1.matches(&req("GET /v1/healthz HTTP/1.1\r\nHost: d\r\n\r\n")));
        assert!(!any_v1.matches(&req("GET /v2/ HTTP/1.1\r\nHost: d\r\n\r\n")));
        // Alternation stays inside the anchors.
        let alt = rule("{method: GET|HEAD}");
        assert!(alt.matches(&req("HEAD / HTTP/1.1\r\nHost: d\r\n\r\n")));
        assert!(!alt.matches(&req("XGET / HTTP/1.1\r\nHost: d\r\n\r\n")));
        assert!(rule("{}").matches(&put), "an empty rule matches everything");
    }

    #[test]
    fn host_and_headers() {
        let r = rule("{host: \"deathstar(:80)?\", headers: [\"X-Has-Force\", \"X-Org: empire\"]}");
        let ok = req(
            "GET / HTTP/1.1\r\nHost: deathstar:80\r\nx-has-force: yes\r\nX-Org: empire\r\n\r\n",
        );
        assert!(r.matches(&ok));
        let no_force = req("GET / HTTP/1.1\r\nHost: deathstar\r\nX-Org: empire\r\n\r\n");
        assert!(!r.matches(&no_force));
        let wrong_org =
            req("GET / HTTP/1.1\r\nHost: deathstar\r\nX-Has-Force: 1\r\nX-Org: alliance\r\n\r\n");
        assert!(!r.matches(&wrong_org));
        let two_orgs =
            req("GET / HTTP/1.1\r\nHost: deathstar\r\nX-Has-Force: 1\r\nX-Org: alliance\r\nX-Org: empire\r\n\r\n");
        assert!(
            r.matches(&two_orgs),
            "any header with that name may carry the value"
        );
        let wrong_host = req(
            "GET / HTTP/1.1\r\nHost: deathstar.evil\r\nX-Has-Force: 1\r\nX-Org: empire\r\n\r\n",
        );
        assert!(!r.matches(&wrong_host));
    }

    #[test]
    fn header_matches_and_log() {
        let r = rule(
            "headerMatches: [{name: X-Token, value: abc}, {name: X-Present}, {name: X-Audit, value: yes, mismatch: LOG}]",
        );
        let full =
            req("GET / HTTP/1.1\r\nHost: d\r\nX-Token: abc\r\nX-Present: \r\nX-Audit: yes\r\n\r\n");
        assert!(r.matches(&full));
        assert_eq!(r.logged_mismatches(&full).count(), 0);
        let no_audit = req("GET / HTTP/1.1\r\nHost: d\r\nX-Token: abc\r\nX-Present: 1\r\n\r\n");
        assert!(r.matches(&no_audit), "LOG mismatches are allowed");
        assert_eq!(
            r.logged_mismatches(&no_audit).collect::<Vec<_>>(),
            vec!["X-Audit"]
        );
        let bad_token = req("GET / HTTP/1.1\r\nHost: d\r\nX-Token: abd\r\nX-Present: 1\r\n\r\n");
        assert!(!r.matches(&bad_token));
        let no_present = req("GET / HTTP/1.1\r\nHost: d\r\nX-Token: abc\r\n\r\n");
        assert!(!r.matches(&no_present));
    }

    /// The byte forms of a pattern agree with its anchored regex on values
    /// around the literal: equal, longer, shorter, non-ASCII, LF, invalid UTF-8.
    #[test]
    fn literal_forms_agree_with_the_regex() {
        let patterns = [
            "GET",
            "GET|HEAD",
            "",
            "|x",
            "/v1/",
            "/v1/.*",
            ".*",
            "/a b",
            "é",
            "é.*",
            "/v1/.+",
            "a.b",
            "/v[0-9]/",
            "(?i)get",
            "x-.*",
            "GET|HEAD.*",
            "/v1/request-landing",
            "a#b c&d~e",
            "\\.",
        ];
        let values: [&[u8]; 21] = [
            b"/v1/request-landing",
            b"a#b c&d~e",
            b".",
            b"",
            b"GET",
            b"get",
            b"HEAD",
            b"GETX",
            b"XGET",
            b"/v1/",
            b"/v1/x",
            b"/v1/\n",
            b"/v1/\xff",
            b"/v1/\xc3\xa9",
            b"/v1",
            b"\xc3\xa9",
            b"\xc3\xa9\xff",
            b"x-\x80",
            b"x-ok",
            b"a.b",
            b"axb",
        ];
        for p in patterns {
            let m = Matcher::compile(p).unwrap();
            let re = Regex::new(&format!("^(?:{p})$")).unwrap();
            for v in values {
                assert_eq!(m.matches(v), re.is_match(v), "{p:?} on {v:?} ({m:?})");
            }
        }
        assert!(matches!(
            Matcher::compile("GET|HEAD").unwrap(),
            Matcher::AnyOf(_)
        ));
        assert!(matches!(
            Matcher::compile("/v1/.*").unwrap(),
            Matcher::Prefix(..)
        ));
        assert!(matches!(
            Matcher::compile("a.b").unwrap(),
            Matcher::Regex(_)
        ));
        assert!(matches!(
            Matcher::compile("/v1/request-landing").unwrap(),
            Matcher::AnyOf(_)
        ));
    }

    #[test]
    fn compile_errors_name_the_field() {
        assert_eq!(compile_err("{path: \"/v1/(\"}").field, "path");
        assert_eq!(compile_err("{method: \"[\"}").field, "method");
        assert_eq!(compile_err("{host: \"(\"}").field, "host");
        assert_eq!(
            compile_err("{headers: [ok, \"bad name: v\"]}").field,
            "headers[1]"
        );
        let e = compile_err("headerMatches: [{name: a}, {name: b, value: c, mismatch: REPLACE}]");
        assert_eq!(e.field, "headerMatches[1].mismatch");
        assert!(e.message.contains("not supported"), "{}", e.message);
        for a in ["ADD", "DELETE"] {
            let e = compile_err(&format!("headerMatches: [{{name: b, mismatch: {a}}}]"));
            assert_eq!(e.field, "headerMatches[0].mismatch");
        }
        assert_eq!(
            compile_err("headerMatches: [{name: b, mismatch: DROP}]").field,
            "headerMatches[0].mismatch"
        );
        assert_eq!(
            compile_err("headerMatches: [{name: \"\"}]").field,
            "headerMatches[0].name"
        );
        assert_eq!(
            compile_err("headerMatches: [{name: b, secret: {name: s}}]").field,
            "headerMatches[0].secret"
        );
    }
}
