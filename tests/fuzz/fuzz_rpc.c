/* fuzz_rpc.c - libFuzzer target: hostile control-socket requests against the request decoder
 * (rpc.c), the export-key schema (options.c, from JSON) and the daemon's methods (daemon.c).
 *
 * Input: one request line.  It goes through vblk_rpc_handle_line with the daemon's own methods
 * on a daemon serving one null export "f" (no front-end), except that export-add only decodes
 * and checks its keys (a fuzzer must not create sockets or open files at random paths) and
 * export-del and shutdown are left out (the export must stay for the next input).  Every
 * response must be one line of valid JSON-RPC.  Anything but a crash, a leak or a sanitizer
 * report is fine.  Seeds: tests/fuzz/corpus/rpc/.
 */
#include <json-c/json.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "control/daemon.h"
#include "control/rpc.h"
#include "mem/guest_mem.h"
#include "util/log.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

static struct vblk_daemon *d;
static struct vblk_rpc_method methods[8];

static int decode_only_add(void *ctx, struct json_object *params, struct json_object **result,
                           char *err, size_t errlen)
{
    struct vblk_export_opts *o = malloc(sizeof(*o));
    int r;

    if (!o)
        return VBLK_RPC_FAILED;
    vblk_opts_defaults(o);
    r = vblk_opts_from_json(params, o, NULL, err, errlen);
    if (r == 0)
        *result = vblk_opts_to_json(o);
    free(o);
    return r ? VBLK_RPC_INVALID_PARAMS : 0;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    struct vblk_daemon_conf c = {.rpc_uid = (uid_t)-1, .rpc_gid = (gid_t)-1};
    static char dir[] = "/tmp/vblk-fuzz-rpc.XXXXXX";
    struct vblk_export_opts o;
    char err[512], arg[256];
    unsigned n = 0;

    vblk_log_level = VBLK_LOG_ERR;
    if (!mkdtemp(dir) || vblk_mem_sigbus_guard_install() < 0 ||
        vblk_daemon_create(&d, &c, err, sizeof(err)) < 0)
        abort();
    snprintf(arg, sizeof(arg), "id=f,file=null://1G,socket=%s/f.sock,num-queues=2", dir);
    vblk_opts_defaults(&o);
    if (vblk_opts_parse_export(arg, &o, err, sizeof(err)) < 0 ||
        vblk_daemon_add_export(d, &o, err, sizeof(err)) < 0) {
        fprintf(stderr, "%s\n", err);
        abort();
    }
    for (const struct vblk_rpc_method *m = vblk_daemon_methods; m->name; m++) {
        if (!strcmp(m->name, "export-del") || !strcmp(m->name, "shutdown"))
            continue;
        methods[n] = *m;
        if (!strcmp(m->name, "export-add"))
            methods[n].fn = decode_only_add;
        n++;
    }
    methods[n].name = NULL;
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *resp;
    struct json_object *o;
    size_t n;

    if (size > VBLK_RPC_MAX_LINE)
        return 0;
    resp = vblk_rpc_handle_line(methods, d, (const char *)data, size);
    if (!resp)
        return 0; /* a notification */
    n = strlen(resp);
    if (n == 0 || resp[n - 1] != '\n' || memchr(resp, '\n', n - 1))
        abort(); /* not one line */
    o = json_tokener_parse(resp);
    if (!o || !json_object_object_get_ex(o, "jsonrpc", NULL))
        abort(); /* not JSON-RPC */
    json_object_put(o);
    free(resp);
    return 0;
}
