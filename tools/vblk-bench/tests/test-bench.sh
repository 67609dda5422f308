#!/bin/bash
# test-bench.sh - end-to-end tests of vblk-bench against qemu-storage-daemon back-ends.
#
# Owns: starting private qemu-storage-daemon instances (file, null, error-injecting), running
# vblk-bench against them and checking exit codes, JSON fields and verify diagnostics.
#
# usage: test-bench.sh [path/to/vblk-bench]
#   default binary: $VBLK_BENCH, else <repo>/build/tools/vblk-bench/vblk-bench
# Prints "PASS name" / "FAIL name" / "SKIP name" lines and "N passed, N failed"; exit 1 on failure.
set -u

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../../.." && pwd)
BENCH=${1:-${VBLK_BENCH:-$root/build/tools/vblk-bench/vblk-bench}}
QSD=${QSD:-qemu-storage-daemon}
passed=0
failed=0
pids=()

if [ ! -x "$BENCH" ]; then
    echo "vblk-bench binary not found: $BENCH" >&2
    exit 2
fi
if ! command -v "$QSD" >/dev/null; then
    echo "SKIP all: qemu-storage-daemon not found"
    exit 77 # meson's "skipped"
fi

tmp=$(mktemp -d /tmp/vblk-bench-test.XXXXXX)

cleanup() {
    local p
    for p in "${pids[@]}"; do
        kill "$p" 2>/dev/null
        wait "$p" 2>/dev/null
    done
    rm -rf "$tmp"
}
trap cleanup EXIT

pass() { echo "PASS $1"; passed=$((passed + 1)); }
fail() { echo "FAIL $1: $2"; failed=$((failed + 1)); }
skip() { echo "SKIP $1: $2"; }

# start_qsd SOCKET ARGS... : start a daemon in the background, remember its PID, wait for SOCKET.
start_qsd() {
    local sock=$1 i
    shift
    "$QSD" "$@" >"$tmp/qsd-$(basename "$sock").log" 2>&1 &
    pids+=($!)
    for i in $(seq 100); do
        [ -S "$sock" ] && return 0
        kill -0 "${pids[-1]}" 2>/dev/null || break
        sleep 0.05
    done
    echo "qemu-storage-daemon for $sock did not come up:" >&2
    cat "$tmp/qsd-$(basename "$sock").log" >&2
    return 1
}

# jnum KEY FILE: first numeric (or null) value of "KEY" in a vblk-bench JSON report.  Top-level
# totals come before the per-job array, so the first match is the total.
jnum() {
    grep -o "\"$1\": [-0-9.enul]*" "$2" | head -n1 | sed 's/.*: //'
}

# bench NAME ARGS...: run vblk-bench, stdout in $tmp/NAME.out, stderr in $tmp/NAME.err, rc in $rc.
bench() {
    local name=$1
    shift
    timeout 30 "$BENCH" "$@" >"$tmp/$name.out" 2>"$tmp/$name.err"
    rc=$?
}

is_positive() { awk -v v="$1" 'BEGIN { exit !(v + 0 > 0) }'; }

# ---- back-ends ----
truncate -s 256M "$tmp/disk.img"
start_qsd "$tmp/file.sock" \
    --blockdev driver=file,node-name=f0,filename="$tmp/disk.img",cache.direct=on,aio=io_uring \
    --export type=vhost-user-blk,id=e0,node-name=f0,addr.type=unix,addr.path="$tmp/file.sock",writable=on,num-queues=2 ||
    exit 2
start_qsd "$tmp/null.sock" \
    --blockdev driver=null-co,node-name=n0,size=1073741824 \
    --export type=vhost-user-blk,id=e1,node-name=n0,addr.type=unix,addr.path="$tmp/null.sock",writable=on ||
    exit 2

# ---- tests ----
t=randrw_qd32_json
bench $t --socket "$tmp/file.sock" --rw=randrw --iodepth=32 --runtime=2 --json
if [ $rc -ne 0 ]; then
    fail $t "exit $rc: $(head -c 300 "$tmp/$t.err")"
elif [ "$(jnum errors "$tmp/$t.out")" != 0 ]; then
    fail $t "errors=$(jnum errors "$tmp/$t.out")"
elif ! is_positive "$(jnum iops "$tmp/$t.out")" || ! is_positive "$(jnum reads "$tmp/$t.out")" ||
    ! is_positive "$(jnum writes "$tmp/$t.out")"; then
    fail $t "no I/O: $(head -c 300 "$tmp/$t.out")"
elif ! is_positive "$(jnum p99 "$tmp/$t.out")"; then
    fail $t "no latency percentiles"
else
    pass $t
fi

t=json_schema
if command -v jq >/dev/null; then
    if jq -e '(.iops|type=="number") and (.bw_bytes|type=="number") and (.ios|type=="number")
              and (.errors|type=="number") and (.runtime_s|type=="number")
              and ([.lat_ns.avg,.lat_ns.p50,.lat_ns.p99,.lat_ns.p999]|all(type=="number"))
              and (.jobs|length==1)' "$tmp/randrw_qd32_json.out" >/dev/null; then
        pass $t
    else
        fail $t "JSON lacks stable keys: $(head -c 300 "$tmp/randrw_qd32_json.out")"
    fi
else
    skip $t "jq not installed"
fi

t=randread_wait_mode
bench $t --socket "$tmp/null.sock" --rw=randread --iodepth=32 --runtime=1 --wait --json
if [ $rc -ne 0 ] || [ "$(jnum errors "$tmp/$t.out")" != 0 ]; then
    fail $t "exit $rc: $(head -c 300 "$tmp/$t.err")"
elif ! is_positive "$(jnum iops "$tmp/$t.out")" || ! is_positive "$(jnum waits "$tmp/$t.out")"; then
    fail $t "expected I/O and call-eventfd waits: $(head -c 300 "$tmp/$t.out")"
else
    pass $t
fi

t=two_queues
bench $t --socket "$tmp/file.sock" --rw=randread --numjobs=2 --iodepth=16 --runtime=1 --json
if [ $rc -ne 0 ]; then
    fail $t "exit $rc: $(head -c 300 "$tmp/$t.err")"
elif [ "$(grep -o '"job": [0-9]*' "$tmp/$t.out" | wc -l)" -ne 2 ]; then
    fail $t "expected 2 job entries"
else
    pass $t
fi

t=ios_limit
bench $t --socket "$tmp/null.sock" --ios=1000 --iodepth=7 --json
if [ $rc -ne 0 ] || [ "$(jnum ios "$tmp/$t.out")" != 1000 ]; then
    fail $t "exit $rc, ios=$(jnum ios "$tmp/$t.out")"
else
    pass $t
fi

t=verify_healthy
bench $t --socket "$tmp/file.sock" --verify --size=32M --json
if [ $rc -ne 0 ] || [ "$(jnum mismatched_blocks "$tmp/$t.out")" != 0 ] ||
    [ "$(jnum blocks "$tmp/$t.out")" != 8192 ]; then
    fail $t "exit $rc: $(head -c 300 "$tmp/$t.err") $(head -c 300 "$tmp/$t.out")"
else
    pass $t
fi

t=verify_wait_direct_descs
bench $t --socket "$tmp/file.sock" --verify --size=8M --bs=16k --iodepth=8 --wait --no-indirect \
    --no-event-idx --numjobs=2
if [ $rc -ne 0 ] || ! grep -q "0 mismatched" "$tmp/$t.out"; then
    fail $t "exit $rc: $(head -c 300 "$tmp/$t.err")"
else
    pass $t
fi

# Write phase, corrupt one byte of the backing file behind the daemon's back, read phase.
t=verify_catches_corruption
bad=$((5 * 1048576 + 3 * 4096 + 777))
bench ${t}_w --socket "$tmp/file.sock" --verify-phase=write --size=16M --seed=42
if [ $rc -ne 0 ]; then
    fail $t "write phase exit $rc: $(head -c 300 "$tmp/${t}_w.err")"
else
    orig=$(od -An -tx1 -j $bad -N1 "$tmp/disk.img" | tr -d ' ')
    flip=$(printf '%02x' $((0x$orig ^ 0x5a)))
    printf "\\x$flip" | dd of="$tmp/disk.img" bs=1 seek=$bad conv=notrunc,fsync status=none
    bench $t --socket "$tmp/file.sock" --verify-phase=read --size=16M --seed=42 --json
    if [ $rc -ne 1 ]; then
        fail $t "expected exit 1, got $rc"
    elif [ "$(jnum mismatched_blocks "$tmp/$t.out")" != 1 ] ||
        [ "$(jnum mismatched_bytes "$tmp/$t.out")" != 1 ]; then
        fail $t "expected 1 bad block/byte: $(head -c 400 "$tmp/$t.out")"
    elif [ "$(jnum first_mismatch_offset "$tmp/$t.out")" != $bad ]; then
        fail $t "reported offset $(jnum first_mismatch_offset "$tmp/$t.out"), corrupted $bad"
    elif ! grep -q "MISMATCH at byte offset $bad " "$tmp/$t.err"; then
        fail $t "no mismatch message for offset $bad: $(head -c 300 "$tmp/$t.err")"
    else
        pass $t
    fi
fi

t=verify_wrong_seed_detected
bench $t --socket "$tmp/file.sock" --verify-phase=read --size=1M --seed=43
if [ $rc -ne 1 ] || ! grep -q "stale data" "$tmp/$t.err"; then
    fail $t "exit $rc, expected stale-data diagnosis"
else
    pass $t
fi

# Error injection: qcow2 over blkdebug fails every data write with EIO.
t=io_errors_reported
if command -v qemu-img >/dev/null && qemu-img create -q -f qcow2 "$tmp/err.qcow2" 64M; then
    if start_qsd "$tmp/err.sock" \
        --blockdev driver=file,node-name=f1,filename="$tmp/err.qcow2" \
        --blockdev '{"driver":"blkdebug","node-name":"d1","image":"f1","inject-error":[{"event":"write_aio","errno":5}]}' \
        --blockdev driver=qcow2,node-name=q1,file=d1 \
        --export type=vhost-user-blk,id=e2,node-name=q1,addr.type=unix,addr.path="$tmp/err.sock",writable=on; then
        bench $t --socket "$tmp/err.sock" --rw=randrw --ios=200 --json
        w=$(jnum writes "$tmp/$t.out")
        if [ $rc -ne 1 ] || ! is_positive "$w" || [ "$(jnum errors "$tmp/$t.out")" != "$w" ]; then
            fail $t "exit $rc, writes=$w errors=$(jnum errors "$tmp/$t.out")"
        elif ! grep -q "status 1 (IOERR)" "$tmp/$t.err"; then
            fail $t "no IOERR message"
        else
            pass $t
        fi
    else
        fail $t "error-injecting daemon did not start"
    fi
else
    skip $t "qemu-img not available"
fi

t=usage_errors
bench $t --socket "$tmp/file.sock" --bs=1000
rc1=$rc
bench $t --socket "$tmp/file.sock" --numjobs=3
rc2=$rc
bench $t --socket "$tmp/nonexistent.sock"
if [ $rc1 -ne 2 ] || [ $rc2 -ne 2 ] || [ $rc -ne 2 ]; then
    fail $t "expected exit 2 for bad bs / too many jobs / no socket, got $rc1 $rc2 $rc"
else
    pass $t
fi

echo "$passed passed, $failed failed"
[ $failed -eq 0 ]
