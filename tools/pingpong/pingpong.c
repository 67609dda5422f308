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
 * --chain K,R models a ring's layout: A writes K lines, line 0 (the doorbell) last; B waits
 * for the doorbell, then reads the other K - 1 lines one after another, each line naming
 * the next (a dependent load, as a ring entry names a descriptor, a descriptor a table and a
 * table a header), then answers the same way with R lines that A reads in turn.  --chain 1,1
 * is the plain ping-pong.  A split virtqueue request is about 5,2 (avail index, ring entry,
 * descriptor, indirect table, header; used index, used element), a packed one 3,1
 * (descriptor, table, header; descriptor).
 *
 * usage: vblk-pingpong [--cpus A,B] [--rounds N] [--chain K,R] (defaults 0,1, 1000000, 1,1)
 */
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define CHAIN_MAX 16

/* One line: a value and the index of the next line to read (0: the last).  128 bytes: the
 * adjacent-line prefetcher pairs 64-byte lines, so no two of ours share a pair. */
struct line {
    _Alignas(128) uint64_t v;
    uint64_t next;
    char pad[112];
};
_Static_assert(sizeof(struct line) == 128, "one cache line pair");

/* fwd[0] and back[0] are the doorbells; --chain 1,1 bounces one line (back is fwd) */
static struct line fwd_lines[CHAIN_MAX], back_lines[CHAIN_MAX];
static struct line *fwd = fwd_lines, *back = back_lines;
static unsigned nfwd = 1, nback = 1;
static uint64_t rounds = 1000000;

/* Link a chain of k lines (once: the links stay, only the values move). */
static void link_chain(struct line *l, unsigned k)
{
    for (unsigned i = 0; i < k; i++)
        l[i].next = i + 1 < k ? i + 1 : 0;
}

/* Write the chain's lines with n, the doorbell last (release: the others are visible first).
 * One store a line: a second one to the doorbell would race the partner's spinning reads for
 * the line and cost a transfer more. */
static void send(struct line *l, unsigned k, uint64_t n)
{
    for (unsigned i = k - 1; i > 0; i--)
        __atomic_store_n(&l[i].v, n, __ATOMIC_RELAXED);
    __atomic_store_n(&l[0].v, n, __ATOMIC_RELEASE);
}

/* Wait for the doorbell to say n, then read the other lines, each found from the one before. */
static void receive(struct line *l, uint64_t n)
{
    uint64_t i;

    while (__atomic_load_n(&l[0].v, __ATOMIC_ACQUIRE) != n)
        __builtin_ia32_pause();
    for (i = __atomic_load_n(&l[0].next, __ATOMIC_RELAXED); i;
         i = __atomic_load_n(&l[i].next, __ATOMIC_RELAXED)) {
        if (i >= CHAIN_MAX || __atomic_load_n(&l[i].v, __ATOMIC_RELAXED) != n) {
            fprintf(stderr, "vblk-pingpong: line %llu out of order\n", (unsigned long long)i);
            exit(1);
        }
    }
}

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
        receive(fwd, n);
        send(back, nback, n + 1);
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
        if (!strcmp(argv[i], "--chain") && i + 1 < argc &&
            sscanf(argv[++i], "%u,%u", &nfwd, &nback) == 2 && nfwd >= 1 && nfwd <= CHAIN_MAX &&
            nback >= 1 && nback <= CHAIN_MAX)
            continue;
        fprintf(stderr,
                "usage: vblk-pingpong [--cpus A,B] [--rounds N] [--chain K,R] (K, R: 1-%d)\n",
                CHAIN_MAX);
        return 2;
    }
    if (nfwd == 1 && nback == 1)
        back = fwd;
    link_chain(fwd, nfwd);
    link_chain(back, nback);
    lat = calloc(rounds, sizeof(*lat));
    if (!lat || pin(cpu[0]) != 0) {
        fprintf(stderr, "vblk-pingpong: %s\n", lat ? "cannot run on that CPU" : strerror(ENOMEM));
        return 2;
    }
    if (pthread_create(&t, NULL, partner, &cpu[1]) != 0)
        return 2;
    for (uint64_t i = 0, n = 1; i < rounds + 1; i++, n += 2) {
        uint64_t t0 = now_ns();

        send(fwd, nfwd, n);
        receive(back, n + 1);
        if (i) /* the first round waits for the partner to start */
            lat[i - 1] = now_ns() - t0;
    }
    pthread_join(t, NULL);
    qsort(lat, rounds, sizeof(*lat), cmp);
    printf("{\"cpus\": [%d, %d], \"chain\": [%u, %u], \"rounds\": %llu, \"rtt_ns\": {\"min\": "
           "%llu, \"p50\": %llu, \"p99\": %llu, \"p999\": %llu}}\n",
           cpu[0], cpu[1], nfwd, nback, (unsigned long long)rounds, (unsigned long long)lat[0],
           (unsigned long long)lat[rounds / 2], (unsigned long long)lat[rounds * 99 / 100],
           (unsigned long long)lat[rounds * 999 / 1000]);
    free(lat);
    return 0;
}
