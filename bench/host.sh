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
#                           gives medians per build. An entry may start
#                           with environment for that run, VAR=VALUE[+...]:
#                           (e.g. ENFORCER_TAP_IO=plain:target/release/enforcer)
#   FLOOR=1                 adds the last build (with its environment) and ENFORCER_PASSTHROUGH=1:
#                           host mode with no engine (every frame forwarded),
#                           the re-entry path's own cost (AF_XDP copy mode,
#                           TAP, wake-ups) apart from the engine's
#
# Each repetition measures the kernel alone, then a fresh enforcer, back to
# back, so the two see the same machine; the report gives medians over the
# repetitions, each repetition's figures, and the load average beside them
# (a shared machine: the enforcer's CPU per request, from /proc, is the
# figure that other load disturbs least, with its sleeps and syscalls per
# request, and with perf its syscalls and the IPIs it sends per request:
# counts that other load disturbs even less).
# HTTP: wrk from a-wing to nginx on the server (GET /v1/, allowed by the
# Star Wars rules). memcached: bench/loadgen.rs from a-wing (get
# awing-coord, allowed by the seed policy), 4 connections x 8 pipelined
# requests. Enforcer CPU per request comes from /proc (utime+stime), the
# whole machine's per request from /proc/stat (busy time of every CPU:
# client, server, kernel and enforcer).
#   PERF=1  profiles the whole machine (perf record -a -g) during each HTTP
#           load: top symbols, and CPU per request by process and the
#           enforcer's by call chain (bench/profile.py), in
#           bench/results/host-perf-CONFIG-REP.txt
#           (CONFIG: kernel, or the build's index). The profiler costs CPU:
#           no figures from such a run.
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${1:-10}
REPS=${2:-3}
source scripts/lib/deps.sh
install_deps
command -v nginx >/dev/null || as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light >/dev/null
cargo build --release -q --bin enforcer --example loadgen
read -r -a BINS <<<"${ENFORCER_BIN:-target/release/enforcer}"
# The floor keeps the last build's environment (its re-entry device, say).
if [ -n "${FLOOR:-}" ]; then
  LAST=${BINS[-1]}
  if [[ $LAST == *:* ]]; then BINS+=("ENFORCER_PASSTHROUGH=1+${LAST%%:*}:${LAST##*:}"); else BINS+=("ENFORCER_PASSTHROUGH=1:$LAST"); fi
fi
bin_path() { echo "${1##*:}"; }
bin_env() { [[ $1 == *:* ]] && tr + ' ' <<<"${1%%:*}"; true; }
for b in "${BINS[@]}"; do
  [ -x "$(bin_path "$b")" ] || { echo "host.sh: $(bin_path "$b") is not an executable" >&2; exit 1; }
done
LOADGEN=target/release/examples/loadgen

P=${BENCH_PREFIX:-hbench$$}
Q=2
source bench/lib.sh
OUT=$(mktemp)
bench_cleanup_extra() { rm -f "$OUT"; }

lab up --host-mode >/dev/null
start_nginx

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
# Times the enforcer's threads went to sleep (poll, futex): each costs a wake-up.
sleeps() { cat /proc/"$1"/task/*/status | awk '/^voluntary_ctxt_switches/ {n += $2} END {print n + 0}'; }
# With perf: the enforcer's read/write/poll/sendto/io_uring_enter calls during one load
# (the TAP costs a read or write per frame without io_uring; counts do not depend on load),
# and the IPIs its threads send (RPS hand-offs of what it writes into the TAP, wake-ups):
# on a VM each is an MSR write and an exit, the largest single cost in the worker's profile.
SYSCALLS=(read write poll sendto io_uring_enter)
count_syscalls() { # PID SECONDS FILE
  if command -v perf >/dev/null; then
    perf stat -x, -e "$(printf 'syscalls:sys_enter_%s,' "${SYSCALLS[@]}")ipi:ipi_send_cpu" \
      -p "$1" -o "$3" -- sleep "$2" >/dev/null 2>&1 || true
  fi
}
syscall_counts() { # FILE -> one count per SYSCALLS entry (0 without perf)
  local f=$1 out="" n c
  for c in "${SYSCALLS[@]}"; do
    n=$(awk -F, -v e="syscalls:sys_enter_$c" '$3 == e {print $1}' "$f" 2>/dev/null)
    out+="${n:-0} "
  done
  echo "$out"
}
ipi_count() { # FILE -> IPIs the enforcer sent (0 without perf)
  local n
  n=$(awk -F, '$3 == "ipi:ipi_send_cpu" {print $1}' "$1" 2>/dev/null)
  echo "${n:-0}"
}
perf_start() { # TAG
  [ -n "${PERF:-}" ] || return 0
  perf record -q -a -g -F 999 -o "$STATE/perf-$1.data" -- sleep "$DUR" >/dev/null 2>&1 &
  PERF_PID=$!
}
perf_end() { # TAG REQ/S
  [ -n "${PERF:-}" ] || return 0
  wait "$PERF_PID" || true
  mkdir -p bench/results
  # Shares by command (others' builds show up here too: a shared machine),
  # then the top symbols of each command.
  {
    perf report -i "$STATE/perf-$1.data" --no-children --stdio -g none --sort comm 2>/dev/null |
      grep -E '^ +[0-9]' | head -20
    echo
    perf report -i "$STATE/perf-$1.data" --no-children --stdio -g none --sort comm,symbol \
      --percent-limit 0.2 2>/dev/null | grep -E '^ +[0-9]' | sed 's/  */ /g' | head -150
    # CPU per request by process, and the enforcer's by call chain
    # (bench/profile.py: what its TAP writes and AF_XDP sends ran of the
    # host's and the client's receive, apart from its own work).
    echo
    python3 bench/profile.py --one "$STATE/perf-$1.data" "$(python3 -c "print(float('${2:-0}') * $DUR)")"
  } >"bench/results/host-perf-$1.txt" || true
  rm -f "$STATE/perf-$1.data"
}
ping_stats() { # 200 pings, 5 ms apart: "average RTT in µs, replies lost" (the re-entry path's latency)
  # ping exits 1 when a reply is lost; under pipefail and set -e that ended
  # the whole run (after its last load, with no report). Losses are reported.
  { nsx xwing ping -q -c 200 -i 0.005 10.66.0.2 || true; } | awk -F'[/ ]+' '
    / packets transmitted/ {lost = $1 - $4}
    /^rtt/ {avg = $8 * 1000}
    END {printf "%d %d\n", avg, lost}'
}
# One load against the enforcer: "result errors ticks_before sleeps_before
# machine_before" and its syscalls into FILE (the ticks after are the next
# load's "before").
measure() { # LOAD_FN FILE
  local t s m r
  [ -d "/proc/$MB_PID" ] || { echo "host.sh: the enforcer exited:" >&2; cat "$STATE/enforcer.out" "$STATE/enforcer.err" >&2; exit 1; }
  t=$(cpu_ticks "$MB_PID")
  s=$(sleeps "$MB_PID")
  m=$(machine_busy)
  count_syscalls "$MB_PID" "$DUR" "$2" &
  local sys_pid=$!
  r=$($1)
  wait "$sys_pid"
  echo "$r $t $s $m"
}

seed_awing_key
for rep in $(seq "$REPS"); do
  echo "repetition $rep/$REPS: the kernel alone" >&2
  L0=$(cut -d' ' -f1 /proc/loadavg)
  M0=$(machine_busy)
  perf_start "kernel-$rep"
  read -r B_HTTP B_HTTP_ERR < <(http_rps)
  perf_end "kernel-$rep" "$B_HTTP"
  M1=$(machine_busy)
  read -r B_MC B_MC_ERR < <(mc_ops)
  M2=$(machine_busy)
  read -r B_PING B_PING_LOST < <(ping_stats)
  # Odd repetitions take the builds in order, even ones in reverse: none is
  # always the one measured furthest from the kernel-alone figures.
  ORDER=("${!BINS[@]}")
  ((rep % 2 == 0)) && mapfile -t ORDER < <(printf '%s\n' "${ORDER[@]}" | tac)
  for bi in "${ORDER[@]}"; do
    BIN=$(bin_path "${BINS[$bi]}")
    read -r -a BENV < <(bin_env "${BINS[$bi]}") || true
    echo "repetition $rep/$REPS: host mode on the server's eth0 (${BINS[$bi]}), adaptive poll, policies/ ${ENFORCER_ARGS:-}" >&2
    # shellcheck disable=SC2086
    ENF_ERR=$STATE/enforcer.err enf_launch server env "${BENV[@]}" "$BIN" --iface eth0 --policy policies --poll adaptive ${ENFORCER_ARGS:-}
    READY=$(grep '^ready ' "$STATE/enforcer.out")
    perf_start "$bi-$rep"
    read -r E_HTTP E_HTTP_ERR T0 S0 N0 < <(measure http_rps "$STATE/sys-http")
    perf_end "$bi-$rep" "$E_HTTP"
    read -r E_MC E_MC_ERR T1 S1 N1 < <(measure mc_ops "$STATE/sys-mc")
    T2=$(cpu_ticks "$MB_PID")
    S2=$(sleeps "$MB_PID")
    N2=$(machine_busy)
    read -r E_PING E_PING_LOST < <(ping_stats)
    L1=$(cut -d' ' -f1 /proc/loadavg)
    kill -USR1 "$MB_PID"
    sleep 0.3
    COUNTERS=$(enf_counters)
    stop_mb
    W=$(grep -o 'workers=[0-9]*' <<<"$READY" | cut -d= -f2)
    echo "$bi ${W:-0} $B_HTTP $B_HTTP_ERR $E_HTTP $E_HTTP_ERR $B_MC $B_MC_ERR $E_MC $E_MC_ERR $T0 $T1 $T2 ${B_PING:-0} ${E_PING:-0} $L0 $L1 $S0 $S1 $S2 $M0 $M1 $M2 $N0 $N1 $N2 $(syscall_counts "$STATE/sys-http")$(syscall_counts "$STATE/sys-mc")$(ipi_count "$STATE/sys-http") $(ipi_count "$STATE/sys-mc") ${B_PING_LOST:-0} ${E_PING_LOST:-0}" >>"$OUT"
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
    m0, m1, m2, n0, n1, n2 = v[18:24]
    names = ("read", "write", "poll", "sendto", "io_uring_enter")
    sys_http, sys_mc = v[24:24 + len(names)], v[24 + len(names):24 + 2 * len(names)]
    ipi_http, ipi_mc, bpl, epl = v[24 + 2 * len(names):28 + 2 * len(names)]
    per = lambda counts, n: {k: round(c / max(n, 1), 2) for k, c in zip(names, counts)} if any(counts) else None
    reps.append({
        "workers": workers,
        "http_rps": {"no_enforcer": bh, "host_mode": eh},
        "http_ratio": round(eh / bh, 3) if bh else None,
        "http_enforcer_cpu_us_per_req": round((t1 - t0) / hz / max(eh * dur, 1) * 1e6, 2),
        "mc_ops": {"no_enforcer": bm, "host_mode": em},
        "mc_ratio": round(em / bm, 3) if bm else None,
        "mc_enforcer_cpu_us_per_op": round((t2 - t1) / hz / max(em * dur, 1) * 1e6, 2),
        # The whole machine's busy CPU (/proc/stat) per request: everything
        # the request cost, client and server included.
        "http_machine_cpu_us_per_req": {"no_enforcer": round((m1 - m0) / hz / max(bh * dur, 1) * 1e6, 2),
                                        "host_mode": round((n1 - n0) / hz / max(eh * dur, 1) * 1e6, 2)},
        "mc_machine_cpu_us_per_op": {"no_enforcer": round((m2 - m1) / hz / max(bm * dur, 1) * 1e6, 2),
                                     "host_mode": round((n2 - n1) / hz / max(em * dur, 1) * 1e6, 2)},
        "http_enforcer_sleeps_per_req": round((s1 - s0) / max(eh * dur, 1), 3),
        "mc_enforcer_sleeps_per_op": round((s2 - s1) / max(em * dur, 1), 3),
        "http_enforcer_syscalls_per_req": per(sys_http, eh * dur),
        "mc_enforcer_syscalls_per_op": per(sys_mc, em * dur),
        "http_enforcer_ipis_per_req": round(ipi_http / max(eh * dur, 1), 3),
        "mc_enforcer_ipis_per_op": round(ipi_mc / max(em * dur, 1), 3),
        "errors": int(bhe + ehe + bme + eme),
        "ping_rtt_avg_us": {"no_enforcer": int(bp), "host_mode": int(ep)},
        "ping_lost_of_200": {"no_enforcer": int(bpl), "host_mode": int(epl)},
        "loadavg_1m": {"before": l0, "after": l1},
    })
def med(reps, key, sub=None):
    v = [r[key] if sub is None else (r[key] or {}).get(sub) for r in reps]
    v = [x for x in v if x is not None]
    return round(statistics.median(v), 3) if v else None
def summary(reps):
    m = {k: med(reps, k) for k in ("http_ratio", "http_enforcer_cpu_us_per_req",
                                   "http_enforcer_sleeps_per_req", "mc_ratio",
                                   "mc_enforcer_cpu_us_per_op", "mc_enforcer_sleeps_per_op",
                                   "http_enforcer_ipis_per_req", "mc_enforcer_ipis_per_op")}
    for load, key in (("http", "http_enforcer_syscalls_per_req"), ("mc", "mc_enforcer_syscalls_per_op")):
        m[key] = {c: med(reps, key, c) for c in ("read", "write", "poll", "sendto", "io_uring_enter")}
    for load in ("http_rps", "mc_ops", "http_machine_cpu_us_per_req", "mc_machine_cpu_us_per_op"):
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
