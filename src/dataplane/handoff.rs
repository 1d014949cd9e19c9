//! Between workers: frames handed to the worker that owns their flow (the
//! descriptor moves, the bytes stay in the shared UMEM), the eventfd that
//! wakes a sleeping owner, and the spare pool that rebalances free frames.
//!
//! Frames move in batches, one channel operation for up to a receive batch
//! per link: a channel operation moves a cache line between cores, and one
//! per frame cost more than judging the frame. The vectors that carry the
//! batches go back to a pool when emptied, so nothing is allocated per batch
//! once the pools are warm.

use std::sync::atomic::{AtomicBool, Ordering};

use crossbeam_channel::{Receiver, Sender};
use xsk_rs::FrameDesc;

use super::worker::Logged;
use crate::verdict::Side;

/// Frames handed to the worker that owns their flow, in arrival order.
pub type Handoff = Vec<(Side, FrameDesc)>;

/// Batches in flight to one worker (each up to a receive batch per link).
pub const HANDOFF_BATCHES: usize = 64;

pub struct Channels {
    pub handoff_tx: Vec<Sender<Handoff>>,
    pub handoff_rx: Receiver<Handoff>,
    /// Free frames in transit between workers: frames handed over pile up at
    /// their owner, which gives its surplus here for the others to take.
    pub spare_tx: Sender<Vec<FrameDesc>>,
    pub spare_rx: Receiver<Vec<FrameDesc>>,
    /// Emptied batch vectors, for whoever fills the next one.
    pub pools: Pools,
    pub events: Option<Sender<Logged>>,
    /// Host mode: next hops a worker could not address (the control thread
    /// asks the kernel to resolve them).
    pub misses: Option<Sender<std::net::IpAddr>>,
}

/// A bounded pool of empty vectors shared by all workers. Vectors flow with
/// the frames (a worker that only hands over would otherwise allocate each
/// batch and its peer pile up empties); a full pool frees the extra.
#[derive(Clone)]
pub struct Pool<T> {
    tx: Sender<Vec<T>>,
    rx: Receiver<Vec<T>>,
    cap: usize,
}

impl<T> Pool<T> {
    pub fn new(vectors: usize, cap: usize) -> Pool<T> {
        let (tx, rx) = crossbeam_channel::bounded(vectors);
        Pool { tx, rx, cap }
    }

    /// An empty vector (from the pool, or new).
    pub fn take(&self) -> Vec<T> {
        self.rx
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(self.cap))
    }

    pub fn give(&self, mut v: Vec<T>) {
        v.clear();
        let _ = self.tx.try_send(v);
    }
}

#[derive(Clone)]
pub struct Pools {
    pub handoffs: Pool<(Side, FrameDesc)>,
    pub spares: Pool<FrameDesc>,
}

/// The channels between `workers` workers: (per worker: its channels).
/// `batch` is the largest batch one worker hands another in one turn.
pub fn mesh(
    workers: usize,
    batch: usize,
    events: Option<Sender<Logged>>,
    misses: Option<Sender<std::net::IpAddr>>,
) -> (Vec<Channels>, InTransit) {
    let (htx, hrx): (Vec<_>, Vec<_>) = (0..workers)
        .map(|_| crossbeam_channel::bounded(HANDOFF_BATCHES))
        .unzip();
    // A batch given is a quarter of a worker's quota at least (see
    // `rebalance`), so all frames fit in four per worker.
    let (spare_tx, spare_rx) = crossbeam_channel::bounded(4 * workers + 4);
    let pools = Pools {
        handoffs: Pool::new(HANDOFF_BATCHES * workers, batch),
        spares: Pool::new(4 * workers + 4, 0),
    };
    let transit = InTransit {
        handoffs: hrx.clone(),
        spares: spare_rx.clone(),
    };
    let ch = hrx
        .into_iter()
        .map(|handoff_rx| Channels {
            handoff_tx: htx.clone(),
            handoff_rx,
            spare_tx: spare_tx.clone(),
            spare_rx: spare_rx.clone(),
            pools: pools.clone(),
            events: events.clone(),
            misses: misses.clone(),
        })
        .collect();
    (ch, transit)
}

/// The receiving ends of the mesh, kept for the leak check at exit.
pub struct InTransit {
    handoffs: Vec<Receiver<Handoff>>,
    spares: Receiver<Vec<FrameDesc>>,
}

impl InTransit {
    /// Frames still in a hand-off or spare channel (drains them).
    pub fn frames(&self) -> u64 {
        let h: usize = self
            .handoffs
            .iter()
            .flat_map(|r| r.try_iter())
            .map(|b| b.len())
            .sum();
        let s: usize = self.spares.try_iter().map(|b| b.len()).sum();
        (h + s) as u64
    }
}

/// Wakes a worker sleeping in poll() when another hands it a frame: an
/// eventfd in its poll set, written only while it sleeps.
pub struct Waker {
    pub fd: libc::c_int,
    pub sleeping: AtomicBool,
}

impl Waker {
    pub fn new() -> Result<Waker, String> {
        // SAFETY: plain syscall; the fd is checked below.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(format!("eventfd: {}", std::io::Error::last_os_error()));
        }
        Ok(Waker {
            fd,
            sleeping: AtomicBool::new(false),
        })
    }

    pub fn wake(&self) {
        if self.sleeping.load(Ordering::SeqCst) {
            let one: u64 = 1;
            // SAFETY: writes 8 bytes from a live u64 to the eventfd this Waker owns.
            unsafe { libc::write(self.fd, &one as *const u64 as *const libc::c_void, 8) };
        }
    }

    pub fn drain(&self) {
        let mut v: u64 = 0;
        // SAFETY: reads 8 bytes into a live u64 from the eventfd this Waker owns.
        unsafe { libc::read(self.fd, &mut v as *mut u64 as *mut libc::c_void, 8) };
    }
}

impl Drop for Waker {
    fn drop(&mut self) {
        // SAFETY: the eventfd is owned by this Waker and closed only here.
        unsafe { libc::close(self.fd) };
    }
}

/// Keep a free list near half its quota: give a surplus (frames handed over
/// by other workers pile up at their flow's owner) to the spare pool, take
/// from it when running low; a batch per channel operation. Returns (given,
/// taken).
pub fn rebalance(
    free: &mut Vec<FrameDesc>,
    quota: usize,
    spare_tx: &Sender<Vec<FrameDesc>>,
    spare_rx: &Receiver<Vec<FrameDesc>>,
    pool: &Pool<FrameDesc>,
) -> (u64, u64) {
    let (mut given, mut taken) = (0, 0);
    if free.len() > quota * 3 / 4 {
        let keep = quota / 2;
        let mut v = pool.take();
        v.extend(free.drain(keep..));
        let n = v.len() as u64;
        match spare_tx.try_send(v) {
            Ok(()) => given = n,
            Err(e) => {
                let mut v = e.into_inner();
                free.append(&mut v);
                pool.give(v);
            }
        }
    } else if free.len() < quota / 8 {
        while free.len() < quota / 4 {
            let Ok(mut v) = spare_rx.try_recv() else {
                break;
            };
            taken += v.len() as u64;
            free.append(&mut v);
            pool.give(v);
        }
    }
    (given, taken)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(n: usize) -> Vec<FrameDesc> {
        vec![FrameDesc::default(); n]
    }

    fn queued(rx: &Receiver<Vec<FrameDesc>>) -> usize {
        rx.try_iter().map(|v| v.len()).sum()
    }

    #[test]
    fn surplus_goes_to_the_spare_pool_and_comes_back_to_who_runs_low() {
        let (tx, rx) = crossbeam_channel::bounded(8);
        let pool = Pool::new(8, 0);
        // Within the band: nothing moves.
        let mut a = frames(600);
        assert_eq!(rebalance(&mut a, 1000, &tx, &rx, &pool), (0, 0));
        // Above 3/4: down to 1/2, in one batch.
        let mut a = frames(900);
        assert_eq!(rebalance(&mut a, 1000, &tx, &rx, &pool), (400, 0));
        assert_eq!((a.len(), rx.len()), (500, 1));
        // Below 1/8: whole batches until 1/4, from what the pool has.
        let mut b = frames(100);
        assert_eq!(rebalance(&mut b, 1000, &tx, &rx, &pool), (0, 400));
        assert_eq!((b.len(), rx.len()), (500, 0));
        // The emptied vector went back for the next batch.
        assert_eq!(pool.rx.len(), 1);
        // Frames are conserved.
        assert_eq!(a.len() + b.len(), 1000);
        // An empty pool leaves a starving list as it is.
        let (tx2, rx2) = crossbeam_channel::bounded(10);
        let mut c = frames(1);
        assert_eq!(rebalance(&mut c, 1000, &tx2, &rx2, &pool), (0, 0));
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn a_full_spare_channel_keeps_the_frames() {
        let (tx, rx) = crossbeam_channel::bounded(1);
        let pool = Pool::new(4, 0);
        let mut a = frames(100);
        assert_eq!(rebalance(&mut a, 100, &tx, &rx, &pool), (50, 0));
        let mut b = frames(100);
        assert_eq!(rebalance(&mut b, 100, &tx, &rx, &pool), (0, 0));
        assert_eq!(b.len(), 100);
        assert_eq!(a.len() + b.len() + queued(&rx), 200);
    }

    #[test]
    fn the_mesh_counts_frames_in_transit() {
        let (ch, transit) = mesh(2, 64, None, None);
        let mut v = ch[0].pools.handoffs.take();
        v.extend([(0, FrameDesc::default()); 5]);
        ch[0].handoff_tx[1].send(v).unwrap();
        let mut s = ch[1].pools.spares.take();
        s.extend(frames(3));
        ch[1].spare_tx.send(s).unwrap();
        assert_eq!(transit.frames(), 8);
        assert_eq!(transit.frames(), 0, "counted frames are drained");
    }
}
