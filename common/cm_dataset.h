/*
 * cm_dataset: datasets, splits and views, loaded into memory.
 *
 * A dataset is a named source ("fashion-mnist") with splits and a stable
 * integer id per example (its index in the split).  A view is a named
 * feature transform of an example: for fashion-mnist, "full" (28x28),
 * "pool14" (2x2 average pooling) and "pool7" (4x4 average pooling), all
 * normalized with the dataset's pixel mean and standard deviation.
 *
 * The fingerprint is the hex SHA-256 over the source files' contents (in a
 * fixed order) and the split definition (e.g. the subset sizes), never the
 * view: a teacher on "full" and a student on "pool7" agree on it.
 *
 * Fashion-MNIST is read from Debian's dataset-fashion-mnist
 * (the *.gz files in /usr/share/datasets/fashion-mnist, or the directory in the option or
 * the COMMITTEE_DATA_DIR environment variable).  Missing files, bad magic
 * numbers, short reads, count mismatches between images and labels, wrong
 * dimensions and labels out of range are CM_ERR_* with a sentence naming
 * the file and what is wrong.
 */
#ifndef CM_DATASET_H
#define CM_DATASET_H

#include "cm_status.h"

#include <stdint.h>

typedef enum { CM_SPLIT_TRAIN, CM_SPLIT_TEST, CM_SPLIT_COUNT } cm_split_t;

/* "train" / "test". */
const char *cm_split_name(cm_split_t split);
/* Parses a split name; CM_ERR_INVALID_ARG with a sentence otherwise. */
cm_status_t cm_split_parse(const char *text, cm_split_t *split);

typedef struct {
    int count;       /* examples in this split; ids are 0 .. count-1 */
    float *inputs;   /* [count][features], the view's normalized features */
    int32_t *labels; /* [count], each in [0, classes) */
} cm_split_data_t;

typedef struct {
    char name[32];        /* "fashion-mnist" */
    char view[32];        /* "full", "pool14", "pool7" */
    int classes;          /* 10 */
    int height, width;    /* of the view, e.g. 7 x 7 */
    int features;         /* height * width */
    char fingerprint[65]; /* hex SHA-256, see above */
    cm_split_data_t splits[CM_SPLIT_COUNT];
} cm_dataset_t;

typedef struct {
    const char *directory; /* NULL: $COMMITTEE_DATA_DIR or the Debian path */
    int max_train;         /* 0: all; else the first max_train training examples */
    int max_test;          /* 0: all; else the first max_test test examples */
} cm_dataset_options_t;

/* Loads dataset `name` in view `view`.  options may be NULL (everything, default path). */
cm_status_t cm_dataset_load(cm_dataset_t **out, const char *name, const char *view,
                            const cm_dataset_options_t *options);

/* The normalized value of a blank (zero) pixel in this dataset's views. */
float cm_dataset_background(const cm_dataset_t *dataset);

/* Frees a dataset and sets *dataset to NULL; NULL-safe. */
void cm_dataset_free(cm_dataset_t **dataset);

/* Comma-separated list of the views a dataset offers ("full,pool14,pool7"), or NULL. */
const char *cm_dataset_views(const char *name);

#endif
