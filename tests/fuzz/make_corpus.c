/*
 * make_corpus: writes the seed corpora of the fuzz harnesses into
 * DIRECTORY/<name>/ (`make fuzz-corpus` runs it on tests/fuzz/corpus).
 * Every seed is made with the project's own encoders, so the seeds are
 * valid inputs that reach deep into the decoders and the fuzzer mutates
 * from there:
 *   wire/         one message of every kind, framed as fuzz_frames.h says
 *   safetensors/  files cm_safetensors_write writes (with checksums), and
 *                 one in the reference layout without them
 *   http/         a few requests, valid and not
 * The output is deterministic: running it again rewrites the same bytes.
 */
#include "cm_safetensors.h"
#include "cm_wire.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static const char *root;

static void fail(const char *what) {
    fprintf(stderr, "make_corpus: %s: %s\n", what, cm_last_error());
    exit(1);
}

static void make_directory(const char *name) {
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", root, name);
    if (mkdir(path, 0755) != 0 && errno != EEXIST) {
        fprintf(stderr, "make_corpus: cannot create %s: %s\n", path, strerror(errno));
        exit(1);
    }
}

static void write_seed(const char *corpus, const char *name, const void *bytes, size_t size) {
    char path[1024];
    snprintf(path, sizeof path, "%s/%s/%s", root, corpus, name);
    FILE *stream = fopen(path, "wb");
    if (!stream || fwrite(bytes, 1, size, stream) != size || fclose(stream) != 0) {
        fprintf(stderr, "make_corpus: cannot write %s\n", path);
        exit(1);
    }
}

/* Encodes `message` and writes its frames, each behind a 2-byte little-endian length. */
static void write_message(const char *name, const cm_wire_message_t *message) {
    cm_wire_encoded_t encoded;
    if (cm_wire_encode(&encoded, message) != CM_OK) fail(name);
    size_t size = 0;
    for (int index = 0; index < encoded.frame_count; index++)
        size += 2 + encoded.frames[index].bytes;
    uint8_t *bytes = malloc(size), *cursor = bytes;
    if (!bytes) exit(1);
    for (int index = 0; index < encoded.frame_count; index++) {
        size_t length = encoded.frames[index].bytes;
        if (length > 0xffff) fail("a frame longer than the harness's 2-byte length");
        *cursor++ = (uint8_t)length;
        *cursor++ = (uint8_t)(length >> 8);
        memcpy(cursor, encoded.frames[index].data, length);
        cursor += length;
    }
    write_seed("wire", name, bytes, size);
    free(bytes);
    cm_wire_encoded_deinit(&encoded);
}

static const char fingerprint[] =
    "9f2c1d0e8b7a6f5e4d3c2b1a09f8e7d6c5b4a39281706f5e4d3c2b1a09f8e7d6";
static const char model_hash[] = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

static void wire_seeds(void) {
    make_directory("wire");
    cm_wire_message_t message;

    cm_wire_message_init(&message, CM_WIRE_HELLO, 0);
    cm_wire_hello_t *hello = &message.hello;
    hello->peer = CM_WIRE_PEER_TEACHER;
    hello->peer_name = "fm";
    hello->role = CM_WIRE_ROLE_FOUNDATION;
    hello->model_id = "mlp:49-16-10";
    hello->model_sha256 = model_hash;
    hello->view = "pool7";
    hello->dataset_name = "fashion-mnist";
    hello->dataset_fingerprint = fingerprint;
    hello->classes = 10;
    hello->output_count = 2;
    hello->outputs[0] =
        (cm_wire_output_t){.name = "logits", .dtype = CM_DTYPE_F32, .ndim = 1, .shape = {10}};
    hello->outputs[1] =
        (cm_wire_output_t){.name = "hidden", .dtype = CM_DTYPE_F32, .ndim = 1, .shape = {16}};
    hello->limits =
        (cm_wire_limits_t){.max_examples = 64, .max_message_bytes = 1u << 16, .max_in_flight = 4};
    hello->head_count = 1;
    hello->heads[0] = "hidden";
    write_message("hello-teacher", &message);

    cm_wire_message_init(&message, CM_WIRE_HELLO, 0);
    message.hello = (cm_wire_hello_t){
        .peer = CM_WIRE_PEER_TRAINER,
        .peer_name = "student",
        .role = CM_WIRE_ROLE_NONE,
        .model_id = "mlp:49-8-10",
        .model_sha256 = "",
        .view = "pool7",
        .dataset_name = "fashion-mnist",
        .dataset_fingerprint = fingerprint,
        .classes = 10,
        .limits = {.max_examples = 64, .max_message_bytes = 1u << 16, .max_in_flight = 4}};
    write_message("hello-trainer", &message);

    int32_t ids[4] = {0, 7, 59999, 3};
    cm_wire_message_init(&message, CM_WIRE_BATCH_REQUEST, 5);
    message.batch_request = (cm_wire_batch_request_t){.split = CM_SPLIT_TRAIN,
                                                      .example_count = 4,
                                                      .example_ids = ids,
                                                      .output_count = 2,
                                                      .outputs = {"logits", "hidden"},
                                                      .encoding = CM_DTYPE_F16,
                                                      .top_k = 0};
    write_message("batch-request", &message);
    message.batch_request.top_k = 3;
    message.batch_request.output_count = 1;
    message.batch_request.encoding = CM_DTYPE_BF16;
    write_message("batch-request-topk", &message);

    float logits[4 * 10], hidden[4 * 16], top_values[4 * 3], tail[4];
    uint16_t half[4 * 10];
    int32_t top_indices[4 * 3];
    for (int index = 0; index < 40; index++) logits[index] = (float)(index % 7) - 3.0f;
    for (int index = 0; index < 64; index++) hidden[index] = (float)index / 64.0f;
    for (int index = 0; index < 12; index++) top_values[index] = 3.0f - (float)(index % 3);
    for (int index = 0; index < 12; index++) top_indices[index] = index % 10;
    for (int index = 0; index < 4; index++) tail[index] = 0.125f;
    cm_wire_f32_to_f16(half, logits, 40);
    cm_wire_message_init(&message, CM_WIRE_BATCH_REPLY, 5);
    cm_wire_batch_reply_t *reply = &message.batch_reply;
    reply->split = CM_SPLIT_TRAIN;
    reply->example_count = 4;
    reply->example_ids = ids;
    reply->tensor_count = 2;
    reply->tensors[0] = (cm_wire_tensor_t){.name = "logits",
                                           .dtype = CM_DTYPE_F32,
                                           .encoding = CM_DTYPE_F16,
                                           .layout = CM_WIRE_DENSE,
                                           .ndim = 2,
                                           .shape = {4, 10},
                                           .data = half,
                                           .bytes = sizeof half};
    reply->tensors[1] = (cm_wire_tensor_t){.name = "hidden",
                                           .dtype = CM_DTYPE_F32,
                                           .encoding = CM_DTYPE_F32,
                                           .layout = CM_WIRE_DENSE,
                                           .ndim = 3,
                                           .shape = {4, 4, 4},
                                           .data = hidden,
                                           .bytes = sizeof hidden};
    write_message("batch-reply", &message);
    reply->tensor_count = 3;
    reply->tensors[0] = (cm_wire_tensor_t){.name = "logits",
                                           .dtype = CM_DTYPE_F32,
                                           .encoding = CM_DTYPE_F32,
                                           .layout = CM_WIRE_TOPK_VALUES,
                                           .ndim = 2,
                                           .shape = {4, 3},
                                           .data = top_values,
                                           .bytes = sizeof top_values};
    reply->tensors[1] = (cm_wire_tensor_t){.name = "logits",
                                           .dtype = CM_DTYPE_I32,
                                           .encoding = CM_DTYPE_I32,
                                           .layout = CM_WIRE_TOPK_INDICES,
                                           .ndim = 2,
                                           .shape = {4, 3},
                                           .data = top_indices,
                                           .bytes = sizeof top_indices};
    reply->tensors[2] = (cm_wire_tensor_t){.name = "logits",
                                           .dtype = CM_DTYPE_F32,
                                           .encoding = CM_DTYPE_F32,
                                           .layout = CM_WIRE_TAIL_MASS,
                                           .ndim = 1,
                                           .shape = {4},
                                           .data = tail,
                                           .bytes = sizeof tail};
    write_message("batch-reply-topk", &message);

    cm_wire_message_init(&message, CM_WIRE_HEARTBEAT, 0);
    message.heartbeat.sent_unix_ns = 1764316996123456789ull;
    write_message("heartbeat", &message);
    cm_wire_message_error(&message, 5, CM_ERR_OUT_OF_RANGE, "example id 60000 is not below 60000");
    write_message("error", &message);
    cm_wire_message_init(&message, CM_WIRE_BYE, 0);
    message.bye.reason = "SIGTERM: shutting down";
    write_message("bye", &message);
    cm_wire_message_init(&message, CM_WIRE_HEAD_REQUEST, 9);
    message.head_request.feature = "hidden";
    write_message("head-request", &message);
    float weight[3 * 4], bias[3];
    for (int index = 0; index < 12; index++) weight[index] = (float)index * 0.5f;
    for (int index = 0; index < 3; index++) bias[index] = (float)index;
    cm_wire_message_init(&message, CM_WIRE_HEAD_REPLY, 9);
    message.head_reply = (cm_wire_head_reply_t){
        .feature = "hidden", .classes = 3, .inputs = 4, .weight = weight, .bias = bias};
    write_message("head-reply", &message);
}

/* Writes `tensors` with cm_safetensors_write into the corpus as `name`. */
static void write_safetensors(const char *name, const cm_tensor_t *tensors, int count,
                              const char *const *metadata, int pairs) {
    char path[1024];
    snprintf(path, sizeof path, "%s/safetensors/%s", root, name);
    if (cm_safetensors_write(path, tensors, count, metadata, pairs) != CM_OK) fail(name);
}

static cm_tensor_t tensor(const char *name, cm_dtype_t dtype, int ndim, const int64_t *shape,
                          const void *data) {
    cm_tensor_t made = {.dtype = dtype, .ndim = ndim, .data = (void *)data};
    snprintf(made.name, sizeof made.name, "%s", name);
    for (int dim = 0; dim < ndim; dim++) made.shape[dim] = shape[dim];
    return made;
}

static void safetensors_seeds(void) {
    make_directory("safetensors");
    float weight[4 * 3], bias[4];
    for (int index = 0; index < 12; index++) weight[index] = (float)index - 6.0f;
    for (int index = 0; index < 4; index++) bias[index] = 0.25f * (float)index;
    cm_tensor_t checkpoint[] = {tensor("fc1.weight", CM_DTYPE_F32, 2, (int64_t[]){4, 3}, weight),
                                tensor("fc1.bias", CM_DTYPE_F32, 1, (int64_t[]){4}, bias)};
    const char *model_metadata[] = {"model", "mlp:3-4", "view",
                                    "pool7", "format",  "committee-checkpoint-1"};
    write_safetensors("checkpoint", checkpoint, 2, model_metadata, 3);

    uint8_t has[4] = {1, 0, 1, 1};
    uint16_t half[2] = {0x3c00, 0xc000};
    int64_t step = 42;
    cm_tensor_t mixed[] = {tensor("t/logits", CM_DTYPE_F32, 2, (int64_t[]){4, 1}, bias),
                           tensor("t/logits.has", CM_DTYPE_U8, 1, (int64_t[]){4}, has),
                           tensor("half", CM_DTYPE_F16, 1, (int64_t[]){2}, half),
                           tensor("step", CM_DTYPE_I64, 0, NULL, &step),
                           tensor("empty", CM_DTYPE_BF16, 2, (int64_t[]){0, 5}, NULL)};
    const char *cache_metadata[] = {"kind", "committee-teacher-cache-1", "teachers", "1"};
    write_safetensors("cache", mixed, 5, cache_metadata, 2);
    write_safetensors("empty", NULL, 0, NULL, 0);

    /* The reference layout of safetensors.torch.save_file, no checksums. */
    static const char json[] = "{\"__metadata__\":{\"k\":\"v\"},\"a\":{\"dtype\":\"F32\","
                               "\"shape\":[2],\"data_offsets\":[0,8]}} ";
    uint8_t file[8 + sizeof json - 1 + 8] = {sizeof json - 1};
    memcpy(file + 8, json, sizeof json - 1);
    float values[2] = {1.0f, 2.0f};
    memcpy(file + 8 + sizeof json - 1, values, sizeof values);
    write_seed("safetensors", "reference-unchecked", file, sizeof file);
}

static void http_seeds(void) {
    make_directory("http");
    static const char *const requests[][2] = {
        {"healthz", "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:9100\r\nUser-Agent: curl/7.88\r\n"
                    "Accept: */*\r\n\r\n"},
        {"metrics-query", "GET /metrics?name=x&y HTTP/1.0\n\n"},
        {"echo", "GET /echo/path?q=1 HTTP/1.1\r\n\r\n"},
        {"busy", "GET /busy HTTP/1.1\r\nConnection: keep-alive\r\n\r\n"},
        {"post", "POST /readyz HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello"},
        {"bad-version", "GET / HTTP/2.0\r\n\r\n"},
        {"no-target", "GET  HTTP/1.1\r\n\r\n"},
        {"incomplete", "GET /healthz HTTP/1.1\r\nHost: x\r\n"},
        {"pipelined", "GET /healthz HTTP/1.1\r\n\r\nGET /metrics HTTP/1.1\r\n\r\n"},
    };
    for (size_t index = 0; index < sizeof requests / sizeof requests[0]; index++)
        write_seed("http", requests[index][0], requests[index][1], strlen(requests[index][1]));
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: make_corpus DIRECTORY\n");
        return 2;
    }
    root = argv[1];
    if (mkdir(root, 0755) != 0 && errno != EEXIST) {
        fprintf(stderr, "make_corpus: cannot create %s: %s\n", root, strerror(errno));
        return 1;
    }
    wire_seeds();
    safetensors_seeds();
    http_seeds();
    return 0;
}
