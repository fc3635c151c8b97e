/*
 * teacher_serve: a frozen teacher served over ZeroMQ.
 *
 * Threads.  The main thread runs one libuv loop that owns every socket and
 * handle: the ROUTER socket (through cm_zloop), the HTTP server, a heartbeat
 * timer, SIGINT/SIGTERM handlers and an async handle.  Forward passes run on
 * one compute thread, which is the only user of the model: the loop thread
 * validates a request, copies what the compute thread needs into a job and
 * queues it; the compute thread runs the model in chunks, encodes the
 * outputs into freshly allocated frames and hands the job back through the
 * async handle; the loop thread sends the reply, passing the frames to
 * ZeroMQ without a copy.  The queue is bounded: a request that finds it full
 * is answered Error{BUSY} at once, so memory never grows with load.
 *
 * Unread replies.  A reply stays in memory until ZeroMQ has written it to the
 * network (it calls the frames' free function then), so a peer that sends
 * requests and never reads its replies would pile them up in its ZeroMQ
 * pipe.  Every accepted request therefore reserves the bytes of its reply
 * (estimated from the request, corrected when the reply is made) in its
 * peer's ledger and in the server's total, and gives them back when ZeroMQ
 * releases the last frame (or the request ends without a reply).  A request
 * is answered BUSY when its peer already has --max-in-flight requests
 * reserved (the limit the Hello advertises as max_in_flight_requests), when
 * its reply would take the peer past --max-peer-queued-mb, or the whole
 * server past --max-queued-mb; a first request is always taken, however
 * large, so any request within --max-message-mb can be served.  Reserved
 * bytes and requests are gauges in /metrics, with their peaks, and BUSY
 * answers are counted by reason.  The ROUTER runs with ZMQ_ROUTER_MANDATORY:
 * a message ZeroMQ cannot queue (its peer is gone, or the pipe is at the
 * send high-water mark, which with these limits only floods of small Errors
 * can reach) is dropped and counted in replies_dropped_total instead of
 * vanishing silently, and a peer that is gone when its heartbeat is due is
 * forgotten.
 *
 * Failure model.  Every message is decoded and checked by cm_wire before it
 * is trusted.  Anything wrong with it (a malformed header, another protocol
 * major version, frame lengths that lie, ids out of range, unknown outputs)
 * is answered with an Error naming the problem, counted by code in
 * /metrics, and dropped; the server keeps serving.  Messages that cannot be
 * answered (no routing id, no header) are counted and dropped.
 *
 * Stopping.  The first SIGINT/SIGTERM stops accepting work (new requests get
 * Error{UNAVAILABLE}), lets the queued and running requests finish and be
 * answered, says Bye to every known peer, closes every handle and exits 0.
 * A second signal answers the queued requests Error{CANCELLED} instead.
 *
 * Heads.  With --lend-head on (the default) the teacher lends its frozen
 * head, the dense layer that maps "hidden" to the logits, to trainers that
 * send a HeadRequest (DiverseDistill's interactive variant trains through
 * it); its Hello lists heads ["hidden"].  The head is copied out of the
 * model at start, so the loop thread answers from that copy at once without
 * touching the compute thread's model.
 *
 * Coalescing.  With --max-batch N > 1 the compute thread takes, besides the oldest queued
 * request, the compatible ones (same split, outputs, encoding, top-k) in rounds over the peers
 * until the group holds N examples, gathers their rows into one input batch, runs one forward
 * pass and splits the outputs back into one reply per request (take_group, compute_group).
 * Everything else stays per request: validation and Errors before queueing, reservations,
 * replies.  A request alone runs 256 rows at a time from its first, as without coalescing:
 * OpenBLAS's result for a row depends on how many rows share the product (the Python teacher's
 * exact mode mirrors these chunks), so coalesced replies may differ from lone ones in the last
 * bits, and the default is 1 (no coalescing).
 *
 * Encryption.  With --curve-secret-key and --allow-keys the ROUTER is a CURVE
 * server and a ZAP handler (cm_curve, its own thread and socket) admits only
 * trainers whose public keys are in the allowlist; refusals are logged and
 * counted as errors_total{code="UNAUTHORIZED"}.
 */
#include "teacher_serve.h"

#include "cm_blas.h"
#include "cm_cli.h"
#include "cm_curve.h"
#include "cm_dataset.h"
#include "cm_endpoint.h"
#include "cm_file.h"
#include "cm_http.h"
#include "cm_log.h"
#include "cm_metrics.h"
#include "cm_model.h"
#include "cm_progress.h"
#include "cm_safetensors.h"
#include "cm_sha256.h"
#include "cm_wire.h"
#include "cm_zloop.h"
#include "cm_zwire.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <uv.h>
#include <zmq.h>

enum {
    OUTPUT_LOGITS,
    OUTPUT_HIDDEN,
    OUTPUT_TOKENS,
    OUTPUT_COUNT,
    MAX_PEERS = 256,
    COMPUTE_BATCH = 256,   /* examples per forward pass of a request run alone */
    MAX_COALESCED = 16384, /* the largest --max-batch */
    MAX_ROUTING_ID = 255
};

static const char *const output_names[OUTPUT_COUNT] = {"logits", "hidden", "tokens"};

/* Why a BatchRequest was answered BUSY: the label of committee_teacher_busy_total. */
enum { BUSY_QUEUE, BUSY_PEER_IN_FLIGHT, BUSY_PEER_BYTES, BUSY_SERVER_BYTES, BUSY_REASONS };
static const char *const busy_reasons[BUSY_REASONS] = {"queue", "peer_in_flight", "peer_bytes",
                                                       "server_bytes"};

static const char default_bind[] = "tcp://127.0.0.1:5555", default_http[] = "127.0.0.1:9100";

typedef struct {
    const char *model_path;
    const char *data;
    const char *data_dir;
    const char *bind;
    const char *http;
    const char *name;
    const char *role;
    const char *log_level;
    int threads;
    int max_examples;
    int queue;
    int max_message_mb;
    int max_train;
    int max_test;
    int heartbeat_ms;
    int insecure_public;
    int http_public;
    int max_in_flight;                    /* per peer; 0: --queue */
    int max_peer_queued_mb;               /* reply bytes reserved per peer */
    int max_queued_mb;                    /* reply bytes reserved by the whole server */
    int bind_is_default, http_is_default; /* the default address, given or not */
    int compute_delay_ms;
    int max_batch; /* examples of queued requests run in one forward pass; <= 1: no coalescing */
    const char *curve_secret_key; /* NULL: plaintext */
    const char *allow_keys;
    const char *lend_head; /* "on" or "off" */
} serve_options_t;

/*
 * What one peer has reserved (see "Unread replies" above).  Shared with ZeroMQ's I/O threads,
 * which give reservations back when they release reply frames, so it is atomic and counted:
 * the peer table holds one reference and every reservation one more, and the last one frees it
 * (a forgotten peer's replies may still be in ZeroMQ).
 */
typedef struct {
    _Atomic int references;
    _Atomic int64_t in_flight; /* requests */
    _Atomic int64_t bytes;     /* reply bytes */
} ledger_t;

struct server;

/* The hint of every tensor frame of one reply: the last frame released gives the bytes back. */
typedef struct {
    struct server *server;
    ledger_t *ledger; /* one reference, for the reservation */
    int64_t bytes;
    _Atomic int frames; /* not yet released by ZeroMQ */
} reply_hold_t;

/* One request on its way through the compute thread. */
typedef struct job {
    struct job *next;
    zmq_msg_t routing; /* the requester's routing id */
    uint64_t request_id;
    cm_split_t split;
    int count;
    int32_t *ids;  /* [count], as the request gave them */
    int32_t *rows; /* [count], the ids' rows in the served split (same allocation as ids) */
    int wanted[OUTPUT_COUNT];
    cm_dtype_t encoding;
    int top_k;
    double received_at, started_at, finished_at; /* monotonic seconds */
    cm_status_t status;                          /* of the computation */
    char error[256];
    int tensor_count;
    cm_wire_tensor_t tensors[CM_WIRE_MAX_TENSORS]; /* data: malloc'd frames, ours until sent */
    float *staging[OUTPUT_COUNT]; /* compute thread: [count][width] outputs before encoding */
    ledger_t *ledger; /* the requester's, with `reserved` bytes and one request reserved */
    int64_t reserved;
} job_t;

typedef struct {
    uint8_t id[MAX_ROUTING_ID];
    size_t id_length;
    char name[64];
    double last_seen, last_sent; /* monotonic seconds */
    ledger_t *ledger;
} peer_t;

typedef struct server {
    serve_options_t options;
    uv_loop_t loop;
    void *context, *socket;
    cm_zloop_t *zloop;
    cm_http_t *http;
    cm_metrics_t *metrics;
    uv_signal_t signal_int, signal_term;
    uv_timer_t heartbeat_timer;
    uv_async_t done_async;

    /* Shared with the compute thread, under lock. */
    pthread_mutex_t lock;
    pthread_cond_t wake;
    job_t *pending_head, *pending_tail;
    int pending_count;
    job_t *done_head, *done_tail;
    int in_progress;
    int worker_exit;
    pthread_t worker;
    int worker_started;

    /* Read-only after start-up (the model itself belongs to the compute thread). */
    cm_model_t *model;
    cm_dataset_t *dataset;
    float *batch_inputs; /* compute thread: [capacity][features] */
    int capacity;        /* rows of one forward pass: max(COMPUTE_BATCH, --max-batch) */
    char spec_text[CM_MODEL_SPEC_MAX];
    char model_sha256[65];
    char name[64];
    cm_wire_role_t role;
    int available[OUTPUT_COUNT];
    int width[OUTPUT_COUNT]; /* floats per example */
    int tokens;
    cm_wire_limits_t limits;
    int lends_head;                 /* --lend-head on */
    float *head_weight, *head_bias; /* the head's copy: [classes][hidden], [classes]; NULL
                                       when not lending */
    int head_classes, head_inputs;

    /* Loop thread only. */
    int loop_ready;    /* uv_loop_init succeeded: the loop must be run down and closed */
    int handles_ready; /* the timer, signal and async handles are initialised */
    peer_t peers[MAX_PEERS];
    int peer_count;
    int ready, stopping, closing, signals_seen;

    /* CURVE (all NULL or empty without --curve-secret-key). */
    cm_curve_keypair_t curve_keys;
    cm_curve_allowlist_t *allowlist; /* until the ZAP handler takes it */
    cm_curve_zap_t *zap;

    /* Reservations of all peers (see "Unread replies"); updated from ZeroMQ's threads too. */
    _Atomic int64_t reserved_requests, reserved_bytes, peak_requests, peak_bytes;
    int64_t max_peer_bytes, max_bytes; /* --max-peer-queued-mb, --max-queued-mb in bytes */
    int max_in_flight;                 /* per peer */

    cm_metrics_counter_t *requests, *head_requests, *examples, *bytes_out, *replies_dropped;
    cm_metrics_gauge_t *reserved_requests_gauge, *reserved_bytes_gauge, *peak_requests_gauge,
        *peak_bytes_gauge;
    cm_metrics_counter_t *busy[BUSY_REASONS]; /* committee_teacher_busy_total by busy_reasons */
    cm_metrics_histogram_t *queue_seconds, *compute_seconds;
    cm_metrics_counter_t *forward_batches;
    cm_metrics_histogram_t *coalesced_requests; /* requests per forward batch */
    cm_metrics_gauge_t *queue_depth, *peers_gauge;
} server_t;

/* ---------------------------------------------------------------- helpers */

static uint64_t wall_clock_ns(void) {
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    return (uint64_t)now.tv_sec * 1000000000ull + (uint64_t)now.tv_nsec;
}

static void release_frame(void *data, void *hint) {
    (void)hint;
    free(data);
}

/* ---------------------------------------------------------------- reservations */

static ledger_t *ledger_new(void) {
    ledger_t *ledger = calloc(1, sizeof *ledger);
    if (ledger) atomic_init(&ledger->references, 1);
    return ledger;
}

static void ledger_unref(ledger_t *ledger) {
    if (ledger && atomic_fetch_sub(&ledger->references, 1) == 1) free(ledger);
}

static void raise_peak(_Atomic int64_t *peak, int64_t value, cm_metrics_gauge_t *gauge) {
    int64_t seen = atomic_load(peak);
    while (value > seen && !atomic_compare_exchange_weak(peak, &seen, value)) {
    }
    if (value > seen) cm_metrics_gauge_set(gauge, (double)value);
}

/* Reserves `requests` and `bytes` (either may be negative: a correction) for `ledger`. */
static void reserve(server_t *server, ledger_t *ledger, int64_t requests, int64_t bytes) {
    atomic_fetch_add(&ledger->in_flight, requests);
    atomic_fetch_add(&ledger->bytes, bytes);
    int64_t total_requests = atomic_fetch_add(&server->reserved_requests, requests) + requests;
    int64_t total_bytes = atomic_fetch_add(&server->reserved_bytes, bytes) + bytes;
    cm_metrics_gauge_add(server->reserved_requests_gauge, (double)requests);
    cm_metrics_gauge_add(server->reserved_bytes_gauge, (double)bytes);
    raise_peak(&server->peak_requests, total_requests, server->peak_requests_gauge);
    raise_peak(&server->peak_bytes, total_bytes, server->peak_bytes_gauge);
}

/* Gives back one request's reservation and the ledger reference it held; any thread. */
static void unreserve(server_t *server, ledger_t *ledger, int64_t bytes) {
    reserve(server, ledger, -1, -bytes);
    ledger_unref(ledger);
}

/* ZeroMQ's free function for the frames of a reply with a hold (see reply_hold_t). */
static void release_held_frame(void *data, void *hint) {
    free(data);
    reply_hold_t *hold = hint;
    if (atomic_fetch_sub(&hold->frames, 1) == 1) {
        unreserve(hold->server, hold->ledger, hold->bytes);
        free(hold);
    }
}

static void job_free(server_t *server, job_t *job) {
    if (!job) return;
    for (int index = 0; index < job->tensor_count; index++) free((void *)job->tensors[index].data);
    if (job->ledger) unreserve(server, job->ledger, job->reserved);
    zmq_msg_close(&job->routing);
    free(job->ids);
    free(job);
}

#define ERRORS_NAME "committee_teacher_errors_total"
#define ERRORS_HELP "Requests or messages answered with an Error (or dropped), by code."

/* Every code's series exists from the start (register_metrics registers them at 0). */
static void count_error(server_t *server, cm_status_t code) {
    cm_metrics_label_t label = {"code", cm_status_name(code)};
    cm_metrics_counter_t *counter = NULL;
    if (cm_metrics_register_counter(server->metrics, ERRORS_NAME, ERRORS_HELP, &label, &counter) ==
        CM_OK)
        cm_metrics_counter_add(counter, 1);
}

/*
 * Sends `message` behind `routing`.  With `release` its tensor frames are handed to ZeroMQ,
 * which calls release(data, hint) for each (also when anything fails); without, they are
 * copied.
 */
static cm_status_t send_message(server_t *server, zmq_msg_t *routing,
                                const cm_wire_message_t *message, zmq_free_fn *release,
                                void *hint) {
    cm_wire_encoded_t encoded;
    cm_status_t status = cm_wire_encode(&encoded, message);
    if (status != CM_OK) {
        cm_wire_frame_t tensors[CM_WIRE_MAX_TENSORS];
        int tensor_count = release ? cm_wire_tensor_frames(message, tensors) : 0;
        for (int index = 0; index < tensor_count; index++)
            release((void *)tensors[index].data, hint);
        cm_wire_encoded_deinit(&encoded);
        return status;
    }
    cm_zloop_frame_t frames[CM_WIRE_MAX_FRAMES + 1];
    int frame_count = 0;
    frames[frame_count++] =
        (cm_zloop_frame_t){zmq_msg_data(routing), zmq_msg_size(routing), NULL, NULL};
    uint64_t bytes = 0;
    for (int index = 0; index < encoded.frame_count; index++) {
        int is_tensor = index > 0;
        frames[frame_count++] =
            (cm_zloop_frame_t){encoded.frames[index].data, encoded.frames[index].bytes,
                               is_tensor ? release : NULL, is_tensor ? hint : NULL};
        bytes += encoded.frames[index].bytes;
    }
    status = cm_zloop_send(server->zloop, frames, frame_count);
    cm_wire_encoded_deinit(&encoded);
    if (status == CM_OK)
        cm_metrics_counter_add(server->bytes_out, bytes);
    else
        cm_metrics_counter_add(server->replies_dropped, 1);
    return status;
}

static void reply_error(server_t *server, zmq_msg_t *routing, uint64_t request_id, cm_status_t code,
                        const char *sentence) {
    count_error(server, code);
    cm_log_debug("answering request %llu with %s: %s", (unsigned long long)request_id,
                 cm_status_name(code), sentence);
    cm_wire_message_t reply;
    cm_wire_message_error(&reply, request_id, code, sentence);
    send_message(server, routing, &reply, NULL, NULL);
}

/* ---------------------------------------------------------------- peers */

static peer_t *find_peer(server_t *server, zmq_msg_t *routing) {
    size_t length = zmq_msg_size(routing);
    for (int index = 0; index < server->peer_count; index++)
        if (server->peers[index].id_length == length &&
            memcmp(server->peers[index].id, zmq_msg_data(routing), length) == 0)
            return &server->peers[index];
    return NULL;
}

static peer_t *touch_peer(server_t *server, zmq_msg_t *routing) {
    peer_t *peer = find_peer(server, routing);
    size_t length = zmq_msg_size(routing);
    ledger_t *ledger = peer ? NULL : ledger_new();
    if (!peer && ledger && server->peer_count < MAX_PEERS && length <= MAX_ROUTING_ID) {
        peer = &server->peers[server->peer_count++];
        memset(peer, 0, sizeof *peer);
        peer->ledger = ledger;
        ledger = NULL;
        memcpy(peer->id, zmq_msg_data(routing), length);
        peer->id_length = length;
        snprintf(peer->name, sizeof peer->name, "unnamed");
        peer->last_sent = cm_progress_now();
        cm_metrics_gauge_set(server->peers_gauge, server->peer_count);
    }
    ledger_unref(ledger); /* not needed after all */
    if (peer) peer->last_seen = cm_progress_now();
    return peer;
}

static void forget_peer(server_t *server, peer_t *peer) {
    ledger_unref(peer->ledger);
    *peer = server->peers[--server->peer_count];
    cm_metrics_gauge_set(server->peers_gauge, server->peer_count);
}

/* Sends a body-less message (Heartbeat or Bye) to one peer; CM_ERR_UNAVAILABLE: it is gone. */
static cm_status_t send_to_peer(server_t *server, peer_t *peer, const cm_wire_message_t *message) {
    zmq_msg_t routing;
    zmq_msg_init_size(&routing, peer->id_length);
    memcpy(zmq_msg_data(&routing), peer->id, peer->id_length);
    cm_status_t status = send_message(server, &routing, message, NULL, NULL);
    zmq_msg_close(&routing);
    peer->last_sent = cm_progress_now();
    return status;
}

/* ---------------------------------------------------------------- compute thread */

/* Encodes float values [count] into a new frame of `encoding`; NULL when out of memory. */
static void *encode_floats(const float *values, size_t count, cm_dtype_t encoding, size_t *bytes) {
    *bytes = count * cm_dtype_size(encoding);
    void *frame = malloc(*bytes ? *bytes : 1);
    if (!frame) return NULL;
    if (encoding == CM_DTYPE_F32)
        memcpy(frame, values, *bytes);
    else if (encoding == CM_DTYPE_F16)
        cm_wire_f32_to_f16(frame, values, count);
    else
        cm_wire_f32_to_bf16(frame, values, count);
    return frame;
}

static int add_tensor(job_t *job, const char *name, cm_dtype_t dtype, cm_dtype_t encoding,
                      cm_wire_layout_t layout, void *data, size_t bytes, int ndim, int64_t dim1,
                      int64_t dim2) {
    if (!data) return 0;
    cm_wire_tensor_t *tensor = &job->tensors[job->tensor_count++];
    memset(tensor, 0, sizeof *tensor);
    tensor->name = name;
    tensor->dtype = dtype;
    tensor->encoding = encoding;
    tensor->layout = layout;
    tensor->ndim = ndim;
    tensor->shape[0] = job->count;
    tensor->shape[1] = dim1;
    tensor->shape[2] = dim2;
    tensor->data = data;
    tensor->bytes = bytes;
    return 1;
}

/* Top-k logits: the k largest values, their classes, and the softmax mass of the rest. */
static int add_top_k(job_t *job, const float *logits, int classes) {
    size_t count = (size_t)job->count, k = (size_t)job->top_k;
    float *values = malloc(sizeof(float) * count * k);
    int32_t *indices = malloc(sizeof(int32_t) * count * k);
    float *tail = malloc(sizeof(float) * count);
    int ok = values && indices && tail;
    for (size_t row = 0; ok && row < count; row++) {
        const float *row_logits = logits + row * (size_t)classes;
        float max_logit = row_logits[0];
        for (int class = 1; class < classes; class ++)
            if (row_logits[class] > max_logit) max_logit = row_logits[class];
        double total = 0.0;
        for (int class = 0; class < classes; class ++)
            total += exp((double)(row_logits[class] - max_logit));
        double kept = 0.0;
        for (size_t slot = 0; slot < k; slot++) { /* selection: k is small */
            int best = -1;
            for (int class = 0; class < classes; class ++) {
                int taken = 0;
                for (size_t earlier = 0; earlier < slot; earlier++)
                    taken |= indices[row * k + earlier] == class;
                if (!taken && (best < 0 || row_logits[class] > row_logits[best])) best = class;
            }
            values[row * k + slot] = row_logits[best];
            indices[row * k + slot] = best;
            kept += exp((double)(row_logits[best] - max_logit));
        }
        tail[row] = (float)fmax(0.0, 1.0 - kept / total);
    }
    size_t value_bytes = 0, tail_bytes = 0;
    void *value_frame = ok ? encode_floats(values, count * k, job->encoding, &value_bytes) : NULL;
    void *tail_frame = ok ? encode_floats(tail, count, job->encoding, &tail_bytes) : NULL;
    free(values);
    free(tail);
    if (!value_frame || !tail_frame) {
        free(value_frame);
        free(tail_frame);
        free(indices);
        return 0;
    }
    add_tensor(job, "logits", CM_DTYPE_F32, job->encoding, CM_WIRE_TOPK_VALUES, value_frame,
               value_bytes, 2, (int64_t)k, 0);
    add_tensor(job, "logits", CM_DTYPE_I32, CM_DTYPE_I32, CM_WIRE_TOPK_INDICES, indices,
               sizeof(int32_t) * count * k, 2, (int64_t)k, 0);
    add_tensor(job, "logits", CM_DTYPE_F32, job->encoding, CM_WIRE_TAIL_MASS, tail_frame,
               tail_bytes, 1, 0, 0);
    return 1;
}

/* Allocates the job's staging rows for every output it needs; 0 when out of memory. */
static int allocate_staging(server_t *server, job_t *job) {
    int ok = 1;
    for (int output = 0; output < OUTPUT_COUNT; output++)
        if (job->wanted[output] || (output == OUTPUT_LOGITS && job->top_k)) {
            job->staging[output] =
                malloc(sizeof(float) * (size_t)job->count * (size_t)server->width[output]);
            ok &= job->staging[output] != NULL;
        }
    return ok;
}

static void free_staging(job_t *job) {
    for (int output = 0; output < OUTPUT_COUNT; output++) {
        free(job->staging[output]);
        job->staging[output] = NULL;
    }
}

/*
 * Copies the outputs of the last forward pass, rows [first, first + rows) of it, into the job's
 * staging rows from `start` on.
 */
static void stage_outputs(server_t *server, job_t *job, const float *logits, int first, int rows,
                          int start) {
    for (int output = 0; output < OUTPUT_COUNT; output++) {
        if (!job->staging[output]) continue;
        int width = server->width[output], unused = 0;
        const float *source =
            output == OUTPUT_LOGITS
                ? logits
                : cm_model_feature(server->model, output_names[output], &unused, NULL);
        memcpy(job->staging[output] + (size_t)start * (size_t)width,
               source + (size_t)first * (size_t)width,
               sizeof(float) * (size_t)rows * (size_t)width);
    }
}

/* Encodes the job's staging rows into its tensors (or records NOMEM) and frees them. */
static void encode_job(server_t *server, job_t *job, int ok) {
    for (int output = 0; ok && output < OUTPUT_COUNT; output++) {
        if (!job->wanted[output]) continue;
        if (output == OUTPUT_LOGITS && job->top_k) {
            ok = add_top_k(job, job->staging[output], server->width[output]);
            continue;
        }
        size_t bytes = 0, elements = (size_t)job->count * (size_t)server->width[output];
        void *frame;
        if (job->encoding == CM_DTYPE_F32) { /* the staging rows are the frame: no copy */
            frame = job->staging[output];
            bytes = sizeof(float) * elements;
            job->staging[output] = NULL;
        } else {
            frame = encode_floats(job->staging[output], elements, job->encoding, &bytes);
        }
        if (output == OUTPUT_TOKENS)
            ok =
                add_tensor(job, output_names[output], CM_DTYPE_F32, job->encoding, CM_WIRE_DENSE,
                           frame, bytes, 3, server->tokens, server->width[output] / server->tokens);
        else
            ok = add_tensor(job, output_names[output], CM_DTYPE_F32, job->encoding, CM_WIRE_DENSE,
                            frame, bytes, 2, server->width[output], 0);
    }
    free_staging(job);
    if (!ok) {
        job->status = CM_ERR_NOMEM;
        snprintf(job->error, sizeof job->error, "teacher '%s' ran out of memory for %d examples",
                 server->name, job->count);
    }
}

/* Runs the model over one job's examples alone, COMPUTE_BATCH at a time from its first. */
static void compute_job(server_t *server, job_t *job) {
    int ok = allocate_staging(server, job);
    for (int start = 0; ok && start < job->count; start += COMPUTE_BATCH) {
        int batch = job->count - start < COMPUTE_BATCH ? job->count - start : COMPUTE_BATCH;
        cm_dataset_gather(server->dataset, job->split, job->rows + start, batch,
                          server->batch_inputs);
        const float *logits = cm_model_forward(server->model, server->batch_inputs, batch);
        stage_outputs(server, job, logits, 0, batch, start);
    }
    encode_job(server, job, ok);
}

/*
 * Runs a group of compatible jobs (one split; at most server->capacity examples together) in one
 * forward pass over their concatenated rows and splits the outputs back; a job whose staging
 * cannot be allocated is answered NOMEM and left out, the others are served.  A group of one is
 * compute_job.
 */
static void compute_group(server_t *server, job_t *group) {
    if (!group->next) {
        compute_job(server, group);
        return;
    }
    int rows = 0, features = server->dataset->features;
    for (job_t *job = group; job; job = job->next) {
        if (!allocate_staging(server, job)) {
            job->status = CM_ERR_NOMEM;
            continue;
        }
        cm_dataset_gather(server->dataset, job->split, job->rows, job->count,
                          server->batch_inputs + (size_t)rows * (size_t)features);
        rows += job->count;
    }
    /* rows is 0 only when every job ran out of memory: then there is nothing to run. */
    const float *logits = rows ? cm_model_forward(server->model, server->batch_inputs, rows) : NULL;
    int first = 0;
    for (job_t *job = group; job; job = job->next) {
        int ok = job->status == CM_OK;
        if (ok) {
            stage_outputs(server, job, logits, first, job->count, 0);
            first += job->count;
        }
        encode_job(server, job, ok);
    }
}

/* Two jobs may share a forward pass when their replies are made the same way. */
static int compatible(const job_t *one, const job_t *other) {
    return one->split == other->split && one->encoding == other->encoding &&
           one->top_k == other->top_k &&
           memcmp(one->wanted, other->wanted, sizeof one->wanted) == 0;
}

/*
 * Takes the next group off the pending queue (under server->lock): the oldest job, then, while
 * the group holds at most --max-batch examples, compatible jobs in rounds over the peers (each
 * round takes the oldest untaken compatible job of every peer, in queue order), so one peer's
 * long queue shares the pass with another's single request instead of filling it.  The oldest
 * job always goes first, so nothing waits behind younger work.  Returns the group as a list
 * linked by `next`, in the order its rows run; *count gets its length.
 */
static job_t *take_group(server_t *server, int *count) {
    job_t *head = server->pending_head;
    server->pending_head = head->next;
    head->next = NULL;
    job_t *group = head, *group_tail = head;
    *count = 1;
    int examples = head->count, limit = server->options.max_batch;
    for (int round = 0; limit > 1 && examples < limit; round++) {
        int taken_this_round = 0;
        /* Peers (by ledger) already given a job in this round; the head counts for round 0. */
        const ledger_t *served[MAX_PEERS];
        int served_count = 0;
        if (round == 0) served[served_count++] = head->ledger;
        job_t **link = &server->pending_head;
        while (*link && served_count < MAX_PEERS) {
            job_t *job = *link;
            int seen = 0;
            for (int index = 0; index < served_count && !seen; index++)
                seen = served[index] == job->ledger;
            if (seen || !compatible(job, head) || examples + job->count > limit) {
                link = &job->next;
                continue;
            }
            served[served_count++] = job->ledger;
            *link = job->next; /* off the queue, onto the group */
            job->next = NULL;
            group_tail->next = job;
            group_tail = job;
            examples += job->count;
            ++*count;
            taken_this_round++;
        }
        if (!taken_this_round) break;
    }
    server->pending_tail = NULL;
    for (job_t *job = server->pending_head; job; job = job->next) server->pending_tail = job;
    server->pending_count -= *count;
    return group;
}

static void *compute_thread(void *argument) {
    server_t *server = argument;
    pthread_mutex_lock(&server->lock);
    for (;;) {
        while (!server->pending_head && !server->worker_exit)
            pthread_cond_wait(&server->wake, &server->lock);
        if (server->worker_exit) break;
        int count = 0;
        job_t *group = take_group(server, &count);
        server->in_progress += count;
        pthread_mutex_unlock(&server->lock);

        double started_at = cm_progress_now();
        if (server->options.compute_delay_ms > 0) { /* a deliberately slow teacher, for tests */
            struct timespec pause = {server->options.compute_delay_ms / 1000,
                                     (server->options.compute_delay_ms % 1000) * 1000000L};
            nanosleep(&pause, NULL);
        }
        compute_group(server, group);
        double finished_at = cm_progress_now();
        int examples = 0;
        char request_ids[1024] = "";
        size_t used = 0;
        for (job_t *job = group; job; job = job->next) {
            job->started_at = started_at;
            job->finished_at = finished_at;
            examples += job->count;
            if (used < sizeof request_ids)
                used += (size_t)snprintf(request_ids + used, sizeof request_ids - used, " %llu",
                                         (unsigned long long)job->request_id);
        }
        cm_metrics_counter_add(server->forward_batches, 1);
        cm_metrics_histogram_observe(server->coalesced_requests, (double)count);
        if (count > 1) /* the request ids in row order: tests rebuild the pass from them */
            cm_log_debug("forward batch of %d examples for %d requests:%s", examples, count,
                         request_ids);

        pthread_mutex_lock(&server->lock);
        server->in_progress -= count;
        job_t *group_tail = group;
        while (group_tail->next) group_tail = group_tail->next;
        if (server->done_tail)
            server->done_tail->next = group;
        else
            server->done_head = group;
        server->done_tail = group_tail;
        uv_async_send(&server->done_async);
    }
    pthread_mutex_unlock(&server->lock);
    return NULL;
}

/* ---------------------------------------------------------------- loop thread */

static void maybe_finish_stop(server_t *server);

static void send_reply(server_t *server, job_t *job) {
    if (job->status != CM_OK) {
        reply_error(server, &job->routing, job->request_id, job->status, job->error);
        return;
    }
    cm_wire_message_t reply;
    cm_wire_message_init(&reply, CM_WIRE_BATCH_REPLY, job->request_id);
    reply.batch_reply.split = job->split;
    reply.batch_reply.example_count = job->count;
    reply.batch_reply.example_ids = job->ids;
    reply.batch_reply.tensor_count = job->tensor_count;
    memcpy(reply.batch_reply.tensors, job->tensors,
           sizeof(cm_wire_tensor_t) * (size_t)job->tensor_count);
    /* The reservation moves to a hold on the frames, corrected to their real size; ZeroMQ
     * gives it back when it has written (or dropped) the last of them. */
    int64_t bytes = 0;
    for (int index = 0; index < job->tensor_count; index++)
        bytes += (int64_t)job->tensors[index].bytes;
    reply_hold_t *hold = job->ledger && job->tensor_count > 0 ? malloc(sizeof *hold) : NULL;
    if (hold) {
        reserve(server, job->ledger, 0, bytes - job->reserved);
        *hold = (reply_hold_t){.server = server, .ledger = job->ledger, .bytes = bytes};
        atomic_init(&hold->frames, job->tensor_count);
        job->ledger = NULL;
    }
    job->tensor_count = 0; /* the frames now belong to send_message / ZeroMQ */
    cm_status_t status = send_message(server, &job->routing, &reply,
                                      hold ? release_held_frame : release_frame, hold);
    if (status != CM_OK) {
        cm_log_warn("could not send the reply to request %llu: %s",
                    (unsigned long long)job->request_id, cm_last_error());
        return;
    }
    cm_metrics_counter_add(server->examples, (uint64_t)job->count);
    cm_metrics_histogram_observe(server->queue_seconds, job->started_at - job->received_at);
    cm_metrics_histogram_observe(server->compute_seconds, job->finished_at - job->started_at);
}

static void on_jobs_done(uv_async_t *handle) {
    server_t *server = handle->data;
    pthread_mutex_lock(&server->lock);
    job_t *job = server->done_head;
    server->done_head = server->done_tail = NULL;
    cm_metrics_gauge_set(server->queue_depth, server->pending_count);
    pthread_mutex_unlock(&server->lock);
    while (job) {
        job_t *next = job->next;
        send_reply(server, job);
        job_free(server, job);
        job = next;
    }
    maybe_finish_stop(server);
}

static int output_index(const char *name) {
    for (int output = 0; output < OUTPUT_COUNT; output++)
        if (strcmp(name, output_names[output]) == 0) return output;
    return -1;
}

/* Bytes of the reply to `job` (its tensor frames), from what it asks for. */
static int64_t estimate_reply_bytes(const server_t *server, const job_t *job) {
    int64_t count = job->count, size = (int64_t)cm_dtype_size(job->encoding), bytes = 0;
    for (int output = 0; output < OUTPUT_COUNT; output++) {
        if (!job->wanted[output]) continue;
        if (output == OUTPUT_LOGITS && job->top_k)
            bytes += count * job->top_k * (size + (int64_t)sizeof(int32_t)) + count * size;
        else
            bytes += count * server->width[output] * size;
    }
    return bytes;
}

/*
 * The sentence of a BUSY answer when `peer` may not reserve `bytes` more now (see "Unread
 * replies"), counted by reason; NULL when it may.
 */
static const char *refuse_reservation(server_t *server, const peer_t *peer, int64_t bytes,
                                      char *sentence, size_t size) {
    int reason = -1;
    const double mb = 1024.0 * 1024.0;
    int64_t peer_requests = atomic_load(&peer->ledger->in_flight);
    int64_t peer_bytes = atomic_load(&peer->ledger->bytes);
    int64_t total_bytes = atomic_load(&server->reserved_bytes);
    if (peer_requests >= server->max_in_flight) {
        reason = BUSY_PEER_IN_FLIGHT;
        snprintf(sentence, size,
                 "teacher '%s' holds %lld requests of yours that are unanswered or whose replies "
                 "you have not read yet (at most %d per peer, --max-in-flight): read replies "
                 "before sending more",
                 server->name, (long long)peer_requests, server->max_in_flight);
    } else if (peer_bytes > 0 && peer_bytes + bytes > server->max_peer_bytes) {
        reason = BUSY_PEER_BYTES;
        snprintf(sentence, size,
                 "teacher '%s' holds %.1f MB of replies for you that you have not read yet; "
                 "this one (%.1f MB) would pass the %lld MB per peer (--max-peer-queued-mb)",
                 server->name, (double)peer_bytes / mb, (double)bytes / mb,
                 (long long)(server->max_peer_bytes >> 20));
    } else if (total_bytes > 0 && total_bytes + bytes > server->max_bytes) {
        reason = BUSY_SERVER_BYTES;
        snprintf(sentence, size,
                 "teacher '%s' holds %.1f MB of unread replies for all its peers; this one "
                 "(%.1f MB) would pass its %lld MB (--max-queued-mb); try again later",
                 server->name, (double)total_bytes / mb, (double)bytes / mb,
                 (long long)(server->max_bytes >> 20));
    }
    if (reason < 0) return NULL;
    cm_metrics_counter_add(server->busy[reason], 1);
    return sentence;
}

static void handle_batch_request(server_t *server, peer_t *peer, zmq_msg_t *routing,
                                 const cm_wire_message_t *message) {
    const cm_wire_batch_request_t *request = &message->batch_request;
    cm_metrics_counter_add(server->requests, 1);
    if (server->stopping) {
        char sentence[160];
        snprintf(sentence, sizeof sentence, "teacher '%s' is shutting down", server->name);
        reply_error(server, routing, message->request_id, CM_ERR_UNAVAILABLE, sentence);
        return;
    }
    job_t *job = calloc(1, sizeof *job);
    int32_t *ids = job ? malloc(sizeof(int32_t) * (2 * (size_t)request->example_count + 1)) : NULL;
    if (!job || !ids) {
        free(job);
        free(ids);
        reply_error(server, routing, message->request_id, CM_ERR_NOMEM, "teacher is out of memory");
        return;
    }
    /* The ids are the dataset's (ids.npy, or the row numbers without it): the teacher finds
     * their rows, so a trainer on a subset asks for the same examples a full one would. */
    cm_status_t status = server->dataset->manifest->has_split[request->split]
                             ? CM_OK
                             : cm_fail(CM_ERR_NOT_FOUND, "dataset %s has no '%s' split",
                                       server->dataset->name, cm_split_name(request->split));
    if (status == CM_OK)
        status = cm_dataset_rows(server->dataset, request->split, request->example_ids,
                                 request->example_count, ids + request->example_count);
    if (status != CM_OK) {
        free(job);
        free(ids);
        char sentence[512];
        snprintf(sentence, sizeof sentence, "%s (teacher '%s')", cm_last_error(), server->name);
        reply_error(server, routing, message->request_id, status, sentence);
        return;
    }
    if (request->top_k < 0 || request->top_k > server->width[OUTPUT_LOGITS]) {
        char sentence[160];
        snprintf(sentence, sizeof sentence, "top_k %d is not in 0..%d (the number of classes)",
                 request->top_k, server->width[OUTPUT_LOGITS]);
        free(job);
        free(ids);
        reply_error(server, routing, message->request_id, CM_ERR_OUT_OF_RANGE, sentence);
        return;
    }
    zmq_msg_init(&job->routing);
    zmq_msg_copy(&job->routing, routing);
    job->ids = ids;
    job->rows = ids + request->example_count;
    memcpy(ids, request->example_ids, sizeof(int32_t) * (size_t)request->example_count);
    job->request_id = message->request_id;
    job->split = request->split;
    job->count = request->example_count;
    job->encoding = request->encoding;
    job->top_k = request->top_k;
    job->received_at = cm_progress_now();
    for (int index = 0; index < request->output_count; index++) {
        int output = output_index(request->outputs[index]);
        if (output < 0 || !server->available[output]) {
            char sentence[256];
            snprintf(sentence, sizeof sentence, "teacher '%s' has no output '%s' (it offers %s)",
                     server->name, request->outputs[index],
                     server->available[OUTPUT_TOKENS] ? "logits, hidden, tokens"
                                                      : "logits, hidden");
            reply_error(server, routing, message->request_id, CM_ERR_NOT_FOUND, sentence);
            job_free(server, job);
            return;
        }
        job->wanted[output] = 1;
    }
    char refusal[512];
    int64_t estimate = estimate_reply_bytes(server, job);
    const char *busy =
        peer ? refuse_reservation(server, peer, estimate, refusal, sizeof refusal) : refusal;
    if (!peer)
        snprintf(refusal, sizeof refusal, "teacher '%s' serves %d peers already; try again later",
                 server->name, MAX_PEERS);
    if (busy) {
        reply_error(server, routing, message->request_id, CM_ERR_BUSY, busy);
        job_free(server, job);
        return;
    }
    atomic_fetch_add(&peer->ledger->references, 1); /* for the reservation */
    job->ledger = peer->ledger;
    job->reserved = estimate;
    reserve(server, job->ledger, 1, estimate);
    pthread_mutex_lock(&server->lock);
    int accepted = server->pending_count < server->options.queue;
    if (accepted) {
        if (server->pending_tail)
            server->pending_tail->next = job;
        else
            server->pending_head = job;
        server->pending_tail = job;
        server->pending_count++;
        pthread_cond_signal(&server->wake);
    }
    int depth = server->pending_count;
    pthread_mutex_unlock(&server->lock);
    cm_metrics_gauge_set(server->queue_depth, depth);
    if (!accepted) {
        char sentence[160];
        snprintf(sentence, sizeof sentence, "teacher '%s' has %d requests queued; try again later",
                 server->name, depth);
        cm_metrics_counter_add(server->busy[BUSY_QUEUE], 1);
        reply_error(server, routing, message->request_id, CM_ERR_BUSY, sentence);
        job_free(server, job);
    }
}

/*
 * Answers a HeadRequest on the loop thread, from the copy of the head made at start (a few KB,
 * asked for once per trainer: copied into the frames, no zero-copy bookkeeping).
 */
static void handle_head_request(server_t *server, zmq_msg_t *routing,
                                const cm_wire_message_t *message) {
    const char *feature = message->head_request.feature;
    const char *lent = output_names[OUTPUT_HIDDEN]; /* the one feature a head reads today */
    char sentence[256];
    cm_status_t refusal = CM_OK;
    cm_metrics_counter_add(server->head_requests, 1);
    if (server->stopping) {
        refusal = CM_ERR_UNAVAILABLE;
        snprintf(sentence, sizeof sentence, "teacher '%s' is shutting down", server->name);
    } else if (!server->lends_head) {
        refusal = CM_ERR_NOT_FOUND;
        snprintf(sentence, sizeof sentence,
                 "teacher '%s' does not lend its head (started with --lend-head off)",
                 server->name);
    } else if (strcmp(feature, lent) != 0) {
        refusal = CM_ERR_NOT_FOUND;
        snprintf(sentence, sizeof sentence,
                 "teacher '%s' lends no head for feature '%.64s' (it lends: %s)", server->name,
                 feature, lent);
    }
    if (refusal != CM_OK) {
        reply_error(server, routing, message->request_id, refusal, sentence);
        return;
    }
    cm_wire_message_t reply;
    cm_wire_message_init(&reply, CM_WIRE_HEAD_REPLY, message->request_id);
    reply.head_reply = (cm_wire_head_reply_t){.feature = lent,
                                              .classes = server->head_classes,
                                              .inputs = server->head_inputs,
                                              .weight = server->head_weight,
                                              .bias = server->head_bias};
    if (send_message(server, routing, &reply, NULL, NULL) != CM_OK)
        cm_log_warn("could not send the head to request %llu: %s",
                    (unsigned long long)message->request_id, cm_last_error());
}

static void fill_hello(server_t *server, cm_wire_message_t *hello_message) {
    cm_wire_message_init(hello_message, CM_WIRE_HELLO, 0);
    cm_wire_hello_t *hello = &hello_message->hello;
    hello->peer = CM_WIRE_PEER_TEACHER;
    hello->peer_name = server->name;
    hello->role = server->role;
    hello->model_id = server->spec_text;
    hello->model_sha256 = server->model_sha256;
    hello->view = server->dataset->view;
    hello->dataset_name = server->dataset->name;
    hello->dataset_fingerprint = server->dataset->fingerprint;
    hello->classes = server->dataset->classes;
    hello->limits = server->limits;
    for (int output = 0; output < OUTPUT_COUNT; output++) {
        if (!server->available[output]) continue;
        cm_wire_output_t *spec = &hello->outputs[hello->output_count++];
        spec->name = output_names[output];
        spec->dtype = CM_DTYPE_F32;
        if (output == OUTPUT_TOKENS) {
            spec->ndim = 2;
            spec->shape[0] = server->tokens;
            spec->shape[1] = server->width[output] / server->tokens;
        } else {
            spec->ndim = 1;
            spec->shape[0] = server->width[output];
        }
    }
    if (server->lends_head) hello->heads[hello->head_count++] = output_names[OUTPUT_HIDDEN];
    for (int split = 0; split < CM_SPLIT_COUNT; split++)
        if (server->dataset->manifest->has_split[split])
            hello->splits[hello->split_count++] = (cm_split_t)split;
}

static void on_message(cm_zloop_t *zloop, zmq_msg_t *frames, int frame_count, void *user) {
    (void)zloop;
    server_t *server = user;
    if (server->closing) return;
    if (frame_count < 2) { /* a routing id alone: nothing to decode, nobody to tell */
        count_error(server, CM_ERR_FORMAT);
        return;
    }
    zmq_msg_t *routing = &frames[0];
    peer_t *peer = touch_peer(server, routing);
    cm_wire_message_t message;
    cm_status_t status = cm_zwire_decode(&message, frames + 1, frame_count - 1, &server->limits);
    if (status != CM_OK) {
        reply_error(server, routing, message.request_id, status, cm_last_error());
        if (status == CM_ERR_VERSION && peer) forget_peer(server, peer);
        cm_wire_message_deinit(&message);
        return;
    }
    switch (message.kind) {
    case CM_WIRE_HELLO: {
        if (peer) snprintf(peer->name, sizeof peer->name, "%s", message.hello.peer_name);
        cm_log_info("hello from %s '%s'",
                    message.hello.peer == CM_WIRE_PEER_TRAINER ? "trainer" : "peer",
                    message.hello.peer_name);
        cm_wire_message_t hello;
        fill_hello(server, &hello);
        hello.request_id = message.request_id;
        send_message(server, routing, &hello, NULL, NULL);
        break;
    }
    case CM_WIRE_HEARTBEAT:
        break;
    case CM_WIRE_BYE:
        if (peer) {
            cm_log_info("'%s' said bye", peer->name);
            forget_peer(server, peer);
        }
        break;
    case CM_WIRE_BATCH_REQUEST:
        handle_batch_request(server, peer, routing, &message);
        break;
    case CM_WIRE_HEAD_REQUEST:
        handle_head_request(server, routing, &message);
        break;
    default:
        reply_error(server, routing, message.request_id, CM_ERR_PROTOCOL,
                    "a teacher accepts Hello, BatchRequest, HeadRequest, Heartbeat and Bye only");
        break;
    }
    cm_wire_message_deinit(&message);
}

static void on_heartbeat_timer(uv_timer_t *timer) {
    server_t *server = timer->data;
    double now = cm_progress_now(), interval = server->options.heartbeat_ms / 1000.0;
    cm_wire_message_t heartbeat;
    cm_wire_message_init(&heartbeat, CM_WIRE_HEARTBEAT, 0);
    for (int index = server->peer_count - 1; index >= 0; index--) {
        peer_t *peer = &server->peers[index];
        if (now - peer->last_seen > 10 * interval) {
            cm_log_info("'%s' has been silent for %.0f s; forgetting it", peer->name,
                        now - peer->last_seen);
            forget_peer(server, peer);
            continue;
        }
        if (now - peer->last_sent >= interval) {
            heartbeat.heartbeat.sent_unix_ns = wall_clock_ns();
            if (send_to_peer(server, peer, &heartbeat) == CM_ERR_UNAVAILABLE) {
                cm_log_info("'%s' has disconnected; forgetting it", peer->name);
                forget_peer(server, peer);
            }
        }
    }
}

static void on_http(const cm_http_request_t *request, cm_http_response_t *response, void *user) {
    server_t *server = user;
    if (strcmp(request->path, "/healthz") == 0) {
        response->status = 200;
        response->body = "ok\n";
    } else if (strcmp(request->path, "/readyz") == 0) {
        int ready = server->ready && !server->stopping;
        response->status = ready ? 200 : 503;
        response->body = ready ? "ready\n" : "not ready\n";
    } else if (strcmp(request->path, "/metrics") == 0) {
        cm_http_respond_metrics(response, server->metrics);
    }
}

static void close_handle(uv_handle_t *handle) {
    if (!uv_is_closing(handle)) uv_close(handle, NULL);
}

static void on_zloop_closed(cm_zloop_t *zloop, void *user) {
    (void)zloop;
    server_t *server = user;
    zmq_close(server->socket);
    server->socket = NULL;
}

/* Closes everything once no work is queued or running; the loop then ends. */
static void maybe_finish_stop(server_t *server) {
    if (!server->stopping || server->closing) return;
    pthread_mutex_lock(&server->lock);
    int busy = server->pending_count + server->in_progress + (server->done_head != NULL);
    if (!busy) {
        server->worker_exit = 1;
        pthread_cond_signal(&server->wake);
    }
    pthread_mutex_unlock(&server->lock);
    if (busy) return;
    server->closing = 1;
    cm_wire_message_t bye;
    cm_wire_message_init(&bye, CM_WIRE_BYE, 0);
    bye.bye.reason = "teacher is shutting down";
    for (int index = 0; index < server->peer_count; index++)
        send_to_peer(server, &server->peers[index], &bye);
    cm_log_info("said bye to %d peer(s); closing", server->peer_count);
    cm_zloop_close(server->zloop, on_zloop_closed);
    if (server->http) cm_http_close(server->http, NULL);
    if (!server->handles_ready) return; /* start-up failed before they were made */
    close_handle((uv_handle_t *)&server->heartbeat_timer);
    close_handle((uv_handle_t *)&server->signal_int);
    close_handle((uv_handle_t *)&server->signal_term);
    close_handle((uv_handle_t *)&server->done_async);
}

static void on_signal(uv_signal_t *handle, int signal_number) {
    server_t *server = handle->data;
    server->signals_seen++;
    if (!server->stopping) {
        cm_log_info("%s: finishing queued requests, then stopping", strsignal(signal_number));
        server->stopping = 1;
    } else if (server->signals_seen == 2) {
        cm_log_info("%s again: cancelling queued requests", strsignal(signal_number));
        pthread_mutex_lock(&server->lock);
        job_t *job = server->pending_head;
        server->pending_head = server->pending_tail = NULL;
        server->pending_count = 0;
        pthread_mutex_unlock(&server->lock);
        while (job) {
            job_t *next = job->next;
            reply_error(server, &job->routing, job->request_id, CM_ERR_CANCELLED,
                        "the teacher was stopped before this request ran");
            job_free(server, job);
            job = next;
        }
    }
    maybe_finish_stop(server);
}

/* ---------------------------------------------------------------- start-up */

static cm_status_t hash_file(const char *path, char hex[65]) {
    void *data = NULL;
    size_t size = 0;
    cm_status_t status = cm_file_read_all(path, &data, &size);
    if (status != CM_OK) return status;
    cm_sha256_t hash;
    uint8_t digest[32];
    cm_sha256_init(&hash);
    cm_sha256_update(&hash, data, size);
    cm_sha256_final(&hash, digest);
    cm_sha256_hex(digest, hex);
    free(data);
    return CM_OK;
}

static void default_name(const char *path, char *name, size_t size) {
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    snprintf(name, size, "%s", base);
    char *dot = strstr(name, ".safetensors");
    if (dot) *dot = '\0';
}

static cm_status_t register_metrics(server_t *server) {
    cm_status_t status = cm_metrics_new(&server->metrics);
    static const double second_bounds[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                                           0.05,   0.1,   0.25,   0.5,   1.0,  2.5};
    const int bound_count = (int)(sizeof second_bounds / sizeof second_bounds[0]);
    if (status == CM_OK)
        status = cm_metrics_register_counter(server->metrics, "committee_teacher_requests_total",
                                             "BatchRequests received.", NULL, &server->requests);
    if (status == CM_OK)
        status = cm_metrics_register_counter(
            server->metrics, "committee_teacher_head_requests_total",
            "HeadRequests received (answered with the head or refused).", NULL,
            &server->head_requests);
    if (status == CM_OK)
        status = cm_metrics_register_counter(server->metrics, "committee_teacher_examples_total",
                                             "Examples run through the model (forward passes).",
                                             NULL, &server->examples);
    if (status == CM_OK)
        status = cm_metrics_register_counter(server->metrics, "committee_teacher_sent_bytes_total",
                                             "Bytes of replies handed to ZeroMQ.", NULL,
                                             &server->bytes_out);
    if (status == CM_OK)
        status = cm_metrics_register_counter(
            server->metrics, "committee_teacher_replies_dropped_total",
            "Messages ZeroMQ could not take (the peer is gone, or its pipe is at the send "
            "high-water mark): dropped.",
            NULL, &server->replies_dropped);
    static const struct {
        const char *name, *help;
    } reservation_gauges[4] = {
        {"committee_teacher_reserved_requests",
         "Requests accepted whose replies are not yet written to the network (all peers)."},
        {"committee_teacher_reserved_reply_bytes",
         "Bytes of replies not yet written to the network, reserved at acceptance (all peers)."},
        {"committee_teacher_reserved_requests_peak", "The highest reserved_requests so far."},
        {"committee_teacher_reserved_reply_peak_bytes", "The highest reserved_reply_bytes so far."},
    };
    cm_metrics_gauge_t **gauges[4] = {&server->reserved_requests_gauge,
                                      &server->reserved_bytes_gauge, &server->peak_requests_gauge,
                                      &server->peak_bytes_gauge};
    for (int index = 0; status == CM_OK && index < 4; index++)
        status = cm_metrics_register_gauge(server->metrics, reservation_gauges[index].name,
                                           reservation_gauges[index].help, NULL, gauges[index]);
    for (int reason = 0; status == CM_OK && reason < BUSY_REASONS; reason++) {
        cm_metrics_label_t label = {"reason", busy_reasons[reason]};
        status = cm_metrics_register_counter(
            server->metrics, "committee_teacher_busy_total",
            "BatchRequests answered BUSY, by reason: queue (the compute queue is full), "
            "peer_in_flight, peer_bytes, server_bytes (reservations for unread replies).",
            &label, &server->busy[reason]);
    }
    for (int code = CM_OK + 1; status == CM_OK && code < CM_STATUS_COUNT; code++) {
        cm_metrics_label_t label = {"code", cm_status_name((cm_status_t)code)};
        cm_metrics_counter_t *counter;
        status = cm_metrics_register_counter(server->metrics, ERRORS_NAME, ERRORS_HELP, &label,
                                             &counter);
    }
    if (status == CM_OK)
        status = cm_metrics_register_histogram(server->metrics, "committee_teacher_queue_seconds",
                                               "Time requests waited for the compute thread.", NULL,
                                               second_bounds, bound_count, &server->queue_seconds);
    if (status == CM_OK)
        status = cm_metrics_register_histogram(
            server->metrics, "committee_teacher_compute_seconds",
            "Time of the forward passes and encoding of a request.", NULL, second_bounds,
            bound_count, &server->compute_seconds);
    static const double request_bounds[] = {1, 2, 4, 8, 16, 32, 64};
    if (status == CM_OK)
        status = cm_metrics_register_counter(
            server->metrics, "committee_teacher_forward_batches_total",
            "Forward batches run: groups of queued requests run through the model together (one "
            "per request without coalescing, --max-batch 1).",
            NULL, &server->forward_batches);
    if (status == CM_OK)
        status = cm_metrics_register_histogram(
            server->metrics, "committee_teacher_coalesced_requests",
            "Requests per forward batch (--max-batch); its _sum counts the requests run.", NULL,
            request_bounds, (int)(sizeof request_bounds / sizeof request_bounds[0]),
            &server->coalesced_requests);
    if (status == CM_OK)
        status = cm_metrics_register_gauge(server->metrics, "committee_teacher_queue_depth",
                                           "Requests waiting for the compute thread.", NULL,
                                           &server->queue_depth);
    if (status == CM_OK)
        status = cm_metrics_register_gauge(server->metrics, "committee_teacher_peers",
                                           "Peers (trainers) the teacher currently knows.", NULL,
                                           &server->peers_gauge);
    return status;
}

/* Loads the checkpoint and the dataset view it names, and works out the outputs. */
static cm_status_t load_teacher(server_t *server) {
    const serve_options_t *options = &server->options;
    cm_safetensors_t *file = NULL;
    server->capacity = options->max_batch > COMPUTE_BATCH ? options->max_batch : COMPUTE_BATCH;
    cm_status_t status =
        cm_model_load(options->model_path, server->capacity, &server->model, &file);
    if (status != CM_OK) return status;
    const char *view = cm_safetensors_metadata(file, "view");
    const char *dataset_name =
        options->data ? options->data : cm_safetensors_metadata(file, "dataset");
    const char *trained_fingerprint = cm_safetensors_metadata(file, "fingerprint");
    if (!view || !dataset_name) {
        status = cm_fail(CM_ERR_FORMAT, "%s does not say which view and dataset it was trained on",
                         options->model_path);
        cm_safetensors_free(&file);
        return status;
    }
    cm_dataset_options_t data_options = {
        .directory = options->data_dir,
        .max_train = options->max_train,
        .max_test = options->max_test,
    };
    status = cm_dataset_load(&server->dataset, dataset_name, view, &data_options);
    if (status == CM_OK && cm_model_spec(server->model)->classes != server->dataset->classes)
        status = cm_fail(CM_ERR_SHAPE, "%s has %d outputs but dataset %s has %d %s",
                         options->model_path, cm_model_spec(server->model)->classes,
                         server->dataset->name, server->dataset->classes,
                         server->dataset->task == CM_TASK_REGRESSION ? "targets" : "classes");
    if (status == CM_OK &&
        cm_model_spec_inputs(cm_model_spec(server->model)) != server->dataset->features)
        status = cm_fail(CM_ERR_SHAPE, "%s expects %d input features but view '%s' gives %d",
                         options->model_path, cm_model_spec_inputs(cm_model_spec(server->model)),
                         view, server->dataset->features);
    if (status == CM_OK && trained_fingerprint &&
        strcmp(trained_fingerprint, server->dataset->fingerprint) != 0)
        cm_log_warn("%s was trained on dataset %.12s..., serving dataset %.12s... (other "
                    "data)",
                    options->model_path, trained_fingerprint, server->dataset->fingerprint);
    cm_safetensors_free(&file);
    if (status != CM_OK) return status;
    status = hash_file(options->model_path, server->model_sha256);
    if (status != CM_OK) return status;

    const cm_model_spec_t *spec = cm_model_spec(server->model);
    cm_model_spec_format(spec, server->spec_text, sizeof server->spec_text);
    if (!options->role)
        server->role =
            spec->kind == CM_MODEL_VIT || spec->kind == CM_MODEL_CNN || spec->kind == CM_MODEL_TOK
                ? CM_WIRE_ROLE_FOUNDATION
                : CM_WIRE_ROLE_COMPLEMENTARY;
    server->available[OUTPUT_LOGITS] = 1;
    server->width[OUTPUT_LOGITS] = spec->classes;
    server->available[OUTPUT_HIDDEN] = 1;
    cm_model_feature(server->model, "hidden", &server->width[OUTPUT_HIDDEN], NULL);
    server->tokens = 1;
    if (cm_model_feature(server->model, "tokens", &server->width[OUTPUT_TOKENS], &server->tokens))
        server->available[OUTPUT_TOKENS] = 1;
    if (server->lends_head) {
        cm_tensor_t weight, bias;
        cm_model_head(server->model, &weight, &bias);
        server->head_classes = (int)weight.shape[0];
        server->head_inputs = (int)weight.shape[1];
        size_t weight_bytes =
            sizeof(float) * (size_t)server->head_classes * (size_t)server->head_inputs;
        size_t bias_bytes = sizeof(float) * (size_t)server->head_classes;
        server->head_weight = malloc(weight_bytes);
        server->head_bias = malloc(bias_bytes);
        if (!server->head_weight || !server->head_bias)
            return cm_fail(CM_ERR_NOMEM, "out of memory for a copy of the head");
        memcpy(server->head_weight, weight.data, weight_bytes);
        memcpy(server->head_bias, bias.data, bias_bytes);
        cm_log_info("lending the head that reads '%s' (%s, %d x %d) to trainers that ask",
                    output_names[OUTPUT_HIDDEN], weight.name, server->head_classes,
                    server->head_inputs);
    }
    server->batch_inputs =
        malloc(sizeof(float) * (size_t)server->capacity * (size_t)server->dataset->features);
    if (!server->batch_inputs) return cm_fail(CM_ERR_NOMEM, "out of memory for the input batch");
    /* Warm up: one forward pass, so the first request does not pay for page faults. */
    memset(server->batch_inputs, 0, sizeof(float) * (size_t)server->dataset->features);
    cm_model_forward(server->model, server->batch_inputs, 1);
    return CM_OK;
}

/* Reads the CURVE keys and the allowlist, before the slow model load so mistakes show at once. */
static cm_status_t load_curve(server_t *server) {
    const serve_options_t *options = &server->options;
    if (!options->curve_secret_key) return CM_OK;
    cm_status_t status = cm_curve_available();
    if (status == CM_OK)
        status = cm_curve_load_keypair(options->curve_secret_key, &server->curve_keys);
    if (status == CM_OK) status = cm_curve_allowlist_load(options->allow_keys, &server->allowlist);
    if (status == CM_OK)
        cm_log_info("CURVE on: public key %s, %d trainer key(s) allowed from %s",
                    server->curve_keys.public_key, cm_curve_allowlist_count(server->allowlist),
                    options->allow_keys);
    return status;
}

/* Runs on the ZAP handler's thread: cm_metrics is thread-safe. */
static void on_key_refused(const char *key, const char *address, void *user) {
    (void)key;
    (void)address;
    count_error(user, CM_ERR_UNAUTHORIZED);
}

/* Starts the ZAP handler and makes the ROUTER a CURVE server; before it binds. */
static cm_status_t secure_socket(server_t *server) {
    if (!server->options.curve_secret_key) return CM_OK;
    cm_status_t status = cm_curve_zap_new(server->context, server->socket, &server->allowlist,
                                          on_key_refused, server, &server->zap);
    if (status != CM_OK) return status;
    return cm_curve_make_server(server->socket, &server->curve_keys, "committee");
}

static cm_status_t start_server(server_t *server) {
    const serve_options_t *options = &server->options;
    cm_status_t status = register_metrics(server);
    if (status != CM_OK) return status;
    status = load_curve(server);
    if (status != CM_OK) return status;
    status = load_teacher(server);
    if (status != CM_OK) return status;
    cm_metrics_label_t info[4] = {
        {"name", server->name},
        {"role", server->role == CM_WIRE_ROLE_FOUNDATION ? "foundation" : "complementary"},
        {"model", server->spec_text},
        {"view", server->dataset->view}};
    status = cm_metrics_register_info(server->metrics, "committee_teacher_info",
                                      "This teacher, as its Hello describes it.", info, 4);
    if (status != CM_OK) return status;
    server->limits.max_examples = (uint32_t)options->max_examples;
    server->limits.max_message_bytes = (uint64_t)options->max_message_mb << 20;
    server->max_in_flight = options->max_in_flight > 0 ? options->max_in_flight : options->queue;
    server->limits.max_in_flight = (uint32_t)server->max_in_flight;
    server->max_peer_bytes = (int64_t)options->max_peer_queued_mb << 20;
    server->max_bytes = (int64_t)options->max_queued_mb << 20;

    if (uv_loop_init(&server->loop) != 0)
        return cm_fail(CM_ERR_INTERNAL, "cannot start the event loop");
    server->loop_ready = 1;
    server->context = zmq_ctx_new();
    server->socket = server->context ? zmq_socket(server->context, ZMQ_ROUTER) : NULL;
    if (!server->socket)
        return cm_fail(CM_ERR_IO, "cannot create a ZeroMQ socket: %s", zmq_strerror(zmq_errno()));
    int linger_ms = 1000;
    zmq_setsockopt(server->socket, ZMQ_LINGER, &linger_ms, sizeof linger_ms);
    /* ZeroMQ's own cap is twice ours: messages between the two get a proper TOO_LARGE answer. */
    status = cm_zloop_configure_socket(server->socket, 1000, 1000,
                                       (int64_t)server->limits.max_message_bytes * 2);
    int mandatory = 1; /* a message ZeroMQ cannot queue fails the send: dropped and counted */
    if (status == CM_OK &&
        zmq_setsockopt(server->socket, ZMQ_ROUTER_MANDATORY, &mandatory, sizeof mandatory) != 0)
        status =
            cm_fail(CM_ERR_IO, "cannot set ZMQ_ROUTER_MANDATORY: %s", zmq_strerror(zmq_errno()));
    if (status == CM_OK) status = secure_socket(server);
    if (status != CM_OK) return status;
    if (zmq_bind(server->socket, options->bind) != 0) {
        int error = zmq_errno();
        return cm_fail(CM_ERR_IO, "cannot bind %s: %s%s", options->bind, zmq_strerror(error),
                       error != EADDRINUSE ? ""
                       : options->bind_is_default
                           ? " (the default --bind, probably another teacher-server's: give "
                             "each teacher its own, e.g. --bind tcp://127.0.0.1:5556, or "
                             "tcp://127.0.0.1:* for any free port)"
                           : " (another process listens there: choose another --bind)");
    }
    status = cm_zloop_new(&server->loop, server->socket, on_message, server, &server->zloop);
    if (status != CM_OK) return status;
    if (strcmp(options->http, "off") != 0) {
        status = cm_http_new(&server->loop, options->http, on_http, server, &server->http);
        char reason[512];
        snprintf(reason, sizeof reason, "%s", cm_last_error()); /* cm_fail overwrites it */
        if (status == CM_ERR_IO)
            status = cm_fail(status, "%s%s", reason,
                             options->http_is_default
                                 ? " (the default --http address, probably another "
                                   "teacher-server's: give each teacher its own with --http "
                                   "127.0.0.1:0 or another port, or --http off)"
                                 : " (choose another --http HOST:PORT, 127.0.0.1:0 for any free "
                                   "port, or --http off)");
        if (status != CM_OK) return status;
    }
    uv_timer_init(&server->loop, &server->heartbeat_timer);
    server->heartbeat_timer.data = server;
    uv_timer_start(&server->heartbeat_timer, on_heartbeat_timer, (uint64_t)options->heartbeat_ms,
                   (uint64_t)options->heartbeat_ms);
    uv_signal_init(&server->loop, &server->signal_int);
    uv_signal_init(&server->loop, &server->signal_term);
    server->signal_int.data = server->signal_term.data = server;
    uv_signal_start(&server->signal_int, on_signal, SIGINT);
    uv_signal_start(&server->signal_term, on_signal, SIGTERM);
    uv_async_init(&server->loop, &server->done_async, on_jobs_done);
    server->done_async.data = server;
    server->handles_ready = 1;
    if (pthread_create(&server->worker, NULL, compute_thread, server) != 0)
        return cm_fail(CM_ERR_INTERNAL, "cannot start the compute thread");
    server->worker_started = 1;
    server->ready = 1;
    return CM_OK;
}

static int serve(server_t *server) {
    pthread_mutex_init(&server->lock, NULL);
    pthread_cond_init(&server->wake, NULL);
    cm_status_t status = start_server(server);
    int exit_code = 0;
    if (status != CM_OK) {
        cm_log_error("cannot serve: %s", cm_last_error());
        exit_code = 1;
        server->stopping = 1;
        /* Close whatever was opened (maybe_finish_stop knows which handles exist); nothing is
         * queued yet. */
        if (server->zloop) maybe_finish_stop(server);
    } else {
        /* The addresses actually bound, so that whoever started us with port 0 or
         * "tcp://127.0.0.1:*" learns the ports from this line. */
        char endpoint[256], http_address[128] = "off";
        size_t endpoint_size = sizeof endpoint;
        if (zmq_getsockopt(server->socket, ZMQ_LAST_ENDPOINT, endpoint, &endpoint_size) != 0)
            snprintf(endpoint, sizeof endpoint, "%s", server->options.bind);
        const char *port_colon = server->http ? strrchr(server->options.http, ':') : NULL;
        if (port_colon)
            snprintf(http_address, sizeof http_address, "%.*s:%d",
                     (int)(port_colon - server->options.http), server->options.http,
                     cm_http_port(server->http));
        cm_log_info("serving '%s' (%s, %s) on %s, view %s of %s, dataset %.12s..., HTTP %s",
                    server->name,
                    server->role == CM_WIRE_ROLE_FOUNDATION ? "foundation" : "complementary",
                    server->spec_text, endpoint, server->dataset->view, server->dataset->name,
                    server->dataset->fingerprint, http_address);
    }
    if (server->loop_ready) { /* also after a failed start: handles being closed finish here */
        uv_run(&server->loop, UV_RUN_DEFAULT);
        if (server->worker_started) pthread_join(server->worker, NULL);
        cm_zloop_free(&server->zloop);
        cm_http_free(&server->http);
        if (uv_loop_close(&server->loop) != 0)
            cm_log_warn("event loop closed with handles still open");
    }
    if (server->socket) zmq_close(server->socket);
    cm_curve_zap_free(&server->zap); /* after the socket it guards, before zmq_ctx_term */
    cm_curve_allowlist_free(&server->allowlist);
    if (server->context) zmq_ctx_term(server->context);
    job_t *job = server->done_head;
    while (job) {
        job_t *next = job->next;
        job_free(server, job);
        job = next;
    }
    for (int index = 0; index < server->peer_count; index++)
        ledger_unref(server->peers[index].ledger);
    server->peer_count = 0;
    cm_model_free(&server->model);
    cm_dataset_free(&server->dataset);
    cm_metrics_free(&server->metrics);
    free(server->batch_inputs);
    free(server->head_weight);
    free(server->head_bias);
    pthread_mutex_destroy(&server->lock);
    pthread_cond_destroy(&server->wake);
    if (exit_code == 0) cm_log_info("stopped");
    return exit_code;
}

int teacher_serve_main(int argc, char **argv, int first) {
    serve_options_t options = {
        .model_path = NULL,
        .data = NULL,
        .data_dir = NULL,
        .bind = default_bind,
        .http = default_http,
        .name = NULL,
        .role = NULL,
        .log_level = "info",
        .threads = 1,
        .max_examples = 4096,
        .queue = 32,
        .max_message_mb = 64,
        .max_train = 0,
        .max_test = 0,
        .heartbeat_ms = 1000,
        .insecure_public = 0,
        .max_in_flight = 0,
        .max_peer_queued_mb = 256,
        .max_queued_mb = 1024,
        .lend_head = "on",
        .max_batch = 1,
    };
    const cm_cli_option_t table[] = {
        {"model", CM_CLI_STRING, &options.model_path, "FILE", "teacher checkpoint (.safetensors)",
         1},
        {"data", CM_CLI_STRING, &options.data, "DATA",
         "dataset folder or built-in name [default: the checkpoint's]", 0},
        {"data-dir", CM_CLI_STRING, &options.data_dir, "DIR",
         "dataset files [default: /usr/share/datasets/fashion-mnist]", 0},
        {"bind", CM_CLI_STRING, &options.bind, "ENDPOINT", "ZeroMQ endpoint to serve on", 0},
        {"http", CM_CLI_STRING, &options.http, "HOST:PORT",
         "address of /healthz, /readyz and /metrics, or 'off'", 0},
        {"name", CM_CLI_STRING, &options.name, "NAME", "teacher name [default: the file name]", 0},
        {"role", CM_CLI_STRING, &options.role, "ROLE",
         "foundation or complementary [default: foundation for a ViT, CNN or token model, "
         "else complementary]",
         0},
        {"threads", CM_CLI_INT, &options.threads, "N", "OpenBLAS threads of the compute thread", 0},
        {"max-examples", CM_CLI_INT, &options.max_examples, "N", "most example ids per request", 0},
        {"queue", CM_CLI_INT, &options.queue, "N",
         "requests queued before new ones are answered BUSY", 0},
        {"max-message-mb", CM_CLI_INT, &options.max_message_mb, "MB", "largest message accepted",
         0},
        {"max-in-flight", CM_CLI_INT, &options.max_in_flight, "N",
         "requests one peer may have unanswered or unread before it is answered BUSY "
         "(advertised in the Hello; 0: --queue)",
         0},
        {"max-peer-queued-mb", CM_CLI_INT, &options.max_peer_queued_mb, "MB",
         "reply bytes one peer may have unread (not yet written to the network) before it is "
         "answered BUSY",
         0},
        {"max-queued-mb", CM_CLI_INT, &options.max_queued_mb, "MB",
         "reply bytes all peers together may have unread before requests are answered BUSY", 0},
        {"max-train", CM_CLI_INT, &options.max_train, "N",
         "serve only the first N training examples (0: all)", 0},
        {"max-test", CM_CLI_INT, &options.max_test, "N",
         "serve only the first N test examples (0: all)", 0},
        {"heartbeat-ms", CM_CLI_INT, &options.heartbeat_ms, "MS",
         "heartbeat interval to idle peers", 0},
        {"curve-secret-key", CM_CLI_STRING, &options.curve_secret_key, "FILE",
         "encrypt with CURVE using this key pair (from `teacher-server keygen`); needs "
         "--allow-keys",
         0},
        {"allow-keys", CM_CLI_STRING, &options.allow_keys, "FILE|DIR",
         "trainer public keys admitted: a file of keys (one per line) or a directory of *.pub", 0},
        {"insecure-public", CM_CLI_FLAG, &options.insecure_public, NULL,
         "allow a non-loopback --bind without encryption (and a non-loopback --http)", 0},
        {"http-public", CM_CLI_FLAG, &options.http_public, NULL,
         "allow a non-loopback --http (its endpoints are never encrypted)", 0},
        {"lend-head", CM_CLI_STRING, &options.lend_head, "on|off",
         "lend the frozen head (the dense layer from 'hidden' to the logits) to trainers that "
         "ask for it",
         0},
        {"max-batch", CM_CLI_INT, &options.max_batch, "N",
         "run queued requests that ask for the same split, outputs, encoding and top-k in one "
         "forward pass of up to N examples (0 or 1: each request alone; the model's buffers are "
         "sized for N)",
         0},
        {"compute-delay-ms", CM_CLI_INT, &options.compute_delay_ms, "MS",
         "sleep this long before each forward batch (simulates a slow teacher in tests)", 0},
        {"log-level", CM_CLI_STRING, &options.log_level, "LEVEL", "debug, info, warn or error", 0},
    };
    const int count = (int)(sizeof table / sizeof table[0]);
    const char *usage = "teacher-server serve --model FILE [options]";
    const char *description =
        "Serves a frozen teacher: answers BatchRequests over ZeroMQ with its logits and the\n"
        "features it exposes (hidden, and tokens for a ViT), computed on its own view of the\n"
        "dataset its checkpoint names. SIGINT/SIGTERM stop it gracefully (a second one cancels\n"
        "queued work).\n"
        "\n"
        "Heads: with --lend-head on (the default) the teacher also lends its frozen head, the\n"
        "dense layer that maps 'hidden' to the logits, to a trainer that sends a HeadRequest\n"
        "(DiverseDistill --dd-interactive trains through it), and its Hello lists the head;\n"
        "with off such requests are answered NOT_FOUND, and no trainer sees those weights.\n"
        "\n"
        "Encryption: with --curve-secret-key FILE --allow-keys FILE|DIR, every link is CURVE-\n"
        "encrypted and only trainers whose public keys are allowed may connect; the others are\n"
        "refused with a log line and counted as errors_total{code=\"UNAUTHORIZED\"}. Then any\n"
        "address may be bound. Without keys the bind must be loopback (or ipc://) unless\n"
        "--insecure-public. Make keys with `teacher-server keygen --out BASENAME`.\n"
        "\n"
        "examples:\n"
        "  teacher-server serve --model fm.safetensors --bind tcp://127.0.0.1:5555\n"
        "  teacher-server serve --config examples/serve.yaml --http off\n"
        "\n"
        "Unread replies: a reply counts against its peer until ZeroMQ has written it to the\n"
        "network. Beyond --max-in-flight requests or --max-peer-queued-mb per peer, or\n"
        "--max-queued-mb for all peers, requests are answered BUSY (counted in /metrics as\n"
        "committee_teacher_busy_total by reason). A message ZeroMQ cannot queue (its peer is\n"
        "gone, or its pipe holds 1000 messages) is dropped and counted in\n"
        "committee_teacher_replies_dropped_total, never lost silently.\n"
        "\n"
        "Coalescing: with --max-batch N > 1, queued requests (from any trainers) that ask for\n"
        "the same split, outputs, encoding and top-k run in one forward pass of up to N\n"
        "examples, taken in turns over the peers; each still gets its own reply. OpenBLAS\n"
        "rounds a row differently depending on how many rows share a product, so a coalesced\n"
        "reply can differ from the same request run alone in the last bits: keep the default\n"
        "1 (every request alone, 256 rows per pass from its first) where trainers must be\n"
        "bit-reproducible. committee_teacher_forward_batches_total and\n"
        "committee_teacher_coalesced_requests count the passes.\n"
        "\n"
        "Endpoints: --bind is tcp://HOST:PORT (HOST an IP address, '*', localhost, which means\n"
        "127.0.0.1, or an interface; PORT 1-65535, or '*' or 0 for any free port), ipc://PATH\n"
        "or inproc://NAME. HTTP is never encrypted: a --http that is not loopback needs\n"
        "--http-public (or --insecure-public), and is logged as a warning.";
    int help = 0;
    cm_status_t status = cm_cli_parse(table, count, argc, argv, first, &help);
    if (help) {
        cm_cli_usage(stdout, usage, description, table, count);
        return 0;
    }
    cm_log_level_t level = CM_LOG_INFO;
    if (status == CM_OK) status = cm_log_level_parse(options.log_level, &level);
    if (status == CM_OK &&
        (options.threads < 1 || options.max_examples < 1 || options.queue < 1 ||
         options.max_message_mb < 1 || options.heartbeat_ms < 10 || options.max_in_flight < 0 ||
         options.max_peer_queued_mb < 1 || options.max_queued_mb < 1))
        status = cm_fail(CM_ERR_INVALID_ARG,
                         "--threads, --max-examples, --queue, --max-message-mb, "
                         "--max-peer-queued-mb and --max-queued-mb must be at least 1, "
                         "--max-in-flight at least 0, --heartbeat-ms at least 10");
    if (status == CM_OK && (options.max_batch < 0 || options.max_batch > MAX_COALESCED))
        status = cm_fail(CM_ERR_INVALID_ARG, "--max-batch must be in 0..%d, not %d", MAX_COALESCED,
                         options.max_batch);
    if (status == CM_OK && strcmp(options.lend_head, "on") && strcmp(options.lend_head, "off"))
        status = cm_fail(CM_ERR_INVALID_ARG, "--lend-head must be on or off, not '%s'",
                         options.lend_head);
    if (status == CM_OK && options.role && strcmp(options.role, "foundation") &&
        strcmp(options.role, "complementary"))
        status = cm_fail(CM_ERR_INVALID_ARG, "--role must be foundation or complementary");
    if (status == CM_OK && !options.curve_secret_key != !options.allow_keys)
        status = cm_fail(CM_ERR_INVALID_ARG,
                         options.curve_secret_key
                             ? "--curve-secret-key needs --allow-keys (the trainer public keys to "
                               "admit): authentication needs an allowlist"
                             : "--allow-keys needs --curve-secret-key (the teacher's own keys)");
    options.bind_is_default = strcmp(options.bind, default_bind) == 0;
    options.http_is_default = strcmp(options.http, default_http) == 0;
    char bind_endpoint[CM_ENDPOINT_MAX];
    if (status == CM_OK)
        status = cm_endpoint_check(options.bind, CM_ENDPOINT_BIND, "--bind", bind_endpoint,
                                   sizeof bind_endpoint);
    if (status == CM_OK) options.bind = bind_endpoint; /* localhost is 127.0.0.1 from here on */
    int http_on = strcmp(options.http, "off") != 0;
    if (status == CM_OK && http_on && strchr(options.http, ':') &&
        !cm_endpoint_http_is_loopback(options.http) && !options.insecure_public &&
        !options.http_public)
        status = cm_fail(CM_ERR_INVALID_ARG,
                         "--http %s is not a loopback address; /healthz, /readyz and /metrics "
                         "are never encrypted, so that needs --http-public (or "
                         "--insecure-public)",
                         options.http);
    if (status == CM_OK && !cm_endpoint_is_loopback(options.bind) && !options.insecure_public &&
        !options.curve_secret_key)
        status = cm_fail(CM_ERR_INVALID_ARG,
                         "--bind %s is not a loopback address; that needs encryption "
                         "(--curve-secret-key and --allow-keys) or --insecure-public",
                         options.bind);
    if (status != CM_OK) {
        fprintf(stderr, "teacher-server serve: %s\n", cm_last_error());
        return 2;
    }
    cm_log_init("teacher-server", level);
    if (!cm_endpoint_is_loopback(options.bind) && !options.curve_secret_key)
        cm_log_warn("serving %s without encryption: anyone who can reach it can query the teacher",
                    options.bind);
    if (http_on && strchr(options.http, ':') && !cm_endpoint_http_is_loopback(options.http))
        cm_log_warn("serving HTTP on %s: anyone who can reach it can read /metrics (the teacher's "
                    "name, model and counters)",
                    options.http);
    cm_blas_set_threads(options.threads);
    server_t *server = calloc(1, sizeof *server);
    if (!server) {
        fprintf(stderr, "teacher-server serve: out of memory\n");
        return 1;
    }
    server->options = options;
    server->lends_head = strcmp(options.lend_head, "on") == 0;
    if (options.name)
        snprintf(server->name, sizeof server->name, "%s", options.name);
    else
        default_name(options.model_path, server->name, sizeof server->name);
    /* Without --role, the model kind decides once it is loaded (load_teacher). */
    server->role = options.role && strcmp(options.role, "foundation") == 0
                       ? CM_WIRE_ROLE_FOUNDATION
                       : CM_WIRE_ROLE_COMPLEMENTARY;
    int exit_code = serve(server);
    free(server);
    return exit_code;
}
