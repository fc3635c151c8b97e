/*
 * trainer_committee: see trainer_committee.h.
 *
 * Bookkeeping: tickets live in a growable array (slot reuse through a free
 * list); a ticket is QUEUED until a request for it is sent and SENT while
 * that request is in flight; when it is answered or given up, finish()
 * tells its owner and frees the slot at once (the owner keeps the ledger).
 * Each in-flight request remembers its request id, ticket, endpoint and
 * deadline.  Replies are
 * matched by request id; a reply to a request that was already given up
 * (a late answer after a deadline) is dropped.
 *
 * Handshake failures: each DEALER has a socket monitor whose events land on
 * a PAIR socket of the same (training) thread; it is read without waiting
 * while the first Hello is being sent and at every pump.
 *
 * Retries: a ticket remembers the endpoint that last failed it and goes to
 * another live replica first; a BUSY streak has its own deadline (first
 * BUSY + deadline_ms) and back-off, reset whenever the ticket fails.  A
 * teacher that answers BUSY is alive, so it is not marked down: the first
 * streak that lasts a whole deadline starts a "busy episode" of the
 * endpoint (logged once, ended by its next reply); during one, under skip,
 * a BUSY from the only live endpoint gives the ticket up at once, so
 * training goes on at full speed without it, as with a teacher that is
 * down, while every ticket still probes whether it answers again.
 *
 * Waits: no zmq_poll or sleep lasts longer than WAIT_SLICE_MS, and every
 * loop that waits looks at config.interrupted between slices.
 *
 * Heads: fetching one is a blocking exchange like the handshake: one
 * HeadRequest to an endpoint, then every message from it goes through
 * handle_message (as in the pump) until the answer with that request id
 * arrives or handshake_ms pass; then the next endpoint is tried.
 */
#include "trainer_committee.h"

#include "cm_endpoint.h"
#include "cm_log.h"
#include "cm_progress.h"
#include "cm_zwire.h"

#include <assert.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <zmq.h>

enum { TICKET_FREE, TICKET_QUEUED, TICKET_SENT };
enum { MAX_INFLIGHT = 256, WAIT_SLICE_MS = 100 };

typedef struct {
    int state;
    int teacher;
    int count;
    int32_t *ids; /* [2 * count]: the rows (for the owner), then their dataset ids (the wire's) */
    cm_split_t split; /* of every row: train, or config.transfer_split */
    unsigned outputs;
    trainer_reply_fn done; /* the owner, told once */
    void *owner;
    int tag;
    int attempts;
    double not_before;    /* monotonic seconds: back-off */
    double busy_deadline; /* monotonic seconds: a BUSY streak fails here (0: no streak) */
    int busy_retries;     /* BUSY answers in the current streak (back-off) */
    int avoid_endpoint;   /* the endpoint that last failed it (-1: none) */
    int next_free;
} ticket_t;

typedef struct {
    char address[CM_ENDPOINT_MAX];
    int origin;   /* the given endpoint it stands for (teacher->origins) */
    int seen;     /* its counters (teacher->seen) */
    int greeting; /* found by DNS: Hello still to be sent */
    int ever_up;  /* has answered at least once */
    void *socket;
    int up;            /* answered since it last missed a deadline */
    int needs_hello;   /* greet again before trusting it */
    int inflight;      /* requests in flight on this endpoint */
    double last_sent;  /* monotonic seconds */
    double last_probe; /* monotonic seconds of the last Hello sent while down */
    int probes;        /* Hellos sent since it went down (back-off) */
    void *monitor;     /* PAIR receiving the socket's connection and handshake events */
    int connections;   /* transport connections made (monitor) */
    unsigned heads;    /* features it lends a head for (1u << TRAINER_OUTPUT_*), last Hello */
    int bad_replies;   /* protocol errors in a row (reset by a good reply or going down) */
    int busy_episode;  /* answered BUSY for a whole deadline, and no reply since (logged once) */
} endpoint_t;

/* An endpoint as given; a host name in it (dynamic) is resolved to the replicas' addresses. */
typedef struct {
    char host[256], port[16]; /* dynamic only */
    int dynamic;
    trainer_lookup_t *lookup; /* the system resolver's query (config.resolve NULL) */
    double next_resolve;      /* monotonic seconds */
    int failures_logged;      /* temporary DNS failures in a row, for the log */
} origin_t;

typedef struct {
    trainer_teacher_info_t info;
    trainer_teacher_stats_t stats;
    char server_key[CM_CURVE_KEY_TEXT];
    int origin_count;
    origin_t origins[TRAINER_MAX_ENDPOINTS];
    int endpoint_count;
    endpoint_t endpoints[TRAINER_MAX_CONNECTIONS];
    int seen_count;
    trainer_endpoint_stats_t seen[TRAINER_MAX_SEEN];
    int next_endpoint; /* round robin */
    int inflight;
} teacher_t;

typedef struct {
    uint64_t request_id; /* 0: slot free */
    int ticket;
    int teacher;
    int endpoint;
    double deadline;
} inflight_t;

struct trainer_committee {
    trainer_committee_config_t config;
    void *context;
    int teacher_count;
    teacher_t teachers[TRAINER_COMMITTEE_MAX];
    ticket_t *tickets;
    int ticket_capacity;
    int free_ticket;
    inflight_t inflight[MAX_INFLIGHT];
    uint64_t next_request_id;
    float *convert[TRAINER_OUTPUT_COUNT]; /* scratch for f16/bf16 rows, per output */
    size_t convert_capacity[TRAINER_OUTPUT_COUNT];
    unsigned monitors; /* socket monitors made (each gets its own inproc address) */
};

static int interrupted(const trainer_committee_t *committee) {
    return committee->config.interrupted && *committee->config.interrupted;
}

static cm_status_t interruption(void) {
    return cm_fail(CM_ERR_CANCELLED, "interrupted by a signal");
}

/* Milliseconds to wait for in one slice when `left_seconds` remain. */
static long slice_ms(double left_seconds) {
    long left = (long)(left_seconds * 1000) + 1;
    return left < WAIT_SLICE_MS ? left : WAIT_SLICE_MS;
}

static uint64_t wall_clock_ns(void) {
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    return (uint64_t)now.tv_sec * 1000000000ull + (uint64_t)now.tv_nsec;
}

cm_status_t trainer_committee_parse_teacher(char *text, trainer_teacher_address_t *address) {
    memset(address, 0, sizeof *address);
    char *equals = strchr(text, '=');
    if (!equals || equals == text || !equals[1])
        return cm_fail(CM_ERR_INVALID_ARG,
                       "--teacher expects NAME=ENDPOINT (e.g. fm=tcp://10.0.0.2:5555), got '%s'",
                       text);
    *equals = '\0';
    if (strlen(text) >= sizeof address->name)
        return cm_fail(CM_ERR_INVALID_ARG, "teacher name '%s' is too long", text);
    snprintf(address->name, sizeof address->name, "%s", text);
    char *save = NULL;
    for (char *endpoint = strtok_r(equals + 1, ",", &save); endpoint;
         endpoint = strtok_r(NULL, ",", &save)) {
        if (address->endpoint_count == TRAINER_MAX_ENDPOINTS)
            return cm_fail(CM_ERR_INVALID_ARG, "teacher '%s' has more than %d endpoints",
                           address->name, TRAINER_MAX_ENDPOINTS);
        char option[80], checked[CM_ENDPOINT_MAX];
        snprintf(option, sizeof option, "--teacher %s", address->name);
        cm_status_t status =
            cm_endpoint_check(endpoint, CM_ENDPOINT_CONNECT, option, checked, sizeof checked);
        if (status != CM_OK) return status;
        /* The only rewrite (localhost -> 127.0.0.1) keeps the length: it fits in place. */
        assert(strlen(checked) <= strlen(endpoint));
        memcpy(endpoint, checked, strlen(checked) + 1);
        address->endpoints[address->endpoint_count++] = endpoint;
    }
    return CM_OK;
}

/* ---------------------------------------------------------------- sockets */

static cm_status_t send_on(trainer_committee_t *committee, endpoint_t *endpoint,
                           const cm_wire_message_t *message) {
    cm_status_t status = cm_zwire_send(endpoint->socket, NULL, message, ZMQ_DONTWAIT, NULL);
    if (status == CM_OK) endpoint->last_sent = cm_progress_now();
    (void)committee;
    return status;
}

static cm_status_t send_hello(trainer_committee_t *committee, endpoint_t *endpoint) {
    cm_wire_message_t hello;
    cm_wire_message_init(&hello, CM_WIRE_HELLO, 0);
    hello.hello.peer = CM_WIRE_PEER_TRAINER;
    hello.hello.peer_name = "student-trainer";
    hello.hello.dataset_fingerprint = committee->config.fingerprint;
    hello.hello.classes = committee->config.classes;
    hello.hello.limits = cm_wire_limits_default();
    hello.hello.limits.max_in_flight = (uint32_t)committee->config.window;
    return send_on(committee, endpoint, &hello);
}

/* TRAINER_OUTPUT_* of an output name, or -1. */
static int output_of(const char *name) {
    for (int output = 0; output < TRAINER_OUTPUT_COUNT; output++)
        if (strcmp(name, trainer_cache_output_name(output)) == 0) return output;
    return -1;
}

/* The features a Hello lends heads for, as a bit set; names this trainer does not know count
 * as none. */
static unsigned lent_heads(const cm_wire_hello_t *hello) {
    unsigned heads = 0;
    for (int index = 0; index < hello->head_count; index++) {
        int output = output_of(hello->heads[index]);
        if (output >= 0) heads |= 1u << output;
    }
    return heads;
}

/* "hidden", "hidden, tokens" or "none" into text[size]. */
static void format_heads(unsigned heads, char *text, size_t size) {
    size_t used = 0;
    text[0] = '\0';
    for (int output = 0; output < TRAINER_OUTPUT_COUNT && used < size; output++)
        if (heads & (1u << output))
            used += (size_t)snprintf(text + used, size - used, "%s%s", used ? ", " : "",
                                     trainer_cache_output_name(output));
    if (!heads) snprintf(text, size, "none");
}

static cm_wire_limits_t receive_limits(void) {
    cm_wire_limits_t limits = cm_wire_limits_default();
    limits.max_message_bytes = 1ull << 30;
    limits.max_examples = 1u << 20;
    return limits;
}

/* Checks a teacher's Hello against the committee; fills `info` the first time. */
static cm_status_t check_hello(trainer_committee_t *committee, teacher_t *teacher,
                               endpoint_t *endpoint, const cm_wire_hello_t *hello, int first) {
    const trainer_committee_config_t *config = &committee->config;
    const char *name = teacher->info.name;
    endpoint->heads = lent_heads(hello); /* what it lends now; replicas are compared at start */
    if (hello->peer != CM_WIRE_PEER_TEACHER)
        return cm_fail(CM_ERR_PROTOCOL, "teacher '%s' at %s did not introduce itself as a teacher",
                       name, endpoint->address);
    if (strcmp(hello->dataset_fingerprint, config->fingerprint) != 0)
        return cm_fail(CM_ERR_MISMATCH,
                       "teacher '%s' at %s holds dataset %s but the student trains on %s", name,
                       endpoint->address, hello->dataset_fingerprint, config->fingerprint);
    if (hello->classes != config->classes)
        return cm_fail(CM_ERR_MISMATCH, "teacher '%s' at %s has %d classes but the student has %d",
                       name, endpoint->address, hello->classes, config->classes);
    if (config->transfer_examples > 0) { /* an empty list: a peer before minor 2, train + test */
        int serves = 0;
        for (int index = 0; index < hello->split_count; index++)
            serves |= hello->splits[index] == config->transfer_split;
        if (!serves)
            return cm_fail(CM_ERR_NOT_FOUND,
                           "teacher '%s' at %s does not serve the '%s' split that "
                           "--transfer-split asks for (its Hello lists %d splits; teachers of "
                           "protocol minor version 0 and 1 serve only train and test)",
                           name, endpoint->address, cm_split_name(config->transfer_split),
                           hello->split_count);
    }
    if (!first) {
        if (strcmp(hello->model_sha256, teacher->info.model_sha256) != 0)
            return cm_fail(CM_ERR_MISMATCH,
                           "teacher '%s' at %s now serves model %.12s..., not %.12s... as before "
                           "(replicas and restarts must serve the same checkpoint)",
                           name, endpoint->address, hello->model_sha256,
                           teacher->info.model_sha256);
        return CM_OK;
    }
    trainer_teacher_info_t *info = &teacher->info;
    if (strcmp(hello->peer_name, name) != 0)
        cm_log_warn("teacher '%s' at %s calls itself '%s'", name, endpoint->address,
                    hello->peer_name);
    info->role = hello->role;
    snprintf(info->model_id, sizeof info->model_id, "%s", hello->model_id);
    snprintf(info->model_sha256, sizeof info->model_sha256, "%s", hello->model_sha256);
    snprintf(info->view, sizeof info->view, "%s", hello->view);
    info->classes = hello->classes;
    info->max_examples = (int)hello->limits.max_examples;
    info->tokens = 1;
    info->heads = endpoint->heads;
    for (int index = 0; index < hello->output_count; index++) {
        const cm_wire_output_t *output = &hello->outputs[index];
        int64_t width = 1;
        for (int dim = 0; dim < output->ndim; dim++) width *= output->shape[dim];
        int kind = output_of(output->name);
        if (kind < 0) continue;
        info->width[kind] = (int)width;
        if (kind == TRAINER_OUTPUT_TOKENS && output->ndim == 2)
            info->tokens = (int)output->shape[0];
    }
    if (info->width[TRAINER_OUTPUT_LOGITS] != config->classes)
        return cm_fail(CM_ERR_MISMATCH, "teacher '%s' offers logits of width %d, expected %d", name,
                       info->width[TRAINER_OUTPUT_LOGITS], config->classes);
    return CM_OK;
}

/* Receives one message from `endpoint` within timeout_ms (a Hello, skipping heartbeats). */
static cm_status_t await_hello(trainer_committee_t *committee, teacher_t *teacher,
                               endpoint_t *endpoint, int first) {
    double give_up = cm_progress_now() + committee->config.handshake_ms / 1000.0;
    for (;;) {
        if (interrupted(committee)) return interruption();
        double left = give_up - cm_progress_now();
        if (left <= 0)
            return cm_fail(CM_ERR_UNAVAILABLE,
                           "teacher '%s' at %s did not answer Hello within %d ms; is it running "
                           "and reachable?",
                           teacher->info.name, endpoint->address, committee->config.handshake_ms);
        zmq_pollitem_t item = {endpoint->socket, 0, ZMQ_POLLIN, 0};
        int ready = zmq_poll(&item, 1, slice_ms(left));
        if (ready < 0 && zmq_errno() != EINTR)
            return cm_fail(CM_ERR_IO, "waiting for teacher '%s' at %s failed: %s",
                           teacher->info.name, endpoint->address, zmq_strerror(zmq_errno()));
        if (ready <= 0) continue;
        cm_zwire_received_t received;
        cm_wire_message_t message;
        cm_wire_limits_t limits = receive_limits();
        cm_status_t status =
            cm_zwire_recv_message(endpoint->socket, &received, &message, &limits, ZMQ_DONTWAIT);
        if (status == CM_ERR_BUSY) continue; /* nothing, or only heartbeats, so far */
        if (status == CM_ERR_IO) return status;
        if (status != CM_OK) /* a message that does not decode */
            return cm_fail(status, "teacher '%s' at %s sent a bad handshake: %s",
                           teacher->info.name, endpoint->address, cm_last_error());
        if (message.kind == CM_WIRE_ERROR) {
            status = cm_fail(message.error.code, "teacher '%s' at %s refused the handshake: %s",
                             teacher->info.name, endpoint->address, message.error.message);
        } else if (message.kind == CM_WIRE_HELLO) {
            status = check_hello(committee, teacher, endpoint, &message.hello, first);
        } else {
            status = CM_ERR_BUSY; /* a stale reply: keep waiting */
        }
        cm_zwire_release(&received, &message);
        if (status != CM_ERR_BUSY) return status;
    }
}

/* The monitor events that say how a connection's handshake went. */
enum {
    MONITORED_EVENTS = ZMQ_EVENT_CONNECTED | ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL |
                       ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL | ZMQ_EVENT_HANDSHAKE_FAILED_AUTH
};

/* Starts a socket monitor on endpoint->socket, read through endpoint->monitor. */
static cm_status_t monitor_endpoint(trainer_committee_t *committee, endpoint_t *endpoint) {
    char address[64];
    snprintf(address, sizeof address, "inproc://trainer-monitor-%p-%u", (void *)committee,
             committee->monitors++);
    int linger = 0;
    if (zmq_socket_monitor(endpoint->socket, address, MONITORED_EVENTS) != 0 ||
        !(endpoint->monitor = zmq_socket(committee->context, ZMQ_PAIR)) ||
        zmq_setsockopt(endpoint->monitor, ZMQ_LINGER, &linger, sizeof linger) != 0 ||
        zmq_connect(endpoint->monitor, address) != 0)
        return cm_fail(CM_ERR_IO, "cannot monitor the connection to %s: %s", endpoint->address,
                       zmq_strerror(zmq_errno()));
    return CM_OK;
}

/*
 * Reads the monitor events queued for `endpoint` (without waiting) and turns a
 * failed handshake into a sentence: CM_ERR_UNAUTHORIZED when the teacher refused
 * our key, CM_ERR_PROTOCOL when one side wants CURVE and the other does not,
 * CM_ERR_UNAVAILABLE when the teacher dropped the handshake; CM_OK otherwise.
 */
static cm_status_t check_handshake_events(trainer_committee_t *committee, const teacher_t *teacher,
                                          endpoint_t *endpoint) {
    const cm_curve_keypair_t *keys = committee->config.curve_keys;
    const char *name = teacher->info.name, *address = endpoint->address;
    for (;;) {
        zmq_msg_t frame;
        zmq_msg_init(&frame);
        if (zmq_msg_recv(&frame, endpoint->monitor, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&frame);
            return CM_OK;
        }
        uint16_t event = 0;
        uint32_t value = 0;
        if (zmq_msg_size(&frame) == 6) { /* event number, then value, native byte order */
            memcpy(&event, zmq_msg_data(&frame), sizeof event);
            memcpy(&value, (const char *)zmq_msg_data(&frame) + 2, sizeof value);
        }
        while (zmq_msg_more(&frame) && zmq_msg_recv(&frame, endpoint->monitor, 0) >= 0) {
        } /* the second frame, the endpoint, is ours already */
        zmq_msg_close(&frame);
        switch (event) {
        case ZMQ_EVENT_CONNECTED:
            endpoint->connections++;
            break;
        case ZMQ_EVENT_HANDSHAKE_FAILED_AUTH:
            if (keys)
                return cm_fail(CM_ERR_UNAUTHORIZED,
                               "teacher '%s' at %s refused our key (authentication failed, status "
                               "%u): its --allow-keys must hold our public key %s",
                               name, address, value, keys->public_key);
            return cm_fail(CM_ERR_UNAUTHORIZED,
                           "teacher '%s' at %s refused us (authentication failed, status %u)", name,
                           address, value);
        case ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL:
            if (value == ZMQ_PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH && keys)
                return cm_fail(CM_ERR_PROTOCOL,
                               "teacher '%s' at %s does not use CURVE encryption but this trainer "
                               "does (--curve-secret-key); start the teacher with "
                               "--curve-secret-key and --allow-keys",
                               name, address);
            if (value == ZMQ_PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH)
                return cm_fail(CM_ERR_PROTOCOL,
                               "teacher '%s' at %s requires CURVE encryption; give "
                               "--curve-secret-key and --teacher-key %s=FILE (its public key)",
                               name, address, name);
            return cm_fail(CM_ERR_PROTOCOL,
                           "the handshake with teacher '%s' at %s failed (protocol error 0x%x)%s",
                           name, address, value, keys ? "; is --teacher-key its public key?" : "");
        case ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL:
            if (keys)
                return cm_fail(CM_ERR_UNAVAILABLE,
                               "teacher '%s' at %s dropped the CURVE handshake: is --teacher-key "
                               "%s=FILE its public key (teacher-server logs it at start)?",
                               name, address, name);
            return cm_fail(CM_ERR_UNAVAILABLE,
                           "teacher '%s' at %s dropped the handshake; does it require CURVE "
                           "(--curve-secret-key and --teacher-key)?",
                           name, address);
        default:
            break;
        }
    }
}

static cm_status_t open_endpoint(trainer_committee_t *committee, endpoint_t *endpoint,
                                 const char *server_key) {
    endpoint->socket = zmq_socket(committee->context, ZMQ_DEALER);
    if (!endpoint->socket)
        return cm_fail(CM_ERR_IO, "cannot create a socket: %s", zmq_strerror(zmq_errno()));
    int hwm = 1000, linger = 200, reconnect = 100, reconnect_max = 5000, immediate = 1;
    int ipv6 = strchr(endpoint->address, '[') != NULL; /* tcp://[ADDRESS]:PORT */
    int handshake_ms = committee->config.handshake_ms;
    int64_t max_message = 1ll << 30;
    zmq_setsockopt(endpoint->socket, ZMQ_SNDHWM, &hwm, sizeof hwm);
    zmq_setsockopt(endpoint->socket, ZMQ_RCVHWM, &hwm, sizeof hwm);
    zmq_setsockopt(endpoint->socket, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(endpoint->socket, ZMQ_RECONNECT_IVL, &reconnect, sizeof reconnect);
    zmq_setsockopt(endpoint->socket, ZMQ_RECONNECT_IVL_MAX, &reconnect_max, sizeof reconnect_max);
    zmq_setsockopt(endpoint->socket, ZMQ_MAXMSGSIZE, &max_message, sizeof max_message);
    if (ipv6) zmq_setsockopt(endpoint->socket, ZMQ_IPV6, &ipv6, sizeof ipv6);
    /* Queue only on live connections: a send to a dead teacher fails at once instead of
     * piling up behind a connection that may never come back. */
    zmq_setsockopt(endpoint->socket, ZMQ_IMMEDIATE, &immediate, sizeof immediate);
    /* A handshake the teacher never finishes is dropped and retried, not waited on forever. */
    zmq_setsockopt(endpoint->socket, ZMQ_HANDSHAKE_IVL, &handshake_ms, sizeof handshake_ms);
    cm_status_t status = monitor_endpoint(committee, endpoint);
    if (status == CM_OK && committee->config.curve_keys)
        status = cm_curve_make_client(endpoint->socket, committee->config.curve_keys, server_key);
    if (status != CM_OK) return status;
    if (zmq_connect(endpoint->socket, endpoint->address) != 0)
        return cm_fail(CM_ERR_INVALID_ARG, "cannot connect to '%s': %s", endpoint->address,
                       zmq_strerror(zmq_errno()));
    return CM_OK;
}

/* Sends Hello to a fresh connection, retrying while ZeroMQ is still connecting. */
static cm_status_t handshake(trainer_committee_t *committee, teacher_t *teacher,
                             endpoint_t *endpoint) {
    double give_up = cm_progress_now() + committee->config.handshake_ms / 1000.0;
    cm_status_t status;
    while ((status = send_hello(committee, endpoint)) == CM_ERR_BUSY &&
           cm_progress_now() < give_up) {
        if (interrupted(committee)) return interruption();
        cm_status_t refused = check_handshake_events(committee, teacher, endpoint);
        if (refused != CM_OK) return refused;
        struct timespec pause = {0, 10 * 1000 * 1000};
        nanosleep(&pause, NULL);
    }
    if (status == CM_ERR_BUSY && endpoint->connections > 0)
        return cm_fail(CM_ERR_UNAVAILABLE,
                       "teacher '%s' at %s accepted a connection but no handshake completed within "
                       "%d ms; %s",
                       teacher->info.name, endpoint->address, committee->config.handshake_ms,
                       committee->config.curve_keys
                           ? "is --teacher-key its public key?"
                           : "does it require CURVE (--curve-secret-key and --teacher-key)?");
    if (status == CM_ERR_BUSY)
        return cm_fail(CM_ERR_UNAVAILABLE,
                       "cannot reach teacher '%s' at %s within %d ms; is it "
                       "running and reachable?",
                       teacher->info.name, endpoint->address, committee->config.handshake_ms);
    if (status != CM_OK) return status;
    return await_hello(committee, teacher, endpoint, teacher->info.model_sha256[0] == '\0');
}

/* ---------------------------------------------------------------- replicas found by DNS */

static void drop_inflight(trainer_committee_t *committee, inflight_t *slot) {
    teacher_t *teacher = &committee->teachers[slot->teacher];
    teacher->inflight--;
    teacher->endpoints[slot->endpoint].inflight--;
    slot->request_id = 0;
}

static int teacher_is_up(const teacher_t *teacher) {
    for (int slot = 0; slot < teacher->endpoint_count; slot++)
        if (teacher->endpoints[slot].up) return 1;
    return 0;
}

/* 1 for the counts worth a log line: 1, 10, 100, ... (a teacher that keeps failing the same
 * way does not flood the log; the counters have every one). */
static int worth_logging(long count) {
    while (count >= 10 && count % 10 == 0) count /= 10;
    return count == 1;
}

/* What the failure policy does with a failed request, for log lines. */
static const char *policy_action(const trainer_committee_t *committee) {
    return committee->config.policy == TRAINER_POLICY_WAIT   ? "asking again"
           : committee->config.policy == TRAINER_POLICY_SKIP ? "training without it"
                                                             : "stopping";
}

/* The counters of `address` in teacher->seen (a new entry the first time); -1 when full. */
static int seen_entry(teacher_t *teacher, const char *address) {
    for (int index = 0; index < teacher->seen_count; index++)
        if (strcmp(teacher->seen[index].address, address) == 0) return index;
    if (teacher->seen_count == TRAINER_MAX_SEEN) return -1;
    trainer_endpoint_stats_t *entry = &teacher->seen[teacher->seen_count];
    memset(entry, 0, sizeof *entry);
    snprintf(entry->address, sizeof entry->address, "%s", address);
    return teacher->seen_count++;
}

/* Opens one more connection of `teacher`, to `address`, standing for origins[origin]. */
static cm_status_t add_endpoint(trainer_committee_t *committee, teacher_t *teacher, int origin,
                                const char *address) {
    if (teacher->endpoint_count == TRAINER_MAX_CONNECTIONS)
        return cm_fail(CM_ERR_INVALID_ARG, "teacher '%s' has more than %d replicas",
                       teacher->info.name, TRAINER_MAX_CONNECTIONS);
    endpoint_t *endpoint = &teacher->endpoints[teacher->endpoint_count];
    memset(endpoint, 0, sizeof *endpoint);
    snprintf(endpoint->address, sizeof endpoint->address, "%s", address);
    endpoint->origin = origin;
    endpoint->seen = seen_entry(teacher, address);
    if (endpoint->seen >= 0) teacher->seen[endpoint->seen].live = 1;
    teacher->endpoint_count++; /* counted before opening: a failure is closed with the rest */
    return open_endpoint(committee, endpoint, teacher->server_key);
}

/*
 * Closes connection `slot` of teacher `index` (DNS lists its address no more).  Its requests
 * in flight are asked again elsewhere at once: a replica leaving is not a failure.  The
 * connections after it move down one place; every index into them follows.
 */
static void remove_endpoint(trainer_committee_t *committee, int index, int slot) {
    teacher_t *teacher = &committee->teachers[index];
    endpoint_t *endpoint = &teacher->endpoints[slot];
    int was_up = teacher_is_up(teacher);
    for (int number = 0; number < MAX_INFLIGHT; number++) {
        inflight_t *flying = &committee->inflight[number];
        if (!flying->request_id || flying->teacher != index) continue;
        if (flying->endpoint == slot) {
            ticket_t *ticket = &committee->tickets[flying->ticket];
            drop_inflight(committee, flying);
            ticket->state = TICKET_QUEUED;
            ticket->not_before = 0.0;
            ticket->avoid_endpoint = -1;
        } else if (flying->endpoint > slot) {
            flying->endpoint--;
        }
    }
    for (int number = 0; number < committee->ticket_capacity; number++) {
        ticket_t *ticket = &committee->tickets[number];
        if (ticket->state == TICKET_FREE || ticket->teacher != index) continue;
        if (ticket->avoid_endpoint == slot) ticket->avoid_endpoint = -1;
        if (ticket->avoid_endpoint > slot) ticket->avoid_endpoint--;
    }
    cm_log_info("teacher '%s': replica %s left (DNS lists it no more)", teacher->info.name,
                endpoint->address);
    if (endpoint->seen >= 0) teacher->seen[endpoint->seen].live = 0;
    if (endpoint->monitor) zmq_close(endpoint->monitor);
    if (endpoint->socket) zmq_close(endpoint->socket);
    memmove(endpoint, endpoint + 1,
            sizeof *endpoint * (size_t)(teacher->endpoint_count - slot - 1));
    teacher->endpoint_count--;
    if (teacher->next_endpoint > slot) teacher->next_endpoint--;
    if (was_up && !teacher_is_up(teacher)) {
        teacher->stats.down_events++;
        cm_log_warn("teacher '%s' has no live replica; %s", teacher->info.name,
                    policy_action(committee));
    }
}

/* One lookup of origin `origin` of teacher `index`: the config's function or the system's. */
static trainer_resolve_state_t lookup(trainer_committee_t *committee, teacher_t *teacher,
                                      int origin, char addresses[][TRAINER_RESOLVE_ADDRESS],
                                      int *count, const char **error) {
    origin_t *given = &teacher->origins[origin];
    *error = NULL;
    if (committee->config.resolve)
        return committee->config.resolve(committee->config.resolve_context, given->host, addresses,
                                         count);
    if (!given->lookup && !(given->lookup = trainer_lookup_new(given->host))) {
        *count = 0;
        *error = "out of memory";
        return TRAINER_RESOLVE_FAILED;
    }
    return trainer_lookup_poll(given->lookup, addresses, count, error);
}

/* "tcp://ADDRESS:PORT" (brackets around an IPv6 address) into text[CM_ENDPOINT_MAX]. */
static void format_address(const origin_t *given, const char *address, char *text) {
    snprintf(text, CM_ENDPOINT_MAX, strchr(address, ':') ? "tcp://[%s]:%s" : "tcp://%s:%s", address,
             given->port);
}

/* Makes the connections of origin `origin` of teacher `index` those of `addresses`. */
static cm_status_t apply_addresses(trainer_committee_t *committee, int index, int origin,
                                   char addresses[][TRAINER_RESOLVE_ADDRESS], int count) {
    teacher_t *teacher = &committee->teachers[index];
    char wanted[TRAINER_RESOLVE_MAX][CM_ENDPOINT_MAX];
    for (int number = 0; number < count; number++)
        format_address(&teacher->origins[origin], addresses[number], wanted[number]);
    for (int slot = teacher->endpoint_count - 1; slot >= 0; slot--) {
        if (teacher->endpoints[slot].origin != origin) continue;
        int listed = 0;
        for (int number = 0; number < count && !listed; number++)
            listed = strcmp(wanted[number], teacher->endpoints[slot].address) == 0;
        if (!listed) remove_endpoint(committee, index, slot);
    }
    for (int number = 0; number < count; number++) {
        int known = 0;
        for (int slot = 0; slot < teacher->endpoint_count && !known; slot++)
            known = strcmp(wanted[number], teacher->endpoints[slot].address) == 0;
        if (known) continue;
        if (teacher->endpoint_count == TRAINER_MAX_CONNECTIONS) {
            cm_log_warn("teacher '%s': DNS lists more than %d replicas; using %d",
                        teacher->info.name, TRAINER_MAX_CONNECTIONS, TRAINER_MAX_CONNECTIONS);
            break;
        }
        cm_status_t status = add_endpoint(committee, teacher, origin, wanted[number]);
        if (status != CM_OK) return status;
        endpoint_t *endpoint = &teacher->endpoints[teacher->endpoint_count - 1];
        endpoint->greeting = 1;
        if (teacher->info.model_sha256[0]) /* after the start: a replica joining */
            cm_log_info("teacher '%s': replica %s found by DNS (%s)", teacher->info.name,
                        endpoint->address, teacher->origins[origin].host);
    }
    return CM_OK;
}

/*
 * The discovery step of the pump: asks DNS again for every dynamic origin whose time has come
 * (never blocking), applies the answers, and greets the connections found since.
 */
static cm_status_t discover(trainer_committee_t *committee) {
    double now = cm_progress_now();
    for (int index = 0; index < committee->teacher_count; index++) {
        teacher_t *teacher = &committee->teachers[index];
        for (int origin = 0; origin < teacher->origin_count; origin++) {
            origin_t *given = &teacher->origins[origin];
            if (!given->dynamic || now < given->next_resolve) continue;
            char addresses[TRAINER_RESOLVE_MAX][TRAINER_RESOLVE_ADDRESS];
            int count = 0;
            const char *error = NULL;
            trainer_resolve_state_t state =
                lookup(committee, teacher, origin, addresses, &count, &error);
            if (state == TRAINER_RESOLVE_PENDING) continue;
            given->next_resolve = now + committee->config.resolve_ms / 1000.0;
            if (state == TRAINER_RESOLVE_FAILED) {
                if (worth_logging(++given->failures_logged))
                    cm_log_warn("teacher '%s': looking up %s failed (%s); keeping its %d known "
                                "address(es)",
                                teacher->info.name, given->host, error ? error : "no reason",
                                teacher->endpoint_count);
                continue;
            }
            given->failures_logged = 0;
            cm_status_t status = apply_addresses(committee, index, origin, addresses, count);
            if (status != CM_OK) return status;
        }
        for (int slot = 0; slot < teacher->endpoint_count; slot++) {
            endpoint_t *endpoint = &teacher->endpoints[slot];
            if (endpoint->greeting && send_hello(committee, endpoint) == CM_OK)
                endpoint->greeting = endpoint->needs_hello =
                    0; /* the answer is checked on arrival */
        }
    }
    return CM_OK;
}

/*
 * The first answer for a dynamic origin, waited for (up to handshake_ms, watching for
 * signals): DNS may not list a replica yet while they start.
 */
static cm_status_t first_lookup(trainer_committee_t *committee, int index, int origin) {
    teacher_t *teacher = &committee->teachers[index];
    origin_t *given = &teacher->origins[origin];
    double give_up = cm_progress_now() + committee->config.handshake_ms / 1000.0;
    const char *error = NULL;
    for (;;) {
        if (interrupted(committee)) return interruption();
        char addresses[TRAINER_RESOLVE_MAX][TRAINER_RESOLVE_ADDRESS];
        int count = 0;
        trainer_resolve_state_t state =
            lookup(committee, teacher, origin, addresses, &count, &error);
        if (state == TRAINER_RESOLVE_DONE && count > 0) {
            given->next_resolve = cm_progress_now() + committee->config.resolve_ms / 1000.0;
            cm_log_info("teacher '%s': %s lists %d replica address(es)", teacher->info.name,
                        given->host, count);
            return apply_addresses(committee, index, origin, addresses, count);
        }
        if (cm_progress_now() >= give_up)
            return cm_fail(CM_ERR_UNAVAILABLE,
                           "teacher '%s': the name %s resolves to no address within %d ms%s%s%s",
                           teacher->info.name, given->host, committee->config.handshake_ms,
                           error ? " (" : "", error ? error : "", error ? ")" : "");
        struct timespec pause = {0, (state == TRAINER_RESOLVE_PENDING ? 10 : 200) * 1000 * 1000};
        nanosleep(&pause, NULL);
    }
}

cm_status_t trainer_committee_new(const trainer_teacher_address_t *addresses, int count,
                                  const trainer_committee_config_t *config,
                                  trainer_committee_t **out) {
    *out = NULL;
    if (count < 1 || count > TRAINER_COMMITTEE_MAX)
        return cm_fail(CM_ERR_INVALID_ARG, "a committee has 1 to %d teachers, not %d",
                       TRAINER_COMMITTEE_MAX, count);
    trainer_committee_t *committee = calloc(1, sizeof *committee);
    if (!committee) return cm_fail(CM_ERR_NOMEM, "out of memory for the committee");
    committee->config = *config;
    committee->free_ticket = -1;
    committee->next_request_id = 1;
    committee->teacher_count = count;
    committee->context = zmq_ctx_new();
    cm_status_t status = CM_OK;
    if (!committee->context) {
        status = cm_fail(CM_ERR_IO, "cannot create a ZeroMQ context");
        goto fail;
    }
    for (int index = 0; index < count; index++) {
        teacher_t *teacher = &committee->teachers[index];
        snprintf(teacher->info.name, sizeof teacher->info.name, "%s", addresses[index].name);
        for (int other = 0; other < index; other++)
            if (strcmp(addresses[other].name, addresses[index].name) == 0) {
                status = cm_fail(CM_ERR_INVALID_ARG, "teacher name '%s' is used twice",
                                 addresses[index].name);
                goto fail;
            }
        if (config->curve_keys && !addresses[index].server_key[0]) {
            status = cm_fail(CM_ERR_INVALID_ARG,
                             "teacher '%s' has no public key: with --curve-secret-key every "
                             "teacher needs --teacher-key %s=FILE",
                             addresses[index].name, addresses[index].name);
            goto fail;
        }
        snprintf(teacher->server_key, sizeof teacher->server_key, "%s",
                 addresses[index].server_key);
        teacher->origin_count = addresses[index].endpoint_count;
        for (int origin = 0; origin < teacher->origin_count; origin++) {
            origin_t *given = &teacher->origins[origin];
            const char *endpoint = addresses[index].endpoints[origin];
            given->dynamic = config->resolve_ms > 0 &&
                             trainer_resolve_split(endpoint, given->host, sizeof given->host,
                                                   given->port, sizeof given->port);
            status = given->dynamic ? first_lookup(committee, index, origin)
                                    : add_endpoint(committee, teacher, origin, endpoint);
            if (status != CM_OK) goto fail;
        }
    }
    /* Handshakes: every endpoint, every teacher. */
    for (int index = 0; index < count; index++) {
        teacher_t *teacher = &committee->teachers[index];
        cm_status_t replica_status = CM_OK;
        for (int slot = 0; slot < teacher->endpoint_count; slot++) {
            endpoint_t *endpoint = &teacher->endpoints[slot];
            cm_log_info("greeting teacher '%s' at %s (up to %d ms)", teacher->info.name,
                        endpoint->address, config->handshake_ms);
            if ((status = handshake(committee, teacher, endpoint)) != CM_OK) {
                if (!teacher->origins[endpoint->origin].dynamic || status == CM_ERR_CANCELLED ||
                    status == CM_ERR_MISMATCH)
                    goto fail;
                /* A replica found by DNS that does not answer yet: greeted again by the pump. */
                cm_log_warn("%s; training without that replica until it answers", cm_last_error());
                replica_status = status;
                endpoint->greeting = 1;
                status = CM_OK;
                continue;
            }
            endpoint->up = endpoint->ever_up = 1;
            if (endpoint->heads != teacher->info.heads) {
                char lent[64], lent_first[64];
                format_heads(endpoint->heads, lent, sizeof lent);
                format_heads(teacher->info.heads, lent_first, sizeof lent_first);
                status = cm_fail(CM_ERR_MISMATCH,
                                 "teacher '%s' lends heads for %s at %s but for %s at %s; "
                                 "replicas must be started with the same --lend-head",
                                 teacher->info.name, lent, endpoint->address, lent_first,
                                 teacher->endpoints[0].address);
                goto fail;
            }
        }
        if (!teacher_is_up(teacher)) {
            status = cm_fail(replica_status, "no replica of teacher '%s' answered Hello",
                             teacher->info.name);
            goto fail;
        }
        for (int other = 0; other < index; other++)
            if (!strcmp(committee->teachers[other].info.model_sha256, teacher->info.model_sha256))
                cm_log_warn("teachers '%s' and '%s' serve the same model (%.12s...); is one "
                            "endpoint given twice?",
                            committee->teachers[other].info.name, teacher->info.name,
                            teacher->info.model_sha256);
        cm_log_info("teacher '%s': %s, %s, view %s, model %.12s..., %d endpoint(s)",
                    teacher->info.name,
                    teacher->info.role == CM_WIRE_ROLE_FOUNDATION ? "foundation" : "complementary",
                    teacher->info.model_id, teacher->info.view, teacher->info.model_sha256,
                    teacher->endpoint_count);
    }
    *out = committee;
    return CM_OK;
fail:
    trainer_committee_free(&committee);
    return status;
}

void trainer_committee_free(trainer_committee_t **committee_pointer) {
    trainer_committee_t *committee = *committee_pointer;
    if (!committee) return;
    cm_wire_message_t bye;
    cm_wire_message_init(&bye, CM_WIRE_BYE, 0);
    bye.bye.reason = "training finished";
    for (int index = 0; index < committee->teacher_count; index++) {
        teacher_t *teacher = &committee->teachers[index];
        for (int slot = 0; slot < teacher->endpoint_count; slot++) {
            endpoint_t *endpoint = &teacher->endpoints[slot];
            if (endpoint->monitor) zmq_close(endpoint->monitor);
            if (!endpoint->socket) continue;
            if (endpoint->up) send_on(committee, endpoint, &bye);
            zmq_close(endpoint->socket);
        }
        for (int origin = 0; origin < teacher->origin_count; origin++)
            trainer_lookup_free(teacher->origins[origin].lookup);
    }
    if (committee->context) zmq_ctx_term(committee->context);
    for (int index = 0; index < committee->ticket_capacity; index++)
        free(committee->tickets[index].ids);
    free(committee->tickets);
    for (int output = 0; output < TRAINER_OUTPUT_COUNT; output++) free(committee->convert[output]);
    free(committee);
    *committee_pointer = NULL;
}

int trainer_committee_count(const trainer_committee_t *committee) {
    return committee->teacher_count;
}

const trainer_teacher_info_t *trainer_committee_info(const trainer_committee_t *committee,
                                                     int teacher) {
    return &committee->teachers[teacher].info;
}

const trainer_teacher_stats_t *trainer_committee_stats(const trainer_committee_t *committee,
                                                       int teacher) {
    return &committee->teachers[teacher].stats;
}

int trainer_committee_endpoints(const trainer_committee_t *committee, int teacher,
                                trainer_endpoint_stats_t *out, int max) {
    const teacher_t *member = &committee->teachers[teacher];
    int count = member->seen_count < max ? member->seen_count : max;
    memcpy(out, member->seen, sizeof *out * (size_t)count);
    return count;
}

/* ---------------------------------------------------------------- tickets */

cm_status_t trainer_committee_submit(trainer_committee_t *committee, int teacher,
                                     const int32_t *rows, int count, unsigned outputs,
                                     trainer_reply_fn done, void *owner, int tag) {
    const trainer_committee_config_t *config = &committee->config;
    int transfer = config->transfer_examples > 0 && count > 0 && rows[0] >= config->transfer_base;
    for (int row = 0; row < count; row++)
        if (config->transfer_examples > 0 && (rows[row] >= config->transfer_base) != transfer)
            return cm_fail(CM_ERR_INVALID_ARG,
                           "a ticket mixes training and transfer rows (%d and %d); submit each "
                           "split apart",
                           rows[0], rows[row]);
    if (committee->free_ticket < 0) {
        int capacity = committee->ticket_capacity ? 2 * committee->ticket_capacity : 64;
        ticket_t *grown = realloc(committee->tickets, sizeof *grown * (size_t)capacity);
        if (!grown) return cm_fail(CM_ERR_NOMEM, "out of memory submitting a request");
        for (int index = committee->ticket_capacity; index < capacity; index++) {
            grown[index] = (ticket_t){.state = TICKET_FREE, .next_free = committee->free_ticket};
            committee->free_ticket = index;
        }
        committee->tickets = grown;
        committee->ticket_capacity = capacity;
    }
    int number = committee->free_ticket;
    ticket_t *ticket = &committee->tickets[number];
    int32_t *copy = realloc(ticket->ids, sizeof(int32_t) * (2 * (size_t)count + 1));
    if (!copy) return cm_fail(CM_ERR_NOMEM, "out of memory submitting a request");
    committee->free_ticket = ticket->next_free;
    ticket->ids = copy;
    memcpy(copy, rows, sizeof(int32_t) * (size_t)count);
    for (int row = 0; row < count; row++) {
        int local = rows[row] - (transfer ? config->transfer_base : 0);
        const int32_t *ids = transfer ? config->transfer_ids : config->example_ids;
        copy[count + row] = ids ? ids[local] : local;
    }
    ticket->split = transfer ? config->transfer_split : CM_SPLIT_TRAIN;
    ticket->state = TICKET_QUEUED;
    ticket->teacher = teacher;
    ticket->count = count;
    ticket->outputs = outputs;
    ticket->done = done;
    ticket->owner = owner;
    ticket->tag = tag;
    ticket->attempts = 0;
    ticket->not_before = 0.0;
    ticket->busy_deadline = 0.0;
    ticket->busy_retries = 0;
    ticket->avoid_endpoint = -1;
    return CM_OK;
}

/* Tells the ticket's owner its outcome (`reply`, or NULL: given up) and frees the slot. */
static void finish(trainer_committee_t *committee, int number, const trainer_reply_t *reply) {
    ticket_t *ticket = &committee->tickets[number];
    if (ticket->done) ticket->done(ticket->owner, ticket->tag, reply); /* rows point into it */
    ticket->state = TICKET_FREE;
    ticket->next_free = committee->free_ticket;
    committee->free_ticket = number;
}

/* ---------------------------------------------------------------- the pump */

/* 1 when `teacher` has a live endpoint other than `slot`. */
static int other_live_endpoint(const teacher_t *teacher, int slot) {
    for (int other = 0; other < teacher->endpoint_count; other++)
        if (other != slot && teacher->endpoints[other].up) return 1;
    return 0;
}

static double backoff_seconds(int attempts) {
    double delay = 0.1 * pow(2.0, attempts > 6 ? 6 : attempts);
    return delay > 5.0 ? 5.0 : delay;
}

/* Between retries of a request the teacher answered BUSY: 10 ms, doubling, at most 1 s. */
static double busy_backoff_seconds(int retries) {
    double delay = 0.01 * pow(2.0, retries > 7 ? 7 : retries);
    return delay > 1.0 ? 1.0 : delay;
}

static inflight_t *find_inflight(trainer_committee_t *committee, uint64_t request_id) {
    for (int index = 0; index < MAX_INFLIGHT; index++)
        if (committee->inflight[index].request_id == request_id) return &committee->inflight[index];
    return NULL;
}

static void mark_down(trainer_committee_t *committee, teacher_t *teacher, endpoint_t *endpoint,
                      const char *why) {
    endpoint->bad_replies = 0; /* counted afresh once it is back */
    if (endpoint->up) {
        endpoint->up = 0;
        endpoint->needs_hello = 1;
        teacher->stats.down_events++;
        const char *policy = committee->config.policy == TRAINER_POLICY_WAIT ? "waiting for it"
                             : committee->config.policy == TRAINER_POLICY_SKIP
                                 ? "training without it"
                                 : "stopping";
        cm_log_warn("teacher '%s' at %s is down (%s); %s", teacher->info.name, endpoint->address,
                    why, policy);
    }
}

/*
 * A request was lost (deadline, BUSY past the deadline, Bye, refused send, repeated malformed
 * replies, NaN or Inf): apply the failure policy to its ticket.  `why` continues "teacher
 * 'NAME' ..." in the sentence of policy fail (e.g. "did not answer within 400 ms").
 */
static cm_status_t request_failed(trainer_committee_t *committee, int number, const char *why) {
    ticket_t *ticket = &committee->tickets[number];
    teacher_t *teacher = &committee->teachers[ticket->teacher];
    ticket->attempts++;
    ticket->busy_deadline = 0.0;
    ticket->busy_retries = 0;
    switch (committee->config.policy) {
    case TRAINER_POLICY_FAIL: {
        cm_status_t status =
            cm_fail(CM_ERR_UNAVAILABLE, "teacher '%s' %s and --on-teacher-failure is fail",
                    teacher->info.name, why);
        finish(committee, number, NULL);
        return status;
    }
    case TRAINER_POLICY_SKIP:
        teacher->stats.failed_tickets++;
        finish(committee, number, NULL);
        return CM_OK;
    case TRAINER_POLICY_WAIT:
        ticket->state = TICKET_QUEUED;
        ticket->not_before = cm_progress_now() + backoff_seconds(ticket->attempts);
        return CM_OK;
    }
    return CM_OK;
}

static cm_status_t send_ticket(trainer_committee_t *committee, int number, int *sent) {
    ticket_t *ticket = &committee->tickets[number];
    teacher_t *teacher = &committee->teachers[ticket->teacher];
    *sent = 0;
    /* Pick an endpoint: round robin over the live ones, another than the one that last failed
     * this ticket if there is one; when none is live, probe one. */
    int chosen = -1;
    if (teacher->endpoint_count == 0) return CM_OK; /* every replica left: wait for DNS */
    for (int pass = 0; pass < 2 && chosen < 0; pass++)
        for (int step = 0; step < teacher->endpoint_count; step++) {
            int slot = (teacher->next_endpoint + step) % teacher->endpoint_count;
            if (teacher->endpoints[slot].up && (pass || slot != ticket->avoid_endpoint)) {
                chosen = slot;
                break;
            }
        }
    if (chosen < 0) chosen = teacher->next_endpoint % teacher->endpoint_count;
    teacher->next_endpoint = chosen + 1;
    endpoint_t *endpoint = &teacher->endpoints[chosen];
    inflight_t *slot = find_inflight(committee, 0);
    if (!slot) return CM_OK;
    if (endpoint->needs_hello) { /* greet a returning teacher; its Hello is checked on arrival */
        if (send_hello(committee, endpoint) != CM_OK) return CM_OK;
        endpoint->needs_hello = 0;
    }
    cm_wire_message_t message;
    uint64_t request_id = committee->next_request_id++;
    cm_wire_message_init(&message, CM_WIRE_BATCH_REQUEST, request_id);
    cm_wire_batch_request_t *request = &message.batch_request;
    request->split = ticket->split;
    request->example_count = ticket->count;
    request->example_ids = ticket->ids + ticket->count;
    request->encoding = committee->config.encoding;
    for (int output = 0; output < TRAINER_OUTPUT_COUNT; output++)
        if (ticket->outputs & (1u << output))
            request->outputs[request->output_count++] = trainer_cache_output_name(output);
    cm_status_t status = send_on(committee, endpoint, &message);
    if (status == CM_ERR_BUSY) { /* no live connection (ZMQ_IMMEDIATE): the teacher is gone */
        mark_down(committee, teacher, endpoint, "not connected");
        return CM_OK;
    }
    if (status != CM_OK) return status;
    slot->request_id = request_id;
    slot->ticket = number;
    slot->teacher = ticket->teacher;
    slot->endpoint = chosen;
    slot->deadline = cm_progress_now() + committee->config.deadline_ms / 1000.0;
    ticket->state = TICKET_SENT;
    ticket->avoid_endpoint = -1;
    teacher->inflight++;
    endpoint->inflight++;
    teacher->stats.requests++;
    *sent = 1;
    return CM_OK;
}

/* Greets every endpoint that is down, with back-off, so a returning teacher answers Hello. */
static void probe_down_endpoints(trainer_committee_t *committee) {
    double now = cm_progress_now();
    for (int index = 0; index < committee->teacher_count; index++) {
        teacher_t *teacher = &committee->teachers[index];
        for (int slot = 0; slot < teacher->endpoint_count; slot++) {
            endpoint_t *endpoint = &teacher->endpoints[slot];
            double delay = backoff_seconds(endpoint->probes); /* Hellos are cheap: <= 2 s */
            if (endpoint->up || now - endpoint->last_probe < (delay < 2.0 ? delay : 2.0)) continue;
            endpoint->last_probe = now;
            endpoint->probes++;
            if (send_hello(committee, endpoint) == CM_OK) endpoint->needs_hello = 0;
        }
    }
}

static cm_status_t send_queued(trainer_committee_t *committee) {
    double now = cm_progress_now();
    for (int number = 0; number < committee->ticket_capacity; number++) {
        ticket_t *ticket = &committee->tickets[number];
        if (ticket->state != TICKET_QUEUED || ticket->not_before > now) continue;
        teacher_t *teacher = &committee->teachers[ticket->teacher];
        int up = teacher_is_up(teacher);
        if (!up && committee->config.policy == TRAINER_POLICY_SKIP) {
            /* Down: train without it at once; Hello probes (probe_down_endpoints) notice its
             * return without holding any batch up. */
            teacher->stats.failed_tickets++;
            finish(committee, number, NULL);
            continue;
        }
        int window = up ? committee->config.window : 1;
        if (teacher->inflight >= window) continue;
        int sent = 0;
        cm_status_t status = send_ticket(committee, number, &sent);
        if (status != CM_OK) return status;
        if (!sent && !up && committee->config.policy == TRAINER_POLICY_SKIP) {
            teacher->stats.failed_tickets++;
            finish(committee, number, NULL);
        } else if (!sent && ticket->not_before <= now) {
            /* Not sendable now (no connection): give the transport a moment. */
            ticket->not_before = now + 0.05;
            if (committee->config.policy != TRAINER_POLICY_WAIT &&
                (ticket->attempts++ * 0.05) * 1000 > committee->config.deadline_ms) {
                char why[96];
                snprintf(why, sizeof why, "could not be reached within %d ms",
                         committee->config.deadline_ms);
                cm_status_t failed = request_failed(committee, number, why);
                if (failed != CM_OK) return failed;
            }
        }
    }
    return CM_OK;
}

/* The floats of `tensor` as F32: its own bytes, or converted into the scratch of `output`
 * (valid until the next reply).  NULL when out of memory. */
static const float *convert_rows(trainer_committee_t *committee, int output,
                                 const cm_wire_tensor_t *tensor, size_t elements) {
    if (tensor->encoding == CM_DTYPE_F32) return (const float *)tensor->data;
    if (committee->convert_capacity[output] < elements) {
        float *grown = realloc(committee->convert[output], sizeof(float) * elements);
        if (!grown) return NULL;
        committee->convert[output] = grown;
        committee->convert_capacity[output] = elements;
    }
    if (tensor->encoding == CM_DTYPE_F16)
        cm_wire_f16_to_f32(committee->convert[output], tensor->data, elements);
    else
        cm_wire_bf16_to_f32(committee->convert[output], tensor->data, elements);
    return committee->convert[output];
}

/* Index of the first NaN or infinity among `elements` floats encoded as `encoding` (F32, F16
 * or BF16, little-endian, any alignment), or -1: an all-ones exponent in every encoding. */
static long first_nonfinite(const void *data, cm_dtype_t encoding, size_t elements) {
    const unsigned char *bytes = data;
    if (encoding == CM_DTYPE_F32) {
        for (size_t index = 0; index < elements; index++) {
            uint32_t bits;
            memcpy(&bits, bytes + 4 * index, sizeof bits);
            if ((bits & 0x7f800000u) == 0x7f800000u) return (long)index;
        }
        return -1;
    }
    uint16_t exponent = encoding == CM_DTYPE_F16 ? 0x7c00u : 0x7f80u;
    for (size_t index = 0; index < elements; index++) {
        uint16_t bits;
        memcpy(&bits, bytes + 2 * index, sizeof bits);
        if ((bits & exponent) == exponent) return (long)index;
    }
    return -1;
}

/*
 * Checks that a BatchReply answers the ticket of `slot` (the same examples, every output asked
 * for once, each of the right size, every float finite) and only then hands it to the ticket's
 * owner, which finishes the ticket.  CM_ERR_PROTOCOL when it does not answer the ticket,
 * CM_ERR_OUT_OF_RANGE when a value is NaN or infinite; the sentence continues "teacher 'NAME' at
 * EP ...".  On failure the owner has heard nothing and the ticket is still open.
 */
static cm_status_t accept_reply(trainer_committee_t *committee, inflight_t *slot,
                                const cm_wire_batch_reply_t *reply, size_t bytes) {
    ticket_t *ticket = &committee->tickets[slot->ticket];
    teacher_t *teacher = &committee->teachers[slot->teacher];
    if (reply->split != ticket->split || reply->example_count != ticket->count ||
        memcmp(reply->example_ids, ticket->ids + ticket->count,
               sizeof(int32_t) * (size_t)ticket->count) != 0)
        return cm_fail(CM_ERR_PROTOCOL, "answered other examples than it was asked for");
    const cm_wire_tensor_t *found[TRAINER_OUTPUT_COUNT] = {NULL};
    for (int index = 0; index < reply->tensor_count; index++) {
        const cm_wire_tensor_t *tensor = &reply->tensors[index];
        int output = output_of(tensor->name);
        if (output < 0 || !(ticket->outputs & (1u << output))) continue;
        if (found[output])
            return cm_fail(CM_ERR_PROTOCOL, "sent '%s' twice in one reply", tensor->name);
        int width = teacher->info.width[output];
        size_t elements = (size_t)ticket->count * (size_t)width;
        size_t per_element = cm_dtype_size(tensor->encoding);
        int floats = tensor->encoding == CM_DTYPE_F32 || tensor->encoding == CM_DTYPE_F16 ||
                     tensor->encoding == CM_DTYPE_BF16;
        if (tensor->layout != CM_WIRE_DENSE || !floats || tensor->bytes != elements * per_element)
            return cm_fail(CM_ERR_PROTOCOL, "sent '%s' of %zu bytes, expected %zu dense floats",
                           tensor->name, tensor->bytes, elements);
        long bad = first_nonfinite(tensor->data, tensor->encoding, elements);
        if (bad >= 0)
            return cm_fail(CM_ERR_OUT_OF_RANGE,
                           "sent a non-finite value (NaN or Inf) in its '%s' of example %d",
                           tensor->name, ticket->ids[ticket->count + bad / width]);
        found[output] = tensor;
    }
    for (int output = 0; output < TRAINER_OUTPUT_COUNT; output++)
        if ((ticket->outputs & (1u << output)) && !found[output])
            return cm_fail(CM_ERR_PROTOCOL, "left out '%s', which it was asked for",
                           trainer_cache_output_name(output));
    trainer_reply_t answer = {.teacher = slot->teacher,
                              .count = ticket->count,
                              .rows = ticket->ids,
                              .outputs = ticket->outputs};
    for (int output = 0; output < TRAINER_OUTPUT_COUNT; output++) {
        if (!found[output]) continue;
        answer.width[output] = teacher->info.width[output];
        size_t elements = (size_t)ticket->count * (size_t)answer.width[output];
        answer.values[output] = convert_rows(committee, output, found[output], elements);
        if (!answer.values[output])
            return cm_fail(CM_ERR_NOMEM, "out of memory converting a reply");
    }
    teacher->stats.replies++;
    teacher->stats.examples += ticket->count;
    const endpoint_t *endpoint = &teacher->endpoints[slot->endpoint];
    if (endpoint->seen >= 0) {
        teacher->seen[endpoint->seen].replies++;
        teacher->seen[endpoint->seen].examples += ticket->count;
    }
    teacher->stats.bytes += bytes;
    finish(committee, slot->ticket, &answer);
    return CM_OK;
}

/*
 * A reply from endpoint slot_index of teacher_index that this trainer cannot use; `what`
 * continues "teacher 'NAME' at EP ...".  Counted, and answered at once: the request it
 * answered (`slot`; NULL when that cannot be told: then every request in flight on the
 * endpoint) is asked again, on another replica when there is one.  The
 * TRAINER_BAD_REPLIES_IN_A_ROW-th in a row marks the endpoint down and hands those requests to
 * the failure policy instead.
 */
static cm_status_t protocol_error(trainer_committee_t *committee, int teacher_index, int slot_index,
                                  inflight_t *slot, const char *what) {
    teacher_t *teacher = &committee->teachers[teacher_index];
    endpoint_t *endpoint = &teacher->endpoints[slot_index];
    teacher->stats.protocol_errors++;
    int bad = ++endpoint->bad_replies >= TRAINER_BAD_REPLIES_IN_A_ROW;
    char reason[700], why[1024];
    snprintf(reason, sizeof reason, "sent %d malformed replies in a row (the last: it %.600s)",
             endpoint->bad_replies, what);
    snprintf(why, sizeof why, "at %s %s", endpoint->address, reason);
    if (bad)
        mark_down(committee, teacher, endpoint, reason);
    else
        cm_log_warn("teacher '%s' at %s sent a reply this trainer cannot use: it %s; asking again",
                    teacher->info.name, endpoint->address, what);
    for (int index = 0; index < MAX_INFLIGHT; index++) {
        inflight_t *other = &committee->inflight[index];
        if (!other->request_id || other->teacher != teacher_index ||
            other->endpoint != slot_index || (slot && other != slot))
            continue;
        int number = other->ticket;
        drop_inflight(committee, other);
        ticket_t *ticket = &committee->tickets[number];
        ticket->avoid_endpoint = slot_index;
        if (bad) {
            cm_status_t status = request_failed(committee, number, why);
            if (status != CM_OK) return status;
        } else {
            ticket->state = TICKET_QUEUED;
            ticket->not_before = 0.0;
        }
    }
    if (!bad) return CM_OK;
    /* The requests that the earlier malformed replies put back in the queue were asked of this
     * endpoint too: they go to the policy with it (else, with nothing in flight when the last
     * bad reply comes, the endpoint would be greeted again and fed them again and again). */
    for (int number = 0; number < committee->ticket_capacity; number++) {
        ticket_t *ticket = &committee->tickets[number];
        if (ticket->state != TICKET_QUEUED || ticket->teacher != teacher_index ||
            ticket->avoid_endpoint != slot_index)
            continue;
        cm_status_t status = request_failed(committee, number, why);
        if (status != CM_OK) return status;
    }
    return CM_OK;
}

/* A reply holding NaN or Inf (`what` continues "teacher 'NAME' at EP ..."): counted, logged
 * (the first, the tenth, ...), and the request fails: the policy decides. */
static cm_status_t nonfinite_reply(trainer_committee_t *committee, int teacher_index,
                                   int slot_index, inflight_t *slot, const char *what) {
    teacher_t *teacher = &committee->teachers[teacher_index];
    endpoint_t *endpoint = &teacher->endpoints[slot_index];
    long count = ++teacher->stats.nonfinite_replies;
    char why[768];
    snprintf(why, sizeof why, "at %s %.600s", endpoint->address, what);
    if (worth_logging(count))
        cm_log_warn("teacher '%s' %s (%ld such replies so far); %s", teacher->info.name, why, count,
                    policy_action(committee));
    int number = slot->ticket;
    drop_inflight(committee, slot);
    committee->tickets[number].avoid_endpoint = slot_index;
    return request_failed(committee, number, why);
}

static cm_status_t handle_message(trainer_committee_t *committee, int teacher_index, int slot_index,
                                  const cm_wire_message_t *message, size_t bytes) {
    teacher_t *teacher = &committee->teachers[teacher_index];
    endpoint_t *endpoint = &teacher->endpoints[slot_index];
    if (message->kind == CM_WIRE_HELLO) {
        cm_status_t status = check_hello(committee, teacher, endpoint, &message->hello, 0);
        if (status != CM_OK) return status;
    }
    if (message->kind == CM_WIRE_BYE) {
        mark_down(committee, teacher, endpoint, "it said bye");
        for (int index = 0; index < MAX_INFLIGHT; index++) {
            inflight_t *slot = &committee->inflight[index];
            if (slot->request_id && slot->teacher == teacher_index &&
                slot->endpoint == slot_index) {
                int ticket = slot->ticket;
                drop_inflight(committee, slot);
                committee->tickets[ticket].avoid_endpoint = slot_index;
                cm_status_t status =
                    request_failed(committee, ticket, "said bye with requests in flight");
                if (status != CM_OK) return status;
            }
        }
        return CM_OK;
    }
    if (!endpoint->up) {
        endpoint->up = 1;
        endpoint->probes = 0;
        if (endpoint->ever_up)
            cm_log_info("teacher '%s' at %s is back", teacher->info.name, endpoint->address);
        else
            cm_log_info("teacher '%s': replica %s answers", teacher->info.name, endpoint->address);
        endpoint->ever_up = 1;
    }
    if (message->kind != CM_WIRE_BATCH_REPLY && message->kind != CM_WIRE_ERROR) return CM_OK;
    inflight_t *slot = message->request_id ? find_inflight(committee, message->request_id) : NULL;
    if (slot && (slot->teacher != teacher_index || slot->endpoint != slot_index))
        slot = NULL; /* not asked of this endpoint */
    if (!slot) {
        if (message->kind == CM_WIRE_ERROR)
            cm_log_warn("teacher '%s' reported %s: %s", teacher->info.name,
                        cm_status_name(message->error.code), message->error.message);
        if (message->kind == CM_WIRE_BATCH_REPLY &&
            (!message->request_id || message->request_id >= committee->next_request_id)) {
            char what[128];
            snprintf(what, sizeof what, "answered request %llu, which was never sent",
                     (unsigned long long)message->request_id);
            return protocol_error(committee, teacher_index, slot_index, NULL, what);
        }
        return CM_OK; /* a late answer to a request already given up */
    }
    int ticket = slot->ticket;
    if (message->kind == CM_WIRE_BATCH_REPLY) {
        cm_status_t status = accept_reply(committee, slot, &message->batch_reply, bytes);
        if (status == CM_ERR_PROTOCOL)
            return protocol_error(committee, teacher_index, slot_index, slot, cm_last_error());
        if (status == CM_ERR_OUT_OF_RANGE)
            return nonfinite_reply(committee, teacher_index, slot_index, slot, cm_last_error());
        drop_inflight(committee, slot);
        if (status != CM_OK) {
            finish(committee, ticket, NULL);
            return status;
        }
        endpoint->bad_replies = 0;
        if (endpoint->busy_episode)
            cm_log_info("teacher '%s' at %s answers again after being busy", teacher->info.name,
                        endpoint->address);
        endpoint->busy_episode = 0;
        return CM_OK;
    }
    drop_inflight(committee, slot);
    ticket_t *asked = &committee->tickets[ticket];
    switch (message->error.code) {
    case CM_ERR_BUSY: {
        /* Overloaded: ask again after a back-off, elsewhere if possible, until the streak has
         * lasted a whole deadline; then it is a failed request like a silent one. */
        teacher->stats.busy++;
        double now = cm_progress_now();
        asked->avoid_endpoint = slot_index;
        if (endpoint->busy_episode && committee->config.policy == TRAINER_POLICY_SKIP &&
            !other_live_endpoint(teacher, slot_index)) {
            teacher->stats.failed_tickets++;
            finish(committee, ticket, NULL); /* still busy: train on without it */
            return CM_OK;
        }
        if (asked->busy_deadline == 0.0)
            asked->busy_deadline = now + committee->config.deadline_ms / 1000.0;
        if (now >= asked->busy_deadline) {
            char why[160];
            snprintf(why, sizeof why, "at %s answered BUSY to every retry for %d ms",
                     endpoint->address, committee->config.deadline_ms);
            teacher->stats.busy_timeouts++;
            if (!endpoint->busy_episode)
                cm_log_warn("teacher '%s' %s; %s", teacher->info.name, why,
                            policy_action(committee));
            endpoint->busy_episode = 1;
            return request_failed(committee, ticket, why);
        }
        asked->state = TICKET_QUEUED;
        asked->not_before = now + busy_backoff_seconds(asked->busy_retries++);
        return CM_OK;
    }
    case CM_ERR_UNAVAILABLE:
    case CM_ERR_CANCELLED: {
        char why[CM_WIRE_MAX_STRING + 32];
        snprintf(why, sizeof why, "is unavailable (%s)", message->error.message);
        mark_down(committee, teacher, endpoint, message->error.message);
        asked->avoid_endpoint = slot_index;
        return request_failed(committee, ticket, why);
    }
    default: {
        cm_status_t status = cm_fail(message->error.code, "teacher '%s' refused a request: %s",
                                     teacher->info.name, message->error.message);
        finish(committee, ticket, NULL);
        return status;
    }
    }
}

static cm_status_t receive_from(trainer_committee_t *committee, int teacher_index, int slot_index) {
    endpoint_t *endpoint = &committee->teachers[teacher_index].endpoints[slot_index];
    cm_wire_limits_t limits = receive_limits();
    for (;;) {
        cm_zwire_received_t received;
        cm_status_t status = cm_zwire_recv(endpoint->socket, &received, ZMQ_DONTWAIT);
        if (status == CM_ERR_BUSY) return CM_OK;
        if (status != CM_OK) return status;
        size_t bytes = 0;
        for (int part = 0; part < received.part_count; part++)
            bytes += zmq_msg_size(&received.parts[part]);
        cm_wire_message_t message;
        cm_wire_message_init(&message, CM_WIRE_HEARTBEAT, 0);
        status = received.truncated
                     ? cm_fail(CM_ERR_FORMAT, "a message had too many frames")
                     : cm_zwire_decode(&message, received.parts, received.part_count, &limits);
        if (status == CM_OK) {
            status = handle_message(committee, teacher_index, slot_index, &message, bytes);
            cm_wire_message_deinit(&message);
        } else {
            /* The request it answers, when its header said (and it is ours, on this endpoint). */
            inflight_t *slot =
                message.request_id ? find_inflight(committee, message.request_id) : NULL;
            if (slot && (slot->teacher != teacher_index || slot->endpoint != slot_index))
                slot = NULL;
            char what[600];
            snprintf(what, sizeof what, "sent a message that does not decode (%.500s)",
                     cm_last_error());
            status = protocol_error(committee, teacher_index, slot_index, slot, what);
        }
        cm_zwire_received_close(&received);
        if (status != CM_OK) return status;
    }
}

static cm_status_t check_deadlines(trainer_committee_t *committee) {
    double now = cm_progress_now();
    for (int index = 0; index < MAX_INFLIGHT; index++) {
        inflight_t *slot = &committee->inflight[index];
        if (!slot->request_id || slot->deadline > now) continue;
        teacher_t *teacher = &committee->teachers[slot->teacher];
        char why[96];
        snprintf(why, sizeof why, "no answer within %d ms", committee->config.deadline_ms);
        mark_down(committee, teacher, &teacher->endpoints[slot->endpoint], why);
        teacher->stats.timeouts++;
        int ticket = slot->ticket;
        committee->tickets[ticket].avoid_endpoint = slot->endpoint;
        drop_inflight(committee, slot);
        snprintf(why, sizeof why, "did not answer within %d ms", committee->config.deadline_ms);
        cm_status_t status = request_failed(committee, ticket, why);
        if (status != CM_OK) return status;
    }
    return CM_OK;
}

static void send_heartbeats(trainer_committee_t *committee) {
    double now = cm_progress_now(), interval = committee->config.heartbeat_ms / 1000.0;
    cm_wire_message_t heartbeat;
    cm_wire_message_init(&heartbeat, CM_WIRE_HEARTBEAT, 0);
    for (int index = 0; index < committee->teacher_count; index++) {
        teacher_t *teacher = &committee->teachers[index];
        for (int slot = 0; slot < teacher->endpoint_count; slot++) {
            endpoint_t *endpoint = &teacher->endpoints[slot];
            if (endpoint->up && now - endpoint->last_sent >= interval) {
                heartbeat.heartbeat.sent_unix_ns = wall_clock_ns();
                send_on(committee, endpoint, &heartbeat);
            }
        }
    }
}

/* Logs handshakes that teachers refused since the last pump (a restarted teacher with another
 * allowlist, say) and counts those endpoints down; the failure policy decides the rest. */
static void check_reconnections(trainer_committee_t *committee) {
    for (int index = 0; index < committee->teacher_count; index++) {
        teacher_t *teacher = &committee->teachers[index];
        for (int slot = 0; slot < teacher->endpoint_count; slot++)
            if (check_handshake_events(committee, teacher, &teacher->endpoints[slot]) != CM_OK) {
                cm_log_warn("%s", cm_last_error());
                mark_down(committee, teacher, &teacher->endpoints[slot], "handshake failed");
            }
    }
}

cm_status_t trainer_committee_pump(trainer_committee_t *committee, int timeout_ms) {
    if (interrupted(committee)) return interruption();
    if (committee->config.policy == TRAINER_POLICY_SKIP) probe_down_endpoints(committee);
    cm_status_t status = send_queued(committee);
    if (status != CM_OK) return status;
    check_reconnections(committee);
    send_heartbeats(committee);
    if (committee->config.resolve_ms > 0 && (status = discover(committee)) != CM_OK) return status;
    zmq_pollitem_t items[TRAINER_COMMITTEE_MAX * TRAINER_MAX_CONNECTIONS];
    int owners[TRAINER_COMMITTEE_MAX * TRAINER_MAX_CONNECTIONS][2];
    int count = 0;
    for (int index = 0; index < committee->teacher_count; index++)
        for (int slot = 0; slot < committee->teachers[index].endpoint_count; slot++) {
            items[count] = (zmq_pollitem_t){committee->teachers[index].endpoints[slot].socket, 0,
                                            ZMQ_POLLIN, 0};
            owners[count][0] = index;
            owners[count][1] = slot;
            count++;
        }
    /* Wake up in time for the nearest deadline or back-off. */
    double now = cm_progress_now(), wake = now + timeout_ms / 1000.0;
    for (int index = 0; index < MAX_INFLIGHT; index++)
        if (committee->inflight[index].request_id && committee->inflight[index].deadline < wake)
            wake = committee->inflight[index].deadline;
    for (int number = 0; number < committee->ticket_capacity; number++)
        if (committee->tickets[number].state == TICKET_QUEUED &&
            committee->tickets[number].not_before < wake)
            wake = committee->tickets[number].not_before > now
                       ? committee->tickets[number].not_before
                       : now;
    long wait_ms = (long)ceil((wake - now) * 1000.0);
    if (wait_ms < 0) wait_ms = 0;
    if (wait_ms > WAIT_SLICE_MS) wait_ms = WAIT_SLICE_MS;
    if (zmq_poll(items, count, wait_ms) < 0 && zmq_errno() != EINTR)
        return cm_fail(CM_ERR_IO, "polling the teachers failed: %s", zmq_strerror(zmq_errno()));
    for (int index = 0; index < count; index++)
        if (items[index].revents & ZMQ_POLLIN) {
            status = receive_from(committee, owners[index][0], owners[index][1]);
            if (status != CM_OK) return status;
        }
    status = check_deadlines(committee);
    if (status != CM_OK) return status;
    status = send_queued(committee);
    if (status == CM_OK && interrupted(committee)) return interruption();
    return status;
}

/* ---------------------------------------------------------------- heads */

void trainer_head_free(trainer_head_t *head) {
    if (!head) return;
    free(head->weight);
    free(head->bias);
    memset(head, 0, sizeof *head);
}

/* The sentence for a teacher that lends no head for `feature`; `says` is its own, or NULL. */
static cm_status_t head_not_lent(const teacher_t *teacher, const endpoint_t *endpoint,
                                 const char *feature, const char *says) {
    return cm_fail(CM_ERR_NOT_FOUND,
                   "teacher '%s' at %s does not lend its head for '%s'%s%s%s; start it with "
                   "--lend-head on, or train without --dd-interactive",
                   teacher->info.name, endpoint->address, feature, says ? " (it says: " : "",
                   says ? says : "", says ? ")" : "");
}

/* Checks a HeadReply against the committee and copies it into *head. */
static cm_status_t accept_head(trainer_committee_t *committee, const teacher_t *teacher,
                               const endpoint_t *endpoint, int output,
                               const cm_wire_head_reply_t *reply, trainer_head_t *head) {
    const char *name = teacher->info.name, *feature = trainer_cache_output_name(output);
    if (strcmp(reply->feature, feature) != 0)
        return cm_fail(CM_ERR_PROTOCOL,
                       "teacher '%s' at %s answered a request for its '%s' head with the head of "
                       "'%.64s'",
                       name, endpoint->address, feature, reply->feature);
    if (reply->classes != committee->config.classes)
        return cm_fail(CM_ERR_MISMATCH,
                       "teacher '%s' at %s lends a head with %d classes but the student has %d",
                       name, endpoint->address, reply->classes, committee->config.classes);
    if (reply->inputs != teacher->info.width[output])
        return cm_fail(CM_ERR_MISMATCH,
                       "teacher '%s' at %s lends a head that reads %d inputs but its '%s' output "
                       "has %d",
                       name, endpoint->address, reply->inputs, feature,
                       teacher->info.width[output]);
    size_t weight_bytes = sizeof(float) * (size_t)reply->classes * (size_t)reply->inputs;
    size_t bias_bytes = sizeof(float) * (size_t)reply->classes;
    head->weight = malloc(weight_bytes);
    head->bias = malloc(bias_bytes);
    if (!head->weight || !head->bias) {
        trainer_head_free(head);
        return cm_fail(CM_ERR_NOMEM, "out of memory for the head of teacher '%s'", name);
    }
    memcpy(head->weight, reply->weight, weight_bytes); /* the frames have no alignment */
    memcpy(head->bias, reply->bias, bias_bytes);
    head->classes = reply->classes;
    head->inputs = reply->inputs;
    return CM_OK;
}

/*
 * Asks one endpoint for the head of `output` and waits up to handshake_ms for the answer,
 * passing everything else it sends to handle_message.  CM_ERR_UNAVAILABLE when this endpoint
 * cannot answer (not connected, silent, said bye, shutting down): the caller tries another.
 */
static cm_status_t request_head(trainer_committee_t *committee, int teacher_index, int slot,
                                int output, trainer_head_t *head) {
    teacher_t *teacher = &committee->teachers[teacher_index];
    endpoint_t *endpoint = &teacher->endpoints[slot];
    const char *name = teacher->info.name, *feature = trainer_cache_output_name(output);
    uint64_t request_id = committee->next_request_id++;
    cm_wire_message_t request;
    cm_wire_message_init(&request, CM_WIRE_HEAD_REQUEST, request_id);
    request.head_request.feature = feature;
    cm_status_t status = send_on(committee, endpoint, &request);
    if (status == CM_ERR_BUSY) { /* no live connection (ZMQ_IMMEDIATE) */
        mark_down(committee, teacher, endpoint, "not connected");
        return cm_fail(CM_ERR_UNAVAILABLE, "teacher '%s' at %s is not connected", name,
                       endpoint->address);
    }
    if (status != CM_OK) return status;
    double give_up = cm_progress_now() + committee->config.handshake_ms / 1000.0;
    cm_wire_limits_t limits = receive_limits();
    for (;;) {
        if (interrupted(committee)) return interruption();
        double left = give_up - cm_progress_now();
        if (left <= 0) {
            mark_down(committee, teacher, endpoint, "no answer to a HeadRequest");
            return cm_fail(CM_ERR_UNAVAILABLE,
                           "teacher '%s' at %s did not answer the HeadRequest for '%s' within %d "
                           "ms",
                           name, endpoint->address, feature, committee->config.handshake_ms);
        }
        zmq_pollitem_t item = {endpoint->socket, 0, ZMQ_POLLIN, 0};
        int ready = zmq_poll(&item, 1, slice_ms(left));
        if (ready < 0 && zmq_errno() != EINTR)
            return cm_fail(CM_ERR_IO, "waiting for teacher '%s' at %s failed: %s", name,
                           endpoint->address, zmq_strerror(zmq_errno()));
        if (ready <= 0) continue;
        cm_zwire_received_t received;
        cm_wire_message_t message;
        status =
            cm_zwire_recv_message(endpoint->socket, &received, &message, &limits, ZMQ_DONTWAIT);
        if (status == CM_ERR_BUSY) continue; /* nothing, or only heartbeats, so far */
        if (status == CM_ERR_IO) return status;
        if (status != CM_OK) /* most likely the head itself, refused by cm_wire */
            return cm_fail(status,
                           "teacher '%s' at %s sent a message this trainer cannot read "
                           "while it waited for the head: %s",
                           name, endpoint->address, cm_last_error());
        int answer = message.request_id == request_id;
        size_t bytes = 0;
        for (int part = 0; part < received.part_count; part++)
            bytes += zmq_msg_size(&received.parts[part]);
        if (answer && message.kind == CM_WIRE_HEAD_REPLY) {
            status = accept_head(committee, teacher, endpoint, output, &message.head_reply, head);
        } else if (answer && message.kind == CM_WIRE_ERROR) {
            cm_status_t code = message.error.code;
            int going = code == CM_ERR_UNAVAILABLE || code == CM_ERR_CANCELLED;
            if (going) mark_down(committee, teacher, endpoint, message.error.message);
            if (code == CM_ERR_NOT_FOUND)
                status = head_not_lent(teacher, endpoint, feature, message.error.message);
            else
                status = cm_fail(going ? CM_ERR_UNAVAILABLE : code,
                                 "teacher '%s' at %s refused the HeadRequest for '%s': %s", name,
                                 endpoint->address, feature, message.error.message);
        } else if (answer) {
            status = cm_fail(CM_ERR_PROTOCOL,
                             "teacher '%s' at %s answered the HeadRequest for '%s' with a "
                             "message of kind %d",
                             name, endpoint->address, feature, (int)message.kind);
        } else { /* the rest, as the pump would: tickets' replies, Hellos, Byes, late answers */
            status = handle_message(committee, teacher_index, slot, &message, bytes);
            if (status == CM_OK && !endpoint->up)
                status = cm_fail(CM_ERR_UNAVAILABLE,
                                 "teacher '%s' at %s said bye before it sent its head", name,
                                 endpoint->address);
            else if (status == CM_OK)
                status = CM_ERR_BUSY; /* keep waiting */
        }
        cm_zwire_release(&received, &message);
        if (status != CM_ERR_BUSY) return status;
    }
}

cm_status_t trainer_committee_fetch_head(trainer_committee_t *committee, int teacher_index,
                                         const char *feature, trainer_head_t *head) {
    memset(head, 0, sizeof *head);
    if (teacher_index < 0 || teacher_index >= committee->teacher_count)
        return cm_fail(CM_ERR_INVALID_ARG, "there is no teacher %d in a committee of %d",
                       teacher_index, committee->teacher_count);
    teacher_t *teacher = &committee->teachers[teacher_index];
    int output = output_of(feature);
    if (output < 0)
        return cm_fail(CM_ERR_INVALID_ARG,
                       "a head reads one of a teacher's outputs (logits, hidden, tokens), not "
                       "'%s'",
                       feature);
    /* Its Hello says what it lends; a teacher that lends nothing (or speaks protocol 1.0,
     * which has no HeadRequest) is not asked. */
    if (!(teacher->info.heads & (1u << output)))
        return head_not_lent(teacher, &teacher->endpoints[0], feature, NULL);
    cm_status_t status = CM_ERR_UNAVAILABLE;
    for (int slot = 0; slot < teacher->endpoint_count; slot++) {
        status = request_head(committee, teacher_index, slot, output, head);
        if (status != CM_ERR_UNAVAILABLE) return status;
    }
    if (teacher->endpoint_count == 1) return status; /* its sentence says why */
    char last[512];
    snprintf(last, sizeof last, "%s", cm_last_error());
    return cm_fail(CM_ERR_UNAVAILABLE,
                   "none of the %d endpoints of teacher '%s' sent its head for '%s' (the last: "
                   "%s)",
                   teacher->endpoint_count, teacher->info.name, feature, last);
}
