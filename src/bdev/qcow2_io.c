/* qcow2_io.c - the qcow2 request path (I/O thread, never blocks) and the write-back of metadata.
 *
 * See qcow2.h for the consistency rules.  A request walks its range run by run: a run is a piece
 * of one L2 table's coverage where every cluster (or subcluster) has the same kind (data at
 * contiguous host offsets, zero, unallocated, or one compressed cluster).  Reads and writes to
 * clusters owned by this layer (COPIED) go straight to the child; a write elsewhere allocates:
 *   phase A (token): writable L2 table (allocated or copied if shared), clusters allocated
 *            (refcounts raised in the refcount cache), the guest clusters recorded as in flight;
 *   phase B:         copy-on-write of the untouched head and tail through the read path, then one
 *            write of head + guest data + tail to the new clusters;
 *   phase C (token): L2 entries point to the new clusters, the old ones are queued to be freed.
 * Every wait (token, cache load, another allocation, child I/O) stores where to resume in
 * q->step; wake-ups run from one loop per driver (wake()) so chains of waiters do not nest.
 */
#include "bdev/qcow2.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>
#ifdef VBLK_HAVE_ZSTD
#include <zstd.h>
#endif

#include "util/compiler.h"
#include "util/iov.h"
#include "util/log.h"

enum { T_UNALLOC, T_ZERO, T_DATA, T_COMPRESSED, T_INVALID };
enum { CG_HIT = 0, CG_WAIT = 1, CG_SYNC = 2 };

#define MAX_ALLOC_RUN 1024  /* clusters allocated by one phase A */
#define FREES_SYNC    65536 /* queued frees that make a writer sync */
#define FREES_MAX     (1u << 22)
#define EXT_ALL_ALLOC 0x00000000ffffffffull
#define EXT_ALL_ZERO  0xffffffff00000000ull
#define L2E_RESERVED  0x3f000000000001feull

struct q2_req {
    struct qcow2 *s;
    struct vblk_bdev_req *r; /* what we serve: the guest's request, or a parent's ireq */
    struct q2_req *next_free;
    uint8_t op, flags;
    uint64_t pos, end;
    void (*step)(struct q2_req *q);   /* where to resume */
    void (*resume)(struct q2_req *q); /* after a pressure sync or a new refcount block */
    struct q2_wait w;
    bool has_token, keep_token, meta_touched, in_submit, inline_done, counted;
    unsigned bucket;
    int sub_ret;
    struct vblk_bdev_req sub; /* child I/O */
    struct iovec *siov;
    unsigned siov_cap;
    struct iovec biov;
    /* the current run */
    uint64_t run;
    uint8_t *cbuf, *dbuf;
    uint64_t cskip, clen;
    /* allocation */
    struct q2_alloc alloc;
    bool alloc_on;
    uint64_t ahost, an, head, tail;
    uint8_t *head_buf, *tail_buf;
    uint64_t nrb_ri;
    struct q2_centry *nrb;
    /* sync */
    unsigned sstate;
    unsigned spending;
    int serr;
    bool sfrees;
    void (*safter)(struct q2_req *q);
    size_t fi;
    /* a nested request of ours (copy-on-write read, zeroes written as data) */
    struct vblk_bdev_req ireq;
    struct iovec iiov;
};

static void rd_loop(struct q2_req *q);
static void wr_loop(struct q2_req *q);
static void zd_loop(struct q2_req *q);
static void sync_step(struct q2_req *q);

/* --- wake-ups, requests --- */

static void wake(struct qcow2 *s, struct q2_wait *w, int err)
{
    w->err = err;
    w->next = NULL;
    *s->ready_tail = w;
    s->ready_tail = &w->next;
    if (s->in_ready)
        return;
    s->in_ready = true;
    while ((w = s->ready_head)) {
        s->ready_head = w->next;
        if (!s->ready_head)
            s->ready_tail = &s->ready_head;
        w->fn(w, w->err);
    }
    s->in_ready = false;
}

static void wake_list(struct qcow2 *s, struct q2_wait **list, int err)
{
    struct q2_wait *w = *list;

    *list = NULL;
    while (w) {
        struct q2_wait *next = w->next;

        wake(s, w, err);
        w = next;
    }
}

static void q_done(struct q2_req *q, int ret);

static void w_resume(struct q2_wait *w, int err)
{
    struct q2_req *q = container_of(w, struct q2_req, w);

    if (err) {
        q_done(q, err);
        return;
    }
    q->step(q);
}

static void wait_on(struct q2_req *q, struct q2_wait **list, void (*then)(struct q2_req *))
{
    q->step = then;
    q->w.fn = w_resume;
    q->w.next = *list;
    *list = &q->w;
}

static struct q2_req *q_get(struct qcow2 *s, struct vblk_bdev_req *r)
{
    struct q2_req *q = s->free_reqs;
    struct iovec *siov = NULL;
    unsigned cap = 0;

    if (q) {
        s->free_reqs = q->next_free;
        siov = q->siov;
        cap = q->siov_cap;
    } else if (!(q = malloc(sizeof(*q)))) {
        return NULL;
    }
    memset(q, 0, sizeof(*q));
    q->siov = siov;
    q->siov_cap = cap;
    if (q->siov_cap < r->iovcnt + 2) {
        struct iovec *n = realloc(q->siov, (r->iovcnt + 2) * sizeof(*n));

        if (!n) {
            q->next_free = s->free_reqs;
            s->free_reqs = q;
            return NULL;
        }
        q->siov = n;
        q->siov_cap = r->iovcnt + 2;
    }
    q->s = s;
    q->r = r;
    q->op = r->op;
    q->flags = r->flags;
    q->pos = r->offset;
    q->end = r->offset + r->len;
    s->live_reqs++;
    return q;
}

void qcow2_free_reqs(struct qcow2 *s)
{
    while (s->free_reqs) {
        struct q2_req *q = s->free_reqs;

        s->free_reqs = q->next_free;
        free(q->siov);
        free(q);
    }
}

static void token_put(struct q2_req *q);

static void alloc_end(struct q2_req *q)
{
    struct qcow2 *s = q->s;

    for (struct q2_alloc **p = &s->allocs; *p; p = &(*p)->next) {
        if (*p == &q->alloc) {
            *p = q->alloc.next;
            break;
        }
    }
    q->alloc_on = false;
    wake_list(s, &q->alloc.waiters, 0);
}

static void q_free_bufs(struct q2_req *q)
{
    free(q->cbuf);
    free(q->dbuf);
    free(q->head_buf);
    free(q->tail_buf);
    q->cbuf = q->dbuf = q->head_buf = q->tail_buf = NULL;
}

static void q_done(struct q2_req *q, int ret)
{
    struct qcow2 *s = q->s;
    struct vblk_bdev_req *r = q->r;

    if (q->alloc_on)
        alloc_end(q);
    if (q->has_token)
        token_put(q);
    q_free_bufs(q);
    q->next_free = s->free_reqs;
    s->free_reqs = q;
    s->live_reqs--;
    r->done(r, ret);
}

/* --- the metadata token --- */

static void token_granted(struct q2_wait *w, int err)
{
    struct q2_req *q = container_of(w, struct q2_req, w);

    q->has_token = true;
    q->step(q);
}

static void token_get(struct q2_req *q, void (*then)(struct q2_req *))
{
    struct qcow2 *s = q->s;

    q->step = then;
    if (q->has_token) {
        then(q);
        return;
    }
    if (!s->meta_busy) {
        s->meta_busy = true;
        q->has_token = true;
        then(q);
        return;
    }
    q->w.fn = token_granted;
    q->w.next = NULL;
    *s->meta_tail = &q->w;
    s->meta_tail = &q->w.next;
}

static void token_put(struct q2_req *q)
{
    struct qcow2 *s = q->s;
    struct q2_wait *w = s->meta_head;

    q->has_token = false;
    if (!w) {
        s->meta_busy = false;
        return;
    }
    s->meta_head = w->next;
    if (!s->meta_head)
        s->meta_tail = &s->meta_head;
    wake(s, w, 0); /* the token passes to the next in line */
}

/* --- child I/O --- */

static void child_done(struct vblk_bdev_req *r, int ret)
{
    struct q2_req *q = container_of(r, struct q2_req, sub);
    struct qcow2 *s = q->s;

    if (q->counted) {
        q->counted = false;
        s->inflight[q->bucket]--;
        if (s->grace_waiter && q->bucket == s->grace_bucket && !s->inflight[q->bucket]) {
            struct q2_wait *w = s->grace_waiter;

            s->grace_waiter = NULL;
            wake(s, w, 0);
        }
    }
    q->sub_ret = ret;
    if (q->in_submit) {
        q->inline_done = true;
        return;
    }
    q->step(q);
}

/* Start one child I/O; true if it completed inline (result in q->sub_ret, then is not called),
 * false if then(q) will be called.  data: guest data I/O, counted for the grace period. */
static bool child_io(struct q2_req *q, struct vblk_bdev *bd, uint8_t op, uint8_t flags,
                     const struct iovec *iov, unsigned cnt, uint64_t off, uint64_t len, bool data,
                     void (*then)(struct q2_req *))
{
    struct qcow2 *s = q->s;

    q->step = then;
    q->sub.op = op;
    q->sub.flags = flags;
    q->sub.iov = iov;
    q->sub.iovcnt = cnt;
    q->sub.offset = off;
    q->sub.len = len;
    q->sub.done = child_done;
    q->counted = data;
    if (data) {
        q->bucket = s->gen & 1;
        s->inflight[q->bucket]++;
    }
    q->in_submit = true;
    q->inline_done = false;
    vblk_bdev_submit(bd, s->eng, &q->sub);
    q->in_submit = false;
    return q->inline_done;
}

static struct q2_req *q_get(struct qcow2 *s, struct vblk_bdev_req *r);

static void internal_done(struct vblk_bdev_req *r, int ret)
{
    struct q2_req *q = container_of(r, struct q2_req, ireq);

    q->sub_ret = ret;
    if (q->in_submit) {
        q->inline_done = true;
        return;
    }
    q->step(q);
}

/* A nested request of ours through the driver's own read or write path. */
static bool internal_rw(struct q2_req *q, uint8_t op, void *buf, uint64_t off, uint64_t len,
                        void (*then)(struct q2_req *))
{
    struct q2_req *c;

    q->step = then;
    q->iiov = (struct iovec){buf, len};
    q->ireq = (struct vblk_bdev_req){
        .op = op, .iovcnt = 1, .iov = &q->iiov, .offset = off, .len = len, .done = internal_done};
    c = q_get(q->s, &q->ireq);
    if (!c) {
        q->sub_ret = -ENOMEM;
        return true;
    }
    q->in_submit = true;
    q->inline_done = false;
    if (op == VBLK_BDEV_READ)
        rd_loop(c);
    else
        wr_loop(c);
    q->in_submit = false;
    return q->inline_done;
}

/* q->siov[at..] = the request's iovecs for guest bytes [pos, pos + len); returns the count. */
static unsigned slice(struct q2_req *q, unsigned at, uint64_t pos, uint64_t len)
{
    uint64_t skip = pos - q->r->offset;
    unsigned n = at;

    for (unsigned i = 0; i < q->r->iovcnt && len; i++) {
        const struct iovec *v = &q->r->iov[i];
        uint64_t take;

        if (skip >= v->iov_len) {
            skip -= v->iov_len;
            continue;
        }
        take = v->iov_len - skip < len ? v->iov_len - skip : len;
        q->siov[n++] = (struct iovec){(char *)v->iov_base + skip, take};
        len -= take;
        skip = 0;
    }
    return n - at;
}

static void zero_slice(struct q2_req *q, uint64_t pos, uint64_t len)
{
    vblk_iov_zero(q->siov, slice(q, 0, pos, len));
}

/* --- caches --- */

int qcow2_cache_init(struct q2_cache *c, const char *what, struct qcow2 *s, unsigned max)
{
    c->what = what;
    c->s = s;
    c->max = max;
    for (c->nhash = 16; c->nhash < max; c->nhash <<= 1)
        ;
    c->e = calloc(max, sizeof(*c->e));
    c->hash = malloc(c->nhash * sizeof(*c->hash));
    if (!c->e || !c->hash)
        return -ENOMEM;
    for (unsigned i = 0; i < c->nhash; i++)
        c->hash[i] = -1;
    for (unsigned i = 0; i < max; i++) {
        c->e[i].cache = c;
        c->e[i].s = s;
        c->e[i].hnext = -1;
    }
    return 0;
}

void qcow2_cache_destroy(struct q2_cache *c)
{
    for (unsigned i = 0; c->e && i < c->n; i++)
        free(c->e[i].buf);
    free(c->e);
    free(c->hash);
    c->e = NULL;
    c->hash = NULL;
}

static unsigned hidx(const struct q2_cache *c, uint64_t off)
{
    return (unsigned)((off >> c->s->cluster_bits) & (c->nhash - 1));
}

static struct q2_centry *cache_find(struct q2_cache *c, uint64_t off)
{
    for (int i = c->hash[hidx(c, off)]; i >= 0; i = c->e[i].hnext)
        if (c->e[i].off == off)
            return &c->e[i];
    return NULL;
}

static void hash_add(struct q2_cache *c, struct q2_centry *e)
{
    unsigned h = hidx(c, e->off);

    e->hnext = c->hash[h];
    c->hash[h] = (int)(e - c->e);
}

static void hash_del(struct q2_cache *c, struct q2_centry *e)
{
    int *p = &c->hash[hidx(c, e->off)];
    int me = (int)(e - c->e);

    while (*p >= 0 && *p != me)
        p = &c->e[*p].hnext;
    if (*p == me)
        *p = e->hnext;
    e->off = 0;
    e->valid = false;
    e->hnext = -1;
}

static void wb_done(struct vblk_bdev_req *r, int ret)
{
    struct q2_centry *e = container_of(r, struct q2_centry, req);
    struct q2_cache *c = e->cache;

    e->busy = false;
    if (!ret)
        e->dirty = false;
    else
        log_err(e->s->b->name, "'%s': cannot write %s at 0x%" PRIx64 ": %s", e->s->path, c->what,
                e->off, strerror(-ret));
    e->wb_cb(e, ret);
    wake_list(e->s, &c->slot_waiters, 0);
}

static void cache_wb(struct q2_centry *e, void (*cb)(struct q2_centry *, int), void *arg)
{
    struct qcow2 *s = e->s;

    e->busy = true;
    e->wb_cb = cb;
    e->wb_arg = arg;
    e->iov = (struct iovec){e->buf, s->cs};
    e->req = (struct vblk_bdev_req){.op = VBLK_BDEV_WRITE,
                                    .iovcnt = 1,
                                    .iov = &e->iov,
                                    .offset = e->off,
                                    .len = s->cs,
                                    .done = wb_done};
    vblk_bdev_submit(s->file, s->eng, &e->req);
}

static void evict_wb_done(struct q2_centry *e, int err)
{
}

/* A slot to (re)use: 0 with *out, CG_WAIT (q waits), CG_SYNC (only dirty L2 tables: a sync is
 * needed), or -errno.  keep is never chosen. */
static int cache_victim(struct q2_req *q, struct q2_cache *c, struct q2_centry *keep,
                        struct q2_centry **out, void (*then)(struct q2_req *))
{
    struct qcow2 *s = c->s;
    struct q2_centry *best = NULL, *dirty = NULL;

    if (c->n < c->max) {
        struct q2_centry *e = &c->e[c->n];

        if (!e->buf && !(e->buf = qcow2_alloc_aligned(s->cs)))
            return -ENOMEM;
        c->n++;
        *out = e;
        return 0;
    }
    for (unsigned i = 0; i < c->n; i++) {
        struct q2_centry *e = &c->e[i];

        if (e->busy || e == keep)
            continue;
        if (!e->valid) {
            best = e;
            break;
        }
        if (!e->dirty) {
            if (!best || e->lru < best->lru)
                best = e;
        } else if (!dirty || e->lru < dirty->lru) {
            dirty = e;
        }
    }
    if (best) {
        if (best->off)
            hash_del(c, best);
        *out = best;
        return 0;
    }
    if (dirty && c == &s->rbc) { /* a refcount block may be written at any time */
        wait_on(q, &c->slot_waiters, then);
        cache_wb(dirty, evict_wb_done, NULL);
        return CG_WAIT;
    }
    if (dirty)
        return CG_SYNC;
    wait_on(q, &c->slot_waiters, then);
    return CG_WAIT;
}

static void load_done(struct vblk_bdev_req *r, int ret)
{
    struct q2_centry *e = container_of(r, struct q2_centry, req);
    struct q2_cache *c = e->cache;

    e->busy = false;
    if (ret < 0) {
        log_err(e->s->b->name, "'%s': cannot read %s at 0x%" PRIx64 ": %s", e->s->path, c->what,
                e->off, strerror(-ret));
        hash_del(c, e);
    } else {
        e->valid = true;
        e->lru = ++c->tick;
    }
    wake_list(e->s, &e->waiters, ret < 0 ? -EIO : 0);
    wake_list(e->s, &c->slot_waiters, 0);
}

/* The table at off: CG_HIT with *out, CG_WAIT (q resumes at then), CG_SYNC, or -errno. */
static int cache_get(struct q2_req *q, struct q2_cache *c, uint64_t off, struct q2_centry **out,
                     void (*then)(struct q2_req *))
{
    struct qcow2 *s = c->s;
    struct q2_centry *e = cache_find(c, off);
    int r;

    if (e && e->valid) {
        e->lru = ++c->tick;
        *out = e;
        return CG_HIT;
    }
    if (e) { /* loading */
        wait_on(q, &e->waiters, then);
        return CG_WAIT;
    }
    r = cache_victim(q, c, NULL, &e, then);
    if (r)
        return r;
    e->off = off;
    e->valid = false;
    e->dirty = false;
    e->busy = true;
    hash_add(c, e);
    wait_on(q, &e->waiters, then);
    e->iov = (struct iovec){e->buf, s->cs};
    e->req = (struct vblk_bdev_req){.op = VBLK_BDEV_READ,
                                    .iovcnt = 1,
                                    .iov = &e->iov,
                                    .offset = off,
                                    .len = s->cs,
                                    .done = load_done};
    vblk_bdev_submit(s->file, s->eng, &e->req);
    return CG_WAIT;
}

static void cache_drop(struct q2_cache *c, uint64_t off)
{
    struct q2_centry *e = cache_find(c, off);

    if (e && !e->busy && !e->dirty)
        hash_del(c, e);
}

/* --- pressure sync: no clean L2 slot left --- */

static void sync_run(struct q2_req *q, bool frees, void (*after)(struct q2_req *));

static void pressure_done(struct q2_req *q)
{
    if (!q->keep_token)
        token_put(q);
    if (q->serr) {
        q_done(q, q->serr);
        return;
    }
    q->resume(q);
}

static void pressure_go(struct q2_req *q)
{
    sync_run(q, false, pressure_done);
}

static void pressure_sync(struct q2_req *q, void (*then)(struct q2_req *))
{
    q->resume = then;
    q->keep_token = q->has_token;
    token_get(q, pressure_go);
}

/* cache_get for the L2 cache, handling CG_SYNC: 0 hit, 1 waiting, -errno */
static int l2_get(struct q2_req *q, uint64_t off, struct q2_centry **out,
                  void (*then)(struct q2_req *))
{
    int r = cache_get(q, &q->s->l2c, off, out, then);

    if (r == CG_SYNC) {
        pressure_sync(q, then);
        return 1;
    }
    return r;
}

/* --- refcounts --- */

static uint64_t rc_get(const struct qcow2 *s, const uint8_t *b, uint64_t i)
{
    unsigned order = s->in.refcount_order;

    switch (order) {
    case 0:
    case 1:
    case 2: {
        unsigned bits = 1u << order, shift = (unsigned)((i * bits) & 7);

        return (b[(i * bits) >> 3] >> shift) & ((1u << bits) - 1);
    }
    case 3:
        return b[i];
    case 4:
        return (uint64_t)b[2 * i] << 8 | b[2 * i + 1];
    case 5:
        return (uint64_t)b[4 * i] << 24 | (uint64_t)b[4 * i + 1] << 16 |
               (uint64_t)b[4 * i + 2] << 8 | b[4 * i + 3];
    default:
        return q2_be64(b + 8 * i);
    }
}

static void rc_set(const struct qcow2 *s, uint8_t *b, uint64_t i, uint64_t v)
{
    unsigned order = s->in.refcount_order;

    switch (order) {
    case 0:
    case 1:
    case 2: {
        unsigned bits = 1u << order, shift = (unsigned)((i * bits) & 7);
        uint8_t mask = (uint8_t)(((1u << bits) - 1) << shift);

        b[(i * bits) >> 3] = (uint8_t)((b[(i * bits) >> 3] & ~mask) | ((v << shift) & mask));
        break;
    }
    case 3:
        b[i] = (uint8_t)v;
        break;
    case 4:
        b[2 * i] = (uint8_t)(v >> 8);
        b[2 * i + 1] = (uint8_t)v;
        break;
    case 5:
        for (int k = 0; k < 4; k++)
            b[4 * i + k] = (uint8_t)(v >> (24 - 8 * k));
        break;
    default:
        q2_put_be64(b + 8 * i, v);
        break;
    }
}

static bool table_ok(const struct qcow2 *s, uint64_t off)
{
    return off && !(off & (s->cs - 1)) && off + s->cs <= s->file_end;
}

/* Decrement one cluster's refcount in a loaded refcount block (freeing bookkeeping). */
static void apply_free(struct qcow2 *s, uint8_t *blk, uint64_t idx)
{
    uint64_t i = idx & ((1ull << s->rb_bits) - 1), rc = rc_get(s, blk, i);

    if (rc == 0) {
        log_warn(s->b->name, "'%s': freeing cluster %" PRIu64 " whose refcount is 0", s->path, idx);
        return;
    }
    rc_set(s, blk, i, rc - 1);
    if (rc == 1) {
        if (idx < s->free_hint)
            s->free_hint = idx;
        qcow2_meta_del(s, idx);
        cache_drop(&s->l2c, idx << s->cluster_bits);
    }
}

static void queue_free(struct qcow2 *s, uint64_t idx)
{
    if (s->nfrees == s->frees_cap) {
        size_t cap = s->frees_cap ? s->frees_cap * 2 : 1024;
        uint64_t *f = cap <= FREES_MAX ? realloc(s->frees, cap * sizeof(*f)) : NULL;

        if (!f) { /* a leak, not a corruption */
            if (!s->warned_frees)
                log_warn(s->b->name,
                         "'%s': too many clusters to free before a flush; some "
                         "are leaked",
                         s->path);
            s->warned_frees = true;
            return;
        }
        s->frees = f;
        s->frees_cap = cap;
    }
    s->frees[s->nfrees++] = idx;
}

/* Queue the release of what an L2 entry pointed to (its host clusters). */
static void free_old(struct qcow2 *s, uint64_t e)
{
    if (s->data_owned)
        return; /* external data: not refcounted */
    if (e & QCOW2_OFLAG_COMPRESSED) {
        unsigned x = 62 - (s->cluster_bits - 8);
        uint64_t coff = e & ((1ull << x) - 1);
        uint64_t nsec = (e >> x) & ((1ull << (s->cluster_bits - 8)) - 1);
        uint64_t start = coff & ~511ull, len = (nsec + 1) * 512;

        if (start + len > s->file_end || qcow2_meta_overlaps(s, start >> s->cluster_bits, 1))
            return;
        for (uint64_t c = start >> s->cluster_bits; c <= (start + len - 1) >> s->cluster_bits; c++)
            queue_free(s, c);
        return;
    }
    e &= QCOW2_OFFSET_MASK;
    if (!e || e >= s->file_end || qcow2_meta_overlaps(s, e >> s->cluster_bits, 1))
        return;
    queue_free(s, e >> s->cluster_bits);
}

static void nrb_reft_done(struct q2_req *q)
{
    if (q->sub_ret) {
        q_done(q, q->sub_ret);
        return;
    }
    q->resume(q);
}

static void nrb_flushed(struct q2_req *q)
{
    struct qcow2 *s = q->s;
    uint64_t off = q->nrb_ri * 8, at = off / s->chunk * s->chunk;

    if (q->sub_ret) {
        q_done(q, q->sub_ret);
        return;
    }
    q2_put_be64(s->reft + off, q->nrb->off);
    if (qcow2_meta_add(s, q->nrb->off >> s->cluster_bits, 1) < 0) {
        q_done(q, -ENOMEM);
        return;
    }
    q->biov = (struct iovec){s->reft + at, s->chunk};
    if (child_io(q, s->file, VBLK_BDEV_WRITE, 0, &q->biov, 1, s->in.reft_offset + at, s->chunk,
                 false, nrb_reft_done))
        nrb_reft_done(q);
}

static void nrb_written(struct q2_centry *e, int err)
{
    struct q2_req *q = e->wb_arg;

    if (err) {
        hash_del(e->cache, e);
        q_done(q, err);
        return;
    }
    if (child_io(q, q->s->file, VBLK_BDEV_FLUSH, 0, NULL, 0, 0, 0, false, nrb_flushed))
        nrb_flushed(q);
}

/* Create the refcount block for refcount table entry ri, placed in the first cluster it covers
 * (which it then counts itself); written and flushed before the table points to it. */
static int new_refblock(struct q2_req *q, uint64_t ri, void (*then)(struct q2_req *))
{
    struct qcow2 *s = q->s;
    uint64_t k = ri << s->rb_bits;
    struct q2_centry *e;
    int r;

    if (qcow2_meta_overlaps(s, k, 1)) {
        log_err(s->b->name,
                "'%s': metadata at cluster %" PRIu64 " has no refcount: the image "
                "is corrupt",
                s->path, k);
        return -EIO;
    }
    r = cache_victim(q, &s->rbc, NULL, &e, then);
    if (r)
        return r;
    memset(e->buf, 0, s->cs);
    rc_set(s, e->buf, 0, 1);
    e->off = k << s->cluster_bits;
    e->valid = true;
    e->dirty = true;
    e->lru = ++s->rbc.tick;
    hash_add(&s->rbc, e);
    if (e->off + s->cs > s->file_end)
        s->file_end = e->off + s->cs;
    q->nrb_ri = ri;
    q->nrb = e;
    q->resume = then;
    cache_wb(e, nrb_written, q);
    return CG_WAIT;
}

/* --- growing the refcount table ---
 * The new table and the refcount block that counts it go to a fresh range past every cluster in
 * use: block, then table, written and flushed before the header points to the table; the old
 * table is freed (deferred like every decrement). */

static void grow_fail(struct q2_req *q, int err)
{
    log_err(q->s->b->name, "'%s': cannot grow the refcount table: %s", q->s->path, strerror(-err));
    q_done(q, err);
}

static void grow_done(struct q2_req *q)
{
    if (q->sub_ret) {
        grow_fail(q, q->sub_ret);
        return;
    }
    q->resume(q);
}

static void grow_hdr_written(struct q2_req *q)
{
    struct qcow2 *s = q->s;
    uint64_t old_off = s->in.reft_offset, old_n = s->in.reft_clusters;

    if (q->sub_ret) {
        grow_fail(q, q->sub_ret);
        return;
    }
    /* the header now names the new table: switch to it */
    free(s->reft);
    s->reft = q->cbuf;
    q->cbuf = NULL;
    s->in.reft_offset = q2_be64(s->hdr + 48);
    s->in.reft_clusters = (uint32_t)(q2_be64(s->hdr + 56 - 4) & 0xffffffffu);
    s->reft_entries = (uint64_t)s->in.reft_clusters * s->cs / 8;
    if (qcow2_meta_add(s, q->nrb_ri << s->rb_bits, 1 + s->in.reft_clusters) < 0) {
        grow_fail(q, -ENOMEM);
        return;
    }
    for (uint64_t c = 0; c < old_n; c++)
        queue_free(s, (old_off >> s->cluster_bits) + c);
    if (child_io(q, s->file, VBLK_BDEV_FLUSH, 0, NULL, 0, 0, 0, false, grow_done))
        grow_done(q);
}

static void grow_flushed(struct q2_req *q)
{
    struct qcow2 *s = q->s;

    if (q->sub_ret) {
        grow_fail(q, q->sub_ret);
        return;
    }
    q->biov = (struct iovec){s->hdr, s->chunk};
    if (child_io(q, s->file, VBLK_BDEV_WRITE, 0, &q->biov, 1, 0, s->chunk, false, grow_hdr_written))
        grow_hdr_written(q);
}

static void grow_table_written(struct q2_req *q)
{
    if (q->sub_ret) {
        grow_fail(q, q->sub_ret);
        return;
    }
    if (child_io(q, q->s->file, VBLK_BDEV_FLUSH, 0, NULL, 0, 0, 0, false, grow_flushed))
        grow_flushed(q);
}

static void grow_block_written(struct q2_req *q)
{
    struct qcow2 *s = q->s;

    if (q->sub_ret) {
        grow_fail(q, q->sub_ret);
        return;
    }
    q->biov = (struct iovec){q->cbuf, q->clen};
    if (child_io(q, s->file, VBLK_BDEV_WRITE, 0, &q->biov, 1,
                 ((q->nrb_ri << s->rb_bits) + 1) << s->cluster_bits, q->clen, false,
                 grow_table_written))
        grow_table_written(q);
}

static int grow_reft(struct q2_req *q, uint64_t ri, void (*then)(struct q2_req *))
{
    struct qcow2 *s = q->s;
    uint64_t per = 1ull << s->rb_bits, per_cl = s->cs / 8;
    uint64_t r0 = ((s->file_end >> s->cluster_bits) + per - 1) / per, want, tcl;
    uint64_t max_tcl =
        per - 1 < QCOW2_MAX_REFT_BYTES / s->cs ? per - 1 : QCOW2_MAX_REFT_BYTES / s->cs;

    if (r0 < s->reft_entries)
        r0 = s->reft_entries;
    if (r0 < ri)
        r0 = ri;
    want = s->reft_entries + s->reft_entries / 2;
    if (want < r0 + 1)
        want = r0 + 1;
    tcl = (want + per_cl - 1) / per_cl;
    if (tcl > max_tcl)
        tcl = max_tcl;
    if (tcl * per_cl < r0 + 1 || (uint64_t)s->in.reft_clusters >= tcl) {
        log_err(s->b->name,
                "'%s': the refcount table cannot grow further: no space for new "
                "clusters",
                s->path);
        return -ENOSPC;
    }
    q->cbuf = qcow2_alloc_aligned(tcl * s->cs);
    q->dbuf = qcow2_alloc_aligned(s->cs);
    if (!q->cbuf || !q->dbuf)
        return -ENOMEM;
    memcpy(q->cbuf, s->reft, s->reft_entries * 8);
    q2_put_be64(q->cbuf + r0 * 8, (r0 * per) << s->cluster_bits);
    for (uint64_t c = 0; c <= tcl; c++)
        rc_set(s, q->dbuf, c, 1); /* the block itself and the table after it */
    q->clen = tcl * s->cs;
    q->nrb_ri = r0;
    q2_put_be64(s->hdr + 48, ((r0 * per) + 1) << s->cluster_bits);
    {
        uint8_t *p = s->hdr + 56;
        uint32_t v = __builtin_bswap32((uint32_t)tcl);

        memcpy(p, &v, 4);
    }
    if (((r0 * per) + 1 + tcl) << s->cluster_bits > s->file_end)
        s->file_end = ((r0 * per) + 1 + tcl) << s->cluster_bits;
    q->resume = then;
    q->biov = (struct iovec){q->dbuf, s->cs};
    if (child_io(q, s->file, VBLK_BDEV_WRITE, 0, &q->biov, 1, (r0 * per) << s->cluster_bits, s->cs,
                 false, grow_block_written))
        grow_block_written(q);
    return CG_WAIT;
}

/* Allocate up to want contiguous host clusters (token held): 0 with host and got set, CG_WAIT (q
 * resumes at then, nothing allocated), or -errno. */
static int alloc_clusters(struct q2_req *q, uint64_t want, uint64_t *host, uint64_t *got,
                          void (*then)(struct q2_req *))
{
    struct qcow2 *s = q->s;
    uint64_t idx = s->free_hint;

    for (;;) {
        uint64_t ri = idx >> s->rb_bits, rboff, end, n;
        struct q2_centry *e;
        int r;

        if (ri >= s->reft_entries)
            return grow_reft(q, ri, then);
        rboff = q2_be64(s->reft + ri * 8) & QCOW2_REFT_OFFSET_MASK;
        if (!rboff) {
            r = new_refblock(q, ri, then);
            return r ? r : CG_WAIT;
        }
        if (!table_ok(s, rboff))
            return -EIO;
        r = cache_get(q, &s->rbc, rboff, &e, then);
        if (r)
            return r;
        end = (ri + 1) << s->rb_bits;
        while (idx < end &&
               (rc_get(s, e->buf, idx - (ri << s->rb_bits)) || qcow2_meta_overlaps(s, idx, 1)))
            idx++;
        if (idx == end)
            continue;
        for (n = 1; n < want && idx + n < end; n++)
            if (rc_get(s, e->buf, idx + n - (ri << s->rb_bits)) ||
                qcow2_meta_overlaps(s, idx + n, 1))
                break;
        for (uint64_t k = 0; k < n; k++)
            rc_set(s, e->buf, idx + k - (ri << s->rb_bits), 1);
        e->dirty = true;
        *host = idx << s->cluster_bits;
        *got = n;
        s->free_hint = idx + n;
        if ((idx + n) << s->cluster_bits > s->file_end)
            s->file_end = (idx + n) << s->cluster_bits;
        return 0;
    }
}

/* --- L2 lookups --- */

static bool l2off_ok(const struct qcow2 *s, uint64_t off)
{
    uint64_t c = off >> s->cluster_bits;

    if (!table_ok(s, off) || c == 0)
        return false;
    if (s->in.l1_size && c >= s->in.l1_offset >> s->cluster_bits &&
        c < (s->in.l1_offset + s->l1_bytes + s->cs - 1) >> s->cluster_bits)
        return false;
    return !(c >= s->in.reft_offset >> s->cluster_bits &&
             c < (s->in.reft_offset >> s->cluster_bits) + s->in.reft_clusters);
}

static uint64_t l2e(const struct qcow2 *s, const uint8_t *tab, uint64_t pos)
{
    return q2_be64(tab + ((pos >> s->cluster_bits) & ((1ull << s->l2_bits) - 1)) * s->l2_esz);
}

static uint64_t l2bm(const struct qcow2 *s, const uint8_t *tab, uint64_t pos)
{
    return q2_be64(tab + ((pos >> s->cluster_bits) & ((1ull << s->l2_bits) - 1)) * 16 + 8);
}

/* Kind of the unit (cluster, or subcluster with extended L2) at guest pos; *host: the host
 * offset of pos (T_DATA) or the descriptor (T_COMPRESSED). */
static int classify(const struct qcow2 *s, const uint8_t *tab, uint64_t pos, uint64_t *host)
{
    uint64_t e = l2e(s, tab, pos), off = e & QCOW2_OFFSET_MASK;
    bool ext_data = s->data_owned;

    if (e & QCOW2_OFLAG_COMPRESSED) {
        *host = e & ~QCOW2_OFLAG_COMPRESSED;
        return ext_data ? T_INVALID : T_COMPRESSED;
    }
    if (!s->ext_l2) {
        if (e & L2E_RESERVED)
            return T_INVALID;
        if (e & QCOW2_OFLAG_ZERO)
            return s->in.version < 3 ? T_INVALID : T_ZERO;
        if (!off && !(ext_data && (e & QCOW2_OFLAG_COPIED)))
            return T_UNALLOC;
    } else {
        uint64_t bm = l2bm(s, tab, pos);
        unsigned sc = (unsigned)((pos >> s->sc_bits) & 31);

        if (e & (L2E_RESERVED | 1) || (bm & (bm >> 32) & 0xffffffffull))
            return T_INVALID;
        if (!((bm >> sc) & 1))
            return ((bm >> (32 + sc)) & 1) ? T_ZERO : T_UNALLOC;
        if (!off && !(ext_data && (e & QCOW2_OFLAG_COPIED)))
            return T_INVALID;
    }
    if (ext_data) {
        if (off != (pos & ~(s->cs - 1)))
            return T_INVALID; /* external data: host offset == guest offset */
    } else if (off >= s->file_end || qcow2_meta_overlaps(s, off >> s->cluster_bits, 1)) {
        return T_INVALID;
    }
    *host = off + (pos & (s->cs - 1));
    return T_DATA;
}

/* The L2 table for pos, read-only use: 0 with *tab (NULL: no table, all unallocated) and *lim
 * (end of its coverage, capped at q->end), 1 waiting, -errno. */
static int l2_for(struct q2_req *q, uint64_t pos, const uint8_t **tab, uint64_t *lim,
                  void (*then)(struct q2_req *))
{
    struct qcow2 *s = q->s;
    unsigned shift = s->cluster_bits + s->l2_bits;
    uint64_t l1i = pos >> shift, l1e, off;
    struct q2_centry *e;
    int r;

    *lim = (l1i + 1) << shift;
    if (*lim > q->end)
        *lim = q->end;
    if (l1i >= s->in.l1_size)
        return -EIO;
    l1e = q2_be64(s->l1 + l1i * 8);
    off = l1e & QCOW2_OFFSET_MASK;
    *tab = NULL;
    if (!off)
        return 0;
    if ((l1e & QCOW2_L1_RESERVED) || !l2off_ok(s, off)) {
        log_err(s->b->name, "'%s': L1 entry %" PRIu64 " (0x%" PRIx64 ") is invalid", s->path, l1i,
                l1e);
        return -EIO;
    }
    r = l2_get(q, off, &e, then);
    if (r)
        return r;
    *tab = e->buf;
    return 0;
}

/* A run at pos: kind, host offset of pos, length (units of the same kind, contiguous). */
static int lookup(struct q2_req *q, int *type, uint64_t *host, uint64_t *run,
                  void (*then)(struct q2_req *))
{
    struct qcow2 *s = q->s;
    const uint8_t *tab;
    uint64_t lim, unit = 1ull << s->sc_bits, u, h;
    int r = l2_for(q, q->pos, &tab, &lim, then);

    if (r)
        return r;
    if (!tab) {
        *type = T_UNALLOC;
        *run = lim - q->pos;
        return 0;
    }
    *type = classify(s, tab, q->pos, host);
    if (*type == T_COMPRESSED) {
        u = (q->pos | (s->cs - 1)) + 1;
        *run = (u < lim ? u : lim) - q->pos;
        return 0;
    }
    for (u = (q->pos | (unit - 1)) + 1; u < lim; u += unit) {
        if (classify(s, tab, u, &h) != *type || (*type == T_DATA && h != *host + (u - q->pos)))
            break;
    }
    *run = (u < lim ? u : lim) - q->pos;
    return 0;
}

/* --- reads --- */

static int decompress(struct qcow2 *s, const uint8_t *in, uint64_t inlen, uint8_t *out)
{
    if (s->in.compression == QCOW2_COMPRESS_ZLIB) {
        z_stream *z = s->zstream;
        int ret;

        if (inflateReset(z) != Z_OK)
            return -EIO;
        z->next_in = (Bytef *)in;
        z->avail_in = (uInt)inlen;
        z->next_out = out;
        z->avail_out = (uInt)s->cs;
        ret = inflate(z, Z_FINISH);
        return (ret == Z_STREAM_END || ret == Z_BUF_ERROR) && z->avail_out == 0 ? 0 : -EIO;
    }
#ifdef VBLK_HAVE_ZSTD
    {
        ZSTD_inBuffer zi = {in, inlen, 0};
        ZSTD_outBuffer zo = {out, s->cs, 0};

        ZSTD_DCtx_reset(s->zstd, ZSTD_reset_session_only);
        while (zo.pos < zo.size) {
            size_t ip = zi.pos, op = zo.pos, ret = ZSTD_decompressStream(s->zstd, &zo, &zi);

            if (ZSTD_isError(ret) || (zi.pos == ip && zo.pos == op))
                return -EIO;
        }
        return 0;
    }
#else
    return -EIO;
#endif
}

static void rd_next(struct q2_req *q)
{
    if (q->sub_ret) {
        q_done(q, q->sub_ret);
        return;
    }
    q->pos += q->run;
    rd_loop(q);
}

static int rd_unalloc_finish(struct q2_req *q)
{
    if (q->sub_ret) {
        q_done(q, q->sub_ret);
        return -1;
    }
    if (q->clen < q->run)
        zero_slice(q, q->pos + q->clen, q->run - q->clen);
    q->pos += q->run;
    return 0;
}

static void rd_unalloc_done(struct q2_req *q)
{
    if (rd_unalloc_finish(q) == 0)
        rd_loop(q);
}

static int rd_comp_finish(struct q2_req *q)
{
    struct qcow2 *s = q->s;
    int r = q->sub_ret;

    if (!r && (r = decompress(s, q->cbuf + q->cskip, q->clen, q->dbuf)) < 0)
        log_err(s->b->name,
                "'%s': compressed cluster at guest 0x%" PRIx64 " does not "
                "decompress",
                s->path, q->pos & ~(s->cs - 1));
    if (r) {
        q_done(q, r);
        return -1;
    }
    vblk_buf_to_iov(q->siov, slice(q, 0, q->pos, q->run), q->dbuf + (q->pos & (s->cs - 1)), q->run);
    free(q->cbuf);
    free(q->dbuf);
    q->cbuf = q->dbuf = NULL;
    q->pos += q->run;
    return 0;
}

static void rd_comp_done(struct q2_req *q)
{
    if (rd_comp_finish(q) == 0)
        rd_loop(q);
}

/* Start reading a compressed cluster: 0 started/finished (see *inl), -1 failed (q done). */
static int rd_comp_start(struct q2_req *q, uint64_t desc, bool *inl)
{
    struct qcow2 *s = q->s;
    unsigned x = 62 - (s->cluster_bits - 8);
    uint64_t coff = desc & ((1ull << x) - 1);
    uint64_t nsec = (desc >> x) & ((1ull << (s->cluster_bits - 8)) - 1);
    uint64_t csize = (nsec + 1) * 512 - (coff & 511), al, astart, aend;

    if (coff < s->cs || coff >= s->file_end || qcow2_meta_overlaps(s, coff >> s->cluster_bits, 1)) {
        log_err(s->b->name, "'%s': compressed cluster descriptor 0x%" PRIx64 " is invalid", s->path,
                desc);
        q_done(q, -EIO);
        return -1;
    }
    if (csize > s->file_end - coff)
        csize = s->file_end - coff;
    al = s->file->align > 1 ? s->file->align : 1;
    astart = coff & ~(al - 1);
    aend = (coff + csize + al - 1) & ~(al - 1);
    q->cbuf = qcow2_alloc_aligned(aend - astart);
    q->dbuf = qcow2_alloc_aligned(s->cs);
    if (!q->cbuf || !q->dbuf) {
        q_done(q, -ENOMEM);
        return -1;
    }
    q->cskip = coff - astart;
    q->clen = csize;
    q->biov = (struct iovec){q->cbuf, aend - astart};
    *inl = child_io(q, s->file, VBLK_BDEV_READ, 0, &q->biov, 1, astart, aend - astart, true,
                    rd_comp_done);
    return 0;
}

static void rd_loop(struct q2_req *q)
{
    struct qcow2 *s = q->s;

    while (q->pos < q->end) {
        uint64_t host = 0, run = 0;
        int type, r = lookup(q, &type, &host, &run, rd_loop);
        bool inl;

        if (r > 0)
            return;
        if (r < 0) {
            q_done(q, r);
            return;
        }
        q->run = run;
        switch (type) {
        case T_ZERO:
            zero_slice(q, q->pos, run);
            q->pos += run;
            break;
        case T_UNALLOC:
            if (!s->backing || q->pos >= s->backing_size) {
                zero_slice(q, q->pos, run);
                q->pos += run;
                break;
            }
            q->clen = s->backing_size - q->pos < run ? s->backing_size - q->pos : run;
            if (!child_io(q, s->backing, VBLK_BDEV_READ, 0, q->siov, slice(q, 0, q->pos, q->clen),
                          q->pos, q->clen, false, rd_unalloc_done))
                return;
            if (rd_unalloc_finish(q))
                return;
            break;
        case T_DATA:
            if (!child_io(q, s->data, VBLK_BDEV_READ, 0, q->siov, slice(q, 0, q->pos, run), host,
                          run, true, rd_next))
                return;
            if (q->sub_ret) {
                q_done(q, q->sub_ret);
                return;
            }
            q->pos += run;
            break;
        case T_COMPRESSED:
            if (rd_comp_start(q, host, &inl) < 0 || !inl)
                return;
            if (rd_comp_finish(q))
                return;
            break;
        default:
            log_err(s->b->name, "'%s': L2 entry for guest offset 0x%" PRIx64 " is invalid", s->path,
                    q->pos);
            q_done(q, -EIO);
            return;
        }
    }
    q_done(q, 0);
}

/* --- writes --- */

/* Can [pos, min(end, cluster end)) be written in place?  *host: where pos lives. */
static bool inplace(const struct qcow2 *s, const uint8_t *tab, uint64_t pos, uint64_t end,
                    uint64_t *host)
{
    uint64_t e = l2e(s, tab, pos), cend = (pos | (s->cs - 1)) + 1;

    if (!(e & QCOW2_OFLAG_COPIED) || classify(s, tab, pos, host) != T_DATA)
        return false;
    if (s->ext_l2) {
        uint64_t bm = l2bm(s, tab, pos), last = (end < cend ? end : cend) - 1;
        unsigned a = (unsigned)((pos >> s->sc_bits) & 31),
                 b = (unsigned)((last >> s->sc_bits) & 31);

        for (unsigned i = a; i <= b; i++)
            if (!((bm >> i) & 1))
                return false;
    }
    return true;
}

static bool l1_owned(const struct qcow2 *s, uint64_t pos)
{
    uint64_t l1i = pos >> (s->cluster_bits + s->l2_bits);

    return l1i < s->in.l1_size && (q2_be64(s->l1 + l1i * 8) & QCOW2_OFLAG_COPIED);
}

static struct q2_alloc *alloc_find(struct qcow2 *s, uint64_t c, uint64_t n)
{
    for (struct q2_alloc *a = s->allocs; a; a = a->next)
        if (c < a->first + a->n && a->first < c + n)
            return a;
    return NULL;
}

static void wr_fua_done(struct q2_req *q)
{
    token_put(q);
    q_done(q, q->serr);
}

static void wr_fua_sync(struct q2_req *q)
{
    sync_run(q, false, wr_fua_done);
}

static void wr_finish(struct q2_req *q)
{
    if ((q->flags & VBLK_BDEV_F_FUA) && q->meta_touched) {
        token_get(q, wr_fua_sync);
        return;
    }
    q_done(q, 0);
}

static void wr_alloc_a(struct q2_req *q);

static void wr_inplace_done(struct q2_req *q)
{
    if (q->sub_ret) {
        q_done(q, q->sub_ret);
        return;
    }
    q->pos += q->run;
    wr_loop(q);
}

static void wr_loop(struct q2_req *q)
{
    struct qcow2 *s = q->s;

    while (q->pos < q->end) {
        const uint8_t *tab;
        uint64_t lim, host, h, u;
        int r = l2_for(q, q->pos, &tab, &lim, wr_loop);

        if (r > 0)
            return;
        if (r < 0) {
            q_done(q, r);
            return;
        }
        if (!tab || !l1_owned(s, q->pos) || !inplace(s, tab, q->pos, q->end, &host)) {
            token_get(q, wr_alloc_a);
            return;
        }
        for (u = (q->pos | (s->cs - 1)) + 1; u < lim; u += s->cs)
            if (!inplace(s, tab, u, q->end, &h) || h != host + (u - q->pos))
                break;
        q->run = (u < lim ? u : lim) - q->pos;
        if (!child_io(q, s->data, VBLK_BDEV_WRITE, q->flags & VBLK_BDEV_F_FUA, q->siov,
                      slice(q, 0, q->pos, q->run), host, q->run, true, wr_inplace_done))
            return;
        /* inline: fall through with the result */
        if (q->sub_ret) {
            q_done(q, q->sub_ret);
            return;
        }
        q->pos += q->run;
    }
    wr_finish(q);
}

/* Make the L2 table of l1i writable (token held): allocate it, or copy it if shared. */
static int l2_writable(struct q2_req *q, uint64_t l1i, struct q2_centry **out,
                       void (*then)(struct q2_req *))
{
    struct qcow2 *s = q->s;
    uint64_t l1e = q2_be64(s->l1 + l1i * 8), off = l1e & QCOW2_OFFSET_MASK, host, got;
    struct q2_centry *old = NULL, *e;
    int r;

    if (off && ((l1e & QCOW2_L1_RESERVED) || !l2off_ok(s, off)))
        return -EIO;
    if (off && (r = l2_get(q, off, &old, then)))
        return r;
    if (off && (l1e & QCOW2_OFLAG_COPIED)) {
        *out = old;
        return 0;
    }
    r = cache_victim(q, &s->l2c, old, &e, then);
    if (r == CG_SYNC) {
        pressure_sync(q, then);
        return 1;
    }
    if (r)
        return r;
    r = alloc_clusters(q, 1, &host, &got, then);
    if (r)
        return r;
    if (qcow2_meta_add(s, host >> s->cluster_bits, 1) < 0)
        return -ENOMEM;
    if (old)
        memcpy(e->buf, old->buf, s->cs);
    else
        memset(e->buf, 0, s->cs);
    e->off = host;
    e->valid = true;
    e->dirty = true;
    e->lru = ++s->l2c.tick;
    hash_add(&s->l2c, e);
    q2_put_be64(s->l1 + l1i * 8, host | QCOW2_OFLAG_COPIED);
    s->l1_dirty[l1i * 8 / s->chunk] = 1;
    if (off)
        queue_free(s, off >> s->cluster_bits); /* the shared table: one reference less */
    q->meta_touched = true;
    *out = e;
    return 0;
}

static void wr_data(struct q2_req *q);
static void wr_alloc_c(struct q2_req *q);

static void wr_data_done(struct q2_req *q)
{
    if (q->sub_ret) {
        q_done(q, q->sub_ret);
        return;
    }
    token_get(q, wr_alloc_c);
}

static void wr_data(struct q2_req *q)
{
    struct qcow2 *s = q->s;
    unsigned n = 0;

    if (q->head)
        q->siov[n++] = (struct iovec){q->head_buf, q->head};
    n += slice(q, n, q->pos, q->run);
    if (q->tail)
        q->siov[n++] = (struct iovec){q->tail_buf, q->tail};
    if (child_io(q, s->data, VBLK_BDEV_WRITE, q->flags & VBLK_BDEV_F_FUA, q->siov, n, q->ahost,
                 q->head + q->run + q->tail, true, wr_data_done))
        wr_data_done(q);
}

static void wr_cow_tail_done(struct q2_req *q)
{
    if (q->sub_ret) {
        q_done(q, q->sub_ret);
        return;
    }
    wr_data(q);
}

static void wr_cow_tail(struct q2_req *q)
{
    if (q->tail) {
        q->tail_buf = qcow2_alloc_aligned(q->tail);
        if (!q->tail_buf) {
            q_done(q, -ENOMEM);
            return;
        }
        if (!internal_rw(q, VBLK_BDEV_READ, q->tail_buf, q->pos + q->run, q->tail,
                         wr_cow_tail_done))
            return;
        wr_cow_tail_done(q);
        return;
    }
    wr_data(q);
}

static void wr_cow_head_done(struct q2_req *q)
{
    if (q->sub_ret) {
        q_done(q, q->sub_ret);
        return;
    }
    wr_cow_tail(q);
}

/* Phase A (token): allocate clusters for the run at q->pos. */
static void wr_alloc_a(struct q2_req *q)
{
    struct qcow2 *s = q->s;
    unsigned shift = s->cluster_bits + s->l2_bits;
    uint64_t c0 = q->pos >> s->cluster_bits, l1i = q->pos >> shift, host, got, n, last, h;
    uint64_t tab_end = (l1i + 1) << (s->l2_bits);
    struct q2_alloc *a = alloc_find(s, c0, 1);
    struct q2_centry *e;
    int r;

    if (a) { /* someone is allocating this cluster: wait for it, then look again */
        token_put(q);
        wait_on(q, &a->waiters, wr_loop);
        return;
    }
    r = l2_writable(q, l1i, &e, wr_alloc_a);
    if (r > 0)
        return;
    if (r < 0) {
        q_done(q, r);
        return;
    }
    if (inplace(s, e->buf, q->pos, q->end, &host)) { /* allocated while we waited */
        token_put(q);
        wr_loop(q);
        return;
    }
    if (classify(s, e->buf, q->pos, &h) == T_INVALID) {
        log_err(s->b->name, "'%s': L2 entry for guest offset 0x%" PRIx64 " is invalid", s->path,
                q->pos);
        q_done(q, -EIO);
        return;
    }
    last = (q->end - 1) >> s->cluster_bits;
    for (n = 1; n < MAX_ALLOC_RUN && c0 + n <= last && c0 + n < tab_end; n++) {
        uint64_t p = (c0 + n) << s->cluster_bits;

        if (inplace(s, e->buf, p, q->end, &h) || classify(s, e->buf, p, &h) == T_INVALID ||
            alloc_find(s, c0 + n, 1))
            break;
    }
    if (s->data_owned) {
        host = c0 << s->cluster_bits;
        got = n;
    } else {
        r = alloc_clusters(q, n, &host, &got, wr_alloc_a);
        if (r > 0)
            return;
        if (r < 0) {
            q_done(q, r);
            return;
        }
    }
    q->alloc = (struct q2_alloc){.first = c0, .n = got, .next = s->allocs};
    s->allocs = &q->alloc;
    q->alloc_on = true;
    q->meta_touched = true;
    q->ahost = host;
    q->an = got;
    q->run = ((c0 + got) << s->cluster_bits) < q->end ? ((c0 + got) << s->cluster_bits) - q->pos
                                                      : q->end - q->pos;
    q->head = q->pos - (c0 << s->cluster_bits);
    q->tail = ((c0 + got) << s->cluster_bits) - (q->pos + q->run);
    token_put(q);
    if (q->head) {
        q->head_buf = qcow2_alloc_aligned(q->head);
        if (!q->head_buf) {
            q_done(q, -ENOMEM);
            return;
        }
        if (!internal_rw(q, VBLK_BDEV_READ, q->head_buf, c0 << s->cluster_bits, q->head,
                         wr_cow_head_done))
            return;
        wr_cow_head_done(q);
        return;
    }
    wr_cow_tail(q);
}

static void wr_after_frees_sync(struct q2_req *q)
{
    if (q->serr) {
        q_done(q, q->serr);
        return;
    }
    token_put(q);
    wr_loop(q);
}

/* Phase C (token): the L2 entries point to the written clusters. */
static void wr_alloc_c(struct q2_req *q)
{
    struct qcow2 *s = q->s;
    uint64_t l1i = q->pos >> (s->cluster_bits + s->l2_bits);
    struct q2_centry *e;
    int r = l2_writable(q, l1i, &e, wr_alloc_c);

    if (r > 0)
        return;
    if (r < 0) {
        q_done(q, r);
        return;
    }
    for (uint64_t j = 0; j < q->an; j++) {
        uint64_t g = (q->alloc.first + j) << s->cluster_bits;
        size_t at = ((q->alloc.first + j) & ((1ull << s->l2_bits) - 1)) * s->l2_esz;
        uint64_t old = q2_be64(e->buf + at);

        q2_put_be64(e->buf + at, (q->ahost + j * s->cs) | QCOW2_OFLAG_COPIED);
        if (s->ext_l2)
            q2_put_be64(e->buf + at + 8, EXT_ALL_ALLOC);
        (void)g;
        free_old(s, old);
    }
    e->dirty = true;
    alloc_end(q);
    q_free_bufs(q);
    q->pos += q->run;
    if (s->nfrees >= FREES_SYNC) {
        sync_run(q, true, wr_after_frees_sync);
        return;
    }
    token_put(q);
    wr_loop(q);
}

/* --- discard and write-zeroes --- */

enum { ZD_SKIP, ZD_SET, ZD_DATA };

static int zd_action(struct q2_req *q, uint64_t old, uint64_t *ne, uint64_t *nbm, bool *keep)
{
    struct qcow2 *s = q->s;
    bool unmap =
        q->op == VBLK_BDEV_DISCARD || ((q->flags & VBLK_BDEV_F_UNMAP) && s->b->zeroes_unmap);
    bool backing = s->backing != NULL;

    *keep = false;
    *nbm = 0;
    if (s->data_raw)
        return q->op == VBLK_BDEV_DISCARD ? ZD_SKIP : ZD_DATA;
    if (s->in.version < 3) {
        if (backing)
            return q->op == VBLK_BDEV_DISCARD ? ZD_SKIP : ZD_DATA;
        if (!unmap)
            return old == 0 ? ZD_SKIP : ZD_DATA;
        *ne = 0;
        return ZD_SET;
    }
    *keep = !unmap && (old & QCOW2_OFLAG_COPIED) && !(old & QCOW2_OFLAG_COMPRESSED) &&
            ((old & QCOW2_OFFSET_MASK) || s->data_owned);
    if (!s->ext_l2) {
        *ne = (q->op == VBLK_BDEV_DISCARD && !backing) ? 0 : QCOW2_OFLAG_ZERO;
        if (*keep)
            *ne = (old & (QCOW2_OFFSET_MASK | QCOW2_OFLAG_COPIED)) | QCOW2_OFLAG_ZERO;
    } else {
        *ne = *keep ? old & (QCOW2_OFFSET_MASK | QCOW2_OFLAG_COPIED) : 0;
        *nbm = (q->op == VBLK_BDEV_DISCARD && !backing) ? 0 : EXT_ALL_ZERO;
    }
    return ZD_SET;
}

static void zd_nested_done(struct q2_req *q)
{
    if (q->sub_ret) {
        q_done(q, q->sub_ret);
        return;
    }
    q->pos += q->run;
    zd_loop(q);
}

static void zd_after_sync(struct q2_req *q)
{
    if (q->serr) {
        q_done(q, q->serr);
        return;
    }
    zd_loop(q);
}

static void zd_loop(struct q2_req *q)
{
    struct qcow2 *s = q->s;
    unsigned shift = s->cluster_bits + s->l2_bits;

    while (q->pos < q->end) {
        uint64_t c0 = q->pos >> s->cluster_bits, cstart = c0 << s->cluster_bits;
        uint64_t cend = cstart + s->cs, seg_end = q->end < cend ? q->end : cend;
        uint64_t vend = cend < s->in.size ? cend : s->in.size, ne, nbm, old, oldbm = 0;
        uint64_t l1i = q->pos >> shift, l1e, lim;
        bool full = q->pos == cstart && seg_end >= vend, keep;
        const uint8_t *tab;
        struct q2_centry *e;
        struct q2_alloc *a;
        size_t at;
        int r, act;

        if (!q->has_token) {
            token_get(q, zd_loop);
            return;
        }
        if (s->nfrees >= FREES_SYNC) { /* bound the queue of deferred frees */
            sync_run(q, true, zd_after_sync);
            return;
        }
        if ((a = alloc_find(s, c0, 1))) {
            token_put(q);
            wait_on(q, &a->waiters, zd_loop);
            return;
        }
        l1e = l1i < s->in.l1_size ? q2_be64(s->l1 + l1i * 8) : 0;
        if (!(l1e & QCOW2_OFFSET_MASK) && (q->op == VBLK_BDEV_DISCARD || !s->backing)) {
            q->pos = ((l1i + 1) << shift) < q->end ? (l1i + 1) << shift : q->end;
            continue; /* reads as zeroes already (or a hint we may skip) */
        }
        r = l2_for(q, q->pos, &tab, &lim, zd_loop);
        if (r > 0)
            return;
        if (r < 0) {
            q_done(q, r);
            return;
        }
        old = tab ? l2e(s, tab, q->pos) : 0;
        if (tab && s->ext_l2)
            oldbm = l2bm(s, tab, q->pos);
        act = full ? zd_action(q, old, &ne, &nbm, &keep)
                   : (q->op == VBLK_BDEV_DISCARD ? ZD_SKIP : ZD_DATA);
        if (act == ZD_SKIP) {
            q->pos = seg_end;
            continue;
        }
        if (act == ZD_DATA) { /* zeroes written through the write path */
            token_put(q);
            q->run = seg_end - q->pos;
            if (!internal_rw(q, VBLK_BDEV_WRITE, s->zero_buf, q->pos, q->run, zd_nested_done))
                return;
            if (q->sub_ret) {
                q_done(q, q->sub_ret);
                return;
            }
            q->pos += q->run;
            continue;
        }
        if (tab && ne == old && (!s->ext_l2 || nbm == oldbm)) {
            q->pos = seg_end;
            continue;
        }
        r = l2_writable(q, l1i, &e, zd_loop);
        if (r > 0)
            return;
        if (r < 0) {
            q_done(q, r);
            return;
        }
        at = (c0 & ((1ull << s->l2_bits) - 1)) * s->l2_esz;
        old = q2_be64(e->buf + at);
        q2_put_be64(e->buf + at, ne);
        if (s->ext_l2)
            q2_put_be64(e->buf + at + 8, nbm);
        if (!keep)
            free_old(s, old);
        e->dirty = true;
        q->meta_touched = true;
        q->pos = seg_end;
    }
    if (q->has_token)
        token_put(q);
    q_done(q, 0);
}

/* --- sync: write back metadata in dependency order --- */

static void sync_wb_cb(struct q2_centry *e, int err)
{
    struct q2_req *q = e->wb_arg;

    if (err && !q->serr)
        q->serr = err;
    if (--q->spending == 0)
        sync_step(q);
}

/* Write every dirty entry of c; true if none is left in flight. */
static bool sync_wb_all(struct q2_req *q, struct q2_cache *c)
{
    q->spending = 1;
    for (unsigned i = 0; i < c->n; i++) {
        struct q2_centry *e = &c->e[i];

        if (e->valid && e->dirty && !e->busy) {
            q->spending++;
            cache_wb(e, sync_wb_cb, q);
        }
    }
    return --q->spending == 0;
}

static void sync_io_done(struct q2_req *q)
{
    if (q->sub_ret && !q->serr)
        q->serr = q->sub_ret;
    sync_step(q);
}

static void sync_grace(struct q2_wait *w, int err)
{
    struct q2_req *q = container_of(w, struct q2_req, w);

    sync_step(q);
}

static void sync_step(struct q2_req *q)
{
    struct qcow2 *s = q->s;

    for (;;) {
        switch (q->sstate) {
        case 0: /* refcount blocks (increments: always safe to write) */
            q->sstate = 1;
            if (!sync_wb_all(q, &s->rbc))
                return;
            break;
        case 1: /* refcounts and data durable before anything references them */
            q->sstate = 2;
            if (q->serr)
                break;
            if (!child_io(q, s->file, VBLK_BDEV_FLUSH, 0, NULL, 0, 0, 0, false, sync_io_done))
                return;
            if (q->sub_ret && !q->serr)
                q->serr = q->sub_ret;
            break;
        case 2:
            q->sstate = 3;
            if (q->serr || !s->data_owned)
                break;
            if (!child_io(q, s->data, VBLK_BDEV_FLUSH, 0, NULL, 0, 0, 0, false, sync_io_done))
                return;
            if (q->sub_ret && !q->serr)
                q->serr = q->sub_ret;
            break;
        case 3: /* L2 tables */
            q->sstate = 4;
            if (q->serr)
                break;
            if (!sync_wb_all(q, &s->l2c))
                return;
            break;
        case 4: { /* L1 chunks, after the tables they point to */
            size_t nch = s->l1_bytes / s->chunk + 1, first = nch, last = 0;

            q->sstate = 5;
            if (q->serr)
                break;
            for (size_t i = 0; i < nch; i++) {
                if (s->l1_dirty[i]) {
                    if (first == nch)
                        first = i;
                    last = i;
                    s->l1_dirty[i] = 0;
                }
            }
            if (first == nch) {
                q->sstate = 6; /* nothing written since the flush above */
                break;
            }
            q->biov = (struct iovec){s->l1 + first * s->chunk, (last - first + 1) * s->chunk};
            if (!child_io(q, s->file, VBLK_BDEV_WRITE, 0, &q->biov, 1,
                          s->in.l1_offset + first * s->chunk, q->biov.iov_len, false, sync_io_done))
                return;
            if (q->sub_ret && !q->serr)
                q->serr = q->sub_ret;
            break;
        }
        case 5:
            q->sstate = 6;
            if (q->serr)
                break;
            if (!child_io(q, s->file, VBLK_BDEV_FLUSH, 0, NULL, 0, 0, 0, false, sync_io_done))
                return;
            if (q->sub_ret && !q->serr)
                q->serr = q->sub_ret;
            break;
        case 6: /* grace period: data I/O begun before the frees were queued must end */
            q->sstate = 8;
            if (q->serr || !q->sfrees || !s->nfrees)
                break;
            q->sstate = 7;
            q->fi = 0;
            s->gen++;
            s->grace_bucket = (s->gen - 1) & 1;
            if (s->inflight[s->grace_bucket]) {
                q->w.fn = sync_grace;
                s->grace_waiter = &q->w;
                return;
            }
            break;
        case 7: /* apply the queued decrements */
            while (q->fi < s->nfrees) {
                uint64_t idx = s->frees[q->fi], ri = idx >> s->rb_bits, off;
                struct q2_centry *e;
                int r;

                off = ri < s->reft_entries ? q2_be64(s->reft + ri * 8) & QCOW2_REFT_OFFSET_MASK : 0;
                if (!table_ok(s, off)) {
                    q->fi++;
                    continue;
                }
                r = cache_get(q, &s->rbc, off, &e, sync_step);
                if (r > 0)
                    return;
                if (r < 0) {
                    q->serr = r;
                    break;
                }
                apply_free(s, e->buf, idx);
                e->dirty = true;
                q->fi++;
            }
            memmove(s->frees, s->frees + q->fi, (s->nfrees - q->fi) * sizeof(*s->frees));
            s->nfrees -= q->fi;
            q->fi = 0;
            q->sstate = 8;
            break;
        default:
            q->safter(q);
            return;
        }
    }
}

static void sync_run(struct q2_req *q, bool frees, void (*after)(struct q2_req *))
{
    q->sstate = 0;
    q->serr = 0;
    q->sfrees = frees;
    q->safter = after;
    q->step = sync_step;
    sync_step(q);
}

static void fl_done(struct q2_req *q)
{
    token_put(q);
    q_done(q, q->serr);
}

static void fl_go(struct q2_req *q)
{
    sync_run(q, true, fl_done);
}

/* --- entry --- */

void qcow2_io_submit(struct vblk_bdev *b, struct vblk_engine *eng, struct vblk_bdev_req *r)
{
    struct qcow2 *s = b->priv;
    struct q2_req *q;

    s->eng = eng;
    if (r->op != VBLK_BDEV_FLUSH && (r->offset > b->size || r->len > b->size - r->offset)) {
        r->done(r, -EIO);
        return;
    }
    if (!s->writable && r->op != VBLK_BDEV_READ) {
        r->done(r, r->op == VBLK_BDEV_FLUSH ? 0 : -EROFS);
        return;
    }
    if (r->op > VBLK_BDEV_WRITE_ZEROES) {
        r->done(r, -EOPNOTSUPP);
        return;
    }
    q = q_get(s, r);
    if (!q) {
        r->done(r, -ENOMEM);
        return;
    }
    switch (r->op) {
    case VBLK_BDEV_READ:
        rd_loop(q);
        break;
    case VBLK_BDEV_WRITE:
        wr_loop(q);
        break;
    case VBLK_BDEV_FLUSH:
        token_get(q, fl_go);
        break;
    default:
        zd_loop(q);
        break;
    }
}

/* --- blocking write-back (control thread, nothing in flight) --- */

static int wb_cache_blocking(struct qcow2 *s, struct q2_cache *c)
{
    for (unsigned i = 0; i < c->n; i++) {
        struct q2_centry *e = &c->e[i];
        int r;

        if (!e->valid || !e->dirty)
            continue;
        r = vblk_bdev_pwrite_sync(s->file, e->buf, s->cs, e->off);
        if (r < 0)
            return r;
        e->dirty = false;
    }
    return 0;
}

static int fsync_file(const struct vblk_bdev *f)
{
    if (f->cache == VBLK_CACHE_UNSAFE)
        return 0;
    return f->ops->flush_sync ? f->ops->flush_sync((struct vblk_bdev *)f) : 0;
}

int qcow2_sync_blocking(struct qcow2 *s)
{
    size_t nch = s->l1_bytes / s->chunk + 1;
    uint8_t *tmp = NULL;
    int r;

    if (!s->writable)
        return 0;
    if ((r = wb_cache_blocking(s, &s->rbc)) < 0 || (r = fsync_file(s->file)) < 0)
        return r;
    if (s->data_owned && (r = fsync_file(s->data)) < 0)
        return r;
    if ((r = wb_cache_blocking(s, &s->l2c)) < 0)
        return r;
    for (size_t i = 0; i < nch; i++) {
        if (!s->l1_dirty[i])
            continue;
        r = vblk_bdev_pwrite_sync(s->file, s->l1 + i * s->chunk, s->chunk,
                                  s->in.l1_offset + i * s->chunk);
        if (r < 0)
            return r;
        s->l1_dirty[i] = 0;
    }
    if ((r = fsync_file(s->file)) < 0)
        return r;
    /* queued frees, now that nothing references the clusters */
    for (size_t i = 0; i < s->nfrees; i++) {
        uint64_t idx = s->frees[i], ri = idx >> s->rb_bits, off;
        struct q2_centry *e;

        off = ri < s->reft_entries ? q2_be64(s->reft + ri * 8) & QCOW2_REFT_OFFSET_MASK : 0;
        if (!table_ok(s, off))
            continue;
        e = cache_find(&s->rbc, off);
        if (e && e->valid) {
            apply_free(s, e->buf, idx);
            e->dirty = true;
            continue;
        }
        if (!tmp && !(tmp = qcow2_alloc_aligned(s->cs)))
            return -ENOMEM;
        if (vblk_bdev_pread_sync(s->file, tmp, s->cs, off) != (ssize_t)s->cs) {
            free(tmp);
            return -EIO;
        }
        apply_free(s, tmp, idx);
        for (size_t j = i + 1; j < s->nfrees; j++) { /* the others in this block */
            if (s->frees[j] >> s->rb_bits == ri) {
                apply_free(s, tmp, s->frees[j]);
                s->frees[j] = s->frees[--s->nfrees];
                j--;
            }
        }
        r = vblk_bdev_pwrite_sync(s->file, tmp, s->cs, off);
        if (r < 0) {
            free(tmp);
            return r;
        }
    }
    free(tmp);
    s->nfrees = 0;
    if ((r = wb_cache_blocking(s, &s->rbc)) < 0)
        return r;
    return fsync_file(s->file);
}
