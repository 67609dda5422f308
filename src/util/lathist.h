/* lathist.h - a fixed-size log-linear latency histogram (HDR-style) and its percentiles.
 *
 * Values are nanoseconds.  Below 8 every value has its own bucket; above, each power of two is
 * cut into 8 equal sub-buckets, so a bucket is at most 1/8 (12.5%) of its lower bound wide.
 * Values of 2^40 ns (about 18 minutes) and more share the last bucket; the largest value seen is
 * kept exactly in max_ns.
 *
 * Threads: vblk_lat_bucket() is pure.  Recording is the owner's business (virtio_blk.c records
 * with single-writer relaxed atomics); the percentile helpers work on a private snapshot.
 */
#ifndef VBLK_LATHIST_H
#define VBLK_LATHIST_H

#include <stdint.h>

#define VBLK_LAT_SUB_BITS 3
#define VBLK_LAT_SUB      (1u << VBLK_LAT_SUB_BITS) /* sub-buckets per power of two */
#define VBLK_LAT_MAX_EXP  40                        /* 2^40 ns and above: the last bucket */
#define VBLK_LAT_BUCKETS  ((VBLK_LAT_MAX_EXP - VBLK_LAT_SUB_BITS + 1) * VBLK_LAT_SUB)

struct vblk_lat_hist {
    uint64_t bucket[VBLK_LAT_BUCKETS];
    uint64_t sum_ns; /* of every value recorded */
    uint64_t max_ns; /* the largest value recorded */
};

/* Percentiles of a histogram, in microseconds (0 when it is empty). */
struct vblk_lat_pct {
    uint64_t count;
    double p50, p90, p99, p999, max;
};

/* The bucket of a value (ns). */
static inline unsigned vblk_lat_bucket(uint64_t ns)
{
    unsigned e;

    if (ns < VBLK_LAT_SUB)
        return (unsigned)ns;
    e = 63u - (unsigned)__builtin_clzll(ns);
    if (e >= VBLK_LAT_MAX_EXP)
        return VBLK_LAT_BUCKETS - 1;
    return (e - VBLK_LAT_SUB_BITS + 1) * VBLK_LAT_SUB +
           (unsigned)((ns >> (e - VBLK_LAT_SUB_BITS)) & (VBLK_LAT_SUB - 1));
}

/* The values of bucket b: [lo, hi).  The last bucket's hi is UINT64_MAX. */
uint64_t vblk_lat_bucket_lo(unsigned b);
uint64_t vblk_lat_bucket_hi(unsigned b);
/* Number of values recorded (the sum of the buckets). */
uint64_t vblk_lat_count(const struct vblk_lat_hist *h);
/* h += s. */
void vblk_lat_add(struct vblk_lat_hist *h, const struct vblk_lat_hist *s);
/* The value (ns) at or below which a fraction q (0 < q <= 1) of the values lie: the highest
 * value of the bucket holding the value of rank ceil(q * count), but never above max_ns (so
 * q = 1 is max_ns).  At most 12.5% above the true value.  0 for an empty histogram. */
uint64_t vblk_lat_quantile(const struct vblk_lat_hist *h, double q);
/* p50, p90, p99, p99.9 and max in microseconds. */
void vblk_lat_percentiles(const struct vblk_lat_hist *h, struct vblk_lat_pct *out);

#endif
