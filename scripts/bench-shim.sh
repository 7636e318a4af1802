#!/usr/bin/env bash
# Benchmark (not a test): taskd's own shim (io.containerd.taskd.v2) against the stock
# containerd-shim-runc-v2, in one run:
#   1. `ctr run --rm --rootfs DIR ID /bin/true` medians: containerd 1.6 (its stock shim),
#      taskd with the stock shim, taskd with its own shim (interleaved, same noise);
#   2. memory per pod: K detached `sleep` containers on each shim (one shim per container,
#      as one per pod), each shim's VmRSS and PSS (smaps_rollup) and its thread count.
# Starts containerd (own root/state/socket, CRI off) and taskd on temp dirs; stops both.
#
# usage: sudo scripts/bench-shim.sh [ITERATIONS] [K]      (defaults 30, 10)
#   TASKD_BIN=path/to/taskd (default target/release/taskd)
#   SHIM_BIN=path/to/containerd-shim-taskd-v2 (default target/shim/containerd-shim-taskd-v2)
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"

N="${1:-30}"
K="${2:-10}"
TASKD_BIN="${TASKD_BIN:-target/release/taskd}"
SHIM_BIN="${SHIM_BIN:-target/shim/containerd-shim-taskd-v2}"
die() { echo "bench-shim: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "needs root"
[ -x "$TASKD_BIN" ] || die "taskd binary $TASKD_BIN not found (set TASKD_BIN)"
[ -x "$SHIM_BIN" ] || die "shim $SHIM_BIN not found (build it as scripts/run.sh does: cargo rustc --profile shim -p containerd-shim-taskd-v2 --bin containerd-shim-taskd-v2 -- -C target-feature=+crt-static -C relocation-model=static)"

W="$(mktemp -d /tmp/taskd-bench-shim.XXXXXX)"
CD_PID=""
TD_PID=""
cleanup() {
  set +e
  for s in cd td; do
    for id in $(ctr --address "$W/$s.sock" -n bench tasks ls -q 2>/dev/null); do
      ctr --address "$W/$s.sock" -n bench tasks kill -s SIGKILL "$id" >/dev/null 2>&1
    done
    sleep 0.5
    for id in $(ctr --address "$W/$s.sock" -n bench containers ls -q 2>/dev/null); do
      ctr --address "$W/$s.sock" -n bench tasks rm "$id" >/dev/null 2>&1
      ctr --address "$W/$s.sock" -n bench containers rm "$id" >/dev/null 2>&1
    done
  done
  for p in $TD_PID $CD_PID; do kill -TERM "$p" 2>/dev/null; done
  for p in $TD_PID $CD_PID; do wait "$p" 2>/dev/null; done
  rmdir /run/containerd/runc/bench 2>/dev/null
  for c in /sys/fs/cgroup/*/bench /sys/fs/cgroup/bench; do rmdir "$c" 2>/dev/null; done
  if ! grep -q " $W" /proc/self/mountinfo; then rm -rf "$W"; else echo "mounts left under $W" >&2; fi
}
trap cleanup EXIT

R="$W/rootfs"
mkdir -p "$R"/{bin,etc,tmp,proc,sys,dev,root}
cp /bin/busybox "$R/bin/busybox"
for a in $(/bin/busybox --list); do [ "$a" = busybox ] || ln -sf busybox "$R/bin/$a"; done
echo 'root:x:0:0:root:/root:/bin/sh' >"$R/etc/passwd"
echo 'root:x:0:' >"$R/etc/group"

# taskd finds the shim through its config (shims = {...}), containerd never needs it.
bench_start_daemons "$W" "$TASKD_BIN" "[plugins.\"io.containerd.runtime.v2.task\"]
shims = { \"io.containerd.taskd.v2\" = \"$(realpath "$SHIM_BIN")\" }"

run_once() { # SOCK RUNTIME ID → µs
  local t0 t1
  t0=$(date +%s%N)
  ctr --address "$1" -n bench run --runtime "$2" --rm --rootfs "$R" "$3" /bin/true >/dev/null \
    || die "ctr run ($2) against $1 failed; logs in $W"
  t1=$(date +%s%N)
  echo $(((t1 - t0) / 1000))
}
STOCK=io.containerd.runc.v2
OWN=io.containerd.taskd.v2
for i in 1 2 3; do
  run_once "$W/cd.sock" $STOCK "cw$i" >/dev/null
  run_once "$W/td.sock" $STOCK "sw$i" >/dev/null
  run_once "$W/td.sock" $OWN "ow$i" >/dev/null
done
: >"$W/cd.t"; : >"$W/stock.t"; : >"$W/own.t"
for i in $(seq "$N"); do
  run_once "$W/cd.sock" $STOCK "c$i" >>"$W/cd.t"
  run_once "$W/td.sock" $STOCK "s$i" >>"$W/stock.t"
  run_once "$W/td.sock" $OWN "o$i" >>"$W/own.t"
done
CD=$(median "$W/cd.t"); ST=$(median "$W/stock.t"); OW=$(median "$W/own.t")

# memory per pod: K detached containers per shim kind on taskd
pss() { awk '/^Pss:/ {print $2}' "/proc/$1/smaps_rollup"; }
threads() { awk '/^Threads:/ {print $2}' "/proc/$1/status"; }
mem() { # RUNTIME PREFIX → "avg RSS, avg PSS, threads"
  local rt=$1 pre=$2 i pids="" p
  for i in $(seq "$K"); do
    ctr --address "$W/td.sock" -n bench run --runtime "$rt" -d --rootfs "$R" "$pre$i" /bin/sleep 1000 >/dev/null
  done
  sleep 1
  for i in $(seq "$K"); do
    p=$(cat "$W/td-state/io.containerd.runtime.v2.task/bench/$pre$i/shim.pid")
    pids="$pids $p"
  done
  local r=0 s=0 t=0 n=0
  for p in $pids; do
    r=$((r + $(rss "$p"))); s=$((s + $(pss "$p"))); t=$(threads "$p"); n=$((n + 1))
  done
  echo "$((r / n)) $((s / n)) $t"
}
read -r SR SP STH < <(mem $STOCK sm)
read -r OR OP OTH < <(mem $OWN om)

ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a / b}'; }
cat <<EOT
| measure | containerd 1.6 + containerd-shim-runc-v2 | taskd + containerd-shim-runc-v2 | taskd + containerd-shim-taskd-v2 | own shim / containerd |
|---|---|---|---|---|
| median \`ctr run --rm\` (µs) | $CD | $ST | $OW | **$(ratio "$OW" "$CD")** |
| shim VmRSS per pod (KiB, avg of $K) | $SR | $SR | $OR | **$(ratio "$OR" "$SR")** |
| shim PSS per pod (KiB, avg of $K) | $SP | $SP | $OP | **$(ratio "$OP" "$SP")** |
| shim threads | $STH | $STH | $OTH | |

iterations: $N each (interleaved, after 3 warm-ups each); $K containers per shim; $(nproc) CPUs; $(uname -r); $(date -u +%Y-%m-%dT%H:%MZ)
taskd: $TASKD_BIN; shim: $SHIM_BIN ($(stat -c %s "$SHIM_BIN") bytes)
EOT
