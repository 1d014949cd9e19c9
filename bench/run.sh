#!/usr/bin/env bash
# Lab benchmark: the same loads through a kernel bridge, the project's bare
# AF_XDP forwarder (no policy), the enforcer (L3/L4 and L7 rules) and HAProxy
# (HTTP, ACLs equal to the Star Wars rules), in one run on one machine, so
# that every figure is a ratio against a baseline measured minutes apart.
#
#   sudo bash bench/run.sh [--quick] [--workers "1 2"] [--poll "adaptive busy"] [--out DIR] [SECONDS]
#   sudo bash bench/run.sh --smoke DIR
#
# SECONDS per load (default 10; --quick: 2, fewer loss-curve points).
# --smoke: every configuration and load for 1 s, small transfers, results
# into DIR instead of bench/results; checks that the runner works (CI),
# measures nothing. --out DIR: results there instead of bench/results.
# Loads, each through every middlebox it applies to:
#   udp64   64-byte UDP frames from bench/pktgen.rs (AF_XDP TX on a-wing,
#           AF_XDP sink on the server), 1 and 1000 flows at full speed, and a
#           loss curve (offered rate against delivered);
#   iperf3  TCP, 1 and 4 streams; bulk: 256 MiB (64 MiB quick) through nc,
#           sha256 at both ends;
#   http    wrk -t2 -c32 → nginx (GET /v1/, allowed by the Star Wars rules):
#           req/s, p50/p99/p99.9;
#   memcached  bench/loadgen.rs (get awing-coord, the seed policy) and
#           memaslap (random keys: bench/policies-anykey/).
# CPU of the middlebox: utime+stime of its process from /proc (the kernel
# bridge has none: it runs in softirqs) and of the whole machine (/proc/stat).
# Writes bench/results/results.jsonl, results.md (the table) and *.png.
# PROFILE=1: also profile the whole machine during each load (perf record -a
# -g at 999 Hz; the recordings stay in OUT/perf) and write profile.md /
# profile.jsonl (bench/profile.py): CPU per operation by process and, for
# the middlebox, by call chain. The
# profiler costs some CPU: read that run's rates as a profiled run's.
set -Eeuo pipefail
cd "$(dirname "$0")/.."
P=${BENCH_PREFIX:-bench}$$ # BENCH_PREFIX keeps concurrent labs apart
Q=1 # the lab's queues: the most workers asked for (below)
source bench/lib.sh
DUR=10
QUICK=0
SMOKE=0
OUT=bench/results
WORKERS="1 2"
POLLS="adaptive busy"
while [ $# -gt 0 ]; do
  case $1 in
    --quick) QUICK=1; DUR=2 ;;
    --smoke) QUICK=1; SMOKE=1; DUR=1; OUT=$2; shift ;;
    --workers) WORKERS=$2; shift ;;
    --poll) POLLS=$2; shift ;;
    --out) OUT=$2; shift ;;
    [0-9]*) DUR=$1 ;;
    *) usage 2 21 ;;
  esac
  shift
done
need_root
source scripts/lib/deps.sh
install_bench_deps
# ENFORCER_BIN, PKTGEN_BIN, LOADGEN_BIN: builds to use instead of this
# tree's release build (the smoke test passes its own).
if [ -z "${ENFORCER_BIN:-}" ] || [ -z "${PKTGEN_BIN:-}" ] || [ -z "${LOADGEN_BIN:-}" ]; then
  cargo build --release -q --bin enforcer --bin enforcer-pktgen --example loadgen
fi
BIN=${ENFORCER_BIN:-target/release/enforcer}
PKTGEN=${PKTGEN_BIN:-target/release/enforcer-pktgen}
LOADGEN=${LOADGEN_BIN:-target/release/examples/loadgen}
for w in $WORKERS; do if ((w > Q)); then Q=$w; fi; done
MAXW=$Q
if [ $SMOKE = 1 ]; then
  RATES="100000 200000"
  BULK_MB=4
elif [ $QUICK = 1 ]; then
  RATES="100000 200000 400000"
  BULK_MB=64
else
  RATES="50000 100000 200000 300000 400000 600000"
  BULK_MB=256
fi
mkdir -p "$OUT"
RES=$OUT/results.jsonl
: >"$RES"
[ "${PROFILE:-0}" = 1 ] && rm -rf "$OUT/perf"
# Under set -e a failing command ends the run; name it rather than exit silently.
trap 'echo "bench/run.sh: line $LINENO: \"$BASH_COMMAND\" failed (exit $?)" >&2' ERR

LAB_OWNER=$$ lab up >/dev/null
start_nginx
nsx server iperf3 -s -D -p 5201 --pidfile "$STATE/iperf3.pid" >/dev/null
head -c "${BULK_MB}M" /dev/urandom >"$STATE/bulk"
BULK_SHA=$(sha256sum <"$STATE/bulk" | cut -d' ' -f1)
SERVER_MAC=$(nsx server cat /sys/class/net/eth0/address)

# Policies: the seed policies plus L4 rules for the generator and iperf3;
# for memaslap a-wing may use any key.
mkdir -p "$STATE/pol-l7" "$STATE/pol-any"
cp policies/*.yaml bench/policies/*.yaml "$STATE/pol-l7/"
cp policies/endpoints.yaml bench/policies-anykey/*.yaml "$STATE/pol-any/"

mb_ticks() { [ -n "$MB_PID" ] && cpu_ticks "$MB_PID" || echo 0; }
PROF_N=0 PROF_PID="" PROF_F=""
prof_start() {
  [ "${PROFILE:-0}" = 1 ] || return 0
  PROF_N=$((PROF_N + 1))
  PROF_F=$(printf 'prof-%03d.data' "$PROF_N")
  mkdir -p "$OUT/perf"
  perf record -a -g -F 999 -o "$OUT/perf/$PROF_F" >/dev/null 2>&1 &
  PROF_PID=$!
  sleep 0.3 # perf is recording before the load starts
}
prof_stop() {
  [ -n "$PROF_PID" ] || return 0
  kill -INT "$PROF_PID" 2>/dev/null || true
  wait "$PROF_PID" 2>/dev/null || true
  PROF_PID=""
}
# A run that fails mid-load leaves no recording profiler behind.
bench_cleanup_extra() { prof_stop; }
# mark · the load · stop · rec CFG TEST JSON: one result line, with the CPU
# used between mark and stop (stop is implied when not called).
mark() { prof_start; T_MB=$(mb_ticks); T_M=$(machine_busy); T_S=$(date +%s.%N); E_MB=""; }
stop() { E_MB=$(mb_ticks); E_M=$(machine_busy); E_S=$(date +%s.%N); prof_stop; }
rec() {
  local cfg=$1 test=$2 extra=$3
  [ -n "$E_MB" ] || stop
  if [ -n "$PROF_F" ]; then
    extra=$(python3 -c 'import json,sys; d=json.loads(sys.argv[1]); d["prof"]=sys.argv[2]; print(json.dumps(d))' "$extra" "$PROF_F")
    PROF_F=""
  fi
  python3 - "$cfg" "$test" "$extra" "$T_MB" "$E_MB" "$T_M" "$E_M" "$T_S" "$E_S" "$HZ" "${MB_PID:+1}" >>"$RES" <<'PY'
import json, sys
cfg, test, extra, mb0, mb1, m0, m1, s0, s1, hz, has_mb = sys.argv[1:]
hz = float(hz)
r = {"cfg": cfg, "test": test}
r.update(json.loads(extra))
r["wall_s"] = round(float(s1) - float(s0), 3)
r["mbox_cpu_s"] = round((float(mb1) - float(mb0)) / hz, 3) if has_mb else None
r["machine_cpu_s"] = round((float(m1) - float(m0)) / hz, 3)
print(json.dumps(r))
PY
}

udp64() { # CFG FLOWS RATE(0 = full speed)
  local cfg=$1 flows=$2 rate=$3 send
  ip netns exec "$P-server" "$PKTGEN" sink --iface eth0 --queues "$MAXW" --seconds "$((DUR + 3))" >"$STATE/sink.json" 2>/dev/null &
  local sp=$!
  sleep 0.5
  mark
  send=$(nsx awing "$PKTGEN" send --iface eth0 --dst-mac "$SERVER_MAC" --src 10.66.0.11 --dst 10.66.0.2 \
    --dport 9 --size 64 --flows "$flows" --rate "$rate" --seconds "$DUR")
  stop
  sleep 0.2 # frames still in rings reach the sink
  kill -INT "$sp" 2>/dev/null || true
  wait "$sp" || true
  rec "$cfg" udp64 "{\"flows\":$flows,\"rate\":$rate,\"send\":$send,\"sink\":$(cat "$STATE/sink.json" || echo null)}"
}
iperf() { # CFG STREAMS
  local out
  mark
  out=$(nsx awing iperf3 -c 10.66.0.2 -p 5201 -P "$2" -t "$DUR" -J 2>/dev/null |
    python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["end"]["sum_received"]["bits_per_second"])' 2>/dev/null || echo 0)
  rec "$1" "iperf3_p$2" "{\"bps\":$out}"
}
bulk() { # CFG: byte-exact transfer, sha256 at both ends
  local got
  nsx server sh -c "nc -l -p 9 </dev/null | sha256sum | cut -d' ' -f1 >'$STATE/bulk.sha'" &
  local sp=$!
  sleep 0.3
  mark
  nsx awing nc -N -w 10 10.66.0.2 9 <"$STATE/bulk" || true
  wait "$sp" || true
  got=$(cat "$STATE/bulk.sha" 2>/dev/null || echo none)
  rec "$1" bulk "{\"bytes\":$((BULK_MB * 1048576)),\"sha_match\":$([ "$got" = "$BULK_SHA" ] && echo true || echo false)}"
}
http() { # CFG URL
  local out
  mark
  out=$(nsx awing wrk -t2 -c32 -d"${DUR}s" -s bench/wrk-latency.lua "$2" 2>&1 || true)
  rec "$1" http "$(python3 -c '
import json, re, sys
o = sys.argv[1]
m = re.search(r"Requests/sec:\s+([\d.]+)", o)
pct = dict(re.findall(r"^pct ([\d.]+) (\d+)$", o, re.M))
err = sum(int(x) for x in re.findall(r"(?:connect|read|write|timeout) (\d+)", o))
err += sum(int(x) for x in re.findall(r"Non-2xx or 3xx responses: (\d+)", o))
print(json.dumps({"rps": float(m.group(1)) if m else 0.0, "p50_us": int(pct.get("50", 0)),
                  "p99_us": int(pct.get("99", 0)), "p999_us": int(pct.get("99.9", 0)), "errors": err}))' "$out")"
}
mc_loadgen() { # CFG
  local out
  mark
  out=$(nsx awing "$LOADGEN" 10.66.0.2:11211 --conns 4 --depth 8 --seconds "$DUR" 2>/dev/null || echo '{"ops_per_s":0,"errors":-1}')
  rec "$1" mc_loadgen "$(python3 -c 'import json,sys; d=json.loads(sys.argv[1]); print(json.dumps({"ops":d["ops_per_s"],"errors":d["errors"]}))' "$out")"
}
mc_memaslap() { # CFG
  local out ops
  mark
  out=$(timeout $((DUR + 10)) ip netns exec "$P-awing" memcaslap -s 10.66.0.2:11211 -T 2 -c 16 -t "${DUR}s" 2>&1 || true)
  ops=$(awk '/^Run time/ {for (i=1;i<=NF;i++) if ($i=="TPS:") print $(i+1)}' <<<"$out" | tail -1)
  rec "$1" mc_memaslap "{\"ops\":${ops:-0}}"
}

enf_start() { # POLICY_DIR|pass WORKERS POLL
  local env=()
  [ "$1" = pass ] && env=(env ENFORCER_PASSTHROUGH=1)
  local pol=$1
  [ "$pol" = pass ] && pol=$STATE/pol-l7
  # shellcheck disable=SC2086
  enf_launch enf "${env[@]}" "$BIN" --iface cli0 --peer srv0 --policy "$pol" \
    --workers "$2" --poll "$3" ${ENFORCER_ARGS:-}
  sleep 0.5
}
enf_stop() { # CFG: the counters line joins the results
  local c rc=0
  kill -INT "$MB_PID" 2>/dev/null || echo "bench/run.sh: $1: the enforcer had already exited" >&2
  wait "$MB_PID" || rc=$?
  MB_PID=""
  # A run without its counters line is a dead or hung enforcer: say so and
  # show its last words, instead of ending the whole run without a message.
  c=$(enf_counters)
  if [ -n "$c" ]; then
    echo "{\"cfg\":\"$1\",\"test\":\"counters\",\"counters\":$c}" >>"$RES"
  else
    echo "bench/run.sh: $1: no counters from the enforcer (exit status $rc); its last output:" >&2
    tail -n 20 "$STATE/enforcer.out" >&2
  fi
}
udp_set() { # CFG [curve]
  udp64 "$1" 1 0
  udp64 "$1" 1000 0
  if [ "${2:-}" = curve ]; then
    for r in $RATES; do udp64 "$1" 1 "$r"; done
  fi
}

echo "bench: $(nproc) CPUs, $(uptime | sed 's/.*load/load/'), ${DUR}s per load" >&2
echo "{\"test\":\"machine\",\"cpus\":$(nproc),\"kernel\":\"$(uname -r)\",\"loadavg_start\":\"$(cut -d' ' -f1-3 /proc/loadavg)\",\"seconds\":$DUR,\"quick\":$QUICK,\"smoke\":$SMOKE}" >>"$RES"

echo "(a) kernel bridge" >&2
bridge_up
seed_awing_key
udp_set bridge curve
iperf bridge 1
iperf bridge 4
bulk bridge
http bridge http://10.66.0.2/v1/
mc_loadgen bridge
mc_memaslap bridge

echo "(e) HAProxy on the bridge, Star Wars ACLs" >&2
nsx enf ip addr add 10.66.0.3/24 dev br0
cat >"$STATE/haproxy.cfg" <<HAP
global
  maxconn 4096
  nbthread 1
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
frontend deathstar
  bind 10.66.0.3:80
  # The Star Wars rules: spaceships (a-wing, x-wing) may GET /v1/, POST
  # /v1/request-landing, PUT /v1/exhaust-port with X-Has-Force: true.
  acl spaceship src 10.66.0.11 10.66.0.12
  acl get_v1 method GET
  acl get_v1_path path_reg ^/v1/.*
  acl landing method POST
  acl landing_path path_reg ^/v1/request-landing\$
  acl exhaust method PUT
  acl exhaust_path path_reg ^/v1/exhaust-port\$
  acl force req.hdr(X-Has-Force) -m str true
  http-request allow if spaceship get_v1 get_v1_path
  http-request allow if spaceship landing landing_path
  http-request allow if spaceship exhaust exhaust_path force
  http-request deny deny_status 403
  default_backend server
backend server
  http-reuse always
  server s1 10.66.0.2:80
HAP
ip netns exec "$P-enf" haproxy -f "$STATE/haproxy.cfg" -db >"$STATE/haproxy.out" 2>&1 &
MB_PID=$!
sleep 1
http haproxy http://10.66.0.3/v1/
kill "$MB_PID"; wait "$MB_PID" 2>/dev/null || true
MB_PID=""
nsx enf ip addr del 10.66.0.3/24 dev br0
bridge_down

first=1
for w in $WORKERS; do
  for poll in $POLLS; do
    tag="w$w-$poll"
    echo "(b) bare AF_XDP forwarder (pass-through), $tag" >&2
    enf_start pass "$w" "$poll"
    udp_set "forwarder-$tag" $([ $first = 1 ] || [ $QUICK = 0 ] && echo curve)
    [ $first = 1 ] && { iperf "forwarder-$tag" 1; iperf "forwarder-$tag" 4; }
    http "forwarder-$tag" http://10.66.0.2/v1/
    enf_stop "forwarder-$tag"

    echo "(c, d) enforcer, L3/L4 and L7 rules, $tag" >&2
    enf_start "$STATE/pol-l7" "$w" "$poll"
    udp_set "enforcer-$tag" $([ $first = 1 ] || [ $QUICK = 0 ] && echo curve)
    if [ $first = 1 ] || [ $QUICK = 0 ]; then
      iperf "enforcer-$tag" 1
      iperf "enforcer-$tag" 4
      bulk "enforcer-$tag"
    fi
    http "enforcer-$tag" http://10.66.0.2/v1/
    mc_loadgen "enforcer-$tag"
    enf_stop "enforcer-$tag"

    if [ $first = 1 ] || [ $QUICK = 0 ]; then
      echo "(d) enforcer, any-key memcached rules (memaslap), $tag" >&2
      enf_start "$STATE/pol-any" "$w" "$poll"
      mc_memaslap "enforcer-$tag"
      enf_stop "enforcer-anykey-$tag"
    fi
    first=0
  done
done
echo "{\"test\":\"machine_end\",\"loadavg_end\":\"$(cut -d' ' -f1-3 /proc/loadavg)\"}" >>"$RES"

python3 bench/report.py "$RES" "$OUT"
if [ "${PROFILE:-0}" = 1 ]; then
  python3 bench/profile.py "$RES" "$OUT/perf" "$OUT"
  echo "bench: wrote $OUT/profile.md" >&2
fi
echo "bench: wrote $OUT/results.md and $OUT/*.png" >&2
