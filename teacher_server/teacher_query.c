/*
 * teacher_query: a blocking DEALER client.  It says Hello, prints the
 * teacher's Hello, sends one BatchRequest for --ids, prints the shape and
 * first rows of every tensor in the reply and, when the dataset is
 * available locally, the accuracy of the logits on those ids.  With --head
 * FEATURE it asks for the head the teacher lends instead (HeadRequest) and
 * prints its shape, first rows and norms.  Every wait is bounded by
 * --timeout-ms, so a dead teacher is a clear error, not a hang.
 */
#include "teacher_query.h"

#include "cm_cli.h"
#include "cm_curve.h"
#include "cm_endpoint.h"
#include "cm_dataset.h"
#include "cm_log.h"
#include "cm_wire.h"
#include "cm_zwire.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

enum { MAX_IDS = 1 << 20 };

typedef struct {
    const char *connect;
    const char *split;
    const char *ids;
    const char *outputs;
    const char *encoding;
    const char *data;
    const char *data_dir;
    const char *curve_secret_key;
    const char *teacher_key;
    const char *head; /* NULL: ask for outputs */
    int top_k;
    int rows;
    int timeout_ms;
} query_options_t;

/* Parses "0-255,300,400-401" into ids (malloc'd). */
static cm_status_t parse_ids(const char *text, int32_t **ids_out, int *count_out) {
    int capacity = 256, count = 0;
    int32_t *ids = malloc(sizeof *ids * (size_t)capacity);
    if (!ids) return cm_fail(CM_ERR_NOMEM, "out of memory parsing --ids");
    const char *cursor = text;
    while (*cursor) {
        char *end = NULL;
        long first = strtol(cursor, &end, 10), last = first;
        if (end == cursor || first < 0) goto bad;
        if (*end == '-') {
            const char *second = end + 1;
            last = strtol(second, &end, 10);
            if (end == second || last < first) goto bad;
        }
        if (*end != ',' && *end != '\0') goto bad;
        for (long id = first; id <= last; id++) {
            if (count == MAX_IDS) {
                free(ids);
                return cm_fail(CM_ERR_INVALID_ARG, "--ids names more than %d examples", MAX_IDS);
            }
            if (count == capacity) {
                capacity *= 2;
                int32_t *grown = realloc(ids, sizeof *ids * (size_t)capacity);
                if (!grown) {
                    free(ids);
                    return cm_fail(CM_ERR_NOMEM, "out of memory parsing --ids");
                }
                ids = grown;
            }
            ids[count++] = (int32_t)id;
        }
        cursor = *end == ',' ? end + 1 : end;
    }
    if (count == 0) goto bad;
    *ids_out = ids;
    *count_out = count;
    return CM_OK;
bad:
    free(ids);
    return cm_fail(CM_ERR_INVALID_ARG, "--ids expects ranges like 0-255,300, got '%s'", text);
}

/* Sends `message` and waits for one answer, decoded into *reply (release both with deinit). */
static cm_status_t exchange(void *socket, const cm_wire_message_t *message,
                            cm_zwire_received_t *received, cm_wire_message_t *reply,
                            const char *endpoint) {
    cm_status_t status = cm_zwire_send(socket, NULL, message, 0, NULL);
    if (status != CM_OK) return status;
    cm_wire_limits_t limits = cm_wire_limits_default();
    limits.max_message_bytes = 1ull << 30;
    limits.max_examples = MAX_IDS;
    status = cm_zwire_recv_message(socket, received, reply, &limits, 0);
    if (status == CM_ERR_TIMEOUT)
        return cm_fail(CM_ERR_TIMEOUT,
                       "no answer from %s within the timeout; is the teacher running (and does "
                       "it require CURVE: --curve-secret-key, --teacher-key)?",
                       endpoint);
    if (status != CM_OK) return status;
    if (reply->kind == CM_WIRE_ERROR) {
        status = cm_fail(reply->error.code, "%s answered %s: %s", endpoint,
                         cm_status_name(reply->error.code), reply->error.message);
        cm_zwire_release(received, reply);
        return status;
    }
    return CM_OK;
}

static void print_hello(const cm_wire_hello_t *hello) {
    printf("teacher      %s (%s)\n", hello->peer_name,
           hello->role == CM_WIRE_ROLE_FOUNDATION ? "foundation" : "complementary");
    printf("model        %s\n", hello->model_id);
    printf("model sha256 %s\n", hello->model_sha256);
    printf("dataset      %s, view %s, %d classes\n", hello->dataset_name, hello->view,
           hello->classes);
    printf("fingerprint  %s\n", hello->dataset_fingerprint);
    printf("outputs     ");
    for (int index = 0; index < hello->output_count; index++) {
        const cm_wire_output_t *output = &hello->outputs[index];
        printf(" %s[", output->name);
        for (int dim = 0; dim < output->ndim; dim++)
            printf(dim ? "x%lld" : "%lld", (long long)output->shape[dim]);
        printf("]");
    }
    printf("\nlimits       %u examples/request, %llu bytes/message, %u requests in flight\n",
           hello->limits.max_examples, (unsigned long long)hello->limits.max_message_bytes,
           hello->limits.max_in_flight);
    printf("heads       ");
    for (int index = 0; index < hello->head_count; index++) printf(" %s", hello->heads[index]);
    printf(hello->head_count ? "\n" : " none lent\n");
}

/* Prints at most 10 of the `count` floats from index `first` of an unaligned frame. */
static void print_floats(const void *frame, size_t first, size_t count) {
    for (size_t index = 0; index < count && index < 10; index++) {
        float value;
        memcpy(&value, (const char *)frame + sizeof(float) * (first + index), sizeof value);
        printf(" %8.4f", (double)value);
    }
    printf(count > 10 ? " ...\n" : "\n");
}

/* L2 norm of `count` floats of an unaligned frame. */
static double frame_norm(const void *frame, size_t count) {
    double sum = 0.0;
    for (size_t index = 0; index < count; index++) {
        float value;
        memcpy(&value, (const char *)frame + sizeof(float) * index, sizeof value);
        sum += (double)value * (double)value;
    }
    return sqrt(sum);
}

static void print_head(const cm_wire_head_reply_t *head, int rows) {
    size_t classes = (size_t)head->classes, inputs = (size_t)head->inputs;
    printf("head '%s' (dense, F32): weight shape [%d,%d], bias shape [%d]\n", head->feature,
           head->classes, head->inputs, head->classes);
    for (int row = 0; row < rows && row < head->classes; row++) {
        printf("  weight[%d]", row);
        print_floats(head->weight, (size_t)row * inputs, inputs);
    }
    printf("  bias     ");
    print_floats(head->bias, 0, classes);
    printf("weight L2 norm %.6g, bias L2 norm %.6g\n", frame_norm(head->weight, classes * inputs),
           frame_norm(head->bias, classes));
}

/* Decodes a float tensor frame into a new array of floats. */
static float *tensor_floats(const cm_wire_tensor_t *tensor, size_t elements) {
    float *values = malloc(sizeof(float) * (elements ? elements : 1));
    if (!values) return NULL;
    if (tensor->encoding == CM_DTYPE_F32)
        memcpy(values, tensor->data, sizeof(float) * elements);
    else if (tensor->encoding == CM_DTYPE_F16)
        cm_wire_f16_to_f32(values, tensor->data, elements);
    else if (tensor->encoding == CM_DTYPE_BF16)
        cm_wire_bf16_to_f32(values, tensor->data, elements);
    else
        for (size_t index = 0; index < elements; index++) { /* frames may be unaligned */
            int32_t integer;
            memcpy(&integer, (const char *)tensor->data + 4 * index, sizeof integer);
            values[index] = (float)integer;
        }
    return values;
}

static void print_reply(const cm_wire_batch_reply_t *reply, int rows, const cm_dataset_t *dataset,
                        cm_split_t split) {
    static const char *const layouts[] = {"dense", "top-k values", "top-k classes", "tail mass"};
    for (int index = 0; index < reply->tensor_count; index++) {
        const cm_wire_tensor_t *tensor = &reply->tensors[index];
        size_t elements = 1;
        printf("%s (%s, %s) shape [", tensor->name, layouts[tensor->layout],
               cm_dtype_name(tensor->encoding));
        for (int dim = 0; dim < tensor->ndim; dim++) {
            printf(dim ? ",%lld" : "%lld", (long long)tensor->shape[dim]);
            elements *= (size_t)tensor->shape[dim];
        }
        printf("], %zu bytes\n", tensor->bytes);
        float *values = tensor_floats(tensor, elements);
        if (!values) continue;
        size_t width = elements / (size_t)reply->example_count;
        for (int row = 0; row < rows && row < reply->example_count; row++) {
            printf("  id %-6d", reply->example_ids[row]);
            for (size_t column = 0; column < width && column < 10; column++)
                printf(" %8.4f", (double)values[(size_t)row * width + column]);
            printf(width > 10 ? " ...\n" : "\n");
        }
        if (dataset && dataset->splits[split].labels && strcmp(tensor->name, "logits") == 0 &&
            tensor->layout == CM_WIRE_DENSE) {
            int correct = 0, known = 0;
            for (int row = 0; row < reply->example_count; row++) {
                const float *logits = values + (size_t)row * width;
                size_t best = 0;
                for (size_t class = 1; class < width; class ++)
                    if (logits[class] > logits[best]) best = class;
                int data_row = cm_dataset_row(dataset, split, reply->example_ids[row]);
                if (data_row < 0) continue;
                known++;
                correct += (int)best == dataset->splits[split].labels[data_row];
            }
            if (known)
                printf("accuracy on these %d examples: %.4f\n", known, (double)correct / known);
        }
        free(values);
    }
}

static cm_status_t query(const query_options_t *options) {
    cm_split_t split;
    cm_status_t status = cm_split_parse(options->split, &split);
    if (status != CM_OK) return status;
    cm_dtype_t encoding = cm_dtype_parse(options->encoding);
    if (encoding != CM_DTYPE_F32 && encoding != CM_DTYPE_F16 && encoding != CM_DTYPE_BF16)
        return cm_fail(CM_ERR_INVALID_ARG, "--encoding must be F32, F16 or BF16");
    int32_t *ids = NULL;
    int id_count = 0;
    status = parse_ids(options->ids, &ids, &id_count);
    if (status != CM_OK) return status;

    void *context = zmq_ctx_new();
    void *socket = zmq_socket(context, ZMQ_DEALER);
    int linger = 0;
    zmq_setsockopt(socket, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(socket, ZMQ_RCVTIMEO, &options->timeout_ms, sizeof options->timeout_ms);
    zmq_setsockopt(socket, ZMQ_SNDTIMEO, &options->timeout_ms, sizeof options->timeout_ms);
    cm_zwire_received_t received = {0};
    cm_wire_message_t hello, reply;
    cm_wire_message_init(&reply, CM_WIRE_HEARTBEAT, 0);
    cm_wire_message_init(&hello, CM_WIRE_HEARTBEAT, 0);
    cm_dataset_t *dataset = NULL;
    if (options->curve_secret_key || options->teacher_key) {
        cm_curve_keypair_t keys;
        char server_key[CM_CURVE_KEY_TEXT];
        if (!options->curve_secret_key || !options->teacher_key)
            status = cm_fail(CM_ERR_INVALID_ARG,
                             "CURVE needs both --curve-secret-key and --teacher-key");
        if (status == CM_OK) status = cm_curve_load_keypair(options->curve_secret_key, &keys);
        if (status == CM_OK) status = cm_curve_load_public(options->teacher_key, server_key);
        if (status == CM_OK) status = cm_curve_make_client(socket, &keys, server_key);
        if (status != CM_OK) goto done;
    }
    char endpoint[CM_ENDPOINT_MAX];
    status = cm_endpoint_check(options->connect, CM_ENDPOINT_CONNECT, "--connect", endpoint,
                               sizeof endpoint);
    if (status != CM_OK) goto done;
    if (zmq_connect(socket, endpoint) != 0) {
        status = cm_fail(CM_ERR_INVALID_ARG, "cannot connect to '%s': %s", options->connect,
                         zmq_strerror(zmq_errno()));
        goto done;
    }
    cm_wire_message_t message;
    cm_wire_message_init(&message, CM_WIRE_HELLO, 1);
    message.hello.peer = CM_WIRE_PEER_TRAINER;
    message.hello.peer_name = "teacher-server query";
    message.hello.limits = cm_wire_limits_default();
    cm_zwire_received_t hello_frames = {0};
    status = exchange(socket, &message, &hello_frames, &hello, options->connect);
    if (status != CM_OK) goto done;
    if (hello.kind != CM_WIRE_HELLO) {
        status =
            cm_fail(CM_ERR_PROTOCOL, "%s answered Hello with another message", options->connect);
        cm_zwire_release(&hello_frames, &hello);
        goto done;
    }
    print_hello(&hello.hello);
    /* Labels for the accuracy line, if this machine has the teacher's dataset. */
    cm_dataset_options_t data_options = {.directory = options->data_dir};
    if (cm_dataset_load(&dataset, options->data ? options->data : hello.hello.dataset_name, NULL,
                        &data_options) != CM_OK)
        cm_clear_error(); /* not on this machine: no accuracy line */
    else if (strcmp(dataset->fingerprint, hello.hello.dataset_fingerprint) != 0)
        cm_dataset_free(&dataset); /* other data: its labels would not line up */
    cm_zwire_release(&hello_frames, &hello);

    if (options->head) {
        cm_wire_message_init(&message, CM_WIRE_HEAD_REQUEST, 2);
        message.head_request.feature = options->head;
        status = exchange(socket, &message, &received, &reply, options->connect);
        if (status != CM_OK) goto done;
        if (reply.kind != CM_WIRE_HEAD_REPLY) {
            status = cm_fail(CM_ERR_PROTOCOL, "%s answered the HeadRequest with another message",
                             options->connect);
            goto done;
        }
        print_head(&reply.head_reply, options->rows);
        goto done;
    }

    cm_wire_message_init(&message, CM_WIRE_BATCH_REQUEST, 2);
    cm_wire_batch_request_t *request = &message.batch_request;
    request->split = split;
    request->example_count = id_count;
    request->example_ids = ids;
    request->encoding = encoding;
    request->top_k = options->top_k;
    char outputs[256];
    snprintf(outputs, sizeof outputs, "%s", options->outputs);
    char *save = NULL;
    for (char *name = strtok_r(outputs, ",", &save);
         name && request->output_count < CM_WIRE_MAX_OUTPUTS; name = strtok_r(NULL, ",", &save))
        request->outputs[request->output_count++] = name;
    status = exchange(socket, &message, &received, &reply, options->connect);
    if (status != CM_OK) goto done;
    if (reply.kind != CM_WIRE_BATCH_REPLY) {
        status = cm_fail(CM_ERR_PROTOCOL, "%s answered the request with another message",
                         options->connect);
        goto done;
    }
    print_reply(&reply.batch_reply, options->rows, dataset, split);
done:
    cm_zwire_release(&received, &reply);
    cm_dataset_free(&dataset);
    free(ids);
    zmq_close(socket);
    zmq_ctx_term(context);
    return status;
}

int teacher_query_main(int argc, char **argv, int first) {
    query_options_t options = {
        .connect = "tcp://127.0.0.1:5555",
        .split = "test",
        .ids = "0-9",
        .outputs = "logits",
        .encoding = "F32",
        .data_dir = NULL,
        .top_k = 0,
        .rows = 3,
        .timeout_ms = 5000,
    };
    const cm_cli_option_t table[] = {
        {"connect", CM_CLI_STRING, &options.connect, "ENDPOINT", "the teacher's ZeroMQ endpoint",
         0},
        {"split", CM_CLI_STRING, &options.split, "SPLIT", "train, test, valid or transfer", 0},
        {"ids", CM_CLI_STRING, &options.ids, "RANGES", "example ids, e.g. 0-255,300", 0},
        {"outputs", CM_CLI_STRING, &options.outputs, "LIST",
         "comma-separated: logits,hidden,tokens", 0},
        {"encoding", CM_CLI_STRING, &options.encoding, "ENC", "F32, F16 or BF16", 0},
        {"top-k", CM_CLI_INT, &options.top_k, "K", "ask for the k largest logits only (0: all)", 0},
        {"head", CM_CLI_STRING, &options.head, "FEATURE",
         "ask for the head the teacher lends for FEATURE (e.g. hidden) instead of outputs", 0},
        {"rows", CM_CLI_INT, &options.rows, "N", "rows of each tensor to print", 0},
        {"timeout-ms", CM_CLI_INT, &options.timeout_ms, "MS", "how long to wait for each answer",
         0},
        {"curve-secret-key", CM_CLI_STRING, &options.curve_secret_key, "FILE",
         "our key pair, to talk to a CURVE teacher (from `student-trainer keygen`)", 0},
        {"teacher-key", CM_CLI_STRING, &options.teacher_key, "FILE",
         "the teacher's public key file (.pub), with --curve-secret-key", 0},
        {"data", CM_CLI_STRING, &options.data, "DATA",
         "the teacher's dataset on this machine (folder or built-in name), for the accuracy line "
         "[default: the name in its Hello]",
         0},
        {"data-dir", CM_CLI_STRING, &options.data_dir, "DIR",
         "files of a built-in dataset, for the accuracy line", 0},
    };
    const int count = (int)(sizeof table / sizeof table[0]);
    int help = 0;
    cm_status_t status = cm_cli_parse(table, count, argc, argv, first, &help);
    if (help) {
        cm_cli_usage(
            stdout, "teacher-server query [--connect ENDPOINT] [--ids 0-255] [options]",
            "Asks a running teacher for its outputs on some examples and prints its Hello,\n"
            "the shapes and first rows of what it returns, and the accuracy on those ids\n"
            "(when the dataset is installed here). With --head hidden it asks for the frozen\n"
            "head the teacher lends instead and prints its shape, first rows and L2 norms.",
            table, count);
        return 0;
    }
    if (status == CM_OK && (options.timeout_ms < 1 || options.rows < 0 || options.top_k < 0))
        status = cm_fail(CM_ERR_INVALID_ARG,
                         "--timeout-ms must be positive, --rows and --top-k not negative");
    if (status != CM_OK) {
        fprintf(stderr, "teacher-server query: %s\n", cm_last_error());
        return 2;
    }
    cm_log_init("teacher-server", CM_LOG_INFO);
    status = query(&options);
    if (status != CM_OK) {
        fprintf(stderr, "teacher-server query: %s\n", cm_last_error());
        return 1;
    }
    return 0;
}
