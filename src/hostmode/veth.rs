//! The re-entry veth: host mode's other way back into the kernel (the TAP
//! is the first, `tap.rs`). The host end takes the TAP's place (routes,
//! neighbour entries, rp_filter, its MAC); the far end carries an XDP
//! program that hands everything to the workers' AF_XDP sockets, which
//! share the UMEM with the sockets on `--iface`. So frames go both ways
//! through rings, many per syscall, with no `read`/`write` per frame.
//!
//! The far end lives in a network namespace of its own that nothing
//! names: it exists while this process holds a reference (the fd here, the
//! sockets in it), so when the process dies, kill -9 included, the kernel
//! removes the namespace, the far end with it and the host end with its
//! peer, and the routes through them go as a closed TAP's do. The kernel
//! does that a moment after the death (namespaces are cleaned up from a
//! work queue), so a restart deletes a pair it still finds.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use netlink_packet_route::link::LinkAttribute;

use super::ethtool;
use super::rtnl::{self, Rtnl};

/// Run `f` with the calling thread in the network namespace `ns`, then
/// back in its own. Sockets (AF_XDP, netlink) belong to the namespace they
/// were created in, whatever the thread does later.
pub fn within<T>(ns: RawFd, f: impl FnOnce() -> T) -> Result<T, String> {
    let home = File::open("/proc/thread-self/ns/net")
        .map_err(|e| format!("cannot open this thread's network namespace: {e}"))?;
    // SAFETY: setns on valid namespace fds; affects this thread only.
    if unsafe { libc::setns(ns, libc::CLONE_NEWNET) } != 0 {
        return Err(format!(
            "cannot enter the re-entry namespace: {}",
            io::Error::last_os_error()
        ));
    }
    let r = f();
    // SAFETY: as above, back to the namespace the thread came from.
    if unsafe { libc::setns(home.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        // A thread left in the wrong namespace would configure the wrong
        // kernel state from now on: nothing sane goes on from here.
        eprintln!(
            "enforcer: cannot return from the re-entry namespace: {}",
            io::Error::last_os_error()
        );
        std::process::abort();
    }
    Ok(r)
}

/// A new network namespace held only by the returned fd (made on a
/// short-lived thread, so no other thread of ours ever runs in it).
fn private_netns() -> Result<OwnedFd, String> {
    std::thread::spawn(|| {
        // SAFETY: unshare of this thread's network namespace only.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            return Err(format!(
                "cannot create a network namespace for the re-entry veth: {}",
                io::Error::last_os_error()
            ));
        }
        File::open("/proc/thread-self/ns/net")
            .map(OwnedFd::from)
            .map_err(|e| format!("cannot open the re-entry namespace: {e}"))
    })
    .join()
    .map_err(|_| "the namespace thread panicked".to_string())?
}

/// Where the host's receive of what the workers send into the veth runs
/// (`ENFORCER_VETH_RX`, private, to measure the choices).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostRx {
    /// The host end's backlog on the CPUs no worker runs on (RPS), as the
    /// TAP does.
    Rps,
    /// In the worker's own `sendto` (the backlog of its CPU).
    Local,
    /// GRO on the host end: its NAPI, in the worker's softirq.
    Napi,
    /// GRO on and threaded NAPI: a kernel thread the scheduler places.
    Threaded,
}

pub const HOST_RX_ENV: &str = "ENFORCER_VETH_RX";

impl HostRx {
    pub fn parse(v: Option<&str>) -> Result<HostRx, String> {
        match v {
            None | Some("rps") => Ok(HostRx::Rps),
            Some("local") => Ok(HostRx::Local),
            Some("napi") => Ok(HostRx::Napi),
            Some("threaded") => Ok(HostRx::Threaded),
            Some(v) => Err(format!(
                "{HOST_RX_ENV}={v:?}: want rps, local, napi or threaded"
            )),
        }
    }
}

pub struct Veth {
    /// The host end, in this namespace.
    pub name: String,
    /// The far end, in `ns`.
    pub far: String,
    ns: OwnedFd,
}

impl Veth {
    /// The pair, `queues` queues each, MTU `mtu`, both up; the far end in a
    /// namespace of its own. A pair of these names left by a dead run is
    /// deleted first. The host end's MAC, addresses and routes are the
    /// caller's (as for the TAP).
    pub fn create(
        name: &str,
        far: &str,
        queues: usize,
        mtu: Option<u32>,
        rx: HostRx,
    ) -> Result<Veth, String> {
        let ns = private_netns()?;
        let mut nl = Rtnl::open()?;
        remove_stale(&mut nl, name, far);
        nl.new_link(rtnl::veth(name, far, queues.max(1) as u32))
            .map_err(|e| format!("create the veth pair {name}/{far}: {e}"))?;
        let v = Veth {
            name: name.to_string(),
            far: far.to_string(),
            ns,
        };
        // From here on a failure deletes the pair (Drop).
        let far_idx = rtnl::ifindex(far)?;
        // Created here, then moved: it keeps its index, which no device of
        // this namespace has (libxdp tells a shared UMEM's sockets apart by
        // index and queue, so the far end must not share `--iface`'s).
        nl.set_link(rtnl::link(
            far_idx,
            false,
            vec![LinkAttribute::NetNsFd(v.ns.as_raw_fd())],
        ))
        .map_err(|e| format!("move {far} into the re-entry namespace: {e}"))?;
        let mtu_attr = || mtu.map(LinkAttribute::Mtu).into_iter().collect::<Vec<_>>();
        within(v.ns.as_raw_fd(), || -> Result<(), String> {
            let mut nl = Rtnl::open()?;
            let idx = rtnl::ifindex(far)?;
            // Nothing of the far namespace's own stack should talk into the
            // pair (no link-local address, no DAD).
            let _ = nl.set_link(rtnl::no_addrgen(idx));
            nl.set_link(rtnl::link(idx, true, mtu_attr()))
                .map_err(|e| format!("set {far} up: {e}"))
        })??;
        let idx = rtnl::ifindex(name)?;
        // Up now (threaded NAPI needs the NAPI an up device has), without
        // a link-local address of its own as the TAP.
        let _ = nl.set_link(rtnl::no_addrgen(idx));
        nl.set_link(rtnl::link(idx, true, mtu_attr()))
            .map_err(|e| format!("set {name} up: {e}"))?;
        // What the host sends into the pair reaches the wire as it is: the
        // host must fill in checksums and segment (a TAP without a vnet
        // header gets both done for it).
        let gro = matches!(rx, HostRx::Napi | HostRx::Threaded);
        for (cmd, on, what) in [
            (ethtool::STXCSUM, false, "tx"),
            (ethtool::STSO, false, "tso"),
            (ethtool::SGSO, false, "gso"),
            (ethtool::SGRO, gro, "gro"),
        ] {
            ethtool::set(name, cmd, on as u32).map_err(|e| {
                format!(
                    "ethtool -K {name} {what} {}: {e}",
                    if on { "on" } else { "off" }
                )
            })?;
        }
        if rx == HostRx::Threaded {
            let f = format!("/sys/class/net/{name}/threaded");
            std::fs::write(&f, "1").map_err(|e| format!("{f}: {e}"))?;
        }
        Ok(v)
    }

    pub fn netns(&self) -> RawFd {
        self.ns.as_raw_fd()
    }
}

impl Drop for Veth {
    /// Deleting the host end deletes both ends at once (and the routes and
    /// neighbour entries on it); the namespace goes with its fd.
    fn drop(&mut self) {
        if let Ok(mut nl) = Rtnl::open() {
            remove_stale(&mut nl, &self.name, &self.far);
        }
    }
}

/// Delete links `name` and `far` of this namespace if they exist (a pair
/// whose namespace the kernel has not cleaned up yet, or one a run that
/// died during its start left whole). Whether anything went.
pub fn remove_stale(nl: &mut Rtnl, name: &str, far: &str) -> bool {
    let mut gone = false;
    for n in [name, far] {
        if let Ok(idx) = rtnl::ifindex(n) {
            gone |= nl.delete_link(idx).is_ok();
        }
    }
    gone
}
