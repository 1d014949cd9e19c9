//! Evasion: a hostile client (or someone spoofing either side) tries to get a
//! request past the enforcer that policy denies, or to break a connection it
//! is not part of. Each test replays frames built by the project's builders
//! through `Engine::process` and hands what the engine lets out to a model of
//! the receiving Linux stack (`Host`): checksums verified, the first SYN's
//! ISN kept, in-order bytes only, urgent bytes taken out of the stream,
//! RSTs accepted only at the exact next sequence number, frames whose TTL
//! would not survive one more router dropped. The assertions are on what
//! that host would read: the denied request never appears in it, and
//! allowed traffic still does.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use common::*;
use enforcer::config::EngineConfig;
use enforcer::engine::Engine;
use enforcer::packet::view::parse;
use enforcer::policy::Policy;
use enforcer::verdict::{Output, Verdict};

const CLIENT_SIDE: u8 = 0;
const SERVER_SIDE: u8 = 1;
const SERVER: &str = "10.66.0.2";
const AWING: &str = "10.66.0.11";
const GET: &[u8] = b"GET /v1/ HTTP/1.1\r\nHost: deathstar\r\n\r\n";
/// Denied: the exhaust port without the Force.
const PUT: &[u8] = b"PUT /v1/exhaust-port HTTP/1.1\r\nHost: deathstar\r\n\r\n";
const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
const MC_ALLOWED: &[u8] = b"get awing-coord\r\n";
const MC_DENIED: &[u8] = b"get xwing-coord\r\n";

fn policy() -> Arc<Policy> {
    Arc::new(Policy::load(std::path::Path::new("policies")).expect("shipped policies load"))
}

// ---------------------------------------------------------------- receivers

/// What a Linux TCP receiver makes of the frames it is handed.
#[derive(Default)]
struct Host {
    /// Sequence number of the peer's first byte (its SYN's ISN + 1).
    irs: Option<u32>,
    /// Next byte expected, offset from `irs`.
    next: u64,
    /// Bytes read, in order.
    read: Vec<u8>,
    ooo: BTreeMap<u64, Vec<u8>>,
    fin: bool,
    reset: bool,
    /// Frames this host threw away (bad checksum, TTL, ...).
    discarded: usize,
    /// Segments a SYN carried (never read: no TCP fast open).
    syn_payloads: usize,
}

fn csum_ok(frame: &[u8]) -> bool {
    use etherparse::{NetSlice, SlicedPacket, TransportSlice};
    let Ok(p) = SlicedPacket::from_ethernet(frame) else {
        return false;
    };
    let (Some(net), Some(TransportSlice::Tcp(t))) = (p.net, p.transport) else {
        return false;
    };
    let want = t.checksum();
    let hdr = t.to_header();
    let got = match net {
        NetSlice::Ipv4(ip) => {
            let h = ip.header();
            hdr.calc_checksum_ipv4_raw(h.source(), h.destination(), t.payload())
        }
        NetSlice::Ipv6(ip) => {
            let h = ip.header();
            hdr.calc_checksum_ipv6_raw(h.source(), h.destination(), t.payload())
        }
        _ => return false,
    };
    got.ok() == Some(want)
}

fn ttl(frame: &[u8]) -> u8 {
    match frame[14] >> 4 {
        4 => frame[14 + 8],
        _ => frame[14 + 7],
    }
}

impl Host {
    fn take(&mut self, frame: &[u8]) {
        let Ok(m) = parse(frame) else {
            self.discarded += 1;
            return;
        };
        let Some(t) = m.tcp().copied() else { return };
        // One router between the enforcer and the host.
        if !csum_ok(frame) || ttl(frame) <= 1 {
            self.discarded += 1;
            return;
        }
        let payload = m.payload(frame).to_vec();
        if t.flags & SYN != 0 {
            // Linux keeps the first ISN; a SYN's data is not read without a
            // fast-open cookie.
            if self.irs.is_none() {
                self.irs = Some(t.seq.wrapping_add(1));
            }
            if !payload.is_empty() {
                self.syn_payloads += 1;
            }
            return;
        }
        let Some(irs) = self.irs else { return };
        let rel = t.seq.wrapping_sub(irs) as i32 as i64;
        let s = self.next as i64 + (rel - self.next as i64) as i32 as i64;
        if t.flags & RST != 0 {
            // RFC 5961: only the exact next sequence number resets.
            if s == self.next as i64 {
                self.reset = true;
            }
            return;
        }
        if self.reset {
            return;
        }
        let mut data = payload;
        if t.flags & 0x20 != 0 {
            // Urgent data, not inline: the byte before the urgent pointer
            // leaves the stream.
            let up = u16::from_be_bytes([frame[m.l4_off + 18], frame[m.l4_off + 19]]) as usize;
            if up >= 1 && up <= data.len() {
                data.remove(up - 1);
            }
        }
        if s < 0 {
            return;
        }
        let s = s as u64;
        if !data.is_empty() {
            self.ooo.entry(s).or_insert(data.clone());
        }
        while let Some((&at, _)) = self.ooo.first_key_value() {
            if at > self.next {
                break;
            }
            let d = self.ooo.remove(&at).unwrap_or_default();
            let end = at + d.len() as u64;
            if end > self.next {
                self.read.extend_from_slice(&d[(self.next - at) as usize..]);
                self.next = end;
            }
        }
        if t.flags & FIN != 0 && s + data.len() as u64 == self.next {
            self.fin = true;
        }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.read).into_owned()
    }
}

// ---------------------------------------------------------------- the wire

/// The engine between a client and a server host model. Every frame the
/// engine lets out goes to the host on that side; the test scripts what the
/// endpoints send (no automatic replies).
struct Wire {
    engine: Engine,
    out: Output,
    now: u64,
    client: Host,
    server: Host,
    /// Frames the engine let out, per side.
    to_server: Vec<Vec<u8>>,
    to_client: Vec<Vec<u8>>,
}

impl Wire {
    fn new(cfg: EngineConfig) -> Wire {
        Wire {
            engine: Engine::new(policy(), cfg, 0),
            out: Output::default(),
            now: 1_000_000_000,
            client: Host::default(),
            server: Host::default(),
            to_server: Vec::new(),
            to_client: Vec::new(),
        }
    }

    fn deliver(&mut self, side: u8, frame: Vec<u8>) {
        if side == SERVER_SIDE {
            self.server.take(&frame);
            self.to_server.push(frame);
        } else {
            self.client.take(&frame);
            self.to_client.push(frame);
        }
    }

    /// A frame arriving on `side`; returns the engine's verdict.
    fn send(&mut self, side: u8, mut frame: Vec<u8>) -> Verdict {
        self.now += 1_000_000;
        self.out.clear();
        let v = self
            .engine
            .on_frame(side, &mut frame, self.now, &mut self.out);
        let emits = std::mem::take(&mut self.out.emits);
        if let Verdict::Forward(p) = v {
            self.deliver(p, frame);
        }
        for e in emits {
            self.deliver(e.side, e.frame);
        }
        v
    }

    fn from_client(&mut self, frame: Vec<u8>) -> Verdict {
        self.send(CLIENT_SIDE, frame)
    }

    fn from_server(&mut self, frame: Vec<u8>) -> Verdict {
        self.send(SERVER_SIDE, frame)
    }

    fn tick(&mut self, dt: u64) {
        self.now += dt;
        self.out.clear();
        self.engine.tick(self.now, &mut self.out);
        for e in std::mem::take(&mut self.out.emits) {
            self.deliver(e.side, e.frame);
        }
    }

    fn handshake(&mut self, c: &mut Conn) {
        for (i, f) in c.handshake().into_iter().enumerate() {
            let side = if i == 1 { SERVER_SIDE } else { CLIENT_SIDE };
            assert!(
                matches!(self.send(side, f), Verdict::Forward(_)),
                "handshake frame {i} passes"
            );
        }
    }

    fn server_read(&self) -> String {
        self.server.text()
    }

    fn dropped(&self, reason: &str) -> u64 {
        enforcer::counters::DropReason::ALL
            .iter()
            .find(|r| r.as_str() == reason)
            .map_or(0, |r| self.engine.counters().dropped(*r))
    }
}

fn http_conn() -> Conn {
    Conn::new(ep(AWING, 40_001), ep(SERVER, 80))
}

fn mc_conn() -> Conn {
    Conn::new(ep(AWING, 40_002), ep(SERVER, 11211))
}

/// The denied PUT must not be in what the server read.
fn assert_no_put(w: &Wire) {
    assert!(
        !w.server_read().contains("exhaust-port"),
        "the denied request reached the server: {:?}",
        w.server_read()
    );
}

// ---------------------------------------------------------------- frame edits

fn l4_off(frame: &[u8]) -> usize {
    parse(frame).expect("frame").l4_off
}

/// Recompute the TCP checksum after an edit.
fn refix(frame: &mut [u8]) {
    let m = parse(frame).expect("frame");
    enforcer::packet::build::fix_tcp_checksum(frame, &m);
}

fn corrupt_checksum(mut f: Vec<u8>) -> Vec<u8> {
    let o = l4_off(&f) + 16;
    f[o] ^= 0x5a;
    f
}

fn with_urgent(mut f: Vec<u8>, ptr: u16) -> Vec<u8> {
    let o = l4_off(&f);
    f[o + 13] |= 0x20;
    f[o + 18..o + 20].copy_from_slice(&ptr.to_be_bytes());
    refix(&mut f);
    f
}

fn with_ttl(mut f: Vec<u8>, ttl: u8) -> Vec<u8> {
    if f[14] >> 4 == 4 {
        f[14 + 8] = ttl;
        f[24] = 0;
        f[25] = 0;
        let mut s: u32 = 0;
        for c in f[14..34].chunks(2) {
            s += u32::from(u16::from_be_bytes([c[0], c[1]]));
        }
        while s > 0xffff {
            s = (s & 0xffff) + (s >> 16);
        }
        let c = !(s as u16);
        f[24..26].copy_from_slice(&c.to_be_bytes());
    } else {
        f[14 + 7] = ttl;
    }
    f
}

// ================================================================ flow pickup

#[test]
fn pickup_spoofed_server_segment_does_not_open_an_unjudged_flow() {
    let mut w = Wire::new(EngineConfig::default());
    let mut c = http_conn();
    // Before the client's SYN, a segment "from the server" sent from the
    // client's side, as if the connection were already open.
    let spoof = tcp(c.server, c.client, 777, c.cseq + 1, ACK, b"");
    w.from_client(spoof);
    w.handshake(&mut c);
    w.from_client(c.client_data(PUT));
    assert_no_put(&w);
    assert_eq!(
        w.engine.counters().l7_requests_denied,
        1,
        "the PUT was judged"
    );
    w.from_client(c.client_data(GET));
    assert_eq!(w.server_read(), String::from_utf8_lossy(GET));
}

#[test]
fn pickup_server_segment_on_the_server_side_is_not_adopted_as_l4() {
    // A server's segment of an L7 connection we have no state for (after a
    // restart, or after its entry expired) must not open the 4-tuple unjudged.
    let mut w = Wire::new(EngineConfig::default());
    let mut c = http_conn();
    c.cseq += 1;
    c.sseq += 1;
    let v = w.from_server(c.server_data(OK));
    assert!(matches!(v, Verdict::Drop(_)), "{v:?}");
    w.from_client(c.client_data(PUT));
    assert_no_put(&w);
    assert!(
        w.to_server.is_empty(),
        "nothing reaches the server mid-stream"
    );
}

#[test]
fn pickup_client_segment_mid_stream_on_an_l7_port_is_refused() {
    let mut w = Wire::new(EngineConfig::default());
    let mut c = http_conn();
    c.cseq += 1;
    c.sseq += 1;
    let v = w.from_client(c.client_data(PUT));
    assert!(matches!(v, Verdict::Drop(_)), "{v:?}");
    assert!(w.to_server.is_empty());
}

#[test]
fn pickup_spoof_from_the_wrong_side_does_not_open_a_denied_l4_port() {
    // Policy denies a-wing → server:8080. Server egress is open, so a
    // segment "from the server" to the client is allowed in its own
    // direction; sent from the clients' side it must not become the entry
    // that a-wing's own (denied) connection then rides on.
    let mut w = Wire::new(EngineConfig::default());
    let mut c = Conn::new(ep(AWING, 40_003), ep(SERVER, 8080));
    w.from_client(tcp(c.server, c.client, 777, c.cseq + 1, ACK, b""));
    let v = w.from_client(c.syn());
    assert!(matches!(v, Verdict::Drop(_)), "the SYN is judged: {v:?}");
    c.cseq += 1;
    c.sseq += 1;
    let v = w.from_client(c.client_data(b"hello"));
    assert!(matches!(v, Verdict::Drop(_)), "{v:?}");
    assert!(w.server.read.is_empty());
}

#[test]
fn pickup_udp_spoof_from_the_wrong_side_does_not_open_a_denied_port() {
    let mut w = Wire::new(EngineConfig::default());
    let (cl, sv) = (ep(AWING, 40_004), ep(SERVER, 5353));
    w.from_client(udp(sv, cl, b"spoof"));
    let v = w.from_client(udp(cl, sv, b"query"));
    assert!(matches!(v, Verdict::Drop(_)), "judged on its own: {v:?}");
}

#[test]
fn pickup_after_an_l7_flow_was_reset_does_not_readopt_it() {
    let mut cfg = EngineConfig::default();
    cfg.tcp_transitory_timeout_ns = 1_000_000_000;
    let mut w = Wire::new(cfg);
    let mut c = http_conn();
    w.handshake(&mut c);
    w.from_client(c.client_data(GET));
    w.from_server(c.server_data(OK));
    // A real RST from the client ends the connection (and the L7 state).
    w.from_client(tcp(c.client, c.server, c.cseq, c.sseq, RST | ACK, b""));
    w.tick(5_000_000_000);
    for _ in 0..3 {
        w.tick(1_000_000);
    }
    // The server's retransmission comes after the entry expired.
    let v = w.from_server(tcp(
        c.server,
        c.client,
        c.sseq - 2,
        c.cseq,
        ACK | PSH,
        b"ok",
    ));
    assert!(matches!(v, Verdict::Drop(_)), "{v:?}");
    let before = w.server.read.len();
    w.from_client(c.client_data(PUT));
    assert_eq!(w.server.read.len(), before);
    assert_no_put(&w);
}

// ================================================================ SYNs

#[test]
fn syn_second_isn_during_handshake_does_not_rebase_the_stream() {
    let mut w = Wire::new(EngineConfig::default());
    let mut c = http_conn();
    w.from_client(c.syn());
    // A second SYN with another ISN, placed so that the client's PUT, read
    // from the new ISN, would start at an allowed-looking offset.
    let other_isn = c.cseq.wrapping_add(5000);
    w.from_client(tcp(c.client, c.server, other_isn, 0, SYN, b""));
    w.from_server(c.syn_ack());
    c.cseq += 1;
    c.sseq += 1;
    w.from_client(tcp(c.client, c.server, c.cseq, c.sseq, ACK, b""));
    w.from_client(c.client_data(PUT));
    assert_no_put(&w);
    w.from_client(c.client_data(GET));
    assert_eq!(
        w.server_read(),
        String::from_utf8_lossy(GET),
        "allowed traffic still flows"
    );
    assert_eq!(w.engine.counters().l7_requests_denied, 1);
}

#[test]
fn syn_late_with_new_isn_does_not_rebase_the_stream() {
    for bad_checksum in [false, true] {
        let mut w = Wire::new(EngineConfig::default());
        let mut c = http_conn();
        w.handshake(&mut c);
        w.from_client(c.client_data(GET));
        w.from_server(c.server_data(OK));
        // A SYN with an ISN chosen so that, re-based on it, the PUT below
        // would look like the stream's first bytes.
        let isn = c.cseq.wrapping_sub(1);
        let syn = tcp(c.client, c.server, isn.wrapping_add(1000), 0, SYN, b"");
        w.from_client(if bad_checksum {
            corrupt_checksum(syn)
        } else {
            syn
        });
        w.from_client(c.client_data(PUT));
        assert_no_put(&w);
        w.from_server(c.server_data(OK));
        w.from_client(c.client_data(GET));
        assert_eq!(
            w.server_read(),
            format!(
                "{}{}",
                String::from_utf8_lossy(GET),
                String::from_utf8_lossy(GET)
            ),
            "bad checksum {bad_checksum}"
        );
    }
}

#[test]
fn syn_delayed_duplicate_does_not_stall_the_connection() {
    let mut w = Wire::new(EngineConfig::default());
    let mut c = http_conn();
    let syn = c.syn();
    w.handshake(&mut c);
    w.from_client(c.client_data(GET));
    w.from_server(c.server_data(OK));
    w.from_client(syn);
    w.from_client(c.client_data(GET));
    w.from_server(c.server_data(OK));
    assert_eq!(w.server.read, [GET, GET].concat());
    assert_eq!(w.client.read, [OK, OK].concat());
}

#[test]
fn syn_data_is_never_forwarded() {
    let mut w = Wire::new(EngineConfig::default());
    let mut c = http_conn();
    let v = w.from_client(tcp(c.client, c.server, c.cseq, 0, SYN, PUT));
    assert!(matches!(v, Verdict::Drop(_)), "{v:?}");
    assert!(w
        .to_server
        .iter()
        .all(|f| parse(f).unwrap().payload(f).is_empty()));
    // The plain SYN the client retransmits opens the connection.
    w.handshake(&mut c);
    w.from_client(c.client_data(GET));
    assert_eq!(w.server.read, GET);
    assert_eq!(w.server.syn_payloads, 0);
}

#[test]
fn syn_ack_with_data_or_for_another_isn_is_dropped() {
    let mut w = Wire::new(EngineConfig::default());
    let mut c = http_conn();
    w.from_client(c.syn());
    let v = w.from_server(tcp(c.server, c.client, c.sseq, c.cseq + 1, SYN | ACK, b"x"));
    assert!(matches!(v, Verdict::Drop(_)), "{v:?}");
    let v = w.from_server(tcp(c.server, c.client, c.sseq, c.cseq + 77, SYN | ACK, b""));
    assert!(matches!(v, Verdict::Drop(_)), "{v:?}");
    w.from_server(c.syn_ack());
    c.cseq += 1;
    c.sseq += 1;
    w.from_client(tcp(c.client, c.server, c.cseq, c.sseq, ACK, b""));
    w.from_client(c.client_data(GET));
    assert_eq!(w.server.read, GET);
}

#[test]
fn simultaneous_open_is_refused_on_l7_ports() {
    let mut w = Wire::new(EngineConfig::default());
    let c = http_conn();
    w.from_client(c.syn());
    // The "server" sends a bare SYN of its own.
    let v = w.from_server(tcp(c.server, c.client, c.sseq, 0, SYN, b""));
    assert!(matches!(v, Verdict::Drop(_)), "{v:?}");
}

#[test]
fn data_before_the_syn_ack_never_reaches_the_server() {
    let mut w = Wire::new(EngineConfig::default());
    let mut c = http_conn();
    w.from_client(c.syn());
    c.cseq += 1;
    let v = w.from_client(c.client_data(PUT));
    assert!(matches!(v, Verdict::Drop(_)), "{v:?}");
    assert!(w.server.read.is_empty());
}

// ================================================================ checksums

#[test]
fn bad_checksum_segments_change_nothing() {
    let mut w = Wire::new(EngineConfig::default());
    let mut c = http_conn();
    w.handshake(&mut c);
    // A benign request with a bad checksum at the offsets the PUT takes
    // next: judged, it would be "the bytes already decided" there.
    let seq = c.cseq;
    let bad = corrupt_checksum(tcp(c.client, c.server, seq, c.sseq, ACK | PSH, GET));
    let v = w.from_client(bad);
    assert!(matches!(v, Verdict::Drop(_)), "{v:?}");
    assert_eq!(w.engine.counters().l7_requests_allowed, 0, "never judged");
    w.from_client(c.client_data(PUT));
    assert_no_put(&w);
    // A bad-checksum RST and FIN leave the connection alone.
    w.from_client(corrupt_checksum(tcp(
        c.client,
        c.server,
        c.cseq,
        c.sseq,
        RST | ACK,
        b"",
    )));
    w.from_server(corrupt_checksum(tcp(
        c.server,
        c.client,
        c.sseq,
        c.cseq,
        FIN | ACK,
        b"",
    )));
    w.from_client(c.client_data(GET));
    assert_eq!(w.server.read, GET);
    w.from_server(c.server_data(OK));
    assert!(w.client.text().ends_with(std::str::from_utf8(OK).unwrap()));
    assert!(!w.client.fin && !w.server.reset);
}

#[test]
fn bad_checksum_syn_opens_nothing() {
    let mut w = Wire::new(EngineConfig::default());
    let c = Conn::new(ep(AWING, 40_010), ep(SERVER, 80));
    let v = w.from_client(corrupt_checksum(c.syn()));
    assert!(matches!(v, Verdict::Drop(_)), "{v:?}");
    assert_eq!(w.engine.flow_count(), 0);
}

// ================================================================ RSTs (RFC 5961)

fn rst_conn() -> (Wire, Conn) {
    let mut w = Wire::new(EngineConfig::default());
    let mut c = http_conn();
    w.handshake(&mut c);
    w.from_client(c.client_data(GET));
    w.from_server(c.server_data(OK));
    (w, c)
}

fn still_works(w: &mut Wire, c: &mut Conn) {
    let before = w.server.read.len();
    w.from_client(c.client_data(GET));
    assert_eq!(
        &w.server.read[before..],
        GET,
        "allowed request still passes"
    );
    w.from_server(c.server_data(OK));
    assert!(w.client.read.ends_with(OK));
}

#[test]
fn rst_out_of_window_from_either_side_is_ignored() {
    let (mut w, mut c) = rst_conn();
    let v = w.from_client(tcp(
        c.client,
        c.server,
        c.cseq.wrapping_sub(100_000),
        0,
        RST,
        b"",
    ));
    assert!(matches!(v, Verdict::Drop(_)), "{v:?}");
    let v = w.from_server(tcp(
        c.server,
        c.client,
        c.sseq.wrapping_add(1 << 31),
        0,
        RST,
        b"",
    ));
    assert!(matches!(v, Verdict::Drop(_)), "{v:?}");
    still_works(&mut w, &mut c);
    w.from_client(c.client_data(PUT));
    assert_no_put(&w);
}

#[test]
fn rst_in_window_but_not_exact_passes_without_ending_enforcement() {
    let (mut w, mut c) = rst_conn();
    // Ahead of the next byte: the server answers it with a challenge ACK.
    let v = w.from_client(tcp(c.client, c.server, c.cseq + 500, 0, RST, b""));
    assert!(matches!(v, Verdict::Forward(_)), "{v:?}");
    assert!(!w.server.reset, "the host ignores it too");
    still_works(&mut w, &mut c);
    w.from_client(c.client_data(PUT));
    assert_no_put(&w);
    assert_eq!(w.engine.counters().l7_requests_denied, 1, "still judged");
}

#[test]
fn rst_exact_ends_the_connection_on_both() {
    let (mut w, c) = rst_conn();
    let v = w.from_client(tcp(c.client, c.server, c.cseq, 0, RST, b""));
    assert!(matches!(v, Verdict::Forward(_)), "{v:?}");
    assert!(w.server.reset);
    let mut c = c;
    let v = w.from_client(c.client_data(PUT));
    assert!(matches!(v, Verdict::Drop(_)), "{v:?}");
    assert_no_put(&w);
}

#[test]
fn rst_during_the_handshake_must_match() {
    let mut w = Wire::new(EngineConfig::default());
    let mut c = http_conn();
    w.from_client(c.syn());
    // Not acknowledging the SYN: ignored (RFC 793 SYN-SENT).
    let v = w.from_server(tcp(c.server, c.client, 0, c.cseq + 99, RST | ACK, b""));
    assert!(matches!(v, Verdict::Drop(_)), "{v:?}");
    let v = w.from_client(tcp(c.client, c.server, c.cseq + 99_999, 0, RST, b""));
    assert!(matches!(v, Verdict::Drop(_)), "{v:?}");
    w.from_server(c.syn_ack());
    c.cseq += 1;
    c.sseq += 1;
    w.from_client(tcp(c.client, c.server, c.cseq, c.sseq, ACK, b""));
    still_works(&mut w, &mut c);
}

#[test]
fn rst_answering_the_syn_passes() {
    let mut w = Wire::new(EngineConfig::default());
    let c = http_conn();
    w.from_client(c.syn());
    let v = w.from_server(tcp(c.server, c.client, 0, c.cseq + 1, RST | ACK, b""));
    assert!(matches!(v, Verdict::Forward(_)), "{v:?}");
}

// ================================================================ bytes read differently

#[test]
fn urgent_data_is_read_in_band() {
    // With URG, Linux takes the byte before the urgent pointer out of the
    // stream: "XPUT ..." judged as one (invalid or denied) thing would be
    // read as "PUT ...". The enforcer clears URG, so the host reads what was
    // judged.
    let mut w = Wire::new(EngineConfig::default());
    let mut c = http_conn();
    w.handshake(&mut c);
    let mut req = b"GET /v1/ HTTP/1.1\r\nHost: deathstar\r\nX-Pad: ".to_vec();
    let urg_at = req.len();
    req.extend_from_slice(b"Z\r\n\r\n");
    let f = with_urgent(c.client_data(&req), urg_at as u16 + 1);
    w.from_client(f);
    assert_eq!(w.server.read, req, "the host read exactly the judged bytes");
    for f in &w.to_server {
        let m = parse(f).unwrap();
        assert_eq!(f[m.l4_off + 13] & 0x20, 0, "no URG towards the server");
    }
}

#[test]
fn segments_without_ack_are_dropped() {
    let mut w = Wire::new(EngineConfig::default());
    let mut c = http_conn();
    w.handshake(&mut c);
    let f = tcp(c.client, c.server, c.cseq, 0, PSH, GET);
    let v = w.from_client(f);
    assert!(matches!(v, Verdict::Drop(_)), "{v:?}");
    assert_eq!(w.engine.counters().l7_requests_allowed, 0);
    w.from_client(c.client_data(PUT));
    assert_no_put(&w);
}

#[test]
fn low_ttl_benign_copy_then_denied_retransmission() {
    // The benign bytes die before the server (TTL); the retransmission at
    // the same offsets carries the denied request. The server gets the
    // judged copy, never the retransmission's bytes.
    let mut w = Wire::new(EngineConfig::default());
    let mut c = http_conn();
    w.handshake(&mut c);
    let benign = b"GET /v1/ HTTP/1.1\r\nHost: deathstar\r\nX: 1234567\r\n\r\n";
    let evil = b"PUT /v1/exhaust-port HTTP/1.1\r\nHost: deathstar\r\n\r\n";
    assert_eq!(benign.len(), evil.len());
    let seq = c.cseq;
    w.from_client(with_ttl(c.client_data(benign), 1));
    assert!(w.server.read.is_empty(), "died on the way");
    w.from_client(tcp(c.client, c.server, seq, c.sseq, ACK | PSH, evil));
    assert_no_put(&w);
    assert_eq!(w.server.read, benign);
}

// ================================================================ exhaustion

/// A denial waiting for the client's ack: the only thing a tick works on.
#[test]
fn exhaustion_ticks_work_only_on_due_timers() {
    let mut w = Wire::new(EngineConfig::default());
    // Thousands of half-open L7 connections: no timer each.
    for i in 0..3000u32 {
        let c = Conn::new(ep(AWING, 20_000 + i as u16), ep(SERVER, 80));
        w.from_client(c.syn());
    }
    assert_eq!(w.engine.timers_pending(), 0);
    let mut c = http_conn();
    w.handshake(&mut c);
    w.from_client(c.client_data(PUT));
    assert_eq!(
        w.engine.timers_pending(),
        1,
        "the injected denial's retransmission"
    );
    let data_frames = |w: &Wire| {
        w.to_client
            .iter()
            .filter(|f| !parse(f).unwrap().payload(f).is_empty())
            .count()
    };
    let sent = data_frames(&w);
    w.tick(w.engine.config().inject_rto_ns + 1);
    assert_eq!(data_frames(&w), sent + 1, "resent once its time came");
    assert!(w.client.text().contains("403"), "{}", w.client.text());
    // The client acknowledges it: nothing left to do.
    let ack = tcp(
        c.client,
        c.server,
        c.cseq,
        c.sseq + w.client.read.len() as u32,
        ACK,
        b"",
    );
    w.from_client(ack);
    w.tick(w.engine.config().inject_rto_ns * 4);
    assert_eq!(w.engine.timers_pending(), 0);
    assert_eq!(data_frames(&w), sent + 1, "nothing resent after the ack");
}

#[test]
fn exhaustion_head_one_byte_per_segment_is_parsed_per_line() {
    let mut w = Wire::new(EngineConfig::default());
    let mut c = http_conn();
    w.handshake(&mut c);
    let mut req = b"GET /v1/ HTTP/1.1\r\nHost: deathstar\r\nX-Long: ".to_vec();
    req.extend(std::iter::repeat_n(b'a', 16_000));
    req.extend_from_slice(b"\r\n\r\n");
    for &b in &req {
        w.from_client(c.client_data(&[b]));
    }
    assert_eq!(w.server.read, req, "the request went through whole");
    let parses = w.engine.counters().l7_head_parses;
    assert!(parses <= 8, "{parses} parses for a head of four lines");
}

#[test]
fn exhaustion_one_byte_out_of_order_segments_stay_within_the_budget() {
    let cfg = EngineConfig::default();
    let budget = cfg.max_held_bytes;
    let mut w = Wire::new(cfg);
    let mut c = http_conn();
    w.handshake(&mut c);
    let base = c.cseq;
    // Every other byte of a 40 KB window, one byte per segment, the first
    // byte missing.
    for k in (1..40_000u32).step_by(2) {
        w.from_client(tcp(c.client, c.server, base + k, c.sseq, ACK, b"a"));
    }
    let held = w.engine.held_bytes();
    assert!(held <= budget + 4096, "held {held} > budget {budget}");
    assert!(
        w.dropped("l7-hold-overflow") > 0,
        "segments beyond the holes are refused"
    );
    assert!(w.server.read.is_empty());
    // The client's retransmission of the whole request fills the hole.
    w.from_client(c.client_data(GET));
    assert_eq!(w.server.read, GET);
    assert!(w.engine.held_bytes() <= 4096, "the ring is freed");
}

#[test]
fn exhaustion_out_of_order_reassembly_still_works() {
    let mut w = Wire::new(EngineConfig::default());
    let mut c = http_conn();
    w.handshake(&mut c);
    let base = c.cseq;
    let req = [GET, GET].concat();
    // Pieces 3, 1, 2, 0 of four.
    let q = req.len() / 4;
    for &k in &[3usize, 1, 2, 0] {
        let end = if k == 3 { req.len() } else { (k + 1) * q };
        w.from_client(tcp(
            c.client,
            c.server,
            base + (k * q) as u32,
            c.sseq,
            ACK | PSH,
            &req[k * q..end],
        ));
    }
    assert_eq!(w.server.read, req, "both allowed requests, in order");
    c.cseq += req.len() as u32;
    w.from_server(c.server_data(OK));
    w.from_server(c.server_data(OK));
    assert_eq!(w.client.read, [OK, OK].concat());
}
