/* options.c - see options.h. */
#include "options.h"

#include <errno.h>
#include <stddef.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <json-c/json.h>

#include "util/kv.h"

static const char *const cache_names[] = {
    [VBLK_CACHE_NONE] = "none",
    [VBLK_CACHE_WRITEBACK] = "writeback",
    [VBLK_CACHE_WRITETHROUGH] = "writethrough",
    [VBLK_CACHE_DIRECTSYNC] = "directsync",
    [VBLK_CACHE_UNSAFE] = "unsafe",
};

const char *vblk_cache_name(enum vblk_cache c)
{
    return cache_names[c];
}

void vblk_opts_defaults(struct vblk_export_opts *o)
{
    memset(o, 0, sizeof(*o));
    o->engine = &vblk_engine_uring;
    o->cache = VBLK_CACHE_NONE;
    o->num_queues = 1;
    o->queue_size = 1024;
    o->discard_unmap = true;
    o->logical_block_size = 512;
    o->read_zeroes = true;
    o->fixed_buffers = false; /* pins guest memory: unsafe with balloon / free page reporting */
    o->poll_us = VBLK_DEFAULT_POLL_US;
    o->iothreads = 1;
    o->rerror = 0; /* report */
    o->werror = 3; /* enospc */
    o->timeout_s = 30;
    o->reconnect_ms = 250;
}

static int fail(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return -EINVAL;
}

static int parse_uint(const char *s, unsigned min, unsigned max, unsigned *out)
{
    char *end;
    unsigned long v;

    if (!*s || *s == '-')
        return -EINVAL;
    errno = 0;
    v = strtoul(s, &end, 10);
    if (errno || *end || v < min || v > max)
        return -EINVAL;
    *out = (unsigned)v;
    return 0;
}

static int parse_bool(const char *s, bool *out)
{
    if (!strcmp(s, "on") || !strcmp(s, "true") || !strcmp(s, "yes")) {
        *out = true;
        return 0;
    }
    if (!strcmp(s, "off") || !strcmp(s, "false") || !strcmp(s, "no")) {
        *out = false;
        return 0;
    }
    return -EINVAL;
}

static int set_string(char *dst, size_t cap, const char *v)
{
    if (strlen(v) >= cap)
        return -ENAMETOOLONG;
    memcpy(dst, v, strlen(v) + 1);
    return 0;
}

/* ---- the schema: one setter and one getter per key ---- */

#define SETTER(fn)                                                                                 \
    static int fn(struct vblk_export_opts *o, const char *key, const char *v, char *err,           \
                  size_t errlen)
#define GETTER(fn)                                                                                 \
    static void fn(const struct vblk_export_opts *o, const char *key, char *buf, size_t cap)

static bool id_char_ok(char c)
{
    return c == '-' || c == '_' || c == '.' || (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') ||
           (c >= 'A' && c <= 'Z');
}

SETTER(set_id)
{
    if (!*v || set_string(o->id, sizeof(o->id), v) < 0)
        return fail(err, errlen, "id='%s': must be 1 to %d characters", v, VBLK_ID_MAX);
    for (const char *p = v; *p; p++) {
        if (!id_char_ok(*p))
            return fail(err, errlen, "id='%s': allowed characters are A-Z a-z 0-9 - _ .", v);
    }
    return 0;
}
GETTER(get_id)
{
    snprintf(buf, cap, "%s", o->id);
}

SETTER(set_file)
{
    if (!*v || set_string(o->file, sizeof(o->file), v) < 0)
        return fail(err, errlen, "file='%s': must be a path (or null://SIZE)", v);
    o->null = false;
    if (!strncmp(v, "null://", 7)) {
        if (vblk_parse_size(v + 7, &o->null_size) < 0 || o->null_size < 512)
            return fail(err, errlen,
                        "file='%s': null://SIZE needs a size of at least 512 bytes, e.g. null://1G",
                        v);
        o->null = true;
    }
    return 0;
}
GETTER(get_file)
{
    snprintf(buf, cap, "%s", o->file);
}

SETTER(set_socket)
{
    if (!*v || set_string(o->socket, sizeof(o->socket), v) < 0)
        return fail(err, errlen, "socket='%s': must be a path of 1 to %d bytes", v, VBLK_SOCK_MAX);
    return 0;
}
GETTER(get_socket)
{
    snprintf(buf, cap, "%s", o->socket);
}

SETTER(set_readonly)
{
    if (parse_bool(v, &o->readonly) < 0)
        return fail(err, errlen, "readonly='%s': allowed values are on, off", v);
    return 0;
}
GETTER(get_readonly)
{
    snprintf(buf, cap, "%s", o->readonly ? "on" : "off");
}

SETTER(set_aio)
{
    const struct vblk_engine_ops *e = vblk_engine_find(v);

    if (!e || e == &vblk_engine_null)
        return fail(err, errlen, "aio='%s': allowed values are io_uring, native, threads", v);
    o->engine = e;
    return 0;
}
GETTER(get_aio)
{
    snprintf(buf, cap, "%s", o->null ? "none" : o->engine->name);
}

SETTER(set_cache)
{
    unsigned i;

    for (i = 0; i < sizeof(cache_names) / sizeof(cache_names[0]); i++) {
        if (!strcmp(v, cache_names[i]))
            break;
    }
    if (i == sizeof(cache_names) / sizeof(cache_names[0]))
        return fail(err, errlen,
                    "cache='%s': allowed values are none, writeback, writethrough, directsync, "
                    "unsafe",
                    v);
    o->cache = (enum vblk_cache)i;
    return 0;
}
GETTER(get_cache)
{
    snprintf(buf, cap, "%s", cache_names[o->cache]);
}

SETTER(set_num_queues)
{
    if (parse_uint(v, 1, 64, &o->num_queues) < 0)
        return fail(err, errlen, "num-queues='%s': must be an integer from 1 to 64", v);
    return 0;
}
GETTER(get_num_queues)
{
    snprintf(buf, cap, "%u", o->num_queues);
}

SETTER(set_queue_size)
{
    if (parse_uint(v, 2, 1024, &o->queue_size) < 0 || (o->queue_size & (o->queue_size - 1)))
        return fail(err, errlen, "queue-size='%s': must be a power of two from 2 to 1024", v);
    return 0;
}
GETTER(get_queue_size)
{
    snprintf(buf, cap, "%u", o->queue_size);
}

SETTER(set_discard)
{
    if (!strcmp(v, "unmap") || !strcmp(v, "on"))
        o->discard_unmap = true;
    else if (!strcmp(v, "ignore") || !strcmp(v, "off"))
        o->discard_unmap = false;
    else
        return fail(err, errlen, "discard='%s': allowed values are unmap, ignore", v);
    return 0;
}
GETTER(get_discard)
{
    snprintf(buf, cap, "%s", o->discard_unmap ? "unmap" : "ignore");
}

SETTER(set_serial)
{
    if (set_string(o->serial, sizeof(o->serial), v) < 0)
        return fail(err, errlen, "serial='%s': at most %d characters", v, VBLK_SERIAL_MAX);
    o->has_serial = true;
    return 0;
}
GETTER(get_serial)
{
    snprintf(buf, cap, "%s", o->serial);
}

SETTER(set_lbs)
{
    uint64_t sz;

    if (vblk_parse_size(v, &sz) < 0 || sz < 512 || sz > 65536 || (sz & (sz - 1)))
        return fail(err, errlen, "logical-block-size='%s': must be a power of two from 512 to 64k",
                    v);
    o->logical_block_size = (unsigned)sz;
    return 0;
}
GETTER(get_lbs)
{
    snprintf(buf, cap, "%u", o->logical_block_size);
}

SETTER(set_poll_us)
{
    if (parse_uint(v, 0, 1000000, &o->poll_us) < 0)
        return fail(err, errlen, "poll-us='%s': must be an integer from 0 to 1000000", v);
    return 0;
}
GETTER(get_poll_us)
{
    snprintf(buf, cap, "%u", o->poll_us);
}

SETTER(set_iothreads)
{
    if (parse_uint(v, 1, VBLK_MAX_IOTHREADS, &o->iothreads) < 0)
        return fail(err, errlen, "iothreads='%s': must be an integer from 1 to %d", v,
                    VBLK_MAX_IOTHREADS);
    return 0;
}
GETTER(get_iothreads)
{
    snprintf(buf, cap, "%u", o->iothreads);
}

SETTER(set_read_zeroes)
{
    if (parse_bool(v, &o->read_zeroes) < 0)
        return fail(err, errlen, "read-zeroes='%s': allowed values are on, off", v);
    return 0;
}
GETTER(get_read_zeroes)
{
    snprintf(buf, cap, "%s", o->read_zeroes ? "on" : "off");
}

SETTER(set_fixed_buffers)
{
    if (parse_bool(v, &o->fixed_buffers) < 0)
        return fail(err, errlen, "fixed-buffers='%s': allowed values are on, off", v);
    return 0;
}
GETTER(get_fixed_buffers)
{
    snprintf(buf, cap, "%s", o->fixed_buffers ? "on" : "off");
}

static const char *const format_names[] = {
    [VBLK_FORMAT_RAW] = "raw",
    [VBLK_FORMAT_QCOW2] = "qcow2",
    [VBLK_FORMAT_AUTO] = "auto",
};

SETTER(set_format)
{
    for (unsigned i = 0; i < 3; i++) {
        if (!strcmp(v, format_names[i])) {
            o->format = (enum vblk_image_format)i;
            return 0;
        }
    }
    return fail(err, errlen, "format='%s': allowed values are raw, qcow2, auto", v);
}
GETTER(get_format)
{
    snprintf(buf, cap, "%s", format_names[o->format]);
}

SETTER(set_cache_size)
{
    uint64_t sz;

    if (vblk_parse_size(v, &sz) < 0 || sz > (1ull << 32))
        return fail(err, errlen, "%s='%s': must be a size up to 4G, e.g. 1M", key, v);
    if (key[0] == 'l')
        o->l2_cache_size = sz;
    else
        o->refcount_cache_size = sz;
    return 0;
}
GETTER(get_cache_size)
{
    snprintf(buf, cap, "%llu",
             (unsigned long long)(key[0] == 'l' ? o->l2_cache_size : o->refcount_cache_size));
}

SETTER(set_locking)
{
    bool on;

    if (parse_bool(v, &on) < 0)
        return fail(err, errlen, "locking='%s': allowed values are on, off", v);
    o->no_lock = !on;
    return 0;
}
GETTER(get_locking)
{
    snprintf(buf, cap, "%s", o->no_lock ? "off" : "on");
}

static const char *const policy_names[] = {"report", "ignore", "stop", "enospc"};

SETTER(set_policy)
{
    unsigned i;

    for (i = 0; i < 4 && strcmp(v, policy_names[i]); i++)
        ;
    if (i == 4)
        return fail(err, errlen, "%s='%s': allowed values are report, ignore, stop, enospc", key,
                    v);
    if (key[0] == 'r')
        o->rerror = i;
    else
        o->werror = i;
    return 0;
}
GETTER(get_policy)
{
    snprintf(buf, cap, "%s", policy_names[key[0] == 'r' ? o->rerror : o->werror]);
}

static const char *const op_names[] = {"read", "write", "flush", "discard", "write-zeroes"};

SETTER(set_inject_ops)
{
    char tmp[128], *save = NULL, *t;

    if (set_string(tmp, sizeof(tmp), v) < 0)
        return fail(err, errlen, "inject-ops='%s': too long", v);
    o->fault.ops = 0;
    for (t = strtok_r(tmp, "+", &save); t; t = strtok_r(NULL, "+", &save)) {
        unsigned i;

        for (i = 0; i < 5 && strcmp(t, op_names[i]); i++)
            ;
        if (i == 5)
            return fail(err, errlen,
                        "inject-ops='%s': a '+' list of read, write, flush, discard, write-zeroes",
                        v);
        o->fault.ops |= 1u << i;
    }
    return 0;
}
GETTER(get_inject_ops)
{
    size_t n = 0;

    buf[0] = '\0';
    for (unsigned i = 0; i < 5; i++) {
        if (o->fault.ops & (1u << i))
            n +=
                (size_t)snprintf(buf + n, n < cap ? cap - n : 0, "%s%s", n ? "+" : "", op_names[i]);
    }
}

SETTER(set_inject_errno)
{
    unsigned e;

    if (!strcmp(v, "EIO"))
        o->fault.err = EIO;
    else if (!strcmp(v, "ENOSPC"))
        o->fault.err = ENOSPC;
    else if (parse_uint(v, 1, 4095, &e) == 0)
        o->fault.err = (int)e;
    else
        return fail(err, errlen, "inject-errno='%s': EIO, ENOSPC or a number 1-4095", v);
    return 0;
}
GETTER(get_inject_errno)
{
    snprintf(buf, cap, "%d", o->fault.err);
}

SETTER(set_inject_range)
{
    uint64_t n;

    if (vblk_parse_size(v, &n) < 0)
        return fail(err, errlen, "%s='%s': must be a number (k/m/g/t suffixes allowed)", key, v);
    if (key[7] == 'o')
        o->fault.offset = n;
    else if (key[7] == 'l')
        o->fault.length = n;
    else
        o->fault.count = n;
    return 0;
}
GETTER(get_inject_range)
{
    snprintf(buf, cap, "%llu",
             (unsigned long long)(key[7] == 'o'   ? o->fault.offset
                                  : key[7] == 'l' ? o->fault.length
                                                  : o->fault.count));
}

SETTER(set_inject_delay)
{
    if (parse_uint(v, 1, 600000, &o->fault.delay_ms) < 0)
        return fail(err, errlen, "inject-delay-ms='%s': 1 to 600000", v);
    return 0;
}
GETTER(get_inject_delay)
{
    snprintf(buf, cap, "%u", o->fault.delay_ms);
}

SETTER(set_inject_rate)
{
    if (parse_uint(v, 1, 100, &o->fault.rate) < 0)
        return fail(err, errlen, "inject-rate='%s': a percentage from 1 to 100", v);
    return 0;
}
GETTER(get_inject_rate)
{
    snprintf(buf, cap, "%u", o->fault.rate);
}

SETTER(set_type)
{
    if (strcmp(v, "vhost-user-blk"))
        return fail(err, errlen, "type='%s': the only export type is vhost-user-blk", v);
    return 0;
}
GETTER(get_type)
{
    snprintf(buf, cap, "vhost-user-blk");
}

SETTER(set_throttle)
{
    return vblk_throttle_conf_set(&o->throttle, key, v, err, errlen) == 0 ? 0 : -EINVAL;
}
GETTER(get_throttle)
{
    vblk_throttle_conf_get(&o->throttle, key, buf, cap);
}

static const char *const protocol_names[] = {
    [VBLK_PROTO_FILE] = "file",
    [VBLK_PROTO_NULL] = "null",
    [VBLK_PROTO_NBD] = "nbd",
    [VBLK_PROTO_RBD] = "rbd",
};

SETTER(set_driver)
{
    for (unsigned i = 0; i < 4; i++) {
        if (!strcmp(v, protocol_names[i])) {
            o->protocol = (enum vblk_protocol)i;
            o->has_driver = true;
            return 0;
        }
    }
    return fail(err, errlen, "driver='%s': allowed values are file, null, nbd, rbd", v);
}
GETTER(get_driver)
{
    snprintf(buf, cap, "%s", protocol_names[o->protocol]);
}

/* A string key stored in a fixed buffer of o. */
static char *string_field(struct vblk_export_opts *o, const char *key, size_t *cap)
{
    static const struct {
        const char *key;
        size_t off, cap;
    } f[] = {
        {"uri", offsetof(struct vblk_export_opts, uri), sizeof(o->uri)},
        {"pool", offsetof(struct vblk_export_opts, pool), sizeof(o->pool)},
        {"image", offsetof(struct vblk_export_opts, image), sizeof(o->image)},
        {"snap", offsetof(struct vblk_export_opts, snap), sizeof(o->snap)},
        {"user", offsetof(struct vblk_export_opts, user), sizeof(o->user)},
        {"conf", offsetof(struct vblk_export_opts, rbd_conf), sizeof(o->rbd_conf)},
    };

    for (unsigned i = 0; i < sizeof(f) / sizeof(f[0]); i++) {
        if (!strcmp(f[i].key, key)) {
            *cap = f[i].cap;
            return (char *)o + f[i].off;
        }
    }
    return NULL;
}

SETTER(set_string_key)
{
    size_t cap = 0;
    char *dst = string_field(o, key, &cap);

    if (!dst || !*v || set_string(dst, cap, v) < 0)
        return fail(err, errlen, "%s='%s': must be 1 to %zu characters", key, v, cap - 1);
    for (const char *p = v; *p; p++) {
        if ((unsigned char)*p < 0x20)
            return fail(err, errlen, "%s: control characters are not allowed", key);
    }
    return 0;
}
GETTER(get_string_key)
{
    size_t n;
    const char *src = string_field((struct vblk_export_opts *)o, key, &n);

    snprintf(buf, cap, "%s", src ? src : "");
}

SETTER(set_nbd_time)
{
    unsigned *dst = key[0] == 't' ? &o->timeout_s : &o->reconnect_ms;

    if (parse_uint(v, 0, key[0] == 't' ? 86400 : 60000, dst) < 0)
        return fail(err, errlen, "%s='%s': must be an integer from 0 to %u", key, v,
                    key[0] == 't' ? 86400 : 60000);
    return 0;
}
GETTER(get_nbd_time)
{
    snprintf(buf, cap, "%u", key[0] == 't' ? o->timeout_s : o->reconnect_ms);
}

/* A CPU list: "2", "2:5", "0-3:6" (':' or ',', which --export spells ",,"; at most
 * VBLK_MAX_IOTHREADS CPUs, each below 4096). */
SETTER(set_cpus)
{
    const char *p = v;

    o->ncpus = 0;
    while (*p) {
        char *end;
        unsigned long a, b;

        if (*p < '0' || *p > '9')
            goto bad;
        a = b = strtoul(p, &end, 10);
        if (*end == '-') {
            if (end[1] < '0' || end[1] > '9')
                goto bad;
            b = strtoul(end + 1, &end, 10);
        }
        if (a > b || b >= 4096 || (*end && *end != ',' && *end != ':') || (*end && !end[1]))
            goto bad;
        for (unsigned long c = a; c <= b; c++) {
            if (o->ncpus == VBLK_MAX_IOTHREADS)
                goto bad;
            o->cpus[o->ncpus++] = (uint16_t)c;
        }
        p = *end ? end + 1 : end;
    }
    if (o->ncpus)
        return 0;
bad:
    o->ncpus = 0;
    return fail(err, errlen,
                "iothread-cpus='%s': a list of CPUs such as 2 or 2:3 or 0-3:6 (at most %d, each "
                "below 4096)",
                v, VBLK_MAX_IOTHREADS);
}
GETTER(get_cpus)
{
    size_t n = 0;

    buf[0] = '\0';
    for (unsigned i = 0; i < o->ncpus && n < cap; i++)
        n += (size_t)snprintf(buf + n, cap - n, "%s%u", i ? ":" : "", o->cpus[i]);
}

#define KEY(n, f, s, g)                                                                            \
    {                                                                                              \
        .name = n, .flags = f, .set = s, .get = g                                                  \
    }

const struct vblk_opt_key vblk_opt_keys[] = {
    KEY("type", VBLK_OPT_HIDDEN, set_type, get_type),
    KEY("id", VBLK_OPT_REQUIRED, set_id, get_id),
    KEY("driver", 0, set_driver, get_driver),
    KEY("file", 0, set_file, get_file),
    KEY("socket", VBLK_OPT_REQUIRED, set_socket, get_socket),
    KEY("readonly", VBLK_OPT_LIVE, set_readonly, get_readonly),
    KEY("aio", 0, set_aio, get_aio),
    KEY("cache", 0, set_cache, get_cache),
    KEY("num-queues", 0, set_num_queues, get_num_queues),
    KEY("queue-size", 0, set_queue_size, get_queue_size),
    KEY("discard", 0, set_discard, get_discard),
    KEY("serial", 0, set_serial, get_serial),
    KEY("logical-block-size", 0, set_lbs, get_lbs),
    KEY("read-zeroes", 0, set_read_zeroes, get_read_zeroes),
    KEY("poll-us", VBLK_OPT_LIVE, set_poll_us, get_poll_us),
    KEY("iothreads", 0, set_iothreads, get_iothreads),
    KEY("iothread-cpus", 0, set_cpus, get_cpus),
    KEY("format", 0, set_format, get_format),
    KEY("l2-cache-size", 0, set_cache_size, get_cache_size),
    KEY("refcount-cache-size", 0, set_cache_size, get_cache_size),
    KEY("locking", 0, set_locking, get_locking),
    KEY("fixed-buffers", 0, set_fixed_buffers, get_fixed_buffers),
    KEY("rerror", 0, set_policy, get_policy),
    KEY("werror", 0, set_policy, get_policy),
#define THROTTLE(n) KEY(n, VBLK_OPT_LIVE, set_throttle, get_throttle)
    THROTTLE("iops-total"),
    THROTTLE("iops-total-max"),
    THROTTLE("iops-total-max-length"),
    THROTTLE("iops-read"),
    THROTTLE("iops-read-max"),
    THROTTLE("iops-read-max-length"),
    THROTTLE("iops-write"),
    THROTTLE("iops-write-max"),
    THROTTLE("iops-write-max-length"),
    THROTTLE("bps-total"),
    THROTTLE("bps-total-max"),
    THROTTLE("bps-total-max-length"),
    THROTTLE("bps-read"),
    THROTTLE("bps-read-max"),
    THROTTLE("bps-read-max-length"),
    THROTTLE("bps-write"),
    THROTTLE("bps-write-max"),
    THROTTLE("bps-write-max-length"),
    THROTTLE("throttle-group"),
    KEY("uri", VBLK_OPT_NET, set_string_key, get_string_key),
    KEY("timeout", VBLK_OPT_NET, set_nbd_time, get_nbd_time),
    KEY("reconnect-delay-ms", VBLK_OPT_NET, set_nbd_time, get_nbd_time),
    KEY("pool", VBLK_OPT_NET, set_string_key, get_string_key),
    KEY("image", VBLK_OPT_NET, set_string_key, get_string_key),
    KEY("snap", VBLK_OPT_NET, set_string_key, get_string_key),
    KEY("conf", VBLK_OPT_NET, set_string_key, get_string_key),
    KEY("user", VBLK_OPT_NET, set_string_key, get_string_key),
    KEY("inject-ops", VBLK_OPT_FAULT, set_inject_ops, get_inject_ops),
    KEY("inject-errno", VBLK_OPT_FAULT, set_inject_errno, get_inject_errno),
    KEY("inject-offset", VBLK_OPT_FAULT, set_inject_range, get_inject_range),
    KEY("inject-length", VBLK_OPT_FAULT, set_inject_range, get_inject_range),
    KEY("inject-rate", VBLK_OPT_FAULT, set_inject_rate, get_inject_rate),
    KEY("inject-count", VBLK_OPT_FAULT, set_inject_range, get_inject_range),
    KEY("inject-delay-ms", VBLK_OPT_FAULT, set_inject_delay, get_inject_delay),
    {.name = NULL},
};

const struct vblk_opt_key *vblk_opt_find(const char *key)
{
    for (const struct vblk_opt_key *k = vblk_opt_keys; k->name; k++) {
        if (!strcmp(k->name, key))
            return k;
    }
    return NULL;
}

static int unknown_key(const char *key, char *err, size_t errlen)
{
    size_t n = (size_t)snprintf(err, errlen, "unknown key '%s' (allowed:", key);

    for (const struct vblk_opt_key *k = vblk_opt_keys; k->name && n < errlen; k++) {
        if (!(k->flags & VBLK_OPT_HIDDEN))
            n += (size_t)snprintf(err + n, errlen - n, "%s %s", k == vblk_opt_keys + 1 ? "" : ",",
                                  k->name);
    }
    if (n < errlen)
        snprintf(err + n, errlen - n, ")");
    return -EINVAL;
}

int vblk_opts_set(struct vblk_export_opts *o, const char *key, const char *v, char *err,
                  size_t errlen)
{
    const struct vblk_opt_key *k = vblk_opt_find(key);

    if (!k)
        return unknown_key(key, err, errlen);
    return k->set(o, key, v, err, errlen);
}

void vblk_opts_get(const struct vblk_export_opts *o, const struct vblk_opt_key *k, char *buf,
                   size_t cap)
{
    k->get(o, k->name, buf, cap);
}

int vblk_opts_finish(struct vblk_export_opts *o, const bool *given, char *err, size_t errlen)
{
    for (const struct vblk_opt_key *k = vblk_opt_keys; k->name; k++) {
        if ((k->flags & VBLK_OPT_REQUIRED) && !given[k - vblk_opt_keys])
            return fail(err, errlen, "missing %s=%s", k->name,
                        !strcmp(k->name, "id") ? "NAME" : "PATH");
    }
    if (vblk_throttle_conf_check(&o->throttle, err, errlen) < 0)
        return -EINVAL;
    if (!o->has_driver)
        o->protocol = o->null ? VBLK_PROTO_NULL : VBLK_PROTO_FILE;
    switch (o->protocol) {
    case VBLK_PROTO_FILE:
    case VBLK_PROTO_NULL:
        if (!given[vblk_opt_find("file") - vblk_opt_keys])
            return fail(err, errlen, "missing file=PATH");
        if (o->null != (o->protocol == VBLK_PROTO_NULL))
            return fail(err, errlen, "driver=%s: file='%s' %s", protocol_names[o->protocol],
                        o->file, o->null ? "is null://" : "is not null://SIZE");
        if (o->uri[0] || o->pool[0] || o->image[0])
            return fail(err, errlen, "uri=, pool=, image= need driver=nbd or driver=rbd");
        break;
    case VBLK_PROTO_NBD:
        if (o->file[0] || !o->uri[0])
            return fail(err, errlen,
                        "driver=nbd: give uri=nbd://HOST[:PORT]/NAME or "
                        "nbd+unix:///NAME?socket=PATH, and no file=");
        if (strncmp(o->uri, "nbd://", 6) && strncmp(o->uri, "nbd+unix://", 11))
            return fail(err, errlen, "uri='%s': must start with nbd:// or nbd+unix://", o->uri);
        break;
    case VBLK_PROTO_RBD:
        if (o->file[0] || !o->pool[0] || !o->image[0])
            return fail(err, errlen, "driver=rbd: give pool= and image= (and no file=)");
        break;
    }
    if (o->protocol != VBLK_PROTO_NBD && (o->timeout_s != 30 || o->reconnect_ms != 250))
        return fail(err, errlen, "timeout= and reconnect-delay-ms= need driver=nbd");
    if (o->protocol != VBLK_PROTO_RBD && (o->snap[0] || o->rbd_conf[0] || o->user[0]))
        return fail(err, errlen, "snap=, conf=, user= need driver=rbd");
    if (o->iothreads > o->num_queues)
        return fail(err, errlen, "iothreads=%u: more I/O threads than queues (num-queues=%u)",
                    o->iothreads, o->num_queues);
    if (o->format == VBLK_FORMAT_AUTO && !o->readonly)
        return fail(err, errlen,
                    "format=auto: probing the format of a writable image is unsafe (a raw image "
                    "can pose as any format); say format=raw or format=qcow2, or readonly=on");
    if (o->null && o->format != VBLK_FORMAT_RAW)
        return fail(err, errlen, "format=: null:// stores nothing and is always raw");
    if (o->fault.ops) {
        if (!o->fault.err && !o->fault.delay_ms)
            o->fault.err = EIO; /* a delay alone passes the requests on afterwards */
        if (!o->fault.rate)
            o->fault.rate = 100;
    }
    if (o->null)
        o->engine = &vblk_engine_null;
    if (!o->has_serial) {
        size_t l = strlen(o->id) < VBLK_SERIAL_MAX ? strlen(o->id) : VBLK_SERIAL_MAX;

        memcpy(o->serial, o->id, l);
        o->serial[l] = '\0';
    }
    return 0;
}

static int set_given(struct vblk_export_opts *o, bool *given, const char *key, const char *v,
                     char *err, size_t errlen)
{
    const struct vblk_opt_key *k = vblk_opt_find(key);

    if (!k)
        return unknown_key(key, err, errlen);
    given[k - vblk_opt_keys] = true;
    return k->set(o, key, v, err, errlen);
}

int vblk_opts_parse_export(const char *arg, struct vblk_export_opts *o, char *err, size_t errlen)
{
    bool given[VBLK_OPT_KEYS_MAX] = {false};
    size_t n = strlen(arg);
    char *buf = malloc(n + 1);
    const char *p = arg;
    int r = 0;

    if (!buf)
        return fail(err, errlen, "out of memory");
    for (;;) {
        char *key = NULL, *val = NULL;
        int k = vblk_kv_next(&p, buf, &key, &val);

        if (k == 0)
            break;
        if (k == -1) {
            r = fail(err, errlen, "'%s' is not key=value", key);
            goto out;
        }
        if (k == -2) {
            r = fail(err, errlen, "empty key in '%s'", arg);
            goto out;
        }
        r = set_given(o, given, key, val, err, errlen);
        if (r < 0)
            goto out;
    }
    r = vblk_opts_finish(o, given, err, errlen);
out:
    free(buf);
    return r;
}

int vblk_opts_json_value(struct json_object *v, char *buf, size_t cap)
{
    switch (json_object_get_type(v)) {
    case json_type_string:
        if ((size_t)json_object_get_string_len(v) >= cap ||
            memchr(json_object_get_string(v), '\0', (size_t)json_object_get_string_len(v)))
            return -EINVAL;
        memcpy(buf, json_object_get_string(v), (size_t)json_object_get_string_len(v) + 1);
        return 0;
    case json_type_boolean:
        snprintf(buf, cap, "%s", json_object_get_boolean(v) ? "on" : "off");
        return 0;
    case json_type_int:
        /* int64 or uint64 (json-c keeps which) */
        if (json_object_get_int64(v) < 0)
            snprintf(buf, cap, "%lld", (long long)json_object_get_int64(v));
        else
            snprintf(buf, cap, "%llu", (unsigned long long)json_object_get_uint64(v));
        return 0;
    default:
        return -EINVAL;
    }
}

int vblk_opts_from_json(struct json_object *obj, struct vblk_export_opts *o, const char *skip,
                        char *err, size_t errlen)
{
    bool given[VBLK_OPT_KEYS_MAX] = {false};
    char *val;
    int r = 0;

    if (!json_object_is_type(obj, json_type_object))
        return fail(err, errlen, "an export must be a JSON object of key: value");
    val = malloc(PATH_MAX + 1);
    if (!val)
        return fail(err, errlen, "out of memory");
    json_object_object_foreach(obj, key, jv)
    {
        if (skip && !strcmp(key, skip))
            continue;
        if (vblk_opts_json_value(jv, val, PATH_MAX + 1) < 0) {
            r = fail(err, errlen, "%s: the value must be a string, an integer or a boolean", key);
            goto out;
        }
        r = set_given(o, given, key, val, err, errlen);
        if (r < 0)
            goto out;
    }
    r = vblk_opts_finish(o, given, err, errlen);
out:
    free(val);
    return r;
}

struct json_object *vblk_opts_to_json(const struct vblk_export_opts *o)
{
    struct json_object *obj = json_object_new_object();
    char *buf = malloc(PATH_MAX + 1);

    if (!obj || !buf) {
        json_object_put(obj);
        free(buf);
        return NULL;
    }
    for (const struct vblk_opt_key *k = vblk_opt_keys; k->name; k++) {
        if ((k->flags & VBLK_OPT_HIDDEN) || ((k->flags & VBLK_OPT_FAULT) && !o->fault.ops))
            continue;
        if ((k->flags & VBLK_OPT_NET) &&
            !(o->protocol == VBLK_PROTO_NBD &&
              (k->set == set_nbd_time || !strcmp(k->name, "uri"))) &&
            !(o->protocol == VBLK_PROTO_RBD && k->set == set_string_key && strcmp(k->name, "uri")))
            continue; /* another driver's key */
        if (!strcmp(k->name, "file") && o->protocol >= VBLK_PROTO_NBD)
            continue;
        k->get(o, k->name, buf, PATH_MAX + 1);
        if (k->get == get_throttle &&
            (!buf[0] || !strcmp(buf, "0") || (strstr(k->name, "-max-length") && !strcmp(buf, "1"))))
            continue; /* a limit not set: listed only when used */
        json_object_object_add(obj, k->name, json_object_new_string(buf));
    }
    free(buf);
    return obj;
}

struct vblk_bdev_conf vblk_opts_bdev_conf(const struct vblk_export_opts *o)
{
    return (struct vblk_bdev_conf){
        .name = o->id,
        .file = o->file,
        .null = o->null,
        .null_size = o->null_size,
        .readonly = o->readonly,
        .cache = o->cache,
        .format = o->format,
        .lbs = o->logical_block_size,
        .discard_unmap = o->discard_unmap,
        .read_zeroes = o->read_zeroes,
        .iothreads = o->iothreads,
        .l2_cache_size = o->l2_cache_size,
        .refcount_cache_size = o->refcount_cache_size,
        .fault = o->fault,
        .no_lock = o->no_lock,
        .throttle = o->throttle,
        .protocol = o->protocol,
        .uri = o->uri,
        .timeout_s = o->timeout_s,
        .reconnect_ms = o->reconnect_ms,
        .pool = o->pool,
        .image = o->image,
        .snap = o->snap,
        .conf = o->rbd_conf,
        .user = o->user,
    };
}
