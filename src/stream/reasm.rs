//! Reassembly of one direction's byte stream from TCP segments: in-order
//! bytes come out at once; segments beyond a gap wait (bounded) until the
//! gap fills; duplicates and overlaps are trimmed to what is new.

use super::seqmap::{seq_ge, seq_gt};

#[derive(Debug, PartialEq, Eq)]
pub enum Insert {
    /// New contiguous bytes, starting where the stream stood before.
    New(Vec<u8>),
    /// Everything was seen already.
    Duplicate,
    /// Beyond a gap; kept for later.
    Stored,
    /// Beyond a gap, and no room to keep it.
    Overflow,
}

#[derive(Debug, Default)]
pub struct Reasm {
    next: u32,
    waiting: Vec<(u32, Vec<u8>)>,
    waiting_bytes: usize,
}

impl Reasm {
    pub fn new(next: u32) -> Reasm {
        Reasm {
            next,
            waiting: Vec::new(),
            waiting_bytes: 0,
        }
    }

    /// Sequence number of the next byte expected.
    pub fn next(&self) -> u32 {
        self.next
    }

    pub fn waiting_bytes(&self) -> usize {
        self.waiting_bytes
    }

    /// Move the stream on by bytes that do not arrive as data (SYN, FIN).
    pub fn skip(&mut self, n: u32) {
        self.next = self.next.wrapping_add(n);
    }

    pub fn insert(&mut self, seq: u32, data: &[u8], cap: usize) -> Insert {
        let end = seq.wrapping_add(data.len() as u32);
        if data.is_empty() || !seq_gt(end, self.next) {
            return Insert::Duplicate;
        }
        if seq_gt(seq, self.next) {
            if self.waiting_bytes + data.len() > cap || self.waiting.len() >= 256 {
                return Insert::Overflow;
            }
            self.waiting_bytes += data.len();
            self.waiting.push((seq, data.to_vec()));
            return Insert::Stored;
        }
        let skip = self.next.wrapping_sub(seq) as usize;
        let mut out = data[skip..].to_vec();
        self.next = end;
        // Pull whatever the new bytes made contiguous.
        loop {
            let Some(i) = self.waiting.iter().position(|(s, _)| seq_ge(self.next, *s)) else {
                break;
            };
            let (s, d) = self.waiting.swap_remove(i);
            self.waiting_bytes -= d.len();
            let e = s.wrapping_add(d.len() as u32);
            if seq_gt(e, self.next) {
                let skip = self.next.wrapping_sub(s) as usize;
                out.extend_from_slice(&d[skip..]);
                self.next = e;
            }
        }
        Insert::New(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_duplicate_overlap_and_gaps() {
        let mut r = Reasm::new(100);
        assert_eq!(r.insert(100, b"abc", 64), Insert::New(b"abc".to_vec()));
        assert_eq!(r.insert(100, b"abc", 64), Insert::Duplicate);
        assert_eq!(r.insert(101, b"bcde", 64), Insert::New(b"de".to_vec()));
        assert_eq!(r.insert(110, b"klm", 64), Insert::Stored);
        assert_eq!(r.insert(107, b"hij", 64), Insert::Stored);
        assert_eq!(r.waiting_bytes(), 6);
        assert_eq!(
            r.insert(105, b"fghi", 64),
            Insert::New(b"fghijklm".to_vec())
        );
        assert_eq!(r.next(), 113);
        assert_eq!(r.waiting_bytes(), 0);
        assert_eq!(r.insert(200, &[0; 65], 64), Insert::Overflow);
        assert_eq!(r.insert(113, b"", 64), Insert::Duplicate);
    }

    #[test]
    fn wraps_around() {
        let mut r = Reasm::new(u32::MAX - 1);
        assert_eq!(r.insert(1, b"yz", 64), Insert::Stored);
        assert_eq!(
            r.insert(u32::MAX - 1, b"wx", 64),
            Insert::New(b"wx".to_vec())
        );
        assert_eq!(r.insert(0, b"-", 64), Insert::New(b"-yz".to_vec()));
        assert_eq!(r.next(), 3);
    }
}
