/* test_virtio_blk.c - virtio-blk request handling on queues started without an I/O thread. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <sched.h>
#include <linux/virtio_config.h>
#include <stdlib.h>
#include <string.h>
#include <poll.h>
#include <pthread.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>

#include "fake_guest.h"

#define NUM  512
#define NQ   2
#define DISK (1u << 20) /* bytes */
#define CAP  (DISK / 512)

/* The device's counters, summed over its queues. */
static struct vblk_blk_stats dev_stats(struct vblk_blk_dev *d)
{
    struct vblk_blk_stats st;

    vblk_blk_read_stats(d, NULL, &st); /* no call: loads of the queues' counters */
    return st;
}

static struct fake_blk fb;

static int setup_null(void **state)
{
    fb_init(&fb, FB_NULL, DISK, NQ, NUM);
    for (unsigned q = 0; q < NQ; q++)
        fb_queue_start(&fb, q, true, true);
    return 0;
}

static int setup_file(void **state)
{
    fb_init(&fb, FB_FILE, DISK, NQ, NUM);
    for (unsigned q = 0; q < NQ; q++)
        fb_queue_start(&fb, q, true, true);
    return 0;
}

static int setup_hold(void **state)
{
    fb_init(&fb, FB_HOLD, DISK, NQ, NUM);
    for (unsigned q = 0; q < NQ; q++)
        fb_queue_start(&fb, q, true, true);
    return 0;
}

static int teardown(void **state)
{
    fb_fini(&fb);
    return 0;
}

static struct blk_queue *Q(unsigned q)
{
    return &fb.d.queues[q];
}

/* Build, post and run one request on queue q; returns its status byte. */
/* The file under the filters of fb's stack. */
static int file_fd(void)
{
    return vblk_bdev_find(fb.bdev, &vblk_bdev_file)->fd;
}

static uint8_t run_req(unsigned q, struct fb_req *r, uint32_t type, uint64_t sector, uint32_t len,
                       bool data_write)
{
    fb_req_build(&fb, q, r, type, sector, len, data_write);
    fg_post(&fb.g, q, r->head);
    fb_run(&fb, q);
    return fb_status(&fb, r);
}

/* The used entry of the most recent completion on queue q. */
static struct vring_used_elem last_used(unsigned q)
{
    return fg_used_elem(&fb.g, q, (uint16_t)(fg_used_idx(&fb.g, q) - 1));
}

static void assert_last_used(unsigned q, uint16_t head, uint32_t len)
{
    struct vring_used_elem e = last_used(q);

    assert_int_equal(e.id, head);
    assert_int_equal(e.len, len);
}

/* ---- reads and writes ---- */

static void test_out_in_round_trip_on_a_file(void **state)
{
    struct fb_req w, r;
    uint8_t pattern[4096], disk[4096];

    for (unsigned i = 0; i < sizeof(pattern); i++)
        pattern[i] = (uint8_t)(i * 7 + 3);
    fb_req_build(&fb, 0, &w, VIRTIO_BLK_T_OUT, 8, sizeof(pattern), false);
    memcpy(w.data, pattern, sizeof(pattern));
    fg_post(&fb.g, 0, w.head);
    fb_run(&fb, 0);
    assert_int_equal(fb_status(&fb, &w), VIRTIO_BLK_S_OK);
    assert_last_used(0, w.head, 1);
    assert_int_equal(pread(file_fd(), disk, sizeof(disk), 8 * 512), (ssize_t)sizeof(disk));
    assert_memory_equal(disk, pattern, sizeof(pattern));

    assert_int_equal(run_req(0, &r, VIRTIO_BLK_T_IN, 8, sizeof(pattern), true), VIRTIO_BLK_S_OK);
    assert_memory_equal(r.data, pattern, sizeof(pattern));
    assert_last_used(0, r.head, sizeof(pattern) + 1);
    assert_int_equal(fg_used_idx(&fb.g, 0), 2);
    assert_int_equal(dev_stats(&fb.d).ops[VBLK_OP_READ], 1);
    assert_int_equal(dev_stats(&fb.d).ops[VBLK_OP_WRITE], 1);
    assert_int_equal(dev_stats(&fb.d).errors, 0);
    assert_false(Q(0)->vq.broken);
}

/* Guest memory as io_uring fixed buffers (fixed-buffers=on): the queue's start registers the
 * sealed table with its engine once it is all allocated, and a read into it takes READ_FIXED
 * (proof: the data page is replaced after registration, the way a balloon would, and the read lands
 * in the pinned old page, not the one the guest sees; the hazard README fixed-buffers describes).
 * Requests posted while the table is replaced (queue stopped, new generation, started again)
 * complete on the new one with the right data; a table that goes away is let go. */
static void test_fixed_buffers_table_change(void **state)
{
    struct blk_queue *q = Q(0);
    struct vblk_queue_params p;
    struct fb_req w[4], r;
    uint8_t disk[4096];
    uint64_t page;
    uint32_t last, gen;

    if (!q->eng->ops->register_bufs) {
        print_message("  [ SKIP ] no io_uring: no fixed buffers\n");
        return;
    }
    fb_queue_stop(&fb, 0);
    fb.d.fixed_bufs = true;
    /* memory not all allocated yet: not registered (pinning would allocate it, slowly) */
    vblk_mem_seal(&fb.g.mem);
    assert_false(vblk_mem_resident(&fb.g.mem));
    fb_queue_start(&fb, 0, true, true);
    assert_int_equal(q->eng->buf_gen, 0);
    assert_int_equal(run_req(0, &r, VIRTIO_BLK_T_FLUSH, 0, 0, false), VIRTIO_BLK_S_OK);
    /* preallocated (a new table, as after the front-end's next SET_MEM_TABLE): registered */
    fb_queue_stop(&fb, 0);
    for (unsigned i = 0; i < fb.g.mem.nregions; i++)
        assert_int_equal(madvise(fb.g.mem.r[i].host, fb.g.mem.r[i].size, MADV_POPULATE_WRITE), 0);
    assert_true(vblk_mem_resident(&fb.g.mem));
    vblk_mem_seal(&fb.g.mem);
    gen = fb.g.mem.gen;
    fb_queue_start(&fb, 0, true, true);
    assert_int_equal(q->eng->buf_gen, gen);

    /* the table changes (queue stopped) while the driver posts requests */
    last = fb_queue_stop(&fb, 0);
    for (unsigned i = 0; i < 4; i++) {
        fb_req_build(&fb, 0, &w[i], VIRTIO_BLK_T_OUT, 16 + 8 * i, 4096, false);
        memset(w[i].data, 0x40 + (int)i, 4096);
        fg_post(&fb.g, 0, w[i].head);
    }
    vblk_mem_seal(&fb.g.mem);
    assert_int_not_equal(fb.g.mem.gen, gen);
    gen = fb.g.mem.gen;
    p = (struct vblk_queue_params){.mem = &fb.g.mem,
                                   .num = fb.g.ring[0].num,
                                   .last_avail = last,
                                   .desc_uva = fb.g.ring[0].desc_uva,
                                   .avail_uva = fb.g.ring[0].avail_uva,
                                   .used_uva = fb.g.ring[0].used_uva,
                                   .kick_fd = fb.kick[0],
                                   .call_fd = fb.call[0],
                                   .err_fd = fb.err[0],
                                   .event_idx = true,
                                   .indirect = true};
    assert_int_equal(vblk_blk_queue_start(&fb.d, 0, &p), 0); /* takes them at once */
    fb_run(&fb, 0);
    assert_int_equal(q->eng->buf_gen, gen);
    for (unsigned i = 0; i < 4; i++) {
        assert_int_equal(fb_status(&fb, &w[i]), VIRTIO_BLK_S_OK);
        assert_int_equal(pread(file_fd(), disk, sizeof(disk), (16 + 8 * i) * 512), 4096);
        for (unsigned j = 0; j < sizeof(disk); j++)
            assert_int_equal(disk[j], 0x40 + i);
    }
    assert_int_equal(run_req(0, &r, VIRTIO_BLK_T_IN, 24, 4096, true), VIRTIO_BLK_S_OK);
    for (unsigned j = 0; j < 4096; j++)
        assert_int_equal(r.data[j], 0x41);

    /* a data page of its own (header in the page before, status after), replaced under the
     * registration: the read goes to the pinned page the guest no longer sees */
    page = (fb.g.next_data + 2 * 4096) & ~4095ull;
    fb.g.next_data = page - 16;
    fb_req_build(&fb, 0, &r, VIRTIO_BLK_T_IN, 24, 4096, true);
    assert_int_equal(r.data_gpa, page);
    assert_true(mmap(r.data, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED,
                     -1, 0) == (void *)r.data);
    fg_post(&fb.g, 0, r.head);
    fb_run(&fb, 0);
    assert_int_equal(fb_status(&fb, &r), VIRTIO_BLK_S_OK);
    for (unsigned j = 0; j < 4096; j++)
        assert_int_equal(r.data[j], 0);

    /* the table goes away: let go; without fixed buffers the same read is seen */
    fb_queue_stop(&fb, 0);
    vblk_blk_mem_release(&fb.d, &fb.g.mem);
    assert_int_equal(q->eng->buf_gen, 0);
    fb.g.mem.gen = 0; /* the other tests run unsealed */
    fb.d.fixed_bufs = false;
    fb_queue_start(&fb, 0, true, true);
    fb.g.next_data = page - 16;
    assert_int_equal(run_req(0, &r, VIRTIO_BLK_T_IN, 24, 4096, true), VIRTIO_BLK_S_OK);
    for (unsigned j = 0; j < 4096; j++)
        assert_int_equal(r.data[j], 0x41);
}

static void test_in_on_a_file_spanning_regions_and_indirect(void **state)
{
    uint64_t boundary = FG_GPA0 + FG_R0_SIZE;
    uint64_t hdr = fg_alloc(&fb.g, 16), st = fg_alloc(&fb.g, 1);
    struct virtio_blk_outhdr *h = fg_ptr(&fb.g, hdr);
    struct fg_seg s[] = {{hdr, 16, false}, {boundary - 1024, 2048, true}, {st, 1, true}};
    uint8_t disk[2048];
    uint16_t head;

    for (unsigned i = 0; i < sizeof(disk); i++)
        disk[i] = (uint8_t)(i ^ 0x5a);
    assert_int_equal(pwrite(file_fd(), disk, sizeof(disk), 4096), (ssize_t)sizeof(disk));
    h->type = VIRTIO_BLK_T_IN;
    h->sector = 8;
    *(uint8_t *)fg_ptr(&fb.g, st) = FB_STATUS_UNSET;
    head = fg_chain_indirect(&fb.g, 0, s, 3);
    fg_post(&fb.g, 0, head);
    fb_run(&fb, 0);
    assert_int_equal(*(uint8_t *)fg_ptr(&fb.g, st), VIRTIO_BLK_S_OK);
    assert_memory_equal(fb.g.r0 + FG_R0_SIZE - 1024, disk, 1024);
    assert_memory_equal(fb.g.r1, disk + 1024, 1024);
    assert_last_used(0, head, 2049);
}

static void test_in_on_null_reads_zeroes(void **state)
{
    struct fb_req r;

    fb_req_build(&fb, 0, &r, VIRTIO_BLK_T_IN, 0, 1024, true);
    memset(r.data, 0xaa, 1024);
    fg_post(&fb.g, 0, r.head);
    fb_run(&fb, 0);
    assert_int_equal(fb_status(&fb, &r), VIRTIO_BLK_S_OK);
    for (unsigned i = 0; i < 1024; i++)
        assert_int_equal(r.data[i], 0);
    assert_last_used(0, r.head, 1025);
}

static void test_in_on_null_without_read_zeroes_leaves_the_buffer(void **state)
{
    struct fb_req r;

    fb.conf.read_zeroes = false;
    fb_reopen(&fb);
    fb_req_build(&fb, 0, &r, VIRTIO_BLK_T_IN, 0, 1024, true);
    memset(r.data, 0xaa, 1024);
    fg_post(&fb.g, 0, r.head);
    fb_run(&fb, 0);
    assert_int_equal(fb_status(&fb, &r), VIRTIO_BLK_S_OK);
    assert_int_equal(r.data[0], 0xaa);
    assert_int_equal(r.data[1023], 0xaa);
    assert_last_used(0, r.head, 1025);
}

static void test_out_on_null_is_ok(void **state)
{
    struct fb_req r;

    assert_int_equal(run_req(0, &r, VIRTIO_BLK_T_OUT, CAP - 1, 512, false), VIRTIO_BLK_S_OK);
    assert_last_used(0, r.head, 1);
}

static void test_several_requests_complete_in_one_batch(void **state)
{
    struct fb_req r[8];

    for (unsigned i = 0; i < 8; i++) {
        fb_req_build(&fb, 0, &r[i], i & 1 ? VIRTIO_BLK_T_OUT : VIRTIO_BLK_T_IN, i, 512, !(i & 1));
        fg_post(&fb.g, 0, r[i].head);
    }
    fb_run(&fb, 0);
    assert_int_equal(fg_used_idx(&fb.g, 0), 8);
    for (unsigned i = 0; i < 8; i++) {
        assert_int_equal(fb_status(&fb, &r[i]), VIRTIO_BLK_S_OK);
        assert_int_equal(fg_used_elem(&fb.g, 0, (uint16_t)i).id, r[i].head);
    }
    assert_int_equal(Q(0)->inflight, 0);
}

static void test_write_cache_off_makes_writes_dsync(void **state)
{
    struct fb_req r;

    fb.d.wce = false;
    fb_req_build(&fb, 0, &r, VIRTIO_BLK_T_OUT, 0, 512, false);
    fg_post(&fb.g, 0, r.head);
    fb_run(&fb, 0);
    assert_int_equal(fb_status(&fb, &r), VIRTIO_BLK_S_OK);
    assert_int_equal(Q(0)->reqs[r.head].breq.flags, VBLK_BDEV_F_FUA);
    assert_int_equal(Q(0)->reqs[r.head].breq.io.rw_flags, RWF_DSYNC); /* the file driver's */

    fb.d.wce = true;
    assert_int_equal(run_req(0, &r, VIRTIO_BLK_T_OUT, 0, 512, false), VIRTIO_BLK_S_OK);
    assert_int_equal(Q(0)->reqs[r.head].breq.flags, 0);
    assert_int_equal(Q(0)->reqs[r.head].breq.io.rw_flags, 0);
}

/* ---- malformed requests ---- */

static void test_header_shorter_than_16_bytes_is_ioerr(void **state)
{
    uint64_t hdr = fg_alloc(&fb.g, 16), st = fg_alloc(&fb.g, 1);
    struct fg_seg s[] = {{hdr, 15, false}, {st, 1, true}};
    uint16_t head = fg_chain(&fb.g, 0, s, 2);

    *(uint8_t *)fg_ptr(&fb.g, st) = FB_STATUS_UNSET;
    fg_post(&fb.g, 0, head);
    fb_run(&fb, 0);
    assert_int_equal(*(uint8_t *)fg_ptr(&fb.g, st), VIRTIO_BLK_S_IOERR);
    assert_last_used(0, head, 1);
    assert_int_equal(dev_stats(&fb.d).errors, 1);
}

static void test_status_in_read_only_descriptor_is_not_written(void **state)
{
    uint64_t hdr = fg_alloc(&fb.g, 16), st = fg_alloc(&fb.g, 1);
    struct virtio_blk_outhdr *h = fg_ptr(&fb.g, hdr);
    struct fg_seg s[] = {{hdr, 16, false}, {st, 1, false}};
    uint16_t head = fg_chain(&fb.g, 0, s, 2);

    h->type = VIRTIO_BLK_T_FLUSH;
    *(uint8_t *)fg_ptr(&fb.g, st) = FB_STATUS_UNSET;
    fg_post(&fb.g, 0, head);
    fb_run(&fb, 0);
    assert_int_equal(*(uint8_t *)fg_ptr(&fb.g, st), FB_STATUS_UNSET);
    assert_int_equal(fg_used_idx(&fb.g, 0), 1);
    assert_last_used(0, head, 0);
    assert_false(Q(0)->vq.broken);
}

static void test_in_with_readable_data_is_ioerr(void **state)
{
    struct fb_req r;

    assert_int_equal(run_req(0, &r, VIRTIO_BLK_T_IN, 0, 512, false), VIRTIO_BLK_S_IOERR);
    assert_last_used(0, r.head, 1);
}

static void test_out_with_writable_data_is_ioerr(void **state)
{
    struct fb_req r;

    assert_int_equal(run_req(0, &r, VIRTIO_BLK_T_OUT, 0, 512, true), VIRTIO_BLK_S_IOERR);
    assert_last_used(0, r.head, 1);
}

static void test_in_without_data_is_ioerr(void **state)
{
    struct fb_req r;

    assert_int_equal(run_req(0, &r, VIRTIO_BLK_T_IN, 0, 0, true), VIRTIO_BLK_S_IOERR);
    assert_int_equal(run_req(0, &r, VIRTIO_BLK_T_OUT, 0, 0, false), VIRTIO_BLK_S_IOERR);
}

static void test_sector_beyond_capacity_is_ioerr(void **state)
{
    struct fb_req r;

    assert_int_equal(run_req(0, &r, VIRTIO_BLK_T_IN, CAP - 1, 512, true), VIRTIO_BLK_S_OK);
    assert_int_equal(run_req(0, &r, VIRTIO_BLK_T_IN, CAP, 512, true), VIRTIO_BLK_S_IOERR);
    assert_int_equal(run_req(0, &r, VIRTIO_BLK_T_IN, CAP - 1, 1024, true), VIRTIO_BLK_S_IOERR);
    assert_int_equal(run_req(0, &r, VIRTIO_BLK_T_OUT, CAP, 512, false), VIRTIO_BLK_S_IOERR);
    assert_int_equal(run_req(0, &r, VIRTIO_BLK_T_OUT, CAP - 1, 1024, false), VIRTIO_BLK_S_IOERR);
}

static void test_sector_plus_length_overflow_is_ioerr(void **state)
{
    struct fb_req r;

    assert_int_equal(run_req(0, &r, VIRTIO_BLK_T_IN, UINT64_MAX, 1024, true), VIRTIO_BLK_S_IOERR);
    assert_int_equal(run_req(0, &r, VIRTIO_BLK_T_OUT, UINT64_MAX - 1, 1024, false),
                     VIRTIO_BLK_S_IOERR);
    /* sector << 9 would wrap to a small offset */
    assert_int_equal(run_req(0, &r, VIRTIO_BLK_T_OUT, 1ull << 55, 512, false), VIRTIO_BLK_S_IOERR);
    assert_int_equal(run_req(0, &r, VIRTIO_BLK_T_IN, (1ull << 55) + 1, 512, true),
                     VIRTIO_BLK_S_IOERR);
}

static void test_unaligned_length_is_ioerr(void **state)
{
    struct fb_req r;

    assert_int_equal(run_req(0, &r, VIRTIO_BLK_T_IN, 0, 700, true), VIRTIO_BLK_S_IOERR);
    assert_int_equal(run_req(0, &r, VIRTIO_BLK_T_OUT, 0, 511, false), VIRTIO_BLK_S_IOERR);
    assert_int_equal(run_req(0, &r, VIRTIO_BLK_T_OUT, 0, 1023, false), VIRTIO_BLK_S_IOERR);
}

static void test_unaligned_sector_with_4k_blocks_is_ioerr(void **state)
{
    struct fb_req r;

    fb.bdev->lbs = 4096;
    assert_int_equal(run_req(0, &r, VIRTIO_BLK_T_IN, 8, 4096, true), VIRTIO_BLK_S_OK);
    assert_int_equal(run_req(0, &r, VIRTIO_BLK_T_IN, 1, 4096, true), VIRTIO_BLK_S_IOERR);
    assert_int_equal(run_req(0, &r, VIRTIO_BLK_T_IN, 8, 512, true), VIRTIO_BLK_S_IOERR);
}

/* header + n data segments of 512 bytes + status, as an indirect table */
static uint16_t indirect_request(unsigned q, uint32_t type, unsigned nseg, bool data_write,
                                 uint64_t *st)
{
    struct fg_seg *s = calloc(nseg + 2, sizeof(*s));
    uint64_t hdr = fg_alloc(&fb.g, 16);
    struct virtio_blk_outhdr *h = fg_ptr(&fb.g, hdr);
    uint16_t head;

    h->type = type;
    h->sector = 0;
    s[0] = (struct fg_seg){hdr, 16, false};
    for (unsigned i = 0; i < nseg; i++)
        s[i + 1] = (struct fg_seg){fg_alloc(&fb.g, 512), 512, data_write};
    *st = fg_alloc(&fb.g, 1);
    *(uint8_t *)fg_ptr(&fb.g, *st) = FB_STATUS_UNSET;
    s[nseg + 1] = (struct fg_seg){*st, 1, true};
    head = fg_chain_indirect(&fb.g, q, s, nseg + 2);
    free(s);
    return head;
}

static void test_seg_max_segments_is_ok(void **state)
{
    uint64_t st;
    uint16_t head = indirect_request(0, VIRTIO_BLK_T_IN, VBLK_SEG_MAX, true, &st);

    fg_post(&fb.g, 0, head);
    fb_run(&fb, 0);
    assert_int_equal(*(uint8_t *)fg_ptr(&fb.g, st), VIRTIO_BLK_S_OK);
    assert_last_used(0, head, VBLK_SEG_MAX * 512 + 1);
}

static void test_more_than_seg_max_plus_2_descriptors_is_ioerr(void **state)
{
    uint64_t st;
    uint16_t head = indirect_request(0, VIRTIO_BLK_T_IN, VBLK_SEG_MAX + 1, true, &st);

    fg_post(&fb.g, 0, head);
    fb_run(&fb, 0);
    assert_int_equal(*(uint8_t *)fg_ptr(&fb.g, st), VIRTIO_BLK_S_IOERR);
    assert_false(Q(0)->vq.broken);
}

static void test_direct_chain_longer_than_seg_max_plus_2_is_ioerr(void **state)
{
    unsigned n = VBLK_SEG_MAX + 3;
    struct fg_seg *s = calloc(n, sizeof(*s));
    uint64_t hdr = fg_alloc(&fb.g, 16), st = fg_alloc(&fb.g, 1);
    struct virtio_blk_outhdr *h = fg_ptr(&fb.g, hdr);
    uint16_t head;

    h->type = VIRTIO_BLK_T_OUT;
    s[0] = (struct fg_seg){hdr, 16, false};
    for (unsigned i = 1; i < n - 1; i++)
        s[i] = (struct fg_seg){fg_alloc(&fb.g, 512), 512, false};
    s[n - 1] = (struct fg_seg){st, 1, true};
    *(uint8_t *)fg_ptr(&fb.g, st) = FB_STATUS_UNSET;
    head = fg_chain(&fb.g, 0, s, n);
    free(s);
    fg_post(&fb.g, 0, head);
    fb_run(&fb, 0);
    assert_int_equal(*(uint8_t *)fg_ptr(&fb.g, st), VIRTIO_BLK_S_IOERR);
    assert_false(Q(0)->vq.broken);
}

static void test_descriptor_longer_than_size_max_is_ioerr(void **state)
{
    struct fb_req r;

    assert_int_equal(run_req(0, &r, VIRTIO_BLK_T_IN, 0, VBLK_SIZE_MAX, true), VIRTIO_BLK_S_OK);
    assert_int_equal(run_req(0, &r, VIRTIO_BLK_T_IN, 0, VBLK_SIZE_MAX + 512, true),
                     VIRTIO_BLK_S_IOERR);
    assert_false(Q(0)->vq.broken);
}

static void test_data_outside_guest_memory_is_ioerr(void **state)
{
    struct fb_req r;

    fb_req_build(&fb, 0, &r, VIRTIO_BLK_T_IN, 0, 512, true);
    fb.g.ring[0].desc[(r.head + 1) % NUM].addr = 0x1000; /* below region 0 */
    fg_post(&fb.g, 0, r.head);
    fb_run(&fb, 0);
    assert_int_equal(fb_status(&fb, &r), VIRTIO_BLK_S_IOERR);
    assert_last_used(0, r.head, 1);
}

static void test_write_to_read_only_export_is_ioerr(void **state)
{
    struct fb_req r;

    fb.bdev->readonly = true;
    assert_true(vblk_blk_features(&fb.d) & (1ull << VIRTIO_BLK_F_RO));
    assert_int_equal(run_req(0, &r, VIRTIO_BLK_T_OUT, 0, 512, false), VIRTIO_BLK_S_IOERR);
    assert_int_equal(run_req(0, &r, VIRTIO_BLK_T_IN, 0, 512, true), VIRTIO_BLK_S_OK);
    assert_int_equal(run_req(0, &r, VIRTIO_BLK_T_FLUSH, 0, 0, false), VIRTIO_BLK_S_OK);
    /* a refused write is counted as a write and an error, and moves no bytes */
    assert_int_equal(dev_stats(&fb.d).ops[VBLK_OP_WRITE], 1);
    assert_int_equal(dev_stats(&fb.d).errors, 1);
    assert_int_equal(dev_stats(&fb.d).bytes[VBLK_OP_WRITE], 0);
    assert_int_equal(dev_stats(&fb.d).bytes[VBLK_OP_READ], 512);
}

static void test_unknown_type_is_unsupp(void **state)
{
    struct fb_req r;

    assert_int_equal(run_req(0, &r, 99, 0, 0, false), VIRTIO_BLK_S_UNSUPP);
    assert_last_used(0, r.head, 1);
    assert_int_equal(run_req(0, &r, 2, 0, 512, false), VIRTIO_BLK_S_UNSUPP); /* SCSI_CMD */
    assert_int_equal(dev_stats(&fb.d).unsupp, 2);
    assert_int_equal(dev_stats(&fb.d).errors, 0);
}

static void test_reserved_bits_in_type_are_unsupp(void **state)
{
    struct fb_req r;

    assert_int_equal(run_req(0, &r, VIRTIO_BLK_T_IN | 0x100, 0, 512, true), VIRTIO_BLK_S_UNSUPP);
    assert_int_equal(run_req(0, &r, VIRTIO_BLK_T_OUT | 0x80000000u, 0, 512, false),
                     VIRTIO_BLK_S_UNSUPP);
    assert_int_equal(run_req(0, &r, VIRTIO_BLK_T_FLUSH | 0x10000, 0, 0, false),
                     VIRTIO_BLK_S_UNSUPP);
}

/* ---- flush, get-id ---- */

static void test_flush_is_ok_and_counted(void **state)
{
    struct fb_req r;

    assert_int_equal(run_req(0, &r, VIRTIO_BLK_T_FLUSH, 0, 0, false), VIRTIO_BLK_S_OK);
    assert_last_used(0, r.head, 1);
    assert_int_equal(dev_stats(&fb.d).ops[VBLK_OP_FLUSH], 1);
}

static void test_flush_on_a_file_is_ok(void **state)
{
    struct fb_req r;

    assert_int_equal(run_req(0, &r, VIRTIO_BLK_T_FLUSH, 0, 0, false), VIRTIO_BLK_S_OK);
    assert_int_equal(dev_stats(&fb.d).ops[VBLK_OP_FLUSH], 1);
}

static void test_get_id_returns_the_serial(void **state)
{
    struct fb_req r;
    char want[VIRTIO_BLK_ID_BYTES] = "serial-0123456789";

    assert_int_equal(run_req(0, &r, VIRTIO_BLK_T_GET_ID, 0, VIRTIO_BLK_ID_BYTES, true),
                     VIRTIO_BLK_S_OK);
    assert_memory_equal(r.data, want, VIRTIO_BLK_ID_BYTES);
    assert_last_used(0, r.head, VIRTIO_BLK_ID_BYTES + 1);
}

static void test_get_id_short_buffer_and_full_length_serial(void **state)
{
    struct fb_req r;

    assert_int_equal(run_req(0, &r, VIRTIO_BLK_T_GET_ID, 0, 8, true), VIRTIO_BLK_S_OK);
    assert_memory_equal(r.data, "serial-0", 8);
    assert_last_used(0, r.head, 9);

    memcpy(fb.d.serial, "ABCDEFGHIJKLMNOPQRST", VIRTIO_BLK_ID_BYTES); /* 20 bytes, no NUL */
    assert_int_equal(run_req(0, &r, VIRTIO_BLK_T_GET_ID, 0, 64, true), VIRTIO_BLK_S_OK);
    assert_memory_equal(r.data, "ABCDEFGHIJKLMNOPQRST", 20);
    assert_int_equal(r.data[20], 0); /* untouched beyond 20 bytes */
    assert_last_used(0, r.head, 21);

    assert_int_equal(run_req(0, &r, VIRTIO_BLK_T_GET_ID, 0, 0, true), VIRTIO_BLK_S_IOERR);
}

/* ---- discard / write zeroes ---- */

static struct fb_req dz_req(unsigned q, uint32_t type, uint64_t sector, uint32_t num,
                            uint32_t flags, unsigned nseg)
{
    struct fb_req r;
    struct virtio_blk_discard_write_zeroes *seg;

    fb_req_build(&fb, q, &r, type, 0, 16 * nseg, false);
    seg = (struct virtio_blk_discard_write_zeroes *)r.data;
    for (unsigned i = 0; i < nseg; i++) {
        seg[i].sector = sector;
        seg[i].num_sectors = num;
        seg[i].flags = flags;
    }
    return r;
}

static uint8_t run_dz(uint32_t type, uint64_t sector, uint32_t num, uint32_t flags, unsigned nseg)
{
    struct fb_req r = dz_req(0, type, sector, num, flags, nseg);

    fg_post(&fb.g, 0, r.head);
    fb_run(&fb, 0);
    assert_last_used(0, r.head, 1);
    return fb_status(&fb, &r);
}

static void test_discard_and_write_zeroes_ok(void **state)
{
    assert_int_equal(run_dz(VIRTIO_BLK_T_DISCARD, 0, 8, 0, 1), VIRTIO_BLK_S_OK);
    assert_int_equal(run_dz(VIRTIO_BLK_T_WRITE_ZEROES, 8, 8, 0, 1), VIRTIO_BLK_S_OK);
    assert_int_equal(run_dz(VIRTIO_BLK_T_WRITE_ZEROES, 8, 8, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP, 1),
                     VIRTIO_BLK_S_OK);
    assert_int_equal(run_dz(VIRTIO_BLK_T_DISCARD, CAP - 8, 8, 0, 1), VIRTIO_BLK_S_OK);
    assert_int_equal(dev_stats(&fb.d).ops[VBLK_OP_DISCARD], 2);
    assert_int_equal(dev_stats(&fb.d).ops[VBLK_OP_WRITE_ZEROES], 2);
    assert_int_equal(dev_stats(&fb.d).bytes[VBLK_OP_DISCARD], 16 * 512);
    assert_int_equal(dev_stats(&fb.d).bytes[VBLK_OP_WRITE_ZEROES], 16 * 512);
}

static void test_write_zeroes_and_discard_on_a_file(void **state)
{
    uint8_t buf[4096], zero[4096] = {0};

    memset(buf, 0x77, sizeof(buf));
    assert_int_equal(pwrite(file_fd(), buf, sizeof(buf), 0), (ssize_t)sizeof(buf));
    assert_int_equal(pwrite(file_fd(), buf, sizeof(buf), 65536), (ssize_t)sizeof(buf));
    assert_int_equal(run_dz(VIRTIO_BLK_T_WRITE_ZEROES, 0, 8, 0, 1), VIRTIO_BLK_S_OK);
    assert_int_equal(pread(file_fd(), buf, sizeof(buf), 0), (ssize_t)sizeof(buf));
    assert_memory_equal(buf, zero, sizeof(buf));
    assert_int_equal(run_dz(VIRTIO_BLK_T_DISCARD, 128, 8, 0, 1), VIRTIO_BLK_S_OK);
}

static void test_discard_flags_reserved_is_unsupp(void **state)
{
    assert_int_equal(run_dz(VIRTIO_BLK_T_DISCARD, 0, 8, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP, 1),
                     VIRTIO_BLK_S_UNSUPP);
    assert_int_equal(run_dz(VIRTIO_BLK_T_DISCARD, 0, 8, 2, 1), VIRTIO_BLK_S_UNSUPP);
    assert_int_equal(run_dz(VIRTIO_BLK_T_WRITE_ZEROES, 0, 8, 2, 1), VIRTIO_BLK_S_UNSUPP);
    /* counted by type, as unsupported, and moving no bytes */
    assert_int_equal(dev_stats(&fb.d).ops[VBLK_OP_DISCARD], 2);
    assert_int_equal(dev_stats(&fb.d).ops[VBLK_OP_WRITE_ZEROES], 1);
    assert_int_equal(dev_stats(&fb.d).unsupp, 3);
    assert_int_equal(
        dev_stats(&fb.d).bytes[VBLK_OP_DISCARD] + dev_stats(&fb.d).bytes[VBLK_OP_WRITE_ZEROES], 0);
}

static void test_discard_more_than_one_segment_is_unsupp(void **state)
{
    assert_int_equal(run_dz(VIRTIO_BLK_T_DISCARD, 0, 8, 0, 2), VIRTIO_BLK_S_UNSUPP);
    assert_int_equal(run_dz(VIRTIO_BLK_T_WRITE_ZEROES, 0, 8, 0, 2), VIRTIO_BLK_S_UNSUPP);
}

static void test_discard_short_segment_is_unsupp(void **state)
{
    struct fb_req r;

    fb_req_build(&fb, 0, &r, VIRTIO_BLK_T_DISCARD, 0, 8, false);
    fg_post(&fb.g, 0, r.head);
    fb_run(&fb, 0);
    assert_int_equal(fb_status(&fb, &r), VIRTIO_BLK_S_UNSUPP);
}

static void test_discard_out_of_range_is_ioerr(void **state)
{
    assert_int_equal(run_dz(VIRTIO_BLK_T_DISCARD, CAP - 7, 8, 0, 1), VIRTIO_BLK_S_IOERR);
    assert_int_equal(run_dz(VIRTIO_BLK_T_DISCARD, CAP, 1, 0, 1), VIRTIO_BLK_S_IOERR);
    assert_int_equal(run_dz(VIRTIO_BLK_T_DISCARD, UINT64_MAX - 3, 8, 0, 1), VIRTIO_BLK_S_IOERR);
    assert_int_equal(run_dz(VIRTIO_BLK_T_WRITE_ZEROES, 0, 0, 0, 1), VIRTIO_BLK_S_IOERR);
    assert_int_equal(run_dz(VIRTIO_BLK_T_WRITE_ZEROES, 0, VBLK_MAX_DISCARD + 1, 0, 1),
                     VIRTIO_BLK_S_IOERR);
}

static void test_discard_when_export_has_discard_off_is_unsupp(void **state)
{
    fb.bdev->discard = false;
    assert_false(vblk_blk_features(&fb.d) & (1ull << VIRTIO_BLK_F_DISCARD));
    assert_int_equal(run_dz(VIRTIO_BLK_T_DISCARD, 0, 8, 0, 1), VIRTIO_BLK_S_UNSUPP);
    assert_int_equal(run_dz(VIRTIO_BLK_T_WRITE_ZEROES, 0, 8, 0, 1), VIRTIO_BLK_S_OK);
    fb.bdev->write_zeroes = false;
    assert_int_equal(run_dz(VIRTIO_BLK_T_WRITE_ZEROES, 0, 8, 0, 1), VIRTIO_BLK_S_UNSUPP);
}

static void test_discard_on_read_only_export_is_unsupp(void **state)
{
    fb.bdev->readonly = true;
    assert_int_equal(run_dz(VIRTIO_BLK_T_DISCARD, 0, 8, 0, 1), VIRTIO_BLK_S_UNSUPP);
    assert_int_equal(run_dz(VIRTIO_BLK_T_WRITE_ZEROES, 0, 8, 0, 1), VIRTIO_BLK_S_UNSUPP);
}

/* ---- broken queues ---- */

static void test_head_in_flight_made_available_again_breaks(void **state)
{
    struct fb_req r;
    eventfd_t v = 0;

    fb_req_build(&fb, 0, &r, VIRTIO_BLK_T_IN, 0, 512, true);
    fg_post(&fb.g, 0, r.head);
    fb_run(&fb, 0); /* the hold driver keeps it in flight */
    assert_int_equal(Q(0)->inflight, 1);
    fg_post(&fb.g, 0, r.head);
    fb_run(&fb, 0);
    assert_true(Q(0)->vq.broken);
    assert_int_equal(eventfd_read(fb.err[0], &v), 0);
    assert_int_equal(v, 1);
    /* the first one still completes */
    fb_release(&fb, 0, 0);
    assert_int_equal(fb_status(&fb, &r), VIRTIO_BLK_S_OK);
    assert_int_equal(fg_used_idx(&fb.g, 0), 1);
    assert_int_equal(Q(0)->inflight, 0);
}

/* A driver error reaches the guest as IOERR. */
static void test_driver_error_is_ioerr(void **state)
{
    struct fb_req r;

    fb_req_build(&fb, 0, &r, VIRTIO_BLK_T_OUT, 0, 512, false);
    fg_post(&fb.g, 0, r.head);
    fb_run(&fb, 0);
    assert_int_equal(fb_status(&fb, &r), FB_STATUS_UNSET);
    fb_release(&fb, 0, -ENOSPC);
    assert_int_equal(fb_status(&fb, &r), VIRTIO_BLK_S_IOERR);
    assert_int_equal(dev_stats(&fb.d).errors, 1);
}

static void test_same_head_twice_in_one_batch_breaks(void **state)
{
    struct fb_req r;

    fb_req_build(&fb, 0, &r, VIRTIO_BLK_T_IN, 0, 512, true);
    fg_post(&fb.g, 0, r.head);
    fg_post(&fb.g, 0, r.head);
    fb_run(&fb, 0);
    assert_true(Q(0)->vq.broken);
    assert_int_equal(fg_used_idx(&fb.g, 0), 1);
}

static void test_broken_queue_does_not_process_further_requests(void **state)
{
    struct fb_req r;
    uint16_t used;

    fg_post(&fb.g, 0, NUM); /* head out of range */
    fb_run(&fb, 0);
    assert_true(Q(0)->vq.broken);
    used = fg_used_idx(&fb.g, 0);
    fb_req_build(&fb, 0, &r, VIRTIO_BLK_T_FLUSH, 0, 0, false);
    fg_post(&fb.g, 0, r.head);
    fb_run(&fb, 0);
    assert_int_equal(fb_status(&fb, &r), FB_STATUS_UNSET);
    assert_int_equal(fg_used_idx(&fb.g, 0), used);
    assert_int_equal(dev_stats(&fb.d).requests, 0);
}

static void test_requests_before_the_bad_one_complete(void **state)
{
    struct fb_req a, b;

    fb_req_build(&fb, 0, &a, VIRTIO_BLK_T_FLUSH, 0, 0, false);
    fg_post(&fb.g, 0, a.head);
    fb_req_build(&fb, 0, &b, VIRTIO_BLK_T_FLUSH, 0, 0, false);
    fb.g.ring[0].desc[b.head].flags |= VRING_DESC_F_NEXT;
    fb.g.ring[0].desc[b.head].next = NUM + 3;
    fg_post(&fb.g, 0, b.head);
    fb_run(&fb, 0);
    assert_true(Q(0)->vq.broken);
    assert_int_equal(fb_status(&fb, &a), VIRTIO_BLK_S_OK);
    assert_int_equal(fb_status(&fb, &b), FB_STATUS_UNSET);
    assert_int_equal(fg_used_idx(&fb.g, 0), 1);
}

static void test_other_queue_still_works_after_one_broke(void **state)
{
    struct fb_req r;

    fb.g.ring[0].avail->idx = NUM + 5; /* avail jump */
    fb_run(&fb, 0);
    assert_true(Q(0)->vq.broken);
    assert_int_equal(run_req(1, &r, VIRTIO_BLK_T_IN, 0, 512, true), VIRTIO_BLK_S_OK);
    assert_false(Q(1)->vq.broken);
    assert_last_used(1, r.head, 513);
}

static void test_restarted_queue_works_again(void **state)
{
    struct fb_req r;

    fg_post(&fb.g, 0, NUM);
    fb_run(&fb, 0);
    assert_true(Q(0)->vq.broken);
    fg_ring_reset(&fb.g, 0, 0);
    fb_queue_start(&fb, 0, true, true);
    assert_int_equal(run_req(0, &r, VIRTIO_BLK_T_FLUSH, 0, 0, false), VIRTIO_BLK_S_OK);
}

/* ---- notification ---- */

static void test_flush_signals_call_fd(void **state)
{
    struct fb_req r;
    eventfd_t v = 0;

    (void)eventfd_read(fb.call[0], &v);
    assert_int_equal(run_req(0, &r, VIRTIO_BLK_T_FLUSH, 0, 0, false), VIRTIO_BLK_S_OK);
    assert_int_equal(eventfd_read(fb.call[0], &v), 0);
    assert_int_equal(v, 1);
    /* nothing new: no second interrupt, even after another kick */
    fb_run(&fb, 0);
    assert_int_equal(eventfd_read(fb.call[0], &v), -1);
}

static void test_process_leaves_notifications_enabled(void **state)
{
    uint16_t *avail_event = (uint16_t *)&fb.g.ring[0].used->ring[NUM];
    struct fb_req r;

    assert_int_equal(run_req(0, &r, VIRTIO_BLK_T_FLUSH, 0, 0, false), VIRTIO_BLK_S_OK);
    assert_int_equal(*avail_event, 1);
    fb_queue_start(&fb, 1, false, true);
    assert_int_equal(run_req(1, &r, VIRTIO_BLK_T_FLUSH, 0, 0, false), VIRTIO_BLK_S_OK);
    assert_int_equal(fb.g.ring[1].used->flags, 0);
}

/* ---- a queue started for real: I/O thread with busy polling ---- */

static uint64_t cpu_ms(void)
{
    struct rusage ru;

    getrusage(RUSAGE_SELF, &ru);
    return (uint64_t)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000 +
           (uint64_t)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1000;
}

/*
 * Regression (was a bug in src/): with poll-us > 0, a broken queue keeps
 * the I/O thread polling forever at 100% CPU.  queue_poll() in src/blk/virtio_blk.c returns
 * true ("work done") whenever vblk_vq_avail() != 0, and that is -EIO on a broken ring, so the
 * poll window never ends.  Fix: return false when q->vq.broken (and only call
 * vblk_blk_queue_process when vblk_vq_avail() is non-zero, as now, so a fresh breakage is still
 * reported once).
 */
/* I/O thread: is the queue broken? (read by its own thread) */
static int read_broken(void *arg)
{
    return ((struct blk_queue *)arg)->vq.broken;
}

static void test_polling_thread_sleeps_after_queue_broke(void **state)
{
    struct vblk_iothread *iot = NULL;
    struct vblk_blk_dev d;
    struct vblk_queue_params p;
    struct fb_req r;
    uint32_t last;
    uint64_t c0, spent;
    bool broken;
    int kick = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC), call = eventfd(0, EFD_CLOEXEC);
    struct pollfd pf = {.fd = call, .events = POLLIN};

    assert_int_equal(vblk_iothread_create(&iot, "poll-test", &vblk_engine_null, 256, 1000 /* us */,
                                          VBLK_IOT_CALL_TIMEOUT_MS),
                     0);
    assert_int_equal(vblk_blk_create(&d, "t", fb.bdev, iot, 1, NUM, "s"), 0);
    p = (struct vblk_queue_params){.mem = &fb.g.mem,
                                   .num = NUM,
                                   .last_avail = 0,
                                   .desc_uva = fb.g.ring[0].desc_uva,
                                   .avail_uva = fb.g.ring[0].avail_uva,
                                   .used_uva = fb.g.ring[0].used_uva,
                                   .kick_fd = kick,
                                   .call_fd = call,
                                   .err_fd = -1,
                                   .event_idx = true,
                                   .indirect = true};
    assert_int_equal(vblk_blk_queue_start(&d, 0, &p), 0);
    /* it works */
    fb_req_build(&fb, 0, &r, VIRTIO_BLK_T_FLUSH, 0, 0, false);
    fg_post(&fb.g, 0, r.head);
    assert_int_equal(eventfd_write(kick, 1), 0);
    assert_int_equal(poll(&pf, 1, 5000), 1);
    assert_int_equal(fb_status(&fb, &r), VIRTIO_BLK_S_OK);
    /* break it, let the poll window (1 ms) pass, then the thread must be asleep */
    fg_post(&fb.g, 0, NUM);
    assert_int_equal(eventfd_write(kick, 1), 0);
    usleep(50 * 1000);
    c0 = cpu_ms();
    usleep(300 * 1000);
    spent = cpu_ms() - c0;
    broken = vblk_iothread_call(iot, read_broken, &d.queues[0]) == 1;
    /* clean up before asserting, so a failure does not leave a spinning thread behind */
    assert_int_equal(vblk_blk_queue_stop(&d, 0, &last), 0);
    vblk_iothread_destroy(iot);
    vblk_blk_destroy(&d);
    close(kick);
    close(call);
    assert_true(broken);
    assert_true(spent < 100); /* ms of CPU in 300 ms */
}

static void test_polling_thread_serves_requests_and_sleeps_when_idle(void **state)
{
    struct vblk_iothread *iot = NULL;
    struct vblk_blk_dev d;
    struct vblk_queue_params p;
    struct fb_req r;
    uint32_t last;
    uint64_t c0, spent;
    int kick = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);

    assert_int_equal(vblk_iothread_create(&iot, "poll-test", &vblk_engine_null, 256, 1000 /* us */,
                                          VBLK_IOT_CALL_TIMEOUT_MS),
                     0);
    assert_int_equal(vblk_blk_create(&d, "t", fb.bdev, iot, 1, NUM, "s"), 0);
    p = (struct vblk_queue_params){.mem = &fb.g.mem,
                                   .num = NUM,
                                   .last_avail = 0,
                                   .desc_uva = fb.g.ring[0].desc_uva,
                                   .avail_uva = fb.g.ring[0].avail_uva,
                                   .used_uva = fb.g.ring[0].used_uva,
                                   .kick_fd = kick,
                                   .call_fd = -1,
                                   .err_fd = -1,
                                   .event_idx = true,
                                   .indirect = true};
    assert_int_equal(vblk_blk_queue_start(&d, 0, &p), 0);
    for (int i = 0; i < 3; i++) {
        fb_req_build(&fb, 0, &r, VIRTIO_BLK_T_IN, 0, 512, true);
        fg_post(&fb.g, 0, r.head);
        assert_int_equal(eventfd_write(kick, 1), 0);
        for (int w = 0; w < 500 && fb_status(&fb, &r) == FB_STATUS_UNSET; w++)
            usleep(1000);
        assert_int_equal(fb_status(&fb, &r), VIRTIO_BLK_S_OK);
    }
    usleep(50 * 1000);
    c0 = cpu_ms();
    usleep(300 * 1000);
    spent = cpu_ms() - c0;
    assert_int_equal(vblk_blk_queue_stop(&d, 0, &last), 0);
    vblk_iothread_destroy(iot);
    vblk_blk_destroy(&d);
    close(kick);
    assert_int_equal(last, 3);
    assert_true(spent < 100); /* ms of CPU in 300 ms */
}

/* ---- statistics ---- */

static uint64_t lat_count(const struct vblk_blk_stats *s, unsigned cls)
{
    return vblk_lat_count(&s->lat[cls]);
}

/* Every request is counted under its type, timed under its class, per queue. */
static void test_stats_per_queue_by_type(void **state)
{
    struct vblk_blk_stats pq[NQ], total;
    struct fb_req r;

    for (unsigned i = 0; i < 10; i++)
        assert_int_equal(run_req(0, &r, VIRTIO_BLK_T_IN, i * 8, 4096, true), VIRTIO_BLK_S_OK);
    for (unsigned i = 0; i < 3; i++)
        assert_int_equal(run_req(1, &r, VIRTIO_BLK_T_OUT, 0, 1024, false), VIRTIO_BLK_S_OK);
    assert_int_equal(run_req(1, &r, VIRTIO_BLK_T_FLUSH, 0, 0, false), VIRTIO_BLK_S_OK);
    assert_int_equal(run_req(1, &r, VIRTIO_BLK_T_GET_ID, 0, 20, true), VIRTIO_BLK_S_OK);
    assert_int_equal(run_req(1, &r, 77, 0, 0, false), VIRTIO_BLK_S_UNSUPP);
    assert_int_equal(run_req(0, &r, VIRTIO_BLK_T_IN, CAP, 512, true), VIRTIO_BLK_S_IOERR);

    vblk_blk_read_stats(&fb.d, pq, &total);
    assert_int_equal(pq[0].requests, 11);
    assert_int_equal(pq[0].ops[VBLK_OP_READ], 11);
    assert_int_equal(pq[0].bytes[VBLK_OP_READ], 10 * 4096); /* the refused one moved nothing */
    assert_int_equal(pq[0].errors, 1);
    assert_int_equal(lat_count(&pq[0], VBLK_LAT_READ), 11);
    assert_int_equal(lat_count(&pq[0], VBLK_LAT_WRITE), 0);
    assert_int_equal(pq[1].requests, 6);
    assert_int_equal(pq[1].ops[VBLK_OP_WRITE], 3);
    assert_int_equal(pq[1].bytes[VBLK_OP_WRITE], 3 * 1024);
    assert_int_equal(pq[1].ops[VBLK_OP_FLUSH], 1);
    assert_int_equal(pq[1].ops[VBLK_OP_GET_ID], 1);
    assert_int_equal(pq[1].ops[VBLK_OP_OTHER], 1);
    assert_int_equal(pq[1].unsupp, 1);
    assert_int_equal(lat_count(&pq[1], VBLK_LAT_WRITE), 3);
    assert_int_equal(lat_count(&pq[1], VBLK_LAT_FLUSH), 1);
    assert_int_equal(lat_count(&pq[1], VBLK_LAT_OTHER), 2);
    assert_int_equal(total.requests, 17);
    assert_int_equal(total.errors + total.unsupp, 2);
    assert_int_equal(total.inflight, 0);
    assert_int_equal(lat_count(&total, VBLK_LAT_READ), 11);
    /* completions on a null device are timed in the same loop iteration: well under a second */
    assert_true(total.lat[VBLK_LAT_READ].max_ns < 1000000000ull);
    assert_true(total.lat[VBLK_LAT_READ].sum_ns <= 11 * total.lat[VBLK_LAT_READ].max_ns);
}

/* Requests in flight are counted and untimed until they complete; their latency covers the
 * wait. */
static void test_stats_inflight_and_latency_of_held_requests(void **state)
{
    struct vblk_blk_stats st;
    struct fb_req r[3];

    for (unsigned i = 0; i < 3; i++) {
        fb_req_build(&fb, 0, &r[i], VIRTIO_BLK_T_IN, i * 8, 512, true);
        fg_post(&fb.g, 0, r[i].head);
    }
    fb_run(&fb, 0); /* the hold driver keeps them */
    vblk_blk_read_stats(&fb.d, NULL, &st);
    assert_int_equal(st.inflight, 3);
    assert_int_equal(st.requests, 3);
    assert_int_equal(lat_count(&st, VBLK_LAT_READ), 0);
    usleep(20 * 1000);
    fb_release(&fb, 0, 0);
    vblk_blk_read_stats(&fb.d, NULL, &st);
    assert_int_equal(st.inflight, 0);
    assert_int_equal(lat_count(&st, VBLK_LAT_READ), 3);
    assert_true(vblk_lat_quantile(&st.lat[VBLK_LAT_READ], 0.5) >= 20 * 1000 * 1000);
    assert_true(st.lat[VBLK_LAT_READ].max_ns < 10ull * 1000 * 1000 * 1000);
}

struct stats_reader {
    struct vblk_blk_dev *d;
    int stop;           /* atomic */
    unsigned reads;     /* snapshots taken */
    int went_backwards; /* a counter decreased between snapshots */
};

/* The control thread's side: snapshots while the I/O thread serves (no call into it). */
static void *stats_reader_fn(void *arg)
{
    struct stats_reader *sr = arg;
    struct vblk_blk_stats prev = {0}, cur;

    while (!__atomic_load_n(&sr->stop, __ATOMIC_ACQUIRE)) {
        vblk_blk_read_stats(sr->d, NULL, &cur);
        if (cur.requests < prev.requests || cur.ops[VBLK_OP_FLUSH] < prev.ops[VBLK_OP_FLUSH] ||
            vblk_lat_count(&cur.lat[VBLK_LAT_FLUSH]) < vblk_lat_count(&prev.lat[VBLK_LAT_FLUSH]) ||
            cur.inflight > NUM)
            sr->went_backwards = 1;
        prev = cur;
        __atomic_add_fetch(&sr->reads, 1, __ATOMIC_RELEASE);
    }
    return NULL;
}

static void test_stats_read_while_serving(void **state)
{
    struct stats_reader sr = {.d = &fb.d};
    struct vblk_blk_stats st;
    pthread_t tid;
    struct fb_req r;

    fb_req_build(&fb, 0, &r, VIRTIO_BLK_T_FLUSH, 0, 0, false); /* completes inline on null */
    assert_int_equal(pthread_create(&tid, NULL, stats_reader_fn, &sr), 0);
    for (unsigned round = 0; round < 50; round++) {
        for (unsigned i = 0; i < 100; i++)
            fg_post(&fb.g, 0, r.head); /* one head, taken again as soon as it is published */
        fb_run(&fb, 0);
    }
    /* on a loaded machine the reader may not have run yet: let it take one snapshot */
    while (__atomic_load_n(&sr.reads, __ATOMIC_ACQUIRE) == 0)
        sched_yield();
    __atomic_store_n(&sr.stop, 1, __ATOMIC_RELEASE);
    pthread_join(tid, NULL);
    assert_false(sr.went_backwards);
    assert_true(sr.reads > 0);
    vblk_blk_read_stats(&fb.d, NULL, &st);
    assert_int_equal(st.requests, 5000);
    assert_int_equal(st.ops[VBLK_OP_FLUSH], 5000);
    assert_int_equal(lat_count(&st, VBLK_LAT_FLUSH), 5000);
    assert_int_equal(st.inflight, 0);
}

/* ---- budget: one queue cannot keep its I/O thread to itself ---- */

/* More requests than one pass takes are all served, in later passes, without another kick. */
static void test_budget_leaves_rest_for_next_pass(void **state)
{
    struct fb_req r;

    fb_req_build(&fb, 0, &r, VIRTIO_BLK_T_FLUSH, 0, 0, false); /* completes inline on null */
    for (unsigned i = 0; i < VBLK_QUEUE_BUDGET + 44; i++)
        fg_post(&fb.g, 0, r.head);
    fb_run(&fb, 0); /* one kick */
    assert_int_equal(fg_used_idx(&fb.g, 0), VBLK_QUEUE_BUDGET + 44);
    assert_int_equal(dev_stats(&fb.d).requests, VBLK_QUEUE_BUDGET + 44);
}

struct refiller {
    struct fake_blk *fb;
    uint16_t head;
    int stop;    /* atomic: set by the test */
    int gave_up; /* the 20 s cap was reached */
    uint64_t posted;
};

/* A guest that keeps its ring full of requests that complete at once, forever: every avail
 * entry holds the same head, and avail->idx is kept a whole ring ahead of used->idx. */
static void *refill(void *arg)
{
    struct refiller *f = arg;
    struct fg_ring *r = &f->fb->g.ring[0];
    struct timespec t0, now;

    for (unsigned i = 0; i < NUM; i++)
        r->avail->ring[i] = f->head;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    while (!__atomic_load_n(&f->stop, __ATOMIC_ACQUIRE)) {
        uint16_t idx = (uint16_t)(fg_used_idx(&f->fb->g, 0) + NUM);

        if (idx != r->avail_idx) {
            r->avail_idx = idx;
            __atomic_store_n(&r->avail->idx, idx, __ATOMIC_RELEASE);
            __atomic_add_fetch(&f->posted, 1, __ATOMIC_RELAXED);
        }
        clock_gettime(CLOCK_MONOTONIC, &now);
        if (now.tv_sec - t0.tv_sec > 20) {
            f->gave_up = 1;
            break;
        }
    }
    return NULL;
}

static int noop_fn(void *arg)
{
    return 0;
}

/* While a guest keeps the ring full, the I/O thread still answers control calls (stats, stop)
 * and serves the ring in passes. */
static void test_full_ring_does_not_starve_control_calls(void **state)
{
    struct vblk_iothread *iot = NULL;
    struct refiller f = {.fb = &fb};
    struct vblk_blk_stats st;
    struct vblk_blk_dev d;
    struct vblk_queue_params p;
    struct fb_req r;
    pthread_t tid;
    uint32_t last;
    int kick = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);

    assert_int_equal(vblk_iothread_create(&iot, "budget-test", &vblk_engine_null, 256, 0,
                                          VBLK_IOT_CALL_TIMEOUT_MS),
                     0);
    assert_int_equal(vblk_blk_create(&d, "t", fb.bdev, iot, 1, NUM, "s"), 0);
    p = (struct vblk_queue_params){.mem = &fb.g.mem,
                                   .num = NUM,
                                   .desc_uva = fb.g.ring[0].desc_uva,
                                   .avail_uva = fb.g.ring[0].avail_uva,
                                   .used_uva = fb.g.ring[0].used_uva,
                                   .kick_fd = kick,
                                   .call_fd = -1,
                                   .err_fd = -1,
                                   .event_idx = true,
                                   .indirect = true};
    fb_req_build(&fb, 0, &r, VIRTIO_BLK_T_FLUSH, 0, 0, false);
    f.head = r.head;
    assert_int_equal(pthread_create(&tid, NULL, refill, &f), 0);
    while (__atomic_load_n(&f.posted, __ATOMIC_RELAXED) == 0)
        usleep(1000);
    assert_int_equal(vblk_blk_queue_start(&d, 0, &p), 0);
    usleep(100 * 1000);
    /* a call into the thread: before the budget, never answered */
    assert_int_equal(vblk_iothread_call(iot, noop_fn, NULL), 0);
    vblk_blk_read_stats(&d, NULL, &st);
    assert_int_equal(vblk_blk_queue_stop(&d, 0, &last), 0);
    __atomic_store_n(&f.stop, 1, __ATOMIC_RELEASE);
    pthread_join(tid, NULL);
    vblk_iothread_destroy(iot);
    vblk_blk_destroy(&d);
    close(kick);
    assert_false(f.gave_up); /* answered while the guest was still refilling */
    assert_true(st.requests > VBLK_QUEUE_BUDGET);
    assert_int_equal(st.errors, 0);
}

/* ---- error policies (rerror= / werror=) ---- */

static int read_nheld(void *arg)
{
    return (int)((struct fake_blk *)arg)->nheld;
}

static void test_werror_report_gives_ioerr(void **state)
{
    struct fb_req r;

    fb.d.werror = VBLK_ERR_REPORT;
    fb_req_build(&fb, 0, &r, VIRTIO_BLK_T_OUT, 0, 512, false);
    fg_post(&fb.g, 0, r.head);
    fb_run(&fb, 0);
    fb_release(&fb, 0, -ENOSPC);
    assert_int_equal(fb_status(&fb, &r), VIRTIO_BLK_S_IOERR);
}

static void test_rerror_ignore_hides_the_error(void **state)
{
    struct fb_req r;

    fb.d.rerror = VBLK_ERR_IGNORE;
    fb_req_build(&fb, 0, &r, VIRTIO_BLK_T_IN, 0, 512, true);
    fg_post(&fb.g, 0, r.head);
    fb_run(&fb, 0);
    fb_release(&fb, 0, -EIO);
    assert_int_equal(fb_status(&fb, &r), VIRTIO_BLK_S_OK);
    assert_int_equal(dev_stats(&fb.d).ignored, 1);
    assert_int_equal(dev_stats(&fb.d).errors, 0);
}

/* stop: the failed request is held, its queue takes nothing new, the other queue goes on; a
 * resume retries it (here it then works) and the queue takes what waited meanwhile. */
static void test_werror_stop_holds_and_resume_retries(void **state)
{
    struct fb_req w, later, other;

    fb.d.werror = VBLK_ERR_STOP;
    fb_req_build(&fb, 0, &w, VIRTIO_BLK_T_OUT, 8, 512, false);
    fg_post(&fb.g, 0, w.head);
    fb_run(&fb, 0);
    fb_release(&fb, 0, -EIO);
    assert_int_equal(fb_status(&fb, &w), FB_STATUS_UNSET); /* held, not failed */
    assert_int_equal(dev_stats(&fb.d).held, 1);
    fb_req_build(&fb, 0, &later, VIRTIO_BLK_T_IN, 0, 512, true);
    fg_post(&fb.g, 0, later.head);
    assert_int_equal(eventfd_write(fb.kick[0], 1), 0);
    usleep(20 * 1000);
    assert_int_equal(fb_call(&fb, read_nheld, &fb), 0); /* paused: not taken */
    fb_req_build(&fb, 1, &other, VIRTIO_BLK_T_IN, 0, 512, true);
    fg_post(&fb.g, 1, other.head);
    fb_run(&fb, 1);
    fb_release(&fb, 1, 0);
    assert_int_equal(fb_status(&fb, &other), VIRTIO_BLK_S_OK);

    assert_int_equal(vblk_blk_resume(&fb.d), 1);
    fb_run(&fb, 0); /* the retried write and the waiting read reach the driver */
    assert_int_equal(fb_call(&fb, read_nheld, &fb), 2);
    fb_release(&fb, 0, 0);
    assert_int_equal(fb_status(&fb, &w), VIRTIO_BLK_S_OK);
    assert_int_equal(fb_status(&fb, &later), VIRTIO_BLK_S_OK);
}

/* enospc: out of space stops, anything else is reported. */
static void test_werror_enospc_stops_only_on_enospc(void **state)
{
    struct fb_req a, b;

    fb.d.werror = VBLK_ERR_ENOSPC;
    fb_req_build(&fb, 0, &a, VIRTIO_BLK_T_OUT, 0, 512, false);
    fg_post(&fb.g, 0, a.head);
    fb_run(&fb, 0);
    fb_release(&fb, 0, -EIO);
    assert_int_equal(fb_status(&fb, &a), VIRTIO_BLK_S_IOERR);
    fb_req_build(&fb, 0, &b, VIRTIO_BLK_T_FLUSH, 0, 0, false);
    fg_post(&fb.g, 0, b.head);
    fb_run(&fb, 0);
    fb_release(&fb, 0, -ENOSPC);
    assert_int_equal(fb_status(&fb, &b), FB_STATUS_UNSET);
    /* the front-end leaves while it is held: it fails then (nothing waits forever) */
    fb_queue_stop(&fb, 0);
    assert_int_equal(fb_status(&fb, &b), VIRTIO_BLK_S_IOERR);
}

/* ---- features and config ---- */

static void test_features_and_config(void **state)
{
    struct virtio_blk_config cfg;
    uint64_t f = vblk_blk_features(&fb.d);
    uint8_t one = 1, two = 2;

    assert_true(f & (1ull << VIRTIO_F_VERSION_1));
    assert_true(f & (1ull << VIRTIO_BLK_F_FLUSH));
    assert_true(f & (1ull << VIRTIO_BLK_F_MQ));
    assert_true(f & (1ull << VIRTIO_BLK_F_DISCARD));
    assert_true(f & (1ull << VIRTIO_BLK_F_WRITE_ZEROES));
    assert_false(f & (1ull << VIRTIO_BLK_F_RO));
    vblk_blk_config(&fb.d, &cfg);
    assert_int_equal(cfg.capacity, CAP);
    assert_int_equal(cfg.num_queues, NQ);
    assert_int_equal(cfg.seg_max, VBLK_SEG_MAX);
    assert_int_equal(cfg.size_max, VBLK_SIZE_MAX);
    assert_int_equal(cfg.blk_size, 512);
    assert_int_equal(cfg.wce, 1); /* writeback */
    assert_int_equal(vblk_blk_set_config(&fb.d, offsetof(struct virtio_blk_config, wce), &two, 1),
                     -EINVAL);
    assert_int_equal(vblk_blk_set_config(&fb.d, 0, &one, 1), -EINVAL);
    assert_int_equal(vblk_blk_set_config(&fb.d, offsetof(struct virtio_blk_config, wce), &one, 2),
                     -EINVAL);
    one = 0;
    assert_int_equal(vblk_blk_set_config(&fb.d, offsetof(struct virtio_blk_config, wce), &one, 1),
                     0);
    vblk_blk_config(&fb.d, &cfg);
    assert_int_equal(cfg.wce, 0);
    vblk_blk_reset(&fb.d);
    assert_true(fb.d.wce);
    fb.bdev->cache = VBLK_CACHE_WRITETHROUGH;
    vblk_blk_reset(&fb.d);
    assert_false(fb.d.wce);
}

/* ---- packed rings ---- */

static void packed_start(unsigned q)
{
    fb_queue_stop(&fb, q);
    fgp_init(&fb.g, q);
    fb_queue_start(&fb, q, true, true);
}

static uint8_t run_req_packed(unsigned q, struct fb_req *r, uint32_t type, uint64_t sector,
                              uint32_t len, bool data_write)
{
    fb_req_build(&fb, q, r, type, sector, len, data_write);
    fgp_post(&fb.g, q, r->pos);
    fb_run(&fb, q);
    return fb_status(&fb, r);
}

static void test_packed_round_trip_on_a_file(void **state)
{
    struct fb_req w, r;
    uint16_t id;
    uint32_t len;

    packed_start(0);
    for (unsigned k = 0; k < 3 * NUM; k++) { /* laps: both wrap counters flip */
        fb_req_build(&fb, 0, &w, VIRTIO_BLK_T_OUT, k, 512, false);
        memset(w.data, (int)k, 512);
        fgp_post(&fb.g, 0, w.pos);
        fb_run(&fb, 0);
        assert_int_equal(fb_status(&fb, &w), VIRTIO_BLK_S_OK);
        assert_true(fgp_used(&fb.g, 0, &id, &len));
        assert_int_equal(id, w.head);
        assert_int_equal(len, 1);
        assert_int_equal(run_req_packed(0, &r, VIRTIO_BLK_T_IN, k, 512, true), VIRTIO_BLK_S_OK);
        for (unsigned i = 0; i < 512; i++)
            assert_int_equal(r.data[i], (uint8_t)k);
        assert_true(fgp_used(&fb.g, 0, &id, &len));
        assert_int_equal(id, r.head);
        assert_int_equal(len, 513);
        assert_false(fgp_used(&fb.g, 0, &id, &len));
    }
    assert_false(Q(0)->vq.broken);
    /* stop and start again from the vring base: the rings carry on */
    assert_int_equal(fb_queue_stop(&fb, 0), fgp_base(&fb.g, 0));
    fb_queue_start(&fb, 0, true, true);
    assert_int_equal(run_req_packed(0, &r, VIRTIO_BLK_T_IN, 1, 512, true), VIRTIO_BLK_S_OK);
    assert_int_equal(r.data[0], 1);
}

/* Completions in another order than the requests: used elements in completion order. */
static void test_packed_out_of_order_completion(void **state)
{
    struct fb_req a, b;
    uint16_t id;
    uint32_t len;

    packed_start(0);
    fb_req_build(&fb, 0, &a, VIRTIO_BLK_T_IN, 0, 512, true);
    fgp_post(&fb.g, 0, a.pos);
    fb_run(&fb, 0);
    assert_false(fgp_used(&fb.g, 0, &id, &len)); /* held */
    fb_release(&fb, 0, 0);
    assert_true(fgp_used(&fb.g, 0, &id, &len));
    assert_int_equal(id, a.head);
    /* a flush (two descriptors) held while a read (three) goes by: the read is used first */
    fb_req_build(&fb, 0, &a, VIRTIO_BLK_T_FLUSH, 0, 0, false);
    fb_req_build(&fb, 0, &b, VIRTIO_BLK_T_GET_ID, 0, 20, true);
    fgp_post(&fb.g, 0, a.pos);
    fgp_post(&fb.g, 0, b.pos);
    fb_run(&fb, 0);
    assert_true(fgp_used(&fb.g, 0, &id, &len)); /* GET_ID completes at once */
    assert_int_equal(id, b.head);
    assert_int_equal(len, 21);
    assert_false(fgp_used(&fb.g, 0, &id, &len));
    fb_release(&fb, 0, 0);
    assert_true(fgp_used(&fb.g, 0, &id, &len));
    assert_int_equal(id, a.head);
    assert_int_equal(fb_status(&fb, &a), VIRTIO_BLK_S_OK);
    assert_false(Q(0)->vq.broken);
}

/* A buffer id made available again while in flight breaks the queue (as a split head does). */
static void test_packed_id_in_flight_again_breaks(void **state)
{
    struct fb_req a, b;

    packed_start(0);
    fb_req_build(&fb, 0, &a, VIRTIO_BLK_T_IN, 0, 512, true);
    fb_req_build(&fb, 0, &b, VIRTIO_BLK_T_IN, 0, 512, true);
    fb.g.ring[0].pdesc[(b.pos + 2) % NUM].id = a.head; /* the last descriptor carries the id */
    fgp_post(&fb.g, 0, a.pos);
    fgp_post(&fb.g, 0, b.pos);
    fb_run(&fb, 0);
    assert_true(Q(0)->vq.broken);
    fb_release(&fb, 0, 0);
}

#define TN(f) cmocka_unit_test_setup_teardown(f, setup_null, teardown)
#define TF(f) cmocka_unit_test_setup_teardown(f, setup_file, teardown)
#define TH(f) cmocka_unit_test_setup_teardown(f, setup_hold, teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        TF(test_packed_round_trip_on_a_file),
        TH(test_packed_out_of_order_completion),
        TH(test_packed_id_in_flight_again_breaks),
        TN(test_budget_leaves_rest_for_next_pass),
        TN(test_full_ring_does_not_starve_control_calls),
        TF(test_out_in_round_trip_on_a_file),
        TF(test_fixed_buffers_table_change),
        TF(test_in_on_a_file_spanning_regions_and_indirect),
        TN(test_in_on_null_reads_zeroes),
        TN(test_in_on_null_without_read_zeroes_leaves_the_buffer),
        TN(test_out_on_null_is_ok),
        TN(test_several_requests_complete_in_one_batch),
        TF(test_write_cache_off_makes_writes_dsync),
        TN(test_header_shorter_than_16_bytes_is_ioerr),
        TN(test_status_in_read_only_descriptor_is_not_written),
        TN(test_in_with_readable_data_is_ioerr),
        TN(test_out_with_writable_data_is_ioerr),
        TN(test_in_without_data_is_ioerr),
        TN(test_sector_beyond_capacity_is_ioerr),
        TN(test_sector_plus_length_overflow_is_ioerr),
        TN(test_unaligned_length_is_ioerr),
        TN(test_unaligned_sector_with_4k_blocks_is_ioerr),
        TN(test_seg_max_segments_is_ok),
        TN(test_more_than_seg_max_plus_2_descriptors_is_ioerr),
        TN(test_direct_chain_longer_than_seg_max_plus_2_is_ioerr),
        TN(test_descriptor_longer_than_size_max_is_ioerr),
        TN(test_data_outside_guest_memory_is_ioerr),
        TN(test_write_to_read_only_export_is_ioerr),
        TN(test_unknown_type_is_unsupp),
        TN(test_reserved_bits_in_type_are_unsupp),
        TN(test_flush_is_ok_and_counted),
        TF(test_flush_on_a_file_is_ok),
        TN(test_get_id_returns_the_serial),
        TN(test_get_id_short_buffer_and_full_length_serial),
        TN(test_discard_and_write_zeroes_ok),
        TF(test_write_zeroes_and_discard_on_a_file),
        TN(test_discard_flags_reserved_is_unsupp),
        TN(test_discard_more_than_one_segment_is_unsupp),
        TN(test_discard_short_segment_is_unsupp),
        TN(test_discard_out_of_range_is_ioerr),
        TN(test_discard_when_export_has_discard_off_is_unsupp),
        TN(test_discard_on_read_only_export_is_unsupp),
        TH(test_head_in_flight_made_available_again_breaks),
        TH(test_driver_error_is_ioerr),
        TH(test_werror_report_gives_ioerr),
        TH(test_rerror_ignore_hides_the_error),
        TH(test_werror_stop_holds_and_resume_retries),
        TH(test_werror_enospc_stops_only_on_enospc),
        TF(test_same_head_twice_in_one_batch_breaks),
        TN(test_broken_queue_does_not_process_further_requests),
        TN(test_requests_before_the_bad_one_complete),
        TN(test_other_queue_still_works_after_one_broke),
        TN(test_restarted_queue_works_again),
        TN(test_flush_signals_call_fd),
        TN(test_process_leaves_notifications_enabled),
        TN(test_polling_thread_sleeps_after_queue_broke),
        TN(test_polling_thread_serves_requests_and_sleeps_when_idle),
        TN(test_features_and_config),
        TN(test_stats_per_queue_by_type),
        TH(test_stats_inflight_and_latency_of_held_requests),
        TN(test_stats_read_while_serving),
    };

    return cmocka_run_group_tests_name("virtio_blk", tests, NULL, NULL);
}
