/* test_rpc.c - the control socket: the JSON-RPC envelope (rpc.c), the daemon's methods on real
 * exports (daemon.c, null:// and file exports, no front-end), the config file, and the server
 * over a real unix socket (framing, caps, several clients). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "control/daemon.h"
#include "control/rpc.h"
#include "mem/guest_mem.h"

static char dir[] = "/tmp/vblk-test-rpc.XXXXXX";

/* ---- the envelope, with a method table of our own ---- */

static int calls;

static int m_echo(void *ctx, struct json_object *params, struct json_object **result, char *err,
                  size_t errlen)
{
    calls++;
    *result = json_object_get(params);
    return 0;
}

static int m_fail(void *ctx, struct json_object *params, struct json_object **result, char *err,
                  size_t errlen)
{
    calls++;
    snprintf(err, errlen, "export x: it broke");
    return VBLK_RPC_FAILED;
}

static const struct vblk_rpc_method test_methods[] = {
    {"echo", m_echo},
    {"fail", m_fail},
    {NULL, NULL},
};

/* Send line to methods; parse the response (NULL if none). */
static struct json_object *call_with(const struct vblk_rpc_method *m, void *ctx, const char *line)
{
    char *resp = vblk_rpc_handle_line(m, ctx, line, strlen(line));
    struct json_object *o;
    size_t n;

    if (!resp)
        return NULL;
    n = strlen(resp);
    assert_true(n > 0 && resp[n - 1] == '\n');
    assert_null(memchr(resp, '\n', n - 1)); /* one line */
    o = json_tokener_parse(resp);
    assert_non_null(o);
    free(resp);
    return o;
}

static int error_code(struct json_object *resp)
{
    struct json_object *e, *c;

    if (!json_object_object_get_ex(resp, "error", &e))
        return 0;
    assert_true(json_object_object_get_ex(e, "code", &c));
    return json_object_get_int(c);
}

static const char *error_msg(struct json_object *resp)
{
    struct json_object *e, *m;

    assert_true(json_object_object_get_ex(resp, "error", &e));
    assert_true(json_object_object_get_ex(e, "message", &m));
    return json_object_get_string(m);
}

static void expect_code(const char *line, int code)
{
    struct json_object *r = call_with(test_methods, NULL, line);

    assert_non_null(r);
    if (error_code(r) != code)
        fail_msg("'%s': got %s, expected code %d", line, json_object_to_json_string(r), code);
    json_object_put(r);
}

static void test_envelope(void **state)
{
    struct json_object *r, *v;

    r = call_with(test_methods, NULL,
                  "{\"jsonrpc\":\"2.0\",\"id\":7,\"method\":\"echo\",\"params\":{\"a\":1}}");
    assert_int_equal(error_code(r), 0);
    assert_true(json_object_object_get_ex(r, "id", &v));
    assert_int_equal(json_object_get_int(v), 7);
    assert_true(json_object_object_get_ex(r, "result", &v));
    assert_true(json_object_object_get_ex(v, "a", &v));
    assert_int_equal(json_object_get_int(v), 1);
    json_object_put(r);
    /* string ids come back as strings; no params is an empty object */
    r = call_with(test_methods, NULL, "{\"jsonrpc\":\"2.0\",\"id\":\"x\",\"method\":\"echo\"}");
    assert_true(json_object_object_get_ex(r, "id", &v));
    assert_string_equal(json_object_get_string(v), "x");
    assert_true(json_object_object_get_ex(r, "result", &v));
    assert_int_equal(json_object_object_length(v), 0);
    json_object_put(r);
    /* a notification runs and gets no answer */
    calls = 0;
    assert_null(call_with(test_methods, NULL, "{\"jsonrpc\":\"2.0\",\"method\":\"echo\"}"));
    assert_int_equal(calls, 1);
}

static void test_bad_requests(void **state)
{
    expect_code("not json", VBLK_RPC_PARSE_ERROR);
    expect_code("{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"echo\"", VBLK_RPC_PARSE_ERROR);
    expect_code("{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"echo\"} trailing",
                VBLK_RPC_PARSE_ERROR);
    expect_code("[{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"echo\"}]", VBLK_RPC_INVALID_REQUEST);
    expect_code("\"a string\"", VBLK_RPC_INVALID_REQUEST);
    expect_code("{\"id\":1,\"method\":\"echo\"}", VBLK_RPC_INVALID_REQUEST);
    expect_code("{\"jsonrpc\":\"1.0\",\"id\":1,\"method\":\"echo\"}", VBLK_RPC_INVALID_REQUEST);
    expect_code("{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":5}", VBLK_RPC_INVALID_REQUEST);
    expect_code("{\"jsonrpc\":\"2.0\",\"id\":{},\"method\":\"echo\"}", VBLK_RPC_INVALID_REQUEST);
    expect_code("{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"echo\",\"x\":1}",
                VBLK_RPC_INVALID_REQUEST);
    expect_code("{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"nope\"}", VBLK_RPC_METHOD_NOT_FOUND);
    expect_code("{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"echo\",\"params\":[1]}",
                VBLK_RPC_INVALID_PARAMS);
    expect_code("{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"fail\"}", VBLK_RPC_FAILED);
    /* nesting deeper than the tokenizer allows is a parse error, not a stack overflow */
    {
        char deep[4096];
        size_t n = 0;

        n += (size_t)snprintf(
            deep, sizeof(deep),
            "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"echo\",\"params\":{\"a\":");
        for (int i = 0; i < 1000; i++)
            deep[n++] = '[';
        deep[n] = '\0';
        expect_code(deep, VBLK_RPC_PARSE_ERROR);
    }
}

/* ---- the daemon's methods on real exports ---- */

static struct vblk_daemon *daemon_;
static int next_id;

static struct json_object *dcall(const char *method, const char *params_fmt, ...)
{
    char params[2048], line[4096];
    va_list ap;

    va_start(ap, params_fmt);
    vsnprintf(params, sizeof(params), params_fmt, ap);
    va_end(ap);
    snprintf(line, sizeof(line), "{\"jsonrpc\":\"2.0\",\"id\":%d,\"method\":\"%s\",\"params\":%s}",
             ++next_id, method, params);
    return call_with(vblk_daemon_methods, daemon_, line);
}

static struct json_object *result_of(struct json_object *r)
{
    struct json_object *v;

    if (!json_object_object_get_ex(r, "result", &v))
        fail_msg("expected a result: %s", json_object_to_json_string(r));
    return v;
}

static struct json_object *member(struct json_object *o, const char *path)
{
    char buf[128], *save = NULL;
    struct json_object *v = o;

    snprintf(buf, sizeof(buf), "%s", path);
    for (char *t = strtok_r(buf, ".", &save); t; t = strtok_r(NULL, ".", &save)) {
        if (json_object_is_type(v, json_type_array))
            v = json_object_array_get_idx(v, (size_t)atoi(t));
        else if (!json_object_object_get_ex(v, t, &v))
            v = NULL;
        if (!v)
            fail_msg("no %s in %s", path, json_object_to_json_string(o));
    }
    return v;
}

static int daemon_setup(void **state)
{
    struct vblk_daemon_conf c = {.rpc_uid = (uid_t)-1, .rpc_gid = (gid_t)-1};
    char err[512];

    if (vblk_daemon_create(&daemon_, &c, err, sizeof(err)) < 0)
        fail_msg("%s", err);
    return 0;
}

static int daemon_teardown(void **state)
{
    vblk_daemon_destroy(daemon_);
    daemon_ = NULL;
    return 0;
}

static void expect_error(struct json_object *r, int code, const char *want)
{
    if (error_code(r) != code || !strstr(error_msg(r), want))
        fail_msg("got %s, expected code %d mentioning '%s'", json_object_to_json_string(r), code,
                 want);
    json_object_put(r);
}

static void test_export_lifecycle(void **state)
{
    struct json_object *r, *v;

    r = dcall("export-add",
              "{\"id\":\"n1\",\"file\":\"null://1G\",\"socket\":\"%s/n1.sock\",\"num-queues\":2,"
              "\"read-zeroes\":false}",
              dir);
    v = result_of(r);
    assert_string_equal(json_object_get_string(member(v, "id")), "n1");
    assert_string_equal(json_object_get_string(member(v, "state")), "listening");
    assert_string_equal(json_object_get_string(member(v, "driver")), "null");
    assert_int_equal(json_object_get_int64(member(v, "size")), 1ll << 30);
    assert_string_equal(json_object_get_string(member(v, "config.num-queues")), "2");
    assert_string_equal(json_object_get_string(member(v, "config.read-zeroes")), "off");
    assert_string_equal(json_object_get_string(member(v, "queues.1.thread")), "vblk-n1");
    json_object_put(r);

    /* the same id or socket again, bad keys, bad values */
    expect_error(
        dcall("export-add", "{\"id\":\"n1\",\"file\":\"null://1G\",\"socket\":\"%s/x.sock\"}", dir),
        VBLK_RPC_INVALID_PARAMS, "n1 exists already");
    expect_error(dcall("export-add",
                       "{\"id\":\"n2\",\"file\":\"null://1G\",\"socket\":\"%s/n1.sock\"}", dir),
                 VBLK_RPC_INVALID_PARAMS, "used by export n1");
    expect_error(
        dcall("export-add",
              "{\"id\":\"n2\",\"file\":\"null://1G\",\"socket\":\"%s/n2.sock\",\"colour\":\"red\"}",
              dir),
        VBLK_RPC_INVALID_PARAMS, "unknown key 'colour'");
    expect_error(
        dcall("export-add",
              "{\"id\":\"n2\",\"file\":\"null://1G\",\"socket\":\"%s/n2.sock\",\"num-queues\":[1]}",
              dir),
        VBLK_RPC_INVALID_PARAMS, "num-queues");
    expect_error(
        dcall("export-add",
              "{\"id\":\"n2\",\"file\":\"null://1G\",\"socket\":\"%s/n2.sock\",\"num-queues\":99}",
              dir),
        VBLK_RPC_INVALID_PARAMS, "num-queues='99'");
    expect_error(dcall("export-add", "{\"id\":\"n2\",\"socket\":\"%s/n2.sock\"}", dir),
                 VBLK_RPC_INVALID_PARAMS, "missing file=");
    expect_error(dcall("export-add",
                       "{\"id\":\"n2\",\"file\":\"%s/does-not-exist\",\"socket\":\"%s/n2.sock\"}",
                       dir, dir),
                 VBLK_RPC_FAILED, "export n2: cannot open");
    expect_error(
        dcall("export-add", "{\"id\":\"n2\",\"file\":\"%s\",\"socket\":\"%s/n2.sock\"}", dir, dir),
        VBLK_RPC_FAILED, "Is a directory");
    /* a failed add leaves nothing behind */
    r = dcall("export-list", "{}");
    assert_int_equal(json_object_array_length(member(result_of(r), "exports")), 1);
    json_object_put(r);

    /* export-list of one, of an unknown one */
    r = dcall("export-list", "{\"id\":\"n1\"}");
    {
        char want[256];

        snprintf(want, sizeof(want), "%s/n1.sock", dir);
        assert_string_equal(json_object_get_string(member(result_of(r), "exports.0.socket")), want);
    }
    json_object_put(r);
    expect_error(dcall("export-list", "{\"id\":\"zz\"}"), VBLK_RPC_INVALID_PARAMS,
                 "no such export");
}

static void test_export_set_resize_del(void **state)
{
    struct json_object *r, *v;
    char path[256];
    struct stat st;
    int fd;

    snprintf(path, sizeof(path), "%s/f.img", dir);
    fd = open(path, O_CREAT | O_RDWR | O_TRUNC, 0600);
    assert_true(fd >= 0);
    assert_int_equal(ftruncate(fd, 1 << 20), 0);
    close(fd);
    r = dcall("export-add",
              "{\"id\":\"f1\",\"file\":\"%s\",\"socket\":\"%s/f1.sock\",\"cache\":\"writeback\","
              "\"poll-us\":100}",
              path, dir);
    result_of(r);
    json_object_put(r);

    /* live keys */
    r = dcall("export-set", "{\"id\":\"f1\",\"poll-us\":\"300\",\"readonly\":true}");
    v = result_of(r);
    assert_string_equal(json_object_get_string(member(v, "config.poll-us")), "300");
    assert_string_equal(json_object_get_string(member(v, "config.readonly")), "on");
    json_object_put(r);
    expect_error(dcall("export-set", "{\"id\":\"f1\",\"readonly\":false}"), VBLK_RPC_INVALID_PARAMS,
                 "can be turned on live, not off");
    expect_error(dcall("export-set", "{\"id\":\"f1\",\"poll-us\":0}"), VBLK_RPC_INVALID_PARAMS,
                 "cannot be switched on or off");
    expect_error(dcall("export-set", "{\"id\":\"f1\",\"cache\":\"none\"}"), VBLK_RPC_INVALID_PARAMS,
                 "cache cannot be changed live");
    expect_error(dcall("export-set", "{\"id\":\"f1\",\"bogus\":1}"), VBLK_RPC_INVALID_PARAMS,
                 "bogus is not a key");
    expect_error(dcall("export-set", "{\"id\":\"zz\",\"poll-us\":1}"), VBLK_RPC_INVALID_PARAMS,
                 "export zz: no such export");
    expect_error(dcall("export-set", "{\"poll-us\":1}"), VBLK_RPC_INVALID_PARAMS, "\"id\"");

    /* resize: read-only now, so no truncate; without truncate the file must hold the size */
    expect_error(dcall("export-resize", "{\"id\":\"f1\",\"size\":\"2M\",\"truncate\":true}"),
                 VBLK_RPC_FAILED, "read-only");
    expect_error(dcall("export-resize", "{\"id\":\"f1\",\"size\":\"2M\"}"), VBLK_RPC_INVALID_PARAMS,
                 "fewer than");
    assert_int_equal(truncate(path, 4 << 20), 0); /* grown by someone else, e.g. qemu-img */
    r = dcall("export-resize", "{\"id\":\"f1\",\"size\":\"4M\"}");
    assert_int_equal(json_object_get_int64(member(result_of(r), "size")), 4 << 20);
    assert_false(json_object_get_boolean(member(result_of(r), "guest-notified")));
    json_object_put(r);
    r = dcall("export-list", "{\"id\":\"f1\"}");
    assert_int_equal(json_object_get_int64(member(result_of(r), "exports.0.size")), 4 << 20);
    json_object_put(r);
    expect_error(dcall("export-resize", "{\"id\":\"f1\",\"size\":1000}"), VBLK_RPC_INVALID_PARAMS,
                 "multiple of the 512-byte block size");
    expect_error(dcall("export-resize", "{\"id\":\"f1\",\"size\":-5}"), VBLK_RPC_INVALID_PARAMS,
                 "positive number");
    expect_error(dcall("export-resize", "{\"id\":\"f1\"}"), VBLK_RPC_INVALID_PARAMS,
                 "\"size\" is missing");

    /* a writable null export resizes without storage; a file one truncates */
    r = dcall("export-add", "{\"id\":\"n9\",\"file\":\"null://1M\",\"socket\":\"%s/n9.sock\"}",
              dir);
    json_object_put(r);
    r = dcall("export-resize", "{\"id\":\"n9\",\"size\":8388608}");
    assert_int_equal(json_object_get_int64(member(result_of(r), "size")), 8 << 20);
    json_object_put(r);

    /* stats of every export, then of one */
    r = dcall("stats", "{}");
    assert_int_equal(json_object_array_length(member(result_of(r), "exports")), 2);
    json_object_put(r);
    r = dcall("stats", "{\"id\":\"n9\"}");
    assert_string_equal(json_object_get_string(member(result_of(r), "exports.0.id")), "n9");
    assert_int_equal(json_object_get_int64(member(result_of(r), "exports.0.ops.read.ops")), 0);
    json_object_put(r);

    /* check-host: the host's findings (export null) and n9's, none of f1's */
    r = dcall("check-host", "{\"id\":\"n9\"}");
    {
        struct json_object *list = member(result_of(r), "findings"), *e;
        bool n9 = false;

        assert_true(json_object_array_length(list) > 0);
        for (size_t i = 0; i < json_object_array_length(list); i++) {
            assert_true(
                json_object_object_get_ex(json_object_array_get_idx(list, i), "export", &e));
            assert_true(!e || !strcmp(json_object_get_string(e), "n9"));
            if (e)
                n9 = true;
        }
        assert_true(n9);
    }
    json_object_put(r);
    expect_error(dcall("check-host", "{\"verbose\":true}"), VBLK_RPC_INVALID_PARAMS,
                 "unknown parameter");

    /* del: unknown, bad force, then for real; the socket goes away */
    expect_error(dcall("export-del", "{\"id\":\"nope\"}"), VBLK_RPC_INVALID_PARAMS,
                 "no such export");
    expect_error(dcall("export-del", "{\"id\":\"f1\",\"force\":\"yes\"}"), VBLK_RPC_INVALID_PARAMS,
                 "true or false");
    r = dcall("export-del", "{\"id\":\"f1\"}");
    result_of(r);
    json_object_put(r);
    snprintf(path, sizeof(path), "%s/f1.sock", dir);
    assert_int_equal(stat(path, &st), -1);
    r = dcall("export-list", "{}");
    assert_int_equal(json_object_array_length(member(result_of(r), "exports")), 1);
    json_object_put(r);
    r = dcall("export-del", "{\"id\":\"n9\"}");
    json_object_put(r);
    /* the id can be used again */
    r = dcall("export-add", "{\"id\":\"f1\",\"file\":\"null://1M\",\"socket\":\"%s/f1.sock\"}",
              dir);
    result_of(r);
    json_object_put(r);
    r = dcall("version", "{}");
    assert_string_equal(json_object_get_string(member(result_of(r), "version")), VBLK_VERSION);
    json_object_put(r);
    expect_error(dcall("version", "{\"x\":1}"), VBLK_RPC_INVALID_PARAMS, "unknown parameter");
}

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");

    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static void test_config_file(void **state)
{
    char path[256], text[1024], err[512];
    struct json_object *r;

    snprintf(path, sizeof(path), "%s/conf.json", dir);
    snprintf(text, sizeof(text),
             "{\"exports\": [{\"id\": \"c1\", \"file\": \"null://1M\", \"socket\": \"%s/c1.sock\"},"
             " {\"id\": \"c2\", \"file\": \"null://2M\", \"socket\": \"%s/c2.sock\", "
             "\"num-queues\": 4, \"readonly\": true}]}",
             dir, dir);
    write_file(path, text);
    assert_int_equal(vblk_daemon_load_config(daemon_, path, err, sizeof(err)), 0);
    assert_int_equal(vblk_daemon_num_exports(daemon_), 2);
    r = dcall("export-list", "{\"id\":\"c2\"}");
    assert_string_equal(json_object_get_string(member(result_of(r), "exports.0.config.readonly")),
                        "on");
    json_object_put(r);

    /* bad files say which file, which entry and what */
    write_file(path, "{\"exports\": [{\"id\": \"c3\", \"file\": \"null://1M\"}]}");
    assert_int_equal(vblk_daemon_load_config(daemon_, path, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "exports[0]: missing socket="));
    write_file(path, "{\"export\": []}");
    assert_int_equal(vblk_daemon_load_config(daemon_, path, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "unknown member \"export\""));
    write_file(path, "{\"exports\": {}}");
    assert_int_equal(vblk_daemon_load_config(daemon_, path, err, sizeof(err)), -EINVAL);
    write_file(path, "{\"exports\": [");
    assert_int_equal(vblk_daemon_load_config(daemon_, path, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "cannot read it as JSON"));
    assert_int_equal(vblk_daemon_num_exports(daemon_), 2);
}

/* ---- the server over a real socket ---- */

static int connect_to(const char *path)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
    assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    return fd;
}

/* Run the server until fd has a whole line (or closed); returns bytes read into buf. */
static ssize_t pump_read(struct vblk_rpc *srv, int fd, char *buf, size_t cap)
{
    size_t have = 0;

    for (int i = 0; i < 400; i++) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        ssize_t n;

        vblk_rpc_run(srv);
        if (poll(&p, 1, 5) == 1) {
            n = recv(fd, buf + have, cap - have - 1, MSG_DONTWAIT);
            if (n == 0)
                return have ? (ssize_t)have : 0;
            if (n > 0) {
                have += (size_t)n;
                buf[have] = '\0';
                if (memchr(buf, '\n', have))
                    return (ssize_t)have;
            }
        }
    }
    return -1;
}

static void test_server_socket(void **state)
{
    char path[256], buf[8192], err[256];
    struct vblk_rpc *srv;
    int a, b;

    snprintf(path, sizeof(path), "%s/ctl.sock", dir);
    assert_int_equal(vblk_rpc_start(&srv, path, 0600, (uid_t)-1, (gid_t)-1, test_methods, NULL, err,
                                    sizeof(err)),
                     0);
    a = connect_to(path);
    b = connect_to(path);
    /* two requests in one write, split oddly: two answers in order; CRLF tolerated */
    const char *two =
        "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"echo\"}\r\n{\"jsonrpc\":\"2.0\",\"id\":2,";
    assert_int_equal(send(a, two, strlen(two), 0), (ssize_t)strlen(two));
    assert_true(pump_read(srv, a, buf, sizeof(buf)) > 0);
    assert_non_null(strstr(buf, "\"id\":1"));
    assert_null(strstr(buf, "\"id\":2"));
    const char *rest = "\"method\":\"echo\"}\n";
    assert_int_equal(send(a, rest, strlen(rest), 0), (ssize_t)strlen(rest));
    /* the other client is served meanwhile */
    const char *q = "{\"jsonrpc\":\"2.0\",\"id\":9,\"method\":\"nope\"}\n";
    assert_int_equal(send(b, q, strlen(q), 0), (ssize_t)strlen(q));
    assert_true(pump_read(srv, b, buf, sizeof(buf)) > 0);
    assert_non_null(strstr(buf, "-32601"));
    assert_true(pump_read(srv, a, buf, sizeof(buf)) > 0);
    assert_non_null(strstr(buf, "\"id\":2"));

    /* a line over the cap closes that client only */
    {
        size_t n = VBLK_RPC_MAX_LINE + 16;
        char *big = malloc(n);

        memset(big, ' ', n);
        for (size_t off = 0; off < n;) {
            ssize_t w = send(a, big + off, n - off, MSG_DONTWAIT);

            if (w > 0)
                off += (size_t)w;
            vblk_rpc_run(srv);
            if (w < 0 && errno != EAGAIN)
                break;
        }
        free(big);
        assert_int_equal(pump_read(srv, a, buf, sizeof(buf)), 0); /* closed */
        close(a);
    }
    assert_int_equal(send(b, q, strlen(q), 0), (ssize_t)strlen(q));
    assert_true(pump_read(srv, b, buf, sizeof(buf)) > 0);

    /* more clients than slots: the longest idle one is closed, the new one served */
    {
        int fds[VBLK_RPC_MAX_CLIENTS + 1];

        for (int i = 0; i < VBLK_RPC_MAX_CLIENTS + 1; i++) {
            fds[i] = connect_to(path);
            vblk_rpc_run(srv);
        }
        assert_int_equal(send(fds[VBLK_RPC_MAX_CLIENTS], q, strlen(q), 0), (ssize_t)strlen(q));
        assert_true(pump_read(srv, fds[VBLK_RPC_MAX_CLIENTS], buf, sizeof(buf)) > 0);
        for (int i = 0; i < VBLK_RPC_MAX_CLIENTS + 1; i++)
            close(fds[i]);
    }
    close(b);
    vblk_rpc_stop(srv);
    assert_int_equal(access(path, F_OK), -1);
}

static int group_setup(void **state)
{
    if (!mkdtemp(dir))
        return -1;
    return vblk_mem_sigbus_guard_install() < 0 ? -1 : 0;
}

static int group_teardown(void **state)
{
    char cmd[128];

    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    return system(cmd) == 0 ? 0 : -1;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_envelope),
        cmocka_unit_test(test_bad_requests),
        cmocka_unit_test_setup_teardown(test_export_lifecycle, daemon_setup, daemon_teardown),
        cmocka_unit_test_setup_teardown(test_export_set_resize_del, daemon_setup, daemon_teardown),
        cmocka_unit_test_setup_teardown(test_config_file, daemon_setup, daemon_teardown),
        cmocka_unit_test(test_server_socket),
    };

    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
