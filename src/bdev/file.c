/* file.c - the "file" protocol driver: a regular file or a block device, I/O through the calling
 * I/O thread's engine.
 *
 * Opens per cache mode (O_DIRECT for none/directsync), takes QEMU-style image locks, and maps
 * requests to one engine I/O each: FUA writes carry RWF_DSYNC (unless cache=unsafe), flushes are
 * fdatasync (none with cache=unsafe or read-only), discard punches a hole (a file system that
 * cannot is fine: discard is a hint), write-zeroes uses ZERO_RANGE, or punches a hole when
 * ZERO_RANGE is missing and unmapping is allowed.
 */
#include "bdev/bdev.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util/compiler.h"
#include "util/log.h"

/* The image lock.  A daemon that was just killed may hold its lock a moment longer: the kernel
 * closes its files only once its in-flight io_uring requests are done.  So a conflict is retried
 * for up to 3 s before it is an error. */
static int take_lock(int fd, struct flock *fl)
{
    for (int i = 0; i < 60; i++) {
        if (fcntl(fd, F_OFD_SETLK, fl) == 0 || errno == EINVAL || errno == ENOLCK)
            return 0;
        if (errno != EAGAIN && errno != EACCES)
            return -1;
        usleep(50 * 1000);
    }
    return -1;
}

static int file_open(struct vblk_bdev *b, const struct vblk_bdev_conf *c, char *err, size_t errlen)
{
    bool direct = c->cache == VBLK_CACHE_NONE || c->cache == VBLK_CACHE_DIRECTSYNC;
    int flags = (c->readonly ? O_RDONLY : O_RDWR) | O_CLOEXEC | (direct ? O_DIRECT : 0);
    struct flock fl = {.l_type = c->readonly ? F_RDLCK : F_WRLCK, .l_whence = SEEK_SET};
    struct stat st;
    int r;

    b->fd = open(c->file, flags);
    if (b->fd < 0) {
        r = -errno;
        if (r == -EINVAL && direct)
            snprintf(err, errlen,
                     "cannot open '%s' with cache=none/directsync: the filesystem does not "
                     "support O_DIRECT; use cache=writeback",
                     c->file);
        else
            snprintf(err, errlen, "cannot open '%s': %s", c->file, strerror(-r));
        return r;
    }
    /* Like QEMU's image locking: one writer, or any number of readers, per image.  An OFD lock
     * over the whole file also conflicts with QEMU's own byte-range locks. */
    if (!c->no_lock && take_lock(b->fd, &fl) < 0) {
        r = -errno;
        snprintf(err, errlen,
                 "'%s' is in use by another process (cannot take the %s lock); "
                 "is a VM or another export using it?",
                 c->file, c->readonly ? "read" : "write");
        goto err_close;
    }
    if (fstat(b->fd, &st) < 0) {
        r = -errno;
        snprintf(err, errlen, "cannot stat '%s': %s", c->file, strerror(-r));
        goto err_close;
    }
    b->align = direct ? 512 : 1;
    if (S_ISBLK(st.st_mode)) {
        uint64_t bytes;
        int ssz = 512, psz = 512;

        b->blockdev = true;
        if (ioctl(b->fd, BLKGETSIZE64, &bytes) < 0) {
            r = -errno;
            snprintf(err, errlen, "cannot get the size of '%s': %s", c->file, strerror(-r));
            goto err_close;
        }
        ioctl(b->fd, BLKSSZGET, &ssz);
        ioctl(b->fd, BLKPBSZGET, &psz);
        if (direct && (unsigned)ssz > b->lbs) {
            r = -EINVAL;
            snprintf(err, errlen,
                     "'%s' has %d-byte sectors: O_DIRECT (cache=none/directsync) "
                     "needs logical-block-size=%d or larger",
                     c->file, ssz, ssz);
            goto err_close;
        }
        if (direct)
            b->align = (unsigned)ssz;
        for (unsigned v = b->lbs; v < (unsigned)psz; v <<= 1)
            b->phys_exp++;
        b->size = bytes;
    } else if (S_ISREG(st.st_mode)) {
        b->size = (uint64_t)st.st_size;
    } else {
        r = -EINVAL;
        snprintf(err, errlen, "'%s' is neither a regular file nor a block device", c->file);
        goto err_close;
    }
    b->size -= b->size % b->lbs;
    if (b->size == 0 && c->format == VBLK_FORMAT_RAW) {
        r = -EINVAL;
        snprintf(err, errlen, "'%s' is smaller than one %u-byte block", c->file, b->lbs);
        goto err_close;
    }
    b->discard = c->discard_unmap && !c->readonly;
    b->write_zeroes = !c->readonly;
    b->zeroes_unmap = c->discard_unmap;
    return 0;

err_close:
    close(b->fd);
    b->fd = -1;
    return r;
}

static void file_close(struct vblk_bdev *b)
{
    if (b->fd >= 0)
        close(b->fd);
    b->fd = -1;
}

static int file_flush_sync(struct vblk_bdev *b)
{
    if (b->readonly || b->cache == VBLK_CACHE_UNSAFE)
        return 0;
    return fdatasync(b->fd) < 0 ? -errno : 0;
}

static void file_queue(struct vblk_engine *e, struct vblk_bdev_req *r)
{
    int ret = e->ops->queue(e, &r->io);

    if (unlikely(ret == -EAGAIN)) {
        e->ops->submit(e);
        ret = e->ops->queue(e, &r->io);
    }
    if (unlikely(ret < 0))
        r->done(r, ret);
}

static void file_io_done(struct vblk_io *io)
{
    struct vblk_bdev_req *r = container_of(io, struct vblk_bdev_req, io);
    int ret = 0;

    switch (io->op) {
    case VBLK_IO_READ:
    case VBLK_IO_WRITE:
        if (unlikely(io->res != (int64_t)io->len))
            ret = io->res < 0 ? (int)io->res : -EIO; /* short: the file ended under us */
        break;
    case VBLK_IO_FALLOCATE:
        if (io->res == -EOPNOTSUPP && r->op == VBLK_BDEV_DISCARD)
            break; /* discard is a hint */
        if (io->res == -EOPNOTSUPP && (io->mode & FALLOC_FL_ZERO_RANGE) &&
            (r->flags & VBLK_BDEV_F_UNMAP)) {
            /* no ZERO_RANGE here: a punched hole reads back as zeroes too */
            io->mode = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE;
            file_queue(io->engine, r);
            return;
        }
        ret = io->res < 0 ? (int)io->res : 0;
        break;
    default:
        ret = io->res < 0 ? (int)io->res : 0;
        break;
    }
    r->done(r, ret);
}

static void file_submit(struct vblk_bdev *b, struct vblk_engine *eng, struct vblk_bdev_req *r)
{
    struct vblk_io *io = &r->io;

    io->fd = b->fd;
    io->cb = file_io_done;
    io->engine = eng;
    io->offset = r->offset;
    io->len = r->len;
    switch (r->op) {
    case VBLK_BDEV_READ:
    case VBLK_BDEV_WRITE:
        io->op = r->op == VBLK_BDEV_READ ? VBLK_IO_READ : VBLK_IO_WRITE;
        io->iov = r->iov;
        io->iovcnt = r->iovcnt;
        io->rw_flags =
            (r->flags & VBLK_BDEV_F_FUA) && b->cache != VBLK_CACHE_UNSAFE ? RWF_DSYNC : 0;
        break;
    case VBLK_BDEV_FLUSH:
        if (b->readonly || b->cache == VBLK_CACHE_UNSAFE) {
            r->done(r, 0);
            return;
        }
        io->op = VBLK_IO_FLUSH;
        break;
    case VBLK_BDEV_DISCARD:
        io->op = VBLK_IO_FALLOCATE;
        io->mode = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE;
        break;
    case VBLK_BDEV_WRITE_ZEROES:
        io->op = VBLK_IO_FALLOCATE;
        io->mode = (r->flags & VBLK_BDEV_F_UNMAP) && b->zeroes_unmap
                       ? FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE
                       : FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE;
        break;
    default:
        r->done(r, -EOPNOTSUPP);
        return;
    }
    file_queue(eng, r);
}

static int file_resize(struct vblk_bdev *b, uint64_t size, bool truncate, char *err, size_t errlen)
{
    uint64_t have;
    struct stat st;

    if (b->blockdev) {
        if (truncate) {
            snprintf(err, errlen,
                     "a block device cannot be truncated: grow it (e.g. lvextend), "
                     "then resize without truncate");
            return -EINVAL;
        }
        if (ioctl(b->fd, BLKGETSIZE64, &have) < 0)
            goto err_size;
    } else if (truncate) {
        /* shrinking: requests past the new end are refused before the blocks go away */
        uint64_t old = b->size;

        if (size < old)
            __atomic_store_n(&b->size, size, __ATOMIC_RELAXED);
        if (ftruncate(b->fd, (off_t)size) < 0) {
            int r = -errno;

            __atomic_store_n(&b->size, old, __ATOMIC_RELAXED);
            snprintf(err, errlen, "cannot truncate the file to %llu bytes: %s",
                     (unsigned long long)size, strerror(-r));
            return r;
        }
        have = size;
    } else {
        if (fstat(b->fd, &st) < 0)
            goto err_size;
        have = (uint64_t)st.st_size;
    }
    if (have < size) {
        snprintf(err, errlen,
                 "the %s holds %llu bytes, fewer than %llu: grow it first or resize with "
                 "truncate",
                 b->blockdev ? "device" : "file", (unsigned long long)have,
                 (unsigned long long)size);
        return -EINVAL;
    }
    __atomic_store_n(&b->size, size, __ATOMIC_RELAXED);
    return 0;
err_size:
    snprintf(err, errlen, "cannot get the size: %s", strerror(errno));
    return -errno;
}

const struct vblk_bdev_ops vblk_bdev_file = {
    .name = "file",
    .resize = file_resize,
    .open = file_open,
    .close = file_close,
    .flush_sync = file_flush_sync,
    .submit = file_submit,
};
