/* cli.c - vblk-bench command line: usage text, option parsing and validation of values. */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"
#include "util/size.h"

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
        "  --packed           packed virtqueues (VIRTIO_F_RING_PACKED; fails if not offered)\n"
        "  --force-write      send writes even to a read-only device (tests its errors)\n"
        "  --json             print one JSON object instead of text\n"
        "  -v, --verbose      trace vhost-user messages and negotiated features\n"
        "exit status: 0 ok, 1 I/O errors / verify mismatches / device protocol errors,\n"
        "             2 usage or setup failure\n");
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

const char *rw_name(enum rw_mode rw)
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
    OPT_PACKED,
    OPT_FORCE_WRITE,
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
    {"packed", no_argument, NULL, OPT_PACKED},
    {"force-write", no_argument, NULL, OPT_FORCE_WRITE},
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
        if (vblk_parse_size(arg, &sz) || sz == 0 || sz % 512 || sz > (64u << 20))
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
        return vblk_parse_size(arg, &o->size);
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
        if (parse_uint(arg, ULLONG_MAX, &v))
            return -EINVAL;
        o->cfg.seed = v;
        return 0;
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
    case OPT_FORCE_WRITE:
        o->force_write = true;
        return 0;
    case OPT_NO_EVENT_IDX:
        o->no_event_idx = true;
        return 0;
    case OPT_PACKED:
        o->packed = true;
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

int parse_args(struct options *o, int argc, char **argv)
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
