/* virtq.c - split and packed virtqueue driver: ring layout, publish/kick, used consumption, call
 * waits. */
#include "virtq.h"

#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <unistd.h>

#define VQ_ALIGN 4096u

static size_t vq_desc_bytes(uint16_t num)
{
    return sizeof(struct vring_desc) * num;
}

static size_t vq_avail_bytes(uint16_t num)
{
    return sizeof(struct vring_avail) + sizeof(uint16_t) * num + sizeof(uint16_t); /* +used_event */
}

static size_t vq_used_bytes(uint16_t num)
{
    return sizeof(struct vring_used) + sizeof(struct vring_used_elem) * num +
           sizeof(uint16_t); /* +avail_event */
}

size_t virtq_mem_bytes(uint16_t num)
{
    return vq_desc_bytes(num) + vq_avail_bytes(num) + vq_used_bytes(num) + 3 * VQ_ALIGN;
}

/* used_event lives after the avail ring, avail_event after the used ring. */
static inline uint16_t *vq_used_event(struct virtq *vq)
{
    return &vq->avail->ring[vq->num];
}

static inline uint16_t vq_avail_event(const struct virtq *vq)
{
    return __atomic_load_n((const uint16_t *)&vq->used->ring[vq->num], __ATOMIC_RELAXED);
}

/* Tells the device whether we want a call after the next used entry.  With EVENT_IDX a
 * used_event just behind last_used can only trigger after 64k completions without us
 * updating it, which never happens because every consume moves it along. */
static void vq_update_call_suppression(struct virtq *vq)
{
    if (vq->packed) {
        uint16_t flags = VRING_PACKED_EVENT_FLAG_DISABLE, off = 0;

        if (vq->want_calls && vq->event_idx) { /* a call once our next used slot is written */
            flags = VRING_PACKED_EVENT_FLAG_DESC;
            off = (uint16_t)(vq->used_pos | (unsigned)vq->used_wrap << 15);
        } else if (vq->want_calls) {
            flags = VRING_PACKED_EVENT_FLAG_ENABLE;
        }
        __atomic_store_n((uint32_t *)vq->driver_event, off | (uint32_t)flags << 16,
                         __ATOMIC_RELAXED);
        return;
    }
    if (vq->event_idx)
        __atomic_store_n(vq_used_event(vq),
                         (uint16_t)(vq->want_calls ? vq->last_used : vq->last_used - 1),
                         __ATOMIC_RELAXED);
}

static int vq_eventfds(struct virtq *vq);

int virtq_init(struct virtq *vq, struct gmem *mem, uint16_t num, bool event_idx, bool want_calls)
{
    if (num == 0 || (num & (num - 1)) || num > 32768)
        return -EINVAL;
    vq->num = num;
    vq->avail_idx = vq->kicked_idx = vq->last_used = 0;
    vq->event_idx = event_idx;
    vq->want_calls = want_calls;
    vq->kicks = vq->waits = 0;
    vq->packed = false;
    vq->chain_n = NULL;
    vq->desc = gmem_alloc(mem, vq_desc_bytes(num), VQ_ALIGN);
    vq->avail = gmem_alloc(mem, vq_avail_bytes(num), VQ_ALIGN);
    vq->used = gmem_alloc(mem, vq_used_bytes(num), VQ_ALIGN);
    if (!vq->desc || !vq->avail || !vq->used)
        return -ENOMEM;
    vq->avail->flags = (!event_idx && !want_calls) ? VRING_AVAIL_F_NO_INTERRUPT : 0;
    vq_update_call_suppression(vq);
    return vq_eventfds(vq);
}

static int vq_eventfds(struct virtq *vq)
{
    int ret;

    vq->kickfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (vq->kickfd < 0)
        return -errno;
    vq->callfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (vq->callfd < 0) {
        ret = -errno;
        close(vq->kickfd);
        vq->kickfd = -1;
        return ret;
    }
    return 0;
}

int virtq_init_packed(struct virtq *vq, struct gmem *mem, uint16_t num, bool event_idx,
                      bool want_calls)
{
    if (num == 0 || num > 32768)
        return -EINVAL;
    vq->packed = true;
    vq->num = num;
    vq->avail_idx = vq->kicked_idx = vq->last_used = 0;
    vq->next_pos = vq->kicked_pos = vq->used_pos = 0;
    vq->next_wrap = vq->kicked_wrap = vq->used_wrap = true;
    vq->event_idx = event_idx;
    vq->want_calls = want_calls;
    vq->kicks = vq->waits = 0;
    vq->pdesc = gmem_alloc(mem, sizeof(struct vring_packed_desc) * num, VQ_ALIGN);
    vq->driver_event = gmem_alloc(mem, sizeof(*vq->driver_event), VQ_ALIGN);
    vq->device_event = gmem_alloc(mem, sizeof(*vq->device_event), VQ_ALIGN);
    vq->chain_n = calloc(num, sizeof(*vq->chain_n));
    if (!vq->pdesc || !vq->driver_event || !vq->device_event || !vq->chain_n)
        return -ENOMEM;
    /* SET_VRING_ADDR's desc/avail/used: the ring, the driver area, the device area */
    vq->desc = (struct vring_desc *)vq->pdesc;
    vq->avail = (struct vring_avail *)vq->driver_event;
    vq->used = (struct vring_used *)vq->device_event;
    vq_update_call_suppression(vq);
    return vq_eventfds(vq);
}

uint32_t virtq_base(const struct virtq *vq)
{
    uint32_t b;

    if (!vq->packed)
        return vq->avail_idx;
    /* nothing in flight after a stop: the used side is where the avail side is */
    b = vq->next_pos | (uint32_t)vq->next_wrap << 15;
    return b | b << 16;
}

#define PF_AVAIL (1u << VRING_PACKED_DESC_F_AVAIL)
#define PF_USED  (1u << VRING_PACKED_DESC_F_USED)

void virtq_add_packed(struct virtq *vq, const struct vring_packed_desc *d, uint16_t n, uint16_t id)
{
    uint16_t first = vq->next_pos, first_flags = 0;

    for (uint16_t k = 0; k < n; k++) {
        struct vring_packed_desc *e = &vq->pdesc[vq->next_pos];
        uint16_t fl = (uint16_t)(d[k].flags | (vq->next_wrap ? PF_AVAIL : PF_USED));

        e->addr = d[k].addr;
        e->len = d[k].len;
        e->id = id;
        if (k == 0)
            first_flags = fl;
        else
            e->flags = fl;
        if (++vq->next_pos == vq->num) {
            vq->next_pos = 0;
            vq->next_wrap = !vq->next_wrap;
        }
    }
    vq->chain_n[id] = n;
    /* the rest of the chain before its first descriptor becomes available */
    __atomic_store_n(&vq->pdesc[first].flags, first_flags, __ATOMIC_RELEASE);
}

static inline bool vq_packed_ready(const struct virtq *vq)
{
    uint16_t fl = __atomic_load_n(&vq->pdesc[vq->used_pos].flags, __ATOMIC_ACQUIRE);

    return !!(fl & PF_USED) == vq->used_wrap && !!(fl & PF_AVAIL) == vq->used_wrap;
}

bool virtq_used_packed(struct virtq *vq, uint16_t *id, uint32_t *len)
{
    const struct vring_packed_desc *e = &vq->pdesc[vq->used_pos];
    unsigned n;

    if (!vq_packed_ready(vq))
        return false;
    *id = e->id;
    *len = e->len;
    if (*id >= vq->num || !vq->chain_n[*id]) {
        *len = 0xffffffffu;
        return false;
    }
    n = vq->chain_n[*id];
    vq->chain_n[*id] = 0;
    vq->used_pos = (uint16_t)(vq->used_pos + n);
    if (vq->used_pos >= vq->num) {
        vq->used_pos = (uint16_t)(vq->used_pos - vq->num);
        vq->used_wrap = !vq->used_wrap;
    }
    return true;
}

/* A position and its wrap counter on one cycle of 2 * num (the counter starts at 1). */
static inline unsigned vq_lin(const struct virtq *vq, uint16_t pos, bool wrap)
{
    return pos + (wrap ? 0u : vq->num);
}

static inline unsigned vq_dist(const struct virtq *vq, unsigned a, unsigned b)
{
    return b >= a ? b - a : b + 2u * vq->num - a;
}

static bool vq_need_kick_packed(struct virtq *vq)
{
    unsigned old = vq_lin(vq, vq->kicked_pos, vq->kicked_wrap);
    unsigned new_pos = vq_lin(vq, vq->next_pos, vq->next_wrap);
    uint32_t w = __atomic_load_n((const uint32_t *)vq->device_event, __ATOMIC_RELAXED);
    uint16_t off_wrap = (uint16_t)w, flags = (uint16_t)(w >> 16) & 3;
    unsigned ev, a;

    vq->kicked_pos = vq->next_pos;
    vq->kicked_wrap = vq->next_wrap;
    if (flags == VRING_PACKED_EVENT_FLAG_DISABLE)
        return false;
    if (flags != VRING_PACKED_EVENT_FLAG_DESC || !vq->event_idx)
        return true;
    if ((off_wrap & 0x7fff) >= vq->num)
        return true;
    ev = vq_lin(vq, off_wrap & 0x7fff, off_wrap >> 15);
    a = vq_dist(vq, ev, new_pos); /* did we make the event position available? */
    return a >= 1 && a <= vq_dist(vq, old, new_pos);
}

void virtq_destroy(struct virtq *vq)
{
    free(vq->chain_n);
    vq->chain_n = NULL;
    if (vq->kickfd >= 0)
        close(vq->kickfd);
    if (vq->callfd >= 0)
        close(vq->callfd);
    vq->kickfd = vq->callfd = -1;
}

static bool vq_need_kick(const struct virtq *vq, uint16_t old, uint16_t new_idx)
{
    if (vq->event_idx)
        return vring_need_event(vq_avail_event(vq), new_idx, old);
    return !(__atomic_load_n(&vq->used->flags, __ATOMIC_RELAXED) & VRING_USED_F_NO_NOTIFY);
}

int virtq_publish(struct virtq *vq)
{
    uint16_t old = vq->kicked_idx;
    static const uint64_t one = 1;

    if (vq->packed) {
        if (vq->kicked_pos == vq->next_pos && vq->kicked_wrap == vq->next_wrap)
            return 0;
        /* descriptors (stored with release) before we read the device's suppression state */
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
        if (!vq_need_kick_packed(vq))
            return 0;
        vq->kicks++;
        if (write(vq->kickfd, &one, sizeof(one)) < 0 && errno != EAGAIN)
            return -errno;
        return 0;
    }
    if (old == vq->avail_idx)
        return 0;
    /* Ring entries and descriptors must be visible before the index. */
    __atomic_store_n(&vq->avail->idx, vq->avail_idx, __ATOMIC_RELEASE);
    /* The index store must be visible before we read the device's suppression state
     * (store->load ordering needs a full fence). */
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    vq->kicked_idx = vq->avail_idx;
    if (!vq_need_kick(vq, old, vq->avail_idx))
        return 0;
    vq->kicks++;
    if (write(vq->kickfd, &one, sizeof(one)) < 0 && errno != EAGAIN)
        return -errno;
    return 0;
}

void virtq_consume(struct virtq *vq, uint16_t n)
{
    if (vq->packed) {
        if (vq->want_calls && vq->event_idx)
            vq_update_call_suppression(vq);
        return;
    }
    vq->last_used += n;
    vq_update_call_suppression(vq);
}

int virtq_wait(struct virtq *vq, int timeout_ms)
{
    struct pollfd pfd = {.fd = vq->callfd, .events = POLLIN};
    uint64_t cnt;
    int ret;

    /* used_event (or flags) is already armed by the last consume; make the arming visible
     * before the final check so a completion cannot slip between check and sleep. */
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    if (vq->packed ? vq_packed_ready(vq) : virtq_used_ready(vq) != 0)
        return 0;
    vq->waits++;
    ret = poll(&pfd, 1, timeout_ms);
    if (ret < 0)
        return errno == EINTR ? 0 : -errno;
    if (ret > 0 && read(vq->callfd, &cnt, sizeof(cnt)) < 0 && errno != EAGAIN)
        return -errno;
    return 0;
}
