//! Faults as a wrapper around a link: every frame put on it may be dropped,
//! split in two, reordered (delayed), duplicated or corrupted, by percent,
//! from a seed. Deterministic, and the random draws for one fault are only
//! made when that fault is on, so a seed replays the same run.

use enforcer::packet::build::{tcp_segment, SegmentSpec};
use enforcer::packet::view::parse;
use enforcer::verdict::{Emit, Output, Side, Verdict};

use super::pair::Middle;

/// Fault probabilities, in percent, applied to every frame on a link.
#[derive(Debug, Clone, Copy, Default)]
pub struct Faults {
    pub drop: u32,
    pub dup: u32,
    pub reorder: u32,
    pub split: u32,
    /// Flip one payload byte (the checksum then no longer matches).
    pub corrupt: u32,
}

impl Faults {
    /// Drop, duplicate, reorder and split percentages; no corruption.
    pub const fn new(drop: u32, dup: u32, reorder: u32, split: u32) -> Faults {
        Faults {
            drop,
            dup,
            reorder,
            split,
            corrupt: 0,
        }
    }
}

/// xorshift64*: deterministic and dependency-free.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn pct(&mut self, p: u32) -> bool {
        p > 0 && (self.next() % 100) < u64::from(p)
    }
}

/// A faulty link: `carry` turns one frame into what arrives, each with its
/// delay in steps.
pub struct Link {
    pub faults: Faults,
    rng: Rng,
    /// Frames dropped so far.
    pub lost: u64,
}

impl Link {
    pub fn new(faults: Faults, seed: u64) -> Link {
        Link {
            faults,
            rng: Rng::new(seed),
            lost: 0,
        }
    }

    /// What of `f` arrives, and after how many steps (0: now). A SYN delayed
    /// past the handshake would make the engine start the flow over (its L7
    /// state with it), so SYNs are not reordered or duplicated.
    pub fn carry(&mut self, f: Vec<u8>) -> Vec<(u32, Vec<u8>)> {
        if self.rng.pct(self.faults.drop) {
            self.lost += 1;
            return Vec::new();
        }
        let syn = parse(&f)
            .ok()
            .and_then(|m| m.tcp().map(|t| t.flags & 0x02 != 0))
            .unwrap_or(false);
        let mut frames = vec![f];
        if self.rng.pct(self.faults.split) {
            frames = split(&frames[0]);
        }
        let mut out = Vec::new();
        for mut f in frames {
            let mut delay = 0;
            if !syn && self.rng.pct(self.faults.reorder) {
                delay = 1 + (self.rng.next() % 3) as u32;
            }
            if !syn && self.rng.pct(self.faults.dup) {
                out.push((1, f.clone()));
            }
            if self.rng.pct(self.faults.corrupt) {
                corrupt(&mut f, self.rng.next());
            }
            out.push((delay, f));
        }
        out
    }
}

/// Faults around any middle: every frame into it crosses a faulty link
/// first (a delayed frame goes in after as many later frames or ticks).
/// What comes out is unchanged, so the wrapper reports every input as
/// consumed and hands the middle's forwarded frames on as emits, in order.
pub struct Faulty<M> {
    pub inner: M,
    pub link: Link,
    held: Vec<(u32, Side, Vec<u8>)>,
}

impl<M: Middle> Faulty<M> {
    pub fn new(inner: M, faults: Faults, seed: u64) -> Faulty<M> {
        Faulty {
            inner,
            link: Link::new(faults, seed),
            held: Vec::new(),
        }
    }

    fn pass(&mut self, side: Side, mut f: Vec<u8>, now: u64, out: &mut Output) {
        let at = out.emits.len();
        if let Verdict::Forward(to) = self.inner.on_frame(side, &mut f, now, out) {
            out.emits.insert(at, Emit { side: to, frame: f });
        }
    }

    /// Frames whose delay ran out (`all`: every held frame) go in.
    fn release(&mut self, all: bool, now: u64, out: &mut Output) {
        for h in &mut self.held {
            h.0 = if all { 0 } else { h.0.saturating_sub(1) };
        }
        let (due, later) = std::mem::take(&mut self.held)
            .into_iter()
            .partition(|h| h.0 == 0);
        self.held = later;
        for (_, side, f) in due {
            self.pass(side, f, now, out);
        }
    }
}

impl<M: Middle> Middle for Faulty<M> {
    fn on_frame(&mut self, side: Side, frame: &mut [u8], now: u64, out: &mut Output) -> Verdict {
        self.release(false, now, out);
        for (delay, f) in self.link.carry(frame.to_vec()) {
            if delay == 0 {
                self.pass(side, f, now, out);
            } else {
                self.held.push((delay, side, f));
            }
        }
        Verdict::Consumed
    }

    fn tick(&mut self, now: u64, out: &mut Output) {
        self.release(true, now, out);
        self.inner.tick(now, out);
    }
}

/// Flip a bit of one payload byte of a TCP or UDP frame (anything else whole).
fn corrupt(f: &mut [u8], r: u64) {
    let Ok(m) = parse(f) else { return };
    let (a, b) = (m.payload_off, m.payload_end);
    if b > a {
        f[a + (r as usize) % (b - a)] ^= 1 << (r % 8);
    }
}

/// Split a TCP data segment in two at the middle, options dropped; anything
/// else is passed whole.
pub fn split(f: &[u8]) -> Vec<Vec<u8>> {
    let Ok(m) = parse(f) else {
        return vec![f.to_vec()];
    };
    let Some(t) = m.tcp() else {
        return vec![f.to_vec()];
    };
    let p = m.payload(f);
    if p.len() < 2 || t.flags & 0x07 != 0 {
        return vec![f.to_vec()];
    }
    let mid = p.len() / 2;
    let spec = SegmentSpec {
        reverse: false,
        seq: t.seq,
        ack: t.ack,
        flags: t.flags,
        window: t.window,
    };
    let a = tcp_segment(f, &m, &spec, &p[..mid]);
    let b = tcp_segment(
        f,
        &m,
        &SegmentSpec {
            seq: t.seq.wrapping_add(mid as u32),
            ..spec
        },
        &p[mid..],
    );
    vec![a, b]
}
