/* nbd.c - the "nbd" protocol driver (driver=nbd,uri=...): an NBD server through libnbd.
 *
 * open() connects synchronously on the control thread (bounded by CONNECT_TIMEOUT_MS) to learn
 * the size and what the server offers.  The first request binds the connection to the I/O
 * thread it arrives on (the driver is single_thread: one connection per export, one I/O
 * thread): the socket, a timerfd and an eventfd join that thread's loop, and from then on
 * libnbd's asynchronous API is driven from there only (nbd_aio_notify_read/write as
 * nbd_aio_get_direction asks; EPOLLOUT only while libnbd has bytes to send).  Structured
 * replies are requested; libnbd's bounds check is off (the server checks: the export may grow
 * with a resize while a connection made before it lives on).
 *
 * Requests: read/write map to NBD_CMD_READ/WRITE (split at the server's maximum block size, a
 * bounce buffer when the guest's buffer is scattered), flush to NBD_CMD_FLUSH when the server
 * can (else a no-op), discard to TRIM when it can (else a no-op: a hint), write-zeroes to
 * WRITE_ZEROES (NO_HOLE unless unmapping is allowed), offered only when the server can.  A FUA
 * write carries NBD_CMD_FLAG_FUA, or is followed by a flush when the server has no FUA.  Cache
 * modes mostly do not apply (the server caches as it likes): unsafe drops flushes and FUA;
 * writethrough and directsync come as FUA writes from above (the guest's write cache is off).
 *
 * Reconnection: when the connection fails (an error, EOF, or a request answered ESHUTDOWN: the
 * server is going away), requests on the wire come back from libnbd with ENOTCONN and are held,
 * with any that arrive meanwhile; a connector thread makes a new connection (blocking calls are its
 * own: name lookups, the handshake), waiting reconnect_ms first and twice as long after each
 * failure, up to 5 s.  The I/O thread takes the new connection (refused if the export shrank below
 * the size served, or went read-only under a writable export) and resends the held requests in
 * their order.  After timeout_s without a server the held requests fail with EIO, and so do new
 * ones until a server is back (the connector never stops trying).  A stopping queue (drain) fails
 * the held requests at once.
 *
 * r->io while the driver owns a request: io.ctx the driver, io.next the held/done list link,
 * io.fd the commands of this round still out (+1 while they are being sent), io.res the first
 * server error (positive errno), io.mode R_* flags, io.offset the bounce buffer (0: none).
 *
 * Threads: control thread: open, close, resize, flush_sync and the blocking I/O of a format's
 * open and write-back (through the I/O thread once bound, with vblk_iothread_call); I/O thread:
 * everything else; connector thread: connecting only, handing the handle over under lock.
 */
#include "bdev/bdev.h"

#include <errno.h>
#include <inttypes.h>
#include <libnbd.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#include "iothread/iothread.h"
#include "util/compiler.h"
#include "util/iov.h"
#include "util/log.h"

#define CONNECT_TIMEOUT_MS 10000u
#define MAX_DELAY_MS       5000u
#define SYNC_TIMEOUT_MS    8000u /* below VBLK_IOT_CALL_TIMEOUT_MS */
#define DATA_CHUNK         (32u << 20)
#define ZERO_CHUNK         (1u << 30)

#define R_RETRY 1u /* a command met a lost connection: resend on the next one */
#define R_FLUSH 2u /* written; the flush that makes it durable (no server FUA) is next */

struct nbd_dev {
    struct vblk_bdev *b;
    char *uri;
    unsigned timeout_s, reconnect_ms;

    /* the connection: the control thread's until bound, then the I/O thread's */
    struct nbd_handle *h;
    bool up;
    bool can_flush, can_trim, can_zero, can_fua;
    uint64_t max_data;
    int sock; /* h's fd in the loop, -1 */
    bool out; /* also watching for writability */
    /* TCP: commands of one I/O-thread batch leave in as few segments as possible (TCP_CORK
     * from the first submit to the end of the batch), as QEMU corks its NBD socket */
    bool corked, no_cork;
    struct vblk_iot_hook uncork_hook;

    struct vblk_iothread *iot; /* bound I/O thread (atomic: read by the control thread) */
    struct vblk_iot_source sock_src, tmr_src, efd_src;
    int tfd, efd;
    struct vblk_io_list done, held;
    bool busy;              /* in settle() */
    bool failfast;          /* no server for timeout_s: fail requests */
    bool drop;              /* the server said ESHUTDOWN: end this connection */
    uint64_t down_since;    /* ns */
    uint64_t sync_deadline; /* ns, a blocking call from the control thread waits until */

    /* connector thread (lock: want, stop's writes, ready, delay_ms) */
    pthread_t thr;
    bool thr_started;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    bool want;
    int stop; /* atomic */
    struct nbd_handle *ready;
    unsigned delay_ms;
};

static uint64_t now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static const char *nbd_err(void)
{
    const char *e = nbd_get_error();

    return e && *e ? e : "the connection was closed";
}

static bool conn_dead(struct nbd_handle *h)
{
    return nbd_aio_is_dead(h) || nbd_aio_is_closed(h);
}

/* Any thread: a new connected handle, or NULL with err set.  Gives up after
 * CONNECT_TIMEOUT_MS or when *stop turns true. */
static struct nbd_handle *connect_uri(const char *uri, const int *stop, char *err, size_t errlen)
{
    uint64_t deadline = now_ns() + CONNECT_TIMEOUT_MS * 1000000ull;
    struct nbd_handle *h = nbd_create();
    int strict;

    if (!h) {
        snprintf(err, errlen, "%s", nbd_err());
        return NULL;
    }
    nbd_set_request_structured_replies(h, true);
    nbd_set_pread_initialize(h, false);
    strict = nbd_get_strict_mode(h);
    if (strict >= 0)
        nbd_set_strict_mode(h, (uint32_t)strict & ~LIBNBD_STRICT_BOUNDS);
    if (nbd_aio_connect_uri(h, uri) < 0)
        goto fail;
    while (nbd_aio_is_connecting(h)) {
        if (stop && __atomic_load_n(stop, __ATOMIC_RELAXED)) {
            snprintf(err, errlen, "stopped");
            nbd_close(h);
            return NULL;
        }
        if (now_ns() > deadline) {
            snprintf(err, errlen, "no answer within %u s", CONNECT_TIMEOUT_MS / 1000);
            nbd_close(h);
            return NULL;
        }
        if (nbd_poll(h, 100) < 0)
            goto fail;
    }
    if (!nbd_aio_is_ready(h))
        goto fail;
    return h;
fail:
    snprintf(err, errlen, "%s", nbd_err());
    nbd_close(h);
    return NULL;
}

static void take_flags(struct nbd_dev *d, struct nbd_handle *h)
{
    int64_t max = nbd_get_block_size(h, LIBNBD_SIZE_MAXIMUM);

    d->can_flush = nbd_can_flush(h) == 1;
    d->can_trim = nbd_can_trim(h) == 1;
    d->can_zero = nbd_can_zero(h) == 1;
    d->can_fua = nbd_can_fua(h) == 1;
    d->max_data = max > 0 && (uint64_t)max < DATA_CHUNK ? (uint64_t)max : DATA_CHUNK;
    d->max_data -= d->max_data % d->b->lbs;
    if (!d->max_data)
        d->max_data = d->b->lbs;
}

/* Control thread, a handle no loop watches: say goodbye (NBD_CMD_DISC), briefly, and close. */
static void disconnect(struct nbd_handle *h)
{
    uint64_t deadline = now_ns() + 2000000000ull;

    if (nbd_aio_is_ready(h) && nbd_aio_disconnect(h, 0) == 0) {
        while (!conn_dead(h) && now_ns() < deadline && nbd_poll(h, 100) >= 0)
            ;
    }
    nbd_close(h);
}

/* ---- the I/O thread's side ---- */

static void settle(struct nbd_dev *d);

static void rearm(struct nbd_dev *d)
{
    struct itimerspec its = {{0, 0}, {0, 0}};
    uint64_t t = 0;

    if (d->tfd < 0)
        return;
    if (!d->up && !d->failfast && d->timeout_s && d->iot)
        t = d->down_since + d->timeout_s * 1000000000ull;
    if (d->sync_deadline && (!t || d->sync_deadline < t))
        t = d->sync_deadline;
    its.it_value.tv_sec = (time_t)(t / 1000000000ull);
    its.it_value.tv_nsec = (long)(t % 1000000000ull);
    timerfd_settime(d->tfd, TFD_TIMER_ABSTIME, &its, NULL);
}

static void want_connect(struct nbd_dev *d);

static void watch(struct nbd_dev *d)
{
    bool out;

    if (!d->up || d->sock < 0)
        return;
    out = (nbd_aio_get_direction(d->h) & LIBNBD_AIO_DIRECTION_WRITE) != 0;
    if (out != d->out && vblk_iothread_mod_fd(d->iot, d->sock, &d->sock_src, out) == 0)
        d->out = out;
}

/* The connection failed: what was on it comes back with ENOTCONN (held); reconnect. */
static void conn_lost(struct nbd_dev *d)
{
    log_err(d->b->name, "lost the connection to %s: %s; %s", d->uri, nbd_err(),
            !d->iot        ? "failing requests"
            : d->timeout_s ? "holding requests while reconnecting"
                           : "holding requests until a server is back (timeout=0)");
    if (d->sock >= 0)
        vblk_iothread_del_fd(d->iot, d->sock);
    d->sock = -1;
    d->out = false;
    nbd_close(d->h);
    d->h = NULL;
    d->up = false;
    d->down_since = now_ns();
    if (!d->iot) { /* a blocking call on the control thread: no reconnection there */
        d->failfast = true;
        return;
    }
    d->failfast = false;
    rearm(d);
    want_connect(d);
}

/* A server that answers ESHUTDOWN is going away: end the connection here (libnbd then hands
 * back what is still on it with ENOTCONN) and reconnect. */
static void drop_conn(struct nbd_dev *d)
{
    d->drop = false;
    log_info(d->b->name, "%s is shutting down: reconnecting", d->uri);
    shutdown(nbd_aio_get_fd(d->h), SHUT_RDWR);
    for (int i = 0; i < 4 && !conn_dead(d->h); i++) {
        if (nbd_aio_get_direction(d->h) & LIBNBD_AIO_DIRECTION_WRITE)
            nbd_aio_notify_write(d->h);
        else
            nbd_aio_notify_read(d->h);
    }
}

static int cmd_done(void *user_data, int *error)
{
    struct vblk_bdev_req *r = user_data;
    struct nbd_dev *d = r->io.ctx;

    if (*error == ENOTCONN || *error == ESHUTDOWN) /* lost, or the server is going away */
        r->io.mode |= R_RETRY;
    else if (*error && !r->io.res)
        r->io.res = *error;
    if (--r->io.fd == 0)
        vblk_io_list_add(&d->done, &r->io);
    return 1; /* retire: nobody asks libnbd about it again */
}

/* After an nbd_aio_* call: did it go out?  (The callback is not called when it returns -1.) */
static bool sent(struct nbd_dev *d, struct vblk_bdev_req *r, int64_t cookie)
{
    if (likely(cookie >= 0))
        return true;
    r->io.fd--;
    if (conn_dead(d->h)) {
        r->io.mode |= R_RETRY;
    } else if (!r->io.res) {
        int e = nbd_get_errno();

        r->io.res = e > 0 ? e : EIO;
        log_err(d->b->name, "NBD request refused: %s", nbd_err());
    }
    return false;
}

static void finish(struct vblk_bdev_req *r, int ret)
{
    char *bounce = (char *)(uintptr_t)r->io.offset;

    if (bounce) {
        if (ret == 0 && r->op == VBLK_BDEV_READ)
            vblk_buf_to_iov(r->iov, r->iovcnt, bounce, r->len);
        free(bounce);
        r->io.offset = 0;
    }
    r->done(r, ret);
}

/* The data buffer of a read or write: the guest's, or a bounce buffer (scattered). */
static char *data_buf(struct vblk_bdev_req *r)
{
    char *bounce;

    if (r->iovcnt == 1 && r->iov[0].iov_len >= r->len)
        return r->iov[0].iov_base;
    if (r->io.offset)
        return (char *)(uintptr_t)r->io.offset;
    bounce = malloc(r->len);
    if (bounce && r->op == VBLK_BDEV_WRITE)
        vblk_iov_to_buf(r->iov, r->iovcnt, bounce, r->len);
    r->io.offset = (uintptr_t)bounce;
    return bounce;
}

/* Send r (or its next step) on the live connection. */
static void issue(struct nbd_dev *d, struct vblk_bdev_req *r)
{
    nbd_completion_callback cb = {.callback = cmd_done, .user_data = r};
    bool unsafe = d->b->cache == VBLK_CACHE_UNSAFE;
    struct vblk_io *io = &r->io;
    uint64_t off = r->offset, left = r->len, step;
    uint32_t flags = 0;
    int64_t c = 0;
    char *buf;

    io->fd = 1; /* while sending */
    io->res = 0;
    io->mode &= R_FLUSH;
    if (io->mode & R_FLUSH) {
        io->fd++;
        sent(d, r, nbd_aio_flush(d->h, cb, 0));
        goto out;
    }
    switch (r->op) {
    case VBLK_BDEV_READ:
    case VBLK_BDEV_WRITE:
        buf = data_buf(r);
        if (!buf) {
            io->res = ENOMEM;
            break;
        }
        if (r->op == VBLK_BDEV_WRITE && (r->flags & VBLK_BDEV_F_FUA) && d->can_fua && !unsafe)
            flags = LIBNBD_CMD_FLAG_FUA;
        for (; left; left -= step, off += step, buf += step) {
            step = left < d->max_data ? left : d->max_data;
            io->fd++;
            c = r->op == VBLK_BDEV_READ ? nbd_aio_pread(d->h, buf, step, off, cb, 0)
                                        : nbd_aio_pwrite(d->h, buf, step, off, cb, flags);
            if (!sent(d, r, c))
                break;
        }
        break;
    case VBLK_BDEV_FLUSH:
        if (d->can_flush && !unsafe && !vblk_bdev_readonly(d->b)) {
            io->fd++;
            sent(d, r, nbd_aio_flush(d->h, cb, 0));
        }
        break;
    case VBLK_BDEV_DISCARD:
    case VBLK_BDEV_WRITE_ZEROES:
        if (r->op == VBLK_BDEV_DISCARD ? !d->can_trim : !d->can_zero) {
            /* discard is a hint; write-zeroes was offered by an earlier connection */
            io->res = r->op == VBLK_BDEV_DISCARD ? 0 : EOPNOTSUPP;
            break;
        }
        if (r->op == VBLK_BDEV_WRITE_ZEROES &&
            !((r->flags & VBLK_BDEV_F_UNMAP) && d->b->zeroes_unmap))
            flags = LIBNBD_CMD_FLAG_NO_HOLE;
        for (; left; left -= step, off += step) {
            step = left < ZERO_CHUNK ? left : ZERO_CHUNK;
            io->fd++;
            c = r->op == VBLK_BDEV_DISCARD ? nbd_aio_trim(d->h, step, off, cb, 0)
                                           : nbd_aio_zero(d->h, step, off, cb, flags);
            if (!sent(d, r, c))
                break;
        }
        break;
    default:
        io->res = EOPNOTSUPP;
        break;
    }
out:
    if (--io->fd == 0)
        vblk_io_list_add(&d->done, io);
}

/* Send r, hold it while there is no server, or fail it after the timeout. */
static void route(struct nbd_dev *d, struct vblk_bdev_req *r)
{
    if (d->up)
        issue(d, r);
    else if (d->failfast)
        finish(r, -EIO);
    else
        vblk_io_list_add(&d->held, &r->io);
}

static void handle_done(struct nbd_dev *d, struct vblk_bdev_req *r)
{
    struct vblk_io *io = &r->io;

    if (io->mode & R_RETRY) {
        vblk_io_list_add(&d->held, io);
        if (d->up && !conn_dead(d->h))
            d->drop = true; /* ESHUTDOWN: not on this connection again */
        return;
    }
    if (io->res) {
        finish(r, -(int)io->res);
        return;
    }
    if (r->op == VBLK_BDEV_WRITE && (r->flags & VBLK_BDEV_F_FUA) && !(io->mode & R_FLUSH) &&
        !d->can_fua && d->can_flush && d->b->cache != VBLK_CACHE_UNSAFE) {
        io->mode |= R_FLUSH;
        route(d, r);
        return;
    }
    finish(r, 0);
}

/* After anything happened: notice a dead connection, complete what came back, (re)send what is
 * held when a server is there.  Re-entered from a completion (a driver above submits): the
 * outer call goes on. */
static void settle(struct nbd_dev *d)
{
    if (d->busy)
        return;
    d->busy = true;
    for (;;) {
        struct vblk_io *io;

        if (d->up && d->drop)
            drop_conn(d);
        if (d->up && conn_dead(d->h))
            conn_lost(d);
        if (d->done.head) {
            io = vblk_io_list_pop(&d->done);
            handle_done(d, container_of(io, struct vblk_bdev_req, io));
            continue;
        }
        if (d->held.head && (d->up || d->failfast)) {
            io = vblk_io_list_pop(&d->held);
            route(d, container_of(io, struct vblk_bdev_req, io));
            continue;
        }
        break;
    }
    watch(d);
    d->busy = false;
}

static void sock_ready(struct vblk_iot_source *src)
{
    struct nbd_dev *d = container_of(src, struct nbd_dev, sock_src);
    unsigned dir;

    if (!d->up)
        return;
    /* only what happened: a read notification while a write payload is half sent makes libnbd
     * pause the payload for a reply the server cannot send before the payload ends */
    dir = nbd_aio_get_direction(d->h);
    if ((src->revents & (EPOLLOUT | EPOLLERR | EPOLLHUP)) && (dir & LIBNBD_AIO_DIRECTION_WRITE))
        nbd_aio_notify_write(d->h);
    dir = conn_dead(d->h) ? 0 : nbd_aio_get_direction(d->h);
    if ((src->revents & (EPOLLIN | EPOLLERR | EPOLLHUP)) && (dir & LIBNBD_AIO_DIRECTION_READ))
        nbd_aio_notify_read(d->h);
    settle(d);
}

static void timer_fired(struct vblk_iot_source *src)
{
    struct nbd_dev *d = container_of(src, struct nbd_dev, tmr_src);
    uint64_t ticks, now = now_ns();

    if (read(d->tfd, &ticks, sizeof(ticks)) < 0) {
        /* EAGAIN: re-armed meanwhile */
    }
    if (!d->up && !d->failfast && d->timeout_s &&
        now >= d->down_since + d->timeout_s * 1000000000ull) {
        d->failfast = true;
        log_err(d->b->name,
                "no NBD server for %u s: held requests fail with EIO, and new ones until %s is "
                "back",
                d->timeout_s, d->uri);
    }
    rearm(d);
    settle(d);
}

/* The connector made a connection. */
static void conn_ready(struct vblk_iot_source *src)
{
    struct nbd_dev *d = container_of(src, struct nbd_dev, efd_src);
    struct nbd_handle *h;
    eventfd_t v;
    int64_t size;
    unsigned held = 0;

    (void)eventfd_read(d->efd, &v);
    pthread_mutex_lock(&d->lock);
    h = d->ready;
    d->ready = NULL;
    pthread_mutex_unlock(&d->lock);
    if (!h)
        return;
    if (d->up) {
        nbd_close(h);
        return;
    }
    size = nbd_get_size(h);
    if (size < 0 || (uint64_t)size < vblk_bdev_size(d->b) ||
        (!vblk_bdev_readonly(d->b) && nbd_is_read_only(h) == 1)) {
        if (size >= 0 && (uint64_t)size < vblk_bdev_size(d->b))
            log_err(d->b->name,
                    "%s now has %" PRId64 " bytes, fewer than the %" PRIu64
                    " served: not using it (retrying)",
                    d->uri, size, vblk_bdev_size(d->b));
        else
            log_err(d->b->name, "%s is read-only now: not using it (retrying)", d->uri);
        nbd_close(h);
        want_connect(d);
        return;
    }
    d->h = h;
    d->sock = nbd_aio_get_fd(h);
    d->out = false;
    if (d->sock < 0 || vblk_iothread_add_fd(d->iot, d->sock, &d->sock_src) < 0) {
        log_err(d->b->name, "cannot watch the new connection to %s", d->uri);
        d->sock = -1;
        nbd_close(h);
        d->h = NULL;
        want_connect(d);
        return;
    }
    take_flags(d, h);
    d->up = true;
    d->failfast = false;
    rearm(d);
    pthread_mutex_lock(&d->lock);
    d->delay_ms = d->reconnect_ms;
    pthread_mutex_unlock(&d->lock);
    for (struct vblk_io *io = d->held.head; io; io = io->next)
        held++;
    log_info(d->b->name, "reconnected to %s after %.1f s; %u held request%s sent again", d->uri,
             (double)(now_ns() - d->down_since) / 1e9, held, held == 1 ? "" : "s");
    settle(d);
}

/* The first call from an I/O thread: the connection and its timers join this thread's loop. */
static int bind_thread(struct nbd_dev *d)
{
    struct vblk_iothread *t = vblk_iothread_self();

    if (d->iot) {
        log_err(d->b->name, "nbd: a request from a second I/O thread (use iothreads=1)");
        return -EIO;
    }
    if (vblk_iothread_add_fd(t, d->tfd, &d->tmr_src) < 0)
        return -EIO;
    if (vblk_iothread_add_fd(t, d->efd, &d->efd_src) < 0) {
        vblk_iothread_del_fd(t, d->tfd);
        return -EIO;
    }
    __atomic_store_n(&d->iot, t, __ATOMIC_RELEASE);
    if (d->up) {
        d->sock = nbd_aio_get_fd(d->h);
        if (d->sock >= 0 && vblk_iothread_add_fd(t, d->sock, &d->sock_src) == 0) {
            watch(d);
        } else {
            d->sock = -1;
            nbd_close(d->h);
            d->h = NULL;
            d->up = false;
        }
    }
    if (!d->up) { /* lost during a blocking call before: reconnect now */
        d->failfast = false;
        d->down_since = now_ns();
        rearm(d);
        want_connect(d);
    }
    return 0;
}

static void uncork(struct vblk_iot_hook *h)
{
    struct nbd_dev *d = container_of(h, struct nbd_dev, uncork_hook);
    int off = 0;

    d->corked = false;
    if (d->sock >= 0)
        (void)setsockopt(d->sock, IPPROTO_TCP, TCP_CORK, &off, sizeof(off));
}

static void cork(struct nbd_dev *d)
{
    int on = 1;

    if (d->corked || d->no_cork || d->sock < 0)
        return;
    if (setsockopt(d->sock, IPPROTO_TCP, TCP_CORK, &on, sizeof(on)) < 0) {
        d->no_cork = true; /* a unix socket */
        return;
    }
    d->corked = true;
    d->uncork_hook.fn = uncork;
    vblk_iothread_defer(d->iot, &d->uncork_hook);
}

static void nbd_submit(struct vblk_bdev *b, struct vblk_engine *eng, struct vblk_bdev_req *r)
{
    struct nbd_dev *d = b->priv;

    if (unlikely(d->iot != vblk_iothread_self()) && bind_thread(d) < 0) {
        r->done(r, -EIO);
        return;
    }
    r->io.ctx = d;
    r->io.engine = eng;
    r->io.offset = 0;
    r->io.mode = 0;
    r->io.res = 0;
    if ((r->op == VBLK_BDEV_READ || r->op == VBLK_BDEV_WRITE || r->op == VBLK_BDEV_DISCARD ||
         r->op == VBLK_BDEV_WRITE_ZEROES) &&
        r->len == 0) {
        r->done(r, 0);
        return;
    }
    if (d->up)
        cork(d);
    route(d, r);
    settle(d);
}

static void nbd_drain(struct vblk_bdev *b, struct vblk_engine *eng)
{
    struct nbd_dev *d = b->priv;
    unsigned n = 0;

    if (!d->iot || d->iot != vblk_iothread_self())
        return;
    while (d->held.head) {
        finish(container_of(vblk_io_list_pop(&d->held), struct vblk_bdev_req, io), -EIO);
        n++;
    }
    if (n)
        log_err(b->name, "a queue stops without an NBD server: %u held request%s fail with EIO", n,
                n == 1 ? "" : "s");
    settle(d);
}

/* ---- the connector thread ---- */

static void *connector(void *arg)
{
    struct nbd_dev *d = arg;
    char err[512], last[512] = "";
    struct timespec ts;

    pthread_mutex_lock(&d->lock);
    while (!d->stop) {
        struct nbd_handle *h;
        uint64_t t;

        if (!d->want) {
            pthread_cond_wait(&d->cond, &d->lock);
            continue;
        }
        t = now_ns() + d->delay_ms * 1000000ull;
        ts.tv_sec = (time_t)(t / 1000000000ull);
        ts.tv_nsec = (long)(t % 1000000000ull);
        while (!d->stop && now_ns() < t)
            pthread_cond_timedwait(&d->cond, &d->lock, &ts);
        if (d->stop)
            break;
        pthread_mutex_unlock(&d->lock);
        h = connect_uri(d->uri, &d->stop, err, sizeof(err));
        pthread_mutex_lock(&d->lock);
        if (h) {
            if (d->stop) {
                nbd_close(h);
                break;
            }
            if (d->ready)
                nbd_close(d->ready);
            d->ready = h;
            d->want = false;
            last[0] = 0;
            (void)eventfd_write(d->efd, 1);
            continue;
        }
        if (strcmp(err, last)) /* each new reason once */
            log_err(d->b->name, "reconnecting to %s: %s; trying again (at most every %u s)", d->uri,
                    err, MAX_DELAY_MS / 1000);
        snprintf(last, sizeof(last), "%s", err);
        d->delay_ms = d->delay_ms * 2 > MAX_DELAY_MS ? MAX_DELAY_MS : d->delay_ms * 2;
    }
    pthread_mutex_unlock(&d->lock);
    return NULL;
}

static void want_connect(struct nbd_dev *d)
{
    pthread_mutex_lock(&d->lock);
    d->want = true;
    if (!d->thr_started) {
        if (pthread_create(&d->thr, NULL, connector, d) == 0)
            d->thr_started = true;
        else
            log_err(d->b->name, "cannot start the NBD reconnection thread");
    }
    pthread_cond_signal(&d->cond);
    pthread_mutex_unlock(&d->lock);
}

/* ---- blocking calls from the control thread ---- */

struct sreq {
    struct vblk_bdev_req r;
    struct iovec iov;
    struct nbd_dev *d;
    bool started, finished, abandoned;
    int ret;
    uint64_t deadline;
    char data[];
};

static void sreq_done(struct vblk_bdev_req *r, int ret)
{
    struct sreq *s = container_of(r, struct sreq, r);

    if (s->abandoned) {
        free(s);
        return;
    }
    s->ret = ret;
    s->finished = true;
}

/* I/O thread: start s, then wait (-EINPROGRESS) for it, until its deadline. */
static int sreq_fn(void *arg)
{
    struct sreq *s = arg;
    struct nbd_dev *d = s->d;

    if (!s->started) {
        s->started = true;
        s->deadline = now_ns() + SYNC_TIMEOUT_MS * 1000000ull;
        d->sync_deadline = s->deadline;
        rearm(d);
        nbd_submit(d->b, vblk_iothread_engine(d->iot), &s->r);
    }
    if (!s->finished && now_ns() < s->deadline)
        return -EINPROGRESS;
    d->sync_deadline = 0;
    rearm(d);
    if (!s->finished) {
        s->abandoned = true; /* sreq_done frees it */
        return -ETIMEDOUT;
    }
    return 0;
}

/* Control thread, nothing in flight: one request, waited for.  The result, or -errno. */
static int sync_io(struct nbd_dev *d, uint8_t op, void *buf, size_t len, uint64_t off)
{
    struct vblk_iothread *t = __atomic_load_n(&d->iot, __ATOMIC_ACQUIRE);
    struct sreq *s = calloc(1, sizeof(*s) + len);
    int r;

    if (!s)
        return -ENOMEM;
    s->d = d;
    s->iov.iov_base = s->data;
    s->iov.iov_len = len;
    s->r.op = op;
    s->r.iov = &s->iov;
    s->r.iovcnt = 1;
    s->r.offset = off;
    s->r.len = len;
    s->r.done = sreq_done;
    if (op == VBLK_BDEV_WRITE)
        memcpy(s->data, buf, len);
    if (t) {
        r = vblk_iothread_call(t, sreq_fn, s);
        if (r < 0)
            return r; /* s is the I/O thread's now (freed when it completes) */
    } else {
        uint64_t deadline = now_ns() + SYNC_TIMEOUT_MS * 1000000ull;

        nbd_submit(d->b, NULL, &s->r);
        while (!s->finished) {
            if (now_ns() > deadline) {
                s->abandoned = true;
                return -ETIMEDOUT;
            }
            if (!d->up && !d->failfast)
                d->failfast = true; /* no reconnection on the control thread */
            if (d->up && nbd_poll(d->h, 100) < 0 && !conn_dead(d->h))
                break;
            settle(d);
        }
        if (!s->finished) {
            s->abandoned = true;
            return -EIO;
        }
    }
    r = s->ret;
    if (r == 0 && op == VBLK_BDEV_READ)
        memcpy(buf, s->data, len);
    free(s);
    return r;
}

static ssize_t nbd_pread_sync(struct vblk_bdev *b, void *buf, size_t len, uint64_t off)
{
    struct nbd_dev *d = b->priv;
    uint64_t size = vblk_bdev_size(b);
    int r;

    if (off >= size)
        return 0;
    if (len > size - off)
        len = (size_t)(size - off);
    r = sync_io(d, VBLK_BDEV_READ, buf, len, off);
    return r < 0 ? r : (ssize_t)len;
}

static int nbd_pwrite_sync(struct vblk_bdev *b, const void *buf, size_t len, uint64_t off)
{
    return sync_io(b->priv, VBLK_BDEV_WRITE, (void *)buf, len, off);
}

/* I/O thread, nothing in flight: the connection leaves this thread's loop (it is about to be
 * destroyed); blocking calls after this run on the control thread. */
static int unbind_fn(void *arg)
{
    struct nbd_dev *d = arg;

    if (d->sock >= 0)
        vblk_iothread_del_fd(d->iot, d->sock);
    vblk_iothread_del_fd(d->iot, d->tfd);
    vblk_iothread_del_fd(d->iot, d->efd);
    d->sock = -1;
    d->out = false;
    d->sync_deadline = 0;
    if (!d->up)
        d->failfast = true; /* no reconnection on the control thread */
    __atomic_store_n(&d->iot, NULL, __ATOMIC_RELEASE);
    rearm(d);
    return 0;
}

/* Shutdown (the I/O thread is still there): flush, then take the connection back from the
 * I/O thread, for close() (and a format's final write-back) on the control thread. */
static int nbd_flush_sync(struct vblk_bdev *b)
{
    struct nbd_dev *d = b->priv;
    struct vblk_iothread *t;
    int r = 0;

    if (!b->readonly && b->cache != VBLK_CACHE_UNSAFE && d->can_flush)
        r = sync_io(d, VBLK_BDEV_FLUSH, NULL, 0, 0);
    t = __atomic_load_n(&d->iot, __ATOMIC_ACQUIRE);
    if (t && vblk_iothread_call(t, unbind_fn, d) < 0)
        log_err(b->name, "cannot take the NBD connection back from the I/O thread");
    return r;
}

/* ---- open, close, resize ---- */

static void dev_free(struct nbd_dev *d)
{
    if (d->tfd >= 0)
        close(d->tfd);
    if (d->efd >= 0)
        close(d->efd);
    pthread_mutex_destroy(&d->lock);
    pthread_cond_destroy(&d->cond);
    free(d->uri);
    free(d);
}

static int nbd_open(struct vblk_bdev *b, const struct vblk_bdev_conf *c, char *err, size_t errlen)
{
    struct nbd_dev *d = calloc(1, sizeof(*d));
    pthread_condattr_t ca;
    char why[512];
    int64_t size, pref;
    int r;

    if (!d) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    d->b = b;
    d->sock = d->tfd = d->efd = -1;
    d->timeout_s = c->timeout_s;
    d->reconnect_ms = d->delay_ms = c->reconnect_ms ? c->reconnect_ms : 1;
    d->sock_src.fn = sock_ready;
    d->tmr_src.fn = timer_fired;
    d->efd_src.fn = conn_ready;
    vblk_io_list_init(&d->done);
    vblk_io_list_init(&d->held);
    pthread_mutex_init(&d->lock, NULL);
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&d->cond, &ca);
    pthread_condattr_destroy(&ca);
    d->uri = strdup(c->uri ? c->uri : "");
    d->tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    d->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (!d->uri || d->tfd < 0 || d->efd < 0) {
        snprintf(err, errlen, "out of memory or file descriptors");
        r = -ENOMEM;
        goto fail;
    }
    b->priv = d;
    d->h = connect_uri(d->uri, NULL, why, sizeof(why));
    if (!d->h) {
        snprintf(err, errlen, "cannot connect to %s: %s", d->uri, why);
        r = -EIO;
        goto fail;
    }
    d->up = true;
    size = nbd_get_size(d->h);
    if (size < 0) {
        snprintf(err, errlen, "%s: cannot get the size: %s", d->uri, nbd_err());
        r = -EIO;
        goto fail_conn;
    }
    if (nbd_is_read_only(d->h) == 1 && !c->readonly) {
        snprintf(err, errlen,
                 "the NBD server offers %s read-only: export it with readonly=on (or make the "
                 "server's export writable)",
                 d->uri);
        r = -EROFS;
        goto fail_conn;
    }
    b->size = (uint64_t)size - (uint64_t)size % b->lbs;
    if (b->size == 0 && c->format == VBLK_FORMAT_RAW) {
        snprintf(err, errlen, "%s is smaller than one %u-byte block (%" PRId64 " bytes)", d->uri,
                 b->lbs, size);
        r = -EINVAL;
        goto fail_conn;
    }
    if ((uint64_t)size != b->size)
        log_warn(c->name, "%s: the last %" PRIu64 " bytes (less than a block) are not served",
                 d->uri, (uint64_t)size - b->size);
    take_flags(d, d->h);
    pref = nbd_get_block_size(d->h, LIBNBD_SIZE_PREFERRED);
    for (int64_t v = b->lbs; pref > 0 && pref <= 65536 && v < pref; v <<= 1)
        b->phys_exp++;
    b->align = 1;
    b->discard = d->can_trim && c->discard_unmap && !c->readonly;
    b->write_zeroes = d->can_zero && !c->readonly;
    b->zeroes_unmap = c->discard_unmap;
    log_info(c->name,
             "connected to %s: %" PRId64 " bytes%s, flush %s, trim %s, write-zeroes %s, fua %s",
             d->uri, size, nbd_is_read_only(d->h) == 1 ? " read-only" : "",
             d->can_flush ? "yes" : "no", d->can_trim ? "yes" : "no", d->can_zero ? "yes" : "no",
             d->can_fua ? "yes" : "no (a flush after FUA writes)");
    return 0;

fail_conn:
    nbd_close(d->h);
fail:
    b->priv = NULL;
    dev_free(d);
    return r;
}

/* Control thread, the I/O thread gone (or never bound): stop reconnecting, say goodbye. */
static void nbd_close_dev(struct vblk_bdev *b)
{
    struct nbd_dev *d = b->priv;

    if (!d)
        return;
    pthread_mutex_lock(&d->lock);
    __atomic_store_n(&d->stop, 1, __ATOMIC_RELAXED);
    pthread_cond_signal(&d->cond);
    pthread_mutex_unlock(&d->lock);
    if (d->thr_started)
        pthread_join(d->thr, NULL);
    if (d->ready)
        nbd_close(d->ready);
    if (d->h) {
        if (d->up && !conn_dead(d->h))
            disconnect(d->h);
        else
            nbd_close(d->h);
    }
    b->priv = NULL;
    dev_free(d);
}

static int nbd_resize(struct vblk_bdev *b, uint64_t size, bool truncate, char *err, size_t errlen)
{
    struct nbd_dev *d = b->priv;
    struct nbd_handle *h;
    char why[512];
    int64_t have;

    if (truncate) {
        snprintf(err, errlen,
                 "an NBD export cannot be truncated from here: grow it on the "
                 "server, then resize without truncate");
        return -ENOTSUP;
    }
    /* a fresh connection: the live one knows the size of its handshake only */
    h = connect_uri(d->uri, NULL, why, sizeof(why));
    if (!h) {
        snprintf(err, errlen, "cannot connect to %s to read its size: %s", d->uri, why);
        return -EIO;
    }
    have = nbd_get_size(h);
    disconnect(h);
    if (have < 0) {
        snprintf(err, errlen, "%s: cannot get the size", d->uri);
        return -EIO;
    }
    if ((uint64_t)have < size) {
        snprintf(err, errlen,
                 "the NBD export holds %" PRId64 " bytes, fewer than %" PRIu64
                 ": grow it on the server first",
                 have, size);
        return -EINVAL;
    }
    __atomic_store_n(&b->size, size, __ATOMIC_RELAXED);
    return 0;
}

const struct vblk_bdev_ops vblk_bdev_nbd = {
    .name = "nbd",
    .single_thread = true, /* one connection, driven by one I/O thread */
    .open = nbd_open,
    .close = nbd_close_dev,
    .flush_sync = nbd_flush_sync,
    .submit = nbd_submit,
    .resize = nbd_resize,
    .drain = nbd_drain,
    .pread_sync = nbd_pread_sync,
    .pwrite_sync = nbd_pwrite_sync,
};
