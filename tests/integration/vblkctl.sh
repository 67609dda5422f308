#!/bin/bash
# vblkctl.sh - vblkctl against a mock of vblkd's control socket (vblkctl_mock.py, which records
# every request): the exact request (method, params) each command sends, table and --json output,
# stats --watch rates, and the exit status for error responses (1), malformed responses and a
# wrong id (1), a late response (1), an unreachable socket or a connect timeout (3) and usage
# errors (2, nothing sent).
#
# usage: tests/integration/vblkctl.sh [BUILD_DIR]     (VBLKCTL=path overrides the binary)
# Prints PASS/FAIL lines and "N passed, N failed"; exit 1 on failure.
set -u
name=vblkctl
. "$(dirname "$0")/lib.sh"
CTL=${VBLKCTL:-$build/tools/vblkctl/vblkctl}
MOCK=(python3 "$here/vblkctl_mock.py")
sock=$tmp/rpc.sock
log=$tmp/requests.log
modefile=$tmp/mode
rc=0

if [ ! -x "$CTL" ] || ! command -v python3 >/dev/null; then
    fail setup "needs $CTL and python3"
    echo "$passed passed, $failed failed"
    exit 1
fi

echo normal >"$modefile"
"${MOCK[@]}" serve "$sock" "$log" "$modefile" >"$tmp/daemon.log" 2>&1 &
daemon=$!
for _ in $(seq 100); do
    [ -S "$sock" ] && break
    sleep 0.05
done
if [ ! -S "$sock" ]; then
    fail mock-start "the mock server did not come up"
    echo "$passed passed, $failed failed"
    exit 1
fi

# ctl ARGS...: vblkctl -s SOCK ARGS with a fresh request log; sets rc, $tmp/out, $tmp/err
ctl() { ctl0 -s "$sock" "$@"; }
ctl0() { # without -s
    : >"$log"
    "$CTL" "$@" >"$tmp/out" 2>"$tmp/err"
    rc=$?
}
mode() { echo "$1" >"$modefile"; }

# expect NAME RC REQUESTS CHECK...: judge the last ctl run.
#   RC        expected exit status
#   REQUESTS  what the mock must have received (see vblkctl_mock.py check), or - (not checked)
#   CHECK     out:ERE / err:ERE (stdout / stderr has a matching line), !out:ERE / !err:ERE (none),
#             noout (stdout empty), py:EXPR (python, true for r = stdout parsed as JSON),
#             lines:EXPR (python, true for rs = the JSON objects of stdout, one per line)
expect() {
    local n=$1 want=$2 reqs=$3 c why=
    shift 3
    [ "$rc" = "$want" ] || why="exit $rc, expected $want"
    if [ -z "$why" ] && [ "$reqs" != - ]; then
        if why=$("${MOCK[@]}" check "$log" "$reqs"); then
            why=
        else
            [ -n "$why" ] || why="request check failed"
        fi
    fi
    for c in "$@"; do
        [ -z "$why" ] || break
        case "$c" in
        out:*) grep -qE -- "${c#out:}" "$tmp/out" || why="stdout has no line matching '${c#out:}'" ;;
        err:*) grep -qE -- "${c#err:}" "$tmp/err" || why="stderr has no line matching '${c#err:}'" ;;
        !out:*) ! grep -qE -- "${c#!out:}" "$tmp/out" || why="stdout matches '${c#!out:}'" ;;
        !err:*) ! grep -qE -- "${c#!err:}" "$tmp/err" || why="stderr matches '${c#!err:}'" ;;
        noout) [ ! -s "$tmp/out" ] || why="stdout is not empty" ;;
        py:*)
            python3 -c 'import json, sys
r = json.load(open(sys.argv[1]))
sys.exit(0 if eval(sys.argv[2]) else 1)' "$tmp/out" "${c#py:}" 2>/dev/null ||
                why="JSON output fails: ${c#py:}"
            ;;
        lines:*)
            python3 -c 'import json, sys
rs = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
sys.exit(0 if eval(sys.argv[2]) else 1)' "$tmp/out" "${c#lines:}" 2>/dev/null ||
                why="JSON lines fail: ${c#lines:}"
            ;;
        *) why="bad check '$c'" ;;
        esac
    done
    if [ -z "$why" ]; then
        pass "$n"
    else
        echo "FAIL $n: $why"
        echo "    stdout: $(head -c 400 "$tmp/out" | tr '\n' '|')"
        echo "    stderr: $(head -c 400 "$tmp/err" | tr '\n' '|')"
        failed=$((failed + 1))
    fi
}

# ---- every command: the request sent, the table and --json output ----

ctl version
expect version 0 '[{"method":"version"}]' 'out:^vblkd +0\.1\.0$' 'out:^vblkctl '
ctl --json version
expect version-json 0 '[{"method":"version"}]' 'py:r == {"version": "0.1.0"}'

ctl export list
expect export-list 0 '[{"method":"export-list"}]' \
    'out:^ID +STATE +SIZE +DRIVER +SOCKET +QUEUES$' \
    'out:^d1 +connected +10G +qcow2 +/run/vblk/d1\.sock +2$' \
    'out:^d2 +listening +64M +raw +/run/vblk/d2\.sock +1$'
ctl --json export list
expect export-list-json 0 '[{"method":"export-list"}]' \
    'py:[e["id"] for e in r["exports"]] == ["d1", "d2"]' \
    'py:r["exports"][0]["config"]["format"] == "qcow2" and r["exports"][0]["connected"] is True'
ctl export list d2
expect export-list-id 0 '[{"method":"export-list","params":{"id":"d2"}}]' 'out:^d2 +listening' '!out:^d1'
ctl export list nope
expect export-list-unknown 1 '[{"method":"export-list","params":{"id":"nope"}}]' \
    "err:^vblkctl: unknown export 'nope'$" noout

ctl export add 'id=d3,file=/tmp/a,,b.img,socket=/tmp/d3.sock' num-queues=2 readonly=on
expect export-add 0 '[{"method":"export-add","params":{"id":"d3","file":"/tmp/a,b.img",
    "socket":"/tmp/d3.sock","num-queues":"2","readonly":"on"}}]' \
    'out:^ID +STATE +SIZE +DRIVER +SOCKET +QUEUES$' 'out:^d3 +listening +1G +raw +/tmp/d3\.sock +2$'
ctl --json export add id=d4,file=/tmp/d4.img,socket=/tmp/d4.sock,iops-total=100,
expect export-add-json 0 '[{"method":"export-add","params":{"id":"d4","file":"/tmp/d4.img",
    "socket":"/tmp/d4.sock","iops-total":"100"}}]' \
    'py:r["id"] == "d4" and r["config"]["iops-total"] == "100" and r["state"] == "listening"'
ctl export add id=d3,file=/tmp/x,socket=/tmp/x.sock
expect export-add-duplicate 1 '[{"method":"export-add","params":{"id":"d3","file":"/tmp/x",
    "socket":"/tmp/x.sock"}}]' "err:^vblkctl: export 'd3' already exists$" noout
ctl export add id=d5,file=/x,socket=/y,bogus=1
expect export-add-unknown-key 1 '[{"method":"export-add","params":{"id":"d5","file":"/x",
    "socket":"/y","bogus":"1"}}]' "err:^vblkctl: unknown key 'bogus'$"

ctl export resize d2 2G --truncate
expect export-resize 0 '[{"method":"export-resize","params":{"id":"d2","size":"2G","truncate":true}}]' \
    'out:^d2: size 2147483648 bytes \(2G\)$'
ctl --json export resize d2 1048576
expect export-resize-json 0 '[{"method":"export-resize","params":{"id":"d2","size":"1048576",
    "truncate":false}}]' 'py:r == {"size": 1048576}'

ctl export set d2 iops-total=1000,bps-total=10M poll-us=50
expect export-set 0 '[{"method":"export-set","params":{"id":"d2","iops-total":"1000",
    "bps-total":"10M","poll-us":"50"}}]' 'out:^KEY +VALUE$' 'out:^iops-total +1000$' \
    'out:^poll-us +50$' 'out:^file +/var/lib/vblk/d2\.img$'
ctl --json export set d2 readonly=on
expect export-set-json 0 '[{"method":"export-set","params":{"id":"d2","readonly":"on"}}]' \
    'py:r["config"]["readonly"] == "on" and r["config"]["iops-total"] == "1000"'
ctl export set d2 file=/other
expect export-set-not-live 1 '[{"method":"export-set","params":{"id":"d2","file":"/other"}}]' \
    'err:^vblkctl: file: not a live setting$'

ctl stats
expect stats 0 '[{"method":"stats"}]' \
    'out:^ID +READS +WRITES +MB_READ +MB_WRITTEN +INFLIGHT +P50_US +P99_US +ERRORS +THROTTLED$' \
    'out:^d1 +[0-9]{5} +[0-9]{5} +[0-9]+\.[0-9]{2} +[0-9]+\.[0-9]{2} +3 +45\.5 +120\.[23] +3 +7$' \
    'out:^d1/q0 +[0-9]+ +[0-9]+ +[0-9.]+ +[0-9.]+ +1 +45\.5 +120\.[23] +3 +-$' 'out:^d1/q1 ' \
    'out:^d2 +0 +0 +0\.00 +0\.00 +0 ' '!out:^d2/q'
ctl --json stats d1
expect stats-json 0 '[{"method":"stats","params":{"id":"d1"}}]' \
    'py:len(r["exports"]) == 1 and r["exports"][0]["id"] == "d1"' \
    'py:r["exports"][0]["ops"]["write"]["bytes"] > 0 and r["exports"][0]["latency_us"]["p99"] == 120.25'
ctl stats nope
expect stats-unknown 1 '[{"method":"stats","params":{"id":"nope"}}]' "err:unknown export 'nope'"

# watch, stopped by one SIGINT/SIGTERM (exit 0).  `timeout --foreground` signals vblkctl once, as
# a terminal's ^C does: its default second signal to the whole process group can land during
# LeakSanitizer's exit-time check in the ASan run, which then hangs (-k 10 turns that into a FAIL).
# The mock advances d1 by 1000 reads and 500 writes of 4 KiB and uptime by 1 s per sample
: >"$log"
timeout --foreground -k 10 -s INT --preserve-status 1.2 "$CTL" -s "$sock" stats -w 0.2 >"$tmp/out" 2>"$tmp/err"
rc=$?
expect stats-watch 0 '{"repeat":{"method":"stats"},"min":3}' \
    'out:^ID +R/S +W/S +RMB/S +WMB/S +INFLIGHT +P50_US +P99_US +ERRORS +THROTTLED$' \
    'out:^# [0-9:]+ \(per second since each export started\)$' \
    'out:^d1 +5[0-9]{2} +2[0-9]{2} +2\.[0-9]{2} +0\.[89][0-9] +3 ' \
    'out:^# [0-9:]+ \(per second since the previous sample\)$' \
    'out:^d1 +1000 +500 +4\.10 +2\.05 +3 +45\.5 +120\.[23] +3 +7$' \
    'out:^d1/q0 +500 +250 +2\.05 +1\.02 +1 ' 'out:^d2 +0 +0 +0\.00 +0\.00 '
: >"$log"
timeout --foreground -k 10 -s TERM --preserve-status 0.8 "$CTL" -s "$sock" --json stats d2 --watch 0.2 >"$tmp/out" 2>"$tmp/err"
rc=$?
expect stats-watch-json-sigterm 0 '{"repeat":{"method":"stats","params":{"id":"d2"}},"min":2}' \
    'lines:len(rs) >= 2 and all(x["exports"][0]["id"] == "d2" for x in rs)'

ctl raw export-list '{"id": "d2"}'
expect raw 0 '[{"method":"export-list","params":{"id":"d2"}}]' 'py:r["exports"][0]["size"] == 1048576'
ctl raw version
expect raw-no-params 0 '[{"method":"version"}]' 'py:r["version"] == "0.1.0"'
ctl raw frobnicate '{}'
expect raw-unknown-method 1 '[{"method":"frobnicate","params":{}}]' \
    'err:^vblkctl: method not found: frobnicate$' noout
ctl raw stats '[1]'
expect raw-params-array 1 - 'err:^vblkctl: params: want an object$'

# options after the command, the socket from $VBLKD_RPC, "--"
ctl0 export list d1 --json -s "$sock" -t 5
expect options-after-command 0 '[{"method":"export-list","params":{"id":"d1"}}]' \
    'py:r["exports"][0]["id"] == "d1"'
VBLKD_RPC=$sock ctl0 version
expect socket-from-env 0 '[{"method":"version"}]' 'out:^vblkd +0\.1\.0$'

ctl export del d1
expect export-del-connected 1 '[{"method":"export-del","params":{"id":"d1","force":false}}]' \
    'err:^vblkctl: export d1: a front-end is connected' noout
ctl export del d3
expect export-del 0 '[{"method":"export-del","params":{"id":"d3","force":false}}]' noout
ctl export del --force d1
expect export-del-force 0 '[{"method":"export-del","params":{"id":"d1","force":true}}]' noout
ctl export del -- d4
expect export-del-dashdash 0 '[{"method":"export-del","params":{"id":"d4","force":false}}]' noout
ctl export list
expect export-list-after-del 0 '[{"method":"export-list"}]' 'out:^d2 ' '!out:^d[134] '
ctl shutdown
expect shutdown 0 '[{"method":"shutdown"}]' noout

# ---- usage errors: exit 2, nothing sent ----
usage() { # name, args...
    local n=$1
    shift
    ctl "$@"
    expect "usage-$n" 2 '[]' 'err:^vblkctl: ' noout
}
usage no-command
usage unknown-command frob
usage unknown-option --bogus version
usage unknown-short-option -x version
usage socket-without-value version -s
usage bad-timeout -t -1 version
usage bad-timeout-text -t soon version
usage version-extra-arg version extra
usage shutdown-extra-arg shutdown now
usage export-no-subcommand export
usage export-unknown-subcommand export frob
usage export-add-no-args export add
usage export-add-not-kv export add id=x,novalue
usage export-add-empty-key export add =x
usage export-add-duplicate-key export add id=a id=b
usage export-add-too-long export add "id=a,file=$(printf '%070000d' 0),socket=/s"
usage export-del-no-id export del
usage export-del-two-ids export del a b
usage export-del-wrong-option export del d2 --truncate
usage export-list-two-ids export list a b
usage export-resize-no-size export resize d2
usage export-resize-bad-size export resize d2 1.5G
usage export-resize-negative export resize d2 -5
usage export-set-no-kv export set d2
usage export-set-id-key export set d2 id=d9
usage stats-watch-zero stats -w 0
usage stats-watch-text stats --watch fast
usage stats-two-ids stats a b
usage raw-no-method raw
usage raw-bad-json raw stats '{"id":'
usage raw-trailing-json raw stats '{} x'
usage raw-extra-arg raw stats '{}' extra

for h in "--help" "-h" "export --help" "export add --help" "export resize --help" "stats --help" \
    "raw --help" "help stats" "version --help"; do
    # shellcheck disable=SC2086
    ctl $h
    expect "help-${h// /_}" 0 '[]' 'out:^usage: vblkctl' '!err:.'
done

# ---- the socket cannot be reached: exit 3 ----
ctl0 -s "$tmp/missing.sock" version
expect unreachable-missing 3 - "err:^vblkctl: cannot connect to $tmp/missing.sock: No such file or directory$" noout
: >"$tmp/plain-file"
ctl0 -s "$tmp/plain-file" version
expect unreachable-not-a-socket 3 - "err:^vblkctl: cannot connect to $tmp/plain-file: " noout
python3 -c 'import socket, sys; socket.socket(socket.AF_UNIX).bind(sys.argv[1])' "$tmp/stale.sock"
ctl0 -s "$tmp/stale.sock" version
expect unreachable-stale-socket 3 - 'err:Connection refused$' noout
VBLKD_RPC=$tmp/missing.sock ctl0 version
expect unreachable-env 3 - "err:cannot connect to $tmp/missing.sock" noout
ctl0 -s "$tmp/$(printf '%0120d' 0).sock" version
expect socket-path-too-long 2 - 'err:socket path too long' noout
"${MOCK[@]}" stuck "$tmp/stuck.sock" >"$tmp/stuck.log" 2>&1 &
stuck=$!
for _ in $(seq 100); do
    [ -S "$tmp/stuck.sock" ] && break
    sleep 0.05
done
sleep 0.2
t0=$(date +%s%N)
ctl0 -s "$tmp/stuck.sock" -t 0.5 version
t1=$(date +%s%N)
kill "$stuck"
wait "$stuck" 2>/dev/null
expect connect-timeout 3 - "err:^vblkctl: cannot connect to $tmp/stuck.sock: timed out$" noout
if [ $(((t1 - t0) / 1000000)) -ge 400 ] && [ $(((t1 - t0) / 1000000)) -lt 5000 ]; then
    pass connect-timeout-duration
else
    fail connect-timeout-duration "took $(((t1 - t0) / 1000000)) ms with -t 0.5"
fi

# ---- bad responses: exit 1 with a message, after exactly one request ----
bad() { # name, mode, stderr ERE
    mode "$2"
    ctl version
    expect "bad-response-$1" 1 '[{"method":"version"}]' "err:^vblkctl: $3" noout
}
bad garbage garbage 'malformed response: '
bad wrong-id wrong-id 'malformed response: id 1001 does not match the request.s id 1$'
bad id-string id-string 'malformed response: id "1" does not match'
bad no-jsonrpc no-jsonrpc 'malformed response: "jsonrpc" is not "2.0"$'
bad jsonrpc-1.0 bad-jsonrpc 'malformed response: "jsonrpc" is not "2.0"$'
bad result-and-error both 'malformed response: both "result" and "error"$'
bad no-result-no-error neither 'malformed response: neither "result" nor "error"$'
bad array array 'malformed response: not a JSON object$'
bad line-over-16MiB huge 'malformed response: a line longer than 16777216 bytes$'
bad closed close 'connection closed by vblkd before the response$'
bad partial-line partial 'malformed response: connection closed in the middle of a line$'
bad error-without-message bad-error 'malformed response: "error" is not'
bad trailing-data trailing 'malformed response: trailing characters'
bad invalid-utf8 bad-utf8 'malformed response: '
bad nul-byte nul 'malformed response: NUL byte$'
bad result-not-string weird-types 'malformed response: no "version" string'
bad null-id-error null-id-error 'parse error$'
mode ctrl-msg
ctl version
expect error-message-sanitized 1 '[{"method":"version"}]' 'err:^vblkctl: bad \?\[31mthing\? here$' \
    "!err:$(printf '\033')"
mode huge-ok
ctl version
expect response-line-of-16MiB 0 '[{"method":"version"}]' 'out:^vblkd +0\.1\.0$'
mode silent
t0=$(date +%s%N)
ctl -t 1 version
t1=$(date +%s%N)
expect response-timeout 1 '[{"method":"version"}]' 'err:^vblkctl: timed out waiting for the response \(1 s\)$'
if [ $(((t1 - t0) / 1000000)) -ge 900 ] && [ $(((t1 - t0) / 1000000)) -lt 5000 ]; then
    pass response-timeout-duration
else
    fail response-timeout-duration "took $(((t1 - t0) / 1000000)) ms with -t 1"
fi
mode result-null
ctl export list
expect result-null 1 '[{"method":"export-list"}]' 'err:result of export-list is not an object$'
ctl raw version
expect result-null-raw 0 '[{"method":"version"}]' 'out:^null$'
mode two-responses
: >"$log"
timeout --foreground -k 10 -s INT --preserve-status 3 "$CTL" -s "$sock" stats -w 0.1 >"$tmp/out" 2>"$tmp/err"
rc=$?
expect stale-response-in-watch 1 '{"repeat":{"method":"stats"},"min":2}' \
    'err:^vblkctl: malformed response: id 1 does not match the request.s id 2$'

# well-formed JSON of the wrong shape: tables print "-", nothing crashes
mode weird-types
ctl export list
expect weird-export-list 0 - 'out:^ID +STATE' 'out:^- +- +- +- +- +-$'
ctl stats
expect weird-stats 0 - 'out:^ID +READS' 'out:^w +- +- +- +- +- +- +- +- +-$' 'out:^w/q\? '
ctl export set d2 iops-total=1
expect weird-export-set 0 - 'out:^a +1$' 'out:^b +-$' 'out:^c +\[1\]$'
ctl export resize d2 1G
expect weird-export-resize 1 - 'err:no "size" number'
: >"$log"
timeout --foreground -k 10 -s INT --preserve-status 0.5 "$CTL" -s "$sock" stats -w 0.1 >"$tmp/out" 2>"$tmp/err"
rc=$?
expect weird-stats-watch 0 - 'out:^ID +R/S'
mode normal

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
