/* bdev.h - the block-driver layer: what storage does with a request.
 *
 * Owns: the contract every storage driver implements (an ops table, as kvmtool's disk-image
 * ops), opening an export's driver stack from its configuration, and the request that
 * virtio-blk (or a driver above) hands a driver.  Drivers: protocols "file" (regular file or
 * block device, I/O through the calling thread's engine) and "null" (null://SIZE: stores nothing,
 * completes at once, reads zeroes unless read-zeroes=off); formats ("qcow2") sit on a child
 * driver and reach storage only through it; filters sit on top and pass requests down: "faulty"
 * (fault injection for tests) on the format, and "throttle" (I/O limits, throttle.h), always
 * the top of every stack so that limits can be set while an export runs: throttle, [faulty],
 * [qcow2], file|null|nbd|rbd.  "nbd" (nbd.c) serves an NBD server's export through libnbd;
 * "rbd" (driver=rbd: a Ceph RBD image through librbd's AIO, rbd.c) completes requests in the
 * submitting I/O thread through an eventfd of its own.
 *
 * What belongs to a driver and not to virtio-blk: how a cache mode treats a durable write (FUA)
 * and a flush (`unsafe` ignores both), fallbacks (write-zeroes without ZERO_RANGE punches a hole
 * when unmap is allowed; a discard the file system cannot do succeeds, it is a hint), and what a
 * request without storage does (null).
 *
 * Threads:
 *  - control thread: vblk_bdev_open_stack, close, flush_sync, resize, pread_sync, pwrite_sync;
 *  - I/O thread: submit, drain.  A driver is driven from its export's I/O thread(s) only,
 *    never blocks them, and completes through the engine passed with the request (the calling
 *    thread's).  A driver that keeps state shared by requests (a format's caches) declares
 *    single_thread and is then only opened for exports with one I/O thread.
 */
#ifndef VBLK_BDEV_H
#define VBLK_BDEV_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/uio.h>

#include "bdev/throttle.h"
#include "engine/engine.h"

enum vblk_cache {
    VBLK_CACHE_NONE,         /* O_DIRECT, write cache on (guest flushes) */
    VBLK_CACHE_WRITEBACK,    /* page cache, write cache on */
    VBLK_CACHE_WRITETHROUGH, /* page cache, every write is durable (write cache off) */
    VBLK_CACHE_DIRECTSYNC,   /* O_DIRECT, every write is durable */
    VBLK_CACHE_UNSAFE,       /* page cache, flushes ignored */
};

/* Write cache on at start for this cache mode? (config wce / VIRTIO_BLK_F_FLUSH behaviour) */
static inline bool vblk_cache_wce(enum vblk_cache c)
{
    return c == VBLK_CACHE_NONE || c == VBLK_CACHE_WRITEBACK || c == VBLK_CACHE_UNSAFE;
}

enum vblk_image_format {
    VBLK_FORMAT_RAW,
    VBLK_FORMAT_QCOW2,
    VBLK_FORMAT_AUTO, /* probe; read-only exports only */
};

/* Fault injection (the "faulty" filter, for tests): requests whose op is in ops and that touch
 * [offset, offset + length), rate percent of them, at most count of them, are delayed by
 * delay_ms and then fail with -err (err 0: go on to storage). */
struct vblk_fault_conf {
    unsigned ops;      /* bit (1 << enum vblk_bdev_op); 0: no filter */
    int err;           /* positive errno */
    uint64_t offset;   /* bytes */
    uint64_t length;   /* bytes; 0: to the end of the disk */
    unsigned rate;     /* percent, 1..100 */
    uint64_t count;    /* 0: no limit */
    unsigned delay_ms; /* delay them this long first (then fail with err, or pass them down) */
};

/* What storage needs to know of an export's options (the command line lives above). */
/* Where the bytes are: the protocol driver at the bottom of the stack. */
enum vblk_protocol {
    VBLK_PROTO_FILE, /* file=PATH: a regular file or block device */
    VBLK_PROTO_NULL, /* file=null://SIZE */
    VBLK_PROTO_NBD,  /* driver=nbd,uri=...: an NBD server (libnbd) */
    VBLK_PROTO_RBD,  /* driver=rbd,pool=,image=: a Ceph RBD image (librbd) */
};

struct vblk_bdev_conf {
    const char *name; /* export id, for messages */
    enum vblk_protocol protocol;
    const char *file; /* path, or null://SIZE ("" for nbd and rbd) */
    bool null;        /* file is null://SIZE */
    uint64_t null_size;
    bool readonly;
    enum vblk_cache cache;
    enum vblk_image_format format;
    unsigned lbs;                 /* logical block size advertised */
    bool discard_unmap;           /* discard=unmap */
    bool read_zeroes;             /* null: zero-fill reads */
    bool no_lock;                 /* locking=off: take no image lock (a migration's target) */
    unsigned iothreads;           /* the export's I/O threads (single_thread drivers need 1) */
    uint64_t l2_cache_size;       /* qcow2: bytes of L2 tables cached (0: default) */
    uint64_t refcount_cache_size; /* qcow2: bytes of refcount blocks cached (0: default) */
    struct vblk_fault_conf fault; /* ops != 0: a faulty filter on the format driver */
    /* limits of the throttle filter, always on top (all 0: none, a pass-through) */
    struct vblk_throttle_conf throttle;
    /* nbd: nbd://HOST[:PORT]/NAME or nbd+unix:///NAME?socket=PATH; requests fail with IOERR
     * after timeout_s without the server (0: wait forever); reconnect every reconnect_ms first */
    const char *uri;
    unsigned timeout_s;
    unsigned reconnect_ms;
    /* rbd: pool, image, optional snapshot (read-only), ceph.conf path and client id ("" for
     * librados' defaults) */
    const char *pool, *image, *snap, *conf, *user;
};

enum vblk_bdev_op {
    VBLK_BDEV_READ,
    VBLK_BDEV_WRITE,
    VBLK_BDEV_FLUSH,
    VBLK_BDEV_DISCARD,
    VBLK_BDEV_WRITE_ZEROES,
};

#define VBLK_BDEV_F_FUA   1u /* write: durable before it completes (guest write cache off) */
#define VBLK_BDEV_F_UNMAP 2u /* write-zeroes: may deallocate */

struct vblk_bdev_req;
typedef void (*vblk_bdev_done_fn)(struct vblk_bdev_req *r, int ret);

/* One request, owned by the caller (embedded in its own request; nothing is allocated per
 * request on the raw path).  The caller fills op..len and done; the driver owns io until it
 * calls done (0 or -errno), which it may do before submit returns. */
struct vblk_bdev_req {
    uint8_t op;    /* enum vblk_bdev_op */
    uint8_t flags; /* VBLK_BDEV_F_* */
    unsigned iovcnt;
    const struct iovec *iov; /* read/write data, len bytes */
    uint64_t offset;         /* bytes, a multiple of the driver's lbs */
    uint64_t len;
    vblk_bdev_done_fn done;
    struct vblk_io io; /* for a driver that needs one engine I/O per request (file) */
};

struct vblk_bdev;

struct vblk_bdev_ops {
    const char *name;
    bool single_thread; /* state shared across requests: one I/O thread only */
    /* Control thread.  Open b per c on top of child (NULL for a protocol driver; b->child is set
     * already); fill b's info.  0, or -errno with err naming the file and what failed. */
    int (*open)(struct vblk_bdev *b, const struct vblk_bdev_conf *c, char *err, size_t errlen);
    void (*close)(struct vblk_bdev *b);
    /* Control thread, no I/O in flight: make everything written durable (shutdown). */
    int (*flush_sync)(struct vblk_bdev *b);
    /* I/O thread: start r; completion through eng (the calling thread's) or inline. */
    void (*submit)(struct vblk_bdev *b, struct vblk_engine *eng, struct vblk_bdev_req *r);
    /* Control thread: serve size bytes from now on (a multiple of lbs); truncate: also grow or
     * shrink the storage, else it must hold size bytes already.  NULL: not resizable.  0, or
     * -errno with err set.  The driver stores the new b->size itself (atomically). */
    int (*resize)(struct vblk_bdev *b, uint64_t size, bool truncate, char *err, size_t errlen);
    bool filter; /* passes requests to its child over the same range (faulty, throttle) */
    /* I/O thread, optional: a queue served by the calling thread stops and waits for its
     * requests; hand down (or fail) every request the driver holds back in this thread, at once
     * (the throttle filter's waiting requests). */
    void (*drain)(struct vblk_bdev *b, struct vblk_engine *eng);
    /* Control thread, no I/O in flight, optional: blocking I/O for a format's open and final
     * write-back (vblk_bdev_pread_sync/pwrite_sync; NULL: pread/pwrite on fd). */
    ssize_t (*pread_sync)(struct vblk_bdev *b, void *buf, size_t len, uint64_t off);
    int (*pwrite_sync)(struct vblk_bdev *b, const void *buf, size_t len, uint64_t off);
};

struct vblk_bdev {
    const struct vblk_bdev_ops *ops;
    const char *name;        /* export id, for messages */
    struct vblk_bdev *child; /* the driver below, or NULL */
    void *priv;              /* the driver's */
    int fd;                  /* file: the open file (-1 otherwise) */
    bool blockdev;           /* file: a block device */
    /* info, set by open */
    uint64_t size;     /* bytes served, a multiple of lbs */
    unsigned lbs;      /* logical block size */
    unsigned phys_exp; /* log2(physical block / logical block) */
    unsigned align;    /* buffer and offset alignment I/O to this driver needs (O_DIRECT) */
    bool readonly;
    enum vblk_cache cache;
    bool discard;      /* DISCARD offered */
    bool write_zeroes; /* WRITE_ZEROES offered */
    bool zeroes_unmap; /* WRITE_ZEROES with UNMAP may deallocate */
};

extern const struct vblk_bdev_ops vblk_bdev_file;
extern const struct vblk_bdev_ops vblk_bdev_null;
extern const struct vblk_bdev_ops vblk_bdev_qcow2;
extern const struct vblk_bdev_ops vblk_bdev_faulty;
extern const struct vblk_bdev_ops vblk_bdev_throttle;
extern const struct vblk_bdev_ops vblk_bdev_nbd;
extern const struct vblk_bdev_ops vblk_bdev_rbd; /* rbd.c, built with librbd (VBLK_HAVE_RBD) */

/* Open the driver stack c asks for into *out (the protocol driver, a format driver on it, the
 * filters on top): the top driver is returned, its children hang below.  0, or -errno with err
 * set; nothing is left open on failure. */
int vblk_bdev_open_stack(struct vblk_bdev **out, const struct vblk_bdev_conf *c, char *err,
                         size_t errlen);
/* Close the stack (top first) and free it. */
void vblk_bdev_close_stack(struct vblk_bdev *b);
/* Control thread: resize the stack (see ops->resize; filters follow their child).  I/O
 * threads see the new size from their next request on (vblk_bdev_size).  0 or -errno with err
 * set. */
int vblk_bdev_resize(struct vblk_bdev *top, uint64_t size, bool truncate, char *err, size_t errlen);

/* The size served now (any thread: it changes on resize). */
static inline uint64_t vblk_bdev_size(const struct vblk_bdev *b)
{
    return __atomic_load_n(&b->size, __ATOMIC_RELAXED);
}

/* Is the driver read-only now?  (Any thread: export-set may turn readonly on live.) */
static inline bool vblk_bdev_readonly(const struct vblk_bdev *b)
{
    return __atomic_load_n(&b->readonly, __ATOMIC_RELAXED);
}

/* Control thread, no I/O in flight: flush the stack.  0 or -errno. */
int vblk_bdev_flush_sync(struct vblk_bdev *b);

/* Control thread, no I/O in flight: blocking I/O on a protocol driver (a format's metadata).
 * pread: bytes read (short at the end of the storage) or -errno; pwrite: 0 or -errno. */
ssize_t vblk_bdev_pread_sync(struct vblk_bdev *b, void *buf, size_t len, uint64_t off);
int vblk_bdev_pwrite_sync(struct vblk_bdev *b, const void *buf, size_t len, uint64_t off);

/* The driver of type ops in the stack topped by b, or NULL. */
struct vblk_bdev *vblk_bdev_find(struct vblk_bdev *b, const struct vblk_bdev_ops *ops);
/* I/O thread: run every driver's drain, top first (see the drain op). */
void vblk_bdev_drain(struct vblk_bdev *b, struct vblk_engine *eng);

static inline void vblk_bdev_submit(struct vblk_bdev *b, struct vblk_engine *eng,
                                    struct vblk_bdev_req *r)
{
    b->ops->submit(b, eng, r);
}

#endif
