/*
 * cm_curve: key files, allowlists and the ZAP handler.  See cm_curve.h.
 *
 * Key files are small text files read whole and parsed line by line.  The
 * ZAP handler's thread owns three sockets: the ZAP REP socket, the reading
 * end of the server socket's monitor (handshakes that never reach ZAP:
 * peers without CURVE or with the wrong server key), and one end of an
 * inproc PAIR whose other end stays with the thread that created the
 * handler: a message on that pair is the request to stop, so the handler
 * never needs a timeout or a shared flag, and each socket is used by one
 * thread only.  The allowlist is read-only once the handler runs.
 */
#include "cm_curve.h"

#include "cm_cli.h"
#include "cm_file.h"
#include "cm_log.h"

#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#define ZAP_ENDPOINT "inproc://zeromq.zap.01"

enum {
    ZAP_MAX_FRAMES = 8,          /* RFC 27 requests have 6 frames plus the credentials */
    KEY_BYTES = 32,              /* a binary CURVE key */
    ADDRESS_TEXT = 64,           /* an IPv6 address fits */
    MECHANISM_TEXT = 32,         /* "CURVE", "NULL", "PLAIN" */
    START_ERROR_TEXT = 256,      /* the handler thread's start-up failure */
    REFUSAL_TEXT = 320,          /* one refusal's sentence */
    REFUSAL_SUMMARY_SECONDS = 10 /* repeats of a refusal are summed up this long after it */
};

static const char z85_alphabet[] = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                   ".-:+=^!/*?&<>()[]{}@%$#";

typedef struct {
    char key[CM_CURVE_KEY_TEXT];
    char *name; /* "" when the allowlist gave none */
} allowed_key_t;

struct cm_curve_allowlist {
    int count, capacity;
    allowed_key_t *keys;
};

struct cm_curve_zap {
    void *context;
    char monitor_endpoint[64]; /* the server socket's monitor */
    void *stop_socket;         /* PAIR, creator's thread: one message asks the handler to stop */
    char stop_endpoint[64];
    pthread_t thread;
    int thread_started;
    cm_curve_allowlist_t *allowlist;
    cm_curve_refused_fn *on_refused;
    void *user;
    /* Refusal log lines, handler thread only (see log_refusal). */
    char last_refusal[REFUSAL_TEXT]; /* the sentence of the last refusal logged */
    int repeats;                     /* refusals like it since, not logged yet */
    double summary_due;              /* monotonic seconds: when the repeats get their line */
    /* Start-up report from the handler thread, under lock. */
    pthread_mutex_t lock;
    pthread_cond_t reported;
    int report_ready;
    cm_status_t start_status;
    char start_error[START_ERROR_TEXT];
};

/* ---------------------------------------------------------------- key text */

/* 1 when text[0..length) is a 40-character Z85 string that decodes to a 32-byte key. */
static int is_key(const char *text, size_t length) {
    if (length != CM_CURVE_KEY_CHARS) return 0;
    for (size_t index = 0; index < length; index++)
        if (!text[index] || !strchr(z85_alphabet, text[index])) return 0;
    char copy[CM_CURVE_KEY_TEXT];
    uint8_t binary[KEY_BYTES];
    memcpy(copy, text, length);
    copy[length] = '\0';
    return zmq_z85_decode(binary, copy) != NULL; /* also catches 5-character groups >= 2^32 */
}

/* Reads a whole file as NUL-terminated text (malloc'd into *text). */
static cm_status_t read_text(const char *path, char **text) {
    void *data = NULL;
    size_t size = 0;
    cm_status_t status = cm_file_read_all(path, &data, &size);
    if (status != CM_OK) return status; /* the sentence names the file */
    char *grown = realloc(data, size + 1);
    if (!grown) {
        free(data);
        return cm_fail(CM_ERR_NOMEM, "out of memory reading %s", path);
    }
    grown[size] = '\0';
    if (strlen(grown) != size) {
        free(grown);
        return cm_fail(CM_ERR_FORMAT, "%s is not a key file (it holds binary data)", path);
    }
    *text = grown;
    return CM_OK;
}

static int is_space(char c) { return c == ' ' || c == '\t' || c == '\r'; }

/*
 * Splits the next line off *cursor (modified in place), trims it, and
 * returns it; NULL at the end of the text.
 */
static char *next_line(char **cursor) {
    if (!**cursor) return NULL;
    char *line = *cursor, *end = strchr(line, '\n');
    if (end) {
        *end = '\0';
        *cursor = end + 1;
    } else {
        *cursor = line + strlen(line);
    }
    while (is_space(*line)) line++;
    size_t length = strlen(line);
    while (length > 0 && is_space(line[length - 1])) line[--length] = '\0';
    return line;
}

/* Length of the first whitespace-delimited token of `line`. */
static size_t token_length(const char *line) {
    size_t length = 0;
    while (line[length] && !is_space(line[length])) length++;
    return length;
}

/* 1 for the "public KEY" and "secret KEY" lines of a secret key file. */
static int is_keypair_line(const char *line) {
    return token_length(line) == 6 &&
           (strncmp(line, "public", 6) == 0 || strncmp(line, "secret", 6) == 0);
}

/* The rest of `line` after its first token, trimmed. */
static const char *after_token(const char *line) {
    const char *rest = line + token_length(line);
    while (is_space(*rest)) rest++;
    return rest;
}

/* ---------------------------------------------------------------- key files */

cm_status_t cm_curve_available(void) {
    if (!zmq_has("curve"))
        return cm_fail(CM_ERR_UNAVAILABLE,
                       "this libzmq was built without CURVE support (it needs libsodium)");
    return CM_OK;
}

cm_status_t cm_curve_load_keypair(const char *path, cm_curve_keypair_t *keys) {
    memset(keys, 0, sizeof *keys);
    char *text = NULL;
    cm_status_t status = read_text(path, &text);
    if (status != CM_OK) return status;
    char *cursor = text, *line;
    int number = 0, bare_keys = 0;
    while (status == CM_OK && (line = next_line(&cursor))) {
        number++;
        size_t first = token_length(line);
        int is_public = first == 6 && strncmp(line, "public", 6) == 0;
        int is_secret = first == 6 && strncmp(line, "secret", 6) == 0;
        if (is_public || is_secret) {
            const char *value = after_token(line);
            if (!is_key(value, strlen(value)))
                status = cm_fail(CM_ERR_FORMAT,
                                 "line %d of %s: the %s key is not 40 Z85 characters (got %zu "
                                 "characters)",
                                 number, path, is_public ? "public" : "secret", strlen(value));
            else
                memcpy(is_public ? keys->public_key : keys->secret_key, value, CM_CURVE_KEY_TEXT);
        } else if (is_key(line, strlen(line))) {
            bare_keys++;
        } else if (line[0] && line[0] != '#') {
            status = cm_fail(CM_ERR_FORMAT,
                             "line %d of %s is not 'public KEY', 'secret KEY' or a '#' comment",
                             number, path);
        }
    }
    free(text);
    if (status != CM_OK) return status;
    if (!keys->secret_key[0])
        return cm_fail(CM_ERR_FORMAT,
                       bare_keys ? "%s holds a public key only; give the secret key file "
                                   "(BASENAME.key from keygen)"
                                 : "%s has no 'secret KEY' line; is it a key file from keygen?",
                       path);
    char derived[CM_CURVE_KEY_TEXT];
    if (zmq_curve_public(derived, keys->secret_key) != 0)
        return cm_fail(CM_ERR_UNAVAILABLE, "cannot derive the public key of %s: %s", path,
                       zmq_strerror(zmq_errno()));
    if (!keys->public_key[0]) memcpy(keys->public_key, derived, CM_CURVE_KEY_TEXT);
    if (strcmp(derived, keys->public_key) != 0)
        return cm_fail(CM_ERR_FORMAT, "the public and secret keys in %s do not belong together",
                       path);
    struct stat info;
    if (stat(path, &info) == 0 && (info.st_mode & 077))
        cm_log_warn("%s can be read by other users (mode %04o); chmod 600 it", path,
                    (unsigned)(info.st_mode & 07777));
    return CM_OK;
}

cm_status_t cm_curve_load_public(const char *path, char key[CM_CURVE_KEY_TEXT]) {
    key[0] = '\0';
    char *text = NULL;
    cm_status_t status = read_text(path, &text);
    if (status != CM_OK) return status;
    char *cursor = text, *line;
    int number = 0, found = 0;
    while (status == CM_OK && (line = next_line(&cursor))) {
        number++;
        size_t length = strlen(line);
        if (is_key(line, length)) {
            if (found++ == 0) memcpy(key, line, CM_CURVE_KEY_TEXT);
        } else if (is_keypair_line(line)) {
            status = cm_fail(CM_ERR_FORMAT,
                             "%s is a secret key file; give the public key (BASENAME.pub) instead "
                             "and keep the secret one private",
                             path);
        } else if (line[0] && line[0] != '#') {
            status = cm_fail(CM_ERR_FORMAT,
                             "line %d of %s is not a CURVE public key: expected 40 Z85 "
                             "characters, got %zu",
                             number, path, length);
        }
    }
    free(text);
    if (status == CM_OK && found != 1)
        status = cm_fail(CM_ERR_FORMAT, "%s holds %d public keys; a public key file holds one",
                         path, found);
    if (status != CM_OK) key[0] = '\0';
    return status;
}

/* 1 when `path` exists (as anything). */
static int exists(const char *path) { return access(path, F_OK) == 0 || errno != ENOENT; }

cm_status_t cm_curve_keygen(const char *basename, cm_curve_keypair_t *keys) {
    cm_status_t status = cm_curve_available();
    if (status != CM_OK) return status;
    char *secret_path = NULL, *public_path = NULL;
    if (asprintf(&secret_path, "%s.key", basename) < 0) secret_path = NULL;
    if (asprintf(&public_path, "%s.pub", basename) < 0) public_path = NULL;
    cm_curve_keypair_t made;
    if (!secret_path || !public_path) {
        status = cm_fail(CM_ERR_NOMEM, "out of memory");
    } else if (exists(secret_path) || exists(public_path)) {
        status = cm_fail(CM_ERR_INVALID_ARG,
                         "%s already exists; keygen never overwrites keys (remove it or choose "
                         "another --out)",
                         exists(secret_path) ? secret_path : public_path);
    } else if (zmq_curve_keypair(made.public_key, made.secret_key) != 0) {
        status = cm_fail(CM_ERR_INTERNAL, "cannot make a key pair: %s", zmq_strerror(zmq_errno()));
    } else {
        char secret_text[160], public_text[CM_CURVE_KEY_TEXT + 1];
        int secret_length =
            snprintf(secret_text, sizeof secret_text,
                     "# committee CURVE secret key: keep it private\npublic %s\nsecret %s\n",
                     made.public_key, made.secret_key);
        int public_length = snprintf(public_text, sizeof public_text, "%s\n", made.public_key);
        cm_file_chunk_t secret_chunk = {secret_text, (size_t)secret_length};
        cm_file_chunk_t public_chunk = {public_text, (size_t)public_length};
        status = cm_file_write_atomic_private(secret_path, &secret_chunk, 1);
        if (status == CM_OK) status = cm_file_write_atomic(public_path, &public_chunk, 1);
        if (status != CM_OK) unlink(secret_path); /* half a pair is worse than none */
        memset(secret_text, 0, sizeof secret_text);
    }
    if (status == CM_OK && keys) *keys = made;
    memset(&made, 0, sizeof made);
    free(secret_path);
    free(public_path);
    return status;
}

/* ---------------------------------------------------------------- sockets */

static cm_status_t set_option(void *socket, int option, const void *value, size_t size,
                              const char *what) {
    if (zmq_setsockopt(socket, option, value, size) != 0)
        return cm_fail(CM_ERR_INVALID_ARG, "cannot set the CURVE %s of a socket: %s", what,
                       zmq_strerror(zmq_errno()));
    return CM_OK;
}

cm_status_t cm_curve_make_server(void *socket, const cm_curve_keypair_t *keys,
                                 const char *zap_domain) {
    cm_status_t status = cm_curve_available();
    int on = 1;
    if (status == CM_OK) status = set_option(socket, ZMQ_CURVE_SERVER, &on, sizeof on, "role");
    if (status == CM_OK)
        status = set_option(socket, ZMQ_CURVE_SECRETKEY, keys->secret_key, CM_CURVE_KEY_CHARS,
                            "secret key");
    if (status == CM_OK)
        status = set_option(socket, ZMQ_ZAP_DOMAIN, zap_domain, strlen(zap_domain), "ZAP domain");
    return status;
}

cm_status_t cm_curve_make_client(void *socket, const cm_curve_keypair_t *keys,
                                 const char *server_key) {
    cm_status_t status = cm_curve_available();
    if (status == CM_OK)
        status =
            set_option(socket, ZMQ_CURVE_SERVERKEY, server_key, CM_CURVE_KEY_CHARS, "server key");
    if (status == CM_OK)
        status = set_option(socket, ZMQ_CURVE_PUBLICKEY, keys->public_key, CM_CURVE_KEY_CHARS,
                            "public key");
    if (status == CM_OK)
        status = set_option(socket, ZMQ_CURVE_SECRETKEY, keys->secret_key, CM_CURVE_KEY_CHARS,
                            "secret key");
    return status;
}

/* ---------------------------------------------------------------- allowlists */

static cm_status_t allowlist_add(cm_curve_allowlist_t *allowlist, const char *key,
                                 const char *name) {
    if (allowlist->count == allowlist->capacity) {
        int capacity = allowlist->capacity ? 2 * allowlist->capacity : 16;
        allowed_key_t *grown = realloc(allowlist->keys, sizeof *grown * (size_t)capacity);
        if (!grown) return cm_fail(CM_ERR_NOMEM, "out of memory for the allowlist");
        allowlist->keys = grown;
        allowlist->capacity = capacity;
    }
    allowed_key_t *entry = &allowlist->keys[allowlist->count];
    entry->name = strdup(name);
    if (!entry->name) return cm_fail(CM_ERR_NOMEM, "out of memory for the allowlist");
    memcpy(entry->key, key, CM_CURVE_KEY_CHARS);
    entry->key[CM_CURVE_KEY_CHARS] = '\0';
    allowlist->count++;
    return CM_OK;
}

/* Lines "KEY [NAME]"; lines starting with '#' are comments. */
static cm_status_t load_key_list(cm_curve_allowlist_t *allowlist, const char *path) {
    char *text = NULL;
    cm_status_t status = read_text(path, &text);
    if (status != CM_OK) return status;
    char *cursor = text, *line;
    int number = 0;
    while (status == CM_OK && (line = next_line(&cursor))) {
        number++;
        size_t first = token_length(line);
        if (is_key(line, first))
            status = allowlist_add(allowlist, line, after_token(line));
        else if (is_keypair_line(line))
            status = cm_fail(CM_ERR_FORMAT,
                             "%s is a secret key file; an allowlist holds trainer public keys (a "
                             "file of them or a directory of NAME.pub)",
                             path);
        else if (line[0] && line[0] != '#')
            status = cm_fail(CM_ERR_FORMAT,
                             "line %d of %s does not start with a CURVE public key (40 Z85 "
                             "characters; got %zu)",
                             number, path, first);
    }
    free(text);
    return status;
}

static int is_public_key_file(const struct dirent *entry) {
    size_t length = strlen(entry->d_name);
    return entry->d_name[0] != '.' && length > 4 && strcmp(entry->d_name + length - 4, ".pub") == 0;
}

/* Every NAME.pub in `path`, in name order. */
static cm_status_t load_key_directory(cm_curve_allowlist_t *allowlist, const char *path) {
    struct dirent **entries = NULL;
    int count = scandir(path, &entries, is_public_key_file, alphasort);
    if (count < 0)
        return cm_fail(CM_ERR_IO, "cannot list the key directory %s: %s", path, strerror(errno));
    cm_status_t status = CM_OK;
    for (int index = 0; index < count; index++) {
        char *file_path = NULL;
        if (status == CM_OK && asprintf(&file_path, "%s/%s", path, entries[index]->d_name) < 0)
            status = cm_fail(CM_ERR_NOMEM, "out of memory");
        char key[CM_CURVE_KEY_TEXT];
        if (status == CM_OK) status = cm_curve_load_public(file_path, key);
        if (status == CM_OK) {
            entries[index]->d_name[strlen(entries[index]->d_name) - 4] = '\0';
            status = allowlist_add(allowlist, key, entries[index]->d_name);
        }
        free(file_path);
        free(entries[index]);
    }
    free(entries);
    return status;
}

cm_status_t cm_curve_allowlist_load(const char *path, cm_curve_allowlist_t **out) {
    *out = NULL;
    cm_curve_allowlist_t *allowlist = calloc(1, sizeof *allowlist);
    if (!allowlist) return cm_fail(CM_ERR_NOMEM, "out of memory for the allowlist");
    struct stat info;
    cm_status_t status;
    if (stat(path, &info) != 0)
        status = cm_fail(errno == ENOENT ? CM_ERR_NOT_FOUND : CM_ERR_IO,
                         "cannot read the allowlist %s: %s", path, strerror(errno));
    else if (S_ISDIR(info.st_mode))
        status = load_key_directory(allowlist, path);
    else
        status = load_key_list(allowlist, path);
    if (status == CM_OK && allowlist->count == 0)
        status = cm_fail(CM_ERR_FORMAT,
                         S_ISDIR(info.st_mode)
                             ? "the allowlist %s holds no NAME.pub files; no trainer could connect"
                             : "the allowlist %s holds no keys; no trainer could connect",
                         path);
    if (status != CM_OK) {
        cm_curve_allowlist_free(&allowlist);
        return status;
    }
    *out = allowlist;
    return CM_OK;
}

void cm_curve_allowlist_free(cm_curve_allowlist_t **allowlist_pointer) {
    cm_curve_allowlist_t *allowlist = *allowlist_pointer;
    if (!allowlist) return;
    for (int index = 0; index < allowlist->count; index++) free(allowlist->keys[index].name);
    free(allowlist->keys);
    free(allowlist);
    *allowlist_pointer = NULL;
}

int cm_curve_allowlist_count(const cm_curve_allowlist_t *allowlist) { return allowlist->count; }

const char *cm_curve_allowlist_find(const cm_curve_allowlist_t *allowlist, const char *key) {
    for (int index = 0; index < allowlist->count; index++)
        if (strcmp(allowlist->keys[index].key, key) == 0) return allowlist->keys[index].name;
    return NULL;
}

/* ---------------------------------------------------------------- the ZAP handler */

/* Copies a frame into a NUL-terminated string of at most size-1 bytes. */
static void frame_text(zmq_msg_t *frame, char *text, size_t size) {
    size_t length = zmq_msg_size(frame) < size - 1 ? zmq_msg_size(frame) : size - 1;
    memcpy(text, zmq_msg_data(frame), length);
    text[length] = '\0';
}

static void send_reply(void *socket, zmq_msg_t *request_id, const char *status_code,
                       const char *status_text, const char *user_id) {
    const char *version = "1.0";
    zmq_send(socket, version, strlen(version), ZMQ_SNDMORE);
    if (request_id)
        zmq_send(socket, zmq_msg_data(request_id), zmq_msg_size(request_id), ZMQ_SNDMORE);
    else
        zmq_send(socket, "", 0, ZMQ_SNDMORE);
    zmq_send(socket, status_code, strlen(status_code), ZMQ_SNDMORE);
    zmq_send(socket, status_text, strlen(status_text), ZMQ_SNDMORE);
    zmq_send(socket, user_id, strlen(user_id), ZMQ_SNDMORE);
    zmq_send(socket, "", 0, 0); /* no metadata */
}

static double monotonic_seconds(void) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)now.tv_sec + 1e-9 * (double)now.tv_nsec;
}

/* Logs the line that sums up the repeats of the last refusal, if there are any. */
static void flush_refusals(cm_curve_zap_t *zap) {
    if (zap->repeats == 0) return;
    cm_log_warn("refused %d more connection%s like the last one (%s)", zap->repeats,
                zap->repeats == 1 ? "" : "s", zap->last_refusal);
    zap->repeats = 0;
}

/*
 * One refusal: one count (on_refused) and its share of exactly one line.  A peer that is
 * refused retries about ten times a second (ZeroMQ reconnects), so a refusal that repeats the
 * last one logged is not logged again but counted into a summary line, "refused N more
 * connections like the last one (...)", written REFUSAL_SUMMARY_SECONDS after it (or when
 * another refusal comes, or the handler stops).  The refused lines plus the N of every summary
 * line add up to committee_teacher_errors_total{code="UNAUTHORIZED"} exactly.
 */
static void log_refusal(cm_curve_zap_t *zap, const char *key, const char *address,
                        const char *format, ...) __attribute__((format(printf, 4, 5)));
static void log_refusal(cm_curve_zap_t *zap, const char *key, const char *address,
                        const char *format, ...) {
    char sentence[REFUSAL_TEXT];
    va_list arguments;
    va_start(arguments, format);
    vsnprintf(sentence, sizeof sentence, format, arguments);
    va_end(arguments);
    if (zap->last_refusal[0] && strcmp(sentence, zap->last_refusal) == 0) {
        if (zap->repeats++ == 0) zap->summary_due = monotonic_seconds() + REFUSAL_SUMMARY_SECONDS;
    } else {
        flush_refusals(zap);
        cm_log_warn("%s", sentence);
        snprintf(zap->last_refusal, sizeof zap->last_refusal, "%s", sentence);
    }
    if (zap->on_refused) zap->on_refused(key, address, zap->user);
}

/* Receives one ZAP request (RFC 27) and answers it. */
static void answer_request(cm_curve_zap_t *zap, void *socket) {
    zmq_msg_t frames[ZAP_MAX_FRAMES];
    int count = 0, more = 1;
    while (more) {
        zmq_msg_t frame;
        zmq_msg_init(&frame);
        if (zmq_msg_recv(&frame, socket, 0) < 0) {
            zmq_msg_close(&frame);
            break;
        }
        more = zmq_msg_more(&frame);
        if (count < ZAP_MAX_FRAMES)
            frames[count++] = frame; /* moves the message; closed below */
        else
            zmq_msg_close(&frame);
    }
    /* version, request id, domain, address, routing id, mechanism, credentials... */
    char address[ADDRESS_TEXT] = "an unknown address", mechanism[MECHANISM_TEXT] = "";
    if (count >= 4 && zmq_msg_size(&frames[3]) > 0) frame_text(&frames[3], address, sizeof address);
    if (count >= 6) frame_text(&frames[5], mechanism, sizeof mechanism);
    int well_formed = count >= 6 && zmq_msg_size(&frames[0]) == 3 &&
                      memcmp(zmq_msg_data(&frames[0]), "1.0", 3) == 0;
    if (!well_formed) {
        cm_log_warn("ZAP: dropping a malformed authentication request (%d frames)", count);
        send_reply(socket, count >= 2 ? &frames[1] : NULL, "500", "malformed ZAP request", "");
    } else if (strcmp(mechanism, "CURVE") != 0 || count < 7 ||
               zmq_msg_size(&frames[6]) != KEY_BYTES) {
        send_reply(socket, &frames[1], "400", "CURVE required", "");
        log_refusal(zap, "", address,
                    "refused a trainer from %s: it did not use CURVE (mechanism %s)", address,
                    mechanism);
    } else {
        char key[CM_CURVE_KEY_TEXT];
        zmq_z85_encode(key, zmq_msg_data(&frames[6]), KEY_BYTES);
        const char *name = cm_curve_allowlist_find(zap->allowlist, key);
        if (name) {
            cm_log_info("trainer %s%s%s(key %.8s...) authenticated from %s", name[0] ? "'" : "",
                        name, name[0] ? "' " : "", key, address);
            send_reply(socket, &frames[1], "200", "OK", name[0] ? name : key);
        } else {
            send_reply(socket, &frames[1], "400", "unknown public key", "");
            log_refusal(zap, key, address, "refused a trainer with unknown public key %s from %s",
                        key, address);
        }
    }
    for (int index = 0; index < count; index++) zmq_msg_close(&frames[index]);
}

/* Logs one handshake failure the server socket's monitor reported. */
static void report_handshake_failure(cm_curve_zap_t *zap, void *monitor) {
    zmq_msg_t frame;
    zmq_msg_init(&frame);
    if (zmq_msg_recv(&frame, monitor, 0) < 0) {
        zmq_msg_close(&frame);
        return;
    }
    uint16_t event = 0;
    uint32_t value = 0;
    if (zmq_msg_size(&frame) == 6) { /* event number, then value, native byte order */
        memcpy(&event, zmq_msg_data(&frame), sizeof event);
        memcpy(&value, (const char *)zmq_msg_data(&frame) + 2, sizeof value);
    }
    char endpoint[128] = "";
    if (zmq_msg_more(&frame) && zmq_msg_recv(&frame, monitor, 0) >= 0)
        frame_text(&frame, endpoint, sizeof endpoint);
    while (zmq_msg_more(&frame) && zmq_msg_recv(&frame, monitor, 0) >= 0) {
    }
    zmq_msg_close(&frame);
    if (event != ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL) return;
    if (value == ZMQ_PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH)
        log_refusal(zap, "", endpoint,
                    "refused a connection on %s that does not use CURVE (a trainer without "
                    "--curve-secret-key?)",
                    endpoint);
    else if (value == ZMQ_PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC)
        log_refusal(zap, "", endpoint,
                    "refused a connection on %s whose CURVE handshake did not decrypt (a trainer "
                    "with the wrong --teacher-key for this teacher?)",
                    endpoint);
    else if (value < ZMQ_PROTOCOL_ERROR_ZAP_UNSPECIFIED) /* those are between libzmq and us */
        log_refusal(zap, "", endpoint,
                    "refused a connection on %s: protocol error 0x%x in the "
                    "handshake",
                    endpoint, value);
}

static void report_start(cm_curve_zap_t *zap, cm_status_t status) {
    pthread_mutex_lock(&zap->lock);
    zap->start_status = status;
    if (status != CM_OK) snprintf(zap->start_error, sizeof zap->start_error, "%s", cm_last_error());
    zap->report_ready = 1;
    pthread_cond_signal(&zap->reported);
    pthread_mutex_unlock(&zap->lock);
}

static void *zap_thread(void *argument) {
    cm_curve_zap_t *zap = argument;
    int linger_ms = 0;
    void *handler = zmq_socket(zap->context, ZMQ_REP);
    void *stop = zmq_socket(zap->context, ZMQ_PAIR);
    void *monitor = zmq_socket(zap->context, ZMQ_PAIR);
    if (handler) zmq_setsockopt(handler, ZMQ_LINGER, &linger_ms, sizeof linger_ms);
    if (stop) zmq_setsockopt(stop, ZMQ_LINGER, &linger_ms, sizeof linger_ms);
    if (monitor) zmq_setsockopt(monitor, ZMQ_LINGER, &linger_ms, sizeof linger_ms);
    cm_status_t status = CM_OK;
    if (!handler || !stop || !monitor)
        status = cm_fail(CM_ERR_IO, "cannot create the ZAP handler's sockets: %s",
                         zmq_strerror(zmq_errno()));
    else if (zmq_bind(handler, ZAP_ENDPOINT) != 0)
        status = cm_fail(CM_ERR_IO, "cannot bind the ZAP handler to %s: %s", ZAP_ENDPOINT,
                         zmq_strerror(zmq_errno()));
    else if (zmq_connect(stop, zap->stop_endpoint) != 0)
        status = cm_fail(CM_ERR_IO, "cannot connect the ZAP handler's stop socket: %s",
                         zmq_strerror(zmq_errno()));
    else if (zmq_connect(monitor, zap->monitor_endpoint) != 0)
        status = cm_fail(CM_ERR_IO, "cannot read the server socket's monitor: %s",
                         zmq_strerror(zmq_errno()));
    report_start(zap, status);
    while (status == CM_OK) {
        zmq_pollitem_t items[3] = {
            {handler, 0, ZMQ_POLLIN, 0}, {stop, 0, ZMQ_POLLIN, 0}, {monitor, 0, ZMQ_POLLIN, 0}};
        long wait_ms = -1; /* a summary line that is due is written even when nothing happens */
        if (zap->repeats > 0) {
            double left = zap->summary_due - monotonic_seconds();
            wait_ms = left > 0 ? (long)(left * 1000.0) + 1 : 0;
        }
        if (zmq_poll(items, 3, wait_ms) < 0) {
            if (zmq_errno() == EINTR) continue;
            cm_log_error("the ZAP handler stopped: %s", zmq_strerror(zmq_errno()));
            break;
        }
        if (items[1].revents & ZMQ_POLLIN) break;
        if (items[0].revents & ZMQ_POLLIN) answer_request(zap, handler);
        if (items[2].revents & ZMQ_POLLIN) report_handshake_failure(zap, monitor);
        if (zap->repeats > 0 && monotonic_seconds() >= zap->summary_due) flush_refusals(zap);
    }
    flush_refusals(zap); /* every refusal has its line before the handler stops */
    if (handler) zmq_close(handler);
    if (stop) zmq_close(stop);
    if (monitor) zmq_close(monitor);
    return NULL;
}

cm_status_t cm_curve_zap_new(void *context, void *server_socket, cm_curve_allowlist_t **allowlist,
                             cm_curve_refused_fn *on_refused, void *user, cm_curve_zap_t **out) {
    *out = NULL;
    cm_curve_zap_t *zap = calloc(1, sizeof *zap);
    if (!zap) {
        cm_curve_allowlist_free(allowlist);
        return cm_fail(CM_ERR_NOMEM, "out of memory for the ZAP handler");
    }
    zap->context = context;
    zap->allowlist = *allowlist;
    *allowlist = NULL;
    zap->on_refused = on_refused;
    zap->user = user;
    pthread_mutex_init(&zap->lock, NULL);
    pthread_cond_init(&zap->reported, NULL);
    snprintf(zap->stop_endpoint, sizeof zap->stop_endpoint, "inproc://cm-curve-zap-stop-%p",
             (void *)zap);
    snprintf(zap->monitor_endpoint, sizeof zap->monitor_endpoint,
             "inproc://cm-curve-zap-monitor-%p", (void *)zap);
    int linger_ms = 0;
    cm_status_t status = CM_OK;
    if (zmq_socket_monitor(server_socket, zap->monitor_endpoint,
                           ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL) != 0)
        status =
            cm_fail(CM_ERR_IO, "cannot monitor the server socket: %s", zmq_strerror(zmq_errno()));
    zap->stop_socket = zmq_socket(context, ZMQ_PAIR);
    if (zap->stop_socket)
        zmq_setsockopt(zap->stop_socket, ZMQ_LINGER, &linger_ms, sizeof linger_ms);
    if (status == CM_OK &&
        (!zap->stop_socket || zmq_bind(zap->stop_socket, zap->stop_endpoint) != 0))
        status = cm_fail(CM_ERR_IO, "cannot create the ZAP handler's stop socket: %s",
                         zmq_strerror(zmq_errno()));
    if (status == CM_OK) {
        if (pthread_create(&zap->thread, NULL, zap_thread, zap) != 0) {
            status = cm_fail(CM_ERR_IO, "cannot start the ZAP handler thread");
        } else {
            zap->thread_started = 1;
            pthread_mutex_lock(&zap->lock);
            while (!zap->report_ready) pthread_cond_wait(&zap->reported, &zap->lock);
            status = zap->start_status;
            pthread_mutex_unlock(&zap->lock);
            if (status != CM_OK) status = cm_fail(status, "%s", zap->start_error);
        }
    }
    if (status != CM_OK) {
        zmq_socket_monitor(server_socket, NULL, 0);
        cm_curve_zap_free(&zap);
        return status;
    }
    *out = zap;
    return CM_OK;
}

void cm_curve_zap_free(cm_curve_zap_t **zap_pointer) {
    cm_curve_zap_t *zap = *zap_pointer;
    if (!zap) return;
    if (zap->thread_started) {
        /* A thread that failed to start up has already ended; one that runs reads this. */
        if (zap->start_status == CM_OK) zmq_send(zap->stop_socket, "", 0, 0);
        pthread_join(zap->thread, NULL);
    }
    if (zap->stop_socket) zmq_close(zap->stop_socket);
    cm_curve_allowlist_free(&zap->allowlist);
    pthread_mutex_destroy(&zap->lock);
    pthread_cond_destroy(&zap->reported);
    free(zap);
    *zap_pointer = NULL;
}

/* ---------------------------------------------------------------- keygen command */

/* Creates the folders of `basename` that are missing (mode 0700: they hold secret keys), so
 * `keygen --out keys/fm` works in a fresh checkout. */
static cm_status_t make_parent_folders(const char *basename) {
    char path[1024];
    if (snprintf(path, sizeof path, "%s", basename) >= (int)sizeof path)
        return cm_fail(CM_ERR_INVALID_ARG, "--out %s is too long", basename);
    for (char *slash = strchr(path + 1, '/'); slash; slash = strchr(slash + 1, '/')) {
        *slash = '\0';
        if (mkdir(path, 0700) != 0 && errno != EEXIST)
            return cm_fail(CM_ERR_IO, "cannot create the folder %s: %s", path, strerror(errno));
        *slash = '/';
    }
    return CM_OK;
}

int cm_curve_keygen_command(const char *program, int argc, char **argv, int first) {
    const char *basename = NULL;
    const cm_cli_option_t table[] = {
        {"out", CM_CLI_STRING, &basename, "BASENAME",
         "write BASENAME.key (secret key, mode 0600) and BASENAME.pub (public key)", 1},
    };
    const int count = (int)(sizeof table / sizeof table[0]);
    char usage[128];
    snprintf(usage, sizeof usage, "%s keygen --out BASENAME", program);
    const char *description =
        "Makes a CURVE key pair for encrypted, authenticated links between teachers and\n"
        "trainers. BASENAME.key holds the secret key: it stays on this host, readable by its\n"
        "owner only. BASENAME.pub holds the public key: a teacher's goes to its trainers\n"
        "(--teacher-key NAME=FILE), a trainer's to the teachers' --allow-keys. Existing files\n"
        "are never overwritten; missing folders of BASENAME are created (mode 0700).\n"
        "\n"
        "example: teacher-server keygen --out keys/fm   (writes keys/fm.key and keys/fm.pub)";
    int help = 0;
    cm_status_t status = cm_cli_parse(table, count, argc, argv, first, &help);
    if (help) {
        cm_cli_usage(stdout, usage, description, table, count);
        return 0;
    }
    if (status != CM_OK) {
        fprintf(stderr, "%s keygen: %s\n", program, cm_last_error());
        return 2;
    }
    cm_curve_keypair_t keys;
    status = make_parent_folders(basename);
    if (status == CM_OK) status = cm_curve_keygen(basename, &keys);
    if (status != CM_OK) {
        fprintf(stderr, "%s keygen: %s\n", program, cm_last_error());
        return 1;
    }
    printf("wrote %s.key (secret key, mode 0600: keep it on this host)\n"
           "wrote %s.pub (public key %s)\n",
           basename, basename, keys.public_key);
    memset(&keys, 0, sizeof keys);
    return 0;
}
