/* lathist.c - see lathist.h. */
#include "util/lathist.h"

_Static_assert(VBLK_LAT_BUCKETS == 304, "bucket layout changed: check the metrics' le bounds");

uint64_t vblk_lat_bucket_lo(unsigned b)
{
    unsigned e, m;

    if (b < VBLK_LAT_SUB)
        return b;
    e = b / VBLK_LAT_SUB + VBLK_LAT_SUB_BITS - 1;
    m = b % VBLK_LAT_SUB;
    return (uint64_t)(VBLK_LAT_SUB + m) << (e - VBLK_LAT_SUB_BITS);
}

uint64_t vblk_lat_bucket_hi(unsigned b)
{
    if (b >= VBLK_LAT_BUCKETS - 1)
        return UINT64_MAX;
    return vblk_lat_bucket_lo(b + 1);
}

uint64_t vblk_lat_count(const struct vblk_lat_hist *h)
{
    uint64_t n = 0;

    for (unsigned i = 0; i < VBLK_LAT_BUCKETS; i++)
        n += h->bucket[i];
    return n;
}

void vblk_lat_add(struct vblk_lat_hist *h, const struct vblk_lat_hist *s)
{
    for (unsigned i = 0; i < VBLK_LAT_BUCKETS; i++)
        h->bucket[i] += s->bucket[i];
    h->sum_ns += s->sum_ns;
    if (s->max_ns > h->max_ns)
        h->max_ns = s->max_ns;
}

uint64_t vblk_lat_quantile(const struct vblk_lat_hist *h, double q)
{
    uint64_t n = vblk_lat_count(h), rank, seen = 0;

    if (n == 0)
        return 0;
    if (!(q > 0))
        q = 0;
    if (q >= 1)
        return h->max_ns;
    rank = (uint64_t)(q * (double)n);
    if ((double)rank < q * (double)n) /* ceil() without libm */
        rank++;
    if (rank == 0)
        rank = 1;
    for (unsigned i = 0; i < VBLK_LAT_BUCKETS; i++) {
        seen += h->bucket[i];
        if (seen >= rank) {
            uint64_t top = vblk_lat_bucket_hi(i) - 1;

            /* a snapshot taken while the writer goes on may have a max from before a bucket */
            return h->max_ns && top > h->max_ns && h->max_ns >= vblk_lat_bucket_lo(i) ? h->max_ns
                                                                                      : top;
        }
    }
    return h->max_ns;
}

void vblk_lat_percentiles(const struct vblk_lat_hist *h, struct vblk_lat_pct *out)
{
    out->count = vblk_lat_count(h);
    out->p50 = (double)vblk_lat_quantile(h, 0.5) / 1e3;
    out->p90 = (double)vblk_lat_quantile(h, 0.9) / 1e3;
    out->p99 = (double)vblk_lat_quantile(h, 0.99) / 1e3;
    out->p999 = (double)vblk_lat_quantile(h, 0.999) / 1e3;
    out->max = out->count ? (double)h->max_ns / 1e3 : 0;
}
