/* vhost_user.h - vhost-user back-end for one export: one front-end connection at a time.
 *
 * Owns: receiving messages (header, payload, fds) without blocking, checking each against the
 * spec before use, and applying them: features, memory table, vring setup, config, the
 * in-flight record (GET/SET_INFLIGHT_FD: after a crash of the daemon the next one resubmits what
 * was in flight), and the lifecycle of each ring (started on KICK, stopped on GET_VRING_BASE /
 * disable / disconnect).
 * Any malformed message (bad size, unknown code, bad fd count, index out of range, a kick, call
 * or err fd that is not a plain eventfd, guest memory outside a memory file system or over the
 * caps of guest_mem.h, ...) closes the connection with a log line; the export then accepts a new
 * front-end.  At most VBLK_VU_MSG_BUDGET messages are handled per readable event, so a
 * front-end streaming messages cannot keep the control thread from other exports.
 *
 * Wedged: if an I/O thread does not answer a queue call in time (iothread.h), the connection is
 * closed and the export torn down for good: its rings, guest memory and fds are left to the
 * stuck thread (never unmapped or closed under it) and every later connection is refused.
 *
 * Threads: control thread only.  The data plane is reached through virtio_blk.h.
 */
#ifndef VBLK_VHOST_USER_H
#define VBLK_VHOST_USER_H

#include <stdbool.h>
#include <stdint.h>

#include "blk/virtio_blk.h"
#include "mem/guest_mem.h"
#include "vhost/vhost_user_proto.h"

#define VBLK_VU_MAX_QUEUES 64
#define VBLK_VU_MSG_BUDGET 64 /* messages handled per vblk_vu_readable() */

struct vu_vring {
    uint16_t num;
    uint32_t base; /* split: avail index; packed: avail and used positions with wrap counters */
    uint64_t desc_uva, avail_uva, used_uva;
    bool addr_set;
    bool kick_set;
    bool enabled;
    bool started;
    int kick_fd, call_fd, err_fd;
    bool log_used;           /* SET_VRING_ADDR asked for used-ring logging */
    uint64_t log_guest_addr; /* where the used ring's writes are logged */
};

struct vblk_vu_dev {
    const char *name;
    struct vblk_blk_dev *blk;
    int conn_fd; /* -1 when no front-end */
    uint64_t features;
    uint64_t protocol_features;
    struct vblk_mem *mem;
    unsigned nvrings;
    struct vu_vring vrings[VBLK_VU_MAX_QUEUES];
    /* receive state */
    struct vhost_user_msg msg;
    uint32_t have;
    int fds[VHOST_USER_MAX_FDS];
    unsigned nfds;
    struct vblk_mem_owner mem_owner; /* this connection's mappings, caps, SIGBUS verdict */
    /* in-flight record shared with the front-end (SET_INFLIGHT_FD); map == NULL: none */
    struct vblk_mem_region inflight;
    unsigned inflight_queues, inflight_qsize;
    /* dirty log for live migration (SET_LOG_BASE), used while VHOST_F_LOG_ALL is on */
    struct vblk_mem_region log;
    int backend_fd; /* SET_BACKEND_REQ_FD: our requests to the front-end, or -1 */
    bool wedged;    /* an I/O thread stopped answering: torn down for good */
};

#define VBLK_VU_PROTOCOL_FEATURES                                                                  \
    ((1ull << VHOST_USER_PROTOCOL_F_MQ) | (1ull << VHOST_USER_PROTOCOL_F_REPLY_ACK) |              \
     (1ull << VHOST_USER_PROTOCOL_F_CONFIG) |                                                      \
     (1ull << VHOST_USER_PROTOCOL_F_CONFIGURE_MEM_SLOTS) |                                         \
     (1ull << VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD) | (1ull << VHOST_USER_PROTOCOL_F_LOG_SHMFD) |  \
     (1ull << VHOST_USER_PROTOCOL_F_BACKEND_REQ))

void vblk_vu_init(struct vblk_vu_dev *v, const char *name, struct vblk_blk_dev *blk);

/* Take a new connection (non-blocking fd).  -EBUSY if one is already served, -EIO if the export
 * is wedged (fd not taken). */
int vblk_vu_attach(struct vblk_vu_dev *v, int fd);

/* The connection is readable: receive and handle up to VBLK_VU_MSG_BUDGET whole messages (call
 * again while the fd stays readable).  0, or -errno after which the connection has been closed
 * (peer hung up or protocol error). */
int vblk_vu_readable(struct vblk_vu_dev *v);

/* The SIGBUS guard fired (vblk_mem_guard_fd() readable): if it replaced memory of this
 * connection, close the connection (the front-end took guest memory away under a running ring).
 * true if it did. */
bool vblk_vu_check_lost_memory(struct vblk_vu_dev *v);

/* The device's config space changed (capacity after a resize): tell the front-end on the
 * back-end channel (BACKEND_CONFIG_CHANGE_MSG, no reply asked), so that it re-reads the config and
 * interrupts the guest.  0 (also with no front-end), -ENOTCONN if the front-end gave no back-end
 * channel, or -errno if the message could not be sent at once. */
int vblk_vu_config_changed(struct vblk_vu_dev *v);

/* Stop every ring (waiting for in-flight I/O), unmap guest memory, close the connection. */
void vblk_vu_disconnect(struct vblk_vu_dev *v);

#endif
