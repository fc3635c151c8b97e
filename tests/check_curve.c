/*
 * cm_curve and CURVE links end to end.
 *
 * In process: key files written by cm_curve_keygen load back (the secret
 * one with mode 0600), every malformed key file is an error that names the
 * file, allowlists come from files and directories, and a ZAP handler in
 * front of a real CURVE ROUTER admits an allowed client, refuses an unknown
 * key (the client's monitor sees the refusal) and reports a client that
 * encrypts for another server key; none of them, nor a plaintext client,
 * gets a message through.
 *
 * Through the real binaries: `keygen` of both programs; a teacher served
 * with CURVE on a non-loopback bind teaches an allowed trainer and answers
 * `teacher-server query` (outputs and --head) with keys; an unknown
 * trainer key, a plaintext trainer and a trainer with the wrong teacher key
 * each fail at once with a sentence (exit 1) while the teacher logs and
 * counts the refusal; bad key files and missing options are clear errors.
 */
#include "cm_curve.h"
#include "cm_progress.h"
#include "serve_fixture.h"
#include "test_process.h"
#include "test_util.h"

#include <check.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zmq.h>

enum { WAIT_MS = 5000 };

#define SUBSET "--max-train 1000 --max-test 200"

static char directory[256];
static char output[65536];

static void make_directory(void) {
    test_util_temp_dir(directory, sizeof directory);
    ck_assert_msg(directory[0], "no temp directory");
}

static void remove_directory(void) {
    if (directory[0]) test_util_remove_tree(directory);
}

static void path_in(char *path, size_t size, const char *name) {
    snprintf(path, size, "%s/%s", directory, name);
}

static void write_file(const char *path, const char *text) {
    FILE *file = fopen(path, "w");
    ck_assert_msg(file != NULL, "cannot write %s", path);
    fputs(text, file);
    fclose(file);
}

static int file_mode(const char *path) {
    struct stat info;
    ck_assert_int_eq(stat(path, &info), 0);
    return (int)(info.st_mode & 0777);
}

/* ---------------------------------------------------------------- key files */

START_TEST(test_keygen_writes_a_pair_that_loads) {
    char basename[300], secret_path[320], public_path[320];
    path_in(basename, sizeof basename, "node");
    snprintf(secret_path, sizeof secret_path, "%s.key", basename);
    snprintf(public_path, sizeof public_path, "%s.pub", basename);
    cm_curve_keypair_t made, loaded;
    ck_assert_msg(cm_curve_keygen(basename, &made) == CM_OK, "%s", cm_last_error());
    ck_assert_int_eq(file_mode(secret_path), 0600);
    ck_assert_int_eq((int)strlen(made.public_key), CM_CURVE_KEY_CHARS);
    ck_assert_msg(cm_curve_load_keypair(secret_path, &loaded) == CM_OK, "%s", cm_last_error());
    ck_assert_str_eq(loaded.public_key, made.public_key);
    ck_assert_str_eq(loaded.secret_key, made.secret_key);
    char public_key[CM_CURVE_KEY_TEXT];
    ck_assert_msg(cm_curve_load_public(public_path, public_key) == CM_OK, "%s", cm_last_error());
    ck_assert_str_eq(public_key, made.public_key);
    /* The .pub file is exactly the key and a newline. */
    char expected[CM_CURVE_KEY_TEXT + 1];
    snprintf(expected, sizeof expected, "%s\n", made.public_key);
    FILE *file = fopen(public_path, "r");
    char text[128] = "";
    ck_assert_ptr_nonnull(fgets(text, sizeof text, file));
    fclose(file);
    ck_assert_str_eq(text, expected);
    /* Never overwrites. */
    ck_assert_int_eq(cm_curve_keygen(basename, NULL), CM_ERR_INVALID_ARG);
    ck_assert_msg(strstr(cm_last_error(), secret_path), "%s", cm_last_error());
    ck_assert_msg(cm_curve_load_keypair(secret_path, &loaded) == CM_OK &&
                      strcmp(loaded.secret_key, made.secret_key) == 0,
                  "keygen replaced the secret key");
}
END_TEST

/* Asserts that loading `text` as a secret (or public) key file fails with a sentence naming it
 * and containing `words`. */
static void expect_bad_key_file(const char *text, int secret, const char *words) {
    char path[300];
    path_in(path, sizeof path, secret ? "bad.key" : "bad.pub");
    write_file(path, text);
    cm_curve_keypair_t keys;
    char key[CM_CURVE_KEY_TEXT];
    cm_status_t status =
        secret ? cm_curve_load_keypair(path, &keys) : cm_curve_load_public(path, key);
    ck_assert_msg(status != CM_OK, "'%s' loaded as a %s key", text, secret ? "secret" : "public");
    ck_assert_msg(strstr(cm_last_error(), path) && strstr(cm_last_error(), words),
                  "for '%s': '%s' does not name %s or say '%s'", text, cm_last_error(), path,
                  words);
}

START_TEST(test_bad_key_files_are_named) {
    cm_curve_keypair_t pair, other, loaded;
    ck_assert_int_eq(zmq_curve_keypair(pair.public_key, pair.secret_key), 0);
    ck_assert_int_eq(zmq_curve_keypair(other.public_key, other.secret_key), 0);
    char text[512];

    char missing[300];
    path_in(missing, sizeof missing, "missing.key");
    ck_assert_int_eq(cm_curve_load_keypair(missing, &loaded), CM_ERR_NOT_FOUND);
    ck_assert_msg(strstr(cm_last_error(), missing), "%s", cm_last_error());
    char key[CM_CURVE_KEY_TEXT];
    ck_assert_int_eq(cm_curve_load_public(missing, key), CM_ERR_NOT_FOUND);

    expect_bad_key_file("", 0, "holds 0 public keys");
    snprintf(text, sizeof text, "%.39s\n", pair.public_key);
    expect_bad_key_file(text, 0, "got 39");
    snprintf(text, sizeof text, "%s\n%s\n", pair.public_key, other.public_key);
    expect_bad_key_file(text, 0, "holds 2 public keys");
    snprintf(text, sizeof text, "%.39s~\n", pair.public_key); /* '~' is not Z85 */
    expect_bad_key_file(text, 0, "not a CURVE public key");
    snprintf(text, sizeof text, "public %s\nsecret %s\n", pair.public_key, pair.secret_key);
    expect_bad_key_file(text, 0, "is a secret key file");

    snprintf(text, sizeof text, "%s\n", pair.public_key);
    expect_bad_key_file(text, 1, "holds a public key only");
    snprintf(text, sizeof text, "public %s\nsecret %.30s\n", pair.public_key, pair.secret_key);
    expect_bad_key_file(text, 1, "secret key is not 40 Z85 characters");
    snprintf(text, sizeof text, "public %s\nsecret %s\n", pair.public_key, other.secret_key);
    expect_bad_key_file(text, 1, "do not belong together");
    snprintf(text, sizeof text, "public %s\nsecret %s\nmore\n", pair.public_key, pair.secret_key);
    expect_bad_key_file(text, 1, "line 3");
    /* A lone secret line is enough: the public key follows from it. */
    char path[300];
    path_in(path, sizeof path, "lone.key");
    snprintf(text, sizeof text, "# comment\n\nsecret %s\n", pair.secret_key);
    write_file(path, text);
    ck_assert_msg(cm_curve_load_keypair(path, &loaded) == CM_OK, "%s", cm_last_error());
    ck_assert_str_eq(loaded.public_key, pair.public_key);
}
END_TEST

START_TEST(test_allowlist_from_a_file_and_a_directory) {
    char alice[CM_CURVE_KEY_TEXT], bob[CM_CURVE_KEY_TEXT], secret[CM_CURVE_KEY_TEXT];
    ck_assert_int_eq(zmq_curve_keypair(alice, secret), 0);
    ck_assert_int_eq(zmq_curve_keypair(bob, secret), 0);
    char path[300], text[512];
    path_in(path, sizeof path, "allowed.txt");
    snprintf(text, sizeof text, "# trainers allowed\n\n%s alice\n  %s\r\n#comment\n", alice, bob);
    write_file(path, text);
    cm_curve_allowlist_t *allowlist = NULL;
    ck_assert_msg(cm_curve_allowlist_load(path, &allowlist) == CM_OK, "%s", cm_last_error());
    ck_assert_int_eq(cm_curve_allowlist_count(allowlist), 2);
    ck_assert_str_eq(cm_curve_allowlist_find(allowlist, alice), "alice");
    ck_assert_str_eq(cm_curve_allowlist_find(allowlist, bob), "");
    ck_assert_ptr_null(cm_curve_allowlist_find(allowlist, secret));
    cm_curve_allowlist_free(&allowlist);
    ck_assert_ptr_null(allowlist);

    snprintf(text, sizeof text, "%s\nnot-a-key\n", alice);
    write_file(path, text);
    ck_assert_int_eq(cm_curve_allowlist_load(path, &allowlist), CM_ERR_FORMAT);
    ck_assert_msg(strstr(cm_last_error(), "line 2") && strstr(cm_last_error(), path), "%s",
                  cm_last_error());
    write_file(path, "# nobody\n");
    ck_assert_int_eq(cm_curve_allowlist_load(path, &allowlist), CM_ERR_FORMAT);
    ck_assert_msg(strstr(cm_last_error(), "no trainer could connect"), "%s", cm_last_error());

    char keys[300], file[400];
    path_in(keys, sizeof keys, "keys");
    ck_assert_int_eq(mkdir(keys, 0700), 0);
    ck_assert_int_eq(cm_curve_allowlist_load(keys, &allowlist), CM_ERR_FORMAT);
    snprintf(file, sizeof file, "%s/alice.pub", keys);
    snprintf(text, sizeof text, "%s\n", alice);
    write_file(file, text);
    snprintf(file, sizeof file, "%s/bob.pub", keys);
    snprintf(text, sizeof text, "%s\n", bob);
    write_file(file, text);
    snprintf(file, sizeof file, "%s/README", keys);
    write_file(file, "not a key, not a .pub file\n");
    ck_assert_msg(cm_curve_allowlist_load(keys, &allowlist) == CM_OK, "%s", cm_last_error());
    ck_assert_int_eq(cm_curve_allowlist_count(allowlist), 2);
    ck_assert_str_eq(cm_curve_allowlist_find(allowlist, bob), "bob");
    cm_curve_allowlist_free(&allowlist);
    snprintf(file, sizeof file, "%s/broken.pub", keys);
    write_file(file, "short\n");
    ck_assert_int_eq(cm_curve_allowlist_load(keys, &allowlist), CM_ERR_FORMAT);
    ck_assert_msg(strstr(cm_last_error(), file), "%s", cm_last_error());
    char missing[300];
    path_in(missing, sizeof missing, "nowhere");
    ck_assert_int_eq(cm_curve_allowlist_load(missing, &allowlist), CM_ERR_NOT_FOUND);
    ck_assert_msg(strstr(cm_last_error(), missing), "%s", cm_last_error());
}
END_TEST

/* ---------------------------------------------------------------- the ZAP handler */

static atomic_int refusals;

static void count_refusal(const char *key, const char *address, void *user) {
    (void)key;
    (void)address;
    (void)user;
    atomic_fetch_add(&refusals, 1);
}

/* A DEALER in `context` connected to `endpoint`, CURVE when keys is not NULL, with a monitor of
 * its handshake events on *monitor. */
static void *connect_client(void *context, const char *endpoint, const cm_curve_keypair_t *keys,
                            const char *server_key, void **monitor) {
    static int clients;
    void *socket = zmq_socket(context, ZMQ_DEALER);
    int linger = 0, timeout_ms = WAIT_MS;
    zmq_setsockopt(socket, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(socket, ZMQ_RCVTIMEO, &timeout_ms, sizeof timeout_ms);
    if (keys) ck_assert_int_eq(cm_curve_make_client(socket, keys, server_key), CM_OK);
    char address[64];
    snprintf(address, sizeof address, "inproc://check-curve-monitor-%d", clients++);
    ck_assert_int_eq(zmq_socket_monitor(socket, address, ZMQ_EVENT_HANDSHAKE_FAILED_AUTH), 0);
    *monitor = zmq_socket(context, ZMQ_PAIR);
    zmq_setsockopt(*monitor, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(*monitor, ZMQ_RCVTIMEO, &timeout_ms, sizeof timeout_ms);
    ck_assert_int_eq(zmq_connect(*monitor, address), 0);
    ck_assert_int_eq(zmq_connect(socket, endpoint), 0);
    return socket;
}

START_TEST(test_zap_admits_allowed_keys_only) {
    cm_curve_keypair_t server_keys, allowed, stranger;
    ck_assert_int_eq(zmq_curve_keypair(server_keys.public_key, server_keys.secret_key), 0);
    ck_assert_int_eq(zmq_curve_keypair(allowed.public_key, allowed.secret_key), 0);
    ck_assert_int_eq(zmq_curve_keypair(stranger.public_key, stranger.secret_key), 0);
    char path[300], text[128];
    path_in(path, sizeof path, "allowed.txt");
    snprintf(text, sizeof text, "%s allowed\n", allowed.public_key);
    write_file(path, text);
    cm_curve_allowlist_t *allowlist = NULL;
    ck_assert_int_eq(cm_curve_allowlist_load(path, &allowlist), CM_OK);

    void *context = zmq_ctx_new();
    void *server = zmq_socket(context, ZMQ_ROUTER);
    int linger = 0, timeout_ms = WAIT_MS;
    zmq_setsockopt(server, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(server, ZMQ_RCVTIMEO, &timeout_ms, sizeof timeout_ms);
    cm_curve_zap_t *zap = NULL;
    atomic_store(&refusals, 0);
    ck_assert_msg(cm_curve_zap_new(context, server, &allowlist, count_refusal, NULL, &zap) == CM_OK,
                  "%s", cm_last_error());
    ck_assert_ptr_null(allowlist);
    /* A second handler in the same context cannot bind the ZAP endpoint. */
    cm_curve_allowlist_t *second_list = NULL;
    ck_assert_int_eq(cm_curve_allowlist_load(path, &second_list), CM_OK);
    cm_curve_zap_t *second = NULL;
    void *other = zmq_socket(context, ZMQ_ROUTER);
    zmq_setsockopt(other, ZMQ_LINGER, &linger, sizeof linger);
    ck_assert_int_eq(cm_curve_zap_new(context, other, &second_list, NULL, NULL, &second),
                     CM_ERR_IO);
    ck_assert_ptr_null(second);
    ck_assert_ptr_null(second_list);
    zmq_close(other);

    ck_assert_int_eq(cm_curve_make_server(server, &server_keys, "committee"), CM_OK);
    ck_assert_int_eq(zmq_bind(server, "tcp://127.0.0.1:*"), 0);
    char endpoint[256];
    size_t endpoint_size = sizeof endpoint;
    zmq_getsockopt(server, ZMQ_LAST_ENDPOINT, endpoint, &endpoint_size);

    /* The allowed client's message arrives. */
    void *allowed_monitor, *stranger_monitor, *misdirected_monitor, *plain_monitor;
    void *client =
        connect_client(context, endpoint, &allowed, server_keys.public_key, &allowed_monitor);
    ck_assert_int_eq(zmq_send(client, "ping", 4, 0), 4);
    char routing[256], body[16];
    ck_assert_int_gt(zmq_recv(server, routing, sizeof routing, 0), 0);
    ck_assert_int_eq(zmq_recv(server, body, sizeof body, 0), 4);
    ck_assert(memcmp(body, "ping", 4) == 0);

    /* The stranger is refused with ZAP status 400, which its monitor reports. */
    void *intruder =
        connect_client(context, endpoint, &stranger, server_keys.public_key, &stranger_monitor);
    zmq_msg_t event;
    zmq_msg_init(&event);
    ck_assert_msg(zmq_msg_recv(&event, stranger_monitor, 0) == 6, "no refusal within %d ms",
                  WAIT_MS);
    uint16_t number;
    uint32_t value;
    memcpy(&number, zmq_msg_data(&event), sizeof number);
    memcpy(&value, (const char *)zmq_msg_data(&event) + 2, sizeof value);
    ck_assert_int_eq(number, ZMQ_EVENT_HANDSHAKE_FAILED_AUTH);
    ck_assert_int_eq(value, 400);
    zmq_msg_close(&event);

    /* A client that encrypts for another server key: the handshake never decrypts, which the
     * handler learns from the server socket's monitor and reports. */
    void *misdirected =
        connect_client(context, endpoint, &allowed, stranger.public_key, &misdirected_monitor);
    double deadline = cm_progress_now() + WAIT_MS / 1000.0;
    while (atomic_load(&refusals) < 2 && cm_progress_now() < deadline) test_process_sleep_ms(10);
    ck_assert_int_ge(atomic_load(&refusals), 2);

    /* Neither these nor a plaintext client ever get a message through. */
    void *plain = connect_client(context, endpoint, NULL, NULL, &plain_monitor);
    zmq_send(plain, "hello", 5, ZMQ_DONTWAIT);
    zmq_send(intruder, "hello", 5, ZMQ_DONTWAIT);
    zmq_send(misdirected, "hello", 5, ZMQ_DONTWAIT);
    int short_ms = 300;
    zmq_setsockopt(server, ZMQ_RCVTIMEO, &short_ms, sizeof short_ms);
    ck_assert_int_eq(zmq_recv(server, routing, sizeof routing, 0), -1);

    void *sockets[] = {client,      allowed_monitor,     intruder, stranger_monitor,
                       misdirected, misdirected_monitor, plain,    plain_monitor,
                       server};
    for (size_t index = 0; index < sizeof sockets / sizeof sockets[0]; index++)
        zmq_close(sockets[index]);
    cm_curve_zap_free(&zap);
    ck_assert_ptr_null(zap);
    cm_curve_zap_free(&zap); /* NULL-safe */
    ck_assert_int_eq(zmq_ctx_term(context), 0);
}
END_TEST

/* ---------------------------------------------------------------- end to end */

static int have_data;
static char teacher_path[300];
static char teacher_key[300], teacher_pub[300], trainer_key[300], stranger_key[300],
    stranger_pub[300], allowed_dir[300];

static void prepare_committee(void) {
    make_directory();
    have_data = test_util_have_fashion_mnist();
    if (!have_data) return;
    path_in(teacher_path, sizeof teacher_path, "teacher.safetensors");
    path_in(teacher_key, sizeof teacher_key, "teacher.key");
    path_in(teacher_pub, sizeof teacher_pub, "teacher.pub");
    path_in(trainer_key, sizeof trainer_key, "allowed/trainer.key");
    path_in(stranger_key, sizeof stranger_key, "stranger.key");
    path_in(stranger_pub, sizeof stranger_pub, "stranger.pub");
    path_in(allowed_dir, sizeof allowed_dir, "allowed");
    /* The allowlist directory holds the trainer's .pub next to its .key, which it ignores. */
    char command[3000];
    snprintf(command, sizeof command,
             "mkdir %s && %s fit " SUBSET " --epochs 1 --view pool7 --model mlp:49-16-10 --out %s "
             "&& %s keygen --out %s/teacher && %s keygen --out %s/allowed/trainer && %s keygen "
             "--out %s/stranger",
             allowed_dir, test_util_bin("teacher-server"), teacher_path,
             test_util_bin("teacher-server"), directory, test_util_bin("student-trainer"),
             directory, test_util_bin("student-trainer"), directory);
    if (test_util_run(command, output, sizeof output) != 0) {
        fprintf(stderr, "preparing the CURVE committee failed:\n%s\n", output);
        have_data = 0;
    }
}

#define REQUIRE_DATA()                                                                             \
    do {                                                                                           \
        if (!have_data) {                                                                          \
            fprintf(stderr, "skipping %s: Fashion-MNIST is not installed (make deps)\n",           \
                    __func__);                                                                     \
            return;                                                                                \
        }                                                                                          \
    } while (0)

/* Starts a CURVE teacher on all interfaces (fine with keys) and returns its loopback endpoint. */
static void start_curve_teacher(serve_fixture_t *server, char *endpoint, size_t size) {
    const char *const extra[] = {"--bind",
                                 "tcp://0.0.0.0:*",
                                 "--curve-secret-key",
                                 teacher_key,
                                 "--allow-keys",
                                 allowed_dir,
                                 "--max-train",
                                 "1000",
                                 "--max-test",
                                 "200",
                                 NULL};
    char why[4096];
    ck_assert_msg(serve_fixture_start(server, directory, teacher_path, extra, why, sizeof why) == 0,
                  "%s", why);
    const char *port = strrchr(server->endpoint, ':');
    ck_assert_msg(strncmp(server->endpoint, "tcp://0.0.0.0:", 14) == 0 && port, "serving on %s",
                  server->endpoint);
    snprintf(endpoint, size, "tcp://127.0.0.1%s", port);
}

/* Runs a KD trainer against `endpoint` with `keys` (extra options); returns its exit status. */
static int run_trainer(const char *endpoint, const char *keys) {
    char command[3000], out[320];
    path_in(out, sizeof out, "student.safetensors");
    snprintf(
        command, sizeof command,
        "%s train --view pool7 --model mlp:49-16-10 --teacher fm=%s --method kd --epochs 1 " SUBSET
        " --http off --teacher-timeout-ms 8000 --out %s %s",
        test_util_bin("student-trainer"), endpoint, out, keys);
    return test_util_run(command, output, sizeof output);
}

static double unauthorized_count(const serve_fixture_t *server) {
    char metrics[16384];
    ck_assert_int_eq(
        test_util_http_get(server->http_port, "/metrics", metrics, sizeof metrics, WAIT_MS), 200);
    const char *series = "committee_teacher_errors_total{code=\"UNAUTHORIZED\"} ";
    const char *line = strstr(metrics, series);
    return line ? atof(line + strlen(series)) : 0.0;
}

START_TEST(test_binaries_keygen) {
    REQUIRE_DATA();
    /* The fixture made these with both binaries; the secret ones are private and load. */
    const char *secrets[] = {teacher_key, trainer_key, stranger_key};
    for (int index = 0; index < 3; index++) {
        ck_assert_int_eq(file_mode(secrets[index]), 0600);
        cm_curve_keypair_t keys;
        ck_assert_msg(cm_curve_load_keypair(secrets[index], &keys) == CM_OK, "%s", cm_last_error());
    }
    char key[CM_CURVE_KEY_TEXT], command[1000];
    ck_assert_msg(cm_curve_load_public(teacher_pub, key) == CM_OK, "%s", cm_last_error());
    snprintf(command, sizeof command, "%s keygen --out %s/teacher", test_util_bin("teacher-server"),
             directory);
    ck_assert_int_eq(test_util_run(command, output, sizeof output), 1);
    ck_assert_msg(strstr(output, "already exists") && strstr(output, teacher_key), "%s", output);
    snprintf(command, sizeof command, "%s keygen", test_util_bin("student-trainer"));
    ck_assert_int_eq(test_util_run(command, output, sizeof output), 2);
    ck_assert_msg(strstr(output, "--out"), "%s", output);
}
END_TEST

START_TEST(test_allowed_trainer_learns_and_others_are_refused) {
    REQUIRE_DATA();
    serve_fixture_t server;
    char endpoint[300], keys[1000];
    start_curve_teacher(&server, endpoint, sizeof endpoint);

    snprintf(keys, sizeof keys, "--curve-secret-key %s --teacher-key fm=%s", trainer_key,
             teacher_pub);
    int status = run_trainer(endpoint, keys);
    ck_assert_msg(status == 0 && strstr(output, "test_accuracy="), "allowed trainer: %s", output);
    char log[16384];
    serve_fixture_log(&server, log, sizeof log);
    ck_assert_msg(strstr(log, "trainer 'trainer'") && strstr(log, "authenticated from 127.0.0.1"),
                  "%s", log);

    /* The debugging client talks CURVE too. */
    char command[3000];
    snprintf(command, sizeof command,
             "%s query --connect %s --ids 0-49 --curve-secret-key %s --teacher-key %s",
             test_util_bin("teacher-server"), endpoint, trainer_key, teacher_pub);
    ck_assert_msg(test_util_run(command, output, sizeof output) == 0 &&
                      strstr(output, "shape [50,10]"),
                  "query with keys: %s", output);
    snprintf(command, sizeof command,
             "%s query --connect %s --head hidden --curve-secret-key %s --teacher-key %s",
             test_util_bin("teacher-server"), endpoint, trainer_key, teacher_pub);
    ck_assert_msg(test_util_run(command, output, sizeof output) == 0 &&
                      strstr(output, "head 'hidden' (dense, F32): weight shape [10,16]"),
                  "query --head with keys: %s", output);

    /* An unknown key: refused on both sides.  The trainer's sentence says "refused our key", which
     * it only writes when the teacher's refusal arrived, never after its handshake deadline ran
     * out, so no clock is needed to tell the two apart (no wall-clock assertion: a loaded
     * machine must not fail make check; timings belong in bench/). */
    snprintf(keys, sizeof keys, "--curve-secret-key %s --teacher-key fm=%s", stranger_key,
             teacher_pub);
    status = run_trainer(endpoint, keys);
    ck_assert_msg(status == 1 && strstr(output, "teacher 'fm'") &&
                      strstr(output, "refused our key (authentication failed"),
                  "unknown key: exit %d: %s", status, output);
    char stranger[CM_CURVE_KEY_TEXT], expected[200];
    ck_assert_int_eq(cm_curve_load_public(stranger_pub, stranger), CM_OK);
    ck_assert_msg(strstr(output, stranger), "the trainer does not show its key: %s", output);
    snprintf(expected, sizeof expected,
             "refused a trainer with unknown public key %s from 127.0.0.1", stranger);
    ck_assert_msg(test_process_await_text(server.log_path, expected, WAIT_MS), "no '%s' in %s",
                  expected, server.log_path);

    /* A plaintext trainer. */
    status = run_trainer(endpoint, "");
    ck_assert_msg(status == 1 && strstr(output, "--curve-secret-key and --teacher-key"),
                  "plaintext: exit %d: %s", status, output);

    /* A trainer that has the wrong public key for the teacher. */
    snprintf(keys, sizeof keys, "--curve-secret-key %s --teacher-key fm=%s", trainer_key,
             stranger_pub);
    status = run_trainer(endpoint, keys);
    ck_assert_msg(status == 1 && strstr(output, "is --teacher-key"),
                  "wrong teacher key: exit %d: %s", status, output);
    ck_assert(test_process_await_text(server.log_path, "did not decrypt", WAIT_MS));

    /* The unknown key and the wrong teacher key at least (a plaintext peer is counted when libzmq
     * tells the server about it, which depends on who notices the mismatch first). */
    ck_assert_msg(unauthorized_count(&server) >= 2, "refusals are not counted");
    int exit_status = serve_fixture_stop(&server, SIGTERM, WAIT_MS);
    serve_fixture_log(&server, log, sizeof log);
    ck_assert_msg(exit_status == 0 && strstr(log, " stopped\n"), "exit %d: %s", exit_status, log);
}
END_TEST

/*
 * One refusal, one count and its share of one line: refused peers retry about ten times a
 * second, so the repeats of a refusal are summed up in one "refused N more connections like the
 * last one" line, and the refused lines plus those N add up to the UNAUTHORIZED count exactly.
 */
START_TEST(test_every_refusal_is_counted_once_and_logged_once) {
    REQUIRE_DATA();
    serve_fixture_t server;
    char endpoint[300], command[3000];
    start_curve_teacher(&server, endpoint, sizeof endpoint);
    /* Three kinds of refused peers, each retrying for a while; each ends before the next. */
    const char *keys[3][2] = {
        {trainer_key, stranger_pub}, {NULL, NULL}, {stranger_key, teacher_pub}};
    for (int kind = 0; kind < 3; kind++) {
        char key_options[1000] = "";
        if (keys[kind][0])
            snprintf(key_options, sizeof key_options, "--curve-secret-key %s --teacher-key %s",
                     keys[kind][0], keys[kind][1]);
        snprintf(command, sizeof command, "%s query --connect %s --timeout-ms 1500 %s",
                 test_util_bin("teacher-server"), endpoint, key_options);
        ck_assert_int_ne(test_util_run(command, output, sizeof output), 0);
    }
    double counted = unauthorized_count(&server);
    ck_assert_int_eq(serve_fixture_stop(&server, SIGTERM, WAIT_MS), 0); /* writes the summaries */
    char log[65536];
    serve_fixture_log(&server, log, sizeof log);
    int refused_lines = 0, decrypt_lines = 0, summarized = 0;
    for (const char *line = log; line && *line;
         line = strchr(line, '\n'), line = line ? line + 1 : NULL) {
        const char *refused = strstr(line, " warn: refused ");
        const char *end = strchr(line, '\n');
        if (!refused || (end && refused > end)) continue;
        int more = 0;
        if (sscanf(refused, " warn: refused %d more connection", &more) == 1) {
            summarized += more;
        } else {
            refused_lines++;
            const char *decrypt = strstr(refused, "did not decrypt");
            decrypt_lines += decrypt && (!end || decrypt < end);
        }
    }
    ck_assert_msg(refused_lines + summarized == (int)counted,
                  "%d refused lines and %d summed up, but %.0f counted (log: %s)", refused_lines,
                  summarized, counted, server.log_path);
    ck_assert_msg(decrypt_lines == 1 && summarized > 0,
                  "the retries of one peer with the wrong teacher key gave %d lines (log: %s)",
                  decrypt_lines, server.log_path);
}
END_TEST

START_TEST(test_bad_keys_and_options) {
    REQUIRE_DATA();
    char teacher[512], command[3000];
    snprintf(teacher, sizeof teacher, "%s", test_util_bin("teacher-server"));
    /* Usage errors: one line, exit 2. */
    snprintf(command, sizeof command,
             "%s serve --model %s --bind tcp://127.0.0.1:0 --http off --curve-secret-key %s",
             teacher, teacher_path, teacher_key);
    ck_assert_int_eq(test_util_run(command, output, sizeof output), 2);
    ck_assert_msg(strstr(output, "needs --allow-keys") && strchr(output, '\n')[1] == '\0', "%s",
                  output);
    snprintf(command, sizeof command, "%s serve --model %s --bind tcp://0.0.0.0:0 --http off",
             teacher, teacher_path);
    ck_assert_int_eq(test_util_run(command, output, sizeof output), 2);
    ck_assert_msg(strstr(output, "--insecure-public") && strstr(output, "--curve-secret-key"), "%s",
                  output);
    snprintf(command, sizeof command,
             "%s train --model mlp:49-16-10 --out x --teacher fm=tcp://127.0.0.1:1 --teacher-key "
             "fm=%s",
             test_util_bin("student-trainer"), teacher_pub);
    ck_assert_int_eq(test_util_run(command, output, sizeof output), 2);
    ck_assert_msg(strstr(output, "--teacher-key needs --curve-secret-key"), "%s", output);

    /* A teacher with a secret key file that is really a public key. */
    snprintf(command, sizeof command,
             "%s serve --model %s --bind tcp://127.0.0.1:0 --http off --curve-secret-key %s "
             "--allow-keys %s",
             teacher, teacher_path, teacher_pub, allowed_dir);
    int status = test_util_run(command, output, sizeof output);
    ck_assert_msg(status == 1 && strstr(output, teacher_pub) &&
                      strstr(output, "holds a public key only"),
                  "exit %d: %s", status, output);
    /* An allowlist that does not exist. */
    snprintf(command, sizeof command,
             "%s serve --model %s --bind tcp://127.0.0.1:0 --http off --curve-secret-key %s "
             "--allow-keys %s/nowhere",
             teacher, teacher_path, teacher_key, directory);
    ck_assert_int_eq(test_util_run(command, output, sizeof output), 1);
    ck_assert_msg(strstr(output, "nowhere"), "%s", output);
    /* A trainer whose teacher key file is broken, or names no teacher. */
    char broken[320];
    path_in(broken, sizeof broken, "broken.pub");
    write_file(broken, "not a key\n");
    char keys[1000];
    snprintf(keys, sizeof keys, "--curve-secret-key %s --teacher-key fm=%s", trainer_key, broken);
    ck_assert_int_eq(run_trainer("tcp://127.0.0.1:1", keys), 1);
    ck_assert_msg(strstr(output, broken) && strstr(output, "not a CURVE public key"), "%s", output);
    snprintf(keys, sizeof keys, "--curve-secret-key %s --teacher-key comp=%s", trainer_key,
             teacher_pub);
    ck_assert_int_eq(run_trainer("tcp://127.0.0.1:1", keys), 1);
    ck_assert_msg(strstr(output, "names a teacher that no --teacher gives"), "%s", output);
    snprintf(keys, sizeof keys, "--curve-secret-key %s", trainer_key);
    ck_assert_int_eq(run_trainer("tcp://127.0.0.1:1", keys), 1);
    ck_assert_msg(strstr(output, "teacher 'fm' has no public key"), "%s", output);
}
END_TEST

Suite *check_curve_suite(void);
Suite *check_curve_suite(void) {
    Suite *suite = suite_create("curve");
    TCase *keys = tcase_create("keys");
    tcase_add_checked_fixture(keys, make_directory, remove_directory);
    tcase_set_timeout(keys, 20);
    tcase_add_test(keys, test_keygen_writes_a_pair_that_loads);
    tcase_add_test(keys, test_bad_key_files_are_named);
    tcase_add_test(keys, test_allowlist_from_a_file_and_a_directory);
    tcase_add_test(keys, test_zap_admits_allowed_keys_only);
    suite_add_tcase(suite, keys);
    TCase *end_to_end = tcase_create("end_to_end");
    tcase_add_unchecked_fixture(end_to_end, prepare_committee, remove_directory);
    tcase_set_timeout(end_to_end, 60);
    tcase_add_test(end_to_end, test_binaries_keygen);
    tcase_add_test(end_to_end, test_allowed_trainer_learns_and_others_are_refused);
    tcase_add_test(end_to_end, test_bad_keys_and_options);
    tcase_add_test(end_to_end, test_every_refusal_is_counted_once_and_logged_once);
    suite_add_tcase(suite, end_to_end);
    return suite;
}
