//! One L7-enforced TCP connection, generic over the protocol: state, the
//! client→server path (reassembly, hold, decide, release) and the emitters.
//! The server→client path (reply framing, injection) is in `reply.rs`.

use std::collections::VecDeque;
use std::sync::Arc;

use super::reassembly::Ooo;
use super::seqmap::{Abs, Inserted, Removed};
use super::StreamCtx;
use crate::config::DenyAction;
use crate::counters::DropReason;
use crate::l7::http::ChunkedDecoder;
use crate::l7::{Body, Parse, Protocol};
use crate::log::{Decision, Event, Subject};
use crate::packet::build::{self, SegmentSpec};
use crate::packet::view::{TCP_ACK, TCP_FIN, TCP_PSH, TCP_RST, TCP_SYN};
use crate::packet::FrameMeta;
use crate::policy::RuleSet;
use crate::verdict::{other, Emit, Output, Side, Verdict};

/// Requests forwarded and still awaiting a reply, at most; later ones wait.
const MAX_PENDING: usize = 256;
/// Segment size for rebuilt segments before the client showed a larger one.
const MIN_SEG: usize = 536;

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

/// A request in reply order.
pub(super) enum Pending<R> {
    /// Forwarded; its reply is on the way. With the head length it keeps.
    Awaiting(R, usize),
    /// Denied; its denial goes to the client once earlier replies are done.
    Denial(Vec<u8>),
}

/// Injected bytes the client has not acknowledged yet.
pub(super) struct Injected {
    pub view_start: u64,
    pub bytes: Vec<u8>,
    pub sent_ns: u64,
    pub rto_ns: u64,
}

/// Headers of a frame of the flow, to build segments from.
pub(super) struct Template {
    pub frame: Vec<u8>,
    pub meta: FrameMeta,
}

impl Template {
    pub(super) fn of(frame: &[u8], meta: &FrameMeta) -> Self {
        let end = meta.payload_off.min(frame.len());
        let mut meta = *meta;
        meta.payload_end = meta.payload_off;
        Template {
            frame: frame[..end].to_vec(),
            meta,
        }
    }
}

pub(crate) struct Stream<P: Protocol> {
    pub(super) proto: P,
    pub(super) policy: Arc<RuleSet<P::Rule>>,
    pub(super) client_side: Side,
    pub(super) closed: bool,
    // client → server
    pub(super) c_abs: Option<Abs>,
    /// Every client byte before this offset arrived.
    pub(super) c_next: u64,
    /// Undecided client bytes, ending at `c_next`.
    pub(super) c_buf: Vec<u8>,
    pub(super) ooo: Ooo,
    pub(super) ooo_fin: Option<u64>,
    pub(super) c_fin: Option<u64>,
    pub(super) c_fin_sent: bool,
    pub(super) req: ReqState,
    pub(super) removed: Removed,
    pub(super) c_max_seg: usize,
    pub(super) c_win: u16,
    /// Latest client ack of the server stream, client view.
    pub(super) c_ack_view: u64,
    pub(super) tpl_c: Option<Template>,
    // server → client
    pub(super) s_abs: Option<Abs>,
    pub(super) s_next: u64,
    pub(super) s_fin: Option<u64>,
    pub(super) s_win: u16,
    /// Latest server ack of the client stream, server offsets.
    pub(super) s_ack: u64,
    pub(super) r_buf: Vec<u8>,
    pub(super) reply: super::reply::ReplyState,
    pub(super) queue: VecDeque<Pending<P::Request>>,
    pub(super) inserted: Inserted,
    pub(super) inj: VecDeque<Injected>,
    pub(super) tpl_s: Option<Template>,
    /// Head bytes kept by requests awaiting replies, bounded by `limit`.
    pub(super) pending_bytes: usize,
    /// `max_held_bytes`, as of the latest call.
    pub(super) limit: usize,
    /// Released bytes the server has not acknowledged, from server offset
    /// `sent_base`: retransmissions are served from here, never from the
    /// client's retransmitted frame (whose bytes could differ from the ones
    /// judged).
    pub(super) sent: VecDeque<u8>,
    pub(super) sent_base: u64,
}

impl<P: Protocol> Stream<P> {
    pub fn new(proto: P, policy: Arc<RuleSet<P::Rule>>, client_side: Side) -> Self {
        Stream {
            proto,
            policy,
            client_side,
            closed: false,
            c_abs: None,
            c_next: 0,
            c_buf: Vec::new(),
            ooo: Ooo::default(),
            ooo_fin: None,
            c_fin: None,
            c_fin_sent: false,
            req: ReqState::Head,
            removed: Removed::default(),
            c_max_seg: MIN_SEG,
            c_win: 0,
            c_ack_view: 0,
            tpl_c: None,
            s_abs: None,
            s_next: 0,
            s_fin: None,
            s_win: 0,
            s_ack: 0,
            r_buf: Vec::new(),
            reply: super::reply::ReplyState::Head,
            queue: VecDeque::new(),
            inserted: Inserted::default(),
            inj: VecDeque::new(),
            tpl_s: None,
            pending_bytes: 0,
            limit: usize::MAX,
            sent: VecDeque::new(),
            sent_base: 0,
        }
    }

    pub fn held_bytes(&self) -> usize {
        self.c_buf.len()
            + self.sent.len()
            + self.ooo.bytes
            + self.r_buf.len()
            + self.inj.iter().map(|b| b.bytes.len()).sum::<usize>()
    }

    /// Once bytes were removed or inserted, both directions need mapping.
    pub(super) fn modified(&self) -> bool {
        !self.removed.is_empty() || !self.inserted.is_empty()
    }

    /// Client offset up to which every byte is decided.
    pub(super) fn decided(&self) -> u64 {
        self.c_next.saturating_sub(self.c_buf.len() as u64)
    }

    /// Server offset of the next byte the server expects from us.
    pub(super) fn c_out(&self) -> u64 {
        self.decided().saturating_sub(self.removed.total) + u64::from(self.c_fin_sent)
    }

    /// A denial waits for earlier replies: later requests are held.
    pub(super) fn waiting(&self) -> bool {
        // Unacknowledged denials are bounded too: a client that does not
        // read them gets no further requests through.
        self.queue.len() >= MAX_PENDING
            || self.pending_bytes >= self.limit
            || self.inj.len() >= MAX_PENDING
            || self.queue.iter().any(|p| matches!(p, Pending::Denial(_)))
    }

    /// Ack (client seq space) to put on segments towards the client.
    pub(super) fn ack_to_client(&self) -> u32 {
        let Some(c) = self.c_abs else { return 0 };
        let limit = self.decided() + u64::from(self.c_fin_sent);
        c.seq(self.removed.to_client_ack(self.s_ack).min(limit))
    }

    /// Ack (server seq space) to put on segments towards the server.
    pub(super) fn ack_to_server(&self) -> u32 {
        let Some(s) = self.s_abs else { return 0 };
        let limit = self.s_next + u64::from(self.s_fin.is_some());
        s.seq(self.inserted.to_server_ack(self.c_ack_view).min(limit))
    }

    /// Build a segment towards the server (client template) or the client.
    pub(super) fn seg(
        &self,
        to_server: bool,
        seq: u32,
        flags: u8,
        payload: &[u8],
    ) -> Option<Vec<u8>> {
        let (tpl, reverse, ack, window) = if to_server {
            match (&self.tpl_c, &self.tpl_s) {
                (Some(t), _) => (t, false, self.ack_to_server(), self.c_win),
                (None, Some(t)) => (t, true, self.ack_to_server(), self.c_win),
                _ => return None,
            }
        } else {
            match (&self.tpl_s, &self.tpl_c) {
                (Some(t), _) => (t, false, self.ack_to_client(), self.s_win),
                (None, Some(t)) => (t, true, self.ack_to_client(), self.s_win),
                _ => return None,
            }
        };
        let spec = SegmentSpec {
            reverse,
            seq,
            ack,
            flags: flags | TCP_ACK,
            window,
        };
        Some(build::tcp_segment(&tpl.frame, &tpl.meta, &spec, payload))
    }

    pub(super) fn emit(
        &self,
        ctx: &mut StreamCtx<'_>,
        out: &mut Output,
        to_server: bool,
        frame: Option<Vec<u8>>,
    ) {
        if let Some(frame) = frame {
            let side = if to_server {
                other(self.client_side)
            } else {
                self.client_side
            };
            ctx.counters.frames_injected += 1;
            out.emits.push(Emit { side, frame });
        }
    }

    /// Pure ACK to the client (e.g. for denied bytes nothing else acknowledges).
    pub(super) fn ack_client(&self, ctx: &mut StreamCtx<'_>, out: &mut Output) {
        let Some(s) = self.s_abs else { return };
        let seq = s.seq(self.inserted.to_view(self.s_next) + u64::from(self.s_fin.is_some()));
        let f = self.seg(false, seq, 0, &[]);
        self.emit(ctx, out, false, f);
    }

    pub(super) fn ack_server(&self, ctx: &mut StreamCtx<'_>, out: &mut Output) {
        let Some(c) = self.c_abs else { return };
        let f = self.seg(true, c.seq(self.c_out()), 0, &[]);
        self.emit(ctx, out, true, f);
    }

    /// RST to both sides, each in its own sequence space; the flow is dead.
    pub(super) fn reset(&mut self, ctx: &mut StreamCtx<'_>, out: &mut Output) {
        if self.closed {
            return;
        }
        if let Some(c) = self.c_abs {
            let f = self.seg(true, c.seq(self.c_out()), TCP_RST, &[]);
            self.emit(ctx, out, true, f);
        }
        if let Some(s) = self.s_abs {
            let seq = s.seq(self.inserted.to_view(self.s_next) + u64::from(self.s_fin.is_some()));
            let f = self.seg(false, seq, TCP_RST, &[]);
            self.emit(ctx, out, false, f);
        }
        self.closed = true;
        self.c_buf = Vec::new();
        self.r_buf = Vec::new();
        self.ooo.clear();
        self.queue.clear();
        self.pending_bytes = 0;
        self.sent = VecDeque::new();
        self.inj.clear();
    }

    pub(super) fn log(
        &self,
        ctx: &mut StreamCtx<'_>,
        out: &mut Output,
        now: u64,
        subject: Subject,
        allowed: bool,
        detail: String,
    ) {
        if allowed {
            ctx.counters.l7_requests_allowed += 1;
        } else {
            ctx.counters.l7_requests_denied += 1;
            ctx.counters.drop(DropReason::L7Denied);
        }
        out.events.push(Event {
            time_ns: now,
            worker: ctx.worker,
            flow: ctx.tuple,
            subject,
            verdict: if allowed {
                Decision::Allow
            } else {
                Decision::Deny
            },
            rule: allowed.then(|| detail.clone()),
            reason: (!allowed).then_some(detail),
        });
    }

    pub fn on_segment(
        &mut self,
        ctx: &mut StreamCtx<'_>,
        in_side: Side,
        frame: &mut [u8],
        meta: &FrameMeta,
        now: u64,
        out: &mut Output,
    ) -> Verdict {
        let Some(t) = meta.tcp().copied() else {
            return Verdict::Drop(DropReason::Unsupported);
        };
        if self.closed {
            return Verdict::Drop(DropReason::L7Denied);
        }
        self.limit = ctx.cfg.max_held_bytes;
        if in_side == self.client_side {
            self.client_segment(ctx, frame, meta, &t, now, out)
        } else {
            self.server_segment(ctx, frame, meta, &t, now, out)
        }
    }

    fn client_segment(
        &mut self,
        ctx: &mut StreamCtx<'_>,
        frame: &mut [u8],
        meta: &FrameMeta,
        t: &crate::packet::TcpMeta,
        now: u64,
        out: &mut Output,
    ) -> Verdict {
        let fwd = other(self.client_side);
        if t.flags & TCP_SYN != 0 {
            if self.c_abs.is_none() || self.c_next == 0 {
                self.c_abs = Some(Abs {
                    base: t.seq.wrapping_add(1),
                });
                self.tpl_c = Some(Template::of(frame, meta));
                self.c_win = t.window;
            }
            return Verdict::Forward(fwd);
        }
        let Some(cabs) = self.c_abs else {
            return Verdict::Drop(DropReason::L7OutOfWindow);
        };
        if self.tpl_c.is_none() {
            self.tpl_c = Some(Template::of(frame, meta));
        }
        self.c_win = t.window;
        if t.flags & TCP_ACK != 0 && self.s_abs.is_none() && !self.modified() {
            // The SYN-ACK went by before this state existed (the engine
            // restarts a flow on a late duplicate SYN): the client's ack is
            // the server's next byte.
            self.s_abs = Some(Abs { base: t.ack });
        }
        if t.flags & TCP_ACK != 0 {
            if let Some(sabs) = self.s_abs {
                let view_next =
                    self.inserted.to_view(self.s_next) + u64::from(self.s_fin.is_some());
                let a = sabs.abs(t.ack, view_next);
                if a > self.c_ack_view as i64 && a <= view_next as i64 {
                    self.c_ack_view = a as u64;
                }
                let acked = self.c_ack_view;
                self.inj
                    .retain(|b| b.view_start + b.bytes.len() as u64 > acked);
                self.inserted.prune(acked);
            }
        }
        let payload = meta.payload(frame);
        let len = payload.len() as u64;
        let modified_before = self.modified();
        let s = cabs.abs(t.seq, self.c_next);
        if t.flags & TCP_RST != 0 {
            let seq = cabs.seq(self.removed.to_server(s.max(0) as u64));
            let ack = self.ack_to_server();
            if modified_before {
                build::set_seq_ack(frame, meta, seq, ack);
            }
            self.closed = true;
            return Verdict::Forward(fwd);
        }
        self.c_max_seg = self.c_max_seg.max(payload.len());
        let e = s + len as i64;
        let fin = t.flags & TCP_FIN != 0;
        let next_before = self.c_next;
        let decided_before = self.decided();
        let out_before = self.c_out();

        // Bytes already decided: resend the kept ones (the server may have
        // lost what we sent), mapped into the server's offsets.
        let mut old: Vec<(u64, usize, usize)> = Vec::new();
        let old_end = e.min(decided_before as i64);
        if len > 0 && s < old_end && old_end > 0 {
            for (a, b) in self.removed.kept(s.max(0) as u64, old_end as u64) {
                let off = (a as i64 - s) as usize;
                old.push((self.removed.to_server(a), off, (b - a) as usize));
            }
        }

        // New bytes.
        let mut overflow = false;
        if len > 0 && e > self.c_next as i64 {
            if s <= self.c_next as i64 {
                let skip = (self.c_next as i64 - s) as usize;
                let fresh = &payload[skip..];
                if (self.waiting() && self.c_buf.len() + fresh.len() > ctx.cfg.max_held_bytes)
                    || self.sent.len() >= self.sent_limit()
                {
                    overflow = true;
                } else {
                    self.c_buf.extend_from_slice(fresh);
                    self.c_next = e as u64;
                    self.c_next = self.ooo.take(self.c_next, &mut self.c_buf);
                }
            } else if self.ooo.bytes + self.c_buf.len() + payload.len() <= ctx.cfg.max_held_bytes {
                self.ooo.insert(s as u64, payload);
            } else {
                overflow = true;
            }
        }
        if fin && !overflow {
            if e <= self.c_next as i64 && e >= decided_before as i64 {
                self.c_fin.get_or_insert(e as u64);
            } else if e > self.c_next as i64 {
                self.ooo_fin = Some(e as u64);
            }
        }
        if let Some(f) = self.ooo_fin {
            if f <= self.c_next {
                self.c_fin.get_or_insert(self.c_next);
                self.ooo_fin = None;
            }
        }
        if overflow {
            ctx.counters.drop(DropReason::L7HoldOverflow);
        } else if len > 0 && e <= next_before as i64 && old.is_empty() {
            ctx.counters.drop(DropReason::L7Duplicate);
        }

        let mut rel = Vec::new();
        let mark = out.emits.len();
        let denied = self.decide_queued(ctx, now, out, &mut rel);
        let fin_now = self.fin_ready(ctx, now, out);

        if self.closed {
            // Reset while deciding: what was allowed before goes out ahead
            // of the RSTs.
            let resets = out.emits.split_off(mark.min(out.emits.len()));
            self.send_released(ctx, out, cabs, out_before, &rel, false);
            out.emits.extend(resets);
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
            && fin == fin_now;
        if fast {
            return Verdict::Forward(fwd);
        }
        let pure = len == 0 && !fin && t.flags & TCP_RST == 0;
        if pure && self.removed.ends_at(self.decided()) {
            // Only we can acknowledge removed bytes at the end of the
            // stream; our earlier ACK may have been lost.
            self.ack_client(ctx, out);
        }
        if pure {
            // A bare ACK / window update: rewrite in place.
            let seq = cabs.seq(self.c_out());
            let ack = self.ack_to_server();
            if self.modified() {
                build::strip_sack(frame, meta);
            }
            build::set_seq_ack(frame, meta, seq, ack);
            return Verdict::Forward(fwd);
        }
        let mut sent = false;
        for (at, _, n) in old {
            // Only what we released, as we released it.
            let lo = at.max(self.sent_base);
            let hi = (at + n as u64).min(self.sent_base + self.sent.len() as u64);
            if lo >= hi {
                continue;
            }
            let bytes: Vec<u8> = self
                .sent
                .range((lo - self.sent_base) as usize..(hi - self.sent_base) as usize)
                .copied()
                .collect();
            let f = self.seg(true, cabs.seq(lo), TCP_PSH, &bytes);
            self.emit(ctx, out, true, f);
            sent = true;
        }
        sent |= self.send_released(ctx, out, cabs, out_before, &rel, fin_now);
        if fin_now && rel.is_empty() {
            let f = self.seg(true, cabs.seq(self.c_out() - 1), TCP_FIN, &[]);
            self.emit(ctx, out, true, f);
            sent = true;
        } else if fin && self.c_fin_sent && !fin_now && e <= decided_before as i64 {
            // Retransmitted FIN.
            let f = self.seg(true, cabs.seq(self.c_out() - 1), TCP_FIN, &[]);
            self.emit(ctx, out, true, f);
            sent = true;
        }
        if !sent {
            // The ack and window it carried still matter to the server.
            self.ack_server(ctx, out);
        }
        if denied || (len > 0 && e <= decided_before as i64) {
            self.ack_client(ctx, out);
        }
        Verdict::Consumed
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
            let avail = &self.c_buf[off..];
            match &mut self.req {
                ReqState::Pass => {
                    rel.extend_from_slice(avail);
                    off = self.c_buf.len();
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
                        self.removed.add(base + off as u64, n as u64);
                    }
                    *left -= n as u64;
                    if *left == 0 {
                        self.req = ReqState::Head;
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
                                self.removed.add(base + off as u64, n as u64);
                            }
                            off += n;
                            if done {
                                self.req = ReqState::Head;
                            } else if n == 0 {
                                break;
                            }
                        }
                        Err(_) => {
                            self.c_buf.drain(..off);
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
                    match self.proto.parse_request(avail) {
                        Parse::NeedMore => {
                            if avail.len() > ctx.cfg.max_held_bytes {
                                self.c_buf.drain(..off);
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
                            self.c_buf.drain(..off);
                            let subj = self.proto.unparsed_subject();
                            self.log(
                                ctx,
                                out,
                                now,
                                subj,
                                false,
                                format!("invalid request: {why}"),
                            );
                            self.reset(ctx, out);
                            return true;
                        }
                        Parse::Complete(h) => {
                            let head_len = h.head_len.min(avail.len());
                            let proto = &self.proto;
                            let v = self.policy.decide(|rule| proto.rule_matches(&h.req, rule));
                            let subject = self.proto.subject(&h.req);
                            self.log(ctx, out, now, subject, v.allowed, v.detail);
                            if v.allowed {
                                rel.extend_from_slice(&avail[..head_len]);
                                if self.proto.expects_reply(&h.req) {
                                    self.pending_bytes += head_len;
                                    self.queue.push_back(Pending::Awaiting(h.req, head_len));
                                }
                            } else {
                                denied = true;
                                self.removed.add(base + off as u64, head_len as u64);
                                if ctx.cfg.deny_action == DenyAction::Reset {
                                    self.c_buf.drain(..off + head_len);
                                    self.reset(ctx, out);
                                    return true;
                                }
                                if let Some(r) = self.proto.deny_reply(&h.req) {
                                    self.queue.push_back(Pending::Denial(r));
                                }
                            }
                            off += head_len;
                            self.req = match h.body {
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
                                self.c_buf.drain(..off);
                                off = 0;
                                self.flush_denials(ctx, now, out);
                            }
                        }
                    }
                }
            }
        }
        if !self.closed {
            self.c_buf.drain(..off.min(self.c_buf.len()));
        }
        self.sent.extend(&rel[rel_start..]);
        denied
    }

    /// Bytes in flight to the server, at most: beyond it new client data is
    /// dropped (and retransmitted by the client later).
    fn sent_limit(&self) -> usize {
        self.limit.saturating_mul(4)
    }

    /// The server acknowledged up to server offset `acked`.
    pub(super) fn trim_sent(&mut self, acked: u64) {
        let n = acked
            .saturating_sub(self.sent_base)
            .min(self.sent.len() as u64);
        self.sent.drain(..n as usize);
        self.sent_base += n;
    }

    /// The client's FIN goes out once every byte before it is decided; an
    /// incomplete request head at the FIN is denied.
    fn fin_ready(&mut self, ctx: &mut StreamCtx<'_>, now: u64, out: &mut Output) -> bool {
        let Some(f) = self.c_fin else { return false };
        if self.c_fin_sent || self.closed || f != self.c_next {
            return false;
        }
        if !self.c_buf.is_empty() {
            if self.waiting() || !matches!(self.req, ReqState::Head) {
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
            self.removed.add(at, self.c_buf.len() as u64);
            self.c_buf.clear();
        }
        self.c_fin_sent = true;
        true
    }

    /// Held requests may go on after a denial was injected.
    pub(super) fn release_held(&mut self, ctx: &mut StreamCtx<'_>, now: u64, out: &mut Output) {
        let Some(cabs) = self.c_abs else { return };
        if self.c_buf.is_empty() || self.closed {
            return;
        }
        let out_before = self.c_out();
        let mut rel = Vec::new();
        let denied = self.decide_queued(ctx, now, out, &mut rel);
        let fin_now = self.fin_ready(ctx, now, out);
        if self.closed {
            return;
        }
        self.send_released(ctx, out, cabs, out_before, &rel, fin_now);
        if fin_now && rel.is_empty() {
            let f = self.seg(true, cabs.seq(self.c_out() - 1), TCP_FIN, &[]);
            self.emit(ctx, out, true, f);
        }
        if denied {
            self.ack_client(ctx, out);
        }
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
        let chunk = self.c_max_seg.max(MIN_SEG);
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

    /// Retransmit injected bytes the client has not acknowledged.
    pub fn on_tick(&mut self, ctx: &mut StreamCtx<'_>, now: u64, out: &mut Output) {
        let Some(sabs) = self.s_abs else { return };
        if self.closed {
            return;
        }
        let mut frames = Vec::new();
        for b in self.inj.iter_mut() {
            if now.saturating_sub(b.sent_ns) >= b.rto_ns {
                b.sent_ns = now;
                b.rto_ns = b
                    .rto_ns
                    .saturating_mul(2)
                    .min(ctx.cfg.inject_rto_ns.saturating_mul(64));
                frames.push((b.view_start, b.bytes.clone()));
            }
        }
        for (at, bytes) in frames {
            let f = self.seg(false, sabs.seq(at), TCP_PSH, &bytes);
            self.emit(ctx, out, false, f);
        }
    }
}
