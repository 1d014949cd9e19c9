//! `enforcer check`: validate and summarise who may talk to whom.

use std::fmt::Write as _;
use std::path::Path;

use super::model::{Entity, Item, Model, Peer, PortGroup};
use super::selector::label_texts;
use super::{L7Proto, Policy, PolicyError, Proto};

fn peer_text(p: &Peer, m: &Model) -> String {
    match p {
        Peer::Endpoints { sel, ids } => {
            if sel.is_empty() {
                return "every endpoint".into();
            }
            let names: Vec<&str> = ids.iter().map(|&i| m.endpoints[i].name.as_str()).collect();
            if names.is_empty() {
                format!("({}: no endpoint)", sel.describe())
            } else {
                format!("{} ({})", names.join(", "), sel.describe())
            }
        }
        Peer::Entity(Entity::World) => "world".into(),
        Peer::Entity(Entity::All) => "all".into(),
        Peer::Entity(Entity::Cluster) => "cluster".into(),
        Peer::Entity(Entity::Host) => "host".into(),
        Peer::Cidr { net, except } if except.is_empty() => net.to_string(),
        Peer::Cidr { net, except } => {
            format!(
                "{net} except {}",
                except
                    .iter()
                    .map(|e| e.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }
    }
}

fn ports_text(g: &PortGroup) -> String {
    if g.ports.is_empty() {
        return "all ports".into();
    }
    g.ports
        .iter()
        .map(|r| {
            let proto = match r.proto {
                Some(6) => "TCP",
                Some(17) => "UDP",
                Some(132) => "SCTP",
                _ => "ANY",
            };
            if r.lo == r.hi {
                format!("{proto}/{}", r.lo)
            } else if r.lo == 1 && r.hi == 65535 {
                format!("{proto}/*")
            } else {
                format!("{proto}/{}-{}", r.lo, r.hi)
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn item_text(out: &mut String, it: &Item, m: &Model, dir_word: &str) {
    let peers = match &it.peers {
        None => "anyone".to_string(),
        Some(p) if p.is_empty() => "nobody".to_string(),
        Some(p) => p
            .iter()
            .map(|x| peer_text(x, m))
            .collect::<Vec<_>>()
            .join("; "),
    };
    let short = it.name.split_once('/').map(|(_, f)| f).unwrap_or(&it.name);
    let _ = write!(out, "    {short}: {dir_word} {peers}");
    match (&it.ports, &it.icmps) {
        (None, None) => {
            let _ = writeln!(out, ", every port and protocol");
        }
        (_, Some(ic)) => {
            let kinds: Vec<String> = ic
                .iter()
                .map(|i| {
                    format!(
                        "{} type {}",
                        if i.v6 == Some(true) { "ICMPv6" } else { "ICMP" },
                        i.kind
                    )
                })
                .collect();
            let _ = writeln!(out, ", {}", kinds.join(", "));
        }
        (Some(groups), None) => {
            let _ = writeln!(out);
            for g in groups {
                let _ = write!(out, "      {}", ports_text(g));
                match &g.l7 {
                    None => {
                        let _ = writeln!(out);
                    }
                    Some(s) if s.rules.is_empty() => {
                        let _ = writeln!(out, ": every {} request", proto_name(s.rules.proto()));
                    }
                    Some(s) => {
                        let _ = writeln!(
                            out,
                            ": {} requests matching one of:",
                            proto_name(s.rules.proto())
                        );
                        for t in &s.texts {
                            let _ = writeln!(out, "        - {t}");
                        }
                    }
                }
            }
        }
    }
}

fn proto_name(p: L7Proto) -> &'static str {
    match p {
        L7Proto::Http => "HTTP",
        L7Proto::Memcache => "memcached",
    }
}

/// The human summary of a loaded policy set.
/// A policy's own deny reply, the fields it sets.
fn deny_text(d: &crate::config::DenyReplyOverride) -> String {
    let mut p = Vec::new();
    if let Some(s) = d.http_status {
        p.push(format!("HTTP status {s}"));
    }
    if let Some(b) = &d.http_body {
        p.push(format!("body {b:?}"));
    }
    if let Some(t) = &d.http_content_type {
        p.push(format!("content type {t}"));
    }
    for (n, v) in d.http_headers.iter().flatten() {
        p.push(format!("header \"{n}: {v}\""));
    }
    if let Some(m) = &d.memcache_message {
        p.push(format!("memcached \"CLIENT_ERROR {m}\""));
    }
    p.join(", ")
}

pub fn summary(p: &Policy) -> String {
    let m = p.model();
    let mut out = String::new();
    let _ = writeln!(out, "endpoints:");
    for e in &m.endpoints {
        let addrs: Vec<String> = e.nets.iter().map(|n| n.to_string()).collect();
        let labels = label_texts(e.labels.iter());
        let _ = writeln!(
            out,
            "  {:<18} {:<28} {}",
            e.name,
            addrs.join(", "),
            labels.join(",")
        );
    }
    let _ = writeln!(out, "  (every other address is \"world\")");
    for (r, file) in m.rules.iter().zip(p.rule_files()) {
        let subjects: Vec<&str> = r
            .subject_ids
            .iter()
            .map(|&i| m.endpoints[i].name.as_str())
            .collect();
        let _ = writeln!(out, "\npolicy {} ({file})", r.name);
        let sel = r
            .subject
            .as_ref()
            .map(|s| s.describe())
            .unwrap_or_else(|| "nodeSelector".into());
        let _ = writeln!(
            out,
            "  applies to: {} ({sel})",
            if subjects.is_empty() {
                "no endpoint".to_string()
            } else {
                subjects.join(", ")
            }
        );
        if let Some(d) = &r.deny_reply {
            let _ = writeln!(out, "  denial (annotations): {}", deny_text(d));
        }
        for (items, title, word) in [
            (&r.ingress, "ingress", "from"),
            (&r.ingress_deny, "ingress deny", "from"),
            (&r.egress, "egress", "to"),
            (&r.egress_deny, "egress deny", "to"),
        ] {
            if items.is_empty() {
                continue;
            }
            let dd = match title {
                "ingress" if r.enforce_ingress => " (everything else denied)",
                "egress" if r.enforce_egress => " (everything else denied)",
                _ => "",
            };
            let _ = writeln!(out, "  {title}{dd}:");
            for it in items {
                item_text(&mut out, it, m, word);
            }
        }
    }
    out
}

/// Warnings beyond loading: a host endpoint that nobody can reach over SSH.
pub fn extra_warnings(p: &Policy) -> Vec<String> {
    let m = p.model();
    let mut w = Vec::new();
    for (i, e) in m.endpoints.iter().enumerate() {
        if e.host && !m.ingress_port_open(i, Proto::Tcp, 22) {
            w.push(format!(
                "host endpoint {:?}: no ingress rule allows TCP/22 (SSH) from anyone; host mode would cut SSH to this machine",
                e.name
            ));
        }
    }
    w
}

fn print_error(e: &PolicyError) {
    eprintln!("error: {e}");
}

pub fn run(path: &Path) -> Result<(), String> {
    match Policy::load(path) {
        Err(errs) => {
            for e in &errs {
                print_error(e);
            }
            Err(format!("{} error(s) in {}", errs.len(), path.display()))
        }
        Ok(p) => {
            for w in p.warnings() {
                eprintln!("warning: {w}");
            }
            for w in extra_warnings(&p) {
                eprintln!("warning: {w}");
            }
            print!("{}", summary(&p));
            let m = p.model();
            println!(
                "\nok: {} endpoint(s), {} rule(s), {} warning(s)",
                m.endpoints.len(),
                m.rules.len(),
                p.warnings().len() + extra_warnings(&p).len()
            );
            Ok(())
        }
    }
}
