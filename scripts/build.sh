#!/bin/bash
# build.sh [DIR] - configure (once) and build vblk into DIR (default: build).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
dir=${1:-$repo/build}
shift || true
[ -f "$dir/build.ninja" ] || meson setup "$dir" "$repo" "$@" >/dev/null
ninja -C "$dir"
