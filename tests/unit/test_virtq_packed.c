/* test_virtq_packed.c - the packed virtqueue, device side: chains, indirect tables, used
 * elements in completion order, wrap counters, event suppression, and the hostile cases of
 * test_virtq.c in their packed form. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "blk/virtio_blk.h"
#include "fake_guest.h"
#include "virtq/virtq.h"

#define NUM      16
#define PF_AVAIL (1u << VRING_PACKED_DESC_F_AVAIL)
#define PF_USED  (1u << VRING_PACKED_DESC_F_USED)

static struct fake_guest g;
static struct vblk_vq vq;
static struct iovec iov[VBLK_SEG_MAX + VBLK_IOV_SLACK];
static struct vblk_chain c;
static uint64_t hdr_gpa, data_gpa, status_gpa;

static int setup_num(uint16_t num)
{
    struct fg_ring *r;

    fg_init(&g, 1, num, true);
    fgp_init(&g, 0);
    r = &g.ring[0];
    memset(&vq, 0, sizeof(vq));
    if (vblk_vqp_setup(&vq, &g.mem, num, r->desc_uva, r->avail_uva, r->used_uva) < 0)
        return -1;
    vq.indirect = true;
    vq.max_desc = VBLK_SEG_MAX + 2;
    vq.max_seg = VBLK_SIZE_MAX;
    if (vblk_vqp_start(&vq, fgp_base(&g, 0)) < 0)
        return -1;
    memset(&c, 0, sizeof(c));
    c.iov = iov;
    c.iov_cap = sizeof(iov) / sizeof(iov[0]);
    hdr_gpa = fg_alloc(&g, 16);
    data_gpa = fg_alloc(&g, 4096);
    status_gpa = fg_alloc(&g, 1);
    return 0;
}

static int setup(void **state)
{
    return setup_num(NUM);
}

static int setup_odd(void **state)
{
    return setup_num(5); /* packed rings need not be a power of two */
}

static int teardown(void **state)
{
    fg_fini(&g);
    return 0;
}

/* hdr / data (writable) / status */
static uint16_t post3(uint16_t id)
{
    struct fg_seg s[] = {{hdr_gpa, 16, false}, {data_gpa, 512, true}, {status_gpa, 1, true}};
    uint16_t pos = fgp_chain(&g, 0, s, 3, id);

    fgp_post(&g, 0, pos);
    return pos;
}

static uint16_t post1(uint16_t id)
{
    struct fg_seg s[] = {{hdr_gpa, 16, false}};
    uint16_t pos = fgp_chain(&g, 0, s, 1, id);

    fgp_post(&g, 0, pos);
    return pos;
}

static int take(uint16_t *id)
{
    assert_int_equal(vblk_vq_avail(&vq), 1);
    return vblk_vqp_pop(&vq, id, &c);
}

/* ---- chains ---- */

static void test_packed_three_descriptors_and_used(void **state)
{
    uint16_t id = 0xffff, uid;
    uint32_t len;

    post3(7);
    assert_int_equal(take(&id), 0);
    assert_int_equal(id, 7);
    assert_int_equal(c.err, 0);
    assert_int_equal(c.out_cnt, 1);
    assert_int_equal(c.in_cnt, 2);
    assert_int_equal(c.in_len, 513);
    assert_ptr_equal(c.status, fg_ptr(&g, status_gpa));
    assert_int_equal(vblk_vq_avail(&vq), 0);
    assert_int_equal(vq.avail_pos, 3);

    vblk_vq_push(&vq, id, 513);
    assert_false(fgp_used(&g, 0, &uid, &len)); /* not visible before publish */
    assert_true(vblk_vq_publish(&vq));
    assert_false(vblk_vq_publish(&vq));
    assert_true(fgp_used(&g, 0, &uid, &len));
    assert_int_equal(uid, 7);
    assert_int_equal(len, 513);
    assert_int_equal(vq.used_pos, 3); /* skipped the chain */
    assert_int_equal(g.ring[0].pdesc[0].flags & (PF_AVAIL | PF_USED), PF_AVAIL | PF_USED);
}

static void test_packed_indirect_table(void **state)
{
    struct fg_seg s[] = {{hdr_gpa, 16, false}, {data_gpa, 4096, true}, {status_gpa, 1, true}};
    uint16_t id, uid;
    uint32_t len;

    fgp_post(&g, 0, fgp_chain_indirect(&g, 0, s, 3, 2));
    post1(3);
    assert_int_equal(take(&id), 0);
    assert_int_equal(id, 2);
    assert_int_equal(c.err, 0);
    assert_int_equal(c.ndesc, 3);
    assert_int_equal(c.in_len, 4097);
    assert_non_null(c.status);
    assert_int_equal(vq.avail_pos, 1); /* one ring descriptor */
    assert_int_equal(take(&id), 0);
    assert_int_equal(id, 3);
    vblk_vq_push(&vq, 2, 1);
    vblk_vq_push(&vq, 3, 0);
    vblk_vq_publish(&vq);
    assert_true(fgp_used(&g, 0, &uid, &len));
    assert_int_equal(uid, 2);
    assert_true(fgp_used(&g, 0, &uid, &len));
    assert_int_equal(uid, 3);
    assert_false(fgp_used(&g, 0, &uid, &len));
}

/* Completion order: used elements go at the device's position, each skipping its own chain. */
static void test_packed_out_of_order_completion(void **state)
{
    uint16_t a, b, uid;
    uint32_t len;

    post3(4); /* positions 0-2 */
    post1(9); /* position 3 */
    assert_int_equal(take(&a), 0);
    assert_int_equal(take(&b), 0);
    vblk_vq_push(&vq, b, 10); /* the one-descriptor chain first: used at 0, skip 1 */
    vblk_vq_publish(&vq);
    assert_int_equal(vq.used_pos, 1);
    vblk_vq_push(&vq, a, 20); /* then the three: used at 1, skip 3 */
    vblk_vq_publish(&vq);
    assert_int_equal(vq.used_pos, 4);
    /* the driver skips by the length of the chain it gave each id */
    g.ring[0].chain_n[9] = 1;
    g.ring[0].chain_n[4] = 3;
    assert_true(fgp_used(&g, 0, &uid, &len));
    assert_int_equal(uid, 9);
    assert_int_equal(g.ring[0].pused, 1);
    assert_true(fgp_used(&g, 0, &uid, &len));
    assert_int_equal(uid, 4);
    assert_int_equal(len, 20);
    assert_int_equal(g.ring[0].pused, 4);
}

/* A batch: the first element's flags are written last, at publish. */
static void test_packed_batch_first_flags_last(void **state)
{
    uint16_t id[3];

    for (uint16_t i = 0; i < 3; i++)
        post1(i);
    for (int i = 0; i < 3; i++)
        assert_int_equal(take(&id[i]), 0);
    for (int i = 0; i < 3; i++)
        vblk_vq_push(&vq, id[i], 1);
    /* elements 1 and 2 are written, element 0 still looks available */
    assert_int_equal(g.ring[0].pdesc[1].flags & (PF_AVAIL | PF_USED), PF_AVAIL | PF_USED);
    assert_int_equal(g.ring[0].pdesc[0].flags & (PF_AVAIL | PF_USED), PF_AVAIL);
    vblk_vq_publish(&vq);
    assert_int_equal(g.ring[0].pdesc[0].flags & (PF_AVAIL | PF_USED), PF_AVAIL | PF_USED);
}

/* Several laps: chains crossing the end of the ring, wrap counters flipping on both sides. */
static void test_packed_laps_and_chain_across_the_end(void **state)
{
    for (unsigned k = 0; k < 40; k++) {
        uint16_t id, uid;
        uint32_t len;

        post3((uint16_t)(k % NUM)); /* 3 does not divide 16: chains straddle the end */
        assert_int_equal(take(&id), 0);
        assert_int_equal(id, k % NUM);
        assert_int_equal(c.err, 0);
        assert_int_equal(c.in_len, 513);
        assert_int_equal(vblk_vq_avail(&vq), 0);
        vblk_vq_push(&vq, id, 513);
        vblk_vq_publish(&vq);
        assert_true(fgp_used(&g, 0, &uid, &len));
        assert_int_equal(uid, id);
    }
    assert_int_equal(vq.avail_pos, 120 % NUM);
    assert_int_equal(vq.avail_wrap, (120 / NUM) % 2 == 0);
    assert_false(vq.broken);
    /* the vring base carries both positions and wrap counters */
    assert_int_equal(vblk_vq_base(&vq), fgp_base(&g, 0));
}

static void test_packed_ring_not_power_of_two(void **state)
{
    for (unsigned k = 0; k < 12; k++) {
        uint16_t id, uid;
        uint32_t len;

        post3((uint16_t)(k % 5));
        assert_int_equal(take(&id), 0);
        vblk_vq_push(&vq, id, 1);
        vblk_vq_publish(&vq);
        assert_true(fgp_used(&g, 0, &uid, &len));
        assert_int_equal(uid, k % 5);
    }
    assert_false(vq.broken);
}

static void test_packed_not_available_with_wrong_wrap_bits(void **state)
{
    /* AVAIL and USED both set is a used descriptor on this lap; neither is the last lap */
    fgp_desc(&g, 0, 0, hdr_gpa, 16, 0, PF_AVAIL | PF_USED);
    assert_int_equal(vblk_vq_avail(&vq), 0);
    fgp_desc(&g, 0, 0, hdr_gpa, 16, 0, 0);
    assert_int_equal(vblk_vq_avail(&vq), 0);
    fgp_desc(&g, 0, 0, hdr_gpa, 16, 0, PF_USED);
    assert_int_equal(vblk_vq_avail(&vq), 0);
    fgp_desc(&g, 0, 0, hdr_gpa, 16, 0, PF_AVAIL);
    assert_int_equal(vblk_vq_avail(&vq), 1);
}

/* ---- hostile rings: the queue breaks ---- */

static void expect_broken(void)
{
    uint16_t id;

    assert_int_equal(vblk_vq_avail(&vq), 1);
    assert_int_equal(vblk_vqp_pop(&vq, &id, &c), -EIO);
    assert_true(vq.broken);
    assert_int_equal(vblk_vq_avail(&vq), -EIO);
}

static void test_packed_chain_longer_than_ring_breaks(void **state)
{
    for (uint16_t i = 0; i < NUM; i++) /* every descriptor says NEXT */
        fgp_desc(&g, 0, i, hdr_gpa, 16, 0, PF_AVAIL | VRING_DESC_F_NEXT);
    expect_broken();
}

static void test_packed_chain_of_exactly_ring_size_is_fine(void **state)
{
    uint16_t id;

    for (uint16_t i = 0; i < NUM; i++)
        fgp_desc(&g, 0, i, hdr_gpa, 16, 1, PF_AVAIL | (i + 1 < NUM ? VRING_DESC_F_NEXT : 0));
    assert_int_equal(take(&id), 0);
    assert_int_equal(id, 1);
    assert_int_equal(c.ndesc, NUM);
    assert_int_equal(vq.avail_pos, 0);
    assert_false(vq.avail_wrap);
}

static void test_packed_id_out_of_range_breaks(void **state)
{
    post1(NUM);
    expect_broken();
}

static void test_packed_id_in_flight_again_breaks(void **state)
{
    uint16_t id;

    post1(3);
    post1(3);
    assert_int_equal(take(&id), 0);
    expect_broken();
}

static void test_packed_id_reused_after_completion_is_fine(void **state)
{
    uint16_t id;

    post1(3);
    assert_int_equal(take(&id), 0);
    vblk_vq_push(&vq, id, 0);
    vblk_vq_publish(&vq);
    post1(3);
    assert_int_equal(take(&id), 0);
    assert_false(vq.broken);
}

/* The driver makes descriptors available that the device has not handed back yet. */
static void test_packed_more_in_flight_than_ring_breaks(void **state)
{
    uint16_t id;

    for (uint16_t i = 0; i < NUM; i++) {
        post1(i);
        assert_int_equal(take(&id), 0);
    }
    /* the ring is full of taken buffers: position 0 again, on the next lap */
    assert_int_equal(g.ring[0].pnext, 0);
    fgp_desc(&g, 0, 0, hdr_gpa, 16, 0, PF_USED); /* available for wrap counter 0 */
    expect_broken();
}

static void test_packed_indirect_not_negotiated_breaks(void **state)
{
    struct fg_seg s[] = {{hdr_gpa, 16, false}, {status_gpa, 1, true}};

    vq.indirect = false;
    fgp_post(&g, 0, fgp_chain_indirect(&g, 0, s, 2, 0));
    expect_broken();
}

static void test_packed_indirect_with_next_breaks(void **state)
{
    fgp_desc(&g, 0, 1, hdr_gpa, 16, 0, PF_AVAIL);
    fgp_desc(&g, 0, 0, fg_alloc(&g, 32), 32, 0,
             PF_AVAIL | VRING_DESC_F_INDIRECT | VRING_DESC_F_NEXT);
    expect_broken();
}

static void test_packed_indirect_after_a_direct_descriptor_breaks(void **state)
{
    fgp_desc(&g, 0, 1, fg_alloc(&g, 32), 32, 0, PF_AVAIL | VRING_DESC_F_INDIRECT);
    fgp_desc(&g, 0, 0, hdr_gpa, 16, 0, PF_AVAIL | VRING_DESC_F_NEXT);
    expect_broken();
}

static void test_packed_indirect_bad_length_breaks(void **state)
{
    uint64_t t = fg_alloc(&g, 64);

    fgp_desc(&g, 0, 0, t, 24, 0, PF_AVAIL | VRING_DESC_F_INDIRECT);
    expect_broken();
    assert_int_equal(setup(NULL), 0);
    fgp_desc(&g, 0, 0, t, 0, 0, PF_AVAIL | VRING_DESC_F_INDIRECT);
    expect_broken();
}

static void test_packed_indirect_table_outside_memory_breaks(void **state)
{
    fgp_desc(&g, 0, 0, 0x10, 32, 0, PF_AVAIL | VRING_DESC_F_INDIRECT);
    expect_broken();
}

static void test_packed_indirect_inside_indirect_breaks(void **state)
{
    uint64_t t = fg_alloc(&g, 32);
    struct vring_packed_desc *d = fg_ptr(&g, t);

    d[0] = (struct vring_packed_desc){.addr = hdr_gpa, .len = 16};
    d[1] = (struct vring_packed_desc){.addr = t, .len = 32, .flags = VRING_DESC_F_INDIRECT};
    fgp_desc(&g, 0, 0, t, 32, 0, PF_AVAIL | VRING_DESC_F_INDIRECT);
    expect_broken();
}

static void test_packed_indirect_next_in_table_is_ignored(void **state)
{
    uint64_t t = fg_alloc(&g, 32);
    struct vring_packed_desc *d = fg_ptr(&g, t);
    uint16_t id;

    d[0] = (struct vring_packed_desc){.addr = hdr_gpa, .len = 16, .flags = VRING_DESC_F_NEXT};
    d[1] = (struct vring_packed_desc){.addr = status_gpa, .len = 1, .flags = VRING_DESC_F_WRITE};
    fgp_desc(&g, 0, 0, t, 32, 5, PF_AVAIL | VRING_DESC_F_INDIRECT);
    assert_int_equal(take(&id), 0);
    assert_int_equal(id, 5);
    assert_int_equal(c.err, 0);
    assert_int_equal(c.ndesc, 2);
}

/* ---- hostile contents: one request fails ---- */

static void test_packed_address_outside_memory_is_request_error(void **state)
{
    struct fg_seg s[] = {{0x10, 16, false}, {status_gpa, 1, true}};
    uint16_t id;

    fgp_post(&g, 0, fgp_chain(&g, 0, s, 2, 1));
    assert_int_equal(take(&id), 0);
    assert_int_equal(c.err, -EFAULT);
    assert_non_null(c.status); /* the status still goes back */
    assert_false(vq.broken);
}

static void test_packed_readable_after_writable_is_einval(void **state)
{
    struct fg_seg s[] = {{data_gpa, 16, true}, {hdr_gpa, 16, false}, {status_gpa, 1, true}};
    uint16_t id;

    fgp_post(&g, 0, fgp_chain(&g, 0, s, 3, 1));
    assert_int_equal(take(&id), 0);
    assert_int_equal(c.err, -EINVAL);
}

static void test_packed_zero_length_is_einval(void **state)
{
    struct fg_seg s[] = {{hdr_gpa, 0, false}, {status_gpa, 1, true}};
    uint16_t id;

    fgp_post(&g, 0, fgp_chain(&g, 0, s, 2, 1));
    assert_int_equal(take(&id), 0);
    assert_int_equal(c.err, -EINVAL);
}

static void test_packed_more_than_max_desc_is_e2big(void **state)
{
    struct fg_seg s[8];
    uint16_t id;

    for (int i = 0; i < 8; i++)
        s[i] = (struct fg_seg){data_gpa + 16 * i, 16, i == 7};
    vq.max_desc = 4;
    fgp_post(&g, 0, fgp_chain(&g, 0, s, 8, 1));
    assert_int_equal(take(&id), 0);
    assert_int_equal(c.err, -E2BIG);
    assert_non_null(c.status);
    /* and in an indirect table */
    fgp_post(&g, 0, fgp_chain_indirect(&g, 0, s, 8, 2));
    assert_int_equal(take(&id), 0);
    assert_int_equal(c.err, -E2BIG);
    assert_false(vq.broken);
}

/* ---- notifications ---- */

static void set_driver_event(uint16_t flags, uint16_t off, bool wrap)
{
    g.ring[0].driver_event->off_wrap = (uint16_t)(off | (unsigned)wrap << 15);
    g.ring[0].driver_event->flags = flags;
}

static void complete_one(uint16_t idv)
{
    uint16_t id, uid;
    uint32_t len;

    post1(idv);
    assert_int_equal(take(&id), 0);
    vblk_vq_push(&vq, id, 0);
    vblk_vq_publish(&vq);
    assert_true(fgp_used(&g, 0, &uid, &len));
}

static void test_packed_should_notify_flags(void **state)
{
    set_driver_event(VRING_PACKED_EVENT_FLAG_DISABLE, 0, false);
    complete_one(0);
    assert_false(vblk_vq_should_notify(&vq));
    set_driver_event(VRING_PACKED_EVENT_FLAG_ENABLE, 0, false);
    complete_one(1);
    assert_true(vblk_vq_should_notify(&vq));
    set_driver_event(3, 0, false); /* reserved: notify */
    complete_one(2);
    assert_true(vblk_vq_should_notify(&vq));
    /* DESC without EVENT_IDX negotiated: treated as enable */
    set_driver_event(VRING_PACKED_EVENT_FLAG_DESC, 9, true);
    complete_one(3);
    assert_true(vblk_vq_should_notify(&vq));
}

static void test_packed_should_notify_desc_event(void **state)
{
    vq.event_idx = true;
    set_driver_event(VRING_PACKED_EVENT_FLAG_DESC, 0, true);
    complete_one(0);                         /* used 0 -> 1 */
    assert_true(vblk_vq_should_notify(&vq)); /* the first always */
    set_driver_event(VRING_PACKED_EVENT_FLAG_DESC, 3, true);
    complete_one(1); /* 1 -> 2: not at 3 yet */
    assert_false(vblk_vq_should_notify(&vq));
    complete_one(2); /* 2 -> 3 */
    assert_false(vblk_vq_should_notify(&vq));
    complete_one(3); /* 3 -> 4: writes position 3 */
    assert_true(vblk_vq_should_notify(&vq));
    /* an event on the next lap (position 1, wrap 0) is not met by this lap's position 1.. */
    set_driver_event(VRING_PACKED_EVENT_FLAG_DESC, 5, false);
    for (uint16_t i = 4; i < NUM; i++) {
        complete_one(i);
        assert_false(vblk_vq_should_notify(&vq));
    }
    /* ..but by the next lap's */
    for (uint16_t i = 0; i < 5; i++) {
        complete_one(i);
        assert_false(vblk_vq_should_notify(&vq));
    }
    complete_one(5);
    assert_true(vblk_vq_should_notify(&vq));
    /* nonsense offset: notify */
    set_driver_event(VRING_PACKED_EVENT_FLAG_DESC, 0x7fff, false);
    complete_one(6);
    assert_true(vblk_vq_should_notify(&vq));
}

static void test_packed_enable_disable_notify(void **state)
{
    struct vring_packed_desc_event *dev = g.ring[0].device_event;
    uint16_t id;

    vblk_vq_disable_notify(&vq);
    assert_int_equal(dev->flags, VRING_PACKED_EVENT_FLAG_DISABLE);
    assert_false(vblk_vq_enable_notify(&vq));
    assert_int_equal(dev->flags, VRING_PACKED_EVENT_FLAG_ENABLE);
    vq.event_idx = true;
    post3(1);
    assert_true(vblk_vq_enable_notify(&vq)); /* arrived meanwhile */
    assert_int_equal(dev->flags, VRING_PACKED_EVENT_FLAG_DESC);
    assert_int_equal(dev->off_wrap, 0 | 0x8000);
    assert_int_equal(take(&id), 0);
    assert_false(vblk_vq_enable_notify(&vq));
    assert_int_equal(dev->off_wrap, 3 | 0x8000); /* kick when position 3 becomes available */
}

/* ---- setup and base ---- */

static void test_packed_setup_and_base(void **state)
{
    struct vblk_vq *v2 = calloc(1, sizeof(*v2));
    struct fg_ring *r = &g.ring[0];

    assert_int_equal(vblk_vqp_setup(v2, &g.mem, 0, r->desc_uva, r->avail_uva, r->used_uva),
                     -EINVAL);
    assert_int_equal(vblk_vqp_setup(v2, &g.mem, 2048, r->desc_uva, r->avail_uva, r->used_uva),
                     -EINVAL);
    assert_int_equal(vblk_vqp_setup(v2, &g.mem, 16, r->desc_uva + 8, r->avail_uva, r->used_uva),
                     -EINVAL);
    assert_int_equal(vblk_vqp_setup(v2, &g.mem, 16, r->desc_uva, r->avail_uva + 2, r->used_uva),
                     -EINVAL);
    assert_int_equal(vblk_vqp_setup(v2, &g.mem, 16, r->desc_uva, r->avail_uva, r->used_uva + 2),
                     -EINVAL);
    assert_int_equal(vblk_vqp_setup(v2, &g.mem, 16, r->desc_uva, r->avail_uva, 0x1000), -EFAULT);
    assert_int_equal(
        vblk_vqp_setup(v2, &g.mem, 16, FG_UVA0 + FG_R0_SIZE - 128, r->avail_uva, r->used_uva),
        -EFAULT);
    assert_int_equal(vblk_vqp_setup(v2, &g.mem, 12, r->desc_uva, r->avail_uva, r->used_uva), 0);
    assert_true(v2->packed);
    /* bases: position beyond the ring, used ahead of avail, more than a ring apart */
    assert_int_equal(vblk_vqp_start(v2, 0x8000 | 12), -EINVAL);
    assert_int_equal(vblk_vqp_start(v2, 0x8000u | (0x8000u | 12) << 16), -EINVAL);
    assert_int_equal(vblk_vqp_start(v2, 0x8003u | (0x8004u << 16)), -EINVAL); /* used ahead */
    assert_int_equal(vblk_vqp_start(v2, 0x0003u | (0x8002u << 16)), -EINVAL); /* 13 apart */
    assert_int_equal(vblk_vqp_start(v2, 0x0003u | (0x8004u << 16)), 0);       /* 11 in flight */
    assert_int_equal(vblk_vq_base(v2), 0x0003u | (0x8004u << 16));
    /* 16 bits only (used side 0): the same place as the avail side */
    assert_int_equal(vblk_vqp_start(v2, 0x8005), 0);
    assert_int_equal(vblk_vq_base(v2), 0x80058005u);
    free(v2);
}

#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(test_packed_three_descriptors_and_used),
        T(test_packed_indirect_table),
        T(test_packed_out_of_order_completion),
        T(test_packed_batch_first_flags_last),
        T(test_packed_laps_and_chain_across_the_end),
        cmocka_unit_test_setup_teardown(test_packed_ring_not_power_of_two, setup_odd, teardown),
        T(test_packed_not_available_with_wrong_wrap_bits),
        T(test_packed_chain_longer_than_ring_breaks),
        T(test_packed_chain_of_exactly_ring_size_is_fine),
        T(test_packed_id_out_of_range_breaks),
        T(test_packed_id_in_flight_again_breaks),
        T(test_packed_id_reused_after_completion_is_fine),
        T(test_packed_more_in_flight_than_ring_breaks),
        T(test_packed_indirect_not_negotiated_breaks),
        T(test_packed_indirect_with_next_breaks),
        T(test_packed_indirect_after_a_direct_descriptor_breaks),
        T(test_packed_indirect_bad_length_breaks),
        T(test_packed_indirect_table_outside_memory_breaks),
        T(test_packed_indirect_inside_indirect_breaks),
        T(test_packed_indirect_next_in_table_is_ignored),
        T(test_packed_address_outside_memory_is_request_error),
        T(test_packed_readable_after_writable_is_einval),
        T(test_packed_zero_length_is_einval),
        T(test_packed_more_than_max_desc_is_e2big),
        T(test_packed_should_notify_flags),
        T(test_packed_should_notify_desc_event),
        T(test_packed_enable_disable_notify),
        T(test_packed_setup_and_base),
    };

    return cmocka_run_group_tests_name("virtq_packed", tests, NULL, NULL);
}
