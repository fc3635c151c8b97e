/*
 * cm_zloop: one ZeroMQ socket driven by a libuv loop.
 *
 * A uv_poll_t watches the socket's ZMQ_FD.  That descriptor is
 * edge-triggered and says only "ZeroMQ has internal work to look at", so on
 * every poll event cm_zloop drains: while ZMQ_EVENTS shows ZMQ_POLLIN it
 * receives one whole multipart message without blocking and hands all its
 * frames to the owner's callback.  A send can consume the edge too (ZeroMQ
 * processes pending commands inside zmq_msg_send), so every cm_zloop_send
 * schedules another drain on the loop's next turn through a uv_idle_t; the
 * callback is never re-entered from inside a send.  A drain handles at most
 * CM_ZLOOP_DRAIN_BATCH messages before yielding to the loop's other handles
 * and picking up where it left off on the next turn.
 *
 * Messages with more than CM_ZLOOP_MAX_FRAMES frames (counted as received,
 * a ROUTER's routing-id frame included) are received to the end, dropped
 * and counted: a hostile peer cannot make the loop allocate per frame.
 *
 * Ownership: the zloop borrows the socket; it never closes it, and the
 * socket must stay open until the zloop's close has completed.  The socket
 * belongs to the loop's thread from cm_zloop_new on (ZeroMQ sockets are not
 * thread-safe).  The zloop owns its two handles; cm_zloop_close closes them
 * libuv style and calls back when both are closed.
 */
#ifndef CM_ZLOOP_H
#define CM_ZLOOP_H

#include "cm_status.h"

#include <stddef.h>
#include <stdint.h>
#include <uv.h>
#include <zmq.h>

enum {
    CM_ZLOOP_MAX_FRAMES = 64,  /* frames per received message; more are dropped */
    CM_ZLOOP_DRAIN_BATCH = 256 /* messages handled per loop turn */
};

typedef struct cm_zloop cm_zloop_t;

/*
 * Called on the loop's thread with one whole message: frame_count (1 to
 * CM_ZLOOP_MAX_FRAMES) initialised frames, in order.  They belong to the
 * zloop and are closed when the callback returns; to keep one (a large
 * tensor, without copying), zmq_msg_init a message of your own and
 * zmq_msg_move the frame into it.  The callback may send and may close the
 * zloop.
 */
typedef void (*cm_zloop_message_fn)(cm_zloop_t *zloop, zmq_msg_t *frames, int frame_count,
                                    void *user);
typedef void (*cm_zloop_closed_fn)(cm_zloop_t *zloop, void *user);

/* One frame to send. */
typedef struct {
    const void *data;
    size_t length; /* bytes */
    /*
     * NULL: data is copied during the send.  Otherwise zero-copy: ZeroMQ
     * keeps the pointer and calls free_fn(data, hint) from one of its own
     * threads once it is done, possibly after the send returned; free_fn is
     * called exactly once whatever cm_zloop_send returns.
     */
    zmq_free_fn *free_fn;
    void *hint;
} cm_zloop_frame_t;

/* Counters since cm_zloop_new; read them on the loop's thread. */
typedef struct {
    uint64_t messages_received; /* handed to the callback */
    uint64_t messages_sent;     /* accepted by cm_zloop_send */
    uint64_t dropped_too_many_frames;
    uint64_t send_busy; /* sends refused with CM_ERR_BUSY */
} cm_zloop_stats_t;

/*
 * Starts watching `socket` (a ZeroMQ socket, borrowed) on `loop` and calling
 * `on_message` with `user` for every message; the zloop is in *out.  It
 * drains once on the loop's first turn, so messages that were queued before
 * are not missed.  Fails with CM_ERR_INVALID_ARG if ZMQ_FD cannot be read
 * from the socket or libuv refuses to poll it; on failure nothing is left
 * registered with the loop.
 */
cm_status_t cm_zloop_new(uv_loop_t *loop, void *socket, cm_zloop_message_fn on_message, void *user,
                         cm_zloop_t **out);

/*
 * Sends one multipart message of `frame_count` (>= 1) frames without
 * blocking.  Fails with CM_ERR_BUSY when ZeroMQ cannot take it now (the
 * high-water mark is reached or there is no peer: ZeroMQ's EAGAIN),
 * CM_ERR_UNAVAILABLE when a ROUTER with ZMQ_ROUTER_MANDATORY does not know
 * the routing id, CM_ERR_CANCELLED when the context is being terminated,
 * CM_ERR_IO otherwise.  Zero-copy frames are handed over in every case (see
 * cm_zloop_frame_t).  After every send, success or not, a drain is
 * scheduled.  Must not be called after cm_zloop_close.
 */
cm_status_t cm_zloop_send(cm_zloop_t *zloop, const cm_zloop_frame_t *frames, int frame_count);

/* Counters so far (see cm_zloop_stats_t). */
cm_zloop_stats_t cm_zloop_stats(const cm_zloop_t *zloop);

/*
 * Stops receiving and closes the zloop's handles; `on_closed` (may be NULL)
 * runs on the loop with the zloop's `user` when both are closed.  After
 * that, close the socket with zmq_close and free the zloop.  Call once, from
 * the loop's thread (the message callback included).
 */
void cm_zloop_close(cm_zloop_t *zloop, cm_zloop_closed_fn on_closed);

/*
 * Frees a zloop whose close has completed and sets *zloop to NULL;
 * NULL-safe.  Freeing a zloop with open handles is a bug and aborts.
 */
void cm_zloop_free(cm_zloop_t **zloop);

/*
 * Sets a socket's send and receive high-water marks (messages; 0 means no
 * limit) and ZMQ_MAXMSGSIZE (bytes per received message, -1 for no limit:
 * ZeroMQ disconnects a peer that sends more).  Call before bind/connect:
 * high-water marks apply to connections made afterwards.  Fails with
 * CM_ERR_INVALID_ARG naming the option ZeroMQ refused.
 */
cm_status_t cm_zloop_configure_socket(void *socket, int send_hwm, int receive_hwm,
                                      int64_t max_message_size);

#endif
