//! `--metrics ADDR`: Prometheus (OpenMetrics text) on `GET /metrics`.
//!
//! Nothing is counted here: every scrape builds a fresh registry from the
//! workers' own counters (summed at that moment) and the event tally, so the
//! hot path pays nothing for metrics and a scrape always agrees with
//! `enforcer status`.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::counters::DropReason;
use crate::dataplane::Handle;

type Labels = Vec<(String, String)>;

fn labels(kv: &[(&str, &str)]) -> Labels {
    kv.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A family of counters set from totals.
fn counters(reg: &mut Registry, name: &str, help: &str, rows: &[(Labels, u64)]) {
    let f = Family::<Labels, Counter>::default();
    for (l, v) in rows {
        f.get_or_create(l).inc_by(*v);
    }
    reg.register(name, help, f);
}

fn counter(reg: &mut Registry, name: &str, help: &str, v: u64) {
    let c = Counter::<u64>::default();
    c.inc_by(v);
    reg.register(name, help, c);
}

fn gauge(reg: &mut Registry, name: &str, help: &str, v: i64) {
    let g = Gauge::<i64>::default();
    g.set(v);
    reg.register(name, help, g);
}

const SIDES: [&str; 2] = ["clients", "servers"];

/// The exposition text for the dataplane behind `h`, now.
pub fn render(h: &Handle) -> String {
    let snap = h.snapshot();
    let tally = h.tally();
    let (_, reloads_ok, reloads_failed) = h.reloads();
    let mut reg = Registry::with_prefix("enforcer");

    let mut frames = Vec::new();
    let mut bytes = Vec::new();
    for (i, s) in snap.sides.iter().enumerate() {
        for (verdict, f, b) in [
            ("forward", s.forwarded_frames, s.forwarded_bytes),
            ("drop", s.dropped_frames, s.dropped_bytes),
            ("consumed", s.consumed_frames, s.consumed_bytes),
        ] {
            let l = labels(&[("side", SIDES[i]), ("verdict", verdict)]);
            frames.push((l.clone(), f));
            bytes.push((l, b));
        }
    }
    counters(
        &mut reg,
        "frames",
        "Frames received, by side they came in on and what became of them",
        &frames,
    );
    counters(
        &mut reg,
        "bytes",
        "Bytes of the frames received, by side and verdict",
        &bytes,
    );
    let drops: Vec<_> = DropReason::ALL
        .iter()
        .map(|r| (labels(&[("reason", r.as_str())]), snap.engine.dropped(*r)))
        .collect();
    counters(&mut reg, "drops", "Frames dropped, by reason", &drops);

    let mut l7 = Vec::new();
    let mut flows = Vec::new();
    for ((kind, verdict, rule), n) in &tally {
        let rule = rule.as_deref().unwrap_or_default();
        if *kind == "flow" {
            flows.push((labels(&[("verdict", verdict), ("rule", rule)]), *n));
        } else {
            l7.push((
                labels(&[("protocol", kind), ("verdict", verdict), ("rule", rule)]),
                *n,
            ));
        }
    }
    counters(
        &mut reg,
        "l7_requests",
        "L7 requests decided, by protocol, verdict and the rule (allow) or reason (deny)",
        &l7,
    );
    counters(
        &mut reg,
        "flow_decisions",
        "New flows judged by L3/L4 policy, by verdict and rule or reason",
        &flows,
    );
    gauge(
        &mut reg,
        "flows",
        "Flows in the tables now",
        snap.engine.flows_active as i64,
    );
    gauge(
        &mut reg,
        "held_bytes",
        "Bytes held for undecided L7 requests now",
        snap.held_bytes as i64,
    );

    let q = |f: fn(&crate::dataplane::QueueStats) -> u64| -> Vec<(Labels, u64)> {
        snap.queues
            .iter()
            .map(|x| {
                (
                    labels(&[("iface", &x.iface), ("queue", &x.queue.to_string())]),
                    f(x),
                )
            })
            .collect()
    };
    counters(
        &mut reg,
        "xdp_rx_dropped",
        "XDP_STATISTICS rx_dropped per AF_XDP socket",
        &q(|x| x.rx_dropped),
    );
    counters(
        &mut reg,
        "xdp_rx_ring_full",
        "XDP_STATISTICS rx_ring_full per AF_XDP socket",
        &q(|x| x.rx_ring_full),
    );
    counters(
        &mut reg,
        "xdp_rx_fill_ring_empty",
        "XDP_STATISTICS rx_fill_ring_empty_descs per AF_XDP socket",
        &q(|x| x.rx_fill_ring_empty),
    );
    counters(
        &mut reg,
        "xdp_invalid_descs",
        "XDP_STATISTICS rx and tx invalid descriptors per AF_XDP socket",
        &q(|x| x.rx_invalid_descs + x.tx_invalid_descs),
    );
    let zc = Family::<Labels, Gauge>::default();
    for (l, v) in q(|x| x.zero_copy as u64) {
        zc.get_or_create(&l).set(v as i64);
    }
    reg.register(
        "xdp_zero_copy",
        "1 when the AF_XDP socket is bound in zero-copy mode, 0 in copy mode",
        zc,
    );

    let busy = Family::<Labels, Counter<f64, AtomicU64>>::default();
    let run = Family::<Labels, Counter<f64, AtomicU64>>::default();
    let ratio = Family::<Labels, Gauge<f64, AtomicU64>>::default();
    for (i, (b, r)) in snap.busy.iter().enumerate() {
        let l = labels(&[("worker", &i.to_string())]);
        busy.get_or_create(&l).inc_by(*b as f64 / 1e9);
        run.get_or_create(&l).inc_by(*r as f64 / 1e9);
        ratio
            .get_or_create(&l)
            .set(if *r > 0 { *b as f64 / *r as f64 } else { 0.0 });
    }
    reg.register(
        "worker_busy_seconds",
        "Time a worker spent in loop turns that found work (rate over worker_run_seconds: busy ratio)",
        busy,
    );
    reg.register("worker_run_seconds", "Time a worker has been running", run);
    reg.register(
        "worker_busy_ratio",
        "Busy time over running time since the worker started",
        ratio,
    );

    gauge(
        &mut reg,
        "policy_revision",
        "Revision of the policy in force (1 at start, +1 per successful reload)",
        h.in_force().revision as i64,
    );
    counters(
        &mut reg,
        "policy_reloads",
        "Policy reloads, by result",
        &[
            (labels(&[("result", "ok")]), reloads_ok),
            (labels(&[("result", "failed")]), reloads_failed),
        ],
    );
    counter(
        &mut reg,
        "events_dropped",
        "Verdict events lost because the event thread fell behind",
        snap.dp.events_dropped,
    );
    counter(
        &mut reg,
        "events_undelivered",
        "Verdict events an observer could not take in time",
        h.undelivered(),
    );
    counter(
        &mut reg,
        "tx_ring_full",
        "Frames that could not be sent (TX ring full)",
        snap.dp.tx_ring_full,
    );
    counter(
        &mut reg,
        "no_free_frame",
        "Frames dropped for want of a free UMEM frame",
        snap.dp.no_free_frame,
    );
    // Host mode: frames towards the wire whose next hop was not known yet.
    counters(
        &mut reg,
        "next_hop_frames",
        "Host mode: frames whose next hop was unresolved, by outcome (held waiting for it, sent once it resolved, dropped after waiting, not addressable at all)",
        &[
            (labels(&[("outcome", "held")]), snap.dp.next_hop_held),
            (labels(&[("outcome", "sent_late")]), snap.dp.next_hop_sent_late),
            (labels(&[("outcome", "dropped")]), snap.dp.next_hop_dropped),
            (labels(&[("outcome", "unaddressable")]), snap.dp.no_next_hop),
        ],
    );
    counter(
        &mut reg,
        "kernel_path_frames",
        "Frames the XDP program forwarded itself, inside a published range (--kernel-path on)",
        snap.dp.kpath_frames,
    );
    counter(
        &mut reg,
        "kernel_path_bytes",
        "Bytes of the frames the XDP program forwarded itself",
        snap.dp.kpath_bytes,
    );
    counter(
        &mut reg,
        "kernel_path_fenced",
        "Segments inside a range sent to a worker instead, as earlier frames of their queue were still with it (the ordering fence)",
        snap.dp.kpath_fenced,
    );
    counter(
        &mut reg,
        "handoff_full",
        "Frames for another worker dropped because its channel was full",
        snap.dp.handoff_full,
    );

    let mut out = String::new();
    if encode(&mut out, &reg).is_err() {
        out = "# encoding failed\n".into();
    }
    out
}

/// Serve `GET /metrics` on `addr` from a thread of its own.
pub fn serve(h: Handle, addr: &str) -> Result<(), String> {
    let server = tiny_http::Server::http(addr).map_err(|e| format!("--metrics {addr}: {e}"))?;
    let ctype = tiny_http::Header::from_bytes(
        "Content-Type",
        "application/openmetrics-text; version=1.0.0; charset=utf-8",
    )
    .map_err(|_| "content type header".to_string())?;
    std::thread::Builder::new()
        .name("enforcer-metrics".into())
        .spawn(move || {
            for req in server.incoming_requests() {
                let path = req.url().split('?').next().unwrap_or("");
                let resp = if path == "/metrics" {
                    tiny_http::Response::from_string(render(&h)).with_header(ctype.clone())
                } else {
                    tiny_http::Response::from_string("see /metrics\n").with_status_code(404)
                };
                let _ = req.respond(resp);
            }
        })
        .map_err(|e| format!("metrics thread: {e}"))?;
    Ok(())
}
