/* main.c - vblk-bench entry point: device bring-up over vhost-user, guest memory and queues,
 * job threads and teardown.
 *
 * vblk-bench is a userspace virtio-blk front-end (it plays the guest driver) used both as a
 * benchmark driver and as a test client for any vhost-user-blk back-end.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <linux/virtio_blk.h>
#include <linux/virtio_config.h>
#include <linux/virtio_ring.h>

#include "vhost/vhost_user_proto.h"

#include "bench.h"
#include "blkq.h"
#include "gmem.h"
#include "stats.h"
#include "vhost_client.h"
#include "workload.h"

#define EXIT_FAILED 1 /* ran, but I/O errors, verify mismatches or device misbehaviour */
#define EXIT_SETUP  2 /* bad usage or the device could not be set up */

/* Config bytes we read: everything up to and including the write-zeroes fields, the size QEMU's
 * own front-end asks for; older back-ends get a second try with the pre-discard layout. */
#define CFG_SIZE_FULL 60u
#define CFG_SIZE_MIN  36u

/* ---- device bring-up ---- */

static uint64_t wanted_features(const struct options *o)
{
    uint64_t f = (1ull << VIRTIO_F_VERSION_1) | (1ull << VHOST_USER_F_PROTOCOL_FEATURES) |
                 (1ull << VIRTIO_BLK_F_SIZE_MAX) | (1ull << VIRTIO_BLK_F_SEG_MAX) |
                 (1ull << VIRTIO_BLK_F_RO) | (1ull << VIRTIO_BLK_F_BLK_SIZE) |
                 (1ull << VIRTIO_BLK_F_FLUSH) | (1ull << VIRTIO_BLK_F_TOPOLOGY) |
                 (1ull << VIRTIO_BLK_F_MQ);

    if (!o->no_indirect)
        f |= 1ull << VIRTIO_RING_F_INDIRECT_DESC;
    if (!o->no_event_idx)
        f |= 1ull << VIRTIO_RING_F_EVENT_IDX;
    if (o->packed)
        f |= 1ull << VIRTIO_F_RING_PACKED;
    return f;
}

/* Reads the virtio-blk config; without PROTOCOL_F_CONFIG, --size stands in for the capacity. */
static int dev_read_config(struct device *d, const struct options *o)
{
    int ret;

    memset(&d->cfg, 0, sizeof(d->cfg));
    ret = vhc_get_config(&d->vhc, &d->cfg, CFG_SIZE_FULL);
    if (ret == -EREMOTEIO)
        ret = vhc_get_config(&d->vhc, &d->cfg, CFG_SIZE_MIN);
    if (ret == -ENOTSUP && o->size) {
        fprintf(stderr,
                "vblk-bench: warning: no GET_CONFIG support, assuming capacity --size=%" PRIu64
                "\n",
                o->size);
        d->cfg.capacity = o->size / 512;
        return 0;
    }
    if (ret < 0) {
        fprintf(stderr, "vblk-bench: GET_CONFIG failed: %s%s\n", strerror(-ret),
                ret == -ENOTSUP ? " (back-end lacks VHOST_USER_PROTOCOL_F_CONFIG; pass --size)"
                                : "");
        return ret;
    }
    return 0;
}

/* Derives geometry from the negotiated features and config. */
static int dev_geometry(struct device *d, const struct options *o)
{
    struct vhost_client *c = &d->vhc;

    d->capacity = d->cfg.capacity * 512;
    d->blk_size =
        vhc_has_feature(c, VIRTIO_BLK_F_BLK_SIZE) && d->cfg.blk_size ? d->cfg.blk_size : 512;
    d->seg_size = o->cfg.bs;
    if (vhc_has_feature(c, VIRTIO_BLK_F_SIZE_MAX) && d->cfg.size_max >= 512 &&
        d->cfg.size_max < d->seg_size)
        d->seg_size = d->cfg.size_max;
    d->queues = c->queue_num;
    if (vhc_has_feature(c, VIRTIO_BLK_F_MQ)) {
        if (d->cfg.num_queues && d->cfg.num_queues < d->queues)
            d->queues = d->cfg.num_queues;
    } else {
        d->queues = 1;
    }
    if (d->capacity == 0) {
        fprintf(stderr, "vblk-bench: device reports zero capacity\n");
        return -EINVAL;
    }
    return 0;
}

static int dev_open(struct device *d, const struct options *o)
{
    int ret;

    ret = vhc_connect(&d->vhc, o->socket, o->verbose);
    if (ret < 0) {
        fprintf(stderr, "vblk-bench: cannot connect to %s: %s\n", o->socket, strerror(-ret));
        return ret;
    }
    ret = vhc_handshake(&d->vhc);
    if (ret < 0) {
        fprintf(stderr, "vblk-bench: vhost-user handshake failed: %s\n", strerror(-ret));
        goto err;
    }
    ret = dev_read_config(d, o);
    if (ret < 0)
        goto err;
    ret = vhc_set_features(&d->vhc, wanted_features(o));
    if (ret < 0) {
        fprintf(stderr, "vblk-bench: SET_FEATURES failed: %s\n", strerror(-ret));
        goto err;
    }
    ret = dev_geometry(d, o);
    if (ret < 0)
        goto err;
    if (o->verbose)
        fprintf(stderr,
                "vblk-bench: features offered 0x%" PRIx64 " acked 0x%" PRIx64
                ", protocol offered 0x%" PRIx64 " acked 0x%" PRIx64
                ", %u queue(s), capacity %" PRIu64 " bytes, blk_size %u, size_max %u, seg_max %u\n",
                d->vhc.dev_features, d->vhc.features, d->vhc.dev_protocol, d->vhc.protocol,
                d->queues, d->capacity, d->blk_size, d->cfg.size_max, d->cfg.seg_max);
    return 0;

err:
    vhc_close(&d->vhc);
    return ret;
}

/* Checks the options against what the device can do and fills in derived values. */
static int validate(struct options *o, const struct device *d)
{
    struct bench_cfg *c = &o->cfg;
    bool indirect = vhc_has_feature(&d->vhc, VIRTIO_RING_F_INDIRECT_DESC);
    uint16_t descs = blkq_descs_per_req(c->bs, d->seg_size);
    bool writes = c->verify != VERIFY_OFF ? c->verify != VERIFY_READ_ONLY
                                          : (c->rw != RW_READ && c->rw != RW_RANDREAD);

    if (o->packed && !vhc_has_feature(&d->vhc, VIRTIO_F_RING_PACKED)) {
        fprintf(stderr,
                "vblk-bench: --packed but the device does not offer VIRTIO_F_RING_PACKED\n");
        return -ENOTSUP;
    }
    if (c->bs % d->blk_size) {
        fprintf(stderr, "vblk-bench: --bs=%u is not a multiple of the device block size %u\n",
                c->bs, d->blk_size);
        return -EINVAL;
    }
    if (o->size > d->capacity) {
        fprintf(stderr, "vblk-bench: --size=%" PRIu64 " exceeds the capacity %" PRIu64 "\n",
                o->size, d->capacity);
        return -EINVAL;
    }
    c->range = (o->size ? o->size : d->capacity) / c->bs * c->bs;
    if (c->range / c->bs < o->numjobs) {
        fprintf(stderr,
                "vblk-bench: range of %" PRIu64 " bytes is too small for %u job(s) of bs %u\n",
                c->range, o->numjobs, c->bs);
        return -EINVAL;
    }
    if (o->numjobs > d->queues) {
        fprintf(stderr, "vblk-bench: --numjobs=%u but the device has %u queue(s)\n", o->numjobs,
                d->queues);
        return -EINVAL;
    }
    if (writes && !o->force_write && vhc_has_feature(&d->vhc, VIRTIO_BLK_F_RO)) {
        fprintf(stderr, "vblk-bench: device is read-only\n");
        return -EROFS;
    }
    if (vhc_has_feature(&d->vhc, VIRTIO_BLK_F_SEG_MAX) && d->cfg.seg_max &&
        (uint32_t)(descs - 2) > d->cfg.seg_max) {
        fprintf(stderr, "vblk-bench: --bs=%u needs %u segments, device seg_max is %u\n", c->bs,
                descs - 2, d->cfg.seg_max);
        return -EINVAL;
    }
    if (indirect ? c->iodepth > o->queue_size : c->iodepth * descs > o->queue_size) {
        fprintf(stderr, "vblk-bench: --iodepth=%u needs %u ring entries, --queue-size is %u%s\n",
                c->iodepth, indirect ? c->iodepth : c->iodepth * descs, o->queue_size,
                indirect ? "" : " (no indirect descriptors)");
        return -EINVAL;
    }
    c->flush = vhc_has_feature(&d->vhc, VIRTIO_BLK_F_FLUSH);
    c->dev_sock = d->vhc.sock;
    if (c->verify != VERIFY_OFF && !o->cfg.quiet)
        fprintf(stderr, "vblk-bench: verify %s over %" PRIu64 " bytes (%" PRIu64 " blocks)\n",
                c->verify == VERIFY_BOTH         ? "write+read"
                : c->verify == VERIFY_WRITE_ONLY ? "write phase"
                                                 : "read phase",
                c->range, c->range / c->bs);
    return 0;
}

static struct blkq_params queue_params(const struct options *o, const struct device *d)
{
    struct blkq_params p = {
        .queue_size = (uint16_t)o->queue_size,
        .nslots = (uint16_t)o->cfg.iodepth,
        .bs = o->cfg.bs,
        .seg_size = d->seg_size,
        .indirect = vhc_has_feature(&d->vhc, VIRTIO_RING_F_INDIRECT_DESC),
        .event_idx = vhc_has_feature(&d->vhc, VIRTIO_RING_F_EVENT_IDX),
        .want_calls = !o->cfg.poll,
        .packed = vhc_has_feature(&d->vhc, VIRTIO_F_RING_PACKED),
    };

    return p;
}

/* Builds guest memory, the queues and the jobs, and hands everything to the back-end. */
static int setup_jobs(const struct options *o, struct device *d, struct gmem *mem, struct job *jobs)
{
    struct blkq_params p = queue_params(o, d);
    uint64_t nblocks = o->cfg.range / o->cfg.bs;
    unsigned n = o->numjobs;
    int ret;

    ret = gmem_create(mem, blkq_mem_bytes(&p) * n);
    if (ret < 0) {
        fprintf(stderr, "vblk-bench: cannot create guest memory: %s\n", strerror(-ret));
        return ret;
    }
    for (unsigned i = 0; i < n; i++) {
        uint64_t start = nblocks * i / n * o->cfg.bs, end = nblocks * (i + 1) / n * o->cfg.bs;
        uint64_t ios = o->ios ? o->ios / n + (i < o->ios % n) : 0;

        ret = blkq_init(&jobs[i].q, mem, &p);
        if (ret == 0)
            ret = job_init(&jobs[i], i, &o->cfg, start, end, ios);
        if (ret < 0) {
            fprintf(stderr, "vblk-bench: job %u setup failed: %s\n", i, strerror(-ret));
            return ret;
        }
    }
    ret = vhc_set_mem_table(&d->vhc, mem->fd, mem->size, mem->base);
    if (ret < 0) {
        fprintf(stderr, "vblk-bench: SET_MEM_TABLE failed: %s\n", strerror(-ret));
        return ret;
    }
    for (unsigned i = 0; i < n; i++) {
        struct virtq *vq = &jobs[i].q.vq;

        ret = vhc_setup_vring(&d->vhc, i, vq->num, virtq_base(vq), vq->desc, vq->avail, vq->used,
                              vq->kickfd, vq->callfd);
        if (ret == 0)
            ret = vhc_enable_vring(&d->vhc, i, true);
        if (ret < 0) {
            fprintf(stderr, "vblk-bench: setting up vring %u failed: %s\n", i, strerror(-ret));
            return ret;
        }
    }
    return 0;
}

static void teardown_jobs(const struct options *o, struct device *d, struct job *jobs, bool started)
{
    for (unsigned i = 0; i < o->numjobs; i++) {
        uint32_t base;

        if (started && vhc_get_vring_base(&d->vhc, i, &base) == 0 &&
            (jobs[i].q.vq.packed ? base != virtq_base(&jobs[i].q.vq)
                                 : (uint16_t)base != jobs[i].q.vq.avail_idx))
            fprintf(stderr,
                    "vblk-bench: warning: queue %u: GET_VRING_BASE returned 0x%x, driver "
                    "published 0x%x\n",
                    i, base, virtq_base(&jobs[i].q.vq));
        job_fini(&jobs[i]);
        blkq_destroy(&jobs[i].q);
    }
}

/* ---- main ---- */

static void on_signal(int sig)
{
    (void)sig;
    bench_stop = 1;
}

static int run_jobs(const struct options *o, struct job *jobs)
{
    unsigned started = 0;
    int ret = 0;

    for (; started < o->numjobs; started++) {
        ret = -pthread_create(&jobs[started].thread, NULL, job_thread, &jobs[started]);
        if (ret < 0) {
            fprintf(stderr, "vblk-bench: cannot start job thread: %s\n", strerror(-ret));
            bench_stop = 1;
            break;
        }
    }
    for (unsigned i = 0; i < started; i++) {
        pthread_join(jobs[i].thread, NULL);
        if (jobs[i].err < 0 && ret == 0) {
            fprintf(stderr, "vblk-bench: job %u failed: %s\n", i, strerror(-jobs[i].err));
            ret = jobs[i].err;
        }
    }
    return ret;
}

int main(int argc, char **argv)
{
    struct sigaction sa = {.sa_handler = on_signal};
    struct options o;
    struct device d;
    struct gmem mem = {.fd = -1};
    struct job *jobs = NULL;
    struct job_stats total;
    struct verify_sum v;
    int ret, status = EXIT_SETUP;

    if (parse_args(&o, argc, argv) < 0)
        return EXIT_SETUP;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    if (dev_open(&d, &o) < 0)
        return EXIT_SETUP;
    if (validate(&o, &d) < 0)
        goto out_close;
    jobs = calloc(o.numjobs, sizeof(*jobs));
    if (!jobs)
        goto out_close;
    for (unsigned i = 0; i < o.numjobs; i++)
        jobs[i].q.vq.kickfd = jobs[i].q.vq.callfd = -1;
    if (setup_jobs(&o, &d, &mem, jobs) < 0) {
        teardown_jobs(&o, &d, jobs, false);
        goto out_mem;
    }

    ret = run_jobs(&o, jobs);
    summarize(&o, jobs, &total, &v);
    teardown_jobs(&o, &d, jobs, true);
    if (o.json)
        print_json(&o, &d, jobs, &total, &v, ret);
    else
        print_text(&o, &d, jobs, &total, &v);
    status = (ret < 0 || total.errors || v.bad_blocks) ? EXIT_FAILED : 0;

out_mem:
    gmem_destroy(&mem);
    free(jobs);
out_close:
    vhc_close(&d.vhc);
    return status;
}
