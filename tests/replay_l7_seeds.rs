//! `enforcer replay` at L7: generated captures (reordered, duplicated and
//! overlapping segments, pipelined requests, denials) through the real
//! binary with the shipped policies; the assertions are on the exact bytes
//! each side would receive from the frames in OUT.

mod kit;

use kit::replay::{shipped, towards, Replay};
use kit::tcp::Conn;
use kit::*;

const SERVER: &str = "10.66.0.2";

/// Run replay over `recs` (pcapng, interface = side); the frames that leave.
fn replay(recs: &[Rec], extra: &[&str]) -> (Vec<Vec<u8>>, Vec<serde_json::Value>) {
    let r = Replay::new(shipped()).recs(recs, true, extra);
    (r.out, r.log)
}

/// The byte stream towards `to` (by seq, first copy wins), from its first
/// data byte on, and the seqs where each payload started.
fn stream_to(frames: &[Vec<u8>], to: &str) -> (Vec<u8>, Vec<u32>) {
    let t = towards(frames, to);
    (t.first_copies(), t.starts())
}

const GET: &[u8] = b"GET /v1/ HTTP/1.1\r\nHost: deathstar\r\n\r\n";
const PUT: &[u8] = b"PUT /v1/exhaust-port HTTP/1.1\r\nHost: deathstar\r\n\r\n";
const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

#[test]
fn http_reordered_overlapping_and_denied_segments() {
    let c = ep("10.66.0.12", 40000);
    let s = ep(SERVER, 80);
    let (c0, s0) = (1001u32, 50_001u32);
    let mut recs = vec![
        rec(1, 0, tcp(c, s, c0 - 1, 0, SYN, &[])),
        rec(2, 1, tcp(s, c, s0 - 1, c0, SYN | ACK, &[])),
        rec(3, 0, tcp(c, s, c0, s0, ACK, &[])),
    ];
    // GET in three pieces, out of order, with a duplicate and an overlap.
    let (a, rest) = GET.split_at(10);
    let (b, d) = rest.split_at(10);
    recs.push(rec(4, 0, tcp(c, s, c0 + 10, s0, ACK | PSH, b)));
    recs.push(rec(5, 0, tcp(c, s, c0, s0, ACK | PSH, a)));
    recs.push(rec(6, 0, tcp(c, s, c0, s0, ACK | PSH, a)));
    recs.push(rec(7, 0, tcp(c, s, c0 + 5, s0, ACK | PSH, &GET[5..25])));
    recs.push(rec(8, 0, tcp(c, s, c0 + 20, s0, ACK | PSH, d)));
    let c1 = c0 + GET.len() as u32;
    recs.push(rec(9, 1, tcp(s, c, s0, c1, ACK | PSH, OK)));
    // The denied PUT; the client then acknowledges the 200 and the 403.
    recs.push(rec(
        10,
        0,
        tcp(c, s, c1, s0 + OK.len() as u32, ACK | PSH, PUT),
    ));
    let c2 = c1 + PUT.len() as u32;
    // A second GET; the server (which never saw the PUT) answers it.
    recs.push(rec(
        11,
        0,
        tcp(c, s, c2, s0 + OK.len() as u32, ACK | PSH, GET),
    ));
    recs.push(rec(
        12,
        1,
        tcp(
            s,
            c,
            s0 + OK.len() as u32,
            c1 + GET.len() as u32,
            ACK | PSH,
            OK,
        ),
    ));
    let (out, events) = replay(&recs, &[]);

    let (to_server, _) = stream_to(&out, SERVER);
    assert_eq!(
        to_server,
        [GET, GET].concat(),
        "exactly the allowed requests, byte for byte"
    );
    let (to_client, starts) = stream_to(&out, "10.66.0.12");
    let text = String::from_utf8_lossy(&to_client).into_owned();
    assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
    let i403 = text.find("HTTP/1.1 403 Forbidden").expect("403 injected");
    assert_eq!(
        i403,
        OK.len(),
        "the denial sits right after the first reply"
    );
    assert!(text.ends_with("\r\n\r\nok"), "{text}");
    // the second 200 comes after the injected bytes in the client's space
    let denial_len = (text.len() - 2 * OK.len()) as u32;
    assert_eq!(*starts.last().unwrap(), s0 + OK.len() as u32 + denial_len);

    let l7: Vec<_> = events.iter().filter(|e| e["kind"] == "http").collect();
    let verdicts: Vec<_> = l7
        .iter()
        .map(|e| {
            (
                e["method"].as_str().unwrap(),
                e["verdict"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        verdicts,
        [("GET", "allow"), ("PUT", "deny"), ("GET", "allow")]
    );
    assert!(l7[0]["rule"].as_str().unwrap().contains("deathstar-http"));
}

#[test]
fn memcached_every_family_from_the_tracker() {
    let c = ep("10.66.0.13", 40001);
    let s = ep(SERVER, 11211);
    let mut conv = Conn::new(c, s);
    let mut recs = conv.handshake_recs();
    // One request per family the tracker may not use, then one it may.
    let reqs: &[&[u8]] = &[
        b"set awing-coord 0 0 3\r\nabc\r\n",
        b"add awing-coord 0 0 3 noreply\r\nabc\r\n",
        b"cas awing-coord 0 0 3 99\r\nabc\r\n",
        b"delete awing-coord\r\n",
        b"incr awing-coord 1\r\n",
        b"touch awing-coord 10\r\n",
        b"gat 10 awing-coord\r\n",
        b"flush_all\r\n",
        b"stats\r\n",
        b"version\r\n",
        b"get awing-coord xwing-coord\r\n",
    ];
    let mut t = 10;
    for r in reqs {
        t += 1;
        recs.push(rec(t, 0, conv.client_data(r)));
    }
    // Allowed: a meta get (the `get` group) and a plain get of a tracked key.
    recs.push(rec(t + 1, 0, conv.client_data(b"mg awing-coord v\r\n")));
    recs.push(rec(t + 2, 0, conv.client_data(b"get xwing-coord\r\n")));
    let (out, events) = replay(&recs, &[]);
    let (to_server, _) = stream_to(&out, SERVER);
    assert_eq!(
        String::from_utf8_lossy(&to_server),
        "mg awing-coord v\r\nget xwing-coord\r\n",
        "exactly the allowed requests reach the server"
    );
    let denied = events
        .iter()
        .filter(|e| e["kind"] == "memcache" && e["verdict"] == "deny")
        .count();
    assert_eq!(denied, reqs.len(), "{events:?}");
    let (to_client, _) = stream_to(&out, "10.66.0.13");
    let text = String::from_utf8_lossy(&to_client).into_owned();
    // one CLIENT_ERROR per denied request that expects a reply (not the noreply add)
    assert_eq!(
        text.matches("CLIENT_ERROR access denied\r\n").count(),
        reqs.len() - 1,
        "{text}"
    );
}

#[test]
fn malformed_frames_and_requests_never_crash_the_replay() {
    let c = ep("10.66.0.11", 40002);
    let s = ep(SERVER, 80);
    let mut conv = Conn::new(c, s);
    let mut recs = conv.handshake_recs();
    let mut junk = tcp(
        c,
        s,
        conv.client.snd_nxt,
        conv.server.snd_nxt,
        ACK | PSH,
        b"GET /v1/ HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    junk.truncate(40);
    recs.push(rec(10, 0, junk));
    recs.push(rec(
        11,
        0,
        conv.client_data(b"GET /v1/ HTTP/1.1\nHost: bare-lf\n\n"),
    ));
    let (out, events) = replay(&recs, &[]);
    let (to_server, _) = stream_to(&out, SERVER);
    assert!(to_server.is_empty());
    assert!(
        events
            .iter()
            .any(|e| e["verdict"] == "deny"
                && e["reason"].as_str().unwrap_or("").contains("invalid")),
        "{events:?}"
    );
}

#[test]
fn memcached_binary_quiet_split_and_pipelined() {
    let c = ep("10.66.0.11", 40003);
    let s = ep(SERVER, 11211);
    let mut conv = Conn::new(c, s);
    let mut recs = conv.handshake_recs();
    // a-wing: getq of its own key (allowed, quiet), getq of x-wing's (denied,
    // quiet: no reply), setq of x-wing's (denied, quiet), a noop (no key: the
    // seed policy has no rule for it, denied with a reply), a get of its own key
    // split byte by byte.
    let getq_ok = bin_req(0x09, 1, b"awing-coord", &[], &[]);
    let getq_no = bin_req(0x09, 2, b"xwing-coord", &[], &[]);
    let setq_no = bin_req(0x11, 3, b"xwing-coord", &[0; 8], b"0.0,0.0");
    let noop = bin_req(0x0a, 4, b"", &[], &[]);
    let pipelined = [getq_ok.clone(), getq_no, setq_no, noop].concat();
    recs.push(rec(10, 0, conv.client_data(&pipelined)));
    let get = bin_req(0x00, 5, b"awing-coord", &[], &[]);
    for (i, b) in get.iter().enumerate() {
        recs.push(rec(20 + i as u64, 0, conv.client_data(&[*b])));
    }
    let (out, events) = replay(&recs, &[]);
    let (to_server, _) = stream_to(&out, SERVER);
    assert_eq!(
        to_server,
        [getq_ok, get].concat(),
        "only a-wing's own key reaches the server"
    );
    let (to_client, _) = stream_to(&out, "10.66.0.11");
    // Exactly one denial answered: the noop (opcode 0x0a, opaque 4, status 8).
    assert_eq!(
        to_client.len(),
        24 + b"access denied".len(),
        "{to_client:?}"
    );
    assert_eq!((to_client[0], to_client[1]), (0x81, 0x0a));
    assert_eq!(&to_client[6..8], &[0, 8]);
    assert_eq!(&to_client[12..16], &4u32.to_be_bytes());
    let denied = events
        .iter()
        .filter(|e| e["kind"] == "memcache" && e["verdict"] == "deny")
        .count();
    assert_eq!(denied, 3);
}
