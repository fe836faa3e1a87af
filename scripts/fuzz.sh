#!/bin/sh
# Runs every coverage-guided fuzz target (fuzz/fuzz_targets/) for FUZZ_SECONDS seconds each (default 30), on
# the stable toolchain: cargo-fuzz needs nightly-only rustc flags, which RUSTC_BOOTSTRAP=1 allows on stable.
# Installs cargo-fuzz from crates.io when it is missing. Each target starts from its committed seeds in
# fuzz/corpus/TARGET and keeps what it finds in fuzz/work/TARGET (not committed); a crash leaves its input in
# fuzz/artifacts/TARGET and makes the run fail after every target had its turn.
#
# usage: scripts/fuzz.sh [TARGET...]   (FUZZ_SECONDS=N)
set -eu

cd "$(dirname "$0")/../fuzz"
seconds=${FUZZ_SECONDS:-30}
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz from crates.io"
    cargo install cargo-fuzz --locked
fi

# Sanitizer none: the code is safe Rust, and the fuzzer runs several times faster without ASan. Debug
# assertions on, so integer overflow panics.
flags="--sanitizer none --debug-assertions"
# shellcheck disable=SC2086
cargo fuzz build $flags

if [ $# -eq 0 ]; then
    set -- $(cargo fuzz list)
fi

failed=""
for target in "$@"; do
    mkdir -p "work/$target"
    log="work/$target.log"
    echo "fuzz: $target for $seconds s"
    # shellcheck disable=SC2086
    if cargo fuzz run $flags "$target" "work/$target" "corpus/$target" -- \
        -max_total_time="$seconds" -print_final_stats=1 >"$log" 2>&1; then
        status=ok
    else
        status=FAILED
        failed="$failed $target"
    fi
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1)
    echo "fuzz: $target $status execs=${runs:-?} execs_per_s=${rate:-?} ${cov:-} corpus=$(ls "work/$target" | wc -l)"
    if [ "$status" = FAILED ]; then
        grep -E 'panicked|Test unit written|SUMMARY|ERROR' "$log" | head -5 | sed 's/^/fuzz:   /'
    fi
done

if [ -n "$failed" ]; then
    echo "fuzz: crashes or errors in:$failed (inputs in fuzz/artifacts/, logs in fuzz/work/*.log)"
    exit 1
fi
echo "fuzz: every target ran $seconds s without a crash"
