//! Pieces shared by the request and response head parsers: token classes,
//! header lines and the framing headers (Content-Length, Transfer-Encoding).

use nom::bytes::streaming::{tag, take_while1};
use nom::error::ErrorKind;
use nom::IResult;

use crate::l7::scan;

/// Header lines a head may carry; more is refused (the work per head stays
/// bounded). Servers bound heads by size instead (nginx: 8 KB lines, 32 KB
/// in all by default), which lets ~1,000 short fields through: so do we.
pub const MAX_HEADERS: usize = 1024;

pub type PResult<'a, O> = IResult<&'a [u8], O, (&'a [u8], ErrorKind)>;

/// Why a head could not be parsed (yet).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    NeedMore,
    Invalid(&'static str),
}

/// Map a nom outcome: `Incomplete` means the bytes so far are a valid prefix.
pub fn lift<'a, T>(r: PResult<'a, T>, what: &'static str) -> Result<(&'a [u8], T), Stop> {
    match r {
        Ok(v) => Ok(v),
        Err(nom::Err::Incomplete(_)) => Err(Stop::NeedMore),
        Err(_) => Err(Stop::Invalid(what)),
    }
}

/// RFC 9110 tchar, one table look-up per byte: names and methods are
/// scanned byte by byte on every request.
pub fn is_tchar(c: u8) -> bool {
    TCHAR[usize::from(c)]
}

const TCHAR: [bool; 256] = {
    let mut t = [false; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        t[c] = b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'!' | b'#'
                    | b'$'
                    | b'%'
                    | b'&'
                    | b'\''
                    | b'*'
                    | b'+'
                    | b'-'
                    | b'.'
                    | b'^'
                    | b'_'
                    | b'`'
                    | b'|'
                    | b'~'
            );
        c += 1;
    }
    t
};

/// Field value bytes: VCHAR, SP, HTAB, obs-text. Controls (incl. bare CR/LF) are not.
pub fn is_value_char(c: u8) -> bool {
    c == b'\t' || c == b' ' || (0x21..=0x7e).contains(&c) || c >= 0x80
}

pub fn token(i: &[u8]) -> PResult<'_, &[u8]> {
    take_while1(is_tchar)(i)
}

pub fn sp(i: &[u8]) -> PResult<'_, &[u8]> {
    tag(&b" "[..])(i)
}

/// A line end: CRLF only. A bare LF (or CR followed by anything else) is a
/// framing ambiguity other parsers resolve differently, so it is refused.
pub fn crlf(i: &[u8]) -> Result<&[u8], Stop> {
    match i {
        [] | [b'\r'] => Err(Stop::NeedMore),
        [b'\r', b'\n', rest @ ..] => Ok(rest),
        [b'\n', ..] => Err(Stop::Invalid("bare LF")),
        _ => Err(Stop::Invalid("bad character in line")),
    }
}

pub fn trim_ows(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

/// Parse header lines up to and including the empty line. Calls `on` with
/// each (name, trimmed value); returns the rest after the empty line.
pub fn header_lines<'a>(
    mut i: &'a [u8],
    mut on: impl FnMut(&'a [u8], &'a [u8]) -> Result<(), Stop>,
) -> Result<&'a [u8], Stop> {
    let mut n = 0usize;
    loop {
        match i {
            [] | [b'\r'] => return Err(Stop::NeedMore),
            [b'\r', b'\n', rest @ ..] => return Ok(rest),
            [b'\n', ..] => return Err(Stop::Invalid("bare LF")),
            [b' ' | b'\t', ..] => return Err(Stop::Invalid("obs-fold or leading whitespace")),
            _ => {}
        }
        n += 1;
        if n > MAX_HEADERS {
            return Err(Stop::Invalid("too many headers"));
        }
        // Plain scans rather than nom combinators: this loop is most of the
        // cost of a request head. The name runs to the first byte that
        // cannot be in a name or is the colon (found eight bytes at a
        // time), then each of its bytes is checked without an early exit:
        // the same answer as stopping at the first non-tchar, since a
        // name with one is refused wherever it stops.
        let (name, rest) = i.split_at(scan::header_name(i));
        if !name.iter().fold(true, |ok, &c| ok & is_tchar(c)) {
            return Err(Stop::Invalid("bad header name"));
        }
        match rest.first() {
            None => return Err(Stop::NeedMore),
            Some(b':') if !name.is_empty() => {}
            Some(_) => return Err(Stop::Invalid("bad header name")),
        }
        // A field value may carry every byte but NUL, CR and LF. RFC 9110
        // excludes the other controls too, but they cannot move a line
        // end (nginx serves them); CR and LF can, NUL ends a C string. The
        // framing headers check their own syntax (digits, tokens), and
        // Host refuses controls, so a control byte never changes what is
        // framed or routed.
        let rest = &rest[1..];
        let (value, rest) = rest.split_at(scan::field_value(rest));
        i = crlf(rest)?;
        on(name, trim_ows(value))?;
    }
}

/// Content-Length: digits, or a list of identical values ("5, 5").
pub fn content_length(v: &[u8], seen: &mut Option<u64>) -> Result<(), Stop> {
    for part in v.split(|&c| c == b',') {
        let part = trim_ows(part);
        if part.is_empty() || part.len() > 19 || !part.iter().all(u8::is_ascii_digit) {
            return Err(Stop::Invalid("bad Content-Length"));
        }
        let n = part.iter().fold(0u64, |a, &d| a * 10 + u64::from(d - b'0'));
        match *seen {
            Some(prev) if prev != n => return Err(Stop::Invalid("conflicting Content-Length")),
            _ => *seen = Some(n),
        }
    }
    Ok(())
}

/// Transfer-Encoding codings, accumulated over repeated headers.
#[derive(Debug, Default, Clone, Copy)]
pub struct TeState {
    pub present: bool,
    /// The last coding seen is `chunked`.
    pub chunked_last: bool,
    /// `chunked` appeared before another coding (applied twice or not last).
    pub chunked_misplaced: bool,
}

pub fn transfer_encoding(v: &[u8], te: &mut TeState) -> Result<(), Stop> {
    // An empty value would leave the framing up to the next parser's taste.
    if v.is_empty() {
        return Err(Stop::Invalid("empty Transfer-Encoding"));
    }
    for part in v.split(|&c| c == b',') {
        let part = trim_ows(part);
        if part.is_empty() {
            continue;
        }
        // Codings may carry parameters (`gzip;q=1`); only the name matters.
        let name = trim_ows(part.split(|&c| c == b';').next().unwrap_or(part));
        if name.is_empty() || !name.iter().all(|&c| is_tchar(c)) {
            return Err(Stop::Invalid("bad Transfer-Encoding"));
        }
        if te.chunked_last {
            te.chunked_misplaced = true;
        }
        te.present = true;
        te.chunked_last = name.eq_ignore_ascii_case(b"chunked");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_lines_refuse_bad_shapes() {
        fn ok(s: &[u8]) -> Result<&[u8], Stop> {
            header_lines(s, |_, _| Ok(()))
        }
        assert_eq!(ok(b"A: b\r\n\r\nrest"), Ok(&b"rest"[..]));
        assert_eq!(ok(b"A: b\r\n"), Err(Stop::NeedMore));
        assert_eq!(ok(b"A: b\r\n\r"), Err(Stop::NeedMore));
        assert_eq!(ok(b"A: b\n\r\n"), Err(Stop::Invalid("bare LF")));
        assert_eq!(ok(b"A: b\r\n\n"), Err(Stop::Invalid("bare LF")));
        assert!(matches!(ok(b"A: b\r\n c\r\n\r\n"), Err(Stop::Invalid(_))));
        assert!(matches!(ok(b"A : b\r\n\r\n"), Err(Stop::Invalid(_))));
        assert!(matches!(ok(b": b\r\n\r\n"), Err(Stop::Invalid(_))));
        assert!(matches!(ok(b"A: b\x00c\r\n\r\n"), Err(Stop::Invalid(_))));
        assert!(matches!(ok(b"A: b\rc\r\n\r\n"), Err(Stop::Invalid(_))));
        let many = "A: b\r\n".repeat(MAX_HEADERS + 1) + "\r\n";
        assert_eq!(ok(many.as_bytes()), Err(Stop::Invalid("too many headers")));
    }

    #[test]
    fn header_values_are_trimmed() {
        let mut got = Vec::new();
        let s = b"X-A:  v w \t\r\nB:\r\n\r\n";
        header_lines(s, |n, v| {
            got.push((n.to_vec(), v.to_vec()));
            Ok(())
        })
        .unwrap();
        assert_eq!(
            got,
            vec![
                (b"X-A".to_vec(), b"v w".to_vec()),
                (b"B".to_vec(), b"".to_vec())
            ]
        );
    }

    #[test]
    fn content_length_rules() {
        let mut s = None;
        assert!(content_length(b"5", &mut s).is_ok());
        assert!(content_length(b"5, 5", &mut s).is_ok());
        assert_eq!(s, Some(5));
        assert!(content_length(b"6", &mut s).is_err());
        for bad in [
            &b""[..],
            b"-1",
            b"1x",
            b"+1",
            b"99999999999999999999",
            b"1,",
        ] {
            assert!(content_length(bad, &mut None).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn transfer_encoding_rules() {
        let te = |vals: &[&[u8]]| {
            let mut t = TeState::default();
            for v in vals {
                transfer_encoding(v, &mut t)?;
            }
            Ok::<_, Stop>(t)
        };
        let t = te(&[b"gzip, chunked"]).unwrap();
        assert!(t.chunked_last && !t.chunked_misplaced);
        let t = te(&[b"chunked", b"gzip"]).unwrap();
        assert!(!t.chunked_last && t.chunked_misplaced);
        let t = te(&[b"chunked, chunked"]).unwrap();
        assert!(t.chunked_misplaced);
        assert!(te(&[b"Chunked"]).unwrap().chunked_last);
        assert!(te(&[b"chu nked"]).is_err());
        assert!(te(&[b""]).is_err());
    }
}
