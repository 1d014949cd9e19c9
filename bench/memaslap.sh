#!/usr/bin/env bash
# memaslap through the kernel bridge and through the enforcer (any-key L7
# rules, bench/policies-anykey/), in one lab, repetitions interleaved, so
# that builds and idle settings compare within the same minutes.
#
#   sudo bash bench/memaslap.sh [SECONDS] [REPS]
#
# SECONDS per load (default 5), REPS rounds (default 3); each round runs the
# bridge, then every build in ENFORCER_BIN ("PATH ..." or "VAR=VALUE:PATH",
# default this tree's release build). ENFORCER_ARGS go to every enforcer
# (default: --workers 1 --poll adaptive). PERF=1 records the enforcer
# (perf record -g) during each build's first load: top symbols in
# bench/results/memaslap-perf-N.txt.
# Per load: ops/s, memaslap's average latency, the enforcer's CPU per op
# (utime+stime from /proc) and its sleeps per op (voluntary switches).
set -Eeuo pipefail
cd "$(dirname "$0")/.."
P=${BENCH_PREFIX:-bench}$$
Q=1
source bench/lib.sh
DUR=${1:-5}
REPS=${2:-3}
need_root
BUILDS=${ENFORCER_BIN:-target/release/enforcer}
ARGS=${ENFORCER_ARGS:---workers 1 --poll adaptive}
trap 'echo "bench/memaslap.sh: line $LINENO: \"$BASH_COMMAND\" failed (exit $?)" >&2' ERR

LAB_OWNER=$$ lab up >/dev/null
mkdir -p "$STATE/pol-any" bench/results
cp policies/endpoints.yaml bench/policies-anykey/*.yaml "$STATE/pol-any/"

# Voluntary context switches of all the process's threads (sleeps).
ctx() { cat /proc/"$1"/task/*/status 2>/dev/null | awk '/^voluntary_ctxt_switches/ {n += $2} END {print n + 0}'; }
# Time its threads spent runnable but waiting for a CPU (schedstat's second field), in ns.
rq_wait() { cat /proc/"$1"/task/*/schedstat 2>/dev/null | awk '{n += $2} END {printf "%d\n", n}'; }
# One memaslap load; prints "ops/s avg_us".
slap() {
  local out
  out=$(timeout $((DUR + 10)) ip netns exec "$P-awing" memcaslap -s 10.66.0.2:11211 -T 2 -c 16 \
    -t "${DUR}s" -S "${DUR}s" 2>&1 || true)
  python3 - "$out" <<'PY'
import re, sys
o = sys.argv[1]
tps = re.findall(r"TPS:\s*([\d.]+)", o)
# The last "Global" row is Total Statistics' (after Get's and Set's):
# Type Time Ops TPS Net Get_miss Min Max Avg ...
g = re.findall(r"^Global\s+(?:\S+\s+){7}(\S+)", o, re.M)
avg = g[-1] if g else "0"
print(tps[-1] if tps else "0", avg)
PY
}

# enf_launch, but a start that fails or hangs (other labs' XDP set-ups on
# a loaded machine have taken over 30 s) skips the load instead of ending the run.
launch() {
  ip netns exec "$P-enf" "$@" >"$STATE/enforcer.out" 2>&1 &
  MB_PID=$!
  for _ in $(seq 600); do
    grep -q '^ready ' "$STATE/enforcer.out" && return 0
    kill -0 "$MB_PID" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}

RES=bench/results/memaslap.txt
{
  echo "# bench/memaslap.sh $DUR $REPS, $(nproc) CPUs, $(uptime | sed 's/.*load/load/')"
  echo "# ENFORCER_ARGS=$ARGS"
  printf '%-4s %-40s %10s %8s %10s %10s %10s %10s\n' rep config ops/s avg_us cpu_us/op sleeps/op mach_us/op rqwait_us/op
} | tee "$RES"
for rep in $(seq "$REPS"); do
  bridge_up
  m0=$(machine_busy)
  read -r ops avg < <(slap)
  m1=$(machine_busy)
  mach=$(python3 -c "import sys; print(f'{($m1 - $m0) / $HZ * 1e6 / max(1, float($ops) * $DUR):.2f}')")
  printf '%-4s %-40s %10s %8s %10s %10s %10s %10s\n' "$rep" bridge "$ops" "$avg" - - "$mach" - | tee -a "$RES"
  bridge_down
  i=0
  for b in $BUILDS; do
    i=$((i + 1))
    env=()
    bin=$b
    if [[ $b == *=*:* ]]; then env=(env "${b%%:*}"); bin=${b#*:}; fi
    # shellcheck disable=SC2086
    if ! launch "${env[@]}" "$bin" --iface cli0 --peer srv0 --policy "$STATE/pol-any" $ARGS; then
      echo "bench/memaslap.sh: $b did not start in 60 s, skipped this round; its output:" >&2
      cat "$STATE/enforcer.out" >&2
      stop_mb
      continue
    fi
    sleep 0.5
    t0=$(cpu_ticks "$MB_PID")
    c0=$(ctx "$MB_PID")
    q0=$(rq_wait "$MB_PID")
    m0=$(machine_busy)
    if [ "${PERF:-0}" = 1 ] && [ "$rep" = 1 ]; then
      perf record -q -g -F 1999 -p "$MB_PID" -o "/tmp/sp-perf-$i.data" -- sleep "$DUR" >/dev/null 2>&1 &
      pp=$!
    fi
    read -r ops avg < <(slap)
    t1=$(cpu_ticks "$MB_PID")
    c1=$(ctx "$MB_PID")
    q1=$(rq_wait "$MB_PID")
    m1=$(machine_busy)
    if [ "${PERF:-0}" = 1 ] && [ "$rep" = 1 ]; then
      wait "$pp" || true
      perf report -i "/tmp/sp-perf-$i.data" --no-children --stdio -g none --sort symbol 2>/dev/null |
        grep -v '^#' | grep -v '^$' | head -60 >"bench/results/memaslap-perf-$i.txt" || true
    fi
    stop_mb
    python3 - "$rep" "$b" "$ops" "$avg" "$t0" "$t1" "$c0" "$c1" "$HZ" "$DUR" "$m0" "$m1" "$q0" "$q1" <<'PY' | tee -a "$RES"
import sys
rep, b, ops, avg, t0, t1, c0, c1, hz, dur, m0, m1, q0, q1 = sys.argv[1:]
n = float(ops) * float(dur)
cpu = (float(t1) - float(t0)) / float(hz) * 1e6 / n if n else 0
sl = (float(c1) - float(c0)) / n if n else 0
mach = (float(m1) - float(m0)) / float(hz) * 1e6 / n if n else 0
rq = (float(q1) - float(q0)) / 1e3 / n if n else 0
print(f"{rep:<4} {b[-40:]:<40} {ops:>10} {avg:>8} {cpu:>10.2f} {sl:>10.3f} {mach:>10.2f} {rq:>10.2f}")
PY
  done
done
echo "# end: $(uptime | sed 's/.*load/load/')" | tee -a "$RES"
