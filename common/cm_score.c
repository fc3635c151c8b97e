/*
 * cm_score: see cm_score.h.  Classification reuses cm_model_evaluate one
 * batch at a time and weighs the batches by their rows.
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
        const float *predictions = cm_model_forward(model, inputs, rows);
        const float *targets = data->targets + (size_t)start * (size_t)width;
        for (size_t index = 0; index < (size_t)rows * (size_t)width; index++) {
            double error = (double)predictions[index] - (double)targets[index];
            loss += error * error;
            absolute += fabs(error);
        }
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
