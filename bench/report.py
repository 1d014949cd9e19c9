#!/usr/bin/env python3
"""bench/run.sh's results (JSON lines) as a markdown table and PNG plots.

    python3 bench/report.py bench/results/results.jsonl bench/results
"""
import json
import sys
from collections import defaultdict


def load(path):
    rows = [json.loads(l) for l in open(path) if l.strip()]
    by = defaultdict(lambda: defaultdict(list))
    meta = {}
    for r in rows:
        if r.get("test") in ("machine", "machine_end"):
            meta.update(r)
            continue
        by[r["cfg"]][r["test"]].append(r)
    return by, meta


def delivered(r):
    """Delivered frames per second and loss of one udp64 line."""
    send, sink = r.get("send") or {}, r.get("sink") or {}
    sent, got = send.get("sent", 0), sink.get("received", 0)
    secs = send.get("seconds") or 1
    loss = 1 - got / sent if sent else None
    return got / secs, send.get("pps", 0), loss, got


def udp(cfgd, flows):
    for r in cfgd.get("udp64", []):
        if r["flows"] == flows and r["rate"] == 0:
            return r
    return None


def fmt(v, spec="{:.0f}", none="–"):
    return none if v is None else spec.format(v)


def ratio(a, b):
    return None if not a or not b else a / b


def main():
    path, out = sys.argv[1], sys.argv[2]
    by, meta = load(path)
    cfgs = [c for c in by if not c.startswith("enforcer-anykey")]
    base = by.get("bridge", {})

    def first(c, t):
        v = by.get(c, {}).get(t)
        return v[0] if v else None

    b_udp1 = udp(base, 1)
    b_udp1k = udp(base, 1000)
    b_http = first("bridge", "http")
    b_mc = first("bridge", "mc_loadgen")
    b_ms = first("bridge", "mc_memaslap")
    b_ip1 = first("bridge", "iperf3_p1")
    b_ip4 = first("bridge", "iperf3_p4")

    lines = []
    lines.append(
        f"Machine: {meta.get('cpus')} CPUs, kernel {meta.get('kernel')}, load average "
        f"{meta.get('loadavg_start')} at start, {meta.get('loadavg_end')} at end; "
        f"{meta.get('seconds')} s per load{' (--smoke: checks the runner, measures nothing)' if meta.get('smoke') else ' (--quick)' if meta.get('quick') else ''}. "
        "Ratios are to the kernel bridge in the same run.\n"
    )
    lines.append("### 64-byte UDP, full speed of one generator core\n")
    lines.append(
        "| middlebox | 1 flow kpps delivered (× bridge) | loss | 1000 flows kpps (× bridge) | loss "
        "| middlebox CPU µs/pkt | machine CPU µs/pkt | hand-offs |"
    )
    lines.append("|---|---|---|---|---|---|---|---|")
    for c in cfgs:
        r1, r1k = udp(by[c], 1), udp(by[c], 1000)
        if not r1:
            continue
        d1, _, l1, got1 = delivered(r1)
        dk, _, lk, _ = delivered(r1k) if r1k else (None, None, None, None)
        bd1 = delivered(b_udp1)[0] if b_udp1 else None
        bdk = delivered(b_udp1k)[0] if b_udp1k else None
        mb = r1.get("mbox_cpu_s")
        cpu_pkt = mb / got1 * 1e6 if mb is not None and got1 else None
        mc_pkt = r1["machine_cpu_s"] / got1 * 1e6 if got1 else None
        ho = None
        cnt = by[c].get("counters")
        if cnt:
            dp = cnt[0]["counters"]["counters"]["dataplane"]
            if dp.get("rx_frames"):
                ho = dp.get("handoff_out", 0) / dp["rx_frames"]
        lines.append(
            f"| {c} | {fmt(d1 / 1e3 if d1 else None)} ({fmt(ratio(d1, bd1), '{:.2f}')}×) "
            f"| {fmt(l1 * 100 if l1 is not None else None, '{:.1f}')} % "
            f"| {fmt(dk / 1e3 if dk else None)} ({fmt(ratio(dk, bdk), '{:.2f}')}×) "
            f"| {fmt(lk * 100 if lk is not None else None, '{:.1f}')} % "
            f"| {fmt(cpu_pkt, '{:.2f}')} | {fmt(mc_pkt, '{:.2f}')} | {fmt(ho * 100 if ho is not None else None, '{:.0f}')} % |"
        )

    lines.append("\n### TCP\n")
    lines.append("| middlebox | iperf3 1 stream Gbit/s (× bridge) | 4 streams (× bridge) | bulk sha256 |")
    lines.append("|---|---|---|---|")
    for c in cfgs:
        i1, i4, bk = first(c, "iperf3_p1"), first(c, "iperf3_p4"), first(c, "bulk")
        if not (i1 or bk):
            continue
        g1 = i1["bps"] / 1e9 if i1 else None
        g4 = i4["bps"] / 1e9 if i4 else None
        bg1 = b_ip1["bps"] / 1e9 if b_ip1 else None
        bg4 = b_ip4["bps"] / 1e9 if b_ip4 else None
        bulk = "–" if not bk else ("match" if bk["sha_match"] else "**MISMATCH**") + f" ({bk['bytes'] >> 20} MiB, {bk['wall_s']:.1f} s)"
        lines.append(
            f"| {c} | {fmt(g1, '{:.2f}')} ({fmt(ratio(g1, bg1), '{:.2f}')}×) "
            f"| {fmt(g4, '{:.2f}')} ({fmt(ratio(g4, bg4), '{:.2f}')}×) | {bulk} |"
        )

    lines.append("\n### HTTP (wrk -t2 -c32 → nginx, GET /v1/) and memcached\n")
    lines.append(
        "| middlebox | req/s (× bridge) | p50 / p99 / p99.9 µs | middlebox CPU µs/req | machine CPU µs/req "
        "| loadgen ops/s (× bridge) | µs CPU/op | memaslap ops/s (× bridge) |"
    )
    lines.append("|---|---|---|---|---|---|---|---|")
    for c in cfgs:
        h = first(c, "http")
        if not h:
            continue
        mc = first(c, "mc_loadgen")
        ms = first(c, "mc_memaslap") or first(c.replace("enforcer-", "enforcer-anykey-"), "mc_memaslap")
        n = h["rps"] * h["wall_s"]
        cpu_req = h["mbox_cpu_s"] / n * 1e6 if h.get("mbox_cpu_s") is not None and n else None
        m_req = h["machine_cpu_s"] / n * 1e6 if n else None
        mc_cpu = None
        if mc and mc.get("mbox_cpu_s") is not None and mc["ops"]:
            mc_cpu = mc["mbox_cpu_s"] / (mc["ops"] * mc["wall_s"]) * 1e6
        err = f" ({h['errors']} errors)" if h.get("errors") else ""
        lines.append(
            f"| {c} | {fmt(h['rps'])} ({fmt(ratio(h['rps'], b_http and b_http['rps']), '{:.2f}')}×){err} "
            f"| {h['p50_us']} / {h['p99_us']} / {h['p999_us']} | {fmt(cpu_req, '{:.1f}')} | {fmt(m_req, '{:.1f}')} "
            f"| {fmt(mc and mc['ops'])} ({fmt(ratio(mc and mc['ops'], b_mc and b_mc['ops']), '{:.2f}')}×) | {fmt(mc_cpu, '{:.1f}')} "
            f"| {fmt(ms and ms['ops'])} ({fmt(ratio(ms and ms['ops'], b_ms and b_ms['ops']), '{:.2f}')}×) |"
        )
    md = "\n".join(lines) + "\n"
    open(f"{out}/results.md", "w").write(md)
    print(md)

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("report: matplotlib missing, no plots", file=sys.stderr)
        return

    # Loss curves: offered against delivered.
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    for c in by:
        pts = sorted(
            (delivered(r)[1], delivered(r)[0], delivered(r)[2])
            for r in by[c].get("udp64", [])
            if r["flows"] == 1 and r["rate"] > 0
        )
        if not pts:
            continue
        xs = [p[0] / 1e3 for p in pts]
        a1.plot(xs, [p[1] / 1e3 for p in pts], marker="o", label=c)
        a2.plot(xs, [(p[2] or 0) * 100 for p in pts], marker="o", label=c)
    a1.set_xlabel("offered kpps (64 B UDP)")
    a1.set_ylabel("delivered kpps")
    a2.set_xlabel("offered kpps (64 B UDP)")
    a2.set_ylabel("loss %")
    a1.legend(fontsize=7)
    a1.grid(alpha=0.3)
    a2.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(f"{out}/loss.png", dpi=110)

    # Throughput: ratios to the bridge per load.
    fig, ax = plt.subplots(figsize=(11, 4))
    loads = [("udp64 1 flow", lambda c: delivered(udp(by[c], 1))[0] if udp(by[c], 1) else None),
             ("udp64 1000 flows", lambda c: delivered(udp(by[c], 1000))[0] if udp(by[c], 1000) else None),
             ("http req/s", lambda c: first(c, "http") and first(c, "http")["rps"]),
             ("memcached ops/s", lambda c: first(c, "mc_loadgen") and first(c, "mc_loadgen")["ops"])]
    width = 0.8 / max(len(cfgs), 1)
    for i, c in enumerate(cfgs):
        vals = []
        for _, f in loads:
            b, v = f("bridge"), f(c)
            vals.append((v / b) if b and v else 0)
        ax.bar([j + i * width for j in range(len(loads))], vals, width, label=c)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(loads))])
    ax.set_xticklabels([l for l, _ in loads])
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_ylabel("× kernel bridge (same run)")
    ax.legend(fontsize=7, ncol=3)
    fig.tight_layout()
    fig.savefig(f"{out}/throughput.png", dpi=110)

    # HTTP latency.
    fig, ax = plt.subplots(figsize=(11, 4))
    hc = [c for c in cfgs if first(c, "http")]
    for k, (key, lab) in enumerate((("p50_us", "p50"), ("p99_us", "p99"), ("p999_us", "p99.9"))):
        ax.bar([i + k * 0.27 for i in range(len(hc))], [first(c, "http")[key] for c in hc], 0.27, label=lab)
    ax.set_xticks([i + 0.27 for i in range(len(hc))])
    ax.set_xticklabels(hc, rotation=30, ha="right", fontsize=7)
    ax.set_ylabel("HTTP latency µs (wrk)")
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(f"{out}/latency.png", dpi=110)


if __name__ == "__main__":
    main()
