/*
 * cm_loss: the backward of every loss against central finite differences of
 * its own forward (through check_gradcheck.h, which also checks that
 * backward adds and that `scale` is applied), each forward against a
 * double-precision reference, and the invariants of the distributions:
 * softmax rows sum to 1, a higher temperature raises the entropy, the
 * cross-entropy of a uniform prediction is log(classes), KL(p||p) = 0 and
 * KL >= 0, unlabelled rows contribute nothing, and huge logits stay finite.
 */
#include "cm_loss.h"
#include "cm_rng.h"

#include "check_gradcheck.h"

#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* log softmax(logits / temperature)[c] in double, the reference for every test here. */
static double reference_log_softmax(const float *logits, double temperature, int classes, int c) {
    double max_value = logits[0];
    for (int i = 1; i < classes; i++) max_value = fmax(max_value, logits[i]);
    double sum = 0.0;
    for (int i = 0; i < classes; i++) sum += exp((logits[i] - max_value) / temperature);
    return (logits[c] - max_value) / temperature - log(sum);
}

static void random_distribution(cm_rng_t *rng, float *probs, int classes) {
    double sum = 0.0;
    for (int c = 0; c < classes; c++) {
        probs[c] = 0.05f + cm_rng_uniform(rng);
        sum += probs[c];
    }
    for (int c = 0; c < classes; c++) probs[c] = (float)(probs[c] / sum);
}

/* ---- softmax -------------------------------------------------------------------------- */

START_TEST(test_softmax_rows_sum_to_one) {
    enum { rows = 5, classes = 11 };
    static const float temperatures[] = {0.25f, 1.0f, 3.0f};
    cm_rng_t rng;
    cm_rng_seed(&rng, 201);
    float logits[rows * classes], probs[rows * classes];
    gradcheck_fill(&rng, logits, rows * classes, -8.0f, 8.0f);
    logits[2 * classes] = 1e4f; /* a row with one huge logit */
    for (int c = 0; c < classes; c++) logits[3 * classes + c] -= 3e4f; /* a far-negative row */
    for (size_t t = 0; t < sizeof temperatures / sizeof temperatures[0]; t++) {
        cm_loss_softmax(probs, logits, temperatures[t], rows, classes);
        for (int row = 0; row < rows; row++) {
            double sum = 0.0;
            for (int c = 0; c < classes; c++) {
                double want =
                    exp(reference_log_softmax(logits + row * classes, temperatures[t], classes, c));
                ck_assert_double_eq_tol(probs[row * classes + c], want, 1e-6);
                sum += probs[row * classes + c];
            }
            ck_assert_double_eq_tol(sum, 1.0, 1e-6);
        }
    }
}
END_TEST

static double entropy(const float *probs, int classes) {
    double sum = 0.0;
    for (int c = 0; c < classes; c++)
        if (probs[c] > 0.0f) sum -= probs[c] * log(probs[c]);
    return sum;
}

START_TEST(test_temperature_flattens) {
    enum { classes = 10 };
    static const float temperatures[] = {0.5f, 1.0f, 2.0f, 4.0f, 8.0f, 64.0f};
    cm_rng_t rng;
    cm_rng_seed(&rng, 202);
    float logits[classes], probs[classes];
    gradcheck_fill(&rng, logits, classes, -5.0f, 5.0f);
    double previous = -1.0;
    for (size_t t = 0; t < sizeof temperatures / sizeof temperatures[0]; t++) {
        cm_loss_softmax(probs, logits, temperatures[t], 1, classes);
        double current = entropy(probs, classes);
        ck_assert_msg(current > previous, "entropy %g at T=%g is not above %g", current,
                      (double)temperatures[t], previous);
        ck_assert(current <= log(classes) + 1e-6);
        previous = current;
    }
    ck_assert_double_eq_tol(previous, log(classes), 1e-2); /* T = 64: nearly uniform */
}
END_TEST

/* ---- cross-entropy -------------------------------------------------------------------- */

enum { ce_rows = 4, ce_classes = 5 };
static const int32_t ce_labels[ce_rows] = {2, -1, 0, 4};
static const float ce_scale = 0.37f;

typedef struct {
    float logits[ce_rows * ce_classes], probs[ce_rows * ce_classes];
    float d_logits[ce_rows * ce_classes];
} ce_case_t;

static double ce_loss(void *context) {
    ce_case_t *test = context;
    return ce_scale * cm_loss_cross_entropy_forward(test->probs, test->logits, ce_labels, ce_rows,
                                                    ce_classes, NULL);
}

static void ce_backward(void *context) {
    ce_case_t *test = context;
    cm_loss_cross_entropy_backward(test->d_logits, test->probs, ce_labels, ce_rows, ce_classes,
                                   ce_scale);
}

START_TEST(test_cross_entropy_gradient) {
    cm_rng_t rng;
    cm_rng_seed(&rng, 211);
    ce_case_t test;
    gradcheck_fill(&rng, test.logits, ce_rows * ce_classes, -3.0f, 3.0f);
    gradcheck_param_t param = {"cross-entropy logits", test.logits, test.d_logits,
                               ce_rows * ce_classes};
    gradcheck_run(&rng, &param, 1, ce_loss, ce_backward, &test, gradcheck_default_tolerance());

    /* The unlabelled row 1 gets exactly nothing; the labelled rows' gradients sum to 0. */
    memset(test.d_logits, 0, sizeof test.d_logits);
    int labelled = -1;
    double total = cm_loss_cross_entropy_forward(test.probs, test.logits, ce_labels, ce_rows,
                                                 ce_classes, &labelled);
    cm_loss_cross_entropy_backward(test.d_logits, test.probs, ce_labels, ce_rows, ce_classes, 1.0f);
    ck_assert_int_eq(labelled, 3);
    double want = 0.0;
    for (int row = 0; row < ce_rows; row++) {
        double row_sum = 0.0;
        for (int c = 0; c < ce_classes; c++) row_sum += test.d_logits[row * ce_classes + c];
        ck_assert_double_eq_tol(row_sum, 0.0, 1e-6);
        if (ce_labels[row] < 0) {
            for (int c = 0; c < ce_classes; c++)
                ck_assert_float_eq(test.d_logits[row * ce_classes + c], 0.0f);
            continue;
        }
        want -=
            reference_log_softmax(test.logits + row * ce_classes, 1.0, ce_classes, ce_labels[row]);
    }
    ck_assert_double_eq_tol(total, want, 1e-6);
    /* probs are written for every row, the unlabelled one included. */
    for (int c = 0; c < ce_classes; c++)
        ck_assert_double_eq_tol(
            test.probs[ce_classes + c],
            exp(reference_log_softmax(test.logits + ce_classes, 1.0, ce_classes, c)), 1e-6);
}
END_TEST

START_TEST(test_cross_entropy_uniform_is_log_classes) {
    enum { rows = 3, classes = 10 };
    float logits[rows * classes], probs[rows * classes];
    const int32_t labels[rows] = {0, 9, 4};
    for (int i = 0; i < rows * classes; i++) logits[i] = 3.7f;
    int labelled = 0;
    double total = cm_loss_cross_entropy_forward(probs, logits, labels, rows, classes, &labelled);
    ck_assert_int_eq(labelled, rows);
    ck_assert_double_eq_tol(total / rows, log((double)classes), 1e-6);
}
END_TEST

/* Logits of +-1e4 overflow a naive exp; the log-sum-exp form gives the exact answers. */
START_TEST(test_cross_entropy_stable_for_huge_logits) {
    float logits[6] = {1e4f, -1e4f, 0.0f, -1e4f, 1e4f, 1e4f - 2.0f};
    float probs[6], d_logits[6] = {0};
    const int32_t labels[2] = {0, 2};
    double total = cm_loss_cross_entropy_forward(probs, logits, labels, 2, 3, NULL);
    /* row 0: the label holds all the mass (loss ~ 0); row 1: loss = log(1 + e^-2) + 2 */
    double want = log1p(exp(-2.0)) + 2.0;
    ck_assert(isfinite(total));
    ck_assert_double_eq_tol(total, want, 1e-6);
    cm_loss_cross_entropy_backward(d_logits, probs, labels, 2, 3, 1.0f);
    for (int i = 0; i < 6; i++) ck_assert(isfinite(d_logits[i]));
}
END_TEST

/* ---- KL distillation ------------------------------------------------------------------ */

enum { kl_rows = 3, kl_classes = 6 };
static const float kl_row_weights[kl_rows] = {0.5f, 1.0f, 2.0f};
static const float kl_temperature = 2.5f, kl_scale = 0.3f;

typedef struct {
    float logits[kl_rows * kl_classes], target[kl_rows * kl_classes];
    float probs[kl_rows * kl_classes], d_logits[kl_rows * kl_classes];
    const float *row_weights;
} kl_case_t;

static double kl_loss(void *context) {
    kl_case_t *test = context;
    return kl_scale * cm_loss_kl_forward(test->probs, test->logits, test->target, test->row_weights,
                                         kl_temperature, kl_rows, kl_classes);
}

static void kl_backward(void *context) {
    kl_case_t *test = context;
    cm_loss_kl_backward(test->d_logits, test->probs, test->target, test->row_weights,
                        kl_temperature, kl_rows, kl_classes, kl_scale);
}

/* Targets include exact zeros (a top-k teacher) in row 1. */
static void kl_case_init(kl_case_t *test, cm_rng_t *rng, const float *row_weights) {
    test->row_weights = row_weights;
    gradcheck_fill(rng, test->logits, kl_rows * kl_classes, -4.0f, 4.0f);
    for (int row = 0; row < kl_rows; row++)
        random_distribution(rng, test->target + row * kl_classes, kl_classes);
    static const float sparse[kl_classes] = {0.0f, 0.6f, 0.0f, 0.3f, 0.1f, 0.0f};
    memcpy(test->target + kl_classes, sparse, sizeof sparse);
}

static double reference_kl(const kl_case_t *test) {
    double total = 0.0;
    for (int row = 0; row < kl_rows; row++) {
        double row_loss = 0.0;
        for (int c = 0; c < kl_classes; c++) {
            double p = test->target[row * kl_classes + c];
            if (p == 0.0) continue;
            row_loss += p * (log(p) - reference_log_softmax(test->logits + row * kl_classes,
                                                            kl_temperature, kl_classes, c));
        }
        double weight = test->row_weights ? test->row_weights[row] : 1.0;
        total += (double)kl_temperature * kl_temperature * weight * row_loss;
    }
    return total;
}

START_TEST(test_kl_gradient) {
    cm_rng_t rng;
    cm_rng_seed(&rng, 221);
    for (int weighted = 0; weighted < 2; weighted++) {
        kl_case_t test;
        kl_case_init(&test, &rng, weighted ? kl_row_weights : NULL);
        double total = cm_loss_kl_forward(test.probs, test.logits, test.target, test.row_weights,
                                          kl_temperature, kl_rows, kl_classes);
        ck_assert(isfinite(total));
        ck_assert_double_eq_tol(total, reference_kl(&test), 1e-5);
        gradcheck_param_t param = {"kl logits", test.logits, test.d_logits, kl_rows * kl_classes};
        gradcheck_run(&rng, &param, 1, kl_loss, kl_backward, &test, gradcheck_default_tolerance());
    }
}
END_TEST

START_TEST(test_kl_of_identical_distributions_is_zero) {
    static const float temperatures[] = {1.0f, 2.0f, 4.0f};
    cm_rng_t rng;
    cm_rng_seed(&rng, 222);
    kl_case_t test;
    kl_case_init(&test, &rng, kl_row_weights);
    for (size_t t = 0; t < sizeof temperatures / sizeof temperatures[0]; t++) {
        cm_loss_softmax(test.target, test.logits, temperatures[t], kl_rows, kl_classes);
        double total = cm_loss_kl_forward(test.probs, test.logits, test.target, kl_row_weights,
                                          temperatures[t], kl_rows, kl_classes);
        ck_assert_double_eq_tol(total, 0.0, 1e-5);
        memset(test.d_logits, 0, sizeof test.d_logits);
        cm_loss_kl_backward(test.d_logits, test.probs, test.target, kl_row_weights, temperatures[t],
                            kl_rows, kl_classes, 1.0f);
        for (int i = 0; i < kl_rows * kl_classes; i++)
            ck_assert_float_eq_tol(test.d_logits[i], 0.0f, 1e-6f);
    }
}
END_TEST

START_TEST(test_kl_is_non_negative) {
    cm_rng_t rng;
    cm_rng_seed(&rng, 223);
    for (int trial = 0; trial < 200; trial++) {
        kl_case_t test;
        kl_case_init(&test, &rng, NULL);
        float temperature = 0.5f + 4.0f * cm_rng_uniform(&rng);
        for (int row = 0; row < kl_rows; row++) {
            double row_loss = cm_loss_kl_forward(test.probs, test.logits + row * kl_classes,
                                                 test.target + row * kl_classes, NULL, temperature,
                                                 1, kl_classes);
            ck_assert_msg(row_loss >= 0.0, "KL %g < 0 in trial %d row %d", row_loss, trial, row);
        }
    }
}
END_TEST

/* ---- MSE ------------------------------------------------------------------------------ */

enum { mse_count = 13 };
static const float mse_scale = 0.7f;

typedef struct {
    float pred[mse_count], target[mse_count], d_pred[mse_count];
} mse_case_t;

static double mse_loss(void *context) {
    mse_case_t *test = context;
    return mse_scale * cm_loss_mse_forward(test->pred, test->target, mse_count);
}

static void mse_backward(void *context) {
    mse_case_t *test = context;
    cm_loss_mse_backward(test->d_pred, test->pred, test->target, mse_count, mse_scale);
}

START_TEST(test_mse) {
    cm_rng_t rng;
    cm_rng_seed(&rng, 231);
    mse_case_t test;
    gradcheck_fill(&rng, test.pred, mse_count, -2.0f, 2.0f);
    gradcheck_fill(&rng, test.target, mse_count, -2.0f, 2.0f);
    double want = 0.0;
    for (int i = 0; i < mse_count; i++)
        want += ((double)test.pred[i] - test.target[i]) * ((double)test.pred[i] - test.target[i]);
    ck_assert_double_eq_tol(cm_loss_mse_forward(test.pred, test.target, mse_count), want, 1e-9);
    ck_assert_double_eq(cm_loss_mse_forward(test.target, test.target, mse_count), 0.0);
    gradcheck_param_t param = {"mse pred", test.pred, test.d_pred, mse_count};
    gradcheck_run(&rng, &param, 1, mse_loss, mse_backward, &test, gradcheck_default_tolerance());
}
END_TEST

Suite *check_loss_suite(void);
Suite *check_loss_suite(void) {
    Suite *suite = suite_create("loss");
    TCase *softmax = tcase_create("softmax");
    tcase_add_test(softmax, test_softmax_rows_sum_to_one);
    tcase_add_test(softmax, test_temperature_flattens);
    suite_add_tcase(suite, softmax);
    TCase *cross_entropy = tcase_create("cross_entropy");
    tcase_add_test(cross_entropy, test_cross_entropy_gradient);
    tcase_add_test(cross_entropy, test_cross_entropy_uniform_is_log_classes);
    tcase_add_test(cross_entropy, test_cross_entropy_stable_for_huge_logits);
    suite_add_tcase(suite, cross_entropy);
    TCase *kl = tcase_create("kl");
    tcase_add_test(kl, test_kl_gradient);
    tcase_add_test(kl, test_kl_of_identical_distributions_is_zero);
    tcase_add_test(kl, test_kl_is_non_negative);
    suite_add_tcase(suite, kl);
    TCase *mse = tcase_create("mse");
    tcase_add_test(mse, test_mse);
    suite_add_tcase(suite, mse);
    return suite;
}
