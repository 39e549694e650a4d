#!/usr/bin/env bash
# gearbx's patch series on the pinned llama.cpp (vendor/): a git tree to edit, and the patch
# files regenerated from it.
#   scripts/patches.sh edit     vendor/work/llama.cpp: the pristine source (vendor/llama.cpp.pin,
#                               checked) as commit `pristine`, then one commit per patch of
#                               vendor/patches. Edit, commit (the message is the patch's header:
#                               what it changes, why, whether it could go upstream), rebase.
#   scripts/patches.sh export   vendor/patches/NNNN-*.patch from the commits after `pristine`
#                               (git format-patch; the old files are replaced).
# The build (llama-sys/build.rs) applies vendor/patches with `patch -p1 --fuzz=0` and stops,
# naming the patch, when one does not apply.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
WORK=$ROOT/vendor/work/llama.cpp
pin() { sed -n "s/^$1 *= *//p" vendor/llama.cpp.pin; }
die() { echo "patches.sh: $*" >&2; exit 1; }

case "${1:-}" in
edit)
    [ ! -e "$WORK" ] || die "$WORK exists: export your commits first, then remove it"
    command -v python3 >/dev/null || die "python3 is needed"
    NAME=$(pin crate) VERSION=$(pin version) SHA=$(pin sha256)
    # The .crate cargo downloaded and checksummed (cargo metadata fetches it when missing).
    META=$(cargo metadata --format-version 1 --locked --manifest-path llama-sys/Cargo.toml) ||
        die "cargo metadata failed (offline? run cargo fetch while online)"
    CRATE=$(echo "$META" | NAME=$NAME VERSION=$VERSION python3 -c '
import json, os, sys, pathlib
m = json.load(sys.stdin)
p = next(p for p in m["packages"] if p["name"] == os.environ["NAME"] and p["version"] == os.environ["VERSION"])
src = pathlib.Path(p["manifest_path"]).parent
print(src.parent.parent.parent / "cache" / src.parent.name / (src.name + ".crate"))')
    echo "$SHA  $CRATE" | sha256sum -c --quiet || die "checksum mismatch for $CRATE"
    mkdir -p "$WORK"
    tar -xzf "$CRATE" -C "$WORK" --strip-components=2 "$NAME-$VERSION/llama.cpp"
    cd "$WORK"
    git init -q
    git add -A
    git -c user.name=gearbx -c user.email=gearbx@localhost commit -qm "pristine $NAME $VERSION"
    git tag pristine
    for p in "$ROOT"/vendor/patches/*.patch; do
        [ -e "$p" ] || continue
        git -c user.name=gearbx -c user.email=gearbx@localhost am -q "$p" ||
            die "$(basename "$p") does not apply: fix it in $WORK (git am --continue), then export"
    done
    echo "patches.sh: edit in $WORK (one commit per patch), then: make patches" >&2
    ;;
export)
    [ -d "$WORK/.git" ] || die "no $WORK: run 'make patches-edit' first"
    rm -f vendor/patches/*.patch
    git -C "$WORK" format-patch -q -N --zero-commit --no-signature -o "$ROOT/vendor/patches" pristine..HEAD
    ls vendor/patches
    ;;
*)
    sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
