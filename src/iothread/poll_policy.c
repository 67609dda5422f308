/* poll_policy.c - see poll_policy.h. */
#include "iothread/poll_policy.h"

#include <string.h>

static void set_candidates(struct vblk_poll_policy *p)
{
    uint64_t w = p->window_ns, lo, hi;

    if (w == 0 || p->max_ns == 0) {
        /* not polling: score the smallest window and four times it, on gaps that include the
         * wake-up latency (so a little wider than the work really was) */
        lo = 0;
        w = p->max_ns < VBLK_POLL_MIN_NS ? p->max_ns : VBLK_POLL_MIN_NS;
        hi = p->max_ns < 4 * VBLK_POLL_MIN_NS ? p->max_ns : 4 * VBLK_POLL_MIN_NS;
    } else {
        lo = w / 2 < VBLK_POLL_MIN_NS ? 0 : w / 2;
        hi = w * 2 > p->max_ns ? p->max_ns : w * 2;
    }
    p->cand[0] = lo;
    p->cand[1] = w;
    p->cand[2] = hi;
    memset(p->spin_ns, 0, sizeof(p->spin_ns));
    memset(p->hits, 0, sizeof(p->hits));
    p->episodes = 0;
}

void vblk_poll_init(struct vblk_poll_policy *p, uint64_t max_ns)
{
    memset(p, 0, sizeof(*p));
    p->max_ns = max_ns;
    p->wake_ns = VBLK_POLL_WAKE_NS;
    p->phase = -1;
    set_candidates(p);
}

void vblk_poll_set_max(struct vblk_poll_policy *p, uint64_t max_ns)
{
    p->max_ns = max_ns;
    if (p->window_ns > max_ns)
        p->window_ns = max_ns < VBLK_POLL_MIN_NS ? 0 : max_ns;
    set_candidates(p);
}

static bool decide(struct vblk_poll_policy *p)
{
    uint64_t old = p->window_ns, best_w = 0;
    int64_t best = 0;

    for (int i = 0; i < 3; i++) {
        int64_t net = (int64_t)((uint64_t)p->hits[i] * p->wake_ns) - (int64_t)p->spin_ns[i];

        if (p->cand[i] && net > best) { /* ascending: a tie keeps the smaller window */
            best = net;
            best_w = p->cand[i];
        }
    }
    p->window_ns = best_w;
    p->decisions++;
    set_candidates(p);
    return best_w != old;
}

bool vblk_poll_episode(struct vblk_poll_policy *p, uint64_t gap_ns, bool polled)
{
    if (p->max_ns == 0)
        return false;
    for (int i = 0; i < 3; i++) {
        uint64_t w = p->cand[i];

        if (w && gap_ns <= w) {
            p->spin_ns[i] += gap_ns;
            p->hits[i]++;
        } else {
            p->spin_ns[i] += w;
        }
    }
    p->total_episodes++;
    p->total_polled_hits += polled;
    return ++p->episodes >= VBLK_POLL_EPOCH && decide(p);
}

void vblk_poll_wake_sample(struct vblk_poll_policy *p, uint64_t cpu_ns)
{
    if (cpu_ns < VBLK_POLL_WAKE_MIN_NS)
        cpu_ns = VBLK_POLL_WAKE_MIN_NS;
    if (cpu_ns > VBLK_POLL_WAKE_MAX_NS)
        cpu_ns = VBLK_POLL_WAKE_MAX_NS;
    p->wake_ns = (p->wake_ns * 7 + cpu_ns) / 8;
}

/* Did the workload change during the trial: one side's two phases more than 2x apart? */
static bool trial_saw_change(const struct vblk_poll_policy *p)
{
    uint64_t total = p->trial_count[0] + p->trial_count[1];

    for (int i = 0; i < 2; i++) {
        uint64_t a = p->phase_count[i ? 0 : 1], b = p->phase_count[i ? 3 : 2];

        if (total >= VBLK_POLL_TRIAL_MIN && (a > 2 * b + 1 || b > 2 * a + 1))
            return true;
    }
    return false;
}

/* The trial is over: does spinning pay? */
static void trial_end(struct vblk_poll_policy *p)
{
    /* __int128: counts, CPU and time in ns multiply; no overflow whatever the phases' lengths */
    unsigned __int128 n0 = p->trial_count[0], n1 = p->trial_count[1];
    unsigned __int128 c0 = p->trial_cpu[0], c1 = p->trial_cpu[1];
    unsigned __int128 t0 = p->trial_ns[0], t1 = p->trial_ns[1];

    /* a rate 5% higher (n1/t1 >= 1.05 n0/t0), at most 1.2x the CPU per request
     * (c1/n1 <= 1.2 c0/n0) */
    p->spin = n1 > 0 && n1 * t0 * 100 >= n0 * t1 * 105 && c1 * n0 * 10 <= c0 * n1 * 12;
    p->trials++;
    p->spin_wins += p->spin;
}

void vblk_poll_tick(struct vblk_poll_policy *p, uint64_t now_ns, uint64_t count, uint64_t cpu_ns)
{
    if (p->phase >= 0) {
        int side = (p->phase == 0 || p->phase == 3);

        p->phase_count[p->phase] = count - p->phase_start_count;
        p->trial_count[side] += count - p->phase_start_count;
        p->trial_cpu[side] += cpu_ns - p->phase_start_cpu;
        p->trial_ns[side] += now_ns - p->phase_start_ns;
        if (++p->phase == 4) {
            p->phase = -1;
            if (trial_saw_change(p)) { /* keep what was decided; look again soon */
                p->retrials++;
                p->next_tick_ns = now_ns + VBLK_POLL_RETRY_NS;
                return;
            }
            trial_end(p);
            p->next_tick_ns = now_ns + VBLK_POLL_TRIAL_EVERY_NS;
            return;
        }
    } else {
        p->phase = 0;
        memset(p->phase_count, 0, sizeof(p->phase_count));
        memset(p->trial_count, 0, sizeof(p->trial_count));
        memset(p->trial_cpu, 0, sizeof(p->trial_cpu));
        memset(p->trial_ns, 0, sizeof(p->trial_ns));
    }
    p->phase_start_ns = now_ns;
    p->phase_start_count = count;
    p->phase_start_cpu = cpu_ns;
    p->next_tick_ns = now_ns + VBLK_POLL_PHASE_NS;
}

void vblk_poll_restart(struct vblk_poll_policy *p, uint64_t now_ns)
{
    if (p->phase < 0 && p->next_tick_ns > now_ns + VBLK_POLL_PHASE_NS)
        p->next_tick_ns = now_ns + VBLK_POLL_PHASE_NS;
}
