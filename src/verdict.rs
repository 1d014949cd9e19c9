//! The wire side of a frame and what happens to it: the contract between the
//! core and its shells, shared by every layer that judges or emits frames.

use crate::counters::DropReason;
use crate::log::{Event, FlowTuple};

/// The wire side a frame came in on (or leaves by): 0 is `--iface`
/// (clients), 1 is `--peer` (servers); in host mode side 1 is the internal
/// re-entry device. Not a TCP or UDP port: those are `u16` and called port.
pub type Side = u8;

/// The other side of an inline pair.
#[inline]
pub fn other(side: Side) -> Side {
    side ^ 1
}

/// What happens to the frame that was passed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Transmit the (possibly rewritten in place) input frame on this side.
    Forward(Side),
    /// Discard it; the reason is also counted.
    Drop(DropReason),
    /// The engine kept or re-emitted it (held for an L7 decision, or its bytes
    /// travel inside `Output::emits`). The shell must not transmit the input.
    Consumed,
}

/// A frame the engine built or released. Owned because it outlives the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Emit {
    pub side: Side,
    pub frame: Vec<u8>,
}

/// Side outputs of one call. The shell transmits the input frame first (when
/// the verdict is `Forward`), then `emits` in order, then clears this.
#[derive(Debug, Default)]
pub struct Output {
    pub emits: Vec<Emit>,
    pub events: Vec<Event>,
    /// Ranges of known bytes published or withdrawn (docs/stream.md, "A
    /// kernel path for known bytes"): a shell may forward the segments a
    /// range covers itself. Applied in order; ignoring them is always safe.
    pub ranges: Vec<Range>,
}

/// One change to the ranges of a flow, for frames arriving on `dir`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    /// The flow as its client sees it (`FlowTuple`: src is the client).
    pub flow: FlowTuple,
    /// The side the covered segments arrive on.
    pub dir: Side,
    pub op: RangeOp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeOp {
    /// A segment arriving on `dir` whose payload lies within sequence
    /// numbers `[lo, hi)` (wrapping), that carries flags within ACK|PSH,
    /// ack field `ack` and window field `win`, may go on to the other side
    /// as it is but for its window field, which becomes `win_out`. Replaces
    /// the flow's earlier range for `dir`.
    Bypass {
        lo: u32,
        hi: u32,
        ack: u32,
        win: u16,
        win_out: u16,
    },
    /// The flow's range for `dir` is gone: every segment reaches the engine.
    Unbypass,
}

impl Output {
    /// Called after every frame: inlined, clearing an empty output is two
    /// length checks.
    #[inline]
    pub fn clear(&mut self) {
        self.emits.clear();
        self.events.clear();
        self.ranges.clear();
    }
}
