# SPDX-License-Identifier: GPL-2.0-or-later
# Guest-side tests, sourced by /init.  Each t_NAME runs in a subshell; it
# returns 0 on success or calls fail (prints the FAIL line, exits 1).
DEV=/dev/vda
SYS=/sys/block/vda
GIO=/bin/guest-io
MiB=$((1024 * 1024))

fail() {
	echo "VBLK-E2E: FAIL $VBLK_TEST: $*"
	: >/tmp/failed
	exit 1
}
info() { echo "VBLK-E2E: INFO $*"; }

disk_size() {
	s=$($GIO size $DEV) || fail "cannot get size of $DEV"
	echo "$s"
}

check_size() {
	size=$(disk_size)
	sys=$(($(cat $SYS/size) * 512))
	[ "$size" = "$sys" ] || fail "BLKGETSIZE64 $size != sysfs size $sys"
	if [ -n "$VBLK_SIZE" ] && [ "$size" != "$VBLK_SIZE" ]; then
		fail "disk size $size, expected $VBLK_SIZE"
	fi
}

# Regions written by the io test: "offset:length"; negative offsets count
# from the end of the disk.  The harness verifies the same list on the host.
IO_REGIONS="0:64K 1052672:12K 8M:4M 33550336:8K -1M:64K -4K:4K"
# never written by any io test: must stay zero
IO_HOLES="2M:2M 20M:1M -2M:64K"

t_io() {
	check_size
	[ "$(cat $SYS/ro)" = 0 ] || fail "disk is read-only"
	if [ -n "$VBLK_EXPECT" ]; then
		for r in $IO_REGIONS; do
			$GIO verify $DEV ${r%%:*} ${r#*:} $VBLK_EXPECT ||
				fail "data written by previous boot (seed $VBLK_EXPECT) at $r not read back"
		done
		info "previous boot's data (seed $VBLK_EXPECT) verified"
	fi
	for r in $IO_REGIONS; do
		$GIO write $DEV ${r%%:*} ${r#*:} $VBLK_SEED || fail "write $r failed"
	done
	# read back through a fresh open, after dropping caches
	echo 3 >/proc/sys/vm/drop_caches
	for r in $IO_REGIONS; do
		$GIO verify $DEV ${r%%:*} ${r#*:} $VBLK_SEED || fail "verify $r failed"
	done
	for r in $IO_HOLES; do
		$GIO zero $DEV ${r%%:*} ${r#*:} || fail "never-written range $r is not zero (misdirected write?)"
	done
	# buffered (page cache) read of a region must match the O_DIRECT read
	a=$(dd if=$DEV bs=64K skip=128 count=64 2>/dev/null | md5sum | cut -d' ' -f1)
	b=$(dd if=$DEV bs=64K skip=128 count=64 iflag=direct 2>/dev/null | md5sum | cut -d' ' -f1)
	[ "$a" = "$b" ] || fail "buffered and O_DIRECT reads of 8M+4M differ"
	# an overwrite in the middle of a region: rewrite 8M+1M..+4K with another seed
	$GIO write $DEV $((9 * MiB)) 4K $((VBLK_SEED + 1000)) || fail "overwrite failed"
	$GIO verify $DEV $((9 * MiB)) 4K $((VBLK_SEED + 1000)) || fail "overwrite not read back"
	$GIO verify $DEV $((9 * MiB - 4096)) 4K $VBLK_SEED || fail "block before overwrite damaged"
	$GIO verify $DEV $((9 * MiB + 4096)) 4K $VBLK_SEED || fail "block after overwrite damaged"
	$GIO write $DEV $((9 * MiB)) 4K $VBLK_SEED || fail "restore write failed"
	# reading past the end must fail / return nothing, not wrap around
	size=$(disk_size)
	n=$(dd if=$DEV bs=4096 skip=$((size / 4096)) count=1 iflag=direct 2>/dev/null | wc -c)
	[ "$n" = 0 ] || fail "read beyond end of disk returned $n bytes"
	return 0
}

t_fs() {
	check_size
	/usr/sbin/mkfs.ext4 -q -F $DEV || fail "mkfs.ext4 failed"
	mount -t ext4 $DEV /mnt || fail "mount failed"
	mkdir -p /mnt/dir/sub || fail "mkdir failed"
	dd if=/dev/urandom of=/mnt/big bs=64K count=48 2>/dev/null || fail "write big failed"
	dd if=/dev/urandom of=/mnt/dir/medium bs=4K count=77 2>/dev/null || fail "write medium failed"
	dd if=/dev/urandom of=/mnt/dir/sub/odd bs=1 count=12345 2>/dev/null || fail "write odd failed"
	dd if=/dev/urandom of=/mnt/direct bs=64K count=16 oflag=direct 2>/dev/null || fail "write direct failed"
	i=0
	while [ $i -lt 40 ]; do
		echo "small file $i $(date +%s%N)" >/mnt/dir/f$i || fail "write f$i failed"
		i=$((i + 1))
	done
	(cd /mnt && find . -type f ! -path './lost+found/*' | sort | xargs md5sum) >/tmp/sums ||
		fail "md5sum failed"
	nfiles=$(wc -l </tmp/sums)
	[ "$nfiles" = 44 ] || fail "expected 44 files, found $nfiles"
	sync
	umount /mnt || fail "umount failed"
	echo 3 >/proc/sys/vm/drop_caches
	mount -t ext4 $DEV /mnt || fail "remount failed"
	(cd /mnt && md5sum -c /tmp/sums >/tmp/check 2>&1) || { cat /tmp/check; fail "checksums differ after remount"; }
	df -k /mnt | tail -1
	umount /mnt || fail "second umount failed"
	/usr/sbin/e2fsck -fn $DEV >/tmp/fsck 2>&1 || { cat /tmp/fsck; fail "e2fsck -fn reported errors"; }
	tail -1 /tmp/fsck
	return 0
}

t_discard() {
	check_size
	dmax=$(cat $SYS/queue/discard_max_bytes)
	zmax=$(cat $SYS/queue/write_zeroes_max_bytes)
	info "discard_max_bytes=$dmax write_zeroes_max_bytes=$zmax discard_granularity=$(cat $SYS/queue/discard_granularity)"
	[ "$dmax" -gt 0 ] || fail "discard not supported (discard_max_bytes=0)"
	[ "$zmax" -gt 0 ] || fail "write zeroes not supported (write_zeroes_max_bytes=0)"
	$GIO write $DEV 0 16M $VBLK_SEED || fail "pattern write failed"
	$GIO write $DEV -1M 1M $VBLK_SEED || fail "pattern write (end) failed"
	/usr/sbin/blkdiscard -o $((4 * MiB)) -l $((2 * MiB)) $DEV || fail "blkdiscard 4M+2M failed"
	/usr/sbin/blkdiscard -o $((12 * MiB + 4096)) -l 8192 $DEV || fail "blkdiscard 12M+4K+8K failed"
	/usr/sbin/blkdiscard -z -o $((8 * MiB)) -l $((2 * MiB)) $DEV || fail "blkdiscard -z 8M+2M failed"
	/usr/sbin/blkdiscard -z -o $((14 * MiB + 4096)) -l 4096 $DEV || fail "blkdiscard -z 14M+4K+4K failed"
	size=$(disk_size)
	/usr/sbin/blkdiscard -z -o $((size - 65536)) -l 65536 $DEV || fail "blkdiscard -z last 64K failed"
	echo 3 >/proc/sys/vm/drop_caches
	# write zeroes must always read back as zeroes
	$GIO zero $DEV 8M 2M || fail "write-zeroes range 8M+2M does not read back as zeroes"
	$GIO zero $DEV $((14 * MiB + 4096)) 4K || fail "write-zeroes 14M+4K+4K does not read back as zeroes"
	$GIO zero $DEV -64K 64K || fail "write-zeroes of last 64K does not read back as zeroes"
	if [ "$VBLK_DZERO" = 1 ]; then
		$GIO zero $DEV 4M 2M || fail "discarded range 4M+2M does not read back as zeroes"
		$GIO zero $DEV $((12 * MiB + 4096)) 8K || fail "discarded 12M+4K+8K does not read back as zeroes"
	fi
	# everything else keeps its pattern
	$GIO verify $DEV 0 4M $VBLK_SEED || fail "pattern before discard range damaged"
	$GIO verify $DEV 6M 2M $VBLK_SEED || fail "pattern between discard and write-zeroes damaged"
	$GIO verify $DEV 10M $((2 * MiB + 4096)) $VBLK_SEED || fail "pattern 10M..12M+4K damaged"
	$GIO verify $DEV $((12 * MiB + 12288)) $((2 * MiB - 8192)) $VBLK_SEED || fail "pattern 12M+12K..14M+4K damaged"
	$GIO verify $DEV $((14 * MiB + 8192)) $((2 * MiB - 8192)) $VBLK_SEED || fail "pattern 14M+8K..16M damaged"
	$GIO verify $DEV -1M $((MiB - 65536)) $VBLK_SEED || fail "pattern before last 64K damaged"
	# discarded blocks must be writable again
	$GIO write $DEV 4M 1M $((VBLK_SEED + 7)) || fail "rewrite of discarded range failed"
	$GIO verify $DEV 4M 1M $((VBLK_SEED + 7)) || fail "rewrite of discarded range not read back"
	return 0
}

t_mq() {
	check_size
	nq=$(ls $SYS/mq | wc -l)
	info "hw queues: $nq, cpus: $(nproc)"
	[ "$nq" = "$VBLK_QUEUES" ] || fail "$nq hw queues visible, expected $VBLK_QUEUES"
	grep virtio /proc/interrupts >/tmp/irq0
	ncpu=$(nproc)
	# 2 writers per queue, each pinned to a CPU, on disjoint 4 MiB ranges
	nw=$((nq * 2))
	i=0
	while [ $i -lt $nw ]; do
		taskset -c $((i % ncpu)) $GIO write $DEV $((i * 4 * MiB)) 4M $((VBLK_SEED + i)) &
		eval "pid$i=\$!"
		i=$((i + 1))
	done
	i=0
	while [ $i -lt $nw ]; do
		eval "p=\$pid$i"
		wait $p || fail "concurrent writer $i failed"
		i=$((i + 1))
	done
	# concurrent verification, again spread across CPUs
	i=0
	while [ $i -lt $nw ]; do
		taskset -c $((i % ncpu)) $GIO verify $DEV $((i * 4 * MiB)) 4M $((VBLK_SEED + i)) &
		eval "pid$i=\$!"
		i=$((i + 1))
	done
	i=0
	while [ $i -lt $nw ]; do
		eval "p=\$pid$i"
		wait $p || fail "concurrent verify $i failed"
		i=$((i + 1))
	done
	grep virtio /proc/interrupts >/tmp/irq1
	cat /tmp/irq1
	# every request virtqueue must have completed requests (interrupts) when
	# there is a CPU per queue
	if [ "$ncpu" -ge "$nq" ]; then
		q=0
		while [ $q -lt $nq ]; do
			line=$(grep "req\.$q\$" /tmp/irq1) || fail "no interrupt line for request queue $q"
			total=0
			for c in $(echo "$line" | awk -v n=$ncpu '{ for (i = 2; i <= n + 1; i++) print $i }'); do
				total=$((total + c))
			done
			[ $total -gt 0 ] || fail "request queue $q saw no completions"
			q=$((q + 1))
		done
	fi
	return 0
}

flush_count() {
	# /sys/block/X/stat field 16: flush requests completed
	awk '{ print $16 }' $SYS/stat
}

t_flush() {
	check_size
	wc=$(cat $SYS/queue/write_cache)
	info "write_cache=$wc cache_type=$(cat $SYS/cache_type 2>/dev/null) fua=$(cat $SYS/queue/fua 2>/dev/null)"
	if [ -n "$VBLK_WC" ]; then
		[ "$wc" = "write $VBLK_WC" ] || fail "write_cache is '$wc', expected 'write $VBLK_WC'"
	fi
	if [ "$wc" != "write back" ]; then
		# VIRTIO_BLK_F_CONFIG_WCE: switch the device to writeback through
		# its config space (VHOST_USER_SET_CONFIG to the back-end)
		[ -w $SYS/cache_type ] || fail "write through and cache_type not writable: cannot test flushes"
		echo "write back" >$SYS/cache_type || fail "setting cache_type to write back failed"
		wc=$(cat $SYS/queue/write_cache)
		[ "$wc" = "write back" ] || fail "cache_type write back did not take effect (write_cache=$wc)"
		info "switched to write back via cache_type"
	fi
	f0=$(flush_count)
	$GIO write $DEV 0 1M $VBLK_SEED || fail "write + fdatasync failed"
	$GIO flush $DEV || fail "fdatasync on the device failed"
	dd if=/dev/urandom of=$DEV bs=64K count=4 seek=32 conv=fsync 2>/dev/null || fail "buffered write + fsync failed"
	sync
	f1=$(flush_count)
	info "flushes completed: $((f1 - f0))"
	[ $((f1 - f0)) -ge 2 ] || fail "write back cache but only $((f1 - f0)) flush requests completed"
	# and in write through mode the block layer must not send any
	if [ -w $SYS/cache_type ]; then
		echo "write through" >$SYS/cache_type || fail "setting cache_type to write through failed"
		[ "$(cat $SYS/queue/write_cache)" = "write through" ] || fail "cache_type write through did not take effect"
		f0=$(flush_count)
		$GIO write $DEV 2M 1M $VBLK_SEED || fail "write + fdatasync (write through) failed"
		f1=$(flush_count)
		[ $((f1 - f0)) -eq 0 ] || fail "write through but $((f1 - f0)) flushes were sent"
	fi
	$GIO verify $DEV 0 1M $VBLK_SEED || fail "verify after flush failed"
	$GIO verify $DEV 2M 1M $VBLK_SEED || fail "verify after flush failed"
	return 0
}

t_ro() {
	check_size
	ro=$(cat $SYS/ro)
	[ "$ro" = 1 ] || fail "/sys/block/vda/ro is $ro, expected 1"
	# the harness wrote this pattern into the image before starting the back-end
	$GIO verify $DEV 0 1M $VBLK_SEED || fail "pre-seeded data not readable"
	$GIO verify $DEV -64K 64K $VBLK_SEED || fail "pre-seeded data at end not readable"
	if $GIO write $DEV 0 4K 999 2>/tmp/err; then
		fail "O_DIRECT write to read-only disk succeeded"
	fi
	info "write rejected as expected: $(cat /tmp/err)"
	if dd if=/dev/zero of=$DEV bs=4K count=1 seek=1 conv=fsync 2>/dev/null; then
		fail "buffered write to read-only disk succeeded"
	fi
	/usr/sbin/blkdiscard -o 0 -l 1M $DEV 2>/dev/null && fail "discard on read-only disk succeeded"
	echo 3 >/proc/sys/vm/drop_caches
	$GIO verify $DEV 0 1M $VBLK_SEED || fail "data changed after rejected writes"
	return 0
}

# continuous writes until the harness kills the VM
t_hammer() {
	check_size
	$GIO hammer $DEV 40M 8M $VBLK_SEED 0 >/tmp/h0 &
	$GIO hammer $DEV 48M 8M $((VBLK_SEED + 100)) 0 >/tmp/h1 &
	i=0
	while ! grep -q pass /tmp/h0 || ! grep -q pass /tmp/h1; do
		sleep 0.2
		i=$((i + 1))
		[ $i -lt 300 ] || fail "hammer writers made no progress"
	done
	echo "VBLK-E2E: HAMMER running"
	wait
	fail "hammer writers stopped: $(cat /tmp/h0 /tmp/h1 | tail -2)"
}

# Write and verify a region over and over for vblk.secs seconds, two writers at once (the host
# kills and restarts the back-end meanwhile): every write must complete, every read back must
# match, no I/O error.
loop_writer() { # N: region N (4 MiB at N * 8 MiB)
	end=$(($(cut -d. -f1 /proc/uptime) + ${VBLK_SECS:-60}))
	i=0
	while [ "$(cut -d. -f1 /proc/uptime)" -lt $end ]; do
		seed=$((VBLK_SEED + 1000 * $1 + i))
		$GIO write $DEV $(($1 * 8))M 4M $seed || { echo "writer $1 round $i: write failed"; exit 1; }
		$GIO verify $DEV $(($1 * 8))M 4M $seed || { echo "writer $1 round $i: verify failed"; exit 1; }
		echo "round $i" >/tmp/w$1
		i=$((i + 1))
	done
	echo "done $i" >/tmp/w$1
}

t_loop() {
	check_size
	loop_writer 0 >/tmp/e0 2>&1 &
	p0=$!
	loop_writer 1 >/tmp/e1 2>&1 &
	p1=$!
	echo "VBLK-E2E: LOOP running"
	wait $p0 || fail "$(cat /tmp/e0 | tail -2)"
	wait $p1 || fail "$(cat /tmp/e1 | tail -2)"
	info "rounds: $(cut -d' ' -f2 /tmp/w0) + $(cut -d' ' -f2 /tmp/w1)"
}

# The host changes vblkd live while the guest writes (export-add/set/del of another disk, then
# export-resize of this one): the writes must go on without an error, the new size must show up
# without a reboot, the new end must be usable and old data intact.
t_live() {
	check_size
	loop_writer 0 >/tmp/e0 2>&1 &
	p0=$!
	echo "VBLK-E2E: LIVE running"
	i=0
	while [ $(($(cat $SYS/size) * 512)) != "$VBLK_NEWSIZE" ]; do
		sleep 0.2
		i=$((i + 1))
		[ $i -lt 1500 ] || fail "size still $(($(cat $SYS/size) * 512)), expected $VBLK_NEWSIZE"
	done
	info "new size $VBLK_NEWSIZE seen"
	size=$(disk_size)
	[ "$size" = "$VBLK_NEWSIZE" ] || fail "sysfs has the new size but BLKGETSIZE64 says $size"
	$GIO write $DEV -1M 1M $((VBLK_SEED + 1)) || fail "write at the new end failed"
	echo 3 >/proc/sys/vm/drop_caches
	$GIO verify $DEV -1M 1M $((VBLK_SEED + 1)) || fail "verify at the new end failed"
	wait $p0 || fail "$(tail -2 /tmp/e0)"
	info "rounds: $(cut -d' ' -f2 /tmp/w0)"
}
