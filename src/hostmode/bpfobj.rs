//! What our XDP programs share to get into the kernel: an embedded object
//! opened and loaded with libbpf, its program and maps by name, map
//! updates, and attaching through a BPF link owned by this process (the
//! kernel detaches it when the process dies). Host mode's steering program
//! (`steer`) and inline mode's kernel path (`dataplane::kpath`) use it.

use std::ffi::CString;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::ptr;

use libbpf_sys as bpf;

pub fn os_err(what: &str, rc: i32) -> String {
    let e = std::io::Error::from_raw_os_error(rc.abs());
    format!("{what}: {e}")
}

/// A loaded object; closed (programs and maps released unless something
/// else holds them) when dropped.
pub struct Object {
    obj: *mut bpf::bpf_object,
}

// SAFETY: the object is only touched from the thread that owns it; libbpf
// objects have no thread affinity.
unsafe impl Send for Object {}

impl Object {
    /// Open and load `bytes` (an ELF object); `what` names it in errors.
    pub fn load(bytes: &'static [u8], what: &str) -> Result<Object, String> {
        // SAFETY: `bytes` outlives the call (static); the pointer is checked
        // for null; the object is closed on the error path (by `Object`'s Drop).
        unsafe {
            let obj =
                bpf::bpf_object__open_mem(bytes.as_ptr().cast(), bytes.len() as _, ptr::null());
            if obj.is_null() {
                return Err(format!("cannot open {what}"));
            }
            let o = Object { obj };
            let rc = bpf::bpf_object__load(obj);
            if rc != 0 {
                return Err(os_err(
                    &format!("cannot load {what} (is bpffs mounted, are we root?)"),
                    rc,
                ));
            }
            Ok(o)
        }
    }

    /// The fd of program `name`, or -1.
    pub fn prog_fd(&self, name: &str) -> RawFd {
        let c = CString::new(name).unwrap_or_default();
        // SAFETY: `obj` is loaded; the name is NUL-terminated and outlives the call.
        unsafe {
            let prog = bpf::bpf_object__find_program_by_name(self.obj, c.as_ptr());
            if prog.is_null() {
                -1
            } else {
                bpf::bpf_program__fd(prog)
            }
        }
    }

    /// The fd of map `name`, or negative.
    pub fn map_fd(&self, name: &str) -> RawFd {
        let c = CString::new(name).unwrap_or_default();
        // SAFETY: as in `prog_fd`.
        unsafe { bpf::bpf_object__find_map_fd_by_name(self.obj, c.as_ptr()) }
    }
}

impl Drop for Object {
    fn drop(&mut self) {
        // SAFETY: `obj` was opened by `load` and is closed only here.
        unsafe { bpf::bpf_object__close(self.obj) };
    }
}

/// `map[key] = val`. K and V must have the map's key and value sizes.
pub fn update<K: Copy, V: Copy>(map: RawFd, key: &K, val: &V) -> i32 {
    // SAFETY: key and value are live references whose sizes the caller
    // matches to the map's definition.
    unsafe { bpf::bpf_map_update_elem(map, (key as *const K).cast(), (val as *const V).cast(), 0) }
}

/// Remove `key` from `map` (0, or a negative errno: -ENOENT when absent).
pub fn delete<K: Copy>(map: RawFd, key: &K) -> i32 {
    // SAFETY: as in `update`.
    unsafe { bpf::bpf_map_delete_elem(map, (key as *const K).cast()) }
}

/// Attach `prog_fd` to `ifindex` through a BPF link: native mode when the
/// driver has it, else generic.
pub fn attach_link(prog_fd: RawFd, ifindex: i32) -> Result<OwnedFd, i32> {
    let mut last = 0;
    for mode in [bpf::XDP_FLAGS_DRV_MODE, bpf::XDP_FLAGS_SKB_MODE] {
        // SAFETY: the options struct is plain old data (zeros = defaults) and
        // `prog_fd` is a loaded program.
        unsafe {
            let mut opts: bpf::bpf_link_create_opts = std::mem::zeroed();
            opts.sz = std::mem::size_of::<bpf::bpf_link_create_opts>() as _;
            opts.flags = mode;
            let fd = bpf::bpf_link_create(prog_fd, ifindex, bpf::BPF_XDP, &opts);
            if fd >= 0 {
                return Ok(OwnedFd::from_raw_fd(fd));
            }
            last = fd;
        }
    }
    Err(last)
}
