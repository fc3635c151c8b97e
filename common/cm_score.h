/*
 * cm_score: how well a model does on a split of a dataset view, for both
 * tasks: accuracy and mean cross-entropy (classification), or RMSE, MAE and
 * mean squared error (regression).  The view's features are gathered a
 * batch at a time (the model's max_batch), so a split never sits in memory
 * as floats.  Used by `teacher-server fit`, `student-trainer train` and
 * `student-trainer eval`.
 */
#ifndef CM_SCORE_H
#define CM_SCORE_H

#include "cm_dataset.h"
#include "cm_model.h"
#include "cm_status.h"

typedef struct {
    int examples;    /* rows scored */
    double accuracy; /* classification: fraction of rows whose arg-max is the label */
    double loss;     /* mean cross-entropy (classification) or mean squared error per target */
    double rmse;     /* regression: sqrt(loss) */
    double mae;      /* regression: mean absolute error per target */
} cm_score_t;

/*
 * Scores the model on rows first .. first+count-1 of `split` of the dataset
 * (whose view the model reads; its output width must be dataset->classes).
 * CM_ERR_NOMEM, or CM_ERR_INVALID_ARG for an unlabelled split.
 */
cm_status_t cm_score_rows(cm_model_t *model, const cm_dataset_t *dataset, cm_split_t split,
                          int first, int count, cm_score_t *score);

/* The whole split (its `count` rows). */
cm_status_t cm_score_split(cm_model_t *model, const cm_dataset_t *dataset, cm_split_t split,
                           cm_score_t *score);

#endif
