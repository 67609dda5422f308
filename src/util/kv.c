/* kv.c - see kv.h. */
#include "util/kv.h"

int vblk_kv_next(const char **p, char *buf, char **key, char **val)
{
    const char *s = *p;
    char *w = buf;

    if (!*s)
        return 0;
    /* key: up to '=' or ','; value: up to a single ',' */
    *key = w;
    while (*s && *s != '=' && *s != ',')
        *w++ = *s++;
    *w++ = '\0';
    if (*s != '=') {
        *p = s;
        return -1;
    }
    s++;
    *val = w;
    while (*s) {
        if (*s == ',') {
            if (s[1] != ',')
                break;
            s++;
        }
        *w++ = *s++;
    }
    *w = '\0';
    if (*s == ',')
        s++;
    *p = s;
    return **key ? 1 : -2;
}
