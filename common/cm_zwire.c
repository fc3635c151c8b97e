/*
 * cm_zwire: see cm_zwire.h.
 */
#include "cm_zwire.h"

#include <errno.h>
#include <string.h>

static cm_status_t zmq_failure(const char *what) {
    int error = zmq_errno();
    if (error == EAGAIN) return cm_fail(CM_ERR_BUSY, "%s would block", what);
    return cm_fail(CM_ERR_IO, "%s failed: %s", what, zmq_strerror(error));
}

cm_status_t cm_zwire_send(void *socket, zmq_msg_t *routing, const cm_wire_message_t *message,
                          int flags, cm_zwire_release_fn *release) {
    cm_wire_frame_t tensors[CM_WIRE_MAX_TENSORS];
    int tensor_count = cm_wire_tensor_frames(message, tensors);
    int handed_over = 0; /* tensor frames whose ownership passed to ZeroMQ */
    size_t header_bytes = 0;
    cm_status_t status = cm_wire_header_size(message, &header_bytes);
    zmq_msg_t part;
    if (status != CM_OK) goto fail;
    if (routing) {
        zmq_msg_t copy;
        zmq_msg_init(&copy);
        if (zmq_msg_copy(&copy, routing) != 0 ||
            zmq_msg_send(&copy, socket, flags | ZMQ_SNDMORE) < 0) {
            status = zmq_failure("sending the routing frame");
            zmq_msg_close(&copy);
            goto fail;
        }
    }
    if (zmq_msg_init_size(&part, header_bytes) != 0) {
        status = cm_fail(CM_ERR_NOMEM, "out of memory for a %zu-byte header", header_bytes);
        goto fail;
    }
    status = cm_wire_pack_header(message, zmq_msg_data(&part), header_bytes, &header_bytes);
    if (status != CM_OK) {
        zmq_msg_close(&part);
        goto fail;
    }
    /* After the first frame is queued ZeroMQ sends the rest atomically or not at all;
     * later parts cannot block, so only the first frame can report BUSY. */
    if (zmq_msg_send(&part, socket, flags | (tensor_count ? ZMQ_SNDMORE : 0)) < 0) {
        status = zmq_failure("sending the header");
        zmq_msg_close(&part);
        goto fail;
    }
    for (int index = 0; index < tensor_count; index++) {
        const cm_wire_frame_t *tensor = &tensors[index];
        int more = index + 1 < tensor_count ? ZMQ_SNDMORE : 0;
        int made;
        if (release) {
            made = zmq_msg_init_data(&part, (void *)tensor->data, tensor->bytes, release, NULL);
            if (made == 0) handed_over = index + 1;
        } else {
            made = zmq_msg_init_size(&part, tensor->bytes);
            if (made == 0 && tensor->bytes)
                memcpy(zmq_msg_data(&part), tensor->data, tensor->bytes);
        }
        if (made != 0) {
            status = cm_fail(CM_ERR_NOMEM, "out of memory for tensor frame %d of %d (%zu bytes)",
                             index + 1, tensor_count, tensor->bytes);
            goto fail;
        }
        if (zmq_msg_send(&part, socket, flags | more) < 0) {
            status = zmq_failure("sending a tensor frame");
            zmq_msg_close(&part); /* releases a handed-over frame */
            goto fail;
        }
    }
    return CM_OK;
fail:
    if (release)
        for (int index = handed_over; index < tensor_count; index++)
            release((void *)tensors[index].data, NULL);
    return status;
}

cm_status_t cm_zwire_recv(void *socket, cm_zwire_received_t *received, int flags) {
    received->part_count = 0;
    received->truncated = 0;
    for (;;) {
        zmq_msg_t part;
        zmq_msg_init(&part);
        if (zmq_msg_recv(&part, socket, received->part_count ? 0 : flags) < 0) {
            int error = zmq_errno();
            zmq_msg_close(&part);
            cm_zwire_received_close(received);
            if (error == EAGAIN)
                return flags & ZMQ_DONTWAIT ? cm_fail(CM_ERR_BUSY, "no message waiting")
                                            : cm_fail(CM_ERR_TIMEOUT, "no message within the "
                                                                      "receive timeout");
            return cm_fail(CM_ERR_IO, "receiving a message failed: %s", zmq_strerror(error));
        }
        int more = zmq_msg_more(&part);
        if (received->part_count < CM_ZWIRE_MAX_PARTS) {
            received->parts[received->part_count++] = part;
        } else {
            received->truncated = 1;
            zmq_msg_close(&part);
        }
        if (!more) return CM_OK;
    }
}

cm_status_t cm_zwire_recv_message(void *socket, cm_zwire_received_t *received,
                                  cm_wire_message_t *message, const cm_wire_limits_t *limits,
                                  int flags) {
    for (;;) {
        cm_status_t status = cm_zwire_recv(socket, received, flags);
        if (status != CM_OK) return status;
        status = received->truncated
                     ? cm_fail(CM_ERR_FORMAT, "the peer sent a message with too many frames")
                     : cm_zwire_decode(message, received->parts, received->part_count, limits);
        if (status != CM_OK) {
            cm_zwire_received_close(received);
            return status;
        }
        if (message->kind != CM_WIRE_HEARTBEAT) return CM_OK;
        cm_zwire_release(received, message);
    }
}

void cm_zwire_release(cm_zwire_received_t *received, cm_wire_message_t *message) {
    cm_wire_message_deinit(message);
    cm_zwire_received_close(received);
}

void cm_zwire_received_close(cm_zwire_received_t *received) {
    for (int index = 0; index < received->part_count; index++)
        zmq_msg_close(&received->parts[index]);
    received->part_count = 0;
}

cm_status_t cm_zwire_decode(cm_wire_message_t *message, zmq_msg_t *parts, int count,
                            const cm_wire_limits_t *limits) {
    cm_wire_message_init(message, CM_WIRE_HEARTBEAT, 0);
    if (count < 1) return cm_fail(CM_ERR_FORMAT, "message has no header frame");
    if (count > CM_WIRE_MAX_FRAMES)
        return cm_fail(CM_ERR_TOO_LARGE, "message has %d frames; at most %d are allowed", count,
                       CM_WIRE_MAX_FRAMES);
    cm_wire_frame_t frames[CM_WIRE_MAX_FRAMES];
    for (int index = 0; index < count; index++) {
        frames[index].data = zmq_msg_data(&parts[index]);
        frames[index].bytes = zmq_msg_size(&parts[index]);
    }
    return cm_wire_decode(message, frames, count, limits);
}
