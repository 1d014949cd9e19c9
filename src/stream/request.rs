//! The client→server path: reassemble the client's bytes, hold an undecided
//! request, decide it, release allowed bytes byte-exact and remove denied
//! ones, and keep what was released until the server acknowledges it. The
//! server→client path is in `reply.rs`; state and emitters in `conn.rs`.

use std::collections::VecDeque;

use super::conn::{Pending, Stream, Template, MIN_SEG};
use super::seqmap::Abs;
use super::StreamCtx;
use crate::config::DenyAction;
use crate::counters::DropReason;
use crate::l7::http::ChunkedDecoder;
use crate::l7::{Body, Parse, Protocol};
use crate::packet::build;
use crate::packet::view::{TCP_ACK, TCP_FIN, TCP_PSH, TCP_RST, TCP_SYN};
use crate::packet::{FrameMeta, TcpMeta};
use crate::verdict::{other, Output, Verdict};

/// Where the client stream is between requests.
pub(super) enum ReqState {
    Head,
    Body {
        allowed: bool,
        left: u64,
    },
    Chunked {
        allowed: bool,
        dec: ChunkedDecoder,
    },
    /// After a tunnel was set up: bytes pass unparsed.
    Pass,
}

/// How far ahead of the next expected byte an RST may be and still be
/// passed on (without ending our state): the receiver answers it with a
/// challenge ACK (RFC 5961 3.2). Receive windows are not tracked exactly;
/// this is an upper bound on any window the peer can have advertised with
/// the scale factors in use.
pub(super) const RST_WINDOW: u64 = 1 << 30;

/// Longest head still held while the worker is over `max_held_total`.
const BUDGET_HEAD: usize = 1024;

/// Buffers emptied keep at most this much capacity; larger ones are freed.
pub(super) const KEEP_CAPACITY: usize = 4096;

/// Urgent data: Linux (without SO_OOBINLINE) takes the byte before the
/// urgent pointer out of the stream, so the server would read other bytes
/// than the ones judged. The flag and pointer are cleared: the byte stays
/// in band, where it was judged.
pub(super) fn clear_urgent(frame: &mut [u8], meta: &FrameMeta, t: &TcpMeta) {
    const TCP_URG: u8 = 0x20;
    if t.flags & TCP_URG == 0 {
        return;
    }
    let o = meta.l4_off;
    if let Some(h) = frame.get_mut(o..o + 20) {
        h[13] &= !TCP_URG;
        h[18] = 0;
        h[19] = 0;
        build::fix_tcp_checksum(frame, meta);
    }
}

impl<P: Protocol> Stream<P> {
    /// The client's SYN. The first one fixes the client's sequence space for
    /// the life of the connection, as Linux does: a later SYN with another
    /// ISN (during the handshake or after it) never re-bases the stream; it
    /// is passed on, and the server answers it with a challenge ACK. A SYN
    /// carrying data is dropped: without a fast-open cookie the server does
    /// not read it, with one it would read bytes never judged.
    fn client_syn(&mut self, frame: &[u8], meta: &FrameMeta, t: &TcpMeta) -> Verdict {
        if meta.payload_end > meta.payload_off || t.flags & TCP_ACK != 0 {
            // Data on a SYN; a SYN-ACK from the client (simultaneous open,
            // which no server that listens does).
            return Verdict::Drop(DropReason::TcpInvalid);
        }
        if self.cli.abs.is_none() {
            self.cli.abs = Some(Abs {
                base: t.seq.wrapping_add(1),
            });
            self.cli.tpl = Some(Template::of(frame, meta));
            self.cli.win = t.window;
            self.cli.wscale = build::tcp_wscale(frame, meta);
        }
        Verdict::Forward(other(self.client_side))
    }

    /// An RST from the client at client offset `s` (RFC 5961): it ends the
    /// connection only when its sequence number can be the one the server
    /// expects next (between the server's latest ack and the end of what we
    /// sent it); ahead of that, within a window, it is passed on mapped but
    /// our state stays (the server answers with a challenge ACK); anything
    /// else is dropped.
    fn client_rst(
        &mut self,
        frame: &mut [u8],
        meta: &FrameMeta,
        cabs: Abs,
        s: i64,
        modified: bool,
    ) -> Verdict {
        let fwd = other(self.client_side);
        if s < 0 {
            return Verdict::Drop(DropReason::L7OutOfWindow);
        }
        let m = self.cli.removed.to_server(s as u64);
        let out = self.c_out();
        if m < self.srv.ack || m > out + RST_WINDOW {
            return Verdict::Drop(DropReason::L7OutOfWindow);
        }
        if m > out && self.cli.next == 0 && self.srv.next == 0 {
            // The server may still be in SYN-RECV, where Linux takes any
            // in-window RST (not only the exact one): it would end the
            // connection while we kept it.
            return Verdict::Drop(DropReason::L7OutOfWindow);
        }
        if modified {
            let ack = self.ack_to_server();
            build::set_seq_ack(frame, meta, cabs.seq(m), ack);
        }
        if m <= out {
            self.closed = true;
        }
        Verdict::Forward(fwd)
    }

    pub(super) fn client_segment(
        &mut self,
        ctx: &mut StreamCtx<'_>,
        frame: &mut [u8],
        meta: &FrameMeta,
        t: &TcpMeta,
        now: u64,
        out: &mut Output,
    ) -> Verdict {
        let fwd = other(self.client_side);
        if t.flags & TCP_SYN != 0 {
            return self.client_syn(frame, meta, t);
        }
        if t.flags & (TCP_ACK | TCP_RST) == 0 {
            // Linux discards a segment without ACK once synchronized; bytes
            // we judged from it would be bytes the server never reads.
            return Verdict::Drop(DropReason::TcpInvalid);
        }
        let Some(cabs) = self.cli.abs else {
            return Verdict::Drop(DropReason::L7OutOfWindow);
        };
        if self.srv.abs.is_none() && t.flags & TCP_RST == 0 {
            // No SYN-ACK seen: the server has not accepted this connection
            // (it may still hold an older one on this 4-tuple, whose stream
            // position we do not know). Nothing goes through before it.
            return Verdict::Drop(DropReason::L7OutOfWindow);
        }
        if self.cli.tpl.is_none() {
            self.cli.tpl = Some(Template::of(frame, meta));
        }
        self.cli.win = t.window;
        clear_urgent(frame, meta, t);
        if t.flags & TCP_ACK != 0 {
            if let Some(sabs) = self.srv.abs {
                let view_next =
                    self.srv.inserted.to_view(self.srv.next) + u64::from(self.srv.fin.is_some());
                let a = sabs.abs(t.ack, view_next);
                if a > self.cli.ack_view as i64 && a <= view_next as i64 {
                    self.cli.ack_view = a as u64;
                }
                let acked = self.cli.ack_view;
                self.srv
                    .inj
                    .retain(|b| b.view_start + b.bytes.len() as u64 > acked);
                self.srv.inserted.prune(acked);
                // A held server edge the client's acks came near ends.
                let to_server = self.server_acked();
                self.srv.hold.acked(to_server);
            }
        }
        if self.draining.is_some() && t.flags & TCP_RST == 0 {
            if self.queue.is_empty() && self.srv.inj.is_empty() {
                // The client has the timeout reply: the connection ends.
                self.reset(ctx, out);
                return Verdict::Consumed;
            }
            if meta.payload_end > meta.payload_off || t.flags & TCP_FIN != 0 {
                return Verdict::Drop(DropReason::L7Denied);
            }
        }
        let payload = meta.payload(frame);
        let len = payload.len() as u64;
        let modified_before = self.modified();
        let s = cabs.abs(t.seq, self.cli.next);
        if t.flags & TCP_RST != 0 {
            return self.client_rst(frame, meta, cabs, s, modified_before);
        }
        self.cli.max_seg = self.cli.max_seg.max(payload.len());
        let e = s + len as i64;
        let fin = t.flags & TCP_FIN != 0;
        let next_before = self.cli.next;
        let decided_before = self.decided();
        let out_before = self.c_out();
        if self.pass_known(ctx, payload, s, fin, modified_before, now) {
            return Verdict::Forward(fwd);
        }
        if let Some(v) = self.pass_unkept(s, e, fin, modified_before) {
            if let Some(sabs) = self.srv.abs {
                self.unkept_seen(ctx, out, sabs, (s, e));
            }
            return v;
        }

        // Bytes already decided: resend the kept ones (the server may have
        // lost what we sent), mapped into the server's offsets.
        let mut old: Vec<(u64, usize, usize)> = Vec::new();
        let old_end = e.min(decided_before as i64);
        if len > 0 && s < old_end && old_end > 0 {
            for (a, b) in self.cli.removed.kept(s.max(0) as u64, old_end as u64) {
                let off = (a as i64 - s) as usize;
                old.push((self.cli.removed.to_server(a), off, (b - a) as usize));
            }
        }

        // New bytes.
        let mut overflow = false;
        if len > 0 && e > self.cli.next as i64 {
            if s <= self.cli.next as i64 {
                let skip = (self.cli.next as i64 - s) as usize;
                let fresh = &payload[skip..];
                if (self.waiting() && self.cli.buf.len() + fresh.len() > ctx.cfg.max_held_bytes)
                    || self.cli.sent.len() >= self.sent_limit()
                    || (ctx.over_budget && !self.cli.sent.is_empty())
                {
                    overflow = true;
                } else {
                    let n = self.cli.ooo.advance(fresh, &mut self.cli.buf);
                    self.cli.next += n as u64;
                }
            } else {
                // Out of order: kept in the ring only within the hold budget
                // counted from the next expected byte, so that the bytes
                // held once the hole fills stay within it too.
                let off = (s - self.cli.next as i64) as usize;
                let room = ctx.cfg.max_held_bytes.saturating_sub(self.cli.buf.len());
                overflow = off + payload.len() > room
                    || (ctx.over_budget && self.cli.ooo.memory() == 0)
                    || self
                        .cli
                        .ooo
                        .insert(off, payload, ctx.cfg.max_held_bytes)
                        .is_err();
            }
        }
        if fin && !overflow {
            if e <= self.cli.next as i64 && e >= decided_before as i64 {
                self.cli.fin.get_or_insert(e as u64);
            } else if e > self.cli.next as i64 {
                self.cli.ooo_fin = Some(e as u64);
            }
        }
        if let Some(f) = self.cli.ooo_fin {
            if f <= self.cli.next {
                self.cli.fin.get_or_insert(self.cli.next);
                self.cli.ooo_fin = None;
            }
        }
        if overflow {
            ctx.counters.drop(DropReason::L7HoldOverflow);
        } else if len > 0 && e <= next_before as i64 && old.is_empty() {
            ctx.counters.drop(DropReason::L7Duplicate);
        }

        // Reused from call to call: no allocation per segment.
        let mut rel = std::mem::take(&mut self.cli.rel);
        rel.clear();
        let mark = out.emits.len();
        let denied = self.decide_queued(ctx, now, out, &mut rel);
        let fin_now = self.fin_ready(ctx, now, out);

        if self.closed {
            // Reset while deciding: what was allowed before goes out ahead
            // of the RSTs.
            let resets = out.emits.split_off(mark.min(out.emits.len()));
            self.send_released(ctx, out, cabs, out_before, &rel, false);
            out.emits.extend(resets);
            self.keep_rel(rel);
            return Verdict::Consumed;
        }
        let fast = !self.modified()
            && !modified_before
            && len > 0
            && s == next_before as i64
            && s == decided_before as i64
            && self.decided() as i64 == e
            && old.is_empty()
            && rel.len() == payload.len()
            && fin == fin_now
            && self.fits_window(out_before, rel.len() as u64);
        if fast {
            self.note_tx(out_before, out_before + rel.len() as u64);
            self.keep_rel(rel);
            return Verdict::Forward(fwd);
        }
        // A segment without data can still release bytes (a held head whose
        // wait it ended, e.g. by acknowledging a denial) or a held FIN:
        // those must go out, so it is a bare ACK only when it moved nothing.
        let pure = len == 0 && !fin && t.flags & TCP_RST == 0 && rel.is_empty() && !fin_now;
        if pure && self.cli.removed.ends_at(self.decided()) {
            // Only we can acknowledge removed bytes at the end of the
            // stream; our earlier ACK may have been lost.
            self.ack_client(ctx, out);
        }
        if pure {
            // A bare ACK / window update: rewrite in place.
            let seq = cabs.seq(self.c_next());
            let ack = self.ack_to_server();
            if self.modified() {
                build::strip_sack(frame, meta);
            }
            build::set_seq_ack(frame, meta, seq, ack);
            self.keep_rel(rel);
            return Verdict::Forward(fwd);
        }
        let mut sent = false;
        for (at, off, n) in old {
            let end = at + n as u64;
            if let Some((ulo, uhi)) = self.cli.unkept {
                // Unkept bytes have no copy: they go on as the client sent
                // them (nothing in them was judged, see `bypass.rs`).
                let a = at.max(ulo).max(self.srv.ack);
                let b = end.min(uhi);
                if a < b {
                    let p = &payload[off + (a - at) as usize..off + (b - at) as usize];
                    let f = self.seg(true, cabs.seq(a), TCP_PSH, p);
                    self.emit(ctx, out, true, f);
                    sent = true;
                }
            }
            // Only what we released, as we released it; bytes still waiting
            // for the server's window go in order below (`send_new`).
            let lo = at.max(self.cli.sent_base);
            let hi = end.min(self.unsent_from());
            for (from, bytes) in self.kept_runs(lo, hi) {
                let f = self.seg(true, cabs.seq(from), TCP_PSH, &bytes);
                self.emit(ctx, out, true, f);
                sent = true;
            }
        }
        let resent = sent;
        sent |= self.send_new(ctx, out, cabs, fin_now);
        self.arm_owned(ctx, now);
        if fin
            && self.cli.fin_sent
            && !fin_now
            && e <= decided_before as i64
            && self.unsent_from() >= self.sent_end()
        {
            // Retransmitted FIN.
            let f = self.seg(true, cabs.seq(self.c_out() - 1), TCP_FIN, &[]);
            self.emit(ctx, out, true, f);
            sent = true;
        }
        if !sent {
            // The ack and window it carried still matter to the server.
            self.ack_server(ctx, out);
        }
        let own_before = self.cli.own_ack;
        self.own_held();
        self.arm_owned(ctx, now);
        if denied
            || self.cli.own_ack > own_before
            || (len > 0 && e <= decided_before.max(own_before) as i64)
        {
            // Denied bytes, a held head we now acknowledge ourselves, or a
            // retransmission of bytes we acknowledged (our ACK was lost).
            self.ack_client(ctx, out);
        } else if len > 0 && s < decided_before as i64 && !resent {
            // A retransmission reaching back into bytes the server already
            // acknowledged (its ACK was lost), with new bytes we could not
            // take (a budget was full): the server sees only bytes it has
            // and would not answer, so we do, or the client resends the
            // acknowledged bytes with them until room frees up.
            self.ack_client(ctx, out);
        }
        self.keep_rel(rel);
        Verdict::Consumed
    }

    /// Bytes whose framing is already known (the body of an allowed
    /// request, or a tunnel), in order, on a stream nothing was removed
    /// from or inserted into, with nothing held: they go on as the client's
    /// own frame, without reassembly or parsing. The one copy kept is the
    /// one every released byte has until the server acknowledges it
    /// (`cli.sent`). Anything else (a segment reaching past the body into
    /// the next head, a FIN, a budget reached) takes the general path.
    fn pass_known(
        &mut self,
        ctx: &StreamCtx<'_>,
        payload: &[u8],
        s: i64,
        fin: bool,
        modified: bool,
        now: u64,
    ) -> bool {
        let n = payload.len() as u64;
        if n == 0
            || fin
            || modified
            || self.closed
            || s != self.cli.next as i64
            || !self.cli.buf.is_empty()
            || self.cli.ooo.memory() != 0
            || self.cli.fin.is_some()
            || self.cli.ooo_fin.is_some()
            || self.draining.is_some()
        {
            return false;
        }
        // The general path's budgets (`l7-hold-overflow` there).
        if self.cli.sent.len() >= self.sent_limit()
            || (ctx.over_budget && !self.cli.sent.is_empty())
            || (payload.len() > ctx.cfg.max_held_bytes && self.waiting())
        {
            return false;
        }
        if !self.fits_window(self.c_out(), n) {
            // Past the server's window: the general path keeps it for later.
            return false;
        }
        match &mut self.cli.req {
            ReqState::Body {
                allowed: true,
                left,
            } if *left >= n => {
                *left -= n;
                if *left == 0 {
                    self.cli.req = ReqState::Head;
                }
            }
            ReqState::Pass => {}
            _ => return false,
        }
        let at = self.c_out();
        self.cli.next += n;
        self.cli.sent.extend(payload);
        self.note_tx(at, at + n);
        self.arm_owned(ctx, now);
        true
    }

    /// A request head is held: acknowledge every byte received, as a proxy
    /// would. The server acknowledges none of a held head (it does not
    /// have it), and a client waits for acks once its congestion window of
    /// unacknowledged bytes is out: without ours, a head larger than that
    /// window (a 187 KB multi-get on a fresh connection; any head of two
    /// segments after a timeout cut the window to one) would wait for
    /// retransmission timeouts that never end it. From here on these bytes
    /// are ours to deliver: the client will not send them again.
    ///
    /// Not while an unkept range is not acknowledged by the server: we
    /// could not deliver its bytes (we have no copy). Until the server's
    /// ack passes it (`server_segment` then owns the head), the client's
    /// own retransmission moves the head.
    pub(super) fn own_held(&mut self) {
        if self.closed
            || !matches!(self.cli.req, ReqState::Head)
            || self.cli.buf.is_empty()
            || self.cli.unkept.is_some()
        {
            return;
        }
        self.cli.own_ack = self.cli.own_ack.max(self.cli.next);
    }

    /// Server offset up to which released bytes are ours to deliver (we
    /// acknowledged them to the client).
    pub(super) fn owned_end(&self) -> u64 {
        let c = self.cli.own_ack.min(self.decided());
        self.cli.removed.to_server(c)
    }

    /// Released bytes `[lo, hi)` (server offsets) just went to the server:
    /// those inside its window count as delivered but for a loss.
    fn note_tx(&mut self, lo: u64, hi: u64) {
        let base = self.cli.tx_edge.max(self.srv.ack);
        if lo <= base {
            let edge = self.srv.ack + self.server_window();
            self.cli.tx_edge = base.max(hi.min(edge));
        }
    }

    /// Bytes we acknowledged went to the server: run the retransmission
    /// timer until the server acknowledges them.
    fn arm_owned(&mut self, ctx: &StreamCtx<'_>, now: u64) {
        if self.cli.rtx.is_none() && !self.closed && self.srv.ack < self.owned_end() {
            let rto = ctx.cfg.inject_rto_ns;
            self.cli.rtx = Some((now.saturating_add(rto), rto));
        }
    }

    /// Released bytes `[at, at + n)` (server offsets) may go out as they
    /// are, in the client's own frame: nothing released before them waits
    /// for the server's window, and they fit in it.
    fn fits_window(&self, at: u64, n: u64) -> bool {
        self.unsent_from() >= at && at.saturating_add(n) <= self.server_edge()
    }

    /// Send what was released and not sent yet, in order, as far as the
    /// server's window reaches; the rest waits in `cli.sent` for the
    /// server's next ACK or window update (`push_kept`). Why: the client
    /// may be offered more than the server's window (the edge offered
    /// never moves back, and a held head offers the hold's edge), and the
    /// server drops, without a count on either side, what arrives past its
    /// window. On a renumbered connection our rebuilt segments carry no
    /// SACK and no timestamps, so the client's recovery of such a loss
    /// crawled at one segment per retransmission timeout (a 2 MB memcached
    /// set stalled for seconds). With nothing sent unacknowledged, one
    /// segment goes even into a closed window, as a window probe: the
    /// server's answer says when it opens. The client's FIN follows the
    /// last released byte (returns true when something went out).
    fn send_new(
        &mut self,
        ctx: &mut StreamCtx<'_>,
        out: &mut Output,
        cabs: Abs,
        fin: bool,
    ) -> bool {
        let from = self.unsent_from();
        let sent = self.send_kept(ctx, out, from, from <= self.srv.ack);
        if fin && !sent && self.unsent_from() >= self.sent_end() {
            let f = self.seg(true, cabs.seq(self.c_out() - 1), TCP_FIN, &[]);
            self.emit(ctx, out, true, f);
            return true;
        }
        sent
    }

    /// Send kept bytes from server offset `from` up to the server's window
    /// (at least one segment when `probe`: a zero window is answered with
    /// an ACK that tells us when it opens). The last kept byte carries the
    /// client's FIN once it was passed. True when something went out.
    fn send_kept(
        &mut self,
        ctx: &mut StreamCtx<'_>,
        out: &mut Output,
        from: u64,
        probe: bool,
    ) -> bool {
        let Some(cabs) = self.cli.abs else {
            return false;
        };
        let end = self.sent_end();
        let from = from.max(self.cli.sent_base);
        let chunk = self.cli.max_seg.max(MIN_SEG) as u64;
        let mut to = end.min(self.server_edge());
        if probe {
            to = to.max(from.saturating_add(chunk).min(end));
        }
        let mut at = from;
        while at < to {
            let mut n = chunk.min(to - at);
            if let Some((ulo, uhi)) = self.cli.unkept {
                // Unkept bytes are the client's to send.
                if at >= ulo && at < uhi {
                    at = uhi;
                    continue;
                }
                if at < ulo {
                    n = n.min(ulo - at);
                }
            }
            let Some(i) = self.sent_idx(at) else { break };
            let bytes: Vec<u8> = self.cli.sent.range(i..i + n as usize).copied().collect();
            let flags = if self.cli.fin_sent && at + n == end {
                TCP_PSH | TCP_FIN
            } else {
                TCP_PSH
            };
            let f = self.seg(true, cabs.seq(at), flags, &bytes);
            self.emit(ctx, out, true, f);
            at += n;
        }
        self.cli.tx_edge = self.cli.tx_edge.max(to);
        at > from
    }

    /// A server segment moved its ack or window (`advanced`: its ack grew):
    /// released bytes that waited for its window go now. While bytes we
    /// acknowledged are not acknowledged by the server, we are their
    /// sender and keep a retransmission timer running (reset by every
    /// advance); the client's own retransmissions cover the others.
    pub(super) fn push_kept(
        &mut self,
        ctx: &mut StreamCtx<'_>,
        now: u64,
        out: &mut Output,
        advanced: bool,
    ) {
        if self.closed {
            self.cli.rtx = None;
            return;
        }
        if self.srv.ack >= self.owned_end() {
            self.cli.rtx = None;
        } else if advanced || self.cli.rtx.is_none() {
            let rto = ctx.cfg.inject_rto_ns;
            self.cli.rtx = Some((now.saturating_add(rto), rto));
        }
        let from = self.unsent_from();
        self.send_kept(ctx, out, from, false);
    }

    /// The retransmission timer of owned bytes ran out: go back to the
    /// server's ack and send its window's worth again, doubling the timeout
    /// (up to 64 times `inject_rto_ns`).
    pub(super) fn retransmit_owned(&mut self, ctx: &mut StreamCtx<'_>, now: u64, out: &mut Output) {
        let Some((due, rto)) = self.cli.rtx else {
            return;
        };
        if self.closed || self.srv.ack >= self.owned_end() {
            self.cli.rtx = None;
            return;
        }
        if now < due {
            return;
        }
        let rto = rto
            .saturating_mul(2)
            .min(ctx.cfg.inject_rto_ns.saturating_mul(64));
        self.cli.rtx = Some((now.saturating_add(rto), rto));
        ctx.counters.l7_owned_retransmits += 1;
        self.send_kept(ctx, out, self.srv.ack, true);
    }

    /// Decide whatever complete requests `c_buf` holds. Allowed bytes go to
    /// `rel`; returns true when something was denied.
    fn decide_queued(
        &mut self,
        ctx: &mut StreamCtx<'_>,
        now: u64,
        out: &mut Output,
        rel: &mut Vec<u8>,
    ) -> bool {
        let mut off = 0usize;
        let mut denied = false;
        let rel_start = rel.len();
        while !self.closed {
            let base = self.decided();
            let avail = &self.cli.buf[off..];
            match &mut self.cli.req {
                ReqState::Pass => {
                    rel.extend_from_slice(avail);
                    off = self.cli.buf.len();
                    break;
                }
                ReqState::Body { allowed, left } => {
                    let n = (*left).min(avail.len() as u64) as usize;
                    if n == 0 {
                        break;
                    }
                    if *allowed {
                        rel.extend_from_slice(&avail[..n]);
                    } else {
                        self.cli.removed.add(base + off as u64, n as u64);
                    }
                    *left -= n as u64;
                    if *left == 0 {
                        self.cli.req = ReqState::Head;
                    }
                    off += n;
                }
                ReqState::Chunked { allowed, dec } => {
                    if avail.is_empty() {
                        break;
                    }
                    let allowed = *allowed;
                    match dec.feed(avail) {
                        Ok((n, done)) => {
                            if allowed {
                                rel.extend_from_slice(&avail[..n]);
                            } else {
                                self.cli.removed.add(base + off as u64, n as u64);
                            }
                            off += n;
                            if done {
                                self.cli.req = ReqState::Head;
                            } else if n == 0 {
                                break;
                            }
                        }
                        Err(_) => {
                            self.cli.buf.drain(..off);
                            let subj = self.proto.unparsed_subject();
                            self.log(ctx, out, now, subj, false, "malformed chunked body".into());
                            self.reset(ctx, out);
                            return true;
                        }
                    }
                }
                ReqState::Head => {
                    if avail.is_empty() || self.waiting() {
                        break;
                    }
                    let known = self.cli.scanned;
                    let parsed = if known > 0
                        && (avail.len() <= known || !self.proto.head_may_end(avail, known))
                    {
                        // Nothing that could end the head arrived since the
                        // last look: the answer is still NeedMore.
                        Parse::NeedMore
                    } else {
                        ctx.counters.l7_head_parses += 1;
                        self.proto.parse_request(avail)
                    };
                    self.cli.scanned = 0;
                    match parsed {
                        Parse::NeedMore => {
                            self.cli.scanned = avail.len();
                            let over = avail.len() > ctx.cfg.max_held_bytes
                                || (ctx.over_budget && avail.len() > BUDGET_HEAD);
                            if over {
                                self.cli.buf.drain(..off);
                                ctx.counters.drop(DropReason::L7HoldOverflow);
                                let subj = self.proto.unparsed_subject();
                                self.log(
                                    ctx,
                                    out,
                                    now,
                                    subj,
                                    false,
                                    "request head exceeds max-held-bytes".into(),
                                );
                                self.reset(ctx, out);
                                return true;
                            }
                            break;
                        }
                        Parse::Invalid(why) => {
                            // Nothing says where the next request starts.
                            self.cli.buf.drain(..off);
                            let subj = self.proto.unparsed_subject();
                            self.log(
                                ctx,
                                out,
                                now,
                                subj,
                                false,
                                format!("invalid request: {why}").into(),
                            );
                            self.reset(ctx, out);
                            return true;
                        }
                        Parse::Complete(h) => {
                            self.cli.head_since = None;
                            let head_len = h.head_len.min(avail.len());
                            let proto = &self.proto;
                            let mut v = self.policy.decide(|rule| proto.rule_matches(&h.req, rule));
                            let subject = self.proto.subject(&h.req);
                            if v.audit || (!v.allowed && ctx.cfg.audit) {
                                // Audit mode: the request goes on as if allowed;
                                // the log says it would not have been, and why.
                                self.log_audit(ctx, out, now, subject, v.detail);
                                v.allowed = true;
                            } else {
                                self.log(ctx, out, now, subject, v.allowed, v.detail);
                            }
                            if v.allowed {
                                rel.extend_from_slice(&avail[..head_len]);
                                if self.proto.expects_reply(&h.req) {
                                    self.pending_bytes += head_len;
                                    self.queue.push_back(Pending::Awaiting(h.req, head_len));
                                }
                            } else {
                                denied = true;
                                self.cli.removed.add(base + off as u64, head_len as u64);
                                if ctx.cfg.deny_action == DenyAction::Reset {
                                    self.cli.buf.drain(..off + head_len);
                                    self.reset(ctx, out);
                                    return true;
                                }
                                // The denying policy's own reply, else the global one.
                                let own =
                                    v.deny_reply.as_ref().map(|o| o.apply(&ctx.cfg.deny_reply));
                                let reply = own.as_ref().unwrap_or(&ctx.cfg.deny_reply);
                                if let Some(r) = self.proto.deny_reply(&h.req, reply) {
                                    self.queue.push_back(Pending::Denial(r));
                                }
                            }
                            off += head_len;
                            self.cli.req = match h.body {
                                Body::None => ReqState::Head,
                                Body::Length(0) => ReqState::Head,
                                Body::Length(n) => ReqState::Body {
                                    allowed: v.allowed,
                                    left: n,
                                },
                                Body::Chunked => ReqState::Chunked {
                                    allowed: v.allowed,
                                    dec: ChunkedDecoder::new(),
                                },
                            };
                            if !v.allowed {
                                // Decided bytes leave the buffer first: the
                                // denial acknowledges up to them.
                                self.cli.buf.drain(..off);
                                off = 0;
                                self.flush_denials(ctx, now, out);
                            }
                        }
                    }
                }
            }
        }
        if !self.closed {
            self.cli.buf.drain(..off.min(self.cli.buf.len()));
            if self.cli.buf.is_empty() && self.cli.buf.capacity() > KEEP_CAPACITY {
                // A large head once held must not keep its memory.
                self.cli.buf = Vec::new();
            }
        }
        self.cli.sent.extend(&rel[rel_start..]);
        if !self.closed {
            self.arm_head_clock(now);
        }
        denied
    }

    /// The head clock runs from the first held byte of a head. Nothing
    /// but the client's own pace decides when the head is complete: every
    /// held byte is acknowledged by us as it arrives (`own_held`), and so
    /// is everything before it, released bytes included, which we then
    /// deliver ourselves (`push_kept`). Neither a lost ACK (the client's
    /// resend is answered at once) nor a slow or lossy server can stall
    /// the client's sending of the head.
    fn arm_head_clock(&mut self, now: u64) {
        let held = matches!(self.cli.req, ReqState::Head) && !self.cli.buf.is_empty();
        self.cli.head_since = match (held, self.cli.head_since) {
            (false, _) => None,
            (true, Some(t)) => Some(t),
            (true, None) => Some(now),
        };
    }

    /// The held head did not complete within `l7_head_timeout_ns` of its
    /// first byte (a slow sender holding our memory, as slowloris holds a
    /// server's). Like HAProxy's `timeout http-request`: the head is
    /// denied, the protocol's timeout reply (HTTP 408, in reply order) goes
    /// to the client, and the connection ends once the client acknowledged
    /// it; without such a reply (memcached, or `deny_action` reset) it is
    /// reset at once. A head held only because earlier requests wait is
    /// our delay, not the client's: its clock starts over.
    pub(super) fn head_timed_out(&mut self, ctx: &mut StreamCtx<'_>, now: u64, out: &mut Output) {
        let held = matches!(self.cli.req, ReqState::Head) && !self.cli.buf.is_empty();
        if !held || self.waiting() || self.draining.is_some() {
            self.cli.head_since = held.then_some(now).filter(|_| self.draining.is_none());
            return;
        }
        ctx.counters.l7_head_timeouts += 1;
        self.cli.head_since = None;
        let subj = self.proto.unparsed_subject();
        self.log(ctx, out, now, subj, false, "request head timeout".into());
        let reply = match ctx.cfg.deny_action {
            DenyAction::Reply => self.proto.timeout_reply(),
            DenyAction::Reset => None,
        };
        let Some(reply) = reply else {
            self.reset(ctx, out);
            return;
        };
        let at = self.decided();
        self.cli.removed.add(at, self.cli.buf.len() as u64);
        self.cli.buf = Vec::new();
        self.cli.scanned = 0;
        self.cli.ooo.clear();
        self.queue.push_back(Pending::Denial(reply));
        self.draining = Some(now.saturating_add(self.head_timeout));
        self.flush_denials(ctx, now, out);
        self.ack_client(ctx, out);
    }

    /// Bytes in flight to the server, at most: beyond it new client data is
    /// dropped (and retransmitted by the client later).
    pub(super) fn sent_limit(&self) -> usize {
        self.limit.saturating_mul(4)
    }

    /// The server acknowledged up to server offset `acked`.
    pub(super) fn trim_sent(&mut self, acked: u64) {
        if let Some((lo, hi)) = self.cli.unkept {
            if self.cli.sent_base <= lo && acked > lo {
                // The kept bytes below the range are all acknowledged: the
                // next kept byte is at its end.
                let pre = (lo - self.cli.sent_base).min(self.cli.sent.len() as u64);
                self.cli.sent.drain(..pre as usize);
                self.cli.sent_base = hi;
            }
            if acked >= hi {
                self.cli.unkept = None;
            }
        }
        let n = acked
            .saturating_sub(self.cli.sent_base)
            .min(self.cli.sent.len() as u64);
        self.cli.sent.drain(..n as usize);
        self.cli.sent_base += n;
        // While a body streams, the server's acks empty this buffer again
        // and again: freeing it each time would cost an allocation (and a
        // regrowth) per round trip. It is freed once the body is over.
        let streaming = matches!(self.cli.req, ReqState::Body { .. });
        if self.cli.sent.is_empty() && self.cli.sent.capacity() > KEEP_CAPACITY && !streaming {
            self.cli.sent = VecDeque::new();
        }
    }

    /// The client's FIN goes out once every byte before it is decided; an
    /// incomplete request head at the FIN is denied.
    fn fin_ready(&mut self, ctx: &mut StreamCtx<'_>, now: u64, out: &mut Output) -> bool {
        let Some(f) = self.cli.fin else { return false };
        if self.cli.fin_sent || self.closed || f != self.cli.next {
            return false;
        }
        if !self.cli.buf.is_empty() {
            if self.waiting() || !matches!(self.cli.req, ReqState::Head) {
                return false;
            }
            let subj = self.proto.unparsed_subject();
            self.log(
                ctx,
                out,
                now,
                subj,
                false,
                "request incomplete at FIN".into(),
            );
            let at = self.decided();
            self.cli.removed.add(at, self.cli.buf.len() as u64);
            self.cli.buf.clear();
        }
        self.cli.fin_sent = true;
        true
    }

    /// Held requests may go on after a denial was injected.
    pub(super) fn release_held(&mut self, ctx: &mut StreamCtx<'_>, now: u64, out: &mut Output) {
        let Some(cabs) = self.cli.abs else { return };
        if self.cli.buf.is_empty() || self.closed {
            return;
        }
        let mut rel = std::mem::take(&mut self.cli.rel);
        rel.clear();
        let denied = self.decide_queued(ctx, now, out, &mut rel);
        let fin_now = self.fin_ready(ctx, now, out);
        if self.closed {
            return;
        }
        self.send_new(ctx, out, cabs, fin_now);
        self.arm_owned(ctx, now);
        if denied {
            self.ack_client(ctx, out);
        }
        self.keep_rel(rel);
    }

    /// The released-bytes scratch goes back for the next call, unless a
    /// large release grew it (a large head must not keep its memory).
    fn keep_rel(&mut self, mut rel: Vec<u8>) {
        if rel.capacity() > KEEP_CAPACITY {
            rel = Vec::new();
        }
        self.cli.rel = rel;
    }

    /// Segments carrying released bytes `rel` from server offset `at`.
    fn send_released(
        &self,
        ctx: &mut StreamCtx<'_>,
        out: &mut Output,
        cabs: Abs,
        at: u64,
        rel: &[u8],
        fin: bool,
    ) -> bool {
        let chunk = self.cli.max_seg.max(MIN_SEG);
        let pieces = rel.len().div_ceil(chunk);
        for (k, piece) in rel.chunks(chunk).enumerate() {
            let seq = cabs.seq(at + (k * chunk) as u64);
            let flags = if fin && k + 1 == pieces {
                TCP_PSH | TCP_FIN
            } else {
                TCP_PSH
            };
            let f = self.seg(true, seq, flags, piece);
            self.emit(ctx, out, true, f);
        }
        pieces > 0
    }
}
