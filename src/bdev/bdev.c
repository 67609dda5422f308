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
#ifdef VBLK_HAVE_RBD
    case VBLK_PROTO_RBD:
        r = open_one(&proto, &vblk_bdev_rbd, NULL, c, err, errlen);
        break;
#endif
    default:
        snprintf(err, errlen, "driver=%s is not available in this build",
                 c->protocol == VBLK_PROTO_NBD ? "nbd" : "rbd");
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
        if ((proto->fd >= 0 || proto->ops->pread_sync) && posix_memalign(&buf, 4096, 4096) == 0) {
            ssize_t n = proto->fd >= 0 ? pread(proto->fd, buf, 4096, 0)
                                       : proto->ops->pread_sync(proto, buf, 4096, 0);

            if (n >= 4 && !memcmp(buf, "QFI\xfb", 4))
                format = VBLK_FORMAT_QCOW2;
            free(buf);
        }
        log_info(c->name, "format=auto: '%s' is %s", c->file[0] ? c->file : c->image,
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

    for (; b && !r; b = b->child) /* a format writes its metadata, then the file syncs */
        r = b->ops->flush_sync ? b->ops->flush_sync(b) : 0;
    return r;
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
