/*
 * cm_curve: CURVE encryption and authentication for committee's ZeroMQ links.
 *
 * Keys live in files, never in source or on the command line.  A key pair
 * is two files made by `keygen --out BASENAME` (cm_curve_keygen):
 *
 *   BASENAME.pub  the public key: one line, 40 Z85 characters.  Give it to
 *                 the other side (a teacher's to its trainers, a trainer's
 *                 to the teachers' allowlists).
 *   BASENAME.key  the secret key, mode 0600:
 *                     # committee CURVE secret key: keep it private
 *                     public <40 Z85 characters>
 *                     secret <40 Z85 characters>
 *
 * In every key file, blank lines and lines starting with '#' are ignored.
 * ('#' is a Z85 character, but the last one of the alphabet, which cannot
 * start a group of five that encodes 32 bits, so no key starts with it.)
 *
 * An allowlist is the set of trainer public keys a teacher accepts: either
 * a file with one key per line ("KEY" or "KEY NAME"; NAME shows in the
 * logs), or a directory whose NAME.pub files each hold one key.
 *
 * The ZAP handler (ZeroMQ's authentication protocol, RFC 27) runs on its own
 * thread with its own REP socket bound to inproc://zeromq.zap.01 in the
 * server's context, so the server's CURVE sockets ask it about every new
 * connection.  It answers 200 for CURVE clients whose public key is in the
 * allowlist and 400 for everyone else, and logs the refusals: a refused peer
 * retries about ten times a second, so a refusal that repeats the last one
 * logged is summed up in one line "refused N more connections like the last
 * one (...)" ten seconds later (or when another refusal comes, or the
 * handler stops) instead of a line each; every refusal is reported to the
 * owner exactly once (on_refused), so the owner's count equals the refused
 * lines plus the N of the summary lines.  It
 * also watches the server socket's handshakes that fail before ZAP is asked
 * (a peer that encrypts for another server key, and a peer without CURVE
 * when the server notices the mismatch before the peer hangs up) and logs
 * and reports those as refusals too.
 * Because libzmq lets connections through when no handler is bound, the
 * handler must be started before the server socket binds and stopped only
 * after it is closed.
 */
#ifndef CM_CURVE_H
#define CM_CURVE_H

#include "cm_status.h"

enum {
    CM_CURVE_KEY_CHARS = 40, /* a Z85-encoded 32-byte key */
    CM_CURVE_KEY_TEXT = 41   /* ... with its NUL */
};

/* One side's key pair, as Z85 text (NUL-terminated). */
typedef struct {
    char public_key[CM_CURVE_KEY_TEXT];
    char secret_key[CM_CURVE_KEY_TEXT];
} cm_curve_keypair_t;

/* CM_OK when this libzmq supports CURVE, else CM_ERR_UNAVAILABLE with a sentence. */
cm_status_t cm_curve_available(void);

/*
 * Makes a fresh key pair and writes BASENAME.key (mode 0600, atomically)
 * and BASENAME.pub.  Refuses to overwrite either file (a lost secret key
 * cannot be recovered, and the other side would stop trusting us), with
 * CM_ERR_INVALID_ARG naming it.  On success `keys` (may be NULL) gets the
 * pair.  CM_ERR_IO for files that cannot be written.
 */
cm_status_t cm_curve_keygen(const char *basename, cm_curve_keypair_t *keys);

/*
 * Reads a secret key file (see above) into *keys and checks that its public
 * key belongs to its secret key.  Warns when other users may read the file.
 * CM_ERR_NOT_FOUND / CM_ERR_IO when it cannot be read, CM_ERR_FORMAT for
 * anything else wrong with it; every sentence names the file.
 */
cm_status_t cm_curve_load_keypair(const char *path, cm_curve_keypair_t *keys);

/* Reads a public key file (exactly one key) into key[CM_CURVE_KEY_TEXT]; errors as above. */
cm_status_t cm_curve_load_public(const char *path, char key[CM_CURVE_KEY_TEXT]);

/*
 * Makes `socket` a CURVE server with `keys` (borrowed for the call) whose
 * connections are authenticated by the ZAP handler under `zap_domain`.
 * Call before bind.  CM_ERR_UNAVAILABLE without CURVE support.
 */
cm_status_t cm_curve_make_server(void *socket, const cm_curve_keypair_t *keys,
                                 const char *zap_domain);

/*
 * Makes `socket` a CURVE client with its own `keys` that only talks to the
 * server whose public key is `server_key` (Z85).  Call before connect.
 */
cm_status_t cm_curve_make_client(void *socket, const cm_curve_keypair_t *keys,
                                 const char *server_key);

typedef struct cm_curve_allowlist cm_curve_allowlist_t;

/*
 * Loads the allowlist at `path`, a key file or a directory of NAME.pub files
 * (see above), into *out.  An allowlist without keys is refused (nobody could
 * connect).  Errors name the file and line.
 */
cm_status_t cm_curve_allowlist_load(const char *path, cm_curve_allowlist_t **out);

/* Frees an allowlist and sets *allowlist to NULL; NULL-safe. */
void cm_curve_allowlist_free(cm_curve_allowlist_t **allowlist);

/* Number of keys in the allowlist. */
int cm_curve_allowlist_count(const cm_curve_allowlist_t *allowlist);

/*
 * The name of `key` (Z85) in the allowlist, or NULL when it is not there.
 * The string belongs to the allowlist and lives as long as it.
 */
const char *cm_curve_allowlist_find(const cm_curve_allowlist_t *allowlist, const char *key);

/*
 * Called on the ZAP handler's thread for every refused connection, with the
 * client's public key (Z85; "" when the handshake failed before the key was
 * known) and its address (the server's endpoint when libzmq does not tell
 * the peer's; both valid for the call only).  It must be thread-safe (cm_metrics
 * counters are).
 */
typedef void cm_curve_refused_fn(const char *key, const char *address, void *user);

typedef struct cm_curve_zap cm_curve_zap_t;

/*
 * Binds a ZAP handler in `context` and starts its thread; returns once it
 * answers.  `server_socket` (the CURVE server it guards, borrowed) gets a
 * socket monitor; call this from the thread that owns that socket, before
 * it binds.  Takes ownership of *allowlist (sets it to NULL, frees it on
 * failure too).  `on_refused` may be NULL.  CM_ERR_IO when the ZAP endpoint
 * is taken (another handler in this context) or a thread cannot start.
 * Create and free the handler from the same thread.
 */
cm_status_t cm_curve_zap_new(void *context, void *server_socket, cm_curve_allowlist_t **allowlist,
                             cm_curve_refused_fn *on_refused, void *user, cm_curve_zap_t **out);

/*
 * Stops the handler thread, closes its sockets (so zmq_ctx_term can finish)
 * and frees it with its allowlist; sets *zap to NULL; NULL-safe.
 */
void cm_curve_zap_free(cm_curve_zap_t **zap);

/*
 * Runs the `keygen` command of a binary (`program` names it in messages) on
 * argv[first..argc): --out BASENAME; prints the files and the public key.
 * Returns the process exit code (0, 1 failure, 2 usage error).
 */
int cm_curve_keygen_command(const char *program, int argc, char **argv, int first);

#endif
