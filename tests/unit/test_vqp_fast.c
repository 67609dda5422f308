/* test_vqp_fast.c - the packed ring's fast pop against its general pop.
 *
 * vblk_vqp_pop() tries vqp_pop_fast() (registers only, gives up on anything unusual) and otherwise
 * calls vqp_pop_slow().  The invariant checked here on random ring states and chains: whenever
 * vqp_pop_fast() takes a buffer, vqp_pop_slow() takes it too, without breaking the ring, with the
 * same id, chain, new avail position and chain lengths; vqp_pop_fast() never breaks the ring,
 * never writes an iovec at or past iov_cap, and when it gives up it leaves the queue and the
 * chain as they were; and vblk_vqp_pop() always ends as vqp_pop_slow() alone would.  The ring
 * states are those vblk_vqp_start() accepts: 0 to num descriptors in flight.
 *
 * The pop functions are static: this file includes virtq.c itself (the test program's copy of
 * virtq.c's external symbols is the one linked; libvblk's virtq.o is never pulled in).
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
#include <stdlib.h>
#include <string.h>

#include "../../src/virtq/virtq.c"

#include "blk/virtio_blk.h"
#include "fake_guest.h"
#include "chain_check.h"

#define NCASES    20000
#define SEED      0x853c49e6748fea9bull
#define TBL_MAX   64
#define TBL_AREA  (TBL_MAX + 4) /* entries filled with garbage at t_tbl before each case */
#define CHAIN_MAX 24
#define NUM_MAX   256
#define RING_NUM  1024 /* the ring laid out in guest memory; each case uses its first vq.num */
#define ID_POISON 0xbeef
#define DUMP_MAX  40 /* ring descriptors and table entries shown by dump_case() */

static struct vblk_vq t_vq0; /* the case's starting state, restored before each pop */

static int setup(void **state)
{
    struct fg_ring *r;

    fg_init(&t_g, 1, RING_NUM, true);
    fgp_init(&t_g, 0);
    r = &t_g.ring[0];
    memset(&t_vq, 0, sizeof(t_vq));
    if (vblk_vqp_setup(&t_vq, &t_g.mem, RING_NUM, r->desc_uva, r->avail_uva, r->used_uva) < 0)
        return -1;
    t_vq.indirect = true;
    t_vq.max_desc = VBLK_SEG_MAX + 2;
    t_vq.max_seg = VBLK_SIZE_MAX;
    if (vblk_vqp_start(&t_vq, fgp_base(&t_g, 0)) < 0)
        return -1;
    t_data = fg_alloc(&t_g, DATA_SIZE);
    t_tbl = fg_alloc(&t_g, 16ull * TBL_AREA);
    t_rng = SEED;
    return 0;
}

static int teardown(void **state)
{
    fg_fini(&t_g);
    return 0;
}

/* ---- one pop of each kind, from the same starting state ---- */

struct result {
    bool ok; /* vqp_pop_fast: took the buffer; otherwise the return value is rc */
    int rc;
    bool broken;
    uint16_t id;
    struct vblk_chain c;
    struct iovec iov[IOV_BIG];
    int hit;         /* canary_hit() */
    bool chain_kept; /* the chain's fields are as poisoned (only iovecs may have been written) */
    struct vblk_vq vq;
};

enum popper { P_FAST, P_SLOW, P_PUBLIC };

static void run(enum popper p, unsigned cap, struct result *res)
{
    struct vblk_chain before;
    uint16_t id = ID_POISON;

    memcpy(&t_vq, &t_vq0, sizeof(t_vq));
    chain_poison(cap);
    memcpy(&before, &t_c, sizeof(before));
    switch (p) {
    case P_FAST:
        res->ok = vqp_pop_fast(&t_vq, &id, &t_c);
        res->rc = 0;
        break;
    case P_SLOW:
        res->rc = vqp_pop_slow(&t_vq, &id, &t_c);
        res->ok = res->rc == 0;
        break;
    case P_PUBLIC:
        res->rc = vblk_vqp_pop(&t_vq, &id, &t_c);
        res->ok = res->rc == 0;
        break;
    }
    res->broken = t_vq.broken;
    res->id = id;
    res->c = t_c;
    memcpy(res->iov, t_iov, sizeof(res->iov));
    res->hit = canary_hit(cap);
    res->chain_kept = memcmp(&before, &t_c, sizeof(before)) == 0;
    memcpy(&res->vq, &t_vq, sizeof(res->vq));
}

/* NULL if the queues a and b are in the same state, else what differs. */
static const char *vq_diff(const struct vblk_vq *a, const struct vblk_vq *b)
{
    if (a->broken != b->broken)
        return "broken";
    if (a->avail_pos != b->avail_pos)
        return "avail_pos";
    if (a->avail_wrap != b->avail_wrap)
        return "avail_wrap";
    if (memcmp(a->chain_len, b->chain_len, sizeof(a->chain_len)))
        return "chain_len[]";
    if (memcmp(a, b, sizeof(*a)))
        return "another vq field";
    return NULL;
}

/* ---- random cases ---- */

struct tcase {
    unsigned no;
    unsigned cap;
    unsigned in_flight;
};

static struct tcase t_case;
static struct result r_fast, r_slow, r_pub;

static void dump_desc(const char *where, unsigned i, const struct vring_packed_desc *d)
{
    print_message("  %s[%u] addr 0x%llx len %u id %u flags %s%s%s%s%s(0x%x)\n", where, i,
                  (unsigned long long)d->addr, d->len, d->id,
                  d->flags & VRING_DESC_F_NEXT ? "NEXT " : "",
                  d->flags & VRING_DESC_F_WRITE ? "WRITE " : "",
                  d->flags & VRING_DESC_F_INDIRECT ? "INDIRECT " : "",
                  d->flags & PF_AVAIL ? "AVAIL " : "", d->flags & PF_USED ? "USED " : "", d->flags);
}

static void dump_result(const char *name, const struct result *r)
{
    print_message("  %s: ok %d rc %d broken %d id %u err %d out %u/%llu in %u/%llu ndesc %u "
                  "status %p avail %u/%d\n",
                  name, r->ok, r->rc, r->broken, r->id, r->c.err, r->c.out_cnt,
                  (unsigned long long)r->c.out_len, r->c.in_cnt, (unsigned long long)r->c.in_len,
                  r->c.ndesc, (void *)r->c.status, r->vq.avail_pos, r->vq.avail_wrap);
}

static void dump_case(const char *what)
{
    const struct vblk_vq *q = &t_vq0;
    const struct vring_packed_desc *ring = t_g.ring[0].pdesc;
    const struct vring_packed_desc *h = &ring[q->avail_pos];
    unsigned shown = 0;

    print_message("case %u: %s\n", t_case.no, what);
    print_message("  num %u indirect %d max_desc %u max_seg %u iov_cap %u\n", q->num, q->indirect,
                  q->max_desc, q->max_seg, t_case.cap);
    print_message("  avail %u/%d used %u/%d: %u in flight, room for %u\n", q->avail_pos,
                  q->avail_wrap, q->used_pos, q->used_wrap, t_case.in_flight,
                  q->num - t_case.in_flight);
    dump_regions();
    print_message("  busy ids:");
    for (unsigned i = 0; i < q->num; i++)
        if (q->chain_len[i] && shown++ < DUMP_MAX)
            print_message(" %u(%u)", i, q->chain_len[i]);
    print_message("%s\n", shown > DUMP_MAX ? " ..." : shown ? "" : " none");
    for (unsigned i = 0, pos = q->avail_pos; i < q->num && i < DUMP_MAX; i++) {
        dump_desc("ring", pos, &ring[pos]);
        if (++pos == q->num)
            pos = 0;
    }
    if (h->flags & VRING_DESC_F_INDIRECT) {
        unsigned n = h->len / 16;

        for (unsigned i = 0; i < n && i < DUMP_MAX; i++) {
            const uint8_t *t = vblk_mem_gpa_in(&t_g.mem, h->addr + 16ull * i, 16);
            struct vring_packed_desc e;

            if (!t)
                break;
            memcpy(&e, t, sizeof(e));
            dump_desc("table", i, &e);
        }
    }
    dump_result("fast  ", &r_fast);
    dump_result("slow  ", &r_slow);
    dump_result("public", &r_pub);
}

/* NEXT 1, WRITE 2, INDIRECT 4, and the AVAIL/USED bits (which pop does not look at) */
static uint16_t rand_flags(void)
{
    return (uint16_t)(rn(8) | (rn(4) << VRING_PACKED_DESC_F_AVAIL));
}

static void garbage_desc(struct vring_packed_desc *d)
{
    uint32_t len = chance(50) ? good_len() : bad_len();

    d->addr = chance(60) ? good_addr(len) : bad_addr(len);
    d->len = len;
    d->id = (uint16_t)(chance(80) ? rn(t_vq.num + 4) : rnd());
    d->flags = rand_flags();
}

/*
 * Lay out one random case: the queue's configuration and positions in t_vq0, the ring in guest
 * memory, and at avail_pos a chain (direct, possibly around the end of the ring) or one indirect
 * descriptor and its table; its descriptors are d[0..k).  Then break it, sometimes.
 */
static void gen_case(void)
{
    static const unsigned small_desc[] = {0, 1, 2, 3, 4, 6, VBLK_SEG_MAX + 2, 0xffff};
    static const unsigned small_seg[] = {0, 1, 16, 512, 4096, VBLK_SIZE_MAX};
    static const unsigned small_cap[] = {0, 1, 2, 3, 4, 8, IOV_BIG};
    struct fg_ring *r = &t_g.ring[0];
    struct vring_packed_desc *ring = r->pdesc;
    struct vring_packed_desc *d[TBL_MAX], *head_desc = NULL;
    struct vring_packed_desc tbl[TBL_MAX]; /* the indirect table, copied to tgpa at the end */
    struct vring_packed_desc area[TBL_AREA];
    unsigned k, nread, n = 0, num, in_flight, busy_mode, lin_used;
    uint16_t id, avail_pos, used_pos;
    bool ind, avail_wrap, used_wrap, id_busy = false;
    uint64_t tgpa = 0;

    /* the queue */
    num = chance(50) ? 1u << rn(9) : 1 + rn(NUM_MAX);
    if (chance(3))
        num = 1 + rn(3);
    if (chance(70)) { /* as virtio_blk.c sets it up */
        t_vq.max_desc = VBLK_SEG_MAX + 2;
        t_vq.max_seg = VBLK_SIZE_MAX;
        t_case.cap = IOV_BIG;
        t_vq.indirect = true;
    } else {
        t_vq.max_desc = (uint16_t)pick(small_desc, ARRAY_SIZE(small_desc));
        t_vq.max_seg = pick(small_seg, ARRAY_SIZE(small_seg));
        t_case.cap = chance(80) ? pick(small_cap, ARRAY_SIZE(small_cap)) : rn(IOV_BIG + 1);
        t_vq.indirect = chance(80);
    }
    if (chance(5))
        t_vq.indirect = false;
    t_vq.num = (uint16_t)num; /* for garbage_desc() and good_len(); set up for real below */
    for (unsigned i = 0; i < num; i++)
        garbage_desc(&ring[i]);
    for (unsigned i = 0; i < TBL_AREA; i++)
        garbage_desc(&area[i]);
    table_write(t_tbl, area, TBL_AREA);

    /* a good buffer: nread readable descriptors, then at least one writable */
    ind = chance(40);
    k = chance(85) ? 1 + rn(6) : 1 + rn(ind ? TBL_MAX : CHAIN_MAX);
    if (!ind && k > num)
        k = num;
    nread = rn(k);
    id = (uint16_t)rn(num);
    avail_pos = (uint16_t)rn(num);
    avail_wrap = rn(2);

    if (!ind) {
        /* k ring descriptors from avail_pos, around the end of the ring */
        for (unsigned i = 0; i < k; i++)
            d[i] = &ring[(avail_pos + i) % num];
    } else {
        n = k;
        tgpa = table_gpa(rn(100), n);
        for (unsigned i = 0; i < n; i++)
            d[i] = &tbl[i];
        head_desc = &ring[avail_pos];
        head_desc->addr = tgpa;
        head_desc->len = 16u * n;
        head_desc->flags = (uint16_t)(VRING_DESC_F_INDIRECT | (rn(4) << VRING_PACKED_DESC_F_AVAIL));
        head_desc->id = id;
    }
    for (unsigned i = 0; i < k; i++) {
        d[i]->len = good_len();
        d[i]->addr = good_addr(d[i]->len);
        d[i]->flags = (uint16_t)((i >= nread ? VRING_DESC_F_WRITE : 0) |
                                 (!ind && i + 1 < k ? VRING_DESC_F_NEXT : 0) |
                                 (rn(4) << VRING_PACKED_DESC_F_AVAIL));
        if (ind && chance(30))
            d[i]->flags |= VRING_DESC_F_NEXT; /* ignored in a table */
        /* only the last descriptor's id counts in a chain, none in a table */
        d[i]->id = !ind && i + 1 == k ? id : (uint16_t)rnd();
    }

    /* descriptors already in flight: mostly so that the chain fits */
    switch (rn(10)) {
    case 0:
    case 1:
    case 2:
        in_flight = 0;
        break;
    case 3:
        in_flight = num; /* a full ring */
        break;
    case 4:
        in_flight = ind ? num - 1 : num - k; /* exactly full after this buffer */
        break;
    case 5:
        in_flight = rn(num + 1); /* anything */
        break;
    default:
        in_flight = rn(ind ? num : num - k + 1);
        break;
    }
    busy_mode = rn(4);

    for (unsigned m = chance(45) ? 1 + rn(3) : 0; m > 0; m--) {
        struct vring_packed_desc *x = d[rn(k)];

        switch (rn(ind ? 12 : 10)) {
        case 0: /* a flag */
            x->flags ^= (uint16_t)(1u << rn(3));
            break;
        case 1:
            if (ind) { /* NEXT and an id in the table: ignored */
                x->flags |= VRING_DESC_F_NEXT;
                x->id = (uint16_t)rnd();
            } else { /* every descriptor NEXT: longer than the room, or than the ring */
                for (unsigned i = 0; i < num; i++)
                    ring[i].flags |= VRING_DESC_F_NEXT;
            }
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
        case 5: /* the buffer id: busy, or out of range */
            if (chance(60)) {
                id_busy = true;
            } else {
                id = (uint16_t)(chance(50) ? num + rn(4) : 0xffff - rn(4));
                if (ind)
                    head_desc->id = id;
                else
                    d[k - 1]->id = id;
            }
            break;
        case 6: /* an indirect descriptor inside the chain (or the table) */
            x->flags |= VRING_DESC_F_INDIRECT;
            if (chance(50)) {
                x->addr = t_tbl;
                x->len = 16u * (1 + rn(4));
            }
            break;
        case 7: /* no room for the chain */
            in_flight = ind ? num : num - rn(k);
            break;
        case 8: /* the chain meets the end of the list: NEXT off in its middle (direct) */
            if (!ind && k > 1) {
                unsigned j = rn(k - 1);

                d[j]->flags &= (uint16_t)~VRING_DESC_F_NEXT;
                d[j]->id = chance(70) ? id : (uint16_t)rn(num + 2);
            } else {
                x->flags ^= VRING_DESC_F_WRITE;
            }
            break;
        case 9: /* the queue's limits */
            switch (rn(4)) {
            case 0:
                t_vq.indirect = false;
                break;
            case 1:
                t_vq.max_desc = (uint16_t)rn(k + 1);
                break;
            case 2:
                t_vq.max_seg = x->len - rn(2);
                break;
            default:
                t_case.cap = rn(k + 2);
                break;
            }
            break;
        case 10: /* the table's address */
            head_desc->addr = table_addr_broken(head_desc->addr, head_desc->len, n);
            break;
        default: { /* the table's descriptor: length, NEXT, WRITE */
            unsigned w = rn(7);

            if (w < 4)
                head_desc->len = table_len_broken(w, head_desc->len, n);
            else if (w == 4)
                head_desc->len = 16u * (t_vq.max_desc + rn(2)); /* at or over max_desc */
            else if (w == 5)
                head_desc->flags |= VRING_DESC_F_NEXT;
            else
                head_desc->flags |= VRING_DESC_F_WRITE;
            break;
        }
        }
    }
    /* the table where the buffer was planned, even if its descriptor now points elsewhere */
    table_write(tgpa, tbl, n);

    /* the queue's positions, through vblk_vqp_start (which checks them) */
    lin_used = (avail_pos + (avail_wrap ? 0u : num) + 2u * num - in_flight) % (2u * num);
    used_wrap = lin_used < num;
    used_pos = (uint16_t)(used_wrap ? lin_used : lin_used - num);
    t_case.in_flight = in_flight;
    assert_int_equal(
        vblk_vqp_setup(&t_vq, &t_g.mem, (uint16_t)num, r->desc_uva, r->avail_uva, r->used_uva), 0);
    assert_int_equal(vblk_vqp_start(&t_vq, (uint32_t)avail_pos | (uint32_t)avail_wrap << 15 |
                                               (uint32_t)used_pos << 16 |
                                               (uint32_t)used_wrap << 31),
                     0);
    /* used 0 with wrap counter 0 reads as "no used position" in a vring base: set it here */
    t_vq.used_pos = used_pos;
    t_vq.used_wrap = used_wrap;
    assert_int_equal(
        dist(&t_vq, lin(&t_vq, used_pos, used_wrap), lin(&t_vq, avail_pos, avail_wrap)), in_flight);
    /* the ids of the buffers in flight (their chain lengths need not add up: pop never looks) */
    for (unsigned i = 0; i < num; i++) {
        bool busy = busy_mode == 1 ? chance(10) : busy_mode == 2 ? chance(60) : false;

        t_vq.chain_len[i] = busy ? (uint16_t)(1 + rn(num)) : 0;
    }
    if (busy_mode == 3)
        for (unsigned i = 0, b = rn(4); i < b; i++)
            t_vq.chain_len[rn(num)] = (uint16_t)(1 + rn(num));
    if (id < num)
        t_vq.chain_len[id] = id_busy ? (uint16_t)(1 + rn(num)) : 0;
    memcpy(&t_vq0, &t_vq, sizeof(t_vq0));
}

/* Steps from the starting avail position to q's. */
static unsigned avail_moved(const struct vblk_vq *q)
{
    return dist(&t_vq0, lin(&t_vq0, t_vq0.avail_pos, t_vq0.avail_wrap),
                lin(&t_vq0, q->avail_pos, q->avail_wrap));
}

/* Everything checked on one case, whose state is in t_vq0 and guest memory. */
static void check_case(void)
{
    const char *diff;

    run(P_FAST, t_case.cap, &r_fast);
    run(P_SLOW, t_case.cap, &r_slow);
    run(P_PUBLIC, t_case.cap, &r_pub);

    CHECK(!r_fast.broken, "vqp_pop_fast set vq->broken");
    CHECK(r_fast.c.iov == t_iov && r_fast.c.iov_cap == t_case.cap,
          "vqp_pop_fast changed iov or iov_cap");
    CHECK(r_fast.hit < 0, "vqp_pop_fast wrote an iovec at or past iov_cap");
    CHECK(r_slow.hit < 0, "vqp_pop_slow wrote an iovec at or past iov_cap");
    CHECK(r_pub.hit < 0, "vblk_vqp_pop wrote an iovec at or past iov_cap");
    if (r_fast.ok) {
        CHECK(r_slow.rc == 0, "vqp_pop_fast took the buffer, vqp_pop_slow returned an error");
        CHECK(!r_slow.broken, "vqp_pop_fast took the buffer, vqp_pop_slow broke the ring");
        CHECK(r_fast.c.err == 0 && r_fast.c.in_cnt > 0 && r_fast.c.status,
              "vqp_pop_fast took a buffer without err 0, a writable part and a status");
        CHECK(r_fast.id == r_slow.id, "vqp_pop_fast and vqp_pop_slow differ on the buffer id");
        diff = chain_diff(&r_fast.c, r_fast.iov, &r_slow.c, r_slow.iov);
        CHECK(!diff, diff);
        diff = vq_diff(&r_fast.vq, &r_slow.vq);
        CHECK(!diff, diff);
    } else {
        CHECK(r_fast.chain_kept, "vqp_pop_fast gave up but changed the chain's fields");
        CHECK(r_fast.id == ID_POISON, "vqp_pop_fast gave up but wrote *id");
        diff = vq_diff(&r_fast.vq, &t_vq0);
        CHECK(!diff, diff);
    }
    /* the general pop's own bookkeeping */
    if (r_slow.rc == 0) {
        CHECK(!r_slow.broken, "vqp_pop_slow returned 0 and broke the ring");
        CHECK(r_slow.id < t_vq0.num && t_vq0.chain_len[r_slow.id] == 0,
              "vqp_pop_slow took a bad or busy id");
        CHECK(r_slow.vq.chain_len[r_slow.id] == avail_moved(&r_slow.vq) &&
                  avail_moved(&r_slow.vq) >= 1 &&
                  t_case.in_flight + avail_moved(&r_slow.vq) <= t_vq0.num,
              "vqp_pop_slow's chain length and avail position disagree");
    } else {
        CHECK(r_slow.rc == -EIO && r_slow.broken, "vqp_pop_slow failed without breaking the ring");
        CHECK(r_slow.vq.avail_pos == t_vq0.avail_pos && r_slow.vq.avail_wrap == t_vq0.avail_wrap,
              "vqp_pop_slow broke the ring and moved avail_pos");
    }
    /* the public pop ends as the general pop alone does, whatever vqp_pop_fast left */
    CHECK(r_pub.rc == r_slow.rc, "vblk_vqp_pop and vqp_pop_slow returned differently");
    CHECK(r_pub.id == r_slow.id, "vblk_vqp_pop and vqp_pop_slow differ on the buffer id");
    diff = chain_diff(&r_pub.c, r_pub.iov, &r_slow.c, r_slow.iov);
    CHECK(!diff, diff);
    diff = vq_diff(&r_pub.vq, &r_slow.vq);
    CHECK(!diff, diff);
}

static void test_fast_agrees_with_slow(void **state)
{
    unsigned fast = 0, slow_good = 0, declined = 0, broken = 0, failed = 0, fast_ind = 0;

    for (t_case.no = 0; t_case.no < NCASES; t_case.no++) {
        gen_case();
        check_case();
        if (r_fast.ok) {
            fast++;
            if (t_g.ring[0].pdesc[t_vq0.avail_pos].flags & VRING_DESC_F_INDIRECT)
                fast_ind++;
        }
        if (r_slow.broken)
            broken++;
        else if (r_slow.c.err)
            failed++;
        else if (r_slow.c.status) {
            slow_good++;
            if (!r_fast.ok)
                declined++;
        }
    }
    print_message("vqp_pop_fast: %u of %u cases on the fast path (%u%%, %u indirect); "
                  "vqp_pop_slow: %u good requests (%u of them declined by vqp_pop_fast), "
                  "%u failed requests, %u broke the ring\n",
                  fast, NCASES, fast * 100 / NCASES, fast_ind, slow_good, declined, failed, broken);
    assert_true(fast * 5 >= NCASES);      /* at least 20% */
    assert_true(fast_ind * 20 >= NCASES); /* both kinds of buffer */
    assert_true(fast - fast_ind >= NCASES / 20);
    assert_true(broken * 20 >= NCASES); /* the generator reaches the ring errors */
    assert_true(failed * 20 >= NCASES); /* and the request errors */
}

/* ---- directed cases ---- */

/* A fresh ring of num entries whose driver and device are both at pos (wrap counter 1). */
static void directed_queue(uint16_t num, uint16_t pos)
{
    struct fg_ring *r = &t_g.ring[0];

    fgp_init(&t_g, 0);
    r->num = num;
    r->pnext = r->pused = pos;
    assert_int_equal(vblk_vqp_setup(&t_vq, &t_g.mem, num, r->desc_uva, r->avail_uva, r->used_uva),
                     0);
    t_vq.indirect = true;
    t_vq.max_desc = VBLK_SEG_MAX + 2;
    t_vq.max_seg = VBLK_SIZE_MAX;
    assert_int_equal(vblk_vqp_start(&t_vq, fgp_base(&t_g, 0)), 0);
    t_case.cap = IOV_BIG;
    t_case.no = 0;
    t_case.in_flight = 0;
}

/* All three pops on the queue's state; returns whether vqp_pop_fast took the buffer. */
static bool pop_all(void)
{
    assert_int_equal(vblk_vq_avail(&t_vq), 1);
    t_case.in_flight = dist(&t_vq, lin(&t_vq, t_vq.used_pos, t_vq.used_wrap),
                            lin(&t_vq, t_vq.avail_pos, t_vq.avail_wrap));
    memcpy(&t_vq0, &t_vq, sizeof(t_vq0));
    check_case();
    return r_fast.ok;
}

static void test_fast_takes_indirect_request(void **state)
{
    uint64_t hdr = fg_alloc(&t_g, 16), data = fg_alloc(&t_g, 4096), st = fg_alloc(&t_g, 1);
    struct fg_seg s[] = {{hdr, 16, false}, {data, 4096, true}, {st, 1, true}};

    directed_queue(16, 0);
    fgp_post(&t_g, 0, fgp_chain_indirect(&t_g, 0, s, 3, 5));
    assert_true(pop_all());
    assert_int_equal(r_fast.id, 5);
    assert_int_equal(r_fast.c.err, 0);
    assert_int_equal(r_fast.c.out_cnt, 1);
    assert_int_equal(r_fast.c.in_cnt, 2);
    assert_int_equal(r_fast.c.out_len, 16);
    assert_int_equal(r_fast.c.in_len, 4097);
    assert_int_equal(r_fast.c.ndesc, 3);
    assert_ptr_equal(r_fast.iov[0].iov_base, fg_ptr(&t_g, hdr));
    assert_ptr_equal(r_fast.iov[1].iov_base, fg_ptr(&t_g, data));
    assert_ptr_equal(r_fast.c.status, fg_ptr(&t_g, st));
    assert_int_equal(r_fast.vq.avail_pos, 1); /* one ring descriptor */
    assert_true(r_fast.vq.avail_wrap);
    assert_int_equal(r_fast.vq.chain_len[5], 1);
}

/* A direct chain of three around the end of the ring (a power of two and an odd size). */
static void test_fast_takes_chain_around_the_end(void **state)
{
    static const uint16_t nums[] = {16, 5};
    uint64_t hdr = fg_alloc(&t_g, 16), data = fg_alloc(&t_g, 512), st = fg_alloc(&t_g, 1);
    struct fg_seg s[] = {{hdr, 16, false}, {data, 512, true}, {st, 1, true}};

    for (unsigned i = 0; i < ARRAY_SIZE(nums); i++) {
        uint16_t num = nums[i];

        directed_queue(num, (uint16_t)(num - 2)); /* positions num - 2, num - 1, 0 */
        fgp_post(&t_g, 0, fgp_chain(&t_g, 0, s, 3, 3));
        assert_true(pop_all());
        assert_int_equal(r_fast.id, 3);
        assert_int_equal(r_fast.c.out_cnt, 1);
        assert_int_equal(r_fast.c.in_cnt, 2);
        assert_int_equal(r_fast.c.in_len, 513);
        assert_int_equal(r_fast.c.ndesc, 3);
        assert_ptr_equal(r_fast.c.status, fg_ptr(&t_g, st));
        assert_int_equal(r_fast.vq.avail_pos, 1);
        assert_false(r_fast.vq.avail_wrap); /* the driver's next lap */
        assert_int_equal(r_fast.vq.chain_len[3], 3);
    }
}

static void test_fast_declines_busy_id(void **state)
{
    uint64_t hdr = fg_alloc(&t_g, 16), st = fg_alloc(&t_g, 1);
    struct fg_seg s[] = {{hdr, 16, false}, {st, 1, true}};

    directed_queue(16, 0);
    fgp_post(&t_g, 0, fgp_chain(&t_g, 0, s, 2, 4));
    t_vq.chain_len[4] = 2; /* id 4 is in flight already */
    assert_false(pop_all());
    assert_int_equal(r_slow.rc, -EIO);
    assert_true(r_slow.broken);
    assert_int_equal(r_pub.rc, -EIO);

    directed_queue(16, 0); /* and an id out of the ring */
    fgp_post(&t_g, 0, fgp_chain_indirect(&t_g, 0, s, 2, 16));
    assert_false(pop_all());
    assert_int_equal(r_slow.rc, -EIO);
    assert_true(r_slow.broken);
}

/* In a table, NEXT and the ids are ignored: the table is used whole, the id is the ring's. */
static void test_fast_ignores_next_in_table(void **state)
{
    uint64_t hdr = fg_alloc(&t_g, 16), st = fg_alloc(&t_g, 1), t = fg_alloc(&t_g, 48);
    uint64_t data = fg_alloc(&t_g, 512);
    struct vring_packed_desc *e = fg_ptr(&t_g, t);

    directed_queue(16, 7);
    e[0] = (struct vring_packed_desc){
        .addr = hdr, .len = 16, .id = 0xffff, .flags = VRING_DESC_F_NEXT};
    e[1] = (struct vring_packed_desc){
        .addr = data, .len = 512, .id = 9, .flags = VRING_DESC_F_NEXT | VRING_DESC_F_WRITE};
    e[2] = (struct vring_packed_desc){
        .addr = st, .len = 1, .id = 9, .flags = VRING_DESC_F_NEXT | VRING_DESC_F_WRITE};
    t_vq.chain_len[9] = 1; /* busy, but only the ring descriptor's id counts */
    fgp_desc(&t_g, 0, 7, t, 48, 2,
             (uint16_t)(fgp_avail_bits(&t_g, 0, true) | VRING_DESC_F_INDIRECT));
    assert_true(pop_all());
    assert_int_equal(r_fast.id, 2);
    assert_int_equal(r_fast.c.err, 0);
    assert_int_equal(r_fast.c.ndesc, 3);
    assert_int_equal(r_fast.c.in_len, 513);
    assert_ptr_equal(r_fast.c.status, fg_ptr(&t_g, st));
    assert_int_equal(r_fast.vq.avail_pos, 8);
    assert_int_equal(r_fast.vq.chain_len[2], 1);
}

/* A chain that exactly fills the room left is taken; one descriptor more breaks the ring. */
static void test_fast_room_left(void **state)
{
    uint64_t hdr = fg_alloc(&t_g, 16), st = fg_alloc(&t_g, 1);
    struct fg_seg s[] = {{hdr, 16, false}, {hdr, 16, false}, {st, 1, true}};

    for (unsigned extra = 0; extra < 2; extra++) {
        struct fg_ring *r = &t_g.ring[0];

        directed_queue(8, 0);
        /* 5 (or 6) descriptors in flight: the device's used position is behind the driver's */
        r->pnext = (uint16_t)(5 + extra);
        assert_int_equal(vblk_vqp_start(&t_vq, fgp_base(&t_g, 0)), 0);
        fgp_post(&t_g, 0, fgp_chain(&t_g, 0, s, 3, 1));
        if (!extra) {
            assert_true(pop_all());
            assert_int_equal(r_fast.vq.avail_pos, 0);
            assert_false(r_fast.vq.avail_wrap);
        } else {
            assert_false(pop_all());
            assert_int_equal(r_slow.rc, -EIO);
            assert_true(r_slow.broken);
        }
    }
}

/*
 * More in flight than the ring holds (only a caller bug gets there: a push of an id never
 * popped still moves the used position): the fast path leaves it to the slow one, which breaks
 * the ring.
 */
static void test_fast_declines_overfull_ring(void **state)
{
    uint64_t hdr = fg_alloc(&t_g, 16), st = fg_alloc(&t_g, 1);
    struct fg_seg s[] = {{hdr, 16, false}, {st, 1, true}};

    directed_queue(16, 0);
    vblk_vqp_push(&t_vq, 3, 0); /* id 3 was never popped: 31 "in flight" */
    fgp_post(&t_g, 0, fgp_chain(&t_g, 0, s, 2, 5));
    assert_false(pop_all());
    assert_int_equal(r_slow.rc, -EIO);
    assert_true(r_slow.broken);
    assert_int_equal(r_pub.rc, -EIO);
}

/*
 * With max_desc and iov_cap over VBLK_VQ_MAX_INDIRECT, the table's own limit is what refuses it
 * (the random cases' iov_cap is too small to reach it).  A table is used whole: every entry counts.
 */
static void test_fast_declines_oversized_table(void **state)
{
    unsigned big = VBLK_VQ_MAX_INDIRECT + 1;
    uint64_t tbl = fg_alloc(&t_g, 16ull * big), hdr = fg_alloc(&t_g, 16), st = fg_alloc(&t_g, 1);
    struct vring_packed_desc *e = fg_ptr(&t_g, tbl);
    struct iovec *v = calloc(big + 1, sizeof(*v));
    struct vblk_chain fc, sc = {.iov = v, .iov_cap = big + 1};

    assert_non_null(v);
    e[0] = (struct vring_packed_desc){.addr = hdr, .len = 16};
    for (unsigned i = 1; i < big; i++)
        e[i] = (struct vring_packed_desc){.addr = st, .len = 1, .flags = VRING_DESC_F_WRITE};
    for (unsigned extra = 0; extra < 2; extra++) {
        uint16_t fid = ID_POISON, sid = ID_POISON;
        bool fast;
        int rc;

        directed_queue(16, 0);
        t_vq.max_desc = 0xffff;
        fgp_desc(&t_g, 0, 0, tbl, 16u * (VBLK_VQ_MAX_INDIRECT + extra), 6,
                 (uint16_t)(fgp_avail_bits(&t_g, 0, true) | VRING_DESC_F_INDIRECT));
        memcpy(&t_vq0, &t_vq, sizeof(t_vq0));
        fc = sc;
        fast = vqp_pop_fast(&t_vq, &fid, &fc);
        assert_false(t_vq.broken);
        memcpy(&t_vq, &t_vq0, sizeof(t_vq));
        rc = vqp_pop_slow(&t_vq, &sid, &sc);
        if (!extra) { /* the largest table accepted */
            assert_true(fast);
            assert_int_equal(rc, 0);
            assert_false(t_vq.broken);
            assert_int_equal(fid, 6);
            assert_int_equal(sid, 6);
            assert_int_equal(sc.err, 0);
            assert_int_equal(fc.ndesc, VBLK_VQ_MAX_INDIRECT);
            assert_int_equal(sc.ndesc, VBLK_VQ_MAX_INDIRECT);
            assert_int_equal(fc.out_cnt, sc.out_cnt);
            assert_int_equal(fc.in_cnt, sc.in_cnt);
            assert_int_equal(fc.in_len, VBLK_VQ_MAX_INDIRECT - 1);
            assert_int_equal(sc.in_len, VBLK_VQ_MAX_INDIRECT - 1);
            assert_ptr_equal(fc.status, sc.status);
            assert_ptr_equal(sc.status, fg_ptr(&t_g, st));
        } else {
            assert_false(fast);
            assert_int_equal(fid, ID_POISON);
            assert_int_equal(rc, -EIO);
            assert_true(t_vq.broken);
        }
    }
    free(v);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_fast_takes_indirect_request, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fast_takes_chain_around_the_end, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fast_declines_busy_id, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fast_ignores_next_in_table, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fast_room_left, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fast_declines_overfull_ring, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fast_declines_oversized_table, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fast_agrees_with_slow, setup, teardown),
    };

    return cmocka_run_group_tests_name("vqp_fast", tests, NULL, NULL);
}
