#!/bin/bash
# control.sh BUILD - vblkd run live over its control socket, driven by vblkctl, with vblk-bench as
# the front-ends: a daemon started with no export, export add/list/set/resize/del, throttling
# measured, export-del force under I/O (the data is kept), stats, bad requests and clients that
# misbehave, shutdown.  Prints PASS/FAIL lines and "N passed, N failed".
set -u
name=control
. "$(dirname "$0")/lib.sh"
CTL=${VBLKCTL:-$build/tools/vblkctl/vblkctl}
sock=$tmp/ctl.sock

ctl() { "$CTL" -s "$sock" "$@"; }
jget() { # JSON on stdin, python expression on j
    python3 -c "import json,sys; j=json.load(sys.stdin); print($1)"
}
bench() { "$BENCH" --json "$@"; }
raw() { # send one line, print the answer line
    python3 - "$sock" "$1" <<'EOF'
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
s.sendall(sys.argv[2].encode() + b"\n")
s.settimeout(10)
buf = b""
while b"\n" not in buf:
    d = s.recv(65536)
    if not d:
        break
    buf += d
print(buf.decode().strip())
EOF
}
check_raw() { # name, request line, pattern the answer must contain
    if raw "$2" | grep -q -- "$3"; then pass "$1"; else fail "$1" "answer: $(raw "$2")"; fi
}

"$VBLKD" --rpc "$sock" --rpc-mode 0600 >"$tmp/daemon.log" 2>&1 &
daemon=$!
for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.05; done
check "start with no export" test -S "$sock"
check "socket mode 0600" test "$(stat -c %a "$sock")" = 600
check "version" ctl version

# add two exports, use both from front-ends
truncate -s 64M "$tmp/f1.img"
check "export add null" ctl export add "id=d1,file=null://1G,socket=$tmp/d1.sock,read-zeroes=off"
check "export add file" ctl export add "id=f1,file=$tmp/f1.img,socket=$tmp/f1.sock,cache=writeback"
check_fails "export add duplicate id" ctl export add "id=d1,file=null://1G,socket=$tmp/d9.sock"
check_fails "export add unknown key" ctl export add "id=d2,file=null://1G,socket=$tmp/d2.sock,colour=red"
check_fails "export add missing file" ctl export add "id=d2,file=$tmp/nope.img,socket=$tmp/d2.sock"
check "export list shows both" sh -c "'$CTL' -s '$sock' --json export list | python3 -c \"import json,sys; j=json.load(sys.stdin); assert sorted(e['id'] for e in j['exports']) == ['d1','f1'], j\""
check "a front-end on the added null export" bench --socket "$tmp/d1.sock" --runtime=1
check "a second front-end writes the added file export" \
    bench --socket "$tmp/f1.sock" --verify-phase=write --size=16M --seed=7

# throttling: iops-total=500 measured over 10 s within 10%, then lifted
check "export set iops-total=500" ctl export set d1 iops-total=500
if bench --socket "$tmp/d1.sock" --runtime=10 --iodepth=8 --wait >"$tmp/thr.json" 2>&1; then
    iops=$(jget 'j["iops"]' <"$tmp/thr.json")
    if python3 -c "import sys; sys.exit(0 if 450 <= $iops <= 550 else 1)"; then
        pass "throttled to 500 IOPS (measured $iops)"
    else
        fail "throttled to 500 IOPS" "measured $iops"
    fi
else
    fail "throttled run" "$(tail -2 "$tmp/thr.json")"
fi
check "stats count the throttled time" sh -c "'$CTL' -s '$sock' --json stats d1 | python3 -c \"import json,sys; j=json.load(sys.stdin); e=j['exports'][0]; assert e['throttled_ns'] > 10**9 and e['throttled'] > 1000, e\""
check "export set lifts the limit" ctl export set d1 iops-total=0
if bench --socket "$tmp/d1.sock" --runtime=2 --iodepth=8 >"$tmp/free.json" 2>&1 &&
    python3 -c "import json,sys; sys.exit(0 if json.load(open('$tmp/free.json'))['iops'] > 5000 else 1)"; then
    pass "unthrottled again ($(jget 'int(j["iops"])' <"$tmp/free.json") IOPS)"
else
    fail "unthrottled again" "$(head -c 300 "$tmp/free.json")"
fi
check_fails "export set of a key that is not live" ctl export set d1 cache=none
check_fails "export set of a bad limit" ctl export set d1 iops-total-max=5

# resize, as the front-end would see it
check "export resize" ctl export resize d1 2G
check "the new size is listed and served" sh -c "'$BENCH' --socket '$tmp/d1.sock' --json --runtime=1 | python3 -c \"import json,sys; assert json.load(sys.stdin)['device']['capacity_bytes'] == 2<<30\""
check "export resize --truncate grows the file" ctl export resize f1 96M --truncate
check "the file grew" test "$(stat -c %s "$tmp/f1.img")" = $((96 << 20))

# stats
check "stats count reads" sh -c "'$CTL' -s '$sock' --json stats d1 | python3 -c \"import json,sys; j=json.load(sys.stdin); assert j['exports'][0]['ops']['read']['ops'] > 1000, j\""
check "stats as a table" sh -c "'$CTL' -s '$sock' stats | grep -q d1"
check "stats show the polling policy of each queue" sh -c "'$CTL' -s '$sock' --json stats d1 | python3 -c \"import json,sys; p=json.load(sys.stdin)['exports'][0]['queues'][0]['poll']; assert p['mode'] in ('sleep','window','spin') and p['trials'] >= 1 and p['sleep_cost_ns'] > 0, p\""

# export-del under I/O: refused without force, done with it; what was written stays
"$BENCH" --socket "$tmp/f1.sock" --rw=randread --runtime=30 --size=16M >"$tmp/bg.out" 2>&1 &
bg=$!
sleep 1
check_fails "export del refused while a front-end is connected" ctl export del f1
check "export del --force under I/O" ctl export del f1 --force
if wait_exit_pid() { for _ in $(seq 100); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.1; done; return 1; }; wait_exit_pid $bg; then
    pass "the front-end was disconnected"
else
    kill -KILL $bg
    fail "the front-end was disconnected" "vblk-bench still running"
fi
wait $bg 2>/dev/null
check "the socket is gone" test ! -e "$tmp/f1.sock"
check "the other export still serves" bench --socket "$tmp/d1.sock" --runtime=1
check "re-add the file" ctl export add "id=f1,file=$tmp/f1.img,socket=$tmp/f1.sock"
check "data written before the forced del reads back" \
    bench --socket "$tmp/f1.sock" --verify-phase=read --size=16M --seed=7

# hostile control clients: the daemon answers with errors and keeps serving
check_raw "not JSON: parse error" 'hello' '-32700'
check_raw "unknown method" '{"jsonrpc":"2.0","id":1,"method":"rm-rf"}' '-32601'
check_raw "wrong type" '{"jsonrpc":"2.0","id":1,"method":"export-del","params":{"id":5}}' '-32602'
check_raw "unknown export" '{"jsonrpc":"2.0","id":1,"method":"export-resize","params":{"id":"zz","size":1}}' 'no such export'
check_raw "a path that is no disk image" "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"export-add\",\"params\":{\"id\":\"e\",\"file\":\"/proc/self/mem\",\"socket\":\"$tmp/e.sock\"}}" '-32000'
python3 - "$sock" >"$tmp/hostile.out" 2>&1 <<'EOF' &
import socket, sys, time
# idle clients that never send, one that never reads its answers, and an oversized line
idle = []
for _ in range(20):
    s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); idle.append(s)
greedy = socket.socket(socket.AF_UNIX); greedy.connect(sys.argv[1])
greedy.setblocking(False)
req = b'{"jsonrpc":"2.0","id":1,"method":"export-list"}\n' * 2000
try:
    for _ in range(50):
        greedy.send(req)
except BlockingIOError:
    pass
big = socket.socket(socket.AF_UNIX); big.connect(sys.argv[1])
try:
    big.sendall(b"[" * (200 * 1024))
    print("big: sent")
except OSError as e:
    print("big: closed", e)
time.sleep(3)
EOF
hostile=$!
sleep 1
check "served while clients misbehave" ctl export list
check "I/O goes on meanwhile" bench --socket "$tmp/d1.sock" --runtime=1
wait $hostile
check "still served after they leave" ctl version

# shutdown over the socket: the daemon drains and exits 0
check "shutdown" ctl shutdown
if wait "$daemon"; then pass "daemon exited 0"; else fail "daemon exited 0" "status $?"; fi
daemon=
check "the control socket is removed" test ! -e "$sock"

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
