/* notify.c - sd_notify() wrappers: see notify.h. */
#include "util/notify.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#ifdef VBLK_HAVE_SYSTEMD
#include <systemd/sd-daemon.h>
#endif

#ifdef VBLK_HAVE_SYSTEMD
static void notify(const char *msg)
{
    /* not under systemd: skip the socket lookup altogether */
    if (!getenv("NOTIFY_SOCKET"))
        return;
    (void)sd_notify(0, msg);
}
#else
static void notify(const char *msg)
{
    (void)msg;
}
#endif

void vblk_notify_ready(void)
{
    notify("READY=1\nSTATUS=serving: every export is listening");
}

void vblk_notify_stopping(void)
{
    notify("STOPPING=1\nSTATUS=stopping: draining in-flight I/O");
}

void vblk_notify_status(const char *fmt, ...)
{
    char msg[7 + 256];
    va_list ap;
    int n;

    if (!getenv("NOTIFY_SOCKET"))
        return;
    n = snprintf(msg, sizeof(msg), "STATUS=");
    va_start(ap, fmt);
    vsnprintf(msg + n, sizeof(msg) - (size_t)n, fmt, ap);
    va_end(ap);
    notify(msg);
}
