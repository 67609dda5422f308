/* iothread.c - see iothread.h. */
#include "iothread/iothread.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "iothread/poll_policy.h"
#include "util/compiler.h"
#include "util/log.h"

#define IOT_MAX_EVENTS 64

struct vblk_iothread {
    pthread_t tid;
    char name[16];
    int epfd;
    struct vblk_engine *eng;
    const struct vblk_engine_ops *eng_ops; /* for the thread to create eng itself */
    unsigned eng_depth;
    struct vblk_iot_source eng_src;
    struct vblk_iot_source cmd_src;
    struct vblk_iot_hook *hooks;
    struct vblk_iot_hook *again; /* run at the start of the next iteration */
    struct vblk_iot_poller *pollers;
    uint64_t poll_max_ns;         /* 0: never poll (read by the control thread in set_poll) */
    struct vblk_poll_policy poll; /* the window, adapted between 0 and poll_max_ns */
    unsigned sleeps;              /* to sample the cost of one in 8 */
    uint64_t gone_progress;       /* with the pollers' progress: a count that never goes back */
    struct vblk_iot_poll_info poll_pub; /* published by the thread with relaxed stores */
    bool work;                          /* this iteration did something */
    bool now_valid;                     /* now holds this phase's time (vblk_iothread_now) */
    uint64_t now;

    /* control channel: one call at a time (the control thread is single) */
    int cmd_efd;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int (*cmd_fn)(void *arg); /* under lock */
    void *cmd_arg;            /* under lock */
    int cmd_ret;              /* under lock */
    bool cmd_done;            /* under lock */
    int cmd_flag;             /* atomic: a call is waiting (checked while polling) */
    bool cmd_cancelled;       /* under lock: the caller gave up on the running call */
    bool wedged;              /* control thread: a call timed out */
    unsigned timeout_ms;
    int (*pending_fn)(void *arg); /* I/O thread: a call returning -EINPROGRESS */
    void *pending_arg;
    bool stop;
};

static __thread struct vblk_iothread *self;

struct vblk_iothread *vblk_iothread_self(void)
{
    return self;
}

struct vblk_engine *vblk_iothread_engine(struct vblk_iothread *t)
{
    return t->eng;
}

int vblk_iothread_add_fd(struct vblk_iothread *t, int fd, struct vblk_iot_source *src)
{
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = src};

    return epoll_ctl(t->epfd, EPOLL_CTL_ADD, fd, &ev) < 0 ? -errno : 0;
}

int vblk_iothread_mod_fd(struct vblk_iothread *t, int fd, struct vblk_iot_source *src, bool out)
{
    struct epoll_event ev = {.events = EPOLLIN | (out ? EPOLLOUT : 0u), .data.ptr = src};

    return epoll_ctl(t->epfd, EPOLL_CTL_MOD, fd, &ev) < 0 ? -errno : 0;
}

void vblk_iothread_del_fd(struct vblk_iothread *t, int fd)
{
    epoll_ctl(t->epfd, EPOLL_CTL_DEL, fd, NULL);
}

void vblk_iothread_defer(struct vblk_iothread *t, struct vblk_iot_hook *h)
{
    if (h->queued)
        return;
    h->queued = true;
    h->next = t->hooks;
    t->hooks = h;
}

static uint64_t now_ns(void);

void vblk_iothread_add_poller(struct vblk_iothread *t, struct vblk_iot_poller *p)
{
    if (p->progress) /* what it did before does not count (mod 2^64, as the sum is) */
        t->gone_progress -= p->progress(p);
    p->next = t->pollers;
    t->pollers = p;
    vblk_poll_restart(&t->poll, now_ns()); /* a new workload: is spinning worth it for it? */
}

void vblk_iothread_del_poller(struct vblk_iothread *t, struct vblk_iot_poller *p)
{
    if (p->progress)
        t->gone_progress += p->progress(p);
    for (struct vblk_iot_poller **pp = &t->pollers; *pp; pp = &(*pp)->next) {
        if (*pp == p) {
            *pp = p->next;
            return;
        }
    }
}

void vblk_iothread_again(struct vblk_iothread *t, struct vblk_iot_hook *h)
{
    if (h->queued)
        return;
    h->queued = true;
    h->next = t->again;
    t->again = h;
}

struct set_poll_arg {
    struct vblk_iothread *t;
    uint64_t ns;
};

static int set_poll_fn(void *arg)
{
    struct set_poll_arg *a = arg;

    __atomic_store_n(&a->t->poll_max_ns, a->ns, __ATOMIC_RELAXED);
    vblk_poll_set_max(&a->t->poll, a->ns);
    return 0;
}

int vblk_iothread_pin(struct vblk_iothread *t, int cpu)
{
    cpu_set_t set;

    if (cpu < 0 || cpu >= CPU_SETSIZE)
        return -EINVAL;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    return -pthread_setaffinity_np(t->tid, sizeof(set), &set);
}

int vblk_iothread_set_poll(struct vblk_iothread *t, unsigned poll_us)
{
    struct set_poll_arg a = {.t = t, .ns = (uint64_t)poll_us * 1000};

    /* poll_max_ns only changes on this thread's behalf in set_poll_fn; reading it here, on the
     * control thread, races with nothing but that */
    if ((a.ns == 0) != (__atomic_load_n(&t->poll_max_ns, __ATOMIC_RELAXED) == 0))
        return -EINVAL;
    return vblk_iothread_call(t, set_poll_fn, &a);
}

bool vblk_iothread_polls(const struct vblk_iothread *t)
{
    return t->poll_max_ns != 0;
}

static uint64_t clock_ns(clockid_t clk)
{
    struct timespec ts;

    clock_gettime(clk, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static uint64_t now_ns(void)
{
    return clock_ns(CLOCK_MONOTONIC);
}

uint64_t vblk_iothread_now(struct vblk_iothread *t)
{
    if (!t->now_valid) {
        t->now = now_ns();
        t->now_valid = true;
    }
    return t->now;
}

static void finish_call(struct vblk_iothread *t, int ret)
{
    pthread_mutex_lock(&t->lock);
    t->cmd_ret = ret;
    t->cmd_done = true;
    pthread_cond_signal(&t->cond);
    pthread_mutex_unlock(&t->lock);
}

/* A call returning -EINPROGRESS is retried each iteration, unless its caller gave up. */
static void retry_pending(struct vblk_iothread *t)
{
    bool cancelled;
    int r;

    pthread_mutex_lock(&t->lock);
    cancelled = t->cmd_cancelled;
    pthread_mutex_unlock(&t->lock);
    if (cancelled) {
        t->pending_fn = NULL;
        return;
    }
    r = t->pending_fn(t->pending_arg);
    if (r != -EINPROGRESS) {
        t->pending_fn = NULL;
        finish_call(t, r);
    }
}

static void cmd_ready(struct vblk_iot_source *src)
{
    struct vblk_iothread *t = container_of(src, struct vblk_iothread, cmd_src);
    int (*fn)(void *);
    void *arg;
    eventfd_t v;
    int r;

    (void)eventfd_read(t->cmd_efd, &v);
    __atomic_store_n(&t->cmd_flag, 0, __ATOMIC_RELAXED);
    pthread_mutex_lock(&t->lock);
    fn = t->cmd_fn;
    arg = t->cmd_arg;
    t->cmd_fn = NULL;
    t->cmd_cancelled = false;
    pthread_mutex_unlock(&t->lock);
    if (!fn)
        return;
    r = fn(arg);
    if (r == -EINPROGRESS) {
        t->pending_fn = fn;
        t->pending_arg = arg;
        return;
    }
    finish_call(t, r);
}

static void engine_ready(struct vblk_iot_source *src)
{
    struct vblk_iothread *t = container_of(src, struct vblk_iothread, eng_src);
    eventfd_t v;

    (void)eventfd_read(t->eng->efd, &v); /* before reaping: a later completion re-arms it */
    if (t->eng->ops->reap(t->eng, vblk_io_complete, t))
        t->work = true;
}

/* One pass over everything that can be checked without a syscall. */
static void poll_once(struct vblk_iothread *t)
{
    for (struct vblk_iot_poller *p = t->pollers; p; p = p->next) {
        if (p->poll(p))
            t->work = true;
    }
    if (t->eng->ops->ready(t->eng) && t->eng->ops->reap(t->eng, vblk_io_complete, t))
        t->work = true;
}

static void poll_publish(struct vblk_iothread *t)
{
    struct vblk_iot_poll_info *o = &t->poll_pub;

    __atomic_store_n(&o->spinning, t->poll.spin, __ATOMIC_RELAXED);
    __atomic_store_n(&o->window_ns, t->poll.window_ns, __ATOMIC_RELAXED);
    __atomic_store_n(&o->sleep_cost_ns, t->poll.wake_ns, __ATOMIC_RELAXED);
    __atomic_store_n(&o->trials, t->poll.trials, __ATOMIC_RELAXED);
    __atomic_store_n(&o->spin_wins, t->poll.spin_wins, __ATOMIC_RELAXED);
}

void vblk_iothread_poll_info(const struct vblk_iothread *t, struct vblk_iot_poll_info *out)
{
    const struct vblk_iot_poll_info *o = &t->poll_pub;

    out->polls = __atomic_load_n(&t->poll_max_ns, __ATOMIC_RELAXED) != 0;
    out->spinning = __atomic_load_n(&o->spinning, __ATOMIC_RELAXED);
    out->window_ns = __atomic_load_n(&o->window_ns, __ATOMIC_RELAXED);
    out->sleep_cost_ns = __atomic_load_n(&o->sleep_cost_ns, __ATOMIC_RELAXED);
    out->trials = __atomic_load_n(&o->trials, __ATOMIC_RELAXED);
    out->spin_wins = __atomic_load_n(&o->spin_wins, __ATOMIC_RELAXED);
}

/* The polling policy's trial moves on (every few ms; see poll_policy.h). */
static __attribute__((noinline)) void poll_tick(struct vblk_iothread *t, uint64_t now)
{
    uint64_t count = 0;

    for (struct vblk_iot_poller *p = t->pollers; p; p = p->next)
        count += p->progress ? p->progress(p) : 0;
    count += t->gone_progress;
    vblk_poll_tick(&t->poll, now, count, clock_ns(CLOCK_THREAD_CPUTIME_ID));
    poll_publish(t);
}

/* Polling ends: turn notifications back on; true if work slipped in meanwhile. */
static bool arm_all(struct vblk_iothread *t)
{
    bool more = false;

    for (struct vblk_iot_poller *p = t->pollers; p; p = p->next)
        more |= p->arm(p);
    return more;
}

static void run_list(struct vblk_iot_hook **list)
{
    while (*list) {
        struct vblk_iot_hook *h = *list;

        *list = h->next;
        h->queued = false;
        h->fn(h);
    }
}

/* Work left over from the last iteration (a budget ran out): run it now.  The hooks may queue
 * themselves again for the next iteration. */
static void run_again(struct vblk_iothread *t)
{
    struct vblk_iot_hook *list = t->again;

    if (!list)
        return;
    t->again = NULL;
    t->work = true;
    run_list(&list);
}

static void *iothread_main(void *arg)
{
    struct vblk_iothread *t = arg;
    struct epoll_event evs[IOT_MAX_EVENTS];
    bool polling = false, idle = false;
    uint64_t last_work = 0, prev_end = 0;
    unsigned spins = 0;

    while (!t->stop) {
        struct vblk_engine *e = t->eng;
        bool slept = false;
        uint64_t woke = 0;

        t->work = false;
        /* While polling, fds are looked at only when a call waits or every 64 passes (a stray
         * kick, an engine without a cheap peek); otherwise sleep until something happens. */
        if (!polling || t->again || __atomic_load_n(&t->cmd_flag, __ATOMIC_RELAXED) ||
            (++spins & 63) == 0) {
            int timeout = (polling || e->local || t->again) ? 0 : -1;
            uint64_t cpu0 = 0, t0 = 0;
            bool cmd = false;
            int n;

            if (timeout)
                t->now_valid = false; /* it may sleep: what comes next needs a new time */
            if (timeout && t->poll_max_ns) {
                /* a sleep ends the episode begun at last_work; one in 8 has its CPU cost
                 * measured (only if it really blocked: woken later than it ran) */
                slept = true;
                if ((++t->sleeps & 7) == 0) {
                    cpu0 = clock_ns(CLOCK_THREAD_CPUTIME_ID);
                    t0 = now_ns();
                }
            }
            n = epoll_wait(t->epfd, evs, IOT_MAX_EVENTS, timeout);
            if (slept) {
                woke = t->now = now_ns();
                t->now_valid = true;
                if (cpu0) {
                    uint64_t cpu = clock_ns(CLOCK_THREAD_CPUTIME_ID) - cpu0;

                    if (woke - t0 > cpu + 2000)
                        vblk_poll_wake_sample(&t->poll, cpu);
                }
            }
            if (n < 0 && errno != EINTR) {
                log_err(t->name, "epoll_wait failed: %s", strerror(errno));
                break;
            }
            for (int i = 0; i < n; i++) {
                struct vblk_iot_source *src = evs[i].data.ptr;

                if (src == &t->cmd_src) {
                    cmd = true; /* after the other events: they were gathered before it */
                    continue;
                }
                if (src != &t->eng_src)
                    t->work = true; /* a kick */
                src->revents = evs[i].events;
                src->fn(src);
            }
            if (cmd)
                cmd_ready(&t->cmd_src);
        }
        run_again(t);
        if (t->poll_max_ns)
            poll_once(t);
        else if (e->local)
            e->ops->reap(e, vblk_io_complete, t);
        if (e->pending && e->ops->submit(e) < 0 && e->pending) {
            /* the kernel is full: reap what finished, then try again */
            e->ops->reap(e, vblk_io_complete, t);
            e->ops->submit(e);
        }
        t->now_valid = false; /* the end of the batch gets its own time */
        run_list(&t->hooks);
        if (t->pending_fn)
            retry_pending(t);
        if (t->poll_max_ns) {
            uint64_t now = vblk_iothread_now(t);

            if (t->work) {
                /* an episode: work after a sleep (gap up to the wake-up), or found by spinning
                 * after at least one idle pass (gap up to the end of the last idle pass) */
                bool ch = false;

                if (slept)
                    ch = vblk_poll_episode(&t->poll, woke - last_work, false);
                else if (idle)
                    ch = vblk_poll_episode(&t->poll, prev_end - last_work, true);
                if (ch)
                    poll_publish(t);
                polling = true;
                idle = false;
                last_work = now;
            } else if (polling && now - last_work >= vblk_poll_window(&t->poll)) {
                if (arm_all(t))
                    last_work = now;
                else
                    polling = false;
            } else {
                idle = true;
            }
            prev_end = now;
            if (unlikely(vblk_poll_tick_due(&t->poll, now)))
                poll_tick(t, now);
        }
    }
    return NULL;
}

/* The engine is created on the I/O thread itself: io_uring's SINGLE_ISSUER/DEFER_TASKRUN tie a
 * ring to the task that creates it. */
static void *iothread_boot(void *arg)
{
    struct vblk_iothread *t = arg;
    int r;

    self = t;
    r = t->eng_ops->create(&t->eng, t->eng_depth);

    if (r == 0 && t->eng->efd >= 0) {
        r = vblk_iothread_add_fd(t, t->eng->efd, &t->eng_src);
        if (r < 0) {
            t->eng->ops->destroy(t->eng);
            t->eng = NULL;
        }
    }
    finish_call(t, r);
    return r == 0 ? iothread_main(t) : NULL;
}

static int stop_fn(void *arg)
{
    struct vblk_iothread *t = arg;

    t->stop = true;
    return 0;
}

int vblk_iothread_call(struct vblk_iothread *t, int (*fn)(void *arg), void *arg)
{
    struct timespec deadline;
    int r = 0;

    if (t->wedged)
        return -ETIMEDOUT;
    clock_gettime(CLOCK_MONOTONIC, &deadline);
    deadline.tv_sec += t->timeout_ms / 1000;
    deadline.tv_nsec += (long)(t->timeout_ms % 1000) * 1000000;
    if (deadline.tv_nsec >= 1000000000) {
        deadline.tv_sec++;
        deadline.tv_nsec -= 1000000000;
    }
    pthread_mutex_lock(&t->lock);
    t->cmd_fn = fn;
    t->cmd_arg = arg;
    t->cmd_done = false;
    __atomic_store_n(&t->cmd_flag, 1, __ATOMIC_RELAXED);
    (void)eventfd_write(t->cmd_efd, 1);
    while (!t->cmd_done && r != ETIMEDOUT)
        r = pthread_cond_timedwait(&t->cond, &t->lock, &deadline);
    if (t->cmd_done) {
        r = t->cmd_ret;
    } else {
        /* Give up: a call not yet taken is withdrawn, one in progress is not retried. */
        t->cmd_fn = NULL;
        t->cmd_cancelled = true;
        t->wedged = true;
        r = -ETIMEDOUT;
        log_err(t->name, "I/O thread did not answer within %u ms", t->timeout_ms);
    }
    pthread_mutex_unlock(&t->lock);
    return r;
}

bool vblk_iothread_wedged(const struct vblk_iothread *t)
{
    return t->wedged;
}

int vblk_iothread_create(struct vblk_iothread **out, const char *name,
                         const struct vblk_engine_ops *engine, unsigned depth, unsigned poll_us,
                         unsigned timeout_ms)
{
    struct vblk_iothread *t = calloc(1, sizeof(*t));
    pthread_condattr_t ca;
    int r;

    if (!t)
        return -ENOMEM;
    t->timeout_ms = timeout_ms;
    snprintf(t->name, sizeof(t->name), "%s", name);
    t->poll_max_ns = (uint64_t)poll_us * 1000;
    vblk_poll_init(&t->poll, t->poll_max_ns);
    poll_publish(t);
    t->cmd_src.fn = cmd_ready;
    t->eng_src.fn = engine_ready;
    pthread_mutex_init(&t->lock, NULL);
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&t->cond, &ca);
    pthread_condattr_destroy(&ca);
    t->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (t->epfd < 0) {
        r = -errno;
        goto err_free;
    }
    t->cmd_efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (t->cmd_efd < 0) {
        r = -errno;
        goto err_close_epoll;
    }
    t->eng_ops = engine;
    t->eng_depth = depth;
    r = vblk_iothread_add_fd(t, t->cmd_efd, &t->cmd_src);
    if (r < 0)
        goto err_close_cmd;
    pthread_mutex_lock(&t->lock);
    t->cmd_done = false;
    r = -pthread_create(&t->tid, NULL, iothread_boot, t);
    if (r == 0) {
        while (!t->cmd_done)
            pthread_cond_wait(&t->cond, &t->lock);
        r = t->cmd_ret;
    }
    pthread_mutex_unlock(&t->lock);
    if (r < 0) {
        if (t->tid)
            pthread_join(t->tid, NULL);
        goto err_close_cmd;
    }
    pthread_setname_np(t->tid, t->name);
    *out = t;
    return 0;

err_close_cmd:
    close(t->cmd_efd);
err_close_epoll:
    close(t->epfd);
err_free:
    pthread_cond_destroy(&t->cond);
    pthread_mutex_destroy(&t->lock);
    free(t);
    return r;
}

void vblk_iothread_destroy(struct vblk_iothread *t)
{
    if (!t)
        return;
    if (vblk_iothread_call(t, stop_fn, t) < 0) {
        /* wedged: it may wake up one day and touch t, its engine and its sources */
        log_err(t->name, "leaving a wedged I/O thread behind");
        pthread_detach(t->tid);
        return;
    }
    pthread_join(t->tid, NULL);
    t->eng->ops->destroy(t->eng);
    close(t->cmd_efd);
    close(t->epfd);
    pthread_cond_destroy(&t->cond);
    pthread_mutex_destroy(&t->lock);
    free(t);
}
