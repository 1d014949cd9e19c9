//! Ranges of known bytes (docs/stream.md, "A kernel path for known bytes"):
//! the rest of an allowed body, whose bytes are never parsed or judged, is
//! published to the shell (`Output::ranges`), which may forward its
//! segments without the engine. At publication the stream counts the range
//! as arrived and passed (accounting ahead), so whatever path each frame
//! takes, the acks of those bytes and the next head after them are in
//! order for it. Those client bytes are *unkept*: released without a copy
//! in `cli.sent`, so any of them reaching the stream goes on from the frame
//! itself, and we never acknowledge past them on our own (`own_held`).
//!
//! A range only ever lets the shell do less than the stream would: one
//! written late, withdrawn early or never honoured is always safe. Each
//! range ends one byte short of its body, so that the body's end (and the
//! unit after it) is always seen here.

use super::conn::Stream;
use super::reply::ReplyState;
use super::request::ReqState;
use super::seqmap::Abs;
use super::StreamCtx;
use crate::l7::Protocol;
use crate::verdict::{Output, Range, RangeOp, Verdict};

impl<P: Protocol> Stream<P> {
    /// A client segment wholly inside the unkept range, on a stream nothing
    /// needs mapping in: it goes on as it came (what the shell would have
    /// done with it). A FIN inside the range ends the body short: passed on,
    /// the connection is over for us (we counted bytes it never sent).
    pub(super) fn pass_unkept(
        &mut self,
        s: i64,
        e: i64,
        fin: bool,
        modified: bool,
    ) -> Option<Verdict> {
        let (lo, hi) = self.cli.unkept?;
        if modified || s < lo as i64 || e > hi as i64 || (s == e && !fin) {
            return None;
        }
        let fwd = crate::verdict::other(self.client_side);
        if fin {
            if e == hi as i64 {
                // A FIN right at the range's end is a body cut short by one
                // byte: the general path handles it.
                return None;
            }
            self.closed = true;
        }
        Some(Verdict::Forward(fwd))
    }

    /// A client segment `[s, e)` went on by `pass_unkept`: if it carries
    /// the fields its range was published for, the shell did not take it,
    /// and the client's edge is held until the backlog passed (`Hold`);
    /// when that ends the hold, the client hears of its new edge at once.
    pub(super) fn unkept_seen(
        &mut self,
        ctx: &mut StreamCtx<'_>,
        out: &mut Output,
        sabs: Abs,
        (s, e): (i64, i64),
    ) {
        let Some(range) = self.cli.unkept else { return };
        if !ctx.cfg.kernel_path
            || self.cli.published != Some((sabs.seq(self.cli.ack_view), self.cli.win))
        {
            return;
        }
        let offered = self.cli.offered.get();
        let held = self.cli.hold.edge.is_some();
        let ended = self
            .cli
            .hold
            .saw(s.max(0) as u64, e.max(0) as u64, range, offered);
        if !held && self.cli.hold.edge.is_some() {
            ctx.counters.l7_range_holds += 1;
        }
        if !ended {
            return;
        }
        // Our pure ACK's seq is the server's next byte: not while a reply
        // range counts bytes the client may not have yet.
        if self.srv.ahead.is_none() && !self.closed {
            self.client_window();
            if self.cli.offered.get() > offered {
                ctx.counters.l7_window_updates += 1;
                self.ack_client(ctx, out);
            }
        }
    }

    /// A server segment `[s, e)` inside its reply range went on: as
    /// `unkept_seen` for the server's edge (the client's window, towards
    /// the server).
    pub(super) fn ahead_seen(
        &mut self,
        ctx: &mut StreamCtx<'_>,
        out: &mut Output,
        (ack, win): (u32, u16),
        (s, e): (u64, u64),
    ) {
        let Some(range) = self.srv.ahead else { return };
        if !ctx.cfg.kernel_path
            || s < range.0
            || e > range.1
            || s == e
            || self.srv.published.map(|p| (p.0, p.1)) != Some((ack, win))
        {
            return;
        }
        let offered = self.cli.win_edge.get();
        let held = self.srv.hold.edge.is_some();
        let ended = self.srv.hold.saw(s, e, range, offered);
        if !held && self.srv.hold.edge.is_some() {
            ctx.counters.l7_range_holds += 1;
        }
        if !ended {
            return;
        }
        // Our pure ACK's seq is the client's next byte: not while a client
        // range counts bytes the server may not have yet.
        if self.cli.unkept.is_none() && !self.closed {
            self.server_offer();
            if self.cli.win_edge.get() > offered {
                ctx.counters.l7_window_updates += 1;
                self.ack_server(ctx, out);
            }
        }
    }

    /// The window field the client's segments carry when the shell forwards
    /// them (a client range's `win_out`): the client's own, or with the cap
    /// `window_to_server`. Its edge counts as offered to the server (the
    /// cap's counts itself), so that a hold of the server's edge never goes
    /// below it.
    fn passed_window(&self) -> u16 {
        if self.kernel_path {
            return self.window_to_server(self.server_acked());
        }
        let shift = match (self.cli.wscale, self.srv.wscale) {
            (Some(c), Some(_)) => u32::from(c),
            _ => 0,
        };
        let edge = self
            .server_acked()
            .saturating_add(u64::from(self.cli.win) << shift);
        self.cli.win_edge.set(self.cli.win_edge.get().max(edge));
        self.cli.win
    }

    /// Publish, renew or withdraw this connection's ranges after a call.
    pub(super) fn ranges(&mut self, ctx: &mut StreamCtx<'_>, out: &mut Output) {
        if !ctx.cfg.kernel_path {
            return;
        }
        self.client_range(ctx, out);
        self.server_range(ctx, out);
    }

    fn push_range(&self, ctx: &StreamCtx<'_>, out: &mut Output, dir: u8, op: RangeOp) {
        out.ranges.push(Range {
            flow: ctx.tuple,
            dir,
            op,
        });
    }

    /// Client→server: the rest of an allowed request body.
    fn client_range(&mut self, ctx: &mut StreamCtx<'_>, out: &mut Output) {
        let dir = self.client_side;
        let (Some(cabs), Some(sabs)) = (self.cli.abs, self.srv.abs) else {
            return;
        };
        let plain = !self.closed && !self.modified() && self.draining.is_none();
        // The fields the client's segments carry while it only sends.
        let fields = (sabs.seq(self.cli.ack_view), self.cli.win);
        if self.cli.published.is_some() {
            // The client acknowledged new bytes or moved its window: the
            // same range, for its new fields.
            let live = self.cli.unkept.filter(|_| plain);
            let (a, b) = (fields.0, fields.1);
            // Only when `renew` has something to say.
            let out_win = (live.is_none() || self.cli.published != Some(fields))
                .then(|| self.passed_window());
            let op = renew(&mut self.cli.published, live, fields, |lo, hi| {
                bypass(cabs.seq(lo), cabs.seq(hi), a, b, out_win.unwrap_or(b))
            });
            if self.cli.published.is_none() {
                self.cli.hold = Hold::default();
            }
            if let Some(op) = op {
                self.push_range(ctx, out, dir, op);
            }
            return;
        }
        let ReqState::Body {
            allowed: true,
            left,
        } = self.cli.req
        else {
            return;
        };
        let eligible = plain
            && self.cli.unkept.is_none()
            && left > ctx.cfg.kernel_path_min.max(1)
            && self.cli.buf.is_empty()
            && self.cli.ooo.memory() == 0
            && self.cli.fin.is_none()
            && self.cli.ooo_fin.is_none()
            && !self.cli.fin_sent
            // Nothing kept waits for the server's window, nothing we
            // acknowledged ourselves waits for the server.
            && self.unsent_from() >= self.sent_end()
            && self.srv.ack >= self.owned_end();
        if !eligible {
            return;
        }
        let lo = self.cli.next;
        let hi = lo + left - 1;
        debug_assert_eq!(lo, self.c_out());
        self.cli.req = ReqState::Body {
            allowed: true,
            left: 1,
        };
        self.cli.next = hi;
        self.cli.unkept = Some((lo, hi));
        // Unkept bytes count as sent: what is kept after them goes on
        // within the server's window as before.
        self.cli.tx_edge = self.cli.tx_edge.max(hi);
        self.cli.published = Some(fields);
        self.cli.hold = Hold::default();
        let win_out = self.passed_window();
        ctx.counters.l7_ranges += 1;
        let (ack, win) = fields;
        self.push_range(
            ctx,
            out,
            dir,
            bypass(cabs.seq(lo), cabs.seq(hi), ack, win, win_out),
        );
    }

    /// Server→client: the rest of a reply body.
    fn server_range(&mut self, ctx: &mut StreamCtx<'_>, out: &mut Output) {
        let dir = crate::verdict::other(self.client_side);
        let (Some(cabs), Some(sabs)) = (self.cli.abs, self.srv.abs) else {
            return;
        };
        if let Some((_, hi)) = self.srv.ahead {
            if self.cli.ack_view >= hi || self.closed {
                self.srv.ahead = None;
            }
        }
        // Server frames are passed with only their window replaced while
        // nothing is mapped and we acknowledge nothing ahead of the server.
        let plain = !self.closed && !self.modified() && !self.acks_ahead();
        if self.srv.published.is_some() {
            let live = self.srv.ahead.filter(|_| plain);
            let fields = self.server_fields(cabs);
            let (a, w, wo) = fields;
            let op = renew(&mut self.srv.published, live, fields, |lo, hi| {
                bypass(sabs.seq(lo), sabs.seq(hi), a, w, wo)
            });
            if self.srv.published.is_none() {
                self.srv.hold = Hold::default();
            }
            if let Some(op) = op {
                self.push_range(ctx, out, dir, op);
            }
            return;
        }
        let ReplyState::Body { left, .. } = self.srv.reply else {
            return;
        };
        let eligible = plain
            && self.srv.ahead.is_none()
            && left > ctx.cfg.kernel_path_min.max(1)
            && self.srv.buf.is_empty()
            && self.srv.fin.is_none();
        if !eligible {
            return;
        }
        let lo = self.srv.next;
        let hi = lo + left - 1;
        if let ReplyState::Body { left, .. } = &mut self.srv.reply {
            *left = 1;
        }
        self.srv.next = hi;
        self.srv.ahead = Some((lo, hi));
        let fields = self.server_fields(cabs);
        self.srv.published = Some(fields);
        self.srv.hold = Hold::default();
        // Without the cap, client frames are stamped only while a reply
        // range is published (`stamp_server_window`): the edge they offered
        // before it. With the cap, the edge the next stamp gives.
        self.passed_window();
        ctx.counters.l7_ranges += 1;
        let (ack, win, win_out) = fields;
        self.push_range(
            ctx,
            out,
            dir,
            bypass(sabs.seq(lo), sabs.seq(hi), ack, win, win_out),
        );
    }

    /// The server's ack and window fields, and the window the client is
    /// offered in its place (`offer_window` on the same frame).
    fn server_fields(&self, cabs: super::seqmap::Abs) -> (u32, u16, u16) {
        (
            cabs.seq(self.srv.ack),
            self.srv.win,
            self.client_window_at(self.client_acked()),
        )
    }

    /// Ranges published now, per direction (client, server): the engine
    /// withdraws them when it forgets the flow.
    pub fn published(&self) -> [Option<u8>; 2] {
        let c = self.client_side;
        [
            self.cli.published.map(|_| c),
            self.srv.published.map(|_| crate::verdict::other(c)),
        ]
    }
}

/// Holds one range may have in a row that ended without a sign of the
/// kernel path taking any of its segments since: after that the sender's
/// edge moves as without holds until such a sign comes (a shell that does
/// not forward, or a queue whose fence stays shut, must not make every
/// window a stop and go).
const IDLE_HOLDS: u8 = 2;

/// Drain, then go live (docs/stream.md, "A kernel path for known bytes"):
/// while a published range's covered segments still reach the stream (the
/// shell did not take them: on the lab, its ordering fence is shut while
/// the worker has a backlog of the sender's segments), the right edge
/// offered to their sender stays where it is. The sender can then send
/// only what it was already allowed, the backlog drains, and what it sends
/// once the edge moves again can take the kernel path. The stream knows
/// nothing of fences: "covered segments reach me" is its own observation.
/// The hold ends once every byte up to the held edge came through here (a
/// window update goes to the sender then, so that none waits for the
/// receiver's delayed ACK), or the receiver acknowledged bytes within two
/// segments of it (the rest may have taken the kernel path), or with the
/// range. A hold never moves an edge back: it only stops moving it on.
#[derive(Default, Clone, Copy, Debug, PartialEq)]
pub(super) struct Hold {
    /// One past the highest covered byte that reached the stream (offsets
    /// of the range's direction; 0: none yet).
    pub seen: u64,
    /// The sender's right edge held (None: not held).
    pub edge: Option<u64>,
    /// The largest covered segment seen.
    pub seg: u64,
    /// Holds in a row that ended without a sign of the kernel path.
    pub idle: u8,
}

impl Hold {
    /// A covered segment `[s, e)` of the range `[lo, hi)`, with the fields
    /// the range was published for, reached the stream; `offered` is the
    /// sender's right edge now. True when this ends a hold: every byte up
    /// to the held edge came through here.
    pub(super) fn saw(&mut self, s: u64, e: u64, (lo, hi): (u64, u64), offered: u64) -> bool {
        self.seen = self.seen.max(lo);
        if s > self.seen {
            // The bytes before it went by the kernel path.
            self.idle = 0;
        }
        self.seen = self.seen.max(e);
        self.seg = self.seg.max(e.saturating_sub(s));
        match self.edge {
            None if self.idle < IDLE_HOLDS && self.seen < offered.min(hi) => {
                self.edge = Some(offered);
                false
            }
            Some(h) if self.seen >= h.min(hi) => {
                self.edge = None;
                self.idle = self.idle.saturating_add(1);
                true
            }
            _ => false,
        }
    }

    /// The receiver acknowledged up to `ack`: past what came through here,
    /// those bytes took the kernel path. An ack within two segments of the
    /// held edge ends the hold (the receiver may delay the ACK of the last
    /// one, and the sender must not wait for it).
    pub(super) fn acked(&mut self, ack: u64) {
        if self.seen > 0 && ack > self.seen {
            self.idle = 0;
        }
        if self
            .edge
            .is_some_and(|h| ack.saturating_add(2 * self.seg.max(1)) >= h)
        {
            self.edge = None;
        }
    }
}

/// A published range after a call: the same range again when the fields
/// its segments carry changed, withdrawn once it is over or the stream no
/// longer allows it (`live` None), else nothing to say.
fn renew<F: PartialEq + Copy>(
    published: &mut Option<F>,
    live: Option<(u64, u64)>,
    fields: F,
    op: impl FnOnce(u64, u64) -> RangeOp,
) -> Option<RangeOp> {
    match live {
        Some((lo, hi)) => (*published != Some(fields)).then(|| {
            *published = Some(fields);
            op(lo, hi)
        }),
        None => {
            *published = None;
            Some(RangeOp::Unbypass)
        }
    }
}

fn bypass(lo: u32, hi: u32, ack: u32, win: u16, win_out: u16) -> RangeOp {
    RangeOp::Bypass {
        lo,
        hi,
        ack,
        win,
        win_out,
    }
}
