//! The compiled model: endpoints with their addresses, rules with
//! precomputed subjects and peers, port groups with their shared L7 rule
//! lists. `compile` builds it, `eval` decides flows over it, `check`
//! describes it.

use std::collections::HashMap;
use std::net::IpAddr;

use ipnet::IpNet;

use super::selector::{CompiledSelector, Labels};
use super::L7Rules;

#[derive(Debug, Clone)]
pub struct Endpoint {
    pub name: String,
    pub labels: Labels,
    pub nets: Vec<IpNet>,
    pub host: bool,
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
    /// The policy is annotated `enforcer.io/audit: "true"`.
    pub audit: bool,
    /// The policy's deny-reply annotations (`annotations`), if any.
    pub deny_reply: Option<std::sync::Arc<crate::config::DenyReplyOverride>>,
}
/// A compiled policy set: endpoints, rules, and the indexes `decide` uses.
pub struct Model {
    pub endpoints: Vec<Endpoint>,
    pub rules: Vec<CompiledRule>,
    /// Per endpoint: indexes into `rules` that select it.
    pub(super) by_subject: Vec<Vec<usize>>,
    pub(super) ingress_enforced: Vec<bool>,
    pub(super) egress_enforced: Vec<bool>,
    /// Per endpoint: every policy selecting it is annotated for audit, so
    /// what it would deny passes (flagged) instead.
    pub(super) audit: Vec<bool>,
    /// Which endpoint owns an address (longest prefix).
    owners: PrefixTable,
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
        let audit = by_subject
            .iter()
            .map(|rs: &Vec<usize>| !rs.is_empty() && rs.iter().all(|&ri| rules[ri].audit))
            .collect();
        let mut owners = PrefixTable::default();
        for (i, e) in endpoints.iter().enumerate() {
            for n in &e.nets {
                owners.insert(*n, i);
            }
        }
        Model {
            owners,
            endpoints,
            rules,
            by_subject,
            ingress_enforced,
            audit,
            egress_enforced,
        }
    }

    pub fn ingress_enforced(&self, ep: usize) -> bool {
        self.ingress_enforced[ep]
    }

    pub fn egress_enforced(&self, ep: usize) -> bool {
        self.egress_enforced[ep]
    }

    /// The endpoint owning `ip`: the most specific address match (the
    /// first endpoint listed, between equally specific ones).
    pub fn ident(&self, ip: IpAddr) -> Option<usize> {
        self.owners.lookup(ip)
    }
}

/// Longest-prefix match from addresses to endpoint indexes: one hash map
/// per prefix length in use, probed from the longest length down, so a
/// lookup costs at most one probe per distinct length (a handful in real
/// Endpoints documents), whatever the number of endpoints.
#[derive(Debug, Default)]
struct PrefixTable {
    v4: Vec<(u8, HashMap<u32, usize>)>,
    v6: Vec<(u8, HashMap<u128, usize>)>,
}

/// `a` with all but its first `len` bits cleared (a shift by the full
/// width would overflow, hence /0 apart).
fn mask4(a: u32, len: u8) -> u32 {
    match len {
        0 => 0,
        l => a & (u32::MAX << (32 - u32::from(l))),
    }
}

fn mask6(a: u128, len: u8) -> u128 {
    match len {
        0 => 0,
        l => a & (u128::MAX << (128 - u32::from(l))),
    }
}

/// The map for `len` in `levels` (kept longest first), created when missing.
fn level<K>(levels: &mut Vec<(u8, HashMap<K, usize>)>, len: u8) -> &mut HashMap<K, usize> {
    let at = match levels.iter().position(|(l, _)| *l <= len) {
        Some(i) if levels[i].0 == len => i,
        Some(i) => {
            levels.insert(i, (len, HashMap::new()));
            i
        }
        None => {
            levels.push((len, HashMap::new()));
            levels.len() - 1
        }
    };
    &mut levels[at].1
}

impl PrefixTable {
    /// Add `net` for endpoint `id`; an earlier endpoint with the same
    /// prefix keeps it.
    fn insert(&mut self, net: IpNet, id: usize) {
        let len = net.prefix_len();
        match net {
            IpNet::V4(n) => {
                let k = mask4(u32::from(n.addr()), len);
                level(&mut self.v4, len).entry(k).or_insert(id);
            }
            IpNet::V6(n) => {
                let k = mask6(u128::from(n.addr()), len);
                level(&mut self.v6, len).entry(k).or_insert(id);
            }
        }
    }

    fn lookup(&self, ip: IpAddr) -> Option<usize> {
        match ip {
            IpAddr::V4(a) => {
                let a = u32::from(a);
                self.v4
                    .iter()
                    .find_map(|(l, m)| m.get(&mask4(a, *l)).copied())
            }
            IpAddr::V6(a) => {
                let a = u128::from(a);
                self.v6
                    .iter()
                    .find_map(|(l, m)| m.get(&mask6(a, *l)).copied())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    /// The table agrees with a scan over every prefix, longest first and
    /// the first listed on ties, including /0, host routes and both families.
    #[test]
    fn prefix_table_matches_a_linear_scan() {
        let nets = [
            "10.0.0.0/8",
            "10.66.0.0/16",
            "10.66.0.2/32",
            "10.66.0.0/16",
            "0.0.0.0/0",
            "192.168.1.128/25",
            "fd66::/64",
            "fd66::2/128",
            "::/0",
            "fd00::/8",
        ];
        let mut t = PrefixTable::default();
        for (i, n) in nets.iter().enumerate() {
            t.insert(net(n), i);
        }
        let scan = |ip: IpAddr| {
            let mut best: Option<(usize, u8)> = None;
            for (i, n) in nets.iter().enumerate() {
                let n = net(n);
                if n.contains(&ip) && best.is_none_or(|(_, l)| n.prefix_len() > l) {
                    best = Some((i, n.prefix_len()));
                }
            }
            best.map(|(i, _)| i)
        };
        for a in [
            "10.66.0.2",
            "10.66.0.3",
            "10.1.2.3",
            "11.0.0.1",
            "192.168.1.200",
            "192.168.1.1",
            "fd66::2",
            "fd66::3",
            "fd01::1",
            "2001:db8::1",
        ] {
            let ip: IpAddr = a.parse().unwrap();
            assert_eq!(t.lookup(ip), scan(ip), "{a}");
        }
        assert_eq!(
            t.lookup("10.66.9.9".parse().unwrap()),
            Some(1),
            "first of equals"
        );
        let empty = PrefixTable::default();
        assert_eq!(empty.lookup("10.0.0.1".parse().unwrap()), None);
    }
}
