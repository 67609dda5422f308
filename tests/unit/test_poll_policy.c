/* test_poll_policy.c - the polling policy (iothread/poll_policy.c) on synthetic gaps, CPU costs
 * and request counts: the window grows only while polling finds work sooner than a sleep costs,
 * collapses on slow completions, comes back when work turns fast, and the spin trial keeps
 * spinning only when it buys requests at no more than 1.2x the CPU per request. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "iothread/poll_policy.h"

#define US 1000ull
#define MS 1000000ull

/* n episodes with the same gap */
static void episodes(struct vblk_poll_policy *p, unsigned n, uint64_t gap, bool polled)
{
    for (unsigned i = 0; i < n; i++)
        vblk_poll_episode(p, gap, polled);
}

static void set_wake(struct vblk_poll_policy *p, uint64_t ns)
{
    for (int i = 0; i < 200; i++)
        vblk_poll_wake_sample(p, ns);
}

static void test_starts_asleep(void **state)
{
    struct vblk_poll_policy p;

    (void)state;
    vblk_poll_init(&p, 1000 * US);
    assert_int_equal(p.window_ns, 0);
    assert_int_equal(vblk_poll_window(&p), 0);
    assert_int_equal(p.wake_ns, VBLK_POLL_WAKE_NS);
}

/* Work that comes 200 ns after the last: a window opens, and stays the smallest that catches it
 * (a larger one would cost nothing more here, and a tie keeps the smaller). */
static void test_fast_work_opens_smallest_window(void **state)
{
    struct vblk_poll_policy p;

    (void)state;
    vblk_poll_init(&p, 1000 * US);
    episodes(&p, VBLK_POLL_EPOCH, 200, false);
    assert_int_equal(p.window_ns, VBLK_POLL_MIN_NS);
    episodes(&p, 10 * VBLK_POLL_EPOCH, 200, true);
    assert_int_equal(p.window_ns, VBLK_POLL_MIN_NS);
    assert_int_equal(p.decisions, 11);
    assert_int_equal(p.total_polled_hits, 10 * VBLK_POLL_EPOCH);
}

/* Work every 3 us with a 5 us sleep: the window doubles until it catches it (1 -> 2 -> 4 us). */
static void test_window_grows_while_it_pays(void **state)
{
    struct vblk_poll_policy p;

    (void)state;
    vblk_poll_init(&p, 1000 * US);
    set_wake(&p, 5 * US);
    episodes(&p, VBLK_POLL_EPOCH, 800, false); /* opens at 1 us */
    assert_int_equal(p.window_ns, 1 * US);
    episodes(&p, VBLK_POLL_EPOCH, 1500, true); /* 2 us catches it */
    assert_int_equal(p.window_ns, 2 * US);
    episodes(&p, VBLK_POLL_EPOCH, 3000, true);
    assert_int_equal(p.window_ns, 4 * US);
    episodes(&p, 5 * VBLK_POLL_EPOCH, 3000, true); /* and stays */
    assert_int_equal(p.window_ns, 4 * US);
}

/* Completions from a slow device (every 20 us) cost more to wait for than a 3 us sleep: the
 * window collapses to 0 and stays there; fast work brings it back. */
static void test_slow_device_collapses(void **state)
{
    struct vblk_poll_policy p;

    (void)state;
    vblk_poll_init(&p, 1000 * US);
    set_wake(&p, 3 * US);
    episodes(&p, VBLK_POLL_EPOCH, 200, false);
    episodes(&p, VBLK_POLL_EPOCH, 1500, true);
    assert_int_equal(p.window_ns, 2 * US);
    episodes(&p, VBLK_POLL_EPOCH, 20 * US, false);
    assert_int_equal(p.window_ns, 0);
    episodes(&p, 20 * VBLK_POLL_EPOCH, 20 * US, false);
    assert_int_equal(p.window_ns, 0);
    assert_int_equal(vblk_poll_window(&p), 0);
    episodes(&p, VBLK_POLL_EPOCH, 300, false);
    assert_int_equal(p.window_ns, VBLK_POLL_MIN_NS);
}

/* Half the work comes at once, half much later: polling still pays for the half it catches. */
static void test_mixed_gaps(void **state)
{
    struct vblk_poll_policy p;

    (void)state;
    vblk_poll_init(&p, 1000 * US);
    set_wake(&p, 3 * US);
    for (int i = 0; i < 4 * VBLK_POLL_EPOCH; i++)
        vblk_poll_episode(&p, i % 2 ? 50 * US : 500, false);
    assert_int_equal(p.window_ns, VBLK_POLL_MIN_NS);
    /* but not if what it catches is rare: 1 in 8 at once, 7 in 8 slow */
    for (int i = 0; i < 4 * VBLK_POLL_EPOCH; i++)
        vblk_poll_episode(&p, i % 8 ? 50 * US : 500, false);
    assert_int_equal(p.window_ns, 0);
}

static void test_limits(void **state)
{
    struct vblk_poll_policy p;

    (void)state;
    vblk_poll_init(&p, 3 * US);
    set_wake(&p, 50 * US);
    for (int i = 0; i < 10; i++)
        episodes(&p, VBLK_POLL_EPOCH, 2500, true);
    assert_int_equal(p.window_ns, 3 * US); /* 1, 2, then capped at 3 */
    vblk_poll_set_max(&p, 1500);
    assert_true(p.window_ns <= 1500);
    vblk_poll_set_max(&p, 0);
    assert_int_equal(p.window_ns, 0);
    assert_false(vblk_poll_episode(&p, 100, true)); /* never polls: no accounting */
    assert_int_equal(p.episodes, 0);
    assert_false(vblk_poll_tick_due(&p, 10 * MS));
    /* sleep costs are clamped */
    vblk_poll_init(&p, 1000 * US);
    set_wake(&p, 1);
    assert_int_equal(p.wake_ns, VBLK_POLL_WAKE_MIN_NS);
    set_wake(&p, 1000 * MS);
    assert_true(p.wake_ns <= VBLK_POLL_WAKE_MAX_NS && p.wake_ns > VBLK_POLL_WAKE_MAX_NS * 9 / 10);
}

/* One trial of the four phases: spin phases (0, 3) do spin_n requests on spin_cpu ns of CPU,
 * priced ones (1, 2) priced_n on priced_cpu each.  Returns the decision. */
static bool trial(struct vblk_poll_policy *p, uint64_t *now, uint64_t *count, uint64_t *cpu,
                  uint64_t spin_n, uint64_t spin_cpu, uint64_t priced_n, uint64_t priced_cpu)
{
    assert_true(vblk_poll_tick_due(p, *now));
    vblk_poll_tick(p, *now, *count, *cpu); /* starts phase 0 */
    for (int ph = 0; ph < 4; ph++) {
        bool spin = ph == 0 || ph == 3;

        assert_int_equal(p->phase, ph);
        assert_int_equal(vblk_poll_window(p), spin ? p->max_ns : p->window_ns);
        assert_false(vblk_poll_tick_due(p, *now + VBLK_POLL_PHASE_NS - 1));
        *now += VBLK_POLL_PHASE_NS;
        *count += spin ? spin_n : priced_n;
        *cpu += spin ? spin_cpu : priced_cpu;
        assert_true(vblk_poll_tick_due(p, *now));
        vblk_poll_tick(p, *now, *count, *cpu);
    }
    assert_int_equal(p->phase, -1);
    assert_false(vblk_poll_tick_due(p, *now + VBLK_POLL_TRIAL_EVERY_NS - 1));
    *now += VBLK_POLL_TRIAL_EVERY_NS;
    return p->spin;
}

static void test_trial(void **state)
{
    struct vblk_poll_policy p;
    uint64_t now = 5 * MS, count = 1000, cpu = 77 * MS;

    (void)state;
    vblk_poll_init(&p, 1000 * US);
    /* a disk at QD32: the same requests, spinning burns the whole phase */
    assert_false(trial(&p, &now, &count, &cpu, 2000, 20 * MS, 2000, 7 * MS));
    assert_int_equal(vblk_poll_window(&p), p.window_ns);
    /* a client that sleeps between batches: 3x the requests for the whole phase */
    assert_true(trial(&p, &now, &count, &cpu, 60000, 20 * MS, 20000, 10 * MS));
    assert_int_equal(vblk_poll_window(&p), p.max_ns);
    /* 4% more: noise, not worth it */
    assert_false(trial(&p, &now, &count, &cpu, 10400, 10 * MS, 10000, 10 * MS));
    /* 10% more requests at 1.1x the CPU per request: pays */
    assert_true(trial(&p, &now, &count, &cpu, 11000, 11 * MS * 11 / 10, 10000, 10 * MS));
    /* 10% more requests at 1.3x the CPU per request: does not */
    assert_false(trial(&p, &now, &count, &cpu, 11000, 11 * MS * 13 / 10, 10000, 10 * MS));
    /* idle: nothing to buy */
    assert_false(trial(&p, &now, &count, &cpu, 0, 20 * MS, 0, 0));
    assert_int_equal(p.trials, 6);
    assert_int_equal(p.spin_wins, 2);
}

/* Four phases with these request counts, 10 ms of CPU each; returns the time after them. */
static uint64_t phases(struct vblk_poll_policy *p, uint64_t now, const uint64_t n[4])
{
    uint64_t count = 0, cpu = 0;

    assert_true(vblk_poll_tick_due(p, now));
    vblk_poll_tick(p, now, count, cpu);
    for (int i = 0; i < 4; i++) {
        now += VBLK_POLL_PHASE_NS;
        count += n[i];
        cpu += 10 * MS;
        vblk_poll_tick(p, now, count, cpu);
    }
    assert_int_equal(p->phase, -1);
    return now;
}

static void test_trial_across_a_change(void **state)
{
    struct vblk_poll_policy p;
    uint64_t now = 5 * MS;
    const uint64_t spin_wins[4] = {3000, 1000, 1000, 3000};
    const uint64_t stopped[4] = {3000, 1000, 0, 0};
    const uint64_t started[4] = {0, 0, 1000, 3000};
    const uint64_t sparse[4] = {10, 2, 20, 5};

    (void)state;
    vblk_poll_init(&p, 1000 * US);
    now = phases(&p, now, spin_wins);
    assert_true(p.spin);
    now += VBLK_POLL_TRIAL_EVERY_NS;
    /* the workload stopped half-way: nothing decided, another trial soon */
    now = phases(&p, now, stopped);
    assert_true(p.spin);
    assert_int_equal(p.trials, 1);
    assert_int_equal(p.retrials, 1);
    assert_false(vblk_poll_tick_due(&p, now + VBLK_POLL_RETRY_NS - 1));
    now += VBLK_POLL_RETRY_NS;
    /* it started half-way: the same */
    now = phases(&p, now, started);
    assert_true(p.spin);
    assert_int_equal(p.retrials, 2);
    now += VBLK_POLL_RETRY_NS;
    /* too few requests to tell a change from noise: decided (and spinning did not pay) */
    now = phases(&p, now, sparse);
    assert_false(p.spin);
    assert_int_equal(p.trials, 2);
    assert_int_equal(p.retrials, 2);
    assert_false(vblk_poll_tick_due(&p, now + VBLK_POLL_TRIAL_EVERY_NS - 1));
}

static void test_restart_on_a_new_queue(void **state)
{
    struct vblk_poll_policy p;
    const uint64_t even[4] = {1000, 1000, 1000, 1000};
    uint64_t now;

    (void)state;
    vblk_poll_init(&p, 1000 * US);
    now = phases(&p, 5 * MS, even);
    assert_false(vblk_poll_tick_due(&p, now + VBLK_POLL_PHASE_NS));
    /* a queue starts: a trial one phase later, not in 2 s */
    vblk_poll_restart(&p, now);
    assert_false(vblk_poll_tick_due(&p, now + VBLK_POLL_PHASE_NS - 1));
    assert_true(vblk_poll_tick_due(&p, now + VBLK_POLL_PHASE_NS));
    /* a running trial is left alone */
    vblk_poll_tick(&p, now + VBLK_POLL_PHASE_NS, 0, 0);
    assert_int_equal(p.phase, 0);
    vblk_poll_restart(&p, now + VBLK_POLL_PHASE_NS + 1);
    assert_int_equal(p.next_tick_ns, now + 2 * VBLK_POLL_PHASE_NS);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_starts_asleep),
        cmocka_unit_test(test_fast_work_opens_smallest_window),
        cmocka_unit_test(test_window_grows_while_it_pays),
        cmocka_unit_test(test_slow_device_collapses),
        cmocka_unit_test(test_mixed_gaps),
        cmocka_unit_test(test_limits),
        cmocka_unit_test(test_trial),
        cmocka_unit_test(test_trial_across_a_change),
        cmocka_unit_test(test_restart_on_a_new_queue),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
