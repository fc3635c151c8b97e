/*
 * trainer_method: the method interface and the §3 baselines behind it.  See trainer_method.h.
 *
 * A trainer_method_t is an implementation's object and its table of functions
 * (trainer_method_ops_t); every trainer_method_* call goes through the table, so the
 * trainer holds one kind of method whatever --method says.  The baselines' table is at the
 * bottom of this file, diversedistill's in trainer_dd.c.
 *
 * Every baseline is the same three terms with different targets:
 *   total = task term + kd term + λ_fit·MSE(P·h_s + b, h_t)
 * where ce is w = 0 with no other term, kd / avg-kd / ca-mkd differ only in how the
 * per-row target mixes the teachers' outputs (softened distributions for classification,
 * predictions for regression), and fitnet adds the projection term.  A row whose target
 * does not exist (no mixed teacher present) keeps a row weight of 0 and a finite
 * placeholder target, so the KL kernels can run over the whole batch while the garbage a
 * caller leaves in absent teacher rows is never read: only rows marked present are ever
 * touched, for logits and hidden alike.
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
#include "trainer_dd.h"

#include <assert.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

enum { FLOATS_PER_CACHE_LINE = 64 / sizeof(float) };

static const char *const method_names[TRAINER_METHOD_COUNT] = {
    [TRAINER_METHOD_CE] = "ce",         [TRAINER_METHOD_KD] = "kd",
    [TRAINER_METHOD_AVG_KD] = "avg-kd", [TRAINER_METHOD_CA_MKD] = "ca-mkd",
    [TRAINER_METHOD_FITNET] = "fitnet", [TRAINER_METHOD_DIVERSEDISTILL] = "diversedistill",
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
                   "unknown --method '%s': expected one of ce, kd, avg-kd, ca-mkd, fitnet, "
                   "diversedistill",
                   text);
}

/* ---------------------------------------------------------------- the interface */

struct trainer_method {
    trainer_method_kind_t kind;
    const trainer_method_ops_t *ops;
    void *self;
};

cm_status_t trainer_method_wrap(trainer_method_kind_t kind, const trainer_method_ops_t *ops,
                                void *self, trainer_method_t **out) {
    assert(ops && ops->needs && ops->term_name && ops->loss && ops->param_count && ops->free);
    assert(out);
    *out = malloc(sizeof **out);
    if (!*out) {
        ops->free(self);
        return cm_fail(CM_ERR_NOMEM, "out of memory building --method %s",
                       trainer_method_name(kind));
    }
    **out = (trainer_method_t){.kind = kind, .ops = ops, .self = self};
    return CM_OK;
}

void trainer_method_free(trainer_method_t **method_pointer) {
    if (!method_pointer || !*method_pointer) return;
    trainer_method_t *method = *method_pointer;
    method->ops->free(method->self);
    free(method);
    *method_pointer = NULL;
}

trainer_method_kind_t trainer_method_kind(const trainer_method_t *method) { return method->kind; }

unsigned trainer_method_needs(const trainer_method_t *method, int teacher) {
    return method->ops->needs(method->self, teacher);
}

int trainer_method_term_count(const trainer_method_t *method) {
    int count = 0;
    while (count < TRAINER_MAX_TERMS && method->ops->term_name(method->self, count)) count++;
    return count;
}

const char *trainer_method_term_name(const trainer_method_t *method, int term) {
    if (term < 0 || term >= TRAINER_MAX_TERMS) return NULL;
    return method->ops->term_name(method->self, term);
}

double trainer_method_term(const trainer_method_t *method, const trainer_loss_t *loss,
                           const char *name) {
    for (int term = 0; term < TRAINER_MAX_TERMS; term++) {
        const char *term_name = method->ops->term_name(method->self, term);
        if (!term_name) break;
        if (strcmp(term_name, name) == 0) return loss->term[term];
    }
    return 0.0;
}

void trainer_method_loss(trainer_method_t *method, const trainer_batch_t *batch,
                         const trainer_student_t *student, trainer_loss_t *loss) {
    assert(method && batch && student && loss);
    method->ops->loss(method->self, batch, student, loss);
}

int trainer_method_chooses(const trainer_method_t *method) { return method->ops->choose != NULL; }

void trainer_method_choose(trainer_method_t *method, const trainer_student_t *student, int rows,
                           uint64_t seed, uint8_t *const *ask) {
    if (method->ops->choose) method->ops->choose(method->self, student, rows, seed, ask);
}

size_t trainer_method_param_count(const trainer_method_t *method) {
    return method->ops->param_count(method->self);
}

static float *section(trainer_method_t *method, int which) {
    return trainer_method_param_count(method) ? method->ops->section(method->self, which) : NULL;
}

float *trainer_method_params(trainer_method_t *method) { return section(method, 0); }
float *trainer_method_grads(trainer_method_t *method) { return section(method, 1); }
float *trainer_method_moment1(trainer_method_t *method) { return section(method, 2); }
float *trainer_method_moment2(trainer_method_t *method) { return section(method, 3); }

void trainer_method_zero_grad(trainer_method_t *method) {
    if (trainer_method_param_count(method)) method->ops->zero_grad(method->self);
}

void trainer_method_update(trainer_method_t *method, const cm_adamw_config_t *config, long step) {
    if (trainer_method_param_count(method)) method->ops->update(method->self, config, step);
}

/* ---------------------------------------------------------------- shared pieces */

/* Whether `row` has a label: labels[row] >= 0 (classification) or labelled[row] (regression). */
static int row_labelled(const trainer_batch_t *batch, trainer_task_t task, int row) {
    return task == TRAINER_TASK_REGRESSION ? batch->labelled[row] != 0 : batch->labels[row] >= 0;
}

double trainer_method_regression_term(const float *predictions, const float *targets,
                                      const uint8_t *rows_in, int rows, int outputs, float weight,
                                      float *d_predictions, int *rows_used) {
    int used = 0;
    double sum = 0.0;
    for (int row = 0; row < rows; row++) {
        if (!rows_in[row]) continue;
        size_t offset = (size_t)row * (size_t)outputs;
        sum += cm_loss_mse_forward(predictions + offset, targets + offset, outputs);
        used++;
    }
    if (rows_used) *rows_used = used;
    if (used == 0) return 0.0;
    double elements = (double)used * outputs;
    float scale = (float)(weight / elements);
    for (int row = 0; row < rows; row++) {
        if (!rows_in[row]) continue;
        size_t offset = (size_t)row * (size_t)outputs;
        cm_loss_mse_backward(d_predictions + offset, predictions + offset, targets + offset,
                             outputs, scale);
    }
    return weight * sum / elements;
}

double trainer_method_squared_error(const float *prediction, const float *target, int outputs) {
    return cm_loss_mse_forward(prediction, target, outputs) / outputs;
}

/* ---------------------------------------------------------------- the baselines */

enum { TERM_TASK, TERM_KD, TERM_FITNET };

typedef struct {
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
    float *label_probs;   /* [max_batch][outputs] softmax(s), saved by the CE forward */
    float *student_probs; /* [max_batch][outputs] softmax(s/T), saved by the KL forward */
    float *target;        /* [max_batch][outputs] the mixed teacher target */
    float *row_weights;   /* [max_batch] 1 where the row has a target, else 0 */
    uint8_t *has_target;  /* [max_batch] the same as bytes (regression) */
    float *teacher_probs; /* [outputs] one teacher's softened row, before mixing */
    float *projection;    /* [max_batch][fit_hidden] P·h_s + b */
    float *d_projection;  /* [max_batch][fit_hidden] dLoss/d(projection) */
} baseline_t;

static const trainer_method_ops_t baseline_ops;

/* Which teachers a method mixes into its target: the range [*first, *end). */
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

/* Checks everything the baselines rely on; one sentence per failure. */
static cm_status_t check_config(const trainer_method_config_t *config) {
    const char *name = trainer_method_name(config->kind);
    if (!name)
        return cm_fail(CM_ERR_INVALID_ARG, "unknown method kind %d: expected 0..%d",
                       (int)config->kind, TRAINER_METHOD_COUNT - 1);
    if (config->task != TRAINER_TASK_CLASSIFICATION && config->task != TRAINER_TASK_REGRESSION)
        return cm_fail(CM_ERR_INVALID_ARG,
                       "unknown task kind %d: expected classification (0) or "
                       "regression (1)",
                       (int)config->task);
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
    if (config->outputs < 1)
        return cm_fail(CM_ERR_INVALID_ARG, "the method needs at least one %s, got %d",
                       config->task == TRAINER_TASK_REGRESSION ? "target" : "class",
                       config->outputs);
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

static void baseline_free(void *self) {
    baseline_t *method = self;
    if (!method) return;
    cm_free_aligned(method->block);
    cm_free_aligned(method->label_probs);
    cm_free_aligned(method->student_probs);
    cm_free_aligned(method->target);
    cm_free_aligned(method->row_weights);
    cm_free_aligned(method->has_target);
    cm_free_aligned(method->teacher_probs);
    cm_free_aligned(method->projection);
    cm_free_aligned(method->d_projection);
    cm_free_aligned(method);
}

static cm_status_t baseline_new(const trainer_method_config_t *config, uint64_t seed,
                                trainer_method_t **out) {
    cm_status_t status = check_config(config);
    if (status != CM_OK) return status;

    baseline_t *method = cm_alloc_aligned(1, sizeof *method);
    if (!method) goto fail;
    method->config = *config;
    method->config.dd = NULL;
    size_t batch_floats = (size_t)config->max_batch * (size_t)config->outputs;
    method->label_probs = cm_alloc_floats(batch_floats);
    method->student_probs = cm_alloc_floats(batch_floats);
    method->target = cm_alloc_floats(batch_floats);
    method->row_weights = cm_alloc_floats((size_t)config->max_batch);
    method->has_target = cm_alloc_aligned((size_t)config->max_batch, 1);
    method->teacher_probs = cm_alloc_floats((size_t)config->outputs);
    if (!method->label_probs || !method->student_probs || !method->target || !method->row_weights ||
        !method->has_target || !method->teacher_probs)
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
    return trainer_method_wrap(config->kind, &baseline_ops, method, out);

fail:
    baseline_free(method);
    return cm_fail(CM_ERR_NOMEM, "out of memory building --method %s for batch %d",
                   trainer_method_name(config->kind), config->max_batch);
}

cm_status_t trainer_method_new(const trainer_method_config_t *config, uint64_t seed,
                               trainer_method_t **out) {
    assert(config && out);
    *out = NULL;
    if (config->kind != TRAINER_METHOD_DIVERSEDISTILL) return baseline_new(config, seed, out);
    if (!config->dd)
        return cm_fail(CM_ERR_INVALID_ARG,
                       "--method diversedistill needs the Distillation Module's settings");
    trainer_dd_config_t dd = *config->dd;
    dd.task = config->task;
    dd.classes = config->outputs;
    dd.temperature = config->temperature;
    dd.kd_weight = config->kd_weight;
    dd.teacher_count = config->teacher_count;
    dd.student_hidden = config->student_hidden;
    dd.max_batch = config->max_batch;
    return trainer_dd_method_new(&dd, seed, out);
}

/* teacher must be in [0, teacher_count).  The fitnet teacher's logits come with its hidden
 * vector, so a record of a fitnet run also holds them. */
static unsigned baseline_needs(const void *self, int teacher) {
    const baseline_t *method = self;
    assert(teacher >= 0 && teacher < method->config.teacher_count);
    int first, end;
    mixed_teachers(&method->config, &first, &end);
    unsigned needs = teacher >= first && teacher < end ? 1u << TRAINER_OUTPUT_LOGITS : 0u;
    if (method->config.kind == TRAINER_METHOD_FITNET && teacher == method->config.fitnet_teacher)
        needs |= 1u << TRAINER_OUTPUT_HIDDEN | 1u << TRAINER_OUTPUT_LOGITS;
    return needs;
}

static const char *baseline_term_name(const void *self, int term) {
    const baseline_t *method = self;
    int terms = method->config.kind == TRAINER_METHOD_CE       ? 1
                : method->config.kind == TRAINER_METHOD_FITNET ? 3
                                                               : 2;
    if (term >= terms) return NULL;
    if (term == TERM_TASK) return method->config.task == TRAINER_TASK_REGRESSION ? "mse" : "ce";
    return term == TERM_KD ? "kd" : "fitnet";
}

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
 * softmax over present teachers of minus each teacher's loss on the label, -CE(z_i, y) =
 * log softmax(z_i)[y] (its confidence in the true label) or -mean_k (z_i - y)².
 */
static int row_mixture(const baseline_t *method, const trainer_batch_t *batch, int row,
                       float mixture[TRAINER_MAX_TEACHERS]) {
    const trainer_method_config_t *config = &method->config;
    int outputs = config->outputs, first, end, present = 0;
    mixed_teachers(config, &first, &end);
    memset(mixture, 0, sizeof(float) * TRAINER_MAX_TEACHERS);
    for (int teacher = first; teacher < end; teacher++)
        if (batch->teacher_present[teacher][row]) present++;
    if (present == 0) return 0;

    if (config->kind == TRAINER_METHOD_CA_MKD && row_labelled(batch, config->task, row)) {
        double log_confidence[TRAINER_MAX_TEACHERS], best = -HUGE_VAL, sum = 0.0;
        for (int teacher = first; teacher < end; teacher++) {
            if (!batch->teacher_present[teacher][row]) continue;
            const float *logits = batch->teacher_logits[teacher] + (size_t)row * outputs;
            if (config->task == TRAINER_TASK_REGRESSION)
                log_confidence[teacher] = -trainer_method_squared_error(
                    logits, batch->targets + (size_t)row * outputs, outputs);
            else
                log_confidence[teacher] = logits[batch->labels[row]] - log_sum_exp(logits, outputs);
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

/* Fills target[rows][outputs], row_weights and has_target [rows]; returns the rows that have
 * a target.  Classification mixes softmax(z_i/T), regression the predictions z_i. */
static int build_targets(baseline_t *method, const trainer_batch_t *batch) {
    const trainer_method_config_t *config = &method->config;
    int outputs = config->outputs, rows_with_target = 0;
    int regression = config->task == TRAINER_TASK_REGRESSION;
    for (int row = 0; row < batch->rows; row++) {
        float *target_row = method->target + (size_t)row * outputs;
        float mixture[TRAINER_MAX_TEACHERS];
        if (row_mixture(method, batch, row, mixture) == 0) {
            /* A finite placeholder: with row weight 0 it adds exactly nothing. */
            for (int c = 0; c < outputs; c++) target_row[c] = 1.0f / (float)outputs;
            method->row_weights[row] = 0.0f;
            method->has_target[row] = 0;
            continue;
        }
        memset(target_row, 0, sizeof(float) * (size_t)outputs);
        for (int teacher = 0; teacher < config->teacher_count; teacher++) {
            if (mixture[teacher] == 0.0f) continue;
            const float *logits = batch->teacher_logits[teacher] + (size_t)row * outputs;
            const float *source = logits;
            if (!regression) {
                cm_loss_softmax(method->teacher_probs, logits, config->temperature, 1, outputs);
                source = method->teacher_probs;
            }
            for (int c = 0; c < outputs; c++) target_row[c] += mixture[teacher] * source[c];
        }
        method->row_weights[row] = 1.0f;
        method->has_target[row] = 1;
        rows_with_target++;
    }
    return rows_with_target;
}

/* λ_fit·MSE(P·h_s + b, h_t) over the rows where fitnet_teacher is present; adds its gradient
 * into d_hidden [rows][student_hidden] and the projection's gradients.  Returns the term. */
static double fitnet_term(baseline_t *method, const trainer_batch_t *batch,
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

static void baseline_loss(void *self, const trainer_batch_t *batch,
                          const trainer_student_t *student, trainer_loss_t *loss) {
    baseline_t *method = self;
    const trainer_method_config_t *config = &method->config;
    int rows = batch->rows, outputs = config->outputs;
    int regression = config->task == TRAINER_TASK_REGRESSION;
    const float *student_outputs = student->outputs;
    float *d_outputs = student->d_outputs;
    assert(student_outputs && d_outputs);
    assert(rows >= 0 && rows <= config->max_batch);
    if (regression)
        assert((batch->targets && batch->labelled) || rows == 0);
    else
        assert(batch->labels || rows == 0);
    for (int row = 0; !regression && row < rows; row++) assert(batch->labels[row] < outputs);
    int first, end;
    mixed_teachers(config, &first, &end);
    for (int teacher = first; teacher < end; teacher++)
        assert(batch->teacher_logits[teacher] && batch->teacher_present[teacher]);

    memset(loss, 0, sizeof *loss);
    memset(d_outputs, 0, sizeof(float) * (size_t)rows * (size_t)outputs);
    if (config->student_hidden > 0) {
        assert(student->d_hidden);
        memset(student->d_hidden, 0, sizeof(float) * (size_t)rows * (size_t)config->student_hidden);
    }
    if (rows == 0) return;

    float kd_weight = config->kind == TRAINER_METHOD_CE ? 0.0f : config->kd_weight;
    if (regression) {
        loss->term[TERM_TASK] =
            trainer_method_regression_term(student_outputs, batch->targets, batch->labelled, rows,
                                           outputs, 1.0f - kd_weight, d_outputs, &loss->labelled);
    } else {
        double ce_sum = cm_loss_cross_entropy_forward(
            method->label_probs, student_outputs, batch->labels, rows, outputs, &loss->labelled);
        if (loss->labelled > 0) {
            loss->term[TERM_TASK] = (1.0 - kd_weight) * ce_sum / loss->labelled;
            cm_loss_cross_entropy_backward(d_outputs, method->label_probs, batch->labels, rows,
                                           outputs, (1.0f - kd_weight) / (float)loss->labelled);
        }
    }

    if (config->kind != TRAINER_METHOD_CE) {
        int rows_with_target = build_targets(method, batch);
        if (rows_with_target > 0 && regression) {
            loss->term[TERM_KD] =
                trainer_method_regression_term(student_outputs, method->target, method->has_target,
                                               rows, outputs, kd_weight, d_outputs, NULL);
        } else if (rows_with_target > 0) {
            double kl_sum =
                cm_loss_kl_forward(method->student_probs, student_outputs, method->target,
                                   method->row_weights, config->temperature, rows, outputs);
            loss->term[TERM_KD] = kd_weight * kl_sum / rows_with_target;
            cm_loss_kl_backward(d_outputs, method->student_probs, method->target,
                                method->row_weights, config->temperature, rows, outputs,
                                kd_weight / (float)rows_with_target);
        }
    }

    if (config->kind == TRAINER_METHOD_FITNET) {
        assert(student->hidden && batch->teacher_present[config->fitnet_teacher] &&
               batch->teacher_hidden[config->fitnet_teacher]);
        loss->term[TERM_FITNET] = fitnet_term(method, batch, student->hidden, student->d_hidden);
    }
    loss->total = loss->term[TERM_TASK] + loss->term[TERM_KD] + loss->term[TERM_FITNET];
}

/* Only fitnet has parameters; the interface asks for them only then. */
static size_t baseline_param_count(const void *self) {
    return ((const baseline_t *)self)->param_count;
}

static float *baseline_section(void *self, int which) {
    baseline_t *method = self;
    return method->block + (size_t)which * method->section_floats;
}

static void baseline_zero_grad(void *self) {
    baseline_t *method = self;
    memset(baseline_section(method, 1), 0, sizeof(float) * method->param_count);
}

/* P is a matrix, so weight decay applies to it; b is a bias, so it does not. */
static void baseline_update(void *self, const cm_adamw_config_t *config, long step) {
    baseline_t *method = self;
    size_t weight_count = (size_t)method->fit_hidden * (size_t)method->config.student_hidden;
    float *params = baseline_section(method, 0), *grads = baseline_section(method, 1);
    float *moment1 = baseline_section(method, 2), *moment2 = baseline_section(method, 3);
    cm_adamw_update(params, grads, moment1, moment2, weight_count, config, step, 1);
    cm_adamw_update(params + weight_count, grads + weight_count, moment1 + weight_count,
                    moment2 + weight_count, (size_t)method->fit_hidden, config, step, 0);
}

static const trainer_method_ops_t baseline_ops = {
    .needs = baseline_needs,
    .term_name = baseline_term_name,
    .loss = baseline_loss,
    .choose = NULL,
    .param_count = baseline_param_count,
    .section = baseline_section,
    .zero_grad = baseline_zero_grad,
    .update = baseline_update,
    .free = baseline_free,
};
