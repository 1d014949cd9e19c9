# The 2017 Star Wars demo as it was typed (shared/seeds transcript), on an
# IPv6 "space" network (fd77::/112) in the veth lab: the deathstar is the
# lab's server, ship1 / xwing / xwing_luke are the awing / xwing / tracker
# namespaces, "deathstar" resolves through /etc/netns/NS/hosts (ip netns
# exec mounts it over /etc/hosts). `cilium policy import` becomes
# `enforcer policy import` with the demo's own JSON files. Every step's
# output is checked; the first mismatch fails the run.
# Sourced by scripts/demo.sh with BIN, LAB, LAB_PREFIX and STATE set.

sw2017() {
  local work pdir
  work=$(mktemp -d)
  pdir="$STATE/policy"
  SW_CLEAN="$work"
  mkdir -p "$pdir"
  cp policies/starwars-2017/l4/sw_policy_l4.json policies/starwars-2017/http-show/sw_policy_http.show.json \
    policies/starwars-2017/http-real/sw_policy_http.real.json "$work/"
  # No policy yet: the labels only (docker run -l ...).
  cp policies/starwars-2017/l4/endpoints.yaml "$pdir/endpoints.yaml"

  say "docker network create --ipv6 --subnet ::1/112 --driver cilium --ipam-driver cilium space"
  on server ip addr add fd77::2/112 dev eth0 nodad
  local h
  declare -A ship=([awing]=11 [xwing]=12 [tracker]=13)
  for h in awing xwing tracker; do
    on "$h" ip addr add "fd77::${ship[$h]}/112" dev eth0 nodad
    mkdir -p "/etc/netns/$LAB_PREFIX-$h"
    echo "fd77::2 deathstar" >"/etc/netns/$LAB_PREFIX-$h/hosts"
  done

  export ENFORCER_CONTROL="$STATE/enforcer.sock"
  echo "== starting the enforcer between the switch and the deathstar ($pdir: endpoints only)"
  ip netns exec "$LAB_PREFIX-enf" "$BIN" --iface cli0 --peer srv0 --policy "$pdir" --poll adaptive \
    --control "$ENFORCER_CONTROL" --log "$STATE/verdicts.jsonl" >"$STATE/enforcer.out" 2>"$STATE/enforcer.err" &
  EPID=$!
  wait_ready

  FAILED=0
  # step NAME CMD...: run CMD (in $work), print it and its output, then
  # check each `expect` given after it.
  local out
  step() { # step HOST|- COMMAND (shown as typed)
    local host=$1 cmd=$2
    if [ "$host" = - ]; then
      printf '\n$ %s\n' "$cmd"
      out=$(cd "$work" && PATH="$(dirname "$BIN"):$PATH" bash -c "$cmd" 2>&1 || true)
    else
      printf '\n$ docker exec -i %s %s\n' "$3" "$cmd"
      out=$(on "$host" bash -c "$cmd" 2>&1 || true)
    fi
    printf '%s\n' "$out"
  }
  expect() {
    if ! grep -qF -- "$1" <<<"$out"; then
      echo "MISMATCH: expected: $1" >&2
      FAILED=1
    fi
  }

  say "The empire allows spaceships to reach the deathstar on port 80:"
  step - "cat sw_policy_l4.json"
  expect '"coverage": ["id.empire.deathstar"]'
  step - "enforcer policy import sw_policy_l4.json"
  expect "Revision: 2"
  step awing "curl -si -XPOST http://deathstar/v1/request-landing" ship1
  expect "HTTP/1.1 200 OK"
  expect "Ship landed"
  step xwing "ping -c 2 deathstar" xwing
  expect "2 packets transmitted, 2 received, 0% packet loss"
  step xwing "curl -si -XGET http://deathstar/v1/" xwing
  expect "HTTP/1.1 200 OK"
  expect '"name": "Death Star"'
  expect '"PUT  /v1/exhaust-port"'

  say "The empire's SecOps protect the API:"
  step - "cat sw_policy_http.show.json"
  expect 'Method(\"POST\") && Path(\"/v1/request-landing\")'
  step - "enforcer policy import sw_policy_http.real.json"
  expect "Revision: 3"
  # One policy named "root" replaced the other, as with cilium.
  step - "enforcer policy get | grep '^==> '"
  expect "sw_policy_http.real.json"
  if grep -q sw_policy_l4.json <<<"$out"; then echo "MISMATCH: sw_policy_l4.json still in force" >&2; FAILED=1; fi
  step xwing "ping -c 2 deathstar" xwing
  expect "2 packets transmitted, 2 received, 0% packet loss"
  step xwing "curl -si -XPUT http://deathstar/v1/exhaust-port" xwing
  expect "HTTP/1.1 403 Forbidden"
  expect "Access denied"

  say "What the Jedi put in place:"
  step - "diff -Nru sw_policy_http.show.json sw_policy_http.real.json"
  expect '+          { "expr": "Method(\"PUT\") && Header(\"X-Has-Force\", \"true\") && Path(\"/v1/exhaust-port\")" }'
  step tracker "curl -si -H 'X-Has-Force: true' -XPUT http://deathstar/v1/exhaust-port" xwing_luke
  expect "HTTP/1.1 503 Service Unavailable"
  expect "Panic: deathstar exploded"

  say "enforcer status:"
  step - "enforcer status"
  expect "Policy:       revision 3,"
  if [ $FAILED = 0 ]; then
    say "TRANSCRIPT PASSED"
  else
    say "TRANSCRIPT FAILED"
  fi
  return $FAILED
}

sw2017_cleanup() {
  local h
  for h in awing xwing tracker; do rm -rf "/etc/netns/$LAB_PREFIX-$h"; done
  [ -n "${SW_CLEAN:-}" ] && rm -rf "$SW_CLEAN"
  return 0
}
