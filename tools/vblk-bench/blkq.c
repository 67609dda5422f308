/* blkq.c - virtio-blk request slots: memory carve-out, chain building, used-ring validation. */
#include "blkq.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BLKQ_DATA_ALIGN 4096u
#define BLKQ_META_ALIGN 64u

uint16_t blkq_descs_per_req(uint32_t bs, uint32_t seg_size)
{
    uint32_t nseg = (bs + seg_size - 1) / seg_size;

    return (uint16_t)(nseg + 2);
}

/* Per-slot metadata: header, status, indirect table. */
static size_t blkq_meta_bytes(uint16_t descs)
{
    size_t sz = sizeof(struct virtio_blk_outhdr) + 16 /* status, padded */ +
                sizeof(struct vring_desc) * descs;

    return (sz + BLKQ_META_ALIGN - 1) & ~(size_t)(BLKQ_META_ALIGN - 1);
}

static size_t blkq_data_stride(uint32_t bs)
{
    return ((size_t)bs + BLKQ_DATA_ALIGN - 1) & ~(size_t)(BLKQ_DATA_ALIGN - 1);
}

size_t blkq_mem_bytes(const struct blkq_params *p)
{
    uint16_t descs = blkq_descs_per_req(p->bs, p->seg_size);

    return virtq_mem_bytes(p->queue_size) +
           (size_t)p->nslots * (blkq_meta_bytes(descs) + blkq_data_stride(p->bs)) +
           2 * BLKQ_DATA_ALIGN;
}

static int blkq_carve_slots(struct blkq *q)
{
    size_t meta = blkq_meta_bytes(q->descs_per_req);
    size_t stride = blkq_data_stride(q->bs);
    uint8_t *meta_base = gmem_alloc(q->mem, meta * q->nslots, BLKQ_DATA_ALIGN);
    uint8_t *data_base = gmem_alloc(q->mem, stride * q->nslots, BLKQ_DATA_ALIGN);

    if (!meta_base || !data_base)
        return -ENOMEM;
    for (uint16_t i = 0; i < q->nslots; i++) {
        struct blk_slot *s = &q->slots[i];
        uint8_t *m = meta_base + meta * i;

        s->hdr = (struct virtio_blk_outhdr *)m;
        s->status = m + sizeof(struct virtio_blk_outhdr);
        s->table = q->indirect || q->vq.packed
                       ? (struct vring_desc *)(m + sizeof(struct virtio_blk_outhdr) + 16)
                       : &q->vq.desc[i * q->descs_per_req];
        s->data = data_base + stride * i;
        q->free_list[q->nfree++] = (uint16_t)(q->nslots - 1 - i);
    }
    return 0;
}

int blkq_init(struct blkq *q, struct gmem *mem, const struct blkq_params *p)
{
    int ret;

    memset(q, 0, sizeof(*q));
    q->vq.kickfd = q->vq.callfd = -1;
    q->mem = mem;
    q->nslots = p->nslots;
    q->bs = p->bs;
    q->seg_size = p->seg_size;
    q->indirect = p->indirect;
    q->descs_per_req = blkq_descs_per_req(p->bs, p->seg_size);
    if (p->indirect ? p->nslots > p->queue_size
                    : (uint32_t)p->nslots * q->descs_per_req > p->queue_size)
        return -ERANGE;

    if (p->packed)
        ret = virtq_init_packed(&q->vq, mem, p->queue_size, p->event_idx, p->want_calls);
    else
        ret = virtq_init(&q->vq, mem, p->queue_size, p->event_idx, p->want_calls);
    if (ret < 0)
        goto err;
    if (p->packed) {
        q->chain = calloc(q->descs_per_req, sizeof(*q->chain));
        if (!q->chain) {
            ret = -ENOMEM;
            goto err;
        }
    }
    q->slots = calloc(q->nslots, sizeof(*q->slots));
    q->free_list = calloc(q->nslots, sizeof(*q->free_list));
    if (!q->slots || !q->free_list) {
        ret = -ENOMEM;
        goto err;
    }
    ret = blkq_carve_slots(q);
    if (ret < 0)
        goto err;
    return 0;

err:
    blkq_destroy(q);
    return ret;
}

void blkq_destroy(struct blkq *q)
{
    virtq_destroy(&q->vq);
    free(q->slots);
    free(q->free_list);
    free(q->chain);
    q->chain = NULL;
    q->slots = NULL;
    q->free_list = NULL;
}

static inline void blkq_set_desc(struct vring_desc *d, uint64_t addr, uint32_t len, uint16_t flags,
                                 uint16_t next)
{
    d->addr = addr;
    d->len = len;
    d->flags = flags;
    d->next = next;
}

/* Fills the chain in @t; @base is the index of t[0] in the table the device walks. */
static uint16_t blkq_build_chain(struct blkq *q, struct blk_slot *s, struct vring_desc *t,
                                 uint16_t base)
{
    uint16_t n = 0;

    blkq_set_desc(&t[n], gmem_gpa(q->mem, s->hdr), sizeof(*s->hdr), VRING_DESC_F_NEXT,
                  (uint16_t)(base + n + 1));
    n++;
    if (s->type == VIRTIO_BLK_T_IN || s->type == VIRTIO_BLK_T_OUT) {
        uint16_t dflags = VRING_DESC_F_NEXT | (s->type == VIRTIO_BLK_T_IN ? VRING_DESC_F_WRITE : 0);

        for (uint32_t off = 0; off < q->bs; off += q->seg_size) {
            uint32_t len = q->bs - off < q->seg_size ? q->bs - off : q->seg_size;

            blkq_set_desc(&t[n], gmem_gpa(q->mem, s->data + off), len, dflags,
                          (uint16_t)(base + n + 1));
            n++;
        }
    }
    blkq_set_desc(&t[n], gmem_gpa(q->mem, s->status), 1, VRING_DESC_F_WRITE, 0);
    return (uint16_t)(n + 1);
}

/* The same chain in packed descriptors (no next: a chain is consecutive, in the ring or in an
 * indirect table). */
static uint16_t blkq_build_chain_packed(struct blkq *q, struct blk_slot *s,
                                        struct vring_packed_desc *t)
{
    uint16_t n = 0;

    t[n++] = (struct vring_packed_desc){
        .addr = gmem_gpa(q->mem, s->hdr), .len = sizeof(*s->hdr), .flags = VRING_DESC_F_NEXT};
    if (s->type == VIRTIO_BLK_T_IN || s->type == VIRTIO_BLK_T_OUT) {
        uint16_t dflags = VRING_DESC_F_NEXT | (s->type == VIRTIO_BLK_T_IN ? VRING_DESC_F_WRITE : 0);

        for (uint32_t off = 0; off < q->bs; off += q->seg_size) {
            uint32_t len = q->bs - off < q->seg_size ? q->bs - off : q->seg_size;

            t[n++] = (struct vring_packed_desc){
                .addr = gmem_gpa(q->mem, s->data + off), .len = len, .flags = dflags};
        }
    }
    t[n++] = (struct vring_packed_desc){
        .addr = gmem_gpa(q->mem, s->status), .len = 1, .flags = VRING_DESC_F_WRITE};
    return n;
}

static void blkq_queue_packed(struct blkq *q, uint16_t slot, struct blk_slot *s)
{
    if (q->indirect) {
        struct vring_packed_desc *t = (struct vring_packed_desc *)s->table;
        uint16_t n = blkq_build_chain_packed(q, s, t);
        struct vring_packed_desc d = {.addr = gmem_gpa(q->mem, t),
                                      .len = (uint32_t)(n * sizeof(*t)),
                                      .flags = VRING_DESC_F_INDIRECT};

        for (uint16_t i = 0; i < n; i++)
            t[i].flags &= VRING_DESC_F_WRITE; /* the only flag valid in a table */
        virtq_add_packed(&q->vq, &d, 1, slot);
    } else {
        virtq_add_packed(&q->vq, q->chain, blkq_build_chain_packed(q, s, q->chain), slot);
    }
}

void blkq_queue(struct blkq *q, uint16_t slot, uint32_t type, uint64_t offset, uint64_t now_ns)
{
    struct blk_slot *s = &q->slots[slot];
    uint16_t head;

    s->type = type;
    s->offset = offset;
    s->submit_ns = now_ns;
    s->busy = true;
    s->hdr->type = type;
    s->hdr->ioprio = 0;
    s->hdr->sector = type == VIRTIO_BLK_T_FLUSH ? 0 : offset >> 9;
    *s->status = 0xff; /* poison: a device that never writes status is caught */

    if (q->vq.packed) {
        blkq_queue_packed(q, slot, s); /* the slot is the buffer id */
        return;
    }
    if (q->indirect) {
        uint16_t n = blkq_build_chain(q, s, s->table, 0);

        head = slot;
        blkq_set_desc(&q->vq.desc[head], gmem_gpa(q->mem, s->table),
                      (uint32_t)(n * sizeof(struct vring_desc)), VRING_DESC_F_INDIRECT, 0);
    } else {
        head = (uint16_t)(slot * q->descs_per_req);
        blkq_build_chain(q, s, s->table, head);
    }
    virtq_add_avail(&q->vq, head);
}

static int blkq_head_to_slot(struct blkq *q, uint32_t id)
{
    uint32_t slot;

    if (q->indirect)
        slot = id;
    else if (id % q->descs_per_req)
        return -1;
    else
        slot = id / q->descs_per_req;
    if (slot >= q->nslots || !q->slots[slot].busy)
        return -1;
    return (int)slot;
}

static int blkq_reap_packed(struct blkq *q, struct blk_done *done, int max)
{
    uint16_t id = 0;
    uint32_t len = 0;
    int n = 0;

    while (n < max && virtq_used_packed(&q->vq, &id, &len)) {
        if (id >= q->nslots || !q->slots[id].busy) {
            len = 0xffffffffu;
            break;
        }
        q->slots[id].busy = false;
        done[n].slot = id;
        done[n++].len = len;
    }
    virtq_consume(&q->vq, 0);
    if (n < max && len == 0xffffffffu) {
        fprintf(stderr, "vblk-bench: device returned bad used id %u\n", id);
        q->bad_used++;
        return -EPROTO;
    }
    return n;
}

int blkq_reap(struct blkq *q, struct blk_done *done, int max)
{
    uint16_t ready;
    int n = 0;

    if (q->vq.packed)
        return blkq_reap_packed(q, done, max);
    ready = virtq_used_ready(&q->vq);

    if (ready > q->nslots) {
        fprintf(stderr, "vblk-bench: device advanced used->idx by %u with only %u slots\n", ready,
                q->nslots);
        return -EPROTO;
    }
    for (; n < (int)ready && n < max; n++) {
        const struct vring_used_elem *e = virtq_used_elem(&q->vq, (uint16_t)n);
        int slot = blkq_head_to_slot(q, e->id);

        if (slot < 0) {
            fprintf(stderr, "vblk-bench: device returned bad used id %u\n", e->id);
            q->bad_used++;
            virtq_consume(&q->vq, (uint16_t)n);
            return -EPROTO;
        }
        q->slots[slot].busy = false; /* a duplicate id in this batch is caught above */
        done[n].slot = (uint16_t)slot;
        done[n].len = e->len;
    }
    virtq_consume(&q->vq, (uint16_t)n);
    return n;
}
