/* throttle.c - see throttle.h: the "throttle" filter.
 *
 * A waiting request is kept in its own struct vblk_bdev_req: r->io is the filter's until the
 * request goes down (as in faulty.c): io.next links it into its direction's FIFO, io.ctx is the
 * (filter, thread) context that holds it, io.offset its arrival time (ns), io.len the bytes it
 * is accounted for and io.engine the engine it came with.
 *
 * Every change of a state (an arrival that must wait, a timer, a live change, a drain) ends in
 * dispatch(): it lets go every head of the two FIFOs that may start, oldest first, and arms the
 * timer of each remaining head's thread for when it may.  A head of this thread is released
 * after the lock is dropped; a head of another thread is put on its context's ready list and
 * that context's timer fired at once.  So each waiting head always has a timer armed no later
 * than its time, and requests are only ever resubmitted by their own thread.
 */
#include "bdev/throttle.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#include "bdev/bdev.h"
#include "iothread/iothread.h"
#include "util/compiler.h"
#include "util/log.h"
#include "util/size.h"

#define MAX_CTX 64 /* I/O threads one filter can hold requests in (VBLK_MAX_IOTHREADS) */

struct throttle;

/* A (filter, I/O thread) that has held a request: its timer and its handed-over requests. */
struct tctx {
    struct vblk_iot_source src; /* the timerfd, in iot's loop */
    struct throttle *f;
    struct vblk_iothread *iot;
    int tfd;
    uint64_t deadline;           /* state lock: the timer is armed for this time; 0: disarmed */
    struct vblk_io_list ready;   /* state lock: allowed to start, for this thread to submit */
    unsigned nready;             /* state lock */
    unsigned count;              /* this thread: requests waiting or ready */
    uint64_t stat_ns, stat_reqs; /* this thread writes, anyone reads (relaxed) */
};

/* Buckets and waiting requests: a filter's own, or a group's. */
struct tstate {
    bool shared; /* several I/O threads: lock */
    pthread_mutex_t lock;
    int active;                     /* atomic: limits are set (read without the lock) */
    struct vblk_tb tb;              /* lock */
    struct vblk_io_list q[2];       /* lock: waiting reads, writes, in arrival order */
    struct vblk_throttle_conf conf; /* control thread: the limits as last set */
    /* groups (registry lock) */
    unsigned refs;
    struct tstate *next;
};

struct throttle {
    struct tstate *st;
    struct vblk_bdev *b;
    struct tctx *ctx[MAX_CTX]; /* appended under the state lock, published for get_stats */
    unsigned nctx;             /* atomic */
    bool warned;               /* state lock */
};

static pthread_mutex_t groups_lock = PTHREAD_MUTEX_INITIALIZER;
static struct tstate *groups;

static const char *const kind_names[VBLK_TB_COUNT] = {
    [VBLK_TB_IOPS_TOTAL] = "iops-total", [VBLK_TB_IOPS_READ] = "iops-read",
    [VBLK_TB_IOPS_WRITE] = "iops-write", [VBLK_TB_BPS_TOTAL] = "bps-total",
    [VBLK_TB_BPS_READ] = "bps-read",     [VBLK_TB_BPS_WRITE] = "bps-write",
};

const char *const vblk_throttle_keys[] = {
    "iops-total",
    "iops-total-max",
    "iops-total-max-length",
    "iops-read",
    "iops-read-max",
    "iops-read-max-length",
    "iops-write",
    "iops-write-max",
    "iops-write-max-length",
    "bps-total",
    "bps-total-max",
    "bps-total-max-length",
    "bps-read",
    "bps-read-max",
    "bps-read-max-length",
    "bps-write",
    "bps-write-max",
    "bps-write-max-length",
    "throttle-group",
    NULL,
};

/* ---- configuration ---- */

void vblk_throttle_conf_get(const struct vblk_throttle_conf *c, const char *key, char *buf,
                            size_t cap)
{
    buf[0] = '\0';
    if (!strcmp(key, "throttle-group")) {
        snprintf(buf, cap, "%s", c->group);
        return;
    }
    for (int i = 0; i < VBLK_TB_COUNT; i++) {
        size_t n = strlen(kind_names[i]);
        const char *suffix = key + n;

        if (strncmp(key, kind_names[i], n))
            continue;
        if (!strcmp(suffix, "-max-length"))
            snprintf(buf, cap, "%" PRIu64, c->limit[i].max_length ? c->limit[i].max_length : 1);
        else if (!strcmp(suffix, "-max"))
            snprintf(buf, cap, "%" PRIu64, c->limit[i].max);
        else if (!*suffix)
            snprintf(buf, cap, "%" PRIu64, c->limit[i].avg);
        else
            continue;
        return;
    }
}

static bool is_bps(int kind)
{
    return kind >= VBLK_TB_BPS_TOTAL;
}

static int parse_u64(const char *s, uint64_t *out)
{
    char *end;
    unsigned long long v;

    if (*s < '0' || *s > '9')
        return -EINVAL;
    errno = 0;
    v = strtoull(s, &end, 10);
    if (errno || *end)
        return -EINVAL;
    *out = v;
    return 0;
}

int vblk_throttle_conf_set(struct vblk_throttle_conf *c, const char *key, const char *value,
                           char *err, size_t errlen)
{
    if (!strcmp(key, "throttle-group")) {
        size_t n = strlen(value);

        if (n == 0 || n >= sizeof(c->group) ||
            strspn(value, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-") !=
                n) {
            snprintf(err, errlen,
                     "throttle-group='%s': expected a name of 1 to %zu characters from "
                     "A-Z a-z 0-9 . _ -",
                     value, sizeof(c->group) - 1);
            return -EINVAL;
        }
        memcpy(c->group, value, n + 1);
        return 0;
    }
    for (int i = 0; i < VBLK_TB_COUNT; i++) {
        size_t n = strlen(kind_names[i]);
        const char *suffix = key + n;
        uint64_t v;
        int r;

        if (strncmp(key, kind_names[i], n))
            continue;
        if (!strcmp(suffix, "-max-length")) {
            if (parse_u64(value, &v) < 0 || v < 1 || v > VBLK_TB_VALUE_MAX) {
                snprintf(err, errlen,
                         "%s='%s': expected seconds, an integer from 1 to %" PRIu64 " (default 1)",
                         key, value, (uint64_t)VBLK_TB_VALUE_MAX);
                return -EINVAL;
            }
            c->limit[i].max_length = v;
            return 0;
        }
        if (*suffix && strcmp(suffix, "-max"))
            return -ENOENT;
        r = is_bps(i) ? vblk_parse_size(value, &v) : parse_u64(value, &v);
        if (r < 0 || v > VBLK_TB_VALUE_MAX) {
            if (is_bps(i))
                snprintf(err, errlen,
                         "%s='%s': expected bytes per second, a size such as 10M (suffix k, m, "
                         "g or t: powers of 1024) up to %" PRIu64 "; 0: no limit",
                         key, value, (uint64_t)VBLK_TB_VALUE_MAX);
            else
                snprintf(err, errlen,
                         "%s='%s': expected operations per second, an integer up to %" PRIu64
                         "; 0: no limit",
                         key, value, (uint64_t)VBLK_TB_VALUE_MAX);
            return -EINVAL;
        }
        if (*suffix)
            c->limit[i].max = v;
        else
            c->limit[i].avg = v;
        return 0;
    }
    return -ENOENT;
}

int vblk_throttle_conf_check(const struct vblk_throttle_conf *c, char *err, size_t errlen)
{
    for (int i = 0; i < VBLK_TB_COUNT; i++) {
        const struct vblk_tb_limit *l = &c->limit[i];
        const char *k = kind_names[i];
        unsigned long long avg = l->avg, max = l->max, len = l->max_length ? l->max_length : 1;

        if (avg > VBLK_TB_VALUE_MAX || max > VBLK_TB_VALUE_MAX || len > VBLK_TB_VALUE_MAX) {
            snprintf(err, errlen, "%s, %s-max and %s-max-length must be at most %llu", k, k, k,
                     (unsigned long long)VBLK_TB_VALUE_MAX);
            return -EINVAL;
        }
        if (max && !avg) {
            snprintf(err, errlen, "%s-max=%llu needs %s (the rate outside bursts)", k, max, k);
            return -EINVAL;
        }
        if (max && max < avg) {
            snprintf(err, errlen, "%s-max=%llu is lower than %s=%llu: a burst rate must be >= it",
                     k, max, k, avg);
            return -EINVAL;
        }
        if (len > 1 && !max) {
            snprintf(err, errlen, "%s-max-length=%llu needs %s-max (the burst rate)", k, len, k);
            return -EINVAL;
        }
        if (max && len > VBLK_TB_VALUE_MAX / max) {
            snprintf(err, errlen, "%s-max=%llu times %s-max-length=%llu exceeds %llu", k, max, k,
                     len, (unsigned long long)VBLK_TB_VALUE_MAX);
            return -EINVAL;
        }
    }
    return 0;
}

bool vblk_throttle_conf_enabled(const struct vblk_throttle_conf *c)
{
    for (int i = 0; i < VBLK_TB_COUNT; i++) {
        if (c->limit[i].avg)
            return true;
    }
    return false;
}

static bool limits_equal(const struct vblk_throttle_conf *a, const struct vblk_throttle_conf *b)
{
    for (int i = 0; i < VBLK_TB_COUNT; i++) {
        const struct vblk_tb_limit *x = &a->limit[i], *y = &b->limit[i];

        if (x->avg != y->avg || x->max != y->max ||
            (x->max_length ? x->max_length : 1) != (y->max_length ? y->max_length : 1))
            return false;
    }
    return true;
}

static void describe(const struct vblk_throttle_conf *c, char *buf, size_t len)
{
    size_t n = 0;

    buf[0] = 0;
    for (int i = 0; i < VBLK_TB_COUNT && n < len; i++) {
        const struct vblk_tb_limit *l = &c->limit[i];

        if (!l->avg)
            continue;
        n += (size_t)snprintf(buf + n, len - n, "%s%s=%" PRIu64, n ? " " : "", kind_names[i],
                              l->avg);
        if (l->max && n < len)
            n += (size_t)snprintf(buf + n, len - n, " %s-max=%" PRIu64 " (%" PRIu64 " s)",
                                  kind_names[i], l->max, l->max_length ? l->max_length : 1);
    }
    if (!buf[0])
        snprintf(buf, len, "none");
}

/* ---- the waiting machinery ---- */

static uint64_t now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void st_lock(struct tstate *st)
{
    if (st->shared)
        pthread_mutex_lock(&st->lock);
}

static void st_unlock(struct tstate *st)
{
    if (st->shared)
        pthread_mutex_unlock(&st->lock);
}

/* State lock: have c's timer fire at t (absolute CLOCK_MONOTONIC ns; 1: at once), unless it
 * fires earlier already. */
static void arm(struct tctx *c, uint64_t t)
{
    struct itimerspec its = {
        .it_value = {.tv_sec = (time_t)(t / 1000000000ull), .tv_nsec = (long)(t % 1000000000ull)}};

    if (c->deadline && c->deadline <= t)
        return;
    if (timerfd_settime(c->tfd, TFD_TIMER_ABSTIME, &its, NULL) == 0)
        c->deadline = t;
}

static void disarm(struct tctx *c)
{
    struct itimerspec its = {{0, 0}, {0, 0}};

    if (!c->deadline)
        return;
    timerfd_settime(c->tfd, 0, &its, NULL);
    c->deadline = 0;
}

/* State lock: let go every head that may start now, oldest first; the current context's go on
 * mine (returned: how many), the others' to their ready lists.  Arm the timers of the heads that
 * must wait. */
static unsigned dispatch(struct tstate *st, uint64_t now, struct tctx *cur,
                         struct vblk_io_list *mine)
{
    unsigned n = 0;
    bool went;

    do {
        struct vblk_io *h[2] = {st->q[0].head, st->q[1].head};
        int first = h[0] && h[1] ? h[1]->offset < h[0]->offset : !h[0];

        went = false;
        for (int k = 0; k < 2 && !went; k++) {
            int d = k ? !first : first;
            struct vblk_io *io = h[d];
            struct tctx *c;
            uint64_t w;

            if (!io)
                continue;
            c = io->ctx;
            w = vblk_tb_wait(&st->tb, d, now);
            if (w) {
                arm(c, now + w);
                continue;
            }
            vblk_io_list_pop(&st->q[d]);
            vblk_tb_account(&st->tb, d, io->len);
            if (c == cur) {
                vblk_io_list_add(mine, io);
                n++;
            } else {
                vblk_io_list_add(&c->ready, io);
                c->nready++;
                arm(c, 1);
            }
            went = true;
        }
    } while (went);
    return n;
}

/* This thread, no lock: send the requests on l down, counting their wait. */
static void release(struct vblk_io_list *l, uint64_t now)
{
    struct vblk_io *io = l->head;

    while (io) {
        struct vblk_io *next = io->next; /* the driver below owns io from now on */
        struct vblk_bdev_req *r = container_of(io, struct vblk_bdev_req, io);
        struct tctx *c = io->ctx;
        uint64_t waited = now > io->offset ? now - io->offset : 0;

        __atomic_store_n(&c->stat_ns, __atomic_load_n(&c->stat_ns, __ATOMIC_RELAXED) + waited,
                         __ATOMIC_RELAXED);
        __atomic_store_n(&c->stat_reqs, __atomic_load_n(&c->stat_reqs, __ATOMIC_RELAXED) + 1,
                         __ATOMIC_RELAXED);
        vblk_bdev_submit(c->f->b->child, io->engine, r);
        io = next;
    }
    vblk_io_list_init(l);
}

/* State lock: the ready list of c, onto mine.  How many. */
static unsigned take_ready(struct tctx *c, struct vblk_io_list *mine)
{
    unsigned n = c->nready;

    if (c->ready.head) {
        *mine->tail = c->ready.head;
        mine->tail = c->ready.tail;
    }
    vblk_io_list_init(&c->ready);
    c->nready = 0;
    return n;
}

static void timer_fired(struct vblk_iot_source *src)
{
    struct tctx *c = container_of(src, struct tctx, src);
    struct tstate *st = c->f->st;
    struct vblk_io_list mine;
    uint64_t ticks, now;
    unsigned n;

    if (read(c->tfd, &ticks, sizeof(ticks)) < 0) {
        /* EAGAIN: re-armed since it fired; dispatch below looks anyway */
    }
    vblk_io_list_init(&mine);
    st_lock(st);
    c->deadline = 0;
    now = now_ns();
    n = take_ready(c, &mine);
    n += dispatch(st, now, c, &mine);
    c->count -= n;
    if (!c->count)
        disarm(c);
    st_unlock(st);
    release(&mine, now);
}

/* State lock: this thread's context of f, NULL if this thread cannot hold requests (not an I/O
 * thread, out of memory). */
static struct tctx *find_ctx(struct throttle *f, bool create)
{
    struct vblk_iothread *t = vblk_iothread_self();
    unsigned n = __atomic_load_n(&f->nctx, __ATOMIC_ACQUIRE);
    struct tctx *c;

    if (!t)
        return NULL;
    for (unsigned i = 0; i < n; i++) {
        if (f->ctx[i]->iot == t)
            return f->ctx[i];
    }
    if (!create || n == MAX_CTX)
        return NULL;
    c = calloc(1, sizeof(*c));
    if (!c)
        return NULL;
    c->f = f;
    c->iot = t;
    c->src.fn = timer_fired;
    vblk_io_list_init(&c->ready);
    c->tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    if (c->tfd < 0) {
        free(c);
        return NULL;
    }
    if (vblk_iothread_add_fd(t, c->tfd, &c->src) < 0) {
        close(c->tfd);
        free(c);
        return NULL;
    }
    f->ctx[n] = c;
    __atomic_store_n(&f->nctx, n + 1, __ATOMIC_RELEASE);
    return c;
}

static void pass(struct vblk_bdev *b, struct vblk_engine *eng, struct vblk_bdev_req *r)
{
    vblk_bdev_submit(b->child, eng, r);
}

static void __attribute__((noinline))
throttle_slow(struct vblk_bdev *b, struct throttle *f, struct vblk_engine *eng,
              struct vblk_bdev_req *r)
{
    struct tstate *st = f->st;
    struct vblk_io_list mine;
    bool write = r->op != VBLK_BDEV_READ;
    uint64_t bytes = r->op == VBLK_BDEV_READ || r->op == VBLK_BDEV_WRITE ? r->len : 0;
    uint64_t now;
    struct tctx *c;
    unsigned n;

    if (r->op == VBLK_BDEV_FLUSH) {
        pass(b, eng, r);
        return;
    }
    now = now_ns();
    st_lock(st);
    if (!st->q[0].head && !st->q[1].head && !vblk_tb_wait(&st->tb, write, now)) {
        vblk_tb_account(&st->tb, write, bytes);
        st_unlock(st);
        pass(b, eng, r);
        return;
    }
    c = find_ctx(f, true);
    if (!c) {
        /* cannot wait here: better late limits than a failed request */
        if (!f->warned)
            log_err(b->name, "throttling: cannot hold requests in this thread; passing them");
        f->warned = true;
        vblk_tb_account(&st->tb, write, bytes);
        st_unlock(st);
        pass(b, eng, r);
        return;
    }
    memset(&r->io, 0, sizeof(r->io));
    r->io.ctx = c;
    r->io.offset = now;
    r->io.len = bytes;
    r->io.engine = eng;
    vblk_io_list_add(&st->q[write], &r->io);
    c->count++;
    vblk_io_list_init(&mine);
    n = dispatch(st, now, c, &mine);
    c->count -= n;
    if (!c->count)
        disarm(c);
    st_unlock(st);
    release(&mine, now);
}

static void throttle_submit(struct vblk_bdev *b, struct vblk_engine *eng, struct vblk_bdev_req *r)
{
    struct throttle *f = b->priv;

    if (likely(!__atomic_load_n(&f->st->active, __ATOMIC_RELAXED))) {
        vblk_bdev_submit(b->child, eng, r);
        return;
    }
    throttle_slow(b, f, eng, r);
}

static void throttle_drain(struct vblk_bdev *b, struct vblk_engine *eng)
{
    struct throttle *f = b->priv;
    struct tstate *st = f->st;
    struct vblk_io_list mine;
    struct tctx *c;
    uint64_t now;
    unsigned n = 0;

    vblk_io_list_init(&mine);
    st_lock(st);
    c = find_ctx(f, false);
    if (!c || !c->count) {
        st_unlock(st);
        return;
    }
    now = now_ns();
    n = take_ready(c, &mine);
    for (int d = 0; d < 2; d++) {
        struct vblk_io *io = st->q[d].head;

        vblk_io_list_init(&st->q[d]);
        while (io) {
            struct vblk_io *next = io->next;

            if (io->ctx == c) {
                vblk_tb_account(&st->tb, d, io->len);
                vblk_io_list_add(&mine, io);
                n++;
            } else {
                vblk_io_list_add(&st->q[d], io);
            }
            io = next;
        }
    }
    n += dispatch(st, now, c, &mine); /* others' heads may have changed */
    c->count -= n;
    if (!c->count)
        disarm(c);
    st_unlock(st);
    if (n)
        log_info(b->name, "throttling: a queue stops, %u waiting request%s released at once", n,
                 n > 1 ? "s" : "");
    release(&mine, now);
}

/* ---- driver ---- */

static struct tstate *state_new(const struct vblk_throttle_conf *c, bool shared)
{
    struct tstate *st = calloc(1, sizeof(*st));

    if (!st)
        return NULL;
    st->shared = shared;
    if (shared)
        pthread_mutex_init(&st->lock, NULL);
    st->conf = *c;
    vblk_tb_init(&st->tb, c->limit, now_ns());
    st->active = vblk_tb_enabled(&st->tb);
    vblk_io_list_init(&st->q[0]);
    vblk_io_list_init(&st->q[1]);
    return st;
}

static void state_free(struct tstate *st)
{
    if (st->shared)
        pthread_mutex_destroy(&st->lock);
    free(st);
}

static int throttle_open(struct vblk_bdev *b, const struct vblk_bdev_conf *c, char *err,
                         size_t errlen)
{
    const struct vblk_throttle_conf *tc = &c->throttle;
    struct throttle *f;
    char lim[512];
    int r;

    r = vblk_throttle_conf_check(tc, err, errlen);
    if (r < 0)
        return r;
    f = calloc(1, sizeof(*f));
    if (!f) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    if (tc->group[0]) {
        struct tstate *g;

        pthread_mutex_lock(&groups_lock);
        for (g = groups; g && strcmp(g->conf.group, tc->group); g = g->next)
            ;
        if (g && vblk_throttle_conf_enabled(tc) && !limits_equal(tc, &g->conf)) {
            pthread_mutex_unlock(&groups_lock);
            snprintf(err, errlen,
                     "throttle group '%s' has other limits already: give a group's limits with "
                     "one member only (or the same with each)",
                     tc->group);
            free(f);
            return -EINVAL;
        }
        if (!g) {
            g = state_new(tc, true);
            if (g) {
                g->next = groups;
                groups = g;
            }
        }
        if (g)
            g->refs++;
        pthread_mutex_unlock(&groups_lock);
        f->st = g;
    } else {
        f->st = state_new(tc, c->iothreads > 1);
    }
    if (!f->st) {
        snprintf(err, errlen, "out of memory");
        free(f);
        return -ENOMEM;
    }
    f->b = b;
    b->priv = f;
    if (vblk_throttle_conf_enabled(&f->st->conf) || tc->group[0]) {
        describe(&f->st->conf, lim, sizeof(lim));
        log_info(c->name, "throttling%s%s: %s", tc->group[0] ? " in group " : "", tc->group, lim);
    }
    return 0;
}

static void throttle_close(struct vblk_bdev *b)
{
    struct throttle *f = b->priv;
    struct tstate *st = f->st;

    /* no request in flight: every context is empty and its timer disarmed */
    for (unsigned i = 0; i < f->nctx; i++) {
        close(f->ctx[i]->tfd); /* leaves the loop's epoll set with it */
        free(f->ctx[i]);
    }
    if (st->conf.group[0]) {
        bool last;

        pthread_mutex_lock(&groups_lock);
        last = --st->refs == 0;
        if (last) {
            for (struct tstate **p = &groups; *p; p = &(*p)->next) {
                if (*p == st) {
                    *p = st->next;
                    break;
                }
            }
        }
        pthread_mutex_unlock(&groups_lock);
        if (last)
            state_free(st);
    } else {
        state_free(st);
    }
    free(f);
}

const struct vblk_bdev_ops vblk_bdev_throttle = {
    .name = "throttle",
    .filter = true,
    .open = throttle_open,
    .close = throttle_close,
    .submit = throttle_submit,
    .drain = throttle_drain,
};

/* ---- control ---- */

struct vblk_bdev *vblk_throttle_find(struct vblk_bdev *b)
{
    return vblk_bdev_find(b, &vblk_bdev_throttle);
}

struct set_arg {
    struct throttle *f;
    const struct vblk_throttle_conf *conf;
    bool apply;
};

static int set_fn(void *arg)
{
    struct set_arg *a = arg;
    struct tstate *st = a->f->st;
    struct vblk_io_list mine;
    struct tctx *c;
    uint64_t now;
    unsigned n;

    vblk_io_list_init(&mine);
    st_lock(st);
    now = now_ns();
    if (a->apply) {
        vblk_tb_init(&st->tb, a->conf->limit, now);
        __atomic_store_n(&st->active, vblk_tb_enabled(&st->tb), __ATOMIC_RELAXED);
    }
    c = find_ctx(a->f, false);
    n = dispatch(st, now, c, &mine); /* re-time every head, release what may go */
    if (c) {
        c->count -= n;
        if (!c->count)
            disarm(c);
    }
    st_unlock(st);
    release(&mine, now);
    return 0;
}

int vblk_throttle_set(struct vblk_bdev *b, const struct vblk_throttle_conf *c,
                      struct vblk_iothread *const *iots, unsigned niot, char *err, size_t errlen)
{
    struct vblk_bdev *tb = vblk_throttle_find(b);
    struct throttle *f;
    struct set_arg a;
    char lim[512];
    int r;

    if (!tb) {
        snprintf(err, errlen, "no throttle filter on this export");
        return -EINVAL;
    }
    f = tb->priv;
    if (niot == 0) {
        snprintf(err, errlen, "no I/O thread to change the limits in");
        return -EINVAL;
    }
    if (c->group[0] && strcmp(c->group, f->st->conf.group)) {
        snprintf(err, errlen, "throttle-group='%s': the group of a running export cannot change",
                 c->group);
        return -EINVAL;
    }
    r = vblk_throttle_conf_check(c, err, errlen);
    if (r < 0)
        return r;
    a = (struct set_arg){.f = f, .conf = c, .apply = true};
    for (unsigned i = 0; i < niot; i++) {
        r = vblk_iothread_call(iots[i], set_fn, &a);
        if (r < 0) {
            snprintf(err, errlen, "%s the change: %s",
                     a.apply ? "the I/O thread did not take" : "could not re-time requests after",
                     strerror(-r));
            return r;
        }
        if (a.apply) /* in force from here on */
            memcpy(f->st->conf.limit, c->limit, sizeof(c->limit));
        a.apply = false;
    }
    describe(&f->st->conf, lim, sizeof(lim));
    log_info(tb->name, "throttling%s%s: limits now %s", f->st->conf.group[0] ? " in group " : "",
             f->st->conf.group, lim);
    return 0;
}

int vblk_throttle_get(struct vblk_bdev *b, struct vblk_throttle_conf *out)
{
    struct vblk_bdev *tb = vblk_throttle_find(b);

    if (!tb)
        return -ENOENT;
    *out = ((struct throttle *)tb->priv)->st->conf;
    return 0;
}

void vblk_throttle_get_stats(struct vblk_bdev *b, uint64_t *throttled_ns, uint64_t *throttled_reqs)
{
    struct vblk_bdev *tb = vblk_throttle_find(b);
    uint64_t ns = 0, reqs = 0;

    if (tb) {
        struct throttle *f = tb->priv;
        unsigned n = __atomic_load_n(&f->nctx, __ATOMIC_ACQUIRE);

        for (unsigned i = 0; i < n; i++) {
            ns += __atomic_load_n(&f->ctx[i]->stat_ns, __ATOMIC_RELAXED);
            reqs += __atomic_load_n(&f->ctx[i]->stat_reqs, __ATOMIC_RELAXED);
        }
    }
    *throttled_ns = ns;
    *throttled_reqs = reqs;
}
