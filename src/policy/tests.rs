//! Decision semantics over small policy sets written as YAML.

use std::net::IpAddr;

use super::{L7Proto, Policy, Proto};

const EPS: &str = r#"
kind: Endpoints
endpoints:
- name: server
  labels: {app: server, tier: back}
  addresses: ["10.0.0.2", "fd00::2"]
- name: web
  labels: {app: web, tier: front}
  addresses: ["10.0.0.3"]
- name: lab-net
  labels: {zone: lab}
  addresses: ["10.0.0.0/24"]
- name: me
  host: true
  addresses: ["10.0.0.9"]
"#;

fn policy(yaml: &str) -> Policy {
    Policy::from_sources(&[
        ("eps.yaml".into(), EPS.into()),
        ("p.yaml".into(), yaml.into()),
    ])
    .unwrap_or_else(|e| {
        panic!(
            "{}",
            e.iter()
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        )
    })
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn allows(p: &Policy, src: &str, dst: &str, proto: Proto, port: u16) -> bool {
    p.decide(ip(src), ip(dst), proto, port).allowed
}

const HEAD: &str = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: t}\n";

#[test]
fn seed_policy_loads_unchanged_and_decides() {
    let seed = std::fs::read_to_string("policies/memcd-sw-security-policy.yaml").unwrap();
    let eps = std::fs::read_to_string("policies/endpoints.yaml").unwrap();
    let p = Policy::from_sources(&[("endpoints.yaml".into(), eps), ("seed.yaml".into(), seed)])
        .unwrap();
    let d = p.decide(ip("10.66.0.11"), ip("10.66.0.2"), Proto::Tcp, 11211);
    assert!(d.allowed);
    let l7 = d.l7.expect("memcached rules");
    assert_eq!(l7.proto(), L7Proto::Memcache);
    assert_eq!(l7.rules_per_stage(), vec![2]);
    assert!(d.detail.contains("secure-fleet/spec.ingress[0]"));
    // world and other ports: default deny
    assert!(!allows(&p, "10.66.0.14", "10.66.0.2", Proto::Tcp, 11211));
    assert!(!allows(&p, "10.66.0.11", "10.66.0.2", Proto::Tcp, 22));
    assert_eq!(p.identity(ip("10.66.0.13")), "alliance-tracker");
    assert_eq!(p.identity(ip("192.0.2.1")), "world");
    // the server is not egress-enforced: its own connections go anywhere
    assert!(allows(&p, "10.66.0.2", "10.66.0.14", Proto::Tcp, 80));
}

#[test]
fn most_specific_address_wins_identity() {
    let p = policy(&format!(
        "{HEAD}spec:\n  endpointSelector: {{matchLabels: {{app: server}}}}\n  ingress: []\n"
    ));
    assert_eq!(p.identity(ip("10.0.0.2")), "server");
    assert_eq!(p.identity(ip("10.0.0.77")), "lab-net");
    assert_eq!(p.identity(ip("10.0.1.1")), "world");
}

#[test]
fn empty_ingress_list_is_default_deny_and_deny_only_is_not() {
    let p = policy(&format!(
        "{HEAD}spec:\n  endpointSelector: {{matchLabels: {{app: server}}}}\n  ingress: []\n"
    ));
    assert!(!allows(&p, "10.0.0.3", "10.0.0.2", Proto::Tcp, 80));
    let p = policy(&format!(
        "{HEAD}spec:\n  endpointSelector: {{matchLabels: {{app: server}}}}\n  ingressDeny:\n  - fromEndpoints: [{{matchLabels: {{app: web}}}}]\n"
    ));
    assert!(
        !allows(&p, "10.0.0.3", "10.0.0.2", Proto::Tcp, 80),
        "denied by the deny rule"
    );
    assert!(
        allows(&p, "10.0.0.77", "10.0.0.2", Proto::Tcp, 80),
        "deny-only leaves others alone"
    );
}

#[test]
fn ports_ranges_and_protocols() {
    let p = policy(&format!(
        "{HEAD}spec:
  endpointSelector: {{matchLabels: {{app: server}}}}
  ingress:
  - toPorts:
    - ports:
      - {{port: 80, protocol: TCP}}
      - {{port: '8000', endPort: 8010}}
      - {{port: '53', protocol: UDP}}
"
    ));
    assert!(allows(&p, "10.0.0.3", "10.0.0.2", Proto::Tcp, 80));
    assert!(!allows(&p, "10.0.0.3", "10.0.0.2", Proto::Udp, 80));
    assert!(
        allows(&p, "10.0.0.3", "10.0.0.2", Proto::Udp, 8005),
        "ANY protocol"
    );
    assert!(allows(&p, "10.0.0.3", "10.0.0.2", Proto::Tcp, 8010));
    assert!(!allows(&p, "10.0.0.3", "10.0.0.2", Proto::Tcp, 8011));
    assert!(
        allows(&p, "192.0.2.1", "10.0.0.2", Proto::Udp, 53),
        "no peer fields: anyone"
    );
    assert!(!allows(&p, "192.0.2.1", "10.0.0.2", Proto::Tcp, 53));
}

#[test]
fn cidr_sets_with_except_and_entities() {
    let p = policy(&format!(
        "{HEAD}spec:
  endpointSelector: {{matchLabels: {{app: server}}}}
  ingress:
  - fromCIDRSet:
    - cidr: 192.0.2.0/24
      except: [192.0.2.128/25]
  - fromEntities: [host]
    toPorts: [{{ports: [{{port: '22', protocol: TCP}}]}}]
"
    ));
    assert!(allows(&p, "192.0.2.1", "10.0.0.2", Proto::Tcp, 1234));
    assert!(!allows(&p, "192.0.2.200", "10.0.0.2", Proto::Tcp, 1234));
    assert!(
        allows(&p, "10.0.0.9", "10.0.0.2", Proto::Tcp, 22),
        "host entity"
    );
    assert!(!allows(&p, "10.0.0.3", "10.0.0.2", Proto::Tcp, 22));
    let p = policy(&format!(
        "{HEAD}spec:\n  endpointSelector: {{matchLabels: {{app: server}}}}\n  ingress:\n  - fromEntities: [world]\n"
    ));
    assert!(allows(&p, "192.0.2.1", "10.0.0.2", Proto::Tcp, 1));
    assert!(
        !allows(&p, "10.0.0.3", "10.0.0.2", Proto::Tcp, 1),
        "an endpoint is not world"
    );
    let p = policy(&format!(
        "{HEAD}spec:\n  endpointSelector: {{matchLabels: {{app: server}}}}\n  ingress:\n  - fromEntities: [cluster]\n"
    ));
    assert!(allows(&p, "10.0.0.3", "10.0.0.2", Proto::Tcp, 1));
    assert!(!allows(&p, "192.0.2.1", "10.0.0.2", Proto::Tcp, 1));
}

#[test]
fn egress_is_enforced_at_the_source_and_deny_wins() {
    let p = policy(&format!(
        "{HEAD}spec:
  endpointSelector: {{matchLabels: {{app: web}}}}
  egress:
  - toEndpoints: [{{matchExpressions: [{{key: tier, operator: In, values: [back]}}]}}]
  egressDeny:
  - toPorts: [{{ports: [{{port: '6379'}}]}}]
"
    ));
    assert!(allows(&p, "10.0.0.3", "10.0.0.2", Proto::Tcp, 443));
    assert!(
        !allows(&p, "10.0.0.3", "10.0.0.2", Proto::Tcp, 6379),
        "deny wins"
    );
    assert!(
        !allows(&p, "10.0.0.3", "192.0.2.1", Proto::Tcp, 443),
        "egress default deny"
    );
    assert!(
        allows(&p, "10.0.0.2", "10.0.0.3", Proto::Tcp, 443),
        "server is not enforced"
    );
}

#[test]
fn icmps_follow_type_and_family_and_l3_rules_allow_icmp() {
    let p = policy(&format!(
        "{HEAD}spec:
  endpointSelector: {{matchLabels: {{app: server}}}}
  ingress:
  - icmps: [{{fields: [{{type: 8, family: IPv4}}, {{type: EchoRequest, family: IPv6}}]}}]
  - fromEndpoints: [{{matchLabels: {{app: web}}}}]
"
    ));
    assert!(
        p.decide(ip("192.0.2.1"), ip("10.0.0.2"), Proto::Icmp, 8)
            .allowed
    );
    assert!(
        !p.decide(ip("192.0.2.1"), ip("10.0.0.2"), Proto::Icmp, 13)
            .allowed
    );
    assert!(
        p.decide(ip("2001:db8::1"), ip("fd00::2"), Proto::Icmp, 128)
            .allowed
    );
    assert!(
        !p.decide(ip("2001:db8::1"), ip("fd00::2"), Proto::Icmp, 8)
            .allowed
    );
    assert!(
        p.decide(ip("10.0.0.3"), ip("10.0.0.2"), Proto::Icmp, 13)
            .allowed,
        "L3 rule: all ICMP"
    );
}

#[test]
fn l7_stages_merge_and_l4_rules_on_the_same_port_allow_all() {
    let l7 = "    toPorts:\n    - ports: [{port: '80', protocol: TCP}]\n      rules:\n        http: [{method: GET}]\n";
    let p = policy(&format!(
        "{HEAD}spec:\n  endpointSelector: {{matchLabels: {{app: server}}}}\n  ingress:\n  - fromEndpoints: [{{matchLabels: {{app: web}}}}]\n{l7}  - fromEndpoints: [{{matchLabels: {{zone: lab}}}}]\n    toPorts:\n    - ports: [{{port: '80', protocol: TCP}}]\n      rules:\n        http: [{{method: POST}}]\n"
    ));
    // web is not in zone=lab (its own endpoint is more specific): one rule
    let d = p.decide(ip("10.0.0.3"), ip("10.0.0.2"), Proto::Tcp, 80);
    assert_eq!(d.l7.as_ref().unwrap().rules_per_stage(), vec![1]);
    let p2 = policy(&format!(
        "{HEAD}spec:\n  endpointSelector: {{matchLabels: {{app: server}}}}\n  ingress:\n  - fromEndpoints: [{{matchLabels: {{app: web}}}}]\n{l7}  - fromEndpoints: [{{matchLabels: {{app: web}}}}]\n    toPorts: [{{ports: [{{port: '80'}}]}}]\n"
    ));
    let d = p2.decide(ip("10.0.0.3"), ip("10.0.0.2"), Proto::Tcp, 80);
    assert!(d.allowed);
    assert!(
        d.l7.is_none(),
        "an L4-only rule on the port allows every request"
    );
    let p3 = policy(&format!(
        "{HEAD}spec:\n  endpointSelector: {{matchLabels: {{app: server}}}}\n  ingress:\n  - toPorts:\n    - ports: [{{port: '80', protocol: TCP}}]\n      rules: {{http: []}}\n"
    ));
    assert!(
        p3.decide(ip("10.0.0.3"), ip("10.0.0.2"), Proto::Tcp, 80)
            .l7
            .is_none(),
        "empty list allows all"
    );
}

#[test]
fn ingress_and_egress_l7_make_two_stages() {
    let p = policy(&format!(
        "{HEAD}specs:
- endpointSelector: {{matchLabels: {{app: server}}}}
  ingress:
  - toPorts: [{{ports: [{{port: '80', protocol: TCP}}], rules: {{http: [{{method: GET}}]}}}}]
- endpointSelector: {{matchLabels: {{app: web}}}}
  egress:
  - toPorts: [{{ports: [{{port: '80', protocol: TCP}}], rules: {{http: [{{path: /v1/.*}}]}}}}]
"
    ));
    let d = p.decide(ip("10.0.0.3"), ip("10.0.0.2"), Proto::Tcp, 80);
    assert_eq!(d.l7.unwrap().rules_per_stage(), vec![1, 1]);
}

fn errors(yaml: &str) -> Vec<String> {
    match Policy::from_sources(&[
        ("eps.yaml".into(), EPS.into()),
        ("p.yaml".into(), yaml.into()),
    ]) {
        Ok(_) => panic!("expected errors"),
        Err(e) => e.iter().map(|x| x.to_string()).collect(),
    }
}

#[test]
fn errors_name_file_line_and_field() {
    let e = errors(&format!("{HEAD}spec:\n  endpointSelector: {{}}\n  ingress:\n  - toPorts:\n    - ports:\n      - port: '99999'\n"));
    assert_eq!(
        e,
        vec![
            "p.yaml:9: spec.ingress[0].toPorts[0].ports[0].port: port 99999 out of range (1-65535)"
        ]
    );
    let e = errors(&format!(
        "{HEAD}spec:\n  endpointSelector: {{}}\n  ingres: []\n"
    ));
    assert!(
        e[0].starts_with("p.yaml:6: spec: unknown field `ingres`"),
        "{e:?}"
    );
    let e = errors(&format!("{HEAD}spec:\n  endpointSelector: {{}}\n  ingress:\n  - toPorts:\n    - ports: [{{port: '11211', protocol: TCP}}]\n      rules:\n        l7proto: memcache\n        l7:\n        - command: fly\n"));
    assert!(
        e[0].starts_with("p.yaml:12: spec.ingress[0].toPorts[0].rules.l7[0].command:"),
        "{e:?}"
    );
    let e = errors(&format!("{HEAD}spec:\n  endpointSelector: {{}}\n  ingress:\n  - toPorts:\n    - ports: [{{port: '80'}}]\n      rules:\n        http:\n        - path: '/v1/(['\n"));
    assert!(
        e[0].starts_with("p.yaml:11: spec.ingress[0].toPorts[0].rules.http[0].path:"),
        "{e:?}"
    );
    let e = errors(&format!(
        "{HEAD}spec:\n  endpointSelector: {{}}\n  ingress: {{}}\n"
    ));
    assert!(
        e[0].starts_with("p.yaml:6: spec.ingress: invalid type"),
        "{e:?}"
    );
    let e = errors("apiVersion: apps/v1\nkind: Deployment\n");
    assert!(
        e[0].contains("kind \"Deployment\" is not a policy"),
        "{e:?}"
    );
    let e = errors(&format!(
        "{HEAD}spec:\n  endpointSelector: {{}}\n  ingress:\n  - fromCIDR: [10.0.0.0/33]\n"
    ));
    assert!(
        e[0].starts_with("p.yaml:7: spec.ingress[0].fromCIDR[0]: not a CIDR"),
        "{e:?}"
    );
}

#[test]
fn multi_document_streams_keep_line_numbers() {
    let text = format!("{EPS}---\n{HEAD}spec:\n  endpointSelector: {{}}\n  ingress:\n  - toPorts: [{{ports: [{{port: 0x}}]}}]\n");
    let e = Policy::from_str("all.yaml", &text).unwrap_err();
    let first_policy_line = EPS.lines().count() + 2;
    assert_eq!(e[0].line, Some(first_policy_line + 6), "{:?}", e[0]);
}

#[test]
fn selectors_that_select_nothing_warn() {
    let p = policy(&format!(
        "{HEAD}spec:\n  endpointSelector: {{matchLabels: {{app: nothing}}}}\n  ingress:\n  - fromEndpoints: [{{matchLabels: {{app: ghost}}}}]\n"
    ));
    let w: Vec<String> = p.warnings().iter().map(|w| w.to_string()).collect();
    assert_eq!(w.len(), 2, "{w:?}");
    assert!(w[0].contains("selects no endpoint"));
}

#[test]
fn host_policies_that_cut_ssh_are_flagged() {
    let p = policy(&format!(
        "{HEAD}spec:\n  endpointSelector: {{matchLabels: {{reserved:host: ''}}}}\n  ingress:\n  - toPorts: [{{ports: [{{port: '80'}}]}}]\n"
    ));
    assert_eq!(super::check::extra_warnings(&p).len(), 1);
    let p = policy(&format!(
        "{HEAD}spec:\n  endpointSelector: {{matchLabels: {{reserved:host: ''}}}}\n  ingress:\n  - toPorts: [{{ports: [{{port: '22', protocol: TCP}}]}}]\n"
    ));
    assert!(super::check::extra_warnings(&p).is_empty());
}

#[test]
fn named_ports_other_l7protos_and_mixed_l7_are_errors() {
    let e = errors(&format!(
        "{HEAD}spec:\n  endpointSelector: {{}}\n  ingress:\n  - toPorts:\n    - ports:\n      - port: http\n"
    ));
    assert!(
        e[0].starts_with("p.yaml:9: spec.ingress[0].toPorts[0].ports[0].port: named port"),
        "{e:?}"
    );
    let e = errors(&format!("{HEAD}spec:\n  endpointSelector: {{}}\n  ingress:\n  - toPorts:\n    - ports: [{{port: '9092'}}]\n      rules:\n        l7proto: kafka\n        l7: []\n"));
    assert!(
        e[0].starts_with("p.yaml:10: spec.ingress[0].toPorts[0].rules.l7proto: unknown l7proto"),
        "{e:?}"
    );
    let e = errors(&format!("{HEAD}spec:\n  endpointSelector: {{}}\n  ingress:\n  - toPorts:\n    - ports: [{{port: '80'}}]\n      rules:\n        http: []\n        l7proto: memcache\n"));
    assert!(
        e[0].starts_with("p.yaml:9: spec.ingress[0].toPorts[0].rules: http and l7proto"),
        "{e:?}"
    );
}

#[test]
fn http_and_memcache_on_one_port_across_rules_is_an_error() {
    let http = format!("{HEAD}spec:\n  endpointSelector: {{matchLabels: {{app: server}}}}\n  ingress:\n  - toPorts:\n    - ports: [{{port: '80'}}]\n      rules:\n        http: [{{method: GET}}]\n");
    let mc = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: q}\nspec:\n  endpointSelector: {matchLabels: {tier: back}}\n  ingress:\n  - toPorts:\n    - ports: [{port: '70', endPort: 90, protocol: TCP}]\n      rules:\n        l7proto: memcache\n        l7: [{command: get}]\n";
    let e = errors(&format!("{http}---\n{mc}"));
    assert_eq!(
        e,
        vec!["p.yaml: q/spec.ingress[0]: http and memcache rules on port 80 of endpoint server"],
    );
    // Different ports on the same endpoint are fine.
    let mc_other = mc.replace("endPort: 90", "endPort: 79");
    let p = Policy::from_sources(&[
        ("eps.yaml".into(), EPS.into()),
        ("p.yaml".into(), format!("{http}---\n{mc_other}")),
    ]);
    assert!(p.is_ok(), "{:?}", p.err());
}
