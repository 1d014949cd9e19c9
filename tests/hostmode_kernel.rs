//! Host mode's kernel plumbing, without the dataplane: a frame written into
//! the TAP reaches a local listener, and the listener's answer is routed
//! back into the TAP by the policy-routing rules; stopping removes it all.
//! Needs root (network namespaces); under CI=true a missing root fails.

mod kit;

use std::net::{IpAddr, TcpListener};
use std::process::Command;
use std::time::{Duration, Instant};

use enforcer::hostmode::routes::{self, HostRouting, TABLE};
use enforcer::hostmode::tap::Tap;
use etherparse::{PacketBuilder, SlicedPacket, TransportSlice};

fn root_or_skip() -> bool {
    kit::lab::gate(kit::lab::root())
}

fn sh(cmd: &str) {
    let s = Command::new("sh").arg("-c").arg(cmd).status().expect("sh");
    assert!(s.success(), "failed: {cmd}");
}

/// A namespace name unique to this process: concurrent runs (other
/// checkouts, CI) never share one.
fn name(base: &str) -> String {
    format!("hmk{}-{base}", std::process::id())
}

struct Netns(String);
impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn enter(ns: &str) {
    let f = std::fs::File::open(format!("/var/run/netns/{ns}")).expect("netns file");
    use std::os::fd::AsRawFd;
    // SAFETY: `f` is an open netns file for the duration of the call.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns");
}

#[test]
fn tap_reentry_and_policy_routing() {
    if !root_or_skip() {
        return;
    }
    let ns = Netns(name("srv"));
    let n = ns.0.clone();
    let _ = Command::new("ip").args(["netns", "del", &n]).status();
    sh(&format!("ip netns add {n}"));
    sh(&format!("ip -n {n} link set lo up"));
    sh(&format!(
        "ip -n {n} link add eth0 type veth peer name eth0p"
    ));
    sh(&format!("ip -n {n} addr add 10.78.0.2/24 dev eth0"));
    sh(&format!("ip -n {n} link set eth0 up"));
    sh(&format!("ip -n {n} link set eth0p up"));

    // Namespaces are per thread: do the work on a thread that entered it.
    let t = std::thread::spawn(move || {
        enter(&n);
        let listener = TcpListener::bind("10.78.0.2:8080").expect("listen");
        let tap_mac = [0x02, 0xe7, 0, 0, 0, 1];
        let gw_mac = [0x02, 0xe7, 0, 0, 0, 2];
        let client_mac = [0x02, 0xc1, 0, 0, 0, 3];
        let mut tap = Tap::create("enf-hmk0").expect("tap");
        let host: IpAddr = "10.78.0.2".parse().unwrap();
        let mut routing =
            HostRouting::setup(tap.name(), tap_mac, gw_mac, &[host]).expect("routing");
        let rules = Command::new("ip").args(["rule", "show"]).output().unwrap();
        assert!(
            String::from_utf8_lossy(&rules.stdout).contains("10.78.0.2"),
            "rule installed"
        );

        let mut syn = Vec::new();
        PacketBuilder::ethernet2(client_mac, tap_mac)
            .ipv4([10, 78, 0, 1], [10, 78, 0, 2], 64)
            .tcp(40000, 8080, 1000, 64240)
            .syn()
            .write(&mut syn, &[])
            .unwrap();
        tap.send(&syn).expect("write syn");

        let mut buf = [0u8; 2048];
        let deadline = Instant::now() + Duration::from_secs(3);
        let mut synack = None;
        while Instant::now() < deadline && synack.is_none() {
            match tap.recv(&mut buf).expect("read tap") {
                Some(n) => {
                    let Ok(p) = SlicedPacket::from_ethernet(&buf[..n]) else {
                        continue;
                    };
                    if let Some(TransportSlice::Tcp(tcp)) = &p.transport {
                        if tcp.syn() && tcp.ack() && tcp.destination_port() == 40000 {
                            synack = Some((
                                buf[..6].to_vec(),
                                buf[6..12].to_vec(),
                                tcp.acknowledgment_number(),
                            ));
                        }
                    }
                }
                None => std::thread::sleep(Duration::from_millis(10)),
            }
        }
        let (dst, src, ack) = synack.expect("SYN-ACK routed back into the TAP");
        assert_eq!(
            dst,
            gw_mac.to_vec(),
            "towards the fake gateway (the enforcer)"
        );
        assert_eq!(src, tap_mac.to_vec());
        assert_eq!(ack, 1001);

        routing.teardown();
        let rules = Command::new("ip")
            .args(["rule", "show", "table", &TABLE.to_string()])
            .output()
            .unwrap();
        assert!(
            String::from_utf8_lossy(&rules.stdout).trim().is_empty(),
            "rules removed"
        );
        assert_eq!(routes::remove_stale(), 0);
        drop(tap);
        let link = Command::new("ip")
            .args(["link", "show", "enf-hmk0"])
            .output()
            .unwrap();
        assert!(!link.status.success(), "TAP gone with its fd");
        drop(listener);
    });
    let r = t.join();
    drop(ns);
    if let Err(e) = r {
        std::panic::resume_unwind(e);
    }
}

fn ping(ns: &str, dst: &str) -> bool {
    Command::new("ip")
        .args(["netns", "exec", ns, "ping", "-c", "1", "-W", "1", dst])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Reachable: one of three pings answered (a loaded machine may lose one).
fn reachable(ns: &str, dst: &str) -> bool {
    (0..3).any(|_| ping(ns, dst))
}

#[test]
fn steering_fallback_follows_fail_mode_and_stale_programs_are_removed() {
    use enforcer::hostmode::steer::{self, Attached, FailMode, Steering};
    if !root_or_skip() {
        return;
    }
    let a = Netns(name("a"));
    let b = Netns(name("b"));
    let (na, nb) = (a.0.clone(), b.0.clone());
    for n in [&na, &nb] {
        let _ = Command::new("ip").args(["netns", "del", n]).status();
        sh(&format!("ip netns add {n}"));
    }
    sh(&format!(
        "ip -n {na} link add a0 type veth peer name b0 netns {nb}"
    ));
    sh(&format!(
        "ip -n {na} addr add 10.79.0.1/24 dev a0 && ip -n {na} link set a0 up"
    ));
    sh(&format!(
        "ip -n {nb} addr add 10.79.0.2/24 dev b0 && ip -n {nb} link set b0 up"
    ));
    assert!(reachable(&na, "10.79.0.2"), "baseline ping");

    let t = std::thread::spawn(move || {
        let na = na.as_str();
        enter(&nb);
        // SAFETY: a NUL-terminated literal.
        let ifindex = unsafe { libc::if_nametoindex(c"b0".as_ptr()) } as i32;
        assert!(ifindex > 0);
        let host: IpAddr = "10.79.0.2".parse().unwrap();

        // Fail closed, no socket bound: the host's IP traffic is dropped.
        let mut s = Steering::load(FailMode::Closed).expect("load");
        s.add_host_addr(host).unwrap();
        s.attach(ifindex).expect("attach");
        assert!(matches!(
            steer::query(ifindex).unwrap(),
            Attached::Ours { .. }
        ));
        assert!(!ping(na, "10.79.0.2"), "fail closed drops");
        // A crash leaves a netlink-attached program behind; a restart removes it.
        std::mem::forget(s);
        assert!(!ping(na, "10.79.0.2"), "still closed after the crash");
        assert!(steer::remove_stale(ifindex).unwrap());
        assert_eq!(steer::query(ifindex).unwrap(), Attached::Nothing);
        assert!(reachable(na, "10.79.0.2"), "reachable after stale cleanup");

        // Fail open: no socket bound means pass; the program goes with us.
        let mut s = Steering::load(FailMode::Open).expect("load");
        s.add_host_addr(host).unwrap();
        s.attach(ifindex).expect("attach");
        assert!(matches!(
            steer::query(ifindex).unwrap(),
            Attached::Ours { .. }
        ));
        assert!(reachable(na, "10.79.0.2"), "fail open passes");
        drop(s);
        assert_eq!(
            steer::query(ifindex).unwrap(),
            Attached::Nothing,
            "link closed with us"
        );
    });
    let r = t.join();
    drop((a, b));
    if let Err(e) = r {
        std::panic::resume_unwind(e);
    }
}
