//! Compatibility: what real memcached serves, and the policy allows, passes
//! through the real enforcer unharmed. Real memcached (1.6, the lab's) and
//! real clients (pymemcache, bmemcached, memaslap, nc). The reference for
//! every answer is the same memcached asked directly, from its own host.
//! Root only; under CI=true a missing prerequisite is a failure.

mod kit;

use kit::lab::{self, stdout, Lab, Mode, SERVER4};

/// endpoints.yaml + tests/fixtures/compat.yaml: a-wing may use every
/// command group, x-wing get and set of any key, the tracker only get.
fn policy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    for f in ["policies/endpoints.yaml", "tests/fixtures/compat.yaml"] {
        let p = lab::repo(f);
        std::fs::copy(&p, dir.path().join(p.file_name().unwrap())).expect("copy policy");
    }
    dir
}

/// tests/kit/mc_session.py against `addr`: step name -> reply.
fn session(lab: &Lab, host: &str, addr: &str) -> serde_json::Map<String, serde_json::Value> {
    let script = lab::repo("tests/kit/mc_session.py");
    let out = lab.exec(host, &["python3", script.to_str().unwrap(), addr, "11211"]);
    assert!(
        out.status.success(),
        "mc_session on {host}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("session JSON")
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

fn nc(lab: &Lab, host: &str, input: &str) -> String {
    let script = format!("printf '{input}' | nc -N -w 3 {SERVER4} 11211");
    stdout(&lab.sh(host, &script))
}

#[test]
fn memcached_answers_every_command_and_error_itself() {
    let prefix = "cmpmc";
    {
        let Some(mut lab) = Lab::up(prefix) else {
            return;
        };
        let pol = policy();
        lab.start(Mode::Policy(pol.path()), &[]).unwrap();
        let direct = session(&lab, "server", "127.0.0.1");
        let through = session(&lab, "awing", SERVER4);
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
                &lab,
                "tracker",
                "set k 0 0 -1\\r\\nbogus\\r\\n\\r\\nget k\\r\\n"
            ),
            "CLIENT_ERROR access denied\r\nERROR\r\nERROR\r\nEND\r\n"
        );

        let st = lab.stop().unwrap();
        let c = st.counters().unwrap();
        assert_eq!(
            c["engine"]["drops"]["l7-hold-overflow"]
                .as_u64()
                .unwrap_or(0),
            0,
            "{c}"
        );
        let v = lab.verdicts();
        assert!(
            v.iter().any(|e| e["kind"] == "memcache"
                && e["verdict"] == "deny"
                && e["command"] == "unknown"),
            "{v:?}"
        );
    }
    lab::assert_clean(prefix);
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
    let out = lab.exec("awing", &["python3", "-c", &script]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout(&out).split_whitespace().map(String::from).collect()
}

/// A 187 KB line on a fresh connection: the line is held whole until every
/// key is judged, far beyond the client's initial congestion window; the
/// enforcer acknowledges the held bytes itself and then delivers them to
/// memcached (docs/stream.md, "Held heads are acknowledged").
#[test]
fn multiget_of_2000_keys() {
    let prefix = "cmpmg2k";
    {
        let Some(mut lab) = Lab::up(prefix) else {
            return;
        };
        let pol = policy();
        lab.start(Mode::Policy(pol.path()), &[]).unwrap();
        let f = multiget(&lab, 2000);
        assert!(f[0].parse::<usize>().unwrap() > 180_000, "{f:?}");
        assert_eq!(&f[1..], ["2000", "compat:00007"], "{f:?}");
        let st = lab.stop().unwrap();
        let c = st.counters().unwrap();
        eprintln!("owned retransmits: {}", c["engine"]["l7_owned_retransmits"]);
        assert_eq!(
            c["engine"]["drops"]["l7-hold-overflow"]
                .as_u64()
                .unwrap_or(0),
            0,
            "{c}"
        );
        assert_eq!(c["engine"]["l7_requests_denied"].as_u64(), Some(0), "{c}");
    }
    lab::assert_clean(prefix);
}

#[test]
fn long_multiget_and_binary_groups() {
    let prefix = "cmpmg";
    {
        let Some(mut lab) = Lab::up(prefix) else {
            return;
        };
        let pol = policy();
        lab.start(Mode::Policy(pol.path()), &[]).unwrap();
        // 140 keys: a 13 KB line, beyond memcached's 2048-byte limit for
        // other commands and the 8 KB the enforcer used to take, within a
        // fresh connection's congestion window (10 segments).
        let f = multiget(&lab, 140);
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
        let out = lab.exec("awing", &["python3", "-c", &script]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let lines: Vec<String> = stdout(&out).lines().map(String::from).collect();
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

        let st = lab.stop().unwrap();
        let c = st.counters().unwrap();
        assert_eq!(
            c["engine"]["l7_requests_denied"].as_u64().unwrap_or(0),
            0,
            "{c}"
        );
    }
    lab::assert_clean(prefix);
}

#[test]
fn memaslap_runs_10_s_with_zero_errors() {
    let prefix = "cmpms";
    {
        let Some(mut lab) = Lab::up(prefix) else {
            return;
        };
        assert!(
            lab.exec("xwing", &["sh", "-c", "command -v memcaslap"])
                .status
                .success(),
            "memcaslap (libmemcached-tools) missing: scripts/lib/deps.sh installs it"
        );
        let pol = policy();
        lab.start(Mode::Policy(pol.path()), &[]).unwrap();
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
        let st = lab.stop().unwrap();
        let c = st.counters().unwrap();
        assert_eq!(
            c["engine"]["l7_requests_denied"].as_u64().unwrap_or(0),
            0,
            "{c}"
        );
        assert_eq!(
            c["engine"]["drops"]["l7-hold-overflow"]
                .as_u64()
                .unwrap_or(0),
            0,
            "{c}"
        );
    }
    lab::assert_clean(prefix);
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
    let out = lab.exec("awing", &["python3", "-c", &script]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout(&out)
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
    {
        let Some(mut lab) = Lab::up(prefix) else {
            return;
        };
        // memcached with a 16 MB item limit, in place of the lab's.
        kill_in(&lab, "server", "memcached", 11211);
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
        // nginx in place of the deathstar app: an 8 MB file to read, and a
        // location that takes (and discards) an 8 MB upload.
        let www = tempfile::tempdir().expect("tempdir");
        let big: Vec<u8> = (0..8u32 << 20)
            .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
            .collect();
        std::fs::write(www.path().join("big.bin"), &big).unwrap();
        start_nginx(&lab, www.path());

        let pol = policy();
        lab.start(Mode::Policy(pol.path()), &[]).unwrap();
        let sizes = [1_000_000, 8_000_000, 1_000_000, 8_000_000];
        let through = big_values(&lab, &sizes);
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
        let shapes = lab::repo("tests/kit/http_shapes.py");
        let shapes = shapes.to_str().unwrap();
        let direct = stdout(&lab.exec("server", &["python3", shapes, "127.0.0.1", "80"]));
        let through = stdout(&lab.exec("awing", &["python3", shapes, SERVER4, "80"]));
        assert!(direct.lines().count() > 20, "{direct}");
        // A body on GET: servers disagree on whether they read it (docs/l7.md).
        let refused = ["get-body"];
        for (d, t) in direct.lines().zip(through.lines()) {
            let name = d.split(' ').next().unwrap();
            if refused.contains(&name) {
                assert!(
                    t.ends_with("ConnectionResetError") || t.ends_with("<closed>"),
                    "{t}"
                );
            } else {
                assert_eq!(t, d, "through the enforcer vs nginx directly");
            }
        }
        let st = lab.stop().unwrap();
        let c = st.counters().unwrap();
        assert_eq!(
            c["engine"]["drops"]["l7-hold-overflow"]
                .as_u64()
                .unwrap_or(0),
            0,
            "{c}"
        );
        assert!(
            c["engine"]["l7_requests_allowed"].as_u64().unwrap() >= 10,
            "{c}"
        );

        // The same through the dataplane alone, for the figures.
        lab.start(Mode::PassThrough, &[]).unwrap();
        for (size, ok, set, get) in big_values(&lab, &sizes) {
            eprintln!("pass-through: {size} B set {set:.4} s get {get:.4} s");
            assert!(ok);
        }
    }
    lab::assert_clean(prefix);
}

/// The 15 shapes a public desync corpus (aws/http-desync-guardian) rates
/// "Acceptable", against nginx directly and through the enforcer: what
/// nginx serves passes and gets nginx's own answer, except the documented
/// refusals (docs/l7.md), each reset; what nginx refuses (400) the
/// enforcer refuses too.
#[test]
fn desync_corpus_acceptable_shapes_as_nginx_serves_them() {
    let prefix = "cmpdg";
    {
        let Some(mut lab) = Lab::up(prefix) else {
            return;
        };
        let www = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(www.path().join("foo")).unwrap();
        std::fs::write(www.path().join("foo/bar"), "bar\n").unwrap();
        std::fs::write(www.path().join("endpoint_a"), "a\n").unwrap();
        start_nginx(&lab, www.path());
        let pol = policy();
        lab.start(Mode::Policy(pol.path()), &[]).unwrap();
        let corpus = lab::repo("tests/kit/http_desync_corpus.py");
        let corpus = corpus.to_str().unwrap();
        let direct = stdout(&lab.exec("server", &["python3", corpus, "127.0.0.1", "80"]));
        let through = stdout(&lab.exec("awing", &["python3", corpus, SERVER4, "80"]));
        eprintln!("nginx directly:\n{direct}\nthrough the enforcer:\n{through}");
        assert_eq!(direct.lines().count(), 15, "{direct}");
        assert_eq!(through.lines().count(), 15, "{through}");
        // Refused although nginx serves it: HTTP/0.9, which nginx reads as
        // the line alone and llhttp as a line and a header block (docs/l7.md).
        let ambiguous = ["dg-http09-simple"];
        for (d, t) in direct.lines().zip(through.lines()) {
            let name = d.split(' ').next().unwrap();
            let refused_by_nginx = d.contains(" 400 ") || d.ends_with("<closed>");
            if ambiguous.contains(&name) || refused_by_nginx {
                assert!(
                    t.ends_with("ConnectionResetError") || t.ends_with("<closed>"),
                    "{name}: through the enforcer {t:?}, nginx {d:?}"
                );
            } else {
                assert_eq!(t, d, "through the enforcer vs nginx directly");
            }
        }
        let st = lab.stop().unwrap();
        let c = st.counters().unwrap();
        assert!(
            c["engine"]["l7_requests_allowed"].as_u64().unwrap() >= 4,
            "{c}"
        );
    }
    lab::assert_clean(prefix);
}
