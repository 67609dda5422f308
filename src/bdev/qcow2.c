/* qcow2.c - the "qcow2" format driver: opening, validating and closing an image (the request path
 * is qcow2_io.c; the contract, threads and metadata ordering are in qcow2.h).
 *
 * Opens version 2 and 3 images with cluster sizes 512 B .. 2 MiB, refcount widths 1..64 bits,
 * extended L2 entries, zlib and zstd compression, backing files (raw or qcow2, chains up to
 * QCOW2_MAX_CHAIN deep, loops refused), external data files, internal snapshots (the active layer
 * is served; the snapshot table is preserved) and bitmaps (preserved; their autoclear bit is
 * cleared on a writable open, as the spec asks of a program that does not update them).
 * Refused, naming the feature: encryption, unknown incompatible features, other compression
 * types; writable use of a corrupt image or of a dirty one (lazy refcounts after a crash).
 * Lazy refcounts are never used: refcounts are always exact, the image is never left dirty.
 *
 * Threads: control thread only (blocking vblk_bdev_pread_sync/pwrite_sync on the child).  The
 * backing-chain loop check keeps the chain being opened in a static array: opens are never
 * concurrent.
 */
#include "bdev/qcow2.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>
#ifdef VBLK_HAVE_ZSTD
#include <zstd.h>
#endif

#include "util/log.h"

/* --- header parsing (pure: also the fuzzer's entry point) --- */

static uint32_t be32(const uint8_t *p)
{
    uint32_t v;

    memcpy(&v, p, 4);
    return __builtin_bswap32(v);
}

/* The image's own name for a feature bit, or NULL. */
static void feature_name(const uint8_t *tab, size_t tablen, unsigned type, unsigned bit, char *out,
                         size_t outlen)
{
    snprintf(out, outlen, "bit %u", bit);
    for (size_t i = 0; tab && i + sizeof(struct qcow2_feature_name) <= tablen;
         i += sizeof(struct qcow2_feature_name)) {
        const struct qcow2_feature_name *f = (const void *)(tab + i);

        if (f->type == type && f->bit == bit) {
            snprintf(out, outlen, "'%.*s' (bit %u)", (int)strnlen(f->name, sizeof(f->name)),
                     f->name, bit);
            return;
        }
    }
}

/* A table must start inside the image (or right at its end: qemu-img leaves an all-zero table
 * unwritten); what lies past the end reads as zeroes. */
static bool aligned_in_file(uint64_t off, uint64_t len, uint64_t cs, uint64_t file_size)
{
    return (off & (cs - 1)) == 0 && off <= file_size && len <= (1ull << 56) - off;
}

int qcow2_parse_header(const uint8_t *buf, size_t len, uint64_t file_size, struct qcow2_info *in,
                       char *err, size_t errlen)
{
    const uint8_t *ftab = NULL;
    size_t ftablen = 0, hlen, ext_end, p;
    uint64_t cs, l2_entries, need_l1, unknown;
    bool crypto_ext = false;
    char name[80];

    memset(in, 0, sizeof(*in));
    if (len < 72 || be32(buf) != QCOW2_MAGIC) {
        snprintf(err, errlen, "not a qcow2 image (bad magic)");
        return -EINVAL;
    }
    in->version = be32(buf + 4);
    if (in->version != 2 && in->version != 3) {
        snprintf(err, errlen, "unsupported qcow2 version %" PRIu32, in->version);
        return -ENOTSUP;
    }
    in->cluster_bits = be32(buf + 20);
    if (in->cluster_bits < 9 || in->cluster_bits > 21) {
        snprintf(err, errlen, "cluster size 2^%u is out of range (512 B .. 2 MiB)",
                 in->cluster_bits);
        return -EINVAL;
    }
    cs = 1ull << in->cluster_bits;
    in->size = q2_be64(buf + 24);
    in->l1_size = be32(buf + 36);
    in->l1_offset = q2_be64(buf + 40);
    in->reft_offset = q2_be64(buf + 48);
    in->reft_clusters = be32(buf + 56);
    in->nb_snapshots = be32(buf + 60);
    in->snapshots_offset = q2_be64(buf + 64);
    if (in->version == 2) {
        in->refcount_order = 4;
        in->header_length = 72;
    } else {
        if (len < 104) {
            snprintf(err, errlen, "truncated version 3 header");
            return -EINVAL;
        }
        in->incompat = q2_be64(buf + 72);
        in->compat = q2_be64(buf + 80);
        in->autoclear = q2_be64(buf + 88);
        in->refcount_order = be32(buf + 96);
        in->header_length = be32(buf + 100);
        in->autoclear_off = 88;
        if (in->header_length < 104 || in->header_length % 8 || in->header_length > cs ||
            in->header_length > len) {
            snprintf(err, errlen, "header length %" PRIu32 " is invalid", in->header_length);
            return -EINVAL;
        }
        if (in->refcount_order > 6) {
            snprintf(err, errlen, "refcount order %u is invalid (0..6)", in->refcount_order);
            return -EINVAL;
        }
        if (in->header_length > 104)
            in->compression = buf[104];
    }
    hlen = in->header_length;

    /* header extensions: from the header's end to the end of the first cluster */
    in->backing[0] = 0;
    ext_end = len < cs ? len : cs;
    for (p = hlen; p + 8 <= ext_end;) {
        uint32_t type = be32(buf + p), elen = be32(buf + p + 4);
        size_t dlen = ((size_t)elen + 7) & ~(size_t)7;

        if (type == QCOW2_EXT_END)
            break;
        p += 8;
        if (elen > ext_end - p || dlen > ext_end - p + 7) {
            snprintf(err, errlen,
                     "header extension 0x%08" PRIx32 " (%" PRIu32
                     " bytes) runs past the first cluster",
                     type, elen);
            return -EINVAL;
        }
        switch (type) {
        case QCOW2_EXT_BACKING_FMT:
            if (elen >= sizeof(in->backing_fmt)) {
                snprintf(err, errlen, "backing format name is too long (%" PRIu32 " bytes)", elen);
                return -EINVAL;
            }
            memcpy(in->backing_fmt, buf + p, elen);
            in->backing_fmt[elen] = 0;
            break;
        case QCOW2_EXT_FEATURES:
            ftab = buf + p;
            ftablen = elen;
            break;
        case QCOW2_EXT_BITMAPS:
            if (elen < sizeof(struct qcow2_bitmaps_ext)) {
                snprintf(err, errlen, "bitmaps extension is too short");
                return -EINVAL;
            }
            in->has_bitmaps = true;
            break;
        case QCOW2_EXT_CRYPTO:
            crypto_ext = true;
            break;
        case QCOW2_EXT_DATA_FILE:
            if (elen > QCOW2_MAX_BACKING_NAME || elen == 0) {
                snprintf(err, errlen, "external data file name length %" PRIu32 " is invalid",
                         elen);
                return -EINVAL;
            }
            memcpy(in->data_file, buf + p, elen);
            in->data_file[elen] = 0;
            if (strlen(in->data_file) != elen) {
                snprintf(err, errlen, "external data file name contains a NUL byte");
                return -EINVAL;
            }
            break;
        default: /* unknown: ignored (an incompatible use has an incompatible bit) */
            break;
        }
        if (dlen > ext_end - p)
            break;
        p += dlen;
    }

    /* features */
    if (be32(buf + 32) != 0 || crypto_ext) {
        snprintf(err, errlen, "encrypted images (crypt_method %" PRIu32 ") are not supported",
                 be32(buf + 32));
        return -ENOTSUP;
    }
    unknown = in->incompat & ~QCOW2_INCOMPAT_KNOWN;
    if (unknown) {
        unsigned bit = (unsigned)__builtin_ctzll(unknown);

        feature_name(ftab, ftablen, 0, bit, name, sizeof(name));
        snprintf(err, errlen, "unsupported incompatible feature %s", name);
        return -ENOTSUP;
    }
    if (in->incompat & QCOW2_INCOMPAT_COMPRESS) {
        if (in->header_length <= 104 || in->compression == QCOW2_COMPRESS_ZLIB) {
            snprintf(err, errlen, "compression type bit set without a compression type");
            return -EINVAL;
        }
    } else if (in->compression != QCOW2_COMPRESS_ZLIB) {
        snprintf(err, errlen, "compression type %u without the compression type bit",
                 in->compression);
        return -EINVAL;
    }
    if (in->compression != QCOW2_COMPRESS_ZLIB && in->compression != QCOW2_COMPRESS_ZSTD) {
        snprintf(err, errlen, "unsupported compression type %u (zlib and zstd are)",
                 in->compression);
        return -ENOTSUP;
    }
    if ((in->incompat & QCOW2_INCOMPAT_EXTL2) && in->cluster_bits < 14) {
        snprintf(err, errlen, "extended L2 entries need clusters of 16 KiB or more");
        return -EINVAL;
    }
    if ((in->incompat & QCOW2_INCOMPAT_DATA_FILE) && !in->data_file[0]) {
        snprintf(err, errlen, "the external data file's name is missing from the image");
        return -EINVAL;
    }
    if (!(in->incompat & QCOW2_INCOMPAT_DATA_FILE) && in->data_file[0])
        in->data_file[0] = 0; /* a name without the bit: no external data file */

    /* backing file name: in the first cluster */
    {
        uint64_t boff = q2_be64(buf + 8);
        uint32_t bsize = be32(buf + 16);

        if (boff) {
            if (bsize == 0 || bsize > QCOW2_MAX_BACKING_NAME) {
                snprintf(err, errlen,
                         "backing file name length %" PRIu32 " is invalid "
                         "(1..%d)",
                         bsize, QCOW2_MAX_BACKING_NAME);
                return -EINVAL;
            }
            if (boff < hlen || boff >= ext_end || bsize > ext_end - boff) {
                snprintf(err, errlen, "backing file name is outside the first cluster");
                return -EINVAL;
            }
            memcpy(in->backing, buf + boff, bsize);
            in->backing[bsize] = 0;
            if (strlen(in->backing) != bsize) {
                snprintf(err, errlen, "backing file name contains a NUL byte");
                return -EINVAL;
            }
            if ((in->autoclear & QCOW2_AUTOCLEAR_DATA_RAW) &&
                (in->incompat & QCOW2_INCOMPAT_DATA_FILE)) {
                snprintf(err, errlen, "a raw external data file cannot have a backing file");
                return -EINVAL;
            }
        }
    }

    /* tables */
    l2_entries = cs / ((in->incompat & QCOW2_INCOMPAT_EXTL2) ? 16 : 8);
    if (in->size > (1ull << 61)) {
        snprintf(err, errlen, "virtual size %" PRIu64 " is too large", in->size);
        return -EINVAL;
    }
    need_l1 = (in->size + cs * l2_entries - 1) / (cs * l2_entries);
    if ((uint64_t)in->l1_size * 8 > QCOW2_MAX_L1_BYTES) {
        snprintf(err, errlen, "L1 table of %" PRIu32 " entries is too large (limit %u MiB)",
                 in->l1_size, QCOW2_MAX_L1_BYTES >> 20);
        return -EFBIG;
    }
    if (in->l1_size < need_l1) {
        snprintf(err, errlen, "L1 table (%" PRIu32 " entries) is too small for the virtual size",
                 in->l1_size);
        return -EINVAL;
    }
    if (in->l1_size && !aligned_in_file(in->l1_offset, (uint64_t)in->l1_size * 8, cs, file_size)) {
        snprintf(err, errlen, "L1 table offset 0x%" PRIx64 " is unaligned or outside the image",
                 in->l1_offset);
        return -EINVAL;
    }
    if (in->reft_clusters == 0 || (uint64_t)in->reft_clusters * cs > QCOW2_MAX_REFT_BYTES) {
        snprintf(err, errlen, "refcount table of %" PRIu32 " clusters is invalid (limit %u MiB)",
                 in->reft_clusters, QCOW2_MAX_REFT_BYTES >> 20);
        return -EINVAL;
    }
    if (!aligned_in_file(in->reft_offset, (uint64_t)in->reft_clusters * cs, cs, file_size)) {
        snprintf(err, errlen,
                 "refcount table offset 0x%" PRIx64 " is unaligned or outside the image",
                 in->reft_offset);
        return -EINVAL;
    }
    if (in->reft_offset == 0 || (in->l1_size && in->l1_offset == 0)) {
        snprintf(err, errlen, "a table overlaps the header");
        return -EINVAL;
    }
    if (in->nb_snapshots > QCOW2_MAX_SNAPSHOTS) {
        snprintf(err, errlen, "too many snapshots (%" PRIu32 ")", in->nb_snapshots);
        return -EINVAL;
    }
    if (in->nb_snapshots && !aligned_in_file(in->snapshots_offset, 40, cs, file_size)) {
        snprintf(err, errlen,
                 "snapshot table offset 0x%" PRIx64 " is unaligned or outside "
                 "the image",
                 in->snapshots_offset);
        return -EINVAL;
    }
    return 0;
}

/* --- metadata cluster set --- */

static int range_cmp(const void *a, const void *b)
{
    const struct q2_range *x = a, *y = b;

    return x->start < y->start ? -1 : x->start > y->start;
}

int qcow2_meta_add(struct qcow2 *s, uint64_t start, uint64_t n)
{
    size_t lo = 0, hi = s->nmeta;

    if (s->nmeta == s->meta_cap) {
        size_t cap = s->meta_cap ? s->meta_cap * 2 : 64;
        struct q2_range *m = realloc(s->meta, cap * sizeof(*m));

        if (!m)
            return -ENOMEM;
        s->meta = m;
        s->meta_cap = cap;
    }
    while (lo < hi) { /* keep sorted by start */
        size_t mid = (lo + hi) / 2;

        if (s->meta[mid].start < start)
            lo = mid + 1;
        else
            hi = mid;
    }
    memmove(&s->meta[lo + 1], &s->meta[lo], (s->nmeta - lo) * sizeof(*s->meta));
    s->meta[lo] = (struct q2_range){start, start + n};
    s->nmeta++;
    return 0;
}

void qcow2_meta_del(struct qcow2 *s, uint64_t cluster)
{
    for (size_t i = 0; i < s->nmeta; i++) {
        if (s->meta[i].start == cluster && s->meta[i].end == cluster + 1) {
            memmove(&s->meta[i], &s->meta[i + 1], (s->nmeta - i - 1) * sizeof(*s->meta));
            s->nmeta--;
            return;
        }
    }
}

/* After bulk adds at open: sort and merge overlapping ranges. */
void qcow2_meta_sort(struct qcow2 *s)
{
    size_t o = 0;

    if (!s->nmeta)
        return;
    qsort(s->meta, s->nmeta, sizeof(*s->meta), range_cmp);
    for (size_t i = 1; i < s->nmeta; i++) {
        if (s->meta[i].start <= s->meta[o].end) {
            if (s->meta[i].end > s->meta[o].end)
                s->meta[o].end = s->meta[i].end;
        } else {
            s->meta[++o] = s->meta[i];
        }
    }
    s->nmeta = o + 1;
}

bool qcow2_meta_overlaps(const struct qcow2 *s, uint64_t start, uint64_t n)
{
    size_t lo = 0, hi = s->nmeta;

    while (lo < hi) { /* first range starting at or after start + n */
        size_t mid = (lo + hi) / 2;

        if (s->meta[mid].start < start + n)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo > 0 && s->meta[lo - 1].end > start;
}

/* --- open --- */

static struct {
    dev_t dev;
    ino_t ino;
} chain[QCOW2_MAX_CHAIN];
static unsigned chain_len;

static bool in_chain(const struct stat *st)
{
    for (unsigned i = 0; i < chain_len; i++)
        if (chain[i].dev == st->st_dev && chain[i].ino == st->st_ino)
            return true;
    return false;
}

void *qcow2_alloc_aligned(size_t len)
{
    void *p = NULL;

    if (posix_memalign(&p, 4096, len ? (len + 4095) & ~(size_t)4095 : 4096))
        return NULL;
    memset(p, 0, len ? (len + 4095) & ~(size_t)4095 : 4096);
    return p;
}

/* Read [off, off+len) of the image into a new aligned buffer (len rounded up to the chunk). */
static int read_table(struct qcow2 *s, uint64_t off, size_t len, uint8_t **out)
{
    size_t alen = (len + s->chunk - 1) / s->chunk * s->chunk;
    uint8_t *buf = qcow2_alloc_aligned(alen);
    ssize_t n;

    if (!buf)
        return -ENOMEM;
    n = vblk_bdev_pread_sync(s->file, buf, alen, off);
    if (n < 0) {
        free(buf);
        return (int)n;
    }
    *out = buf;
    return 0;
}

/* path of a file named by an image, relative to the image's directory */
static char *resolve(const char *image, const char *name)
{
    const char *slash = strrchr(image, '/');
    char *out;

    if (name[0] == '/' || !slash)
        return strdup(name);
    if (asprintf(&out, "%.*s/%s", (int)(slash - image), image, name) < 0)
        return NULL;
    return out;
}

static int probe_qcow2(const char *path, bool *is_qcow2)
{
    uint8_t magic[4];
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    ssize_t n;

    if (fd < 0)
        return -errno;
    n = pread(fd, magic, 4, 0);
    close(fd);
    *is_qcow2 = n == 4 && be32(magic) == QCOW2_MAGIC;
    return 0;
}

static int open_backing(struct qcow2 *s, const struct vblk_bdev_conf *c, char *err, size_t errlen)
{
    struct vblk_bdev_conf bc = *c;
    char sub[512];
    struct stat st;
    bool q2 = false;
    int r;

    if (strchr(s->in.backing, ':') && !strchr(s->in.backing, '/')) {
        snprintf(err, errlen, "'%s': backing file '%s': protocols are not supported", c->file,
                 s->in.backing);
        return -ENOTSUP;
    }
    s->backing_path = resolve(c->file, s->in.backing);
    if (!s->backing_path)
        return -ENOMEM;
    if (stat(s->backing_path, &st) < 0) {
        r = -errno;
        snprintf(err, errlen, "'%s': backing file '%s': %s", c->file, s->backing_path,
                 strerror(-r));
        return r;
    }
    if (in_chain(&st)) {
        snprintf(err, errlen, "'%s': backing chain loops back to '%s'", c->file, s->backing_path);
        return -ELOOP;
    }
    if (chain_len >= QCOW2_MAX_CHAIN) {
        snprintf(err, errlen, "'%s': backing chain is deeper than %d images", c->file,
                 QCOW2_MAX_CHAIN);
        return -ELOOP;
    }
    if (!strcmp(s->in.backing_fmt, "qcow2")) {
        q2 = true;
    } else if (!strcmp(s->in.backing_fmt, "raw")) {
        q2 = false;
    } else if (s->in.backing_fmt[0]) {
        snprintf(err, errlen, "'%s': backing format '%s' is not supported (raw, qcow2)", c->file,
                 s->in.backing_fmt);
        return -ENOTSUP;
    } else if ((r = probe_qcow2(s->backing_path, &q2)) < 0) {
        snprintf(err, errlen, "'%s': backing file '%s': %s", c->file, s->backing_path,
                 strerror(-r));
        return r;
    }
    bc.file = s->backing_path;
    bc.null = false;
    bc.readonly = true;
    bc.format = q2 ? VBLK_FORMAT_QCOW2 : VBLK_FORMAT_RAW;
    bc.discard_unmap = false;
    bc.iothreads = 1;
    r = vblk_bdev_open_stack(&s->backing, &bc, sub, sizeof(sub));
    if (r < 0) { /* name the top image and the deepest failure, not every level between */
        const char *deepest = sub, *p;

        while ((p = strstr(deepest, "backing chain: ")))
            deepest = p + strlen("backing chain: ");
        snprintf(err, errlen, "'%s': backing chain: %s", c->file, deepest);
        return r;
    }
    s->backing_size = s->backing->size;
    return 0;
}

static int open_data_file(struct qcow2 *s, const struct vblk_bdev_conf *c, char *err, size_t errlen)
{
    struct vblk_bdev_conf dc = *c;
    char sub[512];
    int r;

    s->data_path = resolve(c->file, s->in.data_file);
    if (!s->data_path)
        return -ENOMEM;
    dc.file = s->data_path;
    dc.null = false;
    dc.format = VBLK_FORMAT_RAW;
    dc.iothreads = 1;
    r = vblk_bdev_open_stack(&s->data, &dc, sub, sizeof(sub));
    if (r < 0) {
        snprintf(err, errlen, "'%s': external data file: %s", c->file, sub);
        return r;
    }
    s->data_owned = true;
    s->data_raw = s->in.autoclear & QCOW2_AUTOCLEAR_DATA_RAW;
    return 0;
}

/* Writable open: clear autoclear bits we do not maintain (bitmaps, unknown ones). */
static int update_autoclear(struct qcow2 *s, const struct vblk_bdev_conf *c, char *err,
                            size_t errlen)
{
    uint64_t keep = s->in.autoclear & (s->data_raw ? QCOW2_AUTOCLEAR_DATA_RAW : 0);
    int r;

    if (s->in.version < 3 || keep == s->in.autoclear)
        return 0;
    q2_put_be64(s->hdr + 88, keep);
    r = vblk_bdev_pwrite_sync(s->file, s->hdr, s->chunk, 0);
    if (r == 0)
        r = s->file->ops->flush_sync(s->file);
    if (r < 0) {
        snprintf(err, errlen, "'%s': cannot update the header: %s", c->file, strerror(-r));
        return r;
    }
    if (s->in.has_bitmaps)
        log_warn(s->b->name,
                 "'%s': persistent bitmaps are not updated by vblkd and are now "
                 "marked inconsistent",
                 c->file);
    s->in.autoclear = keep;
    return 0;
}

static void qcow2_free_state(struct qcow2 *s)
{
    if (!s)
        return;
    qcow2_free_reqs(s);
    qcow2_cache_destroy(&s->l2c);
    qcow2_cache_destroy(&s->rbc);
    if (s->backing)
        vblk_bdev_close_stack(s->backing);
    if (s->data_owned && s->data)
        vblk_bdev_close_stack(s->data);
    if (s->zstream) {
        inflateEnd(s->zstream);
        free(s->zstream);
    }
#ifdef VBLK_HAVE_ZSTD
    if (s->zstd)
        ZSTD_freeDCtx(s->zstd);
#endif
    free(s->l1);
    free(s->l1_dirty);
    free(s->reft);
    free(s->hdr);
    free(s->meta);
    free(s->frees);
    free(s->zero_buf);
    free(s->path);
    free(s->backing_path);
    free(s->data_path);
    free(s);
}

static unsigned cache_tables(uint64_t bytes, uint64_t cs, uint64_t dflt)
{
    uint64_t n = (bytes ? bytes : dflt) / cs;

    if (n < 4)
        n = 4;
    if (n > 65536)
        n = 65536;
    return (unsigned)n;
}

static int qcow2_open(struct vblk_bdev *b, const struct vblk_bdev_conf *c, char *err, size_t errlen)
{
    struct vblk_bdev *f = b->child;
    struct qcow2 *s;
    uint8_t *first = NULL;
    struct stat st;
    uint64_t l2_cover, dflt;
    ssize_t n;
    int r;

    memset(&st, 0, sizeof(st)); /* no file (nbd, rbd): nothing for the loop check to find */
    if (f->fd < 0 && !f->ops->pwrite_sync && !c->readonly) {
        /* metadata writes go through pwrite_sync; a driver without one (rbd) serves read-only */
        snprintf(err, errlen,
                 "format=qcow2 on driver=%s is read-only: add readonly=on (or import the "
                 "image as raw)",
                 f->ops->name);
        return -ENOTSUP;
    }
    if (f->fd >= 0 && fstat(f->fd, &st) < 0) {
        r = -errno;
        snprintf(err, errlen, "cannot stat '%s': %s", c->file, strerror(-r));
        return r;
    }
    if (f->fd >= 0 && in_chain(&st)) {
        snprintf(err, errlen, "'%s': backing chain loops", c->file);
        return -ELOOP;
    }
    if (chain_len >= QCOW2_MAX_CHAIN) {
        snprintf(err, errlen, "'%s': backing chain is deeper than %d images", c->file,
                 QCOW2_MAX_CHAIN);
        return -ELOOP;
    }
    s = calloc(1, sizeof(*s));
    if (!s) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    chain[chain_len].dev = st.st_dev;
    chain[chain_len].ino = st.st_ino;
    chain_len++;
    s->b = b;
    s->file = f;
    s->data = f;
    s->meta_tail = &s->meta_head;
    s->ready_tail = &s->ready_head;
    s->path = strdup(c->file);
    s->chunk = f->align > 512 ? f->align : 512;
    s->file_end = f->size;
    s->writable = !c->readonly;
    r = -ENOMEM;
    if (!s->path)
        goto err_oom;

    /* the first cluster: header, extensions, backing file name */
    first = qcow2_alloc_aligned(2u << 20);
    s->hdr = qcow2_alloc_aligned(s->chunk);
    if (!first || !s->hdr)
        goto err_oom;
    n = vblk_bdev_pread_sync(f, first, 4096 > s->chunk ? 4096 : s->chunk, 0);
    if (n < 0) {
        r = (int)n;
        snprintf(err, errlen, "cannot read '%s': %s", c->file, strerror(-r));
        goto err;
    }
    if (n >= 24 && be32(first) == QCOW2_MAGIC && be32(first + 20) >= 9 && be32(first + 20) <= 21) {
        size_t want = (size_t)1 << be32(first + 20);

        want = (want + s->chunk - 1) / s->chunk * s->chunk;
        if (want > (size_t)n && (size_t)n == (4096 > s->chunk ? 4096 : s->chunk))
            n = vblk_bdev_pread_sync(f, first, want, 0);
        if (n < 0) {
            r = (int)n;
            snprintf(err, errlen, "cannot read '%s': %s", c->file, strerror(-r));
            goto err;
        }
    }
    memcpy(s->hdr, first, s->chunk);
    r = qcow2_parse_header(first, (size_t)n, s->file_end, &s->in, err, errlen);
    if (r < 0) {
        char why[400];

        snprintf(why, sizeof(why), "%s", err);
        snprintf(err, errlen, "'%s': %s", c->file, why);
        goto err;
    }
    free(first);
    first = NULL;

    s->cluster_bits = s->in.cluster_bits;
    s->cs = 1ull << s->cluster_bits;
    s->ext_l2 = s->in.incompat & QCOW2_INCOMPAT_EXTL2;
    s->l2_esz = s->ext_l2 ? 16 : 8;
    s->l2_bits = s->cluster_bits - (s->ext_l2 ? 4 : 3);
    s->sc_bits = s->ext_l2 ? s->cluster_bits - 5 : s->cluster_bits;
    s->rb_bits = s->cluster_bits + 3 - s->in.refcount_order;
    if (s->cs < s->chunk) {
        r = -EINVAL;
        snprintf(err, errlen,
                 "'%s': %" PRIu64 "-byte clusters are smaller than the %u-byte "
                 "blocks O_DIRECT needs here: use cache=writeback",
                 c->file, s->cs, s->chunk);
        goto err;
    }
    if (s->writable && (s->in.incompat & QCOW2_INCOMPAT_CORRUPT)) {
        r = -EUCLEAN;
        snprintf(err, errlen,
                 "'%s' is marked corrupt: run 'qemu-img check -r all %s' "
                 "(or open it read-only)",
                 c->file, c->file);
        goto err;
    }
    if (s->writable && (s->in.incompat & QCOW2_INCOMPAT_DIRTY)) {
        r = -EUCLEAN;
        snprintf(err, errlen,
                 "'%s' is dirty (lazy refcounts, not closed cleanly): run "
                 "'qemu-img check -r all %s' (or open it read-only)",
                 c->file, c->file);
        goto err;
    }
    if ((s->in.incompat & QCOW2_INCOMPAT_DATA_FILE) && s->in.nb_snapshots) {
        r = -EINVAL;
        snprintf(err, errlen, "'%s': internal snapshots with an external data file", c->file);
        goto err;
    }
#ifndef VBLK_HAVE_ZSTD
    if (s->in.compression == QCOW2_COMPRESS_ZSTD) {
        r = -ENOTSUP;
        snprintf(err, errlen, "'%s': compression type zstd needs vblkd built with libzstd",
                 c->file);
        goto err;
    }
#endif
    b->size = s->in.size - s->in.size % b->lbs;
    if (b->size == 0) {
        r = -EINVAL;
        snprintf(err, errlen,
                 "'%s': virtual size %" PRIu64 " is smaller than one %u-byte "
                 "block",
                 c->file, s->in.size, b->lbs);
        goto err;
    }

    /* L1 and refcount tables */
    s->l1_bytes = (size_t)s->in.l1_size * 8;
    r = read_table(s, s->in.l1_offset, s->l1_bytes, &s->l1);
    if (r < 0) {
        snprintf(err, errlen, "'%s': cannot read the L1 table: %s", c->file, strerror(-r));
        goto err;
    }
    s->l1_dirty = calloc(s->l1_bytes / s->chunk + 1, 1);
    s->reft_entries = (uint64_t)s->in.reft_clusters * s->cs / 8;
    r = read_table(s, s->in.reft_offset, (size_t)s->in.reft_clusters * s->cs, &s->reft);
    if (r < 0 || !s->l1_dirty) {
        r = r < 0 ? r : -ENOMEM;
        snprintf(err, errlen, "'%s': cannot read the refcount table: %s", c->file, strerror(-r));
        goto err;
    }

    /* where metadata lives: data must never be read from or written to it */
    r = qcow2_meta_add(s, 0, 1);
    if (!r && s->in.l1_size)
        r = qcow2_meta_add(s, s->in.l1_offset >> s->cluster_bits,
                           (s->l1_bytes + s->cs - 1) >> s->cluster_bits);
    if (!r)
        r = qcow2_meta_add(s, s->in.reft_offset >> s->cluster_bits, s->in.reft_clusters);
    for (uint64_t i = 0; !r && i < s->reft_entries; i++) {
        uint64_t off = q2_be64(s->reft + i * 8) & QCOW2_REFT_OFFSET_MASK;

        if (!off)
            continue;
        if ((off & (s->cs - 1)) || off >= s->file_end) {
            if (s->writable) {
                r = -EINVAL;
                snprintf(err, errlen,
                         "'%s': refcount block %" PRIu64 " at 0x%" PRIx64
                         " is unaligned or outside the image",
                         c->file, i, off);
                goto err;
            }
            continue;
        }
        r = qcow2_meta_add(s, off >> s->cluster_bits, 1);
    }
    for (uint64_t i = 0; !r && i < s->in.l1_size; i++) {
        uint64_t off = q2_be64(s->l1 + i * 8) & QCOW2_OFFSET_MASK;

        if (off && !(off & (s->cs - 1)) && off < s->file_end)
            r = qcow2_meta_add(s, off >> s->cluster_bits, 1);
    }
    if (!r && s->in.nb_snapshots)
        r = qcow2_meta_add(s, s->in.snapshots_offset >> s->cluster_bits, 1);
    if (r < 0)
        goto err_oom;
    qcow2_meta_sort(s);

    if ((s->in.backing[0] || s->in.data_file[0]) && f->fd < 0) {
        snprintf(err, errlen,
                 "the qcow2 image on %s names a %s ('%s'): not supported on a network driver",
                 c->uri && c->uri[0] ? c->uri : c->file,
                 s->in.backing[0] ? "backing file" : "data file",
                 s->in.backing[0] ? s->in.backing : s->in.data_file);
        r = -ENOTSUP;
        goto err;
    }
    if (s->in.backing[0] && (r = open_backing(s, c, err, errlen)) < 0)
        goto err;
    if (s->in.data_file[0] && (r = open_data_file(s, c, err, errlen)) < 0)
        goto err;

    /* caches: L2 enough to map the whole disk up to 32 MiB (as QEMU), refcount 256 KiB */
    l2_cover = s->cs << s->l2_bits;
    dflt = (b->size + l2_cover - 1) / l2_cover * s->cs;
    if (dflt > (32u << 20))
        dflt = 32u << 20;
    r = qcow2_cache_init(&s->l2c, "L2 table", s, cache_tables(c->l2_cache_size, s->cs, dflt));
    if (!r)
        r = qcow2_cache_init(&s->rbc, "refcount block", s,
                             cache_tables(c->refcount_cache_size, s->cs, 256u << 10));
    s->zero_buf = qcow2_alloc_aligned(s->cs);
    s->zstream = calloc(1, sizeof(z_stream));
    if (r < 0 || !s->zero_buf || !s->zstream)
        goto err_oom;
    if (inflateInit2((z_stream *)s->zstream, -12) != Z_OK) {
        free(s->zstream);
        s->zstream = NULL;
        goto err_oom;
    }
#ifdef VBLK_HAVE_ZSTD
    if (s->in.compression == QCOW2_COMPRESS_ZSTD && !(s->zstd = ZSTD_createDCtx()))
        goto err_oom;
#endif
    if (s->writable && (r = update_autoclear(s, c, err, errlen)) < 0)
        goto err;

    b->priv = s;
    b->align = s->data->align > f->align ? s->data->align : f->align;
    b->readonly = c->readonly;
    b->discard = c->discard_unmap && !c->readonly;
    b->write_zeroes = !c->readonly;
    b->zeroes_unmap = c->discard_unmap;
    b->phys_exp = 0;
    for (unsigned v = b->lbs; v < s->cs && v < 4096 && b->phys_exp < 3; v <<= 1)
        b->phys_exp++; /* advertise the cluster (up to 4k) as the physical block */
    chain_len--;
    return 0;

err_oom:
    r = -ENOMEM;
    snprintf(err, errlen, "'%s': out of memory", c->file);
err:
    free(first);
    qcow2_free_state(s);
    chain_len--;
    return r;
}

static void qcow2_close(struct vblk_bdev *b)
{
    struct qcow2 *s = b->priv;
    int r;

    if (!s)
        return;
    if (s->writable && (r = qcow2_sync_blocking(s)) < 0)
        log_err(b->name, "'%s': cannot write back metadata at close: %s", s->path, strerror(-r));
    qcow2_free_state(s);
    b->priv = NULL;
}

static int qcow2_flush_sync(struct vblk_bdev *b)
{
    struct qcow2 *s = b->priv;
    int r;

    if (!s->writable)
        return 0;
    r = qcow2_sync_blocking(s);
    if (r < 0)
        log_err(b->name, "'%s': cannot write back metadata: %s", s->path, strerror(-r));
    if (!r && s->data_owned)
        r = vblk_bdev_flush_sync(s->data);
    return r;
}

const struct vblk_bdev_ops vblk_bdev_qcow2 = {
    .name = "qcow2",
    .single_thread = true,
    .open = qcow2_open,
    .close = qcow2_close,
    .flush_sync = qcow2_flush_sync,
    .submit = qcow2_io_submit,
};
