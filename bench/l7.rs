//! L7 core costs: request head parse + rule match, per request.
//! Targets (design §5): ≤ 500 ns per HTTP head, ≤ 200 ns per memcached request.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use enforcer::l7::http::{Http, HttpRule, HttpRuleSpec};
use enforcer::l7::memcache::{binary, Memcache, MemcacheRule, MemcacheRuleSpec};
use enforcer::l7::{Parse, Protocol};

fn http_rules() -> Vec<HttpRule> {
    let specs = [
        "{method: GET, path: \"/v1/\"}",
        "{method: GET, path: \"/v1/healthz\"}",
        "{method: POST, path: \"/v1/request-landing\"}",
    ];
    specs
        .iter()
        .map(|y| HttpRule::compile(&serde_yaml::from_str::<HttpRuleSpec>(y).unwrap()).unwrap())
        .collect()
}

fn mc_rules() -> Vec<MemcacheRule> {
    [("get", "awing-coord"), ("set", "awing-coord")]
        .iter()
        .map(|(c, k)| {
            MemcacheRule::compile(&MemcacheRuleSpec {
                command: Some(c.to_string()),
                key_exact: Some(k.to_string()),
                ..Default::default()
            })
            .unwrap()
        })
        .collect()
}

fn http(c: &mut Criterion) {
    let rules = http_rules();
    let mut g = c.benchmark_group("l7_http");
    g.throughput(Throughput::Elements(1));
    // What curl sends to the deathstar.
    let post =
        b"POST /v1/request-landing HTTP/1.1\r\nHost: deathstar.default.svc.cluster.local\r\n\
User-Agent: curl/7.88.1\r\nAccept: */*\r\n\r\n";
    let put = b"PUT /v1/exhaust-port HTTP/1.1\r\nHost: deathstar.default.svc.cluster.local\r\n\
User-Agent: curl/7.88.1\r\nAccept: */*\r\n\r\n";
    for (name, req) in [("allowed_post", &post[..]), ("denied_put", &put[..])] {
        g.bench_function(format!("parse_match_{name}"), |b| {
            let mut p = Http::new();
            b.iter(|| match p.parse_request(black_box(req)) {
                Parse::Complete(h) => rules.iter().any(|r| r.matches(&h.req)),
                _ => unreachable!(),
            })
        });
    }
    g.finish();
}

fn memcache(c: &mut Criterion) {
    let rules = mc_rules();
    let mut g = c.benchmark_group("l7_memcache");
    g.throughput(Throughput::Elements(1));
    let text: [(&str, &[u8]); 3] = [
        ("text_get", b"get awing-coord\r\n"),
        ("text_set", b"set awing-coord 0 1200 16\r\n"),
        ("text_get_denied_multi", b"get awing-coord xwing-coord\r\n"),
    ];
    let bget = binary::request(0x00, 1, &[], b"awing-coord", &[]);
    let bset = binary::request(0x01, 2, &[0; 8], b"awing-coord", b"4309.432,918.980");
    let bin: [(&str, &[u8]); 2] = [("binary_get", &bget), ("binary_set", &bset)];
    for (name, req) in text.into_iter().chain(bin) {
        g.bench_function(format!("parse_match_{name}"), |b| {
            let mut p = Memcache::new();
            b.iter(|| match p.parse_request(black_box(req)) {
                Parse::Complete(h) => rules.iter().any(|r| r.matches(&h.req)),
                _ => unreachable!(),
            })
        });
    }
    g.finish();
}

criterion_group!(benches, http, memcache);
criterion_main!(benches);
