/* bdev.c - see bdev.h. */
#include "bdev/bdev.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

static int fail(char *err, size_t errlen, int r, const char *fmt, const char *file,
                const char *what)
{
    snprintf(err, errlen, fmt, file, what);
    return r;
}

int vblk_bdev_open(struct vblk_bdev *b, const struct vblk_export_opts *o, char *err, size_t errlen)
{
    bool direct = o->cache == VBLK_CACHE_NONE || o->cache == VBLK_CACHE_DIRECTSYNC;
    int flags = (o->readonly ? O_RDONLY : O_RDWR) | O_CLOEXEC | (direct ? O_DIRECT : 0);
    struct stat st;
    int r;

    memset(b, 0, sizeof(*b));
    b->name = o->id;
    b->fd = -1;
    b->readonly = o->readonly;
    b->cache = o->cache;
    b->lbs = o->logical_block_size;

    if (o->null) {
        b->null = true;
        b->read_zeroes = o->read_zeroes;
        b->size = o->null_size - o->null_size % b->lbs;
        if (b->size == 0) {
            snprintf(err, errlen, "'%s' is smaller than one %u-byte block", o->file, b->lbs);
            return -EINVAL;
        }
        b->discard = o->discard_unmap && !o->readonly;
        b->write_zeroes = !o->readonly;
        b->zeroes_unmap = o->discard_unmap;
        return 0;
    }

    b->fd = open(o->file, flags);
    if (b->fd < 0) {
        r = -errno;
        if (r == -EINVAL && direct)
            return fail(err, errlen, r,
                        "cannot open '%s' with %s: the filesystem does not "
                        "support O_DIRECT; use cache=writeback",
                        o->file, "cache=none/directsync");
        return fail(err, errlen, r, "cannot open '%s': %s", o->file, strerror(-r));
    }
    /* Like QEMU's image locking: one writer, or any number of readers, per image.  An OFD lock
     * over the whole file also conflicts with QEMU's own byte-range locks. */
    {
        struct flock fl = {.l_type = o->readonly ? F_RDLCK : F_WRLCK, .l_whence = SEEK_SET};

        if (fcntl(b->fd, F_OFD_SETLK, &fl) < 0 && errno != EINVAL && errno != ENOLCK) {
            r = -errno;
            snprintf(err, errlen,
                     "'%s' is in use by another process (cannot take the %s lock); "
                     "is a VM or another export using it?",
                     o->file, o->readonly ? "read" : "write");
            goto err_close;
        }
    }
    if (fstat(b->fd, &st) < 0) {
        r = -errno;
        fail(err, errlen, r, "cannot stat '%s': %s", o->file, strerror(-r));
        goto err_close;
    }
    if (S_ISBLK(st.st_mode)) {
        uint64_t bytes;
        int ssz = 512, psz = 512;

        b->blockdev = true;
        if (ioctl(b->fd, BLKGETSIZE64, &bytes) < 0) {
            r = -errno;
            fail(err, errlen, r, "cannot get the size of '%s': %s", o->file, strerror(-r));
            goto err_close;
        }
        ioctl(b->fd, BLKSSZGET, &ssz);
        ioctl(b->fd, BLKPBSZGET, &psz);
        if (direct && (unsigned)ssz > b->lbs) {
            r = -EINVAL;
            snprintf(err, errlen,
                     "'%s' has %d-byte sectors: O_DIRECT (cache=none/directsync) "
                     "needs logical-block-size=%d or larger",
                     o->file, ssz, ssz);
            goto err_close;
        }
        if ((unsigned)psz > b->lbs) {
            for (unsigned v = b->lbs; v < (unsigned)psz; v <<= 1)
                b->phys_exp++;
        }
        b->size = bytes;
    } else if (S_ISREG(st.st_mode)) {
        b->size = (uint64_t)st.st_size;
    } else {
        r = -EINVAL;
        fail(err, errlen, r, "'%s' is %s", o->file, "neither a regular file nor a block device");
        goto err_close;
    }
    b->size -= b->size % b->lbs;
    if (b->size == 0) {
        r = -EINVAL;
        snprintf(err, errlen, "'%s' is smaller than one %u-byte block", o->file, b->lbs);
        goto err_close;
    }
    b->discard = o->discard_unmap && !o->readonly;
    b->write_zeroes = !o->readonly;
    b->zeroes_unmap = o->discard_unmap;
    return 0;

err_close:
    close(b->fd);
    b->fd = -1;
    return r;
}

int vblk_bdev_flush(struct vblk_bdev *b)
{
    if (b->null || b->readonly || b->fd < 0)
        return 0;
    return fdatasync(b->fd) < 0 ? -errno : 0;
}

void vblk_bdev_close(struct vblk_bdev *b)
{
    if (b->fd >= 0)
        close(b->fd);
    b->fd = -1;
}
