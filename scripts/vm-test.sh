#!/usr/bin/env bash
# The VM test tier: runs test suites inside a Debian bookworm guest that boots cgroup v2 with
# systemd as PID 1 (this host may be cgroup v1 without systemd).
#
#   scripts/vm-test.sh [SUITE...]      SUITE: a tests/<SUITE>.rs target (default: cgroup_v2)
#   scripts/vm-test.sh --image-only    only build (or find) the cached guest image
#
# 1. The guest image (a root ext4 disk + the image's own kernel and initrd) is built once with
#    mmdebstrap and cached in $TASKD_VM_CACHE (default /var/cache/taskd-vm), keyed by the
#    package list and the guest setup below.
# 2. The debug `taskd` and the suites' test binaries (cargo test --no-run) and tests/fixtures
#    go on a second disk (vdb), at the same absolute paths as here once the guest links them
#    in (the binaries name taskd by its build path).
# 3. qemu boots the guest (TCG; KVM only when a probe boot of the kernel succeeds), snapshot
#    mode: the cached root disk is never written. A systemd unit in the guest runs every suite
#    with --include-ignored, writes each one's output and exit status to vdb, and powers off.
# 4. The results are read back from vdb with debugfs; the suites' summary lines are printed
#    and the script exits non-zero unless every suite passed. A boot failure, a guest that
#    never reports, or a timeout is a failure that prints the guest console log.
#
# Environment: TASKD_VM_CACHE, TASKD_VM_TIMEOUT (seconds for the guest run, default 1200),
# TASKD_VM_ACCEL (auto | tcg | kvm; default auto = probe KVM), TASKD_VM_KEEP=1 (keep the work
# dir), TASKD_VM_TEST_ARGS (more arguments for the test binaries, e.g. a name filter).
# The guest has no network device: nothing it runs reaches outside.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

die() { echo "vm-test: $*" >&2; exit 1; }
log() { echo "vm-test: $*" >&2; }

image_only=0
if [ "${1:-}" = "--image-only" ]; then image_only=1; shift; fi
suites=("$@")
[ "${#suites[@]}" -gt 0 ] || suites=(cgroup_v2)
cache_root=${TASKD_VM_CACHE:-/var/cache/taskd-vm}
guest_timeout=${TASKD_VM_TIMEOUT:-1200}
accel=${TASKD_VM_ACCEL:-auto}
[ "$(id -u)" -eq 0 ] || die "run as root (mmdebstrap, mkfs and the loop-free disk build need it)"

apt_install mmdebstrap qemu-system-x86 e2fsprogs ca-certificates python3
ensure_cargo

# ---- the guest image, cached ----

# What the guest has. The suites need runc and the runc shim (containerd: only its shim and
# ctr; its daemon is masked), busybox-static for the test images, the CNI plugins, iproute2
# and iptables for pod networks, and promtool (prometheus; its daemon is masked).
packages=(systemd systemd-sysv dbus udev kmod linux-image-amd64 runc containerd busybox-static
    iproute2 iptables containernetworking-plugins prometheus procps)
# Units that would only cost boot time under TCG (or start a containerd daemon).
masked=(containerd.service prometheus.service apt-daily.timer apt-daily-upgrade.timer
    e2scrub_all.timer e2scrub_reap.service fstrim.timer systemd-timesyncd.service
    getty@tty1.service serial-getty@ttyS0.service)

# The unit that runs the suites: mounts vdb, runs its run.sh, powers off whatever happens.
guest_unit='[Unit]
Description=taskd VM test tier
After=multi-user.target
[Service]
Type=oneshot
ExecStart=/usr/local/sbin/taskd-vm-test
StandardOutput=journal+console
StandardError=journal+console
TimeoutStartSec=infinity
SuccessAction=poweroff-force
FailureAction=poweroff-force
[Install]
WantedBy=multi-user.target'
guest_runner='#!/bin/sh
mkdir -p /vmtest && mount /dev/vdb /vmtest || exit 1
/vmtest/run.sh
rc=$?
sync
umount /vmtest
exit $rc'

key=$(printf '%s\n' "bookworm" "${packages[*]}" "${masked[*]}" "$guest_unit" "$guest_runner" | sha256sum | cut -c1-16)
cache=$cache_root/$key

build_image() {
    local tmp
    tmp=$(mktemp -d "$cache_root/build-XXXXXX")
    log "building the guest image in $cache (mmdebstrap bookworm, once per package list)"
    local include
    include=$(IFS=,; echo "${packages[*]}")
    local unit_file=$tmp/taskd-vm-test.service
    printf '%s\n' "$guest_unit" >"$unit_file"
    printf '%s\n' "$guest_runner" >"$tmp/taskd-vm-test"
    chmod +x "$tmp/taskd-vm-test"
    timeout 1200 mmdebstrap --variant=minbase --include="$include" \
        --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
        --dpkgopt='path-exclude=/usr/share/locale/*' \
        --customize-hook="upload $unit_file /etc/systemd/system/taskd-vm-test.service" \
        --customize-hook="upload $tmp/taskd-vm-test /usr/local/sbin/taskd-vm-test" \
        --customize-hook='chmod 755 "$1/usr/local/sbin/taskd-vm-test"' \
        --customize-hook='chroot "$1" systemctl enable taskd-vm-test.service' \
        --customize-hook="chroot \"\$1\" systemctl mask ${masked[*]}" \
        --customize-hook='echo taskd-vm >"$1/etc/hostname"; : >"$1/etc/machine-id"' \
        --customize-hook='rm -rf "$1"/var/cache/apt/* "$1"/var/lib/apt/lists/*' \
        bookworm "$tmp/root" >"$tmp/mmdebstrap.log" 2>&1 ||
        { tail -50 "$tmp/mmdebstrap.log" >&2; rm -rf "$tmp"; die "mmdebstrap failed"; }
    local vmlinuz initrd
    vmlinuz=$(find "$tmp/root/boot" -maxdepth 1 -name 'vmlinuz-*' | sort | tail -1)
    initrd=$(find "$tmp/root/boot" -maxdepth 1 -name 'initrd.img-*' | sort | tail -1)
    [ -n "$vmlinuz" ] && [ -n "$initrd" ] || { rm -rf "$tmp"; die "no kernel or initrd in the image's /boot"; }
    cp "$vmlinuz" "$tmp/vmlinuz"
    cp "$initrd" "$tmp/initrd.img"
    # Root disk: the tree plus room for the suites' images, rootfs and logs (sparse).
    mkfs.ext4 -q -F -L taskd-vm -d "$tmp/root" "$tmp/root.img" 4G >/dev/null ||
        { rm -rf "$tmp"; die "mkfs.ext4 of the root disk failed"; }
    rm -rf "$tmp/root"
    rm -rf "$cache"
    mv "$tmp" "$cache"
}

mkdir -p "$cache_root"
if [ ! -f "$cache/root.img" ]; then
    t0=$(date +%s)
    build_image
    log "guest image built in $(( $(date +%s) - t0 )) s"
else
    log "guest image cached: $cache"
fi
[ "$image_only" -eq 0 ] || exit 0

# ---- what goes in: taskd, the test binaries, fixtures ----

work=$(mktemp -d /tmp/taskd-vm-XXXXXX)
qemu_pid=
cleanup() {
    if [ -n "$qemu_pid" ] && kill -0 "$qemu_pid" 2>/dev/null; then
        kill -9 "$qemu_pid" 2>/dev/null || true
    fi
    [ "${TASKD_VM_KEEP:-0}" = 1 ] && { log "work dir kept: $work"; return; }
    rm -rf "$work"
}
trap cleanup EXIT

# `cargo test` builds taskd too (the binaries name it), with the features the host suite
# builds with: a separate `cargo build --bin taskd` would build the dependencies again.
log "building taskd and the test binaries of: ${suites[*]}"
test_args=()
for s in "${suites[@]}"; do test_args+=(--test "$s"); done
cargo test --no-run --message-format=json "${test_args[@]}" >"$work/cargo.json" 2>"$work/cargo.err" ||
    { cat "$work/cargo.err" >&2; die "cargo test --no-run failed"; }
mapfile -t bins < <(python3 -c '
import json, sys
for line in open(sys.argv[1]):
    try: m = json.loads(line)
    except ValueError: continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["test"]:
        print(m["target"]["name"] + " " + m["executable"])
' "$work/cargo.json")
[ "${#bins[@]}" -eq "${#suites[@]}" ] || die "expected ${#suites[@]} test binaries, cargo built: ${bins[*]:-none}"

payload=$work/payload
# Each suite's bound inside the guest: what is left of the guest's once it booted.
suite_timeout=$(( (guest_timeout - 240) / ${#suites[@]} ))
files=$payload/files
mkdir -p "$payload/results" "$files"
target_dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
stage() { # stage ABSOLUTE_PATH: copies it under files/ at the same path
    mkdir -p "$files$(dirname "$1")"
    cp -a "$1" "$files$1"
}
stage "$target_dir/debug/taskd"
# taskd's own shim (the CRI's default handler), next to taskd where taskd finds it.
cargo build -p containerd-shim-taskd-v2 2>"$work/cargo-shim.err" ||
    { cat "$work/cargo-shim.err" >&2; die "cargo build -p containerd-shim-taskd-v2 failed"; }
stage "$target_dir/debug/containerd-shim-taskd-v2"
stage "$PWD/tests/fixtures"
{
    echo '#!/bin/sh'
    echo '# Generated by scripts/vm-test.sh: runs each suite, its output and status in /vmtest/results.'
    echo 'cp -as /vmtest/files/. / || exit 90'
    echo 'export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin TASKD_E2E=1 RUST_BACKTRACE=1 TASKD_VM=1'
    echo 'echo "vm-test: guest up: $(uname -r), $(stat -fc %T /sys/fs/cgroup), PID 1 $(cat /proc/1/comm)" >/vmtest/results/guest.txt'
    echo 'cat /vmtest/results/guest.txt'
    echo "cd $PWD"
} >"$payload/run.sh"
for b in "${bins[@]}"; do
    name=${b%% *}
    exe=${b#* }
    stage "$exe"
    # The output goes to the log file (not through a pipe: a shim a failed test leaves behind
    # would hold it open) and is followed onto the console, so a guest that hangs still shows
    # how far it got; each suite is bounded inside the guest so that its log comes back.
    cat >>"$payload/run.sh" <<EOF
echo "vm-test: running $name"
timeout -k 10 $suite_timeout $exe --include-ignored --test-threads=1 ${TASKD_VM_TEST_ARGS:-} >/vmtest/results/$name.log 2>&1 &
pid=\$!
tail -f --pid=\$pid /vmtest/results/$name.log &
wait \$pid
echo \$? >/vmtest/results/$name.rc
sync
EOF
done
# The results disk has no journal (debugfs reads it as written); once synced the guest powers
# off at once (sysrq), not relying on the shutdown of a system the suites may have left busy.
cat >>"$payload/run.sh" <<'EOF'
echo "vm-test: suites done, powering off"
sync
echo o >/proc/sysrq-trigger
sleep 60
EOF
chmod +x "$payload/run.sh"
size_mb=$(( $(du -sm "$payload" | cut -f1) * 2 + 256 ))
mkfs.ext4 -q -F -O ^has_journal -L vmtest -d "$payload" "$work/payload.img" "${size_mb}M" >/dev/null || die "mkfs.ext4 of the payload disk failed"

# ---- boot ----

kernel_args="root=/dev/vda rw console=ttyS0 panic=-1 quiet loglevel=4 systemd.firstboot=off systemd.show_status=false"
qemu_base=(qemu-system-x86_64 -m 2048 -smp 2 -display none -no-reboot -nic none
    -kernel "$cache/vmlinuz" -initrd "$cache/initrd.img")

if [ "$accel" = auto ]; then
    accel=tcg
    if [ -w /dev/kvm ]; then
        # A kernel with no init panics and the guest exits (-no-reboot): KVM works when the
        # kernel got that far within the probe's time.
        # (In a subshell that does not exec it: a qemu that aborts, as it does here on an
        # MSR it cannot set, is reported by that subshell, whose stderr is dropped.)
        (timeout -k 5 25 "${qemu_base[@]}" -accel kvm -cpu host -serial "file:$work/kvm-probe.log" \
            -append "console=ttyS0 panic=-1 rdinit=/taskd-no-such-init" >"$work/kvm-probe.out" 2>&1 ||
            true) 2>/dev/null
        if grep -q "Kernel panic" "$work/kvm-probe.log" 2>/dev/null; then accel=kvm; fi
        log "KVM probe: $( [ "$accel" = kvm ] && echo works || echo 'no answer, using TCG')"
    fi
fi
case "$accel" in
    kvm) cpu=host ;;
    tcg) cpu=max ;;
    *) die "TASKD_VM_ACCEL must be auto, tcg or kvm" ;;
esac

log "booting the guest ($accel), at most ${guest_timeout}s; console: $work/console.log"
t0=$(date +%s)
"${qemu_base[@]}" -accel "$accel" -cpu "$cpu" -serial "file:$work/console.log" \
    -drive "file=$cache/root.img,format=raw,if=virtio,snapshot=on" \
    -drive "file=$work/payload.img,format=raw,if=virtio" \
    -append "$kernel_args" >"$work/qemu.out" 2>&1 &
qemu_pid=$!
timed_out=0
while kill -0 "$qemu_pid" 2>/dev/null; do
    if [ $(( $(date +%s) - t0 )) -ge "$guest_timeout" ]; then
        timed_out=1
        kill -9 "$qemu_pid" 2>/dev/null || true
        break
    fi
    sleep 2
done
qemu_rc=0
wait "$qemu_pid" 2>/dev/null || qemu_rc=$?
qemu_pid=
log "guest ran $(( $(date +%s) - t0 )) s"

fail() {
    echo "===== guest console log ($work/console.log) =====" >&2
    tail -n 300 "$work/console.log" >&2 || true
    cat "$work/qemu.out" >&2 || true
    echo "=====" >&2
    die "$*"
}
[ "$timed_out" -eq 0 ] || fail "the guest did not finish within ${guest_timeout}s"
[ "$qemu_rc" -eq 0 ] || fail "qemu exited with status $qemu_rc (the guest did not power off)"

# ---- results ----

debugfs -R "rdump /results $work" "$work/payload.img" >/dev/null 2>&1 || fail "cannot read the results disk"
[ -s "$work/results/guest.txt" ] || fail "the guest never ran the suites"
cat "$work/results/guest.txt"
status=0
for b in "${bins[@]}"; do
    name=${b%% *}
    if [ ! -f "$work/results/$name.rc" ]; then
        echo "vm-test: $name: no result (the guest stopped while it ran)"
        status=1
        continue
    fi
    rc=$(cat "$work/results/$name.rc")
    if [ "$rc" != 0 ]; then
        echo "===== $name (exit $rc) =====" >&2
        tail -n 150 "$work/results/$name.log" >&2
        status=1
    fi
    summary=$(grep -E '^test result:' "$work/results/$name.log" | tail -1 || true)
    echo "vm-test: $name: ${summary:-no summary line} (exit $rc)"
    [ -n "$summary" ] || status=1
done
[ "$status" -eq 0 ] || { [ -n "${CI:-}" ] && tail -n 100 "$work/console.log" >&2; exit 1; }
