/*
 * cm_endpoint: checks a ZeroMQ endpoint the user typed before ZeroMQ sees it.
 *
 * ZeroMQ's own errors for a mistyped endpoint are misleading or absent:
 * `tcp://localhost:5590` given to bind fails with "No such device" (bind
 * reads the host as a network interface name), and `tcp://127.0.0.1:99999`
 * is accepted and served on a port nobody asked for (the number wraps).  So
 * every endpoint from a command line goes through cm_endpoint_check first,
 * which says in one sentence what is wrong, naming the option.
 *
 * Rules.  The scheme is tcp://, ipc:// or inproc://; ipc and inproc need a
 * non-empty path or name.  A tcp endpoint is HOST:PORT:
 *   - HOST for a bind: `*` (every interface), an IPv4 address, an IPv6
 *     address in brackets, `localhost`, or the name of a network interface
 *     of this host (ZeroMQ binds those; `lo`, `eth0`).  For a connect: an IP
 *     address or a DNS name (letters, digits, '-', '.').
 *   - `localhost` is rewritten to 127.0.0.1 in both cases, because that is
 *     what a person means by it and ZeroMQ's bind does not resolve names;
 *     the rewritten endpoint is what the caller must use.
 *   - PORT is 1..65535; a bind also takes `*` or 0 (an ephemeral port, read
 *     back with ZMQ_LAST_ENDPOINT).
 *
 * No state, no allocation: the caller owns every buffer.
 */
#ifndef CM_ENDPOINT_H
#define CM_ENDPOINT_H

#include "cm_status.h"

#include <stddef.h>

typedef enum {
    CM_ENDPOINT_BIND,   /* an address to listen on (zmq_bind) */
    CM_ENDPOINT_CONNECT /* an address to reach (zmq_connect) */
} cm_endpoint_use_t;

enum { CM_ENDPOINT_MAX = 256 }; /* bytes of an endpoint, NUL included */

/*
 * Checks `endpoint` for `use` (see the rules above).  On CM_OK, out[out_size]
 * (out_size >= CM_ENDPOINT_MAX, may be NULL) holds the endpoint to give
 * ZeroMQ (localhost rewritten).  On failure CM_ERR_INVALID_ARG with one
 * sentence that starts with `option` (e.g. "--bind", "--teacher fm") and the
 * endpoint, and says what is wrong and what would be right.
 */
cm_status_t cm_endpoint_check(const char *endpoint, cm_endpoint_use_t use, const char *option,
                              char *out, size_t out_size);

/*
 * 1 when a checked endpoint stays on this host: ipc://, inproc://, tcp on
 * 127.0.0.0/8, [::1] or the loopback interface `lo`; 0 for everything else
 * (`*`, 0.0.0.0, other addresses, names).
 */
int cm_endpoint_is_loopback(const char *endpoint);

/*
 * The same rule for an HTTP listen address HOST:PORT (127.0.0.1:9100,
 * [::1]:9100, localhost:9100 are loopback; *:9100, 0.0.0.0:9100, :9100 and
 * other addresses are not).
 */
int cm_endpoint_http_is_loopback(const char *address);

#endif
