//! Operating a running enforcer, end to end in the lab with real clients:
//! `status`, `policy get|import|delete` over the control socket, SIGHUP and
//! the directory watcher, `observe` and its filters, `/metrics`, and
//! reloads under load (wrk). Root only; under CI=true a missing
//! prerequisite is a failure (see tests/kit/lab.rs).

mod kit;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kit::lab::{self, endpoints_only, nc, ok, stdout, Lab, Mode, SERVER4};

fn json(o: &std::process::Output) -> serde_json::Value {
    assert!(
        o.status.success(),
        "client failed: {}{}",
        stdout(o),
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).expect("json output")
}

fn revision(lab: &Lab) -> u64 {
    json(&lab.ctl(&["status", "-o", "json"]))["policy"]["revision"]
        .as_u64()
        .expect("revision")
}

/// HTTP status of a request from `host` to the deathstar.
fn http(lab: &Lab, host: &str, method: &str, path: &str, extra: &[&str]) -> String {
    let url = format!("http://{SERVER4}{path}");
    let mut a = vec!["-X", method, "-o", "/dev/null", "-w", "%{http_code}"];
    a.extend_from_slice(extra);
    stdout(&lab.curl(host, &url, &a))
}

/// The deathstar policy with PUT /v1/exhaust-port allowed without the
/// header (the variant a reload switches to).
fn open_exhaust() -> String {
    std::fs::read_to_string(lab::repo("policies/sw-deathstar-http.yaml"))
        .expect("policy")
        .replace(
            "          headers:\n          - \"X-Has-Force: true\"\n",
            "",
        )
}

#[test]
fn status_and_policy_get_import_delete_against_a_running_enforcer() {
    let prefix = "opsctl";
    lab::with_lab(prefix, |lab| {
        let dir = endpoints_only();
        lab.start(Mode::Policy(dir.path()), &["--no-watch"])
            .unwrap();

        let st = json(&lab.ctl(&["status", "-o", "json"]));
        assert_eq!(st["mode"], "inline");
        assert_eq!(
            (st["iface"].as_str(), st["peer"].as_str()),
            (Some("cli0"), Some("srv0"))
        );
        assert_eq!(st["policy"]["revision"], 1);
        assert_eq!(st["policy"]["last_reload"]["ok"], true);
        let queues = st["queues"].as_array().expect("queues");
        assert_eq!(queues.len(), 4, "2 queues on each port: {queues:?}");
        for q in queues {
            // veth has no zero-copy AF_XDP: the kernel binds in copy mode.
            assert_eq!(q["zero_copy"], false, "{q}");
            assert_eq!(q["need_wakeup"], true, "{q}");
        }
        assert!(st["workers"].as_u64().unwrap() >= 1);
        let text = stdout(&lab.ctl(&["status"]));
        for want in [
            "Mode:         inline, cli0 (clients) -> srv0 (servers)",
            "AF_XDP:       cli0 queue 0: copy, need_wakeup",
            "Policy:       revision 1,",
            "Last reload:  ok (start)",
        ] {
            assert!(text.contains(want), "{want:?} not in:\n{text}");
        }

        // Nothing enforced yet: the PUT reaches the deathstar.
        assert_eq!(http(lab, "xwing", "PUT", "/v1/exhaust-port", &[]), "503");

        // Import: the new revision, and the rules in force at once.
        let file = dir
            .path()
            .parent()
            .unwrap()
            .join(format!("{prefix}-sw.yaml"));
        let _cleanup = Remove(file.clone());
        std::fs::copy(lab::repo("policies/sw-deathstar-http.yaml"), &file).unwrap();
        let out = lab.ctl(&["policy", "import", file.to_str().unwrap()]);
        assert!(ok(&out), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(stdout(&out), "Revision: 2\n");
        assert!(dir.path().join(file.file_name().unwrap()).exists());
        assert_eq!(http(lab, "xwing", "PUT", "/v1/exhaust-port", &[]), "403");
        assert_eq!(http(lab, "xwing", "GET", "/v1/", &[]), "200");

        // A broken import names file, line and field, and changes nothing.
        let bad = dir
            .path()
            .parent()
            .unwrap()
            .join(format!("{prefix}-bad.yaml"));
        let _cleanup2 = Remove(bad.clone());
        std::fs::write(
            &bad,
            open_exhaust().replace("port: \"80\"", "port: \"80000\""),
        )
        .unwrap();
        let out = lab.ctl(&["policy", "import", bad.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success());
        let line = open_exhaust()
            .lines()
            .position(|l| l.contains("port: \"80\""))
            .unwrap()
            + 1;
        let at = format!(
            "{}:{line}: spec.ingress[0].toPorts[0].ports[0].port",
            bad.display()
        );
        assert!(err.contains(&at), "{at:?} not in {err}");
        assert!(!dir.path().join(bad.file_name().unwrap()).exists());
        assert_eq!(revision(lab), 2);
        assert_eq!(http(lab, "xwing", "PUT", "/v1/exhaust-port", &[]), "403");
        let st = json(&lab.ctl(&["status", "-o", "json"]));
        assert_eq!(st["policy"]["last_reload"]["ok"], false);
        assert_eq!(st["policy"]["reloads_failed"], 1);

        // get: the files in force and their revision.
        let got = json(&lab.ctl(&["policy", "get", "-o", "json"]));
        assert_eq!(got["revision"], 2);
        let files: Vec<&str> = got["policies"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["file"].as_str().unwrap())
            .collect();
        assert_eq!(files.len(), 2, "{files:?}");
        assert!(files.iter().any(|f| f.ends_with("/endpoints.yaml")));
        assert!(files
            .iter()
            .any(|f| f.ends_with(&format!("/{prefix}-sw.yaml"))));
        let text = stdout(&lab.ctl(&["policy", "get"]));
        assert!(text.contains("name: \"deathstar-http\"") && text.ends_with("Revision: 2\n"));

        // delete: by name without extension; unknown names are refused.
        let out = lab.ctl(&["policy", "delete", "no-such-policy"]);
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("no policy file"));
        let out = lab.ctl(&["policy", "delete", &format!("{prefix}-sw")]);
        assert_eq!(
            stdout(&out),
            "Revision: 3\n",
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!dir.path().join(file.file_name().unwrap()).exists());
        assert_eq!(http(lab, "xwing", "PUT", "/v1/exhaust-port", &[]), "503");

        // SIGHUP reloads what is on disk.
        std::fs::copy(
            lab::repo("policies/sw-deathstar-http.yaml"),
            dir.path().join("sw.yaml"),
        )
        .unwrap();
        assert_eq!(revision(lab), 3, "--no-watch: no reload without a signal");
        lab.signal(libc::SIGHUP);
        assert!(lab.wait_stdout("policy reloaded", 3));
        assert_eq!(revision(lab), 4);
        assert_eq!(http(lab, "xwing", "PUT", "/v1/exhaust-port", &[]), "403");

        // Clients reach this enforcer only through its own socket.
        let out = Command::new(lab::BIN)
            .args(["status", "--control", "/nonexistent/enforcer.sock"])
            .output()
            .unwrap();
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach an enforcer"));

        let stopped = lab.stop().expect("stopped");
        assert!(stopped.status.success(), "{}", stopped.stderr);
        assert!(!lab.control.exists(), "socket removed at exit");
    });
}

/// Removes a file when dropped.
struct Remove(std::path::PathBuf);
impl Drop for Remove {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn a_changed_file_in_the_policy_directory_is_reloaded() {
    lab::with_lab("opswatch", |lab| {
        let dir = endpoints_only();
        lab.start(Mode::Policy(dir.path()), &[]).unwrap();
        assert_eq!(http(lab, "xwing", "PUT", "/v1/exhaust-port", &[]), "503");
        std::fs::copy(
            lab::repo("policies/sw-deathstar-http.yaml"),
            dir.path().join("sw.yaml"),
        )
        .unwrap();
        assert!(lab.wait_stdout("change in the directory, revision 2", 1));
        assert_eq!(http(lab, "xwing", "PUT", "/v1/exhaust-port", &[]), "403");
        // A broken edit is refused with a log line; the old rules stay.
        std::fs::write(
            dir.path().join("sw.yaml"),
            "kind: CiliumNetworkPolicy\nspec: [\n",
        )
        .unwrap();
        let t = Instant::now();
        while !lab
            .enforcer_stderr()
            .contains("policy change in the directory refused")
        {
            assert!(
                t.elapsed() < Duration::from_secs(5),
                "{}",
                lab.enforcer_stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(lab.enforcer_stderr().contains("sw.yaml"));
        assert_eq!(revision(lab), 2);
        assert_eq!(http(lab, "xwing", "PUT", "/v1/exhaust-port", &[]), "403");
        // An import is not reloaded a second time by the watcher.
        std::fs::remove_file(dir.path().join("sw.yaml")).unwrap();
        assert!(lab.wait_stdout("change in the directory, revision 3", 1));
        let f = tempfile::NamedTempFile::with_suffix(".yaml").unwrap();
        std::fs::write(f.path(), open_exhaust()).unwrap();
        assert_eq!(
            stdout(&lab.ctl(&["policy", "import", f.path().to_str().unwrap()])),
            "Revision: 4\n"
        );
        std::thread::sleep(Duration::from_millis(1500));
        assert_eq!(revision(lab), 4);
        assert_eq!(http(lab, "xwing", "PUT", "/v1/exhaust-port", &[]), "503");
    });
}

/// `enforcer observe ARGS -o json` against the lab, its output collected.
fn observer(lab: &Lab, args: &[&str]) -> Child {
    let mut a = vec!["observe", "-o", "json"];
    a.extend_from_slice(args);
    a.extend_from_slice(&["--control", lab.control.to_str().unwrap()]);
    Command::new(lab::BIN)
        .args(&a)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("observe")
}

fn events(c: Child) -> Vec<serde_json::Value> {
    unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
    let out = c.wait_with_output().expect("observe output");
    stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).expect("event line"))
        .collect()
}

/// An event as a short signature: kind, what, verdict.
fn sig(v: &serde_json::Value) -> String {
    let s = |k: &str| v[k].as_str().unwrap_or("").to_string();
    match s("kind").as_str() {
        "http" => format!(
            "{} http {} {} {}",
            s("src_identity"),
            s("method"),
            s("path"),
            s("verdict")
        ),
        "memcache" => format!(
            "{} memcache {} {} {}",
            s("src_identity"),
            s("command"),
            v["keys"][0].as_str().unwrap_or(""),
            s("verdict")
        ),
        _ => format!(
            "{} flow {}:{} {}",
            s("src_identity"),
            s("dst_identity"),
            v["flow"]["dport"],
            s("verdict")
        ),
    }
}

#[test]
fn observe_filters_show_exactly_the_matching_events() {
    lab::with_lab("opsobs", |lab| {
        let dir = lab::policy_dir(&[]);
        // No --log: the observers alone must make the workers send events.
        lab.with_log = false;
        lab.start(Mode::Policy(dir.path()), &[]).unwrap();
        let filters: &[&[&str]] = &[
            &[],
            &["--verdict", "deny"],
            &["--from-label", "app=x-wing"],
            &["--to-label", "app=memcd-server"],
            &["--to-label", "org=alliance"],
            &["--protocol", "http"],
            &["--protocol", "memcache"],
            &["--http-method", "PUT"],
            &["--http-path", "/v1/.*"],
            &["--memcache-command", "get"],
            &["--memcache-key", "awing-coord"],
            &[
                "--from-label",
                "org=alliance",
                "--verdict",
                "allow",
                "--protocol",
                "tcp",
            ],
        ];
        let obs: Vec<Child> = filters.iter().map(|f| observer(lab, f)).collect();
        std::thread::sleep(Duration::from_millis(500));
        // The scripted sequence: one connection each.
        assert_eq!(http(lab, "xwing", "GET", "/v1/", &[]), "200");
        assert_eq!(http(lab, "xwing", "PUT", "/v1/exhaust-port", &[]), "403");
        assert_eq!(
            http(lab, "awing", "POST", "/v1/request-landing", &[]),
            "200"
        );
        assert_eq!(
            nc(lab, "awing", "set awing-coord 0 0 3\\r\\nabc\\r\\n"),
            "STORED\r\n"
        );
        assert_eq!(
            nc(lab, "xwing", "get awing-coord\\r\\n"),
            "CLIENT_ERROR access denied\r\n"
        );
        // The outsider is "world": denied at L3/L4 (its SYN dropped).
        assert_ne!(http(lab, "outsider", "GET", "/v1/", &["-m", "1"]), "200");
        std::thread::sleep(Duration::from_millis(500));
        let got: Vec<Vec<String>> = obs
            .into_iter()
            .map(|c| {
                let mut v: Vec<String> = events(c).iter().map(sig).collect();
                v.dedup(); // a retransmitted SYN of the outsider
                v
            })
            .collect();
        let all = vec![
            "x-wing flow server:80 allow",
            "x-wing http GET /v1/ allow",
            "x-wing flow server:80 allow",
            "x-wing http PUT /v1/exhaust-port deny",
            "a-wing flow server:80 allow",
            "a-wing http POST /v1/request-landing allow",
            "a-wing flow server:11211 allow",
            "a-wing memcache set awing-coord allow",
            "x-wing flow server:11211 allow",
            "x-wing memcache get awing-coord deny",
            "world flow server:80 deny",
        ];
        let pick = |f: &dyn Fn(&str) -> bool| -> Vec<String> {
            all.iter().filter(|s| f(s)).map(|s| s.to_string()).collect()
        };
        let want: Vec<Vec<String>> = vec![
            pick(&|_| true),
            pick(&|s| s.ends_with(" deny")),
            pick(&|s| s.starts_with("x-wing ")),
            // The server endpoint serves both HTTP and memcached.
            pick(&|_| true),
            Vec::new(),
            pick(&|s| s.contains(" http ")),
            pick(&|s| s.contains(" memcache ")),
            pick(&|s| s.contains(" PUT ")),
            pick(&|s| s.contains(" http ")),
            pick(&|s| s.contains(" memcache get ")),
            pick(&|s| s.contains(" awing-coord ")),
            pick(&|s| !s.starts_with("world") && s.ends_with(" allow")),
        ];
        for ((f, g), w) in filters.iter().zip(&got).zip(&want) {
            assert_eq!(g, w, "observe {f:?}");
        }
        // The readable format: one line per event.
        let mut c = Command::new(lab::BIN)
            .args([
                "observe",
                "--count",
                "1",
                "--control",
                lab.control.to_str().unwrap(),
            ])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(http(lab, "xwing", "PUT", "/v1/exhaust-port", &[]), "403");
        lab::wait_exit(
            &mut c,
            Duration::from_secs(5),
            "observe --count 1 did not end",
        );
        let line = stdout(&c.wait_with_output().unwrap());
        assert!(
            line.contains("ALLOW x-wing (10.66.0.12:")
                && line.contains("-> server (10.66.0.2:80) tcp flow"),
            "{line}"
        );
        let st = json(&lab.ctl(&["status", "-o", "json"]));
        assert_eq!(st["counters"]["events_undelivered"], 0);
    });
}

/// A metric's value, summed over the series whose labels contain `labels`.
fn metric(text: &str, name: &str, labels: &[&str]) -> u64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter(|l| labels.iter().all(|x| l.contains(x)))
        .map(|l| {
            l.rsplit(' ')
                .next()
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0) as u64
        })
        .sum()
}

#[test]
fn metrics_count_what_was_sent() {
    lab::with_lab("opsmet", |lab| {
        let dir = lab::policy_dir(&[]);
        // No --log: workers count decisions whether or not events flow.
        lab.with_log = false;
        lab.start(Mode::Policy(dir.path()), &["--metrics", "127.0.0.1:9464"])
            .unwrap();
        for _ in 0..5 {
            assert_eq!(http(lab, "xwing", "GET", "/v1/", &[]), "200");
        }
        for _ in 0..3 {
            assert_eq!(http(lab, "xwing", "PUT", "/v1/exhaust-port", &[]), "403");
        }
        for _ in 0..2 {
            assert_eq!(
                nc(lab, "xwing", "get awing-coord\\r\\n"),
                "CLIENT_ERROR access denied\r\n"
            );
        }
        // Four requests on one connection: 3 allowed, 1 denied.
        assert_eq!(
            nc(
                lab,
                "awing",
                "set awing-coord 0 0 1\\r\\nx\\r\\nget awing-coord\\r\\nget awing-coord\\r\\nget xwing-coord\\r\\n"
            ),
            "STORED\r\nVALUE awing-coord 0 1\r\nx\r\nEND\r\nVALUE awing-coord 0 1\r\nx\r\nEND\r\nCLIENT_ERROR access denied\r\n"
        );
        // Published every 100 ms.
        std::thread::sleep(Duration::from_millis(300));
        let out = lab.exec(
            "enf",
            &[
                "curl",
                "-s",
                "-m",
                "3",
                "-i",
                "http://127.0.0.1:9464/metrics",
            ],
        );
        let text = stdout(&out);
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        assert!(text.contains("Content-Type: application/openmetrics-text"));
        let l7 = "enforcer_l7_requests_total";
        assert_eq!(
            metric(&text, l7, &["protocol=\"http\"", "verdict=\"allow\""]),
            5
        );
        assert_eq!(
            metric(
                &text,
                l7,
                &[
                    "protocol=\"http\"",
                    "verdict=\"allow\"",
                    "rule=\"deathstar-http/spec.ingress[0].toPorts[0]/http[0]\""
                ]
            ),
            5,
            "{text}"
        );
        assert_eq!(
            metric(&text, l7, &["protocol=\"http\"", "verdict=\"deny\""]),
            3
        );
        assert_eq!(
            metric(&text, l7, &["protocol=\"memcache\"", "verdict=\"allow\""]),
            3
        );
        assert_eq!(
            metric(&text, l7, &["protocol=\"memcache\"", "verdict=\"deny\""]),
            3
        );
        assert_eq!(
            metric(
                &text,
                "enforcer_flow_decisions_total",
                &["verdict=\"allow\""]
            ),
            11,
            "one flow per connection"
        );
        assert_eq!(
            metric(
                &text,
                "enforcer_flow_decisions_total",
                &["verdict=\"deny\""]
            ),
            0
        );
        assert_eq!(metric(&text, "enforcer_policy_revision", &[]), 1);
        assert_eq!(metric(&text, "enforcer_policy_reloads_total", &[]), 0);
        assert_eq!(metric(&text, "enforcer_xdp_zero_copy", &[]), 0);
        assert_eq!(
            text.lines()
                .filter(|l| l.starts_with("enforcer_xdp_rx_dropped_total{"))
                .count(),
            4,
            "one series per AF_XDP socket"
        );
        // Frames: what the status counts, split by side and verdict.
        let st = json(&lab.ctl(&["status", "-o", "json"]));
        let frames = metric(&text, "enforcer_frames_total", &[]);
        assert!(frames > 0);
        let fwd = metric(&text, "enforcer_frames_total", &["verdict=\"forward\""]);
        assert!(fwd > 0 && fwd <= frames);
        assert!(st["counters"]["frames_in"].as_u64().unwrap() >= frames);
        assert!(metric(&text, "enforcer_bytes_total", &["side=\"clients\""]) > 0);
        assert!(metric(&text, "enforcer_bytes_total", &["side=\"servers\""]) > 0);
        assert_eq!(
            metric(&text, "enforcer_drops_total", &["reason=\"l7-denied\""]),
            st["counters"]["drops"]["l7-denied"].as_u64().unwrap_or(0)
        );
        let out = lab.exec(
            "enf",
            &[
                "curl",
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "http://127.0.0.1:9464/",
            ],
        );
        assert_eq!(stdout(&out), "404");
        // Every series the Grafana dashboard queries exists.
        let dash = std::fs::read_to_string(lab::repo("docs/grafana-enforcer.json")).unwrap();
        let re = regex::Regex::new(r"enforcer_[a-z0-9_]+").unwrap();
        let names: std::collections::BTreeSet<&str> =
            re.find_iter(&dash).map(|m| m.as_str()).collect();
        assert!(names.len() > 10, "{names:?}");
        for n in names {
            assert!(
                text.lines()
                    .any(|l| l.starts_with(&format!("{n}{{")) || l.starts_with(&format!("{n} "))),
                "the dashboard queries {n}, /metrics has no such series"
            );
        }
    });
}

#[test]
fn twenty_reloads_under_wrk_lose_no_request_and_switch_rules_when_asked() {
    lab::with_lab("opswrk", |lab| {
        let dir = lab::policy_dir(&[]);
        lab.start(Mode::Policy(dir.path()), &["--no-watch"])
            .unwrap();
        // A generous timeout: on a loaded machine a response can take a
        // second or more with or without reloads; a lost one never comes.
        let wrk = Command::new("ip")
            .args([
                "netns",
                "exec",
                &lab.ns("awing"),
                "wrk",
                "-t1",
                "-c4",
                "-d20s",
                "--timeout",
                "10s",
            ])
            .arg(format!("http://{SERVER4}/v1/"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("wrk");
        std::thread::sleep(Duration::from_millis(500));
        let variant = tempfile::tempdir().unwrap();
        let strict = std::fs::read_to_string(dir.path().join("sw-deathstar-http.yaml")).unwrap();
        let open = open_exhaust();
        let target = dir.path().join("sw-deathstar-http.yaml");
        for i in 0..20u64 {
            let opened = i % 2 == 0;
            let text = if opened { &open } else { &strict };
            if i % 4 < 2 {
                let f = variant.path().join("sw-deathstar-http.yaml");
                std::fs::write(&f, text).unwrap();
                let out = lab.ctl(&["policy", "import", f.to_str().unwrap()]);
                assert_eq!(stdout(&out), format!("Revision: {}\n", i + 2));
            } else {
                let tmp = dir.path().join(".next");
                std::fs::write(&tmp, text).unwrap();
                std::fs::rename(&tmp, &target).unwrap();
                let before = lab
                    .enforcer_stdout()
                    .iter()
                    .filter(|l| l.contains("policy reloaded"))
                    .count();
                lab.signal(libc::SIGHUP);
                assert!(lab.wait_stdout("policy reloaded", before + 1));
                assert_eq!(revision(lab), i + 2);
            }
            // The new rules apply to the very next request.
            let want = if opened { "503" } else { "403" };
            assert_eq!(
                http(lab, "xwing", "PUT", "/v1/exhaust-port", &[]),
                want,
                "reload {i}"
            );
            std::thread::sleep(Duration::from_millis(300));
        }
        let out = wrk.wait_with_output().expect("wrk");
        let report = stdout(&out);
        assert!(out.status.success(), "{report}");
        let requests: u64 = report
            .lines()
            .find(|l| l.contains("requests in"))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        assert!(requests > 100, "{report}");
        assert!(!report.contains("Non-2xx"), "{report}");
        assert!(!report.contains("Socket errors"), "{report}");
        let st = json(&lab.ctl(&["status", "-o", "json"]));
        assert_eq!(st["policy"]["reloads_ok"], 20);
        assert_eq!(st["policy"]["reloads_failed"], 0);
        assert!(Path::new(&lab.control).exists());
    });
}

/// The 2017 demo's transcript, step by step (scripts/demo.sh starwars-2017
/// checks every output and exits 1 on the first difference).
#[test]
fn the_2017_starwars_transcript_passes() {
    if !lab::available() {
        return;
    }
    let out = Command::new("bash")
        .arg(lab::repo("scripts/demo.sh"))
        .arg("starwars-2017")
        .env("ENFORCER_BIN", lab::BIN)
        .current_dir(lab::repo(""))
        .stdin(Stdio::null())
        .output()
        .expect("demo.sh");
    let text = stdout(&out);
    assert!(
        out.status.success() && text.contains("# TRANSCRIPT PASSED"),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for step in [
        "$ enforcer policy import sw_policy_l4.json\nRevision: 2\n",
        "$ enforcer policy import sw_policy_http.real.json\nRevision: 3\n",
        "Ship landed",
        "HTTP/1.1 403 Forbidden",
        "Panic: deathstar exploded",
    ] {
        assert!(text.contains(step), "{step:?} not in:\n{text}");
    }
    let left: Vec<String> = std::fs::read_dir("/etc/netns")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("demo"))
                .collect()
        })
        .unwrap_or_default();
    let pid_prefix = |n: &String| {
        text.contains(&format!(
            "/run/enforcer-lab/{}/",
            n.trim_end_matches(|c: char| !c.is_ascii_digit())
        ))
    };
    assert!(!left.iter().any(pid_prefix), "left in /etc/netns: {left:?}");
}

#[test]
fn audit_mode_forwards_would_be_denials_and_logs_them() {
    lab::with_lab("opsaud", |lab| {
        let dir = lab::policy_dir(&[]);
        lab.start(
            Mode::Policy(dir.path()),
            &["--audit", "--metrics", "127.0.0.1:9464"],
        )
        .unwrap();
        let obs = observer(lab, &["--verdict", "audit"]);
        std::thread::sleep(Duration::from_millis(500));
        // HTTP: denied without the header, so the deathstar answers itself.
        assert_eq!(http(lab, "xwing", "PUT", "/v1/exhaust-port", &[]), "503");
        assert_eq!(http(lab, "xwing", "GET", "/v1/", &[]), "200");
        // memcached: the x-wing may not read the a-wing's key.
        assert_eq!(
            nc(lab, "awing", "set awing-coord 0 0 3\\r\\nabc\\r\\n"),
            "STORED\r\n"
        );
        assert_eq!(
            nc(lab, "xwing", "get awing-coord\\r\\n"),
            "VALUE awing-coord 0 3\r\nabc\r\nEND\r\n"
        );
        // L3/L4: the outsider (world) is let in.
        assert_eq!(http(lab, "outsider", "GET", "/v1/", &[]), "200");
        std::thread::sleep(Duration::from_millis(300));
        let got: Vec<String> = events(obs)
            .iter()
            .map(|v| format!("{} reason={}", sig(v), v["reason"].as_str().unwrap_or("")))
            .collect();
        assert_eq!(
            got,
            [
                "x-wing http PUT /v1/exhaust-port audit reason=no L7 rule matches",
                "x-wing memcache get awing-coord audit reason=no L7 rule matches",
                "world flow server:80 audit reason=no ingress rule of server allows it",
            ],
            "observed audit events"
        );
        let log = lab.verdicts();
        assert_eq!(log.iter().filter(|v| v["verdict"] == "audit").count(), 3);
        assert_eq!(log.iter().filter(|v| v["verdict"] == "deny").count(), 0);
        std::thread::sleep(Duration::from_millis(200));
        let st = json(&lab.ctl(&["status", "-o", "json"]));
        assert_eq!(st["audit"], true);
        assert_eq!(st["counters"]["l7_requests_audited"], 2);
        assert_eq!(st["counters"]["l7_requests_denied"], 0);
        let text = stdout(&lab.exec(
            "enf",
            &["curl", "-s", "-m", "3", "http://127.0.0.1:9464/metrics"],
        ));
        assert_eq!(
            metric(&text, "enforcer_l7_requests_total", &["verdict=\"audit\""]),
            2
        );
        assert_eq!(
            metric(
                &text,
                "enforcer_flow_decisions_total",
                &["verdict=\"audit\""]
            ),
            1
        );
    });
}

/// The deathstar policy annotated for audit.
fn audited_deathstar() -> String {
    std::fs::read_to_string(lab::repo("policies/sw-deathstar-http.yaml"))
        .expect("policy")
        .replace(
            "  name: \"deathstar-http\"\n",
            "  name: \"deathstar-http\"\n  annotations:\n    enforcer.io/audit: \"true\"\n",
        )
}

#[test]
fn a_policy_annotated_for_audit_audits_its_endpoint_until_another_policy_enforces_it() {
    lab::with_lab("opspaud", |lab| {
        let dir = endpoints_only();
        let text = audited_deathstar();
        assert!(text.contains("enforcer.io/audit"));
        std::fs::write(dir.path().join("sw.yaml"), text).unwrap();
        lab.start(Mode::Policy(dir.path()), &["--no-watch"])
            .unwrap();
        let obs = observer(lab, &["--verdict", "audit"]);
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(http(lab, "xwing", "PUT", "/v1/exhaust-port", &[]), "503");
        assert_eq!(http(lab, "outsider", "GET", "/v1/", &[]), "200");
        assert_eq!(http(lab, "xwing", "GET", "/v1/", &[]), "200");
        std::thread::sleep(Duration::from_millis(300));
        let got: Vec<String> = events(obs).iter().map(sig).collect();
        assert_eq!(
            got,
            [
                "x-wing http PUT /v1/exhaust-port audit",
                "world flow server:80 audit",
            ]
        );
        // A policy without the annotation selects the server too: its
        // denials are real again.
        let out = lab.ctl(&[
            "policy",
            "import",
            lab::repo("policies/memcd-sw-security-policy.yaml")
                .to_str()
                .unwrap(),
        ]);
        assert_eq!(
            stdout(&out),
            "Revision: 2\n",
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(http(lab, "xwing", "PUT", "/v1/exhaust-port", &[]), "403");
        assert_ne!(http(lab, "outsider", "GET", "/v1/", &["-m", "1"]), "200");
        assert_eq!(
            nc(lab, "xwing", "get awing-coord\\r\\n"),
            "CLIENT_ERROR access denied\r\n"
        );
    });
}
