/* test_stats.c - the latency histogram and its percentiles, the Prometheus text format, the
 * --metrics address parser and the HTTP endpoint (served in-process, no thread). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "blk/virtio_blk.h"
#include "control/metrics.h"
#include "util/buf.h"
#include "util/lathist.h"

/* ---- histogram layout ---- */

static void test_small_values_have_their_own_bucket(void **state)
{
    for (uint64_t v = 0; v < VBLK_LAT_SUB; v++) {
        assert_int_equal(vblk_lat_bucket(v), v);
        assert_int_equal(vblk_lat_bucket_lo((unsigned)v), v);
        assert_int_equal(vblk_lat_bucket_hi((unsigned)v), v + 1);
    }
}

static void test_buckets_tile_the_range(void **state)
{
    for (unsigned b = 0; b + 1 < VBLK_LAT_BUCKETS; b++) {
        uint64_t lo = vblk_lat_bucket_lo(b), hi = vblk_lat_bucket_hi(b);

        assert_true(lo < hi);
        assert_int_equal(hi, vblk_lat_bucket_lo(b + 1)); /* no gap, no overlap */
        assert_int_equal(vblk_lat_bucket(lo), b);
        assert_int_equal(vblk_lat_bucket(hi - 1), b);
        if (b >= VBLK_LAT_SUB)
            assert_true((hi - lo) * VBLK_LAT_SUB <= lo); /* at most 12.5% wide */
    }
    /* powers of two start a bucket: the metrics' le bounds are exact */
    for (unsigned k = VBLK_LAT_SUB_BITS; k < VBLK_LAT_MAX_EXP; k++)
        assert_int_equal(vblk_lat_bucket_lo(vblk_lat_bucket(1ull << k)), 1ull << k);
}

static void test_huge_values_go_to_the_last_bucket(void **state)
{
    assert_int_equal(vblk_lat_bucket((1ull << VBLK_LAT_MAX_EXP) - 1), VBLK_LAT_BUCKETS - 1);
    assert_int_equal(vblk_lat_bucket(1ull << VBLK_LAT_MAX_EXP), VBLK_LAT_BUCKETS - 1);
    assert_int_equal(vblk_lat_bucket(UINT64_MAX), VBLK_LAT_BUCKETS - 1);
    assert_int_equal(vblk_lat_bucket_hi(VBLK_LAT_BUCKETS - 1), UINT64_MAX);
}

/* ---- percentiles ---- */

static void record(struct vblk_lat_hist *h, uint64_t ns)
{
    h->bucket[vblk_lat_bucket(ns)]++;
    h->sum_ns += ns;
    if (ns > h->max_ns)
        h->max_ns = ns;
}

static void test_empty_histogram(void **state)
{
    static struct vblk_lat_hist h;
    struct vblk_lat_pct p;

    assert_int_equal(vblk_lat_count(&h), 0);
    assert_int_equal(vblk_lat_quantile(&h, 0.5), 0);
    assert_int_equal(vblk_lat_quantile(&h, 1.0), 0);
    vblk_lat_percentiles(&h, &p);
    assert_int_equal(p.count, 0);
    assert_true(p.p50 == 0 && p.p999 == 0 && p.max == 0);
}

static void test_one_value_is_every_percentile(void **state)
{
    static struct vblk_lat_hist h;
    struct vblk_lat_pct p;

    record(&h, 1000); /* bucket [960, 1024): clamped to the max */
    assert_int_equal(vblk_lat_quantile(&h, 0.001), 1000);
    assert_int_equal(vblk_lat_quantile(&h, 0.5), 1000);
    assert_int_equal(vblk_lat_quantile(&h, 1.0), 1000);
    vblk_lat_percentiles(&h, &p);
    assert_int_equal(p.count, 1);
    assert_true(p.p50 == 1.0 && p.p90 == 1.0 && p.p99 == 1.0 && p.p999 == 1.0 && p.max == 1.0);
}

static void test_exact_below_eight(void **state)
{
    static struct vblk_lat_hist h;

    for (uint64_t v = 0; v < 8; v++)
        record(&h, v); /* 0..7: one each */
    assert_int_equal(vblk_lat_quantile(&h, 0.125), 0);
    assert_int_equal(vblk_lat_quantile(&h, 0.25), 1);
    assert_int_equal(vblk_lat_quantile(&h, 0.5), 3);
    assert_int_equal(vblk_lat_quantile(&h, 0.51), 4); /* rank ceil(4.08) = 5 */
    assert_int_equal(vblk_lat_quantile(&h, 1.0), 7);
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

    return x < y ? -1 : x > y;
}

/* Against the exact quantiles of random data spread over six decades: never below the true
 * value, at most 12.5% above it. */
static void test_quantiles_within_bucket_precision(void **state)
{
    static struct vblk_lat_hist h;
    static uint64_t v[100000];
    const double qs[] = {0.01, 0.1, 0.5, 0.9, 0.99, 0.999, 0.9999};
    const unsigned n = sizeof(v) / sizeof(v[0]);
    uint64_t seed = 12345;

    for (unsigned i = 0; i < n; i++) {
        seed = seed * 6364136223846793005ull + 1442695040888963407ull;
        /* 100 ns times 2^0..2^19 (to 52 ms), times 1 to 2 */
        uint64_t base = 100ull << ((seed >> 40) % 20);

        v[i] = base + ((base * ((seed >> 8) & 0xffff)) >> 16);
        record(&h, v[i]);
    }
    qsort(v, n, sizeof(v[0]), cmp_u64);
    assert_int_equal(vblk_lat_count(&h), n);
    for (unsigned i = 0; i < sizeof(qs) / sizeof(qs[0]); i++) {
        uint64_t rank = (uint64_t)(qs[i] * n + 0.999999), exact = v[rank - 1];
        uint64_t got = vblk_lat_quantile(&h, qs[i]);

        assert_true(got >= exact);
        assert_true((double)got <= (double)exact * 1.125 + 1);
    }
    assert_int_equal(vblk_lat_quantile(&h, 1.0), v[n - 1]);
}

static void test_add_merges(void **state)
{
    static struct vblk_lat_hist a, b, sum;

    record(&a, 10);
    record(&a, 5000);
    record(&b, 70000);
    vblk_lat_add(&sum, &a);
    vblk_lat_add(&sum, &b);
    assert_int_equal(vblk_lat_count(&sum), 3);
    assert_int_equal(sum.sum_ns, 75010);
    assert_int_equal(sum.max_ns, 70000);
    assert_int_equal(vblk_lat_quantile(&sum, 0.34), vblk_lat_bucket_hi(vblk_lat_bucket(5000)) - 1);
}

/* ---- buffers ---- */

static void test_buf_grows(void **state)
{
    struct vblk_buf b = {0};
    char *p;
    size_t len;

    for (unsigned i = 0; i < 10000; i++)
        vblk_buf_printf(&b, "%u,", i % 10);
    assert_false(b.oom);
    assert_int_equal(b.len, 20000);
    assert_int_equal(strlen(b.p), 20000);
    vblk_buf_append(&b, "xyz", 3);
    p = vblk_buf_take(&b, &len);
    assert_int_equal(len, 20003);
    assert_string_equal(p + 19998, "9,xyz");
    assert_null(b.p);
    free(p);
    p = vblk_buf_take(&b, &len); /* nothing appended: an empty string */
    assert_non_null(p);
    assert_int_equal(len, 0);
    assert_string_equal(p, "");
    free(p);
}

/* ---- the text format ---- */

static struct vblk_blk_stats qs[2];

static char *render_two_exports(size_t *len)
{
    struct vblk_metrics_out out = {0};
    struct vblk_blk_stats total = {0};

    memset(qs, 0, sizeof(qs));
    qs[0].ops[VBLK_OP_READ] = 5;
    qs[0].bytes[VBLK_OP_READ] = 5 * 4096;
    qs[0].ops[VBLK_OP_FLUSH] = 2;
    qs[0].errors = 1;
    qs[0].inflight = 3;
    record(&qs[0].lat[VBLK_LAT_READ], 1000);         /* < 2^10 ns */
    record(&qs[0].lat[VBLK_LAT_READ], 3000);         /* < 2^12 */
    record(&qs[0].lat[VBLK_LAT_READ], 100ull << 30); /* above the last le: +Inf only */
    qs[1].ops[VBLK_OP_WRITE] = 7;
    qs[1].bytes[VBLK_OP_WRITE] = 7 * 512;
    qs[1].unsupp = 4;
    qs[1].held = 2;
    qs[1].ignored = 9;
    total.throttled = 11;
    total.throttled_ns = 1500000000;
    vblk_metrics_format_export(&out, "d1", qs, 2, &total);
    vblk_metrics_format_export(&out, "we\"ird\\id\n", qs, 1, NULL);
    return vblk_metrics_render(&out, len);
}

static unsigned count_lines(const char *text, const char *prefix)
{
    unsigned n = 0;
    size_t pl = strlen(prefix);

    for (const char *p = text; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL) {
        if (!strncmp(p, prefix, pl))
            n++;
    }
    return n;
}

static void assert_line(const char *text, const char *line)
{
    char want[512];

    snprintf(want, sizeof(want), "\n%s\n", line);
    if (!strstr(text, want)) {
        fprintf(stderr, "missing line: %s\n", line);
        fail();
    }
}

static void test_format_samples(void **state)
{
    size_t len;
    char *t = render_two_exports(&len);

    assert_non_null(t);
    assert_int_equal(strlen(t), len);
    assert_line(t, "vblk_requests_total{export=\"d1\",queue=\"0\",op=\"read\"} 5");
    assert_line(t, "vblk_requests_total{export=\"d1\",queue=\"0\",op=\"flush\"} 2");
    assert_line(t, "vblk_requests_total{export=\"d1\",queue=\"1\",op=\"write\"} 7");
    assert_line(t, "vblk_requests_total{export=\"d1\",queue=\"1\",op=\"get-id\"} 0");
    assert_line(t, "vblk_bytes_total{export=\"d1\",queue=\"0\",op=\"read\"} 20480");
    assert_line(t, "vblk_bytes_total{export=\"d1\",queue=\"1\",op=\"write\"} 3584");
    assert_line(t, "vblk_errors_total{export=\"d1\",queue=\"0\"} 1");
    assert_line(t, "vblk_unsupported_total{export=\"d1\",queue=\"1\"} 4");
    assert_line(t, "vblk_held_total{export=\"d1\",queue=\"1\"} 2");
    assert_line(t, "vblk_ignored_total{export=\"d1\",queue=\"1\"} 9");
    assert_line(t, "vblk_inflight{export=\"d1\",queue=\"0\"} 3");
    assert_line(t, "vblk_throttled_total{export=\"d1\"} 11");
    assert_line(t, "vblk_throttled_seconds_total{export=\"d1\"} 1.500000000");
    /* flushes move no data: no bytes sample */
    assert_null(strstr(t, "vblk_bytes_total{export=\"d1\",queue=\"0\",op=\"flush\"}"));
    /* 7 types x 2 queues + 7 x 1 queue; bytes for 4 types */
    assert_int_equal(count_lines(t, "vblk_requests_total{"), 21);
    assert_int_equal(count_lines(t, "vblk_bytes_total{"), 12);
    /* the export without a total has no throttle samples */
    assert_int_equal(count_lines(t, "vblk_throttled_total{"), 1);
    free(t);
}

static void test_format_histogram(void **state)
{
    size_t len;
    char *t = render_two_exports(&len);
    const char *l = "export=\"d1\",queue=\"0\",op=\"read\"";
    char line[256];

    assert_non_null(t);
    snprintf(line, sizeof(line), "vblk_latency_seconds_bucket{%s,le=\"5.12e-07\"} 0", l);
    assert_line(t, line);
    snprintf(line, sizeof(line), "vblk_latency_seconds_bucket{%s,le=\"1.024e-06\"} 1", l);
    assert_line(t, line);
    snprintf(line, sizeof(line), "vblk_latency_seconds_bucket{%s,le=\"2.048e-06\"} 1", l);
    assert_line(t, line);
    snprintf(line, sizeof(line), "vblk_latency_seconds_bucket{%s,le=\"4.096e-06\"} 2", l);
    assert_line(t, line);
    snprintf(line, sizeof(line), "vblk_latency_seconds_bucket{%s,le=\"17.179869184\"} 2", l);
    assert_line(t, line);
    snprintf(line, sizeof(line), "vblk_latency_seconds_bucket{%s,le=\"+Inf\"} 3", l);
    assert_line(t, line);
    snprintf(line, sizeof(line), "vblk_latency_seconds_count{%s} 3", l);
    assert_line(t, line);
    snprintf(line, sizeof(line), "vblk_latency_seconds_sum{%s} 107.374186400", l);
    assert_line(t, line);
    /* 26 bounds + Inf, per class per queue: 4 classes x 3 queues */
    assert_int_equal(count_lines(t, "vblk_latency_seconds_bucket{"), 27 * 4 * 3);
    free(t);
}

static void test_format_help_and_type_once(void **state)
{
    size_t len;
    char *t = render_two_exports(&len);

    assert_non_null(t);
    assert_int_equal(count_lines(t, "# TYPE vblk_requests_total counter"), 1);
    assert_int_equal(count_lines(t, "# TYPE vblk_inflight gauge"), 1);
    assert_int_equal(count_lines(t, "# TYPE vblk_latency_seconds histogram"), 1);
    assert_int_equal(count_lines(t, "# HELP vblk_requests_total "), 1);
    assert_int_equal(count_lines(t, "# TYPE "), VBLK_METRICS_FAMILIES);
    assert_int_equal(count_lines(t, "# HELP "), VBLK_METRICS_FAMILIES);
    /* each family's samples follow its TYPE line: the second export's come before the next
     * family's HELP */
    assert_true(strstr(t, "vblk_requests_total{export=\"we") <
                strstr(t, "# HELP vblk_bytes_total"));
    assert_int_equal(t[len - 1], '\n');
    free(t);
}

static void test_format_escapes_label_values(void **state)
{
    size_t len;
    char *t = render_two_exports(&len);

    assert_non_null(t);
    assert_line(t, "vblk_errors_total{export=\"we\\\"ird\\\\id\\n\",queue=\"0\"} 1");
    free(t);
}

static void test_format_nothing(void **state)
{
    struct vblk_metrics_out out = {0};
    size_t len = 99;
    char *t = vblk_metrics_render(&out, &len);

    assert_non_null(t);
    assert_int_equal(len, 0);
    free(t);
}

/* ---- addresses ---- */

static void test_parse_addr(void **state)
{
    struct sockaddr_storage ss;
    struct sockaddr_in *a4 = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&ss;
    socklen_t len;
    char err[256];

    assert_int_equal(vblk_metrics_parse_addr("127.0.0.1:9100", &ss, &len, err, sizeof(err)), 0);
    assert_int_equal(ss.ss_family, AF_INET);
    assert_int_equal(ntohs(a4->sin_port), 9100);
    assert_int_equal(ntohl(a4->sin_addr.s_addr), 0x7f000001);
    assert_int_equal(len, sizeof(*a4));

    assert_int_equal(vblk_metrics_parse_addr("[::1]:80", &ss, &len, err, sizeof(err)), 0);
    assert_int_equal(ss.ss_family, AF_INET6);
    assert_int_equal(ntohs(a6->sin6_port), 80);
    assert_true(IN6_IS_ADDR_LOOPBACK(&a6->sin6_addr));

    assert_int_equal(vblk_metrics_parse_addr(":9100", &ss, &len, err, sizeof(err)), 0);
    assert_int_equal(ss.ss_family, AF_INET6);
    assert_true(IN6_IS_ADDR_UNSPECIFIED(&a6->sin6_addr));

    assert_int_equal(vblk_metrics_parse_addr("0.0.0.0:0", &ss, &len, err, sizeof(err)), 0);

    const char *bad[] = {"",
                         "9100",
                         "127.0.0.1",
                         "127.0.0.1:",
                         "1.2.3.4:x",
                         "1.2.3.4:70000",
                         "1.2.3.4:-1",
                         "1.2.3.4:+80",
                         "[::1]",
                         "[::1]9100",
                         "::1:9100",
                         "[1.2.3.4]:80",
                         "localhost:9100",
                         "[::1:80",
                         "1.2.3.4:99999999999999999999"};
    for (unsigned i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        err[0] = '\0';
        assert_int_equal(vblk_metrics_parse_addr(bad[i], &ss, &len, err, sizeof(err)), -EINVAL);
        assert_true(err[0] != '\0');
    }
}

/* ---- the HTTP endpoint, run in-process ---- */

static unsigned collects;

static void collect(struct vblk_metrics_out *out, void *opaque)
{
    static struct vblk_blk_stats s[1];

    collects++;
    s[0].ops[VBLK_OP_READ] = 42;
    vblk_metrics_format_export(out, opaque, s, 1, NULL);
}

static int connect_to(unsigned port)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

    assert_true(fd >= 0);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(fd, (struct sockaddr *)&a, sizeof(a)), 0); /* the backlog takes it */
    assert_int_equal(fcntl(fd, F_SETFL, O_NONBLOCK), 0);
    return fd;
}

/* Send req on fd, run the server until the client has the whole answer (server closes: HTTP/1.0)
 * or timeout_ms passes; returns the answer (static). */
static const char *exchange(struct vblk_metrics *m, int fd, const char *req, int timeout_ms)
{
    static char resp[1 << 20];
    size_t got = 0;
    struct timespec t0, t;

    if (req)
        assert_int_equal(write(fd, req, strlen(req)), (ssize_t)strlen(req));
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (;;) {
        struct pollfd p[2] = {{.fd = fd, .events = POLLIN},
                              {.fd = vblk_metrics_fd(m), .events = POLLIN}};
        int to = vblk_metrics_timeout_ms(m);
        ssize_t n;

        (void)poll(p, 2, to < 0 || to > 50 ? 50 : to);
        vblk_metrics_run(m);
        n = read(fd, resp + got, sizeof(resp) - 1 - got);
        if (n == 0)
            break;
        if (n > 0)
            got += (size_t)n;
        else
            assert_true(errno == EAGAIN);
        clock_gettime(CLOCK_MONOTONIC, &t);
        if ((t.tv_sec - t0.tv_sec) * 1000 + (t.tv_nsec - t0.tv_nsec) / 1000000 > timeout_ms)
            break;
    }
    resp[got] = '\0';
    return resp;
}

static void test_http_endpoint(void **state)
{
    struct vblk_metrics *m;
    char err[256];
    const char *r;
    int fd, idle;

    assert_int_equal(vblk_metrics_start(&m, "127.0.0.1:0", collect, "e0", err, sizeof(err)), 0);
    assert_true(vblk_metrics_port(m) > 0);

    /* a client that connects and says nothing does not keep others out */
    idle = connect_to(vblk_metrics_port(m));

    fd = connect_to(vblk_metrics_port(m));
    r = exchange(m, fd, "GET /metrics HTTP/1.0\r\n\r\n", 5000);
    assert_non_null(strstr(r, " 200 OK\r\n"));
    assert_non_null(strstr(r, "text/plain; version=0.0.4"));
    assert_non_null(strstr(r, "\nvblk_requests_total{export=\"e0\",queue=\"0\",op=\"read\"} 42\n"));
    close(fd);
    assert_int_equal(collects, 1);

    fd = connect_to(vblk_metrics_port(m));
    r = exchange(m, fd, "GET /other HTTP/1.0\r\n\r\n", 5000);
    assert_non_null(strstr(r, " 404 "));
    close(fd);

    fd = connect_to(vblk_metrics_port(m));
    r = exchange(m, fd, "POST /metrics HTTP/1.0\r\nContent-Length: 3\r\n\r\nabc", 5000);
    assert_non_null(strstr(r, " 405 "));
    assert_non_null(strstr(r, "Allow: GET"));
    close(fd);

    fd = connect_to(vblk_metrics_port(m));
    r = exchange(m, fd, "GARBAGE\r\n\r\n", 5000);
    /* MHD answers a bad request line with 400, or just closes */
    assert_true(r[0] == '\0' || strstr(r, " 400 "));
    close(fd);
    assert_int_equal(collects, 1);

    /* the idle client is dropped after the connection timeout */
    r = exchange(m, idle, NULL, (VBLK_METRICS_CONN_TIMEOUT_S + 3) * 1000);
    assert_string_equal(r, "");
    assert_int_equal(read(idle, err, 1), 0); /* closed by the server */
    close(idle);
    vblk_metrics_stop(m);
}

static void test_http_refuses_a_busy_port(void **state)
{
    struct vblk_metrics *m, *m2;
    char err[256], addr[64];

    assert_int_equal(vblk_metrics_start(&m, "127.0.0.1:0", collect, "e0", err, sizeof(err)), 0);
    snprintf(addr, sizeof(addr), "127.0.0.1:%u", vblk_metrics_port(m));
    assert_int_equal(vblk_metrics_start(&m2, addr, collect, "e0", err, sizeof(err)), -EADDRINUSE);
    assert_null(m2);
    assert_non_null(strstr(err, "cannot listen on"));
    assert_int_equal(vblk_metrics_start(&m2, "nonsense", collect, "e0", err, sizeof(err)), -EINVAL);
    vblk_metrics_stop(m);
    vblk_metrics_stop(NULL);
    assert_int_equal(vblk_metrics_timeout_ms(NULL), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_small_values_have_their_own_bucket),
        cmocka_unit_test(test_buckets_tile_the_range),
        cmocka_unit_test(test_huge_values_go_to_the_last_bucket),
        cmocka_unit_test(test_empty_histogram),
        cmocka_unit_test(test_one_value_is_every_percentile),
        cmocka_unit_test(test_exact_below_eight),
        cmocka_unit_test(test_quantiles_within_bucket_precision),
        cmocka_unit_test(test_add_merges),
        cmocka_unit_test(test_buf_grows),
        cmocka_unit_test(test_format_samples),
        cmocka_unit_test(test_format_histogram),
        cmocka_unit_test(test_format_help_and_type_once),
        cmocka_unit_test(test_format_escapes_label_values),
        cmocka_unit_test(test_format_nothing),
        cmocka_unit_test(test_parse_addr),
        cmocka_unit_test(test_http_endpoint),
        cmocka_unit_test(test_http_refuses_a_busy_port),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
