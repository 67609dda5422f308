/* virtq.c - split virtqueue driver: ring layout, publish/kick, used consumption, call waits. */
#include "virtq.h"

#include <errno.h>
#include <poll.h>
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
    if (vq->event_idx)
        __atomic_store_n(vq_used_event(vq),
                         (uint16_t)(vq->want_calls ? vq->last_used : vq->last_used - 1),
                         __ATOMIC_RELAXED);
}

int virtq_init(struct virtq *vq, struct gmem *mem, uint16_t num, bool event_idx, bool want_calls)
{
    int ret;

    if (num == 0 || (num & (num - 1)) || num > 32768)
        return -EINVAL;
    vq->num = num;
    vq->avail_idx = vq->kicked_idx = vq->last_used = 0;
    vq->event_idx = event_idx;
    vq->want_calls = want_calls;
    vq->kicks = vq->waits = 0;
    vq->desc = gmem_alloc(mem, vq_desc_bytes(num), VQ_ALIGN);
    vq->avail = gmem_alloc(mem, vq_avail_bytes(num), VQ_ALIGN);
    vq->used = gmem_alloc(mem, vq_used_bytes(num), VQ_ALIGN);
    if (!vq->desc || !vq->avail || !vq->used)
        return -ENOMEM;
    vq->avail->flags = (!event_idx && !want_calls) ? VRING_AVAIL_F_NO_INTERRUPT : 0;
    vq_update_call_suppression(vq);

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

void virtq_destroy(struct virtq *vq)
{
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
    if (virtq_used_ready(vq))
        return 0;
    vq->waits++;
    ret = poll(&pfd, 1, timeout_ms);
    if (ret < 0)
        return errno == EINTR ? 0 : -errno;
    if (ret > 0 && read(vq->callfd, &cnt, sizeof(cnt)) < 0 && errno != EAGAIN)
        return -errno;
    return 0;
}
