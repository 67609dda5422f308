/* guest_mem.c - see guest_mem.h. */
#include "vhost/guest_mem.h"

#include <errno.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>

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
     * back.  (A front-end that shrinks the file later is not caught here; QEMU seals memfds.) */
    if (fstat(fd, &st) < 0)
        return -errno;
    if (S_ISREG(st.st_mode) && (uint64_t)st.st_size < map_size)
        return -ERANGE;
    p = mmap(NULL, map_size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, fd, 0);
    if (p == MAP_FAILED)
        return -errno;
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
    if (r->map)
        munmap(r->map, r->map_size);
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
