# lib.sh - shared by the integration scripts (run.sh, qcow2.sh): binaries, a temp dir removed on
# exit with the daemon it started, and PASS/FAIL counting.  Source it after setting `name` (the
# temp dir prefix); the caller's first argument is the build dir.
# shellcheck shell=bash
here=$(cd "$(dirname "${BASH_SOURCE[1]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
build=${1:-$repo/build}
VBLKD=${VBLKD:-$build/src/vblkd}
BENCH=${VBLK_BENCH:-$build/tools/vblk-bench/vblk-bench}
tmp=$(mktemp -d "${TMPDIR:-/tmp}/vblk-$name.XXXXXX")
passed=0
failed=0
daemon=

cleanup() {
    if [ -n "$daemon" ] && kill -0 "$daemon" 2>/dev/null; then
        kill -KILL "$daemon" 2>/dev/null
        wait "$daemon" 2>/dev/null
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT

pass() { echo "PASS $1"; passed=$((passed + 1)); }
fail() {
    echo "FAIL $1: $2"
    failed=$((failed + 1))
    [ -f "$tmp/daemon.log" ] && tail -15 "$tmp/daemon.log" | sed 's/^/    /'
}
check() { # name, command...
    local name=$1
    shift
    if "$@" >"$tmp/out" 2>&1; then pass "$name"; else fail "$name" "$(tail -3 "$tmp/out" | tr '\n' ' ')"; fi
}
check_fails() { # name, command... (must exit non-zero)
    local name=$1
    shift
    if "$@" >"$tmp/out" 2>&1; then fail "$name" "succeeded but should not"; else pass "$name"; fi
}
