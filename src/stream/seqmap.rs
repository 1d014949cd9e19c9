//! Stream positions and the maps between the two sides' views of them.
//!
//! Internally every byte of a direction has an absolute offset (u64, 0 = the
//! byte after the SYN), so nothing below wraps; `Abs` converts at the edges.
//! `Removed` maps the client's stream to what the server saw (denied bytes
//! removed); `Inserted` maps the server's stream to what the client saw
//! (denials injected).

use std::collections::VecDeque;

/// Converts 32-bit sequence numbers to absolute offsets near a known one.
#[derive(Debug, Clone, Copy)]
pub struct Abs {
    /// Sequence number of offset 0.
    pub base: u32,
}

impl Abs {
    pub fn seq(self, abs: u64) -> u32 {
        self.base.wrapping_add(abs as u32)
    }

    /// Offset of `seq`, taking the one closest to `near` (may be negative for
    /// bytes before the stream start).
    pub fn abs(self, seq: u32, near: u64) -> i64 {
        let d = seq.wrapping_sub(self.seq(near)) as i32;
        near as i64 + i64::from(d)
    }
}

/// Most ranges/blocks kept before fully acknowledged ones are folded away.
const KEEP: usize = 64;

/// Client bytes removed from the server's stream: (client offset, length).
#[derive(Debug, Default)]
pub struct Removed {
    ranges: VecDeque<(u64, u64)>,
    /// Bytes removed in ranges folded away, all below `floor`.
    base: u64,
    /// Client offset below which nothing can be mapped any more.
    pub floor: u64,
    pub total: u64,
}

impl Removed {
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    pub fn add(&mut self, start: u64, len: u64) {
        if len == 0 {
            return;
        }
        self.total += len;
        if let Some(last) = self.ranges.back_mut() {
            if last.0 + last.1 == start {
                last.1 += len;
                return;
            }
        }
        self.ranges.push_back((start, len));
    }

    /// The latest removed range ends at client offset `c`.
    pub fn ends_at(&self, c: u64) -> bool {
        self.ranges.back().is_some_and(|&(s, l)| s + l == c)
    }

    /// Server offset of client byte `c` (a removed byte maps to where its
    /// range was cut out).
    pub fn to_server(&self, c: u64) -> u64 {
        let mut cum = self.base;
        for &(s, l) in &self.ranges {
            if c >= s + l {
                cum += l;
            } else if c > s {
                return s - cum;
            } else {
                break;
            }
        }
        c.saturating_sub(cum)
    }

    /// Client offset acknowledged by a server ack of server offset `s`:
    /// removed bytes right at the ack point count as acknowledged.
    pub fn to_client_ack(&self, s: u64) -> u64 {
        let mut cum = self.base;
        for &(start, l) in &self.ranges {
            if start - cum <= s {
                cum += l;
            } else {
                break;
            }
        }
        s + cum
    }

    /// Pieces of client range `[a, b)` that were not removed.
    pub fn kept(&self, a: u64, b: u64) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        let mut cur = a.max(self.floor);
        for &(s, l) in &self.ranges {
            if cur >= b {
                break;
            }
            if s + l <= cur {
                continue;
            }
            if s > cur {
                out.push((cur, s.min(b)));
            }
            cur = cur.max(s + l);
        }
        if cur < b {
            out.push((cur, b));
        }
        out
    }

    /// Fold ranges the client already had acknowledged (`acked` client offset).
    pub fn prune(&mut self, acked: u64) {
        while self.ranges.len() > KEEP {
            match self.ranges.front() {
                Some(&(s, l)) if s + l <= acked => {
                    self.base += l;
                    self.floor = s + l;
                    self.ranges.pop_front();
                }
                _ => break,
            }
        }
    }
}

/// Bytes inserted into the client's view of the server stream:
/// (server offset they precede, length).
#[derive(Debug, Default)]
pub struct Inserted {
    blocks: VecDeque<(u64, u64)>,
    base: u64,
    /// Server offset below which nothing can be mapped any more.
    pub floor: u64,
    pub total: u64,
}

impl Inserted {
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// Client-view offset where a block inserted now at `pos` starts.
    pub fn add(&mut self, pos: u64, len: u64) -> u64 {
        let start = self.to_view(pos);
        self.total += len;
        match self.blocks.back_mut() {
            Some(last) if last.0 == pos => last.1 += len,
            _ => self.blocks.push_back((pos, len)),
        }
        start
    }

    /// Client-view offset of server byte `s` (after blocks inserted at `s`).
    pub fn to_view(&self, s: u64) -> u64 {
        let mut cum = self.base;
        for &(p, l) in &self.blocks {
            if p <= s {
                cum += l;
            } else {
                break;
            }
        }
        s + cum
    }

    /// Server offset acknowledged by a client ack of view offset `v`: an ack
    /// inside or at the end of a block acknowledges server bytes up to it.
    pub fn to_server_ack(&self, v: u64) -> u64 {
        let mut cum = self.base;
        for &(p, l) in &self.blocks {
            let start = p + cum;
            if v >= start + l {
                cum += l;
            } else if v > start {
                return p;
            } else {
                break;
            }
        }
        v.saturating_sub(cum)
    }

    /// Positions of blocks strictly inside server range `(a, b)`.
    pub fn cuts(&self, a: u64, b: u64) -> Vec<u64> {
        let mut v: Vec<u64> = self
            .blocks
            .iter()
            .map(|&(p, _)| p)
            .filter(|&p| p > a && p < b)
            .collect();
        v.dedup();
        v
    }

    /// Fold blocks the client acknowledged (view offset `acked`).
    pub fn prune(&mut self, acked: u64) {
        while self.blocks.len() > KEEP {
            let Some(&(p, l)) = self.blocks.front() else {
                break;
            };
            if p + self.base + l > acked {
                break;
            }
            self.base += l;
            self.floor = p;
            self.blocks.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn abs_wraps() {
        let a = Abs { base: u32::MAX - 1 };
        assert_eq!(a.seq(3), 1);
        assert_eq!(a.abs(1, 0), 3);
        assert_eq!(a.abs(u32::MAX - 3, 0), -2);
        assert_eq!(a.abs(a.seq(5_000_000_000), 4_999_999_000), 5_000_000_000);
    }

    #[test]
    fn removed_maps_both_ways() {
        let mut r = Removed::default();
        r.add(10, 5); // client 10..15 removed
        r.add(20, 3); // client 20..23 removed
        assert_eq!(r.to_server(5), 5);
        assert_eq!(r.to_server(12), 10);
        assert_eq!(r.to_server(15), 10);
        assert_eq!(r.to_server(23), 15);
        assert_eq!(r.to_client_ack(9), 9);
        assert_eq!(r.to_client_ack(10), 15);
        assert_eq!(r.to_client_ack(14), 19);
        assert_eq!(r.to_client_ack(15), 23);
        assert_eq!(r.kept(0, 30), vec![(0, 10), (15, 20), (23, 30)]);
        assert_eq!(r.kept(11, 14), vec![]);
        assert_eq!(r.kept(12, 21), vec![(15, 20)]);
    }

    #[test]
    fn inserted_maps_both_ways() {
        let mut i = Inserted::default();
        assert_eq!(i.add(10, 4), 10);
        assert_eq!(i.add(20, 2), 24);
        assert_eq!(i.to_view(9), 9);
        assert_eq!(i.to_view(10), 14);
        assert_eq!(i.to_view(20), 26);
        assert_eq!(i.to_server_ack(10), 10);
        assert_eq!(i.to_server_ack(12), 10);
        assert_eq!(i.to_server_ack(14), 10);
        assert_eq!(i.to_server_ack(20), 16);
        assert_eq!(i.to_server_ack(25), 20);
        assert_eq!(i.to_server_ack(27), 21);
    }

    #[test]
    fn pruning_keeps_mapping_of_later_bytes() {
        let mut r = Removed::default();
        let mut i = Inserted::default();
        for k in 0..200u64 {
            r.add(k * 10, 2);
            i.add(k * 10, 3);
        }
        let (s, v) = (r.to_server(1995), i.to_view(1995));
        r.prune(1_000_000);
        i.prune(1_000_000);
        assert!(r.floor > 0 && i.floor > 0);
        assert_eq!(r.to_server(1995), s);
        assert_eq!(i.to_view(1995), v);
        assert_eq!(r.to_client_ack(r.to_server(1995)), 1995);
    }
}
