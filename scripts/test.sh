#!/bin/bash
# test.sh - build vblk and run every test suite; ends with "N passed, N failed".
#
#   scripts/test.sh            all suites
#   scripts/test.sh unit       only the given suites (unit asan tsan integration
#                              asan-integration qcow2 rbd service bench e2e libvirt soak fuzz)
#
# Suites (qcow2: tests/integration/qcow2.sh, normal and ASan builds; rbd:
# tests/integration/rbd.sh, driver=rbd on a throw-away single-node Ceph cluster, normal and ASan): unit (cmocka, meson test), asan (the unit tests under ASan+UBSan), tsan (the unit tests
# built with clang's ThreadSanitizer: the I/O thread, its control calls, queues served for real), integration (vblkd
# driven over its socket by vblk-bench and a hostile front-end; vblkctl against a mock control
# socket; then tests/integration/metrics.sh: the --metrics endpoint scraped with curl and checked
# with promtool; tests/integration/control.sh: the control socket driven by vblkctl;
# tests/integration/nbd.sh: driver=nbd against nbdkit and qemu-nbd; tests/integration/advisor.sh:
# vblkd --check-host and the check-host method on this machine),
# asan-integration (the same with vblkd, vblk-bench and vblkctl built with ASan+UBSan, stopping at
# the first report), bench (vblk-bench's own tests
# against qemu-storage-daemon), service (vblkd's sd_notify READY/STOPPING under a stand-in
# NOTIFY_SOCKET, systemd-analyze verify of contrib/systemd), e2e (a QEMU guest on vblkd), libvirt
# (a private libvirtd boots a domain XML whose disk is a vhostuser disk on vblkd), fuzz (each libFuzzer target for
# FUZZ_SECONDS, default 20; needs clang), soak (tests/soak/run.sh with ASan binaries for
# SOAK_SECONDS, default 120).
set -u
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
suites=("$@")
[ ${#suites[@]} -gt 0 ] || suites=(unit asan tsan integration asan-integration qcow2 rbd service bench e2e libvirt soak fuzz)
passed=0
failed=0
logdir=$(mktemp -d "${TMPDIR:-/tmp}/vblk-test.XXXXXX")

count() { # suite name, pass count, fail count
    echo "== $1: $2 passed, $3 failed"
    passed=$((passed + $2))
    failed=$((failed + $3))
}

# meson_suite NAME BUILDDIR [meson test args]: run and count meson tests
meson_suite() {
    local name=$1 dir=$2
    shift 2
    if ! meson test -C "$dir" --print-errorlogs "$@" >"$logdir/$name.log" 2>&1; then
        tail -60 "$logdir/$name.log"
    fi
    local ok fail cok cfail
    ok=$(grep -E '^Ok: ' "$logdir/$name.log" | awk '{print $2}')
    fail=$(grep -E '^(Fail|Unexpected Pass|Timeout):' "$logdir/$name.log" | awk '{s += $2} END {print s + 0}')
    grep -E '^ *[0-9]+/[0-9]+ ' "$logdir/$name.log" || true
    if [ -z "$ok" ]; then
        echo "$name: meson test did not run"
        count "$name" 0 1
        return
    fi
    # count the cmocka test cases inside the programs, not just the programs
    cok=$(grep -hE '^\[  PASSED  \] [0-9]+ test' "$dir/meson-logs/testlog.txt" | awk '{s += $4} END {print s + 0}')
    cfail=$(grep -hE '^\[  FAILED  \] [0-9]+ test' "$dir/meson-logs/testlog.txt" | awk '{s += $4} END {print s + 0}')
    echo "$name: $ok programs passed, $fail failed; $cok test cases passed, $cfail failed"
    if [ "$fail" -gt 0 ] && [ "$cfail" -eq 0 ]; then
        cfail=$fail # a program failed without a cmocka summary (crash, sanitizer)
    fi
    if [ "$cok" -gt 0 ] || [ "$cfail" -gt 0 ]; then
        count "$name" "$cok" "$cfail"
    else
        count "$name" "$ok" "$fail"
    fi
}

# script_suite NAME CMD...: run a script that prints PASS/FAIL lines and "N passed, N failed"
script_suite() {
    local name=$1 line
    shift
    "$@" >"$logdir/$name.log" 2>&1
    grep -E '^(PASS|FAIL|SKIP)|^    ' "$logdir/$name.log" | grep -vE '^    (vblkd|e2e):' | head -200
    line=$(grep -E '^[0-9]+ passed, [0-9]+ failed' "$logdir/$name.log" | tail -1)
    if [ -n "$line" ]; then
        count "$name" "$(echo "$line" | awk '{print $1}')" "$(echo "$line" | awk '{print $3}')"
    else
        tail -30 "$logdir/$name.log"
        count "$name" 0 1
    fi
}

# the ASan+UBSan build, shared by the asan, asan-integration, qcow2, rbd and soak suites
asan_build() {
    scripts/build.sh build-asan -Db_sanitize=address,undefined -Db_lundef=false -Db_lto=false \
        >"$logdir/build-asan.log" 2>&1
}

# asan_suite NAME CMD...: script_suite with the ASan+UBSan binaries (vblkd, vblk-bench, vblkctl)
# and sanitizer options that stop at the first error; NAME fails if that build fails
asan_suite() {
    if ! asan_build; then
        tail -40 "$logdir/build-asan.log"
        count "$1" 0 1
        return
    fi
    ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
        UBSAN_OPTIONS=halt_on_error=1:abort_on_error=1:print_stacktrace=1 \
        VBLKD=build-asan/src/vblkd VBLK_BENCH=build-asan/tools/vblk-bench/vblk-bench \
        VBLKCTL=build-asan/tools/vblkctl/vblkctl \
        script_suite "$@"
}

build_ok=1
if ! scripts/build.sh build >"$logdir/build.log" 2>&1; then
    tail -40 "$logdir/build.log"
    echo "build failed"
    build_ok=0
    count build 0 1
fi

for s in "${suites[@]}"; do
    [ $build_ok = 1 ] || break
    case "$s" in
    unit)
        meson_suite unit build --suite unit
        ;;
    asan)
        if asan_build; then
            ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
                meson_suite asan build-asan --suite unit
        else
            tail -40 "$logdir/build-asan.log"
            count asan 0 1
        fi
        ;;
    tsan)
        if command -v clang >/dev/null && CC=clang scripts/build.sh build-tsan -Db_sanitize=thread \
            -Db_lundef=false -Db_lto=false >"$logdir/build-tsan.log" 2>&1; then
            TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1 meson_suite tsan build-tsan --suite unit
        else
            tail -40 "$logdir/build-tsan.log"
            count tsan 0 1
        fi
        ;;
    integration)
        script_suite integration bash tests/integration/run.sh build
        # vblkctl against a mock control socket (tests/integration/vblkctl_mock.py)
        script_suite vblkctl bash tests/integration/vblkctl.sh build
        script_suite metrics bash tests/integration/metrics.sh build
        script_suite control bash tests/integration/control.sh build
        # driver=nbd against nbdkit and qemu-nbd (tests/integration/nbd.sh)
        script_suite nbd bash tests/integration/nbd.sh build
        script_suite advisor bash tests/integration/advisor.sh build
        ;;
    asan-integration)
        asan_suite asan-integration bash tests/integration/run.sh build-asan
        asan_suite asan-metrics bash tests/integration/metrics.sh build-asan
        asan_suite asan-control bash tests/integration/control.sh build-asan
        asan_suite asan-vblkctl bash tests/integration/vblkctl.sh build-asan
        asan_suite asan-nbd bash tests/integration/nbd.sh build-asan
        ;;
    qcow2)
        # qcow2 images served by vblkd, checked with qemu-img; then the same with ASan+UBSan
        script_suite qcow2 bash tests/integration/qcow2.sh build
        asan_suite asan-qcow2 bash tests/integration/qcow2.sh build-asan
        ;;
    soak)
        # ASan binaries; 120 s here, SOAK_SECONDS=600 (or more) for the full soak
        if asan_build; then
            VBLKD=build-asan/src/vblkd VBLK_BENCH=build-asan/tools/vblk-bench/vblk-bench \
                script_suite soak bash tests/soak/run.sh "${SOAK_SECONDS:-120}"
        else
            tail -40 "$logdir/build-asan.log"
            count soak 0 1
        fi
        ;;
    rbd)
        # driver=rbd against a throw-away single-node Ceph cluster (scripts/ceph-single-node.sh);
        # then the same with ASan+UBSan
        script_suite rbd bash tests/integration/rbd.sh build
        asan_suite asan-rbd bash tests/integration/rbd.sh build-asan
        ;;
    bench)
        script_suite bench bash tools/vblk-bench/tests/test-bench.sh build/tools/vblk-bench/vblk-bench
        ;;
    service)
        script_suite service python3 tests/service/run.py build
        ;;
    e2e)
        script_suite e2e bash tests/e2e/run.sh --backend vblkd
        ;;
    libvirt)
        script_suite libvirt bash tests/libvirt/run.sh build
        ;;
    fuzz)
        if [ -x tests/fuzz/run.sh ] && command -v clang >/dev/null; then
            if bash tests/fuzz/run.sh "${FUZZ_SECONDS:-20}" >"$logdir/fuzz.log" 2>&1; then
                count fuzz 1 0
            else
                tail -40 "$logdir/fuzz.log"
                count fuzz 0 1
            fi
        else
            echo "== fuzz: skipped (needs clang and tests/fuzz/run.sh)"
        fi
        ;;
    *)
        echo "unknown suite '$s' (unit asan tsan integration asan-integration qcow2 rbd service bench e2e libvirt soak fuzz)"
        count "$s" 0 1
        ;;
    esac
done
echo "logs: $logdir"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ] && [ "$passed" -gt 0 ]
