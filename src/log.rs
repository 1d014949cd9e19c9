//! Verdict log: one event per decision, written as JSON lines by the shells.
//!
//! An event names its flow by addresses only. The endpoint names a reader
//! wants ("a-wing", "world") are looked up from those addresses when the
//! event is written (`to_json_line`, given the policy the event was decided
//! under), so the layers that make events need no policy, and a busy L7
//! connection pays for names only when it logs.

use serde::Serialize;
use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    Allow,
    Deny,
    /// Audit mode: would have been denied (`reason`), forwarded.
    Audit,
}

/// The 5-tuple as seen by the initiator of the flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct FlowTuple {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: u8,
    pub sport: u16,
    pub dport: u16,
}

/// What the decision was about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Subject {
    /// A new flow judged by L3/L4 policy.
    Flow,
    Http {
        /// The standard methods are static: no allocation per request.
        method: Cow<'static, str>,
        host: String,
        path: String,
    },
    Memcache {
        command: &'static str,
        keys: Vec<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Event {
    /// Nanoseconds, on the clock the shell passed in.
    pub time_ns: u64,
    pub worker: u16,
    pub flow: FlowTuple,
    #[serde(flatten)]
    pub subject: Subject,
    pub verdict: Decision,
    /// Which rule matched ("policy-name/ingress[0]/rules[1]") for allows.
    /// Shared with the compiled policy: an allowed request's event copies
    /// no name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<Arc<str>>,
    /// Why, for denies.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<Arc<str>>,
}

/// Endpoint names for addresses; the compiled policy is one.
pub trait Identities {
    /// The endpoint that owns `ip`, or "world".
    fn identity(&self, ip: IpAddr) -> &str;
}

/// An event as written: the event plus its endpoints' names.
#[derive(Serialize)]
struct Written<'a> {
    #[serde(flatten)]
    event: &'a Event,
    src_identity: &'a str,
    dst_identity: &'a str,
}

impl Event {
    /// One JSON line, endpoints named by `ids`.
    pub fn to_json_line(&self, ids: &dyn Identities) -> String {
        let w = Written {
            event: self,
            src_identity: ids.identity(self.flow.src),
            dst_identity: ids.identity(self.flow.dst),
        };
        let mut s = serde_json::to_string(&w).unwrap_or_else(|_| "{}".into());
        s.push('\n');
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flow_event_is_one_flat_json_line() {
        let ev = Event {
            time_ns: 5,
            worker: 1,
            flow: FlowTuple {
                src: "10.66.0.11".parse().unwrap(),
                dst: "fd66::2".parse().unwrap(),
                proto: 6,
                sport: 40000,
                dport: 80,
            },
            subject: Subject::Flow,
            verdict: Decision::Deny,
            rule: None,
            reason: Some("no rule".into()),
        };
        struct Names;
        impl Identities for Names {
            fn identity(&self, ip: IpAddr) -> &str {
                if ip.is_ipv4() {
                    "a-wing"
                } else {
                    "server"
                }
            }
        }
        let line = ev.to_json_line(&Names);
        assert!(line.ends_with('\n') && line.matches('\n').count() == 1);
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["kind"], "flow");
        assert_eq!(v["verdict"], "deny");
        assert_eq!(v["flow"]["dst"], "fd66::2");
        assert_eq!(v["reason"], "no rule");
        assert_eq!(v["src_identity"], "a-wing");
        assert_eq!(v["dst_identity"], "server");
        assert!(v.get("rule").is_none());
    }
}
