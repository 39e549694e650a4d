#!/usr/bin/env python3
"""Where one decode token's GPU time goes, from scripts/mmv-gpu.sh's ncu logs.

    python3 scripts/ncu-token.py ncu-8b-q4_0.csv[.gz] [TOKS_PER_S ...]

The log holds one decode step per mode of tests/gpu/mmv_decode (llama.cpp's kernels, ours on
every product offered, the same without programmatic dependent launch, ours where preferred),
each in its own context and so on its own CUDA stream: modes are told apart by stream, in order
of appearance. Prints, per mode, the kernels' summed durations (gpu__time_duration.sum, ns) by
kind; given the measured tokens/s of each mode (decode.md, same order), also the token's wall
time and the difference. ncu runs kernels one at a time, each with its own start-up, so the
sum overstates a token's GPU time (by about 1.5 us a kernel on the H100): compare modes, not
the sum with the wall time."""

import csv
import gzip
import sys

MODES = ["llama.cpp", "ours on every product", "ours without PDL", "ours where preferred"]
# (kind, substrings of the kernel name), first match wins
KINDS = [
    ("products: gearbx mmv", ["mmv_kernel"]),
    ("activations: gearbx quantize", ["quantize_codes_kernel"]),
    ("products: llama.cpp mmvq", ["mul_mat_vec_q"]),
    ("activations: llama.cpp quantize", ["quantize_q8_1", "quantize_mmq"]),
    ("products: float", ["mul_mat_vec_f", "mul_mat_f", "gemm", "gemv"]),
    ("attention", ["flash_attn"]),
    ("norms", ["rms_norm", "norm_f32"]),
]


def kind(name):
    for k, subs in KINDS:
        if any(s in name for s in subs):
            return k
    return "other (rope, copies, add, glu, ...)"


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    path = sys.argv[1]
    with (gzip.open if path.endswith(".gz") else open)(path, "rt", newline="") as f:
        rows = [r for r in csv.reader(line for line in f if line.startswith('"'))]
    if not rows:
        sys.exit(f"{path}: no ncu CSV rows (did ncu run? see log.txt)")
    head, rows = rows[0], rows[1:]
    col = {h: i for i, h in enumerate(head)}
    streams, per = [], {}
    for r in rows:
        if r[col["Metric Name"]] != "gpu__time_duration.sum":
            continue
        s = r[col["Stream"]]
        if s not in per:
            streams.append(s)
            per[s] = {}
        k = kind(r[col["Kernel Name"]])
        ns, n = per[s].get(k, (0.0, 0))
        per[s][k] = (ns + float(r[col["Metric Value"]].replace(",", "")), n + 1)
    tps = [float(t) for t in sys.argv[2:]]
    names = MODES[: len(streams)] if len(streams) <= len(MODES) else streams
    kinds = [k for k, _ in KINDS] + ["other (rope, copies, add, glu, ...)"]
    print("| kind | " + " | ".join(f"{m}: us (kernels)" for m in names) + " |")
    print("|---|" + "---|" * len(names))
    for k in kinds:
        if all(k not in per[s] for s in streams):
            continue
        cells = [per[s].get(k, (0.0, 0)) for s in streams]
        print(f"| {k} | " + " | ".join(f"{ns / 1e3:.1f} ({n})" for ns, n in cells) + " |")
    totals = [sum(ns for ns, _ in per[s].values()) / 1e3 for s in streams]
    counts = [sum(n for _, n in per[s].values()) for s in streams]
    print("| **all kernels** | " + " | ".join(f"**{t:.1f}** ({n})" for t, n in zip(totals, counts)) + " |")
    if tps:
        wall = [1e6 / t for t in tps[: len(streams)]]
        print("| token wall time (from tok/s) | " + " | ".join(f"{w:.1f}" for w in wall) + " |")
        print("| wall minus kernels | " + " | ".join(f"{w - t:.1f}" for w, t in zip(wall, totals)) + " |")


if __name__ == "__main__":
    main()
