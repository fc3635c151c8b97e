/*
 * cm_zwire: cm_wire messages on ZeroMQ sockets.
 *
 * Sending packs the header into a zmq_msg_t and sends it, then each tensor
 * frame, as one multipart message, optionally behind a routing-id frame
 * (ROUTER sockets).  Tensor frames are either copied, or handed over to
 * ZeroMQ without a copy when the caller passes a release function (ZeroMQ
 * calls it, possibly from its I/O thread, once the bytes are on the wire).
 *
 * Receiving takes one whole multipart message into a cm_zwire_received_t
 * (at most CM_ZWIRE_MAX_PARTS parts; longer messages are drained and
 * rejected), from which cm_zwire_decode() reads without copying.  Servers
 * on a libuv loop receive through cm_zloop instead and decode the same way.
 *
 * Sockets are never shared between threads (STYLE.md rule 10); these
 * functions only touch the socket they are given.
 */
#ifndef CM_ZWIRE_H
#define CM_ZWIRE_H

#include "cm_status.h"
#include "cm_wire.h"

#include <zmq.h>

enum { CM_ZWIRE_MAX_PARTS = CM_WIRE_MAX_FRAMES + 1 };

/* Called by ZeroMQ when it no longer needs a zero-copy frame (data, hint). */
typedef void cm_zwire_release_fn(void *data, void *hint);

/*
 * Sends `message` on `socket`: first a copy of `routing` when it is not NULL,
 * then the header, then the tensor frames.  With `release` NULL, tensor data
 * is copied; otherwise ownership of every tensor frame's data passes to
 * ZeroMQ, which calls release(data, NULL) when done (also when this call
 * fails after handing it over; frames never handed over are released here).
 * `flags` is 0 or ZMQ_DONTWAIT.  CM_ERR_BUSY when ZMQ_DONTWAIT would block
 * before anything was sent, CM_ERR_IO on other ZeroMQ errors, and what
 * cm_wire_encode returns for a bad message.
 */
cm_status_t cm_zwire_send(void *socket, zmq_msg_t *routing, const cm_wire_message_t *message,
                          int flags, cm_zwire_release_fn *release);

/* One received multipart message. */
typedef struct {
    int part_count;
    zmq_msg_t parts[CM_ZWIRE_MAX_PARTS];
    int truncated; /* 1: the message had more parts; they were read and dropped */
} cm_zwire_received_t;

/*
 * Receives one whole multipart message.  `flags` is 0 or ZMQ_DONTWAIT.
 * CM_ERR_BUSY when nothing is waiting (ZMQ_DONTWAIT), CM_ERR_TIMEOUT when a
 * receive timeout expired, CM_ERR_IO otherwise.  On CM_OK the caller closes
 * the parts with cm_zwire_received_close().
 */
cm_status_t cm_zwire_recv(void *socket, cm_zwire_received_t *received, int flags);

/*
 * Receives the next message that is not a Heartbeat (heartbeats may arrive
 * between any request and its answer) and decodes it into *message, which
 * borrows from *received.  `flags` as for cm_zwire_recv; a message with more
 * parts than CM_ZWIRE_MAX_PARTS is CM_ERR_FORMAT.  On CM_OK the caller
 * releases both with cm_zwire_release(); on failure nothing is held.
 */
cm_status_t cm_zwire_recv_message(void *socket, cm_zwire_received_t *received,
                                  cm_wire_message_t *message, const cm_wire_limits_t *limits,
                                  int flags);

/* Releases a message from cm_zwire_recv_message and the parts it borrows from. */
void cm_zwire_release(cm_zwire_received_t *received, cm_wire_message_t *message);

/* Closes every part of *received. */
void cm_zwire_received_close(cm_zwire_received_t *received);

/*
 * Decodes the ZeroMQ frames parts[0 .. count) (the routing id already
 * skipped) as a cm_wire message; see cm_wire_decode.  The message borrows
 * from the frames, which must outlive it.
 */
cm_status_t cm_zwire_decode(cm_wire_message_t *message, zmq_msg_t *parts, int count,
                            const cm_wire_limits_t *limits);

#endif
