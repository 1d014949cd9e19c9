//! Kernel configuration for host mode: the TAP's link settings, the
//! policy-routing rules that send the host's own traffic from the protected
//! addresses into the TAP, and the sysctls that let re-entered frames in.
//! Control plane only (start and stop), so it drives iproute2; everything it
//! adds is recorded and removed on stop, and a restart removes what a dead
//! run left (rules are recognised by their priority and table).

use std::net::{IpAddr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Command;

/// Routing table and rule priority the enforcer owns.
pub const TABLE: u32 = 0xe7f0;
pub const RULE_PRIORITY: u32 = 90;
/// A next hop that exists only as a permanent neighbour entry on the TAP.
const GW4: &str = "169.254.231.1";
const GW6: &str = "fe80::e7f0:1";

pub fn ip(args: &[&str]) -> Result<String, String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn read_sysctl(key: &str) -> Option<String> {
    std::fs::read_to_string(format!("/proc/sys/{}", key.replace('.', "/")))
        .ok()
        .map(|s| s.trim().to_string())
}

pub fn write_sysctl(key: &str, val: &str) -> Result<(), String> {
    std::fs::write(format!("/proc/sys/{}", key.replace('.', "/")), val)
        .map_err(|e| format!("cannot set {key}={val}: {e}"))
}

pub fn mac_str(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// What `setup` changed, to undo it.
pub struct HostRouting {
    tap: String,
    addrs: Vec<IpAddr>,
    sysctls: Vec<(String, String)>,
    done: bool,
}

impl HostRouting {
    /// Configure the TAP `tap` (MAC `tap_mac`) and route the host's traffic
    /// from `addrs` into it, towards a fake gateway whose MAC is `gw_mac`
    /// (the enforcer reads those frames from the TAP).
    pub fn setup(
        tap: &str,
        tap_mac: [u8; 6],
        gw_mac: [u8; 6],
        addrs: &[IpAddr],
    ) -> Result<HostRouting, String> {
        let mut r = HostRouting {
            tap: tap.to_string(),
            addrs: addrs.to_vec(),
            sysctls: Vec::new(),
            done: false,
        };
        if let Err(e) = r.apply(tap_mac, gw_mac) {
            r.teardown();
            return Err(e);
        }
        Ok(r)
    }

    fn set_sysctl(&mut self, key: &str, val: &str) -> Result<(), String> {
        if let Some(old) = read_sysctl(key) {
            if old != val {
                write_sysctl(key, val)?;
                self.sysctls.push((key.to_string(), old));
            }
        }
        Ok(())
    }

    fn apply(&mut self, tap_mac: [u8; 6], gw_mac: [u8; 6]) -> Result<(), String> {
        let tap = self.tap.clone();
        let table = TABLE.to_string();
        let prio = RULE_PRIORITY.to_string();
        // No link-local address, no DAD, no router solicitations on the TAP.
        ip(&["link", "set", "dev", &tap, "addrgenmode", "none"]).ok();
        ip(&[
            "link",
            "set",
            "dev",
            &tap,
            "address",
            &mac_str(tap_mac),
            "up",
        ])?;
        // Re-entered frames come from remote addresses on a device that has
        // no route back to them: strict reverse-path filtering would drop them.
        self.set_sysctl(&format!("net.ipv4.conf.{tap}.rp_filter"), "0")?;
        if read_sysctl("net.ipv4.conf.all.rp_filter").as_deref() == Some("1") {
            self.set_sysctl("net.ipv4.conf.all.rp_filter", "2")?;
        }
        let gw = mac_str(gw_mac);
        let has4 = self.addrs.iter().any(|a| a.is_ipv4());
        let has6 = self.addrs.iter().any(|a| a.is_ipv6());
        if has4 {
            ip(&[
                "-4",
                "neigh",
                "replace",
                GW4,
                "lladdr",
                &gw,
                "dev",
                &tap,
                "nud",
                "permanent",
            ])?;
            ip(&[
                "-4", "route", "replace", "default", "via", GW4, "dev", &tap, "onlink", "table",
                &table,
            ])?;
        }
        if has6 {
            ip(&[
                "-6",
                "neigh",
                "replace",
                GW6,
                "lladdr",
                &gw,
                "dev",
                &tap,
                "nud",
                "permanent",
            ])?;
            ip(&[
                "-6", "route", "replace", "default", "via", GW6, "dev", &tap, "table", &table,
            ])?;
        }
        for a in self.addrs.clone() {
            match a {
                IpAddr::V4(_) => {
                    ip(&[
                        "-4",
                        "rule",
                        "add",
                        "from",
                        &a.to_string(),
                        "lookup",
                        &table,
                        "priority",
                        &prio,
                    ])?;
                }
                IpAddr::V6(a6) => add_rule6(a6)?,
            }
        }
        Ok(())
    }

    /// Sysctls changed, with their values before: a state file keeps them so
    /// that a restart after a crash can put them back.
    pub fn changed_sysctls(&self) -> &[(String, String)] {
        &self.sysctls
    }

    /// Undo everything `setup` did. The TAP itself goes with its fd.
    pub fn teardown(&mut self) {
        if self.done {
            return;
        }
        self.done = true;
        remove_rules();
        let table = TABLE.to_string();
        ip(&["-4", "route", "flush", "table", &table]).ok();
        ip(&["-6", "route", "flush", "table", &table]).ok();
        for (k, v) in self.sysctls.drain(..).rev() {
            write_sysctl(&k, &v).ok();
        }
    }
}

impl Drop for HostRouting {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// `FIB_RULE_FIND_SADDR` (linux/fib_rules.h): the rule also applies to a
/// route lookup that has no source address yet, when the source the kernel
/// would pick for the rule's route is the rule's `from`.
const FIB_RULE_FIND_SADDR: u32 = 0x0001_0000;
const RTM_NEWRULE: u16 = 32;
const FR_ACT_TO_TBL: u8 = 1;
const FRA_SRC: u16 = 2;
const FRA_PRIORITY: u16 = 6;
const FRA_TABLE: u16 = 15;

/// `from ADDR lookup TABLE priority RULE_PRIORITY` for IPv6, over rtnetlink
/// because it needs a flag iproute2 cannot set. Why: IPv6 routes a socket
/// with no source address yet (a `connect` the host makes) by a lookup
/// without one, picks the source from that route, and keeps the route
/// (`ip6_dst_lookup_tail`); a plain `from` rule never matches that lookup,
/// so the connection's first packets left on `--iface` directly, unjudged,
/// and its replies met no flow. IPv4 routes again once the source is
/// chosen, so its rules stay plain. With `FIB_RULE_FIND_SADDR` the rule
/// matches when the source chosen for the TAP route would be ADDR, which is
/// exactly the host's own traffic from it (removal: `remove_rules`, by table).
fn add_rule6(addr: Ipv6Addr) -> Result<(), String> {
    let what = || format!("ip -6 rule add from {addr} lookup {TABLE} priority {RULE_PRIORITY}");
    let mut body = Vec::with_capacity(64);
    // struct fib_rule_hdr: family, dst_len, src_len, tos, table, res1,
    // res2, action, flags.
    body.extend_from_slice(&[libc::AF_INET6 as u8, 0, 128, 0, 0, 0, 0, FR_ACT_TO_TBL]);
    body.extend_from_slice(&FIB_RULE_FIND_SADDR.to_ne_bytes());
    for (t, v) in [
        (FRA_SRC, addr.octets().to_vec()),
        (FRA_TABLE, TABLE.to_ne_bytes().to_vec()),
        (FRA_PRIORITY, RULE_PRIORITY.to_ne_bytes().to_vec()),
    ] {
        // Attributes: length, type, value, padded to 4 bytes.
        body.extend_from_slice(&((4 + v.len()) as u16).to_ne_bytes());
        body.extend_from_slice(&t.to_ne_bytes());
        body.extend_from_slice(&v);
        body.resize(body.len().next_multiple_of(4), 0);
    }
    let flags =
        (libc::NLM_F_REQUEST | libc::NLM_F_ACK | libc::NLM_F_CREATE | libc::NLM_F_EXCL) as u16;
    let mut msg = Vec::with_capacity(16 + body.len());
    msg.extend_from_slice(&((16 + body.len()) as u32).to_ne_bytes());
    msg.extend_from_slice(&RTM_NEWRULE.to_ne_bytes());
    msg.extend_from_slice(&flags.to_ne_bytes());
    msg.extend_from_slice(&1u32.to_ne_bytes()); // sequence
    msg.extend_from_slice(&0u32.to_ne_bytes()); // port: the kernel's
    msg.extend_from_slice(&body);
    match netlink_request(&msg) {
        Ok(0) => Ok(()),
        Ok(errno) => Err(format!(
            "{}: {}",
            what(),
            std::io::Error::from_raw_os_error(errno)
        )),
        Err(e) => Err(format!("{}: rtnetlink: {e}", what())),
    }
}

/// Send one rtnetlink request and read its acknowledgement: the errno it
/// carries (0: done).
fn netlink_request(msg: &[u8]) -> std::io::Result<i32> {
    // SAFETY: plain socket creation; the fd is owned right after.
    let raw = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if raw < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh fd nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // Never block the start for long on an answer.
    let tv = libc::timeval {
        tv_sec: 2,
        tv_usec: 0,
    };
    // SAFETY: `tv` is a timeval of the stated size.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    // SAFETY: `msg` is a live buffer of its stated length.
    let n = unsafe { libc::send(fd.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut buf = [0u8; 1024];
    // SAFETY: `buf` is writable for its stated length.
    let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // struct nlmsghdr (16 bytes), then for NLMSG_ERROR a negative errno.
    let n = n as usize;
    let kind = u16::from_ne_bytes([buf[4], buf[5]]);
    if n < 20 || kind != libc::NLMSG_ERROR as u16 {
        return Err(std::io::Error::other("no acknowledgement"));
    }
    let err = i32::from_ne_bytes([buf[16], buf[17], buf[18], buf[19]]);
    Ok(-err)
}

/// Delete every rule that points at our table (ours, or a dead run's).
pub fn remove_rules() -> usize {
    let mut n = 0;
    for fam in ["-4", "-6"] {
        let Ok(list) = ip(&[fam, "rule", "show", "table", &TABLE.to_string()]) else {
            continue;
        };
        for _ in list.lines().filter(|l| !l.trim().is_empty()) {
            if ip(&[fam, "rule", "del", "table", &TABLE.to_string()]).is_ok() {
                n += 1;
            }
        }
    }
    n
}

/// What a dead run may have left: rules and routes in our table.
pub fn remove_stale() -> usize {
    let n = remove_rules();
    ip(&["-4", "route", "flush", "table", &TABLE.to_string()]).ok();
    ip(&["-6", "route", "flush", "table", &TABLE.to_string()]).ok();
    n
}

/// Ask the kernel to resolve `addr` on `iface` (ARP/ND) without sending
/// anything of ours: the neighbour entry appears in the next snapshot.
pub fn resolve(iface: &str, addr: IpAddr) {
    let fam = if addr.is_ipv4() { "-4" } else { "-6" };
    ip(&[
        fam,
        "neigh",
        "replace",
        &addr.to_string(),
        "dev",
        iface,
        "use",
    ])
    .ok();
}
