#!/usr/bin/env bash
# The H200 measurement of docs/gpu/h200-2026-12-03-mmv (run by hand, not in CI). Here: put the
# patched llama.cpp tree (target/release/build/gearbx-llama-sys-*/out/llama.cpp, other backends
# removed), mkmodel.py and the gguf wheels in target/dev, copy this script there, carry
# target/dev. On the GPU machine: libllama (pinned + our patches) with CUDA; tests/gpu/mmv_test.cu
# (our decode products: parity with the scalar twin, width invariance, speed against llama.cpp's
# mmvq through ggml) and tests/gpu/mmv_decode.c (8B- and 1B-shape models decoded with
# llama.cpp's kernels and with ours: tokens/s and KL; then one token of each under ncu) against it.
set -u
D=$(cd "$(dirname "$0")" && pwd)
R=$(cd "$D/../.." && pwd)
export PATH=/usr/local/cuda/bin:$PATH
L=$OUT/log.txt
{ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.memory --format=csv,noheader; nvcc --version | tail -1; ncu --version | tail -1; } >$OUT/machine.txt 2>&1
# MMV_ONLY=1: the kernel test alone (no models, no decode), against a ggml built without its
# flash-attention kernels (half the build time; the products it compares are not affected).
# MKSKIP=1: /tmp/m8b-f16.gguf and /tmp/m1b-f16.gguf are there already (e.g. from gearbx-bench
# synth); MK_SIZES (default "8b 1b"): the synthetic F16 models made otherwise; DECODE_ROUNDS
# (default 3): rounds of the end-to-end decode; DECODE_MODELS (default "8b-q4_k 8b-q4_0 8b-q8_0
# 1b-q4_k 1b-q4_0 1b-q8_0") the models decoded; NCU_MODELS those profiled (empty: none).
# MMV_PHASE=build: only build libllama and the tests (e.g. beside other work, under nice,
# NINJA_JOBS=12);
# MMV_PHASE=run: only run them, built by an earlier MMV_PHASE=build.
[ -n "${MMV_ONLY:-}" ] && MKSKIP=1
FA=ON; TARGETS=llama; LLAMA_LIB=-lllama
[ -n "${MMV_ONLY:-}" ] && { FA=OFF; TARGETS="ggml ggml-cuda"; LLAMA_LIB=; }
[ "${MMV_PHASE:-}" = run ] && MKSKIP=1
( [ -n "${MKSKIP:-}" ] && exit 0; python3 -m pip install -q --no-deps --no-index --find-links "$D/wheels" --target /tmp/pylib gguf pyyaml tqdm requests urllib3 idna certifi charset-normalizer >>$L 2>&1
  for s in ${MK_SIZES:-8b 1b}; do PYTHONPATH=/tmp/pylib python3 "$D/mkmodel.py" $s /tmp/m$s-f16.gguf >>$L 2>&1; echo "model $s rc $?" >>$L; done ) &
MK=$!
t0=$(date +%s)
INC="-I$D/llama.cpp/include -I$D/llama.cpp/ggml/include -I$R/csrc/cuda -I$R/csrc/generic"
if [ "${MMV_PHASE:-}" != run ]; then
nvcc -O3 -arch=sm_90a -fmad=false -std=c++17 $INC -c "$R/csrc/cuda/mmv.cu" -o /tmp/mmv.o >>$L 2>&1 &
MMVO=$!
cmake -S "$D/llama.cpp" -B /tmp/lb -G Ninja -DGGML_CUDA=ON -DGGML_CUDA_FA=$FA -DGGML_NATIVE=OFF -DCMAKE_CUDA_ARCHITECTURES=90a \
  -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_TOOLS=OFF \
  -DLLAMA_BUILD_APP=OFF -DLLAMA_BUILD_COMMON=OFF -DLLAMA_CURL=OFF -DCMAKE_BUILD_TYPE=Release >>$L 2>&1 || { echo "cmake failed" >>$L; exit 1; }
ninja -C /tmp/lb -j${NINJA_JOBS:-16} $TARGETS >>$L 2>&1 || { echo "build failed" >>$L; tail -30 $L; exit 1; }
echo "build $(( $(date +%s) - t0 )) s" | tee -a $L
LIBS=$(dirname "$(find /tmp/lb -name 'libggml.so' | head -1)")
LNK="-L$LIBS -L/tmp/lb/bin $LLAMA_LIB -lggml -lggml-base -lggml-cuda -Xlinker -rpath=$LIBS:/tmp/lb/bin"
wait $MMVO && [ -f /tmp/mmv.o ] &&
nvcc -O3 -arch=sm_90a -fmad=false -std=c++17 -DWITH_GGML $INC "$R/tests/gpu/mmv_test.cu" /tmp/mmv.o $LNK -o /tmp/mmv_test >>$L 2>&1 &&
{ [ -n "${MMV_ONLY:-}" ] || { gcc -O2 -std=c11 $INC -I/usr/local/cuda/include -c "$R/tests/gpu/mmv_decode.c" -o /tmp/mmvd.o >>$L 2>&1 &&
nvcc /tmp/mmvd.o /tmp/mmv.o $LNK -o /tmp/mmvd >>$L 2>&1; }; } || { echo "test build failed" >>$L; tail -30 $L; exit 1; }
fi
wait $MK
[ "${MMV_PHASE:-}" = build ] && exit 0
if [ -n "${MMV_ONLY:-}" ]; then
  timeout 360 /tmp/mmv_test ${MMV_TEST_ARGS:-} >$OUT/kernels.md 2>>$L; echo "mmv_test rc $?" | tee -a $L
  exit 0
fi
DM=${DECODE_MODELS:-8b-q4_k 8b-q4_0 8b-q8_0 1b-q4_k 1b-q4_0 1b-q8_0}
( for m in $DM; do /tmp/mmvd --quantize /tmp/m${m%-*}-f16.gguf /tmp/m$m.gguf ${m#*-} >>$L 2>&1; echo "quantized $m rc $?" >>$L; done ) &
QZ=$!
timeout 360 /tmp/mmv_test ${MMV_TEST_ARGS:-} >$OUT/kernels.md 2>>$L; echo "mmv_test rc $?" | tee -a $L
wait $QZ
echo "| model | llama.cpp kernels tok/s | ours on every product offered tok/s | the same without PDL tok/s | ours where preferred (gearbx) tok/s | KL ours vs llama.cpp: mean / max / argmax agree | KL llama.cpp per token vs batched: mean / max |" >$OUT/decode.md
echo "|---|---|---|---|---|---|---|" >>$OUT/decode.md
for m in $DM; do
  ls -l /tmp/m$m.gguf >>$L 2>&1
  timeout 150 /tmp/mmvd /tmp/m$m.gguf 64 130 ${DECODE_ROUNDS:-3} >>$OUT/decode.md 2>>$L
done
# One decode token of each mode under ncu (kernel durations, clocks and caches as in a run):
# where a token's time goes. Modes in stream order: llama.cpp, ours, ours without PDL, preferred.
for m in ${NCU_MODELS-8b-q4_0 8b-q8_0 1b-q4_0}; do
  MMVD_PROFILE=1 timeout 120 ncu --profile-from-start off --metrics gpu__time_duration.sum --csv --print-units base \
    --cache-control none --clock-control none --log-file $OUT/ncu-$m.csv /tmp/mmvd /tmp/m$m.gguf 16 8 1 >>$L 2>&1
  echo "ncu $m rc $?" >>$L
done
echo "total $(( $(date +%s) - t0 )) s" | tee -a $L
