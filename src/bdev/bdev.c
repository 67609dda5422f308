/* bdev.c - see bdev.h: the driver stack of an export. */
#include "bdev/bdev.h"
#include "util/log.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int open_one(struct vblk_bdev **out, const struct vblk_bdev_ops *ops,
                    struct vblk_bdev *child, const struct vblk_bdev_conf *c, char *err,
                    size_t errlen)
{
    struct vblk_bdev *b = calloc(1, sizeof(*b));
    int r;

    if (!b) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    if (ops->single_thread && c->iothreads > 1) {
        snprintf(err, errlen, "the %s driver needs a single I/O thread: use iothreads=1",
                 ops->name);
        free(b);
        return -EINVAL;
    }
    b->ops = ops;
    b->name = c->name;
    b->child = child;
    b->fd = -1;
    b->lbs = c->lbs;
    b->readonly = c->readonly;
    b->cache = c->cache;
    if (ops->filter && child) {
        /* a filter serves its child's range: the same info */
        b->size = child->size;
        b->lbs = child->lbs;
        b->phys_exp = child->phys_exp;
        b->align = child->align;
        b->readonly = child->readonly;
        b->discard = child->discard;
        b->write_zeroes = child->write_zeroes;
        b->zeroes_unmap = child->zeroes_unmap;
    }
    r = ops->open(b, c, err, errlen);
    if (r < 0) {
        free(b);
        return r;
    }
    *out = b;
    return 0;
}

int vblk_bdev_open_stack(struct vblk_bdev **out, const struct vblk_bdev_conf *c, char *err,
                         size_t errlen)
{
    enum vblk_image_format format;
    struct vblk_bdev *proto, *top;
    int r;

    /* .null alone picks the null driver (as file=null://SIZE does) */
    switch (c->null ? VBLK_PROTO_NULL : c->protocol) {
    case VBLK_PROTO_FILE:
        r = open_one(&proto, &vblk_bdev_file, NULL, c, err, errlen);
        break;
    case VBLK_PROTO_NULL:
        r = open_one(&proto, &vblk_bdev_null, NULL, c, err, errlen);
        break;
    case VBLK_PROTO_NBD:
        r = open_one(&proto, &vblk_bdev_nbd, NULL, c, err, errlen);
        break;
#ifdef VBLK_HAVE_RBD
    case VBLK_PROTO_RBD:
        r = open_one(&proto, &vblk_bdev_rbd, NULL, c, err, errlen);
        break;
#endif
    default:
        snprintf(err, errlen, "driver=rbd is not available in this build");
        r = -ENOTSUP;
        break;
    }
    if (r < 0)
        return r;
    format = c->format;
    if (format == VBLK_FORMAT_AUTO) {
        /* read-only exports only (the option parser refuses it otherwise): a raw image a guest
         * wrote may carry any magic, so a writable one is never probed */
        void *buf = NULL; /* aligned: the file may be open with O_DIRECT */

        format = VBLK_FORMAT_RAW;
        if (posix_memalign(&buf, 4096, 4096) == 0) {
            if (vblk_bdev_pread_sync(proto, buf, 4096, 0) >= 4 && !memcmp(buf, "QFI\xfb", 4))
                format = VBLK_FORMAT_QCOW2;
            free(buf);
        }
        log_info(c->name, "format=auto: '%s' is %s",
                 c->protocol == VBLK_PROTO_NBD   ? c->uri
                 : c->protocol == VBLK_PROTO_RBD ? c->image
                                                 : c->file,
                 format == VBLK_FORMAT_QCOW2 ? "qcow2" : "raw");
    }
    switch (format) {
    case VBLK_FORMAT_RAW:
        top = proto;
        r = 0;
        break;
    case VBLK_FORMAT_QCOW2:
        r = open_one(&top, &vblk_bdev_qcow2, proto, c, err, errlen);
        break;
    default:
        snprintf(err, errlen, "unknown format");
        r = -EINVAL;
        break;
    }
    if (r < 0) {
        vblk_bdev_close_stack(proto);
        return r;
    }
    if (c->fault.ops) {
        struct vblk_bdev *f;

        r = open_one(&f, &vblk_bdev_faulty, top, c, err, errlen);
        if (r < 0) {
            vblk_bdev_close_stack(top);
            return r;
        }
        top = f;
    }
    /* always on top, even without limits (then a pass-through): limits can be set live */
    {
        struct vblk_bdev *t;

        r = open_one(&t, &vblk_bdev_throttle, top, c, err, errlen);
        if (r < 0) {
            vblk_bdev_close_stack(top);
            return r;
        }
        top = t;
    }
    *out = top;
    return 0;
}

void vblk_bdev_close_stack(struct vblk_bdev *b)
{
    while (b) {
        struct vblk_bdev *child = b->child;

        b->ops->close(b);
        free(b);
        b = child;
    }
}

int vblk_bdev_resize(struct vblk_bdev *top, uint64_t size, bool truncate, char *err, size_t errlen)
{
    int r;

    if (size == 0 || size % top->lbs) {
        snprintf(err, errlen, "size %llu is not a positive multiple of the %u-byte block size",
                 (unsigned long long)size, top->lbs);
        return -EINVAL;
    }
    if (top->readonly && truncate) {
        snprintf(err, errlen, "the export is read-only: its file cannot be truncated");
        return -EROFS;
    }
    if (top->ops->filter) {
        r = vblk_bdev_resize(top->child, size, truncate, err, errlen);
        if (r == 0)
            __atomic_store_n(&top->size, size, __ATOMIC_RELAXED);
        return r;
    }
    if (!top->ops->resize) {
        snprintf(err, errlen, "the %s driver cannot be resized live", top->ops->name);
        return -ENOTSUP;
    }
    return top->ops->resize(top, size, truncate, err, errlen);
}

int vblk_bdev_flush_sync(struct vblk_bdev *b)
{
    int r = 0;

    /* a format writes its metadata, then the file syncs; every driver is called even after a
     * failure (the nbd driver also hands its connection back to the control thread here) */
    for (; b; b = b->child) {
        int e = b->ops->flush_sync ? b->ops->flush_sync(b) : 0;

        if (!r)
            r = e;
    }
    return r;
}

ssize_t vblk_bdev_pread_sync(struct vblk_bdev *b, void *buf, size_t len, uint64_t off)
{
    size_t done = 0;

    if (b->ops->pread_sync)
        return b->ops->pread_sync(b, buf, len, off);
    while (done < len) {
        ssize_t n = pread(b->fd, (char *)buf + done, len - done, (off_t)(off + done));

        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -errno;
        if (n == 0)
            break;
        done += (size_t)n;
    }
    return (ssize_t)done;
}

int vblk_bdev_pwrite_sync(struct vblk_bdev *b, const void *buf, size_t len, uint64_t off)
{
    size_t done = 0;

    if (b->ops->pwrite_sync)
        return b->ops->pwrite_sync(b, buf, len, off);
    while (done < len) {
        ssize_t n = pwrite(b->fd, (const char *)buf + done, len - done, (off_t)(off + done));

        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return n < 0 ? -errno : -EIO;
        done += (size_t)n;
    }
    return 0;
}

struct vblk_bdev *vblk_bdev_find(struct vblk_bdev *b, const struct vblk_bdev_ops *ops)
{
    for (; b; b = b->child) {
        if (b->ops == ops)
            return b;
    }
    return NULL;
}

void vblk_bdev_drain(struct vblk_bdev *b, struct vblk_engine *eng)
{
    for (; b; b = b->child) {
        if (b->ops->drain)
            b->ops->drain(b, eng);
    }
}
