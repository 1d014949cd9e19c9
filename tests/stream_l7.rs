//! Per-request L7 enforcement through the engine, end to end in memory:
//! a client and a server, each a small TCP receiver that accepts only
//! in-order bytes, talk through `Engine::on_frame` with the shipped
//! policies. The invariant checked everywhere: the server reads exactly the
//! allowed requests, the client reads every reply and denial in order, and
//! both sides' sequence numbers stay consistent (the receivers would
//! reject anything else).

mod kit;

use std::sync::Arc;

use enforcer::config::{DenyAction, EngineConfig};
use enforcer::engine::Engine;
use enforcer::policy::Policy;
use kit::faults::{Faults, Faulty};
use kit::pair::{Middle, Pair, CLIENT, SERVER};
use kit::{bin_req, bin_resp, ep, ACK, FIN, RST};

/// A connection from `client` (an address of `policies/endpoints.yaml`) to
/// the p server on `server_port`, through the engine with the shipped
/// policies; the endpoints acknowledge what they receive.
fn conn(client: &str, server_port: u16, cfg: EngineConfig) -> Pair<Engine> {
    conn_with(|e| e, client, server_port, cfg)
}

/// The same, with the engine inside `wrap` (faults, say).
fn conn_with<M: Middle>(
    wrap: impl FnOnce(Engine) -> M,
    client: &str,
    server_port: u16,
    cfg: EngineConfig,
) -> Pair<M> {
    let server = if client.contains(':') {
        "fd66::2"
    } else {
        "10.66.0.2"
    };
    let policy = Policy::load(std::path::Path::new("policies")).expect("shipped policies load");
    let engine = Engine::new(Arc::new(policy), kit::pair::kernel_path_cfg(cfg), 0);
    let mut p = Pair::new(
        wrap(engine),
        ep(client, 40_000),
        ep(server, server_port),
        (1000, 9_000_000),
    );
    p.now = 1_000_000;
    p.step_ns = 10_000;
    p.auto_ack = true;
    p.open();
    p
}

const GET: &str = "GET /v1/ HTTP/1.1\r\nHost: deathstar\r\n\r\n";
const PUT: &str = "PUT /v1/exhaust-port HTTP/1.1\r\nHost: deathstar\r\n\r\n";
const OK: &str = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
const FORBIDDEN: &str = "HTTP/1.1 403 Forbidden\r\n";

#[test]
fn http_allowed_denied_allowed_on_one_connection() {
    for client in ["10.66.0.12", "fd66::12"] {
        let mut p = conn(client, 80, EngineConfig::default());
        p.client_sends(GET.as_bytes(), 1500);
        assert_eq!(p.server.got(), GET);
        p.server_sends(OK.as_bytes());
        p.client_sends(PUT.as_bytes(), 1500);
        assert_eq!(
            p.server.got(),
            GET,
            "the denied request never reaches the server"
        );
        assert!(
            p.client.got().ends_with("Access denied\r\n"),
            "{}",
            p.client.got()
        );
        p.client_sends(GET.as_bytes(), 1500);
        assert_eq!(p.server.got(), format!("{GET}{GET}"));
        p.server_sends(OK.as_bytes());
        let got = p.client.got();
        let i403 = got.find(FORBIDDEN).expect("403");
        assert!(
            got.starts_with(OK) && got.ends_with(OK) && i403 == OK.len(),
            "{got}"
        );
        p.healthy();
        let c = p.mid.counters();
        assert_eq!((c.l7_requests_allowed, c.l7_requests_denied), (2, 1));
    }
}

/// Duplicated and split segments into the engine, both ways (the kit's
/// faults around it): each side still reads its bytes once, in order.
#[test]
fn duplicated_and_split_segments_change_nothing() {
    for seed in 0..16 {
        let faulty = |e| Faulty::new(e, Faults::new(0, 30, 0, 40), seed);
        let mut p = conn_with(faulty, "10.66.0.11", 80, EngineConfig::default());
        p.client_sends(format!("{GET}{PUT}{GET}").as_bytes(), 16);
        p.server_sends(OK.as_bytes());
        p.server_sends(OK.as_bytes());
        assert_eq!(p.server.got(), format!("{GET}{GET}"), "seed {seed}");
        let got = p.client.got();
        assert!(
            got.starts_with(OK) && got.ends_with(OK),
            "seed {seed}: {got}"
        );
        assert_eq!(got.find(FORBIDDEN), Some(OK.len()), "seed {seed}: {got}");
        p.healthy();
        let into_engine = p.mid.inner.counters().frames_in;
        assert!(
            into_engine > p.verdicts.len() as u64,
            "seed {seed}: no fault happened"
        );
    }
}

#[test]
fn http_pipelined_denial_comes_between_the_replies() {
    let mut p = conn("10.66.0.11", 80, EngineConfig::default());
    p.client_sends(format!("{GET}{PUT}{GET}").as_bytes(), 1500);
    assert_eq!(
        p.server.got(),
        GET,
        "the third request waits for the denial to go out"
    );
    p.server_sends(OK.as_bytes());
    assert_eq!(p.server.got(), format!("{GET}{GET}"));
    p.server_sends(OK.as_bytes());
    let got = p.client.got();
    assert_eq!(got.find(FORBIDDEN), Some(OK.len()), "{got}");
    assert!(got.ends_with(OK));
    p.healthy();
}

#[test]
fn http_denied_post_body_never_reaches_the_server() {
    let mut p = conn("10.66.0.11", 80, EngineConfig::default());
    let body = vec![b'x'; 1 << 20];
    let mut req = format!(
        "POST /v1/cargobay HTTP/1.1\r\nHost: deathstar\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(&body);
    p.client_sends(&req, 1448);
    assert_eq!(p.server.data.len(), 0, "zero bytes at the server");
    assert!(p.client.got().starts_with(FORBIDDEN));
    // the connection is still usable
    p.client_sends(
        b"POST /v1/request-landing HTTP/1.1\r\nHost: deathstar\r\nContent-Length: 4\r\n\r\nship",
        7,
    );
    assert!(
        p.server.got().ends_with("\r\n\r\nship"),
        "{}",
        p.server.got()
    );
    p.server_sends(b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\nShip landed\n");
    assert!(p.client.got().ends_with("Ship landed\n"));
    p.healthy();
}

#[test]
fn http_header_rule_and_split_heads() {
    let mut p = conn("10.66.0.12", 80, EngineConfig::default());
    let force = "PUT /v1/exhaust-port HTTP/1.1\r\nHost: deathstar\r\nX-Has-Force: true\r\n\r\n";
    p.client_sends(force.as_bytes(), 1);
    assert_eq!(p.server.got(), force, "byte-by-byte head released whole");
    p.healthy();
}

#[test]
fn lost_denial_is_retransmitted_until_acknowledged() {
    let mut p = conn("10.66.0.11", 80, EngineConfig::default());
    p.lose_next_to = Some(CLIENT);
    p.client_sends(PUT.as_bytes(), 1500);
    assert_eq!(p.client.data.len(), 0);
    p.tick(1_000_000_000);
    p.run();
    assert!(p.client.got().starts_with(FORBIDDEN), "retransmitted");
    let n = p.client.data.len();
    p.tick(5_000_000_000);
    p.run();
    assert_eq!(p.client.data.len(), n, "acknowledged: not sent again");
    p.client_sends(GET.as_bytes(), 1500);
    assert_eq!(p.server.got(), GET);
    p.healthy();
}

#[test]
fn reset_deny_action_resets_both_sides() {
    let cfg = EngineConfig {
        deny_action: DenyAction::Reset,
        ..EngineConfig::default()
    };
    let mut p = conn("10.66.0.11", 80, cfg);
    p.client_sends(PUT.as_bytes(), 1500);
    assert!(p.client.rst && p.server.rst);
    assert_eq!(p.server.data.len(), 0);
}

#[test]
fn not_http_on_an_http_port_is_refused() {
    let mut p = conn("10.66.0.11", 80, EngineConfig::default());
    p.client_sends(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 1500);
    assert_eq!(p.server.data.len(), 0);
    assert!(
        p.client.rst,
        "reset: nothing says where a next request would start"
    );
}

#[test]
fn memcached_text_pipelined_from_xwing() {
    let mut p = conn("10.66.0.12", 11211, EngineConfig::default());
    p.client_sends(
        b"get xwing-coord\r\nget awing-coord\r\nget xwing-coord\r\n",
        1500,
    );
    assert_eq!(p.server.got(), "get xwing-coord\r\n");
    let value = "VALUE xwing-coord 0 16\r\n8893.34,234.3290\r\nEND\r\n";
    p.server_sends(value.as_bytes());
    assert_eq!(p.server.got(), "get xwing-coord\r\nget xwing-coord\r\n");
    p.server_sends(value.as_bytes());
    assert_eq!(
        p.client.got(),
        format!("{value}CLIENT_ERROR access denied\r\n{value}")
    );
    p.healthy();
}

#[test]
fn memcached_text_storage_denied_drops_the_data_block_and_noreply_is_silent() {
    let mut p = conn("10.66.0.13", 11211, EngineConfig::default());
    p.client_sends(b"set awing-coord 0 1200 7\r\n0.0,0.0\r\n", 1500);
    assert_eq!(p.server.data.len(), 0);
    assert_eq!(p.client.got(), "CLIENT_ERROR access denied\r\n");
    p.client_sends(b"set awing-coord 0 1200 7 noreply\r\n0.0,0.0\r\n", 5);
    assert_eq!(
        p.client.got(),
        "CLIENT_ERROR access denied\r\n",
        "nothing for noreply"
    );
    p.client_sends(b"get awing-coord\r\n", 1500);
    assert_eq!(p.server.got(), "get awing-coord\r\n");
    p.server_sends(b"END\r\n");
    assert!(p.client.got().ends_with("END\r\n"));
    p.healthy();
}

#[test]
fn memcached_binary_get_denied_between_allowed_gets() {
    let mut p = conn("10.66.0.11", 11211, EngineConfig::default());
    let g1 = bin_req(0x00, 1, b"awing-coord", &[], &[]);
    p.client_sends(&g1, 1500);
    assert_eq!(p.server.data, g1);
    let hit = bin_resp(0x00, 1, 0, &[0, 0, 0, 0], b"4309.432,918.980");
    p.server_sends(&hit);
    p.client_sends(&bin_req(0x00, 7, b"xwing-coord", &[], &[]), 1500);
    let denial = bin_resp(0x00, 7, 0x0008, &[], b"access denied");
    assert_eq!(
        p.client.data[hit.len()..],
        denial[..],
        "opcode and opaque copied, status 8"
    );
    let g3 = bin_req(0x00, 9, b"awing-coord", &[], &[]);
    p.client_sends(&g3, 1500);
    assert_eq!(
        p.server.data.len(),
        g1.len() + g3.len(),
        "the very next get goes through"
    );
    p.server_sends(&bin_resp(0x00, 9, 0, &[0, 0, 0, 0], b"4309.432,918.980"));
    assert_eq!(p.client.data.len(), 2 * hit.len() + denial.len());
    p.healthy();
}

#[test]
fn memcached_binary_quiet_denial_is_silent() {
    let mut p = conn("10.66.0.13", 11211, EngineConfig::default());
    // setq (0x11) denied for the tracker: no reply; then a noop gets its reply in order
    p.client_sends(&bin_req(0x11, 3, b"awing-coord", &[0; 8], b"0.0,0.0"), 1500);
    assert_eq!(p.client.data.len(), 0);
    assert_eq!(p.server.data.len(), 0);
    p.healthy();
}

#[test]
fn out_of_order_client_segments_are_reassembled() {
    let mut p = conn("10.66.0.12", 80, EngineConfig::default());
    let req = GET.as_bytes();
    let (a, b) = req.split_at(10);
    let f1 = p.client.data_segment(a);
    let f2 = p.client.data_segment(b);
    p.input(CLIENT, f2.clone());
    p.input(CLIENT, f1.clone());
    p.input(CLIENT, f1);
    p.run();
    assert_eq!(p.server.got(), GET);
    p.healthy();
}

#[test]
fn fin_after_an_incomplete_head_does_not_pass_the_fragment() {
    let mut p = conn("10.66.0.12", 80, EngineConfig::default());
    p.client_sends(b"PUT /v1/exhaust-po", 1500);
    let fin = p.client.segment(FIN | ACK, &[]);
    p.input(CLIENT, fin);
    p.run();
    assert_eq!(p.server.data.len(), 0);
    assert!(p.server.fin, "the close itself goes through");
}

#[test]
fn zero_window_probes_and_window_updates_pass_through() {
    let mut p = conn("10.66.0.12", 80, EngineConfig::default());
    // The server closes its window; the client probes one byte at a time.
    let mut zero = Vec::new();
    etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, 1])
        .ipv4([10, 66, 0, 2], [10, 66, 0, 12], 64)
        .tcp(80, 40_000, p.server.snd_nxt, 0)
        .ack(p.server.rcv_nxt)
        .write(&mut zero, &[])
        .unwrap();
    p.input(SERVER, zero);
    p.run();
    p.client_sends(&GET.as_bytes()[..1], 1);
    p.client_sends(&GET.as_bytes()[1..], 1500);
    assert_eq!(p.server.got(), GET);
    p.server_sends(OK.as_bytes());
    assert_eq!(p.client.got(), OK);
    p.healthy();
}

#[test]
fn rst_from_either_side_ends_the_flow_cleanly() {
    let mut p = conn("10.66.0.12", 80, EngineConfig::default());
    p.client_sends(b"GET /v1/ HTT", 1500);
    let rst = p.client.segment(RST | ACK, &[]);
    p.input(CLIENT, rst);
    p.run();
    assert!(p.server.rst, "the RST reaches the server");
    assert_eq!(p.server.data.len(), 0, "the partial head never does");
}

#[test]
fn a_policy_reload_applies_to_the_next_request_of_a_live_connection() {
    let mut p = conn("10.66.0.12", 80, EngineConfig::default());
    p.client_sends(PUT.as_bytes(), 1500);
    assert!(p.client.got().starts_with(FORBIDDEN));
    let eps = std::fs::read_to_string("policies/endpoints.yaml").unwrap();
    let open_port = std::fs::read_to_string("policies/sw-deathstar-http.yaml")
        .unwrap()
        .replace(
            "          headers:\n          - \"X-Has-Force: true\"\n",
            "",
        );
    let reloaded = Policy::from_sources(&[
        ("endpoints.yaml".into(), eps),
        ("sw.yaml".into(), open_port),
    ])
    .unwrap();
    p.mid.set_policy(Arc::new(reloaded));
    p.client_sends(PUT.as_bytes(), 1500);
    assert_eq!(
        p.server.got(),
        PUT,
        "the same connection, judged by the new rules"
    );
    p.healthy();
}

/// A pure ACK from the memcached server of everything it read, offering
/// `win` bytes (the kit's handshake has no window scaling).
fn server_offers(p: &Pair<Engine>, client: [u8; 4], win: u16) -> Vec<u8> {
    let mut f = Vec::new();
    etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, 1])
        .ipv4([10, 66, 0, 2], client, 64)
        .tcp(11211, 40_000, p.server.snd_nxt, win)
        .ack(p.server.rcv_nxt)
        .write(&mut f, &[])
        .unwrap();
    f
}

/// Sequence number one past the last payload byte of a frame.
fn seq_end(f: &[u8]) -> u32 {
    let m = enforcer::packet::view::parse(f).expect("a frame the engine built");
    let t = m.tcp().expect("TCP");
    t.seq.wrapping_add(m.payload(f).len() as u32)
}

#[test]
fn renumbered_value_past_the_server_window_waits_for_it() {
    // The lab's stall (a 2 MB memcached set on a connection a denial had
    // renumbered): the client was offered an edge beyond the server's
    // window, every one of its segments was rebuilt and forwarded at once,
    // and the server dropped what lay past its window, silently. The
    // client then resent one segment per timeout. Bytes past the server's
    // window must wait for it in the enforcer, which has them anyway.
    let mut p = conn("10.66.0.12", 11211, EngineConfig::default());
    p.client_sends(b"get awing-coord\r\n", 1500);
    assert_eq!(p.client.got(), "CLIENT_ERROR access denied\r\n");
    // A head held across segments: acknowledged by the enforcer, which
    // offers the hold's edge, past the server's.
    p.client_sends(b"get xwing-", 1500);
    p.client_sends(b"coord\r\n", 1500);
    p.server_sends(b"END\r\n");
    // The server reads slowly: its window closes to 4 KB.
    let f = server_offers(&p, [10, 66, 0, 12], 4096);
    p.input(SERVER, f);
    let to_client = p.to_client.last().expect("the ACK goes on").clone();
    let m = enforcer::packet::view::parse(&to_client).unwrap();
    let offered = m
        .tcp()
        .unwrap()
        .ack
        .wrapping_add(u32::from(m.tcp().unwrap().window));
    p.deliver();
    let edge = p.server.rcv_nxt.wrapping_add(4096);

    let mut set = b"set xwing-coord 0 0 50000\r\n".to_vec();
    set.extend(std::iter::repeat_n(b'v', 50_000));
    set.extend(b"\r\n");
    let end = p.client.snd_nxt.wrapping_add(set.len() as u32);
    assert!(
        (offered.wrapping_sub(end) as i32) >= 0,
        "the client stays within the window it was offered"
    );
    for chunk in set.chunks(1448) {
        p.client_send(chunk);
    }
    // What reaches the server past its window is dropped there (as Linux
    // does, without a count); the kit's client never retransmits.
    p.to_server
        .retain(|f| (edge.wrapping_sub(seq_end(f)) as i32) >= 0);
    p.run();
    let mut want = b"get xwing-coord\r\n".to_vec();
    want.extend(&set);
    assert!(p.server.data == want, "the server read the whole value");
    p.assert_healthy();
    p.healthy();
}

/// A range lives as long as its flow: published for the rest of an allowed
/// value, honoured for a segment inside it, and withdrawn when the engine
/// forgets the idle flow (its stream never sees that).
#[test]
fn a_forgotten_flow_takes_its_range_with_it() {
    let cfg = EngineConfig {
        kernel_path: true,
        kernel_path_min: 512,
        tcp_established_timeout_ns: 5_000_000_000,
        ..EngineConfig::default()
    };
    let mut p = conn("10.66.0.12", 11211, cfg);
    p.shortcut = Some(kit::pair::Shortcut::new(100, 1));
    let mut set = b"set xwing-coord 0 0 4000\r\n".to_vec();
    set.extend(vec![b'x'; 1000]);
    assert_eq!(
        p.client_says(&set),
        enforcer::verdict::Verdict::Forward(SERVER)
    );
    let sc = p.shortcut.as_ref().expect("shortcut");
    assert_eq!(sc.len(), 1, "the rest of the value is a range");
    assert_eq!(p.mid.counters().l7_ranges, 1);
    let frames_in = p.mid.counters().frames_in;
    p.client_says(&[b'y'; 1000]);
    assert_eq!(p.shortcut.as_ref().unwrap().taken, 1);
    assert_eq!(
        p.mid.counters().frames_in,
        frames_in,
        "not through the engine"
    );
    let mut want = set.clone();
    want.extend([b'y'; 1000]);
    assert_eq!(p.server.data, want, "the server got every byte");
    p.tick(60_000_000_000);
    p.tick(1_000_000_000);
    assert_eq!(p.mid.flow_count(), 0, "the idle flow expired");
    assert_eq!(
        p.shortcut.as_ref().unwrap().len(),
        0,
        "its range went with it"
    );
}

/// The reply side's accounting ahead: once the rest of a reply body is a
/// range, the stream counts it as passed, so the server segment after the
/// range (the body's last byte and `END`), arriving when every segment
/// inside took the kernel path, is in order for it and goes on; the reply
/// order stays right for a denial pipelined after it.
#[test]
fn the_reply_after_a_bypassed_body_is_in_order() {
    let cfg = EngineConfig {
        kernel_path: true,
        kernel_path_min: 512,
        ..EngineConfig::default()
    };
    let mut p = conn("10.66.0.12", 11211, cfg);
    p.shortcut = Some(kit::pair::Shortcut::new(100, 1));
    assert_eq!(
        p.client_says(b"get xwing-coord\r\n"),
        enforcer::verdict::Verdict::Forward(SERVER)
    );
    let mut head = b"VALUE xwing-coord 0 4000\r\n".to_vec();
    head.extend([b'a'; 1000]);
    assert_eq!(
        p.server_says(&head),
        enforcer::verdict::Verdict::Forward(CLIENT)
    );
    assert_eq!(p.shortcut.as_ref().unwrap().len(), 1, "the rest is a range");
    let frames_in = p.mid.counters().frames_in;
    p.server_says(&[b'b'; 1500]);
    p.server_says(&[b'c'; 1400]);
    assert_eq!(p.shortcut.as_ref().unwrap().taken, 2);
    assert_eq!(
        p.mid.counters().frames_in,
        frames_in,
        "not through the engine"
    );
    // The last 100 bytes, CRLF and END: past the range, so through the
    // stream, which must take it as the next bytes of the reply.
    let mut tail = vec![b'd'; 100];
    tail.extend(b"\r\nEND\r\n");
    assert_eq!(
        p.server_says(&tail),
        enforcer::verdict::Verdict::Forward(CLIENT)
    );
    // A denied request after it is answered by us, in its turn.
    assert_eq!(
        p.client_says(b"get awing-coord\r\n"),
        enforcer::verdict::Verdict::Consumed
    );
    let mut want = head.clone();
    want.extend([b'b'; 1500]);
    want.extend([b'c'; 1400]);
    want.extend(&tail);
    want.extend(b"CLIENT_ERROR access denied\r\n");
    assert_eq!(
        String::from_utf8_lossy(&p.client.data),
        String::from_utf8_lossy(&want)
    );
    p.run();
    p.assert_healthy();
}

/// The ack and window of a frame, and the right edge they make.
fn edge_of(f: &[u8]) -> (u32, u16, u32) {
    let t = *enforcer::packet::view::parse(f)
        .expect("a frame")
        .tcp()
        .expect("tcp");
    (t.ack, t.window, t.ack.wrapping_add(u32::from(t.window)))
}

fn payload_len(f: &[u8]) -> usize {
    let m = enforcer::packet::view::parse(f).expect("a frame");
    m.payload_end - m.payload_off
}

/// The client acknowledges everything it has: the ack and window the
/// server gets for it, and their edge.
fn client_ack(p: &mut Pair<Engine>) -> (u32, u16, u32) {
    let f = p.client.ack();
    p.input(CLIENT, f);
    let e = edge_of(p.to_server.last().expect("the ACK, forwarded"));
    p.deliver();
    e
}

/// The head of a 400 000-byte set and its first 1 000 bytes: the rest
/// becomes a range.
fn client_starts_a_large_set(p: &mut Pair<Engine>) {
    let mut set = b"set xwing-coord 0 0 400000\r\n".to_vec();
    set.extend([b'x'; 1000]);
    p.client_send(&set);
    p.deliver();
    assert_eq!(p.shortcut.as_ref().unwrap().len(), 1, "a range");
}

/// The server acknowledges everything it has: the ack and window the
/// client gets for it, and their edge.
fn server_ack(p: &mut Pair<Engine>) -> (u32, u16, u32) {
    let f = p.server.ack();
    p.input(SERVER, f);
    let e = edge_of(p.to_client.last().expect("the ACK, forwarded"));
    p.deliver();
    e
}

/// The server sends up to the held `edge` (room for at most `most`
/// bytes), the client acknowledging as it goes: each of its ACKs offers
/// that same edge. The window fields of those ACKs.
fn server_fills_held_edge(p: &mut Pair<Engine>, edge: u32, most: usize) -> Vec<u16> {
    let mut fields = Vec::new();
    loop {
        let room = edge.wrapping_sub(p.server.snd_nxt) as usize;
        assert!(
            room > 0 && room <= most,
            "the server has room, at most {most}"
        );
        let n = room.min(1448);
        p.server_send(&vec![b'b'; n]);
        if n == room {
            return fields;
        }
        p.deliver();
        if room - n > 3 * 1448 {
            let (_, w, e) = client_ack(p);
            assert_eq!(e, edge, "held at the edge offered");
            fields.push(w);
        }
    }
}

/// Drain, then go live (docs/stream.md): covered client segments that
/// still reach the engine (the shell took none of them; on the lab, its
/// fence was shut) hold the client's right edge where it was, so that the
/// client sends only what it was already allowed. Once the engine saw
/// every byte up to that edge, a window update tells the client of its new
/// edge at once (no waiting for the server's next ACK), and the server's
/// acks move it again. Two such holds in a row with nothing taking the
/// kernel path in between, and the edge moves as without holds.
#[test]
fn covered_client_segments_through_the_engine_hold_its_edge_until_drained() {
    let cfg = EngineConfig {
        kernel_path: true,
        kernel_path_min: 512,
        ..EngineConfig::default()
    };
    let mut p = conn("10.66.0.12", 11211, cfg);
    p.auto_ack = false;
    // Honours nothing: every covered segment reaches the engine.
    p.shortcut = Some(kit::pair::Shortcut::new(0, 1));
    client_starts_a_large_set(&mut p);
    // The server acknowledges: the client's edge is its ack plus the window.
    let (_, _, e0) = server_ack(&mut p);
    // Covered segments through the engine: the edge stays at e0 however far
    // the server acknowledges, until the client sent everything up to it
    // (the server acknowledges the last few only later, as a receiver that
    // delays its ACK: the hold ends without waiting for it).
    let mut edge = e0;
    for round in 0..2 {
        loop {
            let room = edge.wrapping_sub(p.client.snd_nxt) as usize;
            assert!(room > 0 && room < 1 << 20, "the client has room");
            let n = room.min(1448);
            p.client_send(&vec![b'y'; n]);
            if n == room {
                break;
            }
            p.deliver();
            if room - n > 3 * 1448 {
                let (_, _, e) = server_ack(&mut p);
                assert_eq!(e, edge, "round {round}: held at the edge offered");
            }
        }
        assert_eq!(p.mid.counters().l7_range_holds, round + 1);
        // Every byte up to the edge came through the engine: a window
        // update (no payload, no ack the client lacks) moves the edge.
        let last = p.to_client.last().expect("a window update");
        assert_eq!(payload_len(last), 0);
        let (ack, _, e) = edge_of(last);
        assert!((p.client.snd_nxt.wrapping_sub(ack) as i32) > 0);
        assert!(
            (e.wrapping_sub(edge) as i32) > 0,
            "round {round}: the edge moved on"
        );
        assert_eq!(p.mid.counters().l7_window_updates, round + 1);
        edge = e;
        p.deliver();
    }
    // Two holds in a row and nothing took the kernel path: no more holds,
    // the server's acks move the edge.
    for _ in 0..5 {
        p.client_send(&[b'y'; 1448]);
        p.deliver();
        let (_, _, e) = server_ack(&mut p);
        assert!((e.wrapping_sub(edge) as i32) > 0, "the edge moves");
        edge = e;
    }
    assert_eq!(p.mid.counters().l7_range_holds, 2);
    // Whatever the holds did, every byte arrived in order.
    assert_eq!(p.server.out_of_order, 0);
    p.auto_ack = true;
    let left = 400_000 - (p.server.data.len() - 28);
    p.client_sends(&vec![b'z'; left], 1448);
    p.client_sends(b"\r\n", 1448);
    assert!(p.server.data.ends_with(b"z\r\n"));
    p.assert_healthy();
}

/// The client's edge with the kernel path on, as the server's: while a
/// client range is live, the range's end plus 16 KiB within the server's
/// own window (not `max_held_bytes` past the server's ack: the range's
/// bytes are not kept), so that the client never waits on the server's
/// ACKs through a worker; between requests 16 KiB past the server's ack,
/// so that a large set's first segments barely queue behind the worker
/// before its range is written (docs/stream.md, "The client's edge").
#[test]
fn the_client_edge_is_small_between_requests_and_opens_with_a_range() {
    let cfg = EngineConfig {
        kernel_path: true,
        kernel_path_min: 512,
        max_held_bytes: 32 * 1024,
        ..EngineConfig::default()
    };
    let mut p = conn("10.66.0.12", 11211, cfg);
    p.auto_ack = false;
    p.shortcut = Some(kit::pair::Shortcut::new(0, 1));
    client_starts_a_large_set(&mut p);
    let (_, w, _) = server_ack(&mut p);
    assert_eq!(w, 64240, "the server's own window, not 32 KiB past its ack");
    p.auto_ack = true;
    p.client_sends(&vec![b'y'; 399_000], 1448);
    p.client_sends(b"\r\n", 1448);
    p.server_send(b"STORED\r\n");
    p.run();
    assert!(p.client.data.ends_with(b"STORED\r\n"));
    p.auto_ack = false;
    p.client_send(b"get xwing-coord\r\n");
    p.deliver();
    let (_, w, _) = server_ack(&mut p);
    assert_eq!(usize::from(w), 16 * 1024, "between requests");
    p.auto_ack = true;
    p.server_send(b"END\r\n");
    p.run();
    assert_eq!(p.server.out_of_order, 0);
    p.assert_healthy();
}

/// The same for a reply body: covered server segments through the engine
/// hold the server's edge (the client's window towards the server, put
/// on the client's ACKs as the field that keeps the edge) until the engine
/// saw every byte up to it; then a window update goes to the server.
#[test]
fn covered_server_segments_through_the_engine_hold_its_edge_until_drained() {
    let cfg = EngineConfig {
        kernel_path: true,
        kernel_path_min: 512,
        ..EngineConfig::default()
    };
    let mut p = conn("10.66.0.12", 11211, cfg);
    p.auto_ack = false;
    p.shortcut = Some(kit::pair::Shortcut::new(0, 1));
    p.client_send(b"get xwing-coord\r\n");
    p.deliver();
    server_starts_a_large_value(&mut p);
    let (_, w0, edge) = client_ack(&mut p);
    assert_eq!(w0, 64240, "the client's own window, before any hold");
    let fields = server_fills_held_edge(&mut p, edge, 1 << 20);
    assert!(!fields.is_empty());
    assert!(
        fields.iter().all(|&w| w < 64240),
        "by a smaller field than the client's"
    );
    assert_eq!(p.mid.counters().l7_range_holds, 1);
    let last = p.to_server.last().expect("a window update");
    assert_eq!(payload_len(last), 0);
    let (_, w, e) = edge_of(last);
    assert_eq!(w, 64240, "the client's window again");
    assert!((e.wrapping_sub(edge) as i32) > 0, "the edge moved on");
    assert_eq!(p.mid.counters().l7_window_updates, 1);
    p.deliver();
    let (_, w, _) = client_ack(&mut p);
    assert_eq!(w, 64240);
    assert_eq!(p.client.out_of_order, 0);
    server_ends_the_value(&mut p, 400_000, b'c');
}

/// The head of a 400 000-byte value and its first 1 000 bytes: the rest
/// becomes a range.
fn server_starts_a_large_value(p: &mut Pair<Engine>) {
    let mut head = b"VALUE xwing-coord 0 400000\r\n".to_vec();
    head.extend([b'a'; 1000]);
    p.server_send(&head);
    p.deliver();
    assert_eq!(p.shortcut.as_ref().unwrap().len(), 1, "a range");
}

/// The rest of a value of `len` bytes behind a 28-byte `VALUE` line, and
/// `END`, with the client acknowledging on its own: all of it arrives.
fn server_ends_the_value(p: &mut Pair<Engine>, len: usize, byte: u8) {
    p.auto_ack = true;
    let left = len - (p.client.data.len() - 28);
    let mut rest = vec![byte; left];
    rest.extend(b"\r\nEND\r\n");
    for chunk in rest.chunks(1448) {
        p.server_send(chunk);
    }
    p.run();
    assert!(p
        .client
        .data
        .ends_with(&[byte, b'\r', b'\n', b'E', b'N', b'D', b'\r', b'\n']));
    p.assert_healthy();
}

/// The server's edge with the kernel path on (docs/stream.md, "The
/// server's edge, capped"), however large the client's window: between
/// replies 16 KiB past the client's ack, so that a large reply queues at
/// most that much behind the worker before its range goes live; while a
/// reply range is published, the range's end plus that, so that the server
/// never waits for a client ACK (which comes through a worker) to go on;
/// in a reply body without a range, `max_held_bytes` past the ack, so that
/// a worker passing it is never left idle. Never back.
#[test]
fn the_server_edge_is_small_between_replies_and_opens_with_a_range() {
    let small = 16 * 1024;
    let big = 32 * 1024;
    let cfg = EngineConfig {
        kernel_path: true,
        kernel_path_min: 512,
        max_held_bytes: big,
        ..EngineConfig::default()
    };
    let mut p = conn("10.66.0.12", 11211, cfg);
    p.auto_ack = false;
    p.shortcut = Some(kit::pair::Shortcut::new(0, 1));
    p.client_send(b"get xwing-coord\r\n");
    let (_, w, _) = edge_of(p.to_server.last().expect("the request"));
    assert_eq!(
        usize::from(w),
        small,
        "the small cap, not the client's 64240"
    );
    p.deliver();
    let start = p.server.snd_nxt;
    server_starts_a_large_value(&mut p);
    // The range covers the value's rest but its last byte: the server may
    // send all of it and 16 KiB more, so here the client's own window (the
    // kit's 64240, unscaled) is the bound.
    let (ack, w, _) = client_ack(&mut p);
    assert_eq!(w, 64240);
    let range_end = start.wrapping_add(28 + 400_000 + 2 - 1);
    assert!((range_end.wrapping_sub(ack) as i32) > 64240);
    server_ends_the_value(&mut p, 400_000, b'd');
    assert_eq!(p.client.out_of_order, 0);
    // A value too small for a range: in its body, the larger bound.
    p.auto_ack = false;
    let (_, _, before) = client_ack(&mut p);
    p.client_send(b"get xwing-coord\r\n");
    p.deliver();
    let mut head = b"VALUE xwing-coord 0 300\r\n".to_vec();
    head.extend([b'e'; 100]);
    p.server_send(&head);
    p.deliver();
    assert_eq!(p.mid.counters().l7_ranges, 1, "no second range");
    let (ack, w, e) = client_ack(&mut p);
    assert_eq!(usize::from(w), big);
    assert!((e.wrapping_sub(before) as i32) >= 0, "never back");
    assert_eq!(e, ack.wrapping_add(big as u32));
    let mut rest = vec![b'e'; 200];
    rest.extend(b"\r\nEND\r\n");
    p.server_send(&rest);
    p.deliver();
    let (_, _, after) = client_ack(&mut p);
    assert!((after.wrapping_sub(e) as i32) >= 0, "never back");
    assert!(p.client.data.ends_with(b"eee\r\nEND\r\n"));
    p.assert_healthy();
}
