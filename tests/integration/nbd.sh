#!/bin/bash
# nbd.sh - vblkd exporting NBD servers (driver=nbd) to vblk-bench: nbdkit's memory plugin and
# qemu-nbd serving raw and qcow2 files (verify, discard/write-zeroes, flush), a qcow2 image over
# nbd (format=qcow2 on driver=nbd, then `qemu-img check`), the server restarted under I/O (no
# error), gone longer than timeout= (errors, daemon up, serves again when it is back), nbdkit's
# delay and error filters, an unreachable server and a bad uri at start.
#
# Servers listen on unix sockets in the temp dir or on a free loopback TCP port; each is started
# and stopped by its PID.
#
# usage: tests/integration/nbd.sh [BUILD_DIR]
# Prints PASS/FAIL lines and "N passed, N failed"; exit 1 on failure.
set -u
name=nbd
. "$(dirname "$0")/lib.sh"

if ! command -v nbdkit >/dev/null || ! command -v qemu-nbd >/dev/null; then
    echo "SKIP nbd: nbdkit or qemu-nbd not installed"
    echo "0 passed, 0 failed"
    exit 0
fi

server=
stop_server() { # [SIGNAL]: nbdkit waits for an idle client on TERM; KILL is a crash
    if [ -n "$server" ]; then
        kill -"${1:-TERM}" "$server" 2>/dev/null
        wait "$server" 2>/dev/null
        server=
    fi
}
cleanup_nbd() { stop_server KILL; cleanup; }
trap cleanup_nbd EXIT

wait_sock() { # path
    for _ in $(seq 100); do
        [ -S "$1" ] && return 0
        sleep 0.05
    done
    return 1
}
wait_port() { # port
    for _ in $(seq 100); do
        (echo >/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0
        sleep 0.05
    done
    return 1
}
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# nbdkit_unix SOCK ARGS... / nbdkit_tcp PORT ARGS...: in the foreground of a background job
nbdkit_unix() {
    local s=$1
    shift
    rm -f "$s"
    nbdkit -f -U "$s" "$@" >>"$tmp/server.log" 2>&1 &
    server=$!
    wait_sock "$s"
}
nbdkit_tcp() {
    local p=$1
    shift
    nbdkit -f -i 127.0.0.1 -p "$p" "$@" >>"$tmp/server.log" 2>&1 &
    server=$!
    wait_port "$p"
}
qemu_nbd_unix() { # sock format file
    rm -f "$1"
    qemu-nbd -k "$1" -f "$2" --cache=writeback --discard=unmap "$3" >>"$tmp/server.log" 2>&1 &
    server=$!
    wait_sock "$1"
}

start_daemon() { # EXPORT
    "$VBLKD" --export "$1" >"$tmp/daemon.log" 2>&1 &
    daemon=$!
    local s
    s=$(echo "$1" | sed -n 's/.*socket=\([^,]*\).*/\1/p')
    for _ in $(seq 200); do
        [ -S "$s" ] && return 0
        kill -0 "$daemon" 2>/dev/null || { daemon=; return 1; }
        sleep 0.05
    done
    return 1
}
stop_daemon() {
    kill -TERM "$daemon"
    wait "$daemon"
    local rc=$?
    daemon=
    return $rc
}
bench() { "$BENCH" --socket "$tmp/vb.sock" "$@"; }

V=$tmp/vb.sock
N=$tmp/nbd.sock
U="nbd+unix:///?socket=$N"

# --- nbdkit memory: verify, discard, write-zeroes, flush, a clean stop ---
nbdkit_unix "$N" memory 64M
if start_daemon "id=m,driver=nbd,uri=$U,socket=$V"; then
    check "memory: verify" bench --verify --size=32M --bs=64k
    check "memory: random 4k verify" bench --verify --size=8M --bs=4k --iodepth=64
    check "memory: randrw" bench --rw=randrw --runtime=2
    # 1 MiB writes fill the socket: libnbd sends them in pieces as it becomes writable
    check "memory: 1M writes" bench --rw=randwrite --bs=1M --runtime=2
    check "memory: 1M verify" bench --verify --bs=1M --size=64M
    grep -q "trim yes, write-zeroes yes" "$tmp/daemon.log" && pass "memory: trim and write-zeroes offered" ||
        fail "memory: trim and write-zeroes offered" "$(grep connected "$tmp/daemon.log")"
    check "memory: clean stop" stop_daemon
else
    fail "memory: start" "$(tail -2 "$tmp/daemon.log")"
fi
stop_server

# discard and write-zeroes reach the server: qemu-nbd over a raw file, then qemu-img compares
truncate -s 32M "$tmp/raw.img"
qemu_nbd_unix "$N" raw "$tmp/raw.img"
if start_daemon "id=r,driver=nbd,uri=$U,socket=$V"; then
    check "qemu-nbd raw: verify" bench --verify --size=16M --bs=16k
    # the guest-facing ops: vblk-bench only writes and reads, so use a python front-end-less
    # check: write-zeroes and discard through vblkd are exercised by the e2e guest (fstrim,
    # mkfs); here the raw file must hold what vblk-bench wrote
    check "qemu-nbd raw: stop" stop_daemon
    stop_server
    python3 - "$tmp/raw.img" <<'EOF' && pass "qemu-nbd raw: data on the file" || fail "qemu-nbd raw: data on the file" "file holds zeroes only"
import sys
d = open(sys.argv[1], 'rb').read(16 << 20)
sys.exit(0 if d.count(0) < len(d) // 2 else 1)
EOF
else
    fail "qemu-nbd raw: start" "$(tail -2 "$tmp/daemon.log")"
fi
stop_server

# qemu-nbd serving a qcow2 file (qemu-nbd decodes it): vblkd sees raw
qemu-img create -q -f qcow2 "$tmp/served.qcow2" 64M
qemu_nbd_unix "$N" qcow2 "$tmp/served.qcow2"
if start_daemon "id=q,driver=nbd,uri=$U,socket=$V"; then
    check "qemu-nbd qcow2: verify" bench --verify --size=32M --bs=32k
    check "qemu-nbd qcow2: stop" stop_daemon
else
    fail "qemu-nbd qcow2: start" "$(tail -2 "$tmp/daemon.log")"
fi
stop_server
check "qemu-nbd qcow2: qemu-img check" qemu-img check "$tmp/served.qcow2"

# qcow2 OVER nbd: vblkd's format=qcow2 on driver=nbd, the image served as raw bytes; the export
# cannot grow, so the image is preallocated (metadata)
qemu-img create -q -f qcow2 -o preallocation=metadata "$tmp/over.qcow2" 64M
qemu_nbd_unix "$N" raw "$tmp/over.qcow2"
if start_daemon "id=o,driver=nbd,uri=$U,format=qcow2,socket=$V"; then
    check "qcow2 over nbd: verify" bench --verify --size=32M --bs=64k
    check "qcow2 over nbd: random verify" bench --verify --size=16M --bs=4k
    check "qcow2 over nbd: stop" stop_daemon
else
    fail "qcow2 over nbd: start" "$(tail -2 "$tmp/daemon.log")"
fi
stop_server
check "qcow2 over nbd: qemu-img check" qemu-img check "$tmp/over.qcow2"

# --- the server restarts under I/O (TCP, same port, back within 2 s): no error ---
P=$(free_port)
nbdkit_tcp "$P" memory 64M
if start_daemon "id=t,driver=nbd,uri=nbd://127.0.0.1:$P/,timeout=10,reconnect-delay-ms=100,socket=$V"; then
    bench --rw=randread --runtime=6 >"$tmp/bench.out" 2>&1 &
    b=$!
    sleep 1.5
    stop_server
    sleep 0.5
    nbdkit_tcp "$P" memory 64M
    if wait $b; then pass "restart under I/O: no error"; else fail "restart under I/O: no error" "$(tail -2 "$tmp/bench.out")"; fi
    grep -q "reconnected to" "$tmp/daemon.log" && pass "restart under I/O: reconnected" ||
        fail "restart under I/O: reconnected" "no reconnection logged"
    # writes too (the new server is empty: verify writes first)
    bench --verify --size=8M --bs=4k --runtime=6 >"$tmp/bench.out" 2>&1 &
    b=$!
    sleep 0.3
    stop_server KILL
    sleep 0.8
    nbdkit_tcp "$P" memory 64M
    wait $b
    rc=$?
    # the restarted memory server lost what was written before it: a verify may mismatch, but
    # no request may fail
    if grep -q "errors=0" "$tmp/bench.out"; then pass "restart under writes: no error"; else fail "restart under writes: no error" "rc=$rc $(tail -2 "$tmp/bench.out")"; fi
    # --- gone longer than timeout= ---
    stop_daemon
else
    fail "restart: start" "$(tail -2 "$tmp/daemon.log")"
fi
if start_daemon "id=g,driver=nbd,uri=nbd://127.0.0.1:$P/,timeout=2,reconnect-delay-ms=100,socket=$V"; then
    stop_server KILL
    bench --rw=randread --ios=64 --runtime=20 >"$tmp/bench.out" 2>&1
    rc=$?
    if [ $rc = 1 ] && ! grep -q "errors=0 " "$tmp/bench.out"; then pass "server gone > timeout: requests fail"; else fail "server gone > timeout: requests fail" "rc=$rc $(tail -1 "$tmp/bench.out")"; fi
    kill -0 "$daemon" 2>/dev/null && pass "server gone > timeout: daemon up" || fail "server gone > timeout: daemon up" "exited"
    nbdkit_tcp "$P" memory 64M
    sleep 0.5
    ok=0
    for _ in $(seq 30); do # the connector retries at most every 5 s
        if bench --verify --size=4M --runtime=5 >"$tmp/bench.out" 2>&1; then ok=1; break; fi
        sleep 0.5
    done
    [ $ok = 1 ] && pass "server back: serves again" || fail "server back: serves again" "$(tail -1 "$tmp/bench.out")"
    check "server back: clean stop" stop_daemon
else
    fail "timeout: start" "$(tail -2 "$tmp/daemon.log")"
fi
stop_server

# --- slow and failing servers ---
nbdkit_unix "$N" --filter=delay memory 64M rdelay=20ms wdelay=20ms
if start_daemon "id=s,driver=nbd,uri=$U,socket=$V"; then
    check "delay filter: verify" bench --verify --size=2M --bs=64k
    check "delay filter: stop" stop_daemon
else
    fail "delay filter: start" "$(tail -2 "$tmp/daemon.log")"
fi
stop_server
nbdkit_unix "$N" --filter=error memory 64M error=EIO error-pread-rate=50%
if start_daemon "id=e,driver=nbd,uri=$U,socket=$V"; then
    bench --rw=randread --ios=200 >"$tmp/bench.out" 2>&1
    rc=$?
    [ $rc = 1 ] && grep -q "errors=[1-9]" "$tmp/bench.out" && pass "error filter: IOERR reaches the guest" ||
        fail "error filter: IOERR reaches the guest" "rc=$rc $(tail -1 "$tmp/bench.out")"
    check "error filter: writes still work" bench --rw=randwrite --ios=200
    kill -0 "$daemon" 2>/dev/null && pass "error filter: daemon up" || fail "error filter: daemon up" "exited"
    check "error filter: stop" stop_daemon
else
    fail "error filter: start" "$(tail -2 "$tmp/daemon.log")"
fi
stop_server

# read-only server: refused for a writable export, served to a readonly=on one
nbdkit_unix "$N" -r memory 16M
"$VBLKD" --export "id=ro,driver=nbd,uri=$U,socket=$V" >"$tmp/out" 2>&1
rc=$?
[ $rc = 1 ] && grep -q "read-only" "$tmp/out" && pass "read-only server: writable export refused" ||
    fail "read-only server: writable export refused" "rc=$rc $(cat "$tmp/out")"
if start_daemon "id=ro,driver=nbd,uri=$U,readonly=on,socket=$V"; then
    check "read-only server: readonly export reads" bench --rw=randread --ios=500
    check "read-only server: stop" stop_daemon
else
    fail "read-only server: readonly export" "$(tail -2 "$tmp/daemon.log")"
fi
stop_server

# --- at start: an unreachable server, a bad uri ---
P=$(free_port)
timeout 30 "$VBLKD" --export "id=u,driver=nbd,uri=nbd://127.0.0.1:$P/,socket=$V" >"$tmp/out" 2>&1
rc=$?
[ $rc = 1 ] && grep -q "export u: cannot connect to nbd://127.0.0.1:$P/: " "$tmp/out" && pass "unreachable server: clear error, exit 1" ||
    fail "unreachable server: clear error, exit 1" "rc=$rc $(cat "$tmp/out")"
timeout 30 "$VBLKD" --export "id=u,driver=nbd,uri=http://example/,socket=$V" >"$tmp/out" 2>&1
rc=$?
[ $rc != 0 ] && grep -q "uri=" "$tmp/out" && pass "bad uri: option error" || fail "bad uri: option error" "rc=$rc $(cat "$tmp/out")"

echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
