#!/usr/bin/env bash
# Benchmark (not a test): `ctr run --rm --rootfs DIR ID /bin/true` against taskd and against
# Debian's containerd daemon, interleaved in one run so both see the same machine noise.
#
# Starts containerd on its own root, state and socket with the CRI plugin disabled, and taskd
# on its own dirs; stops both afterwards. Prints the median latency of each, the ratio
# (taskd / containerd) and each daemon's RSS (VmRSS of the daemon process only, shims
# excluded) after the loop, as a markdown table for docs/BENCHMARKS.md.
#
# usage: sudo scripts/bench-tasks.sh [ITERATIONS]      (default 50)
#   TASKD_BIN=path/to/taskd   (default target/release/taskd)
#   TASKD_CONFIG_EXTRA='...'  TOML appended to taskd's config (e.g. to compare with the warm
#                             shim pool off: '[plugins."io.containerd.runtime.v2.task"]' and
#                             'shim_pool_size = 0' on two lines)
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"

N="${1:-50}"
TASKD_BIN="${TASKD_BIN:-target/release/taskd}"

die() { echo "bench-tasks: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "needs root"
for b in containerd ctr runc containerd-shim-runc-v2 /bin/busybox; do
  command -v "$b" >/dev/null || die "$b is missing (apt-get install containerd runc busybox-static)"
done
[ -x "$TASKD_BIN" ] || die "taskd binary $TASKD_BIN not found (cargo build --release, or set TASKD_BIN)"

W="$(mktemp -d /tmp/taskd-bench.XXXXXX)"
CD_PID=""
TD_PID=""
cleanup() {
  set +e
  for p in $TD_PID $CD_PID; do
    kill -TERM "$p" 2>/dev/null
  done
  for p in $TD_PID $CD_PID; do
    wait "$p" 2>/dev/null
  done
  # runc's state dir and the parent cgroups of the "bench" namespace, once empty.
  rmdir /run/containerd/runc/bench 2>/dev/null
  for c in /sys/fs/cgroup/*/bench /sys/fs/cgroup/bench; do rmdir "$c" 2>/dev/null; done
  # Nothing should be mounted below $W; never remove across a mount.
  if ! grep -q " $W" /proc/self/mountinfo; then
    rm -rf "$W"
  else
    echo "bench-tasks: mounts left under $W, not removing it" >&2
  fi
}
trap cleanup EXIT

# busybox rootfs
R="$W/rootfs"
mkdir -p "$R"/{bin,etc,tmp,proc,sys,dev,root}
cp /bin/busybox "$R/bin/busybox"
for a in $(/bin/busybox --list); do
  [ "$a" = busybox ] || ln -sf busybox "$R/bin/$a"
done
echo 'root:x:0:0:root:/root:/bin/sh' >"$R/etc/passwd"
echo 'root:x:0:' >"$R/etc/group"

# containerd (own root/state/socket, CRI off) and taskd (own dirs and socket)
bench_start_daemons "$W" "$TASKD_BIN" "${TASKD_CONFIG_EXTRA:-}"

# one run; prints milliseconds
run_once() {
  local sock=$1 id=$2 t0 t1
  t0=$(date +%s%N)
  ctr --address "$sock" -n bench run --rm --rootfs "$R" "$id" /bin/true >/dev/null \
    || die "ctr run against $sock failed; logs in $W"
  t1=$(date +%s%N)
  echo $(((t1 - t0) / 1000))
}

for i in 1 2 3; do # warm-up
  run_once "$W/cd.sock" "cdwarm$i" >/dev/null
  run_once "$W/td.sock" "tdwarm$i" >/dev/null
done

: >"$W/cd.times"
: >"$W/td.times"
for i in $(seq "$N"); do
  if [ $((i % 2)) = 0 ]; then
    run_once "$W/cd.sock" "cd$i" >>"$W/cd.times"
    run_once "$W/td.sock" "td$i" >>"$W/td.times"
  else
    run_once "$W/td.sock" "td$i" >>"$W/td.times"
    run_once "$W/cd.sock" "cd$i" >>"$W/cd.times"
  fi
done


CD_MED=$(median "$W/cd.times")
TD_MED=$(median "$W/td.times")
CD_RSS=$(rss "$CD_PID")
TD_RSS=$(rss "$TD_PID")
RATIO=$(awk -v a="$TD_MED" -v b="$CD_MED" 'BEGIN {printf "%.2f", a / b}')
RSS_RATIO=$(awk -v a="$TD_RSS" -v b="$CD_RSS" 'BEGIN {printf "%.2f", a / b}')
# taskd's idle warm pool shims (not in the daemon RSS above): their pids and VmRSS.
POOL=""
for f in "$W"/td-state/io.containerd.runtime.v2.task/.pool/bench/*/shim.pid; do
  [ -e "$f" ] || continue
  p=$(cat "$f" 2>/dev/null || true)
  if [ -n "$p" ] && [ -r "/proc/$p/status" ]; then
    POOL="$POOL pid $p: $(rss "$p") KiB;"
  fi
done

cat <<EOF
| daemon | median \`ctr run --rm\` (µs) | daemon RSS (KiB) |
|---|---|---|
| containerd $(containerd --version | awk '{print $3}') | $CD_MED | $CD_RSS |
| taskd ($(basename "$TASKD_BIN")) | $TD_MED | $TD_RSS |
| **ratio taskd / containerd** | **$RATIO** | **$RSS_RATIO** |

iterations: $N each (interleaved, after 3 warm-ups each); $(nproc) CPUs; $(uname -r); $(date -u +%Y-%m-%dT%H:%MZ)
taskd idle pool shims (VmRSS, not counted above):${POOL:- none}
EOF
