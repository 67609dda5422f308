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
    uint64_t l2_cache_size;             /* qcow2: bytes of L2 tables cached (0: default) */
    uint64_t refcount_cache_size;       /* qcow2: bytes of refcount blocks cached (0: default) */
    unsigned rerror, werror;            /* enum vblk_error_policy (blk/virtio_blk.h) */
    struct vblk_fault_conf fault;       /* inject-*: fault injection for tests */
    bool no_lock;                       /* locking=off */
    bool fixed_buffers;                 /* io_uring fixed buffers (off) */
    struct vblk_throttle_conf throttle; /* iops-*, bps-*, throttle-group (live) */
    enum vblk_protocol protocol;        /* driver=file|null|nbd|rbd (file= picks file or null) */
    bool has_driver;
    char uri[1024];        /* nbd */
    unsigned timeout_s;    /* nbd: fail held requests after this long without a server (30) */
    unsigned reconnect_ms; /* nbd: first reconnect delay, doubling up to 5 s (250) */
    char pool[128], image[256], snap[128], user[128]; /* rbd */
    char rbd_conf[PATH_MAX];                          /* rbd: ceph.conf ("" default) */
    unsigned ncpus;                                   /* iothread-cpus=: I/O thread i runs on */
    uint16_t cpus[VBLK_MAX_IOTHREADS];                /* cpus[i % ncpus]; 0 CPUs: unpinned */
};

/* The storage part of o, for the block-driver layer (pointers into o). */
struct vblk_bdev_conf vblk_opts_bdev_conf(const struct vblk_export_opts *o);

/* Defaults: aio=io_uring, cache=none, num-queues=1, queue-size=1024, discard=unmap,
 * logical-block-size=512, serial=<id>, read-zeroes=on, poll-us=1000, iothreads=1,
 * rerror=report, werror=enospc (as QEMU), fixed-buffers=off. */
void vblk_opts_defaults(struct vblk_export_opts *o);

/* The schema: every export key, once, for the command line (--export), the config file
 * (--config) and the RPC (export-add, export-set). */
#define VBLK_OPT_REQUIRED 1u  /* must be given */
#define VBLK_OPT_LIVE     2u  /* export-set may change it on a running export */
#define VBLK_OPT_HIDDEN   4u  /* accepted, not listed (type=vhost-user-blk) */
#define VBLK_OPT_FAULT    8u  /* fault injection: listed only when used */
#define VBLK_OPT_NET      16u /* a network driver's key (nbd, rbd): listed for that driver */
#define VBLK_OPT_KEYS_MAX 96

struct vblk_opt_key {
    const char *name;
    unsigned flags;
    /* parse v into o; 0 or -EINVAL with err naming the key, the value and what is allowed */
    int (*set)(struct vblk_export_opts *o, const char *key, const char *v, char *err,
               size_t errlen);
    /* the current value of key in o, as set() reads it */
    void (*get)(const struct vblk_export_opts *o, const char *key, char *buf, size_t cap);
};

extern const struct vblk_opt_key vblk_opt_keys[]; /* ends with a NULL name */
const struct vblk_opt_key *vblk_opt_find(const char *key);

/* Set one key (unknown keys are refused, naming the allowed ones).  0 or -EINVAL. */
int vblk_opts_set(struct vblk_export_opts *o, const char *key, const char *v, char *err,
                  size_t errlen);
/* The value of k in o, as a string. */
void vblk_opts_get(const struct vblk_export_opts *o, const struct vblk_opt_key *k, char *buf,
                   size_t cap);
/* After the keys: required keys (given[i]: vblk_opt_keys[i] was given), cross-key checks and
 * derived values (serial, null engine).  0 or -EINVAL with err set. */
int vblk_opts_finish(struct vblk_export_opts *o, const bool *given, char *err, size_t errlen);

/* Parse "key=value,..." (",," is a literal comma in a value).  0, or -EINVAL with err set. */
int vblk_opts_parse_export(const char *arg, struct vblk_export_opts *o, char *err, size_t errlen);

struct json_object;
/* A JSON object of the same keys (values: strings, integers, or booleans meaning on/off); the
 * member named skip (may be NULL) is ignored.  0, or -EINVAL with err set. */
int vblk_opts_from_json(struct json_object *obj, struct vblk_export_opts *o, const char *skip,
                        char *err, size_t errlen);
/* A JSON value as an option string (string, integer, boolean -> on/off).  0 or -EINVAL. */
int vblk_opts_json_value(struct json_object *v, char *buf, size_t cap);
/* Every listed key of o with its value (strings), a new object; NULL if out of memory. */
struct json_object *vblk_opts_to_json(const struct vblk_export_opts *o);

const char *vblk_cache_name(enum vblk_cache c);

#endif
