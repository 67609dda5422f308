/* test_walk_fast.c - the split-ring walker's fast path against its general walk.
 *
 * vblk_vq_walk() tries walk_fast() (registers only, gives up on anything unusual) and otherwise
 * calls walk_slow().  The invariant checked here on random descriptor tables and chains: whenever
 * walk_fast() accepts a chain, walk_slow() accepts it too, without breaking the ring, and builds
 * exactly the same chain; walk_fast() never breaks the ring and never writes an iovec at or past
 * iov_cap; and vblk_vq_walk() always ends as walk_slow() alone would.
 *
 * The walker's functions are static: this file includes virtq.c itself (the test program's copy
 * of virtq.c's external symbols is the one linked; libvblk's virtq.o is never pulled in).
 *
 * The random numbers, guest addresses and lengths, iovec canaries and chain comparison are
 * chain_check.h's, shared with the other fast-path test.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "../../src/virtq/virtq.c"

#include "blk/virtio_blk.h"
#include "fake_guest.h"
#include "chain_check.h"

#define NCASES    20000
#define SEED      0x9e3779b97f4a7c15ull
#define TBL_MAX   64
#define CHAIN_MAX 20
#define RING_NUM  1024 /* the ring laid out in guest memory; each case uses its first vq.num */

static int setup(void **state)
{
    struct fg_ring *r;

    fg_init(&t_g, 1, RING_NUM, true);
    r = &t_g.ring[0];
    memset(&t_vq, 0, sizeof(t_vq));
    if (vblk_vq_setup(&t_vq, &t_g.mem, RING_NUM, r->desc_uva, r->avail_uva, r->used_uva) < 0)
        return -1;
    t_vq.indirect = true;
    t_vq.max_desc = VBLK_SEG_MAX + 2;
    t_vq.max_seg = VBLK_SIZE_MAX;
    vblk_vq_start(&t_vq, 0);
    t_data = fg_alloc(&t_g, DATA_SIZE);
    t_tbl = fg_alloc(&t_g, 16ull * TBL_MAX + 64);
    t_rng = SEED;
    return 0;
}

static int teardown(void **state)
{
    fg_fini(&t_g);
    return 0;
}

/* ---- one walk of each kind ---- */

struct result {
    bool ok; /* walk_fast: accepted; otherwise the return value is rc */
    int rc;
    bool broken;
    struct vblk_chain c;
    struct iovec iov[IOV_BIG];
    int hit; /* canary_hit() */
};

enum walker { W_FAST, W_SLOW, W_PUBLIC };

static void run(enum walker w, uint16_t head, unsigned cap, struct result *res)
{
    chain_poison(cap);
    t_vq.broken = false;
    switch (w) {
    case W_FAST:
        res->ok = walk_fast(&t_vq, head, &t_c);
        res->rc = 0;
        break;
    case W_SLOW:
        res->rc = walk_slow(&t_vq, head, &t_c);
        res->ok = res->rc == 0;
        break;
    case W_PUBLIC:
        res->rc = vblk_vq_walk(&t_vq, head, &t_c);
        res->ok = res->rc == 0;
        break;
    }
    res->broken = t_vq.broken;
    res->c = t_c;
    memcpy(res->iov, t_iov, sizeof(res->iov));
    res->hit = canary_hit(cap);
    t_vq.broken = false;
}

/* ---- random cases ---- */

struct tcase {
    unsigned no;
    uint16_t head;
    unsigned cap;
};

static struct tcase t_case;

static void dump_desc(const char *where, unsigned i, const struct vring_desc *d)
{
    print_message("  %s[%u] addr 0x%llx len %u flags %s%s%s(0x%x) next %u\n", where, i,
                  (unsigned long long)d->addr, d->len, d->flags & VRING_DESC_F_NEXT ? "NEXT " : "",
                  d->flags & VRING_DESC_F_WRITE ? "WRITE " : "",
                  d->flags & VRING_DESC_F_INDIRECT ? "INDIRECT " : "", d->flags, d->next);
}

static void dump_case(const char *what)
{
    const struct vring_desc *ring = t_g.ring[0].desc;

    print_message("case %u: %s\n", t_case.no, what);
    print_message("  vq.num %u indirect %d max_desc %u max_seg %u; head %u iov_cap %u\n", t_vq.num,
                  t_vq.indirect, t_vq.max_desc, t_vq.max_seg, t_case.head, t_case.cap);
    dump_regions();
    for (unsigned i = 0; i < t_vq.num; i++)
        dump_desc("ring", i, &ring[i]);
    if (t_case.head < t_vq.num && (ring[t_case.head].flags & VRING_DESC_F_INDIRECT)) {
        const struct vring_desc *d = &ring[t_case.head];
        unsigned n = d->len / 16;
        const uint8_t *t = vblk_mem_gpa_in(&t_g.mem, d->addr, 16ull * (n < 32 ? n : 32));

        for (unsigned i = 0; t && i < n && i < 32; i++) {
            struct vring_desc e;

            memcpy(&e, t + 16 * i, sizeof(e));
            dump_desc("table", i, &e);
        }
    }
}

static uint16_t rand_flags(void)
{
    return (uint16_t)rn(8); /* NEXT 1, WRITE 2, INDIRECT 4 */
}

static void garbage_desc(struct vring_desc *d, unsigned max)
{
    uint32_t len = chance(50) ? good_len() : bad_len();

    d->addr = chance(60) ? good_addr(len) : bad_addr(len);
    d->len = len;
    d->flags = rand_flags();
    d->next = (uint16_t)rn(max + 4);
}

/* Lay out one random case in guest memory and the vq; the chain's descriptors are in d[0..k). */
static void gen_case(void)
{
    static const unsigned small_desc[] = {0, 1, 2, 3, 4, 6, VBLK_SEG_MAX + 2, 0xffff};
    static const unsigned small_seg[] = {0, 1, 16, 512, 4096, VBLK_SIZE_MAX};
    static const unsigned small_cap[] = {0, 1, 2, 3, 4, 8, IOV_BIG};
    struct vring_desc *ring = t_g.ring[0].desc;
    struct vring_desc *d[CHAIN_MAX], *head_desc = NULL;
    struct vring_desc tbl[TBL_MAX]; /* the indirect table, copied to tgpa at the end */
    unsigned idx[RING_NUM];
    unsigned k, nread, n = 0, max;
    bool ind;
    uint64_t tgpa = 0;

    /* the queue */
    if (chance(70)) { /* as virtio_blk.c sets it up */
        t_vq.num = (uint16_t)(8u << rn(5));
        t_vq.max_desc = VBLK_SEG_MAX + 2;
        t_vq.max_seg = VBLK_SIZE_MAX;
        t_case.cap = IOV_BIG;
        t_vq.indirect = true;
    } else {
        t_vq.num = (uint16_t)(1u << rn(7));
        t_vq.max_desc = (uint16_t)pick(small_desc, ARRAY_SIZE(small_desc));
        t_vq.max_seg = pick(small_seg, ARRAY_SIZE(small_seg));
        t_case.cap = pick(small_cap, ARRAY_SIZE(small_cap));
        t_vq.indirect = chance(80);
    }
    if (chance(5))
        t_vq.indirect = false;
    for (unsigned i = 0; i < t_vq.num; i++)
        garbage_desc(&ring[i], t_vq.num);

    /* a good chain: nread readable descriptors, then at least one writable */
    k = chance(90) ? 1 + rn(6) : 1 + rn(CHAIN_MAX);
    ind = chance(40);
    if (!ind && k > t_vq.num)
        k = t_vq.num;
    nread = rn(k);

    for (unsigned i = 0; i < RING_NUM; i++)
        idx[i] = i;
    if (!ind) {
        /* k distinct ring slots, in random order */
        for (unsigned i = 0; i < k; i++) {
            unsigned j = i + rn(t_vq.num - i), t = idx[i];

            idx[i] = idx[j];
            idx[j] = t;
            d[i] = &ring[idx[i]];
        }
        t_case.head = (uint16_t)idx[0];
        max = t_vq.num;
    } else {
        unsigned where = rn(100);

        n = k + (chance(50) ? rn(4) : 0);
        tgpa = table_gpa(where, n);
        for (unsigned i = 0; i < n; i++)
            garbage_desc(&tbl[i], n);
        /* entry 0 first, the others at distinct random places */
        for (unsigned i = 1; i < k; i++) {
            unsigned j = i + rn(n - i), t = idx[i];

            idx[i] = idx[j];
            idx[j] = t;
        }
        for (unsigned i = 0; i < k; i++)
            d[i] = &tbl[idx[i]];
        t_case.head = (uint16_t)rn(t_vq.num);
        head_desc = &ring[t_case.head];
        head_desc->addr = tgpa;
        head_desc->len = 16u * n;
        head_desc->flags = VRING_DESC_F_INDIRECT;
        head_desc->next = (uint16_t)rn(t_vq.num + 4);
        max = n;
    }
    for (unsigned i = 0; i < k; i++) {
        d[i]->len = good_len();
        d[i]->addr = good_addr(d[i]->len);
        d[i]->flags =
            (uint16_t)((i >= nread ? VRING_DESC_F_WRITE : 0) | (i + 1 < k ? VRING_DESC_F_NEXT : 0));
        d[i]->next = (uint16_t)(i + 1 < k ? idx[i + 1] : rn(max + 4));
    }

    /* then break it, sometimes */
    for (unsigned m = chance(45) ? 1 + rn(3) : 0; m > 0; m--) {
        struct vring_desc *x = d[rn(k)];

        switch (rn(ind ? 9 : 7)) {
        case 0: /* a flag */
            x->flags ^= (uint16_t)(1u << rn(3));
            break;
        case 1: /* the next index: anywhere, or back into the chain (a loop) */
            x->flags |= VRING_DESC_F_NEXT;
            x->next = (uint16_t)(chance(50) ? rn(max + 4) : idx[rn(k)]);
            break;
        case 2:
            x->len = bad_len();
            break;
        case 3:
            x->addr = bad_addr(x->len);
            break;
        case 4: /* nothing writable, or a readable one after a writable one */
            if (chance(50)) {
                for (unsigned i = 0; i < k; i++)
                    d[i]->flags &= (uint16_t)~VRING_DESC_F_WRITE;
            } else {
                d[k - 1]->flags &= (uint16_t)~VRING_DESC_F_WRITE;
            }
            break;
        case 5: /* a head out of the ring */
            t_case.head = (uint16_t)(t_vq.num + rn(4));
            break;
        case 6: /* an indirect descriptor inside the chain (or the table) */
            x->flags |= VRING_DESC_F_INDIRECT;
            if (chance(50)) {
                x->addr = t_tbl;
                x->len = 16u * (1 + rn(4));
            }
            break;
        case 7: /* the table's address */
            head_desc->addr = table_addr_broken(head_desc->addr, head_desc->len, n);
            break;
        default: { /* the table's descriptor: length, NEXT, WRITE */
            unsigned w = rn(6);

            if (w < 4) /* a shorter table may cut the chain */
                head_desc->len = table_len_broken(w, head_desc->len, n);
            else if (w == 4)
                head_desc->flags |= VRING_DESC_F_NEXT;
            else
                head_desc->flags |= VRING_DESC_F_WRITE;
            break;
        }
        }
    }
    /* the table where the chain was planned, even if its descriptor now points elsewhere */
    table_write(tgpa, tbl, n);
}

static struct result r_fast, r_slow, r_pub;

static void test_fast_agrees_with_slow(void **state)
{
    unsigned fast = 0, slow_good = 0, declined = 0, broken = 0;

    for (t_case.no = 0; t_case.no < NCASES; t_case.no++) {
        const char *diff;

        gen_case();
        run(W_FAST, t_case.head, t_case.cap, &r_fast);
        run(W_SLOW, t_case.head, t_case.cap, &r_slow);
        run(W_PUBLIC, t_case.head, t_case.cap, &r_pub);

        CHECK(!r_fast.broken, "walk_fast set vq->broken");
        CHECK(r_fast.c.iov == t_iov && r_fast.c.iov_cap == t_case.cap,
              "walk_fast changed iov or iov_cap");
        CHECK(r_fast.hit < 0, "walk_fast wrote an iovec at or past iov_cap");
        CHECK(r_slow.hit < 0, "walk_slow wrote an iovec at or past iov_cap");
        if (r_fast.ok) {
            fast++;
            CHECK(r_slow.rc == 0, "walk_fast accepted, walk_slow returned an error");
            CHECK(!r_slow.broken, "walk_fast accepted, walk_slow broke the ring");
            CHECK(r_fast.c.err == 0 && r_fast.c.in_cnt > 0 && r_fast.c.status,
                  "walk_fast accepted a chain without err 0, a writable part and a status");
            diff = chain_diff(&r_fast.c, r_fast.iov, &r_slow.c, r_slow.iov);
            CHECK(!diff, diff);
        }
        /* the public walk ends as the general walk alone does, whatever walk_fast left */
        CHECK(r_pub.rc == r_slow.rc, "vblk_vq_walk and walk_slow returned differently");
        CHECK(r_pub.broken == r_slow.broken, "vblk_vq_walk and walk_slow differ on vq->broken");
        diff = chain_diff(&r_pub.c, r_pub.iov, &r_slow.c, r_slow.iov);
        CHECK(!diff, diff);
        CHECK(r_pub.hit < 0, "vblk_vq_walk wrote an iovec at or past iov_cap");

        if (r_slow.broken)
            broken++;
        if (r_slow.rc == 0 && r_slow.c.err == 0) {
            slow_good++;
            if (!r_fast.ok)
                declined++;
        }
    }
    print_message("walk_fast: %u of %u cases on the fast path (%u%%); walk_slow: %u good "
                  "requests (%u of them declined by walk_fast), %u broke the ring\n",
                  fast, NCASES, fast * 100 / NCASES, slow_good, declined, broken);
    assert_true(fast * 5 > NCASES);    /* more than 20% */
    assert_true(broken * 20 > NCASES); /* the generator reaches the ring errors too */
}

/* ---- directed cases ---- */

static void directed_queue(void)
{
    t_vq.num = 16;
    t_vq.indirect = true;
    t_vq.max_desc = VBLK_SEG_MAX + 2;
    t_vq.max_seg = VBLK_SIZE_MAX;
    t_case.cap = IOV_BIG;
    t_case.no = 0;
    memset(t_g.ring[0].desc, 0, 16u * RING_NUM);
    t_g.ring[0].next_desc = 0;
}

/* Both walkers on head; returns whether walk_fast took it (and checks the slow walk agrees). */
static bool walk_both(uint16_t head)
{
    t_case.head = head;
    run(W_FAST, head, t_case.cap, &r_fast);
    run(W_SLOW, head, t_case.cap, &r_slow);
    assert_false(r_fast.broken);
    assert_true(r_fast.hit < 0);
    if (r_fast.ok) {
        assert_int_equal(r_slow.rc, 0);
        assert_false(r_slow.broken);
        assert_null(chain_diff(&r_fast.c, r_fast.iov, &r_slow.c, r_slow.iov));
    }
    return r_fast.ok;
}

static void test_fast_takes_three_descriptors(void **state)
{
    uint64_t hdr = fg_alloc(&t_g, 16), data = fg_alloc(&t_g, 512), st = fg_alloc(&t_g, 1);
    struct fg_seg s[] = {{hdr, 16, false}, {data, 512, true}, {st, 1, true}};

    directed_queue();
    assert_true(walk_both(fg_chain(&t_g, 0, s, 3)));
    assert_int_equal(r_fast.c.out_cnt, 1);
    assert_int_equal(r_fast.c.in_cnt, 2);
    assert_int_equal(r_fast.c.out_len, 16);
    assert_int_equal(r_fast.c.in_len, 513);
    assert_int_equal(r_fast.c.ndesc, 3);
    assert_ptr_equal(r_fast.iov[0].iov_base, fg_ptr(&t_g, hdr));
    assert_ptr_equal(r_fast.iov[1].iov_base, fg_ptr(&t_g, data));
    assert_ptr_equal(r_fast.c.status, fg_ptr(&t_g, st));
}

static void test_fast_takes_indirect_table(void **state)
{
    uint64_t hdr = fg_alloc(&t_g, 16), data = fg_alloc(&t_g, 4096), st = fg_alloc(&t_g, 1);
    struct fg_seg s[] = {{hdr, 16, false}, {data, 4096, false}, {st, 1, true}};

    directed_queue();
    assert_true(walk_both(fg_chain_indirect(&t_g, 0, s, 3)));
    assert_int_equal(r_fast.c.out_cnt, 2);
    assert_int_equal(r_fast.c.in_cnt, 1);
    assert_int_equal(r_fast.c.out_len, 16 + 4096);
    assert_int_equal(r_fast.c.in_len, 1);
    assert_int_equal(r_fast.c.ndesc, 3);
    assert_ptr_equal(r_fast.c.status, fg_ptr(&t_g, st));
}

static void test_fast_declines_loop(void **state)
{
    uint64_t buf = fg_alloc(&t_g, 16);

    directed_queue();
    fg_desc(&t_g, 0, 0, buf, 16, VRING_DESC_F_NEXT, 1);
    fg_desc(&t_g, 0, 1, buf, 1, VRING_DESC_F_NEXT | VRING_DESC_F_WRITE, 0);
    assert_false(walk_both(0));
    assert_int_equal(r_slow.rc, -EIO);
    assert_true(r_slow.broken);
}

static void test_fast_declines_region_crossing(void **state)
{
    uint64_t hdr = fg_alloc(&t_g, 16), st = fg_alloc(&t_g, 1);
    struct fg_seg s[] = {{hdr, 16, false}, {R0_END - 256, 512, true}, {st, 1, true}};

    directed_queue();
    assert_false(walk_both(fg_chain(&t_g, 0, s, 3)));
    assert_int_equal(r_slow.rc, 0);
    assert_int_equal(r_slow.c.err, 0);
    assert_int_equal(r_slow.c.out_cnt, 1);
    assert_int_equal(r_slow.c.in_cnt, 3); /* the data in two pieces, then the status */
    assert_int_equal(r_slow.iov[1].iov_len, 256);
    assert_int_equal(r_slow.iov[2].iov_len, 256);
    assert_ptr_equal(r_slow.iov[2].iov_base, t_g.r1);
    assert_ptr_equal(r_slow.c.status, fg_ptr(&t_g, st));
}

/* With max_desc over VBLK_VQ_MAX_INDIRECT, the table's own limit is what refuses it. */
static void test_fast_declines_oversized_table(void **state)
{
    uint64_t tbl = fg_alloc(&t_g, 16ull * (VBLK_VQ_MAX_INDIRECT + 1)), st = fg_alloc(&t_g, 1);
    struct vring_desc *t = fg_ptr(&t_g, tbl);

    directed_queue();
    t_vq.max_desc = 0xffff;
    t[0] = (struct vring_desc){.addr = st, .len = 1, .flags = VRING_DESC_F_WRITE};
    fg_desc(&t_g, 0, 0, tbl, 16u * VBLK_VQ_MAX_INDIRECT, VRING_DESC_F_INDIRECT, 0);
    assert_true(walk_both(0)); /* the largest table accepted */
    fg_desc(&t_g, 0, 0, tbl, 16u * (VBLK_VQ_MAX_INDIRECT + 1), VRING_DESC_F_INDIRECT, 0);
    assert_false(walk_both(0));
    assert_int_equal(r_slow.rc, -EIO);
    assert_true(r_slow.broken);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_fast_takes_three_descriptors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fast_takes_indirect_table, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fast_declines_loop, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fast_declines_region_crossing, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fast_declines_oversized_table, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fast_agrees_with_slow, setup, teardown),
    };

    return cmocka_run_group_tests_name("walk_fast", tests, NULL, NULL);
}
