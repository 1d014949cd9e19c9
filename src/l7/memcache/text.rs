//! memcached text protocol requests (protocol.txt): one command line, then a
//! data block for storage commands whose length the line gives.

use super::command::{Command, TextCmd};
use super::McRequest;
use crate::l7::{Body, Parse, RequestHead};

/// Longest command line accepted (a multi-get of ~30 long keys).
pub const MAX_LINE: usize = 8192;
/// memcached's KEY_MAX_LENGTH.
pub const MAX_KEY: usize = 250;
/// Flag tokens memcached 1.6 takes on `ms` (checked against 1.6.18).
const MAX_MS_FLAGS: usize = 16;
/// memcached refuses data blocks whose length does not fit an i32.
const MAX_DATA: u64 = i32::MAX as u64 - 2;

type R<T> = Result<T, &'static str>;

/// Parse one request from the start of `buf`.
pub fn parse(buf: &[u8]) -> Parse<RequestHead<McRequest>> {
    // Refuse a line that cannot start with a command name before its end arrives.
    for (n, &c) in buf.iter().enumerate() {
        match c {
            b' ' | b'\r' | b'\n' => break,
            b'a'..=b'z' | b'_' if n < 16 => {}
            _ => return Parse::Invalid("unknown command"),
        }
    }
    let window = &buf[..buf.len().min(MAX_LINE)];
    let Some(nl) = window.iter().position(|&c| c == b'\n') else {
        return if buf.len() >= MAX_LINE {
            Parse::Invalid("command line too long")
        } else {
            Parse::NeedMore
        };
    };
    // memcached itself accepts a bare LF as line end; so do we, to agree on boundaries.
    let line = window[..nl].strip_suffix(b"\r").unwrap_or(&window[..nl]);
    match parse_line(line) {
        Ok((req, data)) => Parse::Complete(RequestHead {
            head_len: nl + 1,
            body: data.map_or(Body::None, |n| Body::Length(n + 2)),
            req,
        }),
        Err(why) => Parse::Invalid(why),
    }
}

/// Space-separated tokens; runs of spaces are one separator (as memcached).
struct Toks<'a> {
    rest: &'a [u8],
}

impl<'a> Toks<'a> {
    fn new(line: &'a [u8]) -> Self {
        Toks { rest: line }
    }
    fn count(mut self) -> usize {
        let mut n = 0;
        while self.next().is_some() {
            n += 1;
        }
        n
    }
    fn next(&mut self) -> Option<&'a [u8]> {
        let start = self.rest.iter().position(|&c| c != b' ')?;
        let s = &self.rest[start..];
        let end = s.iter().position(|&c| c == b' ').unwrap_or(s.len());
        self.rest = &s[end..];
        Some(&s[..end])
    }
    fn need(&mut self, what: &'static str) -> R<&'a [u8]> {
        self.next().ok_or(what)
    }
    fn end(&mut self) -> R<()> {
        match self.next() {
            None => Ok(()),
            Some(_) => Err("too many arguments"),
        }
    }
    /// Optional trailing `noreply`, then end of line.
    fn noreply_end(&mut self) -> R<bool> {
        match self.next() {
            None => Ok(false),
            Some(b"noreply") => self.end().map(|_| true),
            Some(_) => Err("too many arguments"),
        }
    }
}

fn key(k: &[u8]) -> R<Vec<u8>> {
    if k.len() > MAX_KEY {
        return Err("key too long");
    }
    if k.iter().any(|&c| c < 0x21 || c == 0x7f) {
        return Err("control character in key");
    }
    Ok(k.to_vec())
}

fn unsigned(t: &[u8], max: u64) -> R<u64> {
    if t.is_empty() || t.len() > 20 || !t.iter().all(u8::is_ascii_digit) {
        return Err("bad number");
    }
    let mut n: u64 = 0;
    for &d in t {
        n = n
            .checked_mul(10)
            .and_then(|n| n.checked_add(u64::from(d - b'0')))
            .ok_or("number too large")?;
    }
    if n > max {
        return Err("number too large");
    }
    Ok(n)
}

fn signed(t: &[u8]) -> R<()> {
    unsigned(t.strip_prefix(b"-").unwrap_or(t), i64::MAX as u64).map(|_| ())
}

/// Meta flags: single-letter tokens with an optional value. Returns whether
/// `q` (quiet) was given and the mode token's letter, if any.
fn meta_flags(t: &mut Toks<'_>) -> R<(bool, Option<u8>)> {
    let (mut quiet, mut mode) = (false, None);
    while let Some(f) = t.next() {
        let Some((&flag, arg)) = f.split_first() else {
            continue;
        };
        if !flag.is_ascii_alphabetic() {
            return Err("bad meta flag");
        }
        if arg.iter().any(|&c| c < 0x21 || c == 0x7f) {
            return Err("bad meta flag");
        }
        match flag {
            b'q' => quiet = true,
            b'M' => mode = Some(*arg.first().ok_or("bad meta mode")?),
            _ => {}
        }
    }
    Ok((quiet, mode))
}

/// With the `b` flag memcached reads a meta command's key as base64 and works
/// on the decoded bytes: those are what rules judge. `flags` is the rest of
/// the line after the key (and data length).
fn meta_key(k: Vec<u8>, flags: &[u8]) -> R<Vec<u8>> {
    let mut t = Toks::new(flags);
    let mut b64 = false;
    while let Some(f) = t.next() {
        b64 |= f.first() == Some(&b'b');
    }
    if !b64 {
        return Ok(k);
    }
    base64_decode(&k).ok_or("bad base64 key")
}

/// Standard base64 with padding, as memcached decodes keys (it refuses
/// unpadded input).
fn base64_decode(s: &[u8]) -> Option<Vec<u8>> {
    if s.is_empty() || !s.len().is_multiple_of(4) {
        return None;
    }
    let pad = s.iter().rev().take_while(|&&c| c == b'=').count();
    if pad > 2 {
        return None;
    }
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let body = &s[..s.len() - pad];
    let mut out = Vec::with_capacity(s.len() / 4 * 3);
    let (mut acc, mut bits) = (0u32, 0);
    for &c in body {
        acc = (acc << 6) | val(c)?;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

fn req(cmd: TextCmd, keys: Vec<Vec<u8>>, noreply: bool) -> McRequest {
    McRequest {
        command: Command::Text(cmd),
        keys,
        noreply,
        opaque: 0,
    }
}

/// The request and the length of its data block, if it has one.
fn parse_line(line: &[u8]) -> R<(McRequest, Option<u64>)> {
    use TextCmd::*;
    let mut t = Toks::new(line);
    let name = t.need("empty command line")?;
    let simple = |c, keys, noreply| Ok((req(c, keys, noreply), None));
    match name {
        b"set" | b"add" | b"replace" | b"append" | b"prepend" | b"cas" => {
            let cmd = match name {
                b"set" => Set,
                b"add" => Add,
                b"replace" => Replace,
                b"append" => Append,
                b"prepend" => Prepend,
                _ => Cas,
            };
            let k = key(t.need("missing key")?)?;
            unsigned(t.need("missing flags")?, u64::from(u32::MAX))?;
            signed(t.need("missing exptime")?)?;
            let bytes = unsigned(t.need("missing byte count")?, MAX_DATA)?;
            if cmd == Cas {
                unsigned(t.need("missing cas unique")?, u64::MAX)?;
            }
            let noreply = t.noreply_end()?;
            Ok((req(cmd, vec![k], noreply), Some(bytes)))
        }
        b"get" | b"gets" | b"gat" | b"gats" => {
            let cmd = match name {
                b"get" => Get,
                b"gets" => Gets,
                b"gat" => Gat,
                _ => Gats,
            };
            if matches!(cmd, Gat | Gats) {
                signed(t.need("missing exptime")?)?;
            }
            let mut keys = Vec::new();
            while let Some(k) = t.next() {
                keys.push(key(k)?);
            }
            if keys.is_empty() {
                return Err("missing key");
            }
            simple(cmd, keys, false)
        }
        b"delete" => {
            let k = key(t.need("missing key")?)?;
            // `delete <key> [<time>] [noreply]`; memcached only accepts time 0.
            let noreply = match t.next() {
                None => false,
                Some(b"noreply") => t.end().map(|_| true)?,
                Some(time) => {
                    unsigned(time, u64::MAX)?;
                    t.noreply_end()?
                }
            };
            simple(Delete, vec![k], noreply)
        }
        b"incr" | b"decr" => {
            let k = key(t.need("missing key")?)?;
            unsigned(t.need("missing value")?, u64::MAX)?;
            let noreply = t.noreply_end()?;
            simple(if name == b"incr" { Incr } else { Decr }, vec![k], noreply)
        }
        b"touch" => {
            let k = key(t.need("missing key")?)?;
            signed(t.need("missing exptime")?)?;
            let noreply = t.noreply_end()?;
            simple(Touch, vec![k], noreply)
        }
        b"flush_all" => {
            let noreply = match t.next() {
                None => false,
                Some(b"noreply") => t.end().map(|_| true)?,
                Some(delay) => {
                    signed(delay)?;
                    t.noreply_end()?
                }
            };
            simple(FlushAll, vec![], noreply)
        }
        b"verbosity" => {
            unsigned(t.need("missing level")?, u64::from(u32::MAX))?;
            let noreply = t.noreply_end()?;
            simple(Verbosity, vec![], noreply)
        }
        b"version" | b"quit" | b"mn" => {
            t.end()?;
            simple(
                match name {
                    b"version" => Version,
                    b"quit" => Quit,
                    _ => Mn,
                },
                vec![],
                false,
            )
        }
        b"cache_memlimit" => {
            unsigned(t.need("missing limit")?, u64::MAX)?;
            let noreply = t.noreply_end()?;
            simple(CacheMemlimit, vec![], noreply)
        }
        // Administrative commands: arguments are not keys.
        b"stats" | b"shutdown" | b"slabs" | b"lru" | b"lru_crawler" | b"watch" | b"misbehave" => {
            let cmd = match name {
                b"stats" => Stats,
                b"shutdown" => Shutdown,
                b"slabs" => Slabs,
                b"lru" => Lru,
                b"lru_crawler" => LruCrawler,
                b"watch" => Watch,
                _ => Misbehave,
            };
            while let Some(a) = t.next() {
                if a.iter().any(|&c| c < 0x21 || c == 0x7f) {
                    return Err("control character in argument");
                }
            }
            simple(cmd, vec![], false)
        }
        b"mg" | b"md" | b"me" => {
            let k = key(t.need("missing key")?)?;
            let cmd = match name {
                b"mg" => Mg,
                b"md" => Md,
                _ => Me,
            };
            let flags = t.rest;
            let (quiet, _) = if cmd == Me {
                t.end().map(|_| (false, None))?
            } else {
                meta_flags(&mut t)?
            };
            simple(cmd, vec![meta_key(k, flags)?], quiet)
        }
        b"ms" => {
            let k = key(t.need("missing key")?)?;
            let bytes = unsigned(t.need("missing data length")?, MAX_DATA)?;
            // memcached 1.6 refuses more flags ("options flags too long")
            // without swallowing the data block: it would read the block as
            // the next command.
            if Toks::new(t.rest).count() > MAX_MS_FLAGS {
                return Err("too many meta flags");
            }
            let flags = t.rest;
            let (quiet, mode) = meta_flags(&mut t)?;
            let k = meta_key(k, flags)?;
            let cmd = match mode {
                None | Some(b'S' | b's') => MsSet,
                Some(b'E' | b'e') => MsAdd,
                Some(b'R' | b'r') => MsReplace,
                Some(b'A' | b'a') => MsAppend,
                Some(b'P' | b'p') => MsPrepend,
                Some(_) => return Err("bad meta mode"),
            };
            Ok((req(cmd, vec![k], quiet), Some(bytes)))
        }
        b"ma" => {
            let k = key(t.need("missing key")?)?;
            let flags = t.rest;
            let (quiet, mode) = meta_flags(&mut t)?;
            let k = meta_key(k, flags)?;
            let cmd = match mode {
                None | Some(b'I' | b'i' | b'+') => MaIncr,
                Some(b'D' | b'd' | b'-') => MaDecr,
                Some(_) => return Err("bad meta mode"),
            };
            simple(cmd, vec![k], quiet)
        }
        _ => Err("unknown command"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_keys_are_judged_decoded() {
        // As memcached 1.6.18: `mg eHdpbmctY29vcmQ= b v` reads xwing-coord.
        assert_eq!(keys("mg eHdpbmctY29vcmQ= b v\r\n"), ["xwing-coord"]);
        assert_eq!(keys("ms eHdpbmctY29vcmQ= 2 b\r\n"), ["xwing-coord"]);
        assert_eq!(keys("ma YQ== b\r\n"), ["a"]);
        assert_eq!(keys("md YWJj b q\r\n"), ["abc"]);
        assert_eq!(keys("mg YWI= v\r\n"), ["YWI="], "without b: as is");
        // memcached refuses unpadded or broken base64 ("error decoding key").
        invalid("mg eHdpbmctY29vcmQ b v\r\n");
        invalid("mg e!== b v\r\n");
        invalid("mg Y=== b\r\n");
    }

    fn ok(s: &str) -> RequestHead<McRequest> {
        match parse(s.as_bytes()) {
            Parse::Complete(h) => h,
            o => panic!("{s:?}: {o:?}"),
        }
    }
    fn cmd(s: &str) -> TextCmd {
        match ok(s).req.command {
            Command::Text(c) => c,
            c => panic!("{c:?}"),
        }
    }
    fn keys(s: &str) -> Vec<String> {
        ok(s)
            .req
            .keys
            .iter()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .collect()
    }
    fn invalid(s: &str) {
        assert!(
            matches!(parse(s.as_bytes()), Parse::Invalid(_)),
            "{s:?} should be invalid: {:?}",
            parse(s.as_bytes())
        );
    }

    #[test]
    fn storage_commands() {
        let h = ok("set awing-coord 0 1200 16\r\n");
        assert_eq!(
            (h.head_len, h.body, h.req.noreply),
            (27, Body::Length(18), false)
        );
        assert_eq!(h.req.command, Command::Text(TextCmd::Set));
        assert_eq!(keys("set awing-coord 0 1200 16\r\n"), ["awing-coord"]);
        for (line, c) in [
            ("add k 1 0 2\r\n", TextCmd::Add),
            ("replace k 1 -1 2\r\n", TextCmd::Replace),
            ("append k 0 0 2\r\n", TextCmd::Append),
            ("prepend k 0 0 2\r\n", TextCmd::Prepend),
            ("cas k 0 0 2 12345\r\n", TextCmd::Cas),
        ] {
            assert_eq!(cmd(line), c);
            assert_eq!(ok(line).body, Body::Length(4));
        }
        let h = ok("set k 0 0 5 noreply  \r\n");
        assert!(h.req.noreply);
        assert!(ok("cas k 0 0 5 1 noreply\r\n").req.noreply);
        assert_eq!(ok("set k 0 0 0\r\n").body, Body::Length(2));
        invalid("set k 0 0\r\n");
        invalid("set k 0 0 x\r\n");
        invalid("set k 0 0 -1\r\n");
        invalid("set k 0 0 5 maybe\r\n");
        invalid("set k 0 0 5 noreply extra\r\n");
        invalid("set k 0 0 99999999999\r\n");
        invalid("set k 4294967296 0 5\r\n");
        invalid("cas k 0 0 5\r\n");
    }

    #[test]
    fn retrieval_commands() {
        assert_eq!(
            keys("get awing-coord xwing-coord\r\n"),
            ["awing-coord", "xwing-coord"]
        );
        assert_eq!(cmd("gets a\r\n"), TextCmd::Gets);
        assert_eq!(keys("gat 100 a b\r\n"), ["a", "b"]);
        assert_eq!(cmd("gats -1 a\r\n"), TextCmd::Gats);
        assert_eq!(ok("get a\r\n").body, Body::None);
        assert_eq!(
            ok("get a  b \n").req.keys.len(),
            2,
            "bare LF and extra spaces"
        );
        invalid("get\r\n");
        invalid("get \r\n");
        invalid("gat a\r\n");
        invalid("gat 1\r\n");
        invalid(&format!("get {}\r\n", "k".repeat(MAX_KEY + 1)));
        assert_eq!(
            keys(&format!("get {}\r\n", "k".repeat(MAX_KEY)))[0].len(),
            MAX_KEY
        );
        invalid("get a\tb\r\n");
        invalid("get a\x7fb\r\n");
        invalid("GET a\r\n");
    }

    #[test]
    fn other_commands() {
        assert_eq!(cmd("delete k\r\n"), TextCmd::Delete);
        assert!(ok("delete k noreply\r\n").req.noreply);
        assert!(ok("delete k 0 noreply\r\n").req.noreply);
        assert!(!ok("delete k 0\r\n").req.noreply);
        invalid("delete k x\r\n");
        invalid("delete\r\n");
        assert_eq!(cmd("incr n 5\r\n"), TextCmd::Incr);
        assert!(ok("decr n 5 noreply\r\n").req.noreply);
        invalid("incr n\r\n");
        invalid("incr n -5\r\n");
        assert_eq!(keys("touch k 10\r\n"), ["k"]);
        invalid("touch k\r\n");
        let s = ok("stats items\r\n");
        assert_eq!(
            (s.req.command, s.req.keys.len()),
            (Command::Text(TextCmd::Stats), 0)
        );
        assert_eq!(cmd("stats\r\n"), TextCmd::Stats);
        assert_eq!(cmd("flush_all\r\n"), TextCmd::FlushAll);
        assert!(ok("flush_all 10 noreply\r\n").req.noreply);
        assert!(ok("flush_all noreply\r\n").req.noreply);
        assert_eq!(cmd("version\r\n"), TextCmd::Version);
        invalid("version 1\r\n");
        assert_eq!(cmd("verbosity 1\r\n"), TextCmd::Verbosity);
        assert!(ok("verbosity 1 noreply\r\n").req.noreply);
        assert_eq!(cmd("quit\r\n"), TextCmd::Quit);
        assert_eq!(cmd("lru_crawler metadump all\r\n"), TextCmd::LruCrawler);
        assert_eq!(cmd("watch fetchers\r\n"), TextCmd::Watch);
        assert_eq!(cmd("cache_memlimit 100\r\n"), TextCmd::CacheMemlimit);
        assert_eq!(cmd("shutdown\r\n"), TextCmd::Shutdown);
        invalid("\r\n");
        invalid("bogus k\r\n");
    }

    #[test]
    fn meta_commands() {
        let h = ok("mg awing-coord v f t q\r\n");
        assert_eq!(
            (h.req.command, h.req.noreply),
            (Command::Text(TextCmd::Mg), true)
        );
        assert_eq!(keys("mg awing-coord v\r\n"), ["awing-coord"]);
        assert!(!ok("mg k v\r\n").req.noreply);
        let h = ok("ms k 5 T100 F1\r\n");
        assert_eq!(
            (h.req.command, h.body),
            (Command::Text(TextCmd::MsSet), Body::Length(7))
        );
        assert_eq!(cmd("ms k 5 ME\r\n"), TextCmd::MsAdd);
        assert_eq!(cmd("ms k 5 MA\r\n"), TextCmd::MsAppend);
        assert_eq!(cmd("ms k 5 Mp\r\n"), TextCmd::MsPrepend);
        assert_eq!(cmd("ms k 5 MR\r\n"), TextCmd::MsReplace);
        invalid("ms k 5 MX\r\n");
        invalid("ms k\r\n");
        assert_eq!(cmd("md k q\r\n"), TextCmd::Md);
        assert_eq!(cmd("ma k\r\n"), TextCmd::MaIncr);
        assert_eq!(cmd("ma k MD D5\r\n"), TextCmd::MaDecr);
        assert_eq!(cmd("mn\r\n"), TextCmd::Mn);
        assert_eq!(cmd("me k\r\n"), TextCmd::Me);
        invalid("me k v\r\n");
        invalid("mg k 1\r\n");
        invalid("mg\r\n");
    }

    #[test]
    fn line_bounds_and_splits() {
        assert_eq!(parse(b"get a"), Parse::NeedMore);
        assert!(matches!(parse(b"\x80\x00"), Parse::Invalid(_)));
        assert!(matches!(parse(b"GET"), Parse::Invalid(_)));
        assert!(matches!(parse(b"abcdefghijklmnopq"), Parse::Invalid(_)));
        let long = [b"get ".as_slice(), &vec![b'a'; MAX_LINE]].concat();
        assert!(matches!(parse(&long), Parse::Invalid(_)));
        assert_eq!(parse(&long[..MAX_LINE - 1]), Parse::NeedMore);
        for s in [
            "set awing-coord 0 1200 16 noreply\r\n",
            "get awing-coord xwing-coord\r\n",
            "mn\r\n",
        ] {
            let full = parse(s.as_bytes());
            assert!(matches!(full, Parse::Complete(_)));
            for cut in 0..s.len() {
                assert_eq!(
                    parse(&s.as_bytes()[..cut]),
                    Parse::NeedMore,
                    "{s:?} @ {cut}"
                );
            }
            let mut more = s.as_bytes().to_vec();
            more.extend_from_slice(b"get x\r\n");
            assert_eq!(parse(&more), full);
        }
    }
}
