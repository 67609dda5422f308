/* stats.h - per-job counters and a log-linear latency histogram.
 *
 * Owns: counting I/Os, bytes and errors, the latency histogram (64 linear sub-buckets per power
 * of two, ~1.6% resolution, no per-I/O storage), merging jobs and computing percentiles.
 */
#ifndef VBLK_BENCH_STATS_H
#define VBLK_BENCH_STATS_H

#include <stdint.h>

#define HIST_SUB_BITS 6
#define HIST_SUB      (1u << HIST_SUB_BITS)
#define HIST_BUCKETS  ((64 - HIST_SUB_BITS + 1) * HIST_SUB)

struct hist {
    uint64_t count;
    uint64_t sum;
    uint64_t min;
    uint64_t max;
    uint64_t buckets[HIST_BUCKETS];
};

struct job_stats {
    uint64_t ios;
    uint64_t reads;
    uint64_t writes;
    uint64_t flushes;
    uint64_t bytes;
    uint64_t errors;       /* status != OK */
    uint64_t len_warnings; /* used len smaller than the bytes the device had to write */
    uint64_t kicks;
    uint64_t waits;
    uint64_t runtime_ns;
    struct hist lat;
};

void hist_init(struct hist *h);
void hist_merge(struct hist *dst, const struct hist *src);
/* Value (ns) at quantile @q in [0,1], 0 if empty. */
uint64_t hist_quantile(const struct hist *h, double q);

static inline unsigned hist_index(uint64_t v)
{
    unsigned msb;

    if (v < HIST_SUB)
        return (unsigned)v;
    msb = 63u - (unsigned)__builtin_clzll(v);
    return (msb - HIST_SUB_BITS + 1) * HIST_SUB +
           (unsigned)((v >> (msb - HIST_SUB_BITS)) & (HIST_SUB - 1));
}

static inline void hist_add(struct hist *h, uint64_t v)
{
    h->count++;
    h->sum += v;
    if (v < h->min)
        h->min = v;
    if (v > h->max)
        h->max = v;
    h->buckets[hist_index(v)]++;
}

void stats_init(struct job_stats *s);
void stats_merge(struct job_stats *dst, const struct job_stats *src);

#endif
