/* test_engines.c - every I/O engine (io_uring, Linux AIO, thread pool) over every operation,
 * as liburing's tests loop over setups: each test runs once per engine. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "engine/engine.h"

#define BLK 4096

static const struct vblk_engine_ops *const engines[] = {&vblk_engine_uring, &vblk_engine_aio,
                                                        &vblk_engine_threads};

static char path[64];
static int fd_direct = -1, fd_buffered = -1;
static unsigned completions;

static void count_done(struct vblk_io *io)
{
    completions++;
}

static int setup(void **state)
{
    snprintf(path, sizeof(path), "/var/tmp/vblk-engine-XXXXXX");
    fd_buffered = mkstemp(path);
    if (fd_buffered < 0 || ftruncate(fd_buffered, 64 * BLK) < 0)
        return -1;
    fd_direct = open(path, O_RDWR | O_DIRECT | O_CLOEXEC); /* -1 where O_DIRECT is unsupported */
    return 0;
}

static int teardown(void **state)
{
    close(fd_buffered);
    if (fd_direct >= 0)
        close(fd_direct);
    unlink(path);
    return 0;
}

static struct vblk_engine *make(const struct vblk_engine_ops *ops, unsigned depth)
{
    struct vblk_engine *e = NULL;

    assert_int_equal(ops->create(&e, depth), 0);
    return e;
}

/* Submit what is queued and reap until `want` completions came (10 s at most). */
static void run_until(struct vblk_engine *e, unsigned want)
{
    time_t t0 = time(NULL);

    e->ops->submit(e);
    while (completions < want) {
        if (!e->local) {
            struct pollfd p = {.fd = e->efd, .events = POLLIN};
            eventfd_t v;

            (void)poll(&p, 1, 100);
            (void)eventfd_read(e->efd, &v);
        }
        e->ops->reap(e, vblk_io_complete, NULL);
        if (e->pending)
            e->ops->submit(e);
        assert_true(time(NULL) - t0 < 10);
    }
}

static void init_io(struct vblk_io *io, struct vblk_engine *e, uint8_t op, int fd,
                    const struct iovec *iov, unsigned cnt, uint64_t off, uint64_t len)
{
    memset(io, 0, sizeof(*io));
    io->op = op;
    io->fd = fd;
    io->iov = iov;
    io->iovcnt = cnt;
    io->offset = off;
    io->len = len;
    io->cb = count_done;
    io->engine = e;
}

static void one(struct vblk_engine *e, struct vblk_io *io)
{
    completions = 0;
    assert_int_equal(e->ops->queue(e, io), 0);
    run_until(e, 1);
}

static uint8_t *buf(size_t n, int fill)
{
    uint8_t *b = aligned_alloc(BLK, n);

    assert_non_null(b);
    memset(b, fill, n);
    return b;
}

/* Vectored write then read back, single-segment and several segments, buffered and O_DIRECT. */
static void test_write_read_back(void **state)
{
    for (unsigned k = 0; k < 3; k++) {
        struct vblk_engine *e = make(engines[k], 64);
        int fds[2] = {fd_buffered, fd_direct};

        for (unsigned f = 0; f < 2; f++) {
            uint8_t *w = buf(4 * BLK, 0), *r = buf(4 * BLK, 0);
            struct iovec wv[3] = {{w, BLK}, {w + BLK, 2 * BLK}, {w + 3 * BLK, BLK}};
            struct iovec rv[1] = {{r, 4 * BLK}};
            struct vblk_io io;

            if (fds[f] < 0)
                continue;
            for (unsigned i = 0; i < 4 * BLK; i++)
                w[i] = (uint8_t)(i * 13 + k + f);
            init_io(&io, e, VBLK_IO_WRITE, fds[f], wv, 3, 8 * BLK, 4 * BLK);
            one(e, &io);
            assert_int_equal(io.res, 4 * BLK);
            init_io(&io, e, VBLK_IO_READ, fds[f], rv, 1, 8 * BLK, 4 * BLK);
            one(e, &io);
            assert_int_equal(io.res, 4 * BLK);
            assert_memory_equal(r, w, 4 * BLK);
            /* a durable write (write-through) */
            init_io(&io, e, VBLK_IO_WRITE, fds[f], wv, 1, 0, BLK);
            io.rw_flags = RWF_DSYNC;
            one(e, &io);
            assert_int_equal(io.res, BLK);
            free(w);
            free(r);
        }
        e->ops->destroy(e);
    }
}

/* A read that runs past the end of the file comes back short: res < len. */
static void test_read_past_eof_is_short(void **state)
{
    for (unsigned k = 0; k < 3; k++) {
        struct vblk_engine *e = make(engines[k], 8);
        uint8_t *r = buf(2 * BLK, 0);
        struct iovec v = {r, 2 * BLK};
        struct vblk_io io;

        init_io(&io, e, VBLK_IO_READ, fd_buffered, &v, 1, 63 * BLK, 2 * BLK);
        one(e, &io);
        assert_int_equal(io.res, BLK);
        free(r);
        e->ops->destroy(e);
    }
}

static void test_flush_and_fallocate(void **state)
{
    for (unsigned k = 0; k < 3; k++) {
        struct vblk_engine *e = make(engines[k], 8);
        uint8_t *w = buf(4 * BLK, 0x5a), *r = buf(4 * BLK, 0xff);
        struct iovec wv = {w, 4 * BLK}, rv = {r, 4 * BLK};
        struct vblk_io io;

        init_io(&io, e, VBLK_IO_WRITE, fd_buffered, &wv, 1, 16 * BLK, 4 * BLK);
        one(e, &io);
        init_io(&io, e, VBLK_IO_FLUSH, fd_buffered, NULL, 0, 0, 0);
        one(e, &io);
        assert_int_equal(io.res, 0);
        init_io(&io, e, VBLK_IO_FALLOCATE, fd_buffered, NULL, 0, 16 * BLK, 2 * BLK);
        io.mode = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE;
        one(e, &io);
        assert_int_equal(io.res, 0);
        init_io(&io, e, VBLK_IO_FALLOCATE, fd_buffered, NULL, 0, 18 * BLK, BLK);
        io.mode = FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE;
        one(e, &io);
        assert_true(io.res == 0 || io.res == -EOPNOTSUPP);
        init_io(&io, e, VBLK_IO_READ, fd_buffered, &rv, 1, 16 * BLK, 4 * BLK);
        one(e, &io);
        assert_int_equal(io.res, 4 * BLK);
        for (unsigned i = 0; i < 2 * BLK; i++)
            assert_int_equal(r[i], 0); /* the punched hole */
        if (r[2 * BLK] == 0)
            assert_int_equal(r[3 * BLK - 1], 0); /* zeroed range, where supported */
        assert_int_equal(r[3 * BLK], 0x5a);      /* untouched */
        free(w);
        free(r);
        e->ops->destroy(e);
    }
}

/* An error reaches io->res as a negative errno. */
static void test_bad_fd_gives_negative_errno(void **state)
{
    for (unsigned k = 0; k < 3; k++) {
        struct vblk_engine *e = make(engines[k], 8);
        uint8_t *r = buf(BLK, 0);
        struct iovec v = {r, BLK};
        struct vblk_io io;
        int ro = open(path, O_RDONLY | O_CLOEXEC);

        init_io(&io, e, VBLK_IO_WRITE, ro, &v, 1, 0, BLK); /* a write to a read-only fd */
        completions = 0;
        if (e->ops->queue(e, &io) == 0) {
            run_until(e, 1);
            assert_int_equal(io.res, -EBADF);
        }
        close(ro);
        free(r);
        e->ops->destroy(e);
    }
}

/* More I/O than the engine's depth: queue() says -EAGAIN, the caller submits, reaps and queues
 * the rest; every I/O completes exactly once. */
static void test_more_than_depth_completes_each_once(void **state)
{
    enum { N = 200 };

    for (unsigned k = 0; k < 3; k++) {
        struct vblk_engine *e = make(engines[k], 8);
        static struct vblk_io io[N];
        uint8_t *b = buf(BLK, 1);
        struct iovec v = {b, BLK};
        unsigned queued = 0, agains = 0;
        time_t t0 = time(NULL);

        completions = 0;
        for (unsigned i = 0; i < N; i++)
            init_io(&io[i], e, VBLK_IO_READ, fd_buffered, &v, 1, (i % 64) * (uint64_t)BLK, BLK);
        while (completions < N) {
            while (queued < N) {
                int r = e->ops->queue(e, &io[queued]);

                if (r == -EAGAIN) {
                    agains++;
                    break;
                }
                assert_int_equal(r, 0);
                queued++;
            }
            run_until(e, completions + 1 > queued ? queued : completions + 1);
            assert_true(time(NULL) - t0 < 10);
        }
        run_until(e, N);
        assert_int_equal(completions, N);
        for (unsigned i = 0; i < N; i++)
            assert_int_equal(io[i].res, BLK);
        if (engines[k] == &vblk_engine_aio) /* its context holds depth; the others queue more */
            assert_true(agains > 0);
        free(b);
        e->ops->destroy(e);
    }
}

/* ready() tells, without a syscall, that completions wait; reap empties it. */
static void test_ready_reports_waiting_completions(void **state)
{
    for (unsigned k = 0; k < 3; k++) {
        struct vblk_engine *e = make(engines[k], 8);
        uint8_t *b = buf(BLK, 0);
        struct iovec v = {b, BLK};
        struct vblk_io io;
        time_t t0 = time(NULL);

        init_io(&io, e, VBLK_IO_READ, fd_buffered, &v, 1, 0, BLK);
        completions = 0;
        assert_int_equal(e->ops->queue(e, &io), 0);
        e->ops->submit(e);
        while (!e->ops->ready(e)) {
            struct pollfd p = {.fd = e->efd, .events = POLLIN};

            (void)poll(&p, 1, 10);
            assert_true(time(NULL) - t0 < 10);
        }
        assert_int_equal(completions, 0);
        e->ops->reap(e, vblk_io_complete, NULL);
        assert_int_equal(completions, 1);
        free(b);
        e->ops->destroy(e);
    }
}

/* A delay (fault injection) completes after its time with res 0 where the engine keeps time,
 * and is refused where it cannot without stalling its thread (Linux AIO, null). */
static void test_delay(void **state)
{
    const struct vblk_engine_ops *all[] = {&vblk_engine_uring, &vblk_engine_aio,
                                           &vblk_engine_threads, &vblk_engine_null};

    for (unsigned k = 0; k < 4; k++) {
        struct vblk_engine *e = make(all[k], 8);
        struct vblk_io io;
        struct timespec t0, t1;
        int r;

        init_io(&io, e, VBLK_IO_DELAY, -1, NULL, 0, 0, 50 * 1000000ull);
        completions = 0;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        r = e->ops->queue(e, &io);
        if (all[k] == &vblk_engine_aio || all[k] == &vblk_engine_null) {
            assert_int_equal(r, -EOPNOTSUPP);
        } else {
            assert_int_equal(r, 0);
            run_until(e, 1);
            clock_gettime(CLOCK_MONOTONIC, &t1);
            assert_int_equal(io.res, 0);
            assert_true((t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000 >= 49);
        }
        e->ops->destroy(e);
    }
}

/* The null engine: reads are zero-filled, everything completes in-process. */
static void test_null_engine(void **state)
{
    struct vblk_engine *e = make(&vblk_engine_null, 8);
    uint8_t *b = buf(BLK, 0xaa);
    struct iovec v = {b, BLK};
    struct vblk_io io;

    init_io(&io, e, VBLK_IO_READ, -1, &v, 1, 0, BLK);
    one(e, &io);
    assert_int_equal(io.res, BLK);
    assert_int_equal(b[0], 0);
    assert_int_equal(b[BLK - 1], 0);
    free(b);
    e->ops->destroy(e);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_write_read_back),
        cmocka_unit_test(test_read_past_eof_is_short),
        cmocka_unit_test(test_flush_and_fallocate),
        cmocka_unit_test(test_bad_fd_gives_negative_errno),
        cmocka_unit_test(test_more_than_depth_completes_each_once),
        cmocka_unit_test(test_ready_reports_waiting_completions),
        cmocka_unit_test(test_delay),
        cmocka_unit_test(test_null_engine),
    };

    return cmocka_run_group_tests_name("engines", tests, setup, teardown);
}
