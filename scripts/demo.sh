#!/bin/bash
# demo.sh - the main job: install what vblk needs, build it, start vblkd on a default image and
# show it serving I/O, first to vblk-bench (a userspace virtio-blk driver) and then to a real
# Linux guest in QEMU that makes an ext4 filesystem on it.
#
#   scripts/demo.sh                 image build/demo/disk0.img (1 GiB, created if missing)
#   IMAGE=/path/disk.img scripts/demo.sh
#   NO_GUEST=1 scripts/demo.sh      skip the QEMU guest
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
bash scripts/install-deps.sh
bash scripts/build.sh build >/dev/null
echo "demo: built build/src/vblkd and build/tools/vblk-bench/vblk-bench"

demo=$repo/build/demo
mkdir -p "$demo"
img=${IMAGE:-$demo/disk0.img}
sock=$demo/disk0.sock
[ -e "$img" ] || truncate -s 1G "$img"
daemon=
qemu=
cleanup() {
    [ -n "$qemu" ] && kill "$qemu" 2>/dev/null && wait "$qemu" 2>/dev/null
    if [ -n "$daemon" ] && kill -0 "$daemon" 2>/dev/null; then
        kill -TERM "$daemon"
        wait "$daemon" || true
    fi
}
trap cleanup EXIT

# cache=none needs O_DIRECT; fall back to writeback on filesystems without it (tmpfs)
cache=none
dd if=/dev/zero of="$img" bs=4096 count=1 seek=0 conv=notrunc oflag=direct status=none 2>/dev/null || cache=writeback
echo "demo: starting vblkd on $img (cache=$cache, 2 queues)"
set -x
build/src/vblkd --export "id=disk0,file=$img,socket=$sock,aio=io_uring,cache=$cache,num-queues=2" &
{ set +x; } 2>/dev/null
daemon=$!
for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.05; done

echo
echo "demo: 1) vblk-bench writes stamped blocks to the first 64 MiB and reads them back"
build/tools/vblk-bench/vblk-bench --socket "$sock" --verify --size=64M --bs=64k
echo
echo "demo: 2) vblk-bench, 4k random 50/50 read/write, queue depth 32, 2 queues, 5 seconds"
build/tools/vblk-bench/vblk-bench --socket "$sock" --rw=randrw --bs=4k --iodepth=32 --numjobs=2 \
    --runtime=5 --wait

if [ -z "${NO_GUEST:-}" ]; then
    echo
    echo "demo: 3) a Linux guest (QEMU, software emulation) uses the disk as /dev/vda"
    bash tests/e2e/build-initramfs.sh "$repo/build/e2e" >/dev/null
    log=$demo/guest.log
    set -x
    qemu-system-x86_64 -accel tcg -machine q35 -m 256M \
        -object memory-backend-memfd,id=mem,size=256M,share=on -numa node,memdev=mem \
        -chardev socket,id=c0,path="$sock" -device vhost-user-blk-pci,chardev=c0,num-queues=2 \
        -kernel "$repo/build/e2e/vmlinuz" -initrd "$repo/build/e2e/initramfs.cpio.gz" \
        -append "console=ttyS0 panic=-1 quiet vblk.test=fs" \
        -nodefaults -display none -serial file:"$log" -no-reboot &
    { set +x; } 2>/dev/null
    qemu=$!
    for _ in $(seq 240); do
        kill -0 "$qemu" 2>/dev/null || break
        sleep 0.5
    done
    kill "$qemu" 2>/dev/null || true
    wait "$qemu" 2>/dev/null || true
    qemu=
    tr -d '\r' <"$log" | grep -E '^(VBLK-E2E|\+ |mkfs|e2fsck)|vda' | head -40 || true
    grep -q 'VBLK-E2E: PASS' "$log" && echo "demo: the guest made, filled and checked an ext4 filesystem on vblkd" \
        || { echo "demo: guest did not pass, see $log"; exit 1; }
fi
echo
echo "demo: request counters (SIGUSR1):"
kill -USR1 "$daemon"
sleep 0.3
echo "demo: stopping vblkd (SIGTERM drains, flushes and exits 0)"
