//! The re-entry device: a non-persistent TAP. Frames the engine forwards
//! towards the host are written to it and the kernel receives them as if
//! from the wire; the host's own traffic routed into it is read back here.
//! It vanishes with its file descriptor, so a dead enforcer leaves no device
//! behind and the routes through it disappear with it.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_MULTI_QUEUE: libc::c_short = 0x0100;

#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

pub struct Tap {
    file: File,
    name: String,
}

impl Tap {
    /// Create TAP `name` (at most 15 bytes), non-blocking.
    pub fn create(name: &str) -> Result<Tap, String> {
        Tap::open(name, 0)
    }

    /// A multi-queue TAP with `n` queues, one fd each (one per worker). The
    /// kernel sends a flow's frames to the queue its last frame was written
    /// from, which is the worker that owns it.
    pub fn create_queues(name: &str, n: usize) -> Result<Vec<Tap>, String> {
        (0..n.max(1))
            .map(|_| Tap::open(name, IFF_MULTI_QUEUE))
            .collect()
    }

    fn open(name: &str, extra: libc::c_short) -> Result<Tap, String> {
        if name.is_empty() || name.len() >= libc::IFNAMSIZ {
            return Err(format!("bad device name {name:?}"));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(|e| format!("cannot open /dev/net/tun: {e}"))?;
        let mut req = IfReq {
            name: [0; libc::IFNAMSIZ],
            flags: IFF_TAP | IFF_NO_PI | extra,
            _pad: [0; 22],
        };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        // SAFETY: `req` is a valid `ifreq` for TUNSETIFF and lives across the call.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF as _, &mut req) };
        if rc < 0 {
            return Err(format!(
                "cannot create TAP {name}: {}",
                io::Error::last_os_error()
            ));
        }
        Ok(Tap {
            file,
            name: name.to_string(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// One frame into `buf`; `Ok(None)` when nothing is waiting.
    pub fn recv(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        match self.file.read(buf) {
            Ok(n) => Ok(Some(n)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        // A TAP write is one frame, whole or not at all.
        self.file.write(frame).map(|_| ())
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}
