/* poll_policy.h - how long an I/O thread spins for work before it sleeps ("polling that pays").
 *
 * A sleep costs CPU: arming notifications, blocking in epoll_wait, being woken, reading the
 * eventfd.  Spinning costs CPU too, for as long as it spins.  Spinning pays for a wait only if
 * the work comes sooner than what the sleep would have cost; on a slow device (a disk at QD32,
 * a network server) completions come every few tens of microseconds and a window that spins
 * until the next one burns a whole core to save a fraction of it.
 *
 * Every wait for work is an "episode" with a gap: the time from the end of the last work to the
 * moment new work was seen (found while spinning, or woken from a sleep).  For three candidate
 * windows w (half the current one, the current one, twice it; or the smallest window and four
 * times it while not polling) the policy adds up what w would have cost over the same episodes:
 *
 *     spin(w) = sum of min(gap, w)         hits(w) = number of episodes with gap <= w
 *     net(w)  = hits(w) * wake_ns - spin(w)   (CPU saved by the sleeps it avoids, minus spinning)
 *
 * and after VBLK_POLL_EPOCH episodes takes the candidate with the largest net (the smaller one
 * on a tie, 0 if none is positive).  So the window grows only while polling finds work sooner
 * than a sleep would have, and collapses to 0 (sleep at once) when completions come from a slow
 * device; while at 0 it keeps scoring small windows on the gaps of its sleeps, so it comes
 * back when work turns fast.  Gaps measured across a sleep include the wake-up latency: that
 * errs toward sleeping.  The sleep's cost wake_ns is measured by the thread (the CPU time of a
 * blocking epoll_wait, sampled) and fed in with vblk_poll_wake_sample.  QEMU's aio-poll grows
 * its window whenever the work came within poll-max-ns, whatever it cost; SPDK's interrupt mode
 * is switched by the application.  This policy is neither: it prices both sides.
 *
 * Pricing CPU alone misses one thing: when the guest waits for us (a closed loop, an
 * interrupt-driven client), a sleep also delays the next request by the wake-up latency, and
 * spinning can buy throughput that no CPU accounting shows.  So every VBLK_POLL_TRIAL_EVERY_NS
 * the policy runs a trial of four phases of VBLK_POLL_PHASE_NS, spin (window = the limit) and
 * priced (the window above) in the order spin, priced, priced, spin, counting requests done and
 * the thread's CPU time in each.  Spinning is kept until the next trial if it did requests at a
 * rate at least 5% higher, at no more than 1.2x the CPU per request of the priced window: on a disk
 * at QD32 it does the same requests for three times the CPU and loses; against a client that sleeps
 * between its batches it does several times the requests for less CPU each and wins.  A trial
 * across a change of workload (the two phases of one side differ by more than 2x, over at least
 * VBLK_POLL_TRIAL_MIN requests) decides nothing and is run again VBLK_POLL_RETRY_NS later; a new
 * queue (a new workload) gets a trial VBLK_POLL_PHASE_NS after it starts (vblk_poll_restart).
 *
 * Pure arithmetic, no clock, no thread: one per I/O thread, used by that thread only.
 */
#ifndef VBLK_POLL_POLICY_H
#define VBLK_POLL_POLICY_H

#include <stdbool.h>
#include <stdint.h>

#define VBLK_POLL_EPOCH          64   /* episodes per decision */
#define VBLK_POLL_MIN_NS         1000 /* the smallest non-zero window */
#define VBLK_POLL_WAKE_NS        3000 /* wake_ns before the first sample */
#define VBLK_POLL_WAKE_MIN_NS    500  /* samples are clamped into [MIN, MAX] */
#define VBLK_POLL_WAKE_MAX_NS    100000
#define VBLK_POLL_PHASE_NS       20000000ull   /* one trial phase */
#define VBLK_POLL_TRIAL_EVERY_NS 2000000000ull /* from one trial to the next */
#define VBLK_POLL_RETRY_NS       100000000ull  /* after a trial across a change of workload */
#define VBLK_POLL_TRIAL_MIN      64            /* requests a trial needs to see a change */

struct vblk_poll_policy {
    uint64_t max_ns;     /* the limit (poll-us); 0: never poll */
    uint64_t window_ns;  /* current window, 0 or in [VBLK_POLL_MIN_NS, max_ns] */
    uint64_t wake_ns;    /* estimated CPU cost of one sleep */
    uint64_t cand[3];    /* candidate windows being scored, ascending */
    uint64_t spin_ns[3]; /* their spin time this epoch */
    uint32_t hits[3];    /* their hits this epoch */
    uint32_t episodes;   /* this epoch */
    /* the trial */
    bool spin;             /* spinning won the last trial */
    int phase;             /* -1: no trial running, else 0..3 */
    uint64_t next_tick_ns; /* when vblk_poll_tick has something to do */
    uint64_t phase_start_ns, phase_start_count, phase_start_cpu;
    uint64_t trial_count[2], trial_cpu[2], trial_ns[2]; /* [0] priced, [1] spin */
    uint64_t phase_count[4];                            /* requests in each phase */
    /* totals for stats, never reset */
    uint64_t total_episodes, total_polled_hits, decisions, trials, spin_wins, retrials;
};

/* Start with the window at 0 (grows once episodes show it pays). */
void vblk_poll_init(struct vblk_poll_policy *p, uint64_t max_ns);

/* Change the limit; the window is clamped to it. */
void vblk_poll_set_max(struct vblk_poll_policy *p, uint64_t max_ns);

/* One wait ended after gap_ns; polled: it was found while spinning (not after a sleep).
 * Returns true if the window changed. */
bool vblk_poll_episode(struct vblk_poll_policy *p, uint64_t gap_ns, bool polled);

/* One measured CPU cost of a sleep (exponentially averaged, 1/8 weight). */
void vblk_poll_wake_sample(struct vblk_poll_policy *p, uint64_t cpu_ns);

/* The window to spin for now. */
static inline uint64_t vblk_poll_window(const struct vblk_poll_policy *p)
{
    bool spin = p->phase < 0 ? p->spin : (p->phase == 0 || p->phase == 3);

    return spin ? p->max_ns : p->window_ns;
}

/* Does vblk_poll_tick need calling at now_ns?  (Cheap: once per loop iteration.) */
static inline bool vblk_poll_tick_due(const struct vblk_poll_policy *p, uint64_t now_ns)
{
    return p->max_ns && now_ns >= p->next_tick_ns;
}

/* A new workload (a queue started) at now_ns: run a trial soon, unless one is running. */
void vblk_poll_restart(struct vblk_poll_policy *p, uint64_t now_ns);

/* Advance the trial at now_ns; count: requests done so far (any monotonic count), cpu_ns: the
 * thread's CPU time so far. */
void vblk_poll_tick(struct vblk_poll_policy *p, uint64_t now_ns, uint64_t count, uint64_t cpu_ns);

#endif
