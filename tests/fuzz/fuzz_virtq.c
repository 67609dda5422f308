/* fuzz_virtq.c - libFuzzer target: a hostile guest's rings and descriptors against one
 * virtio-blk queue (virtq walker + request parsing + completion), started and served the way
 * vblkd serves it (vblk_blk_queue_start on an I/O thread, a kick), over a test driver that
 * completes inline.
 *
 * Input:  [8 parameter bytes][guest memory image ...][patches ...]
 *   p[0]    ring size 1 << (p[0] % 9)                        (1..256)
 *   p[1]    bit 0 EVENT_IDX, 1 INDIRECT, 2 read-only, 3 discard, 4 write-zeroes, 5 the
 *           driver fails every request, 6 reads zero-filled, 7 4k logical blocks
 *   p[2..3] avail index to start from (little endian); packed: position (mod the ring size)
 *           in bits 0-14, wrap counter in bit 15, the used side at the same place
 *   p[4]    rounds - 1 (mod 4); bit 7: process without re-arming notifications (polling);
 *           bit 6: packed ring (desc ring at 0x0, driver event at 0x1000, device event at
 *           0x1800); bit 5 with bit 6: ring size 1 + p[0] (not a power of two)
 *   p[5..6] disk size in 4 KiB units - 1
 *   p[7]    cache mode (% 5); bit 7: tighter max_desc / max_seg limits
 * The next MEM_SIZE bytes fill guest memory: region 0 (gpa 0, 48 KiB) holding the rings
 * (desc at 0x0, avail at 0x1000, used at 0x1800) and region 1 (gpa 0xc000, 16 KiB), zero
 * padded.  Whatever follows is patches applied between rounds, 4 bytes each: u16 offset into
 * guest memory, u16 value (the driver moving avail->idx, rewriting descriptors, ...).
 */
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "bdev/bdev.h"
#include "blk/virtio_blk.h"
#include "engine/engine.h"
#include "iothread/iothread.h"
#include "util/log.h"
#include "mem/guest_mem.h"
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
static struct vblk_iothread *iot;
static int kick = -1;
static bool fail_all, zero_reads;

/* A driver that completes every request inside submit (or fails it). */
static void fuzz_submit(struct vblk_bdev *b, struct vblk_engine *eng, struct vblk_bdev_req *r)
{
    if (r->op == VBLK_BDEV_READ && zero_reads) {
        for (unsigned i = 0; i < r->iovcnt; i++)
            memset(r->iov[i].iov_base, 0, r->iov[i].iov_len);
    }
    r->done(r, fail_all ? -EIO : 0);
}

static const struct vblk_bdev_ops fuzz_ops = {.name = "fuzz", .submit = fuzz_submit};

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
    bdev = (struct vblk_bdev){.ops = &fuzz_ops, .name = "fuzz", .fd = -1};
    kick = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (!r0 || !r1 || kick < 0)
        abort();
    if (vblk_iothread_create(&iot, "fuzz-io", &vblk_engine_null, MAX_NUM, 0, 60000) < 0)
        abort();
    if (vblk_blk_create(&dev, "fuzz", &bdev, iot, 1, MAX_NUM, "fuzz-serial") < 0)
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

static uint8_t limits;

/* I/O thread: tighter limits reach the E2BIG paths with small inputs. */
static int limits_fn(void *arg)
{
    struct blk_queue *q = arg;

    q->vq.max_desc = (uint16_t)(1 + (limits & 7));
    q->vq.max_seg = 512u << (limits >> 3 & 3);
    return 0;
}

/* I/O thread: has the queue taken what is available (or broken) and finished it all? */
static int quiet_fn(void *arg)
{
    struct blk_queue *q = arg;

    if (q->flush_hook.queued || q->again_hook.queued || q->inflight)
        return 0;
    if (q->vq.broken)
        return 1;
    if (q->vq.packed)
        return vblk_vq_avail(&q->vq) == 0;
    return q->vq.last_avail == __atomic_load_n(&q->vq.avail->idx, __ATOMIC_ACQUIRE);
}

static void run(struct blk_queue *q)
{
    (void)eventfd_write(kick, 1);
    for (int i = 0; i < 1000000; i++) {
        if (vblk_iothread_call(iot, quiet_fn, q) == 1)
            return;
    }
    abort(); /* the queue never settled: a hang */
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct blk_queue *q = &dev.queues[0];
    struct vblk_queue_params qp;
    uint8_t p[8] = {0};
    uint16_t num;
    uint32_t last_avail;
    bool packed;
    unsigned rounds;
    size_t img;

    if (size < sizeof(p))
        return 0;
    memcpy(p, data, sizeof(p));
    data += sizeof(p);
    size -= sizeof(p);
    packed = p[4] & 0x40; /* mode: packed ring (VIRTIO_F_RING_PACKED) */
    num = (uint16_t)(1u << (p[0] % 9));
    if (packed && (p[4] & 0x20))
        num = (uint16_t)(1 + p[0] % 256); /* packed rings need not be a power of two */
    last_avail = (uint16_t)(p[2] | p[3] << 8);
    if (packed) /* a valid base (the next position, its wrap counter); used at the same place */
        last_avail = (uint32_t)((last_avail & 0x7fff) % num) | (last_avail & 0x8000);
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
    fail_all = p[1] & 32;
    zero_reads = p[1] & 64;
    bdev.lbs = p[1] & 128 ? 4096 : 512;
    bdev.cache = (enum vblk_cache)(p[7] % 5);
    bdev.size = ((uint64_t)(p[5] | p[6] << 8) + 1) * 4096;
    vblk_blk_reset(&dev);

    qp = (struct vblk_queue_params){.mem = &mem,
                                    .num = num,
                                    .last_avail = last_avail,
                                    .desc_uva = UVA_BASE + DESC_OFF,
                                    .avail_uva = UVA_BASE + AVAIL_OFF,
                                    .used_uva = UVA_BASE + USED_OFF,
                                    .kick_fd = kick,
                                    .call_fd = -1,
                                    .err_fd = -1,
                                    .event_idx = p[1] & 1,
                                    .indirect = p[1] & 2,
                                    .packed = packed};
    if (vblk_blk_queue_start(&dev, 0, &qp) < 0)
        abort();
    if (p[7] >= 128) {
        limits = p[7];
        vblk_iothread_call(iot, limits_fn, q);
    }
    for (unsigned r = 0; r < rounds; r++) {
        run(q);
        /* apply up to 8 patches, as the driver would between kicks */
        for (unsigned k = 0; k < 8 && size >= 4; k++) {
            uint16_t off = (uint16_t)(data[0] | data[1] << 8);

            mem_write(off % MEM_SIZE, data + 2, 2);
            data += 4;
            size -= 4;
        }
    }
    run(q);
    if (vblk_blk_queue_stop(&dev, 0, &last_avail) < 0)
        abort(); /* every request taken must have completed */
    return 0;
}
