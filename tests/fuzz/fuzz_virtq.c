/* fuzz_virtq.c - libFuzzer target: a hostile guest's rings and descriptors against one
 * virtio-blk queue (virtq walker + request parsing + completion), null engine, no I/O thread.
 *
 * Input:  [8 parameter bytes][guest memory image ...][patches ...]
 *   p[0]    ring size 1 << (p[0] % 9)                        (1..256)
 *   p[1]    bit 0 EVENT_IDX, 1 INDIRECT, 2 read-only, 3 discard, 4 write-zeroes, 5 null bdev,
 *           6 read-zeroes, 7 4k logical blocks
 *   p[2..3] avail index to start from (little endian)
 *   p[4]    rounds - 1 (mod 4); bit 7: process without re-arming notifications (polling)
 *   p[5..6] disk size in 4 KiB units - 1
 *   p[7]    max_desc / iov limit selector (0: the real limits)
 * The next MEM_SIZE bytes fill guest memory: region 0 (gpa 0, 48 KiB) holding the rings
 * (desc at 0x0, avail at 0x1000, used at 0x1800) and region 1 (gpa 0xc000, 16 KiB), zero
 * padded.  Whatever follows is patches applied between rounds, 4 bytes each: u16 offset into
 * guest memory, u16 value (the driver moving avail->idx, rewriting descriptors, ...).
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "bdev/bdev.h"
#include "blk/virtio_blk.h"
#include "engine/engine.h"
#include "util/log.h"
#include "vhost/guest_mem.h"
#include "virtq/virtq.h"

#define R0_SIZE   0xc000u
#define R1_SIZE   0x4000u
#define MEM_SIZE  (R0_SIZE + R1_SIZE)
#define UVA_BASE  0x10000000ull
#define DESC_OFF  0x0u
#define AVAIL_OFF 0x1000u
#define USED_OFF  0x1800u
#define MAX_NUM   256u

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static uint8_t *r0, *r1;
static struct vblk_mem mem;
static struct vblk_bdev bdev;
static struct vblk_blk_dev dev;
static struct vblk_engine *eng;
static struct blk_req *reqs;
static struct iovec *iov_pool;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    /* quiet (broken queues log an error each), unless FUZZ_VERBOSE=1 */
    vblk_log_level = getenv("FUZZ_VERBOSE") ? VBLK_LOG_DEBUG : -1;
    r0 = aligned_alloc(4096, R0_SIZE);
    r1 = aligned_alloc(4096, R1_SIZE);
    mem.nregions = 2;
    mem.r[0] = (struct vblk_mem_region){.gpa = 0, .size = R0_SIZE, .uva = UVA_BASE, .host = r0};
    mem.r[1] = (struct vblk_mem_region){
        .gpa = R0_SIZE, .size = R1_SIZE, .uva = UVA_BASE + 0x100000, .host = r1};
    bdev.name = "fuzz";
    bdev.fd = -1;
    if (vblk_engine_null.create(&eng, 1024) < 0)
        abort();
    if (vblk_blk_create(&dev, "fuzz", &bdev, NULL, 1, MAX_NUM, "fuzz-serial") < 0)
        abort();
    dev.queues[0].eng = eng;
    reqs = calloc(MAX_NUM, sizeof(*reqs));
    iov_pool = calloc((size_t)MAX_NUM * (VBLK_SEG_MAX + VBLK_IOV_SLACK), sizeof(*iov_pool));
    if (!r0 || !r1 || !reqs || !iov_pool)
        abort();
    return 0;
}

static void mem_write(size_t off, const uint8_t *src, size_t len)
{
    for (size_t i = 0; i < len && off + i < MEM_SIZE; i++) {
        size_t o = off + i;

        if (o < R0_SIZE)
            r0[o] = src[i];
        else
            r1[o - R0_SIZE] = src[i];
    }
}

static void drain(struct blk_queue *q)
{
    /* the null engine completes on reap; a FALLOCATE retry may queue again */
    for (int i = 0; i < 4 && eng->local; i++)
        eng->ops->reap(eng, vblk_blk_io_done, NULL);
    vblk_blk_queue_flush(q);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct blk_queue *q = &dev.queues[0];
    uint8_t p[8] = {0};
    uint16_t num, last_avail;
    unsigned rounds;
    size_t img;

    if (size < sizeof(p))
        return 0;
    memcpy(p, data, sizeof(p));
    data += sizeof(p);
    size -= sizeof(p);
    num = (uint16_t)(1u << (p[0] % 9));
    last_avail = (uint16_t)(p[2] | p[3] << 8);
    rounds = 1 + p[4] % 4;

    memset(r0, 0, R0_SIZE);
    memset(r1, 0, R1_SIZE);
    img = size < MEM_SIZE ? size : MEM_SIZE;
    mem_write(0, data, img);
    data += img;
    size -= img;

    bdev.readonly = p[1] & 4;
    bdev.discard = p[1] & 8;
    bdev.write_zeroes = p[1] & 16;
    bdev.zeroes_unmap = p[1] & 8;
    bdev.null = p[1] & 32;
    bdev.read_zeroes = p[1] & 64;
    bdev.lbs = p[1] & 128 ? 4096 : 512;
    bdev.cache = (enum vblk_cache)(p[7] % 5);
    bdev.size = ((uint64_t)(p[5] | p[6] << 8) + 1) * 4096;
    memset(&q->stats, 0, sizeof(q->stats));
    vblk_blk_reset(&dev);

    /* what vblk_blk_queue_start does, minus the I/O thread */
    if (vblk_vq_setup(&q->vq, &mem, num, UVA_BASE + DESC_OFF, UVA_BASE + AVAIL_OFF,
                      UVA_BASE + USED_OFF) < 0)
        abort();
    q->vq.event_idx = p[1] & 1;
    q->vq.indirect = p[1] & 2;
    q->vq.max_desc = VBLK_SEG_MAX + 2;
    q->vq.max_seg = VBLK_SIZE_MAX;
    vblk_vq_start(&q->vq, last_avail);
    q->broken_reported = false;
    q->iov_cap = VBLK_SEG_MAX + VBLK_IOV_SLACK;
    if (p[7] >= 128) { /* tighter limits reach the E2BIG paths with small inputs */
        q->vq.max_desc = (uint16_t)(1 + (p[7] & 7));
        q->vq.max_seg = 512u << (p[7] >> 3 & 3);
        q->iov_cap = 1 + (p[7] & 3);
    }
    memset(reqs, 0, MAX_NUM * sizeof(*reqs));
    q->reqs = reqs;
    q->iov_pool = iov_pool;
    for (unsigned h = 0; h < num; h++) {
        reqs[h].q = q;
        reqs[h].head = (uint16_t)h;
        reqs[h].iov = iov_pool + (size_t)h * q->iov_cap;
        reqs[h].io.fd = -1;
    }
    q->inflight = 0;
    q->kick_fd = q->call_fd = q->err_fd = -1;
    q->started = true;

    for (unsigned r = 0; r < rounds; r++) {
        if (!q->vq.broken)
            vblk_blk_queue_process(q, !(p[4] & 0x80));
        drain(q);
        /* apply up to 8 patches, as the driver would between kicks */
        for (unsigned k = 0; k < 8 && size >= 4; k++) {
            uint16_t off = (uint16_t)(data[0] | data[1] << 8);

            mem_write(off % MEM_SIZE, data + 2, 2);
            data += 4;
            size -= 4;
        }
    }
    drain(q);
    if (q->inflight != 0)
        abort(); /* every request taken must have completed */
    q->started = false;
    q->reqs = NULL;
    q->iov_pool = NULL;
    return 0;
}
