/* advisor.h - the host advisor (vblkd --check-host, the check-host RPC method): does each
 * export's set-up match what performs best on this host?
 *
 * Owns: reading the facts from sysfs and procfs (the device a backing file sits on, its type,
 * I/O scheduler, nr_requests and NUMA node; the filesystem from /proc/self/mountinfo;
 * transparent huge pages, hugepages, CPU frequency governors, online CPUs and NUMA nodes) and
 * turning them, with the export's options, into findings: one line each, saying what to
 * change and why.  Read-only: a stat() of the backing file and reads of small sysfs/procfs
 * files; nothing is opened for I/O, no root needed.  A fact that cannot be read becomes an info
 * finding, never an error.
 *
 * The tree read is rooted at `root` ("/" or NULL: the real one; tests pass a fake tree).  The
 * backing file itself is always stat()ed for real; its st_dev (or st_rdev for a block device)
 * is then looked up as ROOT/sys/dev/block/MAJ:MIN and in ROOT/proc/self/mountinfo.
 *
 * Threads: any; nothing shared.  The daemon calls it on the control thread.
 */
#ifndef VBLK_ADVISOR_H
#define VBLK_ADVISOR_H

#include <stddef.h>
#include <stdio.h>

#include "options.h"

enum vblk_adv_level {
    VBLK_ADV_OK,
    VBLK_ADV_INFO, /* could not tell, does not apply, or a hint */
    VBLK_ADV_WARN, /* change this */
};

struct vblk_adv_finding {
    char export_id[VBLK_ID_MAX + 1]; /* "": the host as a whole */
    enum vblk_adv_level level;
    char topic[24];
    char message[512]; /* one line: what to change and why */
};

struct vblk_adv_report {
    struct vblk_adv_finding *v;
    size_t n, cap;
    unsigned count[3]; /* findings per level */
    bool nomem;        /* a finding was dropped for lack of memory */
};

/* The host-wide findings (export id ""), then each of the n exports' findings, appended to r
 * (zeroed by the caller, or reused after vblk_advisor_free).  0, or -ENOMEM. */
int vblk_advisor_check(const struct vblk_export_opts *exps, size_t n, const char *root,
                       struct vblk_adv_report *r);
void vblk_advisor_free(struct vblk_adv_report *r);

const char *vblk_adv_level_name(enum vblk_adv_level l);

/* {"findings": [{"export": ID or null, "level", "topic", "message"}, ...], "warnings": N,
 * "info": N, "ok": N}; NULL if out of memory. */
struct json_object *vblk_advisor_json(const struct vblk_adv_report *r);
/* One line per finding ("LEVEL EXPORT TOPIC MESSAGE", host findings under "host"), then a
 * summary line. */
void vblk_advisor_print(FILE *f, const struct vblk_adv_report *r);

#endif
