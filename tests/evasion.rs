//! Evasion: a hostile client (or someone spoofing either side) tries to get a
//! request past the enforcer that policy denies, or to break a connection it
//! is not part of. Each test replays frames built by the project's builders
//! through `Engine::on_frame` and hands what the engine lets out to a model of
//! the receiving Linux stack (`Host`): checksums verified, the first SYN's
//! ISN kept, in-order bytes only, urgent bytes taken out of the stream,
//! RSTs accepted only at the exact next sequence number, frames whose TTL
//! would not survive one more router dropped. The assertions are on what
//! that host would read: the denied request never appears in it, and
//! allowed traffic still does. The last test writes captures of each class
//! and runs them through the `enforcer replay` binary as well.

mod kit;

use std::collections::BTreeMap;
use std::sync::Arc;

use enforcer::config::EngineConfig;
use enforcer::engine::Engine;
use enforcer::packet::view::parse;
use enforcer::policy::Policy;
use enforcer::verdict::{Output, Verdict};
use kit::tcp::Conn;
use kit::*;

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

/// One server (`app`) open to one client (the a-wing's address) on `port`,
/// with `rules` (YAML under the port, at its indentation; empty for an L4
/// port): a policy for what the shipped ones do not have.
fn one_port_policy(app: &str, port: u16, rules: &str) -> Arc<Policy> {
    let yaml = kit::policy::one_server_yaml(app, &[SERVER], &[AWING], &[(port, "TCP")], rules);
    kit::policy::compile(&format!("{app}.yaml"), &yaml)
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
    /// Honours published ranges (`KIT_KERNEL_PATH`).
    shortcut: Option<kit::pair::Shortcut>,
}

impl Wire {
    fn new(cfg: EngineConfig) -> Wire {
        Wire {
            engine: Engine::new(policy(), kit::pair::kernel_path_cfg(cfg), 0),
            shortcut: kit::pair::Shortcut::from_env(7),
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
        if let Some(sc) = self.shortcut.as_mut() {
            if sc.take(side, &mut frame) {
                self.deliver(side ^ 1, frame);
                return Verdict::Forward(side ^ 1);
            }
        }
        let v = self
            .engine
            .on_frame(side, &mut frame, self.now, &mut self.out);
        if let Some(sc) = self.shortcut.as_mut() {
            sc.apply(&mut self.out);
        }
        let emits = std::mem::take(&mut self.out.emits);
        if let Verdict::Forward(p) = v {
            self.deliver(p, frame);
        }
        for e in emits {
            self.deliver(e.side, e.frame);
        }
        v
    }

    fn client_sends(&mut self, frame: Vec<u8>) -> Verdict {
        self.send(CLIENT_SIDE, frame)
    }

    fn server_sends(&mut self, frame: Vec<u8>) -> Verdict {
        self.send(SERVER_SIDE, frame)
    }

    fn tick(&mut self, dt: u64) {
        self.now += dt;
        self.out.clear();
        self.engine.tick(self.now, &mut self.out);
        if let Some(sc) = self.shortcut.as_mut() {
            sc.apply(&mut self.out);
        }
        for e in std::mem::take(&mut self.out.emits) {
            self.deliver(e.side, e.frame);
        }
    }

    /// `bytes` from the client of `c`, in segments of `seg` bytes.
    fn client_sends_in_pieces(&mut self, c: &mut Conn, bytes: &[u8], seg: usize) {
        for piece in bytes.chunks(seg) {
            self.client_sends(c.client_data(piece));
        }
    }

    /// The client of `c` acknowledges everything this wire's client read
    /// (`c` being the only connection that got anything).
    fn client_acks_all_it_read(&mut self, c: &Conn) -> Verdict {
        let ack = c.to_server(
            c.client.snd_nxt,
            c.server.snd_nxt + self.client.read.len() as u32,
            ACK,
            b"",
        );
        self.client_sends(ack)
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

/// A wire with the shipped policies and `c`'s handshake through it.
fn connected(mut c: Conn) -> (Wire, Conn) {
    let mut w = Wire::new(EngineConfig::default());
    w.handshake(&mut c);
    (w, c)
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
    let spoof = c.to_client(777, c.client.snd_nxt + 1, ACK, b"");
    w.client_sends(spoof);
    w.handshake(&mut c);
    w.client_sends(c.client_data(PUT));
    assert_no_put(&w);
    assert_eq!(
        w.engine.counters().l7_requests_denied,
        1,
        "the PUT was judged"
    );
    w.client_sends(c.client_data(GET));
    assert_eq!(w.server_read(), String::from_utf8_lossy(GET));
}

#[test]
fn pickup_server_segment_on_the_server_side_is_not_adopted_as_l4() {
    // A server's segment of an L7 connection we have no state for (after a
    // restart, or after its entry expired) must not open the 4-tuple unjudged.
    let mut w = Wire::new(EngineConfig::default());
    let mut c = http_conn();
    c.client.snd_nxt += 1;
    c.server.snd_nxt += 1;
    let v = w.server_sends(c.server_data(OK));
    assert!(matches!(v, Verdict::Drop(_)), "{v:?}");
    w.client_sends(c.client_data(PUT));
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
    c.client.snd_nxt += 1;
    c.server.snd_nxt += 1;
    let v = w.client_sends(c.client_data(PUT));
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
    w.client_sends(c.to_client(777, c.client.snd_nxt + 1, ACK, b""));
    let v = w.client_sends(c.syn());
    assert!(matches!(v, Verdict::Drop(_)), "the SYN is judged: {v:?}");
    assert_eq!(
        w.engine.counters().flows_created,
        1,
        "only the spoof's entry"
    );
    c.client.snd_nxt += 1;
    c.server.snd_nxt += 1;
    let v = w.client_sends(c.client_data(b"hello"));
    assert!(matches!(v, Verdict::Drop(_)), "{v:?}");
    assert!(w.server.read.is_empty());
}

#[test]
fn pickup_udp_spoof_from_the_wrong_side_does_not_open_a_denied_port() {
    let mut w = Wire::new(EngineConfig::default());
    let (cl, sv) = (ep(AWING, 40_004), ep(SERVER, 5353));
    w.client_sends(udp(sv, cl, b"spoof"));
    let v = w.client_sends(udp(cl, sv, b"query"));
    assert!(matches!(v, Verdict::Drop(_)), "judged on its own: {v:?}");
}

#[test]
fn pickup_after_an_l7_flow_was_reset_does_not_readopt_it() {
    let mut w = Wire::new(EngineConfig {
        tcp_transitory_timeout_ns: 1_000_000_000,
        ..EngineConfig::default()
    });
    let mut c = http_conn();
    w.handshake(&mut c);
    w.client_sends(c.client_data(GET));
    w.server_sends(c.server_data(OK));
    // A real RST from the client ends the connection (and the L7 state).
    w.client_sends(c.to_server(c.client.snd_nxt, c.server.snd_nxt, RST | ACK, b""));
    w.tick(5_000_000_000);
    for _ in 0..3 {
        w.tick(1_000_000);
    }
    // The server's retransmission comes after the entry expired.
    let v = w.server_sends(c.to_client(c.server.snd_nxt - 2, c.client.snd_nxt, ACK | PSH, b"ok"));
    assert!(matches!(v, Verdict::Drop(_)), "{v:?}");
    let before = w.server.read.len();
    w.client_sends(c.client_data(PUT));
    assert_eq!(w.server.read.len(), before);
    assert_no_put(&w);
}

// ================================================================ SYNs

#[test]
fn syn_second_isn_during_handshake_does_not_rebase_the_stream() {
    let mut w = Wire::new(EngineConfig::default());
    let mut c = http_conn();
    w.client_sends(c.syn());
    // A second SYN with another ISN, placed so that the client's PUT, read
    // from the new ISN, would start at an allowed-looking offset.
    let other_isn = c.client.snd_nxt.wrapping_add(5000);
    w.client_sends(c.to_server(other_isn, 0, SYN, b""));
    w.server_sends(c.syn_ack());
    c.client.snd_nxt += 1;
    c.server.snd_nxt += 1;
    w.client_sends(c.to_server(c.client.snd_nxt, c.server.snd_nxt, ACK, b""));
    w.client_sends(c.client_data(PUT));
    assert_no_put(&w);
    w.client_sends(c.client_data(GET));
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
        let (mut w, mut c) = connected(http_conn());
        w.client_sends(c.client_data(GET));
        w.server_sends(c.server_data(OK));
        // A SYN with an ISN chosen so that, re-based on it, the PUT below
        // would look like the stream's first bytes.
        let isn = c.client.snd_nxt.wrapping_sub(1);
        let syn = c.to_server(isn.wrapping_add(1000), 0, SYN, b"");
        w.client_sends(if bad_checksum {
            corrupt_checksum(syn)
        } else {
            syn
        });
        w.client_sends(c.client_data(PUT));
        assert_no_put(&w);
        w.server_sends(c.server_data(OK));
        w.client_sends(c.client_data(GET));
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
    w.client_sends(c.client_data(GET));
    w.server_sends(c.server_data(OK));
    w.client_sends(syn);
    w.client_sends(c.client_data(GET));
    w.server_sends(c.server_data(OK));
    assert_eq!(w.server.read, [GET, GET].concat());
    assert_eq!(w.client.read, [OK, OK].concat());
}

#[test]
fn syn_data_is_never_forwarded() {
    let mut w = Wire::new(EngineConfig::default());
    let mut c = http_conn();
    let v = w.client_sends(c.to_server(c.client.snd_nxt, 0, SYN, PUT));
    assert!(matches!(v, Verdict::Drop(_)), "{v:?}");
    assert!(w
        .to_server
        .iter()
        .all(|f| parse(f).unwrap().payload(f).is_empty()));
    // The plain SYN the client retransmits opens the connection.
    w.handshake(&mut c);
    w.client_sends(c.client_data(GET));
    assert_eq!(w.server.read, GET);
    assert_eq!(w.server.syn_payloads, 0);
}

#[test]
fn syn_ack_with_data_or_for_another_isn_is_dropped() {
    let mut w = Wire::new(EngineConfig::default());
    let mut c = http_conn();
    w.client_sends(c.syn());
    let v = w.server_sends(c.to_client(c.server.snd_nxt, c.client.snd_nxt + 1, SYN | ACK, b"x"));
    assert!(matches!(v, Verdict::Drop(_)), "{v:?}");
    let v = w.server_sends(c.to_client(c.server.snd_nxt, c.client.snd_nxt + 77, SYN | ACK, b""));
    assert!(matches!(v, Verdict::Drop(_)), "{v:?}");
    w.server_sends(c.syn_ack());
    c.client.snd_nxt += 1;
    c.server.snd_nxt += 1;
    w.client_sends(c.to_server(c.client.snd_nxt, c.server.snd_nxt, ACK, b""));
    w.client_sends(c.client_data(GET));
    assert_eq!(w.server.read, GET);
}

#[test]
fn simultaneous_open_is_refused_on_l7_ports() {
    let mut w = Wire::new(EngineConfig::default());
    let c = http_conn();
    w.client_sends(c.syn());
    // The "server" sends a bare SYN of its own.
    let v = w.server_sends(c.to_client(c.server.snd_nxt, 0, SYN, b""));
    assert!(matches!(v, Verdict::Drop(_)), "{v:?}");
}

#[test]
fn data_before_the_syn_ack_never_reaches_the_server() {
    let mut w = Wire::new(EngineConfig::default());
    let mut c = http_conn();
    w.client_sends(c.syn());
    c.client.snd_nxt += 1;
    let v = w.client_sends(c.client_data(PUT));
    assert!(matches!(v, Verdict::Drop(_)), "{v:?}");
    assert!(w.server.read.is_empty());
}

// ================================================================ checksums

#[test]
fn bad_checksum_segments_change_nothing() {
    let (mut w, mut c) = connected(http_conn());
    // A benign request with a bad checksum at the offsets the PUT takes
    // next: judged, it would be "the bytes already decided" there.
    let seq = c.client.snd_nxt;
    let bad = corrupt_checksum(c.to_server(seq, c.server.snd_nxt, ACK | PSH, GET));
    let v = w.client_sends(bad);
    assert!(matches!(v, Verdict::Drop(_)), "{v:?}");
    assert_eq!(w.dropped("tcp-bad-checksum"), 1);
    assert_eq!(w.engine.counters().l7_requests_allowed, 0, "never judged");
    w.client_sends(c.client_data(PUT));
    assert_no_put(&w);
    // A bad-checksum RST and FIN leave the connection alone.
    w.client_sends(corrupt_checksum(c.to_server(
        c.client.snd_nxt,
        c.server.snd_nxt,
        RST | ACK,
        b"",
    )));
    w.server_sends(corrupt_checksum(c.to_client(
        c.server.snd_nxt,
        c.client.snd_nxt,
        FIN | ACK,
        b"",
    )));
    w.client_sends(c.client_data(GET));
    assert_eq!(w.server.read, GET);
    w.server_sends(c.server_data(OK));
    assert!(w.client.text().ends_with(std::str::from_utf8(OK).unwrap()));
    assert!(!w.client.fin && !w.server.reset);
}

#[test]
fn bad_checksum_syn_opens_nothing() {
    let mut w = Wire::new(EngineConfig::default());
    let c = Conn::new(ep(AWING, 40_010), ep(SERVER, 80));
    let v = w.client_sends(corrupt_checksum(c.syn()));
    assert!(matches!(v, Verdict::Drop(_)), "{v:?}");
    assert_eq!(w.engine.flow_count(), 0);
}

// ================================================================ RSTs (RFC 5961)

fn rst_conn() -> (Wire, Conn) {
    let (mut w, mut c) = connected(http_conn());
    w.client_sends(c.client_data(GET));
    w.server_sends(c.server_data(OK));
    (w, c)
}

fn still_works(w: &mut Wire, c: &mut Conn) {
    let before = w.server.read.len();
    w.client_sends(c.client_data(GET));
    assert_eq!(
        &w.server.read[before..],
        GET,
        "allowed request still passes"
    );
    w.server_sends(c.server_data(OK));
    assert!(w.client.read.ends_with(OK));
}

#[test]
fn rst_out_of_window_from_either_side_is_ignored() {
    let (mut w, mut c) = rst_conn();
    let v = w.client_sends(c.to_server(c.client.snd_nxt.wrapping_sub(100_000), 0, RST, b""));
    assert!(matches!(v, Verdict::Drop(_)), "{v:?}");
    let v = w.server_sends(c.to_client(c.server.snd_nxt.wrapping_add(1 << 31), 0, RST, b""));
    assert!(matches!(v, Verdict::Drop(_)), "{v:?}");
    still_works(&mut w, &mut c);
    w.client_sends(c.client_data(PUT));
    assert_no_put(&w);
}

#[test]
fn rst_in_window_but_not_exact_passes_without_ending_enforcement() {
    let (mut w, mut c) = rst_conn();
    // Ahead of the next byte: the server answers it with a challenge ACK.
    let v = w.client_sends(c.to_server(c.client.snd_nxt + 500, 0, RST, b""));
    assert!(matches!(v, Verdict::Forward(_)), "{v:?}");
    assert!(!w.server.reset, "the host ignores it too");
    still_works(&mut w, &mut c);
    w.client_sends(c.client_data(PUT));
    assert_no_put(&w);
    assert_eq!(w.engine.counters().l7_requests_denied, 1, "still judged");
}

#[test]
fn rst_exact_ends_the_connection_on_both() {
    let (mut w, c) = rst_conn();
    let v = w.client_sends(c.to_server(c.client.snd_nxt, 0, RST, b""));
    assert!(matches!(v, Verdict::Forward(_)), "{v:?}");
    assert!(w.server.reset);
    let mut c = c;
    let v = w.client_sends(c.client_data(PUT));
    assert!(matches!(v, Verdict::Drop(_)), "{v:?}");
    assert_no_put(&w);
}

#[test]
fn rst_during_the_handshake_must_match() {
    let mut w = Wire::new(EngineConfig::default());
    let mut c = http_conn();
    w.client_sends(c.syn());
    // Not acknowledging the SYN: ignored (RFC 793 SYN-SENT).
    let v = w.server_sends(c.to_client(0, c.client.snd_nxt + 99, RST | ACK, b""));
    assert!(matches!(v, Verdict::Drop(_)), "{v:?}");
    let v = w.client_sends(c.to_server(c.client.snd_nxt + 99_999, 0, RST, b""));
    assert!(matches!(v, Verdict::Drop(_)), "{v:?}");
    w.server_sends(c.syn_ack());
    c.client.snd_nxt += 1;
    c.server.snd_nxt += 1;
    w.client_sends(c.to_server(c.client.snd_nxt, c.server.snd_nxt, ACK, b""));
    still_works(&mut w, &mut c);
}

#[test]
fn rst_answering_the_syn_passes() {
    let mut w = Wire::new(EngineConfig::default());
    let c = http_conn();
    w.client_sends(c.syn());
    let v = w.server_sends(c.to_client(0, c.client.snd_nxt + 1, RST | ACK, b""));
    assert!(matches!(v, Verdict::Forward(_)), "{v:?}");
}

#[test]
fn rst_on_l4_flows_out_of_window_is_dropped() {
    // A port without L7 rules: the entry still follows each receiver's ack
    // and window, and an RST outside them (which the receiver would ignore)
    // neither passes nor ends the flow.
    let mut w = Wire::new(EngineConfig::default());
    w.engine.set_policy(one_port_policy("db", 5432, ""));
    let mut c = Conn::new(ep(AWING, 40_100), ep(SERVER, 5432));
    w.handshake(&mut c);
    w.client_sends(c.client_data(b"query"));
    w.server_sends(c.server_data(b"rows"));
    for seq in [
        c.client.snd_nxt.wrapping_sub(1),
        c.client.snd_nxt.wrapping_add(1 << 20),
    ] {
        let v = w.client_sends(c.to_server(seq, 0, RST, b""));
        assert!(matches!(v, Verdict::Drop(_)), "{v:?}");
    }
    let v = w.server_sends(c.to_client(c.server.snd_nxt.wrapping_add(1 << 31), 0, RST, b""));
    assert!(matches!(v, Verdict::Drop(_)), "{v:?}");
    assert!(!w.server.reset && !w.client.reset);
    assert_eq!(w.dropped("tcp-out-of-window"), 3);
    // The connection goes on; the real end passes.
    let before = w.server.read.len();
    w.client_sends(c.client_data(b"more"));
    assert_eq!(&w.server.read[before..], b"more");
    let v = w.client_sends(c.to_server(c.client.snd_nxt, 0, RST, b""));
    assert!(matches!(v, Verdict::Forward(_)), "{v:?}");
    assert!(w.server.reset);
}

// ================================================================ bytes read differently

#[test]
fn urgent_data_is_read_in_band() {
    // With URG, Linux takes the byte before the urgent pointer out of the
    // stream: "XPUT ..." judged as one (invalid or denied) thing would be
    // read as "PUT ...". The enforcer clears URG, so the host reads what was
    // judged.
    let (mut w, mut c) = connected(http_conn());
    let mut req = b"GET /v1/ HTTP/1.1\r\nHost: deathstar\r\nX-Pad: ".to_vec();
    let urg_at = req.len();
    req.extend_from_slice(b"Z\r\n\r\n");
    let f = with_urgent(c.client_data(&req), urg_at as u16 + 1);
    w.client_sends(f);
    assert_eq!(w.server.read, req, "the host read exactly the judged bytes");
    for f in &w.to_server {
        let m = parse(f).unwrap();
        assert_eq!(f[m.l4_off + 13] & 0x20, 0, "no URG towards the server");
    }
}

#[test]
fn segments_without_ack_are_dropped() {
    let (mut w, mut c) = connected(http_conn());
    let f = c.to_server(c.client.snd_nxt, 0, PSH, GET);
    let v = w.client_sends(f);
    assert!(matches!(v, Verdict::Drop(_)), "{v:?}");
    assert_eq!(w.engine.counters().l7_requests_allowed, 0);
    w.client_sends(c.client_data(PUT));
    assert_no_put(&w);
}

#[test]
fn low_ttl_benign_copy_then_denied_retransmission() {
    // The benign bytes die before the server (TTL); the retransmission at
    // the same offsets carries the denied request. The server gets the
    // judged copy, never the retransmission's bytes.
    let (mut w, mut c) = connected(http_conn());
    let benign = b"GET /v1/ HTTP/1.1\r\nHost: deathstar\r\nX: 1234567\r\n\r\n";
    let evil = b"PUT /v1/exhaust-port HTTP/1.1\r\nHost: deathstar\r\n\r\n";
    assert_eq!(benign.len(), evil.len());
    let seq = c.client.snd_nxt;
    w.client_sends(with_ttl(c.client_data(benign), 1));
    assert!(w.server.read.is_empty(), "died on the way");
    w.client_sends(c.to_server(seq, c.server.snd_nxt, ACK | PSH, evil));
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
        w.client_sends(c.syn());
    }
    assert_eq!(w.engine.timers_pending(), 0);
    let mut c = http_conn();
    w.handshake(&mut c);
    w.client_sends(c.client_data(PUT));
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
    w.client_acks_all_it_read(&c);
    w.tick(w.engine.config().inject_rto_ns * 4);
    assert_eq!(w.engine.timers_pending(), 0);
    assert_eq!(data_frames(&w), sent + 1, "nothing resent after the ack");
}

#[test]
fn exhaustion_head_one_byte_per_segment_is_parsed_per_line() {
    let (mut w, mut c) = connected(http_conn());
    let mut req = b"GET /v1/ HTTP/1.1\r\nHost: deathstar\r\nX-Long: ".to_vec();
    req.extend(std::iter::repeat_n(b'a', 16_000));
    req.extend_from_slice(b"\r\n\r\n");
    for &b in &req {
        w.client_sends(c.client_data(&[b]));
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
    let base = c.client.snd_nxt;
    // Every other byte of a 40 KB window, one byte per segment, the first
    // byte missing.
    for k in (1..40_000u32).step_by(2) {
        w.client_sends(c.to_server(base + k, c.server.snd_nxt, ACK, b"a"));
    }
    let held = w.engine.held_bytes();
    assert!(held <= budget + 4096, "held {held} > budget {budget}");
    assert!(
        w.dropped("l7-hold-overflow") > 0,
        "segments beyond the holes are refused"
    );
    assert!(w.server.read.is_empty());
    // The client's retransmission of the whole request fills the hole.
    w.client_sends(c.client_data(GET));
    assert_eq!(w.server.read, GET);
    assert!(w.engine.held_bytes() <= 4096, "the ring is freed");
}

#[test]
fn exhaustion_out_of_order_reassembly_still_works() {
    let (mut w, mut c) = connected(http_conn());
    let base = c.client.snd_nxt;
    let req = [GET, GET].concat();
    // Pieces 3, 1, 2, 0 of four.
    let q = req.len() / 4;
    for &k in &[3usize, 1, 2, 0] {
        let end = if k == 3 { req.len() } else { (k + 1) * q };
        w.client_sends(c.to_server(
            base + (k * q) as u32,
            c.server.snd_nxt,
            ACK | PSH,
            &req[k * q..end],
        ));
    }
    assert_eq!(w.server.read, req, "both allowed requests, in order");
    c.client.snd_nxt += req.len() as u32;
    w.server_sends(c.server_data(OK));
    w.server_sends(c.server_data(OK));
    assert_eq!(w.client.read, [OK, OK].concat());
}

// ================================================================ HTTP framing

/// Send `bytes` on a fresh connection in segments of `seg` bytes, the
/// server answering nothing. The denied PUT must never be read; returns the
/// wire for more checks.
fn http_attempt(bytes: &[u8], seg: usize) -> Wire {
    let (mut w, mut c) = connected(http_conn());
    w.client_sends_in_pieces(&mut c, bytes, seg);
    assert_no_put(&w);
    w
}

/// Allowed traffic still works on a new connection of the same engine.
fn http_still_serves(w: &mut Wire) {
    let mut c = Conn::new(ep(AWING, 41_999), ep(SERVER, 80));
    w.server = Host::default();
    w.handshake(&mut c);
    w.client_sends(c.client_data(GET));
    assert_eq!(w.server.read, GET);
}

const SMUGGLED: &str = "PUT /v1/exhaust-port HTTP/1.1\r\nHost: deathstar\r\n\r\n";

#[test]
fn http_framing_smuggling_attempts_are_refused() {
    let n = SMUGGLED.len();
    let cases = [
        // CL.TE and TE.CL
        format!("POST /v1/request-landing HTTP/1.1\r\nHost: deathstar\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{SMUGGLED}"),
        format!("POST /v1/request-landing HTTP/1.1\r\nHost: deathstar\r\nTransfer-Encoding: chunked\r\nContent-Length: {}\r\n\r\n0\r\n\r\n{SMUGGLED}", n + 5),
        // TE.TE: obfuscated second coding, duplicate header
        format!("POST /v1/request-landing HTTP/1.1\r\nHost: deathstar\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: x\r\n\r\n0\r\n\r\n{SMUGGLED}"),
        format!("POST /v1/request-landing HTTP/1.1\r\nHost: deathstar\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n{SMUGGLED}"),
        format!("POST /v1/request-landing HTTP/1.1\r\nHost: deathstar\r\nTransfer-Encoding: xchunked\r\n\r\n{SMUGGLED}"),
        // conflicting Content-Length
        format!("POST /v1/request-landing HTTP/1.1\r\nHost: deathstar\r\nContent-Length: 0\r\nContent-Length: {n}\r\n\r\n{SMUGGLED}"),
        format!("POST /v1/request-landing HTTP/1.1\r\nHost: deathstar\r\nContent-Length: 0, {n}\r\n\r\n{SMUGGLED}"),
        format!("POST /v1/request-landing HTTP/1.1\r\nHost: deathstar\r\nContent-Length: +{n}\r\n\r\n{SMUGGLED}"),
        // bodies on methods a server may not read them for
        format!("GET /v1/ HTTP/1.1\r\nHost: deathstar\r\nContent-Length: {n}\r\n\r\n{SMUGGLED}"),
        format!("HEAD /v1/ HTTP/1.1\r\nHost: deathstar\r\nContent-Length: {n}\r\n\r\n{SMUGGLED}"),
        format!("GET /v1/ HTTP/1.1\r\nHost: deathstar\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{SMUGGLED}\r\n0\r\n\r\n", n),
        // absolute-form against Host
        "PUT http://deathstar/v1/exhaust-port HTTP/1.1\r\nHost: other\r\n\r\n".to_string(),
        // bare CR, NUL, obs-fold
        format!("GET /v1/ HTTP/1.1\r\nHost: deathstar\rX: y\r\n\r\n{SMUGGLED}"),
        format!("GET /v1/ HTTP/1.1\r\nHost: deathstar\r\nX: a\0b\r\n\r\n{SMUGGLED}"),
        format!("GET /v1/ HTTP/1.1\r\nHost: deathstar\r\nX: a\r\n Content-Length: {n}\r\n\r\n{SMUGGLED}"),
        format!("GET /v1/ HTTP/1.1\r\nHost: deathstar\r\nContent-Length:\r\n {n}\r\n\r\n{SMUGGLED}"),
        // a request line that hides a second one
        format!("GET /v1/ HTTP/1.1 {SMUGGLED}"),
        // very long line
        format!("GET /v1/?{} HTTP/1.1\r\nHost: deathstar\r\n\r\n{SMUGGLED}", "a".repeat(70_000)),
    ];
    for (i, case) in cases.iter().enumerate() {
        for seg in [1460, 7, 1] {
            if seg == 1 && case.len() > 5000 {
                continue;
            }
            let mut w = http_attempt(case.as_bytes(), seg);
            let c = w.engine.counters();
            assert!(
                c.l7_requests_allowed == 0 || !w.server_read().contains("PUT"),
                "case {i} seg {seg}: {:?}",
                w.server_read()
            );
            http_still_serves(&mut w);
        }
    }
}

#[test]
fn http_bare_lf_line_ends_are_refused() {
    // Servers differ on bare LF (and bare CR) line ends; the parser refuses
    // them, so no server reads anything of such a connection.
    let req = format!("GET /v1/ HTTP/1.1\nHost: deathstar\n\n{SMUGGLED}");
    let mut w = http_attempt(req.as_bytes(), 1460);
    assert!(w.server.read.is_empty(), "{:?}", w.server_read());
    assert!(w.client.reset, "the client is told at once");
    http_still_serves(&mut w);
}

#[test]
fn http_many_tiny_segments_still_judge_each_request() {
    let req = format!("{}{SMUGGLED}", String::from_utf8_lossy(GET));
    let w = http_attempt(req.as_bytes(), 1);
    assert_eq!(w.server.read, GET);
    assert_eq!(w.engine.counters().l7_requests_denied, 1);
}

#[test]
fn http_upgrade_refused_by_the_server_opens_no_tunnel() {
    let (mut w, mut c) = connected(http_conn());
    let up = b"GET /v1/ HTTP/1.1\r\nHost: deathstar\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n";
    w.client_sends(c.client_data(up));
    // The server does not switch protocols: an ordinary reply.
    w.server_sends(c.server_data(OK));
    w.client_sends(c.client_data(PUT));
    assert_no_put(&w);
    assert_eq!(w.engine.counters().l7_requests_denied, 1);
    // Had it switched (101), bytes would pass as a tunnel from then on.
    let (mut w, mut c) = connected(http_conn());
    w.client_sends(c.client_data(up));
    w.server_sends(c.server_data(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    ));
    w.client_sends(c.client_data(b"\x81\x05hello"));
    assert!(w.server.read.ends_with(b"\x81\x05hello"));
}

#[test]
fn http_connect_is_judged_and_refused_tunnels_stay_closed() {
    let (mut w, mut c) = connected(http_conn());
    w.client_sends(c.client_data(b"CONNECT deathstar:443 HTTP/1.1\r\nHost: deathstar:443\r\n\r\n"));
    assert_eq!(
        w.engine.counters().l7_requests_denied,
        1,
        "no rule allows CONNECT"
    );
    w.client_sends(c.client_data(PUT));
    assert_no_put(&w);
    assert!(!w.server_read().contains("CONNECT"));
}

// ================================================================ memcached

fn mc_attempt(bytes: &[u8], seg: usize) -> Wire {
    let (mut w, mut c) = connected(mc_conn());
    w.client_sends_in_pieces(&mut c, bytes, seg);
    assert!(
        !w.server_read().contains("xwing-coord"),
        "the denied key reached the server: {:?}",
        w.server_read()
    );
    w
}

#[test]
fn memcached_ms_with_more_flags_than_memcached_takes_is_refused() {
    // memcached 1.6 answers "CLIENT_ERROR options flags too long" to an ms
    // with 17 flag tokens and then reads its data block as a command.
    let flags = vec!["T0"; 17].join(" ");
    let data = MC_DENIED.len() - 2;
    let req = format!(
        "ms awing-coord {data} {flags}\r\n{}",
        String::from_utf8_lossy(MC_DENIED)
    );
    for seg in [1460, 3, 1] {
        mc_attempt(req.as_bytes(), seg);
    }
    // Sixteen are fine: memcached takes them, and the data is data.
    let flags = vec!["T0"; 16].join(" ");
    let ok = format!("ms awing-coord 5 {flags}\r\nhello\r\n");
    let w = mc_attempt(ok.as_bytes(), 1460);
    assert_eq!(w.server.read, ok.as_bytes());
}

#[test]
fn memcached_lengths_and_keys_memcached_refuses_are_refused() {
    let smuggle = String::from_utf8_lossy(MC_DENIED).into_owned();
    let cases = [
        format!("set awing-coord 0 0 -1\r\n{smuggle}"),
        format!("set awing-coord 0 0 4294967313\r\n{smuggle}"),
        format!("set awing-coord 0 0 2147483646\r\n{smuggle}"),
        format!("set awing-coord 0 0 +15\r\n{smuggle}"),
        // (`set awing-coord 0 0 15 norepl` is not here: memcached ignores
        // a sixth token other than `noreply` and reads the 15 bytes as the
        // value, as the enforcer does.)
        format!("set {} 0 0 15\r\n{smuggle}", "k".repeat(251)),
        format!("set awing\x01coord 0 0 15\r\n{smuggle}"),
        format!("set\tawing-coord 0 0 15\r\n{smuggle}"),
        format!("get awing-coord\0\r\n{smuggle}"),
        format!("ms awing-coord -1\r\n{smuggle}"),
    ];
    // Each is either refused (a length memcached versions read differently,
    // a NUL) or framed as memcached frames it: a rejected line is a request
    // of its own (the server answers its error), and what follows it is the
    // next request, judged and denied, never forwarded as data.
    for (i, case) in cases.iter().enumerate() {
        for seg in [1460, 1] {
            let w = mc_attempt(case.as_bytes(), seg);
            assert!(w.engine.counters().l7_requests_denied >= 1, "case {i}");
        }
    }
}

#[test]
fn memcached_keys_split_across_segments_are_judged_whole() {
    let req = [MC_ALLOWED, MC_DENIED, MC_ALLOWED].concat();
    for seg in [1, 2, 5, 13] {
        let (mut w, mut c) = connected(mc_conn());
        w.client_sends_in_pieces(&mut c, &req, seg);
        assert_eq!(
            w.server.read, MC_ALLOWED,
            "seg {seg}: the third waits for the denial"
        );
        w.server_sends(c.server_data(b"END\r\n"));
        assert_eq!(
            w.server.read,
            [MC_ALLOWED, MC_ALLOWED].concat(),
            "seg {seg}"
        );
        assert!(!w.server_read().contains("xwing"));
        w.server_sends(c.server_data(b"END\r\n"));
        assert!(w.client.text().contains("CLIENT_ERROR"), "seg {seg}");
    }
}

#[test]
fn memcached_binary_header_split_at_every_byte() {
    // A binary get for the denied key, then one for the allowed key: every
    // split point of the first header gives the same decisions.
    fn bin_get(key: &[u8]) -> Vec<u8> {
        let mut v = vec![0x80, 0x00];
        v.extend_from_slice(&(key.len() as u16).to_be_bytes());
        v.extend_from_slice(&[0, 0, 0, 0]);
        v.extend_from_slice(&(key.len() as u32).to_be_bytes());
        v.extend_from_slice(&[0; 12]);
        v.extend_from_slice(key);
        v
    }
    let denied = bin_get(b"xwing-coord");
    let allowed = bin_get(b"awing-coord");
    for cut in 1..denied.len() {
        let (mut w, mut c) = connected(mc_conn());
        w.client_sends(c.client_data(&denied[..cut]));
        w.client_sends(c.client_data(&denied[cut..]));
        w.client_sends(c.client_data(&allowed));
        assert!(!w.server_read().contains("xwing"), "cut {cut}");
        assert_eq!(w.server.read, allowed, "cut {cut}");
        let cnt = w.engine.counters();
        assert_eq!(
            (cnt.l7_requests_allowed, cnt.l7_requests_denied),
            (1, 1),
            "cut {cut}"
        );
    }
}

// ================================================================ TCP segments

#[test]
fn overlapping_segments_with_different_content_both_orders() {
    // The same offsets carry a benign and a denied request; whichever
    // arrives first is what was judged, and the server reads exactly that.
    let benign = b"GET /v1/ HTTP/1.1\r\nHost: deathstar\r\nX: 1234567\r\n\r\n";
    let evil = PUT;
    assert_eq!(benign.len(), evil.len());
    for first_benign in [true, false] {
        let (mut w, c) = connected(http_conn());
        let seq = c.client.snd_nxt;
        let (a, b): (&[u8], &[u8]) = if first_benign {
            (benign, evil)
        } else {
            (evil, benign)
        };
        // Out of order first (a hole of 1 byte), then the overlap in order.
        w.client_sends(c.to_server(seq + 1, c.server.snd_nxt, ACK | PSH, &a[1..]));
        w.client_sends(c.to_server(seq, c.server.snd_nxt, ACK | PSH, b));
        assert_no_put(&w);
        let read = w.server.read.clone();
        assert!(
            read.is_empty() || read == benign,
            "{first_benign}: {:?}",
            w.server_read()
        );
        // And in order, then a changed retransmission over it.
        let (mut w, c) = connected(http_conn());
        let seq = c.client.snd_nxt;
        w.client_sends(c.to_server(seq, c.server.snd_nxt, ACK | PSH, a));
        w.client_sends(c.to_server(seq, c.server.snd_nxt, ACK | PSH, b));
        assert_no_put(&w);
        assert!(w.server.read.is_empty() || w.server.read == benign);
    }
}

#[test]
fn out_of_window_segments_are_not_judged() {
    let (mut w, mut c) = connected(http_conn());
    // Far ahead and far behind the stream.
    w.client_sends(c.to_server(
        c.client.snd_nxt.wrapping_add(1 << 30),
        c.server.snd_nxt,
        ACK | PSH,
        GET,
    ));
    w.client_sends(c.to_server(
        c.client.snd_nxt.wrapping_sub(1 << 30),
        c.server.snd_nxt,
        ACK | PSH,
        GET,
    ));
    assert_eq!(w.engine.counters().l7_requests_allowed, 0);
    w.client_sends(c.client_data(PUT));
    assert_no_put(&w);
    w.client_sends(c.client_data(GET));
    assert_eq!(w.server.read, GET);
}

#[test]
fn fin_tricks_do_not_release_an_incomplete_head() {
    let (mut w, mut c) = connected(http_conn());
    // Half a request, then a FIN: the half is never forwarded.
    w.client_sends(c.client_data(&PUT[..20]));
    w.client_sends(c.client_fin());
    // Data after the FIN (a peer that keeps sending) is not judged either.
    w.client_sends(c.to_server(c.client.snd_nxt, c.server.snd_nxt, ACK | PSH, &PUT[20..]));
    assert_no_put(&w);
    assert!(w.server.read.is_empty());
    assert!(w.server.fin, "the FIN itself is passed");
}

#[test]
fn port_reuse_after_fin_or_rst_is_a_new_judged_connection() {
    for end_with_rst in [false, true] {
        let (mut w, mut c) = connected(http_conn());
        w.client_sends(c.client_data(GET));
        w.server_sends(c.server_data(OK));
        if end_with_rst {
            w.client_sends(c.to_server(c.client.snd_nxt, 0, RST, b""));
        } else {
            w.client_sends(c.client_fin());
            w.server_sends(c.server_fin());
            w.client_sends(c.to_server(c.client.snd_nxt, c.server.snd_nxt, ACK, b""));
        }
        // Same 4-tuple, new ISN.
        let mut n = http_conn();
        n.client.snd_nxt = 77_000;
        n.server.snd_nxt = 880_000;
        w.server = Host::default();
        w.handshake(&mut n);
        w.client_sends(n.client_data(PUT));
        assert_no_put(&w);
        w.client_sends(n.client_data(GET));
        assert_eq!(w.server.read, GET, "rst {end_with_rst}");
        assert_eq!(w.engine.counters().l7_requests_denied, 1);
    }
}

#[test]
fn ip_fragments_of_l7_segments_are_refused() {
    for client in [AWING, "fd66::11"] {
        let server = if client.contains(':') {
            "fd66::2"
        } else {
            SERVER
        };
        let mut w = Wire::new(EngineConfig::default());
        let mut c = Conn::new(ep(client, 40_005), ep(server, 80));
        w.handshake(&mut c);
        let seg = c.client_data(PUT);
        // Tiny and overlapping fragments both.
        for (id, ranges) in [
            (7u32, vec![(0, 8), (8, 16), (16, 20 + PUT.len())]),
            (8, vec![(0, 16), (8, 20 + PUT.len())]),
        ] {
            for f in fragments(&seg, id, &ranges) {
                w.client_sends(f);
            }
        }
        assert_no_put(&w);
        assert!(w.server.read.is_empty(), "{client}");
    }
}

#[test]
fn ipv6_extension_header_chains_do_not_hide_the_segment() {
    // Destination-options headers before TCP: the segment is still found
    // and judged (or dropped), never passed unjudged.
    let mut w = Wire::new(EngineConfig::default());
    let mut c = Conn::new(ep("fd66::11", 40_006), ep("fd66::2", 80));
    w.handshake(&mut c);
    let seg = c.client_data(PUT);
    for n in [1usize, 3, 9] {
        let mut f = seg[..54].to_vec();
        let next = f[14 + 6];
        f[14 + 6] = 60;
        let mut ext = Vec::new();
        for k in 0..n {
            ext.extend_from_slice(&[if k + 1 == n { next } else { 60 }, 0, 1, 4, 0, 0, 0, 0]);
        }
        f.extend_from_slice(&ext);
        f.extend_from_slice(&seg[54..]);
        let plen = (f.len() - 54) as u16;
        f[18..20].copy_from_slice(&plen.to_be_bytes());
        w.client_sends(f);
        assert_no_put(&w);
    }
}

#[test]
fn exhaustion_syn_flood_entries_leave_quickly() {
    let cfg = EngineConfig {
        max_flows: 901,
        ..EngineConfig::default()
    };
    let syn_timeout = cfg.tcp_syn_timeout_ns;
    let mut w = Wire::new(cfg);
    let mut c = http_conn();
    w.handshake(&mut c);
    // 900 SYNs in 0.9 s fill the table.
    for i in 0..900u32 {
        let f = Conn::new(ep(AWING, 10_000 + i as u16), ep(SERVER, 80));
        w.client_sends(f.syn());
    }
    assert_eq!(w.engine.flow_count(), 901, "the table is full");
    // However fresh, the flood's handshakes give way to new connections
    // (early drop of the stalest near the hand); finished ones never do.
    let mut n = Conn::new(ep(AWING, 9_001), ep(SERVER, 80));
    w.handshake(&mut n);
    assert_eq!(w.engine.counters().flows_evicted, 1);
    // And they all leave with the half-open timeout.
    for _ in 0..3 {
        w.tick(syn_timeout / 2 + 1);
    }
    assert_eq!(
        w.engine.flow_count(),
        2,
        "only the established connections stay (the old one and the new)"
    );
    let before = w.server.read.len();
    w.client_sends(c.client_data(GET));
    assert_eq!(
        &w.server.read[before..],
        GET,
        "the old connection still works"
    );
}

#[test]
fn exhaustion_reply_head_one_byte_per_segment_is_parsed_per_line() {
    let (mut w, mut c) = connected(http_conn());
    w.client_sends(c.client_data(GET));
    let before = w.engine.counters().l7_head_parses;
    let mut reply = b"HTTP/1.1 200 OK\r\nX-Long: ".to_vec();
    reply.extend(std::iter::repeat_n(b'b', 16_000));
    reply.extend_from_slice(b"\r\nContent-Length: 2\r\n\r\nok");
    for &b in &reply {
        w.server_sends(c.server_data(&[b]));
    }
    assert_eq!(w.client.read, reply);
    let parses = w.engine.counters().l7_head_parses - before;
    assert!(
        parses <= 8,
        "{parses} parses for a reply head of four lines"
    );
    // The reply was followed: a denial now goes right after it.
    w.client_sends(c.client_data(PUT));
    assert!(
        w.client.text().ends_with("Access denied\r\n"),
        "{}",
        &w.client.text()[16_000..]
    );
}

#[test]
fn invalid_flag_combinations_are_dropped() {
    let (mut w, mut c) = connected(http_conn());
    for flags in [SYN | FIN, SYN | RST, FIN, 0, PSH, FIN | PSH] {
        let f = c.to_server(c.client.snd_nxt, c.server.snd_nxt, flags, GET);
        let v = w.client_sends(f);
        assert!(matches!(v, Verdict::Drop(_)), "flags {flags:#x}: {v:?}");
    }
    assert!(w.server.read.is_empty());
    assert_eq!(w.engine.counters().l7_requests_allowed, 0);
    still_works(&mut w, &mut c);
}

#[test]
fn rst_lost_after_the_enforcer_then_a_rebasing_syn_gets_nothing_through() {
    // The client's exact RST dies before the server (TTL 1): the enforcer
    // ends its state, the server keeps the connection. A new SYN whose ISN
    // lines its offsets up with the server's stream then gets no SYN-ACK
    // (only the server's challenge ACK), and nothing passes without one.
    let (mut w, c) = rst_conn();
    w.client_sends(with_ttl(c.to_server(c.client.snd_nxt, 0, RST, b""), 1));
    assert!(!w.server.reset);
    let read = w.server.read.clone();
    let isn = c.client.snd_nxt.wrapping_sub(1);
    w.client_sends(c.to_server(isn, 0, SYN, b""));
    // The server, still established, answers with a challenge ACK.
    w.server_sends(c.to_client(c.server.snd_nxt, c.client.snd_nxt, ACK, b""));
    w.client_sends(c.to_server(c.client.snd_nxt, c.server.snd_nxt, ACK | PSH, PUT));
    assert_no_put(&w);
    assert_eq!(w.server.read, read);
}

/// CONNECT, and GET /v1/.
const CONNECT_RULES: &str = r#"      rules:
        http:
        - method: "CONNECT"
        - method: "GET"
          path: "/v1/"
"#;

#[test]
fn http_connect_refused_by_the_server_opens_no_tunnel() {
    let proxy = || one_port_policy("proxy", 80, CONNECT_RULES);
    let mut w = Wire::new(EngineConfig::default());
    w.engine.set_policy(proxy());
    let mut c = http_conn();
    w.handshake(&mut c);
    w.client_sends(c.client_data(b"CONNECT deathstar:443 HTTP/1.1\r\nHost: deathstar:443\r\n\r\n"));
    assert_eq!(w.engine.counters().l7_requests_allowed, 1);
    // The server refuses the tunnel.
    w.server_sends(c.server_data(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n"));
    w.client_sends(c.client_data(PUT));
    assert_no_put(&w);
    assert_eq!(
        w.engine.counters().l7_requests_denied,
        1,
        "still parsed and judged"
    );
    // Accepted, it is a tunnel: bytes pass from then on.
    let mut w = Wire::new(EngineConfig::default());
    w.engine.set_policy(proxy());
    let mut c = http_conn();
    w.handshake(&mut c);
    w.client_sends(c.client_data(b"CONNECT deathstar:443 HTTP/1.1\r\nHost: deathstar:443\r\n\r\n"));
    w.server_sends(c.server_data(b"HTTP/1.1 200 Connection established\r\n\r\n"));
    w.client_sends(c.client_data(b"\x16\x03\x01 tls bytes"));
    assert!(w.server.read.ends_with(b"\x16\x03\x01 tls bytes"));
}

#[test]
fn memcached_meta_commands_without_data_keep_line_boundaries() {
    // memcached refuses an mg with many flags but consumes its line: the
    // next command starts where the enforcer says, and is judged.
    let many = vec!["v"; 30].join(" ");
    let req = format!(
        "mg awing-coord {many}\r\n{}",
        String::from_utf8_lossy(MC_DENIED)
    );
    let w = mc_attempt(req.as_bytes(), 1460);
    assert_eq!(
        w.engine.counters().l7_requests_denied,
        1,
        "the get was judged"
    );
    assert!(w.server_read().starts_with("mg awing-coord"));
}

#[test]
fn exhaustion_slow_holders_cannot_pass_the_worker_budget() {
    // Slowloris: many connections each trickling an endless head. With a
    // worker budget of 256 KiB, holders beyond it are reset; normal clients
    // (small heads) are still served, and the accounting matches a walk.
    let budget = 256 << 10;
    let mut w = Wire::new(EngineConfig {
        max_held_total: budget,
        ..EngineConfig::default()
    });
    let mut holders = Vec::new();
    for i in 0..200u16 {
        let mut c = Conn::new(ep(AWING, 30_000 + i), ep(SERVER, 80));
        w.handshake(&mut c);
        holders.push(c);
    }
    for round in 0..8 {
        for c in holders.iter_mut() {
            let piece = if round == 0 {
                b"GET /v1/ HTTP/1.1\r\nX-Slow: ".to_vec()
            } else {
                vec![b'z'; 1000]
            };
            w.client_sends(c.client_data(&piece));
        }
        assert_eq!(
            w.engine.held_total(),
            w.engine.held_bytes(),
            "round {round}"
        );
    }
    let held = w.engine.held_bytes();
    // The last flow to grow may overshoot by its buffer's growth step.
    assert!(held <= budget + (64 << 10), "held {held}");
    assert!(
        w.dropped("l7-hold-overflow") > 0,
        "holders beyond the budget were cut"
    );
    // A normal client is still served.
    let mut c = Conn::new(ep(AWING, 31_000), ep(SERVER, 80));
    w.server = Host::default();
    w.handshake(&mut c);
    w.client_sends(c.client_data(GET));
    assert_eq!(w.server.read, GET);
}

#[test]
fn exhaustion_trickled_heads_are_timed_out() {
    // Slowloris within every idle timeout: one byte every 10 s. At the head
    // timeout HTTP gets a 408, then both sides an RST; memcached the RSTs
    // at once. What they held is freed; nothing of them reached a server.
    let cfg = EngineConfig::default();
    let timeout = cfg.l7_head_timeout_ns;
    let mut w = Wire::new(cfg);
    let mut h = http_conn();
    w.handshake(&mut h);
    let mut m = mc_conn();
    w.handshake(&mut m);
    let start = w.now;
    let mut i = 0;
    while w.now - start < timeout - 10_000_000_000 {
        w.client_sends(h.client_data(&PUT[i..i + 1]));
        w.client_sends(m.client_data(&MC_ALLOWED[i % 4..i % 4 + 1]));
        w.tick(10_000_000_000);
        i += 1;
    }
    assert_eq!(w.engine.counters().l7_head_timeouts, 0);
    assert!(w.engine.held_total() > 0);
    w.tick(10_000_000_000);
    assert_eq!(w.engine.counters().l7_head_timeouts, 2);
    assert!(
        w.client
            .read
            .starts_with(b"HTTP/1.1 408 Request Timeout\r\n"),
        "{:?}",
        String::from_utf8_lossy(&w.client.read)
    );
    assert!(w.server.read.is_empty());
    // The client reads the 408; the connection ends.
    w.client_acks_all_it_read(&h);
    assert!(
        matches!(w.client_sends(h.client_data(GET)), Verdict::Drop(_)),
        "the connection is over"
    );
    assert!(matches!(
        w.client_sends(m.client_data(MC_ALLOWED)),
        Verdict::Drop(_)
    ));
    assert_eq!(w.engine.counters().l7_requests_allowed, 0);
    assert_eq!(w.engine.held_total(), 0);
    assert_eq!(w.engine.held_total(), w.engine.held_bytes());
}

// ================================================================ through `enforcer replay`

/// Frames with the side each arrives on.
type Capture = Vec<(u8, Vec<u8>)>;

/// Run a capture through the
/// `enforcer replay` binary with the shipped policies; returns what it
/// wrote towards `dst`, read by the host model.
fn replay_to(frames: &Capture, dst: &str) -> Host {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("in.pcapng");
    let out = dir.path().join("out.pcap");
    let recs: Vec<_> = frames
        .iter()
        .enumerate()
        .map(|(i, (side, f))| rec(1_000_000_000 + i as u64 * 1_000_000, *side, f.clone()))
        .collect();
    write_pcapng(&input, &recs);
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_enforcer"))
        .arg("replay")
        .arg("--policy")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/policies"))
        .arg(&input)
        .arg("-w")
        .arg(&out)
        .output()
        .expect("run enforcer");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        o.status.success() && !stderr.contains("panicked"),
        "{stderr}"
    );
    let mut h = Host::default();
    for f in read_pcap(&out) {
        if parse(&f).is_ok_and(|m| m.dst == ip(dst)) {
            h.take(&f);
        }
    }
    h
}

#[test]
fn replayed_captures_of_each_class_get_nothing_past() {
    let c0 = http_conn();
    let hs = |c: &mut Conn| -> Capture {
        c.handshake()
            .into_iter()
            .enumerate()
            .map(|(i, f)| (if i == 1 { SERVER_SIDE } else { CLIENT_SIDE }, f))
            .collect()
    };
    let mut captures: Vec<(&str, Capture, &[u8])> = Vec::new();
    // Pickup: a spoofed server segment before the client's SYN.
    {
        let mut c = http_conn();
        let mut v = vec![(
            CLIENT_SIDE,
            c0.to_client(777, c0.client.snd_nxt + 1, ACK, b""),
        )];
        v.extend(hs(&mut c));
        v.push((CLIENT_SIDE, c.client_data(PUT)));
        v.push((CLIENT_SIDE, c.client_data(GET)));
        captures.push(("pickup spoof", v, GET));
    }
    // A late SYN with a new ISN, then the PUT.
    {
        let mut c = http_conn();
        let mut v = hs(&mut c);
        v.push((CLIENT_SIDE, c.client_data(GET)));
        v.push((SERVER_SIDE, c.server_data(OK)));
        v.push((
            CLIENT_SIDE,
            c.to_server(c.client.snd_nxt.wrapping_add(999), 0, SYN, b""),
        ));
        v.push((CLIENT_SIDE, c.client_data(PUT)));
        captures.push(("late SYN", v, GET));
    }
    // An out-of-window RST, then the PUT.
    {
        let mut c = http_conn();
        let mut v = hs(&mut c);
        v.push((
            CLIENT_SIDE,
            c.to_server(c.client.snd_nxt.wrapping_sub(1 << 20), 0, RST, b""),
        ));
        v.push((CLIENT_SIDE, c.client_data(PUT)));
        v.push((CLIENT_SIDE, c.client_data(GET)));
        captures.push(("stray RST", v, GET));
    }
    // A body on GET hiding the PUT.
    {
        let mut c = http_conn();
        let mut v = hs(&mut c);
        let req = format!(
            "GET /v1/ HTTP/1.1\r\nHost: deathstar\r\nContent-Length: {}\r\n\r\n{SMUGGLED}",
            SMUGGLED.len()
        );
        v.push((CLIENT_SIDE, c.client_data(req.as_bytes())));
        captures.push(("GET body", v, b""));
    }
    for (name, frames, allowed) in captures {
        let server = replay_to(&frames, SERVER);
        let read = server.text();
        assert!(!read.contains("exhaust-port"), "{name}: {read:?}");
        assert_eq!(server.read, allowed, "{name}");
    }
    // memcached: an ms with 17 flags hiding a denied get.
    let mut c = mc_conn();
    let mut v = hs(&mut c);
    let req = format!(
        "ms awing-coord 15 {}\r\n{}",
        vec!["T0"; 17].join(" "),
        String::from_utf8_lossy(MC_DENIED)
    );
    v.push((CLIENT_SIDE, c.client_data(req.as_bytes())));
    v.push((CLIENT_SIDE, c.client_data(MC_ALLOWED)));
    let server = replay_to(&v, SERVER);
    assert!(!server.text().contains("xwing"), "{:?}", server.text());
}

/// memcached gets of keys starting with "e".
const MC_PREFIX_RULES: &str = r#"      rules:
        l7proto: memcache
        l7:
        - command: get
          keyPrefix: e
"#;

#[test]
fn memcached_base64_keys_are_judged_as_memcached_decodes_them() {
    // Rules allow keys starting with "e". memcached decodes a `b` key:
    // "eHdpbmctY29vcmQ=" is xwing-coord to it, and must be judged as that.
    let mut w = Wire::new(EngineConfig::default());
    w.engine
        .set_policy(one_port_policy("memcd", 11211, MC_PREFIX_RULES));
    let mut c = mc_conn();
    w.handshake(&mut c);
    w.client_sends(c.client_data(b"mg eHdpbmctY29vcmQ= b v\r\n"));
    assert!(w.server.read.is_empty(), "{:?}", w.server_read());
    assert_eq!(w.engine.counters().l7_requests_denied, 1);
    // A key that decodes to something starting with "e" passes, as does a
    // plain one.
    w.client_sends(c.client_data(b"mg ZWNobw== b v\r\n"));
    w.client_sends(c.client_data(b"get echo\r\n"));
    assert_eq!(w.server_read(), "mg ZWNobw== b v\r\nget echo\r\n");
}
