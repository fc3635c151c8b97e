/*
 * cm_adamw: AdamW (Loshchilov & Hutter) with bias correction and decoupled
 * weight decay, over flat float blocks.  Parameters, gradients and both
 * moments share one layout, so a model calls cm_adamw_update once per
 * parameter range (with decay for matrices, without for biases and norms).
 */
#ifndef CM_ADAMW_H
#define CM_ADAMW_H

#include <stddef.h>

typedef struct {
    float learning_rate; /* step size */
    float beta1;         /* first-moment decay, e.g. 0.9 */
    float beta2;         /* second-moment decay, e.g. 0.999 */
    float epsilon;       /* e.g. 1e-8 */
    float weight_decay;  /* decoupled decay per unit learning rate, e.g. 0.01 */
} cm_adamw_config_t;

/* Defaults: lr 1e-3, betas 0.9/0.999, eps 1e-8, weight decay 0.01. */
cm_adamw_config_t cm_adamw_defaults(void);

/* One update of params[count] from grads[count]; m and v are the moments (start zeroed);
 * step counts from 1; decay selects whether weight decay applies to this range:
 *   m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2;
 *   p -= lr * ( (m/(1-b1^t)) / (sqrt(v/(1-b2^t)) + eps) + decay * wd * p ). */
void cm_adamw_update(float *params, const float *grads, float *m, float *v, size_t count,
                     const cm_adamw_config_t *config, long step, int decay);

#endif
