//! The legacy ethtool ioctl (`struct ethtool_value { u32 cmd; u32 data; }`):
//! one offload flag read or set. Inline mode checks `--iface`'s offloads with
//! it, host mode sets its re-entry veth's.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

pub const GTXCSUM: u32 = 0x16;
pub const STXCSUM: u32 = 0x17;
pub const GTSO: u32 = 0x1e;
pub const STSO: u32 = 0x1f;
pub const GGSO: u32 = 0x23;
pub const SGSO: u32 = 0x24;
pub const GFLAGS: u32 = 0x25;
pub const GGRO: u32 = 0x2b;
pub const SGRO: u32 = 0x2c;
pub const FLAG_LRO: u32 = 1 << 15;
const SIOCETHTOOL: libc::c_ulong = 0x8946;

#[repr(C)]
struct EthtoolValue {
    cmd: u32,
    data: u32,
}

#[repr(C)]
struct IfReq {
    name: [libc::c_char; libc::IFNAMSIZ],
    data: *mut libc::c_void,
    _pad: [u8; 16],
}

/// A datagram socket to issue the ioctls on.
pub fn socket() -> io::Result<OwnedFd> {
    // SAFETY: plain syscall with constant arguments; the fd is checked below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh socket we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn ioctl(sock: &OwnedFd, name: &str, cmd: u32, data: u32) -> io::Result<u32> {
    let mut val = EthtoolValue { cmd, data };
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        data: &mut val as *mut _ as *mut libc::c_void,
        _pad: [0; 16],
    };
    for (d, s) in req
        .name
        .iter_mut()
        .zip(name.bytes().take(libc::IFNAMSIZ - 1))
    {
        *d = s as libc::c_char;
    }
    // SAFETY: `req` is a valid `ifreq` whose data pointer targets `val`, both live across the call.
    let r = unsafe { libc::ioctl(sock.as_raw_fd(), SIOCETHTOOL as _, &mut req) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(val.data)
}

/// The value of a get command (`GTSO`, ...), or None if the device refuses.
pub fn get(sock: &OwnedFd, name: &str, cmd: u32) -> Option<u32> {
    ioctl(sock, name, cmd, 0).ok()
}

/// Run a set command (`STSO`, ...) with `data`.
pub fn set(name: &str, cmd: u32, data: u32) -> io::Result<()> {
    ioctl(&socket()?, name, cmd, data).map(|_| ())
}
