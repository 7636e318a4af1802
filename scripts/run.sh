#!/usr/bin/env bash
# Fresh machine → running taskd: installs what taskd needs at run time when it is missing
# (runc, and containerd for its containerd-shim-runc-v2), builds taskd and its shim
# containerd-shim-taskd-v2 (installed next to taskd) and starts taskd on the
# embedded defaults (root /var/lib/taskd, state /run/taskd, socket /run/taskd/taskd.sock,
# metrics on 127.0.0.1:1338). Extra arguments go to taskd (e.g. --config FILE, --log-level debug).
# Needs root (or sudo) to install packages and to run the daemon.
# TASKD_PROFILE=dev builds the (faster to build) debug binary instead of the release one.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

need=()
command -v runc >/dev/null 2>&1 || need+=(runc)
command -v containerd-shim-runc-v2 >/dev/null 2>&1 || need+=(containerd)
# Build dependencies of the TLS stack used by image pulls (openssl-sys).
dpkg -s libssl-dev >/dev/null 2>&1 || need+=(libssl-dev)
command -v pkg-config >/dev/null 2>&1 || need+=(pkg-config)
if [ "${#need[@]}" -gt 0 ]; then
    apt_install "${need[@]}"
fi
ensure_cargo
profile="${TASKD_PROFILE:-release}"
cargo build --profile "$profile" --bin taskd
case "$profile" in
    dev) bin=target/debug/taskd ;;
    *) bin="target/$profile/taskd" ;;
esac
# taskd's own shim (io.containerd.taskd.v2, the CRI's default handler), built for size and
# installed next to taskd, where taskd looks for shims after PATH.
# The size build links glibc statically into a non-PIE executable (no ld.so/libc.so pages,
# no relocated .data.rel.ro copy per process): `cargo rustc` passes the flags to the final
# crate only (fat LTO codegens every crate there); taskd is not affected.
shim_profile=shim
if [ "$profile" = dev ]; then
    shim_profile=dev
    cargo build --profile dev -p containerd-shim-taskd-v2
else
    cargo rustc --profile shim -p containerd-shim-taskd-v2 --bin containerd-shim-taskd-v2 -- \
        -C target-feature=+crt-static -C relocation-model=static
fi
case "$shim_profile" in
    dev) shim=target/debug/containerd-shim-taskd-v2 ;;
    *) shim="target/$shim_profile/containerd-shim-taskd-v2" ;;
esac
target_dir="${CARGO_TARGET_DIR:-target}"
bin="$target_dir/${bin#target/}"
shim="$target_dir/${shim#target/}"
if [ "$shim" != "$(dirname "$bin")/containerd-shim-taskd-v2" ]; then
    install -m 0755 "$shim" "$(dirname "$bin")/containerd-shim-taskd-v2"
fi
exec_as_root() {
    if [ "$(id -u)" -eq 0 ]; then exec "$@"; else exec sudo "$@"; fi
}
exec_as_root "$bin" "$@"
