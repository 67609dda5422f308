/* rpc.h - the control socket: JSON-RPC 2.0, one request or response per line, over a unix socket.
 *
 * Owns: listening, the clients (at most VBLK_RPC_MAX_CLIENTS; one more evicts the longest idle),
 * framing (a line of at most VBLK_RPC_MAX_LINE bytes, else the client is closed), decoding and
 * checking the envelope ("jsonrpc": "2.0", "method" a string, "params" an object if present,
 * "id" a number, string or null; no id: a notification, no answer; batches are refused), calling
 * the method and encoding its result or error.  Output waits in a per-client buffer; while more
 * than VBLK_RPC_OUT_HIGH bytes wait, the client's requests are not read (so a client that never
 * reads costs bounded memory).  Nothing here blocks: the server runs in the caller's event loop.
 *
 * The caller adds vblk_rpc_fd() (an epoll fd of its own) to its loop and calls vblk_rpc_run()
 * when it is readable.  Methods run inside vblk_rpc_run().
 *
 * Threads: one (the control thread).
 */
#ifndef VBLK_RPC_H
#define VBLK_RPC_H

#include <stddef.h>
#include <sys/types.h>

struct json_object;

#define VBLK_RPC_MAX_CLIENTS 16
#define VBLK_RPC_MAX_LINE    (64 * 1024)
#define VBLK_RPC_OUT_HIGH    (1024 * 1024)

/* JSON-RPC 2.0 error codes */
#define VBLK_RPC_PARSE_ERROR      (-32700)
#define VBLK_RPC_INVALID_REQUEST  (-32600)
#define VBLK_RPC_METHOD_NOT_FOUND (-32601)
#define VBLK_RPC_INVALID_PARAMS   (-32602)
#define VBLK_RPC_FAILED           (-32000) /* the operation was tried and failed */

/* A method: params is an object (an empty one if the request had none), owned by the caller.
 * Return 0 with *result set to a new object (NULL means {}), or one of the error codes above with
 * err saying what was wrong (naming the export). */
typedef int (*vblk_rpc_fn)(void *ctx, struct json_object *params, struct json_object **result,
                           char *err, size_t errlen);

struct vblk_rpc_method {
    const char *name;
    vblk_rpc_fn fn;
};

struct vblk_rpc;

/* Listen on path (a stale socket is replaced, anything else there is an error), chmod it to mode
 * (0: 0600, only vblkd's user: the socket controls the daemon) and chown it to uid/gid if not -1.
 * methods ends with a NULL name and outlives the server.  0, or -errno with err set. */
int vblk_rpc_start(struct vblk_rpc **out, const char *path, mode_t mode, uid_t uid, gid_t gid,
                   const struct vblk_rpc_method *methods, void *ctx, char *err, size_t errlen);
/* The fd to watch for input (EPOLLIN). */
int vblk_rpc_fd(const struct vblk_rpc *r);
/* Accept, read, answer, write: whatever is ready, without blocking. */
void vblk_rpc_run(struct vblk_rpc *r);
/* Close every client and the socket, unlink it. */
void vblk_rpc_stop(struct vblk_rpc *r);

/* Decode and answer one request line (no newline), as vblk_rpc_run does for a client: returns
 * the response line (with its newline, malloc'd) or NULL when none is due (a notification) or
 * memory ran out.  For tests and the fuzzer. */
char *vblk_rpc_handle_line(const struct vblk_rpc_method *methods, void *ctx, const char *line,
                           size_t len);

#endif
