/* uring.c - io_uring engine (liburing).
 *
 * One ring per I/O thread, sized for every request the thread's queues can have in flight (the
 * completion queue holds twice that).  queue() only fills SQEs; submit() makes one
 * io_uring_submit() per batch; completions wake the thread through a registered eventfd.
 *
 * More I/O can be in flight than the depth: queue() answers -EAGAIN only for a full SQ, which
 * submit() empties, and the qcow2 driver's metadata I/O is not counted in the depth (a flush
 * writes back every dirty table at once).  Completions that find the CQ full wait on the
 * kernel's overflow list (IORING_SQ_CQ_OVERFLOW); reap() fetches them as it makes room.
 *
 * Fixed buffers (register_bufs; guest memory with fixed-buffers=on): the engine keeps the
 * registered ranges, sorted by address, each cut in pieces of at most 1 GiB (the most the
 * kernel takes in one buffer) numbered in order.  queue() looks a read's or write's segments up
 * there, by address, only while a set is registered (one predictable branch otherwise): one
 * segment inside one piece goes as READ_FIXED/WRITE_FIXED, several inside one piece as
 * READV_FIXED/WRITEV_FIXED where the kernel has them (Linux 6.15+, probed at create; liburing
 * 2.3 does not know the opcodes: defined here), anything else as the plain op.  Nothing
 * travels with the I/O: any memory outside the set simply goes the plain way.
 */
#include <errno.h>
#include <stdbool.h>
#include <liburing.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "engine/engine.h"

/* include/uapi/linux/io_uring.h of Linux 6.15 (enum io_uring_op) */
#define VBLK_IORING_OP_READV_FIXED  60
#define VBLK_IORING_OP_WRITEV_FIXED 61

#define BUF_SHIFT      30 /* a registered buffer is at most 1 GiB */
#define BUF_PIECE      ((uintptr_t)1 << BUF_SHIFT)
#define BUF_RANGES_MAX 32 /* guest memory regions (VBLK_MEM_SLOTS_MAX) */

/* A registered range: pieces idx0, idx0 + 1, ... of BUF_PIECE bytes from base (the last one
 * shorter) */
struct buf_range {
    uintptr_t base, size;
    unsigned idx0;
};

struct uring_engine {
    struct vblk_engine e;
    struct io_uring ring;
    bool defer;       /* DEFER_TASKRUN: completions are run only when we ask */
    bool vec_fixed;   /* the kernel has READV_FIXED/WRITEV_FIXED */
    unsigned nranges; /* registered ranges; 0: no fixed buffers */
    struct buf_range ranges[BUF_RANGES_MAX]; /* sorted by base, disjoint */
};

static bool probe_vec_fixed(struct io_uring *ring)
{
    struct io_uring_probe *p = io_uring_get_probe_ring(ring);
    bool ok;

    if (!p)
        return false;
    ok = io_uring_opcode_supported(p, VBLK_IORING_OP_READV_FIXED) &&
         io_uring_opcode_supported(p, VBLK_IORING_OP_WRITEV_FIXED);
    io_uring_free_probe(p);
    return ok;
}

static int uring_create(struct vblk_engine **out, unsigned depth)
{
    struct uring_engine *u = calloc(1, sizeof(*u));
    unsigned entries = 8;
    int r;

    if (!u)
        return -ENOMEM;
    while (entries < depth && entries < 32768)
        entries <<= 1;
    /* On 6.1+ kernels completions are deferred to this thread and run when it asks (no IPIs
     * or task-work interruptions); the ring is then tied to the creating thread, which is why
     * engines are created on their I/O thread.  Older kernels refuse the flags: plain setup. */
    r = io_uring_queue_init(entries, &u->ring,
                            IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN |
                                IORING_SETUP_TASKRUN_FLAG);
    u->defer = r == 0;
    if (r == -EINVAL)
        r = io_uring_queue_init(entries, &u->ring, 0);
    if (r < 0)
        goto err_free;
    u->e.efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (u->e.efd < 0) {
        r = -errno;
        goto err_exit_ring;
    }
    r = io_uring_register_eventfd(&u->ring, u->e.efd);
    if (r < 0)
        goto err_close_efd;
    u->vec_fixed = probe_vec_fixed(&u->ring);
    u->e.ops = &vblk_engine_uring;
    *out = &u->e;
    return 0;

err_close_efd:
    close(u->e.efd);
err_exit_ring:
    io_uring_queue_exit(&u->ring);
err_free:
    free(u);
    return r;
}

static void uring_destroy(struct vblk_engine *e)
{
    struct uring_engine *u = (struct uring_engine *)e;

    io_uring_queue_exit(&u->ring);
    close(e->efd);
    free(u);
}

/* The registered piece holding [p, p + len): its index, its start in *lo and its size in *size;
 * -1 if none (outside the set, across a piece's end, or empty). */
static inline int piece_of(const struct uring_engine *u, uintptr_t p, size_t len, uintptr_t *lo,
                           uintptr_t *size)
{
    for (unsigned i = 0; i < u->nranges; i++) {
        const struct buf_range *r = &u->ranges[i];
        uintptr_t off = p - r->base, last = off + len - 1, start;

        if (off >= r->size)
            continue;
        if ((off ^ last) >> BUF_SHIFT || last >= r->size)
            return -1;
        start = off & ~(BUF_PIECE - 1);
        *lo = r->base + start;
        *size = r->size - start < BUF_PIECE ? r->size - start : BUF_PIECE;
        return (int)(r->idx0 + (off >> BUF_SHIFT));
    }
    return -1;
}

static inline int queue_done(struct uring_engine *u, struct io_uring_sqe *sqe, struct vblk_io *io,
                             int idx)
{
    sqe->buf_index = idx < 0 ? 0 : (uint16_t)idx;
    sqe->rw_flags = io->rw_flags;
    io_uring_sqe_set_data(sqe, io);
    u->e.pending++;
    return 0;
}

/* queue_rw_registered() of several segments: READV_FIXED/WRITEV_FIXED if the kernel has them
 * and every segment lies in the piece of the first (the kernel checks each against the buffer
 * named), else readv/writev. */
static __attribute__((noinline)) int
queue_rwv_registered(struct uring_engine *u, struct io_uring_sqe *sqe, struct vblk_io *io)
{
    const struct iovec *iov = io->iov;
    bool write = io->op == VBLK_IO_WRITE;
    uintptr_t lo, size;
    int idx = -1;

    if (u->vec_fixed && io->iovcnt)
        idx = piece_of(u, (uintptr_t)iov[0].iov_base, iov[0].iov_len, &lo, &size);
    for (unsigned i = 1; idx >= 0 && i < io->iovcnt; i++) {
        uintptr_t off = (uintptr_t)iov[i].iov_base - lo;

        if (off >= size || iov[i].iov_len > size - off)
            idx = -1;
    }
    io_uring_prep_rw(idx < 0 ? (write ? IORING_OP_WRITEV : IORING_OP_READV)
                             : (write ? VBLK_IORING_OP_WRITEV_FIXED : VBLK_IORING_OP_READV_FIXED),
                     sqe, io->fd, iov, io->iovcnt, io->offset);
    return queue_done(u, sqe, io, idx);
}

/* queue() of a read or write while a buffer set is registered: the fixed form if its data lies
 * in one registered piece, the plain one otherwise.  Out of line, so that queue() without a set
 * calls nothing; one segment (the common case) calls nothing either. */
static __attribute__((noinline)) int
queue_rw_registered(struct uring_engine *u, struct io_uring_sqe *sqe, struct vblk_io *io)
{
    const struct iovec *iov = io->iov;
    bool write = io->op == VBLK_IO_WRITE;
    uintptr_t lo, size;
    int idx;

    if (io->iovcnt != 1)
        return queue_rwv_registered(u, sqe, io);
    idx = piece_of(u, (uintptr_t)iov[0].iov_base, iov[0].iov_len, &lo, &size);
    io_uring_prep_rw(idx < 0 ? (write ? IORING_OP_WRITE : IORING_OP_READ)
                             : (write ? IORING_OP_WRITE_FIXED : IORING_OP_READ_FIXED),
                     sqe, io->fd, iov[0].iov_base, (unsigned)iov[0].iov_len, io->offset);
    return queue_done(u, sqe, io, idx);
}

static int uring_queue(struct vblk_engine *e, struct vblk_io *io)
{
    struct uring_engine *u = (struct uring_engine *)e;
    struct io_uring_sqe *sqe;

    if ((unsigned)io->op > VBLK_IO_DELAY)
        return -EINVAL; /* before taking a ring slot: a taken one is submitted, prepared or not */
    sqe = io_uring_get_sqe(&u->ring);
    if (!sqe)
        return -EAGAIN;
    switch (io->op) {
    case VBLK_IO_READ:
        if (__builtin_expect(u->nranges != 0, 0))
            return queue_rw_registered(u, sqe, io); /* a tail call: this stays a leaf */
        /* one segment (the common case): the plain op skips importing an iovec */
        if (io->iovcnt == 1)
            io_uring_prep_read(sqe, io->fd, io->iov[0].iov_base, (unsigned)io->iov[0].iov_len,
                               io->offset);
        else
            io_uring_prep_readv(sqe, io->fd, io->iov, io->iovcnt, io->offset);
        sqe->rw_flags = io->rw_flags;
        break;
    case VBLK_IO_WRITE:
        if (__builtin_expect(u->nranges != 0, 0))
            return queue_rw_registered(u, sqe, io);
        if (io->iovcnt == 1)
            io_uring_prep_write(sqe, io->fd, io->iov[0].iov_base, (unsigned)io->iov[0].iov_len,
                                io->offset);
        else
            io_uring_prep_writev(sqe, io->fd, io->iov, io->iovcnt, io->offset);
        sqe->rw_flags = io->rw_flags;
        break;
    case VBLK_IO_FLUSH:
        io_uring_prep_fsync(sqe, io->fd, IORING_FSYNC_DATASYNC);
        break;
    case VBLK_IO_FALLOCATE:
        io_uring_prep_fallocate(sqe, io->fd, io->mode, io->offset, io->len);
        break;
    case VBLK_IO_DELAY:
        io->ts.tv_sec = (int64_t)(io->len / 1000000000);
        io->ts.tv_nsec = (long long)(io->len % 1000000000);
        io_uring_prep_timeout(sqe, (struct __kernel_timespec *)&io->ts, 0, 0);
        break;
    default:
        return -EINVAL;
    }
    io_uring_sqe_set_data(sqe, io);
    e->pending++;
    return 0;
}

static int uring_submit(struct vblk_engine *e)
{
    struct uring_engine *u = (struct uring_engine *)e;
    int r;

    if (!e->pending)
        return 0;
    r = io_uring_submit(&u->ring);
    if (r < 0)
        return r; /* -EAGAIN/-EBUSY: SQEs stay queued, retried after the next reap */
    e->pending -= (unsigned)r < e->pending ? (unsigned)r : e->pending;
    return 0;
}

/* Completions wait in the kernel, not yet in the CQ ring; a syscall (GETEVENTS) gets them:
 * DEFER_TASKRUN work this thread has to run, or CQEs that found the ring full and went to the
 * overflow list (with or without DEFER_TASKRUN). */
static bool uring_needs_enter(struct uring_engine *u)
{
    unsigned flags = IO_URING_READ_ONCE(*u->ring.sq.kflags);

    return (flags & IORING_SQ_CQ_OVERFLOW) || (u->defer && (flags & IORING_SQ_TASKRUN));
}

static unsigned uring_reap(struct vblk_engine *e, vblk_io_done_fn done, void *arg)
{
    struct uring_engine *u = (struct uring_engine *)e;
    unsigned n = 0;

    /* An overflow list longer than the CQ comes back one CQ-full per GETEVENTS: go on while the
     * kernel still holds some and the last round found any (no busy loop if entering fails). */
    for (;;) {
        struct io_uring_cqe *cqe;
        unsigned head, got = 0;

        if (uring_needs_enter(u))
            io_uring_get_events(&u->ring);
        io_uring_for_each_cqe(&u->ring, head, cqe)
        {
            struct vblk_io *io = io_uring_cqe_get_data(cqe);

            io->res = cqe->res;
            if (io->op == VBLK_IO_DELAY && io->res == -ETIME)
                io->res = 0; /* the timeout expired: that is the point */
            done(io, arg);
            got++;
        }
        io_uring_cq_advance(&u->ring, got);
        n += got;
        if (!got || !uring_needs_enter(u))
            return n;
    }
}

static bool uring_ready(struct vblk_engine *e)
{
    struct uring_engine *u = (struct uring_engine *)e;

    return io_uring_cq_ready(&u->ring) > 0 || uring_needs_enter(u);
}

/* What is queued and not yet taken by the kernel may name pieces of the set about to go: back
 * to the plain ops (same addresses, so the data is the same) before the set changes. */
static void unfix_queued(struct uring_engine *u)
{
    struct io_uring_sq *sq = &u->ring.sq;

    for (unsigned i = IO_URING_READ_ONCE(*sq->khead); i != sq->sqe_tail; i++) {
        struct io_uring_sqe *sqe = &sq->sqes[i & sq->ring_mask];

        switch (sqe->opcode) {
        case IORING_OP_READ_FIXED:
            sqe->opcode = IORING_OP_READ;
            break;
        case IORING_OP_WRITE_FIXED:
            sqe->opcode = IORING_OP_WRITE;
            break;
        case VBLK_IORING_OP_READV_FIXED:
            sqe->opcode = IORING_OP_READV;
            break;
        case VBLK_IORING_OP_WRITEV_FIXED:
            sqe->opcode = IORING_OP_WRITEV;
            break;
        default:
            continue;
        }
        sqe->buf_index = 0;
    }
}

static int uring_register_bufs(struct vblk_engine *e, const struct iovec *bufs, unsigned n,
                               uint32_t gen)
{
    struct uring_engine *u = (struct uring_engine *)e;
    struct buf_range r[BUF_RANGES_MAX];
    struct iovec *pieces;
    unsigned npieces = 0, k = 0;
    int ret;

    if (u->nranges) {
        unfix_queued(u);
        u->nranges = 0;
        e->buf_gen = 0;
        io_uring_unregister_buffers(&u->ring);
    }
    if (!n)
        return 0;
    if (n > BUF_RANGES_MAX)
        return -E2BIG;
    /* sorted by address (insertion: a handful), empty ones left out */
    for (unsigned i = 0; i < n; i++) {
        uintptr_t b = (uintptr_t)bufs[i].iov_base, len = bufs[i].iov_len;
        unsigned j = k;

        if (!len)
            continue;
        if (b + len < b)
            return -EINVAL;
        for (; j > 0 && r[j - 1].base > b; j--)
            r[j] = r[j - 1];
        r[j] = (struct buf_range){.base = b, .size = len};
        k++;
    }
    for (unsigned i = 0; i < k; i++) {
        if (i && r[i].base - r[i - 1].base < r[i - 1].size)
            return -EINVAL; /* overlap */
        r[i].idx0 = npieces;
        npieces += (unsigned)((r[i].size + BUF_PIECE - 1) >> BUF_SHIFT);
    }
    if (!npieces)
        return 0;
    pieces = malloc(npieces * sizeof(*pieces));
    if (!pieces)
        return -ENOMEM;
    for (unsigned i = 0, p = 0; i < k; i++) {
        for (uintptr_t off = 0; off < r[i].size; off += BUF_PIECE)
            pieces[p++] = (struct iovec){(void *)(r[i].base + off),
                                         r[i].size - off > BUF_PIECE ? BUF_PIECE : r[i].size - off};
    }
    ret = io_uring_register_buffers(&u->ring, pieces, npieces);
    free(pieces);
    if (ret < 0)
        return ret;
    memcpy(u->ranges, r, k * sizeof(r[0]));
    u->nranges = k;
    e->buf_gen = gen;
    return 0;
}

const struct vblk_engine_ops vblk_engine_uring = {
    .name = "io_uring",
    .create = uring_create,
    .destroy = uring_destroy,
    .queue = uring_queue,
    .submit = uring_submit,
    .reap = uring_reap,
    .ready = uring_ready,
    .register_bufs = uring_register_bufs,
};
