//! Compatibility: what real memcached serves, and the policy allows, passes
//! through the real enforcer unharmed. Real memcached (1.6, the lab's) and
//! real clients (pymemcache, bmemcached, memaslap, nc). The reference for
//! every answer is the same memcached asked directly, from its own host.
//! Root only; under CI=true a missing prerequisite is a failure.

mod kit;

use kit::lab::{self, nc, stdout, Lab, Mode, SERVER4};

/// Start the enforcer with endpoints.yaml + tests/fixtures/compat.yaml:
/// a-wing may use every command group, x-wing get and set of any key, the
/// tracker only get. The directory is the enforcer's as long as it runs.
fn start_with_policy(lab: &mut Lab) -> tempfile::TempDir {
    let dir = lab::dir_with(&["tests/fixtures/compat.yaml"]);
    lab.start(Mode::Policy(dir.path()), &[]).unwrap();
    dir
}

/// A client script of tests/kit (its arguments: address, port) run twice:
/// on the server against `127.0.0.1` (the server directly) and on the
/// a-wing against the server (through the enforcer). Both outputs.
fn direct_and_through(lab: &Lab, script: &str, port: &str) -> (String, String) {
    let script = lab::repo(script);
    let script = script.to_str().expect("utf-8 path");
    let run = |host: &str, addr: &str| {
        let out = lab.exec(host, &["python3", script, addr, port]);
        assert!(
            out.status.success(),
            "{script} on {host}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout(&out)
    };
    (run("server", "127.0.0.1"), run("awing", SERVER4))
}

/// Line by line, what the client script read through the enforcer is what
/// it read directly (lines start with the request's name), except for the
/// requests `refused` names, which the enforcer resets.
fn assert_as_directly(direct: &str, through: &str, refused: impl Fn(&str, &str) -> bool) {
    for (d, t) in direct.lines().zip(through.lines()) {
        let name = d.split(' ').next().unwrap();
        if refused(name, d) {
            assert!(
                t.ends_with("ConnectionResetError") || t.ends_with("<closed>"),
                "{name}: through the enforcer {t:?}, directly {d:?}"
            );
        } else {
            assert_eq!(t, d, "through the enforcer vs directly");
        }
    }
}

/// An engine counter of the last counters line; a drop reason no frame had
/// is absent, read as 0.
fn engine(c: &serde_json::Value, key: &str) -> u64 {
    match key.strip_prefix("drops/") {
        Some(reason) => c["engine"]["drops"][reason].as_u64().unwrap_or(0),
        None => c["engine"][key]
            .as_u64()
            .unwrap_or_else(|| panic!("no engine counter {key}: {c}")),
    }
}

/// Replies of one memcached at two moments differ in numbers (cas values,
/// times, counters) and, for listings, in their lines (which items and
/// slabs exist): listings are compared by their last line, the rest with
/// every run of digits as `#`.
fn normalize(step: &str, reply: &str) -> String {
    let mut digits = String::new();
    for c in reply.chars() {
        if !c.is_ascii_digit() {
            digits.push(c);
        } else if !digits.ends_with('#') {
            digits.push('#');
        }
    }
    if step.starts_with("stats") || step.starts_with("lru-crawler") {
        return digits
            .trim_end()
            .rsplit('\n')
            .next()
            .unwrap_or("")
            .to_string();
    }
    digits
}

#[test]
fn memcached_answers_every_command_and_error_itself() {
    lab::with_lab("cmpmc", |lab| {
        let _pol = start_with_policy(lab);
        // tests/kit/mc_session.py: step name -> reply.
        let (direct, through) = direct_and_through(lab, "tests/kit/mc_session.py", "11211");
        let json = |s: &str| -> serde_json::Map<String, serde_json::Value> {
            serde_json::from_str(s).expect("session JSON")
        };
        let (direct, through) = (json(&direct), json(&through));
        assert_eq!(direct.len(), through.len());
        for (step, want) in &direct {
            let want = want.as_str().unwrap();
            let got = through[step].as_str().unwrap();
            assert_eq!(
                normalize(step, got),
                normalize(step, want),
                "step {step}: through the enforcer {got:?}, memcached directly {want:?}"
            );
            assert!(!got.contains("access denied"), "{step}: {got:?}");
        }
        // The error classes, as memcached words them, each followed by a
        // request that works on the same connection.
        for (step, answer) in [
            ("unknown", "ERROR\r\n"),
            ("blank", "ERROR\r\n"),
            (
                "negative-length",
                "CLIENT_ERROR bad command line format\r\n",
            ),
            (
                "verbosity-invalid",
                "CLIENT_ERROR bad command line format\r\n",
            ),
            ("cas-missing", "ERROR\r\nERROR\r\n"),
            (
                "cas-bad",
                "CLIENT_ERROR bad command line format\r\nERROR\r\n",
            ),
            (
                "long-key-set",
                "CLIENT_ERROR bad command line format\r\nERROR\r\n",
            ),
            ("too-large", "SERVER_ERROR object too large for cache\r\n"),
            ("http", "<closed>"),
        ] {
            assert_eq!(through[step], answer, "{step}");
        }
        for step in [
            "unknown-then-get",
            "blank-then-get",
            "bad-length-then-get",
            "cas-bad-then-get",
            "long-key-then-get",
            "too-large-then-get",
            "noreply-error-then-get",
        ] {
            assert!(
                through[step].as_str().unwrap().starts_with("VALUE k 0 "),
                "{step}: {:?}",
                through[step]
            );
        }

        // A policy still decides: the tracker may only get. A rejected set
        // is a set (denied), an unknown line is in no group (memcached's
        // own answer, from the enforcer), and the connection goes on.
        assert_eq!(
            nc(
                lab,
                "tracker",
                "set k 0 0 -1\\r\\nbogus\\r\\n\\r\\nget k\\r\\n"
            ),
            "CLIENT_ERROR access denied\r\nERROR\r\nERROR\r\nEND\r\n"
        );

        let c = lab.stop_clean();
        assert_eq!(engine(&c, "drops/l7-hold-overflow"), 0, "{c}");
        let v = lab.verdicts();
        assert!(
            v.iter().any(|e| e["kind"] == "memcache"
                && e["verdict"] == "deny"
                && e["command"] == "unknown"),
            "{v:?}"
        );
    });
}

/// pymemcache sets `n` keys of ~93 bytes, then reads them with one
/// `get_many` (one `get` line): prints "line-length hits one-value".
fn multiget(lab: &Lab, n: usize) -> Vec<String> {
    let script = format!(
        "from pymemcache.client.base import Client\n\
         c = Client(('{SERVER4}', 11211), connect_timeout=5, timeout=10)\n\
         keys = ['compat:%05d:' % i + 'x' * 80 for i in range({n})]\n\
         for i in range(0, {n}, 200):\n\
         \x20   c.set_many({{k: k[:12] for k in keys[i:i + 200]}})\n\
         got = c.get_many(keys)\n\
         line = len('get ' + ' '.join(keys))\n\
         ok = sum(1 for k in keys if got.get(k) == k[:12].encode())\n\
         print(line, ok, c.get('compat:00007:' + 'x' * 80).decode())\n"
    );
    lab.python("awing", &script)
        .split_whitespace()
        .map(String::from)
        .collect()
}

/// A 187 KB line on a fresh connection: the line is held whole until every
/// key is judged, far beyond the client's initial congestion window; the
/// enforcer acknowledges the held bytes itself and then delivers them to
/// memcached (docs/stream.md, "Held heads are acknowledged").
#[test]
fn multiget_of_2000_keys() {
    lab::with_lab("cmpmg2k", |lab| {
        let _pol = start_with_policy(lab);
        let f = multiget(lab, 2000);
        assert!(f[0].parse::<usize>().unwrap() > 180_000, "{f:?}");
        assert_eq!(&f[1..], ["2000", "compat:00007"], "{f:?}");
        let c = lab.stop_clean();
        eprintln!("owned retransmits: {}", c["engine"]["l7_owned_retransmits"]);
        assert_eq!(engine(&c, "drops/l7-hold-overflow"), 0, "{c}");
        assert_eq!(engine(&c, "l7_requests_denied"), 0, "{c}");
    });
}

#[test]
fn long_multiget_and_binary_groups() {
    lab::with_lab("cmpmg", |lab| {
        let _pol = start_with_policy(lab);
        // 140 keys: a 13 KB line, beyond memcached's 2048-byte limit for
        // other commands and the 8 KB the enforcer used to take, within a
        // fresh connection's congestion window (10 segments).
        let f = multiget(lab, 140);
        assert!(f[0].parse::<usize>().unwrap() > 13_000, "{f:?}");
        assert_eq!(&f[1..], ["140", "compat:00007"], "{f:?}");

        // Binary protocol: the groups bmemcached speaks, then the others
        // with raw requests, once each.
        let script = format!(
            "import bmemcached, socket, struct\n\
             c = bmemcached.Client(('{SERVER4}:11211',), socket_timeout=3)\n\
             print(c.set('b', 'v'), c.get('b'), c.add('b2', '1'), c.replace('b2', '5'))\n\
             print(c.incr('b2', 2), c.decr('b2', 1), c.delete('b2'))\n\
             v, cas = c.gets('b')\n\
             print(v, c.cas('b', 'w', cas), list(c.get_multi(['b']).items()))\n\
             print(len(c.stats()) > 0, c.flush_all())\n\
             s = socket.create_connection(('{SERVER4}', 11211), timeout=3)\n\
             def op(code, extras=b'', key=b'', value=b''):\n\
             \x20   body = extras + key + value\n\
             \x20   s.sendall(struct.pack('>BBHBBHII8s', 0x80, code, len(key), len(extras), 0, 0, len(body), 7, b'') + body)\n\
             \x20   h = s.recv(24)\n\
             \x20   n = struct.unpack('>I', h[8:12])[0]\n\
             \x20   while n > 0:\n\
             \x20       n -= len(s.recv(n))\n\
             \x20   return '%x/%d' % (h[1], struct.unpack('>H', h[6:8])[0])\n\
             print(op(0x01, b'\\0' * 8, b't', b'x'), op(0x0e, b'', b't', b'y'), op(0x0f, b'', b't', b'z'))\n\
             print(op(0x1c, b'\\0\\0\\0\\x64', b't'), op(0x1d, b'\\0\\0\\0\\x64', b't'), op(0x23, b'\\0\\0\\0\\x64', b't'))\n\
             print(op(0x0a), op(0x0b), op(0x10), op(0x20), op(0x30))\n"
        );
        let lines: Vec<String> = lab
            .python("awing", &script)
            .lines()
            .map(String::from)
            .collect();
        assert_eq!(lines[0], "True v True True", "{lines:?}");
        assert_eq!(lines[1], "7 6 True", "{lines:?}");
        assert_eq!(lines[2], "v True [('b', 'w')]", "{lines:?}");
        assert_eq!(lines[3], "True True", "{lines:?}");
        // set, append, prepend; touch, gat, gatk: status 0 from memcached.
        assert_eq!(lines[4], "1/0 e/0 f/0", "{lines:?}");
        assert_eq!(lines[5], "1c/0 1d/0 23/0", "{lines:?}");
        // noop, version, stat (first of its items); sasl list and rget reach
        // memcached, which answers them itself (not access denied, 8).
        let last: Vec<&str> = lines[6].split(' ').collect();
        assert_eq!(&last[..3], ["a/0", "b/0", "10/0"], "{lines:?}");
        assert!(last[3..].iter().all(|r| !r.ends_with("/8")), "{lines:?}");

        let c = lab.stop_clean();
        assert_eq!(engine(&c, "l7_requests_denied"), 0, "{c}");
    });
}

#[test]
fn memaslap_runs_10_s_with_zero_errors() {
    lab::with_lab("cmpms", |lab| {
        assert!(
            lab.exec("xwing", &["sh", "-c", "command -v memcaslap"])
                .status
                .success(),
            "memcaslap (libmemcached-tools) missing: scripts/lib/deps.sh installs it"
        );
        let _pol = start_with_policy(lab);
        // x-wing may get and set any key: memaslap's keys carry control
        // and high bytes, which memcached takes as key bytes.
        let out = lab.exec(
            "xwing",
            &[
                "memcaslap",
                "-s",
                &format!("{SERVER4}:11211"),
                "-t",
                "10s",
                "-c",
                "16",
                "--verify=0.1",
            ],
        );
        let text = format!("{}{}", stdout(&out), String::from_utf8_lossy(&out.stderr));
        eprintln!("{text}");
        assert!(out.status.success(), "{text}");
        let field = |name: &str| -> u64 {
            text.lines()
                .find_map(|l| l.trim().strip_prefix(name))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
                .unwrap_or_else(|| panic!("no {name} in {text}"))
        };
        // memaslap prints `<fd ERROR ...` for every error reply and counts
        // the values it reads back wrong or not at all.
        assert!(
            !text.lines().any(|l| l.contains("ERROR")
                || l.contains("verification failed")
                || l.contains("Failed")),
            "{text}"
        );
        assert_eq!(field("verify_failed:"), 0, "{text}");
        assert_eq!(field("verify_misses:"), 0, "{text}");
        assert_eq!(field("get_misses:"), 0, "{text}");
        let ops: u64 = text
            .lines()
            .find_map(|l| {
                l.split("Ops: ")
                    .nth(1)?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            })
            .unwrap_or_else(|| panic!("no Ops in {text}"));
        eprintln!("memaslap through the enforcer: {ops} ops in 10 s");
        assert!(field("cmd_get:") > 0 && field("cmd_set:") > 0, "{text}");
        assert!(ops > 10_000, "memaslap barely moved: {text}");
        let c = lab.stop_clean();
        assert_eq!(engine(&c, "l7_requests_denied"), 0, "{c}");
        assert_eq!(engine(&c, "drops/l7-hold-overflow"), 0, "{c}");
    });
}

/// Kill the processes of `comm` in the lab's `host` namespace (by pid) and
/// wait until nothing listens on `port` there any more.
fn kill_in(lab: &Lab, host: &str, comm: &str, port: u16) {
    let out = std::process::Command::new("ip")
        .args(["netns", "pids", &lab.ns(host)])
        .output()
        .expect("ip netns pids");
    for pid in stdout(&out).split_whitespace() {
        let name = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if name.trim() == comm {
            if let Ok(p) = pid.parse::<i32>() {
                // SAFETY: kill(2) with a pid read from the lab's namespace; no memory is shared.
                unsafe { libc::kill(p, libc::SIGTERM) };
            }
        }
    }
    let t = std::time::Instant::now();
    let pat = format!(":{port} ");
    while stdout(&lab.exec(host, &["ss", "-ltn"])).contains(&pat) {
        assert!(t.elapsed().as_secs() < 5, "{comm} still listens on {port}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// nginx in place of the deathstar app on the server, serving `root`, with
/// a location `/upload` that takes (and discards) any body up to 64 MB.
fn start_nginx(lab: &Lab, root: &std::path::Path) {
    kill_in(lab, "server", "python3", 80);
    std::fs::write(
        root.join("nginx.conf"),
        format!(
            "user root;\nworker_processes 1;\ndaemon on;\npid {r}/nginx.pid;\n\
             error_log {r}/nginx.err;\nevents {{ worker_connections 64; }}\n\
             http {{ access_log off; client_max_body_size 64m;\n\
             server {{ listen 80; root {r};\n\
             location /upload {{ return 200 \"got it\\n\"; }} }} }}\n",
            r = root.display()
        ),
    )
    .unwrap();
    let ng = lab.exec(
        "server",
        &["nginx", "-c", root.join("nginx.conf").to_str().unwrap()],
    );
    assert!(ng.status.success(), "{ng:?}");
    lab.wait_listen("server", 80);
}

/// pymemcache set then get of random values of these sizes: per size,
/// "size ok set_s get_s" (ok: read back byte-exact).
fn big_values(lab: &Lab, sizes: &[usize]) -> Vec<(usize, bool, f64, f64)> {
    let list: Vec<String> = sizes.iter().map(|s| s.to_string()).collect();
    let script = format!(
        "from pymemcache.client.base import Client\n\
         import os, time\n\
         c = Client(('{SERVER4}', 11211), connect_timeout=5, timeout=30)\n\
         for size in [{}]:\n\
         \x20   v = os.urandom(size)\n\
         \x20   t = time.time(); ok = c.set('big', v, noreply=False); t1 = time.time()\n\
         \x20   g = c.get('big'); t2 = time.time()\n\
         \x20   print(size, ok and g == v, '%.4f' % (t1 - t), '%.4f' % (t2 - t1))\n",
        list.join(", ")
    );
    lab.python("awing", &script)
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (
                f[0].parse().unwrap(),
                f[1] == "True",
                f[2].parse().unwrap(),
                f[3].parse().unwrap(),
            )
        })
        .collect()
}

#[test]
fn large_values_and_bodies_flow_byte_exact_with_default_settings() {
    let prefix = "cmpbig";
    lab::with_lab(prefix, |lab| {
        memcached_16m(lab);
        // nginx in place of the deathstar app: an 8 MB file to read, and a
        // location that takes (and discards) an 8 MB upload.
        let www = tempfile::tempdir().expect("tempdir");
        let big: Vec<u8> = (0..8u32 << 20)
            .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
            .collect();
        std::fs::write(www.path().join("big.bin"), &big).unwrap();
        start_nginx(lab, www.path());

        let _pol = start_with_policy(lab);
        let sizes = [1_000_000, 8_000_000, 1_000_000, 8_000_000];
        let through = big_values(lab, &sizes);
        for (size, ok, set, get) in &through {
            eprintln!("through the enforcer: {size} B set {set:.4} s get {get:.4} s");
            assert!(ok, "{size} B value not read back byte-exact");
        }
        let sum = lab.sh(
            "awing",
            &format!(
                "curl -s -m 20 http://{SERVER4}/big.bin | sha256sum | cut -c1-64; \
                 head -c 8388608 /dev/urandom > /tmp/{prefix}-up && \
                 curl -s -m 20 --data-binary @/tmp/{prefix}-up http://{SERVER4}/upload; \
                 rm -f /tmp/{prefix}-up"
            ),
        );
        let want = {
            use std::io::Write;
            let mut p = std::process::Command::new("sha256sum")
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            p.stdin.take().unwrap().write_all(&big).unwrap();
            stdout(&p.wait_with_output().unwrap())[..64].to_string()
        };
        assert_eq!(stdout(&sum), format!("{want}\ngot it\n"));

        // Request shapes the RFCs allow: nginx's answer through the enforcer
        // is its answer directly, except for the documented refusals.
        let (direct, through) = direct_and_through(lab, "tests/kit/http_shapes.py", "80");
        assert!(direct.lines().count() > 20, "{direct}");
        // A body on GET: servers disagree on whether they read it (docs/l7.md).
        assert_as_directly(&direct, &through, |name, _| name == "get-body");
        let c = lab.stop_clean();
        assert_eq!(engine(&c, "drops/l7-hold-overflow"), 0, "{c}");
        assert!(engine(&c, "l7_requests_allowed") >= 10, "{c}");

        // The same through the dataplane alone, for the figures.
        lab.start(Mode::PassThrough, &[]).unwrap();
        for (size, ok, set, get) in big_values(lab, &sizes) {
            eprintln!("pass-through: {size} B set {set:.4} s get {get:.4} s");
            assert!(ok);
        }
    });
}

/// memcached in the lab's server with a 16 MB item limit, in place of the lab's.
fn memcached_16m(lab: &Lab) {
    kill_in(lab, "server", "memcached", 11211);
    let mc = lab.exec(
        "server",
        &[
            "memcached",
            "-u",
            "nobody",
            "-p",
            "11211",
            "-U",
            "0",
            "-l",
            "0.0.0.0,::",
            "-I",
            "16m",
            "-m",
            "512",
            "-d",
        ],
    );
    assert!(mc.status.success(), "{mc:?}");
    lab.wait_listen("server", 11211);
}

/// A veth's TX queue counter of `ethtool -S` (`tx_queue_N_<name>`),
/// summed over its queues, in the enforcer's namespace.
/// A TcpExt counter of namespace `ns` (/proc/net/netstat: a line of names,
/// then a line of values).
/// `tcp_ext` at both ends of the lab's memcached traffic (client, server).
fn tcp_ext_ends(lab: &Lab, name: &str) -> [u64; 2] {
    ["awing", "server"].map(|ns| tcp_ext(lab, ns, name))
}

/// `enforcer status -o json`.
fn status_json(lab: &Lab) -> serde_json::Value {
    serde_json::from_str(&stdout(&lab.ctl(&["status", "-o", "json"]))).unwrap()
}

fn tcp_ext(lab: &Lab, ns: &str, name: &str) -> u64 {
    let out = stdout(&lab.exec(ns, &["cat", "/proc/net/netstat"]));
    let rows: Vec<&str> = out.lines().filter(|l| l.starts_with("TcpExt:")).collect();
    let [names, values] = rows[..] else {
        panic!("no TcpExt in /proc/net/netstat of {ns}: {out}")
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == name)
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or_else(|| panic!("no TcpExt {name} in {ns}"))
}

fn veth_tx_stat(lab: &Lab, dev: &str, name: &str) -> u64 {
    let out = stdout(&lab.exec("enf", &["ethtool", "-S", dev]));
    out.lines()
        .filter_map(|l| {
            let (k, v) = l.trim().split_once(": ")?;
            let q = k.strip_prefix("tx_queue_")?;
            let (n, rest) = q.split_once('_')?;
            (n.parse::<u32>().is_ok() && rest == name).then(|| v.trim().parse::<u64>().unwrap_or(0))
        })
        .sum()
}

/// The kernel path (docs/stream.md, "A kernel path for known bytes"): with
/// `--kernel-path on` the XDP program forwards most bytes of a 1 MB and an
/// 8 MB value itself, in both directions (set: the request body; get: the
/// reply body), and every value comes back byte-exact. No redirected frame
/// is lost on the veths, and the workers leave no range in the map.
/// The lab's other shape (docs/dataplane.md, "Lab shapes"): the ends facing
/// the ports run NAPI in threads, and large values still take the kernel
/// path and come back byte-exact. Not asserted: its order. A NAPI thread
/// behind its ring makes the veth refuse redirected frames (no backpressure
/// on that path: `xdp_xmit_errors`), and TCP recovers them by
/// retransmission; printed for the record.
#[test]
fn large_values_on_a_lab_with_threaded_ends() {
    lab::with_lab_env("cmpth", 1, &[("LAB_THREADED_ENDS", "1")], |lab| {
        for (ns, dev) in [("sw", "p-enf"), ("server", "eth0"), ("awing", "eth0")] {
            let path = format!("/sys/class/net/{dev}/threaded");
            let r = lab.exec(ns, &["cat", &path]);
            assert_eq!(stdout(&r).trim(), "1", "{ns} {dev}: {r:?}");
        }
        memcached_16m(lab);
        let _pol = lab::dir_with(&["tests/fixtures/compat.yaml"]);
        lab.start(Mode::Policy(_pol.path()), &[]).unwrap();
        let fast0 = tcp_ext_ends(lab, "TCPFastRetrans");
        for (size, ok, set, get) in big_values(lab, &[8_000_000, 1_000_000, 1_000_000]) {
            eprintln!("threaded ends: {size} B set {set:.4} s get {get:.4} s");
            assert!(ok, "{size} B value not read back byte-exact");
        }
        let fast1 = tcp_ext_ends(lab, "TCPFastRetrans");
        let refused: u64 = ["cli0", "srv0"]
            .map(|d| veth_tx_stat(lab, d, "xdp_xmit_errors"))
            .iter()
            .sum();
        eprintln!(
            "threaded ends: fast retransmits {}, redirected frames refused {refused}",
            (0..2).map(|i| fast1[i] - fast0[i]).sum::<u64>()
        );
        std::thread::sleep(std::time::Duration::from_millis(300));
        let st = status_json(lab);
        assert!(
            st["counters"]["kernel_path_frames"].as_u64().unwrap() > 0,
            "{st}"
        );
    });
}

#[test]
fn large_values_take_the_kernel_path() {
    // One queue: on a veth with several, XDP_REDIRECT picks the peer's RX
    // queue by CPU and a worker's TX by its socket's queue, so the two
    // paths can land on two rings and the order between them is the
    // veth's, which no fence of ours sees (docs/dataplane.md, Kernel path).
    lab::with_lab_queues("cmpkp", 1, |lab| {
        memcached_16m(lab);
        let _pol = lab::dir_with(&["tests/fixtures/compat.yaml"]);
        lab.start(Mode::Policy(_pol.path()), &["--kernel-path", "on"])
            .unwrap();
        assert!(
            lab.ready_line().contains("kernel-path=on"),
            "{}",
            lab.ready_line()
        );
        assert!(
            lab.xdp_links().iter().all(|l| l.contains("enforcer_kpath")),
            "{:?}",
            lab.xdp_links()
        );
        // Warm 1 MB values after an 8 MB one: the first segments of each
        // pass the worker before its range is written, the rest take the
        // kernel path, and none may overtake those.
        let sizes = [8_000_000, 1_000_000, 1_000_000, 1_000_000, 1_000_000];
        let values: usize = sizes.iter().sum();
        let ooo = |lab: &Lab| tcp_ext_ends(lab, "TCPOFOQueue");
        let fast = |lab: &Lab| tcp_ext_ends(lab, "TCPFastRetrans");
        let (ooo0, fast0) = (ooo(lab), fast(lab));
        for (size, ok, set, get) in big_values(lab, &sizes) {
            eprintln!("kernel path: {size} B set {set:.4} s get {get:.4} s");
            assert!(ok, "{size} B value not read back byte-exact");
        }
        // None of them overtook the worker's: no segment queued out of order
        // at either end, no retransmission for it (hundreds without the
        // fence; a stray one is the lab's).
        let (ooo1, fast1) = (ooo(lab), fast(lab));
        let reordered: u64 = (0..2).map(|i| ooo1[i] - ooo0[i]).sum();
        let retransmitted: u64 = (0..2).map(|i| fast1[i] - fast0[i]).sum();
        assert!(
            reordered <= 2 && retransmitted <= 2,
            "out of order {reordered}, fast retransmits {retransmitted}"
        );
        // A large value right after a reply with no range (a multi-get of
        // 60 KB values) starts from the larger edge that reply left
        // (docs/stream.md, "The server's edge, capped"): its first
        // segments are still with the worker when its range is written,
        // so the fence sends the next ones there too, and opens again.
        let script = format!(
            "from pymemcache.client.base import Client\n\
             import os\n\
             c = Client(('{SERVER4}', 11211), connect_timeout=5, timeout=30)\n\
             small = {{'k%d' % i: os.urandom(60000) for i in range(10)}}\n\
             c.set_many(small, noreply=False)\n\
             v = os.urandom(1000000)\n\
             c.set('big', v, noreply=False)\n\
             ok = True\n\
             for _ in range(5):\n\
             \x20   ok = ok and c.get_many(list(small)) == small and c.get('big') == v\n\
             print(ok)\n"
        );
        assert_eq!(lab.python("awing", &script).trim(), "True");
        // Status shows what the program forwarded (published every 100 ms).
        std::thread::sleep(std::time::Duration::from_millis(300));
        let st = status_json(lab);
        assert_eq!(st["kernel_path"], true, "{st}");
        let frames = st["counters"]["kernel_path_frames"].as_u64().unwrap();
        assert!(frames > 0, "{st}");
        assert!(
            st["counters"]["kernel_path_fenced"].as_u64().unwrap() > 0,
            "{st}"
        );
        // A port that cannot take redirected frames (its veth peer without
        // GRO) pauses the kernel path: values still flow, through the engine.
        let gro = |on: &str| {
            let r = lab.exec("server", &["ethtool", "-K", "eth0", "gro", on]);
            assert!(r.status.success(), "{r:?}");
        };
        let said = |what: &str| {
            let t = std::time::Instant::now();
            while !lab.enforcer_stderr().contains(what) {
                assert!(t.elapsed().as_secs() < 5, "{}", lab.enforcer_stderr());
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        };
        let into_srv0 = veth_tx_stat(lab, "srv0", "xdp_xmit");
        gro("off");
        said("kernel path paused: srv0");
        for (size, ok, ..) in big_values(lab, &[1_000_000]) {
            assert!(ok, "{size} B value not read back byte-exact while paused");
        }
        assert_eq!(veth_tx_stat(lab, "srv0", "xdp_xmit"), into_srv0);
        assert_eq!(veth_tx_stat(lab, "srv0", "xdp_xmit_errors"), 0);
        gro("on");
        said("kernel path on");
        // 8 MB first: a cold connection's 1 MB set can pass wholly behind
        // the fence on a slow machine (the worker never catches up).
        for (size, ok, ..) in big_values(lab, &[8_000_000, 1_000_000]) {
            assert!(ok, "{size} B value not read back byte-exact");
        }
        assert!(veth_tx_stat(lab, "srv0", "xdp_xmit") > into_srv0);
        let c = lab.stop_clean();
        let dp = &c["dataplane"];
        // Each value once each way: most of its bytes never reached a worker.
        let bypassed = dp["kpath_bytes"].as_u64().unwrap();
        assert!(
            bypassed as usize > values,
            "{bypassed} bytes took the kernel path of {} sent: {c}",
            2 * values
        );
        assert!(dp["kpath_frames"].as_u64().unwrap() >= frames, "{c}");
        assert_eq!(dp["kpath_map_failed"], 0, "{c}");
        assert_eq!(dp["kpath_ranges"], 0, "ranges left in the map: {c}");
        assert!(engine(&c, "l7_ranges") >= 4, "{c}");
        assert_eq!(engine(&c, "drops/l7-hold-overflow"), 0, "{c}");
        // Redirected frames made it into the peers (their NAPI, GRO on; a
        // peer without it refuses every one). A few refused are a loaded
        // machine's: a peer whose NAPI runs late fills its ring, and
        // XDP_REDIRECT has no backpressure (docs/dataplane.md, Lab shapes).
        for dev in ["cli0", "srv0"] {
            let (sent, refused) = (
                veth_tx_stat(lab, dev, "xdp_xmit"),
                veth_tx_stat(lab, dev, "xdp_xmit_errors"),
            );
            eprintln!("{dev}: {sent} frames redirected, {refused} refused");
            assert!(sent > 0 && refused * 100 <= sent, "{dev}: {sent} {refused}");
        }
        // On by default.
        lab.start(Mode::Policy(_pol.path()), &[]).unwrap();
        assert!(lab.ready_line().contains("kernel-path=on"));
        lab.stop_clean();
        // Off: libxdp's program, nothing forwarded in XDP.
        lab.start(Mode::Policy(_pol.path()), &["--kernel-path", "off"])
            .unwrap();
        assert!(lab.ready_line().contains("kernel-path=off"));
        for (size, ok, ..) in big_values(lab, &[1_000_000]) {
            assert!(ok, "{size} B value not read back byte-exact");
        }
        let c = lab.stop_clean();
        assert_eq!(c["dataplane"]["kpath_frames"], 0, "{c}");
        assert_eq!(engine(&c, "l7_ranges"), 0, "{c}");
    });
}

/// The 15 shapes a public desync corpus (aws/http-desync-guardian) rates
/// "Acceptable", against nginx directly and through the enforcer: what
/// nginx serves passes and gets nginx's own answer, except the documented
/// refusals (docs/l7.md), each reset; what nginx refuses (400) the
/// enforcer refuses too.
#[test]
fn desync_corpus_acceptable_shapes_as_nginx_serves_them() {
    lab::with_lab("cmpdg", |lab| {
        let www = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(www.path().join("foo")).unwrap();
        std::fs::write(www.path().join("foo/bar"), "bar\n").unwrap();
        std::fs::write(www.path().join("endpoint_a"), "a\n").unwrap();
        start_nginx(lab, www.path());
        let _pol = start_with_policy(lab);
        let (direct, through) = direct_and_through(lab, "tests/kit/http_desync_corpus.py", "80");
        eprintln!("nginx directly:\n{direct}\nthrough the enforcer:\n{through}");
        assert_eq!(direct.lines().count(), 15, "{direct}");
        assert_eq!(through.lines().count(), 15, "{through}");
        // Refused although nginx serves it: HTTP/0.9, which nginx reads as
        // the line alone and llhttp as a line and a header block (docs/l7.md).
        assert_as_directly(&direct, &through, |name, d| {
            let refused_by_nginx = d.contains(" 400 ") || d.ends_with("<closed>");
            name == "dg-http09-simple" || refused_by_nginx
        });
        let c = lab.stop_clean();
        assert!(engine(&c, "l7_requests_allowed") >= 4, "{c}");
    });
}
