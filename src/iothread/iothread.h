/* iothread.h - a data-plane thread: an epoll loop, an I/O engine and a control channel.
 *
 * Owns: the thread that serves queues.  Each loop iteration handles ready fds (queue kicks,
 * engine completions, control messages), then submits everything queued to the engine in one
 * call, then runs the end-of-batch hooks (publish used rings, one interrupt per queue), then
 * retries a pending control call.  Nothing on this path takes a lock (the thread-pool engine
 * aside, see engine/threads.c).
 *
 * Called from the control (main) thread: create, destroy, call.
 * Called from the I/O thread only: add_fd, del_fd, defer, engine.
 */
#ifndef VBLK_IOTHREAD_H
#define VBLK_IOTHREAD_H

#include <stdbool.h>
#include <stdint.h>

#include "engine/engine.h"

struct vblk_iothread;

/* An fd the loop watches; fn runs in the I/O thread. */
struct vblk_iot_source {
    void (*fn)(struct vblk_iot_source *src);
};

/* Something the loop checks without a syscall while it polls (a queue's avail ring). */
struct vblk_iot_poller {
    /* take any new work; true if there was some */
    bool (*poll)(struct vblk_iot_poller *p);
    /* polling stops: re-enable notifications; true if work arrived meanwhile (keep polling) */
    bool (*arm)(struct vblk_iot_poller *p);
    struct vblk_iot_poller *next;
};

/* End-of-batch hook, queued at most once per iteration. */
struct vblk_iot_hook {
    void (*fn)(struct vblk_iot_hook *h);
    struct vblk_iot_hook *next;
    bool queued;
};

/* Start a thread named name with an engine of the given type sized for depth in-flight I/Os;
 * every engine completion is passed to done.  poll_us > 0: after the last work, spin on the
 * pollers and the engine's completions before sleeping (notifications stay off while spinning),
 * for a window adapted between 0 and poll_us to how soon work follows a sleep.  0 or -errno. */
int vblk_iothread_create(struct vblk_iothread **out, const char *name,
                         const struct vblk_engine_ops *engine, unsigned depth, vblk_io_done_fn done,
                         unsigned poll_us);

/* Stop and join the thread, free everything.  Sources must have been removed. */
void vblk_iothread_destroy(struct vblk_iothread *t);

/* Run fn(arg) in the I/O thread and wait for it.  fn may return -EINPROGRESS to be called again
 * after each later loop iteration until it returns anything else, which is returned here. */
int vblk_iothread_call(struct vblk_iothread *t, int (*fn)(void *arg), void *arg);

/* I/O thread only. */
int vblk_iothread_add_fd(struct vblk_iothread *t, int fd, struct vblk_iot_source *src);
void vblk_iothread_del_fd(struct vblk_iothread *t, int fd);
void vblk_iothread_defer(struct vblk_iothread *t, struct vblk_iot_hook *h);
void vblk_iothread_add_poller(struct vblk_iothread *t, struct vblk_iot_poller *p);
void vblk_iothread_del_poller(struct vblk_iothread *t, struct vblk_iot_poller *p);
/* Does this thread poll?  (Then work found by an fd handler need not re-arm notifications.) */
bool vblk_iothread_polls(const struct vblk_iothread *t);
struct vblk_engine *vblk_iothread_engine(struct vblk_iothread *t);

#endif
