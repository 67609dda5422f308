/* throttle_bucket.h - the leaky-bucket maths of I/O throttling, without clock or threads.
 *
 * Owns: six leaky buckets (iops and bytes/s, each total, read and write) with QEMU's
 * throttle semantics (util/throttle.c):
 *  - a bucket with rate avg leaks avg units per second; every request adds its units (1 to the
 *    iops buckets, its bytes to the bps buckets) to the total bucket and to its direction's;
 *  - a request may start when none of its four buckets is over its size, whatever the request's
 *    own size (so a big request is never starved by small ones, and may overshoot: it is paid
 *    for by the requests after it);
 *  - size: avg / 10 without a burst (a tenth of a second of I/O goes at once), or max * length
 *    with a burst rate max (max-length seconds at rate max before falling back to avg);
 *  - with a burst longer than one second (max-length > 1) a second level leaking at max, of size
 *    max / 10, keeps the burst itself at rate max.
 *  The wait a blocked request must sleep is how long its fullest bucket takes to drain back to
 *  its size.
 *
 * Time is passed in (nanoseconds of any monotonic clock) so that tests drive a fake clock.
 * Threads: none of its own; the caller serialises access to a struct vblk_tb.
 */
#ifndef VBLK_THROTTLE_BUCKET_H
#define VBLK_THROTTLE_BUCKET_H

#include <stdbool.h>
#include <stdint.h>

enum vblk_tb_kind {
    VBLK_TB_IOPS_TOTAL,
    VBLK_TB_IOPS_READ,
    VBLK_TB_IOPS_WRITE,
    VBLK_TB_BPS_TOTAL,
    VBLK_TB_BPS_READ,
    VBLK_TB_BPS_WRITE,
    VBLK_TB_COUNT,
};

/* Largest rate, burst rate and rate * burst length accepted (QEMU's THROTTLE_VALUE_MAX). */
#define VBLK_TB_VALUE_MAX 1000000000000000ull

struct vblk_tb_limit {
    uint64_t avg;        /* units per second; 0: no limit */
    uint64_t max;        /* burst rate, units per second; 0: no burst (avg / 10 at once) */
    uint64_t max_length; /* seconds a burst at max may last; 0 means 1 */
};

struct vblk_tb_bucket {
    struct vblk_tb_limit l;
    double level;       /* units not yet leaked */
    double burst_level; /* max_length > 1: units not yet leaked at rate max */
};

struct vblk_tb {
    struct vblk_tb_bucket b[VBLK_TB_COUNT];
    uint64_t last_ns; /* time of the last leak */
    bool enabled;     /* some bucket has a rate */
};

/* Set the limits and empty every bucket (as QEMU does on a configuration change). */
void vblk_tb_init(struct vblk_tb *t, const struct vblk_tb_limit lim[VBLK_TB_COUNT], uint64_t now);

/* Leak up to now, then: 0 if a read (write=false) or write may start now, else the nanoseconds
 * to wait (at least 1).  A time earlier than the last one leaks nothing. */
uint64_t vblk_tb_wait(struct vblk_tb *t, bool write, uint64_t now);

/* A request starts: add one operation and bytes to its buckets. */
void vblk_tb_account(struct vblk_tb *t, bool write, uint64_t bytes);

static inline bool vblk_tb_enabled(const struct vblk_tb *t)
{
    return t->enabled;
}

#endif
