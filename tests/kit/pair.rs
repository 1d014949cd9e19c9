//! One TCP connection in memory: two endpoints (`tcp::Endpoint`) stepped
//! through a middle (the engine, or a bare stream in the stream layer's unit
//! tests), on virtual time.
//!
//! Also compiled into the unit tests of `src/stream`, next to the frame
//! builders and endpoints (`super::frames`, `super::tcp`).
#![allow(dead_code)]

use std::collections::VecDeque;

use enforcer::config::EngineConfig;
use enforcer::log::{Event, FlowTuple};
use enforcer::packet::build::patch_tcp;
use enforcer::packet::view::parse;
use enforcer::verdict::{other, Output, Range, RangeOp, Side, Verdict};

use super::frames::{tcp, Ep, ACK, PSH, SYN};
use super::tcp::Endpoint;

pub const CLIENT: Side = 0;
pub const SERVER: Side = 1;

/// What sits between the endpoints: frames in on a side, a verdict for each
/// and frames out (`Output::emits`), and timers.
pub trait Middle {
    fn on_frame(&mut self, side: Side, frame: &mut [u8], now: u64, out: &mut Output) -> Verdict;
    fn tick(&mut self, now: u64, out: &mut Output);
}

/// Two endpoints and a middle. Frames a side sends go through the middle at
/// once; what comes out waits in `to_client` / `to_server` until `deliver`.
pub struct Pair<M> {
    pub mid: M,
    pub client: Endpoint,
    pub server: Endpoint,
    /// Virtual time (ns), passed to the middle.
    pub now: u64,
    /// Added to `now` before each frame enters the middle.
    pub step_ns: u64,
    /// Endpoints acknowledge every segment with data or FIN when it is
    /// delivered (`run` feeds those ACKs back through the middle).
    pub auto_ack: bool,
    /// Drop the next frame the middle sends towards this side (a lost segment).
    pub lose_next_to: Option<Side>,
    pub to_client: Vec<Vec<u8>>,
    pub to_server: Vec<Vec<u8>>,
    /// ACKs the endpoints owe, not yet sent.
    acks_due: VecDeque<(Side, Vec<u8>)>,
    /// Every verdict and event, in order, and how many frames the middle
    /// built or released itself (`Output::emits`).
    pub verdicts: Vec<Verdict>,
    pub events: Vec<Event>,
    pub emitted: usize,
    /// Honours published ranges (`KIT_KERNEL_PATH`), if set.
    pub shortcut: Option<Shortcut>,
    out: Output,
}

impl<M: Middle> Pair<M> {
    /// `client` about to connect to `server` with initial sequence numbers
    /// `isn` (client, server); `open` sends the handshake.
    pub fn new(mid: M, client: Ep, server: Ep, isn: (u32, u32)) -> Pair<M> {
        let (c, s) = (isn.0.wrapping_add(1), isn.1.wrapping_add(1));
        Pair {
            mid,
            client: Endpoint::new(client, server, c, s),
            server: Endpoint::new(server, client, s, c),
            now: 0,
            step_ns: 0,
            auto_ack: false,
            lose_next_to: None,
            to_client: Vec::new(),
            to_server: Vec::new(),
            acks_due: VecDeque::new(),
            verdicts: Vec::new(),
            events: Vec::new(),
            emitted: 0,
            shortcut: Shortcut::from_env(u64::from(isn.0)),
            out: Output::default(),
        }
    }

    /// The SYN and SYN-ACK cross the middle (the endpoints start past them),
    /// and with `auto_ack` the client's ACK too.
    pub fn open(&mut self) {
        let (c, s) = (&self.client, &self.server);
        let syn = tcp(c.me, s.me, c.snd_nxt.wrapping_sub(1), 0, SYN, &[]);
        let syn_ack = tcp(
            s.me,
            c.me,
            s.snd_nxt.wrapping_sub(1),
            c.snd_nxt,
            SYN | ACK,
            &[],
        );
        self.input(CLIENT, syn);
        self.input(SERVER, syn_ack);
        self.to_client.clear();
        self.to_server.clear();
        if self.auto_ack {
            let f = self.client.ack();
            self.input(CLIENT, f);
            self.run();
        }
    }

    pub fn endpoint(&mut self, side: Side) -> &mut Endpoint {
        if side == CLIENT {
            &mut self.client
        } else {
            &mut self.server
        }
    }

    /// One frame into the middle on `side`; what comes out is queued.
    pub fn input(&mut self, side: Side, mut f: Vec<u8>) -> Verdict {
        self.now += self.step_ns;
        if let Some(sc) = self.shortcut.as_mut() {
            if sc.take(side, &mut f) {
                // Not through the middle: forwarded as it would be.
                let to = other(side);
                self.route(to, f);
                self.verdicts.push(Verdict::Forward(to));
                return Verdict::Forward(to);
            }
        }
        let v = self.mid.on_frame(side, &mut f, self.now, &mut self.out);
        if let Verdict::Forward(to) = v {
            self.route(to, f);
        }
        self.drain();
        self.verdicts.push(v);
        v
    }

    fn drain(&mut self) {
        match self.shortcut.as_mut() {
            Some(sc) => sc.apply(&mut self.out),
            None => self.out.ranges.clear(),
        }
        self.emitted += self.out.emits.len();
        for e in std::mem::take(&mut self.out.emits) {
            self.route(e.side, e.frame);
        }
        self.events.append(&mut self.out.events);
    }

    fn route(&mut self, to: Side, f: Vec<u8>) {
        if self.lose_next_to == Some(to) {
            self.lose_next_to = None;
            return;
        }
        if to == SERVER {
            self.to_server.push(f);
        } else {
            self.to_client.push(f);
        }
    }

    /// Run the middle's timers `dt` later.
    pub fn tick(&mut self, dt: u64) {
        self.now += dt;
        self.mid.tick(self.now, &mut self.out);
        self.drain();
    }

    /// A data segment from the client, not yet sent.
    pub fn client_seg(&mut self, data: &[u8]) -> Vec<u8> {
        self.client.data_segment(data)
    }

    pub fn server_seg(&mut self, data: &[u8]) -> Vec<u8> {
        self.server.data_segment(data)
    }

    /// The client sends `data` as one segment (through the middle, not delivered).
    pub fn client_send(&mut self, data: &[u8]) -> Verdict {
        let f = self.client_seg(data);
        self.input(CLIENT, f)
    }

    pub fn server_send(&mut self, data: &[u8]) -> Verdict {
        let f = self.server_seg(data);
        self.input(SERVER, f)
    }

    /// The client sends `data` as one segment and what comes out is delivered.
    pub fn client_says(&mut self, data: &[u8]) -> Verdict {
        let v = self.client_send(data);
        self.deliver();
        v
    }

    pub fn server_says(&mut self, data: &[u8]) -> Verdict {
        let v = self.server_send(data);
        self.deliver();
        v
    }

    /// The client sends `data` in segments of at most `seg` bytes, then the
    /// conversation runs until quiet.
    pub fn client_sends(&mut self, data: &[u8], seg: usize) {
        for chunk in data.chunks(seg) {
            self.client_send(chunk);
        }
        self.run();
    }

    pub fn server_sends(&mut self, data: &[u8]) {
        self.server_send(data);
        self.run();
    }

    /// Deliver everything in flight to the endpoints.
    pub fn deliver(&mut self) {
        for f in std::mem::take(&mut self.to_server) {
            if self.server.receive(&f) && self.auto_ack {
                self.acks_due.push_back((SERVER, self.server.ack()));
            }
        }
        for f in std::mem::take(&mut self.to_client) {
            if self.client.receive(&f) && self.auto_ack {
                self.acks_due.push_back((CLIENT, self.client.ack()));
            }
        }
    }

    /// Deliver, send the ACKs that owes, and again, until nothing moves.
    pub fn run(&mut self) {
        for _ in 0..100_000 {
            self.deliver();
            let Some((side, f)) = self.acks_due.pop_front() else {
                return;
            };
            self.input(side, f);
        }
        panic!("runaway conversation");
    }

    /// Both endpoints acknowledge what they have.
    pub fn acks(&mut self) {
        let f = self.client.ack();
        self.input(CLIENT, f);
        let f = self.server.ack();
        self.input(SERVER, f);
        self.deliver();
    }

    /// After everything settled, each side has acknowledged all the other
    /// sent, and no RST came.
    pub fn assert_healthy(&mut self) {
        self.acks();
        self.acks();
        assert_eq!(
            self.server.acked, self.server.snd_nxt,
            "server data not all acked by client"
        );
        assert_eq!(
            self.client.acked, self.client.snd_nxt,
            "client data not all acked by server"
        );
        assert!(!self.client.rst && !self.server.rst, "no reset");
    }

    /// Every segment arrived in order at both endpoints, and no RST came.
    pub fn healthy(&self) {
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

/// What a kernel path does with the ranges the engine publishes
/// (`Output::ranges`, docs/stream.md "A kernel path for known bytes"): a
/// segment a range covers goes on to the other side without the engine,
/// its window field replaced. Honoured on a random subset of frames only:
/// an entry written late, deleted early or never honoured must all be safe,
/// so the stream has to cope with any mix of frames that took either path.
pub struct Shortcut {
    /// The `Bypass` in force per flow and side; a handful at most.
    ranges: Vec<Range>,
    rng: u64,
    /// Percent of covered frames that take the shortcut.
    pub pct: u64,
    /// Frames that took it.
    pub taken: u64,
}

/// `KIT_KERNEL_PATH=<percent>`: the kit's middles honour published ranges
/// on that share of the frames they cover (and the engine publishes them
/// for bodies from 512 bytes on). Unset: no ranges, as without a shell
/// that honours them.
pub fn kernel_path_pct() -> Option<u64> {
    std::env::var("KIT_KERNEL_PATH")
        .ok()
        .and_then(|v| v.parse().ok())
}

/// `cfg` with ranges published when the kit honours them.
pub fn kernel_path_cfg(cfg: EngineConfig) -> EngineConfig {
    match kernel_path_pct() {
        Some(_) => EngineConfig {
            kernel_path: true,
            kernel_path_min: 512,
            ..cfg
        },
        None => cfg,
    }
}

impl Shortcut {
    pub fn new(pct: u64, seed: u64) -> Shortcut {
        Shortcut {
            ranges: Default::default(),
            rng: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
            pct,
            taken: 0,
        }
    }

    /// From the environment (`kernel_path_pct`), or None.
    pub fn from_env(seed: u64) -> Option<Shortcut> {
        kernel_path_pct().map(|p| Shortcut::new(p, seed))
    }

    /// Take in the changes one call published, in order.
    pub fn apply(&mut self, out: &mut Output) {
        for r in out.ranges.drain(..) {
            self.ranges.retain(|k| (k.flow, k.dir) != (r.flow, r.dir));
            if matches!(r.op, RangeOp::Bypass { .. }) {
                self.ranges.push(r);
            }
        }
    }

    /// Ranges in force now.
    pub fn len(&self) -> usize {
        self.ranges.len()
    }

    /// The XDP program's test: true when `frame`, arriving on `side`, goes
    /// straight to the other side (its window already replaced).
    pub fn take(&mut self, side: Side, frame: &mut [u8]) -> bool {
        let Ok(m) = parse(frame) else { return false };
        let Some(t) = m.tcp().copied() else {
            return false;
        };
        if m.fragment.is_some() || t.flags & !(ACK | PSH) != 0 || t.flags & ACK == 0 {
            return false;
        }
        let len = (m.payload_end - m.payload_off) as u32;
        if len == 0 {
            return false;
        }
        let fwd = FlowTuple {
            src: m.src,
            dst: m.dst,
            proto: m.proto,
            sport: m.sport,
            dport: m.dport,
        };
        let rev = FlowTuple {
            src: m.dst,
            dst: m.src,
            proto: m.proto,
            sport: m.dport,
            dport: m.sport,
        };
        let Some(RangeOp::Bypass {
            lo,
            hi,
            ack,
            win,
            win_out,
        }) = self
            .ranges
            .iter()
            .find(|k| k.dir == side && (k.flow == fwd || k.flow == rev))
            .map(|k| k.op)
        else {
            return false;
        };
        let span = hi.wrapping_sub(lo);
        if len > span || t.seq.wrapping_sub(lo) > span - len || t.ack != ack || t.window != win {
            return false;
        }
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        if self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D) % 100 >= self.pct {
            return false;
        }
        if win_out != win {
            patch_tcp(frame, &m, 14, &win_out.to_be_bytes());
        }
        self.taken += 1;
        true
    }
}
