//! One L7-enforced TCP connection, generic over the protocol: the state of
//! each direction (`FromClient`, `FromServer`) with its invariants, and the
//! emitters both paths share. The client→server path is in `request.rs`, the
//! server→client path in `reply.rs`.

use std::cell::Cell;
use std::collections::VecDeque;
use std::sync::Arc;

use super::bypass::Hold;
use super::reassembly::Ooo;
use super::request::ReqState;
use super::seqmap::{Abs, Inserted, Removed};
use super::StreamCtx;
use crate::counters::DropReason;
use crate::l7::Protocol;
use crate::log::{Decision, Event, Subject};
use crate::packet::build::{self, SegmentSpec};
use crate::packet::view::{TCP_ACK, TCP_PSH, TCP_RST};
use crate::packet::FrameMeta;
use crate::policy::RuleSet;
use crate::verdict::{other, Emit, Output, Side, Verdict};

/// Requests forwarded and still awaiting a reply, at most; later ones wait.
const MAX_PENDING: usize = 256;
/// Segment size for rebuilt segments before the client showed a larger one.
pub(super) const MIN_SEG: usize = 536;

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

/// What the enforcer knows of the client's segments: the client→server byte
/// stream (judged here) and what the client says about the other direction.
///
/// Invariants, in client offsets (0 = the byte after the client's SYN):
/// `decided() = next - buf.len()`; every byte below `decided()` is either
/// released (it went to the server, server offset `removed.to_server(c)`) or
/// removed (counted in `removed`); `buf` holds exactly `[decided(), next)`;
/// `ooo` holds only bytes at or after `next`. In server offsets:
/// `[sent_base, sent_base + sent.len())` is released and not yet
/// acknowledged by the server, and `sent_base + sent.len() == c_out()` (minus
/// the FIN once sent).
pub(super) struct FromClient {
    /// Sequence number of client offset 0, from the client's SYN (or, for a
    /// stream joined late, its first segment). Never re-based once set.
    pub(super) abs: Option<Abs>,
    /// Every client byte before this offset arrived.
    pub(super) next: u64,
    /// Undecided client bytes, ending at `next`.
    pub(super) buf: Vec<u8>,
    /// Client bytes beyond a hole, waiting for it to fill.
    pub(super) ooo: Ooo,
    /// A FIN seen beyond a hole, at this offset.
    pub(super) ooo_fin: Option<u64>,
    /// The client's FIN, at this offset (all bytes before it arrived).
    pub(super) fin: Option<u64>,
    /// The FIN went to the server (every byte before it is decided).
    pub(super) fin_sent: bool,
    /// Where the client stream is between requests.
    pub(super) req: ReqState,
    /// `buf` held an incomplete head of this many bytes at the last parse
    /// (0: none); the head is re-parsed only once bytes that may end it
    /// arrived (`Protocol::head_may_end`).
    pub(super) scanned: usize,
    /// When the first byte of the undecided head in `buf` arrived (None:
    /// no head held): the head must be complete by
    /// `l7_head_timeout_ns` after it (`Stream::head_timed_out`).
    pub(super) head_since: Option<u64>,
    /// Client bytes the server never saw.
    pub(super) removed: Removed,
    /// Largest client payload seen: the size of rebuilt segments.
    pub(super) max_seg: usize,
    /// The client's latest window, put on segments towards the server.
    pub(super) win: u16,
    /// Window-scale shift the client's SYN announced (None: no option).
    pub(super) wscale: Option<u8>,
    /// Latest client ack of the server stream, client view; only grows, and
    /// never beyond what the client was sent.
    pub(super) ack_view: u64,
    /// Headers of a client frame, to build segments towards the server from.
    pub(super) tpl: Option<Template>,
    /// Released bytes the server has not acknowledged, from server offset
    /// `sent_base`: retransmissions are served from here, never from the
    /// client's retransmitted frame (whose bytes could differ from the ones
    /// judged).
    pub(super) sent: VecDeque<u8>,
    pub(super) sent_base: u64,
    /// Scratch for the bytes one call releases (empty between calls).
    pub(super) rel: Vec<u8>,
    /// Client offset up to which the enforcer acknowledged client bytes on
    /// its own (held head bytes, which the server cannot acknowledge before
    /// it has them); only grows, never beyond `next`. Bytes below it that
    /// went to the server are ours to deliver (`request.rs`, `push_kept`).
    pub(super) own_ack: u64,
    /// Server offset: released bytes below it went to the server while
    /// inside its window (so only a loss keeps them from it).
    pub(super) tx_edge: u64,
    /// Retransmission timer for bytes we acknowledged and the server did not
    /// yet: (deadline, current timeout).
    pub(super) rtx: Option<(u64, u64)>,
    /// The right edge (client offset) of the windows offered to the client so
    /// far, the SYN-ACK's included. An offer never moves it back: see
    /// `Stream::client_window`.
    pub(super) offered: Cell<u64>,
    /// Server offsets `[lo, hi)` taken as released without a copy: bytes of
    /// an allowed body a shell may forward itself (`bypass.rs`). `cli.sent`
    /// holds the kept bytes below `lo` and from `hi` on (`sent_idx`). Gone
    /// once the server acknowledged `hi`.
    pub(super) unkept: Option<(u64, u64)>,
    /// The ack and window fields of the published range (None: none).
    pub(super) published: Option<(u32, u16)>,
    /// The client's right edge held while its range's segments reach us
    /// (`bypass.rs`, `Hold`): `client_window_at` offers no more.
    pub(super) hold: Hold,
    /// The right edge (server offsets) of the windows sent to the server so
    /// far, at least: a hold of the server's edge never goes below it.
    pub(super) win_edge: Cell<u64>,
}

/// What the enforcer knows of the server's segments: the server→client byte
/// stream (followed for reply framing, denials inserted into it) and what the
/// server says about the other direction.
///
/// Invariants, in server offsets: every server byte below `next` was seen
/// and passed on (at client-view offset `inserted.to_view(s)`); `buf` holds
/// the unfinished reply head ending at `next`; `inj` holds the injected
/// blocks the client has not acknowledged, in view order.
pub(super) struct FromServer {
    /// Sequence number of server offset 0. Never re-based once set.
    pub(super) abs: Option<Abs>,
    pub(super) next: u64,
    /// The server's FIN, at this offset.
    pub(super) fin: Option<u64>,
    /// The server's latest window as the server sent it; the client is
    /// offered `Stream::client_window` instead.
    pub(super) win: u16,
    /// Window-scale shift the server's SYN-ACK announced.
    pub(super) wscale: Option<u8>,
    /// Latest server ack of the client stream, server offsets; only grows,
    /// never beyond `c_out()`.
    pub(super) ack: u64,
    /// Unfinished reply head.
    pub(super) buf: Vec<u8>,
    /// `buf` held an incomplete reply head of this many bytes at the last
    /// parse (0: none), as `FromClient::scanned`.
    pub(super) scanned: usize,
    pub(super) reply: super::reply::ReplyState,
    /// Bytes inserted into the client's view (denials).
    pub(super) inserted: Inserted,
    /// Injected bytes not yet acknowledged by the client.
    pub(super) inj: VecDeque<Injected>,
    /// Headers of a server frame, to build segments towards the client from.
    pub(super) tpl: Option<Template>,
    /// Server offsets `[lo, hi)` of a reply body counted as passed ahead of
    /// its frames (`bypass.rs`); gone once the client acknowledged `hi`.
    pub(super) ahead: Option<(u64, u64)>,
    /// The ack, window and window-out fields of the published range.
    pub(super) published: Option<(u32, u16, u16)>,
    /// The server's right edge held while its range's segments reach us
    /// (`bypass.rs`, `Hold`): `window_to_server` offers no more.
    pub(super) hold: Hold,
}

/// The least the server's edge is capped to (`window_to_server`), and the
/// bound of either edge between units and past a live range's end
/// (`server_cap`, `client_cap`): with fewer segments in flight a loss
/// cannot be repaired by fast retransmit, and a lossy connection crawls
/// from timeout to timeout (the stream rig's 64-byte `max_held_bytes`
/// did).
const CAP_MIN: u64 = 16 * 1024;

pub(crate) struct Stream<P: Protocol> {
    pub(super) proto: P,
    pub(super) policy: Arc<RuleSet<P::Rule>>,
    pub(super) client_side: Side,
    /// Reset (by us or a peer): later segments are dropped.
    pub(super) closed: bool,
    pub(super) cli: FromClient,
    pub(super) srv: FromServer,
    /// Requests in reply order: forwarded ones awaiting replies, denials.
    pub(super) queue: VecDeque<Pending<P::Request>>,
    /// Head bytes kept by requests awaiting replies, bounded by `limit`.
    pub(super) pending_bytes: usize,
    /// `max_held_bytes`, as of the latest call.
    pub(super) limit: usize,
    /// The kernel path is on, as of the latest call: both edges are shaped
    /// for it (`server_cap`, `client_cap`).
    pub(super) kernel_path: bool,
    /// A head timed out and its timeout reply went into the queue: the
    /// connection ends (reset) once the client acknowledged the reply, or
    /// at this deadline. Client data meanwhile is dropped.
    pub(super) draining: Option<u64>,
    /// `l7_head_timeout_ns`, as of the latest call.
    pub(super) head_timeout: u64,
}

impl<P: Protocol> Stream<P> {
    pub fn new(proto: P, policy: Arc<RuleSet<P::Rule>>, client_side: Side) -> Self {
        Stream {
            proto,
            policy,
            client_side,
            closed: false,
            cli: FromClient {
                abs: None,
                next: 0,
                buf: Vec::new(),
                ooo: Ooo::default(),
                ooo_fin: None,
                fin: None,
                fin_sent: false,
                req: ReqState::Head,
                scanned: 0,
                head_since: None,
                removed: Removed::default(),
                max_seg: MIN_SEG,
                win: 0,
                wscale: None,
                ack_view: 0,
                tpl: None,
                sent: VecDeque::new(),
                sent_base: 0,
                rel: Vec::new(),
                own_ack: 0,
                tx_edge: 0,
                rtx: None,
                offered: Cell::new(0),
                unkept: None,
                published: None,
                hold: Hold::default(),
                win_edge: Cell::new(0),
            },
            srv: FromServer {
                abs: None,
                next: 0,
                fin: None,
                win: 0,
                wscale: None,
                ack: 0,
                buf: Vec::new(),
                scanned: 0,
                reply: super::reply::ReplyState::Head,
                inserted: Inserted::default(),
                inj: VecDeque::new(),
                tpl: None,
                ahead: None,
                published: None,
                hold: Hold::default(),
            },
            queue: VecDeque::new(),
            pending_bytes: 0,
            limit: usize::MAX,
            kernel_path: false,
            draining: None,
            head_timeout: u64::MAX,
        }
    }

    /// Memory held for this connection's bytes: allocated capacity, not
    /// only the bytes in use (the out-of-order ring counts whole).
    pub fn held_bytes(&self) -> usize {
        self.cli.buf.capacity()
            + self.cli.sent.capacity()
            + self.cli.rel.capacity()
            + self.cli.ooo.memory()
            + self.srv.buf.capacity()
            + self
                .srv
                .inj
                .iter()
                .map(|b| b.bytes.capacity())
                .sum::<usize>()
    }

    /// Once bytes were removed or inserted, both directions need mapping.
    pub(super) fn modified(&self) -> bool {
        !self.cli.removed.is_empty() || !self.srv.inserted.is_empty()
    }

    /// Client offset up to which every byte is decided.
    pub(super) fn decided(&self) -> u64 {
        self.cli.next.saturating_sub(self.cli.buf.len() as u64)
    }

    /// Server offset of the next byte the server expects from us.
    pub(super) fn c_out(&self) -> u64 {
        self.decided().saturating_sub(self.cli.removed.total) + u64::from(self.cli.fin_sent)
    }

    /// A denial waits for earlier replies: later requests are held.
    pub(super) fn waiting(&self) -> bool {
        // Unacknowledged denials are bounded too: a client that does not
        // read them gets no further requests through.
        self.queue.len() >= MAX_PENDING
            || self.pending_bytes >= self.limit
            || self.srv.inj.len() >= MAX_PENDING
            || self.queue.iter().any(|p| matches!(p, Pending::Denial(_)))
    }

    /// Ack (client seq space) to put on segments towards the client.
    pub(super) fn ack_to_client(&self) -> u32 {
        let Some(c) = self.cli.abs else { return 0 };
        c.seq(self.client_acked())
    }

    /// Client offset acknowledged to the client: the server's ack mapped
    /// (never beyond decided bytes), or what we acknowledged ourselves.
    pub(super) fn client_acked(&self) -> u64 {
        let limit = self.decided() + u64::from(self.cli.fin_sent);
        let mapped = self.cli.removed.to_client_ack(self.srv.ack).min(limit);
        mapped.max(self.cli.own_ack)
    }

    /// We acknowledged client bytes the server has not: every segment
    /// towards the client needs its ack rewritten (an ack older than the
    /// one the client holds would also carry a window it ignores).
    pub(super) fn acks_ahead(&self) -> bool {
        let limit = self.decided() + u64::from(self.cli.fin_sent);
        self.cli.own_ack > self.cli.removed.to_client_ack(self.srv.ack).min(limit)
    }

    /// The server's receive window in bytes, scaled as both SYNs agreed.
    pub(super) fn server_window(&self) -> u64 {
        let shift = match (self.cli.wscale, self.srv.wscale) {
            (Some(_), Some(s)) => u32::from(s),
            _ => 0,
        };
        u64::from(self.srv.win) << shift
    }

    /// Server offset one past the last byte the server's latest ack and
    /// window let us send: released bytes beyond it wait in `cli.sent`.
    pub(super) fn server_edge(&self) -> u64 {
        self.srv.ack.saturating_add(self.server_window())
    }

    /// Server offset one past the released bytes kept in `cli.sent`.
    pub(super) fn sent_end(&self) -> u64 {
        let n = self.cli.sent.len() as u64;
        match self.cli.unkept {
            // The kept bytes below the range, then those from its end on.
            Some((lo, hi)) if self.cli.sent_base <= lo => {
                hi + n.saturating_sub(lo - self.cli.sent_base)
            }
            _ => self.cli.sent_base + n,
        }
    }

    /// Where the kept byte at server offset `off` is in `cli.sent` (None:
    /// not kept: acknowledged, unkept, or not released yet).
    pub(super) fn sent_idx(&self, off: u64) -> Option<usize> {
        let b = self.cli.sent_base;
        let i = match self.cli.unkept {
            Some((lo, hi)) if b <= lo => {
                if off < lo {
                    off.checked_sub(b)?
                } else if off >= hi {
                    (lo - b) + (off - hi)
                } else {
                    return None;
                }
            }
            _ => off.checked_sub(b)?,
        };
        (i < self.cli.sent.len() as u64).then_some(i as usize)
    }

    /// Kept bytes of server offsets `[lo, hi)`, as runs (offset, bytes):
    /// an unkept range in between is left out.
    pub(super) fn kept_runs(&self, lo: u64, hi: u64) -> Vec<(u64, Vec<u8>)> {
        let spans = match self.cli.unkept {
            Some((a, b)) => [(lo, hi.min(a)), (lo.max(b), hi)],
            None => [(lo, hi), (0, 0)],
        };
        let mut runs = Vec::new();
        for (x, y) in spans {
            if x >= y {
                continue;
            }
            let (Some(i), Some(j)) = (self.sent_idx(x), self.sent_idx(y - 1)) else {
                continue;
            };
            runs.push((x, self.cli.sent.range(i..=j).copied().collect()));
        }
        runs
    }

    /// Server offset of the first released byte not yet sent to the server
    /// (every one before it went out, inside the server's window).
    pub(super) fn unsent_from(&self) -> u64 {
        self.cli.tx_edge.max(self.srv.ack)
    }

    /// Sequence (server offset) for our segments without data towards the
    /// server: the next byte we send, which is not `c_out` while released
    /// bytes wait for the server's window (a seq past its window would be
    /// dropped, and the ack and window it carries with it).
    pub(super) fn c_next(&self) -> u64 {
        let from = self.unsent_from();
        if from < self.sent_end() {
            from
        } else {
            self.c_out()
        }
    }

    /// Ack (server seq space) to put on segments towards the server.
    pub(super) fn ack_to_server(&self) -> u32 {
        let Some(s) = self.srv.abs else { return 0 };
        s.seq(self.server_acked())
    }

    /// The server offset acknowledged to the server (`ack_to_server`).
    pub(super) fn server_acked(&self) -> u64 {
        let limit = self.srv.next + u64::from(self.srv.fin.is_some());
        self.srv
            .inserted
            .to_server_ack(self.cli.ack_view)
            .min(limit)
    }

    /// The window field for our segments towards the server.
    pub(super) fn server_offer(&self) -> u16 {
        self.window_to_server(self.server_acked())
    }

    /// The window field towards the server on a segment acknowledging
    /// server offset `acked`: the client's own, but no further than
    ///
    /// * with the kernel path on, the cap (`server_cap`: 16 KiB past that
    ///   ack between replies, a published reply range's end plus that,
    ///   `max_held_bytes` past the ack in a reply without a range), or the
    ///   edge offered already, whichever is further. The client's window
    ///   on a warm connection is megabytes, so a server would put a whole
    ///   large value on the wire before its reply's head is even parsed:
    ///   all of it then queues behind the worker, the range published for
    ///   it comes too late, and its hold binds never;
    /// * while the server's edge is held (`bypass.rs`, `Hold`), the held
    ///   edge.
    ///
    /// Rounded up, so never behind an edge already offered (the cap keeps
    /// that edge, and the hold is that edge), and never more than the
    /// client's.
    pub(super) fn window_to_server(&self, acked: u64) -> u16 {
        // The client's field is scaled only when both SYNs carried the option.
        let shift = match (self.cli.wscale, self.srv.wscale) {
            (Some(c), Some(_)) => u32::from(c),
            _ => 0,
        };
        let raw = self.cli.win;
        let own = acked.saturating_add(u64::from(raw) << shift);
        let mut want = own;
        if self.kernel_path {
            want = want.min(self.server_cap(acked).max(self.cli.win_edge.get()));
        }
        if let Some(h) = self.srv.hold.edge {
            want = want.min(h);
        }
        let field = if want >= own {
            raw
        } else {
            let n = (want.saturating_sub(acked) + (1 << shift) - 1) >> shift;
            n.min(u64::from(raw)) as u16
        };
        let edge = acked.saturating_add(u64::from(field) << shift);
        self.cli.win_edge.set(self.cli.win_edge.get().max(edge));
        field
    }

    /// The edge the cap allows the server on a segment acknowledging
    /// `acked` (`window_to_server`, kernel path on). Three cases, because
    /// one bound cannot serve both a reply that will get a range and one
    /// that will not:
    ///
    /// * Between replies and in a reply head, only
    ///   `CAP_MIN` past the ack: the head that tells whether a range
    ///   follows is in the first segment, and whatever the server sends
    ///   before its range is written queues behind the worker and must
    ///   drain through it (at a third of the wire's speed on a veth) before
    ///   the rest can take the kernel path. With 256 KiB there, a 1 MB get
    ///   spent a millisecond draining.
    /// * While a reply range is published: its end plus `CAP_MIN`,
    ///   so that the sender never waits for a client ACK, which would come
    ///   through a worker, to go on (the hold keeps the edge where it was
    ///   until what was sent before the range drained: `bypass.rs`, `Hold`).
    /// * In a reply without a range (a body too small for one, chunked, a
    ///   tunnel, a range withdrawn), `max_held_bytes` past the ack: those
    ///   bytes all pass through a worker, and a small bound would leave it
    ///   idle (and asleep) while the sender waits for the next edge.
    ///
    /// An edge already offered stays (the caller's `win_edge`), so the
    /// small bound takes effect from the edge the last reply left.
    fn server_cap(&self, acked: u64) -> u64 {
        if let (Some((_, hi)), Some(_)) = (self.srv.ahead, self.srv.published) {
            return hi.max(acked).saturating_add(CAP_MIN);
        }
        let cap = if matches!(self.srv.reply, super::reply::ReplyState::Head) {
            CAP_MIN
        } else {
            (self.limit as u64).max(CAP_MIN)
        };
        acked.saturating_add(cap)
    }

    /// Put `window_to_server` on a client frame passed on to the server,
    /// seen from the frame's own ack (as `stamp_window` towards the client).
    ///
    /// Only with the cap (the kernel path on) or while a reply range is
    /// published (a hold exists only then): otherwise every client frame
    /// would pay for a field it keeps (the edge the client offered before
    /// a range is taken at publication, `passed_window`).
    pub(super) fn stamp_server_window(&self, frame: &mut [u8], m: &FrameMeta) {
        if self.srv.published.is_none() && !self.kernel_path {
            return;
        }
        let Some(sabs) = self.srv.abs else { return };
        let Some(h) = frame.get(m.l4_off..m.l4_off + 16) else {
            return;
        };
        if m.tcp().is_none() || h[13] & TCP_RST != 0 || h[13] & TCP_ACK == 0 {
            return;
        }
        let ack = u32::from_be_bytes([h[8], h[9], h[10], h[11]]);
        let limit = self.srv.next + u64::from(self.srv.fin.is_some());
        let a = sabs.abs(ack, limit).clamp(0, limit as i64) as u64;
        let w = self.window_to_server(a).to_be_bytes();
        let at = m.l4_off + 14;
        if frame.get(at..at + 2).is_some_and(|f| f != w) {
            build::patch_tcp(frame, m, 14, &w);
        }
    }

    /// The window field offered to the client, in place of the server's.
    ///
    /// Every client byte past the ack the client holds is kept here until
    /// the server acknowledges it: released bytes (`cli.sent`), undecided
    /// ones (`cli.buf`) and, after a reordering or a loss, out-of-order ones
    /// (a ring of `max_held_bytes` from the next expected byte). Passing on
    /// a larger server window would let an honest client send more than
    /// that, and the excess would be dropped (`l7-hold-overflow`) and crawl
    /// back by retransmission: so the offer never reaches beyond the
    /// server's ack plus `max_held_bytes`, but over a live range's unkept
    /// bytes, which are not kept (`client_cap`, kernel path on).
    ///
    /// The offer is a right edge, in client offsets, minus the ack the
    /// client holds (`client_acked`): the server's edge (its ack mapped
    /// plus its window, clamped), or, while a request head is held, the
    /// hold's edge (`max_held_bytes` past the decided bytes: the head is
    /// acknowledged by us as it arrives, and may grow to the limit). Once a
    /// held head is released into a smaller server window the offer is
    /// zero until the server's acks catch up with ours.
    pub(super) fn client_window(&self) -> u16 {
        self.client_window_at(self.client_acked())
    }

    /// `client_window` for a segment carrying ack `acked` (a client
    /// offset): the same right edge, seen from that ack.
    pub(super) fn client_window_at(&self, acked: u64) -> u16 {
        // The server's field is scaled only when both SYNs carried the option.
        let shift = match (self.cli.wscale, self.srv.wscale) {
            (Some(_), Some(s)) => u32::from(s),
            _ => 0,
        };
        let limit = self.limit as u64;
        let mapped = self.cli.removed.to_client_ack(self.srv.ack);
        let sw = self.server_window();
        let mut edge = mapped.saturating_add(sw.min(limit));
        if self.kernel_path {
            edge = self.client_cap(mapped, sw).unwrap_or(edge);
        }
        if matches!(self.cli.req, ReqState::Head) && !self.cli.buf.is_empty() {
            edge = edge.max(self.decided().saturating_add(limit));
        }
        // Held while the client's range still comes through us: no more
        // than was offered when the hold began (`bypass.rs`, `Hold`).
        if let Some(h) = self.cli.hold.edge {
            edge = edge.min(h);
        }
        // Never shrink (RFC 9293 3.8.6.2.2: a receiver SHOULD NOT move its
        // right edge back). The client may already have sent up to an edge
        // offered before; some stacks (smoltcp) then stop retransmitting
        // bytes past a shrunk edge and the connection stalls. Bytes beyond
        // what the enforcer can hold are dropped and come back by
        // retransmission instead, within the edge the client was given.
        let edge = edge.max(self.cli.offered.get());
        let offer = edge.saturating_sub(acked);
        // Round up so that a small offer does not scale down to zero.
        let field = ((offer + (1 << shift) - 1) >> shift).min(u64::from(u16::MAX));
        self.cli
            .offered
            .set(self.cli.offered.get().max(acked + (field << shift)));
        field as u16
    }

    /// With the kernel path on, the client's edge as `server_cap` shapes
    /// the server's, for the same reasons mirrored (a large set's first
    /// segments queue behind the worker; a range's sender should not wait
    /// on the server's ACKs through a worker), from `mapped`, the server's
    /// ack in client offsets: within the server's own window `sw`, a live
    /// client range's end plus `CAP_MIN` (no more than `max_held_bytes`),
    /// and as much past the ack between requests. Elsewhere (None) as
    /// without the kernel path. A range's unkept bytes are never kept
    /// here, so the larger offer costs no memory; a hold (`bypass.rs`)
    /// still bounds it.
    fn client_cap(&self, mapped: u64, sw: u64) -> Option<u64> {
        if let (Some((_, hi)), Some(_)) = (self.cli.unkept, self.cli.published) {
            // Bytes past the range's end are kept again: `limit` bounds them.
            let end = self.cli.removed.to_client_ack(hi);
            let past = CAP_MIN.min(self.limit as u64);
            return Some(mapped.saturating_add(sw).min(end.saturating_add(past)));
        }
        let between = matches!(self.cli.req, ReqState::Head) && self.cli.buf.is_empty();
        between.then(|| mapped.saturating_add(sw.min(self.limit as u64).min(CAP_MIN)))
    }

    /// Put `client_window` on a server frame passed on to the client.
    pub(super) fn offer_window(&self, frame: &mut [u8], meta: &FrameMeta) {
        let w = self.client_window();
        let at = meta.l4_off + 14;
        if frame.get(at..at + 2).is_some_and(|f| f != w.to_be_bytes()) {
            // Incrementally: a bulk reply's every segment gets a new window.
            build::patch_tcp(frame, meta, 14, &w.to_be_bytes());
        }
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
            match (&self.cli.tpl, &self.srv.tpl) {
                (Some(t), _) => (t, false, self.ack_to_server(), self.server_offer()),
                (None, Some(t)) => (t, true, self.ack_to_server(), self.server_offer()),
                _ => return None,
            }
        } else {
            match (&self.srv.tpl, &self.cli.tpl) {
                (Some(t), _) => (t, false, self.ack_to_client(), self.client_window()),
                (None, Some(t)) => (t, true, self.ack_to_client(), self.client_window()),
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
        let Some(s) = self.srv.abs else { return };
        let seq =
            s.seq(self.srv.inserted.to_view(self.srv.next) + u64::from(self.srv.fin.is_some()));
        let f = self.seg(false, seq, 0, &[]);
        self.emit(ctx, out, false, f);
    }

    pub(super) fn ack_server(&self, ctx: &mut StreamCtx<'_>, out: &mut Output) {
        let Some(c) = self.cli.abs else { return };
        let f = self.seg(true, c.seq(self.c_next()), 0, &[]);
        self.emit(ctx, out, true, f);
    }

    /// RST to both sides, each in its own sequence space; the flow is dead.
    pub(super) fn reset(&mut self, ctx: &mut StreamCtx<'_>, out: &mut Output) {
        if self.closed {
            return;
        }
        if let Some(c) = self.cli.abs {
            let f = self.seg(true, c.seq(self.c_next()), TCP_RST, &[]);
            self.emit(ctx, out, true, f);
        }
        if let Some(s) = self.srv.abs {
            let seq =
                s.seq(self.srv.inserted.to_view(self.srv.next) + u64::from(self.srv.fin.is_some()));
            let f = self.seg(false, seq, TCP_RST, &[]);
            self.emit(ctx, out, false, f);
        }
        self.closed = true;
        self.cli.buf = Vec::new();
        self.srv.buf = Vec::new();
        self.cli.ooo.clear();
        self.queue.clear();
        self.pending_bytes = 0;
        self.cli.sent = VecDeque::new();
        self.cli.unkept = None;
        self.srv.ahead = None;
        self.cli.rtx = None;
        self.srv.inj.clear();
    }

    pub(super) fn log(
        &self,
        ctx: &mut StreamCtx<'_>,
        out: &mut Output,
        now: u64,
        subject: Subject,
        allowed: bool,
        detail: Arc<str>,
    ) {
        if allowed {
            ctx.counters.l7_requests_allowed += 1;
        } else {
            ctx.counters.l7_requests_denied += 1;
            ctx.counters.drop(DropReason::L7Denied);
        }
        // The detail names the rule (allowed) or the reason: moved, not copied.
        let (rule, reason) = if allowed {
            (Some(detail), None)
        } else {
            (None, Some(detail))
        };
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
            rule,
            reason,
        });
    }

    /// Audit mode: a request the rules would deny, forwarded.
    pub(super) fn log_audit(
        &self,
        ctx: &mut StreamCtx<'_>,
        out: &mut Output,
        now: u64,
        subject: Subject,
        reason: Arc<str>,
    ) {
        ctx.counters.l7_requests_audited += 1;
        out.events.push(Event {
            time_ns: now,
            worker: ctx.worker,
            flow: ctx.tuple,
            subject,
            verdict: Decision::Audit,
            rule: None,
            reason: Some(reason),
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
        self.kernel_path = ctx.cfg.kernel_path;
        self.head_timeout = ctx.cfg.l7_head_timeout_ns;
        let v = if in_side == self.client_side {
            let v = self.client_segment(ctx, frame, meta, &t, now, out);
            if matches!(v, Verdict::Forward(_)) {
                self.stamp_server_window(frame, meta);
            }
            v
        } else {
            self.server_segment(ctx, frame, meta, &t, now, out)
        };
        self.ranges(ctx, out);
        v
    }

    /// Why this connection could stall, if it could: a byte the enforcer
    /// holds that nothing will move. Checked by the rigs after every step;
    /// None means each held byte has a mover. The client and the server
    /// retransmit what they have not seen acknowledged, so only bytes the
    /// enforcer took on itself need a timer of ours:
    ///
    /// * bytes we acknowledged to the client and the server has not (the
    ///   client will never resend them) need the owned-bytes timer (`rtx`);
    /// * a held head must be waiting for something (`waiting`: replies the
    ///   server owes, a denial to inject, a budget that replies free) or be
    ///   incomplete (the last parse over exactly these bytes said so; the
    ///   client owes the rest, and the head clock runs);
    /// * a denial at the front of the reply order has nothing to wait for:
    ///   it must already have been injected.
    ///
    /// Injected bytes always carry their own deadline (`next_deadline`).
    pub fn stall(&self) -> Option<&'static str> {
        if self.closed {
            return None;
        }
        if self.srv.ack < self.owned_end() && self.cli.rtx.is_none() {
            return Some("bytes we acknowledged to the client wait for the server with no timer");
        }
        let held = matches!(self.cli.req, ReqState::Head) && !self.cli.buf.is_empty();
        if held
            && self.draining.is_none()
            && !self.waiting()
            && self.cli.scanned != self.cli.buf.len()
        {
            return Some("a held head waits for nothing and was not judged");
        }
        if self.srv.abs.is_some() && matches!(self.queue.front(), Some(Pending::Denial(_))) {
            return Some("a denial due was not injected");
        }
        None
    }

    /// The earliest retransmission due (None when nothing waits).
    pub fn next_deadline(&self) -> Option<u64> {
        if self.closed {
            return None;
        }
        let head = self
            .cli
            .head_since
            .map(|t| t.saturating_add(self.head_timeout));
        self.srv
            .inj
            .iter()
            .map(|b| b.sent_ns.saturating_add(b.rto_ns))
            .chain(head)
            .chain(self.draining)
            .chain(self.cli.rtx.map(|(d, _)| d))
            .min()
    }

    /// Timers: the head timeout, the end of a drain, retransmission of
    /// injected bytes the client has not acknowledged, and of client bytes
    /// we acknowledged that the server has not.
    pub fn on_tick(&mut self, ctx: &mut StreamCtx<'_>, now: u64, out: &mut Output) {
        self.tick_inner(ctx, now, out);
        self.ranges(ctx, out);
    }

    fn tick_inner(&mut self, ctx: &mut StreamCtx<'_>, now: u64, out: &mut Output) {
        if self.closed {
            return;
        }
        self.head_timeout = ctx.cfg.l7_head_timeout_ns;
        if self.draining.is_some_and(|d| now >= d) {
            // The client never acknowledged the timeout reply.
            self.reset(ctx, out);
            return;
        }
        if self
            .cli
            .head_since
            .is_some_and(|t| now >= t.saturating_add(self.head_timeout))
        {
            self.head_timed_out(ctx, now, out);
            if self.closed {
                return;
            }
        }
        let Some(sabs) = self.srv.abs else { return };
        let mut frames = Vec::new();
        for b in self.srv.inj.iter_mut() {
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
        self.retransmit_owned(ctx, now, out);
    }
}
