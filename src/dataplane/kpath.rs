//! Inline mode's kernel path (docs/stream.md, "A kernel path for known
//! bytes"; program in kpath.bpf.c): our own XDP program on both ports in
//! place of libxdp's, its maps, and the range map the workers write.
//!
//! The program sends every frame to the AF_XDP socket of its queue as
//! libxdp's would, except TCP segments inside a range the engine published
//! (`Output::ranges`), which it redirects to the other port itself. Frames
//! it forwards never reach a worker: counted per CPU in the program, read
//! with the workers' counters.

use std::collections::HashSet;
use std::net::IpAddr;
use std::os::fd::{OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::hostmode::bpfobj::{self, os_err, Object};
use crate::log::FlowTuple;
use crate::verdict::{Range, RangeOp, Side};

static OBJECT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/kpath.bpf.o"));
const PROG_NAME: &str = "enforcer_kpath";
/// As in kpath.bpf.c: XSKMAP key = side * MAX_QUEUES + queue.
pub const MAX_QUEUES: u32 = 64;

/// The key of a socket's XSKMAP entry and of its fence.
pub fn socket_key(side: Side, queue: u32) -> u32 {
    u32::from(side) * MAX_QUEUES + queue
}

/// `struct range_key` of kpath.bpf.c.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Key {
    a: [u8; 16],
    b: [u8; 16],
    pa: [u8; 2],
    pb: [u8; 2],
    dir: u8,
    v6: u8,
    pad: [u8; 2],
}

/// `struct range_val` of kpath.bpf.c (host byte order).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
struct Val {
    lo: u32,
    hi: u32,
    ack: u32,
    win: u16,
    win_out: u16,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
struct Stat {
    frames: u64,
    bytes: u64,
    fenced: u64,
}

impl Key {
    /// The key of the segments of `flow` arriving on `dir`: both endpoints
    /// in canonical order (smaller address, then port, first), as the
    /// program builds it from a frame without knowing which end is the
    /// client.
    pub fn new(flow: &FlowTuple, dir: Side) -> Option<Key> {
        let (s, d, v6) = match (flow.src, flow.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                let mut a = [0u8; 16];
                let mut b = [0u8; 16];
                a[..4].copy_from_slice(&s.octets());
                b[..4].copy_from_slice(&d.octets());
                (a, b, 0)
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => (s.octets(), d.octets(), 1),
            _ => return None,
        };
        let x = (s, flow.sport);
        let y = (d, flow.dport);
        let (lo, hi) = if y < x { (y, x) } else { (x, y) };
        Some(Key {
            a: lo.0,
            b: hi.0,
            pa: lo.1.to_be_bytes(),
            pb: hi.1.to_be_bytes(),
            dir,
            v6,
            pad: [0; 2],
        })
    }
}

/// `struct fence` of kpath.bpf.c: one cache line for the program's count,
/// one for the worker's.
#[repr(C, align(64))]
struct Fence {
    given: AtomicU64,
    _p0: [u64; 7],
    done: AtomicU64,
    _p1: [u64; 7],
}

/// The program's `fences` array, mapped into this process: each worker
/// tells the program, by a store, how far it got with each of its
/// sockets' rings (kpath.bpf.c, `struct fence`).
pub struct Fences {
    base: *mut Fence,
    len: usize,
}

// SAFETY: the mapping is shared memory of atomics; every access goes
// through `AtomicU64`.
unsafe impl Send for Fences {}
// SAFETY: as for Send: no access but through atomics.
unsafe impl Sync for Fences {}

impl Fences {
    fn map(fd: RawFd) -> Result<Fences, String> {
        let entries = 2 * MAX_QUEUES as usize;
        // SAFETY: no arguments.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as usize;
        let len = (entries * std::mem::size_of::<Fence>()).div_ceil(page) * page;
        // SAFETY: a shared mapping of an mmapable array map, of its whole
        // (page-rounded) size; checked for failure below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(format!(
                "cannot map the kernel path's fences: {}",
                std::io::Error::last_os_error()
            ));
        }
        Ok(Fences {
            base: p.cast(),
            len,
        })
    }

    fn get(&self, key: u32) -> Option<&Fence> {
        let i = key as usize;
        // SAFETY: within the mapping (checked), which lives as long as self.
        (i < 2 * MAX_QUEUES as usize).then(|| unsafe { &*self.base.add(i) })
    }
}

impl Drop for Fences {
    fn drop(&mut self) {
        // SAFETY: our own mapping, unmapped once.
        unsafe { libc::munmap(self.base.cast(), self.len) };
    }
}

/// One socket's fence: the worker that owns the socket counts the frames
/// it took from the RX ring and, once everything it forwarded of them is
/// with the kernel, publishes that count (`sync`). The program forwards a
/// range's segment on that queue only when every frame it gave the socket
/// is accounted for (kpath.bpf.c, `struct fence`): so a segment it forwards
/// never overtakes one still waiting in the worker.
pub struct FenceSlot {
    fences: Arc<Fences>,
    key: u32,
    /// Frames taken from the RX ring.
    taken: u64,
    /// Frames the kernel dropped after the program gave them to the socket
    /// (ring full, no fill frame), as last read from `XDP_STATISTICS`.
    dropped: u64,
    /// Frames given and lost where no counter saw them (`check`).
    lost: u64,
    /// `given` and `taken` at the last check.
    seen: (u64, u64),
    /// The count last stored: a store only when it moved, so that idle
    /// turns do not write the line the program reads on every segment.
    stored: u64,
    pub resyncs: u64,
}

impl FenceSlot {
    pub fn new(fences: Arc<Fences>, side: Side, queue: u32) -> Option<FenceSlot> {
        let key = socket_key(side, queue);
        fences.get(key)?;
        Some(FenceSlot {
            fences,
            key,
            taken: 0,
            dropped: 0,
            lost: 0,
            seen: (u64::MAX, u64::MAX),
            stored: 0,
            resyncs: 0,
        })
    }

    fn fence(&self) -> &Fence {
        // The key was checked in `new`.
        self.fences.get(self.key).expect("fence key in range")
    }

    pub fn took(&mut self, n: usize) {
        self.taken += n as u64;
    }

    /// The kernel's drop total for this socket now.
    pub fn dropped(&mut self, total: u64) {
        self.dropped = total;
    }

    fn accounted(&self) -> u64 {
        self.taken + self.dropped + self.lost
    }

    /// Everything taken so far is dealt with: transmitted (the TX ring is
    /// empty), dropped or kept.
    pub fn sync(&mut self) {
        let n = self.accounted();
        if n != self.stored {
            self.stored = n;
            self.fence().done.store(n, Ordering::Release);
        }
    }

    /// On the worker's publishing turns, with its TX rings empty: counts
    /// that stayed apart, with the RX ring empty and nothing given or taken
    /// since the last check, mean frames lost where no counter saw them;
    /// without this the fence would stay shut for good (the kernel path off
    /// for this queue: safe, but slow).
    pub fn check(&mut self, rx_empty: bool) {
        let given = self.fence().given.load(Ordering::Acquire);
        let now = (given, self.taken);
        let stuck = rx_empty && given > self.accounted() && self.seen == now;
        self.seen = now;
        if stuck {
            self.lost += given - self.accounted();
            self.resyncs += 1;
            self.sync();
        }
    }
}

/// The loaded program and its maps; detached when dropped or `detach`ed.
pub struct KernelPath {
    obj: Object,
    prog_fd: RawFd,
    xsks_fd: RawFd,
    ranges_fd: RawFd,
    stats_fd: RawFd,
    config_fd: RawFd,
    fences: Arc<Fences>,
    ifindex: [u32; 2],
    links: Vec<OwnedFd>,
    /// Whether the program forwards ranges now (`follow_ports`).
    enabled: bool,
}

impl KernelPath {
    /// Load the program for ports `ifindex` (side 0, side 1); not attached yet.
    pub fn load(ifindex: [u32; 2]) -> Result<KernelPath, String> {
        let obj = Object::load(OBJECT, "the kernel-path program")?;
        let fences_fd = obj.map_fd("fences");
        if fences_fd < 0 {
            return Err("kernel-path program is missing its fences map".into());
        }
        let fences = Arc::new(Fences::map(fences_fd)?);
        let k = KernelPath {
            fences,
            prog_fd: obj.prog_fd(PROG_NAME),
            xsks_fd: obj.map_fd("xsks"),
            ranges_fd: obj.map_fd("ranges"),
            stats_fd: obj.map_fd("stats"),
            config_fd: obj.map_fd("config"),
            obj,
            ifindex,
            links: Vec::new(),
            enabled: false,
        };
        let (ports, sides) = (k.obj.map_fd("ports"), k.obj.map_fd("sides"));
        if [
            k.prog_fd,
            k.xsks_fd,
            k.ranges_fd,
            k.stats_fd,
            k.config_fd,
            ports,
            sides,
        ]
        .iter()
        .any(|&fd| fd < 0)
        {
            return Err("kernel-path program is missing a map or its entry point".into());
        }
        for (side, &ix) in ifindex.iter().enumerate() {
            let side = side as u32;
            let rc = bpfobj::update(sides, &side, &ix);
            let rc = if rc == 0 {
                bpfobj::update(ports, &side, &ix)
            } else {
                rc
            };
            if rc != 0 {
                return Err(os_err("cannot configure the kernel-path program", rc));
            }
        }
        Ok(k)
    }

    /// Attach to both ports (native mode where the driver has it).
    pub fn attach(&mut self) -> Result<(), String> {
        for ix in self.ifindex {
            match bpfobj::attach_link(self.prog_fd, ix as i32) {
                Ok(l) => self.links.push(l),
                Err(rc) => {
                    self.detach();
                    return Err(os_err("cannot attach the kernel-path program", rc));
                }
            }
        }
        Ok(())
    }

    /// Every frame goes to the kernel again (no program on the ports).
    pub fn detach(&mut self) {
        self.links.clear();
    }

    /// Forward ranges only while both ports take redirected frames: a port
    /// whose driver cannot (a veth whose peer has neither GRO nor an XDP
    /// program) would lose them, and their retransmissions too, as they
    /// match the same range. Checked at start and on the control thread's
    /// turns; returns what changed, for a message.
    pub fn follow_ports(&mut self) -> Option<Result<(), String>> {
        let unable: Vec<u32> = self
            .ifindex
            .iter()
            .copied()
            .filter(|&ix| takes_redirects(ix) == Some(false))
            .collect();
        let on = unable.is_empty();
        if on == self.enabled {
            return None;
        }
        let rc = bpfobj::update(self.config_fd, &0u32, &u32::from(on));
        if rc != 0 {
            return Some(Err(os_err("cannot switch the kernel path", rc)));
        }
        self.enabled = on;
        Some(match on {
            true => Ok(()),
            false => Err(format!(
                "kernel path paused: {} cannot take redirected frames (a veth needs GRO on, \
                 or an XDP program, on its peer: ethtool -K PEER gro on); every frame goes \
                 through the engine until it can",
                unable
                    .iter()
                    .map(|&ix| ifname(ix))
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        })
    }

    pub fn xsks_fd(&self) -> RawFd {
        self.xsks_fd
    }

    /// The map workers write (`Ranges`).
    pub fn ranges_fd(&self) -> RawFd {
        self.ranges_fd
    }

    pub fn stats_fd(&self) -> RawFd {
        self.stats_fd
    }

    pub fn fences(&self) -> Arc<Fences> {
        self.fences.clone()
    }
}

impl Drop for KernelPath {
    fn drop(&mut self) {
        // Before the object closes (a field, dropped after this).
        self.detach();
    }
}

/// `NETDEV_XDP_ACT_NDO_XMIT`: the driver takes frames redirected to it.
const XDP_ACT_NDO_XMIT: u64 = 1 << 2;

/// Whether `ifindex` takes redirected frames (its XDP features), None when
/// the kernel does not say (older than 6.3): then it is assumed to.
fn takes_redirects(ifindex: u32) -> Option<bool> {
    // SAFETY: the options struct is plain old data with its size set; the
    // call only writes into it.
    unsafe {
        let mut opts: libbpf_sys::bpf_xdp_query_opts = std::mem::zeroed();
        opts.sz = std::mem::size_of::<libbpf_sys::bpf_xdp_query_opts>() as _;
        if libbpf_sys::bpf_xdp_query(ifindex as i32, 0, &mut opts) != 0 || opts.feature_flags == 0 {
            return None;
        }
        Some(opts.feature_flags & XDP_ACT_NDO_XMIT != 0)
    }
}

fn ifname(ifindex: u32) -> String {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: `buf` has the IF_NAMESIZE bytes if_indextoname writes at most.
    let p = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
    if p.is_null() {
        return format!("ifindex {ifindex}");
    }
    // SAFETY: on success `buf` holds a NUL-terminated name.
    unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

/// Frames and bytes the program forwarded, and the covered segments it
/// sent to a socket as its fence was shut, summed over CPUs.
pub fn forwarded(stats_fd: RawFd) -> (u64, u64, u64) {
    let n = possible_cpus();
    let mut vals = vec![Stat::default(); n];
    let key = 0u32;
    // SAFETY: a per-CPU array's lookup writes one value per possible CPU:
    // `vals` holds that many.
    let rc = unsafe {
        libbpf_sys::bpf_map_lookup_elem(
            stats_fd,
            (&key as *const u32).cast(),
            vals.as_mut_ptr().cast(),
        )
    };
    if rc != 0 {
        return (0, 0, 0);
    }
    vals.iter().fold((0, 0, 0), |(f, b, x), s| {
        (f + s.frames, b + s.bytes, x + s.fenced)
    })
}

fn possible_cpus() -> usize {
    // SAFETY: no arguments; returns a count or a negative errno.
    let n = unsafe { libbpf_sys::libbpf_num_possible_cpus() };
    n.max(1) as usize
}

/// One worker's writer of the range map: it applies the ranges its engine
/// publishes and remembers its keys, to delete them when it stops or its
/// engine is replaced. A worker writes only its own flows' keys.
///
/// Every change is written at once: segments of the body still on the
/// worker's ring are not overtaken, as the program forwards a segment only
/// once its queue's fence is open (`FenceSlot`).
pub struct Ranges {
    fd: RawFd,
    mine: HashSet<Key>,
    /// Map writes and deletes made, and those the kernel refused.
    pub writes: u64,
    pub failed: u64,
}

impl Ranges {
    pub fn new(fd: RawFd) -> Ranges {
        Ranges {
            fd,
            mine: HashSet::new(),
            writes: 0,
            failed: 0,
        }
    }

    /// Apply one published change. A failed write leaves the entry absent
    /// (the segments then reach the engine): always safe.
    pub fn apply(&mut self, r: &Range) {
        let Some(key) = Key::new(&r.flow, r.dir) else {
            return;
        };
        match r.op {
            RangeOp::Bypass {
                lo,
                hi,
                ack,
                win,
                win_out,
            } => {
                let v = Val {
                    lo,
                    hi,
                    ack,
                    win,
                    win_out,
                };
                self.writes += 1;
                if bpfobj::update(self.fd, &key, &v) == 0 {
                    self.mine.insert(key);
                } else {
                    self.failed += 1;
                    self.remove(&key);
                }
            }
            RangeOp::Unbypass => self.remove(&key),
        }
    }

    fn remove(&mut self, key: &Key) {
        if self.mine.remove(key) {
            self.writes += 1;
            // ENOENT: the LRU evicted it already.
            let _ = bpfobj::delete(self.fd, key);
        }
    }

    /// Delete every entry this worker wrote.
    pub fn clear(&mut self) {
        for k in self.mine.drain() {
            let _ = bpfobj::delete(self.fd, &k);
            self.writes += 1;
        }
    }

    /// Entries this worker has in the map now.
    pub fn len(&self) -> usize {
        self.mine.len()
    }
}

impl Drop for Ranges {
    fn drop(&mut self) {
        self.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(src: &str, sport: u16, dst: &str, dport: u16) -> FlowTuple {
        FlowTuple {
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            proto: 6,
            sport,
            dport,
        }
    }

    #[test]
    fn key_is_the_same_from_either_end() {
        let c = t("10.0.0.2", 40000, "10.0.0.1", 11211);
        let s = t("10.0.0.1", 11211, "10.0.0.2", 40000);
        let k = Key::new(&c, 1).unwrap();
        assert_eq!(k, Key::new(&s, 1).unwrap());
        assert_ne!(k, Key::new(&c, 0).unwrap());
        // Smaller address first, as the program orders them.
        assert_eq!(&k.a[..4], &[10, 0, 0, 1]);
        assert_eq!(k.pa, 11211u16.to_be_bytes());
        // Equal addresses: the port decides (by value, not by byte order).
        let l = Key::new(&t("10.0.0.1", 256, "10.0.0.1", 2), 0).unwrap();
        assert_eq!(l.pa, 2u16.to_be_bytes());
        let v6 = Key::new(&t("fd00::2", 1, "fd00::1", 2), 0).unwrap();
        assert_eq!((v6.v6, v6.a[15], v6.b[15]), (1, 1, 2));
        assert_eq!(std::mem::size_of::<Key>(), 40);
        assert_eq!(std::mem::size_of::<Val>(), 16);
        assert_eq!(std::mem::size_of::<Fence>(), 128);
    }
}
