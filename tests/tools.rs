//! The policy tools through the real binary, over captures built with the
//! kit's frame builders: what-if (`replay --compare`), the least-privilege
//! suggestion (`suggest`) and per-policy deny replies.

mod kit;

use std::path::{Path, PathBuf};

use kit::frames::{rec, write_pcap, Rec};
use kit::replay::{shipped, towards, Replay};
use kit::tcp::Conn;
use kit::*;

const SERVER: &str = "10.66.0.2";
const AWING: &str = "10.66.0.11";
const XWING: &str = "10.66.0.12";
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

// ================================================================ what-if

#[test]
fn what_if_without_the_force_rule_lists_exactly_the_exhaust_port_request() {
    let r = Replay::new(PathBuf::new());
    let input = r.path("in.pcap");
    starwars().write(&input);
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
    for want in [
        "a-wing -> server",
        "10.66.0.2:80",
        "http PUT deathstar/v1/exhaust-port",
        "deny (no L7 rule matches) -> allow (deathstar-http/spec.ingress[0].toPorts[0]/http[2])",
    ] {
        assert!(change.contains(want), "{want:?} in {change:?}");
    }
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
    let r = Replay::new(PathBuf::new());
    let input = r.path("in.pcap");
    starwars().write(&input);
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
