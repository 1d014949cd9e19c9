//! HTTP/1.x: request parser (smuggling shapes refused), response framing,
//! chunked decoding, Cilium's `rules.http` matching and the 403 reply.

use serde::Deserialize;

/// `rules.http[]` item as written in a CiliumNetworkPolicy.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpRuleSpec {
    pub method: Option<String>,
    pub path: Option<String>,
    pub host: Option<String>,
    #[serde(default)]
    pub headers: Vec<String>,
    #[serde(default)]
    pub header_matches: Vec<HeaderMatchSpec>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HeaderMatchSpec {
    pub name: String,
    pub value: Option<String>,
    /// LOG, ADD, DELETE, REPLACE; absent means a mismatch denies.
    pub mismatch: Option<String>,
    pub secret: Option<serde_yaml::Value>,
}

/// A compiled rule: regexes are anchored and compiled once.
#[derive(Debug, Clone)]
pub struct HttpRule {}

/// Error in a rule; `field` is relative to the rule ("path", "headerMatches[0].mismatch").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleError {
    pub field: String,
    pub message: String,
}

impl HttpRule {
    pub fn compile(spec: &HttpRuleSpec) -> Result<HttpRule, RuleError> {
        let _ = spec;
        todo!("HttpRule::compile")
    }
}
