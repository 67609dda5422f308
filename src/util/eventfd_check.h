/* eventfd_check.h - vetting notification fds a peer hands us.
 *
 * Kick, call and err fds come from the front-end.  Used as sent, a pipe that is never read or a
 * blocking eventfd loaded near its maximum blocks the thread that signals it, and a semaphore
 * eventfd stays readable after every read (a spinning reader).  vblk_eventfd_adopt() accepts only
 * a plain eventfd and makes it non-blocking, so signalling never waits (EAGAIN means the counter
 * is already non-zero: the peer has been signalled) and reading never waits.
 *
 * Threads: any (it reads /proc/self and calls fcntl).
 */
#ifndef VBLK_EVENTFD_CHECK_H
#define VBLK_EVENTFD_CHECK_H

/* 0; -EBADF if fd is not an eventfd, -EINVAL if it is a semaphore eventfd, or -errno. */
int vblk_eventfd_adopt(int fd);

#endif
