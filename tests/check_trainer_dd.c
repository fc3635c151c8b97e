/*
 * trainer_dd: the Distillation Module's gradients, semantics and learning, on a tiny awkward
 * batch: two teachers (one "tokens" 3 x 5, one "hidden" 1 x 6), labelled and unlabelled
 * rows, pairs where a teacher is absent (their logits and features hold NaN, so any leak
 * shows at once), a row with no teacher at all.
 *
 * The loss stops gradients on purpose (alpha in the KD term, and in k unless the router is
 * end-to-end; the student logits inside the learnability target; k in the alignment term),
 * so its analytic gradient is NOT the derivative of the loss value.  The gradient tests
 * therefore work two ways:
 *   - reference: an independent double-precision implementation of the whole loss, written
 *     from trainer_dd.h, evaluates the loss value (compared with the module's) and the
 *     surrogate loss in which every stopped quantity is frozen at the unperturbed point;
 *     central differences of that surrogate, over every element of every module tensor and
 *     of the student's logits, hidden vector and head, must equal the module's gradients,
 *     for each router mode with alignment off and on;
 *   - raw: in two configurations where nothing is stopped (end-to-end with w = 0 and no
 *     alignment; reliability with only the router term), central differences of the
 *     module's own float loss must equal its gradients.
 * Beside them the invariants (alpha is a distribution over the present teachers and is what
 * the loss uses; one teacher means alpha = 1; NaN in absent pairs changes nothing; one
 * teacher with only the KD term is trainer_method's kd; end-to-end has no router term; the
 * stop-gradients hold; outputs are overwritten and parameter gradients added), the
 * configuration checks, the parameter block and AdamW's decay, and a learning check: the
 * router alone learns which teacher is right for which example.  Regression: the reference
 * has the regression terms too (squared errors in place of CE and KL), and the loss and
 * gradient tests run again on the same fixture as a regression batch (int labels gone);
 * with only the task and KD terms it is trainer_method's regression kd.  Through the method
 * interface the module gives bit for bit what trainer_dd_loss gives, needs what its
 * features and heads say, and chooses pairs as --dd-filter says.  Seeded; well under 10 s.
 */
#include "trainer_dd.h"

#include "trainer_method.h"

#include "cm_adamw.h"
#include "cm_rng.h"

#include "check_gradcheck.h"

#include <check.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum {
    ROWS = 6,
    MAX_BATCH = 8,
    TEACHERS = 2,
    CLASSES = 4,
    WIDTH = 7, /* d_s */
    EMBED = 3, /* d_e */
    KEY = 4,   /* d_k */
    HEADS = 2,
    HIDDEN = 5,
    MAX_FEATURE = 15, /* the largest L_i * d_i */
    MAX_HEAD = 6,     /* the widest head input d_h */
};

static const int fixture_tokens[TEACHERS] = {3, 1};
static const int fixture_dims[TEACHERS] = {5, 6};
/* Interactive: teacher 0's head reads a vector of its own (as a ViT's "hidden" beside its
 * "tokens"), teacher 1's head reads the very feature it streams. */
static const int fixture_head_inputs[TEACHERS] = {4, 6};
static const int32_t fixture_labels[ROWS] = {2, -1, 0, -1, 1, 3};
/* Row 4 has no teacher; rows 1 and 2 have one; rows 0, 3 and 5 both. */
static const uint8_t fixture_present[TEACHERS][ROWS] = {
    {1, 1, 0, 1, 0, 1},
    {1, 0, 1, 1, 0, 1},
};

typedef struct {
    int32_t labels[ROWS];
    uint8_t present[TEACHERS][ROWS];
    float teacher_logits[TEACHERS][ROWS * CLASSES];
    float teacher_feature[TEACHERS][ROWS * MAX_FEATURE];
    float student_logits[ROWS * CLASSES];
    float student_hidden[ROWS * WIDTH];
    float head_weight[CLASSES * WIDTH];
    float head_bias[CLASSES];
    float teacher_head_input[ROWS * MAX_HEAD]; /* teacher 0's H (teacher 1's is its feature) */
    float teacher_head_weight[TEACHERS][CLASSES * MAX_HEAD]; /* frozen G_i */
    float teacher_head_bias[TEACHERS][CLASSES];              /* frozen c_i */
    float targets[ROWS * CLASSES]; /* regression: CLASSES targets per row */
    uint8_t labelled[ROWS];        /* regression: the rows whose label is not -1 */
    trainer_dd_batch_t batch;      /* points into this fixture: never copy one */
} fixture_t;

/* Writes `garbage` into every absent pair's logits and feature. */
static void fixture_set_garbage(fixture_t *fixture, float garbage) {
    for (int teacher = 0; teacher < TEACHERS; teacher++) {
        int floats = fixture_tokens[teacher] * fixture_dims[teacher];
        for (int row = 0; row < ROWS; row++) {
            if (fixture->present[teacher][row]) continue;
            for (int c = 0; c < CLASSES; c++)
                fixture->teacher_logits[teacher][row * CLASSES + c] = garbage;
            for (int i = 0; i < floats; i++)
                fixture->teacher_feature[teacher][row * floats + i] = garbage;
            if (teacher == 0)
                for (int i = 0; i < fixture_head_inputs[0]; i++)
                    fixture->teacher_head_input[row * fixture_head_inputs[0] + i] = garbage;
        }
    }
}

static void fixture_init(fixture_t *fixture, uint64_t seed) {
    cm_rng_t rng;
    cm_rng_seed(&rng, seed);
    memset(fixture, 0, sizeof *fixture);
    memcpy(fixture->labels, fixture_labels, sizeof fixture->labels);
    memcpy(fixture->present, fixture_present, sizeof fixture->present);
    for (int teacher = 0; teacher < TEACHERS; teacher++) {
        gradcheck_fill(&rng, fixture->teacher_logits[teacher], ROWS * CLASSES, -3.0f, 3.0f);
        gradcheck_fill(&rng, fixture->teacher_feature[teacher], ROWS * MAX_FEATURE, -2.0f, 2.0f);
        gradcheck_fill(&rng, fixture->teacher_head_weight[teacher], CLASSES * MAX_HEAD, -1.0f,
                       1.0f);
        gradcheck_fill(&rng, fixture->teacher_head_bias[teacher], CLASSES, -0.5f, 0.5f);
    }
    gradcheck_fill(&rng, fixture->teacher_head_input, ROWS * MAX_HEAD, 0.0f, 2.5f);
    fixture_set_garbage(fixture, NAN);
    gradcheck_fill(&rng, fixture->student_logits, ROWS * CLASSES, -2.0f, 2.0f);
    gradcheck_fill(&rng, fixture->student_hidden, ROWS * WIDTH, -1.5f, 1.5f);
    gradcheck_fill(&rng, fixture->head_weight, CLASSES * WIDTH, -0.8f, 0.8f);
    gradcheck_fill(&rng, fixture->head_bias, CLASSES, -0.5f, 0.5f);

    fixture->batch.rows = ROWS;
    fixture->batch.labels = fixture->labels;
    for (int teacher = 0; teacher < TEACHERS; teacher++) {
        fixture->batch.teacher_logits[teacher] = fixture->teacher_logits[teacher];
        fixture->batch.teacher_feature[teacher] = fixture->teacher_feature[teacher];
        fixture->batch.teacher_present[teacher] = fixture->present[teacher];
    }
    fixture->batch.teacher_head_input[0] = fixture->teacher_head_input;
    fixture->batch.teacher_head_input[1] = fixture->teacher_feature[1];
    /* Regression targets from a stream of their own: the classification fixture is as it was. */
    cm_rng_seed(&rng, seed ^ 0x7a7a7a7aull);
    gradcheck_fill(&rng, fixture->targets, ROWS * CLASSES, -2.5f, 2.5f);
    for (int row = 0; row < ROWS; row++) fixture->labelled[row] = fixture->labels[row] >= 0;
    fixture->batch.targets = fixture->targets;
    fixture->batch.labelled = fixture->labelled;
}

/* Makes the fixture and config a regression problem: the teachers' logits are their CLASSES
 * predictions, and the int labels are gone from the batch (a module reading them crashes). */
static void make_regression(fixture_t *fixture, trainer_dd_config_t *config) {
    config->task = TRAINER_TASK_REGRESSION;
    fixture->batch.labels = NULL;
}

/* Turns the interactive variant on, with the fixture's heads for the teachers in
 * `with_head` (bit i: teacher i lends its head). */
static void make_interactive(trainer_dd_config_t *config, const fixture_t *fixture,
                             unsigned with_head) {
    config->interactive = 1;
    config->probe_match_weight = 0.7f;
    config->probe_answer_weight = 1.3f;
    for (int teacher = 0; teacher < TEACHERS; teacher++) {
        if (!(with_head & (1u << teacher))) continue;
        config->head_inputs[teacher] = fixture_head_inputs[teacher];
        config->head_weight[teacher] = fixture->teacher_head_weight[teacher];
        config->head_bias[teacher] = fixture->teacher_head_bias[teacher];
    }
}

static trainer_dd_config_t fixture_config(trainer_dd_router_t router, float align_weight) {
    trainer_dd_config_t config = trainer_dd_defaults();
    config.teacher_count = TEACHERS;
    config.classes = CLASSES;
    config.student_hidden = WIDTH;
    for (int teacher = 0; teacher < TEACHERS; teacher++) {
        config.teacher_tokens[teacher] = fixture_tokens[teacher];
        config.teacher_dim[teacher] = fixture_dims[teacher];
    }
    config.embed_dim = EMBED;
    config.key_dim = KEY;
    config.heads = HEADS;
    config.hidden = HIDDEN;
    /* No weight is 1, so a dropped factor shows. */
    config.temperature = 2.0f;
    config.kd_weight = 0.7f;
    config.answer_weight = 0.8f;
    config.router_weight = 0.6f;
    config.router_tau = 0.9f;
    config.align_weight = align_weight;
    config.router = router;
    config.max_batch = MAX_BATCH;
    return config;
}

static trainer_dd_t *new_dd(const trainer_dd_config_t *config, uint64_t seed) {
    trainer_dd_t *dd = NULL;
    cm_status_t status = trainer_dd_new(config, seed, &dd);
    ck_assert_msg(status == CM_OK, "trainer_dd_new: %s", cm_last_error());
    ck_assert_ptr_nonnull(dd);
    return dd;
}

/* Moves every parameter off its initial value (E and P_i start near 0, gamma at 1), so that
 * every path carries a gradient of a useful size. */
static void randomize_params(trainer_dd_t *dd, uint64_t seed) {
    cm_rng_t rng;
    cm_rng_seed(&rng, seed);
    float *params = trainer_dd_params(dd);
    for (size_t i = 0; i < trainer_dd_param_count(dd); i++)
        params[i] += 0.5f * (2.0f * cm_rng_uniform(&rng) - 1.0f);
}

/* The outputs of one call of trainer_dd_loss; the head's gradients start at zero. */
typedef struct {
    trainer_dd_loss_t loss;
    float d_logits[ROWS * CLASSES];
    float d_hidden[ROWS * WIDTH];
    float d_head_weight[CLASSES * WIDTH];
    float d_head_bias[CLASSES];
} step_result_t;

static void run_step(trainer_dd_t *dd, const fixture_t *fixture, step_result_t *result) {
    memset(result->d_head_weight, 0, sizeof result->d_head_weight);
    memset(result->d_head_bias, 0, sizeof result->d_head_bias);
    trainer_dd_loss(dd, &fixture->batch, fixture->student_logits, fixture->student_hidden,
                    fixture->head_weight, fixture->head_bias, result->d_logits, result->d_hidden,
                    result->d_head_weight, result->d_head_bias, &result->loss);
}

static void assert_all_finite(const float *values, size_t count, const char *what) {
    for (size_t i = 0; i < count; i++)
        ck_assert_msg(isfinite(values[i]), "%s [%zu] is %g", what, i, (double)values[i]);
}

static void assert_all_zero(const float *values, size_t count, const char *what) {
    for (size_t i = 0; i < count; i++)
        ck_assert_msg(values[i] == 0.0f, "%s [%zu] is %g, not 0", what, i, (double)values[i]);
}

/* Bitwise-equal losses and gradients (same arithmetic, so no tolerance is needed). */
static void assert_same_step(const step_result_t *a, const step_result_t *b) {
    ck_assert(a->loss.total == b->loss.total);
    ck_assert(a->loss.ce == b->loss.ce && a->loss.kd == b->loss.kd);
    ck_assert(a->loss.answer == b->loss.answer && a->loss.router == b->loss.router);
    ck_assert(a->loss.align == b->loss.align);
    ck_assert(a->loss.probe_match == b->loss.probe_match);
    ck_assert(a->loss.probe_answer == b->loss.probe_answer);
    ck_assert(a->loss.answer_accuracy == b->loss.answer_accuracy);
    ck_assert_int_eq(a->loss.labelled, b->loss.labelled);
    ck_assert(memcmp(a->d_logits, b->d_logits, sizeof a->d_logits) == 0);
    ck_assert(memcmp(a->d_hidden, b->d_hidden, sizeof a->d_hidden) == 0);
    ck_assert(memcmp(a->d_head_weight, b->d_head_weight, sizeof a->d_head_weight) == 0);
    ck_assert(memcmp(a->d_head_bias, b->d_head_bias, sizeof a->d_head_bias) == 0);
}

static float *copy_grads(trainer_dd_t *dd) {
    size_t count = trainer_dd_param_count(dd);
    float *copy = malloc(sizeof(float) * count);
    ck_assert_ptr_nonnull(copy);
    memcpy(copy, trainer_dd_grads(dd), sizeof(float) * count);
    return copy;
}

/* ---- the parameter layout ------------------------------------------------------------------ */

/*
 * Where each tensor sits in the flat block: the order trainer_dd.c's file comment documents
 * (decayed matrices first, then tables, norms and biases).  The reference tests would fail
 * at once if the two drifted apart: the loss values would no longer agree.
 */
typedef struct {
    char name[32];
    size_t offset, count;
} named_tensor_t;

typedef struct {
    size_t router_weight, question_in_weight, question_out_weight;
    size_t embeddings, router_gamma, router_beta, question_gamma, question_beta;
    size_t question_in_bias, question_out_bias;
    struct {
        size_t key_value_weight, output_weight, augment_in_weight, augment_out_weight;
        size_t norm_gamma, norm_beta, positions, output_bias, augment_in_bias, augment_out_bias;
        size_t probe_weight, probe_bias; /* interactive, teacher with a head */
    } teacher[TRAINER_MAX_TEACHERS];
    size_t decayed, count;
    int tensor_count;
    named_tensor_t tensor[10 + 12 * TRAINER_MAX_TEACHERS];
} layout_t;

static size_t lay(layout_t *layout, size_t count, const char *name, int teacher) {
    named_tensor_t *tensor = &layout->tensor[layout->tensor_count++];
    if (teacher >= 0)
        snprintf(tensor->name, sizeof tensor->name, "teacher %d %s", teacher, name);
    else
        snprintf(tensor->name, sizeof tensor->name, "%s", name);
    tensor->offset = layout->count;
    tensor->count = count;
    layout->count += count;
    return tensor->offset;
}

static layout_t layout_for(const trainer_dd_config_t *config) {
    layout_t layout;
    memset(&layout, 0, sizeof layout);
    size_t width = (size_t)config->student_hidden, embed = (size_t)config->embed_dim;
    size_t key = (size_t)config->key_dim, hidden = (size_t)config->hidden;
    layout.router_weight = lay(&layout, embed * width, "W_r", -1);
    layout.question_in_weight = lay(&layout, hidden * (width + embed), "W_q1", -1);
    layout.question_out_weight = lay(&layout, key * hidden, "W_q2", -1);
    for (int t = 0; t < config->teacher_count; t++) {
        size_t dim = (size_t)config->teacher_dim[t];
        layout.teacher[t].key_value_weight = lay(&layout, 2 * key * dim, "W_K|W_V", t);
        layout.teacher[t].output_weight = lay(&layout, key * key, "W_O", t);
        layout.teacher[t].augment_in_weight = lay(&layout, hidden * key, "W_a1", t);
        layout.teacher[t].augment_out_weight = lay(&layout, width * hidden, "W_a2", t);
        if (config->interactive && config->head_inputs[t] > 0)
            layout.teacher[t].probe_weight =
                lay(&layout, (size_t)config->head_inputs[t] * key, "W_p", t);
    }
    layout.decayed = layout.count;
    layout.embeddings = lay(&layout, (size_t)config->teacher_count * embed, "E", -1);
    layout.router_gamma = lay(&layout, width, "LN_r gamma", -1);
    layout.router_beta = lay(&layout, width, "LN_r beta", -1);
    layout.question_gamma = lay(&layout, width, "LN_q gamma", -1);
    layout.question_beta = lay(&layout, width, "LN_q beta", -1);
    layout.question_in_bias = lay(&layout, hidden, "b_q1", -1);
    layout.question_out_bias = lay(&layout, key, "b_q2", -1);
    for (int t = 0; t < config->teacher_count; t++) {
        size_t dim = (size_t)config->teacher_dim[t];
        layout.teacher[t].norm_gamma = lay(&layout, dim, "LN gamma", t);
        layout.teacher[t].norm_beta = lay(&layout, dim, "LN beta", t);
        layout.teacher[t].positions = lay(&layout, (size_t)config->teacher_tokens[t] * key, "P", t);
        layout.teacher[t].output_bias = lay(&layout, key, "b_O", t);
        layout.teacher[t].augment_in_bias = lay(&layout, hidden, "b_a1", t);
        layout.teacher[t].augment_out_bias = lay(&layout, width, "b_a2", t);
        if (config->interactive && config->head_inputs[t] > 0)
            layout.teacher[t].probe_bias = lay(&layout, (size_t)config->head_inputs[t], "b_p", t);
    }
    return layout;
}

/* ---- the reference --------------------------------------------------------------------------- */

/*
 * Everything the loss is a function of, in double, as one vector:
 *   [module params | student logits [ROWS][C] | student hidden [ROWS][d_s] |
 *    head weight [C][d_s] | head bias [C]]
 * Labels, presence and teacher outputs are constants read from the fixture.
 */
typedef struct {
    const trainer_dd_config_t *config;
    const fixture_t *fixture;
    layout_t layout;
    size_t logits_at, hidden_at, head_weight_at, head_bias_at, count;
} reference_t;

/* The stopped quantities, frozen at the unperturbed point. */
typedef struct {
    double alpha[ROWS][TEACHERS];
    double logits[ROWS][CLASSES];
    double knowledge[ROWS][WIDTH];
} frozen_t;

typedef struct {
    double total, ce, kd, answer, router, align, probe_match, probe_answer;
} reference_terms_t;

static reference_t reference_for(const trainer_dd_config_t *config, const fixture_t *fixture) {
    reference_t reference = {.config = config, .fixture = fixture};
    reference.layout = layout_for(config);
    reference.logits_at = reference.layout.count;
    reference.hidden_at = reference.logits_at + ROWS * CLASSES;
    reference.head_weight_at = reference.hidden_at + ROWS * WIDTH;
    reference.head_bias_at = reference.head_weight_at + CLASSES * WIDTH;
    reference.count = reference.head_bias_at + CLASSES;
    return reference;
}

/* The variable vector of the module and fixture as they are now. */
static double *reference_point(const reference_t *reference, trainer_dd_t *dd) {
    double *x = malloc(sizeof(double) * reference->count);
    ck_assert_ptr_nonnull(x);
    const float *params = trainer_dd_params(dd);
    for (size_t i = 0; i < reference->layout.count; i++) x[i] = params[i];
    const fixture_t *fixture = reference->fixture;
    for (int i = 0; i < ROWS * CLASSES; i++)
        x[reference->logits_at + i] = fixture->student_logits[i];
    for (int i = 0; i < ROWS * WIDTH; i++) x[reference->hidden_at + i] = fixture->student_hidden[i];
    for (int i = 0; i < CLASSES * WIDTH; i++)
        x[reference->head_weight_at + i] = fixture->head_weight[i];
    for (int i = 0; i < CLASSES; i++) x[reference->head_bias_at + i] = fixture->head_bias[i];
    return x;
}

/* out[dim] = (in - mean) / sqrt(var + 1e-5) * gamma + beta; gamma, beta NULL: plain. */
static void reference_layernorm(double *out, const double *in, int dim, const double *gamma,
                                const double *beta) {
    double mean = 0.0, variance = 0.0;
    for (int i = 0; i < dim; i++) mean += in[i];
    mean /= dim;
    for (int i = 0; i < dim; i++) variance += (in[i] - mean) * (in[i] - mean);
    double rstd = 1.0 / sqrt(variance / dim + 1e-5);
    for (int i = 0; i < dim; i++)
        out[i] = (in[i] - mean) * rstd * (gamma ? gamma[i] : 1.0) + (beta ? beta[i] : 0.0);
}

static double reference_gelu(double x) {
    return 0.5 * x * (1.0 + tanh(sqrt(2.0 / M_PI) * (x + 0.044715 * x * x * x)));
}

/* out[out_dim] = weight[out_dim][in_dim] · in + bias (bias may be NULL). */
static void reference_dense(double *out, const double *weight, const double *bias, const double *in,
                            int in_dim, int out_dim) {
    for (int o = 0; o < out_dim; o++) {
        double sum = bias ? bias[o] : 0.0;
        for (int i = 0; i < in_dim; i++) sum += weight[(size_t)o * in_dim + i] * in[i];
        out[o] = sum;
    }
}

/* log softmax(logits / temperature)[c], logits double [classes]. */
static double reference_log_softmax(const double *logits, double temperature, int c) {
    double max_value = logits[0], sum = 0.0;
    for (int i = 1; i < CLASSES; i++) max_value = fmax(max_value, logits[i]);
    for (int i = 0; i < CLASSES; i++) sum += exp((logits[i] - max_value) / temperature);
    return (logits[c] - max_value) / temperature - log(sum);
}

/* KL(softmax(teacher/T) ‖ softmax(student/T)). */
static double reference_kl(const double *teacher, const double *student, double temperature) {
    double kl = 0.0;
    for (int c = 0; c < CLASSES; c++) {
        double log_p = reference_log_softmax(teacher, temperature, c);
        kl += exp(log_p) * (log_p - reference_log_softmax(student, temperature, c));
    }
    return kl;
}

/* mean_k (a[k] - b[k])², a row's squared error. */
static double reference_squared_error(const double *a, const double *b) {
    double sum = 0.0;
    for (int k = 0; k < CLASSES; k++) sum += (a[k] - b[k]) * (a[k] - b[k]);
    return sum / CLASSES;
}

/* q_i [d_k] of one pair, from the variable vector x. */
static void reference_question(const reference_t *reference, const double *x, int row, int teacher,
                               double *question) {
    const layout_t *layout = &reference->layout;
    double question_in[WIDTH + EMBED], pre[HIDDEN], act[HIDDEN];
    reference_layernorm(question_in, x + reference->hidden_at + row * WIDTH, WIDTH,
                        x + layout->question_gamma, x + layout->question_beta);
    for (int e = 0; e < EMBED; e++)
        question_in[WIDTH + e] = x[layout->embeddings + teacher * EMBED + e];
    reference_dense(pre, x + layout->question_in_weight, x + layout->question_in_bias, question_in,
                    WIDTH + EMBED, HIDDEN);
    for (int u = 0; u < HIDDEN; u++) act[u] = reference_gelu(pre[u]);
    reference_dense(question, x + layout->question_out_weight, x + layout->question_out_bias, act,
                    HIDDEN, KEY);
}

/* ã_i [d_s] of one present pair, from the variable vector x. */
static void reference_augmented(const reference_t *reference, const double *x, int row, int teacher,
                                double *augmented) {
    const trainer_dd_config_t *config = reference->config;
    const layout_t *layout = &reference->layout;
    int tokens = config->teacher_tokens[teacher], dim = config->teacher_dim[teacher];
    int head_dim = KEY / HEADS;
    double question[KEY];
    reference_question(reference, x, row, teacher, question);

    double keys[3][KEY], values[3][KEY]; /* tokens <= 3 in every reference config */
    ck_assert(tokens <= 3);
    const float *feature = reference->fixture->teacher_feature[teacher] + row * tokens * dim;
    for (int token = 0; token < tokens; token++) {
        double raw[MAX_FEATURE], normal[MAX_FEATURE];
        for (int c = 0; c < dim; c++) raw[c] = feature[token * dim + c];
        reference_layernorm(normal, raw, dim, x + layout->teacher[teacher].norm_gamma,
                            x + layout->teacher[teacher].norm_beta);
        const double *key_value = x + layout->teacher[teacher].key_value_weight;
        reference_dense(keys[token], key_value, NULL, normal, dim, KEY);
        reference_dense(values[token], key_value + KEY * dim, NULL, normal, dim, KEY);
        for (int o = 0; o < KEY; o++)
            keys[token][o] += x[layout->teacher[teacher].positions + token * KEY + o];
    }
    double context[KEY];
    for (int head = 0; head < HEADS; head++) {
        double score[3], max_score = -HUGE_VAL, sum = 0.0;
        for (int token = 0; token < tokens; token++) {
            score[token] = 0.0;
            for (int c = 0; c < head_dim; c++)
                score[token] += question[head * head_dim + c] * keys[token][head * head_dim + c];
            score[token] /= sqrt((double)head_dim);
            max_score = fmax(max_score, score[token]);
        }
        for (int token = 0; token < tokens; token++) sum += exp(score[token] - max_score);
        for (int c = 0; c < head_dim; c++) {
            double value = 0.0;
            for (int token = 0; token < tokens; token++)
                value += exp(score[token] - max_score) / sum * values[token][head * head_dim + c];
            context[head * head_dim + c] = value;
        }
    }
    double answer[KEY], augment_pre[HIDDEN], augment_act[HIDDEN];
    reference_dense(answer, x + layout->teacher[teacher].output_weight,
                    x + layout->teacher[teacher].output_bias, context, KEY, KEY);
    reference_dense(augment_pre, x + layout->teacher[teacher].augment_in_weight,
                    x + layout->teacher[teacher].augment_in_bias, answer, KEY, HIDDEN);
    for (int u = 0; u < HIDDEN; u++) augment_act[u] = reference_gelu(augment_pre[u]);
    reference_dense(augmented, x + layout->teacher[teacher].augment_out_weight,
                    x + layout->teacher[teacher].augment_out_bias, augment_act, HIDDEN, WIDTH);
}

/*
 * The loss of trainer_dd.h at x, in double.  frozen NULL: the loss value itself.  Otherwise
 * the surrogate whose gradient the module computes: alpha in KD (and in k unless
 * end-to-end), the student logits in the learnability target and k in the alignment term
 * are taken from `frozen`.  record (may be NULL) receives this point's stopped quantities.
 */
static reference_terms_t reference_loss(const reference_t *reference, const double *x,
                                        const frozen_t *frozen, frozen_t *record) {
    const trainer_dd_config_t *config = reference->config;
    const fixture_t *fixture = reference->fixture;
    const layout_t *layout = &reference->layout;
    double temperature = config->temperature, w = config->kd_weight;
    int end_to_end = config->router == TRAINER_DD_ROUTER_END_TO_END;
    int reliability = config->router == TRAINER_DD_ROUTER_RELIABILITY;
    int regression = config->task == TRAINER_TASK_REGRESSION;
    reference_terms_t terms = {0};
    frozen_t live;
    memset(&live, 0, sizeof live);
    int labelled = 0, with_teacher = 0, router_rows = 0, answer_rows = 0;

    for (int row = 0; row < ROWS; row++) {
        const double *logits = x + reference->logits_at + row * CLASSES;
        const double *hidden = x + reference->hidden_at + row * WIDTH;
        int32_t label = fixture->labels[row]; /* regression: >= 0 on the labelled rows */
        double label_target[CLASSES];
        for (int c = 0; c < CLASSES; c++) live.logits[row][c] = logits[c];
        for (int c = 0; c < CLASSES; c++) label_target[c] = fixture->targets[row * CLASSES + c];
        if (label >= 0) {
            terms.ce += regression ? reference_squared_error(logits, label_target)
                                   : -reference_log_softmax(logits, 1.0, label);
            labelled++;
        }
        int present = 0;
        for (int t = 0; t < config->teacher_count; t++) present += fixture->present[t][row];
        if (present == 0) continue;
        with_teacher++;

        /* alpha */
        double router_norm[WIDTH], query[EMBED], score[TEACHERS], max_score = -HUGE_VAL;
        double normaliser = 0.0, log_alpha[TEACHERS] = {0};
        reference_layernorm(router_norm, hidden, WIDTH, x + layout->router_gamma,
                            x + layout->router_beta);
        reference_dense(query, x + layout->router_weight, NULL, router_norm, WIDTH, EMBED);
        for (int t = 0; t < config->teacher_count; t++) {
            if (!fixture->present[t][row]) continue;
            score[t] = 0.0;
            for (int e = 0; e < EMBED; e++)
                score[t] += query[e] * x[layout->embeddings + t * EMBED + e];
            score[t] /= sqrt((double)EMBED);
            max_score = fmax(max_score, score[t]);
        }
        for (int t = 0; t < config->teacher_count; t++)
            if (fixture->present[t][row]) normaliser += exp(score[t] - max_score);
        for (int t = 0; t < config->teacher_count; t++)
            if (fixture->present[t][row]) {
                log_alpha[t] = score[t] - max_score - log(normaliser);
                live.alpha[row][t] = exp(log_alpha[t]);
            }
        const double(*kd_alpha)[TEACHERS] = frozen ? frozen->alpha : live.alpha;
        const double(*knowledge_alpha)[TEACHERS] =
            frozen && !end_to_end ? frozen->alpha : live.alpha;

        /* KD, and each pair's KL for the learnability target */
        double teacher_logits[TEACHERS][CLASSES], target_logit[TEACHERS];
        for (int t = 0; t < config->teacher_count; t++) {
            if (!fixture->present[t][row]) continue;
            for (int c = 0; c < CLASSES; c++)
                teacher_logits[t][c] = fixture->teacher_logits[t][row * CLASSES + c];
            const double *target_student = frozen ? frozen->logits[row] : logits;
            if (regression) {
                terms.kd += kd_alpha[row][t] * reference_squared_error(logits, teacher_logits[t]);
                target_logit[t] =
                    reliability && label >= 0
                        ? -reference_squared_error(teacher_logits[t], label_target) /
                              config->router_tau
                        : -reference_squared_error(target_student, teacher_logits[t]) /
                              config->router_tau;
                continue;
            }
            terms.kd += kd_alpha[row][t] * temperature * temperature *
                        reference_kl(teacher_logits[t], logits, temperature);
            target_logit[t] =
                reliability && label >= 0
                    ? reference_log_softmax(teacher_logits[t], 1.0, label) / config->router_tau
                    : -reference_kl(teacher_logits[t], target_student, temperature) /
                          config->router_tau;
        }

        /* KL(r ‖ alpha) */
        if (!end_to_end && config->router_weight > 0.0f && (!reliability || label >= 0)) {
            double max_logit = -HUGE_VAL, target_normaliser = 0.0;
            for (int t = 0; t < config->teacher_count; t++)
                if (fixture->present[t][row]) max_logit = fmax(max_logit, target_logit[t]);
            for (int t = 0; t < config->teacher_count; t++)
                if (fixture->present[t][row]) target_normaliser += exp(target_logit[t] - max_logit);
            for (int t = 0; t < config->teacher_count; t++) {
                if (!fixture->present[t][row]) continue;
                double log_target = target_logit[t] - max_logit - log(target_normaliser);
                terms.router += exp(log_target) * (log_target - log_alpha[t]);
            }
            router_rows++;
        }

        /* the interactive probes, through the frozen heads */
        for (int t = 0; config->interactive && t < config->teacher_count; t++) {
            int inputs = config->head_inputs[t];
            if (!fixture->present[t][row] || inputs == 0) continue;
            double question[KEY], probe[MAX_HEAD], probe_logits[CLASSES],
                head_weight[CLASSES * MAX_HEAD];
            double head_bias[CLASSES];
            reference_question(reference, x, row, t, question);
            reference_dense(probe, x + layout->teacher[t].probe_weight,
                            x + layout->teacher[t].probe_bias, question, KEY, inputs);
            for (int i = 0; i < CLASSES * inputs; i++) head_weight[i] = config->head_weight[t][i];
            for (int c = 0; c < CLASSES; c++) head_bias[c] = config->head_bias[t][c];
            reference_dense(probe_logits, head_weight, head_bias, probe, inputs, CLASSES);
            terms.probe_answer +=
                regression ? reference_squared_error(probe_logits, teacher_logits[t])
                           : temperature * temperature *
                                 reference_kl(teacher_logits[t], probe_logits, temperature);
            /* Var(H_t) over every value of the present rows */
            const float *target = fixture->batch.teacher_head_input[t];
            double sum = 0.0, squares = 0.0, match = 0.0;
            int values = 0;
            for (int r = 0; r < ROWS; r++) {
                if (!fixture->present[t][r]) continue;
                for (int c = 0; c < inputs; c++, values++) {
                    sum += target[r * inputs + c];
                    squares += (double)target[r * inputs + c] * target[r * inputs + c];
                }
            }
            double variance = squares / values - (sum / values) * (sum / values);
            for (int c = 0; c < inputs; c++) {
                double difference = probe[c] - target[row * inputs + c];
                match += difference * difference;
            }
            terms.probe_match += match / (inputs * variance);
        }

        /* k, the answer and the alignment */
        if (config->answer_weight == 0.0f && config->align_weight == 0.0f) continue;
        double knowledge[WIDTH] = {0};
        for (int t = 0; t < config->teacher_count; t++) {
            if (!fixture->present[t][row]) continue;
            double augmented[WIDTH];
            reference_augmented(reference, x, row, t, augmented);
            for (int u = 0; u < WIDTH; u++) knowledge[u] += knowledge_alpha[row][t] * augmented[u];
        }
        for (int u = 0; u < WIDTH; u++) live.knowledge[row][u] = knowledge[u];
        if (label >= 0 && config->answer_weight > 0.0f) {
            double act[WIDTH], answer_logits[CLASSES];
            for (int u = 0; u < WIDTH; u++) act[u] = fmax(knowledge[u], 0.0);
            reference_dense(answer_logits, x + reference->head_weight_at,
                            x + reference->head_bias_at, act, WIDTH, CLASSES);
            terms.answer += regression ? reference_squared_error(answer_logits, label_target)
                                       : -reference_log_softmax(answer_logits, 1.0, label);
            answer_rows++;
        }
        if (config->align_weight > 0.0f) {
            double hidden_norm[WIDTH], knowledge_norm[WIDTH];
            reference_layernorm(hidden_norm, hidden, WIDTH, NULL, NULL);
            reference_layernorm(knowledge_norm, frozen ? frozen->knowledge[row] : knowledge, WIDTH,
                                NULL, NULL);
            for (int u = 0; u < WIDTH; u++)
                terms.align += (hidden_norm[u] - knowledge_norm[u]) *
                               (hidden_norm[u] - knowledge_norm[u]) / WIDTH;
        }
    }
    terms.ce = labelled ? (1.0 - w) * terms.ce / labelled : 0.0;
    terms.kd = with_teacher ? w * terms.kd / with_teacher : 0.0;
    terms.router = router_rows ? config->router_weight * terms.router / router_rows : 0.0;
    terms.answer = answer_rows ? config->answer_weight * terms.answer / answer_rows : 0.0;
    terms.align = with_teacher ? config->align_weight * terms.align / with_teacher : 0.0;
    terms.probe_match =
        with_teacher ? config->probe_match_weight * terms.probe_match / with_teacher : 0.0;
    terms.probe_answer =
        with_teacher ? config->probe_answer_weight * terms.probe_answer / with_teacher : 0.0;
    terms.total = terms.ce + terms.kd + terms.router + terms.answer + terms.align +
                  terms.probe_match + terms.probe_answer;
    if (record) *record = live;
    return terms;
}

/* ---- gradients against the reference ------------------------------------------------------ */

/*
 * The configuration of loop test `_i`: 0-5 the 3 routers x alignment off / on; then the
 * interactive variant: 6 learnability, 7 end-to-end with alignment, 8 reliability without the
 * answer term (only the probes use the module), all with both heads; 9 learnability with
 * only teacher 0's head.
 */
enum { LOOPED_CONFIGS = 10 };
static trainer_dd_config_t looped_config(int loop, const fixture_t *fixture) {
    if (loop < 6) return fixture_config((trainer_dd_router_t)(loop / 2), loop % 2 ? 0.4f : 0.0f);
    static const trainer_dd_router_t routers[] = {
        TRAINER_DD_ROUTER_LEARNABILITY, TRAINER_DD_ROUTER_END_TO_END, TRAINER_DD_ROUTER_RELIABILITY,
        TRAINER_DD_ROUTER_LEARNABILITY};
    trainer_dd_config_t config = fixture_config(routers[loop - 6], loop == 7 ? 0.4f : 0.0f);
    if (loop == 8) config.answer_weight = 0.0f;
    make_interactive(&config, fixture, loop == 9 ? 1u : 3u);
    return config;
}

static void assert_close(double expected, double actual, double tolerance, const char *what) {
    ck_assert_msg(fabs(expected - actual) <= tolerance * (1.0 + fabs(expected)),
                  "%s: reference %.9g, module %.9g", what, expected, actual);
}

/* The module's loss terms equal the reference's, for every mode. */
static void check_loss_matches_reference(int loop, trainer_task_t task) {
    fixture_t fixture;
    fixture_init(&fixture, 101);
    trainer_dd_config_t config = looped_config(loop, &fixture);
    if (task == TRAINER_TASK_REGRESSION) make_regression(&fixture, &config);
    trainer_dd_t *dd = new_dd(&config, 7);
    randomize_params(dd, 8);
    reference_t reference = reference_for(&config, &fixture);
    ck_assert_uint_eq(reference.layout.count, trainer_dd_param_count(dd));
    double *x = reference_point(&reference, dd);
    reference_terms_t expected = reference_loss(&reference, x, NULL, NULL);
    step_result_t step;
    run_step(dd, &fixture, &step);
    assert_close(expected.ce, step.loss.ce, 1e-5, "ce");
    assert_close(expected.kd, step.loss.kd, 1e-5, "kd");
    assert_close(expected.router, step.loss.router, 1e-5, "router");
    assert_close(expected.answer, step.loss.answer, 1e-5, "answer");
    assert_close(expected.align, step.loss.align, 1e-5, "align");
    assert_close(expected.probe_match, step.loss.probe_match, 1e-5, "probe match");
    assert_close(expected.probe_answer, step.loss.probe_answer, 1e-5, "probe answer");
    assert_close(expected.total, step.loss.total, 1e-5, "total");
    ck_assert(step.loss.kd > 0.0 && step.loss.ce > 0.0);
    ck_assert(config.answer_weight > 0.0f ? step.loss.answer > 0.0 : step.loss.answer == 0.0);
    ck_assert(config.interactive ? step.loss.probe_match > 0.0 && step.loss.probe_answer > 0.0
                                 : step.loss.probe_match == 0.0 && step.loss.probe_answer == 0.0);
    ck_assert(config.router == TRAINER_DD_ROUTER_END_TO_END ? step.loss.router == 0.0
                                                            : step.loss.router > 0.0);
    ck_assert(config.align_weight > 0.0f ? step.loss.align > 0.0 : step.loss.align == 0.0);
    ck_assert_int_eq(step.loss.labelled, 4);
    free(x);
    trainer_dd_free(&dd);
}

START_TEST(test_loss_matches_reference) {
    check_loss_matches_reference(_i, TRAINER_TASK_CLASSIFICATION);
}
END_TEST

/* The same with the regression terms (trainer_dd.h): squared errors in place of CE and KL. */
START_TEST(test_regression_loss_matches_reference) {
    check_loss_matches_reference(_i, TRAINER_TASK_REGRESSION);
}
END_TEST

/*
 * Every gradient of the module (every element of every tensor, the student's logits, hidden
 * vector and head) against central differences of the reference surrogate.  The reference
 * is exact double, so h = 1e-5 is far from every ReLU kink and the tolerance is set by the
 * module's float arithmetic.
 */
static void check_gradients_match_reference(int loop, trainer_task_t task) {
    fixture_t fixture;
    fixture_init(&fixture, 102);
    trainer_dd_config_t config = looped_config(loop, &fixture);
    if (task == TRAINER_TASK_REGRESSION) make_regression(&fixture, &config);
    trainer_dd_t *dd = new_dd(&config, 9);
    randomize_params(dd, 10);
    reference_t reference = reference_for(&config, &fixture);
    double *x = reference_point(&reference, dd);
    frozen_t frozen;
    reference_loss(&reference, x, NULL, &frozen);

    step_result_t step;
    trainer_dd_zero_grads(dd);
    run_step(dd, &fixture, &step);
    const float *grads = trainer_dd_grads(dd);
    float *analytic = malloc(sizeof(float) * reference.count);
    ck_assert_ptr_nonnull(analytic);
    memcpy(analytic, grads, sizeof(float) * reference.layout.count);
    memcpy(analytic + reference.logits_at, step.d_logits, sizeof step.d_logits);
    memcpy(analytic + reference.hidden_at, step.d_hidden, sizeof step.d_hidden);
    memcpy(analytic + reference.head_weight_at, step.d_head_weight, sizeof step.d_head_weight);
    memcpy(analytic + reference.head_bias_at, step.d_head_bias, sizeof step.d_head_bias);
    assert_all_finite(analytic, reference.count, "gradient");

    const double step_size = 1e-5, relative = 2e-3, absolute = 1e-4;
    int nonzero = 0;
    for (size_t i = 0; i < reference.count; i++) {
        double original = x[i];
        x[i] = original + step_size;
        double plus = reference_loss(&reference, x, &frozen, NULL).total;
        x[i] = original - step_size;
        double minus = reference_loss(&reference, x, &frozen, NULL).total;
        x[i] = original;
        double numeric = (plus - minus) / (2.0 * step_size);
        double error = fabs(numeric - analytic[i]);
        nonzero += fabs(numeric) > 1e-3;
        if (error <= absolute + relative * fmax(fabs(numeric), fabs(analytic[i]))) continue;
        const char *name = "?";
        size_t element = i;
        if (i >= reference.head_bias_at)
            name = "head bias", element -= reference.head_bias_at;
        else if (i >= reference.head_weight_at)
            name = "head weight", element -= reference.head_weight_at;
        else if (i >= reference.hidden_at)
            name = "student hidden", element -= reference.hidden_at;
        else if (i >= reference.logits_at)
            name = "student logits", element -= reference.logits_at;
        else
            for (int t = 0; t < reference.layout.tensor_count; t++) {
                const named_tensor_t *tensor = &reference.layout.tensor[t];
                if (i >= tensor->offset && i < tensor->offset + tensor->count)
                    name = tensor->name, element = i - tensor->offset;
            }
        ck_abort_msg("config %d, task %d (%s router, align %g, interactive %d): d %s [%zu]: "
                     "analytic %.7g, numeric %.7g",
                     loop, (int)task, trainer_dd_router_name(config.router),
                     (double)config.align_weight, config.interactive, name, element,
                     (double)analytic[i], numeric);
    }
    /* Most of the gradient is non-trivial, so the comparison above means something (without
     * the answer term only the question and probe paths carry one). */
    int share = config.answer_weight > 0.0f ? 2 : 4;
    ck_assert_msg(nonzero > (int)reference.count / share, "only %d of %zu gradients are non-zero",
                  nonzero, reference.count);
    free(analytic);
    free(x);
    trainer_dd_free(&dd);
}

START_TEST(test_gradients_match_reference) {
    check_gradients_match_reference(_i, TRAINER_TASK_CLASSIFICATION);
}
END_TEST

/* The same for regression, every mode: the stopped quantities stay stopped. */
START_TEST(test_regression_gradients_match_reference) {
    check_gradients_match_reference(_i, TRAINER_TASK_REGRESSION);
}
END_TEST

/* ---- gradients against the module's own loss -------------------------------------------- */

typedef struct {
    trainer_dd_t *dd;
    fixture_t *fixture;
    step_result_t scratch;
} raw_context_t;

static double raw_loss(void *opaque) {
    raw_context_t *context = opaque;
    run_step(context->dd, context->fixture, &context->scratch);
    return context->scratch.loss.total;
}

/*
 * Where nothing is stopped the module's own float loss is the function its gradient
 * differentiates: end-to-end with w = 0 and no alignment (CE and the answer, through
 * alpha, the question and every module tensor), reliability with only the router term, and
 * the first again with the interactive probes through both frozen heads.
 */
START_TEST(test_gradients_match_own_loss) {
    fixture_t fixture;
    fixture_init(&fixture, 103);
    trainer_dd_config_t config = fixture_config(TRAINER_DD_ROUTER_END_TO_END, 0.0f);
    config.kd_weight = 0.0f;
    if (_i == 1) {
        config.router = TRAINER_DD_ROUTER_RELIABILITY;
        config.answer_weight = 0.0f;
    }
    if (_i == 2) make_interactive(&config, &fixture, 3u);
    trainer_dd_t *dd = new_dd(&config, 11);
    randomize_params(dd, 12);
    layout_t layout = layout_for(&config);

    step_result_t step;
    trainer_dd_zero_grads(dd);
    run_step(dd, &fixture, &step);
    float *grads = copy_grads(dd);
    raw_context_t context = {.dd = dd, .fixture = &fixture};
    gradcheck_tolerance_t tolerance = gradcheck_default_tolerance();
    gradcheck_param_t inputs[] = {
        {"student logits", fixture.student_logits, NULL, ROWS * CLASSES},
        {"student hidden", fixture.student_hidden, NULL, ROWS * WIDTH},
        {"head weight", fixture.head_weight, NULL, CLASSES * WIDTH},
        {"head bias", fixture.head_bias, NULL, CLASSES},
    };
    const float *input_grads[] = {step.d_logits, step.d_hidden, step.d_head_weight,
                                  step.d_head_bias};
    for (int i = 0; i < 4; i++)
        gradcheck_assert_matches(&inputs[i], input_grads[i], raw_loss, &context, tolerance);
    float *params = trainer_dd_params(dd);
    for (int t = 0; t < layout.tensor_count; t++) {
        const named_tensor_t *tensor = &layout.tensor[t];
        gradcheck_param_t param = {tensor->name, params + tensor->offset, NULL, (int)tensor->count};
        gradcheck_assert_matches(&param, grads + tensor->offset, raw_loss, &context, tolerance);
    }
    free(grads);
    trainer_dd_free(&dd);
}
END_TEST

/* ---- semantics --------------------------------------------------------------------------------
 */

/* alpha sums to 1 over the present teachers of a row, is 0 elsewhere, and is what the loss
 * uses (its KD term, recomputed from route()'s alpha, matches the module's). */
START_TEST(test_alpha_is_the_routers_distribution) {
    fixture_t fixture;
    fixture_init(&fixture, 104);
    trainer_dd_config_t config = fixture_config(TRAINER_DD_ROUTER_LEARNABILITY, 0.0f);
    trainer_dd_t *dd = new_dd(&config, 13);
    randomize_params(dd, 14);
    float alpha[ROWS * TEACHERS];
    trainer_dd_route(dd, fixture.student_hidden, ROWS, fixture.batch.teacher_present, alpha);
    double kd = 0.0;
    int rows_with_teacher = 0;
    for (int row = 0; row < ROWS; row++) {
        double sum = 0.0;
        int present = 0;
        for (int t = 0; t < TEACHERS; t++) {
            float value = alpha[row * TEACHERS + t];
            if (!fixture.present[t][row]) {
                ck_assert_msg(value == 0.0f, "alpha[%d][%d] = %g for an absent teacher", row, t,
                              (double)value);
                continue;
            }
            ck_assert(value > 0.0f && value <= 1.0f);
            sum += value;
            present++;
            double teacher[CLASSES], student[CLASSES];
            for (int c = 0; c < CLASSES; c++) {
                teacher[c] = fixture.teacher_logits[t][row * CLASSES + c];
                student[c] = fixture.student_logits[row * CLASSES + c];
            }
            kd += value * 4.0 * reference_kl(teacher, student, 2.0);
        }
        if (present == 0) continue;
        rows_with_teacher++;
        ck_assert_double_eq_tol(sum, 1.0, 1e-6);
        if (present == 1) ck_assert(sum == 1.0);
    }
    step_result_t step;
    run_step(dd, &fixture, &step);
    assert_close(config.kd_weight * kd / rows_with_teacher, step.loss.kd, 1e-6, "kd from route()");

    /* The routes do not depend on the order of calls or on a loss in between. */
    float again[ROWS * TEACHERS];
    trainer_dd_route(dd, fixture.student_hidden, ROWS, fixture.batch.teacher_present, again);
    ck_assert(memcmp(alpha, again, sizeof alpha) == 0);

    /* present NULL: every teacher, all weights positive, rows sum to 1. */
    trainer_dd_route(dd, fixture.student_hidden, ROWS, NULL, alpha);
    for (int row = 0; row < ROWS; row++) {
        ck_assert(alpha[row * TEACHERS] > 0.0f && alpha[row * TEACHERS + 1] > 0.0f);
        ck_assert_double_eq_tol(alpha[row * TEACHERS] + alpha[row * TEACHERS + 1], 1.0, 1e-6);
    }
    trainer_dd_free(&dd);
}
END_TEST

/* With one teacher alpha is exactly 1 wherever it is present, and KL(r ‖ alpha) is 0. */
START_TEST(test_one_teacher_has_alpha_one) {
    fixture_t fixture;
    fixture_init(&fixture, 105);
    trainer_dd_config_t config = fixture_config((trainer_dd_router_t)_i, 0.3f);
    config.teacher_count = 1;
    trainer_dd_t *dd = new_dd(&config, 15);
    randomize_params(dd, 16);
    float alpha[ROWS];
    trainer_dd_route(dd, fixture.student_hidden, ROWS, fixture.batch.teacher_present, alpha);
    for (int row = 0; row < ROWS; row++)
        ck_assert(alpha[row] == (fixture.present[0][row] ? 1.0f : 0.0f));
    step_result_t step;
    run_step(dd, &fixture, &step);
    ck_assert(step.loss.router == 0.0);
    ck_assert(isfinite(step.loss.total) && step.loss.answer > 0.0);
    assert_all_finite(step.d_hidden, ROWS * WIDTH, "d_hidden");
    trainer_dd_free(&dd);
}
END_TEST

/* NaN, 0, a huge value or -inf in absent pairs: bitwise identical results, module gradients
 * included, for every mode with alignment on, without and with the interactive probes. */
START_TEST(test_absent_pairs_change_nothing) {
    fixture_t fixture;
    fixture_init(&fixture, 106);
    trainer_dd_config_t config = fixture_config((trainer_dd_router_t)(_i % 3), 0.4f);
    if (_i >= 3) make_interactive(&config, &fixture, 3u);
    trainer_dd_t *dd = new_dd(&config, 17);
    randomize_params(dd, 18);
    size_t count = trainer_dd_param_count(dd);
    step_result_t with_nan, with_garbage;
    trainer_dd_zero_grads(dd);
    run_step(dd, &fixture, &with_nan);
    float *grads_with_nan = copy_grads(dd);
    ck_assert(isfinite(with_nan.loss.total));
    assert_all_finite(with_nan.d_logits, ROWS * CLASSES, "d_logits");
    assert_all_finite(with_nan.d_hidden, ROWS * WIDTH, "d_hidden");
    assert_all_finite(with_nan.d_head_weight, CLASSES * WIDTH, "d_head_weight");
    assert_all_finite(grads_with_nan, count, "module gradients");
    static const float garbage[] = {0.0f, 1e30f, -INFINITY};
    for (size_t g = 0; g < sizeof garbage / sizeof garbage[0]; g++) {
        fixture_set_garbage(&fixture, garbage[g]);
        trainer_dd_zero_grads(dd);
        run_step(dd, &fixture, &with_garbage);
        assert_same_step(&with_nan, &with_garbage);
        ck_assert(memcmp(grads_with_nan, trainer_dd_grads(dd), sizeof(float) * count) == 0);
    }
    free(grads_with_nan);
    trainer_dd_free(&dd);
}
END_TEST

/* One teacher on every row, w = 1 or 0.6, no answer, router or alignment term: the loss and
 * d_logits are trainer_method's kd, and nothing reaches the hidden vector or the module. */
START_TEST(test_only_kd_is_trainer_method_kd) {
    static const float kd_weights[] = {1.0f, 0.6f};
    fixture_t fixture;
    fixture_init(&fixture, 107);
    memset(fixture.present[0], 1, ROWS);
    for (int i = 0; i < ROWS * CLASSES; i++)
        if (!isfinite(fixture.teacher_logits[0][i])) fixture.teacher_logits[0][i] = (float)(i % 5);
    for (int i = 0; i < ROWS * MAX_FEATURE; i++)
        if (!isfinite(fixture.teacher_feature[0][i])) fixture.teacher_feature[0][i] = 0.25f;
    trainer_dd_config_t config = fixture_config(TRAINER_DD_ROUTER_LEARNABILITY, 0.0f);
    config.teacher_count = 1;
    config.kd_weight = kd_weights[_i];
    config.answer_weight = config.router_weight = 0.0f;
    trainer_dd_t *dd = new_dd(&config, 19);
    randomize_params(dd, 20);

    trainer_method_config_t kd_config = {.kind = TRAINER_METHOD_KD,
                                         .temperature = config.temperature,
                                         .kd_weight = config.kd_weight,
                                         .teacher_count = 1,
                                         .outputs = CLASSES,
                                         .max_batch = MAX_BATCH};
    trainer_method_t *kd = NULL;
    ck_assert(trainer_method_new(&kd_config, 1, &kd) == CM_OK);
    trainer_batch_t kd_batch = {.rows = ROWS, .labels = fixture.labels};
    kd_batch.teacher_logits[0] = fixture.teacher_logits[0];
    kd_batch.teacher_present[0] = fixture.present[0];
    trainer_loss_t kd_loss;
    float kd_d_logits[ROWS * CLASSES];
    trainer_student_t kd_student = {.outputs = fixture.student_logits, .d_outputs = kd_d_logits};
    trainer_method_loss(kd, &kd_batch, &kd_student, &kd_loss);

    step_result_t step;
    trainer_dd_zero_grads(dd);
    run_step(dd, &fixture, &step);
    ck_assert_double_eq_tol(step.loss.total, kd_loss.total, 1e-6 * kd_loss.total);
    double kd_ce = trainer_method_term(kd, &kd_loss, "ce");
    double kd_kd = trainer_method_term(kd, &kd_loss, "kd");
    ck_assert_double_eq_tol(step.loss.ce, kd_ce, 1e-6);
    ck_assert_double_eq_tol(step.loss.kd, kd_kd, 1e-6 * kd_kd);
    for (int i = 0; i < ROWS * CLASSES; i++)
        ck_assert_float_eq_tol(step.d_logits[i], kd_d_logits[i], 1e-6f);
    assert_all_zero(step.d_hidden, ROWS * WIDTH, "d_hidden");
    assert_all_zero(step.d_head_weight, CLASSES * WIDTH, "d_head_weight");
    assert_all_zero(trainer_dd_grads(dd), trainer_dd_param_count(dd), "module gradients");
    trainer_method_free(&kd);
    trainer_dd_free(&dd);
}
END_TEST

/* Regression, one teacher on every row, only the task and KD terms: trainer_method's kd for
 * regression, (1-w)·MSE(s, y) + w·MSE(s, z). */
START_TEST(test_regression_only_kd_is_trainer_method_kd) {
    fixture_t fixture;
    fixture_init(&fixture, 117);
    memset(fixture.present[0], 1, ROWS);
    for (int i = 0; i < ROWS * CLASSES; i++)
        if (!isfinite(fixture.teacher_logits[0][i])) fixture.teacher_logits[0][i] = (float)(i % 5);
    for (int i = 0; i < ROWS * MAX_FEATURE; i++)
        if (!isfinite(fixture.teacher_feature[0][i])) fixture.teacher_feature[0][i] = 0.25f;
    trainer_dd_config_t config = fixture_config(TRAINER_DD_ROUTER_LEARNABILITY, 0.0f);
    make_regression(&fixture, &config);
    config.teacher_count = 1;
    config.answer_weight = config.router_weight = 0.0f;
    trainer_dd_t *dd = new_dd(&config, 19);
    randomize_params(dd, 20);

    trainer_method_config_t kd_config = {.kind = TRAINER_METHOD_KD,
                                         .task = TRAINER_TASK_REGRESSION,
                                         .temperature = config.temperature,
                                         .kd_weight = config.kd_weight,
                                         .teacher_count = 1,
                                         .outputs = CLASSES,
                                         .max_batch = MAX_BATCH};
    trainer_method_t *kd = NULL;
    ck_assert(trainer_method_new(&kd_config, 1, &kd) == CM_OK);
    trainer_batch_t kd_batch = {
        .rows = ROWS, .targets = fixture.targets, .labelled = fixture.labelled};
    kd_batch.teacher_logits[0] = fixture.teacher_logits[0];
    kd_batch.teacher_present[0] = fixture.present[0];
    trainer_loss_t kd_loss;
    float kd_d_logits[ROWS * CLASSES];
    trainer_student_t kd_student = {.outputs = fixture.student_logits, .d_outputs = kd_d_logits};
    trainer_method_loss(kd, &kd_batch, &kd_student, &kd_loss);

    step_result_t step;
    trainer_dd_zero_grads(dd);
    run_step(dd, &fixture, &step);
    ck_assert(kd_loss.total > 0.0 && step.loss.kd > 0.0);
    ck_assert_double_eq_tol(step.loss.total, kd_loss.total, 1e-6 * kd_loss.total);
    ck_assert_double_eq_tol(step.loss.ce, trainer_method_term(kd, &kd_loss, "mse"), 1e-6);
    ck_assert_double_eq_tol(step.loss.kd, trainer_method_term(kd, &kd_loss, "kd"),
                            1e-6 * step.loss.kd);
    for (int i = 0; i < ROWS * CLASSES; i++)
        ck_assert_float_eq_tol(step.d_logits[i], kd_d_logits[i], 1e-6f);
    assert_all_zero(step.d_hidden, ROWS * WIDTH, "d_hidden");
    ck_assert(step.loss.answer_accuracy == 0.0);
    trainer_method_free(&kd);
    trainer_dd_free(&dd);
}
END_TEST

/* ---- the method interface ----------------------------------------------------------------- */

/* The fixture as the trainer hands it to a method: teacher 0's feature is its "tokens",
 * teacher 1's its "hidden", which is also teacher 1's head input (and teacher 0's head input
 * is a "hidden" of its own). */
static trainer_batch_t interface_batch(const fixture_t *fixture) {
    trainer_batch_t batch = {.rows = ROWS,
                             .labels = fixture->batch.labels,
                             .targets = fixture->targets,
                             .labelled = fixture->labelled};
    for (int t = 0; t < TEACHERS; t++) {
        batch.teacher_logits[t] = fixture->teacher_logits[t];
        batch.teacher_present[t] = fixture->present[t];
    }
    batch.teacher_tokens[0] = fixture->teacher_feature[0];
    batch.teacher_hidden[0] = fixture->teacher_head_input;
    batch.teacher_hidden[1] = fixture->teacher_feature[1];
    return batch;
}

static trainer_method_t *new_dd_method(const trainer_dd_config_t *config, uint64_t seed) {
    trainer_method_config_t method_config = {.kind = TRAINER_METHOD_DIVERSEDISTILL,
                                             .task = config->task,
                                             .outputs = config->classes,
                                             .temperature = config->temperature,
                                             .kd_weight = config->kd_weight,
                                             .teacher_count = config->teacher_count,
                                             .student_hidden = config->student_hidden,
                                             .max_batch = config->max_batch,
                                             .dd = config};
    trainer_method_t *method = NULL;
    cm_status_t status = trainer_method_new(&method_config, seed, &method);
    ck_assert_msg(status == CM_OK, "trainer_method_new: %s", cm_last_error());
    ck_assert_int_eq(trainer_method_kind(method), TRAINER_METHOD_DIVERSEDISTILL);
    return method;
}

/*
 * Through trainer_method_new and trainer_method_loss, DiverseDistill gives bit for bit what
 * trainer_dd_loss gives, every term under its name, the head's gradients included, for both
 * tasks and with the interactive probes; its parameters are the module's.
 */
START_TEST(test_interface_is_the_module) {
    trainer_task_t task = _i ? TRAINER_TASK_REGRESSION : TRAINER_TASK_CLASSIFICATION;
    fixture_t fixture;
    fixture_init(&fixture, 120);
    trainer_dd_config_t config = looped_config(7, &fixture); /* end-to-end, align, both heads */
    if (task == TRAINER_TASK_REGRESSION) make_regression(&fixture, &config);
    config.feature_output[0] = TRAINER_OUTPUT_TOKENS;
    config.feature_output[1] = TRAINER_OUTPUT_HIDDEN;
    trainer_dd_t *dd = new_dd(&config, 21);
    trainer_method_t *method = new_dd_method(&config, 21);
    ck_assert_uint_eq(trainer_method_param_count(method), trainer_dd_param_count(dd));
    ck_assert(memcmp(trainer_method_params(method), trainer_dd_params(dd),
                     sizeof(float) * trainer_dd_param_count(dd)) == 0);

    step_result_t direct;
    trainer_dd_zero_grads(dd);
    run_step(dd, &fixture, &direct);

    step_result_t through;
    memset(&through, 0, sizeof through);
    trainer_batch_t batch = interface_batch(&fixture);
    trainer_student_t student = {.outputs = fixture.student_logits,
                                 .hidden = fixture.student_hidden,
                                 .head_weight = fixture.head_weight,
                                 .head_bias = fixture.head_bias,
                                 .d_outputs = through.d_logits,
                                 .d_hidden = through.d_hidden,
                                 .d_head_weight = through.d_head_weight,
                                 .d_head_bias = through.d_head_bias};
    trainer_loss_t loss;
    trainer_method_zero_grad(method);
    trainer_method_loss(method, &batch, &student, &loss);
    ck_assert_int_eq(trainer_method_term_count(method), 7);
    ck_assert_str_eq(trainer_method_term_name(method, 0), _i ? "mse" : "ce");
    through.loss =
        (trainer_dd_loss_t){.total = loss.total,
                            .ce = trainer_method_term(method, &loss, _i ? "mse" : "ce"),
                            .kd = trainer_method_term(method, &loss, "kd"),
                            .answer = trainer_method_term(method, &loss, "dd_answer"),
                            .router = trainer_method_term(method, &loss, "dd_router"),
                            .align = trainer_method_term(method, &loss, "dd_align"),
                            .probe_match = trainer_method_term(method, &loss, "dd_probe_match"),
                            .probe_answer = trainer_method_term(method, &loss, "dd_probe_answer"),
                            .answer_accuracy = direct.loss.answer_accuracy, /* not a term */
                            .labelled = loss.labelled};
    assert_same_step(&direct, &through);
    ck_assert(memcmp(trainer_method_grads(method), trainer_dd_grads(dd),
                     sizeof(float) * trainer_dd_param_count(dd)) == 0);

    /* needs: logits, the feature, and "hidden" for a head */
    ck_assert_uint_eq(trainer_method_needs(method, 0), 1u << TRAINER_OUTPUT_LOGITS |
                                                           1u << TRAINER_OUTPUT_TOKENS |
                                                           1u << TRAINER_OUTPUT_HIDDEN);
    ck_assert_uint_eq(trainer_method_needs(method, 1),
                      1u << TRAINER_OUTPUT_LOGITS | 1u << TRAINER_OUTPUT_HIDDEN);
    trainer_method_free(&method);
    config.interactive = 0;
    method = new_dd_method(&config, 21);
    ck_assert_uint_eq(trainer_method_needs(method, 0),
                      1u << TRAINER_OUTPUT_LOGITS | 1u << TRAINER_OUTPUT_TOKENS);
    ck_assert(!trainer_method_chooses(method));
    trainer_method_free(&method);
    trainer_dd_free(&dd);
}
END_TEST

/*
 * --dd-filter: the method chooses only with θ > 0; a row's top teacher is always asked, the
 * others when alpha >= θ; exploration 1 asks for everything; the same seed, the same choice.
 */
START_TEST(test_interface_chooses_pairs) {
    fixture_t fixture;
    fixture_init(&fixture, 121);
    trainer_dd_config_t config = fixture_config(TRAINER_DD_ROUTER_LEARNABILITY, 0.0f);
    trainer_dd_t *dd = new_dd(&config, 22); /* the same module, to read alpha from */
    randomize_params(dd, 23);
    float alpha[ROWS * TEACHERS];
    trainer_dd_route(dd, fixture.student_hidden, ROWS, NULL, alpha);
    trainer_student_t student = {.outputs = fixture.student_logits,
                                 .hidden = fixture.student_hidden};
    static const float explores[] = {0.0f, 1.0f, 0.3f};
    for (int e = 0; e < 3; e++) {
        /* θ between the two weights of row 0, so that "alpha >= θ" decides something */
        config.filter_threshold =
            fminf(alpha[0], alpha[1]) + 0.5f * fabsf(alpha[0] - alpha[1]) * 0.5f;
        config.filter_explore = explores[e];
        trainer_method_t *method = new_dd_method(&config, 22);
        ck_assert(trainer_method_chooses(method));
        memcpy(trainer_method_params(method), trainer_dd_params(dd),
               sizeof(float) * trainer_dd_param_count(dd));
        uint8_t ask_storage[TEACHERS][ROWS], again_storage[TEACHERS][ROWS];
        uint8_t *ask[TEACHERS] = {ask_storage[0], ask_storage[1]};
        uint8_t *again[TEACHERS] = {again_storage[0], again_storage[1]};
        trainer_method_choose(method, &student, ROWS, 99, ask);
        trainer_method_choose(method, &student, ROWS, 99, again);
        ck_assert(memcmp(ask_storage, again_storage, sizeof ask_storage) == 0);
        int asked = 0;
        for (int row = 0; row < ROWS; row++) {
            const float *weights = alpha + row * TEACHERS;
            int top = weights[1] > weights[0];
            for (int t = 0; t < TEACHERS; t++) {
                asked += ask[t][row];
                if (t == top || weights[t] >= config.filter_threshold || e == 1)
                    ck_assert_msg(ask[t][row] == 1, "row %d teacher %d not asked (explore %g)", row,
                                  t, (double)explores[e]);
                else if (e == 0)
                    ck_assert_msg(ask[t][row] == 0, "row %d teacher %d asked (alpha %g < %g)", row,
                                  t, (double)weights[t], (double)config.filter_threshold);
            }
        }
        ck_assert(e == 1 ? asked == ROWS * TEACHERS : asked < ROWS * TEACHERS);
        trainer_method_free(&method);
    }
    trainer_dd_free(&dd);
}
END_TEST

/* End-to-end: no router term, whatever λ_α says; the router still learns (from the answer). */
START_TEST(test_end_to_end_has_no_router_term) {
    fixture_t fixture;
    fixture_init(&fixture, 108);
    trainer_dd_config_t config = fixture_config(TRAINER_DD_ROUTER_END_TO_END, 0.4f);
    trainer_dd_t *dd = new_dd(&config, 21);
    config.router_weight = 5.0f;
    trainer_dd_t *heavy = new_dd(&config, 21);
    randomize_params(dd, 22);
    randomize_params(heavy, 22);
    step_result_t step, heavy_step;
    trainer_dd_zero_grads(dd);
    trainer_dd_zero_grads(heavy);
    run_step(dd, &fixture, &step);
    run_step(heavy, &fixture, &heavy_step);
    ck_assert(step.loss.router == 0.0);
    ck_assert(step.loss.total ==
              step.loss.ce + step.loss.kd + step.loss.answer + step.loss.router + step.loss.align);
    assert_same_step(&step, &heavy_step);
    size_t count = trainer_dd_param_count(dd);
    ck_assert(memcmp(trainer_dd_grads(dd), trainer_dd_grads(heavy), sizeof(float) * count) == 0);
    /* W_r's gradient (the first tensor) comes from the answer term through alpha. */
    double router_grad = 0.0;
    for (int i = 0; i < EMBED * WIDTH; i++) router_grad += fabs(trainer_dd_grads(dd)[i]);
    ck_assert(router_grad > 0.0);
    trainer_dd_free(&dd);
    trainer_dd_free(&heavy);
}
END_TEST

/*
 * The stop-gradients, one by one: d_logits does not see the learnability target (λ_α);
 * d_hidden and the router do not see the KD term (w) in a target mode; with a target, W_r
 * learns nothing from the answer; the module does not see the alignment term (λ_al).
 */
START_TEST(test_stop_gradients_hold) {
    fixture_t fixture;
    fixture_init(&fixture, 109);
    layout_t layout;
    size_t count;
    step_result_t a, b;

    /* λ_α changes neither d_logits nor the loss's KD and CE. */
    trainer_dd_config_t config = fixture_config(TRAINER_DD_ROUTER_LEARNABILITY, 0.0f);
    trainer_dd_t *first = new_dd(&config, 23);
    config.router_weight = 0.0f;
    trainer_dd_t *second = new_dd(&config, 23);
    run_step(first, &fixture, &a);
    run_step(second, &fixture, &b);
    ck_assert(memcmp(a.d_logits, b.d_logits, sizeof a.d_logits) == 0);
    ck_assert(a.loss.kd == b.loss.kd && a.loss.ce == b.loss.ce);
    trainer_dd_free(&first);
    trainer_dd_free(&second);

    /* w changes neither d_hidden nor any module gradient when only KD and the router speak;
     * and without λ_α the router gets nothing at all. */
    config = fixture_config(TRAINER_DD_ROUTER_RELIABILITY, 0.0f);
    config.answer_weight = 0.0f;
    config.kd_weight = 0.2f;
    first = new_dd(&config, 24);
    config.kd_weight = 0.9f;
    second = new_dd(&config, 24);
    count = trainer_dd_param_count(first);
    trainer_dd_zero_grads(first);
    trainer_dd_zero_grads(second);
    run_step(first, &fixture, &a);
    run_step(second, &fixture, &b);
    ck_assert(memcmp(a.d_hidden, b.d_hidden, sizeof a.d_hidden) == 0);
    ck_assert(memcmp(trainer_dd_grads(first), trainer_dd_grads(second), sizeof(float) * count) ==
              0);
    trainer_dd_free(&second);
    config.router_weight = 0.0f;
    second = new_dd(&config, 24);
    trainer_dd_zero_grads(second);
    run_step(second, &fixture, &b);
    assert_all_zero(b.d_hidden, ROWS * WIDTH, "d_hidden with only KD");
    assert_all_zero(trainer_dd_grads(second), count, "module gradients with only KD");
    trainer_dd_free(&first);
    trainer_dd_free(&second);

    /* With a target and no router term, the answer trains everything but the router. */
    config = fixture_config(TRAINER_DD_ROUTER_LEARNABILITY, 0.0f);
    config.router_weight = 0.0f;
    layout = layout_for(&config);
    first = new_dd(&config, 25);
    randomize_params(first, 26);
    trainer_dd_zero_grads(first);
    run_step(first, &fixture, &a);
    const float *grads = trainer_dd_grads(first);
    assert_all_zero(grads + layout.router_weight, EMBED * WIDTH, "W_r gradient");
    assert_all_zero(grads + layout.router_gamma, WIDTH, "LN_r gamma gradient");
    assert_all_zero(grads + layout.router_beta, WIDTH, "LN_r beta gradient");
    double question_grad = 0.0;
    for (int i = 0; i < HIDDEN * (WIDTH + EMBED); i++)
        question_grad += fabs(grads[layout.question_in_weight + i]);
    ck_assert(question_grad > 0.0);
    trainer_dd_free(&first);

    /* λ_al moves d_hidden but no module gradient. */
    config = fixture_config(TRAINER_DD_ROUTER_LEARNABILITY, 0.0f);
    first = new_dd(&config, 27);
    config.align_weight = 0.8f;
    second = new_dd(&config, 27);
    count = trainer_dd_param_count(first);
    trainer_dd_zero_grads(first);
    trainer_dd_zero_grads(second);
    run_step(first, &fixture, &a);
    run_step(second, &fixture, &b);
    ck_assert(memcmp(trainer_dd_grads(first), trainer_dd_grads(second), sizeof(float) * count) ==
              0);
    ck_assert(memcmp(a.d_hidden, b.d_hidden, sizeof a.d_hidden) != 0);
    ck_assert(b.loss.align > 0.0);
    trainer_dd_free(&first);
    trainer_dd_free(&second);
}
END_TEST

/* d_logits and d_hidden are overwritten; the head's and the module's gradients add up. */
START_TEST(test_overwrites_outputs_and_adds_gradients) {
    fixture_t fixture;
    fixture_init(&fixture, 110);
    trainer_dd_config_t config = looped_config(_i, &fixture);
    trainer_dd_t *dd = new_dd(&config, 28);
    randomize_params(dd, 29);
    size_t count = trainer_dd_param_count(dd);
    step_result_t clean, dirty;
    trainer_dd_zero_grads(dd);
    run_step(dd, &fixture, &clean);
    float *once = copy_grads(dd);

    for (int i = 0; i < ROWS * CLASSES; i++) dirty.d_logits[i] = 123.0f;
    for (int i = 0; i < ROWS * WIDTH; i++) dirty.d_hidden[i] = NAN;
    memcpy(dirty.d_head_weight, clean.d_head_weight, sizeof dirty.d_head_weight);
    memcpy(dirty.d_head_bias, clean.d_head_bias, sizeof dirty.d_head_bias);
    trainer_dd_loss(dd, &fixture.batch, fixture.student_logits, fixture.student_hidden,
                    fixture.head_weight, fixture.head_bias, dirty.d_logits, dirty.d_hidden,
                    dirty.d_head_weight, dirty.d_head_bias, &dirty.loss);
    ck_assert(memcmp(clean.d_logits, dirty.d_logits, sizeof clean.d_logits) == 0);
    ck_assert(memcmp(clean.d_hidden, dirty.d_hidden, sizeof clean.d_hidden) == 0);
    ck_assert(clean.loss.total == dirty.loss.total);
    for (int i = 0; i < CLASSES * WIDTH; i++)
        ck_assert_float_eq_tol(dirty.d_head_weight[i], 2.0f * clean.d_head_weight[i],
                               1e-6f * (1.0f + fabsf(clean.d_head_weight[i])));
    for (int i = 0; i < CLASSES; i++)
        ck_assert_float_eq_tol(dirty.d_head_bias[i], 2.0f * clean.d_head_bias[i],
                               1e-6f * (1.0f + fabsf(clean.d_head_bias[i])));
    const float *twice = trainer_dd_grads(dd);
    int nonzero = 0;
    for (size_t i = 0; i < count; i++) {
        ck_assert_msg(fabsf(twice[i] - 2.0f * once[i]) <= 1e-5f * (1.0f + fabsf(twice[i])),
                      "module gradient [%zu]: %g after one call, %g after two", i, (double)once[i],
                      (double)twice[i]);
        nonzero += once[i] != 0.0f;
    }
    ck_assert(nonzero > (int)count / (config.answer_weight > 0.0f ? 2 : 4));
    free(once);
    trainer_dd_free(&dd);
}
END_TEST

/* No teacher anywhere: only CE, nothing else moves.  An empty batch: nothing at all. */
START_TEST(test_batch_without_teachers) {
    fixture_t fixture;
    fixture_init(&fixture, 111);
    for (int t = 0; t < TEACHERS; t++) memset(fixture.present[t], 0, ROWS);
    fixture_set_garbage(&fixture, NAN);
    trainer_dd_config_t config = fixture_config((trainer_dd_router_t)_i, 0.4f);
    trainer_dd_t *dd = new_dd(&config, 30);
    step_result_t step;
    trainer_dd_zero_grads(dd);
    run_step(dd, &fixture, &step);
    ck_assert(step.loss.ce > 0.0 && step.loss.total == step.loss.ce);
    ck_assert(step.loss.kd == 0.0 && step.loss.answer == 0.0 && step.loss.router == 0.0);
    ck_assert(step.loss.answer_accuracy == 0.0);
    assert_all_finite(step.d_logits, ROWS * CLASSES, "d_logits");
    assert_all_zero(step.d_hidden, ROWS * WIDTH, "d_hidden");
    assert_all_zero(step.d_head_weight, CLASSES * WIDTH, "d_head_weight");
    assert_all_zero(trainer_dd_grads(dd), trainer_dd_param_count(dd), "module gradients");

    fixture.batch.rows = 0;
    for (int i = 0; i < ROWS * WIDTH; i++) step.d_hidden[i] = 5.0f;
    run_step(dd, &fixture, &step);
    ck_assert(step.loss.total == 0.0 && step.loss.labelled == 0);
    ck_assert(step.d_hidden[0] == 5.0f); /* rows = 0: nothing is written */
    trainer_dd_free(&dd);
}
END_TEST

/* Without labels: no CE, no answer, no reliability term; learnability still routes. */
START_TEST(test_unlabelled_batch) {
    fixture_t fixture;
    fixture_init(&fixture, 112);
    for (int row = 0; row < ROWS; row++) fixture.labels[row] = -1;
    trainer_dd_config_t config = fixture_config((trainer_dd_router_t)_i, 0.4f);
    trainer_dd_t *dd = new_dd(&config, 31);
    randomize_params(dd, 32);
    step_result_t step;
    run_step(dd, &fixture, &step);
    ck_assert(step.loss.ce == 0.0 && step.loss.answer == 0.0 && step.loss.labelled == 0);
    ck_assert(step.loss.kd > 0.0 && step.loss.align > 0.0);
    if (config.router == TRAINER_DD_ROUTER_LEARNABILITY)
        ck_assert(step.loss.router > 0.0);
    else
        ck_assert(step.loss.router == 0.0);
    assert_all_zero(step.d_head_weight, CLASSES * WIDTH, "d_head_weight");
    trainer_dd_free(&dd);
}
END_TEST

/* ---- configuration and parameters ---------------------------------------------------------- */

START_TEST(test_router_names_round_trip) {
    for (int router = 0; router < 3; router++) {
        const char *name = trainer_dd_router_name((trainer_dd_router_t)router);
        ck_assert_ptr_nonnull(name);
        trainer_dd_router_t parsed;
        ck_assert(trainer_dd_router_parse(name, &parsed) == CM_OK);
        ck_assert_int_eq((int)parsed, router);
    }
    ck_assert_str_eq(trainer_dd_router_name(TRAINER_DD_ROUTER_END_TO_END), "end-to-end");
    ck_assert_ptr_null(trainer_dd_router_name((trainer_dd_router_t)3));
    trainer_dd_router_t parsed;
    ck_assert(trainer_dd_router_parse("oracle", &parsed) == CM_ERR_INVALID_ARG);
    ck_assert_ptr_nonnull(strstr(cm_last_error(), "learnability"));

    trainer_dd_config_t defaults = trainer_dd_defaults();
    ck_assert(defaults.temperature == 2.0f && defaults.kd_weight == 0.9f);
    ck_assert(defaults.answer_weight == 1.0f && defaults.router_weight == 1.0f);
    ck_assert(defaults.router_tau == 1.0f && defaults.align_weight == 0.0f);
    ck_assert_int_eq(defaults.embed_dim, 32);
    ck_assert_int_eq(defaults.key_dim, 64);
    ck_assert_int_eq(defaults.heads, 4);
    ck_assert_int_eq(defaults.hidden, 128);
    ck_assert_int_eq(defaults.router, TRAINER_DD_ROUTER_LEARNABILITY);
    ck_assert_int_eq(defaults.teacher_count, 0);
}
END_TEST

/* One broken field per case, and the word the error sentence must contain. */
typedef struct {
    const char *field;
    const char *mentions;
} bad_config_t;

static const bad_config_t bad_configs[] = {
    {"teacher_count", "teachers"},
    {"classes", "classes"},
    {"student_hidden", "hidden"},
    {"teacher_dim", "teacher 1"},
    {"embed_dim", "d_e"},
    {"key_dim", "d_k"},
    {"heads", "heads"},
    {"hidden", "augmenter"},
    {"temperature", "temperature"},
    {"kd_weight", "kd-weight"},
    {"answer_weight", "answer"},
    {"router_weight", "router"},
    {"router_tau", "tau"},
    {"align_weight", "align"},
    {"router", "router"},
    {"max_batch", "batch"},
    {"probe_match_weight", "probe match"},
    {"probe_answer_weight", "probe answer"},
    {"no head", "lends its head"},
    {"head without weights", "no weights"},
    {"negative head", "head reads"},
};

START_TEST(test_config_validation) {
    const bad_config_t *bad = &bad_configs[_i];
    trainer_dd_config_t config = fixture_config(TRAINER_DD_ROUTER_RELIABILITY, 0.0f);
    if (strcmp(bad->field, "teacher_count") == 0) config.teacher_count = TRAINER_MAX_TEACHERS + 1;
    if (strcmp(bad->field, "classes") == 0) config.classes = 0;
    if (strcmp(bad->field, "student_hidden") == 0) config.student_hidden = 0;
    if (strcmp(bad->field, "teacher_dim") == 0) config.teacher_dim[1] = 0;
    if (strcmp(bad->field, "embed_dim") == 0) config.embed_dim = 0;
    if (strcmp(bad->field, "key_dim") == 0) config.key_dim = -4;
    if (strcmp(bad->field, "heads") == 0) config.heads = 3; /* does not divide 4 */
    if (strcmp(bad->field, "hidden") == 0) config.hidden = 0;
    if (strcmp(bad->field, "temperature") == 0) config.temperature = 0.0f;
    if (strcmp(bad->field, "kd_weight") == 0) config.kd_weight = 1.5f;
    if (strcmp(bad->field, "answer_weight") == 0) config.answer_weight = -1.0f;
    if (strcmp(bad->field, "router_weight") == 0) config.router_weight = NAN;
    if (strcmp(bad->field, "router_tau") == 0) config.router_tau = 0.0f;
    if (strcmp(bad->field, "align_weight") == 0) config.align_weight = INFINITY;
    if (strcmp(bad->field, "router") == 0) config.router = (trainer_dd_router_t)7;
    if (strcmp(bad->field, "max_batch") == 0) config.max_batch = 0;
    if (strcmp(bad->field, "probe_match_weight") == 0) config.probe_match_weight = -0.5f;
    if (strcmp(bad->field, "probe_answer_weight") == 0) config.probe_answer_weight = NAN;
    static fixture_t fixture; /* the heads make_interactive points at */
    fixture_init(&fixture, 1);
    if (strcmp(bad->field, "no head") == 0) make_interactive(&config, &fixture, 0u);
    if (strcmp(bad->field, "head without weights") == 0) {
        make_interactive(&config, &fixture, 3u);
        config.head_bias[1] = NULL;
    }
    if (strcmp(bad->field, "negative head") == 0) {
        make_interactive(&config, &fixture, 1u);
        config.head_inputs[1] = -2;
    }
    trainer_dd_t *dd = (trainer_dd_t *)&config; /* must come back NULL */
    cm_status_t status = trainer_dd_new(&config, 1, &dd);
    ck_assert_msg(status == CM_ERR_INVALID_ARG, "%s: status %d", bad->field, (int)status);
    ck_assert_ptr_null(dd);
    ck_assert_msg(strstr(cm_last_error(), bad->mentions), "%s: '%s' does not mention '%s'",
                  bad->field, cm_last_error(), bad->mentions);
}
END_TEST

/* Sizes, alignment, seeded initialization and zeroed moments. */
START_TEST(test_parameter_block) {
    trainer_dd_config_t config = fixture_config(TRAINER_DD_ROUTER_LEARNABILITY, 0.0f);
    trainer_dd_t *dd = new_dd(&config, 33);
    layout_t layout = layout_for(&config);
    size_t count = trainer_dd_param_count(dd);
    /* The counts written out from trainer_dd.h's shapes. */
    size_t decayed = EMBED * WIDTH + HIDDEN * (WIDTH + EMBED) + KEY * HIDDEN;
    size_t rest = TEACHERS * EMBED + 4 * WIDTH + HIDDEN + KEY;
    for (int t = 0; t < TEACHERS; t++) {
        decayed += 2 * KEY * fixture_dims[t] + KEY * KEY + HIDDEN * KEY + WIDTH * HIDDEN;
        rest += 2 * fixture_dims[t] + fixture_tokens[t] * KEY + KEY + HIDDEN + WIDTH;
    }
    ck_assert_uint_eq(count, decayed + rest);
    ck_assert_uint_eq(layout.decayed, decayed);
    float *sections[] = {trainer_dd_params(dd), trainer_dd_grads(dd), trainer_dd_moment1(dd),
                         trainer_dd_moment2(dd)};
    for (int s = 0; s < 4; s++) {
        ck_assert_uint_eq((uintptr_t)sections[s] % 64, 0);
        if (s > 0) ck_assert(sections[s] >= sections[s - 1] + count);
    }
    for (int s = 1; s < 4; s++) assert_all_zero(sections[s], count, "fresh section");

    const float *params = sections[0];
    for (int i = 0; i < WIDTH; i++) {
        ck_assert(params[layout.router_gamma + i] == 1.0f);
        ck_assert(params[layout.router_beta + i] == 0.0f);
        ck_assert(params[layout.question_gamma + i] == 1.0f);
    }
    for (int t = 0; t < TEACHERS; t++) {
        for (int i = 0; i < fixture_dims[t]; i++)
            ck_assert(params[layout.teacher[t].norm_gamma + i] == 1.0f);
        assert_all_zero(params + layout.teacher[t].augment_out_bias, WIDTH, "b_a2");
    }
    /* E ~ N(0, 0.02); W_q1 ~ N(0, 1/sqrt(d_s + d_e)): mean squares near 4e-4 and 0.1. */
    double embedding_squares = 0.0, question_squares = 0.0;
    for (int i = 0; i < TEACHERS * EMBED; i++)
        embedding_squares += params[layout.embeddings + i] * params[layout.embeddings + i];
    for (int i = 0; i < HIDDEN * (WIDTH + EMBED); i++)
        question_squares +=
            params[layout.question_in_weight + i] * params[layout.question_in_weight + i];
    ck_assert(embedding_squares > 0.0 && embedding_squares / (TEACHERS * EMBED) < 0.01);
    question_squares /= HIDDEN * (WIDTH + EMBED);
    ck_assert_msg(question_squares > 0.03 && question_squares < 0.3, "W_q1 mean square %g",
                  question_squares);

    trainer_dd_t *twin = new_dd(&config, 33), *other = new_dd(&config, 34);
    ck_assert(memcmp(trainer_dd_params(twin), params, sizeof(float) * count) == 0);
    ck_assert(memcmp(trainer_dd_params(other), params, sizeof(float) * count) != 0);
    trainer_dd_free(&twin);
    trainer_dd_free(&other);
    trainer_dd_free(&dd);
    trainer_dd_free(&dd); /* NULL-safe */
}
END_TEST

/* With zero gradients AdamW only decays: the projection matrices shrink, the rest stays. */
START_TEST(test_adamw_decays_matrices_only) {
    trainer_dd_config_t config = fixture_config(TRAINER_DD_ROUTER_LEARNABILITY, 0.0f);
    trainer_dd_t *dd = new_dd(&config, 35);
    layout_t layout = layout_for(&config);
    size_t count = trainer_dd_param_count(dd);
    float *params = trainer_dd_params(dd);
    for (size_t i = 0; i < count; i++) params[i] = 0.5f;
    cm_adamw_config_t adamw = cm_adamw_defaults();
    adamw.learning_rate = 0.1f;
    adamw.weight_decay = 0.5f;
    trainer_dd_zero_grads(dd);
    trainer_dd_adamw_step(dd, &adamw, 1);
    for (size_t i = 0; i < count; i++)
        ck_assert_msg(params[i] == (i < layout.decayed ? 0.5f * (1.0f - 0.05f) : 0.5f),
                      "param [%zu] is %g", i, (double)params[i]);
    trainer_dd_free(&dd);
}
END_TEST

/* ---- learning ------------------------------------------------------------------------------- */

/*
 * Teacher 0 is right (confident on the label) where the feature x > 0 and wrong elsewhere,
 * teacher 1 the other way round.  The student's hidden vector is x beside random features,
 * fixed; its logits are as confident on the label as the right teacher (a student that has
 * learned, which is what the learnability target measures against).  The targets then put
 * about 0.98 (reliability) and 0.92 (learnability, KL 0 against 1.23 at T = 2, tau = 0.5) on
 * the right teacher; with a hesitant student and tau = 1 the learnability target itself stays
 * near 0.65, and the router can only follow it.  Only the module trains.  Afterwards, on
 * fresh examples, alpha must put most of its weight on the right teacher.  The same as a
 * regression problem: both targets are then softmax(-SE/τ), about 0.99 on the right teacher.
 */
START_TEST(test_router_learns_which_teacher_is_right) {
    enum { EXAMPLES = 128, LEARN_WIDTH = 8, LEARN_CLASSES = 4, STEPS = 300 };
    trainer_dd_router_t router =
        _i % 2 == 0 ? TRAINER_DD_ROUTER_RELIABILITY : TRAINER_DD_ROUTER_LEARNABILITY;
    /* Loops 2 and 3: regression, 4 targets; the right teacher predicts them, the wrong one
     * misses each by 1.5, the student predicts them (squared errors 0 and 2.25). */
    int regression = _i >= 2;
    trainer_dd_config_t config = trainer_dd_defaults();
    config.task = regression ? TRAINER_TASK_REGRESSION : TRAINER_TASK_CLASSIFICATION;
    config.teacher_count = 2;
    config.classes = LEARN_CLASSES;
    config.student_hidden = LEARN_WIDTH;
    config.teacher_tokens[0] = 1, config.teacher_dim[0] = 4;
    config.teacher_tokens[1] = 2, config.teacher_dim[1] = 3;
    config.embed_dim = 8;
    config.key_dim = 8;
    config.heads = 2;
    config.hidden = 16;
    config.router = router;
    config.router_tau = 0.5f; /* a decisive target: see the comment above */
    config.max_batch = EXAMPLES;
    trainer_dd_t *dd = new_dd(&config, 41);

    static int32_t labels[EXAMPLES];
    static uint8_t present[EXAMPLES];
    static float targets[EXAMPLES * LEARN_CLASSES];
    static float teacher_logits[2][EXAMPLES * LEARN_CLASSES], features[2][EXAMPLES * 6];
    static float student_logits[EXAMPLES * LEARN_CLASSES], hidden[EXAMPLES * LEARN_WIDTH];
    static float head_weight[LEARN_CLASSES * LEARN_WIDTH], head_bias[LEARN_CLASSES];
    static float d_logits[EXAMPLES * LEARN_CLASSES], d_hidden[EXAMPLES * LEARN_WIDTH];
    static float d_head_weight[LEARN_CLASSES * LEARN_WIDTH], d_head_bias[LEARN_CLASSES];
    static float alpha[EXAMPLES * 2];
    cm_rng_t rng;
    cm_rng_seed(&rng, 42);
    gradcheck_fill(&rng, head_weight, LEARN_CLASSES * LEARN_WIDTH, -0.5f, 0.5f);
    memset(present, 1, sizeof present);
    trainer_dd_batch_t batch = {.rows = EXAMPLES, .labels = labels};
    if (regression)
        batch = (trainer_dd_batch_t){
            .rows = EXAMPLES, .targets = targets, .labelled = present /* all labelled */};
    for (int t = 0; t < 2; t++) {
        batch.teacher_logits[t] = teacher_logits[t];
        batch.teacher_feature[t] = features[t];
        batch.teacher_present[t] = present;
    }
    const uint8_t *const all_present[2] = {present, present};
    cm_adamw_config_t adamw = cm_adamw_defaults();
    adamw.learning_rate = 1e-2f;
    adamw.weight_decay = 0.0f;
    trainer_dd_loss_t loss;

    /* A fresh synthetic batch every step; the last one (step STEPS + 1) is only evaluated. */
    double right_weight = 0.0;
    for (long step = 1; step <= STEPS + 1; step++) {
        for (int row = 0; row < EXAMPLES; row++) {
            int32_t label = (int32_t)cm_rng_below(&rng, LEARN_CLASSES);
            float x = 2.0f * cm_rng_uniform(&rng) - 1.0f;
            labels[row] = label;
            float *hidden_row = hidden + row * LEARN_WIDTH;
            hidden_row[0] = 2.0f * x;
            for (int u = 1; u < LEARN_WIDTH; u++) hidden_row[u] = cm_rng_normal(&rng);
            for (int c = 0; c < LEARN_CLASSES; c++)
                targets[row * LEARN_CLASSES + c] = c == label ? 1.0f : -0.5f;
            for (int t = 0; t < 2; t++) {
                int right = (t == 0) == (x > 0.0f);
                int32_t peak = right ? label : (label + 1 + t) % LEARN_CLASSES;
                for (int c = 0; c < LEARN_CLASSES; c++)
                    teacher_logits[t][row * LEARN_CLASSES + c] =
                        regression  ? targets[row * LEARN_CLASSES + c] + (right ? 0.0f : 1.5f)
                        : c == peak ? 4.0f
                                    : 0.0f;
            }
            for (int c = 0; c < LEARN_CLASSES; c++)
                student_logits[row * LEARN_CLASSES + c] = regression
                                                              ? targets[row * LEARN_CLASSES + c]
                                                          : c == label ? 4.0f
                                                                       : 0.0f;
            gradcheck_fill(&rng, features[0] + row * 4, 4, -1.0f, 1.0f);
            gradcheck_fill(&rng, features[1] + row * 6, 6, -1.0f, 1.0f);
        }
        if (step == STEPS + 1) {
            trainer_dd_route(dd, hidden, EXAMPLES, all_present, alpha);
            for (int row = 0; row < EXAMPLES; row++)
                right_weight += alpha[row * 2 + (hidden[row * LEARN_WIDTH] > 0.0f ? 0 : 1)];
            right_weight /= EXAMPLES;
            break;
        }
        trainer_dd_zero_grads(dd);
        memset(d_head_weight, 0, sizeof d_head_weight);
        memset(d_head_bias, 0, sizeof d_head_bias);
        trainer_dd_loss(dd, &batch, student_logits, hidden, head_weight, head_bias, d_logits,
                        d_hidden, d_head_weight, d_head_bias, &loss);
        ck_assert(isfinite(loss.total));
        trainer_dd_adamw_step(dd, &adamw, step);
    }
    ck_assert_msg(right_weight > 0.7, "%s router (task %d): mean alpha of the right teacher %.3f",
                  trainer_dd_router_name(router), (int)config.task, right_weight);
    trainer_dd_free(&dd);
}
END_TEST

Suite *check_trainer_dd_suite(void);
Suite *check_trainer_dd_suite(void) {
    Suite *suite = suite_create("trainer_dd");
    TCase *gradients = tcase_create("gradients");
    tcase_set_timeout(gradients, 30);
    tcase_add_loop_test(gradients, test_loss_matches_reference, 0, LOOPED_CONFIGS);
    tcase_add_loop_test(gradients, test_gradients_match_reference, 0, LOOPED_CONFIGS);
    tcase_add_loop_test(gradients, test_gradients_match_own_loss, 0, 3);
    tcase_add_loop_test(gradients, test_regression_loss_matches_reference, 0, LOOPED_CONFIGS);
    tcase_add_loop_test(gradients, test_regression_gradients_match_reference, 0, LOOPED_CONFIGS);
    suite_add_tcase(suite, gradients);

    TCase *semantics = tcase_create("semantics");
    tcase_add_test(semantics, test_alpha_is_the_routers_distribution);
    tcase_add_loop_test(semantics, test_one_teacher_has_alpha_one, 0, 3);
    tcase_add_loop_test(semantics, test_absent_pairs_change_nothing, 0, 6);
    tcase_add_loop_test(semantics, test_only_kd_is_trainer_method_kd, 0, 2);
    tcase_add_test(semantics, test_regression_only_kd_is_trainer_method_kd);
    tcase_add_loop_test(semantics, test_interface_is_the_module, 0, 2);
    tcase_add_test(semantics, test_interface_chooses_pairs);
    tcase_add_test(semantics, test_end_to_end_has_no_router_term);
    tcase_add_test(semantics, test_stop_gradients_hold);
    tcase_add_loop_test(semantics, test_overwrites_outputs_and_adds_gradients, 0, LOOPED_CONFIGS);
    tcase_add_loop_test(semantics, test_batch_without_teachers, 0, 3);
    tcase_add_loop_test(semantics, test_unlabelled_batch, 0, 3);
    suite_add_tcase(suite, semantics);

    TCase *configuration = tcase_create("configuration");
    tcase_add_test(configuration, test_router_names_round_trip);
    tcase_add_loop_test(configuration, test_config_validation, 0,
                        (int)(sizeof bad_configs / sizeof bad_configs[0]));
    tcase_add_test(configuration, test_parameter_block);
    tcase_add_test(configuration, test_adamw_decays_matrices_only);
    suite_add_tcase(suite, configuration);

    TCase *learning = tcase_create("learning");
    tcase_set_timeout(learning, 30);
    tcase_add_loop_test(learning, test_router_learns_which_teacher_is_right, 0, 4);
    suite_add_tcase(suite, learning);
    return suite;
}
