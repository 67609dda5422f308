/* virtq.h - split and packed virtqueues, device side.
 *
 * Owns: reading the avail ring, walking descriptor chains (direct and indirect) into iovecs that
 * point into guest memory, writing the used ring, and deciding when the driver must be notified
 * (EVENT_IDX or flags).  Everything read from the ring is guest-controlled: indices are bounded,
 * each descriptor is fetched exactly once, loops and over-long chains are caught.
 *
 * Packed rings (VIRTIO_F_RING_PACKED, vq->packed): one descriptor ring that the driver makes
 * available and the device hands back, and two event suppression structures (the driver's, read
 * here to decide on interrupts; the device's, written here to ask for kicks).  Positions carry a
 * wrap counter.  The same checks apply: a chain longer than the ring, a buffer id out of range or
 * more descriptors in flight than the ring holds break the queue; descriptor contents fail one
 * request.  The split fast path does not pay for it: the inline functions branch once on
 * vq->packed (unlikely) to out-of-line packed code.  Packed queues keep no in-flight record.
 *
 * Errors come in two kinds:
 *  - ring errors (index out of range, loop, bad indirect table, avail index jump): the queue is
 *    marked broken (vq->broken) and every later call does nothing;
 *  - request errors (an address outside guest memory, too many segments, data in the wrong
 *    direction): the chain is consumed, chain->err says why, and the caller fails that request.
 *
 * Threads: a vq is used only by the I/O thread that owns it, except vblk_vq_setup/reset which the
 * control plane calls while the queue is stopped.
 */
#ifndef VBLK_VIRTQ_H
#define VBLK_VIRTQ_H

#include <errno.h>
#include <linux/virtio_ring.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/uio.h>

#include "mem/guest_mem.h"
#include "util/iov.h"

#define VBLK_VQ_MAX_SIZE     1024  /* largest ring we accept (QEMU's VIRTQUEUE_MAX_SIZE) */
#define VBLK_VQ_MAX_INDIRECT 32768 /* larger indirect tables are a ring error */

/*
 * The in-flight record of one split ring (vhost-user.rst, "Inflight I/O tracking"), in memory
 * shared with the front-end, which keeps it across a crash of the daemon: the next daemon
 * resubmits what was in flight, in the order it was taken.  The front-end (and so whoever wrote
 * it last) controls its contents: every index read back from it is bounded.
 */
struct vblk_inflight_desc {
    uint8_t inflight; /* 1: this head was taken and is not on the used ring yet */
    uint8_t padding[5];
    uint16_t next;    /* the list of the last batch put on the used ring */
    uint64_t counter; /* order in which heads were taken */
};

struct vblk_inflight_split {
    uint64_t features;
    uint16_t version; /* 0: never used (initialise), 1: this layout */
    uint16_t desc_num;
    uint16_t last_batch_head;
    uint16_t used_idx; /* used->idx once the last batch's inflight flags were cleared */
    struct vblk_inflight_desc desc[];
};

_Static_assert(sizeof(struct vblk_inflight_desc) == 16, "inflight descriptor state");
_Static_assert(sizeof(struct vblk_inflight_split) == 16, "inflight queue region header");

/* Bytes of one queue's region for a ring of num entries (64-byte aligned, as QEMU lays it). */
static inline uint64_t vblk_inflight_queue_size(unsigned num)
{
    return (sizeof(struct vblk_inflight_split) + 16ull * num + 63) & ~63ull;
}

struct vblk_vq {
    /* layout, fixed while started */
    struct vring_desc *desc;
    struct vring_avail *avail;
    struct vring_used *used;
    const struct vblk_mem *mem;
    uint16_t num;
    bool event_idx;
    bool indirect;
    bool packed;       /* the fields under "packed" below are used, desc/avail/used are not */
    uint16_t max_desc; /* most descriptors one request may use (chain or indirect table) */
    uint32_t max_seg;  /* largest descriptor length accepted */
    /* data-plane state */
    bool broken;
    bool signalled_valid;
    uint16_t last_avail;                  /* next avail entry to consume */
    uint16_t shadow_avail;                /* avail->idx as last read */
    uint16_t used_idx;                    /* next used entry to fill */
    uint16_t published_used;              /* used->idx as last written */
    uint16_t signalled_used;              /* used_idx at the last notification */
    struct vblk_inflight_split *inflight; /* NULL: no in-flight tracking */
    uint64_t inflight_counter;
    /* packed: used_idx/published_used count used elements, signalled_used is a position */
    struct vring_packed_desc *pdesc;
    struct vring_packed_desc_event *driver_event; /* read: does the driver want interrupts */
    struct vring_packed_desc_event *device_event; /* written: do we want kicks */
    uint16_t avail_pos, used_pos; /* next descriptor to take / to write used, < num */
    bool avail_wrap, used_wrap;
    uint16_t pending_pos; /* first pushed, unpublished used element: its flags go last */
    uint16_t pending_flags;
    uint16_t device_flags;                /* last flags written to device_event */
    uint16_t chain_len[VBLK_VQ_MAX_SIZE]; /* ring descriptors of the chain of each buffer id */
};

struct vblk_chain {
    struct iovec *iov; /* caller's array: readable entries first, then writable */
    unsigned iov_cap;
    unsigned out_cnt, in_cnt;
    uint64_t out_len, in_len;
    uint8_t *status; /* last byte of the last writable descriptor, NULL if none/unmapped */
    unsigned ndesc;
    int err; /* 0, or a request error: -EFAULT, -E2BIG, -EINVAL */
};

/* Byte sizes of the three ring parts for a ring of num entries (with EVENT_IDX fields). */
static inline uint64_t vblk_vq_desc_size(unsigned num)
{
    return 16ull * num;
}
static inline uint64_t vblk_vq_avail_size(unsigned num)
{
    return 6ull + 2ull * num;
}
static inline uint64_t vblk_vq_used_size(unsigned num)
{
    return 6ull + 8ull * num;
}

/* Byte sizes of a packed ring's descriptor ring and each event suppression structure. */
static inline uint64_t vblk_vqp_desc_size(unsigned num)
{
    return 16ull * num;
}
#define VBLK_VQP_EVENT_SIZE 4ull

/* Point vq at rings given as front-end virtual addresses in mem.  0, -EINVAL if num is not a
 * power of two in [1, VBLK_VQ_MAX_SIZE] or a part is misaligned (in the front-end's addresses
 * or in our mapping of them), -EFAULT if a part is not inside one region. */
int vblk_vq_setup(struct vblk_vq *vq, const struct vblk_mem *mem, uint16_t num, uint64_t desc_uva,
                  uint64_t avail_uva, uint64_t used_uva);

/* Packed: desc ring, driver event area, device event area (SET_VRING_ADDR's desc, avail and used
 * addresses).  0, -EINVAL if num is not in [1, VBLK_VQ_MAX_SIZE] (any number: packed rings need
 * not be a power of two) or a part is misaligned, -EFAULT if a part is not inside one region. */
int vblk_vqp_setup(struct vblk_vq *vq, const struct vblk_mem *mem, uint16_t num, uint64_t desc_uva,
                   uint64_t driver_uva, uint64_t device_uva);

/* Packed: start from a vring base as vhost-user carries it: bits 0-14 the next descriptor to take
 * and bit 15 its wrap counter, bits 16-30 and 31 the same for the next used descriptor (0 there,
 * from a front-end that sends 16 bits: the same as the avail side, as nothing is in flight).
 * 0, or -EINVAL if a position is out of the ring or more than num descriptors lie between. */
int vblk_vqp_start(struct vblk_vq *vq, uint32_t base);

/* The vring base to hand back on stop (GET_VRING_BASE): last_avail for split, the packed
 * encoding above for packed. */
uint32_t vblk_vq_base(const struct vblk_vq *vq);

/* Start consuming at last_avail; used_idx continues from the ring's used->idx (as libvhost-user
 * does), since every request before a stop was completed. */
void vblk_vq_start(struct vblk_vq *vq, uint16_t last_avail);

/* With an in-flight record (vq->inflight set, after vblk_vq_start): finish what a crashed daemon
 * left half done, list the heads still in flight in the order they were taken (heads[], room for
 * num), and continue taking from after them.  The caller resubmits them.  0 with *n set, -EINVAL
 * if the record does not describe this ring, -EIO if it is corrupt (the queue is broken). */
int vblk_vq_inflight_resume(struct vblk_vq *vq, uint16_t *heads, unsigned *n);

/* Number of new avail entries (0..num), or -EIO (queue broken) if the index jumped too far. */
int vblk_vq_avail(struct vblk_vq *vq);

/* Take the next head.  Only call after vblk_vq_avail() > 0.  0, or -EIO (head out of range: the
 * queue is broken).  Split only. */
static inline int vblk_vq_pop(struct vblk_vq *vq, uint16_t *head)
{
    uint16_t h =
        __atomic_load_n(&vq->avail->ring[vq->last_avail & (vq->num - 1)], __ATOMIC_RELAXED);

    if (__builtin_expect(h >= vq->num, 0)) {
        vq->broken = true;
        return -EIO;
    }
    vq->last_avail++;
    *head = h;
    if (vq->inflight) { /* the order taken, for a daemon that restarts with it in flight */
        struct vblk_inflight_desc *d = &vq->inflight->desc[h];

        __atomic_store_n(&d->counter, vq->inflight_counter++, __ATOMIC_RELAXED);
        __atomic_store_n(&d->inflight, 1, __ATOMIC_RELAXED);
    }
    return 0;
}

/* Packed: take the next chain and walk it into c in one pass (the buffer id is in its last
 * descriptor); *id < num.  Only call after vblk_vq_avail() > 0.  0 (check c->err), or -EIO. */
int vblk_vqp_pop(struct vblk_vq *vq, uint16_t *id, struct vblk_chain *c);

/* Walk the chain at head into c (c->iov/iov_cap set by caller).  0 (check c->err), or -EIO. */
int vblk_vq_walk(struct vblk_vq *vq, uint16_t head, struct vblk_chain *c);

void vblk_vqp_push(struct vblk_vq *vq, uint16_t id, uint32_t len);
bool vblk_vqp_publish(struct vblk_vq *vq);

/* Put head on the used ring with len bytes written; not visible until vblk_vq_publish(). */
static inline void vblk_vq_push(struct vblk_vq *vq, uint16_t head, uint32_t len)
{
    if (__builtin_expect(vq->packed, 0)) {
        vblk_vqp_push(vq, head, len);
        return;
    }
    struct vring_used_elem *e = &vq->used->ring[vq->used_idx & (vq->num - 1)];

    e->id = head;
    e->len = len;
    vq->used_idx++;
    if (vq->inflight) { /* this batch, for a daemon that restarts before it is published */
        vq->inflight->desc[head].next = vq->inflight->last_batch_head;
        vq->inflight->last_batch_head = head;
    }
}

void vblk_vq_inflight_published(struct vblk_vq *vq, uint16_t n);

/* Make pushed entries visible (release store of used->idx).  Returns true if anything new. */
static inline bool vblk_vq_publish(struct vblk_vq *vq)
{
    uint16_t n = (uint16_t)(vq->used_idx - vq->published_used);

    if (n == 0)
        return false;
    if (__builtin_expect(vq->packed, 0))
        return vblk_vqp_publish(vq);
    __atomic_store_n(&vq->used->idx, vq->used_idx, __ATOMIC_RELEASE);
    vq->published_used = vq->used_idx;
    if (vq->inflight)
        vblk_vq_inflight_published(vq, n);
    return true;
}

/* After publishing: does the driver want an interrupt?  Updates the signalled index. */
bool vblk_vq_should_notify(struct vblk_vq *vq);

/* Ask the driver to kick for entries after last_avail; returns true if entries arrived in the
 * meantime (caller must process them instead of sleeping). */
bool vblk_vq_enable_notify(struct vblk_vq *vq);

/* Tell the driver not to kick while we are busy (split: no-op with EVENT_IDX). */
void vblk_vq_disable_notify(struct vblk_vq *vq);

#endif
