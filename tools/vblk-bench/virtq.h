/* virtq.h - driver side of one split virtqueue living in shared guest memory.
 *
 * Owns: the desc/avail/used ring pointers, the shadow avail and used indices, notification
 * suppression in both directions (EVENT_IDX or the flags fallback), kicking the kick eventfd and
 * waiting on the call eventfd.  Descriptor contents are written by the caller (blkq.c).
 *
 * Single-threaded: one virtq is driven by exactly one thread.
 */
#ifndef VBLK_BENCH_VIRTQ_H
#define VBLK_BENCH_VIRTQ_H

#include <stdbool.h>
#include <stdint.h>

#include <linux/virtio_ring.h>

#include "gmem.h"

struct virtq {
    uint16_t num; /* power of two */
    struct vring_desc *desc;
    struct vring_avail *avail;
    struct vring_used *used;
    uint16_t avail_idx;  /* next avail index we will publish */
    uint16_t kicked_idx; /* avail index published at the last notification decision */
    uint16_t last_used;  /* next used entry to consume */
    bool event_idx;      /* VIRTIO_RING_F_EVENT_IDX negotiated */
    bool want_calls;     /* wait mode: ask the device to signal the call eventfd */
    int kickfd;
    int callfd;
    uint64_t kicks; /* eventfd writes (notifications sent) */
    uint64_t waits; /* blocking waits on the call eventfd */
};

/* Bytes of guest memory the three rings of a @num-entry queue need (with alignment slack). */
size_t virtq_mem_bytes(uint16_t num);
int virtq_init(struct virtq *vq, struct gmem *mem, uint16_t num, bool event_idx, bool want_calls);
void virtq_destroy(struct virtq *vq);

/* Queues a chain head; not visible to the device until virtq_publish(). */
static inline void virtq_add_avail(struct virtq *vq, uint16_t head)
{
    vq->avail->ring[vq->avail_idx & (vq->num - 1)] = head;
    vq->avail_idx++;
}

/* Publishes the queued heads (release) and kicks unless the device suppressed notifications. */
int virtq_publish(struct virtq *vq);

/* Number of used entries ready to consume (acquire load of used->idx). */
static inline uint16_t virtq_used_ready(const struct virtq *vq)
{
    return (uint16_t)(__atomic_load_n(&vq->used->idx, __ATOMIC_ACQUIRE) - vq->last_used);
}

/* The @i-th ready used element (i < virtq_used_ready()). */
static inline const struct vring_used_elem *virtq_used_elem(const struct virtq *vq, uint16_t i)
{
    return &vq->used->ring[(uint16_t)(vq->last_used + i) & (vq->num - 1)];
}

/* Marks @n used entries consumed and re-arms (or keeps suppressed) device notifications. */
void virtq_consume(struct virtq *vq, uint16_t n);

/* Wait mode: blocks on the call eventfd until used entries arrive or @timeout_ms passes.
 * Returns 0 (check virtq_used_ready) or negative errno. */
int virtq_wait(struct virtq *vq, int timeout_ms);

#endif
