#!/bin/sh
# RUSTC_WRAPPER of scripts/fuzz.sh: adds libFuzzer's coverage instrumentation (SanitizerCoverage,
# stable rustc flags) to the one crate being fuzzed, taskd built with its `fuzzing` feature.
# Every other crate compiles as in `cargo test`, so the fuzz build reuses those artifacts.
rustc=$1
shift
case " $* " in
*" --crate-name taskd "*'feature="fuzzing"'*)
    exec "$rustc" "$@" -Cpasses=sancov-module \
        -Cllvm-args=-sanitizer-coverage-level=4 \
        -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
        -Cllvm-args=-sanitizer-coverage-pc-table \
        -Cllvm-args=-sanitizer-coverage-trace-compares \
        --cfg fuzzing
    ;;
esac
exec "$rustc" "$@"
