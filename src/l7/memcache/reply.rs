//! memcached reply framing, text and binary: where one reply unit ends and
//! whether more units follow for the same request.

use super::binary::{Header, HEADER_LEN, MAGIC_RESPONSE};
use super::command::{is_quiet, Command, TextCmd};
use super::McRequest;
use crate::l7::{Parse, ReplyBody, ReplyHead};

/// Longest reply line accepted (`ME` debug lines and `STAT` lines are short).
pub const MAX_REPLY_LINE: usize = 8192;

fn unit(head_len: usize, body: ReplyBody, last: bool, unsolicited: bool) -> Parse<ReplyHead> {
    Parse::Complete(ReplyHead {
        head_len,
        body,
        last,
        unsolicited,
    })
}

fn data_len(t: Option<&[u8]>) -> Option<u64> {
    let t = t?;
    if t.is_empty() || t.len() > 10 || !t.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = t.iter().fold(0u64, |a, &d| a * 10 + u64::from(d - b'0'));
    // Data block plus its CRLF.
    Some(n + 2)
}

pub fn parse_text(buf: &[u8], req: Option<&McRequest>) -> Parse<ReplyHead> {
    let window = &buf[..buf.len().min(MAX_REPLY_LINE)];
    let Some(nl) = window.iter().position(|&c| c == b'\n') else {
        return if buf.len() >= MAX_REPLY_LINE {
            Parse::Invalid("reply line too long")
        } else {
            Parse::NeedMore
        };
    };
    let line = window[..nl].strip_suffix(b"\r").unwrap_or(&window[..nl]);
    let head_len = nl + 1;
    let mut toks = line.split(|&c| c == b' ').filter(|t| !t.is_empty());
    let first = toks.next().unwrap_or(b"");
    let cmd = match req.map(|r| r.command) {
        Some(Command::Text(c)) => Some(c),
        _ => None,
    };
    let unsolicited = req.is_none();
    // While the oldest request awaiting a reply is `mn`, any reply other
    // than `MN` answers an earlier quiet meta request (its hit, or an error:
    // `q` does not hide those).
    let quiet_meta = cmd == Some(TextCmd::Mn) && first != b"MN";
    let single = |u| unit(head_len, ReplyBody::None, true, u);
    match first {
        b"VALUE" => {
            let _key = toks.next();
            let _flags = toks.next();
            match data_len(toks.next()) {
                Some(n) => unit(head_len, ReplyBody::Length(n), false, unsolicited),
                None => Parse::Invalid("bad VALUE line"),
            }
        }
        b"VA" => match data_len(toks.next()) {
            Some(n) => unit(
                head_len,
                ReplyBody::Length(n),
                true,
                unsolicited || quiet_meta,
            ),
            None => Parse::Invalid("bad VA line"),
        },
        // Multi-line listings (stats, stats cachedump, stats detail dump).
        b"STAT" | b"ITEM" | b"PREFIX" => unit(head_len, ReplyBody::None, false, unsolicited),
        // Errors end the reply whatever the request (`ERROR: shutdown not
        // enabled`, `ERROR metadump not allowed`, `Error TLS not enabled`,
        // a refused `watch`).
        e if e.len() >= 5 && e[..5].eq_ignore_ascii_case(b"ERROR")
            || e == b"CLIENT_ERROR"
            || e == b"SERVER_ERROR" =>
        {
            single(unsolicited || quiet_meta)
        }
        _ if cmd == Some(TextCmd::Watch) => {
            unit(head_len, ReplyBody::UntilClose, true, unsolicited)
        }
        b"END"
        | b"STORED"
        | b"NOT_STORED"
        | b"EXISTS"
        | b"NOT_FOUND"
        | b"DELETED"
        | b"TOUCHED"
        | b"OK"
        | b"RESET"
        | b"VERSION"
        | b"BUSY"
        | b"BADCLASS"
        | b"NOSPARE"
        | b"NOTFULL"
        | b"UNSAFE"
        | b"SAME"
        | b"MN"
        | b"MEMLIMIT_TOO_SMALL"
        | b"MEMLIMIT_ADJUST_FAILED" => single(unsolicited),
        b"HD" | b"EN" | b"NF" | b"NS" | b"EX" | b"ME" => single(unsolicited || quiet_meta),
        // incr/decr result.
        n if !n.is_empty() && n.iter().all(u8::is_ascii_digit) => single(unsolicited),
        // lru_crawler metadump lines (`key=... exp=...`) until END.
        _ if cmd == Some(TextCmd::LruCrawler) => {
            unit(head_len, ReplyBody::None, false, unsolicited)
        }
        _ => Parse::Invalid("unknown reply"),
    }
}

pub fn parse_binary(buf: &[u8], req: Option<&McRequest>) -> Parse<ReplyHead> {
    if buf.first().is_some_and(|&m| m != MAGIC_RESPONSE) {
        return Parse::Invalid("bad response magic");
    }
    let Some(h) = Header::read(buf) else {
        return Parse::NeedMore;
    };
    if h.value_len().is_none() {
        return Parse::Invalid("extras and key longer than body");
    }
    let body = if h.body_len == 0 {
        ReplyBody::None
    } else {
        ReplyBody::Length(u64::from(h.body_len))
    };
    // `stat` answers with one response per statistic, ended by an empty one.
    let last = !(h.opcode == 0x10 && (h.key_len != 0 || h.body_len != 0));
    // Quiet opcodes answer only on a miss/error; such a response does not
    // belong to the oldest request awaiting a reply.
    let unsolicited = req.is_none() || is_quiet(h.opcode);
    unit(HEADER_LEN, body, last, unsolicited)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::l7::memcache::{binary, text};
    use crate::l7::{Parse, RequestHead};

    fn treq(s: &str) -> McRequest {
        match text::parse(s.as_bytes()) {
            Parse::Complete(RequestHead { req, .. }) => req,
            o => panic!("{o:?}"),
        }
    }
    fn t(s: &str, r: Option<&McRequest>) -> (usize, ReplyBody, bool, bool) {
        match parse_text(s.as_bytes(), r) {
            Parse::Complete(h) => (h.head_len, h.body, h.last, h.unsolicited),
            o => panic!("{s:?}: {o:?}"),
        }
    }

    #[test]
    fn server_errors_and_admin_answers_are_one_line() {
        for (req, line) in [
            ("shutdown\r\n", "ERROR: shutdown not enabled\r\n"),
            ("refresh_certs\r\n", "Error TLS not enabled\r\n"),
            (
                "cache_memlimit 1\r\n",
                "MEMLIMIT_TOO_SMALL cannot set maxbytes to less than 8m\r\n",
            ),
            (
                "lru_crawler metadump all\r\n",
                "ERROR metadump not allowed\r\n",
            ),
            ("watch\r\n", "CLIENT_ERROR watch commands not allowed\r\n"),
            ("bogus\r\n", "ERROR\r\n"),
            (
                "set k 0 0 -1\r\n",
                "CLIENT_ERROR bad command line format\r\n",
            ),
        ] {
            let r = treq(req);
            assert_eq!(
                t(line, Some(&r)),
                (line.len(), ReplyBody::None, true, false),
                "{req:?}"
            );
        }
        // After `watch` is accepted, the log stream runs until close.
        assert_eq!(
            t("OK\r\n", Some(&treq("watch\r\n"))).1,
            ReplyBody::UntilClose
        );
        // An error while `mn` waits answers an earlier quiet meta request.
        let mn = treq("mn\r\n");
        assert!(t("CLIENT_ERROR bad data chunk\r\n", Some(&mn)).3);
        assert!(!t("MN\r\n", Some(&mn)).3);
    }

    #[test]
    fn text_get_and_single_lines() {
        let get = treq("get a b\r\n");
        assert_eq!(
            t("VALUE a 0 5\r\nhello\r\n", Some(&get)),
            (13, ReplyBody::Length(7), false, false)
        );
        assert_eq!(
            t("VALUE a 0 5 99\r\n", Some(&get)),
            (16, ReplyBody::Length(7), false, false)
        );
        assert_eq!(t("END\r\n", Some(&get)), (5, ReplyBody::None, true, false));
        let set = treq("set a 0 0 1\r\n");
        for l in [
            "STORED",
            "NOT_STORED",
            "EXISTS",
            "NOT_FOUND",
            "DELETED",
            "TOUCHED",
            "OK",
            "ERROR",
            "CLIENT_ERROR bad data chunk",
            "SERVER_ERROR out of memory",
            "VERSION 1.6.21",
            "42",
        ] {
            let s = format!("{l}\r\n");
            assert_eq!(
                t(&s, Some(&set)),
                (s.len(), ReplyBody::None, true, false),
                "{l}"
            );
        }
        assert!(t("STORED\r\n", None).3, "no pending request: unsolicited");
        assert_eq!(parse_text(b"STORED\r", Some(&set)), Parse::NeedMore);
        assert!(matches!(
            parse_text(b"VALUE a 0 x\r\n", Some(&get)),
            Parse::Invalid(_)
        ));
        assert!(matches!(
            parse_text(b"HELLO\r\n", Some(&set)),
            Parse::Invalid(_)
        ));
        assert!(matches!(
            parse_text(&vec![b'1'; MAX_REPLY_LINE], Some(&set)),
            Parse::Invalid(_)
        ));
    }

    #[test]
    fn text_stats_and_meta() {
        let stats = treq("stats\r\n");
        assert!(!t("STAT pid 1\r\n", Some(&stats)).2);
        assert!(t("END\r\n", Some(&stats)).2);
        let mg = treq("mg a v\r\n");
        assert_eq!(
            t("VA 2 f0\r\nhi\r\n", Some(&mg)),
            (9, ReplyBody::Length(4), true, false)
        );
        for l in ["HD", "EN", "NF", "NS", "EX", "HD c123 k a"] {
            assert!(t(&format!("{l}\r\n"), Some(&mg)).2);
        }
        let mn = treq("mn\r\n");
        assert_eq!(t("MN\r\n", Some(&mn)), (4, ReplyBody::None, true, false));
        assert!(
            t("VA 1 q\r\nx\r\n", Some(&mn)).3,
            "a quiet mg's hit before MN"
        );
        assert!(t("HD\r\n", Some(&mn)).3);
        let lru = treq("lru_crawler metadump all\r\n");
        assert!(!t("key=a exp=-1 la=1\r\n", Some(&lru)).2);
        assert!(t("END\r\n", Some(&lru)).2);
        let watch = treq("watch\r\n");
        assert_eq!(t("OK\r\n", Some(&watch)).1, ReplyBody::UntilClose);
    }

    fn response(op: u8, key: &[u8], value: &[u8]) -> Vec<u8> {
        let mut b = binary::request(op, 5, &[], key, value);
        b[0] = MAGIC_RESPONSE;
        b
    }

    #[test]
    fn binary_responses() {
        let get = match binary::parse(&binary::request(0, 5, &[], b"k", &[])) {
            Parse::Complete(h) => h.req,
            o => panic!("{o:?}"),
        };
        let r = response(0x00, &[], b"value");
        assert_eq!(
            parse_binary(&r, Some(&get)),
            Parse::Complete(ReplyHead {
                head_len: 24,
                body: ReplyBody::Length(5),
                last: true,
                unsolicited: false
            })
        );
        for cut in 0..24 {
            assert_eq!(parse_binary(&r[..cut], Some(&get)), Parse::NeedMore);
        }
        match parse_binary(&response(0x09, &[], b"v"), Some(&get)) {
            Parse::Complete(h) => assert!(h.unsolicited, "getq hit is unsolicited"),
            o => panic!("{o:?}"),
        }
        match parse_binary(&response(0x10, b"pid", b"1"), Some(&get)) {
            Parse::Complete(h) => assert!(!h.last),
            o => panic!("{o:?}"),
        }
        match parse_binary(&response(0x10, &[], &[]), Some(&get)) {
            Parse::Complete(h) => assert!(h.last && h.body == ReplyBody::None),
            o => panic!("{o:?}"),
        }
        assert!(matches!(
            parse_binary(&[0x80], Some(&get)),
            Parse::Invalid(_)
        ));
        let mut bad = response(0x00, b"key", &[]);
        bad[11] = 1;
        assert!(matches!(parse_binary(&bad, Some(&get)), Parse::Invalid(_)));
    }
}
