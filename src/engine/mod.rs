//! The sans-I/O engine: `(side, frame, now)` in, a verdict for that frame plus
//! frames to emit and log events out. One `Engine` per worker; it owns that
//! worker's flows. The policy is shared read-only (`Arc`) and swappable.
//!
//! Choices an operator may want to know:
//! * The flow table holds allowed flows only. A new flow is judged once
//!   (`Policy::decide`, one log event), by its first packet: a TCP SYN, any
//!   UDP datagram, an ICMP echo request (keyed by echo id; policy sees the
//!   ICMP type as the port). Replies and later packets of a stored flow pass.
//!   Denied packets leave nothing behind, so they cannot fill the table.
//! * TCP segments without a flow and without SYN (an enforcer restart
//!   mid-connection) are adopted when policy allows them in their own
//!   direction and the port has no L7 rules (`tcp_pickup`, default on);
//!   conntrack in the Cilium style would drop them, cutting every live
//!   connection on restart. L7 connections cannot be joined mid-stream and
//!   are dropped (`no-flow`): that includes a segment whose reverse direction
//!   has L7 rules (a server's reply, or a spoof posing as one), which would
//!   otherwise open the connection's 4-tuple as L4-only.
//! * Each entry is pinned to sides: the initiator's frames arrive on the
//!   side its first frame came from, the responder's on the other. A frame
//!   from the wrong side is a spoof and never counts as part of the flow
//!   (`no-flow`; a datagram is judged on its own instead). A SYN from the
//!   wrong side of an adopted entry replaces it (the adoption was a guess).
//! * A packet is never judged as the "reply" of a flow that is not stored:
//!   with default-open egress that would let anyone in.
//! * Full table: see `TableFullPolicy`. Expired flows are reclaimed first,
//!   then (for a new TCP flow) the longest idle of the half-open ones near
//!   the CLOCK hand, so that a SYN flood cannot lock new connections out.
//! * A policy swap re-decides each flow on its next packet; a flow now
//!   denied is removed (one event), an allowed one keeps its L7 state. A TCP
//!   connection whose port gained L7 rules is ended the same way (it cannot
//!   be parsed from mid-stream); the client reconnects under the new rules.
//! * Fragments are held until their datagram is whole, judged on the
//!   reassembled L4 header, then forwarded unchanged or dropped together.
//!   TCP fragments to an L7 port are dropped (`unsupported`).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::IpAddr;
use std::sync::Arc;

use crate::log::{Decision, Event, FlowTuple, Subject};
use crate::packet::build::{tcp_checksum_ok, tcp_segment, tcp_wscale, SegmentSpec};
use crate::packet::view::{self, FrameMeta, L4Meta, ParseError, TcpMeta};
use crate::packet::view::{
    IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN,
};
use crate::policy::{FlowDecision, Policy, Proto};
use crate::stream::{L7Flow, StreamCtx};

pub mod flow;
pub mod frag;

use crate::config::{EngineConfig, FailMode, SynDenyAction, TableFullPolicy};
use crate::counters::{Counters, DropReason};
use crate::verdict::{other, Emit, Output, Range, RangeOp, Side, Verdict};
use flow::{ConnState, FlowEntry, FlowKey, FlowTable, Timeouts};
use frag::{FragKey, FragOutcome, Reassembler};

/// Which worker a frame belongs to, for shells with several engines: the
/// same for both directions of a flow, for all fragments of a datagram and
/// for ICMP errors about the flow (hashed on the quoted datagram).
///
/// TCP hashes its connection (addresses and ports), so that the many
/// connections between one client and one server spread over the workers;
/// the rest hashes the address pair only, since fragments after the first
/// carry no ports. A TCP segment that arrives fragmented (rare: TCP sends
/// with DF set) therefore meets the engine of its address pair, not of its
/// connection; there it has no flow and is judged as any segment without
/// one (adopted only as policy allows it in its own direction and never on
/// an L7 port, where fragments are refused anyway): never more than policy
/// allows, at worst a drop. Non-IP and malformed frames hash to 0.
pub fn steering_hash(frame: &[u8]) -> u64 {
    // Plain TCP and UDP, nearly every frame: the established path's own
    // parser, a third of the general one's cost, and the same hash.
    if let Some(m) = view::parse_fast(frame) {
        let key = match m.l4 {
            L4Meta::Tcp(_) => FlowKey::between(&m.src, m.sport, &m.dst, m.dport, IPPROTO_TCP),
            _ => FlowKey::between(&m.src, 0, &m.dst, 0, 0),
        };
        return key.symmetric_hash();
    }
    let Ok(m) = view::parse(frame) else { return 0 };
    let pair = |a: &IpAddr, b: &IpAddr| FlowKey::between(a, 0, b, 0, 0);
    let key = match m.l4 {
        L4Meta::Tcp(_) => FlowKey::between(&m.src, m.sport, &m.dst, m.dport, IPPROTO_TCP),
        L4Meta::Icmp { kind, .. } if view::icmp_is_error(m.proto, kind) => {
            match view::icmp_quoted(frame, &m) {
                Some(q) if q.proto == IPPROTO_TCP => {
                    FlowKey::between(&q.src, q.sport, &q.dst, q.dport, IPPROTO_TCP)
                }
                Some(q) => pair(&q.src, &q.dst),
                None => pair(&m.src, &m.dst),
            }
        }
        _ => pair(&m.src, &m.dst),
    };
    key.symmetric_hash()
}

pub struct Engine {
    policy: Arc<Policy>,
    /// Bumped by `set_policy`; entries decided under an older one re-decide.
    /// 32 bits to fit the entry's first cache line (`FlowEntry`): an entry
    /// would be taken for current only after 2^32 policy swaps without a
    /// frame, and idle expiry removes it long before.
    policy_gen: u32,
    cfg: EngineConfig,
    counters: Counters,
    worker: u16,
    flows: FlowTable,
    timeouts: Timeouts,
    frags: Reassembler,
    /// Deadlines of L7 flows' timers (retransmission of injected bytes), by
    /// slot: a tick pops only what is due, so its cost follows the pending
    /// work, not the number of L7 flows. Entries whose slot's `l7_timer`
    /// differs are stale (the flow left, or its deadline moved) and skipped.
    timers: BinaryHeap<Reverse<(u64, u32)>>,
    /// Bytes all L7 flows hold (`L7Flow::held_bytes`), followed call by call.
    held_total: usize,
    /// When the idle sweep last ran (`FlowTable::sweep_due`).
    swept_at: u64,
    /// Ranges of flows that left the table, withdrawn in the next call's
    /// `Output::ranges`.
    withdrawn: Vec<Range>,
    #[cfg(test)]
    decide_override: Option<Box<DecideFn>>,
    /// The next L7 segment's stream call panics (tests of `FailMode`).
    #[cfg(test)]
    panic_next_l7: bool,
}

#[cfg(test)]
type DecideFn = dyn Fn(IpAddr, IpAddr, Proto, u16) -> FlowDecision;

/// Outcome of judging a packet that would start a flow.
enum NewFlow {
    Tracked(u32),
    /// Allowed, but the table is full and the flow needs no state.
    Untracked,
    Refused(Verdict),
}

/// The initiator's view of a flow about to be created.
#[derive(Clone, Copy)]
struct Initiator {
    src: IpAddr,
    sport: u16,
    dst: IpAddr,
    dport: u16,
    proto: u8,
    /// Side the initiator's frames arrive on.
    side: Side,
}

impl Initiator {
    fn tuple(&self) -> FlowTuple {
        FlowTuple {
            src: self.src,
            dst: self.dst,
            proto: self.proto,
            sport: self.sport,
            dport: self.dport,
        }
    }
}

#[inline]
fn is_echo_request(proto: u8, kind: u8) -> bool {
    (proto == IPPROTO_ICMP && kind == 8) || (proto == IPPROTO_ICMPV6 && kind == 128)
}

#[inline]
fn is_echo_reply(proto: u8, kind: u8) -> bool {
    (proto == IPPROTO_ICMP && kind == 0) || (proto == IPPROTO_ICMPV6 && kind == 129)
}

/// IPv6 link-local signalling that belongs with ARP: MLD (130-132, 143) and
/// neighbour discovery (133-137).
#[inline]
fn is_v6_link_control(meta: &FrameMeta) -> bool {
    meta.proto == IPPROTO_ICMPV6
        && matches!(
            meta.l4,
            L4Meta::Icmp {
                kind: 130..=137 | 143,
                ..
            }
        )
}

impl Engine {
    pub fn new(policy: Arc<Policy>, cfg: EngineConfig, worker: u16) -> Self {
        let timeouts = Timeouts {
            tcp_established: cfg.tcp_established_timeout_ns,
            tcp_transitory: cfg.tcp_transitory_timeout_ns,
            tcp_syn: cfg.tcp_syn_timeout_ns,
            udp: cfg.udp_timeout_ns,
            icmp: cfg.icmp_timeout_ns,
        };
        Engine {
            policy,
            policy_gen: 0,
            flows: FlowTable::new(cfg.max_flows),
            frags: Reassembler::new(cfg.max_frag_queues),
            timeouts,
            cfg,
            counters: Counters::default(),
            worker,
            timers: BinaryHeap::new(),
            held_total: 0,
            swept_at: 0,
            withdrawn: Vec::new(),
            #[cfg(test)]
            decide_override: None,
            #[cfg(test)]
            panic_next_l7: false,
        }
    }

    /// Swap in a new policy; flows re-evaluate lazily on their next frame.
    pub fn set_policy(&mut self, policy: Arc<Policy>) {
        self.policy = policy;
        self.policy_gen = self.policy_gen.wrapping_add(1);
    }

    pub fn policy(&self) -> &Arc<Policy> {
        &self.policy
    }

    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    pub fn worker(&self) -> u16 {
        self.worker
    }

    /// Flows in the table now.
    pub fn flow_count(&self) -> usize {
        self.flows.len()
    }

    /// Decide one frame received on `side` at `now_ns` (monotonic nanoseconds).
    /// `frame` may be rewritten in place (seq/ack after a denial).
    ///
    /// Drop verdicts are counted here, once; whoever returns one (the stream
    /// layer included) does not count it again.
    pub fn on_frame(
        &mut self,
        side: Side,
        frame: &mut [u8],
        now_ns: u64,
        out: &mut Output,
    ) -> Verdict {
        self.counters.frames_in += 1;
        // Plain TCP and UDP (never a fragment, never link control) of an
        // established L4 flow end here, with nothing to emit. `meta` never
        // leaves this function, so it lives in registers, not in a stack
        // copy written field by field and read back (which cost as much as
        // the lookup); every other frame is parsed again by `classify`, a
        // small part of its cost.
        let mut found = None;
        if let Some(meta) = view::parse_fast(frame) {
            match self.established(side, &meta, now_ns) {
                Ok(()) => {
                    self.counters.frames_forwarded += 1;
                    return Verdict::Forward(other(side));
                }
                Err(looked) => found = looked,
            }
        }
        let emits_before = out.emits.len();
        let v = self.classify(side, frame, now_ns, out, found);
        if !self.withdrawn.is_empty() {
            out.ranges.append(&mut self.withdrawn);
        }
        match v {
            Verdict::Forward(_) => self.counters.frames_forwarded += 1,
            Verdict::Drop(r) => self.counters.drop(r),
            Verdict::Consumed => {}
        }
        self.counters.frames_emitted += out.emits.len().saturating_sub(emits_before) as u64;
        v
    }

    /// A frame `established` declined; `found` is what it learnt (see `l4`).
    fn classify(
        &mut self,
        side: Side,
        frame: &mut [u8],
        now: u64,
        out: &mut Output,
        found: Option<Option<u32>>,
    ) -> Verdict {
        let meta = match view::parse(frame) {
            Ok(m) => m,
            Err(ParseError::NotIp { .. }) => return self.non_ip(side),
            Err(ParseError::Malformed(_)) => return Verdict::Drop(DropReason::Malformed),
        };
        if let Some(f) = meta.fragment {
            return self.fragment(side, frame, &meta, f, now, out);
        }
        if is_v6_link_control(&meta) {
            return self.non_ip(side);
        }
        self.l4(side, frame, &meta, now, out, true, found)
    }

    fn non_ip(&mut self, side: Side) -> Verdict {
        if self.cfg.pass_non_ip {
            self.counters.non_ip_passed += 1;
            Verdict::Forward(other(side))
        } else {
            Verdict::Drop(DropReason::NonIpDenied)
        }
    }

    /// `whole` is false for a reassembled datagram: `buf` then holds only the
    /// IP payload and the verdict applies to its held fragments.
    /// `found`: the flow table's answer for the frame's key, when
    /// `established` already asked (and declined the frame).
    #[allow(clippy::too_many_arguments)]
    fn l4(
        &mut self,
        side: Side,
        buf: &mut [u8],
        meta: &FrameMeta,
        now: u64,
        out: &mut Output,
        whole: bool,
        mut found: Option<Option<u32>>,
    ) -> Verdict {
        if found.is_none() && matches!(meta.l4, L4Meta::Tcp(_) | L4Meta::Udp | L4Meta::Other) {
            // Frames the general parser read (VLAN tags, IP options,
            // reassembled datagrams) take the same fast path.
            match self.established(side, meta, now) {
                Ok(()) => return Verdict::Forward(other(side)),
                Err(looked) => found = looked,
            }
        }
        match meta.l4 {
            L4Meta::Tcp(t) => self.tcp(side, buf, meta, &t, now, out, whole, found),
            L4Meta::Icmp { kind, .. } if view::icmp_is_error(meta.proto, kind) => {
                self.icmp_error(side, buf, meta)
            }
            L4Meta::Icmp { kind, id, .. } => {
                let init = Initiator {
                    src: meta.src,
                    sport: id,
                    dst: meta.dst,
                    dport: id,
                    proto: meta.proto,
                    side,
                };
                if is_echo_request(meta.proto, kind) {
                    self.datagram(init, u16::from(kind), true, now, out)
                } else if is_echo_reply(meta.proto, kind) {
                    let request = if meta.proto == IPPROTO_ICMP { 8 } else { 128 };
                    self.datagram(init, request, false, now, out)
                } else {
                    // Other informational ICMP: one flow per type, judged by type.
                    self.datagram(
                        Initiator {
                            sport: 0,
                            dport: 0,
                            ..init
                        },
                        u16::from(kind),
                        true,
                        now,
                        out,
                    )
                }
            }
            L4Meta::Udp | L4Meta::Other => {
                let init = Initiator {
                    src: meta.src,
                    sport: meta.sport,
                    dst: meta.dst,
                    dport: meta.dport,
                    proto: meta.proto,
                    side,
                };
                self.datagram(init, meta.dport, true, now, out)
            }
        }
    }

    fn decide(&self, src: IpAddr, dst: IpAddr, proto: u8, dport: u16) -> FlowDecision {
        #[cfg(test)]
        if let Some(f) = &self.decide_override {
            return f(src, dst, Proto::from_ip_proto(proto), dport);
        }
        let d = self
            .policy
            .decide(src, dst, Proto::from_ip_proto(proto), dport);
        if d.allowed || !self.cfg.audit {
            return d;
        }
        // Audit mode: the flow passes, without L7 rules (none allow it), and
        // its event tells why it would have been denied (see `event`).
        FlowDecision {
            allowed: true,
            detail: String::new(),
            l7: None,
            audit: Some(d.detail),
        }
    }

    fn event(&self, now: u64, tuple: FlowTuple, d: &FlowDecision) -> Event {
        if let Some(why) = d.audit.as_ref().filter(|_| d.allowed) {
            return Event {
                time_ns: now,
                worker: self.worker,
                flow: tuple,
                subject: Subject::Flow,
                verdict: Decision::Audit,
                rule: None,
                reason: Some(why.as_str().into()),
            };
        }
        Event {
            time_ns: now,
            worker: self.worker,
            flow: tuple,
            subject: Subject::Flow,
            verdict: if d.allowed {
                Decision::Allow
            } else {
                Decision::Deny
            },
            rule: d.allowed.then(|| d.detail.as_str().into()),
            reason: (!d.allowed).then(|| d.detail.as_str().into()),
        }
    }

    /// Bookkeeping after an entry left the table (its queued timer, if
    /// any, goes stale by itself).
    fn forget(&mut self, _idx: u32, e: &FlowEntry) {
        if let Some(l7) = &e.l7 {
            self.held_total = self.held_total.saturating_sub(l7.held_bytes());
            self.counters.l7_held_bytes = self.held_total as u64;
            withdraw(&mut self.withdrawn, e, l7);
        }
        self.counters.flows_active = self.flows.len() as u64;
    }

    /// Follow a flow's held bytes across a call into its stream.
    fn held_moved(&mut self, before: usize, after: usize) {
        self.held_total = (self.held_total + after).saturating_sub(before);
        self.counters.l7_held_bytes = self.held_total as u64;
    }

    /// Queue the L7 timer of the flow in slot `idx` when it is earlier than
    /// the one queued (or none is).
    fn schedule(&mut self, idx: u32) {
        let Some(e) = self.flows.get_mut(idx) else {
            return;
        };
        let Some(d) = e.l7.as_ref().and_then(|l| l.next_deadline()) else {
            return;
        };
        if e.l7_timer.is_none_or(|t| d < t) {
            e.l7_timer = Some(d);
            self.timers.push(Reverse((d, idx)));
        }
    }

    /// The earliest L7 timer (ns, the clock `tick` is given), if any. It may
    /// be a stale one whose flow has moved on: a shell that wakes for it early
    /// only runs a tick that finds nothing. Everything else the tick does
    /// (flow and fragment expiry) counts in seconds and can wait for the
    /// shell's housekeeping interval.
    pub fn next_timer(&self) -> Option<u64> {
        self.timers.peek().map(|Reverse((d, _))| *d)
    }

    /// L7 timers pending (queued deadlines, stale ones included).
    pub fn timers_pending(&self) -> usize {
        self.timers.len()
    }

    /// Memory held by L7 flows for their bytes (`L7Flow::held_bytes`), summed
    /// over the table. A walk over every flow: for statistics, not per frame.
    pub fn held_bytes(&self) -> usize {
        self.flows.held_bytes()
    }

    /// L7 flows that could stall, each with the reason: a byte the enforcer
    /// holds that nothing will move (`L7Flow::stall`), or a flow deadline
    /// missing from the timer queue. A walk over every flow: for tests (the
    /// rigs check it after every step) and debugging, not per frame.
    pub fn l7_stalls(&self) -> Vec<(crate::log::FlowTuple, &'static str)> {
        let mut found = Vec::new();
        for e in self.flows.entries() {
            let Some(l7) = e.l7.as_ref() else { continue };
            if let Some(why) = l7.stall() {
                found.push((e.tuple(), why));
            } else if let Some(d) = l7.next_deadline() {
                if e.l7_timer.is_none_or(|t| t > d) {
                    found.push((e.tuple(), "the flow's deadline is not queued"));
                }
            }
        }
        found
    }

    /// The same, as followed call by call (what `max_held_total` is checked
    /// against; equal to `held_bytes`).
    pub fn held_total(&self) -> usize {
        self.held_total
    }

    /// Judge a flow's first packet and insert it when allowed. `decide_dport`
    /// is what policy sees as the port (ICMP: the type). Logs the decision.
    fn new_flow(
        &mut self,
        init: Initiator,
        decide_dport: u16,
        state: ConnState,
        now: u64,
        out: &mut Output,
    ) -> NewFlow {
        let d = self.decide(init.src, init.dst, init.proto, decide_dport);
        out.events.push(self.event(
            now,
            FlowTuple {
                dport: decide_dport,
                ..init.tuple()
            },
            &d,
        ));
        if !d.allowed {
            return NewFlow::Refused(Verdict::Drop(DropReason::PolicyDenied));
        }
        self.admit(init, decide_dport, d, state, now)
    }

    /// Find room for an allowed flow and insert it (see `TableFullPolicy`).
    fn admit(
        &mut self,
        init: Initiator,
        decide_dport: u16,
        d: FlowDecision,
        state: ConnState,
        now: u64,
    ) -> NewFlow {
        if self.flows.is_full() {
            if let Some((idx, e)) = self.flows.reclaim_expired(now, &self.timeouts) {
                self.counters.flows_expired += 1;
                self.forget(idx, &e);
            }
        }
        if self.flows.is_full() && init.proto == IPPROTO_TCP {
            // A SYN flood must not lock new connections out: an unfinished
            // handshake gives way to a new connection (conntrack's early
            // drop; `FlowTable::reclaim_half_open`). Finished handshakes are
            // never taken this way.
            if let Some((idx, e)) = self.flows.reclaim_half_open(now) {
                self.counters.flows_evicted += 1;
                self.forget(idx, &e);
            }
        }
        if self.flows.is_full() {
            match self.cfg.table_full {
                TableFullPolicy::RefuseAll => {
                    return NewFlow::Refused(Verdict::Drop(DropReason::TableFull))
                }
                TableFullPolicy::RefuseL7 if d.l7.is_some() => {
                    return NewFlow::Refused(Verdict::Drop(DropReason::TableFull))
                }
                TableFullPolicy::RefuseL7 => {
                    self.counters.flows_untracked += 1;
                    return NewFlow::Untracked;
                }
                TableFullPolicy::EvictOldest => {
                    if let Some((idx, e)) = self.flows.evict_one() {
                        self.counters.flows_evicted += 1;
                        self.forget(idx, &e);
                    }
                }
            }
        }
        let l7 = match (&d.l7, init.proto) {
            (Some(p), IPPROTO_TCP) => Some(Box::new(L7Flow::new(p.clone(), init.side))),
            _ => None,
        };
        let (key, init_hi) =
            FlowKey::oriented(&init.src, init.sport, &init.dst, init.dport, init.proto);
        let entry = FlowEntry {
            key,
            init_hi,
            v4: init.src.is_ipv4(),
            resp_port: decide_dport,
            proto: init.proto,
            client_side: init.side,
            picked_up: state != ConnState::SynSent && init.proto == IPPROTO_TCP,
            policy_gen: self.policy_gen,
            state,
            last_seen: now,
            referenced: true,
            l7,
            l7_timer: None,
            seq: Default::default(),
        };
        let Some(idx) = self.flows.insert(entry) else {
            return NewFlow::Refused(Verdict::Drop(DropReason::TableFull));
        };
        self.counters.flows_created += 1;
        self.counters.flows_active = self.flows.len() as u64;
        NewFlow::Tracked(idx)
    }

    /// Per-frame bookkeeping of an existing entry; re-decides after a policy
    /// swap. The table holds allowed flows only: a flow the new policy denies
    /// is removed (logged once), and its later packets meet the no-flow path.
    fn touch(&mut self, idx: u32, now: u64, out: &mut Output) -> bool {
        let gen = self.policy_gen;
        let Some(e) = self.flows.get_mut(idx) else {
            return false;
        };
        e.last_seen = now;
        e.referenced = true;
        if e.policy_gen == gen {
            return true;
        }
        let (tuple, had_l7) = (e.tuple(), e.l7.is_some());
        let mut d = self.decide(tuple.src, tuple.dst, tuple.proto, tuple.dport);
        if d.allowed && (had_l7 || d.l7.is_none() || tuple.proto != IPPROTO_TCP) {
            // A live L7 connection keeps its L7 state (held bytes, seq
            // offsets) and takes the new rules for its next request.
            if let Some(e) = self.flows.get_mut(idx) {
                e.policy_gen = gen;
                if let Some(l7) = e.l7.as_mut() {
                    if !l7.set_policy(d.l7.take()) {
                        d = FlowDecision {
                            allowed: false,
                            detail: "side changed L7 protocol; connection must restart".into(),
                            l7: None,
                            audit: None,
                        };
                    }
                }
            }
            if d.allowed {
                return true;
            }
        }
        if d.allowed && !had_l7 {
            // The port gained L7 rules. A stream cannot be parsed from the
            // middle and must not go on unchecked: end it, the client
            // reconnects under the new rules.
            d = FlowDecision {
                allowed: false,
                detail: "side gained L7 rules; connection must restart".into(),
                l7: None,
                audit: None,
            };
        }
        self.counters.flows_redecided += 1;
        out.events.push(self.event(now, tuple, &d));
        if let Some(e) = self.flows.remove(idx) {
            self.forget(idx, &e);
        }
        false
    }

    /// The hot path: a frame of a stored L4-only flow, from its own side,
    /// decided under the current policy, that changes nothing but the idle
    /// clock and (TCP) the sequence tracking and the handshake's last step:
    /// a UDP (or other port-less) datagram, a TCP segment without SYN, FIN
    /// or RST. What `tcp` and `datagram` would do for it, in one look at the
    /// entry: no checksum (the receiver drops a bad one; nothing here
    /// changes on it that the receiver's own segments do not also move), no
    /// re-decision, no stream. Err: not such a frame, nothing done; it
    /// carries the table's answer for the frame's key when it was asked
    /// (`tcp` goes on from there), None when not.
    #[inline(always)]
    fn established(
        &mut self,
        side: Side,
        meta: &FrameMeta,
        now: u64,
    ) -> Result<(), Option<Option<u32>>> {
        let t = match &meta.l4 {
            L4Meta::Tcp(t) if t.flags & (TCP_SYN | TCP_FIN | TCP_RST) != 0 => return Err(None),
            L4Meta::Tcp(t) => Some(t),
            L4Meta::Udp | L4Meta::Other => None,
            L4Meta::Icmp { .. } => return Err(None),
        };
        let (key, from_hi) =
            FlowKey::oriented(&meta.src, meta.sport, &meta.dst, meta.dport, meta.proto);
        let gen = self.policy_gen;
        let Some((idx, e)) = self.flows.find_mut(&key) else {
            return Err(Some(None));
        };
        let fwd = from_hi == e.init_hi;
        if e.l7.is_some() || e.policy_gen != gen || !e.on_its_side(fwd, side) {
            return Err(Some(Some(idx)));
        }
        e.last_seen = now;
        e.referenced = true;
        if let Some(t) = t {
            // No SYN, so no window-scale option to read; no RST, so
            // nothing to refuse.
            let accepted = tcp_l4_segment(e, fwd, t, || None);
            debug_assert!(accepted);
        }
        Ok(())
    }

    /// UDP, ICMP and other datagram protocols. `may_create`: this packet can
    /// start a flow (not an echo reply).
    fn datagram(
        &mut self,
        init: Initiator,
        decide_dport: u16,
        may_create: bool,
        now: u64,
        out: &mut Output,
    ) -> Verdict {
        let key = FlowKey::new(init.src, init.sport, init.dst, init.dport, init.proto);
        if let Some(idx) = self.flows.find(&key) {
            let side_ok = self
                .flows
                .get(idx)
                .is_some_and(|e| e.on_its_side(e.from_initiator(init.src, init.sport), init.side));
            if !side_ok {
                // An address showing up on the other side is spoofed (or
                // the entry was made by a spoof): the entry says nothing
                // about this datagram. Judged on its own, it leaves the
                // entry alone.
                let d = self.decide(init.src, init.dst, init.proto, decide_dport);
                if !(may_create && d.allowed) {
                    return Verdict::Drop(DropReason::WrongSide);
                }
                return Verdict::Forward(other(init.side));
            }
            return if self.touch(idx, now, out) {
                Verdict::Forward(other(init.side))
            } else {
                Verdict::Drop(DropReason::PolicyDenied)
            };
        }
        if !may_create {
            return Verdict::Drop(DropReason::NoFlow);
        }
        // Every datagram without a flow is judged in its own direction: an
        // answer to an untracked flow (table full) passes only when policy
        // would let it start a flow itself. Judging it as "the reply of the
        // reverse flow" would let anyone in wherever the target's egress is open.
        match self.new_flow(init, decide_dport, ConnState::Open, now, out) {
            NewFlow::Tracked(_) | NewFlow::Untracked => Verdict::Forward(other(init.side)),
            NewFlow::Refused(v) => v,
        }
    }

    /// With a full table under refuse-l7, allowed L4-only flows go untracked,
    /// and their later TCP segments are judged one by one.
    fn untracked_mode(&self) -> bool {
        self.cfg.table_full == TableFullPolicy::RefuseL7 && self.flows.is_full()
    }

    #[allow(clippy::too_many_arguments)]
    fn tcp(
        &mut self,
        side: Side,
        buf: &mut [u8],
        meta: &FrameMeta,
        t: &TcpMeta,
        now: u64,
        out: &mut Output,
        whole: bool,
        found: Option<Option<u32>>,
    ) -> Verdict {
        let f = t.flags;
        let syn = f & TCP_SYN != 0;
        if syn && f & (TCP_RST | TCP_FIN) != 0 {
            return Verdict::Drop(DropReason::TcpInvalid);
        }
        let syn_only = syn && f & TCP_ACK == 0;
        // `established` took what it could and asked the table already for
        // segments without SYN, FIN or RST.
        let mut idx = found.unwrap_or_else(|| {
            let key = FlowKey::between(&meta.src, meta.sport, &meta.dst, meta.dport, IPPROTO_TCP);
            self.flows.find(&key)
        });
        // One look at the entry: (has L7 state, from the initiator, on its
        // side, adopted mid-stream, closed).
        let found = idx.and_then(|i| self.flows.get(i)).map(|e| {
            let fwd = e.from_initiator(meta.src, meta.sport);
            (
                e.l7.is_some(),
                fwd,
                e.on_its_side(fwd, side),
                e.picked_up,
                e.state == ConnState::Closed,
            )
        });
        // A segment that can change state (open, close, adopt a flow, or
        // feed L7 state) must be one the receiver would accept: a bad
        // checksum is dropped before it counts. Data on established L4-only
        // flows is not checked (the receiver drops it; nothing here changes).
        let checked = f & (TCP_SYN | TCP_FIN | TCP_RST) != 0 || found.is_none_or(|(l7, ..)| l7);
        if checked && !tcp_checksum_ok(buf, meta) {
            return Verdict::Drop(DropReason::TcpBadChecksum);
        }
        if let (Some(i), Some((_, fwd, side_ok, picked, closed))) = (idx, found) {
            // A SYN starts a new connection on the 4-tuple only once the old
            // one is over (both FINs or an accepted RST). Before that it is
            // the old connection's business: a retransmission during the
            // handshake, or a SYN the server answers with a challenge ACK
            // (Linux keeps the first ISN); restarting our state on it would
            // let the sender re-base the stream we judge.
            let reuse = syn_only && fwd && closed;
            let replace = syn_only && picked;
            if !(reuse || side_ok || replace) {
                // A server's address on the clients' side (or the reverse):
                // a spoof, never part of this flow.
                return Verdict::Drop(DropReason::WrongSide);
            }
            // Otherwise, from the wrong side: the entry was adopted from a
            // segment of a connection that now really starts; the guess was
            // wrong (or a spoof), judge the SYN afresh.
            if reuse || !side_ok {
                if let Some(e) = self.flows.remove(i) {
                    self.forget(i, &e);
                }
                idx = None;
            }
        }
        let init = Initiator {
            src: meta.src,
            sport: meta.sport,
            dst: meta.dst,
            dport: meta.dport,
            proto: IPPROTO_TCP,
            side,
        };
        let idx = match idx {
            Some(i) => {
                if !self.touch(i, now, out) {
                    return Verdict::Drop(DropReason::PolicyDenied);
                }
                i
            }
            None if syn_only => match self.new_flow(init, meta.dport, ConnState::SynSent, now, out)
            {
                NewFlow::Tracked(i) => i,
                NewFlow::Untracked => return Verdict::Forward(other(side)),
                NewFlow::Refused(v) => {
                    if v == Verdict::Drop(DropReason::PolicyDenied)
                        && self.cfg.syn_deny == SynDenyAction::Reset
                        && whole
                    {
                        self.reset_syn(side, buf, meta, t, out);
                    }
                    return v;
                }
            },
            None => match self.pickup(init, f, now, out) {
                Some(NewFlow::Tracked(i)) => i,
                Some(NewFlow::Untracked) => return Verdict::Forward(other(side)),
                Some(NewFlow::Refused(v)) => return v,
                None => return Verdict::Drop(DropReason::NoFlow),
            },
        };
        let Some(e) = self.flows.get_mut(idx) else {
            return Verdict::Drop(DropReason::NoFlow);
        };
        let fwd = e.from_initiator(meta.src, meta.sport);
        let before = e.state;
        if e.l7.is_none() {
            if !tcp_l4_segment(e, fwd, t, || tcp_wscale(buf, meta)) {
                return Verdict::Drop(DropReason::TcpOutOfWindow);
            }
            return Verdict::Forward(other(side));
        }
        e.state = next_state(e.state, fwd, f);
        if f & TCP_RST != 0 {
            // The stream judges an RST (RFC 5961); the entry follows it.
            e.state = before;
        }
        let tuple = e.tuple();
        let Some(l7) = e.l7.as_mut() else {
            return Verdict::Forward(other(side));
        };
        if !whole {
            // The stream layer works on whole segments; fragmented TCP to an
            // L7 port is refused rather than let through unparsed.
            return Verdict::Drop(DropReason::Unsupported);
        }
        let held_before = l7.held_bytes();
        let mut ctx = StreamCtx {
            cfg: &self.cfg,
            counters: &mut self.counters,
            worker: self.worker,
            tuple,
            over_budget: self.held_total > self.cfg.max_held_total,
        };
        let emits_before = out.emits.len();
        #[cfg(test)]
        let inject_panic = std::mem::take(&mut self.panic_next_l7);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            #[cfg(test)]
            if inject_panic {
                panic!("injected for a test");
            }
            l7.on_segment(&mut ctx, side, buf, meta, now, out)
        }));
        let Ok(v) = r else {
            out.emits.truncate(emits_before);
            return self.l7_failed(idx, side, held_before);
        };
        if l7.is_closed() {
            e.state = ConnState::Closed;
        }
        let held_after = l7.held_bytes();
        self.held_moved(held_before, held_after);
        self.schedule(idx);
        v
    }

    /// The stream state of the flow in slot `idx` panicked (the default hook
    /// has printed the message): it cannot be trusted any more. See
    /// `FailMode`.
    /// `held` is what the flow held before the failed call (what the total
    /// counts for it).
    fn l7_failed(&mut self, idx: u32, side: Side, held: usize) -> Verdict {
        self.counters.l7_internal_errors += 1;
        if let Some(e) = self.flows.get_mut(idx) {
            e.l7 = None;
            e.l7_timer = None;
        }
        self.held_moved(held, 0);
        match self.cfg.fail {
            FailMode::Closed => {
                if let Some(e) = self.flows.remove(idx) {
                    self.forget(idx, &e);
                }
                Verdict::Drop(DropReason::InternalError)
            }
            FailMode::Open => Verdict::Forward(other(side)),
        }
    }

    /// A TCP segment with no flow and no SYN: adopt the connection when
    /// policy allows the segment in its own direction (as it would a SYN) and
    /// it needs no L7 state (an L7 stream cannot be joined mid-request).
    /// The other direction is never tried: a stray ACK to a default-deny
    /// server must not pass as the "reply" of a connection the server never
    /// opened. Once either side's segment is adopted, the entry carries both.
    /// None: drop it.
    fn pickup(
        &mut self,
        init: Initiator,
        flags: u8,
        now: u64,
        out: &mut Output,
    ) -> Option<NewFlow> {
        if flags & TCP_RST != 0 || flags & TCP_ACK == 0 {
            return None;
        }
        let untracked = self.untracked_mode();
        if !self.cfg.tcp_pickup && !untracked {
            return None;
        }
        let d = self.decide(init.src, init.dst, IPPROTO_TCP, init.dport);
        if !d.allowed || d.l7.is_some() {
            return None;
        }
        // The segment may be the responder's half of a connection whose
        // other direction needs L7 state (the server's reply of an L7
        // connection, or a spoof posing as one): adopting it as L4-only would
        // let that connection pass unjudged.
        if self
            .decide(init.dst, init.src, IPPROTO_TCP, init.sport)
            .l7
            .is_some()
        {
            return None;
        }
        if !self.cfg.tcp_pickup {
            self.counters.flows_untracked += 1;
            return Some(NewFlow::Untracked);
        }
        let state = if flags & TCP_SYN != 0 {
            ConnState::SynReceived
        } else {
            ConnState::Established
        };
        let ev = self.event(now, init.tuple(), &d);
        let r = self.admit(init, init.dport, d, state, now);
        // Logged once per adopted flow; untracked segments would log each time.
        if matches!(r, NewFlow::Tracked(_)) {
            self.counters.flows_picked_up += 1;
            out.events.push(ev);
        }
        Some(r)
    }

    fn reset_syn(
        &mut self,
        side: Side,
        frame: &[u8],
        meta: &FrameMeta,
        t: &TcpMeta,
        out: &mut Output,
    ) {
        let payload = meta.payload_end.saturating_sub(meta.payload_off) as u32;
        let spec = SegmentSpec {
            reverse: true,
            seq: 0,
            ack: t.seq.wrapping_add(1).wrapping_add(payload),
            flags: TCP_RST | TCP_ACK,
            window: 0,
        };
        out.emits.push(Emit {
            side,
            frame: tcp_segment(frame, meta, &spec, &[]),
        });
        self.counters.frames_injected += 1;
    }

    /// An ICMP error passes when the datagram it quotes belongs to a flow we
    /// allow, and it is addressed to that datagram's sender.
    fn icmp_error(&mut self, side: Side, buf: &[u8], meta: &FrameMeta) -> Verdict {
        let Some(q) = view::icmp_quoted(buf, meta) else {
            return Verdict::Drop(DropReason::Malformed);
        };
        if q.src != meta.dst {
            return Verdict::Drop(DropReason::NoFlow);
        }
        let key = match q.icmp {
            Some((_, id)) => FlowKey::new(q.src, id, q.dst, id, q.proto),
            None => FlowKey::new(q.src, q.sport, q.dst, q.dport, q.proto),
        };
        // A verdict made stale by a policy swap is re-checked by the flow's
        // own next frame; an error about a flow we carry is what its sender needs.
        match self.flows.find(&key) {
            Some(_) => Verdict::Forward(other(side)),
            None => Verdict::Drop(DropReason::NoFlow),
        }
    }

    fn fragment(
        &mut self,
        side: Side,
        frame: &[u8],
        meta: &FrameMeta,
        f: view::FragmentMeta,
        now: u64,
        out: &mut Output,
    ) -> Verdict {
        let key = FragKey {
            src: meta.src,
            dst: meta.dst,
            proto: meta.proto,
            id: f.id,
        };
        let (payload, frags) =
            match self
                .frags
                .add(key, f, side, frame, meta.l4_off..meta.payload_end, now)
            {
                FragOutcome::Held => return Verdict::Consumed,
                FragOutcome::Duplicate => return Verdict::Drop(DropReason::FragmentDropped),
                FragOutcome::Overlap { dropped } => {
                    self.counters.drops[DropReason::FragmentOverlap as usize] += dropped as u64;
                    return Verdict::Drop(DropReason::FragmentOverlap);
                }
                FragOutcome::Malformed => return Verdict::Drop(DropReason::Malformed),
                FragOutcome::Full => return Verdict::Drop(DropReason::FragmentTableFull),
                FragOutcome::Complete { payload, frags } => (payload, frags),
            };
        self.counters.fragments_reassembled += 1;
        let held_others = frags.len().saturating_sub(1) as u64;
        let mut buf = payload;
        let v = match view::parse_l4(meta.proto, &buf) {
            Ok(h) => {
                let m = FrameMeta {
                    l3_off: 0,
                    l4_off: 0,
                    payload_off: h.header_len,
                    payload_end: h.end,
                    sport: h.sport,
                    dport: h.dport,
                    l4: h.meta,
                    fragment: None,
                    ..*meta
                };
                if is_v6_link_control(&m) {
                    self.non_ip(side)
                } else {
                    self.l4(side, &mut buf, &m, now, out, false, None)
                }
            }
            Err(_) => Verdict::Drop(DropReason::Malformed),
        };
        match v {
            Verdict::Forward(_) => {
                // Unchanged and in arrival order; the input is the last one.
                for h in frags {
                    out.emits.push(Emit {
                        side: other(h.side),
                        frame: h.frame,
                    });
                }
                Verdict::Consumed
            }
            Verdict::Drop(r) => {
                self.counters.drops[r as usize] += held_others;
                Verdict::Drop(r)
            }
            Verdict::Consumed => Verdict::Drop(DropReason::Unsupported),
        }
    }

    /// Timers: idle-flow expiry, retransmission of injected bytes. Call at
    /// least every few milliseconds, also when no frames arrive.
    pub fn tick(&mut self, now_ns: u64, out: &mut Output) {
        let emits_before = out.emits.len();
        let mut gone = 0;
        let mut held_gone = 0;
        // A turn of the table per second, not a full budget every tick: the
        // sweep reads each entry it passes, and at a tick a millisecond it
        // read a thousand-flow table a thousand times a second.
        let due = self.flows.sweep_due(now_ns.saturating_sub(self.swept_at));
        if due > 0 {
            self.swept_at = now_ns;
            let withdrawn = &mut self.withdrawn;
            self.flows.expire_some(now_ns, &self.timeouts, due, |_, e| {
                gone += 1;
                held_gone += e.l7.as_ref().map_or(0, |l| l.held_bytes());
                if let Some(l7) = &e.l7 {
                    withdraw(withdrawn, &e, l7);
                }
            });
        }
        self.counters.flows_expired += gone;
        self.held_moved(held_gone, 0);
        self.counters.flows_active = self.flows.len() as u64;
        let timed_out = self.frags.expire(now_ns, self.cfg.frag_timeout_ns);
        self.counters.drops[DropReason::FragmentTimeout as usize] += timed_out as u64;

        while let Some(&Reverse((d, idx))) = self.timers.peek() {
            if d > now_ns {
                break;
            }
            self.timers.pop();
            let Some(e) = self.flows.get_mut(idx) else {
                continue;
            };
            if e.l7_timer != Some(d) {
                continue;
            }
            e.l7_timer = None;
            let tuple = e.tuple();
            let Some(l7) = e.l7.as_mut() else { continue };
            let held_before = l7.held_bytes();
            let mut ctx = StreamCtx {
                cfg: &self.cfg,
                counters: &mut self.counters,
                worker: self.worker,
                tuple,
                over_budget: self.held_total > self.cfg.max_held_total,
            };
            let emits_before = out.emits.len();
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                l7.on_tick(&mut ctx, now_ns, out)
            }));
            if r.is_err() {
                out.emits.truncate(emits_before);
                self.l7_failed(idx, 0, held_before);
                continue;
            }
            let held_after = l7.held_bytes();
            self.held_moved(held_before, held_after);
            self.schedule(idx);
        }
        if !self.withdrawn.is_empty() {
            out.ranges.append(&mut self.withdrawn);
        }
        self.counters.frames_emitted += out.emits.len().saturating_sub(emits_before) as u64;
    }
}

/// A flow leaves the table: the ranges its stream published go with it.
fn withdraw(to: &mut Vec<Range>, e: &FlowEntry, l7: &L7Flow) {
    for dir in l7.published().into_iter().flatten() {
        to.push(Range {
            flow: e.tuple(),
            dir,
            op: RangeOp::Unbypass,
        });
    }
}

/// A TCP segment of a flow without L7 state (an L7 flow's stream judges its
/// segments itself), from the flow's own side, in direction `fwd` (from the
/// initiator): the one place its sequence space is followed, for the hot
/// path (`Engine::established`) and the rest (`Engine::tcp`) alike. An RST
/// must lie in its receiver's window (RFC 5961, `SeqTrack::rst_acceptable`):
/// false, and nothing changes. Otherwise the segment's ack and window are
/// tracked and the connection state moves on. `wscale` reads a SYN's
/// window-scale option; it is called for SYNs only.
#[inline(always)]
fn tcp_l4_segment(
    e: &mut FlowEntry,
    fwd: bool,
    t: &TcpMeta,
    wscale: impl FnOnce() -> Option<u8>,
) -> bool {
    let (f, d) = (t.flags, usize::from(!fwd));
    let syn_sent = e.state == ConnState::SynSent;
    if f & TCP_RST != 0 && !e.seq.rst_acceptable(d, t.seq, t.ack, f, syn_sent) {
        return false;
    }
    let ws = if f & TCP_SYN != 0 { wscale() } else { None };
    e.seq.track(d, t.seq, t.ack, f, t.window, ws);
    e.state = next_state(e.state, fwd, f);
    true
}

/// TCP connection tracking, loose: no window checks, just enough to pick
/// the idle timeout and to know when a 4-tuple may start over.
#[inline(always)]
fn next_state(s: ConnState, fwd: bool, flags: u8) -> ConnState {
    let (syn, ack, fin) = (
        flags & TCP_SYN != 0,
        flags & TCP_ACK != 0,
        flags & TCP_FIN != 0,
    );
    if flags & TCP_RST != 0 {
        return ConnState::Closed;
    }
    match s {
        ConnState::SynSent if !fwd && syn && ack => ConnState::SynReceived,
        ConnState::SynReceived if fwd && ack && !syn && !fin => ConnState::Established,
        ConnState::SynReceived | ConnState::Established if fin => ConnState::Closing {
            fin_init: fwd,
            fin_resp: !fwd,
        },
        ConnState::Closing { fin_init, fin_resp } if fin => {
            let (i, r) = (fin_init || fwd, fin_resp || !fwd);
            if i && r {
                ConnState::Closed
            } else {
                ConnState::Closing {
                    fin_init: i,
                    fin_resp: r,
                }
            }
        }
        s => s,
    }
}

#[cfg(test)]
mod tests;
