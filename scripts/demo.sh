#!/usr/bin/env bash
# The two seed scenarios, live: Cilium's memcached guide and the 2017 Star
# Wars demo, replayed through the enforcer in a veth lab with the policies in
# policies/. Prints each command and what it answers, as the seed documents do.
#
# Usage: scripts/demo.sh [starwars-2017] [--host-mode] [--debug]   (as root)
#   starwars-2017: the 2017 Star Wars demo exactly as typed (IPv6, the demo's
#                JSON files through `enforcer policy import`), every output
#                checked; exits 1 on the first difference from the transcript
#   --host-mode: the server protects itself (`enforcer --iface eth0` on the
#                server, no wire in between) instead of an inline enforcer
#   --debug:     skip the release build
#   ENFORCER_BIN=PATH: use this binary, build nothing (the tests do)
set -euo pipefail
cd "$(dirname "$0")/.."

PROFILE=release
HOST_MODE=0
SCENARIO=seeds
for a in "$@"; do
  case $a in
    --debug) PROFILE=debug ;;
    --host-mode) HOST_MODE=1 ;;
    starwars-2017) SCENARIO=starwars-2017 ;;
    *) sed -n '2,13p' "$0" >&2; exit 2 ;;
  esac
done
if [ -n "${ENFORCER_BIN:-}" ]; then
  BIN=$(realpath "$ENFORCER_BIN")
else
  source scripts/lib/deps.sh
  install_deps
  if [ "$PROFILE" = release ]; then cargo build --release -q; else cargo build -q; fi
  BIN=$(realpath "${CARGO_TARGET_DIR:-target}/$PROFILE/enforcer")
fi

export LAB_PREFIX="demo$$"
STATE="/run/enforcer-lab/$LAB_PREFIX"
LAB="scripts/lab.sh"
source scripts/lib/starwars-2017.sh
cleanup() {
  [ -n "${EPID:-}" ] && kill -TERM "$EPID" 2>/dev/null && wait "$EPID" 2>/dev/null || true
  sw2017_cleanup
  bash "$LAB" down
}
trap cleanup EXIT

on() { local h=$1; shift; ip netns exec "$LAB_PREFIX-$h" "$@"; }
say() { printf '\n# %s\n' "$*"; }
wait_ready() {
  for _ in $(seq 300); do
    grep -q '^ready ' "$STATE/enforcer.out" 2>/dev/null && break
    kill -0 "$EPID" 2>/dev/null || { cat "$STATE/enforcer.err" >&2; exit 1; }
    sleep 0.1
  done
  grep '^ready ' "$STATE/enforcer.out" || { echo "enforcer not ready" >&2; exit 1; }
}

if [ $SCENARIO = starwars-2017 ]; then
  [ $HOST_MODE = 1 ] && { echo "starwars-2017 runs inline only" >&2; exit 2; }
  bash "$LAB" up
  rc=0
  sw2017 || rc=$?
  exit $rc
fi

if [ $HOST_MODE = 1 ]; then
  bash "$LAB" up --host-mode
  echo "== starting the enforcer on the server itself: enforcer --iface eth0 --policy policies/"
  ip netns exec "$LAB_PREFIX-server" "$BIN" --iface eth0 --policy policies/ --poll adaptive \
    --log "$STATE/verdicts.jsonl" >"$STATE/enforcer.out" 2>"$STATE/enforcer.err" &
else
  bash "$LAB" up
  echo "== starting the enforcer between the switch and the server (policies/)"
  ip netns exec "$LAB_PREFIX-enf" "$BIN" --iface cli0 --peer srv0 --policy policies/ --poll adaptive \
    --log "$STATE/verdicts.jsonl" >"$STATE/enforcer.out" 2>"$STATE/enforcer.err" &
fi
EPID=$!
wait_ready

show() { local h=$1; shift; printf '%s$ %s\n' "$h" "$*"; on "$h" bash -c "$*" || true; }

# A python session in one ship, printed like the guide's interpreter.
pysession() {
  local host=$1; shift
  printf '%s (python, bmemcached)\n' "$host"
  on "$host" python3 - "$@" <<'PY'
import sys, bmemcached
client = bmemcached.Client(("10.66.0.2:11211",), socket_timeout=3)
for line in sys.argv[1:]:
    print(">>> " + line)
    try:
        r = eval(line)
        if r is not None:
            print(repr(r.decode() if isinstance(r, bytes) else r))
    except Exception as e:
        print("%s.%s: %s" % (type(e).__module__, type(e).__name__, e))
PY
}

SETXC='set xwing-coord 0 1200 16\r\n8893.34,234.3290\r\nquit\r\n'
GETXC='get xwing-coord\r\nquit\r\n'
GETAC='get awing-coord\r\nquit\r\n'
NC="nc -N -w 2 10.66.0.2 11211"

say "==== Memcached (Cilium getting-started guide), policy memcd-sw-security-policy.yaml ===="
say "A-wing sets and reads its own coordinates (binary protocol):"
pysession awing 'client.set("awing-coord","4309.432,918.980",time=2400)' 'client.get("awing-coord")'
say "X-wing sets and reads its own coordinates (text protocol):"
show xwing "echo -en '$SETXC' | $NC"
show xwing "echo -en '$GETXC' | $NC"
say "The tracker reads both:"
pysession tracker 'client.get("awing-coord")' 'client.get("xwing-coord")'
say "A captured X-wing tries to read the A-wing's coordinates:"
show xwing "echo -en '$GETAC' | $NC"
say "A-wing stays within its key; other keys are denied (status 8, access denied):"
pysession awing 'client.get("awing-coord")' 'client.get("xwing-coord")' 'client.set("xwing-coord","0.0,0.0",time=2400)'
say "A compromised tracker cannot write:"
pysession tracker 'client.get("xwing-coord")' 'client.set("awing-coord","0.0,0.0",time=1200)'
say "Allowed calls still work:"
show xwing "echo -en '$GETXC' | $NC"
show xwing "echo -en 'set xwing-coord 0 1200 16\r\n9854.34,926.9187\r\nquit\r\n' | $NC"
show xwing "echo -en '$GETXC' | $NC"
pysession awing 'client.set("awing-coord","9852.542,892.1318",time=1200)' 'client.get("awing-coord")'

say "==== Star Wars (2017 demo), policy sw-deathstar-http.yaml ===="
say "A spaceship requests landing:"
show awing "curl -si -XPOST http://10.66.0.2/v1/request-landing"
say "The X-wing probes the deathstar with its radar:"
show xwing "ping -c 2 10.66.0.2"
say "... and reads the API:"
show xwing "curl -si -XGET http://10.66.0.2/v1/"
say "The X-wing goes for the exhaust port; the shields are up:"
show xwing "curl -si -m 3 -XPUT http://10.66.0.2/v1/exhaust-port"
say "Luke, with the Force:"
show xwing "curl -si -m 3 -H 'X-Has-Force: true' -XPUT http://10.66.0.2/v1/exhaust-port"
say "Ships without the spaceship label get nothing at all (SYN dropped):"
show outsider "curl -si -m 3 http://10.66.0.2/v1/; echo \"curl exit \$?\""

say "==== verdict log (last 10 of $(wc -l <"$STATE/verdicts.jsonl" 2>/dev/null || echo 0)) ===="
tail -n 10 "$STATE/verdicts.jsonl" 2>/dev/null || true
kill -TERM "$EPID"
wait "$EPID" || true
EPID=
say "enforcer counters:"
tail -n 1 "$STATE/enforcer.out"
