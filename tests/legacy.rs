//! The 2017 Star Wars demo's own policy files, step by step, as decisions;
//! and `enforcer convert` output, loaded back, decides the same.

mod kit;

use std::net::IpAddr;
use std::path::Path;

use enforcer::l7::http::Http;
use enforcer::l7::{Parse, Protocol};
use enforcer::policy::{L7Policy, Policy, Proto};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

const DEATHSTAR: &str = "fd77::2";
const XWING: &str = "fd77::12";
const OUTSIDE: &str = "fd77::99";

/// The L7 verdict for one request on a flow, or None when the flow is
/// denied at L3/L4.
fn http(p: &Policy, src: &str, req: &str) -> Option<bool> {
    let d = p.decide(ip(src), ip(DEATHSTAR), Proto::Tcp, 80);
    if !d.allowed {
        return None;
    }
    let l7 = match d.l7 {
        None => return Some(true),
        Some(L7Policy::Http(l7)) => l7,
        Some(other) => panic!("port 80 has http rules, not {:?}", other.proto()),
    };
    let mut h = Http::new();
    let Parse::Complete(head) = h.parse_request(req.as_bytes()) else {
        panic!("test request parses")
    };
    Some(l7.decide(|r| h.rule_matches(&head.req, r)).allowed)
}

const GET: &str = "GET /v1/ HTTP/1.1\r\nHost: deathstar\r\n\r\n";
const LAND: &str = "POST /v1/request-landing HTTP/1.1\r\nHost: deathstar\r\n\r\n";
const PUT: &str = "PUT /v1/exhaust-port HTTP/1.1\r\nHost: deathstar\r\n\r\n";
const PUT_FORCE: &str =
    "PUT /v1/exhaust-port HTTP/1.1\r\nHost: deathstar\r\nX-Has-Force: true\r\n\r\n";

fn load(dir: &str) -> Policy {
    Policy::load(Path::new(dir)).unwrap_or_else(|e| panic!("{e:?}"))
}

fn check_steps(l4: &Policy, show: &Policy, real: &Policy) {
    // sw_policy_l4: spaceships on TCP/80 only, ping allowed, others nothing.
    assert_eq!(http(l4, XWING, GET), Some(true));
    assert_eq!(
        http(l4, XWING, PUT),
        Some(true),
        "before the L7 policy the exhaust port is open"
    );
    assert!(!l4.decide(ip(XWING), ip(DEATHSTAR), Proto::Tcp, 22).allowed);
    assert!(
        l4.decide(ip(XWING), ip(DEATHSTAR), Proto::Icmp, 128)
            .allowed,
        "the radar ping"
    );
    assert_eq!(http(l4, OUTSIDE, GET), None);
    // sw_policy_http.show: GET and landing only.
    for p in [show, real] {
        assert_eq!(http(p, XWING, GET), Some(true));
        assert_eq!(http(p, XWING, LAND), Some(true));
        assert_eq!(http(p, XWING, PUT), Some(false), "the shields are up");
        assert!(
            p.decide(ip(XWING), ip(DEATHSTAR), Proto::Icmp, 128).allowed,
            "ping still answers"
        );
    }
    // sw_policy_http.real: the Jedi's rule.
    assert_eq!(http(show, XWING, PUT_FORCE), Some(false));
    assert_eq!(http(real, XWING, PUT_FORCE), Some(true));
}

#[test]
fn the_demo_steps_decide_as_the_transcript_shows() {
    let d = "policies/starwars-2017";
    check_steps(
        &load(&format!("{d}/l4")),
        &load(&format!("{d}/http-show")),
        &load(&format!("{d}/http-real")),
    );
}

#[test]
fn converted_policies_decide_the_same() {
    let tmp = tempfile::tempdir().unwrap();
    let mut dirs = Vec::new();
    for (step, file) in [
        ("l4", "sw_policy_l4.json"),
        ("http-show", "sw_policy_http.show.json"),
        ("http-real", "sw_policy_http.real.json"),
    ] {
        let (ok, yaml, err) =
            kit::enforcer(&["convert", &format!("policies/starwars-2017/{step}/{file}")]);
        assert!(ok, "{err}");
        assert!(yaml.contains("kind: CiliumNetworkPolicy"));
        let dir = tmp.path().join(step);
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("policy.yaml"), yaml).unwrap();
        std::fs::copy(
            format!("policies/starwars-2017/{step}/endpoints.yaml"),
            dir.join("endpoints.yaml"),
        )
        .unwrap();
        dirs.push(dir);
    }
    let p: Vec<Policy> = dirs.iter().map(|d| Policy::load(d).unwrap()).collect();
    check_steps(&p[0], &p[1], &p[2]);
}

#[test]
fn check_accepts_the_legacy_files_and_reports_expression_errors() {
    for step in ["l4", "http-show", "http-real"] {
        let (ok, _, err) = kit::enforcer(&["check", &format!("policies/starwars-2017/{step}")]);
        assert!(ok, "{step}: {err}");
    }
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("bad.json");
    std::fs::write(
        &f,
        "{\n  \"name\": \"root\",\n  \"rules\": [{\n    \"coverage\": [\"id.spaceship\"],\n    \"l4\": [{\"out-ports\": [{\"port\": 80, \"l7-parser\": \"http\",\n      \"l7-rules\": [{\"expr\": \"Method(\\\"GET\\\") && Path(/v1/)\"}]}]}]\n  }]\n}\n",
    )
    .unwrap();
    let (ok, _, err) = kit::enforcer(&[std::ffi::OsStr::new("check"), f.as_os_str()]);
    assert!(!ok);
    assert!(
        err.contains("bad.json:6: rules[0].l4[0].out-ports[0].l7-rules[0].expr: column 23: expected a quoted string"),
        "{err}"
    );
}
