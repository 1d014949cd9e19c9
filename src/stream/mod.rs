//! The L7 stream layer, for TCP flows whose port carries L7 rules:
//! reassembles the client→server byte stream, holds an undecided request's
//! bytes, releases allowed bytes byte-exact, drops denied ones, injects the
//! protocol's denial in reply order, and from the first denial on maps
//! seq/ack (and SACK) between the two sides' views of the connection.
//!
//! The engine hands every TCP segment of such a flow, both directions, to
//! `L7Flow::on_segment`. See docs/stream.md.

mod conn;
mod reassembly;
mod reply;
mod request;
mod seqmap;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use crate::engine::{EngineConfig, Output, Port, Verdict};
use crate::l7::http::Http;
use crate::l7::memcache::Memcache;
use crate::packet::FrameMeta;
use crate::policy::{L7Policy, L7Proto};
use conn::Stream;

/// Per-flow context the engine lends to the stream layer for one call.
pub struct StreamCtx<'a> {
    pub cfg: &'a EngineConfig,
    pub counters: &'a mut crate::engine::Counters,
    pub worker: u16,
    pub tuple: crate::log::FlowTuple,
    /// Names endpoints in log events; looked up only when an event is made,
    /// not on every segment.
    pub policy: &'a crate::policy::Policy,
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
    /// `client_port` is the port the connection's SYN arrived on.
    pub fn new(policy: Arc<L7Policy>, client_port: Port) -> Self {
        let inner = match policy.proto {
            L7Proto::Http => Inner::Http(Stream::new(Http::new(), policy, client_port)),
            L7Proto::Memcache => Inner::Memcache(Stream::new(Memcache::new(), policy, client_port)),
        };
        L7Flow { inner }
    }

    pub fn on_segment(
        &mut self,
        ctx: &mut StreamCtx<'_>,
        in_port: Port,
        frame: &mut [u8],
        meta: &FrameMeta,
        now_ns: u64,
        out: &mut Output,
    ) -> Verdict {
        match &mut self.inner {
            Inner::Http(s) => s.on_segment(ctx, in_port, frame, meta, now_ns, out),
            Inner::Memcache(s) => s.on_segment(ctx, in_port, frame, meta, now_ns, out),
        }
    }

    /// Rules changed (policy reload): later requests are judged by `policy`
    /// (None: the port no longer has L7 rules, every request passes). False
    /// when the new rules speak another protocol: the connection must end.
    pub fn set_policy(&mut self, policy: Option<Arc<L7Policy>>) -> bool {
        let proto = match &self.inner {
            Inner::Http(_) => L7Proto::Http,
            Inner::Memcache(_) => L7Proto::Memcache,
        };
        let p = match policy {
            Some(p) if p.proto != proto => return false,
            Some(p) => p,
            None => Arc::new(L7Policy {
                proto,
                stages: Vec::new(),
            }),
        };
        match &mut self.inner {
            Inner::Http(s) => s.policy = p,
            Inner::Memcache(s) => s.policy = p,
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

    /// Retransmit injected bytes not yet acknowledged.
    pub fn on_tick(&mut self, ctx: &mut StreamCtx<'_>, now_ns: u64, out: &mut Output) {
        match &mut self.inner {
            Inner::Http(s) => s.on_tick(ctx, now_ns, out),
            Inner::Memcache(s) => s.on_tick(ctx, now_ns, out),
        }
    }
}
