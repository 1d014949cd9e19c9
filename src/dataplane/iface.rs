//! Interface preflight and XDP program life cycle: existence, link state, MTU,
//! offloads, queues, bpffs, foreign or stale XDP programs, and the state file
//! that marks an interface as ours.

use std::ffi::{CStr, CString};
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::hostmode::ethtool;

/// Name of the XDP program libxdp loads for AF_XDP sockets.
const XSK_PROG: &str = "xsk_def_prog";
/// Name of libxdp's multi-program dispatcher.
const DISPATCHER: &str = "xdp_dispatcher";
const STATE_DIR: &str = "/run/enforcer";
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

#[derive(Debug, Clone)]
pub struct IfaceInfo {
    pub name: String,
    pub ifindex: u32,
    pub rx_queues: u32,
}

fn sysfs(name: &str, file: &str) -> io::Result<String> {
    fs::read_to_string(format!("/sys/class/net/{name}/{file}")).map(|s| s.trim().to_string())
}

/// Existence, link state, MTU against the largest frame a UMEM frame holds
/// (`max_frame`: Ethernet header included) and the queue count.
pub fn inspect(name: &str, max_frame: u32) -> Result<IfaceInfo, String> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains('/') {
        return Err(format!("{name:?} is not a valid interface name"));
    }
    let cname =
        CString::new(name).map_err(|_| format!("{name:?} is not a valid interface name"))?;
    // SAFETY: `cname` is a NUL-terminated string that outlives the call.
    let ifindex = unsafe { libc::if_nametoindex(cname.as_ptr()) };
    if ifindex == 0 {
        return Err(format!(
            "interface {name} does not exist (ip -br link shows what does)"
        ));
    }
    let flags = sysfs(name, "flags")
        .ok()
        .and_then(|s| u32::from_str_radix(s.trim_start_matches("0x"), 16).ok())
        .unwrap_or(0);
    if flags & libc::IFF_UP as u32 == 0 {
        return Err(format!(
            "interface {name} is down: ip link set dev {name} up"
        ));
    }
    let mtu: u32 = sysfs(name, "mtu")
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("cannot read the MTU of {name}"))?;
    // Ethernet header plus one VLAN tag on top of the IP MTU.
    if mtu + 18 > max_frame {
        return Err(format!(
            "interface {name} has MTU {mtu}, larger than an AF_XDP frame allows ({}): \
             ip link set dev {name} mtu {}",
            max_frame.saturating_sub(18),
            max_frame.saturating_sub(18)
        ));
    }
    let rx_queues = fs::read_dir(format!("/sys/class/net/{name}/queues"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().starts_with("rx-"))
                .count() as u32
        })
        .unwrap_or(1)
        .max(1);
    Ok(IfaceInfo {
        name: name.to_string(),
        ifindex,
        rx_queues,
    })
}

/// Offloads that make the kernel hand AF_XDP copy mode frames larger than a
/// UMEM frame (GRO/LRO aggregates, TSO/GSO super-frames) or frames with a
/// checksum left for hardware to fill in. Refused with the command that fixes it.
pub fn check_offloads(name: &str) -> Result<(), String> {
    let sock =
        ethtool::socket().map_err(|e| format!("cannot open a socket to query offloads: {e}"))?;
    let mut on = Vec::new();
    for (cmd, what) in [
        (ethtool::GTXCSUM, "tx-checksumming"),
        (ethtool::GTSO, "tcp-segmentation-offload"),
        (ethtool::GGSO, "generic-segmentation-offload"),
        (ethtool::GGRO, "generic-receive-offload"),
    ] {
        if ethtool::get(&sock, name, cmd).unwrap_or(0) != 0 {
            on.push(what);
        }
    }
    if ethtool::get(&sock, name, ethtool::GFLAGS).unwrap_or(0) & ethtool::FLAG_LRO != 0 {
        on.push("large-receive-offload");
    }
    if on.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "interface {name} has offloads on that break AF_XDP copy mode ({}): \
             ethtool -K {name} tx off tso off gso off gro off lro off",
            on.join(", ")
        ))
    }
}

/// Mount bpffs on /sys/fs/bpf when it is not (libxdp pins its dispatcher there).
/// Returns true when it mounted it.
pub fn ensure_bpffs() -> Result<bool, String> {
    let path = c"/sys/fs/bpf";
    // SAFETY: `statfs` is plain old data; all zeros is a valid value.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is a NUL-terminated literal and `st` a valid out-buffer.
    if unsafe { libc::statfs(path.as_ptr(), &mut st) } == 0 && st.f_type as i64 == BPF_FS_MAGIC {
        return Ok(false);
    }
    // SAFETY: every pointer is a NUL-terminated literal or null (no mount data).
    let r = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            path.as_ptr(),
            c"bpf".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if r != 0 {
        return Err(format!(
            "bpffs is not mounted and mounting it failed ({}): mount -t bpf bpf /sys/fs/bpf",
            io::Error::last_os_error()
        ));
    }
    Ok(true)
}

extern "C" {
    // In the libbpf that libxdp-sys links; not in its bindings.
    fn libbpf_set_print(f: *const libc::c_void) -> *const libc::c_void;
}

/// Silence libbpf/libxdp diagnostics (dispatcher fallbacks and the like):
/// our own messages say what matters. ENFORCER_DEBUG=1 keeps them.
pub fn quiet_libraries() {
    // SAFETY: null / None are documented to restore the libraries' silent default.
    unsafe {
        libbpf_set_print(std::ptr::null());
        libxdp_sys::libxdp_set_print(None);
    }
}

/// Names of the XDP programs attached to an interface (dispatcher
/// components included), empty when none.
pub fn xdp_programs(ifindex: u32) -> Vec<String> {
    let mut names = Vec::new();
    // SAFETY: `mp` is checked for null and errors before use and closed once;
    // program pointers come from it and are used only while it lives.
    unsafe {
        let mp = libxdp_sys::xdp_multiprog__get_from_ifindex(ifindex as i32);
        if mp.is_null() || libxdp_sys::libxdp_get_error(mp as *const _) != 0 {
            return names;
        }
        let main = libxdp_sys::xdp_multiprog__main_prog(mp);
        if !main.is_null() {
            names.push(prog_name(main));
        }
        let mut p = libxdp_sys::xdp_multiprog__next_prog(std::ptr::null(), mp);
        while !p.is_null() {
            names.push(prog_name(p));
            p = libxdp_sys::xdp_multiprog__next_prog(p, mp);
        }
        libxdp_sys::xdp_multiprog__close(mp);
    }
    names
}

unsafe fn prog_name(p: *const libxdp_sys::xdp_program) -> String {
    // SAFETY: the caller passes a live program (see `prog_name`'s contract).
    let n = unsafe { libxdp_sys::xdp_program__name(p) };
    if n.is_null() {
        return "?".into();
    }
    // SAFETY: `n` is non-null and points to libxdp's NUL-terminated name.
    unsafe { CStr::from_ptr(n) }.to_string_lossy().into_owned()
}

/// True when every attached program is libxdp's AF_XDP program (or its dispatcher).
fn only_xsk_programs(names: &[String]) -> bool {
    names.iter().any(|n| n == XSK_PROG) && names.iter().all(|n| n == XSK_PROG || n == DISPATCHER)
}

/// Detach whatever XDP program is attached to `ifindex` (and unpin the dispatcher).
pub fn detach_xdp(ifindex: u32) -> Result<(), String> {
    // SAFETY: as in `xdp_programs`: `mp` is checked before use and closed once.
    unsafe {
        let mp = libxdp_sys::xdp_multiprog__get_from_ifindex(ifindex as i32);
        if mp.is_null() || libxdp_sys::libxdp_get_error(mp as *const _) != 0 {
            return Ok(());
        }
        let r = libxdp_sys::xdp_multiprog__detach(mp);
        libxdp_sys::xdp_multiprog__close(mp);
        if r != 0 {
            return Err(format!(
                "detaching XDP from ifindex {ifindex}: {}",
                io::Error::from_raw_os_error(-r)
            ));
        }
    }
    Ok(())
}

/// State file naming the pid that owns an interface, per network namespace.
fn state_file(name: &str) -> PathBuf {
    let ns = fs::metadata("/proc/self/ns/net")
        .map(|m| m.ino())
        .unwrap_or(0);
    Path::new(STATE_DIR).join(format!("{ns}-{name}.pid"))
}

fn pid_alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    pid > 0 && unsafe { libc::kill(pid, 0) } == 0
}

/// What to do about a program already on the interface.
#[derive(Debug, PartialEq, Eq)]
pub enum Existing {
    None,
    /// Left by a crashed run of ours: removed.
    RemovedStale,
}

/// Refuse a foreign program or a live enforcer; remove a stale program of ours.
pub fn claim(info: &IfaceInfo) -> Result<Existing, String> {
    let names = xdp_programs(info.ifindex);
    let sf = state_file(&info.name);
    let owner: Option<i32> = fs::read_to_string(&sf)
        .ok()
        .and_then(|s| s.trim().parse().ok());
    let me = std::process::id() as i32;
    let mut result = Existing::None;
    if !names.is_empty() {
        match owner {
            Some(pid) if pid != me && pid_alive(pid) => {
                return Err(format!(
                    "interface {} is already used by enforcer pid {pid}",
                    info.name
                ))
            }
            Some(_) if only_xsk_programs(&names) => {
                detach_xdp(info.ifindex)?;
                result = Existing::RemovedStale;
            }
            _ => {
                return Err(format!(
                    "interface {} already has an XDP program ({}) that is not ours; \
                     remove it first (ip link set dev {} xdp off) or pick another interface",
                    info.name,
                    names.join(", "),
                    info.name
                ))
            }
        }
    }
    fs::create_dir_all(STATE_DIR).map_err(|e| format!("{STATE_DIR}: {e}"))?;
    fs::write(&sf, format!("{me}\n")).map_err(|e| format!("{}: {e}", sf.display()))?;
    Ok(result)
}

/// Detach our program if it is still there and forget the interface.
pub fn release(info: &IfaceInfo) -> Result<(), String> {
    let names = xdp_programs(info.ifindex);
    let res = if only_xsk_programs(&names) {
        detach_xdp(info.ifindex)
    } else {
        Ok(())
    };
    let _ = fs::remove_file(state_file(&info.name));
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xsk_program_recognised() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert!(only_xsk_programs(&s(&["xdp_dispatcher", "xsk_def_prog"])));
        assert!(only_xsk_programs(&s(&["xsk_def_prog"])));
        assert!(!only_xsk_programs(&s(&[
            "xdp_dispatcher",
            "xsk_def_prog",
            "cilium_xdp"
        ])));
        assert!(!only_xsk_programs(&s(&["xdp_dispatcher"])));
        assert!(!only_xsk_programs(&[]));
    }

    #[test]
    fn missing_and_invalid_interfaces_are_refused() {
        let e = inspect("nosuchif0", 3840).unwrap_err();
        assert!(e.contains("does not exist"), "{e}");
        assert!(inspect("", 3840).is_err());
        assert!(inspect("a/b", 3840).is_err());
        assert!(inspect("waytoolonginterfacename", 3840).is_err());
    }

    #[test]
    fn loopback_mtu_too_large_is_refused() {
        // lo has MTU 65536: far above any UMEM frame
        match inspect("lo", 3840) {
            Err(e) => assert!(e.contains("MTU") || e.contains("down"), "{e}"),
            Ok(i) => panic!("lo accepted: {i:?}"),
        }
    }
}
