#!/usr/bin/env python3
"""isolation.py [--log DAEMON_LOG] SOCK_A SOCK_B SOCK_C DAEMON_PID VBLK_BENCH

One hostile front-end must never stall or kill another export.  A test front-end attacks export
A of one vblkd while export B of the same daemon runs I/O (vblk-bench --rw=randrw --wait in the
background, one run per case) and export C takes a brand-new front-end during the attack.  After
every case:

  * B's run exited 0 with errors == 0, iops > 0 and lat_ns.max < 1.5 s (the stall bound);
  * the new front-end on C (vblk-bench --ios=64 --rw=randread) succeeded during the attack;
  * the daemon (DAEMON_PID) is still running;
  * A accepts a well-behaved front-end once the attacker has gone;
  * and the case's own assertions about how the daemon treated the attacker.

Expected exports: A = null://1G with num-queues=2, B = a file with aio=io_uring, C = null://.
Prints "PASS isolation-<name>" or "FAIL isolation-<name>: why" per case (with the daemon log
lines of a failed case when --log is given); exit 1 if any case failed.  Every socket operation
has a timeout and every loop is bounded; every process started is waited for or killed by PID.
Standard library only.
"""
import argparse
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
import traceback

import vu
from vu import (ADD_MEM_REG, BLK_T_GET_ID, GET_FEATURES, GET_VRING_BASE, PF_CONFIGURE_MEM_SLOTS,
                SET_MEM_TABLE, SET_OWNER, SET_VRING_CALL, SET_VRING_ENABLE, SET_VRING_ERR,
                SET_VRING_KICK, UVA_BASE, Closed, Conn, GuestMem, NoAnswer, Ring, mem_reg,
                mem_table, msg, region, state, u64)

STALL_NS = 1.5e9            # B's worst request latency must stay below this
EVENTFD_MAX = 0xFFFFFFFFFFFFFFFE  # an eventfd counter this high makes any write of 1 block
GiB = 1 << 30
TiB = 1 << 40
MEMORY_FS = {"tmpfs", "ramfs", "hugetlbfs", "devtmpfs"}

PROCS = set()  # vblk-bench processes still running: killed by PID on the way out


class Failed(Exception):
    """A case's assertion failed and the rest of its attack makes no sense."""


# ---- processes ----

def run_bench(args, sock, extra, timeout):
    """Run vblk-bench to completion: (returncode or None on timeout, output)."""
    p = subprocess.Popen([args.bench, "--socket", sock] + extra, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT)
    PROCS.add(p)
    try:
        out, _ = p.communicate(timeout=timeout)
        return p.returncode, out.decode(errors="replace")
    except subprocess.TimeoutExpired:
        p.kill()
        out, _ = p.communicate()
        return None, out.decode(errors="replace")
    finally:
        PROCS.discard(p)


def tail(text, n=2):
    lines = [l.strip() for l in text.strip().splitlines() if l.strip()]
    return " / ".join(lines[-n:]) if lines else "(no output)"


def daemon_alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            st = f.read()
    except OSError:
        return False
    return st[st.rindex(")") + 2] not in "ZX"


def vm_size(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmSize in /proc/%d/status" % pid)


class BackgroundIO:
    """vblk-bench --rw=randrw --wait --json on export B for the duration of one case."""

    def __init__(self, args, runtime):
        self.args, self.runtime = args, runtime
        self.p = None
        self.problems = []
        deadline = time.monotonic() + 3
        while True:  # the previous case's front-end on B may still be leaving
            self.p = subprocess.Popen([args.bench, "--socket", args.sock_b, "--rw=randrw",
                                       "--runtime=%g" % runtime, "--json", "--wait"],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            PROCS.add(self.p)
            time.sleep(0.3)
            if self.p.poll() is None or self.p.returncode == 0 or time.monotonic() > deadline:
                return
            self.p.communicate()
            PROCS.discard(self.p)

    def finish(self):
        """Wait for the run; the list of what was wrong with it."""
        try:
            out, err = self.p.communicate(timeout=self.runtime + 15)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.communicate()
            return ["B: vblk-bench did not finish within %g s (killed)" % (self.runtime + 15)]
        finally:
            PROCS.discard(self.p)
        why = tail(err.decode(errors="replace"))
        try:
            r = json.loads(out.decode(errors="replace"))
        except ValueError:
            return ["B: vblk-bench exited %d without a JSON report: %s" % (self.p.returncode, why)]
        problems = []
        if self.p.returncode != 0:
            problems.append("B: vblk-bench exited %d (%s): %s" % (self.p.returncode, r.get("error"), why))
        if r.get("errors", 1) != 0:
            problems.append("B: %s I/O errors" % r.get("errors"))
        if not r.get("iops", 0) > 0:
            problems.append("B: no I/O done (iops %s)" % r.get("iops"))
        mx = r.get("lat_ns", {}).get("max")
        if mx is None or mx >= STALL_NS:
            problems.append("B: I/O stalled: worst latency %s ms (bound %d ms)"
                            % ("?" if mx is None else "%.0f" % (mx / 1e6), STALL_NS / 1e6))
        return problems


# ---- one case ----

class Ctx:
    """What an attack uses: the paths, fds and connections it opens (closed afterwards, in
    reverse order, so an 'unblock the daemon' step registered last runs first)."""

    def __init__(self, args):
        self.args = args
        self.pid = args.pid
        self.problems = []
        self.notes = []
        self.c_checked = False
        self._cleanups = []
        self._last = None

    def fail(self, why):
        self.problems.append(why)

    def note(self, what):
        self.notes.append(what)

    def defer(self, fn):
        self._cleanups.append(fn)

    def cleanup(self):
        while self._cleanups:
            fn = self._cleanups.pop()
            try:
                fn()
            except Exception as e:  # noqa: BLE001 - cleanup must go on
                self.note("cleanup: %r" % e)

    # resources
    def conn(self, handshake=True, timeout=3.0):
        """A new attacker connection to A (the previous one is closed first: A takes one
        front-end at a time, so a refused connection is retried while the old one goes)."""
        if self._last is not None:
            self._last.close()
        deadline = time.monotonic() + 3
        while True:
            c = Conn(self.args.sock_a, timeout=timeout)
            self.defer(c.close)
            try:
                if handshake:
                    c.handshake()
                break
            except Closed:
                c.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        self._last = c
        return c

    def fd(self, fd):
        self.defer(lambda: os.close(fd))
        return fd

    def eventfd(self, blocking=False, flags=0):
        return self.fd(os.eventfd(0, os.EFD_CLOEXEC | flags | (0 if blocking else os.EFD_NONBLOCK)))

    def pipe(self):
        r, w = os.pipe()
        self.fd(w)
        return self.fd(r)

    def mem(self, size, **kw):
        m = GuestMem(size, **kw)
        self.defer(m.close)
        return m

    def during(self, what=""):
        """A brand-new front-end on export C must work now, while A is under attack."""
        self.c_checked = True
        t0 = time.monotonic()
        rc, out = None, ""
        while time.monotonic() - t0 < 3:
            rc, out = run_bench(self.args, self.args.sock_c, ["--ios=64", "--rw=randread"],
                                max(0.5, 3 - (time.monotonic() - t0)))
            if rc == 0:
                return True
            time.sleep(0.1)
        self.fail("C: a new front-end failed during the attack%s (%s): %s"
                  % (" " + what if what else "", "no answer in 3 s" if rc is None else "exit %d" % rc,
                     tail(out)))
        return False


def a_accepts(args):
    """A well-behaved front-end on A (retried for a few seconds: the attacker's connection may
    still be being torn down).  None if fine, else why."""
    deadline = time.monotonic() + 5
    rc, out = None, ""
    while time.monotonic() < deadline:
        rc, out = run_bench(args, args.sock_a, ["--ios=64", "--rw=randread"],
                            max(1, deadline - time.monotonic()))
        if rc == 0:
            return None
        time.sleep(0.2)
    return "A: no well-behaved front-end accepted after the attack (%s): %s" % (
        "no answer" if rc is None else "exit %d" % rc, tail(out))


def log_size(path):
    try:
        return os.path.getsize(path) if path else 0
    except OSError:
        return 0


def log_since(path, off, n=20):
    if not path:
        return []
    try:
        with open(path, "rb") as f:
            f.seek(off)
            lines = f.read().decode(errors="replace").splitlines()
    except OSError:
        return []
    return lines[-n:]


def run_case(args, name, attack, runtime=2.0):
    ctx = Ctx(args)
    off = log_size(args.log)
    bio = BackgroundIO(args, runtime)
    try:
        if bio.p.poll() is not None:
            ctx.fail("B: the front-end on B stopped before the attack began")
        attack(ctx)
    except Failed as e:
        ctx.fail(str(e))
    except Closed as e:
        ctx.fail("A: the daemon closed the attacker's connection unexpectedly (%s)" % e)
    except NoAnswer as e:
        ctx.fail("A: the daemon did not answer the attacker in time (%s)" % e)
    except Exception:  # noqa: BLE001 - a broken case must not stop the others
        ctx.fail("test error: " + traceback.format_exc().strip().splitlines()[-1])
        traceback.print_exc(file=sys.stdout)
    finally:
        ctx.cleanup()
    if not ctx.c_checked:
        ctx.during("(after)")
    if not daemon_alive(args.pid):
        ctx.fail("the daemon (pid %d) is gone" % args.pid)
    else:
        why = a_accepts(args)
        if why:
            ctx.fail(why)
    ctx.problems += bio.finish()
    if ctx.problems:
        print("FAIL isolation-%s: %s" % (name, "; ".join(ctx.problems)), flush=True)
        for line in log_since(args.log, off):
            print("    | " + line)
    else:
        print("PASS isolation-%s%s" % (name, " (%s)" % "; ".join(ctx.notes) if ctx.notes else ""),
              flush=True)
    sys.stdout.flush()
    return not ctx.problems


# ---- helpers for attacks ----

def set_mem(ctx, conn, mem):
    ack = conn.call(SET_MEM_TABLE, mem_table(mem.region()), fds=(mem.fd,))
    if ack != 0:
        raise Failed("A: SET_MEM_TABLE of a plain memfd refused (ack %d)" % ack)


def expect_closed(ctx, conn, what, req, payload=b"", fds=(), during=False):
    """Send one message that must make the daemon close the connection (EOF within 2 s); with
    during, the new front-end on C is tried right after it."""
    try:
        conn.send(msg(req, payload), fds)
    except Closed:
        return True
    if during:
        ctx.during()
    if conn.closed or conn.closes(2.0):
        return True
    ctx.fail("%s: connection stayed open" % what)
    return False


def ring_on_a(ctx, conn, num=16, kick=None, call=None, err=None, mem=None):
    """Guest memory (1 MiB memfd), its table and ring 0 on A; the ring is started if kick is
    given."""
    if mem is None:
        mem = ctx.mem(1 << 20)
        set_mem(ctx, conn, mem)
    ring = Ring(mem, 0, num, 0x0, 0x10000)
    ring.setup(conn, kick=kick, call=call, err=err)
    return mem, ring


def io_round(ring, kick, n, timeout, rtype=vu.BLK_T_IN, length=512):
    """Post n requests, kick; None if they all completed OK within timeout, else why."""
    target = (ring.avail_idx + n) & 0xFFFF
    ring.post(n, rtype, length)
    os.eventfd_write(kick, 1)
    if not ring.wait_used(target, timeout):
        return "used idx %d, expected %d after %g s" % (ring.used_idx(), target, timeout)
    bad = [ring.status(s) for s in range(n) if ring.status(s) != 0]
    return "status %s" % bad if bad else None


def stays_responsive(ctx, conn, what):
    """GET_VRING_BASE needs A's I/O thread (it stops the ring): it must answer within 2 s."""
    try:
        conn.send(msg(GET_VRING_BASE, state(0, 0)))
        conn.wait_reply(GET_VRING_BASE, 2.0)
        return True
    except NoAnswer:
        ctx.fail("A: GET_VRING_BASE got no answer in 2 s: %s" % what)
    except Closed:
        ctx.note("the daemon closed the connection at GET_VRING_BASE")
        return True
    return False


# ---- the attacks ----

def kick_not_eventfd(ctx):
    for kind in ("pipe", "memfd"):
        conn = ctx.conn()
        ring_on_a(ctx, conn, call=ctx.eventfd())
        fd = ctx.pipe() if kind == "pipe" else ctx.fd(os.memfd_create("not-an-eventfd"))
        expect_closed(ctx, conn, "SET_VRING_KICK with a " + kind, SET_VRING_KICK, u64(0), (fd,),
                      during=kind == "pipe")


def call_not_eventfd(ctx):
    conn = ctx.conn()
    ring_on_a(ctx, conn, kick=ctx.eventfd(), call=ctx.eventfd())
    expect_closed(ctx, conn, "SET_VRING_CALL with a pipe", SET_VRING_CALL, u64(0), (ctx.pipe(),),
                  during=True)


def err_not_eventfd(ctx):
    conn = ctx.conn()
    ring_on_a(ctx, conn, kick=ctx.eventfd(), call=ctx.eventfd())
    expect_closed(ctx, conn, "SET_VRING_ERR with a pipe", SET_VRING_ERR, u64(0), (ctx.pipe(),),
                  during=True)


def kick_semaphore_eventfd(ctx):
    efd = ctx.eventfd(flags=os.EFD_SEMAPHORE)
    with open("/proc/self/fdinfo/%d" % efd) as f:
        if "eventfd-semaphore" not in f.read():
            ctx.note("skipped: this kernel does not show eventfd-semaphore in fdinfo")
            return
    conn = ctx.conn()
    ring_on_a(ctx, conn, call=ctx.eventfd())
    expect_closed(ctx, conn, "SET_VRING_KICK with an EFD_SEMAPHORE eventfd", SET_VRING_KICK,
                  u64(0), (efd,), during=True)


def call_fd_blocking_full(ctx):
    conn = ctx.conn()
    call = ctx.eventfd(blocking=True)
    os.eventfd_write(call, EVENTFD_MAX)
    kick = ctx.eventfd()
    _, ring = ring_on_a(ctx, conn, kick=kick, call=call)
    ctx.defer(lambda: vu.drain_eventfd(call))  # runs first: frees a daemon blocked writing it
    for rnd in range(1, 4):
        why = io_round(ring, kick, 4, 2.0)
        if why:
            ctx.fail("A: round %d of requests did not complete (%s): the I/O thread blocks "
                     "writing the full, blocking call eventfd" % (rnd, why))
            break
        if rnd == 1:
            ctx.during()
    else:
        stays_responsive(ctx, conn, "the I/O thread is stuck on the call eventfd")


def err_fd_blocking_full(ctx):
    conn = ctx.conn()
    err = ctx.eventfd(blocking=True)
    os.eventfd_write(err, EVENTFD_MAX)
    kick = ctx.eventfd()
    _, ring = ring_on_a(ctx, conn, kick=kick, call=ctx.eventfd(), err=err)
    ctx.defer(lambda: vu.drain_eventfd(err))
    why = io_round(ring, kick, 2, 2.0)
    if why:
        raise Failed("A: requests on a good ring did not complete (%s)" % why)
    ring.set_avail_idx(ring.avail_idx + ring.num + 5)  # corrupt: more than num new entries
    os.eventfd_write(kick, 1)
    time.sleep(0.2)
    ctx.during()
    stays_responsive(ctx, conn, "the I/O thread is stuck writing the full, blocking error eventfd")


def one_eventfd_two_queues(ctx):
    conn = ctx.conn()
    kick = ctx.eventfd(blocking=True)
    mem = ctx.mem(1 << 20)
    set_mem(ctx, conn, mem)
    r0 = Ring(mem, 0, 16, 0x0, 0x10000)
    r1 = Ring(mem, 1, 16, 0x4000, 0x20000)
    r0.setup(conn, kick=kick, call=ctx.eventfd())
    r1.setup(conn, kick=kick, call=ctx.eventfd())
    ctx.defer(lambda: os.eventfd_write(kick, 1))  # frees a daemon blocked reading it
    for rnd in range(1, 4):
        t0, t1 = (r0.avail_idx + 4) & 0xFFFF, (r1.avail_idx + 4) & 0xFFFF
        r0.post(4)
        r1.post(4)
        os.eventfd_write(kick, 1)
        ok0 = r0.wait_used(t0, 2.0)
        ok1 = r1.wait_used(t1, 0.5 if not ok0 else 2.0)
        if not (ok0 and ok1):
            ctx.fail("A: round %d: requests on queue%s did not complete (used idx %d/%d, %d/%d)"
                     % (rnd, ("" if ok0 else " 0") + ("" if ok1 else " 1"),
                        r0.used_idx(), t0, r1.used_idx(), t1))
            return
        if rnd == 1:
            ctx.during()
    stays_responsive(ctx, conn, "the I/O thread is stuck on the shared kick eventfd")


def message_flood(ctx, seconds=5.0):
    conn = ctx.conn()
    batch = (msg(SET_OWNER) + msg(SET_VRING_ENABLE, state(0, 1))) * 2048
    stop = threading.Event()
    stats = {"bytes": 0, "closed": False}

    def flood():
        s = conn.s
        s.setblocking(False)
        view, off = memoryview(batch), 0
        while not stop.is_set():
            _, w, _ = select.select([], [s], [], 0.1)
            if not w:
                continue
            try:
                n = s.send(view[off:])
            except BlockingIOError:
                continue
            except OSError:
                stats["closed"] = True
                return
            off = (off + n) % len(batch)
            stats["bytes"] += n

    t = threading.Thread(target=flood, daemon=True)
    ctx.defer(lambda: t.join(3))
    ctx.defer(stop.set)
    start = time.monotonic()
    t.start()
    time.sleep(1.0)
    ctx.during("(1 s into the flood)")
    if time.monotonic() - start < seconds - 1.5:
        time.sleep(1.0)
        if not ctx.problems:
            ctx.during("(later in the flood)")
    time.sleep(max(0.0, seconds - (time.monotonic() - start)))
    stop.set()
    t.join(3)
    nmsg = stats["bytes"] // 16  # 12- and 20-byte messages alternate
    if stats["closed"]:
        ctx.note("the daemon closed the flooding connection")
    if nmsg < 10000 and not stats["closed"]:
        ctx.fail("A: the flood sent only %d messages in %g s: the daemon did not read them" % (nmsg, seconds))
    ctx.note("%d messages flooded" % nmsg)


def memory_shrunk(ctx):
    conn = ctx.conn()
    kick = ctx.eventfd()
    mem, ring = ring_on_a(ctx, conn, kick=kick, call=ctx.eventfd())
    why = io_round(ring, kick, 2, 2.0)
    if why:
        raise Failed("A: requests on a good ring did not complete (%s)" % why)
    mem.map.close()  # touching it after the truncate would SIGBUS this test
    mem.map = None
    os.ftruncate(mem.fd, 0)
    os.eventfd_write(kick, 1)
    t0 = time.monotonic()
    ctx.during()
    if not conn.wait_eof(max(0.1, 2.0 - (time.monotonic() - t0))):
        ctx.fail("A: connection still open 2 s after the front-end shrank guest memory under a "
                 "running ring")


def huge_mmap_offset(ctx):
    conn = ctx.conn()
    mem = ctx.mem(1 << 20, mmap_offset=TiB)  # sparse memfd of 1 TiB + 1 MiB
    before = vm_size(ctx.pid)
    ack = conn.call(SET_MEM_TABLE, mem_table(mem.region()), fds=(mem.fd,))
    if ack != 0:
        raise Failed("A: a 1 MiB region at mmap_offset 1 TiB refused (ack %d)" % ack)
    conn.get_u64(GET_FEATURES)
    grew = vm_size(ctx.pid) - before
    if grew >= GiB:
        ctx.fail("A: VmSize grew by %.1f GiB for a 1 MiB region (the daemon maps the file from "
                 "offset 0 instead of only the region)" % (grew / GiB))
    kick = ctx.eventfd()
    _, ring = ring_on_a(ctx, conn, kick=kick, call=ctx.eventfd(), mem=mem)
    why = io_round(ring, kick, 2, 2.0, rtype=BLK_T_GET_ID, length=20)
    if why:
        ctx.fail("A: GET_ID through a ring in that region failed (%s)" % why)
    elif mem.bytes_at(ring.data + 0x100, 1) == b"\0":
        ctx.fail("A: GET_ID completed but no serial arrived where the region says")
    ctx.during()


def disk_fs_dir(args):
    """A writable directory on a disk (not memory) file system, or None."""
    mounts = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            sep = fields.index("-")
            mp = fields[4].encode().decode("unicode_escape")
            mounts.append((mp, fields[sep + 1]))
    cands = [os.environ.get("VBLK_DISK_DIR"), os.path.dirname(os.path.realpath(args.bench)),
             "/var/tmp", os.getcwd(), os.path.dirname(os.path.abspath(__file__))]
    for d in cands:
        if not d or not os.path.isdir(d) or not os.access(d, os.W_OK):
            continue
        d = os.path.realpath(d)
        best = max((m for m in mounts if d == m[0] or d.startswith(m[0].rstrip("/") + "/")),
                   key=lambda m: len(m[0]), default=None)
        if best and best[1] not in MEMORY_FS:
            return d, best[1]
    return None


def region_not_memory_fs(ctx):
    size = 1 << 20
    reg = mem_table(region(0, size, UVA_BASE, 0))
    # /dev/zero: a shared mapping of it is anonymous memory nobody else sees
    conn = ctx.conn()
    expect_closed(ctx, conn, "SET_MEM_TABLE with /dev/zero", SET_MEM_TABLE, reg,
                  (ctx.fd(os.open("/dev/zero", os.O_RDWR | os.O_CLOEXEC)),))
    # a regular file on a disk file system
    found = disk_fs_dir(ctx.args)
    if found is None:
        ctx.note("disk file skipped: no writable directory on a disk file system")
    else:
        d, fstype = found
        path = os.path.join(d, ".isolation-region.%d" % os.getpid())
        fd = ctx.fd(os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
        os.unlink(path)
        os.ftruncate(fd, size)
        conn = ctx.conn()
        expect_closed(ctx, conn, "SET_MEM_TABLE with a file on %s (%s)" % (fstype, d),
                      SET_MEM_TABLE, reg, (fd,))
    # a pipe cannot be mapped at all
    conn = ctx.conn()
    expect_closed(ctx, conn, "SET_MEM_TABLE with a pipe", SET_MEM_TABLE, reg, (ctx.pipe(),))
    # a memfd is what guests use: accepted
    conn = ctx.conn()
    set_mem(ctx, conn, ctx.mem(size))
    ctx.during()
    try:
        conn.get_u64(GET_FEATURES)
    except (Closed, NoAnswer) as e:
        ctx.fail("A: connection with a memfd region unusable (%s)" % e)


def too_much_memory(ctx):
    # one region of 2 TiB (sparse memfd: costs nothing)
    conn = ctx.conn()
    m = ctx.mem(1 << 20, file_size=2 * TiB + (1 << 20))
    expect_closed(ctx, conn, "one 2 TiB region (cap 1 TiB)", SET_MEM_TABLE,
                  mem_table(region(0, 2 * TiB, UVA_BASE, 0)), (m.fd,))
    # two regions of 768 GiB: 1.5 TiB for one connection
    conn = ctx.conn()
    half = 768 * GiB
    ctx.during()
    expect_closed(ctx, conn, "two 768 GiB regions (1.5 TiB, cap 1 TiB)", SET_MEM_TABLE,
                  mem_table(region(0, half, UVA_BASE, 0), region(half, half, UVA_BASE + half, half)),
                  (m.fd, m.fd))


def add_mem_reg_flood(ctx, count=40, slots=32):
    conn = ctx.conn(handshake=False)
    _, pf = conn.handshake()
    if not pf & PF_CONFIGURE_MEM_SLOTS:
        raise Failed("A: CONFIGURE_MEM_SLOTS not offered")
    size = 64 << 10
    m = ctx.mem(size * count)
    accepted, closed_at, refused = 0, None, []
    for k in range(count):
        reg = region(k * size, size, UVA_BASE + k * size, k * size)
        try:
            ack = conn.call(ADD_MEM_REG, mem_reg(reg), fds=(m.fd,))
        except Closed:
            closed_at = k + 1
            break
        if ack != 0:
            refused.append(k + 1)
        else:
            accepted += 1
        if k + 1 == slots:
            ctx.during("(with %d regions mapped)" % slots)
    if accepted < slots:
        ctx.fail("A: only %d ADD_MEM_REG accepted before %s (expected %d)"
                 % (accepted, "the connection closed" if closed_at else "refusals", slots))
    if closed_at is None:
        ctx.fail("A: %d ADD_MEM_REG and the connection stayed open%s"
                 % (count, " (refused with an ack: %s)" % refused if refused else ""))
    else:
        ctx.note("closed at region %d" % closed_at)


def misaligned_ring(ctx):
    conn = ctx.conn()
    mem = ctx.mem(1 << 20, mmap_offset=8, file_size=2 << 20)
    set_mem(ctx, conn, mem)
    ctx.during()
    try:
        ring_on_a(ctx, conn, kick=ctx.eventfd(), call=ctx.eventfd(), mem=mem)
    except Closed:
        return
    if not conn.closes(2.0):
        ctx.fail("A: a ring at host addresses 8 bytes off alignment (mmap_offset 8) was accepted")


CASES = [
    ("kick-not-eventfd", kick_not_eventfd, 2.0),
    ("call-not-eventfd", call_not_eventfd, 2.0),
    ("err-not-eventfd", err_not_eventfd, 2.0),
    ("kick-semaphore-eventfd", kick_semaphore_eventfd, 2.0),
    ("call-fd-blocking-full", call_fd_blocking_full, 3.0),
    ("err-fd-blocking-full", err_fd_blocking_full, 3.0),
    ("one-eventfd-two-queues", one_eventfd_two_queues, 3.0),
    ("message-flood", message_flood, 6.0),
    ("memory-shrunk", memory_shrunk, 3.0),
    ("huge-mmap-offset", huge_mmap_offset, 2.0),
    ("region-not-memory-fs", region_not_memory_fs, 2.0),
    ("too-much-memory", too_much_memory, 2.0),
    ("add-mem-reg-flood", add_mem_reg_flood, 2.0),
    ("misaligned-ring", misaligned_ring, 2.0),
]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--log", help="the daemon's log file (lines of failed cases are shown)")
    ap.add_argument("--only", action="append", help="run only this case (repeatable)")
    ap.add_argument("sock_a")
    ap.add_argument("sock_b")
    ap.add_argument("sock_c")
    ap.add_argument("pid", type=int)
    ap.add_argument("bench")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the cleanups
    failed = 0
    try:
        for name, attack, runtime in CASES:
            if args.only and name not in args.only:
                continue
            if not daemon_alive(args.pid):
                print("FAIL isolation-%s: the daemon (pid %d) is gone" % (name, args.pid))
                failed += 1
                continue
            failed += not run_case(args, name, attack, runtime)
    finally:
        for p in list(PROCS):
            p.kill()
            p.wait()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
