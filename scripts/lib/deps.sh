# Installs what the build, the lab and the tests need. Idempotent and quiet.
# Sourced by scripts/test.sh and scripts/demo.sh.

APT_PACKAGES=(
  # xsk-rs builds libbpf/libxdp from source
  libelf-dev zlib1g-dev pkg-config clang llvm m4 libpcap-dev bpftool
  # the lab
  iproute2 ethtool iputils-ping procps psmisc tcpdump
  # packaging test (systemd-analyze verify)
  systemd
  # real servers and clients
  memcached netcat-openbsd curl wrk python3 python3-pip
  # memaslap (memcaslap) and nginx for the compatibility lab
  libmemcached-tools nginx-light
)
# h11 and httptools: reference parsers of tests/http_differential.rs
PIP_PACKAGES=(python-binary-memcached pymemcache h11 httptools)

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

install_deps() {
  local missing=()
  for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "installing: ${missing[*]}" >&2
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
  if ! python3 -c 'import bmemcached, pymemcache, h11, httptools' 2>/dev/null; then
    python3 -m pip install -q "${PIP_PACKAGES[@]}" 2>/dev/null \
      || python3 -m pip install -q --break-system-packages "${PIP_PACKAGES[@]}"
  fi
  if [ "$(id -u)" -eq 0 ] && ! mountpoint -q /sys/fs/bpf; then
    mount -t bpf bpf /sys/fs/bpf
  fi
  command -v cargo >/dev/null || { echo "cargo not found: install Rust (rustup) first" >&2; return 1; }
}

# What bench/run.sh needs on top: servers and clients to compare against, and
# the plots. Installed by the runner itself (not by the test suite).
BENCH_APT_PACKAGES=(nginx-light haproxy iperf3 libmemcached-tools)
BENCH_PIP_PACKAGES=(matplotlib)

install_bench_deps() {
  install_deps
  local missing=() pkgs=("${BENCH_APT_PACKAGES[@]}")
  # PROFILE=1 runs profile with perf.
  [ "${PROFILE:-0}" = 1 ] && pkgs+=(linux-perf)
  for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  # nginx from another package is as good as nginx-light.
  command -v nginx >/dev/null && missing=("${missing[@]/nginx-light/}")
  missing=($(printf '%s\n' "${missing[@]}" | grep -v '^$' || true))
  if [ ${#missing[@]} -gt 0 ]; then
    echo "installing: ${missing[*]}" >&2
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
  if ! python3 -c 'import matplotlib' 2>/dev/null; then
    python3 -m pip install -q "${BENCH_PIP_PACKAGES[@]}" 2>/dev/null \
      || python3 -m pip install -q --break-system-packages "${BENCH_PIP_PACKAGES[@]}"
  fi
}
