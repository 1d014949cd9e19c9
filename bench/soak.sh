#!/usr/bin/env bash
# Soak: a mixed load through the enforcer for SECONDS (default 600) while
# its RSS is sampled; prints the samples and the growth as JSON.
#
#   sudo bash bench/soak.sh [SECONDS]
#
# Load, all at once, from several lab hosts: HTTP allowed (a-wing, wrk) and
# denied (x-wing, PUT /v1/exhaust-port in a loop), memcached allowed
# (a-wing, loadgen) and denied (x-wing, gets of a-wing's key), pings, and
# short-lived connections from the outsider that the policy drops.
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${1:-600}
source scripts/lib/deps.sh
install_deps
cargo build --release -q --bin enforcer --example loadgen
BIN=target/release/enforcer
LOADGEN=target/release/examples/loadgen
P=soak$$
STATE=/run/enforcer-lab/$P
lab() { bash scripts/lab.sh -p "$P" -q 2 "$@"; }
nsx() { local h=$1; shift; ip netns exec "$P-$h" "$@"; }
ENF_PID=""
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -n "$ENF_PID" ] && kill "$ENF_PID" 2>/dev/null && wait "$ENF_PID" 2>/dev/null || true
  lab down >/dev/null 2>&1 || true
}
trap cleanup EXIT INT TERM
lab up >/dev/null
ip netns exec "$P-enf" "$BIN" --iface cli0 --peer srv0 --policy policies --poll adaptive \
  >"$STATE/enforcer.out" 2>&1 &
ENF_PID=$!
for _ in $(seq 100); do grep -q '^ready ' "$STATE/enforcer.out" && break; sleep 0.1; done
grep -q '^ready ' "$STATE/enforcer.out" || { cat "$STATE/enforcer.out" >&2; exit 1; }
printf 'set awing-coord 0 0 16\r\n4309.432,918.980\r\n' | nsx awing nc -N -w 3 10.66.0.2 11211 >/dev/null
rss() { awk '/^VmRSS/ {print $2}' "/proc/$ENF_PID/status"; }
END=$((SECONDS + DUR))
nsx awing wrk -t1 -c4 -d"${DUR}s" http://10.66.0.2/v1/ >"$STATE/wrk.out" 2>&1 & PIDS+=($!)
nsx awing "$LOADGEN" 10.66.0.2:11211 --conns 2 --depth 4 --seconds "$DUR" >"$STATE/loadgen.out" 2>&1 & PIDS+=($!)
nsx xwing bash -c "while [ \$SECONDS -lt $DUR ]; do curl -s -m 2 -o /dev/null -X PUT http://10.66.0.2/v1/exhaust-port; printf 'get awing-coord\r\n' | nc -N -w 1 10.66.0.2 11211 >/dev/null; done" & PIDS+=($!)
nsx tracker ping -q -i 0.2 -w "$DUR" 10.66.0.2 >/dev/null 2>&1 & PIDS+=($!)
nsx outsider bash -c "while [ \$SECONDS -lt $DUR ]; do curl -s -m 1 -o /dev/null http://10.66.0.2/v1/; done" & PIDS+=($!)
SAMPLES=()
SAMPLES+=("$(rss)")
while [ $SECONDS -lt $END ]; do sleep 30; SAMPLES+=("$(rss)"); done
sleep 2
kill -USR1 "$ENF_PID"; sleep 0.5
python3 - "${SAMPLES[@]}" <<'PY'
import json, sys
s = [int(x) for x in sys.argv[1:]]
print(json.dumps({"rss_kib_samples": s, "first_kib": s[0], "last_kib": s[-1],
                  "max_kib": max(s), "growth_after_first_minute_kib": s[-1] - s[min(2, len(s) - 1)]}))
PY
awk '/Requests\/sec/ {print "wrk req/s:", $2} /Non-2xx/ {print "wrk non-2xx:", $NF}' "$STATE/wrk.out"
cat "$STATE/loadgen.out"
tail -1 "$STATE/enforcer.out"
