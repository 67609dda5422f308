/* guest_mem.h - the guest memory table of one vhost-user connection.
 *
 * Owns: the list of regions the front-end shared (SET_MEM_TABLE / ADD_MEM_REG / REM_MEM_REG),
 * their mappings, and address translation.  Every guest address the daemon touches goes through
 * vblk_mem_gpa() (guest-physical, used by descriptors) or vblk_mem_uva() (front-end virtual, used
 * by vring addresses); both refuse anything outside a region and never wrap.
 *
 * Threads: a table is immutable once published.  The control plane builds a new table, swaps it
 * in while the device's queues are quiesced, then frees the old one.
 *
 * Generations: a published table is sealed (vblk_mem_seal) with a number unique in the process,
 * so that I/O threads can tell whether the table their engine registered as fixed buffers is
 * still the one in use.
 */
#ifndef VBLK_GUEST_MEM_H
#define VBLK_GUEST_MEM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define VBLK_MEM_SLOTS_MAX 32
/* Most guest memory one connection may map in one table (mappings of the old and the new table
 * coexist while a table is replaced, so up to twice this). */
#define VBLK_MEM_MAX_BYTES (1ull << 40)

/* What one connection has mapped: caps and the SIGBUS guard's verdict.  Lives as long as the
 * daemon (the guard's slots point at it).  Control thread, except `lost` (signal handler). */
struct vblk_mem_owner {
    uint64_t mapped;    /* bytes mapped now */
    unsigned slots;     /* guard slots held now */
    int lost;           /* set by the SIGBUS guard: a region lost its pages (atomic) */
    unsigned long hits; /* regions replaced so far */
};

/* A region as the front-end describes it (vhost-user's memory region, in our own terms). */
struct vblk_mem_desc {
    uint64_t gpa;         /* guest-physical start */
    uint64_t size;        /* bytes */
    uint64_t uva;         /* front-end's virtual address of gpa */
    uint64_t mmap_offset; /* offset of gpa in the fd */
};

struct vblk_mem_region {
    uint64_t gpa;         /* guest-physical start */
    uint64_t size;        /* bytes */
    uint64_t uva;         /* front-end's virtual address of gpa */
    uint64_t mmap_offset; /* offset of gpa inside the mapped fd */
    uint8_t *host;        /* our address of gpa */
    void *map;            /* mapping to munmap, NULL when the table does not own it (tests) */
    uint64_t map_size;
    struct vblk_mem_owner *owner; /* whose caps the mapping counts against */
};

struct vblk_mem {
    unsigned nregions;
    uint32_t gen; /* vblk_mem_seal: unique in the process; 0: never sealed */
    struct vblk_mem_region r[VBLK_MEM_SLOTS_MAX];
};

/* Translate [gpa, gpa+*len) to a host pointer.  On success *len is shortened to what is
 * contiguous in one region (>= 1).  Returns NULL if gpa is in no region. */
static inline void *vblk_mem_gpa(const struct vblk_mem *m, uint64_t gpa, uint64_t *len)
{
    for (unsigned i = 0; i < m->nregions; i++) {
        const struct vblk_mem_region *r = &m->r[i];
        /* below the region, off wraps to more than its size (no region wraps: region_check) */
        uint64_t off = gpa - r->gpa;

        if (off < r->size) {
            if (*len > r->size - off)
                *len = r->size - off;
            return r->host + off;
        }
    }
    return 0;
}

/* Control thread, before the table is published: give it a new generation. */
void vblk_mem_seal(struct vblk_mem *m);
/* Is every page of every region resident (mincore: a lookup per small page, no faults)?  Any
 * thread. */
bool vblk_mem_resident(const struct vblk_mem *m);

/* Translate [gpa, gpa+len) that must lie inside one region; len 0 is the address of gpa.  NULL if
 * it does not (regions do not overlap, so gpa's region is the only candidate). */
static inline void *vblk_mem_gpa_in(const struct vblk_mem *m, uint64_t gpa, uint64_t len)
{
    for (unsigned i = 0; i < m->nregions; i++) {
        const struct vblk_mem_region *r = &m->r[i];
        uint64_t off = gpa - r->gpa;

        if (off < r->size)
            return len <= r->size - off ? r->host + off : NULL;
    }
    return NULL;
}

/* vblk_mem_gpa_in, trying *hint first (NULL: none yet) and leaving the region found there: the
 * ranges of one request are mostly in one region.  *hint must come from this table. */
static inline void *vblk_mem_gpa_in_hint(const struct vblk_mem *m,
                                         const struct vblk_mem_region **hint, uint64_t gpa,
                                         uint64_t len)
{
    const struct vblk_mem_region *r = *hint;
    uint64_t off;

    if (!r || (off = gpa - r->gpa) >= r->size) {
        unsigned i;

        for (i = 0; i < m->nregions; i++) {
            off = gpa - m->r[i].gpa;
            if (off < m->r[i].size)
                break;
        }
        if (i == m->nregions)
            return NULL;
        r = *hint = &m->r[i];
    }
    return len <= r->size - off ? r->host + off : NULL;
}

/* Translate an exact, non-empty range that must lie inside one region (rings).  NULL if it does
 * not. */
static inline void *vblk_mem_gpa_range(const struct vblk_mem *m, uint64_t gpa, uint64_t len)
{
    return len ? vblk_mem_gpa_in(m, gpa, len) : NULL;
}
void *vblk_mem_uva_range(const struct vblk_mem *m, uint64_t uva, uint64_t len);

/* Check a region description from the front-end: non-empty, no wrap of gpa/uva/offset, at most
 * VBLK_MEM_MAX_BYTES.  Returns 0 or -EINVAL. */
int vblk_mem_region_check(const struct vblk_mem_desc *d);

/* Map a region from the front-end's fd into *out, counted against owner.  Only a regular file
 * on a memory file system (memfd, tmpfs, hugetlbfs) is accepted: page faults on anything else
 * could block the I/O thread on the front-end (FUSE) or a disk; only the pages the region covers
 * are mapped (not the file from offset 0).  Does not close fd.  0, or -errno: -EMEDIUMTYPE (not a
 * memory file system), -ERANGE (the file is smaller than the region), -E2BIG (over the
 * owner's byte cap), -ENOSPC (over the owner's guard slots), or mmap's error. */
int vblk_mem_region_map(struct vblk_mem_owner *owner, struct vblk_mem_region *out,
                        const struct vblk_mem_desc *d, int fd);
void vblk_mem_region_unmap(struct vblk_mem_region *r);
/* Words for the errors of vblk_mem_region_map. */
const char *vblk_mem_strerror(int err);

/* Append a mapped region to m, refusing overlaps in gpa space, a full table and a table over
 * VBLK_MEM_MAX_BYTES.  0 or -errno. */
int vblk_mem_add(struct vblk_mem *m, const struct vblk_mem_region *r);

/* Index of the region matching gpa+size+uva exactly, or -ENOENT. */
int vblk_mem_find(const struct vblk_mem *m, const struct vblk_mem_desc *d);

/* Unmap every region the table owns. */
void vblk_mem_unmap_all(struct vblk_mem *m);

/* A front-end may shrink the file behind a region after we mapped it; touching the lost pages
 * raises SIGBUS.  The guard (a process-wide SIGBUS handler, installed once from main) replaces
 * the whole region that faulted with one anonymous mapping, so the access completes (the guest's
 * memory reads as zeroes there) and the daemon survives; it marks the region's owner lost and
 * makes vblk_mem_guard_fd() readable, so that the control thread tears that connection down
 * (vblk_mem_owner_lost()).  A SIGBUS anywhere else keeps its default action.  Each connection
 * holds at most 2 * VBLK_MEM_SLOTS_MAX guard slots.  0 or -errno. */
int vblk_mem_sigbus_guard_install(void);
/* An eventfd that becomes readable when the guard replaced a region (-1 before install). */
int vblk_mem_guard_fd(void);
/* Regions the guard has replaced so far, in the whole process. */
unsigned long vblk_mem_sigbus_count(void);
/* Did the guard replace one of owner's regions since the last call?  Clears the mark. */
bool vblk_mem_owner_lost(struct vblk_mem_owner *owner);

#endif
