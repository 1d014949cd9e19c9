#!/usr/bin/env python3
"""Where the machine's CPU goes per load: bench/run.sh's PROFILE=1 profiles
(`perf record -a -g`, the whole machine, during each load) summarised as CPU
per operation, split by who spent it and, for the middlebox, on what.

    python3 bench/profile.py RESULTS.jsonl PROFILE_DIR OUT_DIR
    python3 bench/profile.py --one PERF.DATA OPS   (one recording, as text)

Writes OUT_DIR/profile.md and OUT_DIR/profile.jsonl. An operation is what
the load counts: a delivered frame (udp64), a request (http), an operation
(memcached), a MB (iperf3, bulk).

The split of the middlebox's time is by call chain, not by the function a
sample landed in: the question the targets ask is how much of our thread's
time is ours. On a veth, a copy-mode AF_XDP `sendto` runs the peer's NAPI
and the far end's whole receive (bridge, TCP, the woken reader) before it
returns (docs/dataplane.md, "Lab shapes"); HAProxy's `sendto` on a TCP
socket does the same over its veth. Those samples are counted apart
("far end's receive in our send"), since a NIC would take the frame by DMA
and charge nobody's thread for it.
"""
import json
import os
import re
import subprocess
import sys
from collections import Counter, defaultdict

HZ = 999  # the sampling frequency bench/run.sh records with

# Who: a sample's command name, grouped.
GROUPS = [
    # The generator and its sink run the project's binary too: before the
    # middlebox's pattern.
    ("client", re.compile(r"^(wrk|loadgen|memcaslap|memaslap|enforcer-pktg|nc|iperf3)")),
    ("middlebox", re.compile(r"^(enforcer|haproxy)")),
    ("server", re.compile(r"^(nginx|memcached|mc-)")),
    ("scripts, tools", re.compile(r"^(bash|sh|python3|awk|sed|grep|cat|readlink|sleep|pyenv|ip)$|^pyenv")),
    ("softirq threads", re.compile(r"^(ksoftirqd|napi/)")),
    ("profiler", re.compile(r"^perf")),
    ("idle", re.compile(r"^swapper")),
]

SOFTIRQ = {
    "net_rx_action",
    "__napi_poll",
    "handle_softirqs",
    "__do_softirq",
    "do_softirq",
    "__netif_receive_skb_core",
    "__netif_receive_skb_one_core",
    "netif_receive_skb",
    "process_backlog",
}
ENGINE = re.compile(
    r"enforcer::(engine|stream|l7|policy|packet|verdict|log|packed|counters|config|replay)\b"
)
LOOP = re.compile(r"enforcer::(dataplane|hostmode)\b|xsk_rs|\bxsk_|libxdp|libbpf")
COPY = re.compile(r"^(__)?mem(cpy|move|set|cmp)|^__memcpy|^__memmove|^__memset")
SYSCALL = re.compile(r"^__(x64|se|do)_sys_(\w+)$")


def group(comm):
    for name, pat in GROUPS:
        if pat.search(comm):
            return name
    return "other"


FAR = "kernel: far end's receive in our send"


def bucket(stack):
    """A middlebox sample's bucket. stack: [(sym, dso)] from the leaf up."""
    kernel = [s for s, d in stack if d == "[kernel.kallsyms]"]
    if not stack:
        return "unknown"
    leaf_sym, leaf_dso = stack[0]
    if leaf_dso != "[kernel.kallsyms]":
        if ENGINE.search(leaf_sym):
            return "user: engine"
        if LOOP.search(leaf_sym):
            return "user: dataplane loop"
        if COPY.search(leaf_sym):
            return "user: memcpy/memset"
        if "haproxy" in leaf_dso:
            return "user: haproxy"
        if leaf_sym.startswith("enforcer::") or "enforcer" in leaf_dso:
            return "user: other enforcer code"
        return "user: libraries"
    # Kernel: which syscall (the frame nearest the root that names one).
    call = None
    depth = None
    for i, s in enumerate(kernel):
        m = SYSCALL.match(s)
        if m:
            call, depth = m.group(2), i
    soft = any(s in SOFTIRQ for s in kernel[: depth if depth is not None else len(kernel)])
    if call is None:
        return "kernel: softirq, interrupts" if soft else "kernel: other"
    # io_uring_enter: host mode's TAP writes go through an io_uring ring.
    if call in ("sendto", "sendmsg", "write", "writev", "io_uring_enter") and soft:
        return FAR
    if soft:
        return f"kernel: softirq in {call}"
    if call in ("poll", "ppoll", "epoll_wait", "epoll_pwait", "select", "pselect6"):
        return "kernel: poll (sleeps)"
    return f"kernel: {call}"


def samples(path):
    """(comm, stack) per sample of a perf.data file."""
    out = subprocess.run(
        ["perf", "script", "-i", path, "-F", "comm,tid,ip,sym,dso"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    comm, stack = None, []
    for line in out.splitlines():
        if not line.strip():
            if comm is not None:
                yield comm, stack
            comm, stack = None, []
        elif not line[0].isspace():
            comm, stack = line.split()[0], []
        else:
            parts = line.strip().split(None, 1)
            rest = parts[1] if len(parts) > 1 else ""
            m = re.match(r"(.*) \((.*)\)$", rest)
            sym, dso = (m.group(1), m.group(2)) if m else (rest, "")
            sym = re.sub(r"\+0x[0-9a-f]+$", "", sym)
            stack.append((sym, dso))
    if comm is not None:
        yield comm, stack


def ops(r):
    """(operations in the line's window, what one is)."""
    w = r.get("wall_s") or 0
    t = r["test"]
    if t == "udp64":
        return (r.get("sink") or {}).get("received", 0), "frame"
    if t == "http":
        return r.get("rps", 0) * w, "request"
    if t in ("mc_loadgen", "mc_memaslap"):
        return r.get("ops", 0) * w, "op"
    if t.startswith("iperf3"):
        return r.get("bps", 0) / 8 * w / 1e6, "MB"
    if t == "bulk":
        return r.get("bytes", 0) / 1e6, "MB"
    return 0, "op"


def label(r):
    t = r["test"]
    if t == "udp64":
        rate = "full speed" if r.get("rate", 0) == 0 else f"{r['rate'] // 1000} kpps"
        return f"udp64, {r.get('flows')} flows, {rate}"
    return t


def split(path, n):
    """CPU per operation by group, and the middlebox's by bucket."""
    who, what, total = Counter(), Counter(), 0
    # What "other" and the unnamed buckets hold, for the reader to check.
    others, libs = Counter(), Counter()
    for comm, stack in samples(path):
        g = group(comm)
        who[g] += 1
        total += 1
        if g == "other":
            others[comm] += 1
        if g == "middlebox":
            b = bucket(stack)
            what[b] += 1
            if b == "user: libraries" and stack:
                libs[f"{stack[0][0]} ({os.path.basename(stack[0][1])})"] += 1
    us = (lambda k: k * 1e6 / HZ / n) if n else (lambda k: None)
    return {
        "samples": total,
        "who_us": {k: us(v) for k, v in who.most_common()},
        "middlebox_us": {k: us(v) for k, v in what.most_common()},
        "other_comms": {k: us(v) for k, v in others.most_common(5)},
        "library_syms": {k: us(v) for k, v in libs.most_common(5)},
    }


def one(path, n):
    s = split(path, n)
    print(f"CPU per operation (µs), {n:.0f} operations, {s['samples']} samples at {HZ} Hz")
    for k, v in s["who_us"].items():
        print(f"  {k:<50} {fmt(v)}")
    mb = s["who_us"].get("middlebox")
    if mb is not None:
        far = s["middlebox_us"].get(FAR) or 0
        print(f"  {'middlebox without the far end’s receive':<50} {fmt(mb - far)}")
        print("middlebox by call chain:")
        for k, v in s["middlebox_us"].items():
            print(f"  {k:<50} {fmt(v)}")
    for k, v in s["other_comms"].items():
        print(f"  other: {k:<43} {fmt(v)}")


def main():
    if sys.argv[1] == "--one":
        return one(sys.argv[2], float(sys.argv[3]))
    res, pdir, out = sys.argv[1:4]
    rows = [json.loads(l) for l in open(res) if l.strip()]
    summary = []
    for r in rows:
        f = r.get("prof")
        if not f or not os.path.exists(os.path.join(pdir, f)):
            continue
        n, unit = ops(r)
        sp = split(os.path.join(pdir, f), n)
        summary.append(
            {"cfg": r["cfg"], "load": label(r), "unit": unit, "ops": round(n, 1)} | sp
        )
    with open(os.path.join(out, "profile.jsonl"), "w") as fh:
        for s in summary:
            fh.write(json.dumps(s) + "\n")
    md = [
        "CPU per operation by call chain, from `perf record -a -g -F 999` of the whole machine "
        "during each load (`PROFILE=1 bash bench/run.sh`; the profiler's own share is listed). "
        "µs of CPU per operation; `idle` is CPU time no one used. Through the bridge, each end's "
        "send runs the other end's receive (the client's and server's columns hold it); through "
        "a middlebox, the middlebox's sends run it (`far end's receive in our send`), so compare "
        "`all but idle` between rows, and `middlebox without the far end's receive` for what "
        "the middlebox itself costs.\n"
    ]
    byload = defaultdict(list)
    for s in summary:
        byload[s["load"]].append(s)
    for load, ss in byload.items():
        md.append(f"### {load} (µs of CPU per {ss[0]['unit']})\n")
        groups = [
            "middlebox",
            "client",
            "server",
            "softirq threads",
            "scripts, tools",
            "other",
            "profiler",
            "idle",
        ]
        md.append(
            "| middlebox | "
            + " | ".join(groups[:1] + ["middlebox without the far end's receive"] + groups[1:])
            + " | all but idle |"
        )
        md.append("|---" * (len(groups) + 3) + "|")
        for s in ss:
            w = s["who_us"]
            mb = w.get("middlebox")
            far = s["middlebox_us"].get(FAR) or 0
            own = None if mb is None else mb - far
            busy = sum(v for k, v in w.items() if k != "idle" and v is not None) if w else None
            cells = [fmt(w.get("middlebox")), fmt(own)] + [fmt(w.get(g)) for g in groups[1:]]
            md.append(f"| {s['cfg']} | " + " | ".join(cells) + f" | {fmt(busy)} |")
        md.append("")
        md += listing(ss, "other_comms", "`other`, by command")
        md.append("Middlebox's time by call chain:\n")
        keys = []
        for s in ss:
            for k in s["middlebox_us"]:
                if k not in keys:
                    keys.append(k)
        keys.sort(key=lambda k: -max((s["middlebox_us"].get(k) or 0) for s in ss))
        cfgs = [s["cfg"] for s in ss if s["middlebox_us"]]
        if not cfgs:
            md.append("(no middlebox process: the kernel bridge)\n")
            continue
        md.append("| where | " + " | ".join(cfgs) + " |")
        md.append("|---" * (len(cfgs) + 1) + "|")
        for k in keys:
            cells = [fmt(s["middlebox_us"].get(k)) for s in ss if s["middlebox_us"]]
            md.append(f"| {k} | " + " | ".join(cells) + " |")
        md.append("")
        md += listing(ss, "library_syms", "`user: libraries`, by function")
    with open(os.path.join(out, "profile.md"), "w") as fh:
        fh.write("\n".join(md) + "\n")


def listing(ss, key, title):
    """A line naming what a catch-all holds per configuration (or none)."""
    notes = [
        f"{s['cfg']}: " + ", ".join(f"`{k}` {fmt(v)}" for k, v in s[key].items())
        for s in ss
        if s[key]
    ]
    return [f"{title}: " + "; ".join(notes) + ".\n"] if notes else []


def fmt(v):
    return "–" if v is None else f"{v:.2f}"


if __name__ == "__main__":
    main()
