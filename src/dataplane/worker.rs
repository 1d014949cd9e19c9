//! One worker: its AF_XDP sockets (one per owned RX queue of each side) on
//! the UMEM all workers share, its own engine and flows, and the poll loop.
//! Frames move from RX to TX inside the UMEM without copies, also when handed
//! to the worker that owns their flow; only emitted frames are copied in.

use std::io::Write;
use std::num::NonZeroU32;
use std::os::fd::AsRawFd;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use serde::Serialize;
use xsk_rs::config::{BindFlags, FrameSize, Interface, QueueSize, SocketConfig, UmemConfig};
use xsk_rs::{CompQueue, FillQueue, FrameDesc, RxQueue, TxQueue, Umem};

use super::PollMode;
use crate::config::EngineConfig;
use crate::counters::Counters;
use crate::engine::{steering_hash, Engine};
use crate::log::Event;
use crate::policy::Policy;
use crate::verdict::{other, Output, Side, Verdict};

pub const FRAME_SIZE: u32 = 4096;
/// Data room of a UMEM frame: the frame minus the kernel's XDP headroom.
pub const FRAME_DATA: u32 = FRAME_SIZE - 256;
pub const RING_SIZE: u32 = 1024;
const BATCH: usize = 64;
const TICK: Duration = Duration::from_millis(1);
const PUBLISH: Duration = Duration::from_millis(100);
/// Idle loop turns before an adaptive worker sleeps in poll().
const IDLE_SPINS: u32 = 200;

// Not every libc exports these.
const SO_BUSY_POLL: libc::c_int = 46;
const SO_PREFER_BUSY_POLL: libc::c_int = 69;
const SO_BUSY_POLL_BUDGET: libc::c_int = 70;

/// A frame handed to the worker that owns its flow: the descriptor moves,
/// the bytes stay in the shared UMEM.
pub type Handoff = (Side, FrameDesc);

/// Libxdp loads or updates the interface's XDP program while a socket is
/// created; keep that one at a time.
static SOCKET_SETUP: Mutex<()> = Mutex::new(());

#[derive(Debug, Clone)]
pub struct QueueSpec {
    pub side: Side,
    pub iface: String,
    pub queue: u32,
}

pub struct WorkerSpec {
    pub id: u16,
    pub workers: usize,
    pub queues: Vec<QueueSpec>,
    pub umem: Umem,
    /// This worker's initial share of the UMEM's frames.
    pub frames: Vec<FrameDesc>,
    pub poll: PollMode,
    pub cpu: Option<usize>,
    pub policy: Option<Arc<Policy>>,
    pub engine: EngineConfig,
}

/// Dataplane counters of one worker (the engine counts its own).
#[derive(Debug, Clone, Default, Serialize)]
pub struct DpCounters {
    pub rx_frames: u64,
    pub tx_frames: u64,
    /// Frames that could not be sent: TX ring full.
    pub tx_ring_full: u64,
    /// Emitted or handed-over frames dropped for want of a free UMEM frame.
    pub no_free_frame: u64,
    /// Emitted frames larger than a UMEM frame.
    pub frame_too_large: u64,
    pub handoff_out: u64,
    pub handoff_in: u64,
    /// Frames for another worker dropped because its channel was full.
    pub handoff_full: u64,
    /// Verdict events dropped because the logger fell behind.
    pub events_dropped: u64,
    /// Kernel-side AF_XDP statistics, summed over this worker's sockets.
    pub xdp_rx_dropped: u64,
    pub xdp_rx_ring_full: u64,
    pub xdp_fill_ring_empty: u64,
    pub xdp_invalid_descs: u64,
    /// Frames given to / taken from the spare pool that rebalances the
    /// shared UMEM between workers.
    pub frames_to_spare: u64,
    pub frames_from_spare: u64,
    /// Engine panics survived (frame dropped, worker's engine replaced).
    pub engine_panics: u64,
    /// At exit: UMEM frames neither free nor on a ring (a leak if not 0).
    pub umem_frames_unaccounted: u64,
}

impl DpCounters {
    pub fn merge(&mut self, o: &DpCounters) {
        self.rx_frames += o.rx_frames;
        self.tx_frames += o.tx_frames;
        self.tx_ring_full += o.tx_ring_full;
        self.no_free_frame += o.no_free_frame;
        self.frame_too_large += o.frame_too_large;
        self.handoff_out += o.handoff_out;
        self.handoff_in += o.handoff_in;
        self.handoff_full += o.handoff_full;
        self.events_dropped += o.events_dropped;
        self.xdp_rx_dropped += o.xdp_rx_dropped;
        self.xdp_rx_ring_full += o.xdp_rx_ring_full;
        self.xdp_fill_ring_empty += o.xdp_fill_ring_empty;
        self.xdp_invalid_descs += o.xdp_invalid_descs;
        self.frames_to_spare += o.frames_to_spare;
        self.frames_from_spare += o.frames_from_spare;
        self.engine_panics += o.engine_panics;
        self.umem_frames_unaccounted += o.umem_frames_unaccounted;
    }
}

#[derive(Debug, Clone, Default)]
pub struct WorkerStats {
    pub dp: DpCounters,
    pub engine: Counters,
    /// At exit: UMEM frames this worker holds (free list and rings).
    pub frames_held: u64,
}

/// What decides frames: the engine, or (private switch for bring-up without a
/// policy) a wire that forwards every frame to the other side.
enum Judge {
    Engine {
        engine: Box<Engine>,
        /// Counters of engines replaced after a panic.
        carried: Box<Counters>,
        panics: u64,
    },
    PassThrough(Box<Counters>),
}

impl Judge {
    fn engine(e: Engine) -> Judge {
        Judge::Engine {
            engine: Box::new(e),
            carried: Box::default(),
            panics: 0,
        }
    }

    fn on_frame(&mut self, side: Side, frame: &mut [u8], now: u64, out: &mut Output) -> Verdict {
        match self {
            Judge::Engine { engine, .. } => {
                let r = catch_unwind(AssertUnwindSafe(|| engine.on_frame(side, frame, now, out)));
                match r {
                    Ok(v) => v,
                    Err(_) => {
                        self.recover(out);
                        Verdict::Consumed
                    }
                }
            }
            Judge::PassThrough(c) => {
                c.frames_in += 1;
                c.frames_forwarded += 1;
                Verdict::Forward(other(side))
            }
        }
    }

    fn tick(&mut self, now: u64, out: &mut Output) {
        if let Judge::Engine { engine, .. } = self {
            if catch_unwind(AssertUnwindSafe(|| engine.tick(now, out))).is_err() {
                self.recover(out);
            }
        }
    }

    /// A bug in the core must not take the wire down: the frame that hit it
    /// is dropped and the worker goes on with a fresh engine (this worker's
    /// flows are forgotten, so they fail closed or are picked up again).
    fn recover(&mut self, out: &mut Output) {
        out.clear();
        if let Judge::Engine {
            engine,
            carried,
            panics,
        } = self
        {
            *panics += 1;
            carried.merge(engine.counters());
            let fresh = Engine::new(
                engine.policy().clone(),
                engine.config().clone(),
                engine.worker(),
            );
            **engine = fresh;
        }
    }

    fn panics(&self) -> u64 {
        match self {
            Judge::Engine { panics, .. } => *panics,
            Judge::PassThrough(_) => 0,
        }
    }

    fn counters(&self) -> Counters {
        match self {
            Judge::Engine {
                engine, carried, ..
            } => {
                let mut c = (**carried).clone();
                c.merge(engine.counters());
                c
            }
            Judge::PassThrough(c) => (**c).clone(),
        }
    }
}

struct Xsk {
    side: Side,
    tx: TxQueue,
    rx: RxQueue,
    fq: FillQueue,
    cq: CompQueue,
    /// Frames on the TX ring not yet completed.
    in_flight: usize,
}

pub struct Shared {
    pub stop: AtomicBool,
    pub stats: Vec<Mutex<WorkerStats>>,
    pub wakers: Vec<Waker>,
    /// A reloaded policy, and its generation (workers compare it on ticks).
    pub policy: Mutex<Option<Arc<Policy>>>,
    pub policy_gen: AtomicU64,
}

/// Wakes a worker sleeping in poll() when another hands it a frame: an
/// eventfd in its poll set, written only while it sleeps.
pub struct Waker {
    fd: libc::c_int,
    sleeping: AtomicBool,
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

    fn wake(&self) {
        if self.sleeping.load(Ordering::SeqCst) {
            let one: u64 = 1;
            // SAFETY: writes 8 bytes from a live u64 to the eventfd this Waker owns.
            unsafe { libc::write(self.fd, &one as *const u64 as *const libc::c_void, 8) };
        }
    }

    fn drain(&self) {
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

fn socket_err(q: &QueueSpec, what: impl std::fmt::Display) -> String {
    format!("AF_XDP socket on {} queue {}: {what}", q.iface, q.queue)
}

/// An error with its causes, for messages that must say why.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

fn pin(cpu: usize) {
    // SAFETY: `cpu_set_t` is plain old data (zeros = empty set); the call
    // reads `set` for its stated size.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        // Best effort: a restricted cpuset only costs locality.
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
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

struct Setup {
    socks: Vec<Xsk>,
    free: Vec<FrameDesc>,
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

fn setup(spec: &WorkerSpec) -> Result<Setup, String> {
    let ring = QueueSize::new(RING_SIZE).map_err(|e| e.to_string())?;
    let umem = &spec.umem;
    let mut free = spec.frames.clone();
    // Each fill ring gets its share as soon as its socket exists, so no frame
    // arriving during setup finds an empty ring; the rest stays free for TX.
    let share = (free.len() / (spec.queues.len() * 2).max(1)).min(RING_SIZE as usize);
    let sock_cfg = SocketConfig::builder()
        .rx_queue_size(ring)
        .tx_queue_size(ring)
        .bind_flags(BindFlags::XDP_USE_NEED_WAKEUP)
        .build();
    let mut socks = Vec::new();
    for q in &spec.queues {
        let ifname: Interface = q.iface.parse().map_err(|e| socket_err(q, e))?;
        let created = {
            let _g = SOCKET_SETUP.lock().unwrap_or_else(|p| p.into_inner());
            // SAFETY: each (interface, queue) is bound once in the process,
            // so the shared UMEM is never bound twice to one pair.
            unsafe { xsk_rs::Socket::new(sock_cfg, umem, &ifname, q.queue) }
        };
        let (tx, rx, rings) = created.map_err(|e| socket_err(q, chain(&e)))?;
        let (mut fq, cq) = rings.ok_or_else(|| socket_err(q, "no fill/completion rings"))?;
        let start = free.len() - share.min(free.len());
        // SAFETY: the frames come from this UMEM and are owned by no ring.
        let done = unsafe { fq.produce(&free[start..]) };
        free.drain(start..start + done);
        if spec.poll == PollMode::Busy && !set_busy_poll(rx.fd().as_raw_fd()) {
            eprintln!(
                "enforcer: worker {}: busy-poll socket options not supported on {}",
                spec.id, q.iface
            );
        }
        socks.push(Xsk {
            side: q.side,
            tx,
            rx,
            fq,
            cq,
            in_flight: 0,
        });
    }
    Ok(Setup { socks, free })
}

pub struct Channels {
    pub handoff_tx: Vec<Sender<Handoff>>,
    pub handoff_rx: Receiver<Handoff>,
    /// Free frames in transit between workers: frames handed over pile up at
    /// their owner, which gives its surplus here for the others to take.
    pub spare_tx: Sender<FrameDesc>,
    pub spare_rx: Receiver<FrameDesc>,
    pub events: Option<Sender<Logged>>,
}

/// An event on its way to the log writer, with the policy it was decided
/// under: the writer names its endpoints from that policy (see `log`).
pub type Logged = (Event, Arc<Policy>);

/// Run one worker until `shared.stop`. `ready` gets the setup result.
pub fn run(spec: WorkerSpec, ch: Channels, shared: Arc<Shared>, ready: Sender<Result<(), String>>) {
    if let Some(cpu) = spec.cpu {
        pin(cpu);
    }
    let umem = spec.umem.clone();
    let quota = spec.frames.len();
    let Setup {
        mut socks,
        mut free,
    } = match setup(&spec) {
        Ok(s) => {
            let _ = ready.send(Ok(()));
            s
        }
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let mut w = Worker {
        id: spec.id,
        workers: spec.workers,
        judge: match &spec.policy {
            Some(p) => Judge::engine(Engine::new(p.clone(), spec.engine.clone(), spec.id)),
            None => Judge::PassThrough(Box::default()),
        },
        out: Output::default(),
        pending: [Vec::with_capacity(BATCH * 2), Vec::with_capacity(BATCH * 2)],
        dp: DpCounters::default(),
        ch,
        to_wake: 0,
    };
    // The TX socket of each side: the first one this worker has there.
    let tx_sock: [Option<usize>; 2] = [0u8, 1].map(|p| socks.iter().position(|s| s.side == p));

    let t0 = Instant::now();
    let mut last_tick = t0;
    let mut last_publish = t0;
    let mut idle = 0u32;
    let mut policy_gen = 0u64;
    let mut rx_descs: Vec<FrameDesc> = vec![FrameDesc::default(); BATCH];
    let mut cq_descs: Vec<FrameDesc> = vec![FrameDesc::default(); BATCH * 4];
    let mut pollfds: Vec<libc::pollfd> = socks
        .iter()
        .map(|s| libc::pollfd {
            fd: s.rx.fd().as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let me = shared.wakers.get(spec.id as usize);
    if let Some(wk) = me {
        pollfds.push(libc::pollfd {
            fd: wk.fd,
            events: libc::POLLIN,
            revents: 0,
        });
    }

    while !shared.stop.load(Ordering::Relaxed) {
        let now_i = Instant::now();
        let now = now_i.duration_since(t0).as_nanos() as u64;
        let mut work = 0usize;

        // Completed TX frames come back to the free list.
        for s in socks.iter_mut() {
            if s.in_flight == 0 {
                continue;
            }
            // SAFETY: descriptors are written by the ring, frames are ours again.
            let n = unsafe { s.cq.consume(&mut cq_descs) };
            s.in_flight = s.in_flight.saturating_sub(n);
            free.extend_from_slice(&cq_descs[..n]);
            work += n;
        }

        for s in socks.iter_mut() {
            let side = s.side;
            // SAFETY: the RX ring hands us frames of this UMEM.
            let n = unsafe { s.rx.consume(&mut rx_descs) };
            work += n;
            w.dp.rx_frames += n as u64;
            for d in rx_descs.iter_mut().take(n) {
                // SAFETY: the frame was just received; nothing else refers to it.
                let mut data = unsafe { umem.data_mut(d) };
                let frame = data.contents_mut();
                if w.workers > 1 {
                    // 0: non-IP or malformed, judged where it arrived.
                    let h = steering_hash(frame);
                    let owner = (h % w.workers as u64) as usize;
                    if h != 0 && owner != w.id as usize {
                        if !w.hand_over(owner, side, *d) {
                            free.push(*d);
                        }
                        continue;
                    }
                }
                match w.judge.on_frame(side, frame, now, &mut w.out) {
                    Verdict::Forward(p) if (p as usize) < 2 => w.pending[p as usize].push(*d),
                    _ => free.push(*d),
                }
                w.drain_out(&umem, &mut free);
            }
        }
        w.wake_owners(&shared);

        // Frames of our flows received by other workers.
        for _ in 0..BATCH {
            let Ok((side, mut d)) = w.ch.handoff_rx.try_recv() else {
                break;
            };
            work += 1;
            w.dp.handoff_in += 1;
            let v = {
                // SAFETY: the sender gave this frame up; only we refer to it.
                let mut data = unsafe { umem.data_mut(&mut d) };
                w.judge.on_frame(side, data.contents_mut(), now, &mut w.out)
            };
            match v {
                Verdict::Forward(p) if (p as usize) < 2 => w.pending[p as usize].push(d),
                _ => free.push(d),
            }
            w.drain_out(&umem, &mut free);
        }

        if now_i.duration_since(last_tick) >= TICK {
            last_tick = now_i;
            let g = shared.policy_gen.load(Ordering::Acquire);
            if g != policy_gen {
                policy_gen = g;
                let p = shared
                    .policy
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone();
                if let (Some(p), Judge::Engine { engine, .. }) = (p, &mut w.judge) {
                    engine.set_policy(p);
                }
            }
            w.judge.tick(now, &mut w.out);
            w.drain_out(&umem, &mut free);
        }

        // Transmit; what does not fit on the ring is counted and recycled.
        for (p, tx) in tx_sock.iter().enumerate() {
            let pending = &mut w.pending[p];
            if pending.is_empty() {
                continue;
            }
            let Some(s) = tx.and_then(|i| socks.get_mut(i)) else {
                w.dp.tx_ring_full += pending.len() as u64;
                free.append(pending);
                continue;
            };
            // The ring takes a batch whole or not at all: offer what fits.
            let room = (s.tx.nb_free(pending.len() as u32) as usize).min(pending.len());
            // SAFETY: pending frames are ours and hold the bytes to send.
            let sent = unsafe { s.tx.produce(&pending[..room]) };
            s.in_flight += sent;
            w.dp.tx_frames += sent as u64;
            w.dp.tx_ring_full += (pending.len() - sent) as u64;
            free.extend(pending.drain(..).skip(sent));
            work += sent;
        }
        // Copy mode transmits only when kicked; kick while anything is in flight.
        for s in socks.iter_mut() {
            if s.in_flight > 0 && s.tx.needs_wakeup() {
                let _ = s.tx.wakeup();
            }
        }

        // Refill the fill rings.
        for s in socks.iter_mut() {
            if free.is_empty() {
                break;
            }
            let want = s.fq.nb_free(free.len() as u32) as usize;
            if want > 0 {
                let start = free.len() - want.min(free.len());
                // SAFETY: free frames belong to no ring.
                let done = unsafe { s.fq.produce(&free[start..]) };
                free.drain(start..start + done);
            }
        }

        w.rebalance(&mut free, quota);

        if now_i.duration_since(last_publish) >= PUBLISH {
            last_publish = now_i;
            w.publish(&shared, &socks);
        }

        if work > 0 {
            idle = 0;
            continue;
        }
        idle += 1;
        match spec.poll {
            PollMode::Busy => {
                for s in socks.iter_mut() {
                    if s.fq.needs_wakeup() {
                        // recvfrom-style kick via a zero-timeout poll
                        let _ = s.fq.wakeup(s.rx.fd_mut(), 0);
                    }
                }
                std::hint::spin_loop();
            }
            PollMode::Adaptive if idle >= IDLE_SPINS => {
                // Sleep until a frame arrives or is handed over, at most one
                // tick (timers, stop).
                if let Some(wk) = me {
                    wk.sleeping.store(true, Ordering::SeqCst);
                }
                if w.ch.handoff_rx.is_empty() {
                    // SAFETY: `pollfds` is a live array of `len()` entries.
                    unsafe { libc::poll(pollfds.as_mut_ptr(), pollfds.len() as libc::nfds_t, 1) };
                }
                if let Some(wk) = me {
                    wk.sleeping.store(false, Ordering::SeqCst);
                    wk.drain();
                }
                idle = 0;
            }
            PollMode::Adaptive => std::hint::spin_loop(),
        }
    }
    let held = account(&mut socks, &mut free, &mut cq_descs);
    w.publish(&shared, &socks);
    if let Some(slot) = shared.stats.get(w.id as usize) {
        slot.lock().unwrap_or_else(|p| p.into_inner()).frames_held = held;
    }
    // Sockets and rings drop here: the kernel releases the queues.
}

/// Keep a free list near half its quota: give a surplus (frames handed over
/// by other workers pile up at their flow's owner) to the spare pool, take
/// from it when running low. Returns (given, taken).
fn rebalance(
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

/// For the leak check at shutdown: the frames this worker holds, free, on a
/// fill or RX ring, or in flight on a TX ring.
fn account(socks: &mut [Xsk], free: &mut Vec<FrameDesc>, cq_descs: &mut [FrameDesc]) -> u64 {
    // Let copy-mode TX finish and collect its completions.
    for _ in 0..50 {
        let mut busy = false;
        for s in socks.iter_mut() {
            if s.in_flight == 0 {
                continue;
            }
            busy = true;
            let _ = s.tx.wakeup();
            // SAFETY: completed descriptors are ours again.
            let n = unsafe { s.cq.consume(cq_descs) };
            s.in_flight = s.in_flight.saturating_sub(n);
            free.extend_from_slice(&cq_descs[..n]);
        }
        if !busy {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let mut held = free.len() as u64;
    for s in socks.iter_mut() {
        held += s.in_flight as u64;
        held += (RING_SIZE - s.fq.nb_free_exact().min(RING_SIZE)) as u64;
        held += s.rx.nb_avail_exact() as u64;
    }
    held
}

struct Worker {
    id: u16,
    workers: usize,
    judge: Judge,
    out: Output,
    pending: [Vec<FrameDesc>; 2],
    dp: DpCounters,
    ch: Channels,
    /// Workers handed a frame during this batch (bit per worker).
    to_wake: u64,
}

impl Worker {
    fn wake_owners(&mut self, shared: &Shared) {
        while self.to_wake != 0 {
            let i = self.to_wake.trailing_zeros() as usize;
            self.to_wake &= self.to_wake - 1;
            for wk in shared.wakers.iter().skip(i).step_by(64) {
                wk.wake();
            }
        }
    }

    /// Give a frame to its flow's owner; false when it could not be (the
    /// frame is then still ours, and dropped).
    fn hand_over(&mut self, owner: usize, side: Side, d: FrameDesc) -> bool {
        let Some(tx) = self.ch.handoff_tx.get(owner) else {
            return false;
        };
        match tx.try_send((side, d)) {
            Ok(()) => {
                self.dp.handoff_out += 1;
                self.to_wake |= 1u64 << (owner % 64);
                true
            }
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.dp.handoff_full += 1;
                false
            }
        }
    }

    fn rebalance(&mut self, free: &mut Vec<FrameDesc>, quota: usize) {
        if self.workers > 1 {
            let (given, taken) = rebalance(free, quota, &self.ch.spare_tx, &self.ch.spare_rx);
            self.dp.frames_to_spare += given;
            self.dp.frames_from_spare += taken;
        }
    }

    /// Copy bytes into a free UMEM frame queued for TX on `side`.
    fn copy_out(&mut self, umem: &Umem, free: &mut Vec<FrameDesc>, side: Side, bytes: &[u8]) {
        if side > 1 {
            return;
        }
        if bytes.len() > FRAME_DATA as usize {
            self.dp.frame_too_large += 1;
            return;
        }
        let Some(mut d) = free.pop() else {
            self.dp.no_free_frame += 1;
            return;
        };
        {
            // SAFETY: a free frame is referenced by no ring.
            let mut data = unsafe { umem.data_mut(&mut d) };
            let mut c = data.cursor();
            c.set_pos(0);
            if c.write_all(bytes).is_err() {
                self.dp.frame_too_large += 1;
                free.push(d);
                return;
            }
        }
        self.pending[side as usize].push(d);
    }

    fn drain_out(&mut self, umem: &Umem, free: &mut Vec<FrameDesc>) {
        if self.out.emits.is_empty() && self.out.events.is_empty() {
            return;
        }
        let emits = std::mem::take(&mut self.out.emits);
        for e in &emits {
            self.copy_out(umem, free, e.side, &e.frame);
        }
        self.out.emits = emits;
        self.out.emits.clear();
        let policy = match &self.judge {
            Judge::Engine { engine, .. } => Some(engine.policy()),
            Judge::PassThrough(_) => None,
        };
        for ev in self.out.events.drain(..) {
            if let (Some(tx), Some(p)) = (&self.ch.events, policy) {
                if tx.try_send((ev, p.clone())).is_err() {
                    self.dp.events_dropped += 1;
                }
            }
        }
    }

    fn publish(&mut self, shared: &Shared, socks: &[Xsk]) {
        let mut dp = self.dp.clone();
        dp.engine_panics = self.judge.panics();
        for s in socks {
            if let Ok(st) = s.rx.fd().xdp_statistics() {
                dp.xdp_rx_dropped += st.rx_dropped();
                dp.xdp_rx_ring_full += st.rx_ring_full();
                dp.xdp_fill_ring_empty += st.rx_fill_ring_empty_descs();
                dp.xdp_invalid_descs += st.rx_invalid_descs() + st.tx_invalid_descs();
            }
        }
        if let Some(slot) = shared.stats.get(self.id as usize) {
            let mut g = slot.lock().unwrap_or_else(|p| p.into_inner());
            g.dp = dp;
            g.engine = self.judge.counters();
        }
    }
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
