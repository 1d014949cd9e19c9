//! `enforcer replay` at L7: captures of the seed conversations through the
//! real binary with the shipped policies. The capture holds what each side
//! sends as it would live (the server never sees denied requests, the
//! client acknowledges the injected denial); the test reassembles what the
//! enforcer wrote towards each side and checks the exact bytes.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use common::*;
use enforcer::packet::view::parse;

const SERVER: &str = "10.66.0.2";
const AWING: &str = "10.66.0.11";
const XWING: &str = "10.66.0.12";
const DENY_403: &[u8] =
    b"HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nContent-Length: 15\r\n\r\nAccess denied\r\n";
const MC_DENY: &[u8] = b"CLIENT_ERROR access denied\r\n";

struct Run {
    out: Vec<Vec<u8>>,
    log: Vec<serde_json::Value>,
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn replay(frames: &[Vec<u8>], extra: &[&str]) -> Run {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("in.pcap");
    let out = dir.path().join("out.pcap");
    let log = dir.path().join("log.jsonl");
    let recs: Vec<_> = frames
        .iter()
        .enumerate()
        .map(|(i, f)| rec(i as u64 * 1_000_000, 0, f.clone()))
        .collect();
    write_pcap(&input, &recs);
    let o = Command::new(env!("CARGO_BIN_EXE_enforcer"))
        .arg("replay")
        .arg("--policy")
        .arg(repo().join("policies"))
        .arg(&input)
        .arg("-w")
        .arg(&out)
        .arg("--log")
        .arg(&log)
        .args(extra)
        .output()
        .expect("run enforcer");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "replay failed: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    Run {
        out: read_pcap(&out),
        log: std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("log line is JSON"))
            .collect(),
    }
}

/// The byte stream (and whether a FIN / RST came) the enforcer sent to
/// `dst`, reassembled from `start` as a receiver would, checking that
/// every copy of a byte carries the same value.
fn stream_to(r: &Run, dst: &str, start: u32) -> (Vec<u8>, bool, bool) {
    let mut bytes: BTreeMap<u32, u8> = BTreeMap::new();
    let (mut fin, mut rst) = (None, false);
    for f in &r.out {
        let m = parse(f).expect("enforcer wrote an unparsable frame");
        if m.dst != ip(dst) {
            continue;
        }
        let t = m.tcp().expect("tcp");
        if t.flags & RST != 0 {
            rst = true;
        }
        if t.flags & SYN != 0 {
            continue;
        }
        let p = m.payload(f);
        for (i, b) in p.iter().enumerate() {
            let off = t.seq.wrapping_add(i as u32).wrapping_sub(start);
            if let Some(old) = bytes.insert(off, *b) {
                assert_eq!(old, *b, "two different bytes at offset {off} to {dst}");
            }
        }
        if t.flags & FIN != 0 {
            fin = Some(t.seq.wrapping_add(p.len() as u32).wrapping_sub(start));
        }
    }
    let mut out = Vec::new();
    while let Some(b) = bytes.get(&(out.len() as u32)) {
        out.push(*b);
    }
    assert_eq!(out.len(), bytes.len(), "gap in the stream to {dst}");
    let fin = fin == Some(out.len() as u32);
    (out, fin, rst)
}

fn l7_verdicts(r: &Run) -> Vec<String> {
    r.log
        .iter()
        .filter(|e| e["kind"] != "flow")
        .map(|e| e["verdict"].as_str().unwrap_or("").to_string())
        .collect()
}

/// A conversation where each side sends with its own seq and acks what it
/// received (the client's view includes injected denials, the server's
/// excludes denied requests).
struct Talk {
    c: Ep,
    s: Ep,
    /// Next seq each side sends.
    c_snd: u32,
    s_snd: u32,
    /// What each side received so far (its next expected seq).
    c_rcv: u32,
    s_rcv: u32,
    frames: Vec<Vec<u8>>,
}

const C_ISN: u32 = 1000;
const S_ISN: u32 = 50_000;

impl Talk {
    fn new(client: &str, port: u16) -> Talk {
        let (c, s) = (ep(client, 40_000), ep(SERVER, port));
        let frames = vec![
            tcp(c, s, C_ISN, 0, SYN, &[]),
            tcp(s, c, S_ISN, C_ISN + 1, SYN | ACK, &[]),
            tcp(c, s, C_ISN + 1, S_ISN + 1, ACK, &[]),
        ];
        Talk {
            c,
            s,
            c_snd: C_ISN + 1,
            s_snd: S_ISN + 1,
            c_rcv: S_ISN + 1,
            s_rcv: C_ISN + 1,
            frames,
        }
    }

    /// A request the server receives.
    fn allowed(&mut self, req: &[u8], reply: &[u8]) {
        self.frames
            .push(tcp(self.c, self.s, self.c_snd, self.c_rcv, ACK | PSH, req));
        self.c_snd += req.len() as u32;
        self.s_rcv += req.len() as u32;
        self.frames.push(tcp(
            self.s,
            self.c,
            self.s_snd,
            self.s_rcv,
            ACK | PSH,
            reply,
        ));
        self.s_snd += reply.len() as u32;
        self.c_rcv += reply.len() as u32;
        self.client_ack();
    }

    /// A request the enforcer answers with `denial`.
    fn denied(&mut self, req: &[u8], denial: &[u8]) {
        self.frames
            .push(tcp(self.c, self.s, self.c_snd, self.c_rcv, ACK | PSH, req));
        self.c_snd += req.len() as u32;
        self.c_rcv += denial.len() as u32;
        self.client_ack();
    }

    fn client_ack(&mut self) {
        self.frames
            .push(tcp(self.c, self.s, self.c_snd, self.c_rcv, ACK, &[]));
    }

    fn close(&mut self) {
        self.frames
            .push(tcp(self.c, self.s, self.c_snd, self.c_rcv, FIN | ACK, &[]));
        self.c_snd += 1;
        self.s_rcv += 1;
        self.frames
            .push(tcp(self.s, self.c, self.s_snd, self.s_rcv, FIN | ACK, &[]));
        self.s_snd += 1;
        self.c_rcv += 1;
        self.client_ack();
    }
}

#[test]
fn memcached_get_allowed_denied_allowed_on_one_connection() {
    let mut t = Talk::new(XWING, 11211);
    let v1: &[u8] = b"VALUE xwing-coord 0 3\r\nabc\r\nEND\r\n";
    t.allowed(b"get xwing-coord\r\n", v1);
    t.denied(b"get awing-coord\r\n", MC_DENY);
    t.allowed(b"get xwing-coord\r\n", b"END\r\n");
    t.close();
    let r = replay(&t.frames, &[]);
    let (srv, srv_fin, srv_rst) = stream_to(&r, SERVER, C_ISN + 1);
    assert_eq!(srv, b"get xwing-coord\r\nget xwing-coord\r\n");
    assert!(srv_fin && !srv_rst);
    let (cli, cli_fin, cli_rst) = stream_to(&r, XWING, S_ISN + 1);
    let mut want = v1.to_vec();
    want.extend_from_slice(MC_DENY);
    want.extend_from_slice(b"END\r\n");
    assert_eq!(cli, want);
    assert!(cli_fin && !cli_rst);
    assert_eq!(l7_verdicts(&r), ["allow", "deny", "allow"]);
}

#[test]
fn http_200_403_200_like_curl_next() {
    let mut t = Talk::new(AWING, 80);
    let get: &[u8] =
        b"GET /v1/ HTTP/1.1\r\nHost: deathstar\r\nUser-Agent: curl/8\r\nAccept: */*\r\n\r\n";
    let ok: &[u8] =
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}";
    let put: &[u8] =
        b"PUT /v1/exhaust-port HTTP/1.1\r\nHost: deathstar\r\nContent-Length: 4\r\n\r\nboom";
    t.allowed(get, ok);
    t.denied(put, DENY_403);
    t.allowed(get, ok);
    t.close();
    let r = replay(&t.frames, &[]);
    let (srv, srv_fin, _) = stream_to(&r, SERVER, C_ISN + 1);
    assert_eq!(
        srv,
        [get, get].concat(),
        "the server reads exactly the two GETs"
    );
    assert!(srv_fin);
    let (cli, cli_fin, _) = stream_to(&r, AWING, S_ISN + 1);
    assert_eq!(cli, [ok, DENY_403, ok].concat());
    assert!(cli_fin);
    assert_eq!(l7_verdicts(&r), ["allow", "deny", "allow"]);
}

#[test]
fn http_pipelined_denial_between_replies() {
    let mut t = Talk::new(AWING, 80);
    let get: &[u8] = b"GET /v1/ HTTP/1.1\r\nHost: deathstar\r\n\r\n";
    let bad: &[u8] = b"GET /v1/secret HTTP/1.1\r\nHost: deathstar\r\n\r\n";
    let ok: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}";
    let all = [get, bad, get].concat();
    t.frames
        .push(tcp(t.c, t.s, t.c_snd, t.c_rcv, ACK | PSH, &all));
    t.c_snd += all.len() as u32;
    // The server first sees only the first GET...
    t.s_rcv += get.len() as u32;
    t.frames
        .push(tcp(t.s, t.c, t.s_snd, t.s_rcv, ACK | PSH, ok));
    t.s_snd += ok.len() as u32;
    // ...then the third, released once the 403 is in place.
    t.s_rcv += get.len() as u32;
    t.frames
        .push(tcp(t.s, t.c, t.s_snd, t.s_rcv, ACK | PSH, ok));
    t.s_snd += ok.len() as u32;
    t.c_rcv += (2 * ok.len() + DENY_403.len()) as u32;
    t.client_ack();
    let r = replay(&t.frames, &[]);
    let (srv, ..) = stream_to(&r, SERVER, C_ISN + 1);
    assert_eq!(srv, [get, get].concat());
    let (cli, ..) = stream_to(&r, AWING, S_ISN + 1);
    assert_eq!(cli, [ok, DENY_403, ok].concat());
}

#[test]
fn deny_action_reset_resets_both_sides() {
    let mut t = Talk::new(XWING, 11211);
    t.allowed(b"get xwing-coord\r\n", b"END\r\n");
    t.denied(b"get awing-coord\r\n", b"");
    let r = replay(&t.frames, &["--deny-action", "reset"]);
    let (srv, _, srv_rst) = stream_to(&r, SERVER, C_ISN + 1);
    assert_eq!(srv, b"get xwing-coord\r\n");
    let (cli, _, cli_rst) = stream_to(&r, XWING, S_ISN + 1);
    assert_eq!(cli, b"END\r\n");
    assert!(srv_rst && cli_rst);
}
