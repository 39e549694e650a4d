#!/usr/bin/env bash
# The H200 measurement of docs/kv/h200-2026-12-03 (run by hand, not in CI). Here: put the patched
# llama.cpp tree (target/release/build/gearbx-llama-sys-*/out/llama.cpp, other backends removed),
# mkmodel.py and the gguf wheels in target/dev, copy this script there, carry target/dev.
# On the GPU machine: libllama (pinned + our patches) with CUDA, tests/gpu/kv_decode.c against
# it, an 8B-shape F16 model and its Q4_0 copy; decode speed at 8k and 32k tokens per cache type.
set -u
D=$(cd "$(dirname "$0")" && pwd)
R=$(cd "$D/../.." && pwd)
export PATH=/usr/local/cuda/bin:$PATH
L=$OUT/log.txt
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader; nvcc --version | tail -1; python3 --version; } >$OUT/machine.txt 2>&1
( python3 -c "import numpy, torch; print(numpy.__version__, torch.__version__)" >>$L 2>&1; python3 -m pip install -q --no-deps --no-index --find-links "$D/wheels" --target /tmp/pylib gguf pyyaml tqdm requests urllib3 idna certifi charset-normalizer >>$L 2>&1; PYTHONPATH=/tmp/pylib python3 "$D/mkmodel.py" 8b /tmp/m-f16.gguf >>$L 2>&1; echo "model rc $?" >>$L ) &
MK=$!
t0=$(date +%s)
cmake -S "$D/llama.cpp" -B /tmp/lb -G Ninja -DGGML_CUDA=ON -DGGML_NATIVE=OFF -DCMAKE_CUDA_ARCHITECTURES=90a \
  -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_TOOLS=OFF \
  -DLLAMA_BUILD_APP=OFF -DLLAMA_BUILD_COMMON=OFF -DLLAMA_CURL=OFF -DCMAKE_BUILD_TYPE=Release >>$L 2>&1 || { echo "cmake failed" >>$L; tail -30 $L; exit 1; }
ninja -C /tmp/lb -j16 llama >>$L 2>&1 || { echo "build failed" >>$L; tail -30 $L; exit 1; }
echo "build $(( $(date +%s) - t0 )) s" | tee -a $L
LIBS=$(dirname "$(find /tmp/lb -name 'libllama.so' | head -1)")
gcc -O2 -std=c11 -I"$D/llama.cpp/include" -I"$D/llama.cpp/ggml/include" "$R/tests/gpu/kv_decode.c" \
  -L"$LIBS" -L/tmp/lb/bin -lllama -lggml -lggml-base -Wl,-rpath,"$LIBS":/tmp/lb/bin -o /tmp/kvd >>$L 2>&1 || { echo "kv_decode build failed" >>$L; tail -20 $L; exit 1; }
wait $MK
echo "| model | cache | depth | decode tok/s |" >$OUT/bench.md
echo "|---|---|---|---|" >>$OUT/bench.md
for m in f16 q4_0; do
  [ $m = q4_0 ] && /tmp/kvd --quantize /tmp/m-f16.gguf /tmp/m-q4_0.gguf q4_0 >>$L 2>&1
  for c in f16 q8_0 q4_0; do for d in 8192 32768; do
    /tmp/kvd /tmp/m-$m.gguf $c $d 64 3 2>>$L | tee -a $OUT/bench.md
  done; done
done
echo "total $(( $(date +%s) - t0 )) s" | tee -a $L
