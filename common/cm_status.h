/*
 * cm_status: the one status type of committee.
 *
 * Every function that can fail because of something outside the program (a
 * file, a peer, the OS, a user) returns a cm_status_t.  The codes, their
 * names and their messages come from one X-macro table, so the enum, the
 * names sent on the wire and the sentences shown to people cannot drift
 * apart.  Beside the code, a thread-local detail sentence says what exactly
 * went wrong (the file, the peer, the field); cm_fail() sets both at once.
 */
#ifndef CM_STATUS_H
#define CM_STATUS_H

/* X(code, name, message) */
#define CM_STATUS_TABLE(X)                                                                         \
    X(CM_OK, "OK", "success")                                                                      \
    X(CM_ERR_NOMEM, "NOMEM", "out of memory")                                                      \
    X(CM_ERR_IO, "IO", "input/output error")                                                       \
    X(CM_ERR_NOT_FOUND, "NOT_FOUND", "not found")                                                  \
    X(CM_ERR_FORMAT, "FORMAT", "malformed data")                                                   \
    X(CM_ERR_INVALID_ARG, "INVALID_ARG", "invalid argument")                                       \
    X(CM_ERR_SHAPE, "SHAPE", "shape mismatch")                                                     \
    X(CM_ERR_VERSION, "VERSION", "unsupported version")                                            \
    X(CM_ERR_TOO_LARGE, "TOO_LARGE", "too large")                                                  \
    X(CM_ERR_OUT_OF_RANGE, "OUT_OF_RANGE", "value out of range")                                   \
    X(CM_ERR_MISMATCH, "MISMATCH", "does not match")                                               \
    X(CM_ERR_BUSY, "BUSY", "busy, try again later")                                                \
    X(CM_ERR_TIMEOUT, "TIMEOUT", "timed out")                                                      \
    X(CM_ERR_UNAVAILABLE, "UNAVAILABLE", "peer unavailable")                                       \
    X(CM_ERR_PROTOCOL, "PROTOCOL", "protocol violation")                                           \
    X(CM_ERR_INTERNAL, "INTERNAL", "internal error")                                               \
    X(CM_ERR_CANCELLED, "CANCELLED", "cancelled")                                                  \
    X(CM_ERR_UNAUTHORIZED, "UNAUTHORIZED", "not authorized")

typedef enum {
#define CM_STATUS_ENUM(code, name, message) code,
    CM_STATUS_TABLE(CM_STATUS_ENUM)
#undef CM_STATUS_ENUM
        CM_STATUS_COUNT
} cm_status_t;

/* Short machine-readable name of a code ("FORMAT"); "UNKNOWN" if out of range. */
const char *cm_status_name(cm_status_t status);

/* Generic sentence for a code ("malformed data"). */
const char *cm_status_str(cm_status_t status);

/* Parses a name back into a code; returns CM_ERR_INTERNAL for unknown names. */
cm_status_t cm_status_from_name(const char *name);

/*
 * Records a detail sentence for this thread (printf-style) and returns
 * `status`, so callers write `return cm_fail(CM_ERR_IO, "cannot open %s", p);`.
 */
cm_status_t cm_fail(cm_status_t status, const char *format, ...)
    __attribute__((format(printf, 2, 3)));

/*
 * The detail sentence of the last cm_fail() on this thread, or the generic
 * message if none was set.  Valid until the next cm_fail() on this thread.
 */
const char *cm_last_error(void);

/* Forgets the detail sentence of this thread. */
void cm_clear_error(void);

#endif
