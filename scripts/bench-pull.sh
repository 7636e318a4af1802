#!/usr/bin/env bash
# Benchmark (not a test): `ctr images pull --plain-http` (fetch + unpack into overlayfs) of a
# 3-layer image of about 50 MB from a local docker-registry, against taskd and against
# Debian's containerd daemon, interleaved in one run so both see the same machine noise.
#
# The image: layer 1 a busybox-static rootfs, layers 2 and 3 24 MiB of random
# (incompressible) data each, gzip; built as an OCI layout with tar/gzip/sha256sum and pushed
# with skopeo to docker-registry on 127.0.0.1:<free port>.
# containerd runs on its own root, state and socket with the CRI plugin disabled; taskd on
# its own dirs. Between runs the image is removed with `ctr images rm --sync` (synchronous
# GC): the next pull fetches and unpacks everything again (checked: no content, no snapshot
# left). Prints the medians, the ratio and the setup as a markdown table for
# docs/BENCHMARKS.md. Everything it started is stopped by pid.
#
# usage: sudo scripts/bench-pull.sh [ITERATIONS]      (default 7)
#   TASKD_BIN=path/to/taskd   (default target/release/taskd)
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"

N="${1:-7}"
TASKD_BIN="${TASKD_BIN:-target/release/taskd}"

die() { echo "bench-pull: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "needs root"
for b in containerd ctr docker-registry skopeo runc /bin/busybox sha256sum gzip python3; do
  command -v "$b" >/dev/null || die "$b is missing (apt-get install containerd docker-registry skopeo runc busybox-static)"
done
[ -x "$TASKD_BIN" ] || die "taskd binary $TASKD_BIN not found (cargo build --release, or set TASKD_BIN)"

W="$(mktemp -d /tmp/taskd-bench-pull.XXXXXX)"
CD_PID=""
TD_PID=""
REG_PID=""
cleanup() {
  set +e
  for p in $TD_PID $CD_PID $REG_PID; do
    kill -TERM "$p" 2>/dev/null
  done
  for p in $TD_PID $CD_PID $REG_PID; do
    wait "$p" 2>/dev/null
  done
  # Nothing should be mounted below $W; never remove across a mount.
  if ! grep -q " $W" /proc/self/mountinfo; then
    rm -rf "$W"
  else
    echo "bench-pull: mounts left under $W, not removing it" >&2
  fi
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# ---- the image (OCI layout) ----
L="$W/layout"
mkdir -p "$L/blobs/sha256"
echo '{"imageLayoutVersion":"1.0.0"}' >"$L/oci-layout"

# blob FILE -> moves FILE into the layout; prints "sha256:<hex> <size>"
blob() {
  local hex size
  hex=$(sha256sum "$1" | cut -d' ' -f1)
  size=$(stat -c %s "$1")
  mv "$1" "$L/blobs/sha256/$hex"
  echo "sha256:$hex $size"
}

# layer DIR -> prints "<digest> <size> <diff_id>" of DIR as a tar+gzip layer
layer() {
  local diff_id
  tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$1" -cf "$W/layer.tar" .
  diff_id="sha256:$(sha256sum "$W/layer.tar" | cut -d' ' -f1)"
  gzip -1 -n -c "$W/layer.tar" >"$W/layer.tar.gz"
  rm -f "$W/layer.tar"
  echo "$(blob "$W/layer.tar.gz") $diff_id"
}

R="$W/l1"
mkdir -p "$R"/{bin,etc,tmp,proc,sys,dev,root}
cp /bin/busybox "$R/bin/busybox"
for a in $(/bin/busybox --list); do
  [ "$a" = busybox ] || ln -sf busybox "$R/bin/$a"
done
echo 'root:x:0:0:root:/root:/bin/sh' >"$R/etc/passwd"
echo 'root:x:0:' >"$R/etc/group"
mkdir -p "$W/l2/data" "$W/l3/data"
head -c $((24 << 20)) /dev/urandom >"$W/l2/data/a.bin"
head -c $((24 << 20)) /dev/urandom >"$W/l3/data/b.bin"

LAYERS=()
DIFF_IDS=()
TOTAL=0
for d in l1 l2 l3; do
  read -r dg sz di < <(layer "$W/$d")
  LAYERS+=("{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar+gzip\",\"digest\":\"$dg\",\"size\":$sz}")
  DIFF_IDS+=("\"$di\"")
  TOTAL=$((TOTAL + sz))
done
join() { local IFS=,; echo "$*"; }
printf '{"architecture":"amd64","os":"linux","config":{"Cmd":["/bin/sh"]},"rootfs":{"type":"layers","diff_ids":[%s]}}' \
  "$(join "${DIFF_IDS[@]}")" >"$W/config.json"
read -r CFG_D CFG_S < <(blob "$W/config.json")
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"%s","size":%s},"layers":[%s]}' \
  "$CFG_D" "$CFG_S" "$(join "${LAYERS[@]}")" >"$W/manifest.json"
read -r MAN_D MAN_S < <(blob "$W/manifest.json")
printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"%s","size":%s,"annotations":{"org.opencontainers.image.ref.name":"latest"}}]}' \
  "$MAN_D" "$MAN_S" >"$L/index.json"
rm -rf "$W/l1" "$W/l2" "$W/l3"

# ---- registry ----
PORT=$(free_port)
cat >"$W/registry.yml" <<EOF
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $W/registry
http:
  addr: 127.0.0.1:$PORT
EOF
docker-registry serve "$W/registry.yml" >"$W/registry.log" 2>&1 &
REG_PID=$!
for _ in $(seq 200); do
  python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$PORT/v2/')" 2>/dev/null && break
  sleep 0.05
done
REF="127.0.0.1:$PORT/bench:latest"
skopeo copy --quiet --dest-tls-verify=false "oci:$L:latest" "docker://$REF" >"$W/skopeo.log" 2>&1 \
  || die "skopeo copy failed: $(cat "$W/skopeo.log")"

# ---- daemons ----
bench_start_daemons "$W" "$TASKD_BIN"

c() { ctr --address "$1" -n bench "${@:2}"; }

# one pull + unpack; prints milliseconds; then removes the image (sync GC) and checks that
# nothing is left
pull_once() {
  local sock=$1 t0 t1 left
  t0=$(date +%s%N)
  c "$sock" images pull --plain-http "$REF" >"$W/pull.out" 2>&1 \
    || die "ctr images pull against $sock failed: $(tail -5 "$W/pull.out"); logs in $W"
  t1=$(date +%s%N)
  grep -q unpacking "$W/pull.out" || die "ctr did not unpack against $sock: $(cat "$W/pull.out")"
  c "$sock" images rm --sync "$REF" >/dev/null
  left=$(c "$sock" content ls -q | wc -l)
  [ "$left" = 0 ] || die "$left blobs left after images rm --sync against $sock"
  left=$(c "$sock" snapshots ls | tail -n +2 | wc -l)
  [ "$left" = 0 ] || die "$left snapshots left after images rm --sync against $sock"
  echo $(((t1 - t0) / 1000000))
}

pull_once "$W/cd.sock" >/dev/null # warm-up
pull_once "$W/td.sock" >/dev/null

: >"$W/cd.times"
: >"$W/td.times"
for i in $(seq "$N"); do
  if [ $((i % 2)) = 0 ]; then
    pull_once "$W/cd.sock" >>"$W/cd.times"
    pull_once "$W/td.sock" >>"$W/td.times"
  else
    pull_once "$W/td.sock" >>"$W/td.times"
    pull_once "$W/cd.sock" >>"$W/cd.times"
  fi
done

minmax() { sort -n "$1" | awk 'NR==1 {lo=$1} {hi=$1} END {print lo "–" hi}'; }

CD_MED=$(median "$W/cd.times")
TD_MED=$(median "$W/td.times")
RATIO=$(awk -v a="$TD_MED" -v b="$CD_MED" 'BEGIN {printf "%.2f", a / b}')

cat <<EOF
| daemon | median pull + unpack (ms) | range (ms) | daemon RSS after (KiB) |
|---|---|---|---|
| containerd $(containerd --version | awk '{print $3}') | $CD_MED | $(minmax "$W/cd.times") | $(rss "$CD_PID") |
| taskd ($(basename "$TASKD_BIN")) | $TD_MED | $(minmax "$W/td.times") | $(rss "$TD_PID") |
| **ratio taskd / containerd** | **$RATIO** | | |

image: 3 layers, $((TOTAL / 1000000)) MB compressed (busybox + 2 × 24 MiB random); iterations: $N each (interleaved, after 1 warm-up each); $(nproc) CPUs; $(uname -r); $(date -u +%Y-%m-%dT%H:%MZ)
per-run times (ms): containerd $(paste -sd' ' "$W/cd.times"); taskd $(paste -sd' ' "$W/td.times")
EOF
