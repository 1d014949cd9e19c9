//! Out-of-order client segments waiting for the gap before them to fill.

use std::collections::BTreeMap;

#[derive(Debug, Default)]
pub struct Ooo {
    segs: BTreeMap<u64, Vec<u8>>,
    pub bytes: usize,
}

impl Ooo {
    pub fn clear(&mut self) {
        self.segs.clear();
        self.bytes = 0;
    }

    /// Keep `data` at offset `at` (a later copy of the same start replaces a
    /// shorter one).
    pub fn insert(&mut self, at: u64, data: &[u8]) {
        match self.segs.get(&at) {
            Some(old) if old.len() >= data.len() => {}
            old => {
                let was = old.map_or(0, Vec::len);
                self.bytes = self.bytes - was + data.len();
                self.segs.insert(at, data.to_vec());
            }
        }
    }

    /// Bytes contiguous from `next` on, removing what is no longer ahead.
    pub fn take(&mut self, mut next: u64, into: &mut Vec<u8>) -> u64 {
        while let Some((&at, _)) = self.segs.first_key_value() {
            if at > next {
                break;
            }
            let Some(d) = self.segs.remove(&at) else {
                break;
            };
            self.bytes -= d.len();
            let end = at + d.len() as u64;
            if end > next {
                into.extend_from_slice(&d[(next - at) as usize..]);
                next = end;
            }
        }
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fills_gaps_with_overlaps() {
        let mut o = Ooo::default();
        o.insert(5, b"fgh");
        o.insert(3, b"defg");
        o.insert(10, b"k");
        let mut v = Vec::new();
        assert_eq!(o.take(0, &mut v), 0);
        assert!(v.is_empty());
        assert_eq!(o.take(3, &mut v), 8);
        assert_eq!(v, b"defgh");
        assert_eq!(o.bytes, 1);
        o.insert(7, b"hij");
        v.clear();
        assert_eq!(o.take(8, &mut v), 11);
        assert_eq!(v, b"ijk");
        assert_eq!(o.bytes, 0);
    }
}
