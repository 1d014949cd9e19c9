//! Between workers: frames handed to the worker that owns their flow (the
//! descriptor moves, the bytes stay in the shared UMEM), the eventfd that
//! wakes a sleeping owner, and the spare pool that rebalances free frames.

use std::sync::atomic::{AtomicBool, Ordering};

use crossbeam_channel::{Receiver, Sender};
use xsk_rs::FrameDesc;

use super::worker::Logged;
use crate::verdict::Side;

/// A frame handed to the worker that owns its flow.
pub type Handoff = (Side, FrameDesc);

pub struct Channels {
    pub handoff_tx: Vec<Sender<Handoff>>,
    pub handoff_rx: Receiver<Handoff>,
    /// Free frames in transit between workers: frames handed over pile up at
    /// their owner, which gives its surplus here for the others to take.
    pub spare_tx: Sender<FrameDesc>,
    pub spare_rx: Receiver<FrameDesc>,
    pub events: Option<Sender<Logged>>,
    /// Host mode: next hops a worker could not address (the control thread
    /// asks the kernel to resolve them).
    pub misses: Option<Sender<std::net::IpAddr>>,
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
/// from it when running low. Returns (given, taken).
pub fn rebalance(
    free: &mut Vec<FrameDesc>,
    quota: usize,
    spare_tx: &Sender<FrameDesc>,
    spare_rx: &Receiver<FrameDesc>,
) -> (u64, u64) {
    let (mut given, mut taken) = (0, 0);
    if free.len() > quota * 3 / 4 {
        while free.len() > quota / 2 {
            let Some(d) = free.pop() else { break };
            if let Err(e) = spare_tx.try_send(d) {
                free.push(e.into_inner());
                break;
            }
            given += 1;
        }
    } else if free.len() < quota / 8 {
        while free.len() < quota / 4 {
            let Ok(d) = spare_rx.try_recv() else { break };
            free.push(d);
            taken += 1;
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

    #[test]
    fn surplus_goes_to_the_spare_pool_and_comes_back_to_who_runs_low() {
        let (tx, rx) = crossbeam_channel::bounded(1000);
        // Within the band: nothing moves.
        let mut a = frames(600);
        assert_eq!(rebalance(&mut a, 1000, &tx, &rx), (0, 0));
        // Above 3/4: down to 1/2.
        let mut a = frames(900);
        assert_eq!(rebalance(&mut a, 1000, &tx, &rx), (400, 0));
        assert_eq!((a.len(), rx.len()), (500, 400));
        // Below 1/8: up to 1/4, from what the pool has.
        let mut b = frames(100);
        assert_eq!(rebalance(&mut b, 1000, &tx, &rx), (0, 150));
        assert_eq!((b.len(), rx.len()), (250, 250));
        // Frames are conserved.
        assert_eq!(a.len() + b.len() + rx.len(), 1000);
        // An empty pool leaves a starving list as it is.
        let (tx2, rx2) = crossbeam_channel::bounded(10);
        let mut c = frames(1);
        assert_eq!(rebalance(&mut c, 1000, &tx2, &rx2), (0, 0));
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn a_full_pool_keeps_the_frame() {
        let (tx, rx) = crossbeam_channel::bounded(3);
        let mut a = frames(100);
        assert_eq!(rebalance(&mut a, 100, &tx, &rx), (3, 0));
        assert_eq!(a.len() + rx.len(), 100);
    }
}
