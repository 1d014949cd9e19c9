//! The live shell: AF_XDP sockets (xsk-rs), UMEM, per-core workers and their
//! poll loops, XDP program life cycle. Everything with syscalls lives here.

mod handle;
mod handoff;
mod host;
mod iface;
mod kpath;
mod link;
mod stats;
mod worker;
mod xsk;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::counters::Counters;
use crate::policy::Policy;

use crate::hostmode::steer::FailMode;
pub use handle::{read_sources, Handle, InForce, Info, Observed, ReloadResult, Snapshot, Tally};
use handoff::Waker;
use iface::IfaceInfo;
use stats::{DpCounters, WorkerStats};
pub use stats::{QueueStats, SideCount};
use worker::{HostMacs, KpathFds, LinkSpec, Shared, WorkerSpec};
use xsk::{QueueSpec, Steer};

/// Where policies and endpoints are read from when `--policy` is not given.
pub const DEFAULT_POLICY_DIR: &str = "/etc/enforcer";
/// Private bring-up switch: forward every frame to the other port, no policy.
const PASSTHROUGH_ENV: &str = "ENFORCER_PASSTHROUGH";

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PollMode {
    /// Spin on the rings (one core per worker at 100%).
    Busy,
    /// Spin while there is work, sleep in poll() when idle.
    Adaptive,
}

impl PollMode {
    fn name(self) -> &'static str {
        match self {
            PollMode::Busy => "busy",
            PollMode::Adaptive => "adaptive",
        }
    }
}

#[derive(Debug, Clone)]
pub struct RunArgs {
    pub iface: String,
    pub peer: Option<String>,
    pub policy: Option<PathBuf>,
    pub workers: Option<usize>,
    pub poll: Option<PollMode>,
    pub log: Option<PathBuf>,
    /// UMEM frames per worker (default: 2048 per socket).
    pub umem_frames: Option<u32>,
    /// Host mode: what a dead enforcer leaves (see `hostmode::steer`).
    pub fail: FailMode,
    pub engine: crate::config::EngineConfig,
}

static STOP: AtomicBool = AtomicBool::new(false);
static DUMP: AtomicBool = AtomicBool::new(false);
static RELOAD: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(sig: libc::c_int) {
    if sig == libc::SIGUSR1 {
        DUMP.store(true, Ordering::Relaxed);
    } else if sig == libc::SIGHUP {
        RELOAD.store(true, Ordering::Relaxed);
    } else {
        STOP.store(true, Ordering::Relaxed);
    }
}

/// Report the first few panics in full, then only count them (a broken
/// frame pattern could otherwise flood stderr at line rate).
fn quiet_repeated_panics() {
    static SEEN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let n = SEEN.fetch_add(1, Ordering::Relaxed);
        if n < 3 {
            default(info);
        } else if n == 3 {
            eprintln!("enforcer: further panics are only counted (engine_panics)");
        }
    }));
}

fn install_signals() {
    let h = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // SAFETY: `on_signal` is an `extern "C"` handler that only stores to atomics.
    unsafe {
        libc::signal(libc::SIGINT, h);
        libc::signal(libc::SIGTERM, h);
        libc::signal(libc::SIGUSR1, h);
        libc::signal(libc::SIGHUP, h);
    }
}

/// The policy path to use: `--policy`, else the default directory, else a
/// refusal that says what to write where.
pub fn resolve_policy(given: Option<&Path>, default_dir: &Path) -> Result<(PathBuf, bool), String> {
    match given {
        Some(p) if p.exists() => Ok((p.to_path_buf(), false)),
        Some(p) => Err(format!("policy {} does not exist", p.display())),
        None if default_dir.exists() => Ok((default_dir.to_path_buf(), true)),
        None => Err(format!(
            "no policy: pass --policy FILE|DIR, or write CiliumNetworkPolicy YAML files \
             (and an Endpoints document naming your endpoints' addresses) into {}/",
            default_dir.display()
        )),
    }
}

/// Queue `q` of every interface goes to worker `q % workers`; an
/// interface's index in `ifaces` is its side.
fn assign_queues(ifaces: &[&IfaceInfo], workers: usize) -> Vec<Vec<QueueSpec>> {
    let mut out = vec![Vec::new(); workers];
    for (p, info) in ifaces.iter().enumerate() {
        for q in 0..info.rx_queues {
            out[q as usize % workers].push(QueueSpec {
                side: p as u8,
                iface: info.name.clone(),
                queue: q,
            });
        }
    }
    out
}

/// SIGHUP: load the policy again and hand it to every worker; a policy with
/// errors is refused and the running one kept.
fn reload(handle: &Handle) {
    if handle.info().passthrough {
        eprintln!("enforcer: SIGHUP ignored in pass-through mode");
        return;
    }
    match handle.reload("sighup") {
        Ok(_) => println!(
            "policy reloaded from {}",
            handle.info().policy_path.display()
        ),
        Err(errs) => {
            // One write, so that a reader never sees the refusal without
            // the errors that explain it.
            let mut msg =
                String::from("enforcer: policy reload failed, keeping the running policy:\n");
            for e in errs {
                msg.push_str(&format!("  {e}\n"));
            }
            eprint!("{msg}");
        }
    }
    let _ = std::io::stdout().flush();
}

/// Counters of all workers; `unaccounted` is the UMEM leak check at exit.
fn totals(shared: &Shared, unaccounted: Option<u64>) -> serde_json::Value {
    let mut dp = DpCounters::default();
    let mut eng = Counters::default();
    for s in &shared.stats {
        let g: std::sync::MutexGuard<'_, WorkerStats> = s.lock().unwrap_or_else(|p| p.into_inner());
        dp.merge(&g.dp);
        eng.merge(&g.engine);
    }
    dp.umem_frames_unaccounted = unaccounted.unwrap_or(0);
    let mut dpv = serde_json::to_value(&dp).unwrap_or_default();
    if unaccounted.is_none() {
        // Only meaningful once every worker has stopped cleanly.
        if let Some(o) = dpv.as_object_mut() {
            o.remove("umem_frames_unaccounted");
        }
    }
    serde_json::json!({ "counters": { "dataplane": dpv, "engine": eng.to_json() } })
}

/// Where the policy comes from, for SIGHUP: the same path, loaded the same
/// way (host mode marks this host's endpoint).
struct PolicySource {
    path: PathBuf,
    passthrough: bool,
    host: Option<Vec<std::net::IpAddr>>,
}

/// Everything that differs between the modes, decided before workers start.
struct Plan {
    /// Per worker: its links.
    links: Vec<Vec<LinkSpec>>,
    steer: Steer,
    host: Option<HostMacs>,
    idle: worker::Idle,
    /// Inline with the kernel path: the maps workers write and read.
    kpath: Option<KpathFds>,
}

/// Load the policy `--policy` names, or the default directory.
fn load_policy(
    path: &Path,
    host: Option<&[std::net::IpAddr]>,
    passthrough: bool,
) -> Result<Option<Arc<Policy>>, String> {
    if passthrough {
        eprintln!("enforcer: {PASSTHROUGH_ENV}=1: forwarding every frame, policy not enforced");
        return Ok(None);
    }
    let p = match host {
        Some(h) => Policy::load_on_host(path, h),
        None => Policy::load(path),
    }
    .map_err(|errs| {
        errs.iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    })?;
    Ok(Some(Arc::new(p)))
}

fn choose_workers(asked: Option<usize>, queues: usize, what: &str) -> Result<usize, String> {
    choose_workers_or(asked, queues, queues, what)
}

/// Host mode's default worker count: half the CPUs (at least one, at most
/// one per queue). The services the enforcer protects run on the same
/// cores, and a worker under load takes a whole core: on two cores, one
/// worker left nginx and wrk a core and served 1.6x the requests of two
/// (`bench/host.sh`). `--workers` still overrides.
fn host_default_workers(queues: usize, ncpu: usize) -> usize {
    (ncpu / 2).clamp(1, queues.max(1))
}

fn choose_workers_or(
    asked: Option<usize>,
    default: usize,
    queues: usize,
    what: &str,
) -> Result<usize, String> {
    match asked {
        Some(0) => Err("--workers must be at least 1".into()),
        Some(n) if n > queues => {
            eprintln!(
                "enforcer: --workers {n} exceeds the {queues} queue(s) {what}; using {queues}"
            );
            Ok(queues)
        }
        Some(n) => Ok(n),
        None => Ok(default),
    }
}

/// The poll mode asked for, else the default, and the CPU count. Inline, a
/// box of 4 or more cores is the enforcer's own: spin. In host mode the
/// cores belong to the services the enforcer protects, so it never spins
/// unless told to (an agent that burns a core per worker on an idle host is
/// the first thing an operator switches off).
fn choose_poll(asked: Option<PollMode>, host: bool) -> (PollMode, usize) {
    let ncpu = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    (asked.unwrap_or(default_poll(host, ncpu)), ncpu)
}

fn default_poll(host: bool, ncpu: usize) -> PollMode {
    if host || ncpu < 4 {
        PollMode::Adaptive
    } else {
        PollMode::Busy
    }
}

/// What runs once the workers are ready, before `ready` is printed: a
/// control plane gets its `Handle` here.
pub type OnReady<'a> = &'a mut dyn FnMut(Handle) -> Result<(), String>;

pub fn run(args: &RunArgs) -> Result<(), String> {
    run_with(args, &mut |_| Ok(()))
}

pub fn run_with(args: &RunArgs, on_ready: OnReady<'_>) -> Result<(), String> {
    let (policy_path, defaulted) =
        resolve_policy(args.policy.as_deref(), Path::new(DEFAULT_POLICY_DIR))?;
    if std::env::var_os("ENFORCER_DEBUG").is_none() {
        iface::quiet_libraries();
    }
    let passthrough = std::env::var_os(PASSTHROUGH_ENV).is_some_and(|v| v == "1");
    let origin = if defaulted {
        format!("{} (default: no --policy given)", policy_path.display())
    } else {
        policy_path.display().to_string()
    };
    match args.peer.as_deref() {
        Some(peer) => run_inline(args, peer, &policy_path, &origin, passthrough, on_ready),
        None => run_host(args, &policy_path, &origin, passthrough, on_ready),
    }
}

fn run_inline(
    args: &RunArgs,
    peer: &str,
    policy_path: &Path,
    origin: &str,
    passthrough: bool,
    on_ready: OnReady<'_>,
) -> Result<(), String> {
    if peer == args.iface {
        return Err("--iface and --peer must be different interfaces".into());
    }
    let policy = load_policy(policy_path, None, passthrough)?;
    let max_frame = xsk::FRAME_DATA;
    let a = iface::inspect(&args.iface, max_frame)?;
    let b = iface::inspect(peer, max_frame)?;
    iface::check_offloads(&a.name)?;
    iface::check_offloads(&b.name)?;
    if iface::ensure_bpffs()? {
        println!("mounted bpffs on /sys/fs/bpf");
    }
    let queues = a.rx_queues.min(b.rx_queues) as usize;
    let workers = choose_workers(args.workers, queues, "both ports have")?;
    let (poll, _) = choose_poll(args.poll, false);
    let plan = assign_queues(&[&a, &b], workers);
    let socks_per_worker = plan.iter().map(|q| q.len()).max().unwrap_or(2) as u32;
    // Our own program in place of libxdp's, with the range map.
    let kp = if args.engine.kernel_path {
        Some(kpath::KernelPath::load([a.ifindex, b.ifindex])?)
    } else {
        None
    };
    let plan = Plan {
        links: plan
            .into_iter()
            .map(|qs| qs.into_iter().map(LinkSpec::Queue).collect())
            .collect(),
        steer: match &kp {
            Some(k) => Steer::Kpath(k.xsks_fd()),
            None => Steer::Libxdp,
        },
        host: None,
        idle: worker::inline_idle()?,
        kpath: kp.as_ref().map(|k| KpathFds {
            ranges: k.ranges_fd(),
            stats: Some(k.stats_fd()),
            fences: k.fences(),
        }),
    };
    let umem_frames = umem_quota(args, socks_per_worker)?;

    // From here on a signal must not skip the cleanup below.
    install_signals();
    quiet_repeated_panics();
    for (i, info) in [&a, &b].into_iter().enumerate() {
        match iface::claim(info) {
            Ok(iface::Existing::RemovedStale) => println!(
                "removed a stale XDP program left on {} by an earlier run",
                info.name
            ),
            Ok(iface::Existing::None) => {}
            Err(e) => {
                if i == 1 {
                    let _ = iface::release(&a);
                }
                return Err(e);
            }
        }
    }
    struct Inline<'a>(
        &'a IfaceInfo,
        &'a IfaceInfo,
        Option<kpath::KernelPath>,
        std::time::Instant,
    );
    impl Inline<'_> {
        /// Whether both ports still take redirected frames (a change is said).
        fn follow_ports(&mut self) {
            if let Some(change) = self.2.as_mut().and_then(|k| k.follow_ports()) {
                match change {
                    Ok(()) => eprintln!("enforcer: kernel path on"),
                    Err(e) => eprintln!("enforcer: {e}"),
                }
            }
        }
    }
    impl Hooks for Inline<'_> {
        fn ready(&mut self) -> Result<(), String> {
            // Once every socket is in the XSKMAP: no frame meets the
            // program before its queue's socket is there.
            if let Some(k) = self.2.as_mut() {
                k.attach()?;
                if let Some(Err(e)) = k.follow_ports() {
                    eprintln!("enforcer: {e}");
                }
            }
            Ok(())
        }
        fn tick(&mut self, _: &Shared) {
            // A port's features change with its peer (a veth's GRO): once a second.
            if self.2.is_some() && self.3.elapsed() >= Duration::from_secs(1) {
                self.3 = std::time::Instant::now();
                self.follow_ports();
            }
        }
        fn stop(&mut self) {
            // Before the workers stop: from here on every frame reaches
            // them (or, once their sockets close, the kernel).
            if let Some(k) = self.2.as_mut() {
                k.detach();
            }
        }
    }
    impl Drop for Inline<'_> {
        fn drop(&mut self) {
            for info in [self.0, self.1] {
                if let Err(e) = iface::release(info) {
                    eprintln!("enforcer: {e}");
                }
            }
        }
    }
    let kernel_path = if kp.is_some() { "on" } else { "off" };
    let mut hooks = Inline(&a, &b, kp, std::time::Instant::now());
    let ready = format!(
        "ready iface={} peer={} queues={}/{} workers={workers} poll={} kernel-path={kernel_path} policy={origin}{}",
        a.name,
        b.name,
        a.rx_queues,
        b.rx_queues,
        poll.name(),
        if passthrough { " (pass-through)" } else { "" }
    );
    let src = PolicySource {
        path: policy_path.to_path_buf(),
        passthrough,
        host: None,
    };
    serve(
        args,
        &src,
        policy,
        plan,
        workers,
        poll,
        umem_frames,
        None,
        &mut hooks,
        &ready,
        on_ready,
    )
}

fn umem_quota(args: &RunArgs, socks_per_worker: u32) -> Result<u32, String> {
    let umem_frames = args
        .umem_frames
        .unwrap_or(socks_per_worker * 2 * xsk::RING_SIZE);
    if umem_frames < socks_per_worker * 64 {
        return Err(format!(
            "--umem-frames {umem_frames} is too small for {socks_per_worker} sockets per worker (at least {})",
            socks_per_worker * 64
        ));
    }
    Ok(umem_frames)
}

fn run_host(
    args: &RunArgs,
    policy_path: &Path,
    origin: &str,
    passthrough: bool,
    on_ready: OnReady<'_>,
) -> Result<(), String> {
    let max_frame = xsk::FRAME_DATA;
    let a = iface::inspect(&args.iface, max_frame)?;
    let addrs = host::addresses(&a.name)?;
    let idle = worker::host_idle()?;
    let reentry = host::Reentry::from_env()?;
    let policy = load_policy(policy_path, Some(&addrs), passthrough)?;
    let host_name = match &policy {
        None => "(pass-through)".to_string(),
        Some(p) => {
            let refuse = |why: &str| {
                Err(format!(
                    "{why}: host mode protects {} ({}), so a policy must select it. Write, in {}, \
                     an Endpoints entry claiming these addresses and a CiliumNetworkPolicy whose \
                     endpointSelector matches its labels, or a CiliumClusterwideNetworkPolicy \
                     with nodeSelector: {{}} (Cilium's host firewall)",
                    a.name,
                    addrs
                        .iter()
                        .map(|x| x.to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                    policy_path.display()
                ))
            };
            match p.host_endpoint(&addrs) {
                Some((i, true)) => p.model().endpoints[i].name.clone(),
                _ => return refuse("no policy selects this host"),
            }
        }
    };
    if let Some(p) = &policy {
        for w in crate::policy::check::extra_warnings(p) {
            eprintln!("enforcer: warning: {w}");
        }
    }
    iface::check_offloads(&a.name)?;
    if iface::ensure_bpffs()? {
        println!("mounted bpffs on /sys/fs/bpf");
    }
    let queues = a.rx_queues as usize;
    let (poll, ncpu) = choose_poll(args.poll, true);
    let workers = choose_workers_or(
        args.workers,
        host_default_workers(queues, ncpu),
        queues,
        &format!("{} has", a.name),
    )?;
    let fail = args.fail;

    install_signals();
    quiet_repeated_panics();
    let left = host::claim(&a.name, a.ifindex)?;
    if left.any() {
        println!(
            "removed what an earlier run left on {}: {}{}{} rule(s), {} sysctl(s) restored",
            a.name,
            if left.program {
                "its XDP program, "
            } else {
                ""
            },
            if left.device {
                "its re-entry veth, "
            } else {
                ""
            },
            left.rules,
            left.sysctls
        );
    }
    let (misses_tx, misses_rx) = crossbeam_channel::bounded(1024);
    let (mut hm, back) =
        match host::HostMode::setup(&a.name, a.ifindex, addrs, workers, fail, reentry, misses_rx) {
            Ok(x) => x,
            Err(e) => {
                host::release(&a.name);
                return Err(e);
            }
        };
    // `ENFORCER_HOST_RPS=off` (private): the worker's core runs the host's
    // receive, to measure what RPS costs or saves.
    let rps = !std::env::var("ENFORCER_HOST_RPS").is_ok_and(|v| v == "off")
        && matches!(
            reentry,
            host::Reentry::Tap | host::Reentry::Veth(crate::hostmode::veth::HostRx::Rps)
        );
    if let Some(mask) = host::spare_cpu_mask(workers, ncpu).filter(|_| rps) {
        // Best effort: without it the worker's core runs the host's receive.
        if let Err(e) = host::spread_tap_receive(&hm.tap, &mask) {
            eprintln!("enforcer: warning: RPS on {}: {e}", hm.tap);
        }
    }
    if let host::Reentry::Veth(rx) = reentry {
        eprintln!(
            "enforcer: re-entry: veth {} (AF_XDP sockets on its far end, in a namespace of \
             their own; host receive: {rx:?})",
            hm.tap
        );
    }
    let mut links: Vec<Vec<LinkSpec>> = (0..workers).map(|_| Vec::new()).collect();
    // Queues of `--iface` first: a worker's first socket is never the far
    // end's (see `LinkSpec::Veth`).
    for (w, qs) in assign_queues(&[&a], workers).into_iter().enumerate() {
        links[w].extend(qs.into_iter().map(LinkSpec::Queue));
    }
    match back {
        host::Back::Taps(taps) => {
            for (w, t) in taps.into_iter().enumerate() {
                links[w % workers].push(LinkSpec::Tap(t));
            }
        }
        host::Back::Veth { far, netns, map } => {
            for (w, l) in links.iter_mut().enumerate() {
                let q = QueueSpec {
                    side: 1,
                    iface: far.clone(),
                    queue: w as u32,
                };
                l.push(LinkSpec::Veth { q, netns, map });
            }
        }
    }
    let socks_per_worker = links.iter().map(|l| l.len()).max().unwrap_or(2).max(2) as u32;
    let plan = Plan {
        links,
        steer: Steer::XskMap(hm.xsk_map()),
        host: Some(hm.macs),
        idle,
        kpath: None,
    };
    let umem_frames = umem_quota(args, socks_per_worker)?;
    let ready = format!(
        "ready iface={} mode=host host={host_name} addresses={} reentry={}:{} queues={} workers={workers} \
         poll={} fail={} policy={origin}{}",
        a.name,
        hm.addrs
            .iter()
            .map(|x| x.to_string())
            .collect::<Vec<_>>()
            .join(","),
        hm.reentry.name(),
        hm.tap,
        a.rx_queues,
        poll.name(),
        match fail {
            FailMode::Open => "open",
            FailMode::Closed => "closed",
        },
        if passthrough { " (pass-through)" } else { "" }
    );
    let src = PolicySource {
        path: policy_path.to_path_buf(),
        passthrough,
        host: Some(hm.addrs.clone()),
    };
    serve(
        args,
        &src,
        policy,
        plan,
        workers,
        poll,
        umem_frames,
        Some(misses_tx),
        &mut hm,
        &ready,
        on_ready,
    )
}

impl Hooks for host::HostMode {
    fn ready(&mut self) -> Result<(), String> {
        self.attach()
    }
    fn wait(&mut self, limit: Duration) {
        host::HostMode::wait(self, limit)
    }
    fn tick(&mut self, shared: &Shared) {
        host::HostMode::tick(self, shared)
    }
    fn stop(&mut self) {
        host::HostMode::stop(self)
    }
}

/// What a mode does around the common run: once workers are ready, on the
/// control thread's turns, and when stopping (before workers stop).
trait Hooks {
    fn ready(&mut self) -> Result<(), String>;
    /// Between the control thread's turns: at most `limit`, less when the
    /// mode has news (host mode: the kernel announced a change).
    fn wait(&mut self, limit: Duration) {
        std::thread::sleep(limit);
    }
    fn tick(&mut self, shared: &Shared);
    fn stop(&mut self);
}

/// Start the workers, print `ready`, run the control loop until a signal,
/// stop, print counters.
#[allow(clippy::too_many_arguments)]
fn serve(
    args: &RunArgs,
    src: &PolicySource,
    policy: Option<Arc<Policy>>,
    plan: Plan,
    workers: usize,
    poll: PollMode,
    umem_frames: u32,
    misses: Option<crossbeam_channel::Sender<std::net::IpAddr>>,
    hooks: &mut dyn Hooks,
    ready_line: &str,
    on_ready: OnReady<'_>,
) -> Result<(), String> {
    let ncpu = choose_poll(Some(poll), false).1;
    let (events_tx, events_rx) = crossbeam_channel::bounded::<worker::Logged>(65_536);
    let events = Some(events_tx);
    let wakers = (0..workers)
        .map(|_| Waker::new())
        .collect::<Result<Vec<_>, _>>()?;
    let shared = Arc::new(Shared {
        stop: AtomicBool::new(false),
        stats: (0..workers)
            .map(|_| Mutex::new(WorkerStats::default()))
            .collect(),
        wakers,
        policy: Mutex::new(None),
        policy_gen: std::sync::atomic::AtomicU64::new(0),
        neighbors: Mutex::new(Arc::new(Default::default())),
        neighbors_gen: std::sync::atomic::AtomicU64::new(0),
        listening: AtomicBool::new(args.log.is_some()),
    });
    let info = Info {
        mode: if plan.host.is_some() {
            "host"
        } else {
            "inline"
        },
        iface: args.iface.clone(),
        peer: args.peer.clone(),
        workers,
        poll: poll.name(),
        policy_path: src.path.clone(),
        passthrough: src.passthrough,
        audit: args.engine.audit,
        kernel_path: plan.kpath.is_some(),
        host: src.host.clone(),
    };
    let sources = handle::read_sources(&src.path).unwrap_or_default();
    let handle = Handle::new(shared.clone(), info, sources);
    let logger = Some(handle::spawn_dispatch(
        handle.clone(),
        args.log.as_deref(),
        events_rx,
    )?);
    // Neighbours before the first frame (host mode).
    hooks.tick(&shared);
    let Some(total_frames) = umem_frames.checked_mul(workers as u32) else {
        return Err("--umem-frames times the worker count is too large".into());
    };
    let (umem, mut frames) = xsk::new_umem(total_frames)?;
    let links_per_worker = plan.links.iter().map(Vec::len).max().unwrap_or(1);
    let (mesh, in_transit) = handoff::mesh(
        workers,
        xsk::BATCH * links_per_worker,
        events.clone(),
        misses.clone(),
    );
    let (ready_tx, ready_rx) = crossbeam_channel::unbounded();
    let mut handles = Vec::new();
    for (id, (links, ch)) in plan.links.into_iter().zip(mesh).enumerate() {
        let spec = WorkerSpec {
            id: id as u16,
            workers,
            links,
            umem: umem.clone(),
            frames: frames.split_off(frames.len().saturating_sub(umem_frames as usize)),
            poll,
            cpu: Some(id % ncpu),
            policy: policy.clone(),
            engine: crate::config::EngineConfig {
                // Ranges only where a program honours them.
                kernel_path: args.engine.kernel_path && plan.kpath.is_some(),
                ..args.engine.clone()
            },
            steer: plan.steer,
            host: plan.host,
            idle: plan.idle,
            // The program's counters are read by one worker.
            kpath: plan.kpath.clone().map(|k| KpathFds {
                stats: k.stats.filter(|_| id == 0),
                ..k
            }),
        };
        let (sh, rt) = (shared.clone(), ready_tx.clone());
        let h = std::thread::Builder::new()
            .name(format!("enforcer-w{id}"))
            .spawn(move || worker::run(spec, ch, sh, rt));
        match h {
            Ok(h) => handles.push(h),
            Err(e) => {
                let _ = ready_tx.send(Err(format!("worker thread: {e}")));
                break;
            }
        }
    }
    drop(events);
    drop(misses);
    let mut failure = None;
    for _ in 0..workers {
        match ready_rx.recv_timeout(Duration::from_secs(30)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                failure.get_or_insert(e);
            }
            Err(_) => {
                failure.get_or_insert("a worker did not start within 30 s".into());
                break;
            }
        }
    }
    if failure.is_none() {
        if let Err(e) = hooks.ready() {
            failure = Some(e);
        }
    }
    if failure.is_none() {
        if let Err(e) = on_ready(handle.clone()) {
            failure = Some(e);
        }
    }
    if failure.is_none() {
        println!("{ready_line}");
        let _ = std::io::stdout().flush();
        while !STOP.load(Ordering::Relaxed) {
            hooks.wait(Duration::from_millis(20));
            hooks.tick(&shared);
            if RELOAD.swap(false, Ordering::Relaxed) {
                reload(&handle);
            }
            if DUMP.swap(false, Ordering::Relaxed) {
                println!("{}", totals(&shared, None));
                let _ = std::io::stdout().flush();
            }
            if handles.iter().any(|h| h.is_finished()) {
                failure = Some("a worker stopped unexpectedly".into());
                break;
            }
        }
    }
    hooks.stop();
    shared.stop.store(true, Ordering::SeqCst);
    shared.wake_all();
    for h in handles {
        if h.join().is_err() && failure.is_none() {
            failure = Some("a worker panicked".into());
        }
    }
    if let Some(l) = logger {
        let _ = l.join();
    }
    // Every frame is held by a worker, or waits in a hand-off or spare channel.
    let held: u64 = shared
        .stats
        .iter()
        .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).frames_held)
        .sum::<u64>()
        + in_transit.frames();
    let unaccounted = failure
        .is_none()
        .then(|| (total_frames as u64).abs_diff(held));
    drop(umem);
    println!("{}", totals(&shared, unaccounted));
    let _ = std::io::stdout().flush();
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_mode_never_spins_unless_asked() {
        for ncpu in [1, 2, 4, 64] {
            assert_eq!(default_poll(true, ncpu), PollMode::Adaptive, "{ncpu}");
        }
        assert_eq!(default_poll(false, 2), PollMode::Adaptive);
        assert_eq!(default_poll(false, 4), PollMode::Busy);
        assert_eq!(choose_poll(Some(PollMode::Busy), true).0, PollMode::Busy);
    }

    #[test]
    fn policy_path_resolution() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        let e = resolve_policy(None, &missing).unwrap_err();
        assert!(
            e.contains("--policy") && e.contains(&missing.display().to_string()),
            "{e}"
        );
        assert_eq!(
            resolve_policy(None, dir.path()).unwrap(),
            (dir.path().to_path_buf(), true)
        );
        let f = dir.path().join("p.yaml");
        std::fs::write(&f, "kind: Endpoints\n").unwrap();
        assert_eq!(
            resolve_policy(Some(&f), &missing).unwrap(),
            (f.clone(), false)
        );
        assert!(resolve_policy(Some(&missing), dir.path())
            .unwrap_err()
            .contains("does not exist"));
    }

    #[test]
    fn host_mode_leaves_half_the_cores_to_the_host() {
        assert_eq!(host_default_workers(2, 2), 1);
        assert_eq!(host_default_workers(2, 1), 1);
        assert_eq!(host_default_workers(8, 8), 4);
        assert_eq!(host_default_workers(2, 16), 2, "at most one per queue");
        assert_eq!(choose_workers_or(None, 1, 2, "x").unwrap(), 1);
        assert_eq!(choose_workers_or(Some(2), 1, 2, "x").unwrap(), 2);
        assert_eq!(choose_workers_or(Some(5), 1, 2, "x").unwrap(), 2);
        assert!(choose_workers_or(Some(0), 1, 2, "x").is_err());
    }

    fn info(name: &str, q: u32) -> IfaceInfo {
        IfaceInfo {
            name: name.into(),
            ifindex: 1,
            rx_queues: q,
        }
    }

    #[test]
    fn queues_spread_over_workers_and_every_worker_has_both_ports() {
        let (a, b) = (info("a", 4), info("b", 2));
        let plan = assign_queues(&[&a, &b], 2);
        assert_eq!(plan.len(), 2);
        for w in &plan {
            assert!(w.iter().any(|q| q.side == 0) && w.iter().any(|q| q.side == 1));
        }
        let total: usize = plan.iter().map(|w| w.len()).sum();
        assert_eq!(total, 6);
        assert!(plan[1].iter().any(|q| q.iface == "a" && q.queue == 3));
    }
}
