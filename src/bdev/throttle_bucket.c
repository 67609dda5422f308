/* throttle_bucket.c - see throttle_bucket.h. */
#include "bdev/throttle_bucket.h"

#include <math.h>
#include <string.h>

#define NS_PER_S 1e9

static uint64_t length(const struct vblk_tb_bucket *b)
{
    return b->l.max_length ? b->l.max_length : 1;
}

void vblk_tb_init(struct vblk_tb *t, const struct vblk_tb_limit lim[VBLK_TB_COUNT], uint64_t now)
{
    memset(t, 0, sizeof(*t));
    for (int i = 0; i < VBLK_TB_COUNT; i++) {
        t->b[i].l = lim[i];
        if (lim[i].avg)
            t->enabled = true;
    }
    t->last_ns = now;
}

static void leak(struct vblk_tb_bucket *b, double dt_s)
{
    b->level = fmax(b->level - (double)b->l.avg * dt_s, 0);
    if (length(b) > 1)
        b->burst_level = fmax(b->burst_level - (double)b->l.max * dt_s, 0);
}

/* Nanoseconds until b is no longer over its size (0: it is not). */
static double bucket_wait(const struct vblk_tb_bucket *b)
{
    double size, burst_size, extra;

    if (!b->l.avg)
        return 0;
    if (!b->l.max) {
        size = (double)b->l.avg / 10; /* short bursts still go without a configured burst */
        burst_size = 0;
    } else {
        size = (double)b->l.max * (double)length(b);
        burst_size = (double)b->l.max / 10;
    }
    extra = b->level - size;
    if (extra > 0)
        return extra * NS_PER_S / (double)b->l.avg;
    if (length(b) > 1) {
        extra = b->burst_level - burst_size;
        if (extra > 0)
            return extra * NS_PER_S / (double)b->l.max;
    }
    return 0;
}

static const enum vblk_tb_kind checked[2][4] = {
    {VBLK_TB_IOPS_TOTAL, VBLK_TB_IOPS_READ, VBLK_TB_BPS_TOTAL, VBLK_TB_BPS_READ},
    {VBLK_TB_IOPS_TOTAL, VBLK_TB_IOPS_WRITE, VBLK_TB_BPS_TOTAL, VBLK_TB_BPS_WRITE},
};

uint64_t vblk_tb_wait(struct vblk_tb *t, bool write, uint64_t now)
{
    double wait = 0;

    if (now > t->last_ns) {
        double dt = (double)(now - t->last_ns) / NS_PER_S;

        for (int i = 0; i < VBLK_TB_COUNT; i++)
            leak(&t->b[i], dt);
        t->last_ns = now;
    }
    for (int i = 0; i < 4; i++)
        wait = fmax(wait, bucket_wait(&t->b[checked[write][i]]));
    if (wait <= 0)
        return 0;
    if (wait >= 1e18) /* only with absurd levels; keep it representable */
        return (uint64_t)1e18;
    return (uint64_t)ceil(wait);
}

static void add(struct vblk_tb_bucket *b, double units)
{
    b->level += units;
    if (length(b) > 1)
        b->burst_level += units;
}

void vblk_tb_account(struct vblk_tb *t, bool write, uint64_t bytes)
{
    add(&t->b[VBLK_TB_IOPS_TOTAL], 1);
    add(&t->b[write ? VBLK_TB_IOPS_WRITE : VBLK_TB_IOPS_READ], 1);
    add(&t->b[VBLK_TB_BPS_TOTAL], (double)bytes);
    add(&t->b[write ? VBLK_TB_BPS_WRITE : VBLK_TB_BPS_READ], (double)bytes);
}
