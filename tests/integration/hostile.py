#!/usr/bin/env python3
"""hostile.py SOCKET - a misbehaving vhost-user front-end.

Sends one malformed message per connection and checks that vblkd closes that connection (and
only that one).  Each case prints "PASS hostile-<name>" or "FAIL hostile-<name>: why".  Exit 1
if any case failed.  Standard library only.
"""
import os
import socket
import struct
import sys

import select
import time

import vu
from vu import closed_after, get_features_ok, msg


def packed_case(path, name, attack, expect):
    """A packed ring (VIRTIO_F_RING_PACKED) that attack(ring) fills; expect is "ok" (the read
    completes), "broken" (the queue breaks: the error eventfd fires, the connection stays) or
    "closed" (the ring does not start: the connection is closed)."""
    mem = vu.GuestMem(1 << 20, name="hostile-packed")
    kick, call, err = os.eventfd(0), os.eventfd(0), os.eventfd(0)
    ok = False
    try:
        with vu.Conn(path, timeout=5) as c:
            f, _ = c.handshake()
            if not f & vu.F_RING_PACKED:
                print("FAIL hostile-packed-" + name + ": VIRTIO_F_RING_PACKED not offered")
                return False
            c.send(msg(vu.SET_FEATURES, vu.u64(f & (vu.F_VERSION_1 | vu.F_PROTOCOL_FEATURES | vu.F_RING_PACKED))))
            c.call(vu.SET_MEM_TABLE, vu.mem_table(mem.region()), fds=(mem.fd,))
            ring = vu.PackedRing(mem, 0, 16, 0x0, 0x10000)
            base = attack(ring)
            try:
                ring.setup(c, kick=kick, call=call, err=err, base=base)
            except vu.Closed:
                ok = expect == "closed"
            else:
                if expect == "closed":
                    ok = c.closes()
                else:
                    os.eventfd_write(kick, 1)
                    deadline = time.monotonic() + 3
                    while time.monotonic() < deadline:
                        if expect == "ok" and ring.used(0, 1) and ring.status(0) == 0:
                            ok = True
                            break
                        if expect == "broken" and select.select([err], [], [], 0.01)[0]:
                            ok = not c.closes()  # only the queue breaks
                            break
                        time.sleep(0.01)
    finally:
        for fd in (kick, call, err):
            os.close(fd)
        mem.close()
    print(("PASS" if ok else "FAIL") + " hostile-packed-" + name + ("" if ok else ": expected " + expect))
    return ok


def packed_cases(path):
    def good(r):
        r.post_read(0)
        return 0x80008000

    def id_out_of_range(r):
        r.post_read(0, buf_id=16)
        return 0x80008000

    def endless_chain(r):  # every descriptor says NEXT: longer than the ring
        for _ in range(16):
            r.put_desc(r.data, 16, 0, vu.VRING_DESC_F_NEXT)
        return 0x80008000

    def indirect_not_negotiated(r):
        r.put_desc(r.data, 48, 0, 4)
        return 0x80008000

    cases = [("read", good, "ok"), ("id-out-of-range", id_out_of_range, "broken"),
             ("chain-longer-than-ring", endless_chain, "broken"),
             ("indirect-not-negotiated", indirect_not_negotiated, "broken"),
             ("base-beyond-ring", lambda r: 0x80008000 | 16, "closed"),
             ("base-used-ahead-of-avail", lambda r: 0x80038000 | 1, "closed")]
    return sum(not packed_case(path, n, a, e) for n, a, e in cases)


def main():
    path = sys.argv[1]
    u64 = lambda v: struct.pack("<Q", v)
    state = lambda i, n: struct.pack("<II", i, n)
    r, w = os.pipe()
    cases = {
        "unknown-request": msg(999),
        "bad-version": msg(1, flags=0x2),
        "oversized-payload": msg(2, size=1 << 20),
        "set-features-short": msg(2, b"\x00\x00\x00\x00"),
        "set-features-unoffered": msg(2, u64(1 << 63)),
        "vring-num-not-pow2": msg(8, state(0, 100)),
        "vring-num-zero": msg(8, state(0, 0)),
        "vring-num-too-big": msg(8, state(0, 65536)),
        "vring-index-out-of-range": msg(8, state(200, 128)),
        "vring-kick-index-out-of-range": msg(12, u64(77 | 0x100)),
        "vring-kick-reserved-bits": msg(12, u64(1 << 40)),
        "mem-table-too-many-regions": msg(5, struct.pack("<II", 9, 0) + bytes(32 * 9)),
        "mem-table-no-regions": msg(5, struct.pack("<II", 0, 0)),
        "mem-table-missing-fds": msg(5, struct.pack("<II", 1, 0) + struct.pack("<QQQQ", 0, 4096, 0, 0)),
        "get-config-bad-size": msg(24, struct.pack("<III", 0, 300, 0) + bytes(256)),
        "set-config-readonly-field": msg(25, struct.pack("<III", 0, 8, 0) + bytes(8)),
        "log-base-unsupported": msg(6, u64(0)),
    }
    failed = 0
    for name, data in cases.items():
        ok = closed_after(path, data)
        print(("PASS" if ok else "FAIL") + " hostile-" + name + ("" if ok else ": connection stayed open"))
        failed += not ok
    # a region bigger than the file behind it would SIGBUS on access: refused
    mfd = os.memfd_create("hostile")
    os.ftruncate(mfd, 4096)
    region = struct.pack("<QQQQ", 0, 1 << 30, 0x7f0000000000, 0)
    ok = closed_after(path, msg(5, struct.pack("<II", 1, 0) + region), fds=(mfd,))
    print(("PASS" if ok else "FAIL") + " hostile-mem-region-beyond-fd")
    failed += not ok
    # rings outside guest memory: the ring cannot start, the connection is closed
    os.ftruncate(mfd, 1 << 20)
    region = struct.pack("<QQQQ", 0, 1 << 20, 0x7f0000000000, 0)
    seq = (msg(5, struct.pack("<II", 1, 0) + region) + msg(8, state(0, 128))
           + msg(9, struct.pack("<IIQQQQ", 0, 0, 0x7f0000100000, 0x7f0000200000, 0x7f0000300000, 0)))
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(path)
    s.sendmsg([seq[:12 + 8 + 32]], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", mfd))])
    s.sendall(seq[12 + 8 + 32:])
    efd = os.eventfd(0) if hasattr(os, "eventfd") else os.pipe()[0]
    s.sendmsg([msg(12, u64(0))], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", efd))])
    try:
        ok = s.recv(64) == b""
    except (socket.timeout, TimeoutError):
        ok = False
    except ConnectionResetError:
        ok = True
    s.close()
    print(("PASS" if ok else "FAIL") + " hostile-rings-outside-memory")
    failed += not ok
    # a running ring whose memory the front-end then takes away (ftruncate): vblkd must survive
    mfd2 = os.memfd_create("hostile2")
    os.ftruncate(mfd2, 1 << 20)
    base = 0x7f0000000000
    region = struct.pack("<QQQQ", 0, 1 << 20, base, 0)
    kick = os.eventfd(0)
    call = os.eventfd(0)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(path)
    rights = lambda fd: [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", fd))]
    s.sendmsg([msg(5, struct.pack("<II", 1, 0) + region)], rights(mfd2))
    s.sendall(msg(8, state(0, 8)) + msg(10, state(0, 0))
              + msg(9, struct.pack("<IIQQQQ", 0, 0, base, base + 0x2000, base + 0x1000, 0)))
    s.sendmsg([msg(13, u64(0))], rights(call))
    s.sendmsg([msg(12, u64(0))], rights(kick))
    import time
    time.sleep(0.3)
    os.ftruncate(mfd2, 0)
    os.eventfd_write(kick, 1)
    time.sleep(0.5)
    s.close()
    time.sleep(0.3)
    ok = get_features_ok(path)
    print(("PASS" if ok else "FAIL") + " hostile-memory-shrunk-under-running-ring")
    failed += not ok
    ok = closed_after(path, msg(1), fds=(r,))
    print(("PASS" if ok else "FAIL") + " hostile-unexpected-fd")
    failed += not ok
    failed += packed_cases(path)
    ok = get_features_ok(path)
    print(("PASS" if ok else "FAIL") + " hostile-still-serving" + ("" if ok else ": no GET_FEATURES reply"))
    failed += not ok
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
