/* bdev.h - block driver: the backing store of an export.
 *
 * Owns: opening the file or block device with the flags its cache mode means, its size and
 * block sizes, and the final flush on shutdown.  Drivers: "file" (regular file or block device,
 * I/O through the export's engine) and "null" (file=null://SIZE: no storage, requests complete
 * at once in the I/O thread, reads return zeroes unless read-zeroes=off).  The per-request path
 * does not call in here: the virtio-blk layer fills struct vblk_io from the fields below and hands
 * it to the engine.
 */
#ifndef VBLK_BDEV_H
#define VBLK_BDEV_H

#include <stdbool.h>
#include <stdint.h>

#include "options.h"

struct vblk_bdev {
    const char *name; /* export id, for messages */
    int fd;           /* -1 for null */
    bool null;
    bool blockdev;
    bool readonly;
    enum vblk_cache cache;
    uint64_t size;     /* bytes served, a multiple of lbs */
    unsigned lbs;      /* logical block size advertised */
    unsigned phys_exp; /* log2(physical block / logical block) */
    bool discard;      /* DISCARD offered */
    bool write_zeroes; /* WRITE_ZEROES offered */
    bool zeroes_unmap; /* WRITE_ZEROES with UNMAP may punch holes */
    bool read_zeroes;  /* null: reads fill the buffer with zeroes */
};

/* Open per o.  0, or -errno with a message in err naming the file and what failed. */
int vblk_bdev_open(struct vblk_bdev *b, const struct vblk_export_opts *o, char *err, size_t errlen);

/* fdatasync unless read-only or null; 0 or -errno. */
int vblk_bdev_flush(struct vblk_bdev *b);

void vblk_bdev_close(struct vblk_bdev *b);

/* Write cache on at start for this cache mode? (config wce / VIRTIO_BLK_F_FLUSH behaviour) */
static inline bool vblk_cache_wce(enum vblk_cache c)
{
    return c == VBLK_CACHE_NONE || c == VBLK_CACHE_WRITEBACK || c == VBLK_CACHE_UNSAFE;
}

#endif
