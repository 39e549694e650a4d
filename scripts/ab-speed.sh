#!/usr/bin/env bash
# Decode speed of two gearbx-run builds, interleaved in rounds on one machine (for checking that
# a refactor changes nothing): each round runs both at each gear, 400 greedy tokens past EOS,
# and prints the median ratio B/A per gear.
#   scripts/ab-speed.sh A_BIN B_BIN [MODEL] [ROUNDS]
set -euo pipefail
A=$1 B=$2
MODEL=${3:-$HOME/.cache/gearbx/models/SmolLM2-135M-Instruct.Q4_1.gguf}
ROUNDS=${4:-6}
for round in $(seq "$ROUNDS"); do
    for g in low mid high auto; do
        for bin in "$A" "$B"; do
            "$bin" "$MODEL" --json -n 400 --temp 0 --ignore-eos -t 2 --gear "$g" \
                "Write a story about a lighthouse keeper." 2>/dev/null |
                python3 -c 'import json,sys; print(json.load(sys.stdin)["decode_tokens_per_s"])' |
                sed "s|^|$g $([ "$bin" = "$A" ] && echo a || echo b) |"
        done
    done
done | python3 -c '
import sys, statistics, collections
runs = collections.defaultdict(lambda: {"a": [], "b": []})
for line in sys.stdin:
    g, which, v = line.split()
    runs[g][which].append(float(v))
for g, r in runs.items():
    ratios = [b / a for a, b in zip(r["a"], r["b"])]
    print(f"{g:5} B/A median {statistics.median(ratios):.3f} over {len(ratios)} rounds "
          f"(A {statistics.median(r[\"a\"]):.1f} tok/s, B {statistics.median(r[\"b\"]):.1f})")
'
