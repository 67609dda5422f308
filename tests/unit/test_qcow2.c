/* test_qcow2.c - the qcow2 format driver against images made by qemu-img/qemu-io: every feature
 * read and written, results checked with `qemu-img check` (must be clean) and `qemu-img compare`
 * against a raw image with the expected content; hostile headers refused by name; bad tables
 * giving EIO; metadata write order seen through a recording child driver.
 *
 * Requests are driven on this thread with our own io_uring engine (threads if io_uring is
 * unavailable).  Skips (exit 77 through cmocka's skip) when qemu-img is missing.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "bdev/bdev.h"
#include "bdev/qcow2.h"

static char dir[256];
static struct vblk_engine *eng;
static char err[512];
static enum vblk_cache cache_mode = VBLK_CACHE_WRITEBACK;

static int sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int sh(const char *fmt, ...)
{
    char cmd[2048];
    va_list ap;
    int st;

    va_start(ap, fmt);
    vsnprintf(cmd, sizeof(cmd), fmt, ap);
    va_end(ap);
    st = system(cmd);
    if (st == -1 || !WIFEXITED(st))
        return -1;
    return WEXITSTATUS(st);
}

static const char *P(const char *name)
{
    static char bufs[8][512];
    static int i;

    i = (i + 1) % 8;
    snprintf(bufs[i], sizeof(bufs[i]), "%s/%s", dir, name);
    return bufs[i];
}

static struct vblk_bdev_conf conf(const char *file, bool ro)
{
    return (struct vblk_bdev_conf){.name = "t",
                                   .file = file,
                                   .readonly = ro,
                                   .cache = cache_mode,
                                   .format = VBLK_FORMAT_QCOW2,
                                   .lbs = 512,
                                   .discard_unmap = true,
                                   .iothreads = 1};
}

static struct vblk_bdev *open_q(const char *file, bool ro)
{
    struct vblk_bdev_conf c = conf(file, ro);
    struct vblk_bdev *b = NULL;
    int r = vblk_bdev_open_stack(&b, &c, err, sizeof(err));

    if (r < 0)
        print_error("open %s: %s\n", file, err);
    assert_int_equal(r, 0);
    return b;
}

static int open_err(const char *file, bool ro)
{
    struct vblk_bdev_conf c = conf(file, ro);
    struct vblk_bdev *b = NULL;
    int r;

    err[0] = 0;
    r = vblk_bdev_open_stack(&b, &c, err, sizeof(err));
    if (r == 0)
        vblk_bdev_close_stack(b);
    return r;
}

struct sreq {
    struct vblk_bdev_req r;
    struct iovec iov;
    bool done;
    int ret;
};

static void sreq_done(struct vblk_bdev_req *r, int ret)
{
    struct sreq *s = (struct sreq *)r;

    s->done = true;
    s->ret = ret;
}

/* Drive the engine until *done (20 s at most: a lost completion fails instead of hanging). */
static void run_until(bool *done)
{
    time_t t0 = time(NULL);

    while (!*done) {
        struct pollfd p = {.fd = eng->efd, .events = POLLIN};
        eventfd_t v;

        if (time(NULL) - t0 > 20)
            fail_msg("%s: a request did not complete in 20 s", eng->ops->name);

        eng->ops->submit(eng);
        if (*done)
            break;
        if (eng->ops->reap(eng, vblk_io_complete, NULL))
            continue;
        poll(&p, 1, 100);
        if (p.revents & POLLIN)
            eventfd_read(eng->efd, &v);
        eng->ops->reap(eng, vblk_io_complete, NULL);
    }
}

static void start(struct vblk_bdev *b, struct sreq *s, int op, uint64_t off, void *buf,
                  uint64_t len, unsigned flags)
{
    memset(s, 0, sizeof(*s));
    s->iov = (struct iovec){buf, len};
    s->r.op = (uint8_t)op;
    s->r.flags = (uint8_t)flags;
    s->r.iov = &s->iov;
    s->r.iovcnt = buf ? 1 : 0;
    s->r.offset = off;
    s->r.len = len;
    s->r.done = sreq_done;
    vblk_bdev_submit(b, eng, &s->r);
}

static int io(struct vblk_bdev *b, int op, uint64_t off, void *buf, uint64_t len, unsigned flags)
{
    struct sreq s;

    start(b, &s, op, off, buf, len, flags);
    run_until(&s.done);
    return s.ret;
}

static void fill(uint8_t *p, size_t len, unsigned seed)
{
    for (size_t i = 0; i < len; i++)
        p[i] = (uint8_t)((i / 512) * 7 + seed + (i % 512 == 0));
}

/* the raw mirror: same write applied to a raw file */
static void mirror(const char *raw, uint64_t off, const void *buf, uint64_t len)
{
    int fd = open(raw, O_WRONLY);

    assert_true(fd >= 0);
    assert_int_equal(pwrite(fd, buf, len, (off_t)off), (ssize_t)len);
    close(fd);
}

static void expect_clean(const char *img)
{
    int r = sh("qemu-img check -q '%s' >/dev/null 2>&1", img);

    if (r)
        sh("qemu-img check '%s' >&2", img);
    assert_int_equal(r, 0);
}

static void expect_same(const char *img, const char *raw)
{
    int r = sh("qemu-img compare -q -f qcow2 -F raw '%s' '%s' 2>&1", img, raw);

    assert_int_equal(r, 0);
}

static void expect_read(struct vblk_bdev *b, uint64_t off, const void *want, size_t len)
{
    uint8_t *buf = aligned_alloc(4096, (len + 4095) & ~(size_t)4095);

    assert_int_equal(io(b, VBLK_BDEV_READ, off, buf, len, 0), 0);
    assert_memory_equal(buf, want, len);
    free(buf);
}

/* Random writes of random sizes through the driver, mirrored to raw; then check + compare. */
static void random_writes(const char *img, const char *raw, uint64_t size, unsigned n,
                          unsigned max_sectors, unsigned seed, unsigned depth)
{
    struct vblk_bdev *b = open_q(img, false);
    struct sreq *rq = calloc(depth, sizeof(*rq));
    uint8_t **bufs = calloc(depth, sizeof(*bufs));

    srand(seed);
    for (unsigned i = 0; i < n; i += depth) {
        for (unsigned d = 0; d < depth && i + d < n; d++) {
            uint64_t len = (uint64_t)(1 + rand() % max_sectors) * 512;
            uint64_t off = (uint64_t)(rand() % (int)((size - len) / 512)) * 512;

            free(bufs[d]);
            bufs[d] = aligned_alloc(4096, (len + 4095) & ~4095ull); /* guest pages: aligned */
            fill(bufs[d], len, i + d);
            start(b, &rq[d], VBLK_BDEV_WRITE, off, bufs[d], len, 0);
            mirror(raw, off, bufs[d], len);
            run_until(&rq[d].done);
            assert_int_equal(rq[d].ret, 0);
        }
    }
    assert_int_equal(io(b, VBLK_BDEV_FLUSH, 0, NULL, 0, 0), 0);
    vblk_bdev_close_stack(b);
    for (unsigned d = 0; d < depth; d++)
        free(bufs[d]);
    free(bufs);
    free(rq);
    expect_clean(img);
    expect_same(img, raw);
}

static void mkraw(const char *raw, uint64_t size)
{
    assert_int_equal(sh("rm -f '%s' && truncate -s %llu '%s'", raw, (unsigned long long)size, raw),
                     0);
}

/* --- tests --- */

static void test_reads_what_qemu_io_wrote(void **state)
{
    uint8_t want[65536];
    struct vblk_bdev *b;

    assert_int_equal(sh("qemu-img create -q -f qcow2 %s 16M && qemu-io -f qcow2 -c 'write -P 0xab "
                        "64k 64k' -c 'write -P 0xcd 1M 4k' %s >/dev/null",
                        P("r.qcow2"), P("r.qcow2")),
                     0);
    b = open_q(P("r.qcow2"), true);
    assert_int_equal(b->size, 16u << 20);
    memset(want, 0, sizeof(want));
    expect_read(b, 0, want, 65536);
    memset(want, 0xab, sizeof(want));
    expect_read(b, 65536, want, 65536);
    memset(want, 0xcd, 4096);
    expect_read(b, 1 << 20, want, 4096);
    /* read-only: writes refused, the image untouched */
    assert_int_equal(io(b, VBLK_BDEV_WRITE, 0, want, 512, 0), -EROFS);
    vblk_bdev_close_stack(b);
    expect_clean(P("r.qcow2"));
}

static void test_writes_every_cluster_size(void **state)
{
    static const unsigned sizes[] = {512, 4096, 65536, 2u << 20};

    for (unsigned i = 0; i < 4; i++) {
        assert_int_equal(
            sh("qemu-img create -q -f qcow2 -o cluster_size=%u %s 8M", sizes[i], P("cs.qcow2")), 0);
        mkraw(P("cs.raw"), 8 << 20);
        random_writes(P("cs.qcow2"), P("cs.raw"), 8 << 20, 60, 300, i, 1);
    }
}

static void test_writes_v2_image(void **state)
{
    assert_int_equal(sh("qemu-img create -q -f qcow2 -o compat=0.10 %s 32M", P("v2.qcow2")), 0);
    mkraw(P("v2.raw"), 32 << 20);
    random_writes(P("v2.qcow2"), P("v2.raw"), 32 << 20, 100, 256, 7, 1);
}

static void test_writes_every_refcount_width(void **state)
{
    for (unsigned bits = 1; bits <= 64; bits *= 2) {
        assert_int_equal(sh("qemu-img create -q -f qcow2 -o refcount_bits=%u,cluster_size=4k %s "
                            "16M",
                            bits, P("rc.qcow2")),
                         0);
        mkraw(P("rc.raw"), 16 << 20);
        random_writes(P("rc.qcow2"), P("rc.raw"), 16 << 20, 40, 128, bits, 1);
    }
}

/* 512-byte clusters, 64-bit refcounts: one refcount table cluster maps 2 MiB of image; writing
 * 24 MiB makes the table grow (several times) */
static void test_refcount_table_grows(void **state)
{
    struct vblk_bdev *b;
    static uint8_t buf[1 << 20] __attribute__((aligned(4096)));

    assert_int_equal(
        sh("qemu-img create -q -f qcow2 -o cluster_size=512,refcount_bits=64 %s 32M", P("g.qcow2")),
        0);
    mkraw(P("g.raw"), 32 << 20);
    b = open_q(P("g.qcow2"), false);
    for (int i = 0; i < 24; i++) {
        fill(buf, sizeof(buf), (unsigned)i);
        assert_int_equal(io(b, VBLK_BDEV_WRITE, (uint64_t)i << 20, buf, sizeof(buf), 0), 0);
        mirror(P("g.raw"), (uint64_t)i << 20, buf, sizeof(buf));
    }
    vblk_bdev_close_stack(b);
    expect_clean(P("g.qcow2"));
    expect_same(P("g.qcow2"), P("g.raw"));
}

static void test_small_caches_evict_and_write_back(void **state)
{
    struct vblk_bdev_conf c;
    struct vblk_bdev *b;
    uint8_t buf[4096];

    /* 4k clusters: an L2 table maps 2 MiB; 64 MiB needs 32 tables, the cache holds 4 */
    assert_int_equal(sh("qemu-img create -q -f qcow2 -o cluster_size=4k %s 64M", P("sc.qcow2")), 0);
    mkraw(P("sc.raw"), 64 << 20);
    c = conf(P("sc.qcow2"), false);
    c.l2_cache_size = 16384;
    c.refcount_cache_size = 16384;
    assert_int_equal(vblk_bdev_open_stack(&b, &c, err, sizeof(err)), 0);
    srand(3);
    for (int i = 0; i < 400; i++) {
        uint64_t off = (uint64_t)(rand() % (64 * 256)) * 4096 + (uint64_t)(rand() % 8) * 512;

        if (off + sizeof(buf) > (64u << 20))
            off = (64u << 20) - sizeof(buf);
        fill(buf, sizeof(buf), (unsigned)i);
        assert_int_equal(io(b, VBLK_BDEV_WRITE, off, buf, sizeof(buf), 0), 0);
        mirror(P("sc.raw"), off, buf, sizeof(buf));
        if (i % 50 == 0) { /* read back through the evicting cache */
            expect_read(b, off, buf, sizeof(buf));
        }
    }
    vblk_bdev_close_stack(b);
    expect_clean(P("sc.qcow2"));
    expect_same(P("sc.qcow2"), P("sc.raw"));
}

static void test_concurrent_writes_to_one_cluster(void **state)
{
    struct vblk_bdev *b;
    struct sreq rq[64];
    static uint8_t bufs[64][512];
    assert_int_equal(sh("qemu-img create -q -f qcow2 %s 4M", P("cc.qcow2")), 0);
    mkraw(P("cc.raw"), 4 << 20);
    b = open_q(P("cc.qcow2"), false);
    /* 64 writes into the same two clusters, all in flight at once: one allocation each */
    for (int i = 0; i < 64; i++) {
        uint64_t off = (uint64_t)i * 2048 + 512 * (uint64_t)(i % 4);

        memset(bufs[i], i + 1, 512);
        start(b, &rq[i], VBLK_BDEV_WRITE, off, bufs[i], 512, 0);
        mirror(P("cc.raw"), off, bufs[i], 512);
    }
    for (int i = 0; i < 64; i++)
        run_until(&rq[i].done);
    for (int i = 0; i < 64; i++)
        assert_int_equal(rq[i].ret, 0);
    vblk_bdev_close_stack(b);
    expect_clean(P("cc.qcow2"));
    expect_same(P("cc.qcow2"), P("cc.raw"));
}

static void test_backing_chain_reads_and_copy_on_write(void **state)
{
    uint8_t buf[8192];
    struct vblk_bdev *b;

    /* raw base <- qcow2 mid <- qcow2 top */
    mkraw(P("base.raw"), 8 << 20);
    assert_int_equal(sh("qemu-io -f raw -c 'write -P 0x11 0 8M' %s >/dev/null", P("base.raw")), 0);
    assert_int_equal(sh("cd %s && qemu-img create -q -f qcow2 -b base.raw -F raw mid.qcow2 && "
                        "qemu-io -f qcow2 -c 'write -P 0x22 1M 64k' mid.qcow2 >/dev/null && "
                        "qemu-img create -q -f qcow2 -b mid.qcow2 -F qcow2 top.qcow2 && "
                        "qemu-io -f qcow2 -c 'write -P 0x33 2M 4k' top.qcow2 >/dev/null",
                        dir),
                     0);
    assert_int_equal(sh("qemu-img convert -O raw %s %s", P("top.qcow2"), P("top.raw")), 0);
    b = open_q(P("top.qcow2"), false);
    memset(buf, 0x11, sizeof(buf));
    expect_read(b, 0, buf, sizeof(buf));
    memset(buf, 0x22, sizeof(buf));
    expect_read(b, 1 << 20, buf, sizeof(buf));
    memset(buf, 0x33, 4096);
    expect_read(b, 2 << 20, buf, 4096);
    /* partial writes: the rest of the cluster comes from the backing chain */
    fill(buf, sizeof(buf), 9);
    assert_int_equal(io(b, VBLK_BDEV_WRITE, (1 << 20) + 4096, buf, 8192, 0), 0);
    mirror(P("top.raw"), (1 << 20) + 4096, buf, 8192);
    assert_int_equal(io(b, VBLK_BDEV_WRITE, 3 * 65536 + 1024, buf, 1024, 0), 0);
    mirror(P("top.raw"), 3 * 65536 + 1024, buf, 1024);
    vblk_bdev_close_stack(b);
    expect_clean(P("top.qcow2"));
    assert_int_equal(sh("qemu-img compare -q %s %s", P("top.qcow2"), P("top.raw")), 0);
    /* the backing images are untouched */
    expect_clean(P("mid.qcow2"));
}

static void test_backing_loop_is_refused(void **state)
{
    assert_int_equal(sh("cd %s && qemu-img create -q -f qcow2 la.qcow2 1M && qemu-img create -q "
                        "-f qcow2 -b la.qcow2 -F qcow2 lb.qcow2 && qemu-img rebase -u -b "
                        "lb.qcow2 -F qcow2 la.qcow2",
                        dir),
                     0);
    assert_int_equal(open_err(P("lb.qcow2"), true), -ELOOP);
    assert_non_null(strstr(err, "loop"));
}

static void test_backing_chain_depth_is_capped(void **state)
{
    uint8_t buf[512];
    struct vblk_bdev *b;

    /* 16 images (the limit) open and read through; 17 are refused */
    assert_int_equal(sh("cd %s && qemu-img create -q -f qcow2 d0.qcow2 1M && qemu-io -f qcow2 -c "
                        "'write -P 9 0 512' d0.qcow2 >/dev/null && for i in $(seq 1 16); do "
                        "qemu-img create -q -f qcow2 -b d$((i - 1)).qcow2 -F qcow2 d$i.qcow2 || "
                        "exit 1; done",
                        dir),
                     0);
    b = open_q(P("d15.qcow2"), true);
    memset(buf, 9, sizeof(buf));
    expect_read(b, 0, buf, sizeof(buf));
    vblk_bdev_close_stack(b);
    assert_int_equal(open_err(P("d16.qcow2"), true), -ELOOP);
    assert_non_null(strstr(err, "deeper than"));
}

static void compressed(const char *type)
{
    static uint8_t buf[65536 + 4096] __attribute__((aligned(4096)));
    struct vblk_bdev *b;

    mkraw(P("cz.raw"), 4 << 20);
    assert_int_equal(sh("qemu-io -f raw -c 'write -P 0x5a 0 1M' -c 'write -P 0x3c 1M 100k' %s "
                        ">/dev/null && qemu-img convert -c -O qcow2 -o compression_type=%s %s %s",
                        P("cz.raw"), type, P("cz.raw"), P("cz.qcow2")),
                     0);
    b = open_q(P("cz.qcow2"), false);
    memset(buf, 0x5a, sizeof(buf));
    expect_read(b, 4096, buf, 8192);
    expect_read(b, 65536 - 2048, buf, 4096); /* across two compressed clusters */
    memset(buf, 0x3c, sizeof(buf));
    expect_read(b, (1 << 20) + 512, buf, 65536);
    /* a partial write to a compressed cluster: copy-on-write through decompression */
    fill(buf, 4096, 5);
    assert_int_equal(io(b, VBLK_BDEV_WRITE, 8192, buf, 4096, 0), 0);
    mirror(P("cz.raw"), 8192, buf, 4096);
    expect_read(b, 8192, buf, 4096);
    vblk_bdev_close_stack(b);
    expect_clean(P("cz.qcow2"));
    expect_same(P("cz.qcow2"), P("cz.raw"));
}

static void test_compressed_zlib(void **state)
{
    compressed("zlib");
}

static void test_compressed_zstd(void **state)
{
    compressed("zstd");
}

static void test_zero_clusters_discard_and_write_zeroes(void **state)
{
    static const char *compat[] = {"1.1", "0.10"};
    uint8_t buf[131072];

    for (int v = 0; v < 2; v++) {
        struct vblk_bdev *b;

        mkraw(P("z.raw"), 8 << 20);
        assert_int_equal(sh("qemu-io -f raw -c 'write -P 0x77 0 4M' %s >/dev/null && "
                            "qemu-img convert -O qcow2 -o compat=%s %s %s",
                            P("z.raw"), compat[v], P("z.raw"), P("z.qcow2")),
                         0);
        if (v == 0) /* qemu-io's zero clusters read as zero */
            assert_int_equal(sh("qemu-io -f qcow2 -c 'write -z 64k 64k' %s >/dev/null && "
                                "qemu-io -f raw -c 'write -z 64k 64k' %s >/dev/null",
                                P("z.qcow2"), P("z.raw")),
                             0);
        b = open_q(P("z.qcow2"), false);
        memset(buf, 0, sizeof(buf));
        /* write-zeroes, full clusters and partial, with and without unmap */
        assert_int_equal(io(b, VBLK_BDEV_WRITE_ZEROES, 128 * 1024, NULL, 131072, 0), 0);
        mirror(P("z.raw"), 128 * 1024, buf, 131072);
        assert_int_equal(io(b, VBLK_BDEV_WRITE_ZEROES, 512 * 1024 + 512, NULL, 70000 - 70000 % 512,
                            VBLK_BDEV_F_UNMAP),
                         0);
        mirror(P("z.raw"), 512 * 1024 + 512, buf, 70000 - 70000 % 512);
        expect_read(b, 128 * 1024, buf, 131072);
        /* discard: the guest may read anything afterwards; we check consistency, then
         * write over it */
        assert_int_equal(io(b, VBLK_BDEV_DISCARD, 1 << 20, NULL, 1 << 20, 0), 0);
        fill(buf, sizeof(buf), 1);
        assert_int_equal(io(b, VBLK_BDEV_WRITE, 1 << 20, buf, 4096, 0), 0);
        mirror(P("z.raw"), 1 << 20, buf, 4096);
        assert_int_equal(io(b, VBLK_BDEV_FLUSH, 0, NULL, 0, 0), 0);
        vblk_bdev_close_stack(b);
        expect_clean(P("z.qcow2"));
        /* compare everything but the discarded range [1M+4k, 2M) */
        assert_int_equal(sh("qemu-io -f qcow2 -c 'write -z %d %d' %s >/dev/null && qemu-io -f "
                            "raw -c 'write -z %d %d' %s >/dev/null",
                            (1 << 20) + 4096, (1 << 20) - 4096, P("z.qcow2"), (1 << 20) + 4096,
                            (1 << 20) - 4096, P("z.raw")),
                         0);
        expect_same(P("z.qcow2"), P("z.raw"));
    }
}

static void test_extended_l2_subclusters(void **state)
{
    uint8_t buf[8192];
    struct vblk_bdev *b;

    mkraw(P("x.raw"), 16 << 20);
    assert_int_equal(sh("qemu-img create -q -f qcow2 -o extended_l2=on,cluster_size=64k %s 16M "
                        "&& qemu-io -f qcow2 -c 'write -P 0x44 2k 2k' -c 'write -z 8k 4k' %s "
                        ">/dev/null && qemu-io -f raw -c 'write -P 0x44 2k 2k' %s >/dev/null",
                        P("x.qcow2"), P("x.qcow2"), P("x.raw")),
                     0);
    b = open_q(P("x.qcow2"), false);
    memset(buf, 0, sizeof(buf));
    expect_read(b, 0, buf, 2048);
    memset(buf, 0x44, 2048);
    expect_read(b, 2048, buf, 2048);
    vblk_bdev_close_stack(b);
    random_writes(P("x.qcow2"), P("x.raw"), 16 << 20, 50, 200, 11, 1);
}

/* cache=none: the image is opened O_DIRECT; metadata I/O is aligned, compressed reads bounce */
static void test_cache_none_direct_io(void **state)
{
    int fd = open(P("probe"), O_CREAT | O_RDWR | O_DIRECT, 0644);

    if (fd < 0) {
        skip(); /* no O_DIRECT on this file system */
        return;
    }
    close(fd);
    cache_mode = VBLK_CACHE_NONE;
    assert_int_equal(sh("qemu-img create -q -f qcow2 -o cluster_size=4k %s 16M", P("dio.qcow2")),
                     0);
    mkraw(P("dio.raw"), 16 << 20);
    random_writes(P("dio.qcow2"), P("dio.raw"), 16 << 20, 60, 64, 12, 1);
    compressed("zlib");
    cache_mode = VBLK_CACHE_WRITEBACK;
}

static void test_snapshots_are_preserved(void **state)
{
    uint8_t buf[4096];
    struct vblk_bdev *b;

    assert_int_equal(sh("qemu-img create -q -f qcow2 %s 8M && qemu-io -f qcow2 -c 'write -P 0x61 "
                        "0 1M' %s >/dev/null && qemu-img snapshot -c s1 %s",
                        P("s.qcow2"), P("s.qcow2"), P("s.qcow2")),
                     0);
    assert_int_equal(sh("qemu-img convert -O raw %s %s && cp %s %s", P("s.qcow2"), P("s.raw"),
                        P("s.raw"), P("s1.raw")),
                     0);
    b = open_q(P("s.qcow2"), false);
    fill(buf, sizeof(buf), 2);
    assert_int_equal(io(b, VBLK_BDEV_WRITE, 4096, buf, 4096, 0), 0); /* shared: COW */
    mirror(P("s.raw"), 4096, buf, 4096);
    assert_int_equal(io(b, VBLK_BDEV_WRITE, 4096, buf, 4096, 0), 0); /* ours now: in place */
    assert_int_equal(io(b, VBLK_BDEV_DISCARD, 512 * 1024, NULL, 65536, 0), 0);
    assert_int_equal(sh("qemu-io -f raw -c 'write -z 512k 64k' %s >/dev/null", P("s.raw")), 0);
    vblk_bdev_close_stack(b);
    expect_clean(P("s.qcow2"));
    expect_same(P("s.qcow2"), P("s.raw"));
    assert_int_equal(sh("qemu-img convert -O raw -l snapshot.name=s1 %s %s && cmp -s %s %s",
                        P("s.qcow2"), P("snap.raw"), P("snap.raw"), P("s1.raw")),
                     0);
}

static void test_metadata_preallocation(void **state)
{
    assert_int_equal(
        sh("qemu-img create -q -f qcow2 -o preallocation=metadata %s 8M", P("pre.qcow2")), 0);
    mkraw(P("pre.raw"), 8 << 20);
    random_writes(P("pre.qcow2"), P("pre.raw"), 8 << 20, 40, 64, 5, 1);
}

static void test_lazy_refcounts_image(void **state)
{
    assert_int_equal(sh("qemu-img create -q -f qcow2 -o lazy_refcounts=on %s 8M", P("lz.qcow2")),
                     0);
    mkraw(P("lz.raw"), 8 << 20);
    random_writes(P("lz.qcow2"), P("lz.raw"), 8 << 20, 40, 64, 6, 1);
}

static void test_external_data_file(void **state)
{
    assert_int_equal(sh("cd %s && rm -f ed.raw && qemu-img create -q -f qcow2 -o "
                        "data_file=%s,data_file_raw=on ed.qcow2 8M",
                        dir, P("ed.raw")),
                     0);
    mkraw(P("edx.raw"), 8 << 20);
    random_writes(P("ed.qcow2"), P("edx.raw"), 8 << 20, 40, 64, 8, 1);
    assert_int_equal(sh("cmp -s %s %s", P("ed.raw"), P("edx.raw")), 0); /* still raw */
}

static void test_flush_makes_metadata_durable(void **state)
{
    uint8_t buf[4096];
    struct vblk_bdev *b;

    assert_int_equal(sh("qemu-img create -q -f qcow2 %s 8M", P("fl.qcow2")), 0);
    mkraw(P("fl.raw"), 8 << 20);
    b = open_q(P("fl.qcow2"), false);
    for (int i = 0; i < 20; i++) {
        fill(buf, sizeof(buf), (unsigned)i);
        assert_int_equal(io(b, VBLK_BDEV_WRITE, (uint64_t)i * 300 * 1024, buf, 4096, 0), 0);
        mirror(P("fl.raw"), (uint64_t)i * 300 * 1024, buf, 4096);
    }
    assert_int_equal(io(b, VBLK_BDEV_FLUSH, 0, NULL, 0, 0), 0);
    /* a "crash" now: the image as it is on disk must be consistent and complete */
    assert_int_equal(sh("cp %s %s", P("fl.qcow2"), P("crash.qcow2")), 0);
    expect_clean(P("crash.qcow2"));
    expect_same(P("crash.qcow2"), P("fl.raw"));
    /* FUA write: durable with its metadata when it completes */
    fill(buf, sizeof(buf), 99);
    assert_int_equal(io(b, VBLK_BDEV_WRITE, 7 << 20, buf, 4096, VBLK_BDEV_F_FUA), 0);
    mirror(P("fl.raw"), 7 << 20, buf, 4096);
    assert_int_equal(sh("cp %s %s", P("fl.qcow2"), P("crash.qcow2")), 0);
    expect_clean(P("crash.qcow2"));
    expect_same(P("crash.qcow2"), P("fl.raw"));
    vblk_bdev_close_stack(b);
}

/* The driver's metadata I/O is not bounded by the engine's depth (export.c sizes it for guest
 * requests): a flush writes back every dirty L2 table at once.  With an engine of depth 8 and 64
 * dirty tables, io_uring's completion queue (2 x 8) overflows and Linux AIO's context is full;
 * every write must still complete (the bug: a hang, or the flush failing with -EAGAIN). */
static void test_metadata_writeback_beyond_engine_depth(void **state)
{
    static const struct vblk_engine_ops *const ops[] = {&vblk_engine_uring, &vblk_engine_aio,
                                                        &vblk_engine_threads};
    static uint8_t buf[4096] __attribute__((aligned(4096)));
    struct vblk_engine *saved = eng;

    for (unsigned k = 0; k < 3; k++) {
        struct vblk_bdev *b;
        int r;

        if (ops[k]->create(&eng, 8) < 0) {
            print_message("  [ SKIP ] %s: not available here\n", ops[k]->name);
            eng = saved;
            continue;
        }
        /* 4k clusters: an L2 table maps 2 MiB, 128 MiB has 64 of them (all cached) */
        assert_int_equal(
            sh("qemu-img create -q -f qcow2 -o cluster_size=4k %s 128M", P("dp.qcow2")), 0);
        mkraw(P("dp.raw"), 128 << 20);
        b = open_q(P("dp.qcow2"), false);
        for (unsigned i = 0; i < 64; i++) {
            uint64_t off = ((uint64_t)i << 21) + (uint64_t)k * 4096;

            fill(buf, sizeof(buf), i + k);
            assert_int_equal(io(b, VBLK_BDEV_WRITE, off, buf, sizeof(buf), 0), 0);
            mirror(P("dp.raw"), off, buf, sizeof(buf));
        }
        r = io(b, VBLK_BDEV_FLUSH, 0, NULL, 0, 0);
        if (r)
            fail_msg("%s engine, depth 8: the flush failed: %s", ops[k]->name, strerror(-r));
        /* what the flush wrote is on disk: check it before close writes anything more */
        assert_int_equal(sh("cp %s %s", P("dp.qcow2"), P("dp-crash.qcow2")), 0);
        expect_clean(P("dp-crash.qcow2"));
        expect_same(P("dp-crash.qcow2"), P("dp.raw"));
        vblk_bdev_close_stack(b);
        eng->ops->destroy(eng);
        eng = saved;
        expect_clean(P("dp.qcow2"));
    }
}

/* --- a recording child: the order of writes the driver issues --- */

struct rec_ent {
    uint8_t op;
    uint64_t off;
};
static struct rec_ent recs[4096];
static unsigned nrec;
static int fail_after = -1; /* fail writes once this many were recorded */

static int rec_open(struct vblk_bdev *b, const struct vblk_bdev_conf *c, char *e, size_t el)
{
    return 0;
}

static void rec_close(struct vblk_bdev *b)
{
}

static void rec_submit(struct vblk_bdev *b, struct vblk_engine *e, struct vblk_bdev_req *r)
{
    struct vblk_bdev *real = b->priv;

    if (nrec < 4096)
        recs[nrec++] = (struct rec_ent){r->op, r->offset};
    if (fail_after >= 0 && (int)nrec > fail_after && r->op == VBLK_BDEV_WRITE) {
        r->done(r, -EIO);
        return;
    }
    vblk_bdev_submit(real, e, r);
}

static const struct vblk_bdev_ops rec_ops = {
    .name = "rec", .open = rec_open, .close = rec_close, .submit = rec_submit};

static struct vblk_bdev *open_recorded(const char *img, struct vblk_bdev **file)
{
    struct vblk_bdev_conf c = conf(img, false);
    struct vblk_bdev *rec = calloc(1, sizeof(*rec)), *top = calloc(1, sizeof(*top));
    char e[256];

    c.format = VBLK_FORMAT_RAW;
    assert_int_equal(vblk_bdev_open_stack(file, &c, e, sizeof(e)), 0);
    *rec = *vblk_bdev_find(*file, &vblk_bdev_file); /* under the throttle filter */
    rec->ops = &rec_ops;
    rec->priv = vblk_bdev_find(*file, &vblk_bdev_file);
    rec->child = NULL;
    top->ops = &vblk_bdev_qcow2;
    top->name = "t";
    top->child = rec;
    top->fd = -1;
    top->lbs = 512;
    top->cache = c.cache;
    c.format = VBLK_FORMAT_QCOW2;
    assert_int_equal(vblk_bdev_qcow2.open(top, &c, e, sizeof(e)), 0);
    return top;
}

static void close_recorded(struct vblk_bdev *top, struct vblk_bdev *file)
{
    vblk_bdev_qcow2.close(top);
    free(top->child);
    free(top);
    vblk_bdev_close_stack(file);
}

static void test_write_order_data_refcount_l2_l1(void **state)
{
    struct vblk_bdev *file, *b;
    uint8_t buf[4096];
    int data = -1, l2 = -1, l1 = -1, rb = -1, flush1 = -1;
    struct qcow2 *s;

    assert_int_equal(sh("qemu-img create -q -f qcow2 %s 8M", P("o.qcow2")), 0);
    b = open_recorded(P("o.qcow2"), &file);
    s = b->priv;
    nrec = 0;
    fill(buf, sizeof(buf), 1);
    /* a new L2 table, a new data cluster, refcounts for both */
    assert_int_equal(io(b, VBLK_BDEV_WRITE, 4096, buf, 4096, 0), 0);
    assert_int_equal(io(b, VBLK_BDEV_FLUSH, 0, NULL, 0, 0), 0);
    for (unsigned i = 0; i < nrec; i++) {
        uint64_t off = recs[i].off;

        if (recs[i].op == VBLK_BDEV_FLUSH && flush1 < 0 && rb >= 0)
            flush1 = (int)i;
        if (recs[i].op != VBLK_BDEV_WRITE)
            continue;
        if (off == s->in.l1_offset)
            l1 = (int)i;
        else if (off == (q2_be64(s->l1) & QCOW2_OFFSET_MASK))
            l2 = (int)i;
        else if (off == (q2_be64(s->reft) & QCOW2_REFT_OFFSET_MASK))
            rb = (int)i;
        else
            data = (int)i;
    }
    assert_true(data >= 0 && rb >= 0 && flush1 >= 0 && l2 >= 0 && l1 >= 0);
    assert_true(data < l2);   /* data before the entry that points to it */
    assert_true(rb < flush1); /* refcounts durable ... */
    assert_true(flush1 < l2); /* ... before the L2 table */
    assert_true(l2 < l1);     /* the table before the L1 entry */
    close_recorded(b, file);
    expect_clean(P("o.qcow2"));
}

static void test_failed_writes_leave_image_consistent(void **state)
{
    uint8_t buf[8192];

    for (int k = 1; k < 12; k++) {
        struct vblk_bdev *file, *b;
        int r;

        assert_int_equal(sh("qemu-img create -q -f qcow2 -o cluster_size=4k %s 8M", P("f.qcow2")),
                         0);
        b = open_recorded(P("f.qcow2"), &file);
        nrec = 0;
        fail_after = k;
        for (int i = 0; i < 6; i++) {
            fill(buf, sizeof(buf), (unsigned)i);
            io(b, VBLK_BDEV_WRITE, (uint64_t)i * (3 << 20) / 2 + 1024, buf, sizeof(buf), 0);
        }
        io(b, VBLK_BDEV_FLUSH, 0, NULL, 0, 0);
        fail_after = -1;
        /* the metadata never written stays in the cache: drop it as a crash would */
        close_recorded(b, file);
        r = sh("qemu-img check -q %s >/dev/null 2>&1", P("f.qcow2"));
        assert_true(r == 0 || r == 3); /* clean, or leaked clusters only */
    }
}

/* --- hostile images --- */

static void patch(const char *img, uint64_t off, const void *bytes, size_t len)
{
    int fd = open(img, O_WRONLY);

    assert_true(fd >= 0);
    assert_int_equal(pwrite(fd, bytes, len, (off_t)off), (ssize_t)len);
    close(fd);
}

static void patch_be32(const char *img, uint64_t off, uint32_t v)
{
    v = __builtin_bswap32(v);
    patch(img, off, &v, 4);
}

static void patch_be64(const char *img, uint64_t off, uint64_t v)
{
    v = __builtin_bswap64(v);
    patch(img, off, &v, 8);
}

static void fresh(const char *opts)
{
    assert_int_equal(sh("qemu-img create -q -f qcow2 %s %s 16M && qemu-io -f qcow2 -c 'write -P 1 "
                        "0 128k' %s >/dev/null",
                        opts, P("h.qcow2"), P("h.qcow2")),
                     0);
}

static void expect_refused(const char *why, int ro)
{
    int r = open_err(P("h.qcow2"), ro);

    if (r == 0 || !strstr(err, why))
        print_error("expected '%s', got %d '%s'\n", why, r, err);
    assert_true(r < 0);
    assert_non_null(strstr(err, why));
}

static void test_hostile_headers_are_refused_by_name(void **state)
{
    fresh("");
    patch(P("h.qcow2"), 0, "QFI\xfa", 4);
    expect_refused("bad magic", 1);
    fresh("");
    patch_be32(P("h.qcow2"), 4, 4);
    expect_refused("version 4", 1);
    fresh("");
    patch_be32(P("h.qcow2"), 20, 8);
    expect_refused("cluster size", 1);
    fresh("");
    patch_be32(P("h.qcow2"), 20, 22);
    expect_refused("cluster size", 1);
    fresh("");
    patch_be32(P("h.qcow2"), 32, 1);
    expect_refused("encrypted", 1);
    fresh(""); /* an unknown incompatible bit, named by the image's own table */
    patch_be64(P("h.qcow2"), 72, 1ull << 5);
    expect_refused("bit 5", 1);
    fresh("");
    patch_be64(P("h.qcow2"), 72, 1ull << 3); /* compression bit, type zlib */
    expect_refused("compression type", 1);
    fresh("-o compression_type=zstd");
    patch(P("h.qcow2"), 104, "\x02", 1);
    expect_refused("compression type 2", 1);
    fresh("");
    patch_be64(P("h.qcow2"), 72, 2); /* corrupt: read-only fine, writable refused */
    assert_int_equal(open_err(P("h.qcow2"), true), 0);
    expect_refused("qemu-img check -r all", 0);
    expect_refused("corrupt", 0);
    fresh("-o lazy_refcounts=on");
    patch_be64(P("h.qcow2"), 72, 1); /* dirty */
    assert_int_equal(open_err(P("h.qcow2"), true), 0);
    expect_refused("qemu-img check -r all", 0);
    fresh("");
    patch_be64(P("h.qcow2"), 40, 1ull << 40); /* L1 beyond the file */
    expect_refused("L1 table offset", 1);
    fresh("");
    patch_be64(P("h.qcow2"), 40, 0x10200); /* L1 unaligned */
    expect_refused("L1 table offset", 1);
    fresh("");
    patch_be32(P("h.qcow2"), 36, 0x10000000); /* L1 absurd */
    expect_refused("L1 table", 1);
    fresh("");
    patch_be32(P("h.qcow2"), 36, 0); /* L1 too small for the size */
    expect_refused("too small", 1);
    fresh("");
    patch_be64(P("h.qcow2"), 48, 1ull << 50);
    expect_refused("refcount table offset", 1);
    fresh("");
    patch_be32(P("h.qcow2"), 56, 100000);
    expect_refused("refcount table", 1);
    fresh("");
    patch_be32(P("h.qcow2"), 100, 101);
    expect_refused("header length", 1);
    fresh("");
    patch_be32(P("h.qcow2"), 100, 1u << 20);
    expect_refused("header length", 1);
    fresh(""); /* an extension longer than the cluster */
    patch_be32(P("h.qcow2"), 112, 0x12345678);
    patch_be32(P("h.qcow2"), 116, 0x7ffffff0);
    expect_refused("runs past", 1);
    fresh("");
    patch_be64(P("h.qcow2"), 8, 0x200);
    patch_be32(P("h.qcow2"), 16, 5000);
    expect_refused("backing file name", 1);
    fresh("");
    patch_be32(P("h.qcow2"), 96, 7);
    expect_refused("refcount order", 1);
    fresh("");
    patch_be64(P("h.qcow2"), 24, 1ull << 62);
    expect_refused("virtual size", 1);
}

static void test_bad_tables_give_eio(void **state)
{
    uint8_t buf[65536];
    struct vblk_bdev *b;
    struct qcow2 *s;
    uint64_t l1off, l2off;
    int fd;

    fresh("");
    b = open_q(P("h.qcow2"), true);
    s = vblk_bdev_find(b, &vblk_bdev_qcow2)->priv;
    l1off = s->in.l1_offset;
    l2off = q2_be64(s->l1) & QCOW2_OFFSET_MASK;
    vblk_bdev_close_stack(b);
    assert_true(l2off != 0);
    /* entry 0: beyond the file; 1: unaligned; 2: into the L1 table; 3: absurd compressed */
    patch_be64(P("h.qcow2"), l2off, (1ull << 50) | QCOW2_OFLAG_COPIED);
    patch_be64(P("h.qcow2"), l2off + 8, 0x10100 | QCOW2_OFLAG_COPIED);
    patch_be64(P("h.qcow2"), l2off + 16, l1off | QCOW2_OFLAG_COPIED);
    patch_be64(P("h.qcow2"), l2off + 24, QCOW2_OFLAG_COMPRESSED | (0x3fffull << 48) | (1ull << 47));
    for (int ro = 1; ro >= 0; ro--) {
        b = open_q(P("h.qcow2"), ro);
        for (int i = 0; i < 4; i++)
            assert_int_equal(io(b, VBLK_BDEV_READ, (uint64_t)i * 65536, buf, 4096, 0), -EIO);
        if (!ro) /* a partial write needs the old data: EIO too, nothing allocated wrongly */
            for (int i = 0; i < 4; i++)
                assert_int_equal(io(b, VBLK_BDEV_WRITE, (uint64_t)i * 65536, buf, 4096, 0), -EIO);
        vblk_bdev_close_stack(b);
    }
    /* an L1 entry pointing at the header */
    fd = open(P("h.qcow2"), O_WRONLY);
    close(fd);
    patch_be64(P("h.qcow2"), l1off, QCOW2_OFLAG_COPIED | 0);
    patch_be64(P("h.qcow2"), l1off, QCOW2_OFLAG_COPIED | 65536 * 0 | 512 * 0 | 0x0);
    patch_be64(P("h.qcow2"), l1off, 0x8000000000000000ull | (l1off));
    b = open_q(P("h.qcow2"), true);
    assert_int_equal(io(b, VBLK_BDEV_READ, 0, buf, 4096, 0), -EIO);
    vblk_bdev_close_stack(b);
}

static int setup(void **state)
{
    if (sh("command -v qemu-img >/dev/null && command -v qemu-io >/dev/null") != 0)
        return -1;
    snprintf(dir, sizeof(dir), "%s/vblk-qcow2.XXXXXX",
             getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    if (!mkdtemp(dir))
        return -1;
    if (vblk_engine_uring.create(&eng, 256) < 0 && vblk_engine_threads.create(&eng, 256) < 0)
        return -1;
    return 0;
}

static int teardown(void **state)
{
    eng->ops->destroy(eng);
    if (!getenv("KEEP"))
        sh("rm -rf '%s'", dir);
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reads_what_qemu_io_wrote),
        cmocka_unit_test(test_writes_every_cluster_size),
        cmocka_unit_test(test_writes_v2_image),
        cmocka_unit_test(test_writes_every_refcount_width),
        cmocka_unit_test(test_refcount_table_grows),
        cmocka_unit_test(test_small_caches_evict_and_write_back),
        cmocka_unit_test(test_concurrent_writes_to_one_cluster),
        cmocka_unit_test(test_backing_chain_reads_and_copy_on_write),
        cmocka_unit_test(test_backing_loop_is_refused),
        cmocka_unit_test(test_backing_chain_depth_is_capped),
        cmocka_unit_test(test_compressed_zlib),
        cmocka_unit_test(test_compressed_zstd),
        cmocka_unit_test(test_zero_clusters_discard_and_write_zeroes),
        cmocka_unit_test(test_extended_l2_subclusters),
        cmocka_unit_test(test_cache_none_direct_io),
        cmocka_unit_test(test_snapshots_are_preserved),
        cmocka_unit_test(test_metadata_preallocation),
        cmocka_unit_test(test_lazy_refcounts_image),
        cmocka_unit_test(test_external_data_file),
        cmocka_unit_test(test_flush_makes_metadata_durable),
        cmocka_unit_test(test_metadata_writeback_beyond_engine_depth),
        cmocka_unit_test(test_write_order_data_refcount_l2_l1),
        cmocka_unit_test(test_failed_writes_leave_image_consistent),
        cmocka_unit_test(test_hostile_headers_are_refused_by_name),
        cmocka_unit_test(test_bad_tables_give_eio),
    };

    return cmocka_run_group_tests(tests, setup, teardown);
}
