//! The engine alone on generated traffic: ns per frame for an established L4
//! flow (the hot path), and for a mixed trace (new allowed flows with their
//! handshakes and data, denied SYNs, UDP, ICMP).

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use enforcer::config::EngineConfig;
use enforcer::engine::Engine;
use enforcer::policy::Policy;
use enforcer::verdict::{Output, Verdict};

#[path = "clock.rs"]
mod clock;
#[path = "../tests/kit/frames.rs"]
mod frames;
#[path = "../tests/kit/policy.rs"]
mod policy;
#[path = "../tests/kit/tcp.rs"]
mod tcp;
use clock::wall_and_cpu;
use frames::*;
use policy::{compile, one_server_yaml, ping_yaml};
use tcp::Conn;

/// The server open to its clients on TCP 8080 and UDP 53, and to their pings.
fn policy() -> Arc<Policy> {
    let ports = [(8080, "TCP"), (53, "UDP")];
    let yaml = one_server_yaml(
        "server",
        &["10.66.0.2", "fd66::2"],
        &["10.66.1.0/24"],
        &ports,
        "",
    );
    compile("bench.yaml", &(yaml + &ping_yaml("server")))
}

fn client(i: usize) -> String {
    format!("10.66.1.{}", i % 250 + 1)
}

/// (port, frame) in arrival order: per round, an allowed TCP connection
/// (handshake, 4 data segments each way, close), a denied SYN from outside,
/// a UDP query/answer and a ping/pong.
fn mixed_trace(rounds: usize) -> Vec<(u8, Vec<u8>)> {
    let mut t = Vec::new();
    for i in 0..rounds {
        let c = client(i);
        let mut conn = Conn::new(ep(&c, 10_000 + i as u16), ep("10.66.0.2", 8080));
        for (k, f) in conn.handshake().into_iter().enumerate() {
            t.push(((k % 2) as u8, f));
        }
        for _ in 0..4 {
            t.push((0, conn.client_data(&[0x61; 64])));
            t.push((1, conn.server_data(&[0x62; 512])));
        }
        t.push((0, conn.client_fin()));
        t.push((1, conn.server_fin()));
        let outsider = Conn::new(ep("10.66.9.9", 20_000 + i as u16), ep("10.66.0.2", 22));
        t.push((0, outsider.syn()));
        t.push((
            0,
            udp(ep(&c, 30_000 + i as u16), ep("10.66.0.2", 53), b"query"),
        ));
        t.push((
            1,
            udp(ep("10.66.0.2", 53), ep(&c, 30_000 + i as u16), b"answer"),
        ));
        t.push((0, echo(&c, "10.66.0.2", i as u16, 1, true, b"ping")));
        t.push((1, echo("10.66.0.2", &c, i as u16, 1, false, b"ping")));
    }
    t
}

/// Where the kit's IPv4 frames carry the L4 source port.
const SPORT_AT: usize = 14 + 20;

/// An engine holding `n` established flows from one client, source ports
/// 20 000.., to the server (TCP 8080 after its handshake, or UDP 53), and
/// the frame of the first; the others differ only in the source port.
fn many_flows(policy: &Arc<Policy>, n: usize, tcp: bool) -> (Engine, Vec<u8>) {
    let mut e = Engine::new(policy.clone(), EngineConfig::default(), 0);
    let mut out = Output::default();
    let mut first = None;
    for i in 0..n {
        let client = ep("10.66.1.7", 20_000 + i as u16);
        let mut f = if tcp {
            let mut conn = Conn::new(client, ep("10.66.0.2", 8080));
            for (k, f) in conn.handshake().iter_mut().enumerate() {
                e.on_frame((k % 2) as u8, f, 0, &mut out);
            }
            conn.client_data(&[0x61; 64])
        } else {
            udp(client, ep("10.66.0.2", 53), &[0x61; 18])
        };
        assert_eq!(e.on_frame(0, &mut f, 1, &mut out), Verdict::Forward(1));
        out.clear();
        first.get_or_insert(f);
    }
    assert_eq!(e.flow_count(), n);
    (e, first.unwrap_or_default())
}

fn bench(c: &mut Criterion) {
    let policy = policy();

    // Hot path: one data segment of an established, allowed L4 connection.
    let mut e = Engine::new(policy.clone(), EngineConfig::default(), 0);
    let mut out = Output::default();
    let mut conn = Conn::new(ep("10.66.1.7", 40_000), ep("10.66.0.2", 8080));
    for (k, f) in conn.handshake().iter_mut().enumerate() {
        e.on_frame((k % 2) as u8, f, 0, &mut out);
    }
    let mut seg = conn.client_data(&[0x61; 64]);
    // Measure the path we mean to: an allowed, stored flow.
    assert_eq!(e.on_frame(0, &mut seg, 1, &mut out), Verdict::Forward(1));
    assert_eq!(e.flow_count(), 1);
    let mut now = 1u64;
    let mut g = c.benchmark_group("engine");
    g.throughput(Throughput::Elements(1));
    // Timed by the wall clock and by the thread's CPU clock (`clock`).
    wall_and_cpu(&mut g, "established_l4_frame", || {
        now += 1;
        let v = e.on_frame(0, &mut seg, now, &mut out);
        out.clear();
        v
    });

    // The same for UDP: a datagram of a stored flow (the 64 B lab load).
    let mut dg = udp(ep("10.66.1.7", 40_001), ep("10.66.0.2", 53), &[0x61; 18]);
    assert_eq!(e.on_frame(0, &mut dg, now, &mut out), Verdict::Forward(1));
    assert_eq!(e.flow_count(), 2);
    out.clear();
    wall_and_cpu(&mut g, "established_udp_datagram", || {
        now += 1;
        let v = e.on_frame(0, &mut dg, now, &mut out);
        out.clear();
        v
    });

    // Many established connections in turn: the table's cost once the
    // entries are no longer the one just used (hash spread, cache misses).
    let mut many = Engine::new(policy.clone(), EngineConfig::default(), 0);
    let mut segs: Vec<Vec<u8>> = (0..1000)
        .map(|i| {
            let mut conn = Conn::new(ep(&client(i), 41_000 + i as u16), ep("10.66.0.2", 8080));
            for (k, f) in conn.handshake().iter_mut().enumerate() {
                many.on_frame((k % 2) as u8, f, 0, &mut out);
            }
            conn.client_data(&[0x61; 64])
        })
        .collect();
    for s in segs.iter_mut() {
        assert_eq!(many.on_frame(0, s, 1, &mut out), Verdict::Forward(1));
    }
    assert_eq!(many.flow_count(), 1000);
    out.clear();
    let mut next = 0usize;
    wall_and_cpu(&mut g, "established_l4_1k_flows", || {
        now += 1;
        next = if next + 1 == segs.len() { 0 } else { next + 1 };
        let v = many.on_frame(0, &mut segs[next], now, &mut out);
        out.clear();
        v
    });

    // One hot frame whose source port picks one of `n` established flows,
    // visited in a scattered order: the table's own cost as it grows (hash
    // spread, entry layout, cache misses), without a cold frame each time
    // (a NIC's frame arrives freshly written). Neither path checks the L4
    // checksum of an established L4-only flow, so the rewrite stays valid.
    for (n, proto) in [(1000, "udp"), (10_000, "udp"), (10_000, "l4")] {
        let (mut e, mut frame) = many_flows(&policy, n, proto == "l4");
        let mut next = 0usize;
        let name = format!("established_{proto}_{}k_flows_hot_frame", n / 1000);
        wall_and_cpu(&mut g, &name, || {
            now += 1;
            // 7919 is prime: the walk visits every flow once per n frames.
            next = (next + 7919) % n;
            frame[SPORT_AT..SPORT_AT + 2].copy_from_slice(&(20_000 + next as u16).to_be_bytes());
            let v = e.on_frame(0, &mut frame, now, &mut out);
            out.clear();
            v
        });
    }

    // What a shell with several workers computes before the engine sees a
    // frame: which worker owns it.
    wall_and_cpu(&mut g, "steering_hash_udp", || {
        enforcer::engine::steering_hash(std::hint::black_box(&dg))
    });
    wall_and_cpu(&mut g, "steering_hash_tcp", || {
        enforcer::engine::steering_hash(std::hint::black_box(&seg))
    });

    if std::env::var_os(clock::COUNT_ENV).is_some() {
        return g.finish();
    }
    let trace = mixed_trace(200);
    g.throughput(Throughput::Elements(trace.len() as u64));
    g.bench_function("mixed_trace_per_frame", |b| {
        b.iter_batched(
            || {
                (
                    Engine::new(policy.clone(), EngineConfig::default(), 0),
                    trace.clone(),
                )
            },
            |(mut e, mut frames)| {
                let mut out = Output::default();
                for (i, (side, f)) in frames.iter_mut().enumerate() {
                    e.on_frame(*side, f, i as u64 * 1000, &mut out);
                    out.clear();
                }
                e
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
