//! Next hops the kernel has not resolved yet, in host mode: what a worker
//! does with a frame whose next hop's MAC it does not know, and when the
//! control thread asks the kernel to resolve it. Both are
//! plain state machines over times passed in (ns), so they are tested
//! without a kernel; `dataplane` drives them.
//!
//! They follow the kernel's own neighbour layer. A packet to an unresolved
//! neighbour waits in a small queue (`unres_qlen`) while ARP/ND runs, and
//! goes out the moment the answer comes; the queue is dropped when the
//! probes fail, after about three seconds. Dropping the frame instead and
//! waiting for TCP to retransmit costs the first connection to every new
//! next hop a whole second (the SYN's retransmission timer), and more when
//! that retransmission misses too.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;

/// Frames held per unresolved address (the kernel's historic `unres_qlen`).
pub const PER_ADDR: usize = 3;
/// Frames held per worker over all addresses: a burst towards many dead
/// next hops must not eat the worker's UMEM frames.
pub const PER_WORKER: usize = 32;
/// How long a frame waits for its next hop: the kernel's probes (3, one a
/// second) are over by then, and the sender has retransmitted.
pub const HOLD_NS: u64 = 3_000_000_000;

struct Held<T> {
    ip: IpAddr,
    since: u64,
    item: T,
}

/// One worker's frames waiting for a next hop, oldest first. Bounded per
/// address and in total; when full, the oldest frame (of that address, else
/// of all) makes room, as the kernel drops the head of a full queue.
pub struct Parked<T> {
    q: VecDeque<Held<T>>,
    per_addr: usize,
    cap: usize,
    hold_ns: u64,
}

impl<T> Default for Parked<T> {
    fn default() -> Self {
        Parked::with_limits(PER_ADDR, PER_WORKER, HOLD_NS)
    }
}

impl<T> Parked<T> {
    pub fn with_limits(per_addr: usize, cap: usize, hold_ns: u64) -> Parked<T> {
        Parked {
            q: VecDeque::with_capacity(cap),
            per_addr: per_addr.max(1),
            cap: cap.max(1),
            hold_ns,
        }
    }

    pub fn len(&self) -> usize {
        self.q.len()
    }

    pub fn is_empty(&self) -> bool {
        self.q.is_empty()
    }

    /// Frames held for `ip` now.
    pub fn holds(&self, ip: IpAddr) -> bool {
        self.q.iter().any(|h| h.ip == ip)
    }

    /// Hold `item` until `ip` resolves, from `now`. Returns the frame that
    /// had to make room, if any (the caller drops and counts it).
    pub fn hold(&mut self, ip: IpAddr, item: T, now: u64) -> Option<T> {
        self.hold_since(ip, item, now)
    }

    fn hold_since(&mut self, ip: IpAddr, item: T, since: u64) -> Option<T> {
        let mine = self.q.iter().filter(|h| h.ip == ip).count();
        let out = if mine >= self.per_addr {
            self.q
                .iter()
                .position(|h| h.ip == ip)
                .and_then(|i| self.q.remove(i))
        } else if self.q.len() >= self.cap {
            self.q.pop_front()
        } else {
            None
        };
        // Kept in order of `since`: frames put back by `retry` are older
        // than any held since, and go back in the order they came out.
        let at = self.q.partition_point(|h| h.since <= since);
        self.q.insert(at, Held { ip, since, item });
        out.map(|h| h.item)
    }

    /// Frames held too long go to `drop`; returns how many.
    pub fn expire(&mut self, now: u64, mut drop: impl FnMut(T)) -> usize {
        let mut n = 0;
        while self
            .q
            .front()
            .is_some_and(|h| now.saturating_sub(h.since) >= self.hold_ns)
        {
            if let Some(h) = self.q.pop_front() {
                drop(h.item);
                n += 1;
            }
        }
        n
    }

    /// Fresh neighbours: offer every held frame to `send`, oldest first. It
    /// returns the frame back (`Some`) when its next hop is still unknown;
    /// such a frame keeps its place and its time. Returns how many `send`
    /// took.
    pub fn retry(&mut self, mut send: impl FnMut(IpAddr, T) -> Option<T>) -> usize {
        let held = std::mem::take(&mut self.q);
        let mut sent = 0;
        for h in held {
            match send(h.ip, h.item) {
                None => sent += 1,
                Some(item) => self.q.push_back(Held {
                    ip: h.ip,
                    since: h.since,
                    item,
                }),
            }
        }
        sent
    }

    /// Everything held (at exit).
    pub fn drain(&mut self) -> impl Iterator<Item = T> + '_ {
        self.q.drain(..).map(|h| h.item)
    }
}

/// The kernel is asked again this often while an address stays unresolved
/// (its own probes of an INCOMPLETE entry end in FAILED).
pub const ASK_AGAIN_NS: u64 = 1_000_000_000;
/// An address is given up after this long (its held frames are gone by
/// then); the next miss starts over.
pub const GIVE_UP_NS: u64 = HOLD_NS;
/// Read the whole table anyway this often. The subscription carries every
/// neighbour change, and the control thread reads again after any change
/// of `--iface`'s routes or addresses and after lost events, but the kernel
/// does not announce everything: IPv4 drops the routes of a link that goes
/// down, or of an address that goes, without a message (so the default
/// gateway can change unannounced). A few dumps every 10 s bound that.
pub const REFRESH_NS: u64 = 10_000_000_000;
/// Addresses tracked at once.
const MAX_PENDING: usize = 4096;

/// What the control thread does now.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Due {
    /// Ask the kernel to resolve these (ARP/ND).
    pub ask: Vec<IpAddr>,
    /// Read the whole neighbour table and hand workers the snapshot.
    pub read: bool,
}

/// The control thread's side: which missed addresses the kernel is asked
/// to resolve (at once, then every second until the address resolves or
/// `GIVE_UP_NS` passes; a retransmitted miss never silences that), and
/// when the whole table is read. An answer needs no read: it arrives as a
/// neighbour event, and the snapshot it updates says the address resolved.
pub struct Resolver {
    pending: HashMap<IpAddr, Pending>,
    last_read: Option<u64>,
}

struct Pending {
    first: u64,
    asked: u64,
}

impl Default for Resolver {
    fn default() -> Self {
        Resolver::new()
    }
}

impl Resolver {
    pub fn new() -> Resolver {
        Resolver {
            pending: HashMap::new(),
            last_read: None,
        }
    }

    /// Addresses waiting to resolve.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// A worker could not address a frame to `ip` at `now`.
    pub fn miss(&mut self, ip: IpAddr, now: u64) {
        if self.pending.contains_key(&ip) {
            return;
        }
        if self.pending.len() >= MAX_PENDING {
            // A flood of distinct addresses: keep the oldest, drop this one
            // (its frames expire; a later miss tries again).
            return;
        }
        self.pending.insert(
            ip,
            Pending {
                first: now,
                // Never asked: asked at the next `due`.
                asked: u64::MAX,
            },
        );
    }

    /// What to do at `now`.
    pub fn due(&mut self, now: u64) -> Due {
        let mut d = Due::default();
        self.pending
            .retain(|_, p| now.saturating_sub(p.first) < GIVE_UP_NS);
        for (ip, p) in self.pending.iter_mut() {
            if p.asked == u64::MAX || now.saturating_sub(p.asked) >= ASK_AGAIN_NS {
                p.asked = now;
                d.ask.push(*ip);
            }
        }
        d.ask.sort();
        d.read = self
            .last_read
            .is_none_or(|t| now.saturating_sub(t) >= REFRESH_NS);
        d
    }

    /// The snapshot changed: `known` tells whether an address resolves in
    /// it now. Those that do are done.
    pub fn known(&mut self, known: impl Fn(&IpAddr) -> bool) {
        self.pending.retain(|ip, _| !known(ip));
    }

    /// The whole table was read at `now` (see `known`).
    pub fn read(&mut self, now: u64, known: impl Fn(&IpAddr) -> bool) {
        self.last_read = Some(now);
        self.known(known);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn held_frames_go_out_when_their_next_hop_resolves() {
        let mut p = Parked::default();
        let (a, b) = (ip("10.0.0.7"), ip("fd66::11"));
        assert!(p.hold(a, "syn-a", 0).is_none());
        assert!(p.hold(b, "syn-b", MS).is_none());
        assert!(p.holds(a) && p.holds(b));
        // A snapshot that knows b only: b's frame leaves, a's stays held.
        let mut sent = Vec::new();
        let n = p.retry(|hop, f| {
            if hop == b {
                sent.push(f);
                None
            } else {
                Some(f)
            }
        });
        assert_eq!((n, sent.as_slice()), (1, &["syn-b"][..]));
        assert!(p.holds(a) && !p.holds(b));
        // Then a resolves too.
        let n = p.retry(|_, f| {
            sent = vec![f];
            None
        });
        assert_eq!((n, sent.as_slice()), (1, &["syn-a"][..]));
        assert!(p.is_empty());
    }

    #[test]
    fn a_frame_put_back_keeps_its_time_and_expires_on_time() {
        let mut p = Parked::default();
        let a = ip("10.0.0.7");
        p.hold(a, 1, 0);
        p.hold(a, 2, 500 * MS);
        // Retries with nothing resolved do not make a frame younger.
        for _ in 0..3 {
            assert_eq!(p.retry(|_, f| Some(f)), 0);
        }
        let mut dropped = Vec::new();
        assert_eq!(p.expire(HOLD_NS - 1, |f| dropped.push(f)), 0);
        assert_eq!(p.expire(HOLD_NS, |f| dropped.push(f)), 1);
        assert_eq!(dropped, [1]);
        assert_eq!(p.expire(HOLD_NS + 500 * MS, |f| dropped.push(f)), 1);
        assert_eq!(dropped, [1, 2]);
        assert!(p.is_empty());
    }

    #[test]
    fn queues_are_bounded_per_address_and_per_worker() {
        let mut p = Parked::with_limits(3, 5, HOLD_NS);
        let (a, b) = (ip("10.0.0.7"), ip("10.0.0.8"));
        for f in 0..3 {
            assert!(p.hold(a, f, f).is_none());
        }
        // A fourth frame to `a` pushes out a's oldest.
        assert_eq!(p.hold(a, 3, 3), Some(0));
        assert_eq!(p.len(), 3);
        assert!(p.hold(b, 10, 4).is_none());
        assert!(p.hold(b, 11, 5).is_none());
        // Full (5): the oldest of all makes room.
        assert_eq!(p.hold(b, 12, 6), Some(1));
        assert_eq!(p.len(), 5);
        let mut order = Vec::new();
        p.retry(|_, f| {
            order.push(f);
            None
        });
        assert_eq!(order, [2, 3, 10, 11, 12], "oldest first");
    }

    #[test]
    fn drain_gives_back_every_held_frame() {
        let mut p = Parked::default();
        for i in 0..PER_WORKER as u8 + 4 {
            p.hold(IpAddr::from([10, 0, 1, i]), i, i as u64);
        }
        assert_eq!(p.len(), PER_WORKER);
        assert_eq!(p.drain().count(), PER_WORKER);
        assert!(p.is_empty());
    }

    #[test]
    fn a_missed_address_is_asked_at_once_and_done_when_it_resolves() {
        let mut r = Resolver::new();
        let a = ip("fd66::11");
        // Start: one read for the first snapshot.
        assert!(r.due(0).read);
        r.read(0, |_| false);
        assert_eq!(r.due(MS), Due::default());

        r.miss(a, 100 * MS);
        assert_eq!(
            r.due(100 * MS),
            Due {
                ask: vec![a],
                read: false
            },
            "asked at once, and no read: the answer comes as an event"
        );
        // A retransmitted SYN misses again: not asked again before its time.
        r.miss(a, 600 * MS);
        assert_eq!(r.due(600 * MS), Due::default());
        // An event resolves another address only.
        r.known(|x| *x == ip("10.0.0.1"));
        assert_eq!(r.pending(), 1);
        assert_eq!(r.due(1_100 * MS).ask, [a], "asked again a second later");
        r.known(|x| *x == a);
        assert_eq!(r.pending(), 0);
        assert_eq!(r.due(2_100 * MS), Due::default(), "resolved: no more asks");
    }

    #[test]
    fn an_address_that_never_resolves_is_asked_again_then_given_up() {
        let mut r = Resolver::new();
        let a = ip("10.0.0.9");
        r.due(0);
        r.read(0, |_| false);
        r.miss(a, 0);
        let mut asks = Vec::new();
        let mut reads = 0;
        let mut now = 0;
        while now < 6_000 * MS {
            let d = r.due(now);
            if !d.ask.is_empty() {
                asks.push(now / MS);
            }
            if d.read {
                reads += 1;
                r.read(now, |_| false);
            }
            now += 20 * MS;
        }
        assert_eq!(
            asks,
            [0, 1_000, 2_000],
            "once a second while it may resolve"
        );
        assert_eq!(reads, 0, "no polling of the table for it");
        assert_eq!(r.pending(), 0);
        // A miss after giving up starts over.
        r.miss(a, now);
        assert_eq!(r.due(now).ask, [a]);
    }

    #[test]
    fn the_table_is_refreshed_without_misses() {
        let mut r = Resolver::new();
        assert!(r.due(0).read, "the first snapshot");
        r.read(0, |_| true);
        assert!(!r.due(REFRESH_NS - 1).read);
        assert!(r.due(REFRESH_NS).read);
    }
}
