#!/usr/bin/env bash
# Runs gearbx's fuzz targets (fuzz/fuzz_targets) with libFuzzer through cargo-fuzz on stable
# Rust (-s none: no sanitizer; the targets are safe Rust and look for panics, hangs, runaway
# allocation). Seeds from real formats are in fuzz/seeds/<target>; the corpus grows in
# fuzz/corpus/<target> (ignored by git); a crash is saved under fuzz/artifacts/<target>/ and
# fails the run (make it a regression test, then fix it).
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]     (default: 60 s, every target)
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-60}
shift || true
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(model_name manifest flag_values gguf tier_cache)
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
for t in "${TARGETS[@]}"; do
    mkdir -p "fuzz/corpus/$t"
    cp -n "fuzz/seeds/$t"/* "fuzz/corpus/$t/" 2>/dev/null || true
    echo "fuzz.sh: $t for ${SECS}s" >&2
    if ! cargo fuzz run -s none "$t" "fuzz/corpus/$t" -- -max_total_time="$SECS" \
        -rss_limit_mb=2048 -malloc_limit_mb=1024 -timeout=10 -max_len=65536 \
        -print_final_stats=1 >"fuzz/$t.log" 2>&1; then
        tail -40 "fuzz/$t.log" >&2
        echo "fuzz.sh: $t found a crash (fuzz/artifacts/$t/)" >&2
        exit 1
    fi
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "fuzz/$t.log")
    echo "fuzz.sh: $t: $runs executions, no crash" >&2
done
