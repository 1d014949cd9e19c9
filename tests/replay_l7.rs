//! `enforcer replay` at L7: captures of the seed conversations through the
//! real binary with the shipped policies. The capture holds what each side
//! sends as it would live (the server never sees denied requests, the
//! client acknowledges the injected denial); the test reassembles what the
//! enforcer wrote towards each side and checks the exact bytes.

mod kit;

use kit::replay::{shipped, towards, Replay, Run};
use kit::tcp::{Talk, TALK_C_ISN as C_ISN, TALK_S_ISN as S_ISN};

const SERVER: &str = "10.66.0.2";
const AWING: &str = "10.66.0.11";
const XWING: &str = "10.66.0.12";
const DENY_403: &[u8] =
    b"HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nContent-Length: 15\r\n\r\nAccess denied\r\n";
const MC_DENY: &[u8] = b"CLIENT_ERROR access denied\r\n";

fn replay(frames: &[Vec<u8>], extra: &[&str]) -> Run {
    Replay::new(shipped()).frames(frames, extra)
}

/// The byte stream (and whether a FIN / RST came) the enforcer sent to
/// `dst`, reassembled from `start` as a receiver would, every copy of a
/// byte carrying the same value.
fn stream_to(r: &Run, dst: &str, start: u32) -> (Vec<u8>, bool, bool) {
    let t = towards(&r.out, dst);
    let (bytes, fin) = t.exact(start);
    (bytes, fin, t.rst)
}

fn l7_verdicts(r: &Run) -> Vec<String> {
    r.log
        .iter()
        .filter(|e| e["kind"] != "flow")
        .map(|e| e["verdict"].as_str().unwrap_or("").to_string())
        .collect()
}

#[test]
fn memcached_get_allowed_denied_allowed_on_one_connection() {
    let mut t = Talk::new(XWING, SERVER, 11211);
    let v1: &[u8] = b"VALUE xwing-coord 0 3\r\nabc\r\nEND\r\n";
    t.allowed(b"get xwing-coord\r\n", v1);
    t.denied(b"get awing-coord\r\n", MC_DENY.len());
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
    let mut t = Talk::new(AWING, SERVER, 80);
    let get: &[u8] =
        b"GET /v1/ HTTP/1.1\r\nHost: deathstar\r\nUser-Agent: curl/8\r\nAccept: */*\r\n\r\n";
    let ok: &[u8] =
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}";
    let put: &[u8] =
        b"PUT /v1/exhaust-port HTTP/1.1\r\nHost: deathstar\r\nContent-Length: 4\r\n\r\nboom";
    t.allowed(get, ok);
    t.denied(put, DENY_403.len());
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
    let mut t = Talk::new(AWING, SERVER, 80);
    let get: &[u8] = b"GET /v1/ HTTP/1.1\r\nHost: deathstar\r\n\r\n";
    let bad: &[u8] = b"GET /v1/secret HTTP/1.1\r\nHost: deathstar\r\n\r\n";
    let ok: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}";
    let all = [get, bad, get].concat();
    t.frames.push(t.c.data_segment(&all));
    // The server first sees only the first GET...
    t.s.rcv_nxt += get.len() as u32;
    t.frames.push(t.s.data_segment(ok));
    // ...then the third, released once the 403 is in place.
    t.s.rcv_nxt += get.len() as u32;
    t.frames.push(t.s.data_segment(ok));
    t.c.rcv_nxt += (2 * ok.len() + DENY_403.len()) as u32;
    t.frames.push(t.c.ack());
    let r = replay(&t.frames, &[]);
    let (srv, ..) = stream_to(&r, SERVER, C_ISN + 1);
    assert_eq!(srv, [get, get].concat());
    let (cli, ..) = stream_to(&r, AWING, S_ISN + 1);
    assert_eq!(cli, [ok, DENY_403, ok].concat());
}

#[test]
fn deny_action_reset_resets_both_sides() {
    let mut t = Talk::new(XWING, SERVER, 11211);
    t.allowed(b"get xwing-coord\r\n", b"END\r\n");
    t.denied(b"get awing-coord\r\n", 0);
    let r = replay(&t.frames, &["--deny-action", "reset"]);
    let (srv, _, srv_rst) = stream_to(&r, SERVER, C_ISN + 1);
    assert_eq!(srv, b"get xwing-coord\r\n");
    let (cli, _, cli_rst) = stream_to(&r, XWING, S_ISN + 1);
    assert_eq!(cli, b"END\r\n");
    assert!(srv_rst && cli_rst);
}
