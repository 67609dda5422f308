/* qcow2.h - private to the qcow2 format driver (qcow2.c: open/validate/close, qcow2_io.c: the
 * asynchronous request path).  Not for use outside src/bdev/ (the fuzzer and the unit tests
 * include it to reach the header parser).
 *
 * On-disk format: QEMU docs/interop/qcow2.txt (versions 2 and 3).  All on-disk numbers are
 * big-endian.
 *
 * Threads: open, close and flush_sync on the control thread (blocking pread/pwrite on the child's
 * fd); everything else on the export's single I/O thread (ops->single_thread), never blocking:
 * metadata and data I/O go through the child driver with the engine passed to submit.
 *
 * Metadata consistency (what a crash may leave: leaked clusters, never a cluster referenced with
 * too low a refcount, never guest data made visible by metadata before the data was written):
 *  - L2 tables and refcount blocks are cached write-back; the L1 table and the refcount table are
 *    in memory, L1 written back by chunks, the refcount table written through.
 *  - refcount increments go into the refcount cache at once; a dirty refcount block may be written
 *    at any time.  Decrements are queued (s->frees) and applied only after the L2/L1 entries that
 *    stopped referencing the cluster are on disk, and after every data I/O that started before
 *    them finished (a grace period), so a freed cluster is never reused under an old I/O.
 *  - an L2 entry is changed only after the data it points to was written; dirty L2 tables are
 *    written only by a sync: refcount blocks, child flush, L2 tables, L1 chunks, child flush (so
 *    both the refcounts and the data are durable before the reference is), then queued frees.
 *  - metadata changes (allocation, L2 updates, discard, zeroing, sync) are serialised by one
 *    token (s->meta_busy, FIFO waiters); reads and in-place writes run without it.  A guest
 *    cluster being allocated is recorded (struct q2_alloc) and later writers of it wait.
 */
#ifndef VBLK_QCOW2_H
#define VBLK_QCOW2_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "bdev/bdev.h"

#define QCOW2_MAGIC 0x514649fbu /* "QFI\xfb" */

/* On-disk header, version 3 layout (version 2 ends after snapshots_offset: 72 bytes). */
struct qcow2_header {
    uint32_t magic;
    uint32_t version;
    uint64_t backing_file_offset;
    uint32_t backing_file_size;
    uint32_t cluster_bits;
    uint64_t size;
    uint32_t crypt_method;
    uint32_t l1_size;
    uint64_t l1_table_offset;
    uint64_t refcount_table_offset;
    uint32_t refcount_table_clusters;
    uint32_t nb_snapshots;
    uint64_t snapshots_offset;
    /* version 3 */
    uint64_t incompatible_features;
    uint64_t compatible_features;
    uint64_t autoclear_features;
    uint32_t refcount_order;
    uint32_t header_length;
    uint8_t compression_type; /* present when header_length > 104 */
    uint8_t padding[7];
} __attribute__((packed));
_Static_assert(sizeof(struct qcow2_header) == 112, "qcow2 header layout");
_Static_assert(offsetof(struct qcow2_header, incompatible_features) == 72, "v2 header is 72 bytes");
_Static_assert(offsetof(struct qcow2_header, compression_type) == 104, "v3 header is 104 bytes");

struct qcow2_ext_hdr {
    uint32_t type;
    uint32_t len;
} __attribute__((packed));
_Static_assert(sizeof(struct qcow2_ext_hdr) == 8, "qcow2 header extension layout");

struct qcow2_feature_name {
    uint8_t type; /* 0 incompatible, 1 compatible, 2 autoclear */
    uint8_t bit;
    char name[46];
} __attribute__((packed));
_Static_assert(sizeof(struct qcow2_feature_name) == 48, "qcow2 feature name table entry");

struct qcow2_bitmaps_ext {
    uint32_t nb_bitmaps;
    uint32_t reserved;
    uint64_t bitmap_directory_size;
    uint64_t bitmap_directory_offset;
} __attribute__((packed));
_Static_assert(sizeof(struct qcow2_bitmaps_ext) == 24, "qcow2 bitmaps extension layout");

#define QCOW2_EXT_END         0x00000000u
#define QCOW2_EXT_BACKING_FMT 0xe2792acau
#define QCOW2_EXT_FEATURES    0x6803f857u
#define QCOW2_EXT_BITMAPS     0x23852875u
#define QCOW2_EXT_CRYPTO      0x0537be77u
#define QCOW2_EXT_DATA_FILE   0x44415441u

#define QCOW2_INCOMPAT_DIRTY     (1ull << 0)
#define QCOW2_INCOMPAT_CORRUPT   (1ull << 1)
#define QCOW2_INCOMPAT_DATA_FILE (1ull << 2)
#define QCOW2_INCOMPAT_COMPRESS  (1ull << 3)
#define QCOW2_INCOMPAT_EXTL2     (1ull << 4)
#define QCOW2_INCOMPAT_KNOWN     0x1full
#define QCOW2_COMPAT_LAZY        (1ull << 0)
#define QCOW2_AUTOCLEAR_BITMAPS  (1ull << 0)
#define QCOW2_AUTOCLEAR_DATA_RAW (1ull << 1)

#define QCOW2_COMPRESS_ZLIB 0
#define QCOW2_COMPRESS_ZSTD 1

/* L1/L2 entries */
#define QCOW2_OFLAG_COPIED     (1ull << 63)
#define QCOW2_OFLAG_COMPRESSED (1ull << 62)
#define QCOW2_OFLAG_ZERO       1ull
#define QCOW2_OFFSET_MASK      0x00fffffffffffe00ull /* bits 9-55 */
#define QCOW2_L1_RESERVED      0x7f000000000001ffull
#define QCOW2_REFT_OFFSET_MASK 0xfffffffffffffe00ull

/* Limits (hostile images: bounded memory, clear errors) */
#define QCOW2_MAX_L1_BYTES     (32u << 20) /* as QEMU */
#define QCOW2_MAX_REFT_BYTES   (8u << 20)  /* as QEMU */
#define QCOW2_MAX_BACKING_NAME 1023
#define QCOW2_MAX_CHAIN        16 /* backing chain depth (top included) */
#define QCOW2_MAX_SNAPSHOTS    65536

/* What the header parser learnt (host byte order), also the fuzzer's view. */
struct qcow2_info {
    uint32_t version;
    unsigned cluster_bits;
    uint64_t size;
    uint32_t l1_size;
    uint64_t l1_offset;
    uint64_t reft_offset;
    uint32_t reft_clusters;
    uint32_t nb_snapshots;
    uint64_t snapshots_offset;
    uint64_t incompat, compat, autoclear;
    unsigned refcount_order;
    uint32_t header_length;
    unsigned compression; /* QCOW2_COMPRESS_* */
    char backing[QCOW2_MAX_BACKING_NAME + 1];
    char backing_fmt[16];
    char data_file[QCOW2_MAX_BACKING_NAME + 1];
    bool has_bitmaps;
    unsigned autoclear_off; /* byte offset of autoclear_features (v3) */
};

/* Parse and validate the first cluster of an image (buf holds min(cluster, file) bytes, len of
 * them; file_size is the image's size).  0, or -errno with err saying what is wrong, naming a
 * feature by the image's own feature name table when there is one. */
int qcow2_parse_header(const uint8_t *buf, size_t len, uint64_t file_size, struct qcow2_info *in,
                       char *err, size_t errlen);

/* --- runtime state (qcow2.c and qcow2_io.c) --- */

struct qcow2;
struct q2_req;

/* Something waiting: a request, a cache entry's loader, the sync.  err is 0 or -errno. */
struct q2_wait {
    struct q2_wait *next;
    void (*fn)(struct q2_wait *w, int err);
    int err;
};

struct q2_cache;

/* One cached table (an L2 table or a refcount block), one cluster. */
struct q2_centry {
    uint64_t off; /* host offset, 0: free slot */
    uint8_t *buf;
    uint64_t lru;
    bool valid, dirty, busy; /* busy: loading or being written */
    int hnext;               /* hash chain (index), -1 ends */
    struct q2_wait *waiters; /* waiting for the load */
    struct q2_cache *cache;
    struct qcow2 *s;
    void (*wb_cb)(struct q2_centry *e, int err); /* writeback finished */
    void *wb_arg;
    struct vblk_bdev_req req;
    struct iovec iov;
};

struct q2_cache {
    const char *what; /* "L2 table", "refcount block" */
    struct qcow2 *s;
    struct q2_centry *e;
    unsigned n, max;
    int *hash;
    unsigned nhash;
    uint64_t tick;
    struct q2_wait *slot_waiters; /* no evictable slot: waiting for one */
};

/* A guest-cluster range being allocated (phase A to phase C of an allocating write). */
struct q2_alloc {
    uint64_t first, n; /* guest clusters */
    struct q2_alloc *next;
    struct q2_wait *waiters;
};

/* Metadata cluster ranges (for the "L2 entry points into metadata" check). */
struct q2_range {
    uint64_t start, end; /* host clusters [start, end) */
};

struct qcow2 {
    struct vblk_bdev *b;
    struct vblk_bdev *file;    /* b->child: the image */
    struct vblk_bdev *data;    /* where guest clusters live: file, or the external data file */
    struct vblk_bdev *backing; /* backing stack, or NULL */
    bool data_owned;           /* data is our own stack (external data file) */
    bool data_raw;             /* autoclear raw external data: keep the data file a raw image */
    struct qcow2_info in;
    char *path;         /* image path (messages) */
    char *backing_path; /* resolved */
    char *data_path;
    uint64_t backing_size;

    unsigned cluster_bits;
    uint64_t cs;
    unsigned l2_bits; /* log2(entries per L2 table) */
    unsigned l2_esz;  /* bytes per L2 entry: 8, or 16 with extended L2 */
    bool ext_l2;
    unsigned sc_bits; /* log2(subcluster size) (== cluster_bits without extended L2) */
    unsigned rb_bits; /* log2(refcount entries per block) */
    unsigned chunk;   /* metadata write granularity: max(512, file align) */
    bool writable;

    uint8_t *l1; /* on-disk (big-endian) L1, padded to chunk */
    size_t l1_bytes;
    uint8_t *l1_dirty; /* one flag per chunk */
    uint8_t *reft;     /* on-disk refcount table, reft_clusters clusters */
    uint64_t reft_entries;
    uint8_t *hdr; /* first chunk of the image (header writes) */

    uint64_t file_end;  /* bytes: the image file's end (grows as we allocate) */
    uint64_t free_hint; /* host cluster where the allocator looks first */

    struct q2_cache l2c, rbc;

    struct q2_range *meta;
    size_t nmeta, meta_cap;

    /* serialisation of metadata changes */
    bool meta_busy;
    struct q2_wait *meta_head, **meta_tail;
    struct q2_alloc *allocs;

    /* deferred refcount decrements (host cluster indices) */
    uint64_t *frees;
    size_t nfrees, frees_cap;

    /* grace period: data I/O in flight per generation */
    unsigned gen;
    unsigned inflight[2];
    struct q2_wait *grace_waiter;
    unsigned grace_bucket;

    /* decompression */
    void *zstream;     /* z_stream */
    void *zstd;        /* ZSTD_DCtx */
    uint8_t *zero_buf; /* one cluster of zeroes (write-zeroes as data) */

    struct q2_wait *ready_head, **ready_tail; /* wake-ups run from one loop (no deep recursion) */
    bool in_ready;
    struct vblk_engine *eng; /* the I/O thread's engine (single_thread) */

    struct q2_req *free_reqs; /* request pool */
    unsigned live_reqs;
    bool warned_frees;
};

/* qcow2_io.c */
void qcow2_io_submit(struct vblk_bdev *b, struct vblk_engine *eng, struct vblk_bdev_req *r);
int qcow2_cache_init(struct q2_cache *c, const char *what, struct qcow2 *s, unsigned max);
void qcow2_cache_destroy(struct q2_cache *c);
void qcow2_free_reqs(struct qcow2 *s);
/* Control thread, nothing in flight: write back everything (blocking). */
int qcow2_sync_blocking(struct qcow2 *s);
/* Metadata overlap set */
int qcow2_meta_add(struct qcow2 *s, uint64_t start, uint64_t n);
bool qcow2_meta_overlaps(const struct qcow2 *s, uint64_t start, uint64_t n);
void qcow2_meta_del(struct qcow2 *s, uint64_t cluster);
void *qcow2_alloc_aligned(size_t len);
void qcow2_meta_sort(struct qcow2 *s);

static inline uint64_t q2_be64(const uint8_t *p)
{
    uint64_t v;

    __builtin_memcpy(&v, p, 8);
    return __builtin_bswap64(v);
}

static inline void q2_put_be64(uint8_t *p, uint64_t v)
{
    v = __builtin_bswap64(v);
    __builtin_memcpy(p, &v, 8);
}

#endif
