//! Kernel configuration for host mode: the TAP's link settings, the
//! policy-routing rules that send the host's own traffic from the protected
//! addresses into the TAP, and the sysctls that let re-entered frames in.
//! Control plane only (start and stop), so it drives iproute2; everything it
//! adds is recorded and removed on stop, and a restart removes what a dead
//! run left (rules are recognised by their priority and table).

use std::net::IpAddr;
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
            let fam = if a.is_ipv4() { "-4" } else { "-6" };
            ip(&[
                fam,
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
