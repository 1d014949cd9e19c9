//! Per-request L7 enforcement through the engine, end to end in memory:
//! a client and a server, each a small TCP receiver that accepts only
//! in-order bytes, talk through `Engine::process` with the shipped
//! policies. The invariant checked everywhere: the server reads exactly the
//! allowed requests, the client reads every reply and denial in order, and
//! both sides' sequence numbers stay consistent (the receivers would
//! reject anything else).

mod common;

use std::collections::VecDeque;
use std::sync::Arc;

use common::{ep, tcp, Ep, ACK, FIN, PSH, SYN};
use enforcer::config::{DenyAction, EngineConfig};
use enforcer::engine::Engine;
use enforcer::packet::view::parse;
use enforcer::policy::Policy;
use enforcer::verdict::{Output, Verdict};

const CLIENT_PORT: u8 = 0;
const SERVER_PORT: u8 = 1;

/// One side's receive state: next expected seq and everything received.
struct Side {
    me: Ep,
    peer: Ep,
    /// Next seq this side sends (its own space).
    snd: u32,
    /// Next seq expected from the peer (as this side sees it).
    rcv: u32,
    got: Vec<u8>,
    fin: bool,
    rst: bool,
    out_of_order: usize,
}

struct Lab {
    engine: Engine,
    client: Side,
    server: Side,
    now: u64,
    /// Frames in flight: (arrives on engine port, frame).
    wire: VecDeque<(u8, Vec<u8>)>,
    /// Drop the next frame the engine emits towards this port.
    lose_next_to: Option<u8>,
    out: Output,
}

fn policy() -> Arc<Policy> {
    Arc::new(Policy::load(std::path::Path::new("policies")).expect("shipped policies load"))
}

impl Lab {
    fn new(client: &str, server_port: u16, cfg: EngineConfig) -> Lab {
        let c = ep(client, 40_000);
        let s = ep(
            if client.contains(':') {
                "fd66::2"
            } else {
                "10.66.0.2"
            },
            server_port,
        );
        let mut lab = Lab {
            engine: Engine::new(policy(), cfg, 0),
            client: Side {
                me: c,
                peer: s,
                snd: 1000,
                rcv: 0,
                got: vec![],
                fin: false,
                rst: false,
                out_of_order: 0,
            },
            server: Side {
                me: s,
                peer: c,
                snd: 9_000_000,
                rcv: 0,
                got: vec![],
                fin: false,
                rst: false,
                out_of_order: 0,
            },
            now: 1_000_000,
            wire: VecDeque::new(),
            lose_next_to: None,
            out: Output::default(),
        };
        let syn = tcp(c, s, lab.client.snd, 0, SYN, &[]);
        lab.client.snd += 1;
        lab.send(CLIENT_PORT, syn);
        let sa = tcp(s, c, lab.server.snd, lab.client.snd, SYN | ACK, &[]);
        lab.server.snd += 1;
        lab.server.rcv = lab.client.snd;
        lab.send(SERVER_PORT, sa);
        lab.client.rcv = lab.server.snd;
        let ack = tcp(c, s, lab.client.snd, lab.client.rcv, ACK, &[]);
        lab.send(CLIENT_PORT, ack);
        lab.run();
        lab
    }

    fn side(&mut self, port: u8) -> &mut Side {
        if port == CLIENT_PORT {
            &mut self.client
        } else {
            &mut self.server
        }
    }

    fn send(&mut self, port: u8, frame: Vec<u8>) {
        self.wire.push_back((port, frame));
    }

    /// Deliver a frame the engine let out on `port` to the side behind it.
    fn deliver(&mut self, port: u8, frame: &[u8]) {
        if self.lose_next_to == Some(port) {
            self.lose_next_to = None;
            return;
        }
        let m = parse(frame).expect("engine emitted a valid frame");
        let t = *m.tcp().expect("tcp");
        let payload = m.payload(frame).to_vec();
        let side = self.side(port);
        assert_eq!(m.dst, side.me.ip, "addressed to the right side");
        if t.flags & 0x04 != 0 {
            side.rst = true;
            return;
        }
        if t.flags & SYN != 0 {
            return;
        }
        let mut reply_ack = false;
        if !payload.is_empty() {
            let end = t.seq.wrapping_add(payload.len() as u32);
            if t.seq == side.rcv {
                side.got.extend_from_slice(&payload);
                side.rcv = end;
            } else if (end.wrapping_sub(side.rcv) as i32) <= 0 {
                // an old retransmission: a real stack acks it again
            } else {
                side.out_of_order += 1;
            }
            reply_ack = true;
        }
        if t.flags & FIN != 0 && t.seq.wrapping_add(payload.len() as u32) == side.rcv {
            side.fin = true;
            side.rcv = side.rcv.wrapping_add(1);
            reply_ack = true;
        }
        if reply_ack {
            let a = tcp(side.me, side.peer, side.snd, side.rcv, ACK, &[]);
            self.send(port, a);
        }
    }

    fn run(&mut self) {
        let mut guard = 0;
        while let Some((port, mut frame)) = self.wire.pop_front() {
            guard += 1;
            assert!(guard < 100_000, "runaway conversation");
            self.now += 10_000;
            self.out.clear();
            let v = self
                .engine
                .on_frame(port, &mut frame, self.now, &mut self.out);
            let emits = std::mem::take(&mut self.out.emits);
            if let Verdict::Forward(p) = v {
                self.deliver(p, &frame);
            }
            for e in emits {
                self.deliver(e.side, &e.frame);
            }
        }
    }

    fn tick(&mut self, dt: u64) {
        self.now += dt;
        self.out.clear();
        self.engine.tick(self.now, &mut self.out);
        for e in std::mem::take(&mut self.out.emits) {
            self.deliver(e.side, &e.frame);
        }
        self.run();
    }

    /// The client sends `data` in segments of at most `seg` bytes.
    fn client_sends(&mut self, data: &[u8], seg: usize) {
        for chunk in data.chunks(seg) {
            let f = tcp(
                self.client.me,
                self.client.peer,
                self.client.snd,
                self.client.rcv,
                ACK | PSH,
                chunk,
            );
            self.client.snd += chunk.len() as u32;
            self.send(CLIENT_PORT, f);
        }
        self.run();
    }

    fn server_sends(&mut self, data: &[u8]) {
        let f = tcp(
            self.server.me,
            self.server.peer,
            self.server.snd,
            self.server.rcv,
            ACK | PSH,
            data,
        );
        self.server.snd += data.len() as u32;
        self.send(SERVER_PORT, f);
        self.run();
    }

    fn client_got(&self) -> String {
        String::from_utf8_lossy(&self.client.got).into_owned()
    }

    fn server_got(&self) -> String {
        String::from_utf8_lossy(&self.server.got).into_owned()
    }

    fn healthy(&self) {
        assert_eq!(
            self.client.out_of_order, 0,
            "client saw a seq it did not expect"
        );
        assert_eq!(
            self.server.out_of_order, 0,
            "server saw a seq it did not expect"
        );
        assert!(!self.client.rst && !self.server.rst, "no reset");
    }
}

const GET: &str = "GET /v1/ HTTP/1.1\r\nHost: deathstar\r\n\r\n";
const PUT: &str = "PUT /v1/exhaust-port HTTP/1.1\r\nHost: deathstar\r\n\r\n";
const OK: &str = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
const FORBIDDEN: &str = "HTTP/1.1 403 Forbidden\r\n";

#[test]
fn http_allowed_denied_allowed_on_one_connection() {
    for client in ["10.66.0.12", "fd66::12"] {
        let mut lab = Lab::new(client, 80, EngineConfig::default());
        lab.client_sends(GET.as_bytes(), 1500);
        assert_eq!(lab.server_got(), GET);
        lab.server_sends(OK.as_bytes());
        lab.client_sends(PUT.as_bytes(), 1500);
        assert_eq!(
            lab.server_got(),
            GET,
            "the denied request never reaches the server"
        );
        assert!(
            lab.client_got().ends_with("Access denied\r\n"),
            "{}",
            lab.client_got()
        );
        lab.client_sends(GET.as_bytes(), 1500);
        assert_eq!(lab.server_got(), format!("{GET}{GET}"));
        lab.server_sends(OK.as_bytes());
        let got = lab.client_got();
        let i403 = got.find(FORBIDDEN).expect("403");
        assert!(
            got.starts_with(OK) && got.ends_with(OK) && i403 == OK.len(),
            "{got}"
        );
        lab.healthy();
        let c = lab.engine.counters();
        assert_eq!((c.l7_requests_allowed, c.l7_requests_denied), (2, 1));
    }
}

#[test]
fn http_pipelined_denial_comes_between_the_replies() {
    let mut lab = Lab::new("10.66.0.11", 80, EngineConfig::default());
    lab.client_sends(format!("{GET}{PUT}{GET}").as_bytes(), 1500);
    assert_eq!(
        lab.server_got(),
        GET,
        "the third request waits for the denial to go out"
    );
    lab.server_sends(OK.as_bytes());
    assert_eq!(lab.server_got(), format!("{GET}{GET}"));
    lab.server_sends(OK.as_bytes());
    let got = lab.client_got();
    assert_eq!(got.find(FORBIDDEN), Some(OK.len()), "{got}");
    assert!(got.ends_with(OK));
    lab.healthy();
}

#[test]
fn http_denied_post_body_never_reaches_the_server() {
    let mut lab = Lab::new("10.66.0.11", 80, EngineConfig::default());
    let body = vec![b'x'; 1 << 20];
    let mut req = format!(
        "POST /v1/cargobay HTTP/1.1\r\nHost: deathstar\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(&body);
    lab.client_sends(&req, 1448);
    assert_eq!(lab.server.got.len(), 0, "zero bytes at the server");
    assert!(lab.client_got().starts_with(FORBIDDEN));
    // the connection is still usable
    lab.client_sends(
        b"POST /v1/request-landing HTTP/1.1\r\nHost: deathstar\r\nContent-Length: 4\r\n\r\nship",
        7,
    );
    assert!(
        lab.server_got().ends_with("\r\n\r\nship"),
        "{}",
        lab.server_got()
    );
    lab.server_sends(b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\nShip landed\n");
    assert!(lab.client_got().ends_with("Ship landed\n"));
    lab.healthy();
}

#[test]
fn http_header_rule_and_split_heads() {
    let mut lab = Lab::new("10.66.0.12", 80, EngineConfig::default());
    let force = "PUT /v1/exhaust-port HTTP/1.1\r\nHost: deathstar\r\nX-Has-Force: true\r\n\r\n";
    lab.client_sends(force.as_bytes(), 1);
    assert_eq!(lab.server_got(), force, "byte-by-byte head released whole");
    lab.healthy();
}

#[test]
fn lost_denial_is_retransmitted_until_acknowledged() {
    let mut lab = Lab::new("10.66.0.11", 80, EngineConfig::default());
    lab.lose_next_to = Some(CLIENT_PORT);
    lab.client_sends(PUT.as_bytes(), 1500);
    assert_eq!(lab.client.got.len(), 0);
    lab.tick(1_000_000_000);
    assert!(lab.client_got().starts_with(FORBIDDEN), "retransmitted");
    let n = lab.client.got.len();
    lab.tick(5_000_000_000);
    assert_eq!(lab.client.got.len(), n, "acknowledged: not sent again");
    lab.client_sends(GET.as_bytes(), 1500);
    assert_eq!(lab.server_got(), GET);
    lab.healthy();
}

#[test]
fn reset_deny_action_resets_both_sides() {
    let cfg = EngineConfig {
        deny_action: DenyAction::Reset,
        ..EngineConfig::default()
    };
    let mut lab = Lab::new("10.66.0.11", 80, cfg);
    lab.client_sends(PUT.as_bytes(), 1500);
    assert!(lab.client.rst && lab.server.rst);
    assert_eq!(lab.server.got.len(), 0);
}

#[test]
fn not_http_on_an_http_port_is_refused() {
    let mut lab = Lab::new("10.66.0.11", 80, EngineConfig::default());
    lab.client_sends(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 1500);
    assert_eq!(lab.server.got.len(), 0);
    assert!(
        lab.client.rst,
        "reset: nothing says where a next request would start"
    );
}

#[test]
fn memcached_text_pipelined_from_xwing() {
    let mut lab = Lab::new("10.66.0.12", 11211, EngineConfig::default());
    lab.client_sends(
        b"get xwing-coord\r\nget awing-coord\r\nget xwing-coord\r\n",
        1500,
    );
    assert_eq!(lab.server_got(), "get xwing-coord\r\n");
    let value = "VALUE xwing-coord 0 16\r\n8893.34,234.3290\r\nEND\r\n";
    lab.server_sends(value.as_bytes());
    assert_eq!(lab.server_got(), "get xwing-coord\r\nget xwing-coord\r\n");
    lab.server_sends(value.as_bytes());
    assert_eq!(
        lab.client_got(),
        format!("{value}CLIENT_ERROR access denied\r\n{value}")
    );
    lab.healthy();
}

#[test]
fn memcached_text_storage_denied_drops_the_data_block_and_noreply_is_silent() {
    let mut lab = Lab::new("10.66.0.13", 11211, EngineConfig::default());
    lab.client_sends(b"set awing-coord 0 1200 7\r\n0.0,0.0\r\n", 1500);
    assert_eq!(lab.server.got.len(), 0);
    assert_eq!(lab.client_got(), "CLIENT_ERROR access denied\r\n");
    lab.client_sends(b"set awing-coord 0 1200 7 noreply\r\n0.0,0.0\r\n", 5);
    assert_eq!(
        lab.client_got(),
        "CLIENT_ERROR access denied\r\n",
        "nothing for noreply"
    );
    lab.client_sends(b"get awing-coord\r\n", 1500);
    assert_eq!(lab.server_got(), "get awing-coord\r\n");
    lab.server_sends(b"END\r\n");
    assert!(lab.client_got().ends_with("END\r\n"));
    lab.healthy();
}

fn bin_req(opcode: u8, opaque: u32, key: &[u8], extras: &[u8], value: &[u8]) -> Vec<u8> {
    let mut v = vec![0x80, opcode];
    v.extend_from_slice(&(key.len() as u16).to_be_bytes());
    v.push(extras.len() as u8);
    v.extend_from_slice(&[0, 0, 0]);
    v.extend_from_slice(&((extras.len() + key.len() + value.len()) as u32).to_be_bytes());
    v.extend_from_slice(&opaque.to_be_bytes());
    v.extend_from_slice(&[0; 8]);
    v.extend_from_slice(extras);
    v.extend_from_slice(key);
    v.extend_from_slice(value);
    v
}

fn bin_resp(opcode: u8, opaque: u32, status: u16, extras: &[u8], value: &[u8]) -> Vec<u8> {
    let mut v = vec![0x81, opcode, 0, 0, extras.len() as u8, 0];
    v.extend_from_slice(&status.to_be_bytes());
    v.extend_from_slice(&((extras.len() + value.len()) as u32).to_be_bytes());
    v.extend_from_slice(&opaque.to_be_bytes());
    v.extend_from_slice(&[0; 8]);
    v.extend_from_slice(extras);
    v.extend_from_slice(value);
    v
}

#[test]
fn memcached_binary_get_denied_between_allowed_gets() {
    let mut lab = Lab::new("10.66.0.11", 11211, EngineConfig::default());
    let g1 = bin_req(0x00, 1, b"awing-coord", &[], &[]);
    lab.client_sends(&g1, 1500);
    assert_eq!(lab.server.got, g1);
    let hit = bin_resp(0x00, 1, 0, &[0, 0, 0, 0], b"4309.432,918.980");
    lab.server_sends(&hit);
    lab.client_sends(&bin_req(0x00, 7, b"xwing-coord", &[], &[]), 1500);
    let denial = bin_resp(0x00, 7, 0x0008, &[], b"access denied");
    assert_eq!(
        lab.client.got[hit.len()..],
        denial[..],
        "opcode and opaque copied, status 8"
    );
    let g3 = bin_req(0x00, 9, b"awing-coord", &[], &[]);
    lab.client_sends(&g3, 1500);
    assert_eq!(
        lab.server.got.len(),
        g1.len() + g3.len(),
        "the very next get goes through"
    );
    lab.server_sends(&bin_resp(0x00, 9, 0, &[0, 0, 0, 0], b"4309.432,918.980"));
    assert_eq!(lab.client.got.len(), 2 * hit.len() + denial.len());
    lab.healthy();
}

#[test]
fn memcached_binary_quiet_denial_is_silent() {
    let mut lab = Lab::new("10.66.0.13", 11211, EngineConfig::default());
    // setq (0x11) denied for the tracker: no reply; then a noop gets its reply in order
    lab.client_sends(&bin_req(0x11, 3, b"awing-coord", &[0; 8], b"0.0,0.0"), 1500);
    assert_eq!(lab.client.got.len(), 0);
    assert_eq!(lab.server.got.len(), 0);
    lab.healthy();
}

#[test]
fn out_of_order_client_segments_are_reassembled() {
    let mut lab = Lab::new("10.66.0.12", 80, EngineConfig::default());
    let req = GET.as_bytes();
    let (a, b) = req.split_at(10);
    let s = lab.client.snd;
    let f2 = tcp(
        lab.client.me,
        lab.client.peer,
        s + 10,
        lab.client.rcv,
        ACK | PSH,
        b,
    );
    let f1 = tcp(
        lab.client.me,
        lab.client.peer,
        s,
        lab.client.rcv,
        ACK | PSH,
        a,
    );
    lab.client.snd += req.len() as u32;
    lab.send(CLIENT_PORT, f2.clone());
    lab.send(CLIENT_PORT, f1.clone());
    lab.send(CLIENT_PORT, f1);
    lab.run();
    assert_eq!(lab.server_got(), GET);
    lab.healthy();
}

#[test]
fn fin_after_an_incomplete_head_does_not_pass_the_fragment() {
    let mut lab = Lab::new("10.66.0.12", 80, EngineConfig::default());
    lab.client_sends(b"PUT /v1/exhaust-po", 1500);
    let fin = tcp(
        lab.client.me,
        lab.client.peer,
        lab.client.snd,
        lab.client.rcv,
        FIN | ACK,
        &[],
    );
    lab.client.snd += 1;
    lab.send(CLIENT_PORT, fin);
    lab.run();
    assert_eq!(lab.server.got.len(), 0);
    assert!(lab.server.fin, "the close itself goes through");
}

#[test]
fn zero_window_probes_and_window_updates_pass_through() {
    let mut lab = Lab::new("10.66.0.12", 80, EngineConfig::default());
    // The server closes its window; the client probes one byte at a time.
    let mut zero = Vec::new();
    etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, 1])
        .ipv4([10, 66, 0, 2], [10, 66, 0, 12], 64)
        .tcp(80, 40_000, lab.server.snd, 0)
        .ack(lab.server.rcv)
        .write(&mut zero, &[])
        .unwrap();
    lab.send(SERVER_PORT, zero);
    lab.run();
    lab.client_sends(&GET.as_bytes()[..1], 1);
    lab.client_sends(&GET.as_bytes()[1..], 1500);
    assert_eq!(lab.server_got(), GET);
    lab.server_sends(OK.as_bytes());
    assert_eq!(lab.client_got(), OK);
    lab.healthy();
}

#[test]
fn rst_from_either_side_ends_the_flow_cleanly() {
    let mut lab = Lab::new("10.66.0.12", 80, EngineConfig::default());
    lab.client_sends(b"GET /v1/ HTT", 1500);
    let rst = tcp(
        lab.client.me,
        lab.client.peer,
        lab.client.snd,
        lab.client.rcv,
        0x04 | ACK,
        &[],
    );
    lab.send(CLIENT_PORT, rst);
    lab.run();
    assert!(lab.server.rst, "the RST reaches the server");
    assert_eq!(lab.server.got.len(), 0, "the partial head never does");
}

#[test]
fn a_policy_reload_applies_to_the_next_request_of_a_live_connection() {
    let mut lab = Lab::new("10.66.0.12", 80, EngineConfig::default());
    lab.client_sends(PUT.as_bytes(), 1500);
    assert!(lab.client_got().starts_with(FORBIDDEN));
    let eps = std::fs::read_to_string("policies/endpoints.yaml").unwrap();
    let open_port = std::fs::read_to_string("policies/sw-deathstar-http.yaml")
        .unwrap()
        .replace(
            "          headers:\n          - \"X-Has-Force: true\"\n",
            "",
        );
    let p = Policy::from_sources(&[
        ("endpoints.yaml".into(), eps),
        ("sw.yaml".into(), open_port),
    ])
    .unwrap();
    lab.engine.set_policy(Arc::new(p));
    lab.client_sends(PUT.as_bytes(), 1500);
    assert_eq!(
        lab.server_got(),
        PUT,
        "the same connection, judged by the new rules"
    );
    lab.healthy();
}
