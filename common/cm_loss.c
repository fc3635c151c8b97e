/*
 * cm_loss: softmax, cross-entropy, temperature-scaled KL and MSE.
 *
 * Every softmax subtracts the row maximum before exponentiating, and every
 * log-probability is taken as logit / T minus the row's log-sum-exp (in
 * double), never as the log of a probability that may have underflowed to
 * zero, so the losses stay finite for any finite logits.  Row losses are
 * accumulated in double.
 * Target probabilities that are exactly zero contribute nothing to a KL
 * (0 log 0 = 0), which lets teachers send sparse or top-k distributions.
 */
#include "cm_loss.h"

#include <math.h>
#include <stddef.h>

/* probs[classes] = softmax(logits / temperature); returns log sum_c exp(logits[c] / temperature)
 * in double, so that log probs[c] = logits[c] / temperature - that, even where probs[c] underflows.
 */
static double softmax_row(float *probs, const float *logits, float temperature, int classes) {
    float max_value = logits[0];
    for (int c = 1; c < classes; c++)
        if (logits[c] > max_value) max_value = logits[c];
    float inverse_temperature = 1.0f / temperature;
    double sum = 0.0;
    for (int c = 0; c < classes; c++) {
        probs[c] = expf((logits[c] - max_value) * inverse_temperature);
        sum += probs[c];
    }
    float inverse_sum = (float)(1.0 / sum);
    for (int c = 0; c < classes; c++) probs[c] *= inverse_sum;
    return (double)max_value / temperature + log(sum);
}

void cm_loss_softmax(float *probs, const float *logits, float temperature, int rows, int classes) {
    for (int row = 0; row < rows; row++)
        softmax_row(probs + (size_t)row * classes, logits + (size_t)row * classes, temperature,
                    classes);
}

double cm_loss_cross_entropy_forward(float *probs, const float *logits, const int32_t *labels,
                                     int rows, int classes, int *labelled) {
    double total = 0.0;
    int labelled_rows = 0;
    for (int row = 0; row < rows; row++) {
        const float *logits_row = logits + (size_t)row * classes;
        double log_normaliser =
            softmax_row(probs + (size_t)row * classes, logits_row, 1.0f, classes);
        if (labels[row] < 0) continue;
        total += log_normaliser - logits_row[labels[row]];
        labelled_rows++;
    }
    if (labelled) *labelled = labelled_rows;
    return total;
}

void cm_loss_cross_entropy_backward(float *d_logits, const float *probs, const int32_t *labels,
                                    int rows, int classes, float scale) {
    for (int row = 0; row < rows; row++) {
        if (labels[row] < 0) continue;
        float *d_row = d_logits + (size_t)row * classes;
        const float *probs_row = probs + (size_t)row * classes;
        for (int c = 0; c < classes; c++) d_row[c] += scale * probs_row[c];
        d_row[labels[row]] -= scale;
    }
}

double cm_loss_kl_forward(float *student_probs, const float *student_logits, const float *target,
                          const float *row_weights, float temperature, int rows, int classes) {
    double total = 0.0;
    for (int row = 0; row < rows; row++) {
        const float *logits_row = student_logits + (size_t)row * classes;
        const float *target_row = target + (size_t)row * classes;
        double log_normaliser =
            softmax_row(student_probs + (size_t)row * classes, logits_row, temperature, classes);
        double row_loss = 0.0;
        for (int c = 0; c < classes; c++) {
            if (target_row[c] <= 0.0f) continue; /* 0 log 0 = 0 */
            double student_log_prob = (double)logits_row[c] / temperature - log_normaliser;
            row_loss += target_row[c] * (log(target_row[c]) - student_log_prob);
        }
        double weight = row_weights ? row_weights[row] : 1.0;
        total += (double)temperature * temperature * row_loss * weight;
    }
    return total;
}

void cm_loss_kl_backward(float *d_logits, const float *student_probs, const float *target,
                         const float *row_weights, float temperature, int rows, int classes,
                         float scale) {
    for (int row = 0; row < rows; row++) {
        float factor = scale * temperature * (row_weights ? row_weights[row] : 1.0f);
        float *d_row = d_logits + (size_t)row * classes;
        const float *probs_row = student_probs + (size_t)row * classes;
        const float *target_row = target + (size_t)row * classes;
        for (int c = 0; c < classes; c++) d_row[c] += factor * (probs_row[c] - target_row[c]);
    }
}

double cm_loss_mse_forward(const float *pred, const float *target, int count) {
    double total = 0.0;
    for (int i = 0; i < count; i++) {
        double error = (double)pred[i] - target[i];
        total += error * error;
    }
    return total;
}

void cm_loss_mse_backward(float *d_pred, const float *pred, const float *target, int count,
                          float scale) {
    for (int i = 0; i < count; i++) d_pred[i] += scale * 2.0f * (pred[i] - target[i]);
}
