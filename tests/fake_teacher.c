/*
 * fake_teacher: see fake_teacher.h.
 *
 * fake_teacher_start creates and binds the ROUTER socket, then only the
 * teacher's thread uses it until fake_teacher_stop has joined that thread
 * (ZeroMQ lets a socket move between threads across a full memory barrier,
 * which pthread_create and pthread_join are).  The test thread only reads
 * the counters and sets the stop flag, looked at between polls of 50 ms.
 */
#include "fake_teacher.h"

#include "cm_wire.h"
#include "cm_zwire.h"

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

enum { CLASSES = 10, POLL_MS = 50, MAX_IDS = 4096 };

struct fake_teacher {
    fake_teacher_mode_t mode;
    int normal_requests;
    char name[64];
    char fingerprint[65];
    void *context;
    void *socket;
    pthread_t thread;
    atomic_int stop;
    atomic_int requests;
    atomic_int hellos;
    float logits[MAX_IDS * CLASSES];
};

static void send_hello(fake_teacher_t *teacher, zmq_msg_t *routing) {
    cm_wire_message_t hello;
    cm_wire_message_init(&hello, CM_WIRE_HELLO, 0);
    hello.hello.peer = CM_WIRE_PEER_TEACHER;
    hello.hello.peer_name = teacher->name;
    hello.hello.role = CM_WIRE_ROLE_COMPLEMENTARY;
    hello.hello.model_id = "fake:logits-by-id";
    hello.hello.model_sha256 = "fa4efa4efa4efa4efa4efa4efa4efa4efa4efa4efa4efa4efa4efa4efa4efa4e";
    hello.hello.view = "pool7";
    hello.hello.dataset_name = "fashion-mnist";
    hello.hello.dataset_fingerprint = teacher->fingerprint;
    hello.hello.classes = CLASSES;
    hello.hello.output_count = 1;
    hello.hello.outputs[0] = (cm_wire_output_t){"logits", CM_DTYPE_F32, 1, {CLASSES}};
    hello.hello.limits = cm_wire_limits_default();
    cm_zwire_send(teacher->socket, routing, &hello, 0, NULL);
}

static void send_garbage(fake_teacher_t *teacher, zmq_msg_t *routing) {
    static const char garbage[] = "\xff\xfe this is not a protobuf header \x01\x02\x03";
    zmq_msg_t copy;
    zmq_msg_init(&copy);
    zmq_msg_copy(&copy, routing);
    if (zmq_msg_send(&copy, teacher->socket, ZMQ_SNDMORE) < 0) zmq_msg_close(&copy);
    zmq_send(teacher->socket, garbage, sizeof garbage - 1, 0);
}

/* A BatchReply to `request` (answering `request_id`) with rows of `width` floats. */
static void send_reply(fake_teacher_t *teacher, zmq_msg_t *routing, uint64_t request_id,
                       const cm_wire_batch_request_t *request, int width, int poison) {
    int count = request->example_count;
    for (int row = 0; row < count; row++)
        for (int column = 0; column < width; column++)
            teacher->logits[row * width + column] =
                column == request->example_ids[row] % CLASSES ? 4.0f : 0.0f;
    if (poison) {
        teacher->logits[3] = NAN;
        teacher->logits[(count - 1) * width] = INFINITY;
    }
    cm_wire_message_t reply;
    cm_wire_message_init(&reply, CM_WIRE_BATCH_REPLY, request_id);
    reply.batch_reply.split = request->split;
    reply.batch_reply.example_count = count;
    reply.batch_reply.example_ids = request->example_ids;
    reply.batch_reply.tensor_count = 1;
    reply.batch_reply.tensors[0] =
        (cm_wire_tensor_t){.name = "logits",
                           .dtype = CM_DTYPE_F32,
                           .encoding = CM_DTYPE_F32,
                           .layout = CM_WIRE_DENSE,
                           .ndim = 2,
                           .shape = {count, width},
                           .data = teacher->logits,
                           .bytes = sizeof(float) * (size_t)count * (size_t)width};
    cm_zwire_send(teacher->socket, routing, &reply, 0, NULL);
}

static void answer_request(fake_teacher_t *teacher, zmq_msg_t *routing,
                           const cm_wire_message_t *message) {
    int number = atomic_fetch_add(&teacher->requests, 1) + 1; /* 1-based */
    const cm_wire_batch_request_t *request = &message->batch_request;
    if (request->example_count > MAX_IDS) return;
    switch (teacher->mode) {
    case FAKE_TEACHER_MUTE:
        return;
    case FAKE_TEACHER_SILENT_AFTER:
        if (number > teacher->normal_requests) return;
        break;
    case FAKE_TEACHER_BUSY: {
        cm_wire_message_t busy;
        cm_wire_message_error(&busy, message->request_id, CM_ERR_BUSY,
                              "the fake teacher is always busy");
        cm_zwire_send(teacher->socket, routing, &busy, 0, NULL);
        return;
    }
    case FAKE_TEACHER_GARBAGE:
        send_garbage(teacher, routing);
        return;
    case FAKE_TEACHER_GARBAGE_ONCE:
        if (number > 1) break;
        send_garbage(teacher, routing);
        return;
    case FAKE_TEACHER_SHORT_ROWS_ONCE:
        if (number > 1) break;
        send_reply(teacher, routing, message->request_id, request, CLASSES - 1, 0);
        return;
    case FAKE_TEACHER_UNKNOWN_ID_ONCE:
        if (number > 1) break;
        send_reply(teacher, routing, message->request_id + 1000000, request, CLASSES, 0);
        return;
    default:
        break;
    }
    send_reply(teacher, routing, message->request_id, request, CLASSES,
               teacher->mode == FAKE_TEACHER_NAN);
}

static void *serve(void *argument) {
    fake_teacher_t *teacher = argument;
    cm_wire_limits_t limits = cm_wire_limits_default();
    while (!atomic_load(&teacher->stop)) {
        zmq_pollitem_t item = {teacher->socket, 0, ZMQ_POLLIN, 0};
        if (zmq_poll(&item, 1, POLL_MS) <= 0) continue;
        cm_zwire_received_t received;
        if (cm_zwire_recv(teacher->socket, &received, ZMQ_DONTWAIT) != CM_OK) continue;
        cm_wire_message_t message;
        if (received.part_count >= 2 &&
            cm_zwire_decode(&message, received.parts + 1, received.part_count - 1, &limits) ==
                CM_OK) {
            if (message.kind == CM_WIRE_HELLO) {
                atomic_fetch_add(&teacher->hellos, 1);
                if (teacher->mode != FAKE_TEACHER_MUTE) send_hello(teacher, &received.parts[0]);
            } else if (message.kind == CM_WIRE_BATCH_REQUEST) {
                answer_request(teacher, &received.parts[0], &message);
            }
            cm_wire_message_deinit(&message);
        }
        cm_zwire_received_close(&received);
    }
    return NULL;
}

fake_teacher_t *fake_teacher_start(const char *endpoint, const char *name, const char *fingerprint,
                                   fake_teacher_mode_t mode, int normal_requests) {
    fake_teacher_t *teacher = calloc(1, sizeof *teacher);
    if (!teacher) return NULL;
    teacher->mode = mode;
    teacher->normal_requests = normal_requests;
    snprintf(teacher->name, sizeof teacher->name, "%s", name);
    snprintf(teacher->fingerprint, sizeof teacher->fingerprint, "%s", fingerprint);
    int linger = 0;
    teacher->context = zmq_ctx_new();
    if (teacher->context) teacher->socket = zmq_socket(teacher->context, ZMQ_ROUTER);
    if (!teacher->socket ||
        zmq_setsockopt(teacher->socket, ZMQ_LINGER, &linger, sizeof linger) != 0 ||
        zmq_bind(teacher->socket, endpoint) != 0 ||
        pthread_create(&teacher->thread, NULL, serve, teacher) != 0) {
        if (teacher->socket) zmq_close(teacher->socket);
        if (teacher->context) zmq_ctx_term(teacher->context);
        free(teacher);
        return NULL;
    }
    return teacher;
}

int fake_teacher_requests(fake_teacher_t *teacher) { return atomic_load(&teacher->requests); }

int fake_teacher_hellos(fake_teacher_t *teacher) { return atomic_load(&teacher->hellos); }

void fake_teacher_stop(fake_teacher_t **teacher_pointer) {
    fake_teacher_t *teacher = *teacher_pointer;
    if (!teacher) return;
    atomic_store(&teacher->stop, 1);
    pthread_join(teacher->thread, NULL);
    zmq_close(teacher->socket);
    zmq_ctx_term(teacher->context);
    free(teacher);
    *teacher_pointer = NULL;
}
