#!/bin/bash
# SPDX-License-Identifier: GPL-2.0-or-later
#
# build-initramfs.sh OUTDIR
#
# Builds the test guest for the vblk end-to-end tests:
#   OUTDIR/initramfs.cpio.gz  busybox + kernel modules (virtio_pci, virtio_blk,
#                             ext4 and their dependencies) + mkfs.ext4/e2fsck
#                             (e2fsprogs) + blkdiscard (util-linux) + guest-io
#                             + /init and the guest test scripts
#   OUTDIR/vmlinuz            symlink to the matching /boot/vmlinuz-KVER
#   OUTDIR/guest-io           the static helper (also usable on the host)
#
# The kernel is the newest /boot/vmlinuz-* that has /lib/modules/KVER.
# Override with E2E_KVER=<version>.  Rebuilds only when an input is newer than
# the output (or the kernel version changed).
set -euo pipefail

die() { echo "build-initramfs: $*" >&2; exit 1; }

[ $# -eq 1 ] || die "usage: $0 OUTDIR"
OUT=$1
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

# ---- pick the kernel -------------------------------------------------------
pick_kernel() {
	local k v best=""
	for k in $(printf '%s\n' /boot/vmlinuz-* | sort -V); do
		v=${k#/boot/vmlinuz-}
		[ -f "/lib/modules/$v/modules.dep" ] && [ -r "$k" ] && best=$v
	done
	echo "$best"
}
KVER=${E2E_KVER:-$(pick_kernel)}
[ -n "$KVER" ] || die "no readable /boot/vmlinuz-* with matching /lib/modules/*/modules.dep (apt-get install linux-image-amd64)"
KERNEL=/boot/vmlinuz-$KVER
MODDIR=/lib/modules/$KVER
[ -r "$KERNEL" ] || die "$KERNEL not readable"

BUSYBOX=$(command -v busybox || true)
[ -x /bin/busybox ] && BUSYBOX=/bin/busybox
[ -n "$BUSYBOX" ] || die "busybox not found (apt-get install busybox-static)"
if ldd "$BUSYBOX" >/dev/null 2>&1; then
	die "$BUSYBOX is dynamically linked; install busybox-static"
fi

# host binaries copied into the guest, with their shared libraries
HOST_BINS="/usr/sbin/mkfs.ext4 /usr/sbin/e2fsck /usr/sbin/blkdiscard"
for b in $HOST_BINS; do
	[ -x "$b" ] || die "$b missing (see tests/e2e/deps.txt)"
done

# modules to load, in this order (dependencies are resolved below).
# crc32c_generic is the 'crypto-crc32c' softdep of ext4 and jbd2; the
# SSE4.2 variant (crc32c-intel) cannot be used with the default TCG CPU.
WANT_MODS="crc32c_generic virtio_pci virtio_blk ext4"

OUTFILE=$OUT/initramfs.cpio.gz
STAMP=$OUT/initramfs.stamp
read -r -a HOST_BIN_LIST <<<"$HOST_BINS"
INPUTS=("$HERE/build-initramfs.sh" "$HERE/guest-io.c" "$HERE"/guest/* "$BUSYBOX" "${HOST_BIN_LIST[@]}" "$MODDIR/modules.dep")

up_to_date() {
	[ -f "$OUTFILE" ] && [ -f "$STAMP" ] && [ -x "$OUT/guest-io" ] || return 1
	[ "$(cat "$STAMP")" = "$KVER $WANT_MODS" ] || return 1
	local f
	for f in "${INPUTS[@]}"; do
		[ "$f" -nt "$OUTFILE" ] && return 1
	done
	return 0
}

if up_to_date; then
	ln -sfn "$KERNEL" "$OUT/vmlinuz"
	exit 0
fi

echo "build-initramfs: building $OUTFILE for kernel $KVER" >&2

# ---- guest helper ------------------------------------------------------------
CC=${CC:-gcc}
"$CC" -std=gnu11 -static -O2 -Wall -Wextra -Werror -o "$OUT/guest-io.tmp.$$" "$HERE/guest-io.c" \
	|| die "compiling guest-io.c failed (static libc: apt-get install libc6-dev)"
mv "$OUT/guest-io.tmp.$$" "$OUT/guest-io"

# ---- staging tree --------------------------------------------------------------
ROOT=$(mktemp -d "$OUT/root.XXXXXX")
trap 'rm -rf "$ROOT"' EXIT
mkdir -p "$ROOT"/{bin,sbin,usr/bin,usr/sbin,etc,proc,sys,dev,tmp,mnt,lib/modules,tests}

cp "$BUSYBOX" "$ROOT/bin/busybox"
for applet in $("$BUSYBOX" --list); do
	[ -e "$ROOT/bin/$applet" ] || ln -s busybox "$ROOT/bin/$applet"
done

# copy a binary plus the shared libraries ldd reports, at the same paths
copy_with_libs() {
	local bin=$1 lib
	mkdir -p "$ROOT$(dirname "$bin")"
	cp -L "$bin" "$ROOT$bin"
	for lib in $(ldd "$bin" | grep -o '/[^ ]*' | sort -u); do
		[ -e "$ROOT$lib" ] && continue
		mkdir -p "$ROOT$(dirname "$lib")"
		cp -L "$lib" "$ROOT$lib"
	done
}
for b in $HOST_BINS; do
	copy_with_libs "$b"
done
[ -f /etc/mke2fs.conf ] && cp /etc/mke2fs.conf "$ROOT/etc/"
ln -s /proc/mounts "$ROOT/etc/mtab"

cp "$OUT/guest-io" "$ROOT/bin/guest-io"
install -m 0755 "$HERE/guest/init" "$ROOT/init"
cp "$HERE"/guest/*.sh "$ROOT/tests/"

# ---- kernel modules --------------------------------------------------------------
# modules.dep: "kernel/x/y.ko[.xz]: dep1 dep2 ..." -- dependencies of dependencies
# are listed too; load each module's dependencies (recursively) before it.
declare -A DEPS PATHS LOADED
while IFS= read -r line; do
	path=${line%%:*}
	name=$(basename "$path"); name=${name%%.ko*}; name=${name//-/_}
	PATHS[$name]=$path
	DEPS[$name]=${line#*:}
done < "$MODDIR/modules.dep"

ORDER=()
load() {
	local m=${1//-/_} d dn deps=()
	[ -n "${LOADED[$m]:-}" ] && return 0
	if [ -z "${PATHS[$m]:-}" ]; then
		if grep -q "/$m.ko" "$MODDIR/modules.builtin" 2>/dev/null; then
			return 0   # built into the kernel
		fi
		die "module $m not found in $MODDIR/modules.dep"
	fi
	LOADED[$m]=1
	read -r -a deps <<<"${DEPS[$m]}"
	local i
	for ((i = ${#deps[@]} - 1; i >= 0; i--)); do
		d=${deps[$i]}
		dn=$(basename "$d"); dn=${dn%%.ko*}
		load "$dn"
	done
	ORDER+=("$m")
}
for m in $WANT_MODS; do
	load "$m"
done

: >"$ROOT/etc/modules"
for m in "${ORDER[@]}"; do
	src=$MODDIR/${PATHS[$m]}
	dst=$ROOT/lib/modules/$m.ko
	case "$src" in
	*.ko) cp "$src" "$dst" ;;
	*.ko.xz) xz -dc "$src" >"$dst" ;;
	*.ko.zst) zstd -qdc "$src" >"$dst" ;;
	*.ko.gz) gzip -dc "$src" >"$dst" ;;
	*) die "unknown module format: $src" ;;
	esac
	echo "$m" >>"$ROOT/etc/modules"
done
echo "build-initramfs: modules: ${ORDER[*]}" >&2

# ---- pack ------------------------------------------------------------------------
(cd "$ROOT" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc -R 0:0 --quiet) \
	| gzip -1 >"$OUTFILE.tmp.$$"
mv "$OUTFILE.tmp.$$" "$OUTFILE"
echo "$KVER $WANT_MODS" >"$STAMP"
ln -sfn "$KERNEL" "$OUT/vmlinuz"
echo "build-initramfs: wrote $OUTFILE ($(du -h "$OUTFILE" | cut -f1))" >&2
