/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * guest-io: deterministic block I/O pattern writer/checker for the vblk
 * end-to-end tests.  Built with `gcc -static` and run inside the test guest
 * (and on the host, against the back-end's image file).
 *
 *   guest-io [-b] write  DEV OFFSET LEN SEED   write pattern, fdatasync
 *   guest-io [-b] verify DEV OFFSET LEN SEED   check pattern
 *   guest-io [-b] zero   DEV OFFSET LEN        check range reads as zeroes
 *   guest-io [-b] hammer DEV OFFSET LEN SEED SECONDS
 *                                              rewrite range in a loop
 *                                              (SECONDS = 0: forever)
 *   guest-io      size   DEV                   print size in bytes
 *   guest-io      flush  DEV                   fdatasync() the device
 *
 * The pattern is a function of (seed, absolute byte offset of each 64-bit
 * word), so any range can be verified independently of how it was written,
 * and misdirected writes (wrong sector) are detected.
 *
 * OFFSET and LEN accept K/M/G suffixes (powers of 1024).  A negative OFFSET
 * counts from the end of the device.  OFFSET and LEN must be multiples of
 * 4096.  I/O uses O_DIRECT with 4 KiB-aligned buffers unless -b is given or
 * the file system does not support O_DIRECT (then it falls back to buffered
 * I/O and says so on stderr).
 *
 * Exit status: 0 success, 1 data mismatch / I/O error, 2 usage error.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/fs.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define ALIGN      4096u
#define CHUNK      (1u << 20)
#define MAX_REPORT 8

static const char *prog = "guest-io";
static bool buffered;

static void usage(void)
{
    fprintf(stderr,
            "usage: %s [-b] write|verify DEV OFFSET LEN SEED\n"
            "       %s [-b] zero DEV OFFSET LEN\n"
            "       %s [-b] hammer DEV OFFSET LEN SEED SECONDS\n"
            "       %s size|flush DEV\n",
            prog, prog, prog, prog);
    exit(2);
}

static uint64_t mix64(uint64_t z)
{
    /* splitmix64 finaliser */
    z += 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint64_t pattern_word(uint64_t seed, uint64_t off)
{
    return mix64(mix64(seed) ^ off);
}

static void fill(uint64_t *buf, size_t len, uint64_t off, uint64_t seed)
{
    for (size_t i = 0; i < len / 8; i++)
        buf[i] = pattern_word(seed, off + i * 8);
}

static bool parse_num(const char *s, long long *out)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 0);
    if (errno || end == s)
        return false;
    long long mul = 1;
    switch (*end) {
    case 'k':
    case 'K':
        mul = 1ll << 10;
        end++;
        break;
    case 'm':
    case 'M':
        mul = 1ll << 20;
        end++;
        break;
    case 'g':
    case 'G':
        mul = 1ll << 30;
        end++;
        break;
    default:
        break;
    }
    if (*end != '\0')
        return false;
    *out = v * mul;
    return true;
}

static uint64_t parse_u64(const char *s, const char *what)
{
    long long v;
    if (!parse_num(s, &v) || v < 0) {
        fprintf(stderr, "%s: bad %s '%s'\n", prog, what, s);
        exit(2);
    }
    return (uint64_t)v;
}

static int open_dev(const char *path, int flags)
{
    int fd = -1;
    if (!buffered) {
        fd = open(path, flags | O_DIRECT | O_CLOEXEC);
        if (fd >= 0 || errno != EINVAL)
            goto out;
        fprintf(stderr, "%s: %s: O_DIRECT not supported, using buffered I/O\n", prog, path);
    }
    fd = open(path, flags | O_CLOEXEC);
out:
    if (fd < 0)
        fprintf(stderr, "%s: open %s: %s\n", prog, path, strerror(errno));
    return fd;
}

static uint64_t dev_size(int fd, const char *path)
{
    struct stat st;
    if (fstat(fd, &st) < 0) {
        fprintf(stderr, "%s: stat %s: %s\n", prog, path, strerror(errno));
        exit(1);
    }
    if (S_ISBLK(st.st_mode)) {
        uint64_t sz;
        if (ioctl(fd, BLKGETSIZE64, &sz) < 0) {
            fprintf(stderr, "%s: BLKGETSIZE64 %s: %s\n", prog, path, strerror(errno));
            exit(1);
        }
        return sz;
    }
    return (uint64_t)st.st_size;
}

/* Resolve OFFSET (possibly negative = from end) and LEN against the device. */
static void resolve_range(int fd, const char *path, const char *off_s, const char *len_s,
                          uint64_t *off, uint64_t *len)
{
    long long o;
    if (!parse_num(off_s, &o)) {
        fprintf(stderr, "%s: bad offset '%s'\n", prog, off_s);
        exit(2);
    }
    *len = parse_u64(len_s, "length");
    uint64_t size = dev_size(fd, path);
    if (o < 0) {
        if ((uint64_t)-o > size) {
            fprintf(stderr, "%s: offset %lld before start of %s\n", prog, o, path);
            exit(2);
        }
        *off = size - (uint64_t)-o;
    } else {
        *off = (uint64_t)o;
    }
    if (*off % ALIGN || *len % ALIGN || *len == 0) {
        fprintf(stderr,
                "%s: offset %" PRIu64 " / length %" PRIu64 " must be non-zero multiples of %u\n",
                prog, *off, *len, ALIGN);
        exit(2);
    }
    if (*off + *len > size) {
        fprintf(stderr, "%s: range %" PRIu64 "+%" PRIu64 " beyond end of %s (%" PRIu64 " bytes)\n",
                prog, *off, *len, path, size);
        exit(2);
    }
}

static void *xalloc(size_t n)
{
    void *p = aligned_alloc(ALIGN, n);
    if (!p) {
        fprintf(stderr, "%s: out of memory\n", prog);
        exit(1);
    }
    return p;
}

static int pwrite_all(int fd, const void *buf, size_t n, uint64_t off, const char *path)
{
    size_t done = 0;
    while (done < n) {
        ssize_t r = pwrite(fd, (const char *)buf + done, n - done, (off_t)(off + done));
        if (r < 0) {
            if (errno == EINTR)
                continue;
            fprintf(stderr, "%s: write %s at %" PRIu64 ": %s\n", prog, path, off + done,
                    strerror(errno));
            return -1;
        }
        if (r == 0) {
            fprintf(stderr, "%s: short write %s at %" PRIu64 "\n", prog, path, off + done);
            return -1;
        }
        done += (size_t)r;
    }
    return 0;
}

static int pread_all(int fd, void *buf, size_t n, uint64_t off, const char *path)
{
    size_t done = 0;
    while (done < n) {
        ssize_t r = pread(fd, (char *)buf + done, n - done, (off_t)(off + done));
        if (r < 0) {
            if (errno == EINTR)
                continue;
            fprintf(stderr, "%s: read %s at %" PRIu64 ": %s\n", prog, path, off + done,
                    strerror(errno));
            return -1;
        }
        if (r == 0) {
            fprintf(stderr, "%s: unexpected EOF %s at %" PRIu64 "\n", prog, path, off + done);
            return -1;
        }
        done += (size_t)r;
    }
    return 0;
}

static int do_write(const char *path, const char *off_s, const char *len_s, const char *seed_s)
{
    int fd = open_dev(path, O_RDWR);
    if (fd < 0)
        return 1;
    uint64_t off, len, seed = parse_u64(seed_s, "seed");
    resolve_range(fd, path, off_s, len_s, &off, &len);
    uint64_t *buf = xalloc(CHUNK);
    int ret = 0;
    for (uint64_t pos = off; pos < off + len; pos += CHUNK) {
        size_t n = (size_t)((off + len - pos) < CHUNK ? (off + len - pos) : CHUNK);
        fill(buf, n, pos, seed);
        if (pwrite_all(fd, buf, n, pos, path) < 0) {
            ret = 1;
            break;
        }
    }
    if (ret == 0 && fdatasync(fd) < 0) {
        fprintf(stderr, "%s: fdatasync %s: %s\n", prog, path, strerror(errno));
        ret = 1;
    }
    if (close(fd) < 0 && ret == 0) {
        fprintf(stderr, "%s: close %s: %s\n", prog, path, strerror(errno));
        ret = 1;
    }
    free(buf);
    return ret;
}

/* zero_check: compare against zeroes instead of the pattern */
static int do_check(const char *path, const char *off_s, const char *len_s, const char *seed_s,
                    bool zero_check)
{
    int fd = open_dev(path, O_RDONLY);
    if (fd < 0)
        return 1;
    uint64_t off, len, seed = zero_check ? 0 : parse_u64(seed_s, "seed");
    resolve_range(fd, path, off_s, len_s, &off, &len);
    uint64_t *buf = xalloc(CHUNK);
    uint64_t *exp = xalloc(CHUNK);
    uint64_t bad_words = 0, first_bad = 0, last_bad = 0;
    int ret = 0;
    for (uint64_t pos = off; pos < off + len; pos += CHUNK) {
        size_t n = (size_t)((off + len - pos) < CHUNK ? (off + len - pos) : CHUNK);
        if (pread_all(fd, buf, n, pos, path) < 0) {
            ret = 1;
            break;
        }
        if (zero_check)
            memset(exp, 0, n);
        else
            fill(exp, n, pos, seed);
        if (memcmp(buf, exp, n) == 0)
            continue;
        for (size_t i = 0; i < n / 8; i++) {
            if (buf[i] == exp[i])
                continue;
            uint64_t at = pos + i * 8;
            if (bad_words < MAX_REPORT)
                fprintf(stderr,
                        "%s: mismatch %s at offset %" PRIu64 " (sector %" PRIu64
                        "): expected %016" PRIx64 " got %016" PRIx64 "\n",
                        prog, path, at, at / 512, exp[i], buf[i]);
            if (bad_words == 0)
                first_bad = at;
            last_bad = at;
            bad_words++;
        }
    }
    if (bad_words) {
        fprintf(stderr,
                "%s: %s: %" PRIu64 " mismatching 8-byte words in %s range "
                "%" PRIu64 "+%" PRIu64 " (first at %" PRIu64 ", last at %" PRIu64 ")\n",
                prog, path, bad_words, zero_check ? "zero" : "pattern", off, len, first_bad,
                last_bad);
        ret = 1;
    }
    close(fd);
    free(buf);
    free(exp);
    return ret;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int do_hammer(const char *path, const char *off_s, const char *len_s, const char *seed_s,
                     const char *secs_s)
{
    int fd = open_dev(path, O_RDWR);
    if (fd < 0)
        return 1;
    uint64_t off, len, seed = parse_u64(seed_s, "seed");
    uint64_t secs = parse_u64(secs_s, "seconds");
    resolve_range(fd, path, off_s, len_s, &off, &len);
    const size_t blk = 64u << 10;
    uint64_t *buf = xalloc(blk);
    double start = now_s();
    uint64_t pass = 0, bytes = 0;
    for (;;) {
        for (uint64_t pos = off; pos < off + len; pos += blk) {
            size_t n = (size_t)((off + len - pos) < blk ? (off + len - pos) : blk);
            fill(buf, n, pos, seed + pass);
            if (pwrite_all(fd, buf, n, pos, path) < 0) {
                close(fd);
                free(buf);
                return 1;
            }
            bytes += n;
        }
        pass++;
        printf("guest-io: hammer pass %" PRIu64 " done (%" PRIu64 " MiB written)\n", pass,
               bytes >> 20);
        fflush(stdout);
        if (secs && now_s() - start >= (double)secs)
            break;
    }
    close(fd);
    free(buf);
    return 0;
}

int main(int argc, char **argv)
{
    int i = 1;
    if (argc > 1 && strcmp(argv[1], "-b") == 0) {
        buffered = true;
        i++;
    }
    if (argc - i < 2)
        usage();
    const char *cmd = argv[i];
    char **a = &argv[i + 1];
    int n = argc - i - 1;

    if (strcmp(cmd, "write") == 0 && n == 4)
        return do_write(a[0], a[1], a[2], a[3]);
    if (strcmp(cmd, "verify") == 0 && n == 4)
        return do_check(a[0], a[1], a[2], a[3], false);
    if (strcmp(cmd, "zero") == 0 && n == 3)
        return do_check(a[0], a[1], a[2], NULL, true);
    if (strcmp(cmd, "hammer") == 0 && n == 5)
        return do_hammer(a[0], a[1], a[2], a[3], a[4]);
    if (strcmp(cmd, "size") == 0 && n == 1) {
        int fd = open_dev(a[0], O_RDONLY);
        if (fd < 0)
            return 1;
        printf("%" PRIu64 "\n", dev_size(fd, a[0]));
        close(fd);
        return 0;
    }
    if (strcmp(cmd, "flush") == 0 && n == 1) {
        int fd = open_dev(a[0], O_RDWR);
        if (fd < 0)
            return 1;
        if (fdatasync(fd) < 0) {
            fprintf(stderr, "%s: fdatasync %s: %s\n", prog, a[0], strerror(errno));
            close(fd);
            return 1;
        }
        close(fd);
        return 0;
    }
    usage();
}
