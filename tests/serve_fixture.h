/*
 * serve_fixture: a real `teacher-server serve` child process for tests, and
 * a blocking DEALER client to talk to it.
 *
 * The server runs the binary test_util_bin("teacher-server") finds, with its
 * stdout and stderr in a log file of the caller's temp directory, bound to
 * an ipc:// path there and to an ephemeral HTTP port on 127.0.0.1 that is
 * read back from its "serving ..." log line.  Every wait is bounded.  The
 * child gets SIGKILL when the thread that started it dies (Linux's parent
 * death signal), so a test process that fails an assertion and _exits
 * (Check's fork mode skips the teardown then) never leaves a server behind;
 * serve_fixture_stop() is the orderly way and always reaps the child.
 *
 * Client sockets belong to the thread that made them; the caller owns the
 * ZeroMQ context.
 */
#ifndef SERVE_FIXTURE_H
#define SERVE_FIXTURE_H

#include "cm_dataset.h"
#include "cm_status.h"
#include "cm_wire.h"
#include "cm_zwire.h"

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

enum {
    SERVE_FIXTURE_TIMEOUT_MS = 10000, /* client sends and receives, start-up, stop */
    SERVE_FIXTURE_MAX_ARGS = 24       /* extra command-line arguments of a server */
};

/* One server child process. */
typedef struct {
    pid_t pid;          /* 0 when none is running */
    char log_path[300]; /* its stdout and stderr */
    char endpoint[300]; /* the ZeroMQ endpoint it serves, as it reported it */
    int http_port;      /* its HTTP port, 0 with --http off */
} serve_fixture_t;

/*
 * Writes a randomly initialised checkpoint of `spec_text` (a cm_model spec)
 * to `path`, with the metadata teacher-server serve needs: the view and
 * name of `dataset` and its fingerprint.  CM_OK, or the status of the
 * first step that failed (cm_last_error() says why).
 */
cm_status_t serve_fixture_write_checkpoint(const char *path, const char *spec_text,
                                           const cm_dataset_t *dataset, uint64_t seed);

/*
 * Starts `teacher-server serve --model checkpoint --bind ipc://DIRECTORY/...
 * --http 127.0.0.1:0` followed by `extra_args` (NULL-terminated, may be
 * NULL) and waits up to SERVE_FIXTURE_TIMEOUT_MS for it to say it is
 * serving.  Returns 0 with *server filled in, or -1 with the reason (and
 * the server's log) in why[why_size]; then no child is left running.
 */
int serve_fixture_start(serve_fixture_t *server, const char *directory, const char *checkpoint,
                        const char *const *extra_args, char *why, size_t why_size);

/*
 * Sends `signal_number` (0: none) to the server and waits up to timeout_ms
 * for it to exit; if it does not, kills it with SIGKILL.  Always reaps it
 * and sets server->pid to 0.  Returns its exit status (0..255), 256 + the
 * signal that ended it, or -1 if it had to be killed after the timeout (or
 * none was running).
 */
int serve_fixture_stop(serve_fixture_t *server, int signal_number, int timeout_ms);

/* The server's log so far into text[size] (truncated, NUL-terminated). */
void serve_fixture_log(const serve_fixture_t *server, char *text, size_t size);

/*
 * A DEALER socket in `context` connected to `endpoint`, with send and
 * receive timeouts of SERVE_FIXTURE_TIMEOUT_MS, no linger and no message
 * size cap; NULL on failure.  The caller closes it with zmq_close.
 */
void *serve_fixture_connect(void *context, const char *endpoint);

/* Sends raw frames as one multipart message; 0, or -1 if ZeroMQ refused. */
int serve_fixture_send_frames(void *socket, const cm_wire_frame_t *frames, int frame_count);

/*
 * Receives the next message that is not a Heartbeat and decodes it (with
 * limits large enough for anything a test asks for) into *message, which
 * borrows from *received.  CM_ERR_TIMEOUT after the socket's receive
 * timeout (or after timeout_ms when it is >= 0), otherwise what
 * cm_zwire_recv / cm_zwire_decode return.  On CM_OK release both with
 * serve_fixture_release(); on failure nothing needs releasing.
 */
cm_status_t serve_fixture_receive(void *socket, int timeout_ms, cm_zwire_received_t *received,
                                  cm_wire_message_t *message);

/* Releases what serve_fixture_receive() returned. */
void serve_fixture_release(cm_zwire_received_t *received, cm_wire_message_t *message);

#endif
