#!/usr/bin/env bash
# The whole test suite, from a fresh Debian machine: installs what it needs
# (system packages, Python clients, bpffs), then runs every test. The lab
# tests need root; under CI (CI=true) they fail rather than skip without it.
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/lib/deps.sh
install_deps

cargo test --all-targets --no-fail-fast -- --test-threads=1
