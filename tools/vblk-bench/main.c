/* main.c - vblk-bench entry point: command line, device bring-up over vhost-user, job threads,
 * teardown and the text / JSON report.
 *
 * vblk-bench is a userspace virtio-blk front-end (it plays the guest driver) used both as a
 * benchmark driver and as a test client for any vhost-user-blk back-end.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <linux/virtio_blk.h>
#include <linux/virtio_config.h>
#include <linux/virtio_ring.h>

#include "vhost/vhost_user_proto.h"

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

struct options {
    const char *socket;
    struct bench_cfg cfg;
    unsigned numjobs;
    uint64_t size;
    uint64_t ios;
    unsigned queue_size;
    bool runtime_set;
    bool json;
    bool verbose;
    bool no_indirect;
    bool no_event_idx;
};

struct device {
    struct vhost_client vhc;
    struct virtio_blk_config cfg;
    uint64_t capacity; /* bytes */
    uint32_t blk_size;
    uint32_t seg_size; /* bytes per data descriptor */
    unsigned queues;
};

static void usage(FILE *f)
{
    fprintf(
        f,
        "usage: vblk-bench --socket PATH [options]\n"
        "  --rw=MODE          randread|randwrite|randrw|read|write (default randread)\n"
        "  --rwmixread=PCT    read percentage for randrw (default 50)\n"
        "  --bs=SIZE          block size, multiple of 512 (default 4k)\n"
        "  --iodepth=N        requests in flight per job (default 32)\n"
        "  --numjobs=N        jobs; each gets one queue and one thread (default 1)\n"
        "  --runtime=SEC      run time in seconds (default 10; unlimited with --ios)\n"
        "  --ios=N            stop after N I/Os in total\n"
        "  --size=SIZE        bytes of the disk to use from offset 0 (default whole disk)\n"
        "  --verify           write every block with a stamp, then read back and compare\n"
        "  --verify-phase=P   both|write|read: run only one verify phase (implies --verify)\n"
        "  --seed=N           seed for offsets and verify stamps (default 1)\n"
        "  --poll | --wait    reap completions by polling (default) or by sleeping on the call fd\n"
        "  --queue-size=N     virtqueue entries, power of two (default 128)\n"
        "  --no-indirect      do not use indirect descriptors even if offered\n"
        "  --no-event-idx     do not negotiate VIRTIO_RING_F_EVENT_IDX\n"
        "  --json             print one JSON object instead of text\n"
        "  -v, --verbose      trace vhost-user messages and negotiated features\n"
        "exit status: 0 ok, 1 I/O errors / verify mismatches / device protocol errors,\n"
        "             2 usage or setup failure\n");
}

static int parse_size(const char *s, uint64_t *out)
{
    char *end;
    unsigned long long v;
    unsigned shift = 0;

    errno = 0;
    v = strtoull(s, &end, 0);
    if (errno || end == s)
        return -EINVAL;
    switch (*end) {
    case 'k':
    case 'K':
        shift = 10;
        end++;
        break;
    case 'm':
    case 'M':
        shift = 20;
        end++;
        break;
    case 'g':
    case 'G':
        shift = 30;
        end++;
        break;
    case 't':
    case 'T':
        shift = 40;
        end++;
        break;
    default:
        break;
    }
    if (*end == 'i' || *end == 'I')
        end++;
    if (*end == 'b' || *end == 'B')
        end++;
    if (*end || (shift && v > (UINT64_MAX >> shift)))
        return -EINVAL;
    *out = (uint64_t)v << shift;
    return 0;
}

static int parse_uint(const char *s, unsigned long long max, unsigned long long *out)
{
    char *end;

    errno = 0;
    *out = strtoull(s, &end, 0);
    if (errno || end == s || *end || *out > max)
        return -EINVAL;
    return 0;
}

static int parse_rw(const char *s, enum rw_mode *rw)
{
    static const struct {
        const char *name;
        enum rw_mode rw;
    } modes[] = {
        {"read", RW_READ},           {"write", RW_WRITE},   {"randread", RW_RANDREAD},
        {"randwrite", RW_RANDWRITE}, {"randrw", RW_RANDRW},
    };

    for (size_t i = 0; i < sizeof(modes) / sizeof(modes[0]); i++) {
        if (!strcmp(s, modes[i].name)) {
            *rw = modes[i].rw;
            return 0;
        }
    }
    return -EINVAL;
}

static const char *rw_name(enum rw_mode rw)
{
    static const char *const names[] = {"read", "write", "randread", "randwrite", "randrw"};

    return names[rw];
}

static int parse_verify_phase(const char *s, enum verify_mode *v)
{
    if (!strcmp(s, "both"))
        *v = VERIFY_BOTH;
    else if (!strcmp(s, "write"))
        *v = VERIFY_WRITE_ONLY;
    else if (!strcmp(s, "read"))
        *v = VERIFY_READ_ONLY;
    else
        return -EINVAL;
    return 0;
}

enum {
    OPT_RW = 256,
    OPT_RWMIX,
    OPT_BS,
    OPT_IODEPTH,
    OPT_NUMJOBS,
    OPT_RUNTIME,
    OPT_SIZE,
    OPT_VERIFY,
    OPT_VERIFY_PHASE,
    OPT_SEED,
    OPT_POLL,
    OPT_WAIT,
    OPT_JSON,
    OPT_IOS,
    OPT_QSIZE,
    OPT_NO_INDIRECT,
    OPT_NO_EVENT_IDX,
    OPT_SOCKET,
};

static const struct option long_opts[] = {
    {"socket", required_argument, NULL, OPT_SOCKET},
    {"rw", required_argument, NULL, OPT_RW},
    {"rwmixread", required_argument, NULL, OPT_RWMIX},
    {"bs", required_argument, NULL, OPT_BS},
    {"iodepth", required_argument, NULL, OPT_IODEPTH},
    {"numjobs", required_argument, NULL, OPT_NUMJOBS},
    {"runtime", required_argument, NULL, OPT_RUNTIME},
    {"size", required_argument, NULL, OPT_SIZE},
    {"verify", no_argument, NULL, OPT_VERIFY},
    {"verify-phase", required_argument, NULL, OPT_VERIFY_PHASE},
    {"seed", required_argument, NULL, OPT_SEED},
    {"poll", no_argument, NULL, OPT_POLL},
    {"wait", no_argument, NULL, OPT_WAIT},
    {"json", no_argument, NULL, OPT_JSON},
    {"ios", required_argument, NULL, OPT_IOS},
    {"queue-size", required_argument, NULL, OPT_QSIZE},
    {"no-indirect", no_argument, NULL, OPT_NO_INDIRECT},
    {"no-event-idx", no_argument, NULL, OPT_NO_EVENT_IDX},
    {"verbose", no_argument, NULL, 'v'},
    {"help", no_argument, NULL, 'h'},
    {NULL, 0, NULL, 0},
};

static int parse_one(struct options *o, int c, const char *arg)
{
    unsigned long long v;
    uint64_t sz;
    double sec;
    char *end;

    switch (c) {
    case OPT_SOCKET:
        o->socket = arg;
        return 0;
    case OPT_RW:
        return parse_rw(arg, &o->cfg.rw);
    case OPT_RWMIX:
        if (parse_uint(arg, 100, &v))
            return -EINVAL;
        o->cfg.rwmixread = (unsigned)v;
        return 0;
    case OPT_BS:
        if (parse_size(arg, &sz) || sz == 0 || sz % 512 || sz > (64u << 20))
            return -EINVAL;
        o->cfg.bs = (uint32_t)sz;
        return 0;
    case OPT_IODEPTH:
        if (parse_uint(arg, 32768, &v) || v == 0)
            return -EINVAL;
        o->cfg.iodepth = (uint32_t)v;
        return 0;
    case OPT_NUMJOBS:
        if (parse_uint(arg, 256, &v) || v == 0)
            return -EINVAL;
        o->numjobs = (unsigned)v;
        return 0;
    case OPT_RUNTIME:
        sec = strtod(arg, &end);
        if (end == arg || *end || sec < 0 || sec > 1e6)
            return -EINVAL;
        o->cfg.runtime_ns = (uint64_t)(sec * 1e9);
        o->runtime_set = true;
        return 0;
    case OPT_SIZE:
        return parse_size(arg, &o->size);
    case OPT_IOS:
        if (parse_uint(arg, ULLONG_MAX, &v) || v == 0)
            return -EINVAL;
        o->ios = v;
        return 0;
    case OPT_VERIFY:
        if (o->cfg.verify == VERIFY_OFF)
            o->cfg.verify = VERIFY_BOTH;
        return 0;
    case OPT_VERIFY_PHASE:
        return parse_verify_phase(arg, &o->cfg.verify);
    case OPT_SEED:
        return parse_uint(arg, ULLONG_MAX, (unsigned long long *)&o->cfg.seed);
    case OPT_POLL:
        o->cfg.poll = true;
        return 0;
    case OPT_WAIT:
        o->cfg.poll = false;
        return 0;
    case OPT_JSON:
        o->json = true;
        return 0;
    case OPT_QSIZE:
        if (parse_uint(arg, 32768, &v) || v < 2 || (v & (v - 1)))
            return -EINVAL;
        o->queue_size = (unsigned)v;
        return 0;
    case OPT_NO_INDIRECT:
        o->no_indirect = true;
        return 0;
    case OPT_NO_EVENT_IDX:
        o->no_event_idx = true;
        return 0;
    case 'v':
        o->verbose = true;
        return 0;
    default:
        return -EINVAL;
    }
}

static const char *option_name(int val)
{
    for (const struct option *opt = long_opts; opt->name; opt++)
        if (opt->val == val)
            return opt->name;
    return "?";
}

static int parse_args(struct options *o, int argc, char **argv)
{
    int c;

    memset(o, 0, sizeof(*o));
    o->cfg.rw = RW_RANDREAD;
    o->cfg.rwmixread = 50;
    o->cfg.bs = 4096;
    o->cfg.iodepth = 32;
    o->cfg.runtime_ns = 10ull * 1000000000ull;
    o->cfg.poll = true;
    o->cfg.seed = 1;
    o->cfg.gen = 1;
    o->numjobs = 1;
    o->queue_size = 128;

    while ((c = getopt_long(argc, argv, "vh", long_opts, NULL)) != -1) {
        if (c == 'h') {
            usage(stdout);
            exit(0);
        }
        if (c == '?' || parse_one(o, c, optarg) < 0) {
            if (c != '?')
                fprintf(stderr, "vblk-bench: invalid value '%s' for --%s\n", optarg ? optarg : "",
                        option_name(c));
            usage(stderr);
            return -EINVAL;
        }
    }
    if (optind < argc || !o->socket) {
        fprintf(stderr, "vblk-bench: %s\n",
                o->socket ? "unexpected argument" : "--socket is required");
        usage(stderr);
        return -EINVAL;
    }
    if (o->ios && !o->runtime_set)
        o->cfg.runtime_ns = 0;
    o->cfg.quiet = o->json;
    return 0;
}

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
    return f;
}

static int dev_read_config(struct device *d)
{
    int ret;

    memset(&d->cfg, 0, sizeof(d->cfg));
    ret = vhc_get_config(&d->vhc, &d->cfg, CFG_SIZE_FULL);
    if (ret == -EREMOTEIO)
        ret = vhc_get_config(&d->vhc, &d->cfg, CFG_SIZE_MIN);
    if (ret < 0) {
        fprintf(stderr, "vblk-bench: GET_CONFIG failed: %s%s\n", strerror(-ret),
                ret == -ENOTSUP ? " (back-end lacks VHOST_USER_PROTOCOL_F_CONFIG)" : "");
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
    ret = dev_read_config(d);
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
    if (writes && vhc_has_feature(&d->vhc, VIRTIO_BLK_F_RO)) {
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

        ret = vhc_setup_vring(&d->vhc, i, vq->num, vq->desc, vq->avail, vq->used, vq->kickfd,
                              vq->callfd);
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
            (uint16_t)base != jobs[i].q.vq.avail_idx)
            fprintf(stderr,
                    "vblk-bench: warning: queue %u: GET_VRING_BASE returned %u, driver "
                    "published %u\n",
                    i, base, jobs[i].q.vq.avail_idx);
        job_fini(&jobs[i]);
        blkq_destroy(&jobs[i].q);
    }
}

/* ---- report ---- */

static double per_sec(uint64_t v, uint64_t ns)
{
    return ns ? (double)v * 1e9 / (double)ns : 0.0;
}

static void print_text_line(const char *name, const struct job_stats *s)
{
    const struct hist *h = &s->lat;

    printf("%-6s iops=%.0f bw=%.1fMB/s ios=%" PRIu64 " (r=%" PRIu64 " w=%" PRIu64
           ") errors=%" PRIu64
           " lat(us) avg=%.1f p50=%.1f p99=%.1f p99.9=%.1f max=%.1f runtime=%.2fs"
           " kicks=%" PRIu64 " waits=%" PRIu64 "\n",
           name, per_sec(s->ios, s->runtime_ns), per_sec(s->bytes, s->runtime_ns) / 1e6, s->ios,
           s->reads, s->writes, s->errors, h->count ? (double)h->sum / (double)h->count / 1e3 : 0.0,
           (double)hist_quantile(h, 0.5) / 1e3, (double)hist_quantile(h, 0.99) / 1e3,
           (double)hist_quantile(h, 0.999) / 1e3, (double)h->max / 1e3, (double)s->runtime_ns / 1e9,
           s->kicks, s->waits);
}

static void print_json_stats(const struct job_stats *s)
{
    const struct hist *h = &s->lat;

    printf("\"iops\": %.1f, \"bw_bytes\": %.0f, \"lat_ns\": {\"avg\": %.0f, \"min\": %" PRIu64
           ", \"p50\": %" PRIu64 ", \"p99\": %" PRIu64 ", \"p999\": %" PRIu64 ", \"max\": %" PRIu64
           "}, \"ios\": %" PRIu64 ", \"reads\": %" PRIu64 ", \"writes\": %" PRIu64
           ", \"errors\": %" PRIu64 ", \"runtime_s\": %.3f, \"kicks\": %" PRIu64
           ", \"waits\": %" PRIu64 ", \"len_warnings\": %" PRIu64,
           per_sec(s->ios, s->runtime_ns), per_sec(s->bytes, s->runtime_ns),
           h->count ? (double)h->sum / (double)h->count : 0.0, h->count ? h->min : 0,
           hist_quantile(h, 0.5), hist_quantile(h, 0.99), hist_quantile(h, 0.999), h->max, s->ios,
           s->reads, s->writes, s->errors, (double)s->runtime_ns / 1e9, s->kicks, s->waits,
           s->len_warnings);
}

struct verify_sum {
    uint64_t blocks, bad_blocks, bad_bytes, first;
};

static void print_json(const struct options *o, const struct device *d, const struct job *jobs,
                       const struct job_stats *total, const struct verify_sum *v, int err)
{
    static const char *const vnames[] = {"off", "both", "write", "read"};

    printf("{");
    print_json_stats(total);
    printf(", \"error\": %s%s%s", err ? "\"" : "null", err ? strerror(-err) : "", err ? "\"" : "");
    printf(", \"verify\": {\"mode\": \"%s\", \"blocks\": %" PRIu64
           ", \"mismatched_blocks\": %" PRIu64 ", \"mismatched_bytes\": %" PRIu64
           ", \"first_mismatch_offset\": ",
           vnames[o->cfg.verify], v->blocks, v->bad_blocks, v->bad_bytes);
    if (v->first == UINT64_MAX)
        printf("null}");
    else
        printf("%" PRIu64 "}", v->first);
    printf(", \"config\": {\"rw\": \"%s\", \"rwmixread\": %u, \"bs\": %u, \"iodepth\": %u, "
           "\"numjobs\": %u, \"queue_size\": %u, \"mode\": \"%s\", \"range_bytes\": %" PRIu64 "}",
           rw_name(o->cfg.rw), o->cfg.rwmixread, o->cfg.bs, o->cfg.iodepth, o->numjobs,
           o->queue_size, o->cfg.poll ? "poll" : "wait", o->cfg.range);
    printf(", \"device\": {\"capacity_bytes\": %" PRIu64 ", \"blk_size\": %u, \"queues\": %u, "
           "\"features\": \"0x%" PRIx64 "\", \"protocol_features\": \"0x%" PRIx64 "\", "
           "\"event_idx\": %s, \"indirect\": %s}",
           d->capacity, d->blk_size, d->queues, d->vhc.features, d->vhc.protocol,
           vhc_has_feature(&d->vhc, VIRTIO_RING_F_EVENT_IDX) ? "true" : "false",
           vhc_has_feature(&d->vhc, VIRTIO_RING_F_INDIRECT_DESC) ? "true" : "false");
    printf(", \"jobs\": [");
    for (unsigned i = 0; i < o->numjobs; i++) {
        printf("%s{\"job\": %u, ", i ? ", " : "", i);
        print_json_stats(&jobs[i].stats);
        printf("}");
    }
    printf("]}\n");
}

static void print_text(const struct options *o, const struct device *d, const struct job *jobs,
                       const struct job_stats *total, const struct verify_sum *v)
{
    char name[16];

    static const char *const vnames[] = {"", "verify", "verify(write)", "verify(read)"};

    printf("vblk-bench: %s bs=%u iodepth=%u numjobs=%u %s, %s%s, capacity %" PRIu64 " bytes\n",
           o->cfg.verify != VERIFY_OFF ? vnames[o->cfg.verify] : rw_name(o->cfg.rw), o->cfg.bs,
           o->cfg.iodepth, o->numjobs, o->cfg.poll ? "poll" : "wait",
           vhc_has_feature(&d->vhc, VIRTIO_RING_F_EVENT_IDX) ? "event_idx" : "no event_idx",
           vhc_has_feature(&d->vhc, VIRTIO_RING_F_INDIRECT_DESC) ? ", indirect" : "", d->capacity);
    for (unsigned i = 0; i < o->numjobs && o->numjobs > 1; i++) {
        snprintf(name, sizeof(name), "job%u", i);
        print_text_line(name, &jobs[i].stats);
    }
    print_text_line("total", total);
    if (o->cfg.verify != VERIFY_OFF && o->cfg.verify != VERIFY_WRITE_ONLY)
        printf("verify: %" PRIu64 " blocks checked, %" PRIu64 " mismatched (%" PRIu64 " bytes)%s\n",
               v->blocks, v->bad_blocks, v->bad_bytes, v->bad_blocks ? " FAILED" : ", OK");
    if (total->len_warnings)
        printf("warning: %" PRIu64 " completions reported a used length shorter than the data "
               "written\n",
               total->len_warnings);
}

static void summarize(const struct options *o, const struct job *jobs, struct job_stats *total,
                      struct verify_sum *v)
{
    stats_init(total);
    memset(v, 0, sizeof(*v));
    v->first = UINT64_MAX;
    for (unsigned i = 0; i < o->numjobs; i++) {
        stats_merge(total, &jobs[i].stats);
        v->blocks += jobs[i].verify_blocks;
        v->bad_blocks += jobs[i].mismatched_blocks;
        v->bad_bytes += jobs[i].mismatched_bytes;
        if (jobs[i].first_mismatch < v->first)
            v->first = jobs[i].first_mismatch;
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
