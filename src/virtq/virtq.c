/* virtq.c - see virtq.h. */
#include "virtq/virtq.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "util/compiler.h"

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
    return 0;
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

int vblk_vq_pop(struct vblk_vq *vq, uint16_t *head)
{
    uint16_t h = READ_ONCE(vq->avail->ring[vq->last_avail & (vq->num - 1)]);

    if (unlikely(h >= vq->num)) {
        vq->broken = true;
        return -EIO;
    }
    vq->last_avail++;
    *head = h;
    if (vq->inflight) {
        struct vblk_inflight_desc *d = &vq->inflight->desc[h];

        WRITE_ONCE(d->counter, vq->inflight_counter++);
        WRITE_ONCE(d->inflight, 1);
    }
    return 0;
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

static int chain_add(const struct vblk_vq *vq, struct vblk_chain *c, uint64_t gpa, uint32_t len,
                     bool writable)
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

static inline void chain_fail(struct vblk_chain *c, int err)
{
    if (!c->err)
        c->err = err;
}

/*
 * Walk one chain.  Structure problems (indices, loops, indirect tables) break the ring; content
 * problems only fail the request, and the walk goes on so that the status byte is still found.
 */
int vblk_vq_walk(struct vblk_vq *vq, uint16_t head, struct vblk_chain *c)
{
    const struct vring_desc *table = vq->desc;
    unsigned max = vq->num, i = head, count = 0;
    uint64_t status_gpa = 0;
    uint32_t status_len = 0;
    bool indirect = false;
    struct desc_copy d;

    c->out_cnt = c->in_cnt = 0;
    c->out_len = c->in_len = 0;
    c->status = NULL;
    c->ndesc = 0;
    c->err = 0;

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
        c->ndesc++;
        if (c->ndesc > vq->max_desc)
            chain_fail(c, -E2BIG);

        if (d.len == 0) {
            chain_fail(c, -EINVAL);
        } else if (d.flags & VRING_DESC_F_WRITE) {
            status_gpa = d.addr; /* even an over-long one can still take the status */
            status_len = d.len;
            if (d.len > vq->max_seg)
                chain_fail(c, -E2BIG);
            if (!c->err)
                chain_fail(c, chain_add(vq, c, d.addr, d.len, true));
        } else if (d.len > vq->max_seg) {
            chain_fail(c, -E2BIG);
        } else {
            if (c->in_cnt)
                chain_fail(c, -EINVAL); /* readable after writable */
            if (!c->err)
                chain_fail(c, chain_add(vq, c, d.addr, d.len, false));
        }

        if (!(d.flags & VRING_DESC_F_NEXT))
            break;
        i = d.next;
    }

    if (status_len) {
        uint64_t gpa = status_gpa + status_len - 1;

        if (gpa >= status_gpa) /* no wrap */
            c->status = vblk_mem_gpa_range(vq->mem, gpa, 1);
    }
    return 0;

broken:
    vq->broken = true;
    return -EIO;
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
    if (!vq->event_idx)
        WRITE_ONCE(vq->used->flags, VRING_USED_F_NO_NOTIFY);
}
