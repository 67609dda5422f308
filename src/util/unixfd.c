/* unixfd.c - see unixfd.h. */
#include "util/unixfd.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/uio.h>
#include <unistd.h>

union fd_control {
    char buf[CMSG_SPACE(sizeof(int) * VBLK_UNIXFD_MAX)];
    struct cmsghdr align;
};

ssize_t vblk_send_fds(int sock, const void *buf, size_t len, const int *fds, unsigned nfds,
                      int flags)
{
    union fd_control control;
    struct iovec iov = {.iov_base = (void *)buf, .iov_len = len};
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1};
    ssize_t n;

    if (nfds > VBLK_UNIXFD_MAX)
        return -EINVAL;
    if (nfds) {
        struct cmsghdr *cm;

        memset(&control, 0, sizeof(control));
        mh.msg_control = control.buf;
        mh.msg_controllen = CMSG_SPACE(nfds * sizeof(int));
        cm = CMSG_FIRSTHDR(&mh);
        cm->cmsg_level = SOL_SOCKET;
        cm->cmsg_type = SCM_RIGHTS;
        cm->cmsg_len = CMSG_LEN(nfds * sizeof(int));
        memcpy(CMSG_DATA(cm), fds, nfds * sizeof(int));
    }
    n = sendmsg(sock, &mh, flags | MSG_NOSIGNAL);
    return n < 0 ? -errno : n;
}

ssize_t vblk_recv_fds(int sock, void *buf, size_t len, int *fds, unsigned *nfds, unsigned max,
                      bool *overflow, int flags)
{
    union fd_control control;
    struct iovec iov = {.iov_base = buf, .iov_len = len};
    struct msghdr mh = {.msg_iov = &iov,
                        .msg_iovlen = 1,
                        .msg_control = control.buf,
                        .msg_controllen = sizeof(control.buf)};
    ssize_t n = recvmsg(sock, &mh, flags | MSG_CMSG_CLOEXEC);

    if (n < 0)
        return -errno;
    for (struct cmsghdr *cm = CMSG_FIRSTHDR(&mh); cm; cm = CMSG_NXTHDR(&mh, cm)) {
        size_t cnt;
        int got[VBLK_UNIXFD_MAX];

        if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS)
            continue;
        cnt = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        if (cnt > VBLK_UNIXFD_MAX)
            cnt = VBLK_UNIXFD_MAX; /* cannot happen: the buffer holds no more */
        memcpy(got, CMSG_DATA(cm), cnt * sizeof(int));
        for (size_t i = 0; i < cnt; i++) {
            if (*nfds < max) {
                fds[(*nfds)++] = got[i];
            } else {
                close(got[i]);
                *overflow = true;
            }
        }
    }
    if (mh.msg_flags & MSG_CTRUNC)
        *overflow = true;
    return n;
}

/* Bind and listen on path.  A stale socket nobody listens on is replaced; anything else that
 * exists at path is an error. */
int vblk_listen_unix(const char *path, char *err, size_t errlen)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    struct stat st;
    int fd, r;

    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
    if (lstat(path, &st) == 0) {
        if (!S_ISSOCK(st.st_mode)) {
            snprintf(err, errlen, "socket path '%s' exists and is not a socket", path);
            return -EEXIST;
        }
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0)
            return -errno;
        r = connect(fd, (struct sockaddr *)&sa, sizeof(sa));
        close(fd);
        if (r == 0) {
            snprintf(err, errlen, "socket '%s' is in use by another process", path);
            return -EADDRINUSE;
        }
        unlink(path); /* stale */
    }
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        return -errno;
    if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(fd, 4) < 0) {
        r = -errno;
        snprintf(err, errlen, "cannot listen on '%s': %s", path, strerror(-r));
        close(fd);
        return r;
    }
    return fd;
}
