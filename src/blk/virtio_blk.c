/* virtio_blk.c - see virtio_blk.h. */
#include "blk/virtio_blk.h"

#include <endian.h>
#include <errno.h>
#include <linux/virtio_config.h>
#include <linux/virtio_ring.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "util/compiler.h"
#include "util/log.h"

#define SECTOR_SHIFT 9

const char *const vblk_blk_op_names[VBLK_OP_COUNT] = {
    "read", "write", "flush", "discard", "write-zeroes", "get-id", "other",
};
const char *const vblk_blk_lat_names[VBLK_LAT_CLASSES] = {"read", "write", "flush", "other"};
static const uint8_t op_lat_class[VBLK_OP_COUNT] = {
    VBLK_LAT_READ,  VBLK_LAT_WRITE, VBLK_LAT_FLUSH, VBLK_LAT_OTHER,
    VBLK_LAT_OTHER, VBLK_LAT_OTHER, VBLK_LAT_OTHER,
};
_Static_assert((int)VBLK_OP_READ == (int)VBLK_BDEV_READ &&
                   (int)VBLK_OP_WRITE == (int)VBLK_BDEV_WRITE &&
                   (int)VBLK_OP_FLUSH == (int)VBLK_BDEV_FLUSH &&
                   (int)VBLK_OP_DISCARD == (int)VBLK_BDEV_DISCARD &&
                   (int)VBLK_OP_WRITE_ZEROES == (int)VBLK_BDEV_WRITE_ZEROES,
               "submit() counts bytes by bdev op");
_Static_assert(VBLK_LAT_CLASSES <= 4, "lat_pending packs the class in 2 bits");

/* A counter of the I/O thread's, read by the control thread: a single writer needs no locked
 * instruction, only an untorn store (the reader's loads are relaxed as well). */
#define STAT_ADD(x, n)                                                                             \
    __atomic_store_n(&(x), __atomic_load_n(&(x), __ATOMIC_RELAXED) + (n), __ATOMIC_RELAXED)
#define STAT_SUB(x, n)                                                                             \
    __atomic_store_n(&(x), __atomic_load_n(&(x), __ATOMIC_RELAXED) - (n), __ATOMIC_RELAXED)

/* ---- control thread: features and config ---- */

uint64_t vblk_blk_features(const struct vblk_blk_dev *d)
{
    uint64_t f = (1ull << VIRTIO_F_VERSION_1) | (1ull << VIRTIO_RING_F_INDIRECT_DESC) |
                 (1ull << VIRTIO_RING_F_EVENT_IDX) | (1ull << VIRTIO_BLK_F_SIZE_MAX) |
                 (1ull << VIRTIO_BLK_F_SEG_MAX) | (1ull << VIRTIO_BLK_F_BLK_SIZE) |
                 (1ull << VIRTIO_BLK_F_TOPOLOGY) | (1ull << VIRTIO_BLK_F_FLUSH) |
                 (1ull << VIRTIO_BLK_F_CONFIG_WCE) | (1ull << VIRTIO_BLK_F_MQ);

    if (d->bdev->readonly)
        f |= 1ull << VIRTIO_BLK_F_RO;
    if (d->bdev->discard)
        f |= 1ull << VIRTIO_BLK_F_DISCARD;
    if (d->bdev->write_zeroes)
        f |= 1ull << VIRTIO_BLK_F_WRITE_ZEROES;
    return f;
}

void vblk_blk_config(const struct vblk_blk_dev *d, struct virtio_blk_config *cfg)
{
    const struct vblk_bdev *b = d->bdev;
    uint32_t lbs_sectors = b->lbs >> SECTOR_SHIFT;

    memset(cfg, 0, sizeof(*cfg));
    cfg->capacity = htole64(vblk_bdev_size(b) >> SECTOR_SHIFT);
    cfg->size_max = htole32(VBLK_SIZE_MAX);
    cfg->seg_max = htole32(VBLK_SEG_MAX);
    cfg->blk_size = htole32(b->lbs);
    cfg->physical_block_exp = (uint8_t)b->phys_exp;
    cfg->alignment_offset = 0;
    cfg->min_io_size = htole16(1);
    cfg->opt_io_size = htole32(0);
    cfg->wce = __atomic_load_n(&d->wce, __ATOMIC_RELAXED);
    cfg->num_queues = htole16((uint16_t)d->num_queues);
    cfg->max_discard_sectors = htole32(VBLK_MAX_DISCARD);
    cfg->max_discard_seg = htole32(1);
    cfg->discard_sector_alignment = htole32(lbs_sectors);
    cfg->max_write_zeroes_sectors = htole32(VBLK_MAX_DISCARD);
    cfg->max_write_zeroes_seg = htole32(1);
    cfg->write_zeroes_may_unmap = b->zeroes_unmap;
}

int vblk_blk_set_config(struct vblk_blk_dev *d, uint32_t off, const uint8_t *buf, uint32_t len)
{
    if (off != offsetof(struct virtio_blk_config, wce) || len != 1 || buf[0] > 1)
        return -EINVAL;
    __atomic_store_n(&d->wce, buf[0] != 0, __ATOMIC_RELAXED);
    log_info(d->name, "guest turned the write cache %s", buf[0] ? "on" : "off");
    return 0;
}

void vblk_blk_reset(struct vblk_blk_dev *d)
{
    __atomic_store_n(&d->wce, vblk_cache_wce(d->bdev->cache), __ATOMIC_RELAXED);
}

/* ---- I/O thread: completion ---- */

static void queue_broken(struct blk_queue *q, const char *why, unsigned head)
{
    q->vq.broken = true;
    if (q->broken_reported)
        return;
    q->broken_reported = true;
    log_err(q->dev->name, "queue %u is broken: %s (head %u); the front-end must reset it", q->index,
            why, head);
    if (q->err_fd >= 0)
        (void)eventfd_write(q->err_fd, 1);
}

/* ---- I/O thread: dirty logging (live migration) ---- */

#define LOG_PAGE 4096 /* one bit of the dirty log per guest page (vhost-user.rst, "Migration") */

/* Mark the guest pages of [gpa, gpa + len) dirty. */
static void log_gpa(struct blk_queue *q, uint64_t gpa, uint64_t len)
{
    uint64_t first = gpa / LOG_PAGE, last = (gpa + len - 1) / LOG_PAGE;

    if (len == 0 || gpa + len < gpa)
        return;
    for (uint64_t p = first; p <= last && p / 8 < q->log_size; p++)
        __atomic_fetch_or(&q->log[p / 8], (uint8_t)(1u << (p % 8)), __ATOMIC_RELAXED);
}

/* The same for a buffer we hold as a host pointer into guest memory. */
static void log_host(struct blk_queue *q, const void *host, uint64_t len)
{
    const struct vblk_mem *m = q->vq.mem;

    for (unsigned i = 0; i < m->nregions; i++) {
        const struct vblk_mem_region *r = &m->r[i];
        uintptr_t off = (uintptr_t)host - (uintptr_t)r->host;

        if ((uintptr_t)host >= (uintptr_t)r->host && off < r->size) {
            log_gpa(q, r->gpa + off, len);
            return;
        }
    }
}

/* Everything a request wrote into guest memory: its writable buffers and the status byte. */
static void log_request(struct blk_req *req)
{
    struct blk_queue *q = req->q;

    for (unsigned i = 0; i < req->in_cnt; i++)
        log_host(q, req->iov[req->in_first + i].iov_base, req->iov[req->in_first + i].iov_len);
    if (req->status)
        log_host(q, req->status, 1);
}

/* ---- I/O thread: latency ---- */

/* n completions of record e (start_ns << 2 | class) end at end. */
static void lat_record(struct blk_queue *q, uint64_t e, uint64_t n, uint64_t end)
{
    struct vblk_lat_hist *h = &q->stats.lat[e & 3];
    uint64_t start = e >> 2, ns = end > start ? end - start : 0;

    STAT_ADD(h->bucket[vblk_lat_bucket(ns)], n);
    STAT_ADD(h->sum_ns, ns * n);
    if (ns > __atomic_load_n(&h->max_ns, __ATOMIC_RELAXED))
        __atomic_store_n(&h->max_ns, ns, __ATOMIC_RELAXED);
}

static uint64_t clock_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* The completions pushed since they were last timed are published now, at end. */
static void lat_account_at(struct blk_queue *q, uint64_t end)
{
    for (unsigned i = 0; i < q->nlat_pending; i++)
        lat_record(q, q->lat_pending[i].rec, q->lat_pending[i].n, end);
    q->nlat_pending = 0;
    q->lat_cur = NULL;
}

/*
 * At the end of a batch, the completions pushed since they were last timed are published, and
 * share one end time (vblk_iothread_now).  Requests taken in one pass share a start time as
 * well, so req_finish() keeps the records as runs of equal ones (per latency class, as reads
 * and writes interleave), and a run costs one histogram update.
 */
static void lat_account(struct blk_queue *q)
{
    if (q->nlat_pending)
        lat_account_at(q, vblk_iothread_now(q->iot));
}

/* A completion that starts a new run (out of line: the common case is the same run). */
static __attribute__((noinline)) void lat_push_new(struct blk_queue *q, uint64_t rec)
{
    unsigned c = rec & 3;

    if (unlikely(q->nlat_pending == q->lat_cap)) {
        /* more runs than the record holds (many passes in one iteration): time them now, on a
         * clock of their own (this phase's time may be their start time) */
        lat_account_at(q, clock_ns());
    }
    if (q->lat_last[c] < q->nlat_pending && q->lat_pending[q->lat_last[c]].rec == rec) {
        /* its class's run (reads and writes interleave) */
        q->lat_cur = &q->lat_pending[q->lat_last[c]];
        q->lat_cur->n++;
        return;
    }
    q->lat_last[c] = q->nlat_pending;
    q->lat_cur = &q->lat_pending[q->nlat_pending++];
    q->lat_cur->rec = rec;
    q->lat_cur->n = 1;
}

/* A completion to time at the end of the batch: one more in the current run (same start time,
 * same class), or another run. */
static inline void lat_push(struct blk_queue *q, const struct blk_req *req)
{
    struct blk_lat_run *run = q->lat_cur;

    if (likely(run && run->rec == req->lat_rec))
        run->n++;
    else
        lat_push_new(q, req->lat_rec);
}

static void req_finish(struct blk_req *req, uint8_t status)
{
    struct blk_queue *q = req->q;

    if (req->status)
        WRITE_ONCE(*req->status, status);
    if (unlikely(q->log))
        log_request(req); /* after the writes, before the guest can see the completion */
    if (unlikely(status != VIRTIO_BLK_S_OK)) {
        if (status == VIRTIO_BLK_S_UNSUPP)
            STAT_ADD(q->stats.unsupp, 1);
        else
            STAT_ADD(q->stats.errors, 1);
    }
    lat_push(q, req);
    vblk_vq_push(&q->vq, req->head, req->used_len);
    req->busy = false;
    q->inflight--;
    vblk_iothread_defer(q->iot, &q->flush_hook);
}

static void queue_flush(struct blk_queue *q)
{
    if (!vblk_vq_publish(&q->vq))
        return;
    if (unlikely(q->log && q->vq.packed)) /* used elements go into the descriptor ring */
        log_host(q, q->vq.pdesc, vblk_vqp_desc_size(q->vq.num));
    else if (unlikely(q->log && q->log_used))
        log_gpa(q, q->log_used_gpa, vblk_vq_used_size(q->vq.num) + 2);
    if (vblk_vq_should_notify(&q->vq) && q->call_fd >= 0)
        (void)eventfd_write(q->call_fd, 1);
}

static void flush_hook(struct vblk_iot_hook *h)
{
    struct blk_queue *q = container_of(h, struct blk_queue, flush_hook);

    queue_flush(q);
    lat_account(q); /* after publishing: the guest need not wait for the clock */
}

static const char *const op_names[] = {"read", "write", "flush", "discard", "write-zeroes"};

/* A request failed: report, ignore, or hold it and pause the queue, as the policy says. */
static void request_failed(struct blk_req *req, int ret)
{
    struct blk_queue *q = req->q;
    struct vblk_bdev_req *r = &req->breq;
    enum vblk_error_policy p = r->op == VBLK_BDEV_READ ? q->dev->rerror : q->dev->werror;

    if (p == VBLK_ERR_ENOSPC)
        p = ret == -ENOSPC ? VBLK_ERR_STOP : VBLK_ERR_REPORT;
    switch (p) {
    case VBLK_ERR_IGNORE:
        STAT_ADD(q->stats.ignored, 1);
        req_finish(req, VIRTIO_BLK_S_OK);
        return;
    case VBLK_ERR_STOP:
        if (!q->paused)
            log_err(q->dev->name,
                    "queue %u paused: %s of %llu bytes at %llu failed: %s; the request is held "
                    "until the export is resumed (SIGUSR2)",
                    q->index, op_names[r->op], (unsigned long long)r->len,
                    (unsigned long long)r->offset, strerror(-ret));
        q->paused = true;
        STAT_ADD(q->stats.held, 1);
        req->next_held = q->held;
        q->held = req;
        return;
    default:
        log_dbg(q->dev->name, "%s of %llu bytes at %llu: %s", op_names[r->op],
                (unsigned long long)r->len, (unsigned long long)r->offset, strerror(-ret));
        req_finish(req, VIRTIO_BLK_S_IOERR);
        return;
    }
}

static void bdev_done(struct vblk_bdev_req *r, int ret)
{
    struct blk_req *req = container_of(r, struct blk_req, breq);

    if (unlikely(ret < 0)) {
        request_failed(req, ret);
        return;
    }
    req_finish(req, VIRTIO_BLK_S_OK);
}

static inline __attribute__((always_inline)) void submit(struct blk_req *req, uint8_t op,
                                                         uint8_t flags, const struct iovec *iov,
                                                         unsigned cnt, uint64_t offset,
                                                         uint64_t len)
{
    struct vblk_bdev_req *r = &req->breq;

    r->op = op;
    r->flags = flags;
    r->iov = iov;
    r->iovcnt = cnt;
    r->offset = offset;
    r->len = len;
    STAT_ADD(req->q->stats.bytes[op], len);
    vblk_bdev_submit(req->q->dev->bdev, req->q->eng, r);
}

/* ---- I/O thread: request parsing ---- */

/* A data range is a positive multiple of the block size, aligned, and inside the disk. */
static inline __attribute__((always_inline)) bool range_ok(const struct vblk_bdev *b,
                                                           uint64_t sector, uint64_t bytes)
{
    uint64_t cap = vblk_bdev_size(b) >> SECTOR_SHIFT;

    if (bytes == 0 || (bytes & (b->lbs - 1)) || (sector & ((b->lbs >> SECTOR_SHIFT) - 1)))
        return false;
    return sector <= cap && (bytes >> SECTOR_SHIFT) <= cap - sector;
}

static void handle_discard_zeroes(struct blk_req *req, uint32_t type, struct iovec *out,
                                  unsigned out_cnt, uint64_t out_len, uint64_t in_len)
{
    struct vblk_blk_dev *d = req->q->dev;
    const struct vblk_bdev *b = d->bdev;
    struct virtio_blk_discard_write_zeroes seg;
    bool discard = type == VIRTIO_BLK_T_DISCARD;
    uint64_t sector;
    uint32_t num, flags;

    if ((discard && !b->discard) || (!discard && !b->write_zeroes) || vblk_bdev_readonly(b)) {
        req_finish(req, VIRTIO_BLK_S_UNSUPP);
        return;
    }
    /* we advertise one segment per request, like QEMU */
    if (out_len != sizeof(seg) || in_len != 0) {
        req_finish(req, VIRTIO_BLK_S_UNSUPP);
        return;
    }
    vblk_iov_to_buf(out, out_cnt, &seg, sizeof(seg));
    sector = le64toh(seg.sector);
    num = le32toh(seg.num_sectors);
    flags = le32toh(seg.flags);
    if ((discard && flags) || (!discard && (flags & ~VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP))) {
        req_finish(req, VIRTIO_BLK_S_UNSUPP);
        return;
    }
    if (num > VBLK_MAX_DISCARD || !range_ok(b, sector, (uint64_t)num << SECTOR_SHIFT)) {
        req_finish(req, VIRTIO_BLK_S_IOERR);
        return;
    }
    submit(req, discard ? VBLK_BDEV_DISCARD : VBLK_BDEV_WRITE_ZEROES,
           (flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP) ? VBLK_BDEV_F_UNMAP : 0, NULL, 0,
           sector << SECTOR_SHIFT, (uint64_t)num << SECTOR_SHIFT);
}

static void count_op(struct blk_req *req, enum vblk_blk_op op)
{
    STAT_ADD(req->q->stats.ops[op], 1);
    req->lat_rec |= op_lat_class[op];
}

/* Serve req, whose chain was walked into c (c->iov is req->iov). */
static inline __attribute__((always_inline)) void
handle_chain(struct blk_queue *q, struct blk_req *req, const struct vblk_chain *c, uint64_t start)
{
    struct vblk_blk_dev *d = q->dev;
    const struct vblk_bdev *b = d->bdev;
    struct virtio_blk_outhdr hdr;
    struct iovec *out, *in;
    unsigned out_cnt, in_cnt;
    uint64_t out_len, in_len, sector;
    uint32_t type;

    req->busy = true;
    q->inflight++;
    req->lat_rec = start << 2; /* the class: count_op(), which every path below calls */
    req->status = c->status;
    req->in_first = (uint16_t)c->out_cnt;
    req->in_cnt = (uint16_t)c->in_cnt;
    req->used_len = 1;
    req->type = 0xff;

    if (unlikely(!c->status)) {
        req->used_len = 0; /* nowhere to put a status: the driver sees no bytes written */
        count_op(req, VBLK_OP_OTHER);
        req_finish(req, VIRTIO_BLK_S_IOERR);
        return;
    }
    if (unlikely(c->err || c->out_len < sizeof(hdr))) {
        count_op(req, VBLK_OP_OTHER);
        req_finish(req, VIRTIO_BLK_S_IOERR);
        return;
    }
    /* the header is read once (the guest may change it meanwhile); every driver we know puts
     * it in a descriptor of its own and the status byte in one of its own: no iovec walks */
    out = c->iov;
    out_cnt = c->out_cnt;
    if (likely(out->iov_len == sizeof(hdr))) {
        memcpy(&hdr, out->iov_base, sizeof(hdr));
        out++;
        out_cnt--;
    } else {
        vblk_iov_to_buf(c->iov, c->out_cnt, &hdr, sizeof(hdr));
        vblk_iov_skip_head(&out, &out_cnt, sizeof(hdr));
    }
    type = le32toh(hdr.type);
    sector = le64toh(hdr.sector);
    req->type = (uint8_t)type;
    out_len = c->out_len - sizeof(hdr);
    in = c->iov + c->out_cnt;
    in_cnt = c->in_cnt;
    if (likely(in_cnt && in[in_cnt - 1].iov_len == 1))
        in_cnt--;
    else
        vblk_iov_drop_tail(in, &in_cnt, 1);
    in_len = c->in_len - 1;

    switch (type) {
    case VIRTIO_BLK_T_IN:
        count_op(req, VBLK_OP_READ);
        if (unlikely(out_len || !range_ok(b, sector, in_len))) {
            req_finish(req, VIRTIO_BLK_S_IOERR);
            return;
        }
        req->used_len = (uint32_t)c->in_len;
        submit(req, VBLK_BDEV_READ, 0, in, in_cnt, sector << SECTOR_SHIFT, in_len);
        return;
    case VIRTIO_BLK_T_OUT:
        count_op(req, VBLK_OP_WRITE);
        if (unlikely(vblk_bdev_readonly(b) || in_len || !range_ok(b, sector, out_len))) {
            req_finish(req, VIRTIO_BLK_S_IOERR);
            return;
        }
        /* write cache off: each write must be durable before it completes */
        submit(req, VBLK_BDEV_WRITE,
               __atomic_load_n(&d->wce, __ATOMIC_RELAXED) ? 0 : VBLK_BDEV_F_FUA, out, out_cnt,
               sector << SECTOR_SHIFT, out_len);
        return;
    case VIRTIO_BLK_T_FLUSH:
        count_op(req, VBLK_OP_FLUSH);
        submit(req, VBLK_BDEV_FLUSH, 0, NULL, 0, 0, 0);
        return;
    case VIRTIO_BLK_T_GET_ID: {
        char id[VIRTIO_BLK_ID_BYTES] = {0};
        uint64_t n;

        count_op(req, VBLK_OP_GET_ID);
        if (unlikely(in_len == 0)) {
            req_finish(req, VIRTIO_BLK_S_IOERR);
            return;
        }
        memcpy(id, d->serial, sizeof(id) < sizeof(d->serial) ? sizeof(id) : sizeof(d->serial));
        n = vblk_buf_to_iov(in, in_cnt, id, sizeof(id));
        req->used_len = (uint32_t)n + 1;
        req_finish(req, VIRTIO_BLK_S_OK);
        return;
    }
    case VIRTIO_BLK_T_DISCARD:
    case VIRTIO_BLK_T_WRITE_ZEROES:
        count_op(req, type == VIRTIO_BLK_T_DISCARD ? VBLK_OP_DISCARD : VBLK_OP_WRITE_ZEROES);
        handle_discard_zeroes(req, type, out, out_cnt, out_len, in_len);
        return;
    default:
        count_op(req, VBLK_OP_OTHER);
        req_finish(req, VIRTIO_BLK_S_UNSUPP);
        return;
    }
}

/* Take head off the ring; start: the time of this pass (vblk_iothread_now). */
static void handle(struct blk_queue *q, uint16_t head, uint64_t start)
{
    struct blk_req *req = &q->reqs[head];
    struct vblk_chain c; /* the walk sets the rest */

    c.iov = req->iov;
    c.iov_cap = q->iov_cap;
    if (unlikely(req->busy)) {
        queue_broken(q, "a head already in flight was made available again", head);
        return;
    }
    if (unlikely(vblk_vq_walk(&q->vq, head, &c) < 0)) {
        queue_broken(q, "corrupt descriptor chain", head);
        return;
    }
    handle_chain(q, req, &c, start);
}

/* Packed ring: the buffer id is known only once the chain is walked, so walk into the spare
 * iovec array and trade it for the request's. */
static __attribute__((noinline)) void handle_packed(struct blk_queue *q, uint64_t start)
{
    struct vblk_chain c = {.iov = q->spare_iov, .iov_cap = q->iov_cap};
    struct blk_req *req;
    uint16_t id;

    if (unlikely(vblk_vqp_pop(&q->vq, &id, &c) < 0)) {
        queue_broken(q,
                     "corrupt descriptor chain, buffer id out of range or in flight, or more "
                     "descriptors in flight than the ring holds",
                     q->vq.avail_pos);
        return;
    }
    req = &q->reqs[id];
    if (unlikely(req->busy)) { /* vblk_vqp_pop checks this; a request held by a policy */
        queue_broken(q, "a buffer id already in flight was made available again", id);
        return;
    }
    q->spare_iov = req->iov;
    req->iov = c.iov;
    handle_chain(q, req, &c, start);
}

/*
 * Take the available requests of a started queue, at most VBLK_QUEUE_BUDGET: the rest is taken
 * in the thread's next iteration, so a guest that keeps its ring full cannot keep the thread
 * from its other queues and its control calls.  rearm: finish with guest notifications enabled
 * (false while the I/O thread polls the ring).
 */
static inline __attribute__((always_inline)) void queue_process_ring(struct blk_queue *q,
                                                                     bool rearm, const bool packed)
{
    struct vblk_vq *vq = &q->vq;
    unsigned budget = VBLK_QUEUE_BUDGET;
    uint64_t start = 0;     /* read when the pass takes its first request */
    unsigned published = 0; /* completions published during the pass */

    if (unlikely(q->paused))
        return; /* an error policy holds it: vblk_blk_resume() takes up again */
    vblk_vq_disable_notify(vq);
    for (;;) {
        int n = vblk_vq_avail(vq);

        if (unlikely(n < 0)) {
            queue_broken(q, "avail index moved by more than the ring size", vq->last_avail);
            return;
        }
        if (n == 0) {
            if (!rearm || !vblk_vq_enable_notify(vq))
                return;
            continue;
        }
        if (!start)
            start = vblk_iothread_now(q->iot);
        while (n--) {
            uint16_t head;

            if (unlikely(budget-- == 0)) {
                /* come back next iteration, notifications still off */
                vblk_iothread_again(q->iot, &q->again_hook);
                return;
            }
            if (packed) {
                handle_packed(q, start);
            } else {
                if (unlikely(vblk_vq_pop(vq, &head) < 0)) {
                    queue_broken(q, "avail ring entry out of range", vq->last_avail);
                    return;
                }
                handle(q, head, start);
            }
            if (unlikely(vq->broken))
                return;
            /* Requests that completed at once (errors, null device) are handed back in chunks
             * rather than all at the end, so the driver works on them while we go on. */
            if ((uint16_t)(vq->used_idx - vq->published_used) >= VBLK_PUBLISH_CHUNK) {
                queue_flush(q);
                /* A long pass (null device: up to the budget while the driver refills) is
                 * timed in slices: the completions published so far end, and the requests
                 * taken from here start, now.  One clock read per slice. */
                published += VBLK_PUBLISH_CHUNK;
                if (unlikely(published % VBLK_LAT_SLICE == 0)) {
                    start = clock_ns();
                    lat_account_at(q, start);
                }
            }
        }
    }
}

/* The loop above, compiled once per ring layout: the split loop pays nothing for packed rings. */
static __attribute__((noinline)) void queue_process_packed(struct blk_queue *q, bool rearm)
{
    queue_process_ring(q, rearm, true);
}

static void queue_process(struct blk_queue *q, bool rearm)
{
    if (unlikely(q->vq.packed))
        queue_process_packed(q, rearm);
    else
        queue_process_ring(q, rearm, false);
}

/* ---- I/O thread: queue control ---- */

static void kick_ready(struct vblk_iot_source *src)
{
    struct blk_queue *q = container_of(src, struct blk_queue, kick_src);
    eventfd_t v;

    (void)eventfd_read(q->kick_fd, &v);
    if (q->started && !q->stopping && !q->vq.broken)
        queue_process(q, !vblk_iothread_polls(q->iot));
}

static void again_hook(struct vblk_iot_hook *h)
{
    struct blk_queue *q = container_of(h, struct blk_queue, again_hook);

    if (q->started && !q->stopping && !q->vq.broken)
        queue_process(q, !vblk_iothread_polls(q->iot));
}

static bool queue_poll(struct vblk_iot_poller *p)
{
    struct blk_queue *q = container_of(p, struct blk_queue, poller);

    if (q->stopping || q->paused || q->vq.broken || vblk_vq_avail(&q->vq) == 0)
        return false;
    queue_process(q, false);
    return true;
}

static uint64_t queue_progress(struct vblk_iot_poller *p)
{
    const struct blk_queue *q = container_of(p, struct blk_queue, poller);
    uint64_t n = 0;

    for (unsigned i = 0; i < VBLK_OP_COUNT; i++)
        n += q->stats.ops[i]; /* this thread writes them */
    return n;
}

static bool queue_arm(struct vblk_iot_poller *p)
{
    struct blk_queue *q = container_of(p, struct blk_queue, poller);

    if (q->stopping || q->paused || q->vq.broken || !vblk_vq_enable_notify(&q->vq))
        return false;
    queue_process(q, false);
    return true;
}

/* Register the queue's guest memory as fixed buffers with its engine, unless the engine holds
 * it already (another queue of the device on this thread) or it failed before.  Every queue of
 * the device is stopped while a table is replaced, so nothing on this engine still uses the
 * old one.  Failure is not an error: I/O goes on without fixed buffers (logged once).
 *
 * This runs inside a bounded call (VBLK_IOT_CALL_TIMEOUT_MS): pinning is ~30 ms per GiB of
 * resident small pages, but faulting in memory the guest never touched is ~100x slower (and
 * allocates it all).  So only memory that is all resident (preallocated) and at most
 * VBLK_BLK_FIXED_BUFS_MAX bytes is registered. */
static void queue_fixed_bufs(struct blk_queue *q)
{
    struct vblk_blk_dev *d = q->dev;
    const struct vblk_mem *m = q->vq.mem;
    struct vblk_engine *e = q->eng;
    struct iovec bufs[VBLK_MEM_SLOTS_MAX];
    uint64_t bytes = 0;
    int r;

    if (!d->fixed_bufs || !m || !m->gen || !m->nregions || !e || !e->ops->register_bufs ||
        e->buf_gen == m->gen || __atomic_load_n(&d->bufs_failed_gen, __ATOMIC_RELAXED) == m->gen)
        return;
    for (unsigned i = 0; i < m->nregions; i++) {
        bufs[i] = (struct iovec){m->r[i].host, (size_t)m->r[i].size};
        bytes += m->r[i].size;
    }
    if (bytes > VBLK_BLK_FIXED_BUFS_MAX)
        r = -EFBIG;
    else if (!vblk_mem_resident(m))
        r = -ENODATA;
    else
        r = e->ops->register_bufs(e, bufs, m->nregions, m->gen);
    if (r < 0) {
        if (e->buf_gen) /* what the engine held is not this table: let it go */
            e->ops->register_bufs(e, NULL, 0, 0);
        __atomic_store_n(&d->bufs_failed_gen, m->gen, __ATOMIC_RELAXED);
        if (!__atomic_exchange_n(&d->bufs_warned, true, __ATOMIC_RELAXED))
            log_err(d->name,
                    "cannot register guest memory as io_uring fixed buffers: %s; serving "
                    "without them (%s)",
                    r == -EFBIG     ? "over 64 GiB (the most pinned inside a queue start)"
                    : r == -ENODATA ? "not all allocated: registering would allocate it"
                                    : strerror(-r),
                    r == -ENOMEM    ? "pinned memory counts against RLIMIT_MEMLOCK without "
                                      "CAP_IPC_LOCK: raise it, or set fixed-buffers=off"
                    : r == -ENODATA ? "preallocate guest RAM (QEMU prealloc=on), or set "
                                      "fixed-buffers=off"
                                    : "set fixed-buffers=off to silence this");
        return;
    }
    if (__atomic_exchange_n(&d->bufs_logged_gen, m->gen, __ATOMIC_RELAXED) != m->gen)
        log_info(d->name,
                 "guest memory registered as io_uring fixed buffers (%u regions, %llu MiB "
                 "pinned)",
                 m->nregions, (unsigned long long)(bytes >> 20));
}

static int queue_start_fn(void *arg)
{
    struct blk_queue *q = arg;
    int r;

    queue_fixed_bufs(q);
    q->started = true;
    q->stopping = false;
    if (q->kick_fd >= 0) {
        r = vblk_iothread_add_fd(q->iot, q->kick_fd, &q->kick_src);
        if (r < 0) {
            q->started = false;
            return r;
        }
    }
    if (vblk_iothread_polls(q->iot))
        vblk_iothread_add_poller(q->iot, &q->poller);
    /* what a daemon before us had taken and not completed, in the order it was taken */
    for (unsigned i = 0; i < q->nresubmit && !q->vq.broken; i++)
        handle(q, q->resubmit[i], vblk_iothread_now(q->iot));
    q->nresubmit = 0;
    if (!q->vq.broken)
        queue_process(q, true);
    return 0;
}

static int queue_stop_fn(void *arg)
{
    struct blk_queue *q = arg;

    if (!q->stopping) {
        q->stopping = true;
        if (q->kick_fd >= 0)
            vblk_iothread_del_fd(q->iot, q->kick_fd);
        vblk_iothread_del_poller(q->iot, &q->poller);
        /* the front-end is going away: requests held by an error policy fail now */
        if (q->held)
            log_err(q->dev->name,
                    "queue %u stops with requests held by an error policy: "
                    "they fail with IOERR",
                    q->index);
        while (q->held) {
            struct blk_req *req = q->held;

            q->held = req->next_held;
            req_finish(req, VIRTIO_BLK_S_IOERR);
        }
        q->paused = false;
        /* a driver holding requests back (throttling) lets them go now: no stop waits for it */
        vblk_bdev_drain(q->dev->bdev, q->eng);
    }
    /* wait for in-flight requests, for their used entries to be published and for a pass
     * that was put off to the next iteration */
    if (q->inflight || q->flush_hook.queued || q->again_hook.queued)
        return -EINPROGRESS;
    q->started = false;
    q->stopping = false;
    return 0;
}

static int resume_fn(void *arg)
{
    struct blk_queue *q = arg;
    struct blk_req *list = q->held;
    int n = 0;

    q->held = NULL;
    q->paused = false;
    while (list) { /* retried as they were submitted; one may fail and be held again */
        struct blk_req *req = list;

        list = req->next_held;
        vblk_bdev_submit(q->dev->bdev, q->eng, &req->breq);
        n++;
    }
    if (q->started && !q->stopping && !q->vq.broken)
        vblk_iothread_again(q->iot, &q->again_hook); /* take what arrived meanwhile */
    return n;
}

int vblk_blk_resume(struct vblk_blk_dev *d)
{
    int total = 0;

    for (unsigned i = 0; i < d->num_queues; i++) {
        int r = vblk_iothread_call(d->queues[i].iot, resume_fn, &d->queues[i]);

        if (r < 0)
            return r;
        total += r;
    }
    return total;
}

struct set_call_arg {
    struct blk_queue *q;
    int fd;
};

static int set_call_fn(void *arg)
{
    struct set_call_arg *a = arg;

    a->q->call_fd = a->fd;
    return 0;
}

struct mem_release_arg {
    struct vblk_engine *eng;
    uint32_t gen;
};

static int mem_release_fn(void *arg)
{
    struct mem_release_arg *a = arg;

    if (a->eng->buf_gen == a->gen)
        a->eng->ops->register_bufs(a->eng, NULL, 0, 0);
    return 0;
}

/* ---- control thread ---- */

void vblk_blk_mem_release(struct vblk_blk_dev *d, const struct vblk_mem *m)
{
    if (!d->fixed_bufs || !m || !m->gen)
        return;
    for (unsigned i = 0; i < d->num_queues; i++) {
        struct blk_queue *q = &d->queues[i];
        struct mem_release_arg a = {.eng = q->eng, .gen = m->gen};
        bool seen = false;

        for (unsigned j = 0; j < i; j++)
            seen |= d->queues[j].iot == q->iot;
        if (seen || !q->iot || !q->eng || !q->eng->ops->register_bufs ||
            vblk_iothread_wedged(q->iot))
            continue;
        (void)vblk_iothread_call(q->iot, mem_release_fn, &a);
    }
}

int vblk_blk_create(struct vblk_blk_dev *d, const char *name, struct vblk_bdev *bdev,
                    struct vblk_iothread *iot, unsigned num_queues, unsigned max_queue_size,
                    const char *serial)
{
    memset(d, 0, sizeof(*d));
    d->name = name;
    d->bdev = bdev;
    d->iot = iot;
    d->num_queues = num_queues;
    d->max_queue_size = max_queue_size;
    memcpy(d->serial, serial, strnlen(serial, sizeof(d->serial))); /* not NUL-terminated */
    d->queues = calloc(num_queues, sizeof(*d->queues));
    if (!d->queues)
        return -ENOMEM;
    for (unsigned i = 0; i < num_queues; i++) {
        struct blk_queue *q = &d->queues[i];

        q->dev = d;
        q->index = i;
        q->iot = iot;
        q->eng = iot ? vblk_iothread_engine(iot) : NULL;
        q->kick_fd = q->call_fd = q->err_fd = -1;
        q->kick_src.fn = kick_ready;
        q->flush_hook.fn = flush_hook;
        q->again_hook.fn = again_hook;
        q->poller.poll = queue_poll;
        q->poller.arm = queue_arm;
        q->poller.progress = queue_progress;
    }
    vblk_blk_reset(d);
    return 0;
}

static void queue_free(struct blk_queue *q)
{
    free(q->reqs);
    free(q->iov_pool);
    free(q->resubmit);
    free(q->lat_pending);
    q->reqs = NULL;
    q->iov_pool = NULL;
    q->resubmit = NULL;
    q->lat_pending = NULL;
    q->nlat_pending = q->lat_cap = 0;
    q->lat_cur = NULL;
}

void vblk_blk_destroy(struct vblk_blk_dev *d)
{
    if (!d->queues)
        return;
    for (unsigned i = 0; i < d->num_queues; i++)
        queue_free(&d->queues[i]);
    free(d->queues);
    d->queues = NULL;
}

int vblk_blk_queue_start(struct vblk_blk_dev *d, unsigned qidx, const struct vblk_queue_params *p)
{
    struct blk_queue *q;
    int r;

    if (qidx >= d->num_queues || p->num > d->max_queue_size)
        return -EINVAL;
    q = &d->queues[qidx];
    if (q->started)
        return -EBUSY;
    if (p->packed)
        r = vblk_vqp_setup(&q->vq, p->mem, p->num, p->desc_uva, p->avail_uva, p->used_uva);
    else if (p->last_avail > 0xffff)
        r = -EINVAL;
    else
        r = vblk_vq_setup(&q->vq, p->mem, p->num, p->desc_uva, p->avail_uva, p->used_uva);
    if (r < 0)
        return r;
    q->vq.event_idx = p->event_idx;
    q->vq.indirect = p->indirect;
    q->vq.max_desc = VBLK_SEG_MAX + 2;
    q->vq.max_seg = VBLK_SIZE_MAX;
    if (p->packed) {
        r = vblk_vqp_start(&q->vq, p->last_avail);
        if (r < 0)
            return r;
    } else {
        vblk_vq_start(&q->vq, (uint16_t)p->last_avail);
    }
    q->broken_reported = false;

    queue_free(q);
    q->iov_cap = VBLK_SEG_MAX + VBLK_IOV_SLACK;
    q->reqs = calloc(p->num, sizeof(*q->reqs));
    q->iov_pool = calloc(((size_t)p->num + 1) * q->iov_cap, sizeof(*q->iov_pool));
    q->resubmit = calloc(p->num, sizeof(*q->resubmit));
    q->lat_pending = calloc(p->num, sizeof(*q->lat_pending));
    q->lat_cap = p->num;
    if (!q->reqs || !q->iov_pool || !q->resubmit || !q->lat_pending) {
        queue_free(q);
        return -ENOMEM;
    }
    q->inflight = 0;
    q->kick_fd = p->kick_fd;
    q->call_fd = p->call_fd;
    q->err_fd = p->err_fd;
    q->nresubmit = 0;
    q->log = p->log;
    q->log_size = p->log_size;
    q->log_used = p->log_used;
    q->log_used_gpa = p->log_used_gpa;
    q->spare_iov = q->iov_pool + (size_t)p->num * q->iov_cap; /* packed: see handle_packed() */
    q->vq.inflight = p->packed ? NULL : p->inflight;
    if (q->vq.inflight) {
        r = vblk_vq_inflight_resume(&q->vq, q->resubmit, &q->nresubmit);
        if (r == -EIO)
            queue_broken(q, "corrupt in-flight record", 0);
        else if (r < 0)
            return r;
        else if (q->nresubmit)
            log_info(d->name,
                     "queue %u: resubmitting %u in-flight request%s left by the last daemon", qidx,
                     q->nresubmit, q->nresubmit > 1 ? "s" : "");
    }
    for (unsigned h = 0; h < p->num; h++) {
        struct blk_req *req = &q->reqs[h];

        req->q = q;
        req->head = (uint16_t)h;
        req->iov = q->iov_pool + (size_t)h * q->iov_cap;
        req->breq.done = bdev_done;
    }
    return vblk_iothread_call(q->iot, queue_start_fn, q);
}

int vblk_blk_queue_stop(struct vblk_blk_dev *d, unsigned qidx, uint32_t *last_avail)
{
    struct blk_queue *q;
    int r;

    if (qidx >= d->num_queues)
        return -EINVAL;
    q = &d->queues[qidx];
    if (!q->started) {
        *last_avail = vblk_vq_base(&q->vq);
        return 0;
    }
    r = vblk_iothread_call(q->iot, queue_stop_fn, q);
    if (r < 0)
        return r; /* timed out: q is still the I/O thread's */
    *last_avail = vblk_vq_base(&q->vq);
    q->kick_fd = q->call_fd = q->err_fd = -1;
    return 0;
}

int vblk_blk_queue_set_call(struct vblk_blk_dev *d, unsigned qidx, int call_fd)
{
    struct set_call_arg a = {.fd = call_fd};

    if (qidx >= d->num_queues)
        return -EINVAL;
    a.q = &d->queues[qidx];
    if (!a.q->started) {
        a.q->call_fd = call_fd;
        return 0;
    }
    return vblk_iothread_call(a.q->iot, set_call_fn, &a);
}

void vblk_blk_stats_add(struct vblk_blk_stats *sum, const struct vblk_blk_stats *s)
{
    sum->requests += s->requests;
    for (unsigned i = 0; i < VBLK_OP_COUNT; i++) {
        sum->ops[i] += s->ops[i];
        sum->bytes[i] += s->bytes[i];
    }
    sum->errors += s->errors;
    sum->unsupp += s->unsupp;
    sum->held += s->held;
    sum->ignored += s->ignored;
    sum->inflight += s->inflight;
    for (unsigned i = 0; i < VBLK_LAT_CLASSES; i++)
        vblk_lat_add(&sum->lat[i], &s->lat[i]);
    sum->throttled += s->throttled;
    sum->throttled_ns += s->throttled_ns;
}

#define LOAD(x) __atomic_load_n(&(x), __ATOMIC_RELAXED)

static void queue_read_stats(const struct blk_queue *q, struct vblk_blk_stats *out)
{
    const struct vblk_blk_stats *s = &q->stats;
    uint64_t timed = 0;

    memset(out, 0, sizeof(*out));
    /* completions (timed) before requests: a completion read is never newer than the
     * requests read after it */
    for (unsigned c = 0; c < VBLK_LAT_CLASSES; c++) {
        for (unsigned i = 0; i < VBLK_LAT_BUCKETS; i++) {
            out->lat[c].bucket[i] = __atomic_load_n(&s->lat[c].bucket[i], __ATOMIC_ACQUIRE);
            timed += out->lat[c].bucket[i];
        }
        out->lat[c].sum_ns = LOAD(s->lat[c].sum_ns);
        out->lat[c].max_ns = LOAD(s->lat[c].max_ns);
    }
    for (unsigned i = 0; i < VBLK_OP_COUNT; i++) {
        out->ops[i] = __atomic_load_n(&s->ops[i], __ATOMIC_ACQUIRE);
        out->bytes[i] = LOAD(s->bytes[i]);
        out->requests += out->ops[i]; /* every request is counted under one type */
    }
    out->errors = LOAD(s->errors);
    out->unsupp = LOAD(s->unsupp);
    out->held = LOAD(s->held);
    out->ignored = LOAD(s->ignored);
    /* in flight: taken, and not yet completed and published (a completion is timed when it is
     * published); q->inflight itself is the I/O thread's alone */
    out->inflight = out->requests > timed ? out->requests - timed : 0;
}

void vblk_blk_read_stats(const struct vblk_blk_dev *d, struct vblk_blk_stats *per_queue,
                         struct vblk_blk_stats *total)
{
    struct vblk_blk_stats tmp;

    if (total)
        memset(total, 0, sizeof(*total));
    for (unsigned i = 0; i < d->num_queues; i++) {
        struct vblk_blk_stats *s = per_queue ? &per_queue[i] : &tmp;

        queue_read_stats(&d->queues[i], s);
        if (total)
            vblk_blk_stats_add(total, s);
    }
}

void vblk_blk_queue_set_thread(struct vblk_blk_dev *d, unsigned qidx, struct vblk_iothread *iot)
{
    if (qidx < d->num_queues && !d->queues[qidx].started) {
        d->queues[qidx].iot = iot;
        d->queues[qidx].eng = vblk_iothread_engine(iot);
    }
}
