#!/usr/bin/env python3
"""Write the seed corpora of the fuzz targets (tests/fuzz/corpus/{virtq,vhost_user}/).

Layouts are described at the top of fuzz_virtq.c and fuzz_vhost_user.c.  Run again after
changing them; the files are small and checked in.
"""
import os
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
NEXT, WRITE, INDIRECT = 1, 2, 4
T_IN, T_OUT, T_FLUSH, T_GET_ID, T_DISCARD, T_WRITE_ZEROES = 0, 1, 4, 8, 11, 13


# ---- virtq ----

class Mem:
    def __init__(self, size=0x3000):
        self.b = bytearray(size)

    def put(self, off, data):
        if off + len(data) > len(self.b):
            self.b.extend(bytes(off + len(data) - len(self.b)))
        self.b[off:off + len(data)] = data

    def desc(self, i, addr, ln, flags, nxt=0, base=0x0):
        self.put(base + 16 * i, struct.pack('<QIHH', addr, ln, flags, nxt))

    def avail(self, heads, idx=None, used_event=0, num=16):
        self.put(0x1000, struct.pack('<HH', 0, len(heads) if idx is None else idx))
        for k, h in enumerate(heads):
            self.put(0x1004 + 2 * k, struct.pack('<H', h))
        self.put(0x1004 + 2 * num, struct.pack('<H', used_event))

    def hdr(self, off, typ, sector):
        self.put(off, struct.pack('<IIQ', typ, 0, sector))


def params(num_log2=4, flags=0x7b, last_avail=0, rounds=1, disk_4k=255, lim=0, mode=0):
    return struct.pack('<BBHBHB', num_log2, flags, last_avail, (rounds - 1) | mode, disk_4k - 1,
                       lim)


def virtq_seeds():
    s = {}
    m = Mem()  # IN: hdr / 512 data / status
    m.hdr(0x2000, T_IN, 8)
    m.desc(0, 0x2000, 16, NEXT, 1)
    m.desc(1, 0x2100, 512, NEXT | WRITE, 2)
    m.desc(2, 0x2400, 1, WRITE)
    m.avail([0])
    s['in'] = params() + bytes(m.b)

    m = Mem()  # OUT, FLUSH, GET_ID on three heads
    m.hdr(0x2000, T_OUT, 0)
    m.desc(0, 0x2000, 16, NEXT, 1)
    m.desc(1, 0x2100, 1024, NEXT, 2)
    m.desc(2, 0x2600, 1, WRITE)
    m.hdr(0x2700, T_FLUSH, 0)
    m.desc(3, 0x2700, 16, NEXT, 4)
    m.desc(4, 0x2710, 1, WRITE)
    m.hdr(0x2800, T_GET_ID, 0)
    m.desc(5, 0x2800, 16, NEXT, 6)
    m.desc(6, 0x2810, 20, NEXT | WRITE, 7)
    m.desc(7, 0x2830, 1, WRITE)
    m.avail([0, 3, 5])
    s['out-flush-getid'] = params() + bytes(m.b)

    m = Mem()  # indirect table
    m.hdr(0x2000, T_IN, 0)
    m.desc(0, 0x2a00, 48, INDIRECT)
    m.desc(0, 0x2000, 16, NEXT, 1, base=0x2a00)
    m.desc(1, 0x2100, 512, NEXT | WRITE, 2, base=0x2a00)
    m.desc(2, 0x2400, 1, WRITE, 0, base=0x2a00)
    m.avail([0])
    s['indirect'] = params() + bytes(m.b)

    m = Mem()  # discard and write-zeroes
    m.hdr(0x2000, T_DISCARD, 0)
    m.put(0x2010, struct.pack('<QII', 0, 8, 0))
    m.desc(0, 0x2000, 32, NEXT, 1)
    m.desc(1, 0x2020, 1, WRITE)
    m.hdr(0x2100, T_WRITE_ZEROES, 0)
    m.put(0x2110, struct.pack('<QII', 8, 8, 1))
    m.desc(2, 0x2100, 16, NEXT, 3)
    m.desc(3, 0x2110, 16, NEXT, 4)
    m.desc(4, 0x2120, 1, WRITE)
    m.avail([0, 2])
    s['discard-wz'] = params() + bytes(m.b)

    m = Mem(0x10000)  # data crossing into region 1, data+status in one descriptor
    m.hdr(0x2000, T_IN, 0)
    m.desc(0, 0x2000, 16, NEXT, 1)
    m.desc(1, 0xbf00, 513, WRITE)
    m.avail([0])
    s['region-split'] = params() + bytes(m.b)

    m = Mem()  # two rounds: the second adds a request by patching avail
    m.hdr(0x2000, T_FLUSH, 0)
    m.desc(0, 0x2000, 16, NEXT, 1)
    m.desc(1, 0x2010, 1, WRITE)
    m.hdr(0x2100, T_IN, 0)
    m.desc(2, 0x2100, 16, NEXT, 3)
    m.desc(3, 0x2200, 4096, NEXT | WRITE, 4)
    m.desc(4, 0x2000 + 0x1000 - 1, 1, WRITE)
    m.avail([0, 2], idx=1)
    patches = struct.pack('<HH', 0x1002, 2) + struct.pack('<HH', 0x1002, 3) + \
        struct.pack('<HH', 0x1008, 0)
    s['two-rounds'] = params(rounds=3) + bytes(m.b) + bytes(0x10000 - len(m.b)) + patches

    m = Mem()  # avail index near the wrap
    m.hdr(0x2000, T_FLUSH, 0)
    m.desc(0, 0x2000, 16, NEXT, 1)
    m.desc(1, 0x2010, 1, WRITE)
    m.put(0x1000, struct.pack('<HH', 0, 1))
    m.put(0x1004 + 2 * 15, struct.pack('<H', 0))
    s['wrap'] = params(last_avail=65535) + bytes(m.b)

    # packed rings (p[4] bit 6): descriptors are addr, len, id, flags; AVAIL (bit 7) set and
    # USED (bit 15) clear make one available on the first lap (wrap counter 1, base 0x8000)
    av = 0x80
    m = Mem()  # IN chain of three, then FLUSH, on a packed ring
    m.hdr(0x2000, T_IN, 8)
    m.put(0x00, struct.pack('<QIHH', 0x2000, 16, 5, av | NEXT))
    m.put(0x10, struct.pack('<QIHH', 0x2100, 512, 5, av | NEXT | WRITE))
    m.put(0x20, struct.pack('<QIHH', 0x2400, 1, 5, av | WRITE))
    m.hdr(0x2500, T_FLUSH, 0)
    m.put(0x30, struct.pack('<QIHH', 0x2500, 16, 2, av | NEXT))
    m.put(0x40, struct.pack('<QIHH', 0x2510, 1, 2, av | WRITE))
    m.put(0x1000, struct.pack('<HH', 0, 0))  # driver event: ENABLE
    s['packed-chain'] = params(last_avail=0x8000, mode=0x40) + bytes(m.b)

    m = Mem()  # packed indirect, wrapping a 16-entry ring: starts at position 15
    m.hdr(0x2000, T_IN, 0)
    m.put(15 * 16, struct.pack('<QIHH', 0x2a00, 48, 3, av | INDIRECT))
    m.put(0x2a00, struct.pack('<QIHH', 0x2000, 16, 0, 0))
    m.put(0x2a10, struct.pack('<QIHH', 0x2100, 512, 0, WRITE))
    m.put(0x2a20, struct.pack('<QIHH', 0x2400, 1, 0, WRITE))
    m.put(0x1000, struct.pack('<HH', 0x8000 | 1, 2))  # driver event: DESC at 1, wrap 1
    s['packed-indirect'] = params(last_avail=0x8000 | 15, mode=0x40) + bytes(m.b)
    return s


# ---- vhost-user ----

def msg(req, payload=b'', flags=1):
    return struct.pack('<III', req, flags, len(payload)) + payload


def rec(data, flags=0):
    return struct.pack('<BH', flags, len(data)) + data


def memwrite(off, data):
    assert off % 16 == 0
    return rec(struct.pack('<H', off // 16) + data, flags=8)


UVA = 0x7e0000000000
F_VERSION_1, F_EVENT_IDX, F_INDIRECT, F_PROTO = 32, 29, 28, 30


def vhost_seeds():
    s = {}
    s['handshake'] = b''.join([
        rec(msg(1)), rec(msg(15)),
        rec(msg(2, struct.pack('<Q', 1 << F_VERSION_1 | 1 << F_PROTO))),
        rec(msg(16, struct.pack('<Q', 1 << 0 | 1 << 3 | 1 << 9 | 1 << 15))),
        rec(msg(17)), rec(msg(36)), rec(msg(3)),
        rec(msg(24, struct.pack('<III', 0, 60, 0) + bytes(60))),
        rec(msg(25, struct.pack('<III', 32, 1, 0) + b'\x00')),
        rec(msg(3, flags=1 | 8)),
    ])
    ring = b''.join([
        memwrite(0x0, struct.pack('<QIHH', 0x10000, 16, NEXT, 1) +
                 struct.pack('<QIHH', 0x10100, 512, NEXT | WRITE, 2) +
                 struct.pack('<QIHH', 0x10400, 1, WRITE, 0)),
        memwrite(0x1000, struct.pack('<HHH', 0, 1, 0)),
        memwrite(0x10000, struct.pack('<IIQ', T_IN, 0, 0)),
    ])
    setup = b''.join([
        rec(msg(2, struct.pack('<Q', 1 << F_VERSION_1 | 1 << F_EVENT_IDX | 1 << F_INDIRECT))),
        rec(msg(5, struct.pack('<II', 1, 0) + struct.pack('<QQQQ', 0, 2 << 20, UVA, 0)), flags=1),
        rec(msg(8, struct.pack('<II', 0, 16))),
        rec(msg(10, struct.pack('<II', 0, 0))),
        rec(msg(9, struct.pack('<IIQQQQ', 0, 0, UVA, UVA + 0x2000, UVA + 0x1000, 0))),
        rec(msg(13, struct.pack('<Q', 0)), flags=2),
        rec(msg(14, struct.pack('<Q', 0)), flags=2),
        rec(msg(12, struct.pack('<Q', 0)), flags=2),
    ])
    s['ring-start'] = ring + setup + rec(msg(11, struct.pack('<II', 0, 0)))
    s['ring-restart'] = ring + setup + b''.join([
        rec(msg(18, struct.pack('<II', 0, 0))),
        rec(msg(18, struct.pack('<II', 0, 1))),
        rec(msg(9, struct.pack('<IIQQQQ', 0, 0, UVA, UVA + 0x2000, UVA + 0x1000, 0))),
        rec(msg(5, struct.pack('<II', 1, 0) + struct.pack('<QQQQ', 0, 2 << 20, UVA, 0)), flags=1),
        rec(msg(11, struct.pack('<II', 0, 0))),
        rec(msg(4)),
    ])
    reg = struct.pack('<Q', 0) + struct.pack('<QQQQ', 0, 1 << 20, UVA, 0)
    reg2 = struct.pack('<Q', 0) + struct.pack('<QQQQ', 1 << 20, 1 << 20, UVA + (1 << 20), 1 << 20)
    s['mem-slots'] = b''.join([
        rec(msg(16, struct.pack('<Q', 1 << 15 | 1 << 3))),
        rec(msg(37, reg), flags=1), rec(msg(37, reg2), flags=1),
        rec(msg(38, reg2)), rec(msg(38, reg, flags=1 | 8)),
        rec(msg(5, struct.pack('<II', 2, 0) + struct.pack('<QQQQ', 0, 1 << 20, UVA, 0) +
                struct.pack('<QQQQ', 1 << 20, 1 << 20, UVA + (1 << 20), 1 << 20)), flags=1 | 16),
    ])
    s['split'] = rec(msg(1)[:5]) + rec(msg(1)[5:]) + rec(msg(1) + msg(17) + msg(36)[:7])
    return s


def main():
    for name, seeds in (('virtq', virtq_seeds()), ('vhost_user', vhost_seeds())):
        d = os.path.join(HERE, 'corpus', name)
        os.makedirs(d, exist_ok=True)
        for k, v in seeds.items():
            with open(os.path.join(d, k), 'wb') as f:
                f.write(v)
    return 0


if __name__ == '__main__':
    sys.exit(main())
