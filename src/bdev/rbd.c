/* rbd.c - the "rbd" protocol driver: a Ceph RBD image through librbd's asynchronous API.
 *
 * Open (control thread): a librados client (user=, conf=, else librados' defaults and
 * CEPH_ARGS), the pool's I/O context, the image (read-only for readonly=on; snap= needs it).
 * client_mount_timeout and rados_mon_op_timeout are 10 s unless the conf says otherwise, so an
 * unreachable cluster is an error in seconds, not a hang.
 *
 * I/O: each request is one librbd AIO (readv, writev, flush, discard, write-zeroes) with its own
 * librbd completion.  librbd completes on its own threads: the callback only stores the result
 * in r->io.res and pushes the request on a lock-free stack of the I/O thread that submitted it
 * (r->io.ctx, a per-(image, thread) context), writing that context's eventfd when the stack was
 * empty; the thread's loop pops the whole stack and completes the requests in submission order.
 * So any number of I/O threads can share one image (librbd is thread-safe) and nothing on the
 * data path takes a lock; the first request of a thread creates its context (a mutex there).
 *
 * Cache modes: librbd has its own client-side cache (rbd_cache); cache=none and directsync turn
 * it off (as QEMU does), the others leave the conf's setting (on by default, writethrough until
 * the first flush).  A FUA write (cache=writethrough/directsync, or the guest's write cache off)
 * is a write and then a flush.  cache=unsafe completes flushes at once and ignores FUA.
 *
 * The exclusive lock: a writable open of an image with the exclusive-lock feature takes the lock
 * in managed mode (rbd_lock_acquire), so a second writer (another vblkd, a QEMU) is refused
 * instead of silently bouncing the lock between two clients; the lock goes with rbd_close (or
 * with the client's session when a daemon dies: the monitors blocklist it once its watch times
 * out).  locking=off takes no lock at open: librbd then takes it on the first write, asking the
 * owner to hand it over - a managed owner refuses and the write fails until it closes (a
 * migration's target: the source stops and closes, the target's first write gets the lock).
 */
#include "bdev/bdev.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <rados/librados.h>
#include <rbd/librbd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "iothread/iothread.h"
#include "util/compiler.h"
#include "util/log.h"

#define MAX_CTX 64 /* I/O threads one image can be driven from (VBLK_MAX_IOTHREADS) */

/* r->io.op: what the request waits for */
enum { STAGE_IO, STAGE_FUA_FLUSH };

struct rbd_dev;

/* One I/O thread's completions of one image. */
struct rctx {
    struct vblk_iot_source src; /* the eventfd, in the thread's loop */
    struct rbd_dev *d;
    struct vblk_iothread *iot;
    int efd;
    struct vblk_io *done; /* atomic: completed requests' io, newest first (a Treiber stack) */
};

struct rbd_dev {
    struct vblk_bdev *b;
    rados_t cluster;
    rados_ioctx_t ioctx;
    rbd_image_t image;
    char spec[512];       /* pool/image[@snap], for messages */
    pthread_mutex_t lock; /* adding a context */
    struct rctx *ctx[MAX_CTX];
    unsigned nctx; /* atomic */
    bool warned;   /* a request came from outside an I/O thread */
    bool written;  /* relaxed: a write reached librbd (else flush_sync has nothing to do) */
};

/* ---- completions ---- */

/* librbd's thread: hand the request to the thread that submitted it. */
static void rbd_cb(rbd_completion_t comp, void *arg)
{
    struct vblk_bdev_req *r = arg;
    struct rctx *c = r->io.ctx;
    struct vblk_io *old = __atomic_load_n(&c->done, __ATOMIC_RELAXED);

    r->io.res = rbd_aio_get_return_value(comp);
    rbd_aio_release(comp);
    do {
        r->io.next = old;
    } while (!__atomic_compare_exchange_n(&c->done, &old, &r->io, true, __ATOMIC_RELEASE,
                                          __ATOMIC_RELAXED));
    if (!old) {
        uint64_t one = 1;
        ssize_t n = write(c->efd, &one, sizeof(one)); /* EAGAIN: the counter is set anyway */

        (void)n;
    }
}

static int start_io(struct vblk_bdev *b, struct rbd_dev *d, struct vblk_bdev_req *r)
{
    rbd_completion_t comp;
    int ret;

    ret = rbd_aio_create_completion(r, rbd_cb, &comp);
    if (unlikely(ret < 0))
        return ret;
    if (r->io.op == STAGE_FUA_FLUSH) {
        ret = rbd_aio_flush(d->image, comp);
        goto out;
    }
    switch (r->op) {
    case VBLK_BDEV_READ:
        ret = rbd_aio_readv(d->image, r->iov, (int)r->iovcnt, r->offset, comp);
        break;
    case VBLK_BDEV_WRITE:
        ret = rbd_aio_writev(d->image, r->iov, (int)r->iovcnt, r->offset, comp);
        break;
    case VBLK_BDEV_FLUSH:
        ret = rbd_aio_flush(d->image, comp);
        break;
    case VBLK_BDEV_DISCARD:
        ret = rbd_aio_discard(d->image, r->offset, r->len, comp);
        break;
    case VBLK_BDEV_WRITE_ZEROES:
        /* without UNMAP the range stays allocated (as QEMU asks librbd) */
        ret = rbd_aio_write_zeroes(d->image, r->offset, r->len, comp,
                                   (r->flags & VBLK_BDEV_F_UNMAP) && b->zeroes_unmap
                                       ? 0
                                       : RBD_WRITE_ZEROES_FLAG_THICK_PROVISION,
                                   0);
        break;
    default:
        ret = -EOPNOTSUPP;
        break;
    }
out:
    if (unlikely(ret < 0))
        rbd_aio_release(comp);
    return ret;
}

/* The submitting I/O thread: a request is back from librbd. */
static void complete_one(struct vblk_bdev *b, struct rbd_dev *d, struct vblk_bdev_req *r)
{
    int ret = r->io.res < 0 ? (int)r->io.res : 0;

    if (ret == 0 && r->io.op == STAGE_IO && r->op == VBLK_BDEV_WRITE &&
        (r->flags & VBLK_BDEV_F_FUA) && b->cache != VBLK_CACHE_UNSAFE) {
        r->io.op = STAGE_FUA_FLUSH; /* durable: the write, then a flush */
        ret = start_io(b, d, r);
        if (ret == 0)
            return;
    }
    r->done(r, ret);
}

static void ctx_fired(struct vblk_iot_source *src)
{
    struct rctx *c = container_of(src, struct rctx, src);
    struct rbd_dev *d = c->d;
    struct vblk_io *list, *rev = NULL;
    uint64_t v;

    if (read(c->efd, &v, sizeof(v)) < 0 && errno != EAGAIN)
        log_err(d->b->name, "rbd: reading the completion eventfd: %s", strerror(errno));
    list = __atomic_exchange_n(&c->done, NULL, __ATOMIC_ACQUIRE);
    while (list) { /* oldest first */
        struct vblk_io *next = list->next;

        list->next = rev;
        rev = list;
        list = next;
    }
    while (rev) {
        struct vblk_io *io = rev;

        rev = io->next;
        complete_one(d->b, d, container_of(io, struct vblk_bdev_req, io));
    }
}

/* This I/O thread's context of d, created on its first request; NULL outside I/O threads. */
static struct rctx *find_ctx(struct rbd_dev *d)
{
    struct vblk_iothread *t = vblk_iothread_self();
    unsigned n = __atomic_load_n(&d->nctx, __ATOMIC_ACQUIRE);
    struct rctx *c = NULL;

    if (!t)
        return NULL;
    for (unsigned i = 0; i < n; i++) {
        if (d->ctx[i]->iot == t)
            return d->ctx[i];
    }
    pthread_mutex_lock(&d->lock);
    n = d->nctx;
    if (n == MAX_CTX)
        goto out;
    c = calloc(1, sizeof(*c));
    if (!c)
        goto out;
    c->d = d;
    c->iot = t;
    c->src.fn = ctx_fired;
    c->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (c->efd < 0 || vblk_iothread_add_fd(t, c->efd, &c->src) < 0) {
        if (c->efd >= 0)
            close(c->efd);
        free(c);
        c = NULL;
        goto out;
    }
    d->ctx[n] = c;
    __atomic_store_n(&d->nctx, n + 1, __ATOMIC_RELEASE);
out:
    pthread_mutex_unlock(&d->lock);
    return c;
}

static void rbd_submit(struct vblk_bdev *b, struct vblk_engine *eng, struct vblk_bdev_req *r)
{
    struct rbd_dev *d = b->priv;
    struct rctx *c;
    int ret;

    if (r->op == VBLK_BDEV_FLUSH && (vblk_bdev_readonly(b) || b->cache == VBLK_CACHE_UNSAFE)) {
        r->done(r, 0);
        return;
    }
    c = find_ctx(d);
    if (unlikely(!c)) {
        if (!d->warned)
            log_err(b->name, "rbd: cannot take completions in this thread; failing requests");
        d->warned = true;
        r->done(r, -EIO);
        return;
    }
    if (r->op != VBLK_BDEV_READ && r->op != VBLK_BDEV_FLUSH &&
        unlikely(!__atomic_load_n(&d->written, __ATOMIC_RELAXED)))
        __atomic_store_n(&d->written, true, __ATOMIC_RELAXED);
    r->io.ctx = c;
    r->io.op = STAGE_IO;
    r->io.engine = eng;
    ret = start_io(b, d, r);
    if (unlikely(ret < 0))
        r->done(r, ret);
}

/* ---- control ---- */

static void rbd_teardown(struct rbd_dev *d)
{
    /* the image first: rbd_close returns once every completion's callback has returned (the
     * last may still be writing to its context's eventfd when its request is already done) */
    if (d->image)
        rbd_close(d->image); /* releases the exclusive lock */
    for (unsigned i = 0; i < d->nctx; i++) {
        close(d->ctx[i]->efd); /* leaves the loop's epoll set with it */
        free(d->ctx[i]);
    }
    if (d->ioctx)
        rados_ioctx_destroy(d->ioctx);
    if (d->cluster)
        rados_shutdown(d->cluster);
    pthread_mutex_destroy(&d->lock);
    free(d);
}

/* Set a librados option (seconds) to val unless the configuration changed it from def. */
static void conf_default(rados_t cl, const char *key, double def, const char *val)
{
    char buf[64];

    if (rados_conf_get(cl, key, buf, sizeof(buf)) == 0 && strtod(buf, NULL) != def)
        return;
    rados_conf_set(cl, key, val);
}

static int rbd_open_(struct vblk_bdev *b, const struct vblk_bdev_conf *c, char *err, size_t errlen)
{
    const char *user = c->user[0] ? c->user : "admin";
    struct rbd_dev *d = calloc(1, sizeof(*d));
    char client[256], tmo[32];
    uint64_t size, features = 0;
    int r;

    if (!d) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    d->b = b;
    pthread_mutex_init(&d->lock, NULL);
    snprintf(d->spec, sizeof(d->spec), "%s/%s%s%s", c->pool, c->image, c->snap[0] ? "@" : "",
             c->snap);
    if (c->snap[0] && !c->readonly) {
        snprintf(err, errlen, "rbd %s: a snapshot is read-only: add readonly=on", d->spec);
        r = -EINVAL;
        goto fail;
    }
    snprintf(client, sizeof(client), "client.%s", user);
    r = rados_create2(&d->cluster, "ceph", client, 0);
    if (r < 0) {
        d->cluster = NULL;
        snprintf(err, errlen, "rbd %s: cannot create a Ceph client %s: %s", d->spec, client,
                 strerror(-r));
        goto fail;
    }
    if (c->conf[0]) {
        r = rados_conf_read_file(d->cluster, c->conf);
        if (r < 0) {
            snprintf(err, errlen, "rbd %s: cannot read the Ceph configuration '%s': %s", d->spec,
                     c->conf, strerror(-r));
            goto fail;
        }
    } else {
        rados_conf_read_file(d->cluster, NULL); /* /etc/ceph/ceph.conf, $CEPH_CONF, if any */
    }
    r = rados_conf_parse_env(d->cluster, NULL); /* CEPH_ARGS */
    if (r < 0) {
        snprintf(err, errlen, "rbd %s: bad CEPH_ARGS: %s", d->spec, strerror(-r));
        goto fail;
    }
    /* a dead cluster is an error within seconds (unless the conf says otherwise) */
    conf_default(d->cluster, "client_mount_timeout", 300, "10");
    conf_default(d->cluster, "rados_mon_op_timeout", 0, "10");
    if (c->cache == VBLK_CACHE_NONE || c->cache == VBLK_CACHE_DIRECTSYNC)
        rados_conf_set(d->cluster, "rbd_cache", "false");
    r = rados_connect(d->cluster);
    if (r < 0) {
        if (rados_conf_get(d->cluster, "client_mount_timeout", tmo, sizeof(tmo)) < 0)
            snprintf(tmo, sizeof(tmo), "?");
        if (r == -ETIMEDOUT || r == -ETIME)
            snprintf(err, errlen,
                     "rbd %s: cannot connect to the Ceph cluster as %s: no monitor answered "
                     "within %ss (mon_host in %s)",
                     d->spec, client, tmo, c->conf[0] ? c->conf : "the default ceph.conf");
        else if (r == -EACCES || r == -EPERM)
            snprintf(err, errlen,
                     "rbd %s: the Ceph cluster refused %s: %s (wrong key in the keyring?)", d->spec,
                     client, strerror(-r));
        else if (r == -ENOENT)
            snprintf(err, errlen,
                     "rbd %s: cannot connect to the Ceph cluster as %s: no keyring with its key "
                     "or no monitor address (give conf=, or keyring= and mon_host in the conf)",
                     d->spec, client);
        else
            snprintf(err, errlen, "rbd %s: cannot connect to the Ceph cluster as %s: %s", d->spec,
                     client, strerror(-r));
        goto fail;
    }
    r = rados_ioctx_create(d->cluster, c->pool, &d->ioctx);
    if (r < 0) {
        d->ioctx = NULL;
        snprintf(err, errlen, "rbd %s: %s", d->spec,
                 r == -ENOENT ? "the pool does not exist" : strerror(-r));
        goto fail;
    }
    if (c->readonly)
        r = rbd_open_read_only(d->ioctx, c->image, &d->image, c->snap[0] ? c->snap : NULL);
    else
        r = rbd_open(d->ioctx, c->image, &d->image, NULL);
    if (r < 0) {
        d->image = NULL;
        if (r == -ENOENT)
            snprintf(err, errlen, "rbd %s: no such image%s in pool '%s'", d->spec,
                     c->snap[0] ? " or snapshot" : "", c->pool);
        else
            snprintf(err, errlen, "rbd %s: cannot open the image as %s: %s", d->spec, client,
                     strerror(-r));
        goto fail;
    }
    r = rbd_get_size(d->image, &size);
    if (r == 0)
        r = rbd_get_features(d->image, &features);
    if (r < 0) {
        snprintf(err, errlen, "rbd %s: cannot get the image's size: %s", d->spec, strerror(-r));
        goto fail;
    }
    b->size = size - size % b->lbs;
    if (b->size == 0 && c->format == VBLK_FORMAT_RAW) {
        snprintf(err, errlen, "rbd %s: the image is smaller than one %u-byte block", d->spec,
                 b->lbs);
        r = -EINVAL;
        goto fail;
    }
    if (!c->readonly && !c->no_lock && (features & RBD_FEATURE_EXCLUSIVE_LOCK)) {
        r = rbd_lock_acquire(d->image, RBD_LOCK_MODE_EXCLUSIVE);
        if (r < 0) {
            snprintf(err, errlen,
                     "rbd %s: the image is in use by another client (cannot take its "
                     "exclusive lock: %s); is a VM or another export using it?",
                     d->spec, strerror(-r));
            goto fail;
        }
    }
    b->priv = d;
    b->align = 1;
    b->discard = c->discard_unmap && !c->readonly;
    b->write_zeroes = !c->readonly;
    b->zeroes_unmap = c->discard_unmap;
    log_info(b->name, "rbd %s as %s: %" PRIu64 " bytes, features 0x%" PRIx64 "%s", d->spec, client,
             size, features,
             c->readonly  ? ", read-only"
             : c->no_lock ? ", no lock taken"
                          : "");
    return 0;

fail:
    rbd_teardown(d);
    return r;
}

static void rbd_close_(struct vblk_bdev *b)
{
    if (b->priv)
        rbd_teardown(b->priv);
    b->priv = NULL;
}

static int rbd_flush_sync(struct vblk_bdev *b)
{
    struct rbd_dev *d = b->priv;

    /* nothing written: no flush (one would ask for the exclusive lock, which a locking=off
     * export's image may not give while another client holds it) */
    if (vblk_bdev_readonly(b) || b->cache == VBLK_CACHE_UNSAFE ||
        !__atomic_load_n(&d->written, __ATOMIC_RELAXED))
        return 0;
    return rbd_flush(d->image);
}

static int rbd_resize_(struct vblk_bdev *b, uint64_t size, bool truncate, char *err, size_t errlen)
{
    struct rbd_dev *d = b->priv;
    uint64_t have;
    int r;

    if (truncate) {
        /* shrinking: requests past the new end are refused before the objects go away */
        uint64_t old = b->size;

        if (size < old)
            __atomic_store_n(&b->size, size, __ATOMIC_RELAXED);
        r = rbd_resize(d->image, size);
        if (r < 0) {
            __atomic_store_n(&b->size, old, __ATOMIC_RELAXED);
            snprintf(err, errlen, "rbd %s: cannot resize the image to %" PRIu64 " bytes: %s",
                     d->spec, size, strerror(-r));
            return r;
        }
        have = size;
    } else {
        r = rbd_get_size(d->image, &have); /* refreshed after an `rbd resize` elsewhere */
        if (r < 0) {
            snprintf(err, errlen, "rbd %s: cannot get the image's size: %s", d->spec, strerror(-r));
            return r;
        }
    }
    if (have < size) {
        snprintf(err, errlen,
                 "rbd %s: the image holds %" PRIu64 " bytes, fewer than %" PRIu64
                 ": grow it first (rbd resize) or resize with truncate",
                 d->spec, have, size);
        return -EINVAL;
    }
    __atomic_store_n(&b->size, size, __ATOMIC_RELAXED);
    return 0;
}

static ssize_t rbd_pread_sync(struct vblk_bdev *b, void *buf, size_t len, uint64_t off)
{
    struct rbd_dev *d = b->priv;

    return rbd_read(d->image, off, len, buf); /* clipped at the end of the image */
}

const struct vblk_bdev_ops vblk_bdev_rbd = {
    .pread_sync = rbd_pread_sync,
    .name = "rbd",
    .open = rbd_open_,
    .close = rbd_close_,
    .flush_sync = rbd_flush_sync,
    .submit = rbd_submit,
    .resize = rbd_resize_,
};
