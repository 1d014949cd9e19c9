//! The benchmark's packet generator (bench/pktgen.rs): the frames it builds
//! are what the enforcer parses, and what it sends arrives, counted, on a
//! veth pair (lab part: root; skipped otherwise, a failure under CI=true).

#[path = "../bench/pktgen_frame.rs"]
mod frame;
mod kit;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use enforcer::packet::{parse, L4Meta};
use frame::{Proto, Spec};
use kit::lab;

fn spec(proto: Proto, size: usize) -> Spec {
    Spec {
        src_mac: [2, 0, 0, 0, 0, 1],
        dst_mac: [2, 0, 0, 0, 0, 2],
        src: [10, 66, 0, 11],
        dst: [10, 66, 0, 2],
        dport: 9,
        proto,
        size,
    }
}

/// Ones' complement sum over `data` is 0xffff when its checksum is right.
fn sums_to_ffff(pseudo: &[u8], data: &[u8]) -> bool {
    let mut s: u32 = 0;
    for c in pseudo.chunks(2).chain(data.chunks(2)) {
        s += u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32;
    }
    while s >> 16 != 0 {
        s = (s & 0xffff) + (s >> 16);
    }
    s == 0xffff
}

#[test]
fn generated_frames_parse_as_the_engine_sees_them() {
    for proto in [Proto::Udp, Proto::Tcp] {
        for size in [64, 65, 128, 1518] {
            for flow in [0u32, 1, 999] {
                let s = spec(proto, size);
                let f = frame::build(&s, flow);
                // The smallest frames hold the headers and the marker: a
                // 64-byte TCP frame does not (20 bytes of TCP header), so it grows.
                let least = if proto == Proto::Tcp { 66 } else { 60 };
                assert_eq!(f.len(), (size - 4).max(least), "{proto:?} {size}");
                let m = parse(&f).unwrap_or_else(|e| panic!("{proto:?} {size}: {e:?}"));
                assert_eq!(m.src.to_string(), "10.66.0.11");
                assert_eq!(m.dst.to_string(), "10.66.0.2");
                assert_eq!(m.sport, frame::BASE_PORT + flow as u16);
                assert_eq!(m.dport, 9);
                assert_eq!(m.payload_end, f.len(), "IP length covers the frame");
                match (proto, m.l4) {
                    (Proto::Udp, L4Meta::Udp) => assert_eq!(m.proto, 17),
                    (Proto::Tcp, L4Meta::Tcp(t)) => {
                        assert_eq!(t.flags, 0x18, "ACK|PSH");
                        let mut pseudo = Vec::new();
                        pseudo.extend_from_slice(&s.src);
                        pseudo.extend_from_slice(&s.dst);
                        pseudo.extend_from_slice(&[0, 6]);
                        pseudo.extend_from_slice(&((f.len() - m.l4_off) as u16).to_be_bytes());
                        assert!(sums_to_ffff(&pseudo, &f[m.l4_off..]), "TCP checksum");
                    }
                    other => panic!("{proto:?} parsed as {other:?}"),
                }
                assert!(sums_to_ffff(&[], &f[14..34]), "IPv4 header checksum");
                assert_eq!(frame::flow_of(&f), Some(flow));
            }
        }
    }
}

#[test]
fn the_sink_counts_only_generated_frames() {
    let f = frame::build(&spec(Proto::Udp, 64), 5);
    assert_eq!(frame::flow_of(&f), Some(5));
    let mut other = f.clone();
    let pay = 14 + 20 + 8;
    other[pay] ^= 0xff; // the marker broken
    assert_eq!(frame::flow_of(&other), None);
    let mut arp = f.clone();
    arp[12..14].copy_from_slice(&[0x08, 0x06]);
    assert_eq!(frame::flow_of(&arp), None);
    assert_eq!(frame::flow_of(&f[..30]), None, "short frames are not ours");
}

const PKTGEN: &str = env!("CARGO_BIN_EXE_enforcer-pktgen");

/// Two namespaces joined by one veth pair, removed on drop (also when an
/// assertion fails).
struct Pair(String);

impl Pair {
    fn up() -> Pair {
        let p = format!("pg{}", std::process::id());
        let pair = Pair(p.clone());
        let sh = format!(
            "set -e; ip netns add {p}-a; ip netns add {p}-b; \
             ip -n {p}-a link add eth0 type veth peer name eth0 netns {p}-b; \
             for n in a b; do ip -n {p}-$n link set lo up; ip -n {p}-$n link set eth0 up; \
             ip netns exec {p}-$n ethtool -K eth0 tx off tso off gso off gro off >/dev/null 2>&1 || true; done"
        );
        let st = Command::new("bash").args(["-c", &sh]).status().unwrap();
        assert!(st.success(), "veth pair setup failed");
        pair
    }
    fn ns(&self, side: &str) -> String {
        format!("{}-{side}", self.0)
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        for side in ["a", "b"] {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.ns(side)])
                .status();
        }
    }
}

#[test]
fn what_the_generator_sends_the_sink_counts_on_a_veth_pair() {
    if !lab::available() {
        return;
    }
    let pair = Pair::up();
    let mac = Command::new("ip")
        .args([
            "netns",
            "exec",
            &pair.ns("b"),
            "cat",
            "/sys/class/net/eth0/address",
        ])
        .output()
        .unwrap();
    let mac = String::from_utf8(mac.stdout).unwrap().trim().to_string();
    let mut sink = Command::new("ip")
        .args([
            "netns",
            "exec",
            &pair.ns("b"),
            PKTGEN,
            "sink",
            "--iface",
            "eth0",
        ])
        .args(["--seconds", "30"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Ready once its socket is bound.
    let mut err = BufReader::new(sink.stderr.take().unwrap());
    let t = Instant::now();
    let mut line = String::new();
    while !line.starts_with("sink ready") {
        line.clear();
        assert!(err.read_line(&mut line).unwrap() > 0, "sink exited early");
        assert!(t.elapsed() < Duration::from_secs(20), "sink not ready");
    }
    let sent = Command::new("ip")
        .args([
            "netns",
            "exec",
            &pair.ns("a"),
            PKTGEN,
            "send",
            "--iface",
            "eth0",
        ])
        .args([
            "--dst-mac",
            &mac,
            "--src",
            "10.99.0.1",
            "--dst",
            "10.99.0.2",
        ])
        .args([
            "--flows",
            "7",
            "--rate",
            "20000",
            "--count",
            "6000",
            "--seconds",
            "20",
        ])
        .output()
        .unwrap();
    assert!(
        sent.status.success(),
        "{}",
        String::from_utf8_lossy(&sent.stderr)
    );
    let sent: serde_json::Value = serde_json::from_slice(&sent.stdout).unwrap();
    assert_eq!(sent["sent"], 6000);
    std::thread::sleep(Duration::from_millis(300));
    unsafe { libc::kill(sink.id() as i32, libc::SIGINT) };
    let out = sink.wait_with_output().unwrap();
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "sink output {:?}: {e}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    assert_eq!(got["received"], 6000, "{got}");
    assert_eq!(got["flows"], 7, "{got}");
}
