/*
 * bench_curve: what CURVE encryption costs a served teacher, measured in one
 * run on this machine, plaintext and CURVE side by side.
 *
 *  - payload GB/s and examples/s of replies carrying a 256 x 512 f32
 *    "hidden" tensor (mlp:784-512-10, 512 KiB per reply) from a real
 *    `teacher-server serve` child (--threads 1, tcp loopback, batches of 256
 *    consecutive training ids, F32, REQUESTS_IN_FLIGHT requests kept in
 *    flight by one DEALER), once plaintext and once with --curve-secret-key
 *    and --allow-keys (the client's key allowed, so the ZAP handler runs);
 *  - raw ZeroMQ: a DEALER/ROUTER pair over tcp loopback in this process
 *    moving 512 KiB replies with the same number in flight, plaintext and
 *    CURVE, which isolates the cost of the cipher from the teacher's work.
 *
 * The checkpoint is random-init (speed does not depend on the weights),
 * keys come from cm_curve_keygen, all in a temp dir removed at the end; the
 * inputs are the real Fashion-MNIST (skipped with a message when it is not
 * installed).  The server is found in $COMMITTEE_BIN_DIR (or build/bin),
 * stopped with SIGTERM and reaped; it gets SIGKILL if this program dies
 * first.  The client shares the two cores with the server, as a trainer
 * would.  Both servers run at once and the figures are measured in ROUNDS
 * alternating rounds of a fixed wall time, keeping each one's best round,
 * so that load from other processes on a shared machine hits both sides
 * alike (about 20 s in all).
 */
#include "cm_curve.h"
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
    FEATURE_WIDTH = 512,                       /* of the model's "hidden" */
    FEATURE_BYTES = BATCH * FEATURE_WIDTH * 4, /* 512 KiB per reply */
    TIMEOUT_MS = 10000                         /* start-up, stop, every receive */
};

static const double WARM_UP_SECONDS = 0.3;
static const double MEASURE_SECONDS = 1.0; /* per round and figure */
enum { ROUNDS = 3 };
static const char *const MODEL_SPEC = "mlp:784-512-10";

static char directory[64];

typedef struct {
    double examples_per_second;
    double payload_bytes_per_second; /* tensor frames only */
} rate_t;

/* ---------------------------------------------------------------- the client */

/* Receives the next answer (heartbeats skipped); CM_OK with *message to release. */
static cm_status_t receive(void *socket, cm_zwire_received_t *received,
                           cm_wire_message_t *message) {
    cm_wire_limits_t limits = {1u << 20, 1ull << 32, 1u << 16};
    return cm_zwire_recv_message(socket, received, message, &limits, 0);
}

static void release(cm_zwire_received_t *received, cm_wire_message_t *message) {
    cm_zwire_release(received, message);
}

static cm_status_t send_batch_request(void *socket, uint64_t request_id) {
    int32_t ids[BATCH];
    int first = (int)((request_id * BATCH) % (SERVED_TRAIN - BATCH));
    for (int row = 0; row < BATCH; row++) ids[row] = first + row;
    cm_wire_message_t request;
    cm_wire_message_init(&request, CM_WIRE_BATCH_REQUEST, request_id);
    request.batch_request.split = CM_SPLIT_TRAIN;
    request.batch_request.example_ids = ids;
    request.batch_request.example_count = BATCH;
    request.batch_request.outputs[0] = "hidden";
    request.batch_request.output_count = 1;
    request.batch_request.encoding = CM_DTYPE_F32;
    return cm_zwire_send(socket, NULL, &request, 0, NULL);
}

/* Keeps REQUESTS_IN_FLIGHT requests in flight for `seconds`, then waits for the last replies. */
static cm_status_t run_requests(void *socket, double seconds, uint64_t *next_request_id,
                                rate_t *result) {
    long examples = 0;
    double payload = 0.0, started = cm_progress_now(), finished = started;
    int in_flight = 0;
    cm_status_t status = CM_OK;
    while (status == CM_OK && in_flight < REQUESTS_IN_FLIGHT) {
        status = send_batch_request(socket, (*next_request_id)++);
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
            status = send_batch_request(socket, (*next_request_id)++);
            in_flight += status == CM_OK;
        }
    }
    result->examples_per_second = (double)examples / (finished - started);
    result->payload_bytes_per_second = payload / (finished - started);
    return status;
}

/* One served teacher and the client that measures it. */
typedef struct {
    serve_child_t server;
    void *socket;
    uint64_t next_request_id;
    rate_t best;
} served_t;

/* Starts the server (CURVE when keys is not NULL), connects, says Hello and warms up. */
static cm_status_t start_served(served_t *served, void *context, const char *checkpoint,
                                const cm_curve_keypair_t *keys, const char *server_key) {
    memset(served, 0, sizeof *served);
    served->next_request_id = 1;
    char secret_key[128], allowed[128], log_path[160];
    snprintf(secret_key, sizeof secret_key, "%s/teacher.key", directory);
    snprintf(allowed, sizeof allowed, "%s/trainer.pub", directory);
    snprintf(log_path, sizeof log_path, "%s/%s.log", directory, keys ? "curve" : "plain");
    char *const curve[] = {"--curve-secret-key", secret_key, "--allow-keys", allowed, NULL};
    if (serve_child_start(&served->server, checkpoint, SERVED_TRAIN, SERVED_TEST,
                          keys ? curve : NULL, log_path, TIMEOUT_MS) != 0)
        return cm_fail(CM_ERR_UNAVAILABLE, "the server did not start");
    served->socket =
        serve_child_dealer(context, served->server.endpoint, TIMEOUT_MS, keys, server_key);
    if (!served->socket) return cm_fail(CM_ERR_IO, "cannot connect to %s", served->server.endpoint);
    cm_wire_message_t hello;
    cm_wire_message_init(&hello, CM_WIRE_HELLO, 0);
    hello.hello.peer = CM_WIRE_PEER_TRAINER;
    hello.hello.peer_name = "bench_curve";
    hello.hello.limits = cm_wire_limits_default();
    cm_status_t status = cm_zwire_send(served->socket, NULL, &hello, 0, NULL);
    if (status == CM_OK) {
        cm_zwire_received_t received;
        cm_wire_message_t answer;
        status = receive(served->socket, &received, &answer);
        if (status == CM_OK) release(&received, &answer);
    }
    rate_t warm_up;
    if (status == CM_OK)
        status = run_requests(served->socket, WARM_UP_SECONDS, &served->next_request_id, &warm_up);
    return status;
}

/* One measuring round; keeps the best. */
static cm_status_t measure_served(served_t *served) {
    rate_t rate;
    cm_status_t status =
        run_requests(served->socket, MEASURE_SECONDS, &served->next_request_id, &rate);
    if (status == CM_OK && rate.payload_bytes_per_second > served->best.payload_bytes_per_second)
        served->best = rate;
    return status;
}

/* Closes the client and stops the server; -1 (with its log) when anything went wrong. */
static int stop_served(served_t *served, cm_status_t status, const char *label) {
    if (served->socket) zmq_close(served->socket);
    int exit_status =
        served->server.pid ? serve_child_stop(&served->server, SIGTERM, TIMEOUT_MS) : -1;
    if (status == CM_OK && exit_status == 0) return 0;
    fprintf(stderr, "bench_curve: serving %s failed (%s; exit status %d); its log:\n", label,
            status != CM_OK ? cm_last_error() : "replies fine", exit_status);
    serve_child_print_log(&served->server);
    return -1;
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
        int received =
            zmq_msg_recv(&routing, router, 0) >= 0 && zmq_msg_recv(&request, router, 0) >= 0;
        int stop = !received ||
                   (zmq_msg_size(&request) == 4 && memcmp(zmq_msg_data(&request), "stop", 4) == 0);
        zmq_msg_close(&request);
        if (stop) {
            zmq_msg_close(&routing);
            break;
        }
        zmq_msg_t reply;
        zmq_msg_init_data(&reply, payload, sizeof payload, keep_buffer, NULL);
        zmq_msg_send(&routing, router, ZMQ_SNDMORE);
        zmq_msg_send(&reply, router, 0);
    }
    zmq_close(router);
    return NULL;
}

/*
 * Bytes/s of FEATURE_BYTES replies with REQUESTS_IN_FLIGHT requests outstanding; a CURVE pair
 * when keys are given (no ZAP handler in this context, so libzmq admits the client).
 */
static double raw_zmq_rate(void *context, const cm_curve_keypair_t *server_keys,
                           const cm_curve_keypair_t *client_keys) {
    void *router = zmq_socket(context, ZMQ_ROUTER);
    int timeout_ms = TIMEOUT_MS, linger_ms = 0;
    zmq_setsockopt(router, ZMQ_RCVTIMEO, &timeout_ms, sizeof timeout_ms);
    zmq_setsockopt(router, ZMQ_LINGER, &linger_ms, sizeof linger_ms);
    char endpoint[256];
    size_t endpoint_size = sizeof endpoint;
    if ((server_keys && cm_curve_make_server(router, server_keys, "bench") != CM_OK) ||
        zmq_bind(router, "tcp://127.0.0.1:*") != 0 ||
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
    void *dealer =
        serve_child_dealer(context, endpoint, TIMEOUT_MS, server_keys ? client_keys : NULL,
                           server_keys ? server_keys->public_key : NULL);
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
    if (dealer) { /* lingers until "stop" is on its way */
        int stop_linger_ms = TIMEOUT_MS;
        zmq_setsockopt(dealer, ZMQ_LINGER, &stop_linger_ms, sizeof stop_linger_ms);
        zmq_send(dealer, "stop", 4, 0);
        zmq_close(dealer);
    }
    pthread_join(thread, NULL); /* without a dealer, the thread's receive times out */
    return rate;
}

/* ---------------------------------------------------------------- main */

/* Writes the random-init checkpoint with the metadata the server needs. */
static cm_status_t write_checkpoint(const char *path, const cm_dataset_t *dataset) {
    cm_model_spec_t spec;
    cm_model_t *model = NULL;
    cm_status_t status = cm_model_spec_parse(MODEL_SPEC, &spec);
    if (status == CM_OK) status = cm_model_new(&spec, 1, &model);
    if (status != CM_OK) return status;
    cm_model_init(model, 1);
    const char *const metadata[] = {"view",        dataset->view, "dataset",
                                    dataset->name, "fingerprint", dataset->fingerprint};
    status = cm_model_save(model, path, metadata, 3);
    cm_model_free(&model);
    return status;
}

static double ratio(double curve, double plain) { return plain > 0 ? curve / plain : 0.0; }

int main(void) {
    if (access("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz", R_OK) != 0) {
        printf("bench_curve: skipped, Fashion-MNIST is not installed (make deps)\n");
        return 0;
    }
    if (cm_curve_available() != CM_OK) {
        printf("bench_curve: skipped, %s\n", cm_last_error());
        return 0;
    }
    snprintf(directory, sizeof directory, "/tmp/bench_curve.XXXXXX");
    if (!mkdtemp(directory)) {
        perror("bench_curve: mkdtemp");
        return 1;
    }
    char checkpoint[128], teacher_base[128], trainer_base[128];
    snprintf(checkpoint, sizeof checkpoint, "%s/features.safetensors", directory);
    snprintf(teacher_base, sizeof teacher_base, "%s/teacher", directory);
    snprintf(trainer_base, sizeof trainer_base, "%s/trainer", directory);
    cm_dataset_t *dataset = NULL;
    cm_dataset_options_t options = {.max_train = SERVED_TRAIN, .max_test = SERVED_TEST};
    cm_curve_keypair_t teacher_keys, trainer_keys;
    cm_status_t status = cm_dataset_load(&dataset, "fashion-mnist", "full", &options);
    if (status == CM_OK) status = write_checkpoint(checkpoint, dataset);
    if (status == CM_OK) status = cm_curve_keygen(teacher_base, &teacher_keys);
    if (status == CM_OK) status = cm_curve_keygen(trainer_base, &trainer_keys);
    cm_dataset_free(&dataset);
    int failed = status != CM_OK;
    if (failed) fprintf(stderr, "bench_curve: %s\n", cm_last_error());

    void *context = zmq_ctx_new();
    served_t plain, curve;
    double raw_plain = 0.0, raw_curve = 0.0;
    if (!failed) {
        cm_status_t plain_status = start_served(&plain, context, checkpoint, NULL, NULL);
        cm_status_t curve_status =
            plain_status == CM_OK
                ? start_served(&curve, context, checkpoint, &trainer_keys, teacher_keys.public_key)
                : CM_ERR_CANCELLED;
        for (int round = 0; round < ROUNDS && plain_status == CM_OK && curve_status == CM_OK;
             round++) {
            plain_status = measure_served(&plain);
            if (plain_status == CM_OK) curve_status = measure_served(&curve);
        }
        failed = stop_served(&plain, plain_status, "plaintext") != 0;
        if (curve_status != CM_ERR_CANCELLED)
            failed |= stop_served(&curve, curve_status, "with CURVE") != 0;
    }
    for (int round = 0; round < ROUNDS && !failed; round++) {
        double rate = raw_zmq_rate(context, NULL, NULL);
        raw_plain = rate > raw_plain ? rate : raw_plain;
        rate = raw_zmq_rate(context, &teacher_keys, &trainer_keys);
        raw_curve = rate > raw_curve ? rate : raw_curve;
        failed = raw_plain <= 0 || raw_curve <= 0;
        if (failed) fprintf(stderr, "bench_curve: the raw ZeroMQ pair did not run\n");
    }
    zmq_ctx_term(context);
    char command[128];
    snprintf(command, sizeof command, "rm -rf '%s'", directory);
    if (system(command) != 0) fprintf(stderr, "bench_curve: could not remove %s\n", directory);
    if (failed) return 1;

    printf("| 256 x 512 f32 \"hidden\" replies (512 KiB) of %s, tcp loopback, %d in flight, 1 "
           "BLAS thread | plaintext | CURVE | CURVE / plaintext |\n",
           MODEL_SPEC, REQUESTS_IN_FLIGHT);
    printf("|---|---|---|---|\n");
    printf("| teacher-server, payload GB/s | %.3f | %.3f | %.2f |\n",
           plain.best.payload_bytes_per_second / 1e9, curve.best.payload_bytes_per_second / 1e9,
           ratio(curve.best.payload_bytes_per_second, plain.best.payload_bytes_per_second));
    printf("| teacher-server, examples/s | %.0f | %.0f | %.2f |\n", plain.best.examples_per_second,
           curve.best.examples_per_second,
           ratio(curve.best.examples_per_second, plain.best.examples_per_second));
    printf("| raw ZeroMQ DEALER/ROUTER, payload GB/s | %.3f | %.3f | %.2f |\n", raw_plain / 1e9,
           raw_curve / 1e9, ratio(raw_curve, raw_plain));
    return 0;
}
