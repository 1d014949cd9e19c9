//! One L7 connection, generic over the protocol: the client→server stream
//! is reassembled and cut into requests; each request is decided before its
//! bytes reach the server; denials are injected into the server→client
//! stream where the reply to that request belongs; from the first change on,
//! every segment of both directions is rewritten through the seq maps.
//!
//! Ordering rule that keeps injection simple: while a denial waits for the
//! replies of earlier requests, later requests are held (not sent to the
//! server), so the server's bytes never need splitting around a denial.

use std::collections::VecDeque;
use std::sync::Arc;

use super::reasm::{Insert, Reasm};
use super::seqmap::{seq_ge, seq_gt, SeqMap};
use super::StreamCtx;
use crate::engine::config::DenyAction;
use crate::engine::{other, DropReason, Emit, Output, Port, Verdict};
use crate::l7::http::ChunkedDecoder;
use crate::l7::{Body, Parse, Protocol, ReplyBody};
use crate::log::{Decision, Event, Subject};
use crate::packet::build::{set_seq_ack, strip_sack, tcp_segment, SegmentSpec};
use crate::packet::view::{TCP_ACK, TCP_FIN, TCP_PSH, TCP_RST, TCP_SYN};
use crate::packet::FrameMeta;
use crate::policy::L7Policy;

/// Server bytes buffered while a reply head is incomplete.
const MAX_REPLY_HEAD: usize = 64 * 1024;
/// Give up retransmitting an injected denial after this many tries.
const MAX_RETRIES: u32 = 12;

#[derive(Debug)]
enum Pending<R> {
    Allowed { req: R, expects: bool },
    Denied { reply: Option<Vec<u8>> },
}

enum BodyLeft {
    Length(u64),
    Chunked(ChunkedDecoder),
}

enum ReqState {
    Head,
    Body { allowed: bool, left: BodyLeft },
}

enum ReplyState {
    Head,
    Body {
        left: BodyLeft,
        last: bool,
        unsolicited: bool,
    },
    /// The connection became a tunnel (HTTP upgrade, CONNECT) or the replies
    /// can no longer be followed: no more reply tracking.
    Untracked,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Open,
    /// Requests are no longer parsed: bytes pass both ways through the maps.
    Tunnel,
    Closed,
}

struct Injected {
    /// Client-space sequence number of the first byte.
    seq: u32,
    bytes: Vec<u8>,
    sent_at: u64,
    tries: u32,
}

/// Headers of a frame of this flow, for building segments.
struct Template {
    hdr: Vec<u8>,
    meta: FrameMeta,
}

pub struct Stream<P: Protocol> {
    proto: P,
    policy: Arc<L7Policy>,
    client_port: Port,
    phase: Phase,

    c_rx: Option<Reasm>,
    /// Client bytes received in order but not yet released or removed.
    c_buf: Vec<u8>,
    c_buf_seq: u32,
    req: ReqState,
    c2s: SeqMap,
    c_fin: Option<u32>,
    c_fin_sent: bool,
    /// Latest ack (client space) and window the client sent.
    c_ack: u32,
    c_win: u16,
    c_mss: usize,

    s_rx: Option<Reasm>,
    s_buf: Vec<u8>,
    reply: ReplyState,
    s2c: SeqMap,
    /// Latest ack (server space) and window the server sent.
    s_ack: u32,
    s_win: u16,
    s_mss: usize,

    pending: VecDeque<Pending<P::Request>>,
    injected: VecDeque<Injected>,
    tmpl_c: Option<Template>,
    tmpl_s: Option<Template>,
}

fn template(frame: &[u8], meta: &FrameMeta) -> Template {
    let end = (meta.l4_off + 20).min(frame.len());
    Template {
        hdr: frame[..end].to_vec(),
        meta: *meta,
    }
}

fn drain_body(left: &mut BodyLeft, buf: &[u8]) -> Result<(usize, bool), &'static str> {
    match left {
        BodyLeft::Length(n) => {
            let take = (*n).min(buf.len() as u64);
            *n -= take;
            Ok((take as usize, *n == 0))
        }
        BodyLeft::Chunked(d) => d.feed(buf).map_err(|_| "invalid chunked body"),
    }
}

impl<P: Protocol> Stream<P> {
    pub fn new(proto: P, policy: Arc<L7Policy>, client_port: Port) -> Self {
        Stream {
            proto,
            policy,
            client_port,
            phase: Phase::Open,
            c_rx: None,
            c_buf: Vec::new(),
            c_buf_seq: 0,
            req: ReqState::Head,
            c2s: SeqMap::default(),
            c_fin: None,
            c_fin_sent: false,
            c_ack: 0,
            c_win: 0,
            c_mss: 536,
            s_rx: None,
            s_buf: Vec::new(),
            reply: ReplyState::Head,
            s2c: SeqMap::default(),
            s_ack: 0,
            s_win: 0,
            s_mss: 536,
            pending: VecDeque::new(),
            injected: VecDeque::new(),
            tmpl_c: None,
            tmpl_s: None,
        }
    }

    pub fn set_policy(&mut self, policy: Arc<L7Policy>) {
        self.policy = policy;
    }

    fn mapped(&self) -> bool {
        !(self.c2s.is_identity() && self.s2c.is_identity())
    }

    /// Bytes the stream holds now (for bounds and counters).
    pub fn held_bytes(&self) -> usize {
        self.c_buf.len()
            + self.s_buf.len()
            + self.c_rx.as_ref().map_or(0, |r| r.waiting_bytes())
            + self.s_rx.as_ref().map_or(0, |r| r.waiting_bytes())
    }

    pub fn on_segment(
        &mut self,
        ctx: &mut StreamCtx<'_>,
        in_port: Port,
        frame: &mut [u8],
        meta: &FrameMeta,
        now: u64,
        out: &mut Output,
    ) -> Verdict {
        if self.phase == Phase::Closed {
            return Verdict::Drop(DropReason::L7Denied);
        }
        if in_port == self.client_port {
            self.from_client(ctx, frame, meta, now, out)
        } else {
            self.from_server(ctx, frame, meta, now, out)
        }
    }

    // ---- building -------------------------------------------------------

    /// A segment towards the server (`to_server`) or the client.
    fn build(
        &self,
        to_server: bool,
        seq: u32,
        ack: u32,
        flags: u8,
        payload: &[u8],
    ) -> Option<Vec<u8>> {
        let (own, rev) = if to_server {
            (&self.tmpl_c, &self.tmpl_s)
        } else {
            (&self.tmpl_s, &self.tmpl_c)
        };
        let (t, reverse) = match (own, rev) {
            (Some(t), _) => (t, false),
            (None, Some(t)) => (t, true),
            (None, None) => return None,
        };
        let window = if to_server { self.c_win } else { self.s_win };
        let spec = SegmentSpec {
            reverse,
            seq,
            ack,
            flags,
            window,
        };
        Some(tcp_segment(&t.hdr, &t.meta, &spec, payload))
    }

    fn server_port(&self) -> Port {
        other(self.client_port)
    }

    /// Client-space ack to give the client: what the server acknowledged,
    /// with removed (denied) bytes counted as received.
    fn ack_for_client(&self) -> u32 {
        self.c2s.unmap(self.s_ack)
    }

    fn ack_for_server(&self) -> u32 {
        self.s2c.unmap(self.c_ack)
    }

    /// Send stream bytes starting at `seq` (the sender's space) on, cut to
    /// the sender's segment size: client bytes to the server or server
    /// bytes to the client.
    fn emit_data(
        &self,
        to_server: bool,
        seq: u32,
        bytes: &[u8],
        ctx: &mut StreamCtx<'_>,
        out: &mut Output,
    ) {
        let (mss, map, ack, port) = if to_server {
            (
                self.c_mss,
                &self.c2s,
                self.ack_for_server(),
                self.server_port(),
            )
        } else {
            (
                self.s_mss,
                &self.s2c,
                self.ack_for_client(),
                self.client_port,
            )
        };
        for (i, chunk) in bytes.chunks(mss.max(536)).enumerate() {
            let s = map.map(seq.wrapping_add((i * mss.max(536)) as u32));
            if let Some(frame) = self.build(to_server, s, ack, TCP_ACK | TCP_PSH, chunk) {
                out.emits.push(Emit { port, frame });
                ctx.counters.frames_emitted += 1;
            }
        }
    }

    fn pure_ack_to_client(&self, ctx: &mut StreamCtx<'_>, out: &mut Output) {
        let Some(s_rx) = &self.s_rx else { return };
        let seq = self.s2c.map(s_rx.next());
        if let Some(f) = self.build(false, seq, self.ack_for_client(), TCP_ACK, &[]) {
            out.emits.push(Emit {
                port: self.client_port,
                frame: f,
            });
            ctx.counters.frames_injected += 1;
        }
    }

    /// In-place rewrite of a frame we forward.
    fn rewrite(&self, frame: &mut [u8], meta: &FrameMeta, from_client: bool) {
        if !self.mapped() {
            return;
        }
        let Some(t) = meta.tcp() else { return };
        let (seq, ack) = if from_client {
            (self.c2s.map(t.seq), self.s2c.unmap(t.ack))
        } else {
            (self.s2c.map(t.seq), self.c2s.unmap(t.ack))
        };
        let ack = if t.flags & TCP_ACK != 0 { ack } else { t.ack };
        set_seq_ack(frame, meta, seq, ack);
        strip_sack(frame, meta);
    }

    // ---- decisions ------------------------------------------------------

    fn log(
        &self,
        ctx: &mut StreamCtx<'_>,
        out: &mut Output,
        now: u64,
        subject: Subject,
        allowed: bool,
        detail: String,
    ) {
        let (rule, reason) = if allowed {
            (Some(detail), None)
        } else {
            (None, Some(detail))
        };
        out.events.push(Event {
            time_ns: now,
            worker: ctx.worker,
            flow: ctx.tuple,
            src_identity: ctx.src_identity.to_string(),
            dst_identity: ctx.dst_identity.to_string(),
            subject,
            verdict: if allowed {
                Decision::Allow
            } else {
                Decision::Deny
            },
            rule,
            reason,
        });
    }

    /// RST to both sides; the flow is dead from here on.
    fn reset_both(&mut self, ctx: &mut StreamCtx<'_>, out: &mut Output) {
        let c_next = self.c_rx.as_ref().map_or(0, |r| r.next());
        let s_next = self.s_rx.as_ref().map_or(0, |r| r.next());
        if let Some(f) = self.build(
            true,
            self.c2s.map(self.c_buf_seq),
            s_next,
            TCP_RST | TCP_ACK,
            &[],
        ) {
            out.emits.push(Emit {
                port: self.server_port(),
                frame: f,
            });
            ctx.counters.frames_injected += 1;
        }
        if let Some(f) = self.build(false, self.s2c.map(s_next), c_next, TCP_RST | TCP_ACK, &[]) {
            out.emits.push(Emit {
                port: self.client_port,
                frame: f,
            });
            ctx.counters.frames_injected += 1;
        }
        self.phase = Phase::Closed;
        self.c_buf.clear();
        self.s_buf.clear();
        self.injected.clear();
        self.pending.clear();
    }

    fn remove(&mut self, n: usize) {
        let from = self.c_buf_seq;
        let to = from.wrapping_add(n as u32);
        self.c2s.remove(from, to);
        self.c_buf.drain(..n);
        self.c_buf_seq = to;
    }

    fn denial_waiting(&self) -> bool {
        self.pending
            .iter()
            .any(|p| matches!(p, Pending::Denied { .. }))
    }

    /// Cut the buffered client bytes into requests. Released bytes are
    /// appended to `release` as (client seq, bytes).
    fn drain_client(
        &mut self,
        ctx: &mut StreamCtx<'_>,
        now: u64,
        release: &mut Vec<(u32, Vec<u8>)>,
        out: &mut Output,
    ) {
        loop {
            if self.phase == Phase::Tunnel {
                if !self.c_buf.is_empty() {
                    let n = self.c_buf.len();
                    self.release(n, release);
                }
                return;
            }
            if self.phase != Phase::Open {
                return;
            }
            match &mut self.req {
                ReqState::Body { allowed, left } => {
                    if self.c_buf.is_empty() {
                        return;
                    }
                    let allowed = *allowed;
                    match drain_body(left, &self.c_buf) {
                        Ok((n, done)) => {
                            if allowed {
                                self.release(n, release);
                            } else {
                                self.remove(n);
                            }
                            if done {
                                self.req = ReqState::Head;
                            } else if n == 0 {
                                return;
                            }
                        }
                        Err(why) => {
                            self.log(
                                ctx,
                                out,
                                now,
                                Subject::Flow,
                                false,
                                format!("invalid request body: {why}"),
                            );
                            ctx.counters.l7_requests_denied += 1;
                            self.reset_both(ctx, out);
                            return;
                        }
                    }
                }
                ReqState::Head => {
                    if self.c_buf.is_empty() || self.denial_waiting() {
                        return;
                    }
                    match self.proto.parse_request(&self.c_buf) {
                        Parse::NeedMore => {
                            if self.c_buf.len() > ctx.cfg.max_held_bytes {
                                ctx.counters.drop(DropReason::L7HoldOverflow);
                                ctx.counters.l7_requests_denied += 1;
                                let why = format!(
                                    "request head larger than {} bytes",
                                    ctx.cfg.max_held_bytes
                                );
                                self.log(ctx, out, now, Subject::Flow, false, why);
                                self.reset_both(ctx, out);
                            }
                            return;
                        }
                        Parse::Invalid(why) => {
                            ctx.counters.l7_requests_denied += 1;
                            ctx.counters.drop(DropReason::L7Denied);
                            self.log(
                                ctx,
                                out,
                                now,
                                Subject::Flow,
                                false,
                                format!("invalid request: {why}"),
                            );
                            // Nothing says where the next request would start.
                            self.reset_both(ctx, out);
                            return;
                        }
                        Parse::Complete(h) => {
                            let v = {
                                let proto = &self.proto;
                                let req = &h.req;
                                self.policy.decide(|r| proto.rule_matches(req, r))
                            };
                            let subject = self.proto.subject(&h.req);
                            let body = match h.body {
                                Body::None => None,
                                Body::Length(0) => None,
                                Body::Length(n) => Some(BodyLeft::Length(n)),
                                Body::Chunked => Some(BodyLeft::Chunked(ChunkedDecoder::new())),
                            };
                            let head_len = h.head_len.min(self.c_buf.len());
                            if v.allowed {
                                ctx.counters.l7_requests_allowed += 1;
                                self.log(ctx, out, now, subject, true, v.detail);
                                let expects = self.proto.expects_reply(&h.req);
                                self.pending.push_back(Pending::Allowed {
                                    req: h.req,
                                    expects,
                                });
                                self.release(head_len, release);
                                self.req = match body {
                                    None => ReqState::Head,
                                    Some(left) => ReqState::Body {
                                        allowed: true,
                                        left,
                                    },
                                };
                            } else {
                                ctx.counters.l7_requests_denied += 1;
                                ctx.counters.drop(DropReason::L7Denied);
                                self.log(ctx, out, now, subject, false, v.detail);
                                if ctx.cfg.deny_action == DenyAction::Reset {
                                    self.reset_both(ctx, out);
                                    return;
                                }
                                let reply = self.proto.deny_reply(&h.req);
                                self.remove(head_len);
                                self.pending.push_back(Pending::Denied { reply });
                                self.req = match body {
                                    None => ReqState::Head,
                                    Some(left) => ReqState::Body {
                                        allowed: false,
                                        left,
                                    },
                                };
                                self.flush_denials(ctx, now, out);
                            }
                        }
                    }
                }
            }
        }
    }

    fn release(&mut self, n: usize, release: &mut Vec<(u32, Vec<u8>)>) {
        if n == 0 {
            return;
        }
        let seq = self.c_buf_seq;
        let bytes: Vec<u8> = self.c_buf.drain(..n).collect();
        self.c_buf_seq = seq.wrapping_add(n as u32);
        match release.last_mut() {
            Some((s, b)) if s.wrapping_add(b.len() as u32) == seq => b.extend_from_slice(&bytes),
            _ => release.push((seq, bytes)),
        }
    }

    /// Inject the denials at the head of the queue; the server stream
    /// stands at a reply boundary when this is called.
    fn flush_denials(&mut self, ctx: &mut StreamCtx<'_>, now: u64, out: &mut Output) {
        loop {
            match self.pending.front() {
                Some(Pending::Allowed { expects: false, .. }) => {
                    self.pending.pop_front();
                }
                Some(Pending::Denied { .. }) => {
                    let Some(Pending::Denied { reply }) = self.pending.pop_front() else {
                        break;
                    };
                    match reply {
                        Some(bytes) => self.inject(bytes, ctx, now, out),
                        // Nothing to say, but the removed bytes must be acknowledged.
                        None => self.pure_ack_to_client(ctx, out),
                    }
                }
                _ => break,
            }
        }
    }

    fn inject(&mut self, bytes: Vec<u8>, ctx: &mut StreamCtx<'_>, now: u64, out: &mut Output) {
        let Some(s_rx) = &self.s_rx else { return };
        let at = s_rx.next();
        let seq = self.s2c.map(at);
        if let Some(f) = self.build(false, seq, self.ack_for_client(), TCP_ACK | TCP_PSH, &bytes) {
            out.emits.push(Emit {
                port: self.client_port,
                frame: f,
            });
            ctx.counters.frames_injected += 1;
        }
        self.s2c.insert(at, bytes.len() as u32);
        self.injected.push_back(Injected {
            seq,
            bytes,
            sent_at: now,
            tries: 1,
        });
    }

    // ---- client → server ------------------------------------------------

    fn from_client(
        &mut self,
        ctx: &mut StreamCtx<'_>,
        frame: &mut [u8],
        meta: &FrameMeta,
        now: u64,
        out: &mut Output,
    ) -> Verdict {
        let Some(t) = meta.tcp().copied() else {
            return Verdict::Drop(DropReason::Malformed);
        };
        if t.flags & TCP_SYN != 0 {
            if self.c_rx.is_none() || self.tmpl_c.is_none() {
                self.c_rx = Some(Reasm::new(t.seq.wrapping_add(1)));
                self.c_buf_seq = t.seq.wrapping_add(1);
                self.tmpl_c = Some(template(frame, meta));
            }
            self.c_win = t.window;
            return Verdict::Forward(self.server_port());
        }
        if self.c_rx.is_none() {
            // Joined mid-stream: nothing to parse from; pass it mapped.
            self.rewrite(frame, meta, true);
            return Verdict::Forward(self.server_port());
        }
        if t.flags & TCP_ACK != 0 {
            self.c_ack = t.ack;
            while let Some(j) = self.injected.front() {
                if seq_ge(t.ack, j.seq.wrapping_add(j.bytes.len() as u32)) {
                    self.injected.pop_front();
                } else {
                    break;
                }
            }
        }
        self.c_win = t.window;
        if t.flags & TCP_RST != 0 {
            self.rewrite(frame, meta, true);
            self.phase = Phase::Closed;
            return Verdict::Forward(self.server_port());
        }
        let payload = meta.payload(frame);
        let fin = t.flags & TCP_FIN != 0;
        if payload.is_empty() && !fin {
            self.rewrite(frame, meta, true);
            return Verdict::Forward(self.server_port());
        }
        if !payload.is_empty() {
            self.c_mss = self.c_mss.max(payload.len());
            if self.tmpl_c.is_none() {
                self.tmpl_c = Some(template(frame, meta));
            }
        }
        let cap = ctx.cfg.max_held_bytes;
        let ins = match &mut self.c_rx {
            Some(r) if !payload.is_empty() => r.insert(t.seq, payload, cap),
            _ => Insert::Duplicate,
        };
        let end = t.seq.wrapping_add(payload.len() as u32);
        let mut release = Vec::new();
        match ins {
            Insert::New(bytes) => {
                self.c_buf.extend_from_slice(&bytes);
                self.drain_client(ctx, now, &mut release, out);
            }
            Insert::Stored => {
                return Verdict::Consumed;
            }
            Insert::Overflow => return Verdict::Drop(DropReason::L7OutOfWindow),
            Insert::Duplicate if !payload.is_empty() => {
                ctx.counters.drop(DropReason::L7Duplicate);
                // Bytes the server acknowledged (or that we removed) but the
                // client did not hear about: tell it again.
                if seq_ge(self.ack_for_client(), end) {
                    self.pure_ack_to_client(ctx, out);
                    return Verdict::Consumed;
                }
                // Released but unacknowledged: the server may have lost them.
                let released_end = self.c_buf_seq;
                // Held bytes past `released_end` are not the server's yet.
                let n = if seq_ge(released_end, end) {
                    payload.len()
                } else if seq_gt(released_end, t.seq) {
                    (released_end.wrapping_sub(t.seq) as usize).min(payload.len())
                } else {
                    0
                };
                let pieces = self.c2s.pieces(t.seq, n);
                if n == payload.len() && !fin && pieces == [(0, n)] {
                    self.rewrite(frame, meta, true);
                    return Verdict::Forward(self.server_port());
                }
                // Resend only what the server may see, each part in its place.
                for (o, l) in pieces {
                    let bytes = payload.get(o..o + l).unwrap_or_default();
                    self.emit_data(true, t.seq.wrapping_add(o as u32), bytes, ctx, out);
                }
                return Verdict::Consumed;
            }
            Insert::Duplicate => {}
        }
        if self.phase == Phase::Closed {
            return Verdict::Consumed;
        }
        // FIN: once every byte before it is in, it ends the request stream.
        if fin {
            if let Some(r) = &mut self.c_rx {
                if r.next() == end && self.c_fin.is_none() {
                    self.c_fin = Some(end);
                    r.skip(1);
                }
            }
        }
        if self.c_fin.is_some()
            && !self.c_fin_sent
            && matches!(self.req, ReqState::Head)
            && !self.denial_waiting()
            && !self.c_buf.is_empty()
        {
            // A request cut short by the close never reaches the server.
            let n = self.c_buf.len();
            ctx.counters.l7_requests_denied += 1;
            self.log(
                ctx,
                out,
                now,
                Subject::Flow,
                false,
                "incomplete request at close".into(),
            );
            self.remove(n);
        }
        // Fast path: this very segment is exactly what is released.
        let fin_ready = self.c_fin.is_some() && !self.c_fin_sent && self.c_buf.is_empty();
        if release.len() == 1
            && release[0].0 == t.seq
            && release[0].1.len() == payload.len()
            && (!fin || fin_ready)
        {
            if fin {
                self.c_fin_sent = true;
            }
            self.rewrite(frame, meta, true);
            return Verdict::Forward(self.server_port());
        }
        for (seq, bytes) in &release {
            self.emit_data(true, *seq, bytes, ctx, out);
        }
        if fin_ready {
            self.send_fin_to_server(ctx, out);
        }
        Verdict::Consumed
    }

    fn send_fin_to_server(&mut self, ctx: &mut StreamCtx<'_>, out: &mut Output) {
        let Some(fin_seq) = self.c_fin else { return };
        if let Some(f) = self.build(
            true,
            self.c2s.map(fin_seq),
            self.ack_for_server(),
            TCP_FIN | TCP_ACK,
            &[],
        ) {
            out.emits.push(Emit {
                port: self.server_port(),
                frame: f,
            });
            ctx.counters.frames_emitted += 1;
        }
        self.c_fin_sent = true;
    }

    // ---- server → client ------------------------------------------------

    fn from_server(
        &mut self,
        ctx: &mut StreamCtx<'_>,
        frame: &mut [u8],
        meta: &FrameMeta,
        now: u64,
        out: &mut Output,
    ) -> Verdict {
        let Some(t) = meta.tcp().copied() else {
            return Verdict::Drop(DropReason::Malformed);
        };
        if self.tmpl_s.is_none() {
            self.tmpl_s = Some(template(frame, meta));
        }
        self.s_win = t.window;
        if t.flags & TCP_ACK != 0 {
            self.s_ack = t.ack;
            self.c2s.forget_before(t.ack);
        }
        if t.flags & TCP_SYN != 0 {
            if self.s_rx.is_none() {
                self.s_rx = Some(Reasm::new(t.seq.wrapping_add(1)));
            }
            self.rewrite(frame, meta, false);
            return Verdict::Forward(self.client_port);
        }
        if t.flags & TCP_RST != 0 || self.s_rx.is_none() {
            if t.flags & TCP_RST != 0 {
                self.phase = Phase::Closed;
            }
            self.rewrite(frame, meta, false);
            return Verdict::Forward(self.client_port);
        }
        let payload = meta.payload(frame);
        let fin = t.flags & TCP_FIN != 0;
        if payload.is_empty() {
            if fin {
                if let Some(r) = &mut self.s_rx {
                    if r.next() == t.seq {
                        r.skip(1);
                    }
                }
            }
            self.rewrite(frame, meta, false);
            let mut release = Vec::new();
            // The server's ack may be what a held request was waiting for.
            self.after_server(ctx, now, &mut release, out);
            return Verdict::Forward(self.client_port);
        }
        self.s_mss = self.s_mss.max(payload.len());
        let cap = ctx.cfg.max_held_bytes;
        let ins = match &mut self.s_rx {
            Some(r) => r.insert(t.seq, payload, cap),
            None => Insert::Duplicate,
        };
        match ins {
            Insert::Duplicate => {
                let pieces = self.s2c.pieces(t.seq, payload.len());
                if pieces == [(0, payload.len())] {
                    self.rewrite(frame, meta, false);
                    return Verdict::Forward(self.client_port);
                }
                // A retransmission across an injected denial: each side of it
                // goes to its own place in the client's stream.
                for (o, l) in pieces {
                    let bytes = payload.get(o..o + l).unwrap_or_default();
                    self.emit_data(false, t.seq.wrapping_add(o as u32), bytes, ctx, out);
                }
                Verdict::Consumed
            }
            Insert::Stored => Verdict::Consumed,
            Insert::Overflow => Verdict::Drop(DropReason::L7OutOfWindow),
            Insert::New(bytes) => {
                let start = self
                    .s_rx
                    .as_ref()
                    .map_or(0, |r| r.next())
                    .wrapping_sub(bytes.len() as u32);
                let exact = start == t.seq && bytes.len() == payload.len();
                if fin {
                    if let Some(r) = &mut self.s_rx {
                        if r.next() == t.seq.wrapping_add(payload.len() as u32) {
                            r.skip(1);
                        }
                    }
                }
                self.track_replies(&bytes);
                // Denials go after these bytes: forward first, then inject.
                let mut tail = Output::default();
                self.flush_denials(ctx, now, &mut tail);
                let mut release = Vec::new();
                self.after_server(ctx, now, &mut release, &mut tail);
                // Injections sit after these bytes: their seq maps as before.
                let verdict = if exact {
                    self.rewrite(frame, meta, false);
                    Verdict::Forward(self.client_port)
                } else {
                    self.emit_data(false, start, &bytes, ctx, out);
                    if fin {
                        let fin_seq = self.s2c.map(start.wrapping_add(bytes.len() as u32));
                        if let Some(f) = self.build(
                            false,
                            fin_seq,
                            self.ack_for_client(),
                            TCP_FIN | TCP_ACK,
                            &[],
                        ) {
                            out.emits.push(Emit {
                                port: self.client_port,
                                frame: f,
                            });
                        }
                    }
                    Verdict::Consumed
                };
                out.emits.extend(tail.emits);
                out.events.extend(tail.events);
                verdict
            }
        }
    }

    /// After server bytes or acks: held client requests may go now.
    fn after_server(
        &mut self,
        ctx: &mut StreamCtx<'_>,
        now: u64,
        release: &mut Vec<(u32, Vec<u8>)>,
        out: &mut Output,
    ) {
        if !self.c_buf.is_empty() && !self.denial_waiting() {
            self.drain_client(ctx, now, release, out);
            for (seq, bytes) in release.iter() {
                self.emit_data(true, *seq, bytes, ctx, out);
            }
        }
        if self.c_fin.is_some()
            && !self.c_fin_sent
            && self.c_buf.is_empty()
            && !self.denial_waiting()
        {
            self.send_fin_to_server(ctx, out);
        }
    }

    /// Follow reply framing over new in-order server bytes, completing the
    /// oldest pending request at each final reply unit.
    fn track_replies(&mut self, bytes: &[u8]) {
        if matches!(self.reply, ReplyState::Untracked) {
            return;
        }
        self.s_buf.extend_from_slice(bytes);
        loop {
            match &mut self.reply {
                ReplyState::Untracked => {
                    self.s_buf.clear();
                    return;
                }
                ReplyState::Body {
                    left,
                    last,
                    unsolicited,
                } => {
                    if self.s_buf.is_empty() {
                        return;
                    }
                    let (last, unsolicited) = (*last, *unsolicited);
                    match drain_body(left, &self.s_buf) {
                        Ok((n, done)) => {
                            self.s_buf.drain(..n);
                            if done {
                                self.reply = ReplyState::Head;
                                self.unit_done(last, unsolicited);
                            } else {
                                return;
                            }
                        }
                        Err(_) => {
                            self.reply = ReplyState::Untracked;
                        }
                    }
                }
                ReplyState::Head => {
                    if self.s_buf.is_empty() {
                        return;
                    }
                    let req = self.pending.iter().find_map(|p| match p {
                        Pending::Allowed { req, expects: true } => Some(req),
                        _ => None,
                    });
                    match self.proto.parse_reply(&self.s_buf, req) {
                        Parse::NeedMore => {
                            if self.s_buf.len() > MAX_REPLY_HEAD {
                                self.reply = ReplyState::Untracked;
                            }
                            return;
                        }
                        Parse::Invalid(_) => {
                            // Replies can no longer be told apart: stop
                            // following them (denials then go out at once).
                            self.reply = ReplyState::Untracked;
                            self.pending.retain(|p| matches!(p, Pending::Denied { .. }));
                        }
                        Parse::Complete(h) => {
                            let n = h.head_len.min(self.s_buf.len());
                            self.s_buf.drain(..n);
                            match h.body {
                                ReplyBody::None | ReplyBody::Length(0) => {
                                    self.unit_done(h.last, h.unsolicited)
                                }
                                ReplyBody::Length(len) => {
                                    self.reply = ReplyState::Body {
                                        left: BodyLeft::Length(len),
                                        last: h.last,
                                        unsolicited: h.unsolicited,
                                    }
                                }
                                ReplyBody::Chunked => {
                                    self.reply = ReplyState::Body {
                                        left: BodyLeft::Chunked(ChunkedDecoder::new()),
                                        last: h.last,
                                        unsolicited: h.unsolicited,
                                    }
                                }
                                ReplyBody::UntilClose => {
                                    // Upgrade or CONNECT: a tunnel from here on.
                                    self.unit_done(h.last, h.unsolicited);
                                    self.reply = ReplyState::Untracked;
                                    self.phase = Phase::Tunnel;
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    fn unit_done(&mut self, last: bool, unsolicited: bool) {
        if !last || unsolicited {
            return;
        }
        // Quiet requests before it got no reply: they are done too.
        while let Some(Pending::Allowed { expects: false, .. }) = self.pending.front() {
            self.pending.pop_front();
        }
        if let Some(Pending::Allowed { .. }) = self.pending.front() {
            self.pending.pop_front();
        }
    }

    /// Retransmit injected bytes the client has not acknowledged.
    pub fn on_tick(&mut self, ctx: &mut StreamCtx<'_>, now: u64, out: &mut Output) {
        if self.phase == Phase::Closed || self.injected.is_empty() {
            return;
        }
        let rto = ctx.cfg.inject_rto_ns;
        let ack = self.ack_for_client();
        let mut give_up = false;
        let mut frames = Vec::new();
        for j in self.injected.iter_mut() {
            let wait = rto.saturating_mul(1 << j.tries.min(6).saturating_sub(1));
            if now.saturating_sub(j.sent_at) < wait {
                continue;
            }
            if j.tries >= MAX_RETRIES {
                give_up = true;
                break;
            }
            j.tries += 1;
            j.sent_at = now;
            frames.push((j.seq, j.bytes.clone()));
        }
        if give_up {
            self.reset_both(ctx, out);
            return;
        }
        for (seq, bytes) in frames {
            if let Some(f) = self.build(false, seq, ack, TCP_ACK | TCP_PSH, &bytes) {
                out.emits.push(Emit {
                    port: self.client_port,
                    frame: f,
                });
                ctx.counters.frames_injected += 1;
            }
        }
    }
}
