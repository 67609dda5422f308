/* vhost_client.c - vhost-user front-end: socket framing, negotiation, memory and vring setup. */
#include "vhost_client.h"
#include "util/unixfd.h"

#include "vhost/vhost_user_proto.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include <linux/virtio_config.h>

#define VHC_REPLY_TIMEOUT_S 10

/* Protocol features vblk-bench understands. */
#define VHC_PROTOCOL_WANTED                                                                        \
    ((1ull << VHOST_USER_PROTOCOL_F_MQ) | (1ull << VHOST_USER_PROTOCOL_F_REPLY_ACK) |              \
     (1ull << VHOST_USER_PROTOCOL_F_CONFIG))

const char *vhc_request_name(uint32_t req)
{
    return vhost_user_request_name(req);
}

int vhc_connect(struct vhost_client *c, const char *path, bool verbose)
{
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    struct timeval tv = {.tv_sec = VHC_REPLY_TIMEOUT_S};
    int ret;

    memset(c, 0, sizeof(*c));
    c->verbose = verbose;
    c->queue_num = 1;
    if (strlen(path) >= sizeof(addr.sun_path))
        return -ENAMETOOLONG;
    strcpy(addr.sun_path, path);

    c->sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (c->sock < 0)
        return -errno;
    /* A back-end that never answers must not hang the benchmark forever. */
    if (setsockopt(c->sock, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) < 0)
        goto err_errno;
    if (connect(c->sock, (struct sockaddr *)&addr, sizeof(addr)) < 0)
        goto err_errno;
    return 0;

err_errno:
    ret = -errno;
    close(c->sock);
    c->sock = -1;
    return ret;
}

void vhc_close(struct vhost_client *c)
{
    if (c->sock >= 0)
        close(c->sock);
    c->sock = -1;
}

static int vhc_send(struct vhost_client *c, uint32_t req, uint32_t flags, const void *payload,
                    uint32_t size, const int *fds, int nfds)
{
    struct vhost_user_msg msg;
    size_t total, done = 0;

    if (size > VHOST_USER_PAYLOAD_MAX || nfds > VHOST_USER_MAX_FDS)
        return -EINVAL;
    memset(&msg, 0, sizeof(msg.hdr));
    msg.hdr.request = req;
    msg.hdr.flags = VHOST_USER_VERSION | flags;
    msg.hdr.size = size;
    if (size)
        memcpy(&msg.payload, payload, size);
    total = VHOST_USER_HDR_SIZE + size;
    if (c->verbose)
        fprintf(stderr, "vhost-user: -> %s (size %u, %d fds)\n", vhc_request_name(req), size, nfds);

    while (done < total) {
        /* fds travel with the first byte only */
        ssize_t n = vblk_send_fds(c->sock, (uint8_t *)&msg + done, total - done, fds,
                                  done ? 0 : (unsigned)nfds, 0);

        if (n == -EINTR)
            continue;
        if (n < 0)
            return (int)n;
        done += (size_t)n;
    }
    return 0;
}

/* Reads exactly @len bytes; any fds the back-end attaches are closed (we never expect any). */
static int vhc_read_full(struct vhost_client *c, void *buf, size_t len)
{
    size_t done = 0;

    while (done < len) {
        int fds[VHOST_USER_MAX_FDS];
        unsigned nfds = 0;
        bool overflow = false;
        ssize_t n = vblk_recv_fds(c->sock, (uint8_t *)buf + done, len - done, fds, &nfds,
                                  VHOST_USER_MAX_FDS, &overflow, 0);

        for (unsigned i = 0; i < nfds; i++)
            close(fds[i]);
        if (n == -EINTR)
            continue;
        if (n < 0)
            return n == -EAGAIN ? -ETIMEDOUT : (int)n;
        if (n == 0)
            return -ECONNRESET;
        done += (size_t)n;
    }
    return 0;
}

/* Receives the reply to @req into @payload (capacity VHOST_USER_PAYLOAD_MAX); *size = its size. */
static int vhc_recv_reply(struct vhost_client *c, uint32_t req, void *payload, uint32_t *size)
{
    struct vhost_user_hdr hdr;
    int ret;

    ret = vhc_read_full(c, &hdr, sizeof(hdr));
    if (ret < 0)
        return ret;
    if (hdr.request != req || !(hdr.flags & VHOST_USER_REPLY_MASK) ||
        (hdr.flags & VHOST_USER_VERSION_MASK) != VHOST_USER_VERSION ||
        hdr.size > VHOST_USER_PAYLOAD_MAX) {
        fprintf(stderr, "vhost-user: bad reply to %s: request %u flags 0x%x size %u\n",
                vhc_request_name(req), hdr.request, hdr.flags, hdr.size);
        return -EPROTO;
    }
    if (hdr.size) {
        ret = vhc_read_full(c, payload, hdr.size);
        if (ret < 0)
            return ret;
    }
    *size = hdr.size;
    if (c->verbose)
        fprintf(stderr, "vhost-user: <- %s reply (size %u)\n", vhc_request_name(req), hdr.size);
    return 0;
}

/* Sends a request that has no reply of its own; waits for the REPLY_ACK when negotiated. */
static int vhc_request(struct vhost_client *c, uint32_t req, const void *payload, uint32_t size,
                       const int *fds, int nfds)
{
    bool ack = vhc_has_protocol(c, VHOST_USER_PROTOCOL_F_REPLY_ACK);
    union vhost_user_payload reply;
    uint32_t rsize;
    int ret;

    ret = vhc_send(c, req, ack ? VHOST_USER_NEED_REPLY : 0, payload, size, fds, nfds);
    if (ret < 0 || !ack)
        return ret;
    ret = vhc_recv_reply(c, req, &reply, &rsize);
    if (ret < 0)
        return ret;
    if (rsize != sizeof(uint64_t))
        return -EPROTO;
    if (reply.u64 != 0) {
        fprintf(stderr, "vhost-user: back-end rejected %s (ack 0x%llx)\n", vhc_request_name(req),
                (unsigned long long)reply.u64);
        return -EREMOTEIO;
    }
    return 0;
}

static int vhc_get_u64(struct vhost_client *c, uint32_t req, uint64_t *val)
{
    union vhost_user_payload reply;
    uint32_t rsize;
    int ret;

    ret = vhc_send(c, req, 0, NULL, 0, NULL, 0);
    if (ret < 0)
        return ret;
    ret = vhc_recv_reply(c, req, &reply, &rsize);
    if (ret < 0)
        return ret;
    if (rsize != sizeof(uint64_t))
        return -EPROTO;
    *val = reply.u64;
    return 0;
}

static int vhc_set_u64(struct vhost_client *c, uint32_t req, uint64_t val)
{
    return vhc_request(c, req, &val, sizeof(val), NULL, 0);
}

int vhc_handshake(struct vhost_client *c)
{
    uint64_t qnum;
    int ret;

    ret = vhc_get_u64(c, VHOST_USER_GET_FEATURES, &c->dev_features);
    if (ret < 0)
        return ret;
    if (!(c->dev_features & (1ull << VIRTIO_F_VERSION_1))) {
        fprintf(stderr, "vhost-user: back-end does not offer VIRTIO_F_VERSION_1\n");
        return -ENOTSUP;
    }
    if (c->dev_features & (1ull << VHOST_USER_F_PROTOCOL_FEATURES)) {
        ret = vhc_get_u64(c, VHOST_USER_GET_PROTOCOL_FEATURES, &c->dev_protocol);
        if (ret < 0)
            return ret;
        /* protocol stays 0 until the back-end has seen the SET (so no REPLY_ACK on it). */
        ret =
            vhc_set_u64(c, VHOST_USER_SET_PROTOCOL_FEATURES, c->dev_protocol & VHC_PROTOCOL_WANTED);
        if (ret < 0)
            return ret;
        c->protocol = c->dev_protocol & VHC_PROTOCOL_WANTED;
    }
    if (vhc_has_protocol(c, VHOST_USER_PROTOCOL_F_MQ)) {
        ret = vhc_get_u64(c, VHOST_USER_GET_QUEUE_NUM, &qnum);
        if (ret < 0)
            return ret;
        if (qnum == 0 || qnum > 0xffff)
            return -EPROTO;
        c->queue_num = (uint32_t)qnum;
    }
    return vhc_request(c, VHOST_USER_SET_OWNER, NULL, 0, NULL, 0);
}

int vhc_get_config(struct vhost_client *c, void *buf, uint32_t size)
{
    struct vhost_user_config cfg = {.offset = 0, .size = size, .flags = 0};
    union vhost_user_payload reply;
    uint32_t rsize;
    int ret;

    if (!vhc_has_protocol(c, VHOST_USER_PROTOCOL_F_CONFIG))
        return -ENOTSUP;
    if (size > VHOST_USER_MAX_CONFIG_SIZE)
        return -EINVAL;
    ret = vhc_send(c, VHOST_USER_GET_CONFIG, 0, &cfg, VHOST_USER_CONFIG_HDR_SIZE + size, NULL, 0);
    if (ret < 0)
        return ret;
    ret = vhc_recv_reply(c, VHOST_USER_GET_CONFIG, &reply, &rsize);
    if (ret < 0)
        return ret;
    /* A back-end signals failure with a reply of a different (usually zero) size. */
    if (rsize != VHOST_USER_CONFIG_HDR_SIZE + size || reply.config.size != size)
        return -EREMOTEIO;
    memcpy(buf, reply.config.region, size);
    return 0;
}

int vhc_set_features(struct vhost_client *c, uint64_t wanted)
{
    uint64_t f = (wanted | (1ull << VHOST_USER_F_PROTOCOL_FEATURES)) & c->dev_features;
    int ret;

    ret = vhc_set_u64(c, VHOST_USER_SET_FEATURES, f);
    if (ret == 0)
        c->features = f;
    return ret;
}

int vhc_set_mem_table(struct vhost_client *c, int fd, uint64_t size, void *addr)
{
    struct vhost_user_memory mem;

    memset(&mem, 0, sizeof(mem));
    mem.nregions = 1;
    mem.regions[0].guest_phys_addr = 0;
    mem.regions[0].memory_size = size;
    mem.regions[0].userspace_addr = (uint64_t)(uintptr_t)addr;
    mem.regions[0].mmap_offset = 0;
    return vhc_request(c, VHOST_USER_SET_MEM_TABLE, &mem,
                       (uint32_t)(8 + sizeof(struct vhost_user_mem_region)), &fd, 1);
}

static int vhc_set_state(struct vhost_client *c, uint32_t req, uint32_t idx, uint32_t num)
{
    struct vhost_user_vring_state st = {.index = idx, .num = num};

    return vhc_request(c, req, &st, sizeof(st), NULL, 0);
}

static int vhc_set_vring_fd(struct vhost_client *c, uint32_t req, uint32_t idx, int fd)
{
    uint64_t val = idx & VHOST_USER_VRING_IDX_MASK;

    if (fd < 0)
        return vhc_request(c, req, &(uint64_t){val | VHOST_USER_VRING_NOFD_MASK}, 8, NULL, 0);
    return vhc_request(c, req, &val, sizeof(val), &fd, 1);
}

int vhc_setup_vring(struct vhost_client *c, uint32_t idx, uint32_t num, uint32_t base, void *desc,
                    void *avail, void *used, int kickfd, int callfd)
{
    struct vhost_user_vring_addr addr = {
        .index = idx,
        .flags = 0,
        .desc_user_addr = (uint64_t)(uintptr_t)desc,
        .used_user_addr = (uint64_t)(uintptr_t)used,
        .avail_user_addr = (uint64_t)(uintptr_t)avail,
        .log_guest_addr = 0,
    };
    int ret;

    ret = vhc_set_state(c, VHOST_USER_SET_VRING_NUM, idx, num);
    if (ret == 0)
        ret = vhc_set_state(c, VHOST_USER_SET_VRING_BASE, idx, base);
    if (ret == 0)
        ret = vhc_request(c, VHOST_USER_SET_VRING_ADDR, &addr, sizeof(addr), NULL, 0);
    if (ret == 0)
        ret = vhc_set_vring_fd(c, VHOST_USER_SET_VRING_KICK, idx, kickfd);
    if (ret == 0)
        ret = vhc_set_vring_fd(c, VHOST_USER_SET_VRING_CALL, idx, callfd);
    return ret;
}

int vhc_enable_vring(struct vhost_client *c, uint32_t idx, bool enable)
{
    /* Without PROTOCOL_FEATURES rings start enabled and the message does not exist. */
    if (!vhc_has_feature(c, VHOST_USER_F_PROTOCOL_FEATURES))
        return 0;
    return vhc_set_state(c, VHOST_USER_SET_VRING_ENABLE, idx, enable ? 1 : 0);
}

int vhc_get_vring_base(struct vhost_client *c, uint32_t idx, uint32_t *base)
{
    struct vhost_user_vring_state st = {.index = idx, .num = 0};
    union vhost_user_payload reply;
    uint32_t rsize;
    int ret;

    ret = vhc_send(c, VHOST_USER_GET_VRING_BASE, 0, &st, sizeof(st), NULL, 0);
    if (ret < 0)
        return ret;
    ret = vhc_recv_reply(c, VHOST_USER_GET_VRING_BASE, &reply, &rsize);
    if (ret < 0)
        return ret;
    if (rsize != sizeof(st) || reply.state.index != idx)
        return -EPROTO;
    *base = reply.state.num;
    return 0;
}
