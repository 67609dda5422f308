/* guest_mem.c - see guest_mem.h. */
#include "mem/guest_mem.h"

#include <errno.h>
#include <signal.h>
#include <stdbool.h>
#include <string.h>
#include <linux/magic.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

/* ---- SIGBUS guard: the ranges of every guest mapping, readable from a signal handler ---- */

/* Guest mappings in the whole daemon: every connection may hold 2 * VBLK_MEM_SLOTS_MAX (an old
 * and a new table), and vblkd serves at most 64 exports, so one connection can never take the
 * slots another needs. */
#define GUARD_SLOTS           4096
#define GUARD_SLOTS_PER_OWNER (2 * VBLK_MEM_SLOTS_MAX)

static struct {
    uintptr_t start, end; /* end == 0: free */
    struct vblk_mem_owner *owner;
} guard[GUARD_SLOTS];
static unsigned long guard_hits;
static int guard_efd = -1;

/* Returns false when the owner's or the process's slots are all taken: the caller refuses the
 * region rather than map it unguarded. */
static bool guard_add(struct vblk_mem_owner *o, void *p, uint64_t len)
{
    if (o->slots >= GUARD_SLOTS_PER_OWNER)
        return false;
    for (unsigned i = 0; i < GUARD_SLOTS; i++) {
        if (__atomic_load_n(&guard[i].end, __ATOMIC_ACQUIRE) == 0) {
            __atomic_store_n(&guard[i].owner, o, __ATOMIC_RELAXED);
            __atomic_store_n(&guard[i].start, (uintptr_t)p, __ATOMIC_RELAXED);
            __atomic_store_n(&guard[i].end, (uintptr_t)p + len, __ATOMIC_RELEASE);
            o->slots++;
            return true;
        }
    }
    return false;
}

static void guard_del(struct vblk_mem_owner *o, void *p)
{
    for (unsigned i = 0; i < GUARD_SLOTS; i++) {
        if (__atomic_load_n(&guard[i].end, __ATOMIC_ACQUIRE) &&
            __atomic_load_n(&guard[i].start, __ATOMIC_RELAXED) == (uintptr_t)p) {
            __atomic_store_n(&guard[i].end, 0, __ATOMIC_RELEASE);
            o->slots--;
            return;
        }
    }
}

/*
 * Runs on the thread that touched a lost page (an I/O thread).  Everything here is
 * async-signal-safe except mmap, which is what such guards do: one anonymous mapping over the
 * whole region, so the region faults at most once and the number of mappings stays bounded.
 */
static void guard_handler(int sig, siginfo_t *si, void *uc)
{
    uintptr_t a = (uintptr_t)si->si_addr;

    for (unsigned i = 0; i < GUARD_SLOTS; i++) {
        uintptr_t end = __atomic_load_n(&guard[i].end, __ATOMIC_ACQUIRE);
        uintptr_t start = __atomic_load_n(&guard[i].start, __ATOMIC_RELAXED);

        if (end && a >= start && a < end) {
            struct vblk_mem_owner *o = __atomic_load_n(&guard[i].owner, __ATOMIC_RELAXED);

            if (mmap((void *)start, end - start, PROT_READ | PROT_WRITE,
                     MAP_FIXED | MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0) == MAP_FAILED)
                break;
            __atomic_store_n(&o->lost, 1, __ATOMIC_RELEASE);
            __atomic_add_fetch(&o->hits, 1, __ATOMIC_RELAXED);
            __atomic_add_fetch(&guard_hits, 1, __ATOMIC_RELAXED);
            if (guard_efd >= 0)
                (void)eventfd_write(guard_efd, 1);
            return;
        }
    }
    signal(SIGBUS, SIG_DFL); /* not ours: fault again with the default action */
}

int vblk_mem_sigbus_guard_install(void)
{
    struct sigaction sa = {.sa_sigaction = guard_handler, .sa_flags = SA_SIGINFO | SA_NODEFER};

    if (guard_efd < 0) {
        guard_efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (guard_efd < 0)
            return -errno;
    }
    sigemptyset(&sa.sa_mask);
    return sigaction(SIGBUS, &sa, NULL) < 0 ? -errno : 0;
}

int vblk_mem_guard_fd(void)
{
    return guard_efd;
}

unsigned long vblk_mem_sigbus_count(void)
{
    return __atomic_load_n(&guard_hits, __ATOMIC_RELAXED);
}

bool vblk_mem_owner_lost(struct vblk_mem_owner *o)
{
    return __atomic_exchange_n(&o->lost, 0, __ATOMIC_ACQ_REL) != 0;
}

void *vblk_mem_uva_range(const struct vblk_mem *m, uint64_t uva, uint64_t len)
{
    if (len == 0 || uva + len < uva)
        return NULL;
    for (unsigned i = 0; i < m->nregions; i++) {
        const struct vblk_mem_region *r = &m->r[i];
        uint64_t off = uva - r->uva;

        if (uva >= r->uva && off < r->size && len <= r->size - off)
            return r->host + off;
    }
    return NULL;
}

int vblk_mem_region_check(const struct vblk_mem_desc *d)
{
    if (d->size == 0 || d->size > VBLK_MEM_MAX_BYTES)
        return -EINVAL;
    if (d->gpa + d->size < d->gpa || d->uva + d->size < d->uva ||
        d->mmap_offset + d->size < d->mmap_offset)
        return -EINVAL;
    /* mmap length must fit size_t and off_t arithmetic */
    if (d->mmap_offset + d->size > (uint64_t)INT64_MAX)
        return -EINVAL;
    return 0;
}

const char *vblk_mem_strerror(int err)
{
    switch (err) {
    case -EINVAL:
        return "empty, wrapping or larger than 1 TiB";
    case -EMEDIUMTYPE:
        return "not a file on a memory file system (memfd, tmpfs, hugetlbfs)";
    case -ERANGE:
        return "larger than the file that backs it";
    case -E2BIG:
        return "over the 1 TiB of guest memory one connection may map";
    case -ENOSPC:
        return "too many regions mapped by this connection";
    default:
        return strerror(-err);
    }
}

int vblk_mem_region_map(struct vblk_mem_owner *o, struct vblk_mem_region *out,
                        const struct vblk_mem_desc *d, int fd)
{
    uint64_t page, start, map_size;
    struct statfs sfs;
    struct stat st;
    void *p;

    if (vblk_mem_region_check(d) < 0)
        return -EINVAL;
    if (fstat(fd, &st) < 0 || fstatfs(fd, &sfs) < 0)
        return -errno;
    /* Memory only: a page fault on FUSE would wait for the front-end, on a disk for the disk;
     * a character device (/dev/zero) could hand us anything. */
    if (!S_ISREG(st.st_mode) || (sfs.f_type != TMPFS_MAGIC && sfs.f_type != HUGETLBFS_MAGIC))
        return -EMEDIUMTYPE;
    /* Touching a mapping past the end of its file raises SIGBUS: refuse regions the fd does not
     * back.  A front-end that shrinks the file later is handled by the SIGBUS guard. */
    if ((uint64_t)st.st_size < d->mmap_offset + d->size)
        return -ERANGE;
    /* Map only the pages the region covers (a hugetlbfs file maps in its own page size). */
    page = sfs.f_type == HUGETLBFS_MAGIC ? (uint64_t)sfs.f_bsize : (uint64_t)sysconf(_SC_PAGESIZE);
    if (page == 0 || (page & (page - 1)))
        return -EINVAL;
    start = d->mmap_offset & ~(page - 1);
    map_size = (d->mmap_offset + d->size - start + page - 1) & ~(page - 1);
    if (o->mapped + map_size > 2 * VBLK_MEM_MAX_BYTES)
        return -E2BIG;
    if (o->slots >= GUARD_SLOTS_PER_OWNER)
        return -ENOSPC;
    p = mmap(NULL, map_size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, fd, (off_t)start);
    if (p == MAP_FAILED)
        return -errno;
    if (!guard_add(o, p, map_size)) {
        munmap(p, map_size);
        return -ENOSPC;
    }
    o->mapped += map_size;
    memset(out, 0, sizeof(*out));
    out->gpa = d->gpa;
    out->size = d->size;
    out->uva = d->uva;
    out->mmap_offset = d->mmap_offset;
    out->map = p;
    out->map_size = map_size;
    out->owner = o;
    out->host = (uint8_t *)p + (d->mmap_offset - start);
    return 0;
}

void vblk_mem_region_unmap(struct vblk_mem_region *r)
{
    if (r->map) {
        guard_del(r->owner, r->map);
        munmap(r->map, r->map_size);
        r->owner->mapped -= r->map_size;
    }
    r->map = NULL;
    r->host = NULL;
}

int vblk_mem_add(struct vblk_mem *m, const struct vblk_mem_region *r)
{
    uint64_t total = r->size;

    if (m->nregions >= VBLK_MEM_SLOTS_MAX)
        return -ENOSPC;
    for (unsigned i = 0; i < m->nregions; i++) {
        const struct vblk_mem_region *o = &m->r[i];

        if (r->gpa < o->gpa + o->size && o->gpa < r->gpa + r->size)
            return -EEXIST;
        total += o->size;
    }
    if (total > VBLK_MEM_MAX_BYTES)
        return -E2BIG;
    m->r[m->nregions++] = *r;
    return 0;
}

void vblk_mem_seal(struct vblk_mem *m)
{
    static uint32_t last_gen;

    if (++last_gen == 0)
        last_gen = 1;
    m->gen = last_gen;
}

bool vblk_mem_resident(const struct vblk_mem *m)
{
    uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    unsigned char vec[4096];

    for (unsigned i = 0; i < m->nregions; i++) {
        uintptr_t p = (uintptr_t)m->r[i].host & ~(page - 1);
        uintptr_t end = (uintptr_t)m->r[i].host + m->r[i].size;

        while (p < end) {
            size_t n = (end - p + page - 1) / page;

            if (n > sizeof(vec))
                n = sizeof(vec);
            if (mincore((void *)p, n * page, vec) < 0)
                return false;
            for (size_t k = 0; k < n; k++) {
                if (!(vec[k] & 1))
                    return false;
            }
            p += n * page;
        }
    }
    return true;
}

int vblk_mem_find(const struct vblk_mem *m, const struct vblk_mem_desc *d)
{
    for (unsigned i = 0; i < m->nregions; i++) {
        if (m->r[i].gpa == d->gpa && m->r[i].size == d->size && m->r[i].uva == d->uva)
            return (int)i;
    }
    return -ENOENT;
}

void vblk_mem_unmap_all(struct vblk_mem *m)
{
    for (unsigned i = 0; i < m->nregions; i++)
        vblk_mem_region_unmap(&m->r[i]);
    m->nregions = 0;
}
