/* guest_mem.h - the guest memory table of one vhost-user connection.
 *
 * Owns: the list of regions the front-end shared (SET_MEM_TABLE / ADD_MEM_REG / REM_MEM_REG),
 * their mappings, and address translation.  Every guest address the daemon touches goes through
 * vblk_mem_gpa() (guest-physical, used by descriptors) or vblk_mem_uva() (front-end virtual, used
 * by vring addresses); both refuse anything outside a region and never wrap.
 *
 * Threads: a table is immutable once published.  The control plane builds a new table, swaps it
 * in while the device's queues are quiesced, then frees the old one.
 */
#ifndef VBLK_GUEST_MEM_H
#define VBLK_GUEST_MEM_H

#include <stdbool.h>
#include <stdint.h>

#include "vhost/vhost_user_proto.h"

#define VBLK_MEM_SLOTS_MAX 32

struct vblk_mem_region {
    uint64_t gpa;         /* guest-physical start */
    uint64_t size;        /* bytes */
    uint64_t uva;         /* front-end's virtual address of gpa */
    uint64_t mmap_offset; /* offset of gpa inside the mapped fd */
    uint8_t *host;        /* our address of gpa */
    void *map;            /* mapping to munmap, NULL when the table does not own it (tests) */
    uint64_t map_size;
};

struct vblk_mem {
    unsigned nregions;
    struct vblk_mem_region r[VBLK_MEM_SLOTS_MAX];
};

/* Translate [gpa, gpa+*len) to a host pointer.  On success *len is shortened to what is
 * contiguous in one region (>= 1).  Returns NULL if gpa is in no region. */
static inline void *vblk_mem_gpa(const struct vblk_mem *m, uint64_t gpa, uint64_t *len)
{
    for (unsigned i = 0; i < m->nregions; i++) {
        const struct vblk_mem_region *r = &m->r[i];
        uint64_t off = gpa - r->gpa;

        if (gpa >= r->gpa && off < r->size) {
            if (*len > r->size - off)
                *len = r->size - off;
            return r->host + off;
        }
    }
    return 0;
}

/* Translate an exact range that must lie inside one region (rings).  NULL if it does not. */
void *vblk_mem_gpa_range(const struct vblk_mem *m, uint64_t gpa, uint64_t len);
void *vblk_mem_uva_range(const struct vblk_mem *m, uint64_t uva, uint64_t len);

/* Check a region description from the front-end: non-empty, no wrap of gpa/uva/offset.
 * Returns 0 or -EINVAL. */
int vblk_mem_region_check(const struct vhost_user_mem_region *d);

/* Map a region from the front-end's fd into *out.  Does not close fd. 0 or -errno. */
int vblk_mem_region_map(struct vblk_mem_region *out, const struct vhost_user_mem_region *d, int fd);
void vblk_mem_region_unmap(struct vblk_mem_region *r);

/* Append a mapped region to m, refusing overlaps in gpa space and a full table. 0 or -errno. */
int vblk_mem_add(struct vblk_mem *m, const struct vblk_mem_region *r);

/* Index of the region matching gpa+size+uva exactly, or -ENOENT. */
int vblk_mem_find(const struct vblk_mem *m, const struct vhost_user_mem_region *d);

/* Unmap every region the table owns. */
void vblk_mem_unmap_all(struct vblk_mem *m);

/* A front-end may shrink the file behind a region after we mapped it; touching the lost pages
 * raises SIGBUS.  The guard (a process-wide SIGBUS handler, installed once from main) maps an
 * anonymous page over the faulting page when it lies in a mapped guest region, so the access
 * completes (the guest's memory reads as zeroes there) and the daemon survives.  A SIGBUS
 * anywhere else keeps its default action.  0 or -errno. */
int vblk_mem_sigbus_guard_install(void);
/* Pages the guard has replaced so far. */
unsigned long vblk_mem_sigbus_count(void);

#endif
