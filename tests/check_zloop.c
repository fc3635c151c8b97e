/*
 * cm_zloop: a ROUTER bound to an ipc:// path in a fresh temporary directory
 * is driven by cm_zloop on a libuv loop in a second thread and echoes every
 * message back (small frames copied, large ones zero-copy); a DEALER in the
 * test thread, with blocking calls and 5 s timeouts, talks to it.  One
 * ZeroMQ context per test (Check runs each test in its own process).
 *
 * Covers: 1000 multipart messages in seeded random bursts all echoed, in
 * order, none lost, the callback never re-entered; replies sent later from a
 * timer (where a send can swallow the ZMQ_FD edge) with a pipelining client;
 * a backlog of more than two drain batches with a callback that never sends;
 * messages queued (and the ZMQ_FD edge consumed) before the zloop started;
 * the frame cap (64 kept, 65 dropped and counted); closing from inside the
 * callback stops delivery; EAGAIN as CM_ERR_BUSY with zero-copy frames freed
 * exactly once; socket options; an orderly shutdown where uv_loop_close,
 * zmq_close and zmq_ctx_term all return 0.
 */
#include "cm_zloop.h"
#include "cm_rng.h"

#include <check.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

enum {
    ECHO_MESSAGES = 1000,
    DEFERRED_MESSAGES = 200,
    DEFERRED_WINDOW = 4, /* messages the client keeps in flight */
    DEFERRED_SLOTS = 16,
    REPLY_PAUSE_US = 1500,
    ZERO_COPY_THRESHOLD = 64, /* bytes; larger echoed frames go out zero-copy */
    CLIENT_TIMEOUT_MS = 5000
};

static atomic_int zero_copy_frees; /* ZeroMQ calls free_fn from its I/O thread */

static void count_and_free(void *data, void *hint) {
    atomic_fetch_add(&zero_copy_frees, 1);
    free(data);
}

typedef enum {
    MODE_ECHO,     /* replies from inside the callback */
    MODE_DEFERRED, /* keeps messages, a timer replies later */
    MODE_COUNT     /* only counts, never sends */
} server_mode_t;

typedef struct {
    void *context;
    char directory[64];
    char endpoint[128];
    void *router; /* used by the loop thread only while it runs */
    void *dealer; /* the test thread's client */
    uv_loop_t loop;
    uv_async_t stop;
    uv_timer_t reply_timer; /* deferred mode: sends the kept messages back */
    server_mode_t mode;
    atomic_int counted; /* counting mode: messages seen, watched by the test thread */
    cm_zloop_t *zloop;
    pthread_t thread;
    /* written on the loop thread, read after the join */
    int depth, deepest;
    int messages_seen;
    bool closed_by_callback;
    int messages_after_close;
    int echo_failures;
    int zero_copy_sent;
    int closed_calls;
    cm_zloop_stats_t stats;
    zmq_msg_t kept[DEFERRED_SLOTS][4]; /* deferred mode: messages waiting for the timer */
    int kept_frames[DEFERRED_SLOTS];
    int kept_count;
} fixture_t;

/* ---- the server side (loop thread) ----------------------------------------------------- */

static void on_zloop_closed(cm_zloop_t *zloop, void *user) {
    fixture_t *fixture = user;
    fixture->stats = cm_zloop_stats(zloop);
    fixture->closed_calls++;
}

static void echo(cm_zloop_t *zloop, zmq_msg_t *frames, int frame_count, void *user) {
    fixture_t *fixture = user;
    if (++fixture->depth > fixture->deepest) fixture->deepest = fixture->depth;
    if (fixture->closed_by_callback) fixture->messages_after_close++;
    fixture->messages_seen++;
    if (frame_count >= 2 && zmq_msg_size(&frames[1]) == 5 &&
        memcmp(zmq_msg_data(&frames[1]), "close", 5) == 0) {
        cm_zloop_close(zloop, on_zloop_closed);
        uv_close((uv_handle_t *)&fixture->stop, NULL);
        fixture->closed_by_callback = true;
        fixture->depth--;
        return;
    }
    cm_zloop_frame_t replies[CM_ZLOOP_MAX_FRAMES];
    for (int i = 0; i < frame_count; i++) {
        size_t length = zmq_msg_size(&frames[i]);
        replies[i] = (cm_zloop_frame_t){.data = zmq_msg_data(&frames[i]), .length = length};
        if (i > 0 && length >= ZERO_COPY_THRESHOLD) {
            void *copy = malloc(length);
            memcpy(copy, zmq_msg_data(&frames[i]), length);
            replies[i] =
                (cm_zloop_frame_t){.data = copy, .length = length, .free_fn = count_and_free};
            fixture->zero_copy_sent++;
        }
    }
    if (cm_zloop_send(zloop, replies, frame_count) != CM_OK) fixture->echo_failures++;
    fixture->depth--;
}

/*
 * Deferred mode, the teacher's pattern: the callback only keeps the frames (moved out,
 * not copied) and a timer sends the replies later, outside any drain.  A send there can
 * consume the ZMQ_FD edge of a message that just arrived; only the drain that every send
 * schedules finds that message, otherwise the client waits for it forever.
 *
 * To make that happen on every run rather than by luck, the timer pauses between two
 * replies: the client answers the first reply with a new message, which arrives (and
 * signals ZMQ_FD) during the pause, and the second send, more than ZeroMQ's ~1 ms
 * command throttle after the first, processes that signal.
 */
static void keep_for_later(cm_zloop_t *zloop, zmq_msg_t *frames, int frame_count, void *user) {
    fixture_t *fixture = user;
    fixture->messages_seen++;
    if (fixture->kept_count == DEFERRED_SLOTS || frame_count > 4) {
        fixture->echo_failures++;
        return;
    }
    int slot = fixture->kept_count++;
    for (int i = 0; i < frame_count; i++) {
        zmq_msg_init(&fixture->kept[slot][i]);
        zmq_msg_move(&fixture->kept[slot][i], &frames[i]);
    }
    fixture->kept_frames[slot] = frame_count;
}

static void on_reply_timer(uv_timer_t *timer) {
    fixture_t *fixture = timer->data;
    for (int slot = 0; slot < fixture->kept_count; slot++) {
        if (slot > 0) usleep(REPLY_PAUSE_US);
        cm_zloop_frame_t replies[4];
        for (int i = 0; i < fixture->kept_frames[slot]; i++)
            replies[i] = (cm_zloop_frame_t){.data = zmq_msg_data(&fixture->kept[slot][i]),
                                            .length = zmq_msg_size(&fixture->kept[slot][i])};
        if (cm_zloop_send(fixture->zloop, replies, fixture->kept_frames[slot]) != CM_OK)
            fixture->echo_failures++;
        for (int i = 0; i < fixture->kept_frames[slot]; i++) zmq_msg_close(&fixture->kept[slot][i]);
    }
    fixture->kept_count = 0;
}

/* Counting mode: a callback that never sends, so only the drain's own rescheduling (after
 * a full batch) keeps a backlog moving. */
static void count_only(cm_zloop_t *zloop, zmq_msg_t *frames, int frame_count, void *user) {
    fixture_t *fixture = user;
    fixture->messages_seen++;
    atomic_fetch_add(&fixture->counted, 1);
}

static void on_stop(uv_async_t *stop) {
    fixture_t *fixture = stop->data;
    cm_zloop_close(fixture->zloop, on_zloop_closed);
    uv_close((uv_handle_t *)stop, NULL);
    if (fixture->mode == MODE_DEFERRED) uv_close((uv_handle_t *)&fixture->reply_timer, NULL);
}

static void *run_loop(void *argument) {
    fixture_t *fixture = argument;
    uv_run(&fixture->loop, UV_RUN_DEFAULT);
    return NULL;
}

static void set_int(void *socket, int option, int value) {
    ck_assert_int_eq(zmq_setsockopt(socket, option, &value, sizeof value), 0);
}

/* Context, temporary directory, bound ROUTER, connected DEALER; no loop yet. */
static void fixture_open(fixture_t *fixture) {
    memset(fixture, 0, sizeof *fixture);
    atomic_store(&zero_copy_frees, 0);
    fixture->context = zmq_ctx_new();
    ck_assert_ptr_nonnull(fixture->context);
    strcpy(fixture->directory, "/tmp/cm-zloop-XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(fixture->directory));
    snprintf(fixture->endpoint, sizeof fixture->endpoint, "ipc://%s/router", fixture->directory);

    fixture->router = zmq_socket(fixture->context, ZMQ_ROUTER);
    ck_assert_ptr_nonnull(fixture->router);
    ck_assert_int_eq(cm_zloop_configure_socket(fixture->router, 4000, 4000, 1 << 20), CM_OK);
    set_int(fixture->router, ZMQ_ROUTER_MANDATORY, 1); /* a full pipe is an error, not a drop */
    set_int(fixture->router, ZMQ_LINGER, 0);
    ck_assert_int_eq(zmq_bind(fixture->router, fixture->endpoint), 0);

    fixture->dealer = zmq_socket(fixture->context, ZMQ_DEALER);
    ck_assert_ptr_nonnull(fixture->dealer);
    ck_assert_int_eq(cm_zloop_configure_socket(fixture->dealer, 4000, 4000, -1), CM_OK);
    set_int(fixture->dealer, ZMQ_RCVTIMEO, CLIENT_TIMEOUT_MS);
    set_int(fixture->dealer, ZMQ_SNDTIMEO, CLIENT_TIMEOUT_MS);
    set_int(fixture->dealer, ZMQ_LINGER, 0);
    ck_assert_int_eq(zmq_connect(fixture->dealer, fixture->endpoint), 0);
    ck_assert_int_eq(uv_loop_init(&fixture->loop), 0);
}

/* Wraps the ROUTER in a zloop and hands both to a new loop thread. */
static void fixture_start(fixture_t *fixture, server_mode_t mode) {
    static const cm_zloop_message_fn callbacks[] = {echo, keep_for_later, count_only};
    fixture->mode = mode;
    ck_assert_int_eq(
        cm_zloop_new(&fixture->loop, fixture->router, callbacks[mode], fixture, &fixture->zloop),
        CM_OK);
    ck_assert_int_eq(uv_async_init(&fixture->loop, &fixture->stop, on_stop), 0);
    fixture->stop.data = fixture;
    if (mode == MODE_DEFERRED) {
        ck_assert_int_eq(uv_timer_init(&fixture->loop, &fixture->reply_timer), 0);
        fixture->reply_timer.data = fixture;
        ck_assert_int_eq(uv_timer_start(&fixture->reply_timer, on_reply_timer, 1, 1), 0);
    }
    ck_assert_int_eq(pthread_create(&fixture->thread, NULL, run_loop, fixture), 0);
}

/* Joins the loop thread (asking it to stop unless it already stopped) and closes all. */
static void fixture_close(fixture_t *fixture, bool ask_to_stop) {
    if (ask_to_stop) uv_async_send(&fixture->stop);
    ck_assert_int_eq(pthread_join(fixture->thread, NULL), 0);
    ck_assert_int_eq(uv_loop_close(&fixture->loop), 0);
    ck_assert_int_eq(fixture->closed_calls, 1);
    cm_zloop_free(&fixture->zloop);
    ck_assert_ptr_null(fixture->zloop);
    ck_assert_int_eq(zmq_close(fixture->router), 0);
    ck_assert_int_eq(zmq_close(fixture->dealer), 0);
    ck_assert_int_eq(zmq_ctx_term(fixture->context), 0);
    char path[160];
    snprintf(path, sizeof path, "%s/router", fixture->directory);
    unlink(path); /* ZeroMQ removes it on close; this only covers older versions */
    ck_assert_int_eq(rmdir(fixture->directory), 0);
}

/* ---- the client side (test thread) ----------------------------------------------------- */

/* Bytes of the payload of message `sequence`: from 0 to 299, some above the zero-copy
 * threshold, some below, some empty. */
static size_t payload_length(uint32_t sequence) { return (sequence * 2654435761u >> 13) % 300; }

static uint8_t payload_byte(uint32_t sequence, size_t index) {
    return (uint8_t)(sequence * 31u + index * 7u);
}

/* Message `sequence`: [sequence (4 bytes)] [payload] and, for every third, [empty]. */
static void send_numbered(void *dealer, uint32_t sequence) {
    uint8_t payload[300];
    size_t length = payload_length(sequence);
    for (size_t i = 0; i < length; i++) payload[i] = payload_byte(sequence, i);
    bool third = sequence % 3 == 0;
    ck_assert_int_eq(zmq_send(dealer, &sequence, sizeof sequence, ZMQ_SNDMORE), 4);
    ck_assert_int_eq(zmq_send(dealer, payload, length, third ? ZMQ_SNDMORE : 0), (int)length);
    if (third) ck_assert_int_eq(zmq_send(dealer, "", 0, 0), 0);
}

/* Receives one whole message into frames (at most capacity); returns the frame count. */
static int receive_frames(void *dealer, zmq_msg_t *frames, int capacity) {
    int count = 0;
    for (bool more = true; more; count++) {
        ck_assert_int_lt(count, capacity);
        zmq_msg_init(&frames[count]);
        ck_assert_msg(zmq_msg_recv(&frames[count], dealer, 0) >= 0, "no echo within %d ms: %s",
                      CLIENT_TIMEOUT_MS, zmq_strerror(zmq_errno()));
        more = zmq_msg_more(&frames[count]);
    }
    return count;
}

static void expect_numbered(void *dealer, uint32_t sequence) {
    zmq_msg_t frames[4];
    int count = receive_frames(dealer, frames, 4);
    ck_assert_int_eq(count, sequence % 3 == 0 ? 3 : 2);
    uint32_t got;
    ck_assert_uint_eq(zmq_msg_size(&frames[0]), sizeof got);
    memcpy(&got, zmq_msg_data(&frames[0]), sizeof got);
    ck_assert_uint_eq(got, sequence);
    size_t length = payload_length(sequence);
    ck_assert_uint_eq(zmq_msg_size(&frames[1]), length);
    const uint8_t *payload = zmq_msg_data(&frames[1]);
    for (size_t i = 0; i < length; i++) ck_assert_uint_eq(payload[i], payload_byte(sequence, i));
    if (count == 3) ck_assert_uint_eq(zmq_msg_size(&frames[2]), 0);
    for (int i = 0; i < count; i++) zmq_msg_close(&frames[i]);
}

/* Waits until the ROUTER has a message queued, consuming the ZMQ_FD edge on the way. */
static void wait_until_queued(void *router) {
    zmq_pollitem_t item = {.socket = router, .events = ZMQ_POLLIN};
    ck_assert_int_eq(zmq_poll(&item, 1, CLIENT_TIMEOUT_MS), 1);
}

/* ---- tests ----------------------------------------------------------------------------- */

START_TEST(test_echo_bursts_in_order) {
    fixture_t fixture;
    fixture_open(&fixture);
    fixture_start(&fixture, MODE_ECHO);
    cm_rng_t rng;
    cm_rng_seed(&rng, 42);
    uint32_t sent = 0, received = 0;
    while (received < ECHO_MESSAGES) {
        uint32_t burst = 1 + cm_rng_below(&rng, 200); /* back to back, no waiting */
        for (uint32_t i = 0; i < burst && sent < ECHO_MESSAGES; i++)
            send_numbered(fixture.dealer, sent++);
        uint32_t outstanding = sent - received;
        uint32_t take = sent == ECHO_MESSAGES ? outstanding : cm_rng_below(&rng, outstanding + 1);
        for (uint32_t i = 0; i < take; i++) expect_numbered(fixture.dealer, received++);
    }
    int pending = 0;
    ck_assert_int_eq(zmq_recv(fixture.dealer, &pending, sizeof pending, ZMQ_DONTWAIT), -1);
    ck_assert_int_eq(zmq_errno(), EAGAIN); /* nothing extra, nothing duplicated */
    fixture_close(&fixture, true);

    ck_assert_int_eq(fixture.messages_seen, ECHO_MESSAGES);
    ck_assert_int_eq(fixture.deepest, 1); /* never re-entered from inside a send */
    ck_assert_int_eq(fixture.echo_failures, 0);
    ck_assert_uint_eq(fixture.stats.messages_received, ECHO_MESSAGES);
    ck_assert_uint_eq(fixture.stats.messages_sent, ECHO_MESSAGES);
    ck_assert_uint_eq(fixture.stats.send_busy, 0);
    ck_assert_uint_eq(fixture.stats.dropped_too_many_frames, 0);
    ck_assert_int_gt(fixture.zero_copy_sent, 100);
    ck_assert_int_eq(atomic_load(&zero_copy_frees), fixture.zero_copy_sent);
}
END_TEST

START_TEST(test_sends_outside_the_callback) {
    fixture_t fixture;
    fixture_open(&fixture);
    fixture_start(&fixture, MODE_DEFERRED);
    uint32_t sent = 0, received = 0;
    while (received < DEFERRED_MESSAGES) {
        while (sent < DEFERRED_MESSAGES && sent - received < DEFERRED_WINDOW)
            send_numbered(fixture.dealer, sent++);
        expect_numbered(fixture.dealer, received++);
    }
    fixture_close(&fixture, true);
    ck_assert_int_eq(fixture.messages_seen, DEFERRED_MESSAGES);
    ck_assert_int_eq(fixture.echo_failures, 0);
    ck_assert_uint_eq(fixture.stats.messages_sent, DEFERRED_MESSAGES);
}
END_TEST

START_TEST(test_backlog_larger_than_a_batch) {
    fixture_t fixture;
    fixture_open(&fixture);
    const int backlog = 2 * CM_ZLOOP_DRAIN_BATCH + 10;
    for (int sequence = 0; sequence < backlog; sequence++)
        send_numbered(fixture.dealer, (uint32_t)sequence);
    wait_until_queued(fixture.router);
    usleep(20000); /* let the whole backlog arrive */
    fixture_start(&fixture, MODE_COUNT);
    int counted = 0;
    for (int waited = 0; waited < CLIENT_TIMEOUT_MS; waited++) {
        if ((counted = atomic_load(&fixture.counted)) == backlog) break;
        usleep(1000);
    }
    ck_assert_int_eq(counted, backlog);
    fixture_close(&fixture, true);
    ck_assert_int_eq(fixture.messages_seen, backlog);
}
END_TEST

START_TEST(test_messages_queued_before_start) {
    fixture_t fixture;
    fixture_open(&fixture);
    for (uint32_t sequence = 0; sequence < 5; sequence++) send_numbered(fixture.dealer, sequence);
    wait_until_queued(fixture.router); /* the edge is gone: only a drain at start finds them */
    fixture_start(&fixture, MODE_ECHO);
    for (uint32_t sequence = 0; sequence < 5; sequence++) expect_numbered(fixture.dealer, sequence);
    fixture_close(&fixture, true);
    ck_assert_int_eq(fixture.messages_seen, 5);
}
END_TEST

/* Sends `count` frames, the first holding `tag`. */
static void send_frames(void *dealer, int count, const char *tag) {
    for (int i = 0; i < count; i++) {
        const char *data = i == 0 ? tag : "f";
        ck_assert_int_ge(zmq_send(dealer, data, strlen(data), i + 1 < count ? ZMQ_SNDMORE : 0), 0);
    }
}

START_TEST(test_too_many_frames_dropped) {
    fixture_t fixture;
    fixture_open(&fixture);
    fixture_start(&fixture, MODE_ECHO);
    /* the ROUTER adds a routing-id frame: 63 sent arrive as 64 (kept), 64 as 65 (dropped) */
    send_frames(fixture.dealer, CM_ZLOOP_MAX_FRAMES, "too-many");
    send_frames(fixture.dealer, CM_ZLOOP_MAX_FRAMES + 500, "far-too-many");
    send_frames(fixture.dealer, CM_ZLOOP_MAX_FRAMES - 1, "most");
    send_frames(fixture.dealer, 1, "one");
    zmq_msg_t frames[CM_ZLOOP_MAX_FRAMES];
    int count = receive_frames(fixture.dealer, frames, CM_ZLOOP_MAX_FRAMES);
    ck_assert_int_eq(count, CM_ZLOOP_MAX_FRAMES - 1);
    ck_assert_uint_eq(zmq_msg_size(&frames[0]), 4);
    ck_assert_int_eq(memcmp(zmq_msg_data(&frames[0]), "most", 4), 0);
    for (int i = 0; i < count; i++) zmq_msg_close(&frames[i]);
    count = receive_frames(fixture.dealer, frames, CM_ZLOOP_MAX_FRAMES);
    ck_assert_int_eq(count, 1);
    ck_assert_int_eq(memcmp(zmq_msg_data(&frames[0]), "one", 3), 0);
    zmq_msg_close(&frames[0]);
    fixture_close(&fixture, true);
    ck_assert_uint_eq(fixture.stats.dropped_too_many_frames, 2);
    ck_assert_uint_eq(fixture.stats.messages_received, 2);
    ck_assert_int_eq(fixture.messages_seen, 2);
}
END_TEST

START_TEST(test_close_from_callback) {
    fixture_t fixture;
    fixture_open(&fixture);
    send_numbered(fixture.dealer, 0);
    send_frames(fixture.dealer, 1, "close");
    for (uint32_t sequence = 1; sequence <= 10; sequence++) send_numbered(fixture.dealer, sequence);
    wait_until_queued(fixture.router);
    usleep(20000); /* let the rest arrive too, so one drain could see all of them */
    fixture_start(&fixture, MODE_ECHO);
    expect_numbered(fixture.dealer, 0);
    fixture_close(&fixture, false); /* the callback closed the zloop and the stop handle */
    ck_assert_int_eq(fixture.messages_after_close, 0);
    ck_assert_uint_eq(fixture.stats.messages_received, 2);
}
END_TEST

static void unexpected_message(cm_zloop_t *zloop, zmq_msg_t *frames, int frame_count, void *user) {
    ck_abort_msg("no message expected"); /* the loop runs on the test thread here */
}

START_TEST(test_busy_and_zero_copy_ownership) {
    void *context = zmq_ctx_new();
    void *lonely = zmq_socket(context, ZMQ_DEALER); /* no peer: every send is EAGAIN */
    set_int(lonely, ZMQ_LINGER, 0);
    uv_loop_t loop;
    ck_assert_int_eq(uv_loop_init(&loop), 0);
    cm_zloop_t *zloop = NULL;
    ck_assert_int_eq(cm_zloop_new(&loop, lonely, unexpected_message, NULL, &zloop), CM_OK);
    atomic_store(&zero_copy_frees, 0);

    cm_zloop_frame_t copied_first[3] = {
        {.data = "header", .length = 6},
        {.data = malloc(100), .length = 100, .free_fn = count_and_free},
        {.data = malloc(100), .length = 100, .free_fn = count_and_free},
    };
    ck_assert_int_eq(cm_zloop_send(zloop, copied_first, 3), CM_ERR_BUSY);
    ck_assert_ptr_nonnull(strstr(cm_last_error(), "high-water mark"));
    ck_assert_int_eq(atomic_load(&zero_copy_frees), 2); /* never offered, freed anyway */

    cm_zloop_frame_t zero_copy_first[2] = {
        {.data = malloc(100), .length = 100, .free_fn = count_and_free},
        {.data = "tail", .length = 4},
    };
    ck_assert_int_eq(cm_zloop_send(zloop, zero_copy_first, 2), CM_ERR_BUSY);
    ck_assert_int_eq(atomic_load(&zero_copy_frees), 3); /* refused by ZeroMQ, freed once */

    cm_zloop_stats_t stats = cm_zloop_stats(zloop);
    ck_assert_uint_eq(stats.send_busy, 2);
    ck_assert_uint_eq(stats.messages_sent, 0);

    cm_zloop_close(zloop, NULL);
    ck_assert_int_eq(uv_run(&loop, UV_RUN_DEFAULT), 0);
    ck_assert_int_eq(uv_loop_close(&loop), 0);
    cm_zloop_free(&zloop);
    cm_zloop_free(&zloop); /* NULL-safe */
    ck_assert_int_eq(zmq_close(lonely), 0);
    ck_assert_int_eq(zmq_ctx_term(context), 0);
}
END_TEST

static int get_int(void *socket, int option) {
    int value = -7;
    size_t size = sizeof value;
    ck_assert_int_eq(zmq_getsockopt(socket, option, &value, &size), 0);
    return value;
}

START_TEST(test_configure_socket) {
    void *context = zmq_ctx_new();
    void *socket = zmq_socket(context, ZMQ_ROUTER);
    ck_assert_int_eq(cm_zloop_configure_socket(socket, 123, 456, 789), CM_OK);
    ck_assert_int_eq(get_int(socket, ZMQ_SNDHWM), 123);
    ck_assert_int_eq(get_int(socket, ZMQ_RCVHWM), 456);
    int64_t max_message_size = 0;
    size_t size = sizeof max_message_size;
    ck_assert_int_eq(zmq_getsockopt(socket, ZMQ_MAXMSGSIZE, &max_message_size, &size), 0);
    ck_assert_int_eq(max_message_size, 789);

    ck_assert_int_eq(cm_zloop_configure_socket(socket, -1, 10, 10), CM_ERR_INVALID_ARG);
    ck_assert_ptr_nonnull(strstr(cm_last_error(), "ZMQ_SNDHWM=-1"));
    ck_assert_int_eq(cm_zloop_configure_socket(socket, 10, -5, 10), CM_ERR_INVALID_ARG);
    ck_assert_ptr_nonnull(strstr(cm_last_error(), "ZMQ_RCVHWM=-5"));

    uv_loop_t loop;
    ck_assert_int_eq(uv_loop_init(&loop), 0);
    cm_zloop_t *zloop = NULL;
    ck_assert_int_eq(cm_zloop_new(&loop, socket, unexpected_message, NULL, &zloop), CM_OK);
    cm_zloop_t *twice = NULL; /* the same ZMQ_FD twice on one loop */
    ck_assert_int_eq(cm_zloop_new(&loop, socket, unexpected_message, NULL, &twice),
                     CM_ERR_INVALID_ARG);
    ck_assert_ptr_null(twice);
    cm_zloop_close(zloop, NULL);
    ck_assert_int_eq(uv_run(&loop, UV_RUN_DEFAULT), 0);
    ck_assert_int_eq(uv_loop_close(&loop), 0);
    cm_zloop_free(&zloop);
    ck_assert_int_eq(zmq_close(socket), 0);
    ck_assert_int_eq(zmq_ctx_term(context), 0);
}
END_TEST

Suite *check_zloop_suite(void);
Suite *check_zloop_suite(void) {
    Suite *suite = suite_create("zloop");
    TCase *echo_case = tcase_create("echo");
    tcase_set_timeout(echo_case, 15);
    tcase_add_test(echo_case, test_echo_bursts_in_order);
    tcase_add_test(echo_case, test_sends_outside_the_callback);
    tcase_add_test(echo_case, test_backlog_larger_than_a_batch);
    tcase_add_test(echo_case, test_messages_queued_before_start);
    tcase_add_test(echo_case, test_too_many_frames_dropped);
    tcase_add_test(echo_case, test_close_from_callback);
    suite_add_tcase(suite, echo_case);
    TCase *sockets = tcase_create("sockets");
    tcase_add_test(sockets, test_busy_and_zero_copy_ownership);
    tcase_add_test(sockets, test_configure_socket);
    suite_add_tcase(suite, sockets);
    return suite;
}
