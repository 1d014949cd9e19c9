//! End-to-end tests through the real enforcer in a veth lab (root needed;
//! skipped otherwise, a failure under CI=true). Each test has its own lab
//! prefix; run with --test-threads=1.

mod kit;

use std::path::Path;
use std::time::{Duration, Instant};

use kit::guide;
use kit::lab::{self, bmemcached, nc, ok, repo, stdout, Lab, Mode, DENIED8, SERVER4, SERVER6};

#[test]
fn dataplane_forwards_both_families_and_detaches_on_sigterm() {
    lab::with_lab("dpfwd", |lab| {
        // Without the enforcer the wire is open: nothing crosses.
        assert!(
            !lab.ping("awing", SERVER4),
            "traffic crossed without the enforcer"
        );
        // Forget the failed resolution so the next ping starts afresh.
        assert!(ok(&lab.exec("awing", &["ip", "neigh", "flush", "all"])));
        lab.start(Mode::PassThrough, &[]).unwrap();
        assert_eq!(lab.xdp_links().len(), 2, "XDP on cli0 and srv0");
        assert!(lab.ping("awing", SERVER4));
        assert!(lab.ping("outsider", SERVER6));
        let r = lab.curl("xwing", "http://10.66.0.2/v1/", &[]);
        assert!(stdout(&r).contains("\"name\": \"Death Star\""), "{r:?}");
        let r = lab.curl(
            "tracker",
            "http://[fd66::2]/v1/request-landing",
            &["-XPOST"],
        );
        assert_eq!(stdout(&r), "Ship landed\n");
        assert_eq!(
            lab.memcache_roundtrip("awing", "awing-coord", "4309.432,918.980"),
            "4309.432,918.980"
        );
        // Binary protocol, as the memcached guide's ships speak it.
        let script = format!(
            "import bmemcached\n\
             c = bmemcached.Client(('{SERVER4}:11211',), socket_timeout=3)\n\
             assert c.set('xwing-coord', '8893.34,234.3290', time=2400)\n\
             print(c.get('xwing-coord'))\n"
        );
        let r = lab.exec("tracker", &["python3", "-c", &script]);
        assert_eq!(stdout(&r).trim(), "8893.34,234.3290", "{r:?}");
        let r = lab.sh(
            "xwing",
            "printf 'get awing-coord\\r\\n' | nc -N -w 3 fd66::2 11211",
        );
        assert!(stdout(&r).contains("VALUE awing-coord 0 16"), "{r:?}");
        let log = lab.deathstar_log();
        assert!(log.iter().any(|e| e["path"] == "/v1/request-landing"
            && e["client"].as_str().unwrap_or("").contains("fd66::13")));

        // SIGUSR1: counters while running.
        lab.signal(libc::SIGUSR1);
        let t = Instant::now();
        while !lab
            .enforcer_stdout()
            .iter()
            .any(|l| l.starts_with("{\"counters\""))
        {
            assert!(
                t.elapsed() < Duration::from_secs(3),
                "no counters on SIGUSR1"
            );
            std::thread::sleep(Duration::from_millis(20));
        }

        let st = lab.stop().unwrap();
        assert_eq!(st.status.code(), Some(0), "{st:?}");
        let c = st.counters().expect("counters on exit");
        let dp = &c["dataplane"];
        assert!(dp["rx_frames"].as_u64().unwrap() >= 20, "{c}");
        assert!(dp["tx_frames"].as_u64().unwrap() >= 20, "{c}");
        assert_eq!(dp["handoff_in"], dp["handoff_out"], "{c}");
        assert_eq!(dp["no_free_frame"], 0, "{c}");
        assert_eq!(dp["umem_frames_unaccounted"], 0, "UMEM leak: {c}");
        assert!(
            lab.xdp_links().is_empty(),
            "XDP left: {:?}",
            lab.xdp_links()
        );
        assert!(
            !lab.ping("awing", SERVER4),
            "traffic crossed after the enforcer stopped"
        );
    });
}

#[test]
fn restart_and_crash_recovery_keep_links_working() {
    lab::with_lab("dprst", |lab| {
        for round in 0..2 {
            let (args, want): (&[&str], &str) = match round {
                0 => (&["--poll", "busy", "--workers", "1"], "workers=1 poll=busy"),
                _ => (&[], "workers=2 poll=adaptive"),
            };
            lab.start(Mode::PassThrough, args).unwrap();
            let ready = lab
                .enforcer_stdout()
                .into_iter()
                .find(|l| l.starts_with("ready "))
                .unwrap();
            assert!(ready.contains(want), "{ready}");
            let r = lab.curl("awing", "http://10.66.0.2/v1/healthz", &[]);
            assert_eq!(stdout(&r), "OK\n", "round {round}: {r:?}");
            let sig = if round == 0 {
                libc::SIGTERM
            } else {
                libc::SIGINT
            };
            let st = lab.stop_with(sig).unwrap();
            assert_eq!(st.status.code(), Some(0), "round {round}: {st:?}");
            assert!(lab.xdp_links().is_empty());
        }
        // The kernel path's program is attached through links that go
        // with the process, also when it is killed.
        lab.start(Mode::PassThrough, &["--kernel-path", "on"])
            .unwrap();
        assert_eq!(lab.xdp_links().len(), 2, "{:?}", lab.xdp_links());
        lab.kill().unwrap();
        assert!(lab.xdp_links().is_empty(), "{:?}", lab.xdp_links());
        // libxdp's program stays after a crash; the next start removes it.
        lab.start(Mode::PassThrough, &["--kernel-path", "off"])
            .unwrap();
        lab.kill().unwrap();
        assert_eq!(
            lab.xdp_links().len(),
            2,
            "a killed enforcer leaves its programs"
        );
        lab.start(Mode::PassThrough, &[]).unwrap();
        assert!(
            lab.enforcer_stdout()
                .iter()
                .any(|l| l.contains("removed a stale XDP program")),
            "{:?}",
            lab.enforcer_stdout()
        );
        let r = lab.curl("xwing", "http://[fd66::2]/v1/healthz", &[]);
        assert_eq!(stdout(&r), "OK\n", "{r:?}");
        assert!(lab.ping("tracker", SERVER4));
        assert_eq!(lab.stop().unwrap().status.code(), Some(0));
        assert!(lab.xdp_links().is_empty());
    });
}

/// Run the enforcer once in the lab's enforcer namespace; (exit ok, stderr).
fn run_once(lab: &Lab, args: &[&str], env_passthrough: bool) -> (bool, String) {
    let mut cmd = std::process::Command::new("ip");
    cmd.args(["netns", "exec", &lab.ns("enf"), lab::BIN])
        .args(args);
    if env_passthrough {
        cmd.env("ENFORCER_PASSTHROUGH", "1");
    }
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn refuses_unsafe_setups_with_clear_messages() {
    lab::with_lab("dpref", |lab| {
        let pol = repo("policies");
        let pol = pol.to_str().unwrap();
        let (okk, e) = run_once(lab, &["--iface", "cli0", "--policy", pol], true);
        // Host mode on an interface without addresses: nothing to protect.
        assert!(
            !okk && e.contains("host mode") && e.contains("no global address"),
            "{e}"
        );
        let (okk, e) = run_once(
            lab,
            &["--iface", "cli0", "--peer", "nosuch0", "--policy", pol],
            true,
        );
        assert!(!okk && e.contains("nosuch0 does not exist"), "{e}");
        let (okk, e) = run_once(
            lab,
            &[
                "--iface",
                "cli0",
                "--peer",
                "srv0",
                "--policy",
                "/nonexistent/p",
            ],
            true,
        );
        assert!(!okk && e.contains("does not exist"), "{e}");
        if !Path::new("/etc/enforcer").exists() {
            let (okk, e) = run_once(lab, &["--iface", "cli0", "--peer", "srv0"], true);
            assert!(
                !okk && e.contains("write") && e.contains("/etc/enforcer/"),
                "{e}"
            );
        }
        // A spare pair in the enforcer's namespace for bad link states.
        assert!(ok(&lab.sh("enf", "ip link add dn0 type veth peer name dn1 && ethtool -K dn0 tx off tso off gso off gro off >/dev/null && ip link set dn1 up")));
        let args = ["--iface", "dn0", "--peer", "srv0", "--policy", pol];
        let (okk, e) = run_once(lab, &args, true);
        assert!(!okk && e.contains("dn0 is down"), "{e}");
        assert!(ok(&lab.sh("enf", "ip link set dn0 mtu 9000 up")));
        let (okk, e) = run_once(lab, &args, true);
        assert!(!okk && e.contains("MTU 9000"), "{e}");
        assert!(ok(
            &lab.sh("enf", "ip link set dn0 mtu 1500 && ethtool -K dn0 gro on")
        ));
        let (okk, e) = run_once(lab, &args, true);
        assert!(!okk && e.contains("ethtool -K dn0"), "{e}");
        assert!(
            lab.xdp_links().is_empty(),
            "refusals must not attach anything"
        );

        // A foreign XDP program is left alone and named.
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("foreign.c");
        let obj = dir.path().join("foreign.o");
        std::fs::write(
            &src,
            "struct xdp_md;\n\
             /* 2 = XDP_PASS; no headers, so no multiarch include paths needed */\n\
             __attribute__((section(\"xdp\"), used)) int foreign_pass(struct xdp_md *c) { return 2; }\n\
             char _license[] __attribute__((section(\"license\"), used)) = \"GPL\";\n",
        )
        .unwrap();
        let cc = std::process::Command::new("clang")
            .args(["-O2", "-target", "bpf", "-c"])
            .arg(&src)
            .arg("-o")
            .arg(&obj)
            .output();
        match cc {
            Ok(o) if o.status.success() => {
                let attach = format!(
                    "ip link set dev srv0 xdpgeneric obj {} sec xdp",
                    obj.display()
                );
                let r = lab.sh("enf", &attach);
                assert!(ok(&r), "{r:?}");
                let (okk, e) = run_once(
                    lab,
                    &["--iface", "cli0", "--peer", "srv0", "--policy", pol],
                    true,
                );
                assert!(
                    !okk && e.contains("not ours") && e.contains("foreign_pass"),
                    "{e}"
                );
                assert!(lab
                    .sh("enf", "ip -d link show srv0")
                    .stdout
                    .windows(12)
                    .any(|w| w == b"foreign_pass"));
                assert!(ok(&lab.sh("enf", "ip link set dev srv0 xdpgeneric off")));
            }
            Ok(o) if lab::in_ci() => panic!(
                "clang -target bpf failed: {}",
                String::from_utf8_lossy(&o.stderr)
            ),
            _ => eprintln!("clang -target bpf unavailable: foreign-program check not run"),
        }
    });
}

#[test]
fn four_queues_four_workers_carry_parallel_flows() {
    lab::with_lab_queues("dpmq", 4, |lab| {
        lab.start(Mode::PassThrough, &["--poll", "adaptive"])
            .unwrap();
        let ready = lab
            .enforcer_stdout()
            .into_iter()
            .find(|l| l.starts_with("ready "))
            .unwrap();
        assert!(
            ready.contains("queues=4/4")
                && ready.contains("workers=4")
                && ready.contains("poll=adaptive"),
            "{ready}"
        );
        let hosts = ["awing", "xwing", "tracker", "outsider"];
        std::thread::scope(|s| {
            for h in hosts {
                let lab = &*lab;
                s.spawn(move || {
                    let script = "for i in $(seq 20); do curl -s -m 3 http://10.66.0.2/v1/healthz || exit 1; \
                                  curl -s -m 3 -g 'http://[fd66::2]/v1/healthz' || exit 1; done";
                    let r = lab.sh(h, script);
                    assert!(ok(&r), "{h}: {r:?}");
                    assert_eq!(stdout(&r).matches("OK").count(), 40, "{h}");
                });
            }
        });
        let st = lab.stop().unwrap();
        assert_eq!(st.status.code(), Some(0));
        let c = st.counters().unwrap();
        assert_eq!(
            c["dataplane"]["handoff_in"], c["dataplane"]["handoff_out"],
            "{c}"
        );
        assert_eq!(c["dataplane"]["handoff_full"], 0, "{c}");
        assert_eq!(
            c["dataplane"]["umem_frames_unaccounted"], 0,
            "UMEM leak: {c}"
        );
    });
}

/// 1 GiB through the dataplane, sha256 compared on both ends.
#[test]
fn one_gib_arrives_byte_exact_through_the_dataplane() {
    lab::with_lab("dpbulk", |lab| {
        lab.start(Mode::PassThrough, &[]).unwrap();
        // The time is for the log; speed is the benchmarks' to judge.
        let took = lab.bulk(1 << 30);
        eprintln!("1 GiB in {took:?}");
        let st = lab.stop().unwrap();
        let c = st.counters().unwrap();
        assert_eq!(c["dataplane"]["no_free_frame"], 0, "{c}");
        assert_eq!(
            c["dataplane"]["umem_frames_unaccounted"], 0,
            "UMEM leak: {c}"
        );
    });
}

/// A dual-stack TCP echo server on the server's port 9000 (the fixture's
/// L4-only port): answers `echo:` + what it read, then closes.
const ECHO9000: &str = r#"
import socket
s = socket.socket(socket.AF_INET6)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("::", 9000))
s.listen(16)
while True:
    c, _ = s.accept()
    c.sendall(b"echo:" + c.recv(100))
    c.close()
"#;

fn echo(lab: &Lab, host: &str, dst: &str) -> String {
    let script = format!("printf hello | nc -N -w 3 {dst} 9000");
    stdout(&lab.sh(host, &script))
}

/// L3/L4 through the engine with the seed policies plus an L4-only fixture
/// port. (Allowed connections to the L7 ports 80 and 11211 are the L7
/// tests' business.)
#[test]
fn l34_policy_allows_spaceships_and_denies_the_rest() {
    lab::with_lab("l34", |lab| {
        let pol = lab::policy_dir(&["tests/fixtures/bulk-l4.yaml"]);
        lab.start(Mode::Policy(pol.path()), &[]).unwrap();
        // ICMP: the icmps rule lets spaceships ping, nobody else.
        assert!(lab.ping("xwing", SERVER4));
        assert!(lab.ping("awing", SERVER6));
        assert!(!lab.ping("outsider", SERVER4));
        assert!(!lab.ping("outsider", SERVER6));
        assert!(!lab.ping("tracker", SERVER4));
        assert!(!lab.ping("tracker", SERVER6));

        // L4-only port: a-wing's connections and their replies pass, v4 and v6.
        let mut echo_srv = lab.spawn("server", &["python3", "-c", ECHO9000]);
        lab.wait_listen("server", 9000);
        assert_eq!(echo(lab, "awing", SERVER4), "echo:hello");
        assert_eq!(echo(lab, "awing", SERVER6), "echo:hello");
        // Nobody else has a rule for it: their SYNs are dropped.
        for host in ["xwing", "tracker", "outsider"] {
            assert_eq!(echo(lab, host, SERVER4), "", "{host} v4");
            assert_eq!(echo(lab, host, SERVER6), "", "{host} v6");
        }

        // The HTTP port is for spaceships only: a denied SYN is dropped
        // (curl times out) and nothing reaches the server.
        for (host, url) in [
            ("outsider", "http://10.66.0.2/v1/"),
            ("outsider", "http://[fd66::2]/v1/"),
            ("tracker", "http://10.66.0.2/v1/"),
            ("tracker", "http://[fd66::2]/v1/"),
        ] {
            let r = lab.curl(host, url, &[]);
            assert_eq!(r.status.code(), Some(28), "{host} {url}: {r:?}");
        }
        assert!(lab.deathstar_log().is_empty(), "{:?}", lab.deathstar_log());

        // Whatever the L7 layer makes of a request, the wire stays up.
        let _ = lab.curl("xwing", "http://10.66.0.2/v1/healthz", &[]);
        let _ = lab.memcache_roundtrip("awing", "awing-coord", "1.0,2.0");
        assert!(
            lab.ping("xwing", SERVER4),
            "the enforcer went down on L7 traffic"
        );
        assert_eq!(echo(lab, "awing", SERVER6), "echo:hello");

        let _ = echo_srv.kill();
        let _ = echo_srv.wait();

        let st = lab.stop().unwrap();
        assert_eq!(st.status.code(), Some(0), "{st:?}");
        let c = st.counters().unwrap();
        assert!(
            c["engine"]["drops"]["policy-denied"].as_u64().unwrap_or(0) > 0,
            "{c}"
        );
        assert_eq!(
            c["dataplane"]["umem_frames_unaccounted"], 0,
            "UMEM leak: {c}"
        );
        let v = lab.verdicts();
        let from = |e: &serde_json::Value, ip: &str| e["flow"]["src"] == ip;
        assert!(
            v.iter()
                .any(|e| e["verdict"] == "deny" && from(e, "10.66.0.14")),
            "no deny for outsider in the verdict log: {v:?}"
        );
        assert!(
            v.iter()
                .any(|e| e["verdict"] == "allow" && from(e, "10.66.0.11")),
            "no allow for a-wing in the verdict log: {v:?}"
        );
    });
}

#[test]
fn one_gib_arrives_byte_exact_through_an_l4_rule() {
    lab::with_lab("l4bulk", |lab| {
        let pol = lab::policy_dir(&["tests/fixtures/bulk-l4.yaml"]);
        lab.start(Mode::Policy(pol.path()), &[]).unwrap();
        // The time is for the log; speed is the benchmarks' to judge.
        let took = lab.bulk(1 << 30);
        eprintln!("1 GiB in {took:?}");
        let st = lab.stop().unwrap();
        assert_eq!(st.status.code(), Some(0));
        let c = st.counters().unwrap();
        assert_eq!(
            c["dataplane"]["umem_frames_unaccounted"], 0,
            "UMEM leak: {c}"
        );
        assert!(
            c["engine"]["frames_forwarded"].as_u64().unwrap() > 700_000,
            "{c}"
        );
    });
}

/// SIGHUP reloads the policy directory; a broken policy is refused and the
/// running one kept.
#[test]
fn sighup_reloads_the_policy_and_keeps_it_on_errors() {
    lab::with_lab("hup", |lab| {
        let pol = lab::policy_dir(&[]);
        lab.start(Mode::Policy(pol.path()), &[]).unwrap();
        let mut echo_srv = lab.spawn("server", &["python3", "-c", ECHO9000]);
        lab.wait_listen("server", 9000);
        assert_eq!(
            echo(lab, "awing", SERVER4),
            "",
            "port 9000 open before the rule"
        );

        std::fs::copy(
            repo("tests/fixtures/bulk-l4.yaml"),
            pol.path().join("bulk-l4.yaml"),
        )
        .unwrap();
        lab.signal(libc::SIGHUP);
        assert!(
            lab.wait_stdout("policy reloaded", 1),
            "{:?}",
            lab.enforcer_stdout()
        );
        assert_eq!(echo(lab, "awing", SERVER4), "echo:hello");
        assert_eq!(echo(lab, "xwing", SERVER4), "");

        std::fs::write(
            pol.path().join("broken.yaml"),
            "kind: CiliumNetworkPolicy\nspec: [\n",
        )
        .unwrap();
        lab.signal(libc::SIGHUP);
        let t = Instant::now();
        // The refusal and the errors under it are separate lines: wait for both.
        while !(lab.enforcer_stderr().contains("reload failed")
            && lab.enforcer_stderr().contains("broken.yaml"))
        {
            assert!(
                t.elapsed() < Duration::from_secs(5),
                "{}",
                lab.enforcer_stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(
            lab.enforcer_stderr().contains("broken.yaml"),
            "{}",
            lab.enforcer_stderr()
        );
        assert_eq!(
            echo(lab, "awing", SERVER4),
            "echo:hello",
            "the running policy was kept"
        );

        std::fs::remove_file(pol.path().join("broken.yaml")).unwrap();
        std::fs::remove_file(pol.path().join("bulk-l4.yaml")).unwrap();
        lab.signal(libc::SIGHUP);
        assert!(
            lab.wait_stdout("policy reloaded", 2),
            "{:?}",
            lab.enforcer_stdout()
        );
        assert_eq!(
            echo(lab, "awing", SERVER4),
            "",
            "rule removed, new connections denied"
        );
        let _ = echo_srv.kill();
        let _ = echo_srv.wait();
        assert_eq!(lab.stop().unwrap().status.code(), Some(0));
    });
}

/// The seed scenarios' key steps through the real enforcer with `policies/`
/// (what `scripts/demo.sh` shows): per-request memcached and HTTP decisions,
/// denials in the protocols' own words, denied requests never at the server.
#[test]
fn seed_scenarios_end_to_end() {
    lab::with_lab("seed", |lab| {
        lab.start(Mode::Policy(&repo("policies")), &[]).unwrap();

        // Memcached guide.
        guide::memcached_own_keys(lab);
        assert_eq!(
            nc(lab, "xwing", "get awing-coord\\r\\n"),
            "CLIENT_ERROR access denied\r\n"
        );
        // Denied, then allowed again on the same connection.
        assert_eq!(
            bmemcached(
                lab,
                "awing",
                "show(lambda: client.get('xwing-coord'))\n\
                 show(lambda: client.set('xwing-coord','0.0,0.0',time=2400))\n\
                 show(lambda: client.get('awing-coord'))\n",
            ),
            [DENIED8, DENIED8, "4309.432,918.980"]
        );
        assert_eq!(
            bmemcached(
                lab,
                "tracker",
                "show(lambda: client.get('xwing-coord'))\n\
                 show(lambda: client.set('awing-coord','0.0,0.0',time=1200))\n",
            ),
            ["8893.34,234.3290", DENIED8]
        );
        // Nothing denied changed a value.
        assert_eq!(
            lab.memcache_roundtrip("awing", "awing-coord", "9852.542,892.1318"),
            "9852.542,892.1318"
        );
        assert_eq!(
            nc(lab, "tracker", "get xwing-coord\\r\\n"),
            "VALUE xwing-coord 0 16\r\n8893.34,234.3290\r\nEND\r\n"
        );

        // Star Wars demo.
        let r = lab.curl("awing", "http://10.66.0.2/v1/request-landing", &["-XPOST"]);
        assert_eq!(stdout(&r), "Ship landed\n");
        assert!(lab.ping("xwing", SERVER4));
        let r = lab.curl("xwing", "http://[fd66::2]/v1/", &[]);
        assert!(stdout(&r).contains("\"name\": \"Death Star\""), "{r:?}");
        let r = lab.curl(
            "xwing",
            "http://10.66.0.2/v1/exhaust-port",
            &["-i", "-XPUT"],
        );
        let out = stdout(&r);
        assert!(out.starts_with("HTTP/1.1 403"), "{out}");
        assert!(out.contains("\r\n\r\nAccess denied"), "{out}");
        let r = lab.curl(
            "xwing",
            "http://10.66.0.2/v1/exhaust-port",
            &["-i", "-XPUT", "-H", "X-Has-Force: true"],
        );
        let out = stdout(&r);
        assert!(
            out.starts_with("HTTP/1.1 503") && out.contains("Panic: deathstar exploded"),
            "{out}"
        );
        let r = lab.curl("outsider", "http://10.66.0.2/v1/", &[]);
        assert_eq!(r.status.code(), Some(28));

        // The server saw the forceful PUT only.
        let puts: Vec<_> = lab
            .deathstar_log()
            .into_iter()
            .filter(|e| e["path"] == "/v1/exhaust-port")
            .collect();
        assert_eq!(puts.len(), 1, "{puts:?}");
        assert_eq!(puts[0]["x_has_force"], "true");

        let c = lab.stop_clean();
        assert!(
            c["engine"]["l7_requests_denied"].as_u64().unwrap() >= 5,
            "{c}"
        );
        assert!(lab
            .verdicts()
            .iter()
            .any(|e| e["kind"] == "memcache" && e["verdict"] == "deny"));
        assert!(lab
            .verdicts()
            .iter()
            .any(|e| e["kind"] == "http" && e["verdict"] == "deny"));
    });
}
