#!/bin/bash
# run.sh - vblkd driven over its real socket by vblk-bench (no guest): every engine and cache
# mode with --verify, io_uring fixed buffers (fixed-buffers=on), the null backend, read-only
# exports, a hostile front-end, a check that one export misbehaving leaves the others serving,
# and isolation.py: a front-end attacking one export never stalls or kills another (separate
# daemon, one PASS/FAIL per attack).
#
# usage: tests/integration/run.sh [BUILD_DIR]
# Prints PASS/FAIL lines and "N passed, N failed"; exit 1 on failure.
set -u
name=int
. "$(dirname "$0")/lib.sh"

wait_sockets() {
    local s i
    for i in $(seq 100); do
        for s in "$@"; do [ -S "$s" ] || continue 2; done
        return 0
    done
    return 1
}

# start_daemon EXPORT... : one vblkd serving all the given exports
start_daemon() {
    local args=() e socks=()
    for e in "$@"; do
        args+=(--export "$e")
        socks+=("$(echo "$e" | sed -n 's/.*socket=\([^,]*\).*/\1/p')")
    done
    "$VBLKD" "${args[@]}" >"$tmp/daemon.log" 2>&1 &
    daemon=$!
    for _ in $(seq 100); do
        wait_sockets "${socks[@]}" && return 0
        kill -0 "$daemon" 2>/dev/null || return 1
        sleep 0.05
    done
    return 1
}

stop_daemon() { # must exit 0 on SIGTERM
    kill -TERM "$daemon"
    wait "$daemon"
    local rc=$?
    daemon=
    return $rc
}

for f in a b c d e f; do truncate -s 64M "$tmp/$f.img"; done
S=$tmp
if ! start_daemon \
    "id=uring,file=$S/a.img,socket=$S/uring.sock,aio=io_uring,cache=none,num-queues=2,iothreads=2" \
    "id=native,file=$S/b.img,socket=$S/native.sock,aio=native,cache=directsync" \
    "id=threads,file=$S/c.img,socket=$S/threads.sock,aio=threads,cache=writeback" \
    "id=wt,file=$S/d.img,socket=$S/wt.sock,cache=writethrough,logical-block-size=4096,poll-us=0" \
    "id=ro,file=$S/e.img,socket=$S/ro.sock,readonly=on" \
    "id=null,file=null://1G,socket=$S/null.sock" \
    "id=fixed,file=$S/f.img,socket=$S/fixed.sock,aio=io_uring,cache=none,fixed-buffers=on"; then
    fail daemon-start "vblkd did not come up"
    echo "$passed passed, $failed failed"
    exit 1
fi
pass daemon-start

B="$BENCH --runtime=1"
check verify-io_uring-2q-2threads $BENCH --socket "$S/uring.sock" --verify --numjobs=2 --bs=16k
check verify-native-directsync $BENCH --socket "$S/native.sock" --verify --wait
check verify-threads-writeback $BENCH --socket "$S/threads.sock" --verify --no-indirect
check verify-writethrough-4k-nopoll $BENCH --socket "$S/wt.sock" --verify --bs=4k --no-event-idx
check verify-large-1m $BENCH --socket "$S/uring.sock" --verify --bs=1m --size=32M
# packed virtqueues (VIRTIO_F_RING_PACKED): chains and indirect tables, poll and wait
check verify-packed-io_uring-2q $BENCH --socket "$S/uring.sock" --verify --packed --numjobs=2 --bs=16k
check verify-packed-threads-noindirect-wait $BENCH --socket "$S/threads.sock" --verify --packed --no-indirect --wait
check verify-packed-writethrough-no-event-idx $BENCH --socket "$S/wt.sock" --verify --packed --bs=4k --no-event-idx --wait
check randread-null-packed-wait $B --socket "$S/null.sock" --packed --wait
# fixed-buffers=on (opt-in): guest memory registered as io_uring fixed buffers, data verified
# on split and packed rings, one segment and many (1m requests)
check verify-fixed-buffers $BENCH --socket "$S/fixed.sock" --verify --bs=4k --wait
check verify-fixed-buffers-packed-1m $BENCH --socket "$S/fixed.sock" --verify --packed --bs=1m --size=32M
if grep -q "fixed: guest memory registered as io_uring fixed buffers" "$tmp/daemon.log" &&
    ! grep -q "cannot register guest memory" "$tmp/daemon.log"; then
    pass fixed-buffers-registered
else
    fail fixed-buffers-registered "$(grep -i 'fixed' "$tmp/daemon.log" | head -3 | tr '\n' ' ')"
fi
check randrw-io_uring $B --socket "$S/uring.sock" --rw=randrw --iodepth=32
check randrw-null-poll $B --socket "$S/null.sock" --rw=randrw --poll
check randread-null-wait $B --socket "$S/null.sock" --rw=randread --wait --numjobs=1
check read-only-reads $B --socket "$S/ro.sock" --rw=randread
check_fails read-only-rejects-writes $BENCH --socket "$S/ro.sock" --rw=randwrite --ios=64 --force-write
if grep -q '"errors": *64' <($BENCH --socket "$S/ro.sock" --rw=randwrite --ios=64 --json --force-write 2>/dev/null); then
    pass read-only-every-write-ioerr
else
    fail read-only-every-write-ioerr "expected 64 errors"
fi
check_fails unaligned-4k-export $BENCH --socket "$S/wt.sock" --bs=512 --ios=32

# a hostile front-end on one export; the daemon survives and the others keep serving
if python3 "$here/hostile.py" "$S/null.sock" >"$tmp/hostile.out" 2>&1; then
    pass hostile-front-end
else
    fail hostile-front-end "$(grep FAIL "$tmp/hostile.out" | tr '\n' ' ')"
fi
sed 's/^/    /' "$tmp/hostile.out"
kill -0 "$daemon" 2>/dev/null && pass daemon-alive-after-hostile || fail daemon-alive-after-hostile "vblkd died"
check other-export-still-serves $B --socket "$S/uring.sock" --rw=randrw --verify
check hostile-export-serves-again $B --socket "$S/null.sock" --rw=randread

# a second front-end while one is connected is refused, the first keeps working
$BENCH --socket "$S/uring.sock" --runtime=3 --rw=randread >"$tmp/first.out" 2>&1 &
first=$!
sleep 1
check_fails second-front-end-refused $BENCH --socket "$S/uring.sock" --ios=16
wait $first && pass first-front-end-unaffected || fail first-front-end-unaffected "$(tail -2 "$tmp/first.out")"

# SIGUSR1 logs counters; the flushes guests send are counted
kill -USR1 "$daemon"
sleep 0.3
grep -q "uring: requests=" "$tmp/daemon.log" && pass stats-on-sigusr1 || fail stats-on-sigusr1 "no counters logged"

if stop_daemon; then pass sigterm-exit-0; else fail sigterm-exit-0 "non-zero exit"; fi
for s in uring native null; do
    [ -e "$S/$s.sock" ] && { fail socket-removed "$s.sock left behind"; continue 2; }
done
pass socket-removed

# bad command lines fail cleanly and leave nothing behind
check_fails cli-unknown-key "$VBLKD" --export id=x,file=$S/a.img,socket=$S/x.sock,colour=blue
grep -q "unknown key 'colour'" "$tmp/out" && pass cli-error-names-key || fail cli-error-names-key "$(cat "$tmp/out")"
check_fails cli-bad-cache "$VBLKD" --export id=x,file=$S/a.img,socket=$S/x.sock,cache=sometimes
check_fails cli-iothreads-over-queues "$VBLKD" --export id=x,file=$S/a.img,socket=$S/x.sock,iothreads=2
grep -q "more I/O threads than queues" "$tmp/out" && pass cli-iothreads-error-says-why || fail cli-iothreads-error-says-why "$(cat "$tmp/out")"
check_fails cli-missing-file "$VBLKD" --export id=x,file=$S/nope.img,socket=$S/x.sock
check_fails cli-second-export-bad "$VBLKD" --export id=x,file=$S/a.img,socket=$S/x.sock \
    --export id=y,file=$S/nope.img,socket=$S/y.sock
[ -e "$S/x.sock" ] && fail cli-nothing-half-started "x.sock left behind" || pass cli-nothing-half-started
# image locking: a second writer of the same image is refused (like QEMU), readers may share
"$VBLKD" --export "id=holder,file=$S/a.img,socket=$S/holder.sock" >"$tmp/holder.log" 2>&1 &
holder=$!
for _ in $(seq 100); do [ -S "$S/holder.sock" ] && break; sleep 0.05; done
check_fails lock-second-writer-refused "$VBLKD" --export "id=x,file=$S/a.img,socket=$S/x.sock"
grep -q "in use by another process" "$tmp/out" && pass lock-error-says-why || fail lock-error-says-why "$(cat "$tmp/out")"
kill -TERM $holder
wait $holder
"$VBLKD" --export "id=r1,file=$S/e.img,socket=$S/r1.sock,readonly=on" \
    --export "id=r2,file=$S/e.img,socket=$S/r2.sock,readonly=on" >"$tmp/readers.log" 2>&1 &
readers=$!
for _ in $(seq 100); do [ -S "$S/r2.sock" ] && break; sleep 0.05; done
if [ -S "$S/r2.sock" ]; then pass lock-readers-share; else fail lock-readers-share "$(cat "$tmp/readers.log")"; fi
kill -TERM $readers
wait $readers
check cli-help "$VBLKD" --help
check cli-version "$VBLKD" --version

# error policies (rerror=/werror=) over the faulty filter (inject-*): report, ignore, stop +
# SIGUSR2 resume, enospc
for f in p1 p2 p3 p4; do truncate -s 16M "$tmp/$f.img"; done
"$VBLKD" --export "id=rep,file=$tmp/p1.img,socket=$S/rep.sock,werror=report,inject-ops=write" \
    --export "id=ign,file=$tmp/p2.img,socket=$S/ign.sock,rerror=ignore,inject-ops=read" \
    --export "id=enospc,file=$tmp/p3.img,socket=$S/enospc.sock,inject-ops=write,inject-errno=ENOSPC,inject-count=3" \
    --export "id=stop,file=$tmp/p4.img,socket=$S/stop.sock,werror=stop,inject-ops=flush,inject-count=1" \
    >"$tmp/policy.log" 2>&1 &
pol=$!
for _ in $(seq 100); do [ -S "$S/stop.sock" ] && break; sleep 0.05; done
if grep -q '"errors": *64' <($BENCH --socket "$S/rep.sock" --rw=randwrite --ios=64 --json 2>/dev/null); then
    pass policy-report-gives-ioerr
else
    fail policy-report-gives-ioerr "expected 64 errors"
fi
if grep -q '"errors": *0' <($BENCH --socket "$S/ign.sock" --rw=randread --ios=64 --json 2>/dev/null); then
    pass policy-ignore-hides-errors
else
    fail policy-ignore-hides-errors "expected 0 errors"
fi
# werror=enospc (the default) and werror=stop: the guest's writes wait, nothing fails; a resume
# (SIGUSR2) retries them and the verify passes
for e in enospc stop; do
    $BENCH --socket "$S/$e.sock" --verify --size=4M --json >"$tmp/$e.json" 2>&1 &
    b=$!
    paused=0
    for _ in $(seq 100); do grep -q "$e: queue 0 paused" "$tmp/policy.log" && { paused=1; break; }; sleep 0.05; done
    sleep 0.3
    kill -0 $b 2>/dev/null && still=1 || still=0
    kill -USR2 $pol
    if wait $b && [ $paused = 1 ] && [ $still = 1 ] && grep -q '"errors": *0' "$tmp/$e.json" &&
        grep -q "$e: resumed" "$tmp/policy.log"; then
        pass "policy-$e-holds-then-resumes"
    else
        fail "policy-$e-holds-then-resumes" "paused=$paused waiting=$still $(tail -c 300 "$tmp/$e.json")"
    fi
done
kill -TERM $pol && wait $pol && pass policy-daemon-exit-0 || fail policy-daemon-exit-0 "$(tail -3 "$tmp/policy.log")"

# inject-delay-ms: delayed requests (the faulty filter) complete late but fine
truncate -s 16M "$tmp/p5.img"
"$VBLKD" --export "id=slow,file=$tmp/p5.img,socket=$S/slow.sock,inject-ops=read,inject-delay-ms=300,inject-count=2" \
    >"$tmp/slow.log" 2>&1 &
slow=$!
for _ in $(seq 100); do [ -S "$S/slow.sock" ] && break; sleep 0.05; done
$BENCH --socket "$S/slow.sock" --rw=randread --ios=64 --json >"$tmp/slow.json" 2>&1
if grep -q '"errors": *0' "$tmp/slow.json" &&
    python3 -c 'import json,sys; sys.exit(0 if json.load(open(sys.argv[1]))["lat_ns"]["max"] >= 3e8 else 1)' "$tmp/slow.json"; then
    pass inject-delay-slows-without-errors
else
    fail inject-delay-slows-without-errors "$(tail -c 300 "$tmp/slow.json")"
fi
kill -TERM $slow
wait $slow

# isolation: a hostile front-end attacks export A while B runs I/O and C takes new front-ends
# (isolation.py prints one PASS/FAIL line per attack, each counted as a test, and under a failed
# case the daemon log lines written during it)
truncate -s 64M "$S/iso-b.img"
if start_daemon "id=iso-a,file=null://1G,socket=$S/iso-a.sock,num-queues=2" \
    "id=iso-b,file=$S/iso-b.img,socket=$S/iso-b.sock,aio=io_uring" \
    "id=iso-c,file=null://1G,socket=$S/iso-c.sock"; then
    timeout -k 5 150 python3 "$here/isolation.py" --log "$tmp/daemon.log" \
        "$S/iso-a.sock" "$S/iso-b.sock" "$S/iso-c.sock" "$daemon" "$BENCH" >"$tmp/isolation.out" 2>&1
    rc=$?
    cases=0
    while IFS= read -r line; do
        case $line in
        "PASS isolation-"*) echo "$line"; passed=$((passed + 1)); cases=$((cases + 1)) ;;
        "FAIL isolation-"*) echo "$line"; failed=$((failed + 1)); cases=$((cases + 1)) ;;
        *) echo "    $line" ;;
        esac
    done <"$tmp/isolation.out"
    if [ "$cases" -eq 0 ] || { [ "$rc" -ne 0 ] && ! grep -q '^FAIL isolation-' "$tmp/isolation.out"; }; then
        fail isolation-script "isolation.py exited $rc after $cases cases"
    fi
    # the daemon survived the attacks and still exits cleanly (bounded: it may be wedged)
    kill -TERM "$daemon" 2>/dev/null
    for _ in $(seq 100); do
        [ "$(sed 's/.*) //' "/proc/$daemon/stat" 2>/dev/null | cut -c1)" = Z ] && break
        kill -0 "$daemon" 2>/dev/null || break
        sleep 0.1
    done
    if [ "$(sed 's/.*) //' "/proc/$daemon/stat" 2>/dev/null | cut -c1)" != Z ] && kill -0 "$daemon" 2>/dev/null; then
        kill -KILL "$daemon"
        wait "$daemon" 2>/dev/null
        daemon=
        fail isolation-sigterm-exit-0 "vblkd did not exit within 10 s of SIGTERM"
    elif wait "$daemon"; then
        daemon=
        pass isolation-sigterm-exit-0
    else
        rc=$?
        daemon=
        fail isolation-sigterm-exit-0 "exit status $rc"
    fi
else
    fail isolation-daemon-start "vblkd did not come up"
fi

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
