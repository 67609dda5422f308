/* qcow2.c - the "qcow2" format driver (placeholder until the driver lands: refuses to open). */
#include "bdev/bdev.h"

#include <errno.h>
#include <stdio.h>

static int qcow2_open(struct vblk_bdev *b, const struct vblk_bdev_conf *c, char *err,
                      size_t errlen)
{
    snprintf(err, errlen, "'%s': format=qcow2 is not implemented yet", c->file);
    return -ENOTSUP;
}

static void qcow2_close(struct vblk_bdev *b)
{
}

static void qcow2_submit(struct vblk_bdev *b, struct vblk_engine *eng, struct vblk_bdev_req *r)
{
    r->done(r, -EIO);
}

const struct vblk_bdev_ops vblk_bdev_qcow2 = {
    .name = "qcow2",
    .single_thread = true,
    .open = qcow2_open,
    .close = qcow2_close,
    .submit = qcow2_submit,
};
