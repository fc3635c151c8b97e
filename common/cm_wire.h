/*
 * cm_wire: the committee wire protocol as plain C structs.
 *
 * A message is a list of frames: frame 0 is a protobuf header (an Envelope
 * of proto/committee.proto), then one raw frame per tensor of a BatchReply
 * (or the weight and bias frames of a HeadReply).
 * This module packs a cm_wire_message_t into such frames and turns received
 * frames back into one, checking everything a peer could get wrong: the
 * header parses, the major version matches, a body is present, counts,
 * strings and shapes are sane, every frame is exactly as long as its
 * descriptor says, and the message respects the receiver's limits.  Every
 * failure is a cm_status_t with a sentence (cm_last_error()) naming the
 * field, so the caller can answer with an Error and drop the message.
 *
 * It knows nothing about ZeroMQ: frames are (pointer, length) pairs, so the
 * server and the trainer do the zmq_msg work and this stays testable.
 * Protobuf types never leave cm_wire.c.
 *
 * Ownership: strings and arrays in a message are borrowed.  When encoding,
 * they belong to the caller for the duration of the call (tensor data until
 * the frames are sent).  A decoded message points into its own header
 * storage and into the received frames; it stays valid until
 * cm_wire_message_deinit() and as long as the frames live.
 *
 * Tensor frames are little-endian; f16/bf16 helpers convert float arrays
 * and accept buffers at any alignment (received frames have none).
 */
#ifndef CM_WIRE_H
#define CM_WIRE_H

#include "cm_dataset.h"
#include "cm_status.h"
#include "cm_tensor.h"

#include <stddef.h>
#include <stdint.h>

enum {
    CM_WIRE_VERSION_MAJOR = 1, /* peers must agree on it exactly */
    CM_WIRE_VERSION_MINOR = 2, /* compatible additions; may differ between peers (1: heads; 2:
                                  valid and transfer splits, Hello.splits) */
    CM_WIRE_MAX_TENSORS = 16,  /* tensor frames in one BatchReply */
    CM_WIRE_MAX_OUTPUTS = 16,  /* outputs a Hello lists or a BatchRequest names */
    CM_WIRE_MAX_STRING = 1024, /* bytes of any string field, without the NUL */
    CM_WIRE_MAX_FRAMES = 1 + CM_WIRE_MAX_TENSORS,
};

typedef enum {
    CM_WIRE_HELLO,
    CM_WIRE_BATCH_REQUEST,
    CM_WIRE_BATCH_REPLY,
    CM_WIRE_HEARTBEAT,
    CM_WIRE_ERROR,
    CM_WIRE_BYE,
    CM_WIRE_HEAD_REQUEST, /* since minor version 1 */
    CM_WIRE_HEAD_REPLY,
    CM_WIRE_KIND_COUNT
} cm_wire_kind_t;

typedef enum { CM_WIRE_PEER_UNKNOWN, CM_WIRE_PEER_TEACHER, CM_WIRE_PEER_TRAINER } cm_wire_peer_t;

typedef enum {
    CM_WIRE_ROLE_NONE, /* trainers */
    CM_WIRE_ROLE_FOUNDATION,
    CM_WIRE_ROLE_COMPLEMENTARY
} cm_wire_role_t;

/* Which part of an output a tensor carries (see Layout in committee.proto). */
typedef enum {
    CM_WIRE_DENSE,        /* the whole output, [examples, ...] */
    CM_WIRE_TOPK_VALUES,  /* the k largest logits, [examples, k], F32 */
    CM_WIRE_TOPK_INDICES, /* their classes, [examples, k], I32 */
    CM_WIRE_TAIL_MASS,    /* probability of all other classes, [examples], F32 */
    CM_WIRE_LAYOUT_COUNT
} cm_wire_layout_t;

/* One frame: `bytes` bytes at `data` (borrowed). */
typedef struct {
    const void *data;
    size_t bytes;
} cm_wire_frame_t;

/* What a peer accepts; travels in Hello and bounds what cm_wire_decode() lets through. */
typedef struct {
    uint32_t max_examples;      /* example ids in one request or reply */
    uint64_t max_message_bytes; /* header plus all tensor frames */
    uint32_t max_in_flight;     /* requests outstanding at once */
} cm_wire_limits_t;

/* An output a teacher exposes: its name and its shape for one example. */
typedef struct {
    const char *name; /* "logits", "hidden", "tokens" */
    cm_dtype_t dtype; /* CM_DTYPE_F32 or CM_DTYPE_I32 */
    int ndim;         /* 1 .. CM_TENSOR_MAX_DIMS */
    int64_t shape[CM_TENSOR_MAX_DIMS];
} cm_wire_output_t;

/* First message of a connection, both ways. */
typedef struct {
    cm_wire_peer_t peer;
    const char *peer_name;           /* the teacher's or the trainer's name */
    cm_wire_role_t role;             /* teachers: foundation or complementary */
    const char *model_id;            /* spec string; required from teachers */
    const char *model_sha256;        /* 64 lowercase hex digits, or "" */
    const char *view;                /* e.g. "full", "pool7" */
    const char *dataset_name;        /* e.g. "fashion-mnist" */
    const char *dataset_fingerprint; /* 64 lowercase hex digits */
    int classes;                     /* >= 1 */
    int output_count;                /* teachers: >= 1 */
    cm_wire_output_t outputs[CM_WIRE_MAX_OUTPUTS];
    cm_wire_limits_t limits; /* every field >= 1 */
    /* Features whose head the teacher lends (HeadRequest), each the name of one of its
     * outputs, no duplicates; 0 when it lends none, from trainers and from minor-0 peers. */
    int head_count;
    const char *heads[CM_WIRE_MAX_OUTPUTS];
    /* The splits a teacher answers for (minor 2), each once, in cm_split_t order; 0 from
     * trainers and from older peers (which answer train and test).  Values this side does not
     * know are skipped when decoding. */
    int split_count;
    cm_split_t splits[CM_SPLIT_COUNT];
} cm_wire_hello_t;

/* Trainer to teacher: the outputs wanted for some examples of a split. */
typedef struct {
    cm_split_t split;
    int example_count;          /* >= 1 */
    const int32_t *example_ids; /* [example_count], each >= 0 */
    int output_count;           /* >= 1 */
    const char *outputs[CM_WIRE_MAX_OUTPUTS];
    cm_dtype_t encoding; /* for float outputs: CM_DTYPE_F32, _F16 or _BF16 */
    int top_k;           /* 0: dense logits */
} cm_wire_batch_request_t;

/* One tensor of a BatchReply and the frame that carries it. */
typedef struct {
    const char *name;        /* the output it belongs to */
    cm_dtype_t dtype;        /* what it holds: CM_DTYPE_F32 or CM_DTYPE_I32 */
    cm_dtype_t encoding;     /* how elements travel: F32/F16/BF16 for F32, I32 for I32 */
    cm_wire_layout_t layout; /* dense or a part of top-k logits */
    int ndim;                /* 1 .. CM_TENSOR_MAX_DIMS; shape[0] == example_count */
    int64_t shape[CM_TENSOR_MAX_DIMS];
    const void *data; /* the frame (borrowed); little-endian elements */
    size_t bytes;     /* == cm_dtype_size(encoding) * product(shape) */
} cm_wire_tensor_t;

/* Teacher to trainer: the outputs for the examples of one request. */
typedef struct {
    cm_split_t split;
    int example_count;          /* >= 1 */
    const int32_t *example_ids; /* [example_count], each >= 0 */
    int tensor_count;           /* 1 .. CM_WIRE_MAX_TENSORS */
    cm_wire_tensor_t tensors[CM_WIRE_MAX_TENSORS];
} cm_wire_batch_reply_t;

typedef struct {
    uint64_t sent_unix_ns; /* sender's wall clock, nanoseconds since 1970 */
} cm_wire_heartbeat_t;

/* A failure, by cm_status code (sent as its name) and a sentence for people. */
typedef struct {
    cm_status_t code;    /* never CM_OK; names this side does not know decode as CM_ERR_INTERNAL */
    const char *message; /* may be "" */
} cm_wire_error_t;

typedef struct {
    const char *reason; /* may be "" */
} cm_wire_bye_t;

/* Trainer to teacher: the head that maps `feature` (e.g. "hidden") to the logits. */
typedef struct {
    const char *feature; /* required */
} cm_wire_head_request_t;

/*
 * Teacher to trainer: a dense head, logits[classes] = weight[classes][inputs] . feature + bias.
 * On the wire: two F32 tensor frames after the header, "weight" [classes, inputs] and "bias"
 * [classes], little-endian.  Both arrays are borrowed; a decoded one points into a received
 * frame, which has no alignment (copy it out with memcpy before reading floats).
 */
typedef struct {
    const char *feature; /* the feature it reads, as requested */
    int classes;         /* >= 1 */
    int inputs;          /* >= 1: the width of the feature */
    const void *weight;  /* [classes][inputs] F32 */
    const void *bias;    /* [classes] F32 */
} cm_wire_head_reply_t;

/*
 * One message.  request_id is chosen by the requester (BatchRequest,
 * HeadRequest), non-zero and unique on its connection; a BatchReply, a
 * HeadReply or an Error repeats the id it answers; 0 means "answers
 * nothing".  The version fields are what the sender spoke (decoding);
 * encoding always sends CM_WIRE_VERSION_*.
 */
typedef struct {
    cm_wire_kind_t kind;
    uint32_t version_major;
    uint32_t version_minor;
    uint64_t request_id;
    union {
        cm_wire_hello_t hello;
        cm_wire_batch_request_t batch_request;
        cm_wire_batch_reply_t batch_reply;
        cm_wire_heartbeat_t heartbeat;
        cm_wire_error_t error;
        cm_wire_bye_t bye;
        cm_wire_head_request_t head_request;
        cm_wire_head_reply_t head_reply;
    };
    void *header; /* private: decoded header storage, freed by cm_wire_message_deinit */
} cm_wire_message_t;

/* Frames ready to send: frames[0] is the header, the rest the tensor data. */
typedef struct {
    int frame_count;
    cm_wire_frame_t frames[CM_WIRE_MAX_FRAMES];
    void *header; /* private: the header bytes, freed by cm_wire_encoded_deinit */
} cm_wire_encoded_t;

/*
 * Clears *message and makes it a `kind` message with `request_id` at this
 * side's protocol version, ready for its body fields to be filled in.
 */
void cm_wire_message_init(cm_wire_message_t *message, cm_wire_kind_t kind, uint64_t request_id);

/*
 * Makes *message an Error answering `request_id` (0 if none) with `code`
 * (not CM_OK) and `sentence` (borrowed; NULL means cm_status_str(code)).
 * The usual reply to a failed cm_wire_decode() is
 * cm_wire_message_error(&reply, received.request_id, status, cm_last_error()).
 */
void cm_wire_message_error(cm_wire_message_t *message, uint64_t request_id, cm_status_t code,
                           const char *sentence);

/*
 * Releases what cm_wire_decode() allocated for *message and clears it.
 * Safe on a message that was built by hand, already deinitialized or failed
 * to decode.
 */
void cm_wire_message_deinit(cm_wire_message_t *message);

/* Sensible defaults: 4096 examples, 64 MiB messages, 8 requests in flight. */
cm_wire_limits_t cm_wire_limits_default(void);

/*
 * Checks *message as cm_wire_decode() would (without the receiver's limits)
 * and stores the size of its packed header in *header_bytes.  Failure:
 * CM_ERR_FORMAT, CM_ERR_SHAPE or CM_ERR_TOO_LARGE naming the field.
 */
cm_status_t cm_wire_header_size(const cm_wire_message_t *message, size_t *header_bytes);

/*
 * Checks *message and packs its header into buffer[0 .. capacity), e.g. the
 * data of a zmq_msg_t sized with cm_wire_header_size(); *header_bytes gets
 * the packed size.  CM_ERR_TOO_LARGE if it does not fit.  Allocates nothing.
 */
cm_status_t cm_wire_pack_header(const cm_wire_message_t *message, void *buffer, size_t capacity,
                                size_t *header_bytes);

/*
 * Every string a header carries goes out as valid UTF-8 (protobuf's `string`; strict parsers
 * such as Python's reject a message that is not): cm_wire_header_size, cm_wire_pack_header and
 * cm_wire_encode send a string that is not as a copy with each bad byte replaced by U+FFFD, cut
 * at a character boundary to CM_WIRE_MAX_STRING bytes.  That copy is the one allocation
 * "allocates nothing" does not count (only for strings that need it).
 *
 * cm_wire_utf8_valid: 1 when text[0 .. length) is UTF-8 (no overlong forms, surrogates or code
 * points beyond U+10FFFF), else 0.
 */
int cm_wire_utf8_valid(const char *text, size_t length);

/*
 * Checks *message and fills *encoded with the frames to send: a freshly
 * allocated header, then each tensor's data (borrowed from the message).
 * Release with cm_wire_encoded_deinit(), also after a failure.
 */
cm_status_t cm_wire_encode(cm_wire_encoded_t *encoded, const cm_wire_message_t *message);

/*
 * The raw frames that follow the header of `message`, borrowed from it: a BatchReply's tensor
 * data, a HeadReply's weight and bias; none for the other kinds.  Fills
 * frames[0 .. CM_WIRE_MAX_TENSORS) and returns how many.  No checks: the message is one this
 * side built or decoded.
 */
int cm_wire_tensor_frames(const cm_wire_message_t *message, cm_wire_frame_t *frames);

/* Frees the header of *encoded and clears it; safe to call twice. */
void cm_wire_encoded_deinit(cm_wire_encoded_t *encoded);

/*
 * Parses and checks `frame_count` received frames into *message (which is
 * overwritten, so deinit a previous message first).  Checks, in order: the
 * number of frames and their total size against limits->max_message_bytes
 * (CM_ERR_TOO_LARGE); the header parses (CM_ERR_FORMAT "malformed
 * header"); the major version (CM_ERR_VERSION); a body is present; strings,
 * counts, enums and shapes are sane (CM_ERR_FORMAT, CM_ERR_SHAPE, or
 * CM_ERR_TOO_LARGE for sizes); example ids are non-negative
 * (CM_ERR_OUT_OF_RANGE) and at most limits->max_examples of them
 * (CM_ERR_TOO_LARGE); a BatchReply has one frame per descriptor, each
 * exactly as long as its shape and encoding say (CM_ERR_FORMAT); a
 * HeadReply is of kind dense (CM_ERR_FORMAT "unsupported head kind") with
 * exactly the tensors "weight" [classes, inputs] and "bias" [classes], F32,
 * dense, their frames exactly that long (CM_ERR_FORMAT, CM_ERR_SHAPE when
 * the two disagree on classes, CM_ERR_TOO_LARGE beyond the limits).  Whether
 * the ids exist in the dataset is cm_wire_check_ids()'s job.  On success
 * the message borrows from the frames and must be released with
 * cm_wire_message_deinit().  On failure it holds nothing, but its
 * request_id and version fields are set when the header parsed, so the
 * caller can address its Error.
 */
cm_status_t cm_wire_decode(cm_wire_message_t *message, const cm_wire_frame_t *frames,
                           int frame_count, const cm_wire_limits_t *limits);

/*
 * Checks that every one of `count` example ids lies in [0, split_size);
 * CM_ERR_OUT_OF_RANGE naming the first id that does not.
 */
cm_status_t cm_wire_check_ids(const int32_t *ids, int count, int split_size);

/*
 * float32 -> IEEE binary16, `count` values, rounding to nearest even:
 * overflow becomes +-inf, tiny values become subnormals or +-0, NaN stays a
 * (quiet) NaN.  out[count], in[count]; the arrays must not overlap.
 */
void cm_wire_f32_to_f16(void *out, const void *in, size_t count);

/* binary16 -> float32, exactly (every half value is a float). out[count], in[count]. */
void cm_wire_f16_to_f32(float *out, const void *in, size_t count);

/*
 * float32 -> bfloat16 (the top 16 bits), rounding to nearest even;
 * NaN stays a (quiet) NaN with its sign.  out[count], in[count].
 */
void cm_wire_f32_to_bf16(void *out, const void *in, size_t count);

/* bfloat16 -> float32, exactly. out[count], in[count]. */
void cm_wire_bf16_to_f32(float *out, const void *in, size_t count);

#endif
