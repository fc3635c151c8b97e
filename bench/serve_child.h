/*
 * serve_child: a real `teacher-server serve` child process for the benchmark
 * programs, and a DEALER client for it.
 *
 * The child serves on an ephemeral loopback TCP port (the endpoint it bound
 * is read back from its log), with one BLAS thread and no HTTP; it gets
 * SIGKILL if the benchmark dies first.  The binary is found in
 * $COMMITTEE_BIN_DIR (or build/bin).  Benchmarks link only the library, so
 * this is separate from the tests' serve_fixture.
 */
#ifndef SERVE_CHILD_H
#define SERVE_CHILD_H

#include "cm_curve.h"
#include "cm_status.h"

#include <sys/types.h>

typedef struct {
    pid_t pid; /* 0 when not running */
    char log_path[256];
    char endpoint[256]; /* as the server reported it: the port it was given */
} serve_child_t;

/*
 * Starts `teacher-server serve --model CHECKPOINT` serving max_train/max_test examples,
 * with the NULL-terminated `extra` arguments (may be NULL) appended, logging to log_path;
 * 0 once it is serving, -1 (with its log on stderr) when it did not start within timeout_ms.
 */
int serve_child_start(serve_child_t *child, const char *checkpoint, int max_train, int max_test,
                      char *const *extra, const char *log_path, int timeout_ms);

/*
 * Sends `signal_number` (0: none), waits up to timeout_ms, then kills the child.
 * Returns its exit status, 256 + the signal that ended it, or -1.
 */
int serve_child_stop(serve_child_t *child, int signal_number, int timeout_ms);

/* Copies the child's log to stderr. */
void serve_child_print_log(const serve_child_t *child);

/*
 * A DEALER on `context` connected to `endpoint` with send/receive timeouts of timeout_ms and
 * no linger; a CURVE client of `server_key` when `keys` is not NULL.  NULL on failure.
 */
void *serve_child_dealer(void *context, const char *endpoint, int timeout_ms,
                         const cm_curve_keypair_t *keys, const char *server_key);

#endif
