/* eventfd_check.c - see eventfd_check.h. */
#include "util/eventfd_check.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

int vblk_eventfd_adopt(int fd)
{
    char path[64], link[64], line[128];
    FILE *f;
    ssize_t n;
    int fl, sem = 0;

    snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
    n = readlink(path, link, sizeof(link) - 1);
    if (n < 0)
        return -errno;
    link[n] = '\0';
    if (strcmp(link, "anon_inode:[eventfd]") != 0)
        return -EBADF;
    /* Kernels since 6.6 show the EFD_SEMAPHORE flag; older ones cannot be asked. */
    snprintf(path, sizeof(path), "/proc/self/fdinfo/%d", fd);
    f = fopen(path, "re");
    if (!f)
        return -errno;
    while (fgets(line, sizeof(line), f)) {
        if (sscanf(line, "eventfd-semaphore: %d", &sem) == 1)
            break;
    }
    fclose(f);
    if (sem)
        return -EINVAL;
    fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0)
        return -errno;
    return 0;
}
