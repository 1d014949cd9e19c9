//! Host mode end to end: `enforcer --iface eth0` on the server itself,
//! which runs real memcached and the deathstar app, driven by the seeds'
//! clients (bmemcached, pymemcache, nc, curl) from the lab's ships. Root
//! only; under CI=true a missing prerequisite is a failure (see
//! tests/kit/lab.rs). Run with --test-threads=1.

mod kit;

use std::time::{Duration, Instant};

use kit::guide;
use kit::lab::{self, dir_with, endpoints_only, nc, repo, stdout, Lab, Mode, SERVER4};

fn http_code(lab: &Lab, host: &str, args: &[&str]) -> String {
    let mut a = vec![
        "curl",
        "-s",
        "-m",
        "3",
        "-g",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
    ];
    a.extend_from_slice(args);
    stdout(&lab.exec(host, &a))
}

/// Stop the enforcer and fail, naming its next-hop counters first (what
/// became of frames whose next hop was not resolved yet), then the rest.
fn fail_with_counters(lab: &mut Lab, what: &str) -> ! {
    let c = lab.stop().and_then(|s| s.counters()).unwrap_or_default();
    let dp = &c["dataplane"];
    let hops: Vec<String> = [
        "no_next_hop",
        "next_hop_held",
        "next_hop_sent_late",
        "next_hop_dropped",
    ]
    .iter()
    .map(|k| format!("{k}={}", dp[*k]))
    .collect();
    panic!("{what}; {}; counters: {c}", hops.join(" "));
}

/// The memcached guide in host mode (see `kit::guide::memcached`).
#[test]
fn memcached_guide_in_host_mode() {
    lab::with_host_lab("hmmc", |lab| {
        guide::memcached(lab);
    });
}

/// Whether this kernel gives the TAP io_uring (6.7 for the multishot
/// read, io_uring not disabled): then the enforcer must use it.
fn kernel_has_tap_ring() -> bool {
    let disabled = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
        .map(|s| s.trim() != "0")
        .unwrap_or(false);
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut v = release
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|x| x.parse::<u32>().ok());
    let (major, minor) = (v.next().unwrap_or(0), v.next().unwrap_or(0));
    !disabled && (major, minor) >= (6, 7)
}

/// The enforcer's stderr says `what` (its reader thread may be a moment
/// behind the ready line).
fn assert_stderr_says(lab: &Lab, what: &str) {
    let t = Instant::now();
    while !lab.enforcer_stderr().contains(what) && t.elapsed() < Duration::from_secs(3) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let err = lab.enforcer_stderr();
    assert!(err.contains(what), "{what:?} expected on stderr: {err}");
}

/// The re-entry device in the server's namespace: `ip -d link` of every
/// `enf…` there (the veth's far end lives in a namespace of its own and
/// must not show here).
fn reentry_devices(lab: &Lab) -> Vec<String> {
    stdout(&lab.sh(
        "server",
        "ip -d -o link | grep -E ': enf[0-9a-z]*[:@]' ; true",
    ))
    .lines()
    .map(String::from)
    .collect()
}

/// A host lab whose every enforcer start re-enters through the veth
/// (`ENFORCER_HOST_REENTRY=veth`) when `veth`, else the TAP (the default).
fn with_reentry_lab(prefix: &str, veth: bool, test: impl FnOnce(&mut Lab)) {
    lab::with_host_lab(prefix, |lab| {
        if veth {
            lab.start_env = vec![("ENFORCER_HOST_REENTRY".into(), "veth".into())];
        }
        test(lab)
    })
}

/// The enforcer runs with the re-entry device `veth` asks for: a TAP, or
/// a veth whose peer (the workers' sockets) is in another namespace.
fn assert_reentry(lab: &Lab, veth: bool) {
    let devs = reentry_devices(lab);
    assert_eq!(devs.len(), 1, "one re-entry device here: {devs:?}");
    if veth {
        assert_stderr_says(lab, "re-entry: veth");
        assert!(
            lab.ready_line().contains(" reentry=veth:enf"),
            "{}",
            lab.ready_line()
        );
        assert!(
            devs[0].contains(" veth ") && devs[0].contains("link-netnsid"),
            "a veth whose peer is in another namespace: {devs:?}"
        );
    } else {
        let want = if kernel_has_tap_ring() {
            "TAP I/O: io_uring"
        } else {
            "TAP I/O: read/write"
        };
        assert_stderr_says(lab, want);
        assert!(
            lab.ready_line().contains(" reentry=tap:enf"),
            "{}",
            lab.ready_line()
        );
        assert!(devs[0].contains(" tun "), "a TAP: {devs:?}");
    }
}

fn starwars_over_ipv4_and_ipv6(prefix: &str, veth: bool) {
    with_reentry_lab(prefix, veth, |lab| {
        lab.start(Mode::Policy(&repo("policies")), &[]).unwrap();
        assert_eq!(lab.xdp_links().len(), 1, "steering program on eth0");
        assert_reentry(lab, veth);
        guide::starwars(lab);
        guide::denial_keeps_the_connection(lab);
        assert!(lab.ping("xwing", SERVER4), "the x-wing's radar ping");
        // Every UMEM frame accounted for, nothing left (`stop_clean`).
        lab.stop_clean();
        // The host answers directly again.
        assert_eq!(http_code(lab, "tracker", &["http://10.66.0.2/v1/"]), "200");
    });
}

#[test]
fn starwars_in_host_mode_over_ipv4_and_ipv6() {
    starwars_over_ipv4_and_ipv6("hmsw", false);
}

/// The same through the re-entry veth: frames both ways through AF_XDP
/// rings on its far end, denials and IPv6 included.
#[test]
fn starwars_in_host_mode_through_the_veth() {
    starwars_over_ipv4_and_ipv6("hmsv", true);
}

/// The fallback TAP I/O (plain read/write, as on kernels without the
/// io_uring it needs) carries the same guide, denials included.
#[test]
fn starwars_in_host_mode_with_the_tap_on_read_write() {
    lab::with_host_lab("hmpl", |lab| {
        lab.start_with_env(
            Mode::Policy(&repo("policies")),
            &[],
            &[("ENFORCER_TAP_IO", "plain")],
        )
        .unwrap();
        assert_stderr_says(lab, "TAP I/O: read/write (ENFORCER_TAP_IO=plain)");
        guide::starwars(lab);
        guide::denial_keeps_the_connection(lab);
        lab.stop_clean();
    });
}

/// Host mode with no engine (`ENFORCER_PASSTHROUGH=1`, the benchmarks'
/// floor): every frame crosses the re-entry path, nothing is judged. What
/// the seed policy forbids (the PUT, the tracker's connection) is answered,
/// over IPv4 and IPv6, and every frame was forwarded.
#[test]
fn pass_through_in_host_mode_forwards_everything() {
    lab::with_host_lab("hmpt", |lab| {
        lab.start(Mode::PassThrough, &[]).unwrap();
        assert!(
            lab.ready_line().contains("host=(pass-through)"),
            "{}",
            lab.ready_line()
        );
        for base in ["http://10.66.0.2", "http://[fd66::2]"] {
            let port = stdout(&lab.curl(
                "xwing",
                &format!("{base}/v1/exhaust-port"),
                &["-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "PUT"],
            ));
            assert_eq!(port, "503", "the PUT reaches the deathstar ({base})");
            let api = stdout(&lab.curl("tracker", &format!("{base}/v1/"), &[]));
            assert!(api.contains("\"name\": \"Death Star\""), "{base}: {api}");
        }
        assert!(lab.ping("xwing", SERVER4), "the x-wing's ping");
        let c = lab.stop_clean();
        let (eng, dp) = (&c["engine"], &c["dataplane"]);
        let n = eng["frames_in"].as_u64().unwrap_or(0);
        assert!(n > 20, "{c}");
        assert_eq!(eng["frames_forwarded"].as_u64(), Some(n), "{c}");
        assert!(dp["tx_frames"].as_u64().unwrap_or(0) >= n, "{c}");
    });
}

/// Two workers, each with a queue of eth0 and a queue of the TAP: a flow's
/// frames arrive on either worker's links and are judged by the worker that
/// owns the flow (hand-off), inbound and from the host, IPv4 and IPv6.
#[test]
fn two_workers_in_host_mode() {
    two_workers("hm2w", false);
}

/// Two workers on the veth: two queues on both of its ends, a socket on
/// each far-end queue; the host picks the queue, so hand-offs again.
#[test]
fn two_workers_in_host_mode_through_the_veth() {
    two_workers("hm2v", true);
}

fn two_workers(prefix: &str, veth: bool) {
    with_reentry_lab(prefix, veth, |lab| {
        lab.start_args = vec!["--workers".into(), "2".into()];
        let mc = guide::memcached(lab);
        lab.start(Mode::Policy(&repo("policies")), &[]).unwrap();
        assert_reentry(lab, veth);
        assert!(
            lab.ready_line().contains("workers=2"),
            "{}",
            lab.ready_line()
        );
        guide::starwars(lab);
        for base in ["http://10.66.0.2", "http://[fd66::2]"] {
            guide::denial_keeps_the_connection_at(lab, base);
        }
        let sw = lab.stop_clean();
        for c in [&mc, &sw] {
            let dp = &c["dataplane"];
            // Dozens of connections, each direction on a queue the kernel
            // picks: some land on the worker that does not own them.
            assert!(dp["handoff_out"].as_u64().unwrap() > 0, "{c}");
            assert_eq!(dp["handoff_full"], 0, "{c}");
            assert_eq!(dp["next_hop_dropped"], 0, "{c}");
        }
    });
}

#[test]
fn egress_l7_rule_judges_connections_the_host_opens() {
    egress_l7("hmeg", false);
}

#[test]
fn egress_l7_rule_judges_connections_the_host_opens_through_the_veth() {
    egress_l7("hmev", true);
}

fn egress_l7(prefix: &str, veth: bool) {
    with_reentry_lab(prefix, veth, |lab| {
        // An HTTP service on the a-wing for the server to call.
        let log = format!("/run/enforcer-lab/{}/awing-http.log", lab.prefix);
        let deathstar = repo("scripts/deathstar.py");
        // Ends with the lab (lab.sh down kills what runs in its namespaces).
        let mut srv = lab.spawn(
            "awing",
            &[
                "python3",
                deathstar.to_str().unwrap(),
                "--port",
                "8080",
                "--log",
                &log,
            ],
        );
        lab.wait_listen("awing", 8080);
        let dir = dir_with(&[
            "policies/sw-deathstar-http.yaml",
            "tests/fixtures/host-egress.yaml",
        ]);
        lab.start(Mode::Policy(dir.path()), &[]).unwrap();
        assert_reentry(lab, veth);
        for base in ["http://10.66.0.11:8080", "http://[fd66::11]:8080"] {
            // The server's first packets to a next hop its kernel has not
            // resolved yet: the case a flaky run hit.
            let code = http_code(lab, "server", &[&format!("{base}/v1/")]);
            if code != "200" {
                fail_with_counters(lab, &format!("GET {base}/v1/ from the host: {code}"));
            }
            let r = stdout(&lab.curl(
                "server",
                &format!("{base}/v1/exhaust-port"),
                &["-i", "-X", "PUT"],
            ));
            assert!(r.starts_with("HTTP/1.1 403 Forbidden\r\n"), "{r}");
        }
        // Nowhere else: the x-wing is not in the egress rule.
        let r = lab.curl("server", "http://10.66.0.12/v1/", &[]);
        assert_eq!(r.status.code(), Some(28), "{r:?}");
        // Ingress is still judged while egress is.
        assert_eq!(http_code(lab, "xwing", &["http://10.66.0.2/v1/"]), "200");
        let seen: Vec<serde_json::Value> = std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        assert_eq!(
            seen.iter()
                .filter(|e| e["path"] == "/v1/exhaust-port")
                .count(),
            0,
            "a denied request never reached the a-wing: {seen:?}"
        );
        assert!(lab
            .verdicts()
            .iter()
            .any(|e| e["kind"] == "http" && e["verdict"] == "deny"));
        let c = lab.stop_clean();
        // Frames the host sent before its kernel knew the a-wing's MAC
        // were held, then sent: none lost for want of a next hop.
        let dp = &c["dataplane"];
        eprintln!(
            "next hops: held {} sent late {} dropped {}",
            dp["next_hop_held"], dp["next_hop_sent_late"], dp["next_hop_dropped"]
        );
        assert_eq!(dp["next_hop_dropped"], 0, "{c}");
        assert_eq!(dp["next_hop_held"], dp["next_hop_sent_late"], "{c}");
        let _ = srv.kill();
        let _ = srv.wait();
    });
}

/// A long-lived echo connection from the a-wing to the server's port 9000
/// (an L4-only rule, so a restarted enforcer picks it up mid-flow).
struct Echo {
    child: std::process::Child,
    progress: String,
    stop: String,
}

impl Echo {
    fn start(lab: &Lab) -> Echo {
        let server = "import socketserver\n\
            class H(socketserver.StreamRequestHandler):\n\
            \x20   def handle(self):\n\
            \x20       for line in self.rfile:\n\
            \x20           self.wfile.write(line)\n\
            socketserver.ThreadingTCPServer.allow_reuse_address = True\n\
            socketserver.ThreadingTCPServer(('', 9000), H).serve_forever()\n";
        std::mem::forget(lab.spawn("server", &["python3", "-c", server]));
        lab.wait_listen("server", 9000);
        let dir = format!("/run/enforcer-lab/{}", lab.prefix);
        let progress = format!("{dir}/echo.progress");
        let stop = format!("{dir}/echo.stop");
        let client = format!(
            "import socket, os, time\n\
             s = socket.create_connection(('{SERVER4}', 9000), timeout=10)\n\
             f = s.makefile('rwb')\n\
             n = 0\n\
             while not os.path.exists('{stop}'):\n\
             \x20   m = b'%d\\n' % n\n\
             \x20   f.write(m); f.flush()\n\
             \x20   r = f.readline()\n\
             \x20   if r != m:\n\
             \x20       print('BAD', n, r); raise SystemExit(1)\n\
             \x20   n += 1\n\
             \x20   open('{progress}', 'w').write(str(n))\n\
             \x20   time.sleep(0.02)\n\
             print('OK', n)\n"
        );
        let child = std::process::Command::new("ip")
            .args(["netns", "exec", &lab.ns("awing"), "python3", "-c", &client])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("echo client");
        let e = Echo {
            child,
            progress,
            stop,
        };
        e.advances("at start");
        e
    }

    fn count(&self) -> u64 {
        std::fs::read_to_string(&self.progress)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    }

    /// The connection carries round trips again within a few seconds.
    fn advances(&self, when: &str) {
        let n = self.count();
        let t = Instant::now();
        while self.count() < n + 5 {
            assert!(
                t.elapsed() < Duration::from_secs(8),
                "echo connection stalled {when} (at {n})"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn finish(self) -> String {
        std::fs::write(&self.stop, "").unwrap();
        let out = self.child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "echo client: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// Until `f` holds (at most 5 s).
fn within_seconds(what: &str, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < Duration::from_secs(5), "{what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn stop_kill_and_restart_with_a_connection_open() {
    life_cycle("hmlc", false);
}

/// The veth goes with the namespace of its far end, which only the
/// enforcer held: after kill -9, a moment after the death.
#[test]
fn stop_kill_and_restart_through_the_veth() {
    life_cycle("hmlv", true);
}

fn life_cycle(prefix: &str, veth: bool) {
    with_reentry_lab(prefix, veth, |lab| {
        let dir = dir_with(&[
            "policies/sw-deathstar-http.yaml",
            "tests/fixtures/bulk-l4.yaml",
        ]);
        let put =
            |lab: &Lab| http_code(lab, "xwing", &["-XPUT", "http://10.66.0.2/v1/exhaust-port"]);
        lab.start(Mode::Policy(dir.path()), &[]).unwrap();
        assert_reentry(lab, veth);
        assert_eq!(put(lab), "403", "enforced");
        let echo = Echo::start(lab);

        // Clean stop: everything removed, the host answers directly (the
        // deathstar itself answers a forceless PUT with 503).
        lab.stop_clean();
        assert_eq!(put(lab), "503", "unenforced after a clean stop");
        echo.advances("after a clean stop");

        // Start again: enforcement is back, the open connection picked up.
        lab.start(Mode::Policy(dir.path()), &[]).unwrap();
        assert_eq!(put(lab), "403");
        echo.advances("after a restart");

        // kill -9 (fail open, the default): the host is reachable directly.
        let st = lab.kill().unwrap();
        assert!(st.status.code().is_none(), "killed: {st:?}");
        within_seconds("reachable after kill -9", || put(lab) == "503");
        assert!(lab.ping("tracker", SERVER4), "not black-holed");
        echo.advances("after kill -9");
        // A veth goes when the kernel removes the dead process's namespace
        // for it, a moment after the death.
        within_seconds("no re-entry device after kill -9", || {
            reentry_devices(lab).is_empty()
        });
        let left = lab.host_leftovers();
        assert!(
            !left.iter().any(|l| l.contains("xdp") || l.contains("enf")),
            "fail open: program and re-entry device went with the process: {left:?}"
        );

        // Restart: what the dead run left goes, enforcement within seconds.
        let t = Instant::now();
        lab.start(Mode::Policy(dir.path()), &[]).unwrap();
        assert_eq!(put(lab), "403");
        eprintln!("enforcing again {:?} after the restart began", t.elapsed());
        // Nothing of the dead run next to the new one: one TAP, one program,
        // one rule per address.
        let now = lab.host_leftovers();
        for (what, n) in [
            (": enf", 1),
            ("prog/xdp", 1),
            ("from 10.66.0.2 ", 1),
            ("from fd66::2 ", 1),
            ("default via", 2),
            ("PERMANENT", 2),
        ] {
            assert_eq!(
                now.iter().filter(|l| l.contains(what)).count(),
                n,
                "{what}: {now:?}"
            );
        }
        if !left.is_empty() {
            assert!(
                lab.enforcer_stdout()
                    .iter()
                    .any(|l| l.contains("removed what an earlier run left")),
                "{:?}",
                lab.enforcer_stdout()
            );
        }
        echo.advances("after kill -9 and a restart");
        lab.stop_clean();
        let out = echo.finish();
        assert!(out.starts_with("OK "), "{out}");
    });
}

#[test]
fn fail_closed_keeps_the_host_closed_after_a_crash() {
    lab::with_host_lab("hmfc", |lab| {
        lab.start(Mode::Policy(&repo("policies")), &["--fail", "closed"])
            .unwrap();
        assert!(lab.ready_line().contains("fail=closed"));
        assert!(
            lab.ping("xwing", SERVER4),
            "ICMP echo allowed to the x-wing"
        );
        lab.kill().unwrap();
        assert!(!lab.ping("xwing", SERVER4), "closed after the crash");
        assert!(
            lab.host_leftovers().iter().any(|l| l.contains("xdp")),
            "the program stays"
        );
        lab.start(Mode::Policy(&repo("policies")), &["--fail", "closed"])
            .unwrap();
        assert!(
            lab.enforcer_stdout().iter().any(
                |l| l.contains("removed what an earlier run left") && l.contains("XDP program")
            ),
            "{:?}",
            lab.enforcer_stdout()
        );
        assert!(lab.ping("xwing", SERVER4), "enforcing again");
        lab.stop_clean();
        assert!(lab.ping("tracker", SERVER4), "open after a clean stop");
    });
}

#[test]
fn host_firewall_form_and_refusals() {
    lab::with_host_lab("hmfw", |lab| {
        // Cilium's host firewall: a clusterwide policy with nodeSelector.
        let dir = dir_with(&["tests/fixtures/host-firewall.yaml"]);
        lab.start(Mode::Policy(dir.path()), &[]).unwrap();
        assert!(
            lab.ready_line().contains("host=server"),
            "{}",
            lab.ready_line()
        );
        assert_eq!(http_code(lab, "xwing", &["http://10.66.0.2/v1/"]), "200");
        assert_eq!(http_code(lab, "tracker", &["http://10.66.0.2/v1/"]), "000");
        assert_eq!(
            nc(lab, "awing", "get awing-coord\\r\\n"),
            "",
            "11211 closed"
        );
        // A reload keeps the host endpoint (nodeSelector still selects it).
        lab.signal(libc::SIGHUP);
        assert!(lab.wait_stdout("policy reloaded", 1));
        assert_eq!(http_code(lab, "xwing", &["http://10.66.0.2/v1/"]), "200");
        assert_eq!(http_code(lab, "tracker", &["http://10.66.0.2/v1/"]), "000");
        // SSH is cut by this policy: said at start.
        assert!(
            lab.enforcer_stderr().contains("TCP/22"),
            "{}",
            lab.enforcer_stderr()
        );
        lab.stop_clean();

        // The same policy with no Endpoints entry for the server: the host's
        // addresses make an endpoint of their own.
        let bare = tempfile::tempdir().unwrap();
        std::fs::copy(
            repo("tests/fixtures/host-firewall.yaml"),
            bare.path().join("fw.yaml"),
        )
        .unwrap();
        std::fs::write(
            bare.path().join("endpoints.yaml"),
            "kind: Endpoints\nendpoints:\n- name: x-wing\n  labels: {class: spaceship}\n  addresses: [\"10.66.0.12\", \"fd66::12\"]\n",
        )
        .unwrap();
        lab.start(Mode::Policy(bare.path()), &[]).unwrap();
        assert!(
            lab.ready_line().contains("host=host"),
            "{}",
            lab.ready_line()
        );
        assert_eq!(http_code(lab, "xwing", &["http://10.66.0.2/v1/"]), "200");
        assert_eq!(http_code(lab, "awing", &["http://10.66.0.2/v1/"]), "000");
        lab.stop_clean();

        // Refusals say what to do and leave nothing behind.
        let run = |args: &[&str]| {
            let mut a = vec![lab::BIN, "--iface", "eth0"];
            a.extend_from_slice(args);
            let o = lab.exec("server", &a);
            (
                o.status.success(),
                String::from_utf8_lossy(&o.stderr).into_owned(),
            )
        };
        let open = endpoints_only();
        let (okk, e) = run(&["--policy", open.path().to_str().unwrap()]);
        assert!(
            !okk && e.contains("no policy selects this host") && e.contains("nodeSelector"),
            "{e}"
        );
        if !std::path::Path::new("/etc/enforcer").exists() {
            let (okk, e) = run(&[]);
            assert!(
                !okk && e.contains("/etc/enforcer/") && e.contains("write"),
                "{e}"
            );
        }
        let left = lab.host_leftovers();
        assert!(left.is_empty(), "refusals leave nothing: {left:?}");
    });
}

#[test]
fn one_gib_arrives_byte_exact_in_host_mode() {
    one_gib("hmgb", false);
}

#[test]
fn one_gib_arrives_byte_exact_through_the_veth() {
    one_gib("hmgv", true);
}

fn one_gib(prefix: &str, veth: bool) {
    with_reentry_lab(prefix, veth, |lab| {
        let dir = dir_with(&["tests/fixtures/bulk-l4.yaml"]);
        lab.start(Mode::Policy(dir.path()), &[]).unwrap();
        assert_reentry(lab, veth);
        lab.bulk(1 << 30);
        let c = lab.stop_clean();
        assert!(
            c["dataplane"]["rx_frames"].as_u64().unwrap() > 500_000,
            "{c}"
        );
    });
}

/// No `--policy`: /etc/enforcer/ is read and the ready line says so. The
/// directory is laid over /etc in a private mount namespace, so the machine's
/// own /etc is never touched.
#[test]
fn without_policy_flag_etc_enforcer_is_read() {
    lab::with_host_lab("hmet", |lab| {
        let over = tempfile::tempdir().unwrap();
        let upper = over.path().join("upper");
        let work = over.path().join("work");
        std::fs::create_dir_all(upper.join("enforcer")).unwrap();
        std::fs::create_dir_all(&work).unwrap();
        for f in ["policies/endpoints.yaml", "policies/sw-deathstar-http.yaml"] {
            let p = repo(f);
            std::fs::copy(&p, upper.join("enforcer").join(p.file_name().unwrap())).unwrap();
        }
        let script = format!(
            "mount -t overlay overlay -o lowerdir=/etc,upperdir={},workdir={} /etc && \
             exec ip netns exec {} {} --iface eth0",
            upper.display(),
            work.display(),
            lab.ns("server"),
            lab::BIN
        );
        let mut child = std::process::Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c", &script])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("unshare");
        let out = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for l in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(l);
            }
        });
        let mut ready = None;
        while let Ok(l) = rx.recv_timeout(Duration::from_secs(30)) {
            if l.starts_with("ready ") {
                ready = Some(l);
                break;
            }
        }
        let enforced = http_code(lab, "xwing", &["-XPUT", "http://10.66.0.2/v1/exhaust-port"]);
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let st = child.wait().unwrap();
        let ready = ready.expect("ready line");
        assert!(
            ready.contains("policy=/etc/enforcer (default: no --policy given)"),
            "{ready}"
        );
        assert_eq!(enforced, "403");
        assert_eq!(st.code(), Some(0));
        // At once: a clean stop returns with nothing left behind.
        let left = lab.host_leftovers();
        assert!(left.is_empty(), "{left:?}");
    });
}
