/* gmem.h - the shared "guest memory" of vblk-bench.
 *
 * Owns: one memfd-backed, MAP_SHARED region that is handed to the back-end with SET_MEM_TABLE.
 * Guest-physical address 0 is the start of the region, so a guest-physical address is simply the
 * offset of a pointer inside the mapping.  Allocation is a bump allocator used only at setup time.
 */
#ifndef VBLK_BENCH_GMEM_H
#define VBLK_BENCH_GMEM_H

#include <stddef.h>
#include <stdint.h>

struct gmem {
    int fd;
    uint8_t *base;
    size_t size;
    size_t used;
};

int gmem_create(struct gmem *g, size_t size);
void gmem_destroy(struct gmem *g);
/* Returns zeroed memory aligned to @align (a power of two) or NULL when the region is full. */
void *gmem_alloc(struct gmem *g, size_t size, size_t align);

static inline uint64_t gmem_gpa(const struct gmem *g, const void *p)
{
    return (uint64_t)((const uint8_t *)p - g->base);
}

#endif
