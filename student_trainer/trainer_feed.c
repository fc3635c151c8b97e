/*
 * trainer_feed: see trainer_feed.h.
 *
 * Window slots: batch b's requests belong to slot b % window; a slot is
 * reused only after its batch was handed out, i.e. after all its tickets
 * completed.  The ledger is an array of entries (reused through a free
 * list) whose index is the ticket's tag at the committee; an entry names its
 * slot, so a completion counts that slot down.
 */
#include "trainer_feed.h"

#include "cm_progress.h"
#include "cm_rng.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    int open; /* submitted, not yet completed */
    int slot;
    int next_free;
} entry_t;

struct trainer_feed {
    trainer_feed_config_t config;
    trainer_committee_t *committee;
    trainer_cache_t *cache;
    int32_t *order; /* [rows] this epoch's permutation */
    int rows;       /* trainable + transfer */
    int batches;
    int epoch;
    int cursor;         /* the next batch to train */
    int submitted_upto; /* batches of this epoch whose requests are out */
    int filtering;
    uint8_t *kept[TRAINER_COMMITTEE_MAX]; /* [batch] the choose hook's decision, scratch */
    int pending[TRAINER_FEED_MAX_WINDOW]; /* open tickets per slot */
    entry_t *ledger;
    int ledger_capacity, free_entry, open_tickets;
    long completed, stray;
    cm_status_t failure; /* a reply the cache could not store (the spill file), or CM_OK */
    char failure_text[512];
    long filter_needed[TRAINER_COMMITTEE_MAX], filter_skipped[TRAINER_COMMITTEE_MAX];
};

cm_status_t trainer_feed_new(const trainer_feed_config_t *config, trainer_committee_t *committee,
                             trainer_cache_t *cache, trainer_feed_t **out) {
    *out = NULL;
    if (config->trainable < 1 || config->batch < 1 || config->batch > TRAINER_FEED_MAX_BATCH ||
        config->window < 1 || config->window > TRAINER_FEED_MAX_WINDOW ||
        config->teacher_count < 0 || config->teacher_count > TRAINER_COMMITTEE_MAX ||
        config->transfer < 0 || (config->transfer > 0 && config->transfer_base < config->trainable))
        return cm_fail(CM_ERR_INVALID_ARG,
                       "a feed needs rows, a batch of 1 to %d rows and a window of 1 to %d",
                       TRAINER_FEED_MAX_BATCH, TRAINER_FEED_MAX_WINDOW);
    trainer_feed_t *feed = calloc(1, sizeof *feed);
    if (!feed) return cm_fail(CM_ERR_NOMEM, "out of memory for the feed");
    feed->config = *config;
    feed->committee = committee;
    feed->cache = cache;
    feed->free_entry = -1;
    feed->rows = config->trainable + config->transfer;
    feed->batches = (feed->rows + config->batch - 1) / config->batch;
    feed->order = malloc(sizeof(int32_t) * (size_t)feed->rows);
    int ok = feed->order != NULL;
    for (int teacher = 0; teacher < config->teacher_count; teacher++)
        ok = ok && (feed->kept[teacher] = malloc((size_t)config->batch)) != NULL;
    if (!ok) {
        trainer_feed_free(&feed);
        return cm_fail(CM_ERR_NOMEM, "out of memory for the feed");
    }
    *out = feed;
    return CM_OK;
}

void trainer_feed_free(trainer_feed_t **feed_pointer) {
    trainer_feed_t *feed = *feed_pointer;
    if (!feed) return;
    free(feed->order);
    for (int teacher = 0; teacher < TRAINER_COMMITTEE_MAX; teacher++) free(feed->kept[teacher]);
    free(feed->ledger);
    free(feed);
    *feed_pointer = NULL;
}

void trainer_feed_start_epoch(trainer_feed_t *feed, int epoch, int cursor, int filtering) {
    int trainable = feed->config.trainable;
    for (int row = 0; row < trainable; row++) feed->order[row] = row;
    for (int row = 0; row < feed->config.transfer; row++)
        feed->order[trainable + row] = feed->config.transfer_base + row;
    cm_rng_t rng;
    cm_rng_seed(&rng, (uint64_t)feed->config.seed * 1000003ull + (uint64_t)epoch);
    cm_rng_shuffle(&rng, feed->order, (size_t)feed->rows);
    feed->epoch = epoch;
    feed->cursor = feed->submitted_upto = cursor;
    feed->filtering = filtering && feed->config.choose;
    memset(feed->filter_needed, 0, sizeof feed->filter_needed);
    memset(feed->filter_skipped, 0, sizeof feed->filter_skipped);
}

int trainer_feed_batches(const trainer_feed_t *feed) { return feed->batches; }

int trainer_feed_cursor(const trainer_feed_t *feed) { return feed->cursor; }

int trainer_feed_rows(const trainer_feed_t *feed) { return feed->rows; }

const int32_t *trainer_feed_order(const trainer_feed_t *feed) { return feed->order; }

static int batch_rows(const trainer_feed_t *feed, int index) {
    int left = feed->rows - index * feed->config.batch;
    return left < feed->config.batch ? left : feed->config.batch;
}

static const int32_t *batch_ids(const trainer_feed_t *feed, int index) {
    return feed->order + (size_t)index * (size_t)feed->config.batch;
}

/* Whether the cache lacks an output `teacher` is asked for, for row `id`. */
static int absent(const trainer_feed_t *feed, int teacher, int id) {
    for (int output = 0; output < TRAINER_OUTPUT_COUNT; output++)
        if (((feed->config.needs[teacher] >> output) & 1) &&
            !trainer_cache_has(feed->cache, teacher, output, id))
            return 1;
    return 0;
}

/* ---------------------------------------------------------------- the ledger */

/* The committee's hand-off: the outcome of ticket `tag`.  The feed keeps the answered rows. */
static void complete(void *owner, int tag, const trainer_reply_t *reply) {
    trainer_feed_t *feed = owner;
    entry_t *entry = tag >= 0 && tag < feed->ledger_capacity ? &feed->ledger[tag] : NULL;
    if (!entry || !entry->open) {
        feed->stray++; /* not ours or told twice: nothing of it is kept */
        return;
    }
    entry->open = 0;
    entry->next_free = feed->free_entry;
    feed->free_entry = tag;
    feed->open_tickets--;
    feed->pending[entry->slot]--;
    feed->completed++;
    if (!reply) return; /* given up: the rows stay missing */
    for (int output = 0; output < TRAINER_OUTPUT_COUNT; output++) {
        if (!((reply->outputs >> output) & 1)) continue;
        int width = reply->width[output];
        /* An output the cache has no room for was not asked by us. */
        if (!trainer_cache_width(feed->cache, reply->teacher, output)) continue;
        for (int row = 0; row < reply->count && feed->failure == CM_OK; row++)
            feed->failure = trainer_cache_put(feed->cache, reply->teacher, output, reply->rows[row],
                                              reply->values[output] + (size_t)row * (size_t)width);
        if (feed->failure != CM_OK)
            snprintf(feed->failure_text, sizeof feed->failure_text, "%s", cm_last_error());
    }
}

static cm_status_t submit(trainer_feed_t *feed, int slot, int teacher, const int32_t *ids,
                          int count) {
    if (feed->free_entry < 0) {
        int capacity = feed->ledger_capacity ? 2 * feed->ledger_capacity : 64;
        entry_t *grown = realloc(feed->ledger, sizeof *grown * (size_t)capacity);
        if (!grown) return cm_fail(CM_ERR_NOMEM, "out of memory for the ledger of requests");
        for (int index = capacity - 1; index >= feed->ledger_capacity; index--) {
            grown[index] = (entry_t){.open = 0, .next_free = feed->free_entry};
            feed->free_entry = index;
        }
        feed->ledger = grown;
        feed->ledger_capacity = capacity;
    }
    int tag = feed->free_entry;
    cm_status_t status = trainer_committee_submit(feed->committee, teacher, ids, count,
                                                  feed->config.needs[teacher], complete, feed, tag);
    if (status != CM_OK) return status;
    entry_t *entry = &feed->ledger[tag];
    feed->free_entry = entry->next_free;
    *entry = (entry_t){.open = 1, .slot = slot, .next_free = -1};
    feed->open_tickets++;
    feed->pending[slot]++;
    return CM_OK;
}

/* feed->kept for batch `index`: every pair, or (filtering) the pairs the method keeps. */
static void choose_kept(trainer_feed_t *feed, int index, const int32_t *ids, int rows) {
    for (int teacher = 0; teacher < feed->config.teacher_count; teacher++)
        memset(feed->kept[teacher], 1, (size_t)rows);
    if (feed->filtering)
        feed->config.choose(feed->config.choose_context, index, ids, rows, feed->kept);
}

/* Asks for the rows of batch `index` that the cache lacks (and filtering keeps). */
static cm_status_t submit_batch(trainer_feed_t *feed, int index) {
    int slot = index % feed->config.window, rows = batch_rows(feed, index);
    const int32_t *ids = batch_ids(feed, index);
    feed->pending[slot] = 0;
    choose_kept(feed, index, ids, rows);
    /* A ticket asks rows of one split: the training rows and the transfer rows go apart. */
    int32_t missing[2][TRAINER_FEED_MAX_BATCH];
    for (int teacher = 0; teacher < feed->config.teacher_count; teacher++) {
        if (!feed->config.needs[teacher]) continue;
        int count[2] = {0, 0};
        for (int row = 0; row < rows; row++) {
            if (!absent(feed, teacher, ids[row])) continue;
            if (feed->filtering) {
                feed->filter_needed[teacher]++;
                if (!feed->kept[teacher][row]) {
                    feed->filter_skipped[teacher]++;
                    continue;
                }
            }
            int part = feed->config.transfer > 0 && ids[row] >= feed->config.transfer_base;
            missing[part][count[part]++] = ids[row];
        }
        int per_request = trainer_committee_info(feed->committee, teacher)->max_examples;
        if (per_request > TRAINER_FEED_MAX_BATCH) per_request = TRAINER_FEED_MAX_BATCH;
        for (int part = 0; part < 2; part++)
            for (int start = 0; start < count[part]; start += per_request) {
                int chunk = count[part] - start < per_request ? count[part] - start : per_request;
                cm_status_t status = submit(feed, slot, teacher, missing[part] + start, chunk);
                if (status != CM_OK) return status;
            }
    }
    return CM_OK;
}

/* ---------------------------------------------------------------- the batches */

cm_status_t trainer_feed_next(trainer_feed_t *feed, trainer_feed_batch_t *batch) {
    int index = feed->cursor;
    if (index >= feed->batches)
        return cm_fail(CM_ERR_INVALID_ARG, "epoch %d has no batch %d (it has %d)", feed->epoch,
                       index, feed->batches);
    memset(batch, 0, sizeof *batch);
    if (feed->committee) {
        /* Filtering decides per batch with the current student, so it asks one batch ahead. */
        int ahead = feed->filtering ? 1 : feed->config.window;
        while (feed->submitted_upto < feed->batches && feed->submitted_upto < index + ahead) {
            cm_status_t status = submit_batch(feed, feed->submitted_upto);
            if (status != CM_OK) return status;
            feed->submitted_upto++;
        }
        int slot = index % feed->config.window;
        double started = cm_progress_now();
        while (feed->pending[slot] > 0 && feed->failure == CM_OK) {
            cm_status_t status = trainer_committee_pump(feed->committee, 100);
            if (feed->config.waiting) feed->config.waiting(feed->config.waiting_context);
            if (status != CM_OK) return status;
        }
        if (feed->failure != CM_OK) return cm_fail(feed->failure, "%s", feed->failure_text);
        batch->waited = cm_progress_now() - started;
    } else if (feed->filtering) {
        /* A replay filters the recorded outputs: every pair counts as asked for, as with
         * --cache off live, and the pairs not kept stay out of this batch. */
        int rows = batch_rows(feed, index);
        choose_kept(feed, index, batch_ids(feed, index), rows);
        for (int teacher = 0; teacher < feed->config.teacher_count; teacher++) {
            if (!feed->config.needs[teacher]) continue;
            batch->kept[teacher] = feed->kept[teacher];
            feed->filter_needed[teacher] += rows;
            for (int row = 0; row < rows; row++)
                feed->filter_skipped[teacher] += !feed->kept[teacher][row];
        }
    }
    batch->index = index;
    batch->rows = batch_rows(feed, index);
    batch->ids = batch_ids(feed, index);
    for (int teacher = 0; teacher < feed->config.teacher_count; teacher++)
        for (int row = 0; feed->config.needs[teacher] && row < batch->rows; row++)
            batch->missing[teacher] += absent(feed, teacher, batch->ids[row]);
    return CM_OK;
}

void trainer_feed_done(trainer_feed_t *feed, const trainer_feed_batch_t *batch) {
    /* Ask again next epoch: every row (--cache off), or the rows kept only while in flight. */
    if (feed->committee)
        for (int teacher = 0; teacher < feed->config.teacher_count; teacher++)
            for (int output = 0; output < TRAINER_OUTPUT_COUNT; output++)
                for (int row = 0; row < batch->rows; row++)
                    if (feed->config.forget ||
                        trainer_cache_transient(feed->cache, teacher, output, batch->ids[row]))
                        trainer_cache_set_has(feed->cache, teacher, output, batch->ids[row], 0);
    feed->cursor = batch->index + 1;
}

int trainer_feed_ahead(const trainer_feed_t *feed) { return feed->submitted_upto - feed->cursor; }

int trainer_feed_open_tickets(const trainer_feed_t *feed) { return feed->open_tickets; }

long trainer_feed_completed(const trainer_feed_t *feed) { return feed->completed; }

long trainer_feed_stray_completions(const trainer_feed_t *feed) { return feed->stray; }

long trainer_feed_filter_needed(const trainer_feed_t *feed, int teacher) {
    return feed->filter_needed[teacher];
}

long trainer_feed_filter_skipped(const trainer_feed_t *feed, int teacher) {
    return feed->filter_skipped[teacher];
}
