/* guest_mem.c - see guest_mem.h. */
#include "vhost/guest_mem.h"

#include <errno.h>
#include <signal.h>
#include <stdbool.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- SIGBUS guard: the ranges of every guest mapping, readable from a signal handler ---- */

#define GUARD_SLOTS 1024 /* guest mappings in the whole daemon */

static struct {
    uintptr_t start, end; /* end == 0: free */
} guard[GUARD_SLOTS];
static uintptr_t guard_page = 4096;
static unsigned long guard_hits;

/* Returns false when every slot is taken: the caller refuses the region rather than map it
 * unguarded. */
static bool guard_add(void *p, uint64_t len)
{
    for (unsigned i = 0; i < GUARD_SLOTS; i++) {
        if (__atomic_load_n(&guard[i].end, __ATOMIC_ACQUIRE) == 0) {
            __atomic_store_n(&guard[i].start, (uintptr_t)p, __ATOMIC_RELAXED);
            __atomic_store_n(&guard[i].end, (uintptr_t)p + len, __ATOMIC_RELEASE);
            return true;
        }
    }
    return false;
}

static void guard_del(void *p)
{
    for (unsigned i = 0; i < GUARD_SLOTS; i++) {
        if (__atomic_load_n(&guard[i].start, __ATOMIC_RELAXED) == (uintptr_t)p)
            __atomic_store_n(&guard[i].end, 0, __ATOMIC_RELEASE);
    }
}

static void guard_handler(int sig, siginfo_t *si, void *uc)
{
    uintptr_t a = (uintptr_t)si->si_addr;

    for (unsigned i = 0; i < GUARD_SLOTS; i++) {
        uintptr_t end = __atomic_load_n(&guard[i].end, __ATOMIC_ACQUIRE);
        uintptr_t start = __atomic_load_n(&guard[i].start, __ATOMIC_RELAXED);

        if (end && a >= start && a < end) {
            /* a small page, else a 2 MiB one (a hugetlbfs mapping cannot be split) */
            const uintptr_t sizes[] = {guard_page, 2u << 20};

            for (unsigned k = 0; k < 2; k++) {
                void *page = (void *)(a & ~(sizes[k] - 1));

                if (mmap(page, sizes[k], PROT_READ | PROT_WRITE,
                         MAP_FIXED | MAP_PRIVATE | MAP_ANONYMOUS, -1, 0) != MAP_FAILED) {
                    __atomic_add_fetch(&guard_hits, 1, __ATOMIC_RELAXED);
                    return;
                }
            }
        }
    }
    signal(SIGBUS, SIG_DFL); /* not ours: fault again with the default action */
}

int vblk_mem_sigbus_guard_install(void)
{
    struct sigaction sa = {.sa_sigaction = guard_handler, .sa_flags = SA_SIGINFO | SA_NODEFER};

    guard_page = (uintptr_t)sysconf(_SC_PAGESIZE);
    sigemptyset(&sa.sa_mask);
    return sigaction(SIGBUS, &sa, NULL) < 0 ? -errno : 0;
}

unsigned long vblk_mem_sigbus_count(void)
{
    return __atomic_load_n(&guard_hits, __ATOMIC_RELAXED);
}

void *vblk_mem_gpa_range(const struct vblk_mem *m, uint64_t gpa, uint64_t len)
{
    uint64_t got = len;
    void *p;

    if (len == 0 || gpa + len < gpa)
        return NULL;
    p = vblk_mem_gpa(m, gpa, &got);
    return (p && got == len) ? p : NULL;
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

int vblk_mem_region_check(const struct vhost_user_mem_region *d)
{
    if (d->memory_size == 0)
        return -EINVAL;
    if (d->guest_phys_addr + d->memory_size < d->guest_phys_addr ||
        d->userspace_addr + d->memory_size < d->userspace_addr ||
        d->mmap_offset + d->memory_size < d->mmap_offset)
        return -EINVAL;
    /* mmap length must fit size_t and off_t arithmetic */
    if (d->mmap_offset + d->memory_size > (uint64_t)INT64_MAX)
        return -EINVAL;
    return 0;
}

int vblk_mem_region_map(struct vblk_mem_region *out, const struct vhost_user_mem_region *d, int fd)
{
    uint64_t map_size;
    struct stat st;
    void *p;

    if (vblk_mem_region_check(d) < 0)
        return -EINVAL;
    /* Map from offset 0 like libvhost-user: mmap_offset need not be page aligned. */
    map_size = d->mmap_offset + d->memory_size;
    /* Touching a mapping past the end of its file raises SIGBUS: refuse regions the fd does not
     * back.  A front-end that shrinks the file later is handled by the SIGBUS guard. */
    if (fstat(fd, &st) < 0)
        return -errno;
    if (S_ISREG(st.st_mode) && (uint64_t)st.st_size < map_size)
        return -ERANGE;
    p = mmap(NULL, map_size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, fd, 0);
    if (p == MAP_FAILED)
        return -errno;
    if (!guard_add(p, map_size)) {
        munmap(p, map_size);
        return -ENOSPC;
    }
    memset(out, 0, sizeof(*out));
    out->gpa = d->guest_phys_addr;
    out->size = d->memory_size;
    out->uva = d->userspace_addr;
    out->mmap_offset = d->mmap_offset;
    out->map = p;
    out->map_size = map_size;
    out->host = (uint8_t *)p + d->mmap_offset;
    return 0;
}

void vblk_mem_region_unmap(struct vblk_mem_region *r)
{
    if (r->map) {
        guard_del(r->map);
        munmap(r->map, r->map_size);
    }
    r->map = NULL;
    r->host = NULL;
}

int vblk_mem_add(struct vblk_mem *m, const struct vblk_mem_region *r)
{
    if (m->nregions >= VBLK_MEM_SLOTS_MAX)
        return -ENOSPC;
    for (unsigned i = 0; i < m->nregions; i++) {
        const struct vblk_mem_region *o = &m->r[i];

        if (r->gpa < o->gpa + o->size && o->gpa < r->gpa + r->size)
            return -EEXIST;
    }
    m->r[m->nregions++] = *r;
    return 0;
}

int vblk_mem_find(const struct vblk_mem *m, const struct vhost_user_mem_region *d)
{
    for (unsigned i = 0; i < m->nregions; i++) {
        if (m->r[i].gpa == d->guest_phys_addr && m->r[i].size == d->memory_size &&
            m->r[i].uva == d->userspace_addr)
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
