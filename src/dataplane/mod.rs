//! The live shell: AF_XDP sockets (xsk-rs), UMEM, per-core workers and their
//! poll loops, XDP program life cycle. Everything with syscalls lives here.

mod iface;
mod worker;

use std::fs::OpenOptions;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::counters::Counters;
use crate::policy::Policy;

use iface::IfaceInfo;
use worker::{Channels, DpCounters, QueueSpec, Shared, Waker, WorkerSpec, WorkerStats};

/// Where policies are read from when `--policy` is not given.
pub const DEFAULT_POLICY_DIR: &str = "/etc/enforcer/policies";
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
fn reload(shared: &Shared, path: &Path, passthrough: bool) {
    if passthrough {
        eprintln!("enforcer: SIGHUP ignored in pass-through mode");
        return;
    }
    match Policy::load(path) {
        Ok(p) => {
            *shared.policy.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(p));
            shared.policy_gen.fetch_add(1, Ordering::Release);
            println!("policy reloaded from {}", path.display());
        }
        Err(errs) => {
            eprintln!("enforcer: policy reload failed, keeping the running policy:");
            for e in errs {
                eprintln!("  {e}");
            }
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

fn spawn_logger(
    path: &Path,
) -> Result<
    (
        crossbeam_channel::Sender<worker::Logged>,
        std::thread::JoinHandle<()>,
    ),
    String,
> {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| format!("log {}: {e}", path.display()))?;
    let (tx, rx) = crossbeam_channel::bounded::<worker::Logged>(65_536);
    let h = std::thread::Builder::new()
        .name("enforcer-log".into())
        .spawn(move || {
            let mut w = BufWriter::new(file);
            while let Ok((ev, p)) = rx.recv() {
                let _ = w.write_all(ev.to_json_line(&*p).as_bytes());
                while let Ok((ev, p)) = rx.try_recv() {
                    let _ = w.write_all(ev.to_json_line(&*p).as_bytes());
                }
                let _ = w.flush();
            }
            let _ = w.flush();
        })
        .map_err(|e| format!("logger thread: {e}"))?;
    Ok((tx, h))
}

pub fn run(args: &RunArgs) -> Result<(), String> {
    let Some(peer) = args.peer.as_deref() else {
        return Err(format!(
            "host mode (--iface without --peer) is not available yet; run inline: \
             --iface {} --peer IFACE_TOWARDS_SERVERS",
            args.iface
        ));
    };
    if peer == args.iface {
        return Err("--iface and --peer must be different interfaces".into());
    }
    let (policy_path, defaulted) =
        resolve_policy(args.policy.as_deref(), Path::new(DEFAULT_POLICY_DIR))?;
    if defaulted {
        println!("no --policy given: reading {}", policy_path.display());
    }
    if std::env::var_os("ENFORCER_DEBUG").is_none() {
        iface::quiet_libraries();
    }
    let passthrough = std::env::var_os(PASSTHROUGH_ENV).is_some_and(|v| v == "1");
    let policy = if passthrough {
        eprintln!("enforcer: {PASSTHROUGH_ENV}=1: forwarding every frame, policy not enforced");
        None
    } else {
        let p = Policy::load(&policy_path).map_err(|errs| {
            errs.iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        })?;
        Some(Arc::new(p))
    };

    let max_frame = worker::FRAME_DATA;
    let a = iface::inspect(&args.iface, max_frame)?;
    let b = iface::inspect(peer, max_frame)?;
    iface::check_offloads(&a.name)?;
    iface::check_offloads(&b.name)?;
    if iface::ensure_bpffs()? {
        println!("mounted bpffs on /sys/fs/bpf");
    }

    let queues = a.rx_queues.min(b.rx_queues) as usize;
    let workers = match args.workers {
        Some(0) => return Err("--workers must be at least 1".into()),
        Some(n) if n > queues => {
            eprintln!("enforcer: --workers {n} exceeds the {queues} queue(s) both ports have; using {queues}");
            queues
        }
        Some(n) => n,
        None => queues,
    };
    let ncpu = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let poll = args.poll.unwrap_or(if ncpu < 4 {
        PollMode::Adaptive
    } else {
        PollMode::Busy
    });
    let plan = assign_queues(&[&a, &b], workers);
    let socks_per_worker = plan.iter().map(|q| q.len()).max().unwrap_or(2) as u32;
    let umem_frames = args
        .umem_frames
        .unwrap_or(socks_per_worker * 2 * worker::RING_SIZE);
    if umem_frames < socks_per_worker * 64 {
        return Err(format!(
            "--umem-frames {umem_frames} is too small for {socks_per_worker} sockets per worker (at least {})",
            socks_per_worker * 64
        ));
    }

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
    let release_all = || {
        for info in [&a, &b] {
            if let Err(e) = iface::release(info) {
                eprintln!("enforcer: {e}");
            }
        }
    };

    let (events, logger) = match &args.log {
        Some(p) => match spawn_logger(p) {
            Ok((tx, h)) => (Some(tx), Some(h)),
            Err(e) => {
                release_all();
                return Err(e);
            }
        },
        None => (None, None),
    };

    let wakers = match (0..workers)
        .map(|_| Waker::new())
        .collect::<Result<Vec<_>, _>>()
    {
        Ok(w) => w,
        Err(e) => {
            release_all();
            return Err(e);
        }
    };
    let shared = Arc::new(Shared {
        stop: AtomicBool::new(false),
        stats: (0..workers)
            .map(|_| Mutex::new(WorkerStats::default()))
            .collect(),
        wakers,
        policy: Mutex::new(None),
        policy_gen: std::sync::atomic::AtomicU64::new(0),
    });
    let Some(total_frames) = umem_frames.checked_mul(workers as u32) else {
        release_all();
        return Err("--umem-frames times the worker count is too large".into());
    };
    let (umem, mut frames) = match worker::new_umem(total_frames) {
        Ok(u) => u,
        Err(e) => {
            release_all();
            return Err(e);
        }
    };
    let (spare_tx, spare_rx) = crossbeam_channel::bounded(total_frames as usize);
    let (htx, hrx): (Vec<_>, Vec<_>) = (0..workers)
        .map(|_| crossbeam_channel::bounded(4096))
        .unzip();
    let hrx_keep = hrx.clone();
    let (ready_tx, ready_rx) = crossbeam_channel::unbounded();
    let mut handles = Vec::new();
    for (id, (queues, handoff_rx)) in plan.into_iter().zip(hrx).enumerate() {
        let spec = WorkerSpec {
            id: id as u16,
            workers,
            queues,
            umem: umem.clone(),
            frames: frames.split_off(frames.len().saturating_sub(umem_frames as usize)),
            poll,
            cpu: Some(id % ncpu),
            policy: policy.clone(),
            engine: args.engine.clone(),
        };
        let ch = Channels {
            handoff_tx: htx.clone(),
            handoff_rx,
            spare_tx: spare_tx.clone(),
            spare_rx: spare_rx.clone(),
            events: events.clone(),
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
    drop(htx);
    drop(events);
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
        println!(
            "ready iface={} peer={} queues={}/{} workers={} poll={} policy={}{}",
            a.name,
            b.name,
            a.rx_queues,
            b.rx_queues,
            workers,
            poll.name(),
            policy_path.display(),
            if passthrough { " (pass-through)" } else { "" }
        );
        let _ = std::io::stdout().flush();
        while !STOP.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(50));
            if RELOAD.swap(false, Ordering::Relaxed) {
                reload(&shared, &policy_path, passthrough);
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
    shared.stop.store(true, Ordering::Relaxed);
    for h in handles {
        if h.join().is_err() && failure.is_none() {
            failure = Some("a worker panicked".into());
        }
    }
    release_all();
    if let Some(l) = logger {
        let _ = l.join();
    }
    // Every frame is held by a worker, or waits in a hand-off or spare channel.
    let held: u64 = shared
        .stats
        .iter()
        .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).frames_held)
        .sum::<u64>()
        + hrx_keep
            .iter()
            .map(|r| r.try_iter().count() as u64)
            .sum::<u64>()
        + spare_rx.try_iter().count() as u64;
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
