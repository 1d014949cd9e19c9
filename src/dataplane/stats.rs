//! Dataplane counters of one worker (the engine counts its own) and what a
//! worker publishes for the control thread.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;

use crate::counters::Counters;
use crate::log::{Decision, Event, Subject};

/// Decisions by (kind, verdict, rule or reason), counted as they are made.
/// Kinds and verdicts are static, rules and reasons shared with the event
/// (and the compiled policy): counting an event copies no string.
pub type Tally = BTreeMap<(&'static str, &'static str, Option<Arc<str>>), u64>;

/// Count `ev` in `t`. Workers count their own decisions: the event thread
/// sees events only while something reads them (a log, an observer).
pub fn tally_event(t: &mut Tally, ev: &Event) {
    let kind = match &ev.subject {
        Subject::Flow => "flow",
        Subject::Http { .. } => "http",
        Subject::Memcache { .. } => "memcache",
    };
    let verdict = match ev.verdict {
        Decision::Allow => "allow",
        Decision::Deny => "deny",
        Decision::Audit => "audit",
    };
    let why = ev.rule.as_ref().or(ev.reason.as_ref()).cloned();
    *t.entry((kind, verdict, why)).or_default() += 1;
}

/// A worker's tally, with a generation that moves with every count: its
/// stats slot is refreshed every 100 ms, and the tally (the one part that
/// grows with the policy, a tree of shared strings) is copied there only
/// when it changed since the last copy.
#[derive(Debug, Default)]
pub struct TallyBook {
    counts: Tally,
    generation: u64,
}

impl TallyBook {
    pub fn count(&mut self, ev: &Event) {
        tally_event(&mut self.counts, ev);
        self.generation += 1;
    }

    /// Bring `slot`'s copy up to date (nothing to do when it is).
    pub fn publish(&self, slot: &mut WorkerStats) {
        if slot.tally_generation != self.generation {
            slot.tally.clone_from(&self.counts);
            slot.tally_generation = self.generation;
        }
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct DpCounters {
    pub rx_frames: u64,
    pub tx_frames: u64,
    /// Frames that could not be sent: TX ring full (or the TAP refused them).
    pub tx_ring_full: u64,
    /// Emitted or handed-over frames dropped for want of a free UMEM frame.
    pub no_free_frame: u64,
    /// Emitted frames larger than a UMEM frame.
    pub frame_too_large: u64,
    /// Frames handed to / received from the worker that owns their flow.
    pub handoff_out: u64,
    pub handoff_in: u64,
    /// Channel operations those took (a batch per owner per receive turn).
    pub handoff_batches_out: u64,
    pub handoff_batches_in: u64,
    /// Frames for another worker dropped because an RX ring's worth already
    /// waited for it (its channel full all that time).
    pub handoff_full: u64,
    /// Verdict events dropped because the logger fell behind.
    pub events_dropped: u64,
    /// Host mode: frames towards the wire that cannot be addressed at all
    /// (not IP, multicast, no gateway known); dropped at once.
    pub no_next_hop: u64,
    /// Host mode: frames towards the wire held because their on-link next
    /// hop is not resolved yet (the kernel is asked to), then either sent
    /// once it resolves or dropped (held too long, or pushed out of a full
    /// queue). held = sent_late + dropped + those held now.
    pub next_hop_held: u64,
    pub next_hop_sent_late: u64,
    pub next_hop_dropped: u64,
    /// Kernel-side AF_XDP statistics, summed over this worker's sockets.
    pub xdp_rx_dropped: u64,
    pub xdp_rx_ring_full: u64,
    pub xdp_fill_ring_empty: u64,
    pub xdp_invalid_descs: u64,
    /// Frames given to / taken from the spare pool that rebalances the
    /// shared UMEM between workers.
    pub frames_to_spare: u64,
    pub frames_from_spare: u64,
    /// Engine panics survived (frame dropped, worker's engine replaced).
    pub engine_panics: u64,
    /// At exit: UMEM frames neither free nor on a ring (a leak if not 0).
    pub umem_frames_unaccounted: u64,
    /// Inline with `--kernel-path on`: frames and bytes the XDP program
    /// forwarded itself (they never reach a worker), the range map's
    /// entries now, the writes and deletes workers made, and writes the
    /// kernel refused (their segments then go through the engine).
    pub kpath_frames: u64,
    pub kpath_bytes: u64,
    /// Covered segments the program sent to a socket, as frames of their
    /// queue were still with the worker (kpath.bpf.c, `struct fence`).
    pub kpath_fenced: u64,
    /// Fence counts put right after frames lost uncounted.
    pub kpath_fence_resyncs: u64,
    pub kpath_ranges: u64,
    pub kpath_map_writes: u64,
    pub kpath_map_failed: u64,
}

impl DpCounters {
    pub fn merge(&mut self, o: &DpCounters) {
        self.rx_frames += o.rx_frames;
        self.tx_frames += o.tx_frames;
        self.tx_ring_full += o.tx_ring_full;
        self.no_free_frame += o.no_free_frame;
        self.frame_too_large += o.frame_too_large;
        self.handoff_out += o.handoff_out;
        self.handoff_in += o.handoff_in;
        self.handoff_batches_out += o.handoff_batches_out;
        self.handoff_batches_in += o.handoff_batches_in;
        self.handoff_full += o.handoff_full;
        self.events_dropped += o.events_dropped;
        self.no_next_hop += o.no_next_hop;
        self.next_hop_held += o.next_hop_held;
        self.next_hop_sent_late += o.next_hop_sent_late;
        self.next_hop_dropped += o.next_hop_dropped;
        self.xdp_rx_dropped += o.xdp_rx_dropped;
        self.xdp_rx_ring_full += o.xdp_rx_ring_full;
        self.xdp_fill_ring_empty += o.xdp_fill_ring_empty;
        self.xdp_invalid_descs += o.xdp_invalid_descs;
        self.frames_to_spare += o.frames_to_spare;
        self.frames_from_spare += o.frames_from_spare;
        self.engine_panics += o.engine_panics;
        self.umem_frames_unaccounted += o.umem_frames_unaccounted;
        self.kpath_frames += o.kpath_frames;
        self.kpath_bytes += o.kpath_bytes;
        self.kpath_fenced += o.kpath_fenced;
        self.kpath_fence_resyncs += o.kpath_fence_resyncs;
        self.kpath_ranges += o.kpath_ranges;
        self.kpath_map_writes += o.kpath_map_writes;
        self.kpath_map_failed += o.kpath_map_failed;
    }
}

#[derive(Debug, Clone, Default)]
pub struct WorkerStats {
    pub dp: DpCounters,
    pub engine: Counters,
    /// At exit: UMEM frames this worker holds (free list and rings).
    pub frames_held: u64,
    /// Frames and bytes received per side, by what became of them.
    pub sides: [SideCount; 2],
    /// One per AF_XDP socket: its bind mode and the kernel's statistics.
    pub queues: Vec<QueueStats>,
    /// Bytes held for undecided L7 requests, now.
    pub held_bytes: u64,
    /// Time in loop turns that had work, and since the worker started:
    /// their ratio is how busy the worker is (a busy-polling worker spins
    /// at 100% CPU whatever this says).
    pub busy_ns: u64,
    pub run_ns: u64,
    /// This worker's decisions so far, as of `TallyBook` generation
    /// `tally_generation`.
    pub tally: Tally,
    pub tally_generation: u64,
}

/// What became of the frames received on one side.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct SideCount {
    pub forwarded_frames: u64,
    pub forwarded_bytes: u64,
    pub dropped_frames: u64,
    pub dropped_bytes: u64,
    /// Held by the engine, or their bytes left in frames it built.
    pub consumed_frames: u64,
    pub consumed_bytes: u64,
}

impl SideCount {
    pub fn merge(&mut self, o: &SideCount) {
        self.forwarded_frames += o.forwarded_frames;
        self.forwarded_bytes += o.forwarded_bytes;
        self.dropped_frames += o.dropped_frames;
        self.dropped_bytes += o.dropped_bytes;
        self.consumed_frames += o.consumed_frames;
        self.consumed_bytes += o.consumed_bytes;
    }
}

/// One AF_XDP socket as bound, and its `XDP_STATISTICS`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct QueueStats {
    pub iface: String,
    pub queue: u32,
    pub side: u8,
    /// Zero-copy (the driver's rings map the UMEM) rather than copy mode.
    pub zero_copy: bool,
    pub need_wakeup: bool,
    pub rx_dropped: u64,
    pub rx_ring_full: u64,
    pub rx_fill_ring_empty: u64,
    pub rx_invalid_descs: u64,
    pub tx_invalid_descs: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::FlowTuple;

    fn flow_event() -> Event {
        Event {
            time_ns: 0,
            worker: 0,
            flow: FlowTuple {
                src: [10, 0, 0, 1].into(),
                dst: [10, 0, 0, 2].into(),
                proto: 6,
                sport: 40000,
                dport: 80,
            },
            subject: Subject::Flow,
            verdict: Decision::Allow,
            rule: Some("p/ingress[0]".into()),
            reason: None,
        }
    }

    #[test]
    fn the_tally_is_copied_only_when_it_changed() {
        let mut book = TallyBook::default();
        let mut slot = WorkerStats::default();
        book.publish(&mut slot);
        assert!(slot.tally.is_empty());
        let ev = flow_event();
        book.count(&ev);
        book.count(&ev);
        book.publish(&mut slot);
        assert_eq!(slot.tally.values().sum::<u64>(), 2);
        // A reader's changes to the copy stand until the next count: the
        // copy was not redone.
        slot.tally.clear();
        book.publish(&mut slot);
        assert!(slot.tally.is_empty(), "unchanged: not copied again");
        book.count(&ev);
        book.publish(&mut slot);
        assert_eq!(slot.tally.values().sum::<u64>(), 3);
    }
}
