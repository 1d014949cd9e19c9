#!/usr/bin/env bash
# Host-mode lab benchmark: the same loads against the same server, first
# with no enforcer (the kernel alone), then with `enforcer --iface eth0`
# running on the server itself (seed policies, L7 rules on), in one run.
#
#   sudo bash bench/host.sh [SECONDS] [REPS]   (default 10 s per load, 3 repetitions)
#   ENFORCER_BIN="path..."  the build(s) to measure (default: this tree's);
#                           with several (e.g. an earlier commit's and this
#                           one's), each repetition measures each of them
#                           right after the kernel alone, and the report
#                           gives medians per build
#
# Each repetition measures the kernel alone, then a fresh enforcer, back to
# back, so the two see the same machine; the report gives medians over the
# repetitions, each repetition's figures, and the load average beside them
# (a shared machine: the enforcer's CPU per request, from /proc, is the
# figure that other load disturbs least, with its sleeps and syscalls per
# request: counts that other load disturbs even less).
# HTTP: wrk from a-wing to nginx on the server (GET /v1/, allowed by the
# Star Wars rules). memcached: bench/loadgen.rs from a-wing (get
# awing-coord, allowed by the seed policy), 4 connections x 8 pipelined
# requests. Enforcer CPU per request comes from /proc (utime+stime).
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${1:-10}
REPS=${2:-3}
source scripts/lib/deps.sh
install_deps
command -v nginx >/dev/null || as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light >/dev/null
cargo build --release -q --bin enforcer --example loadgen
read -r -a BINS <<<"${ENFORCER_BIN:-target/release/enforcer}"
for b in "${BINS[@]}"; do [ -x "$b" ] || { echo "host.sh: $b is not an executable" >&2; exit 1; }; done
LOADGEN=target/release/examples/loadgen

P=${BENCH_PREFIX:-hbench$$}
STATE=/run/enforcer-lab/$P
lab() { bash scripts/lab.sh -p "$P" -q 2 "$@"; }
nsx() { local h=$1; shift; ip netns exec "$P-$h" "$@"; }
ENF_PID=""
OUT=$(mktemp)
cleanup() {
  rm -f "$OUT"
  [ -n "$ENF_PID" ] && kill "$ENF_PID" 2>/dev/null && wait "$ENF_PID" 2>/dev/null || true
  lab down >/dev/null 2>&1 || true
}
trap cleanup EXIT INT TERM

lab up --host-mode >/dev/null
# nginx takes port 80 from the deathstar app: a Python server would be the bottleneck.
for pid in $(nsx server ss -ltnpH 'sport = :80' | grep -o 'pid=[0-9]*' | cut -d= -f2 | sort -u); do kill "$pid"; done
sleep 0.3
cat > "$STATE/nginx.conf" <<NGINX
worker_processes 1;
daemon on;
pid $STATE/nginx.pid;
error_log $STATE/nginx.err;
events { worker_connections 1024; }
http {
  access_log off;
  server {
    listen 80 reuseport;
    listen [::]:80 reuseport;
    location / { return 200 "ok\n"; }
  }
}
NGINX
nsx server nginx -c "$STATE/nginx.conf"

http_rps() { # prints "req/s errors"
  local out rps err
  out=$(nsx awing wrk -t1 -c16 -d"${DUR}s" http://10.66.0.2/v1/ 2>&1)
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  err=$(awk '/Non-2xx/ {n+=$NF} /Socket errors/ {gsub(",",""); n+=$4+$6+$8+$10} END {print n+0}' <<<"$out")
  echo "${rps:-0} ${err:-0}"
}
mc_ops() { # prints "ops/s errors"
  local out
  out=$(nsx awing "$LOADGEN" 10.66.0.2:11211 --conns 4 --depth 8 --seconds "$DUR")
  python3 -c 'import json,sys; d=json.loads(sys.argv[1]); print(d["ops_per_s"], d["errors"])' "$out"
}
cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
# Times the enforcer's threads went to sleep (poll, futex): each costs a wake-up.
sleeps() { cat /proc/"$1"/task/*/status | awk '/^voluntary_ctxt_switches/ {n += $2} END {print n + 0}'; }
# With perf: the enforcer's read/write/poll/sendto calls during one load
# (the TAP costs a read or write per frame; counts do not depend on load).
SYSCALLS=(read write poll sendto)
count_syscalls() { # PID SECONDS FILE
  if command -v perf >/dev/null; then
    perf stat -x, -e "$(printf 'syscalls:sys_enter_%s,' "${SYSCALLS[@]}" | sed 's/,$//')" \
      -p "$1" -o "$3" -- sleep "$2" >/dev/null 2>&1 || true
  fi
}
syscall_counts() { # FILE -> "read write poll sendto" (0 without perf)
  local f=$1 out="" n c
  for c in "${SYSCALLS[@]}"; do
    n=$(awk -F, -v e="syscalls:sys_enter_$c" '$3 == e {print $1}' "$f" 2>/dev/null)
    out+="${n:-0} "
  done
  echo "$out"
}
ping_avg_us() { # 200 pings, 5 ms apart: average RTT in µs (the re-entry path's latency)
  nsx xwing ping -q -c 200 -i 0.005 10.66.0.2 | awk -F/ '/^rtt/ {printf "%d\n", $5 * 1000}'
}

stop_enforcer() {
  kill "$ENF_PID" 2>/dev/null || true
  wait "$ENF_PID" 2>/dev/null || true
  ENF_PID=""
}
HZ=$(getconf CLK_TCK)
printf 'set awing-coord 0 0 16\r\n4309.432,918.980\r\n' | nsx awing nc -N -w 3 10.66.0.2 11211 >/dev/null
for rep in $(seq "$REPS"); do
  echo "repetition $rep/$REPS: the kernel alone" >&2
  L0=$(cut -d' ' -f1 /proc/loadavg)
  read -r B_HTTP B_HTTP_ERR < <(http_rps)
  read -r B_MC B_MC_ERR < <(mc_ops)
  B_PING=$(ping_avg_us)
  # Odd repetitions take the builds in order, even ones in reverse: none is
  # always the one measured furthest from the kernel-alone figures.
  ORDER=("${!BINS[@]}")
  ((rep % 2 == 0)) && mapfile -t ORDER < <(printf '%s\n' "${ORDER[@]}" | tac)
  for bi in "${ORDER[@]}"; do
    BIN=${BINS[$bi]}
    echo "repetition $rep/$REPS: host mode on the server's eth0 ($BIN), adaptive poll, policies/ ${ENFORCER_ARGS:-}" >&2
    # shellcheck disable=SC2086
    ip netns exec "$P-server" "$BIN" --iface eth0 --policy policies --poll adaptive ${ENFORCER_ARGS:-} \
      >"$STATE/enforcer.out" 2>"$STATE/enforcer.err" &
    ENF_PID=$!
    for _ in $(seq 100); do grep -q '^ready ' "$STATE/enforcer.out" && break; sleep 0.1; done
    grep -q '^ready ' "$STATE/enforcer.out" || { cat "$STATE/enforcer.out" "$STATE/enforcer.err" >&2; exit 1; }
    READY=$(grep '^ready ' "$STATE/enforcer.out")
    T0=$(cpu_ticks "$ENF_PID")
    S0=$(sleeps "$ENF_PID")
    count_syscalls "$ENF_PID" "$DUR" "$STATE/sys-http" &
    SYS_PID=$!
    read -r E_HTTP E_HTTP_ERR < <(http_rps)
    wait "$SYS_PID"
    T1=$(cpu_ticks "$ENF_PID")
    S1=$(sleeps "$ENF_PID")
    count_syscalls "$ENF_PID" "$DUR" "$STATE/sys-mc" &
    SYS_PID=$!
    read -r E_MC E_MC_ERR < <(mc_ops)
    wait "$SYS_PID"
    T2=$(cpu_ticks "$ENF_PID")
    S2=$(sleeps "$ENF_PID")
    E_PING=$(ping_avg_us)
    L1=$(cut -d' ' -f1 /proc/loadavg)
    kill -USR1 "$ENF_PID"
    sleep 0.3
    COUNTERS=$(grep '^{"counters"' "$STATE/enforcer.out" | tail -n 1 || true)
    stop_enforcer
    W=$(grep -o 'workers=[0-9]*' <<<"$READY" | cut -d= -f2)
    echo "$bi ${W:-0} $B_HTTP $B_HTTP_ERR $E_HTTP $E_HTTP_ERR $B_MC $B_MC_ERR $E_MC $E_MC_ERR $T0 $T1 $T2 ${B_PING:-0} ${E_PING:-0} $L0 $L1 $S0 $S1 $S2 $(syscall_counts "$STATE/sys-http")$(syscall_counts "$STATE/sys-mc")" >>"$OUT"
  done
done

python3 - "$DUR" "$HZ" "$OUT" "${BINS[@]}" <<'PY'
import json, statistics, sys
dur, hz = float(sys.argv[1]), float(sys.argv[2])
bins = sys.argv[4:]
per_build = {b: [] for b in range(len(bins))}
for line in open(sys.argv[3]):
    v = list(map(float, line.split()))
    build, workers, v = int(v[0]), int(v[1]), v[2:]
    reps = per_build[build]
    bh, bhe, eh, ehe, bm, bme, em, eme, t0, t1, t2, bp, ep, l0, l1, s0, s1, s2 = v[:18]
    sys_http, sys_mc = v[18:22], v[22:26]
    names = ("read", "write", "poll", "sendto")
    per = lambda counts, n: {k: round(c / max(n, 1), 2) for k, c in zip(names, counts)} if any(counts) else None
    reps.append({
        "workers": workers,
        "http_rps": {"no_enforcer": bh, "host_mode": eh},
        "http_ratio": round(eh / bh, 3) if bh else None,
        "http_enforcer_cpu_us_per_req": round((t1 - t0) / hz / max(eh * dur, 1) * 1e6, 2),
        "mc_ops": {"no_enforcer": bm, "host_mode": em},
        "mc_ratio": round(em / bm, 3) if bm else None,
        "mc_enforcer_cpu_us_per_op": round((t2 - t1) / hz / max(em * dur, 1) * 1e6, 2),
        "http_enforcer_sleeps_per_req": round((s1 - s0) / max(eh * dur, 1), 3),
        "mc_enforcer_sleeps_per_op": round((s2 - s1) / max(em * dur, 1), 3),
        "http_enforcer_syscalls_per_req": per(sys_http, eh * dur),
        "mc_enforcer_syscalls_per_op": per(sys_mc, em * dur),
        "errors": int(bhe + ehe + bme + eme),
        "ping_rtt_avg_us": {"no_enforcer": int(bp), "host_mode": int(ep)},
        "loadavg_1m": {"before": l0, "after": l1},
    })
def med(reps, key, sub=None):
    v = [r[key] if sub is None else (r[key] or {}).get(sub) for r in reps]
    v = [x for x in v if x is not None]
    return round(statistics.median(v), 3) if v else None
def summary(reps):
    m = {k: med(reps, k) for k in ("http_ratio", "http_enforcer_cpu_us_per_req",
                                   "http_enforcer_sleeps_per_req", "mc_ratio",
                                   "mc_enforcer_cpu_us_per_op", "mc_enforcer_sleeps_per_op")}
    for load, key in (("http", "http_enforcer_syscalls_per_req"), ("mc", "mc_enforcer_syscalls_per_op")):
        m[key] = {c: med(reps, key, c) for c in ("read", "write", "poll", "sendto")}
    for load in ("http_rps", "mc_ops"):
        m[load] = {k: med(reps, load, k) for k in ("no_enforcer", "host_mode")}
    return m
r = {
    "builds": [{"build": bins[b], "median": summary(reps), "repetitions": reps}
               for b, reps in per_build.items()],
    "seconds_per_load": dur,
}
print(json.dumps(r, indent=2))
PY
echo "enforcer counters (last repetition):" >&2
echo "$COUNTERS" >&2
