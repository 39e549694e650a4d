#!/usr/bin/env bash
# Runs the two C programs of tests/c (as built by `cargo test --release --test capi`) under
# valgrind's memcheck and prints its verdict for each. Exit 0 when neither reports an error or
# a definite leak. Slow: a few minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { echo "memcheck.sh: valgrind not found (apt-get install valgrind)" >&2; exit 1; }
BIN=target/tmp/capi
[ -x $BIN/engine ] && [ -x $BIN/frontend ] && [ -d target/tmp/store-capi ] || {
    echo "memcheck.sh: run cargo test --release --test capi first" >&2; exit 1; }
MODEL="$(ls "${GEARBX_CACHE_DIR:-$HOME/.cache/gearbx}"/models/*.gguf | head -1)"
export GEARBX_TIER_CACHE=$PWD/target/tmp/tier-cache
VG=(valgrind --error-exitcode=99 --leak-check=full --show-leak-kinds=definite,indirect
    --errors-for-leak-kinds=definite)
status=0
check() {
    local name=$1; shift
    local log=target/tmp/memcheck-$name.log
    if "${VG[@]}" "$@" >/dev/null 2>"$log"; then verdict=clean; else verdict="FAILED (rc $?)"; status=1; fi
    echo "$name: $verdict; $(grep -E 'ERROR SUMMARY' "$log" | sed 's/==[0-9]*== //'); $(grep -E 'definitely lost' "$log" | sed 's/==[0-9]*== *//' || echo 'no leaks')  [log: $log]"
}
# The engine program also opens the GGUF with a NaN norm epsilon the capi test writes (a model
# llama.cpp would assert on): an error code, with nothing leaked.
check engine $BIN/engine target/tmp/store-capi smollm2:135m "Write one sentence about the sea." 12 \
    $BIN/nan-epsilon.gguf
check frontend $BIN/frontend "$MODEL" "The capital of France is" 16
exit $status
