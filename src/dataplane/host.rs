//! Host mode's life cycle around the workers: which addresses are this
//! host, what a dead run left, the re-entry TAP and the routes into it, the
//! steering program, the neighbour snapshot, and undoing all of it.
//!
//! Order matters. Start: stale leftovers go, the TAP and its routes come
//! up, workers bind their sockets into the XSKMAP, and only then is the
//! steering program attached, so no frame is steered before a socket
//! waits for it. Stop: the program goes first (inbound frames reach the
//! kernel directly again), then the rules (the host's replies leave
//! directly), and the workers last, so that no frame in between is lost.

use std::fs;
use std::net::IpAddr;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;

use super::worker::{HostMacs, Shared};
use crate::hostmode::l2::{self, Mac, Neighbors};
use crate::hostmode::routes::{self, HostRouting};
use crate::hostmode::rtnl::{self, Rtnl, Watch};
use crate::hostmode::steer::{self, Attached, FailMode, Steering};
use crate::hostmode::tap::Tap;
use crate::hostmode::unresolved::Resolver;
use crate::hostmode::veth::{self, HostRx, Veth};

const STATE_DIR: &str = "/run/enforcer";

/// The global addresses of `iface` (link-local ones stay the kernel's: ND
/// and DHCP need them, and nothing is served there).
pub fn addresses(iface: &str) -> Result<Vec<IpAddr>, String> {
    let idx = rtnl::ifindex(iface)?;
    let addrs: Vec<IpAddr> = Rtnl::open()?
        .addresses(idx)
        .map_err(|e| format!("read the addresses of {iface}: {e}"))?
        .into_iter()
        .filter(|(_, _, global)| *global)
        .map(|(a, _, _)| a)
        .collect();
    if addrs.is_empty() {
        return Err(format!(
            "interface {iface} has no global address: host mode protects the addresses of \
             --iface (ip addr add ADDR/LEN dev {iface})"
        ));
    }
    Ok(addrs)
}

pub fn iface_mac(iface: &str) -> Result<Mac, String> {
    fs::read_to_string(format!("/sys/class/net/{iface}/address"))
        .ok()
        .and_then(|s| l2::parse_mac(s.trim()))
        .ok_or_else(|| format!("cannot read the MAC address of {iface}"))
}

pub fn iface_mtu(iface: &str) -> Option<u32> {
    fs::read_to_string(format!("/sys/class/net/{iface}/mtu"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
}

/// The TAP's name: `enf` + the interface's index (unique, short enough).
pub fn tap_name(ifindex: u32) -> String {
    format!("enf{ifindex}")
}

/// The veth's far end (in a namespace of its own; the name is only seen
/// in this one while the pair is made).
pub fn far_name(ifindex: u32) -> String {
    format!("enfx{ifindex}")
}

/// How frames re-enter the host: a TAP (the default), or a veth pair with
/// AF_XDP sockets on its far end (`ENFORCER_HOST_REENTRY=tap|veth`). The
/// veth stays the option until it measures better (docs/dataplane.md,
/// Host mode, *The re-entry veth*).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reentry {
    Tap,
    Veth(HostRx),
}

pub const REENTRY_ENV: &str = "ENFORCER_HOST_REENTRY";

impl Reentry {
    pub fn from_env() -> Result<Reentry, String> {
        let var = |k| std::env::var(k).ok();
        Reentry::parse(
            var(REENTRY_ENV).as_deref(),
            var(veth::HOST_RX_ENV).as_deref(),
        )
    }

    fn parse(reentry: Option<&str>, rx: Option<&str>) -> Result<Reentry, String> {
        match reentry {
            None | Some("tap") => Ok(Reentry::Tap),
            Some("veth") => Ok(Reentry::Veth(HostRx::parse(rx)?)),
            Some(v) => Err(format!("{REENTRY_ENV}={v:?}: want tap or veth")),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Reentry::Tap => "tap",
            Reentry::Veth(_) => "veth",
        }
    }
}

/// What the workers get of the re-entry device.
pub enum Back {
    /// One TAP queue per worker.
    Taps(Vec<Tap>),
    /// Sockets to open on `far`, queue `w` for worker `w`, from inside
    /// the namespace `netns`, bound into the XSKMAP `map`.
    Veth {
        far: String,
        netns: std::os::fd::RawFd,
        map: std::os::fd::RawFd,
    },
}

/// Locally administered MACs, distinct per interface: the TAP's, and the
/// fake gateway's the kernel sends the host's traffic to.
pub fn macs(ifindex: u32) -> (Mac, Mac) {
    let i = ifindex.to_be_bytes();
    (
        [0x02, 0xe7, i[0], i[1], i[2], i[3]],
        [0x06, 0xe7, i[0], i[1], i[2], i[3]],
    )
}

/// The CPUs no worker runs on (worker `i` is pinned to CPU `i % ncpu`), as
/// a sysfs CPU mask (32-bit hex groups, most significant first), or None
/// when the workers cover every CPU.
pub fn spare_cpu_mask(workers: usize, ncpu: usize) -> Option<String> {
    if ncpu == 0 || workers >= ncpu {
        return None;
    }
    let mut groups = vec![0u32; ncpu.div_ceil(32)];
    for cpu in workers..ncpu {
        groups[cpu / 32] |= 1 << (cpu % 32);
    }
    Some(
        groups
            .iter()
            .rev()
            .map(|g| format!("{g:08x}"))
            .collect::<Vec<_>>()
            .join(","),
    )
}

/// Where the host's receive work for frames written into the TAP runs.
/// A `write` into a TAP runs the host's whole receive path (IP, TCP, the
/// wake-up of the service) inside the writer's syscall, so without RPS the
/// worker's core carries it serially with everything else. RPS on the
/// TAP's queues hands each frame to a CPU no worker runs on (the write
/// only queues it there), so that work runs beside the worker. The setting
/// lives on the TAP and vanishes with it. Returns the queues set.
pub fn spread_tap_receive(tap: &str, mask: &str) -> Result<usize, String> {
    let dir = format!("/sys/class/net/{tap}/queues");
    let entries = fs::read_dir(&dir).map_err(|e| format!("{dir}: {e}"))?;
    let mut n = 0;
    for e in entries.flatten() {
        if !e.file_name().to_string_lossy().starts_with("rx-") {
            continue;
        }
        let f = e.path().join("rps_cpus");
        fs::write(&f, mask).map_err(|e| format!("{}: {e}", f.display()))?;
        n += 1;
    }
    Ok(n)
}

fn state_file(iface: &str) -> PathBuf {
    let ns = fs::metadata("/proc/self/ns/net")
        .map(|m| m.ino())
        .unwrap_or(0);
    PathBuf::from(STATE_DIR).join(format!("{ns}-{iface}.host"))
}

fn pid_alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    pid > 0 && unsafe { libc::kill(pid, 0) } == 0
}

/// What `claim` found left by an earlier run.
#[derive(Debug, Default)]
pub struct Leftovers {
    pub program: bool,
    /// A re-entry veth whose namespace the kernel had not removed yet.
    pub device: bool,
    pub rules: usize,
    pub sysctls: usize,
}

impl Leftovers {
    pub fn any(&self) -> bool {
        self.program || self.device || self.rules > 0 || self.sysctls > 0
    }
}

/// Refuse a live enforcer or a foreign XDP program; remove what a dead run
/// left (its program when it failed closed, rules, sysctls it changed).
pub fn claim(iface: &str, ifindex: u32) -> Result<Leftovers, String> {
    let sf = state_file(iface);
    let state = fs::read_to_string(&sf).unwrap_or_default();
    let mut owner = None;
    let mut sysctls = Vec::new();
    for line in state.lines() {
        let mut w = line.splitn(3, ' ');
        match (w.next(), w.next(), w.next()) {
            (Some("pid"), Some(p), None) => owner = p.parse::<i32>().ok(),
            (Some("sysctl"), Some(k), Some(v)) => sysctls.push((k.to_string(), v.to_string())),
            _ => {}
        }
    }
    let me = std::process::id() as i32;
    if let Some(pid) = owner.filter(|&p| p != me && pid_alive(p)) {
        return Err(format!(
            "interface {iface} is already used by enforcer pid {pid}"
        ));
    }
    if super::iface::xdp_programs(ifindex)
        .iter()
        .any(|n| n == "xsk_def_prog")
    {
        return Err(format!(
            "interface {iface} carries an inline enforcer's XDP program; stop it first \
             (or: ip link set dev {iface} xdp off)"
        ));
    }
    let mut left = Leftovers::default();
    match steer::query(ifindex as i32)? {
        Attached::Nothing => {}
        Attached::Ours { .. } => left.program = steer::remove_stale(ifindex as i32)?,
        Attached::Foreign { name, .. } => {
            return Err(format!(
                "interface {iface} already has an XDP program ({name}) that is not ours; \
                 remove it first (ip link set dev {iface} xdp off) or pick another interface"
            ))
        }
    }
    // A TAP never outlives its process; a veth pair outlives it until the
    // kernel has removed its namespace (owner checked dead above).
    if let Ok(mut nl) = Rtnl::open() {
        left.device = veth::remove_stale(&mut nl, &tap_name(ifindex), &far_name(ifindex));
    }
    left.rules = routes::remove_stale()?;
    for (k, v) in sysctls {
        if routes::write_sysctl(&k, &v).is_ok() {
            left.sysctls += 1;
        }
    }
    fs::create_dir_all(STATE_DIR).map_err(|e| format!("{STATE_DIR}: {e}"))?;
    fs::write(&sf, format!("pid {me}\n")).map_err(|e| format!("{}: {e}", sf.display()))?;
    Ok(left)
}

/// Forget the interface (start failed before `HostMode` existed).
pub fn release(iface: &str) {
    let _ = fs::remove_file(state_file(iface));
}

/// Everything host mode added, undone on drop in the order the module
/// comment gives.
pub struct HostMode {
    pub iface: String,
    pub ifindex: u32,
    pub addrs: Vec<IpAddr>,
    pub macs: HostMacs,
    pub tap: String,
    pub reentry: Reentry,
    steering: Steering,
    routing: Option<HostRouting>,
    /// The re-entry veth and its far end's program (veth re-entry only).
    veth: Option<(Veth, Steering)>,
    misses: Receiver<IpAddr>,
    /// When to ask the kernel to resolve a next hop, and to read the whole
    /// table (times since `t0`).
    resolver: Resolver,
    t0: Instant,
    /// Requests (resolve, read), and the changes the kernel announces.
    nl: Rtnl,
    watch: Watch,
    /// The kernel's neighbours of `--iface` as last handed to workers.
    neighbors: Neighbors,
    /// A failing read or request is said once, not every tick.
    complained: bool,
}

impl HostMode {
    /// The re-entry device (one queue per worker), its routes, the loaded
    /// (not yet attached) steering program. Returns what the workers open
    /// of the device.
    pub fn setup(
        iface: &str,
        ifindex: u32,
        addrs: Vec<IpAddr>,
        workers: usize,
        fail: FailMode,
        reentry: Reentry,
        misses: Receiver<IpAddr>,
    ) -> Result<(HostMode, Back), String> {
        let (tap_mac, gw_mac) = macs(ifindex);
        let macs = HostMacs {
            iface: iface_mac(iface)?,
            tap: tap_mac,
        };
        let tap = tap_name(ifindex);
        let (back, veth) = match reentry {
            Reentry::Tap => (Back::Taps(Tap::create_queues(&tap, workers)?), None),
            Reentry::Veth(rx) => {
                let far = far_name(ifindex);
                let v = Veth::create(&tap, &far, workers, iface_mtu(iface), rx)?;
                let prog = Steering::load_reentry()?;
                let back = Back::Veth {
                    far: far.clone(),
                    netns: v.netns(),
                    map: prog.xsks_fd(),
                };
                (back, Some((v, prog)))
            }
        };
        // Subscribed before the first read: no change between is missed.
        let watch = Watch::open()?;
        let mut nl = Rtnl::open()?;
        if let (Some(mtu), Reentry::Tap) = (iface_mtu(iface), reentry) {
            routes::set_mtu(&mut nl, &tap, mtu)?;
        }
        let steering = Steering::load(fail)?;
        for a in &addrs {
            steering.add_host_addr(*a)?;
        }
        let routing = HostRouting::setup(&tap, tap_mac, gw_mac, &addrs)?;
        let sf = state_file(iface);
        let mut state = format!("pid {}\n", std::process::id());
        for (k, v) in routing.changed_sysctls() {
            state.push_str(&format!("sysctl {k} {v}\n"));
        }
        fs::write(&sf, state).map_err(|e| format!("{}: {e}", sf.display()))?;
        Ok((
            HostMode {
                iface: iface.to_string(),
                ifindex,
                addrs,
                macs,
                tap,
                reentry,
                steering,
                routing: Some(routing),
                veth,
                misses,
                resolver: Resolver::new(),
                t0: Instant::now(),
                nl,
                watch,
                neighbors: Neighbors::default(),
                complained: false,
            },
            back,
        ))
    }

    pub fn xsk_map(&self) -> std::os::fd::RawFd {
        self.steering.xsks_fd()
    }

    /// Start steering: every worker's socket is in the XSKMAPs by now. The
    /// far end first, so that what the host answers finds its way.
    pub fn attach(&mut self) -> Result<(), String> {
        if let Some((v, prog)) = &mut self.veth {
            let far = v.far.clone();
            veth::within(v.netns(), || {
                let idx = rtnl::ifindex(&far)?;
                prog.attach(idx as i32)
            })??;
        }
        self.steering.attach(self.ifindex as i32)
    }

    /// Until the kernel announces a change on the subscription, at most
    /// `limit`: a next hop that resolves reaches the workers at once.
    pub fn wait(&self, limit: Duration) {
        let mut p = libc::pollfd {
            fd: self.watch.fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        unsafe { libc::poll(&mut p, 1, limit.as_millis() as libc::c_int) };
    }

    /// Control-thread duty, after each `wait`: have the kernel resolve next
    /// hops the workers missed (see `Resolver`), fold the neighbour changes
    /// it announced into the snapshot (or read the whole table, when routes
    /// or addresses changed, events were lost, or the slow refresh is due),
    /// and hand workers each snapshot that differs: a new generation wakes
    /// them, and they send the frames they held for it.
    pub fn tick(&mut self, shared: &Shared) {
        let now = self.t0.elapsed().as_nanos() as u64;
        for ip in self.misses.try_iter() {
            self.resolver.miss(ip, now);
        }
        let due = self.resolver.due(now);
        for ip in &due.ask {
            if let Err(e) = routes::resolve(&mut self.nl, self.ifindex, *ip) {
                self.complain(&e);
            }
        }
        let changes = self.watch.changes(self.ifindex);
        let mut changed = false;
        if due.read || changes.reread {
            match l2::read_neighbors(&mut self.nl, self.ifindex) {
                Ok(n) => {
                    self.resolver.read(now, |ip| n.resolves(ip));
                    changed = n != self.neighbors;
                    self.neighbors = n;
                }
                Err(e) => self.complain(&e),
            }
        } else {
            for (ip, mac) in changes.neighbours {
                changed |= self.neighbors.update(ip, mac);
            }
            if changed {
                let n = &self.neighbors;
                self.resolver.known(|ip| n.resolves(ip));
            }
        }
        if !changed && shared.neighbors_gen.load(Ordering::Acquire) > 0 {
            return;
        }
        *shared.neighbors.lock().unwrap_or_else(|p| p.into_inner()) =
            Arc::new(self.neighbors.clone());
        shared.neighbors_gen.fetch_add(1, Ordering::Release);
        shared.wake_all();
    }

    fn complain(&mut self, e: &str) {
        if !self.complained {
            self.complained = true;
            eprintln!("enforcer: {e} (said once)");
        }
    }

    /// Stop enforcing: inbound frames and the host's replies go directly.
    pub fn stop(&mut self) {
        self.steering.detach();
        if let Some(mut r) = self.routing.take() {
            r.teardown();
        }
    }
}

impl Drop for HostMode {
    fn drop(&mut self) {
        self.stop();
        if let Some((v, prog)) = self.veth.take() {
            // Deleted now (both ends at once), not when the kernel gets to
            // the namespace: a clean stop returns with nothing left.
            drop(prog);
            drop(v);
            let _ = fs::remove_file(state_file(&self.iface));
            return;
        }
        // The TAP goes with its last file reference, and with the TAP on
        // io_uring that reference is the ring's: the kernel releases it from
        // a work queue after the ring's fd is closed, a moment after the
        // workers are gone. Wait for it, so that a clean stop returns with
        // nothing left (scripts check at once); delete it if it lingers.
        if !wait_gone(&self.tap, Duration::from_secs(2)) {
            if let Ok(idx) = rtnl::ifindex(&self.tap) {
                let _ = self.nl.delete_link(idx);
            }
            if !wait_gone(&self.tap, Duration::from_secs(1)) {
                eprintln!("enforcer: the TAP {} is still there after stop", self.tap);
            }
        }
        let _ = fs::remove_file(state_file(&self.iface));
    }
}

/// Whether device `name` is gone within `limit` (asked of this network
/// namespace's kernel, not of a sysfs that may belong to another).
fn wait_gone(name: &str, limit: Duration) -> bool {
    let Ok(c) = std::ffi::CString::new(name) else {
        return true;
    };
    let t = Instant::now();
    // SAFETY: a valid NUL-terminated string.
    while unsafe { libc::if_nametoindex(c.as_ptr()) } != 0 {
        if t.elapsed() >= limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reentry_is_the_tap_unless_asked_for_the_veth() {
        assert_eq!(Reentry::parse(None, Some("local")), Ok(Reentry::Tap));
        assert_eq!(Reentry::parse(Some("tap"), None), Ok(Reentry::Tap));
        assert_eq!(
            Reentry::parse(Some("veth"), None),
            Ok(Reentry::Veth(HostRx::Rps))
        );
        assert_eq!(
            Reentry::parse(Some("veth"), Some("threaded")),
            Ok(Reentry::Veth(HostRx::Threaded))
        );
        assert!(Reentry::parse(Some("tun"), None).is_err());
        assert!(Reentry::parse(Some("veth"), Some("fast")).is_err());
    }

    #[test]
    fn spare_cpus_are_those_without_a_worker() {
        assert_eq!(spare_cpu_mask(1, 2).as_deref(), Some("00000002"));
        assert_eq!(spare_cpu_mask(2, 8).as_deref(), Some("000000fc"));
        assert_eq!(spare_cpu_mask(2, 2), None);
        assert_eq!(spare_cpu_mask(3, 2), None);
        assert_eq!(spare_cpu_mask(1, 40).as_deref(), Some("000000ff,fffffffe"));
    }
}
