/* size.c - see size.h. */
#include "util/size.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

int vblk_parse_size(const char *s, uint64_t *out)
{
    char *end;
    unsigned long long v;
    unsigned shift = 0;

    if (!*s || *s == '-')
        return -EINVAL;
    errno = 0;
    v = strtoull(s, &end, 10);
    if (errno || end == s)
        return -EINVAL;
    if (*end && strchr("kKmMgGtT", *end)) {
        shift = 10u * (unsigned)(strchr("kmgt", *end | 0x20) - "kmgt" + 1); /* k=10 ... t=40 */
        end++;
    }
    if (*end || (shift && v > (UINT64_MAX >> shift)))
        return -EINVAL;
    *out = (uint64_t)v << shift;
    return 0;
}
