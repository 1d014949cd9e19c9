//! Frames the enforcer writes: TCP segments with payload (injected replies,
//! re-segmented released bytes), RSTs, and in-place seq/ack rewrites. All
//! checksums are computed here.

use super::view::FrameMeta;

/// Header fields for a TCP segment built from the headers of a frame of the
/// same flow (MACs, IPs, ports, TTL, IP version are taken from `template`).
#[derive(Debug, Clone, Copy)]
pub struct SegmentSpec {
    /// Build it in the template's direction (false) or the reverse one (true):
    /// MACs, addresses and ports swapped.
    pub reverse: bool,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    pub window: u16,
}

/// Build an Ethernet/IP/TCP frame carrying `payload` (no TCP options).
pub fn tcp_segment(
    template: &[u8],
    meta: &FrameMeta,
    spec: &SegmentSpec,
    payload: &[u8],
) -> Vec<u8> {
    let _ = (template, meta, spec, payload);
    todo!("packet::build::tcp_segment")
}

/// Rewrite seq and ack of a TCP frame in place and fix the checksum.
pub fn set_seq_ack(frame: &mut [u8], meta: &FrameMeta, seq: u32, ack: u32) {
    let _ = (frame, meta, seq, ack);
    todo!("packet::build::set_seq_ack")
}
