/*
 * cm_wire: every message kind survives encode -> decode with all its fields;
 * the f16/bf16 conversions are exact where they must be, round ties to even
 * and stay within half an ulp; and every kind of bad input a peer can send
 * (random bytes, a wrong version, a missing body, frames that disagree with
 * their descriptors, oversized messages, absurd shapes, unknown enums) is
 * refused with the right code and a sentence that names the problem.
 *
 * Hostile headers are written by hand with a tiny protobuf writer below, so
 * these tests also pin the field numbers of proto/committee.proto: a
 * renumbered field fails them, as it would fail an older peer.  The same
 * writer plays a minor-version-0 peer, whose Hello has no heads.
 */
#include "cm_rng.h"
#include "cm_wire.h"

#include <check.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static const char *const fingerprint =
    "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
static const char *const model_hash =
    "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae";

/* ------------------------------------------------------------------------ */
/* Helpers                                                                  */

static void assert_error_mentions(const char *needle) {
    ck_assert_msg(strstr(cm_last_error(), needle) != NULL, "error \"%s\" does not mention \"%s\"",
                  cm_last_error(), needle);
}

/* Encodes `message`, then decodes its frames into *decoded with default limits. */
static void round_trip(const cm_wire_message_t *message, cm_wire_encoded_t *encoded,
                       cm_wire_message_t *decoded) {
    cm_status_t status = cm_wire_encode(encoded, message);
    ck_assert_msg(status == CM_OK, "encode: %s", cm_last_error());
    cm_wire_limits_t limits = cm_wire_limits_default();
    status = cm_wire_decode(decoded, encoded->frames, encoded->frame_count, &limits);
    ck_assert_msg(status == CM_OK, "decode: %s", cm_last_error());
    ck_assert_int_eq(decoded->kind, message->kind);
    ck_assert_uint_eq(decoded->request_id, message->request_id);
    ck_assert_uint_eq(decoded->version_major, CM_WIRE_VERSION_MAJOR);
    ck_assert_uint_eq(decoded->version_minor, CM_WIRE_VERSION_MINOR);
}

static void teacher_hello(cm_wire_message_t *message) {
    cm_wire_message_init(message, CM_WIRE_HELLO, 0);
    cm_wire_hello_t *hello = &message->hello;
    hello->peer = CM_WIRE_PEER_TEACHER;
    hello->peer_name = "vit-small";
    hello->role = CM_WIRE_ROLE_FOUNDATION;
    hello->model_id = "vit:patch=4,dim=64,depth=4,heads=4";
    hello->model_sha256 = model_hash;
    hello->view = "full";
    hello->dataset_name = "fashion-mnist";
    hello->dataset_fingerprint = fingerprint;
    hello->classes = 10;
    hello->output_count = 2;
    hello->outputs[0] =
        (cm_wire_output_t){.name = "logits", .dtype = CM_DTYPE_F32, .ndim = 1, .shape = {10}};
    hello->outputs[1] =
        (cm_wire_output_t){.name = "hidden", .dtype = CM_DTYPE_F32, .ndim = 2, .shape = {49, 64}};
    hello->limits =
        (cm_wire_limits_t){.max_examples = 512, .max_message_bytes = 1u << 24, .max_in_flight = 4};
}

enum { REPLY_EXAMPLES = 3, REPLY_CLASSES = 10, REPLY_HIDDEN = 8 };

/* A reply carrying f16 logits, f32 hidden features and i32 top-k indices. */
typedef struct {
    int32_t ids[REPLY_EXAMPLES];
    uint16_t logits[REPLY_EXAMPLES * REPLY_CLASSES];
    float hidden[REPLY_EXAMPLES * REPLY_HIDDEN];
    int32_t top_indices[REPLY_EXAMPLES * 2];
} reply_data_t;

static void batch_reply(cm_wire_message_t *message, reply_data_t *data) {
    cm_rng_t rng;
    cm_rng_seed(&rng, 11);
    float logits[REPLY_EXAMPLES * REPLY_CLASSES];
    for (int i = 0; i < REPLY_EXAMPLES * REPLY_CLASSES; i++) logits[i] = cm_rng_normal(&rng) * 4;
    cm_wire_f32_to_f16(data->logits, logits, REPLY_EXAMPLES * REPLY_CLASSES);
    for (int i = 0; i < REPLY_EXAMPLES * REPLY_HIDDEN; i++) data->hidden[i] = cm_rng_normal(&rng);
    for (int i = 0; i < REPLY_EXAMPLES * 2; i++) data->top_indices[i] = i % REPLY_CLASSES;
    data->ids[0] = 17, data->ids[1] = 0, data->ids[2] = 59999;

    cm_wire_message_init(message, CM_WIRE_BATCH_REPLY, 77);
    cm_wire_batch_reply_t *reply = &message->batch_reply;
    reply->split = CM_SPLIT_TRAIN;
    reply->example_count = REPLY_EXAMPLES;
    reply->example_ids = data->ids;
    reply->tensor_count = 3;
    reply->tensors[0] = (cm_wire_tensor_t){.name = "logits",
                                           .dtype = CM_DTYPE_F32,
                                           .encoding = CM_DTYPE_F16,
                                           .layout = CM_WIRE_DENSE,
                                           .ndim = 2,
                                           .shape = {REPLY_EXAMPLES, REPLY_CLASSES},
                                           .data = data->logits,
                                           .bytes = sizeof data->logits};
    reply->tensors[1] = (cm_wire_tensor_t){.name = "hidden",
                                           .dtype = CM_DTYPE_F32,
                                           .encoding = CM_DTYPE_F32,
                                           .layout = CM_WIRE_DENSE,
                                           .ndim = 3,
                                           .shape = {REPLY_EXAMPLES, 2, REPLY_HIDDEN / 2},
                                           .data = data->hidden,
                                           .bytes = sizeof data->hidden};
    reply->tensors[2] = (cm_wire_tensor_t){.name = "logits",
                                           .dtype = CM_DTYPE_I32,
                                           .encoding = CM_DTYPE_I32,
                                           .layout = CM_WIRE_TOPK_INDICES,
                                           .ndim = 2,
                                           .shape = {REPLY_EXAMPLES, 2},
                                           .data = data->top_indices,
                                           .bytes = sizeof data->top_indices};
}

/* A minimal protobuf writer for hand-made (often hostile) headers. */
typedef struct {
    uint8_t bytes[4096];
    size_t length;
} proto_writer_t;

static void put_varint(proto_writer_t *writer, uint64_t value) {
    do {
        uint8_t byte = value & 0x7f;
        value >>= 7;
        writer->bytes[writer->length++] = (uint8_t)(byte | (value ? 0x80 : 0));
    } while (value);
}

static void put_uint(proto_writer_t *writer, int field, uint64_t value) {
    put_varint(writer, (uint64_t)field << 3);
    put_varint(writer, value);
}

static void put_bytes(proto_writer_t *writer, int field, const void *bytes, size_t length) {
    put_varint(writer, (uint64_t)field << 3 | 2);
    put_varint(writer, length);
    memcpy(writer->bytes + writer->length, bytes, length);
    writer->length += length;
}

static void put_string(proto_writer_t *writer, int field, const char *value) {
    put_bytes(writer, field, value, strlen(value));
}

static void put_message(proto_writer_t *writer, int field, const proto_writer_t *inner) {
    put_bytes(writer, field, inner->bytes, inner->length);
}

static void put_packed(proto_writer_t *writer, int field, const uint64_t *values, int count) {
    proto_writer_t packed = {.length = 0};
    for (int i = 0; i < count; i++) put_varint(&packed, values[i]);
    put_message(writer, field, &packed);
}

/* Field numbers of committee.proto, written out again on purpose. */
enum {
    ENVELOPE_VERSION_MAJOR = 1,
    ENVELOPE_VERSION_MINOR = 2,
    ENVELOPE_REQUEST_ID = 3,
    ENVELOPE_HELLO = 10,
    ENVELOPE_BATCH_REQUEST = 11,
    ENVELOPE_BATCH_REPLY = 12,
    ENVELOPE_HEARTBEAT = 13,
    ENVELOPE_ERROR = 14,
    ENVELOPE_HEAD_REQUEST = 16,
    ENVELOPE_HEAD_REPLY = 17,
    HELLO_PEER_KIND = 1,
    HELLO_PEER_NAME = 2,
    HELLO_ROLE = 3,
    HELLO_MODEL_ID = 4,
    HELLO_MODEL_SHA256 = 5,
    HELLO_VIEW = 6,
    HELLO_DATASET_NAME = 7,
    HELLO_DATASET_FINGERPRINT = 8,
    HELLO_CLASSES = 9,
    HELLO_OUTPUTS = 10,
    HELLO_LIMITS = 11,
    HELLO_HEADS = 12,
    HELLO_SPLITS = 13,
    OUTPUT_NAME = 1,
    OUTPUT_DTYPE = 2,
    OUTPUT_SHAPE = 3,
    LIMITS_MAX_EXAMPLES = 1,
    LIMITS_MAX_MESSAGE_BYTES = 2,
    LIMITS_MAX_IN_FLIGHT = 3,
    REQUEST_SPLIT = 1,
    REQUEST_IDS = 2,
    REQUEST_OUTPUTS = 3,
    REQUEST_ENCODING = 4,
    REPLY_SPLIT = 1,
    REPLY_IDS = 2,
    REPLY_TENSORS = 3,
    TENSOR_NAME = 1,
    TENSOR_DTYPE = 2,
    TENSOR_ENCODING = 3,
    TENSOR_LAYOUT = 4,
    TENSOR_SHAPE = 5,
    TENSOR_BYTE_LENGTH = 6,
    HEAD_REQUEST_FEATURE = 1,
    HEAD_REPLY_FEATURE = 1,
    HEAD_REPLY_KIND = 2,
    HEAD_REPLY_TENSORS = 3,
};

/* Wraps `body` as field `body_field` of an Envelope with `version_major` and request id 9. */
static void put_envelope(proto_writer_t *writer, uint64_t version_major, int body_field,
                         const proto_writer_t *body) {
    writer->length = 0;
    put_uint(writer, ENVELOPE_VERSION_MAJOR, version_major);
    put_uint(writer, ENVELOPE_REQUEST_ID, 9);
    if (body) put_message(writer, body_field, body);
}

/* A one-tensor BatchReply header for 2 examples: dtype F32, the given encoding and shape. */
static void craft_reply(proto_writer_t *header, uint64_t encoding, const uint64_t *shape, int ndim,
                        uint64_t byte_length) {
    proto_writer_t tensor = {.length = 0}, reply = {.length = 0};
    put_string(&tensor, TENSOR_NAME, "logits");
    put_uint(&tensor, TENSOR_DTYPE, 1);
    put_uint(&tensor, TENSOR_ENCODING, encoding);
    put_packed(&tensor, TENSOR_SHAPE, shape, ndim);
    put_uint(&tensor, TENSOR_BYTE_LENGTH, byte_length);
    uint64_t ids[2] = {4, 5};
    put_uint(&reply, REPLY_SPLIT, 1);
    put_packed(&reply, REPLY_IDS, ids, 2);
    put_message(&reply, REPLY_TENSORS, &tensor);
    put_envelope(header, CM_WIRE_VERSION_MAJOR, ENVELOPE_BATCH_REPLY, &reply);
}

/* One TensorDesc of a hand-made HeadReply (ndim 0: no shape field at all). */
typedef struct {
    const char *name;
    uint64_t dtype, encoding, layout; /* DType, Encoding and Layout numbers */
    int ndim;
    uint64_t shape[3];
    uint64_t byte_length;
} head_tensor_t;

enum { HEAD_CLASSES = 3, HEAD_INPUTS = 5 };

/* The tensors of a valid 3 x 5 dense head; tests break one thing at a time. */
static void valid_head_tensors(head_tensor_t tensors[2]) {
    tensors[0] = (head_tensor_t){"weight", 1, 1, 0, 2, {HEAD_CLASSES, HEAD_INPUTS}, 60};
    tensors[1] = (head_tensor_t){"bias", 1, 1, 0, 1, {HEAD_CLASSES}, 12};
}

/* A HeadReply header for feature "hidden" of head kind `kind` describing tensors[0 .. count). */
static void craft_head_reply(proto_writer_t *header, uint64_t kind, const head_tensor_t *tensors,
                             int count) {
    proto_writer_t reply = {.length = 0};
    put_string(&reply, HEAD_REPLY_FEATURE, "hidden");
    put_uint(&reply, HEAD_REPLY_KIND, kind);
    for (int i = 0; i < count; i++) {
        proto_writer_t tensor = {.length = 0};
        put_string(&tensor, TENSOR_NAME, tensors[i].name);
        put_uint(&tensor, TENSOR_DTYPE, tensors[i].dtype);
        put_uint(&tensor, TENSOR_ENCODING, tensors[i].encoding);
        put_uint(&tensor, TENSOR_LAYOUT, tensors[i].layout);
        if (tensors[i].ndim) put_packed(&tensor, TENSOR_SHAPE, tensors[i].shape, tensors[i].ndim);
        put_uint(&tensor, TENSOR_BYTE_LENGTH, tensors[i].byte_length);
        put_message(&reply, HEAD_REPLY_TENSORS, &tensor);
    }
    put_envelope(header, CM_WIRE_VERSION_MAJOR, ENVELOPE_HEAD_REPLY, &reply);
}

/* A teacher's Hello as a minor-version-0 peer writes it: every field up to limits, no heads. */
static void craft_minor_0_hello(proto_writer_t *header, const char *head) {
    proto_writer_t hello = {.length = 0}, output = {.length = 0}, limits = {.length = 0};
    uint64_t width = 10;
    put_uint(&hello, HELLO_PEER_KIND, 1);
    put_string(&hello, HELLO_PEER_NAME, "fm");
    put_uint(&hello, HELLO_ROLE, 1);
    put_string(&hello, HELLO_MODEL_ID, "mlp:784-64-10");
    put_string(&hello, HELLO_MODEL_SHA256, model_hash);
    put_string(&hello, HELLO_VIEW, "full");
    put_string(&hello, HELLO_DATASET_NAME, "fashion-mnist");
    put_string(&hello, HELLO_DATASET_FINGERPRINT, fingerprint);
    put_uint(&hello, HELLO_CLASSES, 10);
    put_string(&output, OUTPUT_NAME, "logits");
    put_uint(&output, OUTPUT_DTYPE, 1);
    put_packed(&output, OUTPUT_SHAPE, &width, 1);
    put_message(&hello, HELLO_OUTPUTS, &output);
    put_uint(&limits, LIMITS_MAX_EXAMPLES, 256);
    put_uint(&limits, LIMITS_MAX_MESSAGE_BYTES, 1u << 20);
    put_uint(&limits, LIMITS_MAX_IN_FLIGHT, 4);
    put_message(&hello, HELLO_LIMITS, &limits);
    if (head) put_string(&hello, HELLO_HEADS, head); /* what a minor-1 peer adds */
    header->length = 0;
    put_uint(header, ENVELOPE_VERSION_MAJOR, CM_WIRE_VERSION_MAJOR);
    put_uint(header, ENVELOPE_VERSION_MINOR, head ? 1 : 0);
    put_message(header, ENVELOPE_HELLO, &hello);
}

/* Decodes a header plus tensor frames with default limits, expecting failure with `want`. */
static void expect_refused(const proto_writer_t *header, const cm_wire_frame_t *tensors,
                           int tensor_count, cm_status_t want, const char *mention) {
    cm_wire_frame_t frames[CM_WIRE_MAX_FRAMES];
    frames[0] = (cm_wire_frame_t){header->bytes, header->length};
    for (int i = 0; i < tensor_count; i++) frames[1 + i] = tensors[i];
    cm_wire_limits_t limits = cm_wire_limits_default();
    cm_wire_message_t message;
    cm_clear_error();
    cm_status_t status = cm_wire_decode(&message, frames, 1 + tensor_count, &limits);
    ck_assert_msg(status == want, "got %s (%s), wanted %s", cm_status_name(status), cm_last_error(),
                  cm_status_name(want));
    assert_error_mentions(mention);
    ck_assert_ptr_null(message.header);
    cm_wire_message_deinit(&message);
}

/* ------------------------------------------------------------------------ */
/* Round trips                                                              */

START_TEST(test_hello_round_trip) {
    cm_wire_message_t message, decoded;
    cm_wire_encoded_t encoded;
    teacher_hello(&message);
    round_trip(&message, &encoded, &decoded);
    ck_assert_int_eq(encoded.frame_count, 1);
    const cm_wire_hello_t *hello = &decoded.hello;
    ck_assert_int_eq(hello->peer, CM_WIRE_PEER_TEACHER);
    ck_assert_str_eq(hello->peer_name, "vit-small");
    ck_assert_int_eq(hello->role, CM_WIRE_ROLE_FOUNDATION);
    ck_assert_str_eq(hello->model_id, message.hello.model_id);
    ck_assert_str_eq(hello->model_sha256, model_hash);
    ck_assert_str_eq(hello->view, "full");
    ck_assert_str_eq(hello->dataset_name, "fashion-mnist");
    ck_assert_str_eq(hello->dataset_fingerprint, fingerprint);
    ck_assert_int_eq(hello->classes, 10);
    ck_assert_int_eq(hello->output_count, 2);
    ck_assert_str_eq(hello->outputs[1].name, "hidden");
    ck_assert_int_eq(hello->outputs[1].dtype, CM_DTYPE_F32);
    ck_assert_int_eq(hello->outputs[1].ndim, 2);
    ck_assert_int_eq(hello->outputs[1].shape[0], 49);
    ck_assert_int_eq(hello->outputs[1].shape[1], 64);
    ck_assert_uint_eq(hello->limits.max_examples, 512);
    ck_assert_uint_eq(hello->limits.max_message_bytes, 1u << 24);
    ck_assert_uint_eq(hello->limits.max_in_flight, 4);
    cm_wire_message_deinit(&decoded);
    ck_assert_ptr_null(decoded.header);
    cm_wire_message_deinit(&decoded); /* twice is harmless */
    cm_wire_encoded_deinit(&encoded);

    /* A trainer: no role, no outputs, no model hash. */
    teacher_hello(&message);
    message.hello.peer = CM_WIRE_PEER_TRAINER;
    message.hello.peer_name = "student";
    message.hello.role = CM_WIRE_ROLE_NONE;
    message.hello.model_sha256 = NULL;
    message.hello.output_count = 0;
    round_trip(&message, &encoded, &decoded);
    ck_assert_int_eq(decoded.hello.peer, CM_WIRE_PEER_TRAINER);
    ck_assert_int_eq(decoded.hello.role, CM_WIRE_ROLE_NONE);
    ck_assert_str_eq(decoded.hello.model_sha256, "");
    ck_assert_int_eq(decoded.hello.output_count, 0);
    cm_wire_message_deinit(&decoded);
    cm_wire_encoded_deinit(&encoded);
}
END_TEST

START_TEST(test_batch_request_round_trip) {
    int32_t ids[5] = {5, 0, 59999, 7, 2147483647};
    cm_wire_message_t message, decoded;
    cm_wire_encoded_t encoded;
    cm_wire_message_init(&message, CM_WIRE_BATCH_REQUEST, UINT64_MAX);
    message.batch_request = (cm_wire_batch_request_t){.split = CM_SPLIT_TEST,
                                                      .example_count = 5,
                                                      .example_ids = ids,
                                                      .output_count = 2,
                                                      .outputs = {"logits", "hidden"},
                                                      .encoding = CM_DTYPE_BF16,
                                                      .top_k = 3};
    round_trip(&message, &encoded, &decoded);
    ck_assert_int_eq(encoded.frame_count, 1);
    const cm_wire_batch_request_t *request = &decoded.batch_request;
    ck_assert_int_eq(request->split, CM_SPLIT_TEST);
    ck_assert_int_eq(request->example_count, 5);
    for (int i = 0; i < 5; i++) ck_assert_int_eq(request->example_ids[i], ids[i]);
    ck_assert_int_eq(request->output_count, 2);
    ck_assert_str_eq(request->outputs[0], "logits");
    ck_assert_str_eq(request->outputs[1], "hidden");
    ck_assert_int_eq(request->encoding, CM_DTYPE_BF16);
    ck_assert_int_eq(request->top_k, 3);
    cm_wire_message_deinit(&decoded);
    cm_wire_encoded_deinit(&encoded);
}
END_TEST

START_TEST(test_batch_reply_round_trip) {
    reply_data_t data;
    cm_wire_message_t message, decoded;
    cm_wire_encoded_t encoded;
    batch_reply(&message, &data);
    round_trip(&message, &encoded, &decoded);
    ck_assert_int_eq(encoded.frame_count, 4);
    const cm_wire_batch_reply_t *reply = &decoded.batch_reply;
    ck_assert_int_eq(reply->split, CM_SPLIT_TRAIN);
    ck_assert_int_eq(reply->example_count, REPLY_EXAMPLES);
    for (int i = 0; i < REPLY_EXAMPLES; i++) ck_assert_int_eq(reply->example_ids[i], data.ids[i]);
    ck_assert_int_eq(reply->tensor_count, 3);
    for (int i = 0; i < 3; i++) {
        const cm_wire_tensor_t *got = &reply->tensors[i], *sent = &message.batch_reply.tensors[i];
        ck_assert_str_eq(got->name, sent->name);
        ck_assert_int_eq(got->dtype, sent->dtype);
        ck_assert_int_eq(got->encoding, sent->encoding);
        ck_assert_int_eq(got->layout, sent->layout);
        ck_assert_int_eq(got->ndim, sent->ndim);
        for (int dim = 0; dim < got->ndim; dim++)
            ck_assert_int_eq(got->shape[dim], sent->shape[dim]);
        ck_assert_uint_eq(got->bytes, sent->bytes);
        ck_assert_ptr_eq(got->data, sent->data); /* borrowed from the frame, not copied */
    }
    float logits[REPLY_EXAMPLES * REPLY_CLASSES], again[REPLY_EXAMPLES * REPLY_CLASSES];
    cm_wire_f16_to_f32(logits, reply->tensors[0].data, REPLY_EXAMPLES * REPLY_CLASSES);
    cm_wire_f16_to_f32(again, data.logits, REPLY_EXAMPLES * REPLY_CLASSES);
    ck_assert_mem_eq(logits, again, sizeof logits);
    cm_wire_message_deinit(&decoded);
    cm_wire_encoded_deinit(&encoded);
}
END_TEST

START_TEST(test_small_messages_round_trip) {
    cm_wire_message_t message, decoded;
    cm_wire_encoded_t encoded;

    cm_wire_message_init(&message, CM_WIRE_HEARTBEAT, 0);
    message.heartbeat.sent_unix_ns = 1764316996123456789ull;
    round_trip(&message, &encoded, &decoded);
    ck_assert_uint_eq(decoded.heartbeat.sent_unix_ns, 1764316996123456789ull);
    cm_wire_message_deinit(&decoded);
    cm_wire_encoded_deinit(&encoded);

    cm_wire_message_init(&message, CM_WIRE_HEARTBEAT, 0); /* all defaults still has a body */
    round_trip(&message, &encoded, &decoded);
    ck_assert_uint_eq(decoded.heartbeat.sent_unix_ns, 0);
    cm_wire_message_deinit(&decoded);
    cm_wire_encoded_deinit(&encoded);

    cm_wire_message_error(&message, 42, CM_ERR_BUSY, "teacher vit-small has 64 requests queued");
    round_trip(&message, &encoded, &decoded);
    ck_assert_int_eq(decoded.error.code, CM_ERR_BUSY);
    ck_assert_uint_eq(decoded.request_id, 42);
    ck_assert_str_eq(decoded.error.message, "teacher vit-small has 64 requests queued");
    cm_wire_message_deinit(&decoded);
    cm_wire_encoded_deinit(&encoded);

    /* Every failure code travels by name and comes back as itself. */
    for (int code = CM_OK + 1; code < CM_STATUS_COUNT; code++) {
        cm_wire_message_error(&message, 1, (cm_status_t)code, NULL);
        round_trip(&message, &encoded, &decoded);
        ck_assert_int_eq(decoded.error.code, code);
        ck_assert_str_eq(decoded.error.message, cm_status_str((cm_status_t)code));
        cm_wire_message_deinit(&decoded);
        cm_wire_encoded_deinit(&encoded);
    }

    cm_wire_message_init(&message, CM_WIRE_BYE, 0);
    message.bye.reason = "SIGTERM: shutting down";
    round_trip(&message, &encoded, &decoded);
    ck_assert_str_eq(decoded.bye.reason, "SIGTERM: shutting down");
    cm_wire_message_deinit(&decoded);
    cm_wire_encoded_deinit(&encoded);
}
END_TEST

START_TEST(test_error_code_names_on_the_wire) {
    proto_writer_t error = {.length = 0}, header;
    put_string(&error, 1, "VERSION");
    put_string(&error, 2, "peer speaks 2.0");
    put_envelope(&header, CM_WIRE_VERSION_MAJOR, ENVELOPE_ERROR, &error);
    cm_wire_frame_t frame = {header.bytes, header.length};
    cm_wire_limits_t limits = cm_wire_limits_default();
    cm_wire_message_t message;
    ck_assert_int_eq(cm_wire_decode(&message, &frame, 1, &limits), CM_OK);
    ck_assert_int_eq(message.error.code, CM_ERR_VERSION);
    ck_assert_str_eq(message.error.message, "peer speaks 2.0");
    cm_wire_message_deinit(&message);

    /* A code from a newer peer is still an error, just not one this side knows. */
    error.length = 0;
    put_string(&error, 1, "QUOTA_EXCEEDED");
    put_envelope(&header, CM_WIRE_VERSION_MAJOR, ENVELOPE_ERROR, &error);
    frame = (cm_wire_frame_t){header.bytes, header.length};
    ck_assert_int_eq(cm_wire_decode(&message, &frame, 1, &limits), CM_OK);
    ck_assert_int_eq(message.error.code, CM_ERR_INTERNAL);
    cm_wire_message_deinit(&message);

    error.length = 0;
    put_string(&error, 1, "OK");
    put_envelope(&header, CM_WIRE_VERSION_MAJOR, ENVELOPE_ERROR, &error);
    expect_refused(&header, NULL, 0, CM_ERR_FORMAT, "\"OK\"");

    error.length = 0;
    put_string(&error, 2, "no code at all");
    put_envelope(&header, CM_WIRE_VERSION_MAJOR, ENVELOPE_ERROR, &error);
    expect_refused(&header, NULL, 0, CM_ERR_FORMAT, "code is empty");
}
END_TEST

START_TEST(test_pack_header_into_caller_buffer) {
    reply_data_t data;
    cm_wire_message_t message;
    cm_wire_encoded_t encoded;
    batch_reply(&message, &data);
    size_t header_bytes = 0, packed_bytes = 0;
    ck_assert_int_eq(cm_wire_header_size(&message, &header_bytes), CM_OK);
    ck_assert_int_eq(cm_wire_encode(&encoded, &message), CM_OK);
    ck_assert_uint_eq(encoded.frames[0].bytes, header_bytes);
    uint8_t buffer[1024];
    ck_assert_uint_le(header_bytes, sizeof buffer);
    ck_assert_int_eq(cm_wire_pack_header(&message, buffer, header_bytes, &packed_bytes), CM_OK);
    ck_assert_uint_eq(packed_bytes, header_bytes);
    ck_assert_mem_eq(buffer, encoded.frames[0].data, header_bytes);
    ck_assert_int_eq(cm_wire_pack_header(&message, buffer, header_bytes - 1, &packed_bytes),
                     CM_ERR_TOO_LARGE);
    assert_error_mentions("buffer holds");
    cm_wire_encoded_deinit(&encoded);
    ck_assert_ptr_null(encoded.header);
}
END_TEST

/* The sender runs the receiver's checks: a bad message never leaves. */
START_TEST(test_encode_refuses_bad_messages) {
    cm_wire_message_t message;
    cm_wire_encoded_t encoded;
    reply_data_t data;

    batch_reply(&message, &data);
    message.batch_reply.tensors[1].bytes -= 4;
    ck_assert_int_eq(cm_wire_encode(&encoded, &message), CM_ERR_FORMAT);
    assert_error_mentions("tensor 'hidden' frame is 92 bytes");
    ck_assert_int_eq(encoded.frame_count, 0);
    cm_wire_encoded_deinit(&encoded);

    batch_reply(&message, &data);
    message.batch_reply.tensors[0].shape[0] = 4;
    message.batch_reply.tensors[0].bytes = 4 * REPLY_CLASSES * 2;
    ck_assert_int_eq(cm_wire_encode(&encoded, &message), CM_ERR_SHAPE);
    assert_error_mentions("4 rows but the reply answers 3 examples");

    batch_reply(&message, &data);
    message.batch_reply.tensors[2].dtype = CM_DTYPE_F32;
    message.batch_reply.tensors[2].encoding = CM_DTYPE_F32;
    ck_assert_int_eq(cm_wire_encode(&encoded, &message), CM_ERR_FORMAT);
    assert_error_mentions("top-k part");

    batch_reply(&message, &data);
    message.batch_reply.tensors[1].name = "logits"; /* tensors[2] is "logits" in another layout */
    ck_assert_int_eq(cm_wire_encode(&encoded, &message), CM_ERR_FORMAT);
    assert_error_mentions("tensor 'logits' (layout 0) twice");

    batch_reply(&message, &data);
    message.request_id = 0;
    ck_assert_int_eq(cm_wire_encode(&encoded, &message), CM_ERR_FORMAT);
    assert_error_mentions("request id 0");

    teacher_hello(&message);
    message.hello.dataset_fingerprint =
        "9F86D081884C7D659A2FEAA0C55AD015A3BF4F1B2B0B822CD15D6C15B0F00A08";
    ck_assert_int_eq(cm_wire_encode(&encoded, &message), CM_ERR_FORMAT);
    assert_error_mentions("dataset_fingerprint");

    teacher_hello(&message);
    message.hello.role = CM_WIRE_ROLE_NONE;
    ck_assert_int_eq(cm_wire_encode(&encoded, &message), CM_ERR_FORMAT);
    assert_error_mentions("role");

    teacher_hello(&message);
    message.hello.outputs[1].name = "logits";
    ck_assert_int_eq(cm_wire_encode(&encoded, &message), CM_ERR_FORMAT);
    assert_error_mentions("output 'logits' twice");

    teacher_hello(&message);
    message.hello.limits.max_in_flight = 0;
    ck_assert_int_eq(cm_wire_encode(&encoded, &message), CM_ERR_FORMAT);
    assert_error_mentions("max_in_flight 0");

    static char long_reason[CM_WIRE_MAX_STRING + 2];
    memset(long_reason, 'x', sizeof long_reason - 1);
    cm_wire_message_init(&message, CM_WIRE_BYE, 0);
    message.bye.reason = long_reason;
    ck_assert_int_eq(cm_wire_encode(&encoded, &message), CM_ERR_TOO_LARGE);
    assert_error_mentions("Bye field reason is longer than 1024 bytes");

    int32_t ids[1] = {0};
    cm_wire_message_init(&message, CM_WIRE_BATCH_REQUEST, 1);
    message.batch_request = (cm_wire_batch_request_t){.split = CM_SPLIT_TRAIN,
                                                      .example_count = 1,
                                                      .example_ids = ids,
                                                      .output_count = 1,
                                                      .outputs = {"logits"},
                                                      .encoding = CM_DTYPE_I32};
    ck_assert_int_eq(cm_wire_encode(&encoded, &message), CM_ERR_FORMAT);
    assert_error_mentions("encoding is I32");

    cm_wire_message_error(&message, 3, CM_OK, "fine");
    ck_assert_int_eq(cm_wire_encode(&encoded, &message), CM_ERR_FORMAT);
    assert_error_mentions("not a failure");
}
END_TEST

START_TEST(test_hello_heads_round_trip) {
    cm_wire_message_t message, decoded;
    cm_wire_encoded_t encoded;
    teacher_hello(&message);
    message.hello.head_count = 1;
    message.hello.heads[0] = "hidden";
    round_trip(&message, &encoded, &decoded);
    ck_assert_int_eq(decoded.hello.head_count, 1);
    ck_assert_str_eq(decoded.hello.heads[0], "hidden");
    ck_assert_int_eq(decoded.hello.output_count, 2);
    cm_wire_message_deinit(&decoded);
    cm_wire_encoded_deinit(&encoded);

    teacher_hello(&message); /* lending nothing */
    round_trip(&message, &encoded, &decoded);
    ck_assert_int_eq(decoded.hello.head_count, 0);
    cm_wire_message_deinit(&decoded);
    cm_wire_encoded_deinit(&encoded);

    /* A head must read one of the outputs the Hello lists, once. */
    teacher_hello(&message);
    message.hello.head_count = 1;
    message.hello.heads[0] = "tokens";
    ck_assert_int_eq(cm_wire_encode(&encoded, &message), CM_ERR_FORMAT);
    assert_error_mentions("head for 'tokens', which is not one of the outputs");
    message.hello.head_count = 2;
    message.hello.heads[0] = message.hello.heads[1] = "hidden";
    ck_assert_int_eq(cm_wire_encode(&encoded, &message), CM_ERR_FORMAT);
    assert_error_mentions("names head 'hidden' twice");
    message.hello.head_count = 1;
    message.hello.heads[0] = "";
    ck_assert_int_eq(cm_wire_encode(&encoded, &message), CM_ERR_FORMAT);
    assert_error_mentions("Hello field heads is empty");
    message.hello.head_count = CM_WIRE_MAX_OUTPUTS + 1;
    ck_assert_int_eq(cm_wire_encode(&encoded, &message), CM_ERR_FORMAT);
    assert_error_mentions("17 heads");
}
END_TEST

START_TEST(test_minor_version_0_hello_has_no_heads) {
    proto_writer_t header;
    craft_minor_0_hello(&header, NULL);
    cm_wire_frame_t frame = {header.bytes, header.length};
    cm_wire_limits_t limits = cm_wire_limits_default();
    cm_wire_message_t message;
    ck_assert_msg(cm_wire_decode(&message, &frame, 1, &limits) == CM_OK, "%s", cm_last_error());
    ck_assert_int_eq(message.kind, CM_WIRE_HELLO);
    ck_assert_uint_eq(message.version_minor, 0);
    ck_assert_str_eq(message.hello.peer_name, "fm");
    ck_assert_int_eq(message.hello.output_count, 1);
    ck_assert_int_eq(message.hello.head_count, 0);
    cm_wire_message_deinit(&message);

    /* Field 12 is heads, and what it names is checked against the outputs. */
    craft_minor_0_hello(&header, "logits");
    frame = (cm_wire_frame_t){header.bytes, header.length};
    ck_assert_msg(cm_wire_decode(&message, &frame, 1, &limits) == CM_OK, "%s", cm_last_error());
    ck_assert_int_eq(message.hello.head_count, 1);
    ck_assert_str_eq(message.hello.heads[0], "logits");
    cm_wire_message_deinit(&message);
    craft_minor_0_hello(&header, "hidden");
    expect_refused(&header, NULL, 0, CM_ERR_FORMAT, "head for 'hidden', which is not one");
}
END_TEST

/* Minor version 2: the splits a teacher serves, and requests for the valid and transfer splits. */
START_TEST(test_hello_splits_and_new_splits_round_trip) {
    cm_wire_message_t message, decoded;
    cm_wire_encoded_t encoded;
    teacher_hello(&message);
    message.hello.split_count = 3;
    message.hello.splits[0] = CM_SPLIT_TRAIN;
    message.hello.splits[1] = CM_SPLIT_TEST;
    message.hello.splits[2] = CM_SPLIT_TRANSFER;
    round_trip(&message, &encoded, &decoded);
    ck_assert_int_eq(decoded.hello.split_count, 3);
    ck_assert_int_eq(decoded.hello.splits[2], CM_SPLIT_TRANSFER);
    cm_wire_message_deinit(&decoded);
    cm_wire_encoded_deinit(&encoded);
    message.hello.splits[2] = CM_SPLIT_TEST;
    ck_assert_int_eq(cm_wire_encode(&encoded, &message), CM_ERR_FORMAT);
    assert_error_mentions("Hello lists split 'test' twice");

    /* Values this side does not know (a newer peer's) are skipped; an older peer lists none. */
    proto_writer_t header;
    craft_minor_0_hello(&header, NULL);
    cm_wire_frame_t frame = {header.bytes, header.length};
    cm_wire_limits_t limits = cm_wire_limits_default();
    ck_assert_int_eq(cm_wire_decode(&message, &frame, 1, &limits), CM_OK);
    ck_assert_int_eq(message.hello.split_count, 0);
    cm_wire_message_deinit(&message);
    /* A minor-3 peer's Hello: the minor-0 fields, then splits 1, 2, 9 (unknown here) and 4. */
    uint64_t splits[4] = {1, 2, 9, 4};
    proto_writer_t crafted = {.length = 0}, inner = {.length = 0}, output = {.length = 0},
                   limits_writer = {.length = 0};
    uint64_t width = 10;
    put_uint(&inner, HELLO_PEER_KIND, 1);
    put_string(&inner, HELLO_PEER_NAME, "fm");
    put_uint(&inner, HELLO_ROLE, 1);
    put_string(&inner, HELLO_MODEL_ID, "mlp:784-64-10");
    put_string(&inner, HELLO_MODEL_SHA256, model_hash);
    put_string(&inner, HELLO_VIEW, "full");
    put_string(&inner, HELLO_DATASET_NAME, "fashion-mnist");
    put_string(&inner, HELLO_DATASET_FINGERPRINT, fingerprint);
    put_uint(&inner, HELLO_CLASSES, 10);
    put_string(&output, OUTPUT_NAME, "logits");
    put_uint(&output, OUTPUT_DTYPE, 1);
    put_packed(&output, OUTPUT_SHAPE, &width, 1);
    put_message(&inner, HELLO_OUTPUTS, &output);
    put_uint(&limits_writer, LIMITS_MAX_EXAMPLES, 256);
    put_uint(&limits_writer, LIMITS_MAX_MESSAGE_BYTES, 1u << 20);
    put_uint(&limits_writer, LIMITS_MAX_IN_FLIGHT, 4);
    put_message(&inner, HELLO_LIMITS, &limits_writer);
    put_packed(&inner, HELLO_SPLITS, splits, 4);
    put_uint(&crafted, ENVELOPE_VERSION_MAJOR, CM_WIRE_VERSION_MAJOR);
    put_uint(&crafted, ENVELOPE_VERSION_MINOR, 3);
    put_message(&crafted, ENVELOPE_HELLO, &inner);
    frame = (cm_wire_frame_t){crafted.bytes, crafted.length};
    ck_assert_msg(cm_wire_decode(&message, &frame, 1, &limits) == CM_OK, "%s", cm_last_error());
    ck_assert_int_eq(message.hello.split_count, 3);
    ck_assert_int_eq(message.hello.splits[0], CM_SPLIT_TRAIN);
    ck_assert_int_eq(message.hello.splits[1], CM_SPLIT_TEST);
    ck_assert_int_eq(message.hello.splits[2], CM_SPLIT_TRANSFER);
    cm_wire_message_deinit(&message);

    /* Requests and replies for the valid and transfer splits; unknown values are FORMAT. */
    int32_t ids[2] = {4, 1};
    for (int split = CM_SPLIT_VALID; split <= CM_SPLIT_TRANSFER; split++) {
        cm_wire_message_init(&message, CM_WIRE_BATCH_REQUEST, 9);
        message.batch_request = (cm_wire_batch_request_t){.split = (cm_split_t)split,
                                                          .example_count = 2,
                                                          .example_ids = ids,
                                                          .output_count = 1,
                                                          .outputs = {"logits"},
                                                          .encoding = CM_DTYPE_F32};
        round_trip(&message, &encoded, &decoded);
        ck_assert_int_eq(decoded.batch_request.split, split);
        cm_wire_message_deinit(&decoded);
        cm_wire_encoded_deinit(&encoded);
    }
    proto_writer_t request = {.length = 0};
    uint64_t wire_ids[1] = {3};
    put_uint(&request, REQUEST_SPLIT, 9);
    put_packed(&request, REQUEST_IDS, wire_ids, 1);
    put_string(&request, REQUEST_OUTPUTS, "logits");
    put_uint(&request, REQUEST_ENCODING, 1);
    put_envelope(&header, CM_WIRE_VERSION_MAJOR, ENVELOPE_BATCH_REQUEST, &request);
    expect_refused(&header, NULL, 0, CM_ERR_FORMAT, "split has unknown value 9");
}
END_TEST

START_TEST(test_head_request_round_trip) {
    cm_wire_message_t message, decoded;
    cm_wire_encoded_t encoded;
    cm_wire_message_init(&message, CM_WIRE_HEAD_REQUEST, 31);
    message.head_request.feature = "hidden";
    round_trip(&message, &encoded, &decoded);
    ck_assert_int_eq(encoded.frame_count, 1);
    ck_assert_str_eq(decoded.head_request.feature, "hidden");
    cm_wire_message_deinit(&decoded);
    cm_wire_encoded_deinit(&encoded);

    /* By hand: field 16 of the Envelope, the feature in field 1. */
    proto_writer_t request = {.length = 0}, header;
    put_string(&request, HEAD_REQUEST_FEATURE, "tokens");
    put_envelope(&header, CM_WIRE_VERSION_MAJOR, ENVELOPE_HEAD_REQUEST, &request);
    cm_wire_frame_t frame = {header.bytes, header.length};
    cm_wire_limits_t limits = cm_wire_limits_default();
    ck_assert_int_eq(cm_wire_decode(&decoded, &frame, 1, &limits), CM_OK);
    ck_assert_int_eq(decoded.kind, CM_WIRE_HEAD_REQUEST);
    ck_assert_uint_eq(decoded.request_id, 9);
    ck_assert_str_eq(decoded.head_request.feature, "tokens");
    cm_wire_message_deinit(&decoded);

    request.length = 0; /* no feature */
    put_envelope(&header, CM_WIRE_VERSION_MAJOR, ENVELOPE_HEAD_REQUEST, &request);
    expect_refused(&header, NULL, 0, CM_ERR_FORMAT, "HeadRequest field feature is empty");
    uint8_t extra[4] = {0};
    put_string(&request, HEAD_REQUEST_FEATURE, "hidden");
    put_envelope(&header, CM_WIRE_VERSION_MAJOR, ENVELOPE_HEAD_REQUEST, &request);
    expect_refused(&header, &(cm_wire_frame_t){extra, 4}, 1, CM_ERR_FORMAT,
                   "a HeadRequest carries no tensor frames, but 1 followed");

    message.request_id = 0;
    ck_assert_int_eq(cm_wire_encode(&encoded, &message), CM_ERR_FORMAT);
    assert_error_mentions("HeadRequest has request id 0");
}
END_TEST

/* Floats whose bits must survive: signed zero, a subnormal, infinities, a NaN with a payload. */
static void head_values(float weight[HEAD_CLASSES * HEAD_INPUTS], float bias[HEAD_CLASSES]) {
    cm_rng_t rng;
    cm_rng_seed(&rng, 21);
    for (int i = 0; i < HEAD_CLASSES * HEAD_INPUTS; i++) weight[i] = cm_rng_normal(&rng);
    const uint32_t special[] = {0x80000000u, 0x00000001u, 0x7f800000u, 0xff800000u, 0x7fc01234u};
    for (int i = 0; i < 5; i++) memcpy(&weight[3 * i], &special[i], sizeof(float));
    for (int i = 0; i < HEAD_CLASSES; i++) bias[i] = cm_rng_normal(&rng) * 1e-3f;
}

static void head_reply(cm_wire_message_t *message, const float *weight, const float *bias) {
    cm_wire_message_init(message, CM_WIRE_HEAD_REPLY, 31);
    message->head_reply = (cm_wire_head_reply_t){.feature = "hidden",
                                                 .classes = HEAD_CLASSES,
                                                 .inputs = HEAD_INPUTS,
                                                 .weight = weight,
                                                 .bias = bias};
}

START_TEST(test_head_reply_round_trip) {
    float weight[HEAD_CLASSES * HEAD_INPUTS], bias[HEAD_CLASSES];
    head_values(weight, bias);
    cm_wire_message_t message, decoded;
    cm_wire_encoded_t encoded;
    head_reply(&message, weight, bias);
    round_trip(&message, &encoded, &decoded);
    ck_assert_int_eq(encoded.frame_count, 3);
    ck_assert_ptr_eq(encoded.frames[1].data, weight); /* borrowed, not copied */
    ck_assert_uint_eq(encoded.frames[1].bytes, sizeof weight);
    ck_assert_ptr_eq(encoded.frames[2].data, bias);
    ck_assert_uint_eq(encoded.frames[2].bytes, sizeof bias);
    const cm_wire_head_reply_t *reply = &decoded.head_reply;
    ck_assert_str_eq(reply->feature, "hidden");
    ck_assert_int_eq(reply->classes, HEAD_CLASSES);
    ck_assert_int_eq(reply->inputs, HEAD_INPUTS);
    ck_assert_ptr_eq(reply->weight, encoded.frames[1].data); /* points into the frame */
    ck_assert_ptr_eq(reply->bias, encoded.frames[2].data);
    ck_assert_mem_eq(reply->weight, weight, sizeof weight); /* bit for bit, NaN payload too */
    ck_assert_mem_eq(reply->bias, bias, sizeof bias);
    cm_wire_frame_t frames[CM_WIRE_MAX_TENSORS];
    ck_assert_int_eq(cm_wire_tensor_frames(&decoded, frames), 2);
    ck_assert_uint_eq(frames[0].bytes, sizeof weight);
    ck_assert_uint_eq(frames[1].bytes, sizeof bias);
    cm_wire_message_deinit(&decoded);

    /* The header a peer must be able to read: the hand-made twin of this reply decodes alike. */
    head_tensor_t tensors[2];
    valid_head_tensors(tensors);
    proto_writer_t header;
    craft_head_reply(&header, 1, tensors, 2);
    cm_wire_frame_t crafted[3] = {{header.bytes, header.length}, {weight, 60}, {bias, 12}};
    cm_wire_limits_t limits = cm_wire_limits_default();
    ck_assert_msg(cm_wire_decode(&decoded, crafted, 3, &limits) == CM_OK, "%s", cm_last_error());
    ck_assert_int_eq(decoded.kind, CM_WIRE_HEAD_REPLY);
    ck_assert_int_eq(decoded.head_reply.classes, HEAD_CLASSES);
    ck_assert_int_eq(decoded.head_reply.inputs, HEAD_INPUTS);
    cm_wire_message_deinit(&decoded);

    /* A message just within the receiver's limit passes, one byte less does not. */
    size_t total = encoded.frames[0].bytes + sizeof weight + sizeof bias;
    limits.max_message_bytes = total;
    ck_assert_int_eq(cm_wire_decode(&decoded, encoded.frames, 3, &limits), CM_OK);
    cm_wire_message_deinit(&decoded);
    limits.max_message_bytes = total - 1;
    ck_assert_int_eq(cm_wire_decode(&decoded, encoded.frames, 3, &limits), CM_ERR_TOO_LARGE);
    assert_error_mentions("exceeds the limit");
    cm_wire_encoded_deinit(&encoded);

    /* The sender refuses what the receiver would. */
    head_reply(&message, weight, bias);
    message.head_reply.classes = 0;
    ck_assert_int_eq(cm_wire_encode(&encoded, &message), CM_ERR_FORMAT);
    assert_error_mentions("0 classes and 5 inputs");
    head_reply(&message, weight, NULL);
    ck_assert_int_eq(cm_wire_encode(&encoded, &message), CM_ERR_INVALID_ARG);
    assert_error_mentions("no bias data");
    head_reply(&message, weight, bias);
    message.head_reply.feature = NULL;
    ck_assert_int_eq(cm_wire_encode(&encoded, &message), CM_ERR_FORMAT);
    assert_error_mentions("HeadReply field feature is empty");
    head_reply(&message, weight, bias);
    message.request_id = 0;
    ck_assert_int_eq(cm_wire_encode(&encoded, &message), CM_ERR_FORMAT);
    assert_error_mentions("HeadReply has request id 0");
}
END_TEST

/* ------------------------------------------------------------------------ */
/* Half and bfloat16                                                        */

static uint16_t half_of(float value) {
    uint16_t half;
    cm_wire_f32_to_f16(&half, &value, 1);
    return half;
}

static uint16_t bfloat_of(float value) {
    uint16_t bfloat;
    cm_wire_f32_to_bf16(&bfloat, &value, 1);
    return bfloat;
}

static uint32_t bits_of(float value) {
    uint32_t bits;
    memcpy(&bits, &value, sizeof bits);
    return bits;
}

static float float_of(uint32_t bits) {
    float value;
    memcpy(&value, &bits, sizeof value);
    return value;
}

START_TEST(test_f16_exact_values) {
    static const struct {
        float value;
        uint16_t half;
    } cases[] = {
        {0.0f, 0x0000},
        {-0.0f, 0x8000},
        {1.0f, 0x3c00},
        {-2.0f, 0xc000},
        {0.5f, 0x3800},
        {65504.0f, 0x7bff},          /* the largest half */
        {65519.0f, 0x7bff},          /* below the midpoint to 65536: rounds down */
        {65520.0f, 0x7c00},          /* the midpoint, 0x7bff is odd: rounds to inf */
        {1e10f, 0x7c00},             /* overflow */
        {-1e10f, 0xfc00},            /* overflow */
        {INFINITY, 0x7c00},          /* inf */
        {-INFINITY, 0xfc00},         /* -inf */
        {0x1p-14f, 0x0400},          /* the smallest normal */
        {0x1p-24f, 0x0001},          /* the smallest subnormal */
        {0x3ffp-24f, 0x03ff},        /* the largest subnormal */
        {0x1p-25f, 0x0000},          /* tie between 0 and 2^-24: even is 0 */
        {0x3p-25f, 0x0002},          /* tie between 1 and 2 (x 2^-24): even is 2 */
        {0x1.8p-25f, 0x0001},        /* above the tie: rounds up */
        {0x1p-26f, 0x0000},          /* underflow */
        {1.0f + 0x1p-11f, 0x3c00},   /* tie, 1.0 is even */
        {1.0f + 0x3p-11f, 0x3c02},   /* tie, rounds up to the even neighbour */
        {1.0f + 0x1.2p-11f, 0x3c01}, /* just above the tie */
        {0x1.ffcp-15f, 0x0400},      /* rounds up from subnormal into the smallest normal */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        ck_assert_msg(half_of(cases[i].value) == cases[i].half, "f16(%a) = 0x%04x, want 0x%04x",
                      (double)cases[i].value, half_of(cases[i].value), cases[i].half);
        float back;
        cm_wire_f16_to_f32(&back, &cases[i].half, 1);
        uint16_t again = half_of(back);
        ck_assert_uint_eq(again, cases[i].half);
    }
    float back[3];
    uint16_t halves[3] = {0x3555, 0x0001, 0xfbff};
    cm_wire_f16_to_f32(back, halves, 3);
    ck_assert_float_eq(back[0], 0x1.554p-2f);
    ck_assert_float_eq(back[1], 0x1p-24f);
    ck_assert_float_eq(back[2], -65504.0f);

    /* NaN stays NaN (quiet), keeping its sign, even when its payload is only in low bits. */
    uint16_t nan_half = half_of(float_of(0x7f800001u));
    ck_assert_uint_eq(nan_half & 0x7c00, 0x7c00);
    ck_assert_uint_ne(nan_half & 0x03ff, 0);
    ck_assert_uint_eq(half_of(-NAN) & 0x8000, 0x8000);
    float nan_back;
    cm_wire_f16_to_f32(&nan_back, &nan_half, 1);
    ck_assert(isnan(nan_back));
}
END_TEST

START_TEST(test_f16_every_half_round_trips) {
    static uint16_t halves[65536], again[65536];
    static float floats[65536];
    for (int i = 0; i < 65536; i++) halves[i] = (uint16_t)i;
    cm_wire_f16_to_f32(floats, halves, 65536);
    cm_wire_f32_to_f16(again, floats, 65536);
    for (int i = 0; i < 65536; i++) {
        bool nan = (i & 0x7c00) == 0x7c00 && (i & 0x03ff);
        if (nan) {
            ck_assert_msg(isnan(floats[i]), "half 0x%04x is NaN but became %g", i,
                          (double)floats[i]);
            ck_assert_uint_eq(again[i], i | 0x0200); /* quieted, payload and sign kept */
        } else {
            ck_assert_msg(again[i] == i, "half 0x%04x -> %a -> 0x%04x", i, (double)floats[i],
                          again[i]);
        }
    }
}
END_TEST

/* Against the compiler's own float -> _Float16 conversion, on random bit patterns. */
START_TEST(test_f16_matches_compiler) {
#ifdef __FLT16_MAX__
    cm_rng_t rng;
    cm_rng_seed(&rng, 5);
    for (int i = 0; i < 200000; i++) {
        /* Exponents concentrated around the half range, so all branches are hit. */
        uint32_t bits = cm_rng_u32(&rng);
        uint32_t exponent = 100 + cm_rng_below(&rng, 45);
        if (i % 8) bits = (bits & 0x807fffffu) | (exponent << 23);
        float value = float_of(bits);
        if (isnan(value)) continue;
        _Float16 reference = (_Float16)value;
        uint16_t want;
        memcpy(&want, &reference, sizeof want);
        ck_assert_msg(half_of(value) == want, "f16(%a) = 0x%04x, compiler says 0x%04x",
                      (double)value, half_of(value), want);
    }
#endif
}
END_TEST

START_TEST(test_bf16_exact_values) {
    static const struct {
        float value;
        uint16_t bfloat;
    } cases[] = {
        {0.0f, 0x0000},
        {-0.0f, 0x8000},
        {1.0f, 0x3f80},
        {0.5f, 0x3f00},
        {-2.0f, 0xc000},
        {65504.0f, 0x4780}, /* 65504 needs 11 bits: rounds to 65536 */
        {INFINITY, 0x7f80},
        {-INFINITY, 0xff80},
        {3.4028235e38f, 0x7f80},     /* FLT_MAX rounds up to inf */
        {1.0f + 0x1p-8f, 0x3f80},    /* tie, 1.0 is even */
        {1.0f + 0x3p-8f, 0x3f82},    /* tie, rounds up to the even neighbour */
        {1.0f + 0x1.02p-8f, 0x3f81}, /* just above the tie */
        {0x1p-133f, 0x0001},         /* a float subnormal that bf16 holds exactly */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        ck_assert_msg(bfloat_of(cases[i].value) == cases[i].bfloat,
                      "bf16(%a) = 0x%04x, want 0x%04x", (double)cases[i].value,
                      bfloat_of(cases[i].value), cases[i].bfloat);

    /* A signalling NaN whose payload lies in the dropped bits must not become inf. */
    ck_assert_uint_eq(bfloat_of(float_of(0x7f800001u)), 0x7fc0);
    ck_assert_uint_eq(bfloat_of(float_of(0xffc00000u)), 0xffc0);

    /* Back to float: exact, every pattern. */
    static uint16_t patterns[65536];
    static float floats[65536];
    for (int i = 0; i < 65536; i++) patterns[i] = (uint16_t)i;
    cm_wire_bf16_to_f32(floats, patterns, 65536);
    for (int i = 0; i < 65536; i++) {
        ck_assert_uint_eq(bits_of(floats[i]), (uint32_t)i << 16);
        if (!isnan(floats[i])) ck_assert_uint_eq(bfloat_of(floats[i]), i);
    }
}
END_TEST

/* Half an ulp: 2^-11 for f16 (11-bit significand), 2^-8 for bf16 (8-bit). */
START_TEST(test_relative_error_on_logits) {
    enum { COUNT = 100000 };
    static float values[COUNT], back[COUNT];
    static uint16_t packed[COUNT];
    cm_rng_t rng;
    cm_rng_seed(&rng, 2024);
    for (int i = 0; i < COUNT; i++)
        values[i] = i % 2 ? cm_rng_normal(&rng) * 8.0f : (cm_rng_uniform(&rng) - 0.5f) * 60.0f;

    double worst_f16 = 0, worst_bf16 = 0;
    cm_wire_f32_to_f16(packed, values, COUNT);
    cm_wire_f16_to_f32(back, packed, COUNT);
    for (int i = 0; i < COUNT; i++) {
        if (fabsf(values[i]) < 0x1p-14f) continue; /* subnormal halves: absolute precision */
        double error = fabs((double)back[i] - values[i]) / fabs((double)values[i]);
        if (error > worst_f16) worst_f16 = error;
    }
    cm_wire_f32_to_bf16(packed, values, COUNT);
    cm_wire_bf16_to_f32(back, packed, COUNT);
    for (int i = 0; i < COUNT; i++) {
        if (values[i] == 0.0f) continue;
        double error = fabs((double)back[i] - values[i]) / fabs((double)values[i]);
        if (error > worst_bf16) worst_bf16 = error;
    }
    ck_assert_msg(worst_f16 <= 0x1p-11, "f16 worst relative error %g", worst_f16);
    ck_assert_msg(worst_bf16 <= 0x1p-8, "bf16 worst relative error %g", worst_bf16);
    /* And they are not trivially zero: the rounding really happened. */
    ck_assert(worst_f16 > 0x1p-13);
    ck_assert(worst_bf16 > 0x1p-10);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* Refusals                                                                 */

/* Decodes whatever the bytes are; success must be a coherent message, failure a sentence. */
static int decode_anything(const uint8_t *bytes, size_t length, const cm_wire_frame_t *tensors,
                           int tensor_count) {
    cm_wire_frame_t frames[CM_WIRE_MAX_FRAMES];
    frames[0] = (cm_wire_frame_t){bytes, length};
    for (int i = 0; i < tensor_count; i++) frames[1 + i] = tensors[i];
    cm_wire_limits_t limits = cm_wire_limits_default();
    cm_wire_message_t message;
    cm_clear_error();
    cm_status_t status = cm_wire_decode(&message, frames, 1 + tensor_count, &limits);
    if (status == CM_OK) {
        ck_assert_int_lt(message.kind, CM_WIRE_KIND_COUNT);
        ck_assert_uint_eq(message.version_major, CM_WIRE_VERSION_MAJOR);
        ck_assert_ptr_nonnull(message.header);
    } else {
        ck_assert_msg(status == CM_ERR_FORMAT || status == CM_ERR_VERSION ||
                          status == CM_ERR_TOO_LARGE || status == CM_ERR_SHAPE ||
                          status == CM_ERR_OUT_OF_RANGE,
                      "unexpected status %s: %s", cm_status_name(status), cm_last_error());
        ck_assert_str_ne(cm_last_error(), "no details");
        ck_assert_ptr_null(message.header);
    }
    cm_wire_message_deinit(&message);
    return status == CM_OK;
}

/* Flips, overwrites and truncates the header of `message` at random; returns how many of the
 * mutants still decoded (each checked by decode_anything). */
static int mutate_and_decode(cm_rng_t *rng, const cm_wire_message_t *message) {
    cm_wire_encoded_t encoded;
    ck_assert_int_eq(cm_wire_encode(&encoded, message), CM_OK);
    uint8_t bytes[256];
    size_t header_length = encoded.frames[0].bytes;
    ck_assert_uint_le(header_length, sizeof bytes);
    int accepted = 0;
    for (int round = 0; round < 5000; round++) {
        memcpy(bytes, encoded.frames[0].data, header_length);
        size_t length = header_length;
        int edits = 1 + (int)cm_rng_below(rng, 3);
        for (int edit = 0; edit < edits; edit++) {
            size_t at = cm_rng_below(rng, (uint32_t)header_length);
            switch (cm_rng_below(rng, 3)) {
            case 0:
                bytes[at] ^= (uint8_t)(1u << cm_rng_below(rng, 8));
                break;
            case 1:
                bytes[at] = (uint8_t)cm_rng_u32(rng);
                break;
            default:
                length = 1 + at;
                break;
            }
        }
        accepted += decode_anything(bytes, length, encoded.frames + 1, encoded.frame_count - 1);
    }
    cm_wire_encoded_deinit(&encoded);
    return accepted;
}

START_TEST(test_random_headers_never_crash) {
    cm_rng_t rng;
    cm_rng_seed(&rng, 99);
    uint8_t bytes[256];
    for (int round = 0; round < 5000; round++) {
        size_t length = 1 + cm_rng_below(&rng, sizeof bytes);
        for (size_t i = 0; i < length; i++) bytes[i] = (uint8_t)cm_rng_u32(&rng);
        decode_anything(bytes, length, NULL, 0);
    }

    /* Mutations of valid replies reach deeper than noise: flip, overwrite, truncate.  Some edits
     * only touch ids or names; the valid path must still be reachable. */
    reply_data_t data;
    cm_wire_message_t message;
    batch_reply(&message, &data);
    ck_assert_int_gt(mutate_and_decode(&rng, &message), 0);
    float weight[HEAD_CLASSES * HEAD_INPUTS], bias[HEAD_CLASSES];
    head_values(weight, bias);
    head_reply(&message, weight, bias);
    ck_assert_int_gt(mutate_and_decode(&rng, &message), 0);
}
END_TEST

START_TEST(test_refuses_unknown_major_version) {
    proto_writer_t empty = {.length = 0}, header;
    put_envelope(&header, CM_WIRE_VERSION_MAJOR + 1, ENVELOPE_HEARTBEAT, &empty);
    expect_refused(&header, NULL, 0, CM_ERR_VERSION, "version 2.0");
    assert_error_mentions("speaks 1.");

    /* The caller learns the request id, to address its Error{VERSION}. */
    cm_wire_frame_t frame = {header.bytes, header.length};
    cm_wire_limits_t limits = cm_wire_limits_default();
    cm_wire_message_t message;
    ck_assert_int_eq(cm_wire_decode(&message, &frame, 1, &limits), CM_ERR_VERSION);
    ck_assert_uint_eq(message.request_id, 9);
    ck_assert_uint_eq(message.version_major, 2);

    put_envelope(&header, 0, ENVELOPE_HEARTBEAT, &empty);
    expect_refused(&header, NULL, 0, CM_ERR_VERSION, "version 0.0");

    /* A newer minor version is fine. */
    put_envelope(&header, CM_WIRE_VERSION_MAJOR, ENVELOPE_HEARTBEAT, &empty);
    put_uint(&header, 2, CM_WIRE_VERSION_MINOR + 5);
    frame = (cm_wire_frame_t){header.bytes, header.length};
    ck_assert_int_eq(cm_wire_decode(&message, &frame, 1, &limits), CM_OK);
    ck_assert_uint_eq(message.version_minor, CM_WIRE_VERSION_MINOR + 5);
    cm_wire_message_deinit(&message);
}
END_TEST

START_TEST(test_refuses_missing_body_and_garbage) {
    proto_writer_t header;
    put_envelope(&header, CM_WIRE_VERSION_MAJOR, 0, NULL);
    expect_refused(&header, NULL, 0, CM_ERR_FORMAT, "no body");

    proto_writer_t garbage = {.bytes = {0x0a, 0xff, 0x01}, .length = 3}; /* length past the end */
    expect_refused(&garbage, NULL, 0, CM_ERR_FORMAT, "malformed header");

    proto_writer_t empty = {.length = 0};
    expect_refused(&empty, NULL, 0, CM_ERR_FORMAT, "malformed header");

    cm_wire_limits_t limits = cm_wire_limits_default();
    cm_wire_message_t message;
    ck_assert_int_eq(cm_wire_decode(&message, NULL, 0, &limits), CM_ERR_FORMAT);
    assert_error_mentions("no header frame");
}
END_TEST

START_TEST(test_refuses_frame_count_mismatch) {
    reply_data_t data;
    cm_wire_message_t message, decoded;
    cm_wire_encoded_t encoded;
    batch_reply(&message, &data);
    ck_assert_int_eq(cm_wire_encode(&encoded, &message), CM_OK);
    cm_wire_limits_t limits = cm_wire_limits_default();

    ck_assert_int_eq(cm_wire_decode(&decoded, encoded.frames, 2, &limits), CM_ERR_FORMAT);
    assert_error_mentions("describes 3 tensors but 1 tensor frames followed");
    ck_assert_uint_eq(decoded.request_id, 77);

    cm_wire_frame_t frames[5];
    memcpy(frames, encoded.frames, sizeof(cm_wire_frame_t) * 4);
    frames[4] = encoded.frames[3];
    ck_assert_int_eq(cm_wire_decode(&decoded, frames, 5, &limits), CM_ERR_FORMAT);
    assert_error_mentions("describes 3 tensors but 4 tensor frames followed");

    /* Messages other than BatchReply carry no tensor frames at all. */
    cm_wire_message_t heartbeat;
    cm_wire_encoded_t heartbeat_encoded;
    cm_wire_message_init(&heartbeat, CM_WIRE_HEARTBEAT, 0);
    ck_assert_int_eq(cm_wire_encode(&heartbeat_encoded, &heartbeat), CM_OK);
    frames[0] = heartbeat_encoded.frames[0];
    ck_assert_int_eq(cm_wire_decode(&decoded, frames, 2, &limits), CM_ERR_FORMAT);
    assert_error_mentions("a Heartbeat carries no tensor frames, but 1 followed");
    cm_wire_encoded_deinit(&heartbeat_encoded);
    cm_wire_encoded_deinit(&encoded);
}
END_TEST

START_TEST(test_refuses_frame_length_mismatch) {
    reply_data_t data;
    cm_wire_message_t message, decoded;
    cm_wire_encoded_t encoded;
    batch_reply(&message, &data);
    ck_assert_int_eq(cm_wire_encode(&encoded, &message), CM_OK);
    cm_wire_limits_t limits = cm_wire_limits_default();
    cm_wire_frame_t frames[4];
    memcpy(frames, encoded.frames, sizeof frames);
    frames[2].bytes -= 1;
    ck_assert_int_eq(cm_wire_decode(&decoded, frames, 4, &limits), CM_ERR_FORMAT);
    assert_error_mentions("tensor 'hidden' promises 96 bytes but its frame has 95");
    cm_wire_encoded_deinit(&encoded);

    /* Descriptor and frame agree with each other but not with the shape: 2x3 F16 is 12 bytes. */
    uint64_t shape[2] = {2, 3};
    uint8_t bytes[16] = {0};
    proto_writer_t header;
    craft_reply(&header, 2, shape, 2, 12);
    cm_wire_frame_t tensor = {bytes, 12};
    ck_assert_int_eq(cm_wire_decode(&decoded,
                                    (cm_wire_frame_t[]){{header.bytes, header.length}, tensor}, 2,
                                    &limits),
                     CM_OK); /* the baseline is valid */
    ck_assert_int_eq(decoded.batch_reply.tensors[0].encoding, CM_DTYPE_F16);
    cm_wire_message_deinit(&decoded);

    craft_reply(&header, 2, shape, 2, 8);
    tensor.bytes = 8;
    expect_refused(&header, &tensor, 1, CM_ERR_FORMAT, "frame is 8 bytes but");
    assert_error_mentions("need 12");
    craft_reply(&header, 1, shape, 2, 12); /* the same bytes read as F32 need 24 */
    tensor.bytes = 12;
    expect_refused(&header, &tensor, 1, CM_ERR_FORMAT, "frame is 12 bytes");
    assert_error_mentions("need 24");
}
END_TEST

START_TEST(test_refuses_oversized_message) {
    reply_data_t data;
    cm_wire_message_t message, decoded;
    cm_wire_encoded_t encoded;
    batch_reply(&message, &data);
    ck_assert_int_eq(cm_wire_encode(&encoded, &message), CM_OK);
    size_t total = 0;
    for (int i = 0; i < encoded.frame_count; i++) total += encoded.frames[i].bytes;
    cm_wire_limits_t limits = cm_wire_limits_default();
    limits.max_message_bytes = total;
    ck_assert_int_eq(cm_wire_decode(&decoded, encoded.frames, encoded.frame_count, &limits), CM_OK);
    cm_wire_message_deinit(&decoded);
    limits.max_message_bytes = total - 1;
    ck_assert_int_eq(cm_wire_decode(&decoded, encoded.frames, encoded.frame_count, &limits),
                     CM_ERR_TOO_LARGE);
    assert_error_mentions("exceeds the limit");
    ck_assert_ptr_null(decoded.header);

    cm_wire_frame_t too_many[CM_WIRE_MAX_FRAMES + 1];
    for (int i = 0; i <= CM_WIRE_MAX_FRAMES; i++) too_many[i] = encoded.frames[0];
    limits = cm_wire_limits_default();
    ck_assert_int_eq(cm_wire_decode(&decoded, too_many, CM_WIRE_MAX_FRAMES + 1, &limits),
                     CM_ERR_TOO_LARGE);
    assert_error_mentions("18 frames");
    cm_wire_encoded_deinit(&encoded);
}
END_TEST

START_TEST(test_refuses_too_many_example_ids) {
    int32_t ids[5] = {0, 1, 2, 3, 4};
    cm_wire_message_t message, decoded;
    cm_wire_encoded_t encoded;
    cm_wire_message_init(&message, CM_WIRE_BATCH_REQUEST, 5);
    message.batch_request = (cm_wire_batch_request_t){.split = CM_SPLIT_TRAIN,
                                                      .example_count = 5,
                                                      .example_ids = ids,
                                                      .output_count = 1,
                                                      .outputs = {"logits"},
                                                      .encoding = CM_DTYPE_F32};
    ck_assert_int_eq(cm_wire_encode(&encoded, &message), CM_OK);
    cm_wire_limits_t limits = cm_wire_limits_default();
    limits.max_examples = 4;
    ck_assert_int_eq(cm_wire_decode(&decoded, encoded.frames, 1, &limits), CM_ERR_TOO_LARGE);
    assert_error_mentions("BatchRequest has 5 example ids; this peer accepts at most 4");
    ck_assert_uint_eq(decoded.request_id, 5);
    limits.max_examples = 5;
    ck_assert_int_eq(cm_wire_decode(&decoded, encoded.frames, 1, &limits), CM_OK);
    cm_wire_message_deinit(&decoded);
    cm_wire_encoded_deinit(&encoded);
}
END_TEST

START_TEST(test_refuses_ids_out_of_range) {
    int32_t ids[4] = {0, 5, 9, 10};
    ck_assert_int_eq(cm_wire_check_ids(ids, 3, 10), CM_OK);
    ck_assert_int_eq(cm_wire_check_ids(ids, 4, 10), CM_ERR_OUT_OF_RANGE);
    assert_error_mentions("example id 10 (position 3)");
    assert_error_mentions("10 examples");
    int32_t negative[2] = {3, -1};
    ck_assert_int_eq(cm_wire_check_ids(negative, 2, 10), CM_ERR_OUT_OF_RANGE);
    assert_error_mentions("example id -1 (position 1)");
    ck_assert_int_eq(cm_wire_check_ids(NULL, 0, 10), CM_OK);

    /* A negative id on the wire is refused by the decoder itself. */
    proto_writer_t request = {.length = 0}, header;
    uint64_t wire_ids[2] = {3, (uint64_t)(int64_t)-7};
    put_uint(&request, REQUEST_SPLIT, 1);
    put_packed(&request, REQUEST_IDS, wire_ids, 2);
    put_string(&request, REQUEST_OUTPUTS, "logits");
    put_uint(&request, REQUEST_ENCODING, 1);
    put_envelope(&header, CM_WIRE_VERSION_MAJOR, ENVELOPE_BATCH_REQUEST, &request);
    expect_refused(&header, NULL, 0, CM_ERR_OUT_OF_RANGE, "example id -7 (position 1)");
}
END_TEST

START_TEST(test_refuses_absurd_shapes) {
    uint8_t bytes[8] = {0};
    cm_wire_frame_t tensor = {bytes, 8};
    proto_writer_t header;

    uint64_t overflow[3] = {2, 1ull << 40, 1ull << 40};
    craft_reply(&header, 1, overflow, 3, 8);
    expect_refused(&header, &tensor, 1, CM_ERR_TOO_LARGE, "more bytes than 64 bits");

    uint64_t huge[2] = {2, 1ull << 30}; /* 8 GiB of F32, no overflow, but over the limit */
    craft_reply(&header, 1, huge, 2, 8);
    expect_refused(&header, &tensor, 1, CM_ERR_TOO_LARGE, "message limit");

    uint64_t beyond_int64[2] = {2, UINT64_MAX};
    craft_reply(&header, 1, beyond_int64, 2, 8);
    expect_refused(&header, &tensor, 1, CM_ERR_TOO_LARGE, "beyond any message");

    uint64_t zero[2] = {2, 0};
    craft_reply(&header, 1, zero, 2, 8);
    expect_refused(&header, &tensor, 1, CM_ERR_FORMAT, "dimension 1 of tensor 'logits' is 0");

    uint64_t many[9] = {2, 1, 1, 1, 1, 1, 1, 1, 1};
    craft_reply(&header, 1, many, 9, 8);
    expect_refused(&header, &tensor, 1, CM_ERR_FORMAT, "9 dimensions");

    craft_reply(&header, 1, many, 0, 8);
    expect_refused(&header, &tensor, 1, CM_ERR_FORMAT, "0 dimensions");

    uint64_t rows[2] = {3, 1}; /* the reply answers 2 examples */
    uint8_t twelve[12] = {0};
    craft_reply(&header, 1, rows, 2, 12);
    expect_refused(&header, &(cm_wire_frame_t){twelve, 12}, 1, CM_ERR_SHAPE, "3 rows");
}
END_TEST

START_TEST(test_refuses_unknown_encoding) {
    uint8_t bytes[8] = {0};
    cm_wire_frame_t tensor = {bytes, 8};
    uint64_t shape[2] = {2, 1};
    proto_writer_t header;
    craft_reply(&header, 9, shape, 2, 8);
    expect_refused(&header, &tensor, 1, CM_ERR_FORMAT, "tensor 'logits' has unknown encoding 9");
    craft_reply(&header, 0, shape, 2, 8);
    expect_refused(&header, &tensor, 1, CM_ERR_FORMAT, "unknown encoding 0");
    craft_reply(&header, 4, shape, 2, 8); /* I32 bytes for an F32 tensor */
    expect_refused(&header, &tensor, 1, CM_ERR_FORMAT, "dtype F32 cannot travel as I32");

    proto_writer_t request = {.length = 0};
    uint64_t ids[1] = {3};
    put_uint(&request, REQUEST_SPLIT, 2);
    put_packed(&request, REQUEST_IDS, ids, 1);
    put_string(&request, REQUEST_OUTPUTS, "logits");
    put_uint(&request, REQUEST_ENCODING, 77);
    put_envelope(&header, CM_WIRE_VERSION_MAJOR, ENVELOPE_BATCH_REQUEST, &request);
    expect_refused(&header, NULL, 0, CM_ERR_FORMAT, "unknown encoding 77");

    request.length = 0;
    put_uint(&request, REQUEST_SPLIT, 5); /* 3 and 4 are valid and transfer since minor 2 */
    put_packed(&request, REQUEST_IDS, ids, 1);
    put_envelope(&header, CM_WIRE_VERSION_MAJOR, ENVELOPE_BATCH_REQUEST, &request);
    expect_refused(&header, NULL, 0, CM_ERR_FORMAT, "split has unknown value 5");
}
END_TEST

/* Decodes a hand-made HeadReply of `tensors` followed by `frame_count` frames of the given sizes
 * (zeros), expecting failure with `want` and a sentence mentioning `mention`. */
static void expect_head_refused(uint64_t kind, const head_tensor_t *tensors, int tensor_count,
                                const size_t *frame_bytes, int frame_count, cm_status_t want,
                                const char *mention) {
    static uint8_t zeros[256];
    proto_writer_t header;
    craft_head_reply(&header, kind, tensors, tensor_count);
    cm_wire_frame_t frames[CM_WIRE_MAX_TENSORS];
    for (int i = 0; i < frame_count; i++) {
        ck_assert_uint_le(frame_bytes[i], sizeof zeros);
        frames[i] = (cm_wire_frame_t){zeros, frame_bytes[i]};
    }
    expect_refused(&header, frames, frame_count, want, mention);
}

START_TEST(test_refuses_bad_head_replies) {
    head_tensor_t valid[2], tensors[3];
    valid_head_tensors(valid);
    const size_t sizes[3] = {60, 12, 12};
    cm_wire_limits_t limits = cm_wire_limits_default();
    cm_wire_message_t message;

    /* The baseline decodes: every refusal below is about the one thing it breaks. */
    proto_writer_t header;
    craft_head_reply(&header, 1, valid, 2);
    uint8_t zeros[60] = {0};
    cm_wire_frame_t frames[3] = {{header.bytes, header.length}, {zeros, 60}, {zeros, 12}};
    ck_assert_msg(cm_wire_decode(&message, frames, 3, &limits) == CM_OK, "%s", cm_last_error());
    cm_wire_message_deinit(&message);

    /* Head kinds this side does not know. */
    expect_head_refused(0, valid, 2, sizes, 2, CM_ERR_FORMAT, "unsupported head kind 0");
    expect_head_refused(2, valid, 2, sizes, 2, CM_ERR_FORMAT, "unsupported head kind 2");

    /* One tensor, three tensors, and frames that do not match the descriptors. */
    expect_head_refused(1, valid, 1, sizes, 1, CM_ERR_FORMAT, "describes 1 tensors");
    memcpy(tensors, valid, sizeof valid);
    tensors[2] = valid[1];
    expect_head_refused(1, tensors, 3, sizes, 3, CM_ERR_FORMAT, "describes 3 tensors");
    expect_head_refused(1, valid, 2, sizes, 1, CM_ERR_FORMAT,
                        "HeadReply describes 2 tensors but 1 tensor frames followed");
    expect_head_refused(1, valid, 2, sizes, 3, CM_ERR_FORMAT, "but 3 tensor frames followed");

    /* Names: weight then bias, nothing else. */
    tensors[0] = valid[1];
    tensors[1] = valid[0];
    expect_head_refused(1, tensors, 2, sizes, 2, CM_ERR_FORMAT,
                        "tensor 0 of the HeadReply for 'hidden' is named 'bias'");
    memcpy(tensors, valid, sizeof valid);
    tensors[1].name = "offset";
    expect_head_refused(1, tensors, 2, sizes, 2, CM_ERR_FORMAT, "is named 'offset'");

    /* Shapes: the bias must have one entry per class; the weight two dimensions. */
    memcpy(tensors, valid, sizeof valid);
    tensors[1].shape[0] = 4;
    tensors[1].byte_length = 16;
    expect_head_refused(1, tensors, 2, (const size_t[]){60, 16}, 2, CM_ERR_SHAPE,
                        "weight for 3 classes but a bias for 4");
    memcpy(tensors, valid, sizeof valid);
    tensors[0] = (head_tensor_t){"weight", 1, 1, 0, 1, {15}, 60};
    expect_head_refused(1, tensors, 2, sizes, 2, CM_ERR_SHAPE,
                        "tensor 'weight' has 1 dimensions; it needs 2");
    memcpy(tensors, valid, sizeof valid);
    tensors[1].ndim = 0;
    expect_head_refused(1, tensors, 2, sizes, 2, CM_ERR_SHAPE,
                        "tensor 'bias' has 0 dimensions; it needs 1");
    memcpy(tensors, valid, sizeof valid);
    tensors[0].shape[0] = 0;
    tensors[0].byte_length = 0;
    expect_head_refused(1, tensors, 2, (const size_t[]){0, 12}, 2, CM_ERR_FORMAT,
                        "dimension 0 of HeadReply tensor 'weight' is 0");

    /* Frames one byte short or long of what the descriptor promises, or both agreeing with each
     * other but not with the shape. */
    expect_head_refused(1, valid, 2, (const size_t[]){59, 12}, 2, CM_ERR_FORMAT,
                        "'weight' promises 60 bytes and its frame has 59");
    expect_head_refused(1, valid, 2, (const size_t[]){60, 13}, 2, CM_ERR_FORMAT,
                        "'bias' promises 12 bytes and its frame has 13");
    memcpy(tensors, valid, sizeof valid);
    tensors[0].byte_length = 56;
    expect_head_refused(1, tensors, 2, (const size_t[]){56, 12}, 2, CM_ERR_FORMAT,
                        "its shape needs 60");

    /* Only dense F32 travels: not I32 values, not F16 encoding, not a top-k layout. */
    memcpy(tensors, valid, sizeof valid);
    tensors[0].dtype = 2;
    tensors[0].encoding = 4;
    expect_head_refused(1, tensors, 2, sizes, 2, CM_ERR_FORMAT,
                        "tensor 'weight' is I32 encoded as I32");
    memcpy(tensors, valid, sizeof valid);
    tensors[1].encoding = 2;
    tensors[1].byte_length = 6;
    expect_head_refused(1, tensors, 2, (const size_t[]){60, 6}, 2, CM_ERR_FORMAT,
                        "tensor 'bias' is F32 encoded as F16");
    memcpy(tensors, valid, sizeof valid);
    tensors[0].layout = 1;
    expect_head_refused(1, tensors, 2, sizes, 2, CM_ERR_FORMAT, "in layout 1");
    memcpy(tensors, valid, sizeof valid);
    tensors[0].dtype = 0;
    expect_head_refused(1, tensors, 2, sizes, 2, CM_ERR_FORMAT, "'weight' has unknown dtype 0");

    /* Too large: past the message limit, past 64 bits, past an int. */
    memcpy(tensors, valid, sizeof valid);
    tensors[0].shape[1] = 1ull << 30; /* 12 GiB of weights behind a 60-byte frame */
    expect_head_refused(1, tensors, 2, sizes, 2, CM_ERR_TOO_LARGE, "-byte message limit");
    tensors[0].shape[0] = tensors[0].shape[1] = 1ull << 40;
    expect_head_refused(1, tensors, 2, sizes, 2, CM_ERR_TOO_LARGE, "more bytes than 64 bits");
    tensors[0].shape[1] = UINT64_MAX;
    expect_head_refused(1, tensors, 2, sizes, 2, CM_ERR_TOO_LARGE, "beyond any message");
    /* 2^31 inputs: an 8 GiB frame that a receiver with no limit would take (never read here),
     * but no int counts its columns. */
    craft_head_reply(&header, 1,
                     (head_tensor_t[]){{"weight", 1, 1, 0, 2, {1, 1ull << 31}, 8ull << 30},
                                       {"bias", 1, 1, 0, 1, {1}, 4}},
                     2);
    cm_wire_frame_t huge[3] = {{header.bytes, header.length}, {zeros, 8ull << 30}, {zeros, 4}};
    limits.max_message_bytes = UINT64_MAX;
    ck_assert_int_eq(cm_wire_decode(&message, huge, 3, &limits), CM_ERR_TOO_LARGE);
    assert_error_mentions("weight of 1 x 2147483648; each dimension must fit in an int");
    ck_assert_ptr_null(message.header);
}
END_TEST

Suite *check_wire_suite(void);
Suite *check_wire_suite(void) {
    Suite *suite = suite_create("wire");
    TCase *round_trips = tcase_create("round_trip");
    tcase_add_test(round_trips, test_hello_round_trip);
    tcase_add_test(round_trips, test_batch_request_round_trip);
    tcase_add_test(round_trips, test_batch_reply_round_trip);
    tcase_add_test(round_trips, test_small_messages_round_trip);
    tcase_add_test(round_trips, test_error_code_names_on_the_wire);
    tcase_add_test(round_trips, test_pack_header_into_caller_buffer);
    tcase_add_test(round_trips, test_encode_refuses_bad_messages);
    tcase_add_test(round_trips, test_hello_heads_round_trip);
    tcase_add_test(round_trips, test_minor_version_0_hello_has_no_heads);
    tcase_add_test(round_trips, test_hello_splits_and_new_splits_round_trip);
    tcase_add_test(round_trips, test_head_request_round_trip);
    tcase_add_test(round_trips, test_head_reply_round_trip);
    suite_add_tcase(suite, round_trips);

    TCase *conversions = tcase_create("f16_bf16");
    tcase_add_test(conversions, test_f16_exact_values);
    tcase_add_test(conversions, test_f16_every_half_round_trips);
    tcase_add_test(conversions, test_f16_matches_compiler);
    tcase_add_test(conversions, test_bf16_exact_values);
    tcase_add_test(conversions, test_relative_error_on_logits);
    suite_add_tcase(suite, conversions);

    TCase *refusals = tcase_create("refusals");
    tcase_set_timeout(refusals, 20); /* the fuzz loop under ASan */
    tcase_add_test(refusals, test_random_headers_never_crash);
    tcase_add_test(refusals, test_refuses_unknown_major_version);
    tcase_add_test(refusals, test_refuses_missing_body_and_garbage);
    tcase_add_test(refusals, test_refuses_frame_count_mismatch);
    tcase_add_test(refusals, test_refuses_frame_length_mismatch);
    tcase_add_test(refusals, test_refuses_oversized_message);
    tcase_add_test(refusals, test_refuses_too_many_example_ids);
    tcase_add_test(refusals, test_refuses_ids_out_of_range);
    tcase_add_test(refusals, test_refuses_absurd_shapes);
    tcase_add_test(refusals, test_refuses_unknown_encoding);
    tcase_add_test(refusals, test_refuses_bad_head_replies);
    suite_add_tcase(suite, refusals);
    return suite;
}
