//! `enforcer replay --policy NEW --compare OLD`: what changes if NEW replaces
//! OLD, decided over a capture.
//!
//! The output capture is NEW's replay, as `enforcer replay` writes it. The
//! comparison is a second pass with two engines side by side, one per
//! policy, each in audit mode: an engine that would deny a request logs it
//! (`audit`) and lets it through. That keeps both engines' byte streams
//! identical to the capture. Without it, a request denied in one run only
//! gets an injected denial there, the server's real reply to it (present in
//! the capture) is then taken for the reply to the next request, and from
//! that point the two runs no longer see the same conversation.
//!
//! Decisions are paired by `DecisionKey`: the flow's 5-tuple, the connection
//! on that 5-tuple, and the request's index within the connection. A
//! request one policy never judges (no L7 rules on its port, or its flow
//! denied at L3/L4) takes its flow's verdict on that side.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::sync::Arc;

use serde::Serialize;

use super::{passes, DecisionKey, Keyer};
use crate::config::EngineConfig;
use crate::engine::Engine;
use crate::log::{Event, FlowTuple, Identities, Subject};
use crate::replay::{self, ReplayArgs};

#[derive(Debug, Clone)]
pub struct CompareArgs {
    pub new: PathBuf,
    pub old: PathBuf,
    pub input: PathBuf,
    pub output: PathBuf,
    pub log: Option<PathBuf>,
    pub engine: EngineConfig,
}

/// One policy's outcome of a decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Outcome {
    pub verdict: &'static str,
    /// The rule that allows it, or why it is denied.
    pub because: String,
}

impl Outcome {
    fn passes(&self) -> bool {
        self.verdict == "allow"
    }
}

fn outcome_of(ev: &Event) -> Outcome {
    if passes(ev.verdict) {
        Outcome {
            verdict: "allow",
            because: ev.rule.as_deref().unwrap_or_default().to_string(),
        }
    } else {
        Outcome {
            verdict: "deny",
            because: ev.reason.as_deref().unwrap_or_default().to_string(),
        }
    }
}

/// A request one run never judged: its flow's verdict.
fn inferred(flow: Option<&Event>) -> Outcome {
    match flow {
        Some(f) if passes(f.verdict) => Outcome {
            verdict: "allow",
            because: format!(
                "no L7 rules on the port (flow allowed by {})",
                f.rule.as_deref().unwrap_or("")
            ),
        },
        Some(f) => Outcome {
            verdict: "deny",
            because: format!("flow denied: {}", f.reason.as_deref().unwrap_or("")),
        },
        None => Outcome {
            verdict: "allow",
            because: "flow not judged (picked up mid-stream)".into(),
        },
    }
}

/// A decision that differs, as printed and logged.
#[derive(Debug, Clone, Serialize)]
pub struct Change {
    pub time_ns: u64,
    pub flow: FlowTuple,
    pub src_identity: String,
    pub dst_identity: String,
    #[serde(flatten)]
    pub subject: Subject,
    /// Index of the request within its connection (absent: the flow's own decision).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request: Option<u32>,
    pub old: Outcome,
    pub new: Outcome,
    /// `newly-allowed` or `newly-denied`.
    pub change: &'static str,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub changed: u64,
    pub newly_allowed: u64,
    pub newly_denied: u64,
    pub total: u64,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} decisions changed ({} newly allowed, {} newly denied) of {}",
            self.changed, self.newly_allowed, self.newly_denied, self.total
        )
    }
}

fn request_text(s: &Subject) -> String {
    match s {
        Subject::Flow => "flow".into(),
        Subject::Http { method, host, path } => format!("http {method} {host}{path}"),
        Subject::Memcache { command, keys } => {
            let mut t = format!("memcache {command}");
            for k in keys {
                t.push(' ');
                t.push_str(k);
            }
            t
        }
    }
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let proto = match self.flow.proto {
            6 => "tcp".to_string(),
            17 => "udp".to_string(),
            1 | 58 => "icmp".to_string(),
            p => format!("proto {p}"),
        };
        let ep = |ip: std::net::IpAddr, port: u16| match ip {
            std::net::IpAddr::V6(_) => format!("[{ip}]:{port}"),
            _ => format!("{ip}:{port}"),
        };
        write!(
            f,
            "{} -> {} {proto} {} -> {}: {}: {} ({}) -> {} ({})",
            self.src_identity,
            self.dst_identity,
            ep(self.flow.src, self.flow.sport),
            ep(self.flow.dst, self.flow.dport),
            request_text(&self.subject),
            self.old.verdict,
            self.old.because,
            self.new.verdict,
            self.new.because,
        )
    }
}

/// The decisions of one run by key, and its flow decisions for inference.
#[derive(Default)]
struct Decisions {
    by_key: BTreeMap<DecisionKey, Event>,
    keyer: Keyer,
}

impl Decisions {
    fn add(&mut self, ev: &Event) {
        let k = self.keyer.key(ev);
        // A decision keyed twice (it cannot, short of a bug) keeps the first.
        self.by_key.entry(k).or_insert_with(|| ev.clone());
    }

    fn outcome(&self, k: &DecisionKey) -> Option<Outcome> {
        self.by_key.get(k).map(outcome_of)
    }

    fn inferred(&self, k: &DecisionKey) -> Outcome {
        let flow = DecisionKey {
            request: None,
            ..*k
        };
        inferred(self.by_key.get(&flow))
    }
}

/// Pairs both runs' decisions and lists those whose outcome differs, in
/// capture order.
fn changes(old: &Decisions, new: &Decisions, ids: &dyn Identities) -> (Vec<Change>, Summary) {
    // NEW's event names the decision where both runs made it.
    let mut union: BTreeMap<&DecisionKey, &Event> = old.by_key.iter().collect();
    union.extend(new.by_key.iter());
    let mut keys: Vec<(&DecisionKey, &Event)> = union.into_iter().collect();
    keys.sort_by_key(|(k, ev)| (ev.time_ns, **k));
    let mut out = Vec::new();
    let mut sum = Summary::default();
    for (k, ev) in keys {
        sum.total += 1;
        let o = old.outcome(k).unwrap_or_else(|| old.inferred(k));
        let n = new.outcome(k).unwrap_or_else(|| new.inferred(k));
        if o.passes() == n.passes() {
            continue;
        }
        let change = if n.passes() {
            sum.newly_allowed += 1;
            "newly-allowed"
        } else {
            sum.newly_denied += 1;
            "newly-denied"
        };
        sum.changed += 1;
        out.push(Change {
            time_ns: ev.time_ns,
            flow: ev.flow,
            src_identity: ids.identity(ev.flow.src).to_string(),
            dst_identity: ids.identity(ev.flow.dst).to_string(),
            subject: ev.subject.clone(),
            request: k.request,
            old: o,
            new: n,
            change,
        });
    }
    (out, sum)
}

pub fn run(args: &CompareArgs) -> Result<(), String> {
    let old = Arc::new(replay::load_policy(&args.old)?);
    // NEW's own replay writes the output capture (and checks NEW loads).
    replay::run(&ReplayArgs {
        policy: args.new.clone(),
        input: args.input.clone(),
        output: args.output.clone(),
        log: None,
        engine: args.engine.clone(),
    })?;
    let new = Arc::new(replay::load_policy(&args.new)?);
    let cfg = EngineConfig {
        audit: true,
        ..args.engine.clone()
    };
    let mut engines = [
        Engine::new(old.clone(), cfg.clone(), 0),
        Engine::new(new.clone(), cfg, 0),
    ];
    let mut runs = [Decisions::default(), Decisions::default()];
    replay::drive(&args.input, &mut engines, |i, _, _, out| {
        for ev in &out.events {
            runs[i].add(ev);
        }
        out.clear();
        Ok(())
    })?;
    let (list, sum) = changes(&runs[0], &runs[1], &*new);
    let mut stdout = std::io::stdout().lock();
    for c in &list {
        writeln!(stdout, "{c}").map_err(|e| e.to_string())?;
    }
    writeln!(stdout, "{sum}").map_err(|e| e.to_string())?;
    if let Some(p) = &args.log {
        let f = File::create(p).map_err(|e| format!("{}: {e}", p.display()))?;
        let mut w = BufWriter::new(f);
        let err = |e: std::io::Error| format!("{}: {e}", p.display());
        for c in &list {
            json_line(&mut w, c).map_err(err)?;
        }
        #[derive(Serialize)]
        struct Last<'a> {
            kind: &'static str,
            #[serde(flatten)]
            summary: &'a Summary,
        }
        let last = Last {
            kind: "summary",
            summary: &sum,
        };
        json_line(&mut w, &last).map_err(err)?;
        w.flush().map_err(err)?;
    }
    Ok(())
}

fn json_line<T: Serialize>(w: &mut impl Write, v: &T) -> std::io::Result<()> {
    serde_json::to_writer(&mut *w, v).map_err(std::io::Error::other)?;
    w.write_all(b"\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::Decision;

    fn ev(t: u64, sport: u16, subject: Subject, verdict: Decision, why: &str) -> Event {
        Event {
            time_ns: t,
            worker: 0,
            flow: FlowTuple {
                src: "10.0.0.1".parse().unwrap(),
                dst: "10.0.0.2".parse().unwrap(),
                proto: 6,
                sport,
                dport: 80,
            },
            subject,
            verdict,
            rule: passes(verdict).then(|| why.into()),
            reason: (!passes(verdict)).then(|| why.into()),
        }
    }

    fn get(path: &str) -> Subject {
        Subject::Http {
            method: "GET".into(),
            host: "h".into(),
            path: path.into(),
        }
    }

    struct World;
    impl Identities for World {
        fn identity(&self, _: std::net::IpAddr) -> &str {
            "world"
        }
    }

    #[test]
    fn requests_pair_by_flow_and_index_and_unjudged_ones_take_the_flow_verdict() {
        let (mut old, mut new) = (Decisions::default(), Decisions::default());
        // Connection 1: the second request changes.
        for (d, evs) in [
            (
                &mut old,
                vec![
                    ev(1, 1, Subject::Flow, Decision::Allow, "p/ingress[0]"),
                    ev(2, 1, get("/a"), Decision::Allow, "r0"),
                    ev(3, 1, get("/b"), Decision::Audit, "no L7 rule matches"),
                ],
            ),
            (
                &mut new,
                vec![
                    ev(1, 1, Subject::Flow, Decision::Allow, "p/ingress[0]"),
                    ev(2, 1, get("/a"), Decision::Allow, "r0"),
                    ev(3, 1, get("/b"), Decision::Allow, "r1"),
                ],
            ),
        ] {
            for e in evs {
                d.add(&e);
            }
        }
        // Connection 2: OLD has no L7 rules on the port, NEW denies one request.
        old.add(&ev(4, 2, Subject::Flow, Decision::Allow, "p/ingress[1]"));
        new.add(&ev(4, 2, Subject::Flow, Decision::Allow, "q/ingress[0]"));
        new.add(&ev(5, 2, get("/c"), Decision::Audit, "no L7 rule matches"));
        // Connection 3: NEW denies the flow; OLD judged a request on it.
        old.add(&ev(6, 3, Subject::Flow, Decision::Allow, "p/ingress[0]"));
        old.add(&ev(7, 3, get("/a"), Decision::Allow, "r0"));
        new.add(&ev(6, 3, Subject::Flow, Decision::Audit, "no ingress rule"));
        let (list, sum) = changes(&old, &new, &World);
        assert_eq!(
            sum,
            Summary {
                changed: 4,
                newly_allowed: 1,
                newly_denied: 3,
                total: 7
            }
        );
        let got: Vec<_> = list
            .iter()
            .map(|c| {
                (
                    c.flow.sport,
                    c.request,
                    c.change,
                    c.old.verdict,
                    c.new.verdict,
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                (1, Some(1), "newly-allowed", "deny", "allow"),
                (2, Some(0), "newly-denied", "allow", "deny"),
                (3, None, "newly-denied", "allow", "deny"),
                (3, Some(0), "newly-denied", "allow", "deny"),
            ]
        );
        assert!(list[1].old.because.starts_with("no L7 rules on the port"));
        assert!(list[3]
            .new
            .because
            .starts_with("flow denied: no ingress rule"));
        assert_eq!(
            list[0].to_string(),
            "world -> world tcp 10.0.0.1:1 -> 10.0.0.2:80: http GET h/b: deny (no L7 rule matches) -> allow (r1)"
        );
    }
}
