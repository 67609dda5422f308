/* vhost_client.h - front-end side of the vhost-user control protocol.
 *
 * Owns: the unix socket to the back-end, message framing (header + payload + SCM_RIGHTS fds),
 * REPLY_ACK handling, and feature / protocol-feature negotiation state.  Knows nothing about
 * virtio-blk requests; it only configures memory and vrings.
 */
#ifndef VBLK_BENCH_VHOST_CLIENT_H
#define VBLK_BENCH_VHOST_CLIENT_H

#include <stdbool.h>
#include <stdint.h>

struct vhost_client {
    int sock;
    bool verbose;
    uint64_t dev_features; /* offered by GET_FEATURES */
    uint64_t features;     /* acked with SET_FEATURES */
    uint64_t dev_protocol; /* offered by GET_PROTOCOL_FEATURES (0 if not supported) */
    uint64_t protocol;     /* acked with SET_PROTOCOL_FEATURES */
    uint32_t queue_num;    /* GET_QUEUE_NUM, 1 without PROTOCOL_F_MQ */
};

static inline bool vhc_has_feature(const struct vhost_client *c, unsigned bit)
{
    return c->features & (1ull << bit);
}

static inline bool vhc_has_protocol(const struct vhost_client *c, unsigned bit)
{
    return c->protocol & (1ull << bit);
}

int vhc_connect(struct vhost_client *c, const char *path, bool verbose);
void vhc_close(struct vhost_client *c);

/* GET_FEATURES, GET/SET_PROTOCOL_FEATURES, GET_QUEUE_NUM, SET_OWNER. */
int vhc_handshake(struct vhost_client *c);
/* Reads @size bytes of device config (needs PROTOCOL_F_CONFIG).  -ENOTSUP if unavailable. */
int vhc_get_config(struct vhost_client *c, void *buf, uint32_t size);
/* SET_FEATURES with @wanted & offered (PROTOCOL_FEATURES is added automatically if offered). */
int vhc_set_features(struct vhost_client *c, uint64_t wanted);
int vhc_set_mem_table(struct vhost_client *c, int fd, uint64_t size, void *addr);
int vhc_setup_vring(struct vhost_client *c, uint32_t idx, uint32_t num, uint32_t base, void *desc,
                    void *avail, void *used, int kickfd, int callfd);
int vhc_enable_vring(struct vhost_client *c, uint32_t idx, bool enable);
int vhc_get_vring_base(struct vhost_client *c, uint32_t idx, uint32_t *base);

const char *vhc_request_name(uint32_t req);

#endif
