//! Differential test of the HTTP request parser (`enforcer::l7::http`)
//! against two reference parsers, h11 and llhttp (through httptools), on
//! generated request shapes: framing headers, Content-Length and
//! Transfer-Encoding combinations, whitespace, line endings, obs-fold,
//! absolute-form, methods with bodies, chunked bodies. Each shape is
//! followed by a second request, so a parser that ends the first one
//! elsewhere reads a different second request.
//!
//! Where we accept a request and a reference parser also accepts it but ends
//! it at a different byte, the server would read a request the enforcer
//! never judged: that is a smuggling risk and fails the test. Shapes we
//! refuse that the references accept are listed (compatibility, not safety).
//! The references run in one python3 process (`tests/http_reference.py`).

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};

use enforcer::l7::http::{parse_request, ChunkedDecoder};
use enforcer::l7::{Body, Parse};

const SECOND: &[u8] = b"GET /second HTTP/1.1\r\nHost: deathstar\r\n\r\n";

/// How one parser reads the first request of a shape.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Read {
    Ok {
        end: usize,
        method: String,
        target: String,
    },
    Incomplete,
    /// The head ends at `end` and what follows is handed to a tunnel
    /// (llhttp on Upgrade and CONNECT): the stream layer's business.
    Upgrade {
        end: usize,
    },
    Error(String),
}

fn ours(data: &[u8]) -> Read {
    match parse_request(data) {
        Parse::NeedMore => Read::Incomplete,
        Parse::Invalid(why) => Read::Error(why.to_string()),
        Parse::Complete(h) => {
            let end = match h.body {
                Body::None => h.head_len,
                Body::Length(n) => h.head_len.saturating_add(n as usize),
                Body::Chunked => {
                    let mut d = ChunkedDecoder::new();
                    match d.feed(&data[h.head_len..]) {
                        Ok((n, true)) => h.head_len + n,
                        Ok((_, false)) => return Read::Incomplete,
                        Err(e) => return Read::Error(format!("chunked: {}", e.0)),
                    }
                }
            };
            if end > data.len() {
                return Read::Incomplete;
            }
            Read::Ok {
                end,
                method: String::from_utf8_lossy(h.req.method()).into_owned(),
                target: String::from_utf8_lossy(h.req.path()).into_owned(),
            }
        }
    }
}

fn reference(shapes: &[Vec<u8>]) -> Vec<BTreeMap<String, Read>> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/http_reference.py");
    let mut child = Command::new("python3")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run python3 (installed by scripts/lib/deps.sh)");
    let input: Vec<String> = shapes
        .iter()
        .map(|s| s.iter().map(|b| format!("{b:02x}")).collect())
        .collect();
    let json = serde_json::to_vec(&input).unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || stdin.write_all(&json));
    let out = child.wait_with_output().expect("python3");
    writer.join().unwrap().expect("write shapes");
    assert!(
        out.status.success(),
        "{script} failed (are h11 and httptools installed? scripts/lib/deps.sh installs them): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Vec<BTreeMap<String, serde_json::Value>> =
        serde_json::from_slice(&out.stdout).expect("reference output is JSON");
    assert_eq!(v.len(), shapes.len());
    v.into_iter()
        .map(|m| {
            m.into_iter()
                .map(|(k, r)| {
                    let read = match r["r"].as_str().unwrap() {
                        "ok" => Read::Ok {
                            end: r["end"].as_u64().unwrap() as usize,
                            method: r["method"].as_str().unwrap_or("").to_string(),
                            target: r["target"].as_str().unwrap_or("").to_string(),
                        },
                        "incomplete" => Read::Incomplete,
                        "upgrade" => Read::Upgrade {
                            end: r["end"].as_u64().unwrap() as usize,
                        },
                        _ => Read::Error(r["why"].as_str().unwrap_or("").to_string()),
                    };
                    (k, read)
                })
                .collect()
        })
        .collect()
}

/// A request: line, header lines (each without its line ending), body.
struct Shape {
    name: String,
    line: String,
    headers: Vec<String>,
    eol: &'static str,
    body: Vec<u8>,
}

impl Shape {
    fn bytes(&self) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(self.line.as_bytes());
        v.extend_from_slice(self.eol.as_bytes());
        for h in &self.headers {
            v.extend_from_slice(h.as_bytes());
            v.extend_from_slice(self.eol.as_bytes());
        }
        v.extend_from_slice(self.eol.as_bytes());
        v.extend_from_slice(&self.body);
        v.extend_from_slice(SECOND);
        v
    }
}

const CHUNKED: &[u8] = b"5\r\nhello\r\n0\r\n\r\n";

/// Framing header sets and the body that goes with them.
fn framings() -> Vec<(&'static str, Vec<&'static str>, Vec<u8>)> {
    let b5 = b"hello".to_vec();
    let ch = CHUNKED.to_vec();
    vec![
        ("none", vec![], vec![]),
        ("cl5", vec!["Content-Length: 5"], b5.clone()),
        ("cl0", vec!["Content-Length: 0"], vec![]),
        (
            "cl-dup-same",
            vec!["Content-Length: 5", "Content-Length: 5"],
            b5.clone(),
        ),
        (
            "cl-dup-diff",
            vec!["Content-Length: 5", "Content-Length: 6"],
            b5.clone(),
        ),
        ("cl-list-same", vec!["Content-Length: 5, 5"], b5.clone()),
        ("cl-list-diff", vec!["Content-Length: 5, 6"], b5.clone()),
        ("cl-plus", vec!["Content-Length: +5"], b5.clone()),
        ("cl-leading-zero", vec!["Content-Length: 005"], b5.clone()),
        ("cl-hex", vec!["Content-Length: 0x5"], b5.clone()),
        ("cl-neg", vec!["Content-Length: -5"], b5.clone()),
        ("cl-space-inside", vec!["Content-Length: 5 5"], b5.clone()),
        ("cl-trailing-ws", vec!["Content-Length: 5 \t"], b5.clone()),
        ("cl-no-space", vec!["Content-Length:5"], b5.clone()),
        (
            "cl-space-before-colon",
            vec!["Content-Length : 5"],
            b5.clone(),
        ),
        ("cl-empty", vec!["Content-Length: "], b5.clone()),
        (
            "cl-huge",
            vec!["Content-Length: 99999999999999999999999"],
            b5.clone(),
        ),
        ("cl-lowercase-name", vec!["content-length: 5"], b5.clone()),
        ("te-chunked", vec!["Transfer-Encoding: chunked"], ch.clone()),
        ("te-CHUNKED", vec!["Transfer-Encoding: CHUNKED"], ch.clone()),
        (
            "te-chunked-cl",
            vec!["Transfer-Encoding: chunked", "Content-Length: 5"],
            ch.clone(),
        ),
        (
            "cl-te-chunked",
            vec!["Content-Length: 5", "Transfer-Encoding: chunked"],
            ch.clone(),
        ),
        (
            "te-identity",
            vec!["Transfer-Encoding: identity"],
            b5.clone(),
        ),
        (
            "te-identity-cl",
            vec!["Transfer-Encoding: identity", "Content-Length: 5"],
            b5.clone(),
        ),
        (
            "te-gzip-chunked",
            vec!["Transfer-Encoding: gzip, chunked"],
            ch.clone(),
        ),
        (
            "te-chunked-gzip",
            vec!["Transfer-Encoding: chunked, gzip"],
            ch.clone(),
        ),
        (
            "te-chunked-chunked",
            vec!["Transfer-Encoding: chunked, chunked"],
            ch.clone(),
        ),
        (
            "te-two-headers",
            vec!["Transfer-Encoding: gzip", "Transfer-Encoding: chunked"],
            ch.clone(),
        ),
        (
            "te-two-headers-rev",
            vec!["Transfer-Encoding: chunked", "Transfer-Encoding: gzip"],
            ch.clone(),
        ),
        (
            "te-xchunked",
            vec!["Transfer-Encoding: xchunked"],
            ch.clone(),
        ),
        (
            "te-chunked-x",
            vec!["Transfer-Encoding: chunked-x"],
            ch.clone(),
        ),
        ("te-empty", vec!["Transfer-Encoding: "], ch.clone()),
        (
            "te-comma-chunked",
            vec!["Transfer-Encoding: , chunked"],
            ch.clone(),
        ),
        (
            "te-chunked-comma",
            vec!["Transfer-Encoding: chunked,"],
            ch.clone(),
        ),
        (
            "te-param",
            vec!["Transfer-Encoding: chunked;q=1"],
            ch.clone(),
        ),
        ("te-tab", vec!["Transfer-Encoding:\tchunked"], ch.clone()),
        (
            "te-space-before-colon",
            vec!["Transfer-Encoding : chunked"],
            ch.clone(),
        ),
        (
            "te-quoted",
            vec!["Transfer-Encoding: \"chunked\""],
            ch.clone(),
        ),
        ("te-nul", vec!["Transfer-Encoding: chunked\0"], ch.clone()),
        (
            "te-vtab",
            vec!["Transfer-Encoding: \x0bchunked"],
            ch.clone(),
        ),
        (
            "te-fold",
            vec!["Transfer-Encoding:", " chunked"],
            ch.clone(),
        ),
        ("cl-fold", vec!["Content-Length:", " 5"], b5.clone()),
        (
            "fold-after-te",
            vec!["Transfer-Encoding: chunked", " , gzip"],
            ch.clone(),
        ),
        (
            "x-fold-hiding-cl",
            vec!["X-A: b", " Content-Length: 5"],
            b5.clone(),
        ),
        (
            "cl-name-trailing-tab",
            vec!["Content-Length\t: 5"],
            b5.clone(),
        ),
        (
            "cl-name-space-inside",
            vec!["Content Length: 5"],
            b5.clone(),
        ),
        (
            "te-padded-value",
            vec!["Transfer-Encoding:   chunked   "],
            ch.clone(),
        ),
        (
            "te-identity-chunked-two",
            vec!["Transfer-Encoding: identity", "Transfer-Encoding: chunked"],
            ch.clone(),
        ),
        (
            "te-chunked-10-cl",
            vec!["Transfer-Encoding: chunked", "Content-Length: 0"],
            ch.clone(),
        ),
        (
            "cl-then-te-gzip",
            vec!["Content-Length: 5", "Transfer-Encoding: gzip"],
            b5.clone(),
        ),
        (
            "te-name-underscore",
            vec!["Transfer_Encoding: chunked"],
            ch.clone(),
        ),
        ("cl-name-underscore", vec!["Content_Length: 5"], b5.clone()),
    ]
}

fn chunk_bodies() -> Vec<(&'static str, &'static [u8])> {
    vec![
        ("plain", CHUNKED),
        ("upper-hex", b"A\r\n0123456789\r\n0\r\n\r\n"),
        ("leading-zeros", b"0005\r\nhello\r\n0\r\n\r\n"),
        ("ext", b"5;name=value\r\nhello\r\n0\r\n\r\n"),
        ("ext-quoted", b"5;n=\"a;b\"\r\nhello\r\n0\r\n\r\n"),
        ("size-space", b"5 \r\nhello\r\n0\r\n\r\n"),
        ("size-tab-ext", b"5\t;x\r\nhello\r\n0\r\n\r\n"),
        ("lf-lines", b"5\nhello\n0\n\n"),
        ("lf-after-data", b"5\r\nhello\n0\r\n\r\n"),
        ("no-crlf-after-data", b"5\r\nhelloX0\r\n\r\n"),
        ("trailer", b"5\r\nhello\r\n0\r\nX-T: 1\r\n\r\n"),
        ("trailer-lf", b"5\r\nhello\r\n0\r\nX-T: 1\n\n"),
        ("size-0x", b"0x5\r\nhello\r\n0\r\n\r\n"),
        ("size-neg", b"-5\r\nhello\r\n0\r\n\r\n"),
        ("size-overflow", b"10000000000000005\r\nhello\r\n0\r\n\r\n"),
        ("last-chunk-ext", b"5\r\nhello\r\n0;x\r\n\r\n"),
        ("size-leading-space", b" 5\r\nhello\r\n0\r\n\r\n"),
        ("ext-nul", b"5;\0\r\nhello\r\n0\r\n\r\n"),
        ("ext-bare-lf", b"5;x\nhello\r\n0\r\n\r\n"),
        ("missing-last-chunk", b"5\r\nhello\r\n"),
        ("last-chunk-no-final-crlf", b"5\r\nhello\r\n0\r\n"),
        ("bare-cr-size", b"5\rhello\r\n0\r\n\r\n"),
        ("too-long-data", b"3\r\nhello\r\n0\r\n\r\n"),
        ("too-short-data", b"7\r\nhello\r\n0\r\n\r\n"),
    ]
}

fn shapes() -> Vec<Shape> {
    let mut v = Vec::new();
    let host = "Host: deathstar".to_string();
    // Framing × method × version × line ending.
    for (fname, fh, body) in framings() {
        for method in ["GET", "POST", "HEAD", "OPTIONS"] {
            for version in ["1.1", "1.0"] {
                for (ename, eol) in [("crlf", "\r\n"), ("lf", "\n")] {
                    let mut headers = vec![host.clone()];
                    headers.extend(fh.iter().map(|s| s.to_string()));
                    v.push(Shape {
                        name: format!("{fname} {method} HTTP/{version} {ename}"),
                        line: format!("{method} /v1/ HTTP/{version}"),
                        headers,
                        eol,
                        body: body.clone(),
                    });
                }
            }
        }
    }
    // Chunked bodies.
    for (cname, body) in chunk_bodies() {
        for method in ["POST", "GET"] {
            v.push(Shape {
                name: format!("chunk-{cname} {method}"),
                line: format!("{method} /v1/ HTTP/1.1"),
                headers: vec![host.clone(), "Transfer-Encoding: chunked".into()],
                eol: "\r\n",
                body: body.to_vec(),
            });
        }
    }
    // Request lines, targets and Host.
    let lines: &[(&str, &str, &[&str])] = &[
        ("origin", "GET /v1/ HTTP/1.1", &["Host: deathstar"]),
        (
            "absolute",
            "GET http://deathstar/v1/ HTTP/1.1",
            &["Host: deathstar"],
        ),
        ("absolute-no-host", "GET http://deathstar/v1/ HTTP/1.1", &[]),
        (
            "absolute-other-host",
            "GET http://deathstar/v1/ HTTP/1.1",
            &["Host: other"],
        ),
        (
            "absolute-empty-path",
            "GET http://deathstar HTTP/1.1",
            &["Host: deathstar"],
        ),
        (
            "asterisk-options",
            "OPTIONS * HTTP/1.1",
            &["Host: deathstar"],
        ),
        ("asterisk-get", "GET * HTTP/1.1", &["Host: deathstar"]),
        ("no-host-11", "GET /v1/ HTTP/1.1", &[]),
        ("no-host-10", "GET /v1/ HTTP/1.0", &[]),
        (
            "two-hosts",
            "GET /v1/ HTTP/1.1",
            &["Host: deathstar", "Host: other"],
        ),
        (
            "host-with-space",
            "GET /v1/ HTTP/1.1",
            &["Host: death star"],
        ),
        ("host-userinfo", "GET /v1/ HTTP/1.1", &["Host: a@deathstar"]),
        ("query", "GET /v1/?a=b HTTP/1.1", &["Host: deathstar"]),
        ("fragment", "GET /v1/#x HTTP/1.1", &["Host: deathstar"]),
        ("double-space", "GET  /v1/ HTTP/1.1", &["Host: deathstar"]),
        ("tab-separator", "GET\t/v1/ HTTP/1.1", &["Host: deathstar"]),
        ("trailing-space", "GET /v1/ HTTP/1.1 ", &["Host: deathstar"]),
        (
            "lowercase-version",
            "GET /v1/ http/1.1",
            &["Host: deathstar"],
        ),
        ("version-12", "GET /v1/ HTTP/1.2", &["Host: deathstar"]),
        ("version-20", "GET /v1/ HTTP/2.0", &["Host: deathstar"]),
        ("version-09", "GET /v1/", &[]),
        (
            "lowercase-method",
            "get /v1/ HTTP/1.1",
            &["Host: deathstar"],
        ),
        ("odd-method", "M-SEARCH /v1/ HTTP/1.1", &["Host: deathstar"]),
        (
            "nul-in-target",
            "GET /v1/\0x HTTP/1.1",
            &["Host: deathstar"],
        ),
        (
            "utf8-target",
            "GET /v1/\u{e9} HTTP/1.1",
            &["Host: deathstar"],
        ),
        (
            "connect",
            "CONNECT deathstar:443 HTTP/1.1",
            &["Host: deathstar:443"],
        ),
    ];
    for (name, line, hs) in lines {
        v.push(Shape {
            name: format!("line-{name}"),
            line: line.to_string(),
            headers: hs.iter().map(|s| s.to_string()).collect(),
            eol: "\r\n",
            body: vec![],
        });
    }
    // Header-line oddities around a Content-Length body.
    let odd: &[(&str, &[&str])] = &[
        ("space-before-colon-other", &["X-A : b"]),
        ("leading-space-first-header", &[" X-A: b"]),
        ("empty-name", &[": b"]),
        ("no-colon", &["X-A b"]),
        ("nul-in-value", &["X-A: b\0c"]),
        ("del-in-value", &["X-A: b\x7fc"]),
        ("ctl-in-value", &["X-A: b\x01c"]),
        ("bare-cr-in-value", &["X-A: b\rc"]),
        ("high-bytes-value", &["X-A: \u{e9}t\u{e9}"]),
        (
            "long-value",
            &["X-A: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"],
        ),
        ("fold-other", &["X-A: b", "\tc"]),
        ("expect", &["Expect: 100-continue"]),
        ("upgrade", &["Connection: Upgrade", "Upgrade: websocket"]),
        ("connection-close", &["Connection: close"]),
    ];
    for (name, hs) in odd {
        let mut headers = vec![host.clone(), "Content-Length: 5".to_string()];
        headers.extend(hs.iter().map(|s| s.to_string()));
        v.push(Shape {
            name: format!("hdr-{name}"),
            line: "POST /v1/ HTTP/1.1".into(),
            headers,
            eol: "\r\n",
            body: b"hello".to_vec(),
        });
    }
    // Mixed line endings: one LF-only header line, bare CR endings.
    for (name, sep) in [
        ("lf-one-line", "\n"),
        ("bare-cr", "\r"),
        ("cr-cr-lf", "\r\r\n"),
    ] {
        v.push(Shape {
            name: format!("eol-{name}"),
            line: "POST /v1/ HTTP/1.1".into(),
            headers: vec![format!("Host: deathstar{sep}Content-Length: 5")],
            eol: "\r\n",
            body: b"hello".to_vec(),
        });
    }
    // Empty lines before the request line.
    for (name, pre) in [("crlf", "\r\n"), ("lf", "\n"), ("two-crlf", "\r\n\r\n")] {
        v.push(Shape {
            name: format!("leading-{name}"),
            line: format!("{pre}GET /v1/ HTTP/1.1"),
            headers: vec![host.clone()],
            eol: "\r\n",
            body: vec![],
        });
    }
    v
}

#[derive(Default)]
struct Findings {
    /// We accept; a reference accepts with another boundary or request.
    smuggling: Vec<String>,
    /// We accept; a reference refuses (the server answers 400: no bypass).
    stricter_reference: Vec<String>,
    /// We refuse; every reference accepts it, and they agree.
    compat: Vec<String>,
    /// We accept; a reference hands the bytes after the head to a tunnel.
    tunnel: Vec<String>,
    agree: usize,
}

#[test]
fn http_request_boundaries_match_reference_parsers() {
    let shapes = shapes();
    let bytes: Vec<Vec<u8>> = shapes.iter().map(Shape::bytes).collect();
    let refs = reference(&bytes);
    let mut f = Findings::default();
    for ((shape, data), refs) in shapes.iter().zip(&bytes).zip(&refs) {
        let us = ours(data);
        assert!(refs.contains_key("h11") && refs.contains_key("llhttp"));
        let show = |r: &Read| match r {
            Read::Ok { end, .. } => format!("ends at {end}"),
            Read::Incomplete => "incomplete".to_string(),
            Read::Upgrade { end } => format!("tunnel after {end}"),
            Read::Error(w) => format!("refuses ({w})"),
        };
        let others = refs
            .iter()
            .map(|(k, r)| format!("{k} {}", show(r)))
            .collect::<Vec<_>>()
            .join(", ");
        let line = format!("{}: ours {}; {others}", shape.name, show(&us));
        match &us {
            Read::Ok {
                end,
                method,
                target,
            } => {
                let mut bad = false;
                let mut stricter = false;
                let mut tunnel = false;
                for r in refs.values() {
                    match r {
                        Read::Ok {
                            end: e,
                            method: m,
                            target: t,
                        } => {
                            // Targets compare in origin-form only (we report the
                            // path of an absolute-form target).
                            let same_target = !t.starts_with('/') || t == target;
                            if e != end || m != method || !same_target {
                                bad = true;
                            }
                        }
                        // Reads the request as unfinished: it waits for bytes
                        // that we pass on as the next request.
                        Read::Incomplete => bad = true,
                        Read::Error(_) => stricter = true,
                        Read::Upgrade { .. } => tunnel = true,
                    }
                }
                if bad {
                    f.smuggling.push(line);
                } else if tunnel {
                    f.tunnel.push(line);
                } else if stricter {
                    f.stricter_reference.push(line);
                } else {
                    f.agree += 1;
                }
            }
            Read::Incomplete | Read::Error(_) | Read::Upgrade { .. } => {
                let accepted: Vec<_> = refs
                    .values()
                    .filter_map(|r| match r {
                        Read::Ok { end, .. } => Some(*end),
                        _ => None,
                    })
                    .collect();
                if accepted.len() == refs.len() && accepted.windows(2).all(|w| w[0] == w[1]) {
                    f.compat.push(line);
                } else {
                    f.agree += 1;
                }
            }
        }
    }
    println!("{} shapes, {} read alike", shapes.len(), f.agree);
    println!(
        "\nrefused by us, accepted alike by h11 and llhttp ({}):",
        f.compat.len()
    );
    for l in &f.compat {
        println!("  {l}");
    }
    println!(
        "\naccepted by us, refused by a reference ({}):",
        f.stricter_reference.len()
    );
    for l in &f.stricter_reference {
        println!("  {l}");
    }
    println!(
        "\naccepted by us, a tunnel for a reference ({}):",
        f.tunnel.len()
    );
    for l in &f.tunnel {
        println!("  {l}");
    }
    // The comparison itself must be live: most plain shapes read alike.
    assert!(
        f.agree > shapes.len() / 3,
        "only {} of {} shapes agree",
        f.agree,
        shapes.len()
    );
    assert!(
        f.smuggling.is_empty(),
        "request boundaries that differ from a reference parser while we accept ({}):\n{}",
        f.smuggling.len(),
        f.smuggling.join("\n")
    );
}
