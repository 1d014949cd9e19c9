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
            let op = renew(&mut self.cli.published, live, fields, |lo, hi| {
                bypass(cabs.seq(lo), cabs.seq(hi), a, b, b)
            });
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
        ctx.counters.l7_ranges += 1;
        // Towards the server the client's window goes as it is.
        let (ack, win) = fields;
        self.push_range(
            ctx,
            out,
            dir,
            bypass(cabs.seq(lo), cabs.seq(hi), ack, win, win),
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
