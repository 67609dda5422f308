/* gmem.c - memfd-backed guest memory region shared with the vhost-user back-end. */
#include "gmem.h"

#include <errno.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define GMEM_PAGE 4096u

int gmem_create(struct gmem *g, size_t size)
{
    int ret;

    memset(g, 0, sizeof(*g));
    g->size = (size + GMEM_PAGE - 1) & ~(size_t)(GMEM_PAGE - 1);
    g->fd = memfd_create("vblk-bench-guest-mem", MFD_CLOEXEC);
    if (g->fd < 0)
        return -errno;
    if (ftruncate(g->fd, (off_t)g->size) < 0) {
        ret = -errno;
        goto err_close;
    }
    g->base = mmap(NULL, g->size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, g->fd, 0);
    if (g->base == MAP_FAILED) {
        ret = -errno;
        goto err_close;
    }
    return 0;

err_close:
    close(g->fd);
    g->fd = -1;
    g->base = NULL;
    return ret;
}

void gmem_destroy(struct gmem *g)
{
    if (g->base)
        munmap(g->base, g->size);
    if (g->fd >= 0)
        close(g->fd);
    g->base = NULL;
    g->fd = -1;
}

void *gmem_alloc(struct gmem *g, size_t size, size_t align)
{
    size_t start = (g->used + align - 1) & ~(align - 1);

    if (start > g->size || size > g->size - start)
        return NULL;
    g->used = start + size;
    return g->base + start; /* memfd pages start zeroed */
}
