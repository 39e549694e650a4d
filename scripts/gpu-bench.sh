#!/usr/bin/env bash
# The GPU measurements of the README (H200 since 2026-12), run on the GPU machine (no Rust there: the binaries are
# built here with --features cuda, see README "CUDA"). Each step writes its results under
# $OUT (default ./gpu-results). Steps:
#   kernels            kernel parity (CUDA and C twin vs ggml) and kernel throughput
#   bench SHAPE [R]    synthetic F16 model of SHAPE (llama-3.2-1b | llama-3.1-8b), then
#                      gearbx-bench gpu on it with R rounds (default 3) of TOKENS tokens
#                      (default 128), CUDA graphs on, the gears with our decode kernels
#                      (KERNELS=llama.cpp: with llama.cpp's, as the baselines always are);
#                      with HEAD=1 the output head is managed too (--manage-output; the
#                      baselines quantize theirs to the same types), so the low and mid
#                      gears' heads are products of our kernels too;
#                      with NOGRAPHS=1 also again with GGML_CUDA_DISABLE_GRAPHS=1, with
#                      REBUILD=1 also with the gearbox graph rebuilt every token (how gears
#                      ran before each had its own CUDA graph), with REUSEOFF=1 also with
#                      LLAMA_GRAPH_REUSE_DISABLE=1 for the whole process (the controls)
#   memory SHAPE       resident bytes of the float ladder and of the Q8_0-topped one
#   smollm2 GGUF       high gear vs plain greedy tokens on a real model, and auto mode
#   lossless SHAPE [R] lossless mode on the synthetic model of SHAPE against its high gear,
#                      acceptance replayed from docs/traces/lossless-cycles.json (R rounds,
#                      default 3)
#   lossless-text GGUF TEXT [N]
#                      lossless mode end to end on a real model: N windows (default 40) of
#                      TEXT drafting wherever allowed (identity over N x 256 tokens), then 8
#                      windows with the controller (speed)
# BIN (default: the directory of this script's ../target/release) holds gearbx-bench and
# gearbx-run; MODELS (default /tmp/gearbx-models) the generated models.
set -euo pipefail
BIN=${BIN:-$(cd "$(dirname "$0")/.." && pwd)/target/release}
OUT=${OUT:-gpu-results}
MODELS=${MODELS:-/tmp/gearbx-models}
TRACES=$(cd "$(dirname "$0")/.." && pwd)/docs/traces
mkdir -p "$OUT" "$MODELS"
step=${1:?step: kernels, bench SHAPE [ROUNDS] or smollm2 GGUF}
case $step in
kernels)
    "$BIN/gearbx-bench" kernels --blocks 65536 | tee "$OUT/kernels.md"
    ;;
bench)
    shape=${2:?shape}
    rounds=${3:-3}
    model=$MODELS/$shape-f16.gguf
    [ -f "$model" ] || "$BIN/gearbx-bench" synth --shape "$shape" --out "$model"
    # Auto mode replays SmolLM2's gears on Austen (monitor min-duration 2, the default, and 8).
    traces=(--trace "$TRACES/smollm2-austen-min2.txt" --trace "$TRACES/smollm2-austen-min8.txt")
    head=()
    [ "${HEAD:-0}" = 1 ] && head=(--manage-output)
    "$BIN/gearbx-bench" gpu --model "$model" "${traces[@]}" --rounds "$rounds" "${head[@]}" \
        --tokens "${TOKENS:-128}" --decode-kernels "${KERNELS:-gearbx}" --out "$OUT/$shape" \
        --baselines "$MODELS" 2>&1 | tee "$OUT/$shape.log"
    if [ "${REBUILD:-0}" = 1 ]; then
        "$BIN/gearbx-bench" gpu --model "$model" "${traces[@]}" --rounds "$rounds" --rebuild-graphs \
            --out "$OUT/$shape-rebuild" --baselines "$MODELS" 2>&1 | tee "$OUT/$shape-rebuild.log"
    fi
    if [ "${REUSEOFF:-0}" = 1 ]; then
        LLAMA_GRAPH_REUSE_DISABLE=1 "$BIN/gearbx-bench" gpu --model "$model" "${traces[@]}" \
            --rounds "$rounds" --out "$OUT/$shape-reuse-off" --baselines "$MODELS" 2>&1 | tee "$OUT/$shape-reuse-off.log"
    fi
    if [ "${NOGRAPHS:-0}" = 1 ]; then
        GGML_CUDA_DISABLE_GRAPHS=1 "$BIN/gearbx-bench" gpu --model "$model" "${traces[@]}" \
            --rounds "$rounds" --out "$OUT/$shape-nographs" --baselines "$MODELS" 2>&1 | tee "$OUT/$shape-nographs.log"
    fi
    ;;
memory)
    # What each tier plan keeps resident on the GPU: the float ladder against the quantized
    # top (the model loaded as Q8_0), with all three gears and with low and high only. Low is
    # Q4_0 (built on the GPU by our kernels); the top's mid (Q6_K) is built on the CPU.
    shape=${2:?shape}
    model=$MODELS/$shape-f16.gguf
    [ -f "$model" ] || "$BIN/gearbx-bench" synth --shape "$shape" --out "$model"
    for plan in "low=Q4_0" "low=Q4_0,high=Q8_0" "low=Q4_0,high=Q8_0 --gears low,high"; do
        # shellcheck disable=SC2086
        "$BIN/gearbx-bench" memory --model "$model" --tier-cache "$MODELS/tiers" --tiers $plan
    done | tee "$OUT/memory-$shape.jsonl"
    ;;
smollm2)
    gguf=${2:?gguf}
    run() { "$BIN/gearbx-run" "$gguf" --temp 0 -n 256 --json "$@" -p "Write a short story about a lighthouse keeper."; }
    run --gear off >"$OUT/smollm2-off.json"
    run --gear high >"$OUT/smollm2-high.json"
    run --gear auto >"$OUT/smollm2-auto.json"
    run --gear auto --lossless >"$OUT/smollm2-lossless.json"
    python3 - "$OUT" <<'PY'
import json, sys
o = sys.argv[1]
r = {k: json.load(open(f"{o}/smollm2-{k}.json")) for k in ("off", "high", "auto", "lossless")}
same = r["off"]["text"] == r["high"]["text"]
print(f"high gear greedy text == plain: {same}; lossless == high: {r['lossless']['text'] == r['high']['text']}")
for k, v in r.items():
    print(k, {x: v.get(x) for x in ("decode_tokens_per_s", "generated_tokens", "entropy_on")}, (v.get("gears") or {}).get("token_fraction"))
PY
    ;;
lossless)
    shape=${2:?shape}
    rounds=${3:-3}
    model=$MODELS/$shape-f16.gguf
    [ -f "$model" ] || "$BIN/gearbx-bench" synth --shape "$shape" --out "$model"
    # Q4_0 drafts: the fastest low tier on CUDA (built on the GPU).
    "$BIN/gearbx-bench" lossless --model "$model" --cycles "$TRACES/lossless-cycles.json" \
        --tiers low=Q4_0 --tokens 256 --rounds "$rounds" --out "$OUT/lossless-$shape" 2>&1 | tee "$OUT/lossless-$shape.log"
    ;;
lossless-text)
    gguf=${2:?gguf}
    text=${3:?text}
    n=${4:-40}
    name=$(basename "$gguf" .gguf)
    "$BIN/gearbx-bench" lossless --model "$gguf" --text "$text" --tokens 256 --rounds "$n" \
        --draft-always --out "$OUT/lossless-$name-always" 2>&1 | tee "$OUT/lossless-$name-always.log"
    "$BIN/gearbx-bench" lossless --model "$gguf" --text "$text" --tokens 256 --rounds 8 \
        --out "$OUT/lossless-$name" 2>&1 | tee "$OUT/lossless-$name.log"
    ;;
*)
    echo "unknown step $step" >&2
    exit 2
    ;;
esac
