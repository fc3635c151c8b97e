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
 * cores with the server, as a trainer would.  Bench programs link only the
 * library, so the small spawn-and-wait code here is separate from the
 * tests' serve_fixture.
 */
#include "cm_blas.h"
#include "cm_dataset.h"
#include "cm_model.h"
#include "cm_progress.h"
#include "cm_wire.h"
#include "cm_zwire.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
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

/* ---------------------------------------------------------------- the server child */

typedef struct {
    pid_t pid; /* 0 when not running */
    char log_path[128];
    char endpoint[256]; /* as the server reported it: the port it was given */
} server_t;

static void print_log(const server_t *server) {
    FILE *file = fopen(server->log_path, "r");
    if (!file) return;
    char line[1024];
    while (fgets(line, sizeof line, file)) fputs(line, stderr);
    fclose(file);
}

/* Copies the endpoint from the "serving ... on ENDPOINT, view ..." log line; 1 once it is there. */
static int read_endpoint(server_t *server) {
    char log[8192];
    FILE *file = fopen(server->log_path, "r");
    if (!file) return 0;
    size_t got = fread(log, 1, sizeof log - 1, file);
    fclose(file);
    log[got] = '\0';
    const char *line = strstr(log, " serving '");
    const char *start = line ? strstr(line, ") on ") : NULL;
    const char *end = start ? strstr(start, ", view ") : NULL;
    if (!end || !strchr(end, '\n')) return 0;
    start += strlen(") on ");
    snprintf(server->endpoint, sizeof server->endpoint, "%.*s", (int)(end - start), start);
    return 1;
}

/*
 * Sends `signal_number` (0: none) and waits up to TIMEOUT_MS for the child, then
 * kills it.  Returns its exit status, 256 + the signal that ended it, or -1.
 */
static int stop_server(server_t *server, int signal_number) {
    if (server->pid <= 0) return -1;
    if (signal_number) kill(server->pid, signal_number);
    double deadline = cm_progress_now() + TIMEOUT_MS / 1000.0;
    int wait_status = 0, result = -1;
    for (;;) {
        pid_t done = waitpid(server->pid, &wait_status, WNOHANG);
        if (done == server->pid) {
            result =
                WIFEXITED(wait_status) ? WEXITSTATUS(wait_status) : 256 + WTERMSIG(wait_status);
            break;
        }
        if (done < 0 && errno != EINTR) break;
        if (cm_progress_now() > deadline) {
            kill(server->pid, SIGKILL);
            waitpid(server->pid, &wait_status, 0);
            break;
        }
        usleep(5000);
    }
    server->pid = 0;
    return result;
}

/* Starts `teacher-server serve` on an ephemeral loopback TCP port; 0 once it is serving. */
static int start_server(server_t *server, const char *checkpoint, const char *name) {
    const char *bin_dir = getenv("COMMITTEE_BIN_DIR");
    char binary[512], max_train[16], max_test[16];
    snprintf(binary, sizeof binary, "%s/teacher-server",
             bin_dir && *bin_dir ? bin_dir : "build/bin");
    snprintf(max_train, sizeof max_train, "%d", SERVED_TRAIN);
    snprintf(max_test, sizeof max_test, "%d", SERVED_TEST);
    snprintf(server->log_path, sizeof server->log_path, "%s/%s.log", directory, name);
    char *const argv[] = {binary,        "serve",
                          "--model",     (char *)checkpoint,
                          "--bind",      "tcp://127.0.0.1:*",
                          "--http",      "off",
                          "--threads",   "1",
                          "--max-train", max_train,
                          "--max-test",  max_test,
                          NULL};
    pid_t parent = getpid();
    server->pid = fork();
    if (server->pid < 0) {
        server->pid = 0;
        fprintf(stderr, "bench_serve: fork: %s\n", strerror(errno));
        return -1;
    }
    if (server->pid == 0) { /* async-signal-safe calls only until execv */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent) _exit(127);
        int log = open(server->log_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (log < 0) _exit(127);
        dup2(log, 1);
        dup2(log, 2);
        execv(binary, argv);
        _exit(127);
    }
    double deadline = cm_progress_now() + TIMEOUT_MS / 1000.0;
    while (!read_endpoint(server)) {
        int wait_status;
        int exited = waitpid(server->pid, &wait_status, WNOHANG) == server->pid;
        if (exited || cm_progress_now() > deadline) {
            if (exited)
                server->pid = 0;
            else
                stop_server(server, SIGKILL);
            fprintf(stderr, "bench_serve: %s did not start serving; its log:\n", binary);
            print_log(server);
            return -1;
        }
        usleep(5000);
    }
    return 0;
}

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
    const float *inputs = dataset->splits[CM_SPLIT_TRAIN].inputs;
    for (int warm_up = 0; warm_up < 3; warm_up++) cm_model_forward(model, inputs, BATCH);
    long batches = 0;
    double started = cm_progress_now(), elapsed = 0.0;
    while (elapsed < FORWARD_SECONDS) {
        cm_model_forward(model, inputs, BATCH);
        batches++;
        elapsed = cm_progress_now() - started;
    }
    cm_model_free(&model);
    return (double)batches * BATCH / elapsed;
}

static void *connect_dealer(void *context, const char *endpoint) {
    void *socket = zmq_socket(context, ZMQ_DEALER);
    int timeout_ms = TIMEOUT_MS, linger_ms = 0;
    zmq_setsockopt(socket, ZMQ_RCVTIMEO, &timeout_ms, sizeof timeout_ms);
    zmq_setsockopt(socket, ZMQ_SNDTIMEO, &timeout_ms, sizeof timeout_ms);
    zmq_setsockopt(socket, ZMQ_LINGER, &linger_ms, sizeof linger_ms);
    if (zmq_connect(socket, endpoint) != 0) {
        zmq_close(socket);
        return NULL;
    }
    return socket;
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
    server_t server = {0};
    if (start_server(&server, checkpoint, name) != 0) return -1;
    void *socket = connect_dealer(context, server.endpoint);
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
    int exit_status = stop_server(&server, SIGTERM);
    if (status != CM_OK || exit_status != 0) {
        fprintf(stderr, "bench_serve: serving %s failed (%s; exit status %d); its log:\n",
                spec_text, status != CM_OK ? cm_last_error() : "replies fine", exit_status);
        print_log(&server);
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
    void *dealer = connect_dealer(context, endpoint);
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
    cm_dataset_options_t options = {NULL, SERVED_TRAIN, SERVED_TEST};
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
