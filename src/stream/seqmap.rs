//! Sequence-number maps between the two sides' views of one byte stream.
//! Client→server bytes the enforcer removed (denied requests) and
//! server→client bytes it inserted (denials) shift every later sequence
//! number; each shift starts at a boundary, and both sides' segments are
//! rewritten through these maps from then on.

/// `a` is at or after `b` in sequence space (RFC 1982 style).
#[inline]
pub fn seq_ge(a: u32, b: u32) -> bool {
    a.wrapping_sub(b) as i32 >= 0
}

#[inline]
pub fn seq_gt(a: u32, b: u32) -> bool {
    a.wrapping_sub(b) as i32 > 0
}

#[derive(Debug, Clone, Copy)]
struct Shift {
    /// First sequence number (source side) the new delta applies to.
    at: u32,
    /// delta before and after `at`: target = source + delta.
    before: u32,
    after: u32,
    /// Bytes `[at - removed, at)` of the source were dropped.
    removed: u32,
}

/// Maps one direction's sequence numbers from the sender's space to the
/// receiver's. Bounded: shifts older than what both sides acknowledged are
/// folded away.
#[derive(Debug, Clone, Default)]
pub struct SeqMap {
    shifts: Vec<Shift>,
    base: u32,
}

/// Keep this many shifts at most; beyond it the oldest go (a retransmission
/// from that far back is answered from the newest mapping).
const MAX_SHIFTS: usize = 256;

impl SeqMap {
    pub fn is_identity(&self) -> bool {
        self.shifts.is_empty() && self.base == 0
    }

    fn delta_at(&self, s: u32) -> u32 {
        let mut d = self.base;
        for sh in &self.shifts {
            if seq_ge(s, sh.at) {
                d = sh.after;
            } else {
                break;
            }
        }
        d
    }

    pub fn delta(&self) -> u32 {
        self.shifts.last().map_or(self.base, |s| s.after)
    }

    /// Source → target.
    pub fn map(&self, s: u32) -> u32 {
        s.wrapping_add(self.delta_at(s))
    }

    /// Target → source, for acknowledgments travelling back. A number that
    /// falls inside inserted bytes maps to where they were inserted; one at
    /// the point where bytes were removed maps past them (they count as
    /// consumed).
    pub fn unmap(&self, t: u32) -> u32 {
        let mut r = t.wrapping_sub(self.base);
        for sh in &self.shifts {
            let start = sh.at.wrapping_add(sh.before);
            let end = sh.at.wrapping_add(sh.after);
            if seq_ge(t, start) || seq_ge(t, end) {
                if seq_gt(end, start) && seq_gt(end, t) && seq_ge(t, start) {
                    r = sh.at;
                } else {
                    r = t.wrapping_sub(sh.after);
                }
            } else {
                break;
            }
        }
        r
    }

    /// Bytes `[from, to)` of the source are dropped: sources from `to` on map
    /// `to - from` lower.
    pub fn remove(&mut self, from: u32, to: u32) {
        let n = to.wrapping_sub(from);
        if n == 0 {
            return;
        }
        let before = self.delta();
        self.push(Shift {
            at: to,
            before,
            after: before.wrapping_sub(n),
            removed: n,
        });
    }

    /// `n` bytes are inserted before source byte `at`.
    pub fn insert(&mut self, at: u32, n: u32) {
        if n == 0 {
            return;
        }
        let before = self.delta();
        self.push(Shift {
            at,
            before,
            after: before.wrapping_add(n),
            removed: 0,
        });
    }

    fn push(&mut self, s: Shift) {
        if self.shifts.len() >= MAX_SHIFTS {
            self.base = self.shifts.remove(0).after;
        }
        self.shifts.push(s);
    }

    /// The parts of source bytes `[seq, seq + len)` that still exist for the
    /// receiver, each mapping linearly (`map` of its first byte places it),
    /// as (offset, length). A retransmission that spans a shift must be cut
    /// here: mapped whole, its later bytes would land on inserted bytes or
    /// resurrect removed ones.
    pub fn pieces(&self, seq: u32, len: usize) -> Vec<(usize, usize)> {
        let mut out = vec![(0usize, len)];
        if len == 0 {
            return out;
        }
        // Offset of a sequence number relative to `seq`, clamped to the segment.
        let off = |s: u32| -> usize { (s.wrapping_sub(seq) as i32).clamp(0, len as i32) as usize };
        for sh in &self.shifts {
            let at = off(sh.at);
            let gone = off(sh.at.wrapping_sub(sh.removed));
            let mut next = Vec::with_capacity(out.len() + 1);
            for (o, l) in out {
                let e = o + l;
                // Keep what lies outside [gone, at), cut at `at`.
                for (a, b) in [(o, e.min(gone)), (o.max(at), e)] {
                    if a < b {
                        next.push((a, b - a));
                    }
                }
            }
            out = next;
        }
        out
    }

    /// Fold shifts that no segment at or after `s` (source) can need.
    pub fn forget_before(&mut self, s: u32) {
        while self.shifts.len() > 1 && seq_ge(s, self.shifts[1].at) {
            self.base = self.shifts.remove(0).after;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retransmissions_are_cut_at_shifts_and_skip_removed_bytes() {
        let mut m = SeqMap::default();
        assert_eq!(m.pieces(100, 50), vec![(0, 50)]);
        m.remove(110, 120);
        m.insert(130, 5);
        assert_eq!(m.pieces(100, 50), vec![(0, 10), (20, 10), (30, 20)]);
        // Each piece maps linearly and the pieces stay contiguous for the receiver.
        assert_eq!(m.map(100), 100);
        assert_eq!(m.map(120), 110);
        assert_eq!(m.map(130), 125);
        // Segments that touch no shift are whole.
        assert_eq!(m.pieces(140, 10), vec![(0, 10)]);
        assert_eq!(m.pieces(90, 10), vec![(0, 10)]);
        // Entirely removed bytes leave nothing.
        assert_eq!(m.pieces(112, 5), vec![]);
        // Across wraparound.
        let mut w = SeqMap::default();
        w.insert(3, 7);
        assert_eq!(w.pieces(u32::MAX - 1, 10), vec![(0, 5), (5, 5)]);
    }

    #[test]
    fn removal_shifts_later_bytes_and_acks_skip_the_hole() {
        let mut m = SeqMap::default();
        assert!(m.is_identity());
        m.remove(110, 130); // client bytes 110..130 denied
        assert_eq!(m.map(100), 100);
        assert_eq!(m.map(130), 110);
        assert_eq!(m.map(140), 120);
        // server acks 110 (everything before the hole): the client sees 130
        assert_eq!(m.unmap(110), 130);
        assert_eq!(m.unmap(105), 105);
        assert_eq!(m.unmap(120), 140);
    }

    #[test]
    fn insertion_shifts_later_bytes_and_acks_inside_clamp() {
        let mut m = SeqMap::default();
        m.insert(500, 15); // 15 injected bytes before server byte 500
        assert_eq!(m.map(499), 499);
        assert_eq!(m.map(500), 515);
        assert_eq!(m.unmap(500), 500);
        assert_eq!(m.unmap(507), 500, "inside the injected bytes");
        assert_eq!(m.unmap(515), 500);
        assert_eq!(m.unmap(520), 505);
    }

    #[test]
    fn several_shifts_and_wraparound() {
        let mut m = SeqMap::default();
        let b = u32::MAX - 10;
        m.insert(b, 5);
        m.insert(b.wrapping_add(20), 7);
        assert_eq!(m.map(b.wrapping_add(1)), b.wrapping_add(6));
        assert_eq!(m.map(b.wrapping_add(21)), b.wrapping_add(33));
        assert_eq!(m.unmap(b.wrapping_add(33)), b.wrapping_add(21));
        assert_eq!(
            m.unmap(b.wrapping_add(27)),
            b.wrapping_add(20),
            "inside the second insertion"
        );
        m.forget_before(b.wrapping_add(25));
        assert_eq!(m.map(b.wrapping_add(21)), b.wrapping_add(33));
    }
}
