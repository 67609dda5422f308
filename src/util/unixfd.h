/* unixfd.h - file descriptors over unix sockets (SCM_RIGHTS), one implementation for vblkd,
 * vblk-bench and the tests.
 *
 * Threads: any; no state.
 */
#ifndef VBLK_UNIXFD_H
#define VBLK_UNIXFD_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#define VBLK_UNIXFD_MAX 16 /* most fds one call sends or receives */

/* sendmsg(sock, buf[0..len)) with fds[0..nfds) attached (nfds <= VBLK_UNIXFD_MAX).  Returns the
 * bytes sent (possibly fewer than len: the fds went with the first byte), or -errno. */
ssize_t vblk_send_fds(int sock, const void *buf, size_t len, const int *fds, unsigned nfds,
                      int flags);

/* recvmsg(sock) of up to len bytes into buf.  Received fds (close-on-exec) are appended to
 * fds[*nfds] while *nfds < max; any beyond that are closed and *overflow set, as is a truncated
 * control message.  Returns bytes received (0: end of file) or -errno. */
ssize_t vblk_recv_fds(int sock, void *buf, size_t len, int *fds, unsigned *nfds, unsigned max,
                      bool *overflow, int flags);

/* A non-blocking, close-on-exec listening unix stream socket at path.  A stale socket nobody
 * listens on is replaced; anything else at path is an error.  The fd, or -errno with err set. */
int vblk_listen_unix(const char *path, char *err, size_t errlen);

#endif
