/* blkq.h - virtio-blk request slots on top of one virtqueue.
 *
 * Owns: the preallocated per-request memory in guest memory (request header, status byte,
 * optional indirect descriptor table, data buffer), the mapping slot <-> descriptor chain,
 * building chains for IN/OUT/FLUSH requests and validating what the device returns in the used
 * ring.  Nothing is allocated per request.
 */
#ifndef VBLK_BENCH_BLKQ_H
#define VBLK_BENCH_BLKQ_H

#include <stdbool.h>
#include <stdint.h>

#include <linux/virtio_blk.h>

#include "gmem.h"
#include "virtq.h"

struct blkq_params {
    uint16_t queue_size; /* ring entries */
    uint16_t nslots;     /* max requests in flight (iodepth) */
    uint32_t bs;         /* data bytes per request */
    uint32_t seg_size;   /* max bytes per data descriptor (device size_max), >= 512 */
    bool indirect;       /* VIRTIO_RING_F_INDIRECT_DESC negotiated and wanted */
    bool event_idx;
    bool want_calls; /* wait mode */
    bool packed;     /* VIRTIO_F_RING_PACKED negotiated and wanted */
};

struct blk_slot {
    struct virtio_blk_outhdr *hdr;
    uint8_t *status;
    struct vring_desc *table; /* indirect table (packed: of packed descriptors) or the slot's
                                 part of the split ring */
    uint8_t *data;
    uint64_t submit_ns;
    uint64_t offset; /* byte offset of the request on the disk */
    uint32_t type;   /* VIRTIO_BLK_T_* */
    bool busy;
};

struct blk_done {
    uint16_t slot;
    uint32_t len; /* used length reported by the device */
};

struct blkq {
    struct virtq vq;
    struct gmem *mem;
    struct blk_slot *slots;
    uint16_t *free_list;
    uint16_t nfree;
    uint16_t nslots;
    uint16_t descs_per_req; /* header + data segments + status */
    uint32_t bs;
    uint32_t seg_size;
    bool indirect;
    struct vring_packed_desc *chain; /* packed, direct: a chain before it goes into the ring */
    uint64_t bad_used;               /* used ids/lengths the device got wrong */
};

/* Descriptors one request needs for @bs bytes split into @seg_size segments. */
uint16_t blkq_descs_per_req(uint32_t bs, uint32_t seg_size);
/* Guest memory one queue with @p needs. */
size_t blkq_mem_bytes(const struct blkq_params *p);
int blkq_init(struct blkq *q, struct gmem *mem, const struct blkq_params *p);
void blkq_destroy(struct blkq *q);

/* Takes a free slot (-1 when all are in flight). */
static inline int blkq_get_slot(struct blkq *q)
{
    return q->nfree ? q->free_list[--q->nfree] : -1;
}

static inline void blkq_put_slot(struct blkq *q, uint16_t slot)
{
    q->slots[slot].busy = false;
    q->free_list[q->nfree++] = slot;
}

/* Builds the chain for slot @slot and queues it (published by blkq_kick). */
void blkq_queue(struct blkq *q, uint16_t slot, uint32_t type, uint64_t offset, uint64_t now_ns);

static inline int blkq_kick(struct blkq *q)
{
    return virtq_publish(&q->vq);
}

/* Collects up to @max completions; returns the count (0 if none) or negative errno if the
 * device returned something impossible (unknown head, request not in flight). */
int blkq_reap(struct blkq *q, struct blk_done *done, int max);

#endif
