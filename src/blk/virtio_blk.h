/* virtio_blk.h - the virtio-blk device: requests in, I/O out, status back.
 *
 * Owns: feature bits and config space of an export, the per-queue request table (one
 * preallocated request and iovec slice per ring head), request parsing and validation
 * (header, direction, limits, ranges, read-only), mapping requests to engine I/O, completion to
 * the used ring, and queue start/stop/call-fd changes handed to the I/O thread.
 *
 * Threads: vblk_blk_create/destroy, the queue control functions and config accessors run on the
 * control thread; they reach the data plane only through vblk_iothread_call(), except
 * vblk_blk_read_stats(), which only loads the queues' single-writer counters.  Everything else
 * runs on the device's I/O thread.
 */
#ifndef VBLK_VIRTIO_BLK_H
#define VBLK_VIRTIO_BLK_H

#include <linux/virtio_blk.h>
#include <stdbool.h>
#include <stdint.h>

#include "bdev/bdev.h"
#include "engine/engine.h"
#include "iothread/iothread.h"
#include "util/lathist.h"
#include "virtq/virtq.h"

#define VBLK_SEG_MAX       254        /* data segments per request */
#define VBLK_SIZE_MAX      (1u << 20) /* bytes per descriptor */
#define VBLK_IOV_SLACK     8          /* iovecs for header/status and region splits */
#define VBLK_MAX_DISCARD   (1u << 22) /* sectors per discard/write-zeroes (2 GiB) */
#define VBLK_PUBLISH_CHUNK 8          /* completions published together while a batch goes on */
#define VBLK_QUEUE_BUDGET  256        /* requests taken from one queue per loop iteration */
#define VBLK_LAT_SLICE     64 /* completions published during a pass between two clock reads */

struct vblk_blk_dev;
struct blk_queue;

/* What a failed request does (QEMU's rerror=/werror=): reads follow rerror, everything else
 * werror. */
enum vblk_error_policy {
    VBLK_ERR_REPORT, /* the guest gets IOERR */
    VBLK_ERR_IGNORE, /* the guest is told it worked */
    VBLK_ERR_STOP,   /* the request is held and its queue paused until vblk_blk_resume() */
    VBLK_ERR_ENOSPC, /* stop on ENOSPC, report anything else */
};

/* Request types as counted (the first five are enum vblk_bdev_op's, in its order). */
enum vblk_blk_op {
    VBLK_OP_READ,
    VBLK_OP_WRITE,
    VBLK_OP_FLUSH,
    VBLK_OP_DISCARD,
    VBLK_OP_WRITE_ZEROES,
    VBLK_OP_GET_ID,
    VBLK_OP_OTHER, /* unknown types, and chains too broken to have a type */
    VBLK_OP_COUNT,
};
/* Latency is kept per class: reads, writes, flushes, everything else. */
enum { VBLK_LAT_READ, VBLK_LAT_WRITE, VBLK_LAT_FLUSH, VBLK_LAT_OTHER, VBLK_LAT_CLASSES };

extern const char *const vblk_blk_op_names[VBLK_OP_COUNT]; /* "read", ..., "get-id", "other" */
extern const char
    *const vblk_blk_lat_names[VBLK_LAT_CLASSES]; /* "read", "write", "flush", "other" */

/*
 * A queue's counters.  The live copy in each blk_queue is written by that queue's I/O thread
 * only, with relaxed atomic stores (single writer, no locked instruction), and read by the
 * control thread with relaxed loads (vblk_blk_read_stats): no call into the I/O thread, so a
 * stuck thread never blocks a reader.  Counters never go back, across front-end reconnections
 * too.  A snapshot is not one instant: each field is exact, fields may be from slightly
 * different moments.
 */
struct vblk_blk_stats {
    uint64_t requests;             /* taken off the rings */
    uint64_t ops[VBLK_OP_COUNT];   /* requests by type (they add up to requests) */
    uint64_t bytes[VBLK_OP_COUNT]; /* bytes of the requests handed to storage, by type */
    uint64_t errors, unsupp;       /* completed with IOERR / UNSUPP */
    uint64_t held, ignored;        /* failures held by a stop policy / hidden by ignore */
    uint64_t inflight;             /* taken and not completed yet (a gauge) */
    /* from taking a request off the ring (one timestamp per pass of the I/O thread) to
     * publishing its completion (one timestamp per end of batch) */
    struct vblk_lat_hist lat[VBLK_LAT_CLASSES];
    /* export level, filled by the caller (the throttle filter), never by this module */
    uint64_t throttled;    /* requests a throttle delayed */
    uint64_t throttled_ns; /* time they spent waiting for it */
};

struct blk_req {
    struct vblk_bdev_req breq;
    struct blk_queue *q;
    uint8_t *status;   /* guest byte, NULL if the chain had none */
    uint32_t used_len; /* bytes reported on the used ring */
    uint16_t head;
    uint8_t type; /* VIRTIO_BLK_T_* (low byte) */
    /* when its pass took it off the ring (vblk_iothread_now) << 2 | its VBLK_LAT_* class */
    uint64_t lat_rec;
    bool busy;
    struct blk_req *next_held; /* on its queue's held list (error policy stop) */
    uint16_t in_first, in_cnt; /* the writable part of iov (dirty logging) */
    struct iovec *iov;         /* this head's slice of the queue's iovec pool */
};

/* n completions with the same start time and latency class, timed at the end of the batch */
struct blk_lat_run {
    uint64_t rec; /* start_ns << 2 | class */
    uint64_t n;
};

struct blk_queue {
    struct vblk_vq vq;
    struct vblk_blk_dev *dev;
    struct vblk_iothread *iot;   /* the thread serving this queue (the device's by default) */
    struct vblk_engine *eng;     /* its engine (the thread's; set directly in tests) */
    struct vblk_blk_stats stats; /* written by its I/O thread only (see vblk_blk_stats) */
    unsigned index;
    struct blk_req *reqs; /* one per head */
    uint16_t *resubmit;   /* heads a previous daemon left in flight, taken first at start */
    unsigned nresubmit;
    struct iovec *iov_pool;
    struct iovec *spare_iov; /* packed: walked into, then traded for the request's iov */
    unsigned iov_cap;
    unsigned inflight;
    struct blk_lat_run *lat_pending;     /* completions not yet timed, as runs */
    unsigned lat_last[VBLK_LAT_CLASSES]; /* each class's current run in lat_pending */
    struct blk_lat_run *lat_cur;         /* the run last added to, or NULL */
    unsigned nlat_pending, lat_cap;
    int kick_fd, call_fd, err_fd;
    bool started;
    bool stopping;
    bool paused;          /* an error policy stopped it: no new requests until resumed */
    struct blk_req *held; /* requests that failed under a stop policy, to retry on resume */
    uint8_t *log;         /* dirty log while the front-end migrates, else NULL */
    uint64_t log_size;
    bool log_used;
    uint64_t log_used_gpa;
    bool broken_reported;
    struct vblk_iot_source kick_src;
    struct vblk_iot_hook flush_hook;
    struct vblk_iot_hook again_hook; /* the budget ran out with requests left */
    struct vblk_iot_poller poller;
};

/* Ring parameters from the front-end, in the control thread's terms. */
struct vblk_queue_params {
    const struct vblk_mem *mem;
    uint16_t num;
    uint32_t last_avail; /* split: avail index; packed: the vring base (vblk_vqp_start) */
    uint64_t desc_uva, avail_uva, used_uva; /* packed: desc ring, driver and device areas */
    int kick_fd, call_fd, err_fd;           /* owned by the caller; -1 if none */
    bool event_idx, indirect;
    bool packed; /* VIRTIO_F_RING_PACKED: no in-flight record is kept (inflight ignored) */
    struct vblk_inflight_split *inflight; /* in-flight record to keep (and resume), or NULL */
    uint8_t *log;      /* dirty log to mark what the device writes (migration), or NULL */
    uint64_t log_size; /* bytes of log */
    bool log_used;     /* also log the used ring, at log_used_gpa */
    uint64_t log_used_gpa;
};

struct vblk_blk_dev {
    const char *name;
    struct vblk_bdev *bdev;
    struct vblk_iothread *iot;
    unsigned num_queues;
    unsigned max_queue_size;
    struct blk_queue *queues;
    bool wce; /* guest-visible write cache; written by control, read by I/O (atomic) */
    enum vblk_error_policy rerror, werror; /* set before queues start */
    /* register guest memory as io_uring fixed buffers (fixed-buffers=on); set before queues
     * start */
    bool fixed_bufs;
    uint32_t bufs_failed_gen; /* I/O threads (atomic): the table whose registration failed */
    bool bufs_warned;         /* I/O threads (atomic): a failure was logged */
    uint32_t bufs_logged_gen; /* I/O threads (atomic): the table whose registration was logged */
    char serial[VIRTIO_BLK_ID_BYTES]; /* not NUL-terminated */
};

/* fixed-buffers=on registers at most this much guest memory (pinning takes ~30 ms per GiB of
 * small pages on the I/O thread, inside a bounded call) */
#define VBLK_BLK_FIXED_BUFS_MAX (64ull << 30)

/* Control thread. */
int vblk_blk_create(struct vblk_blk_dev *d, const char *name, struct vblk_bdev *bdev,
                    struct vblk_iothread *iot, unsigned num_queues, unsigned max_queue_size,
                    const char *serial);
void vblk_blk_destroy(struct vblk_blk_dev *d);
uint64_t vblk_blk_features(const struct vblk_blk_dev *d);
void vblk_blk_config(const struct vblk_blk_dev *d, struct virtio_blk_config *cfg);
/* Guest writes to config: only wce is writable.  0 or -EINVAL. */
int vblk_blk_set_config(struct vblk_blk_dev *d, uint32_t off, const uint8_t *buf, uint32_t len);
/* Back to the state a new front-end expects (write cache per cache mode). */
void vblk_blk_reset(struct vblk_blk_dev *d);
int vblk_blk_queue_start(struct vblk_blk_dev *d, unsigned qidx, const struct vblk_queue_params *p);
/* Stop taking requests, wait for in-flight ones, return the next avail index.  -ETIMEDOUT: the
 * I/O thread did not answer in time (the queue and its memory stay the thread's forever). */
int vblk_blk_queue_stop(struct vblk_blk_dev *d, unsigned qidx, uint32_t *last_avail);
int vblk_blk_queue_set_call(struct vblk_blk_dev *d, unsigned qidx, int call_fd);
/* Guest memory table m is going away (the device's queues are stopped): every I/O thread of
 * the device whose engine still holds it as fixed buffers lets it go (unpins it), so that m can
 * be unmapped.  Wedged threads are skipped (they keep m forever). */
void vblk_blk_mem_release(struct vblk_blk_dev *d, const struct vblk_mem *m);
/* Serve queue qidx on iot instead of the device's thread (before the queue starts). */
void vblk_blk_queue_set_thread(struct vblk_blk_dev *d, unsigned qidx, struct vblk_iothread *iot);
/* Retry the requests an error policy held and take requests again, on every queue.  Returns
 * how many requests were retried, or -errno. */
int vblk_blk_resume(struct vblk_blk_dev *d);
/* Read the counters without calling into the I/O threads (a stuck one does not block it):
 * per_queue (d->num_queues entries, or NULL) gets each queue's, total (or NULL) their sum (its
 * throttle fields zero).  Control thread; d must exist (vblk_blk_create .. destroy). */
void vblk_blk_read_stats(const struct vblk_blk_dev *d, struct vblk_blk_stats *per_queue,
                         struct vblk_blk_stats *total);
/* sum += s (the gauge and the histograms too; throttle fields included). */
void vblk_blk_stats_add(struct vblk_blk_stats *sum, const struct vblk_blk_stats *s);

#endif
