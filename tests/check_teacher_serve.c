/*
 * teacher-server serve, end to end through the real binary.
 *
 * Once per test case the runner writes a randomly initialised tiny ViT
 * (TEACHER_SPEC), and a small MLP (MLP_SPEC) for the head tests, into a
 * fresh temp directory as checkpoints of the first 512 training and 256
 * test examples of the real Fashion-MNIST, view "full"; the tests that
 * need it skip with a message when the dataset is not installed.  Each test starts its own
 * `teacher-server serve` on an ipc:// path in that directory and an ephemeral HTTP port
 * (serve_fixture), talks to it over DEALER sockets whose every receive is bounded, and stops it
 * with SIGTERM in the checked teardown, which also asserts that it exited 0: under `make
 * check-asan` the server is the ASan binary, so a leak at exit fails the test that left it.  A
 * failed assertion in fork mode skips the teardown, and the parent-death signal set by
 * serve_fixture kills the server instead.
 *
 * Covers: the Hello's fields against the checkpoint and dataset; logits,
 * hidden and tokens equal to an in-process forward pass of the same ids in
 * the same batch, bit for bit in F32 and within the format's rounding in
 * F16 and BF16; top-k values, classes and tail mass; two concurrent clients
 * pipelining requests without their replies mixing; bad input of every
 * kind answered with the right Error code (or dropped), counted by code in
 * /metrics, with the server answering a correct request after each; BUSY
 * under a burst with every request answered exactly once; a graceful stop
 * that finishes in-flight work, says Bye and exits 0; start-up errors with
 * their exit codes; /healthz and /readyz.  Heads: the Hello lists "hidden",
 * a HeadRequest gets the checkpoint's head bit for bit (ViT and MLP), other
 * features and --lend-head off are answered NOT_FOUND and counted, and
 * `teacher-server query --head` prints the head or says why not.  Coalescing
 * (--max-batch): requests of three clients queued behind a slow pass share
 * forward batches that take turns over the clients, each reply is its rows of
 * an in-process pass over the batch bit for bit and within float rounding of
 * the --max-batch 1 reply (byte-identical for a request that ran alone), and
 * bad requests among them get their Errors.
 */
#include "cm_blas.h"
#include "cm_dataset.h"
#include "cm_file.h"
#include "cm_model.h"
#include "cm_rng.h"
#include "cm_sha256.h"
#include "cm_wire.h"
#include "cm_zwire.h"
#include "serve_fixture.h"
#include "test_process.h"
#include "test_util.h"

#include <arpa/inet.h>
#include <check.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define TEACHER_SPEC "vit:image=28x28,patch=7,dim=16,depth=1,heads=2,mlp=32"
#define MLP_SPEC     "mlp:784-32-16-10" /* two hidden layers: its head is fc2, not fc1 */

enum {
    MAX_TRAIN = 512, /* examples the teacher serves, per split */
    MAX_TEST = 256,
    CLASSES = 10,
    HIDDEN = 16,        /* the ViT's dim */
    TOKENS = 17,        /* 16 patches and the class token */
    MAX_BATCH = 256,    /* the in-process model's batch, also the server's compute batch */
    MAX_EXAMPLES = 300, /* --max-examples of the standard server */
    TOP_K = 3,
    CLIENT_REQUESTS = 50, /* per client in the two-client test */
    CLIENT_WINDOW = 4,    /* requests each keeps in flight */
    CLIENT_MAX_IDS = 64,  /* ids per request there */
    BURST_REQUESTS = 24,  /* sent at once in the BUSY test */
    BURST_IDS = 2048,     /* ids per request there */
    RANDOM_HEADERS = 6,   /* seeds of garbage headers */
    METRICS_BYTES = 1 << 16,
    QUIET_MS = 500 /* how long "no answer" is waited for */
};

/* Set up once per test case, in the runner process (unchecked fixture). */
static cm_dataset_t *dataset; /* NULL when Fashion-MNIST is not installed */
static char directory[256];
static char checkpoint[300];
static char checkpoint_sha256[65];
static char mlp_checkpoint[300];

/* Per test (checked fixture). */
static serve_fixture_t server;
static void *context;
static void *client;

/* The subset every server serves (MAX_TRAIN, MAX_TEST) and the limits most tests use
 * (MAX_EXAMPLES, 1 MiB messages, a queue of 8). */
static const char *const subset_options[] = {"--max-train", "512", "--max-test", "256", NULL};
static const char *const standard_options[] = {
    "--max-examples", "300", "--max-message-mb", "1", "--queue", "8", NULL};

/* ---------------------------------------------------------------- fixtures */

static void setup_teacher(void) {
    test_util_temp_dir(directory, sizeof directory);
    ck_assert_msg(directory[0], "cannot create a temp directory");
    snprintf(checkpoint, sizeof checkpoint, "%s/teacher.safetensors", directory);
    snprintf(mlp_checkpoint, sizeof mlp_checkpoint, "%s/mlp.safetensors", directory);
    if (!test_util_have_fashion_mnist()) return;
    cm_dataset_options_t options = {.max_train = MAX_TRAIN, .max_test = MAX_TEST};
    ck_assert_msg(cm_dataset_load(&dataset, "fashion-mnist", "full", &options) == CM_OK, "%s",
                  cm_last_error());
    ck_assert_msg(serve_fixture_write_checkpoint(checkpoint, TEACHER_SPEC, dataset, 11) == CM_OK,
                  "%s", cm_last_error());
    ck_assert_msg(serve_fixture_write_checkpoint(mlp_checkpoint, MLP_SPEC, dataset, 12) == CM_OK,
                  "%s", cm_last_error());
    void *bytes = NULL;
    size_t size = 0;
    ck_assert_msg(cm_file_read_all(checkpoint, &bytes, &size) == CM_OK, "%s", cm_last_error());
    cm_sha256_t hash;
    uint8_t digest[32];
    cm_sha256_init(&hash);
    cm_sha256_update(&hash, bytes, size);
    cm_sha256_final(&hash, digest);
    cm_sha256_hex(digest, checkpoint_sha256);
    free(bytes);
}

static void teardown_teacher(void) {
    cm_dataset_free(&dataset);
    if (directory[0]) test_util_remove_tree(directory);
}

static void setup_test(void) {
    memset(&server, 0, sizeof server);
    cm_blas_set_threads(1);
    context = zmq_ctx_new();
    ck_assert_ptr_nonnull(context);
    client = NULL;
}

static void teardown_test(void) {
    if (client) zmq_close(client);
    client = NULL;
    int running = server.pid > 0;
    int exit_status = serve_fixture_stop(&server, SIGTERM, SERVE_FIXTURE_TIMEOUT_MS);
    zmq_ctx_term(context);
    context = NULL;
    if (running) {
        char log[4096];
        serve_fixture_log(&server, log, sizeof log);
        ck_assert_msg(exit_status == 0, "the server exited with status %d after SIGTERM: %s",
                      exit_status, log);
    }
}

static int skip_without_dataset(const char *test) {
    if (dataset) return 0;
    fprintf(stderr, "skipping %s: Fashion-MNIST is not installed (make deps)\n", test);
    return 1;
}

/* Starts a teacher from `path` with the subset options plus `options`; connects `client`. */
static void start_teacher_from(const char *path, const char *const *options) {
    const char *arguments[SERVE_FIXTURE_MAX_ARGS + 1];
    int count = 0;
    for (int index = 0; subset_options[index]; index++) arguments[count++] = subset_options[index];
    for (int index = 0; options && options[index]; index++) arguments[count++] = options[index];
    arguments[count] = NULL;
    char why[4096];
    int started = serve_fixture_start(&server, directory, path, arguments, why, sizeof why);
    ck_assert_msg(started == 0, "%s", why);
    client = serve_fixture_connect(context, server.endpoint);
    ck_assert_msg(client, "cannot connect to %s", server.endpoint);
}

/* The standard teacher: the ViT checkpoint. */
static void start_teacher(const char *const *options) { start_teacher_from(checkpoint, options); }

/* Stops the running teacher with SIGTERM, checking that it exits 0. */
static void stop_teacher(void) {
    zmq_close(client);
    client = NULL;
    int exit_status = serve_fixture_stop(&server, SIGTERM, SERVE_FIXTURE_TIMEOUT_MS);
    char log[4096];
    serve_fixture_log(&server, log, sizeof log);
    ck_assert_msg(exit_status == 0, "the server exited with status %d after SIGTERM: %s",
                  exit_status, log);
}

/* ---------------------------------------------------------------- helpers */

static int split_size(cm_split_t split) { return dataset->splits[split].count; }

/* Fills *message with a BatchRequest; `outputs` is NULL-terminated; everything is borrowed. */
static void make_request(cm_wire_message_t *message, uint64_t request_id, cm_split_t split,
                         const int32_t *ids, int count, const char *const *outputs,
                         cm_dtype_t encoding, int top_k) {
    cm_wire_message_init(message, CM_WIRE_BATCH_REQUEST, request_id);
    cm_wire_batch_request_t *request = &message->batch_request;
    request->split = split;
    request->example_ids = ids;
    request->example_count = count;
    for (int index = 0; outputs[index]; index++)
        request->outputs[request->output_count++] = outputs[index];
    request->encoding = encoding;
    request->top_k = top_k;
}

static void send_request(void *socket, uint64_t request_id, cm_split_t split, const int32_t *ids,
                         int count, const char *const *outputs, cm_dtype_t encoding, int top_k) {
    cm_wire_message_t message;
    make_request(&message, request_id, split, ids, count, outputs, encoding, top_k);
    ck_assert_msg(cm_zwire_send(socket, NULL, &message, 0, NULL) == CM_OK, "%s", cm_last_error());
}

static void send_frames(void *socket, const cm_wire_frame_t *frames, int frame_count) {
    ck_assert_msg(serve_fixture_send_frames(socket, frames, frame_count) == 0, "cannot send: %s",
                  zmq_strerror(zmq_errno()));
}

/* Sends the frames cm_wire encodes `message` into. */
static void send_encoded(void *socket, const cm_wire_message_t *message) {
    cm_wire_encoded_t encoded;
    ck_assert_msg(cm_wire_encode(&encoded, message) == CM_OK, "%s", cm_last_error());
    send_frames(socket, encoded.frames, encoded.frame_count);
    cm_wire_encoded_deinit(&encoded);
}

/* Receives the next answer into *message, failing the test on a timeout. */
static void receive(void *socket, cm_zwire_received_t *received, cm_wire_message_t *message) {
    cm_status_t status = serve_fixture_receive(socket, -1, received, message);
    ck_assert_msg(status == CM_OK, "no answer from the teacher: %s (%s)", cm_status_name(status),
                  cm_last_error());
}

/* Says the trainer's Hello with `request_id`; the teacher's Hello comes back in *answer. */
static void greet(uint64_t request_id, cm_zwire_received_t *received, cm_wire_message_t *answer) {
    cm_wire_message_t hello;
    cm_wire_message_init(&hello, CM_WIRE_HELLO, request_id);
    hello.hello.peer = CM_WIRE_PEER_TRAINER;
    hello.hello.peer_name = "check_teacher_serve";
    hello.hello.limits = cm_wire_limits_default();
    ck_assert_int_eq(cm_zwire_send(client, NULL, &hello, 0, NULL), CM_OK);
    receive(client, received, answer);
    ck_assert_int_eq(answer->kind, CM_WIRE_HELLO);
}

/* The next answer must be an Error with `code` answering `request_id`. */
static void expect_error(void *socket, uint64_t request_id, cm_status_t code, const char *what) {
    cm_zwire_received_t received;
    cm_wire_message_t message;
    receive(socket, &received, &message);
    ck_assert_msg(message.kind == CM_WIRE_ERROR, "%s: answered with message kind %d, not an Error",
                  what, message.kind);
    ck_assert_msg(message.error.code == code, "%s: answered %s (%s), expected %s", what,
                  cm_status_name(message.error.code), message.error.message, cm_status_name(code));
    ck_assert_msg(message.request_id == request_id, "%s: Error answers request %llu, not %llu",
                  what, (unsigned long long)message.request_id, (unsigned long long)request_id);
    ck_assert_msg(strlen(message.error.message) > 0, "%s: the Error has no sentence", what);
    serve_fixture_release(&received, &message);
}

/* A correct request right now gets a correct reply. */
static void expect_alive(void *socket, const char *after) {
    static uint64_t request_id = 1u << 20;
    const int32_t ids[] = {3, 1, 4, 1, 5};
    send_request(socket, ++request_id, CM_SPLIT_TEST, ids, 5, (const char *[]){"logits", NULL},
                 CM_DTYPE_F32, 0);
    cm_zwire_received_t received;
    cm_wire_message_t message;
    receive(socket, &received, &message);
    ck_assert_msg(message.kind == CM_WIRE_BATCH_REPLY, "after %s: a good request got kind %d (%s)",
                  after, message.kind,
                  message.kind == CM_WIRE_ERROR ? message.error.message : "not an Error");
    ck_assert_msg(message.request_id == request_id, "after %s: reply to %llu, not %llu", after,
                  (unsigned long long)message.request_id, (unsigned long long)request_id);
    ck_assert_int_eq(message.batch_reply.example_count, 5);
    ck_assert_mem_eq(message.batch_reply.example_ids, ids, sizeof ids);
    serve_fixture_release(&received, &message);
}

/* The tensor of `name` and `layout` in a reply; fails the test if it is missing. */
static const cm_wire_tensor_t *find_tensor(const cm_wire_batch_reply_t *reply, const char *name,
                                           cm_wire_layout_t layout) {
    for (int index = 0; index < reply->tensor_count; index++)
        if (strcmp(reply->tensors[index].name, name) == 0 && reply->tensors[index].layout == layout)
            return &reply->tensors[index];
    ck_abort_msg("the reply has no tensor '%s' with layout %d", name, layout);
    return NULL;
}

/* Checks a tensor's dtype, encoding and shape (ndim values after `ndim`). */
static void check_shape(const cm_wire_tensor_t *tensor, cm_dtype_t dtype, cm_dtype_t encoding,
                        int ndim, int64_t dim0, int64_t dim1, int64_t dim2) {
    const int64_t want[] = {dim0, dim1, dim2};
    ck_assert_msg(tensor->dtype == dtype && tensor->encoding == encoding,
                  "tensor '%s' is %s encoded as %s", tensor->name, cm_dtype_name(tensor->dtype),
                  cm_dtype_name(tensor->encoding));
    ck_assert_msg(tensor->ndim == ndim, "tensor '%s' has %d dimensions, not %d", tensor->name,
                  tensor->ndim, ndim);
    for (int dim = 0; dim < ndim; dim++)
        ck_assert_msg(tensor->shape[dim] == want[dim], "tensor '%s' dimension %d is %lld, not %lld",
                      tensor->name, dim, (long long)tensor->shape[dim], (long long)want[dim]);
}

/*
 * A tensor's `count` elements as floats (malloc'd), converted from its encoding; I32
 * tensors keep their bits (read them back with memcpy).  Received frames sit at any
 * address inside ZeroMQ's buffers, odd ones included, so the bytes are copied to
 * aligned memory before they are read as anything wider than a byte.
 */
static float *tensor_values(const cm_wire_tensor_t *tensor, size_t count) {
    ck_assert_uint_eq(tensor->bytes, count * cm_dtype_size(tensor->encoding));
    float *values = malloc(sizeof(float) * count);
    ck_assert_ptr_nonnull(values);
    if (tensor->encoding == CM_DTYPE_F32 || tensor->encoding == CM_DTYPE_I32) {
        memcpy(values, tensor->data, sizeof(float) * count);
        return values;
    }
    uint16_t *halves = malloc(sizeof(uint16_t) * count);
    ck_assert_ptr_nonnull(halves);
    memcpy(halves, tensor->data, sizeof(uint16_t) * count);
    if (tensor->encoding == CM_DTYPE_F16)
        cm_wire_f16_to_f32(values, halves, count);
    else
        cm_wire_bf16_to_f32(values, halves, count);
    free(halves);
    return values;
}

/* Every got[i] within relative * max(|want[i]|, floor) of want[i]. */
static void check_close(const float *got, const float *want, size_t count, double relative,
                        double floor, const char *what) {
    for (size_t index = 0; index < count; index++) {
        double allowed = relative * fmax(fabs((double)want[index]), floor);
        ck_assert_msg(fabs((double)got[index] - (double)want[index]) <= allowed,
                      "%s[%zu] is %.9g, in process %.9g (allowed error %.3g)", what, index,
                      (double)got[index], (double)want[index], allowed);
    }
}

/* What the model computes in process for some ids, as one batch. */
typedef struct {
    float *logits; /* [count][CLASSES] */
    float *hidden; /* [count][HIDDEN] */
    float *tokens; /* [count][TOKENS][HIDDEN] */
} reference_t;

static void reference_forward(cm_model_t *model, cm_split_t split, const int32_t *ids, int count,
                              reference_t *reference) {
    ck_assert_int_le(count, MAX_BATCH);
    int features = dataset->features;
    float *inputs = malloc(sizeof(float) * (size_t)count * (size_t)features);
    ck_assert_ptr_nonnull(inputs);
    cm_dataset_gather(dataset, split, ids, count, inputs); /* ids are rows: no ids.npy */
    const float *logits = cm_model_forward(model, inputs, count);
    int hidden_width = 0, tokens_width = 0, token_count = 0;
    const float *hidden = cm_model_feature(model, "hidden", &hidden_width, NULL);
    const float *tokens = cm_model_feature(model, "tokens", &tokens_width, &token_count);
    ck_assert_int_eq(hidden_width, HIDDEN);
    ck_assert_int_eq(tokens_width, TOKENS * HIDDEN);
    ck_assert_int_eq(token_count, TOKENS);
    size_t rows = (size_t)count;
    reference->logits = malloc(sizeof(float) * rows * CLASSES);
    reference->hidden = malloc(sizeof(float) * rows * HIDDEN);
    reference->tokens = malloc(sizeof(float) * rows * TOKENS * HIDDEN);
    ck_assert(reference->logits && reference->hidden && reference->tokens);
    memcpy(reference->logits, logits, sizeof(float) * rows * CLASSES);
    memcpy(reference->hidden, hidden, sizeof(float) * rows * HIDDEN);
    memcpy(reference->tokens, tokens, sizeof(float) * rows * TOKENS * HIDDEN);
    free(inputs);
}

static void reference_free(reference_t *reference) {
    free(reference->logits);
    free(reference->hidden);
    free(reference->tokens);
}

static cm_model_t *load_teacher_in_process(void) {
    cm_model_t *model = NULL;
    ck_assert_msg(cm_model_load(checkpoint, MAX_BATCH, &model, NULL) == CM_OK, "%s",
                  cm_last_error());
    return model;
}

/* Value of one series ("name{labels}") in Prometheus text, or -1 when absent. */
static double metric_value(const char *metrics, const char *series) {
    size_t length = strlen(series);
    const char *line = metrics;
    while (*line) {
        if (strncmp(line, series, length) == 0 && line[length] == ' ')
            return atof(line + length + 1);
        const char *newline = strchr(line, '\n');
        if (!newline) break;
        line = newline + 1;
    }
    return -1.0;
}

/* ---------------------------------------------------------------- 1. Hello, health */

START_TEST(test_hello_describes_the_teacher) {
    if (skip_without_dataset(__func__)) return;
    start_teacher(standard_options);
    cm_zwire_received_t received;
    cm_wire_message_t answer;
    greet(7, &received, &answer);
    ck_assert_uint_eq(answer.request_id, 7);
    ck_assert_uint_eq(answer.version_major, CM_WIRE_VERSION_MAJOR);
    const cm_wire_hello_t *teacher = &answer.hello;
    cm_model_spec_t spec;
    char spec_text[CM_MODEL_SPEC_MAX];
    ck_assert_int_eq(cm_model_spec_parse(TEACHER_SPEC, &spec), CM_OK);
    cm_model_spec_format(&spec, spec_text, sizeof spec_text);
    ck_assert_int_eq(teacher->peer, CM_WIRE_PEER_TEACHER);
    ck_assert_str_eq(teacher->peer_name, "teacher"); /* the file name without .safetensors */
    ck_assert_int_eq(teacher->role, CM_WIRE_ROLE_FOUNDATION);
    ck_assert_str_eq(teacher->model_id, spec_text);
    ck_assert_str_eq(teacher->model_sha256, checkpoint_sha256);
    ck_assert_str_eq(teacher->view, "full");
    ck_assert_str_eq(teacher->dataset_name, "fashion-mnist");
    ck_assert_str_eq(teacher->dataset_fingerprint, dataset->fingerprint);
    ck_assert_int_eq(teacher->classes, CLASSES);
    ck_assert_int_eq(teacher->output_count, 3);
    const struct {
        const char *name;
        int ndim;
        int64_t shape[2];
    } outputs[] = {
        {"logits", 1, {CLASSES}}, {"hidden", 1, {HIDDEN}}, {"tokens", 2, {TOKENS, HIDDEN}}};
    for (int index = 0; index < 3; index++) {
        const cm_wire_output_t *output = &teacher->outputs[index];
        ck_assert_str_eq(output->name, outputs[index].name);
        ck_assert_int_eq(output->dtype, CM_DTYPE_F32);
        ck_assert_int_eq(output->ndim, outputs[index].ndim);
        for (int dim = 0; dim < output->ndim; dim++)
            ck_assert_int_eq(output->shape[dim], outputs[index].shape[dim]);
    }
    ck_assert_uint_eq(teacher->limits.max_examples, MAX_EXAMPLES);
    ck_assert_uint_eq(teacher->limits.max_message_bytes, 1u << 20);
    ck_assert_uint_eq(teacher->limits.max_in_flight, 8);
    ck_assert_int_eq(teacher->head_count, 1); /* --lend-head on by default */
    ck_assert_str_eq(teacher->heads[0], "hidden");
    ck_assert_int_eq(teacher->split_count, 2); /* the splits of its dataset (minor 2) */
    ck_assert_int_eq(teacher->splits[0], CM_SPLIT_TRAIN);
    ck_assert_int_eq(teacher->splits[1], CM_SPLIT_TEST);
    serve_fixture_release(&received, &answer);

    char body[256];
    ck_assert_int_eq(test_util_http_get(server.http_port, "/readyz", body, sizeof body,
                                        SERVE_FIXTURE_TIMEOUT_MS),
                     200);
    ck_assert_str_eq(body, "ready\n");
    ck_assert_int_eq(test_util_http_get(server.http_port, "/healthz", body, sizeof body,
                                        SERVE_FIXTURE_TIMEOUT_MS),
                     200);
    ck_assert_int_eq(test_util_http_get(server.http_port, "/nothing-here", body, sizeof body,
                                        SERVE_FIXTURE_TIMEOUT_MS),
                     404);
}
END_TEST

/* ---------------------------------------------------------------- 2. outputs */

/* Asks for all three outputs of `ids` in `encoding` and compares them with the in-process pass. */
static void check_outputs(cm_split_t split, const int32_t *ids, int count, cm_dtype_t encoding,
                          const reference_t *reference) {
    static uint64_t request_id = 100;
    send_request(client, ++request_id, split, ids, count,
                 (const char *[]){"logits", "hidden", "tokens", NULL}, encoding, 0);
    cm_zwire_received_t received;
    cm_wire_message_t message;
    receive(client, &received, &message);
    ck_assert_msg(message.kind == CM_WIRE_BATCH_REPLY, "got kind %d: %s", message.kind,
                  message.kind == CM_WIRE_ERROR ? message.error.message : "");
    const cm_wire_batch_reply_t *reply = &message.batch_reply;
    ck_assert_uint_eq(message.request_id, request_id);
    ck_assert_int_eq(reply->split, split);
    ck_assert_int_eq(reply->example_count, count);
    ck_assert_mem_eq(reply->example_ids, ids, sizeof(int32_t) * (size_t)count);
    ck_assert_int_eq(reply->tensor_count, 3);
    const cm_wire_tensor_t *logits = find_tensor(reply, "logits", CM_WIRE_DENSE);
    const cm_wire_tensor_t *hidden = find_tensor(reply, "hidden", CM_WIRE_DENSE);
    const cm_wire_tensor_t *tokens = find_tensor(reply, "tokens", CM_WIRE_DENSE);
    check_shape(logits, CM_DTYPE_F32, encoding, 2, count, CLASSES, 0);
    check_shape(hidden, CM_DTYPE_F32, encoding, 2, count, HIDDEN, 0);
    check_shape(tokens, CM_DTYPE_F32, encoding, 3, count, TOKENS, HIDDEN);
    const struct {
        const cm_wire_tensor_t *tensor;
        const float *want;
        size_t count;
    } outputs[] = {{logits, reference->logits, (size_t)count * CLASSES},
                   {hidden, reference->hidden, (size_t)count * HIDDEN},
                   {tokens, reference->tokens, (size_t)count * TOKENS * HIDDEN}};
    for (int output = 0; output < 3; output++) {
        float *got = tensor_values(outputs[output].tensor, outputs[output].count);
        char what[64];
        snprintf(what, sizeof what, "%s %s (%s)", cm_split_name(split),
                 outputs[output].tensor->name, cm_dtype_name(encoding));
        if (encoding == CM_DTYPE_F32)
            ck_assert_msg(
                memcmp(got, outputs[output].want, sizeof(float) * outputs[output].count) == 0,
                "%s differs from the in-process forward pass", what);
        else /* round to nearest: half an ulp, 2^-11 (F16) or 2^-8 (BF16); allow twice that */
            check_close(got, outputs[output].want, outputs[output].count,
                        encoding == CM_DTYPE_F16 ? 0x1p-10 : 0x1p-7, 1e-3, what);
        free(got);
    }
    serve_fixture_release(&received, &message);
}

/* Asks for the top-k logits of `ids` and checks them against the in-process logits. */
static void check_top_k(cm_split_t split, const int32_t *ids, int count,
                        const reference_t *reference) {
    send_request(client, 99, split, ids, count, (const char *[]){"logits", NULL}, CM_DTYPE_F32,
                 TOP_K);
    cm_zwire_received_t received;
    cm_wire_message_t message;
    receive(client, &received, &message);
    ck_assert_msg(message.kind == CM_WIRE_BATCH_REPLY, "top-k request got kind %d", message.kind);
    const cm_wire_batch_reply_t *reply = &message.batch_reply;
    ck_assert_int_eq(reply->tensor_count, 3);
    const cm_wire_tensor_t *values = find_tensor(reply, "logits", CM_WIRE_TOPK_VALUES);
    const cm_wire_tensor_t *indices = find_tensor(reply, "logits", CM_WIRE_TOPK_INDICES);
    const cm_wire_tensor_t *tail = find_tensor(reply, "logits", CM_WIRE_TAIL_MASS);
    check_shape(values, CM_DTYPE_F32, CM_DTYPE_F32, 2, count, TOP_K, 0);
    check_shape(indices, CM_DTYPE_I32, CM_DTYPE_I32, 2, count, TOP_K, 0);
    check_shape(tail, CM_DTYPE_F32, CM_DTYPE_F32, 1, count, 0, 0);
    ck_assert_uint_eq(indices->bytes, sizeof(int32_t) * (size_t)count * TOP_K);
    float *top_values = tensor_values(values, (size_t)count * TOP_K);
    float *tail_mass = tensor_values(tail, (size_t)count);
    int32_t *top_classes = (int32_t *)tensor_values(indices, (size_t)count * TOP_K);
    for (int row = 0; row < count; row++) {
        const float *logits = reference->logits + (size_t)row * CLASSES;
        int order[CLASSES];
        for (int class = 0; class < CLASSES; class ++) order[class] = class;
        for (int slot = 0; slot < TOP_K; slot++) /* selection sort, ties to the lower class */
            for (int later = slot + 1; later < CLASSES; later++)
                if (logits[order[later]] > logits[order[slot]] ||
                    (logits[order[later]] == logits[order[slot]] && order[later] < order[slot])) {
                    int swap = order[slot];
                    order[slot] = order[later];
                    order[later] = swap;
                }
        double max_logit = logits[order[0]], total = 0.0, kept = 0.0;
        for (int class = 0; class < CLASSES; class ++) total += exp(logits[class] - max_logit);
        for (int slot = 0; slot < TOP_K; slot++) {
            ck_assert_msg(top_classes[row * TOP_K + slot] == order[slot],
                          "row %d slot %d: class %d, in process %d", row, slot,
                          top_classes[row * TOP_K + slot], order[slot]);
            ck_assert_msg(top_values[row * TOP_K + slot] == logits[order[slot]],
                          "row %d slot %d: value %.9g, in process %.9g", row, slot,
                          (double)top_values[row * TOP_K + slot], (double)logits[order[slot]]);
            kept += exp(logits[order[slot]] - max_logit);
        }
        double want = 1.0 - kept / total;
        ck_assert_msg(fabs(tail_mass[row] - want) <= 1e-6 && tail_mass[row] >= 0.0f &&
                          tail_mass[row] <= 1.0f,
                      "row %d: tail mass %.9g, in process %.9g", row, (double)tail_mass[row], want);
    }
    free(top_values);
    free(tail_mass);
    free(top_classes);
    serve_fixture_release(&received, &message);
}

START_TEST(test_outputs_match_in_process_forward) {
    if (skip_without_dataset(__func__)) return;
    start_teacher(standard_options);
    cm_model_t *model = load_teacher_in_process();
    /* 200 shuffled training ids, and the whole test split backwards. */
    int32_t train_ids[MAX_TRAIN], test_ids[MAX_TEST];
    for (int id = 0; id < MAX_TRAIN; id++) train_ids[id] = id;
    for (int id = 0; id < MAX_TEST; id++) test_ids[id] = MAX_TEST - 1 - id;
    cm_rng_t rng;
    cm_rng_seed(&rng, 5);
    cm_rng_shuffle(&rng, train_ids, MAX_TRAIN);
    const struct {
        cm_split_t split;
        const int32_t *ids;
        int count;
    } cases[] = {{CM_SPLIT_TRAIN, train_ids, 200}, {CM_SPLIT_TEST, test_ids, MAX_TEST}};
    for (int index = 0; index < 2; index++) {
        reference_t reference;
        reference_forward(model, cases[index].split, cases[index].ids, cases[index].count,
                          &reference);
        const cm_dtype_t encodings[] = {CM_DTYPE_F32, CM_DTYPE_F16, CM_DTYPE_BF16};
        for (int encoding = 0; encoding < 3; encoding++)
            check_outputs(cases[index].split, cases[index].ids, cases[index].count,
                          encodings[encoding], &reference);
        check_top_k(cases[index].split, cases[index].ids, cases[index].count, &reference);
        reference_free(&reference);
    }
    cm_model_free(&model);
}
END_TEST

/* ---------------------------------------------------------------- 3. two clients */

/* One client thread: its own socket, requests pipelined, every reply checked. */
typedef struct {
    void *context;
    const char *endpoint;
    cm_split_t split;
    int split_size;
    const float *reference; /* [split_size][CLASSES], in-process logits */
    uint64_t first_request_id;
    uint64_t seed;
    int replies;       /* correct replies received */
    char failure[512]; /* "" while all is well */
} client_run_t;

typedef struct {
    uint64_t request_id; /* 0: free slot */
    int count;
    int32_t ids[CLIENT_MAX_IDS];
} pending_t;

/* Checks one reply against the request it answers; 0 when it is right, else a sentence in run. */
static int check_client_reply(client_run_t *run, pending_t *pending,
                              const cm_wire_message_t *answer) {
    if (answer->kind != CM_WIRE_BATCH_REPLY) {
        snprintf(run->failure, sizeof run->failure, "request %llu answered with kind %d (%s)",
                 (unsigned long long)answer->request_id, answer->kind,
                 answer->kind == CM_WIRE_ERROR ? answer->error.message : "");
        return -1;
    }
    pending_t *request = NULL;
    for (int slot = 0; slot < CLIENT_WINDOW; slot++)
        if (pending[slot].request_id && pending[slot].request_id == answer->request_id)
            request = &pending[slot];
    const cm_wire_batch_reply_t *reply = &answer->batch_reply;
    if (!request) {
        snprintf(run->failure, sizeof run->failure, "a reply to request %llu, which is not ours",
                 (unsigned long long)answer->request_id);
        return -1;
    }
    if (reply->split != run->split || reply->example_count != request->count ||
        memcmp(reply->example_ids, request->ids, sizeof(int32_t) * (size_t)request->count) != 0 ||
        reply->tensor_count != 1 || reply->tensors[0].encoding != CM_DTYPE_F32 ||
        reply->tensors[0].bytes != sizeof(float) * (size_t)request->count * CLASSES) {
        snprintf(run->failure, sizeof run->failure,
                 "the reply to request %llu does not carry its split, ids or logits",
                 (unsigned long long)answer->request_id);
        return -1;
    }
    const char *logits = reply->tensors[0].data; /* at any address: see tensor_values */
    for (int row = 0; row < request->count; row++)
        for (int class = 0; class < CLASSES; class ++) {
            float got;
            memcpy(&got, logits + sizeof(float) * (size_t)(row * CLASSES + class), sizeof got);
            float want = run->reference[(size_t)request->ids[row] * CLASSES + class];
            if (fabsf(got - want) > 1e-5f + 1e-4f * fabsf(want)) {
                snprintf(run->failure, sizeof run->failure,
                         "request %llu row %d (id %d) class %d: %.9g, in process %.9g",
                         (unsigned long long)answer->request_id, row, request->ids[row], class,
                         (double)got, (double)want);
                return -1;
            }
        }
    request->request_id = 0;
    run->replies++;
    return 0;
}

static void *run_client(void *argument) {
    client_run_t *run = argument;
    void *socket = serve_fixture_connect(run->context, run->endpoint);
    if (!socket) {
        snprintf(run->failure, sizeof run->failure, "cannot connect to %s", run->endpoint);
        return NULL;
    }
    pending_t pending[CLIENT_WINDOW];
    memset(pending, 0, sizeof pending);
    cm_rng_t rng;
    cm_rng_seed(&rng, run->seed);
    int sent = 0, in_flight = 0;
    while (!run->failure[0] && (sent < CLIENT_REQUESTS || in_flight > 0)) {
        if (sent < CLIENT_REQUESTS && in_flight < CLIENT_WINDOW) {
            pending_t *slot = &pending[0];
            while (slot->request_id) slot++;
            slot->request_id = run->first_request_id + (uint64_t)sent++;
            slot->count = 1 + (int)cm_rng_below(&rng, CLIENT_MAX_IDS);
            for (int row = 0; row < slot->count; row++)
                slot->ids[row] = (int32_t)cm_rng_below(&rng, (uint32_t)run->split_size);
            cm_wire_message_t request;
            make_request(&request, slot->request_id, run->split, slot->ids, slot->count,
                         (const char *[]){"logits", NULL}, CM_DTYPE_F32, 0);
            if (cm_zwire_send(socket, NULL, &request, 0, NULL) != CM_OK) {
                snprintf(run->failure, sizeof run->failure, "send failed: %s", cm_last_error());
                break;
            }
            in_flight++;
            continue;
        }
        cm_zwire_received_t received;
        cm_wire_message_t answer;
        cm_status_t status = serve_fixture_receive(socket, -1, &received, &answer);
        if (status != CM_OK) {
            snprintf(run->failure, sizeof run->failure, "after %d replies: %s", run->replies,
                     cm_last_error());
            break;
        }
        if (check_client_reply(run, pending, &answer) == 0) in_flight--;
        serve_fixture_release(&received, &answer);
    }
    zmq_close(socket);
    return NULL;
}

START_TEST(test_two_clients_get_their_own_replies) {
    if (skip_without_dataset(__func__)) return;
    start_teacher(standard_options);
    cm_model_t *model = load_teacher_in_process();
    float *references[2]; /* train and test, the splits the wire carries */
    for (int split = 0; split < 2; split++) {
        int count = split_size((cm_split_t)split);
        references[split] = malloc(sizeof(float) * (size_t)count * CLASSES);
        ck_assert_ptr_nonnull(references[split]);
        for (int start = 0; start < count; start += MAX_BATCH) {
            int batch = count - start < MAX_BATCH ? count - start : MAX_BATCH;
            float *inputs = malloc(sizeof(float) * (size_t)batch * (size_t)dataset->features);
            ck_assert_ptr_nonnull(inputs);
            cm_dataset_gather_range(dataset, (cm_split_t)split, start, batch, inputs);
            const float *logits = cm_model_forward(model, inputs, batch);
            free(inputs);
            memcpy(references[split] + (size_t)start * CLASSES, logits,
                   sizeof(float) * (size_t)batch * CLASSES);
        }
    }
    cm_model_free(&model);
    client_run_t runs[2];
    pthread_t threads[2];
    for (int index = 0; index < 2; index++) {
        cm_split_t split = index == 0 ? CM_SPLIT_TRAIN : CM_SPLIT_TEST;
        runs[index] = (client_run_t){.context = context,
                                     .endpoint = server.endpoint,
                                     .split = split,
                                     .split_size = split_size(split),
                                     .reference = references[split],
                                     .first_request_id = 1 + 1000 * (uint64_t)index,
                                     .seed = 21 + (uint64_t)index};
        ck_assert_int_eq(pthread_create(&threads[index], NULL, run_client, &runs[index]), 0);
    }
    for (int index = 0; index < 2; index++) pthread_join(threads[index], NULL);
    for (int split = 0; split < 2; split++) free(references[split]);
    for (int index = 0; index < 2; index++) {
        ck_assert_msg(!runs[index].failure[0], "client %d: %s", index, runs[index].failure);
        ck_assert_int_eq(runs[index].replies, CLIENT_REQUESTS);
    }
}
END_TEST

/* ---------------------------------------------------------------- 4. bad input */

START_TEST(test_bad_input_is_answered_counted_and_survived) {
    if (skip_without_dataset(__func__)) return;
    start_teacher(standard_options);
    int expected[CM_STATUS_COUNT] = {0};
    const cm_wire_limits_t server_limits = {MAX_EXAMPLES, 1u << 20, 8};
    const int32_t good_ids[] = {0, 1, 2};
    const char *const logits_only[] = {"logits", NULL};

    /* Another major version: field 1 (version_major) = 2, field 13 (Heartbeat) empty. */
    static const uint8_t version_two[] = {0x08, 0x02, 0x6a, 0x00};
    send_frames(client, &(cm_wire_frame_t){version_two, sizeof version_two}, 1);
    expect_error(client, 0, CM_ERR_VERSION, "protocol major version 2");
    expected[CM_ERR_VERSION]++;
    expect_alive(client, "a major version 2 message");

    /* Garbage headers; the expected code is what cm_wire makes of the same bytes. */
    cm_rng_t rng;
    cm_rng_seed(&rng, 3);
    int garbage_sent = 0;
    for (int seed = 0; seed < RANDOM_HEADERS; seed++) {
        uint8_t garbage[256];
        size_t length = 1 + cm_rng_below(&rng, sizeof garbage);
        for (size_t index = 0; index < length; index++) garbage[index] = (uint8_t)cm_rng_u32(&rng);
        cm_wire_frame_t frame = {garbage, length};
        cm_wire_message_t local;
        cm_status_t status = cm_wire_decode(&local, &frame, 1, &server_limits);
        uint64_t request_id = local.request_id;
        cm_wire_message_deinit(&local);
        if (status == CM_OK) continue; /* happened to be a valid message: not garbage */
        send_frames(client, &frame, 1);
        char what[64];
        snprintf(what, sizeof what, "%zu random header bytes", length);
        expect_error(client, request_id, status, what);
        expected[status]++;
        garbage_sent++;
        expect_alive(client, what);
    }
    ck_assert_int_ge(garbage_sent, RANDOM_HEADERS - 1);

    /* An empty header frame. */
    send_frames(client, &(cm_wire_frame_t){"", 0}, 1);
    expect_error(client, 0, CM_ERR_FORMAT, "an empty header");
    expected[CM_ERR_FORMAT]++;
    expect_alive(client, "an empty header");

    /* A BatchRequest followed by a frame it did not announce. */
    cm_wire_message_t request;
    make_request(&request, 41, CM_SPLIT_TEST, good_ids, 3, logits_only, CM_DTYPE_F32, 0);
    cm_wire_encoded_t encoded;
    ck_assert_int_eq(cm_wire_encode(&encoded, &request), CM_OK);
    cm_wire_frame_t frames[CM_WIRE_MAX_FRAMES + 4];
    frames[0] = encoded.frames[0];
    frames[1] = (cm_wire_frame_t){"sixteen bytes!!!", 16};
    send_frames(client, frames, 2);
    expect_error(client, 41, CM_ERR_FORMAT, "an extra frame after a BatchRequest");
    expected[CM_ERR_FORMAT]++;
    expect_alive(client, "an extra frame");

    /* More frames than any message may have (answered), and more than the server reads (dropped).
     */
    for (int index = 1; index < CM_WIRE_MAX_FRAMES + 3; index++) frames[index] = frames[1];
    send_frames(client, frames, CM_WIRE_MAX_FRAMES + 3);
    expect_error(client, 0, CM_ERR_TOO_LARGE, "too many frames");
    expected[CM_ERR_TOO_LARGE]++;
    expect_alive(client, "too many frames");
    cm_wire_frame_t many_frames[70];
    for (int index = 0; index < 70; index++) many_frames[index] = frames[index ? 1 : 0];
    send_frames(client, many_frames, 70);
    cm_zwire_received_t received;
    cm_wire_message_t answer;
    ck_assert_int_eq(serve_fixture_receive(client, QUIET_MS, &received, &answer), CM_ERR_TIMEOUT);
    expect_alive(client, "70 frames");

    /* 1.5 MB against --max-message-mb 1. */
    size_t oversized_bytes = 3u << 19;
    char *oversized = calloc(1, oversized_bytes);
    ck_assert_ptr_nonnull(oversized);
    frames[1] = (cm_wire_frame_t){oversized, oversized_bytes};
    send_frames(client, frames, 2);
    free(oversized);
    cm_wire_encoded_deinit(&encoded);
    expect_error(client, 0, CM_ERR_TOO_LARGE, "a 1.5 MB message");
    expected[CM_ERR_TOO_LARGE]++;
    expect_alive(client, "a 1.5 MB message");

    /* A BatchReply whose frame is one byte shorter than its descriptor says. */
    float logits[2 * CLASSES] = {0};
    const int32_t reply_ids[] = {0, 1};
    cm_wire_message_t reply;
    cm_wire_message_init(&reply, CM_WIRE_BATCH_REPLY, 42);
    reply.batch_reply.split = CM_SPLIT_TEST;
    reply.batch_reply.example_count = 2;
    reply.batch_reply.example_ids = reply_ids;
    reply.batch_reply.tensor_count = 1;
    reply.batch_reply.tensors[0] = (cm_wire_tensor_t){.name = "logits",
                                                      .dtype = CM_DTYPE_F32,
                                                      .encoding = CM_DTYPE_F32,
                                                      .layout = CM_WIRE_DENSE,
                                                      .ndim = 2,
                                                      .shape = {2, CLASSES},
                                                      .data = logits,
                                                      .bytes = sizeof logits};
    ck_assert_int_eq(cm_wire_encode(&encoded, &reply), CM_OK);
    encoded.frames[1].bytes--;
    send_frames(client, encoded.frames, 2);
    cm_wire_encoded_deinit(&encoded);
    expect_error(client, 42, CM_ERR_FORMAT, "a frame shorter than its descriptor");
    expected[CM_ERR_FORMAT]++;
    expect_alive(client, "a short frame");

    /* Well-formed messages a teacher does not take: a BatchReply, an Error. */
    send_encoded(client, &reply);
    expect_error(client, 42, CM_ERR_PROTOCOL, "a BatchReply sent to the teacher");
    expected[CM_ERR_PROTOCOL]++;
    cm_wire_message_t error;
    cm_wire_message_error(&error, 43, CM_ERR_BUSY, "not really");
    send_encoded(client, &error);
    expect_error(client, 43, CM_ERR_PROTOCOL, "an Error sent to the teacher");
    expected[CM_ERR_PROTOCOL]++;
    expect_alive(client, "wrong message kinds");

    /* Requests that parse but ask for what the teacher cannot give. */
    int32_t too_many[MAX_EXAMPLES + 1];
    for (int index = 0; index <= MAX_EXAMPLES; index++) too_many[index] = index % MAX_TEST;
    const struct {
        const char *what;
        const int32_t *ids;
        int count;
        const char *const *outputs;
        int top_k;
        cm_status_t code;
    } requests[] = {
        {"more ids than --max-examples", too_many, MAX_EXAMPLES + 1, logits_only, 0,
         CM_ERR_TOO_LARGE},
        {"id 256 of a 256-example split", (const int32_t[]){0, 256}, 2, logits_only, 0,
         CM_ERR_OUT_OF_RANGE},
        {"top_k beyond the classes", good_ids, 3, logits_only, CLASSES + 1, CM_ERR_OUT_OF_RANGE},
        {"an unknown output", good_ids, 3, (const char *[]){"logits", "attention", NULL}, 0,
         CM_ERR_NOT_FOUND},
    };
    for (size_t index = 0; index < sizeof requests / sizeof requests[0]; index++) {
        send_request(client, 50 + index, CM_SPLIT_TEST, requests[index].ids, requests[index].count,
                     requests[index].outputs, CM_DTYPE_F32, requests[index].top_k);
        expect_error(client, 50 + index, requests[index].code, requests[index].what);
        expected[requests[index].code]++;
        expect_alive(client, requests[index].what);
    }

    /* A split its dataset does not have (Fashion-MNIST has train and test): a sentence naming it.
     */
    for (int split = CM_SPLIT_VALID; split <= CM_SPLIT_TRANSFER; split++) {
        send_request(client, 57 + (uint64_t)split, (cm_split_t)split, good_ids, 3, logits_only,
                     CM_DTYPE_F32, 0);
        receive(client, &received, &answer);
        ck_assert_int_eq(answer.kind, CM_WIRE_ERROR);
        ck_assert_int_eq(answer.error.code, CM_ERR_NOT_FOUND);
        ck_assert_uint_eq(answer.request_id, 57 + (uint64_t)split);
        char wanted[64];
        snprintf(wanted, sizeof wanted, "has no '%s' split", cm_split_name((cm_split_t)split));
        ck_assert_msg(strstr(answer.error.message, wanted), "split %d answered: %s", split,
                      answer.error.message);
        serve_fixture_release(&received, &answer);
        expected[CM_ERR_NOT_FOUND]++;
        expect_alive(client, "a split the dataset lacks");
    }

    /*
     * A negative id, which cm_wire refuses to encode, so the bytes are made by hand:
     * Envelope{version_major 1, request_id 60, batch_request{split TEST, example_ids [-1],
     * outputs ["logits"], encoding F32}}; an int32 -1 is a 10-byte varint.
     */
    static const uint8_t negative_id[] = {
        0x08, 0x01, 0x18, 60,   0x5a, 24,   0x08, 0x02, 0x12, 10,  0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xff, 0xff, 0xff, 0x01, 0x1a, 6,    'l',  'o',  'g', 'i',  't',  's',  0x20, 0x01};
    send_frames(client, &(cm_wire_frame_t){negative_id, sizeof negative_id}, 1);
    expect_error(client, 60, CM_ERR_OUT_OF_RANGE, "a negative id");
    expected[CM_ERR_OUT_OF_RANGE]++;
    expect_alive(client, "a negative id");

    /* Every Error was counted by its code, and the other codes show 0. */
    char *metrics = malloc(METRICS_BYTES);
    ck_assert_ptr_nonnull(metrics);
    ck_assert_int_eq(test_util_http_get(server.http_port, "/metrics", metrics, METRICS_BYTES,
                                        SERVE_FIXTURE_TIMEOUT_MS),
                     200);
    for (int code = CM_OK + 1; code < CM_STATUS_COUNT; code++) {
        char series[128];
        snprintf(series, sizeof series, "committee_teacher_errors_total{code=\"%s\"}",
                 cm_status_name((cm_status_t)code));
        double counted = metric_value(metrics, series);
        ck_assert_msg(counted == expected[code], /* every code is there from the start */
                      "%s is %g, expected %d\n%s", series, counted, expected[code], metrics);
    }
    free(metrics);
}
END_TEST

/* ---------------------------------------------------------------- 4b. heads */

/* Sends a HeadRequest for `feature` with `request_id`. */
static void send_head_request(uint64_t request_id, const char *feature) {
    cm_wire_message_t request;
    cm_wire_message_init(&request, CM_WIRE_HEAD_REQUEST, request_id);
    request.head_request.feature = feature;
    ck_assert_int_eq(cm_zwire_send(client, NULL, &request, 0, NULL), CM_OK);
}

/* The parameter tensor called `name` of the checkpoint at `path`, copied into a new array. */
static float *checkpoint_tensor(const char *path, const char *name, int64_t shape[2]) {
    cm_model_t *model = NULL;
    ck_assert_msg(cm_model_load(path, 1, &model, NULL) == CM_OK, "%s", cm_last_error());
    for (int index = 0; index < cm_model_tensor_count(model); index++) {
        cm_tensor_t tensor = cm_model_tensor(model, index);
        if (strcmp(tensor.name, name) != 0) continue;
        shape[0] = tensor.shape[0];
        shape[1] = tensor.ndim == 2 ? tensor.shape[1] : 0;
        size_t bytes = sizeof(float) * (size_t)cm_tensor_elements(&tensor);
        float *copy = malloc(bytes);
        ck_assert_ptr_nonnull(copy);
        memcpy(copy, tensor.data, bytes);
        cm_model_free(&model);
        return copy;
    }
    ck_abort_msg("%s has no tensor '%s'", path, name);
    return NULL;
}

/*
 * Asks the running teacher for its "hidden" head and checks it against the tensors `weight_name`
 * and `bias_name` of the checkpoint at `path`, bit for bit.
 */
static void expect_head(uint64_t request_id, const char *path, const char *weight_name,
                        const char *bias_name) {
    send_head_request(request_id, "hidden");
    cm_zwire_received_t received;
    cm_wire_message_t answer;
    receive(client, &received, &answer);
    ck_assert_msg(answer.kind == CM_WIRE_HEAD_REPLY, "a HeadRequest got kind %d (%s)", answer.kind,
                  answer.kind == CM_WIRE_ERROR ? answer.error.message : "not an Error");
    ck_assert_uint_eq(answer.request_id, request_id);
    const cm_wire_head_reply_t *head = &answer.head_reply;
    ck_assert_str_eq(head->feature, "hidden");
    int64_t weight_shape[2], bias_shape[2];
    float *weight = checkpoint_tensor(path, weight_name, weight_shape);
    float *bias = checkpoint_tensor(path, bias_name, bias_shape);
    ck_assert_int_eq(head->classes, CLASSES);
    ck_assert_int_eq(head->inputs, HIDDEN);
    ck_assert_int_eq(weight_shape[0], CLASSES);
    ck_assert_int_eq(weight_shape[1], HIDDEN);
    ck_assert_int_eq(bias_shape[0], CLASSES);
    ck_assert_msg(memcmp(head->weight, weight, sizeof(float) * CLASSES * HIDDEN) == 0,
                  "the lent weight differs from %s in %s", weight_name, path);
    ck_assert_msg(memcmp(head->bias, bias, sizeof(float) * CLASSES) == 0,
                  "the lent bias differs from %s in %s", bias_name, path);
    free(weight);
    free(bias);
    serve_fixture_release(&received, &answer);
}

/* The metrics of the running teacher into metrics[METRICS_BYTES]. */
static void get_metrics(char *metrics) {
    ck_assert_int_eq(test_util_http_get(server.http_port, "/metrics", metrics, METRICS_BYTES,
                                        SERVE_FIXTURE_TIMEOUT_MS),
                     200);
}

START_TEST(test_head_is_lent_bit_for_bit) {
    if (skip_without_dataset(__func__)) return;
    start_teacher(standard_options);
    expect_head(70, checkpoint, "head.weight", "head.bias");

    /* Features it lends no head for: answered NOT_FOUND with a sentence, and it keeps serving. */
    const char *const others[] = {"tokens", "logits", "attention"};
    for (int index = 0; index < 3; index++) {
        send_head_request(71 + (uint64_t)index, others[index]);
        expect_error(client, 71 + (uint64_t)index, CM_ERR_NOT_FOUND, others[index]);
        expect_alive(client, others[index]);
    }
    send_head_request(74, "tokens");
    cm_zwire_received_t received;
    cm_wire_message_t answer;
    receive(client, &received, &answer);
    ck_assert_int_eq(answer.kind, CM_WIRE_ERROR);
    ck_assert_str_eq(answer.error.message,
                     "teacher 'teacher' lends no head for feature 'tokens' (it lends: hidden)");
    serve_fixture_release(&received, &answer);

    /* A HeadReply is the teacher's to send, not to receive. */
    float weight[2] = {1.0f, 2.0f}, bias[1] = {0.5f};
    cm_wire_message_t reply;
    cm_wire_message_init(&reply, CM_WIRE_HEAD_REPLY, 75);
    reply.head_reply = (cm_wire_head_reply_t){
        .feature = "hidden", .classes = 1, .inputs = 2, .weight = weight, .bias = bias};
    send_encoded(client, &reply);
    expect_error(client, 75, CM_ERR_PROTOCOL, "a HeadReply sent to the teacher");
    expect_head(76, checkpoint, "head.weight", "head.bias"); /* asked again: the same head */

    char *metrics = malloc(METRICS_BYTES);
    ck_assert_ptr_nonnull(metrics);
    get_metrics(metrics);
    ck_assert_msg(metric_value(metrics, "committee_teacher_head_requests_total") == 6.0, "%s",
                  metrics);
    ck_assert_msg(metric_value(metrics, "committee_teacher_errors_total{code=\"NOT_FOUND\"}") ==
                      4.0,
                  "%s", metrics);
    ck_assert_msg(metric_value(metrics, "committee_teacher_errors_total{code=\"PROTOCOL\"}") == 1.0,
                  "%s", metrics);
    ck_assert_msg(metric_value(metrics, "committee_teacher_requests_total") == 3.0,
                  "BatchRequests are counted apart from HeadRequests: %s", metrics);
    free(metrics);

    /* An MLP lends its last dense layer, fc2 of mlp:784-32-16-10. */
    stop_teacher();
    start_teacher_from(mlp_checkpoint, standard_options);
    expect_head(77, mlp_checkpoint, "fc2.weight", "fc2.bias");
}
END_TEST

START_TEST(test_lend_head_off_refuses_and_keeps_serving) {
    if (skip_without_dataset(__func__)) return;
    start_teacher((const char *[]){"--lend-head", "off", NULL});
    cm_zwire_received_t received;
    cm_wire_message_t answer;
    greet(1, &received, &answer);
    ck_assert_int_eq(answer.hello.head_count, 0);
    ck_assert_int_eq(answer.hello.output_count, 3); /* the outputs are still all there */
    serve_fixture_release(&received, &answer);

    send_head_request(2, "hidden");
    receive(client, &received, &answer);
    ck_assert_int_eq(answer.kind, CM_WIRE_ERROR);
    ck_assert_int_eq(answer.error.code, CM_ERR_NOT_FOUND);
    ck_assert_uint_eq(answer.request_id, 2);
    ck_assert_str_eq(answer.error.message,
                     "teacher 'teacher' does not lend its head (started with --lend-head off)");
    serve_fixture_release(&received, &answer);
    expect_alive(client, "a refused HeadRequest");

    char *metrics = malloc(METRICS_BYTES);
    ck_assert_ptr_nonnull(metrics);
    get_metrics(metrics);
    ck_assert_msg(metric_value(metrics, "committee_teacher_head_requests_total") == 1.0, "%s",
                  metrics);
    ck_assert_msg(metric_value(metrics, "committee_teacher_errors_total{code=\"NOT_FOUND\"}") ==
                      1.0,
                  "%s", metrics);
    free(metrics);
}
END_TEST

START_TEST(test_query_prints_the_head) {
    if (skip_without_dataset(__func__)) return;
    start_teacher(standard_options);
    char command[1024], output[8192];
    snprintf(command, sizeof command, "%s query --connect %s --head hidden --rows 2",
             test_util_bin("teacher-server"), server.endpoint);
    ck_assert_msg(test_util_run(command, output, sizeof output) == 0, "%s", output);
    ck_assert_msg(strstr(output, "heads        hidden\n"), "%s", output);
    ck_assert_msg(
        strstr(output, "head 'hidden' (dense, F32): weight shape [10,16], bias shape [10]"), "%s",
        output);
    ck_assert_msg(strstr(output, "  weight[1]") && !strstr(output, "  weight[2]"), "%s", output);
    /* The norm it prints is the checkpoint's. */
    int64_t shape[2];
    float *weight = checkpoint_tensor(checkpoint, "head.weight", shape);
    double sum = 0.0;
    for (int index = 0; index < CLASSES * HIDDEN; index++)
        sum += (double)weight[index] * (double)weight[index];
    free(weight);
    char norm[64];
    snprintf(norm, sizeof norm, "weight L2 norm %.6g,", sqrt(sum));
    ck_assert_msg(strstr(output, norm), "no '%s' in %s", norm, output);

    snprintf(command, sizeof command, "%s query --connect %s --head tokens",
             test_util_bin("teacher-server"), server.endpoint);
    ck_assert_int_eq(test_util_run(command, output, sizeof output), 1);
    ck_assert_msg(strstr(output, "answered NOT_FOUND: teacher 'teacher' lends no head for feature "
                                 "'tokens' (it lends: hidden)"),
                  "%s", output);

    stop_teacher();
    start_teacher((const char *[]){"--lend-head", "off", NULL});
    snprintf(command, sizeof command, "%s query --connect %s --head hidden",
             test_util_bin("teacher-server"), server.endpoint);
    ck_assert_int_eq(test_util_run(command, output, sizeof output), 1);
    ck_assert_msg(strstr(output, "heads        none lent\n") &&
                      strstr(output, "does not lend its head (started with --lend-head off)"),
                  "%s", output);
}
END_TEST

/* ---------------------------------------------------------------- 5. BUSY */

START_TEST(test_busy_when_the_queue_is_full) {
    if (skip_without_dataset(__func__)) return;
    start_teacher((const char *[]){"--queue", "1", NULL});
    int32_t *ids = malloc(sizeof(int32_t) * BURST_IDS);
    ck_assert_ptr_nonnull(ids);
    for (int index = 0; index < BURST_IDS; index++) ids[index] = index % MAX_TRAIN;
    for (int request = 1; request <= BURST_REQUESTS; request++)
        send_request(client, (uint64_t)request, CM_SPLIT_TRAIN, ids, BURST_IDS,
                     (const char *[]){"logits", "hidden", NULL}, CM_DTYPE_F32, 0);
    free(ids);
    int answers[BURST_REQUESTS + 1] = {0}, replies = 0, busy = 0;
    for (int answered = 0; answered < BURST_REQUESTS; answered++) {
        cm_zwire_received_t received;
        cm_wire_message_t answer;
        receive(client, &received, &answer);
        ck_assert_msg(answer.request_id >= 1 && answer.request_id <= BURST_REQUESTS,
                      "an answer to request %llu, which was never sent",
                      (unsigned long long)answer.request_id);
        ck_assert_msg(answers[answer.request_id]++ == 0, "request %llu was answered twice",
                      (unsigned long long)answer.request_id);
        if (answer.kind == CM_WIRE_BATCH_REPLY) {
            ck_assert_int_eq(answer.batch_reply.example_count, BURST_IDS);
            replies++;
        } else {
            ck_assert_msg(answer.kind == CM_WIRE_ERROR && answer.error.code == CM_ERR_BUSY,
                          "request %llu got kind %d, neither a reply nor BUSY",
                          (unsigned long long)answer.request_id, answer.kind);
            busy++;
        }
        serve_fixture_release(&received, &answer);
    }
    ck_assert_msg(busy >= 1, "%d requests at once with --queue 1 and no BUSY", BURST_REQUESTS);
    ck_assert_int_ge(replies, 1);
    cm_zwire_received_t received;
    cm_wire_message_t answer;
    ck_assert_int_eq(serve_fixture_receive(client, QUIET_MS, &received, &answer), CM_ERR_TIMEOUT);
    char metrics[METRICS_BYTES];
    ck_assert_int_eq(test_util_http_get(server.http_port, "/metrics", metrics, sizeof metrics,
                                        SERVE_FIXTURE_TIMEOUT_MS),
                     200);
    ck_assert_int_eq((int)metric_value(metrics, "committee_teacher_errors_total{code=\"BUSY\"}"),
                     busy);
    ck_assert_int_eq((int)metric_value(metrics, "committee_teacher_requests_total"),
                     BURST_REQUESTS);
}
END_TEST

/* ---------------------------------------------------------------- 5b. peers that never read */

/* The server's resident memory in bytes (VmRSS), or -1. */
static long long resident_bytes(pid_t pid) {
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *file = fopen(path, "r");
    long long kilobytes = -1;
    while (file && fgets(line, sizeof line, file))
        if (strncmp(line, "VmRSS:", 6) == 0) kilobytes = atoll(line + 6);
    if (file) fclose(file);
    return kilobytes < 0 ? -1 : kilobytes * 1024;
}

/* /metrics now into metrics[METRICS_BYTES]. */
static void read_metrics(char *metrics) {
    ck_assert_int_eq(test_util_http_get(server.http_port, "/metrics", metrics, METRICS_BYTES,
                                        SERVE_FIXTURE_TIMEOUT_MS),
                     200);
}

/*
 * A DEALER that takes at most one message off the wire and never reads it: whatever the
 * teacher sends it beyond that stays in the teacher's ZeroMQ pipe (an ipc:// link, so the
 * kernel buffers only a little).
 */
static void *silent_peer(void) {
    void *socket = zmq_socket(context, ZMQ_DEALER);
    ck_assert_ptr_nonnull(socket);
    int one = 1, small = 4096, linger_ms = 0;
    zmq_setsockopt(socket, ZMQ_RCVHWM, &one, sizeof one);
    zmq_setsockopt(socket, ZMQ_RCVBUF, &small, sizeof small);
    zmq_setsockopt(socket, ZMQ_LINGER, &linger_ms, sizeof linger_ms);
    ck_assert_int_eq(zmq_connect(socket, server.endpoint), 0);
    return socket;
}

/*
 * Sends `requests` requests of `count` ids one at a time from `peer`, waiting after each until
 * the teacher has answered it (with a reply handed to ZeroMQ, counted in examples_total, or
 * BUSY), so nothing is refused for a full compute queue.  Returns the BUSY answers.
 */
static int send_unread_requests(void *peer, int requests, int count) {
    int32_t *ids = malloc(sizeof(int32_t) * (size_t)count);
    ck_assert_ptr_nonnull(ids);
    for (int index = 0; index < count; index++) ids[index] = index % MAX_TRAIN;
    char metrics[METRICS_BYTES];
    read_metrics(metrics);
    double examples_before = metric_value(metrics, "committee_teacher_examples_total");
    double busy_before = metric_value(metrics, "committee_teacher_errors_total{code=\"BUSY\"}");
    if (busy_before < 0) busy_before = 0;
    double busy = 0;
    for (int request = 1; request <= requests; request++) {
        send_request(peer, (uint64_t)request, CM_SPLIT_TRAIN, ids, count,
                     (const char *[]){"logits", "hidden", "tokens", NULL}, CM_DTYPE_F32, 0);
        double handled = 0;
        for (int polls = 0; handled < request; polls++) { /* a hang guard, not a clock */
            ck_assert_msg(polls < 1000, "request %d was never answered", request);
            if (polls) test_process_sleep_ms(20);
            read_metrics(metrics);
            double examples = metric_value(metrics, "committee_teacher_examples_total");
            busy = metric_value(metrics, "committee_teacher_errors_total{code=\"BUSY\"}");
            busy = busy < 0 ? -busy_before : busy - busy_before;
            handled = (examples - examples_before) / count + busy;
        }
    }
    free(ids);
    return (int)busy;
}

/*
 * A peer that sends requests and never reads the replies: beyond --max-in-flight requests or
 * --max-peer-queued-mb of unread replies it is answered BUSY, so the teacher's memory stays
 * bounded (before: every reply piled up in ZeroMQ, +1 GB for 256 unread replies).
 */
START_TEST(test_a_peer_that_never_reads_is_answered_busy) {
    if (skip_without_dataset(__func__)) return;
    start_teacher((const char *[]){"--max-in-flight", "4", "--max-peer-queued-mb", "12",
                                   "--max-message-mb", "16", NULL});
    enum { BIG_IDS = 4096, SMALL_IDS = 64, REQUESTS = 40 };
    const long long per_example = sizeof(float) * (CLASSES + HIDDEN + TOKENS * HIDDEN);
    const long long big_reply = BIG_IDS * per_example, small_reply = SMALL_IDS * per_example;
    long long resident_before = resident_bytes(server.pid);
    ck_assert_int_gt(resident_before, 0);

    /* Big replies (4.9 MB): the bytes per peer run out first. */
    void *big = silent_peer();
    int busy = send_unread_requests(big, REQUESTS, BIG_IDS);
    char metrics[METRICS_BYTES];
    read_metrics(metrics);
    double peak_bytes = metric_value(metrics, "committee_teacher_reserved_reply_peak_bytes");
    ck_assert_msg(peak_bytes > 0 && peak_bytes <= (12 << 20) + big_reply,
                  "%.0f bytes reserved at the peak for one peer limited to 12 MB", peak_bytes);
    ck_assert_msg(busy >= REQUESTS - 8, "only %d of %d unread big requests answered BUSY", busy,
                  REQUESTS);
    ck_assert_int_eq(
        (int)metric_value(metrics, "committee_teacher_busy_total{reason=\"peer_bytes\"}"), busy);
    long long resident_after = resident_bytes(server.pid);
    ck_assert_msg(resident_after - resident_before < 8 * big_reply,
                  "the teacher grew by %lld bytes for %d unread replies of %lld bytes",
                  resident_after - resident_before, REQUESTS, big_reply);

    /* Small replies from another peer: its in-flight requests run out first. */
    void *small = silent_peer();
    busy = send_unread_requests(small, REQUESTS, SMALL_IDS);
    read_metrics(metrics);
    double reserved = metric_value(metrics, "committee_teacher_reserved_requests");
    ck_assert_msg(reserved >= 1 && reserved <= 8, "%.0f requests reserved by two peers of 4",
                  reserved);
    ck_assert_msg(metric_value(metrics, "committee_teacher_reserved_requests_peak") <= 8,
                  "more than 4 requests per peer reserved at once");
    ck_assert_msg(busy >= REQUESTS - 16, "only %d of %d unread small requests answered BUSY", busy,
                  REQUESTS);
    ck_assert_int_eq(
        (int)metric_value(metrics, "committee_teacher_busy_total{reason=\"peer_in_flight\"}"),
        busy);
    (void)small_reply;

    /* A peer that reads is still served, and the Hello advertises the per-peer limit. */
    cm_zwire_received_t received;
    cm_wire_message_t answer;
    greet(1, &received, &answer);
    ck_assert_uint_eq(answer.hello.limits.max_in_flight, 4);
    serve_fixture_release(&received, &answer);
    expect_alive(client, "two peers that never read");
    zmq_close(big);
    zmq_close(small);
}
END_TEST

/* ---------------------------------------------------------------- 6. graceful stop */

START_TEST(test_sigterm_finishes_work_says_bye_and_exits_0) {
    if (skip_without_dataset(__func__)) return;
    start_teacher(NULL); /* default limits: 4096 examples per request */
    cm_zwire_received_t received;
    cm_wire_message_t answer;
    greet(1, &received, &answer);
    serve_fixture_release(&received, &answer);

    /* A long request, then a bad one: its Error proves the long one was taken. */
    enum { LONG_IDS = 4096 };
    int32_t *ids = malloc(sizeof(int32_t) * LONG_IDS);
    ck_assert_ptr_nonnull(ids);
    for (int index = 0; index < LONG_IDS; index++) ids[index] = index % MAX_TRAIN;
    send_request(client, 2, CM_SPLIT_TRAIN, ids, LONG_IDS, (const char *[]){"logits", NULL},
                 CM_DTYPE_F32, 0);
    free(ids);
    send_request(client, 3, CM_SPLIT_TRAIN, (const int32_t[]){0}, 1,
                 (const char *[]){"nonsense", NULL}, CM_DTYPE_F32, 0);
    int long_answered = 0, bad_answered = 0, signalled = 0;
    for (;;) {
        receive(client, &received, &answer);
        cm_wire_kind_t kind = answer.kind;
        if (kind == CM_WIRE_BATCH_REPLY) {
            ck_assert_uint_eq(answer.request_id, 2);
            ck_assert_int_eq(answer.batch_reply.example_count, LONG_IDS);
            long_answered++;
        } else if (kind == CM_WIRE_ERROR) {
            ck_assert_uint_eq(answer.request_id, 3);
            ck_assert_int_eq(answer.error.code, CM_ERR_NOT_FOUND);
            bad_answered++;
        } else {
            ck_assert_msg(kind == CM_WIRE_BYE, "unexpected message kind %d", kind);
            ck_assert_msg(signalled, "Bye before the signal");
        }
        serve_fixture_release(&received, &answer);
        if (kind == CM_WIRE_BYE) break;
        if (bad_answered && !signalled) {
            ck_assert_int_eq(kill(server.pid, SIGTERM), 0);
            signalled = 1;
        }
    }
    ck_assert_int_eq(long_answered, 1);
    ck_assert_int_eq(bad_answered, 1);
    int exit_status = serve_fixture_stop(&server, 0, SERVE_FIXTURE_TIMEOUT_MS);
    char log[8192];
    serve_fixture_log(&server, log, sizeof log);
    ck_assert_msg(exit_status == 0, "exit status %d after SIGTERM: %s", exit_status, log);
    ck_assert_msg(strstr(log, "said bye to 1 peer"), "%s", log);
    ck_assert_msg(strstr(log, " stopped\n"), "the log does not say it stopped: %s", log);
}
END_TEST

/* ---------------------------------------------------------------- 7. start-up errors */

static int is_one_line(const char *text) {
    const char *newline = strchr(text, '\n');
    return newline && newline[1] == '\0';
}

START_TEST(test_bad_options_and_missing_checkpoint) {
    char command[1024], output[4096];
    const char *binary = test_util_bin("teacher-server");
    snprintf(command, sizeof command, "%s serve --bind ipc://%s/none.sock", binary, directory);
    ck_assert_int_eq(test_util_run(command, output, sizeof output), 2);
    ck_assert_msg(strstr(output, "--model") && is_one_line(output), "%s", output);

    snprintf(command, sizeof command, "%s serve --model %s --bind tcp://0.0.0.0:5555 --http off",
             binary, checkpoint);
    ck_assert_int_eq(test_util_run(command, output, sizeof output), 2);
    ck_assert_msg(strstr(output, "--insecure-public") && is_one_line(output), "%s", output);

    const char *const bad_batches[] = {"-1", "16385"};
    for (int index = 0; index < 2; index++) {
        snprintf(command, sizeof command, "%s serve --model %s --max-batch %s --http off", binary,
                 checkpoint, bad_batches[index]);
        ck_assert_int_eq(test_util_run(command, output, sizeof output), 2);
        ck_assert_msg(strstr(output, "--max-batch must be in 0..16384") &&
                          strstr(output, bad_batches[index]) && is_one_line(output),
                      "%s", output);
    }

    /* Endpoints are checked before ZeroMQ sees them: one sentence, exit 2. */
    static const struct {
        const char *bind, *sentence;
    } bad_binds[] = {
        {"tcp://127.0.0.1:99999", "port 99999 is not in 1..65535"},
        {"tcp://127.0.0.1", "has no port"},
        {"udp://127.0.0.1:5555", "must start with tcp://, ipc:// or inproc://"},
        {"tcp://no-such-interface:5555", "neither an IP address, '*' nor a network interface"},
        {"tcp://127.0.0.1:55x", "the port '55x' is not a number"},
        {"ipc://", "has no path"},
    };
    for (size_t index = 0; index < sizeof bad_binds / sizeof bad_binds[0]; index++) {
        snprintf(command, sizeof command, "%s serve --model %s --bind %s --http off", binary,
                 checkpoint, bad_binds[index].bind);
        ck_assert_int_eq(test_util_run(command, output, sizeof output), 2);
        ck_assert_msg(strstr(output, bad_binds[index].sentence) &&
                          strstr(output, bad_binds[index].bind) && is_one_line(output),
                      "--bind %s: %s", bad_binds[index].bind, output);
    }

    /* A public --http is refused like a public --bind, and allowed by --http-public (or
     * --insecure-public) with a warning. */
    snprintf(command, sizeof command, "%s serve --model %s --bind ipc://%s/none.sock --http %s",
             binary, checkpoint, directory, "0.0.0.0:0");
    ck_assert_int_eq(test_util_run(command, output, sizeof output), 2);
    ck_assert_msg(strstr(output, "--http 0.0.0.0:0 is not a loopback address") &&
                      strstr(output, "--http-public") && is_one_line(output),
                  "%s", output);
    snprintf(command, sizeof command, "%s serve --model %s --bind ipc://%s/none.sock --http *:0",
             binary, checkpoint, directory);
    ck_assert_int_eq(test_util_run(command, output, sizeof output), 2);
    ck_assert_msg(strstr(output, "--http-public"), "%s", output);

    snprintf(command, sizeof command,
             "%s serve --model %s/missing.safetensors --bind ipc://%s/none.sock --http 127.0.0.1:0",
             binary, directory, directory);
    ck_assert_int_eq(test_util_run(command, output, sizeof output), 1);
    char missing[300];
    snprintf(missing, sizeof missing, "%s/missing.safetensors", directory);
    ck_assert_msg(strstr(output, missing), "the error does not name %s: %s", missing, output);

    /* --lend-head takes on or off, also from COMMITTEE_LEND_HEAD. */
    snprintf(command, sizeof command,
             "%s serve --model %s --bind ipc://%s/none.sock --http off --lend-head yes", binary,
             checkpoint, directory);
    ck_assert_int_eq(test_util_run(command, output, sizeof output), 2);
    ck_assert_msg(strstr(output, "--lend-head must be on or off, not 'yes'") && is_one_line(output),
                  "%s", output);
    snprintf(command, sizeof command,
             "COMMITTEE_LEND_HEAD=maybe %s serve --model %s --bind ipc://%s/none.sock --http off",
             binary, checkpoint, directory);
    ck_assert_int_eq(test_util_run(command, output, sizeof output), 2);
    ck_assert_msg(strstr(output, "not 'maybe'"), "%s", output);
}
END_TEST

static const char default_http_hint[] = "give each teacher its own with --http 127.0.0.1:0";

/*
 * Two teachers on one host without --http: both want the default port, and the one that
 * does not get it exits 1 with a sentence that names the option, cleanly (before the fix it
 * aborted in uv_close: exit 134).  Whoever else uses this host may hold the default port
 * already; then the first teacher is the refused one and its sentence is checked instead.
 */
START_TEST(test_http_port_taken_exits_1_and_names_the_option) {
    if (skip_without_dataset(__func__)) return;
    char output[4096], why[4096], command[2048];
    if (serve_fixture_start(&server, directory, checkpoint,
                            (const char *[]){"--http", "127.0.0.1:9100", "--max-train", "512",
                                             "--max-test", "256", NULL},
                            why, sizeof why) == 0) {
        snprintf(command, sizeof command,
                 "%s serve --model %s --max-train 512 --max-test 256 --bind ipc://%s/second.sock",
                 test_util_bin("teacher-server"), checkpoint, directory);
        int status = test_util_run(command, output, sizeof output);
        ck_assert_msg(status == 1 && strstr(output, "Address already in use") &&
                          strstr(output, default_http_hint) && !strstr(output, "Assertion"),
                      "the second teacher: exit %d: %s", status, output);
        ck_assert_int_eq(serve_fixture_stop(&server, SIGTERM, SERVE_FIXTURE_TIMEOUT_MS), 0);
    } else {
        ck_assert_msg(strstr(why, default_http_hint) && !strstr(why, "Assertion"),
                      "a teacher on a taken default port: %s", why);
    }

    /* An explicit --http that is taken: exit 1 too, and the sentence says what to do. */
    start_teacher(NULL);
    snprintf(command, sizeof command,
             "%s serve --model %s --max-train 512 --max-test 256 --bind ipc://%s/third.sock --http "
             "127.0.0.1:%d",
             test_util_bin("teacher-server"), checkpoint, directory, server.http_port);
    int status = test_util_run(command, output, sizeof output);
    ck_assert_msg(status == 1 && strstr(output, "choose another --http HOST:PORT") &&
                      !strstr(output, "Assertion"),
                  "exit %d: %s", status, output);
}
END_TEST

/*
 * Every string the teacher sends is UTF-8, also when its Error quotes bytes from the request
 * that are not (strict protobuf parsers reject the whole reply otherwise), and when its
 * sentence cuts a quoted name inside a character.
 */
START_TEST(test_error_messages_are_valid_utf8) {
    if (skip_without_dataset(__func__)) return;
    start_teacher(NULL);
    char long_name[1001]; /* 500 two-byte characters: the sentence cuts one in half */
    for (int index = 0; index < 500; index++) memcpy(long_name + 2 * index, "\xc3\xa9", 2);
    long_name[1000] = '\0';
    const char *const names[] = {"\xff\xfelogits\xc3", long_name, "hidden\xed\xa0\x80"};
    for (int index = 0; index < 3; index++) {
        send_request(client, (uint64_t)index + 1, CM_SPLIT_TEST, (const int32_t[]){0}, 1,
                     (const char *[]){names[index], NULL}, CM_DTYPE_F32, 0);
        cm_zwire_received_t received;
        cm_wire_message_t answer;
        receive(client, &received, &answer);
        ck_assert_int_eq(answer.kind, CM_WIRE_ERROR);
        ck_assert_int_eq(answer.error.code, CM_ERR_NOT_FOUND);
        ck_assert_msg(cm_wire_utf8_valid(answer.error.message, strlen(answer.error.message)),
                      "request %d: the Error's message is not UTF-8: %s", index + 1,
                      answer.error.message);
        ck_assert_msg(strstr(answer.error.message, "has no output"), "%s", answer.error.message);
        serve_fixture_release(&received, &answer);
    }
    expect_alive(client, "names that are not UTF-8");
}
END_TEST

/* 200 slow HTTP clients (half a header each, then nothing): the probes still answer. */
START_TEST(test_probes_answer_under_200_slow_clients) {
    if (skip_without_dataset(__func__)) return;
    start_teacher(NULL);
    enum { SLOW_CLIENTS = 200 };
    int clients[SLOW_CLIENTS];
    struct sockaddr_in address = {.sin_family = AF_INET,
                                  .sin_port = htons((uint16_t)server.http_port)};
    inet_pton(AF_INET, "127.0.0.1", &address.sin_addr);
    for (int index = 0; index < SLOW_CLIENTS; index++) {
        clients[index] = socket(AF_INET, SOCK_STREAM, 0);
        ck_assert_int_ge(clients[index], 0);
        ck_assert_int_eq(connect(clients[index], (struct sockaddr *)&address, sizeof address), 0);
        const char *partial = "GET /metrics HTTP/1.1\r\nHost:";
        ck_assert_int_gt(send(clients[index], partial, strlen(partial), MSG_NOSIGNAL), 0);
    }
    static const char *const probes[] = {"/healthz", "/readyz", "/metrics"};
    char body[METRICS_BYTES];
    for (int index = 0; index < 3; index++)
        ck_assert_msg(test_util_http_get(server.http_port, probes[index], body, sizeof body,
                                         SERVE_FIXTURE_TIMEOUT_MS) == 200,
                      "%s did not answer behind %d slow clients", probes[index], SLOW_CLIENTS);
    for (int index = 0; index < SLOW_CLIENTS; index++) close(clients[index]);
}
END_TEST

/* `localhost` in --bind means 127.0.0.1 (ZeroMQ's bind alone says "No such device"). */
START_TEST(test_bind_localhost_serves_on_127_0_0_1) {
    if (skip_without_dataset(__func__)) return;
    start_teacher((const char *[]){"--bind", "tcp://localhost:*", NULL});
    ck_assert_msg(strncmp(server.endpoint, "tcp://127.0.0.1:", 16) == 0, "serving on %s",
                  server.endpoint);
    cm_zwire_received_t received;
    cm_wire_message_t answer;
    greet(1, &received, &answer);
    serve_fixture_release(&received, &answer);
}
END_TEST

/* A public --http with --http-public serves, with a warning in the log. */
START_TEST(test_http_public_is_allowed_with_a_warning) {
    if (skip_without_dataset(__func__)) return;
    start_teacher((const char *[]){"--http", "0.0.0.0:0", "--http-public", NULL});
    char log[8192];
    serve_fixture_log(&server, log, sizeof log);
    ck_assert_msg(strstr(log, "warn: serving HTTP on 0.0.0.0:0: anyone who can reach it"), "%s",
                  log);
    char body[256];
    ck_assert_int_eq(test_util_http_get(server.http_port, "/healthz", body, sizeof body,
                                        SERVE_FIXTURE_TIMEOUT_MS),
                     200);
}
END_TEST

/* ---------------------------------------------------------------- 9. coalescing */

enum {
    COALESCE_CLIENTS = 3,
    COALESCE_REQUESTS = 5, /* per client */
    COALESCE_PLAN = COALESCE_CLIENTS * COALESCE_REQUESTS,
    COALESCE_MAX_IDS = 83,
    COALESCE_LOG_BYTES = 1 << 17
};

/* One request of the coalescing plan and what answered it. */
typedef struct {
    uint64_t request_id; /* unique across the clients, so the server's log names it */
    int client;
    int count;
    int32_t ids[COALESCE_MAX_IDS];
    const char *const *outputs;
    cm_dtype_t encoding;
    int top_k;
    /* The answer, copied out of the message. */
    int answered, is_error;
    cm_status_t code;
    int tensor_count;
    cm_wire_tensor_t tensors[CM_WIRE_MAX_TENSORS]; /* data: malloc'd copies */
} coalesce_request_t;

static const char *const dense_outputs[] = {"logits", "hidden", "tokens", NULL};
static const char *const top_k_outputs[] = {"logits", "hidden", NULL};
static const char *const bogus_outputs[] = {"logits", "bogus", NULL};

/*
 * The plan: every client sends five requests of 5..83 distinct training ids, most for logits,
 * hidden and tokens in F32 (one group), one for top-3 logits and hidden in F16 (another
 * group), one asking for an output the teacher lacks and one with an id out of range (both
 * answered with an Error while the others are served).
 */
static void coalesce_plan(coalesce_request_t plan[COALESCE_PLAN]) {
    memset(plan, 0, sizeof(coalesce_request_t) * COALESCE_PLAN);
    cm_rng_t rng;
    cm_rng_seed(&rng, 77);
    for (int index = 0; index < COALESCE_PLAN; index++) {
        coalesce_request_t *request = &plan[index];
        request->client = index % COALESCE_CLIENTS;
        request->request_id = 500 + (uint64_t)index;
        request->count = 5 + 13 * (index % 7);
        int32_t all[MAX_TRAIN];
        for (int id = 0; id < MAX_TRAIN; id++) all[id] = id;
        cm_rng_shuffle(&rng, all, MAX_TRAIN);
        memcpy(request->ids, all, sizeof(int32_t) * (size_t)request->count);
        request->outputs = dense_outputs;
        request->encoding = CM_DTYPE_F32;
    }
    plan[4].outputs = top_k_outputs;
    plan[4].encoding = CM_DTYPE_F16;
    plan[4].top_k = TOP_K;
    plan[10].outputs = top_k_outputs;
    plan[10].encoding = CM_DTYPE_F16;
    plan[10].top_k = TOP_K;
    plan[6].outputs = bogus_outputs;
    plan[8].ids[1] = MAX_TRAIN + 5; /* beyond the served subset */
}

static void coalesce_forget(coalesce_request_t plan[COALESCE_PLAN]) {
    for (int index = 0; index < COALESCE_PLAN; index++)
        for (int tensor = 0; tensor < plan[index].tensor_count; tensor++)
            free((void *)plan[index].tensors[tensor].data);
}

/* The tensor name as a string that outlives the message (the names a teacher sends). */
static const char *output_names_kept(const char *name) {
    for (int index = 0; dense_outputs[index]; index++)
        if (strcmp(name, dense_outputs[index]) == 0) return dense_outputs[index];
    ck_abort_msg("a tensor named '%s'", name);
    return NULL;
}

/* Copies an answer into the plan entry it answers; fails the test on a stranger. */
static void coalesce_keep(coalesce_request_t plan[COALESCE_PLAN], int client_index,
                          const cm_wire_message_t *answer) {
    coalesce_request_t *request = NULL;
    for (int index = 0; index < COALESCE_PLAN; index++)
        if (plan[index].request_id == answer->request_id && plan[index].client == client_index)
            request = &plan[index];
    ck_assert_msg(request && !request->answered, "client %d got an answer to request %llu",
                  client_index, (unsigned long long)answer->request_id);
    request->answered = 1;
    if (answer->kind == CM_WIRE_ERROR) {
        request->is_error = 1;
        request->code = answer->error.code;
        return;
    }
    ck_assert_int_eq(answer->kind, CM_WIRE_BATCH_REPLY);
    const cm_wire_batch_reply_t *reply = &answer->batch_reply;
    ck_assert_int_eq(reply->example_count, request->count);
    ck_assert_mem_eq(reply->example_ids, request->ids, sizeof(int32_t) * (size_t)request->count);
    request->tensor_count = reply->tensor_count;
    for (int index = 0; index < reply->tensor_count; index++) {
        cm_wire_tensor_t *kept = &request->tensors[index];
        *kept = reply->tensors[index];
        kept->name = output_names_kept(kept->name);
        void *data = malloc(kept->bytes ? kept->bytes : 1);
        ck_assert_ptr_nonnull(data);
        memcpy(data, reply->tensors[index].data, kept->bytes);
        kept->data = data;
    }
}

/*
 * Runs the plan against a fresh teacher with `max_batch`: all requests are sent, interleaved
 * over the clients, before any answer is read, to a teacher that sleeps before each forward
 * batch (so those sent while it sleeps are queued together), then every answer is read.
 * Returns the teacher's log (malloc'd) and its committee_teacher_forward_batches_total.
 */
static char *coalesce_run(coalesce_request_t plan[COALESCE_PLAN], const char *max_batch,
                          double *forward_batches) {
    const char *const options[] = {
        "--max-batch",    max_batch, "--compute-delay-ms", "400",   "--queue", "32",
        "--max-examples", "300",     "--log-level",        "debug", NULL};
    start_teacher(options);
    void *sockets[COALESCE_CLIENTS] = {client};
    for (int index = 1; index < COALESCE_CLIENTS; index++) {
        sockets[index] = serve_fixture_connect(context, server.endpoint);
        ck_assert_ptr_nonnull(sockets[index]);
    }
    /* The first client's requests are queued (the teacher has counted them) before the
     * others send theirs, so they are ahead of them in the queue. */
    char *metrics = malloc(METRICS_BYTES);
    ck_assert_ptr_nonnull(metrics);
    for (int order = 0; order < COALESCE_PLAN; order++) {
        int index = order % COALESCE_REQUESTS * COALESCE_CLIENTS + order / COALESCE_REQUESTS;
        const coalesce_request_t *request = &plan[index];
        send_request(sockets[request->client], request->request_id, CM_SPLIT_TRAIN, request->ids,
                     request->count, request->outputs, request->encoding, request->top_k);
        for (int poll = 0; order == COALESCE_REQUESTS - 1; poll++) {
            read_metrics(metrics);
            if (metric_value(metrics, "committee_teacher_requests_total") >= COALESCE_REQUESTS)
                break;
            ck_assert_msg(poll < 5000, "the teacher did not receive the first requests");
            usleep(1000);
        }
    }
    for (int index = 0; index < COALESCE_PLAN; index++) {
        int sender = plan[index].client;
        cm_zwire_received_t received;
        cm_wire_message_t answer;
        receive(sockets[sender], &received, &answer);
        coalesce_keep(plan, sender, &answer);
        serve_fixture_release(&received, &answer);
    }
    read_metrics(metrics);
    *forward_batches = metric_value(metrics, "committee_teacher_forward_batches_total");
    free(metrics);
    for (int index = 1; index < COALESCE_CLIENTS; index++) zmq_close(sockets[index]);
    stop_teacher();
    char *log = malloc(COALESCE_LOG_BYTES);
    ck_assert_ptr_nonnull(log);
    serve_fixture_log(&server, log, COALESCE_LOG_BYTES);
    return log;
}

static coalesce_request_t *coalesce_find(coalesce_request_t plan[COALESCE_PLAN], uint64_t id) {
    for (int index = 0; index < COALESCE_PLAN; index++)
        if (plan[index].request_id == id) return &plan[index];
    ck_abort_msg("the log names request %llu, which was not sent", (unsigned long long)id);
    return NULL;
}

/* The two answers are the same kind, code, tensors (names, layouts, types, shapes, sizes). */
static void coalesce_same_form(const coalesce_request_t *alone, const coalesce_request_t *got) {
    ck_assert_msg(alone->answered && got->answered, "request %llu was not answered",
                  (unsigned long long)got->request_id);
    ck_assert_msg(alone->is_error == got->is_error && alone->code == got->code,
                  "request %llu: answered %s alone, %s coalescing",
                  (unsigned long long)got->request_id,
                  alone->is_error ? cm_status_name(alone->code) : "with a reply",
                  got->is_error ? cm_status_name(got->code) : "with a reply");
    ck_assert_int_eq(alone->tensor_count, got->tensor_count);
    for (int index = 0; index < got->tensor_count; index++) {
        const cm_wire_tensor_t *one = &alone->tensors[index], *other = &got->tensors[index];
        ck_assert_str_eq(one->name, other->name);
        ck_assert(one->layout == other->layout && one->dtype == other->dtype &&
                  one->encoding == other->encoding && one->ndim == other->ndim);
        ck_assert_mem_eq(one->shape, other->shape, sizeof one->shape);
        ck_assert_uint_eq(one->bytes, other->bytes);
    }
}

/* Byte-identical answers. */
static int coalesce_same_bytes(const coalesce_request_t *alone, const coalesce_request_t *got) {
    coalesce_same_form(alone, got);
    for (int index = 0; index < got->tensor_count; index++)
        if (memcmp(alone->tensors[index].data, got->tensors[index].data, got->tensors[index].bytes))
            return 0;
    return 1;
}

/* Values within float rounding of each other (top-k classes equal). */
static void coalesce_close(const coalesce_request_t *alone, const coalesce_request_t *got) {
    coalesce_same_form(alone, got);
    for (int index = 0; index < got->tensor_count; index++) {
        const cm_wire_tensor_t *tensor = &got->tensors[index];
        size_t count = tensor->bytes / cm_dtype_size(tensor->encoding);
        if (tensor->encoding == CM_DTYPE_I32) {
            ck_assert_mem_eq(alone->tensors[index].data, tensor->data, tensor->bytes);
            continue;
        }
        float *want = tensor_values(&alone->tensors[index], count);
        float *values = tensor_values(tensor, count);
        double relative = tensor->encoding == CM_DTYPE_F32 ? 1e-4 : 2e-3;
        check_close(values, want, count, relative, 1e-3, tensor->name);
        free(want);
        free(values);
    }
}

/*
 * Checks the F32 tensors of every request of one coalesced forward batch (a log line "forward
 * batch of E examples for K requests: ID ...") against an in-process forward pass over their
 * rows concatenated in that order: the split-back replies are the pass's rows bit for bit.
 * Returns the number of requests in the batch and sets in_a_batch[i] for each (plan[i]).
 */
static int coalesce_check_batch(cm_model_t *model, coalesce_request_t plan[COALESCE_PLAN],
                                const char *line, int in_a_batch[COALESCE_PLAN]) {
    int examples = 0, requests = 0, used = 0;
    ck_assert_int_eq(sscanf(line, "forward batch of %d examples for %d requests:%n", &examples,
                            &requests, &used),
                     2);
    coalesce_request_t *members[COALESCE_PLAN];
    int total = 0, taken[COALESCE_CLIENTS] = {0}, repeated = 0;
    const char *cursor = line + used;
    for (int index = 0; index < requests; index++) {
        char *end = NULL;
        unsigned long long id = strtoull(cursor, &end, 10);
        ck_assert_ptr_ne(end, cursor);
        cursor = end;
        members[index] = coalesce_find(plan, id);
        total += members[index]->count;
        in_a_batch[members[index] - plan] = 1;
        /* Turns over the peers: once one has a second request in, no peer joins late. */
        int peer = members[index]->client;
        ck_assert_msg(!(repeated && taken[peer] == 0),
                      "client %d joins the batch \"%.*s\" after another client's second request",
                      peer, (int)strcspn(line, "\n"), line);
        repeated |= taken[peer]++ > 0;
    }
    ck_assert_int_eq(total, examples);
    int features = dataset->features;
    float *inputs = malloc(sizeof(float) * (size_t)total * (size_t)features);
    ck_assert_ptr_nonnull(inputs);
    for (int index = 0, row = 0; index < requests; row += members[index++]->count)
        cm_dataset_gather(dataset, CM_SPLIT_TRAIN, members[index]->ids, members[index]->count,
                          inputs + (size_t)row * (size_t)features);
    const float *sources[3];
    sources[0] = cm_model_forward(model, inputs, total);
    int widths[3] = {CLASSES, 0, 0};
    sources[1] = cm_model_feature(model, "hidden", &widths[1], NULL);
    sources[2] = cm_model_feature(model, "tokens", &widths[2], NULL);
    for (int index = 0, row = 0; index < requests; row += members[index++]->count) {
        const coalesce_request_t *member = members[index];
        for (int tensor = 0; tensor < member->tensor_count; tensor++) {
            const cm_wire_tensor_t *got = &member->tensors[tensor];
            if (got->encoding != CM_DTYPE_F32 || got->layout != CM_WIRE_DENSE) continue;
            int output = strcmp(got->name, "logits") == 0   ? 0
                         : strcmp(got->name, "hidden") == 0 ? 1
                                                            : 2;
            ck_assert_uint_eq(got->bytes, sizeof(float) * (size_t)member->count * widths[output]);
            ck_assert_msg(
                memcmp(got->data, sources[output] + (size_t)row * widths[output], got->bytes) == 0,
                "request %llu's %s are not rows %d.. of its forward batch bit for bit",
                (unsigned long long)member->request_id, got->name, row);
        }
    }
    free(inputs);
    return requests;
}

START_TEST(test_coalesced_requests_share_a_forward_pass) {
    if (skip_without_dataset(__func__)) return;
    static coalesce_request_t alone[COALESCE_PLAN], coalesced[COALESCE_PLAN];
    coalesce_plan(alone);
    coalesce_plan(coalesced);
    double alone_batches = 0, coalesced_batches = 0;
    char *alone_log = coalesce_run(alone, "1", &alone_batches);
    /* 200 examples a pass: less than the queue holds, so the batch must be shared fairly. */
    char *log = coalesce_run(coalesced, "200", &coalesced_batches);
    ck_assert_msg(!strstr(alone_log, "forward batch of"), "--max-batch 1 coalesced requests");
    free(alone_log);

    /* The bad requests get their Errors; the 13 others are answered, in fewer passes. */
    ck_assert_msg(coalesced[6].is_error && coalesced[6].code == CM_ERR_NOT_FOUND,
                  "the request for an unknown output was not answered NOT_FOUND");
    ck_assert_msg(coalesced[8].is_error && coalesced[8].code == CM_ERR_OUT_OF_RANGE,
                  "the request with an id out of range was not answered OUT_OF_RANGE");
    ck_assert_double_eq(alone_batches, COALESCE_PLAN - 2);
    ck_assert_msg(coalesced_batches > 0 && coalesced_batches < COALESCE_PLAN - 2,
                  "%g forward batches for %d requests: nothing was coalesced", coalesced_batches,
                  COALESCE_PLAN - 2);

    /* Requests of a coalesced batch: exactly the rows of one in-process pass over the batch,
     * and the values of the lone run within float rounding (OpenBLAS rounds a row by how many
     * rows share the product).  Requests that ran alone: the lone run's bytes. */
    cm_model_t *model = NULL;
    ck_assert_msg(cm_model_load(checkpoint, 1024, &model, NULL) == CM_OK, "%s", cm_last_error());
    int lines = 0, in_batches = 0, in_a_batch[COALESCE_PLAN] = {0};
    for (const char *line = strstr(log, "forward batch of"); line;
         line = strstr(line + 1, "forward batch of")) {
        int members = coalesce_check_batch(model, coalesced, line, in_a_batch);
        ck_assert_int_ge(members, 2);
        in_batches += members;
        lines++;
    }
    cm_model_free(&model);
    /* Every pass is one logged batch or one request alone. */
    ck_assert_int_eq((int)coalesced_batches, lines + (COALESCE_PLAN - 2 - in_batches));
    for (int index = 0; index < COALESCE_PLAN; index++) {
        if (in_a_batch[index])
            coalesce_close(&alone[index], &coalesced[index]);
        else
            ck_assert_msg(coalesce_same_bytes(&alone[index], &coalesced[index]),
                          "request %llu ran alone but its reply differs from --max-batch 1's",
                          (unsigned long long)coalesced[index].request_id);
    }
    free(log);
    coalesce_forget(alone);
    coalesce_forget(coalesced);
}
END_TEST

Suite *check_teacher_serve_suite(void);
Suite *check_teacher_serve_suite(void) {
    Suite *suite = suite_create("teacher_serve");
    TCase *tcase = tcase_create("serve");
    tcase_set_timeout(tcase, 60);
    tcase_add_unchecked_fixture(tcase, setup_teacher, teardown_teacher);
    tcase_add_checked_fixture(tcase, setup_test, teardown_test);
    tcase_add_test(tcase, test_hello_describes_the_teacher);
    tcase_add_test(tcase, test_outputs_match_in_process_forward);
    tcase_add_test(tcase, test_two_clients_get_their_own_replies);
    tcase_add_test(tcase, test_bad_input_is_answered_counted_and_survived);
    tcase_add_test(tcase, test_head_is_lent_bit_for_bit);
    tcase_add_test(tcase, test_lend_head_off_refuses_and_keeps_serving);
    tcase_add_test(tcase, test_query_prints_the_head);
    tcase_add_test(tcase, test_busy_when_the_queue_is_full);
    tcase_add_test(tcase, test_a_peer_that_never_reads_is_answered_busy);
    tcase_add_test(tcase, test_sigterm_finishes_work_says_bye_and_exits_0);
    tcase_add_test(tcase, test_bad_options_and_missing_checkpoint);
    tcase_add_test(tcase, test_http_port_taken_exits_1_and_names_the_option);
    tcase_add_test(tcase, test_bind_localhost_serves_on_127_0_0_1);
    tcase_add_test(tcase, test_probes_answer_under_200_slow_clients);
    tcase_add_test(tcase, test_error_messages_are_valid_utf8);
    tcase_add_test(tcase, test_http_public_is_allowed_with_a_warning);
    tcase_add_test(tcase, test_coalesced_requests_share_a_forward_pass);
    suite_add_tcase(suite, tcase);
    return suite;
}
