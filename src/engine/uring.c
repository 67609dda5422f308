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
 */
#include <errno.h>
#include <stdbool.h>
#include <liburing.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "engine/engine.h"

struct uring_engine {
    struct vblk_engine e;
    struct io_uring ring;
    bool defer; /* DEFER_TASKRUN: completions are run only when we ask */
};

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
        /* one segment (the common case): the plain op skips importing an iovec */
        if (io->iovcnt == 1)
            io_uring_prep_read(sqe, io->fd, io->iov[0].iov_base, (unsigned)io->iov[0].iov_len,
                               io->offset);
        else
            io_uring_prep_readv(sqe, io->fd, io->iov, io->iovcnt, io->offset);
        sqe->rw_flags = io->rw_flags;
        break;
    case VBLK_IO_WRITE:
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

const struct vblk_engine_ops vblk_engine_uring = {
    .name = "io_uring",
    .create = uring_create,
    .destroy = uring_destroy,
    .queue = uring_queue,
    .submit = uring_submit,
    .reap = uring_reap,
    .ready = uring_ready,
};
