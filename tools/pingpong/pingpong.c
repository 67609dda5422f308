/* pingpong.c - vblk-pingpong: the round trip of one cache line between two CPUs.
 *
 * The floor for a polled request at queue depth 1: a guest (one CPU) writes a request, the
 * data-plane thread (another CPU) sees it, answers, and the guest sees the answer; at the very
 * least one cache line goes there and back.  bench/run prints this beside the QD1 rows.
 *
 * Two threads pinned to CPU A and CPU B bounce a counter in one cache line: A writes n, B waits
 * for n and writes n + 1, A waits for n + 1.  A times each round trip with CLOCK_MONOTONIC
 * (read once per round, so each sample includes one clock read, ~20 ns) and prints the
 * percentiles as JSON.
 *
 * usage: vblk-pingpong [--cpus A,B] [--rounds N] (defaults 0,1 and 1000000)
 */
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static struct {
    _Alignas(64) volatile uint64_t ball;
    char pad[56];
} line;
_Static_assert(sizeof(line) == 64, "one cache line");

static uint64_t rounds = 1000000;

static int pin(int cpu)
{
    cpu_set_t set;

    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    return pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
}

static uint64_t now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void *partner(void *arg)
{
    int cpu = *(int *)arg;

    if (pin(cpu) != 0) {
        fprintf(stderr, "vblk-pingpong: cannot run on CPU %d\n", cpu);
        exit(2);
    }
    for (uint64_t n = 1; n < 2 * rounds + 2; n += 2) {
        while (__atomic_load_n(&line.ball, __ATOMIC_ACQUIRE) != n)
            __builtin_ia32_pause();
        __atomic_store_n(&line.ball, n + 1, __ATOMIC_RELEASE);
    }
    return NULL;
}

static int cmp(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

    return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
    int cpu[2] = {0, 1};
    pthread_t t;
    uint64_t *lat;

    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--cpus") && i + 1 < argc &&
            sscanf(argv[++i], "%d,%d", &cpu[0], &cpu[1]) == 2)
            continue;
        if (!strcmp(argv[i], "--rounds") && i + 1 < argc &&
            (rounds = strtoull(argv[++i], NULL, 10)) > 0)
            continue;
        fprintf(stderr, "usage: vblk-pingpong [--cpus A,B] [--rounds N]\n");
        return 2;
    }
    lat = calloc(rounds, sizeof(*lat));
    if (!lat || pin(cpu[0]) != 0) {
        fprintf(stderr, "vblk-pingpong: %s\n", lat ? "cannot run on that CPU" : strerror(ENOMEM));
        return 2;
    }
    if (pthread_create(&t, NULL, partner, &cpu[1]) != 0)
        return 2;
    for (uint64_t i = 0, n = 1; i < rounds + 1; i++, n += 2) {
        uint64_t t0 = now_ns();

        __atomic_store_n(&line.ball, n, __ATOMIC_RELEASE);
        while (__atomic_load_n(&line.ball, __ATOMIC_ACQUIRE) != n + 1)
            __builtin_ia32_pause();
        if (i) /* the first round waits for the partner to start */
            lat[i - 1] = now_ns() - t0;
    }
    pthread_join(t, NULL);
    qsort(lat, rounds, sizeof(*lat), cmp);
    printf("{\"cpus\": [%d, %d], \"rounds\": %llu, \"rtt_ns\": {\"min\": %llu, \"p50\": %llu, "
           "\"p99\": %llu, \"p999\": %llu}}\n",
           cpu[0], cpu[1], (unsigned long long)rounds, (unsigned long long)lat[0],
           (unsigned long long)lat[rounds / 2], (unsigned long long)lat[rounds * 99 / 100],
           (unsigned long long)lat[rounds * 999 / 1000]);
    free(lat);
    return 0;
}
