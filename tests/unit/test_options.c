/* test_options.c - --export key=value parsing. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bdev/bdev.h"
#include "options.h"

#define BASE "id=d0,file=/tmp/x.img,socket=/tmp/x.sock"

static struct vblk_export_opts o;
static char err[512];

static int parse(const char *arg)
{
    vblk_opts_defaults(&o);
    err[0] = '\0';
    return vblk_opts_parse_export(arg, &o, err, sizeof(err));
}

/* arg must be rejected with a message containing want. */
static void assert_rejected(const char *arg, const char *want)
{
    int r = parse(arg);

    if (r != -EINVAL || !strstr(err, want))
        fail_msg("'%s': r=%d err='%s', expected -EINVAL mentioning '%s'", arg, r, err, want);
}

/* BASE plus ",key=value" must be rejected with a message naming key. */
static void assert_bad_value(const char *key, const char *value)
{
    char arg[512], want[128];

    snprintf(arg, sizeof(arg), BASE ",%s=%s", key, value);
    snprintf(want, sizeof(want), "%s=", key);
    assert_rejected(arg, want);
}

static void test_defaults(void **state)
{
    assert_int_equal(parse(BASE), 0);
    assert_string_equal(o.id, "d0");
    assert_string_equal(o.file, "/tmp/x.img");
    assert_string_equal(o.socket, "/tmp/x.sock");
    assert_false(o.readonly);
    assert_ptr_equal(o.engine, &vblk_engine_uring);
    assert_int_equal(o.cache, VBLK_CACHE_NONE);
    assert_int_equal(o.num_queues, 1);
    assert_int_equal(o.queue_size, 1024);
    assert_true(o.discard_unmap);
    assert_false(o.has_serial);
    assert_string_equal(o.serial, "d0"); /* serial defaults to the id */
    assert_int_equal(o.logical_block_size, 512);
    assert_false(o.null);
    assert_true(o.read_zeroes);
    assert_false(o.fixed_buffers); /* opt-in: pinned guest memory and ballooning do not mix */
    assert_int_equal(o.poll_us, VBLK_DEFAULT_POLL_US);
    assert_int_equal(o.iothreads, 1);
}

static void test_every_key_accepted(void **state)
{
    assert_int_equal(parse("type=vhost-user-blk,id=A-b_c.9,file=/dev/null,socket=/run/s.sock,"
                           "readonly=on,aio=native,cache=writethrough,num-queues=64,"
                           "queue-size=256,discard=ignore,serial=SN1,logical-block-size=4k,"
                           "read-zeroes=off,poll-us=0,iothreads=64,fixed-buffers=on"),
                     0);
    assert_string_equal(o.id, "A-b_c.9");
    assert_string_equal(o.file, "/dev/null");
    assert_string_equal(o.socket, "/run/s.sock");
    assert_true(o.readonly);
    assert_ptr_equal(o.engine, &vblk_engine_aio);
    assert_int_equal(o.cache, VBLK_CACHE_WRITETHROUGH);
    assert_int_equal(o.num_queues, 64);
    assert_int_equal(o.queue_size, 256);
    assert_false(o.discard_unmap);
    assert_true(o.has_serial);
    assert_string_equal(o.serial, "SN1");
    assert_int_equal(o.logical_block_size, 4096);
    assert_false(o.read_zeroes);
    assert_int_equal(o.poll_us, 0);
    assert_int_equal(o.iothreads, 64);
    assert_true(o.fixed_buffers);
}

static void test_value_spellings(void **state)
{
    static const char *const caches[] = {"none", "writeback", "writethrough", "directsync",
                                         "unsafe"};
    char arg[256];

    for (unsigned i = 0; i < 5; i++) {
        snprintf(arg, sizeof(arg), BASE ",cache=%s", caches[i]);
        assert_int_equal(parse(arg), 0);
        assert_int_equal(o.cache, i);
        assert_string_equal(vblk_cache_name(o.cache), caches[i]);
    }
    assert_int_equal(parse(BASE ",aio=io_uring"), 0);
    assert_ptr_equal(o.engine, &vblk_engine_uring);
    assert_int_equal(parse(BASE ",aio=threads"), 0);
    assert_ptr_equal(o.engine, &vblk_engine_threads);
    assert_int_equal(parse(BASE ",readonly=true"), 0);
    assert_true(o.readonly);
    assert_int_equal(parse(BASE ",readonly=yes,readonly=no"), 0);
    assert_false(o.readonly);
    assert_int_equal(parse(BASE ",readonly=false"), 0);
    assert_false(o.readonly);
    assert_int_equal(parse(BASE ",discard=off"), 0);
    assert_false(o.discard_unmap);
    assert_int_equal(parse(BASE ",discard=on"), 0);
    assert_true(o.discard_unmap);
    assert_int_equal(parse(BASE ",discard=unmap"), 0);
    assert_true(o.discard_unmap);
    assert_int_equal(parse(BASE ",num-queues=1,queue-size=2"), 0);
    assert_int_equal(o.queue_size, 2);
    assert_int_equal(parse(BASE ",queue-size=1024"), 0);
    assert_int_equal(parse(BASE ",logical-block-size=512"), 0);
    assert_int_equal(parse(BASE ",logical-block-size=64k"), 0);
    assert_int_equal(o.logical_block_size, 65536);
    assert_int_equal(parse(BASE ","), 0); /* trailing comma */
}

static void test_iothread_cpus(void **state)
{
    char buf[64];

    assert_int_equal(parse(BASE ",iothread-cpus=1"), 0);
    assert_int_equal(o.ncpus, 1);
    assert_int_equal(o.cpus[0], 1);
    assert_int_equal(parse(BASE ",iothread-cpus=0-2:5"), 0);
    assert_int_equal(o.ncpus, 4);
    assert_int_equal(o.cpus[3], 5);
    vblk_opts_get(&o, vblk_opt_find("iothread-cpus"), buf, sizeof(buf));
    assert_string_equal(buf, "0:1:2:5");
    assert_int_equal(parse(BASE ",iothread-cpus=1,,3"), 0); /* "1,3" */
    assert_int_equal(o.ncpus, 2);
    assert_bad_value("iothread-cpus", "");
    assert_bad_value("iothread-cpus", "a");
    assert_bad_value("iothread-cpus", "3-1");
    assert_bad_value("iothread-cpus", "1:");
    assert_bad_value("iothread-cpus", "4096");
    assert_bad_value("iothread-cpus", "0-100");
}

static void test_bad_values_name_the_key(void **state)
{
    assert_bad_value("readonly", "maybe");
    assert_bad_value("readonly", "");
    assert_bad_value("aio", "null");
    assert_bad_value("aio", "posix");
    assert_bad_value("cache", "none2");
    assert_bad_value("cache", "");
    assert_bad_value("num-queues", "0");
    assert_bad_value("num-queues", "65");
    assert_bad_value("num-queues", "-1");
    assert_bad_value("num-queues", "4x");
    assert_bad_value("num-queues", "");
    assert_bad_value("num-queues", "99999999999999999999999");
    assert_bad_value("queue-size", "1");
    assert_bad_value("queue-size", "2048");
    assert_bad_value("queue-size", "abc");
    assert_bad_value("discard", "maybe");
    assert_bad_value("logical-block-size", "256");
    assert_bad_value("logical-block-size", "1000");
    assert_bad_value("logical-block-size", "128k");
    assert_bad_value("logical-block-size", "4q");
    assert_bad_value("read-zeroes", "2");
    assert_bad_value("fixed-buffers", "yes please");
    assert_bad_value("poll-us", "-1");
    assert_bad_value("poll-us", "1000001");
    assert_bad_value("poll-us", "10ms");
    assert_bad_value("iothreads", "0");
    assert_bad_value("iothreads", "65");
    assert_rejected(BASE ",num-queues=2,iothreads=3", "iothreads=3");
    assert_bad_value("type", "vhost-user-scsi");
    assert_rejected("id=,file=/f,socket=/s", "id=");
    assert_rejected("id=a/b,file=/f,socket=/s", "id=");
    assert_rejected("id=a b,file=/f,socket=/s", "id=");
    assert_rejected("id=d,file=,socket=/s", "file=");
    assert_rejected("id=d,file=/f,socket=", "socket=");
}

static void test_queue_size_not_power_of_two_rejected(void **state)
{
    assert_bad_value("queue-size", "3");
    assert_bad_value("queue-size", "100");
    assert_bad_value("queue-size", "1000");
}

static void test_long_values_rejected(void **state)
{
    char arg[600], id[80], sock[140];

    memset(id, 'a', 64);
    id[64] = '\0';
    snprintf(arg, sizeof(arg), "id=%s,file=/f,socket=/s", id);
    assert_rejected(arg, "id=");
    id[63] = '\0';
    snprintf(arg, sizeof(arg), "id=%s,file=/f,socket=/s", id);
    assert_int_equal(parse(arg), 0);
    assert_string_equal(o.serial, "aaaaaaaaaaaaaaaaaaaa"); /* default serial: first 20 */

    memset(sock, 's', 108);
    sock[0] = '/';
    sock[108] = '\0';
    snprintf(arg, sizeof(arg), "id=d,file=/f,socket=%s", sock);
    assert_rejected(arg, "socket=");
    sock[107] = '\0';
    snprintf(arg, sizeof(arg), "id=d,file=/f,socket=%s", sock);
    assert_int_equal(parse(arg), 0);
}

static void test_serial_longer_than_20_rejected(void **state)
{
    assert_int_equal(parse(BASE ",serial=12345678901234567890"), 0);
    assert_string_equal(o.serial, "12345678901234567890");
    assert_bad_value("serial", "123456789012345678901");
}

static void test_missing_id_file_socket(void **state)
{
    assert_rejected("file=/f,socket=/s", "id=");
    assert_rejected("id=d,socket=/s", "file=");
    assert_rejected("id=d,file=/f", "socket=");
    assert_rejected("", "id=");
}

static void test_unknown_key(void **state)
{
    assert_rejected(BASE ",colour=blue", "unknown key 'colour'");
    assert_rejected(BASE ",ID=x", "unknown key 'ID'");
}

static void test_not_key_value(void **state)
{
    assert_rejected(BASE ",readonly", "'readonly' is not key=value");
    assert_rejected("id=d,,file=/f,socket=/s", "id="); /* id "d,file=/f": bad characters */
    assert_rejected(BASE ",=x", "empty key");
}

static void test_double_comma_is_a_literal_comma(void **state)
{
    assert_int_equal(parse("id=d,file=/tmp/a,,b.img,socket=/tmp/s,,,,t"), 0);
    assert_string_equal(o.file, "/tmp/a,b.img");
    assert_string_equal(o.socket, "/tmp/s,,t");
    assert_int_equal(parse("file=/x,,,id=d,socket=/s"), 0);
    assert_string_equal(o.file, "/x,");
    assert_string_equal(o.id, "d");
    assert_int_equal(parse(BASE ",serial=a,,b"), 0);
    assert_string_equal(o.serial, "a,b");
}

static void test_value_with_equals_sign(void **state)
{
    assert_int_equal(parse("id=d,file=/tmp/a=b,socket=/s"), 0);
    assert_string_equal(o.file, "/tmp/a=b");
}

static void test_null_file(void **state)
{
    assert_int_equal(parse("id=d,file=null://1G,socket=/s"), 0);
    assert_true(o.null);
    assert_int_equal(o.null_size, 1ull << 30);
    assert_ptr_equal(o.engine, &vblk_engine_null);
    assert_int_equal(parse("id=d,file=null://512,socket=/s,aio=threads"), 0);
    assert_int_equal(o.null_size, 512);
    assert_ptr_equal(o.engine, &vblk_engine_null); /* aio= does not apply to null */
    assert_int_equal(parse("id=d,file=null://4t,socket=/s"), 0);
    assert_int_equal(o.null_size, 4ull << 40);
    assert_rejected("id=d,file=null://,socket=/s", "file=");
    assert_rejected("id=d,file=null://511,socket=/s", "file=");
    assert_rejected("id=d,file=null://1X,socket=/s", "file=");
    assert_rejected("id=d,file=null://-1G,socket=/s", "file=");
    assert_rejected("id=d,file=null://99999999999t,socket=/s", "file=");
}

static void test_parse_size(void **state)
{
    uint64_t v = 0;

    assert_int_equal(vblk_parse_size("0", &v), 0);
    assert_int_equal(v, 0);
    assert_int_equal(vblk_parse_size("10k", &v), 0);
    assert_int_equal(v, 10240);
    assert_int_equal(vblk_parse_size("3M", &v), 0);
    assert_int_equal(v, 3ull << 20);
    assert_int_equal(vblk_parse_size("2g", &v), 0);
    assert_int_equal(v, 2ull << 30);
    assert_int_equal(vblk_parse_size("18446744073709551615", &v), 0);
    assert_int_equal(v, UINT64_MAX);
    assert_int_equal(vblk_parse_size("16777216t", &v), -EINVAL); /* 2^64 */
    assert_int_equal(vblk_parse_size("16777215t", &v), 0);
    assert_int_equal(vblk_parse_size("18446744073709551616", &v), -EINVAL);
    assert_int_equal(vblk_parse_size("", &v), -EINVAL);
    assert_int_equal(vblk_parse_size("k", &v), -EINVAL);
    assert_int_equal(vblk_parse_size("1kb", &v), -EINVAL);
    assert_int_equal(vblk_parse_size("-5", &v), -EINVAL);
}

/*
 * Regression (was a bug in src/): a later file= does not clear the null
 * flag set by an earlier file=null://SIZE, so "file=null://1G,file=/real.img" serves a null
 * device while o.file names the image.  src/options.c apply(), key "file": set o->null = false
 * before the null:// check (or reject repeated keys).
 */
static void test_repeated_file_key_last_one_wins(void **state)
{
    assert_int_equal(parse("id=d,file=null://1G,file=/tmp/real.img,socket=/s"), 0);
    assert_string_equal(o.file, "/tmp/real.img");
    assert_false(o.null);
    assert_ptr_equal(o.engine, &vblk_engine_uring);
}

/* bdev: opening the driver stack the options describe (null devices and a temp file) */
static int open_stack(struct vblk_bdev **b)
{
    struct vblk_bdev_conf c = vblk_opts_bdev_conf(&o);

    return vblk_bdev_open_stack(b, &c, err, sizeof(err));
}

static void test_bdev_open_null_and_file(void **state)
{
    struct vblk_bdev *b;
    char path[] = "/tmp/vblk-opt-XXXXXX", arg[256];
    int fd = mkstemp(path);

    assert_int_equal(parse("id=d,file=null://1000,socket=/s,discard=ignore"), 0);
    assert_int_equal(open_stack(&b), 0);
    assert_ptr_equal(b->ops, &vblk_bdev_throttle); /* always on top */
    assert_ptr_equal(b->child->ops, &vblk_bdev_null);
    assert_int_equal(b->size, 512); /* rounded down to the block size */
    assert_false(b->discard);
    assert_true(b->write_zeroes);
    vblk_bdev_close_stack(b);

    assert_true(fd >= 0);
    assert_int_equal(ftruncate(fd, 4096 + 100), 0);
    close(fd);
    snprintf(arg, sizeof(arg), "id=d,file=%s,socket=/s,cache=writeback,readonly=on", path);
    assert_int_equal(parse(arg), 0);
    assert_int_equal(open_stack(&b), 0);
    assert_ptr_equal(b->ops, &vblk_bdev_throttle);
    assert_ptr_equal(b->child->ops, &vblk_bdev_file);
    assert_int_equal(b->size, 4096);
    assert_true(b->readonly);
    assert_false(b->discard);
    assert_false(b->write_zeroes);
    assert_int_equal(vblk_bdev_flush_sync(b), 0);
    vblk_bdev_close_stack(b);

    assert_int_equal(truncate(path, 100), 0);
    snprintf(arg, sizeof(arg), "id=d,file=%s,socket=/s,cache=writeback", path);
    assert_int_equal(parse(arg), 0);
    assert_int_equal(open_stack(&b), -EINVAL);
    assert_non_null(strstr(err, path));
    unlink(path);
    assert_int_equal(parse("id=d,file=/nonexistent/x,socket=/s,cache=writeback"), 0);
    assert_int_equal(open_stack(&b), -ENOENT);
    assert_non_null(strstr(err, "/nonexistent/x"));
}

/*
 * Regression (was a bug in src/): file=null://512 with
 * logical-block-size=4k opens a null device of 0 bytes (capacity 0), while a regular file
 * smaller than one block is refused.  The null driver refuses size 0 like the file driver.
 */
static void test_null_device_smaller_than_a_block_rejected(void **state)
{
    struct vblk_bdev *b;

    assert_int_equal(parse("id=d,file=null://512,socket=/s,logical-block-size=4k"), 0);
    assert_int_equal(open_stack(&b), -EINVAL);
}

/* format=: raw and qcow2 per export; probing only for read-only exports (a raw image can pose
 * as any format); null:// is raw */
static void test_format_key(void **state)
{
    assert_int_equal(parse("id=d,file=/x.img,socket=/s"), 0);
    assert_int_equal(o.format, VBLK_FORMAT_RAW);
    assert_int_equal(parse("id=d,file=/x.img,socket=/s,format=qcow2"), 0);
    assert_int_equal(o.format, VBLK_FORMAT_QCOW2);
    assert_int_equal(parse("id=d,file=/x.img,socket=/s,format=raw"), 0);
    assert_int_equal(o.format, VBLK_FORMAT_RAW);
    assert_int_equal(parse("id=d,file=/x.img,socket=/s,format=auto"), -EINVAL);
    assert_non_null(strstr(err, "readonly=on"));
    assert_int_equal(parse("id=d,file=/x.img,socket=/s,format=auto,readonly=on"), 0);
    assert_int_equal(o.format, VBLK_FORMAT_AUTO);
    assert_int_equal(parse("id=d,file=/x.img,socket=/s,format=vmdk"), -EINVAL);
    assert_non_null(strstr(err, "format='vmdk'"));
    assert_int_equal(parse("id=d,file=null://1G,socket=/s,format=qcow2"), -EINVAL);
    assert_int_equal(parse("id=d,file=/x.img,socket=/s,l2-cache-size=4M,refcount-cache-size=1M"),
                     0);
    assert_int_equal(o.l2_cache_size, 4u << 20);
    assert_int_equal(o.refcount_cache_size, 1u << 20);
    assert_int_equal(parse("id=d,file=/x.img,socket=/s,l2-cache-size=lots"), -EINVAL);
}

/* rerror=/werror= (QEMU's defaults: report / enospc) and the inject-* fault rule */
static void test_error_policy_and_injection_keys(void **state)
{
    assert_int_equal(parse("id=d,file=/x.img,socket=/s"), 0);
    assert_int_equal(o.rerror, 0);
    assert_int_equal(o.werror, 3);
    assert_int_equal(o.fault.ops, 0);
    assert_int_equal(parse("id=d,file=/x.img,socket=/s,rerror=ignore,werror=stop"), 0);
    assert_int_equal(o.rerror, 1);
    assert_int_equal(o.werror, 2);
    assert_int_equal(parse("id=d,file=/x.img,socket=/s,werror=pause"), -EINVAL);
    assert_non_null(strstr(err, "werror='pause'"));
    assert_int_equal(parse("id=d,file=/x.img,socket=/s"), 0);
    assert_false(o.no_lock);
    assert_int_equal(parse("id=d,file=/x.img,socket=/s,locking=off"), 0);
    assert_true(o.no_lock);
    assert_int_equal(parse("id=d,file=/x.img,socket=/s,locking=maybe"), -EINVAL);
    assert_int_equal(parse("id=d,file=/x.img,socket=/s,inject-ops=write+flush,inject-errno=ENOSPC,"
                           "inject-offset=1M,inject-length=4k,inject-count=3"),
                     0);
    assert_int_equal(o.fault.ops, (1u << VBLK_BDEV_WRITE) | (1u << VBLK_BDEV_FLUSH));
    assert_int_equal(o.fault.err, ENOSPC);
    assert_int_equal(o.fault.offset, 1u << 20);
    assert_int_equal(o.fault.length, 4096);
    assert_int_equal(o.fault.count, 3);
    assert_int_equal(o.fault.rate, 100);
    assert_int_equal(parse("id=d,file=/x.img,socket=/s,inject-ops=write"), 0);
    assert_int_equal(o.fault.err, EIO);
    assert_int_equal(parse("id=d,file=/x.img,socket=/s,inject-ops=write+nap"), -EINVAL);
    assert_int_equal(parse("id=d,file=/x.img,socket=/s,inject-ops=read,inject-rate=0"), -EINVAL);
    assert_int_equal(parse("id=d,file=/x.img,socket=/s,inject-ops=read,inject-errno=EWHAT"),
                     -EINVAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_every_key_accepted),
        cmocka_unit_test(test_value_spellings),
        cmocka_unit_test(test_bad_values_name_the_key),
        cmocka_unit_test(test_iothread_cpus),
        cmocka_unit_test(test_queue_size_not_power_of_two_rejected),
        cmocka_unit_test(test_long_values_rejected),
        cmocka_unit_test(test_serial_longer_than_20_rejected),
        cmocka_unit_test(test_missing_id_file_socket),
        cmocka_unit_test(test_unknown_key),
        cmocka_unit_test(test_not_key_value),
        cmocka_unit_test(test_double_comma_is_a_literal_comma),
        cmocka_unit_test(test_value_with_equals_sign),
        cmocka_unit_test(test_null_file),
        cmocka_unit_test(test_parse_size),
        cmocka_unit_test(test_repeated_file_key_last_one_wins),
        cmocka_unit_test(test_bdev_open_null_and_file),
        cmocka_unit_test(test_null_device_smaller_than_a_block_rejected),
        cmocka_unit_test(test_format_key),
        cmocka_unit_test(test_error_policy_and_injection_keys),
    };

    return cmocka_run_group_tests_name("options", tests, NULL, NULL);
}
