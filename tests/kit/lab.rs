//! End-to-end harness: a veth lab (`scripts/lab.sh`) per test and the real
//! `enforcer` binary inside it, and the root gate of every root test.
//! Shared by every `tests/lab*.rs`:
//!
//! ```ignore
//! mod kit;
//! use kit::lab;
//! let Some(mut lab) = lab::Lab::up("l7http") else { return }; // skipped: not root
//! lab.start(lab::Mode::Policy(&lab::repo("policies")), &[]).unwrap();
//! let out = lab.exec("xwing", &["curl", "-s", "http://10.66.0.2/v1/"]);
//! ```
//!
//! Without root (or tools) the lab tests skip with a message, except under
//! `CI=true`, where that is a failure. `Drop` stops the enforcer and removes
//! the lab; prefixes keep concurrent labs apart.
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const SERVER4: &str = "10.66.0.2";
pub const SERVER6: &str = "fd66::2";
pub const BIN: &str = env!("CARGO_BIN_EXE_enforcer");

pub fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

fn have(cmd: &str, args: &[&str]) -> bool {
    Command::new(cmd)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Root, or why not.
pub fn root() -> Result<(), String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        Ok(())
    } else {
        Err("lab tests need root (network namespaces, XDP)".into())
    }
}

/// What the lab needs, or why it cannot run.
pub fn prerequisites() -> Result<(), String> {
    root()?;
    let mut missing = Vec::new();
    for (tool, args) in [
        ("ip", &["-V"][..]),
        ("ethtool", &["--version"][..]),
        ("memcached", &["-V"][..]),
        ("curl", &["--version"][..]),
        ("nc", &["-h"][..]),
        ("ping", &["-V"][..]),
        ("python3", &["-c", "import bmemcached, pymemcache"][..]),
    ] {
        if !have(tool, args) {
            missing.push(tool);
        }
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "missing for the lab: {} (scripts/lib/deps.sh installs them)",
            missing.join(", ")
        ))
    }
}

/// True when lab tests should run; prints why not otherwise. Panics under CI.
pub fn available() -> bool {
    gate(prerequisites())
}

/// The one gate of every root test: true when `needs` holds; otherwise a
/// failure under `CI=true`, a printed skip elsewhere (never a silent one).
pub fn gate(needs: Result<(), String>) -> bool {
    match needs {
        Ok(()) => true,
        Err(e) if in_ci() => panic!("CI=true and the lab cannot run: {e}"),
        Err(e) => {
            eprintln!("SKIPPED: {e}");
            false
        }
    }
}

/// Run `test` in a fresh lab (2 queues per enforcer side), then check the
/// lab is gone. Skipped (or failed under CI) without root: see `gate`.
pub fn with_lab(prefix: &str, test: impl FnOnce(&mut Lab)) {
    with_lab_queues(prefix, 2, test)
}

pub fn with_lab_queues(prefix: &str, queues: u32, test: impl FnOnce(&mut Lab)) {
    run_in(Lab::up_with(prefix, queues), prefix, test)
}

/// `with_lab_queues` with `scripts/lab.sh`'s environment settings
/// (`LAB_THREADED_ENDS=1`, ...).
pub fn with_lab_env(prefix: &str, queues: u32, env: &[(&str, &str)], test: impl FnOnce(&mut Lab)) {
    run_in(Lab::bring_up(prefix, queues, false, env), prefix, test)
}

/// `with_lab` for a host-mode lab (`Lab::up_host`).
pub fn with_host_lab(prefix: &str, test: impl FnOnce(&mut Lab)) {
    run_in(Lab::up_host(prefix), prefix, test)
}

fn run_in(lab: Option<Lab>, prefix: &str, test: impl FnOnce(&mut Lab)) {
    {
        let Some(mut lab) = lab else {
            return;
        };
        test(&mut lab);
    }
    assert_clean(prefix);
}

/// How the enforcer decides frames.
/// `LAB_ENFORCER_ARGS="--kernel-path on"`: arguments every lab test's
/// enforcer gets (a whole suite under other settings).
fn start_args_from_env() -> Vec<String> {
    std::env::var("LAB_ENFORCER_ARGS")
        .map(|v| v.split_whitespace().map(String::from).collect())
        .unwrap_or_default()
}

pub enum Mode<'a> {
    /// The real engine with this policy file or directory.
    Policy(&'a Path),
    /// The dataplane's private bring-up switch: every frame to the other port.
    PassThrough,
}

pub struct Running {
    child: Child,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<String>>,
}

/// An enforcer run that has ended.
#[derive(Debug)]
pub struct Stopped {
    pub status: ExitStatus,
    pub stdout: Vec<String>,
    pub stderr: String,
}

impl Stopped {
    /// The last counters line printed (on exit).
    pub fn counters(&self) -> Option<serde_json::Value> {
        self.stdout
            .iter()
            .rev()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find_map(|v| v.get("counters").cloned())
    }
}

pub struct Lab {
    pub prefix: String,
    enforcer: Option<Running>,
    pub log: PathBuf,
    /// The enforcer's control socket (`--control`), one per lab.
    pub control: PathBuf,
    /// Host mode: no wire namespace; the enforcer runs on the server's eth0.
    pub host_mode: bool,
    /// Arguments every `start` adds (a walk that starts the enforcer
    /// itself, run with `--workers 2`).
    pub start_args: Vec<String>,
    /// Environment every start gives the enforcer (before a start's own).
    pub start_env: Vec<(String, String)>,
    /// Start the enforcer with `--log` (the default; `verdicts` reads it).
    /// Off, events flow only while an observer reads them.
    pub with_log: bool,
}

fn lab_sh(prefix: &str, queues: u32, args: &[&str]) -> Output {
    lab_sh_env(prefix, queues, args, &[])
}

fn lab_sh_env(prefix: &str, queues: u32, args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new("bash")
        .arg(repo("scripts/lab.sh"))
        .args(["-p", prefix, "-q", &queues.to_string()])
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("run scripts/lab.sh")
}

impl Lab {
    /// Bring a lab up with 2 queues per enforcer port; `None` when skipped.
    pub fn up(prefix: &str) -> Option<Lab> {
        Lab::up_with(prefix, 2)
    }

    pub fn up_with(prefix: &str, queues: u32) -> Option<Lab> {
        Lab::bring_up(prefix, queues, false, &[])
    }

    /// A host-mode lab (`lab.sh up --host-mode`): the server on the clients'
    /// segment, the enforcer on its own eth0.
    pub fn up_host(prefix: &str) -> Option<Lab> {
        Lab::bring_up(prefix, 2, true, &[])
    }

    fn bring_up(prefix: &str, queues: u32, host_mode: bool, env: &[(&str, &str)]) -> Option<Lab> {
        if !available() {
            return None;
        }
        let prefix = &unique(prefix);
        // Labs of runs that died without tearing down (owner gone).
        lab_sh(prefix, queues, &["gc"]);
        let up: &[&str] = if host_mode {
            &["up", "--host-mode"]
        } else {
            &["up"]
        };
        let out = lab_sh_env(prefix, queues, up, env);
        assert!(
            out.status.success(),
            "lab up failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Some(Lab {
            prefix: prefix.into(),
            enforcer: None,
            log: PathBuf::from(format!("/run/enforcer-lab/{prefix}/verdicts.jsonl")),
            control: PathBuf::from(format!("/run/enforcer-lab/{prefix}/enforcer.sock")),
            host_mode,
            start_args: start_args_from_env(),
            start_env: Vec::new(),
            with_log: true,
        })
    }

    pub fn ns(&self, host: &str) -> String {
        format!("{}-{host}", self.prefix)
    }

    /// Run a command on a lab host.
    pub fn exec(&self, host: &str, cmd: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.ns(host)])
            .args(cmd)
            .stdin(Stdio::null())
            .output()
            .expect("ip netns exec")
    }

    /// Run a shell script on a lab host.
    pub fn sh(&self, host: &str, script: &str) -> Output {
        self.exec(host, &["bash", "-c", script])
    }

    /// Start a long-running command on a lab host (killed by `lab.sh down`
    /// at the latest).
    pub fn spawn(&self, host: &str, cmd: &[&str]) -> Child {
        Command::new("ip")
            .args(["netns", "exec", &self.ns(host)])
            .args(cmd)
            .stdin(Stdio::null())
            .spawn()
            .expect("ip netns exec")
    }

    /// Wait until something listens on TCP `port` on `host`.
    pub fn wait_listen(&self, host: &str, port: u16) {
        let t = Instant::now();
        let pat = format!(":{port} ");
        while !stdout(&self.exec(host, &["ss", "-ltn"])).contains(&pat) {
            assert!(
                t.elapsed() < Duration::from_secs(5),
                "nothing listens on {host}:{port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stream `bytes` of random data from awing to the server's port 9000 and
    /// compare sha256 on both ends. Returns the elapsed time.
    pub fn bulk(&self, bytes: u64) -> Duration {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        let server = format!("nc -l {SERVER4} 9000 </dev/null | sha256sum > {d}/recv.sha");
        let mut srv = self.spawn("server", &["bash", "-c", &server]);
        self.wait_listen("server", 9000);
        let t = Instant::now();
        let client = format!(
            "set -o pipefail; head -c {bytes} /dev/urandom | tee >(sha256sum > {d}/sent.sha) | nc -N {SERVER4} 9000"
        );
        let out = self.exec("awing", &["bash", "-c", &client]);
        let elapsed = t.elapsed();
        assert!(
            ok(&out),
            "sender failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        wait_exit(&mut srv, Duration::from_secs(30), "receiver did not finish");
        std::thread::sleep(Duration::from_millis(300)); // tee's sha256sum
        let sent = std::fs::read_to_string(dir.path().join("sent.sha")).unwrap();
        let recv = std::fs::read_to_string(dir.path().join("recv.sha")).unwrap();
        assert_eq!(
            sent.split_whitespace().next(),
            recv.split_whitespace().next(),
            "bulk data differs"
        );
        assert!(sent.len() >= 64);
        eprintln!(
            "bulk: {bytes} bytes in {:.2} s = {:.2} Gbit/s",
            elapsed.as_secs_f64(),
            bytes as f64 * 8.0 / elapsed.as_secs_f64() / 1e9
        );
        elapsed
    }

    /// `curl -s -m 3 -g EXTRA URL` on a host.
    pub fn curl(&self, host: &str, url: &str, extra: &[&str]) -> Output {
        let mut args = vec!["curl", "-s", "-m", "3", "-g"];
        args.extend_from_slice(extra);
        args.push(url);
        self.exec(host, &args)
    }

    /// Two pings; true when answered.
    pub fn ping(&self, host: &str, dst: &str) -> bool {
        ok(&self.exec(host, &["ping", "-c", "2", "-i", "0.2", "-W", "2", dst]))
    }

    /// A Python script on a lab host, which must succeed; its stdout.
    pub fn python(&self, host: &str, script: &str) -> String {
        let out = self.exec(host, &["python3", "-c", script]);
        assert!(
            out.status.success(),
            "python on {host} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout(&out)
    }

    /// `set` then `get` with pymemcache (text protocol); the value read back.
    pub fn memcache_roundtrip(&self, host: &str, key: &str, value: &str) -> String {
        let script = format!(
            "from pymemcache.client.base import Client\n\
             c = Client(('{SERVER4}', 11211), connect_timeout=3, timeout=3)\n\
             c.set('{key}', '{value}')\n\
             print(c.get('{key}').decode())\n"
        );
        // Not `python`: a caller may expect the script to fail (a denied
        // set raises), and reads that as an empty answer.
        stdout(&self.exec(host, &["python3", "-c", &script]))
            .trim()
            .to_string()
    }

    /// The namespace the enforcer runs in: the wire's, or in host mode the
    /// server's.
    pub fn enforcer_host(&self) -> &'static str {
        if self.host_mode {
            "server"
        } else {
            "enf"
        }
    }

    /// Start the enforcer (inline: on cli0/srv0; host mode: on the server's
    /// eth0) and wait for its `ready` line.
    pub fn start(&mut self, mode: Mode<'_>, extra: &[&str]) -> Result<(), String> {
        self.start_with_env(mode, extra, &[])
    }

    /// `start` with environment variables for the enforcer.
    pub fn start_with_env(
        &mut self,
        mode: Mode<'_>,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Result<(), String> {
        assert!(self.enforcer.is_none(), "enforcer already running");
        let mut cmd = Command::new("ip");
        cmd.envs(self.start_env.iter().map(|(k, v)| (k, v)));
        cmd.envs(env.iter().copied());
        cmd.args(["netns", "exec", &self.ns(self.enforcer_host()), BIN]);
        if self.host_mode {
            cmd.args(["--iface", "eth0"]);
        } else {
            cmd.args(["--iface", "cli0", "--peer", "srv0"]);
        }
        match mode {
            Mode::Policy(p) => {
                cmd.arg("--policy").arg(p);
            }
            Mode::PassThrough => {
                cmd.args(["--policy", repo("policies").to_str().unwrap_or("policies")]);
                cmd.env("ENFORCER_PASSTHROUGH", "1");
            }
        }
        if self.with_log {
            cmd.arg("--log").arg(&self.log);
        }
        if !extra.contains(&"--control") {
            cmd.arg("--control").arg(&self.control);
        }
        cmd.args(&self.start_args);
        cmd.args(extra);
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("spawn enforcer: {e}"))?;
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let (o, e) = (stdout.clone(), stderr.clone());
        let out = child.stdout.take().expect("piped stdout");
        let err = child.stderr.take().expect("piped stderr");
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                o.lock().unwrap().push(l);
            }
        });
        std::thread::spawn(move || {
            for l in BufReader::new(err).lines().map_while(Result::ok) {
                let mut g = e.lock().unwrap();
                g.push_str(&l);
                g.push('\n');
            }
        });
        let mut run = Running {
            child,
            stdout,
            stderr,
        };
        let t = Instant::now();
        loop {
            if run
                .stdout
                .lock()
                .unwrap()
                .iter()
                .any(|l| l.starts_with("ready "))
            {
                self.enforcer = Some(run);
                return Ok(());
            }
            if let Ok(Some(_)) = run.child.try_wait() {
                std::thread::sleep(Duration::from_millis(100));
                return Err(format!(
                    "enforcer exited before ready:\nstdout: {:?}\nstderr: {}",
                    run.stdout.lock().unwrap(),
                    run.stderr.lock().unwrap()
                ));
            }
            if t.elapsed() > Duration::from_secs(30) {
                let _ = run.child.kill();
                return Err("enforcer not ready within 30 s".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Run a client command (`status`, `policy ...`, `observe ...`) against
    /// this lab's enforcer, from the root namespace (the socket is a file).
    pub fn ctl(&self, args: &[&str]) -> Output {
        let mut a: Vec<&str> = args.to_vec();
        let sock = self.control.to_str().expect("utf-8 path");
        // Subcommand words first, then the socket.
        let at = a
            .iter()
            .position(|w| w.starts_with('-'))
            .unwrap_or(a.len())
            .min(if a.first() == Some(&"policy") { 2 } else { 1 });
        a.insert(at, sock);
        a.insert(at, "--control");
        Command::new(BIN)
            .args(&a)
            .output()
            .expect("run enforcer client")
    }

    pub fn enforcer_pid(&self) -> Option<u32> {
        self.enforcer.as_ref().map(|r| r.child.id())
    }

    /// Lines the running enforcer printed so far.
    pub fn enforcer_stdout(&self) -> Vec<String> {
        self.enforcer
            .as_ref()
            .map(|r| r.stdout.lock().unwrap().clone())
            .unwrap_or_default()
    }

    /// What the running enforcer wrote to stderr so far.
    pub fn enforcer_stderr(&self) -> String {
        self.enforcer
            .as_ref()
            .map(|r| r.stderr.lock().unwrap().clone())
            .unwrap_or_default()
    }

    /// Wait (up to 5 s) until the running enforcer printed a stdout line
    /// containing `needle`, and count such lines.
    pub fn wait_stdout(&self, needle: &str, count: usize) -> bool {
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(5) {
            if self
                .enforcer_stdout()
                .iter()
                .filter(|l| l.contains(needle))
                .count()
                >= count
            {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Send a signal to the running enforcer.
    pub fn signal(&self, sig: libc::c_int) {
        if let Some(pid) = self.enforcer_pid() {
            // SAFETY: a signal to the enforcer child this lab started.
            unsafe { libc::kill(pid as i32, sig) };
        }
    }

    /// SIGTERM the enforcer and collect what it printed.
    pub fn stop(&mut self) -> Option<Stopped> {
        self.end(libc::SIGTERM)
    }

    /// End the enforcer with `sig` (SIGINT, SIGTERM) and collect its output.
    pub fn stop_with(&mut self, sig: libc::c_int) -> Option<Stopped> {
        self.end(sig)
    }

    /// SIGKILL the enforcer, as a crash would.
    pub fn kill(&mut self) -> Option<Stopped> {
        self.end(libc::SIGKILL)
    }

    fn end(&mut self, sig: libc::c_int) -> Option<Stopped> {
        let mut run = self.enforcer.take()?;
        // SAFETY: a signal to the enforcer child this lab started.
        unsafe { libc::kill(run.child.id() as i32, sig) };
        let t = Instant::now();
        let status = loop {
            if let Ok(Some(s)) = run.child.try_wait() {
                break s;
            }
            if t.elapsed() > Duration::from_secs(15) {
                let _ = run.child.kill();
                break run.child.wait().expect("wait enforcer");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        std::thread::sleep(Duration::from_millis(100));
        let stdout = run.stdout.lock().unwrap().clone();
        let stderr = run.stderr.lock().unwrap().clone();
        Some(Stopped {
            status,
            stdout,
            stderr,
        })
    }

    /// SIGTERM the enforcer and check that it ended cleanly: exit status 0,
    /// no engine panic, every UMEM frame accounted for and, in host mode,
    /// nothing it added left on the server. Its last counters.
    pub fn stop_clean(&mut self) -> serde_json::Value {
        let st = self.stop().expect("running");
        assert_eq!(st.status.code(), Some(0), "{st:?}");
        if self.host_mode {
            let left = self.host_leftovers();
            assert!(left.is_empty(), "left after a clean stop: {left:?}");
        }
        let c = st.counters().expect("counters");
        assert_eq!(c["dataplane"]["engine_panics"], 0, "{c}");
        assert_eq!(
            c["dataplane"]["umem_frames_unaccounted"], 0,
            "UMEM leak: {c}"
        );
        c
    }

    /// XDP programs attached in the enforcer's namespace (`ip -o link` lines).
    pub fn xdp_links(&self) -> Vec<String> {
        let out = self.exec(self.enforcer_host(), &["ip", "-o", "link"]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains("xdp"))
            .map(String::from)
            .collect()
    }

    /// The running enforcer's `ready` line.
    pub fn ready_line(&self) -> String {
        self.enforcer_stdout()
            .into_iter()
            .find(|l| l.starts_with("ready "))
            .unwrap_or_default()
    }

    /// Host mode: what the enforcer adds to the server and must remove — its
    /// TAP, XDP program, policy-routing rules (table 0xe7f0 = 59376), routes
    /// in that table and neighbour entries on the TAP. Empty when clean.
    pub fn host_leftovers(&self) -> Vec<String> {
        let script = "ip -o link | grep -E ': enf[0-9]+[:@]' ; ip -o link | grep -w xdp ;                       ip -4 rule | grep 59376 ; ip -6 rule | grep 59376 ;                       ip -4 route show table 59376 2>/dev/null ; ip -6 route show table 59376 2>/dev/null ;                       ip neigh show | grep -E 'dev enf[0-9]+ ' ; true";
        stdout(&self.sh("server", script))
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(String::from)
            .collect()
    }

    /// Requests the deathstar app saw, one JSON object each.
    pub fn deathstar_log(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(format!("/run/enforcer-lab/{}/deathstar.log", self.prefix))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The verdict log once `done` holds for it (the log is written by its
    /// own thread, a moment after the frame was judged), or as it is after
    /// 5 s so that the caller's assertion reports what was there.
    pub fn verdicts_when(
        &self,
        done: impl Fn(&[serde_json::Value]) -> bool,
    ) -> Vec<serde_json::Value> {
        let t = std::time::Instant::now();
        loop {
            let v = self.verdicts();
            if done(&v) || t.elapsed() > std::time::Duration::from_secs(5) {
                return v;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// The verdict log written so far.
    pub fn verdicts(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = self.stop();
        lab_sh(&self.prefix, 1, &["down"]);
    }
}

/// The namespace prefix a test's `prefix` gets in this process: the pid
/// keeps concurrent test runs (other worktrees, CI) from sharing a lab.
/// Wait for `child` to end; past `limit` (a hang guard, not a speed
/// check) fail with `what`.
pub fn wait_exit(child: &mut Child, limit: Duration, what: &str) {
    let t = Instant::now();
    while child.try_wait().unwrap().is_none() {
        assert!(t.elapsed() < limit, "{what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn unique(prefix: &str) -> String {
    format!("{prefix}{}", std::process::id())
}

/// Panics when namespaces of the prefix are left (call after the lab dropped).
pub fn assert_clean(prefix: &str) {
    let left = leftover_namespaces(&unique(prefix));
    assert!(left.is_empty(), "namespaces left: {left:?}");
}

/// A temporary policy directory holding only the lab's endpoints
/// (`policies/endpoints.yaml`): nothing enforced, as in the guides before
/// their policies are applied.
pub fn endpoints_only() -> tempfile::TempDir {
    dir_with(&[])
}

/// A temporary policy directory: the lab's endpoints plus `files` (paths
/// relative to the repository).
pub fn dir_with(files: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    for f in std::iter::once(&"policies/endpoints.yaml").chain(files) {
        let p = repo(f);
        std::fs::copy(&p, dir.path().join(p.file_name().expect("file name"))).expect("copy policy");
    }
    dir
}

/// A temporary policy directory: `policies/*.yaml` plus `extra` files
/// (paths relative to the repository), e.g. a test fixture.
pub fn policy_dir(extra: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo("policies"))
        .expect("policies/")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.extend(extra.iter().map(|e| repo(e)));
    for p in files {
        let name = p.file_name().expect("file name").to_owned();
        std::fs::copy(&p, dir.path().join(name)).expect("copy policy");
    }
    dir
}

/// Namespaces of a prefix still present (should be none after a test).
pub fn leftover_namespaces(prefix: &str) -> Vec<String> {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(&format!("{prefix}-")))
        .map(String::from)
        .collect()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn ok(o: &Output) -> bool {
    o.status.success()
}

/// `printf CMD | nc SERVER 11211` on a host, as the memcached guide runs it.
pub fn nc(lab: &Lab, host: &str, cmd: &str) -> String {
    let script = format!("printf '{cmd}' | nc -N -w 3 {SERVER4} 11211");
    stdout(&lab.sh(host, &script))
}

/// Python with bmemcached on a host, as the memcached guide runs it;
/// `steps` print one line each (`show(lambda: ...)` prints a result or the
/// exception).
pub fn bmemcached(lab: &Lab, host: &str, steps: &str) -> Vec<String> {
    let script = format!(
        "import bmemcached\n\
         client = bmemcached.Client(('{SERVER4}:11211',), socket_timeout=3)\n\
         def show(f):\n\
         \x20   try:\n\
         \x20       r = f()\n\
         \x20       print(r.decode() if isinstance(r, bytes) else r)\n\
         \x20   except bmemcached.exceptions.MemcachedException as e:\n\
         \x20       print('MemcachedException', e.args)\n\
         {steps}"
    );
    lab.python(host, &script)
        .lines()
        .map(str::to_string)
        .collect()
}

/// What bmemcached prints for a binary denial (status 0x0008).
pub const DENIED8: &str = "MemcachedException (\"Code: 8 Message: b'access denied'\", 8)";
