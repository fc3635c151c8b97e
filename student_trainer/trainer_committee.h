/*
 * trainer_committee: the committee client of student-trainer.
 *
 * One DEALER socket per teacher endpoint (several endpoints under one name
 * are replicas of one teacher and share its load).  At start the client
 * says Hello to every endpoint and checks what comes back: the protocol
 * version (cm_wire), the dataset fingerprint and the class count against
 * the student's data, and that replicas of one teacher hold the same model.
 *
 * The feed (trainer_feed) submits *tickets* ("teacher i: outputs O of
 * these training rows") and pumps the client between optimizer steps.  The
 * pump is an event-driven state machine over zmq_poll: it sends queued
 * tickets while the teacher has credits (a window of requests in flight),
 * checks every reply, and hands it to the ticket's owner (the callback given
 * at submit), which decides what to keep; the client stores no teacher
 * output itself and forgets a ticket once its owner heard the outcome, so
 * the owner's ledger is the only one of what is asked.  Every ticket is
 * completed exactly once: answered, or given up (policy skip).  It enforces
 * a deadline per request.  A request fails when it is past its deadline, when the
 * teacher answered BUSY to every retry of it for deadline_ms (retries back
 * off 10 ms .. 1 s, preferring another replica), when it said Bye, or when
 * its reply holds a NaN or an infinity (checked on receipt, every float of
 * every output, before anything reaches the owner).  A deadline marks the
 * endpoint down; BUSY past the deadline is logged once per episode (the
 * teacher is alive) and, under skip, later BUSY answers give tickets up at
 * once until it replies again.  A failed request follows the failure
 * policy:
 *   wait  retry with exponential back-off (100 ms .. 5 s) until it answers;
 *   skip  give the ticket up (the rows stay missing; the method masks them)
 *         and, while the teacher is down, give new tickets up at once while
 *         Hello probes (back-off 0.1 s .. 2 s) notice when it returns;
 *   fail  stop: the pump returns CM_ERR_UNAVAILABLE with a sentence.
 * A reply this trainer cannot use (it does not decode, answers other
 * examples, has rows of the wrong size, lacks an output, or answers a
 * request id never sent) is a protocol error of that teacher: counted, and
 * answered at once by asking again (another replica when there is one);
 * the request it answered, when that cannot be told, is every request in
 * flight on that endpoint (their late answers are dropped).  After
 * TRAINER_BAD_REPLIES_IN_A_ROW of them in a row the endpoint is marked down
 * and the failure policy applies.
 * An endpoint that went down is greeted with Hello again when it comes back,
 * and must still hold the same model.  ZeroMQ itself reconnects TCP with
 * back-off (ZMQ_RECONNECT_IVL .. _MAX).  Every outcome is counted per
 * teacher (trainer_committee_stats).
 *
 * Heads: a teacher's Hello lists the features whose frozen head it lends
 * (teacher-server serve --lend-head on); replicas must agree.  The
 * interactive DiverseDistill fetches a head once, at start, with
 * trainer_committee_fetch_head, and trains through it.
 *
 * Encryption: with the trainer's CURVE keys in the config, every DEALER is a
 * CURVE client that only talks to the public key given for its teacher.  A
 * socket monitor on each DEALER turns handshakes the teacher refuses (our
 * key is not in its allowlist, it wants CURVE and we do not, or the other
 * way round) into a sentence at once, instead of a silent wait for Hello.
 *
 * Replicas found by DNS: an endpoint tcp://HOST:PORT whose HOST is a name
 * (Docker Swarm's tasks.NAME, a Kubernetes headless Service) stands for
 * every address the name resolves to, asked again every resolve_ms without
 * blocking (trainer_resolve).  Each address is a connection of its own; at
 * start at least one must answer Hello, the others are greeted as they come.
 * An address DNS no longer lists is closed and its requests in flight are
 * asked again elsewhere at once (a replica leaving is not a failure); the
 * teacher is down only while it has no live address.  A name that stops
 * resolving temporarily keeps the known addresses.
 *
 * Signals: every wait (the handshake, a head, the pump) looks at the
 * caller's flag (config.interrupted) at least every 100 ms and returns
 * CM_ERR_CANCELLED ("interrupted by a signal") once it is set, so a
 * SIGINT/SIGTERM is honoured within a second whatever the deadlines.
 *
 * Single-threaded: all calls come from the training thread.
 */
#ifndef TRAINER_COMMITTEE_H
#define TRAINER_COMMITTEE_H

#include "cm_curve.h"
#include "cm_endpoint.h" /* CM_ENDPOINT_MAX */
#include "cm_status.h"
#include "cm_tensor.h"
#include "cm_wire.h"
#include "trainer_cache.h"   /* TRAINER_OUTPUT_* */
#include "trainer_resolve.h" /* trainer_resolve_fn */

#include <signal.h>
#include <stdint.h>

enum {
    TRAINER_MAX_ENDPOINTS = 4,    /* endpoints given for one teacher (--teacher NAME=EP,EP...) */
    TRAINER_MAX_CONNECTIONS = 16, /* connections of one teacher, replicas found by DNS included */
    TRAINER_MAX_SEEN = 32,        /* replica addresses whose counters a teacher keeps */
    TRAINER_COMMITTEE_MAX = 8,
    TRAINER_BAD_REPLIES_IN_A_ROW = 3 /* malformed replies before an endpoint is marked down */
};

typedef enum { TRAINER_POLICY_WAIT, TRAINER_POLICY_SKIP, TRAINER_POLICY_FAIL } trainer_policy_t;

typedef struct {
    char name[64];
    int endpoint_count;
    const char *endpoints[TRAINER_MAX_ENDPOINTS];
    char server_key[CM_CURVE_KEY_TEXT]; /* the teacher's CURVE public key (Z85); "": plaintext */
} trainer_teacher_address_t;

/*
 * Parses "NAME=ENDPOINT[,ENDPOINT...]" (the --teacher option) into *address; endpoints point
 * into `text`, which must outlive the address.  Several --teacher options with the same NAME
 * are merged by the caller.  CM_ERR_INVALID_ARG with a sentence for a malformed value.
 */
cm_status_t trainer_committee_parse_teacher(char *text, trainer_teacher_address_t *address);

typedef struct {
    int window;       /* requests in flight per teacher, >= 1 */
    int deadline_ms;  /* per request */
    int handshake_ms; /* for the first Hello of every endpoint */
    int heartbeat_ms; /* heartbeat to endpoints idle this long */
    trainer_policy_t policy;
    cm_dtype_t encoding;        /* F32 (exact), F16 or BF16 */
    int max_examples;           /* ids per request (also capped by the teacher's limit) */
    const char *fingerprint;    /* the student's dataset fingerprint */
    int classes;                /* the student's classes */
    int train_examples;         /* size of the training split (ids are checked against it) */
    const int32_t *example_ids; /* [train_examples] the dataset id of each training row, sent
                                   on the wire instead of the row (borrowed); NULL: id = row */
    /* --transfer-split: rows transfer_base .. transfer_base + transfer_examples - 1 are rows of
     * split transfer_split (row - transfer_base), asked with that split; every teacher's Hello
     * must list it.  transfer_examples 0: none. */
    cm_split_t transfer_split;
    int transfer_base, transfer_examples;
    const int32_t *transfer_ids; /* [transfer_examples] their dataset ids; NULL: id = row */
    const cm_curve_keypair_t *curve_keys;     /* the trainer's keys (borrowed for the committee's
                                                 life); NULL: plaintext, else every teacher needs its
                                                 server_key */
    const volatile sig_atomic_t *interrupted; /* set by the caller's signal handler: every wait
                                                 ends with CM_ERR_CANCELLED (borrowed; NULL:
                                                 never) */
    int resolve_ms;             /* ask DNS again this often for the replicas behind a host name (see
                                   below); 0: never, a name is ZeroMQ's to resolve (one address) */
    trainer_resolve_fn resolve; /* NULL: the system resolver (tests give their own) */
    void *resolve_context;      /* resolve's own */
} trainer_committee_config_t;

/* What a teacher said about itself. */
typedef struct {
    char name[64];
    cm_wire_role_t role;
    char model_id[160];
    char model_sha256[65];
    char view[32];
    int classes;
    int width[TRAINER_OUTPUT_COUNT]; /* floats per example per output (0: not offered) */
    int tokens;                      /* rows of "tokens" (1 if none) */
    int max_examples;                /* the teacher's limit */
    unsigned heads; /* bit set (1u << TRAINER_OUTPUT_*) of the features it lends a head for */
} trainer_teacher_info_t;

/* Outcomes per teacher since the start. */
typedef struct {
    long requests;          /* BatchRequests sent */
    long replies;           /* BatchReplies accepted */
    long busy;              /* Error{BUSY} answers (retried) */
    long busy_timeouts;     /* requests answered BUSY for the whole deadline (then failed) */
    long timeouts;          /* requests past their deadline */
    long protocol_errors;   /* replies this trainer could not use (asked again) */
    long nonfinite_replies; /* replies holding NaN or Inf (failed requests, never cached) */
    long failed_tickets;    /* tickets given up (policy skip) */
    long examples;          /* example outputs received */
    uint64_t bytes;         /* bytes received */
    long down_events;       /* times the teacher went down */
} trainer_teacher_stats_t;

/* One replica address of a teacher and what it answered (kept after it left). */
typedef struct {
    char address[CM_ENDPOINT_MAX];
    int live;      /* connected now (it may still be down) */
    long replies;  /* BatchReplies accepted from it */
    long examples; /* example outputs received from it */
} trainer_endpoint_stats_t;

typedef struct trainer_committee trainer_committee_t;

/*
 * Connects to every endpoint, handshakes and checks the committee (see above).  On failure
 * nothing is left open and cm_last_error() names the teacher and the values that disagree;
 * CM_ERR_CANCELLED when config->interrupted was set while it waited.
 */
cm_status_t trainer_committee_new(const trainer_teacher_address_t *addresses, int count,
                                  const trainer_committee_config_t *config,
                                  trainer_committee_t **out);

/* Says Bye to every endpoint, closes the sockets, frees; NULL-safe. */
void trainer_committee_free(trainer_committee_t **committee);

int trainer_committee_count(const trainer_committee_t *committee);
const trainer_teacher_info_t *trainer_committee_info(const trainer_committee_t *committee,
                                                     int teacher);
const trainer_teacher_stats_t *trainer_committee_stats(const trainer_committee_t *committee,
                                                       int teacher);

/*
 * The replica addresses of `teacher` seen so far (every endpoint given, and every address DNS
 * listed for a host name), at most `max` into out; returns how many.
 */
int trainer_committee_endpoints(const trainer_committee_t *committee, int teacher,
                                trainer_endpoint_stats_t *out, int max);

/* A teacher's frozen dense head: logits[classes] = weight[classes][inputs] · feature + bias. */
typedef struct {
    int classes, inputs;
    float *weight; /* [classes][inputs], owned */
    float *bias;   /* [classes], owned */
} trainer_head_t;

/*
 * Fetches the head `teacher` lends for `feature` ("hidden") with a HeadRequest to its
 * endpoints (first one that answers; handshake_ms deadline).  Call it after
 * trainer_committee_new and before the first ticket (replies to tickets that arrive while it
 * waits are handled as the pump would, and so are heartbeats, Hellos and Byes).  Checks classes
 * == the committee's classes and inputs == the width of that feature in the teacher's Hello.
 * CM_ERR_NOT_FOUND with a sentence naming the teacher when it lends none ("teacher 'fm' at EP
 * does not lend its head for 'hidden'; start it with --lend-head on, or train without
 * --dd-interactive"), CM_ERR_UNAVAILABLE / timeout sentence when nobody answers, CM_ERR_CANCELLED
 * when interrupted, CM_ERR_MISMATCH when the shapes disagree.  On success *head holds the copies
 * (release with trainer_head_free); on failure it is empty.
 */
cm_status_t trainer_committee_fetch_head(trainer_committee_t *committee, int teacher,
                                         const char *feature, trainer_head_t *head);

/* Frees the arrays of *head and clears it; NULL-safe, idempotent. */
void trainer_head_free(trainer_head_t *head);

/*
 * A checked answer to one ticket, handed to its owner: for every output asked for (bit set
 * `outputs`), values[output] holds rows[0..count) x width[output] floats (converted to F32;
 * width from the teacher's Hello).  Valid only during the call.
 */
typedef struct {
    int teacher;
    int count;
    const int32_t *rows; /* the training rows asked for, in the order asked */
    unsigned outputs;
    int width[TRAINER_OUTPUT_COUNT];
    const float *values[TRAINER_OUTPUT_COUNT];
} trainer_reply_t;

/*
 * The owner of a ticket hears its outcome once: `reply` when the teacher answered, NULL when
 * the ticket was given up (policy skip, or a failure that stops training).  `tag` is the
 * owner's name for the ticket.  Called from inside trainer_committee_pump or _fetch_head; it
 * must not call the committee.
 */
typedef void (*trainer_reply_fn)(void *owner, int tag, const trainer_reply_t *reply);

/*
 * Asks `teacher` for the outputs in the bit set `outputs` (1 << TRAINER_OUTPUT_*) of the
 * training rows rows[0..count) (copied; the request carries their dataset ids, see
 * config.example_ids), or of transfer rows (all rows of one ticket are of one split).  The outcome
 * goes to done(owner, tag, ...) exactly once; tickets still open when the committee is freed are
 * dropped without a call.  CM_ERR_NOMEM when out of memory, CM_ERR_INVALID_ARG when the rows
 * mix training and transfer rows (nothing submitted).
 */
cm_status_t trainer_committee_submit(trainer_committee_t *committee, int teacher,
                                     const int32_t *rows, int count, unsigned outputs,
                                     trainer_reply_fn done, void *owner, int tag);

/*
 * Does the network work for at most timeout_ms (0: only what is ready now; at most 100 ms
 * pass between two looks at config.interrupted).  Returns CM_OK, or a failure that must stop
 * training: CM_ERR_UNAVAILABLE (policy fail, the sentence names the teacher and what went
 * wrong), CM_ERR_CANCELLED (interrupted), the teacher's own refusal of a request (e.g.
 * OUT_OF_RANGE), or a changed teacher.
 */
cm_status_t trainer_committee_pump(trainer_committee_t *committee, int timeout_ms);

#endif
