#!/bin/bash
# soak/run.sh [SECONDS] - a bounded soak of one vblkd: verify I/O over and over, front-ends that
# disconnect mid-request (vblk-bench killed with I/O in flight), a new memory table with every
# connection, two exports at once; then the daemon's open fds and RSS must be flat, every
# completed verify clean, the daemon alive and (with an ASan build) free of reports.
#
#   tests/soak/run.sh          600 s (SOAK_SECONDS overrides; CI runs a short one)
# Environment: VBLKD, VBLK_BENCH (binaries; build-asan's for an ASan soak), BUILD (default build).
# Prints PASS/FAIL lines and "N passed, N failed".
set -u
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
build=${BUILD:-$repo/build}
VBLKD=${VBLKD:-$build/src/vblkd}
BENCH=${VBLK_BENCH:-$build/tools/vblk-bench/vblk-bench}
secs=${1:-${SOAK_SECONDS:-600}}
# ASan keeps freed memory in quarantine (256 MiB by default), which would read as RSS growth
export ASAN_OPTIONS=${ASAN_OPTIONS:-quarantine_size_mb=4:detect_leaks=1}
tmp=$(mktemp -d "${TMPDIR:-/tmp}/vblk-soak.XXXXXX")
passed=0 failed=0 daemon=
pass() { echo "PASS $1"; passed=$((passed + 1)); }
fail() { echo "FAIL $1: $2"; failed=$((failed + 1)); }
cleanup() {
    [ -n "$daemon" ] && kill -KILL "$daemon" 2>/dev/null && wait "$daemon" 2>/dev/null
    rm -rf "$tmp"
}
trap cleanup EXIT

truncate -s 64M "$tmp/a.img"
"$VBLKD" --export "id=file,file=$tmp/a.img,socket=$tmp/a.sock,num-queues=2" \
    --export "id=null,file=null://1G,socket=$tmp/n.sock" >"$tmp/daemon.log" 2>&1 &
daemon=$!
for _ in $(seq 100); do [ -S "$tmp/n.sock" ] && break; sleep 0.05; done
[ -S "$tmp/n.sock" ] || { fail soak-start "$(tail -3 "$tmp/daemon.log")"; echo "$passed passed, $failed failed"; exit 1; }

sample() { # fds rss_kb
    echo "$(ls /proc/$daemon/fd | wc -l) $(awk '/^VmRSS/ {print $2}' /proc/$daemon/status)"
}

start=$SECONDS warm=$((secs / 5)) base='' runs=0 kills=0 bad=0
while [ $((SECONDS - start)) -lt "$secs" ]; do
    bs=$((4 << (RANDOM % 5)))k
    seed=$RANDOM
    if [ $((RANDOM % 3)) -eq 0 ]; then
        # a front-end that goes away with requests in flight
        $BENCH --socket "$tmp/a.sock" --rw=randrw --bs="$bs" --iodepth=32 --numjobs=2 \
            --runtime=5 >/dev/null 2>&1 &
        b=$!
        sleep "0.$((1 + RANDOM % 8))"
        kill -KILL $b 2>/dev/null
        wait $b 2>/dev/null
        kills=$((kills + 1))
    else
        if ! $BENCH --socket "$tmp/a.sock" --verify --bs="$bs" --size=8M --seed=$seed \
            --numjobs=2 >"$tmp/verify.out" 2>&1; then
            bad=$((bad + 1))
            echo "verify failed (bs=$bs seed=$seed): $(tail -2 "$tmp/verify.out" | tr '\n' ' ')"
        fi
        runs=$((runs + 1))
    fi
    $BENCH --socket "$tmp/n.sock" --rw=randread --ios=2000 >/dev/null 2>&1 || bad=$((bad + 1))
    if [ -z "$base" ] && [ $((SECONDS - start)) -ge "$warm" ]; then
        base=$(sample)
    fi
    kill -0 "$daemon" 2>/dev/null || break
done
end=$(sample 2>/dev/null)
if kill -0 "$daemon" 2>/dev/null; then pass soak-daemon-alive; else fail soak-daemon-alive "vblkd died"; fi
[ "$bad" -eq 0 ] && pass "soak-verify-clean ($runs verify runs, $kills killed front-ends)" ||
    fail soak-verify-clean "$bad of $runs runs failed"
read -r fd0 rss0 <<<"${base:-0 0}"
read -r fd1 rss1 <<<"${end:-0 0}"
echo "fds $fd0 -> $fd1, RSS ${rss0} kB -> ${rss1} kB"
[ "$fd0" -gt 0 ] && [ "$fd1" -eq "$fd0" ] && pass soak-fds-flat || fail soak-fds-flat "$fd0 -> $fd1"
if [ "$rss0" -gt 0 ] && [ "$rss1" -le $((rss0 + rss0 / 10 + 4096)) ]; then
    pass soak-rss-flat
else
    fail soak-rss-flat "$rss0 kB -> $rss1 kB"
fi
kill -TERM "$daemon"
wait "$daemon"
rc=$?
daemon=
[ $rc -eq 0 ] && pass soak-sigterm-exit-0 || fail soak-sigterm-exit-0 "status $rc"
if grep -q "ERROR: AddressSanitizer\|runtime error:" "$tmp/daemon.log"; then
    fail soak-sanitizer-clean "$(grep -m3 "ERROR: AddressSanitizer\|runtime error:" "$tmp/daemon.log")"
else
    pass soak-sanitizer-clean
fi
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
