/* advisor.c - see advisor.h. */
#include "control/advisor.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <limits.h>
#include <sched.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

/* ---- the report ---- */

static const char *const level_names[] = {"ok", "info", "warn"};

const char *vblk_adv_level_name(enum vblk_adv_level l)
{
    return (unsigned)l < 3 ? level_names[l] : "?";
}

static void __attribute__((format(printf, 5, 6)))
add(struct vblk_adv_report *r, const char *id, enum vblk_adv_level level, const char *topic,
    const char *fmt, ...)
{
    struct vblk_adv_finding *f;
    va_list ap;

    if (r->n == r->cap) {
        size_t cap = r->cap ? r->cap * 2 : 16;
        struct vblk_adv_finding *v = realloc(r->v, cap * sizeof(*v));

        if (!v) {
            r->nomem = true;
            return;
        }
        r->v = v;
        r->cap = cap;
    }
    f = &r->v[r->n++];
    snprintf(f->export_id, sizeof(f->export_id), "%s", id);
    f->level = level;
    snprintf(f->topic, sizeof(f->topic), "%s", topic);
    va_start(ap, fmt);
    vsnprintf(f->message, sizeof(f->message), fmt, ap);
    va_end(ap);
    for (char *p = f->message; *p; p++) {
        if (*p == '\n' || *p == '\r' || *p == '\t')
            *p = ' '; /* one line each, whatever a path or a sysfs file holds */
    }
    r->count[level]++;
}

void vblk_advisor_free(struct vblk_adv_report *r)
{
    free(r->v);
    memset(r, 0, sizeof(*r));
}

/* ---- reading the tree ---- */

struct env {
    const char *root; /* "" for the real tree */
    unsigned ncpu;    /* online CPUs, 0 if unknown */
    unsigned nnodes;  /* online NUMA nodes, 0 if unknown */
};

/* ROOT + the path formatted from fmt. */
static void __attribute__((format(printf, 4, 5)))
rpath(char *buf, size_t cap, const struct env *e, const char *fmt, ...)
{
    size_t n = (size_t)snprintf(buf, cap, "%s", e->root);
    va_list ap;

    if (n >= cap)
        return;
    va_start(ap, fmt);
    vsnprintf(buf + n, cap - n, fmt, ap);
    va_end(ap);
}

/* The first line of a (small) file, trailing blanks cut.  0 or -errno. */
static int read_line(const char *path, char *buf, size_t cap)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    ssize_t n;
    char *nl;

    buf[0] = '\0';
    if (fd < 0)
        return -errno;
    n = read(fd, buf, cap - 1);
    close(fd);
    if (n < 0)
        return -errno;
    buf[n] = '\0';
    nl = strchr(buf, '\n');
    if (nl)
        *nl = '\0';
    for (n = (ssize_t)strlen(buf); n > 0 && (buf[n - 1] == ' ' || buf[n - 1] == '\t'); n--)
        buf[n - 1] = '\0';
    return 0;
}

static int read_long(const char *path, long *out)
{
    char buf[64], *end;
    int r = read_line(path, buf, sizeof(buf));

    if (r < 0)
        return r;
    errno = 0;
    *out = strtol(buf, &end, 10);
    return end == buf || errno ? -EINVAL : 0;
}

/* The chosen one of "a [b] c" (sysfs's way of showing a choice), or the whole if unbracketed. */
static void chosen(const char *s, char *out, size_t cap)
{
    const char *a = strchr(s, '['), *b = a ? strchr(a, ']') : NULL;

    if (a && b)
        snprintf(out, cap, "%.*s", (int)(b - a - 1), a + 1);
    else
        snprintf(out, cap, "%s", s);
}

/* Walk a CPU or node list ("0-3,8,10-11"): how many, and whether `want` (if >= 0) is in it.
 * -EINVAL if malformed. */
static int list_count(const char *s, long want, bool *has)
{
    unsigned n = 0;

    if (has)
        *has = false;
    while (*s) {
        char *end;
        long a = strtol(s, &end, 10), b = a;

        if (end == s || a < 0)
            return -EINVAL;
        s = end;
        if (*s == '-') {
            b = strtol(s + 1, &end, 10);
            if (end == s + 1 || b < a)
                return -EINVAL;
            s = end;
        }
        if (b - a >= 1L << 20)
            return -EINVAL;
        n += (unsigned)(b - a + 1);
        if (has && want >= a && want <= b)
            *has = true;
        if (*s == ',')
            s++;
        else if (*s)
            return -EINVAL;
    }
    return (int)n;
}

/* dir + "/" + rel into buf ("" if it does not fit: reading it then fails, as it should). */
static void join(char *buf, size_t cap, const char *dir, const char *rel)
{
    if ((size_t)snprintf(buf, cap, "%s/%s", dir, rel) >= cap)
        buf[0] = '\0';
}

static bool exists(const char *path)
{
    struct stat st;

    return stat(path, &st) == 0;
}

static const char *base(const char *path)
{
    const char *s = strrchr(path, '/');

    return s ? s + 1 : path;
}

/* The filesystem type of device maj:min from ROOT/proc/self/mountinfo ("" if not found). */
static void fs_type(const struct env *e, unsigned maj, unsigned min, char *out, size_t cap)
{
    char path[PATH_MAX], line[4096], want[32];
    FILE *f;

    out[0] = '\0';
    rpath(path, sizeof(path), e, "/proc/self/mountinfo");
    f = fopen(path, "re");
    if (!f)
        return;
    snprintf(want, sizeof(want), "%u:%u", maj, min);
    while (fgets(line, sizeof(line), f)) {
        char *sep = strstr(line, " - "), *tok, *save = NULL;
        int field = 0;

        if (!sep)
            continue;
        *sep = '\0';
        for (tok = strtok_r(line, " ", &save); tok && ++field < 3; tok = strtok_r(NULL, " ", &save))
            ;
        if (!tok || strcmp(tok, want))
            continue;
        tok = strtok_r(sep + 3, " \n", &save);
        if (tok) {
            snprintf(out, cap, "%s", tok);
            break;
        }
    }
    fclose(f);
}

/* ---- the device of an export ---- */

enum dev_kind {
    DK_UNKNOWN, /* a block device of unknown speed */
    DK_NOBLOCK, /* on a filesystem with no single block device (btrfs, overlay, nfs...) */
    DK_MEM,     /* tmpfs, ramfs: the page cache is the storage */
    DK_NVME,
    DK_VIRTIO, /* vd*: a virtual disk (its rotational flag says nothing) */
    DK_XEN,    /* xvd* */
    DK_SSD,
    DK_HDD,
    DK_RAM,  /* zram, pmem, brd, null_blk */
    DK_LOOP, /* a loop device whose backing could not be followed */
    DK_NULL, /* null://: no storage */
    DK_NET,  /* nbd, rbd */
    DK_NONE, /* could not stat the file */
};

static const char *const kind_names[] = {
    [DK_UNKNOWN] = "block device",
    [DK_NOBLOCK] = "no single block device",
    [DK_MEM] = "memory",
    [DK_NVME] = "NVMe",
    [DK_VIRTIO] = "virtio disk",
    [DK_XEN] = "Xen virtual disk",
    [DK_SSD] = "SSD",
    [DK_HDD] = "rotational disk",
    [DK_RAM] = "RAM-backed device",
    [DK_LOOP] = "loop device",
    [DK_NULL] = "null",
    [DK_NET] = "network storage",
    [DK_NONE] = "unknown",
};

struct dev {
    enum dev_kind kind;
    char fstype[32];       /* "" if unknown or a block device given directly */
    char disk[64];         /* the whole disk the checks look at ("" if none) */
    char dir[PATH_MAX];    /* its sysfs directory in the tree */
    char via[256];         /* how the file gets there: "vda1 on vda", "dm-0 (vg-root) over..." */
    bool blockdev;         /* file= is a block device itself */
    bool layered;          /* device-mapper or md between the file and the disk */
    bool fast_unknown_rot; /* rotational flag could not be read */
};

static bool fs_is(const char *fs, const char *const *list)
{
    for (; *list; list++) {
        if (!strcmp(fs, *list) || (!strcmp(*list, "fuse") && !strncmp(fs, "fuse", 4)))
            return true;
    }
    return false;
}

/* filesystems where I/O may block in ways io_uring and AIO cannot avoid (network, FUSE) */
static const char *const no_async_fs[] = {"nfs",  "nfs4",     "cifs", "smb3",  "9p",
                                          "fuse", "virtiofs", "ceph", "sshfs", NULL};

static void append(char *buf, size_t cap, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void append(char *buf, size_t cap, const char *fmt, ...)
{
    size_t n = strlen(buf);
    va_list ap;

    if (n >= cap - 1)
        return;
    va_start(ap, fmt);
    vsnprintf(buf + n, cap - n, fmt, ap);
    va_end(ap);
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The entries of dir (no dot files), sorted, at most max, into names (strdup'ed).  Count. */
static size_t list_dir(const char *dir, char **names, size_t max)
{
    DIR *d = opendir(dir);
    struct dirent *de;
    size_t n = 0;

    if (!d)
        return 0;
    while ((de = readdir(d)) && n < max) {
        if (de->d_name[0] == '.')
            continue;
        names[n] = strdup(de->d_name);
        if (names[n])
            n++;
    }
    closedir(d);
    qsort(names, n, sizeof(names[0]), cmp_str);
    return n;
}

/* From the sysfs directory of block device maj:min down to one whole disk: a partition to its
 * disk, a dm/md device to (the first of) its members.  False if maj:min is not in sysfs. */
static bool walk_disk(const struct env *e, unsigned maj, unsigned min, struct dev *d)
{
    char path[PATH_MAX], tmp[PATH_MAX];

    rpath(path, sizeof(path), e, "/sys/dev/block/%u:%u", maj, min);
    if (!realpath(path, d->dir))
        return false;
    d->via[0] = '\0';
    for (int depth = 0; depth < 8; depth++) {
        char *names[16];
        size_t n;

        join(path, sizeof(path), d->dir, "partition");
        if (exists(path)) {
            char *slash = strrchr(d->dir, '/');

            append(d->via, sizeof(d->via), "%s on ", base(d->dir));
            if (!slash || slash == d->dir)
                break;
            *slash = '\0';
        }
        join(path, sizeof(path), d->dir, "slaves");
        n = list_dir(path, names, 16);
        if (n == 0)
            break;
        d->layered = true;
        join(path, sizeof(path), d->dir, "dm/name");
        if (read_line(path, tmp, 128) == 0 && tmp[0])
            append(d->via, sizeof(d->via), "%s (device-mapper %s) over ", base(d->dir), tmp);
        else if (!strncmp(base(d->dir), "md", 2))
            append(d->via, sizeof(d->via), "%s (md RAID) over ", base(d->dir));
        else
            append(d->via, sizeof(d->via), "%s over ", base(d->dir));
        for (size_t i = 1; i < n; i++)
            append(d->via, sizeof(d->via), "%s%s", i == 1 ? "(also " : ", ", names[i]);
        if (n > 1)
            append(d->via, sizeof(d->via), ": checks use %s) ", names[0]);
        snprintf(tmp, sizeof(tmp), "slaves/%s", names[0]);
        join(path, sizeof(path), d->dir, tmp);
        for (size_t i = 0; i < n; i++)
            free(names[i]);
        if (!realpath(path, tmp))
            break;
        snprintf(d->dir, sizeof(d->dir), "%s", tmp);
    }
    if ((size_t)snprintf(d->disk, sizeof(d->disk), "%s", base(d->dir)) >= sizeof(d->disk))
        return false;
    append(d->via, sizeof(d->via), "%s", d->disk);
    return true;
}

static enum dev_kind disk_kind(const char *dir, const char *name, bool *rot_unknown)
{
    char path[PATH_MAX];
    long rot;

    *rot_unknown = false;
    if (!strncmp(name, "nvme", 4))
        return DK_NVME;
    if (!strncmp(name, "vd", 2))
        return DK_VIRTIO;
    if (!strncmp(name, "xvd", 3))
        return DK_XEN;
    if (!strncmp(name, "loop", 4))
        return DK_LOOP;
    if (!strncmp(name, "nullb", 5) || !strncmp(name, "zram", 4) || !strncmp(name, "pmem", 4) ||
        !strncmp(name, "ram", 3))
        return DK_RAM;
    join(path, sizeof(path), dir, "queue/rotational");
    if (read_long(path, &rot) < 0) {
        *rot_unknown = true;
        return DK_UNKNOWN;
    }
    return rot ? DK_HDD : DK_SSD;
}

/* What o's data sits on.  Adds the "device" finding. */
static void find_device(const struct env *e, const struct vblk_export_opts *o, struct dev *d,
                        struct vblk_adv_report *r)
{
    const char *id = o->id;
    unsigned maj, min;
    struct stat st;

    memset(d, 0, sizeof(*d));
    if (o->null || o->protocol == VBLK_PROTO_NULL) {
        d->kind = DK_NULL;
        add(r, id, VBLK_ADV_OK, "device", "null:// stores nothing: device checks do not apply");
        return;
    }
    if (o->protocol == VBLK_PROTO_NBD || o->protocol == VBLK_PROTO_RBD) {
        d->kind = DK_NET;
        add(r, id, VBLK_ADV_INFO, "device",
            "%s: network storage, the host's disks are not involved: device checks skipped",
            o->protocol == VBLK_PROTO_NBD ? "nbd" : "rbd");
        return;
    }
    if (stat(o->file, &st) < 0) {
        d->kind = DK_NONE;
        add(r, id, VBLK_ADV_INFO, "device", "cannot stat %s (%s): device checks skipped", o->file,
            strerror(errno));
        return;
    }
    if (S_ISBLK(st.st_mode)) {
        d->blockdev = true;
        maj = major(st.st_rdev);
        min = minor(st.st_rdev);
    } else {
        maj = major(st.st_dev);
        min = minor(st.st_dev);
        fs_type(e, maj, min, d->fstype, sizeof(d->fstype));
    }
    if (!walk_disk(e, maj, min, d)) {
        if (!strcmp(d->fstype, "tmpfs") || !strcmp(d->fstype, "ramfs")) {
            d->kind = DK_MEM;
            add(r, id, VBLK_ADV_OK, "device", "%s is on %s: memory (the page cache is the storage)",
                o->file, d->fstype);
        } else {
            d->kind = d->fstype[0] ? DK_NOBLOCK : DK_NONE;
            add(r, id, VBLK_ADV_INFO, "device",
                "%s is on %s%s (device %u:%u, not in /sys/dev/block): device checks skipped",
                o->file, d->fstype[0] ? d->fstype : "an unknown filesystem",
                d->fstype[0] ? " with no single block device" : "", maj, min);
        }
        return;
    }
    d->kind = disk_kind(d->dir, d->disk, &d->fast_unknown_rot);
    if (d->kind == DK_LOOP) {
        char path[PATH_MAX], back[PATH_MAX];

        join(path, sizeof(path), d->dir, "loop/backing_file");
        if (read_line(path, back, sizeof(back)) < 0)
            snprintf(back, sizeof(back), "?");
        add(r, id, VBLK_ADV_INFO, "device",
            "%s is on %s, a loop device over %s: export that file directly (file=) to save the "
            "loop layer",
            o->file, d->via, back);
        return;
    }
    add(r, id, d->layered ? VBLK_ADV_INFO : VBLK_ADV_OK, "device", "%s is %s%s (%s%s%s)%s", o->file,
        d->blockdev ? "" : "on ", d->via, kind_names[d->kind], d->fstype[0] ? ", " : "", d->fstype,
        d->fast_unknown_rot ? ": its queue/rotational is unreadable, speed unknown"
        : d->layered        ? ": the checks below look at that disk"
                            : "");
}

static bool direct(enum vblk_cache c)
{
    return c == VBLK_CACHE_NONE || c == VBLK_CACHE_DIRECTSYNC;
}

/* fast, flash or virtual block devices: O_DIRECT, io_uring and a light scheduler suit them */
static bool solid(enum dev_kind k)
{
    return k == DK_NVME || k == DK_VIRTIO || k == DK_XEN || k == DK_SSD || k == DK_RAM;
}

/* ---- the export checks ---- */

static void check_cache(const struct env *e, const struct vblk_export_opts *o, const struct dev *d,
                        struct vblk_adv_report *r)
{
    const char *c = vblk_cache_name(o->cache), *id = o->id;

    if (d->kind == DK_MEM) {
        if (direct(o->cache))
            add(r, id, VBLK_ADV_WARN, "cache",
                "cache=%s on %s: use cache=writeback: the data lives in the page cache anyway, "
                "and O_DIRECT is refused there by kernels before 6.6",
                c, d->fstype);
        else
            add(r, id, VBLK_ADV_OK, "cache", "cache=%s suits %s (memory)", c, d->fstype);
        return;
    }
    if (solid(d->kind)) {
        if (direct(o->cache))
            add(r, id, VBLK_ADV_OK, "cache", "cache=%s (O_DIRECT) suits %s %s", c,
                kind_names[d->kind], d->disk);
        else
            add(r, id, VBLK_ADV_WARN, "cache",
                "cache=%s on %s %s: use cache=none: the guest caches already, and the host's page "
                "cache adds a copy per request and writeback stalls",
                c, kind_names[d->kind], d->disk);
        return;
    }
    if (direct(o->cache))
        add(r, id, VBLK_ADV_OK, "cache", "cache=%s (O_DIRECT)", c);
    else
        add(r, id, VBLK_ADV_INFO, "cache",
            "cache=%s: cache=none usually performs better for a guest (it caches itself)%s", c,
            d->kind == DK_HDD ? "; the host cache can help a rotational disk's reads" : "");
}

static void check_aio(const struct env *e, const struct vblk_export_opts *o, const struct dev *d,
                      struct vblk_adv_report *r)
{
    const char *eng = o->engine ? o->engine->name : "io_uring", *id = o->id;
    bool slowfs = d->fstype[0] && fs_is(d->fstype, no_async_fs);
    char path[PATH_MAX];
    long dis;

    if (!strcmp(eng, "io_uring")) {
        rpath(path, sizeof(path), e, "/proc/sys/kernel/io_uring_disabled");
        if (read_long(path, &dis) == 0 && dis == 2)
            add(r, id, VBLK_ADV_WARN, "aio",
                "aio=io_uring but io_uring is disabled (kernel.io_uring_disabled=2): use "
                "aio=native, or set the sysctl to 0");
        else if (read_long(path, &dis) == 0 && dis == 1)
            add(r, id, VBLK_ADV_INFO, "aio",
                "aio=io_uring: io_uring is limited to root and kernel.io_uring_group "
                "(kernel.io_uring_disabled=1): run vblkd in that group");
        else
            add(r, id, VBLK_ADV_OK, "aio", "aio=io_uring: fewest system calls per request");
        return;
    }
    if (!strcmp(eng, "native")) {
        if (direct(o->cache))
            add(r, id, VBLK_ADV_INFO, "aio",
                "aio=native: aio=io_uring submits and reaps with fewer system calls");
        else
            add(r, id, VBLK_ADV_WARN, "aio",
                "aio=native with cache=%s: Linux AIO blocks on page-cache I/O; use aio=io_uring",
                vblk_cache_name(o->cache));
        return;
    }
    if (slowfs)
        add(r, id, VBLK_ADV_OK, "aio", "aio=%s suits %s (no real asynchronous I/O there)", eng,
            d->fstype);
    else
        add(r, id, VBLK_ADV_WARN, "aio",
            "aio=%s on %s: use aio=io_uring: the thread pool costs a thread switch per request; "
            "it is only for filesystems without asynchronous I/O (network, FUSE)",
            eng,
            d->fstype[0] ? d->fstype
            : d->disk[0] ? d->disk
                         : "this storage");
}

static void check_scheduler(const struct env *e, const struct vblk_export_opts *o,
                            const struct dev *d, struct vblk_adv_report *r)
{
    char path[PATH_MAX], line[256], s[64];
    const char *id = o->id;

    join(path, sizeof(path), d->dir, "queue/scheduler");
    if (read_line(path, line, sizeof(line)) < 0 || !line[0]) {
        add(r, id, VBLK_ADV_INFO, "scheduler", "cannot read /sys/block/%s/queue/scheduler",
            d->disk);
        return;
    }
    chosen(line, s, sizeof(s));
    if (d->kind == DK_HDD) {
        if (!strcmp(s, "none"))
            add(r, id, VBLK_ADV_INFO, "scheduler",
                "%s (rotational) has no I/O scheduler: mq-deadline or bfq sort and merge requests "
                "for it (echo mq-deadline > /sys/block/%s/queue/scheduler)",
                d->disk, d->disk);
        else
            add(r, id, VBLK_ADV_OK, "scheduler", "%s uses %s", d->disk, s);
        return;
    }
    if (!strcmp(s, "none") || !strcmp(s, "mq-deadline") || !strcmp(s, "kyber") ||
        !strcmp(s, "noop") || !strcmp(s, "deadline"))
        add(r, id, VBLK_ADV_OK, "scheduler", "%s uses %s", d->disk, s);
    else
        add(r, id, VBLK_ADV_WARN, "scheduler",
            "%s (%s) uses %s: set none or mq-deadline (echo none > "
            "/sys/block/%s/queue/scheduler): %s costs CPU per request and a fast device gains "
            "nothing from it",
            d->disk, kind_names[d->kind], s, d->disk, s);
}

static void check_nr_requests(const struct env *e, const struct vblk_export_opts *o,
                              const struct dev *d, struct vblk_adv_report *r)
{
    unsigned nthr = o->iothreads ? o->iothreads : 1, per_thr, depth;
    char path[PATH_MAX];
    long nr;

    if (!direct(o->cache))
        return; /* the page cache stands between the queues and the device */
    /* each I/O thread submits from its CPU, so into one hardware queue of the device */
    per_thr = (o->num_queues + nthr - 1) / nthr;
    depth = per_thr * o->queue_size;
    join(path, sizeof(path), d->dir, "queue/nr_requests");
    if (read_long(path, &nr) < 0 || nr <= 0) {
        add(r, o->id, VBLK_ADV_INFO, "nr_requests", "cannot read /sys/block/%s/queue/nr_requests",
            d->disk);
        return;
    }
    if ((unsigned long)nr >= depth)
        add(r, o->id, VBLK_ADV_OK, "nr_requests",
            "%s takes %ld requests per hardware queue, enough for %u in flight (%u queue%s x "
            "queue-size %u per I/O thread)",
            d->disk, nr, depth, per_thr, per_thr == 1 ? "" : "s", o->queue_size);
    else
        add(r, o->id, VBLK_ADV_WARN, "nr_requests",
            "up to %u requests in flight per I/O thread (%u queue%s x queue-size %u) but %s takes "
            "%ld per hardware queue: the rest wait in the kernel; raise it (echo %u > "
            "/sys/block/%s/queue/nr_requests) or lower queue-size to %ld",
            depth, per_thr, per_thr == 1 ? "" : "s", o->queue_size, d->disk, nr, depth, d->disk,
            nr);
}

static void check_polling(const struct vblk_export_opts *o, const struct dev *d,
                          struct vblk_adv_report *r)
{
    const char *id = o->id, *what = d->disk[0] ? d->disk : d->fstype[0] ? d->fstype : "it";

    if (o->poll_us == 0) {
        if (d->kind == DK_NVME || d->kind == DK_NULL || d->kind == DK_RAM)
            add(r, id, VBLK_ADV_INFO, "polling",
                "poll-us=0 on a fast device: poll-us=1000 trades CPU for lower latency");
        else
            add(r, id, VBLK_ADV_OK, "polling", "poll-us=0: no busy polling");
        return;
    }
    switch (d->kind) {
    case DK_NVME:
    case DK_RAM:
    case DK_NULL:
    case DK_MEM:
    case DK_SSD:
        add(r, id, VBLK_ADV_OK, "polling", "poll-us=%u suits a fast device (%s)", o->poll_us,
            kind_names[d->kind]);
        break;
    case DK_HDD:
        add(r, id, VBLK_ADV_INFO, "polling",
            "poll-us=%u on %s, a rotational disk: it answers in milliseconds, so the polling "
            "policy sleeps, but still tries spinning for 40 ms every 2 s; use poll-us=0",
            o->poll_us, what);
        break;
    case DK_NET:
        add(r, id, VBLK_ADV_INFO, "polling",
            "poll-us=%u on network storage: round trips usually outlast what a sleep costs, so "
            "the polling policy mostly sleeps (see stats: poll); poll-us=0 skips its trials",
            o->poll_us);
        break;
    default:
        add(r, id, VBLK_ADV_INFO, "polling",
            "poll-us=%u on %s (%s): the polling policy spins only where it pays (it measures "
            "each I/O thread; see stats: poll); poll-us=0 turns it off",
            o->poll_us, what, kind_names[d->kind]);
        break;
    }
}

static void check_iothreads(const struct env *e, const struct vblk_export_opts *o,
                            struct vblk_adv_report *r)
{
    if (!e->ncpu)
        add(r, o->id, VBLK_ADV_INFO, "iothreads",
            "iothreads=%u: cannot read /sys/devices/system/cpu/online", o->iothreads);
    else if (o->iothreads > e->ncpu)
        add(r, o->id, VBLK_ADV_WARN, "iothreads",
            "iothreads=%u but %u CPU%s online: use iothreads=%u at most; more threads only "
            "take turns on the same CPUs",
            o->iothreads, e->ncpu, e->ncpu == 1 ? "" : "s", e->ncpu);
    else
        add(r, o->id, VBLK_ADV_OK, "iothreads", "iothreads=%u on %u CPU%s", o->iothreads, e->ncpu,
            e->ncpu == 1 ? "" : "s");
}

static void check_numa(const struct env *e, const struct vblk_export_opts *o, const struct dev *d,
                       struct vblk_adv_report *r)
{
    char path[PATH_MAX], list[4096];
    cpu_set_t set;
    bool all = true, has;
    long node;

    if (e->nnodes == 0) {
        add(r, o->id, VBLK_ADV_INFO, "numa", "cannot read /sys/devices/system/node/online");
        return;
    }
    if (e->nnodes == 1) {
        add(r, o->id, VBLK_ADV_OK, "numa", "one NUMA node");
        return;
    }
    join(path, sizeof(path), d->dir, "device/numa_node");
    if (read_long(path, &node) < 0) {
        join(path, sizeof(path), d->dir, "device/../numa_node");
        if (read_long(path, &node) < 0)
            node = -1;
    }
    if (node < 0) {
        add(r, o->id, VBLK_ADV_INFO, "numa",
            "%u NUMA nodes, %s's node is not known (no device/numa_node)", e->nnodes, d->disk);
        return;
    }
    rpath(path, sizeof(path), e, "/sys/devices/system/node/node%ld/cpulist", node);
    if (read_line(path, list, sizeof(list)) < 0 || list_count(list, -1, NULL) < 0) {
        add(r, o->id, VBLK_ADV_INFO, "numa", "%s is on NUMA node %ld, whose CPU list is unreadable",
            d->disk, node);
        return;
    }
    if (sched_getaffinity(0, sizeof(set), &set) < 0)
        CPU_ZERO(&set);
    for (int c = 0; c < CPU_SETSIZE; c++) {
        if (CPU_ISSET(c, &set) && (list_count(list, c, &has) < 0 || !has)) {
            all = false;
            break;
        }
    }
    if (all && CPU_COUNT(&set) > 0)
        add(r, o->id, VBLK_ADV_OK, "numa", "%s is on NUMA node %ld and vblkd runs on its CPUs (%s)",
            d->disk, node, list);
    else
        add(r, o->id, VBLK_ADV_WARN, "numa",
            "%s is on NUMA node %ld of %u but vblkd may run on other nodes' CPUs: pin it there "
            "(numactl --cpunodebind=%ld --membind=%ld, or CPUAffinity=%s in its unit) to keep "
            "I/O off the interconnect",
            d->disk, node, e->nnodes, node, node, list);
}

static void check_export(const struct env *e, const struct vblk_export_opts *o,
                         struct vblk_adv_report *r)
{
    struct dev *d = malloc(sizeof(*d));

    if (!d) {
        r->nomem = true;
        return;
    }
    find_device(e, o, d, r);
    if (d->kind != DK_NULL && d->kind != DK_NET && d->kind != DK_NONE) {
        check_cache(e, o, d, r);
        check_aio(e, o, d, r);
    }
    if (d->disk[0] && d->kind != DK_LOOP) {
        check_scheduler(e, o, d, r);
        check_nr_requests(e, o, d, r);
    }
    if (d->kind != DK_NONE)
        check_polling(o, d, r);
    check_iothreads(e, o, r);
    if (d->disk[0] && d->kind != DK_LOOP)
        check_numa(e, o, d, r);
    free(d);
}

/* ---- the host checks ---- */

static void check_thp(const struct env *e, struct vblk_adv_report *r)
{
    char path[PATH_MAX], line[256], s[64];

    rpath(path, sizeof(path), e, "/sys/kernel/mm/transparent_hugepage/enabled");
    if (read_line(path, line, sizeof(line)) < 0) {
        add(r, "", VBLK_ADV_INFO, "thp",
            "no /sys/kernel/mm/transparent_hugepage/enabled: transparent huge pages unavailable");
        return;
    }
    chosen(line, s, sizeof(s));
    if (!strcmp(s, "never"))
        add(r, "", VBLK_ADV_WARN, "thp",
            "transparent huge pages are off (never): set madvise (echo madvise > "
            "/sys/kernel/mm/transparent_hugepage/enabled): QEMU asks for them on guest RAM and "
            "4 KiB pages cost TLB misses on every guest buffer vblkd touches");
    else
        add(r, "", VBLK_ADV_OK, "thp", "transparent huge pages: %s", s);
}

static void check_hugepages(const struct env *e, struct vblk_adv_report *r)
{
    char path[PATH_MAX], line[256];
    long total = -1, freep = -1, size = -1;
    FILE *f;

    rpath(path, sizeof(path), e, "/proc/meminfo");
    f = fopen(path, "re");
    if (!f) {
        add(r, "", VBLK_ADV_INFO, "hugepages", "cannot read /proc/meminfo");
        return;
    }
    while (fgets(line, sizeof(line), f)) {
        long v;

        if (sscanf(line, "HugePages_Total: %ld", &v) == 1)
            total = v;
        else if (sscanf(line, "HugePages_Free: %ld", &v) == 1)
            freep = v;
        else if (sscanf(line, "Hugepagesize: %ld", &v) == 1)
            size = v;
    }
    fclose(f);
    if (total < 0 || freep < 0)
        add(r, "", VBLK_ADV_INFO, "hugepages", "no HugePages_Total/Free in /proc/meminfo");
    else if (total == 0)
        add(r, "", VBLK_ADV_INFO, "hugepages",
            "no hugepages reserved: hugepage-backed guest memory (memory-backend-file "
            "mem-path=/dev/hugepages,share=on) needs vm.nr_hugepages");
    else if (freep == 0)
        add(r, "", VBLK_ADV_WARN, "hugepages",
            "all %ld hugepages (%ld kB) are in use: another hugepage-backed guest will not start; "
            "raise vm.nr_hugepages",
            total, size);
    else
        add(r, "", VBLK_ADV_OK, "hugepages", "%ld of %ld hugepages (%ld kB) free", freep, total,
            size);
}

static void check_governor(const struct env *e, struct vblk_adv_report *r)
{
    char path[PATH_MAX], gov[64], slow[256] = "", *names[1024];
    unsigned seen = 0, nslow = 0;
    size_t n;

    rpath(path, sizeof(path), e, "/sys/devices/system/cpu");
    n = list_dir(path, names, 1024);
    for (size_t i = 0; i < n; i++) {
        const char *nm = names[i];

        if (!strncmp(nm, "cpu", 3) && nm[3] >= '0' && nm[3] <= '9' &&
            strspn(nm + 3, "0123456789") == strlen(nm + 3)) {
            snprintf(path, sizeof(path), "%s/sys/devices/system/cpu/%s/cpufreq/scaling_governor",
                     e->root, nm);
            if (read_line(path, gov, sizeof(gov)) == 0) {
                seen++;
                if (strcmp(gov, "performance")) {
                    if (nslow++ < 4)
                        append(slow, sizeof(slow), "%s%s %s", nslow > 1 ? ", " : "", nm, gov);
                }
            }
        }
        free(names[i]);
    }
    if (!seen)
        add(r, "", VBLK_ADV_INFO, "cpufreq",
            "no cpufreq governors (usual in a VM, or the firmware controls frequency)");
    else if (nslow)
        add(r, "", VBLK_ADV_WARN, "cpufreq",
            "%u of %u CPUs are not on the performance governor (%s%s): set it (cpupower "
            "frequency-set -g performance) for the lowest latency: slower governors ramp up "
            "late after idle",
            nslow, seen, slow, nslow > 4 ? ", ..." : "");
    else
        add(r, "", VBLK_ADV_OK, "cpufreq", "%u CPUs on the performance governor", seen);
}

static void check_cpus(const struct env *e, const struct vblk_export_opts *exps, size_t n,
                       struct vblk_adv_report *r)
{
    unsigned total = 0, polling = 0;

    for (size_t i = 0; i < n; i++) {
        total += exps[i].iothreads;
        if (exps[i].poll_us)
            polling += exps[i].iothreads;
    }
    if (n < 2 || !e->ncpu)
        return;
    if (polling > e->ncpu)
        add(r, "", VBLK_ADV_WARN, "iothreads",
            "the %zu exports have %u polling I/O threads on %u CPUs: they spin against each "
            "other; poll-us=0 on the less busy exports, or fewer iothreads",
            n, polling, e->ncpu);
    else if (total > e->ncpu)
        add(r, "", VBLK_ADV_INFO, "iothreads",
            "the %zu exports have %u I/O threads on %u CPUs (%u polling): fine while they sleep "
            "between requests; busy ones will take turns",
            n, total, e->ncpu, polling);
    else
        add(r, "", VBLK_ADV_OK, "iothreads", "the %zu exports have %u I/O threads on %u CPUs", n,
            total, e->ncpu);
}

int vblk_advisor_check(const struct vblk_export_opts *exps, size_t n, const char *root,
                       struct vblk_adv_report *r)
{
    struct env e = {.root = root && strcmp(root, "/") ? root : ""};
    char path[PATH_MAX], list[4096];
    int c;

    rpath(path, sizeof(path), &e, "/sys/devices/system/cpu/online");
    if (read_line(path, list, sizeof(list)) == 0 && (c = list_count(list, -1, NULL)) > 0)
        e.ncpu = (unsigned)c;
    rpath(path, sizeof(path), &e, "/sys/devices/system/node/online");
    if (read_line(path, list, sizeof(list)) == 0 && (c = list_count(list, -1, NULL)) > 0)
        e.nnodes = (unsigned)c;
    check_thp(&e, r);
    check_hugepages(&e, r);
    check_governor(&e, r);
    check_cpus(&e, exps, n, r);
    for (size_t i = 0; i < n; i++)
        check_export(&e, &exps[i], r);
    return r->nomem ? -ENOMEM : 0;
}

/* ---- output ---- */

struct json_object *vblk_advisor_json(const struct vblk_adv_report *r)
{
    struct json_object *o = json_object_new_object(), *list = json_object_new_array();

    if (!o || !list) {
        json_object_put(o);
        json_object_put(list);
        return NULL;
    }
    for (size_t i = 0; i < r->n; i++) {
        const struct vblk_adv_finding *f = &r->v[i];
        struct json_object *jf = json_object_new_object();

        json_object_object_add(jf, "export",
                               f->export_id[0] ? json_object_new_string(f->export_id) : NULL);
        json_object_object_add(jf, "level", json_object_new_string(level_names[f->level]));
        json_object_object_add(jf, "topic", json_object_new_string(f->topic));
        json_object_object_add(jf, "message", json_object_new_string(f->message));
        json_object_array_add(list, jf);
    }
    json_object_object_add(o, "findings", list);
    json_object_object_add(o, "warnings", json_object_new_int((int)r->count[VBLK_ADV_WARN]));
    json_object_object_add(o, "info", json_object_new_int((int)r->count[VBLK_ADV_INFO]));
    json_object_object_add(o, "ok", json_object_new_int((int)r->count[VBLK_ADV_OK]));
    return o;
}

void vblk_advisor_print(FILE *f, const struct vblk_adv_report *r)
{
    int w = 4;

    for (size_t i = 0; i < r->n; i++) {
        int l = (int)strlen(r->v[i].export_id);

        if (l > w)
            w = l;
    }
    for (size_t i = 0; i < r->n; i++) {
        const struct vblk_adv_finding *v = &r->v[i];

        fprintf(f, "%-4s  %-*s  %-11s  %s\n", level_names[v->level], w,
                v->export_id[0] ? v->export_id : "host", v->topic, v->message);
    }
    fprintf(f, "%u warning%s, %u info, %u ok\n", r->count[VBLK_ADV_WARN],
            r->count[VBLK_ADV_WARN] == 1 ? "" : "s", r->count[VBLK_ADV_INFO],
            r->count[VBLK_ADV_OK]);
}
