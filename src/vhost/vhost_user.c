/* vhost_user.c - see vhost_user.h. */
#include "vhost/vhost_user.h"

#include <errno.h>
#include <linux/virtio_config.h>
#include <linux/virtio_ring.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util/eventfd_check.h"
#include "util/log.h"
#include "util/unixfd.h"

static void vring_reset(struct vu_vring *vr)
{
    memset(vr, 0, sizeof(*vr));
    vr->enabled = true;
    vr->kick_fd = vr->call_fd = vr->err_fd = -1;
}

static void close_fd(int *fd)
{
    if (*fd >= 0)
        close(*fd);
    *fd = -1;
}

static void close_msg_fds(struct vblk_vu_dev *v)
{
    for (unsigned i = 0; i < v->nfds; i++)
        close_fd(&v->fds[i]);
    v->nfds = 0;
}

void vblk_vu_init(struct vblk_vu_dev *v, const char *name, struct vblk_blk_dev *blk)
{
    memset(v, 0, sizeof(*v));
    v->name = name;
    v->blk = blk;
    v->conn_fd = -1;
    v->backend_fd = -1;
    v->nvrings = blk->num_queues;
    for (unsigned i = 0; i < VBLK_VU_MAX_QUEUES; i++)
        vring_reset(&v->vrings[i]);
}

/* ---- ring lifecycle ---- */

/* An I/O thread did not answer: leave it everything it may still touch (rings, guest memory,
 * fds), close the connection and refuse the next ones. */
static void wedge(struct vblk_vu_dev *v)
{
    if (v->wedged)
        return;
    v->wedged = true;
    log_err(v->name,
            "an I/O thread stopped answering: export torn down (its guest memory and fds are "
            "left to it); restart vblkd to serve it again");
    v->mem = NULL;          /* leaked on purpose */
    v->inflight.map = NULL; /* likewise */
    v->log.map = NULL;
    for (unsigned i = 0; i < VBLK_VU_MAX_QUEUES; i++) {
        v->vrings[i].started = false;
        v->vrings[i].kick_fd = v->vrings[i].call_fd = v->vrings[i].err_fd = -1;
    }
}

static int ring_try_start(struct vblk_vu_dev *v, unsigned i)
{
    struct vu_vring *vr = &v->vrings[i];
    struct vblk_queue_params p;
    int r;

    if (v->wedged)
        return -ETIMEDOUT;
    if (vr->started || !vr->kick_set || !vr->addr_set || !vr->enabled || !v->mem || !vr->num)
        return 0;
    p = (struct vblk_queue_params){
        .mem = v->mem,
        .num = vr->num,
        .last_avail = vr->base,
        .desc_uva = vr->desc_uva,
        .avail_uva = vr->avail_uva,
        .used_uva = vr->used_uva,
        .kick_fd = vr->kick_fd,
        .call_fd = vr->call_fd,
        .err_fd = vr->err_fd,
        .event_idx = !!(v->features & (1ull << VIRTIO_RING_F_EVENT_IDX)),
        .indirect = !!(v->features & (1ull << VIRTIO_RING_F_INDIRECT_DESC)),
        .packed = !!(v->features & (1ull << VIRTIO_F_RING_PACKED)),
    };
    if ((v->features & (1ull << VHOST_F_LOG_ALL)) && v->log.map) {
        p.log = v->log.host;
        p.log_size = v->log.size;
        p.log_used = vr->log_used;
        p.log_used_gpa = vr->log_guest_addr;
    }
    if (v->inflight.map && i < v->inflight_queues && p.packed) {
        /* the packed record keeps copies of descriptors (vhost-user.rst): not implemented */
        log_dbg(v->name, "queue %u: packed ring, no in-flight tracking", i);
    } else if (v->inflight.map && i < v->inflight_queues) {
        if (vr->num != v->inflight_qsize) {
            log_err(v->name, "queue %u has %u entries but its in-flight record %u", i, vr->num,
                    v->inflight_qsize);
            return -EPROTO;
        }
        p.inflight = (struct vblk_inflight_split *)(v->inflight.host +
                                                    i * vblk_inflight_queue_size(vr->num));
    }
    r = vblk_blk_queue_start(v->blk, i, &p);
    if (r == -ETIMEDOUT) {
        wedge(v);
        return r;
    }
    if (r < 0) {
        log_err(v->name, "cannot start queue %u: %s", i,
                r == -EFAULT   ? "ring addresses outside guest memory"
                : r == -EINVAL ? "ring size or base, or ring addresses misaligned (in the "
                                 "front-end's memory or in ours: check the region's mmap_offset)"
                               : strerror(-r));
        return r;
    }
    vr->started = true;
    log_dbg(v->name, "queue %u started: %u entries from %s 0x%x", i, vr->num,
            p.packed ? "packed base" : "avail index", vr->base);
    return 0;
}

/* 0, or -ETIMEDOUT after which the device is wedged. */
static int ring_stop(struct vblk_vu_dev *v, unsigned i)
{
    struct vu_vring *vr = &v->vrings[i];
    uint32_t base;

    if (v->wedged)
        return -ETIMEDOUT;
    if (!vr->started)
        return 0;
    if (vblk_blk_queue_stop(v->blk, i, &base) < 0) {
        wedge(v);
        return -ETIMEDOUT;
    }
    vr->base = base;
    vr->started = false;
    return 0;
}

/* Swap in a new memory table with every running ring stopped; returns the old table, or NULL
 * with *err set and the new table not taken if a ring cannot be stopped. */
static struct vblk_mem *mem_swap(struct vblk_vu_dev *v, struct vblk_mem *mem, int *err)
{
    struct vblk_mem *old = v->mem;

    *err = 0;
    vblk_mem_seal(mem); /* a new generation: I/O threads register it as fixed buffers */
    for (unsigned i = 0; i < v->nvrings; i++) {
        *err = ring_stop(v, i);
        if (*err)
            return NULL;
    }
    v->mem = mem;
    /* restart what ran, and start rings that were only waiting for memory */
    for (unsigned i = 0; i < v->nvrings && !*err; i++)
        *err = ring_try_start(v, i);
    return old;
}

/* ---- replies ---- */

static int send_reply_fd(struct vblk_vu_dev *v, const void *payload, uint32_t size, int fd)
{
    struct vhost_user_msg m;
    ssize_t n;

    m.hdr.request = v->msg.hdr.request;
    m.hdr.flags = VHOST_USER_VERSION | VHOST_USER_REPLY_MASK;
    m.hdr.size = size;
    if (size)
        memcpy(&m.payload, payload, size);
    n = vblk_send_fds(v->conn_fd, &m, VHOST_USER_HDR_SIZE + size, &fd, fd >= 0 ? 1 : 0,
                      MSG_DONTWAIT);
    if (n != (ssize_t)(VHOST_USER_HDR_SIZE + size)) {
        log_err(v->name, "cannot send %s reply: %s", vhost_user_request_name(m.hdr.request),
                n < 0 ? strerror((int)-n) : "short write");
        return -EIO;
    }
    return 0;
}

static int send_reply(struct vblk_vu_dev *v, const void *payload, uint32_t size)
{
    return send_reply_fd(v, payload, size, -1);
}

static int reply_u64(struct vblk_vu_dev *v, uint64_t val)
{
    return send_reply(v, &val, sizeof(val));
}

/* ---- message handlers: each checks size and fds before use ---- */

#define PROTO_ERR(v, ...)                                                                          \
    ({                                                                                             \
        log_err((v)->name, __VA_ARGS__);                                                           \
        -EPROTO;                                                                                   \
    })

static int need_size(struct vblk_vu_dev *v, uint32_t size)
{
    if (v->msg.hdr.size != size)
        return PROTO_ERR(v, "%s: payload of %u bytes, expected %u",
                         vhost_user_request_name(v->msg.hdr.request), v->msg.hdr.size, size);
    return 0;
}

static int need_fds(struct vblk_vu_dev *v, unsigned n)
{
    if (v->nfds != n)
        return PROTO_ERR(v, "%s: %u file descriptors, expected %u",
                         vhost_user_request_name(v->msg.hdr.request), v->nfds, n);
    return 0;
}

static int vring_index(struct vblk_vu_dev *v, uint32_t idx)
{
    if (idx >= v->nvrings)
        return PROTO_ERR(v, "%s: queue index %u out of range (%u queues)",
                         vhost_user_request_name(v->msg.hdr.request), idx, v->nvrings);
    return 0;
}

static uint64_t offered_features(struct vblk_vu_dev *v)
{
    return vblk_blk_features(v->blk) | (1ull << VHOST_USER_F_PROTOCOL_FEATURES) |
           (1ull << VHOST_F_LOG_ALL) | (1ull << VIRTIO_F_RING_PACKED);
}

/* Stop every running ring and start it again (it picks up the log and features now in v). */
static int rings_restart(struct vblk_vu_dev *v)
{
    bool was[VBLK_VU_MAX_QUEUES];
    int r = 0;

    for (unsigned i = 0; i < v->nvrings; i++) {
        was[i] = v->vrings[i].started;
        if (ring_stop(v, i) < 0)
            return -ETIMEDOUT;
    }
    for (unsigned i = 0; i < v->nvrings && !r; i++)
        r = was[i] ? ring_try_start(v, i) : 0;
    return r;
}

static int h_set_features(struct vblk_vu_dev *v)
{
    uint64_t f;

    if (need_size(v, 8) < 0)
        return -EPROTO;
    f = v->msg.payload.u64;
    if (f & ~offered_features(v))
        return PROTO_ERR(v, "SET_FEATURES: 0x%llx has bits we did not offer (0x%llx)",
                         (unsigned long long)f, (unsigned long long)offered_features(v));
    if (f & ~v->features & (1ull << VIRTIO_F_RING_PACKED))
        log_info(v->name, "packed virtqueues (VIRTIO_F_RING_PACKED)");
    if ((f ^ v->features) & (1ull << VHOST_F_LOG_ALL)) {
        log_info(v->name, "dirty logging %s (live migration)",
                 (f & (1ull << VHOST_F_LOG_ALL)) ? "on" : "off");
        v->features = f;
        return rings_restart(v); /* the rings log from now on, or stop logging */
    }
    v->features = f;
    return 0;
}

/* The dirty log: one bit per 4 KiB guest-physical page, in memory the front-end shares. */
static int h_set_log_base(struct vblk_vu_dev *v)
{
    const struct vhost_user_log *l = &v->msg.payload.log;
    struct vblk_mem_desc d = {.size = l->mmap_size, .mmap_offset = l->mmap_offset};
    struct vblk_mem_region reg, old;
    int r;

    if (need_size(v, sizeof(*l)) < 0 || need_fds(v, 1) < 0)
        return -EPROTO;
    r = vblk_mem_region_map(&v->mem_owner, &reg, &d, v->fds[0]);
    if (r < 0)
        return PROTO_ERR(v, "SET_LOG_BASE: cannot map the log: %s", vblk_mem_strerror(r));
    old = v->log;
    v->log = reg;
    r = rings_restart(v); /* no ring writes into the old log from here on */
    if (r == -ETIMEDOUT)
        return r; /* wedged: the thread keeps both */
    vblk_mem_region_unmap(&old);
    if (r < 0)
        return r;
    return send_reply(v, NULL, 0); /* QEMU waits for this (LOG_SHMFD) */
}

static int h_set_protocol_features(struct vblk_vu_dev *v)
{
    uint64_t f;

    if (need_size(v, 8) < 0)
        return -EPROTO;
    f = v->msg.payload.u64;
    if (f & ~VBLK_VU_PROTOCOL_FEATURES)
        return PROTO_ERR(v, "SET_PROTOCOL_FEATURES: 0x%llx has bits we did not offer",
                         (unsigned long long)f);
    v->protocol_features = f;
    return 0;
}

static struct vblk_mem_desc mem_desc(const struct vhost_user_mem_region *w)
{
    return (struct vblk_mem_desc){.gpa = w->guest_phys_addr,
                                  .size = w->memory_size,
                                  .uva = w->userspace_addr,
                                  .mmap_offset = w->mmap_offset};
}

static void reset_state(struct vblk_vu_dev *v)
{
    if (vblk_mem_owner_lost(&v->mem_owner))
        log_err(v->name, "the front-end shrank guest memory under a running ring: the region "
                         "was replaced by zeroes instead of crashing");
    for (unsigned i = 0; i < v->nvrings; i++) {
        struct vu_vring *vr = &v->vrings[i];

        if (ring_stop(v, i) < 0)
            break;
        close_fd(&vr->kick_fd);
        close_fd(&vr->call_fd);
        close_fd(&vr->err_fd);
        vring_reset(vr);
    }
    if (v->mem) {
        if (!v->wedged)
            vblk_blk_mem_release(v->blk, v->mem); /* unpinned before it is unmapped */
        vblk_mem_unmap_all(v->mem);
        free(v->mem);
        v->mem = NULL;
    }
    vblk_mem_region_unmap(&v->inflight);
    v->inflight_queues = v->inflight_qsize = 0;
    vblk_mem_region_unmap(&v->log);
    close_fd(&v->backend_fd);
    v->features = 0;
    v->protocol_features = 0;
    vblk_blk_reset(v->blk);
}

/* Put a new table in place of the old one, then unmap (unmap_old) and free the old one.  If the
 * device wedged before the swap, mem is freed (its mappings are the caller's to undo) and
 * *taken is false. */
static int install_mem(struct vblk_vu_dev *v, struct vblk_mem *mem, bool unmap_old, bool *taken)
{
    struct vblk_mem *old;
    int r;

    old = mem_swap(v, mem, &r);
    *taken = v->mem == mem;
    if (!*taken) {
        free(mem);
        return r;
    }
    if (old) {
        /* threads whose queues did not restart on mem still hold old; let it go before it
         * (or a region removed from it) is unmapped */
        vblk_blk_mem_release(v->blk, old);
        if (unmap_old)
            vblk_mem_unmap_all(old);
        free(old);
    }
    return r;
}

static int h_set_mem_table(struct vblk_vu_dev *v)
{
    const struct vhost_user_memory *m = &v->msg.payload.memory;
    struct vblk_mem *mem;
    int r;

    if (v->msg.hdr.size < 8)
        return PROTO_ERR(v, "SET_MEM_TABLE: payload of %u bytes", v->msg.hdr.size);
    if (m->nregions == 0 || m->nregions > VHOST_USER_MEM_REGIONS_MAX)
        return PROTO_ERR(v, "SET_MEM_TABLE: %u regions (1 to %d allowed)", m->nregions,
                         VHOST_USER_MEM_REGIONS_MAX);
    if (need_size(v, 8 + m->nregions * (uint32_t)sizeof(m->regions[0])) < 0 ||
        need_fds(v, m->nregions) < 0)
        return -EPROTO;
    mem = calloc(1, sizeof(*mem));
    if (!mem)
        return -ENOMEM;
    for (unsigned i = 0; i < m->nregions; i++) {
        struct vblk_mem_desc d = mem_desc(&m->regions[i]);
        struct vblk_mem_region reg;

        r = vblk_mem_region_map(&v->mem_owner, &reg, &d, v->fds[i]);
        if (r < 0) {
            log_err(v->name, "SET_MEM_TABLE: cannot map region %u: %s", i, vblk_mem_strerror(r));
            goto err_unmap;
        }
        r = vblk_mem_add(mem, &reg);
        if (r < 0) {
            vblk_mem_region_unmap(&reg);
            log_err(v->name, "SET_MEM_TABLE: region %u %s", i,
                    r == -E2BIG ? "takes the table over 1 TiB" : "overlaps another");
            goto err_unmap;
        }
    }
    close_msg_fds(v);
    {
        struct vblk_mem copy = *mem; /* install_mem frees mem if it is not taken */
        bool taken;

        r = install_mem(v, mem, true, &taken);
        if (!taken)
            vblk_mem_unmap_all(&copy);
    }
    return r;

err_unmap:
    vblk_mem_unmap_all(mem);
    free(mem);
    return -EPROTO;
}

static int h_add_mem_reg(struct vblk_vu_dev *v)
{
    struct vblk_mem *mem;
    struct vblk_mem_region reg;
    struct vblk_mem_desc d;
    bool taken;
    int r;

    if (need_size(v, sizeof(struct vhost_user_mem_reg_msg)) < 0 || need_fds(v, 1) < 0)
        return -EPROTO;
    mem = calloc(1, sizeof(*mem));
    if (!mem)
        return -ENOMEM;
    if (v->mem)
        *mem = *v->mem; /* shares the mappings; the old struct is freed without unmapping */
    d = mem_desc(&v->msg.payload.memreg.region);
    r = vblk_mem_region_map(&v->mem_owner, &reg, &d, v->fds[0]);
    if (r < 0) {
        free(mem);
        return PROTO_ERR(v, "ADD_MEM_REG: cannot map region: %s", vblk_mem_strerror(r));
    }
    r = vblk_mem_add(mem, &reg);
    if (r < 0) {
        vblk_mem_region_unmap(&reg);
        free(mem);
        return PROTO_ERR(v, "ADD_MEM_REG: %s",
                         r == -ENOSPC  ? "no free slot"
                         : r == -E2BIG ? "guest memory over 1 TiB"
                                       : "overlap");
    }
    close_msg_fds(v);
    r = install_mem(v, mem, false, &taken);
    if (!taken)
        vblk_mem_region_unmap(&reg);
    return r;
}

static int h_rem_mem_reg(struct vblk_vu_dev *v)
{
    struct vblk_mem *mem;
    struct vblk_mem_region gone;
    struct vblk_mem_desc d;
    bool taken;
    int idx, r;

    /* some front-ends pass the region's fd here too; it is closed after dispatch */
    if (need_size(v, sizeof(struct vhost_user_mem_reg_msg)) < 0)
        return -EPROTO;
    d = mem_desc(&v->msg.payload.memreg.region);
    idx = v->mem ? vblk_mem_find(v->mem, &d) : -ENOENT;
    if (idx < 0)
        return PROTO_ERR(v, "REM_MEM_REG: no such region");
    mem = calloc(1, sizeof(*mem));
    if (!mem)
        return -ENOMEM;
    *mem = *v->mem;
    gone = mem->r[idx];
    mem->r[idx] = mem->r[--mem->nregions];
    r = install_mem(v, mem, false, &taken);
    if (taken)
        vblk_mem_region_unmap(&gone);
    return r;
}

/* ---- in-flight record ---- */

static int inflight_check(struct vblk_vu_dev *v, const struct vhost_user_inflight *f)
{
    unsigned qs = f->queue_size;

    if (f->num_queues == 0 || f->num_queues > v->nvrings || qs == 0 ||
        qs > v->blk->max_queue_size || (qs & (qs - 1)))
        return PROTO_ERR(v, "%s: %u queues of %u entries (at most %u queues of %u)",
                         vhost_user_request_name(v->msg.hdr.request), f->num_queues, qs, v->nvrings,
                         v->blk->max_queue_size);
    return 0;
}

/* The front-end asks for a buffer (a fresh memfd) to keep the in-flight record in. */
static int h_get_inflight_fd(struct vblk_vu_dev *v)
{
    struct vhost_user_inflight f = v->msg.payload.inflight;
    int fd, r;

    if (need_size(v, sizeof(f)) < 0 || inflight_check(v, &f) < 0)
        return -EPROTO;
    f.mmap_size = f.num_queues * vblk_inflight_queue_size(f.queue_size);
    f.mmap_offset = 0;
    fd = memfd_create("vblk-inflight", MFD_CLOEXEC);
    if (fd < 0)
        return -errno;
    if (ftruncate(fd, (off_t)f.mmap_size) < 0) { /* zeroes: version 0, nothing in flight */
        r = -errno;
        close(fd);
        return r;
    }
    r = send_reply_fd(v, &f, sizeof(f), fd);
    close(fd);
    return r;
}

/* The front-end hands the buffer (back) to us: on a reconnect it holds what a daemon before us
 * left in flight; the rings resubmit it when they start. */
static int h_set_inflight_fd(struct vblk_vu_dev *v)
{
    const struct vhost_user_inflight *f = &v->msg.payload.inflight;
    struct vblk_mem_desc d;
    struct vblk_mem_region reg;
    int r;

    if (need_size(v, sizeof(*f)) < 0 || need_fds(v, 1) < 0 || inflight_check(v, f) < 0)
        return -EPROTO;
    for (unsigned i = 0; i < v->nvrings; i++) {
        if (v->vrings[i].started)
            return PROTO_ERR(v, "SET_INFLIGHT_FD: queue %u is running", i);
    }
    d = (struct vblk_mem_desc){.size = f->num_queues * vblk_inflight_queue_size(f->queue_size),
                               .mmap_offset = f->mmap_offset};
    if (f->mmap_size < d.size)
        return PROTO_ERR(v, "SET_INFLIGHT_FD: %llu bytes for %u queues of %u entries (%llu needed)",
                         (unsigned long long)f->mmap_size, f->num_queues, f->queue_size,
                         (unsigned long long)d.size);
    r = vblk_mem_region_map(&v->mem_owner, &reg, &d, v->fds[0]);
    if (r < 0)
        return PROTO_ERR(v, "SET_INFLIGHT_FD: cannot map the buffer: %s", vblk_mem_strerror(r));
    vblk_mem_region_unmap(&v->inflight);
    v->inflight = reg;
    v->inflight_queues = f->num_queues;
    v->inflight_qsize = f->queue_size;
    return 0;
}

static int h_set_vring_num(struct vblk_vu_dev *v)
{
    const struct vhost_user_vring_state *s = &v->msg.payload.state;

    if (need_size(v, sizeof(*s)) < 0 || vring_index(v, s->index) < 0)
        return -EPROTO;
    /* packed rings need not be a power of two */
    if (s->num == 0 || s->num > v->blk->max_queue_size ||
        (!(v->features & (1ull << VIRTIO_F_RING_PACKED)) && (s->num & (s->num - 1))))
        return PROTO_ERR(v, "SET_VRING_NUM: queue %u size %u is not a power of two up to %u",
                         s->index, s->num, v->blk->max_queue_size);
    if (v->vrings[s->index].started)
        return PROTO_ERR(v, "SET_VRING_NUM: queue %u is running", s->index);
    v->vrings[s->index].num = (uint16_t)s->num;
    return 0;
}

static int h_set_vring_addr(struct vblk_vu_dev *v)
{
    const struct vhost_user_vring_addr *a = &v->msg.payload.addr;
    struct vu_vring *vr;
    bool was;

    if (need_size(v, sizeof(*a)) < 0 || vring_index(v, a->index) < 0)
        return -EPROTO;
    if (a->flags & ~1u)
        return PROTO_ERR(v, "SET_VRING_ADDR: unknown flags 0x%x", a->flags);
    vr = &v->vrings[a->index];
    was = vr->started;
    if (ring_stop(v, a->index) < 0)
        return -ETIMEDOUT;
    vr->desc_uva = a->desc_user_addr;
    vr->avail_uva = a->avail_user_addr;
    vr->used_uva = a->used_user_addr;
    vr->log_used = a->flags & 1; /* VHOST_VRING_F_LOG */
    vr->log_guest_addr = a->log_guest_addr;
    vr->addr_set = true;
    return was ? ring_try_start(v, a->index) : 0;
}

static int h_set_vring_base(struct vblk_vu_dev *v)
{
    const struct vhost_user_vring_state *s = &v->msg.payload.state;

    if (need_size(v, sizeof(*s)) < 0 || vring_index(v, s->index) < 0)
        return -EPROTO;
    /* packed: avail position and wrap counter in bits 0-15, used in 16-31 (checked at start) */
    if (s->num > 0xffff && !(v->features & (1ull << VIRTIO_F_RING_PACKED)))
        return PROTO_ERR(v, "SET_VRING_BASE: queue %u base %u out of range", s->index, s->num);
    if (v->vrings[s->index].started)
        return PROTO_ERR(v, "SET_VRING_BASE: queue %u is running", s->index);
    v->vrings[s->index].base = s->num;
    return 0;
}

static int h_get_vring_base(struct vblk_vu_dev *v)
{
    struct vhost_user_vring_state s = v->msg.payload.state;
    struct vu_vring *vr;

    if (need_size(v, sizeof(s)) < 0 || vring_index(v, s.index) < 0)
        return -EPROTO;
    vr = &v->vrings[s.index];
    if (ring_stop(v, s.index) < 0) /* waits for in-flight requests */
        return -ETIMEDOUT;
    close_fd(&vr->kick_fd);
    vr->kick_set = false;
    s.num = vr->base;
    return send_reply(v, &s, sizeof(s));
}

/* SET_VRING_KICK/CALL/ERR: u64 with the index in bits 0-7 and "no fd" in bit 8. */
static int vring_fd_msg(struct vblk_vu_dev *v, unsigned *idx, int *fd)
{
    uint64_t u;

    if (need_size(v, 8) < 0)
        return -EPROTO;
    u = v->msg.payload.u64;
    if (u & ~(uint64_t)(VHOST_USER_VRING_IDX_MASK | VHOST_USER_VRING_NOFD_MASK))
        return PROTO_ERR(v, "%s: reserved bits set in 0x%llx",
                         vhost_user_request_name(v->msg.hdr.request), (unsigned long long)u);
    *idx = (unsigned)(u & VHOST_USER_VRING_IDX_MASK);
    if (vring_index(v, *idx) < 0)
        return -EPROTO;
    if (u & VHOST_USER_VRING_NOFD_MASK) {
        if (need_fds(v, 0) < 0)
            return -EPROTO;
        *fd = -1;
    } else {
        int r;

        if (need_fds(v, 1) < 0)
            return -EPROTO;
        r = vblk_eventfd_adopt(v->fds[0]);
        if (r < 0)
            return PROTO_ERR(v, "%s: queue %u: the fd is %s",
                             vhost_user_request_name(v->msg.hdr.request), *idx,
                             r == -EBADF    ? "not an eventfd"
                             : r == -EINVAL ? "a semaphore eventfd"
                                            : "unusable");
        *fd = v->fds[0];
        v->fds[0] = -1;
        v->nfds = 0;
    }
    return 0;
}

static int h_set_vring_kick(struct vblk_vu_dev *v)
{
    struct vu_vring *vr;
    unsigned i;
    int fd;

    if (vring_fd_msg(v, &i, &fd) < 0)
        return -EPROTO;
    vr = &v->vrings[i];
    if (fd < 0) {
        log_err(v->name, "SET_VRING_KICK: queue %u without a kick fd (polling) is not supported",
                i);
        return -EPROTO;
    }
    if (ring_stop(v, i) < 0) {
        close(fd);
        return -ETIMEDOUT;
    }
    close_fd(&vr->kick_fd);
    vr->kick_fd = fd;
    vr->kick_set = true;
    return ring_try_start(v, i);
}

static int h_set_vring_call(struct vblk_vu_dev *v)
{
    struct vu_vring *vr;
    unsigned i;
    int fd, r;

    if (vring_fd_msg(v, &i, &fd) < 0)
        return -EPROTO;
    vr = &v->vrings[i];
    r = vblk_blk_queue_set_call(v->blk, i, fd); /* the I/O thread lets go of the old fd */
    if (r == -ETIMEDOUT) {
        wedge(v); /* it may still signal the old fd and now the new one: keep both */
        return r;
    }
    close_fd(&vr->call_fd);
    vr->call_fd = fd;
    return r;
}

static int h_set_vring_err(struct vblk_vu_dev *v)
{
    struct vu_vring *vr;
    bool was;
    unsigned i;
    int fd;

    if (vring_fd_msg(v, &i, &fd) < 0)
        return -EPROTO;
    vr = &v->vrings[i];
    was = vr->started;
    if (ring_stop(v, i) < 0) { /* rare: restart the ring so the I/O thread sees the new fd */
        if (fd >= 0)
            close(fd);
        return -ETIMEDOUT;
    }
    close_fd(&vr->err_fd);
    vr->err_fd = fd;
    return was ? ring_try_start(v, i) : 0;
}

static int h_set_vring_enable(struct vblk_vu_dev *v)
{
    const struct vhost_user_vring_state *s = &v->msg.payload.state;
    struct vu_vring *vr;

    if (need_size(v, sizeof(*s)) < 0 || vring_index(v, s->index) < 0)
        return -EPROTO;
    if (s->num > 1)
        return PROTO_ERR(v, "SET_VRING_ENABLE: queue %u value %u", s->index, s->num);
    vr = &v->vrings[s->index];
    vr->enabled = s->num;
    if (!vr->enabled)
        return ring_stop(v, s->index);
    return ring_try_start(v, s->index);
}

static int h_get_config(struct vblk_vu_dev *v)
{
    struct vhost_user_config c = v->msg.payload.config;
    struct virtio_blk_config cfg;
    uint8_t space[VHOST_USER_MAX_CONFIG_SIZE] = {0};

    if (v->msg.hdr.size < VHOST_USER_CONFIG_HDR_SIZE || c.size > VHOST_USER_MAX_CONFIG_SIZE ||
        c.offset > VHOST_USER_MAX_CONFIG_SIZE - c.size ||
        v->msg.hdr.size != VHOST_USER_CONFIG_HDR_SIZE + c.size)
        return PROTO_ERR(v, "GET_CONFIG: bad offset %u / size %u / payload %u", c.offset, c.size,
                         v->msg.hdr.size);
    vblk_blk_config(v->blk, &cfg);
    memcpy(space, &cfg, sizeof(cfg));
    memcpy(c.region, space + c.offset, c.size);
    return send_reply(v, &c, VHOST_USER_CONFIG_HDR_SIZE + c.size);
}

static int h_set_config(struct vblk_vu_dev *v)
{
    const struct vhost_user_config *c = &v->msg.payload.config;

    if (v->msg.hdr.size < VHOST_USER_CONFIG_HDR_SIZE || c->size > VHOST_USER_MAX_CONFIG_SIZE ||
        c->offset > VHOST_USER_MAX_CONFIG_SIZE - c->size ||
        v->msg.hdr.size != VHOST_USER_CONFIG_HDR_SIZE + c->size)
        return PROTO_ERR(v, "SET_CONFIG: bad offset %u / size %u / payload %u", c->offset, c->size,
                         v->msg.hdr.size);
    if (vblk_blk_set_config(v->blk, c->offset, c->region, c->size) < 0)
        return PROTO_ERR(v, "SET_CONFIG: %u bytes at offset %u are not writable", c->size,
                         c->offset);
    return 0;
}

/* SET_BACKEND_REQ_FD: the socket on which we send the front-end requests (config changes). */
static int h_set_backend_req_fd(struct vblk_vu_dev *v)
{
    struct stat st;
    int r = need_fds(v, 1);

    if (r < 0)
        return r;
    if (!(v->protocol_features & (1ull << VHOST_USER_PROTOCOL_F_BACKEND_REQ)))
        return PROTO_ERR(v, "SET_BACKEND_REQ_FD without the BACKEND_REQ protocol feature");
    if (fstat(v->fds[0], &st) < 0 || !S_ISSOCK(st.st_mode))
        return PROTO_ERR(v, "SET_BACKEND_REQ_FD: the file descriptor is not a socket");
    close_fd(&v->backend_fd);
    v->backend_fd = v->fds[0];
    v->fds[0] = -1; /* taken */
    return 0;
}

int vblk_vu_config_changed(struct vblk_vu_dev *v)
{
    struct vhost_user_hdr h = {
        .request = VHOST_USER_BACKEND_CONFIG_CHANGE_MSG,
        .flags = VHOST_USER_VERSION,
        .size = 0,
    };
    ssize_t n;

    if (v->conn_fd < 0)
        return 0;
    if (v->backend_fd < 0)
        return -ENOTCONN;
    /* never wait: the front-end reads its back-end channel from its own main loop */
    n = send(v->backend_fd, &h, sizeof(h), MSG_DONTWAIT | MSG_NOSIGNAL);
    if (n != (ssize_t)sizeof(h)) {
        int r = n < 0 ? -errno : -EIO;

        log_err(v->name, "cannot tell the front-end its config changed: %s", strerror(-r));
        return r;
    }
    log_info(v->name, "told the front-end its config changed");
    return 0;
}

/* Handle the message in v->msg with v->fds.  0 or -errno (the caller closes the connection). */
static int dispatch(struct vblk_vu_dev *v)
{
    uint32_t req = v->msg.hdr.request;
    int r;

    log_dbg(v->name, "%s (%u bytes, %u fds)", vhost_user_request_name(req), v->msg.hdr.size,
            v->nfds);
    /* only fd-carrying messages may carry fds (REM_MEM_REG: tolerated and closed) */
    if (v->nfds && req != VHOST_USER_SET_MEM_TABLE && req != VHOST_USER_ADD_MEM_REG &&
        req != VHOST_USER_REM_MEM_REG && req != VHOST_USER_SET_VRING_KICK &&
        req != VHOST_USER_SET_INFLIGHT_FD && req != VHOST_USER_SET_LOG_BASE &&
        req != VHOST_USER_SET_LOG_FD && req != VHOST_USER_SET_VRING_CALL &&
        req != VHOST_USER_SET_VRING_ERR && req != VHOST_USER_SET_BACKEND_REQ_FD)
        return PROTO_ERR(v, "%s: unexpected file descriptors", vhost_user_request_name(req));

    switch (req) {
    case VHOST_USER_GET_FEATURES:
        return reply_u64(v, offered_features(v));
    case VHOST_USER_SET_FEATURES:
        r = h_set_features(v);
        break;
    case VHOST_USER_SET_OWNER:
        r = 0;
        break;
    case VHOST_USER_RESET_OWNER:
        reset_state(v);
        r = 0;
        break;
    case VHOST_USER_GET_PROTOCOL_FEATURES:
        return reply_u64(v, VBLK_VU_PROTOCOL_FEATURES);
    case VHOST_USER_SET_PROTOCOL_FEATURES:
        r = h_set_protocol_features(v);
        break;
    case VHOST_USER_GET_QUEUE_NUM:
        return reply_u64(v, v->nvrings);
    case VHOST_USER_GET_MAX_MEM_SLOTS:
        return reply_u64(v, VBLK_MEM_SLOTS_MAX);
    case VHOST_USER_SET_MEM_TABLE:
        r = h_set_mem_table(v);
        break;
    case VHOST_USER_ADD_MEM_REG:
        r = h_add_mem_reg(v);
        break;
    case VHOST_USER_REM_MEM_REG:
        r = h_rem_mem_reg(v);
        break;
    case VHOST_USER_SET_VRING_NUM:
        r = h_set_vring_num(v);
        break;
    case VHOST_USER_SET_VRING_ADDR:
        r = h_set_vring_addr(v);
        break;
    case VHOST_USER_SET_VRING_BASE:
        r = h_set_vring_base(v);
        break;
    case VHOST_USER_GET_VRING_BASE:
        return h_get_vring_base(v);
    case VHOST_USER_SET_VRING_KICK:
        r = h_set_vring_kick(v);
        break;
    case VHOST_USER_SET_VRING_CALL:
        r = h_set_vring_call(v);
        break;
    case VHOST_USER_SET_VRING_ERR:
        r = h_set_vring_err(v);
        break;
    case VHOST_USER_SET_VRING_ENABLE:
        r = h_set_vring_enable(v);
        break;
    case VHOST_USER_GET_CONFIG:
        return h_get_config(v);
    case VHOST_USER_GET_INFLIGHT_FD:
        return h_get_inflight_fd(v);
    case VHOST_USER_SET_INFLIGHT_FD:
        r = h_set_inflight_fd(v);
        break;
    case VHOST_USER_SET_LOG_BASE:
        return h_set_log_base(v);
    case VHOST_USER_SET_LOG_FD:
        r = need_fds(v, 1); /* an eventfd to signal log changes with: not needed, closed */
        break;
    case VHOST_USER_SET_CONFIG:
        r = h_set_config(v);
        break;
    case VHOST_USER_SET_BACKEND_REQ_FD:
        r = h_set_backend_req_fd(v);
        break;
    default:
        return PROTO_ERR(v, "unsupported request %u (%s)", req, vhost_user_request_name(req));
    }
    if (r < 0)
        return r;
    if ((v->msg.hdr.flags & VHOST_USER_NEED_REPLY) &&
        (v->protocol_features & (1ull << VHOST_USER_PROTOCOL_F_REPLY_ACK)))
        return reply_u64(v, 0);
    return 0;
}

/* ---- connection ---- */

int vblk_vu_attach(struct vblk_vu_dev *v, int fd)
{
    if (v->wedged)
        return -EIO;
    if (v->conn_fd >= 0)
        return -EBUSY;
    v->conn_fd = fd;
    v->have = 0;
    v->nfds = 0;
    (void)vblk_mem_owner_lost(&v->mem_owner); /* a verdict on the last front-end's memory */
    log_info(v->name, "front-end connected");
    return 0;
}

void vblk_vu_disconnect(struct vblk_vu_dev *v)
{
    if (v->conn_fd < 0)
        return;
    reset_state(v);
    close_msg_fds(v);
    close(v->conn_fd);
    v->conn_fd = -1;
    v->have = 0;
    log_info(v->name, "front-end disconnected");
}

/* Receive up to want bytes at the end of the message buffer, collecting fds. */
static int recv_part(struct vblk_vu_dev *v, uint32_t want)
{
    bool overflow = false;
    ssize_t n = vblk_recv_fds(v->conn_fd, (char *)&v->msg + v->have, want, v->fds, &v->nfds,
                              VHOST_USER_MAX_FDS, &overflow, MSG_DONTWAIT);

    if (n == -EAGAIN || n == -EWOULDBLOCK)
        return -EAGAIN;
    if (n < 0)
        return (int)n;
    if (overflow)
        return PROTO_ERR(v, "too many file descriptors with one message");
    if (n == 0)
        return -ECONNRESET;
    v->have += (uint32_t)n;
    return 0;
}

bool vblk_vu_check_lost_memory(struct vblk_vu_dev *v)
{
    if (v->conn_fd < 0 || !__atomic_load_n(&v->mem_owner.lost, __ATOMIC_ACQUIRE))
        return false;
    log_err(v->name, "closing the front-end connection: it took guest memory away under a "
                     "running ring");
    vblk_vu_disconnect(v); /* logs the replaced region */
    return true;
}

int vblk_vu_readable(struct vblk_vu_dev *v)
{
    unsigned budget = VBLK_VU_MSG_BUDGET;
    int r;

    while (budget) {
        uint32_t want;

        if (v->have < VHOST_USER_HDR_SIZE)
            want = VHOST_USER_HDR_SIZE - v->have;
        else
            want = VHOST_USER_HDR_SIZE + v->msg.hdr.size - v->have;
        if (want) {
            r = recv_part(v, want);
            if (r == -EAGAIN)
                return 0;
            if (r < 0)
                goto close;
        }
        if (v->have == VHOST_USER_HDR_SIZE) {
            if ((v->msg.hdr.flags & VHOST_USER_VERSION_MASK) != VHOST_USER_VERSION) {
                r = PROTO_ERR(v, "message with protocol version %u",
                              v->msg.hdr.flags & VHOST_USER_VERSION_MASK);
                goto close;
            }
            if (v->msg.hdr.size > VHOST_USER_PAYLOAD_MAX) {
                r = PROTO_ERR(v, "%s: payload of %u bytes is too large",
                              vhost_user_request_name(v->msg.hdr.request), v->msg.hdr.size);
                goto close;
            }
        }
        if (v->have >= VHOST_USER_HDR_SIZE && v->have == VHOST_USER_HDR_SIZE + v->msg.hdr.size) {
            r = dispatch(v);
            close_msg_fds(v);
            v->have = 0;
            budget--;
            if (r < 0)
                goto close;
        }
    }
    return 0; /* more may be waiting: the fd stays readable and the caller comes back */
close:
    if (r != -ECONNRESET)
        log_err(v->name, "closing the front-end connection after an error");
    vblk_vu_disconnect(v);
    return r;
}
