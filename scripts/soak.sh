#!/usr/bin/env bash
# Soak with leak accounting (issue 17): CYCLES pod cycles through the CRI (RunPodSandbox,
# CreateContainer, StartContainer, ExecSync, StopPodSandbox, RemovePodSandbox), one in ten
# with taskd killed (kill -9) at a random point and restarted; every 100 cycles a row of
# counts (mounts, netns, IP leases, cgroups, daemon fds/threads/RSS, shims, bundles, exec
# dirs, FIFOs, CRI records, meta.redb) is printed and checked against the baseline.
#
# It is the end-to-end test tests/soak.rs (200 cycles in the suite) with more cycles: one
# piece of code for both.
#
# usage: sudo scripts/soak.sh [CYCLES]       (default 1000)
#   TASKD_SOAK_SEED=N    replays the kill points of an earlier run (its seed is printed)
set -euo pipefail
cd "$(dirname "$0")/.."

CYCLES="${1:-1000}"
case "$CYCLES" in
    ''|*[!0-9]*) echo "soak: CYCLES must be a number, got '$CYCLES'" >&2; exit 2 ;;
esac
[ "$(id -u)" = 0 ] || { echo "soak: needs root (real taskd, runc, shims, CNI)" >&2; exit 1; }

# The tests' taskd finds its shim next to itself (target/debug). Built as the suite builds
# (`cargo test --workspace`): a `cargo build -p ...` or a test of one package resolves other
# crate features and rebuilds dozens of crates on a tree the suite already built.
cargo test --workspace --no-run
TASKD_E2E=1 TASKD_SOAK_CYCLES="$CYCLES" \
    cargo test --workspace --test soak -- --include-ignored --nocapture --test-threads 1
