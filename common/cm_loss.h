/*
 * cm_loss: losses for training and distillation, as forward/backward pairs.
 *
 * Forward functions return the SUM of per-row losses (double, so long sums
 * stay exact enough); the caller divides by what it averages over.  Backward
 * functions ADD `scale` times the gradient of that sum into d_logits /
 * d_pred, so the caller passes scale = weight / rows to get a weighted mean.
 * Rows whose label is negative are unlabelled: cross-entropy skips them
 * (the few-label regime of DIVERSEDISTILL.md §4).
 */
#ifndef CM_LOSS_H
#define CM_LOSS_H

#include <stdint.h>

/* probs[rows][classes] = softmax(logits / temperature) per row (max-subtracted, stable). */
void cm_loss_softmax(float *probs, const float *logits, float temperature, int rows, int classes);

/* Cross-entropy of softmax(logits) against labels[rows] (label < 0: skipped).
 * Writes probs[rows][classes] = softmax(logits) for the backward pass and returns the sum of
 * -log p[label] over labelled rows; *labelled (may be NULL) receives their count. */
double cm_loss_cross_entropy_forward(float *probs, const float *logits, const int32_t *labels,
                                     int rows, int classes, int *labelled);
/* d_logits[rows][classes] += scale * (probs - onehot(label)) for labelled rows. */
void cm_loss_cross_entropy_backward(float *d_logits, const float *probs, const int32_t *labels,
                                    int rows, int classes, float scale);

/* Temperature-scaled distillation loss (Hinton et al.):
 *   row loss = T^2 * KL(target || softmax(student_logits / T)) * row_weight
 * target[rows][classes] is a probability distribution per row (a teacher's softened output or
 * a mixture); row_weights[rows] may be NULL (all 1).  Writes student_probs[rows][classes] =
 * softmax(student_logits / T) for the backward pass; returns the sum of row losses. */
double cm_loss_kl_forward(float *student_probs, const float *student_logits, const float *target,
                          const float *row_weights, float temperature, int rows, int classes);
/* d_logits += scale * row_weight * T * (student_probs - target)  (the gradient of the above). */
void cm_loss_kl_backward(float *d_logits, const float *student_probs, const float *target,
                         const float *row_weights, float temperature, int rows, int classes,
                         float scale);

/* Mean squared error pieces: returns sum over count of (pred - target)^2. */
double cm_loss_mse_forward(const float *pred, const float *target, int count);
/* d_pred[count] += scale * 2 * (pred - target). */
void cm_loss_mse_backward(float *d_pred, const float *pred, const float *target, int count,
                          float scale);

#endif
