/* buf.c - see buf.h. */
#include "util/buf.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Room for n more bytes and a NUL. */
static bool reserve(struct vblk_buf *b, size_t n)
{
    size_t cap = b->cap ? b->cap : 256;
    char *p;

    if (b->oom)
        return false;
    if (b->len + n + 1 <= b->cap)
        return true;
    while (cap < b->len + n + 1) {
        if (cap > (size_t)-1 / 2) {
            b->oom = true;
            return false;
        }
        cap *= 2;
    }
    p = realloc(b->p, cap);
    if (!p) {
        b->oom = true;
        return false;
    }
    b->p = p;
    b->cap = cap;
    return true;
}

void vblk_buf_append(struct vblk_buf *b, const char *s, size_t n)
{
    if (!reserve(b, n))
        return;
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

void vblk_buf_printf(struct vblk_buf *b, const char *fmt, ...)
{
    va_list ap;
    int n;

    if (b->oom)
        return;
    va_start(ap, fmt);
    n = vsnprintf(b->p ? b->p + b->len : NULL, b->p ? b->cap - b->len : 0, fmt, ap);
    va_end(ap);
    if (n < 0) {
        b->oom = true;
        return;
    }
    if (b->p && (size_t)n < b->cap - b->len) {
        b->len += (size_t)n;
        return;
    }
    if (!reserve(b, (size_t)n))
        return;
    va_start(ap, fmt);
    vsnprintf(b->p + b->len, b->cap - b->len, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

void vblk_buf_free(struct vblk_buf *b)
{
    free(b->p);
    *b = (struct vblk_buf){0};
}

char *vblk_buf_take(struct vblk_buf *b, size_t *len)
{
    char *p = b->oom ? NULL : b->p;

    if (!p && !b->oom && reserve(b, 0)) {
        b->p[0] = '\0';
        p = b->p;
    }
    *len = p ? b->len : 0;
    if (!p)
        free(b->p);
    *b = (struct vblk_buf){0};
    return p;
}
