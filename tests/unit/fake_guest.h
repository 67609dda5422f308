/* fake_guest.h - in-process "guest" for the unit tests: guest memory, driver-side split rings,
 * and a virtio-blk device whose queues are started without an I/O thread.
 *
 * Memory layout (region 0, FG_R0_SIZE bytes at guest-physical FG_GPA0):
 *   ring q (q < FG_MAX_QUEUES) at FG_GPA0 + q * FG_RING_STRIDE: desc table, avail ring, used ring
 *   data area from FG_GPA0 + FG_DATA_OFF, handed out by fg_alloc() (bump allocator)
 * Region 1 (optional, FG_R1_SIZE bytes) follows region 0 directly in guest-physical space but is
 * a separate host allocation, so a buffer crossing the boundary needs two iovecs.
 */
#ifndef VBLK_TEST_FAKE_GUEST_H
#define VBLK_TEST_FAKE_GUEST_H

#include <stdbool.h>
#include <stdint.h>

#include "bdev/bdev.h"
#include "blk/virtio_blk.h"
#include "engine/engine.h"
#include "iothread/iothread.h"
#include "mem/guest_mem.h"
#include "virtq/virtq.h"

#define FG_GPA0        0x100000ull
#define FG_UVA0        0x7f0000000000ull
#define FG_R0_SIZE     (8u << 20)
#define FG_R1_SIZE     (1u << 20)
#define FG_MAX_QUEUES  4
#define FG_RING_STRIDE 0x8000u /* enough for a 1024-entry ring: 16K + 2K + 8K */
#define FG_DATA_OFF    (FG_MAX_QUEUES * FG_RING_STRIDE)

struct fg_ring {
    uint16_t num;
    struct vring_desc *desc;
    struct vring_avail *avail;
    struct vring_used *used;
    uint64_t desc_uva, avail_uva, used_uva;
    uint16_t avail_idx; /* driver's next avail index */
    uint16_t next_desc; /* next free descriptor (bump, wraps) */
    /* packed (fgp_*): desc_uva is the descriptor ring, avail_uva the driver event structure,
     * used_uva the device's */
    bool packed;
    struct vring_packed_desc *pdesc;
    struct vring_packed_desc_event *driver_event, *device_event;
    uint16_t pnext, pused; /* driver's next position to fill / to read used from */
    bool pwrap, pused_wrap;
    uint16_t next_id;
    uint16_t pflags[1024];  /* flags of a chain's first descriptor, until fgp_post() */
    uint16_t chain_n[1024]; /* ring descriptors of each id's chain */
};

struct fake_guest {
    struct vblk_mem mem;
    uint8_t *r0, *r1;
    uint64_t next_data; /* bump allocator, guest-physical */
    struct fg_ring ring[FG_MAX_QUEUES];
};

/* Guest memory with two regions when two_regions, rings of num entries for nq queues. */
void fg_init(struct fake_guest *g, unsigned nq, uint16_t num, bool two_regions);
void fg_fini(struct fake_guest *g);
/* Start a ring over: zero it and reset the driver indices (used->idx and avail->idx = idx). */
void fg_ring_reset(struct fake_guest *g, unsigned q, uint16_t idx);

/* Guest-physical address of a fresh zeroed buffer of len bytes (16-byte aligned). */
uint64_t fg_alloc(struct fake_guest *g, uint64_t len);
/* Host pointer for a guest-physical address (must be in guest memory). */
void *fg_ptr(struct fake_guest *g, uint64_t gpa);

/* Write descriptor i of ring q. */
void fg_desc(struct fake_guest *g, unsigned q, uint16_t i, uint64_t addr, uint32_t len,
             uint16_t flags, uint16_t next);
/* A segment of a chain built by fg_chain(). */
struct fg_seg {
    uint64_t addr;
    uint32_t len;
    bool write;
};
/* Lay out n descriptors chained with NEXT from the ring's free descriptors; returns the head. */
uint16_t fg_chain(struct fake_guest *g, unsigned q, const struct fg_seg *s, unsigned n);
/* Build an indirect table in guest memory from s[0..n), and one ring descriptor pointing at it. */
uint16_t fg_chain_indirect(struct fake_guest *g, unsigned q, const struct fg_seg *s, unsigned n);
/* Make head available (writes the ring entry and bumps avail->idx). */
void fg_post(struct fake_guest *g, unsigned q, uint16_t head);
/* Used ring entry i (absolute used index, masked) and used->idx. */
struct vring_used_elem fg_used_elem(struct fake_guest *g, unsigned q, uint16_t i);
uint16_t fg_used_idx(struct fake_guest *g, unsigned q);

/* ---- packed rings, driver side ---- */

/* Switch ring q to the packed layout, zeroed, both wrap counters 1, positions 0. */
void fgp_init(struct fake_guest *g, unsigned q);
/* The vring base that starts a device on this ring (vblk_vqp_start). */
uint32_t fgp_base(struct fake_guest *g, unsigned q);
/* AVAIL/USED bits that make position pos available now (driver's wrap at pos for the next lap
 * starting at pnext). */
uint16_t fgp_avail_bits(struct fake_guest *g, unsigned q, bool wrap);
/* Write n descriptors of buffer id at the next positions (NEXT on all but the last), all but the
 * first marked available; returns the first's position, for fgp_post(). */
uint16_t fgp_chain(struct fake_guest *g, unsigned q, const struct fg_seg *s, unsigned n,
                   uint16_t id);
/* One ring descriptor pointing at an indirect table of s[0..n). */
uint16_t fgp_chain_indirect(struct fake_guest *g, unsigned q, const struct fg_seg *s, unsigned n,
                            uint16_t id);
/* Raw descriptor at pos (flags as given: add fgp_avail_bits() yourself). */
void fgp_desc(struct fake_guest *g, unsigned q, uint16_t pos, uint64_t addr, uint32_t len,
              uint16_t id, uint16_t flags);
/* Make the chain at pos available (release store of its first flags). */
void fgp_post(struct fake_guest *g, unsigned q, uint16_t pos);
/* Take the next used element if there is one (advances by the id's chain length). */
bool fgp_used(struct fake_guest *g, unsigned q, uint16_t *id, uint32_t *len);

/* ---- virtio-blk ---- */

#define FB_STATUS_UNSET 0xee /* what status bytes hold before the device writes them */
#define FB_HOLD_MAX     1024

/* A virtio-blk device served the way vblkd serves one: a real I/O thread, queues started with
 * vblk_blk_queue_start(), requests handed to a real driver stack (null or a temp file) or to the
 * "hold" test driver, which keeps every request in flight until fb_release(). */
struct fake_blk {
    struct fake_guest g;
    struct vblk_bdev_conf conf; /* what bdev was opened with */
    struct vblk_bdev *bdev;     /* the driver stack, or &hold */
    struct vblk_bdev hold;
    struct vblk_iothread *iot;
    struct vblk_blk_dev d;
    int kick[FG_MAX_QUEUES], call[FG_MAX_QUEUES], err[FG_MAX_QUEUES]; /* eventfds */
    char path[64];                                                    /* temp file, "" if none */
    /* hold driver: requests in flight (I/O thread only) */
    struct vblk_bdev_req *held[FB_HOLD_MAX];
    unsigned nheld;
};

enum fb_backing { FB_NULL, FB_FILE, FB_HOLD };

/* A device of nq queues of num entries over a null driver (size bytes), a temp file of size
 * bytes (io_uring engine, or the thread pool when io_uring is unavailable), or the hold driver. */
void fb_init(struct fake_blk *b, enum fb_backing backing, uint64_t size, unsigned nq, uint16_t num);
void fb_fini(struct fake_blk *b);
/* Close the driver stack and open it again per b->conf (after a test changed it). */
void fb_reopen(struct fake_blk *b);
/* (Re)start queue q as the daemon does (stopping it first if it runs), from the ring's current
 * avail index. */
void fb_queue_start(struct fake_blk *b, unsigned q, bool event_idx, bool indirect);
/* Stop queue q (drains it); returns the next avail index (packed: the vring base). */
uint32_t fb_queue_stop(struct fake_blk *b, unsigned q);
/* Kick queue q and wait until its I/O thread has taken every available request (or the queue
 * broke), everything but held requests has completed and the used ring is published. */
void fb_run(struct fake_blk *b, unsigned q);
/* Complete every held request with ret (0 or -errno) and wait as fb_run does for queue q. */
void fb_release(struct fake_blk *b, unsigned q, int ret);
/* Run fn(arg) on the I/O thread (read or change queue state without racing it). */
int fb_call(struct fake_blk *b, int (*fn)(void *arg), void *arg);

/* A request: header (16 readable bytes), data, status (1 writable byte, preset to
 * FB_STATUS_UNSET).  data_len 0: no data descriptor.  On a packed ring (fgp_init before
 * fb_queue_start) the chain takes the next buffer id and is posted with fgp_post(r->pos). */
struct fb_req {
    uint16_t head; /* packed: the buffer id */
    uint16_t pos;  /* packed: the chain's first position (fgp_post) */
    uint64_t hdr_gpa, data_gpa, status_gpa;
    uint8_t *data;
};
void fb_req_build(struct fake_blk *b, unsigned q, struct fb_req *r, uint32_t type, uint64_t sector,
                  uint32_t data_len, bool data_write);
uint8_t fb_status(struct fake_blk *b, const struct fb_req *r);

#endif
