/* virtq.h - driver side of one split or packed virtqueue living in shared guest memory.
 *
 * Owns: the desc/avail/used ring pointers, the shadow avail and used indices, notification
 * suppression in both directions (EVENT_IDX or the flags fallback), kicking the kick eventfd and
 * waiting on the call eventfd.  Descriptor contents are written by the caller (blkq.c); on a
 * packed ring (virtq_init_packed) the caller hands chains to virtq_add_packed() instead, which
 * writes them into the ring with the wrap counter's AVAIL/USED bits.
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
    /* packed ring: desc is unused, avail/used point at the driver/device event structures */
    bool packed;
    struct vring_packed_desc *pdesc;
    struct vring_packed_desc_event *driver_event; /* ours: do we want calls */
    struct vring_packed_desc_event *device_event; /* the device's: does it want kicks */
    uint16_t next_pos, kicked_pos, used_pos;      /* positions, each with its wrap counter */
    bool next_wrap, kicked_wrap, used_wrap;
    uint16_t *chain_n; /* ring descriptors of each buffer id's chain */
};

/* Bytes of guest memory the three rings of a @num-entry queue need (with alignment slack). */
size_t virtq_mem_bytes(uint16_t num);
int virtq_init(struct virtq *vq, struct gmem *mem, uint16_t num, bool event_idx, bool want_calls);
/* A packed ring of @num entries (any number), both wrap counters 1 (vring base 0x80008000). */
int virtq_init_packed(struct virtq *vq, struct gmem *mem, uint16_t num, bool event_idx,
                      bool want_calls);
void virtq_destroy(struct virtq *vq);

/* Packed: writes the @n descriptors of buffer @id (flags NEXT/WRITE/INDIRECT; AVAIL/USED are
 * added) at the next positions, the first one's flags last, so the device may take it at once;
 * the caller keeps at most num descriptors in flight.  Kick with virtq_publish(). */
void virtq_add_packed(struct virtq *vq, const struct vring_packed_desc *d, uint16_t n, uint16_t id);

/* Packed: the next used element, if the device wrote it (acquire); advances past its chain.
 * false also for an id out of range (*id set, *len 0xffffffff): the caller reports it. */
bool virtq_used_packed(struct virtq *vq, uint16_t *id, uint32_t *len);

/* The vring base GET_VRING_BASE should return after a clean stop. */
uint32_t virtq_base(const struct virtq *vq);

/* Queues a chain head; not visible to the device until virtq_publish(). */
static inline void virtq_add_avail(struct virtq *vq, uint16_t head)
{
    vq->avail->ring[vq->avail_idx & (vq->num - 1)] = head;
    vq->avail_idx++;
}

/* Publishes the queued heads (release) and kicks unless the device suppressed notifications. */
int virtq_publish(struct virtq *vq);

/* Split: number of used entries ready to consume (acquire load of used->idx). */
static inline uint16_t virtq_used_ready(const struct virtq *vq)
{
    return (uint16_t)(__atomic_load_n(&vq->used->idx, __ATOMIC_ACQUIRE) - vq->last_used);
}

/* The @i-th ready used element (i < virtq_used_ready()). */
static inline const struct vring_used_elem *virtq_used_elem(const struct virtq *vq, uint16_t i)
{
    return &vq->used->ring[(uint16_t)(vq->last_used + i) & (vq->num - 1)];
}

/* Marks @n used entries consumed (packed: those virtq_used_packed() returned, @n ignored) and
 * re-arms (or keeps suppressed) device notifications. */
void virtq_consume(struct virtq *vq, uint16_t n);

/* Wait mode: blocks on the call eventfd until used entries arrive or @timeout_ms passes.
 * Returns 0 (check virtq_used_ready) or negative errno. */
int virtq_wait(struct virtq *vq, int timeout_ms);

#endif
