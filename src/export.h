/* export.h - one served disk: options, backing store, I/O thread, device and socket.
 *
 * Owns: bringing an export up in an order that leaves nothing half-started on failure (open the
 * backing store, bind the socket, start the I/O thread), and taking it down (stop accepting,
 * drain in-flight I/O through the device, flush, close, unlink the socket).
 * Threads: control thread only.
 */
#ifndef VBLK_EXPORT_H
#define VBLK_EXPORT_H

#include <stdbool.h>

#include "bdev/bdev.h"
#include "blk/virtio_blk.h"
#include "control/metrics.h"
#include "iothread/iothread.h"
#include "options.h"
#include "vhost/vhost_user.h"

struct vblk_export {
    struct vblk_export_opts opts;
    struct vblk_bdev *bdev;                        /* top of the driver stack */
    struct vblk_iothread *iot[VBLK_MAX_IOTHREADS]; /* queue q is served by iot[q % n] */
    unsigned niot;
    struct vblk_blk_dev blk;
    struct vblk_vu_dev vu;
    int listen_fd;
    bool blk_created;
};

/* Bring up e->opts.  0, or -errno with err describing what failed (nothing left running). */
int vblk_export_start(struct vblk_export *e, char *err, size_t errlen);
/* Disconnect the front-end (draining I/O), flush, release everything. */
void vblk_export_stop(struct vblk_export *e);
/* Retry requests an error policy held, take requests again; logs what it did. */
void vblk_export_resume(struct vblk_export *e);
/* The name of I/O thread i (the kernel cuts it to 15 characters). */
void vblk_export_thread_name(const struct vblk_export *e, unsigned i, char *buf, size_t cap);
/* Log the export's request counters. */
void vblk_export_log_stats(struct vblk_export *e);
/* Append the export's counters to a metrics scrape (nothing if it has no device). */
void vblk_export_metrics(struct vblk_export *e, struct vblk_metrics_out *out);

#endif
