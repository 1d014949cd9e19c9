#!/usr/bin/env bash
# The whole test suite, from a fresh Debian machine: installs what it needs
# (system packages, Python clients, bpffs), then runs every test. The lab
# tests need root; under CI (CI=true) they fail rather than skip without it.
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/lib/deps.sh
# The benchmark runner's tools too: tests/bench_smoke.rs runs it.
install_bench_deps

# Benchmarks once each in test mode: they must build and run, not be timed.
cargo test --benches --no-fail-fast
# Lab tests bring up namespaces and the enforcer: one at a time.
cargo test --lib --bins --tests --no-fail-fast -- --test-threads=1
# The stream's rigs again with the kit honouring published ranges of known
# bytes on half the frames, as the kernel path would (docs/stream.md).
KIT_KERNEL_PATH=50 cargo test --no-fail-fast --test stream_rig --test stream_rig_http \
  --test stream_l7 --test evasion
