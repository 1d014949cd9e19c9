//! memcached text and binary protocols: request parsers, reply framing,
//! Cilium's command groups and key rules, and the protocol's denials.

use serde::Deserialize;

pub use crate::l7::http::RuleError;

/// `rules.l7[]` item under `l7proto: memcache`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MemcacheRuleSpec {
    pub command: Option<String>,
    pub key_exact: Option<String>,
    pub key_prefix: Option<String>,
    pub key_regex: Option<String>,
}

#[derive(Debug, Clone)]
pub struct MemcacheRule {}

impl MemcacheRule {
    /// Unknown command names and bad regexes are errors.
    pub fn compile(spec: &MemcacheRuleSpec) -> Result<MemcacheRule, RuleError> {
        let _ = spec;
        todo!("MemcacheRule::compile")
    }
}
