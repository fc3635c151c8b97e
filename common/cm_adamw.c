/*
 * cm_adamw: one fused loop per parameter range.  The bias corrections
 * 1 - beta^step are computed once per call in double (beta2^step stays
 * accurate for long runs); the loop itself is single precision, reads each
 * of params, grads, m and v once and writes params, m and v once.
 */
#include "cm_adamw.h"

#include "cm_vec.h"

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
    /* Four parameters at a time (cm_vec.h), each by exactly the scalar arithmetic below, so
     * the vector and the scalar loop give the same bits. */
    size_t i = 0;
    for (; i + VEC <= count; i += VEC) {
        vec4_t grad = vec_load(grads + i), param = vec_load(params + i);
        vec4_t first = beta1 * vec_load(m + i) + (1.0f - beta1) * grad;
        vec4_t second = beta2 * vec_load(v + i) + (1.0f - beta2) * grad * grad;
        vec_store(m + i, first);
        vec_store(v + i, second);
        vec4_t m_hat = first * first_correction;
        vec4_t v_hat = second * second_correction;
        vec_store(params + i, param - learning_rate * (m_hat / (vec_sqrt(v_hat) + epsilon) +
                                                       weight_decay * param));
    }
    for (; i < count; i++) {
        float grad = grads[i];
        m[i] = beta1 * m[i] + (1.0f - beta1) * grad;
        v[i] = beta2 * v[i] + (1.0f - beta2) * grad * grad;
        float m_hat = m[i] * first_correction;
        float v_hat = v[i] * second_correction;
        params[i] -= learning_rate * (m_hat / (sqrtf(v_hat) + epsilon) + weight_decay * params[i]);
    }
}
