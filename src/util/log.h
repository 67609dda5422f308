/* log.h - daemon logging.
 *
 * Owns: the one place messages leave the daemon (stderr, one line each, with a level and an
 * optional device name).  Thread-safe: each line is written with a single write(2).
 */
#ifndef VBLK_LOG_H
#define VBLK_LOG_H

enum vblk_log_level { VBLK_LOG_ERR = 0, VBLK_LOG_WARN, VBLK_LOG_INFO, VBLK_LOG_DEBUG };

extern int vblk_log_level;

void vblk_log(int level, const char *dev, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define log_err(dev, ...)  vblk_log(VBLK_LOG_ERR, dev, __VA_ARGS__)
#define log_warn(dev, ...) vblk_log(VBLK_LOG_WARN, dev, __VA_ARGS__)
#define log_info(dev, ...) vblk_log(VBLK_LOG_INFO, dev, __VA_ARGS__)
#define log_dbg(dev, ...)                                                                          \
    do {                                                                                           \
        if (vblk_log_level >= VBLK_LOG_DEBUG)                                                      \
            vblk_log(VBLK_LOG_DEBUG, dev, __VA_ARGS__);                                            \
    } while (0)

#endif
