//! A structured input for fuzzing the whole frame path: a byte string decodes
//! into an engine configuration, a policy choice and a sequence of steps
//! (TCP conversations between the lab's clients and server, with seq/ack
//! numbers tracked as real stacks would and offsets near them, time that
//! advances, ticks, fragments, corrupted and raw frames), which `run` feeds
//! through `Engine` in both directions, checking the engine's invariants
//! after every call.
//!
//! Every byte string decodes to some scenario (missing bytes read as zero),
//! so libFuzzer's mutations stay useful; `Scenario::encode` is the exact
//! inverse of `decode`, which is how the seed corpus is written from
//! conversations built in code (`seeds`).
//!
//! Shared by the cargo-fuzz target `frames` and by the bounded smoke test in
//! the normal test suite (`tests/fuzz_smoke.rs`, via `#[path]`).

use std::net::IpAddr;
use std::sync::Arc;

// The test kit's frame builders, so that fuzz seeds and tests build frames one way.
#[allow(unused_imports)]
#[path = "../../tests/kit/frames.rs"]
mod frames;
use frames::fragments;
pub use frames::tcp_frame;

use enforcer::config::{DenyAction, EngineConfig, SynDenyAction, TableFullPolicy};
use enforcer::engine::Engine;
use enforcer::packet::view;
use enforcer::policy::Policy;
use enforcer::verdict::{Output, Verdict};

/// Upper bounds that keep one execution in the millisecond range.
pub const MAX_STEPS: usize = 256;
const MAX_LITERAL: usize = 4096;
// Below the 65535-byte IP datagram limit with headers.
const MAX_REPEAT: usize = 60_000;
const SLOTS: usize = 8;

pub use frames::{ACK, FIN, PSH, RST, SYN};

/// Reads the input front to back; past its end every read yields zero.
pub struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Reader { data, pos: 0 }
    }
    pub fn done(&self) -> bool {
        self.pos >= self.data.len()
    }
    pub fn u8(&mut self) -> u8 {
        let b = self.data.get(self.pos).copied().unwrap_or(0);
        self.pos += 1;
        b
    }
    pub fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.u8(), self.u8()])
    }
    pub fn u32(&mut self) -> u32 {
        u32::from_be_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }
    /// A u16 length then that many bytes (fewer when the input ends).
    pub fn bytes(&mut self, max: usize) -> Vec<u8> {
        let n = usize::from(self.u16()).min(max);
        let start = self.pos.min(self.data.len());
        let end = (start + n).min(self.data.len());
        self.pos += n;
        self.data[start..end].to_vec()
    }
}

/// The inverse of `Reader`.
#[derive(Default)]
pub struct Writer {
    pub out: Vec<u8>,
}

impl Writer {
    pub fn u8(&mut self, v: u8) {
        self.out.push(v);
    }
    pub fn u16(&mut self, v: u16) {
        self.out.extend_from_slice(&v.to_be_bytes());
    }
    pub fn u32(&mut self, v: u32) {
        self.out.extend_from_slice(&v.to_be_bytes());
    }
    pub fn bytes(&mut self, b: &[u8]) {
        let b = &b[..b.len().min(MAX_LITERAL)];
        self.u16(b.len() as u16);
        self.out.extend_from_slice(b);
    }
}

/// Requests and replies the seed policies have rules for (allowed and
/// denied), in both protocols, so short mutations reach the L7 code.
pub const TEMPLATES: &[&[u8]] = &[
    b"GET /v1/ HTTP/1.1\r\nHost: deathstar\r\n\r\n",
    b"PUT /v1/exhaust-port HTTP/1.1\r\nHost: deathstar\r\nContent-Length: 5\r\n\r\nboom!",
    b"PUT /v1/exhaust-port HTTP/1.1\r\nHost: deathstar\r\nX-Has-Force: true\r\nContent-Length: 2\r\n\r\nok",
    b"POST /v1/request-landing HTTP/1.1\r\nHost: deathstar\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 100 Continue\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    b"get awing-coord\r\n",
    b"get xwing-coord\r\n",
    b"set awing-coord 0 1200 17\r\n9852.542,892.1318\r\n",
    b"VALUE awing-coord 0 5\r\nhello\r\nEND\r\n",
    b"STORED\r\n",
    b"mg awing-coord v\r\n",
    b"ms awing-coord 2 T0\r\nhi\r\n",
    // Binary get "awing-coord".
    b"\x80\x00\x00\x0b\x00\x00\x00\x00\x00\x00\x00\x0b\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x00awing-coord",
    // Binary response: key not found.
    b"\x81\x00\x00\x00\x00\x00\x00\x01\x00\x00\x00\x09\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x00Not found",
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    Literal(Vec<u8>),
    /// `TEMPLATES[index]`, bytes `from..from + len` (clamped).
    Template {
        index: u8,
        from: u16,
        len: u16,
    },
    /// `count` copies of `byte`: long lines, big heads, held-bytes limits.
    Repeat {
        byte: u8,
        count: u16,
        scale: u8,
    },
}

impl Payload {
    pub fn bytes(&self) -> Vec<u8> {
        match self {
            Payload::Literal(b) => b.clone(),
            Payload::Template { index, from, len } => {
                let t = TEMPLATES[usize::from(*index) % TEMPLATES.len()];
                let from = usize::from(*from).min(t.len());
                let to = if *len == 0 {
                    t.len()
                } else {
                    (from + usize::from(*len)).min(t.len())
                };
                t[from..to].to_vec()
            }
            Payload::Repeat { byte, count, scale } => {
                let n = usize::from(*count) * (1 + usize::from(*scale % 4));
                vec![*byte; n.min(MAX_REPEAT)]
            }
        }
    }
    /// The whole of template `i`.
    pub fn template(i: usize) -> Payload {
        Payload::Template {
            index: i as u8,
            from: 0,
            len: 0,
        }
    }
    fn decode(r: &mut Reader) -> Payload {
        match r.u8() % 4 {
            0 => Payload::Literal(r.bytes(MAX_LITERAL)),
            1 | 2 => Payload::Template {
                index: r.u8(),
                from: r.u16(),
                len: r.u16(),
            },
            _ => Payload::Repeat {
                byte: r.u8(),
                count: r.u16(),
                scale: r.u8(),
            },
        }
    }
    fn encode(&self, w: &mut Writer) {
        match self {
            Payload::Literal(b) => {
                w.u8(0);
                w.bytes(b);
            }
            Payload::Template { index, from, len } => {
                w.u8(1);
                w.u8(*index);
                w.u16(*from);
                w.u16(*len);
            }
            Payload::Repeat { byte, count, scale } => {
                w.u8(3);
                w.u8(*byte);
                w.u16(*count);
                w.u8(*scale);
            }
        }
    }
}

/// One TCP segment of a conversation. Offsets are relative to what the
/// sender's stack would use next (`seq_delta` 0 is in order) and to what it
/// has received (`ack_delta` 0 acknowledges everything the enforcer let
/// through to it, injected denials included).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seg {
    pub slot: u8,
    pub from_server: bool,
    /// XORed into ACK|PSH: 0 is an ordinary data segment.
    pub flags_xor: u8,
    pub seq_delta: i16,
    pub ack_delta: i8,
    /// 0 means 64 (as Linux sends).
    pub ttl: u8,
    pub urgent: u16,
    pub payload: Payload,
}

impl Seg {
    pub fn data(slot: u8, from_server: bool, payload: Payload) -> Seg {
        Seg {
            slot,
            from_server,
            flags_xor: 0,
            seq_delta: 0,
            ack_delta: 0,
            ttl: 0,
            urgent: 0,
            payload,
        }
    }
    fn decode(r: &mut Reader) -> Seg {
        Seg {
            slot: r.u8(),
            from_server: r.u8() & 1 == 1,
            flags_xor: r.u8(),
            seq_delta: r.u16() as i16,
            ack_delta: r.u8() as i8,
            ttl: r.u8(),
            urgent: r.u16(),
            payload: Payload::decode(r),
        }
    }
    fn encode(&self, w: &mut Writer) {
        w.u8(self.slot);
        w.u8(u8::from(self.from_server));
        w.u8(self.flags_xor);
        w.u16(self.seq_delta as u16);
        w.u8(self.ack_delta as u8);
        w.u8(self.ttl);
        w.u16(self.urgent);
        self.payload.encode(w);
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Give `slot` a new 4-tuple and fresh ISNs (port reuse when only the
    /// ISNs change).
    Open {
        slot: u8,
        client: u8,
        service: u8,
        sport: u16,
        isn_c: u32,
        isn_s: u32,
    },
    /// SYN, SYN-ACK, ACK.
    Handshake {
        slot: u8,
    },
    Seg(Seg),
    /// A segment whose byte `index` (mod length) is overwritten after the
    /// checksums were computed.
    Corrupt {
        seg: Seg,
        index: u16,
        value: u8,
    },
    /// A segment cut into two IP fragments of its L4 part: `a` covers
    /// `0..cut`, `b` covers `cut - overlap..`, sent in `b_first` order.
    Fragments {
        seg: Seg,
        cut: u16,
        overlap: u8,
        b_first: bool,
    },
    /// Any bytes as a frame on `port` (0 client side, 1 server side).
    Raw {
        port: u8,
        frame: Vec<u8>,
    },
    /// Advance the clock by `amount` µs, ms or s (`unit` % 3).
    Advance {
        amount: u16,
        unit: u8,
    },
    Tick,
    /// Swap to `policies()[which]` (flows re-decide on their next frame).
    SetPolicy {
        which: u8,
    },
}

impl Step {
    fn decode(r: &mut Reader) -> Step {
        match r.u8() % 10 {
            0 => Step::Open {
                slot: r.u8(),
                client: r.u8(),
                service: r.u8(),
                sport: r.u16(),
                isn_c: r.u32(),
                isn_s: r.u32(),
            },
            1 => Step::Handshake { slot: r.u8() },
            2 | 3 => Step::Seg(Seg::decode(r)),
            4 => Step::Corrupt {
                seg: Seg::decode(r),
                index: r.u16(),
                value: r.u8(),
            },
            5 => Step::Fragments {
                seg: Seg::decode(r),
                cut: r.u16(),
                overlap: r.u8(),
                b_first: r.u8() & 1 == 1,
            },
            6 => Step::Raw {
                port: r.u8(),
                frame: r.bytes(MAX_LITERAL),
            },
            7 => Step::Advance {
                amount: r.u16(),
                unit: r.u8(),
            },
            8 => Step::Tick,
            _ => Step::SetPolicy { which: r.u8() },
        }
    }
    fn encode(&self, w: &mut Writer) {
        match self {
            Step::Open {
                slot,
                client,
                service,
                sport,
                isn_c,
                isn_s,
            } => {
                w.u8(0);
                w.u8(*slot);
                w.u8(*client);
                w.u8(*service);
                w.u16(*sport);
                w.u32(*isn_c);
                w.u32(*isn_s);
            }
            Step::Handshake { slot } => {
                w.u8(1);
                w.u8(*slot);
            }
            Step::Seg(s) => {
                w.u8(2);
                s.encode(w);
            }
            Step::Corrupt { seg, index, value } => {
                w.u8(4);
                seg.encode(w);
                w.u16(*index);
                w.u8(*value);
            }
            Step::Fragments {
                seg,
                cut,
                overlap,
                b_first,
            } => {
                w.u8(5);
                seg.encode(w);
                w.u16(*cut);
                w.u8(*overlap);
                w.u8(u8::from(*b_first));
            }
            Step::Raw { port, frame } => {
                w.u8(6);
                w.u8(*port);
                w.bytes(frame);
            }
            Step::Advance { amount, unit } => {
                w.u8(7);
                w.u16(*amount);
                w.u8(*unit);
            }
            Step::Tick => w.u8(8),
            Step::SetPolicy { which } => {
                w.u8(9);
                w.u8(*which);
            }
        }
    }
}

/// Engine knobs worth exploring: small tables and budgets reach the bounds.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Knobs {
    pub policy: u8,
    /// 0: the default table size; n: n flows.
    pub max_flows: u8,
    /// Index into [default, 64, 512, 4096].
    pub held: u8,
    pub table_full: u8,
    pub reset_on_deny: bool,
    pub syn_reset: bool,
    pub no_pickup: bool,
}

impl Knobs {
    pub fn config(&self) -> EngineConfig {
        let mut c = EngineConfig::default();
        if self.max_flows != 0 {
            c.max_flows = usize::from(self.max_flows % 32) + 1;
        }
        c.max_held_bytes = match self.held % 4 {
            0 => c.max_held_bytes,
            1 => 64,
            2 => 512,
            _ => 4096,
        };
        c.table_full = match self.table_full % 3 {
            0 => TableFullPolicy::RefuseL7,
            1 => TableFullPolicy::RefuseAll,
            _ => TableFullPolicy::EvictOldest,
        };
        if self.reset_on_deny {
            c.deny_action = DenyAction::Reset;
        }
        if self.syn_reset {
            c.syn_deny = SynDenyAction::Reset;
        }
        c.tcp_pickup = !self.no_pickup;
        c
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Scenario {
    pub knobs: Knobs,
    pub steps: Vec<Step>,
}

impl Scenario {
    pub fn decode(data: &[u8]) -> Scenario {
        let mut r = Reader::new(data);
        let flags = r.u8();
        let knobs = Knobs {
            policy: r.u8(),
            max_flows: r.u8(),
            held: r.u8(),
            table_full: r.u8(),
            reset_on_deny: flags & 1 != 0,
            syn_reset: flags & 2 != 0,
            no_pickup: flags & 4 != 0,
        };
        let mut steps = Vec::new();
        while !r.done() && steps.len() < MAX_STEPS {
            steps.push(Step::decode(&mut r));
        }
        Scenario { knobs, steps }
    }
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        let k = &self.knobs;
        w.u8(u8::from(k.reset_on_deny) | u8::from(k.syn_reset) << 1 | u8::from(k.no_pickup) << 2);
        w.u8(k.policy);
        w.u8(k.max_flows);
        w.u8(k.held);
        w.u8(k.table_full);
        for s in &self.steps {
            s.encode(&mut w);
        }
        w.out
    }
}

/// The repository's policies, compiled once: the seed scenarios together
/// (endpoints, memcached and HTTP rules), the 2017 HTTP demo, and the 2017
/// L4-only one.
pub fn policies() -> &'static [Arc<Policy>] {
    static P: std::sync::OnceLock<Vec<Arc<Policy>>> = std::sync::OnceLock::new();
    P.get_or_init(|| {
        let s = |name: &str, text: &str| (name.to_string(), text.to_string());
        let sets = [
            vec![
                s(
                    "endpoints.yaml",
                    include_str!("../../policies/endpoints.yaml"),
                ),
                s(
                    "memcd-sw-security-policy.yaml",
                    include_str!("../../policies/memcd-sw-security-policy.yaml"),
                ),
                s(
                    "sw-deathstar-http.yaml",
                    include_str!("../../policies/sw-deathstar-http.yaml"),
                ),
            ],
            vec![
                s(
                    "endpoints.yaml",
                    include_str!("../../policies/starwars-2017/http-real/endpoints.yaml"),
                ),
                s(
                    "sw_policy_http.real.json",
                    include_str!("../../policies/starwars-2017/http-real/sw_policy_http.real.json"),
                ),
            ],
            vec![
                s(
                    "endpoints.yaml",
                    include_str!("../../policies/starwars-2017/l4/endpoints.yaml"),
                ),
                s(
                    "sw_policy_l4.json",
                    include_str!("../../policies/starwars-2017/l4/sw_policy_l4.json"),
                ),
            ],
        ];
        sets.iter()
            .map(|src| Arc::new(Policy::from_sources(src).expect("shipped policy loads")))
            .collect()
    })
}

const CLIENTS: &[&str] = &[
    "10.66.0.11",
    "10.66.0.12",
    "10.66.0.13",
    "10.66.0.14",
    "fd66::11",
    "fd66::12",
    "fd66::14",
];
/// L7 ports first: most of the interest is there.
const SERVICES: &[u16] = &[80, 11211, 80, 11211, 22, 8080];

fn server_for(client: IpAddr) -> IpAddr {
    match client {
        IpAddr::V4(_) => "10.66.0.2".parse().unwrap(),
        IpAddr::V6(_) => "fd66::2".parse().unwrap(),
    }
}

/// One simulated connection: both stacks' next sequence numbers and what
/// each has received through the enforcer.
#[derive(Debug, Clone)]
struct Conn {
    client: IpAddr,
    server: IpAddr,
    sport: u16,
    dport: u16,
    /// Next seq each side sends.
    c_nxt: u32,
    s_nxt: u32,
    /// Next seq each side expects (what it acknowledges).
    c_rcv: u32,
    s_rcv: u32,
}

impl Conn {
    fn new(slot: usize, client: u8, service: u8, sport: u16, isn_c: u32, isn_s: u32) -> Conn {
        let client: IpAddr = CLIENTS[usize::from(client) % CLIENTS.len()]
            .parse()
            .unwrap();
        Conn {
            client,
            server: server_for(client),
            sport: 32768 + (sport % 28000) + slot as u16,
            dport: SERVICES[usize::from(service) % SERVICES.len()],
            c_nxt: isn_c,
            s_nxt: isn_s,
            c_rcv: isn_s,
            s_rcv: isn_c,
        }
    }
}

/// Whether a whole (unfragmented) TCP frame's checksum verifies, and for
/// IPv4 its header checksum too; None for anything else. Written apart from
/// `packet::build` so that one cannot hide a bug of the other.
pub fn tcp_checksums_ok(frame: &[u8]) -> Option<bool> {
    let m = view::parse(frame).ok()?;
    if m.proto != 6 || m.fragment.is_some() || m.payload_end > frame.len() {
        return None;
    }
    let fold = |mut s: u64| {
        while s > 0xffff {
            s = (s & 0xffff) + (s >> 16);
        }
        s as u16
    };
    let add = |s: &mut u64, b: &[u8]| {
        for c in b.chunks(2) {
            *s += u64::from(c[0]) << 8 | c.get(1).map_or(0, |&x| u64::from(x));
        }
    };
    let mut ip_ok = true;
    if m.src.is_ipv4() {
        let ihl = usize::from(frame[m.l3_off] & 0x0f) * 4;
        let mut s = 0;
        add(&mut s, frame.get(m.l3_off..m.l3_off + ihl)?);
        ip_ok = fold(s) == 0xffff;
    }
    let seg = frame.get(m.l4_off..m.payload_end)?;
    let mut s = 6 + seg.len() as u64;
    match (m.src, m.dst) {
        (IpAddr::V4(a), IpAddr::V4(b)) => {
            add(&mut s, &a.octets());
            add(&mut s, &b.octets());
        }
        (IpAddr::V6(a), IpAddr::V6(b)) => {
            add(&mut s, &a.octets());
            add(&mut s, &b.octets());
        }
        _ => return None,
    }
    add(&mut s, seg);
    Some(ip_ok && fold(s) == 0xffff)
}

#[inline]
fn seq_after(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) > 0
}

/// What one run did, for the smoke test's coverage check.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    pub frames: u64,
    pub forwarded: u64,
    pub consumed: u64,
    pub dropped: u64,
    pub emitted: u64,
    pub ticks: u64,
}

struct Harness {
    engine: Engine,
    out: Output,
    now: u64,
    next_tick: u64,
    conns: Vec<Conn>,
    frag_id: u16,
    max_flows: usize,
    stats: Stats,
}

const TICK_NS: u64 = 1_000_000;

impl Harness {
    /// One frame in, then the engine's invariants.
    fn send(&mut self, port: u8, mut frame: Vec<u8>) {
        self.now += 10_000;
        self.maybe_tick();
        self.out.clear();
        let valid_in = tcp_checksums_ok(&frame);
        let v = self
            .engine
            .on_frame(port, &mut frame, self.now, &mut self.out);
        self.stats.frames += 1;
        match v {
            Verdict::Forward(p) => {
                assert!(p <= 1, "forward to port {p}");
                if valid_in == Some(true) {
                    assert_eq!(
                        tcp_checksums_ok(&frame),
                        Some(true),
                        "a valid segment was forwarded with a broken checksum: {frame:02x?}"
                    );
                }
                self.stats.forwarded += 1;
                self.observe(&frame);
            }
            Verdict::Consumed => self.stats.consumed += 1,
            Verdict::Drop(_) => self.stats.dropped += 1,
        }
        self.after_output();
        assert_eq!(self.engine.counters().frames_in, self.stats.frames);
    }

    fn maybe_tick(&mut self) {
        if self.now >= self.next_tick {
            self.tick();
        }
    }

    fn tick(&mut self) {
        self.out.clear();
        self.engine.tick(self.now, &mut self.out);
        self.stats.ticks += 1;
        self.next_tick = self.now + TICK_NS;
        self.after_output();
    }

    fn after_output(&mut self) {
        let emits = std::mem::take(&mut self.out.emits);
        for e in &emits {
            assert!(e.side <= 1, "emit to side {}", e.side);
            assert!(
                view::parse(&e.frame).is_ok(),
                "the engine emitted a frame it cannot parse: {:02x?}",
                e.frame
            );
            assert_ne!(
                tcp_checksums_ok(&e.frame),
                Some(false),
                "the engine emitted a segment with a wrong checksum: {:02x?}",
                e.frame
            );
            self.stats.emitted += 1;
            self.observe(&e.frame);
        }
        self.out.emits = emits;
        assert!(
            self.engine.flow_count() <= self.max_flows,
            "{} flows in a table of {}",
            self.engine.flow_count(),
            self.max_flows
        );
    }

    /// A frame leaves the enforcer: the receiving stack of its connection
    /// now has those bytes (what it will acknowledge).
    fn observe(&mut self, frame: &[u8]) {
        let Ok(m) = view::parse(frame) else { return };
        let Some(t) = m.tcp() else { return };
        let len = (m.payload_end - m.payload_off) as u32
            + u32::from(t.flags & SYN != 0)
            + u32::from(t.flags & FIN != 0);
        let end = t.seq.wrapping_add(len);
        for c in &mut self.conns {
            if m.src == c.server && m.dst == c.client && m.sport == c.dport && m.dport == c.sport {
                if seq_after(end, c.c_rcv) {
                    c.c_rcv = end;
                }
            } else if m.src == c.client
                && m.dst == c.server
                && m.sport == c.sport
                && m.dport == c.dport
                && seq_after(end, c.s_rcv)
            {
                c.s_rcv = end;
            }
        }
    }

    /// The frame `s` describes, and advances the sender's seq when it was in order.
    fn build(&mut self, s: &Seg) -> (u8, Vec<u8>) {
        let c = &mut self.conns[usize::from(s.slot) % SLOTS];
        let payload = s.payload.bytes();
        let flags = (ACK | PSH) ^ s.flags_xor;
        let ttl = if s.ttl == 0 { 64 } else { s.ttl };
        let (nxt, rcv) = if s.from_server {
            (&mut c.s_nxt, c.s_rcv)
        } else {
            (&mut c.c_nxt, c.c_rcv)
        };
        let seq = nxt.wrapping_add(s.seq_delta as i32 as u32);
        let ack = rcv.wrapping_add(s.ack_delta as i32 as u32);
        if s.seq_delta == 0 {
            *nxt = nxt.wrapping_add(
                payload.len() as u32 + u32::from(flags & SYN != 0) + u32::from(flags & FIN != 0),
            );
        }
        let c = c.clone();
        let f = if s.from_server {
            tcp_frame(
                c.server, c.client, c.dport, c.sport, seq, ack, flags, ttl, s.urgent, &payload,
            )
        } else {
            tcp_frame(
                c.client, c.server, c.sport, c.dport, seq, ack, flags, ttl, s.urgent, &payload,
            )
        };
        (u8::from(s.from_server), f)
    }

    fn step(&mut self, step: &Step) {
        match step {
            Step::Open {
                slot,
                client,
                service,
                sport,
                isn_c,
                isn_s,
            } => {
                let i = usize::from(*slot) % SLOTS;
                self.conns[i] = Conn::new(i, *client, *service, *sport, *isn_c, *isn_s);
            }
            Step::Handshake { slot } => {
                let c = self.conns[usize::from(*slot) % SLOTS].clone();
                let syn = tcp_frame(
                    c.client,
                    c.server,
                    c.sport,
                    c.dport,
                    c.c_nxt,
                    0,
                    SYN,
                    64,
                    0,
                    &[],
                );
                self.send(0, syn);
                let c = &mut self.conns[usize::from(*slot) % SLOTS];
                c.c_nxt = c.c_nxt.wrapping_add(1);
                let c = c.clone();
                // The server acknowledges the SYN whether or not it got it:
                // a dropped SYN makes this an unsolicited SYN-ACK.
                let syn_ack = tcp_frame(
                    c.server,
                    c.client,
                    c.dport,
                    c.sport,
                    c.s_nxt,
                    c.c_nxt,
                    SYN | ACK,
                    64,
                    0,
                    &[],
                );
                self.send(1, syn_ack);
                let c = &mut self.conns[usize::from(*slot) % SLOTS];
                c.s_nxt = c.s_nxt.wrapping_add(1);
                c.s_rcv = c.c_nxt;
                c.c_rcv = c.s_nxt;
                let c = c.clone();
                let ack = tcp_frame(
                    c.client,
                    c.server,
                    c.sport,
                    c.dport,
                    c.c_nxt,
                    c.s_nxt,
                    ACK,
                    64,
                    0,
                    &[],
                );
                self.send(0, ack);
            }
            Step::Seg(s) => {
                let (port, f) = self.build(s);
                self.send(port, f);
            }
            Step::Corrupt { seg, index, value } => {
                let (port, mut f) = self.build(seg);
                let i = usize::from(*index) % f.len();
                f[i] = *value;
                self.send(port, f);
            }
            Step::Fragments {
                seg,
                cut,
                overlap,
                b_first,
            } => {
                let (port, f) = self.build(seg);
                let hlen = if f[14] >> 4 == 4 { 20 } else { 40 };
                let l4 = f.len() - 14 - hlen;
                // Fragment offsets are in 8-byte units.
                let cut = (usize::from(*cut) % l4.max(1)) & !7;
                let from = cut.saturating_sub(usize::from(*overlap) * 8);
                let ranges = if cut == 0 {
                    vec![(0, l4)]
                } else if *b_first {
                    vec![(from, l4), (0, cut)]
                } else {
                    vec![(0, cut), (from, l4)]
                };
                self.frag_id = self.frag_id.wrapping_add(1);
                for fr in fragments(&f, u32::from(self.frag_id), &ranges) {
                    self.send(port, fr);
                }
            }
            Step::Raw { port, frame } => self.send(port & 1, frame.clone()),
            Step::Advance { amount, unit } => {
                let scale = match unit % 3 {
                    0 => 1_000,
                    1 => 1_000_000,
                    _ => 1_000_000_000,
                };
                self.now += u64::from(*amount) * scale;
                self.maybe_tick();
            }
            Step::Tick => self.tick(),
            Step::SetPolicy { which } => {
                let p = policies();
                self.engine
                    .set_policy(p[usize::from(*which) % p.len()].clone());
            }
        }
    }
}

/// Feed the scenario through a fresh engine; panics on a broken invariant
/// (the engine's own panics included).
pub fn run(s: &Scenario) -> Stats {
    let p = policies();
    run_with(p[usize::from(s.knobs.policy) % p.len()].clone(), s)
}

/// `run` under a given starting policy (the policy-loading target plays
/// conversations under the policies it loads).
pub fn run_with(policy: Arc<Policy>, s: &Scenario) -> Stats {
    let cfg = s.knobs.config();
    let max_flows = cfg.max_flows;
    let mut h = Harness {
        engine: Engine::new(policy, cfg, 0),
        out: Output::default(),
        now: 1_000_000_000,
        next_tick: 0,
        conns: (0..SLOTS)
            .map(|i| {
                Conn::new(
                    i,
                    i as u8,
                    i as u8,
                    0,
                    1000 + 7919 * i as u32,
                    50_000 + 104_729 * i as u32,
                )
            })
            .collect(),
        frag_id: 0,
        max_flows,
        stats: Stats::default(),
    };
    for step in &s.steps {
        h.step(step);
    }
    // Whatever is pending drains on the timers without panicking.
    for secs in [1, 10, 100, 100_000] {
        h.now += secs * 1_000_000_000;
        h.tick();
    }
    h.stats
}

/// Conversations the replay tests play (the seed scenarios of the lab),
/// written as scenarios: the initial corpus.
pub fn seeds() -> Vec<(&'static str, Scenario)> {
    use Step::*;
    let open = |slot: u8, client: u8, service: u8| Open {
        slot,
        client,
        service,
        sport: u16::from(slot) * 101,
        isn_c: 1000,
        isn_s: 50_000,
    };
    let data =
        |slot: u8, srv: bool, t: usize| Seg(self::Seg::data(slot, srv, Payload::template(t)));
    let fin = |slot: u8, srv: bool| {
        Seg(self::Seg {
            flags_xor: PSH | FIN,
            ..self::Seg::data(slot, srv, Payload::Literal(vec![]))
        })
    };
    let sc = |steps: Vec<Step>| Scenario {
        knobs: Knobs::default(),
        steps,
    };
    let mut v = vec![
        (
            "http-allowed-get",
            sc(vec![
                open(0, 0, 0),
                Handshake { slot: 0 },
                data(0, false, 0),
                data(0, true, 4),
                fin(0, false),
                fin(0, true),
            ]),
        ),
        (
            "http-denied-put-then-get",
            sc(vec![
                open(0, 1, 0),
                Handshake { slot: 0 },
                data(0, false, 1),
                Tick,
                data(0, false, 0),
                data(0, true, 4),
                Advance {
                    amount: 300,
                    unit: 1,
                },
                Tick,
            ]),
        ),
        (
            "http-force-put-chunked-post",
            sc(vec![
                open(0, 0, 0),
                Handshake { slot: 0 },
                data(0, false, 2),
                data(0, true, 5),
                data(0, true, 4),
                data(0, false, 3),
                data(0, true, 6),
            ]),
        ),
        (
            "memcache-text",
            sc(vec![
                open(1, 0, 1),
                Handshake { slot: 1 },
                data(1, false, 9),
                data(1, true, 11),
                data(1, false, 7),
                data(1, true, 10),
                data(1, false, 8),
                Tick,
                data(1, false, 12),
                data(1, false, 13),
            ]),
        ),
        (
            "memcache-binary-v6",
            sc(vec![
                open(2, 4, 1),
                Handshake { slot: 2 },
                data(2, false, 14),
                data(2, true, 15),
                fin(2, true),
            ]),
        ),
        (
            "out-of-order-and-retransmit",
            sc(vec![
                open(0, 0, 0),
                Handshake { slot: 0 },
                Seg(self::Seg {
                    seq_delta: 10,
                    payload: Payload::Template {
                        index: 0,
                        from: 10,
                        len: 0,
                    },
                    ..self::Seg::data(0, false, Payload::Literal(vec![]))
                }),
                Seg(self::Seg::data(
                    0,
                    false,
                    Payload::Template {
                        index: 0,
                        from: 0,
                        len: 10,
                    },
                )),
                Seg(self::Seg {
                    seq_delta: -10,
                    ..self::Seg::data(
                        0,
                        false,
                        Payload::Template {
                            index: 1,
                            from: 0,
                            len: 10,
                        },
                    )
                }),
                Advance { amount: 1, unit: 2 },
            ]),
        ),
        (
            "fragments-and-rst",
            sc(vec![
                open(3, 2, 3),
                Handshake { slot: 3 },
                Fragments {
                    seg: self::Seg::data(3, false, Payload::template(7)),
                    cut: 16,
                    overlap: 1,
                    b_first: true,
                },
                Seg(self::Seg {
                    flags_xor: ACK | PSH | RST,
                    ..self::Seg::data(3, true, Payload::Literal(vec![]))
                }),
            ]),
        ),
        (
            "slow-head-and-idle",
            sc(vec![
                open(0, 0, 0),
                Handshake { slot: 0 },
                Seg(self::Seg::data(
                    0,
                    false,
                    Payload::Literal(b"GET /v1/ HTTP/1.1\r\nX-Pad: ".to_vec()),
                )),
                Seg(self::Seg::data(
                    0,
                    false,
                    Payload::Repeat {
                        byte: b'a',
                        count: 8000,
                        scale: 0,
                    },
                )),
                Advance {
                    amount: 90,
                    unit: 2,
                },
                Tick,
            ]),
        ),
        (
            "ssh-l4-and-garbage",
            sc(vec![
                open(4, 3, 4),
                Handshake { slot: 4 },
                Seg(self::Seg::data(
                    4,
                    false,
                    Payload::Literal(b"SSH-2.0-x\r\n".to_vec()),
                )),
                Raw {
                    port: 0,
                    frame: vec![0xff; 60],
                },
                SetPolicy { which: 2 },
                Seg(self::Seg::data(
                    4,
                    true,
                    Payload::Literal(b"SSH-2.0-y\r\n".to_vec()),
                )),
            ]),
        ),
    ];
    // The same conversations under the 2017 HTTP policy and tight bounds.
    let tight: Vec<_> = v
        .iter()
        .take(3)
        .map(|(_, s)| Scenario {
            knobs: Knobs {
                policy: 1,
                max_flows: 2,
                held: 1,
                table_full: 2,
                reset_on_deny: true,
                syn_reset: true,
                no_pickup: true,
            },
            steps: s.steps.clone(),
        })
        .collect();
    for (name, s) in ["tight-1", "tight-2", "tight-3"].into_iter().zip(tight) {
        v.push((name, s));
    }
    v
}
