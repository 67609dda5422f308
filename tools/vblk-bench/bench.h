/* bench.h - state shared by the vblk-bench front-end files: parsed options and the device.
 *
 * Owns: struct options (command line), struct device (negotiated vhost-user-blk device) and the
 * verify summary, plus the entry points of cli.c and report.c.
 */
#ifndef VBLK_BENCH_BENCH_H
#define VBLK_BENCH_BENCH_H

#include <stdbool.h>
#include <stdint.h>

#include <linux/virtio_blk.h>

#include "vhost_client.h"
#include "workload.h"

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
    bool packed; /* --packed: VIRTIO_F_RING_PACKED rings */
    bool force_write;
};

struct device {
    struct vhost_client vhc;
    struct virtio_blk_config cfg;
    uint64_t capacity; /* bytes */
    uint32_t blk_size;
    uint32_t seg_size; /* bytes per data descriptor */
    unsigned queues;
};

struct verify_sum {
    uint64_t blocks, bad_blocks, bad_bytes, first;
};

/* cli.c */
int parse_args(struct options *o, int argc, char **argv);
const char *rw_name(enum rw_mode rw);

/* report.c */
void summarize(const struct options *o, const struct job *jobs, struct job_stats *total,
               struct verify_sum *v);
void print_json(const struct options *o, const struct device *d, const struct job *jobs,
                const struct job_stats *total, const struct verify_sum *v, int err);
void print_text(const struct options *o, const struct device *d, const struct job *jobs,
                const struct job_stats *total, const struct verify_sum *v);

#endif
