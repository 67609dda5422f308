/* main.c - vblkd: command line, start-up, the control loop and shutdown.
 *
 * Owns: the main (control) thread.  It watches the listening sockets, the front-end
 * connections and signals, nothing else; all I/O runs on the exports' I/O threads.
 * SIGINT/SIGTERM: stop accepting, drain in-flight I/O, flush, exit 0.  SIGUSR1: log counters.
 */
#include <errno.h>
#include <getopt.h>
#include <json-c/json.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <grp.h>
#include <pwd.h>

#include "control/advisor.h"
#include "control/daemon.h"
#include "mem/guest_mem.h"
#include "util/log.h"
#include "util/notify.h"

static void usage(FILE *f)
{
    fprintf(
        f,
        "Usage: vblkd [--export id=NAME,file=PATH,socket=PATH[,key=value...]]... [--config FILE]\n"
        "             [--rpc PATH [--rpc-mode MODE] [--rpc-owner USER[:GROUP]]]\n"
        "\n"
        "Serves each file or block device as a virtio-blk disk over vhost-user-blk\n"
        "(QEMU: -chardev socket,path=PATH -device vhost-user-blk-pci,chardev=...).\n"
        "\n"
        "Export keys:\n"
        "  id=NAME                   name used in messages (required)\n"
        "  file=PATH                 regular file or block device; null://SIZE for a\n"
        "                            device that stores nothing and reads zeroes (required)\n"
        "  socket=PATH               unix socket to listen on (required)\n"
        "  readonly=on|off           refuse writes, advertise VIRTIO_BLK_F_RO (off)\n"
        "  aio=io_uring|native|threads  I/O engine: io_uring, Linux AIO, thread pool\n"
        "                            (io_uring)\n"
        "  cache=none|writeback|writethrough|directsync|unsafe  as in QEMU (none)\n"
        "  num-queues=N              virtqueues, 1-64 (1)\n"
        "  queue-size=N              largest virtqueue accepted, power of two <= 1024 (1024)\n"
        "  discard=unmap|ignore      pass discards to the file, or don't offer them (unmap)\n"
        "  serial=STR                answer to GET_ID, up to 20 characters (the id)\n"
        "  logical-block-size=N      512 to 64k (512)\n"
        "  read-zeroes=on|off        null://: zero-fill read buffers, or leave them (on)\n"
        "  fixed-buffers=on|off      io_uring: pin guest memory as fixed buffers; unsafe\n"
        "                            with balloon/free page reporting/virtio-mem (off)\n"
        "  iothreads=N               I/O threads for this export; queue q is served by\n"
        "                            thread q %% N (1)\n"
        "  iothread-cpus=LIST        run I/O thread i on CPU LIST[i %% len] (2:3 or 0-3)\n"
        "  format=raw|qcow2|auto     image format; auto (probing) only with readonly=on (raw)\n"
        "  rerror=, werror=report|ignore|stop|enospc  what a failed read / other request\n"
        "                            does: IOERR, success, hold it and pause the queue until\n"
        "                            SIGUSR2, stop on ENOSPC only (report, enospc)\n"
        "  inject-ops=OP[+OP...]     fault injection (tests): read, write, flush, discard,\n"
        "                            write-zeroes fail with inject-errno=EIO|ENOSPC|N, in\n"
        "                            [inject-offset, +inject-length), inject-rate=%% of them,\n"
        "                            at most inject-count\n"
        "  poll-us=N                 busy-poll rings and completions up to N microseconds\n"
        "                            after work before sleeping, adapted to the load;\n"
        "                            0 never polls (1000)\n"
        "\n"
        "Options:\n"
        "  -e, --export KEYS         serve one disk (the keys above); repeatable\n"
        "  -c, --config FILE         serve the exports of a JSON file:\n"
        "                            {\"exports\": [{\"id\": \"d1\", \"file\": ..., ...}]}\n"
        "  -r, --rpc PATH            control socket (JSON-RPC 2.0, one request per line; see\n"
        "                            vblkctl); with it, vblkd may start with no export\n"
        "      --rpc-mode MODE       octal permissions of the control socket (0600)\n"
        "      --rpc-owner USER[:GROUP]  owner of the control socket\n"
        "  -m, --metrics ADDR:PORT   serve the counters in Prometheus format at\n"
        "                            http://ADDR:PORT/metrics (127.0.0.1:9100, [::1]:9100,\n"
        "                            :9100 for every address; port 0: any free port)\n"
        "      --check-host          start nothing: for each export (--export, --config),\n"
        "                            say what of its set-up and of this host to change for\n"
        "                            the best performance, one line per finding; exit 0\n"
        "                            without warnings, 1 with some, 2 on usage errors\n"
        "      --json                with --check-host: the findings as JSON\n"
        "  -v, --verbose             log every vhost-user message\n"
        "  -h, --help                this text\n"
        "  -V, --version             print the version\n"
        "\n"
        "Live changes (export-set, vblkctl export set): readonly (off to on), poll-us.\n"
        "Signals: SIGINT/SIGTERM drain, flush and exit 0; SIGUSR1 logs request counters;\n"
        "SIGUSR2 resumes queues an error policy paused (retrying the held requests).\n");
}

struct args {
    struct vblk_export_opts *exps;
    unsigned nexp;
    const char *config;
    struct vblk_daemon_conf dc;
    bool check_host, json; /* --check-host [--json] */
};

static int parse_owner(const char *s, uid_t *uid, gid_t *gid)
{
    char user[256], *colon;
    struct passwd *pw;
    struct group *gr;

    snprintf(user, sizeof(user), "%s", s);
    colon = strchr(user, ':');
    if (colon)
        *colon++ = '\0';
    if (*user) {
        pw = getpwnam(user);
        if (!pw)
            return -1;
        *uid = pw->pw_uid;
    }
    if (colon && *colon) {
        gr = getgrnam(colon);
        if (!gr)
            return -1;
        *gid = gr->gr_gid;
    }
    return 0;
}

static int parse_args(int argc, char **argv, struct args *a)
{
    static const struct option longopts[] = {
        {"export", required_argument, NULL, 'e'},
        {"config", required_argument, NULL, 'c'},
        {"rpc", required_argument, NULL, 'r'},
        {"rpc-mode", required_argument, NULL, 'M'},
        {"rpc-owner", required_argument, NULL, 'O'},
        {"metrics", required_argument, NULL, 'm'},
        {"verbose", no_argument, NULL, 'v'},
        {"help", no_argument, NULL, 'h'},
        {"version", no_argument, NULL, 'V'},
        {"check-host", no_argument, NULL, 'C'},
        {"json", no_argument, NULL, 'J'},
        {NULL, 0, NULL, 0},
    };
    char err[512], *end;
    int c;

    a->dc.rpc_uid = (uid_t)-1;
    a->dc.rpc_gid = (gid_t)-1;
    while ((c = getopt_long(argc, argv, "e:c:r:m:vhV", longopts, NULL)) != -1) {
        switch (c) {
        case 'e':
            if (a->nexp == VBLK_MAX_EXPORTS) {
                fprintf(stderr, "vblkd: at most %d exports\n", VBLK_MAX_EXPORTS);
                return 1;
            }
            vblk_opts_defaults(&a->exps[a->nexp]);
            if (vblk_opts_parse_export(optarg, &a->exps[a->nexp], err, sizeof(err)) < 0) {
                fprintf(stderr, "vblkd: --export %s: %s\n", optarg, err);
                return 1;
            }
            a->nexp++;
            break;
        case 'c':
            a->config = optarg;
            break;
        case 'r':
            a->dc.rpc_path = optarg;
            break;
        case 'm':
            a->dc.metrics = optarg;
            break;
        case 'M': {
            unsigned long m = strtoul(optarg, &end, 8);

            if (!*optarg || *end || m > 07777) {
                fprintf(stderr, "vblkd: --rpc-mode %s: an octal mode like 0660\n", optarg);
                return 1;
            }
            a->dc.rpc_mode = (mode_t)m;
            break;
        }
        case 'O':
            if (parse_owner(optarg, &a->dc.rpc_uid, &a->dc.rpc_gid) < 0) {
                fprintf(stderr, "vblkd: --rpc-owner %s: no such user or group\n", optarg);
                return 1;
            }
            break;
        case 'C':
            a->check_host = true;
            break;
        case 'J':
            a->json = true;
            break;
        case 'v':
            vblk_log_level = VBLK_LOG_DEBUG;
            break;
        case 'h':
            usage(stdout);
            exit(0);
        case 'V':
            printf("vblkd %s\n", VBLK_VERSION);
            exit(0);
        default:
            usage(stderr);
            return 1;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "vblkd: unexpected argument '%s'\n", argv[optind]);
        return 1;
    }
    if (a->json && !a->check_host) {
        fprintf(stderr, "vblkd: --json goes with --check-host\n");
        return 1;
    }
    if (a->check_host && (a->dc.rpc_path || a->dc.metrics)) {
        fprintf(stderr, "vblkd: --check-host starts nothing: no --rpc or --metrics with it\n");
        return 1;
    }
    if (a->nexp == 0 && !a->config && !a->dc.rpc_path && !a->check_host) {
        fprintf(stderr, "vblkd: nothing to serve: give at least one --export, a --config or an "
                        "--rpc socket (see --help)\n");
        return 1;
    }
    return 0;
}

static int add_checked(void *opaque, const struct vblk_export_opts *o, char *err, size_t errlen)
{
    struct args *a = opaque;

    for (unsigned i = 0; i < a->nexp; i++) {
        if (!strcmp(a->exps[i].id, o->id)) {
            snprintf(err, errlen, "export %s exists already", o->id);
            return -EEXIST;
        }
    }
    if (a->nexp == VBLK_MAX_EXPORTS) {
        snprintf(err, errlen, "export %s: at most %d exports", o->id, VBLK_MAX_EXPORTS);
        return -ENOSPC;
    }
    a->exps[a->nexp++] = *o;
    return 0;
}

/* --check-host: the advisor on the exports given, nothing started.  0 (no warnings), 1, 2. */
static int check_host(struct args *a)
{
    struct vblk_adv_report rep = {0};
    char err[1024];
    int status;

    if (a->config && vblk_config_read(a->config, add_checked, a, err, sizeof(err)) < 0) {
        fprintf(stderr, "vblkd: %s\n", err);
        return 2;
    }
    if (vblk_advisor_check(a->exps, a->nexp, NULL, &rep) < 0) {
        fprintf(stderr, "vblkd: --check-host: out of memory\n");
        vblk_advisor_free(&rep);
        return 2;
    }
    if (a->json) {
        struct json_object *o = vblk_advisor_json(&rep);

        if (o)
            printf("%s\n", json_object_to_json_string_ext(o, JSON_C_TO_STRING_PRETTY |
                                                                 JSON_C_TO_STRING_NOSLASHESCAPE));
        json_object_put(o);
    } else {
        vblk_advisor_print(stdout, &rep);
    }
    status = rep.count[VBLK_ADV_WARN] ? 1 : 0;
    vblk_advisor_free(&rep);
    return status;
}

int main(int argc, char **argv)
{
    static struct vblk_export_opts exps[VBLK_MAX_EXPORTS];
    struct args a = {.exps = exps};
    struct vblk_daemon *d;
    char err[1024];
    int status = 1;

    for (int i = 1; i < argc && strcmp(argv[i], "--"); i++) {
        if (!strcmp(argv[i], "--check-host"))
            a.check_host = true; /* usage errors exit 2 then, not 1 */
    }
    if (parse_args(argc, argv, &a))
        return a.check_host ? 2 : 1;
    if (a.check_host)
        return check_host(&a);

    signal(SIGPIPE, SIG_IGN);
    if (vblk_mem_sigbus_guard_install() < 0) {
        fprintf(stderr, "vblkd: cannot install the SIGBUS guard: %s\n", strerror(errno));
        return 1;
    }
    if (vblk_daemon_create(&d, &a.dc, err, sizeof(err)) < 0) {
        fprintf(stderr, "vblkd: %s\n", err);
        return 1;
    }
    for (unsigned i = 0; i < a.nexp; i++) {
        if (vblk_daemon_add_export(d, &exps[i], err, sizeof(err)) < 0) {
            fprintf(stderr, "vblkd: %s\n", err);
            goto out;
        }
    }
    if (a.config && vblk_daemon_load_config(d, a.config, err, sizeof(err)) < 0) {
        fprintf(stderr, "vblkd: %s\n", err);
        goto out;
    }
    log_info(NULL, "ready: %u export%s%s%s", vblk_daemon_num_exports(d),
             vblk_daemon_num_exports(d) == 1 ? "" : "s", a.dc.rpc_path ? ", control socket " : "",
             a.dc.rpc_path ? a.dc.rpc_path : "");
    vblk_notify_ready();
    status = vblk_daemon_run(d);
out:
    vblk_daemon_destroy(d);
    return status;
}
