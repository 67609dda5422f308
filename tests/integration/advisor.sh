#!/bin/bash
# advisor.sh BUILD - vblkd --check-host on this machine: an export of a file in /var/tmp, one in
# /dev/shm (tmpfs) and a null:// one; exit codes (0 without warnings, 1 with, 2 on usage
# errors), one line per finding, --json parsed, --config read, nothing started (no socket
# appears); then the check-host RPC method through vblkctl raw, which must agree with the
# command line.  Prints PASS/FAIL lines and "N passed, N failed".
set -u
name=advisor
. "$(dirname "$0")/lib.sh"
CTL=${VBLKCTL:-$build/tools/vblkctl/vblkctl}

finish() {
    echo "$passed passed, $failed failed"
    [ "$failed" -eq 0 ]
    exit
}

vt=$(mktemp -d /var/tmp/vblk-advisor.XXXXXX)
shm=$(mktemp -d /dev/shm/vblk-advisor.XXXXXX)
trap 'rm -rf "$vt" "$shm"; cleanup' EXIT
truncate -s 64M "$vt/disk.img" "$shm/disk.img"
E_VT="id=vt,file=$vt/disk.img,socket=$tmp/vt.sock"
E_SHM="id=shm,file=$shm/disk.img,socket=$tmp/shm.sock"
E_NUL="id=nul,file=null://1G,socket=$tmp/nul.sock"

# run NAME ARGS...: vblkd --check-host ARGS into $tmp/NAME.out, its exit code into rc
run() {
    local n=$1
    shift
    "$VBLKD" --check-host "$@" >"$tmp/$n.out" 2>"$tmp/$n.err"
    rc=$?
}
# rc_matches NAME: exit 1 exactly when a warn line was printed, 0 otherwise
rc_matches() {
    local w
    w=$(grep -c '^warn ' "$tmp/$1.out")
    if { [ "$w" -gt 0 ] && [ "$rc" = 1 ]; } || { [ "$w" = 0 ] && [ "$rc" = 0 ]; }; then
        pass "$1: exit $rc with $w warning line(s)"
    else
        fail "$1: exit code" "exit $rc with $w warning line(s): $(cat "$tmp/$1.err")"
    fi
}
has() { # name, pattern (ERE) the text output must contain
    if grep -qE -- "$2" "$tmp/$1.out"; then pass "$1: $2"; else fail "$1: $2" "$(cat "$tmp/$1.out")"; fi
}

# the three exports on the command line
run all --export "$E_VT" --export "$E_SHM" --export "$E_NUL"
rc_matches all
has all '^(ok|info) +vt +device +.* is on [a-z0-9]+'
has all '^ok +shm +device +.* is on tmpfs'
has all '^ok +nul +device +null://'
has all '^warn +shm +cache +cache=none on tmpfs: use cache=writeback'
has all '^[a-z]+ +host +thp '
has all '^[0-9]+ warnings?, [0-9]+ info, [0-9]+ ok$'
if grep -vE '^(ok|info|warn) +[^ ]+ +[a-z_]+ +[^ ]' "$tmp/all.out" | grep -vqE '^[0-9]+ warnings?, '; then
    fail "all: one finding per line" "$(grep -vE '^(ok|info|warn) ' "$tmp/all.out")"
else
    pass "all: one finding per line"
fi
check "nothing started: no socket created" test ! -e "$tmp/vt.sock" -a ! -e "$tmp/shm.sock" -a ! -e "$tmp/nul.sock"

# tmpfs with cache=writeback: that warning is gone
run shm --export "$E_SHM,cache=writeback"
rc_matches shm
has shm '^ok +shm +cache +cache=writeback suits tmpfs'

# null:// alone: no storage checks
run nul --export "$E_NUL"
rc_matches nul
if grep -qE '^[a-z]+ +nul +(cache|aio|scheduler|nr_requests) ' "$tmp/nul.out"; then
    fail "nul: no storage checks" "$(cat "$tmp/nul.out")"
else
    pass "nul: no storage checks"
fi

# --json: parses, same findings as the text, the counts add up, rc agrees
run json --json --export "$E_VT" --export "$E_SHM" --export "$E_NUL"
if python3 - "$tmp/json.out" "$tmp/all.out" "$rc" <<'PY' >"$tmp/out" 2>&1; then
import json, sys
j = json.load(open(sys.argv[1]))
text = [l for l in open(sys.argv[2]).read().splitlines() if l.split(" ")[0] in ("ok", "info", "warn")]
f = j["findings"]
assert len(f) == len(text), (len(f), len(text))
for x in f:
    assert set(x) == {"export", "level", "topic", "message"}, x
    assert x["level"] in ("ok", "info", "warn"), x
    assert x["export"] in (None, "vt", "shm", "nul"), x
    assert "\n" not in x["message"]
for lvl, key in (("warn", "warnings"), ("info", "info"), ("ok", "ok")):
    assert j[key] == sum(1 for x in f if x["level"] == lvl), key
assert int(sys.argv[3]) == (1 if j["warnings"] else 0), (sys.argv[3], j["warnings"])
assert any(x["export"] == "shm" and x["topic"] == "cache" and x["level"] == "warn" for x in f)
PY
    pass "--json parses and matches the text"
else
    fail "--json parses and matches the text" "$(tail -3 "$tmp/out")"
fi

# --config: the same exports from a file
cat >"$tmp/conf.json" <<CONF
{"exports": [{"id": "vt", "file": "$vt/disk.img", "socket": "$tmp/vt.sock"},
             {"id": "nul", "file": "null://1G", "socket": "$tmp/nul.sock", "poll-us": 0}]}
CONF
run conf --config "$tmp/conf.json"
rc_matches conf
has conf '^(ok|info) +vt +device '
has conf '^info +nul +polling +poll-us=0 on a fast device'

# usage errors: exit 2
for args in "--bogus" "--export id=x" "--export id=x,file=null://1G,socket=$tmp/x.sock,cache=maybe" \
    "--config $tmp/nope.json" "--rpc $tmp/r.sock" "extra-argument"; do
    # shellcheck disable=SC2086
    run usage $args
    if [ "$rc" = 2 ]; then pass "usage error exits 2: $args"; else fail "usage error exits 2: $args" "exit $rc"; fi
done
"$VBLKD" --json --export "$E_NUL" >/dev/null 2>&1
rc=$?
if [ "$rc" = 1 ]; then pass "--json without --check-host: exit 1"; else fail "--json without --check-host" "exit $rc"; fi
run host
rc_matches host
has host '^[a-z]+ +host +cpufreq '

# the RPC method on a running daemon with the same exports
sock=$tmp/ctl.sock
"$VBLKD" --rpc "$sock" --export "$E_VT" --export "$E_NUL" >"$tmp/daemon.log" 2>&1 &
daemon=$!
for _ in $(seq 100); do [ -S "$tmp/nul.sock" ] && break; sleep 0.05; done
check "daemon up" test -S "$tmp/nul.sock"
run cli2 --json --export "$E_VT" --export "$E_NUL"
if "$CTL" -s "$sock" raw check-host >"$tmp/rpc.json" 2>"$tmp/rpc.err" &&
    python3 - "$tmp/rpc.json" "$tmp/cli2.out" <<'PY' >"$tmp/out" 2>&1; then
import json, sys
r = json.load(open(sys.argv[1]))
c = json.load(open(sys.argv[2]))
assert r == c, (r, c)
PY
    pass "rpc check-host equals --check-host --json"
else
    fail "rpc check-host equals --check-host --json" "$(cat "$tmp/rpc.err"; tail -3 "$tmp/out")"
fi
if "$CTL" -s "$sock" raw check-host '{"id":"nul"}' >"$tmp/rpc1.json" 2>&1 &&
    python3 -c "
import json, sys
j = json.load(open('$tmp/rpc1.json'))
ids = {x['export'] for x in j['findings']}
assert ids == {None, 'nul'}, ids
" >"$tmp/out" 2>&1; then
    pass "rpc check-host id=nul: that export and the host"
else
    fail "rpc check-host id=nul" "$(cat "$tmp/rpc1.json" "$tmp/out" | tail -3)"
fi
check_fails "rpc check-host unknown export" "$CTL" -s "$sock" raw check-host '{"id":"nope"}'
check_fails "rpc check-host unknown parameter" "$CTL" -s "$sock" raw check-host '{"colour":"red"}'
check "daemon still serving" "$CTL" -s "$sock" version
"$CTL" -s "$sock" raw shutdown >/dev/null 2>&1
wait "$daemon"
check "daemon exits 0" test $? = 0
daemon=
finish
