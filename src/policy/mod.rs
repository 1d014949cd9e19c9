//! Policies: CiliumNetworkPolicy YAML and the Endpoints document, loaded,
//! validated (errors name file, line and field) and compiled once into an
//! immutable `Policy` that workers share read-only.

pub mod annotations;
pub mod check;
pub mod compile;
mod describe;
mod eval;
pub mod legacy;
pub mod load;
pub mod locate;
pub mod model;
pub mod selector;
pub mod spec;

use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, LazyLock};

use crate::config::DenyReplyOverride;
use crate::l7::http::HttpRule;
use crate::l7::memcache::MemcacheRule;

/// IP protocol as policy sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Proto {
    Tcp,
    Udp,
    Icmp,
    Other(u8),
}

impl Proto {
    pub fn from_ip_proto(p: u8) -> Proto {
        match p {
            6 => Proto::Tcp,
            17 => Proto::Udp,
            1 | 58 => Proto::Icmp,
            o => Proto::Other(o),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum L7Proto {
    Http,
    Memcache,
}

/// One L7 rule of a protocol's own rule type `R`, with a stable name for
/// logs ("secure-fleet/ingress[0]/l7[1]").
#[derive(Debug, Clone)]
pub struct NamedRule<R> {
    /// Shared with every log event of a request it allowed.
    pub name: Arc<str>,
    pub rule: R,
}

/// One port's rules of one protocol, compiled once and shared by every flow
/// they apply to.
pub type RuleList<R> = Arc<[NamedRule<R>]>;

/// One port's L7 rule list. Its protocol is its type: a list cannot mix
/// protocols.
#[derive(Debug, Clone)]
pub enum L7Rules {
    Http(RuleList<HttpRule>),
    Memcache(RuleList<MemcacheRule>),
}

impl L7Rules {
    pub fn proto(&self) -> L7Proto {
        match self {
            L7Rules::Http(_) => L7Proto::Http,
            L7Rules::Memcache(_) => L7Proto::Memcache,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            L7Rules::Http(r) => r.len(),
            L7Rules::Memcache(r) => r.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The L7 rules of one enforcement point (ingress at the destination, or
/// egress at the source) for a flow: a request passes the stage when any
/// rule of any of its lists matches, or when `allow_all` (an L4-only rule
/// also covers the port, or the rule list is empty). The lists are the
/// ports' own, shared, not copied per flow.
#[derive(Debug, Clone)]
pub struct L7Stage<R> {
    pub allow_all: bool,
    pub lists: Vec<RuleList<R>>,
    /// The stage's endpoint is in audit mode: a request no list allows
    /// passes, flagged (`L7Verdict::audit`).
    pub audit: bool,
    /// The deny reply of the policy whose rules make this stage (the first
    /// in load order that sets one), for the requests the stage denies.
    pub deny_reply: Option<Arc<DenyReplyOverride>>,
}

impl<R> Default for L7Stage<R> {
    fn default() -> Self {
        L7Stage {
            allow_all: false,
            lists: Vec::new(),
            audit: false,
            deny_reply: None,
        }
    }
}

/// A flow's L7 rules for protocol rule type `R`: a request is allowed only
/// when every stage allows it.
#[derive(Debug, Clone)]
pub struct RuleSet<R> {
    pub stages: Vec<L7Stage<R>>,
}

impl<R> Default for RuleSet<R> {
    fn default() -> Self {
        RuleSet { stages: Vec::new() }
    }
}

/// L7 policy of a flow: the rule set of exactly one protocol, so a request
/// can only ever meet rules of its own protocol.
#[derive(Debug, Clone)]
pub enum L7Policy {
    Http(Arc<RuleSet<HttpRule>>),
    Memcache(Arc<RuleSet<MemcacheRule>>),
}

impl L7Policy {
    pub fn proto(&self) -> L7Proto {
        match self {
            L7Policy::Http(_) => L7Proto::Http,
            L7Policy::Memcache(_) => L7Proto::Memcache,
        }
    }

    /// How many rules each stage holds (for `check` and tests).
    pub fn rules_per_stage(&self) -> Vec<usize> {
        match self {
            L7Policy::Http(s) => s.rules_per_stage(),
            L7Policy::Memcache(s) => s.rules_per_stage(),
        }
    }
}

/// Result of matching a request against a `RuleSet`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct L7Verdict {
    pub allowed: bool,
    /// Matched rule names (allows) or a reason (denies).
    pub detail: Arc<str>,
    /// Allowed only by a stage in audit mode; `detail` says why it would
    /// have been denied.
    pub audit: bool,
    /// Denied by a stage whose policy sets its own deny reply.
    pub deny_reply: Option<Arc<DenyReplyOverride>>,
}

impl<R> RuleSet<R> {
    pub fn rules_per_stage(&self) -> Vec<usize> {
        let count = |st: &L7Stage<R>| st.lists.iter().map(|l| l.len()).sum();
        self.stages.iter().map(count).collect()
    }

    /// Apply `matches` (true when a rule accepts the request) over all stages.
    /// An allowed request matched by one stage (the common case) costs no
    /// allocation: its detail is the rule's own shared name.
    pub fn decide(&self, mut matches: impl FnMut(&R) -> bool) -> L7Verdict {
        static NO_MATCH: LazyLock<Arc<str>> = LazyLock::new(|| "no L7 rule matches".into());
        static ALLOW_ALL: LazyLock<Arc<str>> = LazyLock::new(|| "allow-all".into());
        let mut first: Option<&Arc<str>> = None;
        let mut more: Vec<&str> = Vec::new();
        let mut audited = false;
        for st in &self.stages {
            if st.allow_all {
                continue;
            }
            match st
                .lists
                .iter()
                .flat_map(|l| l.iter())
                .find(|r| matches(&r.rule))
            {
                Some(r) if first.is_none() => first = Some(&r.name),
                Some(r) => more.push(&r.name),
                // Other stages may still deny it for real.
                None if st.audit => audited = true,
                None => {
                    return L7Verdict {
                        allowed: false,
                        detail: NO_MATCH.clone(),
                        audit: false,
                        deny_reply: st.deny_reply.clone(),
                    };
                }
            }
        }
        if audited {
            return L7Verdict {
                allowed: true,
                detail: NO_MATCH.clone(),
                audit: true,
                deny_reply: None,
            };
        }
        let detail = match first {
            None => ALLOW_ALL.clone(),
            Some(n) if more.is_empty() => n.clone(),
            Some(n) => {
                let mut all = n.to_string();
                for m in more {
                    all.push(',');
                    all.push_str(m);
                }
                all.into()
            }
        };
        L7Verdict {
            allowed: true,
            detail,
            audit: false,
            deny_reply: None,
        }
    }
}

/// The L3/L4 decision for a new flow.
#[derive(Debug, Clone)]
pub struct FlowDecision {
    pub allowed: bool,
    /// Rule names that allowed it, or why it was denied.
    pub detail: String,
    /// Set when the destination port carries L7 rules (either direction's).
    pub l7: Option<L7Policy>,
    /// Audit mode: allowed only because the point that denies it is in
    /// audit mode; why it would have been denied.
    pub audit: Option<String>,
}

/// A compiled policy set. Immutable; share it with `Arc`.
pub struct Policy {
    model: model::Model,
    warnings: Vec<PolicyError>,
    rule_files: Vec<String>,
}

impl Default for Policy {
    /// No endpoints, no rules: nothing is enforced.
    fn default() -> Self {
        Policy {
            model: model::Model::new(Vec::new(), Vec::new()),
            warnings: Vec::new(),
            rule_files: Vec::new(),
        }
    }
}

impl std::fmt::Debug for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policy")
            .field("endpoints", &self.model.endpoints.len())
            .field("rules", &self.model.rules.len())
            .finish()
    }
}

/// A load/validation error that says where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    pub file: String,
    pub line: Option<usize>,
    /// Dotted path of the offending field, e.g. `spec.ingress[0].toPorts[0].ports[0].port`.
    pub field: Option<String>,
    pub message: String,
}

impl std::fmt::Display for PolicyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(l) = self.line {
            write!(f, ":{l}")?;
        }
        if let Some(fd) = &self.field {
            write!(f, ": {fd}")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for PolicyError {}

impl Policy {
    fn from_loaded(l: load::Loaded) -> Policy {
        Policy {
            model: l.model,
            warnings: l.warnings,
            rule_files: l.rule_files,
        }
    }

    /// Load a YAML file or a directory of them (multi-document YAML accepted).
    pub fn load(path: &Path) -> Result<Policy, Vec<PolicyError>> {
        load::load_path(path).map(Policy::from_loaded)
    }

    /// Load for host mode on a machine with addresses `host`: the endpoint
    /// claiming them is the host endpoint (see `host_endpoint`).
    pub fn load_on_host(path: &Path, host: &[IpAddr]) -> Result<Policy, Vec<PolicyError>> {
        load::load_path_on(path, Some(host)).map(Policy::from_loaded)
    }

    /// `from_sources` for host mode.
    pub fn from_sources_on_host(
        sources: &[(String, String)],
        host: &[IpAddr],
    ) -> Result<Policy, Vec<PolicyError>> {
        load::load_sources_on(sources, Some(host)).map(Policy::from_loaded)
    }

    /// The host endpoint owning one of `addrs` (this machine's addresses),
    /// and whether any rule selects it.
    pub fn host_endpoint(&self, addrs: &[IpAddr]) -> Option<(usize, bool)> {
        let i = addrs
            .iter()
            .filter_map(|a| self.model.ident(*a))
            .find(|&i| self.model.endpoints[i].host)?;
        let selected = self.model.rules.iter().any(|r| r.subject_ids.contains(&i));
        Some((i, selected))
    }

    /// Load from text; `file` names it in errors.
    pub fn from_str(file: &str, text: &str) -> Result<Policy, Vec<PolicyError>> {
        load::load_sources(&[(file.to_string(), text.to_string())]).map(Policy::from_loaded)
    }

    /// Load several named texts as one set (endpoints in one, policies in another).
    pub fn from_sources(sources: &[(String, String)]) -> Result<Policy, Vec<PolicyError>> {
        load::load_sources(sources).map(Policy::from_loaded)
    }

    /// L3/L4 verdict for a new flow `src → dst` on `proto`/`dport` (the ICMP
    /// type for ICMP). Cilium semantics: ingress at dst, egress at src, deny wins.
    pub fn decide(&self, src: IpAddr, dst: IpAddr, proto: Proto, dport: u16) -> FlowDecision {
        self.model.decide(src, dst, proto, dport)
    }

    /// Endpoint name of an address for logs ("world" when no endpoint has it).
    pub fn identity(&self, ip: IpAddr) -> &str {
        match self.model.ident(ip) {
            Some(i) => &self.model.endpoints[i].name,
            None => "world",
        }
    }

    /// Warnings found while loading (selectors that select nothing, ...).
    pub fn warnings(&self) -> &[PolicyError] {
        &self.warnings
    }

    pub fn model(&self) -> &model::Model {
        &self.model
    }

    /// The file each compiled rule came from (parallel to `model().rules`).
    pub fn rule_files(&self) -> &[String] {
        &self.rule_files
    }

    /// Addresses of the host endpoint (host mode protects them).
    pub fn host_addresses(&self) -> Vec<ipnet::IpNet> {
        self.model
            .endpoints
            .iter()
            .filter(|e| e.host)
            .flat_map(|e| e.nets.iter().copied())
            .collect()
    }
}
impl crate::log::Identities for Policy {
    fn identity(&self, ip: IpAddr) -> &str {
        Policy::identity(self, ip)
    }
}

#[cfg(test)]
mod tests;
