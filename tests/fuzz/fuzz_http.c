/*
 * fuzz_http: libFuzzer harness for the HTTP request parser of cm_http, run
 * as it runs in the services: the input is what one client sends on one
 * TCP connection to a real cm_http server on 127.0.0.1 (started once, on a
 * libuv loop this thread drives), in chunks whose size depends on the
 * input's length so split reads of the header are exercised too.  The
 * client then half-closes and reads the answer.  cm_http has no in-memory
 * parser entry point and another change is reworking its connection
 * handling, so the harness needs none: it fuzzes the exact code path.
 *
 * Checked beyond "no crash, no leak, no undefined behaviour": the handler
 * only sees GET requests with a path starting with '/' and no '?' in it; an
 * answer, when there is one, is an HTTP/1.1 status line with
 * Content-Length and "Connection: close"; a request whose header ends
 * within CM_HTTP_MAX_HEADER bytes is always answered; and every connection
 * is closed within a few seconds (a hang aborts).
 */
#include "cm_http.h"

#include <arpa/inet.h>
#include <errno.h>
#include <poll.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

enum { REQUEST_TIMEOUT_MS = 3000, HANG_SECONDS = 10, ANSWER_CAPACITY = 4096 };

static uv_loop_t loop;
static cm_http_t *server;

static void handler(const cm_http_request_t *request, cm_http_response_t *response, void *user) {
    if (strcmp(request->method, "GET") != 0 || request->path[0] != '/' ||
        strchr(request->path, '?') || !request->query)
        abort();
    if (strncmp(request->path, "/echo", 5) == 0) {
        size_t length = strlen(request->path) + strlen(request->query) + 2;
        char *body = malloc(length);
        if (!body) abort();
        snprintf(body, length, "%s\n%s", request->path, request->query);
        response->status = 200;
        response->body = body;
        response->body_length = length - 1;
        response->body_release = free;
    } else if (strcmp(request->path, "/busy") == 0) {
        response->status = 503;
        response->body = "busy\n";
    }
}

static void start_server(void) {
    if (uv_loop_init(&loop) != 0) abort();
    if (cm_http_new(&loop, "127.0.0.1:0", handler, NULL, &server) != CM_OK) {
        fprintf(stderr, "fuzz_http: %s\n", cm_last_error());
        abort();
    }
    cm_http_set_request_timeout(server, REQUEST_TIMEOUT_MS);
}

static double now_seconds(void) {
    struct timespec time;
    clock_gettime(CLOCK_MONOTONIC, &time);
    return (double)time.tv_sec + (double)time.tv_nsec * 1e-9;
}

/* Whether data[0..size) holds the blank line ending a header within the server's buffer. */
static bool header_complete(const uint8_t *data, size_t size) {
    if (size > CM_HTTP_MAX_HEADER) size = CM_HTTP_MAX_HEADER;
    for (size_t at = 0; at + 1 < size; at++)
        if (data[at] == '\n' && (data[at + 1] == '\n' ||
                                 (at + 2 < size && data[at + 1] == '\r' && data[at + 2] == '\n')))
            return true;
    return false;
}

/*
 * Connects `client` (non-blocking) to `address` within 200 ms, running the server's loop
 * meanwhile; 0, or -1 with errno (ETIMEDOUT when the handshake did not finish: a SYN that
 * met a TIME_WAIT of the same four-tuple is only retransmitted after a second, then two...).
 */
static int connect_briefly(int client, const struct sockaddr_in *address) {
    if (connect(client, (const struct sockaddr *)address, sizeof *address) == 0) return 0;
    if (errno != EINPROGRESS && errno != EINTR) return -1;
    struct pollfd wait = {.fd = client, .events = POLLOUT};
    for (int slice = 0; slice < 20; slice++) {
        uv_run(&loop, UV_RUN_NOWAIT);
        if (poll(&wait, 1, 10) > 0) {
            int error = 0;
            socklen_t length = sizeof error;
            if (getsockopt(client, SOL_SOCKET, SO_ERROR, &error, &length) != 0) return -1;
            if (error == 0) return 0;
            errno = error;
            return -1;
        }
    }
    errno = ETIMEDOUT;
    return -1;
}

/*
 * A client socket (non-blocking: the harness sends and receives with MSG_DONTWAIT) connected
 * to the server.  Thousands of connections a second leave their closed ends in TIME_WAIT for
 * a minute, which would use up the ephemeral ports of one source address within seconds:
 * each connection comes from the next of 250 loopback source addresses (127.0.0.2 ...), and a
 * connect that finds no free port, or does not complete within 200 ms, is tried again from
 * the next address for a few seconds before the harness gives up.
 */
static int connect_client(void) {
    static unsigned next_source;
    struct sockaddr_in address = {.sin_family = AF_INET,
                                  .sin_port = htons((uint16_t)cm_http_port(server))};
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    for (int attempt = 0; attempt < 100; attempt++) {
        int client = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (client < 0) abort();
        struct sockaddr_in source = {.sin_family = AF_INET};
        source.sin_addr.s_addr = htonl(INADDR_LOOPBACK + 1 + next_source++ % 250);
        if (bind(client, (struct sockaddr *)&source, sizeof source) == 0 &&
            connect_briefly(client, &address) == 0)
            return client;
        int error = errno;
        close(client);
        if (error != EADDRNOTAVAIL && error != EADDRINUSE && error != EAGAIN &&
            error != ETIMEDOUT && error != EINTR) {
            fprintf(stderr, "fuzz_http: cannot connect to the server: %s\n", strerror(error));
            abort();
        }
        uv_run(&loop, UV_RUN_NOWAIT);
        usleep(10000);
    }
    fprintf(stderr, "fuzz_http: no connection to the server within 100 attempts\n");
    abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!server) start_server();
    int client = connect_client();

    size_t chunk = 1 + size % 613, sent = 0, received = 0;
    char answer[ANSWER_CAPACITY + 1];
    bool shut = false, finished = false, reset = false;
    double deadline = now_seconds() + HANG_SECONDS;
    while (!finished || cm_http_connections(server) > 0) {
        if (sent < size) {
            size_t piece = size - sent < chunk ? size - sent : chunk;
            ssize_t wrote = send(client, data + sent, piece, MSG_NOSIGNAL | MSG_DONTWAIT);
            if (wrote > 0)
                sent += (size_t)wrote;
            else if (wrote < 0 && errno != EAGAIN && errno != EINTR)
                sent = size; /* the server hung up (after a 431, say): stop sending */
        } else if (!shut) {
            shutdown(client, SHUT_WR);
            shut = true;
        }
        uv_run(&loop, UV_RUN_NOWAIT);
        if (!finished) {
            char buffer[1024];
            ssize_t got = recv(client, buffer, sizeof buffer, MSG_DONTWAIT);
            if (got > 0) {
                size_t keep = (size_t)got < ANSWER_CAPACITY - received ? (size_t)got
                                                                       : ANSWER_CAPACITY - received;
                memcpy(answer + received, buffer, keep);
                received += keep;
            } else if (got == 0) {
                finished = true;
            } else if (errno != EAGAIN && errno != EINTR) {
                finished = reset = true;
            }
        }
        if (now_seconds() > deadline) {
            fprintf(stderr, "fuzz_http: the connection was not closed within %d s\n", HANG_SECONDS);
            abort();
        }
    }
    close(client);
    answer[received] = '\0';
    if (reset) return 0;
    if (received > 0) {
        if (strncmp(answer, "HTTP/1.1 ", 9) != 0 || !strstr(answer, "\r\nContent-Length: ") ||
            !strstr(answer, "\r\nConnection: close\r\n")) {
            fprintf(stderr, "fuzz_http: malformed answer: %s\n", answer);
            abort();
        }
    } else if (header_complete(data, size)) {
        fprintf(stderr, "fuzz_http: a complete request got no answer\n");
        abort();
    }
    return 0;
}
