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
use enforcer::engine::{Engine, EngineConfig, Output, Verdict};
use enforcer::packet::view::parse;
use enforcer::policy::Policy;

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
            .process(side, &mut frame, self.now, &mut self.out);
        let emits = std::mem::take(&mut self.out.emits);
        if let Verdict::Forward(p) = v {
            self.deliver(p, frame);
        }
        for e in emits {
            self.deliver(e.port, e.frame);
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
            self.deliver(e.port, e.frame);
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
        enforcer::engine::DropReason::ALL
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
