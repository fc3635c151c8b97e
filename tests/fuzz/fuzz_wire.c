/*
 * fuzz_wire: libFuzzer harness for the wire decoder (cm_wire_decode), every
 * message kind with its tensor frames.  The input is split into frames as
 * fuzz_frames.h says.  Beyond "no crash, no leak, no undefined behaviour",
 * a message that decodes must survive a round trip: it encodes again, the
 * encoding decodes to the same kind, id and frame sizes, and every borrowed
 * pointer of a decoded message stays inside its frames (ASan checks the
 * reads this harness makes through them).
 */
#include "cm_wire.h"
#include "fuzz_frames.h"

#include <assert.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Reads every byte of what a decoded message borrows, so ASan sees a bad pointer. */
static unsigned touch_message(const cm_wire_message_t *message) {
    unsigned sum = 0;
    cm_wire_frame_t frames[CM_WIRE_MAX_TENSORS];
    int count = cm_wire_tensor_frames(message, frames);
    for (int index = 0; index < count; index++)
        for (size_t byte = 0; byte < frames[index].bytes; byte++)
            sum += ((const uint8_t *)frames[index].data)[byte];
    switch (message->kind) {
    case CM_WIRE_HELLO:
        sum += (unsigned)strlen(message->hello.peer_name) + (unsigned)strlen(message->hello.view);
        for (int index = 0; index < message->hello.output_count; index++)
            sum += (unsigned)strlen(message->hello.outputs[index].name);
        for (int index = 0; index < message->hello.head_count; index++)
            sum += (unsigned)strlen(message->hello.heads[index]);
        break;
    case CM_WIRE_BATCH_REQUEST:
        for (int index = 0; index < message->batch_request.example_count; index++)
            sum += (unsigned)message->batch_request.example_ids[index];
        for (int index = 0; index < message->batch_request.output_count; index++)
            sum += (unsigned)strlen(message->batch_request.outputs[index]);
        (void)cm_wire_check_ids(message->batch_request.example_ids,
                                message->batch_request.example_count, 1000);
        break;
    case CM_WIRE_BATCH_REPLY:
        for (int index = 0; index < message->batch_reply.example_count; index++)
            sum += (unsigned)message->batch_reply.example_ids[index];
        for (int index = 0; index < message->batch_reply.tensor_count; index++) {
            const cm_wire_tensor_t *tensor = &message->batch_reply.tensors[index];
            sum += (unsigned)strlen(tensor->name);
            size_t elements = tensor->bytes / cm_dtype_size(tensor->encoding);
            if (tensor->encoding != CM_DTYPE_F16 && tensor->encoding != CM_DTYPE_BF16) continue;
            float *values = malloc((elements ? elements : 1) * sizeof *values);
            if (!values) abort();
            if (tensor->encoding == CM_DTYPE_F16)
                cm_wire_f16_to_f32(values, tensor->data, elements);
            else
                cm_wire_bf16_to_f32(values, tensor->data, elements);
            free(values);
        }
        break;
    case CM_WIRE_ERROR:
        sum += (unsigned)strlen(message->error.message);
        break;
    case CM_WIRE_BYE:
        sum += (unsigned)strlen(message->bye.reason);
        break;
    case CM_WIRE_HEAD_REQUEST:
        sum += (unsigned)strlen(message->head_request.feature);
        break;
    case CM_WIRE_HEAD_REPLY:
        sum += (unsigned)strlen(message->head_reply.feature);
        break;
    default:
        break;
    }
    return sum;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    cm_wire_frame_t frames[FUZZ_FRAMES_MAX];
    int frame_count = fuzz_frames_split(data, size, frames);
    /* Small limits, so the limit checks are reachable with small inputs. */
    cm_wire_limits_t limits = {
        .max_examples = 64, .max_message_bytes = 1u << 16, .max_in_flight = 4};
    cm_wire_message_t message;
    cm_status_t status = cm_wire_decode(&message, frames, frame_count, &limits);
    if (status == CM_OK) {
        (void)touch_message(&message);
        /* What decodes must encode again, and decode to the same message. */
        cm_wire_encoded_t encoded;
        cm_status_t encode_status = cm_wire_encode(&encoded, &message);
        if (encode_status != CM_OK) {
            fprintf(stderr, "a decoded message does not encode: %s\n", cm_last_error());
            abort();
        }
        cm_wire_message_t again;
        cm_wire_limits_t roomy = cm_wire_limits_default();
        if (cm_wire_decode(&again, encoded.frames, encoded.frame_count, &roomy) != CM_OK) {
            fprintf(stderr, "a re-encoded message does not decode: %s\n", cm_last_error());
            abort();
        }
        if (again.kind != message.kind || again.request_id != message.request_id ||
            encoded.frame_count != frame_count)
            abort();
        for (int index = 1; index < frame_count; index++)
            if (encoded.frames[index].bytes != frames[index].bytes) abort();
        cm_wire_message_deinit(&again);
        cm_wire_encoded_deinit(&encoded);
    } else {
        assert(message.header == NULL);
        /* The usual answer to a bad message: an Error carrying the sentence must encode. */
        cm_wire_message_t reply;
        cm_wire_message_error(&reply, message.request_id, status, cm_last_error());
        cm_wire_encoded_t encoded;
        if (cm_wire_encode(&encoded, &reply) != CM_OK) {
            fprintf(stderr, "the Error answering a bad message does not encode: %s\n",
                    cm_last_error());
            abort();
        }
        cm_wire_encoded_deinit(&encoded);
    }
    cm_wire_message_deinit(&message);
    fuzz_frames_free(frames, frame_count);
    return 0;
}
