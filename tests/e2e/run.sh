#!/bin/bash
# SPDX-License-Identifier: GPL-2.0-or-later
#
# run.sh [--backend vblkd|qsd] [--out DIR] [--keep] [TEST...]
#
# End-to-end tests of a vhost-user-blk back-end: boots a Debian kernel +
# busybox initramfs in QEMU (TCG) with -device vhost-user-blk-pci and runs
# guest-side checks.  Back-ends: vblkd ($VBLKD, default build/src/vblkd) or
# qemu-storage-daemon (qsd, reference implementation).
#
# Tests: io fs discard mq ro flush kill aio-native aio-threads cache-writeback
# restart outage qcow2 nbd nbd-restart migrate policy live rbd packed (default: all).  Prints "PASS name (time)" / "FAIL name: reason" (+ log
# tails) / "SKIP name: reason" per test and finally "N passed, N failed"
# (skipped tests are counted on a line of their own before it).
# Exit status 1 if any test failed, 2 on usage/setup errors.
#
# Environment: VBLKD, QEMU, QSD, QSD_AIO (default io_uring), E2E_OUT (cache
# for the initramfs), E2E_GUEST_TIMEOUT (s, default 60), E2E_KEEP=1 (keep
# logs), E2E_KVER (kernel version), E2E_VBLKD_WC (expected initial write
# cache mode with vblkd: back|through, default back).
set -u

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
. "$HERE/lib.sh"

BACKEND=vblkd
ALL_TESTS="io fs discard mq ro flush kill aio-native aio-threads cache-writeback restart outage qcow2 nbd nbd-restart migrate policy live rbd packed"
TESTS=()
: "${VBLKD:=$REPO/build/src/vblkd}"
: "${VBLKCTL:=$(dirname "$VBLKD")/../tools/vblkctl/vblkctl}"
: "${BENCH:=$(dirname "$VBLKD")/../tools/vblk-bench/vblk-bench}"
: "${E2E_OUT:=$REPO/build/e2e}"

usage() { sed -n '3,20p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
while [ $# -gt 0 ]; do
	case "$1" in
	--backend) BACKEND=${2:-}; shift 2 ;;
	--backend=*) BACKEND=${1#*=}; shift ;;
	--out) E2E_OUT=${2:-}; shift 2 ;;
	--keep) E2E_KEEP=1; shift ;;
	-h|--help) usage ;;
	-*) echo "unknown option $1" >&2; usage ;;
	*) TESTS+=("$1"); shift ;;
	esac
done
[ ${#TESTS[@]} -gt 0 ] || read -r -a TESTS <<<"$ALL_TESTS"
for t in "${TESTS[@]}"; do
	case " $ALL_TESTS " in *" $t "*) ;; *) echo "unknown test '$t' (known: $ALL_TESTS)" >&2; exit 2 ;; esac
done

case "$BACKEND" in
vblkd)
	[ -x "$VBLKD" ] || { echo "vblkd not found at $VBLKD (set VBLKD=)" >&2; exit 2; } ;;
qsd)
	command -v "$QSD" >/dev/null || { echo "$QSD not found (apt-get install qemu-system-common)" >&2; exit 2; } ;;
*) echo "unknown backend '$BACKEND'" >&2; usage ;;
esac
command -v "$QEMU" >/dev/null || { echo "$QEMU not found (apt-get install qemu-system-x86)" >&2; exit 2; }

"$HERE/build-initramfs.sh" "$E2E_OUT" || { echo "building the test initramfs failed" >&2; exit 2; }
# used by guest_start in lib.sh
# shellcheck disable=SC2034
E2E_KERNEL=$E2E_OUT/vmlinuz
# shellcheck disable=SC2034
E2E_INITRD=$E2E_OUT/initramfs.cpio.gz
GIO=$E2E_OUT/guest-io

e2e_setup || exit 2

DISK_SIZE=$((64 * 1024 * 1024))

# qemu-storage-daemon: fall back to aio=threads where io_uring is unavailable
if [ "$BACKEND" = qsd ] && [ "$QSD_AIO" = io_uring ]; then
	mkimg "$E2E_TMP/probe.img" 1M
	if backend_start probe "$E2E_TMP/probe.img" && backend_stop probe; then
		:
	else
		echo "note: qemu-storage-daemon with aio=io_uring does not work here; using aio=threads"
		QSD_AIO=threads
	fi
	rm -f "$E2E_TMP/probe.img" "$E2E_TMP/probe.daemon.log"
fi
eval "$(grep -E '^IO_(REGIONS|HOLES)=' "$HERE/guest/tests.sh")"

# host-side checks of the image file (buffered reads: the back-end may use
# O_DIRECT or the page cache, both are coherent with buffered reads)
host_verify_io() {
	local img=$1 seed=$2 r
	for r in $IO_REGIONS; do
		if ! "$GIO" -b verify "$img" "${r%%:*}" "${r#*:}" "$seed" >>"$E2E_TMP/host.log" 2>&1; then
			FAIL_REASON="host: image does not contain seed $seed pattern at $r (see host.log)"
			return 1
		fi
	done
	for r in $IO_HOLES; do
		if ! "$GIO" -b zero "$img" "${r%%:*}" "${r#*:}" >>"$E2E_TMP/host.log" 2>&1; then
			FAIL_REASON="host: never-written range $r of the image is not zero"
			return 1
		fi
	done
}

# the guest io test, once or twice (with a back-end restart in between)
# io_test NAME RESTART [BACKEND-OPTS...]
io_test() {
	local name=$1 restart=$2; shift 2
	local img=$E2E_TMP/$name.img
	LOGS=("$E2E_TMP/$name.1.log" "$E2E_TMP/$name.1.log.qemu" "$E2E_TMP/$name.daemon.log")
	mkimg "$img" $DISK_SIZE
	backend_start "$name" "$img" "$@" || return 1
	guest_run "$E2E_TMP/$name.1.log" "${BACKEND_SOCK[$name]}" io "vblk.seed=11 vblk.size=$DISK_SIZE" || return 1
	expect_counters "$name" 'errors -eq 0' 'writes -ge 8' 'reads -ge 8' || return 1
	host_verify_io "$img" 11 || return 1
	if [ "$restart" = restart ]; then
		# data must survive a guest restart and a back-end restart
		backend_stop "$name" || return 1
		cp "$E2E_TMP/$name.daemon.log" "$E2E_TMP/$name.daemon.1.log"
		backend_start "$name" "$img" "$@" || return 1
		LOGS=("$E2E_TMP/$name.2.log" "$E2E_TMP/$name.2.log.qemu" "$E2E_TMP/$name.daemon.log")
		guest_run "$E2E_TMP/$name.2.log" "${BACKEND_SOCK[$name]}" io \
			"vblk.seed=12 vblk.expect=11 vblk.size=$DISK_SIZE" || return 1
		host_verify_io "$img" 12 || return 1
	fi
	backend_stop "$name" || return 1
}

t_io() { io_test io restart; }

# the io test (two guests, a back-end restart between them) over packed virtqueues (QEMU
# packed=on, VIRTIO_F_RING_PACKED); vblkd must have negotiated them
t_packed() {
	vblkd_only packed || return
	GUEST_PACKED=1 io_test packed restart || return 1
	if ! grep -q 'packed virtqueues' "$E2E_TMP/packed.daemon.log"; then
		FAIL_REASON="vblkd did not log packed virtqueues: the guest used split rings"
		return 1
	fi
}

vblkd_only() {
	if [ "$BACKEND" != vblkd ]; then
		SKIP_REASON="$1 variant is only run against vblkd"
		return 77
	fi
}
t_aio-native() { vblkd_only aio=native || return; io_test aio-native once aio=native; }
t_aio-threads() { vblkd_only aio=threads || return; io_test aio-threads once aio=threads; }
t_cache-writeback() { vblkd_only cache=writeback || return; io_test cache-writeback once cache=writeback; }

t_fs() {
	local img=$E2E_TMP/fs.img
	LOGS=("$E2E_TMP/fs.log" "$E2E_TMP/fs.log.qemu" "$E2E_TMP/fs.daemon.log" "$E2E_TMP/fs.fsck")
	mkimg "$img" $DISK_SIZE
	backend_start fs "$img" || return 1
	guest_run "$E2E_TMP/fs.log" "${BACKEND_SOCK[fs]}" fs "vblk.size=$DISK_SIZE" || return 1
	expect_counters fs 'errors -eq 0' || return 1
	backend_stop fs || return 1
	# the file system must also be clean as seen from the host
	if ! e2fsck -fn "$img" >"$E2E_TMP/fs.fsck" 2>&1; then
		FAIL_REASON="host: e2fsck -fn of the image found errors"
		return 1
	fi
}

# rbd: ext4 made, used and checked by the guest on driver=rbd (a throw-away single-node Ceph
# cluster, scripts/ceph-single-node.sh); then e2fsck of the image exported with `rbd export`
t_rbd() {
	vblkd_only driver=rbd || return
	local dir=$E2E_TMP/ceph conf raw=$E2E_TMP/rbd.raw rc=1
	LOGS=("$E2E_TMP/rbd.log" "$E2E_TMP/rbd.log.qemu" "$E2E_TMP/rbd.daemon.log" "$E2E_TMP/rbd.fsck" "$E2E_TMP/rbd.ceph")
	if ! conf=$("$REPO/scripts/ceph-single-node.sh" start "$dir" 2>"$E2E_TMP/rbd.ceph"); then
		FAIL_REASON="the Ceph cluster did not start (scripts/ceph-single-node.sh)"
		return 1
	fi
	if ! rbd -c "$conf" create --size $((DISK_SIZE / 1024 / 1024))M rbd/fs >>"$E2E_TMP/rbd.ceph" 2>&1; then
		FAIL_REASON="rbd create failed"
	elif backend_start rbd "" driver=rbd pool=rbd image=fs "conf=$conf" discard=unmap &&
		guest_run "$E2E_TMP/rbd.log" "${BACKEND_SOCK[rbd]}" fs "vblk.size=$DISK_SIZE" &&
		expect_counters rbd 'errors -eq 0' 'writes -ge 8' && backend_stop rbd; then
		if ! rbd -c "$conf" export --no-progress rbd/fs "$raw" >>"$E2E_TMP/rbd.ceph" 2>&1; then
			FAIL_REASON="rbd export failed"
		elif ! e2fsck -fn "$raw" >"$E2E_TMP/rbd.fsck" 2>&1; then
			FAIL_REASON="host: e2fsck -fn of the exported image found errors"
		else
			rc=0
		fi
	fi
	"$REPO/scripts/ceph-single-node.sh" stop "$dir"
	rm -f "$raw"
	return $rc
}

t_discard() {
	local img=$E2E_TMP/discard.img
	LOGS=("$E2E_TMP/discard.log" "$E2E_TMP/discard.log.qemu" "$E2E_TMP/discard.daemon.log" "$E2E_TMP/host.log")
	mkimg "$img" $DISK_SIZE
	backend_start discard "$img" discard=unmap || return 1
	# file back-end with punch-hole: discarded ranges read back as zeroes
	guest_run "$E2E_TMP/discard.log" "${BACKEND_SOCK[discard]}" discard \
		"vblk.seed=21 vblk.dzero=1 vblk.size=$DISK_SIZE" || return 1
	expect_counters discard 'errors -eq 0' 'discards -ge 2' 'write_zeroes -ge 3' || return 1
	backend_stop discard || return 1
	# host view: zeroes where discarded, pattern elsewhere
	local M=$((1024 * 1024))
	if ! { "$GIO" -b zero "$img" $((5 * M)) $M && "$GIO" -b zero "$img" 8M 2M &&
		"$GIO" -b verify "$img" 0 4M 21 && "$GIO" -b verify "$img" 4M 1M 28 &&
		"$GIO" -b verify "$img" 10M 2M 21; } >>"$E2E_TMP/host.log" 2>&1; then
		FAIL_REASON="host: image content after discard/write-zeroes is wrong (see host.log)"
		return 1
	fi
	# discard must have released space in the image (punched a hole):
	# 17 MiB were written, >= 1 MiB (5M..6M) must be deallocated again
	local alloc=$(($(stat -c '%b * %B' "$img")))
	if [ $alloc -gt $((16 * M)) ]; then
		FAIL_REASON="host: image still has $((alloc / 1024)) KiB allocated, discard did not punch holes"
		return 1
	fi
}

t_mq() {
	local img=$E2E_TMP/mq.img
	LOGS=("$E2E_TMP/mq.log" "$E2E_TMP/mq.log.qemu" "$E2E_TMP/mq.daemon.log")
	mkimg "$img" $DISK_SIZE
	backend_start mq "$img" num-queues=2 || return 1
	GUEST_SMP=2 GUEST_QUEUES=2 guest_run "$E2E_TMP/mq.log" "${BACKEND_SOCK[mq]}" mq \
		"vblk.seed=31 vblk.queues=2 vblk.size=$DISK_SIZE" || return 1
	expect_counters mq 'errors -eq 0' || return 1
	backend_stop mq || return 1
	local i
	for i in 0 1 2 3; do
		if ! "$GIO" -b verify "$img" $((i * 4))M 4M $((31 + i)) >>"$E2E_TMP/host.log" 2>&1; then
			FAIL_REASON="host: writer $i's data missing from the image"
			return 1
		fi
	done
}

t_ro() {
	local img=$E2E_TMP/ro.img
	LOGS=("$E2E_TMP/ro.log" "$E2E_TMP/ro.log.qemu" "$E2E_TMP/ro.daemon.log")
	mkimg "$img" $DISK_SIZE
	if ! { "$GIO" -b write "$img" 0 1M 41 && "$GIO" -b write "$img" -64K 64K 41; }; then
		FAIL_REASON="host: cannot pre-seed image"
		return 1
	fi
	local before after
	before=$(md5sum <"$img")
	backend_start ro "$img" readonly=on || return 1
	guest_run "$E2E_TMP/ro.log" "${BACKEND_SOCK[ro]}" ro "vblk.seed=41 vblk.size=$DISK_SIZE" || return 1
	expect_counters ro 'writes -eq 0' 'discards -eq 0' 'write_zeroes -eq 0' 'reads -ge 2' || return 1
	backend_stop ro || return 1
	after=$(md5sum <"$img")
	if [ "$before" != "$after" ]; then
		FAIL_REASON="host: read-only image was modified"
		return 1
	fi
}

t_flush() {
	local img=$E2E_TMP/flush.img wc
	LOGS=("$E2E_TMP/flush.log" "$E2E_TMP/flush.log.qemu" "$E2E_TMP/flush.daemon.log")
	# qemu-storage-daemon 7.2 offers VIRTIO_BLK_F_CONFIG_WCE with wce=0, so
	# the guest starts in write through; the guest test then switches to
	# write back through the config space.
	case "$BACKEND" in
	qsd) wc=through ;;
	*) wc=${E2E_VBLKD_WC:-back} ;;
	esac
	mkimg "$img" $DISK_SIZE
	backend_start flush "$img" || return 1
	guest_run "$E2E_TMP/flush.log" "${BACKEND_SOCK[flush]}" flush \
		"vblk.seed=51 vblk.wc=$wc vblk.size=$DISK_SIZE" || return 1
	# the back-end must have seen (at least) the flushes the guest completed
	local gflush
	gflush=$(guest_info "$E2E_TMP/flush.log" 'flushes completed: ')
	[ -n "$gflush" ] || { FAIL_REASON="guest reported no flush count"; return 1; }
	expect_counters flush 'errors -eq 0' "flushes -ge $gflush" || return 1
	backend_stop flush || return 1
}

t_kill() {
	local img=$E2E_TMP/kill.img
	LOGS=("$E2E_TMP/kill.hammer.log" "$E2E_TMP/kill.hammer.log.qemu" "$E2E_TMP/kill.daemon.log")
	mkimg "$img" $DISK_SIZE
	backend_start kill "$img" || return 1
	local sock=${BACKEND_SOCK[kill]} dpid=${BACKEND_PID[kill]}
	guest_start "$E2E_TMP/kill.hammer.log" "$sock" "vblk.test=hammer vblk.seed=61"
	if ! wait_for_line "$E2E_TMP/kill.hammer.log" '^VBLK-E2E: HAMMER running' 60; then
		guest_kill
		FAIL_REASON="hammer guest did not start writing"
		return 1
	fi
	sleep 3
	if ! kill -0 "$GUEST_PID" 2>/dev/null; then
		wait "$GUEST_PID"
		FAIL_REASON="hammer guest exited early"
		return 1
	fi
	guest_kill   # abrupt front-end disconnect with I/O in flight
	sleep 1
	if ! backend_alive kill; then
		FAIL_REASON="$BACKEND died when the front-end was killed"
		return 1
	fi
	# the same daemon instance must accept a new front-end on the same socket
	LOGS=("$E2E_TMP/kill.io.log" "$E2E_TMP/kill.io.log.qemu" "$E2E_TMP/kill.daemon.log")
	guest_run "$E2E_TMP/kill.io.log" "$sock" io "vblk.seed=62 vblk.size=$DISK_SIZE" || return 1
	expect_counters kill 'writes -ge 8' || return 1
	if [ "${BACKEND_PID[kill]}" != "$dpid" ] || ! backend_alive kill; then
		FAIL_REASON="$BACKEND did not survive"
		return 1
	fi
	backend_stop kill || return 1
	host_verify_io "$img" 62 || return 1
}

# The back-end dies (kill -9) E2E_KILLS times (default 20) and is stopped (SIGTERM, an upgrade)
# E2E_TERMS times (default 20), at random moments, under a guest that writes and verifies data;
# QEMU reconnects (reconnect=1) and the guest must see no I/O error and no mismatch.
t_restart() {
	local img=$E2E_TMP/restart.img kills=${E2E_KILLS:-20} terms=${E2E_TERMS:-20} i secs resub
	LOGS=("$E2E_TMP/restart.log" "$E2E_TMP/restart.log.qemu" "$E2E_TMP/restart.daemons.log")
	mkimg "$img" $DISK_SIZE
	: >"$E2E_TMP/restart.daemons.log"
	backend_start restart "$img" || return 1
	secs=$(((kills + terms) * 2 + 20))
	GUEST_RECONNECT=1 guest_start "$E2E_TMP/restart.log" "${BACKEND_SOCK[restart]}" \
		"vblk.test=loop vblk.seed=71 vblk.secs=$secs vblk.size=$DISK_SIZE"
	if ! wait_for_line "$E2E_TMP/restart.log" '^VBLK-E2E: LOOP running' 60; then
		guest_kill
		FAIL_REASON="loop guest did not start"
		return 1
	fi
	for ((i = 0; i < kills + terms; i++)); do
		# let QEMU reconnect and the guest get going again, then strike at a random moment
		local t=0
		until grep -q 'front-end connected' "${BACKEND_LOG[restart]}"; do
			sleep 0.1
			t=$((t + 1))
			[ $t -lt 200 ] || { FAIL_REASON="QEMU did not reconnect after restart $i"; guest_kill; return 1; }
		done
		sleep "0.$((2 + RANDOM % 8))"
		kill -0 "$GUEST_PID" 2>/dev/null || break
		local pid=${BACKEND_PID[restart]}
		if [ $i -lt "$kills" ]; then
			kill -KILL "$pid"
			wait "$pid" 2>/dev/null
			_untrack "$pid"
			unset "BACKEND_PID[restart]"
		else
			backend_stop restart || return 1 # drains, exits 0: the planned path (an upgrade)
		fi
		cat "${BACKEND_LOG[restart]}" >>"$E2E_TMP/restart.daemons.log"
		backend_start restart "$img" || return 1
	done
	E2E_GUEST_TIMEOUT=$((secs + 60)) guest_wait "$E2E_TMP/restart.log" loop || return 1
	cat "${BACKEND_LOG[restart]}" >>"$E2E_TMP/restart.daemons.log"
	resub=$(grep -c 'resubmitting' "$E2E_TMP/restart.daemons.log")
	e2e_log "restart: $kills kills, $terms SIGTERM restarts, $(guest_info "$E2E_TMP/restart.log" 'rounds: ') rounds, $resub resubmissions"
	[ "$i" -eq $((kills + terms)) ] || { FAIL_REASON="the guest stopped after $i restarts"; return 1; }
	backend_stop restart || return 1
}

# A long outage: vblkd is killed under a writing guest and stays down E2E_OUTAGE seconds (default
# 15 in CI; 120 for the 2-minute case: E2E_OUTAGE=120 tests/e2e/run.sh outage).  QEMU keeps
# trying to reconnect, the guest's I/O waits (Linux virtio-blk has no request timeout that fails
# I/O), and when vblkd comes back everything goes on: no error, no mismatch.
t_outage() {
	local img=$E2E_TMP/outage.img down=${E2E_OUTAGE:-15} secs pid
	LOGS=("$E2E_TMP/outage.log" "$E2E_TMP/outage.log.qemu" "$E2E_TMP/outage.daemon.log")
	mkimg "$img" $DISK_SIZE
	backend_start outage "$img" || return 1
	secs=$((down + 25))
	GUEST_RECONNECT=1 guest_start "$E2E_TMP/outage.log" "${BACKEND_SOCK[outage]}" \
		"vblk.test=loop vblk.seed=81 vblk.secs=$secs vblk.size=$DISK_SIZE"
	if ! wait_for_line "$E2E_TMP/outage.log" '^VBLK-E2E: LOOP running' 60; then
		guest_kill
		FAIL_REASON="loop guest did not start"
		return 1
	fi
	sleep 2
	pid=${BACKEND_PID[outage]}
	kill -KILL "$pid"
	wait "$pid" 2>/dev/null
	_untrack "$pid"
	unset "BACKEND_PID[outage]"
	sleep "$down"
	kill -0 "$GUEST_PID" 2>/dev/null || { FAIL_REASON="QEMU exited during the outage"; return 1; }
	backend_start outage "$img" || return 1
	E2E_GUEST_TIMEOUT=$((secs + 60)) guest_wait "$E2E_TMP/outage.log" loop || return 1
	e2e_log "outage: ${down}s down, $(guest_info "$E2E_TMP/outage.log" 'rounds: ') rounds"
	backend_stop outage || return 1
}

# ext4 made and checked by the guest on a qcow2 image, then on a qcow2 overlay whose backing file
# is that image; qemu-img check must find both clean, and the base must be untouched by the
# overlay's writes.
t_qcow2() {
	vblkd_only format=qcow2 || return
	local base=$E2E_TMP/base.qcow2 top=$E2E_TMP/top.qcow2 sum
	LOGS=("$E2E_TMP/qcow2.log" "$E2E_TMP/qcow2.log.qemu" "$E2E_TMP/qcow2.daemon.log" "$E2E_TMP/qcow2.check")
	qemu-img create -q -f qcow2 "$base" $DISK_SIZE || { FAIL_REASON="qemu-img create failed"; return 1; }
	backend_start qcow2 "$base" format=qcow2 || return 1
	guest_run "$E2E_TMP/qcow2.log" "${BACKEND_SOCK[qcow2]}" fs "vblk.size=$DISK_SIZE" || return 1
	expect_counters qcow2 'errors -eq 0' || return 1
	backend_stop qcow2 || return 1
	if ! qemu-img check "$base" >"$E2E_TMP/qcow2.check" 2>&1; then
		FAIL_REASON="qemu-img check of the qcow2 image failed"
		return 1
	fi
	sum=$(qemu-img convert -O raw "$base" /dev/stdout 2>/dev/null | md5sum)
	qemu-img create -q -f qcow2 -b "$base" -F qcow2 "$top" || { FAIL_REASON="qemu-img create -b failed"; return 1; }
	LOGS=("$E2E_TMP/qcow2.2.log" "$E2E_TMP/qcow2.2.log.qemu" "$E2E_TMP/qcow2.daemon.log" "$E2E_TMP/qcow2.check")
	backend_start qcow2 "$top" format=qcow2 || return 1
	guest_run "$E2E_TMP/qcow2.2.log" "${BACKEND_SOCK[qcow2]}" fs "vblk.size=$DISK_SIZE" || return 1
	expect_counters qcow2 'errors -eq 0' || return 1
	backend_stop qcow2 || return 1
	if ! qemu-img check "$top" >"$E2E_TMP/qcow2.check" 2>&1; then
		FAIL_REASON="qemu-img check of the overlay failed"
		return 1
	fi
	if [ "$(qemu-img convert -O raw "$base" /dev/stdout 2>/dev/null | md5sum)" != "$sum" ]; then
		FAIL_REASON="the backing file changed under the overlay"
		return 1
	fi
}

# nbd: the guest makes and checks ext4 on an export of vblkd's driver=nbd, the disk served by
# qemu-nbd from a raw file on a unix socket; then e2fsck of the file on the host
t_nbd() {
	vblkd_only driver=nbd || return
	command -v qemu-nbd >/dev/null || { SKIP_REASON="qemu-nbd not installed"; return 77; }
	local img=$E2E_TMP/nbd.img nsock=$E2E_TMP/nbd-server.sock npid rc=0
	LOGS=("$E2E_TMP/nbd.log" "$E2E_TMP/nbd.log.qemu" "$E2E_TMP/nbd.daemon.log" "$E2E_TMP/nbd-server.log" "$E2E_TMP/nbd.fsck")
	mkimg "$img" $DISK_SIZE
	qemu-nbd -k "$nsock" -f raw --discard=unmap --cache=writeback "$img" >"$E2E_TMP/nbd-server.log" 2>&1 &
	npid=$!
	for _ in $(seq 100); do [ -S "$nsock" ] && break; sleep 0.05; done
	if backend_start nbd "" driver=nbd "uri=nbd+unix:///?socket=$nsock"; then
		if guest_run "$E2E_TMP/nbd.log" "${BACKEND_SOCK[nbd]}" fs "vblk.size=$DISK_SIZE" &&
			expect_counters nbd 'errors -eq 0'; then
			backend_stop nbd || rc=1
		else
			backend_stop nbd
			rc=1
		fi
	else
		rc=1
	fi
	kill -TERM "$npid" 2>/dev/null
	wait "$npid" 2>/dev/null
	[ $rc = 0 ] || return 1
	if ! e2fsck -fn "$img" >"$E2E_TMP/nbd.fsck" 2>&1; then
		FAIL_REASON="host: e2fsck -fn of the file behind the NBD server found errors"
		return 1
	fi
}

# nbd-restart: the NBD server behind vblkd's driver=nbd dies (kill -9) under a guest that writes and
# verifies data, stays down E2E_NBD_DOWN seconds (default 3) and comes back on the same socket and
# file; vblkd holds the requests, reconnects and sends them again: no I/O error in the guest, no
# mismatch, error counter 0, and the daemon logged the reconnect.
t_nbd-restart() {
	vblkd_only driver=nbd || return
	command -v qemu-nbd >/dev/null || { SKIP_REASON="qemu-nbd not installed"; return 77; }
	local img=$E2E_TMP/nbdr.img nsock=$E2E_TMP/nbdr-server.sock nlog=$E2E_TMP/nbdr-server.log
	local down=${E2E_NBD_DOWN:-3} secs npid='' rc
	_nbd_restart
	rc=$?
	if [ -n "$npid" ] && kill -0 "$npid" 2>/dev/null; then
		kill -TERM "$npid"
		wait "$npid" 2>/dev/null
	fi
	[ -z "$npid" ] || _untrack "$npid"
	return $rc
}
_nbd_restart() { # the body of t_nbd-restart (its locals); npid: the current qemu-nbd
	LOGS=("$E2E_TMP/nbdr.log" "$E2E_TMP/nbdr.log.qemu" "$E2E_TMP/nbdr.daemon.log" "$nlog")
	mkimg "$img" $DISK_SIZE
	: >"$nlog"
	_nbdr_server() { # start qemu-nbd (persistent) on $nsock, tracked by PID in npid
		rm -f "$nsock"
		qemu-nbd -t -k "$nsock" -f raw --cache=writeback "$img" >>"$nlog" 2>&1 &
		npid=$!
		_track "$npid" "qemu-nbd ($nsock)"
		for _ in $(seq 100); do [ -S "$nsock" ] && return 0; sleep 0.05; done
		FAIL_REASON="qemu-nbd did not create $nsock"
		return 1
	}
	_nbdr_server || return 1
	backend_start nbdr "" driver=nbd "uri=nbd+unix:///?socket=$nsock" timeout=30 \
		reconnect-delay-ms=100 || return 1
	secs=$((down + 12))
	guest_start "$E2E_TMP/nbdr.log" "${BACKEND_SOCK[nbdr]}" \
		"vblk.test=loop vblk.seed=87 vblk.secs=$secs vblk.size=$DISK_SIZE"
	if ! wait_for_line "$E2E_TMP/nbdr.log" '^VBLK-E2E: LOOP running' 60; then
		guest_kill
		FAIL_REASON="loop guest did not start"
		return 1
	fi
	sleep 2
	kill -KILL "$npid"
	wait "$npid" 2>/dev/null
	_untrack "$npid"
	sleep "$down"
	kill -0 "$GUEST_PID" 2>/dev/null || { FAIL_REASON="QEMU exited while the NBD server was down"; return 1; }
	_nbdr_server || { guest_kill; return 1; }
	E2E_GUEST_TIMEOUT=$((secs + 60)) guest_wait "$E2E_TMP/nbdr.log" loop || return 1
	expect_counters nbdr 'errors -eq 0' 'writes -ge 8' || return 1
	if ! grep -q 'reconnected to' "${BACKEND_LOG[nbdr]}"; then
		FAIL_REASON="vblkd did not log a reconnect to the NBD server"
		return 1
	fi
	e2e_log "nbd-restart: ${down}s down, $(grep -o 'reconnected to.*' "${BACKEND_LOG[nbdr]}" | tail -1), $(guest_info "$E2E_TMP/nbdr.log" 'rounds: ') rounds"
	backend_stop nbdr
}

# hmp SOCK CMD: one command to a QEMU human monitor on a unix socket; prints the answer
hmp() {
	python3 - "$1" "$2" <<'PY'
import socket, sys, time
s = socket.socket(socket.AF_UNIX)
s.settimeout(10)
s.connect(sys.argv[1])
def until_prompt():
    b = b""
    while not b.endswith(b"(qemu) "):
        b += s.recv(4096)
    return b
until_prompt()
s.sendall(sys.argv[2].encode() + b"\n")
print(until_prompt().decode(errors="replace"))
PY
}

# Live migration with shared storage: a guest writing and verifying data moves from one QEMU to
# another on the same host, each with its own export of the same image (the destination's with
# locking=off: the source's rings are stopped before the destination's start).  vblkd logs
# every page it writes while the source migrates; after the switch the guest goes on on the
# destination and its data verifies.
t_migrate() {
	vblkd_only migration || return
	local img=$E2E_TMP/mig.img src dst i st
	LOGS=("$E2E_TMP/mig.src.log" "$E2E_TMP/mig.src.log.qemu" "$E2E_TMP/mig.dst.log"
		"$E2E_TMP/mig.dst.log.qemu" "$E2E_TMP/migsrc.daemon.log" "$E2E_TMP/migdst.daemon.log")
	mkimg "$img" $DISK_SIZE
	backend_start migsrc "$img" || return 1
	backend_start migdst "$img" locking=off || return 1
	GUEST_RECONNECT= guest_start "$E2E_TMP/mig.src.log" "${BACKEND_SOCK[migsrc]}" \
		"vblk.test=loop vblk.seed=91 vblk.secs=40 vblk.size=$DISK_SIZE" \
		-monitor unix:"$E2E_TMP/mon.src",server=on,wait=off
	src=$GUEST_PID
	if ! wait_for_line "$E2E_TMP/mig.src.log" '^VBLK-E2E: LOOP running' 60; then
		guest_kill
		FAIL_REASON="loop guest did not start"
		return 1
	fi
	guest_start "$E2E_TMP/mig.dst.log" "${BACKEND_SOCK[migdst]}" \
		"vblk.test=loop vblk.seed=91 vblk.secs=40 vblk.size=$DISK_SIZE" \
		-incoming unix:"$E2E_TMP/mig.sock" -monitor unix:"$E2E_TMP/mon.dst",server=on,wait=off
	dst=$GUEST_PID
	sleep 2
	hmp "$E2E_TMP/mon.src" "migrate -d unix:$E2E_TMP/mig.sock" >/dev/null
	for i in $(seq 120); do
		st=$(hmp "$E2E_TMP/mon.src" "info migrate" | sed -n 's/^Migration status: *//p' | tr -d '\r')
		case "$st" in completed | failed | cancelled) break ;; esac
		sleep 0.5
	done
	e2e_log "migrate: status $st; $(hmp "$E2E_TMP/mon.src" "info migrate" | grep -a 'downtime' | tr -d '\r' | head -1)"
	kill -KILL "$src" 2>/dev/null
	wait "$src" 2>/dev/null
	_untrack "$src"
	if [ "$st" != completed ]; then
		GUEST_PID=$dst guest_kill
		FAIL_REASON="migration $st"
		return 1
	fi
	grep -q "dirty logging on" "$E2E_TMP/migsrc.daemon.log" ||
		{ GUEST_PID=$dst guest_kill; FAIL_REASON="vblkd never logged for the source"; return 1; }
	GUEST_PID=$dst
	# the guest finishes on the destination: its serial output continues there
	E2E_GUEST_TIMEOUT=120 guest_wait "$E2E_TMP/mig.dst.log" loop || return 1
	backend_stop migsrc || return 1
	backend_stop migdst || return 1
}

# werror=enospc under a guest: the disk "runs out of space" (the faulty filter fails two writes
# with ENOSPC), the guest's writes wait instead of failing, SIGUSR2 (the operator made room)
# retries them and the guest's test passes with no I/O error.
t_policy() {
	vblkd_only werror=enospc || return
	local img=$E2E_TMP/policy.img i
	LOGS=("$E2E_TMP/policy.log" "$E2E_TMP/policy.log.qemu" "$E2E_TMP/policy.daemon.log")
	mkimg "$img" $DISK_SIZE
	backend_start policy "$img" werror=enospc inject-ops=write inject-errno=ENOSPC \
		inject-count=2 || return 1
	guest_start "$E2E_TMP/policy.log" "${BACKEND_SOCK[policy]}" "vblk.test=io vblk.seed=95 vblk.size=$DISK_SIZE"
	for i in $(seq 600); do
		grep -q "queue 0 paused" "${BACKEND_LOG[policy]}" && break
		sleep 0.1
	done
	grep -q "queue 0 paused" "${BACKEND_LOG[policy]}" || { guest_kill; FAIL_REASON="the queue never paused"; return 1; }
	sleep 2 # the guest waits meanwhile: nothing fails
	for i in 1 2 3; do # each resume may meet the next injected failure
		kill -USR2 "${BACKEND_PID[policy]}"
		sleep 1
	done
	guest_wait "$E2E_TMP/policy.log" io || return 1
	expect_counters policy 'errors -eq 0' 'held -ge 1' || return 1
	backend_stop policy || return 1
	host_verify_io "$img" 95 || return 1
}

# vblkd changed live while a guest writes to its disk (issue: run vblkd live): over the control
# socket with vblkctl, export-add a second disk and use it from a second front-end (vblk-bench
# verify), export-set iops-total=500 on it and measure 500 +-10% over 10 s, lift it,
# export-del --force it under I/O (what was written is on disk), then export-resize the guest's
# disk: the guest sees the new size without a reboot and writes its new end; its writes never fail.
t_live() {
	vblkd_only "the control socket" || return
	local img=$E2E_TMP/live.img img2=$E2E_TMP/live2.img rpc=$E2E_TMP/live.rpc new=$((96 * 1024 * 1024))
	local ctl=$E2E_TMP/live.ctl iops bg
	LOGS=("$E2E_TMP/live.log" "$E2E_TMP/live.log.qemu" "$E2E_TMP/live.daemon.log" "$ctl")
	mkimg "$img" $DISK_SIZE
	mkimg "$img2" $DISK_SIZE
	: >"$ctl"
	VBLKD_ARGS="--rpc $rpc" backend_start live "$img" || return 1
	guest_start "$E2E_TMP/live.log" "${BACKEND_SOCK[live]}" \
		"vblk.test=live vblk.seed=97 vblk.secs=45 vblk.size=$DISK_SIZE vblk.newsize=$new"
	if ! wait_for_line "$E2E_TMP/live.log" '^VBLK-E2E: LIVE running' 60; then
		guest_kill
		FAIL_REASON="live guest did not start"
		return 1
	fi
	live_step() { # what, command...: run, log, or fail the test
		local what=$1; shift
		echo "+ $*" >>"$ctl"
		if ! "$@" >>"$ctl" 2>&1; then
			guest_kill
			FAIL_REASON="$what failed: $(tail -1 "$ctl")"
			return 1
		fi
	}
	live_step "export add" "$VBLKCTL" -s "$rpc" export add "id=d2,file=$img2,socket=$E2E_TMP/d2.sock" || return 1
	live_step "second front-end on the added disk" "$BENCH" --socket "$E2E_TMP/d2.sock" \
		--verify-phase=write --size=8M --seed=5 || return 1
	live_step "export set" "$VBLKCTL" -s "$rpc" export set d2 iops-total=500 || return 1
	live_step "throttled run" "$BENCH" --socket "$E2E_TMP/d2.sock" --runtime=10 --iodepth=8 --wait \
		--size=8M --json || return 1
	iops=$(tail -1 "$ctl" | python3 -c 'import json,sys; print(json.load(sys.stdin)["iops"])')
	if ! python3 -c "import sys; sys.exit(0 if 450 <= $iops <= 550 else 1)"; then
		guest_kill
		FAIL_REASON="iops-total=500 measured $iops IOPS"
		return 1
	fi
	e2e_log "live: iops-total=500 measured $iops"
	live_step "export set (lift)" "$VBLKCTL" -s "$rpc" export set d2 iops-total=0 || return 1
	"$BENCH" --socket "$E2E_TMP/d2.sock" --rw=randread --size=8M --runtime=30 >>"$ctl" 2>&1 &
	bg=$!
	sleep 1
	live_step "export del --force under I/O" "$VBLKCTL" -s "$rpc" export del d2 --force || return 1
	wait $bg
	if [ -e "$E2E_TMP/d2.sock" ]; then
		guest_kill
		FAIL_REASON="d2's socket is still there after export del"
		return 1
	fi
	live_step "export add (again)" "$VBLKCTL" -s "$rpc" export add "id=d2,file=$img2,socket=$E2E_TMP/d2.sock" || return 1
	live_step "the written data is on disk" "$BENCH" --socket "$E2E_TMP/d2.sock" --size=8M \
		--verify-phase=read --seed=5 || return 1
	live_step "export resize" "$VBLKCTL" -s "$rpc" export resize live $new --truncate || return 1
	E2E_GUEST_TIMEOUT=120 guest_wait "$E2E_TMP/live.log" live || return 1
	e2e_log "live: guest $(guest_info "$E2E_TMP/live.log" 'rounds: ') write rounds meanwhile"
	backend_stop live || return 1
	[ "$(stat -c %s "$img")" = $new ] || { FAIL_REASON="host: image is $(stat -c %s "$img") bytes, not $new"; return 1; }
	"$GIO" -b verify "$img" $((new - 1024 * 1024)) 1M 98 >>"$E2E_TMP/host.log" 2>&1 ||
		{ FAIL_REASON="host: the guest's write at the new end is not in the image"; return 1; }
}

# ---------------------------------------------------------------------------
npass=0 nfail=0 nskip=0
echo "vblk e2e: backend=$BACKEND kernel=$(readlink "$E2E_KERNEL") tests: ${TESTS[*]}"
for t in "${TESTS[@]}"; do
	FAIL_REASON='' SKIP_REASON='' LOGS=()
	start=${EPOCHREALTIME/./}
	"t_$t"
	rc=$?
	# stop anything the test left running
	for n in "${!BACKEND_PID[@]}"; do
		backend_stop "$n" >/dev/null 2>&1
	done
	us=$((${EPOCHREALTIME/./} - start))
	el=$((us / 1000000)).$((us / 100000 % 10))
	if [ $rc -eq 0 ]; then
		echo "PASS $t (${el}s)"
		npass=$((npass + 1))
	elif [ $rc -eq 77 ]; then
		echo "SKIP $t: $SKIP_REASON"
		nskip=$((nskip + 1))
	else
		echo "FAIL $t: ${FAIL_REASON:-unknown failure} (${el}s)"
		show_logs "${LOGS[@]}"
		nfail=$((nfail + 1))
		E2E_KEEP=${E2E_KEEP:-1}
	fi
done
[ $nskip -eq 0 ] || echo "($nskip skipped)"
echo "$npass passed, $nfail failed"
[ $nfail -eq 0 ]
