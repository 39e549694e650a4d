#!/usr/bin/env bash
# gearbx's C/C++ side on AArch64 without Arm hardware (README "Arm and Apple"):
#  1. cross-compiles, with CMake and the Debian cross compilers, the pinned llama.cpp with our
#     patch series (as gearbx-llama-sys extracts and patches it under target/release/build),
#     its CPU backend included, and our C kernels of csrc/ (tests/arm/CMakeLists.txt);
#  2. runs under user-mode QEMU the two parity drivers built with them: every NEON quantizer
#     against the scalar twin and the scalar twin against ggml-base's reference quantizers as
#     that AArch64 build compiles them, on the adversarial classes of src/kernels/parity.rs
#     (exported by examples/kernel_vectors); the NEON entropy pass against its reference.
# Installs gcc/g++-aarch64-linux-gnu, qemu-user and cmake when missing (apt, sudo when not
# root). Needs cargo: the source tree and the vectors come from the Rust build.
set -euo pipefail
cd "$(dirname "$0")/.."
missing=()
command -v aarch64-linux-gnu-gcc >/dev/null || missing+=(gcc-aarch64-linux-gnu)
command -v aarch64-linux-gnu-g++ >/dev/null || missing+=(g++-aarch64-linux-gnu)
command -v qemu-aarch64 >/dev/null || missing+=(qemu-user)
command -v cmake >/dev/null || missing+=(cmake)
if [ ${#missing[@]} -gt 0 ]; then
    echo "arm-check.sh: installing ${missing[*]}" >&2
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
fi
OUT=target/arm
mkdir -p $OUT
# The vectors, and through that build the patched llama.cpp tree.
cargo run --release --quiet --example kernel_vectors -- $OUT/vectors.bin
# The tree extracted and patched last (its stamp names the pin and the patches applied).
LLAMA_SRC=$(dirname "$(ls -t "$PWD"/target/release/build/gearbx-llama-sys-*/out/llama.cpp.stamp | head -1)")/llama.cpp
[ -f "$LLAMA_SRC/CMakeLists.txt" ] || { echo "arm-check.sh: no llama.cpp tree under target/release/build" >&2; exit 1; }
echo "arm-check.sh: llama.cpp for aarch64 from $LLAMA_SRC"
cmake -S tests/arm -B $OUT/cmake -DLLAMA_SRC="$LLAMA_SRC" -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_SYSTEM_NAME=Linux -DCMAKE_SYSTEM_PROCESSOR=aarch64 \
    -DCMAKE_C_COMPILER=aarch64-linux-gnu-gcc -DCMAKE_CXX_COMPILER=aarch64-linux-gnu-g++ \
    -DGGML_CCACHE=OFF >$OUT/cmake.log 2>&1 || { cat $OUT/cmake.log >&2; exit 1; }
cmake --build $OUT/cmake -j"$(nproc)" --target llama ggml-cpu requant_parity kernel_parity \
    >$OUT/build.log 2>&1 || { tail -40 $OUT/build.log >&2; exit 1; }
echo "arm-check.sh: built libllama.a, libggml-cpu.a, libggml-base.a and our kernels for aarch64"
qemu-aarch64 $OUT/cmake/requant_parity $OUT/vectors.bin
qemu-aarch64 $OUT/cmake/kernel_parity
