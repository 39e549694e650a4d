#!/usr/bin/env bash
# Builds the C libraries and installs them under PREFIX (default /usr/local):
#   lib/libgearbx.a        gearbx with its llama.cpp inside (the engine API; llama.h too)
#   lib/libgearbx.so       the same as a shared library (exports only gearbx_*; CPU builds:
#                          with --features cuda its static CUDA objects are not PIC)
#   lib/libgearbx-host.a   gearbx without llama.cpp, for programs that link their own
#                          llama.cpp (the attach API; one copy of llama.cpp in the program)
#   include/gearbx.h
#   lib/pkgconfig/gearbx.pc, gearbx-host.pc
# Usage: scripts/install-lib.sh [PREFIX]     (extra cargo flags in CARGO_FLAGS, e.g. --features cuda)
set -euo pipefail
cd "$(dirname "$0")/.."
PREFIX="$(realpath -m "${1:-/usr/local}")"

# Build, and learn which llama.cpp build went in (its static libraries name the objects that
# libgearbx-host.a must not contain).
LLAMA_OUT="$(cargo build --release --lib ${CARGO_FLAGS:-} --message-format=json \
    | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "build-script-executed" and "gearbx-llama-sys" in m["package_id"]:
        print(m["out_dir"])')"
[ -d "$LLAMA_OUT/lib" ] || { echo "install-lib.sh: llama.cpp build output not found" >&2; exit 1; }
# The shared library: not a default crate type (see Cargo.toml), so built on its own.
cargo rustc --release --lib ${CARGO_FLAGS:-} --crate-type cdylib >&2

mkdir -p "$PREFIX/lib/pkgconfig" "$PREFIX/include"
install -m 644 target/release/libgearbx.a "$PREFIX/lib/libgearbx.a"
install -m 755 target/release/libgearbx.so "$PREFIX/lib/libgearbx.so"
install -m 644 include/gearbx.h "$PREFIX/include/gearbx.h"

# libgearbx-host.a: libgearbx.a minus every member that came from llama.cpp's archives. A
# name can occur more than once (ggml-cpu has two quants.c.o) and `ar d` removes the first
# match per name, so repeat until none is left. llvm-ar, not GNU ar: GNU ar rebuilds the
# symbol index through its LTO plugin, which cannot read the bitcode Rust embeds and drops
# the standard library's symbols from the index (the link then fails).
AR="$(command -v llvm-ar || ls /usr/bin/llvm-ar-* 2>/dev/null | sort -V | tail -1 || true)"
[ -n "$AR" ] || { echo "install-lib.sh: llvm-ar not found (apt-get install llvm)" >&2; exit 1; }
host="$PREFIX/lib/libgearbx-host.a"
tmp="$host.tmp"
cp target/release/libgearbx.a "$tmp"
mapfile -t llama_members < <(for a in "$LLAMA_OUT"/lib/lib*.a; do "$AR" t "$a"; done | sort -u)
left() { "$AR" t "$tmp" | grep -cxF -f <(printf '%s\n' "${llama_members[@]}") || true; }
for _ in 1 2 3 4; do
    [ "$(left)" = 0 ] && break
    "$AR" d "$tmp" "${llama_members[@]}"
done
[ "$(left)" = 0 ] || { echo "install-lib.sh: could not remove llama.cpp from $host" >&2; exit 1; }
mv "$tmp" "$host"

# What Rust's standard library and llama.cpp need from the system (rustc's
# --print native-static-libs for this target).
SYSLIBS="-lstdc++ -lgcc_s -lutil -lrt -lpthread -lm -ldl -lc"
VERSION="$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)"
cat > "$PREFIX/lib/pkgconfig/gearbx.pc" <<EOF
prefix=$PREFIX
libdir=\${prefix}/lib
includedir=\${prefix}/include

Name: gearbx
Description: LLM inference on llama.cpp that shifts weight precision per token (llama.cpp inside)
Version: $VERSION
Cflags: -I\${includedir}
Libs: \${libdir}/libgearbx.a $SYSLIBS
EOF
cat > "$PREFIX/lib/pkgconfig/gearbx-host.pc" <<EOF
prefix=$PREFIX
libdir=\${prefix}/lib
includedir=\${prefix}/include

Name: gearbx-host
Description: gearbx for programs that bring their own llama.cpp (link it after this)
Version: $VERSION
Cflags: -I\${includedir}
Libs: \${libdir}/libgearbx-host.a $SYSLIBS
EOF
echo "install-lib.sh: installed into $PREFIX (pkg-config: gearbx, gearbx-host)" >&2
