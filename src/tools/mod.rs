//! Operator tools over a capture, shells above the engine and `replay`:
//! `compare` (what changes under another policy) and `suggest` (the
//! least-privilege policy for observed traffic). Both run the same engine
//! the dataplane runs, so what they report is what enforcement would do.

pub mod compare;
pub mod suggest;

use std::net::IpAddr;

use crate::log::{Decision, Event, FlowTuple, Subject};

/// Where a decision stands in its capture: the flow (its 5-tuple, and the
/// how-many-th connection on that 5-tuple) and, for an L7 decision, the
/// request's index within the connection. Two runs over one capture agree
/// on these keys even where their byte streams differ.
/// A flow's 5-tuple as its initiator sends: src, dst, protocol, ports.
pub type Tuple = (IpAddr, IpAddr, u8, u16, u16);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DecisionKey {
    pub tuple: Tuple,
    pub conn: u32,
    /// None: the flow's own (L3/L4) decision.
    pub request: Option<u32>,
}

/// Numbers the decisions of one run as they are made (see `DecisionKey`).
#[derive(Default)]
pub struct Keyer {
    /// Per 5-tuple: its current connection number, and the next request index.
    flows: std::collections::HashMap<Tuple, (u32, u32)>,
}

pub fn tuple_of(f: &FlowTuple) -> Tuple {
    (f.src, f.dst, f.proto, f.sport, f.dport)
}

impl Keyer {
    pub fn key(&mut self, ev: &Event) -> DecisionKey {
        let tuple = tuple_of(&ev.flow);
        let (conn, next) = self.flows.entry(tuple).or_insert((0, 0));
        match ev.subject {
            Subject::Flow => {
                *conn += 1;
                *next = 0;
                DecisionKey {
                    tuple,
                    conn: *conn,
                    request: None,
                }
            }
            _ => {
                *next += 1;
                DecisionKey {
                    tuple,
                    conn: *conn,
                    request: Some(*next - 1),
                }
            }
        }
    }
}

/// Whether the decision lets the traffic through: `audit` means the policy
/// would deny it.
pub fn passes(d: Decision) -> bool {
    d == Decision::Allow
}
