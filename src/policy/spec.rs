//! The documents as written: CiliumNetworkPolicy / CiliumClusterwideNetworkPolicy
//! (cilium.io/v2) and our Endpoints document. Unknown fields are errors, so a
//! typo never silently widens or narrows a policy.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::l7::http::HttpRuleSpec;
use crate::l7::memcache::MemcacheRuleSpec;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PolicyDoc {
    pub api_version: String,
    pub kind: String,
    #[serde(default)]
    pub metadata: Metadata,
    pub spec: Option<Rule>,
    pub specs: Option<Vec<Rule>>,
    /// Written back by Kubernetes; accepted and ignored.
    pub status: Option<serde_yaml::Value>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Metadata {
    #[serde(default)]
    pub name: String,
    pub namespace: Option<String>,
    // labels, annotations, uid, ...: not ours to judge.
    #[serde(flatten)]
    pub _other: BTreeMap<String, serde_yaml::Value>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Rule {
    pub endpoint_selector: Option<Selector>,
    pub node_selector: Option<Selector>,
    pub ingress: Option<Vec<IngressRule>>,
    pub ingress_deny: Option<Vec<IngressRule>>,
    pub egress: Option<Vec<EgressRule>>,
    pub egress_deny: Option<Vec<EgressRule>>,
    pub enable_default_deny: Option<DefaultDeny>,
    pub description: Option<String>,
    pub labels: Option<serde_yaml::Value>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DefaultDeny {
    pub ingress: Option<bool>,
    pub egress: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Selector {
    #[serde(default)]
    pub match_labels: BTreeMap<String, LabelValue>,
    #[serde(default)]
    pub match_expressions: Vec<Expression>,
}

/// Label values are strings, but YAML users write `version: 2` or `enabled: true`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum LabelValue {
    Str(String),
    Int(i64),
    Bool(bool),
    Null(()),
}

impl LabelValue {
    pub fn as_string(&self) -> String {
        match self {
            LabelValue::Str(s) => s.clone(),
            LabelValue::Int(i) => i.to_string(),
            LabelValue::Bool(b) => b.to_string(),
            LabelValue::Null(()) => String::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Expression {
    pub key: String,
    pub operator: String,
    #[serde(default)]
    pub values: Vec<LabelValue>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct IngressRule {
    pub from_endpoints: Option<Vec<Selector>>,
    pub from_entities: Option<Vec<String>>,
    #[serde(rename = "fromCIDR")]
    pub from_cidr: Option<Vec<String>>,
    #[serde(rename = "fromCIDRSet")]
    pub from_cidr_set: Option<Vec<CidrSet>>,
    pub from_requires: Option<Vec<Selector>>,
    pub to_ports: Option<Vec<PortRule>>,
    pub icmps: Option<Vec<IcmpRule>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EgressRule {
    pub to_endpoints: Option<Vec<Selector>>,
    pub to_entities: Option<Vec<String>>,
    #[serde(rename = "toCIDR")]
    pub to_cidr: Option<Vec<String>>,
    #[serde(rename = "toCIDRSet")]
    pub to_cidr_set: Option<Vec<CidrSet>>,
    pub to_requires: Option<Vec<Selector>>,
    pub to_ports: Option<Vec<PortRule>>,
    pub icmps: Option<Vec<IcmpRule>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CidrSet {
    pub cidr: Option<String>,
    #[serde(default)]
    pub except: Vec<String>,
    pub cidr_group_ref: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PortRule {
    #[serde(default)]
    pub ports: Vec<PortProtocol>,
    pub rules: Option<L7Rules>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PortProtocol {
    pub port: Option<PortValue>,
    pub end_port: Option<i64>,
    pub protocol: Option<String>,
}

/// `port: 80` or `port: "80"` (or a named port, which we reject with a clear error).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum PortValue {
    Num(i64),
    Str(String),
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct L7Rules {
    pub http: Option<Vec<HttpRuleSpec>>,
    pub l7proto: Option<String>,
    pub l7: Option<Vec<MemcacheRuleSpec>>,
    pub kafka: Option<serde_yaml::Value>,
    pub dns: Option<serde_yaml::Value>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IcmpRule {
    #[serde(default)]
    pub fields: Vec<IcmpField>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IcmpField {
    #[serde(rename = "type")]
    pub kind: PortValue,
    pub family: Option<String>,
}

/// `kind: Endpoints`: who is who.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EndpointsDoc {
    pub api_version: Option<String>,
    pub kind: String,
    #[serde(default)]
    pub endpoints: Vec<EndpointSpec>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EndpointSpec {
    pub name: String,
    #[serde(default)]
    pub labels: BTreeMap<String, LabelValue>,
    #[serde(default)]
    pub addresses: Vec<String>,
    /// This endpoint is the host the enforcer runs on (the `host` entity,
    /// `reserved:host`); host mode protects its addresses.
    #[serde(default)]
    pub host: bool,
}
