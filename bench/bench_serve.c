/*
 * bench_serve: what serving a teacher over ZeroMQ costs, next to what the
 * same work costs in process, all measured in one run on this machine.
 *
 *  - examples/s answered by a real `teacher-server serve` child (--threads 1,
 *    tcp loopback, batches of 256 consecutive training ids, logits only, F32,
 *    REQUESTS_IN_FLIGHT requests kept in flight by one DEALER) for the MLP
 *    784-1024-1024-10 and the small ViT, as a ratio to cm_model_forward at
 *    batch 256 on one BLAS thread in this process;
 *  - payload GB/s of replies carrying a 256 x 512 f32 "hidden" tensor
 *    (mlp:784-512-10, 512 KiB per reply), next to the in-process forward
 *    pass expressed in the same bytes and to raw ZeroMQ: a DEALER/ROUTER
 *    pair over tcp loopback in this process moving 512 KiB replies (sent
 *    zero-copy, as the teacher does) with the same number in flight.
 *
 * Checkpoints are random-init (speed does not depend on the weights) with
 * the metadata the server needs, written to a temp dir that is removed at
 * the end; the inputs are the real Fashion-MNIST (skipped with a message
 * when it is not installed).  The server is found in $COMMITTEE_BIN_DIR (or
 * build/bin), stopped with SIGTERM and reaped; it gets SIGKILL if this
 * program dies first.  Each figure is measured for a fixed wall time, so the
 * whole run takes about half a minute.  The client process shares the two
 * cores with the server, as a trainer would.  The child and its client
 * come from bench/serve_child, shared with bench_curve.
 */
#include "cm_blas.h"
#include "cm_dataset.h"
#include "cm_model.h"
#include "cm_progress.h"
#include "cm_wire.h"
#include "cm_zwire.h"
#include "serve_child.h"

#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zmq.h>

enum {
    BATCH = 256,
    SERVED_TRAIN = 10000, /* training examples the server loads (--max-train) */
    SERVED_TEST = 1000,
    REQUESTS_IN_FLIGHT = 4,
    FEATURE_WIDTH = 512,                       /* of the payload MLP's "hidden" */
    FEATURE_BYTES = BATCH * FEATURE_WIDTH * 4, /* 512 KiB per reply */
    TIMEOUT_MS = 10000                         /* start-up, stop, every receive */
};

static const double WARM_UP_SECONDS = 0.3;
static const double MEASURE_SECONDS = 3.0; /* per served or raw ZeroMQ figure */
static const double FORWARD_SECONDS = 1.5; /* per in-process figure */

static char directory[64];

/* ---------------------------------------------------------------- measurements */

static cm_status_t write_checkpoint(const char *path, const char *spec_text,
                                    const cm_dataset_t *dataset) {
    cm_model_spec_t spec;
    cm_model_t *model = NULL;
    cm_status_t status = cm_model_spec_parse(spec_text, &spec);
    if (status == CM_OK) status = cm_model_new(&spec, 1, &model);
    if (status != CM_OK) return status;
    cm_model_init(model, 1);
    const char *const metadata[] = {"view",        dataset->view, "dataset",
                                    dataset->name, "fingerprint", dataset->fingerprint};
    status = cm_model_save(model, path, metadata, 3);
    cm_model_free(&model);
    return status;
}

/* Examples/s of cm_model_forward at batch BATCH on the first training examples. */
static double forward_rate(const char *spec_text, const cm_dataset_t *dataset) {
    cm_model_spec_t spec;
    cm_model_t *model = NULL;
    if (cm_model_spec_parse(spec_text, &spec) != CM_OK ||
        cm_model_new(&spec, BATCH, &model) != CM_OK)
        return 0.0;
    cm_model_init(model, 1);
    /* The first BATCH training examples, gathered once (the server gathers per request). */
    float *inputs = malloc(sizeof(float) * BATCH * (size_t)dataset->features);
    if (!inputs) {
        cm_model_free(&model);
        return 0.0;
    }
    cm_dataset_gather_range(dataset, CM_SPLIT_TRAIN, 0, BATCH, inputs);
    for (int warm_up = 0; warm_up < 3; warm_up++) cm_model_forward(model, inputs, BATCH);
    long batches = 0;
    double started = cm_progress_now(), elapsed = 0.0;
    while (elapsed < FORWARD_SECONDS) {
        cm_model_forward(model, inputs, BATCH);
        batches++;
        elapsed = cm_progress_now() - started;
    }
    free(inputs);
    cm_model_free(&model);
    return (double)batches * BATCH / elapsed;
}

/* Receives the next answer (heartbeats skipped); CM_OK with *message to release. */
static cm_status_t receive(void *socket, cm_zwire_received_t *received,
                           cm_wire_message_t *message) {
    cm_wire_limits_t limits = {1u << 20, 1ull << 32, 1u << 16};
    return cm_zwire_recv_message(socket, received, message, &limits, 0);
}

static void release(cm_zwire_received_t *received, cm_wire_message_t *message) {
    cm_zwire_release(received, message);
}

typedef struct {
    double examples_per_second;
    double payload_bytes_per_second; /* tensor frames only */
} served_t;

static cm_status_t send_batch_request(void *socket, uint64_t request_id, const char *output) {
    int32_t ids[BATCH];
    int first = (int)((request_id * BATCH) % (SERVED_TRAIN - BATCH));
    for (int row = 0; row < BATCH; row++) ids[row] = first + row;
    cm_wire_message_t request;
    cm_wire_message_init(&request, CM_WIRE_BATCH_REQUEST, request_id);
    request.batch_request.split = CM_SPLIT_TRAIN;
    request.batch_request.example_ids = ids;
    request.batch_request.example_count = BATCH;
    request.batch_request.outputs[0] = output;
    request.batch_request.output_count = 1;
    request.batch_request.encoding = CM_DTYPE_F32;
    return cm_zwire_send(socket, NULL, &request, 0, NULL);
}

/*
 * Keeps REQUESTS_IN_FLIGHT requests for `output` in flight for `seconds`, then
 * waits for the last replies; fills *result from the replies' examples and bytes.
 */
static cm_status_t run_requests(void *socket, const char *output, double seconds,
                                uint64_t *next_request_id, served_t *result) {
    long examples = 0;
    double payload = 0.0, started = cm_progress_now(), finished = started;
    int in_flight = 0;
    cm_status_t status = CM_OK;
    while (status == CM_OK && in_flight < REQUESTS_IN_FLIGHT) {
        status = send_batch_request(socket, (*next_request_id)++, output);
        in_flight += status == CM_OK;
    }
    while (status == CM_OK && in_flight > 0) {
        cm_zwire_received_t received;
        cm_wire_message_t reply;
        status = receive(socket, &received, &reply);
        if (status != CM_OK) break;
        if (reply.kind != CM_WIRE_BATCH_REPLY) {
            status = cm_fail(CM_ERR_PROTOCOL, "the teacher answered with %s",
                             reply.kind == CM_WIRE_ERROR ? reply.error.message : "another kind");
            release(&received, &reply);
            break;
        }
        in_flight--;
        examples += reply.batch_reply.example_count;
        for (int index = 0; index < reply.batch_reply.tensor_count; index++)
            payload += (double)reply.batch_reply.tensors[index].bytes;
        release(&received, &reply);
        finished = cm_progress_now();
        if (finished - started < seconds) {
            status = send_batch_request(socket, (*next_request_id)++, output);
            in_flight += status == CM_OK;
        }
    }
    result->examples_per_second = (double)examples / (finished - started);
    result->payload_bytes_per_second = payload / (finished - started);
    return status;
}

/* Serves `spec_text` from a child process and measures one client against it. */
static int measure_served(void *context, const char *spec_text, const cm_dataset_t *dataset,
                          const char *name, const char *output, served_t *result) {
    char checkpoint[128];
    snprintf(checkpoint, sizeof checkpoint, "%s/%s.safetensors", directory, name);
    if (write_checkpoint(checkpoint, spec_text, dataset) != CM_OK) {
        fprintf(stderr, "bench_serve: %s\n", cm_last_error());
        return -1;
    }
    serve_child_t server = {0};
    char log_path[160];
    snprintf(log_path, sizeof log_path, "%s/%s.log", directory, name);
    if (serve_child_start(&server, checkpoint, SERVED_TRAIN, SERVED_TEST, NULL, log_path,
                          TIMEOUT_MS) != 0)
        return -1;
    void *socket = serve_child_dealer(context, server.endpoint, TIMEOUT_MS, NULL, NULL);
    cm_status_t status = socket ? CM_OK : cm_fail(CM_ERR_IO, "cannot connect");
    cm_wire_message_t hello;
    cm_wire_message_init(&hello, CM_WIRE_HELLO, 0);
    hello.hello.peer = CM_WIRE_PEER_TRAINER;
    hello.hello.peer_name = "bench_serve";
    hello.hello.limits = cm_wire_limits_default();
    if (status == CM_OK) status = cm_zwire_send(socket, NULL, &hello, 0, NULL);
    if (status == CM_OK) {
        cm_zwire_received_t received;
        cm_wire_message_t answer;
        status = receive(socket, &received, &answer);
        if (status == CM_OK) release(&received, &answer);
    }
    uint64_t next_request_id = 1;
    served_t warm_up;
    if (status == CM_OK)
        status = run_requests(socket, output, WARM_UP_SECONDS, &next_request_id, &warm_up);
    if (status == CM_OK)
        status = run_requests(socket, output, MEASURE_SECONDS, &next_request_id, result);
    if (socket) zmq_close(socket);
    int exit_status = serve_child_stop(&server, SIGTERM, TIMEOUT_MS);
    if (status != CM_OK || exit_status != 0) {
        fprintf(stderr, "bench_serve: serving %s failed (%s; exit status %d); its log:\n",
                spec_text, status != CM_OK ? cm_last_error() : "replies fine", exit_status);
        serve_child_print_log(&server);
        return -1;
    }
    return 0;
}

/* ---------------------------------------------------------------- raw ZeroMQ */

static void keep_buffer(void *data, void *hint) { (void)data, (void)hint; }

/* The ROUTER side: answers every request with FEATURE_BYTES, zero-copy, until "stop". */
static void *answer_requests(void *router) {
    static char payload[FEATURE_BYTES];
    for (;;) {
        zmq_msg_t routing, request;
        zmq_msg_init(&routing);
        zmq_msg_init(&request);
        if (zmq_msg_recv(&routing, router, 0) < 0 || zmq_msg_recv(&request, router, 0) < 0) {
            zmq_msg_close(&routing);
            zmq_msg_close(&request);
            break;
        }
        int stop = zmq_msg_size(&request) == 4 && memcmp(zmq_msg_data(&request), "stop", 4) == 0;
        zmq_msg_close(&request);
        zmq_msg_t reply;
        zmq_msg_init_data(&reply, payload, sizeof payload, keep_buffer, NULL);
        zmq_msg_send(&routing, router, ZMQ_SNDMORE);
        zmq_msg_send(&reply, router, 0);
        if (stop) break;
    }
    zmq_close(router);
    return NULL;
}

/* Bytes/s of FEATURE_BYTES replies with REQUESTS_IN_FLIGHT requests outstanding. */
static double raw_zmq_rate(void *context) {
    void *router = zmq_socket(context, ZMQ_ROUTER);
    int timeout_ms = TIMEOUT_MS, linger_ms = 0;
    zmq_setsockopt(router, ZMQ_RCVTIMEO, &timeout_ms, sizeof timeout_ms);
    zmq_setsockopt(router, ZMQ_LINGER, &linger_ms, sizeof linger_ms);
    char endpoint[256];
    size_t endpoint_size = sizeof endpoint;
    if (zmq_bind(router, "tcp://127.0.0.1:*") != 0 ||
        zmq_getsockopt(router, ZMQ_LAST_ENDPOINT, endpoint, &endpoint_size) != 0) {
        zmq_close(router);
        return 0.0;
    }
    /* From here on the router belongs to the thread (handed over before it starts). */
    pthread_t thread;
    if (pthread_create(&thread, NULL, answer_requests, router) != 0) {
        zmq_close(router);
        return 0.0;
    }
    void *dealer = serve_child_dealer(context, endpoint, TIMEOUT_MS, NULL, NULL);
    double rate = 0.0;
    for (int phase = 0; dealer && phase < 2; phase++) {
        double seconds = phase == 0 ? WARM_UP_SECONDS : MEASURE_SECONDS;
        double bytes = 0.0, started = cm_progress_now(), finished = started;
        int in_flight = 0, failed = 0;
        for (; in_flight < REQUESTS_IN_FLIGHT; in_flight++) zmq_send(dealer, "go", 2, 0);
        while (in_flight > 0 && !failed) {
            zmq_msg_t reply;
            zmq_msg_init(&reply);
            failed = zmq_msg_recv(&reply, dealer, 0) < 0;
            bytes += (double)zmq_msg_size(&reply);
            zmq_msg_close(&reply);
            in_flight--;
            finished = cm_progress_now();
            if (!failed && finished - started < seconds)
                in_flight += zmq_send(dealer, "go", 2, 0) == 2;
        }
        rate = failed ? 0.0 : bytes / (finished - started);
    }
    if (dealer) {
        zmq_send(dealer, "stop", 4, 0);
        zmq_msg_t last;
        zmq_msg_init(&last);
        zmq_msg_recv(&last, dealer, 0);
        zmq_msg_close(&last);
        zmq_close(dealer);
    }
    pthread_join(thread, NULL);
    return rate;
}

/* ---------------------------------------------------------------- main */

int main(void) {
    if (access("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz", R_OK) != 0 &&
        !getenv("COMMITTEE_DATA_DIR")) {
        printf("bench_serve: skipped, Fashion-MNIST is not installed (make deps)\n");
        return 0;
    }
    cm_blas_set_threads(1);
    snprintf(directory, sizeof directory, "/tmp/bench_serve.XXXXXX");
    if (!mkdtemp(directory)) {
        perror("bench_serve: mkdtemp");
        return 1;
    }
    cm_dataset_t *dataset = NULL;
    cm_dataset_options_t options = {.max_train = SERVED_TRAIN, .max_test = SERVED_TEST};
    if (cm_dataset_load(&dataset, "fashion-mnist", "full", &options) != CM_OK) {
        fprintf(stderr, "bench_serve: %s\n", cm_last_error());
        return 1;
    }
    void *context = zmq_ctx_new();
    const struct {
        const char *label, *spec, *name;
    } models[] = {
        {"MLP 784-1024-1024-10", "mlp:784-1024-1024-10", "mlp"},
        {"ViT 28x28/7, dim 64, depth 2, 4 heads, mlp 128",
         "vit:image=28x28,patch=7,dim=64,depth=2,heads=4,mlp=128", "vit"},
    };
    const int model_count = (int)(sizeof models / sizeof models[0]);
    double in_process[2] = {0.0, 0.0};
    served_t served[2], features;
    int failed = 0;
    for (int index = 0; index < model_count && !failed; index++) {
        in_process[index] = forward_rate(models[index].spec, dataset);
        failed = measure_served(context, models[index].spec, dataset, models[index].name, "logits",
                                &served[index]) != 0;
    }
    const char *feature_spec = "mlp:784-512-10";
    double feature_forward = 0.0, raw = 0.0;
    if (!failed) {
        feature_forward = forward_rate(feature_spec, dataset);
        failed =
            measure_served(context, feature_spec, dataset, "features", "hidden", &features) != 0;
    }
    if (!failed) raw = raw_zmq_rate(context);
    zmq_ctx_term(context);
    cm_dataset_free(&dataset);
    char command[128];
    snprintf(command, sizeof command, "rm -rf '%s'", directory);
    if (system(command) != 0) fprintf(stderr, "bench_serve: could not remove %s\n", directory);
    if (failed) return 1;

    printf("| teacher (batch 256, logits F32, tcp loopback, %d in flight, 1 BLAS thread) "
           "| in process | served | served / in process |\n",
           REQUESTS_IN_FLIGHT);
    printf("|---|---|---|---|\n");
    for (int index = 0; index < model_count; index++)
        printf("| %s | %.0f examples/s | %.0f examples/s | %.2f |\n", models[index].label,
               in_process[index], served[index].examples_per_second,
               served[index].examples_per_second / in_process[index]);
    printf("\n| payload: 256 x 512 f32 per reply (512 KiB), tcp loopback, %d in flight | GB/s |\n",
           REQUESTS_IN_FLIGHT);
    printf("|---|---|\n");
    printf("| served \"hidden\" of %s | %.3f |\n", feature_spec,
           features.payload_bytes_per_second / 1e9);
    printf("| in-process forward of %s, as hidden bytes | %.3f |\n", feature_spec,
           feature_forward * FEATURE_WIDTH * 4 / 1e9);
    printf("| raw ZeroMQ DEALER/ROUTER, 512 KiB zero-copy replies | %.3f |\n", raw / 1e9);
    return 0;
}
