# shellcheck shell=bash disable=SC2034
# SPDX-License-Identifier: GPL-2.0-or-later
# Helpers for the vblk end-to-end tests (sourced by run.sh; bash).
#
# Every process started here is recorded by PID and stopped only by that
# PID.  All state lives in a private temporary directory ($E2E_TMP).

E2E_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
: "${E2E_GUEST_TIMEOUT:=60}"      # seconds per guest boot (a boot+test takes ~5-12s)
: "${E2E_MEM:=256M}"
: "${QEMU:=qemu-system-x86_64}"
: "${QSD:=qemu-storage-daemon}"
: "${QSD_AIO:=io_uring}"          # default aio for qemu-storage-daemon

E2E_TMP=
declare -A E2E_PIDS=()            # pid -> description, for cleanup
declare -A BACKEND_PID=() BACKEND_SOCK=() BACKEND_LOG=()
GUEST_PID=

e2e_log() { echo "e2e: $*" >&2; }

e2e_setup() {
	E2E_TMP=$(mktemp -d "${TMPDIR:-/tmp}/vblk-e2e.XXXXXX") || return 1
	trap e2e_cleanup EXIT
	trap 'e2e_cleanup; exit 130' INT TERM
}

# Kill whatever we started that is still running, by recorded PID only.
e2e_cleanup() {
	local pid
	for pid in "${!E2E_PIDS[@]}"; do
		if kill -0 "$pid" 2>/dev/null; then
			e2e_log "cleanup: killing ${E2E_PIDS[$pid]} (pid $pid)"
			kill -KILL "$pid" 2>/dev/null
			wait "$pid" 2>/dev/null
		fi
	done
	E2E_PIDS=()
	if [ -n "$E2E_TMP" ] && [ -d "$E2E_TMP" ]; then
		if [ -n "${E2E_KEEP:-}" ]; then
			find "$E2E_TMP" -name '*.img' -delete 2>/dev/null
			e2e_log "logs kept in $E2E_TMP"
		else
			rm -rf "$E2E_TMP"
		fi
	fi
}

_track() { E2E_PIDS[$1]=$2; }
_untrack() { unset "E2E_PIDS[$1]"; }

# wait_exit PID SECONDS: wait for a child to exit; 0 if it did (status in
# WAIT_RC), 1 on timeout
wait_exit() {
	local pid=$1 deadline=$((SECONDS + $2))
	while kill -0 "$pid" 2>/dev/null; do
		if [ $SECONDS -ge $deadline ]; then
			return 1
		fi
		sleep 0.1
	done
	wait "$pid" 2>/dev/null
	WAIT_RC=$?
	return 0
}

# mkimg PATH SIZE: fresh sparse image
mkimg() {
	rm -f "$1" && truncate -s "$2" "$1"
}

# ---------------------------------------------------------------------------
# back-ends
#
# backend_start NAME IMG [KEY=VALUE...]
#   Starts the back-end selected by $BACKEND (vblkd|qsd) exporting IMG on
#   $E2E_TMP/NAME.sock.  Options use vblkd's --export syntax:
#   readonly=on num-queues=N aio=io_uring|native|threads cache=none|writeback
#   discard=unmap|ignore serial=STR queue-size=N
#   Sets BACKEND_PID[NAME], BACKEND_SOCK[NAME], BACKEND_LOG[NAME].
backend_start() {
	local name=$1 img=$2; shift 2
	local sock=$E2E_TMP/$name.sock log=$E2E_TMP/$name.daemon.log
	local ro=off nq=1 aio='' cache=none discard='' extra=() o
	for o in "$@"; do
		case "$o" in
		readonly=*) ro=${o#*=} ;;
		num-queues=*) nq=${o#*=} ;;
		aio=*) aio=${o#*=} ;;
		cache=*) cache=${o#*=} ;;
		discard=*) discard=${o#*=} ;;
		*) extra+=("$o") ;;
		esac
	done
	[ ${#sock} -lt 100 ] || { e2e_log "socket path too long: $sock"; return 1; }
	rm -f "$sock"
	case "$BACKEND" in
	vblkd)
		# IMG "": no file (driver=nbd,uri=... among the KEY=VALUEs)
		local spec="id=$name${img:+,file=$img},socket=$sock,aio=${aio:-io_uring},cache=$cache"
		[ "$ro" = on ] && spec+=",readonly=on"
		[ "$nq" != 1 ] && spec+=",num-queues=$nq"
		[ -n "$discard" ] && spec+=",discard=$discard"
		for o in "${extra[@]}"; do spec+=",$o"; done
		echo "+ $VBLKD ${VBLKD_ARGS:-} --export $spec" >"$log"
		# shellcheck disable=SC2086  # VBLKD_ARGS: extra daemon options, split on spaces
		"$VBLKD" ${VBLKD_ARGS:-} --export "$spec" >>"$log" 2>&1 &
		;;
	qsd)
		local direct=on writable=on bro=off
		[ "$cache" = writeback ] && direct=off
		[ "$ro" = on ] && { writable=off; bro=on; }
		[ ${#extra[@]} -eq 0 ] || { e2e_log "qsd: unsupported options: ${extra[*]}"; return 1; }
		local bd="driver=file,node-name=file0,filename=$img,cache.direct=$direct,aio=${aio:-$QSD_AIO},discard=${discard:-unmap},read-only=$bro"
		local ex="type=vhost-user-blk,id=$name,node-name=file0,addr.type=unix,addr.path=$sock,writable=$writable,num-queues=$nq"
		echo "+ $QSD --blockdev $bd --export $ex" >"$log"
		"$QSD" --blockdev "$bd" --export "$ex" >>"$log" 2>&1 &
		;;
	*)
		e2e_log "unknown backend '$BACKEND'"; return 1 ;;
	esac
	local pid=$!
	_track "$pid" "$BACKEND $name"
	BACKEND_PID[$name]=$pid
	BACKEND_SOCK[$name]=$sock
	BACKEND_LOG[$name]=$log
	local deadline=$((SECONDS + 15))
	while [ ! -S "$sock" ]; do
		if ! kill -0 "$pid" 2>/dev/null; then
			wait "$pid"; local rc=$?
			_untrack "$pid"
			FAIL_REASON="$BACKEND exited with status $rc before creating $sock"
			e2e_log "$FAIL_REASON"
			return 1
		fi
		if [ $SECONDS -ge $deadline ]; then
			FAIL_REASON="$BACKEND did not create $sock within 15s"
			e2e_log "$FAIL_REASON"
			return 1
		fi
		sleep 0.05
	done
	return 0
}

backend_alive() {
	kill -0 "${BACKEND_PID[$1]}" 2>/dev/null
}

# backend_stop NAME: SIGTERM, wait up to 10s (then SIGKILL).  Returns 0 when
# the daemon exited with status 0; sets FAIL_REASON otherwise.
backend_stop() {
	local name=$1 pid=${BACKEND_PID[$1]}
	[ -n "$pid" ] || return 0
	unset "BACKEND_PID[$name]"
	if ! kill -0 "$pid" 2>/dev/null; then
		wait "$pid" 2>/dev/null; local rc=$?
		_untrack "$pid"
		FAIL_REASON="$BACKEND $name had already exited (status $rc)"
		return 1
	fi
	kill -TERM "$pid"
	if ! wait_exit "$pid" 10; then
		kill -KILL "$pid" 2>/dev/null
		wait "$pid" 2>/dev/null
		_untrack "$pid"
		FAIL_REASON="$BACKEND $name did not exit within 10s of SIGTERM"
		return 1
	fi
	_untrack "$pid"
	if [ "$WAIT_RC" != 0 ]; then
		FAIL_REASON="$BACKEND $name exited with status $WAIT_RC on SIGTERM"
		return 1
	fi
	if [ -e "${BACKEND_SOCK[$name]}" ]; then
		e2e_log "note: $BACKEND $name left its socket ${BACKEND_SOCK[$name]} behind"
	fi
	return 0
}

# backend_counters NAME: read the back-end's request counters into CNT[]
# (vblkd logs "requests=N reads=N writes=N flushes=N discards=N
# write_zeroes=N errors=N unsupported=N" on SIGUSR1).  Returns 1 when the
# back-end has no counters (qemu-storage-daemon), 2 on failure (FAIL_REASON).
declare -A CNT=()
backend_counters() {
	local name=$1 log=${BACKEND_LOG[$1]} n0 kv deadline
	CNT=()
	[ "$BACKEND" = vblkd ] || return 1
	n0=$(grep -c 'requests=' "$log")
	kill -USR1 "${BACKEND_PID[$name]}" 2>/dev/null || {
		FAIL_REASON="cannot signal $BACKEND $name"; return 2; }
	deadline=$((SECONDS + 5))
	until [ "$(grep -c 'requests=' "$log")" -gt "$n0" ]; do
		if [ $SECONDS -ge $deadline ]; then
			FAIL_REASON="$BACKEND $name logged no counters on SIGUSR1"
			return 2
		fi
		sleep 0.05
	done
	for kv in $(grep 'requests=' "$log" | tail -1); do
		case "$kv" in
		*=[0-9]*) CNT[${kv%%=*}]=${kv#*=} ;;
		esac
	done
	e2e_log "$name counters: $(grep 'requests=' "$log" | tail -1 | sed 's/.*requests=/requests=/')"
	return 0
}

# expect_counters NAME 'KEY OP VALUE'...: check back-end counters (no-op for
# back-ends without counters).  Example: expect_counters io 'errors -eq 0'
expect_counters() {
	local name=$1 c k op v; shift
	backend_counters "$name"
	case $? in 1) return 0 ;; 2) return 1 ;; esac
	for c in "$@"; do
		read -r k op v <<<"$c"
		if [ -z "${CNT[$k]:-}" ]; then
			FAIL_REASON="$BACKEND counters have no '$k'"
			return 1
		fi
		if ! test "${CNT[$k]}" "$op" "$v"; then
			FAIL_REASON="$BACKEND counter $k=${CNT[$k]}, expected $op $v"
			return 1
		fi
	done
}

# guest_info LOG PREFIX: value after "VBLK-E2E: INFO PREFIX" in a guest log
guest_info() {
	tr -d '\r' <"$1" | sed -n "s/^VBLK-E2E: INFO $2//p" | tail -1
}

# ---------------------------------------------------------------------------
# guests
#
# guest_start LOG SOCK "KERNEL-ARGS" [QEMU-ARGS...]
#   Boots the test guest in the background against SOCK; serial console goes
#   to LOG.  Environment: GUEST_SMP (default 1), GUEST_QUEUES (default 1), GUEST_PACKED
#   (set: packed=on, packed virtqueues if the back-end offers VIRTIO_F_RING_PACKED),
#   GUEST_RECONNECT (seconds between QEMU's attempts to reconnect to a back-end that went away;
#   unset: no reconnect).
#   Sets GUEST_PID (the QEMU process itself).
guest_start() {
	local log=$1 sock=$2 args=$3; shift 3
	local smp=${GUEST_SMP:-1} nq=${GUEST_QUEUES:-1}
	: >"$log"
	"$QEMU" -accel tcg -machine q35 -smp "$smp" -m "$E2E_MEM" \
		-object memory-backend-memfd,id=mem,size="$E2E_MEM",share=on \
		-numa node,memdev=mem \
		-chardev socket,id=c0,path="$sock"${GUEST_RECONNECT:+,reconnect=$GUEST_RECONNECT} \
		-device vhost-user-blk-pci,chardev=c0,num-queues="$nq"${GUEST_PACKED:+,packed=on} "$@" \
		-kernel "$E2E_KERNEL" -initrd "$E2E_INITRD" \
		-append "console=ttyS0 panic=-1 quiet $args" \
		-nodefaults -display none -serial file:"$log" -no-reboot \
		>"$log.qemu" 2>&1 </dev/null &
	GUEST_PID=$!
	_track "$GUEST_PID" "qemu ($log)"
}

# guest_kill: SIGKILL the running guest (by its PID)
guest_kill() {
	kill -KILL "$GUEST_PID" 2>/dev/null
	wait "$GUEST_PID" 2>/dev/null
	_untrack "$GUEST_PID"
}

# guest_wait LOG TEST: wait for QEMU to exit, then check the result line.
# Returns 0 on "VBLK-E2E: PASS TEST"; otherwise sets FAIL_REASON.
guest_wait() {
	local log=$1 test=$2
	if ! wait_exit "$GUEST_PID" "$E2E_GUEST_TIMEOUT"; then
		guest_kill
		FAIL_REASON="guest '$test' timed out after ${E2E_GUEST_TIMEOUT}s"
		return 1
	fi
	_untrack "$GUEST_PID"
	local line
	line=$(tr -d '\r' <"$log" | grep -a '^VBLK-E2E: \(PASS\|FAIL\)' | tail -1)
	if [ "$line" = "VBLK-E2E: PASS $test" ]; then
		if [ "$WAIT_RC" != 0 ]; then
			FAIL_REASON="guest '$test' passed but QEMU exited with status $WAIT_RC"
			return 1
		fi
		return 0
	fi
	if [ -n "$line" ]; then
		FAIL_REASON="guest: ${line#VBLK-E2E: }"
	else
		FAIL_REASON="guest '$test' printed no result (QEMU exit status $WAIT_RC)"
	fi
	return 1
}

# guest_run LOG SOCK TEST "KERNEL-ARGS" [QEMU-ARGS...]: boot and wait
guest_run() {
	local log=$1 sock=$2 test=$3 args=$4; shift 4
	guest_start "$log" "$sock" "vblk.test=$test $args" "$@"
	guest_wait "$log" "$test"
}

# wait_for_line LOG REGEX SECONDS: wait until the guest prints a line
wait_for_line() {
	local log=$1 re=$2 deadline=$((SECONDS + $3))
	until tr -d '\r' <"$log" | grep -aq "$re"; do
		kill -0 "$GUEST_PID" 2>/dev/null || return 1
		[ $SECONDS -lt $deadline ] || return 1
		sleep 0.2
	done
}

# show_logs FILE...: tails for a failure report
show_logs() {
	local f
	for f in "$@"; do
		[ -s "$f" ] || continue
		echo "    ---- ${f#"$E2E_TMP"/} (last 25 lines) ----"
		tr -d '\r' <"$f" | tail -25 | sed 's/^/    | /'
	done
}
