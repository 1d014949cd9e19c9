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
