/* test_iothread.c - the control channel into an I/O thread: bounded waits, leftovers. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include "engine/engine.h"
#include "iothread/iothread.h"

static uint64_t now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static int add_one(void *arg)
{
    (*(int *)arg)++;
    return 0;
}

static void test_call_runs_on_the_thread_and_returns(void **state)
{
    struct vblk_iothread *t;
    int n = 0;

    assert_int_equal(vblk_iothread_create(&t, "t", &vblk_engine_null, 16, 0, 1000), 0);
    assert_int_equal(vblk_iothread_call(t, add_one, &n), 0);
    assert_int_equal(vblk_iothread_call(t, add_one, &n), 0);
    assert_int_equal(n, 2);
    assert_false(vblk_iothread_wedged(t));
    vblk_iothread_destroy(t);
}

/* A call that blocks the thread (as a page fault on FUSE-backed memory or a hung disk would). */
static int block_on_pipe(void *arg)
{
    char c;

    return read(*(int *)arg, &c, 1) == 1 ? 0 : -EIO;
}

static void test_call_to_stuck_thread_times_out(void **state)
{
    static int p[2]; /* the stuck thread reads it after this test returns: not on the stack */
    struct vblk_iothread *t;
    int n = 0;
    uint64_t t0, spent;

    assert_int_equal(pipe(p), 0);
    assert_int_equal(vblk_iothread_create(&t, "stuck", &vblk_engine_null, 16, 0, 200), 0);
    t0 = now_ms();
    assert_int_equal(vblk_iothread_call(t, block_on_pipe, &p[0]), -ETIMEDOUT);
    spent = now_ms() - t0;
    assert_true(spent >= 190);
    assert_true(spent < 5000);
    assert_true(vblk_iothread_wedged(t));
    /* later calls do not wait again, and are never run */
    t0 = now_ms();
    assert_int_equal(vblk_iothread_call(t, add_one, &n), -ETIMEDOUT);
    assert_true(now_ms() - t0 < 100);
    assert_int_equal(write(p[1], "x", 1), 1); /* the thread wakes up... */
    usleep(50 * 1000);
    assert_int_equal(n, 0);   /* ...and runs nothing it was not asked to */
    vblk_iothread_destroy(t); /* left running: it may still touch what it had */
    close(p[1]);
}

/* A call that keeps returning -EINPROGRESS (a drain that never ends) is given up on, and not
 * retried after that. */
static int never_done(void *arg)
{
    __atomic_add_fetch((int *)arg, 1, __ATOMIC_RELAXED);
    return -EINPROGRESS;
}

static void test_endless_drain_times_out_and_stops_retrying(void **state)
{
    static int n; /* the thread may still look at it after this test returns */
    struct vblk_iothread *t;
    int a, b;

    assert_int_equal(vblk_iothread_create(&t, "drain", &vblk_engine_null, 16, 0, 200), 0);
    assert_int_equal(vblk_iothread_call(t, never_done, &n), -ETIMEDOUT);
    usleep(20 * 1000);
    a = __atomic_load_n(&n, __ATOMIC_RELAXED);
    usleep(100 * 1000);
    b = __atomic_load_n(&n, __ATOMIC_RELAXED);
    assert_true(a >= 1);
    assert_int_equal(a, b);
    vblk_iothread_destroy(t);
}

struct again_ctx {
    struct vblk_iothread *t;
    struct vblk_iot_hook hook;
    int left;
    int runs;
};

static void again_fn(struct vblk_iot_hook *h)
{
    struct again_ctx *c = (struct again_ctx *)((char *)h - offsetof(struct again_ctx, hook));

    c->runs++;
    if (--c->left > 0)
        vblk_iothread_again(c->t, h);
}

static int queue_again(void *arg)
{
    struct again_ctx *c = arg;

    vblk_iothread_again(c->t, &c->hook);
    return 0;
}

static int read_runs(void *arg)
{
    struct again_ctx *c = arg;

    return c->runs;
}

/* Work put off with vblk_iothread_again runs without any fd waking the thread, one piece per
 * iteration, and control calls get through in between. */
static void test_again_runs_without_a_wakeup(void **state)
{
    struct again_ctx c = {.left = 1000, .hook = {.fn = again_fn}};
    int runs = 0;

    assert_int_equal(vblk_iothread_create(&c.t, "again", &vblk_engine_null, 16, 0, 5000), 0);
    assert_int_equal(vblk_iothread_call(c.t, queue_again, &c), 0);
    for (int i = 0; i < 500 && runs < 1000; i++) {
        runs = vblk_iothread_call(c.t, read_runs, &c);
        if (runs < 1000)
            usleep(1000);
    }
    assert_int_equal(runs, 1000);
    vblk_iothread_destroy(c.t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_call_runs_on_the_thread_and_returns),
        cmocka_unit_test(test_call_to_stuck_thread_times_out),
        cmocka_unit_test(test_endless_drain_times_out_and_stops_retrying),
        cmocka_unit_test(test_again_runs_without_a_wakeup),
    };

    return cmocka_run_group_tests_name("iothread", tests, NULL, NULL);
}
