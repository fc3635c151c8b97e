/*
 * trainer_method: every method's gradients (student logits, student hidden, and for
 * fitnet the projection P and b) against central finite differences of its own loss,
 * and its loss against an independent double-precision reference written from the
 * definitions in trainer_method.h, on one awkward batch: labelled and unlabelled rows,
 * teachers absent from some rows (their rows hold NaN, so a leak shows up at once) and a
 * row no teacher answered.  Beside them the invariants that pin the semantics down: ce
 * ignores teachers; kd with w = 0 is ce; kd against itself is zero; avg-kd of one teacher
 * is kd; ca-mkd follows the teacher that is right on the label; garbage in absent rows
 * changes nothing; a batch without labels has no CE; d_logits and d_hidden are
 * overwritten while the projection's gradients are added; the config is validated with
 * a sentence; needs() per method; AdamW decays P but not b; and two tiny end-to-end runs
 * (a projection learning a linear map, a 2-layer student learning a teacher by kd).
 * Regression: the same gradient checks and reference for every method with float targets
 * and teacher predictions, kd to itself is zero at any T, the mixture weights of avg-kd and
 * ca-mkd sum to 1 on every row (a common shift of everything changes nothing), ca-mkd
 * follows the teacher nearest the label, and the term names follow the task.
 * Everything is seeded and runs in well under a second.
 */
#include "trainer_method.h"

#include "cm_adamw.h"
#include "cm_layers.h"
#include "cm_rng.h"

#include "check_gradcheck.h"

#include <check.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

enum {
    BASELINES = TRAINER_METHOD_DIVERSEDISTILL, /* kinds 0 .. BASELINES-1 are built from this
                                                  file's config alone */
    ROWS = 6,
    MAX_BATCH = 8,
    CLASSES = 5,
    STUDENT_HIDDEN = 4,
    TEACHERS = 3,
    WIDEST_TEACHER_HIDDEN = 3,
    KD_TEACHER = 1,
    FITNET_TEACHER = 0,
};

static const int teacher_hidden_widths[TEACHERS] = {3, 0, 2};

/* One batch with its storage.  Row 5 has no teacher at all; every teacher misses a row. */
typedef struct {
    int32_t labels[ROWS];
    float teacher_logits[TEACHERS][ROWS * CLASSES];
    uint8_t present[TEACHERS][ROWS];
    float teacher_hidden[TEACHERS][ROWS * WIDEST_TEACHER_HIDDEN];
    float student_logits[ROWS * CLASSES];
    float student_hidden[ROWS * STUDENT_HIDDEN];
    float targets[ROWS * CLASSES]; /* regression: CLASSES targets per row */
    uint8_t labelled[ROWS];        /* regression: the rows whose label is not -1 */
    trainer_batch_t batch;
} fixture_t;

static const int32_t fixture_labels[ROWS] = {2, -1, 0, -1, 4, 1};
static const uint8_t fixture_present[TEACHERS][ROWS] = {
    {1, 1, 0, 1, 1, 0},
    {1, 0, 1, 1, 0, 0},
    {0, 1, 1, 1, 1, 0},
};

/* Writes `garbage` into every absent teacher row, logits and hidden alike. */
static void fixture_set_garbage(fixture_t *fixture, float garbage) {
    for (int teacher = 0; teacher < TEACHERS; teacher++)
        for (int row = 0; row < ROWS; row++) {
            if (fixture->present[teacher][row]) continue;
            for (int c = 0; c < CLASSES; c++)
                fixture->teacher_logits[teacher][row * CLASSES + c] = garbage;
            int width = teacher_hidden_widths[teacher];
            for (int unit = 0; unit < width; unit++)
                fixture->teacher_hidden[teacher][row * width + unit] = garbage;
        }
}

static void fixture_init(fixture_t *fixture, uint64_t seed) {
    cm_rng_t rng;
    cm_rng_seed(&rng, seed);
    memset(fixture, 0, sizeof *fixture);
    memcpy(fixture->labels, fixture_labels, sizeof fixture->labels);
    memcpy(fixture->present, fixture_present, sizeof fixture->present);
    for (int teacher = 0; teacher < TEACHERS; teacher++) {
        gradcheck_fill(&rng, fixture->teacher_logits[teacher], ROWS * CLASSES, -4.0f, 4.0f);
        gradcheck_fill(&rng, fixture->teacher_hidden[teacher],
                       ROWS * teacher_hidden_widths[teacher], -1.5f, 1.5f);
    }
    fixture_set_garbage(fixture, NAN);
    gradcheck_fill(&rng, fixture->student_logits, ROWS * CLASSES, -3.0f, 3.0f);
    gradcheck_fill(&rng, fixture->student_hidden, ROWS * STUDENT_HIDDEN, -1.5f, 1.5f);

    fixture->batch.rows = ROWS;
    fixture->batch.labels = fixture->labels;
    for (int teacher = 0; teacher < TEACHERS; teacher++) {
        fixture->batch.teacher_logits[teacher] = fixture->teacher_logits[teacher];
        fixture->batch.teacher_present[teacher] = fixture->present[teacher];
        fixture->batch.teacher_hidden[teacher] =
            teacher_hidden_widths[teacher] > 0 ? fixture->teacher_hidden[teacher] : NULL;
    }
}

/*
 * The same batch as a regression problem: the teachers' "logits" are their CLASSES
 * predictions, the rows labelled before now have float targets, and the int labels are gone
 * (NULL, so a method that read them would crash).
 */
static void fixture_make_regression(fixture_t *fixture, uint64_t seed) {
    cm_rng_t rng;
    cm_rng_seed(&rng, seed);
    gradcheck_fill(&rng, fixture->targets, ROWS * CLASSES, -2.5f, 2.5f);
    for (int row = 0; row < ROWS; row++) fixture->labelled[row] = fixture->labels[row] >= 0;
    fixture->batch.labels = NULL;
    fixture->batch.targets = fixture->targets;
    fixture->batch.labelled = fixture->labelled;
}

static trainer_method_config_t fixture_config(trainer_method_kind_t kind) {
    trainer_method_config_t config = {
        .kind = kind,
        .temperature = 2.0f,
        .kd_weight = 0.7f,
        .kd_teacher = KD_TEACHER,
        .fitnet_teacher = FITNET_TEACHER,
        .fitnet_weight = 0.5f,
        .teacher_count = TEACHERS,
        .outputs = CLASSES,
        .student_hidden = STUDENT_HIDDEN,
        .max_batch = MAX_BATCH,
    };
    memcpy(config.teacher_hidden, teacher_hidden_widths, sizeof teacher_hidden_widths);
    return config;
}

static trainer_method_t *new_method(const trainer_method_config_t *config) {
    trainer_method_t *method = NULL;
    cm_status_t status = trainer_method_new(config, 77, &method);
    ck_assert_msg(status == CM_OK, "trainer_method_new: %s", cm_last_error());
    ck_assert_ptr_nonnull(method);
    return method;
}

/* The loss of one step by term name (0 for a term the method does not have). */
typedef struct {
    double total, ce, kd, fitnet; /* ce: the task term, "ce" or (regression) "mse" */
    int labelled;
} step_loss_t;

static step_loss_t named_terms(const trainer_method_t *method, const trainer_loss_t *loss) {
    return (step_loss_t){.total = loss->total,
                         .ce = trainer_method_term(method, loss, "ce") +
                               trainer_method_term(method, loss, "mse"),
                         .kd = trainer_method_term(method, loss, "kd"),
                         .fitnet = trainer_method_term(method, loss, "fitnet"),
                         .labelled = loss->labelled};
}

/* The outputs of one call of trainer_method_loss. */
typedef struct {
    step_loss_t loss;
    float d_logits[ROWS * CLASSES];
    float d_hidden[ROWS * STUDENT_HIDDEN];
} step_result_t;

static void run_step(trainer_method_t *method, const fixture_t *fixture, step_result_t *result) {
    trainer_student_t student = {.outputs = fixture->student_logits,
                                 .hidden = fixture->student_hidden,
                                 .d_outputs = result->d_logits,
                                 .d_hidden = result->d_hidden};
    trainer_loss_t loss;
    trainer_method_loss(method, &fixture->batch, &student, &loss);
    result->loss = named_terms(method, &loss);
}

static void assert_all_finite(const float *values, int count, const char *what) {
    for (int i = 0; i < count; i++)
        ck_assert_msg(isfinite(values[i]), "%s [%d] is %g", what, i, (double)values[i]);
}

static void assert_all_zero(const float *values, int count, const char *what) {
    for (int i = 0; i < count; i++)
        ck_assert_msg(values[i] == 0.0f, "%s [%d] is %g, not 0", what, i, (double)values[i]);
}

/* Bitwise-equal losses and gradients (same arithmetic, so no tolerance is needed). */
static void assert_same_step(const step_result_t *a, const step_result_t *b) {
    ck_assert(a->loss.total == b->loss.total);
    ck_assert(a->loss.ce == b->loss.ce);
    ck_assert(a->loss.kd == b->loss.kd);
    ck_assert(a->loss.fitnet == b->loss.fitnet);
    ck_assert_int_eq(a->loss.labelled, b->loss.labelled);
    ck_assert(memcmp(a->d_logits, b->d_logits, sizeof a->d_logits) == 0);
    ck_assert(memcmp(a->d_hidden, b->d_hidden, sizeof a->d_hidden) == 0);
}

/* ---- the reference ---------------------------------------------------------------------- */

/* log softmax(logits / temperature)[c] in double. */
static double reference_log_softmax(const float *logits, double temperature, int c) {
    double max_value = logits[0], sum = 0.0;
    for (int i = 1; i < CLASSES; i++) max_value = fmax(max_value, logits[i]);
    for (int i = 0; i < CLASSES; i++) sum += exp((logits[i] - max_value) / temperature);
    return (logits[c] - max_value) / temperature - log(sum);
}

static double reference_fitnet(const trainer_method_config_t *config, const fixture_t *fixture,
                               const float *projection);

/* The whole loss from the definitions, in double; projection is P then b (fitnet only). */
static double reference_loss(const trainer_method_config_t *config, const fixture_t *fixture,
                             const float *projection) {
    double temperature = config->temperature;
    double kd_weight = config->kind == TRAINER_METHOD_CE ? 0.0 : config->kd_weight;
    double ce = 0.0, kl = 0.0;
    int labelled = 0, rows_with_target = 0;
    for (int row = 0; row < ROWS; row++) {
        const float *student = fixture->student_logits + row * CLASSES;
        int32_t label = fixture->labels[row];
        if (label >= 0) {
            ce -= reference_log_softmax(student, 1.0, label);
            labelled++;
        }
        if (config->kind == TRAINER_METHOD_CE) continue;
        int single = config->kind == TRAINER_METHOD_KD || config->kind == TRAINER_METHOD_FITNET;
        double mixture[TEACHERS] = {0}, mixture_sum = 0.0;
        for (int teacher = 0; teacher < TEACHERS; teacher++) {
            if (single && teacher != config->kd_teacher) continue;
            if (!fixture->present[teacher][row]) continue;
            const float *logits = fixture->teacher_logits[teacher] + row * CLASSES;
            mixture[teacher] = config->kind == TRAINER_METHOD_CA_MKD && label >= 0
                                   ? exp(reference_log_softmax(logits, 1.0, label))
                                   : 1.0;
            mixture_sum += mixture[teacher];
        }
        if (mixture_sum == 0.0) continue;
        rows_with_target++;
        for (int c = 0; c < CLASSES; c++) {
            double target = 0.0;
            for (int teacher = 0; teacher < TEACHERS; teacher++)
                if (mixture[teacher] > 0.0)
                    target +=
                        mixture[teacher] / mixture_sum *
                        exp(reference_log_softmax(fixture->teacher_logits[teacher] + row * CLASSES,
                                                  temperature, c));
            kl += target * (log(target) - reference_log_softmax(student, temperature, c));
        }
    }
    double total = labelled > 0 ? (1.0 - kd_weight) * ce / labelled : 0.0;
    if (rows_with_target > 0)
        total += kd_weight * temperature * temperature * kl / rows_with_target;
    return total + reference_fitnet(config, fixture, projection);
}

/* λ_fit·MSE(P·h_s + b, h_t) from the definitions (0 unless fitnet). */
static double reference_fitnet(const trainer_method_config_t *config, const fixture_t *fixture,
                               const float *projection) {
    if (config->kind != TRAINER_METHOD_FITNET) return 0.0;
    int width = config->teacher_hidden[config->fitnet_teacher];
    const float *bias = projection + width * STUDENT_HIDDEN;
    double squared_error = 0.0;
    int present_rows = 0;
    for (int row = 0; row < ROWS; row++) {
        if (!fixture->present[config->fitnet_teacher][row]) continue;
        present_rows++;
        for (int unit = 0; unit < width; unit++) {
            double projected = bias[unit];
            for (int k = 0; k < STUDENT_HIDDEN; k++)
                projected += (double)projection[unit * STUDENT_HIDDEN + k] *
                             fixture->student_hidden[row * STUDENT_HIDDEN + k];
            double error =
                projected - fixture->teacher_hidden[config->fitnet_teacher][row * width + unit];
            squared_error += error * error;
        }
    }
    return config->fitnet_weight * squared_error / ((double)present_rows * width);
}

/*
 * The regression loss from trainer_method.h, in double: (1-w)·MSE(s, y) over the labelled
 * rows, w·MSE(s, Σ_i a_i z_i) over the rows with a teacher (a_i uniform over the present
 * mixed teachers, softmax_i(-mean_k (z_i - y)²) for ca-mkd on labelled rows), the fitnet term.
 */
static double reference_regression_loss(const trainer_method_config_t *config,
                                        const fixture_t *fixture, const float *projection) {
    double kd_weight = config->kind == TRAINER_METHOD_CE ? 0.0 : config->kd_weight;
    double task = 0.0, kd = 0.0;
    int labelled = 0, rows_with_target = 0;
    for (int row = 0; row < ROWS; row++) {
        const float *student = fixture->student_logits + row * CLASSES;
        const float *target = fixture->targets + row * CLASSES;
        if (fixture->labelled[row]) {
            for (int k = 0; k < CLASSES; k++) task += pow((double)student[k] - target[k], 2);
            labelled++;
        }
        if (config->kind == TRAINER_METHOD_CE) continue;
        int single = config->kind == TRAINER_METHOD_KD || config->kind == TRAINER_METHOD_FITNET;
        double mixture[TEACHERS] = {0}, mixture_sum = 0.0;
        for (int teacher = 0; teacher < TEACHERS; teacher++) {
            if (single && teacher != config->kd_teacher) continue;
            if (!fixture->present[teacher][row]) continue;
            double squared_error = 0.0;
            for (int k = 0; k < CLASSES; k++)
                squared_error +=
                    pow((double)fixture->teacher_logits[teacher][row * CLASSES + k] - target[k], 2);
            mixture[teacher] = config->kind == TRAINER_METHOD_CA_MKD && fixture->labelled[row]
                                   ? exp(-squared_error / CLASSES)
                                   : 1.0;
            mixture_sum += mixture[teacher];
        }
        if (mixture_sum == 0.0) continue;
        rows_with_target++;
        for (int k = 0; k < CLASSES; k++) {
            double mixed = 0.0;
            for (int teacher = 0; teacher < TEACHERS; teacher++)
                if (mixture[teacher] > 0.0)
                    mixed += mixture[teacher] / mixture_sum *
                             fixture->teacher_logits[teacher][row * CLASSES + k];
            kd += pow((double)student[k] - mixed, 2);
        }
    }
    double total = labelled > 0 ? (1.0 - kd_weight) * task / (labelled * CLASSES) : 0.0;
    if (rows_with_target > 0) total += kd_weight * kd / (rows_with_target * CLASSES);
    return total + reference_fitnet(config, fixture, projection);
}

/* ---- gradients against finite differences ------------------------------------------------ */

/*
 * check_gradcheck.h expects backward to ADD into gradient buffers.  trainer_method_loss
 * overwrites d_logits / d_hidden and adds into the method's own gradients, so the adapter
 * adds what one call wrote into the buffers the checker owns, and the loss callback puts
 * the method's gradients back after its call (the forward pass must not move them).
 */
typedef struct {
    trainer_method_t *method;
    fixture_t *fixture;
    float d_logits[ROWS * CLASSES];        /* what the checker sees for the student logits */
    float d_hidden[ROWS * STUDENT_HIDDEN]; /* ... and for the student hidden */
    step_result_t scratch;
    float *saved_grads; /* [param_count] */
} method_gradcheck_t;

static double method_gradcheck_loss(void *context) {
    method_gradcheck_t *check = context;
    size_t param_count = trainer_method_param_count(check->method);
    float *grads = trainer_method_grads(check->method);
    if (param_count) memcpy(check->saved_grads, grads, sizeof(float) * param_count);
    run_step(check->method, check->fixture, &check->scratch);
    if (param_count) memcpy(grads, check->saved_grads, sizeof(float) * param_count);
    return check->scratch.loss.total;
}

static void method_gradcheck_backward(void *context) {
    method_gradcheck_t *check = context;
    run_step(check->method, check->fixture, &check->scratch);
    for (int i = 0; i < ROWS * CLASSES; i++) check->d_logits[i] += check->scratch.d_logits[i];
    for (int i = 0; i < ROWS * STUDENT_HIDDEN; i++)
        check->d_hidden[i] += check->scratch.d_hidden[i];
}

/*
 * Loop over every method.  The loss is a mean over ~4 rows, so gradients are O(0.01..0.3);
 * the float rounding of L (~1e-7) over 2h = 2e-2 and the truncation error stay near 1e-5,
 * so an absolute tolerance of 2e-4 (tighter than the kernels' 1e-3) plus 1e-2 relative
 * leaves no room for a missing T, 1-w, λ or 1/rows.
 */
static void check_gradients(trainer_method_kind_t kind, trainer_task_t task, uint64_t seed) {
    fixture_t fixture;
    fixture_init(&fixture, 1000 + seed);
    trainer_method_config_t config = fixture_config(kind);
    config.task = task;
    if (task == TRAINER_TASK_REGRESSION) fixture_make_regression(&fixture, 3000 + seed);
    trainer_method_t *method = new_method(&config);

    method_gradcheck_t check = {.method = method, .fixture = &fixture};
    size_t param_count = trainer_method_param_count(method);
    check.saved_grads = calloc(param_count + 1, sizeof(float));
    ck_assert_ptr_nonnull(check.saved_grads);

    gradcheck_param_t params[4] = {
        {"student logits", fixture.student_logits, check.d_logits, ROWS * CLASSES},
        {"student hidden", fixture.student_hidden, check.d_hidden, ROWS * STUDENT_HIDDEN},
    };
    int param_total = 2;
    if (kind == TRAINER_METHOD_FITNET) {
        int weight_count = teacher_hidden_widths[FITNET_TEACHER] * STUDENT_HIDDEN;
        ck_assert_uint_eq(param_count,
                          (size_t)(weight_count + teacher_hidden_widths[FITNET_TEACHER]));
        float *values = trainer_method_params(method), *grads = trainer_method_grads(method);
        /* A nonzero bias, so that a dropped b in the forward pass shows. */
        for (int unit = 0; unit < teacher_hidden_widths[FITNET_TEACHER]; unit++)
            values[weight_count + unit] = 0.3f * (float)(unit + 1);
        params[param_total++] = (gradcheck_param_t){"projection P", values, grads, weight_count};
        params[param_total++] =
            (gradcheck_param_t){"projection b", values + weight_count, grads + weight_count,
                                teacher_hidden_widths[FITNET_TEACHER]};
    } else {
        ck_assert_uint_eq(param_count, 0);
    }

    /* The forward value first, against the definitions. */
    double loss = method_gradcheck_loss(&check);
    double want = task == TRAINER_TASK_REGRESSION
                      ? reference_regression_loss(&config, &fixture, trainer_method_params(method))
                      : reference_loss(&config, &fixture, trainer_method_params(method));
    ck_assert_msg(fabs(loss - want) <= 1e-5 * (1.0 + fabs(want)),
                  "%s (task %d): loss %.9g, reference %.9g", trainer_method_name(kind), (int)task,
                  loss, want);
    ck_assert_double_eq_tol(
        check.scratch.loss.total,
        check.scratch.loss.ce + check.scratch.loss.kd + check.scratch.loss.fitnet, 1e-12);
    ck_assert_int_eq(check.scratch.loss.labelled, 4);

    cm_rng_t rng;
    cm_rng_seed(&rng, 2000 + seed);
    gradcheck_tolerance_t tolerance = {.step = 1e-2, .relative = 1e-2, .absolute = 2e-4};
    gradcheck_run(&rng, params, param_total, method_gradcheck_loss, method_gradcheck_backward,
                  &check, tolerance);

    free(check.saved_grads);
    trainer_method_free(&method);
    ck_assert_ptr_null(method);
}

START_TEST(test_gradients_match_finite_differences) {
    check_gradients((trainer_method_kind_t)_i, TRAINER_TASK_CLASSIFICATION, (uint64_t)_i);
}
END_TEST

/* The same for regression: MSE task term, MSE to the mixed predictions, the fitnet term. */
START_TEST(test_regression_gradients_match_finite_differences) {
    check_gradients((trainer_method_kind_t)_i, TRAINER_TASK_REGRESSION, 100 + (uint64_t)_i);
}
END_TEST

/* ---- semantics ---------------------------------------------------------------------------- */

START_TEST(test_ce_ignores_teachers) {
    fixture_t fixture;
    fixture_init(&fixture, 11);
    trainer_method_config_t config = fixture_config(TRAINER_METHOD_CE);
    trainer_method_t *method = new_method(&config);
    step_result_t with_teachers, without_teachers;
    run_step(method, &fixture, &with_teachers);
    for (int teacher = 0; teacher < TEACHERS; teacher++) {
        for (int i = 0; i < ROWS * CLASSES; i++) fixture.teacher_logits[teacher][i] = NAN;
        memset(fixture.present[teacher], 0, ROWS);
    }
    run_step(method, &fixture, &without_teachers);
    assert_same_step(&with_teachers, &without_teachers);
    ck_assert(with_teachers.loss.kd == 0.0 && with_teachers.loss.fitnet == 0.0);
    ck_assert(with_teachers.loss.total == with_teachers.loss.ce);
    assert_all_zero(with_teachers.d_hidden, ROWS * STUDENT_HIDDEN, "ce d_hidden");
    trainer_method_free(&method);
}
END_TEST

START_TEST(test_kd_without_weight_is_ce) {
    fixture_t fixture;
    fixture_init(&fixture, 12);
    trainer_method_config_t ce_config = fixture_config(TRAINER_METHOD_CE);
    trainer_method_config_t kd_config = fixture_config(TRAINER_METHOD_KD);
    kd_config.kd_weight = 0.0f;
    trainer_method_t *ce = new_method(&ce_config), *kd = new_method(&kd_config);
    step_result_t ce_step, kd_step;
    run_step(ce, &fixture, &ce_step);
    run_step(kd, &fixture, &kd_step);
    assert_same_step(&ce_step, &kd_step);
    trainer_method_free(&ce);
    trainer_method_free(&kd);
}
END_TEST

START_TEST(test_kd_against_itself_is_zero) {
    fixture_t fixture;
    fixture_init(&fixture, 13);
    memset(fixture.present[KD_TEACHER], 1, ROWS);
    memcpy(fixture.student_logits, fixture.teacher_logits[KD_TEACHER],
           sizeof fixture.student_logits);
    for (int c = 0; c < ROWS * CLASSES; c++) /* absent rows held NaN: give them real logits */
        if (!isfinite(fixture.student_logits[c]))
            fixture.student_logits[c] = fixture.teacher_logits[KD_TEACHER][c] = (float)(c % 7);
    trainer_method_config_t config = fixture_config(TRAINER_METHOD_KD);
    config.kd_weight = 1.0f;
    trainer_method_t *method = new_method(&config);
    step_result_t step;
    run_step(method, &fixture, &step);
    ck_assert_double_eq_tol(step.loss.total, 0.0, 1e-6);
    ck_assert(step.loss.ce == 0.0);
    for (int i = 0; i < ROWS * CLASSES; i++) ck_assert_float_eq_tol(step.d_logits[i], 0.0f, 1e-7f);
    trainer_method_free(&method);
}
END_TEST

START_TEST(test_avg_kd_of_one_teacher_is_kd) {
    fixture_t fixture;
    fixture_init(&fixture, 14);
    trainer_method_config_t kd_config = fixture_config(TRAINER_METHOD_KD);
    kd_config.teacher_count = 1;
    kd_config.kd_teacher = 0;
    trainer_method_config_t avg_config = kd_config;
    avg_config.kind = TRAINER_METHOD_AVG_KD;
    trainer_method_t *kd = new_method(&kd_config), *avg = new_method(&avg_config);
    step_result_t kd_step, avg_step;
    run_step(kd, &fixture, &kd_step);
    run_step(avg, &fixture, &avg_step);
    assert_same_step(&kd_step, &avg_step);
    ck_assert(kd_step.loss.kd > 0.0);
    trainer_method_free(&kd);
    trainer_method_free(&avg);
}
END_TEST

/* Teacher 0 is confident and right on every label, teacher 1 confident and wrong. */
START_TEST(test_ca_mkd_follows_the_teacher_that_is_right) {
    fixture_t fixture;
    fixture_init(&fixture, 15);
    for (int row = 0; row < ROWS; row++) {
        int32_t label = (int32_t)(row % CLASSES);
        fixture.labels[row] = label;
        fixture.present[0][row] = fixture.present[1][row] = 1;
        for (int c = 0; c < CLASSES; c++) {
            fixture.teacher_logits[0][row * CLASSES + c] = c == label ? 16.0f : 0.0f;
            fixture.teacher_logits[1][row * CLASSES + c] =
                c == (label + 2) % CLASSES ? 16.0f : 0.0f;
        }
    }
    trainer_method_config_t config = fixture_config(TRAINER_METHOD_CA_MKD);
    config.teacher_count = 2;
    config.kd_teacher = 0;
    trainer_method_t *ca = new_method(&config);
    config.kind = TRAINER_METHOD_KD;
    trainer_method_t *kd_right = new_method(&config);
    config.kd_teacher = 1;
    trainer_method_t *kd_wrong = new_method(&config);
    config.kind = TRAINER_METHOD_AVG_KD;
    trainer_method_t *avg = new_method(&config);

    step_result_t ca_step, right_step, wrong_step, avg_step;
    run_step(ca, &fixture, &ca_step);
    run_step(kd_right, &fixture, &right_step);
    run_step(kd_wrong, &fixture, &wrong_step);
    run_step(avg, &fixture, &avg_step);
    /* The weights are ~ (1, e^-16): the mixture is the right teacher's to ~1e-7. */
    ck_assert_double_eq_tol(ca_step.loss.kd, right_step.loss.kd, 1e-5 * right_step.loss.kd);
    for (int i = 0; i < ROWS * CLASSES; i++)
        ck_assert_float_eq_tol(ca_step.d_logits[i], right_step.d_logits[i], 1e-6f);
    ck_assert(fabs(ca_step.loss.kd - wrong_step.loss.kd) > 0.1);
    ck_assert(fabs(ca_step.loss.kd - avg_step.loss.kd) > 0.1);

    /* Without labels nothing tells the teachers apart: ca-mkd is avg-kd. */
    for (int row = 0; row < ROWS; row++) fixture.labels[row] = -1;
    run_step(ca, &fixture, &ca_step);
    run_step(avg, &fixture, &avg_step);
    assert_same_step(&ca_step, &avg_step);

    trainer_method_free(&ca);
    trainer_method_free(&kd_right);
    trainer_method_free(&kd_wrong);
    trainer_method_free(&avg);
}
END_TEST

/* Loop over every method: NaN, 0 and a huge value in absent rows give identical results. */
START_TEST(test_absent_rows_change_nothing) {
    trainer_method_kind_t kind = (trainer_method_kind_t)_i;
    fixture_t fixture;
    fixture_init(&fixture, 16);
    trainer_method_config_t config = fixture_config(kind);
    trainer_method_t *method = new_method(&config);
    static const float garbage[] = {0.0f, 1e30f, -INFINITY};
    step_result_t with_nan, with_garbage;
    trainer_method_zero_grad(method);
    run_step(method, &fixture, &with_nan);
    ck_assert(isfinite(with_nan.loss.total));
    assert_all_finite(with_nan.d_logits, ROWS * CLASSES, "d_logits");
    assert_all_finite(with_nan.d_hidden, ROWS * STUDENT_HIDDEN, "d_hidden");
    size_t param_count = trainer_method_param_count(method);
    float *grads_with_nan = calloc(param_count + 1, sizeof(float));
    ck_assert_ptr_nonnull(grads_with_nan);
    if (param_count) {
        memcpy(grads_with_nan, trainer_method_grads(method), sizeof(float) * param_count);
        assert_all_finite(grads_with_nan, (int)param_count, "projection gradients");
    }
    for (size_t g = 0; g < sizeof garbage / sizeof garbage[0]; g++) {
        fixture_set_garbage(&fixture, garbage[g]);
        trainer_method_zero_grad(method);
        run_step(method, &fixture, &with_garbage);
        assert_same_step(&with_nan, &with_garbage);
        if (param_count)
            ck_assert(memcmp(grads_with_nan, trainer_method_grads(method),
                             sizeof(float) * param_count) == 0);
    }
    free(grads_with_nan);
    trainer_method_free(&method);
}
END_TEST

/* Loop over every method: no labels means no CE term and no CE gradient. */
START_TEST(test_unlabelled_batch_has_no_ce) {
    trainer_method_kind_t kind = (trainer_method_kind_t)_i;
    fixture_t fixture;
    fixture_init(&fixture, 17);
    for (int row = 0; row < ROWS; row++) fixture.labels[row] = -1;
    trainer_method_config_t config = fixture_config(kind);
    trainer_method_t *method = new_method(&config);
    step_result_t step;
    run_step(method, &fixture, &step);
    ck_assert_int_eq(step.loss.labelled, 0);
    ck_assert(step.loss.ce == 0.0);
    ck_assert_double_eq_tol(step.loss.total,
                            reference_loss(&config, &fixture, trainer_method_params(method)), 1e-5);
    if (kind == TRAINER_METHOD_CE) {
        ck_assert(step.loss.total == 0.0);
        assert_all_zero(step.d_logits, ROWS * CLASSES, "ce d_logits without labels");
    }
    trainer_method_free(&method);
}
END_TEST

/* Loop over every method: d_logits and d_hidden are overwritten, the projection's gradients
 * accumulate. */
START_TEST(test_overwrites_inputs_and_adds_parameters) {
    trainer_method_kind_t kind = (trainer_method_kind_t)_i;
    fixture_t fixture;
    fixture_init(&fixture, 18);
    trainer_method_config_t config = fixture_config(kind);
    trainer_method_t *method = new_method(&config);
    step_result_t clean, dirty;
    memset(&clean, 0, sizeof clean);
    for (int i = 0; i < ROWS * CLASSES; i++) dirty.d_logits[i] = NAN;
    for (int i = 0; i < ROWS * STUDENT_HIDDEN; i++) dirty.d_hidden[i] = 7.0f;
    trainer_method_zero_grad(method);
    run_step(method, &fixture, &clean);
    size_t param_count = trainer_method_param_count(method);
    float *once = calloc(param_count + 1, sizeof(float));
    ck_assert_ptr_nonnull(once);
    if (param_count) memcpy(once, trainer_method_grads(method), sizeof(float) * param_count);
    run_step(method, &fixture, &dirty);
    assert_same_step(&clean, &dirty);
    if (kind != TRAINER_METHOD_FITNET)
        assert_all_zero(clean.d_hidden, ROWS * STUDENT_HIDDEN, "d_hidden of a method without it");
    for (size_t i = 0; i < param_count; i++)
        ck_assert_float_eq_tol(trainer_method_grads(method)[i], 2.0f * once[i], 1e-6f);
    trainer_method_zero_grad(method);
    if (param_count) assert_all_zero(trainer_method_grads(method), (int)param_count, "grads");
    free(once);
    trainer_method_free(&method);
}
END_TEST

START_TEST(test_empty_batch) {
    fixture_t fixture;
    fixture_init(&fixture, 19);
    fixture.batch.rows = 0;
    trainer_method_config_t config = fixture_config(TRAINER_METHOD_FITNET);
    trainer_method_t *method = new_method(&config);
    step_result_t step;
    run_step(method, &fixture, &step);
    ck_assert(step.loss.total == 0.0);
    ck_assert_int_eq(step.loss.labelled, 0);
    trainer_method_free(&method);
}
END_TEST

/* ---- regression --------------------------------------------------------------------------- */

static trainer_method_config_t regression_config(trainer_method_kind_t kind) {
    trainer_method_config_t config = fixture_config(kind);
    config.task = TRAINER_TASK_REGRESSION;
    return config;
}

/* Terms are named by the task: the task term is "mse" for regression, "ce" otherwise. */
START_TEST(test_term_names) {
    static const char *const expected[BASELINES][3] = {
        [TRAINER_METHOD_CE] = {"ce", NULL, NULL},
        [TRAINER_METHOD_KD] = {"ce", "kd", NULL},
        [TRAINER_METHOD_AVG_KD] = {"ce", "kd", NULL},
        [TRAINER_METHOD_CA_MKD] = {"ce", "kd", NULL},
        [TRAINER_METHOD_FITNET] = {"ce", "kd", "fitnet"},
    };
    for (int kind = 0; kind < BASELINES; kind++)
        for (int task = 0; task < 2; task++) {
            trainer_method_config_t config = fixture_config((trainer_method_kind_t)kind);
            config.task = (trainer_task_t)task;
            trainer_method_t *method = new_method(&config);
            int count = 0;
            while (count < 3 && expected[kind][count]) count++;
            ck_assert_int_eq(trainer_method_term_count(method), count);
            for (int term = 0; term < count; term++) {
                const char *want =
                    term == 0 && task == TRAINER_TASK_REGRESSION ? "mse" : expected[kind][term];
                ck_assert_str_eq(trainer_method_term_name(method, term), want);
            }
            ck_assert_ptr_null(trainer_method_term_name(method, count));
            ck_assert_ptr_null(trainer_method_term_name(method, -1));
            trainer_method_free(&method);
        }
}
END_TEST

/* kd with the teacher's predictions as the student's outputs: the kd term and its gradient
 * are exactly zero, whatever the temperature (it does not apply to regression). */
START_TEST(test_regression_kd_against_itself_is_zero) {
    fixture_t fixture;
    fixture_init(&fixture, 41);
    fixture_make_regression(&fixture, 42);
    memset(fixture.present[KD_TEACHER], 1, ROWS);
    for (int i = 0; i < ROWS * CLASSES; i++) {
        if (!isfinite(fixture.teacher_logits[KD_TEACHER][i]))
            fixture.teacher_logits[KD_TEACHER][i] = (float)(i % 7) - 3.0f;
        fixture.student_logits[i] = fixture.teacher_logits[KD_TEACHER][i];
    }
    trainer_method_config_t config = regression_config(TRAINER_METHOD_KD);
    config.kd_weight = 1.0f;
    for (int t = 0; t < 2; t++) {
        config.temperature = t ? 7.0f : 1.0f;
        trainer_method_t *method = new_method(&config);
        step_result_t step;
        run_step(method, &fixture, &step);
        ck_assert(step.loss.kd == 0.0 && step.loss.ce == 0.0 && step.loss.total == 0.0);
        assert_all_zero(step.d_logits, ROWS * CLASSES, "kd-to-itself d_outputs");
        trainer_method_free(&method);
    }
}
END_TEST

/*
 * Shifting everything (student outputs, targets, every teacher's prediction) by the same
 * constant leaves every squared error, so every ca-mkd weight, unchanged; the target
 * Σ_i a_i (z_i + δ) moves by δ·Σ_i a_i, so the loss and gradients stay the same exactly when
 * the weights of every row sum to 1.  avg-kd the same.
 */
START_TEST(test_regression_mixture_weights_sum_to_one) {
    trainer_method_kind_t kind = _i ? TRAINER_METHOD_CA_MKD : TRAINER_METHOD_AVG_KD;
    fixture_t fixture;
    fixture_init(&fixture, 43);
    fixture_make_regression(&fixture, 44);
    trainer_method_config_t config = regression_config(kind);
    trainer_method_t *method = new_method(&config);
    step_result_t before, after;
    run_step(method, &fixture, &before);
    ck_assert(before.loss.kd > 0.0);
    const float shift = 3.0f;
    for (int i = 0; i < ROWS * CLASSES; i++) {
        fixture.student_logits[i] += shift;
        fixture.targets[i] += shift;
        for (int teacher = 0; teacher < TEACHERS; teacher++)
            fixture.teacher_logits[teacher][i] += shift; /* NaN stays NaN */
    }
    run_step(method, &fixture, &after);
    ck_assert_double_eq_tol(after.loss.kd, before.loss.kd, 1e-5 * before.loss.kd);
    ck_assert_double_eq_tol(after.loss.total, before.loss.total, 1e-5 * before.loss.total);
    for (int i = 0; i < ROWS * CLASSES; i++)
        ck_assert_float_eq_tol(after.d_logits[i], before.d_logits[i], 1e-5f);
    trainer_method_free(&method);
}
END_TEST

/* Teacher 0 predicts every label exactly, teacher 1 misses by 5 on every target: ca-mkd's
 * weights are (1, e^-25), so it is kd from teacher 0; without labels it is avg-kd. */
START_TEST(test_regression_ca_mkd_follows_the_teacher_that_is_right) {
    fixture_t fixture;
    fixture_init(&fixture, 45);
    fixture_make_regression(&fixture, 46);
    for (int row = 0; row < ROWS; row++) {
        fixture.labelled[row] = 1;
        fixture.present[0][row] = fixture.present[1][row] = 1;
        for (int k = 0; k < CLASSES; k++) {
            fixture.teacher_logits[0][row * CLASSES + k] = fixture.targets[row * CLASSES + k];
            fixture.teacher_logits[1][row * CLASSES + k] =
                fixture.targets[row * CLASSES + k] + 5.0f;
        }
    }
    trainer_method_config_t config = regression_config(TRAINER_METHOD_CA_MKD);
    config.teacher_count = 2;
    config.kd_teacher = 0;
    trainer_method_t *ca = new_method(&config);
    config.kind = TRAINER_METHOD_KD;
    trainer_method_t *kd_right = new_method(&config);
    config.kind = TRAINER_METHOD_AVG_KD;
    trainer_method_t *avg = new_method(&config);
    step_result_t ca_step, right_step, avg_step;
    run_step(ca, &fixture, &ca_step);
    run_step(kd_right, &fixture, &right_step);
    run_step(avg, &fixture, &avg_step);
    ck_assert_double_eq_tol(ca_step.loss.kd, right_step.loss.kd, 1e-5 * right_step.loss.kd);
    for (int i = 0; i < ROWS * CLASSES; i++)
        ck_assert_float_eq_tol(ca_step.d_logits[i], right_step.d_logits[i], 1e-6f);
    ck_assert(fabs(ca_step.loss.kd - avg_step.loss.kd) > 0.1);
    memset(fixture.labelled, 0, sizeof fixture.labelled);
    run_step(ca, &fixture, &ca_step);
    run_step(avg, &fixture, &avg_step);
    assert_same_step(&ca_step, &avg_step);
    ck_assert(ca_step.loss.ce == 0.0 && ca_step.loss.labelled == 0);
    trainer_method_free(&ca);
    trainer_method_free(&kd_right);
    trainer_method_free(&avg);
}
END_TEST

/* Loop over every method: NaN or a huge value in absent teacher rows and in the targets of
 * unlabelled rows changes nothing. */
START_TEST(test_regression_absent_rows_change_nothing) {
    fixture_t fixture;
    fixture_init(&fixture, 47);
    fixture_make_regression(&fixture, 48);
    trainer_method_config_t config = regression_config((trainer_method_kind_t)_i);
    trainer_method_t *method = new_method(&config);
    step_result_t clean, dirty;
    run_step(method, &fixture, &clean);
    ck_assert(isfinite(clean.loss.total));
    assert_all_finite(clean.d_logits, ROWS * CLASSES, "d_outputs");
    assert_all_finite(clean.d_hidden, ROWS * STUDENT_HIDDEN, "d_hidden");
    for (int row = 0; row < ROWS; row++)
        if (!fixture.labelled[row])
            for (int k = 0; k < CLASSES; k++) fixture.targets[row * CLASSES + k] = NAN;
    fixture_set_garbage(&fixture, 1e30f);
    run_step(method, &fixture, &dirty);
    assert_same_step(&clean, &dirty);
    trainer_method_free(&method);
}
END_TEST

/* ---- configuration ------------------------------------------------------------------------- */

START_TEST(test_names_round_trip) {
    for (int kind = 0; kind < TRAINER_METHOD_COUNT; kind++) {
        const char *name = trainer_method_name((trainer_method_kind_t)kind);
        ck_assert_ptr_nonnull(name);
        trainer_method_kind_t parsed = TRAINER_METHOD_COUNT;
        ck_assert_int_eq(trainer_method_parse(name, &parsed), CM_OK);
        ck_assert_int_eq(parsed, kind);
    }
    ck_assert_str_eq(trainer_method_name(TRAINER_METHOD_AVG_KD), "avg-kd");
    ck_assert_str_eq(trainer_method_name(TRAINER_METHOD_CA_MKD), "ca-mkd");
    ck_assert_ptr_null(trainer_method_name(TRAINER_METHOD_COUNT));
    ck_assert_ptr_null(trainer_method_name((trainer_method_kind_t)-1));
    trainer_method_kind_t parsed;
    ck_assert_int_eq(trainer_method_parse("hinton", &parsed), CM_ERR_INVALID_ARG);
    ck_assert_str_eq(cm_last_error(),
                     "unknown --method 'hinton': expected one of ce, kd, avg-kd, ca-mkd, fitnet, "
                     "diversedistill");
}
END_TEST

typedef struct {
    trainer_method_kind_t kind;
    const char *field; /* what the case changes */
    float value;
    const char *sentence;
} bad_config_t;

static const bad_config_t bad_configs[] = {
    {TRAINER_METHOD_KD, "kd_teacher", 3,
     "--kd-teacher index 3 is out of range: the committee has 2 teachers"},
    {TRAINER_METHOD_FITNET, "kd_teacher", -1,
     "--kd-teacher index -1 is out of range: the committee has 2 teachers"},
    {TRAINER_METHOD_FITNET, "fitnet_teacher", 2,
     "--fitnet-teacher index 2 is out of range: the committee has 2 teachers"},
    {TRAINER_METHOD_FITNET, "fitnet_teacher", 1,
     "--method fitnet regresses onto teacher 1's hidden vector, and that teacher has none"},
    {TRAINER_METHOD_FITNET, "student_hidden", 0,
     "--method fitnet projects the student's hidden vector, and the student has none"},
    {TRAINER_METHOD_FITNET, "fitnet_weight", -0.5f,
     "--fitnet-weight must be zero or positive, got -0.5"},
    {TRAINER_METHOD_KD, "teacher_count", 0,
     "--method kd distils from teachers, and the committee has none"},
    {TRAINER_METHOD_AVG_KD, "teacher_count", 0,
     "--method avg-kd distils from teachers, and the committee has none"},
    {TRAINER_METHOD_CA_MKD, "teacher_count", 0,
     "--method ca-mkd distils from teachers, and the committee has none"},
    {TRAINER_METHOD_KD, "teacher_count", 9,
     "the committee has 9 teachers: at most 8 are supported"},
    {TRAINER_METHOD_KD, "temperature", 0, "--temperature must be a positive number, got 0"},
    {TRAINER_METHOD_CE, "temperature", NAN, "--temperature must be a positive number, got nan"},
    {TRAINER_METHOD_KD, "kd_weight", 1.5f, "--kd-weight must be in [0, 1], got 1.5"},
    {TRAINER_METHOD_AVG_KD, "kd_weight", -0.25f, "--kd-weight must be in [0, 1], got -0.25"},
    {TRAINER_METHOD_KD, "classes", 0, "the method needs at least one class, got 0"},
    {TRAINER_METHOD_KD, "max_batch", 0, "batch size must be at least 1, got 0"},
    {TRAINER_METHOD_COUNT, "kind", 0, "unknown method kind 6: expected 0..5"},
    {TRAINER_METHOD_DIVERSEDISTILL, "dd", 0,
     "--method diversedistill needs the Distillation Module's settings"},
};

START_TEST(test_config_validation) {
    const bad_config_t *bad = &bad_configs[_i];
    trainer_method_config_t config = fixture_config(bad->kind);
    config.teacher_count = 2;
    config.teacher_hidden[1] = 0;
    int value = (int)bad->value;
    if (strcmp(bad->field, "kd_teacher") == 0) config.kd_teacher = value;
    if (strcmp(bad->field, "fitnet_teacher") == 0) config.fitnet_teacher = value;
    if (strcmp(bad->field, "student_hidden") == 0) config.student_hidden = value;
    if (strcmp(bad->field, "fitnet_weight") == 0) config.fitnet_weight = bad->value;
    if (strcmp(bad->field, "teacher_count") == 0) config.teacher_count = value;
    if (strcmp(bad->field, "temperature") == 0) config.temperature = bad->value;
    if (strcmp(bad->field, "kd_weight") == 0) config.kd_weight = bad->value;
    if (strcmp(bad->field, "classes") == 0) config.outputs = value;
    if (strcmp(bad->field, "max_batch") == 0) config.max_batch = value;
    if (strcmp(bad->field, "dd") == 0) config.dd = NULL;
    trainer_method_t *method = (trainer_method_t *)&config; /* any non-NULL: _new resets it */
    ck_assert_int_eq(trainer_method_new(&config, 1, &method), CM_ERR_INVALID_ARG);
    ck_assert_ptr_null(method);
    ck_assert_str_eq(cm_last_error(), bad->sentence);
}
END_TEST

/* What each method may leave out: ce needs no teacher; the teacher index of a method
 * that does not use it is not checked; w = 0 and w = 1 are both allowed. */
START_TEST(test_config_accepts_edges) {
    trainer_method_config_t config = fixture_config(TRAINER_METHOD_CE);
    config.teacher_count = 0;
    config.kd_teacher = config.fitnet_teacher = 42;
    config.student_hidden = 0;
    trainer_method_t *method = new_method(&config);
    trainer_method_free(&method);
    config = fixture_config(TRAINER_METHOD_AVG_KD);
    config.kd_teacher = -3;
    config.kd_weight = 1.0f;
    method = new_method(&config);
    trainer_method_free(&method);
    config = fixture_config(TRAINER_METHOD_KD);
    config.kd_weight = 0.0f;
    config.fitnet_teacher = 99;
    method = new_method(&config);
    trainer_method_free(&method);
    trainer_method_free(&method); /* NULL-safe */
    trainer_method_free(NULL);
}
END_TEST

START_TEST(test_needs) {
    /* {logits, hidden} per method and teacher, with kd_teacher 1 and fitnet_teacher 0; the
     * fitnet teacher's logits come with its hidden vector (so a record holds them). */
    static const int expected[BASELINES][TEACHERS][2] = {
        [TRAINER_METHOD_CE] = {{0, 0}, {0, 0}, {0, 0}},
        [TRAINER_METHOD_KD] = {{0, 0}, {1, 0}, {0, 0}},
        [TRAINER_METHOD_AVG_KD] = {{1, 0}, {1, 0}, {1, 0}},
        [TRAINER_METHOD_CA_MKD] = {{1, 0}, {1, 0}, {1, 0}},
        [TRAINER_METHOD_FITNET] = {{1, 1}, {1, 0}, {0, 0}},
    };
    for (int kind = 0; kind < BASELINES; kind++) {
        trainer_method_config_t config = fixture_config((trainer_method_kind_t)kind);
        trainer_method_t *method = new_method(&config);
        ck_assert(!trainer_method_chooses(method));
        for (int teacher = 0; teacher < TEACHERS; teacher++) {
            unsigned needs = trainer_method_needs(method, teacher);
            ck_assert_uint_eq(needs & (1u << TRAINER_OUTPUT_TOKENS), 0);
            int logits = (needs >> TRAINER_OUTPUT_LOGITS) & 1;
            int hidden = (needs >> TRAINER_OUTPUT_HIDDEN) & 1;
            ck_assert_msg(
                logits == expected[kind][teacher][0] && hidden == expected[kind][teacher][1],
                "%s, teacher %d: needs logits %d hidden %d",
                trainer_method_name((trainer_method_kind_t)kind), teacher, logits, hidden);
        }
        trainer_method_free(&method);
    }
}
END_TEST

/* ---- own parameters -------------------------------------------------------------------------- */

START_TEST(test_parameter_block) {
    trainer_method_config_t config = fixture_config(TRAINER_METHOD_FITNET);
    trainer_method_t *method = new_method(&config);
    size_t count = trainer_method_param_count(method);
    ck_assert_uint_eq(count, 3 * STUDENT_HIDDEN + 3);
    float *sections[] = {trainer_method_params(method), trainer_method_grads(method),
                         trainer_method_moment1(method), trainer_method_moment2(method)};
    for (int s = 0; s < 4; s++) {
        ck_assert_ptr_nonnull(sections[s]);
        ck_assert_uint_eq((uintptr_t)sections[s] % 64, 0);
        if (s > 0) ck_assert(sections[s] >= sections[s - 1] + count);
    }
    /* P ~ N(0, 1/sqrt(student_hidden)) from the seed, b = 0, moments zeroed. */
    double sum_squares = 0.0;
    for (int i = 0; i < 3 * STUDENT_HIDDEN; i++) sum_squares += sections[0][i] * sections[0][i];
    ck_assert(sum_squares > 0.0);
    ck_assert(sum_squares < 3 * STUDENT_HIDDEN * 4.0 / STUDENT_HIDDEN);
    for (size_t i = 3 * STUDENT_HIDDEN; i < count; i++) ck_assert(sections[0][i] == 0.0f);
    for (int s = 1; s < 4; s++) assert_all_zero(sections[s], (int)count, "fresh section");
    trainer_method_t *twin = new_method(&config); /* the same seed */
    ck_assert(memcmp(trainer_method_params(twin), sections[0], sizeof(float) * count) == 0);
    trainer_method_free(&twin);
    trainer_method_free(&method);

    config = fixture_config(TRAINER_METHOD_CA_MKD);
    method = new_method(&config);
    ck_assert_uint_eq(trainer_method_param_count(method), 0);
    ck_assert_ptr_null(trainer_method_params(method));
    ck_assert_ptr_null(trainer_method_grads(method));
    trainer_method_zero_grad(method);
    cm_adamw_config_t adamw = cm_adamw_defaults();
    trainer_method_update(method, &adamw, 1); /* nothing to update */
    trainer_method_free(&method);
}
END_TEST

/* With zero gradients AdamW only decays: P shrinks by (1 - lr·wd), b stays. */
START_TEST(test_adamw_decays_projection_not_bias) {
    trainer_method_config_t config = fixture_config(TRAINER_METHOD_FITNET);
    trainer_method_t *method = new_method(&config);
    size_t count = trainer_method_param_count(method), weight_count = 3 * STUDENT_HIDDEN;
    float *params = trainer_method_params(method);
    for (size_t i = weight_count; i < count; i++) params[i] = 0.5f;
    float before[3 * STUDENT_HIDDEN + 3];
    memcpy(before, params, sizeof before);
    cm_adamw_config_t adamw = cm_adamw_defaults();
    adamw.learning_rate = 0.1f;
    adamw.weight_decay = 0.5f;
    trainer_method_zero_grad(method);
    trainer_method_update(method, &adamw, 1);
    for (size_t i = 0; i < weight_count; i++)
        ck_assert_float_eq_tol(params[i], before[i] * (1.0f - 0.05f), 1e-7f);
    for (size_t i = weight_count; i < count; i++) ck_assert_float_eq(params[i], 0.5f);
    trainer_method_free(&method);
}
END_TEST

/* The projection alone learns h_t = A·h_s + c on a fixed batch (kd off). */
START_TEST(test_fitnet_projection_learns_a_linear_map) {
    fixture_t fixture;
    fixture_init(&fixture, 21);
    int width = teacher_hidden_widths[FITNET_TEACHER];
    cm_rng_t rng;
    cm_rng_seed(&rng, 22);
    float map[3 * STUDENT_HIDDEN + 3];
    gradcheck_fill(&rng, map, (int)(sizeof map / sizeof map[0]), -1.0f, 1.0f);
    for (int row = 0; row < ROWS; row++)
        if (fixture.present[FITNET_TEACHER][row])
            cm_layers_dense_forward(fixture.teacher_hidden[FITNET_TEACHER] + row * width,
                                    fixture.student_hidden + row * STUDENT_HIDDEN, map,
                                    map + width * STUDENT_HIDDEN, 1, STUDENT_HIDDEN, width);
    trainer_method_config_t config = fixture_config(TRAINER_METHOD_FITNET);
    config.kd_weight = 0.0f;
    trainer_method_t *method = new_method(&config);
    cm_adamw_config_t adamw = cm_adamw_defaults();
    adamw.learning_rate = 0.05f;
    adamw.weight_decay = 0.0f;
    step_result_t step;
    double first = 0.0;
    for (long iteration = 1; iteration <= 400; iteration++) {
        trainer_method_zero_grad(method);
        run_step(method, &fixture, &step);
        if (iteration == 1) first = step.loss.fitnet;
        trainer_method_update(method, &adamw, iteration);
    }
    run_step(method, &fixture, &step);
    ck_assert_msg(step.loss.fitnet < 1e-3 * first, "fitnet loss %g -> %g", first, step.loss.fitnet);
    trainer_method_free(&method);
}
END_TEST

/* ---- end to end ------------------------------------------------------------------------------ */

/* A 2-layer MLP (8 -> 24 relu -> 5) fits a fixed random teacher logit table by pure kd. */
START_TEST(test_student_learns_teacher_by_kd) {
    enum { EXAMPLES = 16, INPUTS = 8, HIDDEN = 24, OUT = 5, STEPS = 300 };
    enum {
        W1 = 0,
        B1 = W1 + HIDDEN * INPUTS,
        W2 = B1 + HIDDEN,
        B2 = W2 + OUT * HIDDEN,
        PARAMS = B2 + OUT,
    };
    cm_rng_t rng;
    cm_rng_seed(&rng, 31);
    static float params[PARAMS], grads[PARAMS], moment1[PARAMS], moment2[PARAMS];
    static float inputs[EXAMPLES * INPUTS], teacher[EXAMPLES * OUT];
    static float pre[EXAMPLES * HIDDEN], act[EXAMPLES * HIDDEN], logits[EXAMPLES * OUT];
    static float d_act[EXAMPLES * HIDDEN], d_pre[EXAMPLES * HIDDEN], d_logits[EXAMPLES * OUT];
    memset(params, 0, sizeof params);
    memset(moment1, 0, sizeof moment1);
    memset(moment2, 0, sizeof moment2);
    gradcheck_fill(&rng, inputs, EXAMPLES * INPUTS, -1.0f, 1.0f);
    for (int i = 0; i < EXAMPLES * OUT; i++) teacher[i] = 3.0f * cm_rng_normal(&rng);
    for (int i = 0; i < B1; i++) params[W1 + i] = cm_rng_normal(&rng) / sqrtf(INPUTS);
    for (int i = 0; i < OUT * HIDDEN; i++) params[W2 + i] = cm_rng_normal(&rng) / sqrtf(HIDDEN);

    int32_t labels[EXAMPLES];
    uint8_t present[EXAMPLES];
    for (int i = 0; i < EXAMPLES; i++) labels[i] = -1, present[i] = 1;
    trainer_batch_t batch = {.rows = EXAMPLES, .labels = labels};
    batch.teacher_logits[0] = teacher;
    batch.teacher_present[0] = present;
    trainer_method_config_t config = {.kind = TRAINER_METHOD_KD,
                                      .temperature = 2.0f,
                                      .kd_weight = 1.0f,
                                      .teacher_count = 1,
                                      .outputs = OUT,
                                      .max_batch = EXAMPLES};
    trainer_method_t *method = new_method(&config);
    cm_adamw_config_t adamw = cm_adamw_defaults();
    adamw.learning_rate = 1e-2f;
    trainer_loss_t loss;
    trainer_student_t student = {.outputs = logits, .d_outputs = d_logits};
    double first = 0.0;
    for (long step = 1; step <= STEPS + 1; step++) {
        cm_layers_dense_forward(pre, inputs, params + W1, params + B1, EXAMPLES, INPUTS, HIDDEN);
        cm_layers_relu_forward(act, pre, EXAMPLES * HIDDEN);
        cm_layers_dense_forward(logits, act, params + W2, params + B2, EXAMPLES, HIDDEN, OUT);
        trainer_method_loss(method, &batch, &student, &loss);
        if (step == 1) first = loss.total;
        if (step == STEPS + 1) break;
        memset(grads, 0, sizeof grads);
        memset(d_act, 0, sizeof d_act);
        memset(d_pre, 0, sizeof d_pre);
        cm_layers_dense_backward(d_act, grads + W2, grads + B2, d_logits, act, params + W2,
                                 EXAMPLES, HIDDEN, OUT);
        cm_layers_relu_backward(d_pre, d_act, pre, EXAMPLES * HIDDEN);
        cm_layers_dense_backward(NULL, grads + W1, grads + B1, d_pre, inputs, params + W1, EXAMPLES,
                                 INPUTS, HIDDEN);
        cm_adamw_update(params + W1, grads + W1, moment1 + W1, moment2 + W1, HIDDEN * INPUTS,
                        &adamw, step, 1);
        cm_adamw_update(params + B1, grads + B1, moment1 + B1, moment2 + B1, HIDDEN, &adamw, step,
                        0);
        cm_adamw_update(params + W2, grads + W2, moment1 + W2, moment2 + W2, OUT * HIDDEN, &adamw,
                        step, 1);
        cm_adamw_update(params + B2, grads + B2, moment1 + B2, moment2 + B2, OUT, &adamw, step, 0);
    }
    ck_assert(first > 0.5);
    ck_assert_msg(loss.total < 0.1 * first, "kd loss %g -> %g after %d steps", first, loss.total,
                  STEPS);
    trainer_method_free(&method);
}
END_TEST

Suite *check_trainer_method_suite(void);
Suite *check_trainer_method_suite(void) {
    Suite *suite = suite_create("trainer_method");
    TCase *gradients = tcase_create("gradients");
    tcase_add_loop_test(gradients, test_gradients_match_finite_differences, 0, BASELINES);
    tcase_add_loop_test(gradients, test_regression_gradients_match_finite_differences, 0,
                        BASELINES);
    suite_add_tcase(suite, gradients);

    TCase *semantics = tcase_create("semantics");
    tcase_add_test(semantics, test_ce_ignores_teachers);
    tcase_add_test(semantics, test_kd_without_weight_is_ce);
    tcase_add_test(semantics, test_kd_against_itself_is_zero);
    tcase_add_test(semantics, test_avg_kd_of_one_teacher_is_kd);
    tcase_add_test(semantics, test_ca_mkd_follows_the_teacher_that_is_right);
    tcase_add_loop_test(semantics, test_absent_rows_change_nothing, 0, BASELINES);
    tcase_add_loop_test(semantics, test_unlabelled_batch_has_no_ce, 0, BASELINES);
    tcase_add_loop_test(semantics, test_overwrites_inputs_and_adds_parameters, 0, BASELINES);
    tcase_add_test(semantics, test_empty_batch);
    suite_add_tcase(suite, semantics);

    TCase *regression = tcase_create("regression");
    tcase_add_test(regression, test_term_names);
    tcase_add_test(regression, test_regression_kd_against_itself_is_zero);
    tcase_add_loop_test(regression, test_regression_mixture_weights_sum_to_one, 0, 2);
    tcase_add_test(regression, test_regression_ca_mkd_follows_the_teacher_that_is_right);
    tcase_add_loop_test(regression, test_regression_absent_rows_change_nothing, 0, BASELINES);
    suite_add_tcase(suite, regression);

    TCase *configuration = tcase_create("configuration");
    tcase_add_test(configuration, test_names_round_trip);
    tcase_add_loop_test(configuration, test_config_validation, 0,
                        (int)(sizeof bad_configs / sizeof bad_configs[0]));
    tcase_add_test(configuration, test_config_accepts_edges);
    tcase_add_test(configuration, test_needs);
    suite_add_tcase(suite, configuration);

    TCase *parameters = tcase_create("parameters");
    tcase_add_test(parameters, test_parameter_block);
    tcase_add_test(parameters, test_adamw_decays_projection_not_bias);
    tcase_add_test(parameters, test_fitnet_projection_learns_a_linear_map);
    suite_add_tcase(suite, parameters);

    TCase *end_to_end = tcase_create("end_to_end");
    tcase_add_test(end_to_end, test_student_learns_teacher_by_kd);
    suite_add_tcase(suite, end_to_end);
    return suite;
}
