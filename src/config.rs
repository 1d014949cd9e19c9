//! Engine tunables. Defaults are what an operator gets without flags.

/// What to do with a new flow when the flow table is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TableFullPolicy {
    /// Existing flows are kept. New flows that need state (L7 ports) are
    /// refused; new L3/L4-only flows that policy allows still pass, untracked:
    /// each of their packets is judged in its own direction (a TCP segment
    /// like a SYN). Replies pass when policy allows them that way too
    /// (commonly: clients not selected by any ingress rule), else they are
    /// dropped until room frees up. Nothing policy denies ever passes.
    /// (Default: a full table degrades to a stateless filter rather than an outage.)
    RefuseL7,
    /// Refuse every new flow.
    RefuseAll,
    /// Evict a flow not used recently (CLOCK approximation of LRU); expired
    /// flows are reclaimed first under every policy.
    EvictOldest,
}

/// How a denied L7 request is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DenyAction {
    /// Protocol error reply (HTTP 403, memcached CLIENT_ERROR / status 0x0008); connection kept.
    Reply,
    /// TCP RST to both sides.
    Reset,
}

/// How a TCP SYN denied by L3/L4 policy is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SynDenyAction {
    Drop,
    Reset,
}

/// What happens to a connection the engine can no longer enforce because of
/// an internal error (a panic in its L7 stream state, caught per flow so the
/// worker goes on).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailMode {
    /// Its L7 state is dropped with the flow entry; later frames meet the
    /// no-flow path (an L7 connection is never adopted again), so the
    /// connection ends. (Default.)
    Closed,
    /// Its L7 state is dropped and the connection goes on as L3/L4 only,
    /// unjudged (if bytes were already removed or injected, the endpoints'
    /// sequence numbers disagree and it breaks anyway).
    Open,
}

#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub max_flows: usize,
    pub table_full: TableFullPolicy,
    /// Bytes of one direction's stream the engine may hold for an undecided request.
    pub max_held_bytes: usize,
    /// Bytes all of a worker's L7 flows may hold together (`Engine::held_bytes`).
    /// Above it, no flow starts holding more: heads over 1 KiB are refused
    /// (reset), out-of-order data is dropped, released data waits for acks.
    pub max_held_total: usize,
    pub deny_action: DenyAction,
    pub syn_deny: SynDenyAction,
    /// Adopt a TCP connection seen mid-stream (no SYN) when policy allows it
    /// and it has no L7 rules, so an enforcer restart does not cut live
    /// connections. False: drop such segments (`no-flow`), as Cilium does.
    pub tcp_pickup: bool,
    /// ARP, ND and other non-IP frames pass (counted) when true.
    pub pass_non_ip: bool,
    pub tcp_established_timeout_ns: u64,
    pub tcp_transitory_timeout_ns: u64,
    /// Idle timeout of TCP flows whose SYN nobody answered yet. Longer than
    /// the gaps between a handshake's retransmissions (Linux: SYNs up to
    /// 32 s apart, SYN-ACKs up to 16 s), or a SYN-ACK retransmission meets
    /// no flow and is dropped; a SYN flood's entries give way to new
    /// connections by early drop instead (`FlowTable::reclaim_half_open`).
    /// A client's SYN retransmission after it is judged as a new flow. Once
    /// the SYN-ACK passed, the flow takes `tcp_transitory_timeout_ns` (the
    /// client sends no SYN again, and an L7 flow is never adopted
    /// mid-stream).
    pub tcp_syn_timeout_ns: u64,
    pub udp_timeout_ns: u64,
    pub icmp_timeout_ns: u64,
    /// Pending IP fragment reassemblies per engine, and their lifetime.
    pub max_frag_queues: usize,
    pub frag_timeout_ns: u64,
    /// Longest time an L7 request head may take to arrive once its first
    /// byte did (HAProxy's `timeout http-request`): a head trickled in
    /// below every idle timeout would otherwise hold its bytes forever. At
    /// the deadline the head is denied and the connection ends: HTTP with
    /// `deny_action` reply gets a 408 first, everything else an RST.
    pub l7_head_timeout_ns: u64,
    /// Initial retransmission timeout for bytes the engine injected.
    pub inject_rto_ns: u64,
    pub fail: FailMode,
    /// Audit mode: what the policy would deny (a new flow at L3/L4, a
    /// request at L7) is forwarded and logged with verdict `audit` and the
    /// reason it would have been denied.
    pub audit: bool,
}

const SEC: u64 = 1_000_000_000;

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            max_flows: 65_536,
            table_full: TableFullPolicy::RefuseL7,
            // A memcached multi-get is held whole until every key is judged:
            // 256 KiB takes ~2,700 keys of 93 bytes (memcached itself grows
            // its buffer without limit for get lines).
            max_held_bytes: 256 * 1024,
            max_held_total: 256 << 20,
            deny_action: DenyAction::Reply,
            syn_deny: SynDenyAction::Drop,
            tcp_pickup: true,
            pass_non_ip: true,
            tcp_established_timeout_ns: 6 * 3600 * SEC,
            tcp_transitory_timeout_ns: 60 * SEC,
            tcp_syn_timeout_ns: 60 * SEC,
            udp_timeout_ns: 60 * SEC,
            icmp_timeout_ns: 30 * SEC,
            max_frag_queues: 1024,
            frag_timeout_ns: 30 * SEC,
            // Longer than Linux's largest retransmission timeout (120 s),
            // unlike nginx's 60 s: nothing acknowledges a held head's bytes
            // (the server has not got them), so a client whose head
            // straddles a segment it lost, or whose last small segment
            // waits for an ack (Nagle), finishes the head only at its next
            // retransmission, and after a few losses that backs off to
            // minutes.
            l7_head_timeout_ns: 180 * SEC,
            inject_rto_ns: 200_000_000,
            fail: FailMode::Closed,
            audit: false,
        }
    }
}
