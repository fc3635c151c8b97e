/*
 * trainer_committee against real `teacher-server serve` processes: the heads
 * teachers lend.
 *
 * Once per test case the runner writes two randomly initialised teachers
 * of the first 512 training and 256 test examples of the real Fashion-MNIST
 * (view "full"): a tiny ViT (head "head", 16 inputs) and an MLP (head
 * "fc1", 24 inputs).  Each test starts its servers (serve_fixture: ipc://
 * paths in a temp directory, bounded waits), builds a committee with
 * trainer_committee_new in this process, and in the checked teardown frees
 * the committee (which says Bye) and stops the servers with SIGTERM,
 * asserting that they exit 0.  The tests skip with a message when the
 * dataset is not installed.
 *
 * Covers: info->heads from the Hello (the HIDDEN bit only when lending);
 * trainer_committee_fetch_head returns the checkpoint's head bit for bit
 * for both families, with heartbeats and a ticket's reply queued in front
 * of the answer (the ticket's owner is told on the way, once), and tickets still work
 * afterwards; a head the teacher does not lend
 * (another feature, --lend-head off) is CM_ERR_NOT_FOUND with a sentence
 * naming the teacher; replicas that disagree on lending are refused at
 * start; silent replicas are each waited for handshake_ms, then
 * CM_ERR_UNAVAILABLE, and a late answer does not confuse the next fetch,
 * which takes the first replica that answers; a stopped teacher is
 * CM_ERR_UNAVAILABLE at once; bad arguments are CM_ERR_INVALID_ARG.
 *
 * Hostile replicas (fake_teacher, in threads of the test): one replica that
 * answers garbage or NaN and one that behaves; with a 600 s deadline every
 * ticket is still answered at once, by the honest replica, with its exact
 * values, and the bad replies are counted.  A set interruption flag ends
 * the handshake and the pump with CM_ERR_CANCELLED.
 */
#include "cm_dataset.h"
#include "cm_model.h"
#include "cm_progress.h"
#include "fake_teacher.h"
#include "serve_fixture.h"
#include "test_process.h"
#include "test_util.h"
#include "trainer_cache.h"
#include "trainer_committee.h"

#include <check.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define VIT_SPEC "vit:image=28x28,patch=7,dim=16,depth=1,heads=2,mlp=32"
#define MLP_SPEC "mlp:784-24-10"

enum {
    MAX_TRAIN = 512,
    MAX_TEST = 256,
    CLASSES = 10,
    VIT_HIDDEN = 16,
    MLP_HIDDEN = 24,
    MAX_SERVERS = 2,
    HANDSHAKE_MS = 1500, /* also how long a silent teacher is waited for */
    WAIT_MS = 10000
};

/* Set up once per test case, in the runner process (unchecked fixture). */
static cm_dataset_t *dataset; /* NULL when Fashion-MNIST is not installed */
static char directory[256];
static char vit_checkpoint[300], mlp_checkpoint[300];

/* Per test (checked fixture). */
static serve_fixture_t servers[MAX_SERVERS];
static trainer_cache_t *cache;
static trainer_committee_t *committee;

/* The tests' tickets: the owner keeps answers in `cache` and notes how each ticket ended. */
enum { MAX_TICKETS = 64 };
static int outcome[MAX_TICKETS]; /* 0: open, 1: answered, -1: given up */
static int heard[MAX_TICKETS];   /* times the owner was told (exactly once) */
static int tickets_made;

static void keep_reply(void *owner, int tag, const trainer_reply_t *reply) {
    trainer_cache_t *kept = owner;
    heard[tag]++;
    outcome[tag] = reply ? 1 : -1;
    if (!reply) return;
    for (int output = 0; output < TRAINER_OUTPUT_COUNT; output++) {
        if (!((reply->outputs >> output) & 1)) continue;
        for (int row = 0; row < reply->count; row++) {
            memcpy(trainer_cache_row(kept, reply->teacher, output, reply->rows[row]),
                   reply->values[output] + (size_t)row * (size_t)reply->width[output],
                   sizeof(float) * (size_t)reply->width[output]);
            trainer_cache_set_has(kept, reply->teacher, output, reply->rows[row], 1);
        }
    }
}

/* Submits a ticket for the logits of rows ids[0..count) of teacher 0; returns its tag. */
static int submit_logits(const int32_t *ids, int count) {
    ck_assert_int_lt(tickets_made, MAX_TICKETS);
    int tag = tickets_made++;
    outcome[tag] = heard[tag] = 0;
    ck_assert_int_eq(trainer_committee_submit(committee, 0, ids, count, 1u << TRAINER_OUTPUT_LOGITS,
                                              keep_reply, cache, tag),
                     CM_OK);
    return tag;
}

/* The outcome of ticket `tag`, asserting that its owner was told at most once. */
static int ticket_outcome(int tag) {
    ck_assert_int_le(heard[tag], 1);
    return outcome[tag];
}

static const char *const subset[] = {"--max-train", "512", "--max-test", "256", NULL};

/* ---------------------------------------------------------------- fixtures */

static void setup_teachers(void) {
    test_util_temp_dir(directory, sizeof directory);
    ck_assert_msg(directory[0], "cannot create a temp directory");
    snprintf(vit_checkpoint, sizeof vit_checkpoint, "%s/vit.safetensors", directory);
    snprintf(mlp_checkpoint, sizeof mlp_checkpoint, "%s/mlp.safetensors", directory);
    if (!test_util_have_fashion_mnist()) return;
    cm_dataset_options_t options = {.max_train = MAX_TRAIN, .max_test = MAX_TEST};
    ck_assert_msg(cm_dataset_load(&dataset, "fashion-mnist", "full", &options) == CM_OK, "%s",
                  cm_last_error());
    ck_assert_msg(serve_fixture_write_checkpoint(vit_checkpoint, VIT_SPEC, dataset, 31) == CM_OK,
                  "%s", cm_last_error());
    ck_assert_msg(serve_fixture_write_checkpoint(mlp_checkpoint, MLP_SPEC, dataset, 32) == CM_OK,
                  "%s", cm_last_error());
}

static void teardown_teachers(void) {
    cm_dataset_free(&dataset);
    if (directory[0]) test_util_remove_tree(directory);
}

static void setup_test(void) {
    memset(servers, 0, sizeof servers);
    cache = NULL;
    committee = NULL;
}

static void teardown_test(void) {
    trainer_committee_free(&committee);
    trainer_cache_free(&cache);
    tickets_made = 0;
    for (int index = 0; index < MAX_SERVERS; index++) {
        if (servers[index].pid <= 0) continue;
        kill(servers[index].pid, SIGCONT); /* in case a test left it stopped */
        int exit_status = serve_fixture_stop(&servers[index], SIGTERM, WAIT_MS);
        char log[4096];
        serve_fixture_log(&servers[index], log, sizeof log);
        ck_assert_msg(exit_status == 0, "server %d exited with status %d after SIGTERM: %s", index,
                      exit_status, log);
    }
}

static int skip_without_dataset(const char *test) {
    if (dataset) return 0;
    fprintf(stderr, "skipping %s: Fashion-MNIST is not installed (make deps)\n", test);
    return 1;
}

/* Starts servers[index] from `checkpoint` as teacher `name` with the subset plus `options`
 * (NULL-terminated). */
static void start_server(int index, const char *name, const char *checkpoint,
                         const char *const *options) {
    const char *arguments[SERVE_FIXTURE_MAX_ARGS + 1] = {"--name", name};
    int count = 2;
    for (int option = 0; subset[option]; option++) arguments[count++] = subset[option];
    for (int option = 0; options && options[option]; option++) arguments[count++] = options[option];
    arguments[count] = NULL;
    char why[4096];
    ck_assert_msg(serve_fixture_start(&servers[index], directory, checkpoint, arguments, why,
                                      sizeof why) == 0,
                  "%s", why);
}

static trainer_committee_config_t committee_config(void) {
    return (trainer_committee_config_t){.window = 2,
                                        .deadline_ms = WAIT_MS,
                                        .handshake_ms = HANDSHAKE_MS,
                                        .heartbeat_ms = 1000,
                                        .policy = TRAINER_POLICY_WAIT,
                                        .encoding = CM_DTYPE_F32,
                                        .max_examples = 256,
                                        .fingerprint = dataset->fingerprint,
                                        .classes = CLASSES,
                                        .train_examples = MAX_TRAIN,
                                        .curve_keys = NULL};
}

/* Builds `committee` (and `cache`) from `count` addresses; returns trainer_committee_new's
 * status. */
static cm_status_t new_committee(const trainer_teacher_address_t *addresses, int count) {
    ck_assert_int_eq(trainer_cache_new(count, MAX_TRAIN, &cache), CM_OK);
    trainer_committee_config_t config = committee_config();
    return trainer_committee_new(addresses, count, &config, &committee);
}

/* A teacher `name` at the endpoints of servers[first .. first + count). */
static trainer_teacher_address_t address_of(const char *name, int first, int count) {
    trainer_teacher_address_t address;
    memset(&address, 0, sizeof address);
    snprintf(address.name, sizeof address.name, "%s", name);
    address.endpoint_count = count;
    for (int slot = 0; slot < count; slot++)
        address.endpoints[slot] = servers[first + slot].endpoint;
    return address;
}

/* The parameter tensor called `name` of the checkpoint at `path`, copied into a new array of
 * *elements floats. */
static float *checkpoint_tensor(const char *path, const char *name, int64_t *elements) {
    cm_model_t *model = NULL;
    ck_assert_msg(cm_model_load(path, 1, &model, NULL) == CM_OK, "%s", cm_last_error());
    for (int index = 0; index < cm_model_tensor_count(model); index++) {
        cm_tensor_t tensor = cm_model_tensor(model, index);
        if (strcmp(tensor.name, name) != 0) continue;
        *elements = cm_tensor_elements(&tensor);
        float *copy = malloc(sizeof(float) * (size_t)*elements);
        ck_assert_ptr_nonnull(copy);
        memcpy(copy, tensor.data, sizeof(float) * (size_t)*elements);
        cm_model_free(&model);
        return copy;
    }
    ck_abort_msg("%s has no tensor '%s'", path, name);
    return NULL;
}

/* Fetches the "hidden" head of `teacher` and compares it bit for bit with the checkpoint's
 * tensors `prefix`.weight and `prefix`.bias. */
static void expect_head(int teacher, const char *path, const char *prefix, int inputs) {
    trainer_head_t head;
    cm_status_t status = trainer_committee_fetch_head(committee, teacher, "hidden", &head);
    ck_assert_msg(status == CM_OK, "%s: %s", cm_status_name(status), cm_last_error());
    ck_assert_int_eq(head.classes, CLASSES);
    ck_assert_int_eq(head.inputs, inputs);
    char name[64];
    int64_t weight_elements = 0, bias_elements = 0;
    snprintf(name, sizeof name, "%s.weight", prefix);
    float *weight = checkpoint_tensor(path, name, &weight_elements);
    snprintf(name, sizeof name, "%s.bias", prefix);
    float *bias = checkpoint_tensor(path, name, &bias_elements);
    ck_assert_int_eq(weight_elements, (int64_t)CLASSES * inputs);
    ck_assert_int_eq(bias_elements, CLASSES);
    ck_assert_msg(memcmp(head.weight, weight, sizeof(float) * (size_t)weight_elements) == 0,
                  "the fetched weight differs from %s.weight of %s", prefix, path);
    ck_assert_msg(memcmp(head.bias, bias, sizeof(float) * CLASSES) == 0,
                  "the fetched bias differs from %s.bias of %s", prefix, path);
    free(weight);
    free(bias);
    trainer_head_free(&head);
    ck_assert_ptr_null(head.weight);
    trainer_head_free(&head); /* idempotent */
}

/* A failed fetch: `code`, an empty head, and a sentence with `mention`. */
static void expect_no_head(int teacher, const char *feature, cm_status_t code,
                           const char *mention) {
    trainer_head_t head;
    cm_status_t status = trainer_committee_fetch_head(committee, teacher, feature, &head);
    ck_assert_msg(status == code, "fetching '%s' gave %s (%s), expected %s", feature,
                  cm_status_name(status), cm_last_error(), cm_status_name(code));
    ck_assert_ptr_null(head.weight);
    ck_assert_ptr_null(head.bias);
    ck_assert_msg(strstr(cm_last_error(), mention), "\"%s\" does not mention \"%s\"",
                  cm_last_error(), mention);
}

/* ---------------------------------------------------------------- tests */

START_TEST(test_fetch_head_matches_checkpoints) {
    if (skip_without_dataset(__func__)) return;
    start_server(0, "fm", vit_checkpoint,
                 (const char *[]){"--heartbeat-ms", "10", "--compute-delay-ms", "100", NULL});
    start_server(1, "comp", mlp_checkpoint, NULL);
    trainer_teacher_address_t addresses[2] = {address_of("fm", 0, 1), address_of("comp", 1, 1)};
    ck_assert_msg(new_committee(addresses, 2) == CM_OK, "%s", cm_last_error());
    const unsigned hidden = 1u << TRAINER_OUTPUT_HIDDEN;
    ck_assert_uint_eq(trainer_committee_info(committee, 0)->heads, hidden);
    ck_assert_uint_eq(trainer_committee_info(committee, 1)->heads, hidden);

    /* A ticket in flight, whose reply and a stream of heartbeats queue up in front of the head:
     * fetching handles them as the pump would, so the ticket is answered without a pump. */
    ck_assert_int_eq(trainer_cache_add_output(cache, 0, TRAINER_OUTPUT_LOGITS, CLASSES), CM_OK);
    const int32_t ids[] = {0, 1, 2, 3};
    int ticket = submit_logits(ids, 4);
    ck_assert_msg(trainer_committee_pump(committee, 0) == CM_OK, "%s", cm_last_error());
    ck_assert_int_eq(ticket_outcome(ticket), 0); /* sent, not answered */
    usleep(400 * 1000);
    expect_head(0, vit_checkpoint, "head", VIT_HIDDEN);
    ck_assert_int_eq(ticket_outcome(ticket), 1);
    ck_assert(trainer_cache_has(cache, 0, TRAINER_OUTPUT_LOGITS, 3));
    expect_head(1, mlp_checkpoint, "fc1", MLP_HIDDEN);
    expect_head(0, vit_checkpoint, "head", VIT_HIDDEN); /* again: the same head */

    /* A feature it lends no head for, and arguments that make no sense. */
    expect_no_head(0, "tokens", CM_ERR_NOT_FOUND, "teacher 'fm' at ");
    expect_no_head(0, "tokens", CM_ERR_NOT_FOUND, "does not lend its head for 'tokens'");
    expect_no_head(1, "attention", CM_ERR_INVALID_ARG, "not 'attention'");
    expect_no_head(2, "hidden", CM_ERR_INVALID_ARG, "no teacher 2 in a committee of 2");
    trainer_head_free(NULL);

    /* The committee still teaches after all that. */
    ticket = submit_logits(ids + 1, 3);
    trainer_cache_set_has(cache, 0, TRAINER_OUTPUT_LOGITS, 3, 0);
    double give_up = cm_progress_now() + WAIT_MS / 1000.0;
    while (ticket_outcome(ticket) == 0 && cm_progress_now() < give_up)
        ck_assert_msg(trainer_committee_pump(committee, 50) == CM_OK, "%s", cm_last_error());
    ck_assert_int_eq(ticket_outcome(ticket), 1);
    ck_assert(trainer_cache_has(cache, 0, TRAINER_OUTPUT_LOGITS, 3));
}
END_TEST

START_TEST(test_lend_head_off_is_not_found) {
    if (skip_without_dataset(__func__)) return;
    start_server(0, "fm", vit_checkpoint, (const char *[]){"--lend-head", "off", NULL});
    trainer_teacher_address_t address = address_of("fm", 0, 1);
    ck_assert_msg(new_committee(&address, 1) == CM_OK, "%s", cm_last_error());
    ck_assert_uint_eq(trainer_committee_info(committee, 0)->heads, 0);
    char sentence[600];
    snprintf(sentence, sizeof sentence,
             "teacher 'fm' at %s does not lend its head for 'hidden'; start it with --lend-head "
             "on, or train without --dd-interactive",
             servers[0].endpoint);
    expect_no_head(0, "hidden", CM_ERR_NOT_FOUND, sentence);
}
END_TEST

START_TEST(test_replicas_must_agree_on_lending) {
    if (skip_without_dataset(__func__)) return;
    start_server(0, "fm", vit_checkpoint, NULL);
    start_server(1, "fm", vit_checkpoint, (const char *[]){"--lend-head", "off", NULL});
    trainer_teacher_address_t address = address_of("fm", 0, 2);
    cm_status_t status = new_committee(&address, 1);
    ck_assert_msg(status == CM_ERR_MISMATCH, "%s: %s", cm_status_name(status), cm_last_error());
    ck_assert_ptr_null(committee);
    char sentence[800];
    snprintf(sentence, sizeof sentence,
             "teacher 'fm' lends heads for none at %s but for hidden at %s; replicas must be "
             "started with the same --lend-head",
             servers[1].endpoint, servers[0].endpoint);
    ck_assert_str_eq(cm_last_error(), sentence);
}
END_TEST

START_TEST(test_silent_replicas_time_out_and_answer_later) {
    if (skip_without_dataset(__func__)) return;
    start_server(0, "fm", vit_checkpoint, NULL);
    start_server(1, "fm", vit_checkpoint, NULL);
    trainer_teacher_address_t address = address_of("fm", 0, 2);
    ck_assert_msg(new_committee(&address, 1) == CM_OK, "%s", cm_last_error());
    ck_assert_int_eq(kill(servers[0].pid, SIGSTOP), 0);
    ck_assert_int_eq(kill(servers[1].pid, SIGSTOP), 0);
    double started = cm_progress_now();
    char sentence[800];
    snprintf(sentence, sizeof sentence,
             "none of the 2 endpoints of teacher 'fm' sent its head for 'hidden' (the last: "
             "teacher 'fm' at %s did not answer the HeadRequest for 'hidden' within %d ms)",
             servers[1].endpoint, HANDSHAKE_MS);
    expect_no_head(0, "hidden", CM_ERR_UNAVAILABLE, sentence);
    double waited = cm_progress_now() - started;
    /* A lower bound only: a loaded machine may be late, never early (no wall-clock upper bounds
     * in make check). */
    ck_assert_msg(waited >= 2 * HANDSHAKE_MS / 1000.0 - 0.1, "gave up after %.2f s", waited);

    /* The second replica wakes up: it answers its old request first, then the new one, which
     * is the one taken; the first replica is still asleep and only costs its deadline. */
    ck_assert_int_eq(kill(servers[1].pid, SIGCONT), 0);
    started = cm_progress_now();
    expect_head(0, vit_checkpoint, "head", VIT_HIDDEN);
    waited = cm_progress_now() - started;
    ck_assert_msg(waited >= HANDSHAKE_MS / 1000.0 - 0.1, "the sleeping replica answered?");
    ck_assert_int_eq(kill(servers[0].pid, SIGCONT), 0);
}
END_TEST

START_TEST(test_stopped_teacher_is_unavailable) {
    if (skip_without_dataset(__func__)) return;
    start_server(0, "fm", vit_checkpoint, NULL);
    trainer_teacher_address_t address = address_of("fm", 0, 1);
    ck_assert_msg(new_committee(&address, 1) == CM_OK, "%s", cm_last_error());
    ck_assert_int_eq(serve_fixture_stop(&servers[0], SIGTERM, WAIT_MS), 0); /* it says Bye */
    expect_no_head(0, "hidden", CM_ERR_UNAVAILABLE, "teacher 'fm' at ipc://");
}
END_TEST

/* ---------------------------------------------------------------- replicas found by DNS */

/* A resolver for the test: `name` answers the `count` addresses listed now. */
typedef struct {
    const char *name;
    int count;
    const char *addresses[3];
    int calls;
} fake_dns_t;

static trainer_resolve_state_t fake_lookup(void *context, const char *host,
                                           char addresses[][TRAINER_RESOLVE_ADDRESS], int *count) {
    fake_dns_t *dns = context;
    dns->calls++;
    *count = 0;
    if (strcmp(host, dns->name) != 0) return TRAINER_RESOLVE_DONE;
    for (int index = 0; index < dns->count; index++)
        snprintf(addresses[(*count)++], TRAINER_RESOLVE_ADDRESS, "%s", dns->addresses[index]);
    return TRAINER_RESOLVE_DONE;
}

/* Pumps until every ticket of tags[0..count) is answered (30 s to catch a hang). */
static void pump_until_answered(const int *tags, int count) {
    double give_up = cm_progress_now() + 30.0;
    for (;;) {
        int pending = 0;
        for (int index = 0; index < count; index++) pending += ticket_outcome(tags[index]) == 0;
        if (!pending) break;
        ck_assert_msg(cm_progress_now() < give_up, "%d tickets still unanswered", pending);
        ck_assert_msg(trainer_committee_pump(committee, 20) == CM_OK, "%s", cm_last_error());
    }
    for (int index = 0; index < count; index++) ck_assert_int_eq(ticket_outcome(tags[index]), 1);
}

/* Submits `count` tickets of 8 rows each and waits for them. */
static void ask_and_wait(int count) {
    int tags[16];
    ck_assert_int_le(count, 16);
    for (int index = 0; index < count; index++) {
        int32_t ids[8];
        for (int row = 0; row < 8; row++) ids[row] = (tickets_made * 8 + row) % MAX_TRAIN;
        tags[index] = submit_logits(ids, 8);
    }
    pump_until_answered(tags, count);
}

/* The counters of replica `address` ("tcp://A:P") of teacher 0; fails when it was never seen. */
static trainer_endpoint_stats_t replica(const char *address) {
    trainer_endpoint_stats_t seen[TRAINER_MAX_SEEN];
    int count = trainer_committee_endpoints(committee, 0, seen, TRAINER_MAX_SEEN);
    for (int index = 0; index < count; index++)
        if (strcmp(seen[index].address, address) == 0) return seen[index];
    ck_abort_msg("replica %s was never seen", address);
    return seen[0];
}

/* Pumps (20 ms slices) until the replica at `address` is live or not, as `live` says. */
static void pump_until_live(const char *address, int live) {
    double give_up = cm_progress_now() + 30.0;
    for (;;) {
        trainer_endpoint_stats_t seen[TRAINER_MAX_SEEN];
        int count = trainer_committee_endpoints(committee, 0, seen, TRAINER_MAX_SEEN), now = 0;
        for (int index = 0; index < count; index++)
            if (strcmp(seen[index].address, address) == 0) now = seen[index].live;
        if (now == live) return;
        ck_assert_msg(cm_progress_now() < give_up, "replica %s never became %s", address,
                      live ? "live" : "gone");
        ck_assert_msg(trainer_committee_pump(committee, 20) == CM_OK, "%s", cm_last_error());
    }
}

START_TEST(test_replicas_found_by_dns_come_and_go) {
    if (skip_without_dataset(__func__)) return;
    /* Three replicas on three loopback addresses, one port: what Swarm's tasks.NAME lists. */
    const char *hosts[3] = {"127.0.0.1", "127.0.0.2", "127.0.0.3"};
    fake_teacher_t *fakes[3] = {NULL, NULL, NULL};
    char endpoints[3][64], given[64];
    int port = 0;
    for (int attempt = 0; attempt < 5 && !fakes[2]; attempt++) {
        for (int index = 0; index < 3; index++) fake_teacher_stop(&fakes[index]);
        port = test_util_free_tcp_port();
        for (int index = 0; index < 3; index++) {
            snprintf(endpoints[index], sizeof endpoints[index], "tcp://%s:%d", hosts[index], port);
            fakes[index] = fake_teacher_start(endpoints[index], "fm", dataset->fingerprint,
                                              FAKE_TEACHER_NORMAL, 0);
            if (!fakes[index]) break;
        }
    }
    ck_assert_msg(fakes[2], "cannot bind three fake replicas on one port");
    fake_dns_t dns = {.name = "replicas.test", .count = 2, .addresses = {hosts[0], hosts[1]}};
    snprintf(given, sizeof given, "tcp://replicas.test:%d", port);
    trainer_teacher_address_t address;
    memset(&address, 0, sizeof address);
    snprintf(address.name, sizeof address.name, "fm");
    address.endpoint_count = 1;
    address.endpoints[0] = given;
    ck_assert_int_eq(trainer_cache_new(1, MAX_TRAIN, &cache), CM_OK);
    trainer_committee_config_t config = committee_config();
    config.resolve_ms = 50;
    config.resolve = fake_lookup;
    config.resolve_context = &dns;
    ck_assert_msg(trainer_committee_new(&address, 1, &config, &committee) == CM_OK, "%s",
                  cm_last_error());
    ck_assert_int_eq(trainer_cache_add_output(cache, 0, TRAINER_OUTPUT_LOGITS, CLASSES), CM_OK);

    /* Two replicas listed: both are used. */
    ask_and_wait(8);
    ck_assert_int_gt(replica(endpoints[0]).replies, 0);
    ck_assert_int_gt(replica(endpoints[1]).replies, 0);

    /* Scaled to three: the new one is greeted and used. */
    dns.count = 3;
    dns.addresses[2] = hosts[2];
    pump_until_live(endpoints[2], 1);
    double give_up = cm_progress_now() + 30.0;
    while (replica(endpoints[2]).replies == 0) {
        ck_assert_msg(cm_progress_now() < give_up, "the third replica was never asked");
        ask_and_wait(6);
    }

    /* Scaled to one: the others are closed, nothing is lost, only the last one answers. */
    dns.count = 1;
    dns.addresses[0] = hosts[2];
    pump_until_live(endpoints[0], 0);
    pump_until_live(endpoints[1], 0);
    int first = fake_teacher_requests(fakes[0]), second = fake_teacher_requests(fakes[1]);
    long third = replica(endpoints[2]).replies;
    ask_and_wait(6);
    ck_assert_int_eq(fake_teacher_requests(fakes[0]), first);
    ck_assert_int_eq(fake_teacher_requests(fakes[1]), second);
    ck_assert_int_eq(replica(endpoints[2]).replies, third + 6);
    ck_assert(!replica(endpoints[0]).live && replica(endpoints[2]).live);

    /* No replica at all: the teacher is down and (policy wait) a ticket waits for the next. */
    dns.count = 0;
    pump_until_live(endpoints[2], 0);
    ck_assert_int_ge(trainer_committee_stats(committee, 0)->down_events, 1);
    int32_t ids[4] = {1, 2, 3, 4};
    int waiting = submit_logits(ids, 4);
    for (int pumps = 0; pumps < 10; pumps++)
        ck_assert_int_eq(trainer_committee_pump(committee, 20), CM_OK);
    ck_assert_int_eq(ticket_outcome(waiting), 0);
    dns.count = 1;
    dns.addresses[0] = hosts[0]; /* back, on the first address */
    pump_until_answered(&waiting, 1);
    ck_assert_int_gt(dns.calls, 4);
    trainer_committee_free(&committee); /* before the fakes go */
    for (int index = 0; index < 3; index++) fake_teacher_stop(&fakes[index]);
}
END_TEST

START_TEST(test_system_resolver_finds_localhost_names) {
    /* The real resolver, never blocking: a numeric address needs no lookup, "localhost" is
     * answered (numeric, sorted), a name that cannot exist answers no address. */
    char host[64], port[16];
    ck_assert(!trainer_resolve_split("tcp://127.0.0.1:5555", host, 64, port, 16));
    ck_assert(!trainer_resolve_split("tcp://*:5555", host, 64, port, 16));
    ck_assert(!trainer_resolve_split("ipc:///tmp/x.sock", host, 64, port, 16));
    ck_assert(!trainer_resolve_split("tcp://[::1]:5555", host, 64, port, 16));
    ck_assert(trainer_resolve_split("tcp://tasks.fm:5555", host, 64, port, 16));
    ck_assert_str_eq(host, "tasks.fm");
    ck_assert_str_eq(port, "5555");
    const char *names[2] = {"localhost", "no-such-host.invalid"};
    for (int name = 0; name < 2; name++) {
        trainer_lookup_t *lookup = trainer_lookup_new(names[name]);
        ck_assert_ptr_nonnull(lookup);
        char addresses[TRAINER_RESOLVE_MAX][TRAINER_RESOLVE_ADDRESS];
        int count = -1;
        const char *error = NULL;
        trainer_resolve_state_t state;
        double give_up = cm_progress_now() + 30.0;
        while ((state = trainer_lookup_poll(lookup, addresses, &count, &error)) ==
               TRAINER_RESOLVE_PENDING) {
            ck_assert_msg(cm_progress_now() < give_up, "the lookup of %s never ended", names[name]);
            test_process_sleep_ms(5);
        }
        if (name == 0) {
            ck_assert_msg(state == TRAINER_RESOLVE_DONE && count >= 1, "localhost: %s",
                          error ? error : "no address");
            for (int index = 0; index < count; index++)
                ck_assert(trainer_resolve_is_numeric(addresses[index]));
        } else {
            /* no such name, or no DNS at all here (a temporary failure): never an address */
            ck_assert(count == 0);
        }
        trainer_lookup_free(lookup);
    }
}
END_TEST

/* Two replicas of teacher "fm": a fake one in `mode` and an honest fake one; every ticket is
 * answered by the honest one although the deadline is 600 s.  Returns the teacher's stats. */
static trainer_teacher_stats_t answered_despite(fake_teacher_mode_t mode) {
    char liar_endpoint[300], honest_endpoint[300];
    snprintf(liar_endpoint, sizeof liar_endpoint, "ipc://%s/liar-%d.sock", directory, (int)mode);
    snprintf(honest_endpoint, sizeof honest_endpoint, "ipc://%s/honest-%d.sock", directory,
             (int)mode);
    fake_teacher_t *liar = fake_teacher_start(liar_endpoint, "fm", dataset->fingerprint, mode, 0);
    fake_teacher_t *honest =
        fake_teacher_start(honest_endpoint, "fm", dataset->fingerprint, FAKE_TEACHER_NORMAL, 0);
    ck_assert_ptr_nonnull(liar);
    ck_assert_ptr_nonnull(honest);
    trainer_teacher_address_t address;
    memset(&address, 0, sizeof address);
    snprintf(address.name, sizeof address.name, "fm");
    address.endpoint_count = 2;
    address.endpoints[0] = liar_endpoint;
    address.endpoints[1] = honest_endpoint;
    ck_assert_int_eq(trainer_cache_new(1, MAX_TRAIN, &cache), CM_OK);
    trainer_committee_config_t config = committee_config();
    config.deadline_ms = 600000; /* waiting one out would trip the test's timeout */
    ck_assert_msg(trainer_committee_new(&address, 1, &config, &committee) == CM_OK, "%s",
                  cm_last_error());
    ck_assert_int_eq(trainer_cache_add_output(cache, 0, TRAINER_OUTPUT_LOGITS, CLASSES), CM_OK);
    enum { TICKETS = 8, IDS = 16 };
    int tickets[TICKETS];
    for (int index = 0; index < TICKETS; index++) {
        int32_t ids[IDS];
        for (int row = 0; row < IDS; row++) ids[row] = index * IDS + row;
        tickets[index] = submit_logits(ids, IDS);
    }
    double give_up = cm_progress_now() + 30.0;
    int pending = TICKETS;
    while (pending && cm_progress_now() < give_up) {
        ck_assert_msg(trainer_committee_pump(committee, 50) == CM_OK, "%s", cm_last_error());
        pending = 0;
        for (int index = 0; index < TICKETS; index++)
            pending += ticket_outcome(tickets[index]) == 0;
    }
    for (int index = 0; index < TICKETS; index++)
        ck_assert_int_eq(ticket_outcome(tickets[index]), 1);
    for (int id = 0; id < TICKETS * IDS; id++) { /* the honest teacher's values, nothing else */
        ck_assert(trainer_cache_has(cache, 0, TRAINER_OUTPUT_LOGITS, id));
        const float *row = trainer_cache_row(cache, 0, TRAINER_OUTPUT_LOGITS, id);
        for (int column = 0; column < CLASSES; column++)
            ck_assert(row[column] == (column == id % CLASSES ? 4.0f : 0.0f));
    }
    trainer_teacher_stats_t stats = *trainer_committee_stats(committee, 0);
    trainer_committee_free(&committee); /* before the fakes go */
    fake_teacher_stop(&liar);
    fake_teacher_stop(&honest);
    ck_assert_int_eq(stats.timeouts, 0);
    ck_assert_int_eq(stats.replies, TICKETS);
    return stats;
}

START_TEST(test_garbage_replica_is_asked_elsewhere) {
    if (skip_without_dataset(__func__)) return;
    trainer_teacher_stats_t stats = answered_despite(FAKE_TEACHER_GARBAGE);
    ck_assert_int_ge(stats.protocol_errors, 1);
}
END_TEST

START_TEST(test_nan_replica_is_asked_elsewhere) {
    if (skip_without_dataset(__func__)) return;
    trainer_teacher_stats_t stats = answered_despite(FAKE_TEACHER_NAN);
    ck_assert_int_ge(stats.nonfinite_replies, 1);
}
END_TEST

START_TEST(test_interruption_ends_the_waits) {
    if (skip_without_dataset(__func__)) return;
    char endpoint[300];
    snprintf(endpoint, sizeof endpoint, "ipc://%s/mute.sock", directory);
    fake_teacher_t *mute =
        fake_teacher_start(endpoint, "fm", dataset->fingerprint, FAKE_TEACHER_MUTE, 0);
    ck_assert_ptr_nonnull(mute);
    trainer_teacher_address_t address;
    memset(&address, 0, sizeof address);
    snprintf(address.name, sizeof address.name, "fm");
    address.endpoint_count = 1;
    address.endpoints[0] = endpoint;
    static volatile sig_atomic_t flag = 1;
    ck_assert_int_eq(trainer_cache_new(1, MAX_TRAIN, &cache), CM_OK);
    trainer_committee_config_t config = committee_config();
    config.handshake_ms = 600000;
    config.interrupted = &flag;
    cm_status_t status = trainer_committee_new(&address, 1, &config, &committee);
    ck_assert_msg(status == CM_ERR_CANCELLED, "%s: %s", cm_status_name(status), cm_last_error());
    ck_assert_ptr_null(committee);
    ck_assert_str_eq(cm_last_error(), "interrupted by a signal");
    fake_teacher_stop(&mute);

    /* The pump too, with a ticket that a silent teacher will never answer. */
    fake_teacher_t *silent =
        fake_teacher_start(endpoint, "fm", dataset->fingerprint, FAKE_TEACHER_SILENT_AFTER, 0);
    ck_assert_ptr_nonnull(silent);
    flag = 0;
    config.deadline_ms = 600000;
    ck_assert_msg(trainer_committee_new(&address, 1, &config, &committee) == CM_OK, "%s",
                  cm_last_error());
    ck_assert_int_eq(trainer_cache_add_output(cache, 0, TRAINER_OUTPUT_LOGITS, CLASSES), CM_OK);
    const int32_t ids[] = {1, 2, 3};
    int ticket = submit_logits(ids, 3);
    ck_assert_msg(trainer_committee_pump(committee, 0) == CM_OK, "%s", cm_last_error());
    flag = 1;
    ck_assert_int_eq(trainer_committee_pump(committee, 600000), CM_ERR_CANCELLED);
    ck_assert_int_eq(ticket_outcome(ticket), 0);
    trainer_committee_free(&committee);
    fake_teacher_stop(&silent);
}
END_TEST

Suite *check_trainer_committee_suite(void);
Suite *check_trainer_committee_suite(void) {
    Suite *suite = suite_create("trainer_committee");
    TCase *tcase = tcase_create("heads");
    tcase_set_timeout(tcase, 60);
    tcase_add_unchecked_fixture(tcase, setup_teachers, teardown_teachers);
    tcase_add_checked_fixture(tcase, setup_test, teardown_test);
    tcase_add_test(tcase, test_fetch_head_matches_checkpoints);
    tcase_add_test(tcase, test_lend_head_off_is_not_found);
    tcase_add_test(tcase, test_replicas_must_agree_on_lending);
    tcase_add_test(tcase, test_silent_replicas_time_out_and_answer_later);
    tcase_add_test(tcase, test_stopped_teacher_is_unavailable);
    tcase_add_test(tcase, test_garbage_replica_is_asked_elsewhere);
    tcase_add_test(tcase, test_nan_replica_is_asked_elsewhere);
    tcase_add_test(tcase, test_interruption_ends_the_waits);
    tcase_add_test(tcase, test_replicas_found_by_dns_come_and_go);
    tcase_add_test(tcase, test_system_resolver_finds_localhost_names);
    suite_add_tcase(suite, tcase);
    return suite;
}
