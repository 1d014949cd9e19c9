//! From documents to the compiled model (`model`): endpoints with their
//! addresses, rules with precomputed subjects and peers, each port's L7
//! rules compiled once into a list that every flow on the port shares.

use std::net::IpAddr;

use ipnet::IpNet;

use super::describe::{describe_http, describe_memcache};
use super::model::{
    CompiledRule, Endpoint, Entity, IcmpMatch, Item, L7Set, Peer, PortGroup, PortRange,
};
use super::selector::{normalize, CompiledSelector};
use super::spec::{
    CidrSet, EgressRule, EndpointSpec, IcmpRule, IngressRule, PortRule, PortValue, Rule, Selector,
};
use super::{L7Rules, NamedRule, RuleList};
use crate::l7::http::{HttpRule, HttpRuleSpec};
use crate::l7::memcache::{MemcacheRule, MemcacheRuleSpec};

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
                    Some(l7_set(specs, &pat, rule_name, &HTTP)?)
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
                    Some(l7_set(specs, &pat, rule_name, &MEMCACHE)?)
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

/// How one protocol's rule list is written (`rules.<field>`), described for
/// `check`, compiled, and tagged with its protocol.
struct L7Kind<S: 'static, R: 'static> {
    field: &'static str,
    describe: fn(&S) -> String,
    compile: fn(&S) -> Result<R, crate::l7::http::RuleError>,
    tag: fn(RuleList<R>) -> L7Rules,
}

const HTTP: L7Kind<HttpRuleSpec, HttpRule> = L7Kind {
    field: "http",
    describe: describe_http,
    compile: HttpRule::compile,
    tag: L7Rules::Http,
};

const MEMCACHE: L7Kind<MemcacheRuleSpec, MemcacheRule> = L7Kind {
    field: "l7",
    describe: describe_memcache,
    compile: MemcacheRule::compile,
    tag: L7Rules::Memcache,
};

/// Compile one port's L7 rule list (`rules.<field>[k]`), naming each rule
/// and keeping its text for `check`.
fn l7_set<S, R>(
    specs: &[S],
    pat: &str,
    rule_name: &str,
    kind: &L7Kind<S, R>,
) -> Result<L7Set, CompileError> {
    let field = kind.field;
    let mut rules = Vec::new();
    for (k, spec) in specs.iter().enumerate() {
        let rule = (kind.compile)(spec)
            .map_err(|e| err(format!("{pat}.rules.{field}[{k}].{}", e.field), e.message))?;
        rules.push(NamedRule {
            name: format!("{rule_name}/{pat}/{field}[{k}]").into(),
            rule,
        });
    }
    Ok(L7Set {
        rules: (kind.tag)(rules.into()),
        texts: specs.iter().map(kind.describe).collect(),
    })
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
            let ids = selected(&sel, eps);
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
            let ids = selected(&sel, eps);
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
        audit: false,
        deny_reply: None,
    })
}

/// Indexes of the endpoints `sel` selects.
fn selected(sel: &CompiledSelector, eps: &[Endpoint]) -> Vec<usize> {
    (0..eps.len())
        .filter(|&k| sel.matches(&eps[k].labels))
        .collect()
}
