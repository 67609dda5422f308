/* metrics.c - see metrics.h. */
#include "control/metrics.h"

#include <arpa/inet.h>
#include <errno.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "util/log.h"

/* ---- the text format ---- */

enum {
    F_REQUESTS,
    F_BYTES,
    F_ERRORS,
    F_UNSUPP,
    F_HELD,
    F_IGNORED,
    F_INFLIGHT,
    F_LATENCY,
    F_THROTTLED,
    F_THROTTLED_SECONDS,
};

static const struct {
    const char *name, *type, *help;
} families[VBLK_METRICS_FAMILIES] = {
    [F_REQUESTS] = {"vblk_requests_total", "counter",
                    "Requests taken off the virtqueues, by type (refused ones included)."},
    [F_BYTES] = {"vblk_bytes_total", "counter",
                 "Bytes of the requests handed to storage, by type."},
    [F_ERRORS] = {"vblk_errors_total", "counter", "Requests completed with an I/O error."},
    [F_UNSUPP] = {"vblk_unsupported_total", "counter",
                  "Requests completed as unsupported (unknown type, discard not offered, ...)."},
    [F_HELD] = {"vblk_held_total", "counter",
                "Failed requests held by a stop error policy (rerror/werror=stop or enospc)."},
    [F_IGNORED] = {"vblk_ignored_total", "counter",
                   "Failed requests reported as successful by an ignore error policy."},
    [F_INFLIGHT] = {"vblk_inflight", "gauge", "Requests taken off a virtqueue and not completed."},
    [F_LATENCY] = {"vblk_latency_seconds", "histogram",
                   "Time from taking a request off the ring to publishing its completion."},
    [F_THROTTLED] = {"vblk_throttled_total", "counter", "Requests delayed by the throttle."},
    [F_THROTTLED_SECONDS] = {"vblk_throttled_seconds_total", "counter",
                             "Time requests spent waiting for the throttle."},
};

/* Latency buckets exported: le = 2^k ns for k in [LE_MIN_EXP, LE_MAX_EXP] (0.5 us to 17 s),
 * each the exact upper edge of a histogram bucket, so the counts are exact: le=2^k counts the
 * values below 2^k ns. */
#define LE_MIN_EXP 9
#define LE_MAX_EXP 34
_Static_assert(LE_MAX_EXP < VBLK_LAT_MAX_EXP, "le bounds must be bucket edges");

/* A label value: backslash, double quote and newline escaped. */
static void put_label_value(struct vblk_buf *b, const char *s)
{
    for (const char *p = s; *p; p++) {
        if (*p == '\\')
            vblk_buf_append(b, "\\\\", 2);
        else if (*p == '"')
            vblk_buf_append(b, "\\\"", 2);
        else if (*p == '\n')
            vblk_buf_append(b, "\\n", 2);
        else
            vblk_buf_append(b, p, 1);
    }
}

static void put_u64(struct vblk_buf *b, const char *name, const char *labels, const char *extra,
                    uint64_t v)
{
    vblk_buf_printf(b, "%s{%s%s} %llu\n", name, labels, extra, (unsigned long long)v);
}

static void put_latency(struct vblk_buf *b, const char *labels, const char *cls,
                        const struct vblk_lat_hist *h)
{
    uint64_t cum = 0;
    unsigned i = 0;

    for (unsigned k = LE_MIN_EXP; k <= LE_MAX_EXP; k++) {
        unsigned end = vblk_lat_bucket(1ull << k);

        for (; i < end; i++)
            cum += h->bucket[i];
        vblk_buf_printf(b, "vblk_latency_seconds_bucket{%s,op=\"%s\",le=\"%.12g\"} %llu\n", labels,
                        cls, (double)(1ull << k) / 1e9, (unsigned long long)cum);
    }
    for (; i < VBLK_LAT_BUCKETS; i++)
        cum += h->bucket[i];
    vblk_buf_printf(b, "vblk_latency_seconds_bucket{%s,op=\"%s\",le=\"+Inf\"} %llu\n", labels, cls,
                    (unsigned long long)cum);
    vblk_buf_printf(b, "vblk_latency_seconds_sum{%s,op=\"%s\"} %.9f\n", labels, cls,
                    (double)h->sum_ns / 1e9);
    vblk_buf_printf(b, "vblk_latency_seconds_count{%s,op=\"%s\"} %llu\n", labels, cls,
                    (unsigned long long)cum);
}

void vblk_metrics_format_export(struct vblk_metrics_out *out, const char *export_id,
                                const struct vblk_blk_stats *per_queue, unsigned nq,
                                const struct vblk_blk_stats *total)
{
    struct vblk_buf id = {0}, lab = {0};
    struct vblk_buf *f = out->fam;
    const char *eid;

    put_label_value(&id, export_id);
    eid = id.p ? id.p : "";
    for (unsigned q = 0; q < nq; q++) {
        const struct vblk_blk_stats *s = &per_queue[q];
        char op[48];

        lab.len = 0;
        vblk_buf_printf(&lab, "export=\"%s\",queue=\"%u\"", eid, q);
        if (lab.oom)
            break;
        for (unsigned o = 0; o < VBLK_OP_COUNT; o++) {
            snprintf(op, sizeof(op), ",op=\"%s\"", vblk_blk_op_names[o]);
            put_u64(&f[F_REQUESTS], families[F_REQUESTS].name, lab.p, op, s->ops[o]);
            if (o == VBLK_OP_FLUSH || o == VBLK_OP_GET_ID || o == VBLK_OP_OTHER)
                continue; /* they move no data */
            put_u64(&f[F_BYTES], families[F_BYTES].name, lab.p, op, s->bytes[o]);
        }
        put_u64(&f[F_ERRORS], families[F_ERRORS].name, lab.p, "", s->errors);
        put_u64(&f[F_UNSUPP], families[F_UNSUPP].name, lab.p, "", s->unsupp);
        put_u64(&f[F_HELD], families[F_HELD].name, lab.p, "", s->held);
        put_u64(&f[F_IGNORED], families[F_IGNORED].name, lab.p, "", s->ignored);
        put_u64(&f[F_INFLIGHT], families[F_INFLIGHT].name, lab.p, "", s->inflight);
        for (unsigned c = 0; c < VBLK_LAT_CLASSES; c++)
            put_latency(&f[F_LATENCY], lab.p, vblk_blk_lat_names[c], &s->lat[c]);
    }
    if (total) {
        lab.len = 0;
        vblk_buf_printf(&lab, "export=\"%s\"", eid);
        if (!lab.oom) {
            put_u64(&f[F_THROTTLED], families[F_THROTTLED].name, lab.p, "", total->throttled);
            vblk_buf_printf(&f[F_THROTTLED_SECONDS], "%s{%s} %.9f\n",
                            families[F_THROTTLED_SECONDS].name, lab.p,
                            (double)total->throttled_ns / 1e9);
        }
    }
    if (id.oom || lab.oom)
        f[0].oom = true; /* the scrape fails rather than showing a partial export */
    vblk_buf_free(&id);
    vblk_buf_free(&lab);
}

void vblk_metrics_out_free(struct vblk_metrics_out *out)
{
    for (unsigned i = 0; i < VBLK_METRICS_FAMILIES; i++)
        vblk_buf_free(&out->fam[i]);
}

char *vblk_metrics_render(struct vblk_metrics_out *out, size_t *len)
{
    struct vblk_buf b = {0};
    bool oom = false;

    for (unsigned i = 0; i < VBLK_METRICS_FAMILIES; i++) {
        oom |= out->fam[i].oom;
        if (!out->fam[i].len)
            continue;
        vblk_buf_printf(&b, "# HELP %s %s\n# TYPE %s %s\n", families[i].name, families[i].help,
                        families[i].name, families[i].type);
        vblk_buf_append(&b, out->fam[i].p, out->fam[i].len);
    }
    vblk_metrics_out_free(out);
    if (oom)
        b.oom = true;
    return vblk_buf_take(&b, len);
}

/* ---- addresses ---- */

int vblk_metrics_parse_addr(const char *s, struct sockaddr_storage *ss, socklen_t *len, char *err,
                            size_t errlen)
{
    char host[INET6_ADDRSTRLEN + 2];
    const char *colon, *port_s;
    unsigned long port;
    char *end;
    bool bracket = s[0] == '[';
    size_t hl;

    memset(ss, 0, sizeof(*ss));
    if (bracket) {
        const char *rb = strchr(s, ']');

        if (!rb || rb[1] != ':') {
            snprintf(err, errlen, "'%s': expected [IPv6]:PORT", s);
            return -EINVAL;
        }
        hl = (size_t)(rb - s - 1);
        colon = rb + 1;
        s++;
    } else {
        colon = strrchr(s, ':');
        if (!colon) {
            snprintf(err, errlen, "'%s': expected ADDR:PORT, [IPv6]:PORT or :PORT", s);
            return -EINVAL;
        }
        hl = (size_t)(colon - s);
    }
    port_s = colon + 1;
    errno = 0;
    port = strtoul(port_s, &end, 10);
    if (!*port_s || *end || errno || port > 65535 || port_s[0] == '-' || port_s[0] == '+') {
        snprintf(err, errlen, "'%s': bad port '%s'", s, port_s);
        return -EINVAL;
    }
    if (hl >= sizeof(host)) {
        snprintf(err, errlen, "'%.*s': not a numeric address", (int)(hl > 64 ? 64 : hl), s);
        return -EINVAL;
    }
    memcpy(host, s, hl);
    host[hl] = '\0';
    if (hl == 0) { /* every address: IPv6 with IPv4-mapped (dual stack) */
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)ss;

        a->sin6_family = AF_INET6;
        a->sin6_addr = in6addr_any;
        a->sin6_port = htons((uint16_t)port);
        *len = sizeof(*a);
    } else if (inet_pton(AF_INET, host, &((struct sockaddr_in *)ss)->sin_addr) == 1 && !bracket) {
        struct sockaddr_in *a = (struct sockaddr_in *)ss;

        a->sin_family = AF_INET;
        a->sin_port = htons((uint16_t)port);
        *len = sizeof(*a);
    } else if (inet_pton(AF_INET6, host, &((struct sockaddr_in6 *)ss)->sin6_addr) == 1 && bracket) {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)ss;

        a->sin6_family = AF_INET6;
        a->sin6_port = htons((uint16_t)port);
        *len = sizeof(*a);
    } else {
        snprintf(err, errlen, "'%s': not a numeric IPv4 address or [IPv6] address", host);
        return -EINVAL;
    }
    return 0;
}

/* ---- the HTTP server ---- */

struct vblk_metrics {
    struct MHD_Daemon *d;
    vblk_metrics_collect_fn fn;
    void *opaque;
    int epfd;
    unsigned port;
};

static const char text_type[] = "text/plain; version=0.0.4; charset=utf-8";

static enum MHD_Result reply(struct MHD_Connection *c, unsigned status, const char *text,
                             bool allow)
{
    struct MHD_Response *r =
        MHD_create_response_from_buffer(strlen(text), (void *)text, MHD_RESPMEM_PERSISTENT);
    enum MHD_Result ret;

    if (!r)
        return MHD_NO;
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "text/plain; charset=utf-8");
    if (allow)
        MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW, "GET");
    ret = MHD_queue_response(c, status, r);
    MHD_destroy_response(r);
    return ret;
}

static enum MHD_Result serve_metrics(struct vblk_metrics *m, struct MHD_Connection *c)
{
    struct vblk_metrics_out out = {0};
    struct MHD_Response *r;
    enum MHD_Result ret;
    size_t len;
    char *text;

    m->fn(&out, m->opaque);
    text = vblk_metrics_render(&out, &len);
    if (!text)
        return reply(c, MHD_HTTP_INTERNAL_SERVER_ERROR, "out of memory\n", false);
    r = MHD_create_response_from_buffer(len, text, MHD_RESPMEM_MUST_FREE);
    if (!r) {
        free(text);
        return MHD_NO;
    }
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, text_type);
    ret = MHD_queue_response(c, MHD_HTTP_OK, r);
    MHD_destroy_response(r);
    return ret;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_data_size, void **req_cls)
{
    static int seen; /* marks a request whose headers we have looked at */

    if (strcmp(method, MHD_HTTP_METHOD_GET) != 0)
        return reply(c, MHD_HTTP_METHOD_NOT_ALLOWED, "only GET is served\n", true);
    if (*req_cls != &seen) { /* headers only: answer once any body has been read (and dropped) */
        *req_cls = &seen;
        return MHD_YES;
    }
    if (*upload_data_size) {
        *upload_data_size = 0;
        return MHD_YES;
    }
    if (strcmp(url, "/metrics") != 0)
        return reply(c, MHD_HTTP_NOT_FOUND, "not found: try /metrics\n", false);
    return serve_metrics(cls, c);
}

static int listen_on(const char *addr_port, char *err, size_t errlen)
{
    struct sockaddr_storage ss;
    socklen_t len;
    int fd, one = 1, zero = 0, r;

    r = vblk_metrics_parse_addr(addr_port, &ss, &len, err, errlen);
    if (r < 0)
        return r;
    fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0 && ss.ss_family == AF_INET6 &&
        IN6_IS_ADDR_UNSPECIFIED(&((struct sockaddr_in6 *)&ss)->sin6_addr)) {
        /* ":PORT" on a host without IPv6: every IPv4 address */
        struct sockaddr_in *a = (struct sockaddr_in *)&ss;
        uint16_t port = ((struct sockaddr_in6 *)&ss)->sin6_port;

        memset(&ss, 0, sizeof(ss));
        a->sin_family = AF_INET;
        a->sin_port = port;
        a->sin_addr.s_addr = htonl(INADDR_ANY);
        len = sizeof(*a);
        fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    }
    if (fd < 0) {
        r = -errno;
        snprintf(err, errlen, "socket: %s", strerror(errno));
        return r;
    }
    (void)setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (ss.ss_family == AF_INET6)
        (void)setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof(zero));
    if (bind(fd, (struct sockaddr *)&ss, len) < 0 || listen(fd, 64) < 0) {
        r = -errno;
        snprintf(err, errlen, "cannot listen on %s: %s", addr_port, strerror(errno));
        close(fd);
        return r;
    }
    return fd;
}

static unsigned bound_port(int fd)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof(ss);

    if (getsockname(fd, (struct sockaddr *)&ss, &len) < 0)
        return 0;
    if (ss.ss_family == AF_INET6)
        return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
    return ntohs(((struct sockaddr_in *)&ss)->sin_port);
}

int vblk_metrics_start(struct vblk_metrics **mp, const char *addr_port, vblk_metrics_collect_fn fn,
                       void *opaque, char *err, size_t errlen)
{
    struct vblk_metrics *m = calloc(1, sizeof(*m));
    const union MHD_DaemonInfo *info;
    int fd;

    *mp = NULL;
    if (!m) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    m->fn = fn;
    m->opaque = opaque;
    fd = listen_on(addr_port, err, errlen);
    if (fd < 0) {
        free(m);
        return fd;
    }
    m->port = bound_port(fd);
    /* no thread of its own: MHD_USE_EPOLL without MHD_USE_INTERNAL_POLLING_THREAD */
    m->d = MHD_start_daemon(MHD_USE_EPOLL, 0, NULL, NULL, on_request, m, MHD_OPTION_LISTEN_SOCKET,
                            fd, MHD_OPTION_CONNECTION_LIMIT, (unsigned)VBLK_METRICS_MAX_CONN,
                            MHD_OPTION_PER_IP_CONNECTION_LIMIT,
                            (unsigned)VBLK_METRICS_MAX_CONN_PER_IP, MHD_OPTION_CONNECTION_TIMEOUT,
                            (unsigned)VBLK_METRICS_CONN_TIMEOUT_S, MHD_OPTION_END);
    if (!m->d) {
        /* MHD_start_daemon does not take the socket when it fails */
        close(fd);
        free(m);
        snprintf(err, errlen, "cannot start the HTTP server on %s", addr_port);
        return -EIO;
    }
    info = MHD_get_daemon_info(m->d, MHD_DAEMON_INFO_EPOLL_FD);
    if (!info || info->epoll_fd < 0) {
        MHD_stop_daemon(m->d);
        free(m);
        snprintf(err, errlen, "the HTTP server has no epoll fd");
        return -EIO;
    }
    m->epfd = info->epoll_fd;
    *mp = m;
    return 0;
}

int vblk_metrics_fd(const struct vblk_metrics *m)
{
    return m->epfd;
}

unsigned vblk_metrics_port(const struct vblk_metrics *m)
{
    return m->port;
}

int vblk_metrics_timeout_ms(const struct vblk_metrics *m)
{
    MHD_UNSIGNED_LONG_LONG t;

    if (!m || MHD_get_timeout(m->d, &t) != MHD_YES)
        return -1;
    return t > 60000 ? 60000 : (int)t;
}

void vblk_metrics_run(struct vblk_metrics *m)
{
    if (m)
        (void)MHD_run(m->d);
}

void vblk_metrics_stop(struct vblk_metrics *m)
{
    if (!m)
        return;
    MHD_stop_daemon(m->d); /* closes the listening socket too */
    free(m);
}
