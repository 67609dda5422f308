#!/bin/bash
# metrics.sh - vblkd --metrics: Prometheus text over HTTP on a loopback port the kernel picks.
# Drives I/O with vblk-bench, scrapes /metrics with curl, checks the counters grew and that
# `promtool check metrics` accepts the text, and that bad HTTP input (other paths, other
# methods, idle and half-sent requests, more connections than the limit) neither hurts the
# daemon nor keeps scrapes out for longer than the connection timeout.
#
# usage: tests/integration/metrics.sh [BUILD_DIR]
# Prints PASS/FAIL lines and "N passed, N failed"; exit 1 on failure.
set -u
name=metrics
. "$(dirname "$0")/lib.sh"

S=$tmp
CONN_TIMEOUT=5 # VBLK_METRICS_CONN_TIMEOUT_S

finish() {
    echo "$passed passed, $failed failed"
    [ "$failed" -eq 0 ]
    exit
}

# scrape FILE [PATH]: GET /metrics (or PATH) into FILE; prints the HTTP status
scrape() {
    curl -s --max-time 10 -o "$1" -w '%{http_code}' "http://127.0.0.1:$port${2:-/metrics}"
}

# value FILE SAMPLE: the value of one sample line (exact name and labels), or nothing
value() {
    awk -v s="$2" '$1 == s { print $2 }' "$1"
}

# sum FILE REGEX: the sum of the samples whose name{labels} matches REGEX
sum() {
    awk -v r="$2" '$1 ~ r { s += $2 } END { printf "%.0f\n", s }' "$1"
}

"$VBLKD" --export "id=d1,file=null://1G,socket=$S/d1.sock,num-queues=2" \
    --export "id=ro,file=null://1G,socket=$S/ro.sock,readonly=on" \
    --metrics 127.0.0.1:0 >"$tmp/daemon.log" 2>&1 &
daemon=$!
port=
for _ in $(seq 200); do
    port=$(sed -n 's/.*metrics: .*(port \([0-9]*\)).*/\1/p' "$tmp/daemon.log")
    [ -n "$port" ] && [ -S "$S/ro.sock" ] && break
    kill -0 "$daemon" 2>/dev/null || break
    sleep 0.05
done
if [ -z "$port" ]; then
    fail daemon-start "vblkd did not come up with --metrics"
    finish
fi
pass daemon-start

# before any I/O: every family is there, at zero
code=$(scrape "$tmp/m0")
[ "$code" = 200 ] && pass scrape-200 || fail scrape-200 "HTTP $code"
if [ "$(value "$tmp/m0" 'vblk_requests_total{export="d1",queue="1",op="read"}')" = 0 ] &&
    [ "$(value "$tmp/m0" 'vblk_inflight{export="ro",queue="0"}')" = 0 ] &&
    grep -q '^# TYPE vblk_latency_seconds histogram$' "$tmp/m0"; then
    pass metrics-before-io
else
    fail metrics-before-io "$(head -5 "$tmp/m0" | tr '\n' ' ')"
fi
if promtool check metrics <"$tmp/m0" >"$tmp/promtool.out" 2>&1; then
    pass promtool-before-io
else
    fail promtool-before-io "$(head -5 "$tmp/promtool.out" | tr '\n' ' ')"
fi

# I/O on both queues of d1, and writes the read-only export refuses
if $BENCH --socket "$S/d1.sock" --rw=randrw --numjobs=2 --iodepth=16 --ios=20000 --json \
    >"$tmp/bench.json" 2>"$tmp/bench.err"; then
    pass bench-d1
else
    fail bench-d1 "$(tail -2 "$tmp/bench.err" | tr '\n' ' ')"
fi
$BENCH --socket "$S/ro.sock" --rw=randwrite --ios=64 --force-write >/dev/null 2>&1

code=$(scrape "$tmp/m1")
[ "$code" = 200 ] && pass scrape-after-io || fail scrape-after-io "HTTP $code"
reads=$(sum "$tmp/m1" '^vblk_requests_total[{]export="d1",.*op="read"')
writes=$(sum "$tmp/m1" '^vblk_requests_total[{]export="d1",.*op="write"')
q0=$(sum "$tmp/m1" '^vblk_requests_total[{]export="d1",queue="0"')
q1=$(sum "$tmp/m1" '^vblk_requests_total[{]export="d1",queue="1"')
if [ "$((reads + writes))" -ge 20000 ] && [ "$q0" -gt 0 ] && [ "$q1" -gt 0 ]; then
    pass requests-grew
else
    fail requests-grew "reads=$reads writes=$writes q0=$q0 q1=$q1"
fi
rbytes=$(sum "$tmp/m1" '^vblk_bytes_total[{]export="d1",.*op="read"')
[ "$rbytes" = "$((reads * 4096))" ] && pass bytes-grew || fail bytes-grew "read bytes $rbytes for $reads reads"
lat=$(sum "$tmp/m1" '^vblk_latency_seconds_count[{]export="d1",.*op="(read|write)"')
[ "$lat" = "$((reads + writes))" ] && pass latency-counted || fail latency-counted "$lat timed of $((reads + writes))"
inf=$(value "$tmp/m1" 'vblk_latency_seconds_bucket{export="d1",queue="0",op="read",le="+Inf"}')
cnt=$(value "$tmp/m1" 'vblk_latency_seconds_count{export="d1",queue="0",op="read"}')
[ -n "$inf" ] && [ "$inf" = "$cnt" ] && pass latency-inf-is-count || fail latency-inf-is-count "+Inf $inf count $cnt"
[ "$(sum "$tmp/m1" '^vblk_inflight[{]')" = 0 ] && pass inflight-zero-when-idle || fail inflight-zero-when-idle "not 0"
errs=$(sum "$tmp/m1" '^vblk_errors_total[{]export="ro"')
[ "$errs" = 64 ] && pass errors-counted || fail errors-counted "$errs errors for 64 refused writes"
[ "$(value "$tmp/m1" 'vblk_throttled_seconds_total{export="d1"}')" = 0.000000000 ] &&
    pass throttle-export-level || fail throttle-export-level "no vblk_throttled_seconds_total{export=\"d1\"}"
if promtool check metrics <"$tmp/m1" >"$tmp/promtool.out" 2>&1; then
    pass promtool-check-metrics
else
    fail promtool-check-metrics "$(head -5 "$tmp/promtool.out" | tr '\n' ' ')"
fi

# bad requests
code=$(scrape "$tmp/x" /nope)
[ "$code" = 404 ] && pass other-path-404 || fail other-path-404 "HTTP $code"
code=$(scrape "$tmp/x" /metrics/x)
[ "$code" = 404 ] && pass metrics-subpath-404 || fail metrics-subpath-404 "HTTP $code"
code=$(curl -s --max-time 10 -o /dev/null -w '%{http_code}' -X POST --data 'x=1' "http://127.0.0.1:$port/metrics")
[ "$code" = 405 ] && pass post-405 || fail post-405 "HTTP $code"
code=$(curl -s --max-time 10 -o /dev/null -w '%{http_code}' -X DELETE "http://127.0.0.1:$port/metrics")
[ "$code" = 405 ] && pass delete-405 || fail delete-405 "HTTP $code"
exec 7<>"/dev/tcp/127.0.0.1/$port"
printf 'NOT HTTP AT ALL\r\n\r\n' >&7
timeout 10 cat <&7 >/dev/null
exec 7>&-
code=$(scrape "$tmp/x")
[ "$code" = 200 ] && pass garbage-request-harmless || fail garbage-request-harmless "HTTP $code"

# a client that connects and never sends, and one that stops half-way through its headers,
# do not keep a scrape waiting
exec 5<>"/dev/tcp/127.0.0.1/$port"
exec 6<>"/dev/tcp/127.0.0.1/$port"
printf 'GET /metrics HTTP/1.1\r\nHost: x\r\n' >&6
start=$SECONDS
code=$(scrape "$tmp/x")
[ "$code" = 200 ] && [ $((SECONDS - start)) -lt 3 ] && pass idle-clients-do-not-block ||
    fail idle-clients-do-not-block "HTTP $code after $((SECONDS - start)) s"
# and the server drops them after its connection timeout
if read -r -t $((CONN_TIMEOUT + 5)) -u 5 _; then
    fail idle-client-dropped "the server sent something to a silent client"
elif [ $? -gt 128 ]; then
    fail idle-client-dropped "still open after $((CONN_TIMEOUT + 5)) s"
else
    pass idle-client-dropped
fi
exec 5>&- 6>&-

# more idle connections than the limit (per address and in all): scrapes are refused only
# until the server drops them, after its connection timeout
for fd in $(seq 20); do
    exec {f}<>"/dev/tcp/127.0.0.1/$port"
    idle+=("$f")
done
start=$SECONDS
code=000
while [ "$code" != 200 ] && [ $((SECONDS - start)) -lt $((CONN_TIMEOUT * 3)) ]; do
    code=$(curl -s --max-time 2 -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/metrics")
    [ "$code" = 200 ] || sleep 0.2
done
[ "$code" = 200 ] && pass scrape-after-connection-flood ||
    fail scrape-after-connection-flood "HTTP $code after $((SECONDS - start)) s"
echo "    (a flood of $((${#idle[@]})) idle connections kept scrapes out for $((SECONDS - start)) s)"
for f in "${idle[@]}"; do exec {f}>&-; done

# the daemon is fine: serves I/O, logs the new counters on SIGUSR1, exits 0 on SIGTERM
check io-after-http-abuse $BENCH --socket "$S/d1.sock" --ios=1000
kill -USR1 "$daemon"
sleep 0.3
grep -q 'd1: requests=.* read_lat_us=' "$tmp/daemon.log" && pass sigusr1-latency ||
    fail sigusr1-latency "no latency in the SIGUSR1 line"
kill -TERM "$daemon"
if wait "$daemon"; then pass sigterm-exit-0; else fail sigterm-exit-0 "exit status $?"; fi
daemon=

# --metrics errors: a bad address, a port in use
check_fails cli-metrics-bad-address "$VBLKD" --export "id=x,file=null://1M,socket=$S/x.sock" --metrics localhost:9100
grep -q -- "--metrics localhost:9100: .*not a numeric" "$tmp/out" && pass cli-metrics-error-says-why ||
    fail cli-metrics-error-says-why "$(cat "$tmp/out")"
python3 -c 'import socket,time,sys
s=socket.socket(); s.bind(("127.0.0.1",0)); s.listen(1); print(s.getsockname()[1], flush=True); time.sleep(30)' >"$tmp/busy.port" &
holder=$!
for _ in $(seq 100); do [ -s "$tmp/busy.port" ] && break; sleep 0.05; done
check_fails cli-metrics-port-in-use "$VBLKD" --export "id=x,file=null://1M,socket=$S/x.sock" \
    --metrics "127.0.0.1:$(cat "$tmp/busy.port")"
grep -q "Address already in use" "$tmp/out" && pass cli-metrics-port-error || fail cli-metrics-port-error "$(cat "$tmp/out")"
[ -e "$S/x.sock" ] && fail cli-metrics-nothing-left "x.sock left behind" || pass cli-metrics-nothing-left
kill "$holder" 2>/dev/null
wait "$holder" 2>/dev/null

finish
