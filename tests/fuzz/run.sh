#!/bin/sh
# Build the libFuzzer targets with clang + ASan/UBSan and run each for SECONDS (default 30).
# Exits non-zero if a target crashes (the reproducer is left in build-fuzz/fuzz-artifacts/).
#   tests/fuzz/run.sh [SECONDS]
# Environment: BUILD (build dir, default build-fuzz), JOBS (parallel fuzzing jobs per target, 1).
set -eu
secs=${1:-30}
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
build=${BUILD:-$top/build-fuzz}
jobs=${JOBS:-1}

if [ ! -f "$build/build.ninja" ]; then
    CC=clang meson setup "$build" "$top" -Dfuzz=true -Db_sanitize=address,undefined \
        -Db_lundef=false -Db_lto=false -Dtests=disabled
fi
ninja -C "$build" tests/fuzz/fuzz_virtq tests/fuzz/fuzz_vhost_user tests/fuzz/fuzz_qcow2 tests/fuzz/fuzz_rpc
build=$(cd "$build" && pwd)

mkdir -p "$build/fuzz-artifacts"
cd "$build" # libFuzzer may write fuzz-N.log files into the working directory
par=""
if [ "$jobs" -gt 1 ]; then
    par="-jobs=$jobs -workers=$jobs"
fi
status=0
for t in virtq vhost_user qcow2 rpc; do
    work="$build/fuzz-corpus/$t"
    mkdir -p "$work"
    echo "== fuzz_$t for ${secs}s"
    # UBSan findings must stop the run like ASan ones do.
    if UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
       ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 \
       "$build/tests/fuzz/fuzz_$t" -max_total_time="$secs" -timeout=10 -rss_limit_mb=4096 \
           $par -print_final_stats=1 \
           -artifact_prefix="$build/fuzz-artifacts/$t-" "$work" "$here/corpus/$t" \
           >"$build/fuzz-$t.log" 2>&1; then
        tail -n 12 "$build/fuzz-$t.log" | grep -E '^(stat::|Done|#)' || true
    else
        status=1
        echo "fuzz_$t FAILED, see $build/fuzz-$t.log:"
        grep -E -A 30 'ERROR: |runtime error|deadly signal|fd leak' "$build/fuzz-$t.log" | head -60
        ls -l "$build/fuzz-artifacts/" | grep "$t-" || true
    fi
done
exit $status
