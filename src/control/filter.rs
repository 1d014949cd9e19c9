//! `observe` filters, Hubble-like: every given filter must match; a filter
//! given twice matches either value.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::dataplane::Observed;
use crate::log::{Decision, Subject};

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct Filter {
    /// allow, deny, audit.
    pub verdict: Vec<String>,
    /// `key` (present, any value) or `key=value`, on the source endpoint.
    pub from_label: Vec<String>,
    pub to_label: Vec<String>,
    /// http, memcache (L7 decisions), or tcp, udp, icmp (flow decisions and
    /// the L7 decisions carried over that transport).
    pub protocol: Vec<String>,
    pub http_method: Vec<String>,
    /// A regular expression matched against the whole path.
    pub http_path: Vec<String>,
    pub memcache_command: Vec<String>,
    /// One of the request's keys equals this.
    pub memcache_key: Vec<String>,
}

fn any_or_all<T>(want: &[T], f: impl Fn(&T) -> bool) -> bool {
    want.is_empty() || want.iter().any(f)
}

fn has_label(labels: &BTreeMap<String, String>, want: &str) -> bool {
    match want.split_once('=') {
        Some((k, v)) => labels.get(k).is_some_and(|x| x == v),
        None => labels.contains_key(want),
    }
}

fn transport(proto: u8) -> &'static str {
    match proto {
        6 => "tcp",
        17 => "udp",
        1 | 58 => "icmp",
        _ => "other",
    }
}

/// A filter with its path expressions compiled.
pub struct Compiled {
    f: Filter,
    paths: Vec<regex::Regex>,
}

impl Filter {
    pub fn compile(self) -> Result<Compiled, String> {
        let paths = self
            .http_path
            .iter()
            .map(|p| {
                regex::Regex::new(&format!("^(?:{p})$"))
                    .map_err(|e| format!("--http-path {p:?}: {e}"))
            })
            .collect::<Result<_, _>>()?;
        for v in &self.verdict {
            if !matches!(v.as_str(), "allow" | "deny" | "audit") {
                return Err(format!("--verdict {v:?}: expected allow, deny or audit"));
            }
        }
        Ok(Compiled { f: self, paths })
    }
}

impl Compiled {
    pub fn matches(&self, o: &Observed) -> bool {
        let f = &self.f;
        let ev = &o.event;
        let verdict = match ev.verdict {
            Decision::Allow => "allow",
            Decision::Deny => "deny",
            Decision::Audit => "audit",
        };
        let kind = match &ev.subject {
            Subject::Flow => None,
            Subject::Http { .. } => Some("http"),
            Subject::Memcache { .. } => Some("memcache"),
        };
        let tr = transport(ev.flow.proto);
        let l7_wanted = !f.http_method.is_empty()
            || !f.http_path.is_empty()
            || !f.memcache_command.is_empty()
            || !f.memcache_key.is_empty();
        if l7_wanted && kind.is_none() {
            return false;
        }
        let http_ok = match &ev.subject {
            Subject::Http { method, path, .. } => {
                any_or_all(&f.http_method, |m| m.eq_ignore_ascii_case(method))
                    && any_or_all(&self.paths, |r| r.is_match(path))
                    && f.memcache_command.is_empty()
                    && f.memcache_key.is_empty()
            }
            Subject::Memcache { command, keys } => {
                f.http_method.is_empty()
                    && f.http_path.is_empty()
                    && any_or_all(&f.memcache_command, |c| c.eq_ignore_ascii_case(command))
                    && any_or_all(&f.memcache_key, |k| keys.iter().any(|x| x == k))
            }
            Subject::Flow => true,
        };
        http_ok
            && any_or_all(&f.verdict, |v| v == verdict)
            && any_or_all(&f.from_label, |l| has_label(&o.src_labels, l))
            && any_or_all(&f.to_label, |l| has_label(&o.dst_labels, l))
            && any_or_all(&f.protocol, |p| {
                let p = p.to_ascii_lowercase();
                Some(p.as_str()) == kind || p == tr
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::{Event, FlowTuple};

    fn obs(subject: Subject, verdict: Decision, from: &[(&str, &str)]) -> Observed {
        Observed {
            event: Event {
                time_ns: 0,
                worker: 0,
                flow: FlowTuple {
                    src: "10.66.0.12".parse().unwrap(),
                    dst: "10.66.0.2".parse().unwrap(),
                    proto: 6,
                    sport: 40000,
                    dport: 80,
                },
                subject,
                verdict,
                rule: None,
                reason: None,
            },
            unix_ms: 0,
            src_identity: "x-wing".into(),
            dst_identity: "server".into(),
            src_labels: from
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            dst_labels: [("org".to_string(), "empire".to_string())].into(),
        }
    }

    fn get(path: &str) -> Subject {
        Subject::Http {
            method: "GET".into(),
            host: "deathstar".into(),
            path: path.into(),
        }
    }

    #[test]
    fn every_given_filter_must_match_and_repeats_are_alternatives() {
        let e = obs(get("/v1/"), Decision::Allow, &[("org", "alliance")]);
        let mc = obs(
            Subject::Memcache {
                command: "get",
                keys: ["awing-coord"].into_iter().collect(),
            },
            Decision::Deny,
            &[("org", "alliance")],
        );
        let flow = obs(Subject::Flow, Decision::Allow, &[]);
        let m = |f: Filter, o: &Observed| f.compile().unwrap().matches(o);
        assert!(m(Filter::default(), &e));
        let verdict = |v: &[&str]| Filter {
            verdict: v.iter().map(|s| s.to_string()).collect(),
            ..Filter::default()
        };
        assert!(m(verdict(&["allow"]), &e) && !m(verdict(&["deny"]), &e));
        assert!(m(verdict(&["deny", "allow"]), &e));
        let from = |l: &str| Filter {
            from_label: vec![l.into()],
            ..Filter::default()
        };
        assert!(m(from("org"), &e) && m(from("org=alliance"), &e));
        assert!(!m(from("org=empire"), &e) && !m(from("org"), &flow));
        let to = Filter {
            to_label: vec!["org=empire".into()],
            ..Filter::default()
        };
        assert!(m(to, &flow));
        let path = |p: &str| Filter {
            http_path: vec![p.into()],
            ..Filter::default()
        };
        assert!(m(path("/v1/.*"), &e) && !m(path("/v1"), &e));
        assert!(!m(path(".*"), &mc) && !m(path(".*"), &flow));
        let proto = |p: &str| Filter {
            protocol: vec![p.into()],
            ..Filter::default()
        };
        assert!(m(proto("http"), &e) && !m(proto("memcache"), &e));
        assert!(m(proto("tcp"), &flow) && m(proto("tcp"), &mc));
        let key = |k: &str| Filter {
            memcache_key: vec![k.into()],
            memcache_command: vec!["GET".into()],
            ..Filter::default()
        };
        assert!(m(key("awing-coord"), &mc) && !m(key("xwing-coord"), &mc));
        assert!(!m(key("awing-coord"), &e));
        let meth = Filter {
            http_method: vec!["put".into()],
            ..Filter::default()
        };
        assert!(!m(meth, &e));
        assert!(verdict(&["maybe"]).compile().is_err());
        assert!(path("(").compile().is_err());
    }
}
