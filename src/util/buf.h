/* buf.h - a growable text buffer.
 *
 * Appending never fails visibly: on allocation failure the buffer keeps what it had and sets
 * oom, which the owner checks once at the end.  Threads: whoever owns it.
 */
#ifndef VBLK_BUF_H
#define VBLK_BUF_H

#include <stdbool.h>
#include <stddef.h>

struct vblk_buf {
    char *p;    /* NUL-terminated when len > 0; NULL before the first append */
    size_t len; /* bytes, without the NUL */
    size_t cap;
    bool oom; /* an append failed */
};

void vblk_buf_printf(struct vblk_buf *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
void vblk_buf_append(struct vblk_buf *b, const char *s, size_t n);
void vblk_buf_free(struct vblk_buf *b);
/* Hand over the text (malloc'ed, NUL-terminated; NULL after oom) and empty the buffer. */
char *vblk_buf_take(struct vblk_buf *b, size_t *len);

#endif
