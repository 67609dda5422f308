/* options.h - the command line: --export key=value,... parsing and validation.
 *
 * Owns: turning one --export argument into a checked struct vblk_export_opts, with an error
 * message that names the key, the bad value and what is allowed.  No side effects: nothing is
 * opened or created here, so a bad option never leaves anything half-started.
 */
#ifndef VBLK_OPTIONS_H
#define VBLK_OPTIONS_H

#include <limits.h>
#include <stdbool.h>
#include <stdint.h>

#include "bdev/bdev.h"
#include "engine/engine.h"
#include "util/size.h"

#define VBLK_SERIAL_MAX      20 /* VIRTIO_BLK_ID_BYTES */
#define VBLK_MAX_IOTHREADS   64
#define VBLK_DEFAULT_POLL_US 1000 /* adaptive polling window limit, see iothread.h */
#define VBLK_ID_MAX          63
#define VBLK_SOCK_MAX        107 /* sizeof(sun_path) - 1 */

struct vblk_export_opts {
    char id[VBLK_ID_MAX + 1];
    char file[PATH_MAX];
    char socket[VBLK_SOCK_MAX + 1];
    bool readonly;
    const struct vblk_engine_ops *engine;
    enum vblk_cache cache;
    unsigned num_queues;
    unsigned queue_size; /* largest vring accepted */
    bool discard_unmap;
    bool has_serial;
    char serial[VBLK_SERIAL_MAX + 1];
    unsigned logical_block_size;
    bool null;          /* file=null://SIZE */
    uint64_t null_size; /* bytes */
    bool read_zeroes;   /* null: zero-fill reads (on) */
    unsigned poll_us;   /* I/O thread busy-polls this long after the last work (0: never) */
    unsigned iothreads; /* I/O threads of this export; queues are spread over them */
    enum vblk_image_format format;
    uint64_t l2_cache_size;       /* qcow2: bytes of L2 tables cached (0: default) */
    uint64_t refcount_cache_size; /* qcow2: bytes of refcount blocks cached (0: default) */
    unsigned rerror, werror;      /* enum vblk_error_policy (blk/virtio_blk.h) */
    struct vblk_fault_conf fault; /* inject-*: fault injection for tests */
    bool no_lock;                 /* locking=off */
};

/* The storage part of o, for the block-driver layer (pointers into o). */
struct vblk_bdev_conf vblk_opts_bdev_conf(const struct vblk_export_opts *o);

/* Defaults: aio=io_uring, cache=none, num-queues=1, queue-size=1024, discard=unmap,
 * logical-block-size=512, serial=<id>, read-zeroes=on, poll-us=1000, iothreads=1,
 * rerror=report, werror=enospc (as QEMU). */
void vblk_opts_defaults(struct vblk_export_opts *o);

/* Parse "key=value,..." (",," is a literal comma in a value).  0, or -EINVAL with err set. */
int vblk_opts_parse_export(const char *arg, struct vblk_export_opts *o, char *err, size_t errlen);

const char *vblk_cache_name(enum vblk_cache c);

#endif
