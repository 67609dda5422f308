/* export.c - see export.h. */
#include "export.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "util/log.h"
#include "util/unixfd.h"

void vblk_export_thread_name(const struct vblk_export *e, unsigned i, char *buf, size_t cap)
{
    if (e->opts.iothreads == 1)
        snprintf(buf, cap, "vblk-%s", e->opts.id);
    else
        snprintf(buf, cap, "vblk-%s-%u", e->opts.id, i);
}

int vblk_export_start(struct vblk_export *e, char *err, size_t errlen)
{
    const struct vblk_export_opts *o = &e->opts;
    char tname[96]; /* the thread's name is cut to 15 characters */
    struct vblk_bdev *d;
    int r;

    struct vblk_bdev_conf conf = vblk_opts_bdev_conf(o);

    e->listen_fd = -1;
    e->niot = 0;
    r = vblk_bdev_open_stack(&e->bdev, &conf, err, errlen);
    if (r < 0)
        return r;
    r = vblk_listen_unix(o->socket, err, errlen);
    if (r < 0)
        goto err_close_bdev;
    e->listen_fd = r;
    for (; e->niot < o->iothreads; e->niot++) {
        unsigned nq = (o->num_queues - e->niot + o->iothreads - 1) / o->iothreads;

        vblk_export_thread_name(e, e->niot, tname, sizeof(tname));
        r = vblk_iothread_create(&e->iot[e->niot], tname, o->engine, nq * o->queue_size, o->poll_us,
                                 VBLK_IOT_CALL_TIMEOUT_MS);
        if (r < 0) {
            snprintf(err, errlen, "cannot start the %s I/O engine: %s", o->engine->name,
                     strerror(-r));
            goto err_stop_iothreads;
        }
        if (o->ncpus) {
            int cpu = o->cpus[e->niot % o->ncpus];

            r = vblk_iothread_pin(e->iot[e->niot], cpu);
            if (r < 0) {
                snprintf(err, errlen, "iothread-cpus: cannot run I/O thread %u on CPU %d: %s",
                         e->niot, cpu, strerror(-r));
                e->niot++;
                goto err_stop_iothreads;
            }
        }
    }
    r = vblk_blk_create(&e->blk, o->id, e->bdev, e->iot[0], o->num_queues, o->queue_size,
                        o->serial);
    if (r < 0) {
        snprintf(err, errlen, "out of memory");
        goto err_stop_iothreads;
    }
    for (unsigned q = 0; q < o->num_queues; q++)
        vblk_blk_queue_set_thread(&e->blk, q, e->iot[q % e->niot]);
    e->blk.rerror = (enum vblk_error_policy)o->rerror;
    e->blk.werror = (enum vblk_error_policy)o->werror;
    /* only where guest buffers reach a file through io_uring (null, nbd and rbd would pin guest
     * memory for nothing); qcow2 passes data slices of guest memory on, found by address */
    e->blk.fixed_bufs = o->fixed_buffers && o->engine == &vblk_engine_uring &&
                        vblk_bdev_find(e->bdev, &vblk_bdev_file);
    if (o->fixed_buffers && !e->blk.fixed_bufs)
        log_info(o->id, "fixed-buffers=on ignored: only aio=io_uring file exports use them");
    e->blk_created = true;
    vblk_vu_init(&e->vu, o->id, &e->blk);
    d = e->bdev;
    /* name the storage, not the filters on it */
    while (d->child && (d->ops == &vblk_bdev_throttle || d->ops == &vblk_bdev_faulty))
        d = d->child;
    if (o->ncpus) {
        char cpus[256];

        vblk_opts_get(o, vblk_opt_find("iothread-cpus"), cpus, sizeof(cpus));
        log_info(o->id, "I/O threads pinned to CPUs %s (thread i on the i-th, cyclically)", cpus);
    }
    log_info(o->id,
             "serving %s (%s, %llu bytes%s) on %s: aio=%s cache=%s num-queues=%u iothreads=%u%s",
             o->null                         ? "null device"
             : o->protocol == VBLK_PROTO_NBD ? o->uri
             : o->protocol == VBLK_PROTO_RBD ? o->image
                                             : o->file,
             d->ops->name, (unsigned long long)e->bdev->size,
             d->child && d->child->blockdev ? " on a block device"
             : d->blockdev                  ? ", block device"
                                            : "",
             o->socket, o->null ? "none" : o->engine->name, vblk_cache_name(o->cache),
             o->num_queues, e->niot, o->readonly ? " readonly" : "");
    return 0;

err_stop_iothreads:
    while (e->niot)
        vblk_iothread_destroy(e->iot[--e->niot]);
    close(e->listen_fd);
    e->listen_fd = -1;
    unlink(o->socket);
err_close_bdev:
    vblk_bdev_close_stack(e->bdev);
    e->bdev = NULL;
    return r;
}

void vblk_export_resume(struct vblk_export *e)
{
    int n;

    if (!e->blk_created || e->vu.wedged)
        return;
    n = vblk_blk_resume(&e->blk);
    if (n > 0)
        log_info(e->opts.id, "resumed: %d held request%s retried", n, n > 1 ? "s" : "");
    else if (n < 0)
        log_err(e->opts.id, "cannot resume: %s", strerror(-n));
}

void vblk_export_log_stats(struct vblk_export *e)
{
    struct vblk_blk_stats s;
    struct vblk_lat_pct r, w;
    const uint64_t *n;

    if (!e->blk_created)
        return;
    vblk_blk_read_stats(&e->blk, NULL, &s); /* no call: a stuck I/O thread does not block it */
    n = s.ops;
    vblk_lat_percentiles(&s.lat[VBLK_LAT_READ], &r);
    vblk_lat_percentiles(&s.lat[VBLK_LAT_WRITE], &w);
    log_info(e->opts.id,
             "requests=%llu reads=%llu writes=%llu flushes=%llu discards=%llu "
             "write_zeroes=%llu get_id=%llu other=%llu errors=%llu unsupported=%llu held=%llu "
             "ignored=%llu inflight=%llu read_bytes=%llu write_bytes=%llu "
             "read_lat_us=%.1f/%.1f/%.1f/%.1f/%.1f write_lat_us=%.1f/%.1f/%.1f/%.1f/%.1f "
             "(p50/p90/p99/p99.9/max)",
             (unsigned long long)s.requests, (unsigned long long)n[VBLK_OP_READ],
             (unsigned long long)n[VBLK_OP_WRITE], (unsigned long long)n[VBLK_OP_FLUSH],
             (unsigned long long)n[VBLK_OP_DISCARD], (unsigned long long)n[VBLK_OP_WRITE_ZEROES],
             (unsigned long long)n[VBLK_OP_GET_ID], (unsigned long long)n[VBLK_OP_OTHER],
             (unsigned long long)s.errors, (unsigned long long)s.unsupp, (unsigned long long)s.held,
             (unsigned long long)s.ignored, (unsigned long long)s.inflight,
             (unsigned long long)s.bytes[VBLK_OP_READ], (unsigned long long)s.bytes[VBLK_OP_WRITE],
             r.p50, r.p90, r.p99, r.p999, r.max, w.p50, w.p90, w.p99, w.p999, w.max);
}

void vblk_export_metrics(struct vblk_export *e, struct vblk_metrics_out *out)
{
    struct vblk_blk_stats *per_queue, total;

    if (!e->blk_created)
        return;
    per_queue = calloc(e->blk.num_queues, sizeof(*per_queue));
    if (!per_queue) {
        out->fam[0].oom = true; /* the scrape fails: better than a partial one */
        return;
    }
    vblk_blk_read_stats(&e->blk, per_queue, &total); /* no call into the I/O threads */
    vblk_throttle_get_stats(e->bdev, &total.throttled_ns, &total.throttled);
    vblk_metrics_format_export(out, e->opts.id, per_queue, e->blk.num_queues, &total);
    free(per_queue);
}

void vblk_export_stop(struct vblk_export *e)
{
    int r;

    if (e->listen_fd >= 0) {
        close(e->listen_fd);
        e->listen_fd = -1;
        unlink(e->opts.socket);
    }
    if (e->blk_created) {
        vblk_vu_disconnect(&e->vu); /* waits for in-flight I/O */
        vblk_export_log_stats(e);
    }
    if (e->bdev && !e->vu.wedged) {
        r = vblk_bdev_flush_sync(e->bdev);
        if (r < 0)
            log_err(e->opts.id, "final flush failed: %s", strerror(-r));
    }
    while (e->niot)
        vblk_iothread_destroy(e->iot[--e->niot]);
    if (e->vu.wedged) {
        /* a stuck I/O thread may still touch the device and the file: leave both to it */
        log_err(e->opts.id, "not releasing the device: one of its I/O threads is stuck");
        return;
    }
    if (e->blk_created) {
        vblk_blk_destroy(&e->blk);
        e->blk_created = false;
    }
    vblk_bdev_close_stack(e->bdev);
    e->bdev = NULL;
}
