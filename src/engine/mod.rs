//! The sans-I/O engine: `(port, frame, now)` in, a verdict for that frame plus
//! frames to emit and log events out. One `Engine` per worker; it owns that
//! worker's flows. The policy is shared read-only (`Arc`) and swappable.

use std::sync::Arc;

use crate::log::Event;
use crate::policy::Policy;

pub mod config;
pub mod counters;

pub use config::EngineConfig;
pub use counters::{Counters, DropReason};

/// Port index: 0 is `--iface` (clients), 1 is `--peer` (servers). In host mode
/// port 1 is the internal re-entry device.
pub type Port = u8;

/// The other port of an inline pair.
#[inline]
pub fn other(port: Port) -> Port {
    port ^ 1
}

/// What happens to the frame that was passed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Transmit the (possibly rewritten in place) input frame on this port.
    Forward(Port),
    /// Discard it; the reason is also counted.
    Drop(DropReason),
    /// The engine kept or re-emitted it (held for an L7 decision, or its bytes
    /// travel inside `Output::emits`). The shell must not transmit the input.
    Consumed,
}

/// A frame the engine built or released. Owned because it outlives the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Emit {
    pub port: Port,
    pub frame: Vec<u8>,
}

/// Side outputs of one call. The shell transmits the input frame first (when
/// the verdict is `Forward`), then `emits` in order, then clears this.
#[derive(Debug, Default)]
pub struct Output {
    pub emits: Vec<Emit>,
    pub events: Vec<Event>,
}

impl Output {
    pub fn clear(&mut self) {
        self.emits.clear();
        self.events.clear();
    }
}

pub struct Engine {
    policy: Arc<Policy>,
    cfg: EngineConfig,
    counters: Counters,
    worker: u16,
}

impl Engine {
    pub fn new(policy: Arc<Policy>, cfg: EngineConfig, worker: u16) -> Self {
        Engine {
            policy,
            cfg,
            counters: Counters::default(),
            worker,
        }
    }

    /// Swap in a new policy; flows re-evaluate lazily on their next frame.
    pub fn set_policy(&mut self, policy: Arc<Policy>) {
        self.policy = policy;
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

    /// Decide one frame received on `port` at `now_ns` (monotonic nanoseconds).
    /// `frame` may be rewritten in place (seq/ack after a denial).
    pub fn process(
        &mut self,
        port: Port,
        frame: &mut [u8],
        now_ns: u64,
        out: &mut Output,
    ) -> Verdict {
        let _ = (port, frame, now_ns, out);
        todo!("engine::process")
    }

    /// Timers: idle-flow expiry, retransmission of injected bytes. Call at
    /// least every few milliseconds, also when no frames arrive.
    pub fn tick(&mut self, now_ns: u64, out: &mut Output) {
        let _ = (now_ns, out);
    }
}
