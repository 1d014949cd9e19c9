//! The 2017 policy format (`{"name", "rules": [{"coverage", "allow", "l4"}]}`),
//! converted into CiliumNetworkPolicy documents that go through the one
//! compile path. The conversion is also what `enforcer convert` prints.
//!
//! The 2017 model, as the Star Wars demo shows it, per covered endpoint:
//! * `allow` lists who may connect to it (L3), `reserved:host` is this host;
//! * `l4.in-ports` limit the ports it accepts, AND-ed with the L3 allow;
//!   ICMP was not subject to port rules (the demo pings a TCP/80-only
//!   deathstar), so echo stays allowed for the L3 peers;
//! * `l4.out-ports` limit the ports it may connect to, with L7 rules
//!   enforced there (egress), again with echo allowed.

pub mod expr;

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_yaml::{Mapping, Value};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LegacyDoc {
    pub name: String,
    #[serde(default)]
    pub rules: Vec<LegacyRule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LegacyRule {
    pub coverage: Vec<String>,
    #[serde(default)]
    pub allow: Vec<String>,
    #[serde(default)]
    pub l4: Vec<L4Filter>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct L4Filter {
    #[serde(rename = "in-ports")]
    pub in_ports: Option<Vec<LegacyPort>>,
    #[serde(rename = "out-ports")]
    pub out_ports: Option<Vec<LegacyPort>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LegacyPort {
    pub port: u16,
    pub protocol: Option<String>,
    #[serde(rename = "l7-parser")]
    pub l7_parser: Option<String>,
    #[serde(rename = "l7-rules")]
    pub l7_rules: Option<Vec<L7Expr>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct L7Expr {
    pub expr: String,
}

/// A conversion error: where (legacy path) and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LegacyError {
    pub field: String,
    pub message: String,
}

/// A legacy document is JSON with `name` and `rules` and no `kind`.
pub fn looks_legacy(v: &Value) -> bool {
    v.get("kind").is_none() && v.get("rules").is_some() && v.get("name").is_some()
}

const HOST: &str = "reserved:host";

fn s(x: &str) -> Value {
    Value::String(x.to_string())
}

fn map(pairs: Vec<(&str, Value)>) -> Value {
    let mut m = Mapping::new();
    for (k, v) in pairs {
        m.insert(s(k), v);
    }
    Value::Mapping(m)
}

/// `["id.spaceship"]` → `{matchLabels: {id.spaceship: ""}}`.
fn selector(labels: &[&String]) -> Value {
    let mut ml = Mapping::new();
    for l in labels {
        ml.insert(s(l), s(""));
    }
    map(vec![("matchLabels", Value::Mapping(ml))])
}

/// Peer fields for the `allow` labels: each label is a peer of its own (the
/// 2017 `allow` list was a union), `reserved:host` the host entity.
fn peers(allow: &[String], dir_endpoints: &str, dir_entities: &str) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    let eps: Vec<Value> = allow
        .iter()
        .filter(|l| *l != HOST)
        .map(|l| selector(&[l]))
        .collect();
    if !eps.is_empty() {
        out.push((dir_endpoints.to_string(), Value::Sequence(eps)));
    }
    if allow.iter().any(|l| l == HOST) {
        out.push((dir_entities.to_string(), Value::Sequence(vec![s("host")])));
    }
    out
}

fn echo_icmps() -> Value {
    let f = |t: u64, fam: &str| map(vec![("type", Value::Number(t.into())), ("family", s(fam))]);
    Value::Sequence(vec![map(vec![(
        "fields",
        Value::Sequence(vec![f(8, "IPv4"), f(128, "IPv6")]),
    )])])
}

fn to_ports(ports: &[(&LegacyPort, String)]) -> Result<Value, LegacyError> {
    let mut out = Vec::new();
    for (p, at) in ports {
        let proto = p.protocol.as_deref().unwrap_or("tcp").to_ascii_uppercase();
        let mut pr = vec![(
            "ports",
            Value::Sequence(vec![map(vec![
                ("port", s(&p.port.to_string())),
                ("protocol", s(&proto)),
            ])]),
        )];
        match (p.l7_parser.as_deref(), &p.l7_rules) {
            (None, None) => {}
            (Some("http"), rules) => {
                let mut http = Vec::new();
                for (i, r) in rules.iter().flatten().enumerate() {
                    let specs = expr::to_rules(&r.expr).map_err(|e| LegacyError {
                        field: format!("{at}.l7-rules[{i}].expr"),
                        message: format!("column {}: {}", e.column, e.message),
                    })?;
                    for sp in specs {
                        let mut m = Vec::new();
                        if let Some(x) = sp.method {
                            m.push(("method", s(&x)));
                        }
                        if let Some(x) = sp.path {
                            m.push(("path", s(&x)));
                        }
                        if let Some(x) = sp.host {
                            m.push(("host", s(&x)));
                        }
                        if !sp.headers.is_empty() {
                            m.push((
                                "headers",
                                Value::Sequence(sp.headers.iter().map(|h| s(h)).collect()),
                            ));
                        }
                        http.push(map(m));
                    }
                }
                pr.push(("rules", map(vec![("http", Value::Sequence(http))])));
            }
            (Some(other), _) => {
                return Err(LegacyError {
                    field: format!("{at}.l7-parser"),
                    message: format!("unknown l7-parser {other:?} (http)"),
                })
            }
            (None, Some(_)) => {
                return Err(LegacyError {
                    field: format!("{at}.l7-rules"),
                    message: "l7-rules need l7-parser".into(),
                })
            }
        }
        out.push(map(pr));
    }
    Ok(Value::Sequence(out))
}

#[derive(Default)]
struct Covered<'a> {
    labels: Vec<&'a String>,
    allow: Vec<String>,
    in_ports: Vec<(&'a LegacyPort, String)>,
    out_ports: Vec<(&'a LegacyPort, String)>,
}

/// Convert one legacy document into CiliumNetworkPolicy documents (one per
/// covered label set, in first-seen order).
pub fn convert(doc: &LegacyDoc) -> Result<Vec<Value>, LegacyError> {
    let mut order: Vec<String> = Vec::new();
    let mut by_cov: BTreeMap<String, Covered<'_>> = BTreeMap::new();
    for (i, r) in doc.rules.iter().enumerate() {
        if r.coverage.is_empty() {
            return Err(LegacyError {
                field: format!("rules[{i}].coverage"),
                message: "coverage is empty".into(),
            });
        }
        if r.coverage.iter().any(|l| l == HOST) {
            return Err(LegacyError {
                field: format!("rules[{i}].coverage"),
                message: "covering reserved:host is not supported".into(),
            });
        }
        let mut key_labels: Vec<&String> = r.coverage.iter().collect();
        key_labels.sort();
        let key = key_labels
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(",");
        if !by_cov.contains_key(&key) {
            order.push(key.clone());
        }
        let c = by_cov.entry(key).or_default();
        c.labels = key_labels;
        for a in &r.allow {
            if !c.allow.contains(a) {
                c.allow.push(a.clone());
            }
        }
        for (j, f) in r.l4.iter().enumerate() {
            for (k, p) in f.in_ports.iter().flatten().enumerate() {
                c.in_ports
                    .push((p, format!("rules[{i}].l4[{j}].in-ports[{k}]")));
            }
            for (k, p) in f.out_ports.iter().flatten().enumerate() {
                c.out_ports
                    .push((p, format!("rules[{i}].l4[{j}].out-ports[{k}]")));
            }
        }
    }
    let mut docs = Vec::new();
    for (n, key) in order.iter().enumerate() {
        let c = &by_cov[key];
        let mut spec = vec![("endpointSelector", selector(&c.labels))];
        if !c.allow.is_empty() || !c.in_ports.is_empty() {
            let mut ingress = Vec::new();
            let from = peers(&c.allow, "fromEndpoints", "fromEntities");
            if c.in_ports.is_empty() {
                ingress.push(Value::Mapping(
                    from.iter().map(|(k, v)| (s(k), v.clone())).collect(),
                ));
            } else {
                let mut item: Mapping = from.iter().map(|(k, v)| (s(k), v.clone())).collect();
                item.insert(s("toPorts"), to_ports(&c.in_ports)?);
                ingress.push(Value::Mapping(item));
                let mut icmp: Mapping = from.iter().map(|(k, v)| (s(k), v.clone())).collect();
                icmp.insert(s("icmps"), echo_icmps());
                ingress.push(Value::Mapping(icmp));
            }
            spec.push(("ingress", Value::Sequence(ingress)));
        }
        if !c.out_ports.is_empty() {
            spec.push((
                "egress",
                Value::Sequence(vec![
                    map(vec![("toPorts", to_ports(&c.out_ports)?)]),
                    map(vec![("icmps", echo_icmps())]),
                ]),
            ));
        }
        let name = if order.len() == 1 {
            doc.name.clone()
        } else {
            format!("{}-{}", doc.name, n)
        };
        docs.push(map(vec![
            ("apiVersion", s("cilium.io/v2")),
            ("kind", s("CiliumNetworkPolicy")),
            ("metadata", map(vec![("name", s(&name))])),
            ("spec", map(spec)),
        ]));
    }
    Ok(docs)
}

/// `enforcer convert FILE`: the legacy file as CiliumNetworkPolicy YAML.
pub fn convert_file(path: &std::path::Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    let doc: LegacyDoc = serde_json::from_str(&text)
        .map_err(|e| format!("{}:{}: {}", path.display(), e.line(), e))?;
    let docs =
        convert(&doc).map_err(|e| format!("{}: {}: {}", path.display(), e.field, e.message))?;
    let mut out = format!("# converted from {} (2017 policy format)\n", path.display());
    for (i, d) in docs.iter().enumerate() {
        if i > 0 {
            out.push_str("---\n");
        }
        out.push_str(&serde_yaml::to_string(d).map_err(|e| e.to_string())?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HTTP_REAL: &str = r#"{
  "name": "root",
  "rules": [{
    "coverage": ["id.empire.deathstar"],
    "allow": ["id.spaceship", "reserved:host"]
  },{
    "coverage": ["id.spaceship"],
    "l4": [{
      "out-ports": [{
        "port": 80, "protocol": "tcp",
        "l7-parser": "http",
        "l7-rules": [
          { "expr": "Method(\"GET\") && Path(\"/v1/\")" },
          { "expr": "Method(\"POST\") && Path(\"/v1/request-landing\")" },
          { "expr": "Method(\"PUT\") && Header(\"X-Has-Force\", \"true\") && Path(\"/v1/exhaust-port\")" }
        ]
      }]
    }]
  }]
}"#;

    #[test]
    fn the_http_demo_becomes_ingress_l3_and_egress_l7() {
        let d: LegacyDoc = serde_json::from_str(HTTP_REAL).unwrap();
        let docs = convert(&d).unwrap();
        assert_eq!(docs.len(), 2);
        let y = serde_yaml::to_string(&docs[1]).unwrap();
        assert!(y.contains("egress:"), "{y}");
        assert!(y.contains("X-Has-Force: true"), "{y}");
        let y0 = serde_yaml::to_string(&docs[0]).unwrap();
        assert!(y0.contains("fromEntities:\n    - host"), "{y0}");
    }

    #[test]
    fn bad_expressions_and_parsers_name_the_field() {
        let bad = HTTP_REAL.replace(r#"Path(\"/v1/\")"#, r#"Path(\"/v1/\""#);
        let d: LegacyDoc = serde_json::from_str(&bad).unwrap();
        let e = convert(&d).unwrap_err();
        assert_eq!(e.field, "rules[1].l4[0].out-ports[0].l7-rules[0].expr");
        assert!(e.message.starts_with("column 29"), "{e:?}");
        let bad = HTTP_REAL.replace(r#""l7-parser": "http""#, r#""l7-parser": "kafka""#);
        let d: LegacyDoc = serde_json::from_str(&bad).unwrap();
        assert_eq!(
            convert(&d).unwrap_err().field,
            "rules[1].l4[0].out-ports[0].l7-parser"
        );
    }
}
