/* fake_guest.c - see fake_guest.h. */
#include "fake_guest.h"
#include "util/compiler.h"

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

/* ---- packed rings ---- */

#define PF_AVAIL (1u << VRING_PACKED_DESC_F_AVAIL)
#define PF_USED  (1u << VRING_PACKED_DESC_F_USED)

void fgp_init(struct fake_guest *g, unsigned q)
{
    struct fg_ring *r = &g->ring[q];
    uint16_t num = r->num;

    memset(g->r0 + (uint64_t)q * FG_RING_STRIDE, 0, FG_RING_STRIDE);
    ring_layout(g, q, num);
    r->packed = true;
    r->pdesc = (struct vring_packed_desc *)r->desc;
    r->driver_event = (struct vring_packed_desc_event *)r->avail;
    r->device_event = (struct vring_packed_desc_event *)r->used;
    r->pwrap = r->pused_wrap = true;
}

uint32_t fgp_base(struct fake_guest *g, unsigned q)
{
    struct fg_ring *r = &g->ring[q];

    return (uint32_t)r->pnext | (uint32_t)r->pwrap << 15 | (uint32_t)r->pused << 16 |
           (uint32_t)r->pused_wrap << 31;
}

uint16_t fgp_avail_bits(struct fake_guest *g, unsigned q, bool wrap)
{
    (void)g;
    (void)q;
    return (uint16_t)(wrap ? PF_AVAIL : PF_USED);
}

void fgp_desc(struct fake_guest *g, unsigned q, uint16_t pos, uint64_t addr, uint32_t len,
              uint16_t id, uint16_t flags)
{
    struct vring_packed_desc *d = &g->ring[q].pdesc[pos];

    d->addr = addr;
    d->len = len;
    d->id = id;
    __atomic_store_n(&d->flags, flags, __ATOMIC_RELEASE);
}

static uint16_t fgp_lay(struct fake_guest *g, unsigned q, const struct vring_packed_desc *d,
                        unsigned n, uint16_t id)
{
    struct fg_ring *r = &g->ring[q];
    uint16_t first = r->pnext;

    for (unsigned k = 0; k < n; k++) {
        uint16_t fl = (uint16_t)(d[k].flags | fgp_avail_bits(g, q, r->pwrap));
        struct vring_packed_desc *e = &r->pdesc[r->pnext];

        e->addr = d[k].addr;
        e->len = d[k].len;
        e->id = id;
        if (k == 0)
            r->pflags[first] = fl;
        else
            __atomic_store_n(&e->flags, fl, __ATOMIC_RELEASE);
        if (++r->pnext == r->num) {
            r->pnext = 0;
            r->pwrap = !r->pwrap;
        }
    }
    r->chain_n[id % 1024] = (uint16_t)n;
    return first;
}

uint16_t fgp_chain(struct fake_guest *g, unsigned q, const struct fg_seg *s, unsigned n,
                   uint16_t id)
{
    struct vring_packed_desc d[64];

    if (n > 64)
        abort();
    for (unsigned k = 0; k < n; k++)
        d[k] =
            (struct vring_packed_desc){.addr = s[k].addr,
                                       .len = s[k].len,
                                       .flags = (uint16_t)((s[k].write ? VRING_DESC_F_WRITE : 0) |
                                                           (k + 1 < n ? VRING_DESC_F_NEXT : 0))};
    return fgp_lay(g, q, d, n, id);
}

uint16_t fgp_chain_indirect(struct fake_guest *g, unsigned q, const struct fg_seg *s, unsigned n,
                            uint16_t id)
{
    uint64_t tgpa = fg_alloc(g, 16ull * n);
    struct vring_packed_desc *t = fg_ptr(g, tgpa);
    struct vring_packed_desc d = {.addr = tgpa, .len = 16u * n, .flags = VRING_DESC_F_INDIRECT};

    for (unsigned k = 0; k < n; k++) {
        t[k].addr = s[k].addr;
        t[k].len = s[k].len;
        t[k].flags = s[k].write ? VRING_DESC_F_WRITE : 0;
    }
    return fgp_lay(g, q, &d, 1, id);
}

void fgp_post(struct fake_guest *g, unsigned q, uint16_t pos)
{
    struct fg_ring *r = &g->ring[q];

    __atomic_store_n(&r->pdesc[pos].flags, r->pflags[pos], __ATOMIC_RELEASE);
}

bool fgp_used(struct fake_guest *g, unsigned q, uint16_t *id, uint32_t *len)
{
    struct fg_ring *r = &g->ring[q];
    struct vring_packed_desc *e = &r->pdesc[r->pused];
    uint16_t fl = __atomic_load_n(&e->flags, __ATOMIC_ACQUIRE);
    unsigned n;

    if (!!(fl & PF_USED) != r->pused_wrap || !!(fl & PF_AVAIL) != r->pused_wrap)
        return false;
    *id = e->id;
    *len = e->len;
    n = r->chain_n[*id % 1024] ? r->chain_n[*id % 1024] : 1;
    r->pused = (uint16_t)(r->pused + n);
    if (r->pused >= r->num) {
        r->pused = (uint16_t)(r->pused - r->num);
        r->pused_wrap = !r->pused_wrap;
    }
    return true;
}

/* ---- virtio-blk ---- */

/* ---- the hold driver: every request stays in flight until fb_release() ---- */

static void hold_submit(struct vblk_bdev *bd, struct vblk_engine *eng, struct vblk_bdev_req *r)
{
    struct fake_blk *b = bd->priv;

    if (b->nheld == FB_HOLD_MAX) {
        r->done(r, -ENOMEM);
        return;
    }
    b->held[b->nheld++] = r;
}

static const struct vblk_bdev_ops hold_ops = {.name = "hold", .submit = hold_submit};

static void fb_open(struct fake_blk *b)
{
    char err[256];

    if (b->bdev == &b->hold) {
        b->hold = (struct vblk_bdev){.ops = &hold_ops,
                                     .name = "t",
                                     .priv = b,
                                     .fd = -1,
                                     .size = b->conf.null_size,
                                     .lbs = b->conf.lbs,
                                     .align = 1,
                                     .cache = b->conf.cache,
                                     .discard = true,
                                     .write_zeroes = true,
                                     .zeroes_unmap = true};
    } else if (vblk_bdev_open_stack(&b->bdev, &b->conf, err, sizeof(err)) < 0) {
        fprintf(stderr, "fake guest: %s\n", err);
        abort();
    }
    b->d.bdev = b->bdev;
}

static void fb_close(struct fake_blk *b)
{
    if (b->bdev != &b->hold)
        vblk_bdev_close_stack(b->bdev);
}

void fb_init(struct fake_blk *b, enum fb_backing backing, uint64_t size, unsigned nq, uint16_t num)
{
    const struct vblk_engine_ops *eng = &vblk_engine_null;

    memset(b, 0, sizeof(*b));
    fg_init(&b->g, nq, num, true);
    b->conf = (struct vblk_bdev_conf){.name = "t",
                                      .lbs = 512,
                                      .cache = VBLK_CACHE_WRITEBACK,
                                      .discard_unmap = true,
                                      .read_zeroes = true,
                                      .iothreads = 1,
                                      .null_size = size};
    if (backing == FB_NULL) {
        b->conf.null = true;
        b->conf.file = "null://";
    } else if (backing == FB_HOLD) {
        b->bdev = &b->hold;
    } else {
        int fd;
        struct vblk_engine *probe;

        snprintf(b->path, sizeof(b->path), "/tmp/vblk-unit-XXXXXX");
        fd = mkstemp(b->path);
        if (fd < 0 || ftruncate(fd, (off_t)size) < 0) {
            perror("temp file");
            abort();
        }
        close(fd);
        b->conf.file = b->path;
        eng = &vblk_engine_uring;
        if (vblk_engine_uring.create(&probe, 8) < 0)
            eng = &vblk_engine_threads; /* no io_uring here */
        else
            probe->ops->destroy(probe);
    }
    fb_open(b);
    if (vblk_iothread_create(&b->iot, "fake-guest", eng, 1024 * nq, 0, VBLK_IOT_CALL_TIMEOUT_MS) <
        0)
        abort();
    if (vblk_blk_create(&b->d, "t", b->bdev, b->iot, nq, 1024, "serial-0123456789") < 0)
        abort();
    for (unsigned q = 0; q < FG_MAX_QUEUES; q++) {
        b->kick[q] = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        b->call[q] = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        b->err[q] = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (b->kick[q] < 0 || b->call[q] < 0 || b->err[q] < 0)
            abort();
    }
}

void fb_reopen(struct fake_blk *b)
{
    fb_close(b);
    fb_open(b);
}

void fb_fini(struct fake_blk *b)
{
    for (unsigned q = 0; q < b->d.num_queues; q++)
        fb_queue_stop(b, q);
    vblk_iothread_destroy(b->iot);
    vblk_blk_destroy(&b->d);
    fb_close(b);
    for (unsigned q = 0; q < FG_MAX_QUEUES; q++) {
        close(b->kick[q]);
        close(b->call[q]);
        close(b->err[q]);
    }
    if (b->path[0])
        unlink(b->path);
    fg_fini(&b->g);
}

int fb_call(struct fake_blk *b, int (*fn)(void *arg), void *arg)
{
    return vblk_iothread_call(b->iot, fn, arg);
}

uint32_t fb_queue_stop(struct fake_blk *b, unsigned qi)
{
    uint32_t last = 0;

    if (b->nheld)
        fb_release(b, qi, -EIO); /* a queue stops only once its requests completed */
    if (vblk_blk_queue_stop(&b->d, qi, &last) < 0)
        abort();
    return last;
}

void fb_queue_start(struct fake_blk *b, unsigned qi, bool event_idx, bool indirect)
{
    struct fg_ring *r = &b->g.ring[qi];
    struct vblk_queue_params p = {.mem = &b->g.mem,
                                  .num = r->num,
                                  .last_avail = r->avail_idx,
                                  .desc_uva = r->desc_uva,
                                  .avail_uva = r->avail_uva,
                                  .used_uva = r->used_uva,
                                  .kick_fd = b->kick[qi],
                                  .call_fd = b->call[qi],
                                  .err_fd = b->err[qi],
                                  .event_idx = event_idx,
                                  .indirect = indirect,
                                  .packed = r->packed};

    if (r->packed)
        p.last_avail = fgp_base(&b->g, qi);
    if (b->d.queues[qi].started)
        fb_queue_stop(b, qi);
    if (vblk_blk_queue_start(&b->d, qi, &p) < 0)
        abort();
}

struct probe {
    struct fake_blk *b;
    struct blk_queue *q;
    int ret; /* release: complete held requests with this */
};

/* I/O thread: has queue q taken everything and finished all but the held requests? */
static int quiet_fn(void *arg)
{
    struct probe *p = arg;
    struct blk_queue *q = p->q;
    unsigned held = 0;

    for (unsigned i = 0; i < p->b->nheld; i++)
        held += container_of(p->b->held[i], struct blk_req, breq)->q == q;
    for (struct blk_req *r = q->held; r; r = r->next_held)
        held++; /* held by an error policy until a resume */
    if (q->flush_hook.queued || q->again_hook.queued || q->inflight != held)
        return 0;
    if (q->vq.broken || !q->started)
        return 1;
    if (q->vq.packed)
        return vblk_vq_avail(&q->vq) == 0;
    return q->vq.last_avail == __atomic_load_n(&q->vq.avail->idx, __ATOMIC_ACQUIRE);
}

static void wait_quiet(struct fake_blk *b, unsigned qi)
{
    struct probe p = {.b = b, .q = &b->d.queues[qi]};

    for (int i = 0; i < 100000; i++) {
        if (vblk_iothread_call(b->iot, quiet_fn, &p) == 1)
            return;
        usleep(100);
    }
    fprintf(stderr, "fake guest: queue %u did not settle in 10 s\n", qi);
    abort();
}

void fb_run(struct fake_blk *b, unsigned qi)
{
    if (eventfd_write(b->kick[qi], 1) < 0)
        abort();
    wait_quiet(b, qi);
}

static int release_fn(void *arg)
{
    struct probe *p = arg;
    struct fake_blk *b = p->b;

    while (b->nheld) {
        struct vblk_bdev_req *r = b->held[--b->nheld];

        r->done(r, p->ret);
    }
    return 0;
}

void fb_release(struct fake_blk *b, unsigned qi, int ret)
{
    struct probe p = {.b = b, .q = &b->d.queues[qi], .ret = ret};

    vblk_iothread_call(b->iot, release_fn, &p);
    wait_quiet(b, qi);
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
    if (b->g.ring[q].packed) {
        struct fg_ring *ring = &b->g.ring[q];

        r->head = (uint16_t)(ring->next_id++ % ring->num);
        r->pos = fgp_chain(&b->g, q, s, n, r->head);
        return;
    }
    r->head = fg_chain(&b->g, q, s, n);
}

uint8_t fb_status(struct fake_blk *b, const struct fb_req *r)
{
    return __atomic_load_n((uint8_t *)fg_ptr(&b->g, r->status_gpa), __ATOMIC_ACQUIRE);
}
