/* daemon.h - the control plane of vblkd: the exports, the event loop of the main thread and the
 * RPC methods that change them live.
 *
 * Owns: the list of exports (added from the command line, the config file or export-add, removed
 * by export-del or at exit), the main thread's epoll loop (signals, listening sockets, front-end
 * connections, the SIGBUS guard, the control socket, the metrics server), and the methods of the
 * control socket (see rpc-protocol in README: export-add, export-del, export-list, export-resize,
 * export-set, stats, check-host, version, shutdown).  An export removed while its events are still
 * in the current batch is freed only after the batch.
 *
 * Threads: the main (control) thread only.  I/O threads are reached through the exports.
 */
#ifndef VBLK_DAEMON_H
#define VBLK_DAEMON_H

#include <stdbool.h>
#include <sys/types.h>

#include "control/rpc.h"
#include "options.h"

#define VBLK_MAX_EXPORTS 256

struct vblk_daemon;
struct json_object;

struct vblk_daemon_conf {
    const char *rpc_path; /* NULL: no control socket */
    mode_t rpc_mode;      /* 0: 0600 */
    uid_t rpc_uid;        /* (uid_t)-1: unchanged */
    gid_t rpc_gid;
    const char *metrics; /* ADDR:PORT, or NULL */
};

/* Set up the loop and the control socket.  0, or -errno with err set. */
int vblk_daemon_create(struct vblk_daemon **out, const struct vblk_daemon_conf *c, char *err,
                       size_t errlen);
/* Bring up one export (its options are copied).  0, or -errno with err set (nothing left). */
int vblk_daemon_add_export(struct vblk_daemon *d, const struct vblk_export_opts *o, char *err,
                           size_t errlen);
/* Add the exports of a config file: {"exports": [{key: value, ...}, ...]}, the objects as
 * export-add takes them.  0, or -errno with err naming the file, the entry and the problem. */
int vblk_daemon_load_config(struct vblk_daemon *d, const char *path, char *err, size_t errlen);
/* Read a config file as vblk_daemon_load_config does, calling fn with each export's checked
 * options (err: its message).  0, or the first error (fn's, or -EINVAL) with err set. */
int vblk_config_read(const char *path,
                     int (*fn)(void *opaque, const struct vblk_export_opts *o, char *err,
                               size_t errlen),
                     void *opaque, char *err, size_t errlen);
unsigned vblk_daemon_num_exports(const struct vblk_daemon *d);
/* Serve until SIGINT/SIGTERM or the shutdown method.  0, or 1 after a fatal loop error. */
int vblk_daemon_run(struct vblk_daemon *d);
/* Stop every export (draining, flushing) and free everything. */
void vblk_daemon_destroy(struct vblk_daemon *d);

/* The RPC methods, for tests and the fuzzer (NULL-terminated). */
extern const struct vblk_rpc_method vblk_daemon_methods[];

#endif
