//! From documents to the compiled model: endpoints with their addresses,
//! rules with precomputed subjects and peers, and the per-flow decision.

use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;

use super::selector::{normalize, CompiledSelector, Labels};
use super::spec::{
    CidrSet, EgressRule, EndpointSpec, IcmpRule, IngressRule, PortRule, PortValue, Rule, Selector,
};
use super::{FlowDecision, L7Policy, L7Proto, L7Rules, L7Stage, NamedRule, Proto, RuleSet};
use crate::l7::http::HttpRule;
use crate::l7::memcache::MemcacheRule;

/// An error found while compiling: field path relative to the document, message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompileError {
    pub field: String,
    pub message: String,
}

fn err(field: impl Into<String>, message: impl Into<String>) -> CompileError {
    CompileError {
        field: field.into(),
        message: message.into(),
    }
}

#[derive(Debug, Clone)]
pub struct Endpoint {
    pub name: String,
    pub labels: Labels,
    pub nets: Vec<IpNet>,
    pub host: bool,
}

pub fn compile_endpoint(e: &EndpointSpec, at: &str) -> Result<Endpoint, CompileError> {
    let mut nets = Vec::new();
    for (i, a) in e.addresses.iter().enumerate() {
        nets.push(parse_net(a).ok_or_else(|| {
            err(
                format!("{at}.addresses[{i}]"),
                format!("not an IP address or CIDR: {a:?}"),
            )
        })?);
    }
    let host = e.host || labels_has_host(&e.labels);
    let mut labels = normalize(&e.labels);
    if host {
        labels.insert("reserved:host".into(), String::new());
    }
    Ok(Endpoint {
        name: e.name.clone(),
        labels,
        nets,
        host,
    })
}

fn labels_has_host(l: &std::collections::BTreeMap<String, super::spec::LabelValue>) -> bool {
    l.contains_key("reserved:host")
}

pub fn parse_net(s: &str) -> Option<IpNet> {
    let s = s.trim();
    if let Ok(n) = s.parse::<IpNet>() {
        return Some(n.trunc());
    }
    s.parse::<IpAddr>().ok().map(IpNet::from)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entity {
    World,
    All,
    Cluster,
    Host,
}

#[derive(Debug, Clone)]
pub enum Peer {
    /// Selected endpoints, by index.
    Endpoints {
        sel: CompiledSelector,
        ids: Vec<usize>,
    },
    Entity(Entity),
    Cidr {
        net: IpNet,
        except: Vec<IpNet>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    pub lo: u16,
    pub hi: u16,
    /// IP protocol (6, 17) or None for ANY.
    pub proto: Option<u8>,
}

#[derive(Debug, Clone)]
pub struct L7Set {
    /// Empty: the port allows every request.
    pub rules: L7Rules,
    /// The rules as written, for `check`.
    pub texts: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct PortGroup {
    pub ports: Vec<PortRange>,
    pub l7: Option<L7Set>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IcmpMatch {
    pub v6: Option<bool>,
    pub kind: u8,
}

/// One ingress/egress item of a rule.
#[derive(Debug, Clone)]
pub struct Item {
    pub name: String,
    /// None: any peer.
    pub peers: Option<Vec<Peer>>,
    /// None (and no icmps): every port and protocol.
    pub ports: Option<Vec<PortGroup>>,
    pub icmps: Option<Vec<IcmpMatch>>,
}

#[derive(Debug, Clone)]
pub struct CompiledRule {
    pub name: String,
    pub subject: Option<CompiledSelector>,
    pub subject_ids: Vec<usize>,
    pub ingress: Vec<Item>,
    pub ingress_deny: Vec<Item>,
    pub egress: Vec<Item>,
    pub egress_deny: Vec<Item>,
    pub enforce_ingress: bool,
    pub enforce_egress: bool,
}

/// How an item matched a flow: L7 rules to apply, or the whole port.
enum ItemMatch<'a> {
    No,
    AllowAll,
    L7(&'a L7Set),
}

pub struct Model {
    pub endpoints: Vec<Endpoint>,
    pub rules: Vec<CompiledRule>,
    /// Per endpoint: indexes into `rules` that select it.
    by_subject: Vec<Vec<usize>>,
    ingress_enforced: Vec<bool>,
    egress_enforced: Vec<bool>,
}

fn parse_port(v: &PortValue, at: &str) -> Result<Option<u16>, CompileError> {
    let n = match v {
        PortValue::Num(n) => *n,
        PortValue::Str(s) => match s.trim().parse::<i64>() {
            Ok(n) => n,
            Err(_) => {
                return Err(err(
                    at,
                    format!("named port {s:?} is not supported: give the port number"),
                ));
            }
        },
    };
    if n == 0 {
        return Ok(None);
    }
    if !(1..=65535).contains(&n) {
        return Err(err(at, format!("port {n} out of range (1-65535)")));
    }
    Ok(Some(n as u16))
}

fn compile_ports(
    prs: &[PortRule],
    at: &str,
    rule_name: &str,
    deny: bool,
) -> Result<Vec<PortGroup>, CompileError> {
    let mut groups = Vec::new();
    for (i, pr) in prs.iter().enumerate() {
        let pat = format!("{at}[{i}]");
        let mut ports = Vec::new();
        for (j, pp) in pr.ports.iter().enumerate() {
            let ppat = format!("{pat}.ports[{j}]");
            let proto = match pp.protocol.as_deref().map(|p| p.to_ascii_uppercase()) {
                None => None,
                Some(p) if p == "ANY" => None,
                Some(p) if p == "TCP" => Some(6),
                Some(p) if p == "UDP" => Some(17),
                Some(p) if p == "SCTP" => Some(132),
                Some(p) => {
                    return Err(err(
                        format!("{ppat}.protocol"),
                        format!("unknown protocol {p:?} (TCP, UDP, SCTP, ANY)"),
                    ))
                }
            };
            let lo = match &pp.port {
                None => None,
                Some(v) => parse_port(v, &format!("{ppat}.port"))?,
            };
            let (lo, hi) = match (lo, pp.end_port) {
                (None, None) => (1, 65535),
                (None, Some(_)) => {
                    return Err(err(format!("{ppat}.endPort"), "endPort needs a port"))
                }
                (Some(p), None) => (p, p),
                (Some(p), Some(e)) => {
                    if !(1..=65535).contains(&e) || (e as u16) < p {
                        return Err(err(
                            format!("{ppat}.endPort"),
                            format!("endPort {e} must be in {p}-65535"),
                        ));
                    }
                    (p, e as u16)
                }
            };
            ports.push(PortRange { lo, hi, proto });
        }
        let l7 = match &pr.rules {
            None => None,
            Some(r) => {
                if deny {
                    return Err(err(
                        format!("{pat}.rules"),
                        "deny rules cannot have L7 rules",
                    ));
                }
                if r.kafka.is_some() {
                    return Err(err(
                        format!("{pat}.rules.kafka"),
                        "Kafka rules are not supported",
                    ));
                }
                if r.dns.is_some() {
                    return Err(err(
                        format!("{pat}.rules.dns"),
                        "DNS rules are not supported",
                    ));
                }
                let has_http = r.http.is_some();
                let has_mc = r.l7proto.is_some() || r.l7.is_some();
                if has_http && has_mc {
                    return Err(err(
                        format!("{pat}.rules"),
                        "http and l7proto rules on the same port",
                    ));
                }
                if has_http {
                    let specs = r.http.as_deref().unwrap_or_default();
                    let (rules, texts) = l7_set(
                        specs,
                        &pat,
                        "http",
                        rule_name,
                        describe_http,
                        HttpRule::compile,
                    )?;
                    Some(L7Set {
                        rules: L7Rules::Http(rules),
                        texts,
                    })
                } else if has_mc {
                    match r.l7proto.as_deref() {
                        Some("memcache") => {}
                        Some(o) => {
                            return Err(err(
                                format!("{pat}.rules.l7proto"),
                                format!("unknown l7proto {o:?} (memcache)"),
                            ))
                        }
                        None => {
                            return Err(err(format!("{pat}.rules.l7"), "l7 rules need l7proto"))
                        }
                    }
                    let specs = r.l7.as_deref().unwrap_or_default();
                    let (rules, texts) = l7_set(
                        specs,
                        &pat,
                        "l7",
                        rule_name,
                        describe_memcache,
                        MemcacheRule::compile,
                    )?;
                    Some(L7Set {
                        rules: L7Rules::Memcache(rules),
                        texts,
                    })
                } else {
                    None
                }
            }
        };
        if l7.is_some() && ports.iter().any(|p| p.proto == Some(17)) {
            return Err(err(format!("{pat}.rules"), "L7 rules need TCP ports"));
        }
        if l7.is_some() {
            // L7 rules speak TCP even when the port says ANY.
            for p in ports.iter_mut() {
                p.proto = Some(6);
            }
        }
        groups.push(PortGroup { ports, l7 });
    }
    Ok(groups)
}

/// Compile one port's L7 rule list (`rules.<field>[k]`), naming each rule
/// and keeping its text for `check`.
type NamedList<R> = Arc<[NamedRule<R>]>;

fn l7_set<S, R>(
    specs: &[S],
    pat: &str,
    field: &str,
    rule_name: &str,
    describe: fn(&S) -> String,
    compile: impl Fn(&S) -> Result<R, crate::l7::http::RuleError>,
) -> Result<(NamedList<R>, Vec<String>), CompileError> {
    let mut rules = Vec::new();
    for (k, spec) in specs.iter().enumerate() {
        let rule = compile(spec)
            .map_err(|e| err(format!("{pat}.rules.{field}[{k}].{}", e.field), e.message))?;
        rules.push(NamedRule {
            name: format!("{rule_name}/{pat}/{field}[{k}]"),
            rule,
        });
    }
    Ok((rules.into(), specs.iter().map(describe).collect()))
}

fn describe_http(h: &crate::l7::http::HttpRuleSpec) -> String {
    let mut p = Vec::new();
    if let Some(m) = &h.method {
        p.push(format!("method {m}"));
    }
    if let Some(x) = &h.path {
        p.push(format!("path {x}"));
    }
    if let Some(x) = &h.host {
        p.push(format!("host {x}"));
    }
    for x in &h.headers {
        p.push(format!("header \"{x}\""));
    }
    for m in &h.header_matches {
        let v = m
            .value
            .as_deref()
            .map(|v| format!(": {v}"))
            .unwrap_or_default();
        let mm = m
            .mismatch
            .as_deref()
            .map(|x| format!(" (mismatch {x})"))
            .unwrap_or_default();
        p.push(format!("headerMatch \"{}{v}\"{mm}", m.name));
    }
    if p.is_empty() {
        "any request".into()
    } else {
        p.join(", ")
    }
}

fn describe_memcache(m: &crate::l7::memcache::MemcacheRuleSpec) -> String {
    let mut p = vec![format!("command {}", m.command.as_deref().unwrap_or("*"))];
    if let Some(k) = &m.key_exact {
        p.push(format!("key = {k:?}"));
    } else if let Some(k) = &m.key_prefix {
        p.push(format!("key prefix {k:?}"));
    } else if let Some(k) = &m.key_regex {
        p.push(format!("key ~ /{k}/"));
    }
    p.join(", ")
}

fn compile_icmps(ic: &[IcmpRule], at: &str) -> Result<Vec<IcmpMatch>, CompileError> {
    let mut out = Vec::new();
    for (i, r) in ic.iter().enumerate() {
        for (j, f) in r.fields.iter().enumerate() {
            let fat = format!("{at}[{i}].fields[{j}]");
            let v6 = match f.family.as_deref() {
                None | Some("IPv4") => Some(false),
                Some("IPv6") => Some(true),
                Some(o) => {
                    return Err(err(
                        format!("{fat}.family"),
                        format!("unknown family {o:?} (IPv4, IPv6)"),
                    ))
                }
            };
            let kind = match &f.kind {
                PortValue::Num(n) if (0..=255).contains(n) => *n as u8,
                PortValue::Num(n) => {
                    return Err(err(
                        format!("{fat}.type"),
                        format!("ICMP type {n} out of range"),
                    ))
                }
                PortValue::Str(s) => icmp_type_name(s, v6 == Some(true)).ok_or_else(|| {
                    err(format!("{fat}.type"), format!("unknown ICMP type {s:?}"))
                })?,
            };
            out.push(IcmpMatch { v6, kind });
        }
    }
    Ok(out)
}

fn icmp_type_name(s: &str, v6: bool) -> Option<u8> {
    if let Ok(n) = s.parse::<u8>() {
        return Some(n);
    }
    Some(match (s, v6) {
        ("EchoReply", false) => 0,
        ("DestinationUnreachable", false) => 3,
        ("Redirect", false) => 5,
        ("EchoRequest", false) => 8,
        ("TimeExceeded", false) => 11,
        ("DestinationUnreachable", true) => 1,
        ("PacketTooBig", true) => 2,
        ("TimeExceeded", true) => 3,
        ("EchoRequest", true) => 128,
        ("EchoReply", true) => 129,
        _ => return None,
    })
}

fn compile_entities(ents: &[String], at: &str) -> Result<Vec<Peer>, CompileError> {
    ents.iter()
        .enumerate()
        .map(|(i, e)| {
            Ok(Peer::Entity(match e.as_str() {
                "world" => Entity::World,
                "all" => Entity::All,
                "cluster" => Entity::Cluster,
                "host" => Entity::Host,
                o => {
                    return Err(err(
                        format!("{at}[{i}]"),
                        format!("unknown entity {o:?} (world, all, cluster, host)"),
                    ))
                }
            }))
        })
        .collect()
}

fn compile_cidrs(
    cidrs: &[String],
    sets: &[CidrSet],
    at_c: &str,
    at_s: &str,
) -> Result<Vec<Peer>, CompileError> {
    let mut out = Vec::new();
    for (i, c) in cidrs.iter().enumerate() {
        let net = parse_net(c)
            .ok_or_else(|| err(format!("{at_c}[{i}]"), format!("not a CIDR: {c:?}")))?;
        out.push(Peer::Cidr {
            net,
            except: Vec::new(),
        });
    }
    for (i, s) in sets.iter().enumerate() {
        if s.cidr_group_ref.is_some() {
            return Err(err(
                format!("{at_s}[{i}].cidrGroupRef"),
                "cidrGroupRef is not supported",
            ));
        }
        let c = s
            .cidr
            .as_deref()
            .ok_or_else(|| err(format!("{at_s}[{i}]"), "cidr is required"))?;
        let net = parse_net(c)
            .ok_or_else(|| err(format!("{at_s}[{i}].cidr"), format!("not a CIDR: {c:?}")))?;
        let mut except = Vec::new();
        for (j, e) in s.except.iter().enumerate() {
            let en = parse_net(e).ok_or_else(|| {
                err(
                    format!("{at_s}[{i}].except[{j}]"),
                    format!("not a CIDR: {e:?}"),
                )
            })?;
            if !net.contains(&en) {
                return Err(err(
                    format!("{at_s}[{i}].except[{j}]"),
                    format!("{e} is not inside {c}"),
                ));
            }
            except.push(en);
        }
        out.push(Peer::Cidr { net, except });
    }
    Ok(out)
}

fn compile_selectors(
    sels: &[Selector],
    at: &str,
    eps: &[Endpoint],
) -> Result<Vec<Peer>, CompileError> {
    sels.iter()
        .enumerate()
        .map(|(i, s)| {
            let sel =
                CompiledSelector::compile(s).map_err(|(f, m)| err(format!("{at}[{i}].{f}"), m))?;
            let ids = eps
                .iter()
                .enumerate()
                .filter(|(_, e)| sel.matches(&e.labels))
                .map(|(k, _)| k)
                .collect();
            Ok(Peer::Endpoints { sel, ids })
        })
        .collect()
}

/// The peer fields of one item, generic over direction.
struct PeerFields<'a> {
    endpoints: &'a Option<Vec<Selector>>,
    entities: &'a Option<Vec<String>>,
    cidr: &'a Option<Vec<String>>,
    cidr_set: &'a Option<Vec<CidrSet>>,
    requires: &'a Option<Vec<Selector>>,
    to_ports: &'a Option<Vec<PortRule>>,
    icmps: &'a Option<Vec<IcmpRule>>,
    names: [&'static str; 5],
}

fn compile_item(
    f: PeerFields<'_>,
    at: &str,
    name: &str,
    eps: &[Endpoint],
    deny: bool,
) -> Result<Item, CompileError> {
    if f.requires.is_some() {
        return Err(err(
            format!("{at}.{}", f.names[4]),
            "requires-rules are deprecated and not supported",
        ));
    }
    let mut peers: Option<Vec<Peer>> = None;
    if let Some(s) = f.endpoints {
        peers.get_or_insert_with(Vec::new).extend(compile_selectors(
            s,
            &format!("{at}.{}", f.names[0]),
            eps,
        )?);
    }
    if let Some(e) = f.entities {
        peers
            .get_or_insert_with(Vec::new)
            .extend(compile_entities(e, &format!("{at}.{}", f.names[1]))?);
    }
    if f.cidr.is_some() || f.cidr_set.is_some() {
        let empty_c = Vec::new();
        let empty_s = Vec::new();
        peers.get_or_insert_with(Vec::new).extend(compile_cidrs(
            f.cidr.as_ref().unwrap_or(&empty_c),
            f.cidr_set.as_ref().unwrap_or(&empty_s),
            &format!("{at}.{}", f.names[2]),
            &format!("{at}.{}", f.names[3]),
        )?);
    }
    let ports = match f.to_ports {
        Some(p) => Some(compile_ports(p, &format!("{at}.toPorts"), name, deny)?),
        None => None,
    };
    let icmps = match f.icmps {
        Some(i) => Some(compile_icmps(i, &format!("{at}.icmps"))?),
        None => None,
    };
    if ports.is_some() && icmps.is_some() {
        return Err(err(
            format!("{at}.icmps"),
            "icmps and toPorts cannot be in the same rule",
        ));
    }
    Ok(Item {
        name: format!("{name}/{at}"),
        peers,
        ports,
        icmps,
    })
}

fn ingress_fields(r: &IngressRule) -> PeerFields<'_> {
    PeerFields {
        endpoints: &r.from_endpoints,
        entities: &r.from_entities,
        cidr: &r.from_cidr,
        cidr_set: &r.from_cidr_set,
        requires: &r.from_requires,
        to_ports: &r.to_ports,
        icmps: &r.icmps,
        names: [
            "fromEndpoints",
            "fromEntities",
            "fromCIDR",
            "fromCIDRSet",
            "fromRequires",
        ],
    }
}

fn egress_fields(r: &EgressRule) -> PeerFields<'_> {
    PeerFields {
        endpoints: &r.to_endpoints,
        entities: &r.to_entities,
        cidr: &r.to_cidr,
        cidr_set: &r.to_cidr_set,
        requires: &r.to_requires,
        to_ports: &r.to_ports,
        icmps: &r.icmps,
        names: [
            "toEndpoints",
            "toEntities",
            "toCIDR",
            "toCIDRSet",
            "toRequires",
        ],
    }
}

/// Compile one rule (`spec` or `specs[i]`, path `at`) of policy `name`.
pub fn compile_rule(
    r: &Rule,
    at: &str,
    name: &str,
    eps: &[Endpoint],
) -> Result<CompiledRule, CompileError> {
    let (subject, subject_ids) = match (&r.endpoint_selector, &r.node_selector) {
        (Some(_), Some(_)) => {
            return Err(err(at, "endpointSelector and nodeSelector are exclusive"))
        }
        (Some(s), None) => {
            let sel = CompiledSelector::compile(s)
                .map_err(|(f, m)| err(format!("{at}.endpointSelector.{f}"), m))?;
            let ids = eps
                .iter()
                .enumerate()
                .filter(|(_, e)| sel.matches(&e.labels))
                .map(|(k, _)| k)
                .collect();
            (Some(sel), ids)
        }
        // A node selector selects this host.
        (None, Some(_)) => (
            None,
            eps.iter()
                .enumerate()
                .filter(|(_, e)| e.host)
                .map(|(k, _)| k)
                .collect(),
        ),
        (None, None) => return Err(err(at, "endpointSelector is required")),
    };
    let mk_in = |v: &Option<Vec<IngressRule>>,
                 field: &str,
                 deny: bool|
     -> Result<Vec<Item>, CompileError> {
        v.iter()
            .flatten()
            .enumerate()
            .map(|(i, it)| {
                compile_item(
                    ingress_fields(it),
                    &format!("{at}.{field}[{i}]"),
                    name,
                    eps,
                    deny,
                )
            })
            .collect()
    };
    let mk_eg =
        |v: &Option<Vec<EgressRule>>, field: &str, deny: bool| -> Result<Vec<Item>, CompileError> {
            v.iter()
                .flatten()
                .enumerate()
                .map(|(i, it)| {
                    compile_item(
                        egress_fields(it),
                        &format!("{at}.{field}[{i}]"),
                        name,
                        eps,
                        deny,
                    )
                })
                .collect()
        };
    let dd = r.enable_default_deny.clone().unwrap_or_default();
    Ok(CompiledRule {
        name: name.to_string(),
        subject,
        subject_ids,
        ingress: mk_in(&r.ingress, "ingress", false)?,
        ingress_deny: mk_in(&r.ingress_deny, "ingressDeny", true)?,
        egress: mk_eg(&r.egress, "egress", false)?,
        egress_deny: mk_eg(&r.egress_deny, "egressDeny", true)?,
        // Allow sections put the endpoint into default deny; deny-only policies do not.
        enforce_ingress: dd.ingress.unwrap_or(r.ingress.is_some()),
        enforce_egress: dd.egress.unwrap_or(r.egress.is_some()),
    })
}

impl Peer {
    fn matches(&self, addr: IpAddr, id: Option<usize>, eps: &[Endpoint]) -> bool {
        match self {
            Peer::Endpoints { ids, .. } => id.is_some_and(|i| ids.contains(&i)),
            Peer::Entity(Entity::All) => true,
            Peer::Entity(Entity::World) => id.is_none(),
            Peer::Entity(Entity::Cluster) => id.is_some_and(|i| !eps[i].host),
            Peer::Entity(Entity::Host) => id.is_some_and(|i| eps[i].host),
            Peer::Cidr { net, except } => {
                net.contains(&addr) && !except.iter().any(|e| e.contains(&addr))
            }
        }
    }
}

impl Item {
    fn match_flow(
        &self,
        addr: IpAddr,
        id: Option<usize>,
        eps: &[Endpoint],
        proto: Proto,
        dport: u16,
    ) -> ItemMatch<'_> {
        if let Some(peers) = &self.peers {
            if !peers.iter().any(|p| p.matches(addr, id, eps)) {
                return ItemMatch::No;
            }
        }
        match (&self.ports, &self.icmps) {
            (None, None) => ItemMatch::AllowAll,
            (_, Some(ic)) => {
                let v6 = addr.is_ipv6();
                if proto == Proto::Icmp
                    && ic
                        .iter()
                        .any(|m| m.kind as u16 == dport && m.v6.is_none_or(|f| f == v6))
                {
                    ItemMatch::AllowAll
                } else {
                    ItemMatch::No
                }
            }
            (Some(groups), None) => {
                let p = match proto {
                    Proto::Tcp => 6,
                    Proto::Udp => 17,
                    Proto::Other(132) => 132,
                    _ => return ItemMatch::No,
                };
                let mut best = ItemMatch::No;
                for g in groups {
                    let hit = if g.ports.is_empty() {
                        g.l7.is_none() || p == 6
                    } else {
                        g.ports.iter().any(|r| {
                            r.proto.is_none_or(|x| x == p) && (r.lo..=r.hi).contains(&dport)
                        })
                    };
                    if !hit {
                        continue;
                    }
                    match &g.l7 {
                        None => return ItemMatch::AllowAll,
                        Some(s) if s.rules.is_empty() => return ItemMatch::AllowAll,
                        Some(s) => best = ItemMatch::L7(s),
                    }
                }
                best
            }
        }
    }
}

/// One enforcement point's outcome for a flow.
enum Point {
    NotEnforced,
    Denied(String),
    Allowed {
        names: Vec<String>,
        allow_all: bool,
        /// The L7 lists that matched, all of one protocol.
        lists: Vec<L7Rules>,
    },
}

impl Model {
    pub fn new(endpoints: Vec<Endpoint>, rules: Vec<CompiledRule>) -> Model {
        let mut by_subject = vec![Vec::new(); endpoints.len()];
        let mut ingress_enforced = vec![false; endpoints.len()];
        let mut egress_enforced = vec![false; endpoints.len()];
        for (ri, r) in rules.iter().enumerate() {
            for &e in &r.subject_ids {
                by_subject[e].push(ri);
                ingress_enforced[e] |= r.enforce_ingress;
                egress_enforced[e] |= r.enforce_egress;
            }
        }
        Model {
            endpoints,
            rules,
            by_subject,
            ingress_enforced,
            egress_enforced,
        }
    }

    /// Items that put http and memcache on the same port of one endpoint
    /// (across rules): `(rule index, item name, endpoint name, port)`, one per
    /// clashing pair, reported at the later item. `decide` would deny such
    /// flows; load refuses them instead.
    pub fn l7_conflicts(&self) -> Vec<(usize, String, String, u16)> {
        let mut out = Vec::new();
        for (ep, rules) in self.by_subject.iter().enumerate() {
            for ingress in [true, false] {
                let mut seen: Vec<(usize, &Item, PortRange, L7Proto)> = Vec::new();
                for &ri in rules {
                    let r = &self.rules[ri];
                    let items = if ingress { &r.ingress } else { &r.egress };
                    for it in items {
                        for g in it.ports.iter().flatten() {
                            let Some(l7) = &g.l7 else { continue };
                            for &pr in &g.ports {
                                let clash = seen.iter().find(|(_, _, q, p)| {
                                    *p != l7.rules.proto()
                                        && q.lo <= pr.hi
                                        && pr.lo <= q.hi
                                        && (q.proto.is_none()
                                            || pr.proto.is_none()
                                            || q.proto == pr.proto)
                                });
                                if let Some((_, _, q, _)) = clash {
                                    out.push((
                                        ri,
                                        it.name.clone(),
                                        self.endpoints[ep].name.clone(),
                                        pr.lo.max(q.lo),
                                    ));
                                } else {
                                    seen.push((ri, it, pr, l7.rules.proto()));
                                }
                            }
                        }
                    }
                }
            }
        }
        out.sort();
        out.dedup();
        out
    }

    /// The endpoint owning `ip`: the most specific address match.
    pub fn ident(&self, ip: IpAddr) -> Option<usize> {
        let mut best: Option<(usize, u8)> = None;
        for (i, e) in self.endpoints.iter().enumerate() {
            for n in &e.nets {
                if n.contains(&ip) && best.is_none_or(|(_, l)| n.prefix_len() > l) {
                    best = Some((i, n.prefix_len()));
                }
            }
        }
        best.map(|(i, _)| i)
    }

    /// Whether any ingress rule selecting `ep` could allow `proto`/`port` from anyone.
    pub fn ingress_port_open(&self, ep: usize, proto: Proto, port: u16) -> bool {
        if !self.ingress_enforced[ep] {
            return true;
        }
        self.by_subject[ep].iter().any(|&ri| {
            self.rules[ri].ingress.iter().any(|it| {
                let open = Item {
                    peers: None,
                    ..it.clone()
                };
                !matches!(
                    open.match_flow(
                        IpAddr::from([0, 0, 0, 0]),
                        None,
                        &self.endpoints,
                        proto,
                        port
                    ),
                    ItemMatch::No
                )
            })
        })
    }

    pub fn ingress_enforced(&self, ep: usize) -> bool {
        self.ingress_enforced[ep]
    }

    pub fn egress_enforced(&self, ep: usize) -> bool {
        self.egress_enforced[ep]
    }

    fn point(
        &self,
        ep: Option<usize>,
        ingress: bool,
        peer: IpAddr,
        peer_id: Option<usize>,
        proto: Proto,
        dport: u16,
    ) -> Point {
        let Some(ep) = ep else {
            return Point::NotEnforced;
        };
        let dir = if ingress { "ingress" } else { "egress" };
        for &ri in &self.by_subject[ep] {
            let r = &self.rules[ri];
            let deny = if ingress {
                &r.ingress_deny
            } else {
                &r.egress_deny
            };
            for it in deny {
                if !matches!(
                    it.match_flow(peer, peer_id, &self.endpoints, proto, dport),
                    ItemMatch::No
                ) {
                    return Point::Denied(format!("denied by {}", it.name));
                }
            }
        }
        let enforced = if ingress {
            self.ingress_enforced[ep]
        } else {
            self.egress_enforced[ep]
        };
        if !enforced {
            return Point::NotEnforced;
        }
        let mut names = Vec::new();
        let mut allow_all = false;
        let mut lists: Vec<L7Rules> = Vec::new();
        for &ri in &self.by_subject[ep] {
            let r = &self.rules[ri];
            let items = if ingress { &r.ingress } else { &r.egress };
            for it in items {
                match it.match_flow(peer, peer_id, &self.endpoints, proto, dport) {
                    ItemMatch::No => {}
                    ItemMatch::AllowAll => {
                        names.push(it.name.clone());
                        allow_all = true;
                    }
                    ItemMatch::L7(s) => {
                        if lists.first().is_some_and(|l| l.proto() != s.rules.proto()) {
                            return Point::Denied(format!(
                                "conflicting L7 protocols on port {dport}"
                            ));
                        }
                        names.push(it.name.clone());
                        // Shares the port's list (an `Arc`), copies no rule.
                        lists.push(s.rules.clone());
                    }
                }
            }
        }
        if names.is_empty() {
            return Point::Denied(format!(
                "no {dir} rule of {} allows it",
                self.endpoints[ep].name
            ));
        }
        Point::Allowed {
            names,
            allow_all,
            lists,
        }
    }

    pub fn decide(&self, src: IpAddr, dst: IpAddr, proto: Proto, dport: u16) -> FlowDecision {
        let sid = self.ident(src);
        let did = self.ident(dst);
        let mut names = Vec::new();
        let mut stages = Vec::new();
        let mut l7proto = None;
        for (ingress, ep, peer, peer_id) in [(true, did, src, sid), (false, sid, dst, did)] {
            match self.point(ep, ingress, peer, peer_id, proto, dport) {
                Point::NotEnforced => {}
                Point::Denied(why) => {
                    return FlowDecision {
                        allowed: false,
                        detail: why,
                        l7: None,
                    }
                }
                Point::Allowed {
                    names: n,
                    allow_all,
                    lists,
                } => {
                    names.extend(n);
                    if let Some(p) = lists.first().map(L7Rules::proto) {
                        if l7proto.is_some_and(|q| q != p) {
                            return FlowDecision {
                                allowed: false,
                                detail: "ingress and egress L7 protocols differ".into(),
                                l7: None,
                            };
                        }
                        l7proto = Some(p);
                    }
                    if !allow_all {
                        stages.push(lists);
                    }
                }
            }
        }
        let detail = if names.is_empty() {
            "not enforced".to_string()
        } else {
            names.join(",")
        };
        let l7 = match (l7proto, stages.is_empty()) {
            (Some(L7Proto::Http), false) => {
                Some(L7Policy::Http(Arc::new(rule_set(&stages, |l| match l {
                    L7Rules::Http(r) => Some(r.clone()),
                    L7Rules::Memcache(_) => None,
                }))))
            }
            (Some(L7Proto::Memcache), false) => Some(L7Policy::Memcache(Arc::new(rule_set(
                &stages,
                |l| match l {
                    L7Rules::Memcache(r) => Some(r.clone()),
                    L7Rules::Http(_) => None,
                },
            )))),
            _ => None,
        };
        FlowDecision {
            allowed: true,
            detail,
            l7,
        }
    }
}

/// A flow's rule set from its enforcement points' matched lists. The points
/// were checked to agree on one protocol above; `pick` takes that
/// protocol's lists.
fn rule_set<R>(
    points: &[Vec<L7Rules>],
    pick: impl Fn(&L7Rules) -> Option<NamedList<R>>,
) -> RuleSet<R> {
    RuleSet {
        stages: points
            .iter()
            .map(|lists| L7Stage {
                allow_all: false,
                lists: lists.iter().filter_map(&pick).collect(),
            })
            .collect(),
    }
}
