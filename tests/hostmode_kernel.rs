//! Host mode's kernel plumbing, without the dataplane: a frame written into
//! the TAP reaches a local listener, and the listener's answer is routed
//! back into the TAP by the policy-routing rules; stopping removes it all.
//! Needs root (network namespaces); under CI=true a missing root fails.

mod kit;

use std::net::{IpAddr, TcpListener};
use std::process::Command;
use std::time::{Duration, Instant};

use enforcer::hostmode::l2;
use enforcer::hostmode::routes::{self, HostRouting, TABLE};
use enforcer::hostmode::rtnl::{self, Rtnl, Watch};
use enforcer::hostmode::tap::{Done, Tap, TapRing};
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
impl Netns {
    /// A new, empty namespace (one of the same name left by a killed run
    /// goes first).
    fn add(name: String) -> Netns {
        if std::path::Path::new(&format!("/run/netns/{name}")).exists() {
            let _ = Command::new("ip").args(["netns", "del", &name]).status();
        }
        sh(&format!("ip netns add {name}"));
        Netns(name)
    }
}
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

const TAP_MAC: [u8; 6] = [0x02, 0xe7, 0, 0, 0, 1];
const GW_MAC: [u8; 6] = [0x02, 0xe7, 0, 0, 0, 2];
const CLIENT_MAC: [u8; 6] = [0x02, 0xc1, 0, 0, 0, 3];

/// A namespace with the host's `eth0` (10.78.0.2) and a listener on 8080;
/// `f` runs on a thread inside it and the namespace goes afterwards, also
/// when `f` panics.
fn in_host_ns(base: &str, f: impl FnOnce() + Send + 'static) {
    let ns = Netns::add(name(base));
    let n = ns.0.clone();
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
        f();
        drop(listener);
    });
    let r = t.join();
    drop(ns);
    if let Err(e) = r {
        std::panic::resume_unwind(e);
    }
}

/// A client's SYN to the host's 8080, addressed to the TAP.
fn syn_to_host() -> Vec<u8> {
    let mut syn = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, TAP_MAC)
        .ipv4([10, 78, 0, 1], [10, 78, 0, 2], 64)
        .tcp(40000, 8080, 1000, 64240)
        .syn()
        .write(&mut syn, &[])
        .unwrap();
    syn
}

/// (destination MAC, source MAC, ack) of the host's SYN-ACK to that SYN.
fn synack(frame: &[u8]) -> Option<(Vec<u8>, Vec<u8>, u32)> {
    let p = SlicedPacket::from_ethernet(frame).ok()?;
    match &p.transport {
        Some(TransportSlice::Tcp(tcp))
            if tcp.syn() && tcp.ack() && tcp.destination_port() == 40000 =>
        {
            Some((
                frame[..6].to_vec(),
                frame[6..12].to_vec(),
                tcp.acknowledgment_number(),
            ))
        }
        _ => None,
    }
}

fn assert_routed_back(got: Option<(Vec<u8>, Vec<u8>, u32)>) {
    let (dst, src, ack) = got.expect("SYN-ACK routed back into the TAP");
    assert_eq!(
        dst,
        GW_MAC.to_vec(),
        "towards the fake gateway (the enforcer)"
    );
    assert_eq!(src, TAP_MAC.to_vec());
    assert_eq!(ack, 1001);
}

#[test]
fn tap_reentry_and_policy_routing() {
    if !root_or_skip() {
        return;
    }
    in_host_ns("srv", || {
        let mut tap = Tap::create("enf-hmk0").expect("tap");
        let host: IpAddr = "10.78.0.2".parse().unwrap();
        let mut routing =
            HostRouting::setup(tap.name(), TAP_MAC, GW_MAC, &[host]).expect("routing");
        let rules = Command::new("ip").args(["rule", "show"]).output().unwrap();
        assert!(
            String::from_utf8_lossy(&rules.stdout).contains("10.78.0.2"),
            "rule installed"
        );
        tap.send(&syn_to_host()).expect("write syn");

        let mut buf = [0u8; 2048];
        let deadline = Instant::now() + Duration::from_secs(3);
        let mut got = None;
        while Instant::now() < deadline && got.is_none() {
            match tap.recv(&mut buf).expect("read tap") {
                Some(n) => got = synack(&buf[..n]),
                None => std::thread::sleep(Duration::from_millis(10)),
            }
        }
        assert_routed_back(got);

        routing.teardown();
        let rules = Command::new("ip")
            .args(["rule", "show", "table", &TABLE.to_string()])
            .output()
            .unwrap();
        assert!(
            String::from_utf8_lossy(&rules.stdout).trim().is_empty(),
            "rules removed"
        );
        assert_eq!(routes::remove_stale().unwrap(), 0);
        drop(tap);
        let link = Command::new("ip")
            .args(["link", "show", "enf-hmk0"])
            .output()
            .unwrap();
        assert!(!link.status.success(), "TAP gone with its fd");
    });
}

/// The same round trip through the TAP's io_uring: the SYN goes out in a
/// submit, the SYN-ACK comes back through the multishot read into a buffer
/// we gave, an idle ring needs no syscall to say so, and `settle` returns
/// every buffer it still holds.
#[test]
fn tap_ring_round_trip() {
    if !root_or_skip() {
        return;
    }
    in_host_ns("ring", || {
        let tap = Tap::create("enf-hmk1").expect("tap");
        let host: IpAddr = "10.78.0.2".parse().unwrap();
        let mut routing =
            HostRouting::setup(tap.name(), TAP_MAC, GW_MAC, &[host]).expect("routing");
        let mut ring: TapRing<usize> = TapRing::new(&tap, 8).expect("io_uring on this kernel");
        // Buffer 0 holds the SYN; 1..=8 are given to the read.
        let mut bufs: Vec<Vec<u8>> = (0..9).map(|_| vec![0u8; 2048]).collect();
        let syn = syn_to_host();
        bufs[0][..syn.len()].copy_from_slice(&syn);
        for (i, b) in bufs.iter_mut().enumerate().skip(1) {
            // SAFETY: `bufs` outlives the ring's use of them (settle below).
            unsafe { ring.give(i, b.as_mut_ptr(), b.len() as u32) };
        }
        assert_eq!(ring.wants(), 0);
        // SAFETY: as above.
        assert!(unsafe { ring.write(0, bufs[0].as_ptr(), syn.len() as u32) });
        let (mut wrote, mut reads) = (None, Vec::new());
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline && (wrote.is_none() || reads.is_empty()) {
            ring.turn(&mut |d| match d {
                Done::Wrote(t, r) => wrote = Some((t, r.expect("write"))),
                Done::Read(t, n) => reads.push((t, n)),
            })
            .expect("turn");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(wrote, Some((0, syn.len())), "the SYN written whole");
        let got = reads.iter().find_map(|&(t, n)| synack(&bufs[t][..n]));
        assert_routed_back(got);
        assert_eq!(ring.in_flight(), 0);
        assert_eq!(
            ring.wants(),
            reads.len(),
            "read buffers come back to be given again"
        );

        // Nothing more from the host (the SYN-ACK is not answered for 1 s):
        // the ring turns idle, and says so without entering the kernel.
        let mut idle = false;
        for _ in 0..20 {
            ring.turn(&mut |d| {
                if let Done::Read(t, n) = d {
                    reads.push((t, n));
                }
            })
            .expect("turn");
            if !ring.has_work() {
                idle = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(idle, "an idle ring still reports work");

        let mut back = Vec::new();
        ring.settle(&mut |_| {}, &mut |t| back.push(t));
        back.sort();
        let want: Vec<usize> = (1..=8)
            .filter(|t| !reads.iter().any(|r| r.0 == *t))
            .collect();
        assert_eq!(back, want, "settle returns the buffers the read still held");
        assert!(ring.broken().is_none());
        drop(ring);
        routing.teardown();
    });
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
    let a = Netns::add(name("a"));
    let b = Netns::add(name("b"));
    let (na, nb) = (a.0.clone(), b.0.clone());
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

fn out(cmd: &str) -> String {
    let o = Command::new("sh").arg("-c").arg(cmd).output().expect("sh");
    assert!(o.status.success(), "failed: {cmd}");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The kernel's state over rtnetlink: the neighbour snapshot, its default
/// gateway and prefixes; a next hop asked to resolve arrives on the
/// subscription; rules and routes a dead run left are removed by table;
/// errors name what was asked and the kernel's answer.
#[test]
fn rtnetlink_reads_follows_and_cleans_up() {
    if !root_or_skip() {
        return;
    }
    let h = Netns::add(name("nlh"));
    let p = Netns::add(name("nlp"));
    let (nh, np) = (h.0.clone(), p.0.clone());
    sh(&format!(
        "ip -n {nh} link add eth0 type veth peer name p0 netns {np}"
    ));
    sh(&format!(
        "ip -n {nh} addr add 10.78.1.2/24 dev eth0 && ip -n {nh} addr add fd78::2/64 dev eth0 nodad \
         && ip -n {nh} link set eth0 up && ip -n {nh} route add default via 10.78.1.1"
    ));
    sh(&format!(
        "ip -n {np} addr add 10.78.1.1/24 dev p0 && ip -n {np} link set p0 up"
    ));
    let peer_mac =
        l2::parse_mac(out(&format!("ip netns exec {np} cat /sys/class/net/p0/address")).trim())
            .expect("peer MAC");

    let t = std::thread::spawn(move || {
        enter(&nh);
        let idx = rtnl::ifindex("eth0").unwrap();
        let gw: IpAddr = "10.78.1.1".parse().unwrap();
        let mut watch = Watch::open().unwrap();
        let mut nl = Rtnl::open().unwrap();

        let n = l2::read_neighbors(&mut nl, idx).unwrap();
        assert_eq!(n.gateway_ip, Some(gw));
        assert_eq!(n.gateway, None, "not resolved yet");
        for net in ["10.78.1.0/24", "fd78::/64"] {
            assert!(
                n.onlink.contains(&net.parse().unwrap()),
                "{net} in {:?}",
                n.onlink
            );
        }
        let global: Vec<IpAddr> = nl
            .addresses(idx)
            .unwrap()
            .into_iter()
            .filter(|a| a.2)
            .map(|a| a.0)
            .collect();
        assert_eq!(
            global,
            [
                "10.78.1.2".parse::<IpAddr>().unwrap(),
                "fd78::2".parse().unwrap()
            ]
        );

        // Ask; the answer comes as an event, with no read of the table.
        let _ = watch.changes(idx);
        routes::resolve(&mut nl, idx, gw).unwrap();
        let deadline = Instant::now() + Duration::from_secs(3);
        let mut seen = None;
        while seen.is_none() && Instant::now() < deadline {
            let mut pfd = libc::pollfd {
                fd: watch.fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            unsafe { libc::poll(&mut pfd, 1, 100) };
            seen = watch
                .changes(idx)
                .neighbours
                .into_iter()
                .find(|(ip, mac)| *ip == gw && mac.is_some());
        }
        assert_eq!(seen, Some((gw, Some(peer_mac))), "resolution announced");
        let mut n2 = n.clone();
        assert!(n2.update(gw, Some(peer_mac)));
        assert_eq!(n2.gateway, Some(peer_mac));
        // A read agrees (it may know more: the peer's IPv6 link-local
        // address, learned from its router solicitations meanwhile).
        let read = l2::read_neighbors(&mut nl, idx).unwrap();
        assert_eq!(read.gateway, n2.gateway, "as a read says");
        assert_eq!(read.gateway_ip, n2.gateway_ip);
        assert_eq!(read.onlink, n2.onlink);
        for (ip, mac) in &n2.by_ip {
            assert_eq!(read.by_ip.get(ip), Some(mac), "{ip}");
        }

        // A run that died: its rules and routes stay until a restart.
        let tap = Tap::create("enf-hmk2").expect("tap");
        let addrs: Vec<IpAddr> = vec!["10.78.1.2".parse().unwrap(), "fd78::2".parse().unwrap()];
        let dead = HostRouting::setup(tap.name(), TAP_MAC, GW_MAC, &addrs).expect("routing");
        std::mem::forget(dead);
        let table = TABLE.to_string();
        for fam in ["-4", "-6"] {
            assert!(!out(&format!("ip {fam} rule show table {table}"))
                .trim()
                .is_empty());
            assert!(!out(&format!("ip {fam} route show table {table}"))
                .trim()
                .is_empty());
        }
        // A second setup over them is refused, naming the rule and the error.
        let e = HostRouting::setup(tap.name(), TAP_MAC, GW_MAC, &addrs)
            .err()
            .expect("refused");
        assert!(
            e.contains("rule from 10.78.1.2 lookup 59376 priority 90") && e.contains("exists"),
            "{e}"
        );
        // Its failed setup already took them away; leave them again and
        // remove them as a restart does.
        std::mem::forget(HostRouting::setup(tap.name(), TAP_MAC, GW_MAC, &addrs).unwrap());
        assert_eq!(routes::remove_stale().unwrap(), 2, "one rule per address");
        for fam in ["-4", "-6"] {
            assert_eq!(out(&format!("ip {fam} rule show table {table}")).trim(), "");
            assert_eq!(
                out(&format!("ip {fam} route show table {table}")).trim(),
                ""
            );
        }
        assert_eq!(routes::remove_stale().unwrap(), 0);
        let e = HostRouting::setup("enf-nosuch", TAP_MAC, GW_MAC, &addrs)
            .err()
            .expect("no such device");
        assert!(e.contains("enf-nosuch"), "{e}");
        drop(tap);
    });
    let r = t.join();
    drop((h, p));
    if let Err(e) = r {
        std::panic::resume_unwind(e);
    }
}
