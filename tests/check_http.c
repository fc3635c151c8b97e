/*
 * cm_http: a server on an ephemeral port of 127.0.0.1, its loop running in a
 * second thread, talked to by plain blocking sockets (3 s receive timeout)
 * from the test thread.  Covers 200 bodies (static, malloc'd with release,
 * 1 MiB), 404, 405, 400 for garbage (seeded random bytes too), 431 at the
 * 8 KiB boundary, 408 for stalled clients, 500 for a bad handler answer,
 * clients that vanish or half-close midway, the connection cap, an address
 * in use, and an orderly shutdown that leaves uv_loop_close() == 0.
 *
 * The loop thread publishes cm_http_connections() through an atomic every
 * few milliseconds, so the test can wait for the server to drop connections
 * without touching the server from its own thread.
 */
#include "cm_http.h"
#include "cm_metrics.h"
#include "cm_rng.h"

#include <arpa/inet.h>
#include <check.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum { BIG_BODY_BYTES = 1 << 20, CLIENT_TIMEOUT_SECONDS = 3 };

typedef struct {
    uv_loop_t loop;
    uv_async_t stop;
    uv_timer_t probe;
    cm_http_t *server;
    int port;
    bool handler_closed_server; /* loop thread only */
    pthread_t thread;
    cm_metrics_t *metrics;
    cm_metrics_counter_t *requests;
    atomic_int connections; /* cm_http_connections(), as last seen by the loop thread */
    int closed_calls;       /* loop thread only; read after the join */
    int handler_calls;
    int calls_not_get;
    char echo[256];
} fixture_t;

/* ---- the server side (loop thread) ----------------------------------------------------- */

static void release_big_body(void *body) { free(body); }

static void on_server_closed(cm_http_t *server, void *user) {
    fixture_t *fixture = user;
    fixture->closed_calls++;
}

static void handle(const cm_http_request_t *request, cm_http_response_t *response, void *user) {
    fixture_t *fixture = user;
    fixture->handler_calls++;
    cm_metrics_counter_add(fixture->requests, 1);
    if (strcmp(request->method, "GET") != 0) fixture->calls_not_get++;
    if (strcmp(request->path, "/healthz") == 0) {
        response->status = 200;
        response->body = "ok\n";
    } else if (strcmp(request->path, "/readyz") == 0) {
        response->status = 503;
        response->body = "not ready\n";
    } else if (strcmp(request->path, "/metrics") == 0) {
        char *text;
        size_t length;
        if (cm_metrics_render_alloc(fixture->metrics, &text, &length) != CM_OK) return;
        response->status = 200;
        response->content_type = CM_METRICS_CONTENT_TYPE;
        response->body = text;
        response->body_length = length;
        response->body_release = free;
    } else if (strcmp(request->path, "/echo") == 0) {
        snprintf(fixture->echo, sizeof fixture->echo, "path=%s query=%s\n", request->path,
                 request->query);
        response->status = 200;
        response->body = fixture->echo;
    } else if (strcmp(request->path, "/big") == 0) {
        char *body = malloc(BIG_BODY_BYTES);
        if (!body) return;
        for (int i = 0; i < BIG_BODY_BYTES; i++) body[i] = (char)('a' + i % 26);
        response->status = 200;
        response->content_type = "application/octet-stream";
        response->body = body;
        response->body_length = BIG_BODY_BYTES;
        response->body_release = release_big_body;
    } else if (strcmp(request->path, "/bad-type") == 0) {
        response->status = 200;
        response->content_type = "text/plain\r\nX-Injected: yes";
    } else if (strcmp(request->path, "/bad-status") == 0) {
        response->status = 42;
    } else if (strcmp(request->path, "/shutdown") == 0) {
        cm_http_close(fixture->server, on_server_closed); /* closing from inside a handler */
        fixture->handler_closed_server = true;
        uv_async_send(&fixture->stop);
    }
}

static void on_probe(uv_timer_t *timer) {
    fixture_t *fixture = timer->data;
    if (!fixture->handler_closed_server)
        atomic_store(&fixture->connections, cm_http_connections(fixture->server));
}

static void on_stop(uv_async_t *stop) {
    fixture_t *fixture = stop->data;
    if (!fixture->handler_closed_server) cm_http_close(fixture->server, on_server_closed);
    uv_close((uv_handle_t *)&fixture->stop, NULL);
    uv_close((uv_handle_t *)&fixture->probe, NULL);
}

static void *run_loop(void *argument) {
    fixture_t *fixture = argument;
    uv_run(&fixture->loop, UV_RUN_DEFAULT);
    return NULL;
}

static void fixture_start(fixture_t *fixture, uint64_t request_timeout) {
    memset(fixture, 0, sizeof *fixture);
    ck_assert_int_eq(cm_metrics_new(&fixture->metrics), CM_OK);
    ck_assert_int_eq(cm_metrics_register_counter(fixture->metrics, "http_requests_total",
                                                 "Requests handled.", NULL, &fixture->requests),
                     CM_OK);
    ck_assert_int_eq(uv_loop_init(&fixture->loop), 0);
    ck_assert_int_eq(cm_http_new(&fixture->loop, "127.0.0.1:0", handle, fixture, &fixture->server),
                     CM_OK);
    fixture->port = cm_http_port(fixture->server);
    ck_assert_int_gt(fixture->port, 0);
    if (request_timeout) cm_http_set_request_timeout(fixture->server, request_timeout);
    ck_assert_int_eq(uv_async_init(&fixture->loop, &fixture->stop, on_stop), 0);
    fixture->stop.data = fixture;
    ck_assert_int_eq(uv_timer_init(&fixture->loop, &fixture->probe), 0);
    fixture->probe.data = fixture;
    ck_assert_int_eq(uv_timer_start(&fixture->probe, on_probe, 0, 2), 0);
    ck_assert_int_eq(pthread_create(&fixture->thread, NULL, run_loop, fixture), 0);
}

/* Joins the loop thread once it has stopped and checks that everything closed. */
static void fixture_join(fixture_t *fixture) {
    ck_assert_int_eq(pthread_join(fixture->thread, NULL), 0);
    ck_assert_int_eq(uv_loop_close(&fixture->loop), 0);
    ck_assert_int_eq(fixture->closed_calls, 1);
    ck_assert_int_eq(fixture->calls_not_get, 0);
    cm_http_free(&fixture->server);
    ck_assert_ptr_null(fixture->server);
    cm_metrics_free(&fixture->metrics);
}

/* Stops the server from its own thread, then joins as above. */
static void fixture_stop(fixture_t *fixture) {
    uv_async_send(&fixture->stop);
    fixture_join(fixture);
}

/* Waits (up to 2 s) until the server reports `count` open connections. */
static void wait_for_connections(fixture_t *fixture, int count) {
    for (int waited = 0; waited < 2000 && atomic_load(&fixture->connections) != count; waited++)
        usleep(1000);
    ck_assert_int_eq(atomic_load(&fixture->connections), count);
}

/* ---- the client side (test thread) ----------------------------------------------------- */

static int connect_client(const fixture_t *fixture) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    ck_assert_int_ge(fd, 0);
    struct timeval timeout = {.tv_sec = CLIENT_TIMEOUT_SECONDS};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof timeout);
    struct sockaddr_in address = {.sin_family = AF_INET,
                                  .sin_port = htons((uint16_t)fixture->port)};
    inet_pton(AF_INET, "127.0.0.1", &address.sin_addr);
    ck_assert_int_eq(connect(fd, (struct sockaddr *)&address, sizeof address), 0);
    return fd;
}

static void send_all(int fd, const char *bytes, size_t length) {
    while (length > 0) {
        ssize_t sent = send(fd, bytes, length, MSG_NOSIGNAL);
        ck_assert_msg(sent > 0, "client send failed");
        bytes += sent;
        length -= (size_t)sent;
    }
}

/* Everything the server sends until it closes; NUL-terminated, caller frees. */
static char *read_until_closed(int fd, size_t *length_out) {
    size_t capacity = 4096, length = 0;
    char *text = malloc(capacity);
    for (;;) {
        if (length + 1 == capacity) text = realloc(text, capacity *= 2);
        ssize_t got = recv(fd, text + length, capacity - length - 1, 0);
        ck_assert_msg(got >= 0, "client receive failed or timed out");
        if (got == 0) break;
        length += (size_t)got;
    }
    text[length] = '\0';
    if (length_out) *length_out = length;
    return text;
}

typedef struct {
    int status;
    char *raw;          /* the whole answer */
    const char *body;   /* inside raw */
    size_t body_length; /* bytes after the header */
} answer_t;

/* Sends `request` on a new connection and reads the answer, checking the framing. */
static answer_t exchange(const fixture_t *fixture, const char *request, size_t length) {
    int fd = connect_client(fixture);
    send_all(fd, request, length);
    answer_t answer = {0};
    size_t raw_length;
    answer.raw = read_until_closed(fd, &raw_length);
    close(fd);
    ck_assert_msg(sscanf(answer.raw, "HTTP/1.1 %d ", &answer.status) == 1, "no status line in %s",
                  answer.raw);
    char *header_end = strstr(answer.raw, "\r\n\r\n");
    ck_assert_ptr_nonnull(header_end);
    answer.body = header_end + 4;
    answer.body_length = raw_length - (size_t)(answer.body - answer.raw);
    const char *content_length = strstr(answer.raw, "\r\nContent-Length: ");
    ck_assert_ptr_nonnull(content_length);
    ck_assert_uint_eq(strtoull(content_length + 18, NULL, 10), answer.body_length);
    ck_assert_ptr_nonnull(strstr(answer.raw, "\r\nConnection: close\r\n"));
    return answer;
}

static answer_t get(const fixture_t *fixture, const char *path) {
    char request[512];
    snprintf(request, sizeof request, "GET %s HTTP/1.1\r\nHost: localhost\r\n\r\n", path);
    return exchange(fixture, request, strlen(request));
}

static void expect(answer_t answer, int status, const char *body) {
    ck_assert_int_eq(answer.status, status);
    if (body) ck_assert_str_eq(answer.body, body);
    free(answer.raw);
}

/* ---- tests ----------------------------------------------------------------------------- */

START_TEST(test_endpoints) {
    fixture_t fixture;
    fixture_start(&fixture, 0);

    answer_t health = get(&fixture, "/healthz");
    ck_assert_ptr_nonnull(strstr(health.raw, "HTTP/1.1 200 OK\r\n"));
    ck_assert_ptr_nonnull(strstr(health.raw, "\r\nContent-Type: text/plain; charset=utf-8\r\n"));
    expect(health, 200, "ok\n");
    expect(get(&fixture, "/readyz"), 503, "not ready\n");
    expect(get(&fixture, "/echo?x=1&y=2"), 200, "path=/echo query=x=1&y=2\n");
    expect(get(&fixture, "/echo"), 200, "path=/echo query=\n");
    answer_t missing = get(&fixture, "/nowhere");
    ck_assert_ptr_nonnull(strstr(missing.raw, "HTTP/1.1 404 Not Found\r\n"));
    expect(missing, 404, "not found\n");

    const char *http10 = "GET /healthz HTTP/1.0\r\n\r\n";
    expect(exchange(&fixture, http10, strlen(http10)), 200, "ok\n");
    const char *bare_newlines = "GET /healthz HTTP/1.1\nHost: x\n\n";
    expect(exchange(&fixture, bare_newlines, strlen(bare_newlines)), 200, "ok\n");

    answer_t metrics = get(&fixture, "/metrics");
    ck_assert_ptr_nonnull(strstr(metrics.raw, "\r\nContent-Type: " CM_METRICS_CONTENT_TYPE));
    expect(metrics, 200,
           "# HELP http_requests_total Requests handled.\n"
           "# TYPE http_requests_total counter\n"
           "http_requests_total 8\n");

    answer_t big = get(&fixture, "/big");
    ck_assert_int_eq(big.status, 200);
    ck_assert_uint_eq(big.body_length, BIG_BODY_BYTES);
    for (int i = 0; i < BIG_BODY_BYTES; i++)
        if (big.body[i] != (char)('a' + i % 26)) ck_abort_msg("big body differs at byte %d", i);
    free(big.raw);

    expect(get(&fixture, "/bad-type"), 500, "internal server error\n");
    expect(get(&fixture, "/bad-status"), 500, "internal server error\n");
    fixture_stop(&fixture);
    ck_assert_int_eq(fixture.handler_calls, 11);
}
END_TEST

START_TEST(test_methods_other_than_get) {
    fixture_t fixture;
    fixture_start(&fixture, 0);
    const char *methods[] = {"POST", "HEAD", "PUT", "DELETE", "OPTIONS", "PATCH", "BREW"};
    for (size_t i = 0; i < sizeof methods / sizeof methods[0]; i++) {
        char request[128];
        snprintf(request, sizeof request, "%s /healthz HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
                 methods[i]);
        answer_t answer = exchange(&fixture, request, strlen(request));
        ck_assert_ptr_nonnull(strstr(answer.raw, "HTTP/1.1 405 Method Not Allowed\r\n"));
        ck_assert_ptr_nonnull(strstr(answer.raw, "\r\nAllow: GET\r\n"));
        expect(answer, 405, "method not allowed\n");
    }
    fixture_stop(&fixture);
    ck_assert_int_eq(fixture.handler_calls, 0);
}
END_TEST

START_TEST(test_garbage_gets_400) {
    fixture_t fixture;
    fixture_start(&fixture, 0);
    const char *bad[] = {
        "\x01\x02\x03 hello\r\n\r\n",
        "GET healthz HTTP/1.1\r\n\r\n",
        "GET /healthz HTTP/2.0\r\n\r\n",
        "GET /healthz HTTP/1.1 extra\r\n\r\n",
        "GET  /healthz HTTP/1.1\r\n\r\n",
        "GET /healthz\r\n\r\n",
        "GET\r\n\r\n",
        "\r\n\r\n",
        "G(T /healthz HTTP/1.1\r\n\r\n",
        "GET /he\x7flthz HTTP/1.1\r\n\r\n",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        expect(exchange(&fixture, bad[i], strlen(bad[i])), 400, "bad request\n");
    static const char with_nul[] = "GET /heal\0thz HTTP/1.1\r\n\r\n";
    expect(exchange(&fixture, with_nul, sizeof with_nul - 1), 400, "bad request\n");

    cm_rng_t rng;
    cm_rng_seed(&rng, 2024);
    for (int round = 0; round < 20; round++) {
        char noise[4004];
        size_t length = 1 + cm_rng_below(&rng, 4000);
        for (size_t i = 0; i < length; i++) noise[i] = (char)cm_rng_below(&rng, 256);
        noise[0] = (char)0xff; /* never a method character, so never a valid request line */
        memcpy(noise + length, "\r\n\r\n", 4);
        expect(exchange(&fixture, noise, length + 4), 400, "bad request\n");
    }
    expect(get(&fixture, "/healthz"), 200, "ok\n"); /* still serving */
    fixture_stop(&fixture);
    ck_assert_int_eq(fixture.handler_calls, 1);
}
END_TEST

/* A request of exactly `total` bytes: a request line, filler header fields, a blank line. */
static char *padded_request(size_t total) {
    char *request = malloc(total + 1);
    const char *line = "GET /healthz HTTP/1.1\r\nX-Filler: ";
    size_t used = strlen(line);
    memcpy(request, line, used);
    memset(request + used, 'a', total - used - 4);
    memcpy(request + total - 4, "\r\n\r\n", 4);
    request[total] = '\0';
    return request;
}

START_TEST(test_header_limit) {
    fixture_t fixture;
    fixture_start(&fixture, 0);
    char *fits = padded_request(CM_HTTP_MAX_HEADER);
    expect(exchange(&fixture, fits, CM_HTTP_MAX_HEADER), 200, "ok\n");
    free(fits);
    char *too_long = padded_request(CM_HTTP_MAX_HEADER + 1);
    answer_t refused = exchange(&fixture, too_long, CM_HTTP_MAX_HEADER + 1);
    ck_assert_ptr_nonnull(strstr(refused.raw, "HTTP/1.1 431 Request Header Fields Too Large\r\n"));
    expect(refused, 431, "request header fields too large\n");
    free(too_long);
    /* far more than the limit: the answer still arrives (the server drains, then closes) */
    char *huge = padded_request(4 * CM_HTTP_MAX_HEADER);
    expect(exchange(&fixture, huge, 4 * CM_HTTP_MAX_HEADER), 431, NULL);
    /* the rest arrives after the answer: the server drains and drops it while it
     * half-closes, and the answer arrives intact */
    int slow = connect_client(&fixture);
    send_all(slow, huge, 2 * CM_HTTP_MAX_HEADER);
    usleep(50000);
    send_all(slow, huge + 2 * CM_HTTP_MAX_HEADER, 2 * CM_HTTP_MAX_HEADER);
    char *answer = read_until_closed(slow, NULL);
    ck_assert_ptr_nonnull(strstr(answer, "\r\n\r\nrequest header fields too large\n"));
    free(answer);
    close(slow);
    free(huge);
    wait_for_connections(&fixture, 0);
    fixture_stop(&fixture);
    ck_assert_int_eq(fixture.handler_calls, 1);
}
END_TEST

START_TEST(test_clients_that_vanish) {
    fixture_t fixture;
    fixture_start(&fixture, 0);

    int silent = connect_client(&fixture); /* connects and leaves */
    close(silent);

    int partial = connect_client(&fixture); /* half a request line, then gone */
    send_all(partial, "GET /hea", 8);
    close(partial);

    int half_open = connect_client(&fixture); /* half a request, then FIN: no answer */
    send_all(half_open, "GET /healthz HTT", 16);
    shutdown(half_open, SHUT_WR);
    size_t length;
    char *nothing = read_until_closed(half_open, &length);
    ck_assert_uint_eq(length, 0);
    free(nothing);
    close(half_open);

    int half_closed = connect_client(&fixture); /* a whole request, then FIN: answered */
    const char *request = "GET /healthz HTTP/1.1\r\n\r\n";
    send_all(half_closed, request, strlen(request));
    shutdown(half_closed, SHUT_WR);
    char *answer = read_until_closed(half_closed, NULL);
    ck_assert_ptr_nonnull(strstr(answer, "\r\n\r\nok\n"));
    free(answer);
    close(half_closed);

    for (int i = 0; i < 5; i++) { /* asks for 1 MiB and resets the connection unread */
        int rude = connect_client(&fixture);
        const char *big = "GET /big HTTP/1.1\r\n\r\n";
        send_all(rude, big, strlen(big));
        struct linger reset = {.l_onoff = 1, .l_linger = 0};
        setsockopt(rude, SOL_SOCKET, SO_LINGER, &reset, sizeof reset);
        close(rude);
    }

    wait_for_connections(&fixture, 0);
    expect(get(&fixture, "/healthz"), 200, "ok\n");
    fixture_stop(&fixture);
}
END_TEST

START_TEST(test_request_timeout) {
    fixture_t fixture;
    fixture_start(&fixture, 150);
    struct timespec start, end;
    clock_gettime(CLOCK_MONOTONIC, &start);
    int idle = connect_client(&fixture);
    int stalled = connect_client(&fixture);
    send_all(stalled, "GET /healthz HTTP/1.1\r\nHost:", 28);
    char *idle_answer = read_until_closed(idle, NULL);
    char *stalled_answer = read_until_closed(stalled, NULL);
    clock_gettime(CLOCK_MONOTONIC, &end);
    double seconds =
        (double)(end.tv_sec - start.tv_sec) + 1e-9 * (double)(end.tv_nsec - start.tv_nsec);
    ck_assert_ptr_nonnull(strstr(idle_answer, "HTTP/1.1 408 Request Timeout\r\n"));
    ck_assert_ptr_nonnull(strstr(stalled_answer, "HTTP/1.1 408 Request Timeout\r\n"));
    ck_assert_double_ge(seconds, 0.1); /* never before the deadline; no upper bound: a loaded
                                          machine may be late, and read_until_closed guards hangs */
    free(idle_answer);
    free(stalled_answer);
    close(idle);
    close(stalled);

    /* a client that reads its answer but never closes is dropped after the timeout too */
    int lingering = connect_client(&fixture);
    const char *request = "GET /healthz HTTP/1.1\r\n\r\n";
    send_all(lingering, request, strlen(request));
    char *answer = read_until_closed(lingering, NULL); /* returns once the server closes */
    ck_assert_ptr_nonnull(strstr(answer, "\r\n\r\nok\n"));
    free(answer);
    wait_for_connections(&fixture, 0);
    close(lingering);
    fixture_stop(&fixture);
}
END_TEST

/*
 * At the cap of one address, a new connection closes the oldest idle one instead of being
 * turned away: the stalled client first connected gets EOF, the newcomer its answer.
 */
START_TEST(test_connection_cap) {
    fixture_t fixture;
    fixture_start(&fixture, 0);
    int clients[CM_HTTP_MAX_PER_ADDRESS];
    for (int i = 0; i < CM_HTTP_MAX_PER_ADDRESS; i++) {
        clients[i] = connect_client(&fixture);
        send_all(clients[i], "GET", 3);
    }
    wait_for_connections(&fixture, CM_HTTP_MAX_PER_ADDRESS);
    expect(get(&fixture, "/healthz"), 200, "ok\n");
    size_t length;
    char *nothing = read_until_closed(clients[0], &length); /* the oldest: closed, unanswered */
    ck_assert_uint_eq(length, 0);
    free(nothing);
    for (int i = 0; i < CM_HTTP_MAX_PER_ADDRESS; i++) close(clients[i]);
    wait_for_connections(&fixture, 0);
    expect(get(&fixture, "/healthz"), 200, "ok\n");
    fixture_stop(&fixture);
}
END_TEST

/*
 * Slowloris: 200 clients each send half a header and stall.  A probe that comes after them
 * is still answered (the read timeout of get() only guards against a hang), and the server
 * never holds more than its caps.
 */
START_TEST(test_slow_clients_do_not_starve_probes) {
    fixture_t fixture;
    fixture_start(&fixture, 0); /* the default deadlines */
    enum { SLOW_CLIENTS = 200 };
    int clients[SLOW_CLIENTS];
    for (int i = 0; i < SLOW_CLIENTS; i++) {
        clients[i] = connect_client(&fixture);
        send_all(clients[i], "GET /healthz HTTP/1.1\r\nHost: x\r\n", 33);
    }
    for (int probe = 0; probe < 3; probe++) expect(get(&fixture, "/healthz"), 200, "ok\n");
    ck_assert_int_le(atomic_load(&fixture.connections), CM_HTTP_MAX_PER_ADDRESS + 1);
    for (int i = 0; i < SLOW_CLIENTS; i++) close(clients[i]);
    fixture_stop(&fixture);
    ck_assert_int_eq(fixture.handler_calls, 3);
}
END_TEST

START_TEST(test_shutdown_with_open_connections) {
    fixture_t fixture;
    fixture_start(&fixture, 0);
    int clients[3];
    for (int i = 0; i < 3; i++) {
        clients[i] = connect_client(&fixture);
        send_all(clients[i], "GET /healthz HTTP/1.1\r\n", 23);
    }
    wait_for_connections(&fixture, 3);
    fixture_stop(&fixture); /* closes the stalled connections too; loop closes cleanly */
    for (int i = 0; i < 3; i++) {
        char byte;
        ck_assert_int_le(recv(clients[i], &byte, 1, 0), 0); /* EOF or reset, no answer */
        close(clients[i]);
    }
}
END_TEST

START_TEST(test_close_from_handler) {
    fixture_t fixture;
    fixture_start(&fixture, 0);
    int client = connect_client(&fixture);
    const char *request = "GET /shutdown HTTP/1.1\r\n\r\n";
    send_all(client, request, strlen(request));
    char byte;
    ck_assert_int_le(recv(client, &byte, 1, 0), 0); /* dropped, no answer */
    close(client);
    fixture_join(&fixture); /* the handler closed the server and asked the loop to stop */
}
END_TEST

static void count_close(cm_http_t *server, void *user) { (*(int *)user)++; }

static void never_called(const cm_http_request_t *request, cm_http_response_t *response,
                         void *user) {
    ck_abort_msg("no request expected");
}

START_TEST(test_listen_failures) {
    uv_loop_t loop;
    ck_assert_int_eq(uv_loop_init(&loop), 0);
    int closed = 0;
    cm_http_t *first = NULL, *second = NULL;
    ck_assert_int_eq(cm_http_new(&loop, "localhost:0", never_called, &closed, &first), CM_OK);
    char address[64];
    snprintf(address, sizeof address, "127.0.0.1:%d", cm_http_port(first));
    ck_assert_int_eq(cm_http_new(&loop, address, never_called, &closed, &second), CM_ERR_IO);
    ck_assert_ptr_null(second);
    ck_assert_msg(strstr(cm_last_error(), address) && strstr(cm_last_error(), "in use"),
                  "error does not name the address: %s", cm_last_error());

    const char *invalid[] = {
        "nonsense",     "127.0.0.1",     "127.0.0.1:", "127.0.0.1:99999", "127.0.0.1:-1",
        "300.1.1.1:80", "127.0.0.1:80x", "[::1:80",    "example.com:80"};
    for (size_t i = 0; i < sizeof invalid / sizeof invalid[0]; i++) {
        ck_assert_int_eq(cm_http_new(&loop, invalid[i], never_called, NULL, &second),
                         CM_ERR_INVALID_ARG);
        ck_assert_msg(strstr(cm_last_error(), invalid[i]), "error does not name %s: %s", invalid[i],
                      cm_last_error());
    }
    /* IPv6 may be off in a container: either it listens or it says why */
    cm_status_t status = cm_http_new(&loop, "[::1]:0", never_called, &closed, &second);
    ck_assert(status == CM_OK || status == CM_ERR_IO);
    if (status == CM_OK) cm_http_close(second, count_close);

    cm_http_close(first, count_close);
    ck_assert_int_eq(uv_run(&loop, UV_RUN_DEFAULT), 0);
    ck_assert_int_eq(closed, status == CM_OK ? 2 : 1);
    ck_assert_int_eq(uv_loop_close(&loop), 0);
    cm_http_free(&first);
    cm_http_free(&second);
    ck_assert_ptr_null(first);
}
END_TEST

Suite *check_http_suite(void);
Suite *check_http_suite(void) {
    Suite *suite = suite_create("http");
    TCase *server = tcase_create("server");
    tcase_set_timeout(server, 10);
    tcase_add_test(server, test_endpoints);
    tcase_add_test(server, test_methods_other_than_get);
    tcase_add_test(server, test_garbage_gets_400);
    tcase_add_test(server, test_header_limit);
    tcase_add_test(server, test_clients_that_vanish);
    tcase_add_test(server, test_request_timeout);
    tcase_add_test(server, test_connection_cap);
    tcase_add_test(server, test_slow_clients_do_not_starve_probes);
    tcase_add_test(server, test_shutdown_with_open_connections);
    tcase_add_test(server, test_close_from_handler);
    tcase_add_test(server, test_listen_failures);
    suite_add_tcase(suite, server);
    return suite;
}
