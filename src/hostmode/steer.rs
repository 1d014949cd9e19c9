//! The host-mode XDP program: load, fill its maps, attach, detach.
//!
//! `--fail open` attaches through a BPF link owned by this process, so the
//! kernel detaches the program when the process dies (kill -9 included) and
//! the host is reachable directly. `--fail closed` attaches through netlink,
//! so the program outlives the process and, with no socket bound, drops the
//! host's IP traffic until a restart cleans it up.

use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr;

use libbpf_sys as bpf;

use super::bpfobj::{self, os_err, Object};

static OBJECT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/steer.bpf.o"));
/// The kernel keeps the first 15 bytes of a program's name.
const PROG_NAME: &str = "enforcer_steer";
/// The program on the far end of the re-entry veth (everything to the
/// socket of its queue).
const REENTRY_PROG: &str = "enforcer_reent";

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FailMode {
    /// A dead enforcer lets the host's traffic reach it unenforced.
    Open,
    /// A dead enforcer leaves the host's IP traffic dropped until restarted.
    Closed,
}

pub struct Steering {
    obj: Object,
    prog_fd: RawFd,
    xsks_fd: RawFd,
    v4_fd: RawFd,
    v6_fd: RawFd,
    ifindex: i32,
    fail: FailMode,
    link: Option<OwnedFd>,
    netlink_flags: Option<u32>,
}

impl Steering {
    /// Load the program (not yet attached).
    pub fn load(fail: FailMode) -> Result<Steering, String> {
        Steering::load_prog(fail, PROG_NAME)
    }

    /// The far end's program of the re-entry veth, with an XSKMAP of its
    /// own. Attached through a link: it goes with the process (and the far
    /// end with the process's namespace).
    pub fn load_reentry() -> Result<Steering, String> {
        Steering::load_prog(FailMode::Open, REENTRY_PROG)
    }

    fn load_prog(fail: FailMode, entry: &str) -> Result<Steering, String> {
        let obj = Object::load(OBJECT, "the steering program")?;
        let s = Steering {
            prog_fd: obj.prog_fd(entry),
            xsks_fd: obj.map_fd("xsks"),
            v4_fd: obj.map_fd("host_v4"),
            v6_fd: obj.map_fd("host_v6"),
            obj,
            ifindex: 0,
            fail,
            link: None,
            netlink_flags: None,
        };
        let cfg_fd = s.obj.map_fd("config");
        if s.prog_fd < 0 || s.xsks_fd < 0 || s.v4_fd < 0 || s.v6_fd < 0 || cfg_fd < 0 {
            return Err("steering program is missing a map or its entry point".into());
        }
        let fallback: u32 = match fail {
            FailMode::Open => bpf::XDP_PASS,
            FailMode::Closed => bpf::XDP_DROP,
        };
        let rc = bpfobj::update(cfg_fd, &0u32, &fallback);
        if rc != 0 {
            return Err(os_err("cannot configure the steering program", rc));
        }
        Ok(s)
    }

    /// The addresses whose IP frames go to the enforcer.
    pub fn add_host_addr(&self, ip: IpAddr) -> Result<(), String> {
        let one = 1u8;
        // SAFETY: key and value are live locals whose sizes match the map's definition.
        let rc = unsafe {
            match ip {
                IpAddr::V4(a) => {
                    let k = u32::from_ne_bytes(a.octets());
                    bpf::bpf_map_update_elem(
                        self.v4_fd,
                        (&k as *const u32).cast(),
                        (&one as *const u8).cast(),
                        0,
                    )
                }
                IpAddr::V6(a) => {
                    let k = a.octets();
                    bpf::bpf_map_update_elem(
                        self.v6_fd,
                        k.as_ptr().cast(),
                        (&one as *const u8).cast(),
                        0,
                    )
                }
            }
        };
        if rc != 0 {
            return Err(os_err(&format!("cannot add host address {ip}"), rc));
        }
        Ok(())
    }

    /// Steer queue `queue`'s frames to the AF_XDP socket `xsk_fd`.
    pub fn bind_queue(&self, queue: u32, xsk_fd: RawFd) -> Result<(), String> {
        bind(self.xsks_fd, queue, xsk_fd)
    }

    /// The XSKMAP, for workers that bind their own sockets.
    pub fn xsks_fd(&self) -> RawFd {
        self.xsks_fd
    }

    /// Attach to `ifindex`: native mode when the driver has it, else generic.
    pub fn attach(&mut self, ifindex: i32) -> Result<(), String> {
        self.ifindex = ifindex;
        if self.fail == FailMode::Open {
            let fd = bpfobj::attach_link(self.prog_fd, ifindex)
                .map_err(|rc| os_err("cannot attach the steering program", rc))?;
            self.link = Some(fd);
            return Ok(());
        }
        let mut last = 0;
        for mode in [bpf::XDP_FLAGS_DRV_MODE, bpf::XDP_FLAGS_SKB_MODE] {
            let flags = mode | bpf::XDP_FLAGS_UPDATE_IF_NOEXIST;
            // SAFETY: `prog_fd` is this object's loaded program; null opts.
            let rc = unsafe { bpf::bpf_xdp_attach(ifindex, self.prog_fd, flags, ptr::null()) };
            if rc == 0 {
                self.netlink_flags = Some(mode);
                return Ok(());
            }
            last = rc;
        }
        Err(os_err("cannot attach the steering program", last))
    }

    pub fn detach(&mut self) {
        self.link = None;
        if let Some(mode) = self.netlink_flags.take() {
            // SAFETY: detaches by ifindex and mode; no pointers besides null opts.
            unsafe {
                bpf::bpf_xdp_detach(self.ifindex, mode, ptr::null());
            }
        }
    }

    pub fn link_fd(&self) -> Option<RawFd> {
        self.link.as_ref().map(|l| l.as_raw_fd())
    }
}

impl Drop for Steering {
    fn drop(&mut self) {
        // Before the object closes (a field, dropped after this).
        self.detach();
    }
}

/// Put socket `xsk_fd` into the XSKMAP `map_fd` for `queue` (the map is
/// safe to update from any thread; the entry goes when the socket closes).
pub fn bind(map_fd: RawFd, queue: u32, xsk_fd: RawFd) -> Result<(), String> {
    let fd = xsk_fd as u32;
    // SAFETY: key and value are live u32 locals, as the XSKMAP expects.
    let rc = unsafe {
        bpf::bpf_map_update_elem(
            map_fd,
            (&queue as *const u32).cast(),
            (&fd as *const u32).cast(),
            0,
        )
    };
    if rc != 0 {
        return Err(os_err(
            &format!("cannot bind queue {queue} to its socket"),
            rc,
        ));
    }
    Ok(())
}

/// What is attached to an interface now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attached {
    Nothing,
    /// A program of ours, left by a run that died (fail closed).
    Ours {
        id: u32,
    },
    Foreign {
        id: u32,
        name: String,
    },
}

pub fn query(ifindex: i32) -> Result<Attached, String> {
    let mut id = 0u32;
    // SAFETY: `id` is a live out-parameter.
    let rc = unsafe { bpf::bpf_xdp_query_id(ifindex, 0, &mut id) };
    if rc != 0 {
        return Err(os_err("cannot query XDP programs", rc));
    }
    if id == 0 {
        return Ok(Attached::Nothing);
    }
    let name = prog_name(id).unwrap_or_default();
    if PROG_NAME.starts_with(&name) && !name.is_empty() {
        Ok(Attached::Ours { id })
    } else {
        Ok(Attached::Foreign { id, name })
    }
}

fn prog_name(id: u32) -> Option<String> {
    // SAFETY: the fd is checked before use and closed once; `info` is plain
    // old data passed with its size.
    unsafe {
        let fd = bpf::bpf_prog_get_fd_by_id(id);
        if fd < 0 {
            return None;
        }
        let fd = OwnedFd::from_raw_fd(fd);
        let mut info: bpf::bpf_prog_info = std::mem::zeroed();
        let mut len = std::mem::size_of::<bpf::bpf_prog_info>() as u32;
        if bpf::bpf_prog_get_info_by_fd(fd.as_raw_fd(), &mut info, &mut len) != 0 {
            return None;
        }
        let raw: Vec<u8> = info
            .name
            .iter()
            .take_while(|c| **c != 0)
            .map(|c| *c as u8)
            .collect();
        Some(String::from_utf8_lossy(&raw).into_owned())
    }
}

/// Remove a program a dead run of ours left on `ifindex` (any mode).
pub fn remove_stale(ifindex: i32) -> Result<bool, String> {
    match query(ifindex)? {
        Attached::Ours { .. } => {
            for mode in [bpf::XDP_FLAGS_DRV_MODE, bpf::XDP_FLAGS_SKB_MODE] {
                // SAFETY: detaches by ifindex and mode; no pointers besides null opts.
                unsafe { bpf::bpf_xdp_detach(ifindex, mode, ptr::null()) };
            }
            Ok(true)
        }
        _ => Ok(false),
    }
}
