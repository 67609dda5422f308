/* workload.h - what one job (one thread + one virtqueue) does.
 *
 * Owns: choosing offsets and directions (random/sequential, read/write mix), the submit/reap
 * loop in poll or wait mode, runtime / I/O-count limits, stall detection, status checking,
 * latency accounting, and the verify write/read phases with their data stamps.
 */
#ifndef VBLK_BENCH_WORKLOAD_H
#define VBLK_BENCH_WORKLOAD_H

#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>

#include "blkq.h"
#include "stats.h"

enum rw_mode { RW_READ, RW_WRITE, RW_RANDREAD, RW_RANDWRITE, RW_RANDRW };
enum verify_mode { VERIFY_OFF, VERIFY_BOTH, VERIFY_WRITE_ONLY, VERIFY_READ_ONLY };

struct bench_cfg {
    enum rw_mode rw;
    unsigned rwmixread; /* percent of reads for randrw */
    uint32_t bs;
    uint32_t iodepth;
    uint64_t runtime_ns; /* 0: no time limit */
    uint64_t range;      /* bytes of the disk used, multiple of bs */
    bool poll;
    bool flush; /* device offers VIRTIO_BLK_F_FLUSH */
    enum verify_mode verify;
    uint64_t seed;
    uint64_t gen; /* verify generation stamped into every sector */
    bool quiet;
    int dev_sock; /* vhost-user socket, watched for hang-ups while I/O is stuck */
};

struct job {
    unsigned id;
    const struct bench_cfg *cfg;
    struct blkq q;
    uint64_t slice_start; /* [slice_start, slice_end): sequential and verify region */
    uint64_t slice_end;
    uint64_t seq_next;
    uint64_t ios_target; /* 0: unlimited */
    uint64_t submitted;
    uint64_t rng;
    bool flush_sent;
    uint8_t *scratch; /* expected data for verify */
    struct blk_done *done;
    struct job_stats stats;
    uint64_t verify_blocks;
    uint64_t mismatched_blocks;
    uint64_t mismatched_bytes;
    uint64_t first_mismatch; /* disk byte offset, UINT64_MAX if none */
    unsigned printed;        /* error / mismatch lines printed */
    int err;                 /* fatal error (negative errno) */
    pthread_t thread;
};

extern volatile sig_atomic_t bench_stop;

/* After blkq_init: allocates per-job scratch state and fills write buffers. */
int job_init(struct job *j, unsigned id, const struct bench_cfg *cfg, uint64_t slice_start,
             uint64_t slice_end, uint64_t ios_target);
void job_fini(struct job *j);
void *job_thread(void *arg);

#endif
