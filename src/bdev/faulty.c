/* faulty.c - the "faulty" filter: fault injection for tests (export keys inject-*).
 *
 * Sits on top of an export's stack and passes every request down, except those that match its
 * rule (op, byte range): of those, rate percent fail with the configured errno, at most count of
 * them, without reaching storage.  The rule is fixed at open.  Single thread: the counters are
 * the driver's own, so exports using it have one I/O thread.
 */
#include "bdev/bdev.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/compiler.h"
#include "util/log.h"

struct faulty {
    struct vblk_fault_conf rule;
    uint64_t seen, failed; /* matched, acted on */
    bool warned;
    uint64_t rng;
};

static int faulty_open(struct vblk_bdev *b, const struct vblk_bdev_conf *c, char *err,
                       size_t errlen)
{
    struct faulty *f = calloc(1, sizeof(*f));

    if (!f) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    f->rule = c->fault;
    f->rng = 0x9e3779b97f4a7c15ull;
    b->priv = f;
    log_warn(c->name, "fault injection on: ops 0x%x delayed %u ms, then %s (%u%%, at most %llu)",
             f->rule.ops, f->rule.delay_ms, f->rule.err ? strerror(f->rule.err) : "served",
             f->rule.rate, (unsigned long long)f->rule.count);
    return 0;
}

static void faulty_close(struct vblk_bdev *b)
{
    free(b->priv);
}

static bool matches(struct faulty *f, const struct vblk_bdev_req *r)
{
    const struct vblk_fault_conf *u = &f->rule;
    uint64_t end = u->length ? u->offset + u->length : UINT64_MAX;

    if (!(u->ops & (1u << r->op)))
        return false;
    if (r->op != VBLK_BDEV_FLUSH && (r->offset >= end || r->offset + r->len <= u->offset))
        return false;
    if (u->count && f->failed >= u->count)
        return false;
    f->seen++;
    if (u->rate < 100) {
        f->rng ^= f->rng << 13; /* xorshift64: reproducible from run to run */
        f->rng ^= f->rng >> 7;
        f->rng ^= f->rng << 17;
        if (f->rng % 100 >= u->rate)
            return false;
    }
    return true;
}

/* A matched request's delay is over: fail it, or pass it down. */
static void delayed(struct vblk_io *io)
{
    struct vblk_bdev_req *r = container_of(io, struct vblk_bdev_req, io);
    struct vblk_bdev *b = io->ctx;
    struct faulty *f = b->priv;

    if (f->rule.err)
        r->done(r, -f->rule.err);
    else
        vblk_bdev_submit(b->child, io->engine, r);
}

static void faulty_submit(struct vblk_bdev *b, struct vblk_engine *eng, struct vblk_bdev_req *r)
{
    struct faulty *f = b->priv;

    if (!matches(f, r)) {
        vblk_bdev_submit(b->child, eng, r); /* the child completes it */
        return;
    }
    f->failed++;
    if (f->rule.delay_ms) {
        /* the engine keeps time: r->io is free until the child gets the request */
        memset(&r->io, 0, sizeof(r->io));
        r->io.op = VBLK_IO_DELAY;
        r->io.len = (uint64_t)f->rule.delay_ms * 1000000;
        r->io.cb = delayed;
        r->io.engine = eng;
        r->io.ctx = b;
        if (eng->ops->queue(eng, &r->io) == 0)
            return;
        if (!f->warned) {
            log_warn(b->name, "fault injection: the %s engine cannot delay; not delaying",
                     eng->ops->name);
            f->warned = true;
        }
    }
    if (f->rule.err)
        r->done(r, -f->rule.err);
    else
        vblk_bdev_submit(b->child, eng, r);
}

const struct vblk_bdev_ops vblk_bdev_faulty = {
    .name = "faulty",
    .filter = true,
    .single_thread = true,
    .open = faulty_open,
    .close = faulty_close,
    .submit = faulty_submit,
};
