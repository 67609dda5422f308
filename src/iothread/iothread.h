/* iothread.h - a data-plane thread: an epoll loop, an I/O engine and a control channel.
 *
 * Owns: the thread that serves queues.  Each loop iteration handles ready fds (queue kicks,
 * engine completions, control messages), then submits everything queued to the engine in one
 * call, then runs the end-of-batch hooks (publish used rings, one interrupt per queue), then
 * retries a pending control call.  Nothing on this path takes a lock (the thread-pool engine
 * aside, see engine/threads.c).
 *
 * Control calls run after the fd handlers of their loop iteration, so no handler ever sees an
 * epoll event gathered before a call changed the sources (a stale event).
 *
 * Called from the control (main) thread: create, destroy, call, wedged.
 * Called from the I/O thread only: add_fd, mod_fd, del_fd, defer, again, engine, now.
 * Called from any thread: self.
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
    uint32_t revents; /* the EPOLL* events of this call (set by the loop before fn) */
};

/* Something the loop checks without a syscall while it polls (a queue's avail ring). */
struct vblk_iot_poller {
    /* take any new work; true if there was some */
    bool (*poll)(struct vblk_iot_poller *p);
    /* polling stops: re-enable notifications; true if work arrived meanwhile (keep polling) */
    bool (*arm)(struct vblk_iot_poller *p);
    /* optional: requests done so far (monotonic), for the polling policy's trials */
    uint64_t (*progress)(struct vblk_iot_poller *p);
    struct vblk_iot_poller *next;
};

/* End-of-batch hook, queued at most once per iteration. */
struct vblk_iot_hook {
    void (*fn)(struct vblk_iot_hook *h);
    struct vblk_iot_hook *next;
    bool queued;
};

/* How long the control thread waits for an I/O thread to answer a call (draining included). */
#define VBLK_IOT_CALL_TIMEOUT_MS 10000

/* Start a thread named name with an engine of the given type sized for depth in-flight I/Os;
 * every engine completion runs its io->cb.  poll_us > 0: after the last work, spin on the
 * pollers and the engine's completions before sleeping (notifications stay off while spinning),
 * for a window adapted between 0 and poll_us to how soon work follows a sleep.  Calls that get
 * no answer within timeout_ms fail with -ETIMEDOUT.  0 or -errno. */
int vblk_iothread_create(struct vblk_iothread **out, const char *name,
                         const struct vblk_engine_ops *engine, unsigned depth, unsigned poll_us,
                         unsigned timeout_ms);

/* Stop and join the thread, free everything.  Sources must have been removed.  A wedged thread
 * cannot be joined: it is left to itself, with everything it may still touch. */
void vblk_iothread_destroy(struct vblk_iothread *t);

/* Run fn(arg) in the I/O thread and wait for it.  fn may return -EINPROGRESS to be called again
 * after each later loop iteration until it returns anything else, which is returned here.
 * If the whole call takes longer than the thread's timeout, it is cancelled (fn is not called
 * again, or at all if it had not started), the thread is marked wedged and -ETIMEDOUT returned;
 * every later call to a wedged thread fails at once with -ETIMEDOUT.  The caller must then treat
 * whatever fn or the thread may still touch as theirs forever (see vblk_vu_dev's wedged). */
int vblk_iothread_call(struct vblk_iothread *t, int (*fn)(void *arg), void *arg);
/* Has a call to t timed out? */
bool vblk_iothread_wedged(const struct vblk_iothread *t);

/* Run the thread on one CPU only (iothread-cpus=).  0 or -errno (-EINVAL: no such CPU). */
int vblk_iothread_pin(struct vblk_iothread *t, int cpu);

/* Change the polling window limit (poll_us, see create).  Polling cannot be switched on or off
 * on a running thread (queues set their notifications up for one or the other): -EINVAL if
 * poll_us is 0 and the thread polls or the reverse.  0 or -errno (of the call). */
int vblk_iothread_set_poll(struct vblk_iothread *t, unsigned poll_us);

/* What the polling policy decided last (iothread/poll_policy.h), as the thread published it at
 * its last trial (every ~2 s) or window change: relaxed loads, never a call into the thread. */
struct vblk_iot_poll_info {
    bool polls;             /* poll-us > 0 */
    bool spinning;          /* the last trial kept spinning for the whole limit */
    uint64_t window_ns;     /* the priced window otherwise */
    uint64_t sleep_cost_ns; /* measured CPU cost of one sleep */
    uint64_t trials, spin_wins;
};
void vblk_iothread_poll_info(const struct vblk_iothread *t, struct vblk_iot_poll_info *out);

/* I/O thread only. */
int vblk_iothread_add_fd(struct vblk_iothread *t, int fd, struct vblk_iot_source *src);
/* Watch an added fd for writability too (out) or for readability only (a network driver whose
 * socket buffer filled up). */
int vblk_iothread_mod_fd(struct vblk_iothread *t, int fd, struct vblk_iot_source *src, bool out);
void vblk_iothread_del_fd(struct vblk_iothread *t, int fd);
void vblk_iothread_defer(struct vblk_iothread *t, struct vblk_iot_hook *h);
/* Run h at the start of the next loop iteration, after a look at every fd (no sleep): for work
 * left over when a budget ran out, so that one busy source cannot starve the others. */
void vblk_iothread_again(struct vblk_iothread *t, struct vblk_iot_hook *h);
void vblk_iothread_add_poller(struct vblk_iothread *t, struct vblk_iot_poller *p);
void vblk_iothread_del_poller(struct vblk_iothread *t, struct vblk_iot_poller *p);
/* Does this thread poll?  (Then work found by an fd handler need not re-arm notifications.) */
bool vblk_iothread_polls(const struct vblk_iothread *t);
struct vblk_engine *vblk_iothread_engine(struct vblk_iothread *t);
/* The I/O thread calling, or NULL outside I/O threads (for a driver that needs its thread). */
struct vblk_iothread *vblk_iothread_self(void);
/* CLOCK_MONOTONIC in ns, read at most once per iteration of the loop and kept until the next
 * point where time is known to have moved: the end-of-batch hooks (whose first call reads it
 * again; the polling logic after them reuses that value) and a sleep in epoll_wait.  So every
 * request taken in one pass shares one start time and every completion published at one end of
 * batch one end time; a thread that polls reads the clock once per iteration, as it did before
 * (the end of one batch is the start of the next pass), one that sleeps at most twice: when work
 * comes and at the end of the batch. */
uint64_t vblk_iothread_now(struct vblk_iothread *t);

#endif
