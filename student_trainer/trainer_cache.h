/*
 * trainer_cache: teacher outputs by (teacher, output, example id).
 *
 * Teacher outputs are deterministic (frozen weights, no dropout), so once a
 * teacher has answered for an example the trainer keeps the answer and
 * later epochs need no teacher traffic.  The cache holds, per teacher and
 * per output ("logits", "hidden", "tokens"), one [examples][width] float
 * array and a presence flag per example.  It is saved and loaded as a
 * safetensors file (`--cache FILE`, `--record FILE`), with the dataset
 * fingerprint and each teacher's name and model hash in the metadata, so a
 * cache recorded against one committee is never replayed against another.
 * cm_safetensors stores a CRC-32 of every array and of the metadata, so a
 * cache or record damaged on disk is refused on load, naming the file and
 * the array, instead of feeding wrong teacher outputs to the student.
 *
 * Bounded (trainer_cache_configure, --cache-memory MB): the rows of each output are one
 * contiguous address range [examples][width] in the storage dtype (F32, or F16/BF16 for half
 * the bytes; --cache-dtype).  Outputs take the bound in the order they are added: an output's
 * first rows (by example id) live in anonymous memory, the rest
 *   - spill (--cache-spill DIR): to slots of one file in DIR, created under a temporary name
 *     and unlinked at once (nothing is left behind, even after a crash), its blocks reserved
 *     with posix_fallocate when an output is added, so a full disk is one ENOSPC sentence at
 *     start and never a SIGBUS later.  Rows are written with pwrite (errors are return
 *     values) and read with pread (the page cache, not this process, holds the file's pages)
 *     or, with map_reads, through a read-only mapping of the file (a memcpy: faster, but the
 *     pages it touched count as the process's RssFile until the kernel reclaims them; a
 *     read error there is SIGBUS).  The save path streams from that mapping (its pages are
 *     dropped again after a save unless reads use it);
 *   - or are asked again (--cache-spill ask-again): a row beyond the bound is kept only while
 *     its batch is in flight (a pool of `in_flight` rows per output), then forgotten, so the
 *     feed asks the teacher again the next epoch (as --cache off does for every row).
 * The presence masks (a byte per example per output) stay in memory and count to the bound.
 */
#ifndef TRAINER_CACHE_H
#define TRAINER_CACHE_H

#include "cm_status.h"
#include "cm_tensor.h"

#include <stddef.h>
#include <stdint.h>

enum { TRAINER_OUTPUT_LOGITS, TRAINER_OUTPUT_HIDDEN, TRAINER_OUTPUT_TOKENS, TRAINER_OUTPUT_COUNT };

/* "logits", "hidden", "tokens". */
const char *trainer_cache_output_name(int output);

typedef struct trainer_cache trainer_cache_t;

/* An empty cache for `teachers` teachers over `examples` training examples (unbounded, F32). */
cm_status_t trainer_cache_new(int teachers, int examples, trainer_cache_t **out);

/* Where outputs beyond the memory bound go. */
typedef enum { TRAINER_SPILL_NONE, TRAINER_SPILL_FILE, TRAINER_SPILL_ASK_AGAIN } trainer_spill_t;

typedef struct {
    size_t memory_bytes;   /* bound on values + masks in memory; 0: none */
    trainer_spill_t spill; /* beyond the bound; NONE: refuse with a sentence */
    const char *spill_dir; /* TRAINER_SPILL_FILE: the directory of the spill file */
    cm_dtype_t dtype;      /* storage: CM_DTYPE_F32, F16 or BF16 */
    int in_flight;         /* ask-again: rows a feed may hold in flight (window x batch) */
    int map_reads;         /* spilled rows are read through the mapping, not with pread */
    int no_teachers;       /* replay: nothing can be asked again (the sentences say so) */
} trainer_cache_config_t;

/* Sets the bound, spill and storage of outputs added from now on. */
cm_status_t trainer_cache_configure(trainer_cache_t *cache, const trainer_cache_config_t *config);
void trainer_cache_free(trainer_cache_t **cache);

/* Names a teacher and its model hash (kept for the file metadata). */
void trainer_cache_set_teacher(trainer_cache_t *cache, int teacher, const char *name,
                               const char *model_sha256);

/*
 * Makes room for `output` of `teacher`, `width` floats per example (idempotent).  Beyond the
 * bound: the spill file grows (CM_ERR_IO naming the directory: cannot create, no space), or
 * the ask-again pool; with neither, CM_ERR_NOMEM saying how much is missing and which
 * options give room.
 */
cm_status_t trainer_cache_add_output(trainer_cache_t *cache, int teacher, int output, int width);

/* Rows of a teacher's "tokens" output (its token count; 1 when it has none), kept in the file. */
void trainer_cache_set_tokens(trainer_cache_t *cache, int teacher, int tokens);

/* Keeps a copy of the head teacher `teacher` lent for the interactive probes (weight
 * [classes][inputs], bias [classes]); saved with the outputs and loaded back, so a record
 * replays --dd-interactive.  CM_ERR_NOMEM with a sentence. */
cm_status_t trainer_cache_set_head(trainer_cache_t *cache, int teacher, const float *weight,
                                   const float *bias, int classes, int inputs);

/* 1 and the kept head (owned by the cache) when teacher `teacher` has one, else 0. */
int trainer_cache_head(const trainer_cache_t *cache, int teacher, const float **weight,
                       const float **bias, int *classes, int *inputs);
int trainer_cache_tokens(const trainer_cache_t *cache, int teacher);

/* Width of an output (0: not cached). */
int trainer_cache_width(const trainer_cache_t *cache, int teacher, int output);

/*
 * The row of example `id` (width floats) for an unbounded F32 output, valid for the cache's
 * life; NULL otherwise (not cached, bounded or half storage: use _put and _get).
 */
float *trainer_cache_row(trainer_cache_t *cache, int teacher, int output, int id);

/* Stores the row of `id` (width floats, converted to the storage dtype) and marks it present.
 * CM_ERR_IO naming the spill file when the write fails. */
cm_status_t trainer_cache_put(trainer_cache_t *cache, int teacher, int output, int id,
                              const float *values);

/* Copies the row of `id` into values[width] as floats (exact: F16/BF16 widen).  CM_ERR_IO
 * naming the spill file when the read fails. */
cm_status_t trainer_cache_get(const trainer_cache_t *cache, int teacher, int output, int id,
                              float *values);

/* Whether the row of `id` is kept only while in flight (ask-again beyond the bound). */
int trainer_cache_transient(const trainer_cache_t *cache, int teacher, int output, int id);

/* Bytes of values and masks in anonymous memory, and in the spill file. */
size_t trainer_cache_resident_bytes(const trainer_cache_t *cache);
size_t trainer_cache_spilled_bytes(const trainer_cache_t *cache);
/* The most anonymous memory the cache held: its resident bytes plus the largest buffers a
 * load of a saved cache (trainer_cache_load, _merge_file) used; within --cache-memory unless
 * a single row does not fit in what the bound leaves. */
size_t trainer_cache_peak_bytes(const trainer_cache_t *cache);

/* Whether the row of `id` holds a teacher answer, and marking/forgetting it (forgetting a
 * transient row frees its place in the pool). */
int trainer_cache_has(const trainer_cache_t *cache, int teacher, int output, int id);
void trainer_cache_set_has(trainer_cache_t *cache, int teacher, int output, int id, int has);

/* Rows present, for reporting. */
long trainer_cache_present(const trainer_cache_t *cache, int teacher, int output);

/*
 * Saves every output array and presence mask atomically to `path` with the dataset
 * fingerprint and the teachers' names and hashes in the metadata.
 */
cm_status_t trainer_cache_save(const trainer_cache_t *cache, const char *path,
                               const char *fingerprint);

/*
 * Loads a saved cache.  With `fingerprint` not NULL the file must have been recorded on that
 * dataset (CM_ERR_MISMATCH naming both otherwise).  Teacher names and hashes come from the
 * file; see trainer_cache_teacher_name / _sha256.  `config` (NULL: unbounded) bounds it as
 * trainer_cache_configure does, the storage dtype staying the file's: the rows stream from
 * the file (a few rows at a time, never the whole file in memory) into memory up to the bound
 * and then into the spill file, or are left out (ask-again; asked again by whoever trains), or
 * the load fails with the sentence of trainer_cache_add_output.  A damaged file is
 * CM_ERR_FORMAT naming the array (checked as it streams) and no cache.
 */
cm_status_t trainer_cache_load(const char *path, const char *fingerprint,
                               const trainer_cache_config_t *config, trainer_cache_t **out);

/*
 * Streams into `cache` the rows a saved cache holds, as trainer_cache_merge does from a cache
 * in memory, if the file was saved by the same teachers (names and hashes, in order) over as
 * many examples (*same = 1); otherwise *same = 0 and nothing is read.  Within the bound the
 * same way as trainer_cache_load.  On a damaged file (CM_ERR_FORMAT) some rows may have been
 * stored: the caller must not use the cache.
 */
cm_status_t trainer_cache_merge_file(trainer_cache_t *cache, const char *path,
                                     const char *fingerprint, int *same);

/*
 * Copies into `cache` every row that `source` holds for an output both have with the same
 * width (same teacher indices and example count assumed), converting the storage dtype;
 * transient rows are left out (they are asked again).
 */
cm_status_t trainer_cache_merge(trainer_cache_t *cache, const trainer_cache_t *source);

int trainer_cache_teachers(const trainer_cache_t *cache);
int trainer_cache_examples(const trainer_cache_t *cache);
const char *trainer_cache_teacher_name(const trainer_cache_t *cache, int teacher);
const char *trainer_cache_teacher_sha256(const trainer_cache_t *cache, int teacher);

#endif
