//! Verdict log: one event per decision, written as JSON lines by the shells.

use serde::Serialize;
use std::net::IpAddr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    Allow,
    Deny,
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
        method: String,
        host: String,
        path: String,
    },
    Memcache {
        command: String,
        keys: Vec<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Event {
    /// Nanoseconds, on the clock the shell passed in.
    pub time_ns: u64,
    pub worker: u16,
    pub flow: FlowTuple,
    pub src_identity: String,
    pub dst_identity: String,
    #[serde(flatten)]
    pub subject: Subject,
    pub verdict: Decision,
    /// Which rule matched ("policy-name/ingress[0]/rules[1]") for allows.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// Why, for denies.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl Event {
    pub fn to_json_line(&self) -> String {
        let mut s = serde_json::to_string(self).unwrap_or_else(|_| "{}".into());
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
            src_identity: "a-wing".into(),
            dst_identity: "server".into(),
            subject: Subject::Flow,
            verdict: Decision::Deny,
            rule: None,
            reason: Some("no rule".into()),
        };
        let line = ev.to_json_line();
        assert!(line.ends_with('\n') && line.matches('\n').count() == 1);
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["kind"], "flow");
        assert_eq!(v["verdict"], "deny");
        assert_eq!(v["flow"]["dst"], "fd66::2");
        assert_eq!(v["reason"], "no rule");
        assert!(v.get("rule").is_none());
    }
}
