#!/usr/bin/env bash
# Resource exhaustion in the lab: a SYN flood to an L7 port, slowloris-style
# slow senders (HTTP and memcached) and normal clients, through the inline
# enforcer; prints one JSON document with what the normal clients saw, the
# enforcer's RSS against its configured bounds, and its idle CPU as idle L7
# flows grow.
#
#   sudo bash bench/exhaust.sh
#
# Environment: EX_MAX_FLOWS (default 65536), EX_MAX_HELD (default 16384),
# EX_MAX_HELD_TOTAL (default 64 MiB),
# EX_SLOW (slow connections per protocol, default 200), EX_FLOOD (SYNs in
# the attack phase, default 100000), EX_RAMP (idle-flow counts to sample,
# default "1000 10000 50000"), ENFORCER_ARGS (more enforcer flags).
#
# Phases, in one lab (prefix "ex"), one enforcer (--workers 1):
#  1. idle L7 flows: established memcached connections from a-wing that
#     send nothing (held on the server side by four SO_REUSEPORT sinks in
#     memcached's place) ramp the flow table up; at each step the enforcer's CPU
#     is sampled over three quiet 4 s windows: the cost of its timers over
#     idle flows;
#  2. the idle connections close and their flows leave the table;
#  3. baseline: the normal clients alone (a-wing: HTTP GET /v1/ and memcached
#     get awing-coord, one connection per request);
#  4. attack: the SYN flood (5000 SYN/s; spoofed sources 10.66.0.100-199,
#     labelled spaceships by this run's extra Endpoints document, so each
#     SYN opens an L7 flow; nobody answers for them, so the flows stay
#     half-open), EX_SLOW slow HTTP connections
#     (each holding half the held-bytes limit of an undecided head, then one
#     more byte every 3 s) and EX_SLOW slow memcached ones from x-wing, and
#     the normal clients, at once; RSS sampled every second.
set -euo pipefail
cd "$(dirname "$0")/.."
MAX_FLOWS=${EX_MAX_FLOWS:-65536}
MAX_HELD=${EX_MAX_HELD:-16384}
MAX_HELD_TOTAL=${EX_MAX_HELD_TOTAL:-$((64 << 20))}
SLOW=${EX_SLOW:-200}
FLOOD=${EX_FLOOD:-100000}
RAMP=${EX_RAMP:-"1000 10000 50000"}
source scripts/lib/deps.sh
install_deps
cargo build --release -q --bin enforcer
BIN=target/release/enforcer

P=ex
STATE=/run/enforcer-lab/$P
lab() { bash scripts/lab.sh -p "$P" -q 1 "$@"; }
nsx() { local h=$1; shift; ip netns exec "$P-$h" "$@"; }
ENF_PID=""
PIDS=()
WORK=$(mktemp -d)
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  if [ -n "$ENF_PID" ]; then kill "$ENF_PID" 2>/dev/null && wait "$ENF_PID" 2>/dev/null || true; fi
  lab down >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT INT TERM
# A lab left by an earlier run that died: remove it first.
lab down >/dev/null 2>&1 || true
LAB_OWNER=$$ lab up >/dev/null

# The seed policies plus the flood's spoofed sources as spaceships.
cp policies/*.yaml "$WORK/"
cat >"$WORK/flood-endpoints.yaml" <<'YAML'
kind: Endpoints
endpoints:
- name: flood
  labels: {class: spaceship, org: alliance}
  addresses: ["10.66.0.100/30", "10.66.0.104/29", "10.66.0.112/28", "10.66.0.128/26", "10.66.0.192/29"]
YAML

# shellcheck disable=SC2086
ip netns exec "$P-enf" "$BIN" --iface cli0 --peer srv0 --policy "$WORK" --workers 1 --poll adaptive \
  --max-flows "$MAX_FLOWS" --max-held-bytes "$MAX_HELD" --max-held-total "$MAX_HELD_TOTAL" \
  ${ENFORCER_ARGS:-} \
  >"$STATE/enforcer.out" 2>&1 &
ENF_PID=$!
for _ in $(seq 100); do grep -q '^ready ' "$STATE/enforcer.out" && break; sleep 0.1; done
grep -q '^ready ' "$STATE/enforcer.out" || { cat "$STATE/enforcer.out" >&2; exit 1; }
EPID=$ENF_PID

printf 'set awing-coord 0 0 16\r\n4309.432,918.980\r\n' | nsx awing nc -N -w 3 10.66.0.2 11211 >/dev/null
alive() {
  kill -0 "$EPID" 2>/dev/null && return
  echo "exhaust: the enforcer is gone" >&2
  tail -20 "$STATE/enforcer.out" >&2
  exit 1
}
rss() { alive; awk '/^VmRSS/ {print $2}' "/proc/$EPID/status"; }
cpu() { alive; awk '{print $14+$15}' "/proc/$EPID/stat"; }
HZ=$(getconf CLK_TCK)
counters() { # the enforcer's counters (JSON) after SIGUSR1
  local n
  alive
  n=$(grep -c '^{' "$STATE/enforcer.out" || true)
  kill -USR1 "$EPID"
  for _ in $(seq 50); do
    [ "$(grep -c '^{' "$STATE/enforcer.out" || true)" -gt "$n" ] && break
    sleep 0.1
  done
  grep '^{' "$STATE/enforcer.out" | tail -1
}
flows() { counters | python3 -c 'import json,sys; print(json.load(sys.stdin)["counters"]["engine"]["flows_active"])'; }
clients() { # SECONDS: both normal clients at once, one JSON line each
  nsx awing python3 bench/exhaust.py http --seconds "$1" --max 20000 >"$WORK/http.json" &
  local h=$!
  nsx awing python3 bench/exhaust.py mc --seconds "$1" --max 20000 >"$WORK/mc.json"
  wait "$h"
  cat "$WORK/http.json" "$WORK/mc.json"
}
SRC_MAC=$(nsx outsider cat /sys/class/net/eth0/address)
DST_MAC=$(nsx server cat /sys/class/net/eth0/address)
flood() { # FIRST COUNT RATE SECONDS
  nsx outsider python3 bench/exhaust.py flood eth0 "$SRC_MAC" "$DST_MAC" \
    --first "$1" --count "$2" --rate "$3" --seconds "$4"
}

RSS0=$(rss)
echo "phase 1: idle L7 flows" >&2
IDLE_CPU=()
sample_idle() { # -> JSON {flows_active, cpu_pct: [3 windows of 4 s], rss_kib}
  local c0 c1 f r w pcts=()
  sleep 1
  for w in 1 2 3; do
    c0=$(cpu)
    sleep 4
    c1=$(cpu)
    pcts+=("$(python3 -c "print(round(($c1 - $c0) / $HZ / 4 * 100, 1))")")
  done
  f=$(flows)
  r=$(rss)
  printf '{"flows_active": %s, "cpu_pct": [%s], "rss_kib": %s}' "$f" "$(IFS=,; echo "${pcts[*]}")" "$r"
}
S=$(sample_idle)
IDLE_CPU+=("$S")
# Idle connections from a-wing to :11211, established and silent. A process
# may open 20 000 files here, so memcached steps aside for four sinks that
# share the port, and the client side is split over processes too.
stop_memcached() {
  local pid
  for pid in $(ip netns pids "$P-server"); do
    if [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = memcached ]; then kill "$pid"; fi
  done
  sleep 0.5
}
stop_memcached
rm -f "$WORK/stop"
SINKS=()
for _ in 1 2 3 4; do
  nsx server python3 bench/exhaust.py sink --seconds 300 --stop "$WORK/stop" >/dev/null & SINKS+=($!)
  PIDS+=($!)
done
sleep 1
nsx awing sysctl -qw net.ipv4.ip_local_port_range="1024 65000"
DONE=0
HOLDS=()
K=0
for n in $RAMP; do
  left=$((n - DONE))
  READY=()
  while [ "$left" -gt 0 ]; do
    c=$((left > 15000 ? 15000 : left))
    K=$((K + 1))
    nsx awing python3 bench/exhaust.py hold --count "$c" --seconds 300 --ready "$WORK/ready-$K" \
      --stop "$WORK/stop" >"$WORK/hold-$K.json" & HOLDS+=($!)
    PIDS+=($!)
    READY+=("$WORK/ready-$K")
    left=$((left - c))
  done
  for r in "${READY[@]}"; do
    for _ in $(seq 240); do [ -s "$r" ] && break; sleep 0.5; done
    [ -s "$r" ] || { echo "exhaust: idle connections did not come up" >&2; exit 1; }
  done
  DONE=$n
  S=$(sample_idle)
  IDLE_CPU+=("$S")
done
touch "$WORK/stop"
for p in "${HOLDS[@]}" "${SINKS[@]}"; do wait "$p" 2>/dev/null || true; done
nsx server memcached -u nobody -p 11211 -U 0 -l 0.0.0.0,:: -d
for _ in $(seq 50); do nsx server ss -ltn | grep -q ':11211 ' && break; sleep 0.1; done
printf 'set awing-coord 0 0 16\r\n4309.432,918.980\r\n' | nsx awing nc -N -w 3 10.66.0.2 11211 >/dev/null

echo "phase 2: waiting for the idle flows to close" >&2
for _ in $(seq 60); do
  sleep 2
  F=$(flows)
  [ "$F" -lt 100 ] && break
done
AFTER_EXPIRY=$(flows)

echo "phase 3: baseline clients" >&2
BASE=$(clients 10)

echo "phase 4: SYN flood + slow senders + normal clients" >&2
RSS_SAMPLES=()
FLOW_SAMPLES=()
nsx xwing python3 bench/exhaust.py slow --http "$SLOW" --memcache "$SLOW" --interval 3 --seconds 40 \
  --burst $((MAX_HELD / 2)) \
  >"$WORK/slow.json" & PIDS+=($!)
sleep 5
flood 200000 "$FLOOD" 5000 40 >"$WORK/flood.json" & PIDS+=($!)
sleep 1
clients 25 >"$WORK/attack-clients.json" & CL=$!
PIDS+=($CL)
while kill -0 "$CL" 2>/dev/null; do
  R=$(rss)
  F=$(flows)
  RSS_SAMPLES+=("$R")
  FLOW_SAMPLES+=("$F")
  sleep 1
done
ATTACK=$(cat "$WORK/attack-clients.json")
ATTACK_COUNTERS=$(counters)
for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
PIDS=()

python3 - "$MAX_FLOWS" "$MAX_HELD" "$MAX_HELD_TOTAL" "$RSS0" "$AFTER_EXPIRY" "$BASE" "$ATTACK" "$(cat "$WORK/slow.json")" \
  "$(cat "$WORK/flood.json")" "$ATTACK_COUNTERS" "$(IFS=,; echo "${IDLE_CPU[*]}")" \
  "$(IFS=,; echo "${FLOW_SAMPLES[*]}")" "${RSS_SAMPLES[@]}" <<'PY'
import json, sys
a = sys.argv[1:]
max_flows, max_held, held_total = int(a[0]), int(a[1]), int(a[2])
a = a[1:]
rss0, after_expiry = int(a[2]), int(a[3])
lines = lambda s: [json.loads(l) for l in s.splitlines() if l.strip()]
base, attack = lines(a[4]), lines(a[5])
slow, flood = json.loads(a[6]), json.loads(a[7])
dp = json.loads(a[8])["counters"]["dataplane"]
counters = json.loads(a[8])["counters"]["engine"]
idle = json.loads("[" + a[9] + "]")
flows = json.loads("[" + a[10] + "]")
rss = [int(x) for x in a[11:]]
# What the configuration lets the enforcer hold on top of the memory it
# started with: each flow's fixed state (about 1.2 KiB, docs/security.md;
# 2 KiB allowed) and the held bytes, capped per flow and in total.
bound_kib = rss0 + max_flows * 2 + min(held_total, max_flows * 2 * max_held) // 1024
keep = ("flows_active", "flows_created", "flows_expired", "flows_evicted", "flows_untracked",
        "l7_requests_allowed", "l7_requests_denied", "l7_held_bytes")
print(json.dumps({
    "config": {"max_flows": max_flows, "max_held_bytes": max_held, "max_held_total": held_total},
    "baseline_clients": base,
    "attack_clients": attack,
    "slow_senders": slow,
    "syn_flood": flood,
    "rss_kib": {"start": rss0, "attack_max": max(rss) if rss else None,
                "attack_samples": rss, "bound_kib": bound_kib},
    "attack_flows_samples": flows,
    "idle_flows_cpu": idle,
    "flows_after_expiry_wait": after_expiry,
    "counters_after_attack": {k: counters.get(k) for k in keep},
    "drops_after_attack": counters.get("drops"),
    # Frames lost before the engine saw them (a worker that falls behind).
    "dataplane_after_attack": {k: dp.get(k) for k in
                               ("rx_frames", "xdp_rx_ring_full", "xdp_rx_dropped", "tx_ring_full")},
    "loadavg_at_end": open("/proc/loadavg").read().split()[:3],
}, indent=1))
PY
