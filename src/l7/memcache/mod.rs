//! memcached text and binary protocols: request parsers, reply framing,
//! Cilium's command groups and key rules, and the protocol's denials.

pub mod binary;
mod command;
mod reply;
mod rule;
pub mod text;

use serde::Deserialize;

pub use crate::l7::http::RuleError;
pub use command::{group_of, Command, TextCmd};
pub use rule::MemcacheRule;

use crate::config::DenyReply;
use crate::l7::{Parse, Protocol, ReplyHead, RequestHead};
use crate::log::{Subject, Texts};
use crate::packed::{Packed, PackedIter};

/// `rules.l7[]` item under `l7proto: memcache`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MemcacheRuleSpec {
    pub command: Option<String>,
    pub key_exact: Option<String>,
    pub key_prefix: Option<String>,
    pub key_regex: Option<String>,
}

/// One memcached request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct McRequest {
    pub command: Command,
    /// Keys as sent (binary: the key field, if any).
    pub keys: Keys,
    /// No reply expected: text `noreply`, meta `q`, binary quiet opcodes.
    pub noreply: bool,
    /// Binary only; echoed in the denial.
    pub opaque: u32,
}

/// Bytes of keys held in a `Keys` value itself (one length byte each).
const INLINE_KEYS: usize = 62;

/// The keys of one request. A request carries one short key or none almost
/// always: up to `INLINE_KEYS` bytes live in the value itself, so that a
/// request is parsed without allocating; longer key lists move to the heap.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Keys(Packed<INLINE_KEYS>);

/// The keys of a `Keys`, in order.
pub type KeyIter<'a> = PackedIter<'a>;

impl Keys {
    pub const fn new() -> Keys {
        Keys(Packed::new())
    }

    pub fn one(key: &[u8]) -> Keys {
        Keys(Packed::one(key))
    }

    pub fn push(&mut self, key: &[u8]) {
        self.0.push(key)
    }

    pub fn iter(&self) -> KeyIter<'_> {
        self.0.iter()
    }

    /// The number of keys.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.iter().map(|k| k.escape_ascii().to_string()))
            .finish()
    }
}

impl<'a> FromIterator<&'a [u8]> for Keys {
    fn from_iter<I: IntoIterator<Item = &'a [u8]>>(keys: I) -> Keys {
        let mut k = Keys::new();
        for key in keys {
            k.push(key);
        }
        k
    }
}

impl<'a> IntoIterator for &'a Keys {
    type Item = &'a [u8];
    type IntoIter = KeyIter<'a>;
    fn into_iter(self) -> KeyIter<'a> {
        self.iter()
    }
}

impl McRequest {
    pub fn is_binary(&self) -> bool {
        matches!(self.command, Command::Binary(_))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Text,
    Binary,
}

/// memcached on one connection; the first byte the client sends picks the
/// protocol (0x80, the request magic: binary) for the whole connection.
#[derive(Debug, Default, Clone)]
pub struct Memcache {
    mode: Option<Mode>,
}

impl Memcache {
    pub fn new() -> Self {
        Memcache { mode: None }
    }

    pub fn mode(&self) -> Option<Mode> {
        self.mode
    }
}

/// The default text denial (`DenyReply::memcache_message` "access denied").
pub const TEXT_DENIAL: &[u8] = b"CLIENT_ERROR access denied\r\n";
/// What memcached answers to a line it does not know as a command; the
/// enforcer answers the same when no rule lets such a line through.
pub const TEXT_UNKNOWN: &[u8] = b"ERROR\r\n";

impl Protocol for Memcache {
    type Request = McRequest;
    type Rule = MemcacheRule;

    fn parse_request(&mut self, buf: &[u8]) -> Parse<RequestHead<McRequest>> {
        let mode = match (self.mode, buf.first()) {
            (Some(m), _) => m,
            (None, None) => return Parse::NeedMore,
            (None, Some(&b)) => {
                *self
                    .mode
                    // memcached's own test: exactly the request magic.
                    .insert(if b == binary::MAGIC_REQUEST {
                        Mode::Binary
                    } else {
                        Mode::Text
                    })
            }
        };
        match mode {
            Mode::Text => text::parse(buf),
            Mode::Binary => binary::parse(buf),
        }
    }

    /// Text commands end with a line feed; binary heads are at most
    /// 24 + 255 + 250 bytes, cheap to re-parse whole.
    fn head_may_end(&self, buf: &[u8], old: usize) -> bool {
        self.mode != Some(Mode::Text) || buf.get(old..).is_some_and(|new| new.contains(&b'\n'))
    }

    fn parse_reply(&mut self, buf: &[u8], req: Option<&McRequest>) -> Parse<ReplyHead> {
        let binary = match (req, self.mode) {
            (Some(r), _) => r.is_binary(),
            (None, Some(m)) => m == Mode::Binary,
            (None, None) => buf.first().is_some_and(|&b| b >= 0x80),
        };
        if binary {
            reply::parse_binary(buf, req)
        } else {
            reply::parse_text(buf, req)
        }
    }

    /// Text denials carry the configured message (checked printable, one
    /// line); binary ones keep their fixed body, which clients show only
    /// as the status's text.
    fn deny_reply(&self, req: &McRequest, reply: &DenyReply) -> Option<Vec<u8>> {
        if !self.expects_reply(req) {
            return None;
        }
        match req.command {
            Command::Binary(op) => Some(binary::deny_response(op, req.opaque)),
            Command::Text(TextCmd::Unknown) => Some(TEXT_UNKNOWN.to_vec()),
            Command::Text(_) => {
                Some(format!("CLIENT_ERROR {}\r\n", reply.memcache_message).into_bytes())
            }
        }
    }

    fn expects_reply(&self, req: &McRequest) -> bool {
        // Text `quit` closes without a reply; binary `quit` answers first.
        !req.noreply && req.command != Command::Text(TextCmd::Quit)
    }

    fn subject(&self, req: &McRequest) -> Subject {
        Subject::Memcache {
            command: req.command.name(),
            keys: {
                let mut keys = Texts::new();
                for k in &req.keys {
                    keys.push_lossy(k);
                }
                keys
            },
        }
    }

    fn unparsed_subject(&self) -> Subject {
        Subject::Memcache {
            command: "",
            keys: Texts::new(),
        }
    }

    fn rule_matches(&self, req: &McRequest, rule: &MemcacheRule) -> bool {
        rule.matches(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(
        command: Option<&str>,
        exact: Option<&str>,
        prefix: Option<&str>,
        regex: Option<&str>,
    ) -> MemcacheRuleSpec {
        MemcacheRuleSpec {
            command: command.map(Into::into),
            key_exact: exact.map(Into::into),
            key_prefix: prefix.map(Into::into),
            key_regex: regex.map(Into::into),
        }
    }
    fn rule(command: &str, exact: &str) -> MemcacheRule {
        MemcacheRule::compile(&spec(Some(command), Some(exact), None, None)).unwrap()
    }
    fn parse(m: &mut Memcache, b: &[u8]) -> RequestHead<McRequest> {
        match m.parse_request(b) {
            Parse::Complete(h) => h,
            o => panic!("{b:?}: {o:?}"),
        }
    }
    fn treq(s: &str) -> McRequest {
        parse(&mut Memcache::new(), s.as_bytes()).req
    }
    fn breq(op: u8, key: &[u8], extras: &[u8], value: &[u8]) -> McRequest {
        parse(
            &mut Memcache::new(),
            &binary::request(op, 0x1234, extras, key, value),
        )
        .req
    }
    /// Any rule of the list accepts the request (Cilium: rules are OR-ed).
    fn allowed(rules: &[MemcacheRule], r: &McRequest) -> bool {
        rules.iter().any(|x| x.matches(r))
    }

    #[test]
    fn seed_policy_semantics() {
        let awing = [rule("get", "awing-coord"), rule("set", "awing-coord")];
        let xwing = [rule("get", "xwing-coord"), rule("set", "xwing-coord")];
        let tracker = [rule("get", "awing-coord"), rule("get", "xwing-coord")];
        assert!(allowed(&awing, &treq("get awing-coord\r\n")));
        assert!(allowed(&awing, &treq("gets awing-coord\r\n")));
        assert!(allowed(&awing, &treq("set awing-coord 0 1200 16\r\n")));
        assert!(!allowed(&awing, &treq("get xwing-coord\r\n")));
        assert!(!allowed(&awing, &treq("add awing-coord 0 0 1\r\n")));
        assert!(!allowed(&awing, &treq("delete awing-coord\r\n")));
        // No single rule accepts both keys, so the multi-get is denied.
        assert!(!allowed(&awing, &treq("get awing-coord xwing-coord\r\n")));
        assert!(!allowed(&tracker, &treq("get awing-coord xwing-coord\r\n")));
        assert!(allowed(&tracker, &treq("get awing-coord awing-coord\r\n")));
        assert!(!allowed(&tracker, &treq("set xwing-coord 0 0 1\r\n")));
        assert!(allowed(&xwing, &treq("set xwing-coord 0 0 1 noreply\r\n")));
        // Binary: get/getq/getk/getkq are "get"; set/setq are "set".
        for op in [0x00, 0x09, 0x0c, 0x0d] {
            assert!(
                allowed(&awing, &breq(op, b"awing-coord", &[], &[])),
                "{op:#x}"
            );
            assert!(
                !allowed(&awing, &breq(op, b"xwing-coord", &[], &[])),
                "{op:#x}"
            );
        }
        assert!(allowed(
            &awing,
            &breq(0x01, b"awing-coord", &[0; 8], b"1,2")
        ));
        assert!(allowed(
            &awing,
            &breq(0x11, b"awing-coord", &[0; 8], b"1,2")
        ));
        assert!(!allowed(
            &tracker,
            &breq(0x01, b"awing-coord", &[0; 8], b"1,2")
        ));
        // quit is a command like any other.
        assert!(!allowed(&awing, &treq("quit\r\n")));
        assert!(!allowed(&awing, &treq("mn\r\n")));
        assert!(allowed(&awing, &treq("mg awing-coord v\r\n")));
    }

    #[test]
    fn key_tests_precedence_and_empty_rules() {
        let prefix = MemcacheRule::compile(&spec(Some("get"), None, Some("awing"), None)).unwrap();
        assert!(prefix.matches(&treq("get awing-coord awing-x\r\n")));
        assert!(!prefix.matches(&treq("get awing-coord xwing-coord\r\n")));
        let re =
            MemcacheRule::compile(&spec(Some("writeGroup"), None, None, Some("coord$"))).unwrap();
        assert!(re.matches(&treq("delete xwing-coord\r\n")));
        assert!(
            re.matches(&treq("touch a-coord 10\r\n")),
            "unanchored at the start"
        );
        assert!(!re.matches(&treq("delete coordinates\r\n")));
        assert!(!re.matches(&treq("get xwing-coord\r\n")));
        // keyExact wins over keyPrefix, which wins over keyRegex.
        let all =
            MemcacheRule::compile(&spec(Some("get"), Some("a"), Some("b"), Some("c"))).unwrap();
        assert!(all.matches(&treq("get a\r\n")) && !all.matches(&treq("get b\r\n")));
        let pr = MemcacheRule::compile(&spec(Some("get"), Some(""), Some("b"), Some("c"))).unwrap();
        assert!(pr.matches(&treq("get bx\r\n")) && !pr.matches(&treq("get c\r\n")));
        // A command with no key test allows any keys; keyless commands pass key tests.
        let stats = MemcacheRule::compile(&spec(Some("stats"), Some("x"), None, None)).unwrap();
        assert!(stats.matches(&treq("stats\r\n")));
        let any_get = MemcacheRule::compile(&spec(Some("get"), None, None, None)).unwrap();
        assert!(any_get.matches(&treq("get a b c\r\n")));
        let empty = MemcacheRule::compile(&MemcacheRuleSpec::default()).unwrap();
        assert!(empty.matches(&treq("flush_all\r\n")));
        assert!(empty.matches(&breq(0x07, b"", &[], &[])));
    }

    #[test]
    fn compile_errors() {
        let e = MemcacheRule::compile(&spec(Some("fetch"), None, None, None)).unwrap_err();
        assert_eq!(e.field, "command");
        let e = MemcacheRule::compile(&spec(None, Some("k"), None, None)).unwrap_err();
        assert_eq!(e.field, "command");
        let e = MemcacheRule::compile(&spec(Some("get"), None, None, Some("("))).unwrap_err();
        assert_eq!(e.field, "keyRegex");
        let y: MemcacheRuleSpec =
            serde_yaml::from_str("{command: get, keyExact: awing-coord}").unwrap();
        assert!(MemcacheRule::compile(&y).is_ok());
        assert!(serde_yaml::from_str::<MemcacheRuleSpec>("{command: get, key: x}").is_err());
    }

    #[test]
    fn mode_is_chosen_by_the_first_byte() {
        let mut m = Memcache::new();
        assert_eq!(m.parse_request(b""), Parse::NeedMore);
        assert_eq!(m.mode(), None);
        parse(&mut m, b"get a\r\n");
        assert_eq!(m.mode(), Some(Mode::Text));
        // A text connection never switches to binary: its bytes are a text
        // line to memcached too (the NULs in it end that line early).
        let mut bin = binary::request(0, 0, &[], b"k", &[]);
        assert_eq!(m.parse_request(&bin), Parse::NeedMore);
        bin.push(b'\n');
        assert!(matches!(m.parse_request(&bin), Parse::Invalid(_)));
        // Only the request magic itself selects binary, as in memcached.
        let mut t = Memcache::new();
        parse(&mut t, b"\x81x\r\n");
        assert_eq!(t.mode(), Some(Mode::Text));
        let mut b = Memcache::new();
        parse(&mut b, &binary::request(0, 0, &[], b"k", &[]));
        assert_eq!(b.mode(), Some(Mode::Binary));
        assert!(matches!(b.parse_request(b"get a\r\n"), Parse::Invalid(_)));
    }

    #[test]
    fn unknown_lines_get_memcacheds_answer_unless_allowed_everything() {
        let m = Memcache::new();
        for s in ["bogus\r\n", "\r\n", "GET k\r\n"] {
            let r = treq(s);
            assert_eq!(
                m.deny_reply(&r, &DenyReply::default()).unwrap(),
                b"ERROR\r\n",
                "{s:?}"
            );
            assert!(m.expects_reply(&r));
        }
        let r = treq("bogus\r\n");
        let everything = MemcacheRule::compile(&MemcacheRuleSpec::default()).unwrap();
        assert!(everything.matches(&r));
        for g in ["get", "set", "storage", "writeGroup", "stats"] {
            assert!(!rule(g, "k").matches(&r), "{g}");
            let any = MemcacheRule::compile(&spec(Some(g), None, None, None)).unwrap();
            assert!(!any.matches(&r), "{g}");
        }
        // A line memcached rejects is judged as its command, keys included.
        let bad = treq("set k 0 0 -1\r\n");
        assert!(rule("set", "k").matches(&bad));
        assert!(!rule("set", "other").matches(&bad));
        assert_eq!(
            m.deny_reply(&bad, &DenyReply::default()).unwrap(),
            TEXT_DENIAL
        );
        for (g, s) in [
            ("extstore", "extstore compact_gas 1\r\n"),
            ("refresh_certs", "refresh_certs\r\n"),
            ("debugtime", "debugtime 1\r\n"),
            ("misbehave", "misbehave\r\n"),
            ("get", "bget k\r\n"),
        ] {
            let any = MemcacheRule::compile(&spec(Some(g), None, None, None)).unwrap();
            assert!(any.matches(&treq(s)), "{g}");
        }
    }

    #[test]
    fn denials_and_expected_replies() {
        let m = Memcache::new();
        let get = treq("get xwing-coord\r\n");
        assert_eq!(
            m.deny_reply(&get, &DenyReply::default()).unwrap(),
            b"CLIENT_ERROR access denied\r\n"
        );
        let own = DenyReply {
            memcache_message: "not your key".into(),
            ..DenyReply::default()
        };
        assert_eq!(
            m.deny_reply(&get, &own).unwrap(),
            b"CLIENT_ERROR not your key\r\n"
        );
        assert!(m.expects_reply(&get));
        for s in [
            "set a 0 0 1 noreply\r\n",
            "mg a v q\r\n",
            "quit\r\n",
            "delete a noreply\r\n",
        ] {
            let r = treq(s);
            assert!(!m.expects_reply(&r), "{s:?}");
            assert_eq!(m.deny_reply(&r, &DenyReply::default()), None, "{s:?}");
        }
        let bget = breq(0x00, b"k", &[], &[]);
        let d = m.deny_reply(&bget, &DenyReply::default()).unwrap();
        let h = binary::Header::read(&d).unwrap();
        assert_eq!(
            (h.magic, h.opcode, h.vbucket_or_status, h.opaque),
            (0x81, 0x00, 0x0008, 0x1234)
        );
        assert_eq!(&d[24..], b"access denied");
        let set = breq(0x01, b"k", &[0; 8], b"v");
        assert_eq!(
            binary::Header::read(&m.deny_reply(&set, &DenyReply::default()).unwrap())
                .unwrap()
                .opcode,
            0x01
        );
        for op in [0x09, 0x0d, 0x17] {
            let r = breq(op, if op == 0x17 { b"" } else { b"k" }, &[], &[]);
            assert!(!m.expects_reply(&r));
            assert_eq!(m.deny_reply(&r, &DenyReply::default()), None, "{op:#x}");
        }
        let quit = breq(0x07, b"", &[], &[]);
        assert!(m.expects_reply(&quit) && m.deny_reply(&quit, &DenyReply::default()).is_some());
    }

    #[test]
    fn subject_and_dispatch() {
        let m = Memcache::new();
        let r = treq("get awing-coord xwing-coord\r\n");
        assert_eq!(
            m.subject(&r),
            Subject::Memcache {
                command: "get",
                keys: ["awing-coord", "xwing-coord"].into_iter().collect()
            }
        );
        let b = breq(0x0d, b"k\xff", &[], &[]);
        assert_eq!(
            m.subject(&b),
            Subject::Memcache {
                command: "getkq",
                keys: ["k\u{fffd}"].into_iter().collect()
            }
        );
        assert_eq!(
            m.subject(&treq("ms k 1 MA\r\n")),
            Subject::Memcache {
                command: "ms",
                keys: ["k"].into_iter().collect()
            }
        );
        let get = rule("get", "awing-coord");
        assert!(m.rule_matches(&treq("get awing-coord\r\n"), &get));
        assert!(!m.rule_matches(&treq("get xwing-coord\r\n"), &get));
    }

    /// Walk a captured client→server and server→client transcript: every
    /// request parses, every reply unit is framed, and each request that
    /// expects a reply gets exactly its own.
    fn replay(requests: &[u8], replies: &[u8]) -> (usize, usize) {
        let mut m = Memcache::new();
        let mut pending = std::collections::VecDeque::new();
        let mut buf = requests;
        let mut n = 0;
        while !buf.is_empty() {
            let h = parse(&mut m, buf);
            n += 1;
            let body = match h.body {
                crate::l7::Body::Length(b) => b as usize,
                _ => 0,
            };
            buf = &buf[h.head_len + body..];
            if m.expects_reply(&h.req) {
                pending.push_back(h.req);
            }
        }
        let mut buf = replies;
        let mut unsolicited = 0;
        while !buf.is_empty() {
            let h = match m.parse_reply(buf, pending.front()) {
                Parse::Complete(h) => h,
                o => panic!(
                    "{o:?} at {:?} for {:?}",
                    String::from_utf8_lossy(buf),
                    pending.front()
                ),
            };
            let body = match h.body {
                crate::l7::ReplyBody::Length(b) => b as usize,
                crate::l7::ReplyBody::None => 0,
                o => panic!("{o:?}"),
            };
            buf = &buf[h.head_len + body..];
            if h.unsolicited {
                unsolicited += 1;
            } else if h.last {
                pending.pop_front();
            }
        }
        assert!(pending.is_empty(), "unanswered: {pending:?}");
        (n, unsolicited)
    }

    #[test]
    fn real_server_transcripts() {
        let (n, unsolicited) = replay(
            include_bytes!("testdata/text_req.bin"),
            include_bytes!("testdata/text_rep.bin"),
        );
        assert_eq!((n, unsolicited), (34, 0));
        let (n, unsolicited) = replay(
            include_bytes!("testdata/bin_req.bin"),
            include_bytes!("testdata/bin_rep.bin"),
        );
        assert_eq!(
            (n, unsolicited),
            (18, 2),
            "getq and getkq hits answer no pending request"
        );
    }

    #[test]
    fn replies_follow_the_connection_mode() {
        let mut m = Memcache::new();
        let get = parse(&mut m, b"get a\r\n").req;
        assert!(matches!(
            m.parse_reply(b"END\r\n", Some(&get)),
            Parse::Complete(ReplyHead { last: true, .. })
        ));
        let mut b = Memcache::new();
        let bget = parse(&mut b, &binary::request(0, 1, &[], b"k", &[])).req;
        let mut resp = binary::request(0, 1, &[], &[], b"v");
        resp[0] = 0x81;
        assert!(matches!(
            b.parse_reply(&resp, Some(&bget)),
            Parse::Complete(ReplyHead { head_len: 24, .. })
        ));
        assert!(matches!(
            b.parse_reply(b"END\r\n", Some(&bget)),
            Parse::Invalid(_)
        ));
    }

    /// Keys keep their order and bytes whatever their lengths, inline or
    /// moved to the heap part-way, and compare by content.
    #[test]
    fn keys_hold_any_lengths() {
        let long = vec![b'x'; 300];
        let sizes: [&[usize]; 6] = [
            &[],
            &[0],
            &[11],
            &[INLINE_KEYS - 1],
            &[INLINE_KEYS],
            &[20, 20, 20, 254, 255, 256, 0, 3],
        ];
        for lens in sizes {
            let want: Vec<Vec<u8>> = lens
                .iter()
                .enumerate()
                .map(|(k, &n)| long[..n].iter().map(|&b| b + k as u8).collect())
                .collect();
            let keys: Keys = want.iter().map(Vec::as_slice).collect();
            assert_eq!(keys.iter().collect::<Vec<_>>(), want, "{lens:?}");
            assert_eq!(keys.len(), want.len());
            assert_eq!(keys.is_empty(), want.is_empty());
            let mut again = Keys::new();
            for k in &want {
                again.push(k);
            }
            assert_eq!(again, keys);
        }
        assert_ne!(Keys::one(b"ab"), Keys::one(b"a"));
        assert_ne!(Keys::one(b""), Keys::new());
        assert_eq!(format!("{:?}", Keys::one(b"a\x90")), "[\"a\\\\x90\"]");
    }
}
