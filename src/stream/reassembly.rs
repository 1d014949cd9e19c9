//! Out-of-order client bytes waiting for the hole before them to fill, kept
//! the way smoltcp's own TCP socket receives: a fixed ring (allocated when
//! the first hole appears, freed when the last one fills) and
//! `storage::Assembler` for which ranges of it hold data.
//!
//! Memory is the ring's capacity, whatever the segments look like: a flood
//! of one-byte segments costs the same as one full window (one allocation
//! per segment, as before, cost ~90 bytes of bookkeeping per byte). The
//! assembler holds at most `ASSEMBLER_MAX_SEGMENT_COUNT` (4) separate ranges;
//! a segment that would need a fifth is refused, like one beyond the ring
//! (the client retransmits it).

use smoltcp::storage::{Assembler, RingBuffer};

/// Offsets are relative to the stream's next expected byte (`next`): the
/// ring's unallocated space starts there, and is always empty of allocated
/// data between calls (contiguous bytes are handed out at once).
#[derive(Debug)]
pub struct Ooo {
    ring: Option<RingBuffer<'static, u8>>,
    asm: Assembler,
}

impl Default for Ooo {
    fn default() -> Self {
        Ooo {
            ring: None,
            asm: Assembler::new(),
        }
    }
}

/// Why an out-of-order segment was not kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// It ends beyond the ring.
    Window,
    /// It would open more holes than the assembler tracks.
    Holes,
}

impl Ooo {
    pub fn clear(&mut self) {
        self.ring = None;
        self.asm.clear();
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.asm.is_empty()
    }

    /// Bytes of memory held (the ring's capacity while allocated).
    pub fn memory(&self) -> usize {
        self.ring.as_ref().map_or(0, RingBuffer::capacity)
    }

    /// Keep `data`, which starts `off` (> 0) bytes past the next expected
    /// byte. The ring gets `cap` bytes when it is allocated now.
    pub fn insert(&mut self, off: usize, data: &[u8], cap: usize) -> Result<(), Refused> {
        let cap = self.ring.as_ref().map_or(cap, RingBuffer::capacity);
        if off.saturating_add(data.len()) > cap {
            return Err(Refused::Window);
        }
        let mut probe = self.asm.clone();
        if probe.add(off, data.len()).is_err() {
            return Err(Refused::Holes);
        }
        let ring = self
            .ring
            .get_or_insert_with(|| RingBuffer::new(vec![0u8; cap]));
        // A later copy of a range overwrites the earlier one: either is fine,
        // since these bytes reach the server only as judged from here.
        let n = ring.write_unallocated(off, data);
        debug_assert_eq!(n, data.len());
        self.asm = probe;
        Ok(())
    }

    /// In-order bytes `data` arrived at the next expected byte: append them
    /// and every kept byte now contiguous with them to `into`; returns how
    /// many bytes were appended (the stream's next offset moves by that).
    pub fn advance(&mut self, data: &[u8], into: &mut Vec<u8>) -> usize {
        let Some(ring) = self.ring.as_mut() else {
            into.extend_from_slice(data);
            return data.len();
        };
        let kept_end = self.asm.iter_data().map(|(_, e)| e).max().unwrap_or(0);
        if data.len() >= kept_end {
            // Covers everything kept (the client resent the range as one).
            into.extend_from_slice(data);
            self.clear();
            return data.len();
        }
        let n = ring.write_unallocated(0, data);
        debug_assert_eq!(n, data.len());
        let count = match self.asm.add_then_remove_front(0, data.len()) {
            Ok(c) => c,
            // Cannot happen at offset 0 (see smoltcp); keep the stream going.
            Err(_) => {
                into.extend_from_slice(data);
                self.clear();
                return data.len();
            }
        };
        ring.enqueue_unallocated(count);
        let start = into.len();
        into.resize(start + count, 0);
        let got = ring.dequeue_slice(&mut into[start..]);
        debug_assert_eq!(got, count);
        if self.asm.is_empty() {
            self.clear();
        }
        count
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fills_gaps_with_overlaps() {
        let mut o = Ooo::default();
        // Stream at offset 0; "defgh" at 3.., "k" at 10.
        o.insert(5, b"fgh", 64).unwrap();
        o.insert(3, b"defg", 64).unwrap();
        o.insert(10, b"k", 64).unwrap();
        assert_eq!(o.memory(), 64);
        let mut v = Vec::new();
        assert_eq!(o.advance(b"abc", &mut v), 8);
        assert_eq!(v, b"abcdefgh");
        // Now at 8: "k" is 2 ahead.
        o.insert(1, b"j", 64).unwrap();
        v.clear();
        assert_eq!(o.advance(b"i", &mut v), 3);
        assert_eq!(v, b"ijk");
        assert!(o.is_empty());
        assert_eq!(o.memory(), 0, "the ring is freed with the last hole");
    }

    #[test]
    fn memory_is_the_ring_whatever_the_segments() {
        let mut o = Ooo::default();
        // One-byte segments every other byte: 4 ranges fit, the fifth is
        // refused; memory stays one ring.
        for k in 0..4 {
            o.insert(2 * k + 1, b"x", 1024).unwrap();
        }
        assert_eq!(o.insert(9, b"x", 1024), Err(Refused::Holes));
        assert_eq!(o.insert(1020, b"12345", 1024), Err(Refused::Window));
        assert_eq!(o.memory(), 1024);
        // Filling the first hole merges with the next range only.
        let mut v = Vec::new();
        assert_eq!(o.advance(b"a", &mut v), 2);
        assert_eq!(v, b"ax");
    }

    #[test]
    fn in_order_data_covering_all_kept_bytes_replaces_them() {
        let mut o = Ooo::default();
        o.insert(2, b"cd", 64).unwrap();
        let mut v = Vec::new();
        assert_eq!(o.advance(b"abCDe", &mut v), 5);
        assert_eq!(v, b"abCDe");
        assert!(o.is_empty());
        assert_eq!(o.memory(), 0);
    }

    #[test]
    fn wraps_around_the_ring() {
        let mut o = Ooo::default();
        let mut v = Vec::new();
        for round in 0..20u8 {
            o.insert(3, &[round; 5], 16).unwrap();
            // Keep the ring allocated across rounds: a second hole further on.
            o.insert(12, &[0xee], 16).unwrap();
            v.clear();
            assert_eq!(o.advance(&[round; 3], &mut v), 8, "round {round}");
            assert_eq!(v, vec![round; 8]);
            // Bring the remaining range to the front again.
            v.clear();
            assert_eq!(o.advance(&[1; 4], &mut v), 5);
            assert_eq!(o.memory(), 0);
        }
    }
}
