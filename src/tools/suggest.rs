//! `enforcer suggest`: the least-privilege CiliumNetworkPolicy for observed
//! traffic.
//!
//! Input is a capture or a verdict log (JSON lines, such as audit mode
//! writes). From a capture, the engine itself observes: a first pass finds
//! which ports of which endpoints speak HTTP or memcached (the first bytes a
//! connection's client sends), then the capture runs under an observing
//! policy (every such port gets a rule that matches every request, every
//! endpoint is in audit mode), so each request is parsed and logged by the
//! same parsers that will enforce the suggestion. From a log, its decisions
//! are read as written; `deny` decisions are left out (they were blocked, not
//! observed traffic the policy should keep), `allow` and `audit` kept.
//!
//! The suggestion is one policy per destination endpoint, ingress only:
//! per source identity (an endpoint, or a /32 or /128 for an address no
//! endpoint owns) and port exactly the L7 requests seen. Traffic towards
//! addresses no endpoint owns is only listed in a comment: restricting it
//! would take egress rules, which make the source default-deny for all its
//! other egress too.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{DecisionKey, Keyer, Tuple};
use crate::config::EngineConfig;
use crate::engine::Engine;
use crate::l7::http::{parse_request, ChunkedDecoder};
use crate::l7::memcache::group_of;
use crate::l7::{Body, Parse};
use crate::log::{Decision, Event, Subject};
use crate::policy::{L7Proto, Policy};
use crate::replay;

#[derive(Debug, Clone, Default)]
pub struct SuggestArgs {
    pub endpoints: PathBuf,
    pub input: PathBuf,
    /// HTTP: paths of one method (and host) seen more than once merged
    /// under their common prefix (`/v1/.*`).
    pub merge_paths: bool,
    /// HTTP: require the Host seen.
    pub with_host: bool,
    /// HTTP: require these headers with the value seen, where a request
    /// carried them (capture input only).
    pub headers: Vec<String>,
    /// memcached: `keyPrefix` (the key up to its first separator) instead of `keyExact`.
    pub key_prefix: bool,
    /// Characters that end a key prefix.
    pub key_separators: String,
}

/// What one decision saw.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Seen {
    Flow,
    Http {
        method: String,
        host: String,
        path: String,
        /// `Name: value` of the asked-for headers the request carried.
        headers: Vec<String>,
    },
    Memcache {
        command: String,
        keys: Vec<String>,
    },
}

#[derive(Debug, Clone)]
struct Obs {
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    dport: u16,
    seen: Seen,
}

/// A source: an endpoint (by index) or an address no endpoint owns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Peer {
    Endpoint(usize),
    Addr(IpAddr),
}

/// What one port of one destination saw from one source.
/// An HTTP request as a rule sees it: method, host, path, headers.
type HttpSeen = (String, String, String, Vec<String>);

#[derive(Debug, Default)]
struct PortSeen {
    http: BTreeSet<HttpSeen>,
    memcache: BTreeSet<(String, Vec<String>)>,
}

/// Per source, per (protocol, port), what it sent.
type FromPeers = BTreeMap<Peer, BTreeMap<(u8, u16), PortSeen>>;

#[derive(Debug, Default)]
struct Observed {
    /// dst endpoint → source → (proto, port) → requests.
    ingress: BTreeMap<usize, FromPeers>,
    /// Flows towards addresses no endpoint owns: (src, dst, proto, port).
    unowned: BTreeSet<(IpAddr, IpAddr, u8, u16)>,
    decisions: u64,
    skipped_denied: u64,
    /// memcached command names no rule group covers.
    unknown_commands: BTreeSet<String>,
}

fn observe(obs: &[Obs], policy: &Policy) -> Observed {
    let model = policy.model();
    let mut o = Observed::default();
    for x in obs {
        o.decisions += 1;
        let Some(d) = model.ident(x.dst) else {
            if x.seen == Seen::Flow {
                o.unowned.insert((x.src, x.dst, x.proto, x.dport));
            }
            continue;
        };
        let peer = model.ident(x.src).map_or(Peer::Addr(x.src), Peer::Endpoint);
        let port = o
            .ingress
            .entry(d)
            .or_default()
            .entry(peer)
            .or_default()
            .entry((x.proto, x.dport))
            .or_default();
        match &x.seen {
            Seen::Flow => {}
            Seen::Http {
                method,
                host,
                path,
                headers,
            } => {
                port.http
                    .insert((method.clone(), host.clone(), path.clone(), headers.clone()));
            }
            Seen::Memcache { command, keys } => {
                port.memcache.insert((command.clone(), keys.clone()));
            }
        }
    }
    o
}

/// A YAML double-quoted scalar (JSON's string syntax is valid YAML).
fn q(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

/// A regex that matches exactly `s` (the rule's regexes match whole
/// values). Only what is special outside a character class is escaped, so
/// `/v1/request-landing` stays readable.
fn exact(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A mapping key: plain when it is a label-like word, else quoted.
fn key(s: &str) -> String {
    let plain = s.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._/-".contains(c))
        && !matches!(
            s.to_ascii_lowercase().as_str(),
            "true" | "false" | "yes" | "no" | "on" | "off" | "null" | "y" | "n"
        );
    if plain {
        s.to_string()
    } else {
        q(s)
    }
}

/// Paths merged under their common prefix at a `/`.
fn merged_path(paths: &[&str]) -> String {
    if paths.len() == 1 {
        return exact(paths[0]);
    }
    let first = paths[0];
    let mut n = first.len();
    for p in &paths[1..] {
        n = n.min(
            first
                .bytes()
                .zip(p.bytes())
                .take_while(|(a, b)| a == b)
                .count(),
        );
    }
    let prefix = &first[..n];
    match prefix.rfind('/') {
        Some(i) => format!("{}.*", exact(&prefix[..=i])),
        // Paths that share no leading `/` (an absolute URI and a path).
        None => ".*".into(),
    }
}

fn http_rules(seen: &BTreeSet<HttpSeen>, args: &SuggestArgs, out: &mut String) {
    out.push_str("      rules:\n        http:\n");
    // (method, host, headers) → paths
    type Group<'a> = (&'a str, &'a str, &'a [String]);
    let mut groups: BTreeMap<Group<'_>, Vec<&str>> = BTreeMap::new();
    for (m, h, p, hs) in seen {
        let host = if args.with_host { h.as_str() } else { "" };
        groups.entry((m, host, hs)).or_default().push(p);
    }
    for ((m, h, hs), mut paths) in groups {
        paths.dedup();
        let paths: Vec<String> = if args.merge_paths {
            vec![merged_path(&paths)]
        } else {
            paths.iter().map(|p| exact(p)).collect()
        };
        for p in paths {
            let _ = writeln!(out, "        - method: {}", q(&exact(m)));
            let _ = writeln!(out, "          path: {}", q(&p));
            if args.with_host {
                let _ = writeln!(out, "          host: {}", q(&exact(h)));
            }
            if !hs.is_empty() {
                out.push_str("          headers:\n");
                for h in hs {
                    let _ = writeln!(out, "          - {}", q(h));
                }
            }
        }
    }
}

/// The key up to and including its first separator, if it has one.
fn key_prefix<'a>(k: &'a str, seps: &str) -> Option<&'a str> {
    k.char_indices()
        .find(|(_, c)| seps.contains(*c))
        .map(|(i, c)| &k[..i + c.len_utf8()])
}

fn memcache_rules(
    seen: &BTreeSet<(String, Vec<String>)>,
    args: &SuggestArgs,
    o: &mut Observed,
    out: &mut String,
) {
    out.push_str("      rules:\n        l7proto: memcache\n        l7:\n");
    let mut rules: BTreeSet<(String, &'static str, String)> = BTreeSet::new();
    for (cmd, keys) in seen {
        let Some(group) = group_of(cmd) else {
            o.unknown_commands.insert(cmd.clone());
            continue;
        };
        let prefixes: Option<Vec<&str>> = args
            .key_prefix
            .then(|| {
                keys.iter()
                    .map(|k| key_prefix(k, &args.key_separators))
                    .collect::<Option<Vec<_>>>()
            })
            .flatten();
        let rule = match (keys.len(), prefixes) {
            (0, _) => ("", String::new()),
            (_, Some(ps)) => {
                let ps: BTreeSet<&str> = ps.into_iter().collect();
                if ps.len() == 1 {
                    ("keyPrefix", ps.into_iter().next().unwrap_or("").to_string())
                } else {
                    let alts: Vec<String> = ps.iter().map(|p| exact(p)).collect();
                    ("keyRegex", format!("^(?:{})", alts.join("|")))
                }
            }
            (1, None) => ("keyExact", keys[0].clone()),
            // One rule must accept every key of a multi-key request.
            (_, None) => {
                let uniq: BTreeSet<&str> = keys.iter().map(String::as_str).collect();
                let alts: Vec<String> = uniq.iter().map(|k| exact(k)).collect();
                ("keyRegex", format!("^(?:{})$", alts.join("|")))
            }
        };
        rules.insert((group, rule.0, rule.1));
    }
    for (group, field, value) in rules {
        let _ = writeln!(out, "        - command: {}", q(&group));
        if !field.is_empty() {
            let _ = writeln!(out, "          {field}: {}", q(&value));
        }
    }
}

fn labels_yaml(labels: &BTreeMap<String, String>, indent: &str, out: &mut String) {
    if labels.is_empty() {
        let _ = writeln!(out, "{indent}{{}}");
    }
    for (k, v) in labels {
        let _ = writeln!(out, "{indent}{}: {}", key(k), q(v));
    }
}

fn render(o: &mut Observed, policy: &Policy, args: &SuggestArgs) -> String {
    let eps = &policy.model().endpoints;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# Suggested by `enforcer suggest` from {}: {} decisions observed.",
        args.input.display(),
        o.decisions
    );
    if o.skipped_denied > 0 {
        let _ = writeln!(
            out,
            "# {} denied decisions of the log left out.",
            o.skipped_denied
        );
    }
    for (s, d, p, port) in &o.unowned {
        let _ = writeln!(
            out,
            "# Not restricted (no endpoint owns the destination): {s} -> {d} proto {p} port {port}"
        );
    }
    let ingress = std::mem::take(&mut o.ingress);
    for (d, peers) in &ingress {
        let ep = &eps[*d];
        out.push_str("---\napiVersion: \"cilium.io/v2\"\nkind: CiliumNetworkPolicy\nmetadata:\n");
        let _ = writeln!(out, "  name: {}", q(&format!("suggested-{}", ep.name)));
        let wider: Vec<&str> = eps
            .iter()
            .enumerate()
            .filter(|(i, e)| *i != *d && ep.labels.iter().all(|(k, v)| e.labels.get(k) == Some(v)))
            .map(|(_, e)| e.name.as_str())
            .collect();
        if !wider.is_empty() {
            let _ = writeln!(
                out,
                "# The selector also selects {} (their labels include {}'s).",
                wider.join(", "),
                ep.name
            );
        }
        out.push_str("spec:\n  endpointSelector:\n    matchLabels:\n");
        labels_yaml(&ep.labels, "      ", &mut out);
        out.push_str("  ingress:\n");
        for (peer, ports) in peers {
            let from = |out: &mut String| match peer {
                Peer::Endpoint(i) => {
                    out.push_str("  - fromEndpoints:\n    - matchLabels:\n");
                    labels_yaml(&eps[*i].labels, "        ", out);
                }
                Peer::Addr(a) => {
                    let len = if a.is_ipv4() { 32 } else { 128 };
                    let _ = writeln!(out, "  - fromCIDR:\n    - {}", q(&format!("{a}/{len}")));
                }
            };
            let (icmp, l4): (Vec<_>, Vec<_>) =
                ports.iter().partition(|((p, _), _)| matches!(p, 1 | 58));
            if !l4.is_empty() {
                from(&mut out);
                out.push_str("    toPorts:\n");
                for ((proto, port), seen) in l4 {
                    let pname = match proto {
                        6 => "TCP",
                        17 => "UDP",
                        _ => "ANY",
                    };
                    let _ = writeln!(
                        out,
                        "    - ports:\n      - port: \"{port}\"\n        protocol: {pname}"
                    );
                    if !seen.http.is_empty() {
                        http_rules(&seen.http, args, &mut out);
                    } else if !seen.memcache.is_empty() {
                        memcache_rules(&seen.memcache, args, o, &mut out);
                    }
                }
            }
            if !icmp.is_empty() {
                from(&mut out);
                out.push_str("    icmps:\n    - fields:\n");
                for ((proto, kind), _) in icmp {
                    let fam = if *proto == 58 { "IPv6" } else { "IPv4" };
                    let _ = writeln!(out, "      - type: {kind}\n        family: {fam}");
                }
            }
        }
    }
    o.ingress = ingress;
    for c in &o.unknown_commands {
        let _ = writeln!(
            out,
            "# memcached command {c:?} seen; no rule group covers it."
        );
    }
    out
}

/// The first bytes a client sends tell its protocol.
fn sniff(payload: &[u8]) -> Option<L7Proto> {
    if payload.first() == Some(&0x80) {
        return Some(L7Proto::Memcache);
    }
    let line_end = payload
        .iter()
        .position(|&b| b == b'\n')
        .unwrap_or(payload.len());
    let line = String::from_utf8_lossy(&payload[..line_end]);
    let line = line.trim_end();
    if line.ends_with(" HTTP/1.1") || line.ends_with(" HTTP/1.0") {
        return Some(L7Proto::Http);
    }
    let word = line.split(' ').next().unwrap_or("");
    (group_of(word).is_some() && word.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
        .then_some(L7Proto::Memcache)
}

/// Pass 1 over a capture: which (destination, port) speak which L7 protocol.
fn l7_ports(input: &Path) -> Result<BTreeMap<(IpAddr, u16), L7Proto>, String> {
    // Connections whose SYN we saw, client → server, until their first data.
    let mut opened: BTreeSet<(IpAddr, u16, IpAddr, u16)> = BTreeSet::new();
    let mut ports = BTreeMap::new();
    replay::each_frame(input, |_, _, data| {
        let Ok(m) = crate::packet::parse(&data) else {
            return Ok(());
        };
        let Some(t) = m.tcp() else {
            return Ok(());
        };
        let key = (m.src, m.sport, m.dst, m.dport);
        if t.flags & 0x12 == 0x02 {
            opened.insert(key);
            return Ok(());
        }
        let p = m.payload(&data);
        if !p.is_empty() && opened.remove(&key) {
            if let Some(proto) = sniff(p) {
                ports.entry((m.dst, m.dport)).or_insert(proto);
            }
        }
        Ok(())
    })?;
    Ok(ports)
}

/// The policy a capture is observed under: the endpoints, and per L7 port
/// a rule matching every request, everything else audited.
fn observing_policy(
    endpoints: &Policy,
    ports: &BTreeMap<(IpAddr, u16), L7Proto>,
) -> Result<Policy, String> {
    let model = endpoints.model();
    let mut eps = String::from("kind: Endpoints\nendpoints:\n");
    for e in &model.endpoints {
        let _ = writeln!(eps, "- name: {}\n  labels:", q(&e.name));
        labels_yaml(&e.labels, "    ", &mut eps);
        let nets: Vec<String> = e.nets.iter().map(|n| q(&n.to_string())).collect();
        let _ = writeln!(eps, "  addresses: [{}]", nets.join(", "));
    }
    let mut by_ep: BTreeMap<usize, Vec<(u16, L7Proto)>> = BTreeMap::new();
    for (&(dst, port), &proto) in ports {
        if let Some(i) = model.ident(dst) {
            by_ep.entry(i).or_default().push((port, proto));
        }
    }
    let mut pol = String::new();
    for (i, ports) in by_ep {
        let _ = write!(
            pol,
            "---\napiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata:\n  name: observe-{i}\n  annotations:\n    enforcer.io/audit: \"true\"\nspec:\n  endpointSelector:\n    matchLabels:\n"
        );
        labels_yaml(&model.endpoints[i].labels, "      ", &mut pol);
        pol.push_str("  ingress:\n  - fromEntities: [all]\n    toPorts:\n");
        for (port, proto) in ports {
            let _ = writeln!(
                pol,
                "    - ports:\n      - port: \"{port}\"\n        protocol: TCP"
            );
            match proto {
                L7Proto::Http => pol.push_str("      rules:\n        http:\n        - {}\n"),
                L7Proto::Memcache => pol.push_str(
                    "      rules:\n        l7proto: memcache\n        l7:\n        - {}\n",
                ),
            }
        }
    }
    Policy::from_sources(&[
        ("(endpoints)".into(), eps),
        ("(observing policy)".into(), pol),
    ])
    .map_err(|errs| {
        let e: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        format!("observing policy: {}", e.join("; "))
    })
}

fn from_event(ev: &Event) -> Obs {
    Obs {
        src: ev.flow.src,
        dst: ev.flow.dst,
        proto: ev.flow.proto,
        dport: ev.flow.dport,
        seen: match &ev.subject {
            Subject::Flow => Seen::Flow,
            Subject::Http { method, host, path } => Seen::Http {
                method: method.clone(),
                host: host.clone(),
                path: path.clone(),
                headers: Vec::new(),
            },
            Subject::Memcache { command, keys } => Seen::Memcache {
                command: command.clone(),
                keys: keys.clone(),
            },
        },
    }
}

fn from_capture(
    input: &Path,
    endpoints: &Policy,
    headers: &[String],
) -> Result<(Vec<Obs>, u64), String> {
    let ports = l7_ports(input)?;
    let seen_headers = if headers.is_empty() {
        HashMap::new()
    } else {
        http_headers(input, &ports, headers)?
    };
    let policy = Arc::new(observing_policy(endpoints, &ports)?);
    let mut engines = [Engine::new(policy, EngineConfig::default(), 0)];
    let mut obs = Vec::new();
    let mut denied = 0;
    let mut keyer = Keyer::default();
    replay::drive(input, &mut engines, |_, _, _, out| {
        for ev in &out.events {
            let key = keyer.key(ev);
            // Denied here: a request that did not parse; not traffic to keep.
            if ev.verdict == Decision::Deny {
                denied += 1;
                continue;
            }
            let mut o = from_event(ev);
            if let (Seen::Http { headers, .. }, Some(h)) = (&mut o.seen, seen_headers.get(&key)) {
                headers.clone_from(h);
            }
            obs.push(o);
        }
        out.clear();
        Ok(())
    })?;
    Ok((obs, denied))
}

/// Client bytes kept per connection for header look-ups.
const MAX_CONN_BYTES: usize = 64 << 20;

/// One connection's client → server bytes by stream offset.
struct ClientBytes {
    isn: u32,
    segs: BTreeMap<u32, Vec<u8>>,
    kept: usize,
}

impl ClientBytes {
    /// The stream from its start up to the first gap, the first copy of
    /// each byte winning.
    fn contiguous(&self) -> Vec<u8> {
        let mut out: Vec<u8> = Vec::new();
        for (&off, d) in &self.segs {
            let off = off as usize;
            if off > out.len() {
                break;
            }
            let skip = out.len() - off;
            if skip < d.len() {
                out.extend_from_slice(&d[skip..]);
            }
        }
        out
    }
}

/// The asked-for headers of every HTTP request in a capture, by decision
/// key. A second reading of the clients' byte streams with the engine's
/// own parser: the engine's decisions carry no header values. Requests are
/// numbered per connection as `Keyer` numbers decisions (a connection per
/// SYN with a new initial sequence number), so the two agree.
fn http_headers(
    input: &Path,
    ports: &BTreeMap<(IpAddr, u16), L7Proto>,
    names: &[String],
) -> Result<HashMap<DecisionKey, Vec<String>>, String> {
    let mut conns: BTreeMap<(Tuple, u32), ClientBytes> = BTreeMap::new();
    let mut current: HashMap<Tuple, u32> = HashMap::new();
    replay::each_frame(input, |_, _, data| {
        let Ok(m) = crate::packet::parse(&data) else {
            return Ok(());
        };
        let Some(t) = m.tcp() else {
            return Ok(());
        };
        if ports.get(&(m.dst, m.dport)) != Some(&L7Proto::Http) {
            return Ok(());
        }
        let tuple = (m.src, m.dst, m.proto, m.sport, m.dport);
        if t.flags & 0x12 == 0x02 {
            let n = current.entry(tuple).or_insert(0);
            let same = conns.get(&(tuple, *n)).is_some_and(|c| c.isn == t.seq);
            if !same {
                *n += 1;
                conns.insert(
                    (tuple, *n),
                    ClientBytes {
                        isn: t.seq,
                        segs: BTreeMap::new(),
                        kept: 0,
                    },
                );
            }
            return Ok(());
        }
        let p = m.payload(&data);
        let Some(c) = current
            .get(&tuple)
            .and_then(|n| conns.get_mut(&(tuple, *n)))
        else {
            return Ok(());
        };
        if p.is_empty() || c.kept + p.len() > MAX_CONN_BYTES {
            return Ok(());
        }
        let off = t.seq.wrapping_sub(c.isn.wrapping_add(1));
        // Longer copies win: a retransmission may carry more.
        let e = c.segs.entry(off).or_default();
        if p.len() > e.len() {
            c.kept += p.len() - e.len();
            *e = p.to_vec();
        }
        Ok(())
    })?;
    let mut out = HashMap::new();
    for ((tuple, conn), c) in &conns {
        let buf = c.contiguous();
        let mut off = 0usize;
        let mut index = 0u32;
        while off < buf.len() {
            let Parse::Complete(h) = parse_request(&buf[off..]) else {
                break;
            };
            let mut hs = Vec::new();
            for name in names {
                for v in h.req.header_values(name.as_bytes()) {
                    hs.push(format!("{name}: {}", String::from_utf8_lossy(v)));
                }
            }
            let key = DecisionKey {
                tuple: *tuple,
                conn: *conn,
                request: Some(index),
            };
            out.insert(key, hs);
            index += 1;
            off += h.head_len;
            match h.body {
                Body::None => {}
                Body::Length(n) => {
                    off = off.saturating_add(usize::try_from(n).unwrap_or(usize::MAX))
                }
                Body::Chunked => {
                    let mut d = ChunkedDecoder::new();
                    match d.feed(buf.get(off..).unwrap_or(&[])) {
                        Ok((used, true)) => off += used,
                        _ => break,
                    }
                }
            }
        }
    }
    Ok(out)
}

fn from_log(input: &Path) -> Result<(Vec<Obs>, u64), String> {
    let name = input.display();
    let f = std::fs::File::open(input).map_err(|e| format!("{name}: {e}"))?;
    let mut obs = Vec::new();
    let mut denied = 0;
    for (i, line) in BufReader::new(f).lines().enumerate() {
        let line = line.map_err(|e| format!("{name}: {e}"))?;
        if line.trim().is_empty() {
            continue;
        }
        let at = |m: &str| format!("{name}:{}: {m}", i + 1);
        let v: serde_json::Value =
            serde_json::from_str(&line).map_err(|e| at(&format!("not JSON: {e}")))?;
        let field = |k: &str| {
            v.get(k)
                .and_then(|x| x.as_str())
                .ok_or_else(|| at(&format!("{k}: missing")))
        };
        let flow = v.get("flow").ok_or_else(|| at("flow: missing"))?;
        let fl = |k: &str| flow.get(k).ok_or_else(|| at(&format!("flow.{k}: missing")));
        let addr = |k: &str| -> Result<IpAddr, String> {
            fl(k)?
                .as_str()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| at(&format!("flow.{k}: not an address")))
        };
        let num = |k: &str| -> Result<u64, String> {
            fl(k)?
                .as_u64()
                .ok_or_else(|| at(&format!("flow.{k}: not a number")))
        };
        let verdict = field("verdict")?;
        match verdict {
            "allow" | "audit" => {}
            "deny" => {
                denied += 1;
                continue;
            }
            o => return Err(at(&format!("verdict: unknown {o:?}"))),
        }
        let seen = match field("kind")? {
            "flow" => Seen::Flow,
            "http" => Seen::Http {
                method: field("method")?.into(),
                host: field("host")?.into(),
                path: field("path")?.into(),
                headers: Vec::new(),
            },
            "memcache" => Seen::Memcache {
                command: field("command")?.into(),
                keys: v
                    .get("keys")
                    .and_then(|k| k.as_array())
                    .ok_or_else(|| at("keys: missing"))?
                    .iter()
                    .map(|k| k.as_str().unwrap_or("").to_string())
                    .collect(),
            },
            o => return Err(at(&format!("kind: unknown {o:?}"))),
        };
        obs.push(Obs {
            src: addr("src")?,
            dst: addr("dst")?,
            proto: u8::try_from(num("proto")?).map_err(|_| at("flow.proto: out of range"))?,
            dport: u16::try_from(num("dport")?).map_err(|_| at("flow.dport: out of range"))?,
            seen,
        });
    }
    Ok((obs, denied))
}

fn is_capture(path: &Path) -> Result<bool, String> {
    let mut magic = [0u8; 4];
    let mut f = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let n = f
        .read(&mut magic)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(n == 4
        && matches!(
            u32::from_le_bytes(magic),
            0x0a0d_0d0a | 0xa1b2_c3d4 | 0xd4c3_b2a1 | 0xa1b2_3c4d | 0x4d3c_b2a1
        ))
}

/// The suggested policies as YAML.
pub fn suggest(args: &SuggestArgs) -> Result<String, String> {
    let endpoints = replay::load_policy(&args.endpoints)?;
    let (obs, denied) = if is_capture(&args.input)? {
        from_capture(&args.input, &endpoints, &args.headers)?
    } else if !args.headers.is_empty() {
        return Err(format!(
            "{}: a verdict log holds no header values; --http-header needs a capture",
            args.input.display()
        ));
    } else {
        from_log(&args.input)?
    };
    let mut o = observe(&obs, &endpoints);
    o.skipped_denied = denied;
    Ok(render(&mut o, &endpoints, args))
}

pub fn run(args: &SuggestArgs) -> Result<(), String> {
    print!("{}", suggest(args)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merged_paths_keep_their_common_directory() {
        assert_eq!(merged_path(&["/v1/"]), "/v1/");
        assert_eq!(merged_path(&["/v1/", "/v1/healthz"]), "/v1/.*");
        assert_eq!(merged_path(&["/v1/a.b", "/v1/ab"]), "/v1/.*");
        assert_eq!(merged_path(&["/v2/x", "/v1/x"]), "/.*");
        assert_eq!(merged_path(&["/a?b=1"]), r"/a\?b=1");
    }

    #[test]
    fn exact_paths_match_only_themselves() {
        for p in ["/v1/request-landing", "/a.b?c=(d)|e*", "/x$[y]{2}^\\", "/ü"] {
            let re = regex::Regex::new(&format!("^(?:{})$", exact(p))).unwrap();
            assert!(re.is_match(p), "{p}");
            assert!(!re.is_match(&format!("{p}x")), "{p}");
        }
        assert_eq!(exact("/v1/request-landing"), "/v1/request-landing");
        let re = regex::Regex::new(&format!("^(?:{})$", exact("/a.b"))).unwrap();
        assert!(!re.is_match("/aXb"));
    }

    #[test]
    fn key_prefixes_end_at_the_first_separator() {
        assert_eq!(key_prefix("awing-coord", "-:"), Some("awing-"));
        assert_eq!(key_prefix("user:42:name", "-:"), Some("user:"));
        assert_eq!(key_prefix("plain", "-:"), None);
    }

    #[test]
    fn sniffing_tells_http_from_memcached() {
        assert_eq!(
            sniff(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
            Some(L7Proto::Http)
        );
        assert_eq!(sniff(b"get awing-coord\r\n"), Some(L7Proto::Memcache));
        assert_eq!(sniff(b"set k 0 0 1\r\nx\r\n"), Some(L7Proto::Memcache));
        assert_eq!(sniff(&[0x80, 0, 0, 5]), Some(L7Proto::Memcache));
        assert_eq!(sniff(b"SSH-2.0-OpenSSH_9\r\n"), None);
        assert_eq!(sniff(b"\x16\x03\x01"), None);
    }
}
