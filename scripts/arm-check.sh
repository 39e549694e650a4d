#!/usr/bin/env bash
# gearbx's C kernels on AArch64 without Arm hardware: builds the kernels and their parity driver
# (tests/arm/kernel_parity.c) with the Debian cross compiler and runs it under user-mode QEMU,
# so every NEON twin is checked against its scalar reference. Installs gcc-aarch64-linux-gnu and
# qemu-user when missing (apt, with sudo when not root).
set -euo pipefail
cd "$(dirname "$0")/.."
missing=()
command -v aarch64-linux-gnu-gcc >/dev/null || missing+=(gcc-aarch64-linux-gnu)
command -v qemu-aarch64 >/dev/null || missing+=(qemu-user)
if [ ${#missing[@]} -gt 0 ]; then
    echo "arm-check.sh: installing ${missing[*]}" >&2
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
fi
mkdir -p target/arm
aarch64-linux-gnu-gcc -O3 -std=c11 -Wall -Wextra -Werror -ffp-contract=off -static \
    -o target/arm/kernel-parity \
    csrc/generic/entropy.c csrc/neon/entropy_neon.c tests/arm/kernel_parity.c -lm
qemu-aarch64 target/arm/kernel-parity
