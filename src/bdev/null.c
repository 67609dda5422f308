/* null.c - the "null" protocol driver (file=null://SIZE): stores nothing, completes every
 * request inside submit; reads return zeroes unless read-zeroes=off (then the guest's buffer is
 * left as it was: the data plane's own cost, nothing else). */
#include "bdev/bdev.h"
#include "util/iov.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

static int null_open(struct vblk_bdev *b, const struct vblk_bdev_conf *c, char *err, size_t errlen)
{
    b->size = c->null_size - c->null_size % b->lbs;
    if (b->size == 0) {
        snprintf(err, errlen, "'%s' is smaller than one %u-byte block", c->file, b->lbs);
        return -EINVAL;
    }
    b->priv = c->read_zeroes ? (void *)1 : NULL;
    b->align = 1;
    b->discard = c->discard_unmap && !c->readonly;
    b->write_zeroes = !c->readonly;
    b->zeroes_unmap = c->discard_unmap;
    return 0;
}

static void null_close(struct vblk_bdev *b)
{
}

static void null_submit(struct vblk_bdev *b, struct vblk_engine *eng, struct vblk_bdev_req *r)
{
    if (r->op == VBLK_BDEV_READ && b->priv)
        vblk_iov_zero(r->iov, r->iovcnt);
    r->done(r, 0);
}

static int null_resize(struct vblk_bdev *b, uint64_t size, bool truncate, char *err, size_t errlen)
{
    __atomic_store_n(&b->size, size, __ATOMIC_RELAXED);
    return 0;
}

const struct vblk_bdev_ops vblk_bdev_null = {
    .name = "null",
    .resize = null_resize,
    .open = null_open,
    .close = null_close,
    .submit = null_submit,
};
