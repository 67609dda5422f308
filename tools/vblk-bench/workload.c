/* workload.c - job thread: offset generation, submit/reap loop, verify stamps and checks. */
#include "workload.h"

#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define HUP_CHECK_NS    1000000000ull
#define STALL_NS        (30ull * 1000000000ull)
#define WAIT_TIMEOUT_MS 100
#define MAX_PRINTED     16
#define STAMP_MAGIC     0x48434e4b4c425621ull /* "!VBLKNCH" */
#define SECTOR          512u

volatile sig_atomic_t bench_stop;

enum phase { PHASE_BENCH, PHASE_VERIFY_WRITE, PHASE_FLUSH, PHASE_VERIFY_READ };

/* Written at the start of every 512-byte sector by --verify. */
struct stamp {
    uint64_t magic;
    uint64_t offset;
    uint64_t seed;
    uint64_t gen;
};

static inline uint64_t now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield" ::: "memory");
#endif
}

static inline uint64_t mix64(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

static inline uint64_t rng_next(uint64_t *s)
{
    uint64_t x = *s;

    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *s = x;
    return x * 0x2545f4914f6cdd1dull;
}

/* Uniform in [0, n). */
static inline uint64_t rng_below(uint64_t *s, uint64_t n)
{
    return (uint64_t)(((unsigned __int128)rng_next(s) * n) >> 64);
}

/* ---- verify pattern ---- */

static void stamp_fill(const struct bench_cfg *cfg, uint8_t *buf, uint64_t offset, uint32_t len)
{
    uint64_t key = mix64(cfg->seed) ^ (cfg->gen << 48);

    for (uint32_t s = 0; s < len; s += SECTOR) {
        struct stamp st = {STAMP_MAGIC, offset + s, cfg->seed, cfg->gen};
        uint64_t *w = (uint64_t *)(buf + s);

        memcpy(buf + s, &st, sizeof(st));
        for (uint32_t i = sizeof(st) / 8; i < SECTOR / 8; i++)
            w[i] = mix64(key ^ (offset + s + i * 8));
    }
}

static void verify_report(struct job *j, uint64_t offset, const uint8_t *got, uint32_t first,
                          uint32_t nbad)
{
    uint32_t sec = first & ~(SECTOR - 1);
    struct stamp st;

    if (j->printed++ >= MAX_PRINTED)
        return;
    memcpy(&st, got + sec, sizeof(st));
    fprintf(stderr,
            "verify: job %u: MISMATCH at byte offset %" PRIu64 " (0x%" PRIx64 "): expected 0x%02x "
            "got 0x%02x; %u bytes differ in block at %" PRIu64 "\n",
            j->id, offset + first, offset + first, j->scratch[first], got[first], nbad, offset);
    if (st.magic == STAMP_MAGIC)
        fprintf(stderr,
                "verify: job %u:   sector at %" PRIu64 " carries stamp offset=%" PRIu64
                " seed=0x%" PRIx64 " gen=%" PRIu64 "%s\n",
                j->id, offset + sec, st.offset, st.seed, st.gen,
                st.offset != offset + sec                            ? " (misplaced data)"
                : (st.seed != j->cfg->seed || st.gen != j->cfg->gen) ? " (stale data)"
                                                                     : "");
    else
        fprintf(stderr, "verify: job %u:   sector at %" PRIu64 " has no valid stamp\n", j->id,
                offset + sec);
}

static void verify_block(struct job *j, const uint8_t *got, uint64_t offset)
{
    uint32_t bs = j->cfg->bs, first = bs, nbad = 0;

    j->verify_blocks++;
    stamp_fill(j->cfg, j->scratch, offset, bs);
    if (memcmp(j->scratch, got, bs) == 0)
        return;
    for (uint32_t i = 0; i < bs; i++) {
        if (j->scratch[i] != got[i]) {
            if (first == bs)
                first = i;
            nbad++;
        }
    }
    j->mismatched_blocks++;
    j->mismatched_bytes += nbad;
    if (offset + first < j->first_mismatch)
        j->first_mismatch = offset + first;
    verify_report(j, offset, got, first, nbad);
}

/* ---- op generation ---- */

static bool job_time_up(const struct job *j, uint64_t now, uint64_t t0)
{
    if (bench_stop)
        return true;
    if (j->ios_target && j->submitted >= j->ios_target)
        return true;
    return j->cfg->runtime_ns && now - t0 >= j->cfg->runtime_ns;
}

static uint64_t job_seq_offset(struct job *j)
{
    uint64_t off = j->seq_next;

    j->seq_next += j->cfg->bs;
    if (j->seq_next >= j->slice_end)
        j->seq_next = j->slice_start;
    return off;
}

static void job_bench_op(struct job *j, uint32_t *type, uint64_t *off)
{
    const struct bench_cfg *c = j->cfg;
    uint64_t nblocks = c->range / c->bs;

    switch (c->rw) {
    case RW_READ:
        *type = VIRTIO_BLK_T_IN;
        *off = job_seq_offset(j);
        return;
    case RW_WRITE:
        *type = VIRTIO_BLK_T_OUT;
        *off = job_seq_offset(j);
        return;
    case RW_RANDREAD:
        *type = VIRTIO_BLK_T_IN;
        break;
    case RW_RANDWRITE:
        *type = VIRTIO_BLK_T_OUT;
        break;
    case RW_RANDRW:
        *type = rng_below(&j->rng, 100) < c->rwmixread ? VIRTIO_BLK_T_IN : VIRTIO_BLK_T_OUT;
        break;
    }
    *off = rng_below(&j->rng, nblocks) * c->bs;
}

/* Next request of phase @ph; false when the phase has nothing more to submit. */
static bool job_next_op(struct job *j, enum phase ph, uint64_t now, uint64_t t0, uint32_t *type,
                        uint64_t *off)
{
    switch (ph) {
    case PHASE_BENCH:
        if (job_time_up(j, now, t0))
            return false;
        job_bench_op(j, type, off);
        return true;
    case PHASE_FLUSH:
        if (j->flush_sent || bench_stop)
            return false;
        j->flush_sent = true;
        *type = VIRTIO_BLK_T_FLUSH;
        *off = 0;
        return true;
    case PHASE_VERIFY_WRITE:
    case PHASE_VERIFY_READ:
        if (j->seq_next >= j->slice_end || bench_stop)
            return false;
        *type = ph == PHASE_VERIFY_WRITE ? VIRTIO_BLK_T_OUT : VIRTIO_BLK_T_IN;
        *off = j->seq_next;
        j->seq_next += j->cfg->bs;
        return true;
    }
    return false;
}

/* ---- completion ---- */

static const char *blk_type_name(uint32_t type)
{
    switch (type) {
    case VIRTIO_BLK_T_IN:
        return "read";
    case VIRTIO_BLK_T_OUT:
        return "write";
    case VIRTIO_BLK_T_FLUSH:
        return "flush";
    default:
        return "?";
    }
}

static void job_count(struct job *j, const struct blk_slot *s)
{
    j->stats.ios++;
    if (s->type == VIRTIO_BLK_T_IN)
        j->stats.reads++;
    else if (s->type == VIRTIO_BLK_T_OUT)
        j->stats.writes++;
    else
        j->stats.flushes++;
    if (s->type != VIRTIO_BLK_T_FLUSH)
        j->stats.bytes += j->cfg->bs;
}

static void job_complete(struct job *j, enum phase ph, const struct blk_done *d, uint64_t now)
{
    struct blk_slot *s = &j->q.slots[d->slot];
    uint8_t status = *s->status;
    uint32_t min_len = s->type == VIRTIO_BLK_T_IN ? j->cfg->bs + 1 : 1;

    hist_add(&j->stats.lat, now - s->submit_ns);
    job_count(j, s);
    if (status != VIRTIO_BLK_S_OK) {
        j->stats.errors++;
        if (j->printed++ < MAX_PRINTED)
            fprintf(stderr, "vblk-bench: job %u: %s at offset %" PRIu64 " failed: status %u (%s)\n",
                    j->id, blk_type_name(s->type), s->offset, status,
                    status == VIRTIO_BLK_S_IOERR    ? "IOERR"
                    : status == VIRTIO_BLK_S_UNSUPP ? "UNSUPP"
                                                    : "not written by device");
    } else {
        if (d->len < min_len)
            j->stats.len_warnings++;
        if (ph == PHASE_VERIFY_READ)
            verify_block(j, s->data, s->offset);
    }
    blkq_put_slot(&j->q, d->slot);
}

/* ---- the loop ---- */

static int job_submit_batch(struct job *j, enum phase ph, uint64_t now, uint64_t t0, bool *more,
                            unsigned *inflight)
{
    unsigned queued = 0;

    while (*more && j->q.nfree) {
        uint32_t type = VIRTIO_BLK_T_IN;
        uint64_t off = 0;
        int slot;

        if (!job_next_op(j, ph, now, t0, &type, &off)) {
            *more = false;
            break;
        }
        slot = blkq_get_slot(&j->q);
        if (ph == PHASE_VERIFY_WRITE)
            stamp_fill(j->cfg, j->q.slots[slot].data, off, j->cfg->bs);
        blkq_queue(&j->q, (uint16_t)slot, type, off, now);
        j->submitted++;
        queued++;
    }
    *inflight += queued;
    return queued ? blkq_kick(&j->q) : 0;
}

/* While requests hang, notice a back-end that died instead of waiting for the stall timeout. */
static bool job_backend_gone(struct job *j)
{
    struct pollfd pfd = {.fd = j->cfg->dev_sock, .events = POLLRDHUP};

    if (j->cfg->dev_sock < 0 || poll(&pfd, 1, 0) <= 0 ||
        !(pfd.revents & (POLLRDHUP | POLLHUP | POLLERR)))
        return false;
    fprintf(stderr, "vblk-bench: job %u: back-end closed the vhost-user connection\n", j->id);
    return true;
}

static int job_run_phase(struct job *j, enum phase ph, uint64_t t0)
{
    uint64_t last_progress = now_ns(), last_hup_check = 0;
    unsigned inflight = 0;
    bool more = true;
    int ret, n;

    while (more || inflight) {
        uint64_t now = now_ns();

        ret = job_submit_batch(j, ph, now, t0, &more, &inflight);
        if (ret < 0)
            return ret;
        n = blkq_reap(&j->q, j->done, j->q.nslots);
        if (n < 0)
            return n;
        if (n > 0) {
            now = now_ns();
            for (int i = 0; i < n; i++)
                job_complete(j, ph, &j->done[i], now);
            inflight -= (unsigned)n;
            last_progress = now;
            continue;
        }
        if (!inflight)
            continue;
        if (now - last_progress > HUP_CHECK_NS && now - last_hup_check > HUP_CHECK_NS) {
            last_hup_check = now;
            if (job_backend_gone(j))
                return -ECONNRESET;
        }
        if (now - last_progress > STALL_NS) {
            fprintf(stderr,
                    "vblk-bench: job %u: no completion for %llu s with %u requests in "
                    "flight; device stalled\n",
                    j->id, STALL_NS / 1000000000ull, inflight);
            return -ETIMEDOUT;
        }
        if (j->cfg->poll) {
            cpu_relax();
        } else {
            ret = virtq_wait(&j->q.vq, WAIT_TIMEOUT_MS);
            if (ret < 0)
                return ret;
        }
    }
    return 0;
}

static int job_run(struct job *j)
{
    const struct bench_cfg *c = j->cfg;
    uint64_t t0 = now_ns();
    int ret = 0;

    if (c->verify == VERIFY_OFF)
        return job_run_phase(j, PHASE_BENCH, t0);
    if (c->verify != VERIFY_READ_ONLY) {
        j->seq_next = j->slice_start;
        ret = job_run_phase(j, PHASE_VERIFY_WRITE, t0);
        if (ret == 0 && c->flush)
            ret = job_run_phase(j, PHASE_FLUSH, t0);
    }
    if (ret == 0 && c->verify != VERIFY_WRITE_ONLY) {
        j->seq_next = j->slice_start;
        ret = job_run_phase(j, PHASE_VERIFY_READ, t0);
    }
    return ret;
}

void *job_thread(void *arg)
{
    struct job *j = arg;
    uint64_t t0 = now_ns();

    j->err = job_run(j);
    j->stats.runtime_ns = now_ns() - t0;
    j->stats.kicks = j->q.vq.kicks;
    j->stats.waits = j->q.vq.waits;
    if (j->err < 0)
        bench_stop = 1; /* a broken job stops the others too */
    return NULL;
}

int job_init(struct job *j, unsigned id, const struct bench_cfg *cfg, uint64_t slice_start,
             uint64_t slice_end, uint64_t ios_target)
{
    j->id = id;
    j->cfg = cfg;
    j->slice_start = j->seq_next = slice_start;
    j->slice_end = slice_end;
    j->ios_target = ios_target;
    j->rng = mix64(cfg->seed + id + 1) | 1;
    j->first_mismatch = UINT64_MAX;
    stats_init(&j->stats);
    j->scratch = malloc(cfg->bs);
    j->done = calloc(j->q.nslots, sizeof(*j->done));
    if (!j->scratch || !j->done) {
        job_fini(j);
        return -ENOMEM;
    }
    /* Non-zero, incompressible write data for benchmark writes. */
    for (uint16_t s = 0; s < j->q.nslots; s++) {
        uint64_t *w = (uint64_t *)j->q.slots[s].data;

        for (uint32_t i = 0; i < cfg->bs / 8; i++)
            w[i] = rng_next(&j->rng);
    }
    return 0;
}

void job_fini(struct job *j)
{
    free(j->scratch);
    free(j->done);
    j->scratch = NULL;
    j->done = NULL;
}
