/* fuzz_vhost_user.c - libFuzzer target: a hostile front-end on the vhost-user socket.
 *
 * Input: records [u8 flags][u16 len, little endian][len bytes].
 *   flags & 8: the bytes are not sent; they are written into the shared guest memory (memfd,
 *              2 MiB, mapped at gpa 0 / uva 0x7e0000000000 by the seed corpus) at offset
 *              u16(first two bytes) * 16, so rings and requests can have content;
 *   otherwise the bytes are sent on the socket as-is (any number of messages or pieces), with
 *   flags & 1: SCM_RIGHTS carrying 1 + (flags >> 4 & 7) dups of the memfd (SET_MEM_TABLE,
 *              ADD_MEM_REG), or
 *   flags & 2: one fresh eventfd (SET_VRING_KICK/CALL/ERR), which is then written once (a kick);
 *   then vblk_vu_readable() runs.  When it closes the connection, a new one is attached.
 * The device has two queues and an I/O thread with the null engine, so rings really start.
 */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include "bdev/bdev.h"
#include "blk/virtio_blk.h"
#include "iothread/iothread.h"
#include "util/log.h"
#include "util/unixfd.h"
#include "vhost/vhost_user.h"

#define GUEST_SIZE (2u << 20)

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static struct vblk_bdev *bdev;
static struct vblk_blk_dev blk;
static struct vblk_iothread *iot;
static struct vblk_vu_dev vu;
static int peer = -1;

static int count_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    struct dirent *e;
    int n = 0;

    if (!d)
        return -1;
    while ((e = readdir(d)))
        n += e->d_name[0] != '.';
    closedir(d);
    return n;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    /* FUZZ_VERBOSE=1: log every message and broken queue (to check what a seed does) */
    vblk_log_level = getenv("FUZZ_VERBOSE") ? VBLK_LOG_DEBUG : -1;
    const struct vblk_bdev_conf c = {.name = "fuzz",
                                     .file = "null://",
                                     .null = true,
                                     .null_size = 1ull << 30,
                                     .read_zeroes = true,
                                     .lbs = 512,
                                     .cache = VBLK_CACHE_WRITEBACK,
                                     .discard_unmap = true,
                                     .iothreads = 1};
    char err[256];

    if (vblk_bdev_open_stack(&bdev, &c, err, sizeof(err)) < 0)
        abort();
    if (vblk_iothread_create(&iot, "fuzz-io", &vblk_engine_null, 2 * 256, 0,
                             VBLK_IOT_CALL_TIMEOUT_MS) < 0)
        abort();
    if (vblk_blk_create(&blk, "fuzz", bdev, iot, 2, 256, "fuzz-serial") < 0)
        abort();
    return 0;
}

static void connect_new(void)
{
    int sk[2];

    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sk) < 0)
        abort();
    if (vblk_vu_attach(&vu, sk[0]) < 0)
        abort();
    peer = sk[1];
}

static void drain_replies(void)
{
    char buf[4096];

    while (recv(peer, buf, sizeof(buf), MSG_DONTWAIT) > 0)
        ;
}

static void send_record(const uint8_t *b, size_t len, const int *fds, unsigned nfds)
{
    (void)vblk_send_fds(peer, b, len, fds, nfds, MSG_DONTWAIT);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int fds_at_start = count_fds();
    int memfd = memfd_create("fuzz-guest", MFD_CLOEXEC);
    uint8_t *gm;

    if (memfd < 0 || ftruncate(memfd, GUEST_SIZE) < 0)
        abort();
    gm = mmap(NULL, GUEST_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0);
    if (gm == MAP_FAILED)
        abort();
    vblk_vu_init(&vu, "fuzz", &blk);
    connect_new();

    while (size >= 3) {
        uint8_t flags = data[0];
        size_t len = (size_t)(data[1] | data[2] << 8);
        const uint8_t *b = data + 3;
        int fds[8], efd = -1;
        unsigned nfds = 0;

        if (len > size - 3)
            len = size - 3;
        data += 3 + len;
        size -= 3 + len;

        if (flags & 8) {
            if (len >= 2) {
                size_t off = (size_t)(b[0] | b[1] << 8) * 16;

                for (size_t i = 2; i < len && off + i - 2 < GUEST_SIZE; i++)
                    gm[off + i - 2] = b[i];
            }
            continue;
        }
        if (flags & 1) {
            nfds = 1 + (flags >> 4 & 7);
            for (unsigned i = 0; i < nfds; i++)
                fds[i] = memfd;
        } else if (flags & 2) {
            efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
            if (efd < 0)
                abort();
            fds[0] = efd;
            nfds = 1;
        }
        send_record(b, len, fds, nfds);
        if (efd >= 0) {
            (void)eventfd_write(efd, 1);
            close(efd);
        }
        if (vblk_vu_readable(&vu) < 0) {
            if (vu.conn_fd != -1)
                abort(); /* an error must close the connection */
            close(peer);
            connect_new();
        }
        drain_replies();
    }

    vblk_vu_disconnect(&vu); /* stops rings, waits for in-flight I/O, unmaps memory */
    close(peer);
    peer = -1;
    munmap(gm, GUEST_SIZE);
    close(memfd);
    /* every fd the front-end passed must have been closed or kept by a ring that is now gone */
    if (count_fds() != fds_at_start) {
        fprintf(stderr, "fd leak: %d open, %d before\n", count_fds(), fds_at_start);
        abort();
    }
    return 0;
}
