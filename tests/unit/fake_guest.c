/* fake_guest.c - see fake_guest.h. */
#include "fake_guest.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

static void *xmap(size_t len)
{
    void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

    if (p == MAP_FAILED) {
        perror("mmap");
        abort();
    }
    return p;
}

static void ring_layout(struct fake_guest *g, unsigned q, uint16_t num)
{
    struct fg_ring *r = &g->ring[q];
    uint64_t off = (uint64_t)q * FG_RING_STRIDE;

    memset(r, 0, sizeof(*r));
    r->num = num;
    r->desc_uva = FG_UVA0 + off;
    r->avail_uva = r->desc_uva + 16ull * 1024;
    r->used_uva = r->avail_uva + 4096;
    r->desc = (struct vring_desc *)(g->r0 + off);
    r->avail = (struct vring_avail *)(g->r0 + off + 16 * 1024);
    r->used = (struct vring_used *)(g->r0 + off + 16 * 1024 + 4096);
}

void fg_init(struct fake_guest *g, unsigned nq, uint16_t num, bool two_regions)
{
    memset(g, 0, sizeof(*g));
    g->r0 = xmap(FG_R0_SIZE);
    g->mem.nregions = 1;
    g->mem.r[0] =
        (struct vblk_mem_region){.gpa = FG_GPA0, .size = FG_R0_SIZE, .uva = FG_UVA0, .host = g->r0};
    if (two_regions) {
        g->r1 = xmap(FG_R1_SIZE);
        g->mem.nregions = 2;
        g->mem.r[1] = (struct vblk_mem_region){.gpa = FG_GPA0 + FG_R0_SIZE,
                                               .size = FG_R1_SIZE,
                                               .uva = FG_UVA0 + 0x10000000ull,
                                               .host = g->r1};
    }
    for (unsigned q = 0; q < nq && q < FG_MAX_QUEUES; q++)
        ring_layout(g, q, num);
    g->next_data = FG_GPA0 + FG_DATA_OFF;
}

void fg_fini(struct fake_guest *g)
{
    if (g->r0)
        munmap(g->r0, FG_R0_SIZE);
    if (g->r1)
        munmap(g->r1, FG_R1_SIZE);
    memset(g, 0, sizeof(*g));
}

void fg_ring_reset(struct fake_guest *g, unsigned q, uint16_t idx)
{
    struct fg_ring *r = &g->ring[q];

    memset(g->r0 + (uint64_t)q * FG_RING_STRIDE, 0, FG_RING_STRIDE);
    r->avail_idx = idx;
    r->next_desc = 0;
    r->avail->idx = idx;
    r->used->idx = idx;
}

uint64_t fg_alloc(struct fake_guest *g, uint64_t len)
{
    uint64_t gpa = g->next_data;

    if (gpa + len > FG_GPA0 + FG_R0_SIZE) {
        fprintf(stderr, "fake guest: out of data space\n");
        abort();
    }
    g->next_data = (gpa + len + 15) & ~15ull;
    memset(fg_ptr(g, gpa), 0, len);
    return gpa;
}

void *fg_ptr(struct fake_guest *g, uint64_t gpa)
{
    uint64_t len = 1;
    void *p = vblk_mem_gpa(&g->mem, gpa, &len);

    if (!p) {
        fprintf(stderr, "fake guest: gpa 0x%llx outside memory\n", (unsigned long long)gpa);
        abort();
    }
    return p;
}

void fg_desc(struct fake_guest *g, unsigned q, uint16_t i, uint64_t addr, uint32_t len,
             uint16_t flags, uint16_t next)
{
    struct vring_desc *d = &g->ring[q].desc[i];

    d->addr = addr;
    d->len = len;
    d->flags = flags;
    d->next = next;
}

uint16_t fg_chain(struct fake_guest *g, unsigned q, const struct fg_seg *s, unsigned n)
{
    struct fg_ring *r = &g->ring[q];
    uint16_t head = r->next_desc % r->num;

    for (unsigned k = 0; k < n; k++) {
        uint16_t i = (uint16_t)((r->next_desc + k) % r->num);
        uint16_t nx = (uint16_t)((r->next_desc + k + 1) % r->num);
        uint16_t fl =
            (uint16_t)((s[k].write ? VRING_DESC_F_WRITE : 0) | (k + 1 < n ? VRING_DESC_F_NEXT : 0));

        fg_desc(g, q, i, s[k].addr, s[k].len, fl, k + 1 < n ? nx : 0);
    }
    r->next_desc = (uint16_t)((r->next_desc + n) % r->num);
    return head;
}

uint16_t fg_chain_indirect(struct fake_guest *g, unsigned q, const struct fg_seg *s, unsigned n)
{
    struct fg_ring *r = &g->ring[q];
    uint64_t tgpa = fg_alloc(g, 16ull * n);
    struct vring_desc *t = fg_ptr(g, tgpa);
    uint16_t head = r->next_desc % r->num;

    for (unsigned k = 0; k < n; k++) {
        t[k].addr = s[k].addr;
        t[k].len = s[k].len;
        t[k].flags =
            (uint16_t)((s[k].write ? VRING_DESC_F_WRITE : 0) | (k + 1 < n ? VRING_DESC_F_NEXT : 0));
        t[k].next = (uint16_t)(k + 1 < n ? k + 1 : 0);
    }
    fg_desc(g, q, head, tgpa, 16u * n, VRING_DESC_F_INDIRECT, 0);
    r->next_desc = (uint16_t)((r->next_desc + 1) % r->num);
    return head;
}

void fg_post(struct fake_guest *g, unsigned q, uint16_t head)
{
    struct fg_ring *r = &g->ring[q];

    r->avail->ring[r->avail_idx % r->num] = head;
    r->avail_idx++;
    __atomic_store_n(&r->avail->idx, r->avail_idx, __ATOMIC_RELEASE);
}

struct vring_used_elem fg_used_elem(struct fake_guest *g, unsigned q, uint16_t i)
{
    struct fg_ring *r = &g->ring[q];

    return r->used->ring[i % r->num];
}

uint16_t fg_used_idx(struct fake_guest *g, unsigned q)
{
    return __atomic_load_n(&g->ring[q].used->idx, __ATOMIC_ACQUIRE);
}

/* ---- virtio-blk ---- */

void fb_init(struct fake_blk *b, enum fb_backing backing, uint64_t size, unsigned nq, uint16_t num)
{
    memset(b, 0, sizeof(*b));
    fg_init(&b->g, nq, num, true);
    b->bdev.name = "t";
    b->bdev.fd = -1;
    b->bdev.lbs = 512;
    b->bdev.size = size;
    b->bdev.cache = VBLK_CACHE_WRITEBACK;
    b->bdev.discard = true;
    b->bdev.write_zeroes = true;
    b->bdev.zeroes_unmap = true;
    if (backing == FB_NULL) {
        b->bdev.null = true;
        b->bdev.read_zeroes = true;
        if (vblk_engine_null.create(&b->eng, 1024) < 0)
            abort();
    } else {
        int fd;

        snprintf(b->path, sizeof(b->path), "/tmp/vblk-unit-XXXXXX");
        fd = mkstemp(b->path);
        if (fd < 0 || ftruncate(fd, (off_t)size) < 0) {
            perror("temp file");
            abort();
        }
        b->bdev.fd = fd;
        if (vblk_engine_uring.create(&b->eng, 1024) < 0 &&
            vblk_engine_threads.create(&b->eng, 1024) < 0)
            abort();
    }
    if (vblk_blk_create(&b->d, "t", &b->bdev, NULL, nq, 1024, "serial-0123456789") < 0)
        abort();
    for (unsigned i = 0; i < nq; i++)
        b->d.queues[i].eng = b->eng;
}

void fb_fini(struct fake_blk *b)
{
    vblk_blk_destroy(&b->d);
    b->eng->ops->destroy(b->eng);
    if (b->bdev.fd >= 0)
        close(b->bdev.fd);
    if (b->path[0])
        unlink(b->path);
    fg_fini(&b->g);
}

void fb_queue_start(struct fake_blk *b, unsigned qi, bool event_idx, bool indirect)
{
    struct blk_queue *q = &b->d.queues[qi];
    struct fg_ring *r = &b->g.ring[qi];

    if (vblk_vq_setup(&q->vq, &b->g.mem, r->num, r->desc_uva, r->avail_uva, r->used_uva) < 0)
        abort();
    q->vq.event_idx = event_idx;
    q->vq.indirect = indirect;
    q->vq.max_desc = VBLK_SEG_MAX + 2;
    q->vq.max_seg = VBLK_SIZE_MAX;
    vblk_vq_start(&q->vq, r->avail_idx);
    q->broken_reported = false;
    free(q->reqs);
    free(q->iov_pool);
    q->iov_cap = VBLK_SEG_MAX + VBLK_IOV_SLACK;
    q->reqs = calloc(r->num, sizeof(*q->reqs));
    q->iov_pool = calloc((size_t)r->num * q->iov_cap, sizeof(*q->iov_pool));
    if (!q->reqs || !q->iov_pool)
        abort();
    for (unsigned h = 0; h < r->num; h++) {
        struct blk_req *req = &q->reqs[h];

        req->q = q;
        req->head = (uint16_t)h;
        req->iov = q->iov_pool + (size_t)h * q->iov_cap;
        req->io.fd = b->bdev.fd;
    }
    q->inflight = 0;
    q->kick_fd = q->call_fd = q->err_fd = -1;
    q->started = true;
}

void fb_process_only(struct fake_blk *b, unsigned qi)
{
    vblk_blk_queue_process(&b->d.queues[qi], true);
    b->eng->ops->submit(b->eng);
}

void fb_run(struct fake_blk *b, unsigned qi)
{
    struct blk_queue *q = &b->d.queues[qi];
    struct timespec t0, now;

    vblk_blk_queue_process(q, true);
    clock_gettime(CLOCK_MONOTONIC, &t0);
    while (q->inflight) {
        b->eng->ops->submit(b->eng);
        if (!b->eng->local && b->eng->efd >= 0) {
            struct pollfd p = {.fd = b->eng->efd, .events = POLLIN};
            eventfd_t v;

            (void)poll(&p, 1, 100);
            (void)eventfd_read(b->eng->efd, &v); /* the owner drains efd before reaping */
        }
        b->eng->ops->reap(b->eng, vblk_blk_io_done, NULL);
        clock_gettime(CLOCK_MONOTONIC, &now);
        if (now.tv_sec - t0.tv_sec > 10) {
            fprintf(stderr, "fake guest: I/O did not complete in 10 s\n");
            break;
        }
    }
    vblk_blk_queue_flush(q);
}

void fb_req_build(struct fake_blk *b, unsigned q, struct fb_req *r, uint32_t type, uint64_t sector,
                  uint32_t data_len, bool data_write)
{
    struct virtio_blk_outhdr *h;
    struct fg_seg s[3];
    unsigned n = 0;

    memset(r, 0, sizeof(*r));
    r->hdr_gpa = fg_alloc(&b->g, sizeof(*h));
    h = fg_ptr(&b->g, r->hdr_gpa);
    h->type = type;
    h->ioprio = 0;
    h->sector = sector;
    s[n++] = (struct fg_seg){r->hdr_gpa, sizeof(*h), false};
    if (data_len) {
        r->data_gpa = fg_alloc(&b->g, data_len);
        r->data = fg_ptr(&b->g, r->data_gpa);
        s[n++] = (struct fg_seg){r->data_gpa, data_len, data_write};
    }
    r->status_gpa = fg_alloc(&b->g, 1);
    *(uint8_t *)fg_ptr(&b->g, r->status_gpa) = FB_STATUS_UNSET;
    s[n++] = (struct fg_seg){r->status_gpa, 1, true};
    r->head = fg_chain(&b->g, q, s, n);
}

uint8_t fb_status(struct fake_blk *b, const struct fb_req *r)
{
    return *(volatile uint8_t *)fg_ptr(&b->g, r->status_gpa);
}
