/* kv.h - "key=value,key=value" lists as QEMU writes them (",," is a literal comma inside a value),
 * one splitter for vblkd's --export and vblkctl.
 *
 * Threads: any; no state.
 */
#ifndef VBLK_KV_H
#define VBLK_KV_H

/* Split the next pair off *p (advanced past it and its comma).  buf must hold strlen(*p) + 1
 * bytes; *key and *val point into it.  1: a pair; 0: the end of the list; -1: the pair has no
 * '=' (*key is what there was, for the message); -2: an empty key. */
int vblk_kv_next(const char **p, char *buf, char **key, char **val);

#endif
