//! Byte scans of request heads, eight bytes per step (SWAR: one u64 as
//! eight lanes). An HTTP head is ~100 bytes of field values and targets,
//! a memcached command a line to its LF, each read once; byte by byte,
//! with a table look-up and a branch per byte, those loops were most of a
//! request's parse.
//!
//! The lane tests rest on one identity: for a word `x`,
//! `(x - 0x01..01 * n) & !x & 0x80..80` sets the high bit of every lane
//! whose byte is below `n` (n ≤ 0x80), and may also set it in lanes above
//! such a lane (the subtraction's borrow runs upward), never below the
//! lowest one. So the lowest flagged lane, read little-endian, is exact:
//! that is all a "first byte that ..." scan needs, and "any byte that ..."
//! stays exact when a flag above the end of the scanned part is cut away,
//! since a false flag always has a true one below it.

const LO: u64 = 0x0101_0101_0101_0101;
const HI: u64 = 0x8080_8080_8080_8080;

#[inline(always)]
const fn splat(b: u8) -> u64 {
    LO * b as u64
}

/// High bit set in lanes whose byte is below `n` (exact in the lowest).
#[inline(always)]
const fn below(x: u64, n: u8) -> u64 {
    x.wrapping_sub(splat(n)) & !x & HI
}

/// High bit set in lanes whose byte is `b` (exact in the lowest).
#[inline(always)]
const fn equal(x: u64, b: u8) -> u64 {
    below(x ^ splat(b), 1)
}

/// Every bit of the lanes below the lowest flagged lane of `stop` (all
/// when none is); `stop` flags lanes by their high bit only.
#[inline(always)]
fn before(stop: u64) -> u64 {
    if stop == 0 {
        !0
    } else {
        ((stop & stop.wrapping_neg()) >> 7).wrapping_sub(1)
    }
}

#[inline(always)]
fn word(c: &[u8]) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(c);
    u64::from_le_bytes(w)
}

/// The position of the first byte of `s` whose lane `stop` flags, or
/// `s.len()`. The tail is read padded with `pad`, which `stop` must flag.
/// `seen` collects `mark`'s flags of the bytes before that position.
#[inline(always)]
fn scan(
    s: &[u8],
    pad: u8,
    stop: impl Fn(u64) -> u64,
    mark: impl Fn(u64) -> u64,
    seen: &mut u64,
) -> usize {
    let mut chunks = s.chunks_exact(8);
    let mut at = 0;
    for c in &mut chunks {
        let x = word(c);
        let m = stop(x);
        if m != 0 {
            *seen |= mark(x) & before(m);
            return at + (m.trailing_zeros() / 8) as usize;
        }
        *seen |= mark(x);
        at += 8;
    }
    let r = chunks.remainder();
    if r.is_empty() {
        return at;
    }
    let x = match s.len().checked_sub(8) {
        // The last eight bytes as one load, moved down to the remainder,
        // the lanes above it padded. Bytes copied into a buffer and read
        // back as a word wait for each store to retire (a store-forwarding
        // stall that cost more than the scan: a memcached line's LF is
        // usually in its tail).
        Some(last) => {
            let k = 8 * r.len() as u32;
            (word(&s[last..]) >> (64 - k)) | (splat(pad) << k)
        }
        None => {
            let mut w = [pad; 8];
            w[..r.len()].copy_from_slice(r);
            u64::from_le_bytes(w)
        }
    };
    let m = stop(x);
    *seen |= mark(x) & before(m);
    at + ((m.trailing_zeros() / 8) as usize).min(r.len())
}

/// The position of the first NUL or LF in `s`, or `s.len()`.
pub fn nul_or_lf(s: &[u8]) -> usize {
    scan(s, 0, |x| below(x, 1) | equal(x, b'\n'), |_| 0, &mut 0)
}

/// Length of the field value at the start of `s`: up to its first NUL, CR
/// or LF (the bytes `http::head` refuses in a field value).
pub fn field_value(s: &[u8]) -> usize {
    let stop = |x| below(x, 1) | equal(x, b'\r') | equal(x, b'\n');
    scan(s, 0, stop, |_| 0, &mut 0)
}

/// Where a header name at the start of `s` must end: its first colon,
/// control, space, DEL or non-ASCII byte, or `s.len()`. Every other byte
/// a name may not carry is found by the caller's check of the name.
pub fn header_name(s: &[u8]) -> usize {
    let stop = |x: u64| below(x, 0x21) | (x & HI) | equal(x, 0x7f) | equal(x, b':');
    scan(s, 0, stop, |_| 0, &mut 0)
}

/// Whether a Host value has a byte that no host name has: a control or
/// space, DEL, or `@` (userinfo).
pub fn bad_host(s: &[u8]) -> bool {
    let stop = |x| below(x, 0x21) | equal(x, 0x7f) | equal(x, b'@');
    // `a` is none of those: the tail's padding never stops the scan.
    scan(s, b'a', stop, |_| 0, &mut 0) < s.len()
}

/// A request-target's extent and the bytes that call for a closer look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    /// Bytes of visible ASCII (0x21..=0x7e) at the start.
    pub len: usize,
    /// A `#` among them.
    pub fragment: bool,
    /// A `.` or `%` among them: dot-segments are possible.
    pub dots: bool,
}

pub fn target(s: &[u8]) -> Target {
    let stop = |x: u64| below(x, 0x21) | (x & HI) | equal(x, 0x7f);
    // Two marks in one word: `#` in the high bits, `.`/`%` moved to bit 6.
    let mark = |x| equal(x, b'#') | (equal(x, b'.') | equal(x, b'%')) >> 1;
    let mut seen = 0;
    let len = scan(s, 0, stop, mark, &mut seen);
    Target {
        len,
        fragment: seen & HI != 0,
        dots: seen & (HI >> 1) != 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slow_target(s: &[u8]) -> Target {
        let len = s
            .iter()
            .position(|c| !(0x21..=0x7e).contains(c))
            .unwrap_or(s.len());
        let t = &s[..len];
        Target {
            len,
            fragment: t.contains(&b'#'),
            dots: t.iter().any(|&c| c == b'.' || c == b'%'),
        }
    }

    /// Every lane position, every byte value, in words before and after.
    #[test]
    fn scans_agree_with_byte_by_byte() {
        for len in 0..20 {
            for at in 0..len {
                for b in 0..=255u8 {
                    for fill in [b'a', b'.', b'#', 0x01, 0xff] {
                        let mut s = vec![fill; len];
                        s[at] = b;
                        let slow_field = s
                            .iter()
                            .position(|&c| matches!(c, 0 | b'\r' | b'\n'))
                            .unwrap_or(s.len());
                        assert_eq!(field_value(&s), slow_field, "{s:?}");
                        let slow_host = s.iter().any(|&c| c <= b' ' || c == 0x7f || c == b'@');
                        assert_eq!(bad_host(&s), slow_host, "{s:?}");
                        assert_eq!(target(&s), slow_target(&s), "{s:?}");
                        let slow_line = s.iter().position(|&c| c == 0 || c == b'\n');
                        assert_eq!(nul_or_lf(&s), slow_line.unwrap_or(s.len()), "{s:?}");
                        let slow_name = s.iter().position(|&c| c <= b' ' || c >= 0x7f || c == b':');
                        assert_eq!(header_name(&s), slow_name.unwrap_or(s.len()), "{s:?}");
                    }
                }
            }
        }
        assert_eq!(field_value(b""), 0);
        assert!(!bad_host(b""));
        assert_eq!(target(b"").len, 0);
    }
}
