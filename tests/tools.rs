//! The policy tools through the real binary, over captures built with the
//! kit's frame builders: what-if (`replay --compare`), the least-privilege
//! suggestion (`suggest`) and per-policy deny replies.

mod kit;

use std::path::{Path, PathBuf};

use kit::frames::{rec, write_pcap, Rec};
use kit::replay::{shipped, towards, Replay};
use kit::tcp::{Conn, Talk, TALK_C_ISN as C_ISN, TALK_S_ISN as S_ISN};
use kit::*;

const SERVER: &str = "10.66.0.2";
const AWING: &str = "10.66.0.11";
const XWING: &str = "10.66.0.12";
const TRACKER: &str = "10.66.0.13";
const OUTSIDER: &str = "10.66.0.14";

const SW: &str = include_str!("../policies/sw-deathstar-http.yaml");
const MEMCD: &str = include_str!("../policies/memcd-sw-security-policy.yaml");

/// Conversations as an unenforced capture holds them: every request reaches
/// the server and gets its reply. Frames 1 ms apart, in order.
#[derive(Default)]
struct Capture {
    recs: Vec<Rec>,
    next_port: u16,
}

impl Capture {
    fn push(&mut self, f: Vec<u8>) {
        let t = self.recs.len() as u64 * 1_000_000;
        self.recs.push(rec(t, 0, f));
    }

    /// One connection from `client` to `port` carrying `exchanges`
    /// (request, reply), closed at the end.
    fn talk(&mut self, client: &str, port: u16, exchanges: &[(&[u8], &[u8])]) {
        self.next_port += 1;
        let mut c = Conn::new(ep(client, 40_000 + self.next_port), ep(SERVER, port));
        for f in c.handshake() {
            self.push(f);
        }
        for (req, reply) in exchanges {
            let f = c.client_data(req);
            self.push(f);
            let f = c.server_data(reply);
            self.push(f);
        }
        let f = c.client_fin();
        self.push(f);
        let f = c.server_fin();
        self.push(f);
    }

    /// A SYN nobody answers.
    fn syn(&mut self, client: &str, port: u16) {
        self.next_port += 1;
        let c = Conn::new(ep(client, 40_000 + self.next_port), ep(SERVER, port));
        self.push(c.syn());
    }

    fn write(&self, path: &Path) {
        write_pcap(path, &self.recs);
    }
}

const GET: &[u8] = b"GET /v1/ HTTP/1.1\r\nHost: deathstar\r\nAccept: */*\r\n\r\n";
const LAND: &[u8] =
    b"POST /v1/request-landing HTTP/1.1\r\nHost: deathstar\r\nContent-Length: 0\r\n\r\n";
const PUT: &[u8] = b"PUT /v1/exhaust-port HTTP/1.1\r\nHost: deathstar\r\nContent-Length: 0\r\n\r\n";
const PUT_FORCE: &[u8] =
    b"PUT /v1/exhaust-port HTTP/1.1\r\nHost: deathstar\r\nX-Has-Force: true\r\nContent-Length: 0\r\n\r\n";
const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}";
const LANDED: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\nShip landed\n";
const PANIC: &[u8] =
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 25\r\n\r\nPanic: deathstar exploded";

/// The Star Wars demo's traffic: the a-wing reads, lands, and fires at the
/// exhaust port without the Force, then with it; the x-wing reads its
/// coordinates from memcached; an outsider knocks.
fn starwars() -> Capture {
    let mut c = Capture::default();
    c.talk(
        AWING,
        80,
        &[
            (GET, OK),
            (LAND, LANDED),
            (PUT, PANIC),
            (PUT_FORCE, PANIC),
            (GET, OK),
        ],
    );
    c.talk(
        XWING,
        11211,
        &[(
            b"get xwing-coord\r\n",
            b"VALUE xwing-coord 0 3\r\nabc\r\nEND\r\n",
        )],
    );
    c.syn(OUTSIDER, 80);
    c
}

/// A policy directory: the shipped endpoints plus `files`.
fn policy_dir(r: &Replay, name: &str, files: &[(&str, &str)]) -> PathBuf {
    let dir = r.path(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(shipped().join("endpoints.yaml"), dir.join("endpoints.yaml")).unwrap();
    for (f, text) in files {
        std::fs::write(dir.join(f), text).unwrap();
    }
    dir
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A scratch directory for one test holding `capture` as `name`, and the
/// capture's path.
fn scratch_with(capture: Capture, name: &str) -> (Replay, PathBuf) {
    let r = Replay::new(PathBuf::new());
    let input = r.path(name);
    capture.write(&input);
    (r, input)
}

/// `text` (a suggestion, a line of output) contains every one of `wants`.
#[track_caller]
fn assert_contains_all(text: &str, wants: &[&str]) {
    for want in wants {
        assert!(text.contains(want), "{want:?} in\n{text}");
    }
}

// ================================================================ what-if

#[test]
fn what_if_without_the_force_rule_lists_exactly_the_exhaust_port_request() {
    let (r, input) = scratch_with(starwars(), "in.pcap");
    // The Force is no longer required: the exhaust-port rule without its header.
    let no_force = SW.replace(
        "          headers:\n          - \"X-Has-Force: true\"\n",
        "",
    );
    assert_ne!(no_force, SW, "the shipped policy has the header rule");
    let new = policy_dir(&r, "new", &[("sw.yaml", &no_force), ("memcd.yaml", MEMCD)]);
    let (out, log) = (r.path("out.pcap"), r.path("changes.jsonl"));
    let (ok, stdout, stderr) = enforcer(&[
        "replay",
        "--policy",
        s(&new),
        "--compare",
        s(&shipped()),
        s(&input),
        "-w",
        s(&out),
        "--log",
        s(&log),
    ]);
    assert!(ok, "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "one change and the summary:\n{stdout}");
    let change = lines[0];
    assert_contains_all(change, &[
        "a-wing -> server",
        "10.66.0.2:80",
        "http PUT deathstar/v1/exhaust-port",
        "deny (no L7 rule matches) -> allow (deathstar-http/spec.ingress[0].toPorts[0]/http[2])",
    ]);
    // Decisions: 2 flows (a-wing, x-wing) and the outsider's, 5 HTTP
    // requests, 1 memcached request.
    assert_eq!(
        lines[1],
        "1 decisions changed (1 newly allowed, 0 newly denied) of 9"
    );
    let json: Vec<serde_json::Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(json.len(), 2);
    let c = &json[0];
    assert_eq!(
        (&c["kind"], &c["method"], &c["path"], &c["change"]),
        (
            &"http".into(),
            &"PUT".into(),
            &"/v1/exhaust-port".into(),
            &"newly-allowed".into()
        )
    );
    assert_eq!(c["request"], 2, "the third request of its connection");
    assert_eq!(
        (&c["src_identity"], &c["dst_identity"]),
        (&"a-wing".into(), &"server".into())
    );
    assert_eq!(
        (&c["old"]["verdict"], &c["new"]["verdict"]),
        (&"deny".into(), &"allow".into())
    );
    assert_eq!(
        c["new"]["because"],
        "deathstar-http/spec.ingress[0].toPorts[0]/http[2]"
    );
    assert_eq!(json[1]["kind"], "summary");
    assert_eq!(
        (
            &json[1]["changed"],
            &json[1]["newly_allowed"],
            &json[1]["total"]
        ),
        (&1.into(), &1.into(), &9.into())
    );
    // The output is NEW's replay: the unforced PUT reaches the server.
    let written = kit::frames::read_pcap(&out);
    let to_server = towards(&written, SERVER).first_copies();
    let text = String::from_utf8_lossy(&to_server);
    assert_eq!(text.matches("PUT /v1/exhaust-port").count(), 2, "{text}");

    // The other way round, every change flips; nothing else is listed.
    let (ok, back, stderr) = enforcer(&[
        "replay",
        "--policy",
        s(&shipped()),
        "--compare",
        s(&new),
        s(&input),
        "-w",
        s(&out),
    ]);
    assert!(ok, "{stderr}");
    assert!(back.contains("allow (deathstar-http/spec.ingress[0].toPorts[0]/http[2]) -> deny (no L7 rule matches)"), "{back}");
    assert!(
        back.ends_with("1 decisions changed (0 newly allowed, 1 newly denied) of 9\n"),
        "{back}"
    );
}

#[test]
fn what_if_against_itself_changes_nothing() {
    let (r, input) = scratch_with(starwars(), "in.pcap");
    let out = r.path("out.pcap");
    let (ok, stdout, stderr) = enforcer(&[
        "replay",
        "--policy",
        s(&shipped()),
        "--compare",
        s(&shipped()),
        s(&input),
        "-w",
        s(&out),
    ]);
    assert!(ok, "{stderr}");
    assert_eq!(
        stdout,
        "0 decisions changed (0 newly allowed, 0 newly denied) of 9\n"
    );
}

// ================================================================ suggest

/// The memcached guide's fleet at work, as an unenforced capture: the A-wing
/// (binary protocol) sets and reads its coordinates, the X-wing (text, with
/// nc) too, the tracker reads both.
fn fleet() -> Capture {
    const GET: u8 = 0x00;
    const SET: u8 = 0x01;
    let flags = [0u8; 4];
    let set_extras = [0, 0, 0, 0, 0, 0, 0x09, 0x60];
    let mut c = Capture::default();
    c.talk(
        AWING,
        11211,
        &[
            (
                &bin_req(SET, 1, b"awing-coord", &set_extras, b"4309.432,918.980"),
                &bin_resp(SET, 1, 0, &[], b""),
            ),
            (
                &bin_req(GET, 2, b"awing-coord", &[], b""),
                &bin_resp(GET, 2, 0, &flags, b"4309.432,918.980"),
            ),
        ],
    );
    c.talk(
        XWING,
        11211,
        &[
            (
                b"set xwing-coord 0 1200 16\r\n8893.34,234.3290\r\n",
                b"STORED\r\n",
            ),
            // nc's script ends with quit, which memcached answers by closing.
            (b"quit\r\n", b""),
        ],
    );
    c.talk(
        XWING,
        11211,
        &[(
            b"get xwing-coord\r\n",
            b"VALUE xwing-coord 0 16\r\n8893.34,234.3290\r\nEND\r\n",
        )],
    );
    c.talk(
        TRACKER,
        11211,
        &[
            (
                &bin_req(GET, 1, b"awing-coord", &[], b""),
                &bin_resp(GET, 1, 0, &flags, b"4309.432,918.980"),
            ),
            (
                &bin_req(GET, 2, b"xwing-coord", &[], b""),
                &bin_resp(GET, 2, 0, &flags, b"8893.34,234.3290"),
            ),
        ],
    );
    c
}

/// `enforcer suggest` over `input`; the YAML it printed.
fn suggest(input: &Path, extra: &[&str]) -> String {
    let eps = shipped().join("endpoints.yaml");
    let mut args = vec!["suggest", "--endpoints", s(&eps)];
    args.extend_from_slice(extra);
    args.push(s(input));
    let (ok, yaml, stderr) = enforcer(&args);
    assert!(ok, "{stderr}");
    yaml
}

/// L7 verdicts of a replay: (verdict, request) per decision.
fn l7_decisions(run: &kit::replay::Run) -> Vec<(String, String)> {
    run.log
        .iter()
        .filter(|e| e["kind"] != "flow")
        .map(|e| {
            let what = match e["kind"].as_str() {
                Some("http") => format!(
                    "{} {}",
                    e["method"].as_str().unwrap(),
                    e["path"].as_str().unwrap()
                ),
                _ => format!("{} {}", e["command"].as_str().unwrap(), e["keys"]),
            };
            (e["verdict"].as_str().unwrap().to_string(), what)
        })
        .collect()
}

/// Replays `input` under the policy directory `dir`, which must succeed:
/// "verdict request" per L7 decision.
fn l7_verdicts_under(r: &Replay, dir: &Path, input: &Path) -> Vec<String> {
    let run = r.file(dir, input, &[]);
    assert!(run.ok, "{}", run.stderr);
    l7_decisions(&run)
        .into_iter()
        .map(|(v, w)| format!("{v} {w}"))
        .collect()
}

/// Installs a suggestion (see `install`) and replays the capture it came
/// from under it: every decision an allow, `l7` of them of L7 requests.
/// The policy directory.
fn install_allowing(r: &Replay, name: &str, yaml: &str, input: &Path, l7: usize) -> PathBuf {
    let dir = install(r, name, yaml);
    let same = r.file(&dir, input, &[]);
    assert!(same.ok, "{}", same.stderr);
    let got = l7_decisions(&same);
    assert_eq!(got.len(), l7, "{got:?}");
    assert!(got.iter().all(|(v, _)| v == "allow"), "{got:?}");
    assert!(
        same.log.iter().all(|e| e["verdict"] == "allow"),
        "{:?}",
        same.log
    );
    dir
}

/// Writes `yaml` next to the shipped endpoints and checks it the way an
/// operator would.
fn install(r: &Replay, name: &str, yaml: &str) -> PathBuf {
    let dir = policy_dir(r, name, &[("suggested.yaml", yaml)]);
    let (ok, out, err) = enforcer(&["check", s(&dir)]);
    assert!(ok, "check refuses the suggestion:\n{out}{err}\n{yaml}");
    dir
}

#[test]
fn suggestion_from_the_memcached_guide_allows_its_traffic_and_no_foreign_key() {
    let (r, input) = scratch_with(fleet(), "fleet.pcap");
    let yaml = suggest(&input, &[]);
    assert_contains_all(
        &yaml,
        &[
            "name: \"suggested-server\"",
            "l7proto: memcache",
            "- command: \"get\"\n          keyExact: \"awing-coord\"",
            "- command: \"set\"\n          keyExact: \"xwing-coord\"",
            "- command: \"quit\"\n",
        ],
    );
    assert_eq!(yaml.matches("CiliumNetworkPolicy").count(), 1, "{yaml}");
    assert_eq!(yaml.matches("fromEndpoints").count(), 3, "{yaml}");
    // The same traffic under the suggestion: nothing denied.
    let dir = install_allowing(&r, "suggested", &yaml, &input, 7);

    // Foreign keys and commands not seen are denied; seen ones still pass.
    let mut bad = Capture::default();
    bad.talk(
        XWING,
        11211,
        &[
            (b"get xwing-coord\r\n", b"END\r\n"),
            (b"get awing-coord\r\n", b"END\r\n"),
            (b"delete xwing-coord\r\n", b"DELETED\r\n"),
        ],
    );
    bad.talk(
        TRACKER,
        11211,
        &[(
            &bin_req(0x01, 7, b"awing-coord", &[0; 8], b"0.0,0.0"),
            &bin_resp(0x01, 7, 0, &[], b""),
        )],
    );
    let input = r.path("bad.pcap");
    bad.write(&input);
    assert_eq!(
        l7_verdicts_under(&r, &dir, &input),
        [
            "allow get [\"xwing-coord\"]",
            "deny get [\"awing-coord\"]",
            "deny delete [\"xwing-coord\"]",
            "deny set [\"awing-coord\"]",
        ]
    );
}

#[test]
fn suggestion_from_an_audit_log_equals_the_one_from_the_capture() {
    let (r, input) = scratch_with(fleet(), "fleet.pcap");
    // The shipped policy in audit mode logs every decision, would-be denials included.
    let run = r.file(&shipped(), &input, &["--audit"]);
    assert!(run.ok, "{}", run.stderr);
    let log = r.path("audit.jsonl");
    let lines: Vec<String> = run.log.iter().map(|v| v.to_string()).collect();
    std::fs::write(&log, lines.join("\n") + "\n").unwrap();
    let body = |y: &str| -> String {
        y.lines()
            .filter(|l| !l.starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(body(&suggest(&log, &[])), body(&suggest(&input, &[])));
    // Prefix mode: one key prefix per ship.
    let yaml = suggest(&log, &["--key-prefix"]);
    assert!(yaml.contains("keyPrefix: \"awing-\""), "{yaml}");
    assert!(!yaml.contains("keyExact"), "{yaml}");
    install(&r, "prefix", &yaml);
}

#[test]
fn suggestion_from_the_starwars_traffic_keeps_exact_paths_or_merges_them() {
    let (r, input) = scratch_with(starwars(), "sw.pcap");
    let yaml = suggest(&input, &[]);
    assert_contains_all(
        &yaml,
        &[
            "- method: \"GET\"\n          path: \"/v1/\"",
            "- method: \"POST\"\n          path: \"/v1/request-landing\"",
            "- method: \"PUT\"\n          path: \"/v1/exhaust-port\"",
            "fromCIDR:\n    - \"10.66.0.14/32\"",
        ],
    );
    assert!(!yaml.contains("headers"), "headers are left out: {yaml}");
    // 5 HTTP and 1 memcached request.
    let dir = install_allowing(&r, "exact", &yaml, &input, 6);

    let mut other = Capture::default();
    let healthz: &[u8] = b"GET /v1/healthz HTTP/1.1\r\nHost: deathstar\r\n\r\n";
    other.talk(AWING, 80, &[(GET, OK), (healthz, OK)]);
    let input2 = r.path("other.pcap");
    other.write(&input2);
    assert_eq!(
        l7_verdicts_under(&r, &dir, &input2),
        ["allow GET /v1/", "deny GET /v1/healthz"]
    );

    // Merged: one rule per method under the common directory.
    let merged = suggest(&input, &["--merge-paths"]);
    assert!(
        merged.contains("- method: \"GET\"\n          path: \"/v1/\""),
        "one GET path stays exact: {merged}"
    );
    let dir = install(&r, "merged", &merged);
    let mut two = Capture::default();
    two.talk(AWING, 80, &[(LAND, LANDED)]);
    let land2: &[u8] =
        b"POST /v1/request-refuel HTTP/1.1\r\nHost: deathstar\r\nContent-Length: 0\r\n\r\n";
    two.talk(AWING, 80, &[(land2, OK)]);
    let input3 = r.path("two.pcap");
    two.write(&input3);
    let merged = suggest(&input3, &["--merge-paths"]);
    assert!(merged.contains("path: \"/v1/.*\""), "{merged}");
    let dir2 = install(&r, "merged2", &merged);
    assert_eq!(
        l7_verdicts_under(&r, &dir2, &input2),
        ["deny GET /v1/", "deny GET /v1/healthz"],
        "only POST was seen"
    );
    let _ = dir;
}

// ================================================================ deny replies

/// The Star Wars policy with its own HTTP denial.
fn sw_with_reply() -> String {
    let ann = "  name: \"deathstar-http\"\n  annotations:\n    \
               enforcer.io/http-deny-status: \"451\"\n    \
               enforcer.io/http-deny-body: \"{\\\"error\\\": \\\"the Force is required\\\"}\"\n    \
               enforcer.io/http-deny-content-type: application/json\n    \
               enforcer.io/http-deny-headers: |\n      X-Denied-By: enforcer\n      Retry-After: 3600\n";
    let out = SW.replace("  name: \"deathstar-http\"\n", ann);
    assert_ne!(out, SW);
    out
}

const SW_DENIAL: &[u8] = b"HTTP/1.1 451 Unavailable For Legal Reasons\r\nContent-Type: application/json\r\nContent-Length: 36\r\nX-Denied-By: enforcer\r\nRetry-After: 3600\r\n\r\n{\"error\": \"the Force is required\"}\r\n";

fn client_stream(run: &kit::replay::Run, client: &str) -> Vec<u8> {
    towards(&run.out, client).exact(S_ISN + 1).0
}

#[test]
fn a_policy_sets_its_own_http_denial_and_the_connection_goes_on() {
    let r = Replay::with_policies(&[("sw.yaml", &sw_with_reply()), ("memcd.yaml", MEMCD)]);
    let mut t = Talk::new(AWING, SERVER, 80);
    t.allowed(GET, OK);
    t.denied(PUT, SW_DENIAL.len());
    t.allowed(GET, OK);
    let run = r.frames(&t.frames, &[]);
    assert_eq!(client_stream(&run, AWING), [OK, SW_DENIAL, OK].concat());
    let srv = towards(&run.out, SERVER).exact(C_ISN + 1).0;
    assert_eq!(
        srv,
        [GET, GET].concat(),
        "the server reads the two GETs only"
    );
}

#[test]
fn global_deny_flags_apply_where_no_policy_sets_its_own() {
    let r = Replay::with_policies(&[("sw.yaml", &sw_with_reply()), ("memcd.yaml", MEMCD)]);
    let flags = [
        "--memcache-deny-message",
        "not your key",
        "--http-deny-status",
        "418",
    ];
    let mc: &[u8] = b"CLIENT_ERROR not your key\r\n";
    let mut t = Talk::new(XWING, SERVER, 11211);
    t.allowed(b"get xwing-coord\r\n", b"END\r\n");
    t.denied(b"get awing-coord\r\n", mc.len());
    t.allowed(b"get xwing-coord\r\n", b"END\r\n");
    let run = r.frames(&t.frames, &flags);
    assert_eq!(
        client_stream(&run, XWING),
        [b"END\r\n", mc, b"END\r\n"].concat()
    );
    // The HTTP policy's annotation wins over the flag for its denials.
    let mut t = Talk::new(AWING, SERVER, 80);
    t.denied(PUT, SW_DENIAL.len());
    let run = r.frames(&t.frames, &flags);
    assert_eq!(client_stream(&run, AWING), SW_DENIAL);
    // Under the shipped policy (no annotations), the flags' denial.
    let flags = [
        "--http-deny-status",
        "418",
        "--http-deny-body",
        "no",
        "--http-deny-header",
        "X-Why: policy",
    ];
    let teapot: &[u8] = b"HTTP/1.1 418 I'm a teapot\r\nContent-Type: text/plain\r\nContent-Length: 4\r\nX-Why: policy\r\n\r\nno\r\n";
    let mut t = Talk::new(AWING, SERVER, 80);
    t.denied(PUT, teapot.len());
    t.allowed(GET, OK);
    let run = Replay::new(shipped()).frames(&t.frames, &flags);
    assert_eq!(client_stream(&run, AWING), [teapot, OK].concat());
}

#[test]
fn check_shows_a_policys_own_denial() {
    let r = Replay::new(PathBuf::new());
    let dir = policy_dir(&r, "p", &[("sw.yaml", &sw_with_reply())]);
    let (ok, out, err) = enforcer(&["check", s(&dir)]);
    assert!(ok, "{err}");
    assert!(
        out.contains(
            "  denial (annotations): HTTP status 451, body \"{\\\"error\\\": \\\"the Force is required\\\"}\", \
             content type application/json, header \"X-Denied-By: enforcer\", header \"Retry-After: 3600\"\n"
        ),
        "{out}"
    );
}

#[test]
fn a_bad_deny_annotation_is_a_policy_error_with_file_line_and_field() {
    let r = Replay::new(PathBuf::new());
    let bad = SW.replace(
        "  name: \"deathstar-http\"\n",
        "  name: \"deathstar-http\"\n  annotations:\n    enforcer.io/http-deny-status: \"304\"\n",
    );
    let dir = policy_dir(&r, "bad", &[("sw.yaml", &bad)]);
    let (ok, out, err) = enforcer(&["check", s(&dir)]);
    assert!(!ok, "{out}");
    let want = format!(
        "{}:8: metadata.annotations.enforcer.io/http-deny-status: status 304 carries no body",
        dir.join("sw.yaml").display()
    );
    assert!(err.contains(&want), "{want:?} in {err}");
    let typo = SW.replace(
        "  name: \"deathstar-http\"\n",
        "  name: \"deathstar-http\"\n  annotations:\n    enforcer.io/http-deny-stauts: \"451\"\n",
    );
    std::fs::write(dir.join("sw.yaml"), typo).unwrap();
    let (ok, _, err) = enforcer(&["check", s(&dir)]);
    assert!(!ok);
    assert!(err.contains("sw.yaml:8: metadata.annotations.enforcer.io/http-deny-stauts: unknown enforcer annotation"), "{err}");
    // And a bad flag is refused before anything runs.
    let (ok, _, err) = enforcer(&[
        "replay",
        "--policy",
        s(&shipped()),
        "--http-deny-header",
        "Content-Length: 0",
        "x",
        "-w",
        "y",
    ]);
    assert!(
        !ok && err.contains("Content-Length is set by the enforcer"),
        "{err}"
    );
}

#[test]
fn suggestion_requires_the_headers_asked_for_with_the_values_seen() {
    let r = Replay::new(PathBuf::new());
    let mut c = Capture::default();
    // A chunked body in front: the header reading must find the next request.
    let chunked: &[u8] = b"POST /v1/request-landing HTTP/1.1\r\nHost: deathstar\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nship\r\n0\r\n\r\n";
    c.talk(
        AWING,
        80,
        &[(GET, OK), (chunked, LANDED), (PUT_FORCE, PANIC)],
    );
    let input = r.path("force.pcap");
    c.write(&input);
    let yaml = suggest(&input, &["--http-header", "X-Has-Force"]);
    assert!(
        yaml.contains(
            "- method: \"PUT\"\n          path: \"/v1/exhaust-port\"\n          headers:\n          - \"X-Has-Force: true\"\n"
        ),
        "{yaml}"
    );
    assert_eq!(
        yaml.matches("headers:").count(),
        1,
        "only the PUT carried it: {yaml}"
    );
    let dir = install(&r, "force", &yaml);
    let same = r.file(&dir, &input, &[]);
    assert!(
        same.log.iter().all(|e| e["verdict"] == "allow"),
        "{:?}",
        same.log
    );
    let mut t = Capture::default();
    t.talk(AWING, 80, &[(PUT, PANIC)]);
    let unforced = r.path("unforced.pcap");
    t.write(&unforced);
    let run = r.file(&dir, &unforced, &[]);
    assert_eq!(
        l7_decisions(&run),
        [("deny".to_string(), "PUT /v1/exhaust-port".to_string())]
    );
    // Without the option no header is required; a log cannot give one.
    assert!(!suggest(&input, &[]).contains("headers:"));
    let log = r.path("v.jsonl");
    std::fs::write(&log, "").unwrap();
    let eps = shipped().join("endpoints.yaml");
    let (ok, _, err) = enforcer(&[
        "suggest",
        "--endpoints",
        s(&eps),
        "--http-header",
        "X-Has-Force",
        s(&log),
    ]);
    assert!(
        !ok && err.contains("--http-header needs a capture"),
        "{err}"
    );
}
