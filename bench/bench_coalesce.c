/*
 * bench_coalesce: what `teacher-server serve --max-batch` buys when several
 * trainers share one teacher (a hyper-parameter sweep against one committee).
 *
 * One real `teacher-server serve` child (--threads 1, tcp loopback, a
 * random-init MLP 784-1024-1024-10, where the forward pass dominates) is
 * started with --max-batch 1 (every request alone, the default), then with
 * --max-batch 256 and 1024.  Against each, 1, 2 and 4 trainer-like clients (one
 * thread and one DEALER each) keep WINDOW requests of REQUEST_IDS training
 * ids for logits in F32 in flight, the student-trainer's defaults (--window
 * 8, --batch 128), for MEASURE_SECONDS; a second round does the same with
 * requests of SMALL_IDS ids (trainers with small batches).  Reported: served
 * examples/s of all clients together, its ratio to one client against the
 * same server, and the mean time from sending a request to its reply.  A
 * last figure is the latency of one client with one request in flight
 * (nothing to coalesce with: what coalescing costs a lone trainer).
 *
 * The inputs are the real Fashion-MNIST (skipped with a message when it is
 * not installed); the server is found in $COMMITTEE_BIN_DIR (or build/bin).
 * `bench_coalesce REPEATS` runs the settings REPEATS times, interleaved, and
 * reports the best of each figure (for a loaded host).
 * The clients share the machine's cores with the server, as trainers on the
 * teacher's host would.  About a minute in all.
 */
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
    SERVED_TRAIN = 10000,
    SERVED_TEST = 1000,
    WINDOW = 8,        /* requests each client keeps in flight: student-trainer --window */
    REQUEST_IDS = 128, /* ids per request: student-trainer --batch */
    SMALL_IDS = 16,
    MAX_CLIENTS = 4,
    TIMEOUT_MS = 30000
};

static const double WARM_UP_SECONDS = 0.5;
static const double MEASURE_SECONDS = 4.0;

static char directory[64];

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

/* One trainer-like client: its thread, socket and tallies. */
typedef struct {
    void *context;
    const char *endpoint;
    int index, ids_per_request, window;
    double seconds;
    long examples, replies;
    long all_examples;  /* warm-up included */
    double latency_sum; /* seconds, over `replies` */
    double started, finished;
    char failure[256];
} client_t;

static cm_status_t send_request(void *socket, uint64_t request_id, int count, int client) {
    int32_t ids[REQUEST_IDS];
    int first = (int)((request_id * (uint64_t)count + (uint64_t)client * 2477) %
                      (uint64_t)(SERVED_TRAIN - count));
    for (int row = 0; row < count; row++) ids[row] = first + row;
    cm_wire_message_t request;
    cm_wire_message_init(&request, CM_WIRE_BATCH_REQUEST, request_id);
    request.batch_request.split = CM_SPLIT_TRAIN;
    request.batch_request.example_ids = ids;
    request.batch_request.example_count = count;
    request.batch_request.outputs[0] = "logits";
    request.batch_request.output_count = 1;
    request.batch_request.encoding = CM_DTYPE_F32;
    return cm_zwire_send(socket, NULL, &request, 0, NULL);
}

/* Receives the next BatchReply (heartbeats skipped); its request id in *request_id. */
static cm_status_t receive_reply(void *socket, uint64_t *request_id, long *examples) {
    cm_wire_limits_t limits = {1u << 20, 1ull << 32, 1u << 16};
    cm_zwire_received_t received;
    cm_wire_message_t reply;
    cm_status_t status = cm_zwire_recv_message(socket, &received, &reply, &limits, 0);
    if (status != CM_OK) return status;
    if (reply.kind != CM_WIRE_BATCH_REPLY)
        status = cm_fail(CM_ERR_PROTOCOL, "the teacher answered with %s",
                         reply.kind == CM_WIRE_ERROR ? reply.error.message : "another kind");
    *request_id = reply.request_id;
    *examples = reply.kind == CM_WIRE_BATCH_REPLY ? reply.batch_reply.example_count : 0;
    cm_zwire_release(&received, &reply);
    return status;
}

/* Keeps `window` requests in flight for warm-up plus `seconds`, timing each. */
static void *run_client(void *argument) {
    client_t *client = argument;
    void *socket = serve_child_dealer(client->context, client->endpoint, TIMEOUT_MS, NULL, NULL);
    if (!socket) {
        snprintf(client->failure, sizeof client->failure, "cannot connect");
        return NULL;
    }
    double sent_at[WINDOW * 2] = {0}; /* by request id % (2 * WINDOW) */
    uint64_t next_id = 1;
    int in_flight = 0;
    cm_status_t status = CM_OK;
    double began = cm_progress_now(), measure_from = began + WARM_UP_SECONDS;
    double measure_until = measure_from + client->seconds;
    client->started = measure_from;
    while (status == CM_OK && in_flight < client->window) {
        sent_at[next_id % (2 * WINDOW)] = cm_progress_now();
        status = send_request(socket, next_id++, client->ids_per_request, client->index);
        in_flight += status == CM_OK;
    }
    while (status == CM_OK && in_flight > 0) {
        uint64_t request_id = 0;
        long examples = 0;
        status = receive_reply(socket, &request_id, &examples);
        if (status != CM_OK) break;
        in_flight--;
        client->all_examples += examples;
        double now = cm_progress_now();
        if (now >= measure_from && now < measure_until) {
            client->examples += examples;
            client->replies++;
            client->latency_sum += now - sent_at[request_id % (2 * WINDOW)];
            client->finished = now;
        }
        if (now < measure_until) {
            sent_at[next_id % (2 * WINDOW)] = now;
            status = send_request(socket, next_id++, client->ids_per_request, client->index);
            in_flight += status == CM_OK;
        }
    }
    if (status != CM_OK) snprintf(client->failure, sizeof client->failure, "%s", cm_last_error());
    zmq_close(socket);
    return NULL;
}

typedef struct {
    double examples_per_second;
    double mean_latency;            /* seconds */
    double examples_per_cpu_second; /* of the teacher process: what load on the host hides */
} figure_t;

/* CPU seconds (user + system) the process `pid` has used so far; 0 when unknown. */
static double cpu_seconds(pid_t pid) {
    char path[64], text[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *file = fopen(path, "r");
    if (!file) return 0.0;
    size_t got = fread(text, 1, sizeof text - 1, file);
    fclose(file);
    text[got] = '\0';
    const char *after_name = strrchr(text, ')'); /* the name may hold spaces */
    unsigned long user = 0, system_time = 0;
    if (!after_name || sscanf(after_name + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu",
                              &user, &system_time) != 2)
        return 0.0;
    return (double)(user + system_time) / (double)sysconf(_SC_CLK_TCK);
}

/* `clients` clients at once against the server at `endpoint`. */
static int measure(void *context, const serve_child_t *server, int clients, int ids, int window,
                   double seconds, figure_t *figure) {
    const char *endpoint = server->endpoint;
    double cpu_before = cpu_seconds(server->pid);
    client_t runs[MAX_CLIENTS];
    pthread_t threads[MAX_CLIENTS];
    for (int index = 0; index < clients; index++) {
        runs[index] = (client_t){.context = context,
                                 .endpoint = endpoint,
                                 .index = index,
                                 .ids_per_request = ids,
                                 .window = window,
                                 .seconds = seconds};
        if (pthread_create(&threads[index], NULL, run_client, &runs[index]) != 0) return -1;
    }
    long examples = 0, replies = 0, all_examples = 0;
    double latency = 0.0, started = 0.0, finished = 0.0;
    int failed = 0;
    for (int index = 0; index < clients; index++) {
        pthread_join(threads[index], NULL);
        if (runs[index].failure[0]) {
            fprintf(stderr, "bench_coalesce: client %d: %s\n", index, runs[index].failure);
            failed = 1;
        }
        examples += runs[index].examples;
        all_examples += runs[index].all_examples;
        replies += runs[index].replies;
        latency += runs[index].latency_sum;
        if (index == 0 || runs[index].started < started) started = runs[index].started;
        if (runs[index].finished > finished) finished = runs[index].finished;
    }
    if (failed || replies == 0 || finished <= started) return -1;
    figure->examples_per_second = (double)examples / (finished - started);
    figure->mean_latency = latency / (double)replies;
    double cpu = cpu_seconds(server->pid) - cpu_before;
    figure->examples_per_cpu_second = cpu > 0.0 ? (double)all_examples / cpu : 0.0;
    return 0;
}

static const int client_counts[] = {1, 2, 4};
enum { SETTINGS = 3 };
static const char *const max_batches[SETTINGS] = {"1", "256", "1024"};

/* Keeps the better of two measurements of one figure (the host's load only ever slows one). */
static void keep_best(figure_t *best, const figure_t *got) {
    if (got->examples_per_second > best->examples_per_second) {
        best->examples_per_second = got->examples_per_second;
        best->mean_latency = got->mean_latency;
    }
    if (got->examples_per_cpu_second > best->examples_per_cpu_second)
        best->examples_per_cpu_second = got->examples_per_cpu_second;
}

int main(int argc, char **argv) {
    int repeats = argc > 1 ? atoi(argv[1]) : 1;
    if (argc > 2 || repeats < 1) {
        fprintf(stderr,
                "usage: bench_coalesce [REPEATS]  (the best of REPEATS rounds, default 1)\n");
        return 2;
    }
    if (access("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz", R_OK) != 0 &&
        !getenv("COMMITTEE_DATA_DIR")) {
        printf("bench_coalesce: skipped, Fashion-MNIST is not installed (make deps)\n");
        return 0;
    }
    snprintf(directory, sizeof directory, "/tmp/bench_coalesce.XXXXXX");
    if (!mkdtemp(directory)) {
        perror("bench_coalesce: mkdtemp");
        return 1;
    }
    cm_dataset_t *dataset = NULL;
    cm_dataset_options_t options = {.max_train = SERVED_TRAIN, .max_test = SERVED_TEST};
    char checkpoint[128];
    snprintf(checkpoint, sizeof checkpoint, "%s/mlp.safetensors", directory);
    if (cm_dataset_load(&dataset, "fashion-mnist", "full", &options) != CM_OK ||
        write_checkpoint(checkpoint, "mlp:784-1024-1024-10", dataset) != CM_OK) {
        fprintf(stderr, "bench_coalesce: %s\n", cm_last_error());
        return 1;
    }
    cm_dataset_free(&dataset);
    void *context = zmq_ctx_new();
    enum { SIZES = 2, COUNTS = 3 };
    const int sizes[SIZES] = {REQUEST_IDS, SMALL_IDS};
    figure_t figures[SETTINGS][SIZES][COUNTS], lone[SETTINGS], got;
    memset(figures, 0, sizeof figures);
    memset(lone, 0, sizeof lone);
    int failed = 0;
    for (int round = 0; round < repeats * SETTINGS && !failed; round++) {
        int setting = round % SETTINGS; /* settings interleaved, so drifting load hits all */
        serve_child_t server = {0};
        char log_path[160];
        snprintf(log_path, sizeof log_path, "%s/serve-%d.log", directory, round);
        char *extra[] = {"--max-batch", (char *)max_batches[setting], "--queue", "64", NULL};
        if (serve_child_start(&server, checkpoint, SERVED_TRAIN, SERVED_TEST, extra, log_path,
                              TIMEOUT_MS) != 0) {
            failed = 1;
            break;
        }
        for (int size = 0; size < SIZES && !failed; size++)
            for (int count = 0; count < COUNTS && !failed; count++) {
                failed = measure(context, &server, client_counts[count], sizes[size], WINDOW,
                                 MEASURE_SECONDS, &got) != 0;
                keep_best(&figures[setting][size][count], &got);
            }
        if (!failed)
            failed = measure(context, &server, 1, REQUEST_IDS, 1, MEASURE_SECONDS / 2, &got) != 0;
        if (!failed) keep_best(&lone[setting], &got);
        int exit_status = serve_child_stop(&server, SIGTERM, TIMEOUT_MS);
        if (failed || exit_status != 0) {
            fprintf(stderr, "bench_coalesce: --max-batch %s failed (exit status %d); its log:\n",
                    max_batches[setting], exit_status);
            serve_child_print_log(&server);
            failed = 1;
        }
    }
    zmq_ctx_term(context);
    char command[128];
    snprintf(command, sizeof command, "rm -rf '%s'", directory);
    if (system(command) != 0) fprintf(stderr, "bench_coalesce: could not remove %s\n", directory);
    if (failed) return 1;

    double load[3] = {0, 0, 0};
    getloadavg(load, 3);
    printf("Best of %d round%s. Each cell: served examples/s of all clients (x the 1-client figure "
           "of the same "
           "server), mean request latency, and examples per CPU-second of the teacher process; "
           "the last columns are examples/s over --max-batch 1's, wall / CPU. Load average "
           "at the end: %.2f.\n\n",
           repeats, repeats > 1 ? "s" : "", load[0]);
    printf("| MLP 784-1024-1024-10 teacher, 1 BLAS thread, tcp loopback, %d requests in flight "
           "per client |",
           WINDOW);
    for (int setting = 0; setting < SETTINGS; setting++)
        printf(" --max-batch %s |", max_batches[setting]);
    for (int setting = 1; setting < SETTINGS; setting++) printf(" %s / 1 |", max_batches[setting]);
    printf("\n|---|");
    for (int column = 1; column < 2 * SETTINGS; column++) printf("---|");
    printf("\n");
    for (int size = 0; size < SIZES; size++)
        for (int count = 0; count < COUNTS; count++) {
            printf("| %d client%s, %d ids per request |", client_counts[count],
                   client_counts[count] > 1 ? "s" : "", sizes[size]);
            for (int setting = 0; setting < SETTINGS; setting++) {
                const figure_t *figure = &figures[setting][size][count];
                printf(" %.0f (x %.2f), %.1f ms, %.0f/cpu-s |", figure->examples_per_second,
                       figure->examples_per_second / figures[setting][size][0].examples_per_second,
                       figure->mean_latency * 1000.0, figure->examples_per_cpu_second);
            }
            for (int setting = 1; setting < SETTINGS; setting++)
                printf(" %.2f / %.2f |",
                       figures[setting][size][count].examples_per_second /
                           figures[0][size][count].examples_per_second,
                       figures[setting][size][count].examples_per_cpu_second /
                           figures[0][size][count].examples_per_cpu_second);
            printf("\n");
        }
    printf("| 1 client, 1 request of %d ids in flight (nothing to coalesce) |", REQUEST_IDS);
    for (int setting = 0; setting < SETTINGS; setting++)
        printf(" %.0f, %.2f ms, %.0f/cpu-s |", lone[setting].examples_per_second,
               lone[setting].mean_latency * 1000.0, lone[setting].examples_per_cpu_second);
    for (int setting = 1; setting < SETTINGS; setting++)
        printf(" %.2f / %.2f |", lone[setting].examples_per_second / lone[0].examples_per_second,
               lone[setting].examples_per_cpu_second / lone[0].examples_per_cpu_second);
    printf("\n");
    return 0;
}
