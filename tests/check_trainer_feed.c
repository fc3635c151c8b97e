/*
 * trainer_feed: the epoch plan, the look-ahead window, the ledger of
 * tickets, what the cache keeps and the filtering hook.
 *
 * The teachers are fake_teacher threads of this process (answers that
 * depend only on the example id: class id % 10 gets 4), reached through a
 * real trainer_committee over ipc:// in a temp directory, so every ticket
 * goes through the committee's hand-off to the feed.  The plan is also
 * checked without a committee (replay).
 *
 * Covers: the plan is a permutation of the trainable rows that seed and
 * epoch alone decide, and a feed started at a cursor (a resumed run) hands
 * out the very batches the first run had there; the window never holds
 * more than `window` batches ahead (one when filtering); each ticket
 * completes once, the teacher answers every request once and the cache
 * holds its values; a cached epoch asks nothing; --cache off forgets the
 * batch once trained and asks again; under policy skip the rows of a
 * silent teacher are reported missing; the choose hook's pairs are not
 * asked and are counted as saved; transfer rows (--transfer-split) join the plan once each,
 * and a teacher that does not serve their split is refused at the handshake.
 */
#include "cm_progress.h"
#include "fake_teacher.h"
#include "test_util.h"
#include "trainer_cache.h"
#include "trainer_committee.h"
#include "trainer_feed.h"

#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { ROWS = 100, TRAINABLE = 90, BATCH = 8, CLASSES = 10 };

static const char fingerprint[] =
    "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

static char directory[256], endpoint[400];
static fake_teacher_t *fake;
static trainer_committee_t *committee;
static trainer_cache_t *cache;
static trainer_feed_t *feed;

static void setup(void) {
    test_util_temp_dir(directory, sizeof directory);
    ck_assert_msg(directory[0], "cannot create a temp directory");
    snprintf(endpoint, sizeof endpoint, "ipc://%s/fake.sock", directory);
}

static void teardown(void) {
    trainer_feed_free(&feed);
    trainer_committee_free(&committee); /* before the fake goes */
    fake_teacher_stop(&fake);
    trainer_cache_free(&cache);
    test_util_remove_tree(directory);
}

/* A fake teacher in `mode` and a committee of it under `policy` with `deadline_ms`. */
static void start_teacher(fake_teacher_mode_t mode, int normal, trainer_policy_t policy,
                          int deadline_ms) {
    fake = fake_teacher_start(endpoint, "fake", fingerprint, mode, normal);
    ck_assert_ptr_nonnull(fake);
    trainer_teacher_address_t address;
    memset(&address, 0, sizeof address);
    snprintf(address.name, sizeof address.name, "fake");
    address.endpoint_count = 1;
    address.endpoints[0] = endpoint;
    trainer_committee_config_t config = {.window = 4,
                                         .deadline_ms = deadline_ms,
                                         .handshake_ms = 30000,
                                         .heartbeat_ms = 1000,
                                         .policy = policy,
                                         .encoding = CM_DTYPE_F32,
                                         .max_examples = 4096,
                                         .fingerprint = fingerprint,
                                         .classes = CLASSES,
                                         .train_examples = ROWS};
    ck_assert_msg(trainer_committee_new(&address, 1, &config, &committee) == CM_OK, "%s",
                  cm_last_error());
    ck_assert_int_eq(trainer_cache_new(1, ROWS, &cache), CM_OK);
    ck_assert_int_eq(trainer_cache_add_output(cache, 0, TRAINER_OUTPUT_LOGITS, CLASSES), CM_OK);
}

static trainer_feed_config_t feed_config(int teachers, int window) {
    trainer_feed_config_t config = {.trainable = TRAINABLE,
                                    .batch = BATCH,
                                    .window = window,
                                    .seed = 7,
                                    .teacher_count = teachers};
    if (teachers) config.needs[0] = 1u << TRAINER_OUTPUT_LOGITS;
    return config;
}

/* The next batch, asserting it came. */
static trainer_feed_batch_t next_batch(void) {
    trainer_feed_batch_t batch;
    cm_status_t status = trainer_feed_next(feed, &batch);
    ck_assert_msg(status == CM_OK, "%s: %s", cm_status_name(status), cm_last_error());
    return batch;
}

/* Trains through the rest of the epoch, checking the window and (unless `skip`) the values. */
static void run_epoch(int window, int expect_values) {
    while (trainer_feed_cursor(feed) < trainer_feed_batches(feed)) {
        trainer_feed_batch_t batch = next_batch();
        ck_assert_int_le(trainer_feed_ahead(feed), window);
        ck_assert_int_ge(trainer_feed_ahead(feed), 1);
        for (int row = 0; expect_values && row < batch.rows; row++) {
            const float *logits =
                trainer_cache_row(cache, 0, TRAINER_OUTPUT_LOGITS, batch.ids[row]);
            ck_assert(trainer_cache_has(cache, 0, TRAINER_OUTPUT_LOGITS, batch.ids[row]));
            for (int column = 0; column < CLASSES; column++)
                ck_assert(logits[column] == (column == batch.ids[row] % CLASSES ? 4.0f : 0.0f));
        }
        if (expect_values) ck_assert_int_eq(batch.missing[0], 0);
        trainer_feed_done(feed, &batch);
    }
}

START_TEST(test_plan_is_deterministic_across_resume) {
    trainer_feed_config_t config = feed_config(0, 1);
    ck_assert_int_eq(trainer_feed_new(&config, NULL, NULL, &feed), CM_OK);
    trainer_feed_t *resumed = NULL;
    ck_assert_int_eq(trainer_feed_new(&config, NULL, NULL, &resumed), CM_OK);
    ck_assert_int_eq(trainer_feed_batches(feed), (TRAINABLE + BATCH - 1) / BATCH);
    trainer_feed_start_epoch(feed, 3, 0, 0);
    int seen[TRAINABLE] = {0}, first[TRAINABLE];
    memcpy(first, trainer_feed_order(feed), sizeof first);
    for (int index = 0; index < TRAINABLE; index++) seen[first[index]]++;
    for (int row = 0; row < TRAINABLE; row++) ck_assert_int_eq(seen[row], 1); /* no holdout */
    trainer_feed_start_epoch(resumed, 3, 5, 0); /* a run resumed at batch 5 of epoch 3 */
    ck_assert_int_eq(trainer_feed_cursor(resumed), 5);
    ck_assert(memcmp(trainer_feed_order(resumed), first, sizeof first) == 0);
    int batches = 0, trained = 0;
    while (trainer_feed_cursor(feed) < trainer_feed_batches(feed)) {
        trainer_feed_batch_t batch = next_batch();
        ck_assert_int_eq(batch.index, batches);
        ck_assert(batch.ids == trainer_feed_order(feed) + batches * BATCH);
        if (batch.index >= 5) {
            trainer_feed_batch_t again;
            ck_assert_int_eq(trainer_feed_next(resumed, &again), CM_OK);
            ck_assert_int_eq(again.index, batch.index);
            ck_assert_int_eq(again.rows, batch.rows);
            ck_assert(memcmp(again.ids, batch.ids, sizeof(int32_t) * (size_t)batch.rows) == 0);
            trainer_feed_done(resumed, &again);
        }
        trained += batch.rows;
        batches++;
        trainer_feed_done(feed, &batch);
    }
    ck_assert_int_eq(trained, TRAINABLE);
    ck_assert_int_eq(trainer_feed_cursor(resumed), batches);
    trainer_feed_batch_t none;
    ck_assert_int_eq(trainer_feed_next(feed, &none), CM_ERR_INVALID_ARG);
    trainer_feed_start_epoch(feed, 4, 0, 0); /* another epoch, another order */
    ck_assert(memcmp(trainer_feed_order(feed), first, sizeof first) != 0);
    trainer_feed_start_epoch(feed, 3, 0, 0); /* and back */
    ck_assert(memcmp(trainer_feed_order(feed), first, sizeof first) == 0);
    trainer_feed_free(&resumed);
    trainer_feed_free(&resumed); /* NULL-safe */
}
END_TEST

/* --transfer-split: the transfer rows join the plan once each, shuffled in with the trainable
 * rows, decided by seed and epoch alone; no transfer rows leave the plan as it was. */
START_TEST(test_transfer_rows_join_the_plan) {
    enum { TRANSFER = 13, BASE = ROWS };
    trainer_feed_config_t config = feed_config(0, 1);
    config.transfer = TRANSFER;
    config.transfer_base = BASE;
    ck_assert_int_eq(trainer_feed_new(&config, NULL, NULL, &feed), CM_OK);
    ck_assert_int_eq(trainer_feed_rows(feed), TRAINABLE + TRANSFER);
    ck_assert_int_eq(trainer_feed_batches(feed), (TRAINABLE + TRANSFER + BATCH - 1) / BATCH);
    trainer_feed_start_epoch(feed, 2, 0, 0);
    int seen[BASE + TRANSFER] = {0}, transfer_in_first_half = 0;
    const int32_t *order = trainer_feed_order(feed);
    for (int index = 0; index < TRAINABLE + TRANSFER; index++) {
        ck_assert(order[index] < TRAINABLE ||
                  (order[index] >= BASE && order[index] < BASE + TRANSFER));
        seen[order[index]]++;
        transfer_in_first_half += index < (TRAINABLE + TRANSFER) / 2 && order[index] >= BASE;
    }
    for (int row = 0; row < TRAINABLE; row++) ck_assert_int_eq(seen[row], 1);
    for (int row = BASE; row < BASE + TRANSFER; row++) ck_assert_int_eq(seen[row], 1);
    ck_assert_msg(transfer_in_first_half > 0 && transfer_in_first_half < TRANSFER,
                  "the transfer rows are not shuffled in (%d in the first half)",
                  transfer_in_first_half);
    int32_t first[TRAINABLE + TRANSFER];
    memcpy(first, order, sizeof first);
    trainer_feed_t *again = NULL;
    ck_assert_int_eq(trainer_feed_new(&config, NULL, NULL, &again), CM_OK);
    trainer_feed_start_epoch(again, 2, 3, 0);
    ck_assert(memcmp(trainer_feed_order(again), first, sizeof first) == 0);
    trainer_feed_free(&again);
    int trained = 0;
    while (trainer_feed_cursor(feed) < trainer_feed_batches(feed)) {
        trainer_feed_batch_t batch = next_batch();
        trained += batch.rows;
        trainer_feed_done(feed, &batch);
    }
    ck_assert_int_eq(trained, TRAINABLE + TRANSFER);
    /* Without transfer rows: the permutation of the trainable rows alone, as before. */
    trainer_feed_config_t plain = feed_config(0, 1), zero = plain;
    zero.transfer_base = BASE;
    trainer_feed_t *without = NULL, *with_zero = NULL;
    ck_assert_int_eq(trainer_feed_new(&plain, NULL, NULL, &without), CM_OK);
    ck_assert_int_eq(trainer_feed_new(&zero, NULL, NULL, &with_zero), CM_OK);
    trainer_feed_start_epoch(without, 2, 0, 0);
    trainer_feed_start_epoch(with_zero, 2, 0, 0);
    ck_assert(memcmp(trainer_feed_order(without), trainer_feed_order(with_zero),
                     sizeof(int32_t) * TRAINABLE) == 0);
    trainer_feed_free(&without);
    trainer_feed_free(&with_zero);
    config.transfer_base = TRAINABLE - 1; /* overlapping the trainable rows */
    ck_assert_int_eq(trainer_feed_new(&config, NULL, NULL, &again), CM_ERR_INVALID_ARG);
}
END_TEST

/* A teacher whose Hello does not list the transfer split (here one that lists none, as peers of
 * minor version 0 and 1 do) is refused at the handshake with a sentence naming it. */
START_TEST(test_teacher_without_the_transfer_split_is_refused) {
    fake = fake_teacher_start(endpoint, "fake", fingerprint, FAKE_TEACHER_NORMAL, 0);
    ck_assert_ptr_nonnull(fake);
    trainer_teacher_address_t address;
    memset(&address, 0, sizeof address);
    snprintf(address.name, sizeof address.name, "fake");
    address.endpoint_count = 1;
    address.endpoints[0] = endpoint;
    trainer_committee_config_t config = {.window = 4,
                                         .deadline_ms = 30000,
                                         .handshake_ms = 30000,
                                         .heartbeat_ms = 1000,
                                         .policy = TRAINER_POLICY_WAIT,
                                         .encoding = CM_DTYPE_F32,
                                         .max_examples = 4096,
                                         .fingerprint = fingerprint,
                                         .classes = CLASSES,
                                         .train_examples = ROWS,
                                         .transfer_split = CM_SPLIT_TRANSFER,
                                         .transfer_base = ROWS,
                                         .transfer_examples = 5};
    ck_assert_int_eq(trainer_committee_new(&address, 1, &config, &committee), CM_ERR_NOT_FOUND);
    ck_assert_msg(strstr(cm_last_error(), "teacher 'fake'") &&
                      strstr(cm_last_error(), "does not serve the 'transfer' split"),
                  "%s", cm_last_error());
    ck_assert_ptr_null(committee);
}
END_TEST

START_TEST(test_window_and_ledger) {
    start_teacher(FAKE_TEACHER_NORMAL, 0, TRAINER_POLICY_WAIT, 60000);
    trainer_feed_config_t config = feed_config(1, 3);
    ck_assert_int_eq(trainer_feed_new(&config, committee, cache, &feed), CM_OK);
    trainer_feed_start_epoch(feed, 1, 0, 0);
    run_epoch(3, 1);
    int batches = trainer_feed_batches(feed);
    /* One ticket per batch (the teacher takes 4096 ids), each completed once. */
    ck_assert_int_eq(trainer_feed_completed(feed), batches);
    ck_assert_int_eq(trainer_feed_stray_completions(feed), 0);
    ck_assert_int_eq(trainer_feed_open_tickets(feed), 0);
    ck_assert_int_eq(fake_teacher_requests(fake), batches);
    ck_assert_int_eq(trainer_committee_stats(committee, 0)->replies, batches);
    /* A cached epoch asks nothing. */
    trainer_feed_start_epoch(feed, 2, 0, 0);
    run_epoch(3, 1);
    ck_assert_int_eq(fake_teacher_requests(fake), batches);
    ck_assert_int_eq(trainer_feed_completed(feed), batches);
}
END_TEST

START_TEST(test_cache_off_forgets) {
    start_teacher(FAKE_TEACHER_NORMAL, 0, TRAINER_POLICY_WAIT, 60000);
    trainer_feed_config_t config = feed_config(1, 2);
    config.forget = 1;
    ck_assert_int_eq(trainer_feed_new(&config, committee, cache, &feed), CM_OK);
    trainer_feed_start_epoch(feed, 1, 0, 0);
    trainer_feed_batch_t batch = next_batch();
    ck_assert(trainer_cache_has(cache, 0, TRAINER_OUTPUT_LOGITS, batch.ids[0]));
    trainer_feed_done(feed, &batch);
    for (int row = 0; row < batch.rows; row++)
        ck_assert(!trainer_cache_has(cache, 0, TRAINER_OUTPUT_LOGITS, batch.ids[row]));
    run_epoch(2, 1);
    int batches = trainer_feed_batches(feed);
    ck_assert_int_eq(trainer_cache_present(cache, 0, TRAINER_OUTPUT_LOGITS), 0);
    trainer_feed_start_epoch(feed, 2, 0, 0);
    run_epoch(2, 1);
    ck_assert_int_eq(fake_teacher_requests(fake), 2 * batches); /* asked again */
    ck_assert_int_eq(trainer_feed_completed(feed), 2 * batches);
    ck_assert_int_eq(trainer_feed_stray_completions(feed), 0);
}
END_TEST

START_TEST(test_skip_reports_missing_rows) {
    /* Answers the first request only; the next one misses its (short) deadline and the
     * teacher is down: under skip every later ticket is given up at once. */
    start_teacher(FAKE_TEACHER_SILENT_AFTER, 1, TRAINER_POLICY_SKIP, 300);
    trainer_feed_config_t config = feed_config(1, 1);
    ck_assert_int_eq(trainer_feed_new(&config, committee, cache, &feed), CM_OK);
    trainer_feed_start_epoch(feed, 1, 0, 0);
    trainer_feed_batch_t batch = next_batch();
    ck_assert_int_eq(batch.missing[0], 0);
    trainer_feed_done(feed, &batch);
    long missing = 0;
    while (trainer_feed_cursor(feed) < trainer_feed_batches(feed)) {
        batch = next_batch();
        ck_assert_int_eq(batch.missing[0], batch.rows);
        missing += batch.missing[0];
        trainer_feed_done(feed, &batch);
    }
    ck_assert_int_eq(missing, TRAINABLE - BATCH);
    ck_assert_int_eq(trainer_feed_completed(feed), trainer_feed_batches(feed));
    ck_assert_int_eq(trainer_feed_open_tickets(feed), 0);
    ck_assert_int_eq(trainer_feed_stray_completions(feed), 0);
    ck_assert_int_eq(trainer_committee_stats(committee, 0)->failed_tickets,
                     trainer_feed_batches(feed) - 1);
}
END_TEST

/* Keeps the even rows of every batch: the odd ones are not worth asking. */
static int choose_calls;
static void keep_even(void *context, int index, const int32_t *ids, int rows,
                      uint8_t *const *kept) {
    (void)context;
    (void)ids;
    ck_assert_int_eq(index, choose_calls);
    choose_calls++;
    for (int row = 1; row < rows; row += 2) kept[0][row] = 0;
}

START_TEST(test_filtering_asks_the_chosen_pairs) {
    start_teacher(FAKE_TEACHER_NORMAL, 0, TRAINER_POLICY_WAIT, 60000);
    trainer_feed_config_t config = feed_config(1, 4);
    config.choose = keep_even;
    choose_calls = 0;
    ck_assert_int_eq(trainer_feed_new(&config, committee, cache, &feed), CM_OK);
    trainer_feed_start_epoch(feed, 1, 0, 1);
    long missing = 0;
    while (trainer_feed_cursor(feed) < trainer_feed_batches(feed)) {
        trainer_feed_batch_t batch = next_batch();
        ck_assert_int_eq(trainer_feed_ahead(feed), 1); /* filtering asks one batch ahead */
        ck_assert_int_eq(batch.missing[0], batch.rows / 2);
        for (int row = 0; row < batch.rows; row++)
            ck_assert_int_eq(trainer_cache_has(cache, 0, TRAINER_OUTPUT_LOGITS, batch.ids[row]),
                             row % 2 == 0);
        missing += batch.missing[0];
        trainer_feed_done(feed, &batch);
    }
    ck_assert_int_eq(choose_calls, trainer_feed_batches(feed));
    ck_assert_int_eq(trainer_feed_filter_needed(feed, 0), TRAINABLE);
    ck_assert_int_eq(trainer_feed_filter_skipped(feed, 0), missing);
    ck_assert_int_eq(trainer_feed_filter_skipped(feed, 0), TRAINABLE / 2);
    /* Without filtering this epoch, the hook is not asked and the rest is fetched. */
    trainer_feed_start_epoch(feed, 2, 0, 0);
    run_epoch(4, 1);
    ck_assert_int_eq(choose_calls, trainer_feed_batches(feed));
    ck_assert_int_eq(trainer_feed_filter_needed(feed, 0), 0);
}
END_TEST

START_TEST(test_bad_config_is_refused) {
    trainer_feed_config_t config = feed_config(0, TRAINER_FEED_MAX_WINDOW + 1);
    ck_assert_int_eq(trainer_feed_new(&config, NULL, NULL, &feed), CM_ERR_INVALID_ARG);
    ck_assert_ptr_null(feed);
    config = feed_config(0, 1);
    config.batch = TRAINER_FEED_MAX_BATCH + 1;
    ck_assert_int_eq(trainer_feed_new(&config, NULL, NULL, &feed), CM_ERR_INVALID_ARG);
}
END_TEST

Suite *check_trainer_feed_suite(void);
Suite *check_trainer_feed_suite(void) {
    Suite *suite = suite_create("trainer_feed");
    TCase *tcase = tcase_create("feed");
    tcase_set_timeout(tcase, 60);
    tcase_add_checked_fixture(tcase, setup, teardown);
    tcase_add_test(tcase, test_plan_is_deterministic_across_resume);
    tcase_add_test(tcase, test_transfer_rows_join_the_plan);
    tcase_add_test(tcase, test_teacher_without_the_transfer_split_is_refused);
    tcase_add_test(tcase, test_window_and_ledger);
    tcase_add_test(tcase, test_cache_off_forgets);
    tcase_add_test(tcase, test_skip_reports_missing_rows);
    tcase_add_test(tcase, test_filtering_asks_the_chosen_pairs);
    tcase_add_test(tcase, test_bad_config_is_refused);
    suite_add_tcase(suite, tcase);
    return suite;
}
