/* test_advisor.c - the host advisor (vblkd --check-host) on a fake sysfs/procfs tree built in a
 * temp dir: each check's ok and warn case, the device walk (partition, device-mapper, loop,
 * tmpfs, a missing file, null://), an empty tree (info lines, no crash) and the JSON form.
 *
 * The backing file is a real file in the temp dir; its real st_dev is what the fake
 * /sys/dev/block/MAJ:MIN and /proc/self/mountinfo describe. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <limits.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "control/advisor.h"
#include "options.h"

struct fx {
    char root[PATH_MAX / 2];
    char file[PATH_MAX];
    unsigned maj, min;
    struct vblk_adv_report rep;
};

static void mkdirs(const char *path)
{
    char buf[PATH_MAX];

    snprintf(buf, sizeof(buf), "%s", path);
    for (char *p = buf + 1; *p; p++) {
        if (*p == '/') {
            *p = '\0';
            mkdir(buf, 0755);
            *p = '/';
        }
    }
    mkdir(buf, 0755);
}

/* ROOT/rel := text (directories made as needed) */
static void __attribute__((format(printf, 3, 4)))
put(struct fx *f, const char *rel, const char *fmt, ...)
{
    char path[PATH_MAX * 2], *slash;
    va_list ap;
    FILE *fp;

    snprintf(path, sizeof(path), "%s/%s", f->root, rel);
    slash = strrchr(path, '/');
    *slash = '\0';
    mkdirs(path);
    *slash = '/';
    fp = fopen(path, "w");
    assert_non_null(fp);
    va_start(ap, fmt);
    vfprintf(fp, fmt, ap);
    va_end(ap);
    fclose(fp);
}

static void rm(struct fx *f, const char *rel)
{
    char path[PATH_MAX * 2];

    snprintf(path, sizeof(path), "%s/%s", f->root, rel);
    unlink(path);
}

/* ROOT/sys/dev/block/MAJ:MIN -> ROOT/sys/<target> (relative, as sysfs has it) */
static void link_dev(struct fx *f, const char *target)
{
    char path[PATH_MAX * 2], to[PATH_MAX];

    snprintf(path, sizeof(path), "%s/sys/dev/block", f->root);
    mkdirs(path);
    snprintf(path, sizeof(path), "%s/sys/dev/block/%u:%u", f->root, f->maj, f->min);
    unlink(path);
    snprintf(to, sizeof(to), "../../%s", target);
    assert_int_equal(symlink(to, path), 0);
    snprintf(path, sizeof(path), "%s/sys/%s", f->root, target);
    mkdirs(path);
}

static void unlink_dev(struct fx *f)
{
    char path[PATH_MAX * 2];

    snprintf(path, sizeof(path), "%s/sys/dev/block/%u:%u", f->root, f->maj, f->min);
    assert_int_equal(unlink(path), 0);
}

static void fs(struct fx *f, const char *type)
{
    put(f, "proc/self/mountinfo",
        "22 27 0:21 / /proc rw,relatime - proc proc rw\n"
        "29 1 %u:%u / /data rw,relatime shared:1 - %s /dev/whatever rw\n",
        f->maj, f->min, type);
}

/* A healthy host: 4 CPUs on the performance governor, one NUMA node, THP madvise, 4 of 8
 * hugepages free, the file on ext4 on vda1 of a virtio disk using mq-deadline. */
static int setup(void **state)
{
    struct fx *f = calloc(1, sizeof(*f));
    const char *tmp = getenv("TMPDIR");
    struct stat st;
    int fd;

    assert_non_null(f);
    snprintf(f->root, sizeof(f->root), "%s/vblk-advisor.XXXXXX", tmp && *tmp ? tmp : "/tmp");
    assert_non_null(mkdtemp(f->root));
    snprintf(f->file, sizeof(f->file), "%s/disk.img", f->root);
    fd = open(f->file, O_CREAT | O_RDWR, 0600);
    assert_true(fd >= 0);
    close(fd);
    assert_int_equal(stat(f->file, &st), 0);
    f->maj = major(st.st_dev);
    f->min = minor(st.st_dev);

    put(f, "sys/devices/system/cpu/online", "0-3\n");
    for (int c = 0; c < 4; c++) {
        char rel[128];

        snprintf(rel, sizeof(rel), "sys/devices/system/cpu/cpu%d/cpufreq/scaling_governor", c);
        put(f, rel, "performance\n");
    }
    put(f, "sys/devices/system/node/online", "0\n");
    put(f, "sys/kernel/mm/transparent_hugepage/enabled", "always [madvise] never\n");
    put(f, "proc/meminfo",
        "MemTotal:       16000000 kB\nHugePages_Total:       8\nHugePages_Free:        4\n"
        "Hugepagesize:       2048 kB\n");
    put(f, "proc/sys/kernel/io_uring_disabled", "0\n");
    fs(f, "ext4");
    put(f, "sys/devices/pci0000:00/virtio1/block/vda/queue/scheduler",
        "none [mq-deadline] kyber bfq\n");
    put(f, "sys/devices/pci0000:00/virtio1/block/vda/queue/nr_requests", "1024\n");
    put(f, "sys/devices/pci0000:00/virtio1/block/vda/queue/rotational", "1\n");
    put(f, "sys/devices/pci0000:00/virtio1/block/vda/vda1/partition", "1\n");
    link_dev(f, "devices/pci0000:00/virtio1/block/vda/vda1");
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fx *f = *state;
    char cmd[PATH_MAX + 32];

    vblk_advisor_free(&f->rep);
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", f->root);
    assert_int_equal(system(cmd), 0);
    free(f);
    return 0;
}

/* Run the advisor on one export "d1" of f->file with extra keys (may be ""). */
static void run(struct fx *f, const char *extra)
{
    struct vblk_export_opts o;
    char arg[PATH_MAX * 2], err[256];

    snprintf(arg, sizeof(arg), "id=d1,file=%s,socket=/nonexistent/d1.sock%s%s", f->file,
             *extra ? "," : "", extra);
    vblk_opts_defaults(&o);
    if (vblk_opts_parse_export(arg, &o, err, sizeof(err)) < 0)
        fail_msg("%s: %s", arg, err);
    vblk_advisor_free(&f->rep);
    assert_int_equal(vblk_advisor_check(&o, 1, f->root, &f->rep), 0);
}

static const struct vblk_adv_finding *find(struct fx *f, const char *id, const char *topic)
{
    for (size_t i = 0; i < f->rep.n; i++) {
        if (!strcmp(f->rep.v[i].export_id, id) && !strcmp(f->rep.v[i].topic, topic))
            return &f->rep.v[i];
    }
    return NULL;
}

/* the finding (id, topic) exists, has this level and its message contains want (if given) */
static void expect(struct fx *f, const char *id, const char *topic, enum vblk_adv_level level,
                   const char *want)
{
    const struct vblk_adv_finding *v = find(f, id, topic);

    if (!v)
        fail_msg("no %s finding for '%s'", topic, id);
    if (v->level != level || (want && !strstr(v->message, want)))
        fail_msg("%s/%s: got %s \"%s\", want %s with \"%s\"", id, topic,
                 vblk_adv_level_name(v->level), v->message, vblk_adv_level_name(level),
                 want ? want : "");
    assert_null(strchr(v->message, '\n'));
}

static void test_healthy_host_has_no_warning(void **state)
{
    struct fx *f = *state;

    run(f, "");
    for (size_t i = 0; i < f->rep.n; i++) {
        if (f->rep.v[i].level == VBLK_ADV_WARN)
            fail_msg("unexpected warning %s: %s", f->rep.v[i].topic, f->rep.v[i].message);
    }
    expect(f, "d1", "device", VBLK_ADV_OK, "vda1 on vda (virtio disk, ext4)");
    expect(f, "d1", "cache", VBLK_ADV_OK, "cache=none");
    expect(f, "d1", "aio", VBLK_ADV_OK, "io_uring");
    expect(f, "d1", "scheduler", VBLK_ADV_OK, "mq-deadline");
    expect(f, "d1", "nr_requests", VBLK_ADV_OK, NULL);
    expect(f, "d1", "iothreads", VBLK_ADV_OK, "4 CPUs");
    expect(f, "d1", "numa", VBLK_ADV_OK, "one NUMA node");
    expect(f, "", "thp", VBLK_ADV_OK, "madvise");
    expect(f, "", "hugepages", VBLK_ADV_OK, "4 of 8");
    expect(f, "", "cpufreq", VBLK_ADV_OK, "4 CPUs");
    /* a virtio disk's speed is the host's: polling is a hint, not a warning */
    expect(f, "d1", "polling", VBLK_ADV_INFO, "poll-us=1000");
    assert_int_equal(f->rep.count[VBLK_ADV_WARN], 0);
}

static void test_cache_mode_vs_device(void **state)
{
    struct fx *f = *state;

    run(f, "cache=writeback");
    expect(f, "d1", "cache", VBLK_ADV_WARN, "use cache=none");
    run(f, "cache=directsync");
    expect(f, "d1", "cache", VBLK_ADV_OK, NULL);

    /* tmpfs: no block device behind it, writeback is right and O_DIRECT is not */
    fs(f, "tmpfs");
    unlink_dev(f);
    run(f, "");
    expect(f, "d1", "device", VBLK_ADV_OK, "tmpfs");
    expect(f, "d1", "cache", VBLK_ADV_WARN, "use cache=writeback");
    assert_null(find(f, "d1", "scheduler"));
    run(f, "cache=writeback");
    expect(f, "d1", "cache", VBLK_ADV_OK, NULL);
}

static void test_aio_engine(void **state)
{
    struct fx *f = *state;

    run(f, "aio=threads");
    expect(f, "d1", "aio", VBLK_ADV_WARN, "use aio=io_uring");
    run(f, "aio=native");
    expect(f, "d1", "aio", VBLK_ADV_INFO, NULL);
    run(f, "aio=native,cache=writeback");
    expect(f, "d1", "aio", VBLK_ADV_WARN, "blocks on page-cache I/O");
    put(f, "proc/sys/kernel/io_uring_disabled", "2\n");
    run(f, "");
    expect(f, "d1", "aio", VBLK_ADV_WARN, "io_uring_disabled=2");
    /* a filesystem without asynchronous I/O: threads are right there */
    fs(f, "nfs4");
    run(f, "aio=threads");
    expect(f, "d1", "aio", VBLK_ADV_OK, "nfs4");
}

static void test_scheduler(void **state)
{
    struct fx *f = *state;

    put(f, "sys/devices/pci0000:00/virtio1/block/vda/queue/scheduler",
        "none mq-deadline kyber [bfq]\n");
    run(f, "");
    expect(f, "d1", "scheduler", VBLK_ADV_WARN, "uses bfq: set none or mq-deadline");
    put(f, "sys/devices/pci0000:00/virtio1/block/vda/queue/scheduler", "[none] mq-deadline\n");
    run(f, "");
    expect(f, "d1", "scheduler", VBLK_ADV_OK, "none");
    rm(f, "sys/devices/pci0000:00/virtio1/block/vda/queue/scheduler");
    run(f, "");
    expect(f, "d1", "scheduler", VBLK_ADV_INFO, "cannot read");
}

static void test_nr_requests_vs_queue_depth(void **state)
{
    struct fx *f = *state;

    put(f, "sys/devices/pci0000:00/virtio1/block/vda/queue/nr_requests", "256\n");
    run(f, "");
    expect(f, "d1", "nr_requests", VBLK_ADV_WARN, "up to 1024 requests");
    run(f, "queue-size=256");
    expect(f, "d1", "nr_requests", VBLK_ADV_OK, NULL);
    /* 4 queues on 2 threads: 2 x 128 per thread */
    run(f, "queue-size=128,num-queues=4,iothreads=2");
    expect(f, "d1", "nr_requests", VBLK_ADV_OK, "256 in flight");
    run(f, "queue-size=128,num-queues=4,iothreads=1");
    expect(f, "d1", "nr_requests", VBLK_ADV_WARN, "up to 512");
    /* through the page cache the queue depth does not reach the device */
    run(f, "cache=writeback");
    assert_null(find(f, "d1", "nr_requests"));
}

static void test_thp(void **state)
{
    struct fx *f = *state;

    put(f, "sys/kernel/mm/transparent_hugepage/enabled", "always madvise [never]\n");
    run(f, "");
    expect(f, "", "thp", VBLK_ADV_WARN, "set madvise");
    put(f, "sys/kernel/mm/transparent_hugepage/enabled", "[always] madvise never\n");
    run(f, "");
    expect(f, "", "thp", VBLK_ADV_OK, "always");
    rm(f, "sys/kernel/mm/transparent_hugepage/enabled");
    run(f, "");
    expect(f, "", "thp", VBLK_ADV_INFO, NULL);
}

static void test_hugepages(void **state)
{
    struct fx *f = *state;

    put(f, "proc/meminfo",
        "HugePages_Total:       8\nHugePages_Free:        0\n"
        "Hugepagesize:       2048 kB\n");
    run(f, "");
    expect(f, "", "hugepages", VBLK_ADV_WARN, "all 8 hugepages");
    put(f, "proc/meminfo", "HugePages_Total:       0\nHugePages_Free:        0\n");
    run(f, "");
    expect(f, "", "hugepages", VBLK_ADV_INFO, "vm.nr_hugepages");
}

static void test_cpufreq_governor(void **state)
{
    struct fx *f = *state;
    char path[PATH_MAX * 2];

    put(f, "sys/devices/system/cpu/cpu2/cpufreq/scaling_governor", "powersave\n");
    run(f, "");
    expect(f, "", "cpufreq", VBLK_ADV_WARN, "1 of 4 CPUs");
    expect(f, "", "cpufreq", VBLK_ADV_WARN, "cpu2 powersave");
    /* a VM: no cpufreq at all */
    snprintf(path, sizeof(path), "rm -rf '%s'/sys/devices/system/cpu/cpu*/cpufreq", f->root);
    assert_int_equal(system(path), 0);
    run(f, "");
    expect(f, "", "cpufreq", VBLK_ADV_INFO, "no cpufreq");
}

static void test_numa(void **state)
{
    struct fx *f = *state;

    char path[PATH_MAX * 2];

    /* as sysfs has it: vda/device is the virtio device, whose PCI parent has numa_node */
    put(f, "sys/devices/system/node/online", "0-1\n");
    put(f, "sys/devices/pci0000:00/numa_node", "1\n");
    snprintf(path, sizeof(path), "%s/sys/devices/pci0000:00/virtio1/block/vda/device", f->root);
    assert_int_equal(symlink("../../../virtio1", path), 0);
    /* vblkd (this process) may run anywhere: CPUs outside node 1's list */
    put(f, "sys/devices/system/node/node1/cpulist", "100000\n");
    run(f, "");
    expect(f, "d1", "numa", VBLK_ADV_WARN, "NUMA node 1 of 2");
    /* node 1 holds every CPU this process may use */
    put(f, "sys/devices/system/node/node1/cpulist", "0-%d\n", CPU_SETSIZE - 1);
    run(f, "");
    expect(f, "d1", "numa", VBLK_ADV_OK, "node 1");
    put(f, "sys/devices/pci0000:00/numa_node", "-1\n");
    run(f, "");
    expect(f, "d1", "numa", VBLK_ADV_INFO, "not known");
}

static void test_polling_vs_device(void **state)
{
    struct fx *f = *state;

    /* a SATA disk that spins */
    put(f, "sys/devices/pci0000:00/ata1/block/sda/queue/rotational", "1\n");
    put(f, "sys/devices/pci0000:00/ata1/block/sda/queue/scheduler", "[mq-deadline] none\n");
    put(f, "sys/devices/pci0000:00/ata1/block/sda/queue/nr_requests", "64\n");
    link_dev(f, "devices/pci0000:00/ata1/block/sda");
    run(f, "");
    expect(f, "d1", "device", VBLK_ADV_OK, "on sda (rotational disk");
    expect(f, "d1", "polling", VBLK_ADV_INFO, "use poll-us=0");
    run(f, "poll-us=0");
    expect(f, "d1", "polling", VBLK_ADV_OK, NULL);
    /* NVMe: polling pays */
    put(f, "sys/devices/pci0000:00/nvme/nvme0/nvme0n1/queue/rotational", "0\n");
    put(f, "sys/devices/pci0000:00/nvme/nvme0/nvme0n1/queue/scheduler", "[none] mq-deadline\n");
    put(f, "sys/devices/pci0000:00/nvme/nvme0/nvme0n1/queue/nr_requests", "1023\n");
    put(f, "sys/devices/pci0000:00/nvme/nvme0/nvme0n1/nvme0n1p2/partition", "2\n");
    link_dev(f, "devices/pci0000:00/nvme/nvme0/nvme0n1/nvme0n1p2");
    run(f, "");
    expect(f, "d1", "device", VBLK_ADV_OK, "nvme0n1p2 on nvme0n1 (NVMe");
    expect(f, "d1", "polling", VBLK_ADV_OK, "poll-us=1000");
    expect(f, "d1", "nr_requests", VBLK_ADV_WARN, "1023");
}

static void test_iothreads_vs_cpus(void **state)
{
    struct fx *f = *state;
    struct vblk_export_opts o[2];
    char err[256];

    put(f, "sys/devices/system/cpu/online", "0-1\n");
    run(f, "num-queues=4,iothreads=4");
    expect(f, "d1", "iothreads", VBLK_ADV_WARN, "iothreads=4 but 2 CPUs");
    run(f, "num-queues=4,iothreads=2");
    expect(f, "d1", "iothreads", VBLK_ADV_OK, NULL);
    assert_null(find(f, "", "iothreads")); /* one export: nothing host-wide */
    /* two exports of 2 threads each on 2 CPUs */
    vblk_opts_defaults(&o[0]);
    vblk_opts_defaults(&o[1]);
    assert_int_equal(vblk_opts_parse_export("id=a,file=null://1G,socket=/x/a,num-queues=2,"
                                            "iothreads=2",
                                            &o[0], err, sizeof(err)),
                     0);
    assert_int_equal(vblk_opts_parse_export("id=b,file=null://1G,socket=/x/b,num-queues=2,"
                                            "iothreads=2",
                                            &o[1], err, sizeof(err)),
                     0);
    vblk_advisor_free(&f->rep);
    assert_int_equal(vblk_advisor_check(o, 2, f->root, &f->rep), 0);
    expect(f, "", "iothreads", VBLK_ADV_WARN, "4 polling I/O threads on 2 CPUs");
    /* not polling, they sleep between requests: no warning */
    o[0].poll_us = o[1].poll_us = 0;
    vblk_advisor_free(&f->rep);
    assert_int_equal(vblk_advisor_check(o, 2, f->root, &f->rep), 0);
    expect(f, "", "iothreads", VBLK_ADV_INFO, "4 I/O threads on 2 CPUs (0 polling)");
    expect(f, "a", "iothreads", VBLK_ADV_OK, NULL);
    expect(f, "a", "device", VBLK_ADV_OK, "null://");
    expect(f, "b", "polling", VBLK_ADV_INFO, "poll-us=0 on a fast device");
    assert_null(find(f, "a", "cache")); /* nothing about storage for null:// */
}

static void test_device_mapper_and_loop(void **state)
{
    struct fx *f = *state;
    char path[PATH_MAX * 2];

    /* dm-0 (vg-root) over sdb1 and sdc: the checks use sdb (the first member) */
    put(f, "sys/devices/virtual/block/dm-0/dm/name", "vg-root\n");
    put(f, "sys/devices/pci0000:00/ata2/block/sdb/queue/rotational", "0\n");
    put(f, "sys/devices/pci0000:00/ata2/block/sdb/queue/scheduler", "none [bfq]\n");
    put(f, "sys/devices/pci0000:00/ata2/block/sdb/sdb1/partition", "1\n");
    put(f, "sys/devices/pci0000:00/ata3/block/sdc/queue/rotational", "0\n");
    link_dev(f, "devices/virtual/block/dm-0");
    snprintf(path, sizeof(path), "%s/sys/devices/virtual/block/dm-0/slaves", f->root);
    mkdirs(path);
    snprintf(path, sizeof(path), "%s/sys/devices/virtual/block/dm-0/slaves/sdb1", f->root);
    assert_int_equal(symlink("../../../../pci0000:00/ata2/block/sdb/sdb1", path), 0);
    snprintf(path, sizeof(path), "%s/sys/devices/virtual/block/dm-0/slaves/sdc", f->root);
    assert_int_equal(symlink("../../../../pci0000:00/ata3/block/sdc", path), 0);
    run(f, "");
    expect(f, "d1", "device", VBLK_ADV_INFO, "dm-0 (device-mapper vg-root) over");
    expect(f, "d1", "device", VBLK_ADV_INFO, "sdb1 on sdb (SSD");
    expect(f, "d1", "scheduler", VBLK_ADV_WARN, "sdb (SSD) uses bfq");

    /* a loop device: say so, skip the disk checks */
    put(f, "sys/devices/virtual/block/loop3/loop/backing_file", "/srv/images/big.img\n");
    put(f, "sys/devices/virtual/block/loop3/queue/scheduler", "[none]\n");
    link_dev(f, "devices/virtual/block/loop3");
    run(f, "");
    expect(f, "d1", "device", VBLK_ADV_INFO, "loop device over /srv/images/big.img");
    assert_null(find(f, "d1", "scheduler"));
}

static void test_missing_file_and_empty_tree(void **state)
{
    struct fx *f = *state;
    struct vblk_export_opts o;
    char err[256], empty[PATH_MAX + 8], arg[PATH_MAX + 64];

    vblk_opts_defaults(&o);
    assert_int_equal(vblk_opts_parse_export("id=gone,file=/nonexistent/vblk/x.img,socket=/x/s", &o,
                                            err, sizeof(err)),
                     0);
    assert_int_equal(vblk_advisor_check(&o, 1, f->root, &f->rep), 0);
    expect(f, "gone", "device", VBLK_ADV_INFO, "cannot stat");
    assert_null(find(f, "gone", "cache"));

    /* an empty tree: every fact missing is an info line, never a warning or a crash */
    snprintf(empty, sizeof(empty), "%s/empty", f->root);
    mkdirs(empty);
    vblk_advisor_free(&f->rep);
    vblk_opts_defaults(&o);
    snprintf(arg, sizeof(arg), "id=d1,file=%s,socket=/x/s", f->file);
    assert_int_equal(vblk_opts_parse_export(arg, &o, err, sizeof(err)), 0);
    assert_int_equal(vblk_advisor_check(&o, 1, empty, &f->rep), 0);
    assert_int_equal(f->rep.count[VBLK_ADV_WARN], 0);
    expect(f, "", "thp", VBLK_ADV_INFO, NULL);
    expect(f, "", "hugepages", VBLK_ADV_INFO, NULL);
    expect(f, "", "cpufreq", VBLK_ADV_INFO, NULL);
    expect(f, "d1", "device", VBLK_ADV_INFO, "an unknown filesystem");
    expect(f, "d1", "iothreads", VBLK_ADV_INFO, NULL);
}

static void test_json_and_text(void **state)
{
    struct fx *f = *state;
    struct json_object *o, *list, *first, *v;
    char *text = NULL;
    size_t len = 0;
    FILE *mf;

    put(f, "sys/kernel/mm/transparent_hugepage/enabled", "always madvise [never]\n");
    run(f, "");
    o = vblk_advisor_json(&f->rep);
    assert_non_null(o);
    assert_true(json_object_object_get_ex(o, "findings", &list));
    assert_int_equal(json_object_array_length(list), f->rep.n);
    first = json_object_array_get_idx(list, 0);
    assert_true(json_object_object_get_ex(first, "export", &v));
    assert_null(v); /* host-wide: null */
    assert_true(json_object_object_get_ex(first, "level", &v));
    assert_string_equal(json_object_get_string(v), "warn");
    assert_true(json_object_object_get_ex(o, "warnings", &v));
    assert_int_equal(json_object_get_int(v), 1);
    json_object_put(o);

    mf = open_memstream(&text, &len);
    vblk_advisor_print(mf, &f->rep);
    fclose(mf);
    assert_non_null(strstr(text, "warn  host  thp "));
    assert_non_null(strstr(text, "ok    d1    cache "));
    assert_non_null(strstr(text, "1 warning, "));
    free(text);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)
        T(test_healthy_host_has_no_warning),
        T(test_cache_mode_vs_device),
        T(test_aio_engine),
        T(test_scheduler),
        T(test_nr_requests_vs_queue_depth),
        T(test_thp),
        T(test_hugepages),
        T(test_cpufreq_governor),
        T(test_numa),
        T(test_polling_vs_device),
        T(test_iothreads_vs_cpus),
        T(test_device_mapper_and_loop),
        T(test_missing_file_and_empty_tree),
        T(test_json_and_text),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
