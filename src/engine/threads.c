/* threads.c - thread-pool engine, aio=threads.
 *
 * For files on filesystems without usable async I/O.  The I/O thread hands a whole batch to a
 * small pool of workers under one lock acquisition and takes back all finished I/O under one
 * more; workers run preadv2/pwritev2/fdatasync/fallocate and wake the I/O thread through an
 * eventfd.  The per-request cost is a worker's lock/unlock, which is the price of this engine.
 */
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "engine/engine.h"

#define THREADS_WORKERS 4

struct threads_engine {
    struct vblk_engine e;
    struct vblk_io_list batch; /* queued by the I/O thread, not yet handed over */
    pthread_mutex_t lock;
    pthread_cond_t cond;
    struct vblk_io_list todo; /* under lock */
    struct vblk_io_list done; /* under lock */
    unsigned ndone;           /* entries on done: written under lock, peeked without it */
    bool stop;                /* under lock */
    unsigned nworkers;
    pthread_t workers[THREADS_WORKERS];
};

static void *worker_main(void *arg)
{
    struct threads_engine *t = arg;

    pthread_mutex_lock(&t->lock);
    for (;;) {
        struct vblk_io *io;
        bool wake;

        while (!t->todo.head && !t->stop)
            pthread_cond_wait(&t->cond, &t->lock);
        if (!t->todo.head)
            break;
        io = t->todo.head;
        t->todo.head = io->next;
        if (!t->todo.head)
            t->todo.tail = &t->todo.head;
        pthread_mutex_unlock(&t->lock);

        io->res = vblk_io_run_sync(io);

        pthread_mutex_lock(&t->lock);
        wake = t->done.head == NULL;
        vblk_io_list_add(&t->done, io);
        __atomic_store_n(&t->ndone, t->ndone + 1, __ATOMIC_RELEASE);
        if (wake)
            (void)eventfd_write(t->e.efd, 1);
    }
    pthread_mutex_unlock(&t->lock);
    return NULL;
}

static void threads_destroy(struct vblk_engine *e)
{
    struct threads_engine *t = (struct threads_engine *)e;

    pthread_mutex_lock(&t->lock);
    t->stop = true;
    pthread_cond_broadcast(&t->cond);
    pthread_mutex_unlock(&t->lock);
    for (unsigned i = 0; i < t->nworkers; i++)
        pthread_join(t->workers[i], NULL);
    pthread_cond_destroy(&t->cond);
    pthread_mutex_destroy(&t->lock);
    close(e->efd);
    free(t);
}

static int threads_create(struct vblk_engine **out, unsigned depth)
{
    struct threads_engine *t = calloc(1, sizeof(*t));

    if (!t)
        return -ENOMEM;
    t->e.ops = &vblk_engine_threads;
    t->e.efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (t->e.efd < 0) {
        free(t);
        return -errno;
    }
    pthread_mutex_init(&t->lock, NULL);
    pthread_cond_init(&t->cond, NULL);
    vblk_io_list_init(&t->batch);
    vblk_io_list_init(&t->todo);
    vblk_io_list_init(&t->done);
    for (; t->nworkers < THREADS_WORKERS; t->nworkers++) {
        if (pthread_create(&t->workers[t->nworkers], NULL, worker_main, t) != 0) {
            threads_destroy(&t->e);
            return -EAGAIN;
        }
    }
    *out = &t->e;
    return 0;
}

static int threads_queue(struct vblk_engine *e, struct vblk_io *io)
{
    struct threads_engine *t = (struct threads_engine *)e;

    vblk_io_list_add(&t->batch, io);
    e->pending++;
    return 0;
}

static int threads_submit(struct vblk_engine *e)
{
    struct threads_engine *t = (struct threads_engine *)e;

    if (!t->batch.head)
        return 0;
    pthread_mutex_lock(&t->lock);
    *t->todo.tail = t->batch.head;
    t->todo.tail = t->batch.tail;
    if (e->pending > 1)
        pthread_cond_broadcast(&t->cond);
    else
        pthread_cond_signal(&t->cond);
    pthread_mutex_unlock(&t->lock);
    vblk_io_list_init(&t->batch);
    e->pending = 0;
    return 0;
}

static unsigned threads_reap(struct vblk_engine *e, vblk_io_done_fn done, void *arg)
{
    struct threads_engine *t = (struct threads_engine *)e;
    struct vblk_io_list l;

    pthread_mutex_lock(&t->lock);
    l = t->done;
    if (!l.head)
        l.tail = &l.head;
    vblk_io_list_init(&t->done);
    __atomic_store_n(&t->ndone, 0, __ATOMIC_RELAXED);
    pthread_mutex_unlock(&t->lock);
    return vblk_io_list_drain(&l, done, arg);
}

static bool threads_ready(struct vblk_engine *e)
{
    /* an unlocked peek; a stale answer only costs one more poll */
    return __atomic_load_n(&((struct threads_engine *)e)->ndone, __ATOMIC_ACQUIRE) != 0;
}

const struct vblk_engine_ops vblk_engine_threads = {
    .name = "threads",
    .create = threads_create,
    .destroy = threads_destroy,
    .queue = threads_queue,
    .submit = threads_submit,
    .reap = threads_reap,
    .ready = threads_ready,
};
