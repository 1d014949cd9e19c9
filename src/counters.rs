//! Counters: everything dropped is counted, with its reason. Plain u64s owned
//! by one worker; the shell aggregates snapshots across workers.

use serde::Serialize;

macro_rules! reasons {
    ($($name:ident => $text:literal),* $(,)?) => {
        /// Why a frame was dropped. `as_str` is the name used in logs and stats.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u8)]
        pub enum DropReason { $($name),* }

        impl DropReason {
            pub const ALL: &'static [DropReason] = &[$(DropReason::$name),*];
            pub fn as_str(self) -> &'static str {
                match self { $(DropReason::$name => $text),* }
            }
        }
    };
}

reasons! {
    Malformed => "malformed",
    NonIpDenied => "non-ip-denied",
    PolicyDenied => "policy-denied",
    DenyRule => "deny-rule",
    NoFlow => "no-flow",
    TableFull => "flow-table-full",
    FragmentDropped => "fragment-dropped",
    FragmentTableFull => "fragment-table-full",
    FragmentOverlap => "fragment-overlap",
    FragmentTimeout => "fragment-timeout",
    TcpInvalid => "tcp-invalid",
    TcpBadChecksum => "tcp-bad-checksum",
    TcpOutOfWindow => "tcp-out-of-window",
    WrongSide => "wrong-side",
    InternalError => "internal-error",
    L7Denied => "l7-denied",
    L7HoldOverflow => "l7-hold-overflow",
    L7OutOfWindow => "l7-out-of-window",
    L7Duplicate => "l7-duplicate",
    Unsupported => "unsupported",
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Counters {
    pub frames_in: u64,
    pub frames_forwarded: u64,
    pub frames_emitted: u64,
    pub frames_injected: u64,
    pub non_ip_passed: u64,
    pub flows_created: u64,
    pub flows_expired: u64,
    pub flows_active: u64,
    /// Allowed L4-only flows passed without an entry (table full, refuse-l7).
    pub flows_untracked: u64,
    /// TCP connections adopted mid-stream (no SYN seen, e.g. after a restart).
    pub flows_picked_up: u64,
    pub flows_evicted: u64,
    /// Flows whose verdict changed after a policy swap.
    pub flows_redecided: u64,
    pub fragments_reassembled: u64,
    pub l7_requests_allowed: u64,
    pub l7_requests_denied: u64,
    /// Audit mode: requests the policy would deny, forwarded.
    pub l7_requests_audited: u64,
    /// Times a held request or reply head was parsed: about one per
    /// arriving line, not one per segment (see `Protocol::head_may_end`).
    pub l7_head_parses: u64,
    /// Request heads that did not arrive within `l7_head_timeout_ns`.
    pub l7_head_timeouts: u64,
    /// Retransmissions towards the server of client bytes the enforcer had
    /// acknowledged itself (held request heads; docs/stream.md).
    pub l7_owned_retransmits: u64,
    /// Ranges of known body bytes published to the shell (docs/stream.md,
    /// "A kernel path for known bytes").
    pub l7_ranges: u64,
    /// Holds of a sender's right edge while its range's segments still
    /// reached the engine (docs/stream.md, "Drain, then go live").
    pub l7_range_holds: u64,
    /// Window updates sent to a sender when a hold ended.
    pub l7_window_updates: u64,
    /// Bytes the worker's L7 flows hold now (a gauge; see `max_held_total`).
    pub l7_held_bytes: u64,
    /// L7 flows whose stream state hit an internal error (see `FailMode`).
    pub l7_internal_errors: u64,
    #[serde(skip)]
    pub drops: [u64; 32],
}

impl Counters {
    #[inline]
    pub fn drop(&mut self, reason: DropReason) {
        self.drops[reason as usize] += 1;
    }

    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.drops[reason as usize]
    }

    /// Add another worker's counters (for totals).
    pub fn merge(&mut self, o: &Counters) {
        self.frames_in += o.frames_in;
        self.frames_forwarded += o.frames_forwarded;
        self.frames_emitted += o.frames_emitted;
        self.frames_injected += o.frames_injected;
        self.non_ip_passed += o.non_ip_passed;
        self.flows_created += o.flows_created;
        self.flows_expired += o.flows_expired;
        self.flows_active += o.flows_active;
        self.flows_untracked += o.flows_untracked;
        self.flows_picked_up += o.flows_picked_up;
        self.flows_evicted += o.flows_evicted;
        self.flows_redecided += o.flows_redecided;
        self.fragments_reassembled += o.fragments_reassembled;
        self.l7_requests_allowed += o.l7_requests_allowed;
        self.l7_requests_denied += o.l7_requests_denied;
        self.l7_requests_audited += o.l7_requests_audited;
        self.l7_head_parses += o.l7_head_parses;
        self.l7_head_timeouts += o.l7_head_timeouts;
        self.l7_owned_retransmits += o.l7_owned_retransmits;
        self.l7_ranges += o.l7_ranges;
        self.l7_range_holds += o.l7_range_holds;
        self.l7_window_updates += o.l7_window_updates;
        self.l7_internal_errors += o.l7_internal_errors;
        self.l7_held_bytes += o.l7_held_bytes;
        for (a, b) in self.drops.iter_mut().zip(o.drops.iter()) {
            *a += b;
        }
    }

    /// Counters as a JSON object, drops by name (zero ones omitted).
    pub fn to_json(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        let drops: serde_json::Map<String, serde_json::Value> = DropReason::ALL
            .iter()
            .filter(|r| self.dropped(**r) > 0)
            .map(|r| (r.as_str().to_string(), self.dropped(*r).into()))
            .collect();
        if let Some(o) = v.as_object_mut() {
            o.insert("drops".into(), drops.into());
        }
        v
    }
}
