//! One worker: its links (inline: an AF_XDP socket per owned RX queue of
//! each side; host mode: AF_XDP sockets on `--iface` and a TAP queue), its
//! own engine and flows, and the loop. Frames move from RX to TX inside the
//! shared UMEM without copies, also when handed to the worker that owns
//! their flow; only emitted frames are copied in.
//!
//! The loop's stages, each turn: reclaim sent frames · receive and judge
//! (or hand over) · judge frames handed to us · timers · transmit · refill ·
//! rebalance free frames · publish counters · sleep when idle.

use std::io::Write;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Sender, TrySendError};
use xsk_rs::{FrameDesc, Umem};

use super::handoff::{rebalance, Channels, Handoff, Waker};
use super::kpath::{FenceSlot, Ranges};
use super::link::{Link, Rewrite};
use super::stats::{DpCounters, SideCount, TallyBook, WorkerStats};
use super::xsk::{QueueSpec, Steer, Xsk, BATCH, FRAME_DATA, RING_SIZE};
use super::PollMode;
use crate::config::EngineConfig;
use crate::counters::Counters;
use crate::engine::{steering_hash, Engine};
use crate::hostmode::l2::{Mac, Neighbors, L2};
use crate::hostmode::tap::Tap;
use crate::log::Event;
use crate::policy::Policy;
use crate::verdict::{other, Output, Side, Verdict};

const TICK: Duration = Duration::from_millis(1);
const PUBLISH: Duration = Duration::from_millis(100);
/// Frames waiting for one owner that its channel could not take yet: as
/// many as a socket's RX ring holds, what the owner would have had queued
/// had the frames reached it directly.
const HANDOFF_HOLD: usize = super::xsk::RING_SIZE as usize;
/// The longest an idle adaptive worker sleeps: flow expiry and published
/// counters are this late at most. Frames, hand-offs, a stop or a reload
/// wake it at once (fds and its waker); the engine's own timers (an owned
/// retransmission, a head timeout) set a shorter sleep.
const MAX_SLEEP_MS: u64 = 100;
/// How an adaptive worker waits for more work before it sleeps in poll():
/// at least `turns` empty loop turns and at least `linger_ns` since the last
/// turn that found work; `yield_core` gives the core away on each empty turn
/// (`sched_yield`) to whatever else is runnable on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Idle {
    pub turns: u32,
    pub linger_ns: u64,
    pub yield_core: bool,
}

/// Inline: the worker's cores are the enforcer's, and a spinning worker sees
/// the next frame without a wake-up. (Host mode's wait, 100 µs yielding,
/// measured within the noise of this under memaslap on two shared cores:
/// README, Performance.)
pub const INLINE_IDLE: Idle = Idle {
    turns: 200,
    linger_ns: 0,
    yield_core: false,
};
/// Host mode: the worker shares its cores with the services it protects,
/// and what it waits for is mostly their answer to a frame it just wrote
/// into the TAP, which comes back some tens of µs later from the host's
/// stack on another core (RPS). A worker that slept after 16 empty turns
/// (a few µs) paid a wake-up for nearly every answer, and on a VM's idle
/// vCPU a wake-up costs more than the work. So it stays awake 100 µs after
/// the last work; an idle host still sleeps (the wait counts from the last
/// work, not from a wake-up). Each empty turn gives the core away
/// (`sched_yield`), so that the services it waits for run first when they
/// share its core; a plain spin did worse in `bench/host.sh` (figures in
/// docs/dataplane.md, Host mode).
pub const HOST_IDLE: Idle = Idle {
    turns: 16,
    linger_ns: 100_000,
    yield_core: true,
};

/// Host mode's idle wait, with private overrides for measuring others:
/// `ENFORCER_HOST_IDLE=TURNS,LINGER_US,yield|spin`.
pub const HOST_IDLE_ENV: &str = "ENFORCER_HOST_IDLE";

/// Inline mode's, the same way: `ENFORCER_INLINE_IDLE=TURNS,LINGER_US,yield|spin`.
pub const INLINE_IDLE_ENV: &str = "ENFORCER_INLINE_IDLE";

pub fn host_idle() -> Result<Idle, String> {
    idle_from_env(HOST_IDLE_ENV, HOST_IDLE)
}

pub fn inline_idle() -> Result<Idle, String> {
    idle_from_env(INLINE_IDLE_ENV, INLINE_IDLE)
}

fn idle_from_env(var: &str, default: Idle) -> Result<Idle, String> {
    match std::env::var(var) {
        Ok(v) => parse_idle(&v).ok_or_else(|| {
            format!("{var}={v:?}: want TURNS,LINGER_US,yield|spin (e.g. 16,100,yield)")
        }),
        Err(_) => Ok(default),
    }
}

fn parse_idle(v: &str) -> Option<Idle> {
    let f: Vec<&str> = v.split(',').map(str::trim).collect();
    let [turns, linger, how] = f[..] else {
        return None;
    };
    Some(Idle {
        turns: turns.parse().ok()?,
        linger_ns: linger.parse::<u64>().ok()?.checked_mul(1_000)?,
        yield_core: match how {
            "yield" => true,
            "spin" => false,
            _ => return None,
        },
    })
}

pub enum LinkSpec {
    Queue(QueueSpec),
    /// Host mode: this worker's queue of the re-entry TAP (side 1).
    Tap(Tap),
    /// Host mode: this worker's queue of the re-entry veth's far end (side
    /// 1), opened from inside its namespace `netns`, bound into `map`.
    Veth {
        q: QueueSpec,
        netns: std::os::fd::RawFd,
        map: std::os::fd::RawFd,
    },
}

/// Host mode's MAC addresses: `--iface`'s and the TAP's.
#[derive(Debug, Clone, Copy)]
pub struct HostMacs {
    pub iface: Mac,
    pub tap: Mac,
}

pub struct WorkerSpec {
    pub id: u16,
    pub workers: usize,
    pub links: Vec<LinkSpec>,
    pub umem: Umem,
    /// This worker's initial share of the UMEM's frames.
    pub frames: Vec<FrameDesc>,
    pub poll: PollMode,
    pub cpu: Option<usize>,
    pub policy: Option<Arc<Policy>>,
    pub engine: EngineConfig,
    pub steer: Steer,
    pub host: Option<HostMacs>,
    /// How long to wait, idle, before sleeping (adaptive poll).
    pub idle: Idle,
    /// Inline with the kernel path: the range map this worker writes, and
    /// (one worker only) the program's counters to publish.
    pub kpath: Option<KpathFds>,
}

#[derive(Clone)]
pub struct KpathFds {
    pub ranges: std::os::fd::RawFd,
    pub stats: Option<std::os::fd::RawFd>,
    /// The program's ordering fences, one per socket (`kpath::FenceSlot`).
    pub fences: Arc<super::kpath::Fences>,
}

/// An event on its way to the log writer, with the policy it was decided
/// under: the writer names its endpoints from that policy (see `log`).
pub type Logged = (Event, Arc<Policy>);

pub struct Shared {
    pub stop: AtomicBool,
    pub stats: Vec<Mutex<WorkerStats>>,
    pub wakers: Vec<Waker>,
    /// A reloaded policy, and its generation (workers compare it on ticks).
    pub policy: Mutex<Option<Arc<Policy>>>,
    pub policy_gen: AtomicU64,
    /// Host mode: the kernel's neighbours of `--iface`, and their generation.
    pub neighbors: Mutex<Arc<Neighbors>>,
    pub neighbors_gen: AtomicU64,
    /// Whether anything reads events (`--log`, an observer). When nothing
    /// does, workers only count their decisions: an event handed to the
    /// event thread for every allowed request cost a wake-up of that thread
    /// each, 14-20 % of the enforcer's CPU under an HTTP load.
    pub listening: AtomicBool,
}

impl Shared {
    /// Wake sleeping workers after a change they must see now (stop, a new
    /// policy, new neighbours): an idle worker sleeps up to `MAX_SLEEP_MS`.
    pub fn wake_all(&self) {
        for wk in &self.wakers {
            wk.wake();
        }
    }
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

    /// How long an idle worker may sleep before the core needs a tick.
    fn sleep_ms(&self, now: u64) -> u64 {
        match self {
            Judge::Engine { engine, .. } => match engine.next_timer() {
                // Round up: a wake-up just before the deadline is a wasted one.
                Some(d) => d
                    .saturating_sub(now)
                    .div_ceil(1_000_000)
                    .clamp(1, MAX_SLEEP_MS),
                None => MAX_SLEEP_MS,
            },
            Judge::PassThrough(_) => MAX_SLEEP_MS,
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

    fn held_bytes(&self) -> u64 {
        match self {
            Judge::Engine { engine, .. } => engine.held_total() as u64,
            Judge::PassThrough(_) => 0,
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

/// Open this worker's links. Each AF_XDP fill ring gets its share of frames
/// as soon as its socket exists; the rest stays free for TX and the TAP.
fn open_links(
    spec: &mut WorkerSpec,
    shared: &Shared,
    free: &mut Vec<FrameDesc>,
) -> Result<Vec<Link>, String> {
    let queues = spec
        .links
        .iter()
        .filter(|l| matches!(l, LinkSpec::Queue(_) | LinkSpec::Veth { .. }))
        .count();
    let share = (free.len() / (queues * 2).max(1)).min(RING_SIZE as usize);
    let neighbors = shared
        .neighbors
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let mut links = Vec::new();
    for l in std::mem::take(&mut spec.links) {
        match l {
            LinkSpec::Queue(q) => {
                let busy = spec.poll == PollMode::Busy;
                let x = Xsk::open(&spec.umem, &q, spec.steer, busy, free, share)?;
                let rewrite = match spec.host {
                    Some(m) if q.side == 0 => {
                        Rewrite::to_wire(L2::new(m.iface, m.tap), neighbors.clone())
                    }
                    _ => Rewrite::None,
                };
                let mut link = Link::xsk(q.side, x, rewrite);
                if let Some(k) = &spec.kpath {
                    if let Some(f) = FenceSlot::new(k.fences.clone(), q.side, q.queue) {
                        link.set_fence(f);
                    }
                }
                links.push(link);
            }
            LinkSpec::Tap(t) => {
                let mac = spec.host.map(|m| m.tap).unwrap_or([0xff; 6]);
                links.push(Link::tap(1, t, Rewrite::ToHost(mac)));
            }
            LinkSpec::Veth { q, netns, map } => {
                let busy = spec.poll == PollMode::Busy;
                // This worker's first socket (on `--iface`) is open by now:
                // the UMEM's own fd, made in this namespace, is never the
                // one bound to the far end.
                let x = crate::hostmode::veth::within(netns, || {
                    Xsk::open(&spec.umem, &q, Steer::XskMap(map), busy, free, share)
                })??;
                let mac = spec.host.map(|m| m.tap).unwrap_or([0xff; 6]);
                links.push(Link::xsk(1, x, Rewrite::ToHost(mac)));
            }
        }
    }
    Ok(links)
}

/// Run one worker until `shared.stop`. `ready` gets the setup result.
pub fn run(
    mut spec: WorkerSpec,
    ch: Channels,
    shared: Arc<Shared>,
    ready: Sender<Result<(), String>>,
) {
    if let Some(cpu) = spec.cpu {
        pin(cpu);
    }
    let quota = spec.frames.len();
    let mut free = std::mem::take(&mut spec.frames);
    let links = match open_links(&mut spec, &shared, &mut free) {
        Ok(l) => l,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    // The link each side transmits on: the first one this worker has there.
    let tx_link: [Option<usize>; 2] = [0u8, 1].map(|p| links.iter().position(|l| l.side == p));
    let mut w = Worker {
        shared: shared.clone(),
        tally: TallyBook::default(),
        id: spec.id,
        workers: spec.workers,
        umem: spec.umem.clone(),
        judge: match &spec.policy {
            Some(p) => Judge::engine(Engine::new(p.clone(), spec.engine.clone(), spec.id)),
            None => Judge::PassThrough(Box::default()),
        },
        out: Output::default(),
        pending: [Vec::with_capacity(BATCH * 2), Vec::with_capacity(BATCH * 2)],
        tx_weight: [0; 2],
        dp: DpCounters::default(),
        sides: [SideCount::default(); 2],
        busy_ns: 0,
        run_ns: 0,
        outbox: (0..spec.workers).map(|_| Vec::new()).collect(),
        ch,
        to_wake: 0,
        links,
        tx_link,
        free,
        quota,
        rx_descs: vec![FrameDesc::default(); BATCH],
        // A whole completion ring a turn: TX drains whole rings now.
        cq_descs: vec![FrameDesc::default(); RING_SIZE as usize],
        policy_gen: 0,
        neighbors_gen: shared.neighbors_gen.load(Ordering::Acquire),
        ranges: spec.kpath.as_ref().map(|k| Ranges::new(k.ranges)),
        kpath_stats: spec.kpath.as_ref().and_then(|k| k.stats),
        fence_resyncs: 0,
        panics_seen: 0,
    };

    let mut pollfds: Vec<libc::pollfd> = w
        .links
        .iter()
        .map(|l| libc::pollfd {
            fd: l.pollfd(),
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

    // Ready once the control plane can see this worker's sockets.
    w.publish();
    let _ = ready.send(Ok(()));
    let t0 = Instant::now();
    let mut last_tick = t0;
    let mut last_publish = t0;
    let mut idle = 0u32;
    let mut last_turn = (t0, false);
    let mut last_work = t0;
    // At least one: `idle_spins * 16` bounds the wait for an unsent TX ring.
    let idle_spins = spec.idle.turns.max(1);
    let linger = Duration::from_nanos(spec.idle.linger_ns);
    while !shared.stop.load(Ordering::Relaxed) {
        let now_i = Instant::now();
        let now = now_i.duration_since(t0).as_nanos() as u64;
        // Busy time: the length of every turn that found work.
        if last_turn.1 {
            w.busy_ns += now_i.duration_since(last_turn.0).as_nanos() as u64;
        }
        w.run_ns = now;
        if spec.poll == PollMode::Busy {
            // Every turn, not only idle ones: under load this thread, not a
            // softirq, runs the devices' RX.
            for l in w.links.iter_mut() {
                l.busy_poll();
            }
        }
        let mut work = w.reclaim();
        work += w.receive(now);
        w.wake_owners();
        work += w.take_handoffs(now);
        if now_i.duration_since(last_tick) >= TICK {
            last_tick = now_i;
            w.follow_control();
            w.expire_held(now);
            w.judge.tick(now, &mut w.out);
            w.drain_out();
        }
        // Fences are synced side by side inside (`transmit`).
        work += w.transmit(now);
        w.refill();
        w.rebalance();
        if now_i.duration_since(last_publish) >= PUBLISH {
            last_publish = now_i;
            w.publish();
        }

        last_turn = (now_i, work > 0);
        if work > 0 {
            idle = 0;
            last_work = now_i;
            continue;
        }
        idle += 1;
        let lingering = now_i.duration_since(last_work) < linger;
        match spec.poll {
            PollMode::Busy => {}
            // Never asleep with frames still on a TX ring: copy mode sends
            // them only when kicked, and a sleeper does not kick.
            // (Bounded: a TX ring the kernel does not take, a link down,
            // must not keep the worker spinning.)
            PollMode::Adaptive
                if idle >= idle_spins
                    && !lingering
                    && (idle >= idle_spins * 16 || !w.tx_unsent()) =>
            {
                // Sleep until a frame arrives or is handed over, the control
                // plane wakes us (stop, reload), or the core's next timer.
                if let Some(wk) = me {
                    wk.sleeping.store(true, Ordering::SeqCst);
                }
                let mut polled = false;
                // Checked after `sleeping` is set: a stop or hand-off that came
                // before it is seen here, one after it writes the waker.
                if w.ch.handoff_rx.is_empty() && !shared.stop.load(Ordering::SeqCst) {
                    // Frames the kernel did not take yet: kick again soon.
                    let ms = if w.tx_unsent() {
                        1
                    } else {
                        w.judge.sleep_ms(now)
                    } as libc::c_int;
                    for p in pollfds.iter_mut() {
                        p.revents = 0;
                    }
                    // SAFETY: `pollfds` is a live array of its stated length.
                    let rc = unsafe {
                        libc::poll(pollfds.as_mut_ptr(), pollfds.len() as libc::nfds_t, ms)
                    };
                    polled = rc >= 0;
                }
                if let Some(wk) = me {
                    wk.sleeping.store(false, Ordering::SeqCst);
                    wk.drain();
                }
                // poll() just looked at every link: a TAP it did not find
                // readable need not be read now (an empty read is a syscall).
                let now = t0.elapsed().as_nanos() as u64;
                for (l, p) in w.links.iter_mut().zip(&pollfds) {
                    l.woken(!polled || p.revents != 0, now);
                }
                idle = 0;
            }
            // SAFETY: no arguments; it only gives up the rest of the slice.
            PollMode::Adaptive if spec.idle.yield_core => unsafe {
                libc::sched_yield();
            },
            PollMode::Adaptive => std::hint::spin_loop(),
        }
    }
    // The program forwards none of our flows' segments once we are gone.
    if let Some(r) = w.ranges.as_mut() {
        r.clear();
    }
    let held = w.settle();
    w.publish();
    if let Some(slot) = shared.stats.get(w.id as usize) {
        slot.lock().unwrap_or_else(|p| p.into_inner()).frames_held = held;
    }
    // Links drop here: the kernel releases the queues.
}

struct Worker {
    shared: Arc<Shared>,
    /// Decisions counted here, published with the counters.
    tally: TallyBook,
    id: u16,
    workers: usize,
    umem: Umem,
    judge: Judge,
    out: Output,
    /// Frames to transmit, per side.
    pending: [Vec<FrameDesc>; 2],
    /// Bytes pending per side, a moving sum over turns (`transmit`).
    tx_weight: [u64; 2],
    dp: DpCounters,
    sides: [SideCount; 2],
    busy_ns: u64,
    run_ns: u64,
    ch: Channels,
    /// Frames for each other worker, sent once per receive turn.
    outbox: Vec<Handoff>,
    /// Workers handed a frame during this batch (bit per worker).
    to_wake: u64,
    links: Vec<Link>,
    tx_link: [Option<usize>; 2],
    free: Vec<FrameDesc>,
    quota: usize,
    rx_descs: Vec<FrameDesc>,
    cq_descs: Vec<FrameDesc>,
    policy_gen: u64,
    neighbors_gen: u64,
    /// The kernel path's range map, as this worker wrote it.
    ranges: Option<Ranges>,
    kpath_stats: Option<std::os::fd::RawFd>,
    /// Fence counts put right (`FenceSlot::check`), over all links.
    fence_resyncs: u64,
    /// Engine panics already seen: a replaced engine forgot its flows
    /// without withdrawing their ranges, so this worker withdraws them all.
    panics_seen: u64,
}

impl Worker {
    /// Completed TX frames come back to the free list.
    fn reclaim(&mut self) -> usize {
        let mut n = 0;
        for l in self.links.iter_mut() {
            n += l.reclaim(&mut self.free, &mut self.cq_descs);
        }
        n
    }

    /// Receive on every link; judge each frame here or hand it to the
    /// worker that owns its flow.
    fn receive(&mut self, now: u64) -> usize {
        let mut work = 0;
        for li in 0..self.links.len() {
            let side = self.links[li].side;
            let n = self.links[li].recv(&self.umem, &mut self.free, &mut self.rx_descs, now);
            work += n;
            self.dp.rx_frames += n as u64;
            for i in 0..n {
                let mut d = self.rx_descs[i];
                if self.workers > 1 {
                    // SAFETY: the frame was just received; nothing else refers to it.
                    let h = steering_hash(unsafe { self.umem.data(&d) }.contents());
                    // 0: non-IP or malformed, judged where it arrived.
                    let owner = (h % self.workers as u64) as usize;
                    if h != 0 && owner != self.id as usize {
                        self.hand_over(owner, side, d);
                        continue;
                    }
                }
                self.judge(side, &mut d, now);
            }
        }
        self.send_handoffs();
        work
    }

    /// Frames of our flows received by other workers.
    fn take_handoffs(&mut self, now: u64) -> usize {
        let mut n = 0;
        // Up to four batches from each other worker a turn: each may have
        // handed over a batch since our last turn, and a channel that only
        // drains as fast as it fills overflows (`handoff_full`).
        for _ in 0..4 * self.workers.max(2) {
            let Ok(mut batch) = self.ch.handoff_rx.try_recv() else {
                break;
            };
            n += batch.len();
            self.dp.handoff_in += batch.len() as u64;
            self.dp.handoff_batches_in += 1;
            for (side, mut d) in batch.drain(..) {
                if let Some(l) = self.tx_link[side as usize & 1].and_then(|i| self.links.get_mut(i))
                {
                    // SAFETY: the sender gave this frame up; only we refer to it.
                    l.observe(unsafe { self.umem.data(&d) }.contents());
                }
                self.judge(side, &mut d, now);
            }
            self.ch.pools.handoffs.give(batch);
        }
        n
    }

    /// The engine's verdict on one frame: queue it for TX or free it, then
    /// whatever the engine emitted.
    fn judge(&mut self, side: Side, d: &mut FrameDesc, now: u64) {
        let (v, len) = {
            // SAFETY: the frame is ours (received or handed over).
            let mut data = unsafe { self.umem.data_mut(d) };
            let frame = data.contents_mut();
            let len = frame.len() as u64;
            (self.judge.on_frame(side, frame, now, &mut self.out), len)
        };
        let c = &mut self.sides[side as usize & 1];
        match v {
            Verdict::Forward(_) => (c.forwarded_frames += 1, c.forwarded_bytes += len),
            Verdict::Drop(_) => (c.dropped_frames += 1, c.dropped_bytes += len),
            Verdict::Consumed => (c.consumed_frames += 1, c.consumed_bytes += len),
        };
        match v {
            Verdict::Forward(p) if (p as usize) < 2 => self.pending[p as usize].push(*d),
            _ => self.free.push(*d),
        }
        self.drain_out();
    }

    /// On ticks: a reloaded policy, a fresher neighbour snapshot.
    fn follow_control(&mut self) {
        let g = self.shared.policy_gen.load(Ordering::Acquire);
        if g != self.policy_gen {
            self.policy_gen = g;
            let p = self
                .shared
                .policy
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            if let (Some(p), Judge::Engine { engine, .. }) = (p, &mut self.judge) {
                engine.set_policy(p);
            }
        }
        let g = self.shared.neighbors_gen.load(Ordering::Acquire);
        if g != self.neighbors_gen {
            self.neighbors_gen = g;
            let n = self
                .shared
                .neighbors
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            // Frames held for a next hop it resolves go out this turn.
            for l in self.links.iter_mut() {
                let out = &mut self.pending[l.side as usize & 1];
                l.set_neighbors(n.clone(), &self.umem, out, &mut self.dp);
            }
        }
    }

    fn expire_held(&mut self, now: u64) {
        for l in self.links.iter_mut() {
            l.expire_held(now, &mut self.free, &mut self.dp);
        }
    }

    /// Send what is pending on each side's link; kick copy-mode TX, one
    /// side after the other, and open the fences of the frames that side
    /// carried as soon as it is done.
    ///
    /// The order matters on a veth (docs/dataplane.md, "The ordering
    /// fence"): copy-mode TX runs the far end's receive inside our
    /// `sendto`, so frames we send on side X make its end answer into X's
    /// RX at once: ACKs we forward to a sender bring its next segments.
    /// Those may take the kernel path only if X's fence is open then, that
    /// is once every frame we took from X went out on the other side. So
    /// the side carrying the bulk (more bytes pending, over the last
    /// turns) goes first, then the fences of the RX links whose frames it
    /// carried, then the other side, then the remaining fences. A fence
    /// says how far we got with its socket's ring once everything we
    /// forwarded of it is with the kernel (kpath.bpf.c, `struct fence`).
    /// Frames handed to another worker count as dealt with when handed
    /// over: with several workers and no symmetric RSS a range's first
    /// segments may still overtake a few handed ones (docs/dataplane.md,
    /// Kernel path).
    fn transmit(&mut self, now: u64) -> usize {
        let mut work = 0;
        // Bytes pending per side, smoothed over the turns that send (x 8):
        // bytes, not frames, since a receiver that acknowledges every
        // segment sends as many ACKs as it gets data frames; smoothed, since
        // a turn that ends a burst has little either way, and should keep
        // the burst's order.
        // Only the kernel path's fences need the order: elsewhere (host
        // mode, `--kernel-path off`) the sides go in their fixed order, as
        // measured before (docs/dataplane.md, Host mode).
        let ordered = self.ranges.is_some();
        if ordered && self.pending.iter().any(|p| !p.is_empty()) {
            for (w, p) in self.tx_weight.iter_mut().zip(&self.pending) {
                let bytes: usize = p.iter().map(|d| d.lengths().data()).sum();
                *w = *w - *w / 8 + bytes as u64;
            }
        }
        let first = usize::from(ordered && self.tx_weight[1] > self.tx_weight[0]);
        for p in [first, first ^ 1] {
            work += self.send_side(p, now);
            // Copy mode transmits only when kicked; kick while anything is
            // in flight.
            for l in self.links.iter_mut().filter(|l| usize::from(l.side) == p) {
                l.kick(&self.umem);
            }
            // Every frame towards side p is with the kernel: frames taken
            // from the other side's rings are dealt with.
            if self.sent_towards(p) {
                for l in self.links.iter_mut().filter(|l| usize::from(l.side) != p) {
                    l.sync_fence();
                }
            }
        }
        work
    }

    /// Put side p's pending frames on its TX link.
    fn send_side(&mut self, p: usize, now: u64) -> usize {
        if self.pending[p].is_empty() {
            return 0;
        }
        let Some(l) = self.tx_link[p].and_then(|i| self.links.get_mut(i)) else {
            self.dp.tx_ring_full += self.pending[p].len() as u64;
            self.free.append(&mut self.pending[p]);
            return 0;
        };
        l.send(
            &self.umem,
            &mut self.pending[p],
            &mut self.free,
            &mut self.dp,
            self.ch.misses.as_ref(),
            now,
        )
    }

    /// With the kernel path: nothing we forwarded towards side p waits on
    /// our side (none pending, its TX rings empty), the condition of the
    /// fences of the other side's RX rings.
    fn sent_towards(&mut self, p: usize) -> bool {
        self.ranges.is_some()
            && self.pending[p].is_empty()
            // Frames waiting for another worker's channel are not handed
            // over yet (`send_handoffs`).
            && self.outbox.iter().all(|b| b.is_empty())
            && self
                .links
                .iter_mut()
                .filter(|l| usize::from(l.side) == p)
                .all(|l| l.tx_unsent() == 0)
    }

    fn tx_unsent(&mut self) -> bool {
        self.links.iter_mut().any(|l| l.tx_unsent() > 0)
    }

    fn refill(&mut self) {
        for l in self.links.iter_mut() {
            if self.free.is_empty() {
                break;
            }
            l.refill(&mut self.free);
        }
    }

    fn wake_owners(&mut self) {
        while self.to_wake != 0 {
            let i = self.to_wake.trailing_zeros() as usize;
            self.to_wake &= self.to_wake - 1;
            for wk in self.shared.wakers.iter().skip(i).step_by(64) {
                wk.wake();
            }
        }
    }

    /// Queue a frame for its flow's owner (sent by `send_handoffs`). An
    /// outbox its owner has not taken from for a while (`HANDOFF_HOLD`
    /// frames waiting) drops the frame, counted in `handoff_full`.
    fn hand_over(&mut self, owner: usize, side: Side, d: FrameDesc) {
        match self.outbox.get_mut(owner) {
            Some(b) if b.len() >= HANDOFF_HOLD => {
                self.dp.handoff_full += 1;
                self.free.push(d);
            }
            Some(b) => {
                if b.capacity() == 0 {
                    *b = self.ch.pools.handoffs.take();
                }
                b.push((side, d));
            }
            None => self.free.push(d),
        }
    }

    /// Send each owner its batch, one channel operation each. A batch the
    /// owner cannot take now (its channel is full) stays in the outbox and
    /// grows, to go whole on a later turn: under adaptive poll a turn hands
    /// over a few frames, so the channel's batches hold a few hundred
    /// frames, a scheduler's time slice of an owner that shares its core
    /// (measured: 6 % of the handed frames dropped at 1 000 flows with two
    /// workers while a core had idle time). Only a worker gone drops.
    fn send_handoffs(&mut self) {
        for owner in 0..self.outbox.len() {
            if self.outbox[owner].is_empty() {
                continue;
            }
            let next = self.ch.pools.handoffs.take();
            let batch = std::mem::replace(&mut self.outbox[owner], next);
            let n = batch.len() as u64;
            // (`outbox` has a batch per worker, and so does `handoff_tx`.)
            let sent = match self.ch.handoff_tx.get(owner) {
                Some(tx) => tx.try_send(batch),
                None => Err(TrySendError::Disconnected(batch)),
            };
            match sent {
                Ok(()) => {
                    self.dp.handoff_out += n;
                    self.dp.handoff_batches_out += 1;
                    self.to_wake |= 1u64 << (owner % 64);
                }
                Err(TrySendError::Full(b)) => {
                    // Back where it was, in order; the owner has work to do.
                    let next = std::mem::replace(&mut self.outbox[owner], b);
                    self.ch.pools.handoffs.give(next);
                    self.to_wake |= 1u64 << (owner % 64);
                }
                Err(TrySendError::Disconnected(mut b)) => {
                    self.dp.handoff_full += n;
                    self.free.extend(b.drain(..).map(|(_, d)| d));
                    self.ch.pools.handoffs.give(b);
                }
            }
        }
    }

    fn rebalance(&mut self) {
        if self.workers > 1 {
            let (given, taken) = rebalance(
                &mut self.free,
                self.quota,
                &self.ch.spare_tx,
                &self.ch.spare_rx,
                &self.ch.pools.spares,
            );
            self.dp.frames_to_spare += given;
            self.dp.frames_from_spare += taken;
        }
    }

    /// Copy bytes into a free UMEM frame queued for TX on `side`.
    fn copy_out(&mut self, side: Side, bytes: &[u8]) {
        if side > 1 {
            return;
        }
        if bytes.len() > FRAME_DATA as usize {
            self.dp.frame_too_large += 1;
            return;
        }
        let Some(mut d) = self.free.pop() else {
            self.dp.no_free_frame += 1;
            return;
        };
        {
            // SAFETY: a free frame is referenced by no ring.
            let mut data = unsafe { self.umem.data_mut(&mut d) };
            let mut c = data.cursor();
            c.set_pos(0);
            if c.write_all(bytes).is_err() {
                self.dp.frame_too_large += 1;
                self.free.push(d);
                return;
            }
        }
        self.pending[side as usize].push(d);
    }

    /// Ranges the engine published go to the map as they come: one per
    /// large body and a renewal when its segments' ack or window moves, a
    /// syscall each, never one per frame.
    fn apply_ranges(&mut self) {
        let panics = self.judge.panics();
        match self.ranges.as_mut() {
            Some(m) => {
                if panics != self.panics_seen {
                    self.panics_seen = panics;
                    m.clear();
                }
                for r in self.out.ranges.drain(..) {
                    m.apply(&r);
                }
            }
            None => self.out.ranges.clear(),
        }
    }

    /// With the kernel path: nothing we forwarded waits on our side (none
    /// pending, the TX rings empty), the fences' condition.
    fn all_sent(&mut self) -> bool {
        self.ranges.is_some()
            && self.pending.iter().all(|p| p.is_empty())
            && self.outbox.iter().all(|b| b.is_empty())
            && !self.tx_unsent()
    }

    fn drain_out(&mut self) {
        if !self.out.ranges.is_empty() || self.panics_seen != self.judge.panics() {
            self.apply_ranges();
        }
        if self.out.emits.is_empty() && self.out.events.is_empty() {
            return;
        }
        let emits = std::mem::take(&mut self.out.emits);
        for e in &emits {
            self.copy_out(e.side, &e.frame);
        }
        self.out.emits = emits;
        self.out.emits.clear();
        let policy = match &self.judge {
            Judge::Engine { engine, .. } => Some(engine.policy()),
            Judge::PassThrough(_) => None,
        };
        let listening = self.shared.listening.load(Ordering::Relaxed);
        for ev in self.out.events.drain(..) {
            self.tally.count(&ev);
            if !listening {
                continue;
            }
            if let (Some(tx), Some(p)) = (&self.ch.events, policy) {
                if tx.try_send((ev, p.clone())).is_err() {
                    self.dp.events_dropped += 1;
                }
            }
        }
    }

    fn publish(&mut self) {
        if self.all_sent() {
            self.fence_resyncs = self.links.iter_mut().map(|l| l.check_fence()).sum();
        }
        let mut dp = self.dp.clone();
        dp.kpath_fence_resyncs = self.fence_resyncs;
        dp.engine_panics = self.judge.panics();
        for l in &self.links {
            l.stats(&mut dp);
        }
        if let Some(r) = &self.ranges {
            dp.kpath_map_writes = r.writes;
            dp.kpath_map_failed = r.failed;
            dp.kpath_ranges = r.len() as u64;
        }
        if let Some(fd) = self.kpath_stats {
            (dp.kpath_frames, dp.kpath_bytes, dp.kpath_fenced) = super::kpath::forwarded(fd);
        }
        if let Some(slot) = self.shared.stats.get(self.id as usize) {
            let mut g = slot.lock().unwrap_or_else(|p| p.into_inner());
            g.dp = dp;
            g.engine = self.judge.counters();
            g.sides = self.sides;
            g.queues = self.links.iter().filter_map(|l| l.queue_stats()).collect();
            g.held_bytes = self.judge.held_bytes();
            g.busy_ns = self.busy_ns;
            self.tally.publish(&mut g);
            g.run_ns = self.run_ns;
        }
    }

    /// For the leak check at shutdown: the frames this worker holds, free,
    /// pending, on a fill or RX ring, or in flight on a TX ring.
    fn settle(&mut self) -> u64 {
        for p in 0..2 {
            self.free.append(&mut self.pending[p]);
        }
        let mut held = 0;
        for l in self.links.iter_mut() {
            held += l.settle(&mut self.free, &mut self.cq_descs);
        }
        held + self.free.len() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inline_idle_reads_its_own_override() {
        // No other test touches this variable.
        std::env::set_var(INLINE_IDLE_ENV, "16,100,yield");
        let got = inline_idle();
        std::env::set_var(INLINE_IDLE_ENV, "16,100");
        let bad = inline_idle();
        std::env::remove_var(INLINE_IDLE_ENV);
        assert_eq!(got, Ok(HOST_IDLE));
        assert!(bad.is_err_and(|e| e.contains(INLINE_IDLE_ENV)));
        assert_eq!(inline_idle(), Ok(INLINE_IDLE));
    }

    #[test]
    fn host_idle_override_parses_or_is_refused() {
        assert_eq!(
            parse_idle("16,100,yield"),
            Some(Idle {
                turns: 16,
                linger_ns: 100_000,
                yield_core: true
            })
        );
        assert_eq!(
            parse_idle(" 200 , 0 , spin "),
            Some(Idle {
                turns: 200,
                linger_ns: 0,
                yield_core: false
            })
        );
        for bad in [
            "",
            "16",
            "16,100",
            "16,100,nap",
            "x,100,yield",
            "16,-1,spin",
            "1,2,yield,4",
        ] {
            assert_eq!(parse_idle(bad), None, "{bad:?}");
        }
    }
}
