#!/usr/bin/env bash
# Installs the system packages the build needs (Debian/Ubuntu), only if they are missing:
# cmake and a C/C++ compiler build llama.cpp; GNU patch applies our patch series to it
# (vendor/patches); libclang lets bindgen read llama.h; pkg-config
# is how the C tests (and C users) find libgearbx; llvm-ar makes libgearbx-host.a.
set -euo pipefail
missing=()
command -v cmake >/dev/null || missing+=(cmake)
command -v patch >/dev/null || missing+=(patch)
command -v clang >/dev/null || missing+=(clang)
ls /usr/lib/llvm-*/lib/libclang*.so* >/dev/null 2>&1 || missing+=(libclang-dev)
command -v pkg-config >/dev/null || missing+=(pkg-config)
{ command -v llvm-ar || ls /usr/bin/llvm-ar-*; } >/dev/null 2>&1 || missing+=(llvm)
command -v python3 >/dev/null || missing+=(python3)
# The server tests use curl for the raw NDJSON/SSE framing.
command -v curl >/dev/null || missing+=(curl)
python3 -m pip --version >/dev/null 2>&1 || missing+=(python3-pip)
if [ ${#missing[@]} -gt 0 ]; then
    echo "deps.sh: installing ${missing[*]}" >&2
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
fi
command -v cargo >/dev/null || { echo "deps.sh: cargo not found: install Rust from rustup" >&2; exit 1; }
# make test runs clippy.
cargo clippy --version >/dev/null 2>&1 || rustup component add clippy
