//! Input of the policy-loading target: up to four files separated by NUL
//! bytes (NUL never occurs in a policy), named by position so both the YAML
//! and the 2017 JSON paths of the loader are taken.

use std::net::IpAddr;
use std::sync::Arc;

use enforcer::policy::{Policy, Proto};

use crate::scenario::{self, Scenario};

const NAMES: &[&str] = &["a.yaml", "b.json", "endpoints.yaml", "d.yml"];

/// The (name, text) sources `data` stands for.
pub fn sources(data: &[u8]) -> Vec<(String, String)> {
    data.split(|&b| b == 0)
        .take(NAMES.len())
        .enumerate()
        .map(|(i, t)| {
            (
                NAMES[i].to_string(),
                String::from_utf8_lossy(t).into_owned(),
            )
        })
        .collect()
}

/// The inverse of `sources` for seeds.
pub fn encode(texts: &[&str]) -> Vec<u8> {
    texts.join("\0").into_bytes()
}

/// Load, then exercise what loaded. Panics on a broken invariant.
pub fn check(data: &[u8]) {
    let src = sources(data);
    match Policy::from_sources(&src) {
        Err(errs) => {
            assert!(!errs.is_empty(), "a failed load reports an error");
            for e in &errs {
                assert!(
                    src.iter().any(|(n, _)| e.file.starts_with(n.as_str())),
                    "error names no input file: {e}"
                );
                assert!(!e.message.is_empty(), "empty message: {e:?}");
                let _ = e.to_string();
            }
        }
        Ok(p) => {
            let addrs: [IpAddr; 6] = [
                "10.66.0.2".parse().unwrap(),
                "10.66.0.11".parse().unwrap(),
                "10.66.0.14".parse().unwrap(),
                "fd66::2".parse().unwrap(),
                "192.0.2.1".parse().unwrap(),
                "::".parse().unwrap(),
            ];
            for &a in &addrs {
                let _ = p.identity(a);
                for &b in &addrs {
                    if a.is_ipv4() != b.is_ipv4() {
                        continue;
                    }
                    for (proto, port) in [
                        (Proto::Tcp, 80),
                        (Proto::Tcp, 11211),
                        (Proto::Udp, 53),
                        (Proto::Tcp, 0),
                        (Proto::Tcp, 65535),
                    ] {
                        let _ = p.decide(a, b, proto, port);
                    }
                }
            }
            let _ = enforcer::policy::check::summary(&p);
            let _ = enforcer::policy::check::extra_warnings(&p);
            let _ = p.host_addresses();
            // A short HTTP and memcached conversation under the loaded rules.
            let p = Arc::new(p);
            for name in ["http-denied-put-then-get", "memcache-text"] {
                let s: Scenario = scenario::seeds()
                    .into_iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, s)| s)
                    .expect("seed scenario");
                scenario::run_with(p.clone(), &s);
            }
        }
    }
}
