/*
 * cm_manifest: a dataset folder's dataset.json, parsed and checked.
 *
 *   { "format": "committee-dataset/1",
 *     "name": "my-data",
 *     "task": {"type": "classification", "classes": 10, "class_names": ["..."]}
 *          or {"type": "regression", "targets": 2},
 *     "splits": ["train", "test"],                        (plus "valid", "transfer")
 *     "views": {
 *       "full":  {"kind": "dense", "normalize": {"divide": 255, "mean": [0.286], "std": [0.353]}},
 *       "pool7": {"from": "full", "transform": "avgpool:4"},
 *       "ids":   {"kind": "categorical", "cardinality": [671, 9066]},
 *       "text":  {"kind": "tokens", "vocab": 20000, "pad": 0} } }
 *
 * A dense feature is (x / divide - mean[c]) / std[c], where c is the index
 * along the first trailing axis when mean and std have that many entries
 * (a column of an [N,F] table, a channel of [N,C,H,W]) and 0 when they have
 * one; divide defaults to 1, no normalize means mean 0, std 1.  A derived
 * view ("from" + "transform") reads another, stored, dense view: its
 * normalization is the source's, then "avgpool:K" averages K x K blocks of
 * the last two axes, or "standardize" subtracts each feature's mean and
 * divides by its standard deviation, both over the train split of the
 * source after its normalization (cm_dataset computes them once at load; a
 * constant feature gets std 1).  Unknown keys are errors (a typo must not
 * be ignored).
 *
 * The canonical form (cm_manifest_canonical) is what the fingerprint hashes:
 * JSON without whitespace, object keys sorted by their bytes, strings with
 * only '"', '\' and control characters escaped ("\u00XX", lower-case hex),
 * integers in decimal, reals as C's printf("%.17g") (-0.0 as 0), true/false/null.
 *
 * cm_manifest_parse works on text in memory (tests, fuzzing); the caller
 * reads the file.  Every failure is one sentence naming `source` (the path).
 */
#ifndef CM_MANIFEST_H
#define CM_MANIFEST_H

#include "cm_status.h"

#include <stddef.h>
#include <stdint.h>

#define CM_MANIFEST_FORMAT "committee-dataset/1"

enum { CM_MANIFEST_MAX_VIEWS = 16, CM_MANIFEST_NAME_MAX = 64, CM_MANIFEST_MAX_COLUMNS = 64 };

typedef enum { CM_TASK_CLASSIFICATION, CM_TASK_REGRESSION } cm_task_t;
typedef enum { CM_VIEW_DENSE, CM_VIEW_CATEGORICAL, CM_VIEW_TOKENS } cm_view_kind_t;

/* "dense", "categorical", "tokens". */
const char *cm_view_kind_name(cm_view_kind_t kind);
/* "classification", "regression". */
const char *cm_task_name(cm_task_t task);

typedef struct {
    char name[CM_MANIFEST_NAME_MAX];
    char from[CM_MANIFEST_NAME_MAX]; /* "" for a stored view (its own <split>/<name>.npy) */
    cm_view_kind_t kind;             /* a derived view's is its source's */
    int pool;                        /* avgpool:K of a derived view; 0: none */
    int standardize;                 /* "standardize": per-feature train statistics (pool 1) */
    /* dense */
    double divide;
    int normalize_count; /* entries of mean and std; 0: no normalization */
    double *mean, *std;  /* [normalize_count] */
    /* categorical */
    int columns;          /* entries of cardinality */
    int64_t *cardinality; /* [columns] */
    /* tokens */
    int64_t vocab, pad;
} cm_manifest_view_t;

typedef struct {
    char name[CM_MANIFEST_NAME_MAX];
    cm_task_t task;
    int classes;        /* classification */
    char **class_names; /* [classes] or NULL */
    int targets;        /* regression: floats per example */
    int has_split[4];   /* indexed like cm_split_t: train, test, valid, transfer */
    int view_count;
    cm_manifest_view_t views[CM_MANIFEST_MAX_VIEWS]; /* in the order of their names' bytes */
    char *canonical;                                 /* the canonical JSON text, see above */
    char *text;                                      /* the text as parsed (what export writes) */
} cm_manifest_t;

/* Parses and checks text[length] (`source` names it in errors); *out on success. */
cm_status_t cm_manifest_parse(const char *text, size_t length, const char *source,
                              cm_manifest_t **out);

/* Frees and sets *manifest to NULL; NULL-safe. */
void cm_manifest_free(cm_manifest_t **manifest);

/* The view called `name`, or NULL; borrowed. */
const cm_manifest_view_t *cm_manifest_view(const cm_manifest_t *manifest, const char *name);

/* Comma-separated view names into out[size]. */
void cm_manifest_view_names(const cm_manifest_t *manifest, char *out, size_t size);

/*
 * Canonical JSON of any jansson value (see above) as a malloc'd string, or
 * NULL when out of memory.  `json` is a const json_t *, typed void to keep
 * jansson out of this header.
 */
char *cm_manifest_canonical(const void *json);

/*
 * How to feed a view, as canonical JSON for a checkpoint's metadata:
 * {"view":..., "kind":..., "from":..., "transform":..., "normalize":{...},
 * "cardinality":[...], "vocab":..., "pad":...} (only the keys that apply).
 * malloc'd; NULL when out of memory.
 */
char *cm_manifest_view_json(const cm_manifest_t *manifest, const cm_manifest_view_t *view);

/* The task as canonical JSON ({"type":"classification","classes":10} ...); malloc'd. */
char *cm_manifest_task_json(const cm_manifest_t *manifest);

#endif
