/*
 * trainer_method: the §3 baselines as one loss-and-gradient step.  See trainer_method.h.
 *
 * Every method is the same three terms with different targets:
 *   total = (1-w)·CE(s, y) + w·T²·KL(target ‖ softmax(s/T)) + λ_fit·MSE(P·h_s + b, h_t)
 * where ce is w = 0 with no other term, kd / avg-kd / ca-mkd differ only in how the
 * per-row target mixes the teachers' softened outputs, and fitnet adds the projection
 * term.  A row whose target does not exist (no mixed teacher present) keeps a row
 * weight of 0 and a finite placeholder target (uniform), so cm_loss_kl_* can run over
 * the whole batch while the garbage a caller leaves in absent teacher rows is never
 * read: only rows marked present are ever touched, for logits and hidden alike.
 *
 * The FitNet projection lives in one 64-byte aligned block of four sections (params,
 * grads, first and second AdamW moments), each section rounded up to a whole number
 * of cache lines; inside a section P [teacher_hidden][student_hidden] comes first,
 * then b [teacher_hidden].  Scratch for max_batch rows is allocated once, in _new.
 */
#include "trainer_method.h"

#include "cm_alloc.h"
#include "cm_layers.h"
#include "cm_loss.h"
#include "cm_rng.h"

#include <assert.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

enum { FLOATS_PER_CACHE_LINE = 64 / sizeof(float) };

struct trainer_method {
    trainer_method_config_t config;
    int fit_hidden; /* teacher_hidden[fitnet_teacher] for fitnet, else 0 */

    /* Own parameters: block [4][section_floats] = params, grads, moment1, moment2. */
    size_t param_count;    /* floats in use per section: fit_hidden*student_hidden + fit_hidden */
    size_t section_floats; /* param_count rounded up to a cache line */
    float *block;
    float *projection_weight;      /* P [fit_hidden][student_hidden], inside params */
    float *projection_bias;        /* b [fit_hidden], inside params */
    float *projection_weight_grad; /* [fit_hidden][student_hidden], inside grads */
    float *projection_bias_grad;   /* [fit_hidden], inside grads */

    /* Scratch, sized for max_batch rows. */
    float *label_probs;   /* [max_batch][classes] softmax(s), saved by the CE forward */
    float *student_probs; /* [max_batch][classes] softmax(s/T), saved by the KL forward */
    float *target;        /* [max_batch][classes] the mixed softened teacher distribution */
    float *row_weights;   /* [max_batch] 1 where the row has a target, else 0 */
    float *teacher_probs; /* [classes] one teacher's softened row, before mixing */
    float *projection;    /* [max_batch][fit_hidden] P·h_s + b */
    float *d_projection;  /* [max_batch][fit_hidden] dLoss/d(projection) */
};

static const char *const method_names[TRAINER_METHOD_COUNT] = {
    [TRAINER_METHOD_CE] = "ce",         [TRAINER_METHOD_KD] = "kd",
    [TRAINER_METHOD_AVG_KD] = "avg-kd", [TRAINER_METHOD_CA_MKD] = "ca-mkd",
    [TRAINER_METHOD_FITNET] = "fitnet",
};

const char *trainer_method_name(trainer_method_kind_t kind) {
    if ((int)kind < 0 || kind >= TRAINER_METHOD_COUNT) return NULL;
    return method_names[kind];
}

cm_status_t trainer_method_parse(const char *text, trainer_method_kind_t *kind) {
    assert(text && kind);
    for (int candidate = 0; candidate < TRAINER_METHOD_COUNT; candidate++)
        if (strcmp(text, method_names[candidate]) == 0) {
            *kind = (trainer_method_kind_t)candidate;
            return CM_OK;
        }
    return cm_fail(CM_ERR_INVALID_ARG,
                   "unknown --method '%s': expected one of ce, kd, avg-kd, ca-mkd, fitnet", text);
}

/* ---------------------------------------------------------------- construction */

/* Which teachers a method mixes into its KL target: the range [*first, *end). */
static void mixed_teachers(const trainer_method_config_t *config, int *first, int *end) {
    switch (config->kind) {
    case TRAINER_METHOD_KD:
    case TRAINER_METHOD_FITNET:
        *first = config->kd_teacher;
        *end = config->kd_teacher + 1;
        return;
    case TRAINER_METHOD_AVG_KD:
    case TRAINER_METHOD_CA_MKD:
        *first = 0;
        *end = config->teacher_count;
        return;
    default:
        *first = *end = 0;
        return;
    }
}

static cm_status_t check_teacher_index(const trainer_method_config_t *config, const char *flag,
                                       int index) {
    if (index >= 0 && index < config->teacher_count) return CM_OK;
    return cm_fail(CM_ERR_INVALID_ARG,
                   "%s index %d is out of range: the committee has %d teacher%s", flag, index,
                   config->teacher_count, config->teacher_count == 1 ? "" : "s");
}

/* Checks everything trainer_method_new relies on; one sentence per failure. */
static cm_status_t check_config(const trainer_method_config_t *config) {
    const char *name = trainer_method_name(config->kind);
    if (!name)
        return cm_fail(CM_ERR_INVALID_ARG, "unknown method kind %d: expected 0..%d",
                       (int)config->kind, TRAINER_METHOD_COUNT - 1);
    if (!(config->temperature > 0.0f) || !isfinite(config->temperature))
        return cm_fail(CM_ERR_INVALID_ARG, "--temperature must be a positive number, got %g",
                       (double)config->temperature);
    if (!(config->kd_weight >= 0.0f && config->kd_weight <= 1.0f))
        return cm_fail(CM_ERR_INVALID_ARG, "--kd-weight must be in [0, 1], got %g",
                       (double)config->kd_weight);
    if (!(config->fitnet_weight >= 0.0f) || !isfinite(config->fitnet_weight))
        return cm_fail(CM_ERR_INVALID_ARG, "--fitnet-weight must be zero or positive, got %g",
                       (double)config->fitnet_weight);
    if (config->teacher_count < 0 || config->teacher_count > TRAINER_MAX_TEACHERS)
        return cm_fail(CM_ERR_INVALID_ARG,
                       "the committee has %d teachers: at most %d are supported",
                       config->teacher_count, TRAINER_MAX_TEACHERS);
    if (config->classes < 1)
        return cm_fail(CM_ERR_INVALID_ARG, "the method needs at least one class, got %d",
                       config->classes);
    if (config->max_batch < 1)
        return cm_fail(CM_ERR_INVALID_ARG, "batch size must be at least 1, got %d",
                       config->max_batch);
    if (config->student_hidden < 0)
        return cm_fail(CM_ERR_INVALID_ARG,
                       "the student's hidden width must not be negative, got %d",
                       config->student_hidden);
    for (int teacher = 0; teacher < config->teacher_count; teacher++)
        if (config->teacher_hidden[teacher] < 0)
            return cm_fail(CM_ERR_INVALID_ARG,
                           "teacher %d's hidden width must not be negative, got %d", teacher,
                           config->teacher_hidden[teacher]);

    if (config->kind != TRAINER_METHOD_CE && config->teacher_count == 0)
        return cm_fail(CM_ERR_INVALID_ARG,
                       "--method %s distils from teachers, and the committee has none", name);
    cm_status_t status = CM_OK;
    if (config->kind == TRAINER_METHOD_KD || config->kind == TRAINER_METHOD_FITNET)
        status = check_teacher_index(config, "--kd-teacher", config->kd_teacher);
    if (status != CM_OK || config->kind != TRAINER_METHOD_FITNET) return status;

    status = check_teacher_index(config, "--fitnet-teacher", config->fitnet_teacher);
    if (status != CM_OK) return status;
    if (config->teacher_hidden[config->fitnet_teacher] < 1)
        return cm_fail(CM_ERR_INVALID_ARG,
                       "--method fitnet regresses onto teacher %d's hidden vector, and that "
                       "teacher has none",
                       config->fitnet_teacher);
    if (config->student_hidden < 1)
        return cm_fail(CM_ERR_INVALID_ARG,
                       "--method fitnet projects the student's hidden vector, and the student "
                       "has none");
    return CM_OK;
}

cm_status_t trainer_method_new(const trainer_method_config_t *config, uint64_t seed,
                               trainer_method_t **out) {
    assert(config && out);
    *out = NULL;
    cm_status_t status = check_config(config);
    if (status != CM_OK) return status;

    trainer_method_t *method = cm_alloc_aligned(1, sizeof *method);
    if (!method) goto fail;
    method->config = *config;
    size_t batch_floats = (size_t)config->max_batch * (size_t)config->classes;
    method->label_probs = cm_alloc_floats(batch_floats);
    method->student_probs = cm_alloc_floats(batch_floats);
    method->target = cm_alloc_floats(batch_floats);
    method->row_weights = cm_alloc_floats((size_t)config->max_batch);
    method->teacher_probs = cm_alloc_floats((size_t)config->classes);
    if (!method->label_probs || !method->student_probs || !method->target || !method->row_weights ||
        !method->teacher_probs)
        goto fail;

    if (config->kind == TRAINER_METHOD_FITNET) {
        int fit_hidden = config->teacher_hidden[config->fitnet_teacher];
        size_t weight_count = (size_t)fit_hidden * (size_t)config->student_hidden;
        method->fit_hidden = fit_hidden;
        method->param_count = weight_count + (size_t)fit_hidden;
        method->section_floats = (method->param_count + FLOATS_PER_CACHE_LINE - 1) /
                                 FLOATS_PER_CACHE_LINE * FLOATS_PER_CACHE_LINE;
        if (method->section_floats > SIZE_MAX / 4) goto fail;
        method->block = cm_alloc_floats(4 * method->section_floats);
        method->projection = cm_alloc_floats((size_t)config->max_batch * (size_t)fit_hidden);
        method->d_projection = cm_alloc_floats((size_t)config->max_batch * (size_t)fit_hidden);
        if (!method->block || !method->projection || !method->d_projection) goto fail;
        method->projection_weight = method->block;
        method->projection_bias = method->block + weight_count;
        method->projection_weight_grad = method->block + method->section_floats;
        method->projection_bias_grad = method->projection_weight_grad + weight_count;

        /* N(0, 1/sqrt(student_hidden)) keeps P·h_s at the scale of one hidden unit; b = 0. */
        cm_rng_t rng;
        cm_rng_seed(&rng, seed);
        float init_std = 1.0f / sqrtf((float)config->student_hidden);
        for (size_t i = 0; i < weight_count; i++)
            method->projection_weight[i] = init_std * cm_rng_normal(&rng);
    }
    *out = method;
    return CM_OK;

fail:
    trainer_method_free(&method);
    return cm_fail(CM_ERR_NOMEM, "out of memory building --method %s for batch %d",
                   trainer_method_name(config->kind), config->max_batch);
}

void trainer_method_free(trainer_method_t **method_pointer) {
    if (!method_pointer || !*method_pointer) return;
    trainer_method_t *method = *method_pointer;
    cm_free_aligned(method->block);
    cm_free_aligned(method->label_probs);
    cm_free_aligned(method->student_probs);
    cm_free_aligned(method->target);
    cm_free_aligned(method->row_weights);
    cm_free_aligned(method->teacher_probs);
    cm_free_aligned(method->projection);
    cm_free_aligned(method->d_projection);
    cm_free_aligned(method);
    *method_pointer = NULL;
}

/* teacher must be in [0, teacher_count); logits and hidden may each be NULL. */
void trainer_method_needs(const trainer_method_t *method, int teacher, int *logits, int *hidden) {
    assert(method && teacher >= 0 && teacher < method->config.teacher_count);
    int first, end;
    mixed_teachers(&method->config, &first, &end);
    if (logits) *logits = teacher >= first && teacher < end;
    if (hidden)
        *hidden = method->config.kind == TRAINER_METHOD_FITNET &&
                  teacher == method->config.fitnet_teacher;
}

/* ---------------------------------------------------------------- the step */

/* log sum_c exp(logits[c]), max-subtracted, in double. */
static double log_sum_exp(const float *logits, int classes) {
    float max_value = logits[0];
    for (int c = 1; c < classes; c++)
        if (logits[c] > max_value) max_value = logits[c];
    double sum = 0.0;
    for (int c = 0; c < classes; c++) sum += exp((double)logits[c] - max_value);
    return max_value + log(sum);
}

/*
 * mixture[TRAINER_MAX_TEACHERS] = how much each mixed teacher contributes to this row's
 * target (0 for the absent ones and those outside the method's range); returns how many
 * are present.  Uniform over the present teachers, except ca-mkd on a labelled row:
 * softmax over present teachers of -CE(z_i, y) = log softmax(z_i)[y], each teacher's
 * confidence in the true label.
 */
static int row_mixture(const trainer_method_t *method, const trainer_batch_t *batch, int row,
                       float mixture[TRAINER_MAX_TEACHERS]) {
    int classes = method->config.classes, first, end, present = 0;
    mixed_teachers(&method->config, &first, &end);
    memset(mixture, 0, sizeof(float) * TRAINER_MAX_TEACHERS);
    for (int teacher = first; teacher < end; teacher++)
        if (batch->teacher_present[teacher][row]) present++;
    if (present == 0) return 0;

    int32_t label = batch->labels[row];
    if (method->config.kind == TRAINER_METHOD_CA_MKD && label >= 0) {
        double log_confidence[TRAINER_MAX_TEACHERS], best = -HUGE_VAL, sum = 0.0;
        for (int teacher = first; teacher < end; teacher++) {
            if (!batch->teacher_present[teacher][row]) continue;
            const float *logits = batch->teacher_logits[teacher] + (size_t)row * classes;
            log_confidence[teacher] = logits[label] - log_sum_exp(logits, classes);
            if (log_confidence[teacher] > best) best = log_confidence[teacher];
        }
        for (int teacher = first; teacher < end; teacher++)
            if (batch->teacher_present[teacher][row]) sum += exp(log_confidence[teacher] - best);
        for (int teacher = first; teacher < end; teacher++)
            if (batch->teacher_present[teacher][row])
                mixture[teacher] = (float)(exp(log_confidence[teacher] - best) / sum);
        return present;
    }
    for (int teacher = first; teacher < end; teacher++)
        if (batch->teacher_present[teacher][row]) mixture[teacher] = 1.0f / (float)present;
    return present;
}

/* Fills target[rows][classes] and row_weights[rows]; returns the rows that have a target. */
static int build_targets(trainer_method_t *method, const trainer_batch_t *batch) {
    int classes = method->config.classes, rows_with_target = 0;
    float temperature = method->config.temperature;
    for (int row = 0; row < batch->rows; row++) {
        float *target_row = method->target + (size_t)row * classes;
        float mixture[TRAINER_MAX_TEACHERS];
        if (row_mixture(method, batch, row, mixture) == 0) {
            /* A finite placeholder: with row weight 0 it adds exactly nothing. */
            for (int c = 0; c < classes; c++) target_row[c] = 1.0f / (float)classes;
            method->row_weights[row] = 0.0f;
            continue;
        }
        memset(target_row, 0, sizeof(float) * (size_t)classes);
        for (int teacher = 0; teacher < method->config.teacher_count; teacher++) {
            if (mixture[teacher] == 0.0f) continue;
            cm_loss_softmax(method->teacher_probs,
                            batch->teacher_logits[teacher] + (size_t)row * classes, temperature, 1,
                            classes);
            for (int c = 0; c < classes; c++)
                target_row[c] += mixture[teacher] * method->teacher_probs[c];
        }
        method->row_weights[row] = 1.0f;
        rows_with_target++;
    }
    return rows_with_target;
}

/* λ_fit·MSE(P·h_s + b, h_t) over the rows where fitnet_teacher is present; adds its gradient
 * into d_hidden [rows][student_hidden] and the projection's gradients.  Returns the term. */
static double fitnet_term(trainer_method_t *method, const trainer_batch_t *batch,
                          const float *student_hidden, float *d_hidden) {
    const trainer_method_config_t *config = &method->config;
    int rows = batch->rows, fit_hidden = method->fit_hidden;
    const uint8_t *present = batch->teacher_present[config->fitnet_teacher];
    const float *teacher_hidden = batch->teacher_hidden[config->fitnet_teacher];
    cm_layers_dense_forward(method->projection, student_hidden, method->projection_weight,
                            method->projection_bias, rows, config->student_hidden, fit_hidden);
    double squared_error = 0.0;
    int present_rows = 0;
    for (int row = 0; row < rows; row++) {
        if (!present[row]) continue;
        size_t offset = (size_t)row * fit_hidden;
        squared_error +=
            cm_loss_mse_forward(method->projection + offset, teacher_hidden + offset, fit_hidden);
        present_rows++;
    }
    if (present_rows == 0) return 0.0;

    double elements = (double)present_rows * fit_hidden;
    float scale = (float)(config->fitnet_weight / elements);
    memset(method->d_projection, 0, sizeof(float) * (size_t)rows * (size_t)fit_hidden);
    for (int row = 0; row < rows; row++) {
        if (!present[row]) continue;
        size_t offset = (size_t)row * fit_hidden;
        cm_loss_mse_backward(method->d_projection + offset, method->projection + offset,
                             teacher_hidden + offset, fit_hidden, scale);
    }
    /* Absent rows have d_projection = 0, so they add nothing to d_hidden, P or b. */
    cm_layers_dense_backward(d_hidden, method->projection_weight_grad, method->projection_bias_grad,
                             method->d_projection, student_hidden, method->projection_weight, rows,
                             config->student_hidden, fit_hidden);
    return config->fitnet_weight * squared_error / elements;
}

void trainer_method_loss(trainer_method_t *method, const trainer_batch_t *batch,
                         const float *student_logits, const float *student_hidden, float *d_logits,
                         float *d_hidden, trainer_loss_t *loss) {
    assert(method && batch && student_logits && d_logits && loss);
    const trainer_method_config_t *config = &method->config;
    int rows = batch->rows, classes = config->classes;
    assert(rows >= 0 && rows <= config->max_batch);
    assert(batch->labels || rows == 0);
    for (int row = 0; row < rows; row++) assert(batch->labels[row] < classes);
    int first, end;
    mixed_teachers(config, &first, &end);
    for (int teacher = first; teacher < end; teacher++)
        assert(batch->teacher_logits[teacher] && batch->teacher_present[teacher]);

    memset(loss, 0, sizeof *loss);
    memset(d_logits, 0, sizeof(float) * (size_t)rows * (size_t)classes);
    if (config->student_hidden > 0) {
        assert(d_hidden);
        memset(d_hidden, 0, sizeof(float) * (size_t)rows * (size_t)config->student_hidden);
    }
    if (rows == 0) return;

    float kd_weight = config->kind == TRAINER_METHOD_CE ? 0.0f : config->kd_weight;
    double ce_sum = cm_loss_cross_entropy_forward(method->label_probs, student_logits,
                                                  batch->labels, rows, classes, &loss->labelled);
    if (loss->labelled > 0) {
        loss->ce = (1.0 - kd_weight) * ce_sum / loss->labelled;
        cm_loss_cross_entropy_backward(d_logits, method->label_probs, batch->labels, rows, classes,
                                       (1.0f - kd_weight) / (float)loss->labelled);
    }

    if (config->kind != TRAINER_METHOD_CE) {
        int rows_with_target = build_targets(method, batch);
        if (rows_with_target > 0) {
            double kl_sum =
                cm_loss_kl_forward(method->student_probs, student_logits, method->target,
                                   method->row_weights, config->temperature, rows, classes);
            loss->kd = kd_weight * kl_sum / rows_with_target;
            cm_loss_kl_backward(d_logits, method->student_probs, method->target,
                                method->row_weights, config->temperature, rows, classes,
                                kd_weight / (float)rows_with_target);
        }
    }

    if (config->kind == TRAINER_METHOD_FITNET) {
        assert(student_hidden && batch->teacher_present[config->fitnet_teacher] &&
               batch->teacher_hidden[config->fitnet_teacher]);
        loss->fitnet = fitnet_term(method, batch, student_hidden, d_hidden);
    }
    loss->total = loss->ce + loss->kd + loss->fitnet;
}

/* ---------------------------------------------------------------- own parameters */

/* The pointers below are NULL when the method has no parameters (every method but fitnet);
 * otherwise they stay valid until trainer_method_free. */
size_t trainer_method_param_count(const trainer_method_t *method) { return method->param_count; }

float *trainer_method_params(trainer_method_t *method) { return method->block; }

float *trainer_method_grads(trainer_method_t *method) {
    return method->block ? method->block + method->section_floats : NULL;
}

float *trainer_method_moment1(trainer_method_t *method) {
    return method->block ? method->block + 2 * method->section_floats : NULL;
}

float *trainer_method_moment2(trainer_method_t *method) {
    return method->block ? method->block + 3 * method->section_floats : NULL;
}

void trainer_method_zero_grads(trainer_method_t *method) {
    if (method->param_count > 0)
        memset(trainer_method_grads(method), 0, sizeof(float) * method->param_count);
}

/* P is a matrix, so weight decay applies to it; b is a bias, so it does not. */
void trainer_method_adamw_step(trainer_method_t *method, const cm_adamw_config_t *config,
                               long step) {
    if (method->param_count == 0) return;
    size_t weight_count = (size_t)method->fit_hidden * (size_t)method->config.student_hidden;
    float *params = trainer_method_params(method), *grads = trainer_method_grads(method);
    float *moment1 = trainer_method_moment1(method), *moment2 = trainer_method_moment2(method);
    cm_adamw_update(params, grads, moment1, moment2, weight_count, config, step, 1);
    cm_adamw_update(params + weight_count, grads + weight_count, moment1 + weight_count,
                    moment2 + weight_count, (size_t)method->fit_hidden, config, step, 0);
}
