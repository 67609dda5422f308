/* metrics.h - the exports' counters in Prometheus text format, served over HTTP (GET /metrics).
 *
 * Owns: a libmicrohttpd daemon without threads of its own, run from the caller's event loop
 * (its epoll fd in the caller's epoll set, vblk_metrics_run() when it is readable or the
 * timeout of vblk_metrics_timeout_ms() expires), and the text format.  The caller owns the
 * export list: on each scrape the collect callback appends every export's samples with
 * vblk_metrics_format_export(), and the families are then written out each under one HELP and
 * one TYPE line.  Only GET /metrics is served (404 for other paths, 405 for other methods);
 * connections are limited in number and time, so idle or slow clients cannot pile up.
 *
 * Threads: all of it on the control (main) thread.  Collecting reads the queues' counters
 * without calling into the I/O threads (vblk_blk_read_stats).
 */
#ifndef VBLK_METRICS_H
#define VBLK_METRICS_H

#include <stddef.h>
#include <sys/socket.h>

#include "blk/virtio_blk.h"
#include "util/buf.h"

#define VBLK_METRICS_FAMILIES        10
#define VBLK_METRICS_MAX_CONN        16 /* connections at once (more wait in the backlog) */
#define VBLK_METRICS_MAX_CONN_PER_IP 8
#define VBLK_METRICS_CONN_TIMEOUT_S  5 /* an idle connection is closed after this */

/* Samples gathered during one scrape, one buffer per metric family. */
struct vblk_metrics_out {
    struct vblk_buf fam[VBLK_METRICS_FAMILIES];
};

typedef void (*vblk_metrics_collect_fn)(struct vblk_metrics_out *out, void *opaque);

/* Append one export's samples: per queue (labels export, queue, and op where it applies) from
 * per_queue[0..nq), and the export-level ones (throttling) from total, which may be NULL
 * (then they are left out).  export_id is escaped as a label value needs. */
void vblk_metrics_format_export(struct vblk_metrics_out *out, const char *export_id,
                                const struct vblk_blk_stats *per_queue, unsigned nq,
                                const struct vblk_blk_stats *total);
/* The exposition text of everything appended (malloc'ed, NUL-terminated; *len bytes), or NULL
 * when memory ran out.  Empties out either way. */
char *vblk_metrics_render(struct vblk_metrics_out *out, size_t *len);
void vblk_metrics_out_free(struct vblk_metrics_out *out);

/* "127.0.0.1:9100", "[::1]:9100" or ":9100" (every address, IPv6 and IPv4) into a socket
 * address; numeric addresses only, port 0-65535 (0: the kernel picks one).  0 or -EINVAL with
 * err saying why. */
int vblk_metrics_parse_addr(const char *addr_port, struct sockaddr_storage *ss, socklen_t *len,
                            char *err, size_t errlen);

struct vblk_metrics;

/* Listen on addr_port and serve fn's samples.  0, or -errno with err saying what failed. */
int vblk_metrics_start(struct vblk_metrics **m, const char *addr_port, vblk_metrics_collect_fn fn,
                       void *opaque, char *err, size_t errlen);
/* The fd to watch for readability (an epoll fd). */
int vblk_metrics_fd(const struct vblk_metrics *m);
/* How long the caller may sleep before vblk_metrics_run() is due, in ms; -1: no limit (also
 * for m == NULL, so a loop without metrics can pass it to epoll_wait as it is). */
int vblk_metrics_timeout_ms(const struct vblk_metrics *m);
/* Do whatever is ready: accept, read, answer, close idle connections.  Never blocks. */
void vblk_metrics_run(struct vblk_metrics *m);
/* The port it listens on (useful with port 0). */
unsigned vblk_metrics_port(const struct vblk_metrics *m);
/* Close every connection and the listening socket; m may be NULL. */
void vblk_metrics_stop(struct vblk_metrics *m);

#endif
