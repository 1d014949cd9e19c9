//! Packet generator and sink for lab benchmarks, over AF_XDP so that it runs
//! where the kernel has no pktgen module.
//!
//!   enforcer-pktgen send --iface IF --dst-mac MAC --src IP --dst IP
//!       [--proto udp|tcp] [--size 64] [--flows 1] [--rate PPS (0 = full speed)]
//!       [--seconds 5] [--count N (stop after N frames)] [--dport 9] [--queue 0]
//!   enforcer-pktgen sink --iface IF [--queues N] [--seconds 5]
//!
//! `send` transmits generated frames (see `pktgen_frame.rs`) from one TX
//! socket; `sink` counts the generated frames arriving on every RX queue of
//! IF (other frames are counted apart and dropped) for the given time, or
//! until SIGINT/SIGTERM. Each prints one JSON line.

#[path = "pktgen_frame.rs"]
mod frame;

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use xsk_rs::config::{
    BindFlags, FrameSize, Interface, LibxdpFlags, QueueSize, SocketConfig, UmemConfig,
};
use xsk_rs::{FrameDesc, Socket, Umem};

use frame::{Proto, Spec};

const FRAMES: u32 = 4096;
const RING: u32 = 2048;
const BATCH: usize = 64;

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

fn die(msg: impl std::fmt::Display) -> ! {
    eprintln!("enforcer-pktgen: {msg}");
    std::process::exit(2)
}

fn mac(s: &str) -> [u8; 6] {
    let v: Vec<u8> = s
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).unwrap_or_else(|_| die(format!("bad MAC {s}"))))
        .collect();
    v.try_into().unwrap_or_else(|_| die(format!("bad MAC {s}")))
}

fn ip4(s: &str) -> [u8; 4] {
    s.parse::<std::net::Ipv4Addr>()
        .unwrap_or_else(|_| die(format!("bad IPv4 address {s}")))
        .octets()
}

fn iface_mac(iface: &str) -> [u8; 6] {
    let p = format!("/sys/class/net/{iface}/address");
    mac(std::fs::read_to_string(&p)
        .unwrap_or_else(|e| die(format!("{p}: {e}")))
        .trim())
}

fn umem() -> (Umem, Vec<FrameDesc>) {
    let cfg = UmemConfig::builder()
        .frame_size(FrameSize::new(2048).unwrap())
        .fill_queue_size(QueueSize::new(RING).unwrap())
        .comp_queue_size(QueueSize::new(RING).unwrap())
        .build()
        .unwrap();
    Umem::new(cfg, NonZeroU32::new(FRAMES).unwrap(), false)
        .unwrap_or_else(|e| die(format!("UMEM: {e}")))
}

fn socket_cfg(inhibit: bool) -> SocketConfig {
    let mut b = SocketConfig::builder();
    b.rx_queue_size(QueueSize::new(RING).unwrap())
        .tx_queue_size(QueueSize::new(RING).unwrap())
        .bind_flags(BindFlags::XDP_USE_NEED_WAKEUP);
    if inhibit {
        // A sender needs no XDP program: the interface's RX stays the kernel's.
        b.libxdp_flags(LibxdpFlags::XSK_LIBXDP_FLAGS_INHIBIT_PROG_LOAD);
    }
    b.build()
}

struct Args(Vec<String>);

impl Args {
    fn get(&self, name: &str) -> Option<&str> {
        let i = self.0.iter().position(|a| a == name)?;
        Some(
            self.0
                .get(i + 1)
                .unwrap_or_else(|| die(format!("{name} needs a value"))),
        )
    }
    fn num<T: std::str::FromStr>(&self, name: &str, default: T) -> T {
        self.get(name).map_or(default, |v| {
            v.parse()
                .unwrap_or_else(|_| die(format!("{name}: bad number {v}")))
        })
    }
    fn need(&self, name: &str) -> &str {
        self.get(name)
            .unwrap_or_else(|| die(format!("{name} is required")))
    }
}

fn send(a: &Args) {
    let iface = a.need("--iface");
    let spec = Spec {
        src_mac: a.get("--src-mac").map_or_else(|| iface_mac(iface), mac),
        dst_mac: mac(a.need("--dst-mac")),
        src: ip4(a.need("--src")),
        dst: ip4(a.need("--dst")),
        dport: a.num("--dport", 9),
        proto: match a.get("--proto").unwrap_or("udp") {
            "udp" => Proto::Udp,
            "tcp" => Proto::Tcp,
            p => die(format!("--proto: udp or tcp, not {p}")),
        },
        size: a.num("--size", 64),
    };
    let flows: u32 = a.num("--flows", 1u32).max(1);
    let rate: f64 = a.num("--rate", 0.0);
    let secs: f64 = a.num("--seconds", 5.0);
    let queue: u32 = a.num("--queue", 0);
    let count: u64 = a.num("--count", u64::MAX);
    if frame::frame_len(&spec) > 2048 - 256 {
        die("--size: at most 1792 bytes");
    }

    let (umem, mut descs) = umem();
    let ifname: Interface = iface
        .parse()
        .unwrap_or_else(|e| die(format!("{iface}: {e}")));
    // SAFETY: this UMEM is bound to this one (interface, queue).
    let (mut tx, _rx, rings) = unsafe { Socket::new(socket_cfg(true), &umem, &ifname, queue) }
        .unwrap_or_else(|e| die(format!("AF_XDP socket on {iface} queue {queue}: {e}")));
    let (_fq, mut cq) = rings.unwrap_or_else(|| die("no fill/completion rings"));

    // Every UMEM frame holds one flow's frame for good: sending is only
    // descriptors; completions hand the same frames back.
    for (i, d) in descs.iter_mut().enumerate() {
        let bytes = frame::build(&spec, i as u32 % flows);
        // SAFETY: the frame is ours, on no ring.
        let mut data = unsafe { umem.data_mut(d) };
        use std::io::Write;
        data.cursor().write_all(&bytes).unwrap();
    }
    // Frames on the TX ring or in the kernel; the rest is `free`, in send order.
    let len = frame::frame_len(&spec);
    let mut free: std::collections::VecDeque<FrameDesc> = descs.into_iter().collect();
    let mut done = vec![FrameDesc::default(); BATCH * 4];
    let t0 = Instant::now();
    let end = Duration::from_secs_f64(secs);
    let mut sent: u64 = 0;
    let mut batch: Vec<FrameDesc> = Vec::with_capacity(BATCH);
    while !STOP.load(Ordering::Relaxed) {
        let el = t0.elapsed();
        if el >= end {
            break;
        }
        // SAFETY: completions return frames of this UMEM.
        let n = unsafe { cq.consume(&mut done) };
        // A completion gives the address back with length 0; the bytes are
        // still there, so only the length is set again.
        for d in done[..n].iter_mut() {
            // SAFETY: completed, so ours again.
            unsafe { umem.data_mut(d) }.cursor().set_pos(len);
        }
        free.extend(&done[..n]);
        if sent >= count {
            break;
        }
        let mut want = BATCH.min((count - sent) as usize);
        if rate > 0.0 {
            let due = (el.as_secs_f64() * rate) as u64;
            want = want.min(due.saturating_sub(sent) as usize);
            if want == 0 {
                std::hint::spin_loop();
                continue;
            }
        }
        batch.clear();
        while batch.len() < want {
            match free.pop_front() {
                Some(d) => batch.push(d),
                None => break,
            }
        }
        if batch.is_empty() {
            let _ = tx.wakeup();
            continue;
        }
        // SAFETY: the frames are ours and hold complete frames.
        let put = unsafe { tx.produce(&batch) };
        for d in batch.drain(..).skip(put).rev() {
            free.push_front(d);
        }
        sent += put as u64;
        // Copy mode sends only inside sendto().
        let _ = tx.wakeup();
    }
    let secs = t0.elapsed().as_secs_f64();
    // Let the last frames leave before the socket closes.
    for _ in 0..20 {
        let _ = tx.wakeup();
        // SAFETY: as above.
        unsafe { cq.consume(&mut done) };
        std::thread::sleep(Duration::from_millis(1));
    }
    println!(
        "{{\"sent\":{sent},\"seconds\":{secs:.3},\"pps\":{:.0},\"frame_bytes\":{},\"flows\":{flows}}}",
        sent as f64 / secs,
        frame::frame_len(&spec) + 4
    );
}

fn sink(a: &Args) {
    let iface = a.need("--iface").to_string();
    let queues: u32 = a.num("--queues", 1u32).max(1);
    let secs: f64 = a.num("--seconds", 5.0);
    let ifname: Interface = iface
        .parse()
        .unwrap_or_else(|e| die(format!("{iface}: {e}")));
    let mut socks = Vec::new();
    for q in 0..queues {
        let (umem, mut descs) = umem();
        // SAFETY: one UMEM per (interface, queue).
        let (_tx, rx, rings) = unsafe { Socket::new(socket_cfg(false), &umem, &ifname, q) }
            .unwrap_or_else(|e| die(format!("AF_XDP socket on {iface} queue {q}: {e}")));
        let (mut fq, _cq) = rings.unwrap_or_else(|| die("no fill/completion rings"));
        let take = descs.len().min(RING as usize);
        // SAFETY: fresh frames of this UMEM.
        let put = unsafe { fq.produce(&descs[..take]) };
        descs.drain(..put);
        socks.push((umem, rx, fq));
    }
    eprintln!("sink ready iface={iface} queues={queues}");
    let t0 = Instant::now();
    let end = Duration::from_secs_f64(secs);
    let (mut frames, mut flows_seen, mut other) = (0u64, std::collections::HashSet::new(), 0u64);
    let mut got = vec![FrameDesc::default(); BATCH];
    let mut idle = 0u32;
    while !STOP.load(Ordering::Relaxed) && t0.elapsed() < end {
        let mut work = 0;
        for (umem, rx, fq) in socks.iter_mut() {
            // SAFETY: the RX ring hands us frames of this UMEM.
            let n = unsafe { rx.consume(&mut got) };
            work += n;
            for d in &got[..n] {
                // SAFETY: just received.
                let data = unsafe { umem.data(d) };
                match frame::flow_of(data.contents()) {
                    Some(f) => {
                        frames += 1;
                        if flows_seen.len() < 100_000 {
                            flows_seen.insert(f);
                        }
                    }
                    None => other += 1,
                }
            }
            // SAFETY: the frames are ours again.
            let mut off = 0;
            while off < n {
                off += unsafe { fq.produce(&got[off..n]) };
            }
        }
        if work == 0 {
            idle += 1;
            if idle > 1000 {
                std::thread::sleep(Duration::from_micros(50));
            }
        } else {
            idle = 0;
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    let mut dropped = 0;
    for (_, rx, _) in &socks {
        if let Ok(st) = rx.fd().xdp_statistics() {
            dropped += st.rx_dropped() + st.rx_ring_full() + st.rx_fill_ring_empty_descs();
        }
    }
    eprintln!("sink: kernel dropped {dropped}");
    println!(
        "{{\"received\":{frames},\"flows\":{},\"other\":{other},\"seconds\":{secs:.3}}}",
        flows_seen.len()
    );
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as usize);
        libc::signal(libc::SIGTERM, on_signal as *const () as usize);
    }
    let a = Args(args.iter().skip(1).cloned().collect());
    match args.first().map(String::as_str) {
        Some("send") => send(&a),
        Some("sink") => sink(&a),
        _ => {
            eprintln!("usage: enforcer-pktgen send|sink --iface IF ... (see bench/pktgen.rs)");
            std::process::exit(2)
        }
    }
}
