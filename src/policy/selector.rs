//! Label selectors (Kubernetes semantics) over endpoint labels.

use std::collections::BTreeMap;

use super::spec::{LabelValue, Selector};

pub type Labels = BTreeMap<String, String>;

/// Cilium writes labels with a source prefix (`k8s:app`, `any:app`); the
/// Endpoints document has no sources, so the prefix is dropped.
pub fn normalize_key(k: &str) -> String {
    for p in ["k8s:", "any:", "container:", "unspec:"] {
        if let Some(rest) = k.strip_prefix(p) {
            return rest.to_string();
        }
    }
    k.to_string()
}

/// `key=value` per label, or `key` alone for an empty value.
pub fn label_texts<'a>(labels: impl Iterator<Item = (&'a String, &'a String)>) -> Vec<String> {
    labels
        .map(|(k, v)| {
            if v.is_empty() {
                k.clone()
            } else {
                format!("{k}={v}")
            }
        })
        .collect()
}

pub fn normalize(labels: &BTreeMap<String, LabelValue>) -> Labels {
    labels
        .iter()
        .map(|(k, v)| (normalize_key(k), v.as_string()))
        .collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompiledSelector {
    labels: Vec<(String, String)>,
    exprs: Vec<(String, Op, Vec<String>)>,
}

/// A selector error: the field below the selector and what is wrong.
pub type SelError = (String, String);

impl CompiledSelector {
    pub fn compile(s: &Selector) -> Result<CompiledSelector, SelError> {
        let labels = s
            .match_labels
            .iter()
            .map(|(k, v)| (normalize_key(k), v.as_string()))
            .collect();
        let mut exprs = Vec::new();
        for (i, e) in s.match_expressions.iter().enumerate() {
            let op = match e.operator.as_str() {
                "In" => Op::In,
                "NotIn" => Op::NotIn,
                "Exists" => Op::Exists,
                "DoesNotExist" => Op::DoesNotExist,
                o => {
                    return Err((
                        format!("matchExpressions[{i}].operator"),
                        format!("unknown operator {o:?} (In, NotIn, Exists, DoesNotExist)"),
                    ))
                }
            };
            let values: Vec<String> = e.values.iter().map(|v| v.as_string()).collect();
            match op {
                Op::In | Op::NotIn if values.is_empty() => {
                    return Err((
                        format!("matchExpressions[{i}].values"),
                        format!("{} needs values", e.operator),
                    ))
                }
                Op::Exists | Op::DoesNotExist if !values.is_empty() => {
                    return Err((
                        format!("matchExpressions[{i}].values"),
                        format!("{} takes no values", e.operator),
                    ))
                }
                _ => {}
            }
            exprs.push((normalize_key(&e.key), op, values));
        }
        Ok(CompiledSelector { labels, exprs })
    }

    /// `{}`: selects every endpoint.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty() && self.exprs.is_empty()
    }

    pub fn matches(&self, l: &Labels) -> bool {
        self.labels.iter().all(|(k, v)| l.get(k) == Some(v))
            && self.exprs.iter().all(|(k, op, vals)| match op {
                Op::In => l.get(k).is_some_and(|v| vals.contains(v)),
                Op::NotIn => l.get(k).is_none_or(|v| !vals.contains(v)),
                Op::Exists => l.contains_key(k),
                Op::DoesNotExist => !l.contains_key(k),
            })
    }

    pub fn describe(&self) -> String {
        let mut parts = label_texts(self.labels.iter().map(|(k, v)| (k, v)));
        for (k, op, vals) in &self.exprs {
            parts.push(match op {
                Op::In => format!("{k} in ({})", vals.join(",")),
                Op::NotIn => format!("{k} notin ({})", vals.join(",")),
                Op::Exists => k.clone(),
                Op::DoesNotExist => format!("!{k}"),
            });
        }
        if parts.is_empty() {
            "{}".into()
        } else {
            parts.join(",")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::spec::Expression;

    fn labels(p: &[(&str, &str)]) -> Labels {
        p.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn sel(ml: &[(&str, &str)], ex: &[(&str, &str, &[&str])]) -> CompiledSelector {
        let s = Selector {
            match_labels: ml
                .iter()
                .map(|(k, v)| (k.to_string(), LabelValue::Str(v.to_string())))
                .collect(),
            match_expressions: ex
                .iter()
                .map(|(k, o, v)| Expression {
                    key: k.to_string(),
                    operator: o.to_string(),
                    values: v.iter().map(|s| LabelValue::Str(s.to_string())).collect(),
                })
                .collect(),
        };
        CompiledSelector::compile(&s).unwrap()
    }

    #[test]
    fn match_labels_with_prefixes() {
        let l = labels(&[("app", "a-wing"), ("org", "alliance")]);
        assert!(sel(&[("k8s:app", "a-wing")], &[]).matches(&l));
        assert!(sel(&[("any:org", "alliance"), ("app", "a-wing")], &[]).matches(&l));
        assert!(!sel(&[("app", "x-wing")], &[]).matches(&l));
        assert!(sel(&[], &[]).matches(&l));
        assert!(sel(&[], &[]).is_empty());
    }

    #[test]
    fn every_operator() {
        let l = labels(&[("app", "a-wing"), ("tier", "front")]);
        assert!(sel(&[], &[("app", "In", &["a-wing", "x-wing"])]).matches(&l));
        assert!(!sel(&[], &[("app", "In", &["x-wing"])]).matches(&l));
        assert!(sel(&[], &[("app", "NotIn", &["x-wing"])]).matches(&l));
        assert!(!sel(&[], &[("app", "NotIn", &["a-wing"])]).matches(&l));
        assert!(sel(&[], &[("missing", "NotIn", &["x"])]).matches(&l));
        assert!(sel(&[], &[("tier", "Exists", &[])]).matches(&l));
        assert!(!sel(&[], &[("db", "Exists", &[])]).matches(&l));
        assert!(sel(&[], &[("db", "DoesNotExist", &[])]).matches(&l));
        assert!(!sel(&[], &[("tier", "DoesNotExist", &[])]).matches(&l));
    }

    #[test]
    fn bad_operators_and_values_are_errors() {
        let mk = |op: &str, vals: Vec<&str>| Selector {
            match_labels: Default::default(),
            match_expressions: vec![Expression {
                key: "a".into(),
                operator: op.into(),
                values: vals
                    .into_iter()
                    .map(|s| LabelValue::Str(s.into()))
                    .collect(),
            }],
        };
        let e = CompiledSelector::compile(&mk("Equals", vec!["x"])).unwrap_err();
        assert_eq!(e.0, "matchExpressions[0].operator");
        assert_eq!(
            CompiledSelector::compile(&mk("In", vec![])).unwrap_err().0,
            "matchExpressions[0].values"
        );
        assert_eq!(
            CompiledSelector::compile(&mk("Exists", vec!["x"]))
                .unwrap_err()
                .0,
            "matchExpressions[0].values"
        );
    }
}
