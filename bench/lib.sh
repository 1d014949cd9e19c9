# What the lab benchmarks share (bench/run.sh, bench/large.sh, bench/host.sh):
# sourced after `cd` to the repository root, with P (the lab prefix) and Q
# (its queue count) set. Defines the lab helpers, the middlebox process's
# life cycle and its CPU, nginx in place of the lab's HTTP server, and the
# exit trap that removes the lab also on failure.

STATE=/run/enforcer-lab/$P
HZ=$(getconf CLK_TCK)
MB_PID="" # the middlebox process being measured (enforcer, haproxy)

lab() { bash scripts/lab.sh -p "$P" -q "$Q" "$@"; }
nsx() { local h=$1; shift; ip netns exec "$P-$h" "$@"; }

# The usage text: lines FIRST..LAST of the calling script's header comment.
usage() { sed -n "$1,$2p" "$0" >&2; exit 2; }
need_root() { [ "$(id -u)" -eq 0 ] || { echo "$0: needs root (namespaces, AF_XDP)" >&2; exit 1; }; }

stop_mb() {
  [ -n "$MB_PID" ] && kill "$MB_PID" 2>/dev/null && wait "$MB_PID" 2>/dev/null || true
  MB_PID=""
}
# Extra clean-up a script needs before the lab goes (temporary files).
bench_cleanup_extra() { :; }
bench_cleanup() {
  bench_cleanup_extra
  stop_mb
  lab down >/dev/null 2>&1 || true
}
trap bench_cleanup EXIT INT TERM

# utime+stime of a process, in clock ticks (HZ a second).
cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
# The whole machine's busy time (user, nice, system, irq, softirq), in ticks.
machine_busy() { awk '/^cpu / {print $2+$3+$4+$7+$8}' /proc/stat; }

# Inline lab only: a kernel bridge between the enforcer's ports, the baseline.
bridge_up() {
  nsx enf ip link add br0 type bridge stp_state 0 forward_delay 0
  nsx enf ip link set cli0 master br0
  nsx enf ip link set srv0 master br0
  nsx enf ip link set br0 up
  sleep 1
}
bridge_down() { nsx enf ip link del br0; sleep 0.3; }

# Start the enforcer in namespace NS with ARGS..., output to
# $STATE/enforcer.out (stderr too, unless ENF_ERR names another file);
# returns once it printed its ready line (or exits 1 with its output).
enf_launch() { # NS ARGS...
  local ns=$1
  shift
  if [ -n "${ENF_ERR:-}" ]; then
    ip netns exec "$P-$ns" "$@" >"$STATE/enforcer.out" 2>"$ENF_ERR" &
  else
    ip netns exec "$P-$ns" "$@" >"$STATE/enforcer.out" 2>&1 &
  fi
  MB_PID=$!
  # 30 s: a loaded 2-core machine (builds beside the run) has taken over 10 s
  # to bring AF_XDP sockets up; stop early if the enforcer already exited.
  local i
  for i in $(seq 300); do
    grep -q '^ready ' "$STATE/enforcer.out" && break
    kill -0 "$MB_PID" 2>/dev/null || break
    sleep 0.1
  done
  grep -q '^ready ' "$STATE/enforcer.out" || {
    if kill -0 "$MB_PID" 2>/dev/null; then
      echo "bench: the enforcer in $P-$ns printed no ready line in 30 s; where its threads wait:" >&2
      enf_stacks "$MB_PID" >&2
      echo "bench: its output:" >&2
    else
      echo "bench: the enforcer in $P-$ns exited before its ready line; its output:" >&2
    fi
    cat "$STATE/enforcer.out" ${ENF_ERR:+"$ENF_ERR"} >&2
    exit 1
  }
}
# Where each thread of PID and of its children waits: state, wait channel
# and kernel stack (a start that hangs under load prints nothing of its own).
enf_stacks() { # PID
  local p t
  for p in "$1" $(pgrep -P "$1" 2>/dev/null || true); do
    for t in /proc/"$p"/task/*; do
      [ -r "$t/stat" ] || continue
      echo "-- pid $p tid ${t##*/} $(cat "$t/comm" 2>/dev/null) state $(awk '{print $3}' "$t/stat" 2>/dev/null) wchan $(cat "$t/wchan" 2>/dev/null)"
      echo "   syscall: $(cat "$t/syscall" 2>/dev/null)"
      sed 's/^/   /' "$t/stack" 2>/dev/null || true
    done
    # A thread running in user space has no kernel stack to show: its own.
    if command -v gdb >/dev/null; then
      timeout 20 gdb -p "$p" -batch -nx -ex 'thread apply all bt 30' 2>/dev/null | grep -E '^(#|Thread)' | sed 's/^/   /' || true
    fi
  done
}
# The last counters line the enforcer printed (SIGUSR1 or exit), or nothing.
enf_counters() { grep '^{"counters"' "$STATE/enforcer.out" | tail -n 1 || true; }

# Kill what listens on PORT in the server namespace and wait until it is free.
free_port() {
  local pid
  for pid in $(nsx server ss -ltnpH "sport = :$1" | grep -o 'pid=[0-9]*' | cut -d= -f2 | sort -u); do
    kill "$pid"
  done
  wait_listening "$1" no
}
wait_listening() { # PORT [no]: until something (nothing) listens on it, 5 s at most
  for _ in $(seq 50); do
    if nsx server ss -ltnH "sport = :$1" | grep -q .; then
      [ "${2:-}" = no ] || return 0
    else
      [ "${2:-}" = no ] && return 0
    fi
    sleep 0.1
  done
  [ "${2:-}" = no ] && return 0
  echo "$0: nothing listens on port $1 in the server namespace" >&2
  exit 1
}

# nginx on the server's port 80 in place of the lab's Python server (which
# would be the bottleneck): "ok" for every GET, or with `files` the files
# in $STATE and a 200 for POST /upload of up to 64 MB.
start_nginx() { # [files]
  free_port 80
  local server='listen 80 reuseport; listen [::]:80 reuseport; location / { return 200 "ok\n"; }'
  local extra="" conns=1024
  if [ "${1:-}" = files ]; then
    server="listen 80; root $STATE; location /upload { return 200 \"got it\\n\"; }"
    extra="client_max_body_size 64m;"
    conns=64
  fi
  cat >"$STATE/nginx.conf" <<NGINX
user root;
worker_processes 1;
daemon on;
pid $STATE/nginx.pid;
error_log $STATE/nginx.err;
events { worker_connections $conns; }
http {
  access_log off;
  $extra
  server { $server }
}
NGINX
  nsx server nginx -c "$STATE/nginx.conf"
  wait_listening 80
}

# The memcached key the loads get (allowed to a-wing by the seed policy).
seed_awing_key() {
  printf 'set awing-coord 0 0 16\r\n4309.432,918.980\r\n' | nsx awing nc -N -w 3 10.66.0.2 11211 >/dev/null
}
