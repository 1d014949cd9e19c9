//! Kernel configuration for host mode: the TAP's link settings, the
//! policy-routing rules that send the host's own traffic from the protected
//! addresses into the TAP, and the sysctls that let re-entered frames in.
//! Control plane only (start and stop), over rtnetlink (`rtnl`); everything
//! it adds is recorded and removed on stop, and a restart removes what a
//! dead run left (rules are recognised by their table, routes by theirs).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use netlink_packet_route::link::LinkAttribute;

use super::rtnl::{self, Rtnl};

/// Routing table and rule priority the enforcer owns.
pub const TABLE: u32 = 0xe7f0;
pub const RULE_PRIORITY: u32 = 90;
/// A next hop that exists only as a permanent neighbour entry on the TAP.
const GW4: Ipv4Addr = Ipv4Addr::new(169, 254, 231, 1);
const GW6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0xe7f0, 1);

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

/// An rtnetlink error that names what was asked: `what: the kernel's error`.
fn named<T>(r: std::io::Result<T>, what: impl FnOnce() -> String) -> Result<T, String> {
    r.map_err(|e| format!("{}: {e}", what()))
}

/// The TAP's MTU (as `--iface`'s, so that what one carries the other does).
pub fn set_mtu(nl: &mut Rtnl, tap: &str, mtu: u32) -> Result<(), String> {
    let idx = rtnl::ifindex(tap)?;
    named(
        nl.set_link(rtnl::link(idx, false, vec![LinkAttribute::Mtu(mtu)])),
        || format!("set the MTU of {tap} to {mtu}"),
    )
}

/// What `setup` changed, to undo it.
pub struct HostRouting {
    nl: Rtnl,
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
            nl: Rtnl::open()?,
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
        let idx = rtnl::ifindex(&tap)?;
        // No link-local address, no DAD, no router solicitations on the TAP
        // (refused where IPv6 is off, which is as good).
        let _ = self.nl.set_link(rtnl::no_addrgen(idx));
        named(
            self.nl.set_link(rtnl::link(
                idx,
                true,
                vec![LinkAttribute::Address(tap_mac.to_vec())],
            )),
            || format!("set {tap} up with address {}", mac_str(tap_mac)),
        )?;
        // Re-entered frames come from remote addresses on a device that has
        // no route back to them: strict reverse-path filtering would drop them.
        self.set_sysctl(&format!("net.ipv4.conf.{tap}.rp_filter"), "0")?;
        if read_sysctl("net.ipv4.conf.all.rp_filter").as_deref() == Some("1") {
            self.set_sysctl("net.ipv4.conf.all.rp_filter", "2")?;
        }
        let mut gws = Vec::new();
        if self.addrs.iter().any(|a| a.is_ipv4()) {
            gws.push(IpAddr::V4(GW4));
        }
        if self.addrs.iter().any(|a| a.is_ipv6()) {
            gws.push(IpAddr::V6(GW6));
        }
        for gw in gws {
            named(
                self.nl
                    .replace_neighbour(rtnl::permanent_neighbour(idx, gw, gw_mac)),
                || {
                    format!(
                        "neighbour {gw} lladdr {} dev {tap} nud permanent",
                        mac_str(gw_mac)
                    )
                },
            )?;
            named(
                self.nl.replace_route(rtnl::default_route(gw, idx, TABLE)),
                || format!("route default via {gw} dev {tap} table {TABLE}"),
            )?;
        }
        for a in self.addrs.clone() {
            named(
                self.nl.add_rule(rtnl::rule(a, TABLE, RULE_PRIORITY)),
                || format!("rule from {a} lookup {TABLE} priority {RULE_PRIORITY}"),
            )?;
        }
        Ok(())
    }

    /// Sysctls changed, with their values before: a state file keeps them so
    /// that a restart after a crash can put them back.
    pub fn changed_sysctls(&self) -> &[(String, String)] {
        &self.sysctls
    }

    /// Undo everything `setup` did. The TAP itself goes with its fd (its
    /// neighbour entries with it).
    pub fn teardown(&mut self) {
        if self.done {
            return;
        }
        self.done = true;
        if let Err(e) = remove_in(&mut self.nl) {
            eprintln!("enforcer: removing host-mode rules and routes: {e}");
        }
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

/// Rules first (then no lookup reaches the table), then its routes.
fn remove_in(nl: &mut Rtnl) -> Result<usize, String> {
    let n = named(nl.delete_rules(TABLE), || {
        format!("delete the rules that look up table {TABLE}")
    })?;
    named(nl.flush_table(TABLE), || format!("flush table {TABLE}"))?;
    Ok(n)
}

/// What a dead run may have left: rules and routes of our table. Returns
/// how many rules went.
pub fn remove_stale() -> Result<usize, String> {
    remove_in(&mut Rtnl::open()?)
}

/// Ask the kernel to resolve `addr` on link `ifindex` (ARP/ND) without
/// sending anything of ours: the entry shows up in the subscription.
pub fn resolve(nl: &mut Rtnl, ifindex: u32, addr: IpAddr) -> Result<(), String> {
    named(
        nl.replace_neighbour(rtnl::use_neighbour(ifindex, addr)),
        || format!("resolve {addr} (neighbour {addr} dev {ifindex} use)"),
    )
}
