#!/bin/bash
# qcow2.sh - vblkd serving qcow2 images (format=qcow2) driven by vblk-bench --verify over its real
# socket: image kinds qemu-img makes (v2, v3, small and large clusters, extended L2, compressed,
# zstd), cache=none and writeback, interop with qemu-img (convert/compare/check both ways), a
# backing chain, refused images, and kill -9 of vblkd during random writes followed by
# `qemu-img check` (no corruption; leaked clusters are allowed).
#
# usage: tests/integration/qcow2.sh [BUILD_DIR]
# Prints PASS/FAIL lines and "N passed, N failed"; exit 1 on failure.
set -u
name=qcow2
. "$(dirname "$0")/lib.sh"
# qemu-img check: 0 clean; with "leaks-ok", 3 (leaked clusters only) passes too
img_check() { # name, image, [leaks-ok]
    qemu-img check "$2" >"$tmp/check.out" 2>&1
    local rc=$?
    if [ $rc -eq 0 ] || { [ "${3:-}" = leaks-ok ] && [ $rc -eq 3 ]; }; then
        pass "$1"
    else
        fail "$1" "qemu-img check exit $rc: $(grep -iE 'error|corrupt|leak' "$tmp/check.out" | head -3 | tr '\n' ' ')"
    fi
}

if ! command -v qemu-img >/dev/null; then
    echo "SKIP qcow2: qemu-img not installed"
    echo "0 passed, 0 failed"
    exit 0
fi

# start_daemon EXPORT... : one vblkd serving all the given exports
start_daemon() {
    local args=() e s
    for e in "$@"; do args+=(--export "$e"); done
    "$VBLKD" "${args[@]}" >"$tmp/daemon.log" 2>&1 &
    daemon=$!
    for _ in $(seq 200); do
        local up=1
        for e in "$@"; do
            s=$(echo "$e" | sed -n 's/.*socket=\([^,]*\).*/\1/p')
            [ -S "$s" ] || up=0
        done
        [ $up = 1 ] && return 0
        kill -0 "$daemon" 2>/dev/null || { daemon=; return 1; }
        sleep 0.05
    done
    return 1
}

stop_daemon() { # must exit 0 on SIGTERM (metadata written back)
    kill -TERM "$daemon"
    wait "$daemon"
    local rc=$?
    daemon=
    return $rc
}

S=$tmp
qemu-img create -q -f qcow2 "$S/v3.qcow2" 64M
qemu-img create -q -f qcow2 -o compat=0.10 "$S/v2.qcow2" 64M
qemu-img create -q -f qcow2 -o cluster_size=4k "$S/c4k.qcow2" 64M
qemu-img create -q -f qcow2 -o cluster_size=2M "$S/c2m.qcow2" 64M
qemu-img create -q -f qcow2 -o extended_l2=on,cluster_size=128k "$S/ext.qcow2" 64M
qemu-img create -q -f qcow2 -o refcount_bits=1,cluster_size=512 "$S/rc1.qcow2" 16M
truncate -s 64M "$S/pat.raw"
qemu-io -f raw -c 'write -P 0x5a 0 16M' -c 'write -P 0xa5 32M 8M' "$S/pat.raw" >/dev/null
qemu-img convert -c -O qcow2 "$S/pat.raw" "$S/zlib.qcow2"
qemu-img convert -c -O qcow2 -o compression_type=zstd "$S/pat.raw" "$S/zstd.qcow2"

if ! start_daemon \
    "id=v3,file=$S/v3.qcow2,format=qcow2,socket=$S/v3.sock,cache=none" \
    "id=v2,file=$S/v2.qcow2,format=qcow2,socket=$S/v2.sock,cache=writeback" \
    "id=c4k,file=$S/c4k.qcow2,format=qcow2,socket=$S/c4k.sock,aio=native,cache=none" \
    "id=c2m,file=$S/c2m.qcow2,format=qcow2,socket=$S/c2m.sock,aio=threads" \
    "id=ext,file=$S/ext.qcow2,format=qcow2,socket=$S/ext.sock" \
    "id=rc1,file=$S/rc1.qcow2,format=qcow2,socket=$S/rc1.sock,cache=writeback" \
    "id=zlib,file=$S/zlib.qcow2,format=qcow2,socket=$S/zlib.sock" \
    "id=zstd,file=$S/zstd.qcow2,format=qcow2,socket=$S/zstd.sock,cache=writethrough"; then
    fail daemon-start "vblkd did not come up: $(tail -3 "$tmp/daemon.log" | tr '\n' ' ')"
    echo "$passed passed, $failed failed"
    exit 1
fi
pass daemon-start-qcow2

check verify-v3-cache-none "$BENCH" --socket "$S/v3.sock" --verify --bs=16k --iodepth=32
check verify-v3-1m "$BENCH" --socket "$S/v3.sock" --verify --bs=1m --size=32M --seed=2
check verify-v2 "$BENCH" --socket "$S/v2.sock" --verify --bs=4k --size=16M
check verify-4k-clusters-native "$BENCH" --socket "$S/c4k.sock" --verify --bs=8k --size=16M
check verify-2m-clusters-threads "$BENCH" --socket "$S/c2m.sock" --verify --bs=4k --size=16M
check verify-extended-l2 "$BENCH" --socket "$S/ext.sock" --verify --bs=4k --size=16M
check verify-refcount1-512b "$BENCH" --socket "$S/rc1.sock" --verify --bs=4k --size=8M
check randrw-v3 "$BENCH" --socket "$S/v3.sock" --rw=randrw --runtime=2 --iodepth=64
check verify-compressed-zlib "$BENCH" --socket "$S/zlib.sock" --verify --bs=4k --size=8M
check verify-compressed-zstd-writethrough "$BENCH" --socket "$S/zstd.sock" --verify --bs=64k --size=8M
if stop_daemon; then pass sigterm-exit-0; else fail sigterm-exit-0 "non-zero exit"; fi
for i in v3 v2 c4k c2m ext rc1 zlib zstd; do img_check "check-$i" "$S/$i.qcow2"; done
# the parts of the compressed images vblk-bench did not touch still hold the pattern
for i in zlib zstd; do
    qemu-img convert -f qcow2 -O raw "$S/$i.qcow2" "$S/$i-out.raw"
    check "compressed-$i-rest-intact" cmp -s <(tail -c +$((8 << 20 + 1)) "$S/$i-out.raw") \
        <(tail -c +$((8 << 20 + 1)) "$S/pat.raw")
done

# interop: what vblkd wrote into qcow2, qemu-img converts to raw and vblkd serves back (and the
# other way round: raw written by vblkd, converted to compressed qcow2 by qemu-img, read by vblkd)
qemu-img convert -f qcow2 -O raw "$S/v3.qcow2" "$S/v3.raw"
qemu-img create -q -f qcow2 "$S/io.qcow2" 64M
truncate -s 64M "$S/io.raw"
if start_daemon "id=io,file=$S/io.qcow2,format=qcow2,socket=$S/io.sock" \
    "id=raw,file=$S/io.raw,socket=$S/raw.sock"; then
    check interop-write-qcow2 "$BENCH" --socket "$S/io.sock" --verify-phase=write --seed=7 --bs=4k --size=32M
    check interop-write-raw "$BENCH" --socket "$S/raw.sock" --verify-phase=write --seed=8 --bs=4k --size=32M
    stop_daemon || fail interop-stop "non-zero exit"
else
    fail interop-start "$(tail -3 "$tmp/daemon.log" | tr '\n' ' ')"
fi
img_check interop-check "$S/io.qcow2"
qemu-img convert -f qcow2 -O raw "$S/io.qcow2" "$S/io-conv.raw"
qemu-img convert -f raw -O qcow2 -c "$S/io.raw" "$S/raw-conv.qcow2"
if start_daemon "id=a,file=$S/io-conv.raw,socket=$S/a.sock,readonly=on" \
    "id=b,file=$S/raw-conv.qcow2,format=qcow2,socket=$S/b.sock,readonly=on"; then
    check interop-qemu-img-convert-to-raw-reads-back "$BENCH" --socket "$S/a.sock" --verify-phase=read --seed=7 --bs=4k --size=32M
    check interop-qemu-img-compressed-reads-back "$BENCH" --socket "$S/b.sock" --verify-phase=read --seed=8 --bs=4k --size=32M
    stop_daemon || fail interop-read-stop "non-zero exit"
else
    fail interop-read-start "$(tail -3 "$tmp/daemon.log" | tr '\n' ' ')"
fi
check interop-qemu-img-compare qemu-img compare -q "$S/io.qcow2" "$S/io-conv.raw"

# backing chain: base raw <- mid qcow2 <- top qcow2; reads fall through, writes stay on top
cp "$S/io.raw" "$S/base.raw"
(cd "$S" && qemu-img create -q -f qcow2 -b base.raw -F raw mid.qcow2 &&
    qemu-io -f qcow2 -c 'write -P 0x33 40M 1M' mid.qcow2 >/dev/null &&
    qemu-img create -q -f qcow2 -b mid.qcow2 -F qcow2 top.qcow2)
cp "$S/base.raw" "$S/base.orig"
qemu-img convert -O raw "$S/mid.qcow2" "$S/mid.expect"
if start_daemon "id=top,file=$S/top.qcow2,format=qcow2,socket=$S/top.sock,cache=none"; then
    check backing-reads-through-chain "$BENCH" --socket "$S/top.sock" --verify-phase=read --seed=8 --bs=4k --size=32M
    check backing-write-top "$BENCH" --socket "$S/top.sock" --verify --seed=9 --bs=12k --size=48M
    stop_daemon || fail backing-stop "non-zero exit"
else
    fail backing-start "$(tail -3 "$tmp/daemon.log" | tr '\n' ' ')"
fi
img_check backing-top-check "$S/top.qcow2"
img_check backing-mid-check "$S/mid.qcow2"
check backing-base-untouched cmp -s "$S/base.raw" "$S/base.orig"
# beyond what was written, top still reads as mid
qemu-img convert -O raw "$S/top.qcow2" "$S/top.raw"
check backing-rest-from-mid cmp -s <(tail -c +$((48 << 20 + 1)) "$S/top.raw") <(tail -c +$((48 << 20 + 1)) "$S/mid.expect")

# refused images say why
cp "$S/v3.qcow2" "$S/bad.qcow2"
printf '\x00\x00\x00\x00\x00\x00\x00\x20' | dd of="$S/bad.qcow2" bs=1 seek=72 conv=notrunc 2>/dev/null
check_fails refuse-unknown-incompatible-feature "$VBLKD" --export "id=bad,file=$S/bad.qcow2,format=qcow2,socket=$S/bad.sock"
grep -q "incompatible feature" "$tmp/out" && pass refuse-names-feature || fail refuse-names-feature "$(cat "$tmp/out")"
cp "$S/v3.qcow2" "$S/corrupt.qcow2"
printf '\x00\x00\x00\x00\x00\x00\x00\x02' | dd of="$S/corrupt.qcow2" bs=1 seek=72 conv=notrunc 2>/dev/null
check_fails refuse-corrupt-writable "$VBLKD" --export "id=bad,file=$S/corrupt.qcow2,format=qcow2,socket=$S/bad.sock"
grep -q "qemu-img check -r all" "$tmp/out" && pass refuse-corrupt-says-repair || fail refuse-corrupt-says-repair "$(cat "$tmp/out")"
check_fails refuse-qcow2-two-iothreads "$VBLKD" --export "id=bad,file=$S/v3.qcow2,format=qcow2,socket=$S/bad.sock,num-queues=2,iothreads=2"
[ -e "$S/bad.sock" ] && fail refused-leaves-no-socket "bad.sock left" || pass refused-leaves-no-socket

# kill -9 during random writes: the image must stay consistent (leaks allowed)
for mode in writeback none; do
    qemu-img create -q -f qcow2 -o cluster_size=16k "$S/k.qcow2" 256M
    if start_daemon "id=k,file=$S/k.qcow2,format=qcow2,socket=$S/k.sock,cache=$mode,num-queues=2"; then
        "$BENCH" --socket "$S/k.sock" --rw=randwrite --bs=12k --iodepth=64 --numjobs=2 --runtime=10 >/dev/null 2>&1 &
        bench=$!
        sleep 2
        kill -KILL "$daemon"
        wait "$daemon" 2>/dev/null
        daemon=
        wait $bench 2>/dev/null
        rm -f "$S/k.sock" # left by the killed daemon: do not mistake it for the next one's
        img_check "kill-9-during-writes-$mode" "$S/k.qcow2" leaks-ok
        # and it opens and serves again (leaks are no obstacle)
        qemu-img check -q -r leaks "$S/k.qcow2" >/dev/null 2>&1
        if start_daemon "id=k,file=$S/k.qcow2,format=qcow2,socket=$S/k.sock"; then
            check "kill-9-then-serves-$mode" "$BENCH" --socket "$S/k.sock" --verify --bs=4k --size=8M
            stop_daemon || true
            img_check "kill-9-then-clean-$mode" "$S/k.qcow2"
        else
            fail "kill-9-then-serves-$mode" "$(tail -3 "$tmp/daemon.log" | tr '\n' ' ')"
        fi
    else
        fail "kill-9-start-$mode" "$(tail -3 "$tmp/daemon.log" | tr '\n' ' ')"
    fi
done

# format=auto: probes (qcow2 by its magic, else raw) for read-only exports only
qemu-img create -q -f qcow2 "$S/auto.qcow2" 16M
qemu-io -f qcow2 -c 'write -P 0x5a 0 1M' "$S/auto.qcow2" >/dev/null
truncate -s 16M "$S/auto.raw"
check_fails format-auto-writable-refused "$VBLKD" --export "id=a,file=$S/auto.qcow2,format=auto,socket=$S/a.sock"
if start_daemon "id=aq,file=$S/auto.qcow2,format=auto,readonly=on,socket=$S/aq.sock" \
    "id=ar,file=$S/auto.raw,format=auto,readonly=on,socket=$S/ar.sock"; then
    grep -q "aq: format=auto: .* is qcow2" "$tmp/daemon.log" && grep -q "ar: format=auto: .* is raw" "$tmp/daemon.log" &&
        pass format-auto-probes || fail format-auto-probes "$(grep format=auto "$tmp/daemon.log" | tr '\n' ' ')"
    check format-auto-qcow2-readable "$BENCH" --socket "$S/aq.sock" --rw=randread --ios=256
    stop_daemon || true
else
    fail format-auto-probes "$(tail -3 "$tmp/daemon.log" | tr '\n' ' ')"
fi

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
