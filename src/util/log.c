/* log.c - see log.h. */
#include "util/log.h"

#include <stdarg.h>
#include <stdio.h>
#include <unistd.h>

int vblk_log_level = VBLK_LOG_INFO;

void vblk_log(int level, const char *dev, const char *fmt, ...)
{
    static const char *const names[] = {"error", "warning", "info", "debug"};
    char line[1024];
    int n;
    va_list ap;

    if (level > vblk_log_level)
        return;
    n = snprintf(line, sizeof(line), "vblkd: %s: %s%s", names[level], dev ? dev : "",
                 dev ? ": " : "");
    va_start(ap, fmt);
    n += vsnprintf(line + n, sizeof(line) - (size_t)n - 1, fmt, ap);
    va_end(ap);
    if (n > (int)sizeof(line) - 2)
        n = (int)sizeof(line) - 2;
    line[n++] = '\n';
    if (write(STDERR_FILENO, line, (size_t)n) < 0) {
        /* nothing sensible to do */
    }
}
