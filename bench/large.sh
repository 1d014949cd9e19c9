#!/usr/bin/env bash
# Large transfers through the kernel bridge and through the enforcer (L7
# rules on both ports, default settings), in one run, interleaved round by
# round (in an order that rotates) so that the machine's noise falls on all alike:
#
#   sudo [REPS=5] [CFGS="enforcer forwarder base"] [BASE_BIN=PATH] [BASE_ARGS=".."] [ENF_ARGS=".."] bash bench/large.sh [ROUNDS] [--args "ENFORCER ARGS"]
#
# Per round and middlebox, REPS times each: memcached (`-I 16m`) set and get of an 8 MB and
# a 1 MB value (pymemcache, byte-exact check), curl GET of an 8 MB file and
# POST of an 8 MB body to nginx. Prints per load the median seconds of
# each middlebox and enforcer/bridge as a rate ratio (bridge time /
# enforcer time: 1.0 = as fast as the bridge), the same for the best
# sample of each, and the enforcer's drop counters. CFGS adds the bare AF_XDP forwarder (`forwarder`, the
# dataplane with no engine: ENFORCER_PASSTHROUGH=1) as a third column;
# `base` is the enforcer binary BASE_BIN (another commit's build, e.g.
# `git worktree add /tmp/old OLD && cargo build --release
# --manifest-path /tmp/old/Cargo.toml`; default: this build) with the same
# arguments plus BASE_ARGS: before and after, or two settings, in one run
# (ENF_ARGS: arguments for this build only, e.g. "--kernel-path off";
# BASE_ENV: environment for `base` only, e.g. "ENFORCER_INLINE_IDLE=...").
# Also the middlebox process's CPU per round (less noisy than wall time on
# a shared machine: what the engine costs beyond the bare dataplane).
# LAB_THREADED_ENDS=1: the lab's far ends run NAPI in threads (scripts/lab.sh;
# docs/dataplane.md, "Lab shapes"), bridge and enforcer alike.
# PERF=1 profiles each enforcer build per round (top symbols: bench/results/large-perf-CFG-N.txt;
# the profiler slows it: no figures from such a run). Writes bench/results/large.jsonl.
set -euo pipefail
cd "$(dirname "$0")/.."
P=${BENCH_PREFIX:-cp}$$ # BENCH_PREFIX keeps concurrent labs apart
Q=1
source bench/lib.sh
ROUNDS=5
REPS=${REPS:-5}
CFGS=${CFGS:-enforcer}
ARGS=""
while [ $# -gt 0 ]; do
  case $1 in
    --args) ARGS=$2; shift ;;
    [0-9]*) ROUNDS=$1 ;;
    *) usage 2 15 ;;
  esac
  shift
done
need_root
cargo build --release -q --bin enforcer
BIN=target/release/enforcer
BASE_BIN=${BASE_BIN:-$BIN}
[ -x "$BASE_BIN" ] || { echo "$0: BASE_BIN=$BASE_BIN is not an executable" >&2; exit 2; }
OUT=bench/results
mkdir -p "$OUT"
RES=$OUT/large.jsonl
: >"$RES"

LAB_OWNER=$$ lab up >/dev/null
# memcached with a 16 MB item limit and nginx, in place of the lab's.
free_port 11211
nsx server memcached -u nobody -p 11211 -U 0 -l 0.0.0.0 -I 16m -m 512 -d
wait_listening 11211
head -c 8388608 /dev/urandom >"$STATE/big.bin"
head -c 8388608 /dev/urandom >"$STATE/up.bin"
start_nginx files
mkdir -p "$STATE/pol"
cp policies/endpoints.yaml tests/fixtures/compat.yaml "$STATE/pol/"
WANT_SHA=$(sha256sum <"$STATE/big.bin" | cut -d' ' -f1)

cat >"$STATE/mc.py" <<'PY'
import json, os, sys, time
from pymemcache.client.base import Client
reps = int(sys.argv[1])
c = Client(("10.66.0.2", 11211), connect_timeout=5, timeout=60)
for size in [8_000_000] * reps + [1_000_000] * reps:
    v = os.urandom(size)
    t0 = time.time(); ok = c.set("big", v, noreply=False); t1 = time.time()
    g = c.get("big"); t2 = time.time()
    print(json.dumps({"load": "mc_set_%dMB" % (size // 1_000_000), "s": t1 - t0, "ok": bool(ok)}))
    print(json.dumps({"load": "mc_get_%dMB" % (size // 1_000_000), "s": t2 - t1, "ok": g == v}))
PY

loads() { # CFG ROUND
  local cfg=$1 round=$2 line
  nsx awing python3 "$STATE/mc.py" "$REPS" | while read -r line; do
    echo "{\"cfg\":\"$cfg\",\"round\":$round,${line#\{}" >>"$RES"
  done
  local k
  for k in $(seq "$REPS"); do
    line=$(nsx awing sh -c "curl -s -m 60 -o '$STATE/got.bin' -w '%{time_total}' http://10.66.0.2/big.bin")
    local ok=false
    [ "$(sha256sum <"$STATE/got.bin" | cut -d' ' -f1)" = "$WANT_SHA" ] && ok=true
    echo "{\"cfg\":\"$cfg\",\"round\":$round,\"load\":\"http_get_8MB\",\"s\":$line,\"ok\":$ok}" >>"$RES"
    line=$(nsx awing sh -c "curl -s -m 60 -o /dev/null -w '%{time_total} %{http_code}' --data-binary @'$STATE/up.bin' http://10.66.0.2/upload")
    echo "{\"cfg\":\"$cfg\",\"round\":$round,\"load\":\"http_post_8MB\",\"s\":${line% *},\"ok\":$([ "${line#* }" = 200 ] && echo true || echo false)}" >>"$RES"
  done
}

# The order rotates from round to round: whichever build came first after
# the bridge had the worse 8 MB set (in four runs of a fixed order; one
# build at 0.41 of the bridge first, 0.97 second), and a fixed order put
# that on one column.
# shellcheck disable=SC2206
ORDER=(bridge $CFGS)
for round in $(seq 1 "$ROUNDS"); do
  for k in $(seq 0 $((${#ORDER[@]} - 1))); do
    cfg=${ORDER[$(((k + round - 1) % ${#ORDER[@]}))]}
    echo "round $round/$ROUNDS: $cfg" >&2
    if [ "$cfg" = bridge ]; then
      bridge_up
      loads bridge "$round"
      bridge_down
      continue
    fi
    env=()
    bin=$BIN
    args=$ARGS
    case $cfg in
      enforcer) args="$ARGS ${ENF_ARGS:-}" ;;
      forwarder) env=(env ENFORCER_PASSTHROUGH=1) ;;
      # shellcheck disable=SC2206
      base) bin=$BASE_BIN args="$ARGS ${BASE_ARGS:-}" env=(env ${BASE_ENV:-}) ;;
      *) echo "$0: unknown CFGS entry $cfg (enforcer, forwarder, base)" >&2; exit 2 ;;
    esac
    # shellcheck disable=SC2086
    enf_launch enf "${env[@]}" "$bin" --iface cli0 --peer srv0 --policy "$STATE/pol" $args
    sleep 0.5
    t0=$(cpu_ticks "$MB_PID")
    perf_pid=""
    if [ -n "${PERF:-}" ] && [ "$cfg" != forwarder ]; then
      perf record -q -F 2000 -g -p "$MB_PID" -o "$STATE/perf-$round.data" 2>/dev/null &
      perf_pid=$!
      sleep 0.5
    fi
    loads "$cfg" "$round"
    if [ -n "$perf_pid" ]; then
      kill -INT "$perf_pid"
      wait "$perf_pid" || true
      perf report -i "$STATE/perf-$round.data" --no-children --stdio --sort dso,symbol 2>/dev/null |
        grep -E '^ +[0-9]' | head -40 >"$OUT/large-perf-$cfg-$round.txt" || true
    fi
    t1=$(cpu_ticks "$MB_PID")
    echo "{\"cfg\":\"$cfg\",\"round\":$round,\"load\":\"cpu\",\"cpu_s\":$(((t1 - t0) * 1000 / HZ))e-3}" >>"$RES"
    kill -INT "$MB_PID"
    wait "$MB_PID" || true
    MB_PID=""
    c=$(enf_counters)
    [ -n "$c" ] && echo "{\"cfg\":\"$cfg\",\"round\":$round,\"load\":\"counters\",\"counters\":$c}" >>"$RES"
  done
done

python3 - "$RES" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
loads = []
for r in rows:
    if r["load"] not in ("counters", "cpu") and r["load"] not in loads:
        loads.append(r["load"])
bad = [r for r in rows if r.get("ok") is False]
cfgs = []
for r in rows:
    if r["cfg"] not in cfgs:
        cfgs.append(r["cfg"])
print("%-14s" % "load" + "".join("%12s" % (c + " s") for c in cfgs) + "".join("%10s" % (c[:4] + "/br") for c in cfgs[1:]))
for load in loads:
    med = {}
    for cfg in cfgs:
        v = [r["s"] for r in rows if r["cfg"] == cfg and r["load"] == load]
        med[cfg] = statistics.median(v) if v else float("nan")
    print("%-14s" % load + "".join("%12.4f" % med[c] for c in cfgs)
          + "".join("%10.2f" % (med[cfgs[0]] / med[c]) for c in cfgs[1:]))
# The least disturbed sample of each: what the path can do when the
# machine's other load leaves it alone.
print("\nbest of %d samples" % len([r for r in rows if r["cfg"] == cfgs[0] and r["load"] == loads[0]]))
for load in loads:
    best = {c: min(r["s"] for r in rows if r["cfg"] == c and r["load"] == load) for c in cfgs}
    print("%-14s" % load + "".join("%12.4f" % best[c] for c in cfgs)
          + "".join("%10.2f" % (best[cfgs[0]] / best[c]) for c in cfgs[1:]))
for cfg in cfgs[1:]:
    v = [r["cpu_s"] for r in rows if r["cfg"] == cfg and r["load"] == "cpu"]
    if v:
        print("%s: median CPU seconds (utime+stime) per round of loads: %.3f" % (cfg, statistics.median(v)))
for r in rows:
    if r["load"] == "counters":
        e = r["counters"]["counters"]["engine"] if "counters" in r["counters"] else r["counters"]
        print("%s round %d drops: %s" % (r["cfg"], r["round"], json.dumps(e.get("drops", e))))
print("not byte-exact / failed:", len(bad))
PY
