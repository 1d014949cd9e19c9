//! The flow table: a symmetric key (both directions of a flow find the same
//! entry), a slab of entries bounded at `max_flows`, incremental idle expiry
//! and CLOCK eviction (an approximation of least-recently-used that costs one
//! bit per frame instead of list surgery).

use std::hash::{BuildHasher, Hash, Hasher};
use std::net::IpAddr;

use crate::stream::L7Flow;
use crate::verdict::Side;

/// Both endpoints of a flow in a canonical order, so that A→B and B→A give
/// the same key. For ICMP echo both "ports" are the echo id. Addresses are
/// IPv6 numbers (IPv4 mapped), so ordering and hashing are integer work.
/// Ports and protocol share one word (`lo_port | hi_port << 16 | proto << 32`):
/// the key is five words, hashed as they are and compared without branches.
/// Held as 64-bit halves (low half first), not `u128`: aligned to 8, the key
/// takes 40 bytes where a `u128` pair pads it to 48, and it heads the flow
/// entry's first cache line (`FlowEntry`).
#[derive(Debug, Clone, Copy)]
pub struct FlowKey {
    lo: [u64; 2],
    hi: [u64; 2],
    rest: u64,
}

#[inline(always)]
fn halves(x: u128) -> [u64; 2] {
    [x as u64, (x >> 64) as u64]
}

impl PartialEq for FlowKey {
    /// One test on the xor of every word instead of a branch per field
    /// (the derived comparison): a table probe compares on every frame.
    #[inline]
    fn eq(&self, o: &FlowKey) -> bool {
        ((self.lo[0] ^ o.lo[0])
            | (self.lo[1] ^ o.lo[1])
            | (self.hi[0] ^ o.hi[0])
            | (self.hi[1] ^ o.hi[1])
            | (self.rest ^ o.rest))
            == 0
    }
}

impl Eq for FlowKey {}

/// By reference: read through a pointer, a v4 address is one 4-byte load.
/// Copied by value first, it is read as wider words than the parser wrote,
/// and the load waits for the stores to retire (a store-forwarding stall
/// that cost more than the rest of an established frame).
#[inline(always)]
fn addr128(ip: &IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => 0xffff_0000_0000 | u128::from(a.to_bits()),
        IpAddr::V6(a) => a.to_bits(),
    }
}

impl FlowKey {
    #[inline]
    pub fn new(src: IpAddr, sport: u16, dst: IpAddr, dport: u16, proto: u8) -> FlowKey {
        FlowKey::between(&src, sport, &dst, dport, proto)
    }

    /// `new` for addresses that live in a parsed frame (see `addr128`).
    #[inline]
    pub fn between(src: &IpAddr, sport: u16, dst: &IpAddr, dport: u16, proto: u8) -> FlowKey {
        FlowKey::oriented(src, sport, dst, dport, proto).0
    }

    /// `between`, and whether the sender (`src`, `sport`) became the key's
    /// high end. Both frames of one direction get the same answer, the two
    /// directions opposite ones, except for a flow from an endpoint to
    /// itself, whose two directions are one. So an entry that records its
    /// initiator's answer (`FlowEntry::init_hi`) tells a frame's direction
    /// by one compare of this bit instead of an address and a port.
    #[inline(always)]
    pub fn oriented(
        src: &IpAddr,
        sport: u16,
        dst: &IpAddr,
        dport: u16,
        proto: u8,
    ) -> (FlowKey, bool) {
        let (a, b) = (addr128(src), addr128(dst));
        // `(a, sport) > (b, dport)`, without the branch a tuple compare takes.
        let swap = (a > b) | ((a == b) & (sport > dport));
        let (lo, hi, lo_port, hi_port) = if swap {
            (b, a, dport, sport)
        } else {
            (a, b, sport, dport)
        };
        let rest = u64::from(lo_port) | u64::from(hi_port) << 16 | u64::from(proto) << 32;
        let (lo, hi) = (halves(lo), halves(hi));
        (FlowKey { lo, hi, rest }, swap)
    }

    /// The address at the key's high end (`high`) or low end, as the
    /// family it was given in (`v4`: IPv4, which the key holds mapped).
    #[inline]
    pub fn addr(&self, high: bool, v4: bool) -> IpAddr {
        let [a, b] = if high { self.hi } else { self.lo };
        let x = u128::from(a) | u128::from(b) << 64;
        if v4 {
            IpAddr::V4(std::net::Ipv4Addr::from_bits(x as u32))
        } else {
            IpAddr::V6(std::net::Ipv6Addr::from_bits(x))
        }
    }

    /// The port at the key's high end or low end.
    #[inline]
    pub fn port(&self, high: bool) -> u16 {
        (self.rest >> if high { 16 } else { 0 }) as u16
    }

    /// Direction-independent hash with a fixed seed: the same on every
    /// worker, for steering both directions of a flow to one worker.
    pub fn symmetric_hash(&self) -> u64 {
        SeededState::FIXED.hash_one(self)
    }
}

impl Hash for FlowKey {
    #[inline(always)]
    fn hash<H: Hasher>(&self, h: &mut H) {
        // The words `write_u128` wrote when the halves were one number.
        h.write_u64(self.lo[0]);
        h.write_u64(self.lo[1]);
        h.write_u64(self.hi[0]);
        h.write_u64(self.hi[1]);
        h.write_u64(self.rest);
    }
}

/// A fast multiply-fold hasher for the flow key (five words). Every word is
/// mixed with a secret key of its own position (per table, from the standard
/// library's random keys), so remote peers cannot aim for collisions: a fold
/// where one side is zero forgets the other, and only a secret key can make
/// it zero; distinct keys per position keep equal words (a flow between an
/// address and itself) from cancelling. The words are kept until `finish`,
/// which folds them in pairs side by side: two multiplies deep instead of
/// four, on the path of every frame.
#[derive(Clone, Copy)]
pub struct FlowHasher {
    keys: [u64; 6],
    words: [u64; 5],
    n: usize,
}

#[inline(always)]
fn fold(a: u64, b: u64) -> u64 {
    let p = u128::from(a) * u128::from(b);
    (p as u64) ^ ((p >> 64) as u64)
}

impl Hasher for FlowHasher {
    #[inline(always)]
    fn write_u64(&mut self, x: u64) {
        match self.words.get_mut(self.n) {
            Some(w) => {
                *w = x;
                self.n += 1;
            }
            // Longer input than a flow key (not written by this crate):
            // chained into the last word, still keyed.
            None => self.words[4] = fold(self.words[4] ^ x, self.keys[5]),
        }
    }
    #[inline(always)]
    fn write_u128(&mut self, x: u128) {
        self.write_u64(x as u64);
        self.write_u64((x >> 64) as u64);
    }
    fn write(&mut self, bytes: &[u8]) {
        for c in bytes.chunks(8) {
            let mut w = [0u8; 8];
            w[..c.len()].copy_from_slice(c);
            self.write_u64(u64::from_ne_bytes(w));
        }
    }
    #[inline(always)]
    fn finish(&self) -> u64 {
        let (k, w) = (&self.keys, &self.words);
        let a = fold(w[0] ^ k[0], w[1] ^ k[1]);
        let b = fold(w[2] ^ k[2], w[3] ^ k[3]);
        let c = fold(w[4] ^ k[4], self.n as u64 ^ k[5]);
        fold(a ^ c, b ^ k[0].rotate_left(32)).rotate_left(23)
    }
}

#[derive(Clone, Copy)]
pub struct SeededState {
    keys: [u64; 6],
}

impl SeededState {
    pub fn random() -> SeededState {
        let r = std::collections::hash_map::RandomState::new();
        SeededState {
            keys: std::array::from_fn(|i| r.hash_one(0x5eed_u64 + i as u64)),
        }
    }

    /// Fixed keys, for hashes that must agree across workers.
    const FIXED: SeededState = SeededState {
        keys: [
            0x243f_6a88_85a3_08d3,
            0x1319_8a2e_0370_7344,
            0xa409_3822_299f_31d0,
            0x082e_fa98_ec4e_6c89,
            0x4528_21e6_38d0_1377,
            0xbe54_66cf_34e9_0c6c,
        ],
    };
}

impl BuildHasher for SeededState {
    type Hasher = FlowHasher;
    #[inline(always)]
    fn build_hasher(&self) -> FlowHasher {
        FlowHasher {
            keys: self.keys,
            words: [0; 5],
            n: 0,
        }
    }
}

/// Connection tracking state. Non-TCP flows stay `Open`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnState {
    /// UDP, ICMP and other datagram flows.
    Open,
    SynSent,
    SynReceived,
    Established,
    /// A FIN was seen; `fin_init`/`fin_resp` record which side(s).
    Closing {
        fin_init: bool,
        fin_resp: bool,
    },
    /// RST seen, or both FINs.
    Closed,
}

impl ConnState {
    /// Established flows get the long timeout; everything else is transitory.
    pub fn established(self) -> bool {
        matches!(self, ConnState::Established)
    }
}

/// An allowed flow (denied ones are never stored).
///
/// Laid out for the established path (`Engine::established`), which reads
/// one entry per frame from a table far larger than the cache: the fields
/// it reads for a datagram fill the entry's first cache line, in order,
/// and a TCP segment's sequence tracking and state open the second one.
/// Left to the compiler, the same fields spread over three or four lines;
/// over 10 000 flows a UDP datagram then cost 2.5 times as much.
#[repr(C, align(64))]
pub struct FlowEntry {
    // First line: the key (40 bytes), then what every frame reads.
    pub key: FlowKey,
    pub last_seen: u64,
    pub l7: Option<Box<L7Flow>>,
    /// Policy generation the decision was made under (`Engine::policy_gen`:
    /// 32 bits, wrapping; equal means current).
    pub policy_gen: u32,
    /// The initiator is the high end of `key` (`FlowKey::oriented`): a
    /// frame whose sender's answer equals this one comes from the initiator.
    pub init_hi: bool,
    /// Port the initiator's frames arrive on; the responder's arrive on the
    /// other one. A frame from either address on the wrong side is a spoof.
    pub client_side: Side,
    /// Set on every frame, cleared by the CLOCK hand.
    pub referenced: bool,
    // Second line: TCP's, then what only the slow paths read.
    /// Sequence-space knowledge of a TCP flow without L7 state, to judge
    /// its RSTs (an L7 flow's stream does that itself).
    pub seq: SeqTrack,
    pub state: ConnState,
    pub proto: u8,
    /// Adopted mid-stream (no SYN seen): the initiator is only a guess.
    pub picked_up: bool,
    /// The flow's addresses are IPv4 (the key holds them mapped into IPv6):
    /// with `init_hi`, what gives back the initiator's and the responder's
    /// address and port from the key (`init_src`, `resp`, `init_sport`)
    /// instead of a second copy that would not fit in two lines.
    pub v4: bool,
    /// The port policy judged (ICMP: the type), as logged.
    pub resp_port: u16,
    /// The deadline this entry has in the engine's timer queue (when `l7`
    /// has one); a queued deadline that differs is stale.
    pub l7_timer: Option<u64>,
}

// The layout the comment above describes; a field added to the first line
// must fit in it.
const _: () = {
    assert!(std::mem::offset_of!(FlowEntry, seq) == 64);
    assert!(std::mem::size_of::<Option<FlowEntry>>() == 128);
};

/// What an L3/L4-only TCP flow's segments say about where each receiver
/// stands, enough for the RFC 5961 RST check: an RST is acceptable when its
/// sequence number lies within the receiver's window from the receiver's
/// latest ack. Index 0 is the initiator's direction.
///
/// Only the receiver's own segments move its ack and window, so a spoof
/// from the other side (the clients' side posing as a client) cannot widen
/// what its RST must hit. Windows are scaled as both SYNs agreed; on a flow
/// adopted mid-stream the scale is unknown and the widest (14) is assumed,
/// and until the receiver has sent an ACK nothing is known: its RSTs pass
/// unchecked.
#[derive(Debug, Clone, Copy)]
pub struct SeqTrack {
    /// Latest ack each direction carried: where its sender's receive side
    /// stands in the other direction's stream.
    ack: [u32; 2],
    /// Largest receive window each direction advertised, in bytes.
    win: [u32; 2],
    /// Window-scale shift each direction's SYN announced.
    shift: [Option<u8>; 2],
    /// The shift each direction's windows are scaled by, as `shift` and
    /// `seen` give it; kept up to date at each SYN, so that the segments in
    /// between (nearly all) read it instead of working it out.
    scale: [u8; 2],
    /// Bit d: `ack[d]` known; bit 2 + d: direction d's SYN seen.
    seen: u8,
    /// The initiator's ISN + 1: what an RST answering its SYN acknowledges.
    syn_next: u32,
}

/// TCP flags the tracker looks at.
const SYN: u8 = 0x02;
const RST: u8 = 0x04;
const ACK: u8 = 0x10;

impl Default for SeqTrack {
    fn default() -> SeqTrack {
        SeqTrack {
            ack: [0; 2],
            win: [0; 2],
            shift: [None; 2],
            // No handshake seen: the scale in use is unknown.
            scale: [14; 2],
            seen: 0,
            syn_next: 0,
        }
    }
}

impl SeqTrack {
    /// The scale of direction `d`'s windows, from what the SYNs said.
    fn scale_of(&self, d: usize) -> u8 {
        if self.seen & 0b1100 != 0b1100 {
            // No handshake seen: the scale in use is unknown.
            return 14;
        }
        match self.shift {
            // Scaling is on only when both SYNs carried the option.
            [Some(_), Some(_)] => self.shift[d].unwrap_or(0).min(14),
            _ => 0,
        }
    }

    /// A segment in direction `d` (0: from the initiator) was forwarded;
    /// `wscale` is its SYN's window-scale option.
    #[inline(always)]
    pub fn track(
        &mut self,
        d: usize,
        seq: u32,
        ack: u32,
        flags: u8,
        window: u16,
        wscale: Option<u8>,
    ) {
        if flags & SYN != 0 {
            self.seen |= 4 << d;
            self.shift[d] = wscale;
            if d == 0 {
                self.syn_next = seq.wrapping_add(1);
            }
            self.scale = [self.scale_of(0), self.scale_of(1)];
        }
        if flags & ACK != 0 {
            let known = self.seen & (1 << d) != 0;
            if !known || (ack.wrapping_sub(self.ack[d]) as i32) > 0 {
                self.ack[d] = ack;
            }
            self.seen |= 1 << d;
        }
        // A SYN's own window is never scaled.
        let shift = if flags & SYN != 0 { 0 } else { self.scale[d] };
        self.win[d] = self.win[d].max(u32::from(window) << shift);
    }

    /// Whether an RST in direction `d` is one its receiver would accept.
    /// `syn_sent`: only the initiator's SYN has been seen; an RST from the
    /// responder then must acknowledge it (RFC 9293, SYN-SENT).
    #[inline]
    pub fn rst_acceptable(&self, d: usize, seq: u32, ack: u32, flags: u8, syn_sent: bool) -> bool {
        debug_assert!(flags & RST != 0);
        if syn_sent {
            let syn_seen = self.seen & 4 != 0;
            return d == 0 || !syn_seen || (flags & ACK != 0 && ack == self.syn_next);
        }
        let r = 1 - d;
        if self.seen & (1 << r) == 0 {
            return true;
        }
        let off = seq.wrapping_sub(self.ack[r]) as i32;
        off >= 0 && off as u32 <= self.win[r]
    }
}

impl FlowEntry {
    /// The initiator's address: frames whose (src, sport) are the
    /// initiator's go forward.
    #[inline]
    pub fn init_src(&self) -> IpAddr {
        self.key.addr(self.init_hi, self.v4)
    }

    #[inline]
    pub fn init_sport(&self) -> u16 {
        self.key.port(self.init_hi)
    }

    /// The responder's address.
    #[inline]
    pub fn resp(&self) -> IpAddr {
        self.key.addr(!self.init_hi, self.v4)
    }

    #[inline]
    pub fn from_initiator(&self, src: IpAddr, sport: u16) -> bool {
        self.sent_by(&src, sport)
    }

    /// `from_initiator` for an address in a parsed frame (see `addr128`).
    #[inline]
    pub fn sent_by(&self, src: &IpAddr, sport: u16) -> bool {
        sport == self.init_sport() && *src == self.init_src()
    }

    /// A frame in direction `fwd` (from the initiator) arrived on `side`,
    /// where that direction's frames arrive.
    #[inline(always)]
    pub fn on_its_side(&self, fwd: bool, side: Side) -> bool {
        fwd == (side == self.client_side)
    }

    pub fn tuple(&self) -> crate::log::FlowTuple {
        crate::log::FlowTuple {
            src: self.init_src(),
            dst: self.resp(),
            proto: self.proto,
            sport: self.init_sport(),
            dport: self.resp_port,
        }
    }
}

/// Idle timeouts by protocol and state.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub tcp_established: u64,
    pub tcp_transitory: u64,
    pub tcp_syn: u64,
    pub udp: u64,
    pub icmp: u64,
}

impl Timeouts {
    pub fn for_entry(&self, e: &FlowEntry) -> u64 {
        match e.proto {
            6 if e.state.established() => self.tcp_established,
            // `tcp_syn` (which an operator may shorten against floods)
            // only for a SYN nobody answered. Once the SYN-ACK passed, the
            // client counts as connected and sends no SYN again: an entry
            // gone while its ACK and first data are lost (and the server
            // still retransmits its SYN-ACK, gaps up to 16 s on Linux)
            // would leave a connection that can never resume, since an L7
            // flow is never adopted mid-stream. So it lives the transitory
            // timeout, as conntrack's SYN_RECV (60 s).
            6 if e.state == ConnState::SynSent => self.tcp_syn,
            6 => self.tcp_transitory,
            1 | 58 => self.icmp,
            _ => self.udp,
        }
    }
}

/// Slots scanned per `expire` call at most: no tick does more than this
/// much work.
const SWEEP_BUDGET: usize = 1024;
/// The time the sweep takes for a turn of the table, as long as that needs
/// no more than `SWEEP_BUDGET` slots a tick: idle timeouts count in tens of
/// seconds, and a sweep at every tick's full budget read each entry of a
/// table of a thousand flows a thousand times a second.
pub const SWEEP_PERIOD_NS: u64 = 1_000_000_000;
/// Slots the hand looks at for an expired entry before a full table refuses.
const RECLAIM_BUDGET: usize = 8;
/// Slots looked at for a half-open entry to drop when the table is full.
const EARLY_DROP_SCAN: usize = 32;

/// The flow index: open addressing with linear probing over a power-of-two
/// array, at most half full. A bucket holds the low 32 bits of its entry's
/// hash (`<< 32`) and its slot number + 1 (0: empty). A lookup compares the
/// stored hash bits before it reads an entry, and compares keys on the entry
/// itself, which the frame needs next anyway: one cache line per lookup
/// besides the entry's own, where a map of keys to slots reads the key's
/// bucket, then the slot. Removal shifts the run after the hole back (no
/// tombstones), from the stored hash bits, without rehashing. The hash is
/// keyed per table (`SeededState::random`), so no peer can aim at one run.
struct FlowIndex {
    buckets: Vec<u64>,
    mask: usize,
}

impl FlowIndex {
    fn with_room(n: usize) -> FlowIndex {
        let size = (2 * n).next_power_of_two().max(8);
        FlowIndex {
            buckets: vec![0; size],
            mask: size - 1,
        }
    }

    #[inline(always)]
    fn bucket(h: u32, slot: u32) -> u64 {
        u64::from(h) << 32 | u64::from(slot + 1)
    }

    /// Place a slot with hash `h`; the caller keeps the index at most half full.
    fn place(&mut self, h: u32, slot: u32) {
        let mut i = h as usize & self.mask;
        while self.buckets[i] != 0 {
            i = (i + 1) & self.mask;
        }
        self.buckets[i] = FlowIndex::bucket(h, slot);
    }

    /// Room for `n` entries at most half full: doubled, every bucket placed
    /// again from its stored hash bits.
    fn reserve(&mut self, n: usize) {
        if 2 * n <= self.buckets.len() {
            return;
        }
        let old = std::mem::replace(self, FlowIndex::with_room(n.max(self.buckets.len())));
        for b in old.buckets.into_iter().filter(|&b| b != 0) {
            self.place((b >> 32) as u32, (b as u32) - 1);
        }
    }

    /// Remove the bucket of `slot` (hash `h`), closing the gap: each later
    /// bucket of the run moves into the hole unless its home lies after the
    /// hole (then it would no longer be found from there).
    fn take(&mut self, h: u32, slot: u32) {
        let want = FlowIndex::bucket(h, slot);
        let mut hole = h as usize & self.mask;
        while self.buckets[hole] != want {
            if self.buckets[hole] == 0 {
                debug_assert!(false, "slot {slot} not in the index");
                return;
            }
            hole = (hole + 1) & self.mask;
        }
        let mut j = (hole + 1) & self.mask;
        loop {
            let b = self.buckets[j];
            if b == 0 {
                break;
            }
            let home = (b >> 32) as usize & self.mask;
            if (j.wrapping_sub(home) & self.mask) >= (j.wrapping_sub(hole) & self.mask) {
                self.buckets[hole] = b;
                hole = j;
            }
            j = (j + 1) & self.mask;
        }
        self.buckets[hole] = 0;
    }
}

pub struct FlowTable {
    index: FlowIndex,
    seed: SeededState,
    slots: Vec<Option<FlowEntry>>,
    free: Vec<u32>,
    len: usize,
    max: usize,
    hand: usize,
    sweep: usize,
}

impl FlowTable {
    pub fn new(max: usize) -> FlowTable {
        // Grow on demand: a huge limit should not cost memory up front.
        let initial = max.min(4096);
        FlowTable {
            index: FlowIndex::with_room(initial),
            seed: SeededState::random(),
            slots: Vec::with_capacity(initial),
            free: Vec::new(),
            len: 0,
            max,
            hand: 0,
            sweep: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn is_full(&self) -> bool {
        self.len >= self.max
    }

    /// The bucket-and-tag part of the key's keyed hash. Spelled out rather
    /// than `hash_one`, which the compiler left as a call on the hot path.
    #[inline(always)]
    #[allow(clippy::manual_hash_one)]
    fn hash(&self, key: &FlowKey) -> u32 {
        let mut h = self.seed.build_hasher();
        key.hash(&mut h);
        h.finish() as u32
    }

    #[inline(always)]
    pub fn find(&self, key: &FlowKey) -> Option<u32> {
        let h = self.hash(key);
        let tag = u64::from(h) << 32;
        let mut i = h as usize & self.index.mask;
        loop {
            // At most half full: a run always ends.
            let b = *self.index.buckets.get(i)?;
            if b == 0 {
                return None;
            }
            if b & !0xffff_ffff == tag {
                let slot = (b as u32).wrapping_sub(1);
                let hit = self.slots.get(slot as usize).and_then(Option::as_ref);
                if hit.is_some_and(|e| e.key == *key) {
                    return Some(slot);
                }
            }
            i = (i + 1) & self.index.mask;
        }
    }

    /// `find`, and the entry.
    #[inline(always)]
    pub fn find_mut(&mut self, key: &FlowKey) -> Option<(u32, &mut FlowEntry)> {
        let slot = self.find(key)?;
        self.get_mut(slot).map(|e| (slot, e))
    }

    #[inline(always)]
    pub fn get_mut(&mut self, idx: u32) -> Option<&mut FlowEntry> {
        self.slots.get_mut(idx as usize).and_then(Option::as_mut)
    }

    pub fn get(&self, idx: u32) -> Option<&FlowEntry> {
        self.slots.get(idx as usize).and_then(Option::as_ref)
    }

    /// Insert; the caller checked `is_full` (and evicted if it wanted to)
    /// and that no entry has this key. Returns None when the table is full.
    pub fn insert(&mut self, entry: FlowEntry) -> Option<u32> {
        if self.is_full() {
            return None;
        }
        debug_assert!(self.find(&entry.key).is_none(), "key inserted twice");
        let h = self.hash(&entry.key);
        let idx = match self.free.pop() {
            Some(i) => {
                self.slots[i as usize] = Some(entry);
                i
            }
            None => {
                self.slots.push(Some(entry));
                (self.slots.len() - 1) as u32
            }
        };
        self.len += 1;
        self.index.reserve(self.len);
        self.index.place(h, idx);
        Some(idx)
    }

    pub fn remove(&mut self, idx: u32) -> Option<FlowEntry> {
        let e = self.slots.get_mut(idx as usize)?.take()?;
        let h = self.hash(&e.key);
        self.index.take(h, idx);
        self.len -= 1;
        self.free.push(idx);
        Some(e)
    }

    /// CLOCK: evict the first entry not referenced since the hand last
    /// passed it. Two turns at most, since the first clears every bit.
    pub fn evict_one(&mut self) -> Option<(u32, FlowEntry)> {
        let n = self.slots.len();
        for _ in 0..2 * n {
            self.hand = (self.hand + 1) % n.max(1);
            if let Some(e) = self.slots.get_mut(self.hand).and_then(Option::as_mut) {
                if e.referenced {
                    e.referenced = false;
                } else {
                    let idx = self.hand as u32;
                    return self.remove(idx).map(|e| (idx, e));
                }
            }
        }
        None
    }

    /// Look a few slots ahead of the hand for an idle-expired entry, so a full
    /// table does not refuse flows while dead ones wait for the sweep.
    pub fn reclaim_expired(&mut self, now: u64, t: &Timeouts) -> Option<(u32, FlowEntry)> {
        let n = self.slots.len();
        for _ in 0..RECLAIM_BUDGET.min(n) {
            self.hand = (self.hand + 1) % n;
            if let Some(e) = self.slots.get(self.hand).and_then(Option::as_ref) {
                if now.saturating_sub(e.last_seen) > t.for_entry(e) {
                    let idx = self.hand as u32;
                    return self.remove(idx).map(|e| (idx, e));
                }
            }
        }
        None
    }

    /// Every entry (a walk over every slot).
    pub fn entries(&self) -> impl Iterator<Item = &FlowEntry> {
        self.slots.iter().flatten()
    }

    /// Sum of the L7 flows' held bytes (a walk over every slot).
    pub fn held_bytes(&self) -> usize {
        self.slots
            .iter()
            .flatten()
            .filter_map(|e| e.l7.as_ref())
            .map(|l| l.held_bytes())
            .sum()
    }

    /// Early drop, as conntrack does with entries not yet assured: among
    /// the next `EARLY_DROP_SCAN` slots after the hand, remove the half-open
    /// TCP entry (SYN seen, handshake not finished) idle the longest, however
    /// fresh. A SYN flood answered by the server refreshes its entries with
    /// every SYN-ACK retransmission, so an idle minimum would let it keep
    /// every slot; without one, a handshake lives about as long as the flood
    /// takes to come round the table (a LAN handshake needs far less), and
    /// once finished it is never taken. Established flows are never chosen.
    pub fn reclaim_half_open(&mut self, now: u64) -> Option<(u32, FlowEntry)> {
        let n = self.slots.len();
        let mut best: Option<(usize, u64)> = None;
        for _ in 0..EARLY_DROP_SCAN.min(n) {
            self.hand = (self.hand + 1) % n;
            if let Some(e) = self.slots.get(self.hand).and_then(Option::as_ref) {
                let half_open = matches!(e.state, ConnState::SynSent | ConnState::SynReceived);
                let idle = now.saturating_sub(e.last_seen);
                if half_open && best.is_none_or(|(_, b)| idle > b) {
                    best = Some((self.hand, idle));
                }
            }
        }
        let idx = best?.0 as u32;
        self.remove(idx).map(|e| (idx, e))
    }

    /// Remove idle entries from the next `SWEEP_BUDGET` slots; `f` sees each.
    pub fn expire(&mut self, now: u64, t: &Timeouts, f: impl FnMut(u32, FlowEntry)) {
        self.expire_some(now, t, SWEEP_BUDGET, f)
    }

    /// The sweep's share of `elapsed` ns: the slots that keep it at one turn
    /// of the table per `SWEEP_PERIOD_NS` (0 until that is a whole slot).
    pub fn sweep_due(&self, elapsed: u64) -> usize {
        let n = self.slots.len() as u128;
        (n * u128::from(elapsed) / u128::from(SWEEP_PERIOD_NS)).min(SWEEP_BUDGET as u128) as usize
    }

    /// `expire` over the next `budget` slots (at most `SWEEP_BUDGET`).
    pub fn expire_some(
        &mut self,
        now: u64,
        t: &Timeouts,
        budget: usize,
        mut f: impl FnMut(u32, FlowEntry),
    ) {
        let n = self.slots.len();
        for _ in 0..budget.min(SWEEP_BUDGET).min(n) {
            self.sweep = (self.sweep + 1) % n;
            let idle = match self.slots.get(self.sweep).and_then(Option::as_ref) {
                Some(e) => now.saturating_sub(e.last_seen) > t.for_entry(e),
                None => false,
            };
            if idle {
                if let Some(e) = self.remove(self.sweep as u32) {
                    f(self.sweep as u32, e);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn entry(sport: u16, now: u64) -> FlowEntry {
        let (key, init_hi) = FlowKey::oriented(&ip("10.0.0.1"), sport, &ip("10.0.0.2"), 80, 6);
        FlowEntry {
            key,
            init_hi,
            v4: true,
            resp_port: 80,
            proto: 6,
            client_side: 0,
            picked_up: false,
            policy_gen: 0,
            state: ConnState::Established,
            last_seen: now,
            referenced: true,
            l7: None,
            l7_timer: None,
            seq: SeqTrack::default(),
        }
    }

    const T: Timeouts = Timeouts {
        tcp_established: 100,
        tcp_transitory: 10,
        tcp_syn: 10,
        udp: 10,
        icmp: 10,
    };

    #[test]
    fn key_is_symmetric_and_distinguishes_ports_and_proto() {
        let a = FlowKey::new(ip("10.0.0.1"), 1000, ip("10.0.0.2"), 80, 6);
        let b = FlowKey::new(ip("10.0.0.2"), 80, ip("10.0.0.1"), 1000, 6);
        assert_eq!(a, b);
        assert_eq!(a.symmetric_hash(), b.symmetric_hash());
        assert_ne!(a, FlowKey::new(ip("10.0.0.1"), 1001, ip("10.0.0.2"), 80, 6));
        assert_ne!(
            a,
            FlowKey::new(ip("10.0.0.1"), 1000, ip("10.0.0.2"), 80, 17)
        );
        // Same address both sides: ports decide the order.
        let c = FlowKey::new(ip("10.0.0.1"), 5, ip("10.0.0.1"), 7, 17);
        assert_eq!(c, FlowKey::new(ip("10.0.0.1"), 7, ip("10.0.0.1"), 5, 17));
        let v6 = FlowKey::new(ip("fd66::11"), 1, ip("fd66::2"), 2, 6);
        assert_eq!(v6, FlowKey::new(ip("fd66::2"), 2, ip("fd66::11"), 1, 6));
    }

    #[test]
    fn keyed_hash_spreads_keys_that_differ_in_one_field_or_mirror_each_other() {
        // Keys an attacker can choose: one address fixed, the other and the
        // ports walked, and flows between an address and itself (equal
        // words, which an unkeyed xor of folds would cancel).
        let s = SeededState::random();
        let mut keys = Vec::new();
        for i in 0..64u32 {
            let a = IpAddr::from(std::net::Ipv4Addr::from_bits(0x0a42_0000 | i));
            for p in 0..64u16 {
                keys.push(FlowKey::new(a, 1000 + p, ip("10.66.0.2"), 80, 6));
                keys.push(FlowKey::new(a, p, a, p, 17));
                keys.push(FlowKey::new(a, p, a, 0, 17));
            }
        }
        let distinct: std::collections::HashSet<FlowKey> = keys.iter().copied().collect();
        let mut hashes: Vec<u64> = distinct.iter().map(|k| s.hash_one(k)).collect();
        // The index takes its bucket from the low bits: all used.
        let mut buckets: Vec<u64> = hashes.iter().map(|h| h & 127).collect();
        hashes.sort_unstable();
        hashes.dedup();
        assert_eq!(
            hashes.len(),
            distinct.len(),
            "64-bit hashes of distinct keys collide"
        );
        buckets.sort_unstable();
        buckets.dedup();
        assert_eq!(buckets.len(), 128);
        // Another table, other keys: the same flows hash elsewhere.
        let t = SeededState::random();
        let k = keys[0];
        assert_ne!(s.hash_one(k), t.hash_one(k));
    }

    #[test]
    fn orientation_tells_a_frames_direction_as_its_addresses_do() {
        let eps = [
            ("10.0.0.1", 1000),
            ("10.0.0.2", 80),
            ("10.0.0.1", 80),
            ("10.0.0.2", 1000),
            ("fd66::2", 80),
            ("fd66::11", 1),
        ];
        for (a, pa) in eps {
            for (b, pb) in eps {
                let (a, b) = (ip(a), ip(b));
                let (k, init_hi) = FlowKey::oriented(&a, pa, &b, pb, 6);
                let (back, back_hi) = FlowKey::oriented(&b, pb, &a, pa, 6);
                assert_eq!(k, back);
                let e = FlowEntry {
                    key: k,
                    init_hi,
                    v4: a.is_ipv4(),
                    ..entry(pa, 0)
                };
                // What `sent_by` says of the reverse direction, the bit
                // says: backward, unless a and b are one endpoint.
                assert_eq!(back_hi == e.init_hi, e.sent_by(&b, pb), "{a}:{pa} {b}:{pb}");
                assert_eq!(back_hi == init_hi, (a, pa) == (b, pb));
            }
        }
    }

    #[test]
    fn windows_are_scaled_as_both_syns_agreed() {
        let (c, s) = (1000u32, 5000u32);
        let handshake = |cs: Option<u8>, ss: Option<u8>| {
            let mut t = SeqTrack::default();
            t.track(0, c, 0, SYN, 100, cs);
            t.track(1, s, c + 1, SYN | ACK, 100, ss);
            t.track(0, c + 1, s + 1, ACK, 1000, None);
            t.track(1, s + 1, c + 1, ACK, 500, None);
            t
        };
        // Both SYNs carry the option: the client's windows are scaled by 2,
        // the server's by 7 (4000 and 64000 bytes).
        let t = handshake(Some(2), Some(7));
        assert!(t.rst_acceptable(1, s + 1 + 4000, 0, RST, false));
        assert!(!t.rst_acceptable(1, s + 1 + 4001, 0, RST, false));
        assert!(t.rst_acceptable(0, c + 1 + 64_000, 0, RST, false));
        assert!(!t.rst_acceptable(0, c + 1 + 64_001, 0, RST, false));
        // One SYN without it: no scaling either way (RFC 7323 2.2).
        let t = handshake(Some(2), None);
        assert!(t.rst_acceptable(0, c + 1 + 500, 0, RST, false));
        assert!(!t.rst_acceptable(0, c + 1 + 501, 0, RST, false));
        // No handshake seen (adopted mid-stream): the widest scale.
        let mut t = SeqTrack::default();
        t.track(1, s, c, ACK, 1, None);
        assert!(t.rst_acceptable(0, c + (1 << 14), 0, RST, false));
        assert!(!t.rst_acceptable(0, c + (1 << 14) + 1, 0, RST, false));
    }

    #[test]
    fn table_is_bounded_and_reuses_slots() {
        let mut t = FlowTable::new(2);
        let a = t.insert(entry(1, 0)).unwrap();
        t.insert(entry(2, 0)).unwrap();
        assert!(t.is_full());
        assert!(t.insert(entry(3, 0)).is_none());
        t.remove(a).unwrap();
        assert!(t.find(&entry(1, 0).key).is_none());
        assert_eq!(t.insert(entry(3, 0)), Some(a));
        assert_eq!(t.find(&entry(3, 0).key), Some(a));
    }

    #[test]
    fn index_finds_every_entry_through_growth_and_removals() {
        // Inserts and removals in a scrambled order, checked against a
        // model after each step: removal must close every gap it leaves.
        let mut t = FlowTable::new(5000);
        let mut live = std::collections::BTreeMap::new();
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for step in 0..20_000u32 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let port = (x % 3000) as u16;
            let e = entry(port, 0);
            match live.get(&port) {
                Some(&idx) if x & 0x10000 != 0 => {
                    let gone = t.remove(idx).unwrap();
                    assert_eq!(gone.init_sport(), port);
                    live.remove(&port);
                }
                Some(_) => {}
                None => {
                    live.insert(port, t.insert(e).unwrap());
                }
            }
            if step % 997 == 0 || step > 19_900 {
                assert_eq!(t.len(), live.len());
                for p in 0..3000u16 {
                    assert_eq!(t.find(&entry(p, 0).key), live.get(&p).copied(), "port {p}");
                }
            }
        }
    }

    #[test]
    fn clock_evicts_unreferenced_first() {
        let mut t = FlowTable::new(3);
        for p in 1..=3 {
            t.insert(entry(p, 0)).unwrap();
        }
        // First pass clears all bits; then touch flow 2 and 3 again.
        for i in 0..3 {
            t.get_mut(i).unwrap().referenced = false;
        }
        t.get_mut(1).unwrap().referenced = true;
        t.get_mut(2).unwrap().referenced = true;
        let (_, ev) = t.evict_one().unwrap();
        assert_eq!(ev.init_sport(), 1);
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn expire_removes_idle_by_state() {
        let mut t = FlowTable::new(10);
        t.insert(entry(1, 0)).unwrap();
        let mut syn = entry(2, 0);
        syn.state = ConnState::SynSent;
        t.insert(syn).unwrap();
        let mut gone = Vec::new();
        t.expire(50, &T, |_, e| gone.push(e.init_sport()));
        assert_eq!(
            gone,
            vec![2],
            "transitory flow idle past 10 expires, established stays"
        );
        t.expire(200, &T, |_, e| gone.push(e.init_sport()));
        assert_eq!(gone, vec![2, 1]);
        assert!(t.is_empty());
    }

    #[test]
    fn early_drop_takes_the_longest_idle_half_open_entry_only() {
        let mut t = FlowTable::new(8);
        for p in 1..=8u16 {
            let mut e = entry(p, 100 + u64::from(p));
            if p % 2 == 0 {
                e.state = ConnState::SynReceived;
            }
            t.insert(e).unwrap();
        }
        // Half-open: 2, 4, 6, 8; the oldest (2) goes first, however fresh
        // (1 ns idle is enough).
        let (_, e) = t.reclaim_half_open(109).unwrap();
        assert_eq!(e.init_sport(), 2);
        let mut taken: Vec<u16> = (0..3)
            .map(|_| t.reclaim_half_open(109).unwrap().1.init_sport())
            .collect();
        taken.sort();
        assert_eq!(taken, vec![4, 6, 8]);
        assert!(
            t.reclaim_half_open(1_000_000).is_none(),
            "established flows are never taken"
        );
        assert_eq!(t.len(), 4);
    }
}
