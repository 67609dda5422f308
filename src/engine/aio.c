/* aio.c - Linux AIO engine (libaio), aio=native.
 *
 * Reads, writes and fdatasync go through io_submit() in one call per batch; completions wake the
 * thread through an eventfd set on each iocb.  Linux AIO has no fallocate, so discard and
 * write-zeroes run synchronously in the I/O thread and complete locally (they are rare, and
 * QEMU's linux-aio does the same through its thread pool).
 *
 * The kernel context holds depth I/Os.  More may be queued (the qcow2 driver's metadata I/O is
 * not counted in the depth): they wait on the engine's list, and submit() says -EAGAIN while
 * any do; the I/O thread submits again after it reaps.  queue() never refuses for lack of room,
 * since its caller (bdev/file.c) can only submit, not reap, before it retries.
 */
#include <errno.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "engine/engine.h"

struct aio_engine {
    struct vblk_engine e;
    io_context_t ctx;
    unsigned depth;
    unsigned inflight;
    struct vblk_io_list queued; /* prepared, not yet taken by io_submit() (e.pending of them) */
    struct iocb **batch;        /* io_submit()'s argument: depth entries */
    struct io_event *events;
    struct vblk_io_list local;
};

static int aio_create(struct vblk_engine **out, unsigned depth)
{
    struct aio_engine *a = calloc(1, sizeof(*a));
    int r;

    if (!a)
        return -ENOMEM;
    a->depth = depth < 8 ? 8 : depth;
    a->batch = calloc(a->depth, sizeof(*a->batch));
    a->events = calloc(a->depth, sizeof(*a->events));
    if (!a->batch || !a->events) {
        r = -ENOMEM;
        goto err_free;
    }
    r = io_setup((int)a->depth, &a->ctx);
    if (r < 0)
        goto err_free;
    a->e.efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (a->e.efd < 0) {
        r = -errno;
        goto err_destroy_ctx;
    }
    vblk_io_list_init(&a->queued);
    vblk_io_list_init(&a->local);
    a->e.ops = &vblk_engine_aio;
    *out = &a->e;
    return 0;

err_destroy_ctx:
    io_destroy(a->ctx);
err_free:
    free(a->batch);
    free(a->events);
    free(a);
    return r;
}

static void aio_destroy(struct vblk_engine *e)
{
    struct aio_engine *a = (struct aio_engine *)e;

    io_destroy(a->ctx);
    close(e->efd);
    free(a->batch);
    free(a->events);
    free(a);
}

static int aio_queue(struct vblk_engine *e, struct vblk_io *io)
{
    struct aio_engine *a = (struct aio_engine *)e;
    struct iocb *cb = &io->iocb;

    if (io->op == VBLK_IO_DELAY)
        return -EOPNOTSUPP; /* no timers in Linux AIO, and sleeping here would stall the thread */
    if (io->op == VBLK_IO_FALLOCATE) {
        io->res = vblk_io_run_sync(io);
        vblk_io_list_add(&a->local, io);
        e->local++;
        return 0;
    }
    switch (io->op) {
    case VBLK_IO_READ:
        io_prep_preadv(cb, io->fd, io->iov, (int)io->iovcnt, (long long)io->offset);
        break;
    case VBLK_IO_WRITE:
        io_prep_pwritev(cb, io->fd, io->iov, (int)io->iovcnt, (long long)io->offset);
        break;
    case VBLK_IO_FLUSH:
        io_prep_fdsync(cb, io->fd);
        break;
    default:
        return -EINVAL;
    }
    cb->aio_rw_flags = io->rw_flags;
    cb->data = io;
    io_set_eventfd(cb, e->efd);
    vblk_io_list_add(&a->queued, io);
    e->pending++;
    return 0;
}

/* The first queued I/O, taken off the list. */
static struct vblk_io *aio_pop(struct aio_engine *a)
{
    struct vblk_io *io = a->queued.head;

    a->queued.head = io->next;
    if (!a->queued.head)
        a->queued.tail = &a->queued.head;
    a->e.pending--;
    return io;
}

static int aio_submit(struct vblk_engine *e)
{
    struct aio_engine *a = (struct aio_engine *)e;

    /* as many as the context has room for; the rest stay queued, in order */
    while (e->pending && a->inflight < a->depth) {
        unsigned n = 0, room = a->depth - a->inflight;
        int r;

        for (struct vblk_io *io = a->queued.head; io && n < room; io = io->next)
            a->batch[n++] = &io->iocb;
        r = io_submit(a->ctx, (long)n, a->batch);
        if (r == -EAGAIN || r == 0)
            break;
        if (r < 0) {
            /* the first iocb was refused (e.g. fdsync unsupported): run it synchronously */
            struct vblk_io *io = aio_pop(a);

            io->res = vblk_io_run_sync(io);
            vblk_io_list_add(&a->local, io);
            e->local++;
            continue;
        }
        for (int i = 0; i < r; i++)
            aio_pop(a);
        a->inflight += (unsigned)r;
    }
    return e->pending ? -EAGAIN : 0;
}

static unsigned aio_reap(struct vblk_engine *e, vblk_io_done_fn done, void *arg)
{
    struct aio_engine *a = (struct aio_engine *)e;
    unsigned n = 0;
    int r;

    if (e->local) {
        e->local = 0;
        n += vblk_io_list_drain(&a->local, done, arg);
    }
    while (a->inflight) {
        struct timespec zero = {0, 0};

        r = io_getevents(a->ctx, 0, (long)a->inflight, a->events, &zero);
        if (r <= 0)
            break;
        a->inflight -= (unsigned)r;
        for (int i = 0; i < r; i++) {
            struct vblk_io *io = a->events[i].data;

            io->res = (long)a->events[i].res;
            done(io, arg);
        }
        n += (unsigned)r;
    }
    return n;
}

static bool aio_ready(struct vblk_engine *e)
{
    /* no cheap peek at the kernel's ring through libaio: let reap() ask */
    return e->local || ((struct aio_engine *)e)->inflight;
}

const struct vblk_engine_ops vblk_engine_aio = {
    .name = "native",
    .create = aio_create,
    .destroy = aio_destroy,
    .queue = aio_queue,
    .submit = aio_submit,
    .reap = aio_reap,
    .ready = aio_ready,
};
