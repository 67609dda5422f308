/* vblkctl.c - command-line client of vblkd's control socket.
 *
 * The protocol is JSON-RPC 2.0 over a unix stream socket (vblkd --rpc PATH): one JSON object per
 * line each way, requests of at most 64 KiB, responses in order.  vblkctl sends one request at a
 * time on one connection and checks every response before using it: one line of at most 16 MiB,
 * valid (strict, UTF-8) JSON, an object with "jsonrpc":"2.0", our id, and exactly one of "result"
 * and "error".  Everything the server sends is treated as untrusted: tables print "-" for a missing
 * or mistyped field and replace control characters, nothing is indexed without a check.
 *
 * Exit status: 0 success, 1 a JSON-RPC error or a bad/missing/late response, 2 usage error,
 * 3 the socket cannot be reached (connect failed or timed out).
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <json-c/json.h>

#include "util/kv.h"
#include "util/size.h"

#ifndef VBLK_VERSION
#define VBLK_VERSION "unknown"
#endif

enum {
    EXIT_OK = 0,
    EXIT_RPC = 1,   /* error response, bad response, timeout or hang-up after connecting */
    EXIT_USAGE = 2, /* bad command line */
    EXIT_CONN = 3,  /* cannot connect */
    EXIT_INTR = 4,  /* internal: interrupted in watch mode (the process exits 0) */
};

#define DEFAULT_SOCKET   "/run/vblkd/vblkd.sock"
#define DEFAULT_TIMEOUT  30.0
#define MAX_REQUEST      (64u * 1024)        /* the server closes the connection above this */
#define MAX_RESPONSE     (16u * 1024 * 1024) /* bytes of one response line, without "\n" */
#define READ_CHUNK       (64u * 1024)
#define JSON_PARSE_DEPTH 64

struct ctl {
    const char *socket;
    bool json;
    double timeout; /* seconds per connect and per request; 0: wait forever */
    int fd;
    int64_t next_id;
    char *buf; /* received bytes not yet consumed */
    size_t len, cap;
};

static volatile sig_atomic_t interrupted;
static sigset_t wait_mask; /* signal mask while waiting in ppoll() (watch mode unblocks SIGINT) */

/* ---- small helpers ---- */

static void errmsg(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void errmsg(const char *fmt, ...)
{
    va_list ap;

    fputs("vblkctl: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

static void *xrealloc(void *p, size_t n)
{
    p = realloc(p, n ? n : 1);
    if (!p) {
        errmsg("out of memory");
        exit(EXIT_RPC);
    }
    return p;
}

static char *xstrdup(const char *s)
{
    size_t n = strlen(s) + 1;

    return memcpy(xrealloc(NULL, n), s, n);
}

/* A copy of a string from the server that is safe to print: control characters become '?'. */
static char *sanitize(const char *s)
{
    char *d = xstrdup(s);

    for (char *p = d; *p; p++)
        if ((unsigned char)*p < 0x20 || *p == 0x7f)
            *p = '?';
    return d;
}

static double now_mono(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Seconds from a command line ("30", "0.5"); min is inclusive.  0 or -EINVAL. */
static int parse_seconds(const char *s, double min, double *out)
{
    char *end;
    double v;

    errno = 0;
    v = strtod(s, &end);
    if (errno || end == s || *end || !isfinite(v) || v < min || v > 1e6)
        return -EINVAL;
    *out = v;
    return 0;
}

/* A strictly parsed JSON text that must fill the whole of s[0..n) (whitespace aside), or NULL
 * with *why set. */
static json_object *parse_json(const char *s, size_t n, const char **why)
{
    json_tokener *tok = json_tokener_new_ex(JSON_PARSE_DEPTH);
    json_object *o;
    size_t end;

    if (!tok) {
        *why = "out of memory";
        return NULL;
    }
    json_tokener_set_flags(tok, JSON_TOKENER_STRICT | JSON_TOKENER_ALLOW_TRAILING_CHARS |
                                    JSON_TOKENER_VALIDATE_UTF8);
    if (n > INT_MAX) {
        *why = "too long";
        json_tokener_free(tok);
        return NULL;
    }
    if (memchr(s, '\0', n)) {
        *why = "NUL byte";
        json_tokener_free(tok);
        return NULL;
    }
    o = json_tokener_parse_ex(tok, s, (int)n);
    end = json_tokener_get_parse_end(tok);
    if (!o && json_tokener_get_error(tok) == json_tokener_continue) {
        /* a bare number or literal at the end of the input waits for more: end it */
        o = json_tokener_parse_ex(tok, " ", 1);
        end = n;
        if (!o && json_tokener_get_error(tok) == json_tokener_continue) {
            *why = "truncated JSON";
            json_tokener_free(tok);
            return NULL;
        }
    }
    if (!o && json_tokener_get_error(tok) != json_tokener_success) {
        *why = json_tokener_error_desc(json_tokener_get_error(tok));
        json_tokener_free(tok);
        return NULL;
    }
    json_tokener_free(tok);
    for (; end < n; end++) {
        if (!strchr(" \t\r\n", s[end])) {
            *why = "trailing characters after the JSON value";
            json_object_put(o);
            return NULL;
        }
    }
    return o;
}

/* ---- JSON accessors that tolerate anything ---- */

static json_object *jget(json_object *o, const char *key, enum json_type t)
{
    json_object *v;

    if (!o || !json_object_is_type(o, json_type_object) || !json_object_object_get_ex(o, key, &v) ||
        !v || !json_object_is_type(v, t))
        return NULL;
    return v;
}

static const char *jstr(json_object *o, const char *key)
{
    json_object *v = jget(o, key, json_type_string);

    return v ? json_object_get_string(v) : NULL;
}

/* A number (int or double) member as a double. */
static bool jnum(json_object *o, const char *key, double *out)
{
    json_object *v;

    if ((v = jget(o, key, json_type_int))) {
        *out = (double)json_object_get_int64(v);
        return true;
    }
    if ((v = jget(o, key, json_type_double))) {
        *out = json_object_get_double(v);
        return isfinite(*out);
    }
    return false;
}

/* ---- output: aligned tables ---- */

struct table {
    unsigned ncols;
    const char *const *hdr;
    const char *right; /* per column: 'r' right-aligned (numbers), else left */
    char **cells;      /* nrows * ncols, owned */
    size_t nrows;
};

static void table_init(struct table *t, unsigned ncols, const char *const *hdr, const char *right)
{
    *t = (struct table){.ncols = ncols, .hdr = hdr, .right = right};
}

/* Append a row of ncols strings (copied, sanitized; NULL prints "-"). */
static void table_row(struct table *t, const char *const *row)
{
    t->cells = xrealloc(t->cells, (t->nrows + 1) * t->ncols * sizeof(*t->cells));
    for (unsigned i = 0; i < t->ncols; i++)
        t->cells[t->nrows * t->ncols + i] = sanitize(row[i] ? row[i] : "-");
    t->nrows++;
}

static size_t text_width(const char *s)
{
    size_t w = 0;

    for (; *s; s++)
        w += ((unsigned char)*s & 0xc0) != 0x80; /* count UTF-8 code points */
    return w;
}

static void table_print(struct table *t)
{
    size_t *w = xrealloc(NULL, t->ncols * sizeof(*w));

    for (unsigned i = 0; i < t->ncols; i++) {
        w[i] = text_width(t->hdr[i]);
        for (size_t r = 0; r < t->nrows; r++) {
            size_t cw = text_width(t->cells[r * t->ncols + i]);
            if (cw > w[i])
                w[i] = cw;
        }
    }
    for (size_t r = 0; r <= t->nrows; r++) {
        for (unsigned i = 0; i < t->ncols; i++) {
            const char *s = r ? t->cells[(r - 1) * t->ncols + i] : t->hdr[i];
            size_t pad = w[i] - text_width(s);
            bool last = i + 1 == t->ncols;

            if (t->right[i] == 'r')
                printf("%*s%s", (int)pad, "", s);
            else
                printf("%s%*s", s, last ? 0 : (int)pad, "");
            if (!last)
                fputs("  ", stdout);
        }
        fputc('\n', stdout);
    }
    for (size_t i = 0; i < t->nrows * t->ncols; i++)
        free(t->cells[i]);
    free(t->cells);
    free(w);
    t->cells = NULL;
    t->nrows = 0;
}

/* Human-readable bytes with a binary suffix: 512, 64M, 1.5G. */
static void fmt_size(char *b, size_t n, double bytes)
{
    static const char suf[] = "KMGTPE";
    int u = -1;
    double v = bytes;

    while (v >= 1024 && u < 5) {
        v /= 1024;
        u++;
    }
    if (u < 0)
        snprintf(b, n, "%.0f", bytes);
    else if (v == floor(v))
        snprintf(b, n, "%.0f%c", v, suf[u]);
    else
        snprintf(b, n, "%.1f%c", v, suf[u]);
}

/* A cell for a numeric member: integers exactly, floats with `prec` decimals; NULL if absent. */
static char *num_cell(char *b, size_t n, json_object *o, const char *key, int prec)
{
    json_object *v;
    double d;

    if ((v = jget(o, key, json_type_int))) {
        snprintf(b, n, "%" PRId64, json_object_get_int64(v));
        return b;
    }
    if (!jnum(o, key, &d))
        return NULL;
    snprintf(b, n, "%.*f", prec, d);
    return b;
}

static void print_json(json_object *o, bool pretty)
{
    int flags = JSON_C_TO_STRING_NOSLASHESCAPE;

    flags |= pretty ? JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_SPACED : JSON_C_TO_STRING_PLAIN;
    puts(json_object_to_json_string_ext(o, flags));
}

/* ---- the connection ---- */

static int ctl_connect(struct ctl *c)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    int fd, r;

    if (strlen(c->socket) >= sizeof(sa.sun_path)) {
        errmsg("socket path too long (%zu bytes, at most %zu): %s", strlen(c->socket),
               sizeof(sa.sun_path) - 1, c->socket);
        return EXIT_USAGE;
    }
    memcpy(sa.sun_path, c->socket, strlen(c->socket));
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        errmsg("socket: %s", strerror(errno));
        return EXIT_CONN;
    }
    if (c->timeout > 0) {
        /* a unix-socket connect() waits for room in the listen backlog up to SO_SNDTIMEO */
        struct timeval tv = {.tv_sec = (time_t)c->timeout,
                             .tv_usec = (suseconds_t)((c->timeout - floor(c->timeout)) * 1e6)};
        if (tv.tv_sec == 0 && tv.tv_usec == 0)
            tv.tv_usec = 1;
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    }
    do {
        r = connect(fd, (struct sockaddr *)&sa, sizeof(sa));
    } while (r < 0 && errno == EINTR && !interrupted);
    if (r < 0) {
        int e = errno;

        close(fd);
        if (interrupted)
            return EXIT_INTR;
        errmsg("cannot connect to %s: %s", c->socket,
               e == EAGAIN || e == EINPROGRESS ? "timed out" : strerror(e));
        return EXIT_CONN;
    }
    if (fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) < 0) {
        errmsg("fcntl: %s", strerror(errno));
        close(fd);
        return EXIT_CONN;
    }
    c->fd = fd;
    return EXIT_OK;
}

/* Wait for `events` on c->fd until `deadline` (0: none).  0, or an exit code. */
static int ctl_wait(struct ctl *c, short events, double deadline, const char *what)
{
    for (;;) {
        struct pollfd p = {.fd = c->fd, .events = events};
        struct timespec ts, *tsp = NULL;
        int r;

        if (deadline > 0) {
            double left = deadline - now_mono();

            if (left <= 0) {
                errmsg("timed out %s (%g s)", what, c->timeout);
                return EXIT_RPC;
            }
            ts.tv_sec = (time_t)left;
            ts.tv_nsec = (long)((left - floor(left)) * 1e9);
            tsp = &ts;
        }
        r = ppoll(&p, 1, tsp, &wait_mask);
        if (interrupted)
            return EXIT_INTR;
        if (r > 0)
            return EXIT_OK;
        if (r < 0 && errno != EINTR) {
            errmsg("poll: %s", strerror(errno));
            return EXIT_RPC;
        }
    }
}

static int ctl_send(struct ctl *c, const char *data, size_t n, double deadline)
{
    while (n) {
        ssize_t w = send(c->fd, data, n, MSG_NOSIGNAL);

        if (w < 0 && (errno == EAGAIN || errno == EINTR)) {
            int r = ctl_wait(c, POLLOUT, deadline, "sending the request");
            if (r)
                return r;
            continue;
        }
        if (w < 0) {
            errmsg("sending the request to %s: %s", c->socket, strerror(errno));
            return EXIT_RPC;
        }
        data += w;
        n -= (size_t)w;
    }
    return EXIT_OK;
}

/* Receive one line; on success *line points into c->buf (NUL-terminated, without "\n") and
 * *consumed is what to drop from c->buf afterwards. */
static int ctl_recv_line(struct ctl *c, double deadline, char **line, size_t *linelen,
                         size_t *consumed)
{
    size_t scanned = 0;

    for (;;) {
        char *nl = c->len > scanned ? memchr(c->buf + scanned, '\n', c->len - scanned) : NULL;
        ssize_t n;
        size_t room;

        if (nl) {
            *nl = '\0';
            *line = c->buf;
            *linelen = (size_t)(nl - c->buf);
            *consumed = *linelen + 1;
            return EXIT_OK;
        }
        scanned = c->len;
        if (c->len > MAX_RESPONSE) {
            errmsg("malformed response: a line longer than %u bytes", MAX_RESPONSE);
            return EXIT_RPC;
        }
        room = MAX_RESPONSE + 1 - c->len; /* at most one byte past the limit */
        if (room > READ_CHUNK)
            room = READ_CHUNK;
        if (c->cap < c->len + room + 1) { /* grow geometrically, up to the limit */
            size_t cap = c->cap * 2 > c->len + room + 1 ? c->cap * 2 : c->len + room + 1;

            c->cap = cap < MAX_RESPONSE + 2 ? cap : MAX_RESPONSE + 2;
            c->buf = xrealloc(c->buf, c->cap);
        }
        n = recv(c->fd, c->buf + c->len, room, 0);
        if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
            int r = ctl_wait(c, POLLIN, deadline, "waiting for the response");
            if (r)
                return r;
            continue;
        }
        if (n < 0) {
            errmsg("reading the response from %s: %s", c->socket, strerror(errno));
            return EXIT_RPC;
        }
        if (n == 0) {
            if (c->len)
                errmsg("malformed response: connection closed in the middle of a line");
            else
                errmsg("connection closed by vblkd before the response");
            return EXIT_RPC;
        }
        c->len += (size_t)n;
    }
}

/* Check a parsed response; 0 with *result set (borrowed from resp) or an exit code. */
static int check_response(json_object *resp, int64_t id, json_object **result)
{
    json_object *v, *res = NULL, *err = NULL, *code, *msg;
    bool has_res, has_err;

    if (!json_object_is_type(resp, json_type_object)) {
        errmsg("malformed response: not a JSON object");
        return EXIT_RPC;
    }
    if (!(v = jget(resp, "jsonrpc", json_type_string)) ||
        strcmp(json_object_get_string(v), "2.0")) {
        errmsg("malformed response: \"jsonrpc\" is not \"2.0\"");
        return EXIT_RPC;
    }
    has_res = json_object_object_get_ex(resp, "result", &res);
    has_err = json_object_object_get_ex(resp, "error", &err);
    if (has_res == has_err) {
        errmsg("malformed response: %s",
               has_res ? "both \"result\" and \"error\"" : "neither \"result\" nor \"error\"");
        return EXIT_RPC;
    }
    if (!json_object_object_get_ex(resp, "id", &v)) {
        errmsg("malformed response: no \"id\"");
        return EXIT_RPC;
    }
    /* id null is how JSON-RPC reports an error when the request's id could not be read */
    if (!(v == NULL && has_err) &&
        (!json_object_is_type(v, json_type_int) || json_object_get_int64(v) != id)) {
        char *got =
            sanitize(v ? json_object_to_json_string_ext(v, JSON_C_TO_STRING_PLAIN) : "null");
        errmsg("malformed response: id %s does not match the request's id %" PRId64, got, id);
        free(got);
        return EXIT_RPC;
    }
    if (has_err) {
        if (!(code = jget(err, "code", json_type_int)) ||
            !(msg = jget(err, "message", json_type_string))) {
            errmsg("malformed response: \"error\" is not {\"code\":INT,\"message\":STRING}");
            return EXIT_RPC;
        }
        char *m = sanitize(json_object_get_string(msg));
        errmsg("%s", m);
        free(m);
        return EXIT_RPC;
    }
    *result = res;
    return EXIT_OK;
}

/* Send one request and wait for its response.  params: owned; NULL sends none, or
 * "params":null with null_params (raw).  On success *resp_out is the whole response (put it
 * when done) and *result the result in it. */
static int ctl_call(struct ctl *c, const char *method, json_object *params, bool null_params,
                    json_object **resp_out, json_object **result)
{
    json_object *req = json_object_new_object();
    double deadline = c->timeout > 0 ? now_mono() + c->timeout : 0;
    int64_t id = c->next_id++;
    const char *text, *why = NULL;
    char *out, *line;
    size_t n, linelen, consumed;
    json_object *resp;
    int r;

    if (!req) {
        json_object_put(params);
        errmsg("out of memory");
        return EXIT_RPC;
    }
    json_object_object_add(req, "jsonrpc", json_object_new_string("2.0"));
    json_object_object_add(req, "id", json_object_new_int64(id));
    json_object_object_add(req, "method", json_object_new_string(method));
    if (params || null_params)
        json_object_object_add(req, "params", params);
    text = json_object_to_json_string_ext(req,
                                          JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE);
    n = strlen(text);
    if (n + 1 > MAX_REQUEST) {
        errmsg("request too long (%zu bytes; vblkd accepts up to %u)", n + 1, MAX_REQUEST);
        json_object_put(req);
        return EXIT_USAGE;
    }
    out = xrealloc(NULL, n + 1);
    memcpy(out, text, n);
    out[n] = '\n';
    json_object_put(req);

    if (c->fd < 0 && (r = ctl_connect(c))) {
        free(out);
        return r;
    }
    r = ctl_send(c, out, n + 1, deadline);
    free(out);
    if (r)
        return r;
    r = ctl_recv_line(c, deadline, &line, &linelen, &consumed);
    if (r)
        return r;
    resp = parse_json(line, linelen, &why);
    memmove(c->buf, c->buf + consumed, c->len - consumed);
    c->len -= consumed;
    if (!resp) {
        errmsg("malformed response: %s", why ? why : "not a JSON object");
        return EXIT_RPC;
    }
    r = check_response(resp, id, result);
    if (r) {
        json_object_put(resp);
        return r;
    }
    *resp_out = resp;
    return EXIT_OK;
}

/* Call and require an object result. */
static int ctl_call_obj(struct ctl *c, const char *method, json_object *params,
                        json_object **resp_out, json_object **result)
{
    int r = ctl_call(c, method, params, false, resp_out, result);

    if (!r && !json_object_is_type(*result, json_type_object)) {
        errmsg("malformed response: the result of %s is not an object", method);
        json_object_put(*resp_out);
        return EXIT_RPC;
    }
    return r;
}

/* ---- command line ---- */

static const char usage_text[] =
    "usage: vblkctl [-s|--socket PATH] [--json] [-t|--timeout SEC] COMMAND ...\n"
    "\n"
    "Client of vblkd's control socket (vblkd --rpc PATH).\n"
    "\n"
    "options:\n"
    "  -s, --socket PATH   control socket (default: $VBLKD_RPC, else " DEFAULT_SOCKET ")\n"
    "      --json          print the server's result as JSON instead of a table\n"
    "  -t, --timeout SEC   give up connecting, or waiting for a response, after SEC seconds\n"
    "                      (default 30; 0: wait forever)\n"
    "  -h, --help          this text; `vblkctl COMMAND --help` describes a command\n"
    "\n"
    "commands:\n"
    "  version                              versions of vblkctl and vblkd\n"
    "  export add KEY=VALUE[,KEY=VALUE...]  add an export (the keys of vblkd --export)\n"
    "  export del ID [--force]              remove an export\n"
    "  export list [ID]                     list exports\n"
    "  export resize ID SIZE [--truncate]   change an export's size\n"
    "  export set ID KEY=VALUE[,...]        change live settings (throttling, poll-us, readonly)\n"
    "  stats [ID] [-w|--watch SEC]          I/O statistics; -w: rates every SEC seconds\n"
    "  shutdown                             drain and stop vblkd\n"
    "  raw METHOD [JSON-PARAMS]             send any request, print the result as JSON\n"
    "\n"
    "Exit status: 0 success, 1 error from vblkd or bad response, 2 usage error,\n"
    "3 the socket cannot be reached.\n";

struct cmd_help {
    const char *name;
    const char *text;
};

static const struct cmd_help helps[] = {
    {"version", "usage: vblkctl version\n"
                "\n"
                "Print the versions of vblkctl and of the vblkd answering on the socket.\n"
                "--json prints the server's result: {\"version\": \"X.Y.Z\"}.\n"},
    {"export", "usage: vblkctl export add|del|list|resize|set ...\n"
               "\n"
               "  export add KEY=VALUE[,KEY=VALUE...]\n"
               "  export del ID [--force]\n"
               "  export list [ID]\n"
               "  export resize ID SIZE [--truncate]\n"
               "  export set ID KEY=VALUE[,...]\n"
               "\n"
               "`vblkctl export SUBCOMMAND --help` for details.\n"},
    {"export add",
     "usage: vblkctl export add KEY=VALUE[,KEY=VALUE...] [KEY=VALUE...]\n"
     "\n"
     "Add an export.  The keys are those of `vblkd --export` (id, file, socket, readonly, aio,\n"
     "cache, num-queues, iops-total, ...); \",,\" in a value is a literal comma, and the pairs "
     "may\n"
     "also be given as several arguments.  Values are sent as strings; vblkd checks them.\n"
     "Prints the new export like `export list`.\n"
     "\n"
     "example: vblkctl export add id=d1,file=/var/lib/d1.img,socket=/run/vblk/d1.sock\n"},
    {"export del", "usage: vblkctl export del ID [--force]\n"
                   "\n"
                   "Remove an export.  vblkd refuses while a front-end (a VM) is connected,\n"
                   "unless --force.  Prints nothing on success.\n"},
    {"export list", "usage: vblkctl export list [ID]\n"
                    "\n"
                    "List all exports, or only ID: ID STATE SIZE DRIVER SOCKET QUEUES.\n"
                    "--json prints {\"exports\": [...]} with each export's full config.\n"},
    {"export resize",
     "usage: vblkctl export resize ID SIZE [--truncate]\n"
     "\n"
     "Change the size an export shows to its guest (which is told).  SIZE is bytes or a number\n"
     "with a k/M/G/T suffix (powers of 1024), e.g. 10G, 512M.  --truncate also grows or shrinks\n"
     "the backing raw file.  Prints the new size.\n"},
    {"export set",
     "usage: vblkctl export set ID KEY=VALUE[,KEY=VALUE...] [KEY=VALUE...]\n"
     "\n"
     "Change live settings of an export: the throttle keys (iops-total, bps-read-max, ...,\n"
     "throttle-group), poll-us, readonly (off->on only).  Syntax as `export add`.\n"
     "Prints the export's resulting config.\n"},
    {"stats",
     "usage: vblkctl stats [ID] [-w|--watch SEC]\n"
     "\n"
     "I/O statistics of all exports, or only ID; one row per export, and one per queue when\n"
     "an export has several (ID/qN).  Columns: read and write ops, MB (10^6 bytes) read and\n"
     "written, requests in flight, latency p50/p99 in microseconds, errors (all request\n"
     "kinds), throttled requests.\n"
     "\n"
     "  -w, --watch SEC   repeat every SEC seconds (fractions allowed) until interrupted,\n"
     "                    showing per-second rates (R/S W/S RMB/S WMB/S) from the change since\n"
     "                    the previous sample; the first sample shows averages since each\n"
     "                    export started.  With --json: one compact result per line.\n"},
    {"shutdown", "usage: vblkctl shutdown\n"
                 "\n"
                 "Ask vblkd to drain its exports and exit.  Prints nothing on success.\n"},
    {"raw", "usage: vblkctl raw METHOD [JSON-PARAMS]\n"
            "\n"
            "Send any request and print its result as JSON, e.g.\n"
            "  vblkctl raw export-list '{\"id\":\"d1\"}'\n"},
};

static void usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void usage_error(const char *fmt, ...)
{
    va_list ap;

    fputs("vblkctl: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputs("\nTry 'vblkctl --help'.\n", stderr);
}

static int print_help(const char *name)
{
    for (size_t i = 0; i < sizeof(helps) / sizeof(helps[0]); i++) {
        if (!strcmp(helps[i].name, name)) {
            fputs(helps[i].text, stdout);
            return EXIT_OK;
        }
    }
    fputs(usage_text, stdout);
    return EXIT_OK;
}

enum {
    OPT_JSON = 0x100,
};

/* Options after the command: the global ones, --help, and the command's own. */
struct sub_opts {
    bool force, truncate;
    double watch; /* 0: not watching */
    bool help;
};

/* 1 if opt is a global option (set), 0 if not, -1 for a bad value (reported). */
static int set_global_opt(struct ctl *c, int opt, const char *arg)
{
    switch (opt) {
    case 's':
        c->socket = arg;
        return 1;
    case 't':
        if (parse_seconds(arg, 0, &c->timeout)) {
            usage_error("bad --timeout '%s': want seconds >= 0", arg);
            return -1;
        }
        return 1;
    case OPT_JSON:
        c->json = true;
        return 1;
    }
    return 0;
}

/* Parse the options of command `name` in argv[0..argc) (argv[0] is the command word, the rest
 * may mix options and arguments).  `allowed` lists the command's own options ("f", "T", "w").
 * Positional arguments are returned in pos[0..*npos).  0 or EXIT_USAGE. */
static int parse_sub(struct ctl *c, const char *name, const char *allowed, int argc, char **argv,
                     struct sub_opts *so, char ***pos, int *npos)
{
    static const struct option opts[] = {
        {"socket", required_argument, NULL, 's'}, {"timeout", required_argument, NULL, 't'},
        {"json", no_argument, NULL, OPT_JSON},    {"help", no_argument, NULL, 'h'},
        {"force", no_argument, NULL, 'f'},        {"truncate", no_argument, NULL, 'T'},
        {"watch", required_argument, NULL, 'w'},  {NULL, 0, NULL, 0},
    };
    int opt;

    *so = (struct sub_opts){0};
    optind = 0; /* re-initialise glibc getopt; permutes, so options may follow arguments */
    opterr = 0;
    while ((opt = getopt_long(argc, argv, "-s:t:hw:", opts, NULL)) != -1) {
        if (opt == 1) { /* "-" in optstring: arguments come back in order, as opt 1 */
            (*pos)[(*npos)++] = optarg;
            continue;
        }
        int g = set_global_opt(c, opt, optarg);

        if (g < 0)
            return EXIT_USAGE;
        if (g)
            continue;
        if (opt == 'h') {
            so->help = true;
            continue;
        }
        if (opt != '?' && opt != ':' && strchr(allowed, opt)) {
            if (opt == 'f')
                so->force = true;
            else if (opt == 'T')
                so->truncate = true;
            else if (opt == 'w' && parse_seconds(optarg, 0.01, &so->watch)) {
                usage_error("%s: bad --watch '%s': want seconds >= 0.01", name, optarg);
                return EXIT_USAGE;
            }
            continue;
        }
        if (opt == 'f' || opt == 'T' || opt == 'w')
            usage_error("%s: unknown option '%s'", name,
                        opt == 'f'   ? "--force"
                        : opt == 'T' ? "--truncate"
                                     : "--watch");
        else if (opt == '?' && optopt && strchr("stw", optopt))
            usage_error("%s: option '-%c' needs a value", name, optopt);
        else if (opt == '?' && optopt)
            usage_error("%s: unknown option '-%c'", name, optopt);
        else
            usage_error("%s: unknown option '%s'", name, argv[optind - 1]);
        return EXIT_USAGE;
    }
    for (; optind < argc; optind++) /* after "--" */
        (*pos)[(*npos)++] = argv[optind];
    return EXIT_OK;
}

/* Parse "key=value,..." as vblkd --export does (",," is a literal comma in a value) into obj,
 * values as strings.  0, or EXIT_USAGE with a message. */
static int parse_kv(const char *cmd, const char *arg, json_object *obj)
{
    char *buf = xrealloc(NULL, strlen(arg) + 2);
    const char *p = arg;

    for (;;) {
        char *key = NULL, *val = NULL;
        int n = vblk_kv_next(&p, buf, &key, &val);

        if (n == 0)
            break;
        if (n == -1) {
            usage_error("%s: '%s' is not key=value", cmd, key);
            goto fail;
        }
        if (n == -2) {
            usage_error("%s: empty key in '%s'", cmd, arg);
            goto fail;
        }
        if (json_object_object_get_ex(obj, key, NULL)) {
            usage_error("%s: key '%s' given twice", cmd, key);
            goto fail;
        }
        json_object_object_add(obj, key, json_object_new_string(val));
    }
    free(buf);
    return EXIT_OK;
fail:
    free(buf);
    return EXIT_USAGE;
}

/* ---- commands ---- */

static void export_row(struct table *t, json_object *e)
{
    char size[32], queues[32];
    const char *row[6];
    json_object *q = jget(e, "queues", json_type_array);
    double d;

    row[0] = jstr(e, "id");
    row[1] = jstr(e, "state");
    row[2] = NULL;
    if (jnum(e, "size", &d) && d >= 0) {
        fmt_size(size, sizeof(size), d);
        row[2] = size;
    }
    row[3] = jstr(e, "driver");
    row[4] = jstr(e, "socket");
    row[5] = NULL;
    if (q) {
        snprintf(queues, sizeof(queues), "%zu", json_object_array_length(q));
        row[5] = queues;
    }
    table_row(t, row);
}

static const char *const export_hdr[] = {"ID", "STATE", "SIZE", "DRIVER", "SOCKET", "QUEUES"};

static int print_exports(json_object *result)
{
    json_object *arr = jget(result, "exports", json_type_array);
    struct table t;

    if (!arr) {
        errmsg("malformed response: no \"exports\" array in the result");
        return EXIT_RPC;
    }
    table_init(&t, 6, export_hdr, "llrllr");
    for (size_t i = 0; i < json_object_array_length(arr); i++)
        export_row(&t, json_object_array_get_idx(arr, i));
    table_print(&t);
    return EXIT_OK;
}

/* Run one call and print its result: --json, or `print` (NULL: nothing). */
static int call_print(struct ctl *c, const char *method, json_object *params,
                      int (*print)(json_object *result, void *arg), void *arg)
{
    json_object *resp, *result;
    int r = ctl_call_obj(c, method, params, &resp, &result);

    if (r)
        return r;
    if (c->json)
        print_json(result, true);
    else if (print)
        r = print(result, arg);
    json_object_put(resp);
    return r;
}

static int print_version(json_object *result, void *arg)
{
    const char *v = jstr(result, "version");
    char *s;

    if (!v) {
        errmsg("malformed response: no \"version\" string in the result");
        return EXIT_RPC;
    }
    s = sanitize(v);
    printf("vblkctl %s\nvblkd   %s\n", VBLK_VERSION, s);
    free(s);
    return EXIT_OK;
}

static int print_list(json_object *result, void *arg)
{
    return print_exports(result);
}

static int print_added(json_object *result, void *arg)
{
    struct table t;

    table_init(&t, 6, export_hdr, "llrllr");
    export_row(&t, result);
    table_print(&t);
    return EXIT_OK;
}

static int print_resized(json_object *result, void *arg)
{
    char h[32], *id = sanitize(arg);
    double d;

    if (!jnum(result, "size", &d) || d < 0) {
        errmsg("malformed response: no \"size\" number in the result");
        free(id);
        return EXIT_RPC;
    }
    fmt_size(h, sizeof(h), d);
    printf("%s: size %.0f bytes (%s)\n", id, d, h);
    free(id);
    return EXIT_OK;
}

static int print_config(json_object *result, void *arg)
{
    static const char *const hdr[] = {"KEY", "VALUE"};
    json_object *conf = jget(result, "config", json_type_object);
    struct table t;

    if (!conf) {
        errmsg("malformed response: no \"config\" object in the result");
        return EXIT_RPC;
    }
    table_init(&t, 2, hdr, "ll");
    json_object_object_foreach(conf, key, val)
    {
        const char *row[2] = {key, NULL};

        if (json_object_is_type(val, json_type_string))
            row[1] = json_object_get_string(val);
        else if (val)
            row[1] = json_object_to_json_string_ext(val, JSON_C_TO_STRING_PLAIN);
        table_row(&t, row);
    }
    table_print(&t);
    return EXIT_OK;
}

/* ---- stats ---- */

struct counters {
    double rops, wops, rbytes, wbytes;
    bool ok; /* all four present */
};

static struct counters get_counters(json_object *o)
{
    json_object *ops = jget(o, "ops", json_type_object);
    json_object *rd = jget(ops, "read", json_type_object);
    json_object *wr = jget(ops, "write", json_type_object);
    struct counters k = {0};

    /* every field is read, even after a missing one */
    bool r_ops = jnum(rd, "ops", &k.rops), w_ops = jnum(wr, "ops", &k.wops);
    bool r_bytes = jnum(rd, "bytes", &k.rbytes), w_bytes = jnum(wr, "bytes", &k.wbytes);

    k.ok = r_ops && w_ops && r_bytes && w_bytes;
    return k;
}

/* Errors of every request kind in o["ops"]; false if there are none to count. */
static bool sum_errors(json_object *o, double *sum)
{
    json_object *ops = jget(o, "ops", json_type_object);
    bool any = false;

    *sum = 0;
    if (!ops)
        return false;
    json_object_object_foreach(ops, kind, v)
    {
        double e;

        (void)kind;
        if (jnum(v, "errors", &e)) {
            *sum += e;
            any = true;
        }
    }
    return any;
}

static json_object *find_by(json_object *arr, const char *key, json_object *like)
{
    if (!arr || !like)
        return NULL;
    for (size_t i = 0; i < json_object_array_length(arr); i++) {
        json_object *o = json_object_array_get_idx(arr, i);
        json_object *v;

        if (json_object_object_get_ex(o, key, &v) && json_object_equal(v, like))
            return o;
    }
    return NULL;
}

/* One stats row for an export or a queue.  Watch mode (rates) when dt is set: counters relative
 * to prev (NULL: to zero) over dt seconds; dt <= 0 prints "-". */
static void stats_row(struct table *t, const char *name, json_object *o, json_object *prev,
                      bool rates, double dt, json_object *throttled_from)
{
    char b[9][48];
    const char *row[10] = {name};
    json_object *lat = jget(o, "latency_us", json_type_object);
    struct counters k = get_counters(o), p = prev ? get_counters(prev) : (struct counters){0};
    double e;

    if (rates) {
        if (k.ok && dt > 0) {
            snprintf(b[0], sizeof(b[0]), "%.0f", (k.rops - p.rops) / dt);
            snprintf(b[1], sizeof(b[1]), "%.0f", (k.wops - p.wops) / dt);
            snprintf(b[2], sizeof(b[2]), "%.2f", (k.rbytes - p.rbytes) / dt / 1e6);
            snprintf(b[3], sizeof(b[3]), "%.2f", (k.wbytes - p.wbytes) / dt / 1e6);
            for (int i = 0; i < 4; i++)
                row[1 + i] = b[i];
        }
    } else if (k.ok) {
        snprintf(b[0], sizeof(b[0]), "%.0f", k.rops);
        snprintf(b[1], sizeof(b[1]), "%.0f", k.wops);
        snprintf(b[2], sizeof(b[2]), "%.2f", k.rbytes / 1e6);
        snprintf(b[3], sizeof(b[3]), "%.2f", k.wbytes / 1e6);
        for (int i = 0; i < 4; i++)
            row[1 + i] = b[i];
    }
    row[5] = num_cell(b[4], sizeof(b[4]), o, "inflight", 0);
    row[6] = num_cell(b[5], sizeof(b[5]), lat, "p50", 1);
    row[7] = num_cell(b[6], sizeof(b[6]), lat, "p99", 1);
    row[8] = NULL;
    if (sum_errors(o, &e)) {
        snprintf(b[7], sizeof(b[7]), "%.0f", e);
        row[8] = b[7];
    }
    row[9] = num_cell(b[8], sizeof(b[8]), throttled_from, "throttled", 0);
    table_row(t, row);
}

/* Print a stats result; prev: the previous sample in watch mode (NULL: first), rates: watch mode,
 * client_dt: seconds since the previous sample by our clock (fallback when uptime_s is missing). */
static int print_stats(json_object *result, json_object *prev, bool rates, double client_dt)
{
    static const char *const hdr_tot[] = {"ID",       "READS",  "WRITES", "MB_READ", "MB_WRITTEN",
                                          "INFLIGHT", "P50_US", "P99_US", "ERRORS",  "THROTTLED"};
    static const char *const hdr_rate[] = {"ID",       "R/S",    "W/S",    "RMB/S",  "WMB/S",
                                           "INFLIGHT", "P50_US", "P99_US", "ERRORS", "THROTTLED"};
    json_object *arr = jget(result, "exports", json_type_array);
    json_object *parr = jget(prev, "exports", json_type_array);
    struct table t;

    if (!arr) {
        errmsg("malformed response: no \"exports\" array in the result");
        return EXIT_RPC;
    }
    table_init(&t, 10, rates ? hdr_rate : hdr_tot, "lrrrrrrrrr");
    for (size_t i = 0; i < json_object_array_length(arr); i++) {
        json_object *e = json_object_array_get_idx(arr, i), *idv = jget(e, "id", json_type_string);
        json_object *pe = find_by(parr, "id", idv);
        json_object *qs = jget(e, "queues", json_type_array);
        const char *id = idv ? json_object_get_string(idv) : "?";
        double up = 0, pup = 0, dt = 0;
        bool has_up = jnum(e, "uptime_s", &up);

        if (rates) {
            struct counters k = get_counters(e), p = get_counters(pe);

            /* from the previous sample; from the export's start when there is none or the
             * counters went back (the export was re-created) */
            if (pe && (k.rops < p.rops || k.wops < p.wops || k.rbytes < p.rbytes ||
                       k.wbytes < p.wbytes || (has_up && jnum(pe, "uptime_s", &pup) && up < pup)))
                pe = NULL;
            if (!has_up)
                dt = pe ? client_dt : 0;
            else if (pe && jnum(pe, "uptime_s", &pup))
                dt = up - pup;
            else if (pe)
                dt = client_dt;
            else
                dt = up;
        }
        stats_row(&t, id, e, pe, rates, dt, e);
        if (qs && json_object_array_length(qs) > 1) {
            json_object *pqs = jget(pe, "queues", json_type_array);

            for (size_t j = 0; j < json_object_array_length(qs); j++) {
                json_object *q = json_object_array_get_idx(qs, j);
                json_object *qi = jget(q, "index", json_type_int);
                json_object *pq = find_by(pqs, "index", qi);
                char name[96];

                if (qi)
                    snprintf(name, sizeof(name), "%s/q%" PRId64, id, json_object_get_int64(qi));
                else
                    snprintf(name, sizeof(name), "%s/q?", id);
                if (pe && !pq) /* a queue we have no previous sample of */
                    stats_row(&t, name, q, NULL, rates, 0, NULL);
                else
                    stats_row(&t, name, q, pq, rates, dt, NULL);
            }
        }
    }
    table_print(&t);
    return EXIT_OK;
}

static json_object *id_params(const char *id)
{
    json_object *p = json_object_new_object();

    json_object_object_add(p, "id", json_object_new_string(id));
    return p;
}

static void on_signal(int sig)
{
    interrupted = 1;
}

static int cmd_stats_watch(struct ctl *c, const char *id, double every)
{
    struct sigaction sa = {.sa_handler = on_signal};
    json_object *prev = NULL, *prev_resp = NULL;
    double prev_t = 0;
    sigset_t block, old_mask;
    int r = EXIT_OK;

    /* SIGINT/SIGTERM are blocked except inside ppoll(), so one is never missed between checks */
    sigemptyset(&block);
    sigaddset(&block, SIGINT);
    sigaddset(&block, SIGTERM);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigprocmask(SIG_BLOCK, &block, &old_mask);
    wait_mask = old_mask;
    sigdelset(&wait_mask, SIGINT);
    sigdelset(&wait_mask, SIGTERM);

    for (unsigned n = 0; !interrupted; n++) {
        json_object *resp, *result;
        double t, next;

        r = ctl_call_obj(c, "stats", id ? id_params(id) : NULL, &resp, &result);
        if (r)
            break;
        t = now_mono();
        if (c->json) {
            print_json(result, false);
        } else {
            char ts[32];
            time_t wall = time(NULL);

            strftime(ts, sizeof(ts), "%H:%M:%S", localtime(&wall));
            printf("%s# %s %s\n", n ? "\n" : "", ts,
                   prev ? "(per second since the previous sample)"
                        : "(per second since each export started)");
            r = print_stats(result, prev, true, t - prev_t);
        }
        fflush(stdout);
        json_object_put(prev_resp);
        prev_resp = resp;
        prev = result;
        prev_t = t;
        if (r)
            break;
        /* sleep until the next sample, waking early for a signal */
        next = t + every;
        while (!interrupted) {
            double left = next - now_mono();
            struct timespec ts;

            if (left <= 0)
                break;
            ts.tv_sec = (time_t)left;
            ts.tv_nsec = (long)((left - floor(left)) * 1e9);
            ppoll(NULL, 0, &ts, &wait_mask);
        }
    }
    json_object_put(prev_resp);
    /* unblock: a signal still pending or arriving late (`timeout` signals the process group
     * too) only sets the flag again; the handlers stay until the process exits */
    sigprocmask(SIG_SETMASK, &old_mask, NULL);
    wait_mask = old_mask;
    return r == EXIT_INTR || (interrupted && !r) ? EXIT_OK : r;
}

static int cmd_raw(struct ctl *c, const char *method, const char *ptext)
{
    json_object *params = NULL, *resp, *result;
    int r;

    if (ptext) {
        const char *why = NULL;

        params = parse_json(ptext, strlen(ptext), &why);
        if (!params && why) { /* "null" parses to NULL with no error: "params":null */
            usage_error("raw: JSON-PARAMS is not valid JSON: %s", why);
            return EXIT_USAGE;
        }
    }
    r = ctl_call(c, method, params, ptext != NULL, &resp, &result);
    if (r)
        return r;
    print_json(result, true);
    json_object_put(resp);
    return EXIT_OK;
}

/* Check the number of positional arguments of `name`. */
static bool nargs_ok(const char *name, int n, int min, int max)
{
    if (n < min) {
        usage_error("%s: missing argument", name);
        return false;
    }
    if (max >= 0 && n > max) {
        usage_error("%s: unexpected argument", name);
        return false;
    }
    return true;
}

static int run(struct ctl *c, int argc, char **argv)
{
    const char *cmd = argv[0];
    char name[32], **pos = xrealloc(NULL, (size_t)argc * sizeof(*pos));
    const char *allowed = "";
    struct sub_opts so;
    json_object *params;
    int npos = 0, r = EXIT_USAGE, sub_argc = argc;
    char **sub_argv = argv;
    uint64_t size;

    if (!strcmp(cmd, "export")) {
        static const char *const subs[] = {"add", "del", "list", "resize", "set"};
        bool known = false;

        if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
            if (argc < 2) {
                usage_error("export: missing subcommand (add, del, list, resize, set)");
                goto out;
            }
            r = print_help("export");
            goto out;
        }
        for (size_t i = 0; i < sizeof(subs) / sizeof(subs[0]); i++)
            known |= !strcmp(argv[1], subs[i]);
        if (!known) {
            usage_error("export: unknown subcommand '%s' (add, del, list, resize, set)", argv[1]);
            goto out;
        }
        snprintf(name, sizeof(name), "export %s", argv[1]);
        sub_argc--;
        sub_argv++;
        allowed = !strcmp(argv[1], "del") ? "f" : !strcmp(argv[1], "resize") ? "T" : "";
    } else if (!strcmp(cmd, "stats")) {
        snprintf(name, sizeof(name), "stats");
        allowed = "w";
    } else if (!strcmp(cmd, "version") || !strcmp(cmd, "shutdown") || !strcmp(cmd, "raw")) {
        snprintf(name, sizeof(name), "%s", cmd);
    } else {
        usage_error("unknown command '%s'", cmd);
        goto out;
    }
    if (parse_sub(c, name, allowed, sub_argc, sub_argv, &so, &pos, &npos))
        goto out;
    if (so.help) {
        r = print_help(name);
        goto out;
    }

    if (!strcmp(name, "version")) {
        if (nargs_ok(name, npos, 0, 0))
            r = call_print(c, "version", NULL, print_version, NULL);
    } else if (!strcmp(name, "shutdown")) {
        if (nargs_ok(name, npos, 0, 0))
            r = call_print(c, "shutdown", NULL, NULL, NULL);
    } else if (!strcmp(name, "raw")) {
        if (nargs_ok(name, npos, 1, 2))
            r = cmd_raw(c, pos[0], npos > 1 ? pos[1] : NULL);
    } else if (!strcmp(name, "stats")) {
        if (!nargs_ok(name, npos, 0, 1))
            goto out;
        if (so.watch > 0) {
            r = cmd_stats_watch(c, npos ? pos[0] : NULL, so.watch);
        } else {
            json_object *resp, *result;

            r = ctl_call_obj(c, "stats", npos ? id_params(pos[0]) : NULL, &resp, &result);
            if (!r) {
                if (c->json)
                    print_json(result, true);
                else
                    r = print_stats(result, NULL, false, 0);
                json_object_put(resp);
            }
        }
    } else if (!strcmp(name, "export add")) {
        if (!nargs_ok(name, npos, 1, -1))
            goto out;
        params = json_object_new_object();
        for (int i = 0; i < npos; i++) {
            if (parse_kv(name, pos[i], params)) {
                json_object_put(params);
                goto out;
            }
        }
        r = call_print(c, "export-add", params, print_added, NULL);
    } else if (!strcmp(name, "export del")) {
        if (!nargs_ok(name, npos, 1, 1))
            goto out;
        params = id_params(pos[0]);
        json_object_object_add(params, "force", json_object_new_boolean(so.force));
        r = call_print(c, "export-del", params, NULL, NULL);
    } else if (!strcmp(name, "export list")) {
        if (nargs_ok(name, npos, 0, 1))
            r = call_print(c, "export-list", npos ? id_params(pos[0]) : NULL, print_list, NULL);
    } else if (!strcmp(name, "export resize")) {
        if (!nargs_ok(name, npos, 2, 2))
            goto out;
        if (vblk_parse_size(pos[1], &size)) {
            usage_error("export resize: bad SIZE '%s': want bytes or a number with a k/M/G/T "
                        "suffix",
                        pos[1]);
            goto out;
        }
        params = id_params(pos[0]);
        json_object_object_add(params, "size", json_object_new_string(pos[1]));
        json_object_object_add(params, "truncate", json_object_new_boolean(so.truncate));
        r = call_print(c, "export-resize", params, print_resized, pos[0]);
    } else if (!strcmp(name, "export set")) {
        if (!nargs_ok(name, npos, 2, -1))
            goto out;
        params = id_params(pos[0]);
        for (int i = 1; i < npos; i++) {
            if (parse_kv(name, pos[i], params)) {
                json_object_put(params);
                goto out;
            }
        }
        r = call_print(c, "export-set", params, print_config, NULL);
    }
out:
    free(pos);
    return r;
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"socket", required_argument, NULL, 's'},
        {"timeout", required_argument, NULL, 't'},
        {"json", no_argument, NULL, OPT_JSON},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *env = getenv("VBLKD_RPC");
    struct ctl c = {
        .socket = env && *env ? env : DEFAULT_SOCKET,
        .timeout = DEFAULT_TIMEOUT,
        .fd = -1,
        .next_id = 1,
    };
    int opt, r;

    sigprocmask(SIG_SETMASK, NULL, &wait_mask);
    opterr = 0;
    while ((opt = getopt_long(argc, argv, "+s:t:h", opts, NULL)) != -1) {
        int g = set_global_opt(&c, opt, optarg);

        if (g < 0)
            return EXIT_USAGE;
        if (g)
            continue;
        if (opt == 'h') {
            fputs(usage_text, stdout);
            return EXIT_OK;
        }
        if (optopt && strchr("st", optopt))
            usage_error("option '-%c' needs a value", optopt);
        else if (optopt)
            usage_error("unknown option '-%c'", optopt);
        else
            usage_error("unknown option '%s'", argv[optind - 1]);
        return EXIT_USAGE;
    }
    if (optind >= argc) {
        usage_error("missing command");
        return EXIT_USAGE;
    }
    if (!strcmp(argv[optind], "help")) {
        if (optind + 1 < argc) {
            char name[64];

            snprintf(name, sizeof(name), "%s%s%s", argv[optind + 1], optind + 2 < argc ? " " : "",
                     optind + 2 < argc ? argv[optind + 2] : "");
            return print_help(name);
        }
        fputs(usage_text, stdout);
        return EXIT_OK;
    }
    r = run(&c, argc - optind, argv + optind);
    if (c.fd >= 0)
        close(c.fd);
    free(c.buf);
    if (fflush(stdout) || ferror(stdout)) {
        errmsg("writing the output: %s", strerror(errno));
        if (!r)
            r = EXIT_RPC;
    }
    return r;
}
