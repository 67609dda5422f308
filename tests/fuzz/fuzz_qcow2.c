/* fuzz_qcow2.c - libFuzzer target: a hostile qcow2 image against the qcow2 driver's header and
 * table parsing and its request path.
 *
 * Input:  [1 mode byte][image ...]
 *   mode bit 0: open writable (else read-only); bits 1..3: which requests follow (reads of the
 *   first clusters, of the L2-mapped middle, writes, discard/write-zeroes, flush)
 * The image is put in a memfd, parsed by qcow2_parse_header and opened with
 * vblk_bdev_open_stack (format=qcow2, cache=writeback); a few requests run to completion on
 * this thread's engine.  Every outcome is fine but a crash, a hang, a leak or a sanitizer report.
 * Seeds: tests/fuzz/corpus/qcow2/ (images made by qemu-img, see tests/fuzz/make_qcow2_corpus.sh).
 */
#include <errno.h>
#include <poll.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

#include "bdev/bdev.h"
#include "bdev/qcow2.h"
#include "engine/engine.h"
#include "util/log.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static struct vblk_engine *eng;

struct freq {
    struct vblk_bdev_req r;
    struct iovec iov;
    bool done;
};

static void freq_done(struct vblk_bdev_req *r, int ret)
{
    ((struct freq *)r)->done = true;
}

static void run(struct vblk_bdev *b, int op, uint64_t off, void *buf, uint64_t len)
{
    struct freq f = {.iov = {buf, len}};
    int spins = 0;

    if (len && (off >= b->size || len > b->size - off))
        return;
    f.r = (struct vblk_bdev_req){.op = (uint8_t)op,
                                 .iov = &f.iov,
                                 .iovcnt = buf ? 1 : 0,
                                 .offset = off,
                                 .len = len,
                                 .done = freq_done};
    vblk_bdev_submit(b, eng, &f.r);
    while (!f.done) {
        struct pollfd p = {.fd = eng->efd, .events = POLLIN};
        eventfd_t v;

        eng->ops->submit(eng);
        if (eng->ops->reap(eng, vblk_io_complete, NULL))
            continue;
        if (poll(&p, 1, 1000) == 0 && ++spins > 10)
            abort(); /* a request that never completes is a bug */
        if (p.revents & POLLIN)
            eventfd_read(eng->efd, &v);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static uint8_t buf[256 << 10] __attribute__((aligned(4096)));
    struct qcow2_info *in = malloc(sizeof(*in));
    struct vblk_bdev_conf c = {.name = "fuzz",
                               .cache = VBLK_CACHE_WRITEBACK,
                               .format = VBLK_FORMAT_QCOW2,
                               .lbs = 512,
                               .discard_unmap = true,
                               .iothreads = 1};
    struct vblk_bdev *b;
    char path[64], err[512];
    uint8_t mode;
    int fd;

    if (!eng) {
        vblk_log_level = -1;
        if (vblk_engine_uring.create(&eng, 64) < 0 && vblk_engine_threads.create(&eng, 64) < 0)
            abort();
    }
    if (size < 2 || !in) {
        free(in);
        return 0;
    }
    mode = data[0];
    data++;
    size--;
    qcow2_parse_header(data, size, size, in, err, sizeof(err));
    free(in);

    fd = memfd_create("qcow2", MFD_CLOEXEC);
    if (fd < 0 || write(fd, data, size) != (ssize_t)size) {
        if (fd >= 0)
            close(fd);
        return 0;
    }
    snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
    c.file = path;
    c.readonly = !(mode & 1);
    c.l2_cache_size = 4 << 16;
    if (vblk_bdev_open_stack(&b, &c, err, sizeof(err)) == 0) {
        uint64_t mid = b->size / 2 & ~4095ull;

        if (mode & 2) {
            run(b, VBLK_BDEV_READ, 0, buf, sizeof(buf));
            run(b, VBLK_BDEV_READ, mid, buf, 65536);
        }
        if (mode & 4) {
            memset(buf, 0xa5, sizeof(buf));
            run(b, VBLK_BDEV_WRITE, 512, buf, 8192);
            run(b, VBLK_BDEV_WRITE, mid, buf, 65536 + 1024);
            run(b, VBLK_BDEV_READ, 0, buf, 16384);
        }
        if (mode & 8) {
            run(b, VBLK_BDEV_WRITE_ZEROES, 0, NULL, 131072);
            run(b, VBLK_BDEV_DISCARD, mid, NULL, 1 << 20);
            run(b, VBLK_BDEV_FLUSH, 0, NULL, 0);
        }
        if (!(mode & 14))
            run(b, VBLK_BDEV_READ, 4096, buf, 4096);
        vblk_bdev_flush_sync(b);
        vblk_bdev_close_stack(b);
    }
    close(fd);
    return 0;
}
