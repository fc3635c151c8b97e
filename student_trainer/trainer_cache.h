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
 */
#ifndef TRAINER_CACHE_H
#define TRAINER_CACHE_H

#include "cm_status.h"

#include <stddef.h>
#include <stdint.h>

enum { TRAINER_OUTPUT_LOGITS, TRAINER_OUTPUT_HIDDEN, TRAINER_OUTPUT_TOKENS, TRAINER_OUTPUT_COUNT };

/* "logits", "hidden", "tokens". */
const char *trainer_cache_output_name(int output);

typedef struct trainer_cache trainer_cache_t;

/* An empty cache for `teachers` teachers over `examples` training examples. */
cm_status_t trainer_cache_new(int teachers, int examples, trainer_cache_t **out);
void trainer_cache_free(trainer_cache_t **cache);

/* Names a teacher and its model hash (kept for the file metadata). */
void trainer_cache_set_teacher(trainer_cache_t *cache, int teacher, const char *name,
                               const char *model_sha256);

/* Makes room for `output` of `teacher`, `width` floats per example (idempotent). */
cm_status_t trainer_cache_add_output(trainer_cache_t *cache, int teacher, int output, int width);

/* Rows of a teacher's "tokens" output (its token count; 1 when it has none), kept in the file. */
void trainer_cache_set_tokens(trainer_cache_t *cache, int teacher, int tokens);
int trainer_cache_tokens(const trainer_cache_t *cache, int teacher);

/* Width of an output (0: not cached). */
int trainer_cache_width(const trainer_cache_t *cache, int teacher, int output);

/* The row of example `id` (width floats), valid for the cache's life; NULL if not cached. */
float *trainer_cache_row(trainer_cache_t *cache, int teacher, int output, int id);

/* Whether the row of `id` holds a teacher answer, and marking/forgetting it. */
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
 * file; see trainer_cache_teacher_name / _sha256.
 */
cm_status_t trainer_cache_load(const char *path, const char *fingerprint, trainer_cache_t **out);

/*
 * Copies into `cache` every row that `source` holds for an output both have with the same
 * width (same teacher indices and example count assumed).
 */
void trainer_cache_merge(trainer_cache_t *cache, const trainer_cache_t *source);

int trainer_cache_teachers(const trainer_cache_t *cache);
int trainer_cache_examples(const trainer_cache_t *cache);
const char *trainer_cache_teacher_name(const trainer_cache_t *cache, int teacher);
const char *trainer_cache_teacher_sha256(const trainer_cache_t *cache, int teacher);

#endif
