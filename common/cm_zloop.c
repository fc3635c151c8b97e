/*
 * cm_zloop: the drain is the whole module.  It runs from three places: the
 * poll callback (ZMQ_FD became readable), the idle callback (a send or a
 * full batch asked for another look) and, through the idle handle, once
 * right after start-up.  It asks ZMQ_EVENTS before every message, because
 * only that call tells whether a message is ready, and it stops as soon as
 * the zloop is closing, so a callback that closes the zloop sees no more
 * messages.
 *
 * The frames of the message being delivered live in the zloop itself (an
 * array of CM_ZLOOP_MAX_FRAMES zmq_msg_t): receiving allocates nothing
 * beyond what ZeroMQ allocates for large frames.  Frames past the cap are
 * received into one scratch message and closed at once.
 */
#include "cm_zloop.h"

#include "cm_log.h"

#include <assert.h>
#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

struct cm_zloop {
    uv_loop_t *loop;
    void *socket; /* borrowed */
    uv_poll_t poll;
    uv_idle_t idle; /* active while a drain is pending */
    cm_zloop_message_fn on_message;
    void *user;
    cm_zloop_closed_fn on_closed;
    bool closing;
    int open_handles;
    cm_zloop_stats_t stats;
    zmq_msg_t frames[CM_ZLOOP_MAX_FRAMES]; /* the message being delivered */
};

static void on_idle(uv_idle_t *idle);

static void schedule_drain(cm_zloop_t *zloop) {
    if (!zloop->closing) uv_idle_start(&zloop->idle, on_idle); /* no-op when already active */
}

static void close_frames(zmq_msg_t *frames, int count) {
    for (int i = 0; i < count; i++) zmq_msg_close(&frames[i]);
}

/*
 * Receives one whole message and delivers or drops it.  Returns false when nothing could
 * be received (the caller stops draining).
 */
static bool receive_message(cm_zloop_t *zloop) {
    int kept = 0; /* frames in zloop->frames */
    bool too_many = false;
    for (bool more = true; more;) {
        zmq_msg_t scratch;
        zmq_msg_t *frame = kept < CM_ZLOOP_MAX_FRAMES ? &zloop->frames[kept] : &scratch;
        zmq_msg_init(frame);
        if (zmq_msg_recv(frame, zloop->socket, ZMQ_DONTWAIT) < 0) {
            int error = zmq_errno();
            zmq_msg_close(frame);
            close_frames(zloop->frames, kept);
            if (error != EAGAIN || kept > 0 || too_many)
                cm_log_warn("zloop: receiving %s failed: %s",
                            kept > 0 || too_many ? "the rest of a message" : "a message",
                            zmq_strerror(error));
            return false;
        }
        more = zmq_msg_more(frame);
        if (frame == &scratch) {
            zmq_msg_close(&scratch);
            too_many = true;
        } else {
            kept++;
        }
    }
    if (too_many) {
        close_frames(zloop->frames, kept);
        zloop->stats.dropped_too_many_frames++;
        cm_log_debug("zloop: dropped a message of more than %d frames", CM_ZLOOP_MAX_FRAMES);
        return true;
    }
    zloop->stats.messages_received++;
    zloop->on_message(zloop, zloop->frames, kept, zloop->user);
    close_frames(zloop->frames, kept);
    return true;
}

static void drain(cm_zloop_t *zloop) {
    for (int handled = 0; !zloop->closing; handled++) {
        if (handled == CM_ZLOOP_DRAIN_BATCH) { /* let timers and other sockets run */
            schedule_drain(zloop);
            return;
        }
        int events = 0;
        size_t size = sizeof events;
        if (zmq_getsockopt(zloop->socket, ZMQ_EVENTS, &events, &size) != 0) {
            cm_log_warn("zloop: reading ZMQ_EVENTS failed: %s", zmq_strerror(zmq_errno()));
            return;
        }
        if (!(events & ZMQ_POLLIN)) return;
        if (!receive_message(zloop)) return;
    }
}

static void on_idle(uv_idle_t *idle) {
    cm_zloop_t *zloop = idle->data;
    uv_idle_stop(idle);
    drain(zloop);
}

static void on_poll(uv_poll_t *poll, int status, int events) {
    cm_zloop_t *zloop = poll->data;
    if (status < 0) cm_log_warn("zloop: polling ZMQ_FD failed: %s", uv_strerror(status));
    drain(zloop);
}

cm_status_t cm_zloop_new(uv_loop_t *loop, void *socket, cm_zloop_message_fn on_message, void *user,
                         cm_zloop_t **out) {
    assert(loop && socket && on_message && out);
    *out = NULL;
    int fd = -1;
    size_t size = sizeof fd;
    if (zmq_getsockopt(socket, ZMQ_FD, &fd, &size) != 0)
        return cm_fail(CM_ERR_INVALID_ARG, "cannot read ZMQ_FD of a ZeroMQ socket: %s",
                       zmq_strerror(zmq_errno()));
    cm_zloop_t *zloop = calloc(1, sizeof *zloop);
    if (!zloop) return cm_fail(CM_ERR_NOMEM, "no memory for a zloop");
    zloop->loop = loop;
    zloop->socket = socket;
    zloop->on_message = on_message;
    zloop->user = user;
    int failed = uv_poll_init(loop, &zloop->poll, fd);
    if (failed) {
        free(zloop);
        return cm_fail(CM_ERR_INVALID_ARG, "libuv cannot poll ZMQ_FD %d of a ZeroMQ socket: %s", fd,
                       uv_strerror(failed));
    }
    zloop->poll.data = zloop;
    /* cannot fail: uv_poll_init has checked that no other handle of this loop polls fd */
    failed = uv_poll_start(&zloop->poll, UV_READABLE, on_poll);
    assert(failed == 0);
    uv_idle_init(loop, &zloop->idle);
    zloop->idle.data = zloop;
    zloop->open_handles = 2;
    schedule_drain(zloop); /* an edge consumed before the poll started would be lost */
    *out = zloop;
    return CM_OK;
}

static cm_status_t send_failure(cm_zloop_t *zloop, int error, int frame_index) {
    if (frame_index > 0) /* ZeroMQ accepts every later frame once it took the first */
        cm_log_error("zloop: frame %d of a message was refused after the first: %s", frame_index,
                     zmq_strerror(error));
    switch (error) {
    case EAGAIN:
        zloop->stats.send_busy++;
        return cm_fail(CM_ERR_BUSY, "ZeroMQ socket cannot take a message now (high-water "
                                    "mark reached or no peer connected)");
    case EHOSTUNREACH:
        return cm_fail(CM_ERR_UNAVAILABLE, "no peer with the message's routing id is connected");
    case ETERM:
        return cm_fail(CM_ERR_CANCELLED, "the ZeroMQ context is being terminated");
    default:
        return cm_fail(CM_ERR_IO, "sending frame %d of a message failed: %s", frame_index,
                       zmq_strerror(error));
    }
}

cm_status_t cm_zloop_send(cm_zloop_t *zloop, const cm_zloop_frame_t *frames, int frame_count) {
    assert(!zloop->closing && frames && frame_count >= 1);
    cm_status_t status = CM_OK;
    int next = 0; /* frames before `next` were sent or handed to ZeroMQ */
    while (next < frame_count) {
        const cm_zloop_frame_t *frame = &frames[next++];
        int flags = ZMQ_DONTWAIT | (next < frame_count ? ZMQ_SNDMORE : 0);
        if (!frame->free_fn) {
            if (zmq_send(zloop->socket, frame->data, frame->length, flags) < 0) {
                status = send_failure(zloop, zmq_errno(), next - 1);
                break;
            }
            continue;
        }
        zmq_msg_t message;
        if (zmq_msg_init_data(&message, (void *)frame->data, frame->length, frame->free_fn,
                              frame->hint) != 0) {
            frame->free_fn((void *)frame->data, frame->hint);
            status = cm_fail(CM_ERR_NOMEM, "no memory to send frame %d of a message", next - 1);
            break;
        }
        if (zmq_msg_send(&message, zloop->socket, flags) < 0) {
            int error = zmq_errno();
            zmq_msg_close(&message); /* calls free_fn: the message was not taken */
            status = send_failure(zloop, error, next - 1);
            break;
        }
    }
    for (; next < frame_count; next++) /* never offered to ZeroMQ */
        if (frames[next].free_fn)
            frames[next].free_fn((void *)frames[next].data, frames[next].hint);
    if (status == CM_OK) zloop->stats.messages_sent++;
    schedule_drain(zloop);
    return status;
}

cm_zloop_stats_t cm_zloop_stats(const cm_zloop_t *zloop) { return zloop->stats; }

static void on_handle_closed(uv_handle_t *handle) {
    cm_zloop_t *zloop = handle->data;
    if (--zloop->open_handles == 0 && zloop->on_closed) zloop->on_closed(zloop, zloop->user);
}

void cm_zloop_close(cm_zloop_t *zloop, cm_zloop_closed_fn on_closed) {
    assert(!zloop->closing);
    zloop->closing = true;
    zloop->on_closed = on_closed;
    uv_close((uv_handle_t *)&zloop->poll, on_handle_closed);
    uv_close((uv_handle_t *)&zloop->idle, on_handle_closed);
}

void cm_zloop_free(cm_zloop_t **zloop) {
    if (!zloop || !*zloop) return;
    assert((*zloop)->open_handles == 0);
    free(*zloop);
    *zloop = NULL;
}

cm_status_t cm_zloop_configure_socket(void *socket, int send_hwm, int receive_hwm,
                                      int64_t max_message_size) {
    if (zmq_setsockopt(socket, ZMQ_SNDHWM, &send_hwm, sizeof send_hwm) != 0)
        return cm_fail(CM_ERR_INVALID_ARG, "ZeroMQ refused ZMQ_SNDHWM=%d: %s", send_hwm,
                       zmq_strerror(zmq_errno()));
    if (zmq_setsockopt(socket, ZMQ_RCVHWM, &receive_hwm, sizeof receive_hwm) != 0)
        return cm_fail(CM_ERR_INVALID_ARG, "ZeroMQ refused ZMQ_RCVHWM=%d: %s", receive_hwm,
                       zmq_strerror(zmq_errno()));
    if (zmq_setsockopt(socket, ZMQ_MAXMSGSIZE, &max_message_size, sizeof max_message_size) != 0)
        return cm_fail(CM_ERR_INVALID_ARG, "ZeroMQ refused ZMQ_MAXMSGSIZE=%lld: %s",
                       (long long)max_message_size, zmq_strerror(zmq_errno()));
    return CM_OK;
}
