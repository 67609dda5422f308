/* chain_check.h - what the two fast-path differential tests share: test_walk_fast.c (the split
 * ring's walk_fast() against walk_slow()) and test_vqp_fast.c (the packed ring's vqp_pop_fast()
 * against vqp_pop_slow()) include it, after cmocka.h and ../../src/virtq/virtq.c.
 *
 * It holds their common state (the fake guest, the queue, the chain and its iovecs, the data and
 * table areas, the random generator's state), the xorshift generator that makes each test's
 * random cases from its own fixed seed, the random guest addresses and lengths, the indirect
 * table's placement, the iovec canaries that catch a write at or past iov_cap, the comparison of
 * two walks' chains, and CHECK().  Only static functions, as virtq.c's are: one copy per test.
 */
#ifndef VBLK_TEST_CHAIN_CHECK_H
#define VBLK_TEST_CHAIN_CHECK_H

#include <stdbool.h>
#include <stdint.h>
#include <string.h>
#include <sys/uio.h>

#include "blk/virtio_blk.h"
#include "fake_guest.h"

#define IOV_BIG   (VBLK_SEG_MAX + VBLK_IOV_SLACK)
#define GUARD     8 /* canaried iovecs past the largest iov_cap */
#define DATA_SIZE (64u << 10)
#define R0_END    (FG_GPA0 + FG_R0_SIZE) /* region 1 starts here, in another host mapping */
#define R1_END    (R0_END + FG_R1_SIZE)

static struct fake_guest t_g;
static struct vblk_vq t_vq;
static struct iovec t_iov[IOV_BIG + GUARD];
static struct vblk_chain t_c;
static uint64_t t_data, t_tbl; /* data area and indirect table area in region 0 */
static uint64_t t_rng;         /* set to the test's seed by its setup() */

/* ---- random numbers ---- */

/* xorshift64*: fixed seed, the same cases on every run */
static uint64_t rnd(void)
{
    t_rng ^= t_rng >> 12;
    t_rng ^= t_rng << 25;
    t_rng ^= t_rng >> 27;
    return t_rng * 0x2545f4914f6cdd1dull;
}

static unsigned rn(unsigned n)
{
    return n ? (unsigned)(rnd() % n) : 0;
}

static bool chance(unsigned pct)
{
    return rn(100) < pct;
}

static unsigned pick(const unsigned *v, unsigned n)
{
    return v[rn(n)];
}

/* ---- descriptor contents ---- */

/* A guest address for a descriptor's contents (nothing is ever read or written there). */
static uint64_t good_addr(uint32_t len)
{
    unsigned k = rn(100);

    if (k < 70 || len >= FG_R1_SIZE)
        return t_data + rn(DATA_SIZE);
    if (k < 85)
        return R0_END + rn(FG_R1_SIZE - len + 1); /* in region 1 */
    if (k < 93)
        return R0_END - len; /* ends exactly where region 0 does */
    return R1_END - len;     /* ends exactly where region 1 does */
}

static uint64_t bad_addr(uint32_t len)
{
    switch (rn(7)) {
    case 0:
    case 1:
    case 2: /* crosses from region 0 into region 1 (when len > 1) */
        return R0_END - 1 - rn(len > 1 ? len - 1 : 1);
    case 3:
        return rn(2) ? 0 : FG_GPA0 - 1 - rn(4096); /* below guest memory */
    case 4:
        return R1_END - rn(len < 4096 ? len : 4096); /* runs off the end of region 1 */
    case 5:
        return R1_END + rn(1u << 20); /* past guest memory */
    default:
        return ~0ull - rn(4096); /* wraps */
    }
}

static uint32_t good_len(void)
{
    static const uint32_t lens[] = {1, 1, 16, 16, 512, 512, 4096, 4096, 1u << 16};
    uint32_t len = rn(4) ? lens[rn(ARRAY_SIZE(lens))] : 1 + rn(8192);

    if (len > t_vq.max_seg)
        len = t_vq.max_seg ? t_vq.max_seg : 1;
    return len;
}

static uint32_t bad_len(void)
{
    switch (rn(6)) {
    case 0:
        return 0;
    case 1:
        return t_vq.max_seg + 1;
    case 2:
        return t_vq.max_seg; /* the largest accepted */
    case 3:
        return 0xffffffffu;
    case 4:
        return 0x80000000u;
    default:
        return VBLK_SIZE_MAX;
    }
}

/* ---- the indirect table (16-byte entries in either ring layout) ---- */

/* Where a table of n entries is planned; where is a number below 100 the caller has drawn. */
static uint64_t table_gpa(unsigned where, unsigned n)
{
    if (where < 60)
        return t_tbl;
    if (where < 65)
        return t_tbl + 8; /* 8-aligned only: accepted */
    if (where < 70)
        return t_tbl + 1 + rn(7); /* misaligned: a ring error */
    if (where < 80)
        return R0_END + 0x1000; /* in region 1 */
    if (where < 90)
        return R0_END - 16ull * n; /* ends where region 0 does */
    return R1_END - 16ull * n;     /* ends where region 1 does */
}

/* A wrong address for the table of n entries that an indirect descriptor (addr, len) names. */
static uint64_t table_addr_broken(uint64_t addr, uint32_t len, unsigned n)
{
    switch (rn(5)) {
    case 0:
        return addr + 1 + rn(7); /* misaligned (not a multiple of 8) */
    case 1:
        return addr + 8; /* 8-aligned only: accepted */
    case 2:
        return R0_END - 16ull * (1 + rn(n)); /* may cross into region 1 */
    case 3:
        return bad_addr(len) & ~15ull;
    default:
        return R1_END - 16ull * rn(n); /* runs off region 1 */
    }
}

/* For which below 4: a wrong length for the indirect descriptor (len) of a table of n entries. */
static uint32_t table_len_broken(unsigned which, uint32_t len, unsigned n)
{
    switch (which) {
    case 0:
        return 0;
    case 1:
        return len + 1 + rn(15); /* not a multiple of 16 */
    case 2:
        return 16u * (VBLK_VQ_MAX_INDIRECT + rn(2));
    default:
        return 16u * rn(n + 8); /* shorter or longer than the table */
    }
}

/* Copy n table entries to tgpa, as much of it as is in guest memory. */
static void table_write(uint64_t tgpa, const void *tbl, unsigned n)
{
    for (unsigned i = 0; i < n; i++) {
        void *p = vblk_mem_gpa_in(&t_g.mem, tgpa + 16ull * i, 16);

        if (p)
            memcpy(p, (const uint8_t *)tbl + 16 * i, 16);
    }
}

/* ---- the chain and its iovecs, poisoned before each walk or pop ---- */

#define CANARY_BASE ((void *)0x5a5a5a5a5a5a5a5aull)
#define CANARY_LEN  0xa5a5a5a5a5a5a5a5ull

static void chain_poison(unsigned cap)
{
    for (unsigned i = 0; i < IOV_BIG + GUARD; i++) {
        t_iov[i].iov_base = CANARY_BASE;
        t_iov[i].iov_len = CANARY_LEN;
    }
    memset(&t_c, 0xa5, sizeof(t_c));
    t_c.iov = t_iov;
    t_c.iov_cap = cap;
}

/* Index of the first iovec at or past cap that was written, or -1. */
static int canary_hit(unsigned cap)
{
    for (unsigned i = cap; i < IOV_BIG + GUARD; i++)
        if (t_iov[i].iov_base != CANARY_BASE || t_iov[i].iov_len != CANARY_LEN)
            return (int)i;
    return -1;
}

/* NULL if chain a (its iovecs copied to a_iov) and chain b are the same, else what differs. */
static const char *chain_diff(const struct vblk_chain *a, const struct iovec *a_iov,
                              const struct vblk_chain *b, const struct iovec *b_iov)
{
    unsigned n;

    if (a->iov != b->iov || a->iov_cap != b->iov_cap)
        return "iov/iov_cap";
    if (a->out_cnt != b->out_cnt)
        return "out_cnt";
    if (a->in_cnt != b->in_cnt)
        return "in_cnt";
    if (a->out_len != b->out_len)
        return "out_len";
    if (a->in_len != b->in_len)
        return "in_len";
    if (a->status != b->status)
        return "status";
    if (a->ndesc != b->ndesc)
        return "ndesc";
    if (a->err != b->err)
        return "err";
    n = a->out_cnt + a->in_cnt;
    if (n > IOV_BIG)
        return "out_cnt + in_cnt over the iovec array";
    for (unsigned i = 0; i < n; i++)
        if (a_iov[i].iov_base != b_iov[i].iov_base || a_iov[i].iov_len != b_iov[i].iov_len)
            return "iov entry";
    return NULL;
}

/* ---- reporting a case ---- */

static void dump_regions(void)
{
    print_message("  regions: [0x%llx, 0x%llx) and [0x%llx, 0x%llx)\n", (unsigned long long)FG_GPA0,
                  (unsigned long long)R0_END, (unsigned long long)R0_END,
                  (unsigned long long)R1_END);
}

/* Unless cond holds: show the case with the includer's dump_case(), fail it as case t_case.no. */
#define CHECK(cond, what)                                                                          \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            dump_case(what);                                                                       \
            fail_msg("case %u: %s", t_case.no, what);                                              \
        }                                                                                          \
    } while (0)

#endif
