/* report.c - vblk-bench results: merging job stats and printing text or one JSON object. */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include <linux/virtio_ring.h>

#include "bench.h"

static double per_sec(uint64_t v, uint64_t ns)
{
    return ns ? (double)v * 1e9 / (double)ns : 0.0;
}

static void print_text_line(const char *name, const struct job_stats *s)
{
    const struct hist *h = &s->lat;

    printf("%-6s iops=%.0f bw=%.1fMB/s ios=%" PRIu64 " (r=%" PRIu64 " w=%" PRIu64
           ") errors=%" PRIu64
           " lat(us) avg=%.1f p50=%.1f p99=%.1f p99.9=%.1f max=%.1f runtime=%.2fs"
           " kicks=%" PRIu64 " waits=%" PRIu64 "\n",
           name, per_sec(s->ios, s->runtime_ns), per_sec(s->bytes, s->runtime_ns) / 1e6, s->ios,
           s->reads, s->writes, s->errors, h->count ? (double)h->sum / (double)h->count / 1e3 : 0.0,
           (double)hist_quantile(h, 0.5) / 1e3, (double)hist_quantile(h, 0.99) / 1e3,
           (double)hist_quantile(h, 0.999) / 1e3, (double)h->max / 1e3, (double)s->runtime_ns / 1e9,
           s->kicks, s->waits);
}

static void print_json_stats(const struct job_stats *s)
{
    const struct hist *h = &s->lat;

    printf("\"iops\": %.1f, \"bw_bytes\": %.0f, \"lat_ns\": {\"avg\": %.0f, \"min\": %" PRIu64
           ", \"p50\": %" PRIu64 ", \"p99\": %" PRIu64 ", \"p999\": %" PRIu64 ", \"max\": %" PRIu64
           "}, \"ios\": %" PRIu64 ", \"reads\": %" PRIu64 ", \"writes\": %" PRIu64
           ", \"errors\": %" PRIu64 ", \"runtime_s\": %.3f, \"kicks\": %" PRIu64
           ", \"waits\": %" PRIu64 ", \"len_warnings\": %" PRIu64,
           per_sec(s->ios, s->runtime_ns), per_sec(s->bytes, s->runtime_ns),
           h->count ? (double)h->sum / (double)h->count : 0.0, h->count ? h->min : 0,
           hist_quantile(h, 0.5), hist_quantile(h, 0.99), hist_quantile(h, 0.999), h->max, s->ios,
           s->reads, s->writes, s->errors, (double)s->runtime_ns / 1e9, s->kicks, s->waits,
           s->len_warnings);
}

void print_json(const struct options *o, const struct device *d, const struct job *jobs,
                const struct job_stats *total, const struct verify_sum *v, int err)
{
    static const char *const vnames[] = {"off", "both", "write", "read"};

    printf("{");
    print_json_stats(total);
    printf(", \"error\": %s%s%s", err ? "\"" : "null", err ? strerror(-err) : "", err ? "\"" : "");
    printf(", \"verify\": {\"mode\": \"%s\", \"blocks\": %" PRIu64
           ", \"mismatched_blocks\": %" PRIu64 ", \"mismatched_bytes\": %" PRIu64
           ", \"first_mismatch_offset\": ",
           vnames[o->cfg.verify], v->blocks, v->bad_blocks, v->bad_bytes);
    if (v->first == UINT64_MAX)
        printf("null}");
    else
        printf("%" PRIu64 "}", v->first);
    printf(", \"config\": {\"rw\": \"%s\", \"rwmixread\": %u, \"bs\": %u, \"iodepth\": %u, "
           "\"numjobs\": %u, \"queue_size\": %u, \"mode\": \"%s\", \"range_bytes\": %" PRIu64 "}",
           rw_name(o->cfg.rw), o->cfg.rwmixread, o->cfg.bs, o->cfg.iodepth, o->numjobs,
           o->queue_size, o->cfg.poll ? "poll" : "wait", o->cfg.range);
    printf(", \"device\": {\"capacity_bytes\": %" PRIu64 ", \"blk_size\": %u, \"queues\": %u, "
           "\"features\": \"0x%" PRIx64 "\", \"protocol_features\": \"0x%" PRIx64 "\", "
           "\"event_idx\": %s, \"indirect\": %s, \"packed\": %s}",
           d->capacity, d->blk_size, d->queues, d->vhc.features, d->vhc.protocol,
           vhc_has_feature(&d->vhc, VIRTIO_RING_F_EVENT_IDX) ? "true" : "false",
           vhc_has_feature(&d->vhc, VIRTIO_RING_F_INDIRECT_DESC) ? "true" : "false",
           vhc_has_feature(&d->vhc, VIRTIO_F_RING_PACKED) ? "true" : "false");
    printf(", \"jobs\": [");
    for (unsigned i = 0; i < o->numjobs; i++) {
        printf("%s{\"job\": %u, ", i ? ", " : "", i);
        print_json_stats(&jobs[i].stats);
        printf("}");
    }
    printf("]}\n");
}

void print_text(const struct options *o, const struct device *d, const struct job *jobs,
                const struct job_stats *total, const struct verify_sum *v)
{
    char name[16];

    static const char *const vnames[] = {"", "verify", "verify(write)", "verify(read)"};

    printf("vblk-bench: %s bs=%u iodepth=%u numjobs=%u %s, %s%s%s, capacity %" PRIu64 " bytes\n",
           o->cfg.verify != VERIFY_OFF ? vnames[o->cfg.verify] : rw_name(o->cfg.rw), o->cfg.bs,
           o->cfg.iodepth, o->numjobs, o->cfg.poll ? "poll" : "wait",
           vhc_has_feature(&d->vhc, VIRTIO_RING_F_EVENT_IDX) ? "event_idx" : "no event_idx",
           vhc_has_feature(&d->vhc, VIRTIO_RING_F_INDIRECT_DESC) ? ", indirect" : "",
           vhc_has_feature(&d->vhc, VIRTIO_F_RING_PACKED) ? ", packed" : "", d->capacity);
    for (unsigned i = 0; i < o->numjobs && o->numjobs > 1; i++) {
        snprintf(name, sizeof(name), "job%u", i);
        print_text_line(name, &jobs[i].stats);
    }
    print_text_line("total", total);
    if (o->cfg.verify != VERIFY_OFF && o->cfg.verify != VERIFY_WRITE_ONLY)
        printf("verify: %" PRIu64 " blocks checked, %" PRIu64 " mismatched (%" PRIu64 " bytes)%s\n",
               v->blocks, v->bad_blocks, v->bad_bytes, v->bad_blocks ? " FAILED" : ", OK");
    if (total->len_warnings)
        printf("warning: %" PRIu64 " completions reported a used length shorter than the data "
               "written\n",
               total->len_warnings);
}

void summarize(const struct options *o, const struct job *jobs, struct job_stats *total,
               struct verify_sum *v)
{
    stats_init(total);
    memset(v, 0, sizeof(*v));
    v->first = UINT64_MAX;
    for (unsigned i = 0; i < o->numjobs; i++) {
        stats_merge(total, &jobs[i].stats);
        v->blocks += jobs[i].verify_blocks;
        v->bad_blocks += jobs[i].mismatched_blocks;
        v->bad_bytes += jobs[i].mismatched_bytes;
        if (jobs[i].first_mismatch < v->first)
            v->first = jobs[i].first_mismatch;
    }
}
