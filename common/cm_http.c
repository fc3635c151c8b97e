/*
 * cm_http: each connection is one allocation holding its TCP handle, its
 * timer, its write and shutdown requests and its 8 KiB request buffer, so a
 * request costs one calloc and nothing else; the handler's body is written
 * straight from the handler's memory (the head and the body are two uv_buf_t
 * of one uv_write).
 *
 * A connection moves READING -> WRITING -> LINGERING -> CLOSING.  It keeps
 * reading (and discarding) after the request, because closing a socket with
 * unread input makes the kernel send a reset that can destroy the answer
 * before the client reads it: after the answer is written the server
 * half-closes (FIN) and waits for the client's EOF, a byte limit or the
 * timer, whichever comes first.  A client's EOF while the answer is still
 * being written is a half-close, not a disconnect.
 *
 * Writing to a client that reset its connection raises SIGPIPE (libuv uses
 * write(2)), so starting a server sets SIGPIPE to ignored unless the program
 * chose a disposition.
 *
 * The listening socket is made with socket/bind/listen before libuv sees it,
 * so the usual start-up failures (address in use, bad address) leave
 * nothing registered with the loop.  libuv's uv_close completes later, so
 * the server counts its open handles and calls on_closed when the count
 * reaches zero; a connection frees itself when both its handles are closed.
 */
#include "cm_http.h"

#include "cm_metrics.h"

#include "cm_log.h"

#include <assert.h>
#include <errno.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

enum {
    LISTEN_BACKLOG = 128,
    LINGER_LIMIT = 65536,   /* bytes discarded after the request before giving up */
    MAX_CONTENT_TYPE = 200, /* bytes */
    HEAD_CAPACITY = 512,    /* bytes of status line + response header fields */
    MAX_ADDRESS_TEXT = 256
};

static const char default_content_type[] = "text/plain; charset=utf-8";

typedef enum {
    CONNECTION_READING,   /* waiting for the end of the request header */
    CONNECTION_WRITING,   /* the answer is being written; input is discarded */
    CONNECTION_LINGERING, /* answer sent and FIN sent; waiting for the client's EOF */
    CONNECTION_CLOSING    /* uv_close called on both handles */
} connection_state_t;

typedef struct http_connection {
    uv_tcp_t tcp;
    uv_timer_t timer;
    uv_write_t write_request;
    uv_shutdown_t shutdown_request;
    cm_http_t *server;
    struct http_connection *previous, *next;
    connection_state_t state;
    int open_handles;
    uint64_t timeout;                /* milliseconds, for writing and lingering over the answer */
    struct sockaddr_storage address; /* the client's; only family and address are compared */
    bool client_finished;            /* EOF seen while writing */
    size_t received;                 /* bytes of request[] in use while reading */
    size_t discarded;                /* bytes read and dropped after the request */
    const char *body;                /* of the answer being written, until released */
    void (*body_release)(void *body);
    char head[HEAD_CAPACITY];
    char request[CM_HTTP_MAX_HEADER];
} http_connection_t;

struct cm_http {
    uv_loop_t *loop;
    uv_tcp_t listener;
    cm_http_handler_fn handler;
    void *user;
    cm_http_closed_fn on_closed;
    bool closing;
    int open_handles; /* the listener and two per connection */
    int connection_count;
    http_connection_t *connections;
    uint64_t request_timeout; /* milliseconds, for the answer */
    uint64_t header_timeout;  /* milliseconds, for the request header */
    uint64_t evictions;
    int port;
};

static const struct {
    int status;
    const char *reason;
} reasons[] = {
    {200, "OK"},
    {204, "No Content"},
    {301, "Moved Permanently"},
    {302, "Found"},
    {400, "Bad Request"},
    {401, "Unauthorized"},
    {403, "Forbidden"},
    {404, "Not Found"},
    {405, "Method Not Allowed"},
    {408, "Request Timeout"},
    {429, "Too Many Requests"},
    {431, "Request Header Fields Too Large"},
    {500, "Internal Server Error"},
    {501, "Not Implemented"},
    {503, "Service Unavailable"},
};

static const char *reason_phrase(int status) {
    for (size_t i = 0; i < sizeof reasons / sizeof reasons[0]; i++)
        if (reasons[i].status == status) return reasons[i].reason;
    return "Unknown"; /* HTTP/1.1 clients ignore the phrase; only the code matters */
}

/* ---- closing ------------------------------------------------------------------------- */

static void finish_if_closed(cm_http_t *server) {
    if (server->closing && server->open_handles == 0 && server->on_closed)
        server->on_closed(server, server->user);
}

static void on_connection_handle_closed(uv_handle_t *handle) {
    http_connection_t *connection = handle->data;
    cm_http_t *server = connection->server;
    server->open_handles--;
    if (--connection->open_handles > 0) return;
    if (connection->previous)
        connection->previous->next = connection->next;
    else
        server->connections = connection->next;
    if (connection->next) connection->next->previous = connection->previous;
    server->connection_count--;
    free(connection);
    finish_if_closed(server);
}

static void release_body(http_connection_t *connection) {
    if (connection->body && connection->body_release)
        connection->body_release((void *)connection->body);
    connection->body = NULL;
    connection->body_release = NULL;
}

/* Closes both handles; pending write and shutdown requests complete with UV_ECANCELED. */
static void connection_close(http_connection_t *connection) {
    if (connection->state == CONNECTION_CLOSING) return;
    connection->state = CONNECTION_CLOSING;
    uv_close((uv_handle_t *)&connection->tcp, on_connection_handle_closed);
    uv_close((uv_handle_t *)&connection->timer, on_connection_handle_closed);
}

/* ---- answering ----------------------------------------------------------------------- */

static void on_timeout(uv_timer_t *timer);

static void on_shutdown(uv_shutdown_t *request, int status) {
    http_connection_t *connection = request->data;
    if (connection->state == CONNECTION_CLOSING) return;
    if (status < 0 || connection->client_finished) {
        connection_close(connection);
        return;
    }
    connection->state = CONNECTION_LINGERING; /* on_read closes on EOF; the timer still runs */
}

static void on_written(uv_write_t *request, int status) {
    http_connection_t *connection = request->data;
    release_body(connection);
    if (connection->state == CONNECTION_CLOSING) return;
    if (status < 0) {
        cm_log_debug("http: answer not delivered: %s", uv_strerror(status));
        connection_close(connection);
        return;
    }
    connection->shutdown_request.data = connection;
    if (uv_shutdown(&connection->shutdown_request, (uv_stream_t *)&connection->tcp, on_shutdown) !=
        0)
        connection_close(connection);
}

static bool valid_content_type(const char *content_type) {
    size_t length = 0;
    for (const char *c = content_type; *c; c++, length++)
        if ((unsigned char)*c < 0x20 || *c == 0x7f) return false;
    return length > 0 && length <= MAX_CONTENT_TYPE;
}

/*
 * Writes the answer and moves on to WRITING, with a fresh timeout for writing and
 * lingering.  Takes over response->body (released when the write ends).  extra_header is
 * a complete header line ("Allow: GET\r\n") or "".
 */
static void respond(http_connection_t *connection, const cm_http_response_t *response,
                    const char *extra_header) {
    connection->body = response->body;
    connection->body_release = response->body_release;
    size_t body_length = response->body_length;
    if (response->body && body_length == 0) body_length = strlen(response->body);
    int status = response->status;
    const char *content_type = response->content_type ? response->content_type : "";
    if (status < 100 || status > 599 || !valid_content_type(content_type) ||
        body_length > UINT32_MAX) {
        /* the content type is not logged: it may hold the line breaks that made it bad */
        cm_log_warn("http: the handler's answer (status %d, %zu bytes) has a bad status, "
                    "content type or size; sending 500 instead",
                    status, body_length);
        release_body(connection);
        connection->body = "internal server error\n";
        body_length = strlen(connection->body);
        status = 500;
        content_type = default_content_type;
    }
    int head_length =
        snprintf(connection->head, sizeof connection->head,
                 "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
                 "%sConnection: close\r\n\r\n",
                 status, reason_phrase(status), content_type, body_length, extra_header);
    assert(head_length > 0 && (size_t)head_length < sizeof connection->head);
    uv_buf_t buffers[2] = {
        uv_buf_init(connection->head, (unsigned)head_length),
        uv_buf_init((char *)connection->body, (unsigned)body_length),
    };
    connection->state = CONNECTION_WRITING;
    uv_timer_start(&connection->timer, on_timeout, connection->timeout, 0);
    connection->write_request.data = connection;
    if (uv_write(&connection->write_request, (uv_stream_t *)&connection->tcp, buffers,
                 body_length > 0 ? 2 : 1, on_written) != 0) {
        release_body(connection);
        connection_close(connection);
    }
}

static void respond_text(http_connection_t *connection, int status, const char *text,
                         const char *extra_header) {
    cm_http_response_t response = {
        .status = status, .content_type = default_content_type, .body = text};
    respond(connection, &response, extra_header);
}

static void on_timeout(uv_timer_t *timer) {
    http_connection_t *connection = timer->data;
    if (connection->state == CONNECTION_READING)
        respond_text(connection, 408, "request timeout\n", "");
    else
        connection_close(connection);
}

/* ---- reading and parsing --------------------------------------------------------------- */

static bool is_token_char(char c) {
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
           (c != '\0' && strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

/*
 * Parses the request line in place (NUL-terminating its parts) and answers it: 400 for
 * anything but "METHOD /target HTTP/1.x", 405 for methods other than GET, else whatever
 * the handler says.  Header fields are not interpreted.
 */
static void handle_request(http_connection_t *connection) {
    char *line = connection->request;
    char *line_end = memchr(line, '\n', connection->received);
    assert(line_end); /* the header end was found, so there is a line feed */
    if (line_end > line && line_end[-1] == '\r') line_end--;
    *line_end = '\0';
    for (char *c = line; c < line_end; c++)
        if ((unsigned char)*c < 0x20 || (unsigned char)*c >= 0x7f) {
            respond_text(connection, 400, "bad request\n", "");
            return;
        }
    char *method = line;
    char *method_end = method;
    while (is_token_char(*method_end)) method_end++;
    if (method_end == method || *method_end != ' ') {
        respond_text(connection, 400, "bad request\n", "");
        return;
    }
    *method_end = '\0';
    char *target = method_end + 1;
    char *target_end = strchr(target, ' ');
    if (*target != '/' || !target_end) {
        respond_text(connection, 400, "bad request\n", "");
        return;
    }
    *target_end = '\0';
    const char *version = target_end + 1;
    if (strncmp(version, "HTTP/1.", 7) != 0 || version[7] < '0' || version[7] > '9' ||
        version[8] != '\0') {
        respond_text(connection, 400, "bad request\n", "");
        return;
    }
    if (strcmp(method, "GET") != 0) {
        respond_text(connection, 405, "method not allowed\n", "Allow: GET\r\n");
        return;
    }
    char *query = strchr(target, '?');
    if (query) *query++ = '\0';
    cm_http_request_t request = {.method = method, .path = target, .query = query ? query : ""};
    cm_http_response_t response = {
        .status = 404, .content_type = default_content_type, .body = "not found\n"};
    cm_http_t *server = connection->server;
    server->handler(&request, &response, server->user);
    if (connection->state == CONNECTION_CLOSING) { /* the handler closed the server */
        connection->body = response.body;
        connection->body_release = response.body_release;
        release_body(connection);
        return;
    }
    respond(connection, &response, "");
}

/* Index just past the blank line ending the header ("\r\n\r\n" or "\n\n"), or 0. */
static size_t find_header_end(const char *request, size_t from, size_t to) {
    for (size_t i = from; i < to; i++) {
        if (request[i] != '\n') continue;
        if (i + 1 < to && request[i + 1] == '\n') return i + 2;
        if (i + 2 < to && request[i + 1] == '\r' && request[i + 2] == '\n') return i + 3;
    }
    return 0;
}

static void on_alloc(uv_handle_t *handle, size_t suggested_size, uv_buf_t *buffer) {
    http_connection_t *connection = handle->data;
    if (connection->state == CONNECTION_READING)
        *buffer = uv_buf_init(connection->request + connection->received,
                              (unsigned)(sizeof connection->request - connection->received));
    else /* the request has been answered; its buffer takes the bytes to discard */
        *buffer = uv_buf_init(connection->request, (unsigned)sizeof connection->request);
}

static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buffer) {
    http_connection_t *connection = stream->data;
    if (nread == 0 || connection->state == CONNECTION_CLOSING) return;
    if (nread < 0) {
        if (nread == UV_EOF && connection->state == CONNECTION_WRITING) {
            connection->client_finished = true; /* a half-close: still send the answer */
            uv_read_stop(stream);
        } else {
            connection_close(connection); /* gone, or done reading our answer */
        }
        return;
    }
    if (connection->state != CONNECTION_READING) {
        connection->discarded += (size_t)nread;
        if (connection->discarded > LINGER_LIMIT) connection_close(connection);
        return;
    }
    size_t previous = connection->received;
    connection->received += (size_t)nread;
    size_t from = previous >= 2 ? previous - 2 : 0;
    if (find_header_end(connection->request, from, connection->received) > 0)
        handle_request(connection);
    else if (connection->received == sizeof connection->request)
        respond_text(connection, 431, "request header fields too large\n", "");
}

/* ---- listening ------------------------------------------------------------------------- */

static bool same_address(const struct sockaddr_storage *one, const struct sockaddr_storage *two) {
    if (one->ss_family != two->ss_family) return false;
    if (one->ss_family == AF_INET)
        return ((const struct sockaddr_in *)one)->sin_addr.s_addr ==
               ((const struct sockaddr_in *)two)->sin_addr.s_addr;
    if (one->ss_family == AF_INET6)
        return memcmp(&((const struct sockaddr_in6 *)one)->sin6_addr,
                      &((const struct sockaddr_in6 *)two)->sin6_addr, sizeof(struct in6_addr)) == 0;
    return false;
}

/*
 * Makes room for `fresh` (just accepted): when its address or the server is at its limit,
 * closes the oldest idle connection (still reading its request, or lingering after its answer)
 * of that address or of any.  Returns false when there is no room and nothing to close.
 */
static bool make_room(cm_http_t *server, http_connection_t *fresh) {
    int open = 0, same = 0;
    http_connection_t *oldest_idle = NULL, *oldest_idle_same = NULL;
    for (http_connection_t *connection = server->connections; connection;
         connection = connection->next) { /* newest first: the last idle one seen is oldest */
        if (connection == fresh || connection->state == CONNECTION_CLOSING) continue;
        bool idle =
            connection->state == CONNECTION_READING || connection->state == CONNECTION_LINGERING;
        bool from_same = same_address(&connection->address, &fresh->address);
        open++;
        same += from_same;
        if (idle) oldest_idle = connection;
        if (idle && from_same) oldest_idle_same = connection;
    }
    http_connection_t *victim = NULL;
    if (same >= CM_HTTP_MAX_PER_ADDRESS)
        victim = oldest_idle_same;
    else if (open >= CM_HTTP_MAX_CONNECTIONS)
        victim = oldest_idle;
    else
        return true;
    if (!victim) return false;
    if (server->evictions++ == 0)
        cm_log_warn("http: more than %d connections on port %d (or %d from one address); "
                    "closing the oldest idle ones so that new requests get answered",
                    CM_HTTP_MAX_CONNECTIONS, server->port, CM_HTTP_MAX_PER_ADDRESS);
    connection_close(victim);
    return true;
}

static void on_connection(uv_stream_t *listener, int status) {
    cm_http_t *server = listener->data;
    if (status < 0) {
        cm_log_warn("http: accepting a connection on port %d failed: %s", server->port,
                    uv_strerror(status));
        return;
    }
    http_connection_t *connection = calloc(1, sizeof *connection);
    if (!connection) {
        cm_log_error("http: no memory for a connection on port %d", server->port);
        return;
    }
    connection->server = server;
    connection->timeout = server->request_timeout;
    connection->address.ss_family = AF_UNSPEC;
    connection->state = CONNECTION_READING;
    uv_tcp_init(server->loop, &connection->tcp);
    uv_timer_init(server->loop, &connection->timer);
    connection->tcp.data = connection;
    connection->timer.data = connection;
    connection->open_handles = 2;
    server->open_handles += 2;
    connection->next = server->connections;
    if (server->connections) server->connections->previous = connection;
    server->connections = connection;
    server->connection_count++;

    int failed = uv_accept(listener, (uv_stream_t *)&connection->tcp);
    if (failed) {
        cm_log_warn("http: accepting a connection on port %d failed: %s", server->port,
                    uv_strerror(failed));
        connection_close(connection);
        return;
    }
    int address_length = (int)sizeof connection->address;
    if (uv_tcp_getpeername(&connection->tcp, (struct sockaddr *)&connection->address,
                           &address_length) != 0)
        connection->address.ss_family = AF_UNSPEC; /* counts as an address of its own */
    if (!make_room(server, connection)) {
        cm_log_warn("http: %d connections on port %d are all busy answering; dropping a new one",
                    CM_HTTP_MAX_CONNECTIONS, server->port);
        connection_close(connection);
        return;
    }
    uv_timer_start(&connection->timer, on_timeout, server->header_timeout, 0);
    if (uv_read_start((uv_stream_t *)&connection->tcp, on_alloc, on_read) != 0)
        connection_close(connection);
}

/* Parses HOST:PORT ([v6]:PORT, *:PORT, localhost:PORT) into *address; false if it is not. */
static bool parse_address(const char *text, struct sockaddr_storage *address) {
    const char *colon = strrchr(text, ':');
    if (!colon || strlen(text) >= MAX_ADDRESS_TEXT || colon[1] < '0' || colon[1] > '9')
        return false;
    char *port_end;
    long port = strtol(colon + 1, &port_end, 10);
    if (*port_end != '\0' || port > 65535) return false;
    char host[MAX_ADDRESS_TEXT];
    size_t host_length = (size_t)(colon - text);
    memcpy(host, text, host_length);
    host[host_length] = '\0';
    memset(address, 0, sizeof *address);
    if (host[0] == '[' && host_length > 2 && host[host_length - 1] == ']') {
        host[host_length - 1] = '\0';
        return uv_ip6_addr(host + 1, (int)port, (struct sockaddr_in6 *)address) == 0;
    }
    const char *ipv4 = host;
    if (strcmp(host, "*") == 0 || host[0] == '\0') ipv4 = "0.0.0.0";
    if (strcmp(host, "localhost") == 0) ipv4 = "127.0.0.1";
    return uv_ip4_addr(ipv4, (int)port, (struct sockaddr_in *)address) == 0;
}

/* Creates a socket listening on `address` (`text` names it in errors) in *socket_out. */
static cm_status_t listen_socket(const char *text, const struct sockaddr_storage *address,
                                 int *socket_out, int *port) {
    socklen_t address_length =
        address->ss_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
    int fd = socket(address->ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return cm_fail(CM_ERR_IO, "cannot create a socket to listen on %s: %s", text,
                       strerror(errno));
    int on = 1; /* restart while old connections sit in TIME_WAIT; a live listener still
                   makes bind fail on Linux */
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on);
    struct sockaddr_storage bound;
    socklen_t bound_length = sizeof bound;
    if (bind(fd, (const struct sockaddr *)address, address_length) != 0 ||
        listen(fd, LISTEN_BACKLOG) != 0 ||
        getsockname(fd, (struct sockaddr *)&bound, &bound_length) != 0) {
        int error = errno;
        close(fd);
        return cm_fail(CM_ERR_IO, "cannot listen for HTTP on %s: %s", text, strerror(error));
    }
    *port = bound.ss_family == AF_INET6 ? ntohs(((struct sockaddr_in6 *)&bound)->sin6_port)
                                        : ntohs(((struct sockaddr_in *)&bound)->sin_port);
    *socket_out = fd;
    return CM_OK;
}

static void free_unstarted_server(uv_handle_t *listener) { free(listener->data); }

/*
 * libuv writes to sockets with write(2), not send(MSG_NOSIGNAL), so a client that resets
 * its connection while an answer is being written would raise SIGPIPE and, at the default
 * disposition, kill the process.  A program that chose its own SIGPIPE handling keeps it.
 */
static void ignore_default_sigpipe(void) {
    struct sigaction current;
    if (sigaction(SIGPIPE, NULL, &current) == 0 && !(current.sa_flags & SA_SIGINFO) &&
        current.sa_handler == SIG_DFL)
        signal(SIGPIPE, SIG_IGN);
}

cm_status_t cm_http_new(uv_loop_t *loop, const char *listen_address, cm_http_handler_fn handler,
                        void *user, cm_http_t **out) {
    assert(loop && listen_address && handler && out);
    *out = NULL;
    struct sockaddr_storage address;
    if (!parse_address(listen_address, &address))
        return cm_fail(CM_ERR_INVALID_ARG,
                       "HTTP listen address \"%s\" is not HOST:PORT with an IP address and a "
                       "port from 0 to 65535 (e.g. 127.0.0.1:9100)",
                       listen_address);
    cm_http_t *server = calloc(1, sizeof *server);
    if (!server) return cm_fail(CM_ERR_NOMEM, "no memory for an HTTP server on %s", listen_address);
    server->loop = loop;
    server->handler = handler;
    server->user = user;
    server->request_timeout = CM_HTTP_REQUEST_TIMEOUT;
    server->header_timeout = CM_HTTP_HEADER_TIMEOUT;
    int fd = -1;
    cm_status_t status = listen_socket(listen_address, &address, &fd, &server->port);
    if (status != CM_OK) {
        free(server);
        return status;
    }
    uv_tcp_init(loop, &server->listener);
    server->listener.data = server;
    server->open_handles = 1;
    int failed = uv_tcp_open(&server->listener, fd);
    if (failed)
        close(fd); /* still ours: the handle did not take it */
    else
        failed = uv_listen((uv_stream_t *)&server->listener, LISTEN_BACKLOG, on_connection);
    if (failed) {
        /* Not seen in practice: libuv refusing a fresh listening socket.  The handle is
         * registered now, so the loop must finish closing it; that frees the server. */
        uv_close((uv_handle_t *)&server->listener, free_unstarted_server);
        return cm_fail(CM_ERR_IO, "cannot listen for HTTP on %s: %s", listen_address,
                       uv_strerror(failed));
    }
    ignore_default_sigpipe();
    *out = server;
    return CM_OK;
}

int cm_http_port(const cm_http_t *server) { return server->port; }

int cm_http_connections(const cm_http_t *server) { return server->connection_count; }

uint64_t cm_http_evictions(const cm_http_t *server) { return server->evictions; }

void cm_http_set_request_timeout(cm_http_t *server, uint64_t milliseconds) {
    assert(milliseconds > 0);
    server->request_timeout = milliseconds;
    server->header_timeout = milliseconds;
}

static void on_listener_closed(uv_handle_t *listener) {
    cm_http_t *server = listener->data;
    server->open_handles--;
    finish_if_closed(server);
}

void cm_http_close(cm_http_t *server, cm_http_closed_fn on_closed) {
    assert(!server->closing);
    server->closing = true;
    server->on_closed = on_closed;
    uv_close((uv_handle_t *)&server->listener, on_listener_closed);
    for (http_connection_t *connection = server->connections; connection;
         connection = connection->next)
        connection_close(connection);
}

void cm_http_free(cm_http_t **server) {
    if (!server || !*server) return;
    assert((*server)->open_handles == 0);
    free(*server);
    *server = NULL;
}

void cm_http_respond_metrics(cm_http_response_t *response, struct cm_metrics *metrics) {
    char *text = NULL;
    size_t length = 0;
    if (cm_metrics_render_alloc(metrics, &text, &length) != CM_OK) {
        response->status = 500;
        response->body = "cannot render metrics\n";
        return;
    }
    response->status = 200;
    response->content_type = CM_METRICS_CONTENT_TYPE;
    response->body = text;
    response->body_length = length;
    response->body_release = free;
}
