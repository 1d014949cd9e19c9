//! The server→client path: follow reply framing to know where each request's
//! reply ends, inject denials there, and map the server's segments into the
//! client's view.

use super::conn::{Injected, Pending, Stream, Template};
use super::request::{clear_urgent, ReqState, KEEP_CAPACITY, RST_WINDOW};
use super::seqmap::Abs;
use super::StreamCtx;
use crate::counters::DropReason;
use crate::l7::http::ChunkedDecoder;
use crate::l7::{Parse, Protocol, ReplyBody};
use crate::packet::build;
use crate::packet::view::{TCP_ACK, TCP_FIN, TCP_PSH, TCP_RST, TCP_SYN};
use crate::packet::{FrameMeta, TcpMeta};
use crate::verdict::{Emit, Output, Verdict};

pub(super) enum ReplyState {
    /// Between reply units.
    Head,
    Body {
        left: u64,
        completes: bool,
    },
    Chunked {
        dec: ChunkedDecoder,
        completes: bool,
    },
    /// No more framing: a tunnel, or a reply stream we could not follow.
    Tunnel,
}

impl<P: Protocol> Stream<P> {
    /// The server's SYN-ACK: it must acknowledge the client's SYN (the one
    /// whose ISN we keep) and carry no data. The first one fixes the
    /// server's sequence space; a retransmission of it passes, any other is
    /// dropped. A bare SYN from the server (simultaneous open) is refused.
    fn server_syn(&mut self, frame: &mut [u8], meta: &FrameMeta, t: &TcpMeta) -> Verdict {
        let acks_syn = self.cli.abs.is_some_and(|c| t.ack == c.seq(0));
        if t.flags & TCP_ACK == 0 || !acks_syn || meta.payload_end > meta.payload_off {
            return Verdict::Drop(DropReason::TcpInvalid);
        }
        let isn = t.seq.wrapping_add(1);
        match self.srv.abs {
            None => {
                self.srv.abs = Some(Abs { base: isn });
                self.srv.tpl = Some(Template::of(frame, meta));
                self.srv.win = t.window;
                self.srv.wscale = build::tcp_wscale(frame, meta);
            }
            Some(a) if a.base != isn => return Verdict::Drop(DropReason::TcpInvalid),
            Some(_) => {}
        }
        // The first window the client sees is already one the enforcer can
        // honour (a SYN's window is never scaled), so that later offers,
        // which never shrink, need not start from a larger one.
        let win = t.window.min(self.limit.min(usize::from(u16::MAX)) as u16);
        if win != t.window {
            build::patch_tcp(frame, meta, 14, &win.to_be_bytes());
        }
        self.cli
            .offered
            .set(self.cli.offered.get().max(u64::from(win)));
        Verdict::Forward(self.client_side)
    }

    pub(super) fn server_segment(
        &mut self,
        ctx: &mut StreamCtx<'_>,
        frame: &mut [u8],
        meta: &FrameMeta,
        t: &TcpMeta,
        now: u64,
        out: &mut Output,
    ) -> Verdict {
        let to_client = self.client_side;
        if t.flags & TCP_SYN != 0 {
            return self.server_syn(frame, meta, t);
        }
        if t.flags & (TCP_ACK | TCP_RST) == 0 {
            return Verdict::Drop(DropReason::TcpInvalid);
        }
        let Some(cabs) = self.cli.abs else {
            return Verdict::Drop(DropReason::L7OutOfWindow);
        };
        let Some(sabs) = self.srv.abs else {
            // Before the SYN-ACK only an RST answering the client's SYN
            // means anything (RFC 793 SYN-SENT: it must acknowledge it).
            if t.flags & TCP_RST != 0 && t.flags & TCP_ACK != 0 && t.ack == cabs.seq(0) {
                self.closed = true;
                return Verdict::Forward(to_client);
            }
            return Verdict::Drop(DropReason::L7OutOfWindow);
        };
        clear_urgent(frame, meta, t);
        if self.srv.tpl.is_none() {
            self.srv.tpl = Some(Template::of(frame, meta));
        }
        self.srv.win = t.window;
        let mut advanced = false;
        if t.flags & TCP_ACK != 0 {
            let c_out = self.c_out();
            let a = cabs.abs(t.ack, c_out);
            advanced = a > self.srv.ack as i64 && a <= c_out as i64;
            if advanced {
                self.srv.ack = a as u64;
                // A held client edge the server's acks came near ends.
                self.cli.hold.acked(self.srv.ack);
                let unkept = self.cli.unkept.is_some();
                self.trim_sent(self.srv.ack);
                if unkept && self.cli.unkept.is_none() {
                    // The server has the unkept range: a head held after it
                    // is ours to acknowledge now (`own_held`).
                    let before = self.cli.own_ack;
                    self.own_held();
                    if self.cli.own_ack > before {
                        self.ack_client(ctx, out);
                    }
                }
                let acked = self.cli.removed.to_client_ack(self.srv.ack);
                self.cli.removed.prune(acked);
            }
            if t.flags & TCP_RST == 0 {
                self.push_kept(ctx, now, out, advanced);
            }
        }
        let modified_before = self.modified();
        let payload = meta.payload(frame);
        let len = payload.len() as u64;
        let s = sabs.abs(t.seq, self.srv.next);
        let e = s + len as i64;
        if t.flags & TCP_RST != 0 {
            // As for the client's RST (`client_rst`): only a sequence number
            // the client can expect next ends the connection.
            let lo = self.srv.inserted.to_server_ack(self.cli.ack_view);
            let hi = self.srv.next + u64::from(self.srv.fin.is_some());
            if s < lo as i64 || s > (hi + RST_WINDOW) as i64 {
                return Verdict::Drop(DropReason::L7OutOfWindow);
            }
            if modified_before {
                let seq = sabs.seq(self.srv.inserted.to_view(s as u64));
                let ack = self.ack_to_client();
                build::set_seq_ack(frame, meta, seq, ack);
            }
            if s <= hi as i64 {
                self.closed = true;
            }
            return Verdict::Forward(to_client);
        }
        if s > self.srv.next as i64 && !matches!(self.srv.reply, ReplyState::Tunnel) {
            // Reply framing needs the bytes in order; the server resends.
            // What it says of the client's bytes still counts (taken
            // above): a new ack goes on to the client in a pure ACK of
            // ours at the client's next expected byte, or the client would
            // learn of it only once the server's gap is filled (after the
            // server's timeout, a bare ACK past the gap included).
            if advanced && !self.acks_ahead() {
                self.ack_client(ctx, out);
            }
            return Verdict::Drop(DropReason::L7OutOfWindow);
        }
        if len > 0 && s < self.srv.inserted.floor as i64 {
            // Older than a denial the client already acknowledged.
            ctx.counters.drop(DropReason::L7Duplicate);
            self.ack_server(ctx, out);
            return Verdict::Consumed;
        }
        // Injections as (server offset, bytes), in order.
        let mut inj: Vec<(u64, Vec<u8>)> = Vec::new();
        if e > self.srv.next as i64 {
            let skip = (self.srv.next as i64 - s).max(0) as usize;
            let start = self.srv.next.max(s.max(0) as u64);
            self.srv.next = e as u64;
            self.track(ctx, &payload[skip..], start, &mut inj);
        }
        let fin = t.flags & TCP_FIN != 0;
        if fin && e == self.srv.next as i64 && self.srv.fin.is_none() {
            // Nothing answers the pending requests any more.
            self.give_up(self.srv.next, &mut inj);
            self.srv.fin = Some(self.srv.next);
        }
        if !modified_before && inj.is_empty() {
            if len > 0 {
                self.ahead_seen(
                    ctx,
                    out,
                    (t.ack, t.window),
                    (s.max(0) as u64, e.max(0) as u64),
                );
            }
            // Replies in it may have freed the pending budget a held
            // request waits on: it goes on now, not at the client's next
            // segment (which may never come: we acknowledged it already).
            // First, so that the frame carries the window as it is after.
            let mark = out.emits.len();
            self.release_held(ctx, now, out);
            self.offer_window(frame, meta);
            if self.acks_ahead() {
                // The client holds our ack of bytes the server has not
                // acknowledged yet: never show it an older one.
                build::patch_tcp(frame, meta, 8, &self.ack_to_client().to_be_bytes());
            }
            self.restamp_window(out, mark);
            return Verdict::Forward(to_client);
        }
        let mark = out.emits.len();
        let mut blocks = Vec::with_capacity(inj.len());
        for (pos, bytes) in inj {
            let view_start = self.srv.inserted.add(pos, bytes.len() as u64);
            blocks.push((pos, view_start, bytes));
        }
        // Every block strictly inside the segment, old or new, cuts it.
        let (lo, hi) = (s.max(0) as u64, e.max(0) as u64);
        let cuts = self.srv.inserted.cuts(lo, hi);
        // New blocks at the start of a data segment go before it.
        let mut before = false;
        for (p, vs, bytes) in &blocks {
            if *p == lo && len > 0 {
                let f = self.seg(false, sabs.seq(*vs), TCP_PSH, bytes);
                self.emit(ctx, out, false, f);
                before = true;
            }
        }
        // Denials injected at the server's FIN go before it.
        let fin_after = fin && blocks.iter().any(|(p, ..)| *p >= hi);
        let verdict = if cuts.is_empty() {
            let seq = sabs.seq(self.srv.inserted.to_view(lo));
            if fin_after {
                if let Some(b) = frame.get_mut(meta.l4_off + 13) {
                    *b &= !TCP_FIN;
                }
            }
            build::strip_sack(frame, meta);
            let ack = self.ack_to_client();
            build::set_window(frame, meta, self.client_window());
            build::set_seq_ack(frame, meta, seq, ack);
            if before {
                // The frame must follow what was emitted before it.
                out.emits.push(Emit {
                    side: to_client,
                    frame: frame.to_vec(),
                });
                Verdict::Consumed
            } else {
                Verdict::Forward(to_client)
            }
        } else {
            let mut cur = lo;
            for p in cuts {
                let (a, b) = ((cur - lo) as usize, (p - lo) as usize);
                let seq = sabs.seq(self.srv.inserted.to_view(cur));
                let f = self.seg(false, seq, TCP_PSH, &payload[a..b]);
                self.emit(ctx, out, false, f);
                for (bp, vs, bytes) in &blocks {
                    if *bp == p {
                        let f = self.seg(false, sabs.seq(*vs), TCP_PSH, bytes);
                        self.emit(ctx, out, false, f);
                    }
                }
                cur = p;
            }
            let a = (cur - lo) as usize;
            let seq = sabs.seq(self.srv.inserted.to_view(cur));
            let mut flags = t.flags & (TCP_PSH | TCP_FIN);
            if fin_after {
                flags &= !TCP_FIN;
            }
            let f = self.seg(false, seq, flags, &payload[a..]);
            self.emit(ctx, out, false, f);
            Verdict::Consumed
        };
        // Blocks at the segment's end follow it.
        for (p, vs, bytes) in &blocks {
            if *p >= hi && !(*p == lo && len > 0) {
                let f = self.seg(false, sabs.seq(*vs), TCP_PSH, bytes);
                self.emit(ctx, out, false, f);
            }
        }
        if fin_after {
            let f = self.seg(false, sabs.seq(self.srv.inserted.to_view(hi)), TCP_FIN, &[]);
            self.emit(ctx, out, false, f);
        }
        for (_, vs, bytes) in blocks {
            self.srv.inj.push_back(Injected {
                view_start: vs,
                bytes,
                sent_ns: now,
                rto_ns: ctx.cfg.inject_rto_ns,
            });
        }
        // Held requests go on once their wait is over (a denial injected,
        // or replies freed room in the pending budget).
        self.release_held(ctx, now, out);
        if matches!(verdict, Verdict::Forward(_)) {
            self.stamp_window(frame, meta);
        }
        self.restamp_window(out, mark);
        verdict
    }

    /// Every frame towards the client from one call carries the window as
    /// of the end of the call (a release at the end may open it). A client
    /// takes the window of whichever segment it processes last, and links
    /// reorder: an older, smaller window arriving after the one that
    /// opened it would close it again. Some stacks (smoltcp) do so even
    /// without the RFC 9293 check (SND.WL1/WL2) that would ignore it, and
    /// then, with data in flight and the opening ACK lost, retransmit
    /// nothing and probe nothing: the connection stalls.
    fn restamp_window(&self, out: &mut Output, mark: usize) {
        if out.emits.len() <= mark {
            return;
        }
        for e in out.emits[mark..].iter_mut() {
            if e.side != self.client_side {
                continue;
            }
            if let Ok(m) = crate::packet::view::parse(&e.frame) {
                self.stamp_window(&mut e.frame, &m);
            }
        }
    }

    /// Put the window as of now on a frame towards the client, seen from
    /// the frame's own ack (the right edge is what must not move back).
    fn stamp_window(&self, frame: &mut [u8], m: &FrameMeta) {
        let Some(cabs) = self.cli.abs else { return };
        // From the bytes: `m` may be the frame's meta from before its seq
        // and ack were rewritten.
        let Some(h) = frame.get(m.l4_off..m.l4_off + 16) else {
            return;
        };
        if m.tcp().is_none() || h[13] & TCP_RST != 0 {
            return;
        }
        let ack = u32::from_be_bytes([h[8], h[9], h[10], h[11]]);
        let acked = self.client_acked();
        let a = cabs.abs(ack, acked).clamp(0, acked as i64) as u64;
        let w = self.client_window_at(a).to_be_bytes();
        let at = m.l4_off + 14;
        if frame.get(at..at + 2).is_some_and(|f| f != w) {
            build::patch_tcp(frame, m, 14, &w);
        }
    }

    /// Follow reply framing over new server bytes starting at offset `start`.
    fn track(
        &mut self,
        ctx: &mut StreamCtx<'_>,
        bytes: &[u8],
        start: u64,
        inj: &mut Vec<(u64, Vec<u8>)>,
    ) {
        if matches!(self.srv.reply, ReplyState::Tunnel) {
            return;
        }
        let (mut bytes, mut start) = (bytes, start);
        if self.srv.buf.is_empty() {
            // Body bytes are counted, never kept: a bulk reply passes
            // without a copy per segment.
            if let ReplyState::Body { left, completes } = &mut self.srv.reply {
                let n = (*left).min(bytes.len() as u64) as usize;
                *left -= n as u64;
                if *left == 0 {
                    let c = *completes;
                    self.srv.reply = ReplyState::Head;
                    self.unit_done(c, start + n as u64, inj);
                }
                bytes = &bytes[n..];
                start += n as u64;
                if bytes.is_empty() {
                    return;
                }
            }
        }
        let buf_start = start.saturating_sub(self.srv.buf.len() as u64);
        self.srv.buf.extend_from_slice(bytes);
        let mut off = 0usize;
        loop {
            let avail = &self.srv.buf[off..];
            let at = buf_start + off as u64;
            match &mut self.srv.reply {
                ReplyState::Tunnel => {
                    off = self.srv.buf.len();
                    break;
                }
                ReplyState::Body { left, completes } => {
                    let n = (*left).min(avail.len() as u64) as usize;
                    if n == 0 && *left > 0 {
                        break;
                    }
                    *left -= n as u64;
                    off += n;
                    if *left == 0 {
                        let c = *completes;
                        self.srv.reply = ReplyState::Head;
                        self.unit_done(c, at + n as u64, inj);
                    }
                }
                ReplyState::Chunked { dec, completes } => {
                    if avail.is_empty() {
                        break;
                    }
                    match dec.feed(avail) {
                        Ok((n, done)) => {
                            off += n;
                            if done {
                                let c = *completes;
                                self.srv.reply = ReplyState::Head;
                                self.unit_done(c, at + n as u64, inj);
                            } else if n == 0 {
                                break;
                            }
                        }
                        Err(_) => {
                            self.give_up(at, inj);
                            off = self.srv.buf.len();
                            break;
                        }
                    }
                }
                ReplyState::Head => {
                    if avail.is_empty() {
                        break;
                    }
                    let req = match self.queue.front() {
                        Some(Pending::Awaiting(r, _)) => Some(r),
                        _ => None,
                    };
                    // As for request heads: re-parse only once bytes that
                    // may end the head arrived.
                    let known = self.srv.scanned;
                    let parsed = if known > 0
                        && (avail.len() <= known || !self.proto.head_may_end(avail, known))
                    {
                        Parse::NeedMore
                    } else {
                        ctx.counters.l7_head_parses += 1;
                        self.proto.parse_reply(avail, req)
                    };
                    self.srv.scanned = 0;
                    match parsed {
                        Parse::NeedMore => {
                            self.srv.scanned = avail.len();
                            if avail.len() > ctx.cfg.max_held_bytes {
                                self.give_up(at, inj);
                                off = self.srv.buf.len();
                            }
                            break;
                        }
                        Parse::Invalid(_) => {
                            self.give_up(at, inj);
                            off = self.srv.buf.len();
                            break;
                        }
                        Parse::Complete(h) => {
                            let hl = h.head_len.min(avail.len());
                            if hl == 0 {
                                self.give_up(at, inj);
                                off = self.srv.buf.len();
                                break;
                            }
                            off += hl;
                            let completes = h.last && !h.unsolicited;
                            match h.body {
                                ReplyBody::None | ReplyBody::Length(0) => {
                                    self.srv.reply = ReplyState::Head;
                                    self.unit_done(completes, at + hl as u64, inj);
                                }
                                ReplyBody::Length(n) => {
                                    self.srv.reply = ReplyState::Body { left: n, completes }
                                }
                                ReplyBody::Chunked => {
                                    self.srv.reply = ReplyState::Chunked {
                                        dec: ChunkedDecoder::new(),
                                        completes,
                                    }
                                }
                                ReplyBody::UntilClose => {
                                    self.give_up(at + hl as u64, inj);
                                    self.cli.req = ReqState::Pass;
                                    off = self.srv.buf.len();
                                    break;
                                }
                            }
                        }
                    }
                }
            }
        }
        self.srv.buf.drain(..off.min(self.srv.buf.len()));
        if self.srv.buf.is_empty() && self.srv.buf.capacity() > KEEP_CAPACITY {
            self.srv.buf = Vec::new();
        }
    }

    /// A reply unit ended at server offset `at`.
    fn unit_done(&mut self, completes: bool, at: u64, inj: &mut Vec<(u64, Vec<u8>)>) {
        if completes {
            if let Some(Pending::Awaiting(_, n)) = self.queue.front() {
                self.pending_bytes = self.pending_bytes.saturating_sub(*n);
                self.queue.pop_front();
            }
        }
        while let Some(Pending::Denial(_)) = self.queue.front() {
            if let Some(Pending::Denial(b)) = self.queue.pop_front() {
                inj.push((at, b));
            }
        }
    }

    /// Stop following replies: pending denials go out at `at`, unordered
    /// from now on.
    pub(super) fn give_up(&mut self, at: u64, inj: &mut Vec<(u64, Vec<u8>)>) {
        self.srv.reply = ReplyState::Tunnel;
        self.srv.buf = Vec::new();
        self.pending_bytes = 0;
        for p in self.queue.drain(..) {
            if let Pending::Denial(b) = p {
                inj.push((at, b));
            }
        }
    }

    /// Inject denials due now (nothing earlier awaits a reply) at the
    /// current end of the server stream.
    pub(super) fn flush_denials(&mut self, ctx: &mut StreamCtx<'_>, now: u64, out: &mut Output) {
        let mut inj = Vec::new();
        if matches!(self.srv.reply, ReplyState::Tunnel) || self.srv.fin.is_some() {
            let at = self.srv.next;
            self.give_up(at, &mut inj);
        } else {
            self.unit_done(false, self.srv.next, &mut inj);
        }
        let Some(sabs) = self.srv.abs else {
            if !inj.is_empty() {
                self.reset(ctx, out);
            }
            return;
        };
        for (pos, bytes) in inj {
            let vs = self.srv.inserted.add(pos, bytes.len() as u64);
            let f = self.seg(false, sabs.seq(vs), TCP_PSH, &bytes);
            self.emit(ctx, out, false, f);
            self.srv.inj.push_back(Injected {
                view_start: vs,
                bytes,
                sent_ns: now,
                rto_ns: ctx.cfg.inject_rto_ns,
            });
        }
    }
}
