/*
 * trainer_feed: what the training loop trains on next, and the teacher
 * outputs it needs, asked ahead.
 *
 * The feed owns
 *   - the epoch plan: a seeded permutation of the trainable rows 0 ..
 *     trainable-1 and of the transfer rows transfer_base .. transfer_base +
 *     transfer-1 (--transfer-split: unlabelled rows only teachers annotate),
 *     shuffled together, so every batch mixes both in proportion (seed and
 *     epoch number alone decide it, so a resumed run sees the same batches;
 *     the --holdout tail and rows beyond --max-train are never in it; with
 *     no transfer rows the permutation is the one of the trainable rows
 *     alone) cut into batches of `batch` rows, and the cursor: the next
 *     batch to train, which the trainer's state saves;
 *   - the look-ahead window: before batch b is handed out, the requests of
 *     batches b .. b+window-1 are out, so teachers compute while the student
 *     trains (one batch only in epochs that filter: the decision uses the
 *     current student);
 *   - the filtering decisions: which (row, teacher) pairs are asked, from
 *     the method's `choose` hook (NULL: every pair), and the counts of the
 *     pairs it saved (teachers count the forward passes they did not run);
 *   - the only ledger of tickets in flight: every ticket submitted to the
 *     committee names the feed as its owner, the committee hands the reply
 *     (or the news that it was given up) back to it exactly once, and the
 *     feed stores the rows in the cache.  A batch is handed out when its
 *     tickets are all complete; rows a teacher was given up for (policy
 *     skip) are reported missing;
 *   - what the cache keeps: everything (--cache memory or FILE), or only
 *     until the batch is trained (--cache off: later epochs ask again; with
 *     --cache-spill ask-again the same for the rows beyond --cache-memory).
 *     A reply the cache cannot store (the spill file's disk) fails
 *     trainer_feed_next with the cache's sentence.
 *
 * Without a committee (replay) the cache is the record: nothing is asked.
 * The cache and the committee are borrowed.  Single-threaded.
 */
#ifndef TRAINER_FEED_H
#define TRAINER_FEED_H

#include "cm_status.h"
#include "trainer_cache.h"
#include "trainer_committee.h"

#include <stdint.h>

enum { TRAINER_FEED_MAX_WINDOW = 16, TRAINER_FEED_MAX_BATCH = 4096 };

/*
 * The method's filtering decision for batch `index` (rows ids[0..rows)): sets
 * kept[teacher][row] to 0 for the pairs not worth asking (all are 1 on entry).  Called when
 * the batch's requests are made, in epochs that filter only.  In a replay (no committee) it is
 * called when the batch is handed out, and a pair not kept is left out of the batch as an
 * unasked one is in a live run with --cache off (batch.kept).
 */
typedef void (*trainer_feed_choose_fn)(void *context, int index, const int32_t *ids, int rows,
                                       uint8_t *const *kept);

typedef struct {
    int trainable;     /* rows 0 .. trainable-1 of the training split are trained */
    int transfer;      /* and the transfer rows transfer_base .. transfer_base+transfer-1 */
    int transfer_base; /* >= trainable: the first transfer row (rows are the cache's) */
    int batch;         /* rows per batch, 1 .. TRAINER_FEED_MAX_BATCH */
    int window;        /* batches asked ahead, 1 .. TRAINER_FEED_MAX_WINDOW */
    long seed;         /* with the epoch number, decides the permutation */
    int teacher_count; /* 0 .. TRAINER_COMMITTEE_MAX, as in the cache */
    unsigned needs[TRAINER_COMMITTEE_MAX]; /* outputs asked of each teacher (1u << OUTPUT_*) */
    int forget;                            /* --cache off: forget a batch's rows once trained */
    trainer_feed_choose_fn choose;         /* NULL: ask every pair */
    void *choose_context;
    void (*waiting)(void *context); /* called after every pump while a batch is awaited */
    void *waiting_context;
} trainer_feed_config_t;

/* A batch handed out by trainer_feed_next; ids valid until the next epoch starts. */
typedef struct {
    int index;                          /* within the epoch */
    int rows;                           /* <= batch (the last one may be short) */
    const int32_t *ids;                 /* [rows] training rows */
    int missing[TRAINER_COMMITTEE_MAX]; /* rows lacking an output the teacher is asked for */
    double waited;                      /* seconds spent waiting for its teacher outputs */
    /* A filtering replay's choice: kept[teacher][row] == 0 leaves that pair out (NULL: none). */
    const uint8_t *kept[TRAINER_COMMITTEE_MAX];
} trainer_feed_batch_t;

typedef struct trainer_feed trainer_feed_t;

/* A feed over `cache` asking `committee` (NULL: replay, the cache holds everything). */
cm_status_t trainer_feed_new(const trainer_feed_config_t *config, trainer_committee_t *committee,
                             trainer_cache_t *cache, trainer_feed_t **out);

/* Frees the feed (tickets still open are the committee's to drop); NULL-safe. */
void trainer_feed_free(trainer_feed_t **feed);

/* Plans epoch `epoch` (1-based) and puts the cursor at batch `cursor` (a resumed epoch);
 * `filtering`: ask only the pairs the choose hook keeps this epoch.  Nothing may be in flight. */
void trainer_feed_start_epoch(trainer_feed_t *feed, int epoch, int cursor, int filtering);

/* Batches per epoch, and the cursor: the next batch to train (batches: the epoch is over). */
int trainer_feed_batches(const trainer_feed_t *feed);
int trainer_feed_cursor(const trainer_feed_t *feed);

/* Rows in the plan (trainable + transfer), and this epoch's permutation of them (batch b is
 * order[b * batch ...]). */
int trainer_feed_rows(const trainer_feed_t *feed);
const int32_t *trainer_feed_order(const trainer_feed_t *feed);

/*
 * The batch at the cursor, once the teacher outputs it needs are present or given up: makes
 * the window's requests, then pumps the committee until every ticket of the batch is complete.
 * CM_OK with *batch; otherwise the committee's failure (CM_ERR_CANCELLED on a signal,
 * CM_ERR_UNAVAILABLE under policy fail, ...) and the cursor stays.  CM_ERR_INVALID_ARG when
 * the epoch is over.
 */
cm_status_t trainer_feed_next(trainer_feed_t *feed, trainer_feed_batch_t *batch);

/* The batch handed out was trained: its rows leave the cache if it forgets, the cursor moves. */
void trainer_feed_done(trainer_feed_t *feed, const trainer_feed_batch_t *batch);

/* Batches whose requests are out beyond the cursor (0 .. window), and open tickets. */
int trainer_feed_ahead(const trainer_feed_t *feed);
int trainer_feed_open_tickets(const trainer_feed_t *feed);

/* Tickets completed (answered + given up) since the start, and completions of a ticket that
 * was not open (never: the committee tells each owner once). */
long trainer_feed_completed(const trainer_feed_t *feed);
long trainer_feed_stray_completions(const trainer_feed_t *feed);

/* This epoch: pairs whose outputs were absent from the cache, and those filtering did not ask. */
long trainer_feed_filter_needed(const trainer_feed_t *feed, int teacher);
long trainer_feed_filter_skipped(const trainer_feed_t *feed, int teacher);

#endif
