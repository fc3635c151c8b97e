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
 *
 * The bounded cache (tcase "cache", no teacher): spilled rows, F16/BF16 storage, the
 * ask-again pool, saves and loads of each.
 */
#include "cm_progress.h"
#include "fake_teacher.h"
#include "test_util.h"
#include "cm_wire.h"
#include "trainer_cache.h"
#include "trainer_committee.h"
#include "trainer_feed.h"

#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

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

/* ---------------------------------------------------------------- the bounded cache */

enum { CACHE_ROWS = 1000 };

static float row_value(int id, int column) { return (float)id * 100.0f + (float)column + 0.25f; }

static void put_rows(trainer_cache_t *target, int output, int width) {
    float values[16];
    for (int id = 0; id < CACHE_ROWS; id++) {
        for (int column = 0; column < width; column++) values[column] = row_value(id, column);
        ck_assert_int_eq(trainer_cache_put(target, 0, output, id, values), CM_OK);
    }
}

static void check_rows(trainer_cache_t *source, int output, int width) {
    float values[16];
    for (int id = 0; id < CACHE_ROWS; id++) {
        ck_assert(trainer_cache_has(source, 0, output, id));
        ck_assert_int_eq(trainer_cache_get(source, 0, output, id, values), CM_OK);
        for (int column = 0; column < width; column++)
            ck_assert_msg(values[column] == row_value(id, column), "row %d column %d: %g", id,
                          column, (double)values[column]);
    }
}

static int entries(const char *path) {
    char command[600], text[100];
    snprintf(command, sizeof command, "ls -A %s | wc -l", path);
    ck_assert_int_eq(test_util_run(command, text, sizeof text), 0);
    return atoi(text);
}

/*
 * Rows beyond the bound go to the spill file and come back intact (a 28-byte row straddles
 * the page-aligned boundary), the memory used stays under the bound, a save streams the
 * spilled rows into the file and loads back, merging converts F32 to F16 exactly for
 * F16-representable values, and the spill file leaves no name behind.
 */
START_TEST(test_cache_spills_to_a_file) {
    char spill[256], path[400];
    test_util_temp_dir(spill, sizeof spill);
    snprintf(path, sizeof path, "%s.safetensors", spill);
    trainer_cache_t *bounded = NULL, *loaded = NULL, *half = NULL;
    ck_assert_int_eq(trainer_cache_new(1, CACHE_ROWS, &bounded), CM_OK);
    trainer_cache_set_teacher(bounded, 0, "t", "00");
    trainer_cache_config_t config = {.memory_bytes = 20000,
                                     .spill = TRAINER_SPILL_FILE,
                                     .spill_dir = spill,
                                     .dtype = CM_DTYPE_F32};
    ck_assert_int_eq(trainer_cache_configure(bounded, &config), CM_OK);
    ck_assert_int_eq(trainer_cache_add_output(bounded, 0, TRAINER_OUTPUT_LOGITS, 10), CM_OK);
    ck_assert_int_eq(trainer_cache_add_output(bounded, 0, TRAINER_OUTPUT_HIDDEN, 7), CM_OK);
    ck_assert_int_le(trainer_cache_resident_bytes(bounded), 20000);
    ck_assert_int_ge(trainer_cache_spilled_bytes(bounded), CACHE_ROWS * (40 + 28) - 20000);
    ck_assert_int_eq(entries(spill), 0); /* unlinked at once */
    ck_assert_ptr_null(trainer_cache_row(bounded, 0, TRAINER_OUTPUT_LOGITS, 0));
    put_rows(bounded, TRAINER_OUTPUT_LOGITS, 10);
    put_rows(bounded, TRAINER_OUTPUT_HIDDEN, 7);
    check_rows(bounded, TRAINER_OUTPUT_LOGITS, 10);
    check_rows(bounded, TRAINER_OUTPUT_HIDDEN, 7);
    ck_assert_int_eq(trainer_cache_save(bounded, path, fingerprint), CM_OK);
    config.map_reads = 1; /* the same rows read through the mapping */
    ck_assert_int_eq(trainer_cache_configure(bounded, &config), CM_OK);
    check_rows(bounded, TRAINER_OUTPUT_LOGITS, 10);
    check_rows(bounded, TRAINER_OUTPUT_HIDDEN, 7);
    ck_assert_int_eq(trainer_cache_load(path, fingerprint, NULL, &loaded), CM_OK);
    check_rows(loaded, TRAINER_OUTPUT_LOGITS, 10);
    check_rows(loaded, TRAINER_OUTPUT_HIDDEN, 7);
    ck_assert_ptr_nonnull(trainer_cache_row(loaded, 0, TRAINER_OUTPUT_LOGITS, 0));

    ck_assert_int_eq(trainer_cache_new(1, CACHE_ROWS, &half), CM_OK);
    trainer_cache_set_teacher(half, 0, "t", "00");
    config.dtype = CM_DTYPE_F16;
    config.memory_bytes = 8000;
    config.map_reads = 0;
    ck_assert_int_eq(trainer_cache_configure(half, &config), CM_OK);
    ck_assert_int_eq(trainer_cache_add_output(half, 0, TRAINER_OUTPUT_LOGITS, 10), CM_OK);
    ck_assert_int_ge(trainer_cache_spilled_bytes(half), CACHE_ROWS * 20 - 8000);
    ck_assert_int_eq(trainer_cache_merge(half, loaded), CM_OK);
    /* Every value below 256 with two fraction bits is a half: those F16 rows are exact. */
    float values[10];
    for (int id = 0; id < 3; id++) {
        ck_assert_int_eq(trainer_cache_get(half, 0, TRAINER_OUTPUT_LOGITS, id, values), CM_OK);
        for (int column = 0; column < 10; column++)
            ck_assert(values[column] == row_value(id, column));
    }
    ck_assert_int_eq(trainer_cache_save(half, path, fingerprint), CM_OK);
    trainer_cache_free(&loaded);
    ck_assert_int_eq(trainer_cache_load(path, fingerprint, NULL, &loaded), CM_OK);
    ck_assert_int_eq(trainer_cache_get(loaded, 0, TRAINER_OUTPUT_LOGITS, 3, values), CM_OK);
    ck_assert(values[9] == row_value(3, 9));
    ck_assert_ptr_null(trainer_cache_row(loaded, 0, TRAINER_OUTPUT_LOGITS, 3)); /* F16 */
    trainer_cache_free(&bounded);
    trainer_cache_free(&half);
    trainer_cache_free(&loaded);
    ck_assert_int_eq(entries(spill), 0);
    unlink(path);
    test_util_remove_tree(spill);
}
END_TEST

/* F16 and BF16 storage round to the nearest half, exactly as the wire encodings do. */
START_TEST(test_cache_half_storage_rounds_like_the_wire) {
    const cm_dtype_t types[] = {CM_DTYPE_F16, CM_DTYPE_BF16};
    for (int type = 0; type < 2; type++) {
        trainer_cache_t *half = NULL;
        ck_assert_int_eq(trainer_cache_new(1, 4, &half), CM_OK);
        trainer_cache_config_t config = {.dtype = types[type]};
        ck_assert_int_eq(trainer_cache_configure(half, &config), CM_OK);
        ck_assert_int_eq(trainer_cache_add_output(half, 0, TRAINER_OUTPUT_LOGITS, 3), CM_OK);
        float in[3] = {1.0f / 3.0f, -1e-3f, 65504.0f}, out[3], wire[3];
        uint16_t bits[3];
        ck_assert_int_eq(trainer_cache_put(half, 0, TRAINER_OUTPUT_LOGITS, 2, in), CM_OK);
        ck_assert_int_eq(trainer_cache_get(half, 0, TRAINER_OUTPUT_LOGITS, 2, out), CM_OK);
        if (types[type] == CM_DTYPE_F16) {
            cm_wire_f32_to_f16(bits, in, 3);
            cm_wire_f16_to_f32(wire, bits, 3);
        } else {
            cm_wire_f32_to_bf16(bits, in, 3);
            cm_wire_bf16_to_f32(wire, bits, 3);
        }
        ck_assert(memcmp(out, wire, sizeof out) == 0);
        ck_assert(out[0] != in[0]); /* it really is stored in 16 bits */
        trainer_cache_free(&half);
    }
    trainer_cache_t *refused = NULL;
    ck_assert_int_eq(trainer_cache_new(1, 4, &refused), CM_OK);
    trainer_cache_config_t config = {.dtype = CM_DTYPE_I32};
    ck_assert_int_eq(trainer_cache_configure(refused, &config), CM_ERR_INVALID_ARG);
    trainer_cache_free(&refused);
}
END_TEST

/*
 * ask-again: rows beyond the bound live in a pool of `in_flight` rows only while present
 * (random puts and forgets against a reference), a full pool refuses with a sentence, a save
 * leaves them out; without a spill policy the bound is refused, naming the options.
 */
START_TEST(test_cache_ask_again_pool) {
    trainer_cache_t *pooled = NULL, *loaded = NULL;
    enum { IN_FLIGHT = 24 };
    ck_assert_int_eq(trainer_cache_new(1, CACHE_ROWS, &pooled), CM_OK);
    trainer_cache_set_teacher(pooled, 0, "t", "00");
    trainer_cache_config_t config = {.memory_bytes = 8000,
                                     .spill = TRAINER_SPILL_ASK_AGAIN,
                                     .dtype = CM_DTYPE_F32,
                                     .in_flight = IN_FLIGHT};
    ck_assert_int_eq(trainer_cache_configure(pooled, &config), CM_OK);
    ck_assert_int_eq(trainer_cache_add_output(pooled, 0, TRAINER_OUTPUT_LOGITS, 10), CM_OK);
    ck_assert_int_le(trainer_cache_resident_bytes(pooled), 8000);
    ck_assert_int_eq(trainer_cache_spilled_bytes(pooled), 0);
    int first = -1;
    for (int id = 0; id < CACHE_ROWS && first < 0; id++)
        if (trainer_cache_transient(pooled, 0, TRAINER_OUTPUT_LOGITS, id)) first = id;
    ck_assert_int_gt(first, 0);
    ck_assert(!trainer_cache_transient(pooled, 0, TRAINER_OUTPUT_LOGITS, first - 1));
    float values[10], got[10];
    static int present[CACHE_ROWS];
    memset(present, 0, sizeof present);
    int held = 0;
    uint32_t state = 12345;
    for (int step = 0; step < 20000; step++) {
        state = state * 1664525u + 1013904223u;
        int id = first + (int)((state >> 8) % (uint32_t)(CACHE_ROWS - first));
        if (present[id] || held == IN_FLIGHT) { /* forget one */
            if (!present[id]) continue;
            trainer_cache_set_has(pooled, 0, TRAINER_OUTPUT_LOGITS, id, 0);
            present[id] = 0;
            held--;
        } else {
            for (int column = 0; column < 10; column++) values[column] = row_value(id, column);
            ck_assert_int_eq(trainer_cache_put(pooled, 0, TRAINER_OUTPUT_LOGITS, id, values),
                             CM_OK);
            present[id] = 1;
            held++;
        }
        if (step % 97 == 0)
            for (int row = first; row < CACHE_ROWS; row++) {
                ck_assert_int_eq(trainer_cache_has(pooled, 0, TRAINER_OUTPUT_LOGITS, row),
                                 present[row]);
                if (!present[row]) continue;
                ck_assert_int_eq(trainer_cache_get(pooled, 0, TRAINER_OUTPUT_LOGITS, row, got),
                                 CM_OK);
                ck_assert(got[7] == row_value(row, 7));
            }
    }
    for (int id = first; id < CACHE_ROWS && held < IN_FLIGHT; id++)
        if (!present[id]) {
            ck_assert_int_eq(trainer_cache_put(pooled, 0, TRAINER_OUTPUT_LOGITS, id, values),
                             CM_OK);
            present[id] = 1;
            held++;
        }
    int spare = first;
    while (present[spare]) spare++;
    ck_assert_int_eq(trainer_cache_put(pooled, 0, TRAINER_OUTPUT_LOGITS, spare, values),
                     CM_ERR_INTERNAL);
    ck_assert_ptr_nonnull(strstr(cm_last_error(), "rows in flight are all taken"));
    ck_assert_int_eq(trainer_cache_put(pooled, 0, TRAINER_OUTPUT_LOGITS, 0, values), CM_OK);
    char spill[256], path[400];
    test_util_temp_dir(spill, sizeof spill);
    snprintf(path, sizeof path, "%s/pool.safetensors", spill);
    ck_assert_int_eq(trainer_cache_save(pooled, path, fingerprint), CM_OK);
    ck_assert_int_eq(trainer_cache_load(path, fingerprint, NULL, &loaded), CM_OK);
    ck_assert_int_eq(trainer_cache_present(loaded, 0, TRAINER_OUTPUT_LOGITS), 1); /* row 0 */
    trainer_cache_free(&loaded);
    trainer_cache_free(&pooled);
    test_util_remove_tree(spill);

    trainer_cache_t *refusing = NULL;
    ck_assert_int_eq(trainer_cache_new(1, CACHE_ROWS, &refusing), CM_OK);
    config = (trainer_cache_config_t){.memory_bytes = 8000, .dtype = CM_DTYPE_F32};
    ck_assert_int_eq(trainer_cache_configure(refusing, &config), CM_OK);
    ck_assert_int_eq(trainer_cache_add_output(refusing, 0, TRAINER_OUTPUT_LOGITS, 10),
                     CM_ERR_NOMEM);
    ck_assert_ptr_nonnull(strstr(cm_last_error(), "give --cache-spill DIR"));
    trainer_cache_free(&refusing);
}
END_TEST

/* A lent head rides with the outputs: saved, loaded back bit for bit, absent when never set. */
START_TEST(test_cache_keeps_a_lent_head) {
    char folder[256], path[400];
    test_util_temp_dir(folder, sizeof folder);
    snprintf(path, sizeof path, "%s/heads.safetensors", folder);
    trainer_cache_t *saved = NULL, *loaded = NULL;
    ck_assert_int_eq(trainer_cache_new(2, CACHE_ROWS, &saved), CM_OK);
    trainer_cache_set_teacher(saved, 0, "t", "00");
    trainer_cache_set_teacher(saved, 1, "u", "00");
    for (int teacher = 0; teacher < 2; teacher++)
        ck_assert_int_eq(trainer_cache_add_output(saved, teacher, TRAINER_OUTPUT_HIDDEN, 3), CM_OK);
    float weight[10 * 3], bias[10];
    for (int i = 0; i < 30; i++) weight[i] = 0.25f * (float)i - 3.0f;
    for (int i = 0; i < 10; i++) bias[i] = 1.0f / (float)(i + 1);
    ck_assert_int_eq(trainer_cache_set_head(saved, 1, weight, bias, 10, 3), CM_OK);
    ck_assert_int_eq(trainer_cache_save(saved, path, fingerprint), CM_OK);
    trainer_cache_free(&saved);

    ck_assert_int_eq(trainer_cache_load(path, fingerprint, NULL, &loaded), CM_OK);
    const float *got_weight, *got_bias;
    int classes = 0, inputs = 0;
    ck_assert(!trainer_cache_head(loaded, 0, &got_weight, &got_bias, &classes, &inputs));
    ck_assert(trainer_cache_head(loaded, 1, &got_weight, &got_bias, &classes, &inputs));
    ck_assert_int_eq(classes, 10);
    ck_assert_int_eq(inputs, 3);
    ck_assert(memcmp(got_weight, weight, sizeof weight) == 0);
    ck_assert(memcmp(got_bias, bias, sizeof bias) == 0);
    ck_assert_int_eq(trainer_cache_examples(loaded), CACHE_ROWS);
    trainer_cache_free(&loaded);
    test_util_remove_tree(folder);
}
END_TEST

/*
 * Loading a saved cache under a bound (replay: trainer_cache_load with a config; --resume and
 * --cache FILE: trainer_cache_merge_file): the rows stream into memory and the spill file with
 * the memory held (values, masks and the load's buffers) never above the bound, rows the file
 * lacks stay absent, F32 rows merge into F16 storage exactly, ask-again leaves out the rows
 * beyond the bound, too small a bound is the sentence of training (without "ask-again" when
 * there are no teachers), and a file of another teacher is not merged.
 */
START_TEST(test_cache_loads_within_the_bound) {
    char spill[256], path[400];
    test_util_temp_dir(spill, sizeof spill);
    snprintf(path, sizeof path, "%s/saved.safetensors", spill);
    trainer_cache_t *full = NULL, *loaded = NULL;
    ck_assert_int_eq(trainer_cache_new(1, CACHE_ROWS, &full), CM_OK);
    trainer_cache_set_teacher(full, 0, "t", "00");
    ck_assert_int_eq(trainer_cache_add_output(full, 0, TRAINER_OUTPUT_LOGITS, 10), CM_OK);
    ck_assert_int_eq(trainer_cache_add_output(full, 0, TRAINER_OUTPUT_HIDDEN, 7), CM_OK);
    put_rows(full, TRAINER_OUTPUT_LOGITS, 10);
    put_rows(full, TRAINER_OUTPUT_HIDDEN, 7);
    for (int id = 5; id < CACHE_ROWS; id += 7) /* holes, in memory and beyond the bound */
        trainer_cache_set_has(full, 0, TRAINER_OUTPUT_LOGITS, id, 0);
    ck_assert_int_eq(trainer_cache_save(full, path, fingerprint), CM_OK);

    trainer_cache_config_t config = {.memory_bytes = 20000,
                                     .spill = TRAINER_SPILL_FILE,
                                     .spill_dir = spill,
                                     .dtype = CM_DTYPE_F32,
                                     .no_teachers = 1};
    ck_assert_int_eq(trainer_cache_load(path, fingerprint, &config, &loaded), CM_OK);
    ck_assert_int_le(trainer_cache_peak_bytes(loaded), 20000);
    ck_assert_int_ge(trainer_cache_peak_bytes(loaded), trainer_cache_resident_bytes(loaded) + 40);
    ck_assert_int_ge(trainer_cache_spilled_bytes(loaded), CACHE_ROWS * (40 + 28) - 20000);
    check_rows(loaded, TRAINER_OUTPUT_HIDDEN, 7);
    float values[16];
    for (int id = 0; id < CACHE_ROWS; id++) {
        int hole = id % 7 == 5;
        ck_assert_int_eq(trainer_cache_has(loaded, 0, TRAINER_OUTPUT_LOGITS, id), !hole);
        if (hole) continue;
        ck_assert_int_eq(trainer_cache_get(loaded, 0, TRAINER_OUTPUT_LOGITS, id, values), CM_OK);
        for (int column = 0; column < 10; column++)
            ck_assert(values[column] == row_value(id, column));
    }
    trainer_cache_free(&loaded);

    /* Merged into a bounded F16 cache of the same teacher (as --resume does). */
    trainer_cache_t *half = NULL;
    ck_assert_int_eq(trainer_cache_new(1, CACHE_ROWS, &half), CM_OK);
    trainer_cache_set_teacher(half, 0, "t", "00");
    config = (trainer_cache_config_t){.memory_bytes = 8000,
                                      .spill = TRAINER_SPILL_FILE,
                                      .spill_dir = spill,
                                      .dtype = CM_DTYPE_F16};
    ck_assert_int_eq(trainer_cache_configure(half, &config), CM_OK);
    ck_assert_int_eq(trainer_cache_add_output(half, 0, TRAINER_OUTPUT_LOGITS, 10), CM_OK);
    int same = 0;
    ck_assert_int_eq(trainer_cache_merge_file(half, path, fingerprint, &same), CM_OK);
    ck_assert_int_eq(same, 1);
    ck_assert_int_le(trainer_cache_peak_bytes(half), 8000);
    ck_assert_int_eq(trainer_cache_present(half, 0, TRAINER_OUTPUT_LOGITS),
                     CACHE_ROWS - (CACHE_ROWS - 5 + 6) / 7);
    for (int id = 0; id < 3; id++) { /* F16-representable: exact */
        ck_assert_int_eq(trainer_cache_get(half, 0, TRAINER_OUTPUT_LOGITS, id, values), CM_OK);
        for (int column = 0; column < 10; column++)
            ck_assert(values[column] == row_value(id, column));
    }
    trainer_cache_free(&half);

    /* ask-again: the rows beyond the bound are left out (the teachers are asked again). */
    trainer_cache_t *pooled = NULL;
    ck_assert_int_eq(trainer_cache_new(1, CACHE_ROWS, &pooled), CM_OK);
    trainer_cache_set_teacher(pooled, 0, "t", "00");
    config = (trainer_cache_config_t){.memory_bytes = 20000,
                                      .spill = TRAINER_SPILL_ASK_AGAIN,
                                      .dtype = CM_DTYPE_F32,
                                      .in_flight = 16};
    ck_assert_int_eq(trainer_cache_configure(pooled, &config), CM_OK);
    ck_assert_int_eq(trainer_cache_add_output(pooled, 0, TRAINER_OUTPUT_LOGITS, 10), CM_OK);
    ck_assert_int_eq(trainer_cache_merge_file(pooled, path, fingerprint, &same), CM_OK);
    ck_assert_int_le(trainer_cache_peak_bytes(pooled), 20000);
    long kept = trainer_cache_present(pooled, 0, TRAINER_OUTPUT_LOGITS);
    ck_assert_msg(kept > 100 && kept < CACHE_ROWS / 2, "kept %ld rows", kept);
    for (int id = 0; id < CACHE_ROWS; id++)
        if (trainer_cache_transient(pooled, 0, TRAINER_OUTPUT_LOGITS, id))
            ck_assert(!trainer_cache_has(pooled, 0, TRAINER_OUTPUT_LOGITS, id));
    trainer_cache_free(&pooled);

    /* Too small a bound with nowhere to go; another teacher's file is not merged. */
    config =
        (trainer_cache_config_t){.memory_bytes = 8000, .dtype = CM_DTYPE_F32, .no_teachers = 1};
    ck_assert_int_eq(trainer_cache_load(path, fingerprint, &config, &loaded), CM_ERR_NOMEM);
    ck_assert_ptr_null(loaded);
    ck_assert_ptr_nonnull(strstr(cm_last_error(), "give --cache-spill DIR"));
    ck_assert_ptr_null(strstr(cm_last_error(), "ask-again"));
    trainer_cache_t *other = NULL;
    ck_assert_int_eq(trainer_cache_new(1, CACHE_ROWS, &other), CM_OK);
    trainer_cache_set_teacher(other, 0, "u", "00");
    ck_assert_int_eq(trainer_cache_add_output(other, 0, TRAINER_OUTPUT_LOGITS, 10), CM_OK);
    ck_assert_int_eq(trainer_cache_merge_file(other, path, fingerprint, &same), CM_OK);
    ck_assert_int_eq(same, 0);
    ck_assert_int_eq(trainer_cache_present(other, 0, TRAINER_OUTPUT_LOGITS), 0);
    trainer_cache_free(&other);
    trainer_cache_free(&full);
    ck_assert_int_eq(entries(spill), 1); /* the saved file; no spill file left */
    test_util_remove_tree(spill);
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
    TCase *bounded = tcase_create("cache");
    tcase_set_timeout(bounded, 60);
    tcase_add_test(bounded, test_cache_spills_to_a_file);
    tcase_add_test(bounded, test_cache_half_storage_rounds_like_the_wire);
    tcase_add_test(bounded, test_cache_ask_again_pool);
    tcase_add_test(bounded, test_cache_loads_within_the_bound);
    tcase_add_test(bounded, test_cache_keeps_a_lent_head);
    suite_add_tcase(suite, bounded);
    return suite;
}
