/* test_vhost_user.c - vhost-user message handling over a socketpair. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/virtio_blk.h>
#include <linux/virtio_config.h>
#include <linux/virtio_ring.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <inttypes.h>
#include <linux/magic.h>
#include <stdio.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/vfs.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "bdev/bdev.h"
#include "blk/virtio_blk.h"
#include "iothread/iothread.h"
#include "util/unixfd.h"
#include "vhost/vhost_user.h"

#define NQ   2
#define QMAX 256
#define DISK (1ull << 30)

static struct vblk_bdev *bdev;
static struct vblk_blk_dev blk;
static struct vblk_vu_dev vu;
static struct vblk_iothread *iot;
static int sk[2] = {-1, -1};

static void connect_pair(void)
{
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sk), 0);
    assert_int_equal(vblk_vu_attach(&vu, sk[0]), 0);
}

static unsigned iot_timeout_ms = VBLK_IOT_CALL_TIMEOUT_MS;

static int setup_common(bool with_iothread)
{
    const struct vblk_bdev_conf c = {.name = "t",
                                     .file = "null://",
                                     .null = true,
                                     .null_size = DISK,
                                     .read_zeroes = true,
                                     .lbs = 512,
                                     .cache = VBLK_CACHE_WRITEBACK,
                                     .discard_unmap = true,
                                     .iothreads = 1};
    char err[256];

    if (vblk_bdev_open_stack(&bdev, &c, err, sizeof(err)) < 0)
        return -1;
    iot = NULL;
    if (with_iothread &&
        vblk_iothread_create(&iot, "vu-test", &vblk_engine_null, NQ * QMAX, 0, iot_timeout_ms) < 0)
        return -1;
    if (vblk_blk_create(&blk, "t", bdev, iot, NQ, QMAX, "vu-serial") < 0)
        return -1;
    vblk_vu_init(&vu, "t", &blk);
    connect_pair();
    return 0;
}

static int setup(void **state)
{
    return setup_common(false);
}

/* After a wedge: the stuck thread keeps the device and driver; only the socket goes. */
static int teardown_wedged(void **state)
{
    iot_timeout_ms = VBLK_IOT_CALL_TIMEOUT_MS;
    if (sk[1] >= 0)
        close(sk[1]);
    sk[0] = sk[1] = -1;
    vblk_iothread_destroy(iot); /* leaves a wedged thread running */
    iot = NULL;
    return 0;
}

/* An I/O thread that gives up on calls after 200 ms (the wedge tests). */
static int setup_iot_short(void **state)
{
    iot_timeout_ms = 200;
    return setup_common(true);
}

static int setup_iot(void **state)
{
    return setup_common(true);
}

static int teardown(void **state)
{
    iot_timeout_ms = VBLK_IOT_CALL_TIMEOUT_MS;
    vblk_vu_disconnect(&vu);
    if (sk[1] >= 0)
        close(sk[1]);
    sk[0] = sk[1] = -1;
    if (iot)
        vblk_iothread_destroy(iot);
    iot = NULL;
    vblk_blk_destroy(&blk);
    vblk_bdev_close_stack(bdev);
    return 0;
}

/* ---- front-end side helpers ---- */

static void send_msg_fds(uint32_t req, uint32_t flags, const void *payload, uint32_t size,
                         const int *fds, unsigned nfds)
{
    struct vhost_user_msg m;
    size_t len = VHOST_USER_HDR_SIZE + size;

    assert_true(size <= sizeof(m.payload));
    memset(&m, 0, sizeof(m));
    m.hdr.request = req;
    m.hdr.flags = flags;
    m.hdr.size = size;
    if (size)
        memcpy(&m.payload, payload, size);
    assert_int_equal(vblk_send_fds(sk[1], &m, len, fds, nfds, 0), (ssize_t)len);
}

static void send_msg(uint32_t req, const void *payload, uint32_t size)
{
    send_msg_fds(req, VHOST_USER_VERSION, payload, size, NULL, 0);
}

static void send_u64(uint32_t req, uint64_t v)
{
    send_msg(req, &v, sizeof(v));
}

static void send_state(uint32_t req, uint32_t index, uint32_t num)
{
    struct vhost_user_vring_state s = {.index = index, .num = num};

    send_msg(req, &s, sizeof(s));
}

/* Read one reply (must be there already); returns its payload size. */
static uint32_t recv_reply(uint32_t req, void *payload, uint32_t cap)
{
    struct vhost_user_msg m;
    ssize_t n = recv(sk[1], &m.hdr, VHOST_USER_HDR_SIZE, MSG_DONTWAIT);

    assert_int_equal(n, VHOST_USER_HDR_SIZE);
    assert_int_equal(m.hdr.request, req);
    assert_int_equal(m.hdr.flags, VHOST_USER_VERSION | VHOST_USER_REPLY_MASK);
    assert_true(m.hdr.size <= cap);
    if (m.hdr.size)
        assert_int_equal(recv(sk[1], &m.payload, m.hdr.size, MSG_DONTWAIT), m.hdr.size);
    memcpy(payload, &m.payload, m.hdr.size);
    return m.hdr.size;
}

static uint64_t recv_u64(uint32_t req)
{
    uint64_t v = 0;

    assert_int_equal(recv_reply(req, &v, sizeof(v)), 8);
    return v;
}

static void assert_no_reply(void)
{
    char b[16];

    assert_int_equal(recv(sk[1], b, sizeof(b), MSG_DONTWAIT), -1);
    assert_true(errno == EAGAIN || errno == EWOULDBLOCK);
}

static void assert_ok(void)
{
    assert_int_equal(vblk_vu_readable(&vu), 0);
    assert_int_equal(vu.conn_fd, sk[0]);
}

/* The message must have closed the connection: the peer reads EOF. */
static void assert_closed(void)
{
    char b[16];

    assert_true(vblk_vu_readable(&vu) < 0);
    assert_int_equal(vu.conn_fd, -1);
    assert_int_equal(recv(sk[1], b, sizeof(b), MSG_DONTWAIT), 0);
}

static int count_open_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    struct dirent *e;
    int n = 0;

    assert_non_null(d);
    while ((e = readdir(d)))
        n += e->d_name[0] != '.';
    closedir(d);
    return n - 1; /* the DIR's own fd */
}

static int make_memfd(size_t size)
{
    int fd = memfd_create("vu-test", MFD_CLOEXEC);

    assert_true(fd >= 0);
    assert_int_equal(ftruncate(fd, (off_t)size), 0);
    return fd;
}

/* ---- simple requests ---- */

static void test_get_features_reply(void **state)
{
    send_msg(VHOST_USER_GET_FEATURES, NULL, 0);
    assert_ok();
    assert_int_equal(recv_u64(VHOST_USER_GET_FEATURES),
                     vblk_blk_features(&blk) | (1ull << VHOST_USER_F_PROTOCOL_FEATURES) |
                         (1ull << VHOST_F_LOG_ALL) | (1ull << VIRTIO_F_RING_PACKED));
}

static void test_get_protocol_features_queue_num_and_slots(void **state)
{
    send_msg(VHOST_USER_GET_PROTOCOL_FEATURES, NULL, 0);
    send_msg(VHOST_USER_GET_QUEUE_NUM, NULL, 0);
    send_msg(VHOST_USER_GET_MAX_MEM_SLOTS, NULL, 0);
    assert_ok(); /* three messages in one read */
    assert_int_equal(recv_u64(VHOST_USER_GET_PROTOCOL_FEATURES), VBLK_VU_PROTOCOL_FEATURES);
    assert_int_equal(recv_u64(VHOST_USER_GET_QUEUE_NUM), NQ);
    assert_int_equal(recv_u64(VHOST_USER_GET_MAX_MEM_SLOTS), VBLK_MEM_SLOTS_MAX);
}

static void test_message_split_across_reads(void **state)
{
    struct vhost_user_hdr h = {
        .request = VHOST_USER_SET_FEATURES, .flags = VHOST_USER_VERSION, .size = 8};
    uint64_t f = 1ull << VIRTIO_F_VERSION_1;

    assert_int_equal(send(sk[1], &h, 5, 0), 5);
    assert_ok();
    assert_int_equal(send(sk[1], (char *)&h + 5, sizeof(h) - 5, 0), (ssize_t)sizeof(h) - 5);
    assert_ok();
    assert_int_equal(send(sk[1], &f, 3, 0), 3);
    assert_ok();
    assert_int_equal(vu.features, 0);
    assert_int_equal(send(sk[1], (char *)&f + 3, 5, 0), 5);
    assert_ok();
    assert_int_equal(vu.features, f);
}

static void test_set_features_ok(void **state)
{
    uint64_t f = (1ull << VIRTIO_F_VERSION_1) | (1ull << VIRTIO_RING_F_EVENT_IDX) |
                 (1ull << VHOST_USER_F_PROTOCOL_FEATURES);

    send_u64(VHOST_USER_SET_FEATURES, f);
    assert_ok();
    assert_int_equal(vu.features, f);
    assert_no_reply();
}

static void test_set_features_with_unoffered_bit_closes(void **state)
{
    send_u64(VHOST_USER_SET_FEATURES, (1ull << VIRTIO_F_VERSION_1) | (1ull << VIRTIO_BLK_F_SCSI));
    assert_closed();
}

static void test_set_features_wrong_size_closes(void **state)
{
    uint32_t f = 1;

    send_msg(VHOST_USER_SET_FEATURES, &f, sizeof(f));
    assert_closed();
}

static void test_set_protocol_features_unoffered_bit_closes(void **state)
{
    send_u64(VHOST_USER_SET_PROTOCOL_FEATURES, 1ull << VHOST_USER_PROTOCOL_F_PAGEFAULT);
    assert_closed();
}

static void test_unknown_request_closes(void **state)
{
    send_msg(999, NULL, 0);
    assert_closed();
}

static void test_unsupported_known_request_closes(void **state)
{
    send_u64(VHOST_USER_SET_LOG_BASE, 0);
    assert_closed();
}

static void test_payload_too_large_closes(void **state)
{
    struct vhost_user_hdr h = {.request = VHOST_USER_SET_FEATURES,
                               .flags = VHOST_USER_VERSION,
                               .size = VHOST_USER_PAYLOAD_MAX + 1};

    assert_int_equal(send(sk[1], &h, sizeof(h), 0), (ssize_t)sizeof(h));
    assert_closed();
}

static void test_huge_payload_size_closes(void **state)
{
    struct vhost_user_hdr h = {
        .request = VHOST_USER_SET_FEATURES, .flags = VHOST_USER_VERSION, .size = 0xffffffffu};

    assert_int_equal(send(sk[1], &h, sizeof(h), 0), (ssize_t)sizeof(h));
    assert_closed();
}

static void test_bad_version_flags_close(void **state)
{
    send_msg_fds(VHOST_USER_GET_FEATURES, 0, NULL, 0, NULL, 0);
    assert_closed();
}

static void test_version_2_closes(void **state)
{
    send_msg_fds(VHOST_USER_GET_FEATURES, 2, NULL, 0, NULL, 0);
    assert_closed();
}

static void test_peer_hangup_closes(void **state)
{
    close(sk[1]);
    sk[1] = -1;
    assert_int_equal(vblk_vu_readable(&vu), -ECONNRESET);
    assert_int_equal(vu.conn_fd, -1);
}

static void test_new_connection_accepted_after_close(void **state)
{
    assert_int_equal(vblk_vu_attach(&vu, 12345), -EBUSY);
    send_u64(VHOST_USER_SET_FEATURES, 1ull << VIRTIO_BLK_F_SCSI);
    assert_closed();
    close(sk[1]);
    connect_pair(); /* asserts vblk_vu_attach() == 0 */
    assert_int_equal(vu.features, 0);
    send_msg(VHOST_USER_GET_QUEUE_NUM, NULL, 0);
    assert_ok();
    assert_int_equal(recv_u64(VHOST_USER_GET_QUEUE_NUM), NQ);
}

static void test_reset_owner_clears_features(void **state)
{
    send_u64(VHOST_USER_SET_FEATURES, 1ull << VIRTIO_F_VERSION_1);
    send_u64(VHOST_USER_SET_PROTOCOL_FEATURES, 1ull << VHOST_USER_PROTOCOL_F_MQ);
    send_msg(VHOST_USER_RESET_OWNER, NULL, 0);
    assert_ok();
    assert_int_equal(vu.features, 0);
    assert_int_equal(vu.protocol_features, 0);
}

/* ---- REPLY_ACK ---- */

static void test_reply_ack_sent_when_negotiated(void **state)
{
    send_u64(VHOST_USER_SET_PROTOCOL_FEATURES, 1ull << VHOST_USER_PROTOCOL_F_REPLY_ACK);
    assert_ok();
    assert_no_reply();
    send_msg_fds(VHOST_USER_SET_OWNER, VHOST_USER_VERSION | VHOST_USER_NEED_REPLY, NULL, 0, NULL,
                 0);
    assert_ok();
    assert_int_equal(recv_u64(VHOST_USER_SET_OWNER), 0);
    send_state(VHOST_USER_SET_VRING_NUM, 0, 64); /* no NEED_REPLY: no ack */
    assert_ok();
    assert_no_reply();
    /* GET_* replies are not followed by an extra ack */
    send_msg_fds(VHOST_USER_GET_QUEUE_NUM, VHOST_USER_VERSION | VHOST_USER_NEED_REPLY, NULL, 0,
                 NULL, 0);
    assert_ok();
    assert_int_equal(recv_u64(VHOST_USER_GET_QUEUE_NUM), NQ);
    assert_no_reply();
}

static void test_no_reply_ack_without_protocol_feature(void **state)
{
    send_msg_fds(VHOST_USER_SET_OWNER, VHOST_USER_VERSION | VHOST_USER_NEED_REPLY, NULL, 0, NULL,
                 0);
    assert_ok();
    assert_no_reply();
}

/* ---- vring messages ---- */

static void test_set_vring_num_ok(void **state)
{
    send_state(VHOST_USER_SET_VRING_NUM, 1, QMAX);
    assert_ok();
    assert_int_equal(vu.vrings[1].num, QMAX);
}

static void test_set_vring_num_wrong_payload_size_closes(void **state)
{
    uint32_t idx = 0;

    send_msg(VHOST_USER_SET_VRING_NUM, &idx, sizeof(idx));
    assert_closed();
}

static void test_vring_size_not_power_of_two_closes(void **state)
{
    send_state(VHOST_USER_SET_VRING_NUM, 0, 3);
    assert_closed();
}

static void test_vring_size_zero_closes(void **state)
{
    send_state(VHOST_USER_SET_VRING_NUM, 0, 0);
    assert_closed();
}

static void test_vring_size_above_queue_size_closes(void **state)
{
    send_state(VHOST_USER_SET_VRING_NUM, 0, QMAX * 2);
    assert_closed();
}

static void test_set_vring_num_index_out_of_range_closes(void **state)
{
    send_state(VHOST_USER_SET_VRING_NUM, NQ, 64);
    assert_closed();
}

static void test_set_vring_kick_index_out_of_range_closes(void **state)
{
    int efd = eventfd(0, EFD_CLOEXEC);
    uint64_t u = NQ;

    send_msg_fds(VHOST_USER_SET_VRING_KICK, VHOST_USER_VERSION, &u, sizeof(u), &efd, 1);
    close(efd);
    assert_closed();
}

static void test_set_vring_call_index_out_of_range_closes(void **state)
{
    send_u64(VHOST_USER_SET_VRING_CALL, 0xff | VHOST_USER_VRING_NOFD_MASK);
    assert_closed();
}

static void test_set_vring_fd_msg_reserved_bits_close(void **state)
{
    send_u64(VHOST_USER_SET_VRING_CALL, (1u << 9) | VHOST_USER_VRING_NOFD_MASK);
    assert_closed();
}

static void test_set_vring_kick_without_fd_closes(void **state)
{
    send_u64(VHOST_USER_SET_VRING_KICK, 0 | VHOST_USER_VRING_NOFD_MASK);
    assert_closed();
}

static void test_set_vring_call_nofd_flag_with_fd_closes(void **state)
{
    int efd = eventfd(0, EFD_CLOEXEC);
    uint64_t u = VHOST_USER_VRING_NOFD_MASK;

    send_msg_fds(VHOST_USER_SET_VRING_CALL, VHOST_USER_VERSION, &u, sizeof(u), &efd, 1);
    close(efd);
    assert_closed();
}

static void test_set_vring_call_fd_is_kept(void **state)
{
    int efd = eventfd(0, EFD_CLOEXEC);
    uint64_t u = 1;

    send_msg_fds(VHOST_USER_SET_VRING_CALL, VHOST_USER_VERSION, &u, sizeof(u), &efd, 1);
    close(efd);
    assert_ok();
    assert_true(vu.vrings[1].call_fd >= 0);
    assert_int_equal(blk.queues[1].call_fd, vu.vrings[1].call_fd);
    assert_int_not_equal(fcntl(vu.vrings[1].call_fd, F_GETFD), -1);
}

static void test_set_vring_base_out_of_range_closes(void **state)
{
    send_state(VHOST_USER_SET_VRING_BASE, 0, 0x10000);
    assert_closed();
}

static void test_get_vring_base_of_stopped_ring(void **state)
{
    struct vhost_user_vring_state s;

    send_state(VHOST_USER_SET_VRING_BASE, 1, 4242);
    send_state(VHOST_USER_GET_VRING_BASE, 1, 0);
    assert_ok();
    assert_int_equal(recv_reply(VHOST_USER_GET_VRING_BASE, &s, sizeof(s)), sizeof(s));
    assert_int_equal(s.index, 1);
    assert_int_equal(s.num, 4242);
}

static void test_set_vring_enable_bad_value_closes(void **state)
{
    send_state(VHOST_USER_SET_VRING_ENABLE, 0, 2);
    assert_closed();
}

static void test_set_vring_addr_unknown_flags_close(void **state)
{
    struct vhost_user_vring_addr a = {.index = 0, .flags = 2};

    send_msg(VHOST_USER_SET_VRING_ADDR, &a, sizeof(a));
    assert_closed();
}

/* ---- fds ---- */

static void test_fds_on_message_that_takes_none_are_closed(void **state)
{
    int efd = eventfd(0, EFD_CLOEXEC);
    int before;

    send_msg_fds(VHOST_USER_GET_FEATURES, VHOST_USER_VERSION, NULL, 0, &efd, 1);
    close(efd); /* ours; the daemon gets the lowest free number, i.e. efd again */
    before = count_open_fds();
    assert_closed();
    /* the received fd was closed, and so was the connection */
    assert_int_equal(fcntl(efd, F_GETFD), -1);
    assert_int_equal(errno, EBADF);
    assert_int_equal(count_open_fds(), before - 1);
}

static void test_too_many_fds_close(void **state)
{
    int fds[9];

    for (unsigned i = 0; i < 9; i++)
        fds[i] = eventfd(0, EFD_CLOEXEC);
    send_msg_fds(VHOST_USER_SET_OWNER, VHOST_USER_VERSION, NULL, 0, fds, 9);
    for (unsigned i = 0; i < 9; i++)
        close(fds[i]);
    assert_closed();
}

/* ---- memory table ---- */

static void send_mem_table(unsigned nregions, uint32_t size_field, const int *fds, unsigned nfds,
                           uint64_t region_size)
{
    struct vhost_user_memory m;

    memset(&m, 0, sizeof(m));
    m.nregions = size_field;
    for (unsigned i = 0; i < nregions && i < VHOST_USER_MEM_REGIONS_MAX; i++) {
        m.regions[i].guest_phys_addr = 0x100000ull * (i + 1) * 16;
        m.regions[i].memory_size = region_size;
        m.regions[i].userspace_addr = 0x7e0000000000ull + 0x10000000ull * i;
        m.regions[i].mmap_offset = 0;
    }
    send_msg_fds(VHOST_USER_SET_MEM_TABLE, VHOST_USER_VERSION, &m,
                 8 + (uint32_t)sizeof(m.regions[0]) * (nregions < VHOST_USER_MEM_REGIONS_MAX
                                                           ? nregions
                                                           : VHOST_USER_MEM_REGIONS_MAX),
                 fds, nfds);
}

static void test_set_mem_table_ok(void **state)
{
    int fds[2] = {make_memfd(1 << 20), make_memfd(1 << 20)};

    send_mem_table(2, 2, fds, 2, 1 << 20);
    close(fds[0]);
    close(fds[1]);
    assert_ok();
    assert_non_null(vu.mem);
    assert_int_equal(vu.mem->nregions, 2);
    assert_int_equal(vu.mem->r[1].gpa, 0x100000ull * 32);
    /* a new table replaces the old one */
    fds[0] = make_memfd(1 << 20);
    send_mem_table(1, 1, fds, 1, 1 << 20);
    close(fds[0]);
    assert_ok();
    assert_int_equal(vu.mem->nregions, 1);
}

static void test_set_mem_table_9_regions_closes(void **state)
{
    struct {
        uint32_t nregions, padding;
        struct vhost_user_mem_region r[8];
    } __attribute__((packed)) m;

    memset(&m, 0, sizeof(m));
    m.nregions = 9;
    send_msg(VHOST_USER_SET_MEM_TABLE, &m, sizeof(m));
    assert_closed();
}

static void test_set_mem_table_0_regions_closes(void **state)
{
    send_mem_table(0, 0, NULL, 0, 4096);
    assert_closed();
}

static void test_set_mem_table_fewer_fds_than_regions_closes(void **state)
{
    int fd = make_memfd(1 << 20);

    send_mem_table(2, 2, &fd, 1, 1 << 20);
    close(fd);
    assert_closed();
    assert_null(vu.mem);
}

static void test_set_mem_table_size_mismatch_closes(void **state)
{
    int fds[2] = {make_memfd(1 << 20), make_memfd(1 << 20)};

    send_mem_table(1, 2, fds, 2, 1 << 20); /* says 2 regions, carries 1 */
    close(fds[0]);
    close(fds[1]);
    assert_closed();
}

static void test_set_mem_table_region_larger_than_fd_closes(void **state)
{
    int fd = make_memfd(4096);

    send_mem_table(1, 1, &fd, 1, 1 << 20);
    close(fd);
    assert_closed();
}

static void test_add_and_remove_mem_region(void **state)
{
    struct vhost_user_mem_reg_msg r = {.region = {.guest_phys_addr = 0x200000,
                                                  .memory_size = 1 << 20,
                                                  .userspace_addr = 0x7d0000000000ull,
                                                  .mmap_offset = 0}};
    int fd = make_memfd(1 << 20);

    send_msg_fds(VHOST_USER_ADD_MEM_REG, VHOST_USER_VERSION, &r, sizeof(r), &fd, 1);
    assert_ok();
    assert_int_equal(vu.mem->nregions, 1);
    r.region.guest_phys_addr = 0x400000;
    send_msg_fds(VHOST_USER_ADD_MEM_REG, VHOST_USER_VERSION, &r, sizeof(r), &fd, 1);
    assert_ok();
    assert_int_equal(vu.mem->nregions, 2);
    send_msg(VHOST_USER_REM_MEM_REG, &r, sizeof(r));
    assert_ok();
    assert_int_equal(vu.mem->nregions, 1);
    assert_int_equal(vu.mem->r[0].gpa, 0x200000);
    /* overlapping add and removing an unknown region close */
    r.region.guest_phys_addr = 0x280000;
    send_msg_fds(VHOST_USER_ADD_MEM_REG, VHOST_USER_VERSION, &r, sizeof(r), &fd, 1);
    close(fd);
    assert_closed();
}

static void test_remove_unknown_mem_region_closes(void **state)
{
    struct vhost_user_mem_reg_msg r = {
        .region = {.guest_phys_addr = 0x200000, .memory_size = 4096}};

    send_msg(VHOST_USER_REM_MEM_REG, &r, sizeof(r));
    assert_closed();
}

/* ---- config ---- */

static void test_get_config_returns_capacity(void **state)
{
    struct vhost_user_config c = {.offset = 0, .size = sizeof(struct virtio_blk_config)};
    struct virtio_blk_config cfg;

    send_msg(VHOST_USER_GET_CONFIG, &c, VHOST_USER_CONFIG_HDR_SIZE + c.size);
    assert_ok();
    memset(&c, 0, sizeof(c));
    assert_int_equal(recv_reply(VHOST_USER_GET_CONFIG, &c, sizeof(c)),
                     VHOST_USER_CONFIG_HDR_SIZE + sizeof(cfg));
    assert_int_equal(c.offset, 0);
    assert_int_equal(c.size, sizeof(cfg));
    memcpy(&cfg, c.region, sizeof(cfg));
    assert_int_equal(cfg.capacity, DISK / 512);
    assert_int_equal(cfg.num_queues, NQ);
    assert_int_equal(cfg.seg_max, VBLK_SEG_MAX);
    assert_int_equal(cfg.wce, 1);
}

static void test_get_config_partial_read(void **state)
{
    struct vhost_user_config c = {.offset = offsetof(struct virtio_blk_config, num_queues),
                                  .size = 2};
    uint16_t nq;

    send_msg(VHOST_USER_GET_CONFIG, &c, VHOST_USER_CONFIG_HDR_SIZE + c.size);
    assert_ok();
    assert_int_equal(recv_reply(VHOST_USER_GET_CONFIG, &c, sizeof(c)),
                     VHOST_USER_CONFIG_HDR_SIZE + 2);
    memcpy(&nq, c.region, 2);
    assert_int_equal(nq, NQ);
}

static void test_get_config_out_of_range_closes(void **state)
{
    struct vhost_user_config c = {.offset = 250, .size = 10};

    send_msg(VHOST_USER_GET_CONFIG, &c, VHOST_USER_CONFIG_HDR_SIZE + c.size);
    assert_closed();
}

static void test_get_config_size_mismatch_closes(void **state)
{
    struct vhost_user_config c = {.offset = 0, .size = 8};

    send_msg(VHOST_USER_GET_CONFIG, &c, VHOST_USER_CONFIG_HDR_SIZE + 4);
    assert_closed();
}

static void test_set_config_wce(void **state)
{
    struct vhost_user_config c = {.offset = offsetof(struct virtio_blk_config, wce), .size = 1};

    c.region[0] = 0;
    send_msg(VHOST_USER_SET_CONFIG, &c, VHOST_USER_CONFIG_HDR_SIZE + 1);
    assert_ok();
    assert_false(blk.wce);
    c.region[0] = 1;
    send_msg(VHOST_USER_SET_CONFIG, &c, VHOST_USER_CONFIG_HDR_SIZE + 1);
    assert_ok();
    assert_true(blk.wce);
}

static void test_set_config_other_offset_closes(void **state)
{
    struct vhost_user_config c = {.offset = 0, .size = 8};

    send_msg(VHOST_USER_SET_CONFIG, &c, VHOST_USER_CONFIG_HDR_SIZE + 8);
    assert_closed();
}

static void test_set_config_bad_wce_value_closes(void **state)
{
    struct vhost_user_config c = {.offset = offsetof(struct virtio_blk_config, wce), .size = 1};

    c.region[0] = 7;
    send_msg(VHOST_USER_SET_CONFIG, &c, VHOST_USER_CONFIG_HDR_SIZE + 1);
    assert_closed();
}

/* ---- a whole ring: memfd memory, I/O thread, kick, call, GET_VRING_BASE ---- */

#define RING_GPA  0x40000000ull
#define RING_UVA  0x7e0000000000ull
#define RING_SIZE (1u << 20)
#define RING_NUM  8

/* Messages that hand the front-end's memfd over as one region at RING_GPA/RING_UVA. */
static void send_ring_mem_table(int memfd)
{
    struct vhost_user_memory m = {.nregions = 1};

    m.regions[0] = (struct vhost_user_mem_region){RING_GPA, RING_SIZE, RING_UVA, 0};
    send_msg_fds(VHOST_USER_SET_MEM_TABLE, VHOST_USER_VERSION, &m,
                 8 + (uint32_t)sizeof(m.regions[0]), &memfd, 1);
}

/* Messages that set queue 0 up at the start of that region (desc, avail +4K, used +8K), then
 * hand over its call and kick eventfds (the kick starts it). */
static void send_ring0_setup(int call, int kick)
{
    struct vhost_user_vring_addr a = {.index = 0,
                                      .desc_user_addr = RING_UVA,
                                      .avail_user_addr = RING_UVA + 0x1000,
                                      .used_user_addr = RING_UVA + 0x2000};
    uint64_t u = 0;

    send_state(VHOST_USER_SET_VRING_NUM, 0, RING_NUM);
    send_state(VHOST_USER_SET_VRING_BASE, 0, 0);
    send_msg(VHOST_USER_SET_VRING_ADDR, &a, sizeof(a));
    send_msg_fds(VHOST_USER_SET_VRING_CALL, VHOST_USER_VERSION, &u, sizeof(u), &call, 1);
    send_msg_fds(VHOST_USER_SET_VRING_KICK, VHOST_USER_VERSION, &u, sizeof(u), &kick, 1);
}

static void test_full_ring_start_request_and_stop(void **state)
{
    int memfd = make_memfd(RING_SIZE);
    uint8_t *gm = mmap(NULL, RING_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0);
    struct vring_desc *desc = (struct vring_desc *)gm;
    struct vring_avail *avail = (struct vring_avail *)(gm + 0x1000);
    struct vring_used *used = (struct vring_used *)(gm + 0x2000);
    struct virtio_blk_outhdr *hdr = (struct virtio_blk_outhdr *)(gm + 0x10000);
    uint8_t *id = gm + 0x10100, *status = gm + 0x10200;
    struct vhost_user_memory m = {.nregions = 1};
    struct vhost_user_vring_addr a = {.index = 0,
                                      .desc_user_addr = RING_UVA,
                                      .avail_user_addr = RING_UVA + 0x1000,
                                      .used_user_addr = RING_UVA + 0x2000};
    struct vhost_user_vring_state s;
    int kick = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK), call = eventfd(0, EFD_CLOEXEC);
    struct pollfd p = {.fd = call, .events = POLLIN};
    uint64_t u;

    assert_true(gm != MAP_FAILED);
    m.regions[0] = (struct vhost_user_mem_region){RING_GPA, RING_SIZE, RING_UVA, 0};
    send_u64(VHOST_USER_SET_FEATURES,
             (1ull << VIRTIO_F_VERSION_1) | (1ull << VIRTIO_RING_F_EVENT_IDX) |
                 (1ull << VIRTIO_RING_F_INDIRECT_DESC) | (1ull << VHOST_USER_F_PROTOCOL_FEATURES));
    send_msg_fds(VHOST_USER_SET_MEM_TABLE, VHOST_USER_VERSION, &m,
                 8 + (uint32_t)sizeof(m.regions[0]), &memfd, 1);
    send_state(VHOST_USER_SET_VRING_NUM, 0, RING_NUM);
    send_state(VHOST_USER_SET_VRING_BASE, 0, 0);
    send_msg(VHOST_USER_SET_VRING_ADDR, &a, sizeof(a));
    u = 0;
    send_msg_fds(VHOST_USER_SET_VRING_CALL, VHOST_USER_VERSION, &u, sizeof(u), &call, 1);
    send_msg_fds(VHOST_USER_SET_VRING_KICK, VHOST_USER_VERSION, &u, sizeof(u), &kick, 1);
    assert_ok();
    assert_true(vu.vrings[0].started);
    assert_true(blk.queues[0].started);
    assert_false(vu.vrings[1].started);

    /* GET_ID through the ring */
    hdr->type = VIRTIO_BLK_T_GET_ID;
    *status = 0xee;
    desc[0] = (struct vring_desc){RING_GPA + 0x10000, 16, VRING_DESC_F_NEXT, 1};
    desc[1] =
        (struct vring_desc){RING_GPA + 0x10100, 20, VRING_DESC_F_NEXT | VRING_DESC_F_WRITE, 2};
    desc[2] = (struct vring_desc){RING_GPA + 0x10200, 1, VRING_DESC_F_WRITE, 0};
    avail->ring[0] = 0;
    __atomic_store_n(&avail->idx, 1, __ATOMIC_RELEASE);
    assert_int_equal(eventfd_write(kick, 1), 0);
    assert_int_equal(poll(&p, 1, 5000), 1);
    assert_int_equal(__atomic_load_n(&used->idx, __ATOMIC_ACQUIRE), 1);
    assert_int_equal(*status, VIRTIO_BLK_S_OK);
    assert_int_equal(used->ring[0].id, 0);
    assert_int_equal(used->ring[0].len, 21);
    assert_memory_equal(id, "vu-serial\0\0\0\0\0\0\0\0\0\0\0", 20);

    /* stop: GET_VRING_BASE returns the next avail index */
    send_state(VHOST_USER_GET_VRING_BASE, 0, 0);
    assert_ok();
    assert_int_equal(recv_reply(VHOST_USER_GET_VRING_BASE, &s, sizeof(s)), sizeof(s));
    assert_int_equal(s.index, 0);
    assert_int_equal(s.num, 1);
    assert_false(vu.vrings[0].started);
    assert_false(blk.queues[0].started);

    vblk_vu_disconnect(&vu);
    munmap(gm, RING_SIZE);
    close(memfd);
    close(kick);
    close(call);
}

/* A hostile front-end shrinks the memfd behind a running ring: the SIGBUS guard replaces the
 * region with zeroes (one mapping for the whole region), the I/O thread (and this process)
 * survive, the guard's eventfd fires and the control thread closes that connection. */
static void test_memfd_shrunk_under_running_ring_survives(void **state)
{
    int memfd = make_memfd(RING_SIZE);
    int kick = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK), call = eventfd(0, EFD_CLOEXEC);
    unsigned long before = vblk_mem_sigbus_count();
    struct pollfd p;
    char b[16];

    assert_int_equal(vblk_mem_sigbus_guard_install(), 0);
    p = (struct pollfd){.fd = vblk_mem_guard_fd(), .events = POLLIN};
    send_ring_mem_table(memfd);
    send_ring0_setup(call, kick);
    assert_ok();
    assert_true(blk.queues[0].started);
    assert_false(vblk_vu_check_lost_memory(&vu));

    assert_int_equal(ftruncate(memfd, 0), 0); /* every mapped page is gone */
    assert_int_equal(eventfd_write(kick, 1), 0);
    assert_int_equal(poll(&p, 1, 5000), 1);
    assert_int_equal(vblk_mem_sigbus_count(), before + 1);
    assert_int_equal(__atomic_load_n(&vu.mem_owner.hits, __ATOMIC_RELAXED), 1);

    assert_true(vblk_vu_check_lost_memory(&vu));
    assert_int_equal(vu.conn_fd, -1);
    assert_false(blk.queues[0].started);
    assert_int_equal(recv(sk[1], b, sizeof(b), MSG_DONTWAIT), 0); /* the front-end sees EOF */
    assert_int_equal(vu.mem_owner.mapped, 0);
    assert_int_equal(vu.mem_owner.slots, 0);
    /* the export takes the next front-end */
    close(sk[1]);
    connect_pair();
    send_msg(VHOST_USER_GET_QUEUE_NUM, NULL, 0);
    assert_ok();
    assert_int_equal(recv_u64(VHOST_USER_GET_QUEUE_NUM), NQ);
    close(memfd);
    close(kick);
    close(call);
}

/* A front-end may set a ring up before it sends the memory table: the ring starts once the
 * memory arrives. */
static void test_ring_kicked_before_mem_table_starts_later(void **state)
{
    int memfd = make_memfd(RING_SIZE);
    int kick = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK), call = eventfd(0, EFD_CLOEXEC);

    send_ring0_setup(call, kick);
    assert_ok();
    assert_false(vu.vrings[0].started);
    send_ring_mem_table(memfd);
    assert_ok();
    assert_true(vu.vrings[0].started);
    assert_true(blk.queues[0].started);
    vblk_vu_disconnect(&vu);
    close(memfd);
    close(kick);
    close(call);
}

static void test_ring_outside_memory_closes(void **state)
{
    int memfd = make_memfd(RING_SIZE), kick = eventfd(0, EFD_CLOEXEC);
    struct vhost_user_memory m = {.nregions = 1};
    struct vhost_user_vring_addr a = {.index = 0,
                                      .desc_user_addr = RING_UVA + RING_SIZE - 64,
                                      .avail_user_addr = RING_UVA + 0x1000,
                                      .used_user_addr = RING_UVA + 0x2000};
    uint64_t u = 0;

    m.regions[0] = (struct vhost_user_mem_region){RING_GPA, RING_SIZE, RING_UVA, 0};
    send_msg_fds(VHOST_USER_SET_MEM_TABLE, VHOST_USER_VERSION, &m,
                 8 + (uint32_t)sizeof(m.regions[0]), &memfd, 1);
    send_state(VHOST_USER_SET_VRING_NUM, 0, RING_NUM);
    send_msg(VHOST_USER_SET_VRING_ADDR, &a, sizeof(a));
    send_msg_fds(VHOST_USER_SET_VRING_KICK, VHOST_USER_VERSION, &u, sizeof(u), &kick, 1);
    close(memfd);
    close(kick);
    assert_closed();
    assert_false(blk.queues[0].started);
}

/* ---- isolation: what one hostile front-end can make the daemon hold or wait for ---- */

static void send_vring_fd(uint32_t req, unsigned idx, int fd)
{
    uint64_t u = idx;

    send_msg_fds(req, VHOST_USER_VERSION, &u, sizeof(u), &fd, 1);
}

static void test_kick_call_err_pipe_fd_closes(void **state)
{
    const uint32_t reqs[] = {VHOST_USER_SET_VRING_KICK, VHOST_USER_SET_VRING_CALL,
                             VHOST_USER_SET_VRING_ERR};

    for (unsigned i = 0; i < 3; i++) {
        int p[2];

        assert_int_equal(pipe(p), 0);
        send_vring_fd(reqs[i], 0, p[1]); /* a pipe nobody reads would block the signaller */
        close(p[0]);
        close(p[1]);
        assert_closed();
        close(sk[1]);
        connect_pair();
    }
}

static void test_kick_memfd_closes(void **state)
{
    int fd = make_memfd(4096);

    send_vring_fd(VHOST_USER_SET_VRING_KICK, 0, fd);
    close(fd);
    assert_closed();
}

/* Semaphore eventfds stay readable after a read: refused where the kernel lets us tell. */
static void test_semaphore_eventfd_closes(void **state)
{
    int fd = eventfd(0, EFD_CLOEXEC | EFD_SEMAPHORE);
    char path[64], line[128];
    bool shown = false;
    FILE *f;

    snprintf(path, sizeof(path), "/proc/self/fdinfo/%d", fd);
    f = fopen(path, "r");
    assert_non_null(f);
    while (fgets(line, sizeof(line), f))
        shown |= strncmp(line, "eventfd-semaphore:", 18) == 0;
    fclose(f);
    send_vring_fd(VHOST_USER_SET_VRING_CALL, 0, fd);
    close(fd);
    if (!shown) {
        assert_ok(); /* this kernel hides the flag: the budget is what bounds a spinning reader */
        skip();
    }
    assert_closed();
}

/* A blocking eventfd is made non-blocking: signalling one that is full returns EAGAIN instead of
 * waiting for the front-end to read it. */
static void test_blocking_eventfd_made_nonblocking(void **state)
{
    int fd = eventfd(0, EFD_CLOEXEC);

    assert_int_equal(eventfd_write(fd, 0xfffffffffffffffeull), 0);
    send_vring_fd(VHOST_USER_SET_VRING_CALL, 1, fd);
    assert_ok();
    assert_true(fcntl(vu.vrings[1].call_fd, F_GETFL) & O_NONBLOCK);
    assert_int_equal(eventfd_write(vu.vrings[1].call_fd, 1), -1);
    assert_int_equal(errno, EAGAIN);
    close(fd);
}

static void test_message_budget_per_readable(void **state)
{
    int pending = 0;

    for (unsigned i = 0; i < VBLK_VU_MSG_BUDGET + 10; i++)
        send_msg(VHOST_USER_SET_OWNER, NULL, 0);
    assert_ok();
    assert_int_equal(ioctl(sk[0], FIONREAD, &pending), 0);
    assert_int_equal(pending, 10 * VHOST_USER_HDR_SIZE); /* left for the next event */
    assert_ok();
    assert_int_equal(ioctl(sk[0], FIONREAD, &pending), 0);
    assert_int_equal(pending, 0);
}

static void send_one_region(uint64_t gpa, uint64_t size, uint64_t uva, uint64_t off, int fd)
{
    struct vhost_user_memory m = {.nregions = 1};

    m.regions[0] = (struct vhost_user_mem_region){gpa, size, uva, off};
    send_msg_fds(VHOST_USER_SET_MEM_TABLE, VHOST_USER_VERSION, &m,
                 8 + (uint32_t)sizeof(m.regions[0]), &fd, 1);
}

static void test_region_dev_zero_closes(void **state)
{
    int fd = open("/dev/zero", O_RDWR | O_CLOEXEC);

    assert_true(fd >= 0);
    send_one_region(0, 1 << 20, 0x7e0000000000ull, 0, fd);
    close(fd);
    assert_closed();
    assert_null(vu.mem);
}

static void test_region_pipe_closes(void **state)
{
    int p[2];

    assert_int_equal(pipe(p), 0);
    send_one_region(0, 4096, 0x7e0000000000ull, 0, p[0]);
    close(p[0]);
    close(p[1]);
    assert_closed();
}

/* A regular file on a disk file system: its page faults could wait on the disk (or, on FUSE,
 * on the front-end itself). */
static void test_region_on_disk_file_system_closes(void **state)
{
    const char *dirs[] = {"/var/tmp", ".", "/tmp"};
    char path[256];
    int fd = -1;

    for (unsigned i = 0; i < 3 && fd < 0; i++) {
        struct statfs sfs;

        if (statfs(dirs[i], &sfs) < 0 || sfs.f_type == TMPFS_MAGIC || sfs.f_type == HUGETLBFS_MAGIC)
            continue;
        snprintf(path, sizeof(path), "%s/vu-test-region.XXXXXX", dirs[i]);
        fd = mkstemp(path);
        if (fd >= 0)
            unlink(path);
    }
    if (fd < 0)
        skip(); /* everything here is tmpfs */
    assert_int_equal(ftruncate(fd, 1 << 20), 0);
    send_one_region(0, 1 << 20, 0x7e0000000000ull, 0, fd);
    close(fd);
    assert_closed();
}

static uint64_t vm_size_kb(void)
{
    char line[256];
    uint64_t kb = 0;
    FILE *f = fopen("/proc/self/status", "r");

    assert_non_null(f);
    while (fgets(line, sizeof(line), f))
        if (sscanf(line, "VmSize: %" SCNu64, &kb) == 1)
            break;
    fclose(f);
    return kb;
}

/* Only the pages a region covers are mapped, not the file from offset 0. */
static void test_huge_mmap_offset_maps_only_the_region(void **state)
{
    const uint64_t off = 1ull << 40;
    int fd = make_memfd(0);
    uint64_t before = vm_size_kb();

    assert_int_equal(ftruncate(fd, (off_t)(off + (1 << 20))), 0); /* sparse */
    send_one_region(0, 1 << 20, 0x7e0000000000ull, off, fd);
    close(fd);
    assert_ok();
    assert_non_null(vu.mem);
    assert_int_equal(vu.mem_owner.mapped, 1 << 20);
    assert_true(vm_size_kb() < before + (64 << 10)); /* grew by far less than 64 MiB */
}

static void test_region_over_1tib_closes(void **state)
{
    int fd = make_memfd(0);

    assert_int_equal(ftruncate(fd, (off_t)(VBLK_MEM_MAX_BYTES + (1 << 20))), 0);
    send_one_region(0, VBLK_MEM_MAX_BYTES + 4096, 0x7e0000000000ull, 0, fd);
    close(fd);
    assert_closed();
    assert_int_equal(vu.mem_owner.mapped, 0);
}

/* Regions one connection may hold are capped: ADD_MEM_REG past the table's slots closes, and
 * nothing stays mapped or guarded once it is gone. */
static void test_add_mem_reg_flood_is_capped(void **state)
{
    struct vhost_user_mem_reg_msg r = {.region = {.memory_size = 65536}};
    int fd = make_memfd(65536ull * (VBLK_MEM_SLOTS_MAX + 8));
    unsigned i;

    for (i = 0; i < VBLK_MEM_SLOTS_MAX; i++) {
        r.region.guest_phys_addr = 0x100000ull * (i + 1);
        r.region.userspace_addr = 0x7d0000000000ull + 0x100000ull * i;
        r.region.mmap_offset = 65536ull * i;
        send_msg_fds(VHOST_USER_ADD_MEM_REG, VHOST_USER_VERSION, &r, sizeof(r), &fd, 1);
        assert_ok();
    }
    assert_int_equal(vu.mem->nregions, VBLK_MEM_SLOTS_MAX);
    r.region.guest_phys_addr = 0x100000ull * (i + 1);
    r.region.userspace_addr = 0x7d0000000000ull + 0x100000ull * i;
    send_msg_fds(VHOST_USER_ADD_MEM_REG, VHOST_USER_VERSION, &r, sizeof(r), &fd, 1);
    close(fd);
    assert_closed();
    assert_int_equal(vu.mem_owner.mapped, 0);
    assert_int_equal(vu.mem_owner.slots, 0);
}

/* The front-end's ring addresses are aligned but the region's mmap_offset makes ours not. */
static void test_ring_misaligned_in_our_mapping_closes(void **state)
{
    int fd = make_memfd(RING_SIZE + 4096), kick = eventfd(0, EFD_CLOEXEC);
    uint64_t u = 0;
    struct vhost_user_vring_addr a = {.index = 0,
                                      .desc_user_addr = RING_UVA,
                                      .avail_user_addr = RING_UVA + 0x1000,
                                      .used_user_addr = RING_UVA + 0x2000};

    send_one_region(RING_GPA, RING_SIZE, RING_UVA, 8, fd);
    send_state(VHOST_USER_SET_VRING_NUM, 0, RING_NUM);
    send_msg(VHOST_USER_SET_VRING_ADDR, &a, sizeof(a));
    send_msg_fds(VHOST_USER_SET_VRING_KICK, VHOST_USER_VERSION, &u, sizeof(u), &kick, 1);
    close(fd);
    close(kick);
    assert_closed();
    assert_false(blk.queues[0].started);
}

/* The same eventfd as the kick of two queues served by one thread: both rings run (the fd is
 * non-blocking, so whichever read finds it empty does not wait). */
static void test_one_kick_fd_for_two_queues(void **state)
{
    int memfd = make_memfd(RING_SIZE), kick = eventfd(0, EFD_CLOEXEC), call = eventfd(0, 0);
    struct vhost_user_vring_addr a = {.index = 1,
                                      .desc_user_addr = RING_UVA + 0x4000,
                                      .avail_user_addr = RING_UVA + 0x5000,
                                      .used_user_addr = RING_UVA + 0x6000};
    uint64_t u = 1;

    send_ring_mem_table(memfd);
    send_ring0_setup(call, kick);
    send_state(VHOST_USER_SET_VRING_NUM, 1, RING_NUM);
    send_msg(VHOST_USER_SET_VRING_ADDR, &a, sizeof(a));
    send_msg_fds(VHOST_USER_SET_VRING_KICK, VHOST_USER_VERSION, &u, sizeof(u), &kick, 1);
    assert_ok();
    assert_true(blk.queues[0].started);
    assert_true(blk.queues[1].started);
    for (unsigned i = 0; i < 100; i++)
        assert_int_equal(eventfd_write(kick, 1), 0);
    send_msg(VHOST_USER_GET_QUEUE_NUM, NULL, 0); /* the I/O thread still answers its calls */
    send_state(VHOST_USER_GET_VRING_BASE, 0, 0);
    send_state(VHOST_USER_GET_VRING_BASE, 1, 0);
    assert_ok();
    assert_int_equal(recv_u64(VHOST_USER_GET_QUEUE_NUM), NQ);
    assert_false(blk.queues[0].started);
    assert_false(blk.queues[1].started);
    vblk_vu_disconnect(&vu);
    close(memfd);
    close(kick);
    close(call);
}

/* ---- a stuck I/O thread tears its export down, and only that ---- */

static int stuck_pipe[2] = {-1, -1}; /* static: the stuck thread reads it after the test */

static int block_on_pipe(void *arg)
{
    char c;

    return read(stuck_pipe[0], &c, 1) == 1 ? 0 : -EIO;
}

/* The I/O thread stops answering (storage that hangs, say): the next message that needs it
 * closes the connection within the timeout, the export refuses new front-ends, and the memory
 * and fds the thread may still touch are left mapped and open. */
static void test_stuck_io_thread_tears_export_down(void **state)
{
    int memfd = make_memfd(RING_SIZE);
    int kick = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK), call = eventfd(0, EFD_CLOEXEC);
    struct vblk_mem *mem;
    int fds_before;

    send_ring_mem_table(memfd);
    send_ring0_setup(call, kick);
    assert_ok();
    assert_true(blk.queues[0].started);
    mem = vu.mem;
    assert_int_equal(pipe(stuck_pipe), 0);
    assert_int_equal(vblk_iothread_call(iot, block_on_pipe, NULL), -ETIMEDOUT);
    fds_before = count_open_fds();

    send_state(VHOST_USER_GET_VRING_BASE, 0, 0); /* needs the thread: times out */
    assert_true(vblk_vu_readable(&vu) < 0);
    assert_true(vu.wedged);
    assert_int_equal(vu.conn_fd, -1);
    assert_null(vu.mem); /* left to the thread, not unmapped */
    assert_non_null(vblk_mem_gpa(mem, RING_GPA, &(uint64_t){8})); /* still mapped */
    assert_int_equal(count_open_fds(), fds_before - 1);           /* only the connection closed */
    assert_int_equal(vblk_vu_attach(&vu, 12345), -EIO);           /* refused from now on */

    /* let the thread go; it must not be destroyed under anything: teardown leaves it */
    assert_int_equal(write(stuck_pipe[1], "x", 1), 1);
    close(memfd);
}

/* ---- in-flight record messages ---- */

static int get_inflight_fd(uint16_t nq, uint16_t qs, struct vhost_user_inflight *out)
{
    struct vhost_user_inflight f = {.num_queues = nq, .queue_size = qs};
    struct vhost_user_msg m;
    int fds[1], fd = -1;
    unsigned nfds = 0;
    bool overflow = false;
    ssize_t n;

    send_msg(VHOST_USER_GET_INFLIGHT_FD, &f, sizeof(f));
    assert_ok();
    n = vblk_recv_fds(sk[1], &m, sizeof(m), fds, &nfds, 1, &overflow, MSG_DONTWAIT);
    assert_int_equal(n, VHOST_USER_HDR_SIZE + sizeof(f));
    assert_int_equal(m.hdr.request, VHOST_USER_GET_INFLIGHT_FD);
    assert_int_equal(nfds, 1);
    fd = fds[0];
    *out = m.payload.inflight;
    return fd;
}

static void test_get_inflight_fd_gives_a_zeroed_buffer_of_the_right_size(void **state)
{
    struct vhost_user_inflight f;
    struct stat st;
    int fd = get_inflight_fd(NQ, 128, &f);

    assert_int_equal(f.num_queues, NQ);
    assert_int_equal(f.queue_size, 128);
    assert_int_equal(f.mmap_offset, 0);
    assert_int_equal(f.mmap_size, NQ * vblk_inflight_queue_size(128));
    assert_int_equal(fstat(fd, &st), 0);
    assert_int_equal((uint64_t)st.st_size, f.mmap_size);
    send_msg_fds(VHOST_USER_SET_INFLIGHT_FD, VHOST_USER_VERSION, &f, sizeof(f), &fd, 1);
    assert_ok();
    assert_non_null(vu.inflight.map);
    assert_int_equal(vu.inflight_queues, NQ);
    close(fd);
}

static void test_inflight_bad_sizes_close(void **state)
{
    struct vhost_user_inflight f = {.num_queues = NQ + 1, .queue_size = 128};

    send_msg(VHOST_USER_GET_INFLIGHT_FD, &f, sizeof(f));
    assert_closed();
    close(sk[1]);
    connect_pair();
    f = (struct vhost_user_inflight){.num_queues = 1, .queue_size = 100};
    send_msg(VHOST_USER_GET_INFLIGHT_FD, &f, sizeof(f));
    assert_closed();
}

/* A buffer smaller than the record it must hold, or not in memory, is refused. */
static void test_set_inflight_fd_too_small_or_not_memory_closes(void **state)
{
    struct vhost_user_inflight f = {.num_queues = NQ, .queue_size = 128};
    int fd = make_memfd(4096);

    f.mmap_size = 4096; /* says it is small */
    send_msg_fds(VHOST_USER_SET_INFLIGHT_FD, VHOST_USER_VERSION, &f, sizeof(f), &fd, 1);
    assert_closed();
    close(sk[1]);
    connect_pair();
    f.mmap_size = NQ * vblk_inflight_queue_size(128); /* lies: the file is 4096 bytes */
    send_msg_fds(VHOST_USER_SET_INFLIGHT_FD, VHOST_USER_VERSION, &f, sizeof(f), &fd, 1);
    assert_closed();
    close(fd);
    close(sk[1]);
    connect_pair();
    fd = open("/dev/zero", O_RDWR | O_CLOEXEC);
    send_msg_fds(VHOST_USER_SET_INFLIGHT_FD, VHOST_USER_VERSION, &f, sizeof(f), &fd, 1);
    assert_closed();
    close(fd);
}

/* A ring started with a record resubmits what it lists as in flight: here a GET_ID request a
 * "previous daemon" took and never completed. */
static void test_ring_resubmits_what_the_record_lists(void **state)
{
    int memfd = make_memfd(RING_SIZE);
    uint8_t *gm = mmap(NULL, RING_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0);
    struct vring_desc *desc = (struct vring_desc *)gm;
    struct vring_avail *avail = (struct vring_avail *)(gm + 0x1000);
    struct vring_used *used = (struct vring_used *)(gm + 0x2000);
    struct virtio_blk_outhdr *hdr = (struct virtio_blk_outhdr *)(gm + 0x10000);
    uint8_t *status = gm + 0x10200;
    int kick = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK), call = eventfd(0, EFD_CLOEXEC);
    struct pollfd p = {.fd = call, .events = POLLIN};
    struct vhost_user_inflight f;
    struct vblk_inflight_split *rec;
    int fd;

    assert_true(gm != MAP_FAILED);
    fd = get_inflight_fd(1, RING_NUM, &f);
    rec = mmap(NULL, f.mmap_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    assert_true(rec != MAP_FAILED);
    /* what the previous daemon left: head 2 taken (avail idx 1), nothing used */
    desc[2] = (struct vring_desc){RING_GPA + 0x10000, 16, VRING_DESC_F_NEXT, 3};
    desc[3] =
        (struct vring_desc){RING_GPA + 0x10100, 20, VRING_DESC_F_NEXT | VRING_DESC_F_WRITE, 4};
    desc[4] = (struct vring_desc){RING_GPA + 0x10200, 1, VRING_DESC_F_WRITE, 0};
    hdr->type = VIRTIO_BLK_T_GET_ID;
    *status = 0xee;
    avail->ring[0] = 2;
    avail->idx = 1;
    rec->version = 1;
    rec->desc_num = RING_NUM;
    rec->desc[2].inflight = 1;
    rec->desc[2].counter = 41;

    send_msg_fds(VHOST_USER_SET_INFLIGHT_FD, VHOST_USER_VERSION, &f, sizeof(f), &fd, 1);
    send_ring_mem_table(memfd);
    send_ring0_setup(call, kick); /* base 0: the used index, as QEMU sends after a crash */
    assert_ok();
    assert_int_equal(poll(&p, 1, 5000), 1);
    assert_int_equal(__atomic_load_n(&used->idx, __ATOMIC_ACQUIRE), 1);
    assert_int_equal(used->ring[0].id, 2);
    assert_int_equal(*status, VIRTIO_BLK_S_OK);
    assert_int_equal(rec->desc[2].inflight, 0);
    assert_int_equal(rec->used_idx, 1);
    assert_int_equal(blk.queues[0].vq.last_avail, 1); /* not taken a second time */
    vblk_vu_disconnect(&vu);
    munmap(rec, f.mmap_size);
    munmap(gm, RING_SIZE);
    close(fd);
    close(memfd);
    close(kick);
    close(call);
}

/* ---- dirty logging (live migration) ---- */

static bool log_bit(const uint8_t *log, uint64_t gpa)
{
    uint64_t page = gpa / 4096;

    return log[page / 8] & (1u << (page % 8));
}

/* With VHOST_F_LOG_ALL and a log from SET_LOG_BASE, every guest page the device writes (the
 * data read, the status byte, the used ring) is marked before the guest sees the completion. */
static void test_dirty_log_marks_what_the_device_writes(void **state)
{
    int memfd = make_memfd(RING_SIZE);
    uint8_t *gm = mmap(NULL, RING_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0);
    struct vring_desc *desc = (struct vring_desc *)gm;
    struct vring_avail *avail = (struct vring_avail *)(gm + 0x1000);
    struct vring_used *used = (struct vring_used *)(gm + 0x2000);
    struct virtio_blk_outhdr *hdr = (struct virtio_blk_outhdr *)(gm + 0x10000);
    int kick = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK), call = eventfd(0, EFD_CLOEXEC);
    struct pollfd p = {.fd = call, .events = POLLIN};
    uint64_t log_bytes = (RING_GPA + RING_SIZE) / 4096 / 8;
    int logfd = make_memfd(log_bytes);
    uint8_t *log = mmap(NULL, log_bytes, PROT_READ | PROT_WRITE, MAP_SHARED, logfd, 0);
    struct vhost_user_log l = {.mmap_size = log_bytes, .mmap_offset = 0};
    struct vhost_user_vring_addr a = {.index = 0,
                                      .flags = 1, /* log the used ring */
                                      .desc_user_addr = RING_UVA,
                                      .avail_user_addr = RING_UVA + 0x1000,
                                      .used_user_addr = RING_UVA + 0x2000,
                                      .log_guest_addr = RING_GPA + 0x2000};
    struct vhost_user_msg m;
    uint64_t u = 0;

    assert_true(gm != MAP_FAILED && log != MAP_FAILED);
    send_u64(VHOST_USER_SET_PROTOCOL_FEATURES, 1ull << VHOST_USER_PROTOCOL_F_LOG_SHMFD);
    send_u64(VHOST_USER_SET_FEATURES, (1ull << VIRTIO_F_VERSION_1) | (1ull << VHOST_F_LOG_ALL) |
                                          (1ull << VHOST_USER_F_PROTOCOL_FEATURES));
    send_msg_fds(VHOST_USER_SET_LOG_BASE, VHOST_USER_VERSION, &l, sizeof(l), &logfd, 1);
    send_ring_mem_table(memfd);
    send_state(VHOST_USER_SET_VRING_NUM, 0, RING_NUM);
    send_state(VHOST_USER_SET_VRING_BASE, 0, 0);
    send_msg(VHOST_USER_SET_VRING_ADDR, &a, sizeof(a));
    send_msg_fds(VHOST_USER_SET_VRING_CALL, VHOST_USER_VERSION, &u, sizeof(u), &call, 1);
    send_msg_fds(VHOST_USER_SET_VRING_KICK, VHOST_USER_VERSION, &u, sizeof(u), &kick, 1);
    assert_ok();
    assert_int_equal(recv(sk[1], &m, sizeof(m), MSG_DONTWAIT), VHOST_USER_HDR_SIZE);
    assert_int_equal(m.hdr.request, VHOST_USER_SET_LOG_BASE);
    assert_true(blk.queues[0].started);

    /* a GET_ID: 20 bytes written at +0x13000, status at +0x14000 */
    desc[0] = (struct vring_desc){RING_GPA + 0x10000, 16, VRING_DESC_F_NEXT, 1};
    desc[1] =
        (struct vring_desc){RING_GPA + 0x13000, 20, VRING_DESC_F_NEXT | VRING_DESC_F_WRITE, 2};
    desc[2] = (struct vring_desc){RING_GPA + 0x14000, 1, VRING_DESC_F_WRITE, 0};
    hdr->type = VIRTIO_BLK_T_GET_ID;
    avail->ring[0] = 0;
    __atomic_store_n(&avail->idx, 1, __ATOMIC_RELEASE);
    assert_int_equal(eventfd_write(kick, 1), 0);
    assert_int_equal(poll(&p, 1, 5000), 1);
    assert_int_equal(__atomic_load_n(&used->idx, __ATOMIC_ACQUIRE), 1);
    assert_true(log_bit(log, RING_GPA + 0x13000));  /* the data */
    assert_true(log_bit(log, RING_GPA + 0x14000));  /* the status byte */
    assert_true(log_bit(log, RING_GPA + 0x2000));   /* the used ring */
    assert_false(log_bit(log, RING_GPA + 0x10000)); /* the header was only read */
    assert_false(log_bit(log, RING_GPA + 0x20000));

    /* logging off: nothing more is marked */
    memset(log, 0, log_bytes);
    send_u64(VHOST_USER_SET_FEATURES,
             (1ull << VIRTIO_F_VERSION_1) | (1ull << VHOST_USER_F_PROTOCOL_FEATURES));
    assert_ok();
    avail->ring[1] = 0;
    __atomic_store_n(&avail->idx, 2, __ATOMIC_RELEASE);
    assert_int_equal(eventfd_write(kick, 1), 0);
    for (int i = 0; i < 500 && __atomic_load_n(&used->idx, __ATOMIC_ACQUIRE) != 2; i++)
        usleep(1000);
    assert_int_equal(__atomic_load_n(&used->idx, __ATOMIC_ACQUIRE), 2);
    assert_false(log_bit(log, RING_GPA + 0x13000));
    vblk_vu_disconnect(&vu);
    munmap(log, log_bytes);
    munmap(gm, RING_SIZE);
    close(logfd);
    close(memfd);
    close(kick);
    close(call);
}

/* A log that is not memory, smaller than it says, or read-only is refused. */
static void test_bad_log_base_closes(void **state)
{
    struct vhost_user_log l = {.mmap_size = 1 << 20};
    int fd = make_memfd(4096), z = open("/dev/zero", O_RDWR | O_CLOEXEC);

    send_msg_fds(VHOST_USER_SET_LOG_BASE, VHOST_USER_VERSION, &l, sizeof(l), &fd, 1);
    assert_closed();
    close(sk[1]);
    connect_pair();
    l.mmap_size = 4096;
    send_msg_fds(VHOST_USER_SET_LOG_BASE, VHOST_USER_VERSION, &l, sizeof(l), &z, 1);
    assert_closed();
    close(z);
    /* a read-only fd of a memfd: the log cannot be written, so it is refused */
    close(sk[1]);
    connect_pair();
    {
        char path[64];

        snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
        z = open(path, O_RDONLY | O_CLOEXEC);
        assert_true(z >= 0);
    }
    send_msg_fds(VHOST_USER_SET_LOG_BASE, VHOST_USER_VERSION, &l, sizeof(l), &z, 1);
    assert_closed();
    close(fd);
    close(z);
}

#define T(f)  cmocka_unit_test_setup_teardown(f, setup, teardown)
#define TI(f) cmocka_unit_test_setup_teardown(f, setup_iot, teardown)
#define TW(f) cmocka_unit_test_setup_teardown(f, setup_iot_short, teardown_wedged)

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(test_get_features_reply),
        T(test_get_protocol_features_queue_num_and_slots),
        T(test_message_split_across_reads),
        T(test_set_features_ok),
        T(test_set_features_with_unoffered_bit_closes),
        T(test_set_features_wrong_size_closes),
        T(test_set_protocol_features_unoffered_bit_closes),
        T(test_unknown_request_closes),
        T(test_unsupported_known_request_closes),
        T(test_payload_too_large_closes),
        T(test_huge_payload_size_closes),
        T(test_bad_version_flags_close),
        T(test_version_2_closes),
        T(test_peer_hangup_closes),
        T(test_new_connection_accepted_after_close),
        T(test_reset_owner_clears_features),
        T(test_reply_ack_sent_when_negotiated),
        T(test_no_reply_ack_without_protocol_feature),
        T(test_set_vring_num_ok),
        T(test_set_vring_num_wrong_payload_size_closes),
        T(test_vring_size_not_power_of_two_closes),
        T(test_vring_size_zero_closes),
        T(test_vring_size_above_queue_size_closes),
        T(test_set_vring_num_index_out_of_range_closes),
        T(test_set_vring_kick_index_out_of_range_closes),
        T(test_set_vring_call_index_out_of_range_closes),
        T(test_set_vring_fd_msg_reserved_bits_close),
        T(test_set_vring_kick_without_fd_closes),
        T(test_set_vring_call_nofd_flag_with_fd_closes),
        T(test_set_vring_call_fd_is_kept),
        T(test_set_vring_base_out_of_range_closes),
        T(test_get_vring_base_of_stopped_ring),
        T(test_set_vring_enable_bad_value_closes),
        T(test_set_vring_addr_unknown_flags_close),
        T(test_fds_on_message_that_takes_none_are_closed),
        T(test_too_many_fds_close),
        T(test_set_mem_table_ok),
        T(test_set_mem_table_9_regions_closes),
        T(test_set_mem_table_0_regions_closes),
        T(test_set_mem_table_fewer_fds_than_regions_closes),
        T(test_set_mem_table_size_mismatch_closes),
        T(test_set_mem_table_region_larger_than_fd_closes),
        T(test_add_and_remove_mem_region),
        T(test_remove_unknown_mem_region_closes),
        T(test_get_config_returns_capacity),
        T(test_get_config_partial_read),
        T(test_get_config_out_of_range_closes),
        T(test_get_config_size_mismatch_closes),
        T(test_set_config_wce),
        T(test_set_config_other_offset_closes),
        T(test_set_config_bad_wce_value_closes),
        TI(test_full_ring_start_request_and_stop),
        TI(test_memfd_shrunk_under_running_ring_survives),
        TI(test_ring_kicked_before_mem_table_starts_later),
        TI(test_ring_outside_memory_closes),
        T(test_kick_call_err_pipe_fd_closes),
        T(test_kick_memfd_closes),
        T(test_semaphore_eventfd_closes),
        T(test_blocking_eventfd_made_nonblocking),
        T(test_message_budget_per_readable),
        T(test_region_dev_zero_closes),
        T(test_region_pipe_closes),
        T(test_region_on_disk_file_system_closes),
        T(test_huge_mmap_offset_maps_only_the_region),
        T(test_region_over_1tib_closes),
        T(test_add_mem_reg_flood_is_capped),
        TI(test_ring_misaligned_in_our_mapping_closes),
        TI(test_one_kick_fd_for_two_queues),
        T(test_get_inflight_fd_gives_a_zeroed_buffer_of_the_right_size),
        T(test_inflight_bad_sizes_close),
        T(test_set_inflight_fd_too_small_or_not_memory_closes),
        TI(test_ring_resubmits_what_the_record_lists),
        TI(test_dirty_log_marks_what_the_device_writes),
        T(test_bad_log_base_closes),
        TW(test_stuck_io_thread_tears_export_down),
    };

    return cmocka_run_group_tests_name("vhost_user", tests, NULL, NULL);
}
