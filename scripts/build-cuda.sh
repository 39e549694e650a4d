#!/usr/bin/env bash
# Builds gearbx-run and gearbx-bench with --features cuda into $CARGO_TARGET_DIR (default
# target-cuda: cargo locks its whole target directory, so a CUDA build in target/ would block
# every CPU build for its ~20 minutes).
#   TOOLKIT=/usr/local/cuda scripts/build-cuda.sh                  a CUDA toolkit
#   TOOLKIT=~/.cache/cuda-13.0-wheels/cuda scripts/build-cuda.sh   one assembled from NVIDIA's
#                                                                  PyPI wheels (../shared/device)
# ARCHS (default 90a: H100/H200) goes to CMAKE_CUDA_ARCHITECTURES for llama.cpp and our kernels.
# The binaries link the CUDA runtime statically and cuBLAS and the driver dynamically
# (llama-sys/build.rs): the machine that runs them needs libcublas.so.13, libcublasLt.so.13
# and the driver's libcuda.so.1.
set -euo pipefail
cd "$(dirname "$0")/.."
T=${TOOLKIT:-/usr/local/cuda}
[ -x "$T/bin/nvcc" ] || { echo "build-cuda.sh: no nvcc in $T/bin (set TOOLKIT)" >&2; exit 1; }
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target-cuda}
export CUDAToolkit_ROOT=$T CMAKE_CUDA_COMPILER=$T/bin/nvcc CMAKE_CUDA_ARCHITECTURES=${ARCHS:-90a}
export PATH=$T/bin:$PATH
cargo build --release --features cuda --bins
cargo build --release -p gearbx-bench --features cuda
echo "built: $CARGO_TARGET_DIR/release/{gearbx-run,gearbx-bench}"
