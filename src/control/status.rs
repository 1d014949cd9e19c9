//! `enforcer status`: what runs, how it is bound, which policy is in force
//! and the main counters, as JSON (the client renders it for people).

use crate::dataplane::Handle;

pub fn json(h: &Handle) -> serde_json::Value {
    let info = h.info();
    let snap = h.snapshot();
    let (last, ok, failed) = h.reloads();
    let e = &snap.engine;
    let busy: Vec<f64> = snap
        .busy
        .iter()
        .map(|&(b, r)| if r > 0 { b as f64 / r as f64 } else { 0.0 })
        .collect();
    serde_json::json!({
        "mode": info.mode,
        "iface": info.iface,
        "peer": info.peer,
        "workers": info.workers,
        "poll": info.poll,
        "passthrough": info.passthrough,
        "audit": info.audit,
        "kernel_path": info.kernel_path,
        "queues": snap.queues,
        "policy": {
            "path": info.policy_path,
            "revision": h.in_force().revision,
            "last_reload": last,
            "reloads_ok": ok,
            "reloads_failed": failed,
        },
        "flows": e.flows_active,
        "held_bytes": snap.held_bytes,
        "worker_busy_ratio": busy,
        "sides": { "clients": snap.sides[0], "servers": snap.sides[1] },
        "counters": {
            "frames_in": e.frames_in,
            "frames_forwarded": e.frames_forwarded,
            "frames_emitted": e.frames_emitted,
            "flows_created": e.flows_created,
            "l7_requests_allowed": e.l7_requests_allowed,
            "l7_requests_denied": e.l7_requests_denied,
            "l7_requests_audited": e.l7_requests_audited,
            "events_dropped": snap.dp.events_dropped,
            "kernel_path_frames": snap.dp.kpath_frames,
            "kernel_path_bytes": snap.dp.kpath_bytes,
            "kernel_path_ranges": snap.dp.kpath_ranges,
            "kernel_path_fenced": snap.dp.kpath_fenced,
            "events_undelivered": h.undelivered(),
            "drops": e.to_json().get("drops").cloned().unwrap_or_default(),
        },
    })
}
