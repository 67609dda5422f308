"""vu.py - a minimal vhost-user front-end for the integration tests (standard library only).

Shared by hostile.py and isolation.py: message framing, a connection with a timeout on every
operation, memfd guest memory and a split virtqueue the test drives by hand.  Wire format from
QEMU docs/interop/vhost-user.rst and the virtio spec (little endian throughout).
"""
import errno
import mmap
import os
import select
import socket
import struct
import time

# header flags
VERSION = 0x1
REPLY = 0x4
NEED_REPLY = 0x8

# front-end requests
GET_FEATURES = 1
SET_FEATURES = 2
SET_OWNER = 3
SET_MEM_TABLE = 5
SET_VRING_NUM = 8
SET_VRING_ADDR = 9
SET_VRING_BASE = 10
GET_VRING_BASE = 11
SET_VRING_KICK = 12
SET_VRING_CALL = 13
SET_VRING_ERR = 14
GET_PROTOCOL_FEATURES = 15
SET_PROTOCOL_FEATURES = 16
SET_VRING_ENABLE = 18
ADD_MEM_REG = 37

# feature bits
F_PROTOCOL_FEATURES = 1 << 30
F_VERSION_1 = 1 << 32
F_RING_PACKED = 1 << 34
PF_MQ = 1 << 0
PF_REPLY_ACK = 1 << 3
PF_CONFIGURE_MEM_SLOTS = 1 << 15

# virtio
VRING_DESC_F_NEXT = 1
VRING_DESC_F_WRITE = 2
BLK_T_IN = 0
BLK_T_GET_ID = 8

# where the tests pretend guest memory lives in the front-end's address space
UVA_BASE = 0x7F0000000000


def msg(req, payload=b"", flags=VERSION, size=None):
    return struct.pack("<III", req, flags, len(payload) if size is None else size) + payload


def u64(v):
    return struct.pack("<Q", v)


def state(index, num):
    return struct.pack("<II", index, num)


def region(gpa, size, uva, mmap_offset=0):
    return struct.pack("<QQQQ", gpa, size, uva, mmap_offset)


def mem_table(*regions):
    return struct.pack("<II", len(regions), 0) + b"".join(regions)


def mem_reg(reg):
    """ADD_MEM_REG payload: u64 padding + one region."""
    return u64(0) + reg


def vring_addr(index, desc_uva, used_uva, avail_uva, flags=0):
    return struct.pack("<IIQQQQ", index, flags, desc_uva, used_uva, avail_uva, 0)


def rights(fds):
    if not fds:
        return []
    return [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i" * len(fds), *fds))]


class Closed(Exception):
    """The back-end closed the connection."""


class NoAnswer(Exception):
    """The back-end did not answer in time."""


class Conn:
    """One front-end connection; every operation is bounded by a timeout."""

    def __init__(self, path, timeout=3.0):
        self.timeout = timeout
        self.reply_ack = False
        self.closed = False
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.settimeout(timeout)
        self.s.connect(path)

    def close(self):
        if self.s is not None:
            self.s.close()
            self.s = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def send(self, data, fds=()):
        """Send raw bytes (fds ride on the first byte); raises Closed."""
        try:
            if fds:
                n = self.s.sendmsg([data], rights(fds))
                if n < len(data):
                    self.s.sendall(data[n:])
            else:
                self.s.sendall(data)
        except (BrokenPipeError, ConnectionResetError) as e:
            self.closed = True
            raise Closed(str(e)) from None
        except (socket.timeout, TimeoutError):
            raise NoAnswer("send timed out (the back-end does not read)") from None

    def _recv_exact(self, n, deadline):
        buf = b""
        while len(buf) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise NoAnswer("no answer")
            self.s.settimeout(left)
            try:
                b = self.s.recv(n - len(buf))
            except (socket.timeout, TimeoutError):
                raise NoAnswer("no answer") from None
            except ConnectionResetError:
                b = b""
            if not b:
                self.closed = True
                raise Closed("EOF")
            buf += b
        return buf

    def recv_msg(self, timeout=None):
        """One message from the back-end: (request, flags, payload); raises Closed/NoAnswer."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        try:
            req, flags, size = struct.unpack("<III", self._recv_exact(12, deadline))
            return req, flags, self._recv_exact(size, deadline)
        finally:
            if self.s is not None:
                self.s.settimeout(self.timeout)

    def wait_reply(self, req, timeout=None):
        """Payload of the next reply to req (replies to other requests are skipped)."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            r, flags, payload = self.recv_msg(max(0.0, deadline - time.monotonic()))
            if r == req and flags & REPLY:
                return payload

    def get_u64(self, req, payload=b"", timeout=None):
        self.send(msg(req, payload))
        p = self.wait_reply(req, timeout)
        if len(p) < 8:
            raise NoAnswer("short %d-byte reply to request %d" % (len(p), req))
        return struct.unpack_from("<Q", p)[0]

    def call(self, req, payload=b"", fds=(), timeout=None):
        """Send a request that has no reply of its own and wait until the back-end took it:
        REPLY_ACK when negotiated, else a GET_FEATURES round trip.  Returns the ack value (0 =
        accepted); raises Closed when the back-end closed the connection instead."""
        if self.reply_ack:
            self.send(msg(req, payload, VERSION | NEED_REPLY), fds)
            return self.get_ack(req, timeout)
        self.send(msg(req, payload), fds)
        self.get_u64(GET_FEATURES, timeout=timeout)
        return 0

    def get_ack(self, req, timeout=None):
        p = self.wait_reply(req, timeout)
        return struct.unpack_from("<Q", p)[0] if len(p) >= 8 else -1

    def handshake(self, protocol=PF_REPLY_ACK | PF_MQ | PF_CONFIGURE_MEM_SLOTS):
        """What QEMU does first: features, owner, protocol features (REPLY_ACK if offered)."""
        f = self.get_u64(GET_FEATURES)
        self.send(msg(SET_OWNER))
        self.send(msg(SET_FEATURES, u64(f & (F_VERSION_1 | F_PROTOCOL_FEATURES))))
        pf = 0
        if f & F_PROTOCOL_FEATURES:
            pf = self.get_u64(GET_PROTOCOL_FEATURES) & protocol
            self.send(msg(SET_PROTOCOL_FEATURES, u64(pf)))
        self.get_u64(GET_FEATURES)  # the back-end has taken all of the above
        self.reply_ack = bool(pf & PF_REPLY_ACK)
        return f, pf

    def closes(self, timeout=2.0):
        """After an attack: True if the back-end closes the connection (EOF) within timeout.
        A GET_FEATURES probe tells "still open" (its reply) from "slow" quickly."""
        try:
            self.send(msg(GET_FEATURES))
            self.wait_reply(GET_FEATURES, timeout)
            return False
        except Closed:
            return True
        except NoAnswer:
            return False

    def wait_eof(self, timeout):
        """True if the back-end closes the connection within timeout (sends nothing)."""
        deadline = time.monotonic() + timeout
        try:
            while True:
                self.recv_msg(max(0.0, deadline - time.monotonic()))
        except Closed:
            return True
        except NoAnswer:
            return False


def closed_after(sock_path, data, fds=()):
    """Send data on a new connection; True if the daemon closes it (EOF) within 5 s."""
    with Conn(sock_path, timeout=5) as c:
        try:
            c.send(data, fds)
        except Closed:
            return True
        except NoAnswer:
            return False
        return c.wait_eof(5)


def get_features_ok(sock_path):
    try:
        with Conn(sock_path, timeout=5) as c:
            c.get_u64(GET_FEATURES)
        return True
    except (OSError, Closed, NoAnswer):
        return False


class GuestMem:
    """Guest memory in a memfd: a region at guest physical address gpa, seen by the front-end
    at uva, taken from the file at mmap_offset.  file_size (default: offset + size) may be
    larger; sparse, so terabytes cost nothing."""

    def __init__(self, size, gpa=0, uva=UVA_BASE, mmap_offset=0, file_size=None, name="vu-guest"):
        self.size, self.gpa, self.uva, self.mmap_offset = size, gpa, uva, mmap_offset
        self.fd = os.memfd_create(name)
        os.ftruncate(self.fd, mmap_offset + size if file_size is None else file_size)
        self.map = None
        if mmap_offset % mmap.ALLOCATIONGRANULARITY == 0:
            self.map = mmap.mmap(self.fd, size, mmap.MAP_SHARED, offset=mmap_offset)

    def region(self):
        return region(self.gpa, self.size, self.uva, self.mmap_offset)

    def to_uva(self, gpa):
        return self.uva + (gpa - self.gpa)

    def close(self):
        if self.map is not None:
            try:
                self.map.close()
            except BufferError:
                pass
            self.map = None
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    # guest-physical accessors
    def put(self, gpa, fmt, *vals):
        struct.pack_into(fmt, self.map, gpa - self.gpa, *vals)

    def get(self, gpa, fmt):
        return struct.unpack_from(fmt, self.map, gpa - self.gpa)

    def bytes_at(self, gpa, n):
        off = gpa - self.gpa
        return bytes(self.map[off:off + n])


def setup_vring(conn, i, num, base, desc_uva, used_uva, avail_uva, kick, call, err):
    """SET_VRING_NUM/BASE/ADDR/ERR/CALL/KICK/ENABLE for queue i, each acknowledged (raises
    Closed).  For a packed ring, used/avail are its device/driver event structures."""
    conn.call(SET_VRING_NUM, state(i, num))
    conn.call(SET_VRING_BASE, state(i, base))
    conn.call(SET_VRING_ADDR, vring_addr(i, desc_uva, used_uva, avail_uva))
    if err is not None:
        conn.call(SET_VRING_ERR, u64(i), fds=(err,))
    if call is not None:
        conn.call(SET_VRING_CALL, u64(i), fds=(call,))
    if kick is not None:
        conn.call(SET_VRING_KICK, u64(i), fds=(kick,))
    conn.call(SET_VRING_ENABLE, state(i, 1))


class Ring:
    """A split virtqueue in GuestMem driven by the test: descriptor table at ring_gpa, avail
    ring at +0x1000, used ring at +0x2000 (num <= 64), request buffers at data_gpa (one 4 KiB
    page per request slot: 16-byte header, data at +0x100, status byte at +0xf00)."""

    def __init__(self, mem, index, num, ring_gpa, data_gpa):
        assert num <= 64
        self.mem, self.index, self.num = mem, index, num
        self.desc, self.avail, self.used = ring_gpa, ring_gpa + 0x1000, ring_gpa + 0x2000
        self.data = data_gpa
        self.avail_idx = 0
        self.slots = num // 3

    def setup(self, conn, kick=None, call=None, err=None, base=0):
        """SET_VRING_NUM/BASE/ADDR/ERR/CALL/KICK/ENABLE, each acknowledged (raises Closed)."""
        i = self.index
        self.avail_idx = base
        if self.mem.map is not None:  # else the memory cannot be mapped here: left as zeroes
            self.mem.put(self.avail, "<HH", 0, base)
            self.mem.put(self.used, "<HH", 0, base)
        setup_vring(conn, i, self.num, base, self.mem.to_uva(self.desc), self.mem.to_uva(self.used),
                    self.mem.to_uva(self.avail), kick, call, err)

    def used_idx(self):
        return self.mem.get(self.used + 2, "<H")[0]

    def status(self, slot):
        return self.mem.get(self.data + slot * 0x1000 + 0xF00, "<B")[0]

    def post(self, n, rtype=BLK_T_IN, length=512):
        """Make n requests available (slots 0..n-1: their previous use must be complete)."""
        assert n <= self.slots
        for slot in range(n):
            buf = self.data + slot * 0x1000
            self.mem.put(buf, "<IIQ", rtype, 0, slot * 8)
            self.mem.put(buf + 0xF00, "<B", 0xFF)
            d = 3 * slot
            self.mem.put(self.desc + 16 * d, "<QIHH", buf, 16, VRING_DESC_F_NEXT, d + 1)
            self.mem.put(self.desc + 16 * (d + 1), "<QIHH", buf + 0x100, length,
                         VRING_DESC_F_WRITE | VRING_DESC_F_NEXT, d + 2)
            self.mem.put(self.desc + 16 * (d + 2), "<QIHH", buf + 0xF00, 1, VRING_DESC_F_WRITE, 0)
            self.mem.put(self.avail + 4 + 2 * ((self.avail_idx + slot) % self.num), "<H", d)
        self.avail_idx = (self.avail_idx + n) & 0xFFFF
        self.mem.put(self.avail + 2, "<H", self.avail_idx)  # after the entries (x86: ordered)

    def set_avail_idx(self, idx):
        self.avail_idx = idx & 0xFFFF
        self.mem.put(self.avail + 2, "<H", self.avail_idx)

    def wait_used(self, target, timeout):
        """True once used->idx reaches target (mod 2^16) within timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.used_idx() == target & 0xFFFF:
                return True
            time.sleep(0.001)
        return self.used_idx() == target & 0xFFFF


class PackedRing:
    """A packed virtqueue in GuestMem driven by the test (VIRTIO_F_RING_PACKED negotiated):
    descriptor ring at ring_gpa, driver event structure at +0x1000, device event structure at
    +0x2000; request buffers as for Ring.  Both wrap counters start at 1 (vring base 0x80008000).
    Descriptors are addr, len, id, flags; AVAIL (bit 7) equal to the wrap counter and USED
    (bit 15) not make one available."""

    AVAIL, USED = 1 << 7, 1 << 15

    def __init__(self, mem, index, num, ring_gpa, data_gpa):
        self.mem, self.index, self.num = mem, index, num
        self.desc, self.driver, self.device = ring_gpa, ring_gpa + 0x1000, ring_gpa + 0x2000
        self.data = data_gpa
        self.pos, self.wrap = 0, 1

    def setup(self, conn, kick=None, call=None, err=None, base=0x80008000):
        i = self.index
        setup_vring(conn, i, self.num, base, self.mem.to_uva(self.desc), self.mem.to_uva(self.device),
                    self.mem.to_uva(self.driver), kick, call, err)

    def put_desc(self, addr, length, buf_id, flags):
        """The next descriptor, made available now (flags get this lap's AVAIL/USED bits)."""
        bits = self.AVAIL if self.wrap else self.USED
        self.mem.put(self.desc + 16 * self.pos, "<QIHH", addr, length, buf_id, flags | bits)
        self.pos += 1
        if self.pos == self.num:
            self.pos, self.wrap = 0, 1 - self.wrap

    def post_read(self, slot, buf_id=None, length=512):
        """A 3-descriptor read request in slot's buffers, with buffer id slot (or buf_id)."""
        buf = self.data + slot * 0x1000
        self.mem.put(buf, "<IIQ", BLK_T_IN, 0, slot * 8)
        self.mem.put(buf + 0xF00, "<B", 0xFF)
        first = (self.pos, self.wrap)
        bid = slot if buf_id is None else buf_id
        # the first descriptor last: write the rest, then it (x86 stores are ordered)
        self.pos = (self.pos + 1) % self.num
        if self.pos == 0:
            self.wrap = 1 - self.wrap
        self.put_desc(buf + 0x100, length, bid, VRING_DESC_F_WRITE | VRING_DESC_F_NEXT)
        self.put_desc(buf + 0xF00, 1, bid, VRING_DESC_F_WRITE)
        bits = self.AVAIL if first[1] else self.USED
        self.mem.put(self.desc + 16 * first[0], "<QIHH", buf, 16, bid, VRING_DESC_F_NEXT | bits)

    def used(self, pos, wrap):
        """(id, len) if the device wrote a used element at pos on the lap of wrap, else None."""
        _, length, buf_id, flags = self.mem.get(self.desc + 16 * pos, "<QIHH")
        want = (self.AVAIL | self.USED) if wrap else 0
        return (buf_id, length) if flags & (self.AVAIL | self.USED) == want else None

    def status(self, slot):
        return self.mem.get(self.data + slot * 0x1000 + 0xF00, "<B")[0]


def drain_eventfd(fd):
    """Read an eventfd's counter without blocking (lets a back-end blocked writing it go on)."""
    try:
        r, _, _ = select.select([fd], [], [], 0)
        if r:
            os.read(fd, 8)
    except OSError as e:
        if e.errno not in (errno.EAGAIN, errno.EBADF):
            raise
