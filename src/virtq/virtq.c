/* virtq.c - see virtq.h. */
#include "virtq/virtq.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "util/compiler.h"

static int vqp_avail(struct vblk_vq *vq);
static bool vqp_should_notify(struct vblk_vq *vq);
static bool vqp_enable_notify(struct vblk_vq *vq);
static void vqp_disable_notify(struct vblk_vq *vq);

int vblk_vq_setup(struct vblk_vq *vq, const struct vblk_mem *mem, uint16_t num, uint64_t desc_uva,
                  uint64_t avail_uva, uint64_t used_uva)
{
    void *d, *a, *u;

    if (num == 0 || num > VBLK_VQ_MAX_SIZE || (num & (num - 1)))
        return -EINVAL;
    if ((desc_uva & 15) || (avail_uva & 1) || (used_uva & 3))
        return -EINVAL;
    d = vblk_mem_uva_range(mem, desc_uva, vblk_vq_desc_size(num));
    a = vblk_mem_uva_range(mem, avail_uva, vblk_vq_avail_size(num));
    u = vblk_mem_uva_range(mem, used_uva, vblk_vq_used_size(num));
    if (!d || !a || !u)
        return -EFAULT;
    /* The front-end's addresses may be aligned and ours not (a region's mmap_offset is the
     * front-end's choice): the rings are read with aligned atomic loads. */
    if (((uintptr_t)d & 15) || ((uintptr_t)a & 1) || ((uintptr_t)u & 3))
        return -EINVAL;
    vq->desc = d;
    vq->avail = a;
    vq->used = u;
    vq->mem = mem;
    vq->num = num;
    vq->packed = false;
    return 0;
}

uint32_t vblk_vq_base(const struct vblk_vq *vq)
{
    if (vq->packed)
        return (uint32_t)vq->avail_pos | (uint32_t)vq->avail_wrap << 15 |
               (uint32_t)vq->used_pos << 16 | (uint32_t)vq->used_wrap << 31;
    return vq->last_avail;
}

void vblk_vq_start(struct vblk_vq *vq, uint16_t last_avail)
{
    vq->broken = false;
    vq->last_avail = last_avail;
    vq->shadow_avail = last_avail;
    vq->used_idx = __atomic_load_n(&vq->used->idx, __ATOMIC_ACQUIRE);
    vq->published_used = vq->used_idx;
    vq->signalled_valid = false;
    vq->signalled_used = vq->used_idx;
}

/*
 * The acquire load of avail->idx orders it before our reads of the ring entries it covers,
 * pairing with the driver's write barrier before it bumps the index.
 */
int vblk_vq_avail(struct vblk_vq *vq)
{
    uint16_t idx, n;

    if (unlikely(vq->broken))
        return -EIO;
    if (unlikely(vq->packed))
        return vqp_avail(vq);
    if (vq->shadow_avail == vq->last_avail) {
        idx = __atomic_load_n(&vq->avail->idx, __ATOMIC_ACQUIRE);
        vq->shadow_avail = idx;
    } else {
        idx = vq->shadow_avail;
    }
    n = (uint16_t)(idx - vq->last_avail);
    if (unlikely(n > vq->num)) {
        vq->broken = true;
        return -EIO;
    }
    return n;
}

/*
 * The batch of n entries is on the used ring (used->idx stored): clear their in-flight flags,
 * then record used_idx.  A crash between the two leaves used_idx behind used->idx, which tells
 * the next daemon to clear this batch itself (vblk_vq_inflight_resume).
 */
void vblk_vq_inflight_published(struct vblk_vq *vq, uint16_t n)
{
    struct vblk_inflight_split *f = vq->inflight;
    uint16_t h = f->last_batch_head;

    for (uint16_t i = 0; i < n && h < vq->num; i++) {
        WRITE_ONCE(f->desc[h].inflight, 0);
        h = READ_ONCE(f->desc[h].next);
    }
    __atomic_store_n(&f->used_idx, vq->used_idx, __ATOMIC_RELEASE);
}

struct inflight_head {
    uint64_t counter;
    uint16_t head;
};

static int by_counter(const void *a, const void *b)
{
    const struct inflight_head *x = a, *y = b;

    return x->counter < y->counter ? -1 : x->counter > y->counter;
}

int vblk_vq_inflight_resume(struct vblk_vq *vq, uint16_t *heads, unsigned *n)
{
    struct vblk_inflight_split *f = vq->inflight;
    struct inflight_head *list;
    uint16_t used = __atomic_load_n(&vq->used->idx, __ATOMIC_ACQUIRE);
    uint64_t next_counter = 0;
    unsigned cnt = 0;

    *n = 0;
    if (READ_ONCE(f->version) == 0) { /* a fresh record: nothing was in flight */
        memset(f->desc, 0, 16ull * vq->num);
        f->desc_num = vq->num;
        f->last_batch_head = 0;
        f->used_idx = used;
        f->features = 0;
        __atomic_store_n(&f->version, 1, __ATOMIC_RELEASE);
        vq->inflight_counter = 0;
        return 0;
    }
    if (READ_ONCE(f->version) != 1 || READ_ONCE(f->desc_num) != vq->num)
        return -EINVAL;
    if (READ_ONCE(f->used_idx) != used) {
        /* the last batch reached the used ring but its flags were not cleared */
        uint16_t batch = (uint16_t)(used - READ_ONCE(f->used_idx));
        uint16_t h = READ_ONCE(f->last_batch_head);

        if (batch > vq->num)
            goto broken;
        for (uint16_t i = 0; i < batch; i++) {
            if (h >= vq->num)
                goto broken;
            WRITE_ONCE(f->desc[h].inflight, 0);
            h = READ_ONCE(f->desc[h].next);
        }
        __atomic_store_n(&f->used_idx, used, __ATOMIC_RELEASE);
    }
    list = malloc(sizeof(*list) * vq->num);
    if (!list)
        return -ENOMEM;
    for (uint16_t h = 0; h < vq->num; h++) {
        uint8_t st = READ_ONCE(f->desc[h].inflight);

        if (st > 1) {
            free(list);
            goto broken;
        }
        if (st) {
            list[cnt].counter = READ_ONCE(f->desc[h].counter);
            list[cnt].head = h;
            if (list[cnt].counter >= next_counter)
                next_counter = list[cnt].counter + 1;
            cnt++;
        }
    }
    qsort(list, cnt, sizeof(*list), by_counter);
    for (unsigned i = 0; i < cnt; i++)
        heads[i] = list[i].head;
    free(list);
    /* every head taken before the crash is either on the used ring or in this list */
    vq->last_avail = (uint16_t)(used + cnt);
    vq->shadow_avail = vq->last_avail;
    vq->inflight_counter = next_counter;
    *n = cnt;
    return 0;

broken:
    vq->broken = true;
    return -EIO;
}

struct desc_copy {
    uint64_t addr;
    uint32_t len;
    uint16_t flags;
    uint16_t next;
};

/* Fetch a descriptor exactly once: the guest may rewrite it under us. */
static inline void desc_read(const struct vring_desc *d, struct desc_copy *out)
{
    const uint64_t *w = (const uint64_t *)d;
    uint64_t w0 = __atomic_load_n(&w[0], __ATOMIC_RELAXED);
    uint64_t w1 = __atomic_load_n(&w[1], __ATOMIC_RELAXED);

    out->addr = w0;
    out->len = (uint32_t)w1;
    out->flags = (uint16_t)(w1 >> 32);
    out->next = (uint16_t)(w1 >> 48);
}

/* chain_add's general case: a range over several regions, a full iovec array, or an error. */
static __attribute__((noinline)) int chain_add_slow(const struct vblk_vq *vq, struct vblk_chain *c,
                                                    uint64_t gpa, uint32_t len, bool writable)
{
    uint64_t left = len;

    if (gpa + len < gpa)
        return -EFAULT;
    while (left) {
        uint64_t l = left;
        void *p = vblk_mem_gpa(vq->mem, gpa, &l);

        if (!p)
            return -EFAULT;
        if (c->out_cnt + c->in_cnt >= c->iov_cap)
            return -E2BIG;
        c->iov[c->out_cnt + c->in_cnt].iov_base = p;
        c->iov[c->out_cnt + c->in_cnt].iov_len = l;
        if (writable)
            c->in_cnt++;
        else
            c->out_cnt++;
        gpa += l;
        left -= l;
    }
    if (writable)
        c->in_len += len;
    else
        c->out_len += len;
    return 0;
}

/* Append the guest range [gpa, gpa + len) to the chain's iovecs.  0, -EFAULT or -E2BIG. */
static inline int chain_add(const struct vblk_vq *vq, struct vblk_chain *c, uint64_t gpa,
                            uint32_t len, bool writable)
{
    unsigned n = c->out_cnt + c->in_cnt;
    uint64_t l = len;
    void *p;

    /* the common case: room for one more segment, and the range inside one region */
    if (unlikely(n >= c->iov_cap || gpa + len < gpa))
        return chain_add_slow(vq, c, gpa, len, writable);
    p = vblk_mem_gpa(vq->mem, gpa, &l);
    if (unlikely(!p || l != len))
        return chain_add_slow(vq, c, gpa, len, writable);
    c->iov[n].iov_base = p;
    c->iov[n].iov_len = len;
    if (writable) {
        c->in_cnt++;
        c->in_len += len;
    } else {
        c->out_cnt++;
        c->out_len += len;
    }
    return 0;
}

static inline void chain_fail(struct vblk_chain *c, int err)
{
    if (!c->err)
        c->err = err;
}

/* desc_data's general case: the chain has failed already, or this descriptor is bad. */
static __attribute__((noinline)) void desc_data_slow(const struct vblk_vq *vq, struct vblk_chain *c,
                                                     uint64_t addr, uint32_t len, bool writable,
                                                     uint64_t *status_gpa, uint32_t *status_len)
{
    if (c->ndesc > vq->max_desc)
        chain_fail(c, -E2BIG);

    if (len == 0) {
        chain_fail(c, -EINVAL);
    } else if (writable) {
        *status_gpa = addr;
        *status_len = len;
        if (len > vq->max_seg)
            chain_fail(c, -E2BIG);
        if (!c->err)
            chain_fail(c, chain_add(vq, c, addr, len, true));
    } else if (len > vq->max_seg) {
        chain_fail(c, -E2BIG);
    } else {
        if (c->in_cnt)
            chain_fail(c, -EINVAL); /* readable after writable */
        if (!c->err)
            chain_fail(c, chain_add(vq, c, addr, len, false));
    }
}

/*
 * One data descriptor of a chain (split or packed): content problems fail the request only.  The
 * last writable descriptor is remembered for the status byte, even an over-long one.
 */
static inline void desc_data(const struct vblk_vq *vq, struct vblk_chain *c, uint64_t addr,
                             uint32_t len, bool writable, uint64_t *status_gpa,
                             uint32_t *status_len)
{
    c->ndesc++;
    /* the common case in one test: a good chain so far, 1 <= len <= max_seg, within max_desc */
    if (likely(!c->err && len - 1u < vq->max_seg && c->ndesc <= vq->max_desc)) {
        if (writable) {
            *status_gpa = addr;
            *status_len = len;
            c->err = chain_add(vq, c, addr, len, true);
            return;
        }
        if (likely(!c->in_cnt)) {
            c->err = chain_add(vq, c, addr, len, false);
            return;
        }
    }
    desc_data_slow(vq, c, addr, len, writable, status_gpa, status_len);
}

static inline void chain_init(struct vblk_chain *c)
{
    c->out_cnt = c->in_cnt = 0;
    c->out_len = c->in_len = 0;
    c->status = NULL;
    c->ndesc = 0;
    c->err = 0;
}

static inline void chain_status(const struct vblk_vq *vq, struct vblk_chain *c, uint64_t status_gpa,
                                uint32_t status_len)
{
    if (likely(!c->err && c->in_cnt)) {
        /* the request is good: its last writable descriptor was translated last, and the status
         * is the last byte of the last segment */
        const struct iovec *v = &c->iov[c->out_cnt + c->in_cnt - 1];

        c->status = (uint8_t *)v->iov_base + v->iov_len - 1;
        return;
    }
    if (status_len) {
        uint64_t gpa = status_gpa + status_len - 1;

        if (gpa >= status_gpa) /* no wrap */
            c->status = vblk_mem_gpa_range(vq->mem, gpa, 1);
    }
}

/* The counts of a chain walked by a fast path (kept in registers: locals of the walker). */
struct fast_counts {
    unsigned n, out_cnt;
    uint64_t out_len, in_len;
};

/*
 * One descriptor of a good chain, for the fast paths (split and packed): false on anything the
 * general path must decide (the iovec cap reached, an indirect flag, a length of 0 or over
 * max_seg, memory outside one region, readable after writable).  Writes only iov[f->n].
 */
static inline __attribute__((always_inline)) bool
fast_seg(const struct vblk_vq *vq, const struct vblk_mem *m, const struct vblk_mem_region **hint,
         struct iovec *iov, unsigned cap, struct fast_counts *f, uint64_t addr, uint32_t len,
         uint16_t flags)
{
    void *p;

    if (unlikely(f->n == cap || (flags & VRING_DESC_F_INDIRECT) || len - 1u >= vq->max_seg))
        return false;
    p = vblk_mem_gpa_in_hint(m, hint, addr, len);
    if (unlikely(!p))
        return false;
    iov[f->n].iov_base = p;
    iov[f->n].iov_len = len;
    f->n++;
    if (flags & VRING_DESC_F_WRITE) {
        f->in_len += len;
    } else {
        if (unlikely(f->in_len))
            return false; /* readable after writable */
        f->out_cnt++;
        f->out_len += len;
    }
    return true;
}

/* A fast path's good chain, handed over: its status byte is the last byte of its last segment
 * (iov[f->n - 1], of last_len bytes). */
static inline __attribute__((always_inline)) void fast_done(struct vblk_chain *c,
                                                            const struct fast_counts *f,
                                                            const struct iovec *iov,
                                                            uint32_t last_len)
{
    c->out_cnt = f->out_cnt;
    c->in_cnt = f->n - f->out_cnt;
    c->out_len = f->out_len;
    c->in_len = f->in_len;
    c->ndesc = f->n;
    c->err = 0;
    c->status = (uint8_t *)iov[f->n - 1].iov_base + last_len - 1;
}

/*
 * An indirect descriptor's table, for the fast paths (split and packed tables alike: 16-byte
 * entries, 8-byte aligned): NULL on anything the general path must decide (no indirect feature,
 * NEXT beside it, a length of 0 or not a multiple of 16, more entries than max_desc or
 * VBLK_VQ_MAX_INDIRECT, memory outside one region, misaligned).  *n: its entries.
 */
static inline __attribute__((always_inline)) const void *
fast_table(const struct vblk_vq *vq, const struct vblk_mem *m, const struct vblk_mem_region **hint,
           uint64_t addr, uint32_t len, uint16_t flags, unsigned *n)
{
    const void *table;

    *n = len / 16;
    if (!vq->indirect || (flags & VRING_DESC_F_NEXT) || len == 0 || (len & 15) ||
        *n > vq->max_desc || *n > VBLK_VQ_MAX_INDIRECT)
        return NULL;
    table = vblk_mem_gpa_in_hint(m, hint, addr, len);
    if (!table || ((uintptr_t)table & 7))
        return NULL;
    return table;
}

/*
 * The walk of a good chain, the common case, with its counts in registers: the general walk below
 * keeps them in the chain, which the compiler must assume its iovec stores may overwrite.  Each
 * descriptor is read once.  It gives up (false) on anything unusual, with nothing the caller
 * relies on changed, and the general walk starts over and decides: an error, a ring problem, a
 * range over two memory regions, or a chain longer than this one accepts (its bound, at most the
 * table or ring size, also ends a loop).
 */
static inline bool walk_fast(const struct vblk_vq *vq, uint16_t head, struct vblk_chain *c)
{
    const struct vring_desc *table = vq->desc;
    const struct vblk_mem *m = vq->mem;
    const struct vblk_mem_region *hint = NULL;
    struct iovec *iov = c->iov;
    unsigned max = vq->num, i = head, cap;
    struct fast_counts f = {0};
    struct desc_copy d;

    if (unlikely(i >= max))
        return false;
    desc_read(&table[i], &d);
    if (d.flags & VRING_DESC_F_INDIRECT) {
        table = fast_table(vq, m, &hint, d.addr, d.len, d.flags, &max);
        if (!table)
            return false;
        i = 0;
        desc_read(&table[0], &d);
    }
    cap = c->iov_cap < vq->max_desc ? c->iov_cap : vq->max_desc;
    if (cap > max)
        cap = max;
    for (;;) {
        if (unlikely(!fast_seg(vq, m, &hint, iov, cap, &f, d.addr, d.len, d.flags)))
            return false;
        if (!(d.flags & VRING_DESC_F_NEXT))
            break;
        i = d.next;
        if (unlikely(i >= max))
            return false;
        desc_read(&table[i], &d);
    }
    if (unlikely(!f.in_len))
        return false; /* no writable descriptor: no status byte */
    fast_done(c, &f, iov, d.len);
    return true;
}

/*
 * Walk one chain.  Structure problems (indices, loops, indirect tables) break the ring; content
 * problems only fail the request, and the walk goes on so that the status byte is still found.
 */
static __attribute__((noinline)) int walk_slow(struct vblk_vq *vq, uint16_t head,
                                               struct vblk_chain *c)
{
    const struct vring_desc *table = vq->desc;
    unsigned max = vq->num, i = head, count = 0;
    uint64_t status_gpa = 0;
    uint32_t status_len = 0;
    bool indirect = false;
    struct desc_copy d;

    chain_init(c);
    for (;;) {
        if (unlikely(i >= max))
            goto broken;
        desc_read(&table[i], &d);

        if (d.flags & VRING_DESC_F_INDIRECT) {
            uint64_t n = d.len / 16;

            /* only the head may point at a table; no nesting; no NEXT alongside it */
            if (!vq->indirect || indirect || count || (d.flags & VRING_DESC_F_NEXT))
                goto broken;
            if (d.len == 0 || (d.len & 15) || n > VBLK_VQ_MAX_INDIRECT)
                goto broken;
            if (n > vq->max_desc)
                chain_fail(c, -E2BIG); /* over the advertised limits: fail, don't break */
            table = vblk_mem_gpa_range(vq->mem, d.addr, d.len);
            if (!table || ((uintptr_t)table & 7))
                goto broken;
            indirect = true;
            max = (unsigned)n;
            i = 0;
            continue;
        }

        if (unlikely(++count > max))
            goto broken; /* a loop */
        desc_data(vq, c, d.addr, d.len, d.flags & VRING_DESC_F_WRITE, &status_gpa, &status_len);

        if (!(d.flags & VRING_DESC_F_NEXT))
            break;
        i = d.next;
    }
    chain_status(vq, c, status_gpa, status_len);
    return 0;

broken:
    vq->broken = true;
    return -EIO;
}

int vblk_vq_walk(struct vblk_vq *vq, uint16_t head, struct vblk_chain *c)
{
    if (likely(walk_fast(vq, head, c)))
        return 0;
    return walk_slow(vq, head, c);
}

/*
 * The full barrier orders our used->idx store before reading the driver's used_event/flags;
 * it pairs with the driver's barrier between writing used_event and reading used->idx.
 */
bool vblk_vq_should_notify(struct vblk_vq *vq)
{
    uint16_t old, new, ev;
    bool valid;

    smp_mb();
    if (unlikely(vq->packed))
        return vqp_should_notify(vq);
    if (!vq->event_idx)
        return !(READ_ONCE(vq->avail->flags) & VRING_AVAIL_F_NO_INTERRUPT);
    old = vq->signalled_used;
    valid = vq->signalled_valid;
    new = vq->used_idx;
    vq->signalled_used = new;
    vq->signalled_valid = true;
    ev = READ_ONCE(vq->avail->ring[vq->num]); /* used_event */
    return !valid || vring_need_event(ev, new, old);
}

bool vblk_vq_enable_notify(struct vblk_vq *vq)
{
    if (unlikely(vq->packed))
        return vqp_enable_notify(vq);
    if (vq->event_idx) {
        /* avail_event lives right after the used ring */
        uint16_t *avail_event = (uint16_t *)&vq->used->ring[vq->num];

        WRITE_ONCE(*avail_event, vq->last_avail);
    } else {
        WRITE_ONCE(vq->used->flags, 0);
    }
    smp_mb(); /* the flag/event store must be visible before we re-read avail->idx */
    vq->shadow_avail = __atomic_load_n(&vq->avail->idx, __ATOMIC_ACQUIRE);
    return vq->shadow_avail != vq->last_avail;
}

void vblk_vq_disable_notify(struct vblk_vq *vq)
{
    if (unlikely(vq->packed)) {
        vqp_disable_notify(vq);
        return;
    }
    if (!vq->event_idx)
        WRITE_ONCE(vq->used->flags, VRING_USED_F_NO_NOTIFY);
}

/* ---- packed rings ---- */

#define PF_AVAIL (1u << VRING_PACKED_DESC_F_AVAIL)
#define PF_USED  (1u << VRING_PACKED_DESC_F_USED)

int vblk_vqp_setup(struct vblk_vq *vq, const struct vblk_mem *mem, uint16_t num, uint64_t desc_uva,
                   uint64_t driver_uva, uint64_t device_uva)
{
    void *d, *drv, *dev;

    if (num == 0 || num > VBLK_VQ_MAX_SIZE)
        return -EINVAL;
    if ((desc_uva & 15) || (driver_uva & 3) || (device_uva & 3))
        return -EINVAL;
    d = vblk_mem_uva_range(mem, desc_uva, vblk_vqp_desc_size(num));
    drv = vblk_mem_uva_range(mem, driver_uva, VBLK_VQP_EVENT_SIZE);
    dev = vblk_mem_uva_range(mem, device_uva, VBLK_VQP_EVENT_SIZE);
    if (!d || !drv || !dev)
        return -EFAULT;
    if (((uintptr_t)d & 15) || ((uintptr_t)drv & 3) || ((uintptr_t)dev & 3))
        return -EINVAL;
    vq->desc = NULL;
    vq->avail = NULL;
    vq->used = NULL;
    vq->pdesc = d;
    vq->driver_event = drv;
    vq->device_event = dev;
    vq->mem = mem;
    vq->num = num;
    vq->packed = true;
    return 0;
}

/*
 * A position and its wrap counter as one number in [0, 2 * num): the counter starts at 1 and
 * flips each time the position passes the end, so the pair runs through 2 * num states.
 */
static inline unsigned lin(const struct vblk_vq *vq, uint16_t pos, bool wrap)
{
    return pos + (wrap ? 0u : vq->num);
}

/* Steps from a to b on that cycle. */
static inline unsigned dist(const struct vblk_vq *vq, unsigned a, unsigned b)
{
    return b >= a ? b - a : b + 2u * vq->num - a;
}

int vblk_vqp_start(struct vblk_vq *vq, uint32_t base)
{
    uint16_t a = (uint16_t)base, u = (uint16_t)(base >> 16);

    if (u == 0)
        u = a;
    if ((a & 0x7fff) >= vq->num || (u & 0x7fff) >= vq->num)
        return -EINVAL;
    vq->avail_pos = a & 0x7fff;
    vq->avail_wrap = a >> 15;
    vq->used_pos = u & 0x7fff;
    vq->used_wrap = u >> 15;
    if (dist(vq, lin(vq, vq->used_pos, vq->used_wrap), lin(vq, vq->avail_pos, vq->avail_wrap)) >
        vq->num)
        return -EINVAL;
    vq->broken = false;
    vq->last_avail = vq->shadow_avail = 0;
    vq->used_idx = vq->published_used = 0;
    vq->signalled_valid = false;
    vq->signalled_used = (uint16_t)lin(vq, vq->used_pos, vq->used_wrap);
    vq->device_flags = 0xffff; /* unknown: written on the first enable/disable */
    vq->inflight = NULL;
    memset(vq->chain_len, 0, sizeof(vq->chain_len));
    return 0;
}

/* Available: AVAIL matches the driver's wrap counter and USED does not. */
static int vqp_avail(struct vblk_vq *vq)
{
    uint16_t f = __atomic_load_n(&vq->pdesc[vq->avail_pos].flags, __ATOMIC_ACQUIRE);

    return (!!(f & PF_AVAIL) == vq->avail_wrap && !!(f & PF_USED) != vq->avail_wrap) ? 1 : 0;
}

/* Fetch a packed descriptor exactly once. */
static inline void pdesc_read(const struct vring_packed_desc *d, struct vring_packed_desc *out)
{
    const uint64_t *w = (const uint64_t *)d;
    uint64_t w0 = __atomic_load_n(&w[0], __ATOMIC_RELAXED);
    uint64_t w1 = __atomic_load_n(&w[1], __ATOMIC_RELAXED);

    out->addr = w0;
    out->len = (uint32_t)w1;
    out->id = (uint16_t)(w1 >> 32);
    out->flags = (uint16_t)(w1 >> 48);
}

/* Take buffer id, whose last of count ring descriptors is at pos (lap wrap): the driver's next
 * buffer starts after it. */
static inline void vqp_take(struct vblk_vq *vq, uint16_t id, unsigned count, uint16_t pos,
                            bool wrap)
{
    vq->chain_len[id] = (uint16_t)count;
    if (++pos == vq->num) {
        pos = 0;
        wrap = !wrap;
    }
    vq->avail_pos = pos;
    vq->avail_wrap = wrap;
}

/*
 * vqp_pop_slow's common case, as walk_fast is walk_slow's: a good buffer (one indirect
 * descriptor whose table holds a good chain, or a good chain in the ring) with its counts in
 * registers.  Each descriptor is read once.  It gives up (false) on anything unusual, with
 * nothing the caller relies on changed (only iovecs below the chain's cap may be written), and
 * vqp_pop_slow starts over and decides.  On success it takes the buffer as vqp_pop_slow would.
 */
static inline bool vqp_pop_fast(struct vblk_vq *vq, uint16_t *id, struct vblk_chain *c)
{
    const struct vblk_mem *m = vq->mem;
    const struct vblk_mem_region *hint = NULL;
    const struct vring_packed_desc *table = NULL;
    struct iovec *iov = c->iov;
    uint16_t pos = vq->avail_pos;
    bool wrap = vq->avail_wrap;
    unsigned cap, room, ti = 0, tn = 0, count = 1;
    struct fast_counts f = {0};
    struct vring_packed_desc d, h;

    /* descriptors this buffer may take from the ring: up to the ones not handed back yet */
    room = dist(vq, lin(vq, vq->used_pos, vq->used_wrap), lin(vq, pos, wrap));
    if (unlikely(room >= vq->num))
        return false; /* a full ring (or more in flight than it holds: the slow path decides) */
    room = vq->num - room;
    pdesc_read(&vq->pdesc[pos], &h);
    d = h;
    cap = c->iov_cap < vq->max_desc ? c->iov_cap : vq->max_desc;
    if (h.flags & VRING_DESC_F_INDIRECT) {
        table = fast_table(vq, m, &hint, h.addr, h.len, h.flags, &tn);
        if (!table)
            return false;
        if (cap > tn)
            cap = tn;
        pdesc_read(&table[0], &d);
        ti = 1;
    } else if (cap > room) {
        cap = room;
    }
    for (;;) {
        if (unlikely(!fast_seg(vq, m, &hint, iov, cap, &f, d.addr, d.len, d.flags)))
            return false;
        if (table) {
            /* a table is used whole, in order; NEXT and id are ignored there */
            if (ti == tn)
                break;
            pdesc_read(&table[ti++], &d);
            continue;
        }
        if (!(d.flags & VRING_DESC_F_NEXT)) {
            h = d; /* the buffer id is the last descriptor's */
            break;
        }
        if (++pos == vq->num) {
            pos = 0;
            wrap = !wrap;
        }
        count++;
        pdesc_read(&vq->pdesc[pos], &d);
    }
    if (unlikely(!f.in_len || h.id >= vq->num || vq->chain_len[h.id]))
        return false; /* no status byte, or a bad or busy id (the slow path breaks the ring) */
    vqp_take(vq, h.id, count, pos, wrap);
    *id = h.id;
    fast_done(c, &f, iov, (uint32_t)iov[f.n - 1].iov_len);
    return true;
}

/*
 * The descriptors after the first need no availability check: the driver makes the first one
 * available last, and our acquire load of its flags (vqp_avail) orders the reads that follow.
 */
static __attribute__((noinline)) int vqp_pop_slow(struct vblk_vq *vq, uint16_t *id,
                                                  struct vblk_chain *c)
{
    uint16_t pos = vq->avail_pos;
    bool wrap = vq->avail_wrap;
    unsigned in_flight, count = 0;
    uint64_t status_gpa = 0;
    uint32_t status_len = 0;
    struct vring_packed_desc d, t;

    chain_init(c);
    in_flight = dist(vq, lin(vq, vq->used_pos, vq->used_wrap), lin(vq, pos, wrap));
    for (;;) {
        /* a chain longer than the ring, or running into descriptors not handed back yet */
        if (unlikely(in_flight + ++count > vq->num))
            goto broken;
        pdesc_read(&vq->pdesc[pos], &d);

        if (d.flags & VRING_DESC_F_INDIRECT) {
            const struct vring_packed_desc *table;
            uint32_t n = d.len / 16;

            /* alone in the ring (no chain around it) */
            if (!vq->indirect || count != 1 || (d.flags & VRING_DESC_F_NEXT))
                goto broken;
            if (d.len == 0 || (d.len & 15) || n > VBLK_VQ_MAX_INDIRECT)
                goto broken;
            if (n > vq->max_desc)
                chain_fail(c, -E2BIG);
            table = vblk_mem_gpa_range(vq->mem, d.addr, d.len);
            if (!table || ((uintptr_t)table & 7))
                goto broken;
            for (uint32_t i = 0; i < n; i++) {
                pdesc_read(&table[i], &t);
                if (t.flags & VRING_DESC_F_INDIRECT)
                    goto broken; /* no nesting; NEXT and id are ignored in a table */
                desc_data(vq, c, t.addr, t.len, t.flags & VRING_DESC_F_WRITE, &status_gpa,
                          &status_len);
            }
            break;
        }
        desc_data(vq, c, d.addr, d.len, d.flags & VRING_DESC_F_WRITE, &status_gpa, &status_len);
        if (!(d.flags & VRING_DESC_F_NEXT))
            break;
        if (++pos == vq->num) {
            pos = 0;
            wrap = !wrap;
        }
    }
    /* the buffer id is the last descriptor's; one buffer in flight per id */
    if (unlikely(d.id >= vq->num || vq->chain_len[d.id]))
        goto broken;
    vqp_take(vq, d.id, count, pos, wrap);
    *id = d.id;
    chain_status(vq, c, status_gpa, status_len);
    return 0;

broken:
    vq->broken = true;
    return -EIO;
}

int vblk_vqp_pop(struct vblk_vq *vq, uint16_t *id, struct vblk_chain *c)
{
    if (likely(vqp_pop_fast(vq, id, c)))
        return 0;
    return vqp_pop_slow(vq, id, c);
}

/*
 * A used element goes at the device's own position (completion order), then the position skips
 * the chain's descriptors.  The first element of a batch gets its flags at publish time, so the
 * driver sees the batch whole; the others are written now (the driver reads them only after it).
 */
void vblk_vqp_push(struct vblk_vq *vq, uint16_t id, uint32_t len)
{
    struct vring_packed_desc *e = &vq->pdesc[vq->used_pos];
    uint16_t flags = vq->used_wrap ? (PF_AVAIL | PF_USED) : 0;
    unsigned n = id < vq->num ? vq->chain_len[id] : 0;

    WRITE_ONCE(e->id, id);
    WRITE_ONCE(e->len, len);
    if (vq->used_idx == vq->published_used) {
        vq->pending_pos = vq->used_pos;
        vq->pending_flags = flags;
    } else {
        WRITE_ONCE(e->flags, flags);
    }
    if (unlikely(n == 0))
        n = 1; /* not taken by vblk_vqp_pop: a caller bug, keep the ring consistent */
    else
        vq->chain_len[id] = 0;
    vq->used_pos = (uint16_t)(vq->used_pos + n);
    if (vq->used_pos >= vq->num) {
        vq->used_pos = (uint16_t)(vq->used_pos - vq->num);
        vq->used_wrap = !vq->used_wrap;
    }
    vq->used_idx++;
}

bool vblk_vqp_publish(struct vblk_vq *vq)
{
    __atomic_store_n(&vq->pdesc[vq->pending_pos].flags, vq->pending_flags, __ATOMIC_RELEASE);
    vq->published_used = vq->used_idx;
    return true;
}

/* The driver's event structure, read as one 32-bit word (off_wrap, flags). */
static bool vqp_should_notify(struct vblk_vq *vq)
{
    uint32_t w = __atomic_load_n((const uint32_t *)vq->driver_event, __ATOMIC_RELAXED);
    uint16_t off_wrap = (uint16_t)w, flags = (uint16_t)(w >> 16) & 3;
    unsigned old = vq->signalled_used, new = lin(vq, vq->used_pos, vq->used_wrap), ev, a;
    bool valid = vq->signalled_valid;

    vq->signalled_used = (uint16_t) new;
    vq->signalled_valid = true;
    if (flags == VRING_PACKED_EVENT_FLAG_DISABLE)
        return false;
    /* ENABLE, reserved 3, or DESC without EVENT_IDX: notify */
    if (flags != VRING_PACKED_EVENT_FLAG_DESC || !vq->event_idx || !valid)
        return true;
    if ((off_wrap & 0x7fff) >= vq->num)
        return true; /* nonsense offset: better a spurious interrupt than a hang */
    ev = lin(vq, off_wrap & 0x7fff, off_wrap >> 15);
    /* the event position was written over in [old, new) */
    a = dist(vq, ev, new);
    return a >= 1 && a <= dist(vq, old, new);
}

static bool vqp_enable_notify(struct vblk_vq *vq)
{
    uint16_t off = 0, flags = VRING_PACKED_EVENT_FLAG_ENABLE;

    if (vq->event_idx) {
        off = (uint16_t)(vq->avail_pos | (unsigned)vq->avail_wrap << 15);
        flags = VRING_PACKED_EVENT_FLAG_DESC;
    }
    __atomic_store_n((uint32_t *)vq->device_event, off | (uint32_t)flags << 16, __ATOMIC_RELAXED);
    vq->device_flags = flags;
    smp_mb(); /* the event store must be visible before we look at the ring again */
    return vqp_avail(vq) > 0;
}

static void vqp_disable_notify(struct vblk_vq *vq)
{
    if (vq->device_flags != VRING_PACKED_EVENT_FLAG_DISABLE) {
        WRITE_ONCE(vq->device_event->flags, VRING_PACKED_EVENT_FLAG_DISABLE);
        vq->device_flags = VRING_PACKED_EVENT_FLAG_DISABLE;
    }
}
