#!/bin/bash
# SPDX-License-Identifier: GPL-2.0-or-later
#
# run.sh [BUILDDIR] - vblkd under libvirt: a private libvirtd boots contrib/libvirt/vblk-domain.xml.
#
# The test starts its own libvirtd (not the system's, which need not exist, nor systemd as PID 1)
# in a private mount namespace: /etc/libvirt, /run/libvirt, /var/lib/libvirt, /var/log/libvirt
# and /var/cache/libvirt are bind mounts of directories under a temporary directory, so its
# qemu.conf (QEMU as root, no dynamic ownership, no security driver, no cgroups) and its domains
# are its own; its socket lies in the temporary directory and virsh reaches it with
# -c 'qemu+unix:///system?socket=...'.  The domain is the contrib example turned into a test
# guest by changing only what must change (TCG, 256 MiB, 1 vCPU and 1 queue, the e2e kernel and
# initramfs booted directly, the serial console to a file, the socket path) and keeps its
# vhostuser disk, memfd/shared memory backing and <reconnect>.
#
# Tests:
#   libvirtd        the private libvirtd answers virsh
#   define          virsh define; dumpxml shows the vhostuser disk and shared memfd memory
#   boot-io         virsh start: the guest (tests/e2e/guest, test io) sees vda of the image's
#                   size, reads back the pattern the host wrote into the image beforehand,
#                   writes its own; the domain shuts off by itself
#   host-verify     the image holds the guest's pattern
#   reconnect       a guest writing and verifying in a loop while vblkd is restarted twice
#                   (SIGTERM: drain and exit, then a new vblkd): QEMU reconnects (the domain's
#                   <reconnect>), the guest sees no I/O error and its data verifies
#   undefine        virsh undefine; the private libvirtd exits 0 on SIGTERM
# Prints PASS/FAIL lines and "N passed, N failed".  Every process started here is stopped by
# its PID.  Environment: VBLKD, E2E_OUT (initramfs cache, default BUILDDIR/e2e), LIBVIRTD,
# VIRSH, LIBVIRT_KEEP=1 (keep the temporary directory).
set -u
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
BUILD=$(cd "${1:-$REPO/build}" && pwd)
: "${VBLKD:=$BUILD/src/vblkd}"
: "${E2E_OUT:=$BUILD/e2e}"
: "${LIBVIRTD:=libvirtd}"
: "${VIRSH:=virsh}"
DOM=vblk-libvirt-test
DISK_SIZE=$((64 * 1024 * 1024))

passed=0
failed=0
tmp=
lv_pid=
vblkd_pid=
made_run_dir=

pass() { echo "PASS $1"; passed=$((passed + 1)); }
fail() {
    local f
    echo "FAIL $1: $2"
    failed=$((failed + 1))
    for f in "$tmp/console.log" "$tmp/vblkd.log" "$tmp/log/qemu/$DOM.log" "$tmp/libvirtd.log"; do
        [ -s "$f" ] || continue
        echo "    ---- ${f##*/} (last 12 lines) ----"
        tr -d '\r' <"$f" | tail -12 | sed 's/^/    | /'
    done
}
finish() {
    echo "$passed passed, $failed failed"
    [ "$failed" -eq 0 ] && [ "$passed" -gt 0 ]
    exit
}
note() { echo "libvirt: $*" >&2; }

# stop_pid PID SECONDS: SIGTERM, wait, SIGKILL; returns the exit status (137 when killed)
stop_pid() {
    local pid=$1 deadline=$((SECONDS + $2))
    kill -TERM "$pid" 2>/dev/null
    while kill -0 "$pid" 2>/dev/null; do
        if [ $SECONDS -ge "$deadline" ]; then
            kill -KILL "$pid" 2>/dev/null
            wait "$pid" 2>/dev/null
            return 137
        fi
        sleep 0.1
    done
    wait "$pid" 2>/dev/null
}

# shellcheck disable=SC2317  # cleanup runs from the EXIT trap
qemu_pid() { cat "$tmp/run/qemu/$DOM.pid" 2>/dev/null; }

# shellcheck disable=SC2317
cleanup() {
    local pid
    if [ -n "$lv_pid" ] && kill -0 "$lv_pid" 2>/dev/null; then
        virsh_ destroy "$DOM" >/dev/null 2>&1
        virsh_ undefine "$DOM" >/dev/null 2>&1
    fi
    # QEMU outlives a libvirtd that died: stop it by the PID libvirt recorded
    pid=$(qemu_pid)
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        note "cleanup: killing QEMU (pid $pid)"
        kill -KILL "$pid" 2>/dev/null
    fi
    [ -n "$lv_pid" ] && kill -0 "$lv_pid" 2>/dev/null && stop_pid "$lv_pid" 10
    [ -n "$vblkd_pid" ] && kill -0 "$vblkd_pid" 2>/dev/null && stop_pid "$vblkd_pid" 10
    # the bind mount's target, when this test had to create it (an empty dir, no libvirtd ever ran)
    [ -n "$made_run_dir" ] && rmdir /run/libvirt 2>/dev/null
    if [ -n "$tmp" ] && [ -d "$tmp" ]; then
        if [ -n "${LIBVIRT_KEEP:-}" ] || [ "$failed" -gt 0 ]; then
            rm -f "$tmp"/*.img
            note "logs kept in $tmp"
        else
            rm -rf "$tmp"
        fi
    fi
}

# ---- prerequisites ---------------------------------------------------------------------------
for t in "$LIBVIRTD" "$VIRSH" unshare python3 qemu-system-x86_64; do
    command -v "$t" >/dev/null || { echo "FAIL setup: $t not found (scripts/install-deps.sh)"; finish; }
done
[ -x "$VBLKD" ] || { echo "FAIL setup: no vblkd at $VBLKD"; finish; }
[ "$(id -u)" -eq 0 ] || { echo "FAIL setup: needs root (a system libvirtd, mount namespace)"; finish; }
"$REPO/tests/e2e/build-initramfs.sh" "$E2E_OUT" >&2 || { echo "FAIL setup: building the e2e initramfs failed"; finish; }
KERNEL=$(readlink -f "$E2E_OUT/vmlinuz")
INITRD=$E2E_OUT/initramfs.cpio.gz
GIO=$E2E_OUT/guest-io

tmp=$(mktemp -d "${TMPDIR:-/tmp}/vblk-libvirt.XXXXXX") || exit 1
chmod 0755 "$tmp"
trap cleanup EXIT
trap 'exit 130' INT TERM
SOCK=$tmp/d1.sock
IMG=$tmp/d1.img
LV_SOCK=$tmp/sock/libvirt-sock
URI="qemu+unix:///system?socket=$LV_SOCK"
virsh_() { timeout 60 "$VIRSH" -q -c "$URI" "$@"; }

# ---- vblkd -----------------------------------------------------------------------------------
vblkd_start() {
    rm -f "$SOCK"
    "$VBLKD" --export "id=d1,file=$IMG,socket=$SOCK" >>"$tmp/vblkd.log" 2>&1 &
    vblkd_pid=$!
    local deadline=$((SECONDS + 10))
    until [ -S "$SOCK" ]; do
        kill -0 "$vblkd_pid" 2>/dev/null || { wait "$vblkd_pid"; vblkd_pid=; return 1; }
        [ $SECONDS -lt $deadline ] || return 1
        sleep 0.05
    done
}
vblkd_stop() { # drains and must exit 0
    local pid=$vblkd_pid
    vblkd_pid=
    stop_pid "$pid" 10
}

# ---- the private libvirtd --------------------------------------------------------------------
mkdir -p "$tmp"/{etc,run,lib,log,cache,sock}
cat >"$tmp/libvirtd.conf" <<EOF
unix_sock_dir = "$tmp/sock"
unix_sock_rw_perms = "0700"
auth_unix_ro = "none"
auth_unix_rw = "none"
log_outputs = "3:file:$tmp/libvirtd.log"
EOF
# bind-mounted as /etc/libvirt/qemu.conf: QEMU runs as root and opens the kernel, the
# initramfs, the console file and vblkd's socket as they are
cat >"$tmp/etc/qemu.conf" <<EOF
user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
stdio_handler = "file"
cgroup_controllers = [ ]
namespaces = [ ]
EOF
printf 'uri_default = "%s"\n' "$URI" >"$tmp/etc/libvirt.conf"

lv_start() {
    [ -d /run/libvirt ] || made_run_dir=1
    # unshare execs the shell, which execs libvirtd: $! is libvirtd's PID
    # shellcheck disable=SC2016  # expanded by the inner shell
    unshare --mount --propagation private -- /bin/sh -c '
        t=$1
        for m in etc:/etc/libvirt run:/run/libvirt lib:/var/lib/libvirt log:/var/log/libvirt \
                 cache:/var/cache/libvirt; do
            mkdir -p "${m#*:}" && mount --bind "$t/${m%%:*}" "${m#*:}" || exit 1
        done
        exec "$2" -f "$t/libvirtd.conf" -p "$t/libvirtd.pid"' sh "$tmp" "$LIBVIRTD" \
        >"$tmp/libvirtd.out" 2>&1 </dev/null &
    lv_pid=$!
    local deadline=$((SECONDS + 60))
    until [ -S "$LV_SOCK" ] && virsh_ version >/dev/null 2>&1; do
        if ! kill -0 "$lv_pid" 2>/dev/null; then
            wait "$lv_pid"
            LV_WHY="libvirtd exited with status $? ($(tail -3 "$tmp/libvirtd.out" | tr '\n' ' '))"
            lv_pid=
            return 1
        fi
        [ $SECONDS -lt $deadline ] || { LV_WHY="no answer on $LV_SOCK within 60 s"; return 1; }
        sleep 0.2
    done
}

# ---- the domain XML: the contrib example with only what a test guest needs changed ----------
# make_xml OUT "KERNEL-ARGS" RECONNECT-SECONDS
make_xml() {
    python3 - "$REPO/contrib/libvirt/vblk-domain.xml" "$1" "$DOM" "$SOCK" "$KERNEL" "$INITRD" \
        "console=ttyS0 panic=-1 quiet $2" "$tmp/console.log" "$3" <<'EOF'
import sys
import xml.etree.ElementTree as ET

src, out, name, sock, kernel, initrd, cmdline, console, reconnect = sys.argv[1:]
tree = ET.parse(src)
d = tree.getroot()
d.set("type", "qemu")  # TCG: nested KVM is not dependable here
d.find("name").text = name
uuid = d.find("uuid")
if uuid is None:
    uuid = ET.Element("uuid")
    d.insert(list(d).index(d.find("name")) + 1, uuid)
uuid.text = "7b1c0c3e-5f1a-4c8e-9d3b-0b1c2d3e4f50"  # fixed: redefining updates the same domain
for tag in ("memory", "currentMemory"):
    d.find(tag).set("unit", "MiB")
    d.find(tag).text = "256"
d.find("vcpu").text = "1"
os_ = d.find("os")
for b in os_.findall("boot"):
    os_.remove(b)
for tag, text in (("kernel", kernel), ("initrd", initrd), ("cmdline", cmdline)):
    ET.SubElement(os_, tag).text = text
d.find("on_reboot").text = "destroy"  # panic=-1 reboots: end the domain, never loop
devs = d.find("devices")
disk = devs.find("disk[@type='vhostuser']")
disk.find("driver").set("queues", "1")  # one vCPU, one queue: vblkd's default num-queues
src_el = disk.find("source")
src_el.set("path", sock)
src_el.find("reconnect").set("timeout", reconnect)
for tag in ("serial", "console"):
    for e in devs.findall(tag):
        devs.remove(e)
serial = ET.SubElement(devs, "serial", type="file")
ET.SubElement(serial, "source", path=console)
ET.SubElement(serial, "target", port="0")
tree.write(out)
EOF
}

# wait_shutoff SECONDS: the domain ends by itself (the guest powers off)
wait_shutoff() {
    local deadline=$((SECONDS + $1)) st
    while :; do
        st=$(virsh_ domstate "$DOM" 2>/dev/null)
        [ "$st" = "shut off" ] && return 0
        [ $SECONDS -lt $deadline ] || return 1
        sleep 0.5
    done
}

# guest_result TEST: the guest's verdict line on the console
guest_result() {
    local line
    line=$(tr -d '\r' <"$tmp/console.log" | grep -a '^VBLK-E2E: \(PASS\|FAIL\)' | tail -1)
    [ "$line" = "VBLK-E2E: PASS $1" ] && return 0
    WHY=${line:-"no result on the console"}
    return 1
}

# boot TEST "KERNEL-ARGS" RECONNECT: redefine the domain and start it
boot() {
    : >"$tmp/console.log"
    make_xml "$tmp/domain.xml" "vblk.test=$1 $2" "$3" || { WHY="building the domain XML failed"; return 1; }
    virsh_ define "$tmp/domain.xml" >"$tmp/virsh.out" 2>&1 || { WHY="define: $(cat "$tmp/virsh.out")"; return 1; }
    virsh_ start "$DOM" >"$tmp/virsh.out" 2>&1 || { WHY="start: $(cat "$tmp/virsh.out")"; return 1; }
}

eval "$(grep -E '^IO_(REGIONS|HOLES)=' "$REPO/tests/e2e/guest/tests.sh")"
# host_io write|verify SEED: the io test's regions in the image (buffered, from the host)
host_io() {
    local r
    for r in $IO_REGIONS; do
        "$GIO" -b "$1" "$IMG" "${r%%:*}" "${r#*:}" "$2" >>"$tmp/host.log" 2>&1 || return 1
    done
}

# ---- tests -----------------------------------------------------------------------------------
if lv_start; then
    pass libvirtd
else
    fail libvirtd "$LV_WHY"
    finish
fi

rm -f "$IMG" && truncate -s $DISK_SIZE "$IMG"
host_io write 11 || { fail boot-io "host: writing the seed pattern failed"; finish; }
vblkd_start || { fail boot-io "vblkd did not start"; finish; }

if ! { make_xml "$tmp/domain.xml" "vblk.test=io" 10 &&
    virsh_ define "$tmp/domain.xml" >"$tmp/virsh.out" 2>&1 &&
    virsh_ dumpxml "$DOM" >"$tmp/dumpxml.xml" 2>&1; }; then
    fail define "$(cat "$tmp/virsh.out")"
elif ! python3 - "$tmp/dumpxml.xml" "$SOCK" <<'EOF'; then
import sys
import xml.etree.ElementTree as ET
d = ET.parse(sys.argv[1]).getroot()
disk = d.find("devices/disk[@type='vhostuser']")
assert disk is not None and disk.find("target").get("dev") == "vda", "no vhostuser disk vda"
src = disk.find("source")
assert src.get("type") == "unix" and src.get("path") == sys.argv[2], "wrong socket"
assert src.find("reconnect").get("enabled") == "yes", "no reconnect"
mb = d.find("memoryBacking")
assert mb.find("source").get("type") == "memfd" and mb.find("access").get("mode") == "shared", "memory not memfd/shared"
EOF
    fail define "dumpxml lacks the vhostuser disk or shared memfd memory"
else
    pass define
fi

# the guest verifies seed 11 (written above), then writes and verifies seed 12
t0=$SECONDS
if ! boot io "vblk.seed=12 vblk.expect=11 vblk.size=$DISK_SIZE" 10; then
    fail boot-io "$WHY"
elif ! wait_shutoff 90; then
    fail boot-io "the domain did not shut off within 90 s"
elif ! guest_result io; then
    fail boot-io "guest: $WHY"
elif ! grep -q 'vhost-user-blk-pci' "$tmp/log/qemu/$DOM.log"; then
    fail boot-io "QEMU's command line has no vhost-user-blk-pci device"
else
    note "boot-io: $((SECONDS - t0)) s"
    pass boot-io
fi
if host_io verify 12; then pass host-verify; else fail host-verify "the image lacks the guest's pattern (seed 12)"; fi

# reconnect: the guest loops over write+verify while vblkd is restarted twice under it
secs=25
t0=$SECONDS
if ! boot loop "vblk.seed=71 vblk.secs=$secs vblk.size=$DISK_SIZE" 1; then
    fail reconnect "$WHY"
else
    ok=1
    deadline=$((SECONDS + 60))
    until tr -d '\r' <"$tmp/console.log" | grep -aq '^VBLK-E2E: LOOP running'; do
        if [ $SECONDS -ge $deadline ] || [ "$(virsh_ domstate "$DOM" 2>/dev/null)" = "shut off" ]; then
            WHY="the loop guest did not start"; ok=0; break
        fi
        sleep 0.2
    done
    for i in 1 2; do
        [ $ok = 1 ] || break
        sleep 3
        conns=$(grep -c 'front-end connected' "$tmp/vblkd.log")
        vblkd_stop || { WHY="vblkd did not exit 0 on SIGTERM (restart $i)"; ok=0; break; }
        sleep 1
        vblkd_start || { WHY="vblkd did not restart ($i)"; ok=0; break; }
        deadline=$((SECONDS + 20))
        until [ "$(grep -c 'front-end connected' "$tmp/vblkd.log")" -gt "$conns" ]; do
            [ $SECONDS -lt $deadline ] || { WHY="QEMU did not reconnect within 20 s after restart $i"; ok=0; break; }
            sleep 0.2
        done
    done
    if [ $ok = 0 ]; then
        fail reconnect "$WHY"
    elif ! wait_shutoff $((secs + 60)); then
        fail reconnect "the domain did not shut off"
    elif ! guest_result loop; then
        fail reconnect "guest: $WHY"
    else
        note "reconnect: $((SECONDS - t0)) s"
        pass reconnect
    fi
fi

if virsh_ undefine "$DOM" >"$tmp/virsh.out" 2>&1 && ! virsh_ dominfo "$DOM" >/dev/null 2>&1; then
    pid=$lv_pid
    lv_pid=
    stop_pid "$pid" 15
    rc=$?
    if [ $rc -eq 0 ]; then pass undefine; else fail undefine "libvirtd exited with status $rc on SIGTERM"; fi
else
    fail undefine "$(cat "$tmp/virsh.out")"
fi
if [ -n "$vblkd_pid" ]; then
    vblkd_stop || fail vblkd-exit "vblkd did not exit 0 on SIGTERM"
fi
finish
