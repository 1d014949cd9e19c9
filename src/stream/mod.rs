//! The L7 stream layer, for TCP flows whose port carries L7 rules:
//! reassembles the client→server byte stream, holds an undecided request's
//! bytes, releases allowed bytes byte-exact, drops denied ones, injects the
//! protocol's denial in reply order, and from the first denial on maps
//! seq/ack (and SACK) between the two sides' views of the connection.
//!
//! The engine hands every TCP segment of such a flow, both directions, to
//! `L7Flow::on_segment`.

use std::sync::Arc;

use crate::engine::{EngineConfig, Output, Port, Verdict};
use crate::packet::FrameMeta;
use crate::policy::L7Policy;

/// Per-flow context the engine lends to the stream layer for one call.
pub struct StreamCtx<'a> {
    pub cfg: &'a EngineConfig,
    pub counters: &'a mut crate::engine::Counters,
    pub worker: u16,
    pub tuple: crate::log::FlowTuple,
    pub src_identity: &'a str,
    pub dst_identity: &'a str,
}

/// L7 state of one TCP connection. Boxed in the flow entry; its memory is
/// bounded by `EngineConfig::max_held_bytes` per direction.
pub struct L7Flow {
    policy: Arc<L7Policy>,
    client_port: Port,
}

impl L7Flow {
    /// `client_port` is the port the connection's SYN arrived on.
    pub fn new(policy: Arc<L7Policy>, client_port: Port) -> Self {
        L7Flow {
            policy,
            client_port,
        }
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
        let _ = (
            &self.policy,
            self.client_port,
            ctx,
            in_port,
            frame,
            meta,
            now_ns,
            out,
        );
        todo!("stream::L7Flow::on_segment")
    }

    /// Retransmit injected bytes not yet acknowledged.
    pub fn on_tick(&mut self, ctx: &mut StreamCtx<'_>, now_ns: u64, out: &mut Output) {
        let _ = (ctx, now_ns, out);
    }
}
