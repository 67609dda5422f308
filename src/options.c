/* options.c - see options.h. */
#include "options.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
    o->poll_us = VBLK_DEFAULT_POLL_US;
    o->iothreads = 1;
    o->rerror = 0; /* report */
    o->werror = 3; /* enospc */
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

/* Apply one key=value.  Returns 0 or -EINVAL with err set. */
static int apply(struct vblk_export_opts *o, const char *key, const char *v, unsigned *seen,
                 char *err, size_t errlen)
{
    if (!strcmp(key, "id")) {
        if (!*v || set_string(o->id, sizeof(o->id), v) < 0)
            return fail(err, errlen, "id='%s': must be 1 to %d characters", v, VBLK_ID_MAX);
        for (const char *p = v; *p; p++) {
            if (!(*p == '-' || *p == '_' || *p == '.' || (*p >= '0' && *p <= '9') ||
                  (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z')))
                return fail(err, errlen, "id='%s': allowed characters are A-Z a-z 0-9 - _ .", v);
        }
        *seen |= 1;
    } else if (!strcmp(key, "file")) {
        if (!*v || set_string(o->file, sizeof(o->file), v) < 0)
            return fail(err, errlen, "file='%s': must be a path (or null://SIZE)", v);
        o->null = false;
        if (!strncmp(v, "null://", 7)) {
            if (vblk_parse_size(v + 7, &o->null_size) < 0 || o->null_size < 512)
                return fail(err, errlen,
                            "file='%s': null://SIZE needs a size of at least 512 "
                            "bytes, e.g. null://1G",
                            v);
            o->null = true;
        }
        *seen |= 2;
    } else if (!strcmp(key, "socket")) {
        if (!*v || set_string(o->socket, sizeof(o->socket), v) < 0)
            return fail(err, errlen, "socket='%s': must be a path of 1 to %d bytes", v,
                        VBLK_SOCK_MAX);
        *seen |= 4;
    } else if (!strcmp(key, "readonly")) {
        if (parse_bool(v, &o->readonly) < 0)
            return fail(err, errlen, "readonly='%s': allowed values are on, off", v);
    } else if (!strcmp(key, "aio")) {
        const struct vblk_engine_ops *e = vblk_engine_find(v);

        if (!e || e == &vblk_engine_null)
            return fail(err, errlen, "aio='%s': allowed values are io_uring, native, threads", v);
        o->engine = e;
    } else if (!strcmp(key, "cache")) {
        unsigned i;

        for (i = 0; i < sizeof(cache_names) / sizeof(cache_names[0]); i++) {
            if (!strcmp(v, cache_names[i]))
                break;
        }
        if (i == sizeof(cache_names) / sizeof(cache_names[0]))
            return fail(err, errlen,
                        "cache='%s': allowed values are none, writeback, "
                        "writethrough, directsync, unsafe",
                        v);
        o->cache = (enum vblk_cache)i;
    } else if (!strcmp(key, "num-queues")) {
        if (parse_uint(v, 1, 64, &o->num_queues) < 0)
            return fail(err, errlen, "num-queues='%s': must be an integer from 1 to 64", v);
    } else if (!strcmp(key, "queue-size")) {
        if (parse_uint(v, 2, 1024, &o->queue_size) < 0 || (o->queue_size & (o->queue_size - 1)))
            return fail(err, errlen, "queue-size='%s': must be a power of two from 2 to 1024", v);
    } else if (!strcmp(key, "discard")) {
        if (!strcmp(v, "unmap") || !strcmp(v, "on"))
            o->discard_unmap = true;
        else if (!strcmp(v, "ignore") || !strcmp(v, "off"))
            o->discard_unmap = false;
        else
            return fail(err, errlen, "discard='%s': allowed values are unmap, ignore", v);
    } else if (!strcmp(key, "serial")) {
        if (set_string(o->serial, sizeof(o->serial), v) < 0)
            return fail(err, errlen, "serial='%s': at most %d characters", v, VBLK_SERIAL_MAX);
        o->has_serial = true;
    } else if (!strcmp(key, "logical-block-size")) {
        uint64_t sz;

        if (vblk_parse_size(v, &sz) < 0 || sz < 512 || sz > 65536 || (sz & (sz - 1)))
            return fail(err, errlen,
                        "logical-block-size='%s': must be a power of two from 512 "
                        "to 64k",
                        v);
        o->logical_block_size = (unsigned)sz;
    } else if (!strcmp(key, "poll-us")) {
        if (parse_uint(v, 0, 1000000, &o->poll_us) < 0)
            return fail(err, errlen, "poll-us='%s': must be an integer from 0 to 1000000", v);
    } else if (!strcmp(key, "iothreads")) {
        if (parse_uint(v, 1, VBLK_MAX_IOTHREADS, &o->iothreads) < 0)
            return fail(err, errlen, "iothreads='%s': must be an integer from 1 to %d", v,
                        VBLK_MAX_IOTHREADS);
    } else if (!strcmp(key, "read-zeroes")) {
        if (parse_bool(v, &o->read_zeroes) < 0)
            return fail(err, errlen, "read-zeroes='%s': allowed values are on, off", v);
    } else if (!strcmp(key, "format")) {
        if (!strcmp(v, "raw"))
            o->format = VBLK_FORMAT_RAW;
        else if (!strcmp(v, "qcow2"))
            o->format = VBLK_FORMAT_QCOW2;
        else if (!strcmp(v, "auto"))
            o->format = VBLK_FORMAT_AUTO;
        else
            return fail(err, errlen, "format='%s': allowed values are raw, qcow2, auto", v);
    } else if (!strcmp(key, "l2-cache-size") || !strcmp(key, "refcount-cache-size")) {
        uint64_t sz;

        if (vblk_parse_size(v, &sz) < 0 || sz > (1ull << 32))
            return fail(err, errlen, "%s='%s': must be a size up to 4G, e.g. 1M", key, v);
        if (key[0] == 'l')
            o->l2_cache_size = sz;
        else
            o->refcount_cache_size = sz;
    } else if (!strcmp(key, "locking")) {
        bool on;

        if (parse_bool(v, &on) < 0)
            return fail(err, errlen, "locking='%s': allowed values are on, off", v);
        o->no_lock = !on;
    } else if (!strcmp(key, "rerror") || !strcmp(key, "werror")) {
        static const char *const pol[] = {"report", "ignore", "stop", "enospc"};
        unsigned i;

        for (i = 0; i < 4 && strcmp(v, pol[i]); i++)
            ;
        if (i == 4)
            return fail(err, errlen, "%s='%s': allowed values are report, ignore, stop, enospc",
                        key, v);
        if (key[0] == 'r')
            o->rerror = i;
        else
            o->werror = i;
    } else if (!strcmp(key, "inject-ops")) {
        static const char *const ops[] = {"read", "write", "flush", "discard", "write-zeroes"};
        char buf[128], *save = NULL, *t;

        if (set_string(buf, sizeof(buf), v) < 0)
            return fail(err, errlen, "inject-ops='%s': too long", v);
        o->fault.ops = 0;
        for (t = strtok_r(buf, "+", &save); t; t = strtok_r(NULL, "+", &save)) {
            unsigned i;

            for (i = 0; i < 5 && strcmp(t, ops[i]); i++)
                ;
            if (i == 5)
                return fail(err, errlen,
                            "inject-ops='%s': a '+' list of read, write, flush, discard, "
                            "write-zeroes",
                            v);
            o->fault.ops |= 1u << i;
        }
    } else if (!strcmp(key, "inject-errno")) {
        unsigned e;

        if (!strcmp(v, "EIO"))
            o->fault.err = EIO;
        else if (!strcmp(v, "ENOSPC"))
            o->fault.err = ENOSPC;
        else if (parse_uint(v, 1, 4095, &e) == 0)
            o->fault.err = (int)e;
        else
            return fail(err, errlen, "inject-errno='%s': EIO, ENOSPC or a number 1-4095", v);
    } else if (!strcmp(key, "inject-offset") || !strcmp(key, "inject-length") ||
               !strcmp(key, "inject-count")) {
        uint64_t n;

        if (vblk_parse_size(v, &n) < 0)
            return fail(err, errlen, "%s='%s': must be a number (k/m/g/t suffixes allowed)", key,
                        v);
        if (key[7] == 'o')
            o->fault.offset = n;
        else if (key[7] == 'l')
            o->fault.length = n;
        else
            o->fault.count = n;
    } else if (!strcmp(key, "inject-delay-ms")) {
        if (parse_uint(v, 1, 600000, &o->fault.delay_ms) < 0)
            return fail(err, errlen, "inject-delay-ms='%s': 1 to 600000", v);
    } else if (!strcmp(key, "inject-rate")) {
        if (parse_uint(v, 1, 100, &o->fault.rate) < 0)
            return fail(err, errlen, "inject-rate='%s': a percentage from 1 to 100", v);
    } else if (!strcmp(key, "type")) {
        if (strcmp(v, "vhost-user-blk"))
            return fail(err, errlen, "type='%s': the only export type is vhost-user-blk", v);
    } else {
        return fail(err, errlen,
                    "unknown key '%s' (allowed: id, file, socket, readonly, aio, "
                    "cache, num-queues, queue-size, discard, serial, "
                    "logical-block-size, read-zeroes, poll-us, iothreads, format, "
                    "l2-cache-size, refcount-cache-size, locking, rerror, werror, inject-ops, "
                    "inject-errno, inject-offset, inject-length, inject-rate, inject-count, "
                    "inject-delay-ms)",
                    key);
    }
    return 0;
}

int vblk_opts_parse_export(const char *arg, struct vblk_export_opts *o, char *err, size_t errlen)
{
    size_t n = strlen(arg);
    char *buf = malloc(n + 1);
    const char *p = arg;
    unsigned seen = 0;
    int r = 0;

    if (!buf)
        return fail(err, errlen, "out of memory");
    while (*p) {
        char *key = buf, *val = NULL, *w = buf;

        /* key: up to '=' or ','; value: up to a single ',' with ",," meaning ',' */
        while (*p && *p != '=' && *p != ',')
            *w++ = *p++;
        *w++ = '\0';
        if (*p != '=') {
            r = fail(err, errlen, "'%s' is not key=value", key);
            goto out;
        }
        p++;
        val = w;
        while (*p) {
            if (*p == ',') {
                if (p[1] != ',')
                    break;
                p++;
            }
            *w++ = *p++;
        }
        *w = '\0';
        if (*p == ',')
            p++;
        if (!*key) {
            r = fail(err, errlen, "empty key in '%s'", arg);
            goto out;
        }
        r = apply(o, key, val, &seen, err, errlen);
        if (r < 0)
            goto out;
    }
    if (!(seen & 1))
        r = fail(err, errlen, "missing id=NAME");
    else if (!(seen & 2))
        r = fail(err, errlen, "missing file=PATH");
    else if (!(seen & 4))
        r = fail(err, errlen, "missing socket=PATH");
    if (!r && o->iothreads > o->num_queues)
        r = fail(err, errlen, "iothreads=%u: more I/O threads than queues (num-queues=%u)",
                 o->iothreads, o->num_queues);
    if (!r && o->format == VBLK_FORMAT_AUTO && !o->readonly)
        r = fail(err, errlen,
                 "format=auto: probing the format of a writable image is unsafe (a raw image "
                 "can pose as any format); say format=raw or format=qcow2, or readonly=on");
    if (!r && o->null && o->format != VBLK_FORMAT_RAW)
        r = fail(err, errlen, "format=: null:// stores nothing and is always raw");
    if (!r && o->fault.ops) {
        if (!o->fault.err && !o->fault.delay_ms)
            o->fault.err = EIO; /* a delay alone passes the requests on afterwards */
        if (!o->fault.rate)
            o->fault.rate = 100;
    }
    if (!r && o->null)
        o->engine = &vblk_engine_null;
    if (!r && !o->has_serial) {
        size_t l = strlen(o->id) < VBLK_SERIAL_MAX ? strlen(o->id) : VBLK_SERIAL_MAX;

        memcpy(o->serial, o->id, l);
        o->serial[l] = '\0';
    }
out:
    free(buf);
    return r;
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
    };
}
