/* engine.c - engine registry, the synchronous I/O helper and the null engine.
 *
 * The null engine completes every I/O in-process without touching storage: reads return zeroes.
 * It measures the data plane's own cost (file=null://SIZE).
 */
#include "engine/engine.h"
#include "util/iov.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

const struct vblk_engine_ops *vblk_engine_find(const char *name)
{
    static const struct vblk_engine_ops *const all[] = {&vblk_engine_uring, &vblk_engine_aio,
                                                        &vblk_engine_threads, &vblk_engine_null};

    for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++) {
        if (strcmp(all[i]->name, name) == 0)
            return all[i];
    }
    return NULL;
}

int64_t vblk_io_run_sync(const struct vblk_io *io)
{
    ssize_t r;

    switch (io->op) {
    case VBLK_IO_READ:
        r = preadv2(io->fd, io->iov, (int)io->iovcnt, (off_t)io->offset, io->rw_flags);
        break;
    case VBLK_IO_WRITE:
        r = pwritev2(io->fd, io->iov, (int)io->iovcnt, (off_t)io->offset, io->rw_flags);
        break;
    case VBLK_IO_FLUSH:
        r = fdatasync(io->fd);
        break;
    case VBLK_IO_FALLOCATE:
        r = fallocate(io->fd, io->mode, (off_t)io->offset, (off_t)io->len);
        break;
    case VBLK_IO_DELAY: { /* the thread pool's workers sleep; never called on an I/O thread */
        struct timespec ts = {(time_t)(io->len / 1000000000), (long)(io->len % 1000000000)};

        while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
            ;
        r = 0;
        break;
    }
    default:
        return -EINVAL;
    }
    return r < 0 ? -errno : r;
}

unsigned vblk_io_list_drain(struct vblk_io_list *l, vblk_io_done_fn done, void *arg)
{
    struct vblk_io *io = l->head;
    unsigned n = 0;

    vblk_io_list_init(l);
    while (io) {
        struct vblk_io *next = io->next;

        done(io, arg);
        io = next;
        n++;
    }
    return n;
}

/* ---- null engine ---- */

struct null_engine {
    struct vblk_engine e;
    struct vblk_io_list done;
};

static int null_create(struct vblk_engine **out, unsigned depth)
{
    struct null_engine *n = calloc(1, sizeof(*n));

    if (!n)
        return -ENOMEM;
    n->e.ops = &vblk_engine_null;
    n->e.efd = -1;
    vblk_io_list_init(&n->done);
    *out = &n->e;
    return 0;
}

static void null_destroy(struct vblk_engine *e)
{
    free(e);
}

static int null_queue(struct vblk_engine *e, struct vblk_io *io)
{
    struct null_engine *n = (struct null_engine *)e;

    if (io->op == VBLK_IO_DELAY)
        return -EOPNOTSUPP; /* completes in-process: it cannot wait */
    if (io->op == VBLK_IO_READ)
        vblk_iov_zero(io->iov, io->iovcnt);
    io->res = (io->op == VBLK_IO_READ || io->op == VBLK_IO_WRITE) ? (int64_t)io->len : 0;
    vblk_io_list_add(&n->done, io);
    e->local++;
    return 0;
}

static int null_submit(struct vblk_engine *e)
{
    return 0;
}

static unsigned null_reap(struct vblk_engine *e, vblk_io_done_fn done, void *arg)
{
    struct null_engine *n = (struct null_engine *)e;

    e->local = 0;
    return vblk_io_list_drain(&n->done, done, arg);
}

static bool null_ready(struct vblk_engine *e)
{
    return e->local > 0;
}

const struct vblk_engine_ops vblk_engine_null = {
    .name = "null",
    .create = null_create,
    .destroy = null_destroy,
    .queue = null_queue,
    .submit = null_submit,
    .reap = null_reap,
    .ready = null_ready,
};
