/*
 * cm_dataset: datasets, splits and views.
 *
 * A dataset is a dataset folder (cm_manifest.h describes its dataset.json):
 *
 *   DIR/dataset.json          the manifest
 *   DIR/<split>/labels.npy    classification: integer class ids [N] (uint8, int16, int32,
 *                             int64); regression: float32 targets [N] or [N,k].
 *                             Required except in the "transfer" split.
 *   DIR/<split>/ids.npy       optional int32/int64 [N]: unique ids in [0, 2^31-1];
 *                             without it the id of row r is r
 *   DIR/<split>/<view>.npy    one per stored (not derived) view, N rows
 *
 * or a built-in name ("fashion-mnist", read from Debian's dataset-fashion-mnist in
 * /usr/share/datasets/fashion-mnist, options->directory or $COMMITTEE_DATA_DIR), which
 * builds exactly the structure its exported folder would give (`teacher-server data export
 * fashion-mnist DIR`): uint8 pixels [N,28,28] in view "full" with normalize
 * {divide 255, mean 0.286, std 0.353}, and "pool14"/"pool7" derived by avgpool:2/avgpool:4.
 *
 * Files are memory-mapped, never copied: a view's features are produced on
 * demand by cm_dataset_gather (dtype conversion, normalization, transform).
 * The one exception is the "standardize" transform: its per-feature mean
 * and std are computed once at load, in one streaming pass over every
 * stored row of the source's train split (2 x features doubles of memory,
 * the time of reading the split once; --max-train does not change them, so
 * a subset run is fed like a full one), applied to every split, and
 * recorded in view_json ("standardize": {"mean": [...], "std": [...]}) so a
 * checkpoint says how its inputs were made.  A constant feature gets std 1.
 * Labels (as int32), targets (as float) and ids are read into memory.
 *
 * THE FINGERPRINT identifies the dataset, never a view or a subset.  It is
 * the lower-case hex SHA-256 of this text (UTF-8, "\n" line ends):
 *
 *   committee-dataset-fingerprint/1\n
 *   <the canonical manifest (cm_manifest.h)>\n
 *   then one line per data file, splits in the order train, test, valid, transfer
 *   (those the manifest lists), and in each split labels.npy (if present), ids.npy
 *   (if present), then <view>.npy of each stored view in the byte order of the names:
 *   <split>/<file> <file size in bytes> <lower-case hex SHA-256 of the whole file>\n
 *
 * A built-in dataset hashes the bytes its export would write, so it has the
 * same fingerprint as its folder.  --max-train/--max-test keep only the
 * first rows of a split and never change the fingerprint.
 *
 * Per-file hashes are cached, keyed by (absolute path, size, mtime), in
 * $COMMITTEE_CACHE_DIR, else $XDG_CACHE_HOME/committee, else
 * ~/.cache/committee (files/<sha256 of the path>).  A cache that cannot be
 * written is skipped silently; an entry that does not parse or does not
 * match is ignored.
 *
 * VALIDATION.  Every open checks the manifest, every file's header
 * (magic, version, C order, little-endian, dtype and shape as declared),
 * its size (truncated or trailing bytes), that counts agree across a
 * split's views, labels and ids, every label (in range or finite), and
 * that ids are unique.  The values of a view (NaN/Inf in a dense view, a
 * category at or beyond its cardinality, a token at or beyond the vocabulary)
 * are checked in the same pass that hashes the file, i.e. on the first open
 * of a file (size+mtime) for the views that open needs, and for every view
 * by `data check` (options->validate_all); the cache entry records which
 * checks a file passed, so later starts neither hash nor scan it.  Every
 * failure is one sentence naming the file and the problem, and the load
 * leaves nothing behind (*out stays NULL).
 */
#ifndef CM_DATASET_H
#define CM_DATASET_H

#include "cm_manifest.h"
#include "cm_npy.h"
#include "cm_status.h"

#include <limits.h>
#include <stdint.h>
#include <stdio.h>

/* The wire carries train and test; valid and transfer exist in folders. */
typedef enum {
    CM_SPLIT_TRAIN,
    CM_SPLIT_TEST,
    CM_SPLIT_VALID,
    CM_SPLIT_TRANSFER,
    CM_SPLIT_COUNT
} cm_split_t;

/* "train" / "test" / "valid" / "transfer". */
const char *cm_split_name(cm_split_t split);
/* Parses a split name; CM_ERR_INVALID_ARG with a sentence otherwise. */
cm_status_t cm_split_parse(const char *text, cm_split_t *split);

typedef struct {
    int count;             /* rows used (the first `count` of the files: --max-*) */
    int stored;            /* rows in the files */
    const int32_t *labels; /* classification: [count], each in [0, classes); else NULL */
    const float *targets;  /* regression: [count][targets]; else NULL */
    const int32_t *ids;    /* [count] the rows' ids, or NULL: id = row */
    /* Internal: owned storage, the mapped view array, the id -> row map. */
    int32_t *labels_owned, *ids_owned, *row_of_id, id_base;
    int64_t id_span;      /* entries of row_of_id (dense map) */
    int32_t *sorted_ids;  /* [stored][2] (id, row) sorted by id, when the ids are sparse */
    float *targets_owned; /* [stored][targets] */
    cm_npy_t *view_data;  /* the stored array the view reads (NULL: no view) */
} cm_split_data_t;

typedef struct {
    char name[64];         /* the manifest's name ("fashion-mnist") */
    char source[PATH_MAX]; /* what to give --data again: a built-in name or the folder's path */
    char view[64];         /* the view loaded; "" when none */
    cm_task_t task;
    int classes; /* output width: the classes, or the targets of a regression */
    int targets; /* regression: floats per example; 0 for classification */
    cm_view_kind_t view_kind;
    cm_npy_dtype_t view_dtype;      /* of the stored array */
    int rank;                       /* of one example of the view */
    int64_t shape[CM_NPY_MAX_RANK]; /* one example of the view, e.g. 7 x 7 */
    int height, width;              /* last two axes (1 x F for a flat view) */
    int features;                   /* floats per example: product of shape */
    char fingerprint[65];           /* hex SHA-256, see above */
    char manifest_sha256[65];       /* hex SHA-256 of the canonical manifest */
    char *task_json;                /* cm_manifest_task_json, for checkpoint metadata */
    char *view_json;                /* cm_manifest_view_json of the view ("" if none) */
    cm_split_data_t splits[CM_SPLIT_COUNT];
    cm_manifest_t *manifest;
    /* Internal: the gather's plan. */
    const cm_manifest_view_t *view_spec, *stored_spec;
    int pool, channel_span;
    float *lookup; /* uint8 views with one normalization: feature by block sum */
    float *standard_mean, *standard_std; /* [features] "standardize" statistics, or NULL */
    void *files;                         /* every data file, for cm_dataset_describe */
    int file_count;
} cm_dataset_t;

typedef struct {
    const char *directory; /* built-in sources; NULL: $COMMITTEE_DATA_DIR or the Debian path */
    int max_train;         /* 0: all; else the first max_train training rows */
    int max_test;          /* 0: all; else the first max_test test rows */
    int validate_all;      /* check every view's values (not only the loaded one's), uncached */
} cm_dataset_options_t;

/*
 * Loads dataset `data` (a built-in name or a folder path) in view `view`
 * (NULL: no view, for checking and describing).  options may be NULL.
 */
cm_status_t cm_dataset_load(cm_dataset_t **out, const char *data, const char *view,
                            const cm_dataset_options_t *options);

/* Frees a dataset and sets *dataset to NULL; NULL-safe. */
void cm_dataset_free(cm_dataset_t **dataset);

/*
 * out[count][features] <- the view's features of rows[count] of `split`
 * (each in [0, splits[split].count)).  Categorical and token views give
 * their integer values as floats (exact below 2^24).  Pure: no allocation.
 */
void cm_dataset_gather(const cm_dataset_t *dataset, cm_split_t split, const int32_t *rows,
                       int count, float *out);

/* The same for the consecutive rows first .. first+count-1. */
void cm_dataset_gather_range(const cm_dataset_t *dataset, cm_split_t split, int first, int count,
                             float *out);

/* The id of a row (the row itself without ids.npy). */
int32_t cm_dataset_id(const cm_dataset_t *dataset, cm_split_t split, int row);

/* The row of an id among the split's `count` rows, or -1. */
int cm_dataset_row(const cm_dataset_t *dataset, cm_split_t split, int32_t id);

/*
 * rows[count] <- the rows of ids[count]; CM_ERR_OUT_OF_RANGE naming the
 * first id the split does not hold.  rows may equal ids (in place).
 */
cm_status_t cm_dataset_rows(const cm_dataset_t *dataset, cm_split_t split, const int32_t *ids,
                            int count, int32_t *rows);

/* The normalized value of a raw zero in the view (the background of an image view). */
float cm_dataset_background(const cm_dataset_t *dataset);

/* Comma-separated views of a built-in dataset ("full,pool14,pool7"), or NULL. */
const char *cm_dataset_views(const char *name);

/*
 * Prints what the dataset holds: name, task, splits with counts, every view
 * with kind, dtype and per-example shape, and the fingerprint.
 */
void cm_dataset_describe(const cm_dataset_t *dataset, FILE *out);

/*
 * Writes the dataset as a folder at `directory` (created; must not hold a
 * dataset.json yet): dataset.json and every data file.  The folder has the
 * dataset's fingerprint.
 */
cm_status_t cm_dataset_export(const cm_dataset_t *dataset, const char *directory);

/* The cache directory in use (see above) into out[size]; 0 when there is none. */
int cm_dataset_cache_dir(char *out, size_t size);

/*
 * Parses one Fashion-MNIST split from its two gzip-compressed IDX files held in memory (what the
 * built-in loader reads from disk; exported for tests and the fuzzer): on CM_OK, *pixels_out is
 * a uint8 [N,28,28] array and *labels_out an int64 [N] array named after `split_name`, both
 * owned by the caller (cm_npy_free).  The *_path arguments only name the files in error
 * sentences.  Bad gzip data, magic numbers, dimensions, counts, truncation and labels out of
 * range are CM_ERR_* with a sentence; then both outputs are NULL.
 */
cm_status_t cm_dataset_parse_fashion(const char *images_path, const uint8_t *images_raw,
                                     size_t images_size, const char *labels_path,
                                     const uint8_t *labels_raw, size_t labels_size,
                                     const char *split_name, cm_npy_t **pixels_out,
                                     cm_npy_t **labels_out);

/*
 * The metadata pairs every checkpoint carries about its data, so a checkpoint says what it was
 * trained on and how to feed it: view, dataset name, fingerprint, task, preprocessing and the
 * manifest's hash, as key, value, ... initializers of a `const char *metadata[]`.
 */
#define CM_DATASET_METADATA(dataset)                                                               \
    "view", (dataset)->view, "dataset", (dataset)->name, "fingerprint", (dataset)->fingerprint,    \
        "task", (dataset)->task_json, "preprocessing", (dataset)->view_json, "manifest_sha256",    \
        (dataset)->manifest_sha256

#endif
