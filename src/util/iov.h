/* iov.h - iovec helpers shared by every stage (guest buffers are iovecs from the ring walker to
 * the block drivers).  Threads: any; no state. */
#ifndef VBLK_IOV_H
#define VBLK_IOV_H

#include <stdint.h>
#include <sys/uio.h>

/* Copy up to len bytes from the start of iov[0..cnt) into buf; returns bytes copied. */
uint64_t vblk_iov_to_buf(const struct iovec *iov, unsigned cnt, void *buf, uint64_t len);
/* Copy up to len bytes from buf into iov[0..cnt); returns bytes copied. */
uint64_t vblk_buf_to_iov(const struct iovec *iov, unsigned cnt, const void *buf, uint64_t len);
/* Zero-fill iov[0..cnt). */
void vblk_iov_zero(const struct iovec *iov, unsigned cnt);
/* Drop bytes from the front of an iovec list (in place: *iov and *cnt advance). */
void vblk_iov_skip_head(struct iovec **iov, unsigned *cnt, uint64_t bytes);
/* Drop bytes from the end of an iovec list (in place). */
void vblk_iov_drop_tail(struct iovec *iov, unsigned *cnt, uint64_t bytes);

#endif
