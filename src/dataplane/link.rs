//! A link is one side of one worker: what the loop receives from and sends
//! to. Inline mode has two AF_XDP links per worker; host mode has an AF_XDP
//! link on `--iface` and a TAP link into the kernel. Every link works on
//! UMEM frames: the TAP reads into and writes from them, so no frame is
//! allocated or copied beyond the one `read`/`write`.
//!
//! In host mode each link also rewrites L2 on the way out (the engine never
//! sees MAC addresses change): frames into the TAP get its MAC as
//! destination, frames onto the wire get `--iface`'s MAC as source and the
//! next hop's as destination, learned from the wire's own frames. A frame
//! whose next hop is not resolved yet waits in the link (`Parked`) until a
//! neighbour snapshot has it.

use std::net::IpAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use crossbeam_channel::Sender;
use xsk_rs::{FrameDesc, Umem};

use super::stats::DpCounters;
use super::xsk::{Xsk, BATCH};
use crate::hostmode::l2::{Mac, Neighbors, L2};
use crate::hostmode::tap::{Done, Tap, TapRing};
use crate::hostmode::unresolved::Parked;
use crate::verdict::Side;

enum Io {
    Xsk(Xsk),
    /// The TAP by `read`/`write`, one syscall per frame (the fallback).
    Tap(Tap, Probe),
    /// The TAP through io_uring (see `TapRing`): one enter per busy turn.
    TapRing(Box<Uring>),
}

/// Setting `ENFORCER_TAP_IO=plain` keeps the TAP on `read`/`write` even where
/// io_uring works (to compare the two, or to rule the ring out).
pub const TAP_IO_ENV: &str = "ENFORCER_TAP_IO";
/// Read buffers (UMEM frames) a TAP ring holds: a burst the host sends
/// between two turns beyond this waits on the TAP's queue.
const TAP_RING_BUFFERS: u16 = 64;

struct Uring {
    tap: Tap,
    ring: TapRing<FrameDesc>,
    /// Frames read (length set), for the next `recv`.
    ready: Vec<FrameDesc>,
    /// Frames whose write completed, for the free list.
    written: Vec<FrameDesc>,
    wrote_ok: u64,
    wrote_err: u64,
}

impl Uring {
    /// Give the read free frames (whole data room) up to what it takes.
    fn give(&mut self, umem: &Umem, free: &mut Vec<FrameDesc>) {
        while self.ring.wants() > 0 {
            let Some(mut d) = free.pop() else { break };
            let (ptr, len) = {
                // SAFETY: a free frame is referenced by no ring.
                let mut data = unsafe { umem.data_mut(&mut d) };
                // The whole data room; the read's length trims it.
                let mut c = data.cursor();
                let room = c.buf_len();
                c.set_pos(room);
                let buf = data.contents_mut();
                (buf.as_mut_ptr(), buf.len() as u32)
            };
            // SAFETY: the frame is the ring's, untouched here, until it comes
            // back read or `settle` returns it.
            unsafe { self.ring.give(d, ptr, len) };
        }
    }

    /// Run the ring (`TapRing::turn`); sort what came back.
    fn turn(&mut self, umem: &Umem) {
        let Uring {
            ring,
            ready,
            written,
            wrote_ok,
            wrote_err,
            ..
        } = self;
        let r = ring.turn(&mut |done| match done {
            Done::Read(mut d, len) => {
                // SAFETY: the kernel handed the frame back; only we refer to it.
                unsafe { umem.data_mut(&mut d) }.cursor().set_pos(len);
                ready.push(d);
            }
            Done::Wrote(d, r) => {
                match r {
                    Ok(_) => *wrote_ok += 1,
                    Err(_) => *wrote_err += 1,
                }
                written.push(d);
            }
        });
        if let Err(e) = r {
            // Not expected on a ring that started; counted as lost writes
            // rather than taking the worker down.
            *wrote_err += 1;
            tap_io_note(
                Note::RingFailed,
                &format!("io_uring on the TAP failed: {e}"),
            );
        }
    }
}

/// What `tap_io_note` says, each kind once per process (the workers'
/// links all make the same choice, and a failing ring fails alike).
#[derive(Clone, Copy)]
enum Note {
    Plain,
    Ring,
    NoRing,
    RingFailed,
    FellBack,
}

/// Which TAP I/O this process uses, said once at start (and a ring
/// failure, once).
fn tap_io_note(kind: Note, msg: &str) {
    use std::sync::Once;
    static SAID: [Once; 5] = [const { Once::new() }; 5];
    SAID[kind as usize].call_once(|| eprintln!("enforcer: {msg}"));
}

/// When to read a TAP next. An AF_XDP ring shows frames with a memory load;
/// a TAP only with a `read` syscall, and a worker spinning through idle
/// turns spent most of its reads on empty ones (10 to 60 per HTTP request
/// in `bench/host.sh`, for one frame). So a TAP is read again on the next
/// turn only while reads return frames; after an empty one the next read
/// waits 0.5, 1, 2 … µs, at most `TAP_MAX_GAP`. Time, not turns: a busy
/// turn on the wire can take a hundred microseconds, and the host's frames
/// must not wait for many of them. What makes frames likely resets the
/// gap: a write into the TAP (the host answers within microseconds: the
/// write itself ran its stack and woke the application), and poll()
/// returning (the TAP is in the poll set, so a worker asleep never misses
/// it). An idle spin then costs a read per doubling of its length, then
/// one per `TAP_MAX_GAP`; a worker that writes every turn reads every turn
/// as before.
#[derive(Default)]
struct Probe {
    /// Not before this (the worker's clock, ns).
    next: u64,
    /// The gap after the next empty read (ns; doubles, capped).
    gap: u64,
}

/// The longest wait between reads of an idle TAP: the delay of a frame the
/// host sends while the worker is busy elsewhere or spinning.
const TAP_MAX_GAP: u64 = 16_000;
const TAP_MIN_GAP: u64 = 500;

impl Probe {
    fn due(&self, now: u64) -> bool {
        now >= self.next
    }

    fn got(&mut self, frames: usize, now: u64) {
        if frames > 0 {
            self.gap = 0;
            self.next = 0;
        } else {
            self.next = now + self.gap;
            self.gap = (self.gap * 2).clamp(TAP_MIN_GAP, TAP_MAX_GAP);
        }
    }

    fn soon(&mut self) {
        self.next = 0;
        self.gap = 0;
    }
}

/// What a link does to a frame's MAC addresses before it leaves.
pub enum Rewrite {
    /// Inline: frames leave exactly as they came.
    None,
    /// Into the host through the TAP: destination = the TAP's MAC.
    ToHost(Mac),
    /// Onto `--iface` in host mode: learned next hops, else the kernel's
    /// neighbours (a snapshot the control thread refreshes); frames waiting
    /// for a next hop to resolve.
    ToWire {
        l2: L2,
        neighbors: Arc<Neighbors>,
        parked: Parked<FrameDesc>,
    },
}

impl Rewrite {
    pub fn to_wire(l2: L2, neighbors: Arc<Neighbors>) -> Rewrite {
        Rewrite::ToWire {
            l2,
            neighbors,
            parked: Parked::default(),
        }
    }
}

pub struct Link {
    pub side: Side,
    io: Io,
    rewrite: Rewrite,
    /// Inline with the kernel path: this socket's ordering fence.
    fence: Option<super::kpath::FenceSlot>,
}

impl Link {
    pub fn xsk(side: Side, x: Xsk, rewrite: Rewrite) -> Link {
        Link {
            side,
            io: Io::Xsk(x),
            rewrite,
            fence: None,
        }
    }

    /// A TAP link: io_uring where the kernel has what it needs, else plain
    /// `read`/`write`. Called on the worker's own thread (the ring's issuer).
    pub fn tap(side: Side, t: Tap, rewrite: Rewrite) -> Link {
        let plain = std::env::var(TAP_IO_ENV).is_ok_and(|v| v == "plain");
        let io = if plain {
            tap_io_note(
                Note::Plain,
                &format!("TAP I/O: read/write ({TAP_IO_ENV}=plain)"),
            );
            Io::Tap(t, Probe::default())
        } else {
            match TapRing::new(&t, TAP_RING_BUFFERS) {
                Ok(ring) => {
                    tap_io_note(
                        Note::Ring,
                        "TAP I/O: io_uring (multishot read, one submit per turn)",
                    );
                    Io::TapRing(Box::new(Uring {
                        tap: t,
                        ring,
                        ready: Vec::with_capacity(TAP_RING_BUFFERS as usize),
                        written: Vec::with_capacity(BATCH * 2),
                        wrote_ok: 0,
                        wrote_err: 0,
                    }))
                }
                Err(e) => {
                    tap_io_note(
                        Note::NoRing,
                        &format!("TAP I/O: read/write (io_uring unavailable: {e})"),
                    );
                    Io::Tap(t, Probe::default())
                }
            }
        };
        Link {
            side,
            io,
            rewrite,
            fence: None,
        }
    }

    /// The fd to sleep on in poll() (readable when frames wait).
    pub fn pollfd(&self) -> RawFd {
        match &self.io {
            Io::Xsk(x) => x.fd(),
            Io::Tap(t, _) => t.as_raw_fd(),
            // Readable while frames wait: the ring's read takes them only
            // in our next enter.
            Io::TapRing(u) => u.tap.as_raw_fd(),
        }
    }

    /// Frames the kernel finished sending, back to the free list (a TAP
    /// write completes at once, so it has none).
    pub fn reclaim(&mut self, free: &mut Vec<FrameDesc>, scratch: &mut [FrameDesc]) -> usize {
        match &mut self.io {
            Io::Xsk(x) => x.reclaim(free, scratch),
            Io::Tap(..) => 0,
            Io::TapRing(u) => {
                let n = u.written.len();
                free.append(&mut u.written);
                n
            }
        }
    }

    /// The worker slept in poll(): read a TAP at once if it was found
    /// readable (or not looked at); one found empty counts as an empty read
    /// at `now`.
    pub fn woken(&mut self, readable: bool, now: u64) {
        if let Io::Tap(_, probe) = &mut self.io {
            if readable {
                probe.soon();
            } else {
                probe.got(0, now);
            }
        }
    }

    /// Received frames into `into`; returns how many. A TAP reads each frame
    /// into a free UMEM frame; with none free it leaves them queued. `now`:
    /// the worker's clock (ns), for when to read an idle TAP again.
    pub fn recv(
        &mut self,
        umem: &Umem,
        free: &mut Vec<FrameDesc>,
        into: &mut [FrameDesc],
        now: u64,
    ) -> usize {
        let n = match &mut self.io {
            Io::Xsk(x) => {
                let n = x.recv(into);
                if let Some(f) = &mut self.fence {
                    f.took(n);
                }
                n
            }
            Io::Tap(t, probe) => {
                if !probe.due(now) {
                    return 0;
                }
                let mut n = 0;
                while n < into.len().min(BATCH) {
                    let Some(mut d) = free.pop() else { break };
                    let got = {
                        // SAFETY: a free frame is referenced by no ring.
                        let mut data = unsafe { umem.data_mut(&mut d) };
                        // Open the whole data room, read, then trim to the frame.
                        let mut c = data.cursor();
                        let room = c.buf_len();
                        c.set_pos(room);
                        let got = t.recv(data.contents_mut());
                        let len = match got {
                            Ok(Some(l)) => l,
                            _ => 0,
                        };
                        data.cursor().set_pos(len);
                        len
                    };
                    if got == 0 {
                        free.push(d);
                        break;
                    }
                    into[n] = d;
                    n += 1;
                }
                probe.got(n, now);
                n
            }
            Io::TapRing(u) if u.ring.broken().is_some() => {
                self.fall_back(free);
                return 0;
            }
            Io::TapRing(u) => {
                u.give(umem, free);
                // A memory load when idle: the ring says whether the kernel
                // deferred reads to us.
                if u.ready.is_empty() && u.ring.has_work() {
                    u.turn(umem);
                }
                free.append(&mut u.written);
                let n = u.ready.len().min(into.len());
                for (slot, d) in into.iter_mut().zip(u.ready.drain(..n)) {
                    *slot = d;
                }
                n
            }
        };
        if let Rewrite::ToWire { l2, .. } = &mut self.rewrite {
            for d in into.iter().take(n) {
                // SAFETY: just received; only we refer to it.
                let data = unsafe { umem.data(d) };
                l2.learn(data.contents());
            }
        }
        n
    }

    /// A ring whose read broke: its frames back to the free list, and the
    /// TAP on plain `read`/`write` from now on (a dup of its fd: the ring's
    /// own closes with it).
    fn fall_back(&mut self, free: &mut Vec<FrameDesc>) {
        let mut scratch = [];
        let Io::TapRing(u) = &mut self.io else { return };
        let why = u.ring.broken().map(|e| e.to_string()).unwrap_or_default();
        let t = match u.tap.try_clone() {
            Ok(t) => t,
            Err(e) => {
                tap_io_note(
                    Note::RingFailed,
                    &format!("io_uring on the TAP failed ({why}) and its fd cannot be kept: {e}"),
                );
                return;
            }
        };
        self.settle(free, &mut scratch);
        tap_io_note(
            Note::FellBack,
            &format!("TAP I/O: read/write from now on (io_uring read failed: {why})"),
        );
        self.io = Io::Tap(t, Probe::default());
    }

    /// Remember the sender of a frame of this side that another worker
    /// received and handed over.
    pub fn observe(&mut self, frame: &[u8]) {
        if let Rewrite::ToWire { l2, .. } = &mut self.rewrite {
            l2.learn(frame);
        }
    }

    /// A fresh neighbour snapshot. Held frames whose next hop it resolves
    /// move to `out` (this link's pending frames, sent this turn); the rest
    /// stay held.
    pub fn set_neighbors(
        &mut self,
        n: Arc<Neighbors>,
        umem: &Umem,
        out: &mut Vec<FrameDesc>,
        dp: &mut DpCounters,
    ) {
        if let Rewrite::ToWire {
            l2,
            neighbors,
            parked,
        } = &mut self.rewrite
        {
            *neighbors = n;
            if parked.is_empty() {
                return;
            }
            let sent = parked.retry(|_, mut d| {
                // SAFETY: a held frame is referenced by no ring.
                let mut data = unsafe { umem.data_mut(&mut d) };
                match l2.to_wire(data.contents_mut(), neighbors) {
                    Ok(()) => {
                        out.push(d);
                        None
                    }
                    Err(_) => Some(d),
                }
            });
            dp.next_hop_sent_late += sent as u64;
        }
    }

    /// Held frames whose next hop did not resolve in time are dropped.
    pub fn expire_held(&mut self, now: u64, free: &mut Vec<FrameDesc>, dp: &mut DpCounters) {
        if let Rewrite::ToWire { parked, .. } = &mut self.rewrite {
            dp.next_hop_dropped += parked.expire(now, |d| free.push(d)) as u64;
        }
    }

    /// Send `frames` (all of them leave the vector: sent, held for a next
    /// hop, or freed and counted). A next hop not resolved yet goes to
    /// `misses` (the control thread has the kernel resolve it). `now`: the
    /// worker's clock (ns), for how long a frame is held.
    pub fn send(
        &mut self,
        umem: &Umem,
        frames: &mut Vec<FrameDesc>,
        free: &mut Vec<FrameDesc>,
        dp: &mut DpCounters,
        misses: Option<&Sender<IpAddr>>,
        now: u64,
    ) -> usize {
        match &mut self.rewrite {
            Rewrite::None => {}
            Rewrite::ToHost(mac) => {
                for d in frames.iter_mut() {
                    // SAFETY: pending frames are ours until sent.
                    let mut data = unsafe { umem.data_mut(d) };
                    L2::address_to(data.contents_mut(), mac);
                }
            }
            Rewrite::ToWire {
                l2,
                neighbors,
                parked,
            } => {
                let mut kept = 0;
                for i in 0..frames.len() {
                    let mut d = frames[i];
                    let ok = {
                        // SAFETY: as above.
                        let mut data = unsafe { umem.data_mut(&mut d) };
                        l2.to_wire(data.contents_mut(), neighbors)
                    };
                    match ok {
                        Ok(()) => {
                            frames[kept] = d;
                            kept += 1;
                        }
                        Err(Some(ip)) => {
                            // Held, as the kernel holds a packet for an
                            // INCOMPLETE neighbour: the first SYN to a new
                            // next hop leaves when it resolves, not a
                            // retransmission timer later.
                            dp.next_hop_held += 1;
                            if let Some(old) = parked.hold(ip, d, now) {
                                dp.next_hop_dropped += 1;
                                free.push(old);
                            }
                            // Every miss: the control thread keeps only the
                            // first of an address until it resolves.
                            if let Some(tx) = misses {
                                let _ = tx.try_send(ip);
                            }
                        }
                        Err(None) => {
                            dp.no_next_hop += 1;
                            free.push(d);
                        }
                    }
                }
                frames.truncate(kept);
            }
        }
        match &mut self.io {
            Io::Xsk(x) => x.send(frames, free, dp),
            Io::Tap(t, probe) => {
                if !frames.is_empty() {
                    probe.soon();
                }
                let mut sent = 0;
                for mut d in frames.drain(..) {
                    let ok = {
                        // SAFETY: as above.
                        let data = unsafe { umem.data_mut(&mut d) };
                        t.send(data.contents()).is_ok()
                    };
                    if ok {
                        sent += 1;
                    } else {
                        dp.tx_ring_full += 1;
                    }
                    free.push(d);
                }
                dp.tx_frames += sent as u64;
                sent
            }
            Io::TapRing(u) => {
                let mut queued = 0;
                for mut d in frames.drain(..) {
                    let (ptr, len) = {
                        // SAFETY: pending frames are ours.
                        let data = unsafe { umem.data_mut(&mut d) };
                        let f = data.contents();
                        (f.as_ptr(), f.len() as u32)
                    };
                    // SAFETY: the ring holds the frame until its write
                    // completes; nothing else refers to it meanwhile.
                    let mut ok = unsafe { u.ring.write(d, ptr, len) };
                    if !ok {
                        // Every write slot taken: submit those (they complete
                        // inside the submit) and try again.
                        u.turn(umem);
                        // SAFETY: as above.
                        ok = unsafe { u.ring.write(d, ptr, len) };
                    }
                    if ok {
                        queued += 1;
                    } else {
                        dp.tx_ring_full += 1;
                        free.push(d);
                    }
                }
                // The writes, and the reads of what the host sent meanwhile
                // (or in answer, inside our writes), in one enter.
                u.give(umem, free);
                u.turn(umem);
                free.append(&mut u.written);
                queued
            }
        }
    }

    pub fn kick(&mut self, umem: &Umem) {
        match &mut self.io {
            Io::Xsk(x) => x.kick(),
            // A write that could not complete inside its submit ends in a
            // deferred completion: collect it.
            Io::TapRing(u) if u.ring.in_flight() > 0 => u.turn(umem),
            _ => {}
        }
    }

    /// Frames handed to the kernel for TX that it has not taken yet.
    pub fn tx_unsent(&mut self) -> usize {
        match &mut self.io {
            Io::Xsk(x) => x.tx_unsent(),
            Io::Tap(..) => 0,
            Io::TapRing(u) => u.ring.in_flight(),
        }
    }

    /// Busy mode: drive the device's RX (see `Xsk::busy_poll`).
    pub fn busy_poll(&mut self) {
        if let Io::Xsk(x) = &mut self.io {
            x.busy_poll();
        }
    }

    pub fn refill(&mut self, free: &mut Vec<FrameDesc>) {
        if let Io::Xsk(x) = &mut self.io {
            x.refill(free);
        }
    }

    /// At exit: frames still on this link's rings (after letting TX finish).
    /// Held frames go back to `free`.
    pub fn settle(&mut self, free: &mut Vec<FrameDesc>, scratch: &mut [FrameDesc]) -> u64 {
        if let Rewrite::ToWire { parked, .. } = &mut self.rewrite {
            free.extend(parked.drain());
        }
        match &mut self.io {
            Io::Xsk(x) => x.settle(free, scratch),
            Io::Tap(..) => 0,
            Io::TapRing(u) => {
                let Uring {
                    ring,
                    ready,
                    written,
                    ..
                } = &mut **u;
                let mut back = Vec::new();
                ring.settle(
                    &mut |done| match done {
                        Done::Read(d, _) => ready.push(d),
                        Done::Wrote(d, _) => written.push(d),
                    },
                    &mut |d| back.push(d),
                );
                free.append(ready);
                free.append(written);
                free.append(&mut back);
                0
            }
        }
    }

    pub fn set_fence(&mut self, f: super::kpath::FenceSlot) {
        self.fence = Some(f);
    }

    /// Everything taken from the ring is dealt with (the worker's TX rings
    /// are empty): the program may forward this queue's ranges again.
    pub fn sync_fence(&mut self) {
        if let Some(f) = &mut self.fence {
            f.sync();
        }
    }

    /// Now and then: the kernel's drops into the fence's count, and a count
    /// gone astray put right (`FenceSlot::check`). Returns resyncs so far.
    pub fn check_fence(&mut self) -> u64 {
        let (Io::Xsk(x), Some(f)) = (&mut self.io, &mut self.fence) else {
            return 0;
        };
        let (dropped, rx_empty) = x.fence_view();
        f.dropped(dropped);
        f.check(rx_empty);
        f.resyncs
    }

    /// AF_XDP links: the socket's binding and kernel statistics.
    pub fn queue_stats(&self) -> Option<super::stats::QueueStats> {
        match &self.io {
            Io::Xsk(x) => Some(x.queue_stats()),
            Io::Tap(..) | Io::TapRing(_) => None,
        }
    }

    pub fn stats(&self, dp: &mut DpCounters) {
        match &self.io {
            Io::Xsk(x) => x.stats(dp),
            // Writes are counted as they complete, which may be in `recv`.
            Io::TapRing(u) => {
                dp.tx_frames += u.wrote_ok;
                dp.tx_ring_full += u.wrote_err;
            }
            Io::Tap(..) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reads an idle TAP gets between `from` and `to` (ns), one loop
    /// turn every `turn` ns, none of them finding a frame.
    fn idle_reads(p: &mut Probe, from: u64, to: u64, turn: u64) -> Vec<u64> {
        let mut reads = Vec::new();
        let mut now = from;
        while now < to {
            if p.due(now) {
                reads.push(now);
                p.got(0, now);
            }
            now += turn;
        }
        reads
    }

    #[test]
    fn idle_tap_reads_thin_out_to_the_cap() {
        let mut p = Probe::default();
        let reads = idle_reads(&mut p, 0, 200_000, 100);
        // 0, 0.1 (gap 0), then 0.5, 1, 2, 4, 8 µs gaps, then every 16 µs.
        assert_eq!(&reads[..7], &[0, 100, 600, 1_600, 3_600, 7_600, 15_600]);
        let gaps: Vec<u64> = reads.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(gaps.iter().all(|&g| g <= TAP_MAX_GAP), "{gaps:?}");
        assert!(gaps[gaps.len() - 3..].iter().all(|&g| g == TAP_MAX_GAP));
        // 200 µs idle: 18 reads, against 2 000 turns.
        assert!(reads.len() < 25, "{}", reads.len());
    }

    #[test]
    fn a_write_or_a_frame_makes_the_next_turn_read() {
        let mut p = Probe::default();
        idle_reads(&mut p, 0, 100_000, 100);
        assert!(!p.due(100_000));
        p.soon();
        assert!(
            p.due(100_000),
            "a write into the TAP: read on the next turn"
        );
        idle_reads(&mut p, 100_000, 200_000, 100);
        p.got(3, 200_000);
        assert!(p.due(200_100), "frames came: read again on the next turn");
        p.got(0, 200_100);
        assert!(
            p.due(200_200),
            "the first empty read after frames leaves no gap"
        );
        p.got(0, 200_200);
        assert!(!p.due(200_300));
        assert!(p.due(200_700));
    }

    /// Busy turns longer than the cap: the TAP is read on every one of them.
    #[test]
    fn long_turns_read_every_turn() {
        let mut p = Probe::default();
        let reads = idle_reads(&mut p, 0, 1_000_000, 100_000);
        assert_eq!(reads.len(), 10);
    }
}
