#!/usr/bin/env bash
# Coverage-guided fuzzing of taskd's parsers with libFuzzer, on stable Rust (fuzz/).
#
#   scripts/fuzz.sh TARGET SECONDS   fuzz one target (fuzz/src/lib.rs lists them)
#   scripts/fuzz.sh all SECONDS      each target in turn (CI)
#
# The seeds are fuzz/corpus/TARGET/ (kept as they are); what the run learns goes to
# target/fuzz-corpus/TARGET/. A crash stops the run with a non-zero exit, and its input is
# written to target/fuzz-artifacts/: add it to fuzz/corpus/TARGET/ once fixed, where
# `cargo test -p taskd-fuzz` replays it for good.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh
# libfuzzer-sys builds libFuzzer (C++) with the system compiler.
apt_install g++
ensure_cargo

[ "$#" -eq 2 ] || { echo "usage: scripts/fuzz.sh TARGET|all SECONDS" >&2; exit 2; }
what=$1
secs=$2
targets=$(sed -n 's/^    ("\([a-z_]*\)", [a-z_]*),$/\1/p' fuzz/src/lib.rs)
if [ "$what" = all ]; then
    run=$targets
elif grep -qx "$what" <<<"$targets"; then
    run=$what
else
    echo "fuzz: no target $what (targets: $(echo $targets))" >&2
    exit 2
fi

# Only taskd is instrumented (scripts/fuzz-rustc.sh). Built the way scripts/test.sh builds
# (`cargo test --workspace`: the same features everywhere), so after a test run only taskd,
# libFuzzer and the fuzz crate compile.
target_dir=${CARGO_TARGET_DIR:-$PWD/target}
build_log=$(mktemp)
trap 'rm -f "$build_log"' EXIT
RUSTC_WRAPPER="$PWD/scripts/fuzz-rustc.sh" cargo test --workspace --features taskd-fuzz/libfuzzer \
    --bin taskd-fuzz --no-run 2>&1 | tee "$build_log" >&2
bin=$(sed -n 's/.*Executable .*taskd-fuzz.rs (\(.*\))$/\1/p' "$build_log" | tail -1)
[ -x "$bin" ] || { echo "fuzz: no taskd-fuzz binary in the build's output" >&2; exit 1; }
artifacts=$target_dir/fuzz-artifacts
mkdir -p "$artifacts"
for t in $run; do
    work=$target_dir/fuzz-corpus/$t
    mkdir -p "$work"
    echo "fuzz: $t for ${secs}s" >&2
    # -rss_limit_mb: a layer or config that makes taskd allocate without bound is a bug too.
    TASKD_FUZZ_TARGET=$t "$bin" -max_total_time="$secs" -rss_limit_mb=2048 -timeout=10 \
        -print_final_stats=1 -artifact_prefix="$artifacts/$t-" "$work" "fuzz/corpus/$t"
done
