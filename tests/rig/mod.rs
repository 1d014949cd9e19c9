//! The in-memory test rig: a real smoltcp TCP client and server, each on its
//! own Ethernet interface, wired through `Engine::process` (client on port 0,
//! server on port 1) over links that drop, duplicate, reorder and split
//! frames. Deterministic: time is simulated and faults come from a seed.
//!
//! The application on each side is given by the test (closures over the
//! bytes received); the rig moves frames and runs timers.

#![allow(dead_code)]

use std::collections::VecDeque;
use std::sync::Arc;

use enforcer::config::EngineConfig;
use enforcer::engine::Engine;
use enforcer::packet::build::{tcp_segment, SegmentSpec};
use enforcer::packet::view::parse;
use enforcer::policy::Policy;
use enforcer::verdict::{Output, Verdict};
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{self, Device, DeviceCapabilities, Medium};
use smoltcp::socket::tcp;
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr};

/// A device whose wire is two queues the rig empties and fills.
#[derive(Default)]
pub struct Dev {
    pub rx: VecDeque<Vec<u8>>,
    pub tx: VecDeque<Vec<u8>>,
}

pub struct Rx(Vec<u8>);
pub struct Tx<'a>(&'a mut VecDeque<Vec<u8>>);

impl phy::RxToken for Rx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl phy::TxToken for Tx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut b = vec![0; len];
        let r = f(&mut b);
        self.0.push_back(b);
        r
    }
}

impl Device for Dev {
    type RxToken<'a> = Rx;
    type TxToken<'a> = Tx<'a>;

    fn receive(&mut self, _: Instant) -> Option<(Rx, Tx<'_>)> {
        let f = self.rx.pop_front()?;
        Some((Rx(f), Tx(&mut self.tx)))
    }

    fn transmit(&mut self, _: Instant) -> Option<Tx<'_>> {
        Some(Tx(&mut self.tx))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut c = DeviceCapabilities::default();
        c.medium = Medium::Ethernet;
        c.max_transmission_unit = 1514;
        c
    }
}

/// Fault probabilities, in percent, applied to every frame on every link.
#[derive(Debug, Clone, Copy, Default)]
pub struct Faults {
    pub drop: u32,
    pub dup: u32,
    pub reorder: u32,
    pub split: u32,
}

/// xorshift64*: deterministic and dependency-free.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn pct(&mut self, p: u32) -> bool {
        p > 0 && (self.next() % 100) < u64::from(p)
    }
}

pub const CLIENT_PORT: u8 = 0;
pub const SERVER_PORT: u8 = 1;
const STEP_MS: i64 = 5;

pub struct Rig {
    pub engine: Engine,
    cdev: Dev,
    sdev: Dev,
    cif: Interface,
    sif: Interface,
    csock: SocketSet<'static>,
    ssock: SocketSet<'static>,
    ch: SocketHandle,
    sh: SocketHandle,
    pub now_ms: i64,
    pub faults: Faults,
    rng: Rng,
    /// Frames in flight: (deliver at ms, to engine port or endpoint, frame).
    wire: Vec<(i64, Hop, Vec<u8>)>,
    /// Bytes each application has read.
    pub client_got: Vec<u8>,
    pub server_got: Vec<u8>,
    /// Frames the faulty links dropped.
    pub lost: u64,
    out: Output,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hop {
    /// Into the engine on this port.
    Engine(u8),
    /// Out of the engine to the endpoint on this port.
    Endpoint(u8),
}

fn iface(dev: &mut Dev, mac: u8, ip: [u8; 4], seed: u64) -> Interface {
    let mut cfg = Config::new(HardwareAddress::Ethernet(EthernetAddress([
        0x02, 0, 0, 0, 0, mac,
    ])));
    cfg.random_seed = seed;
    let mut i = Interface::new(cfg, dev, Instant::from_millis(0));
    i.update_ip_addrs(|a| {
        a.push(IpCidr::new(IpAddress::v4(ip[0], ip[1], ip[2], ip[3]), 24))
            .expect("address");
    });
    i
}

fn socket() -> tcp::Socket<'static> {
    let s = tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0; 32 * 1024]),
        tcp::SocketBuffer::new(vec![0; 32 * 1024]),
    );
    s
}

impl Rig {
    /// A connection from `client` (an address of `policies/endpoints.yaml`)
    /// to the lab server 10.66.0.2 on `port`, with the shipped policies.
    pub fn new(client: [u8; 4], port: u16, cfg: EngineConfig, faults: Faults, seed: u64) -> Rig {
        let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("policies");
        let policy = Arc::new(Policy::load(&dir).expect("shipped policies load"));
        let mut cdev = Dev::default();
        let mut sdev = Dev::default();
        let mut cif = iface(&mut cdev, 1, client, seed);
        let sif = iface(&mut sdev, 2, [10, 66, 0, 2], seed ^ 0xabcd);
        let mut csock = SocketSet::new(vec![]);
        let mut ssock = SocketSet::new(vec![]);
        let mut s = socket();
        s.listen(port).expect("listen");
        let sh = ssock.add(s);
        let mut c = socket();
        c.connect(cif.context(), (IpAddress::v4(10, 66, 0, 2), port), 40_000)
            .expect("connect");
        let ch = csock.add(c);
        Rig {
            engine: Engine::new(policy, cfg, 0),
            cdev,
            sdev,
            cif,
            sif,
            csock,
            ssock,
            ch,
            sh,
            now_ms: 0,
            faults,
            rng: Rng::new(seed),
            wire: Vec::new(),
            client_got: Vec::new(),
            server_got: Vec::new(),
            lost: 0,
            out: Output::default(),
        }
    }

    pub fn client(&mut self) -> &mut tcp::Socket<'static> {
        self.csock.get_mut::<tcp::Socket>(self.ch)
    }

    pub fn server(&mut self) -> &mut tcp::Socket<'static> {
        self.ssock.get_mut::<tcp::Socket>(self.sh)
    }

    /// Queue bytes on the client socket (all of them, stepping as needed).
    pub fn client_send(&mut self, mut data: &[u8]) {
        let mut guard = 0;
        while !data.is_empty() {
            let n = if self.client().can_send() {
                self.client().send_slice(data).unwrap_or(0)
            } else {
                0
            };
            data = &data[n..];
            if !data.is_empty() {
                self.step();
                guard += 1;
                assert!(guard < 100_000, "client cannot send");
            }
        }
    }

    pub fn server_send(&mut self, mut data: &[u8]) {
        let mut guard = 0;
        while !data.is_empty() {
            let n = if self.server().can_send() {
                self.server().send_slice(data).unwrap_or(0)
            } else {
                0
            };
            data = &data[n..];
            if !data.is_empty() {
                self.step();
                guard += 1;
                assert!(guard < 100_000, "server cannot send");
            }
        }
    }

    /// One round: both stacks poll, frames cross the links and the engine,
    /// timers run, the applications read.
    pub fn step(&mut self) {
        let now = Instant::from_millis(self.now_ms);
        self.cif.poll(now, &mut self.cdev, &mut self.csock);
        self.sif.poll(now, &mut self.sdev, &mut self.ssock);
        while let Some(f) = self.cdev.tx.pop_front() {
            self.launch(Hop::Engine(CLIENT_PORT), f);
        }
        while let Some(f) = self.sdev.tx.pop_front() {
            self.launch(Hop::Engine(SERVER_PORT), f);
        }
        self.deliver_due();
        let now_ns = self.now_ms as u64 * 1_000_000;
        self.engine.tick(now_ns, &mut self.out);
        self.collect_emits();
        self.deliver_due();
        let mut buf = [0u8; 4096];
        while self.client().can_recv() {
            match self.client().recv_slice(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => self.client_got.extend_from_slice(&buf[..n]),
            }
        }
        while self.server().can_recv() {
            match self.server().recv_slice(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => self.server_got.extend_from_slice(&buf[..n]),
            }
        }
        self.now_ms += STEP_MS;
    }

    /// Put a frame on a link, through the faults.
    fn launch(&mut self, hop: Hop, f: Vec<u8>) {
        let at = self.now_ms;
        if self.rng.pct(self.faults.drop) {
            if std::env::var("RIG_TRACE").is_ok() {
                eprintln!("{} lost {hop:?} {}", self.now_ms, summary(&f));
            }
            self.lost += 1;
            return;
        }
        // A SYN delayed past the handshake makes the engine start the flow
        // over (its L7 state with it); SYNs are not reordered or duplicated.
        let syn = parse(&f)
            .ok()
            .and_then(|m| m.tcp().map(|t| t.flags & 0x02 != 0))
            .unwrap_or(false);
        let mut frames = vec![f];
        if self.rng.pct(self.faults.split) {
            frames = split(&frames[0]);
        }
        for f in frames {
            let mut delay = 0;
            if !syn && self.rng.pct(self.faults.reorder) {
                delay = STEP_MS * (1 + (self.rng.next() % 3) as i64);
            }
            if !syn && self.rng.pct(self.faults.dup) {
                self.wire.push((at + STEP_MS, hop, f.clone()));
            }
            self.wire.push((at + delay, hop, f));
        }
    }

    fn deliver_due(&mut self) {
        // Frames the engine emits go back through here, so loop until quiet.
        for _ in 0..16 {
            let now = self.now_ms;
            let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.wire)
                .into_iter()
                .partition(|(t, ..)| *t <= now);
            self.wire = later;
            if due.is_empty() {
                return;
            }
            for (_, hop, mut f) in due {
                if std::env::var("RIG_TRACE").is_ok() {
                    eprintln!("{} deliver {hop:?} {}", self.now_ms, summary(&f));
                }
                match hop {
                    Hop::Endpoint(CLIENT_PORT) => self.cdev.rx.push_back(f),
                    Hop::Endpoint(_) => self.sdev.rx.push_back(f),
                    Hop::Engine(port) => {
                        let now_ns = self.now_ms as u64 * 1_000_000;
                        let v = self.engine.on_frame(port, &mut f, now_ns, &mut self.out);
                        if std::env::var("RIG_TRACE").is_ok() {
                            eprintln!("{} port {port} {} -> {v:?}", self.now_ms, summary(&f));
                        }
                        if let Verdict::Forward(p) = v {
                            self.launch(Hop::Endpoint(p), f);
                        }
                        self.collect_emits();
                    }
                }
            }
        }
    }

    fn collect_emits(&mut self) {
        let emits = std::mem::take(&mut self.out.emits);
        self.out.events.clear();
        for e in emits {
            self.launch(Hop::Endpoint(e.side), e.frame);
        }
    }

    /// Step until `done` holds or `max_ms` of simulated time passed.
    pub fn run_until(&mut self, max_ms: i64, mut done: impl FnMut(&mut Rig) -> bool) -> bool {
        let end = self.now_ms + max_ms;
        while self.now_ms < end {
            self.step();
            if done(self) {
                return true;
            }
        }
        false
    }

    pub fn established(&mut self) -> bool {
        self.client().state() == tcp::State::Established
            && self.server().state() == tcp::State::Established
    }

    /// Nothing unacknowledged on either side.
    pub fn quiet(&mut self) -> bool {
        self.client().send_queue() == 0 && self.server().send_queue() == 0 && self.wire.is_empty()
    }
}

/// One line about a frame, for traces.
pub fn summary(f: &[u8]) -> String {
    match parse(f) {
        Ok(m) => match m.tcp() {
            Some(t) => format!(
                "tcp {}->{} flags {:02x} seq {} ack {} len {}",
                m.sport,
                m.dport,
                t.flags,
                t.seq,
                t.ack,
                m.payload_end - m.payload_off
            ),
            None => format!("ip proto {}", m.proto),
        },
        Err(_) => format!("non-ip {} bytes", f.len()),
    }
}

/// Split a TCP data segment in two at a random-ish point (the middle),
/// options dropped; anything else is passed whole.
fn split(f: &[u8]) -> Vec<Vec<u8>> {
    let Ok(m) = parse(f) else {
        return vec![f.to_vec()];
    };
    let Some(t) = m.tcp() else {
        return vec![f.to_vec()];
    };
    let p = m.payload(f);
    if p.len() < 2 || t.flags & 0x07 != 0 {
        return vec![f.to_vec()];
    }
    let mid = p.len() / 2;
    let spec = SegmentSpec {
        reverse: false,
        seq: t.seq,
        ack: t.ack,
        flags: t.flags,
        window: t.window,
    };
    let a = tcp_segment(f, &m, &spec, &p[..mid]);
    let b = tcp_segment(
        f,
        &m,
        &SegmentSpec {
            seq: t.seq.wrapping_add(mid as u32),
            ..spec
        },
        &p[mid..],
    );
    vec![a, b]
}
