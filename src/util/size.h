/* size.h - sizes on command lines: one parser for vblkd and vblk-bench. */
#ifndef VBLK_SIZE_H
#define VBLK_SIZE_H

#include <stdint.h>

/* Parse a decimal size with an optional k/m/g/t suffix (powers of 1024).  0 or -EINVAL. */
int vblk_parse_size(const char *s, uint64_t *out);

#endif
