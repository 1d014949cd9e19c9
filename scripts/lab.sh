#!/usr/bin/env bash
# The veth lab: client namespaces on one L2 segment (a bridge in its own
# namespace), the enforcer's namespace with two ports in the wire, and a
# server running memcached (11211) and the deathstar HTTP API (80).
#
#   awing    10.66.0.11 fd66::11 ─┐
#   xwing    10.66.0.12 fd66::12 ─┤
#   tracker  10.66.0.13 fd66::13 ─┼─ sw (bridge) ─ cli0 [enf] srv0 ─ server 10.66.0.2 fd66::2
#   outsider 10.66.0.14 fd66::14 ─┘
#
# With `up --host-mode` there is no wire in the middle: the server sits on
# the bridge itself and the enforcer runs on the server's own eth0.
#
#   awing, xwing, tracker, outsider ─ sw (bridge) ─ eth0 server 10.66.0.2 fd66::2
#
# Usage: scripts/lab.sh [-p PREFIX] [-q QUEUES] up [--host-mode]|down|status|gc|exec HOST CMD...
#   PREFIX (default: $LAB_PREFIX or "lab") prefixes every namespace name
#   (PREFIX-awing, ..., PREFIX-enf, PREFIX-server), so labs never collide.
#   QUEUES (default: $LAB_QUEUES or 2) RX/TX queues of the enforcer's ports.
#   LAB_THREADED_ENDS=1 (inline mode): the ends facing the ports run NAPI in
#   a kernel thread, so that a receiver's stack runs in its own context, as
#   on another machine, not inside the sender's transmit (docs/dataplane.md,
#   "Lab shapes"). Off by default.
#   gc removes every lab whose owner (the process that ran `up`) is gone.
# Needs root, iproute2, ethtool, memcached, python3.
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
PREFIX="${LAB_PREFIX:-lab}"
QUEUES="${LAB_QUEUES:-2}"
while getopts "p:q:" o; do
  case $o in
    p) PREFIX=$OPTARG ;;
    q) QUEUES=$OPTARG ;;
    *) sed -n '2,23p' "$0" >&2; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
[[ $PREFIX =~ ^[A-Za-z0-9_-]{1,20}$ ]] || { echo "lab: bad prefix $PREFIX" >&2; exit 2; }
[[ $QUEUES =~ ^[0-9]+$ ]] && ((QUEUES >= 1 && QUEUES <= 64)) || { echo "lab: bad queue count $QUEUES" >&2; exit 2; }

STATE="/run/enforcer-lab/$PREFIX"
CLIENTS=(awing xwing tracker outsider)
declare -A ID=([awing]=11 [xwing]=12 [tracker]=13 [outsider]=14)
HOSTS=("${CLIENTS[@]}" sw enf server)

ns() { echo "$PREFIX-$1"; }
nsx() { local h=$1; shift; ip netns exec "$(ns "$h")" "$@"; }
quiet_off() { nsx "$1" ethtool -K "$2" tx off tso off gso off gro off >/dev/null 2>&1 || true; }

down() {
  local h n
  for h in "${HOSTS[@]}"; do
    n=$(ns "$h")
    ip netns list | awk '{print $1}' | grep -qx "$n" || continue
    # Processes the lab started in its namespaces (servers, clients, enforcer).
    for pid in $(ip netns pids "$n" 2>/dev/null); do kill "$pid" 2>/dev/null || true; done
  done
  sleep 0.2
  for h in "${HOSTS[@]}"; do
    n=$(ns "$h")
    ip netns list | awk '{print $1}' | grep -qx "$n" || continue
    for pid in $(ip netns pids "$n" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
    ip netns del "$n" 2>/dev/null || true
  done
  rm -rf "$STATE"
}

link() { # link NS_A DEV_A NS_B DEV_B [link args for both ends]
  local a=$1 da=$2 b=$3 db=$4; shift 4
  ip -n "$(ns "$a")" link add "$da" "$@" type veth peer name "$db" netns "$(ns "$b")" "$@"
  quiet_off "$a" "$da"
  quiet_off "$b" "$db"
}

sysctls() {
  nsx "$1" sysctl -qw net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0 \
    net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0 >/dev/null
}

up() {
  local host_mode=0
  [ "${1:-}" = "--host-mode" ] && host_mode=1
  [ "$(id -u)" -eq 0 ] || { echo "lab: needs root" >&2; exit 1; }
  for h in "${HOSTS[@]}"; do
    if ip netns list | awk '{print $1}' | grep -qx "$(ns "$h")"; then
      echo "lab: $(ns "$h") exists; run: $0 -p $PREFIX down" >&2
      exit 1
    fi
  done
  trap 'echo "lab: setup failed, tearing down" >&2; down' ERR
  mkdir -p "$STATE"
  # Whoever asked for the lab owns it; `gc` removes labs of dead owners.
  echo "${LAB_OWNER:-$PPID}" >"$STATE/owner"
  echo "$([ $host_mode = 1 ] && echo host || echo inline)" >"$STATE/mode"
  for h in "${HOSTS[@]}"; do
    [ $host_mode = 1 ] && [ "$h" = enf ] && continue
    ip netns add "$(ns "$h")"
    nsx "$h" ip link set lo up
    sysctls "$h"
  done

  nsx sw ip link add br0 type bridge stp_state 0 forward_delay 0 mcast_snooping 0
  nsx sw ip link set br0 up
  for c in "${CLIENTS[@]}"; do
    link "$c" eth0 sw "p-$c"
    nsx sw ip link set "p-$c" master br0 up
    nsx "$c" ip addr add "10.66.0.${ID[$c]}/24" dev eth0
    nsx "$c" ip addr add "fd66::${ID[$c]}/64" dev eth0 nodad
    nsx "$c" ip link set eth0 up
  done

  if [ $host_mode = 1 ]; then
    # The server's own eth0 is the enforcer's --iface: multi-queue, so that
    # every worker gets a queue.
    link sw p-server server eth0 numrxqueues "$QUEUES" numtxqueues "$QUEUES"
    nsx sw ip link set p-server master br0 up
  else
    # The enforcer's ports: multi-queue so that every worker gets a queue.
    link sw p-enf enf cli0 numrxqueues "$QUEUES" numtxqueues "$QUEUES"
    link enf srv0 server eth0 numrxqueues "$QUEUES" numtxqueues "$QUEUES"
    nsx sw ip link set p-enf master br0 up
    # The kernel path (--kernel-path on) redirects frames from one port
    # into the other in XDP; a veth takes a redirected frame only when its
    # peer runs NAPI (GRO on, or an XDP program there), else the frame is
    # lost. So the ends facing the ports have GRO on (docs/dataplane.md).
    nsx sw ethtool -K p-enf gro on >/dev/null
    nsx server ethtool -K eth0 gro on >/dev/null
    # The clients' ends too: a veth receiver without NAPI takes frames on
    # the sending CPU's backlog, and a sender whose NAPI moves between CPUs
    # (the port's, forwarding in XDP) then delivers them out of order
    # (measured: OFO queueing and spurious fast retransmits on every large
    # get through the kernel path).
    for c in "${CLIENTS[@]}"; do
      nsx "$c" ethtool -K eth0 gro on >/dev/null
      nsx sw ethtool -K "p-$c" gro on >/dev/null
    done
    for d in cli0 srv0; do
      # A wire, not a host: no addresses, no IPv6 chatter of its own.
      nsx enf sysctl -qw "net.ipv6.conf.$d.disable_ipv6=1"
      nsx enf ip link set "$d" up
    done
  fi

  nsx server ip addr add 10.66.0.2/24 dev eth0
  nsx server ip addr add fd66::2/64 dev eth0 nodad
  nsx server ip link set eth0 up
  if [ $host_mode = 0 ] && [ "${LAB_THREADED_ENDS:-0}" = 1 ]; then
    # Copy-mode AF_XDP TX on a veth runs the peer's NAPI, and with it the
    # receiver's TCP, inside the enforcer's sendto, one frame at a time;
    # a wire would not. A NAPI thread takes that work elsewhere. Only now:
    # a NAPI thread needs the NAPI that an up device has.
    local h
    nsx sw sh -c "echo 1 > /sys/class/net/p-enf/threaded"
    for h in server "${CLIENTS[@]}"; do
      nsx "$h" sh -c "echo 1 > /sys/class/net/eth0/threaded"
    done
  fi

  nsx server memcached -u nobody -p 11211 -U 0 -l 0.0.0.0,:: -d -P "$STATE/memcached.pid"
  nsx server python3 "$HERE/deathstar.py" --port 80 --log "$STATE/deathstar.log" \
    >"$STATE/deathstar.out" 2>&1 &
  # Ready when both listen.
  for _ in $(seq 100); do
    if nsx server ss -ltn 2>/dev/null | grep -q ':80 ' && nsx server ss -ltn | grep -q ':11211 '; then
      break
    fi
    sleep 0.05
  done
  nsx server ss -ltn | grep -q ':80 ' || { echo "lab: deathstar did not start" >&2; cat "$STATE/deathstar.out" >&2; false; }
  nsx server ss -ltn | grep -q ':11211 ' || { echo "lab: memcached did not start" >&2; false; }
  trap - ERR
  if [ $host_mode = 1 ]; then
    echo "lab $PREFIX up (host mode): run the enforcer on eth0 in $(ns server) ($QUEUES queues); state in $STATE"
  else
    echo "lab $PREFIX up: enforcer ports cli0/srv0 in $(ns enf) ($QUEUES queues); state in $STATE"
  fi
}

status() {
  local h n
  for h in "${HOSTS[@]}"; do
    n=$(ns "$h")
    if ip netns list | awk '{print $1}' | grep -qx "$n"; then
      echo "== $n"
      ip -n "$n" -br addr | grep -v '^lo ' || true
      ip -n "$n" -d -o link | awk '/prog\/xdp/ { for (i = 1; i <= NF; i++) if ($i == "name") print "   xdp on " $2 " " $(i + 1) }' || true
    else
      echo "== $n (absent)"
    fi
  done
}

gc() {
  local d owner
  for d in /run/enforcer-lab/*/; do
    [ -f "$d/owner" ] || continue
    owner=$(cat "$d/owner")
    if ! kill -0 "$owner" 2>/dev/null; then
      echo "lab: removing $(basename "$d") (owner $owner is gone)"
      PREFIX=$(basename "$d") STATE="${d%/}" down
    fi
  done
}

cmd="${1:-}"
shift || true
case "$cmd" in
  up) up "$@" ;;
  down) down ;;
  status) status ;;
  gc) gc ;;
  exec)
    h="${1:?exec needs HOST}"; shift
    [[ " ${HOSTS[*]} " == *" $h "* ]] || { echo "lab: unknown host $h (${HOSTS[*]})" >&2; exit 2; }
    nsx "$h" "$@"
    ;;
  *) sed -n '2,23p' "$0" >&2; exit 2 ;;
esac
