//! What a control plane sees of a running dataplane: a `Handle` to read its
//! state (status, counters aggregated over workers at read time), to swap
//! its policy (from disk or from sources already in memory), and to follow
//! its verdict events.
//!
//! Events leave the workers through one bounded channel (a worker never
//! waits: a full channel is counted in `events_dropped`) to the dispatch
//! thread here, which writes the verdict log, tallies decisions for metrics
//! and offers each event to every observer's own bounded channel, again
//! without waiting: what an observer cannot take is counted against it.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use serde::Serialize;

pub use super::stats::Tally;
use super::stats::{DpCounters, QueueStats, SideCount, WorkerStats};
use super::worker::{Logged, Shared};
use crate::counters::Counters;
use crate::log::Event;
use crate::policy::{load, Policy};

/// What does not change while the dataplane runs.
#[derive(Debug, Clone, Serialize)]
pub struct Info {
    pub mode: &'static str,
    pub iface: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    pub workers: usize,
    pub poll: &'static str,
    pub policy_path: PathBuf,
    pub passthrough: bool,
    /// Audit mode (`--audit`): would-be denials forwarded and logged.
    pub audit: bool,
    /// `--kernel-path on` in inline mode: our XDP program forwards ranges.
    pub kernel_path: bool,
    /// Host mode: this host's addresses (the policy is loaded against them).
    #[serde(skip)]
    pub host: Option<Vec<std::net::IpAddr>>,
}

/// The outcome of the latest reload attempt.
#[derive(Debug, Clone, Serialize)]
pub struct ReloadResult {
    pub ok: bool,
    /// What asked for it: `start`, `sighup`, `import`, `delete`, `watch`.
    pub trigger: String,
    pub unix_time: u64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
}

/// The policy in force: its revision and the sources it was compiled from.
#[derive(Debug, Clone)]
pub struct InForce {
    pub revision: u64,
    pub sources: Vec<(String, String)>,
}

struct PolicyState {
    in_force: InForce,
    last: ReloadResult,
    ok: u64,
    failed: u64,
}

/// An event as observers get it: the event, with its endpoints' names and
/// labels looked up under the policy it was decided in.
#[derive(Debug, Serialize)]
pub struct Observed {
    #[serde(flatten)]
    pub event: Event,
    /// Wall clock when the event was dispatched (events carry the workers'
    /// monotonic clock).
    pub unix_ms: u64,
    pub src_identity: String,
    pub dst_identity: String,
    pub src_labels: BTreeMap<String, String>,
    pub dst_labels: BTreeMap<String, String>,
}

struct Observer {
    tx: Sender<Arc<Observed>>,
    lost: Arc<AtomicU64>,
}

struct Inner {
    shared: Arc<Shared>,
    info: Info,
    policy: Mutex<PolicyState>,
    /// One reload at a time (SIGHUP, control clients, the watcher).
    reloading: Mutex<()>,
    observers: Mutex<Vec<Observer>>,
    undelivered: AtomicU64,
}

/// Cheap to clone; every clone sees the same dataplane.
#[derive(Clone)]
pub struct Handle(Arc<Inner>);

/// Everything a status line or a scrape reads, summed over workers now.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub dp: DpCounters,
    pub engine: Counters,
    pub sides: [SideCount; 2],
    pub queues: Vec<QueueStats>,
    pub held_bytes: u64,
    /// Per worker: (busy ns, running ns).
    pub busy: Vec<(u64, u64)>,
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The policy path's files, read now, named as on disk.
pub fn read_sources(path: &Path) -> Result<Vec<(String, String)>, Vec<String>> {
    let files = load::files(path).map_err(|e| vec![e.to_string()])?;
    let mut out = Vec::new();
    for f in files {
        let name = f.display().to_string();
        match std::fs::read_to_string(&f) {
            Ok(t) => out.push((name, t)),
            Err(e) => return Err(vec![format!("{name}: cannot read: {e}")]),
        }
    }
    Ok(out)
}

impl Handle {
    pub(super) fn new(shared: Arc<Shared>, info: Info, sources: Vec<(String, String)>) -> Handle {
        Handle(Arc::new(Inner {
            shared,
            info,
            policy: Mutex::new(PolicyState {
                in_force: InForce {
                    revision: 1,
                    sources,
                },
                last: ReloadResult {
                    ok: true,
                    trigger: "start".into(),
                    unix_time: unix_now(),
                    errors: Vec::new(),
                },
                ok: 0,
                failed: 0,
            }),
            reloading: Mutex::new(()),
            observers: Mutex::new(Vec::new()),
            undelivered: AtomicU64::new(0),
        }))
    }

    pub fn info(&self) -> &Info {
        &self.0.info
    }

    /// Compile `sources` the way the running policy was loaded; nothing
    /// changes. Errors name file, line and field.
    pub fn validate(&self, sources: &[(String, String)]) -> Result<Policy, Vec<String>> {
        let r = match &self.0.info.host {
            Some(h) => Policy::from_sources_on_host(sources, h),
            None => Policy::from_sources(sources),
        };
        r.map_err(|errs| errs.iter().map(|e| e.to_string()).collect())
    }

    /// Compile `sources` and, when they compile, hand the policy to every
    /// worker (each swaps it between two frames, so none is dropped; flows
    /// re-decide on their next frame, L7 connections at their next request).
    /// `write` runs after validation and before the swap, under the reload
    /// lock (an import writes its file there). Returns the new revision.
    pub fn apply(
        &self,
        sources: Vec<(String, String)>,
        trigger: &str,
        write: &mut dyn FnMut() -> Result<(), String>,
    ) -> Result<u64, Vec<String>> {
        let _one = self.0.reloading.lock().unwrap_or_else(|p| p.into_inner());
        if self.0.info.passthrough {
            return Err(vec!["pass-through mode: no policy is enforced".into()]);
        }
        let compiled = self.validate(&sources).and_then(|p| {
            write().map_err(|e| vec![e])?;
            Ok(p)
        });
        let mut st = self.0.policy.lock().unwrap_or_else(|p| p.into_inner());
        st.last = ReloadResult {
            ok: compiled.is_ok(),
            trigger: trigger.into(),
            unix_time: unix_now(),
            errors: compiled.as_ref().err().cloned().unwrap_or_default(),
        };
        match compiled {
            Ok(p) => {
                *self
                    .0
                    .shared
                    .policy
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(p));
                self.0.shared.policy_gen.fetch_add(1, Ordering::Release);
                self.0.shared.wake_all();
                st.ok += 1;
                st.in_force.revision += 1;
                st.in_force.sources = sources;
                Ok(st.in_force.revision)
            }
            Err(e) => {
                st.failed += 1;
                Err(e)
            }
        }
    }

    /// Load the policy path again (SIGHUP, a changed file).
    pub fn reload(&self, trigger: &str) -> Result<u64, Vec<String>> {
        match read_sources(&self.0.info.policy_path) {
            Ok(s) => self.apply(s, trigger, &mut || Ok(())),
            Err(e) => {
                self.refused(trigger, &e);
                Err(e)
            }
        }
    }

    /// Record a reload refused before it reached `apply` (an import whose
    /// file does not compile with the rest): the running policy stays.
    pub fn refused(&self, trigger: &str, errors: &[String]) {
        let mut st = self.0.policy.lock().unwrap_or_else(|p| p.into_inner());
        st.failed += 1;
        st.last = ReloadResult {
            ok: false,
            trigger: trigger.into(),
            unix_time: unix_now(),
            errors: errors.to_vec(),
        };
    }

    pub fn in_force(&self) -> InForce {
        self.0
            .policy
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .in_force
            .clone()
    }

    /// The last reload's result, and how many succeeded and failed.
    pub fn reloads(&self) -> (ReloadResult, u64, u64) {
        let st = self.0.policy.lock().unwrap_or_else(|p| p.into_inner());
        (st.last.clone(), st.ok, st.failed)
    }

    /// Workers' counters, summed now (each worker publishes every 100 ms).
    pub fn snapshot(&self) -> Snapshot {
        let mut s = Snapshot::default();
        for w in &self.0.shared.stats {
            let g: std::sync::MutexGuard<'_, WorkerStats> =
                w.lock().unwrap_or_else(|p| p.into_inner());
            s.dp.merge(&g.dp);
            s.engine.merge(&g.engine);
            for (a, b) in s.sides.iter_mut().zip(g.sides.iter()) {
                a.merge(b);
            }
            s.queues.extend(g.queues.iter().cloned());
            s.held_bytes += g.held_bytes;
            s.busy.push((g.busy_ns, g.run_ns));
        }
        s.queues.sort_by_key(|q| (q.side, q.queue));
        s
    }

    /// Decisions so far, summed over workers (each publishes every 100 ms).
    pub fn tally(&self) -> Tally {
        let mut t = Tally::new();
        for w in &self.0.shared.stats {
            let g = w.lock().unwrap_or_else(|p| p.into_inner());
            for (k, n) in &g.tally {
                *t.entry(k.clone()).or_default() += n;
            }
        }
        t
    }

    /// Events offered to observers that they could not take, over all.
    pub fn undelivered(&self) -> u64 {
        self.0.undelivered.load(Ordering::Relaxed)
    }

    /// Follow events from now on; at most `capacity` wait for the reader,
    /// the rest are counted in the returned counter (and `undelivered`).
    pub fn observe(&self, capacity: usize) -> (Receiver<Arc<Observed>>, Arc<AtomicU64>) {
        let (tx, rx) = crossbeam_channel::bounded(capacity);
        let lost = Arc::new(AtomicU64::new(0));
        let mut obs = self.0.observers.lock().unwrap_or_else(|p| p.into_inner());
        obs.push(Observer {
            tx,
            lost: lost.clone(),
        });
        // Under the observers' lock, so that dispatch, which clears it when
        // the last observer left, cannot clear it after this.
        self.0.shared.listening.store(true, Ordering::Relaxed);
        (rx, lost)
    }

    fn dispatch(&self, ev: Event, policy: &Policy, log: &mut Option<BufWriter<std::fs::File>>) {
        if let Some(w) = log {
            let _ = w.write_all(ev.to_json_line(policy).as_bytes());
        }
        let mut obs = self.0.observers.lock().unwrap_or_else(|p| p.into_inner());
        if obs.is_empty() {
            if log.is_none() {
                // Nobody reads events: workers stop sending them.
                self.0.shared.listening.store(false, Ordering::Relaxed);
            }
            return;
        }
        let labels = |ip| {
            let name = policy.identity(ip);
            policy
                .model()
                .endpoints
                .iter()
                .find(|e| e.name == name)
                .map(|e| e.labels.clone())
                .unwrap_or_default()
        };
        let o = Arc::new(Observed {
            src_identity: policy.identity(ev.flow.src).to_string(),
            dst_identity: policy.identity(ev.flow.dst).to_string(),
            src_labels: labels(ev.flow.src),
            dst_labels: labels(ev.flow.dst),
            event: ev,
            unix_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
        });
        obs.retain(|x| match x.tx.try_send(o.clone()) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                x.lost.fetch_add(1, Ordering::Relaxed);
                self.0.undelivered.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(TrySendError::Disconnected(_)) => false,
        });
    }
}

/// The dispatch thread: events from the workers to the log and the
/// observers, until every worker has dropped its sender.
///
/// It runs even when nothing listens (no `--log`, no observer yet), on
/// purpose: an observer can attach at any moment through the control API,
/// and a thread started then would have to hand every worker a sender it
/// did not have at start, which is state on the workers' hot path for no
/// gain. Idle, it costs nothing: it sleeps in `recv`, and workers send no
/// event while `listening` is false (they still tally their decisions).
pub(super) fn spawn_dispatch(
    handle: Handle,
    log: Option<&Path>,
    rx: Receiver<Logged>,
) -> Result<std::thread::JoinHandle<()>, String> {
    let mut w = match log {
        Some(path) => Some(BufWriter::new(
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| format!("log {}: {e}", path.display()))?,
        )),
        None => None,
    };
    std::thread::Builder::new()
        .name("enforcer-events".into())
        .spawn(move || {
            while let Ok((ev, p)) = rx.recv() {
                handle.dispatch(ev, &p, &mut w);
                while let Ok((ev, p)) = rx.try_recv() {
                    handle.dispatch(ev, &p, &mut w);
                }
                if let Some(w) = &mut w {
                    let _ = w.flush();
                }
            }
        })
        .map_err(|e| format!("event thread: {e}"))
}
