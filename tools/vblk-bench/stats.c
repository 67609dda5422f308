/* stats.c - histogram merge and percentile computation. */
#include "stats.h"

#include <string.h>

void hist_init(struct hist *h)
{
    memset(h, 0, sizeof(*h));
    h->min = UINT64_MAX;
}

void hist_merge(struct hist *dst, const struct hist *src)
{
    dst->count += src->count;
    dst->sum += src->sum;
    if (src->min < dst->min)
        dst->min = src->min;
    if (src->max > dst->max)
        dst->max = src->max;
    for (unsigned i = 0; i < HIST_BUCKETS; i++)
        dst->buckets[i] += src->buckets[i];
}

/* Midpoint of bucket @i. */
static uint64_t hist_bucket_value(unsigned i)
{
    unsigned group = i / HIST_SUB, sub = i % HIST_SUB;
    uint64_t low, width;

    if (group == 0)
        return i;
    low = (uint64_t)(HIST_SUB + sub) << (group - 1);
    width = 1ull << (group - 1);
    return low + width / 2;
}

uint64_t hist_quantile(const struct hist *h, double q)
{
    uint64_t rank, seen = 0;
    uint64_t v;

    if (!h->count)
        return 0;
    rank = (uint64_t)(q * (double)h->count + 0.5);
    if (rank < 1)
        rank = 1;
    if (rank > h->count)
        rank = h->count;
    for (unsigned i = 0; i < HIST_BUCKETS; i++) {
        seen += h->buckets[i];
        if (seen >= rank) {
            v = hist_bucket_value(i);
            /* Clamp to the exact extremes we know. */
            if (v < h->min)
                v = h->min;
            if (v > h->max)
                v = h->max;
            return v;
        }
    }
    return h->max;
}

void stats_init(struct job_stats *s)
{
    memset(s, 0, sizeof(*s));
    hist_init(&s->lat);
}

void stats_merge(struct job_stats *dst, const struct job_stats *src)
{
    dst->ios += src->ios;
    dst->reads += src->reads;
    dst->writes += src->writes;
    dst->flushes += src->flushes;
    dst->bytes += src->bytes;
    dst->errors += src->errors;
    dst->len_warnings += src->len_warnings;
    dst->kicks += src->kicks;
    dst->waits += src->waits;
    if (src->runtime_ns > dst->runtime_ns)
        dst->runtime_ns = src->runtime_ns;
    hist_merge(&dst->lat, &src->lat);
}
