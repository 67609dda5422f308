/* test_engines.c - every I/O engine through the same cases, driven the way an I/O thread drives
 * it: queue, submit once per batch, then reap at once when completions are local, else sleep in
 * poll() on efd, read efd, reap and submit what is still queued, until every callback ran (10 s
 * bound: a lost completion fails the test instead of hanging it).
 *
 * Each case loops over io_uring, io_uring with fixed buffers (every buffer carved from an arena
 * registered as two ranges, so that reads and writes take READ_FIXED/WRITE_FIXED and
 * READV_FIXED/WRITEV_FIXED where the kernel has them), native (Linux AIO) and threads, on a
 * buffered and an O_DIRECT temp file (4096-aligned buffers throughout).  An engine is skipped
 * only when create() says -ENOSYS/-EPERM (io_uring or AIO not allowed here), and the skip is
 * printed.  The null engine has its own basics.  VBLK_TEST_ENGINE=<name> limits the runs to one
 * engine, VBLK_TEST_FILTER=<test name> to one test; VBLK_TEST_BIG=1 also runs test_fixed_big
 * (pins 1 GiB).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <liburing.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "engine/engine.h"

#define BS           4096u
#define DEPTH        8u
#define MAXIO        64u
#define MAXBUF       16u
#define WAIT_MS      10000
#define NENGINES     4u
#define NRUNS        (NENGINES * 2u) /* each engine, buffered then O_DIRECT */
#define ARENA        (2u << 20)      /* the fixed variant's buffers: two registered halves */
#define VEC_FIXED_OP 60u             /* IORING_OP_READV_FIXED (Linux 6.15) */

static const struct vblk_engine_ops *const engines[NENGINES] = {
    &vblk_engine_uring,
    &vblk_engine_uring, /* with fixed buffers */
    &vblk_engine_aio,
    &vblk_engine_threads,
};
static const bool engine_fixed[NENGINES] = {false, true, false, false};

struct tio {
    struct vblk_io io;
    struct iovec iov[8];
    unsigned calls; /* times the callback ran: must end at exactly 1 */
    unsigned order; /* F.completed when it ran: 1 for the first */
};

/* One run: an engine on a temp file.  Everything the engine or the kernel may still touch after
 * a failed assertion is on the heap, and teardown destroys the engine before freeing it. */
static struct {
    const struct vblk_engine_ops *ops;
    const char *mode; /* "buffered" or "O_DIRECT" */
    struct vblk_engine *e;
    int fd;
    struct tio *t; /* MAXIO of them */
    unsigned completed;
    void *bufs[MAXBUF];
    unsigned nbufs;
    bool fixed;     /* this run registers the arena */
    uint8_t *arena; /* fixed runs: ARENA bytes (mmap), registered as two ranges of ARENA / 2 */
    size_t arena_used;
    uint32_t gen; /* the arena's buffer set */
} F = {.fd = -1};

static uint64_t now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void *abuf(size_t len)
{
    void *p;

    if (F.fixed) { /* from the registered arena */
        size_t l = (len + BS - 1) / BS * BS;

        assert_true(F.arena_used + l <= ARENA);
        p = F.arena + F.arena_used;
        F.arena_used += l;
        memset(p, 0, len);
        return p;
    }
    p = aligned_alloc(BS, (len + BS - 1) / BS * BS);
    assert_non_null(p);
    assert_true(F.nbufs < MAXBUF);
    memset(p, 0, len);
    F.bufs[F.nbufs++] = p;
    return p;
}

/* The byte at file offset off for a given seed: any split of the range can be checked. */
static uint8_t pat(unsigned seed, uint64_t off)
{
    return (uint8_t)(seed * 131u + off * 7u + (off >> 12));
}

static void fill(void *buf, uint64_t off, size_t len, unsigned seed)
{
    for (size_t i = 0; i < len; i++)
        ((uint8_t *)buf)[i] = pat(seed, off + i);
}

static bool check_pat(const void *buf, uint64_t off, size_t len, unsigned seed)
{
    for (size_t i = 0; i < len; i++) {
        if (((const uint8_t *)buf)[i] != pat(seed, off + i)) {
            print_error("  byte at file offset %llu: %#x, expected %#x\n",
                        (unsigned long long)(off + i), ((const uint8_t *)buf)[i],
                        pat(seed, off + i));
            return false;
        }
    }
    return true;
}

static bool check_zero(const void *buf, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        if (((const uint8_t *)buf)[i]) {
            print_error("  byte %zu of a zeroed range: %#x\n", i, ((const uint8_t *)buf)[i]);
            return false;
        }
    }
    return true;
}

static unsigned count_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    unsigned n = 0;

    assert_non_null(d);
    while (readdir(d))
        n++;
    closedir(d);
    return n;
}

static bool engine_wanted(const struct vblk_engine_ops *ops)
{
    const char *only = getenv("VBLK_TEST_ENGINE");

    return !only || !*only || strcmp(only, ops->name) == 0;
}

/* Create an engine; false (and say so) if this host does not allow it at all. */
static bool engine_create(const struct vblk_engine_ops *ops, unsigned depth,
                          struct vblk_engine **out)
{
    int r = ops->create(out, depth);

    if (r == -ENOSYS || r == -EPERM) {
        print_message("  [ SKIP ] %s: create() = %s\n", ops->name, strerror(-r));
        return false;
    }
    assert_int_equal(r, 0);
    assert_ptr_equal((*out)->ops, ops);
    assert_int_equal((*out)->pending, 0);
    assert_int_equal((*out)->local, 0);
    assert_false(ops->ready(*out));
    return true;
}

/* An unlinked temp file in /var/tmp (or /tmp), opened with O_DIRECT if asked; -1 if the
 * filesystem refuses O_DIRECT. */
static int open_tmp(bool direct)
{
    static const char *const dirs[] = {"/var/tmp", "/tmp"};

    for (unsigned i = 0; i < 2; i++) {
        char path[64];
        int fd, dfd;

        snprintf(path, sizeof(path), "%s/vblk-test-engine.XXXXXX", dirs[i]);
        fd = mkstemp(path);
        if (fd < 0)
            continue;
        if (!direct) {
            unlink(path);
            return fd;
        }
        dfd = open(path, O_RDWR | O_DIRECT | O_CLOEXEC);
        unlink(path);
        close(fd);
        if (dfd >= 0)
            return dfd;
    }
    return -1;
}

static void run_end(void);

/* Start run i of NRUNS; false if this engine or mode is skipped here. */
static bool run_begin(unsigned i, unsigned depth)
{
    bool direct = i % 2;

    F.ops = engines[i / 2];
    F.fixed = engine_fixed[i / 2];
    F.mode = direct ? (F.fixed ? "O_DIRECT, fixed" : "O_DIRECT")
                    : (F.fixed ? "buffered, fixed" : "buffered");
    F.completed = 0;
    if (!engine_wanted(F.ops))
        return false;
    F.fd = open_tmp(direct);
    if (F.fd < 0) {
        assert_true(direct);
        print_message("  [ SKIP ] %s/%s: no filesystem allows O_DIRECT\n", F.ops->name, F.mode);
        return false;
    }
    F.t = calloc(MAXIO, sizeof(*F.t));
    assert_non_null(F.t);
    if (!engine_create(F.ops, depth, &F.e)) {
        F.e = NULL;
        run_end();
        return false;
    }
    if (F.fixed) {
        struct iovec halves[2];

        F.arena = mmap(NULL, ARENA, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        assert_true(F.arena != MAP_FAILED);
        F.arena_used = 0;
        /* given in reverse: the engine sorts them */
        halves[0] = (struct iovec){F.arena + ARENA / 2, ARENA / 2};
        halves[1] = (struct iovec){F.arena, ARENA / 2};
        F.gen = 7;
        assert_int_equal(F.e->ops->register_bufs(F.e, halves, 2, F.gen), 0);
        assert_int_equal(F.e->buf_gen, F.gen);
    }
    return true;
}

static void run_end(void)
{
    if (F.e)
        F.e->ops->destroy(F.e);
    F.e = NULL;
    if (F.arena)
        munmap(F.arena, ARENA); /* after the engine: the kernel let go of it */
    F.arena = NULL;
    F.fixed = false;
    if (F.fd >= 0)
        close(F.fd);
    F.fd = -1;
    for (unsigned i = 0; i < F.nbufs; i++)
        free(F.bufs[i]);
    F.nbufs = 0;
    free(F.t);
    F.t = NULL;
}

/* cmocka runs this after a failed assertion too: say which run it was, and clean up. */
static int teardown(void **state)
{
    if (F.e)
        print_error("  failed in engine %s on a %s file\n", F.ops->name, F.mode);
    run_end();
    return 0;
}

static void on_done(struct vblk_io *io)
{
    struct tio *t = (struct tio *)((char *)io - offsetof(struct tio, io));

    t->calls++;
    t->order = ++F.completed;
}

static struct tio *prep(unsigned i, enum vblk_io_op op, int fd, uint64_t offset, uint64_t len)
{
    struct tio *t = &F.t[i];

    assert_true(i < MAXIO);
    memset(t, 0, sizeof(*t));
    t->io.op = op;
    t->io.fd = fd;
    t->io.iov = t->iov;
    t->io.offset = offset;
    t->io.len = len;
    t->io.res = INT64_MIN;
    t->io.cb = on_done;
    t->io.engine = F.e;
    return t;
}

/* A read or write of len bytes from buf, cut into segments of the given sizes (0-terminated;
 * none given: one segment). */
static struct tio *prep_rw(unsigned i, enum vblk_io_op op, uint64_t offset, void *buf, uint64_t len,
                           const unsigned *segs)
{
    struct tio *t = prep(i, op, F.fd, offset, len);
    uint64_t at = 0;

    if (!segs || !segs[0]) {
        t->iov[0] = (struct iovec){buf, len};
        t->io.iovcnt = 1;
        return t;
    }
    for (; segs[t->io.iovcnt]; t->io.iovcnt++) {
        assert_true(t->io.iovcnt < 8);
        t->iov[t->io.iovcnt] = (struct iovec){(char *)buf + at, segs[t->io.iovcnt]};
        at += segs[t->io.iovcnt];
    }
    assert_int_equal(at, len);
    return t;
}

static void queue(struct tio *t)
{
    assert_int_equal(F.e->ops->queue(F.e, &t->io), 0);
}

/* Reap, checking that the count returned is the number of callbacks that ran. */
static unsigned reap(void)
{
    unsigned before = F.completed;
    unsigned n = F.e->ops->reap(F.e, vblk_io_complete, NULL);

    assert_int_equal(n, F.completed - before);
    return n;
}

/* What the I/O thread does after reaping: submit what the kernel had no room for before. */
static void resubmit(void)
{
    if (F.e->pending) {
        int r = F.e->ops->submit(F.e);

        assert_true(r == 0 || r == -EAGAIN || r == -EBUSY);
    }
}

/* Wait as an I/O thread does until `target` callbacks have run: reap at once while completions
 * are local, else sleep on efd, drain it, reap, submit what waits.  Fails after WAIT_MS. */
static void wait_for(unsigned target)
{
    uint64_t deadline = now_ms() + WAIT_MS;

    while (F.completed < target) {
        uint64_t now = now_ms();
        struct pollfd p;
        eventfd_t v;
        int r;

        if (now >= deadline) {
            /* a lost wake-up, or lost I/O?  Look without waiting for efd. */
            unsigned done = F.completed;
            bool ready = F.e->ops->ready(F.e);
            unsigned n = F.e->ops->reap(F.e, vblk_io_complete, NULL);

            fail_msg("%s/%s: %u of %u I/Os completed after %d ms (pending %u, local %u); "
                     "efd quiet, yet ready() = %d and reap() now finds %u",
                     F.ops->name, F.mode, done, target, WAIT_MS, F.e->pending, F.e->local, ready,
                     n);
        }
        if (F.e->local) {
            reap();
            resubmit();
            continue;
        }
        assert_true(F.e->efd >= 0);
        p = (struct pollfd){.fd = F.e->efd, .events = POLLIN};
        r = poll(&p, 1, (int)(deadline - now));
        if (r < 0 && errno == EINTR)
            continue;
        assert_true(r >= 0);
        if (r == 0)
            continue;
        assert_true(p.revents & POLLIN);
        assert_int_equal(eventfd_read(F.e->efd, &v), 0);
        reap();
        resubmit();
    }
}

/* Submit what is queued (retrying after a reap while the engine says -EAGAIN), then wait until
 * all of it completed. */
static void submit_and_wait(void)
{
    unsigned target = F.completed + F.e->pending;
    int r;

    /* an engine that completed some I/O in-process (local) at queue time counts it here */
    target += F.e->local;
    while ((r = F.e->ops->submit(F.e)) == -EAGAIN)
        wait_for(F.completed + 1);
    assert_int_equal(r, 0);
    assert_int_equal(F.e->pending, 0);
    wait_for(target);
}

/* Run one I/O to completion; returns its result. */
static int64_t run_one(struct tio *t)
{
    queue(t);
    submit_and_wait();
    assert_int_equal(t->calls, 1);
    return t->io.res;
}

static void rw_ok(unsigned i, enum vblk_io_op op, uint64_t offset, void *buf, uint64_t len,
                  const unsigned *segs)
{
    struct tio *t = prep_rw(i, op, offset, buf, len, segs);

    assert_int_equal(run_one(t), (int64_t)len);
}

static void file_size_is(uint64_t size)
{
    struct stat st;

    assert_int_equal(fstat(F.fd, &st), 0);
    assert_int_equal((uint64_t)st.st_size, size);
}

/* ---- cases ---- */

/* Several iovecs out, a differently cut set back, compared byte for byte (and with pread). */
static void test_vectored_write_read(void **state)
{
    static const unsigned wsegs[] = {BS, 2 * BS, BS, 4 * BS, 0};
    static const unsigned rsegs[] = {3 * BS, BS, BS, BS, 2 * BS, 0};
    const uint64_t off = 3 * BS, len = 8 * BS;

    for (unsigned run = 0; run < NRUNS; run++) {
        uint8_t *w, *r, *c;

        if (!run_begin(run, DEPTH))
            continue;
        w = abuf(len);
        r = abuf(len);
        c = abuf(len);
        fill(w, off, len, 1);
        rw_ok(0, VBLK_IO_WRITE, off, w, len, wsegs);
        assert_int_equal(F.t[0].io.iovcnt, 4);
        file_size_is(off + len);
        rw_ok(1, VBLK_IO_READ, off, r, len, rsegs);
        assert_int_equal(F.t[1].io.iovcnt, 5);
        assert_true(check_pat(r, off, len, 1));
        assert_int_equal(pread(F.fd, c, len, (off_t)off), (ssize_t)len);
        assert_true(check_pat(c, off, len, 1));
        run_end();
    }
}

/* One segment each way (io_uring takes its plain read/write path for these). */
static void test_single_segment(void **state)
{
    const uint64_t off = 5 * BS, len = 2 * BS;

    for (unsigned run = 0; run < NRUNS; run++) {
        uint8_t *w, *r;

        if (!run_begin(run, DEPTH))
            continue;
        w = abuf(len);
        r = abuf(len);
        fill(w, off, len, 2);
        rw_ok(0, VBLK_IO_WRITE, off, w, len, NULL);
        assert_int_equal(F.t[0].io.iovcnt, 1);
        rw_ok(1, VBLK_IO_READ, off, r, len, NULL);
        assert_true(check_pat(r, off, len, 2));
        /* the hole in front of it reads as zeroes */
        rw_ok(2, VBLK_IO_READ, 0, r, BS, NULL);
        assert_true(check_zero(r, BS));
        run_end();
    }
}

/* Reads that cross EOF come back short; a read wholly past EOF returns 0. */
static void test_read_past_eof(void **state)
{
    static const unsigned segs[] = {BS, 2 * BS, BS, 0};
    const uint64_t size = 2 * BS;

    for (unsigned run = 0; run < NRUNS; run++) {
        uint8_t *w, *r;
        struct tio *t;

        if (!run_begin(run, DEPTH))
            continue;
        w = abuf(size);
        r = abuf(4 * BS);
        fill(w, 0, size, 3);
        rw_ok(0, VBLK_IO_WRITE, 0, w, size, NULL);
        file_size_is(size);

        t = prep_rw(1, VBLK_IO_READ, BS, r, 4 * BS, NULL);
        assert_int_equal(run_one(t), (int64_t)BS);
        assert_true(check_pat(r, BS, BS, 3));

        t = prep_rw(2, VBLK_IO_READ, BS, r, 4 * BS, segs);
        assert_int_equal(run_one(t), (int64_t)BS);
        assert_true(check_pat(r, BS, BS, 3));

        t = prep_rw(3, VBLK_IO_READ, 8 * BS, r, BS, NULL);
        assert_int_equal(run_one(t), 0);
        run_end();
    }
}

/* A write-through (FUA) write: RWF_DSYNC is passed and the write lands. */
static void test_dsync_write(void **state)
{
    static const unsigned segs[] = {BS, BS, 0};
    const uint64_t off = BS, len = 2 * BS;

    for (unsigned run = 0; run < NRUNS; run++) {
        uint8_t *w, *r;
        struct tio *t;

        if (!run_begin(run, DEPTH))
            continue;
        w = abuf(len);
        r = abuf(len);
        fill(w, off, len, 4);
        t = prep_rw(0, VBLK_IO_WRITE, off, w, len, NULL);
        t->io.rw_flags = RWF_DSYNC;
        assert_int_equal(run_one(t), (int64_t)len);
        fill(w, off, len, 5);
        t = prep_rw(1, VBLK_IO_WRITE, off, w, len, segs);
        t->io.rw_flags = RWF_DSYNC;
        assert_int_equal(run_one(t), (int64_t)len);
        rw_ok(2, VBLK_IO_READ, off, r, len, NULL);
        assert_true(check_pat(r, off, len, 5));
        run_end();
    }
}

/* A flush (fdatasync) completes with 0, after dirty data and on a clean file. */
static void test_flush(void **state)
{
    for (unsigned run = 0; run < NRUNS; run++) {
        uint8_t *w;

        if (!run_begin(run, DEPTH))
            continue;
        assert_int_equal(run_one(prep(0, VBLK_IO_FLUSH, F.fd, 0, 0)), 0);
        w = abuf(BS);
        fill(w, 0, BS, 6);
        rw_ok(1, VBLK_IO_WRITE, 0, w, BS, NULL);
        assert_int_equal(run_one(prep(2, VBLK_IO_FLUSH, F.fd, 0, 0)), 0);
        run_end();
    }
}

/* Discard and write-zeroes: the range reads back as zeroes, its neighbours keep their data,
 * the size stays (KEEP_SIZE), and a range past EOF does not grow the file. */
static void fallocate_case(int mode, unsigned seed)
{
    const uint64_t size = 8 * BS, off = 2 * BS, len = 3 * BS;

    for (unsigned run = 0; run < NRUNS; run++) {
        uint8_t *w, *r;
        struct tio *t;

        if (!run_begin(run, DEPTH))
            continue;
        w = abuf(size);
        r = abuf(size);
        fill(w, 0, size, seed);
        rw_ok(0, VBLK_IO_WRITE, 0, w, size, NULL);

        t = prep(1, VBLK_IO_FALLOCATE, F.fd, off, len);
        t->io.mode = mode;
        assert_int_equal(run_one(t), 0);
        file_size_is(size);
        rw_ok(2, VBLK_IO_READ, 0, r, size, NULL);
        assert_true(check_pat(r, 0, off, seed));
        assert_true(check_zero(r + off, len));
        assert_true(check_pat(r + off + len, off + len, size - off - len, seed));
        memset(r, 0xa5, size);
        assert_int_equal(pread(F.fd, r, size, 0), (ssize_t)size);
        assert_true(check_zero(r + off, len));

        t = prep(3, VBLK_IO_FALLOCATE, F.fd, size, 4 * BS);
        t->io.mode = mode;
        assert_int_equal(run_one(t), 0);
        file_size_is(size);
        run_end();
    }
}

static void test_punch_hole(void **state)
{
    fallocate_case(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 7);
}

static void test_zero_range(void **state)
{
    fallocate_case(FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, 8);
}

/* I/O on a closed fd, and a write on a read-only fd, completes with -EBADF in io->res; good I/O
 * in the same batch, before and after the bad ones, is not disturbed. */
static void test_bad_fd(void **state)
{
    for (unsigned run = 0; run < NRUNS; run++) {
        uint8_t *w, *r;
        char path[64];
        int bad, ro;
        struct tio *t[8];
        unsigned n = 0;

        if (!run_begin(run, DEPTH))
            continue;
        snprintf(path, sizeof(path), "/proc/self/fd/%d", F.fd);
        ro = open(path, O_RDONLY | O_CLOEXEC);
        assert_true(ro >= 0);
        bad = dup(F.fd); /* after ro: the number must stay free */
        assert_true(bad >= 0);
        close(bad);
        w = abuf(2 * BS);
        r = abuf(BS);
        fill(w, 0, 2 * BS, 9);

        t[n++] = prep_rw(0, VBLK_IO_WRITE, 0, w, BS, NULL);
        t[n] = prep(1, VBLK_IO_READ, bad, 0, BS);
        t[n]->iov[0] = (struct iovec){r, BS};
        t[n++]->io.iovcnt = 1;
        t[n] = prep(2, VBLK_IO_WRITE, bad, 0, BS);
        t[n]->iov[0] = (struct iovec){w, BS};
        t[n++]->io.iovcnt = 1;
        t[n++] = prep(3, VBLK_IO_FLUSH, bad, 0, 0);
        t[n] = prep(4, VBLK_IO_FALLOCATE, bad, 0, BS);
        t[n++]->io.mode = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE;
        t[n] = prep(5, VBLK_IO_WRITE, ro, BS, BS);
        t[n]->iov[0] = (struct iovec){w + BS, BS};
        t[n++]->io.iovcnt = 1;
        t[n++] = prep_rw(6, VBLK_IO_WRITE, BS, w + BS, BS, NULL);
        for (unsigned i = 0; i < n; i++)
            queue(t[i]);
        submit_and_wait();
        for (unsigned i = 0; i < n; i++)
            assert_int_equal(t[i]->calls, 1);
        assert_int_equal(t[0]->io.res, BS);
        for (unsigned i = 1; i < 6; i++)
            assert_int_equal(t[i]->io.res, -EBADF);
        assert_int_equal(t[6]->io.res, BS);

        /* alone, too (first in its batch) */
        t[0] = prep(7, VBLK_IO_READ, bad, 0, BS);
        t[0]->iov[0] = (struct iovec){r, BS};
        t[0]->io.iovcnt = 1;
        assert_int_equal(run_one(t[0]), -EBADF);
        assert_int_equal(pread(F.fd, w, 2 * BS, 0), 2 * BS);
        assert_true(check_pat(w, 0, 2 * BS, 9));
        close(ro);
        run_end();
    }
}

/* The caller's view of an engine created for a depth.  Round one, from idle: queue 4 x depth.
 * Only io_uring answers -EAGAIN, at depth (its SQ is full; a submit makes room); native keeps
 * what its context cannot take queued, the thread pool has no bound.  Submit, reap it all.
 * Then keep the engine full: queue while fewer than depth are outstanding (no -EAGAIN allowed
 * there), submit, reap what finished, queue the rest.  Every I/O completes exactly once with
 * the right result; the data is checked by the read pass. */
static void many_pass(enum vblk_io_op op, uint8_t *buf)
{
    bool sq = F.ops == &vblk_engine_uring;
    unsigned next = 0, first_eagain = 0;

    F.completed = 0;
    for (unsigned i = 0; i < MAXIO; i++)
        prep_rw(i, op, (uint64_t)i * BS, buf + (size_t)i * BS, BS, NULL);

    while (next < 4 * DEPTH) {
        int r = F.e->ops->queue(F.e, &F.t[next].io);

        if (r == -EAGAIN) {
            first_eagain = next;
            break;
        }
        assert_int_equal(r, 0);
        next++;
    }
    if (sq) {
        assert_int_equal(first_eagain, DEPTH);
        assert_int_equal(F.e->pending, DEPTH);
    } else {
        assert_int_equal(next, 4 * DEPTH);
        assert_int_equal(F.e->pending, 4 * DEPTH);
    }
    assert_int_equal(F.t[DEPTH].calls, 0);
    submit_and_wait();
    assert_int_equal(F.completed, next);

    while (F.completed < MAXIO) {
        int r;

        while (next < MAXIO && next - F.completed < DEPTH) {
            assert_int_equal(F.e->ops->queue(F.e, &F.t[next].io), 0);
            next++;
        }
        r = F.e->ops->submit(F.e);
        assert_true(r == 0 || r == -EAGAIN);
        wait_for(F.completed + 1);
    }
    assert_int_equal(next, MAXIO);
    for (unsigned i = 0; i < MAXIO; i++) {
        assert_int_equal(F.t[i].calls, 1);
        assert_int_equal(F.t[i].io.res, BS);
    }
    assert_int_equal(F.completed, MAXIO);
    assert_int_equal(F.e->pending, 0);
    assert_int_equal(reap(), 0); /* nothing left over, nothing twice */
}

static void test_many_ios(void **state)
{
    for (unsigned run = 0; run < NRUNS; run++) {
        uint8_t *w, *r;

        if (!run_begin(run, DEPTH))
            continue;
        w = abuf((size_t)MAXIO * BS);
        r = abuf((size_t)MAXIO * BS);
        fill(w, 0, (size_t)MAXIO * BS, 10);
        many_pass(VBLK_IO_WRITE, w);
        many_pass(VBLK_IO_READ, r);
        assert_true(check_pat(r, 0, (size_t)MAXIO * BS, 10));
        run_end();
    }
}

/* A burst of 4 x depth I/Os (the qcow2 driver's metadata write-back does this: its I/O is not
 * counted in the depth), from a caller whose only bound is queue()'s -EAGAIN, handled the way
 * bdev/file.c's file_queue() does (submit, queue again; reap only when that still fails).
 * io_uring's queue() only reports a full SQ, so 4 x depth go in flight and its CQ (2 x depth)
 * overflows: the engine must still deliver every completion (the kernel keeps overflowed CQEs
 * until the engine asks, IORING_SQ_CQ_OVERFLOW).  The pause after each submit makes that
 * deterministic: the batches finish, and those beyond the CQ land on the overflow list.  native
 * takes all of it and keeps what its context cannot hold queued (submit() says -EAGAIN until
 * a reap made room); the thread pool has no ring. */
static void test_burst_beyond_depth(void **state)
{
    const unsigned n = 4 * DEPTH;

    for (unsigned run = 0; run < NRUNS; run++) {
        uint8_t *w, *c;
        int r;

        if (!run_begin(run, DEPTH))
            continue;
        w = abuf((size_t)n * BS);
        c = abuf((size_t)n * BS);
        fill(w, 0, (size_t)n * BS, 13);
        for (unsigned i = 0; i < n; i++) {
            struct tio *t =
                prep_rw(i, VBLK_IO_WRITE, (uint64_t)i * BS, w + (size_t)i * BS, BS, NULL);

            r = F.e->ops->queue(F.e, &t->io);
            while (r == -EAGAIN) {
                assert_ptr_equal(F.ops, &vblk_engine_uring); /* a full SQ, and only that */
                r = F.e->ops->submit(F.e);
                assert_true(r == 0 || r == -EAGAIN);
                usleep(20 * 1000); /* a fast disk: the batch finishes before the next one */
                r = F.e->ops->queue(F.e, &t->io);
                if (r == -EAGAIN) {
                    wait_for(F.completed + 1);
                    r = F.e->ops->queue(F.e, &t->io);
                }
            }
            assert_int_equal(r, 0);
        }
        r = F.e->ops->submit(F.e);
        if (F.ops == &vblk_engine_aio) {
            assert_int_equal(r, -EAGAIN); /* the context holds depth: the rest wait, in order */
            assert_int_equal(F.e->pending, n - DEPTH);
        } else {
            assert_int_equal(r, 0);
            assert_int_equal(F.e->pending, 0);
        }
        usleep(20 * 1000); /* all of it finished before the I/O thread looks */
        wait_for(n);
        for (unsigned i = 0; i < n; i++) {
            assert_int_equal(F.t[i].calls, 1);
            assert_int_equal(F.t[i].io.res, BS);
        }
        assert_int_equal(F.e->pending, 0);
        assert_false(F.e->ops->ready(F.e));
        assert_int_equal(reap(), 0);
        assert_int_equal(pread(F.fd, c, (size_t)n * BS, 0), (ssize_t)n * BS);
        assert_true(check_pat(c, 0, (size_t)n * BS, 13));
        run_end();
    }
}

/* A delay (fault injection) completes after its time with res 0 where the engine keeps time
 * (io_uring: a timeout; the thread pool: a sleeping worker), and is refused where it cannot
 * without stalling its thread (native here, null in its own test). */
static void test_delay(void **state)
{
    for (unsigned run = 0; run < NRUNS; run += 2) {
        uint64_t t0;
        struct tio *t;
        uint8_t *r;

        if (!run_begin(run, DEPTH))
            continue;
        t = prep(0, VBLK_IO_DELAY, -1, 0, 50 * 1000000ull);
        t0 = now_ms();
        if (F.ops == &vblk_engine_aio) {
            assert_int_equal(F.e->ops->queue(F.e, &t->io), -EOPNOTSUPP);
            assert_int_equal(F.e->pending, 0);
            run_end();
            continue;
        }
        /* a read queued behind it completes first: a delay holds up nothing else */
        r = abuf(BS);
        queue(t);
        queue(prep_rw(1, VBLK_IO_READ, 0, r, BS, NULL));
        submit_and_wait();
        assert_true(now_ms() - t0 >= 49); /* whole milliseconds, each rounded down */
        assert_true(F.t[1].order < F.t[0].order);
        assert_int_equal(F.t[0].calls, 1);
        assert_int_equal(F.t[0].io.res, 0);
        assert_int_equal(F.t[1].calls, 1);
        assert_int_equal(F.t[1].io.res, 0); /* an empty file */
        run_end();
    }
}

/* ready(): false with nothing in flight; once efd says completions wait (or they are local),
 * true, and it stays true, without running callbacks, until reap(); false again after. */
static void test_ready(void **state)
{
    unsigned spurious;

    for (unsigned run = 0; run < NRUNS; run++) {
        uint8_t *w;

        if (!run_begin(run, DEPTH))
            continue;
        w = abuf(4 * BS);
        fill(w, 0, 4 * BS, 11);
        spurious = 0;
        for (unsigned k = 0; k < 3; k++) {
            struct tio *t;
            eventfd_t v;
            bool efd_up, read_efd;

            assert_false(F.e->ops->ready(F.e));
            if (k == 0) {
                t = prep_rw(k, VBLK_IO_WRITE, 0, w, 4 * BS, NULL);
            } else if (k == 1) {
                t = prep(k, VBLK_IO_FLUSH, F.fd, 0, 0);
            } else {
                t = prep(k, VBLK_IO_FALLOCATE, F.fd, BS, BS);
                t->io.mode = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE;
            }
            queue(t);
            assert_int_equal(F.e->ops->submit(F.e), 0);
            /* Sleep on efd until ready() says so (native's ready() is true while anything is
             * in flight: efd first).  A wake-up with nothing ready is allowed (it costs the
             * I/O thread one more poll) but counted: io_uring with DEFER_TASKRUN signals efd
             * again when reap() posts the CQEs.  efd_up: we saw efd readable and ready()
             * true without reading efd (not so if the completion's own signal was read as
             * a spurious one, which a check before sleeping again catches). */
            efd_up = read_efd = false;
            while (!F.e->local) {
                struct pollfd p = {.fd = F.e->efd, .events = POLLIN};

                if (read_efd && F.e->ops->ready(F.e))
                    break;
                assert_int_equal(poll(&p, 1, WAIT_MS), 1);
                if (F.e->ops->ready(F.e)) {
                    efd_up = true;
                    break;
                }
                assert_int_equal(eventfd_read(F.e->efd, &v), 0);
                assert_int_equal(t->calls, 0);
                read_efd = true;
                spurious++;
            }
            assert_true(F.e->ops->ready(F.e));
            usleep(2000);
            assert_true(F.e->ops->ready(F.e));
            assert_true(F.e->ops->ready(F.e));
            assert_int_equal(t->calls, 0);
            if (efd_up) {
                struct pollfd p = {.fd = F.e->efd, .events = POLLIN};

                /* completions wait: efd still says so */
                assert_int_equal(poll(&p, 1, 0), 1);
                assert_int_equal(eventfd_read(F.e->efd, &v), 0);
            }
            assert_int_equal(reap(), 1);
            assert_int_equal(t->calls, 1);
            assert_int_equal(t->io.res, k == 0 ? 4 * BS : 0);
            assert_false(F.e->ops->ready(F.e));
            assert_int_equal(reap(), 0);
        }
        if (spurious)
            print_message("  [ NOTE ] %s/%s: %u efd wake-up(s) with nothing ready, in 3 I/Os\n",
                          F.ops->name, F.mode, spurious);
        run_end();
    }
}

/* ready() is about completions, not I/O in flight: a read from an empty pipe (offset -1: the
 * current position) is submitted and does not finish; ready() stays false and efd quiet until
 * data arrives.  Not for native: Linux AIO runs pipe reads inside io_submit() (it would block
 * here), and its ready() is "anything in flight" by design (no cheap peek through libaio). */
static void test_ready_only_when_complete(void **state)
{
    for (unsigned run = 0; run < NRUNS; run += 2) {
        struct pollfd p;
        struct tio *t;
        uint8_t *r;
        int pfd[2];

        if (engines[run / 2] == &vblk_engine_aio) {
            if (engine_wanted(&vblk_engine_aio))
                print_message("  [ SKIP ] native: pipe reads block in io_submit()\n");
            continue;
        }
        if (!run_begin(run, DEPTH))
            continue;
        assert_int_equal(pipe2(pfd, O_CLOEXEC), 0);
        r = abuf(BS);
        t = prep(0, VBLK_IO_READ, pfd[0], UINT64_MAX, BS);
        t->iov[0] = (struct iovec){r, BS};
        t->io.iovcnt = 1;
        queue(t);
        assert_int_equal(F.e->ops->submit(F.e), 0);
        for (unsigned i = 0; i < 5; i++) {
            usleep(5000);
            assert_false(F.e->ops->ready(F.e));
            assert_int_equal(F.e->ops->reap(F.e, vblk_io_complete, NULL), 0);
            assert_int_equal(t->calls, 0);
        }
        p = (struct pollfd){.fd = F.e->efd, .events = POLLIN};
        assert_int_equal(poll(&p, 1, 0), 0);
        assert_int_equal(write(pfd[1], "abc", 3), 3);
        wait_for(1);
        assert_int_equal(t->io.res, 3);
        assert_memory_equal(r, "abc", 3);
        assert_false(F.e->ops->ready(F.e));
        close(pfd[0]);
        close(pfd[1]);
        run_end();
    }
}

/* Destroy with nothing in flight: straight after create, after I/O was reaped; no fd or
 * memory (ASan) left behind, across many engines in turn. */
static void test_destroy_idle(void **state)
{
    for (unsigned run = 0; run < NRUNS; run += 2) {
        unsigned fds;
        uint8_t *w;

        if (!run_begin(run, DEPTH))
            continue;
        fds = count_fds();
        for (unsigned i = 0; i < 20; i++) {
            struct vblk_engine *e;

            assert_true(engine_create(F.ops, i % 2 ? 1 : 256, &e));
            e->ops->destroy(e);
        }
        assert_int_equal(count_fds(), fds);
        w = abuf(BS);
        fill(w, 0, BS, 12);
        rw_ok(0, VBLK_IO_WRITE, 0, w, BS, NULL);
        assert_int_equal(run_one(prep(1, VBLK_IO_FLUSH, F.fd, 0, 0)), 0);
        assert_false(F.e->ops->ready(F.e));
        F.e->ops->destroy(F.e);
        F.e = NULL;
        assert_true(count_fds() < fds);
        run_end();
    }
}

/* ---- fixed buffers ---- */

/* Does the kernel have READV_FIXED/WRITEV_FIXED (what the engine probes)? */
static bool kernel_vec_fixed(void)
{
    struct io_uring_probe *p = io_uring_get_probe();
    bool ok = p && io_uring_opcode_supported(p, VEC_FIXED_OP);

    if (p)
        io_uring_free_probe(p);
    return ok;
}

/* Put fresh zero pages where the arena is.  The registered set keeps the old pages pinned, so
 * from now on a fixed read lands where the program cannot see it and a fixed write sends the
 * old pages' bytes, while the plain forms use the new pages: the way to tell which ran (and the
 * hazard of memory replaced under a registration, see README fixed-buffers). */
static void arena_replace(void)
{
    void *p = mmap(F.arena, ARENA, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED,
                   -1, 0);

    assert_true(p == (void *)F.arena);
}

static bool all_zero(const uint8_t *p, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        if (p[i])
            return false;
    }
    return true;
}

/* Which form each read took, told by arena_replace(): one segment in one range, several in one
 * range (fixed where the kernel has READV_FIXED), segments of two ranges, a segment across the
 * two, memory outside the set (all plain); a fixed write sends the registered pages' bytes. */
static void test_fixed_buffers(void **state)
{
    static const unsigned segs[] = {BS, 2 * BS, BS, 0}, split[] = {BS, 2 * BS, 0};
    const uint64_t off = 2 * BS, len = 4 * BS;

    for (unsigned run = 0; run < NRUNS; run++) {
        bool vec = kernel_vec_fixed();
        uint8_t *w, *r, *x, *y, *heap;

        if (!run_begin(run, DEPTH))
            continue;
        if (!F.fixed) {
            run_end();
            continue;
        }
        w = abuf(len);
        r = abuf(len);
        fill(w, off, len, 22);
        rw_ok(0, VBLK_IO_WRITE, off, w, len, NULL);
        rw_ok(1, VBLK_IO_READ, off, r, len, segs);
        assert_true(check_pat(r, off, len, 22));

        arena_replace(); /* w, r and the rest read as zeroes now */
        rw_ok(2, VBLK_IO_READ, off, r, len, NULL);
        assert_true(all_zero(r, len)); /* READ_FIXED: into the registered pages */
        rw_ok(3, VBLK_IO_READ, off, r, len, segs);
        assert_true(vec ? all_zero(r, len) : check_pat(r, off, len, 22)); /* READV_FIXED */
        memset(r, 0, len);

        /* segments in both halves, and one segment across them: plain */
        F.arena_used = ARENA / 2 - BS;
        x = abuf(3 * BS);
        rw_ok(4, VBLK_IO_READ, off, x, 3 * BS, split); /* BS in one half, 2 * BS in the other */
        assert_true(check_pat(x, off, 3 * BS, 22));
        memset(x, 0, 3 * BS);
        rw_ok(5, VBLK_IO_READ, off, x, 3 * BS, NULL);
        assert_true(check_pat(x, off, 3 * BS, 22));
        /* inside the second half only: fixed (index 1) */
        memset(x, 0, 3 * BS);
        rw_ok(6, VBLK_IO_READ, off + BS, x + BS, 2 * BS, NULL);
        assert_true(all_zero(x, 3 * BS));
        /* outside the set: plain */
        heap = aligned_alloc(BS, len);
        assert_non_null(heap);
        memset(heap, 0, len);
        rw_ok(7, VBLK_IO_READ, off, heap, len, segs);
        assert_true(check_pat(heap, off, len, 22));
        free(heap);

        /* a fixed write sends the registered pages (still pattern 22), not the visible ones */
        y = F.arena + ARENA / 2 + 8 * BS;
        fill(y, off, len, 23); /* visible only */
        rw_ok(8, VBLK_IO_WRITE, off, y, len, NULL);
        memset(r, 0, len);
        r = F.arena + 16 * BS; /* a plain read to see the file: outside the set now */
        assert_int_equal(F.e->ops->register_bufs(F.e, NULL, 0, 0), 0);
        rw_ok(9, VBLK_IO_READ, off, r, len, NULL);
        assert_true(all_zero(r, len)); /* y's registered pages were never written: zeroes */
        run_end();
    }
}

/* The set is replaced (by one that no longer holds the reads' memory), then dropped, while
 * reads into it are queued and not submitted: they go the plain way (the new pages), neither
 * into a buffer that no longer holds them (-EFAULT) nor into the old pages. */
static void test_fixed_buffers_replaced(void **state)
{
    const uint64_t len = 2 * BS;

    for (unsigned run = 0; run < NRUNS; run++) {
        struct iovec whole;
        uint8_t *w;

        if (!run_begin(run, DEPTH))
            continue;
        if (!F.fixed) {
            run_end();
            continue;
        }
        w = abuf(4 * len);
        fill(w, 0, 4 * len, 30);
        rw_ok(0, VBLK_IO_WRITE, 0, w, 4 * len, NULL);
        arena_replace();
        for (unsigned i = 0; i < 4; i++)
            queue(prep_rw(i, VBLK_IO_READ, i * len, w + i * len, len, NULL));
        assert_int_equal(F.e->pending, 4);
        /* the new pages of the second half only: index 0 no longer holds w */
        whole = (struct iovec){F.arena + ARENA / 2, ARENA / 2};
        assert_int_equal(F.e->ops->register_bufs(F.e, &whole, 1, F.gen + 1), 0);
        assert_int_equal(F.e->buf_gen, F.gen + 1);
        submit_and_wait();
        for (unsigned i = 0; i < 4; i++)
            assert_int_equal(F.t[i].io.res, (int64_t)len);
        assert_true(check_pat(w, 0, 4 * len, 30));
        /* the new set, fixed */
        w = F.arena + ARENA / 2;
        rw_ok(4, VBLK_IO_READ, 0, w, 4 * len, NULL);
        assert_true(check_pat(w, 0, 4 * len, 30));
        /* dropped with I/O queued */
        memset(w, 0, 4 * len);
        for (unsigned i = 0; i < 4; i++)
            queue(prep_rw(i, VBLK_IO_READ, i * len, w + i * len, len,
                          i % 2 ? NULL : (const unsigned[]){BS, BS, 0}));
        assert_int_equal(F.e->ops->register_bufs(F.e, NULL, 0, 0), 0);
        assert_int_equal(F.e->buf_gen, 0);
        submit_and_wait();
        for (unsigned i = 0; i < 4; i++)
            assert_int_equal(F.t[i].io.res, (int64_t)len);
        assert_true(check_pat(w, 0, 4 * len, 30));
        run_end();
    }
}

/* Registration refused (memory the kernel cannot pin, overlapping ranges): the engine says so,
 * holds no set (the one before is gone too), and I/O goes the plain way. */
static void test_fixed_fallback(void **state)
{
    for (unsigned run = 0; run < NRUNS; run++) {
        struct iovec bad[2];
        uint8_t *w, *r;
        void *none;

        if (!run_begin(run, DEPTH))
            continue;
        if (!F.e->ops->register_bufs) {
            run_end();
            continue;
        }
        w = abuf(BS);
        r = abuf(BS);
        none = mmap(NULL, 16 * BS, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        assert_true(none != MAP_FAILED);
        bad[0] = (struct iovec){none, 16 * BS};
        assert_true(F.e->ops->register_bufs(F.e, bad, 1, 41) < 0);
        assert_int_equal(F.e->buf_gen, 0);
        munmap(none, 16 * BS);
        if (F.fixed) {
            bad[0] = (struct iovec){F.arena, 2 * BS};
            bad[1] = (struct iovec){F.arena + BS, 2 * BS};
            assert_int_equal(F.e->ops->register_bufs(F.e, bad, 2, 42), -EINVAL);
            assert_int_equal(F.e->buf_gen, 0);
        }
        fill(w, 0, BS, 42);
        rw_ok(0, VBLK_IO_WRITE, 0, w, BS, NULL);
        rw_ok(1, VBLK_IO_READ, 0, r, BS, NULL);
        assert_true(check_pat(r, 0, BS, 42));
        run_end();
    }
}

/* A range over 1 GiB is cut in pieces (the kernel's limit per buffer): a read in the second
 * piece is fixed, one across the cut plain.  Pins 1 GiB + 2 pages: only with VBLK_TEST_BIG=1. */
static void test_fixed_big(void **state)
{
    const size_t big = ((size_t)1 << 30) + 2 * BS;

    if (!getenv("VBLK_TEST_BIG")) {
        print_message("  skipped: set VBLK_TEST_BIG=1 (pins 1 GiB)\n");
        return;
    }
    for (unsigned run = 0; run < NRUNS; run++) {
        struct iovec whole;
        uint8_t *m, *w;

        if (!run_begin(run, DEPTH))
            continue;
        if (!F.fixed) {
            run_end();
            continue;
        }
        w = abuf(4 * BS);
        fill(w, 0, 4 * BS, 50);
        rw_ok(0, VBLK_IO_WRITE, 0, w, 4 * BS, NULL);
        m = mmap(NULL, big, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1,
                 0);
        assert_true(m != MAP_FAILED);
        whole = (struct iovec){m, big};
        assert_int_equal(F.e->ops->register_bufs(F.e, &whole, 1, 51), 0);
        assert_true(mmap(m, big, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED,
                         -1, 0) == m);
        rw_ok(1, VBLK_IO_READ, 0, m + big - 2 * BS, 2 * BS, NULL); /* in piece 1 */
        assert_true(all_zero(m + big - 2 * BS, 2 * BS));
        rw_ok(2, VBLK_IO_READ, 0, m + big - 4 * BS, 4 * BS, NULL); /* across: plain */
        assert_true(check_pat(m + big - 4 * BS, 0, 4 * BS, 50));
        rw_ok(3, VBLK_IO_READ, 0, m + 8 * BS, 4 * BS, NULL); /* in piece 0 */
        assert_true(all_zero(m + 8 * BS, 4 * BS));
        assert_int_equal(F.e->ops->register_bufs(F.e, NULL, 0, 0), 0);
        munmap(m, big);
        run_end();
    }
}

/* ---- the null engine ---- */

static void test_null_engine(void **state)
{
    static const unsigned segs[] = {BS, 2 * BS, 0};
    struct tio *t;
    uint8_t *r;

    assert_ptr_equal(vblk_engine_find("io_uring"), &vblk_engine_uring);
    assert_ptr_equal(vblk_engine_find("native"), &vblk_engine_aio);
    assert_ptr_equal(vblk_engine_find("threads"), &vblk_engine_threads);
    assert_ptr_equal(vblk_engine_find("null"), &vblk_engine_null);
    assert_null(vblk_engine_find("nope"));

    F.ops = &vblk_engine_null;
    F.mode = "none";
    F.completed = 0;
    F.t = calloc(MAXIO, sizeof(*F.t));
    assert_non_null(F.t);
    assert_true(engine_create(&vblk_engine_null, DEPTH, &F.e));
    assert_int_equal(F.e->efd, -1);
    r = abuf(3 * BS);
    memset(r, 0xa5, 3 * BS);

    t = prep_rw(0, VBLK_IO_READ, 1 << 30, r, 3 * BS, segs);
    queue(t);
    prep_rw(1, VBLK_IO_READ, 0, r + BS, BS, NULL);
    queue(&F.t[1]);
    prep_rw(2, VBLK_IO_WRITE, 0, r, 3 * BS, NULL);
    queue(&F.t[2]);
    queue(prep(3, VBLK_IO_FLUSH, -1, 0, 0));
    assert_int_equal(F.e->local, 4);
    assert_true(F.e->ops->ready(F.e));
    assert_int_equal(F.e->ops->submit(F.e), 0);
    assert_int_equal(F.t[0].calls, 0);
    wait_for(4);
    assert_true(check_zero(r, 3 * BS));
    for (unsigned i = 0; i < 4; i++)
        assert_int_equal(F.t[i].calls, 1);
    assert_int_equal(F.t[0].io.res, 3 * BS);
    assert_int_equal(F.t[1].io.res, BS);
    assert_int_equal(F.t[2].io.res, 3 * BS);
    assert_int_equal(F.t[3].io.res, 0);
    assert_int_equal(F.e->local, 0);
    assert_false(F.e->ops->ready(F.e));
    assert_int_equal(reap(), 0);

    /* it completes in-process: a delay cannot wait */
    assert_int_equal(F.e->ops->queue(F.e, &prep(4, VBLK_IO_DELAY, -1, 0, 1000000)->io),
                     -EOPNOTSUPP);
    assert_int_equal(F.e->local, 0);

    /* many at once: no depth bound, every one reaped once */
    for (unsigned i = 0; i < MAXIO; i++)
        queue(prep_rw(i, VBLK_IO_READ, (uint64_t)i * BS, r, BS, NULL));
    F.completed = 0;
    wait_for(MAXIO);
    for (unsigned i = 0; i < MAXIO; i++)
        assert_int_equal(F.t[i].calls, 1);
    run_end();
}

int main(void)
{
    const char *filter = getenv("VBLK_TEST_FILTER"); /* e.g. test_many_ios */

    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_vectored_write_read, teardown),
        cmocka_unit_test_teardown(test_single_segment, teardown),
        cmocka_unit_test_teardown(test_read_past_eof, teardown),
        cmocka_unit_test_teardown(test_dsync_write, teardown),
        cmocka_unit_test_teardown(test_flush, teardown),
        cmocka_unit_test_teardown(test_punch_hole, teardown),
        cmocka_unit_test_teardown(test_zero_range, teardown),
        cmocka_unit_test_teardown(test_bad_fd, teardown),
        cmocka_unit_test_teardown(test_many_ios, teardown),
        cmocka_unit_test_teardown(test_burst_beyond_depth, teardown),
        cmocka_unit_test_teardown(test_delay, teardown),
        cmocka_unit_test_teardown(test_ready, teardown),
        cmocka_unit_test_teardown(test_ready_only_when_complete, teardown),
        cmocka_unit_test_teardown(test_destroy_idle, teardown),
        cmocka_unit_test_teardown(test_fixed_buffers, teardown),
        cmocka_unit_test_teardown(test_fixed_buffers_replaced, teardown),
        cmocka_unit_test_teardown(test_fixed_fallback, teardown),
        cmocka_unit_test_teardown(test_fixed_big, teardown),
        cmocka_unit_test_teardown(test_null_engine, teardown),
    };

    if (filter && *filter)
        cmocka_set_test_filter(filter);
    return cmocka_run_group_tests_name("engines", tests, NULL, NULL);
}
