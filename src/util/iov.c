/* iov.c - see iov.h. */
#include "util/iov.h"

#include <string.h>

uint64_t vblk_iov_to_buf(const struct iovec *iov, unsigned cnt, void *buf, uint64_t len)
{
    uint64_t done = 0;

    for (unsigned i = 0; i < cnt && done < len; i++) {
        uint64_t l = iov[i].iov_len < len - done ? iov[i].iov_len : len - done;

        memcpy((char *)buf + done, iov[i].iov_base, l);
        done += l;
    }
    return done;
}

uint64_t vblk_buf_to_iov(const struct iovec *iov, unsigned cnt, const void *buf, uint64_t len)
{
    uint64_t done = 0;

    for (unsigned i = 0; i < cnt && done < len; i++) {
        uint64_t l = iov[i].iov_len < len - done ? iov[i].iov_len : len - done;

        memcpy(iov[i].iov_base, (const char *)buf + done, l);
        done += l;
    }
    return done;
}

void vblk_iov_zero(const struct iovec *iov, unsigned cnt)
{
    for (unsigned i = 0; i < cnt; i++)
        memset(iov[i].iov_base, 0, iov[i].iov_len);
}

void vblk_iov_skip_head(struct iovec **iov, unsigned *cnt, uint64_t bytes)
{
    while (*cnt && bytes) {
        if ((*iov)->iov_len > bytes) {
            (*iov)->iov_base = (char *)(*iov)->iov_base + bytes;
            (*iov)->iov_len -= bytes;
            return;
        }
        bytes -= (*iov)->iov_len;
        (*iov)++;
        (*cnt)--;
    }
}

void vblk_iov_drop_tail(struct iovec *iov, unsigned *cnt, uint64_t bytes)
{
    while (*cnt && bytes) {
        struct iovec *last = &iov[*cnt - 1];

        if (last->iov_len > bytes) {
            last->iov_len -= bytes;
            return;
        }
        bytes -= last->iov_len;
        (*cnt)--;
    }
}
