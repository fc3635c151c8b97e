/*
 * cm_wire: packs cm_wire_message_t into protobuf headers plus raw tensor
 * frames and back.  The only file that includes the generated protobuf-c
 * code (build/gen/committee.pb-c.h).
 *
 * Both directions go through one checker, check_message(), on the plain C
 * struct: a message this side would refuse is never sent, and the rules live
 * in one place.  Decoding first turns the protobuf header into the C struct
 * (refusing what cannot be represented: unknown enum values, too many
 * entries, dimensions beyond int64) and then runs the same checker with the
 * receiver's limits and the received frames attached.  Decoded strings and
 * arrays point into the unpacked header, which the message keeps until
 * cm_wire_message_deinit(); nothing is copied.
 *
 * Packing builds the protobuf structs on the stack from the C struct
 * (pointing at the caller's strings and arrays, never copying them), so
 * cm_wire_pack_header() allocates nothing.  protobuf-c's structs are not
 * const-correct; the casts that drop const below feed pack(), which only
 * reads.
 */
#include "cm_wire.h"

#include "committee.pb-c.h"

#include <inttypes.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
               "tensor frames are little-endian and cm_wire does not swap bytes");

/* ------------------------------------------------------------------------ */
/* half and bfloat16                                                        */

static uint32_t float_bits(float value) {
    uint32_t bits;
    memcpy(&bits, &value, sizeof bits);
    return bits;
}

static float bits_float(uint32_t bits) {
    float value;
    memcpy(&value, &bits, sizeof value);
    return value;
}

/* Rounds `kept` up when the dropped bits `rest` are above half of `unit`, or exactly half and
 * `kept` is odd: round to nearest, ties to even. */
static uint32_t round_nearest_even(uint32_t kept, uint32_t rest, uint32_t unit) {
    uint32_t halfway = unit >> 1;
    return kept + (rest > halfway || (rest == halfway && (kept & 1u)));
}

static uint16_t f32_to_f16(float value) {
    uint32_t bits = float_bits(value);
    uint32_t sign = (bits >> 16) & 0x8000u;
    uint32_t magnitude = bits & 0x7fffffffu;
    if (magnitude > 0x7f800000u) /* NaN: quiet, keeping the top of the payload */
        return (uint16_t)(sign | 0x7e00u | ((magnitude >> 13) & 0x03ffu));
    if (magnitude >= 0x477ff000u) /* 65520 and above round past 65504, the largest half */
        return (uint16_t)(sign | 0x7c00u);
    if (magnitude >= 0x38800000u) { /* normal half: rebias the exponent from 127 to 15 */
        uint32_t kept = (magnitude - 0x38000000u) >> 13;
        return (uint16_t)(sign | round_nearest_even(kept, magnitude & 0x1fffu, 0x2000u));
    }
    if (magnitude <= 0x33000000u) /* at most 2^-25, half the smallest subnormal: zero */
        return (uint16_t)sign;
    /* Subnormal half: value = count * 2^-24 with count = significand * 2^(exponent - 126). */
    uint32_t exponent = magnitude >> 23; /* 102 .. 112 here */
    uint32_t significand = (magnitude & 0x007fffffu) | 0x00800000u;
    uint32_t shift = 126u - exponent; /* 14 .. 24 */
    uint32_t kept = significand >> shift;
    uint32_t rest = significand & ((1u << shift) - 1u);
    return (uint16_t)(sign | round_nearest_even(kept, rest, 1u << shift));
}

static float f16_to_f32(uint16_t half) {
    uint32_t sign = (uint32_t)(half & 0x8000u) << 16;
    uint32_t exponent = (half >> 10) & 0x1fu;
    uint32_t mantissa = half & 0x03ffu;
    if (exponent == 0x1f) return bits_float(sign | 0x7f800000u | (mantissa << 13));
    if (exponent != 0) return bits_float(sign | ((exponent + 112u) << 23) | (mantissa << 13));
    float magnitude = (float)mantissa * 0x1p-24f; /* zero or subnormal, exact in float */
    return bits_float(sign | float_bits(magnitude));
}

static uint16_t f32_to_bf16(float value) {
    uint32_t bits = float_bits(value);
    if ((bits & 0x7fffffffu) > 0x7f800000u) /* NaN: truncation could turn it into inf */
        return (uint16_t)((bits >> 16) | 0x0040u);
    return (uint16_t)(round_nearest_even(bits >> 16, bits & 0xffffu, 0x10000u));
}

/* Received frames may sit at any address, so halves are read and written with memcpy. */
static uint16_t load_half(const void *in, size_t index) {
    uint16_t half;
    memcpy(&half, (const unsigned char *)in + 2 * index, sizeof half);
    return half;
}

static void store_half(void *out, size_t index, uint16_t half) {
    memcpy((unsigned char *)out + 2 * index, &half, sizeof half);
}

static float load_float(const void *in, size_t index) {
    float value;
    memcpy(&value, (const unsigned char *)in + 4 * index, sizeof value);
    return value;
}

void cm_wire_f32_to_f16(void *out, const void *in, size_t count) {
    for (size_t i = 0; i < count; i++) store_half(out, i, f32_to_f16(load_float(in, i)));
}

void cm_wire_f16_to_f32(float *out, const void *in, size_t count) {
    for (size_t i = 0; i < count; i++) out[i] = f16_to_f32(load_half(in, i));
}

void cm_wire_f32_to_bf16(void *out, const void *in, size_t count) {
    for (size_t i = 0; i < count; i++) store_half(out, i, f32_to_bf16(load_float(in, i)));
}

void cm_wire_bf16_to_f32(float *out, const void *in, size_t count) {
    for (size_t i = 0; i < count; i++) out[i] = bits_float((uint32_t)load_half(in, i) << 16);
}

/* ------------------------------------------------------------------------ */
/* Lifecycle                                                                */

void cm_wire_message_init(cm_wire_message_t *message, cm_wire_kind_t kind, uint64_t request_id) {
    memset(message, 0, sizeof *message);
    message->kind = kind;
    message->version_major = CM_WIRE_VERSION_MAJOR;
    message->version_minor = CM_WIRE_VERSION_MINOR;
    message->request_id = request_id;
}

void cm_wire_message_error(cm_wire_message_t *message, uint64_t request_id, cm_status_t code,
                           const char *sentence) {
    cm_wire_message_init(message, CM_WIRE_ERROR, request_id);
    message->error.code = code;
    message->error.message = sentence ? sentence : cm_status_str(code);
}

void cm_wire_message_deinit(cm_wire_message_t *message) {
    if (message->header)
        committee__v1__envelope__free_unpacked((Committee__V1__Envelope *)message->header, NULL);
    memset(message, 0, sizeof *message);
}

void cm_wire_encoded_deinit(cm_wire_encoded_t *encoded) {
    free(encoded->header);
    memset(encoded, 0, sizeof *encoded);
}

cm_wire_limits_t cm_wire_limits_default(void) {
    return (cm_wire_limits_t){
        .max_examples = 4096, .max_message_bytes = 64u << 20, .max_in_flight = 8};
}

/* ------------------------------------------------------------------------ */
/* Checks on the plain struct, shared by sending and receiving              */

static const char *const kind_names[CM_WIRE_KIND_COUNT] = {
    [CM_WIRE_HELLO] = "Hello",
    [CM_WIRE_BATCH_REQUEST] = "BatchRequest",
    [CM_WIRE_BATCH_REPLY] = "BatchReply",
    [CM_WIRE_HEARTBEAT] = "Heartbeat",
    [CM_WIRE_ERROR] = "Error",
    [CM_WIRE_BYE] = "Bye",
    [CM_WIRE_HEAD_REQUEST] = "HeadRequest",
    [CM_WIRE_HEAD_REPLY] = "HeadReply",
};

/* The tensors of a dense HeadReply, in their order on the wire. */
enum { HEAD_WEIGHT, HEAD_BIAS, HEAD_TENSORS };
static const char *const head_tensor_names[HEAD_TENSORS] = {"weight", "bias"};

static const char *text(const char *value) { return value ? value : ""; }

/* `field` of `owner` must be at most CM_WIRE_MAX_STRING bytes, and not empty if required. */
static cm_status_t check_string(const char *owner, const char *field, const char *value,
                                bool required) {
    size_t length = strnlen(text(value), CM_WIRE_MAX_STRING + 1);
    if (length > CM_WIRE_MAX_STRING)
        return cm_fail(CM_ERR_TOO_LARGE, "%s field %s is longer than %d bytes", owner, field,
                       CM_WIRE_MAX_STRING);
    if (required && length == 0)
        return cm_fail(CM_ERR_FORMAT, "%s field %s is empty", owner, field);
    return CM_OK;
}

/* A SHA-256 in the one spelling peers compare byte for byte: 64 lowercase hex digits. */
static cm_status_t check_sha256(const char *owner, const char *field, const char *value) {
    const char *digits = text(value);
    size_t length = strnlen(digits, 65);
    bool hex = length == 64;
    for (size_t i = 0; hex && i < length; i++)
        hex = (digits[i] >= '0' && digits[i] <= '9') || (digits[i] >= 'a' && digits[i] <= 'f');
    if (!hex)
        return cm_fail(CM_ERR_FORMAT, "%s field %s is \"%.70s\", not 64 lowercase hex digits",
                       owner, field, digits);
    return CM_OK;
}

static void format_shape(char *out, size_t capacity, int ndim, const int64_t *shape) {
    size_t used = (size_t)snprintf(out, capacity, "[");
    for (int dim = 0; dim < ndim && used < capacity; dim++)
        used += (size_t)snprintf(out + used, capacity - used, "%s%" PRId64, dim ? ", " : "",
                                 shape[dim]);
    if (used < capacity) snprintf(out + used, capacity - used, "]");
}

/*
 * Checks that `what` `name` has 1..CM_TENSOR_MAX_DIMS dimensions of at least 1 and that
 * its `element_bytes`-byte elements need at most max_bytes bytes, stored in *bytes.
 */
static cm_status_t check_shape(const char *what, const char *name, int ndim, const int64_t *shape,
                               size_t element_bytes, uint64_t max_bytes, uint64_t *bytes) {
    if (ndim < 1 || ndim > CM_TENSOR_MAX_DIMS)
        return cm_fail(CM_ERR_FORMAT, "%s '%s' has %d dimensions; it needs 1 to %d", what, name,
                       ndim, CM_TENSOR_MAX_DIMS);
    uint64_t total = element_bytes;
    bool overflow = false;
    for (int dim = 0; dim < ndim; dim++) {
        if (shape[dim] < 1)
            return cm_fail(CM_ERR_FORMAT,
                           "dimension %d of %s '%s' is %" PRId64 "; every dimension must be >= 1",
                           dim, what, name, shape[dim]);
        overflow = overflow || __builtin_mul_overflow(total, (uint64_t)shape[dim], &total);
    }
    char shape_text[256];
    format_shape(shape_text, sizeof shape_text, ndim, shape);
    if (overflow)
        return cm_fail(CM_ERR_TOO_LARGE, "%s '%s' of shape %s has more bytes than 64 bits count",
                       what, name, shape_text);
    if (total > max_bytes)
        return cm_fail(CM_ERR_TOO_LARGE,
                       "%s '%s' of shape %s needs %" PRIu64 " bytes, more than the %" PRIu64
                       "-byte message limit",
                       what, name, shape_text, total, max_bytes);
    *bytes = total;
    return CM_OK;
}

static cm_status_t check_limits(const cm_wire_limits_t *limits) {
    if (limits->max_examples < 1 || limits->max_message_bytes < 1 || limits->max_in_flight < 1)
        return cm_fail(CM_ERR_FORMAT,
                       "Hello limits must all be at least 1 (max_examples %" PRIu32
                       ", max_message_bytes %" PRIu64 ", max_in_flight %" PRIu32 ")",
                       limits->max_examples, limits->max_message_bytes, limits->max_in_flight);
    return CM_OK;
}

static int same_on_the_wire(const char *a, const char *b);

/* Refuses a name that appears twice in names[0 .. count); `what` is "output" or "head". */
static cm_status_t check_unique(const char *owner, const char *what, const char *const *names,
                                int count) {
    for (int i = 0; i < count; i++)
        for (int j = 0; j < i; j++)
            if (same_on_the_wire(text(names[i]), text(names[j])))
                return cm_fail(CM_ERR_FORMAT, "%s names %s '%s' twice", owner, what,
                               text(names[i]));
    return CM_OK;
}

/* The features a Hello lends heads for: distinct names of its own outputs. */
static cm_status_t check_heads(const cm_wire_hello_t *hello, const char *const *output_names) {
    cm_status_t status;
    if (hello->head_count < 0 || hello->head_count > CM_WIRE_MAX_OUTPUTS)
        return cm_fail(CM_ERR_FORMAT, "Hello lists %d heads; at most %d are allowed",
                       hello->head_count, CM_WIRE_MAX_OUTPUTS);
    for (int i = 0; i < hello->head_count; i++) {
        if ((status = check_string("Hello", "heads", hello->heads[i], true))) return status;
        bool is_output = false;
        for (int output = 0; output < hello->output_count && !is_output; output++)
            is_output = strcmp(hello->heads[i], text(output_names[output])) == 0;
        if (!is_output)
            return cm_fail(CM_ERR_FORMAT,
                           "Hello lends a head for '%s', which is not one of the outputs it lists",
                           hello->heads[i]);
    }
    return check_unique("Hello", "head", hello->heads, hello->head_count);
}

static cm_status_t check_hello(const cm_wire_hello_t *hello, uint64_t max_bytes) {
    cm_status_t status;
    bool teacher = hello->peer == CM_WIRE_PEER_TEACHER;
    if (!teacher && hello->peer != CM_WIRE_PEER_TRAINER)
        return cm_fail(CM_ERR_FORMAT, "Hello field peer_kind is %d; expected teacher or trainer",
                       (int)hello->peer);
    if ((status = check_string("Hello", "peer_name", hello->peer_name, true)) ||
        (status = check_string("Hello", "model_id", hello->model_id, teacher)) ||
        (status = check_string("Hello", "view", hello->view, teacher)) ||
        (status = check_string("Hello", "dataset_name", hello->dataset_name, teacher)))
        return status;
    /* A trainer may not know the dataset yet (a debugging client); a teacher always does. */
    if ((teacher || text(hello->dataset_fingerprint)[0]) &&
        (status = check_sha256("Hello", "dataset_fingerprint", hello->dataset_fingerprint)))
        return status;
    if ((teacher || text(hello->model_sha256)[0]) &&
        (status = check_sha256("Hello", "model_sha256", hello->model_sha256)))
        return status;
    if (teacher
            ? hello->role != CM_WIRE_ROLE_FOUNDATION && hello->role != CM_WIRE_ROLE_COMPLEMENTARY
            : hello->role != CM_WIRE_ROLE_NONE)
        return cm_fail(CM_ERR_FORMAT,
                       "Hello field role is %d; a teacher is foundation or complementary, a "
                       "trainer has none",
                       (int)hello->role);
    if (hello->classes < (teacher ? 1 : 0))
        return cm_fail(CM_ERR_FORMAT, "Hello field classes is %d; it must be >= %d", hello->classes,
                       teacher ? 1 : 0);
    if (hello->output_count < (teacher ? 1 : 0) || hello->output_count > CM_WIRE_MAX_OUTPUTS)
        return cm_fail(CM_ERR_FORMAT, "Hello lists %d outputs; a %s lists %d to %d",
                       hello->output_count, teacher ? "teacher" : "trainer", teacher ? 1 : 0,
                       CM_WIRE_MAX_OUTPUTS);
    const char *names[CM_WIRE_MAX_OUTPUTS];
    for (int i = 0; i < hello->output_count; i++) {
        const cm_wire_output_t *output = &hello->outputs[i];
        uint64_t bytes;
        names[i] = output->name;
        if ((status = check_string("Hello output", "name", output->name, true))) return status;
        if (output->dtype != CM_DTYPE_F32 && output->dtype != CM_DTYPE_I32)
            return cm_fail(CM_ERR_FORMAT, "Hello output '%s' has dtype %s; expected F32 or I32",
                           output->name, cm_dtype_name(output->dtype));
        if ((status = check_shape("Hello output", output->name, output->ndim, output->shape,
                                  cm_dtype_size(output->dtype), max_bytes, &bytes)))
            return status;
    }
    if ((status = check_unique("Hello", "output", names, hello->output_count)) ||
        (status = check_heads(hello, names)))
        return status;
    if (hello->split_count < 0 || hello->split_count > CM_SPLIT_COUNT)
        return cm_fail(CM_ERR_FORMAT, "Hello lists %d splits; at most %d are allowed",
                       hello->split_count, CM_SPLIT_COUNT);
    for (int i = 0; i < hello->split_count; i++) {
        if ((unsigned)hello->splits[i] >= CM_SPLIT_COUNT)
            return cm_fail(CM_ERR_FORMAT, "Hello lists split %d, which is not a split",
                           (int)hello->splits[i]);
        for (int j = 0; j < i; j++)
            if (hello->splits[j] == hello->splits[i])
                return cm_fail(CM_ERR_FORMAT, "Hello lists split '%s' twice",
                               cm_split_name(hello->splits[i]));
    }
    return check_limits(&hello->limits);
}

static cm_status_t check_example_ids(const char *owner, const int32_t *ids, int count,
                                     const cm_wire_limits_t *limits) {
    if (count < 1) return cm_fail(CM_ERR_FORMAT, "%s has no example ids", owner);
    if (limits && (uint64_t)count > limits->max_examples)
        return cm_fail(CM_ERR_TOO_LARGE,
                       "%s has %d example ids; this peer accepts at most %" PRIu32, owner, count,
                       limits->max_examples);
    if (!ids)
        return cm_fail(CM_ERR_INVALID_ARG, "%s has %d example ids but no array", owner, count);
    for (int i = 0; i < count; i++)
        if (ids[i] < 0)
            return cm_fail(CM_ERR_OUT_OF_RANGE,
                           "example id %" PRId32 " (position %d) of %s is negative", ids[i], i,
                           owner);
    return CM_OK;
}

static cm_status_t check_batch_request(const cm_wire_batch_request_t *request,
                                       const cm_wire_limits_t *limits) {
    cm_status_t status;
    if ((unsigned)request->split >= CM_SPLIT_COUNT)
        return cm_fail(CM_ERR_FORMAT,
                       "BatchRequest field split is %d; expected train, test, valid or transfer",
                       (int)request->split);
    if ((status = check_example_ids("BatchRequest", request->example_ids, request->example_count,
                                    limits)))
        return status;
    if (request->output_count < 1 || request->output_count > CM_WIRE_MAX_OUTPUTS)
        return cm_fail(CM_ERR_FORMAT, "BatchRequest names %d outputs; it must name 1 to %d",
                       request->output_count, CM_WIRE_MAX_OUTPUTS);
    for (int i = 0; i < request->output_count; i++)
        if ((status = check_string("BatchRequest", "outputs", request->outputs[i], true)))
            return status;
    if ((status = check_unique("BatchRequest", "output", request->outputs, request->output_count)))
        return status;
    if (request->encoding != CM_DTYPE_F32 && request->encoding != CM_DTYPE_F16 &&
        request->encoding != CM_DTYPE_BF16)
        return cm_fail(CM_ERR_FORMAT,
                       "BatchRequest field encoding is %s; expected F32, F16 or BF16",
                       cm_dtype_name(request->encoding));
    if (request->top_k < 0)
        return cm_fail(CM_ERR_FORMAT, "BatchRequest field top_k is %d; it must be >= 0",
                       request->top_k);
    return CM_OK;
}

/* The dtype a layout requires, or CM_DTYPE_COUNT when any dtype goes. */
static cm_dtype_t layout_dtype(cm_wire_layout_t layout) {
    if (layout == CM_WIRE_TOPK_INDICES) return CM_DTYPE_I32;
    if (layout == CM_WIRE_TOPK_VALUES || layout == CM_WIRE_TAIL_MASS) return CM_DTYPE_F32;
    return CM_DTYPE_COUNT;
}

static cm_status_t check_tensor(const cm_wire_tensor_t *tensor, int example_count,
                                uint64_t max_bytes) {
    cm_status_t status;
    if ((status = check_string("BatchReply tensor", "name", tensor->name, true))) return status;
    const char *name = tensor->name;
    bool float_tensor = tensor->dtype == CM_DTYPE_F32;
    if (!float_tensor && tensor->dtype != CM_DTYPE_I32)
        return cm_fail(CM_ERR_FORMAT, "tensor '%s' has dtype %s; expected F32 or I32", name,
                       cm_dtype_name(tensor->dtype));
    bool encoding_fits = float_tensor ? tensor->encoding == CM_DTYPE_F32 ||
                                            tensor->encoding == CM_DTYPE_F16 ||
                                            tensor->encoding == CM_DTYPE_BF16
                                      : tensor->encoding == CM_DTYPE_I32;
    if (!encoding_fits)
        return cm_fail(CM_ERR_FORMAT, "tensor '%s' of dtype %s cannot travel as %s", name,
                       cm_dtype_name(tensor->dtype), cm_dtype_name(tensor->encoding));
    if ((unsigned)tensor->layout >= CM_WIRE_LAYOUT_COUNT)
        return cm_fail(CM_ERR_FORMAT, "tensor '%s' has unknown layout %d", name,
                       (int)tensor->layout);
    cm_dtype_t required = layout_dtype(tensor->layout);
    if (required != CM_DTYPE_COUNT && tensor->dtype != required)
        return cm_fail(CM_ERR_FORMAT, "tensor '%s' is a top-k part (layout %d) and must be %s",
                       name, (int)tensor->layout, cm_dtype_name(required));
    int required_ndim = tensor->layout == CM_WIRE_TAIL_MASS ? 1
                        : tensor->layout == CM_WIRE_DENSE   ? 0
                                                            : 2;
    if (required_ndim && tensor->ndim != required_ndim)
        return cm_fail(CM_ERR_SHAPE, "tensor '%s' has %d dimensions; its layout needs %d", name,
                       tensor->ndim, required_ndim);
    uint64_t bytes;
    if ((status = check_shape("tensor", name, tensor->ndim, tensor->shape,
                              cm_dtype_size(tensor->encoding), max_bytes, &bytes)))
        return status;
    if (tensor->shape[0] != example_count)
        return cm_fail(CM_ERR_SHAPE,
                       "tensor '%s' has %" PRId64 " rows but the reply answers %d examples", name,
                       tensor->shape[0], example_count);
    if (tensor->bytes != bytes)
        return cm_fail(CM_ERR_FORMAT,
                       "tensor '%s' frame is %zu bytes but its shape and encoding %s need %" PRIu64,
                       name, tensor->bytes, cm_dtype_name(tensor->encoding), bytes);
    if (!tensor->data)
        return cm_fail(CM_ERR_INVALID_ARG, "tensor '%s' has %zu bytes but no data", name,
                       tensor->bytes);
    return CM_OK;
}

static cm_status_t check_batch_reply(const cm_wire_batch_reply_t *reply,
                                     const cm_wire_limits_t *limits, uint64_t max_bytes) {
    cm_status_t status;
    if ((unsigned)reply->split >= CM_SPLIT_COUNT)
        return cm_fail(CM_ERR_FORMAT,
                       "BatchReply field split is %d; expected train, test, valid or transfer",
                       (int)reply->split);
    if ((status =
             check_example_ids("BatchReply", reply->example_ids, reply->example_count, limits)))
        return status;
    if (reply->tensor_count < 1 || reply->tensor_count > CM_WIRE_MAX_TENSORS)
        return cm_fail(CM_ERR_FORMAT, "BatchReply describes %d tensors; it carries 1 to %d",
                       reply->tensor_count, CM_WIRE_MAX_TENSORS);
    for (int i = 0; i < reply->tensor_count; i++) {
        const cm_wire_tensor_t *tensor = &reply->tensors[i];
        if ((status = check_tensor(tensor, reply->example_count, max_bytes))) return status;
        for (int j = 0; j < i; j++)
            if (reply->tensors[j].layout == tensor->layout &&
                same_on_the_wire(reply->tensors[j].name, tensor->name))
                return cm_fail(CM_ERR_FORMAT, "BatchReply carries tensor '%s' (layout %d) twice",
                               tensor->name, (int)tensor->layout);
    }
    return CM_OK;
}

/* The shape of each tensor of a dense head of `classes` x `inputs` (bias: one dimension). */
static void head_shapes(int classes, int inputs, int64_t shapes[HEAD_TENSORS][2]) {
    shapes[HEAD_WEIGHT][0] = classes;
    shapes[HEAD_WEIGHT][1] = inputs;
    shapes[HEAD_BIAS][0] = classes;
}

static cm_status_t check_head_reply(const cm_wire_head_reply_t *reply, uint64_t max_bytes) {
    cm_status_t status = check_string("HeadReply", "feature", reply->feature, true);
    if (status) return status;
    if (reply->classes < 1 || reply->inputs < 1)
        return cm_fail(CM_ERR_FORMAT,
                       "HeadReply for '%s' has %d classes and %d inputs; both must be >= 1",
                       reply->feature, reply->classes, reply->inputs);
    int64_t shapes[HEAD_TENSORS][2];
    head_shapes(reply->classes, reply->inputs, shapes);
    uint64_t weight_bytes, bias_bytes;
    if ((status = check_shape("HeadReply tensor", "weight", 2, shapes[HEAD_WEIGHT], sizeof(float),
                              max_bytes, &weight_bytes)) ||
        (status = check_shape("HeadReply tensor", "bias", 1, shapes[HEAD_BIAS], sizeof(float),
                              max_bytes, &bias_bytes)))
        return status;
    uint64_t total;
    if (__builtin_add_overflow(weight_bytes, bias_bytes, &total) || total > max_bytes)
        return cm_fail(CM_ERR_TOO_LARGE,
                       "HeadReply for '%s' of %d classes and %d inputs is larger than the %" PRIu64
                       "-byte message limit",
                       reply->feature, reply->classes, reply->inputs, max_bytes);
    if (!reply->weight || !reply->bias)
        return cm_fail(CM_ERR_INVALID_ARG, "HeadReply for '%s' has no %s data", reply->feature,
                       reply->weight ? "bias" : "weight");
    return CM_OK;
}

/* Everything but the receiver's limits when limits is NULL (sending). */
static cm_status_t check_message(const cm_wire_message_t *message, const cm_wire_limits_t *limits) {
    uint64_t max_bytes = limits ? limits->max_message_bytes : UINT64_MAX;
    bool is_request =
        message->kind == CM_WIRE_BATCH_REQUEST || message->kind == CM_WIRE_HEAD_REQUEST;
    bool is_reply = message->kind == CM_WIRE_BATCH_REPLY || message->kind == CM_WIRE_HEAD_REPLY;
    if ((is_request || is_reply) && message->request_id == 0)
        return cm_fail(CM_ERR_FORMAT, "%s has request id 0; requests and replies need an id",
                       kind_names[message->kind]);
    switch (message->kind) {
    case CM_WIRE_HELLO:
        return check_hello(&message->hello, max_bytes);
    case CM_WIRE_BATCH_REQUEST:
        return check_batch_request(&message->batch_request, limits);
    case CM_WIRE_BATCH_REPLY:
        return check_batch_reply(&message->batch_reply, limits, max_bytes);
    case CM_WIRE_HEARTBEAT:
        return CM_OK;
    case CM_WIRE_ERROR:
        if (message->error.code <= CM_OK || message->error.code >= CM_STATUS_COUNT)
            return cm_fail(CM_ERR_FORMAT, "Error field code is %d, not a failure status",
                           (int)message->error.code);
        return check_string("Error", "message", message->error.message, false);
    case CM_WIRE_BYE:
        return check_string("Bye", "reason", message->bye.reason, false);
    case CM_WIRE_HEAD_REQUEST:
        return check_string("HeadRequest", "feature", message->head_request.feature, true);
    case CM_WIRE_HEAD_REPLY:
        return check_head_reply(&message->head_reply, max_bytes);
    case CM_WIRE_KIND_COUNT:
        break;
    }
    return cm_fail(CM_ERR_INVALID_ARG, "message kind %d is not one of the wire's messages",
                   (int)message->kind);
}

/* ------------------------------------------------------------------------ */
/* Enumerations between protobuf and C                                      */

static Committee__V1__Split split_to_proto(cm_split_t split) {
    switch (split) {
    case CM_SPLIT_TRAIN:
        return COMMITTEE__V1__SPLIT__SPLIT_TRAIN;
    case CM_SPLIT_TEST:
        return COMMITTEE__V1__SPLIT__SPLIT_TEST;
    case CM_SPLIT_VALID:
        return COMMITTEE__V1__SPLIT__SPLIT_VALID;
    case CM_SPLIT_TRANSFER:
        return COMMITTEE__V1__SPLIT__SPLIT_TRANSFER;
    default:
        return COMMITTEE__V1__SPLIT__SPLIT_UNSPECIFIED;
    }
}

/* The split of a proto value; 0 for values this side does not know (UNSPECIFIED included). */
static int split_known(Committee__V1__Split value, cm_split_t *split) {
    switch (value) {
    case COMMITTEE__V1__SPLIT__SPLIT_TRAIN:
        *split = CM_SPLIT_TRAIN;
        return 1;
    case COMMITTEE__V1__SPLIT__SPLIT_TEST:
        *split = CM_SPLIT_TEST;
        return 1;
    case COMMITTEE__V1__SPLIT__SPLIT_VALID:
        *split = CM_SPLIT_VALID;
        return 1;
    case COMMITTEE__V1__SPLIT__SPLIT_TRANSFER:
        *split = CM_SPLIT_TRANSFER;
        return 1;
    default:
        return 0;
    }
}

static cm_status_t split_from_proto(const char *owner, Committee__V1__Split value,
                                    cm_split_t *split) {
    if (!split_known(value, split))
        return cm_fail(CM_ERR_FORMAT, "%s field split has unknown value %d", owner, (int)value);
    return CM_OK;
}

static Committee__V1__DType dtype_to_proto(cm_dtype_t dtype) {
    return dtype == CM_DTYPE_I32 ? COMMITTEE__V1__DTYPE__DTYPE_I32
                                 : COMMITTEE__V1__DTYPE__DTYPE_F32;
}

static cm_status_t dtype_from_proto(const char *owner, const char *name, Committee__V1__DType value,
                                    cm_dtype_t *dtype) {
    if (value == COMMITTEE__V1__DTYPE__DTYPE_F32)
        *dtype = CM_DTYPE_F32;
    else if (value == COMMITTEE__V1__DTYPE__DTYPE_I32)
        *dtype = CM_DTYPE_I32;
    else
        return cm_fail(CM_ERR_FORMAT, "%s '%s' has unknown dtype %d", owner, name, (int)value);
    return CM_OK;
}

static Committee__V1__Encoding encoding_to_proto(cm_dtype_t encoding) {
    switch (encoding) {
    case CM_DTYPE_F16:
        return COMMITTEE__V1__ENCODING__ENCODING_F16;
    case CM_DTYPE_BF16:
        return COMMITTEE__V1__ENCODING__ENCODING_BF16;
    case CM_DTYPE_I32:
        return COMMITTEE__V1__ENCODING__ENCODING_I32;
    default:
        return COMMITTEE__V1__ENCODING__ENCODING_F32;
    }
}

static cm_status_t encoding_from_proto(const char *owner, const char *name,
                                       Committee__V1__Encoding value, cm_dtype_t *encoding) {
    switch (value) {
    case COMMITTEE__V1__ENCODING__ENCODING_F32:
        *encoding = CM_DTYPE_F32;
        return CM_OK;
    case COMMITTEE__V1__ENCODING__ENCODING_F16:
        *encoding = CM_DTYPE_F16;
        return CM_OK;
    case COMMITTEE__V1__ENCODING__ENCODING_BF16:
        *encoding = CM_DTYPE_BF16;
        return CM_OK;
    case COMMITTEE__V1__ENCODING__ENCODING_I32:
        *encoding = CM_DTYPE_I32;
        return CM_OK;
    default:
        return cm_fail(CM_ERR_FORMAT, "%s '%s' has unknown encoding %d", owner, name, (int)value);
    }
}

/* ------------------------------------------------------------------------ */
/* Packing                                                                  */

/* Every protobuf struct a header may need, so that packing allocates nothing. */
typedef struct {
    Committee__V1__Envelope envelope;
    Committee__V1__Hello hello;
    Committee__V1__Limits limits;
    Committee__V1__OutputSpec outputs[CM_WIRE_MAX_OUTPUTS];
    Committee__V1__OutputSpec *output_list[CM_WIRE_MAX_OUTPUTS];
    uint64_t output_shapes[CM_WIRE_MAX_OUTPUTS][CM_TENSOR_MAX_DIMS];
    Committee__V1__BatchRequest batch_request;
    char *output_names[CM_WIRE_MAX_OUTPUTS];
    Committee__V1__BatchReply batch_reply;
    Committee__V1__TensorDesc tensors[CM_WIRE_MAX_TENSORS];
    Committee__V1__TensorDesc *tensor_list[CM_WIRE_MAX_TENSORS];
    uint64_t tensor_shapes[CM_WIRE_MAX_TENSORS][CM_TENSOR_MAX_DIMS];
    Committee__V1__Heartbeat heartbeat;
    Committee__V1__Error error;
    Committee__V1__Bye bye;
    char *head_names[CM_WIRE_MAX_OUTPUTS];
    Committee__V1__Split split_list[CM_SPLIT_COUNT];
    Committee__V1__HeadRequest head_request;
    Committee__V1__HeadReply head_reply; /* its descriptors are tensors[0 .. HEAD_TENSORS) */
    /* Valid UTF-8 copies of the strings that were not (see proto_string): malloc'd on first
     * need, SANITIZED_STRINGS slots of CM_WIRE_MAX_STRING + 1 bytes, freed by builder_deinit. */
    char *sanitized;
    int sanitized_count;
} header_builder_t;

enum { SANITIZED_STRINGS = 6 + 2 * CM_WIRE_MAX_OUTPUTS }; /* the most strings a header holds */

static void builder_deinit(header_builder_t *builder) {
    free(builder->sanitized);
    builder->sanitized = NULL;
}

/*
 * Length of the UTF-8 sequence at text[0 .. length) (1..4), or 0 when it is not one: a stray
 * continuation byte, an overlong form, a surrogate, beyond U+10FFFF, or cut short.
 */
static size_t utf8_sequence(const unsigned char *text, size_t length) {
    unsigned char lead = text[0];
    if (lead < 0x80) return 1;
    size_t size = lead >= 0xc2 && lead <= 0xdf   ? 2
                  : lead >= 0xe0 && lead <= 0xef ? 3
                  : lead >= 0xf0 && lead <= 0xf4 ? 4
                                                 : 0;
    if (size == 0 || size > length) return 0;
    for (size_t index = 1; index < size; index++)
        if ((text[index] & 0xc0) != 0x80) return 0;
    if (lead == 0xe0 && text[1] < 0xa0) return 0; /* overlong */
    if (lead == 0xed && text[1] > 0x9f) return 0; /* UTF-16 surrogates */
    if (lead == 0xf0 && text[1] < 0x90) return 0; /* overlong */
    if (lead == 0xf4 && text[1] > 0x8f) return 0; /* beyond U+10FFFF */
    return size;
}

int cm_wire_utf8_valid(const char *text, size_t length) {
    const unsigned char *bytes = (const unsigned char *)text;
    for (size_t at = 0; at < length;) {
        size_t size = utf8_sequence(bytes + at, length - at);
        if (size == 0) return 0;
        at += size;
    }
    return 1;
}

/* Writes `source` with every byte that is not UTF-8 replaced by U+FFFD, cut at a character
 * boundary to CM_WIRE_MAX_STRING bytes, into out[CM_WIRE_MAX_STRING + 1]. */
static void utf8_sanitize(const char *source, char *out) {
    size_t length = strlen(source), used = 0;
    const unsigned char *bytes = (const unsigned char *)source;
    for (size_t at = 0; at < length;) {
        size_t size = utf8_sequence(bytes + at, length - at);
        const char *piece = size ? source + at : "\xef\xbf\xbd"; /* U+FFFD */
        size_t piece_size = size ? size : 3;
        if (used + piece_size > CM_WIRE_MAX_STRING) break;
        memcpy(out + used, piece, piece_size);
        used += piece_size;
        at += size ? size : 1;
    }
    out[used] = '\0';
}

/*
 * Whether two strings are the same once packed (utf8_sanitize): names that differ only in
 * bytes that are not UTF-8 would arrive as one name, so a message holding both is refused as
 * naming it twice (what decodes must encode to a message that decodes again).
 */
static int same_on_the_wire(const char *a, const char *b) {
    if (strcmp(a, b) == 0) return 1;
    if (cm_wire_utf8_valid(a, strlen(a)) && cm_wire_utf8_valid(b, strlen(b))) return 0;
    char packed_a[CM_WIRE_MAX_STRING + 1], packed_b[CM_WIRE_MAX_STRING + 1];
    utf8_sanitize(a, packed_a);
    utf8_sanitize(b, packed_b);
    return strcmp(packed_a, packed_b) == 0;
}

/*
 * The one place strings go on the wire: protobuf's `string` must be UTF-8, and strict parsers
 * (Python's) reject a whole message that is not.  Strings can carry bytes a peer sent (an
 * Error naming an unknown output) or be cut by snprintf inside a character, so each is
 * checked; a valid one is used as it is (no copy), an invalid one is copied with every bad byte
 * replaced by U+FFFD, cut at a character boundary to CM_WIRE_MAX_STRING bytes.  If no copy can
 * be made (out of memory), a fixed sentence stands in.
 */
static char *proto_string(header_builder_t *builder, const char *value) {
    const char *source = text(value);
    size_t length = strlen(source);
    if (cm_wire_utf8_valid(source, length)) return (char *)source;
    static const char replaced[] = "(text that was not UTF-8)";
    enum { SLOT = CM_WIRE_MAX_STRING + 1 };
    if (!builder->sanitized) builder->sanitized = malloc((size_t)SANITIZED_STRINGS * SLOT);
    if (!builder->sanitized || builder->sanitized_count == SANITIZED_STRINGS)
        return (char *)replaced;
    char *copy = builder->sanitized + (size_t)builder->sanitized_count++ * SLOT;
    utf8_sanitize(source, copy);
    return copy;
}

static void copy_shape(uint64_t *out, const int64_t *shape, int ndim) {
    for (int dim = 0; dim < ndim; dim++) out[dim] = (uint64_t)shape[dim];
}

static void build_hello(header_builder_t *builder, const cm_wire_hello_t *hello) {
    Committee__V1__Hello *proto = &builder->hello;
    committee__v1__hello__init(proto);
    proto->peer_kind = (Committee__V1__PeerKind)hello->peer;
    proto->peer_name = proto_string(builder, hello->peer_name);
    proto->role = (Committee__V1__Role)hello->role;
    proto->model_id = proto_string(builder, hello->model_id);
    proto->model_sha256 = proto_string(builder, hello->model_sha256);
    proto->view = proto_string(builder, hello->view);
    proto->dataset_name = proto_string(builder, hello->dataset_name);
    proto->dataset_fingerprint = proto_string(builder, hello->dataset_fingerprint);
    proto->classes = (uint32_t)hello->classes;
    for (int i = 0; i < hello->output_count; i++) {
        const cm_wire_output_t *output = &hello->outputs[i];
        Committee__V1__OutputSpec *spec = &builder->outputs[i];
        committee__v1__output_spec__init(spec);
        spec->name = proto_string(builder, output->name);
        spec->dtype = dtype_to_proto(output->dtype);
        copy_shape(builder->output_shapes[i], output->shape, output->ndim);
        spec->n_shape = (size_t)output->ndim;
        spec->shape = builder->output_shapes[i];
        builder->output_list[i] = spec;
    }
    proto->n_outputs = (size_t)hello->output_count;
    proto->outputs = builder->output_list;
    committee__v1__limits__init(&builder->limits);
    builder->limits.max_examples_per_request = hello->limits.max_examples;
    builder->limits.max_message_bytes = hello->limits.max_message_bytes;
    builder->limits.max_in_flight_requests = hello->limits.max_in_flight;
    proto->limits = &builder->limits;
    for (int i = 0; i < hello->head_count; i++)
        builder->head_names[i] = proto_string(builder, hello->heads[i]);
    proto->n_heads = (size_t)hello->head_count;
    proto->heads = builder->head_names;
    for (int i = 0; i < hello->split_count; i++)
        builder->split_list[i] = split_to_proto(hello->splits[i]);
    proto->n_splits = (size_t)hello->split_count;
    proto->splits = builder->split_list;
    builder->envelope.body_case = COMMITTEE__V1__ENVELOPE__BODY_HELLO;
    builder->envelope.hello = proto;
}

static void build_batch_request(header_builder_t *builder, const cm_wire_batch_request_t *request) {
    Committee__V1__BatchRequest *proto = &builder->batch_request;
    committee__v1__batch_request__init(proto);
    proto->split = split_to_proto(request->split);
    proto->n_example_ids = (size_t)request->example_count;
    proto->example_ids = (int32_t *)request->example_ids;
    for (int i = 0; i < request->output_count; i++)
        builder->output_names[i] = proto_string(builder, request->outputs[i]);
    proto->n_outputs = (size_t)request->output_count;
    proto->outputs = builder->output_names;
    proto->encoding = encoding_to_proto(request->encoding);
    proto->top_k = (uint32_t)request->top_k;
    builder->envelope.body_case = COMMITTEE__V1__ENVELOPE__BODY_BATCH_REQUEST;
    builder->envelope.batch_request = proto;
}

static void build_batch_reply(header_builder_t *builder, const cm_wire_batch_reply_t *reply) {
    Committee__V1__BatchReply *proto = &builder->batch_reply;
    committee__v1__batch_reply__init(proto);
    proto->split = split_to_proto(reply->split);
    proto->n_example_ids = (size_t)reply->example_count;
    proto->example_ids = (int32_t *)reply->example_ids;
    for (int i = 0; i < reply->tensor_count; i++) {
        const cm_wire_tensor_t *tensor = &reply->tensors[i];
        Committee__V1__TensorDesc *desc = &builder->tensors[i];
        committee__v1__tensor_desc__init(desc);
        desc->name = proto_string(builder, tensor->name);
        desc->dtype = dtype_to_proto(tensor->dtype);
        desc->encoding = encoding_to_proto(tensor->encoding);
        desc->layout = (Committee__V1__Layout)tensor->layout;
        copy_shape(builder->tensor_shapes[i], tensor->shape, tensor->ndim);
        desc->n_shape = (size_t)tensor->ndim;
        desc->shape = builder->tensor_shapes[i];
        desc->byte_length = tensor->bytes;
        builder->tensor_list[i] = desc;
    }
    proto->n_tensors = (size_t)reply->tensor_count;
    proto->tensors = builder->tensor_list;
    builder->envelope.body_case = COMMITTEE__V1__ENVELOPE__BODY_BATCH_REPLY;
    builder->envelope.batch_reply = proto;
}

/* Fills one TensorDesc of `builder` for a dense F32 tensor of `ndim` dimensions. */
static void build_dense_f32(header_builder_t *builder, int index, const char *name, int ndim,
                            const int64_t *shape, uint64_t bytes) {
    Committee__V1__TensorDesc *desc = &builder->tensors[index];
    committee__v1__tensor_desc__init(desc);
    desc->name = proto_string(builder, name);
    desc->dtype = COMMITTEE__V1__DTYPE__DTYPE_F32;
    desc->encoding = COMMITTEE__V1__ENCODING__ENCODING_F32;
    desc->layout = COMMITTEE__V1__LAYOUT__LAYOUT_DENSE;
    copy_shape(builder->tensor_shapes[index], shape, ndim);
    desc->n_shape = (size_t)ndim;
    desc->shape = builder->tensor_shapes[index];
    desc->byte_length = bytes;
    builder->tensor_list[index] = desc;
}

static void build_head_reply(header_builder_t *builder, const cm_wire_head_reply_t *reply) {
    Committee__V1__HeadReply *proto = &builder->head_reply;
    committee__v1__head_reply__init(proto);
    proto->feature = proto_string(builder, reply->feature);
    proto->kind = COMMITTEE__V1__HEAD_KIND__HEAD_KIND_DENSE;
    int64_t shapes[HEAD_TENSORS][2];
    head_shapes(reply->classes, reply->inputs, shapes);
    uint64_t classes = (uint64_t)reply->classes, inputs = (uint64_t)reply->inputs;
    build_dense_f32(builder, HEAD_WEIGHT, head_tensor_names[HEAD_WEIGHT], 2, shapes[HEAD_WEIGHT],
                    sizeof(float) * classes * inputs);
    build_dense_f32(builder, HEAD_BIAS, head_tensor_names[HEAD_BIAS], 1, shapes[HEAD_BIAS],
                    sizeof(float) * classes);
    proto->n_tensors = HEAD_TENSORS;
    proto->tensors = builder->tensor_list;
    builder->envelope.body_case = COMMITTEE__V1__ENVELOPE__BODY_HEAD_REPLY;
    builder->envelope.head_reply = proto;
}

/* Checks *message and fills builder->envelope with protobuf structs that point into it. */
static cm_status_t build_header(header_builder_t *builder, const cm_wire_message_t *message) {
    cm_status_t status = check_message(message, NULL);
    if (status) return status;
    Committee__V1__Envelope *envelope = &builder->envelope;
    committee__v1__envelope__init(envelope);
    builder->sanitized = NULL;
    builder->sanitized_count = 0;
    envelope->version_major = CM_WIRE_VERSION_MAJOR;
    envelope->version_minor = CM_WIRE_VERSION_MINOR;
    envelope->request_id = message->request_id;
    switch (message->kind) {
    case CM_WIRE_HELLO:
        build_hello(builder, &message->hello);
        break;
    case CM_WIRE_BATCH_REQUEST:
        build_batch_request(builder, &message->batch_request);
        break;
    case CM_WIRE_BATCH_REPLY:
        build_batch_reply(builder, &message->batch_reply);
        break;
    case CM_WIRE_HEARTBEAT:
        committee__v1__heartbeat__init(&builder->heartbeat);
        builder->heartbeat.sent_unix_ns = message->heartbeat.sent_unix_ns;
        envelope->body_case = COMMITTEE__V1__ENVELOPE__BODY_HEARTBEAT;
        envelope->heartbeat = &builder->heartbeat;
        break;
    case CM_WIRE_ERROR:
        committee__v1__error__init(&builder->error);
        builder->error.code = proto_string(builder, cm_status_name(message->error.code));
        builder->error.message = proto_string(builder, message->error.message);
        envelope->body_case = COMMITTEE__V1__ENVELOPE__BODY_ERROR;
        envelope->error = &builder->error;
        break;
    case CM_WIRE_BYE:
        committee__v1__bye__init(&builder->bye);
        builder->bye.reason = proto_string(builder, message->bye.reason);
        envelope->body_case = COMMITTEE__V1__ENVELOPE__BODY_BYE;
        envelope->bye = &builder->bye;
        break;
    case CM_WIRE_HEAD_REQUEST:
        committee__v1__head_request__init(&builder->head_request);
        builder->head_request.feature = proto_string(builder, message->head_request.feature);
        envelope->body_case = COMMITTEE__V1__ENVELOPE__BODY_HEAD_REQUEST;
        envelope->head_request = &builder->head_request;
        break;
    case CM_WIRE_HEAD_REPLY:
        build_head_reply(builder, &message->head_reply);
        break;
    case CM_WIRE_KIND_COUNT:
        break; /* refused by check_message */
    }
    return CM_OK;
}

cm_status_t cm_wire_header_size(const cm_wire_message_t *message, size_t *header_bytes) {
    header_builder_t builder;
    cm_status_t status = build_header(&builder, message);
    if (status) return status;
    *header_bytes = committee__v1__envelope__get_packed_size(&builder.envelope);
    builder_deinit(&builder);
    return CM_OK;
}

cm_status_t cm_wire_pack_header(const cm_wire_message_t *message, void *buffer, size_t capacity,
                                size_t *header_bytes) {
    header_builder_t builder;
    cm_status_t status = build_header(&builder, message);
    if (status) return status;
    size_t needed = committee__v1__envelope__get_packed_size(&builder.envelope);
    *header_bytes = needed;
    if (needed <= capacity) committee__v1__envelope__pack(&builder.envelope, buffer);
    builder_deinit(&builder);
    if (needed > capacity)
        return cm_fail(CM_ERR_TOO_LARGE, "%s header needs %zu bytes but the buffer holds %zu",
                       kind_names[message->kind], needed, capacity);
    return CM_OK;
}

cm_status_t cm_wire_encode(cm_wire_encoded_t *encoded, const cm_wire_message_t *message) {
    memset(encoded, 0, sizeof *encoded);
    header_builder_t builder;
    cm_status_t status = build_header(&builder, message);
    if (status) return status;
    size_t header_bytes = committee__v1__envelope__get_packed_size(&builder.envelope);
    encoded->header = malloc(header_bytes);
    if (encoded->header) committee__v1__envelope__pack(&builder.envelope, encoded->header);
    builder_deinit(&builder);
    if (!encoded->header)
        return cm_fail(CM_ERR_NOMEM, "cannot allocate a %zu-byte %s header", header_bytes,
                       kind_names[message->kind]);
    encoded->frames[0] = (cm_wire_frame_t){encoded->header, header_bytes};
    encoded->frame_count = 1 + cm_wire_tensor_frames(message, encoded->frames + 1);
    return CM_OK;
}

int cm_wire_tensor_frames(const cm_wire_message_t *message, cm_wire_frame_t *frames) {
    if (message->kind == CM_WIRE_BATCH_REPLY) {
        const cm_wire_batch_reply_t *reply = &message->batch_reply;
        for (int i = 0; i < reply->tensor_count; i++)
            frames[i] = (cm_wire_frame_t){reply->tensors[i].data, reply->tensors[i].bytes};
        return reply->tensor_count;
    }
    if (message->kind == CM_WIRE_HEAD_REPLY) {
        const cm_wire_head_reply_t *reply = &message->head_reply;
        size_t classes = (size_t)reply->classes, inputs = (size_t)reply->inputs;
        frames[HEAD_WEIGHT] = (cm_wire_frame_t){reply->weight, sizeof(float) * classes * inputs};
        frames[HEAD_BIAS] = (cm_wire_frame_t){reply->bias, sizeof(float) * classes};
        return HEAD_TENSORS;
    }
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Unpacking                                                                */

/* A received count that must fit in an int. */
static cm_status_t count_from_proto(const char *owner, const char *field, size_t count, size_t most,
                                    int *out) {
    if (count > most)
        return cm_fail(CM_ERR_TOO_LARGE, "%s has %zu %s; at most %zu are allowed", owner, count,
                       field, most);
    *out = (int)count;
    return CM_OK;
}

static cm_status_t shape_from_proto(const char *owner, const char *name, const uint64_t *dims,
                                    size_t count, int *ndim, int64_t *shape) {
    if (count > CM_TENSOR_MAX_DIMS)
        return cm_fail(CM_ERR_FORMAT, "%s '%s' has %zu dimensions; at most %d are allowed", owner,
                       name, count, CM_TENSOR_MAX_DIMS);
    for (size_t dim = 0; dim < count; dim++) {
        if (dims[dim] > (uint64_t)INT64_MAX)
            return cm_fail(CM_ERR_TOO_LARGE,
                           "dimension %zu of %s '%s' is %" PRIu64 ", beyond any message", dim,
                           owner, name, dims[dim]);
        shape[dim] = (int64_t)dims[dim];
    }
    *ndim = (int)count;
    return CM_OK;
}

static cm_status_t int_from_proto(const char *owner, const char *field, uint32_t value, int *out) {
    if (value > INT_MAX)
        return cm_fail(CM_ERR_TOO_LARGE, "%s field %s is %" PRIu32 ", beyond any sane value", owner,
                       field, value);
    *out = (int)value;
    return CM_OK;
}

static cm_status_t hello_from_proto(cm_wire_hello_t *hello, const Committee__V1__Hello *proto) {
    cm_status_t status;
    hello->peer = (cm_wire_peer_t)proto->peer_kind;
    hello->peer_name = proto->peer_name;
    hello->role = (cm_wire_role_t)proto->role;
    hello->model_id = proto->model_id;
    hello->model_sha256 = proto->model_sha256;
    hello->view = proto->view;
    hello->dataset_name = proto->dataset_name;
    hello->dataset_fingerprint = proto->dataset_fingerprint;
    if ((status = int_from_proto("Hello", "classes", proto->classes, &hello->classes)) ||
        (status = count_from_proto("Hello", "outputs", proto->n_outputs, CM_WIRE_MAX_OUTPUTS,
                                   &hello->output_count)))
        return status;
    for (int i = 0; i < hello->output_count; i++) {
        const Committee__V1__OutputSpec *spec = proto->outputs[i];
        cm_wire_output_t *output = &hello->outputs[i];
        output->name = spec->name;
        if ((status = check_string("Hello output", "name", spec->name, true)) ||
            (status = dtype_from_proto("Hello output", spec->name, spec->dtype, &output->dtype)) ||
            (status = shape_from_proto("Hello output", spec->name, spec->shape, spec->n_shape,
                                       &output->ndim, output->shape)))
            return status;
    }
    if ((status = count_from_proto("Hello", "heads", proto->n_heads, CM_WIRE_MAX_OUTPUTS,
                                   &hello->head_count)))
        return status;
    for (int i = 0; i < hello->head_count; i++) hello->heads[i] = proto->heads[i];
    /* Splits this side does not know (a newer peer's) are skipped; duplicates are refused. */
    hello->split_count = 0;
    for (size_t i = 0; i < proto->n_splits; i++) {
        cm_split_t split;
        if (!split_known(proto->splits[i], &split)) continue;
        if (hello->split_count == CM_SPLIT_COUNT)
            return cm_fail(CM_ERR_FORMAT, "Hello lists more than %d splits", CM_SPLIT_COUNT);
        hello->splits[hello->split_count++] = split;
    }
    if (!proto->limits) return cm_fail(CM_ERR_FORMAT, "Hello has no limits");
    hello->limits.max_examples = proto->limits->max_examples_per_request;
    hello->limits.max_message_bytes = proto->limits->max_message_bytes;
    hello->limits.max_in_flight = proto->limits->max_in_flight_requests;
    return CM_OK;
}

static cm_status_t batch_request_from_proto(cm_wire_batch_request_t *request,
                                            const Committee__V1__BatchRequest *proto) {
    cm_status_t status;
    if ((status = split_from_proto("BatchRequest", proto->split, &request->split)) ||
        (status = count_from_proto("BatchRequest", "example ids", proto->n_example_ids, INT_MAX,
                                   &request->example_count)) ||
        (status = count_from_proto("BatchRequest", "outputs", proto->n_outputs, CM_WIRE_MAX_OUTPUTS,
                                   &request->output_count)) ||
        (status = encoding_from_proto("BatchRequest", "encoding", proto->encoding,
                                      &request->encoding)) ||
        (status = int_from_proto("BatchRequest", "top_k", proto->top_k, &request->top_k)))
        return status;
    request->example_ids = proto->example_ids;
    for (int i = 0; i < request->output_count; i++) request->outputs[i] = proto->outputs[i];
    return CM_OK;
}

/* A TensorDesc's dtype, encoding and shape; `what` and `name` name it in a failure. */
static cm_status_t desc_from_proto(const char *what, const char *name,
                                   const Committee__V1__TensorDesc *desc, cm_dtype_t *dtype,
                                   cm_dtype_t *encoding, int *ndim, int64_t *shape) {
    cm_status_t status;
    if ((status = dtype_from_proto(what, name, desc->dtype, dtype)) ||
        (status = encoding_from_proto(what, name, desc->encoding, encoding)))
        return status;
    return shape_from_proto(what, name, desc->shape, desc->n_shape, ndim, shape);
}

/* Converts the reply and attaches frames[0 .. frame_count) to its tensors, one each. */
static cm_status_t batch_reply_from_proto(cm_wire_batch_reply_t *reply,
                                          const Committee__V1__BatchReply *proto,
                                          const cm_wire_frame_t *frames, int frame_count) {
    cm_status_t status;
    if ((status = split_from_proto("BatchReply", proto->split, &reply->split)) ||
        (status = count_from_proto("BatchReply", "example ids", proto->n_example_ids, INT_MAX,
                                   &reply->example_count)) ||
        (status = count_from_proto("BatchReply", "tensors", proto->n_tensors, CM_WIRE_MAX_TENSORS,
                                   &reply->tensor_count)))
        return status;
    if (frame_count != reply->tensor_count)
        return cm_fail(CM_ERR_FORMAT,
                       "BatchReply describes %d tensors but %d tensor frames followed",
                       reply->tensor_count, frame_count);
    reply->example_ids = proto->example_ids;
    for (int i = 0; i < reply->tensor_count; i++) {
        const Committee__V1__TensorDesc *desc = proto->tensors[i];
        cm_wire_tensor_t *tensor = &reply->tensors[i];
        tensor->name = desc->name;
        if ((status = check_string("BatchReply tensor", "name", desc->name, true)) ||
            (status = desc_from_proto("tensor", desc->name, desc, &tensor->dtype, &tensor->encoding,
                                      &tensor->ndim, tensor->shape)))
            return status;
        tensor->layout = (cm_wire_layout_t)desc->layout;
        tensor->data = frames[i].data;
        tensor->bytes = frames[i].bytes;
        if (desc->byte_length != frames[i].bytes)
            return cm_fail(CM_ERR_FORMAT,
                           "tensor '%s' promises %" PRIu64 " bytes but its frame has %zu",
                           desc->name, desc->byte_length, frames[i].bytes);
    }
    return CM_OK;
}

/*
 * Converts a HeadReply and attaches its two frames: a dense head, tensors "weight" [classes,
 * inputs] and "bias" [classes], dense F32, each frame exactly as long as its shape says and no
 * tensor beyond max_bytes.
 */
static cm_status_t head_reply_from_proto(cm_wire_head_reply_t *reply,
                                         const Committee__V1__HeadReply *proto,
                                         const cm_wire_frame_t *frames, int frame_count,
                                         uint64_t max_bytes) {
    cm_status_t status = check_string("HeadReply", "feature", proto->feature, true);
    if (status) return status;
    const char *feature = proto->feature;
    if (proto->kind != COMMITTEE__V1__HEAD_KIND__HEAD_KIND_DENSE)
        return cm_fail(CM_ERR_FORMAT,
                       "HeadReply for '%s' has unsupported head kind %d; this side knows only "
                       "dense heads (kind %d)",
                       feature, (int)proto->kind, (int)COMMITTEE__V1__HEAD_KIND__HEAD_KIND_DENSE);
    if (proto->n_tensors != HEAD_TENSORS)
        return cm_fail(CM_ERR_FORMAT,
                       "HeadReply for '%s' describes %zu tensors; a dense head has exactly two, "
                       "\"weight\" and \"bias\"",
                       feature, proto->n_tensors);
    if (frame_count != HEAD_TENSORS)
        return cm_fail(CM_ERR_FORMAT,
                       "HeadReply describes %d tensors but %d tensor frames followed", HEAD_TENSORS,
                       frame_count);
    int64_t shapes[HEAD_TENSORS][CM_TENSOR_MAX_DIMS];
    for (int i = 0; i < HEAD_TENSORS; i++) {
        const Committee__V1__TensorDesc *desc = proto->tensors[i];
        const char *name = head_tensor_names[i];
        int ndim = 0, wanted_ndim = i == HEAD_WEIGHT ? 2 : 1;
        cm_dtype_t dtype = CM_DTYPE_COUNT, encoding = CM_DTYPE_COUNT;
        uint64_t bytes;
        if (strcmp(text(desc->name), name) != 0)
            return cm_fail(CM_ERR_FORMAT,
                           "tensor %d of the HeadReply for '%s' is named '%.64s'; a dense head "
                           "sends \"weight\" then \"bias\"",
                           i, feature, text(desc->name));
        if ((status = desc_from_proto("HeadReply tensor", name, desc, &dtype, &encoding, &ndim,
                                      shapes[i])))
            return status;
        if (dtype != CM_DTYPE_F32 || encoding != CM_DTYPE_F32 ||
            desc->layout != COMMITTEE__V1__LAYOUT__LAYOUT_DENSE)
            return cm_fail(CM_ERR_FORMAT,
                           "HeadReply tensor '%s' is %s encoded as %s in layout %d; a head "
                           "travels as dense F32",
                           name, cm_dtype_name(dtype), cm_dtype_name(encoding), (int)desc->layout);
        if (ndim != wanted_ndim)
            return cm_fail(CM_ERR_SHAPE, "HeadReply tensor '%s' has %d dimensions; it needs %d",
                           name, ndim, wanted_ndim);
        if ((status = check_shape("HeadReply tensor", name, ndim, shapes[i], sizeof(float),
                                  max_bytes, &bytes)))
            return status;
        if (desc->byte_length != frames[i].bytes || frames[i].bytes != bytes)
            return cm_fail(CM_ERR_FORMAT,
                           "HeadReply tensor '%s' promises %" PRIu64
                           " bytes and its frame has %zu, but its shape needs %" PRIu64,
                           name, desc->byte_length, frames[i].bytes, bytes);
    }
    if (shapes[HEAD_BIAS][0] != shapes[HEAD_WEIGHT][0])
        return cm_fail(CM_ERR_SHAPE,
                       "HeadReply for '%s' has a weight for %" PRId64
                       " classes but a bias for %" PRId64,
                       feature, shapes[HEAD_WEIGHT][0], shapes[HEAD_BIAS][0]);
    if (shapes[HEAD_WEIGHT][0] > INT_MAX || shapes[HEAD_WEIGHT][1] > INT_MAX)
        return cm_fail(CM_ERR_TOO_LARGE,
                       "HeadReply for '%s' has a weight of %" PRId64 " x %" PRId64
                       "; each dimension must fit in an int",
                       feature, shapes[HEAD_WEIGHT][0], shapes[HEAD_WEIGHT][1]);
    reply->feature = feature;
    reply->classes = (int)shapes[HEAD_WEIGHT][0];
    reply->inputs = (int)shapes[HEAD_WEIGHT][1];
    reply->weight = frames[HEAD_WEIGHT].data;
    reply->bias = frames[HEAD_BIAS].data;
    return CM_OK;
}

static cm_status_t error_from_proto(cm_wire_error_t *error, const Committee__V1__Error *proto) {
    cm_status_t status = check_string("Error", "code", proto->code, true);
    if (status) return status;
    error->code = cm_status_from_name(proto->code); /* a newer peer's code: CM_ERR_INTERNAL */
    if (error->code == CM_OK)
        return cm_fail(CM_ERR_FORMAT, "Error field code is \"OK\", which is not a failure");
    error->message = proto->message;
    return CM_OK;
}

/*
 * Converts the body of `envelope` into message; `tensor_frames` are the frames after the header
 * and max_bytes the receiver's message limit.
 */
static cm_status_t body_from_proto(cm_wire_message_t *message,
                                   const Committee__V1__Envelope *envelope,
                                   const cm_wire_frame_t *tensor_frames, int tensor_frame_count,
                                   uint64_t max_bytes) {
    static const cm_wire_kind_t kinds[] = {
        [COMMITTEE__V1__ENVELOPE__BODY_HELLO] = CM_WIRE_HELLO,
        [COMMITTEE__V1__ENVELOPE__BODY_BATCH_REQUEST] = CM_WIRE_BATCH_REQUEST,
        [COMMITTEE__V1__ENVELOPE__BODY_BATCH_REPLY] = CM_WIRE_BATCH_REPLY,
        [COMMITTEE__V1__ENVELOPE__BODY_HEARTBEAT] = CM_WIRE_HEARTBEAT,
        [COMMITTEE__V1__ENVELOPE__BODY_ERROR] = CM_WIRE_ERROR,
        [COMMITTEE__V1__ENVELOPE__BODY_BYE] = CM_WIRE_BYE,
        [COMMITTEE__V1__ENVELOPE__BODY_HEAD_REQUEST] = CM_WIRE_HEAD_REQUEST,
        [COMMITTEE__V1__ENVELOPE__BODY_HEAD_REPLY] = CM_WIRE_HEAD_REPLY,
    };
    if (envelope->body_case < COMMITTEE__V1__ENVELOPE__BODY_HELLO ||
        envelope->body_case > COMMITTEE__V1__ENVELOPE__BODY_HEAD_REPLY)
        return cm_fail(CM_ERR_FORMAT, "header has no body: it is neither Hello, BatchRequest, "
                                      "BatchReply, Heartbeat, Error, Bye, HeadRequest nor "
                                      "HeadReply");
    message->kind = kinds[envelope->body_case];
    bool carries_frames =
        message->kind == CM_WIRE_BATCH_REPLY || message->kind == CM_WIRE_HEAD_REPLY;
    if (!carries_frames && tensor_frame_count != 0)
        return cm_fail(CM_ERR_FORMAT, "a %s carries no tensor frames, but %d followed it",
                       kind_names[message->kind], tensor_frame_count);
    switch (message->kind) {
    case CM_WIRE_HELLO:
        return hello_from_proto(&message->hello, envelope->hello);
    case CM_WIRE_BATCH_REQUEST:
        return batch_request_from_proto(&message->batch_request, envelope->batch_request);
    case CM_WIRE_BATCH_REPLY:
        return batch_reply_from_proto(&message->batch_reply, envelope->batch_reply, tensor_frames,
                                      tensor_frame_count);
    case CM_WIRE_HEARTBEAT:
        message->heartbeat.sent_unix_ns = envelope->heartbeat->sent_unix_ns;
        return CM_OK;
    case CM_WIRE_ERROR:
        return error_from_proto(&message->error, envelope->error);
    case CM_WIRE_BYE:
        message->bye.reason = envelope->bye->reason;
        return CM_OK;
    case CM_WIRE_HEAD_REQUEST:
        message->head_request.feature = envelope->head_request->feature;
        return CM_OK;
    case CM_WIRE_HEAD_REPLY:
        return head_reply_from_proto(&message->head_reply, envelope->head_reply, tensor_frames,
                                     tensor_frame_count, max_bytes);
    case CM_WIRE_KIND_COUNT:
        break;
    }
    return CM_ERR_INTERNAL;
}

cm_status_t cm_wire_decode(cm_wire_message_t *message, const cm_wire_frame_t *frames,
                           int frame_count, const cm_wire_limits_t *limits) {
    memset(message, 0, sizeof *message);
    message->kind = CM_WIRE_KIND_COUNT;
    if (frame_count < 1 || frames[0].bytes == 0)
        return cm_fail(CM_ERR_FORMAT, "malformed header: the message has no header frame or an "
                                      "empty one");
    if (frame_count > CM_WIRE_MAX_FRAMES)
        return cm_fail(CM_ERR_TOO_LARGE, "message has %d frames; at most %d are allowed",
                       frame_count, CM_WIRE_MAX_FRAMES);
    uint64_t total = 0; /* saturates rather than wrapping */
    for (int i = 0; i < frame_count; i++)
        if (__builtin_add_overflow(total, (uint64_t)frames[i].bytes, &total)) total = UINT64_MAX;
    if (total > limits->max_message_bytes)
        return cm_fail(CM_ERR_TOO_LARGE,
                       "message of %" PRIu64 " bytes exceeds the limit of %" PRIu64 " bytes", total,
                       limits->max_message_bytes);
    Committee__V1__Envelope *envelope =
        committee__v1__envelope__unpack(NULL, frames[0].bytes, frames[0].data);
    if (!envelope)
        return cm_fail(CM_ERR_FORMAT,
                       "malformed header: frame 0 (%zu bytes) is not a committee.v1.Envelope",
                       frames[0].bytes);
    message->version_major = envelope->version_major;
    message->version_minor = envelope->version_minor;
    message->request_id = envelope->request_id;
    cm_status_t status;
    if (envelope->version_major != CM_WIRE_VERSION_MAJOR)
        status = cm_fail(CM_ERR_VERSION,
                         "peer speaks protocol version %" PRIu32 ".%" PRIu32
                         " but this side speaks %d.%d",
                         envelope->version_major, envelope->version_minor, CM_WIRE_VERSION_MAJOR,
                         CM_WIRE_VERSION_MINOR);
    else if (!(status = body_from_proto(message, envelope, frames + 1, frame_count - 1,
                                        limits->max_message_bytes)))
        status = check_message(message, limits);
    if (status) {
        committee__v1__envelope__free_unpacked(envelope, NULL);
        cm_wire_message_t kept = *message;
        memset(message, 0, sizeof *message);
        message->kind = kept.kind;
        message->version_major = kept.version_major;
        message->version_minor = kept.version_minor;
        message->request_id = kept.request_id;
        return status;
    }
    message->header = envelope;
    return CM_OK;
}

cm_status_t cm_wire_check_ids(const int32_t *ids, int count, int split_size) {
    if (count < 0 || (count > 0 && !ids))
        return cm_fail(CM_ERR_INVALID_ARG, "cm_wire_check_ids got %d ids and %s array", count,
                       ids ? "an" : "no");
    for (int i = 0; i < count; i++)
        if (ids[i] < 0 || ids[i] >= split_size)
            return cm_fail(CM_ERR_OUT_OF_RANGE,
                           "example id %" PRId32 " (position %d) is outside the split's %d "
                           "examples",
                           ids[i], i, split_size);
    return CM_OK;
}
