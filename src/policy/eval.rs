//! Deciding a flow over the compiled model: which items match it at each
//! enforcement point (ingress at the destination, egress at the source),
//! deny rules first, and the flow's L7 rule set when its port has one.

use std::net::IpAddr;
use std::sync::Arc;

use super::model::{Endpoint, Entity, Item, L7Set, Model, Peer, PortRange};
use crate::config::DenyReplyOverride;

use super::{FlowDecision, L7Policy, L7Proto, L7Rules, L7Stage, Proto, RuleList, RuleSet};

/// How an item matched a flow: L7 rules to apply, or the whole port.
enum ItemMatch<'a> {
    No,
    AllowAll,
    L7(&'a L7Set),
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
        /// The deny reply of the first policy with L7 lists here that sets one.
        deny_reply: Option<Arc<DenyReplyOverride>>,
    },
}

impl Model {
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
        let mut deny_reply = None;
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
                        if deny_reply.is_none() {
                            deny_reply = r.deny_reply.clone();
                        }
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
            deny_reply,
        }
    }

    pub fn decide(&self, src: IpAddr, dst: IpAddr, proto: Proto, dport: u16) -> FlowDecision {
        let sid = self.ident(src);
        let did = self.ident(dst);
        let mut names = Vec::new();
        let mut stages = Vec::new();
        let mut l7proto = None;
        let mut audited = None;
        for (ingress, ep, peer, peer_id) in [(true, did, src, sid), (false, sid, dst, did)] {
            let audit = ep.is_some_and(|e| self.audit.get(e) == Some(&true));
            match self.point(ep, ingress, peer, peer_id, proto, dport) {
                Point::NotEnforced => {}
                // The other point may still deny it for real.
                Point::Denied(why) if audit => {
                    audited.get_or_insert(why);
                }
                Point::Denied(why) => {
                    return FlowDecision {
                        allowed: false,
                        detail: why,
                        l7: None,
                        audit: None,
                    }
                }
                Point::Allowed {
                    names: n,
                    allow_all,
                    lists,
                    deny_reply,
                } => {
                    names.extend(n);
                    if let Some(p) = lists.first().map(L7Rules::proto) {
                        if l7proto.is_some_and(|q| q != p) {
                            return FlowDecision {
                                allowed: false,
                                detail: "ingress and egress L7 protocols differ".into(),
                                l7: None,
                                audit: None,
                            };
                        }
                        l7proto = Some(p);
                    }
                    if !allow_all {
                        stages.push((lists, audit, deny_reply));
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
            audit: audited,
        }
    }
}

/// A flow's rule set from its enforcement points' matched lists. The points
/// were checked to agree on one protocol above; `pick` takes that
/// protocol's lists.
/// One enforcement point's matched lists, its audit mode and deny reply.
type Stage = (Vec<L7Rules>, bool, Option<Arc<DenyReplyOverride>>);

fn rule_set<R>(points: &[Stage], pick: impl Fn(&L7Rules) -> Option<RuleList<R>>) -> RuleSet<R> {
    RuleSet {
        stages: points
            .iter()
            .map(|(lists, audit, deny_reply)| L7Stage {
                allow_all: false,
                lists: lists.iter().filter_map(&pick).collect(),
                audit: *audit,
                deny_reply: deny_reply.clone(),
            })
            .collect(),
    }
}
