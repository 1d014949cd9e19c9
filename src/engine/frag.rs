//! IP fragment reassembly, only to learn the L4 header of a fragmented
//! datagram: every fragment is held (a copy) until the datagram is complete,
//! then the engine decides the flow once and forwards the held fragments
//! unchanged, in arrival order, or drops them all. No fragment ever passes
//! before its datagram's L4 header was judged.
//!
//! Bounded by `max_frag_queues` datagrams, `MAX_FRAG_BYTES` held in total and
//! `frag_timeout_ns`. Overlapping fragments (a classic way to rewrite a header
//! after the check) drop the whole datagram; an exact duplicate is dropped
//! alone.

use std::collections::HashMap;
use std::net::IpAddr;

use crate::packet::view::FragmentMeta;
use crate::verdict::Side;

/// Total frame bytes held over all pending datagrams.
pub const MAX_FRAG_BYTES: usize = 4 << 20;
/// Largest reassembled IP payload (IPv4 total length, IPv6 payload length).
const MAX_DATAGRAM: usize = 65_535;
/// Fragments per datagram: 64 KiB in 8-byte pieces is absurd; real ones use a few.
const MAX_FRAGMENTS: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FragKey {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: u8,
    pub id: u32,
}

pub struct HeldFragment {
    pub side: Side,
    pub frame: Vec<u8>,
    start: usize,
    end: usize,
    /// Where the fragment's data lies in `frame`.
    data_off: usize,
}

struct Queue {
    frags: Vec<HeldFragment>,
    /// Length of the datagram's payload, known once the last fragment came.
    total: Option<usize>,
    bytes: usize,
    first_seen: u64,
}

/// What a fragment did to its datagram.
pub enum FragOutcome {
    /// Held; the datagram is not complete yet.
    Held,
    /// Complete: the reassembled IP payload and every held fragment, in
    /// arrival order (the one just passed in last).
    Complete {
        payload: Vec<u8>,
        frags: Vec<HeldFragment>,
    },
    /// Exact duplicate of a held fragment: drop it alone.
    Duplicate,
    /// Overlap or inconsistent lengths: the datagram is dropped; this many
    /// held fragments went with it (the new one not counted).
    Overlap { dropped: usize },
    /// Bad fragment on its own (length not a multiple of 8, too big).
    Malformed,
    /// No room for another datagram or more bytes.
    Full,
}

pub struct Reassembler {
    queues: HashMap<FragKey, Queue>,
    max_queues: usize,
    bytes: usize,
}

impl Reassembler {
    pub fn new(max_queues: usize) -> Reassembler {
        Reassembler {
            queues: HashMap::new(),
            max_queues,
            bytes: 0,
        }
    }

    pub fn pending(&self) -> usize {
        self.queues.len()
    }

    pub fn held_bytes(&self) -> usize {
        self.bytes
    }

    /// Add one fragment whose data is `frame[data]`.
    pub fn add(
        &mut self,
        key: FragKey,
        frag: FragmentMeta,
        side: Side,
        frame: &[u8],
        data: std::ops::Range<usize>,
        now: u64,
    ) -> FragOutcome {
        let (data_off, data_end) = (data.start, data.end);
        let start = frag.offset as usize;
        let len = data_end.saturating_sub(data_off);
        let end = start + len;
        if end > MAX_DATAGRAM || (frag.more && !len.is_multiple_of(8)) || (frag.more && len == 0) {
            return FragOutcome::Malformed;
        }
        if self.bytes + frame.len() > MAX_FRAG_BYTES {
            return FragOutcome::Full;
        }
        if !self.queues.contains_key(&key) && self.queues.len() >= self.max_queues {
            return FragOutcome::Full;
        }
        let q = self.queues.entry(key).or_insert_with(|| Queue {
            frags: Vec::new(),
            total: None,
            bytes: 0,
            first_seen: now,
        });
        if q.frags.iter().any(|f| f.start == start && f.end == end) {
            if q.frags.iter().any(|f| {
                f.start == start
                    && f.end == end
                    && f.frame.get(f.data_off..f.data_off + len) == frame.get(data_off..data_end)
            }) {
                return FragOutcome::Duplicate;
            }
            // Same range, other bytes: a rewrite attempt.
            return self.drop_queue(&key);
        }
        let overlaps = q.frags.iter().any(|f| start < f.end && f.start < end);
        let bad_total = match (q.total, frag.more) {
            (Some(t), true) => end > t,
            (Some(t), false) => end != t,
            (None, false) => q.frags.iter().any(|f| f.end > end),
            (None, true) => false,
        };
        if overlaps || bad_total || q.frags.len() >= MAX_FRAGMENTS {
            return self.drop_queue(&key);
        }
        if !frag.more {
            q.total = Some(end);
        }
        q.frags.push(HeldFragment {
            side,
            frame: frame.to_vec(),
            start,
            end,
            data_off,
        });
        q.bytes += frame.len();
        self.bytes += frame.len();

        let Some(total) = q.total else {
            return FragOutcome::Held;
        };
        let covered: usize = q.frags.iter().map(|f| f.end - f.start).sum();
        // Ranges never overlap, so full coverage is a plain sum.
        if covered != total {
            return FragOutcome::Held;
        }
        let Some(q) = self.queues.remove(&key) else {
            return FragOutcome::Held;
        };
        self.bytes -= q.bytes;
        let mut payload = vec![0u8; total];
        for f in &q.frags {
            let data = f.frame.get(f.data_off..f.data_off + (f.end - f.start));
            if let (Some(dst), Some(src)) = (payload.get_mut(f.start..f.end), data) {
                dst.copy_from_slice(src);
            }
        }
        FragOutcome::Complete {
            payload,
            frags: q.frags,
        }
    }

    fn drop_queue(&mut self, key: &FragKey) -> FragOutcome {
        let dropped = match self.queues.remove(key) {
            Some(q) => {
                self.bytes -= q.bytes;
                q.frags.len()
            }
            None => 0,
        };
        FragOutcome::Overlap { dropped }
    }

    /// Drop datagrams older than `timeout`; returns how many fragments went.
    pub fn expire(&mut self, now: u64, timeout: u64) -> usize {
        let mut dropped = 0;
        let mut freed = 0;
        self.queues.retain(|_, q| {
            let keep = now.saturating_sub(q.first_seen) <= timeout;
            if !keep {
                dropped += q.frags.len();
                freed += q.bytes;
            }
            keep
        });
        self.bytes -= freed;
        dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> FragKey {
        FragKey {
            src: "10.0.0.1".parse().unwrap(),
            dst: "10.0.0.2".parse().unwrap(),
            proto: 17,
            id: 7,
        }
    }

    fn add(r: &mut Reassembler, offset: u32, more: bool, data: &[u8], now: u64) -> FragOutcome {
        // A fake "frame": 4 header bytes, then data.
        let mut frame = vec![0xee; 4];
        frame.extend_from_slice(data);
        r.add(
            key(),
            FragmentMeta {
                id: 7,
                offset,
                more,
            },
            0,
            &frame,
            4..frame.len(),
            now,
        )
    }

    #[test]
    fn reassembles_out_of_order() {
        let mut r = Reassembler::new(4);
        assert!(matches!(
            add(&mut r, 8, false, b"world", 0),
            FragOutcome::Held
        ));
        assert!(r.held_bytes() > 0);
        match add(&mut r, 0, true, b"hello, w", 1) {
            FragOutcome::Complete { payload, frags } => {
                assert_eq!(payload, b"hello, wworld");
                assert_eq!(frags.len(), 2);
                assert_eq!(frags[0].frame[4..], *b"world");
            }
            _ => panic!("expected complete"),
        }
        assert_eq!(r.pending(), 0);
        assert_eq!(r.held_bytes(), 0);
    }

    #[test]
    fn overlap_drops_datagram_duplicate_drops_one() {
        let mut r = Reassembler::new(4);
        assert!(matches!(
            add(&mut r, 0, true, b"AAAAAAAA", 0),
            FragOutcome::Held
        ));
        assert!(matches!(
            add(&mut r, 0, true, b"AAAAAAAA", 0),
            FragOutcome::Duplicate
        ));
        assert!(matches!(
            add(&mut r, 0, true, b"BBBBBBBB", 0),
            FragOutcome::Overlap { dropped: 1 }
        ));
        assert_eq!(r.pending(), 0);
        assert!(matches!(
            add(&mut r, 0, true, b"AAAAAAAAAAAAAAAA", 0),
            FragOutcome::Held
        ));
        assert!(matches!(
            add(&mut r, 8, false, b"CC", 0),
            FragOutcome::Overlap { dropped: 1 }
        ));
        assert_eq!(r.held_bytes(), 0);
    }

    #[test]
    fn bounds_and_timeout() {
        let mut r = Reassembler::new(1);
        assert!(
            matches!(add(&mut r, 0, true, b"AAAAAAA", 0), FragOutcome::Malformed),
            "not a multiple of 8"
        );
        assert!(matches!(
            add(&mut r, 65528, true, b"AAAAAAAAAAAAAAAA", 0),
            FragOutcome::Malformed
        ));
        assert!(matches!(
            add(&mut r, 0, true, b"AAAAAAAA", 0),
            FragOutcome::Held
        ));
        let other = FragKey { id: 8, ..key() };
        let f = vec![0u8; 12];
        assert!(matches!(
            r.add(
                other,
                FragmentMeta {
                    id: 8,
                    offset: 0,
                    more: true
                },
                0,
                &f,
                4..12,
                0
            ),
            FragOutcome::Full
        ));
        assert_eq!(r.expire(5, 10), 0);
        assert_eq!(r.expire(11, 10), 1);
        assert_eq!(r.pending(), 0);
        assert_eq!(r.held_bytes(), 0);
    }
}
