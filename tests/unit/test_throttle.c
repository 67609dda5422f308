/* test_throttle.c - I/O throttling: the leaky-bucket maths on a fake clock, the configuration
 * keys, and the throttle filter on real I/O threads over the null driver (rates, live changes,
 * groups across threads, a queue stop with requests waiting). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "bdev/bdev.h"
#include "bdev/throttle.h"
#include "bdev/throttle_bucket.h"
#include "fake_guest.h"
#include "iothread/iothread.h"

#define MS 1000000ull
#define S  1000000000ull

/* ---- the maths, on a fake clock ---- */

static void lim(struct vblk_tb_limit l[VBLK_TB_COUNT], int kind, uint64_t avg, uint64_t max,
                uint64_t len)
{
    l[kind] = (struct vblk_tb_limit){.avg = avg, .max = max, .max_length = len};
}

/* Run requests of one direction and size back to back from *now for dur ns: each starts as soon
 * as the buckets let it (the fake clock jumps over each wait).  How many started. */
static unsigned run_for(struct vblk_tb *t, uint64_t *now, uint64_t dur, bool write, uint64_t bytes)
{
    uint64_t end = *now + dur;
    unsigned n = 0;

    for (;;) {
        uint64_t w = vblk_tb_wait(t, write, *now);

        if (w) {
            if (*now + w > end)
                break;
            *now += w;
            continue;
        }
        vblk_tb_account(t, write, bytes);
        n++;
    }
    *now = end;
    return n;
}

static void assert_near(double got, double want, double tolerance)
{
    if (got < want * (1 - tolerance) || got > want * (1 + tolerance))
        fail_msg("got %.1f, expected %.1f +-%.0f%%", got, want, tolerance * 100);
}

static void test_no_limit_never_waits(void **state)
{
    struct vblk_tb_limit l[VBLK_TB_COUNT] = {{0}};
    struct vblk_tb t;

    vblk_tb_init(&t, l, 0);
    assert_false(vblk_tb_enabled(&t));
    for (int i = 0; i < 10000; i++) {
        assert_int_equal(vblk_tb_wait(&t, i & 1, 5), 0);
        vblk_tb_account(&t, i & 1, 1 << 20);
    }
}

static void test_iops_rate_and_default_burst(void **state)
{
    struct vblk_tb_limit l[VBLK_TB_COUNT] = {{0}};
    struct vblk_tb t;
    uint64_t now = 1000 * S;

    lim(l, VBLK_TB_IOPS_TOTAL, 100, 0, 0);
    vblk_tb_init(&t, l, now);
    assert_true(vblk_tb_enabled(&t));
    /* without a burst rate a tenth of a second goes at once: levels 0..10 may start */
    assert_int_equal(run_for(&t, &now, 0, false, 512), 11);
    /* the 12th waits until the level (11) is back to 10: 1/100 s */
    assert_int_equal(vblk_tb_wait(&t, false, now), 10 * MS);
    assert_int_equal(vblk_tb_wait(&t, true, now + 4 * MS), 6 * MS);
    /* then 100 per second, reads and writes alike */
    assert_near(run_for(&t, &now, 10 * S, false, 512), 1000, 0.01);
    assert_near(run_for(&t, &now, 10 * S, true, 512), 1000, 0.01);
    /* idle for a while: the burst is back, no more */
    now += 60 * S;
    assert_int_equal(run_for(&t, &now, 0, true, 512), 11);
}

static void test_burst_rate_and_length(void **state)
{
    struct vblk_tb_limit l[VBLK_TB_COUNT] = {{0}};
    struct vblk_tb t;
    uint64_t now = 0;

    /* burst of 1000/s for one second: 1000 at once (bucket max * 1), then 100/s */
    lim(l, VBLK_TB_IOPS_READ, 100, 1000, 1);
    vblk_tb_init(&t, l, now);
    assert_int_equal(run_for(&t, &now, 0, false, 4096), 1001);
    assert_near(run_for(&t, &now, 10 * S, false, 4096), 1000, 0.01);

    /* burst of 1000/s lasting 5 s: at most 1000/s (+ a tenth) while the 5000 fill, then 100/s */
    lim(l, VBLK_TB_IOPS_READ, 100, 1000, 5);
    vblk_tb_init(&t, l, now);
    assert_near(run_for(&t, &now, 1 * S, false, 4096), 1100, 0.01);
    assert_near(run_for(&t, &now, 4 * S, false, 4096), 4000, 0.01);
    /* the big bucket (5000 units leaking at 100/s) fills at ~5.5 s: 5000 + 100 * t in all */
    assert_near(run_for(&t, &now, 5 * S, false, 4096), 6000 - 5100, 0.05);
    assert_near(run_for(&t, &now, 10 * S, false, 4096), 1000, 0.01);
    /* writes are not limited by the read buckets */
    assert_int_equal(vblk_tb_wait(&t, true, now), 0);
}

static void test_bps_with_sizes_and_a_big_request(void **state)
{
    struct vblk_tb_limit l[VBLK_TB_COUNT] = {{0}};
    struct vblk_tb t;
    uint64_t now = 0;

    lim(l, VBLK_TB_BPS_WRITE, 1 << 20, 0, 0); /* 1 MiB/s */
    vblk_tb_init(&t, l, now);
    /* 104857.6 bytes at once: 26 writes of 4 KiB (the 26th starts at level 102400) */
    assert_int_equal(run_for(&t, &now, 0, true, 4096), 26);
    /* level 106496: wait for 1638.4 bytes at 1 MiB/s */
    assert_in_range(vblk_tb_wait(&t, true, now), 1562500, 1562501); /* 1638.4 / 1048576 s */
    assert_near(run_for(&t, &now, 10 * S, true, 4096) * 4096.0, 10 << 20, 0.01);
    assert_near(run_for(&t, &now, 10 * S, true, 65536) * 65536.0, 10 << 20, 0.02);
    /* a request bigger than the bucket goes when the bucket is not full, and is paid after */
    now += 10 * S;
    assert_int_equal(vblk_tb_wait(&t, true, now), 0);
    vblk_tb_account(&t, true, 8 << 20);
    assert_near((double)vblk_tb_wait(&t, true, now), (8.0 - 0.1) * S, 0.001);
    /* reads are free */
    assert_int_equal(vblk_tb_wait(&t, false, now), 0);
}

static void test_read_write_and_total_interplay(void **state)
{
    struct vblk_tb_limit l[VBLK_TB_COUNT] = {{0}};
    struct vblk_tb t;
    uint64_t now = 0;
    unsigned r = 0, w = 0;

    lim(l, VBLK_TB_IOPS_READ, 100, 0, 0);
    lim(l, VBLK_TB_IOPS_WRITE, 50, 0, 0);
    vblk_tb_init(&t, l, now);
    /* alone, each direction has its own rate */
    assert_near(run_for(&t, &now, 10 * S, false, 512), 1011, 0.01);
    assert_near(run_for(&t, &now, 10 * S, true, 512), 506, 0.01);
    /* a saturated read bucket does not hold writes */
    run_for(&t, &now, 0, false, 512);
    assert_true(vblk_tb_wait(&t, false, now) > 0);
    now += 10 * S;
    run_for(&t, &now, 0, false, 512);
    assert_int_equal(vblk_tb_wait(&t, true, now), 0);

    /* a total limit caps both together, the direction limits still cap each */
    lim(l, VBLK_TB_IOPS_TOTAL, 120, 0, 0);
    vblk_tb_init(&t, l, now);
    for (uint64_t end = now + 10 * S; now < end;) {
        uint64_t wr = vblk_tb_wait(&t, false, now), ww = vblk_tb_wait(&t, true, now);

        if (!wr) {
            vblk_tb_account(&t, false, 512);
            r++;
        } else if (!ww) {
            vblk_tb_account(&t, true, 512);
            w++;
        } else {
            now += wr < ww ? wr : ww;
        }
    }
    assert_near(r + w, 1200 + 12, 0.01); /* 120/s and the total's tenth-second burst */
    assert_true(r <= 1011 && w <= 506);
    assert_true(w >= 190); /* reads are preferred here, but capped at 100/s */
}

static void test_live_change_empties_the_buckets(void **state)
{
    struct vblk_tb_limit l[VBLK_TB_COUNT] = {{0}};
    struct vblk_tb t;
    uint64_t now = 100 * S;

    lim(l, VBLK_TB_IOPS_TOTAL, 10, 0, 0);
    vblk_tb_init(&t, l, now);
    run_for(&t, &now, 0, false, 512);
    assert_true(vblk_tb_wait(&t, false, now) > 0);
    lim(l, VBLK_TB_IOPS_TOTAL, 1000, 0, 0);
    vblk_tb_init(&t, l, now);
    assert_int_equal(vblk_tb_wait(&t, false, now), 0);
    assert_near(run_for(&t, &now, 1 * S, false, 512), 1101, 0.01);
    /* a clock that goes back leaks nothing and does not underflow */
    {
        uint64_t w = vblk_tb_wait(&t, false, now);

        assert_int_equal(vblk_tb_wait(&t, false, now - 5 * S), w);
    }
}

static void test_group_members_share_one_bucket(void **state)
{
    struct vblk_tb_limit l[VBLK_TB_COUNT] = {{0}};
    struct vblk_tb t;
    uint64_t now = 0;
    unsigned n[2] = {0, 0};

    /* two members alternate on the group's buckets: together they get the rate */
    lim(l, VBLK_TB_IOPS_TOTAL, 200, 0, 0);
    vblk_tb_init(&t, l, now);
    while (now < 10 * S) {
        uint64_t w = vblk_tb_wait(&t, false, now);

        if (w) {
            now += w;
            continue;
        }
        vblk_tb_account(&t, false, 512);
        n[(n[0] + n[1]) & 1]++;
    }
    assert_near(n[0] + n[1], 2021, 0.01);
    assert_true(n[0] - n[1] <= 1);
}

/* ---- keys ---- */

static void test_keys_parse_and_check(void **state)
{
    struct vblk_throttle_conf c = {0};
    char err[256];
    unsigned n = 0;

    while (vblk_throttle_keys[n])
        n++;
    assert_int_equal(n, 19);
    for (unsigned i = 0; i < n; i++)
        assert_int_not_equal(
            vblk_throttle_conf_set(&c, vblk_throttle_keys[i], "x", err, sizeof(err)), -ENOENT);
    memset(&c, 0, sizeof(c));
    assert_int_equal(vblk_throttle_conf_set(&c, "iops-total", "200", err, sizeof(err)), 0);
    assert_int_equal(vblk_throttle_conf_set(&c, "bps-read", "10M", err, sizeof(err)), 0);
    assert_int_equal(vblk_throttle_conf_set(&c, "bps-read-max", "20m", err, sizeof(err)), 0);
    assert_int_equal(vblk_throttle_conf_set(&c, "bps-read-max-length", "60", err, sizeof(err)), 0);
    assert_int_equal(vblk_throttle_conf_set(&c, "throttle-group", "gold-1", err, sizeof(err)), 0);
    assert_int_equal(c.limit[VBLK_TB_IOPS_TOTAL].avg, 200);
    assert_int_equal(c.limit[VBLK_TB_BPS_READ].avg, 10 << 20);
    assert_int_equal(c.limit[VBLK_TB_BPS_READ].max, 20 << 20);
    assert_int_equal(c.limit[VBLK_TB_BPS_READ].max_length, 60);
    assert_string_equal(c.group, "gold-1");
    assert_true(vblk_throttle_conf_enabled(&c));
    assert_int_equal(vblk_throttle_conf_check(&c, err, sizeof(err)), 0);

    assert_int_equal(vblk_throttle_conf_set(&c, "iops", "1", err, sizeof(err)), -ENOENT);
    assert_int_equal(vblk_throttle_conf_set(&c, "iops-total-min", "1", err, sizeof(err)), -ENOENT);
    assert_int_equal(vblk_throttle_conf_set(&c, "cache", "none", err, sizeof(err)), -ENOENT);
    assert_int_equal(vblk_throttle_conf_set(&c, "iops-read", "10k", err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "iops-read='10k'"));
    assert_int_equal(vblk_throttle_conf_set(&c, "iops-read", "-1", err, sizeof(err)), -EINVAL);
    assert_int_equal(vblk_throttle_conf_set(&c, "bps-write", "1x", err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "bps-write='1x'"));
    assert_int_equal(vblk_throttle_conf_set(&c, "bps-write", "1000000000000001", err, sizeof(err)),
                     -EINVAL);
    assert_int_equal(vblk_throttle_conf_set(&c, "iops-write-max-length", "0", err, sizeof(err)),
                     -EINVAL);
    assert_non_null(strstr(err, "iops-write-max-length='0'"));
    assert_int_equal(vblk_throttle_conf_set(&c, "throttle-group", "a b", err, sizeof(err)),
                     -EINVAL);
    assert_int_equal(vblk_throttle_conf_set(&c, "throttle-group", "", err, sizeof(err)), -EINVAL);
    assert_int_equal(
        vblk_throttle_conf_set(&c, "throttle-group",
                               "0123456789012345678901234567890123456789012345678901234567890123",
                               err, sizeof(err)),
        -EINVAL);
    assert_string_equal(c.group, "gold-1"); /* unchanged by the failures */

    /* cross-key checks */
    memset(&c, 0, sizeof(c));
    c.limit[VBLK_TB_IOPS_WRITE].max = 100;
    assert_int_equal(vblk_throttle_conf_check(&c, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "iops-write-max=100 needs iops-write"));
    c.limit[VBLK_TB_IOPS_WRITE].avg = 200;
    assert_int_equal(vblk_throttle_conf_check(&c, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "lower than iops-write=200"));
    c.limit[VBLK_TB_IOPS_WRITE].max = 0;
    c.limit[VBLK_TB_IOPS_WRITE].max_length = 5;
    assert_int_equal(vblk_throttle_conf_check(&c, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "iops-write-max-length=5 needs iops-write-max"));
    c.limit[VBLK_TB_IOPS_WRITE].max = 1000000000000ull;
    c.limit[VBLK_TB_IOPS_WRITE].max_length = 10000;
    assert_int_equal(vblk_throttle_conf_check(&c, err, sizeof(err)), -EINVAL);
    c.limit[VBLK_TB_IOPS_WRITE].max_length = 1000;
    assert_int_equal(vblk_throttle_conf_check(&c, err, sizeof(err)), 0);
    /* total and per-direction limits together: both apply */
    c.limit[VBLK_TB_IOPS_TOTAL].avg = 100;
    assert_int_equal(vblk_throttle_conf_check(&c, err, sizeof(err)), 0);
}

/* ---- the filter on real I/O threads ---- */

#define NREQ 1000

struct side;
struct treq {
    struct vblk_bdev_req r;
    struct iovec iov;
    struct side *s;
};

struct side {
    struct vblk_iothread *iot;
    struct vblk_bdev *b;
    struct treq reqs[NREQ + 16];
    unsigned nsub;  /* I/O thread */
    unsigned ndone; /* atomic */
    unsigned nfail; /* atomic */
};

static uint8_t buf[4096];

static uint64_t now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * S + (uint64_t)ts.tv_nsec;
}

static unsigned done_of(struct side *s)
{
    return __atomic_load_n(&s->ndone, __ATOMIC_RELAXED);
}

static void req_done(struct vblk_bdev_req *r, int ret)
{
    struct side *s = ((struct treq *)r)->s;

    __atomic_fetch_add(&s->ndone, 1, __ATOMIC_RELAXED);
    if (ret)
        __atomic_fetch_add(&s->nfail, 1, __ATOMIC_RELAXED);
}

struct sub {
    struct side *s;
    unsigned n;
    uint8_t op;
};

static int submit_fn(void *arg)
{
    struct sub *a = arg;
    struct side *s = a->s;
    struct vblk_engine *eng = vblk_iothread_engine(s->iot);

    for (unsigned i = 0; i < a->n && s->nsub < NREQ + 16; i++) {
        struct treq *t = &s->reqs[s->nsub++];

        t->s = s;
        t->iov = (struct iovec){buf, sizeof(buf)};
        t->r = (struct vblk_bdev_req){.op = a->op,
                                      .iovcnt = a->op == VBLK_BDEV_FLUSH ? 0 : 1,
                                      .iov = &t->iov,
                                      .offset = 4096ull * (s->nsub % 64),
                                      .len = a->op == VBLK_BDEV_FLUSH ? 0 : sizeof(buf),
                                      .done = req_done};
        vblk_bdev_submit(s->b, eng, &t->r);
    }
    return 0;
}

static void submit(struct side *s, unsigned n, uint8_t op)
{
    struct sub a = {.s = s, .n = n, .op = op};

    assert_int_equal(vblk_iothread_call(s->iot, submit_fn, &a), 0);
}

static void side_open_n(struct side *s, int idx, const struct vblk_throttle_conf *tc,
                        unsigned iothreads)
{
    struct vblk_bdev_conf c = {.name = idx ? "b" : "a",
                               .file = "null://",
                               .null = true,
                               .null_size = 1 << 20,
                               .lbs = 512,
                               .read_zeroes = false,
                               .iothreads = iothreads,
                               .throttle = *tc};
    char err[256];

    memset(s, 0, sizeof(*s));
    if (vblk_bdev_open_stack(&s->b, &c, err, sizeof(err)) < 0)
        fail_msg("open: %s", err);
    assert_ptr_equal(s->b->ops, &vblk_bdev_throttle);
    assert_int_equal(vblk_iothread_create(&s->iot, idx ? "thr-b" : "thr-a", &vblk_engine_null, 64,
                                          0, VBLK_IOT_CALL_TIMEOUT_MS),
                     0);
}

static void side_open(struct side *s, int idx, const struct vblk_throttle_conf *tc)
{
    side_open_n(s, idx, tc, 1);
}

static void side_close(struct side *s, int idx)
{
    vblk_iothread_destroy(s->iot); /* as an export: threads first, then the stack */
    vblk_bdev_close_stack(s->b);
}

/* Wait until s has at least n completions (or 5 s passed). */
static void wait_done(struct side *s, unsigned n)
{
    uint64_t t0 = now_ns();

    while (done_of(s) < n && now_ns() - t0 < 5 * S)
        usleep(1000);
}

/* Completions per second of s over about dur ns, from now. */
static double rate_of(struct side *s, uint64_t dur)
{
    uint64_t t0 = now_ns();
    unsigned c0 = done_of(s);
    uint64_t t1;
    unsigned c1;

    usleep((useconds_t)(dur / 1000));
    t1 = now_ns();
    c1 = done_of(s);
    return (double)(c1 - c0) * 1e9 / (double)(t1 - t0);
}

static void set_limits(struct side *s, const struct vblk_throttle_conf *c)
{
    char err[256];

    if (vblk_throttle_set(s->b, c, &s->iot, 1, err, sizeof(err)) < 0)
        fail_msg("set: %s", err);
}

static void test_filter_without_limits_passes_everything(void **state)
{
    struct vblk_throttle_conf tc = {0};
    static struct side s;
    uint64_t ns, reqs;

    side_open(&s, 0, &tc);
    submit(&s, NREQ, VBLK_BDEV_READ);
    assert_int_equal(done_of(&s), NREQ); /* null completes inline */
    vblk_throttle_get_stats(s.b, &ns, &reqs);
    assert_int_equal(reqs, 0);
    assert_int_equal(ns, 0);
    side_close(&s, 0);
}

static void test_iops_limit_paces_completions_and_lifting_releases(void **state)
{
    struct vblk_throttle_conf tc = {0}, none = {0}, got;
    static struct side s;
    uint64_t ns, reqs;
    double rate;

    tc.limit[VBLK_TB_IOPS_TOTAL].avg = 200;
    side_open(&s, 0, &tc);
    submit(&s, NREQ, VBLK_BDEV_READ);
    /* the burst (a tenth of a second: 21) goes at once, then 200/s: ~100 in 0.5 s */
    assert_int_equal(done_of(&s), 21);
    rate = rate_of(&s, 500 * MS);
    assert_near(rate * 0.5, 100, 0.10);
    /* a flush is never held, even behind waiting reads */
    {
        unsigned before = done_of(&s);

        submit(&s, 1, VBLK_BDEV_FLUSH);
        assert_true(done_of(&s) >= before + 1);
    }
    /* a live change re-times the waiting requests: 1000/s */
    tc.limit[VBLK_TB_IOPS_TOTAL].avg = 1000;
    set_limits(&s, &tc);
    assert_int_equal(vblk_throttle_get(s.b, &got), 0);
    assert_int_equal(got.limit[VBLK_TB_IOPS_TOTAL].avg, 1000);
    rate = rate_of(&s, 200 * MS);
    assert_near(rate, 1000, 0.15);
    /* lifted limits release every waiting request at once */
    assert_true(done_of(&s) < NREQ);
    set_limits(&s, &none);
    assert_int_equal(done_of(&s), NREQ + 1);
    assert_int_equal(__atomic_load_n(&s.nfail, __ATOMIC_RELAXED), 0);
    vblk_throttle_get_stats(s.b, &ns, &reqs);
    assert_true(reqs >= NREQ - 21 - 1 && reqs <= NREQ);
    assert_true(ns > reqs * 100 * MS); /* most waited far longer than 0.1 s */
    /* and the filter is a pass-through again */
    s.nsub = 0;
    submit(&s, NREQ, VBLK_BDEV_WRITE);
    assert_int_equal(done_of(&s), 2 * NREQ + 1);
    side_close(&s, 0);
}

static void test_a_direction_limit_does_not_hold_the_other(void **state)
{
    struct vblk_throttle_conf tc = {0}, none = {0};
    static struct side s;
    unsigned d;

    tc.limit[VBLK_TB_IOPS_WRITE].avg = 10;
    side_open(&s, 0, &tc);
    submit(&s, 100, VBLK_BDEV_WRITE);
    d = done_of(&s);
    assert_int_equal(d, 2);
    submit(&s, 50, VBLK_BDEV_READ); /* arrive after the writes, leave before them */
    assert_int_equal(done_of(&s), d + 50);
    set_limits(&s, &none);
    assert_int_equal(done_of(&s), 150);
    side_close(&s, 0);
}

static void test_bps_limit(void **state)
{
    struct vblk_throttle_conf tc = {0}, none = {0};
    char err[64];
    static struct side s;
    double rate;

    assert_int_equal(vblk_throttle_conf_set(&tc, "bps-read", "400k", err, sizeof(err)), 0);
    side_open(&s, 0, &tc);
    submit(&s, NREQ, VBLK_BDEV_READ);
    wait_done(&s, 11);
    rate = rate_of(&s, 500 * MS);
    assert_near(rate * 4096, 400 << 10, 0.10); /* 100 4 KiB reads a second */
    set_limits(&s, &none);
    assert_int_equal(done_of(&s), NREQ);
    side_close(&s, 0);
}

static void test_group_shared_by_exports_on_two_threads(void **state)
{
    struct vblk_throttle_conf tc = {0}, member = {0}, other = {0}, none = {0};
    static struct side a, b;
    struct vblk_bdev *c;
    struct vblk_bdev_conf cc = {.name = "c",
                                .file = "null://",
                                .null = true,
                                .null_size = 1 << 20,
                                .lbs = 512,
                                .iothreads = 1};
    char err[256];
    double ra, rb;
    uint64_t ns, reqs;

    tc.limit[VBLK_TB_IOPS_TOTAL].avg = 200;
    strcpy(tc.group, "g1");
    strcpy(member.group, "g1");
    side_open(&a, 0, &tc);
    side_open(&b, 1, &member); /* joins with the group's limits */
    /* a third member giving other limits is refused */
    other = tc;
    other.limit[VBLK_TB_IOPS_TOTAL].avg = 300;
    cc.throttle = other;
    assert_int_equal(vblk_bdev_open_stack(&c, &cc, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "'g1'"));

    /* arrivals interleave: first come, first served over both exports */
    for (int i = 0; i < 50; i++) {
        submit(&a, 10, VBLK_BDEV_READ);
        submit(&b, 10, VBLK_BDEV_WRITE);
    }
    wait_done(&a, 15);
    {
        unsigned a0 = done_of(&a), b0 = done_of(&b);
        uint64_t t0 = now_ns();

        usleep(1000 * 1000);
        ra = (double)(done_of(&a) - a0) * 1e9 / (double)(now_ns() - t0);
        rb = (double)(done_of(&b) - b0) * 1e9 / (double)(now_ns() - t0);
    }
    assert_near(ra + rb, 200, 0.10);
    assert_near(ra, rb, 0.25);

    /* a change through one member changes the group; lifting releases the other's requests,
     * in their own thread */
    set_limits(&a, &none);
    wait_done(&b, 500);
    assert_int_equal(done_of(&a), 500);
    assert_int_equal(done_of(&b), 500);
    vblk_throttle_get_stats(b.b, &ns, &reqs);
    assert_true(reqs > 300);

    /* the group goes with its last member: then a new one may have other limits */
    side_close(&a, 0);
    side_close(&b, 1);
    assert_int_equal(vblk_bdev_open_stack(&c, &cc, err, sizeof(err)), 0);
    vblk_bdev_close_stack(c);
}

/* An export without a group served by two I/O threads: one bucket, both threads' requests. */
static void test_export_on_two_threads_shares_its_limits(void **state)
{
    struct vblk_throttle_conf tc = {0}, none = {0};
    static struct side a, b;
    struct vblk_iothread *iots[2];
    char err[256];
    double ra, rb;

    tc.limit[VBLK_TB_IOPS_TOTAL].avg = 200;
    side_open_n(&a, 0, &tc, 2);
    memset(&b, 0, sizeof(b));
    b.b = a.b; /* the same stack, a second thread */
    assert_int_equal(
        vblk_iothread_create(&b.iot, "thr-b", &vblk_engine_null, 64, 0, VBLK_IOT_CALL_TIMEOUT_MS),
        0);
    for (int i = 0; i < 20; i++) {
        submit(&a, 25, VBLK_BDEV_READ);
        submit(&b, 25, VBLK_BDEV_READ);
    }
    wait_done(&a, 15);
    {
        unsigned a0 = done_of(&a), b0 = done_of(&b);
        uint64_t t0 = now_ns();

        usleep(500 * 1000);
        ra = (double)(done_of(&a) - a0) * 1e9 / (double)(now_ns() - t0);
        rb = (double)(done_of(&b) - b0) * 1e9 / (double)(now_ns() - t0);
    }
    assert_near(ra + rb, 200, 0.10);
    assert_near(ra, rb, 0.30);
    iots[0] = a.iot;
    iots[1] = b.iot;
    assert_int_equal(vblk_throttle_set(a.b, &none, iots, 2, err, sizeof(err)), 0);
    wait_done(&a, 500);
    wait_done(&b, 500);
    assert_int_equal(done_of(&a) + done_of(&b), 1000);
    vblk_iothread_destroy(b.iot);
    side_close(&a, 0);
}

static void test_group_change_refused_live(void **state)
{
    struct vblk_throttle_conf tc = {0};
    static struct side s;
    char err[256];

    side_open(&s, 0, &tc);
    strcpy(tc.group, "x");
    assert_int_equal(vblk_throttle_set(s.b, &tc, &s.iot, 1, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "throttle-group='x'"));
    tc.group[0] = 0;
    tc.limit[VBLK_TB_BPS_TOTAL].max = 5;
    assert_int_equal(vblk_throttle_set(s.b, &tc, &s.iot, 1, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "bps-total-max=5 needs bps-total"));
    side_close(&s, 0);
}

/* A queue stops (front-end gone) with requests waiting at 1 iops: they go at once. */
static void test_queue_stop_releases_waiting_requests(void **state)
{
    static struct fake_blk f;
    static struct fb_req r[50];
    uint64_t t0, ns, reqs;

    fb_init(&f, FB_NULL, 1 << 20, 1, 256);
    f.conf.throttle.limit[VBLK_TB_IOPS_TOTAL].avg = 1;
    fb_reopen(&f);
    fb_queue_start(&f, 0, true, true);
    for (int i = 0; i < 50; i++) {
        fb_req_build(&f, 0, &r[i], VIRTIO_BLK_T_IN, (uint64_t)i * 8, 4096, true);
        fg_post(&f.g, 0, r[i].head);
    }
    assert_int_equal(eventfd_write(f.kick[0], 1), 0);
    usleep(100 * 1000);
    assert_int_equal(fg_used_idx(&f.g, 0), 1); /* a tenth of 1 iops is 0.1: one goes */
    t0 = now_ns();
    fb_queue_stop(&f, 0);
    assert_true(now_ns() - t0 < 2 * S);
    assert_int_equal(fg_used_idx(&f.g, 0), 50);
    for (int i = 0; i < 50; i++)
        assert_int_equal(fb_status(&f, &r[i]), VIRTIO_BLK_S_OK);
    vblk_throttle_get_stats(f.bdev, &ns, &reqs);
    assert_int_equal(reqs, 49);
    fb_fini(&f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_no_limit_never_waits),
        cmocka_unit_test(test_iops_rate_and_default_burst),
        cmocka_unit_test(test_burst_rate_and_length),
        cmocka_unit_test(test_bps_with_sizes_and_a_big_request),
        cmocka_unit_test(test_read_write_and_total_interplay),
        cmocka_unit_test(test_live_change_empties_the_buckets),
        cmocka_unit_test(test_group_members_share_one_bucket),
        cmocka_unit_test(test_keys_parse_and_check),
        cmocka_unit_test(test_filter_without_limits_passes_everything),
        cmocka_unit_test(test_iops_limit_paces_completions_and_lifting_releases),
        cmocka_unit_test(test_a_direction_limit_does_not_hold_the_other),
        cmocka_unit_test(test_bps_limit),
        cmocka_unit_test(test_group_shared_by_exports_on_two_threads),
        cmocka_unit_test(test_export_on_two_threads_shares_its_limits),
        cmocka_unit_test(test_group_change_refused_live),
        cmocka_unit_test(test_queue_stop_releases_waiting_requests),
    };

    return cmocka_run_group_tests_name("throttle", tests, NULL, NULL);
}
