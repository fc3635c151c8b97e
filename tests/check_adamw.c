/*
 * cm_adamw: the first step from zero moments moves every parameter by
 * lr * sign(g) (that is what bias correction is for), decoupled weight decay
 * shrinks parameters by lr * wd * p whatever their gradient and only when
 * asked, several steps agree with a double-precision transcription of the
 * update rule, and the optimiser minimises a badly scaled quadratic.
 */
#include "cm_adamw.h"
#include "cm_rng.h"

#include <check.h>
#include <math.h>
#include <string.h>

enum { param_count = 23 };

static void fill(cm_rng_t *rng, float *values, int count, float low, float high) {
    for (int i = 0; i < count; i++) values[i] = low + (high - low) * cm_rng_uniform(rng);
}

/* Gradients of both signs and magnitudes from 1e-3 to 1e3, never near 0. */
static void fill_gradients(cm_rng_t *rng, float *grads, int count) {
    for (int i = 0; i < count; i++) {
        float magnitude = powf(10.0f, -3.0f + 6.0f * cm_rng_uniform(rng));
        grads[i] = (cm_rng_u32(rng) & 1) ? magnitude : -magnitude;
    }
}

START_TEST(test_defaults) {
    cm_adamw_config_t config = cm_adamw_defaults();
    ck_assert_float_eq(config.learning_rate, 1e-3f);
    ck_assert_float_eq(config.beta1, 0.9f);
    ck_assert_float_eq(config.beta2, 0.999f);
    ck_assert_float_eq(config.epsilon, 1e-8f);
    ck_assert_float_eq(config.weight_decay, 0.01f);
}
END_TEST

/* m_hat = g and v_hat = g^2 after one step, so the step is lr * g / (|g| + eps). */
START_TEST(test_first_step_is_learning_rate_times_sign) {
    cm_rng_t rng;
    cm_rng_seed(&rng, 301);
    cm_adamw_config_t config = cm_adamw_defaults();
    for (int decay = 0; decay < 2; decay++) {
        float params[param_count], before[param_count], grads[param_count];
        float m[param_count] = {0}, v[param_count] = {0};
        fill(&rng, params, param_count, -2.0f, 2.0f);
        fill_gradients(&rng, grads, param_count);
        memcpy(before, params, sizeof params);
        cm_adamw_update(params, grads, m, v, param_count, &config, 1, decay);
        for (int i = 0; i < param_count; i++) {
            double sign = grads[i] > 0.0f ? 1.0 : -1.0;
            double want = -config.learning_rate *
                          (sign + (decay ? config.weight_decay * (double)before[i] : 0.0));
            double moved = (double)params[i] - before[i];
            ck_assert_msg(fabs(moved - want) <= 1e-3 * config.learning_rate,
                          "decay=%d param %d (grad %g) moved by %g, want %g", decay, i,
                          (double)grads[i], moved, want);
        }
    }
}
END_TEST

START_TEST(test_weight_decay_is_decoupled) {
    cm_rng_t rng;
    cm_rng_seed(&rng, 302);
    cm_adamw_config_t config = cm_adamw_defaults();
    config.learning_rate = 0.1f;
    config.weight_decay = 0.5f;
    float params[param_count], before[param_count], grads[param_count] = {0};
    float m[param_count] = {0}, v[param_count] = {0};
    fill(&rng, params, param_count, -2.0f, 2.0f);
    memcpy(before, params, sizeof params);
    /* Zero gradient, decay on: p -= lr * wd * p, on every step. */
    for (long step = 1; step <= 3; step++) {
        float expected[param_count];
        for (int i = 0; i < param_count; i++)
            expected[i] = params[i] - config.learning_rate * config.weight_decay * params[i];
        cm_adamw_update(params, grads, m, v, param_count, &config, step, 1);
        for (int i = 0; i < param_count; i++) ck_assert_float_eq_tol(params[i], expected[i], 1e-6f);
    }
    for (int i = 0; i < param_count; i++)
        ck_assert_float_eq_tol(params[i], before[i] * 0.95f * 0.95f * 0.95f, 1e-5f);
    /* Decay off: a zero gradient leaves the parameters exactly where they are. */
    memcpy(before, params, sizeof params);
    for (long step = 4; step <= 6; step++)
        cm_adamw_update(params, grads, m, v, param_count, &config, step, 0);
    for (int i = 0; i < param_count; i++) ck_assert_float_eq(params[i], before[i]);
}
END_TEST

/* Ten steps with changing gradients against the rule transcribed in double. */
START_TEST(test_matches_reference_over_steps) {
    cm_rng_t rng;
    cm_rng_seed(&rng, 303);
    cm_adamw_config_t config = {.learning_rate = 0.01f,
                                .beta1 = 0.8f,
                                .beta2 = 0.95f,
                                .epsilon = 1e-6f,
                                .weight_decay = 0.1f};
    float params[param_count], grads[param_count], m[param_count] = {0}, v[param_count] = {0};
    double want[param_count], want_m[param_count] = {0}, want_v[param_count] = {0};
    fill(&rng, params, param_count, -1.0f, 1.0f);
    for (int i = 0; i < param_count; i++) want[i] = params[i];
    for (long step = 1; step <= 10; step++) {
        fill(&rng, grads, param_count, -1.0f, 1.0f);
        cm_adamw_update(params, grads, m, v, param_count, &config, step, 1);
        for (int i = 0; i < param_count; i++) {
            want_m[i] = config.beta1 * want_m[i] + (1.0 - config.beta1) * grads[i];
            want_v[i] = config.beta2 * want_v[i] + (1.0 - config.beta2) * grads[i] * grads[i];
            double m_hat = want_m[i] / (1.0 - pow(config.beta1, (double)step));
            double v_hat = want_v[i] / (1.0 - pow(config.beta2, (double)step));
            want[i] -= config.learning_rate *
                       (m_hat / (sqrt(v_hat) + config.epsilon) + config.weight_decay * want[i]);
        }
        for (int i = 0; i < param_count; i++) {
            ck_assert_double_eq_tol(m[i], want_m[i], 1e-6);
            ck_assert_double_eq_tol(v[i], want_v[i], 1e-6);
            ck_assert_double_eq_tol(params[i], want[i], 1e-5);
        }
    }
}
END_TEST

/* f(p) = 1/2 sum curvature_i (p_i - centre_i)^2 with curvatures spanning 1e-2 to 1e2; Adam's
 * per-coordinate scaling reaches every centre. */
START_TEST(test_minimises_quadratic) {
    cm_rng_t rng;
    cm_rng_seed(&rng, 304);
    float params[param_count], grads[param_count], m[param_count] = {0}, v[param_count] = {0};
    float centre[param_count], curvature[param_count];
    fill(&rng, params, param_count, -3.0f, 3.0f);
    fill(&rng, centre, param_count, -3.0f, 3.0f);
    for (int i = 0; i < param_count; i++)
        curvature[i] = powf(10.0f, -2.0f + 4.0f * (float)i / (param_count - 1));
    cm_adamw_config_t config = cm_adamw_defaults();
    config.learning_rate = 0.05f;
    for (long step = 1; step <= 1500; step++) {
        if (step == 1000) config.learning_rate = 0.005f; /* settle the last oscillations */
        for (int i = 0; i < param_count; i++) grads[i] = curvature[i] * (params[i] - centre[i]);
        cm_adamw_update(params, grads, m, v, param_count, &config, step, 0);
    }
    for (int i = 0; i < param_count; i++)
        ck_assert_msg(fabsf(params[i] - centre[i]) < 2e-2f,
                      "coordinate %d (curvature %g) ended at %g, centre %g", i,
                      (double)curvature[i], (double)params[i], (double)centre[i]);
}
END_TEST

Suite *check_adamw_suite(void);
Suite *check_adamw_suite(void) {
    Suite *suite = suite_create("adamw");
    TCase *tcase = tcase_create("update");
    tcase_add_test(tcase, test_defaults);
    tcase_add_test(tcase, test_first_step_is_learning_rate_times_sign);
    tcase_add_test(tcase, test_weight_decay_is_decoupled);
    tcase_add_test(tcase, test_matches_reference_over_steps);
    tcase_add_test(tcase, test_minimises_quadratic);
    suite_add_tcase(suite, tcase);
    return suite;
}
