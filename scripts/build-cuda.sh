#!/usr/bin/env bash
# Builds gearbx-run and gearbx-bench with --features cuda into $CARGO_TARGET_DIR (default
# target-cuda: cargo locks its whole target directory, so a CUDA build in target/ would block
# every CPU build for its ~20 minutes).
#   TOOLKIT=/usr/local/cuda scripts/build-cuda.sh        a normal CUDA toolkit
#   WHEELS=1 TOOLKIT=DIR scripts/build-cuda.sh           a toolkit assembled from NVIDIA's PyPI
#                                                        wheels (no static cuBLAS: links the
#                                                        shared one through DIR/static-shim)
# ARCHS (default 90a, the H100) goes to CMAKE_CUDA_ARCHITECTURES for llama.cpp and our kernels.
set -euo pipefail
T=${TOOLKIT:-/usr/local/cuda}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target-cuda}
export CUDAToolkit_ROOT=$T CMAKE_CUDA_COMPILER=$T/bin/nvcc CMAKE_CUDA_ARCHITECTURES=${ARCHS:-90a}
export PATH=$T/bin:$PATH
# RUSTFLAGS replaces .cargo/config.toml's flags: repeat its CPU baseline.
flags="-C target-cpu=x86-64-v3"
if [ "${WHEELS:-0}" = 1 ]; then
    export CUDA_LIBRARY_PATH=$T:$T/static-shim
    flags="$flags -C link-arg=-Wl,--push-state,--no-as-needed -C link-arg=-lcublas -C link-arg=-lcublasLt -C link-arg=-Wl,--pop-state"
fi
export RUSTFLAGS="$flags"
# An explicit --target keeps RUSTFLAGS away from build scripts.
cargo build --release --features cuda --target x86_64-unknown-linux-gnu --bins
echo "built: $CARGO_TARGET_DIR/x86_64-unknown-linux-gnu/release/{gearbx-run,gearbx-bench}"
