/*
 * cm_score: see cm_score.h.  Both tasks reuse the model's own evaluation
 * (cm_model_evaluate, cm_model_evaluate_regression: eval mode, so batch
 * norm uses its running statistics) one batch at a time and weigh the
 * batches by their rows.
 */
#include "cm_score.h"
#include "cm_alloc.h"

#include <math.h>
#include <string.h>

cm_status_t cm_score_rows(cm_model_t *model, const cm_dataset_t *dataset, cm_split_t split,
                          int first, int count, cm_score_t *score) {
    memset(score, 0, sizeof *score);
    const cm_split_data_t *data = &dataset->splits[split];
    if (count <= 0) return CM_OK;
    int classification = dataset->task == CM_TASK_CLASSIFICATION;
    if ((classification && !data->labels) || (!classification && !data->targets))
        return cm_fail(CM_ERR_INVALID_ARG, "split %s of %s has no labels to score against",
                       cm_split_name(split), dataset->name);
    int batch = cm_model_max_batch(model), width = dataset->classes;
    float *inputs = cm_alloc_floats((size_t)batch * (size_t)dataset->features);
    if (!inputs) return cm_fail(CM_ERR_NOMEM, "out of memory for scoring");
    double correct = 0.0, loss = 0.0, absolute = 0.0;
    for (int start = first; start < first + count; start += batch) {
        int rows = first + count - start < batch ? first + count - start : batch;
        cm_dataset_gather_range(dataset, split, start, rows, inputs);
        if (classification) {
            double accuracy = 0.0, mean_loss = 0.0;
            cm_model_evaluate(model, inputs, data->labels + start, rows, &accuracy, &mean_loss);
            correct += accuracy * rows;
            loss += mean_loss * rows;
            continue;
        }
        double rmse = 0.0, mae = 0.0, values = (double)rows * width;
        cm_model_evaluate_regression(model, inputs, data->targets + (size_t)start * (size_t)width,
                                     rows, &rmse, &mae);
        loss += rmse * rmse * values;
        absolute += mae * values;
    }
    cm_free_aligned(inputs);
    score->examples = count;
    if (classification) {
        score->accuracy = correct / count;
        score->loss = loss / count;
    } else {
        double values = (double)count * width;
        score->loss = loss / values;
        score->rmse = sqrt(score->loss);
        score->mae = absolute / values;
    }
    return CM_OK;
}

cm_status_t cm_score_split(cm_model_t *model, const cm_dataset_t *dataset, cm_split_t split,
                           cm_score_t *score) {
    return cm_score_rows(model, dataset, split, 0, dataset->splits[split].count, score);
}
