/*
 * cm_adamw: one fused loop per parameter range.  The bias corrections
 * 1 - beta^step are computed once per call in double (beta2^step stays
 * accurate for long runs); the loop itself is single precision, reads each
 * of params, grads, m and v once and writes params, m and v once.
 */
#include "cm_adamw.h"

#include <math.h>

cm_adamw_config_t cm_adamw_defaults(void) {
    return (cm_adamw_config_t){.learning_rate = 1e-3f,
                               .beta1 = 0.9f,
                               .beta2 = 0.999f,
                               .epsilon = 1e-8f,
                               .weight_decay = 0.01f};
}

void cm_adamw_update(float *params, const float *grads, float *m, float *v, size_t count,
                     const cm_adamw_config_t *config, long step, int decay) {
    float beta1 = config->beta1, beta2 = config->beta2;
    float learning_rate = config->learning_rate, epsilon = config->epsilon;
    float weight_decay = decay ? config->weight_decay : 0.0f;
    float first_correction = (float)(1.0 / (1.0 - pow(beta1, (double)step)));
    float second_correction = (float)(1.0 / (1.0 - pow(beta2, (double)step)));
    for (size_t i = 0; i < count; i++) {
        float grad = grads[i];
        m[i] = beta1 * m[i] + (1.0f - beta1) * grad;
        v[i] = beta2 * v[i] + (1.0f - beta2) * grad * grad;
        float m_hat = m[i] * first_correction;
        float v_hat = v[i] * second_correction;
        params[i] -= learning_rate * (m_hat / (sqrtf(v_hat) + epsilon) + weight_decay * params[i]);
    }
}
