/* rpc.c - see rpc.h. */
#include "control/rpc.h"

#include <errno.h>
#include <json-c/json.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util/log.h"
#include "util/unixfd.h"

struct rpc_client {
    int fd; /* -1: free slot */
    char *in;
    size_t in_len;
    char *out;
    size_t out_len, out_off, out_cap;
    bool want_out; /* EPOLLOUT registered */
    uint64_t last_active;
};

struct vblk_rpc {
    int epfd, listen_fd;
    char path[108];
    const struct vblk_rpc_method *methods;
    void *ctx;
    struct rpc_client clients[VBLK_RPC_MAX_CLIENTS];
    uint64_t tick;
};

/* ---- one request ---- */

static struct json_object *error_obj(int code, const char *msg)
{
    struct json_object *e = json_object_new_object();

    json_object_object_add(e, "code", json_object_new_int(code));
    json_object_object_add(e, "message", json_object_new_string(msg));
    return e;
}

/* The response line for id (taken) with result (taken) or an error. */
static char *response(struct json_object *id, struct json_object *result, int code, const char *msg)
{
    struct json_object *resp = json_object_new_object();
    const char *s;
    char *line = NULL;
    size_t n;

    json_object_object_add(resp, "jsonrpc", json_object_new_string("2.0"));
    json_object_object_add(resp, "id", id);
    if (code)
        json_object_object_add(resp, "error", error_obj(code, msg));
    else
        json_object_object_add(resp, "result", result ? result : json_object_new_object());
    s = json_object_to_json_string_ext(resp,
                                       JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE);
    n = s ? strlen(s) : 0;
    if (s && (line = malloc(n + 2))) {
        memcpy(line, s, n);
        line[n] = '\n';
        line[n + 1] = '\0';
    }
    json_object_put(resp);
    return line;
}

char *vblk_rpc_handle_line(const struct vblk_rpc_method *methods, void *ctx, const char *line,
                           size_t len)
{
    struct json_tokener *tok;
    struct json_object *req, *v, *id = NULL, *params = NULL, *result = NULL;
    const struct vblk_rpc_method *m;
    const char *method;
    char err[512] = "";
    char *out;
    int code;

    tok = json_tokener_new_ex(32);
    if (!tok)
        return NULL;
    req = json_tokener_parse_ex(tok, line, (int)len);
    if (!req || json_tokener_get_error(tok) != json_tokener_success ||
        json_tokener_get_parse_end(tok) != len) {
        json_tokener_free(tok);
        json_object_put(req);
        return response(NULL, NULL, VBLK_RPC_PARSE_ERROR,
                        "parse error: a request is one JSON object on one line");
    }
    json_tokener_free(tok);
    if (json_object_is_type(req, json_type_array)) {
        json_object_put(req);
        return response(NULL, NULL, VBLK_RPC_INVALID_REQUEST,
                        "batch requests are not supported: send one request per line");
    }
    if (!json_object_is_type(req, json_type_object)) {
        json_object_put(req);
        return response(NULL, NULL, VBLK_RPC_INVALID_REQUEST, "a request must be a JSON object");
    }
    if (json_object_object_get_ex(req, "id", &v)) {
        if (v && !json_object_is_type(v, json_type_int) &&
            !json_object_is_type(v, json_type_string) &&
            !json_object_is_type(v, json_type_double)) {
            json_object_put(req);
            return response(NULL, NULL, VBLK_RPC_INVALID_REQUEST,
                            "\"id\" must be a number, a string or null");
        }
        id = json_object_get(v);
    }
    bool notification = !json_object_object_get_ex(req, "id", NULL);

    if (!json_object_object_get_ex(req, "jsonrpc", &v) ||
        !json_object_is_type(v, json_type_string) || strcmp(json_object_get_string(v), "2.0")) {
        code = VBLK_RPC_INVALID_REQUEST;
        snprintf(err, sizeof(err), "\"jsonrpc\": \"2.0\" is missing");
        goto fail;
    }
    if (!json_object_object_get_ex(req, "method", &v) ||
        !json_object_is_type(v, json_type_string)) {
        code = VBLK_RPC_INVALID_REQUEST;
        snprintf(err, sizeof(err), "\"method\" must be a string");
        goto fail;
    }
    method = json_object_get_string(v);
    json_object_object_foreach(req, key, val)
    {
        (void)val;
        if (strcmp(key, "jsonrpc") && strcmp(key, "method") && strcmp(key, "params") &&
            strcmp(key, "id")) {
            code = VBLK_RPC_INVALID_REQUEST;
            snprintf(err, sizeof(err), "unknown member \"%.64s\" in the request", key);
            goto fail;
        }
    }
    for (m = methods; m->name && strcmp(m->name, method); m++)
        ;
    if (!m->name) {
        code = VBLK_RPC_METHOD_NOT_FOUND;
        snprintf(err, sizeof(err), "unknown method '%.64s'", method);
        goto fail;
    }
    if (json_object_object_get_ex(req, "params", &v) && v) {
        if (!json_object_is_type(v, json_type_object)) {
            code = VBLK_RPC_INVALID_PARAMS;
            snprintf(err, sizeof(err), "%s: \"params\" must be an object", m->name);
            goto fail;
        }
        params = json_object_get(v);
    } else {
        params = json_object_new_object();
    }
    code = m->fn(ctx, params, &result, err, sizeof(err));
    json_object_put(params);
    if (code) {
        json_object_put(result);
        result = NULL;
        if (!err[0])
            snprintf(err, sizeof(err), "%s failed", m->name);
    }
fail:
    json_object_put(req);
    if (notification) {
        json_object_put(result);
        return NULL;
    }
    out = response(id, result, code, err);
    return out;
}

/* ---- the server ---- */

static void client_close(struct vblk_rpc *r, struct rpc_client *c)
{
    if (c->fd < 0)
        return;
    close(c->fd); /* leaves the epoll set */
    free(c->in);
    free(c->out);
    memset(c, 0, sizeof(*c));
    c->fd = -1;
}

static void client_watch(struct vblk_rpc *r, struct rpc_client *c)
{
    bool want = c->out_len > c->out_off;
    struct epoll_event ev = {.events = EPOLLIN | (want ? EPOLLOUT : 0u), .data.ptr = c};

    if (want != c->want_out && epoll_ctl(r->epfd, EPOLL_CTL_MOD, c->fd, &ev) == 0)
        c->want_out = want;
}

/* Send what waits.  false: the client is gone. */
static bool client_flush(struct vblk_rpc *r, struct rpc_client *c)
{
    while (c->out_off < c->out_len) {
        ssize_t n =
            send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_DONTWAIT | MSG_NOSIGNAL);

        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            break;
        if (n <= 0)
            return false;
        c->out_off += (size_t)n;
    }
    if (c->out_off == c->out_len)
        c->out_off = c->out_len = 0;
    client_watch(r, c);
    return true;
}

static bool client_queue(struct rpc_client *c, const char *line)
{
    size_t n = strlen(line);

    if (c->out_off && c->out_off == c->out_len)
        c->out_off = c->out_len = 0;
    if (c->out_len + n > c->out_cap) {
        size_t cap = c->out_cap ? c->out_cap : 4096;
        char *p;

        while (cap < c->out_len + n)
            cap *= 2;
        p = realloc(c->out, cap);
        if (!p)
            return false;
        c->out = p;
        c->out_cap = cap;
    }
    memcpy(c->out + c->out_len, line, n);
    c->out_len += n;
    return true;
}

/* Answer the whole lines in c->in.  false: close the client. */
static bool client_process(struct vblk_rpc *r, struct rpc_client *c)
{
    size_t start = 0;
    char *nl;

    while (c->out_len - c->out_off <= VBLK_RPC_OUT_HIGH &&
           (nl = memchr(c->in + start, '\n', c->in_len - start))) {
        size_t len = (size_t)(nl - (c->in + start));
        char *resp;

        if (len && c->in[start + len - 1] == '\r')
            len--;
        if (len) {
            resp = vblk_rpc_handle_line(r->methods, r->ctx, c->in + start, len);
            if (resp) {
                bool ok = client_queue(c, resp);

                free(resp);
                if (!ok)
                    return false;
            }
        }
        start = (size_t)(nl - c->in) + 1;
    }
    memmove(c->in, c->in + start, c->in_len - start);
    c->in_len -= start;
    return true;
}

static void client_readable(struct vblk_rpc *r, struct rpc_client *c)
{
    for (int rounds = 0; rounds < 16; rounds++) {
        ssize_t n;

        if (c->out_len - c->out_off > VBLK_RPC_OUT_HIGH)
            break; /* it does not read its answers: stop reading its requests */
        if (c->in_len == VBLK_RPC_MAX_LINE) {
            log_warn(NULL, "control socket: closing a client: a request longer than %d bytes",
                     VBLK_RPC_MAX_LINE);
            client_close(r, c);
            return;
        }
        n = recv(c->fd, c->in + c->in_len, VBLK_RPC_MAX_LINE - c->in_len, MSG_DONTWAIT);
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            break;
        if (n <= 0) {
            /* end of file (the client may still read: a half-close): a last line without its
             * newline is a request too */
            if (n == 0 && c->in_len && c->in_len < VBLK_RPC_MAX_LINE) {
                c->in[c->in_len++] = '\n';
                (void)client_process(r, c);
            }
            (void)client_flush(r, c);
            client_close(r, c);
            return;
        }
        c->in_len += (size_t)n;
        c->last_active = ++r->tick;
        if (!client_process(r, c)) {
            client_close(r, c);
            return;
        }
    }
    if (c->fd >= 0 && !client_flush(r, c))
        client_close(r, c);
}

static void accept_clients(struct vblk_rpc *r)
{
    for (;;) {
        int fd = accept4(r->listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        struct rpc_client *c = NULL, *idle = NULL;

        if (fd < 0)
            return;
        for (unsigned i = 0; i < VBLK_RPC_MAX_CLIENTS; i++) {
            struct rpc_client *k = &r->clients[i];

            if (k->fd < 0) {
                c = k;
                break;
            }
            if (!idle || k->last_active < idle->last_active)
                idle = k;
        }
        if (!c) {
            log_warn(NULL, "control socket: %d clients: closing the longest idle one",
                     VBLK_RPC_MAX_CLIENTS);
            client_close(r, idle);
            c = idle;
        }
        c->in = malloc(VBLK_RPC_MAX_LINE);
        if (!c->in) {
            close(fd);
            continue;
        }
        c->fd = fd;
        c->last_active = ++r->tick;
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};

        if (epoll_ctl(r->epfd, EPOLL_CTL_ADD, fd, &ev) < 0)
            client_close(r, c);
    }
}

int vblk_rpc_start(struct vblk_rpc **out, const char *path, mode_t mode, uid_t uid, gid_t gid,
                   const struct vblk_rpc_method *methods, void *ctx, char *err, size_t errlen)
{
    struct vblk_rpc *r = calloc(1, sizeof(*r));
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
    int ret;

    if (!r) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    for (unsigned i = 0; i < VBLK_RPC_MAX_CLIENTS; i++)
        r->clients[i].fd = -1;
    r->methods = methods;
    r->ctx = ctx;
    snprintf(r->path, sizeof(r->path), "%s", path);
    r->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (r->epfd < 0) {
        ret = -errno;
        snprintf(err, errlen, "epoll_create1: %s", strerror(-ret));
        free(r);
        return ret;
    }
    ret = vblk_listen_unix(path, err, errlen);
    if (ret < 0)
        goto err_ep;
    r->listen_fd = ret;
    if (chmod(path, mode ? mode : 0600) < 0 ||
        ((uid != (uid_t)-1 || gid != (gid_t)-1) && chown(path, uid, gid) < 0)) {
        ret = -errno;
        snprintf(err, errlen, "cannot set the owner or mode of '%s': %s", path, strerror(-ret));
        goto err_listen;
    }
    if (epoll_ctl(r->epfd, EPOLL_CTL_ADD, r->listen_fd, &ev) < 0) {
        ret = -errno;
        snprintf(err, errlen, "epoll_ctl: %s", strerror(-ret));
        goto err_listen;
    }
    *out = r;
    return 0;
err_listen:
    close(r->listen_fd);
    unlink(path);
err_ep:
    close(r->epfd);
    free(r);
    return ret;
}

int vblk_rpc_fd(const struct vblk_rpc *r)
{
    return r->epfd;
}

void vblk_rpc_run(struct vblk_rpc *r)
{
    struct epoll_event evs[VBLK_RPC_MAX_CLIENTS + 1];
    int n = epoll_wait(r->epfd, evs, VBLK_RPC_MAX_CLIENTS + 1, 0);

    for (int i = 0; i < n; i++) {
        struct rpc_client *c = evs[i].data.ptr;

        if (!c) {
            accept_clients(r);
            continue;
        }
        if (c->fd < 0)
            continue; /* closed earlier in this batch (evicted) */
        if (evs[i].events & EPOLLOUT) {
            if (!client_flush(r, c)) {
                client_close(r, c);
                continue;
            }
            /* answers drained: requests held back by the high mark can go on */
            if (c->in_len && !client_process(r, c)) {
                client_close(r, c);
                continue;
            }
        }
        if (evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR))
            client_readable(r, c);
    }
}

void vblk_rpc_stop(struct vblk_rpc *r)
{
    if (!r)
        return;
    for (unsigned i = 0; i < VBLK_RPC_MAX_CLIENTS; i++) {
        struct rpc_client *c = &r->clients[i];

        if (c->fd >= 0) {
            (void)send(c->fd, c->out + c->out_off, c->out_len - c->out_off,
                       MSG_DONTWAIT | MSG_NOSIGNAL); /* last answers (shutdown's) */
            client_close(r, c);
        }
    }
    close(r->listen_fd);
    unlink(r->path);
    close(r->epfd);
    free(r);
}
