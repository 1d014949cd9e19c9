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

    /// The same queue on another fd (dup): it stays open while either is.
    pub fn try_clone(&self) -> io::Result<Tap> {
        Ok(Tap {
            file: self.file.try_clone()?,
            name: self.name.clone(),
        })
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

/// A TAP queue's I/O through io_uring: the frames the host sends are read
/// by one multishot read into buffers the caller gives (UMEM frames), and
/// a turn's writes go in one submit, so the TAP costs one `io_uring_enter`
/// per loop turn that has anything to do instead of a syscall per frame.
///
/// Why this shape. The ring uses `DEFER_TASKRUN`: a frame the host queues
/// on the TAP wakes the armed read, which only queues work for this thread
/// and sets `IORING_SQ_TASKRUN` in the shared ring memory; the copy into
/// our buffer runs in our next `io_uring_enter`. So "is there a frame?" is
/// a memory load, as on an AF_XDP ring, and an idle TAP costs no syscall at
/// all (the plain path pays an empty `read` for each look). The frame stays
/// on the TAP's queue until then, so the TAP's fd stays readable and a
/// worker asleep in `poll()` on it wakes as before. Writes on a
/// non-blocking TAP complete inside the submit, as a `write` would; one that
/// cannot (the kernel would wait for room) stays in flight until its
/// completion, and its buffer with it.
///
/// Buffers are a provided-buffer ring (`IORING_REGISTER_PBUF_RING`), one
/// entry per buffer id; the caller's token for each (a frame descriptor)
/// is kept here by id until the kernel hands the buffer back filled, or
/// `settle` returns it. With no buffer left the read ends (`ENOBUFS`) and
/// is armed again once buffers are given; frames wait on the TAP meanwhile.
pub struct TapRing<T: Copy> {
    ring: io_uring::IoUring,
    /// The provided-buffer ring: `entries` slots of 16 bytes, its tail in
    /// the last two bytes of the first slot (the kernel's layout).
    bufs: BufRing,
    /// Token of each buffer id the kernel holds.
    held: Vec<Option<T>>,
    free_ids: Vec<u16>,
    /// Token of each write in flight, by slot.
    writes: Vec<Option<T>>,
    free_writes: Vec<u32>,
    in_flight: usize,
    /// SQEs pushed and not submitted yet.
    queued: usize,
    /// The multishot read is armed (its last completion had `MORE`).
    armed: bool,
    broken: Option<io::Error>,
}

/// What came back from the kernel.
pub enum Done<T> {
    /// A frame of `len` bytes was read into the buffer of `T`.
    Read(T, usize),
    /// The write from `T`'s buffer ended: the bytes written, or the error.
    Wrote(T, io::Result<usize>),
}

const BGID: u16 = 0x7e1;
/// `IORING_ENTER_GETEVENTS` (the crate keeps its constants private).
const ENTER_GETEVENTS: u32 = 1;
const READ_TAG: u64 = u64::MAX;
const CANCEL_TAG: u64 = u64::MAX - 1;
/// The TAP as registered file 0: no file lookup per operation.
const TAP_FIXED: io_uring::types::Fixed = io_uring::types::Fixed(0);

struct BufRing {
    base: *mut u8,
    bytes: usize,
    mask: u16,
    /// Our copy of the tail (the kernel only reads it).
    tail: u16,
}

impl BufRing {
    fn new(entries: u16) -> io::Result<BufRing> {
        let bytes = entries as usize * 16;
        // SAFETY: an anonymous private mapping, checked below.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(BufRing {
            base: base as *mut u8,
            bytes,
            mask: entries - 1,
            tail: 0,
        })
    }

    /// Add a buffer at the tail (made visible by `publish`).
    ///
    /// SAFETY: `addr` must stay valid for `len` bytes while the kernel may
    /// use it (until it comes back in a completion or the ring is gone).
    unsafe fn add(&mut self, addr: *mut u8, len: u32, bid: u16) {
        let slot = self.base.add(((self.tail & self.mask) as usize) * 16);
        (slot as *mut u64).write_unaligned(addr as u64);
        (slot.add(8) as *mut u32).write_unaligned(len);
        (slot.add(12) as *mut u16).write_unaligned(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    fn publish(&self) {
        // The tail overlays the first slot's reserved field (offset 14); the
        // kernel reads it with acquire semantics, so the slots written before
        // it are seen whole.
        // SAFETY: offset 14 of a live mapping, 2-byte aligned.
        let tail = unsafe { &*(self.base.add(14) as *const std::sync::atomic::AtomicU16) };
        tail.store(self.tail, std::sync::atomic::Ordering::Release);
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: our own mapping, of this size. The ring that used it is
        // dropped before (field order in `TapRing`).
        unsafe { libc::munmap(self.base as *mut libc::c_void, self.bytes) };
    }
}

impl<T: Copy> TapRing<T> {
    /// A ring for `tap` taking up to `buffers` (a power of two) read buffers.
    /// Must be created on the thread that will use it (`SINGLE_ISSUER`).
    /// Errors when the kernel lacks what it needs (io_uring disabled, older
    /// than 6.7 for the multishot read): the caller falls back to plain I/O.
    pub fn new(tap: &Tap, buffers: u16) -> io::Result<TapRing<T>> {
        let buffers = buffers.next_power_of_two().clamp(8, 4096);
        let entries = (buffers as u32 * 4).next_power_of_two();
        let ring = io_uring::IoUring::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .setup_taskrun_flag()
            .setup_submit_all()
            .setup_cqsize(entries * 4)
            .build(entries)?;
        Self::supported(&ring)?;
        ring.submitter().register_files(&[tap.as_raw_fd()])?;
        // One fd lookup less per enter; optional.
        let _ = ring.submitter().register_ring_fd();
        let bufs = BufRing::new(buffers)?;
        // SAFETY: the mapping lives as long as the ring (see `BufRing`'s drop).
        unsafe {
            ring.submitter()
                .register_buf_ring_with_flags(bufs.base as u64, buffers, BGID, 0)?
        };
        let r = TapRing {
            ring,
            bufs,
            held: vec![None; buffers as usize],
            free_ids: (0..buffers).rev().collect(),
            writes: vec![None; entries as usize],
            free_writes: (0..entries).rev().collect(),
            in_flight: 0,
            queued: 0,
            armed: false,
            broken: None,
        };
        Ok(r)
    }

    /// The multishot read (6.7) and provided-buffer rings (5.19), asked of
    /// the kernel, so that one without them falls back at start.
    fn supported(ring: &io_uring::IoUring) -> io::Result<()> {
        let mut probe = io_uring::Probe::new();
        ring.submitter().register_probe(&mut probe)?;
        for (code, name) in [
            (io_uring::opcode::ReadMulti::CODE, "multishot read"),
            (io_uring::opcode::Write::CODE, "write"),
            (io_uring::opcode::AsyncCancel::CODE, "cancel"),
        ] {
            if !probe.is_supported(code) {
                return Err(io::Error::other(format!(
                    "no io_uring {name} in this kernel"
                )));
            }
        }
        Ok(())
    }

    /// The read ended with an error other than running out of buffers:
    /// the caller goes back to plain I/O (after `settle`).
    pub fn broken(&self) -> Option<&io::Error> {
        self.broken.as_ref()
    }

    fn arm(&mut self) -> io::Result<()> {
        let e = io_uring::opcode::ReadMulti::new(TAP_FIXED, 0, BGID)
            .build()
            .user_data(READ_TAG);
        self.push(&e)?;
        self.armed = true;
        Ok(())
    }

    fn push(&mut self, e: &io_uring::squeue::Entry) -> io::Result<()> {
        // SAFETY: the entry's buffers are the caller's promise (`give`,
        // `write`), or none.
        let r = unsafe { self.ring.submission().push(e) };
        if r.is_err() {
            // Full: submit what is queued and try once more.
            self.ring.submit()?;
            self.queued = 0;
            // SAFETY: as above.
            unsafe { self.ring.submission().push(e) }
                .map_err(|_| io::Error::other("io_uring submission queue full"))?;
        }
        self.queued += 1;
        Ok(())
    }

    /// How many more buffers the read can take.
    pub fn wants(&self) -> usize {
        self.free_ids.len()
    }

    /// Give the read a buffer; it comes back as `Done::Read` with `token`.
    ///
    /// # Safety
    /// `buf` must stay valid for `len` bytes, and untouched by the caller,
    /// until then (or until `settle` returns `token`).
    pub unsafe fn give(&mut self, token: T, buf: *mut u8, len: u32) {
        let Some(bid) = self.free_ids.pop() else {
            return;
        };
        self.held[bid as usize] = Some(token);
        self.bufs.add(buf, len, bid);
    }

    /// Queue a write of `len` bytes at `buf` (sent by the next `turn`);
    /// `false` when the ring has no room for it now.
    ///
    /// # Safety
    /// `buf` must stay valid for `len` bytes until `Done::Wrote` returns `token`.
    pub unsafe fn write(&mut self, token: T, buf: *const u8, len: u32) -> bool {
        let Some(slot) = self.free_writes.pop() else {
            return false;
        };
        let e = io_uring::opcode::Write::new(TAP_FIXED, buf, len)
            .build()
            .user_data(slot as u64);
        if self.push(&e).is_err() {
            self.free_writes.push(slot);
            return false;
        }
        self.writes[slot as usize] = Some(token);
        self.in_flight += 1;
        true
    }

    /// Whether a `turn` would do anything beyond reading completions already
    /// there: queued writes, or reads the kernel deferred to us (a memory
    /// load, no syscall).
    pub fn has_work(&mut self) -> bool {
        self.queued > 0
            || self.needs_arming()
            || self.ring.submission().taskrun()
            || !self.ring.completion().is_empty()
    }

    /// The read ended (no buffers, or not armed yet) and has buffers again.
    fn needs_arming(&self) -> bool {
        !self.armed && self.broken.is_none() && self.free_ids.len() < self.held.len()
    }

    /// Writes in flight (not completed yet).
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Publish given buffers, re-arm the read if it ended, submit queued
    /// writes and run deferred reads (one `io_uring_enter`, only when there
    /// is something for it), then hand every completion to `done`.
    pub fn turn(&mut self, done: &mut impl FnMut(Done<T>)) -> io::Result<()> {
        self.bufs.publish();
        if self.needs_arming() {
            self.arm()?;
        }
        if self.queued > 0 || self.ring.submission().taskrun() {
            // GETEVENTS with no minimum: submit, then run the deferred reads
            // (also those of frames the host queued inside our writes), then
            // return without waiting.
            // SAFETY: no argument; `queued` entries were pushed (and synced
            // by the queue guard's drop) since the last submit.
            let r = unsafe {
                self.ring.submitter().enter::<libc::sigset_t>(
                    self.queued as u32,
                    0,
                    ENTER_GETEVENTS,
                    None,
                )
            };
            match r {
                Ok(n) => self.queued -= n.min(self.queued),
                // Interrupted or out of memory for now: what was not taken
                // stays queued, the next turn tries again.
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EINTR | libc::EAGAIN | libc::EBUSY)
                    ) => {}
                Err(e) => return Err(e),
            }
        }
        self.reap(done);
        Ok(())
    }

    fn reap(&mut self, done: &mut impl FnMut(Done<T>)) {
        let mut cq = self.ring.completion();
        cq.sync();
        for cqe in &mut cq {
            let (ud, res, flags) = (cqe.user_data(), cqe.result(), cqe.flags());
            match ud {
                READ_TAG => {
                    if let Some(bid) = io_uring::cqueue::buffer_select(flags) {
                        if let Some(t) = self.held.get_mut(bid as usize).and_then(|s| s.take()) {
                            self.free_ids.push(bid);
                            // A buffer comes back with a result >= 0 only.
                            done(Done::Read(t, res.max(0) as usize));
                        }
                    }
                    if !io_uring::cqueue::more(flags) {
                        self.armed = false;
                        // Out of buffers is the normal end (armed again when
                        // given some); cancelled is `settle`'s.
                        if res < 0 && -res != libc::ENOBUFS && -res != libc::ECANCELED {
                            self.broken = Some(io::Error::from_raw_os_error(-res));
                        }
                    }
                }
                CANCEL_TAG => {}
                slot => {
                    if let Some(t) = self.writes.get_mut(slot as usize).and_then(|s| s.take()) {
                        self.free_writes.push(slot as u32);
                        self.in_flight -= 1;
                        let r = if res < 0 {
                            Err(io::Error::from_raw_os_error(-res))
                        } else {
                            Ok(res as usize)
                        };
                        done(Done::Wrote(t, r));
                    }
                }
            }
        }
    }

    /// At exit: stop the read, let writes finish, and return every token
    /// the ring still holds (buffers it was given, writes that never
    /// completed). Nothing may use the ring afterwards.
    pub fn settle(&mut self, done: &mut impl FnMut(Done<T>), back: &mut impl FnMut(T)) {
        if self.armed {
            let e = io_uring::opcode::AsyncCancel::new(READ_TAG)
                .build()
                .user_data(CANCEL_TAG);
            let _ = self.push(&e);
        }
        for _ in 0..50 {
            let _ = self.turn(done);
            if !self.armed && self.in_flight == 0 {
                break;
            }
            // A write waiting for room (a TAP whose queue is full) gets a
            // little time; the worker is stopping, it must not hang here.
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        self.reap(done);
        for t in self.held.iter_mut().filter_map(|s| s.take()) {
            back(t);
        }
        for t in self.writes.iter_mut().filter_map(|s| s.take()) {
            back(t);
        }
        self.in_flight = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The provided-buffer ring as the kernel reads it (`struct
    /// io_uring_buf`: addr, len, bid, and the ring's tail in the first
    /// entry's last two bytes), wrapping at its size.
    #[test]
    fn buffer_ring_layout_is_the_kernels() {
        let mut r = BufRing::new(4).expect("mmap");
        // SAFETY: slots 0..4 lie inside the ring's live mapping.
        let read = |r: &BufRing, slot: usize| unsafe {
            let p = r.base.add(slot * 16);
            (
                (p as *const u64).read_unaligned(),
                (p.add(8) as *const u32).read_unaligned(),
                (p.add(12) as *const u16).read_unaligned(),
            )
        };
        // SAFETY: as above (the first slot's last two bytes).
        let tail = |r: &BufRing| unsafe { (r.base.add(14) as *const u16).read_unaligned() };
        for i in 0..5u16 {
            // SAFETY: no kernel reads this ring (never registered): the
            // addresses are only numbers here.
            unsafe {
                r.add(
                    (0x1000 * (i as usize + 1)) as *mut u8,
                    100 + i as u32,
                    7 + i,
                )
            };
        }
        assert_eq!(tail(&r), 0, "nothing visible before publish");
        r.publish();
        assert_eq!(tail(&r), 5);
        // The fifth buffer wrapped onto slot 0; the tail field survived it.
        assert_eq!(read(&r, 0), (0x5000, 104, 11));
        assert_eq!(read(&r, 1), (0x2000, 101, 8));
        assert_eq!(read(&r, 3), (0x4000, 103, 10));
    }
}
