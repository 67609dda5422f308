/* engine.h - the I/O engine interface: how a block driver's requests reach the kernel.
 *
 * Owns: the contract shared by the io_uring, Linux AIO, thread-pool and null engines.  The
 * caller owns each struct vblk_io (embedded in its request; nothing is allocated per I/O),
 * queues any number with vblk_engine_queue(), then calls submit() once per batch.  Completions
 * are collected by reap(), which calls back with the io and sets io->res (bytes or -errno).
 *
 * Threads: an engine instance belongs to one I/O thread.  fd() becomes readable when
 * completions are waiting; has_local() says completions are already queued in-process (null
 * engine, synchronous fallbacks) and the caller must reap without sleeping.
 *
 * Fixed buffers (io_uring only; register_bufs is NULL elsewhere): memory registered with an
 * engine is pinned once, so that reads and writes into it skip the per-request page pinning.
 * An I/O carries nothing for it: the engine recognises registered memory by address when it
 * queues a read or write and uses the plain form for anything else, so a registration that
 * failed or was replaced costs nothing but speed.
 */
#ifndef VBLK_ENGINE_H
#define VBLK_ENGINE_H

#include <libaio.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/uio.h>

enum vblk_io_op {
    VBLK_IO_READ,
    VBLK_IO_WRITE,
    VBLK_IO_FLUSH,     /* fdatasync */
    VBLK_IO_FALLOCATE, /* discard / write-zeroes: fallocate(fd, mode, offset, len) */
    VBLK_IO_DELAY,     /* complete after len nanoseconds, res 0 (fault injection); io_uring
                        * and threads only: the others refuse it with -EOPNOTSUPP */
};

struct vblk_engine;

struct vblk_io {
    uint8_t op;
    int fd;
    int rw_flags; /* RWF_* for reads/writes (RWF_DSYNC for write-through) */
    int mode;     /* fallocate mode */
    const struct iovec *iov;
    unsigned iovcnt;
    uint64_t offset;
    uint64_t len; /* bytes expected (rw) or range length (fallocate) */
    int64_t res;
    void (*cb)(struct vblk_io *io); /* the submitter's completion (see vblk_io_complete) */
    void *ctx;                      /* the submitter's, for cb */
    struct vblk_engine *engine;     /* the engine it was queued on (for a resubmission) */
    struct vblk_io *next;           /* engine-private list link */
    union {
        struct iocb iocb; /* Linux AIO only */
        struct {
            int64_t tv_sec;
            long long tv_nsec;
        } ts; /* io_uring VBLK_IO_DELAY: a struct __kernel_timespec */
    };
};

typedef void (*vblk_io_done_fn)(struct vblk_io *io, void *arg);

/* The completion function I/O threads reap with: each io says who it belongs to. */
static inline void vblk_io_complete(struct vblk_io *io, void *arg)
{
    io->cb(io);
}

struct vblk_engine_ops {
    const char *name;
    int (*create)(struct vblk_engine **out, unsigned depth);
    void (*destroy)(struct vblk_engine *e);
    /* queue one I/O; 0 or -errno.  -EAGAIN: submit and retry; answered only where submit()
     * makes room (a full io_uring SQ), since the caller cannot reap before it retries.  The
     * depth given to create() sizes the engine for what the caller expects in flight but is
     * no limit: more may be queued (qcow2's metadata I/O) and every completion is delivered */
    int (*queue)(struct vblk_engine *e, struct vblk_io *io);
    /* hand queued I/O to the kernel; 0 or -errno (queued I/O stays queued on -EAGAIN or
     * -EBUSY: the kernel is full; reap, then submit again) */
    int (*submit)(struct vblk_engine *e);
    /* call done() for every finished I/O; returns how many.  Does not drain efd: the owner
     * reads efd when epoll reports it, before reaping, so no wake-up is lost. */
    unsigned (*reap)(struct vblk_engine *e, vblk_io_done_fn done, void *arg);
    /* are completions waiting?  Cheap, no syscall where the engine allows (polling) */
    bool (*ready)(struct vblk_engine *e);
    /* Optional (NULL: not offered).  Register the n host ranges bufs (disjoint, any size, at
     * most 32) as fixed buffers, the set gen (!= 0), replacing the set registered before; n ==
     * 0: only drop it.  Reads and writes queued from then on whose data lies in the set use it.
     * Queued I/O not yet submitted is turned back to the plain form first, and I/O in flight
     * keeps its pages until it completes, so the caller may unmap the old set's memory once
     * this returns.  0, or -errno with no set registered (e->buf_gen 0): the kernel refused
     * (RLIMIT_MEMLOCK without CAP_IPC_LOCK, memory it cannot pin long-term, an old kernel). */
    int (*register_bufs)(struct vblk_engine *e, const struct iovec *bufs, unsigned n, uint32_t gen);
};

struct vblk_engine {
    const struct vblk_engine_ops *ops;
    int efd;          /* readable when completions wait; -1 if never */
    unsigned pending; /* queued, not yet submitted */
    unsigned local;   /* completions queued in-process */
    uint32_t buf_gen; /* the fixed-buffer set registered now (register_bufs), 0: none */
};

extern const struct vblk_engine_ops vblk_engine_uring;
extern const struct vblk_engine_ops vblk_engine_aio;
extern const struct vblk_engine_ops vblk_engine_threads;
extern const struct vblk_engine_ops vblk_engine_null;

/* Look up an engine by its option name (io_uring, native, threads, null).  NULL if unknown. */
const struct vblk_engine_ops *vblk_engine_find(const char *name);

/* Run one I/O synchronously in the calling thread (fallbacks and the thread pool). */
int64_t vblk_io_run_sync(const struct vblk_io *io);

/* Completion list for engines that finish I/O in-process. */
struct vblk_io_list {
    struct vblk_io *head, **tail;
};

static inline void vblk_io_list_init(struct vblk_io_list *l)
{
    l->head = NULL;
    l->tail = &l->head;
}

static inline void vblk_io_list_add(struct vblk_io_list *l, struct vblk_io *io)
{
    io->next = NULL;
    *l->tail = io;
    l->tail = &io->next;
}

/* Take the first io off a non-empty list. */
static inline struct vblk_io *vblk_io_list_pop(struct vblk_io_list *l)
{
    struct vblk_io *io = l->head;

    l->head = io->next;
    if (!l->head)
        l->tail = &l->head;
    return io;
}

/* Call done() for every io on the list, emptying it; returns how many. */
unsigned vblk_io_list_drain(struct vblk_io_list *l, vblk_io_done_fn done, void *arg);

#endif
