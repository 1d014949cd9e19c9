//! AF_XDP socket and ring operations: the shared UMEM, one socket per owned
//! RX queue, and the four rings of each (RX, TX, fill, completion).

use std::num::NonZeroU32;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Mutex;
use std::time::Duration;

use xsk_rs::config::{
    BindFlags, FrameSize, Interface, LibxdpFlags, QueueSize, SocketConfig, UmemConfig,
};
use xsk_rs::{CompQueue, FillQueue, FrameDesc, RxQueue, TxQueue, Umem};

use super::stats::{DpCounters, QueueStats};
use crate::verdict::Side;

pub const FRAME_SIZE: u32 = 4096;
/// Data room of a UMEM frame: the frame minus the kernel's XDP headroom.
pub const FRAME_DATA: u32 = FRAME_SIZE - 256;
/// Every ring (RX, TX, fill, completion) of every socket. What the rings
/// hold is the time a worker may be away (descheduled on a busy machine,
/// asleep in adaptive mode) before the kernel drops: 2 048 frames are 10 ms
/// of 64-byte frames at 200 kpps, longer than a scheduler time slice.
pub const RING_SIZE: u32 = 2048;
pub const BATCH: usize = 64;
/// Copy mode: one `sendto()` transmits at most this many frames (the
/// kernel's per-call TX budget in `xsk_generic_xmit`), then answers EAGAIN.
const KERNEL_TX_BUDGET: usize = 32;
/// Kicks per turn at most: a whole ring's worth.
const MAX_KICKS: usize = RING_SIZE as usize / KERNEL_TX_BUDGET;

// Not every libc exports these.
const SO_BUSY_POLL: libc::c_int = 46;
const SO_PREFER_BUSY_POLL: libc::c_int = 69;
const SO_BUSY_POLL_BUDGET: libc::c_int = 70;

/// Libxdp loads or updates the interface's XDP program while a socket is
/// created; keep that one at a time.
static SOCKET_SETUP: Mutex<()> = Mutex::new(());

#[derive(Debug, Clone)]
pub struct QueueSpec {
    pub side: Side,
    pub iface: String,
    pub queue: u32,
}

/// An error with its causes, for messages that must say why.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// How long a bind refused with EBUSY is retried: 40 × 50 ms.
const BUSY_RETRIES: u32 = 40;
const BUSY_WAIT: Duration = Duration::from_millis(50);

/// The error, or one it came from, is EBUSY.
fn is_busy(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(x) = cur {
        if x.downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::raw_os_error)
            == Some(libc::EBUSY)
        {
            return true;
        }
        cur = x.source();
    }
    false
}

fn socket_err(q: &QueueSpec, what: impl std::fmt::Display) -> String {
    format!("AF_XDP socket on {} queue {}: {what}", q.iface, q.queue)
}

/// The UMEM all workers share, and its frames.
pub fn new_umem(frames: u32) -> Result<(Umem, Vec<FrameDesc>), String> {
    let ring = QueueSize::new(RING_SIZE).map_err(|e| e.to_string())?;
    let umem_cfg = UmemConfig::builder()
        .frame_size(FrameSize::new(FRAME_SIZE).map_err(|e| e.to_string())?)
        .fill_queue_size(ring)
        .comp_queue_size(ring)
        .build()
        .map_err(|e| e.to_string())?;
    let n = NonZeroU32::new(frames).ok_or("--umem-frames must be positive")?;
    Umem::new(umem_cfg, n, false).map_err(|e| format!("UMEM of {frames} frames: {}", chain(&e)))
}

fn set_busy_poll(fd: libc::c_int) -> bool {
    // SAFETY: `val` lives across the call and its size is passed with it.
    let set = |opt, val: libc::c_int| unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            opt,
            &val as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        ) == 0
    };
    let a = set(SO_PREFER_BUSY_POLL, 1);
    let b = set(SO_BUSY_POLL, 20);
    let c = set(SO_BUSY_POLL_BUDGET, BATCH as libc::c_int);
    a && b && c
}

/// Whether the kernel bound the socket in zero-copy mode (`XDP_OPTIONS`);
/// `Socket::new` asks for neither mode, so the driver picks.
fn zero_copy(fd: RawFd) -> bool {
    let mut opt: u32 = 0;
    let mut len = std::mem::size_of::<u32>() as libc::socklen_t;
    // SAFETY: reads at most `len` bytes into a live u32.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_XDP,
            libc::XDP_OPTIONS,
            &mut opt as *mut u32 as *mut libc::c_void,
            &mut len,
        )
    };
    r == 0 && opt & libc::XDP_OPTIONS_ZEROCOPY != 0
}

pub struct Xsk {
    tx: TxQueue,
    rx: RxQueue,
    fq: FillQueue,
    cq: CompQueue,
    /// Frames on the TX ring not yet completed.
    in_flight: usize,
    /// What the socket is bound to, and how (for status and metrics).
    bound: Box<QueueStats>,
}

/// How a socket gets its frames: libxdp's default program (inline), or our
/// own steering program's XSKMAP (host mode; libxdp must not load its own),
/// or inline mode's kernel-path program (its XSKMAP is keyed by side and
/// queue, `kpath::MAX_QUEUES`).
#[derive(Debug, Clone, Copy)]
pub enum Steer {
    Libxdp,
    XskMap(RawFd),
    Kpath(RawFd),
}

impl Xsk {
    /// Bind a socket to `q` on `umem` and give its fill ring `fill` frames
    /// from `free`, so nothing arriving during setup finds the ring empty.
    pub fn open(
        umem: &Umem,
        q: &QueueSpec,
        steer: Steer,
        busy: bool,
        free: &mut Vec<FrameDesc>,
        fill: usize,
    ) -> Result<Xsk, String> {
        let ring = QueueSize::new(RING_SIZE).map_err(|e| e.to_string())?;
        let mut b = SocketConfig::builder();
        b.rx_queue_size(ring)
            .tx_queue_size(ring)
            .bind_flags(BindFlags::XDP_USE_NEED_WAKEUP);
        if !matches!(steer, Steer::Libxdp) {
            b.libxdp_flags(LibxdpFlags::XSK_LIBXDP_FLAGS_INHIBIT_PROG_LOAD);
        }
        let cfg = b.build();
        let ifname: Interface = q.iface.parse().map_err(|e| socket_err(q, e))?;
        // A queue whose previous socket is still being torn down refuses
        // the bind with EBUSY for a moment: the kernel frees a closed
        // socket's UMEM from a work queue, later than `close` returns. An
        // enforcer restarted at once (by its supervisor, or after a
        // `kill -9`) met that; it waits for the queue instead of exiting.
        let mut busy_tries = BUSY_RETRIES;
        let created = loop {
            let r = {
                let _g = SOCKET_SETUP.lock().unwrap_or_else(|p| p.into_inner());
                // SAFETY: each (interface, queue) is bound once in the
                // process, so the shared UMEM is never bound twice to one
                // pair; a failed bind leaves the UMEM as it was (xsk-rs).
                unsafe { xsk_rs::Socket::new(cfg, umem, &ifname, q.queue) }
            };
            match r {
                Err(e) if busy_tries > 0 && is_busy(&e) => {
                    if busy_tries == BUSY_RETRIES {
                        eprintln!(
                            "enforcer: {} queue {} is busy (a previous socket is being \
                             released); waiting up to {} ms",
                            q.iface,
                            q.queue,
                            BUSY_RETRIES * BUSY_WAIT.as_millis() as u32
                        );
                    }
                    busy_tries -= 1;
                    std::thread::sleep(BUSY_WAIT);
                }
                r => break r,
            }
        };
        let (tx, rx, rings) = created.map_err(|e| socket_err(q, chain(&e)))?;
        let (mut fq, cq) = rings.ok_or_else(|| socket_err(q, "no fill/completion rings"))?;
        let start = free.len() - fill.min(free.len());
        // SAFETY: the frames come from this UMEM and are owned by no ring.
        let done = unsafe { fq.produce(&free[start..]) };
        free.drain(start..start + done);
        if busy && !set_busy_poll(rx.fd().as_raw_fd()) {
            eprintln!(
                "enforcer: busy-poll socket options not supported on {}",
                q.iface
            );
        }
        let bound = match steer {
            Steer::Libxdp => Ok(()),
            Steer::XskMap(map) => crate::hostmode::steer::bind(map, q.queue, rx.fd().as_raw_fd()),
            Steer::Kpath(map) if q.queue < super::kpath::MAX_QUEUES => {
                let key = super::kpath::socket_key(q.side, q.queue);
                crate::hostmode::steer::bind(map, key, rx.fd().as_raw_fd())
            }
            Steer::Kpath(_) => Err(format!(
                "the kernel path serves queues below {}",
                super::kpath::MAX_QUEUES
            )),
        };
        bound.map_err(|e| socket_err(q, e))?;
        let bound = Box::new(QueueStats {
            iface: q.iface.clone(),
            queue: q.queue,
            side: q.side,
            zero_copy: zero_copy(rx.fd().as_raw_fd()),
            need_wakeup: true,
            ..QueueStats::default()
        });
        Ok(Xsk {
            tx,
            rx,
            fq,
            cq,
            in_flight: 0,
            bound,
        })
    }

    pub fn fd(&self) -> RawFd {
        self.rx.fd().as_raw_fd()
    }

    /// Completed TX frames back to the free list.
    pub fn reclaim(&mut self, free: &mut Vec<FrameDesc>, scratch: &mut [FrameDesc]) -> usize {
        if self.in_flight == 0 {
            return 0;
        }
        // SAFETY: descriptors are written by the ring, frames are ours again.
        let n = unsafe { self.cq.consume(scratch) };
        self.in_flight = self.in_flight.saturating_sub(n);
        free.extend_from_slice(&scratch[..n]);
        n
    }

    pub fn recv(&mut self, into: &mut [FrameDesc]) -> usize {
        // SAFETY: the RX ring hands us frames of this UMEM.
        unsafe { self.rx.consume(into) }
    }

    /// Put `frames` on the TX ring; what does not fit is counted and freed.
    pub fn send(
        &mut self,
        frames: &mut Vec<FrameDesc>,
        free: &mut Vec<FrameDesc>,
        dp: &mut DpCounters,
    ) -> usize {
        // The ring takes a batch whole or not at all: offer what fits.
        let room = (self.tx.nb_free(frames.len() as u32) as usize).min(frames.len());
        // SAFETY: the frames are ours and hold the bytes to send.
        let sent = unsafe { self.tx.produce(&frames[..room]) };
        self.in_flight += sent;
        dp.tx_frames += sent as u64;
        dp.tx_ring_full += (frames.len() - sent) as u64;
        free.extend(frames.drain(..).skip(sent));
        sent
    }

    /// Frames on the TX ring the kernel has not taken yet.
    pub fn tx_unsent(&mut self) -> usize {
        if self.in_flight == 0 {
            return 0;
        }
        RING_SIZE as usize - (self.tx.nb_free_exact() as usize).min(RING_SIZE as usize)
    }

    /// Copy mode transmits only inside `sendto()`, and at most
    /// `KERNEL_TX_BUDGET` frames per call: one kick per turn would send 32
    /// frames while up to 64 per link arrive, and the TX ring (then the fill
    /// rings) would run full. So kick until the kernel has taken everything,
    /// or says it cannot take more now (completion ring full, no memory).
    pub fn kick(&mut self) {
        if self.in_flight == 0 || !self.tx.needs_wakeup() {
            return;
        }
        let fd = self.tx.fd().as_raw_fd();
        let mut before = usize::MAX;
        for _ in 0..MAX_KICKS {
            // EAGAIN also means "completion ring full": stop when a kick
            // took nothing, the next turn's reclaim makes room.
            let unsent = self.tx_unsent();
            if unsent == 0 || unsent >= before {
                break;
            }
            before = unsent;
            // SAFETY: a zero-length sendto on our own socket; no buffers.
            let r = unsafe {
                libc::sendto(
                    fd,
                    std::ptr::null(),
                    0,
                    libc::MSG_DONTWAIT,
                    std::ptr::null(),
                    0,
                )
            };
            if r < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EAGAIN) {
                break;
            }
        }
    }

    /// Busy polling is driven by system calls: `SO_BUSY_POLL` and
    /// `SO_PREFER_BUSY_POLL` only take effect inside a `recvfrom()` (or
    /// poll) on the socket, which runs the device's NAPI in this thread
    /// (`sk_busy_loop`). In copy mode the fill ring never asks for a wakeup,
    /// so a loop that waited for `needs_wakeup` would never busy-poll at all
    /// and leave RX to softirqs, which preferred busy polling defers.
    pub fn busy_poll(&mut self) {
        // SAFETY: a zero-length, non-blocking recvfrom on our own socket.
        unsafe {
            libc::recvfrom(
                self.rx.fd().as_raw_fd(),
                std::ptr::null_mut(),
                0,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            );
        }
    }

    pub fn refill(&mut self, free: &mut Vec<FrameDesc>) {
        let want = self.fq.nb_free(free.len() as u32) as usize;
        if want > 0 {
            let start = free.len() - want.min(free.len());
            // SAFETY: free frames belong to no ring.
            let done = unsafe { self.fq.produce(&free[start..]) };
            free.drain(start..start + done);
        }
    }

    /// At exit: let TX finish (copy mode needs kicks) and collect completions;
    /// then the frames still on this socket's rings.
    pub fn settle(&mut self, free: &mut Vec<FrameDesc>, scratch: &mut [FrameDesc]) -> u64 {
        for _ in 0..50 {
            if self.in_flight == 0 {
                break;
            }
            let _ = self.tx.wakeup();
            self.reclaim(free, scratch);
            std::thread::sleep(Duration::from_millis(1));
        }
        self.in_flight as u64
            + (RING_SIZE - self.fq.nb_free_exact().min(RING_SIZE)) as u64
            + self.rx.nb_avail_exact() as u64
    }

    /// For the kernel path's fence: frames the kernel dropped after they
    /// were given to this socket (ring full, no fill frame), and whether the
    /// RX ring is empty now.
    pub fn fence_view(&mut self) -> (u64, bool) {
        let dropped = self
            .rx
            .fd()
            .xdp_statistics()
            .map(|st| st.rx_dropped() + st.rx_ring_full())
            .unwrap_or(0);
        (dropped, self.rx.nb_avail_exact() == 0)
    }

    /// The socket's binding and its kernel statistics now.
    pub fn queue_stats(&self) -> QueueStats {
        let mut q = (*self.bound).clone();
        if let Ok(st) = self.rx.fd().xdp_statistics() {
            q.rx_dropped = st.rx_dropped();
            q.rx_ring_full = st.rx_ring_full();
            q.rx_fill_ring_empty = st.rx_fill_ring_empty_descs();
            q.rx_invalid_descs = st.rx_invalid_descs();
            q.tx_invalid_descs = st.tx_invalid_descs();
        }
        q
    }

    pub fn stats(&self, dp: &mut DpCounters) {
        if let Ok(st) = self.rx.fd().xdp_statistics() {
            dp.xdp_rx_dropped += st.rx_dropped();
            dp.xdp_rx_ring_full += st.rx_ring_full();
            dp.xdp_fill_ring_empty += st.rx_fill_ring_empty_descs();
            dp.xdp_invalid_descs += st.rx_invalid_descs() + st.tx_invalid_descs();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::is_busy;

    #[derive(Debug)]
    struct Wrapped(std::io::Error);
    impl std::fmt::Display for Wrapped {
        fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("creating the socket")
        }
    }
    impl std::error::Error for Wrapped {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn a_busy_queue_is_told_from_other_bind_errors() {
        let busy = Wrapped(std::io::Error::from_raw_os_error(libc::EBUSY));
        assert!(is_busy(&busy));
        let other = Wrapped(std::io::Error::from_raw_os_error(libc::EINVAL));
        assert!(!is_busy(&other));
        assert!(is_busy(&std::io::Error::from_raw_os_error(libc::EBUSY)));
    }
}
