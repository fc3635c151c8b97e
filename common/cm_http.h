/*
 * cm_http: a minimal HTTP/1.1 server on a libuv loop, for the /healthz,
 * /readyz and /metrics endpoints of committee's services.
 *
 * One request per connection: the server reads until the blank line that
 * ends the header (at most CM_HTTP_MAX_HEADER bytes, else 431), answers GET
 * through the owner's handler (other methods get 405, unparseable requests
 * 400, requests whose header is not complete within the header deadline
 * 408), always with Content-Length and "Connection: close", then half-closes
 * and drops the connection.  Request bodies are not read.  Clients that send
 * garbage, stall or vanish midway cost a connection slot until the deadline,
 * never a crash or a leak.
 *
 * Slow clients never starve new ones (a probe must get through 200 slowloris
 * connections): at most CM_HTTP_MAX_PER_ADDRESS connections per client IP
 * address and CM_HTTP_MAX_CONNECTIONS in all are open at once, and a new
 * connection beyond either limit closes the oldest connection that is idle
 * (it has not sent a whole request, or its answer is already sent) of that
 * address, or of any address for the global limit, rather than being turned
 * away.  Only when every open connection is busy writing an answer is the
 * new one closed at once.  Evictions log one warning per server and are
 * counted (cm_http_evictions).
 *
 * Everything runs on the loop's thread: the handler is called there and
 * must not block.  The server owns its handles (a listener, and a TCP handle
 * and a timer per connection); cm_http_close() closes them all, libuv style,
 * and calls back when the last one is closed, after which the loop can be
 * closed and the server freed.
 */
#ifndef CM_HTTP_H
#define CM_HTTP_H

#include "cm_status.h"

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

enum {
    CM_HTTP_MAX_HEADER = 8192,      /* bytes of request line + header fields */
    CM_HTTP_MAX_CONNECTIONS = 64,   /* open at the same time */
    CM_HTTP_MAX_PER_ADDRESS = 16,   /* open at the same time from one client IP address */
    CM_HTTP_HEADER_TIMEOUT = 3000,  /* milliseconds to send the whole header, default */
    CM_HTTP_REQUEST_TIMEOUT = 10000 /* milliseconds to read the answer, default */
};

typedef struct cm_http cm_http_t;

/* What the handler sees; the strings are valid during the handler call only. */
typedef struct {
    const char *method; /* "GET" (other methods never reach the handler) */
    const char *path;   /* "/metrics": the target up to '?' */
    const char *query;  /* after '?', "" when there is none */
} cm_http_request_t;

/*
 * What the handler fills.  Before the call: status 404, content type
 * "text/plain; charset=utf-8", body "not found\n"; a handler that does not
 * know the path returns without touching it.
 */
typedef struct {
    int status;               /* 200, 503, ... (100..599, else the client gets 500) */
    const char *content_type; /* borrowed until body_release runs; no CR or LF */
    const char *body;         /* NULL for none */
    size_t body_length;       /* bytes of body; 0 with a non-NULL body means strlen(body) */
    /* Called once with body when the server is done with it (written, failed or
     * cancelled); NULL for a body that outlives the server (a string literal). */
    void (*body_release)(void *body);
} cm_http_response_t;

struct cm_metrics;

/*
 * Fills `response` with the Prometheus text of `metrics` (200, released by the server), or a
 * 500 when it cannot be rendered: the /metrics answer of every committee service.
 */
void cm_http_respond_metrics(cm_http_response_t *response, struct cm_metrics *metrics);

typedef void (*cm_http_handler_fn)(const cm_http_request_t *request, cm_http_response_t *response,
                                   void *user);
typedef void (*cm_http_closed_fn)(cm_http_t *server, void *user);

/*
 * Starts listening on `listen_address` ("127.0.0.1:9100", "[::1]:9100",
 * "*:9100" for every IPv4 interface, "localhost:9100"; port 0 picks an
 * ephemeral port, see cm_http_port) on `loop`, answering GET requests with
 * `handler`, which gets `user` back.  The server is in *out.  Fails with
 * CM_ERR_INVALID_ARG for an address it cannot parse and CM_ERR_IO when it
 * cannot listen (address in use, permission), with a sentence naming the
 * address; on failure nothing is left registered with the loop.  If
 * SIGPIPE is at its default disposition it is set to ignored, since libuv
 * writes with write(2) and a client resetting its connection mid-answer
 * would otherwise kill the process.
 */
cm_status_t cm_http_new(uv_loop_t *loop, const char *listen_address, cm_http_handler_fn handler,
                        void *user, cm_http_t **out);

/* The TCP port the server listens on (the ephemeral one when 0 was asked for). */
int cm_http_port(const cm_http_t *server);

/* Connections open right now (reading, writing or closing). */
int cm_http_connections(const cm_http_t *server);

/* Idle connections closed so far to make room for new ones (see above). */
uint64_t cm_http_evictions(const cm_http_t *server);

/*
 * Sets the time a client has to send its request header and then to read the
 * answer (milliseconds, > 0, both) for connections accepted from now on.
 */
void cm_http_set_request_timeout(cm_http_t *server, uint64_t milliseconds);

/*
 * Stops listening, drops every connection (bodies being written are
 * released) and closes every handle; `on_closed` (may be NULL) runs on the
 * loop with the handler's `user` once all are closed.  Call it once, from the
 * loop's thread.
 */
void cm_http_close(cm_http_t *server, cm_http_closed_fn on_closed);

/*
 * Frees a server whose close has completed (on_closed has run) and sets
 * *server to NULL; NULL-safe.  Freeing a server with open handles is a bug
 * and aborts.
 */
void cm_http_free(cm_http_t **server);

#endif
