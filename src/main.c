/* main.c - vblkd: command line, start-up, the control loop and shutdown.
 *
 * Owns: the main (control) thread.  It watches the listening sockets, the front-end
 * connections and signals, nothing else; all I/O runs on the exports' I/O threads.
 * SIGINT/SIGTERM: stop accepting, drain in-flight I/O, flush, exit 0.  SIGUSR1: log counters.
 */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include "export.h"
#include "mem/guest_mem.h"
#include "util/log.h"
#include "util/notify.h"

#define MAX_EXPORTS 64

/* epoll tags: which kind of fd woke us */
enum { TAG_SIGNAL = 0, TAG_LISTEN = 1, TAG_CONN = 2, TAG_GUARD = 3 };
#define EV_DATA(tag, idx) (((uint64_t)(tag) << 32) | (uint32_t)(idx))

static void usage(FILE *f)
{
    fprintf(f,
            "Usage: vblkd --export id=NAME,file=PATH,socket=PATH[,key=value...] [--export ...]\n"
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
            "  iothreads=N               I/O threads for this export; queue q is served by\n"
            "                            thread q %% N (1)\n"
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
            "  -v, --verbose             log every vhost-user message\n"
            "  -h, --help                this text\n"
            "  -V, --version             print the version\n"
            "\n"
            "Signals: SIGINT/SIGTERM drain, flush and exit 0; SIGUSR1 logs request counters;\n"
            "SIGUSR2 resumes queues an error policy paused (retrying the held requests).\n");
}

static int parse_args(int argc, char **argv, struct vblk_export *exps, unsigned *nexp)
{
    static const struct option longopts[] = {
        {"export", required_argument, NULL, 'e'},
        {"verbose", no_argument, NULL, 'v'},
        {"help", no_argument, NULL, 'h'},
        {"version", no_argument, NULL, 'V'},
        {NULL, 0, NULL, 0},
    };
    char err[512];
    int c;

    *nexp = 0;
    while ((c = getopt_long(argc, argv, "e:vhV", longopts, NULL)) != -1) {
        switch (c) {
        case 'e':
            if (*nexp == MAX_EXPORTS) {
                fprintf(stderr, "vblkd: at most %d exports\n", MAX_EXPORTS);
                return 1;
            }
            vblk_opts_defaults(&exps[*nexp].opts);
            if (vblk_opts_parse_export(optarg, &exps[*nexp].opts, err, sizeof(err)) < 0) {
                fprintf(stderr, "vblkd: --export %s: %s\n", optarg, err);
                return 1;
            }
            for (unsigned i = 0; i < *nexp; i++) {
                if (!strcmp(exps[i].opts.id, exps[*nexp].opts.id)) {
                    fprintf(stderr, "vblkd: --export id=%s is used twice\n", exps[i].opts.id);
                    return 1;
                }
                if (!strcmp(exps[i].opts.socket, exps[*nexp].opts.socket)) {
                    fprintf(stderr, "vblkd: socket=%s is used by exports %s and %s\n",
                            exps[i].opts.socket, exps[i].opts.id, exps[*nexp].opts.id);
                    return 1;
                }
            }
            (*nexp)++;
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
    if (*nexp == 0) {
        fprintf(stderr, "vblkd: nothing to serve: give at least one --export (see --help)\n");
        return 1;
    }
    return 0;
}

static int epoll_add(int epfd, int fd, uint64_t data)
{
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = data};

    return epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) < 0 ? -errno : 0;
}

static void accept_conn(int epfd, struct vblk_export *e, unsigned idx)
{
    int fd = accept4(e->listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);

    if (fd < 0)
        return;
    if (vblk_vu_attach(&e->vu, fd) < 0) {
        log_warn(e->opts.id, e->vu.wedged
                                 ? "refusing a front-end: the export was torn down"
                                 : "refusing a second front-end: one is already connected");
        close(fd);
        return;
    }
    if (epoll_add(epfd, fd, EV_DATA(TAG_CONN, idx)) < 0)
        vblk_vu_disconnect(&e->vu);
}

int main(int argc, char **argv)
{
    static struct vblk_export exps[MAX_EXPORTS];
    struct epoll_event evs[16];
    unsigned nexp, started = 0;
    sigset_t mask;
    int epfd, sfd, status = 1;
    bool running = true;

    if (parse_args(argc, argv, exps, &nexp))
        return 1;

    signal(SIGPIPE, SIG_IGN);
    if (vblk_mem_sigbus_guard_install() < 0) {
        fprintf(stderr, "vblkd: cannot install the SIGBUS guard: %s\n", strerror(errno));
        return 1;
    }
    sigemptyset(&mask);
    sigaddset(&mask, SIGINT);
    sigaddset(&mask, SIGTERM);
    sigaddset(&mask, SIGUSR1);
    sigaddset(&mask, SIGUSR2);
    /* blocked before any thread starts, so I/O threads inherit the mask */
    pthread_sigmask(SIG_BLOCK, &mask, NULL);
    sfd = signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK);
    epfd = epoll_create1(EPOLL_CLOEXEC);
    if (sfd < 0 || epfd < 0 || epoll_add(epfd, sfd, EV_DATA(TAG_SIGNAL, 0)) < 0 ||
        epoll_add(epfd, vblk_mem_guard_fd(), EV_DATA(TAG_GUARD, 0)) < 0) {
        fprintf(stderr, "vblkd: cannot set up the event loop: %s\n", strerror(errno));
        return 1;
    }

    for (; started < nexp; started++) {
        char err[512];

        if (vblk_export_start(&exps[started], err, sizeof(err)) < 0) {
            fprintf(stderr, "vblkd: export %s: %s\n", exps[started].opts.id, err);
            goto out;
        }
        if (epoll_add(epfd, exps[started].listen_fd, EV_DATA(TAG_LISTEN, started)) < 0) {
            started++;
            goto out;
        }
    }
    log_info(NULL, "ready: %u export%s", nexp, nexp > 1 ? "s" : "");
    vblk_notify_ready();

    while (running) {
        int n = epoll_wait(epfd, evs, 16, -1);

        if (n < 0 && errno != EINTR) {
            log_err(NULL, "epoll_wait failed: %s", strerror(errno));
            goto out;
        }
        for (int i = 0; i < n; i++) {
            unsigned tag = (unsigned)(evs[i].data.u64 >> 32);
            unsigned idx = (uint32_t)evs[i].data.u64;

            if (tag == TAG_SIGNAL) {
                struct signalfd_siginfo si;

                while (read(sfd, &si, sizeof(si)) == sizeof(si)) {
                    if (si.ssi_signo == SIGUSR1) {
                        for (unsigned k = 0; k < nexp; k++)
                            vblk_export_log_stats(&exps[k]);
                    } else if (si.ssi_signo == SIGUSR2) {
                        for (unsigned k = 0; k < nexp; k++)
                            vblk_export_resume(&exps[k]);
                    } else {
                        log_info(NULL, "%s: draining and exiting", strsignal((int)si.ssi_signo));
                        running = false;
                        vblk_notify_stopping();
                    }
                }
            } else if (tag == TAG_GUARD) {
                eventfd_t v;

                /* a front-end shrank guest memory under a ring: drop that connection */
                (void)eventfd_read(vblk_mem_guard_fd(), &v);
                for (unsigned k = 0; k < started; k++)
                    vblk_vu_check_lost_memory(&exps[k].vu);
            } else if (tag == TAG_LISTEN) {
                accept_conn(epfd, &exps[idx], idx);
            } else if (exps[idx].vu.conn_fd >= 0) {
                /* a closed connection leaves the epoll set when its fd is closed */
                vblk_vu_readable(&exps[idx].vu);
            }
        }
    }
    status = 0;
out:
    for (unsigned i = 0; i < started; i++)
        vblk_export_stop(&exps[i]);
    close(epfd);
    close(sfd);
    return status;
}
