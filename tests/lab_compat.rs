//! Compatibility: what real memcached serves, and the policy allows, passes
//! through the real enforcer unharmed. Real memcached (1.6, the lab's) and
//! real clients (pymemcache, bmemcached, memaslap, nc). The reference for
//! every answer is the same memcached asked directly, from its own host.
//! Root only; under CI=true a missing prerequisite is a failure.

#[path = "lab/mod.rs"]
mod lab;

use lab::{stdout, Lab, Mode, SERVER4};

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

/// tests/lab/mc_session.py against `addr`: step name -> reply.
fn session(lab: &Lab, host: &str, addr: &str) -> serde_json::Map<String, serde_json::Value> {
    let script = lab::repo("tests/lab/mc_session.py");
    let out = lab.exec(host, &["python3", script.to_str().unwrap(), addr, "11211"]);
    assert!(
        out.status.success(),
        "mc_session on {host}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("session JSON")
}

/// Replies of one memcached at two moments differ in numbers (cas values,
/// times, counters) and, for listings, in their lines: compare those by
/// shape (first word of the first line, and the last line).
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
        let first = digits.split([' ', '=']).next().unwrap_or("");
        let last = digits.trim_end().rsplit('\n').next().unwrap_or("");
        return format!("{first} .. {last}");
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
            c["drops"]["l7-hold-overflow"].as_u64().unwrap_or(0),
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

#[test]
fn multiget_of_2000_keys_and_binary_groups() {
    let prefix = "cmpmg";
    {
        let Some(mut lab) = Lab::up(prefix) else {
            return;
        };
        let pol = policy();
        lab.start(Mode::Policy(pol.path()), &[]).unwrap();
        // 2,000 keys of ~90 bytes: one `get` line of ~187 KB (pymemcache
        // sends get_many as one line).
        let script = format!(
            "from pymemcache.client.base import Client\n\
             c = Client(('{SERVER4}', 11211), connect_timeout=5, timeout=10)\n\
             keys = ['compat:%05d:' % i + 'x' * 80 for i in range(2000)]\n\
             for i in range(0, 2000, 200):\n\
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
        let out = stdout(&out);
        let f: Vec<&str> = out.split_whitespace().collect();
        assert!(f[0].parse::<usize>().unwrap() > 180_000, "{out}");
        assert_eq!(&f[1..], ["2000", "compat:00007"], "{out}");

        // Binary protocol, every group bmemcached speaks, once each.
        let script = format!(
            "import bmemcached, socket, struct\n\
             c = bmemcached.Client(('{SERVER4}:11211',), socket_timeout=3)\n\
             print(c.set('b', 'v'), c.get('b'), c.add('b2', '1'), c.replace('b2', '5'))\n\
             print(c.incr('b2', 2), c.decr('b2', 1), c.delete('b2'))\n\
             print(c.gets('b')[0], c.cas('b', 'w', 1), c.touch('b', 100))\n\
             print(sorted(c.stats()[list(c.stats())[0]])[:1], list(c.get_multi(['b']).items()))\n\
             print(c.flush_all())\n\
             s = socket.create_connection(('{SERVER4}', 11211), timeout=3)\n\
             def op(code):\n\
             \x20   s.sendall(struct.pack('>BBHBBHIIQ', 0x80, code, 0, 0, 0, 0, 0, 7, 0))\n\
             \x20   h = s.recv(24)\n\
             \x20   body = s.recv(struct.unpack('>I', h[8:12])[0]) if struct.unpack('>I', h[8:12])[0] else b''\n\
             \x20   return (h[1], struct.unpack('>H', h[6:8])[0], struct.unpack('>I', h[12:16])[0])\n\
             print(op(0x0a), op(0x0b)[:2], op(0x20)[0], op(0x30)[0])\n"
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
        assert!(
            lines[2].starts_with("v ") && lines[2].ends_with("True"),
            "{lines:?}"
        );
        assert!(
            lines[3].contains("('b', 'v')") || lines[3].contains("('b', 'w')"),
            "{lines:?}"
        );
        assert_eq!(lines[4], "True", "{lines:?}");
        // noop answered with status 0 and our opaque; version; sasl list
        // and rget reach memcached (which answers them itself).
        assert!(
            lines[5].starts_with("(10, 0, 7) (11, 0) 32 48"),
            "{lines:?}"
        );

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
            !text.contains("ERROR") && !text.contains("failed"),
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
            c["drops"]["l7-hold-overflow"].as_u64().unwrap_or(0),
            0,
            "{c}"
        );
    }
    lab::assert_clean(prefix);
}
