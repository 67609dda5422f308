/* notify.h - readiness and status notifications to the service manager (systemd Type=notify).
 *
 * Owns: nothing but the messages.  Each call sends one datagram to $NOTIFY_SOCKET through
 * libsystemd's sd_notify(); without $NOTIFY_SOCKET (not started by systemd), or when vblkd was
 * built without libsystemd (VBLK_HAVE_SYSTEMD undefined), every call does nothing.  Failures are
 * ignored: a lost notification must never stop the daemon.  Called from the main thread (they
 * are thread-safe, but only start-up and shutdown have something to say).
 */
#ifndef VBLK_NOTIFY_H
#define VBLK_NOTIFY_H

/* "READY=1" and a STATUS line: every export listens, front-ends may connect. */
void vblk_notify_ready(void);

/* "STOPPING=1" and a STATUS line: a stop signal arrived, in-flight I/O is being drained. */
void vblk_notify_stopping(void);

/* "STATUS=<text>": free-form status shown by `systemctl status` (at most 255 bytes kept). */
void vblk_notify_status(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
