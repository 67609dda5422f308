#!/bin/bash
# rbd.sh - vblkd serving Ceph RBD images (driver=rbd) from a throw-away single-node cluster
# (scripts/ceph-single-node.sh): vblk-bench --verify through cache modes (FUA: write then flush)
# and two I/O threads, a read-only snapshot, a live resize after `rbd resize`, qcow2 on rbd
# (read-only), the exclusive lock (a second writer is refused, locking=off opens), and open
# errors (no pool, no image, bad key, a dead cluster) that end vblkd with exit 1 quickly.
#
# usage: tests/integration/rbd.sh [BUILD_DIR]
# Prints PASS/FAIL lines and "N passed, N failed"; exit 1 on failure.  Needs the ceph packages
# of scripts/deps.txt (there is no skip: CI installs them).
set -u
name=rbd
. "$(dirname "$0")/lib.sh"
CTL=${VBLKCTL:-$build/tools/vblkctl/vblkctl}
ceph_dir=$tmp/ceph
rpc=$tmp/rpc.sock

cleanup_rbd() {
    if [ -n "$daemon" ] && kill -0 "$daemon" 2>/dev/null; then
        kill -KILL "$daemon" 2>/dev/null
        wait "$daemon" 2>/dev/null
    fi
    daemon=
    [ -d "$ceph_dir" ] && "$repo/scripts/ceph-single-node.sh" stop "$ceph_dir"
    cleanup
}
trap cleanup_rbd EXIT
finish() {
    echo "$passed passed, $failed failed"
    [ "$failed" -eq 0 ]
    exit
}

t0=$SECONDS
if ! conf=$("$repo/scripts/ceph-single-node.sh" start "$ceph_dir" 2>"$tmp/ceph.err"); then
    fail "cluster start" "$(tail -5 "$tmp/ceph.err" | tr '\n' ' ')"
    finish
fi
pass "cluster start ($((SECONDS - t0))s)"
R() { timeout 60 rbd -c "$conf" "$@"; }

ctl() { "$CTL" -s "$rpc" "$@"; }
bench() { timeout 120 "$BENCH" "$@"; }
jget() { python3 -c "import json,sys; j=json.load(sys.stdin); print($1)"; }
add() { # id, export options (socket and id added)
    ctl export add "id=$1,socket=$tmp/$1.sock,$2"
}

"$VBLKD" --rpc "$rpc" >"$tmp/daemon.log" 2>&1 &
daemon=$!
for _ in $(seq 100); do [ -S "$rpc" ] && break; sleep 0.05; done
check "vblkd up" test -S "$rpc"

base="driver=rbd,pool=rbd,conf=$conf"
R create --size 256M rbd/a
R create --size 256M rbd/b
R create --size 256M rbd/c
check "export add rbd cache=none" add a "$base,image=a,cache=none"
check "verify 64M cache=none" bench --socket "$tmp/a.sock" --verify --size=64M
check "randrw 3s cache=none" bench --socket "$tmp/a.sock" --rw=randrw --runtime=3
check "export add rbd cache=writethrough (FUA writes)" add b "$base,image=b,cache=writethrough"
check "verify 32M cache=writethrough" bench --socket "$tmp/b.sock" --verify --size=32M
check "export add rbd with 2 I/O threads, cache=writeback" \
    add c "$base,image=c,cache=writeback,num-queues=2,iothreads=2"
check "verify 2 jobs on 2 I/O threads" bench --socket "$tmp/c.sock" --verify --numjobs=2 --size=64M
check "export del c (flushes, closes the image)" ctl export del c

# what vblkd wrote is what rbd reads: compare an export of the image with a read through vblkd
# (a verify read phase of the same seed on a second export of it)
check "write phase seed 5 on a" bench --socket "$tmp/a.sock" --verify-phase=write --size=16M --seed=5
check "export del a" ctl export del a
check "rbd export of the image vblkd wrote" R export --no-progress rbd/a "$tmp/a.raw"
check "a file export of rbd's copy reads seed 5 back" \
    sh -c "'$CTL' -s '$rpc' export add 'id=af,socket=$tmp/af.sock,file=$tmp/a.raw,readonly=on' &&
           '$BENCH' --socket '$tmp/af.sock' --verify-phase=read --size=16M --seed=5"
ctl export del af >/dev/null 2>&1

# a snapshot, read-only
R snap create rbd/a@s1 >/dev/null 2>&1
check_fails "snap= without readonly=on is refused" add s "$base,image=a,snap=s1"
check "export add a snapshot readonly=on" add s "$base,image=a,snap=s1,readonly=on"
check "the snapshot reads seed 5" bench --socket "$tmp/s.sock" --verify-phase=read --size=16M --seed=5
ctl export del s >/dev/null 2>&1

# the exclusive lock: one writer; locking=off opens without it (a migration's target)
check "export add a again" add a "$base,image=a"
check_fails "a second writable export of the same image is refused" add a2 "$base,image=a"
check "a read-only export of it opens" add a3 "$base,image=a,readonly=on"
ctl export del a3 >/dev/null 2>&1
check "locking=off opens while the lock is held" add a4 "$base,image=a,locking=off"
ctl export del a4 >/dev/null 2>&1
# two locking=off exports of one image (a migration): librbd hands the lock to whichever writes
check "export del b (releases its lock)" ctl export del b
check "export add b1 locking=off" add b1 "$base,image=b,locking=off"
check "export add b2 locking=off" add b2 "$base,image=b,locking=off"
check "b1 writes (takes the lock)" bench --socket "$tmp/b1.sock" --verify-phase=write --size=8M --seed=3
check "b2 writes after it (the lock moves)" bench --socket "$tmp/b2.sock" --verify-phase=write --size=4M --seed=4
check "b1 reads b2's data (writes it again, taking the lock back)" sh -c "'$BENCH' --socket '$tmp/b1.sock' --verify-phase=read --size=4M --seed=4 && '$BENCH' --socket '$tmp/b1.sock' --verify --size=4M --seed=6"
ctl export del b1 >/dev/null 2>&1
ctl export del b2 >/dev/null 2>&1

# live resize: the image grows under vblkd, then the export follows
check "rbd resize to 384M" R resize --no-progress --size 384M rbd/a
check "export resize 384M" ctl export resize a 384M
cap=$(bench --socket "$tmp/a.sock" --runtime=1 --json 2>/dev/null | jget 'j["device"]["capacity_bytes"]' 2>/dev/null)
if [ "$cap" = 402653184 ]; then pass "the front-end sees 384M"; else fail "the front-end sees 384M" "capacity $cap"; fi
check "verify over the grown end" bench --socket "$tmp/a.sock" --verify --size=384M --ios=20000
check_fails "export resize beyond the image without truncate" ctl export resize a 512M
check "export resize 512M --truncate grows the image" ctl export resize a 512M --truncate
if R info rbd/a | grep -q "size 512 MiB"; then pass "rbd info shows 512 MiB"; else fail "rbd info shows 512 MiB" "$(R info rbd/a | head -2)"; fi
check "export del a" ctl export del a

# qcow2 on rbd: an image qemu-img made, imported, read back through format=qcow2
truncate -s 64M "$tmp/q.raw"
check "write phase seed 9 to a raw file" sh -c \
    "'$CTL' -s '$rpc' export add 'id=qf,socket=$tmp/qf.sock,file=$tmp/q.raw' &&
     '$BENCH' --socket '$tmp/qf.sock' --verify-phase=write --size=32M --seed=9 &&
     '$CTL' -s '$rpc' export del qf"
qemu-img convert -O qcow2 "$tmp/q.raw" "$tmp/q.qcow2"
check "rbd import of the qcow2 file" R import --no-progress "$tmp/q.qcow2" rbd/q
check "export add format=qcow2 on rbd, readonly" add q "$base,image=q,format=qcow2,readonly=on"
check "qcow2 on rbd reads seed 9" bench --socket "$tmp/q.sock" --verify-phase=read --size=32M --seed=9
ctl export del q >/dev/null 2>&1
check "format=auto finds qcow2 on rbd" add q2 "$base,image=q,format=auto,readonly=on"
if grep -q "format=auto: 'q' is qcow2" "$tmp/daemon.log"; then pass "format=auto logged qcow2"; else fail "format=auto logged qcow2" "no log line"; fi
ctl export del q2 >/dev/null 2>&1
check_fails "writable qcow2 on rbd is refused" add q3 "$base,image=q,format=qcow2"

kill -TERM "$daemon"
if wait "$daemon"; then pass "vblkd exits 0 on SIGTERM"; else fail "vblkd exits 0 on SIGTERM" "exit $?"; fi
daemon=

# open errors: vblkd exits 1 with a message naming what failed, within seconds
open_error() { # name, pattern of the message, export options
    local t=$SECONDS rc
    timeout 60 "$VBLKD" --export "id=e,socket=$tmp/e.sock,$3" >"$tmp/err.log" 2>&1
    rc=$?
    if [ $rc -eq 1 ] && grep -q -- "$2" "$tmp/err.log" && [ $((SECONDS - t)) -le 20 ]; then
        pass "$1 ($((SECONDS - t))s)"
    else
        fail "$1" "exit $rc after $((SECONDS - t))s: $(grep -v '^20' "$tmp/err.log" | tail -2 | tr '\n' ' ')"
    fi
}
open_error "missing pool" "the pool does not exist" "$base,pool=nopool,image=a"
open_error "missing image" "no such image" "$base,image=nope"
open_error "missing snapshot" "no such image or snapshot" "$base,image=a,snap=nosnap,readonly=on"
sed "s|^keyring = .*|keyring = $tmp/bad.keyring|" "$conf" >"$tmp/bad.conf"
printf '[client.admin]\n\tkey = %s\n' "$(ceph-authtool --gen-print-key)" >"$tmp/bad.keyring"
open_error "bad key" "refused client.admin" "driver=rbd,pool=rbd,image=a,conf=$tmp/bad.conf"
open_error "unknown user" "client.nobody" "$base,image=a,user=nobody"
open_error "unreadable conf" "cannot read the Ceph configuration" "driver=rbd,pool=rbd,image=a,conf=$tmp/none.conf"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
sed "s|^mon_host = .*|mon_host = v2:127.0.0.1:$port|" "$conf" >"$tmp/dead.conf"
open_error "a dead cluster (default 10 s timeout)" "no monitor answered within 10s" "driver=rbd,pool=rbd,image=a,conf=$tmp/dead.conf"

"$repo/scripts/ceph-single-node.sh" stop "$ceph_dir"
check "cluster stopped and removed" test ! -e "$ceph_dir"
finish
