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

/// What a denied L7 request is answered with (`DenyAction::Reply`). The
/// defaults are Cilium's: `403 Forbidden`, `Access denied`, and memcached's
/// `CLIENT_ERROR access denied`. Set globally by flags; a policy's
/// annotations override single fields for the requests its rules deny
/// (`DenyReplyOverride`). Values are checked where they are read
/// (`check_*` below), so rendering never meets one that would break the
/// client's framing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DenyReply {
    pub http_status: u16,
    /// Sent followed by CRLF, as Cilium does.
    pub http_body: String,
    pub http_content_type: String,
    /// Extra header lines (name, value), after ours.
    pub http_headers: Vec<(String, String)>,
    /// memcached text: the denial is `CLIENT_ERROR <message>`.
    pub memcache_message: String,
}

impl Default for DenyReply {
    fn default() -> Self {
        DenyReply {
            http_status: 403,
            http_body: "Access denied".into(),
            http_content_type: "text/plain".into(),
            http_headers: Vec::new(),
            memcache_message: "access denied".into(),
        }
    }
}

/// A policy's deny-reply settings: each field given replaces the global one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DenyReplyOverride {
    pub http_status: Option<u16>,
    pub http_body: Option<String>,
    pub http_content_type: Option<String>,
    pub http_headers: Option<Vec<(String, String)>>,
    pub memcache_message: Option<String>,
}

impl DenyReplyOverride {
    pub fn is_empty(&self) -> bool {
        *self == DenyReplyOverride::default()
    }

    pub fn apply(&self, base: &DenyReply) -> DenyReply {
        DenyReply {
            http_status: self.http_status.unwrap_or(base.http_status),
            http_body: self
                .http_body
                .clone()
                .unwrap_or_else(|| base.http_body.clone()),
            http_content_type: self
                .http_content_type
                .clone()
                .unwrap_or_else(|| base.http_content_type.clone()),
            http_headers: self
                .http_headers
                .clone()
                .unwrap_or_else(|| base.http_headers.clone()),
            memcache_message: self
                .memcache_message
                .clone()
                .unwrap_or_else(|| base.memcache_message.clone()),
        }
    }
}

/// Longest deny body or message accepted: a denial is held in memory per
/// denied request until the client acknowledges it.
pub const MAX_DENY_TEXT: usize = 4096;

/// A deny status: 200-599, and one that carries a body (not 204, 205, 304),
/// so the client's framing of the next response stays right.
pub fn check_http_status(s: &str) -> Result<u16, String> {
    let n: u16 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not an HTTP status code"))?;
    if !(200..=599).contains(&n) {
        return Err(format!("status {n} is outside 200-599"));
    }
    if matches!(n, 204 | 205 | 304) {
        return Err(format!("status {n} carries no body"));
    }
    Ok(n)
}

/// Headers the enforcer writes itself: framing and connection handling
/// must stay ours for the connection to stay usable.
const OWN_HEADERS: &[&str] = &[
    "content-length",
    "content-type",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "trailer",
    "te",
];

/// One extra header, `Name: value`.
pub fn check_http_header(s: &str) -> Result<(String, String), String> {
    let (name, value) = s
        .split_once(':')
        .ok_or_else(|| format!("{s:?} is not `Name: value`"))?;
    let name = name.trim();
    let tchar = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    if name.is_empty() || !name.chars().all(tchar) {
        return Err(format!("{name:?} is not a header name"));
    }
    if OWN_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
        return Err(format!("{name} is set by the enforcer"));
    }
    let value = value.trim();
    if value.chars().any(|c| c.is_control() && c != '\t') {
        return Err(format!("the value of {name} has control characters"));
    }
    Ok((name.to_string(), value.to_string()))
}

/// A content type: one line of printable text.
pub fn check_content_type(s: &str) -> Result<String, String> {
    let s = s.trim();
    if s.is_empty() || s.chars().any(|c| c.is_control()) {
        return Err(format!("{s:?} is not a content type"));
    }
    Ok(s.to_string())
}

/// A deny body: any text up to `MAX_DENY_TEXT` bytes.
pub fn check_http_body(s: &str) -> Result<String, String> {
    if s.len() > MAX_DENY_TEXT {
        return Err(format!("{} bytes, at most {MAX_DENY_TEXT}", s.len()));
    }
    Ok(s.to_string())
}

/// A memcached message: printable ASCII on one line (it ends the
/// `CLIENT_ERROR` line a client reads).
pub fn check_memcache_message(s: &str) -> Result<String, String> {
    if s.is_empty() || s.len() > 1024 {
        return Err("1 to 1024 characters".into());
    }
    if !s.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Err(format!("{s:?} is not printable ASCII on one line"));
    }
    Ok(s.to_string())
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
    /// The denial's contents, unless the denying policy sets its own.
    pub deny_reply: DenyReply,
    /// Publish ranges of known bytes (`Output::ranges`) for a shell that
    /// forwards them itself (docs/stream.md, "A kernel path for known bytes").
    pub kernel_path: bool,
    /// Bodies with fewer bytes still to come are not worth a range.
    pub kernel_path_min: u64,
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
            deny_reply: DenyReply::default(),
            kernel_path: false,
            kernel_path_min: 64 * 1024,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deny_reply_values_are_checked() {
        assert_eq!(check_http_status("451"), Ok(451));
        assert_eq!(check_http_status(" 200 "), Ok(200));
        for bad in ["99", "600", "204", "304", "205", "x", "-1", ""] {
            assert!(check_http_status(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            check_http_header("X-Denied-By: enforcer"),
            Ok(("X-Denied-By".into(), "enforcer".into()))
        );
        for bad in [
            "no colon",
            ": v",
            "Bad Name: v",
            "Content-Length: 5",
            "connection: close",
            "X: a\r\nInjected: yes",
        ] {
            assert!(check_http_header(bad).is_err(), "{bad:?}");
        }
        assert!(check_content_type("application/json").is_ok());
        assert!(check_content_type("text/plain\r\nX: y").is_err());
        assert!(check_http_body(&"x".repeat(MAX_DENY_TEXT)).is_ok());
        assert!(check_http_body(&"x".repeat(MAX_DENY_TEXT + 1)).is_err());
        assert!(check_memcache_message("not yours").is_ok());
        for bad in ["", "two\r\nlines", "tab\there", "caf\u{e9}"] {
            assert!(check_memcache_message(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn an_override_replaces_only_what_it_gives() {
        let base = DenyReply::default();
        let o = DenyReplyOverride {
            http_status: Some(451),
            memcache_message: Some("no".into()),
            ..Default::default()
        };
        let r = o.apply(&base);
        assert_eq!(
            (r.http_status, r.http_body.as_str()),
            (451, "Access denied")
        );
        assert_eq!(r.memcache_message, "no");
        assert!(DenyReplyOverride::default().is_empty() && !o.is_empty());
    }
}
