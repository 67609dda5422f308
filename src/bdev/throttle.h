/* throttle.h - the "throttle" filter: I/O limits per export and per named group of exports.
 *
 * Owns: the throttle configuration (keys iops-total, iops-read, iops-write, bps-total, bps-read,
 * bps-write, each with -max and -max-length, and throttle-group), its parsing and checks, the
 * filter driver (always the top of an export's stack, so that limits can be set on any export
 * while it runs) and the live change of its limits.
 *
 * Semantics (QEMU throttle groups; the maths is in throttle_bucket.h): reads and writes are
 * accounted (1 operation, len bytes); write-zeroes and discard count as writes of 0 bytes (one
 * operation: a 2 GiB discard moves no data); flush is never held.  A request over a limit waits
 * in the I/O thread and is never failed.  Waiting requests leave in arrival order, per direction:
 * reads in one FIFO, writes in another, over every queue of the export and every export of the
 * group; the older of the two heads goes first when both may, and a head held only by its own
 * direction's limit (bps-write, say) does not hold the other direction back.  With no limit set
 * the filter costs one predictable branch and the jump to the driver below (8 instructions).
 *
 * A group (throttle-group=NAME) is created by its first member and freed with its last; its
 * limits are the group's: the member that creates it gives them (later members give the same
 * limits or none), and a live change through any member changes them for all.  Without a group
 * the limits are the export's own.
 *
 * Draining: when a queue stops (vblk_bdev_drain from virtio-blk, see bdev.h), every request
 * waiting in that I/O thread is released at once (accounted, so later requests wait longer):
 * a stop never waits for the limits (1000 requests at 1 iops would take 1000 s).
 *
 * Threads and locks.  Buckets and waiting lists live in a throttle state: the export's own, or
 * the group's.  A state used by one I/O thread only (an ungrouped export with iothreads=1) takes
 * no lock.  A state shared by several I/O threads (a group, or an export with several I/O
 * threads) is guarded by a mutex held for a few hundred instructions per throttled request -
 * the one exception to "no locks on the I/O path", and only while limits are set.  Each (filter,
 * I/O thread) pair has a timerfd in that thread's loop; a waiting request is released by its own
 * I/O thread only (when another thread finds it may go, it hands it over and fires that thread's
 * timer).  Stats counters are written by one thread each and read with relaxed atomics.
 *  - control thread: vblk_throttle_conf_*, vblk_throttle_set, vblk_throttle_get,
 *    vblk_throttle_get_stats, and the driver's open/close;
 *  - I/O thread: submit and drain.
 */
#ifndef VBLK_THROTTLE_H
#define VBLK_THROTTLE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "bdev/throttle_bucket.h"

struct vblk_bdev;
struct vblk_iothread;

#define VBLK_THROTTLE_GROUP_MAX 64 /* bytes of a group name, NUL included */

struct vblk_throttle_conf {
    /* indexed by enum vblk_tb_kind: iops-total, iops-read, iops-write, bps-total, bps-read,
     * bps-write; avg is KEY, max KEY-max, max_length KEY-max-length (0: 1 second) */
    struct vblk_tb_limit limit[VBLK_TB_COUNT];
    char group[VBLK_THROTTLE_GROUP_MAX]; /* throttle-group; "" for none */
};

/* The throttle keys of an export, NULL-terminated. */
extern const char *const vblk_throttle_keys[];

/* Set key to value in c.  0; -ENOENT if key is not a throttle key; -EINVAL with err naming the
 * key, the value and what is allowed (iops: an integer, bps: a size such as 10M, -max-length:
 * seconds >= 1, all up to 10^15; 0 means no limit; a group name: 1-63 of [A-Za-z0-9._-]). */
int vblk_throttle_conf_set(struct vblk_throttle_conf *c, const char *key, const char *value,
                           char *err, size_t errlen);
/* The value of key in c as set() reads it ("" for an unknown key or no group). */
void vblk_throttle_conf_get(const struct vblk_throttle_conf *c, const char *key, char *buf,
                            size_t cap);
/* Checks across keys (as QEMU's): KEY-max needs KEY and is >= KEY, KEY-max-length > 1 needs
 * KEY-max, KEY-max * KEY-max-length <= 10^15.  0 or -EINVAL with err naming the keys. */
int vblk_throttle_conf_check(const struct vblk_throttle_conf *c, char *err, size_t errlen);
/* Does c set any limit? */
bool vblk_throttle_conf_enabled(const struct vblk_throttle_conf *c);

/* The throttle filter in the stack topped by b (b itself normally), or NULL. */
struct vblk_bdev *vblk_throttle_find(struct vblk_bdev *b);

/* Control thread: change the limits of b's stack (of its group if it has one; the group name
 * cannot change: c->group must be "" or the current one) while it runs.  iots are the I/O
 * threads the export's queues run on (niot >= 1); the change is made in iots[0] through
 * vblk_iothread_call, then every waiting request is re-timed under the new limits (lifted
 * limits release them at once), in each of iots and by a timer in other members' threads.
 * Buckets start empty under new limits.  0, -EINVAL with err set, or the call's error. */
int vblk_throttle_set(struct vblk_bdev *b, const struct vblk_throttle_conf *c,
                      struct vblk_iothread *const *iots, unsigned niot, char *err, size_t errlen);
/* Control thread: the limits in force (the group's if any; as last set through this API or at
 * open).  0, or -ENOENT if b's stack has no throttle filter. */
int vblk_throttle_get(struct vblk_bdev *b, struct vblk_throttle_conf *out);
/* Any thread: time requests of b's filter spent waiting (ns, counted when they leave) and how
 * many waited.  Zeroes if b's stack has no throttle filter. */
void vblk_throttle_get_stats(struct vblk_bdev *b, uint64_t *throttled_ns, uint64_t *throttled_reqs);

#endif
