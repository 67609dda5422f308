/* daemon.c - see daemon.h. */
#include "control/daemon.h"

#include <errno.h>
#include <json-c/json.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "control/advisor.h"
#include "control/metrics.h"
#include "control/rpc.h"
#include "export.h"
#include "mem/guest_mem.h"
#include "util/lathist.h"
#include "util/log.h"
#include "util/notify.h"
#include "util/size.h"

/* What woke the loop: epoll data points at one of these. */
enum tag_kind { TAG_SIGNAL, TAG_GUARD, TAG_RPC, TAG_METRICS, TAG_LISTEN, TAG_CONN };

struct dexp;
struct tag {
    enum tag_kind kind;
    struct dexp *x;
};

/* One export as the daemon keeps it: stable in memory (its driver stack and device point into
 * its options), freed after the event batch that removed it. */
struct dexp {
    struct vblk_export e;
    struct tag listen_tag, conn_tag;
    bool dead;
    struct dexp *next_dead;
    struct timespec added;
};

struct vblk_daemon {
    int epfd, sfd;
    struct dexp *exps[VBLK_MAX_EXPORTS];
    unsigned nexp;
    struct dexp *dead; /* removed in this batch, freed after it */
    struct vblk_rpc *rpc;
    struct vblk_metrics *metrics;
    bool running;
};

static struct tag sig_tag = {TAG_SIGNAL, NULL}, guard_tag = {TAG_GUARD, NULL},
                  rpc_tag = {TAG_RPC, NULL}, metrics_tag = {TAG_METRICS, NULL};

static int epoll_add(int epfd, int fd, void *ptr)
{
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = ptr};

    return epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) < 0 ? -errno : 0;
}

/* ---- exports ---- */

static struct dexp *find_export(struct vblk_daemon *d, const char *id)
{
    for (unsigned i = 0; i < d->nexp; i++) {
        if (!strcmp(d->exps[i]->e.opts.id, id))
            return d->exps[i];
    }
    return NULL;
}

unsigned vblk_daemon_num_exports(const struct vblk_daemon *d)
{
    return d->nexp;
}

int vblk_daemon_add_export(struct vblk_daemon *d, const struct vblk_export_opts *o, char *err,
                           size_t errlen)
{
    struct dexp *x;
    int r;

    if (find_export(d, o->id)) {
        snprintf(err, errlen, "export %s exists already", o->id);
        return -EEXIST;
    }
    for (unsigned i = 0; i < d->nexp; i++) {
        if (!strcmp(d->exps[i]->e.opts.socket, o->socket)) {
            snprintf(err, errlen, "export %s: socket=%s is used by export %s", o->id, o->socket,
                     d->exps[i]->e.opts.id);
            return -EEXIST;
        }
    }
    if (d->nexp == VBLK_MAX_EXPORTS) {
        snprintf(err, errlen, "export %s: at most %d exports", o->id, VBLK_MAX_EXPORTS);
        return -ENOSPC;
    }
    x = calloc(1, sizeof(*x));
    if (!x) {
        snprintf(err, errlen, "export %s: out of memory", o->id);
        return -ENOMEM;
    }
    x->e.opts = *o;
    x->listen_tag = (struct tag){TAG_LISTEN, x};
    x->conn_tag = (struct tag){TAG_CONN, x};
    clock_gettime(CLOCK_MONOTONIC, &x->added);
    r = vblk_export_start(&x->e, err, errlen);
    if (r < 0) {
        char msg[512];

        snprintf(msg, sizeof(msg), "%s", err);
        snprintf(err, errlen, "export %s: %s", o->id, msg);
        free(x);
        return r;
    }
    r = epoll_add(d->epfd, x->e.listen_fd, &x->listen_tag);
    if (r < 0) {
        snprintf(err, errlen, "export %s: epoll_ctl: %s", o->id, strerror(-r));
        vblk_export_stop(&x->e);
        free(x);
        return r;
    }
    d->exps[d->nexp++] = x;
    return 0;
}

/* Take x down (draining its front-end's I/O) and out of the list; freed after the batch. */
static void remove_export(struct vblk_daemon *d, struct dexp *x)
{
    unsigned i;

    for (i = 0; i < d->nexp && d->exps[i] != x; i++)
        ;
    if (i == d->nexp)
        return;
    memmove(&d->exps[i], &d->exps[i + 1], (d->nexp - i - 1) * sizeof(d->exps[0]));
    d->nexp--;
    vblk_export_stop(&x->e); /* closes its fds: they leave the epoll set */
    x->dead = true;
    x->next_dead = d->dead;
    d->dead = x;
}

static void free_dead(struct vblk_daemon *d)
{
    while (d->dead) {
        struct dexp *x = d->dead;

        d->dead = x->next_dead;
        if (x->e.vu.wedged)
            continue; /* a stuck I/O thread may still use its device: never freed */
        free(x);
    }
}

static void accept_conn(struct vblk_daemon *d, struct dexp *x)
{
    struct vblk_export *e = &x->e;
    int fd = accept4(e->listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);

    if (fd < 0)
        return;
    if (vblk_vu_attach(&e->vu, fd) < 0) {
        log_warn(e->opts.id, e->vu.wedged
                                 ? "refusing a front-end: the export was torn down"
                                 : "refusing a second front-end: one is already connected");
        close(fd);
        return;
    }
    if (epoll_add(d->epfd, fd, &x->conn_tag) < 0)
        vblk_vu_disconnect(&e->vu);
}

/* ---- config file ---- */

static int add_cb(void *opaque, const struct vblk_export_opts *o, char *err, size_t errlen)
{
    return vblk_daemon_add_export(opaque, o, err, errlen);
}

int vblk_daemon_load_config(struct vblk_daemon *d, const char *path, char *err, size_t errlen)
{
    return vblk_config_read(path, add_cb, d, err, errlen);
}

int vblk_config_read(const char *path,
                     int (*fn)(void *opaque, const struct vblk_export_opts *o, char *err,
                               size_t errlen),
                     void *opaque, char *err, size_t errlen)
{
    struct json_object *root, *list = NULL;
    char msg[512];
    size_t n;
    int r = 0;

    root = json_object_from_file(path);
    if (!root) {
        snprintf(err, errlen, "config %s: cannot read it as JSON: %s", path,
                 json_util_get_last_err() ? json_util_get_last_err() : "unknown error");
        return -EINVAL;
    }
    if (!json_object_is_type(root, json_type_object)) {
        snprintf(err, errlen, "config %s: must be an object {\"exports\": [...]}", path);
        r = -EINVAL;
        goto out;
    }
    json_object_object_foreach(root, key, val)
    {
        if (strcmp(key, "exports")) {
            snprintf(err, errlen, "config %s: unknown member \"%s\" (allowed: exports)", path, key);
            r = -EINVAL;
            goto out;
        }
        list = val;
    }
    if (!list) {
        r = 0;
        goto out;
    }
    if (!json_object_is_type(list, json_type_array)) {
        snprintf(err, errlen, "config %s: \"exports\" must be an array of objects", path);
        r = -EINVAL;
        goto out;
    }
    n = json_object_array_length(list);
    for (size_t i = 0; i < n; i++) {
        struct vblk_export_opts *o = malloc(sizeof(*o));

        if (!o) {
            snprintf(err, errlen, "config %s: out of memory", path);
            r = -ENOMEM;
            goto out;
        }
        vblk_opts_defaults(o);
        r = vblk_opts_from_json(json_object_array_get_idx(list, i), o, NULL, msg, sizeof(msg));
        if (r == 0)
            r = fn(opaque, o, msg, sizeof(msg));
        free(o);
        if (r < 0) {
            snprintf(err, errlen, "config %s: exports[%zu]: %s", path, i, msg);
            goto out;
        }
    }
out:
    json_object_put(root);
    return r;
}

/* ---- RPC methods ---- */

#define FAIL(code, ...) (snprintf(err, errlen, __VA_ARGS__), (code))

/* params' "id": the export it names.  NULL with err set if missing or unknown. */
static struct dexp *param_export(struct vblk_daemon *d, struct json_object *params, char *err,
                                 size_t errlen)
{
    struct json_object *v;
    struct dexp *x;

    if (!json_object_object_get_ex(params, "id", &v) || !json_object_is_type(v, json_type_string)) {
        snprintf(err, errlen, "\"id\" (a string) is missing");
        return NULL;
    }
    x = find_export(d, json_object_get_string(v));
    if (!x)
        snprintf(err, errlen, "export %.64s: no such export", json_object_get_string(v));
    return x;
}

/* Only these members in params?  (NULL-terminated list) */
static bool only_keys(struct json_object *params, const char *const *allowed, char *err,
                      size_t errlen, const char *method)
{
    json_object_object_foreach(params, key, val)
    {
        const char *const *a;

        (void)val;
        for (a = allowed; *a && strcmp(*a, key); a++)
            ;
        if (!*a) {
            snprintf(err, errlen, "%s: unknown parameter \"%.64s\"", method, key);
            return false;
        }
    }
    return true;
}

static bool get_bool_param(struct json_object *params, const char *name, bool *out, char *err,
                           size_t errlen)
{
    struct json_object *v;

    *out = false;
    if (!json_object_object_get_ex(params, name, &v))
        return true;
    if (!json_object_is_type(v, json_type_boolean)) {
        snprintf(err, errlen, "\"%s\" must be true or false", name);
        return false;
    }
    *out = json_object_get_boolean(v);
    return true;
}

static const char *export_state(const struct dexp *x)
{
    if (x->e.vu.wedged)
        return "wedged";
    return x->e.vu.conn_fd >= 0 ? "connected" : "listening";
}

static const char *driver_name(const struct vblk_bdev *b)
{
    while (b->ops->filter && b->child)
        b = b->child;
    return b->ops->name;
}

static struct json_object *export_json(const struct dexp *x)
{
    const struct vblk_export *e = &x->e;
    struct json_object *o = json_object_new_object(), *qs = json_object_new_array();
    char name[96];

    json_object_object_add(o, "id", json_object_new_string(e->opts.id));
    json_object_object_add(o, "config", vblk_opts_to_json(&e->opts));
    json_object_object_add(o, "state", json_object_new_string(export_state(x)));
    json_object_object_add(o, "connected", json_object_new_boolean(e->vu.conn_fd >= 0));
    json_object_object_add(o, "size", json_object_new_uint64(vblk_bdev_size(e->bdev)));
    json_object_object_add(o, "driver", json_object_new_string(driver_name(e->bdev)));
    json_object_object_add(o, "socket", json_object_new_string(e->opts.socket));
    for (unsigned q = 0; q < e->opts.num_queues; q++) {
        struct json_object *jq = json_object_new_object();

        vblk_export_thread_name(e, q % e->niot, name, sizeof(name));
        json_object_object_add(jq, "index", json_object_new_int((int)q));
        json_object_object_add(jq, "thread", json_object_new_string(name));
        if (e->opts.ncpus)
            json_object_object_add(
                jq, "cpu", json_object_new_int(e->opts.cpus[(q % e->niot) % e->opts.ncpus]));
        json_object_object_add(
            jq, "started",
            json_object_new_boolean(q < VBLK_VU_MAX_QUEUES && e->vu.vrings[q].started));
        json_object_array_add(qs, jq);
    }
    json_object_object_add(o, "queues", qs);
    return o;
}

static int m_version(void *ctx, struct json_object *params, struct json_object **result, char *err,
                     size_t errlen)
{
    static const char *const allowed[] = {NULL};

    if (!only_keys(params, allowed, err, errlen, "version"))
        return VBLK_RPC_INVALID_PARAMS;
    *result = json_object_new_object();
    json_object_object_add(*result, "version", json_object_new_string(VBLK_VERSION));
    return 0;
}

static int m_shutdown(void *ctx, struct json_object *params, struct json_object **result, char *err,
                      size_t errlen)
{
    static const char *const allowed[] = {NULL};
    struct vblk_daemon *d = ctx;

    if (!only_keys(params, allowed, err, errlen, "shutdown"))
        return VBLK_RPC_INVALID_PARAMS;
    log_info(NULL, "shutdown asked on the control socket: draining and exiting");
    d->running = false;
    vblk_notify_stopping();
    return 0;
}

static int m_export_add(void *ctx, struct json_object *params, struct json_object **result,
                        char *err, size_t errlen)
{
    struct vblk_daemon *d = ctx;
    struct vblk_export_opts *o = malloc(sizeof(*o));
    char msg[512];
    int r;

    if (!o)
        return FAIL(VBLK_RPC_FAILED, "out of memory");
    vblk_opts_defaults(o);
    if (vblk_opts_from_json(params, o, NULL, msg, sizeof(msg)) < 0) {
        struct json_object *v;

        if (json_object_object_get_ex(params, "id", &v) && json_object_is_type(v, json_type_string))
            snprintf(err, errlen, "export %.64s: %s", json_object_get_string(v), msg);
        else
            snprintf(err, errlen, "%s", msg);
        free(o);
        return VBLK_RPC_INVALID_PARAMS;
    }
    r = vblk_daemon_add_export(d, o, err, errlen);
    if (r == 0)
        *result = export_json(find_export(d, o->id));
    free(o);
    return r == 0 ? 0 : r == -EEXIST ? VBLK_RPC_INVALID_PARAMS : VBLK_RPC_FAILED;
}

static int m_export_del(void *ctx, struct json_object *params, struct json_object **result,
                        char *err, size_t errlen)
{
    static const char *const allowed[] = {"id", "force", NULL};
    struct vblk_daemon *d = ctx;
    struct dexp *x;
    bool force;

    if (!only_keys(params, allowed, err, errlen, "export-del"))
        return VBLK_RPC_INVALID_PARAMS;
    x = param_export(d, params, err, errlen);
    if (!x || !get_bool_param(params, "force", &force, err, errlen))
        return VBLK_RPC_INVALID_PARAMS;
    if (x->e.vu.conn_fd >= 0 && !force)
        return FAIL(VBLK_RPC_FAILED,
                    "export %s: a front-end is connected (detach it first, or force: its "
                    "in-flight I/O completes, then it is disconnected)",
                    x->e.opts.id);
    log_info(x->e.opts.id, "removing the export%s",
             x->e.vu.conn_fd >= 0 ? " and disconnecting its front-end" : "");
    remove_export(d, x);
    return 0;
}

static int m_export_list(void *ctx, struct json_object *params, struct json_object **result,
                         char *err, size_t errlen)
{
    static const char *const allowed[] = {"id", NULL};
    struct vblk_daemon *d = ctx;
    struct json_object *list;
    struct dexp *one = NULL;

    if (!only_keys(params, allowed, err, errlen, "export-list"))
        return VBLK_RPC_INVALID_PARAMS;
    if (json_object_object_get_ex(params, "id", NULL) &&
        !(one = param_export(d, params, err, errlen)))
        return VBLK_RPC_INVALID_PARAMS;
    list = json_object_new_array();
    for (unsigned i = 0; i < d->nexp; i++) {
        if (!one || d->exps[i] == one)
            json_object_array_add(list, export_json(d->exps[i]));
    }
    *result = json_object_new_object();
    json_object_object_add(*result, "exports", list);
    return 0;
}

static int m_export_resize(void *ctx, struct json_object *params, struct json_object **result,
                           char *err, size_t errlen)
{
    static const char *const allowed[] = {"id", "size", "truncate", NULL};
    struct vblk_daemon *d = ctx;
    struct json_object *v;
    struct dexp *x;
    uint64_t size, old;
    bool truncate;
    char msg[512];
    int r;

    if (!only_keys(params, allowed, err, errlen, "export-resize"))
        return VBLK_RPC_INVALID_PARAMS;
    x = param_export(d, params, err, errlen);
    if (!x || !get_bool_param(params, "truncate", &truncate, err, errlen))
        return VBLK_RPC_INVALID_PARAMS;
    if (!json_object_object_get_ex(params, "size", &v))
        return FAIL(VBLK_RPC_INVALID_PARAMS, "export %s: \"size\" is missing", x->e.opts.id);
    if (json_object_is_type(v, json_type_int) && json_object_get_int64(v) > 0)
        size = json_object_get_uint64(v);
    else if (!json_object_is_type(v, json_type_string) ||
             vblk_parse_size(json_object_get_string(v), &size) < 0)
        return FAIL(VBLK_RPC_INVALID_PARAMS,
                    "export %s: \"size\" must be a positive number of bytes or a size like 10G",
                    x->e.opts.id);
    if (x->e.vu.wedged)
        return FAIL(VBLK_RPC_FAILED, "export %s: torn down (an I/O thread is stuck)", x->e.opts.id);
    old = vblk_bdev_size(x->e.bdev);
    r = vblk_bdev_resize(x->e.bdev, size, truncate, msg, sizeof(msg));
    if (r < 0)
        return FAIL(r == -EINVAL ? VBLK_RPC_INVALID_PARAMS : VBLK_RPC_FAILED,
                    "export %s: cannot resize: %s", x->e.opts.id, msg);
    if (x->e.opts.null)
        x->e.opts.null_size = size;
    log_info(x->e.opts.id, "resized from %llu to %llu bytes%s", (unsigned long long)old,
             (unsigned long long)size, truncate ? " (file truncated)" : "");
    r = vblk_vu_config_changed(&x->e.vu);
    *result = json_object_new_object();
    json_object_object_add(*result, "size", json_object_new_uint64(size));
    json_object_object_add(*result, "guest-notified",
                           json_object_new_boolean(r == 0 && x->e.vu.conn_fd >= 0));
    return 0;
}

static int barrier_fn(void *arg)
{
    return 0;
}

static int m_export_set(void *ctx, struct json_object *params, struct json_object **result,
                        char *err, size_t errlen)
{
    struct vblk_daemon *d = ctx;
    struct vblk_export_opts *o;
    struct vblk_export *e;
    struct dexp *x;
    char *val, msg[512];
    int code = 0, r;

    x = param_export(d, params, err, errlen);
    if (!x)
        return VBLK_RPC_INVALID_PARAMS;
    e = &x->e;
    if (e->vu.wedged)
        return FAIL(VBLK_RPC_FAILED, "export %s: torn down (an I/O thread is stuck)", e->opts.id);
    o = malloc(sizeof(*o));
    val = malloc(PATH_MAX + 1);
    if (!o || !val) {
        code = FAIL(VBLK_RPC_FAILED, "out of memory");
        goto out;
    }
    *o = e->opts;
    json_object_object_foreach(params, key, jv)
    {
        const struct vblk_opt_key *k;

        if (!strcmp(key, "id"))
            continue;
        k = vblk_opt_find(key);
        if (!k || !(k->flags & VBLK_OPT_LIVE)) {
            size_t n = (size_t)snprintf(err, errlen, "export %s: %.64s %s (live keys:", o->id, key,
                                        k ? "cannot be changed live" : "is not a key");

            for (k = vblk_opt_keys; k->name && n < errlen; k++) {
                if (k->flags & VBLK_OPT_LIVE)
                    n += (size_t)snprintf(err + n, errlen - n, " %s", k->name);
            }
            if (n < errlen)
                snprintf(err + n, errlen - n, ")");
            code = VBLK_RPC_INVALID_PARAMS;
            goto out;
        }
        if (vblk_opts_json_value(jv, val, PATH_MAX + 1) < 0 ||
            k->set(o, key, val, msg, sizeof(msg)) < 0) {
            code = FAIL(VBLK_RPC_INVALID_PARAMS, "export %s: %s", o->id,
                        vblk_opts_json_value(jv, val, 2) < 0 && !msg[0]
                            ? "values must be strings, integers or booleans"
                            : msg);
            goto out;
        }
    }
    if (e->opts.readonly && !o->readonly) {
        code = FAIL(VBLK_RPC_INVALID_PARAMS,
                    "export %s: readonly can be turned on live, not off (the guest negotiated a "
                    "read-only disk; re-add the export)",
                    o->id);
        goto out;
    }
    if (o->poll_us != e->opts.poll_us) {
        for (unsigned i = 0; i < e->niot; i++) {
            r = vblk_iothread_set_poll(e->iot[i], o->poll_us);
            if (r == -EINVAL) {
                code = FAIL(VBLK_RPC_INVALID_PARAMS,
                            "export %s: poll-us=%u: polling cannot be switched on or off on a "
                            "running export (it is %u); use poll-us=1 for almost none",
                            o->id, o->poll_us, e->opts.poll_us);
                goto out;
            }
            if (r < 0) {
                code = FAIL(VBLK_RPC_FAILED, "export %s: I/O thread: %s", o->id, strerror(-r));
                goto out;
            }
        }
        log_info(o->id, "poll-us %u -> %u", e->opts.poll_us, o->poll_us);
    }
    if (memcmp(&o->throttle, &e->opts.throttle, sizeof(o->throttle))) {
        if (strcmp(o->throttle.group, e->opts.throttle.group)) {
            code = FAIL(VBLK_RPC_INVALID_PARAMS,
                        "export %s: throttle-group cannot change live (it is '%s')", o->id,
                        e->opts.throttle.group);
            goto out;
        }
        if (vblk_throttle_conf_check(&o->throttle, msg, sizeof(msg)) < 0) {
            code = FAIL(VBLK_RPC_INVALID_PARAMS, "export %s: %s", o->id, msg);
            goto out;
        }
        r = vblk_throttle_set(e->bdev, &o->throttle, e->iot, e->niot, msg, sizeof(msg));
        if (r < 0) {
            code = FAIL(r == -EINVAL ? VBLK_RPC_INVALID_PARAMS : VBLK_RPC_FAILED,
                        "export %s: cannot change the limits: %s", o->id, msg);
            goto out;
        }
        log_info(o->id, "throttle limits changed%s%s", o->throttle.group[0] ? " for group " : "",
                 o->throttle.group);
    }
    if (o->readonly && !e->opts.readonly) {
        /* new requests see it once each thread has gone round its loop; writes already
         * taken complete */
        for (struct vblk_bdev *b = e->bdev; b; b = b->ops->filter ? b->child : NULL)
            __atomic_store_n(&b->readonly, true, __ATOMIC_RELAXED);
        for (unsigned i = 0; i < e->niot; i++)
            (void)vblk_iothread_call(e->iot[i], barrier_fn, NULL);
        log_info(o->id, "now read-only: writes fail with IOERR");
    }
    e->opts = *o;
    *result = json_object_new_object();
    json_object_object_add(*result, "config", vblk_opts_to_json(&e->opts));
out:
    free(o);
    free(val);
    return code;
}

static int m_check_host(void *ctx, struct json_object *params, struct json_object **result,
                        char *err, size_t errlen)
{
    static const char *const allowed[] = {"id", NULL};
    struct vblk_daemon *d = ctx;
    struct vblk_adv_report rep = {0};
    struct vblk_export_opts *opts;
    struct dexp *one = NULL;
    size_t n = 0;

    if (!only_keys(params, allowed, err, errlen, "check-host"))
        return VBLK_RPC_INVALID_PARAMS;
    if (json_object_object_get_ex(params, "id", NULL) &&
        !(one = param_export(d, params, err, errlen)))
        return VBLK_RPC_INVALID_PARAMS;
    opts = malloc((d->nexp ? d->nexp : 1) * sizeof(*opts));
    if (!opts)
        return FAIL(VBLK_RPC_FAILED, "out of memory");
    for (unsigned i = 0; i < d->nexp; i++) {
        if (!one || d->exps[i] == one)
            opts[n++] = d->exps[i]->e.opts;
    }
    if (vblk_advisor_check(opts, n, NULL, &rep) == 0)
        *result = vblk_advisor_json(&rep);
    vblk_advisor_free(&rep);
    free(opts);
    return *result ? 0 : FAIL(VBLK_RPC_FAILED, "out of memory");
}

static struct json_object *lat_json(const struct vblk_blk_stats *s)
{
    struct json_object *o = json_object_new_object();
    struct vblk_lat_hist all;
    struct vblk_lat_pct p;

    memset(&all, 0, sizeof(all));
    for (unsigned c = 0; c < VBLK_LAT_CLASSES; c++)
        vblk_lat_add(&all, &s->lat[c]);
    vblk_lat_percentiles(&all, &p);
    json_object_object_add(o, "p50", json_object_new_double(p.p50));
    json_object_object_add(o, "p90", json_object_new_double(p.p90));
    json_object_object_add(o, "p99", json_object_new_double(p.p99));
    json_object_object_add(o, "p99.9", json_object_new_double(p.p999));
    json_object_object_add(o, "max", json_object_new_double(p.max));
    return o;
}

/* The counters of one queue or of the export (s), as the stats method shows them. */
/* The polling policy of the queue's I/O thread (iothread/poll_policy.h). */
static void poll_json(struct json_object *o, const struct vblk_iothread *t)
{
    struct vblk_iot_poll_info pi;
    struct json_object *p;

    if (!t)
        return;
    vblk_iothread_poll_info(t, &pi);
    p = json_object_new_object();
    json_object_object_add(p, "mode",
                           json_object_new_string(!pi.polls      ? "off"
                                                  : pi.spinning  ? "spin"
                                                  : pi.window_ns ? "window"
                                                                 : "sleep"));
    json_object_object_add(p, "window_ns", json_object_new_uint64(pi.window_ns));
    json_object_object_add(p, "sleep_cost_ns", json_object_new_uint64(pi.sleep_cost_ns));
    json_object_object_add(p, "trials", json_object_new_uint64(pi.trials));
    json_object_object_add(p, "spin_wins", json_object_new_uint64(pi.spin_wins));
    json_object_object_add(o, "poll", p);
}

static void stats_json(struct json_object *o, const struct vblk_blk_stats *s)
{
    struct json_object *ops = json_object_new_object();

    for (unsigned k = 0; k < VBLK_OP_COUNT; k++) {
        struct json_object *op = json_object_new_object();

        json_object_object_add(op, "ops", json_object_new_uint64(s->ops[k]));
        json_object_object_add(op, "bytes", json_object_new_uint64(s->bytes[k]));
        json_object_object_add(ops, vblk_blk_op_names[k], op);
    }
    json_object_object_add(o, "requests", json_object_new_uint64(s->requests));
    json_object_object_add(o, "inflight", json_object_new_uint64(s->inflight));
    json_object_object_add(o, "ops", ops);
    json_object_object_add(o, "errors", json_object_new_uint64(s->errors));
    json_object_object_add(o, "unsupported", json_object_new_uint64(s->unsupp));
    json_object_object_add(o, "held", json_object_new_uint64(s->held));
    json_object_object_add(o, "ignored", json_object_new_uint64(s->ignored));
    json_object_object_add(o, "latency_us", lat_json(s));
}

static int m_stats(void *ctx, struct json_object *params, struct json_object **result, char *err,
                   size_t errlen)
{
    static const char *const allowed[] = {"id", NULL};
    struct vblk_daemon *d = ctx;
    struct json_object *list;
    struct dexp *one = NULL;
    struct timespec now;

    if (!only_keys(params, allowed, err, errlen, "stats"))
        return VBLK_RPC_INVALID_PARAMS;
    if (json_object_object_get_ex(params, "id", NULL) &&
        !(one = param_export(d, params, err, errlen)))
        return VBLK_RPC_INVALID_PARAMS;
    clock_gettime(CLOCK_MONOTONIC, &now);
    list = json_object_new_array();
    for (unsigned i = 0; i < d->nexp; i++) {
        struct dexp *x = d->exps[i];
        unsigned nq = x->e.blk.num_queues;
        struct vblk_blk_stats *per_queue, *total;
        struct json_object *o, *qs;

        if (one && x != one)
            continue;
        per_queue = calloc(nq + 1, sizeof(*per_queue));
        if (!per_queue) {
            json_object_put(list);
            return FAIL(VBLK_RPC_FAILED, "out of memory");
        }
        total = &per_queue[nq];
        /* no call into the I/O threads: a stuck one does not hold the answer up */
        vblk_blk_read_stats(&x->e.blk, per_queue, total);
        vblk_throttle_get_stats(x->e.bdev, &total->throttled_ns, &total->throttled);
        o = json_object_new_object();
        json_object_object_add(o, "id", json_object_new_string(x->e.opts.id));
        json_object_object_add(
            o, "uptime_s",
            json_object_new_double((double)((now.tv_sec - x->added.tv_sec) * 1000 +
                                            (now.tv_nsec - x->added.tv_nsec) / 1000000) /
                                   1000));
        stats_json(o, total);
        json_object_object_add(o, "throttled", json_object_new_uint64(total->throttled));
        json_object_object_add(o, "throttled_ns", json_object_new_uint64(total->throttled_ns));
        qs = json_object_new_array();
        for (unsigned q = 0; q < nq; q++) {
            struct json_object *jq = json_object_new_object();

            json_object_object_add(jq, "index", json_object_new_int((int)q));
            if (x->e.opts.ncpus)
                json_object_object_add(
                    jq, "cpu",
                    json_object_new_int(x->e.opts.cpus[(q % x->e.niot) % x->e.opts.ncpus]));
            stats_json(jq, &per_queue[q]);
            poll_json(jq, x->e.niot ? x->e.iot[q % x->e.niot] : NULL);
            json_object_array_add(qs, jq);
        }
        json_object_object_add(o, "queues", qs);
        json_object_array_add(list, o);
        free(per_queue);
    }
    *result = json_object_new_object();
    json_object_object_add(*result, "exports", list);
    return 0;
}

const struct vblk_rpc_method vblk_daemon_methods[] = {
    {"version", m_version},         {"shutdown", m_shutdown},
    {"export-add", m_export_add},   {"export-del", m_export_del},
    {"export-list", m_export_list}, {"export-resize", m_export_resize},
    {"export-set", m_export_set},   {"stats", m_stats},
    {"check-host", m_check_host},   {NULL, NULL},
};

/* ---- the loop ---- */

/* A scrape of --metrics: every export's counters, read without calling its I/O threads. */
static void collect_metrics(struct vblk_metrics_out *out, void *opaque)
{
    struct vblk_daemon *d = opaque;

    for (unsigned i = 0; i < d->nexp; i++)
        vblk_export_metrics(&d->exps[i]->e, out);
}

int vblk_daemon_create(struct vblk_daemon **out, const struct vblk_daemon_conf *c, char *err,
                       size_t errlen)
{
    struct vblk_daemon *d = calloc(1, sizeof(*d));
    sigset_t mask;
    int r;

    if (!d) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    d->epfd = d->sfd = -1;
    sigemptyset(&mask);
    sigaddset(&mask, SIGINT);
    sigaddset(&mask, SIGTERM);
    sigaddset(&mask, SIGUSR1);
    sigaddset(&mask, SIGUSR2);
    /* blocked before any thread starts, so I/O threads inherit the mask */
    pthread_sigmask(SIG_BLOCK, &mask, NULL);
    d->sfd = signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK);
    d->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (d->sfd < 0 || d->epfd < 0 || epoll_add(d->epfd, d->sfd, &sig_tag) < 0 ||
        epoll_add(d->epfd, vblk_mem_guard_fd(), &guard_tag) < 0) {
        r = -errno;
        snprintf(err, errlen, "cannot set up the event loop: %s", strerror(errno));
        goto fail;
    }
    if (c->rpc_path) {
        r = vblk_rpc_start(&d->rpc, c->rpc_path, c->rpc_mode, c->rpc_uid, c->rpc_gid,
                           vblk_daemon_methods, d, err, errlen);
        if (r < 0)
            goto fail;
        r = epoll_add(d->epfd, vblk_rpc_fd(d->rpc), &rpc_tag);
        if (r < 0) {
            snprintf(err, errlen, "epoll_ctl: %s", strerror(-r));
            goto fail;
        }
    }
    if (c->metrics) {
        char msg[512];

        r = vblk_metrics_start(&d->metrics, c->metrics, collect_metrics, d, msg, sizeof(msg));
        if (r == 0 && (r = epoll_add(d->epfd, vblk_metrics_fd(d->metrics), &metrics_tag)) < 0)
            snprintf(msg, sizeof(msg), "epoll: %s", strerror(-r));
        if (r < 0) {
            snprintf(err, errlen, "--metrics %s: %s", c->metrics, msg);
            goto fail;
        }
        log_info(NULL, "metrics: http://%s/metrics (port %u)", c->metrics,
                 vblk_metrics_port(d->metrics));
    }
    d->running = true;
    *out = d;
    return 0;
fail:
    vblk_metrics_stop(d->metrics);
    vblk_rpc_stop(d->rpc);
    if (d->sfd >= 0)
        close(d->sfd);
    if (d->epfd >= 0)
        close(d->epfd);
    free(d);
    return r;
}

static void on_signal(struct vblk_daemon *d)
{
    struct signalfd_siginfo si;

    while (read(d->sfd, &si, sizeof(si)) == sizeof(si)) {
        if (si.ssi_signo == SIGUSR1) {
            for (unsigned k = 0; k < d->nexp; k++)
                vblk_export_log_stats(&d->exps[k]->e);
        } else if (si.ssi_signo == SIGUSR2) {
            for (unsigned k = 0; k < d->nexp; k++)
                vblk_export_resume(&d->exps[k]->e);
        } else {
            log_info(NULL, "%s: draining and exiting", strsignal((int)si.ssi_signo));
            d->running = false;
            vblk_notify_stopping();
        }
    }
}

int vblk_daemon_run(struct vblk_daemon *d)
{
    struct epoll_event evs[32];

    while (d->running) {
        int n = epoll_wait(d->epfd, evs, 32, vblk_metrics_timeout_ms(d->metrics));

        if (n < 0 && errno != EINTR) {
            log_err(NULL, "epoll_wait failed: %s", strerror(errno));
            return 1;
        }
        for (int i = 0; i < n; i++) {
            struct tag *t = evs[i].data.ptr;

            if (t->x && t->x->dead)
                continue; /* removed earlier in this batch */
            switch (t->kind) {
            case TAG_SIGNAL:
                on_signal(d);
                break;
            case TAG_GUARD: {
                eventfd_t v;

                /* a front-end shrank guest memory under a ring: drop that connection */
                (void)eventfd_read(vblk_mem_guard_fd(), &v);
                for (unsigned k = 0; k < d->nexp; k++)
                    vblk_vu_check_lost_memory(&d->exps[k]->e.vu);
                break;
            }
            case TAG_RPC:
                vblk_rpc_run(d->rpc);
                break;
            case TAG_METRICS:
                break; /* served below, after every wake */
            case TAG_LISTEN:
                accept_conn(d, t->x);
                break;
            case TAG_CONN:
                /* a closed connection leaves the epoll set when its fd is closed */
                if (t->x->e.vu.conn_fd >= 0)
                    vblk_vu_readable(&t->x->e.vu);
                break;
            }
        }
        vblk_metrics_run(d->metrics); /* its events and timeouts; nothing without --metrics */
        free_dead(d);
    }
    return 0;
}

void vblk_daemon_destroy(struct vblk_daemon *d)
{
    if (!d)
        return;
    vblk_rpc_stop(d->rpc); /* sends the last answers (shutdown's) */
    vblk_metrics_stop(d->metrics);
    while (d->nexp)
        remove_export(d, d->exps[d->nexp - 1]);
    free_dead(d);
    close(d->epfd);
    close(d->sfd);
    free(d);
}
