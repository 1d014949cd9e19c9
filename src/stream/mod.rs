//! The L7 stream layer, for TCP flows whose port carries L7 rules:
//! reassembles the client→server byte stream, holds an undecided request's
//! bytes, releases allowed bytes byte-exact, drops denied ones, injects the
//! protocol's denial in reply order, and from the first denial on maps
//! seq/ack (and SACK) between the two sides' views of the connection.
//!
//! The engine hands every TCP segment of such a flow, both directions, to
//! `L7Flow::on_segment`. See docs/stream.md.

mod bypass;
mod conn;
mod reassembly;
mod reply;
mod request;
mod seqmap;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use crate::config::EngineConfig;
use crate::counters::Counters;
use crate::l7::http::Http;
use crate::l7::memcache::Memcache;
use crate::packet::FrameMeta;
use crate::policy::L7Policy;
use crate::verdict::{Output, Side, Verdict};
use conn::Stream;

/// Per-flow context the engine lends to the stream layer for one call.
pub struct StreamCtx<'a> {
    pub cfg: &'a EngineConfig,
    pub counters: &'a mut Counters,
    pub worker: u16,
    /// Names the flow in log events (endpoint names are looked up from its
    /// addresses when the event is written, see `log`).
    pub tuple: crate::log::FlowTuple,
    /// The worker's L7 flows together hold more than `max_held_total`: this
    /// flow must not start holding more.
    pub over_budget: bool,
}

enum Inner {
    Http(Stream<Http>),
    Memcache(Stream<Memcache>),
}

/// L7 state of one TCP connection. Boxed in the flow entry; its memory is
/// bounded by `EngineConfig::max_held_bytes` per direction.
pub struct L7Flow {
    inner: Inner,
}

impl L7Flow {
    /// `client_side` is the side the connection's SYN arrived on. The
    /// protocol is the rule set's: rules and parser cannot disagree.
    pub fn new(policy: L7Policy, client_side: Side) -> Self {
        let inner = match policy {
            L7Policy::Http(p) => Inner::Http(Stream::new(Http::new(), p, client_side)),
            L7Policy::Memcache(p) => Inner::Memcache(Stream::new(Memcache::new(), p, client_side)),
        };
        L7Flow { inner }
    }

    pub fn on_segment(
        &mut self,
        ctx: &mut StreamCtx<'_>,
        in_side: Side,
        frame: &mut [u8],
        meta: &FrameMeta,
        now_ns: u64,
        out: &mut Output,
    ) -> Verdict {
        match &mut self.inner {
            Inner::Http(s) => s.on_segment(ctx, in_side, frame, meta, now_ns, out),
            Inner::Memcache(s) => s.on_segment(ctx, in_side, frame, meta, now_ns, out),
        }
    }

    /// Rules changed (policy reload): later requests are judged by `policy`
    /// (None: the port no longer has L7 rules, every request passes). False
    /// when the new rules speak another protocol: the connection must end.
    pub fn set_policy(&mut self, policy: Option<L7Policy>) -> bool {
        match (&mut self.inner, policy) {
            (Inner::Http(s), Some(L7Policy::Http(p))) => s.policy = p,
            (Inner::Memcache(s), Some(L7Policy::Memcache(p))) => s.policy = p,
            (Inner::Http(s), None) => s.policy = Arc::default(),
            (Inner::Memcache(s), None) => s.policy = Arc::default(),
            (_, Some(_)) => return false,
        }
        true
    }
    /// Bytes held for this connection now (undecided and out-of-order
    /// client bytes, an unfinished reply head, unacknowledged denials).
    pub fn held_bytes(&self) -> usize {
        match &self.inner {
            Inner::Http(s) => s.held_bytes(),
            Inner::Memcache(s) => s.held_bytes(),
        }
    }

    /// The connection was reset (by an acceptable RST or by us): nothing of
    /// it passes any more.
    pub fn is_closed(&self) -> bool {
        match &self.inner {
            Inner::Http(s) => s.closed,
            Inner::Memcache(s) => s.closed,
        }
    }

    /// Why this connection could stall (None: every byte the enforcer
    /// holds has a timer or a peer's retransmission to move it). For tests
    /// and debugging; see `Stream::stall`.
    pub fn stall(&self) -> Option<&'static str> {
        match &self.inner {
            Inner::Http(s) => s.stall(),
            Inner::Memcache(s) => s.stall(),
        }
    }

    /// The sides whose frames a published range covers now: the engine
    /// withdraws them when it forgets the flow.
    pub fn published(&self) -> [Option<Side>; 2] {
        match &self.inner {
            Inner::Http(s) => s.published(),
            Inner::Memcache(s) => s.published(),
        }
    }

    /// When `on_tick` has work next (None: no timer pending).
    pub fn next_deadline(&self) -> Option<u64> {
        match &self.inner {
            Inner::Http(s) => s.next_deadline(),
            Inner::Memcache(s) => s.next_deadline(),
        }
    }

    /// Run due timers: retransmit injected bytes not yet acknowledged, time
    /// out a request head that did not arrive in time.
    pub fn on_tick(&mut self, ctx: &mut StreamCtx<'_>, now_ns: u64, out: &mut Output) {
        match &mut self.inner {
            Inner::Http(s) => s.on_tick(ctx, now_ns, out),
            Inner::Memcache(s) => s.on_tick(ctx, now_ns, out),
        }
    }
}
