//! L7 core costs: request head parse + rule match, per request; and one
//! whole request through `Engine` (request segment in, decision, released;
//! reply segment in; the client's ACK), on a live connection under the seed
//! policies (`policies/`).
//! Targets (design §5): ≤ 150 ns per HTTP head, ≤ 50 ns per memcached request.
//! Each is timed by the wall clock and, as `NAME_cpu`, by the thread's CPU
//! clock (`clock.rs`): the fair figure on a shared machine.

use std::hint::black_box;

use std::path::Path;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use enforcer::config::EngineConfig;
use enforcer::engine::Engine;
use enforcer::l7::http::{Http, HttpRule, HttpRuleSpec};
use enforcer::l7::memcache::{binary, Memcache, MemcacheRule, MemcacheRuleSpec};
use enforcer::l7::{Parse, Protocol};
use enforcer::policy::Policy;
use enforcer::verdict::{Output, Verdict};

use clock::{wall_and_cpu, wall_and_cpu_batched};

/// The system allocator, counting this thread's allocations: what one
/// request costs in heap calls, printed before its timing.
struct Counting;

thread_local! {
    static ALLOCS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

// SAFETY: every call goes to the system allocator unchanged; the count is
// a thread-local cell, which allocates nothing.
unsafe impl std::alloc::GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: std::alloc::Layout) -> *mut u8 {
        ALLOCS.with(|c| c.set(c.get() + 1));
        std::alloc::System.alloc(l)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: std::alloc::Layout) {
        std::alloc::System.dealloc(p, l)
    }
    unsafe fn realloc(&self, p: *mut u8, l: std::alloc::Layout, n: usize) -> *mut u8 {
        ALLOCS.with(|c| c.set(c.get() + 1));
        std::alloc::System.realloc(p, l, n)
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

fn allocs() -> u64 {
    ALLOCS.with(|c| c.get())
}

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
        let mut p = Http::new();
        wall_and_cpu(&mut g, &format!("parse_match_{name}"), || {
            match p.parse_request(black_box(req)) {
                Parse::Complete(h) => rules.iter().any(|r| r.matches(&h.req)),
                _ => unreachable!(),
            }
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
        let mut p = Memcache::new();
        wall_and_cpu(&mut g, &format!("parse_match_{name}"), || {
            match p.parse_request(black_box(req)) {
                Parse::Complete(h) => rules.iter().any(|r| r.matches(&h.req)),
                _ => unreachable!(),
            }
        });
    }
    g.finish();
}

#[path = "clock.rs"]
mod clock;
#[path = "../tests/kit/frames.rs"]
mod frames;
#[path = "../tests/kit/tcp.rs"]
mod tcp;

/// Request and reply through the engine on one connection, again and again:
/// per iteration the client's request segment (allowed: judged and passed),
/// the server's reply and the client's ACK. Frames are built in the setup,
/// outside the measurement.
fn through_engine(c: &mut Criterion) {
    let policy = match Policy::load(Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/policies"))) {
        Ok(p) => Arc::new(p),
        Err(e) => panic!("policies/: {e:?}"),
    };
    let mut g = c.benchmark_group("l7_engine");
    g.throughput(Throughput::Elements(1));
    let cases: [(&str, u16, &[u8], &[u8]); 2] = [
        (
            "http_get_allowed",
            80,
            b"GET /v1/ HTTP/1.1\r\nHost: deathstar\r\nUser-Agent: curl/7.88.1\r\nAccept: */*\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n",
        ),
        (
            "memcache_get_allowed",
            11211,
            b"get awing-coord\r\n",
            b"VALUE awing-coord 0 16\r\n4309.432,918.980\r\nEND\r\n",
        ),
    ];
    for (name, port, req, reply) in cases {
        let mut e = Engine::new(policy.clone(), EngineConfig::default(), 0);
        let mut out = Output::default();
        let mut conn = tcp::Conn::new(
            frames::ep("10.66.0.11", 40_000),
            frames::ep("10.66.0.2", port),
        );
        for (k, f) in conn.handshake().iter_mut().enumerate() {
            e.on_frame((k % 2) as u8, f, 0, &mut out);
        }
        let mut now = 1_000u64;
        let mut round = |e: &mut Engine, (mut q, mut r, mut a): (Vec<u8>, Vec<u8>, Vec<u8>)| {
            now += 1_000;
            let v = [
                e.on_frame(0, &mut q, now, &mut out),
                e.on_frame(1, &mut r, now, &mut out),
                e.on_frame(0, &mut a, now, &mut out),
            ];
            out.clear();
            v
        };
        let mut frames = || {
            let q = conn.client_data(req);
            let r = conn.server_data(reply);
            conn.client.rcv_nxt = conn.server.snd_nxt;
            let a = conn.client.ack();
            (q, r, a)
        };
        // Measure the path we mean to: the request allowed and passed on,
        // the reply and ACK forwarded, the connection still open.
        let fwd = [
            Verdict::Forward(1),
            Verdict::Forward(0),
            Verdict::Forward(1),
        ];
        for _ in 0..3 {
            let f = frames();
            assert_eq!(round(&mut e, f), fwd, "{name}");
        }
        assert_eq!(e.counters().l7_requests_allowed, 3, "{name}");
        // Frames built first: only the engine's own allocations count.
        let built: Vec<_> = (0..100).map(|_| frames()).collect();
        let before = allocs();
        for f in built {
            round(&mut e, f);
        }
        let per = (allocs() - before) as f64 / 100.0;
        // The frames' own buffers are freed, never allocated, in there.
        println!("l7_engine/{name}: {per} heap allocations per request (engine, no log)");
        wall_and_cpu_batched(&mut g, name, &mut frames, |f| round(&mut e, f));
    }
    g.finish();
}

criterion_group!(benches, http, memcache, through_engine);
criterion_main!(benches);
