/*
 * trainer_dd: DiverseDistill's Distillation Module as one loss-and-gradient step.  See
 * trainer_dd.h for the formulation; this file only adds how it is computed.
 *
 * A step runs in this order: index the present (row, teacher) pairs; CE; route (alpha,
 * shared with trainer_dd_route so both give the same numbers); KD with alpha held
 * constant, which also leaves every pair's KL behind for the learnability target; the
 * router term, whose gradient lands on the router scores; the module forward (question,
 * keys/values, attention, answer, augmenter, k); the answer term through the student's
 * head; alignment; then the module backward, the question's shared backward and the
 * router backward, each ending in d_hidden.  The router learns only from the λ_α term,
 * except in end-to-end mode where alpha in k is not stopped and the answer term reaches
 * it.  Each term is a mean over the rows where it exists: CE and the answer over the
 * labelled rows (the answer only those with a teacher), KD, alignment and the
 * learnability router term over the rows with at least one teacher, the reliability
 * router term over the labelled ones among them.
 *
 * Regression swaps each CE and KL for a row's squared error (trainer_dd.h) in the same
 * places; teacher_soft is then not filled, and pair_kl holds SE(s, z_i) for learnability.
 *
 * Teacher activations are COMPACT: teacher i's buffers hold only its present rows, in
 * batch order (present_rows maps back), so an absent row's garbage (often NaN) is never
 * read, not even as NaN·0 inside a BLAS call, and filtered-out pairs cost nothing.
 *
 * LN_i's affine is folded into the key/value weights: LN_i(F)·W^T = F̂·(W∘gamma)^T + W·beta
 * with F̂ the plain normalization; teacher features get no gradient, so the backward ends in
 * dW' [2 d_k][d_i] and [2 d_k][d_i] arithmetic for W, gamma and beta.  Keys and values are
 * never formed: with one query per example and head, q_h·K_{t,h} = (W'_{K,h}^T q_h)·F̂_t +
 * q_h·P_{t,h} + q_h·(W_K beta)_h, whose last term is the same for every token and drops out
 * of the softmax (its gradient is 0), and Σ_t a_t V_{t,h} = W'_{V,h}·(Σ_t a_t F̂_t) +
 * (W_V beta)_h.  So each head maps its query into the token space and pools the tokens
 * there: [heads][d_i] per example instead of [L_i][2 d_k], a factor ~L_i·d_k / (d_k +
 * heads·L_i) less work (12x for a 7x7 CNN feature map), the same function and gradients.
 *
 * Parameters live in one 64-byte aligned block of four sections (params, grads, AdamW
 * moments), each rounded up to whole cache lines.  Inside a section the matrices that
 * take weight decay come first (W_r, W_q1, W_q2, then per teacher W_KV, W_O, W_a1,
 * W_a2), then everything else (E, LN_r, LN_q, b_q1, b_q2, then per teacher LN_i, P_i,
 * b_O, b_a1, b_a2; each LN as gamma then beta), so an AdamW step is two range updates.
 * E and P_i are tables, not projections: decaying them would pull every teacher's
 * embedding, and so alpha, towards uniform.  All scratch is one arena, carved at creation
 * for max_batch rows; trainer_dd_route and trainer_dd_loss share it, so one module serves
 * one thread.  With λ_ans = λ_al = 0 nothing reads k, so the module's answer path does not
 * run at all (and answer_accuracy stays 0); the interactive probes need only the question.
 *
 * Interactive: a teacher that lends its head adds W_p^i (decayed, after its W_a2) and b_p^i
 * (after its b_a2).  Its probe terms are computed right after the module forward and leave
 * d_probe [count][d_h] behind; the module backward adds W_p^i^T·d_probe into the question's
 * gradient before the question's own backward, so the probes reuse the answer's path into
 * the student.
 */
#include "trainer_dd.h"

#include "cm_alloc.h"
#include "cm_blas.h"
#include "cm_layers.h"
#include "cm_loss.h"
#include "cm_rng.h"

#include <assert.h>
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

enum { FLOATS_PER_CACHE_LINE = 64 / sizeof(float) };

/* One teacher's tensors inside a section (params or grads). */
typedef struct {
    float *key_value_weight;   /* [2 d_k][d_i]: W_K^i in rows 0..d_k-1, W_V^i in the rest */
    float *output_weight;      /* W_O^i [d_k][d_k] */
    float *augment_in_weight;  /* W_a1^i [hid][d_k] */
    float *augment_out_weight; /* W_a2^i [d_s][hid] */
    float *norm_gamma;         /* LN_i gamma [d_i] */
    float *norm_beta;          /* LN_i beta [d_i] */
    float *positions;          /* P_i [L_i][d_k] */
    float *output_bias;        /* b_O^i [d_k] */
    float *augment_in_bias;    /* b_a1^i [hid] */
    float *augment_out_bias;   /* b_a2^i [d_s] */
    float *probe_weight;       /* W_p^i [d_h][d_k] (interactive, teacher with a head) */
    float *probe_bias;         /* b_p^i [d_h] */
} teacher_tensors_t;

/* Every tensor of the module inside a section. */
typedef struct {
    float *router_weight;       /* W_r [d_e][d_s] */
    float *question_in_weight;  /* W_q1 [hid][d_s + d_e]: columns 0..d_s-1 read LN_q(h), the
                                   last d_e read e_i */
    float *question_out_weight; /* W_q2 [d_k][hid] */
    float *embeddings;          /* E [n][d_e] */
    float *router_gamma;        /* LN_r [d_s] */
    float *router_beta;         /* [d_s] */
    float *question_gamma;      /* LN_q [d_s] */
    float *question_beta;       /* [d_s] */
    float *question_in_bias;    /* b_q1 [hid] */
    float *question_out_bias;   /* b_q2 [d_k] */
    teacher_tensors_t teacher[TRAINER_MAX_TEACHERS];
} tensors_t;

/* How a tensor starts: zero (biases, beta), one (gamma), N(0, 1/sqrt(fan_in)) (matrices),
 * N(0, 0.02) (E and P_i: nearly uniform alpha and position-blind keys at the start). */
typedef enum { INIT_ZERO, INIT_ONE, INIT_FAN_IN, INIT_SMALL } init_kind_t;

enum { MAX_TENSORS = 10 + 12 * TRAINER_MAX_TEACHERS };

/* Where tensors go while a section is laid out; base NULL only counts. */
typedef struct {
    float *base;
    size_t used; /* floats placed so far */
    int count;
    struct {
        size_t offset, size;
        init_kind_t init;
        int fan_in;
    } tensor[MAX_TENSORS];
} layout_t;

/* One teacher's activations of the current step, for its present rows only (compact). */
typedef struct {
    int tokens, dim;     /* L_i, d_i */
    int present_count;   /* rows of this batch where the teacher is present */
    int *present_rows;   /* [max_batch] their batch rows, ascending */
    float *normalized;   /* [max_batch][L_i][d_i] F̂ = (F - mean) * rstd per token */
    float *query_tokens; /* [max_batch][heads][d_i] W'_{K,h}^T q_h / sqrt(head_dim) */
    float *pooled;       /* [max_batch][heads][d_i] Σ_t a_{t,h} F̂_t */
    float *question_pre; /* [max_batch][hid] W_q1·[LN_q(h); e_i] + b_q1 */
    float *question_act; /* [max_batch][hid] GELU of it */
    float *question;     /* [max_batch][d_k] q_i */
    float *attention;    /* [max_batch][heads][L_i] attention probabilities */
    float *context;      /* [max_batch][d_k] MHA(q_i, K_i, V_i) = W'_V·pooled + W_V beta */
    float *answer;       /* [max_batch][d_k] a_i */
    float *augment_pre;  /* [max_batch][hid] W_a1·a_i + b_a1 */
    float *augment_act;  /* [max_batch][hid] GELU of it */
    float *augmented;    /* [max_batch][d_s] ã_i */
    int head_inputs;     /* d_h^i when the teacher's probe runs, else 0 */
    float *probe;        /* [max_batch][d_h] p_i */
    float *probe_logits; /* [max_batch][C] g_i(p_i) */
    float *d_probe;      /* [max_batch][d_h] dLoss/dp_i, left by the probe terms */
} teacher_state_t;

struct trainer_dd {
    trainer_dd_config_t config;
    int widest_teacher;  /* max d_i */
    int longest_teacher; /* max L_i */

    /* Parameters: block [4][section_floats] = params, grads, moment1, moment2. */
    size_t param_count;    /* floats in use per section */
    size_t decayed_count;  /* the leading floats that take weight decay */
    size_t section_floats; /* param_count rounded up to a cache line */
    float *block;
    tensors_t param, grad;

    teacher_state_t teacher[TRAINER_MAX_TEACHERS];
    int *int_block;         /* backs row_teachers and every teacher's present_rows */
    int *row_teachers;      /* [max_batch] teachers present per row */
    int32_t *answer_labels; /* [max_batch] label on labelled rows with a teacher, else -1 */
    uint8_t *answer_rows;   /* [max_batch] 1 on labelled rows with a teacher (regression) */
    float *arena;           /* backs every float buffer below and the teacher states */

    /* Router. */
    float *router_norm;    /* [max_batch][d_s] LN_r(h) */
    float *router_mean;    /* [max_batch] */
    float *router_rstd;    /* [max_batch] */
    float *router_query;   /* [max_batch][d_e] W_r·LN_r(h) */
    float *alpha;          /* [max_batch][n], 0 where absent */
    float *log_alpha;      /* [max_batch][n], 0 where absent */
    float *d_alpha;        /* [max_batch][n] dLoss/dalpha through k (end-to-end only) */
    float *d_score;        /* [max_batch][n] dLoss/d(router score) */
    float *d_router_query; /* [max_batch][d_e] */
    float *d_router_norm;  /* [max_batch][d_s] */

    /* Logit terms. */
    float *label_probs;  /* [max_batch][C] softmax(s), saved by the CE forward */
    float *student_soft; /* [C] softmax(s/T) of the current row */
    float *teacher_soft; /* [max_batch][n][C] softmax(z_i/T), present pairs (kd_term) */
    float *pair_kl;      /* [max_batch][n] KL(softmax(z_i/T) ‖ softmax(s/T)), present pairs */

    /* Question augmenter, shared part. */
    float *question_norm;   /* [max_batch][d_s] LN_q(h) */
    float *question_mean;   /* [max_batch] */
    float *question_rstd;   /* [max_batch] */
    float *question_base;   /* [max_batch][hid] W_q1[:, :d_s]·LN_q(h), the teacher-free part */
    float *teacher_bias;    /* [hid] W_q1[:, d_s:]·e_i + b_q1, the teacher's part */
    float *d_question_base; /* [max_batch][hid] */
    float *d_question_norm; /* [max_batch][d_s] */
    float *column_sums;     /* [max(hid, 2 d_k)] column sums of a gradient */

    /* Keys/values: the folded LN_i affine and its gradient. */
    float *folded_weight;   /* [2 d_k][widest d_i] W_KV ∘ gamma */
    float *folded_bias;     /* [2 d_k] W_KV·beta */
    float *d_folded_weight; /* [2 d_k][widest d_i] */
    float *token_mean;      /* [longest L_i] statistics the teacher LN needs no more */
    float *token_rstd;      /* [longest L_i] */
    float *unit_gamma;      /* [max(d_s, widest d_i)] all 1: a plain layer norm */
    float *zero_beta;       /* [max(d_s, widest d_i)] all 0 */

    /* Committee knowledge, answer head and alignment. */
    float *knowledge;            /* [max_batch][d_s] k */
    float *knowledge_act;        /* [max_batch][d_s] ReLU(k) */
    float *answer_logits;        /* [max_batch][C] head(ReLU(k)) */
    float *answer_probs;         /* [max_batch][C] softmax of it */
    float *d_answer_logits;      /* [max_batch][C] */
    float *d_knowledge_act;      /* [max_batch][d_s] */
    float *d_knowledge;          /* [max_batch][d_s] */
    float *align_hidden;         /* [max_batch][d_s] LN(h) */
    float *align_mean;           /* [max_batch] */
    float *align_rstd;           /* [max_batch] */
    float *align_knowledge;      /* [max_batch][d_s] LN(k) */
    float *align_knowledge_mean; /* [max_batch] */
    float *align_knowledge_rstd; /* [max_batch] */
    float *d_align_hidden;       /* [max_batch][d_s] */

    /* Per-teacher backward, reused teacher after teacher (compact rows). */
    float *d_augmented;    /* [max_batch][d_s] */
    float *d_augment_act;  /* [max_batch][hid] */
    float *d_augment_pre;  /* [max_batch][hid] */
    float *d_answer;       /* [max_batch][d_k] */
    float *d_context;      /* [max_batch][d_k] */
    float *d_question;     /* [max_batch][d_k] */
    float *d_question_act; /* [max_batch][hid] */
    float *d_question_pre; /* [max_batch][hid] */
    float *d_pooled;       /* [max_batch][heads][widest d_i] */
    float *d_query_tokens; /* [max_batch][heads][widest d_i] */
    float *d_scores;       /* [max_batch][heads][longest L_i] dLoss/d(attention score) */
    float *d_probe_logits; /* [max_batch][C] */
};

/* ---------------------------------------------------------------- names and defaults */

static const char *const router_names[] = {
    [TRAINER_DD_ROUTER_RELIABILITY] = "reliability",
    [TRAINER_DD_ROUTER_LEARNABILITY] = "learnability",
    [TRAINER_DD_ROUTER_END_TO_END] = "end-to-end",
};
enum { ROUTER_COUNT = sizeof router_names / sizeof router_names[0] };

/* NULL for an unknown router. */
const char *trainer_dd_router_name(trainer_dd_router_t router) {
    if ((int)router < 0 || (int)router >= ROUTER_COUNT) return NULL;
    return router_names[router];
}

cm_status_t trainer_dd_router_parse(const char *text, trainer_dd_router_t *router) {
    assert(text && router);
    for (int candidate = 0; candidate < ROUTER_COUNT; candidate++)
        if (strcmp(text, router_names[candidate]) == 0) {
            *router = (trainer_dd_router_t)candidate;
            return CM_OK;
        }
    return cm_fail(CM_ERR_INVALID_ARG,
                   "unknown --dd-router '%s': expected reliability, learnability or end-to-end",
                   text);
}

trainer_dd_config_t trainer_dd_defaults(void) {
    return (trainer_dd_config_t){.embed_dim = 32,
                                 .key_dim = 64,
                                 .heads = 4,
                                 .hidden = 128,
                                 .temperature = 2.0f,
                                 .kd_weight = 0.9f,
                                 .answer_weight = 1.0f,
                                 .router_weight = 1.0f,
                                 .router_tau = 1.0f,
                                 .align_weight = 0.0f,
                                 .router = TRAINER_DD_ROUTER_LEARNABILITY};
}

/* ---------------------------------------------------------------- construction */

static cm_status_t check_positive(const char *what, int value) {
    if (value >= 1) return CM_OK;
    return cm_fail(CM_ERR_INVALID_ARG, "DiverseDistill: %s must be at least 1, got %d", what,
                   value);
}

static cm_status_t check_weight(const char *what, float value) {
    if (value >= 0.0f && isfinite(value)) return CM_OK;
    return cm_fail(CM_ERR_INVALID_ARG, "DiverseDistill: %s must be zero or positive, got %g", what,
                   (double)value);
}

/* Checks everything trainer_dd_new and the step rely on; one sentence per failure. */
static cm_status_t check_config(const trainer_dd_config_t *config) {
    if (config->teacher_count < 1 || config->teacher_count > TRAINER_MAX_TEACHERS)
        return cm_fail(CM_ERR_INVALID_ARG,
                       "DiverseDistill needs 1 to %d teachers, the committee has %d",
                       TRAINER_MAX_TEACHERS, config->teacher_count);
    cm_status_t status = CM_OK;
    if (config->task != TRAINER_TASK_CLASSIFICATION && config->task != TRAINER_TASK_REGRESSION)
        return cm_fail(CM_ERR_INVALID_ARG, "DiverseDistill: unknown task kind %d",
                       (int)config->task);
    if (!(config->filter_threshold >= 0.0f && config->filter_threshold <= 1.0f) ||
        !(config->filter_explore >= 0.0f && config->filter_explore <= 1.0f))
        return cm_fail(CM_ERR_INVALID_ARG,
                       "--dd-filter and --dd-explore must be in [0, 1], got %g and %g",
                       (double)config->filter_threshold, (double)config->filter_explore);
    if ((status = check_positive(config->task == TRAINER_TASK_REGRESSION ? "the number of targets"
                                                                         : "the number of classes",
                                 config->classes)) != CM_OK ||
        (status = check_positive("the student's hidden width", config->student_hidden)) != CM_OK ||
        (status = check_positive("the teacher embedding width (d_e)", config->embed_dim)) !=
            CM_OK ||
        (status = check_positive("the key width (d_k)", config->key_dim)) != CM_OK ||
        (status = check_positive("the number of heads", config->heads)) != CM_OK ||
        (status = check_positive("the augmenter width", config->hidden)) != CM_OK ||
        (status = check_positive("the batch size", config->max_batch)) != CM_OK)
        return status;
    if (config->key_dim % config->heads != 0)
        return cm_fail(CM_ERR_INVALID_ARG,
                       "DiverseDistill: %d heads do not divide the key width %d", config->heads,
                       config->key_dim);
    for (int teacher = 0; teacher < config->teacher_count; teacher++)
        if (config->teacher_tokens[teacher] < 1 || config->teacher_dim[teacher] < 1)
            return cm_fail(CM_ERR_INVALID_ARG,
                           "DiverseDistill: teacher %d's feature is %d x %d, it needs at least "
                           "one token of at least one value",
                           teacher, config->teacher_tokens[teacher], config->teacher_dim[teacher]);
    if (!(config->temperature > 0.0f) || !isfinite(config->temperature))
        return cm_fail(CM_ERR_INVALID_ARG, "--temperature must be a positive number, got %g",
                       (double)config->temperature);
    if (!(config->router_tau > 0.0f) || !isfinite(config->router_tau))
        return cm_fail(CM_ERR_INVALID_ARG,
                       "DiverseDistill: the router temperature tau must be positive, got %g",
                       (double)config->router_tau);
    if (!(config->kd_weight >= 0.0f && config->kd_weight <= 1.0f))
        return cm_fail(CM_ERR_INVALID_ARG, "--kd-weight must be in [0, 1], got %g",
                       (double)config->kd_weight);
    if ((status = check_weight("the answer weight", config->answer_weight)) != CM_OK ||
        (status = check_weight("the router weight", config->router_weight)) != CM_OK ||
        (status = check_weight("the alignment weight", config->align_weight)) != CM_OK ||
        (status = check_weight("the probe match weight", config->probe_match_weight)) != CM_OK ||
        (status = check_weight("the probe answer weight", config->probe_answer_weight)) != CM_OK)
        return status;
    if (config->interactive) {
        int heads = 0;
        for (int teacher = 0; teacher < config->teacher_count; teacher++) {
            if (config->head_inputs[teacher] < 0)
                return cm_fail(CM_ERR_INVALID_ARG,
                               "DiverseDistill: teacher %d's head reads %d values", teacher,
                               config->head_inputs[teacher]);
            if (config->head_inputs[teacher] == 0) continue;
            if (!config->head_weight[teacher] || !config->head_bias[teacher])
                return cm_fail(CM_ERR_INVALID_ARG,
                               "DiverseDistill: teacher %d has a head of %d inputs but no weights",
                               teacher, config->head_inputs[teacher]);
            heads++;
        }
        if (heads == 0)
            return cm_fail(CM_ERR_INVALID_ARG,
                           "--dd-interactive needs at least one teacher that lends its head");
    }
    if (!trainer_dd_router_name(config->router))
        return cm_fail(CM_ERR_INVALID_ARG, "DiverseDistill: unknown router kind %d",
                       (int)config->router);

    /* Element counts the kernels take as int must fit one. */
    long long widest = config->student_hidden;
    if (config->hidden > widest) widest = config->hidden;
    if (config->classes > widest) widest = config->classes;
    for (int teacher = 0; teacher < config->teacher_count; teacher++) {
        long long token_floats =
            (long long)config->teacher_tokens[teacher] *
            (config->teacher_dim[teacher] > 2 * config->key_dim ? config->teacher_dim[teacher]
                                                                : 2 * config->key_dim);
        if (token_floats > widest) widest = token_floats;
        if (config->interactive && config->head_inputs[teacher] > widest)
            widest = config->head_inputs[teacher];
    }
    if ((long long)config->max_batch * widest > INT_MAX)
        return cm_fail(CM_ERR_TOO_LARGE,
                       "DiverseDistill: a batch of %d rows with %lld floats per row is too large",
                       config->max_batch, widest);
    return CM_OK;
}

/* The tensor's place in the section being laid out (NULL while only counting). */
static float *place(layout_t *layout, size_t size, init_kind_t init, int fan_in) {
    assert(layout->count < MAX_TENSORS);
    layout->tensor[layout->count].offset = layout->used;
    layout->tensor[layout->count].size = size;
    layout->tensor[layout->count].init = init;
    layout->tensor[layout->count].fan_in = fan_in;
    layout->count++;
    float *tensor = layout->base ? layout->base + layout->used : NULL;
    layout->used += size;
    return tensor;
}

/* Whether teacher's interactive probe runs. */
static int has_probe(const trainer_dd_config_t *config, int teacher) {
    return config->interactive && config->head_inputs[teacher] > 0;
}

/* Lays every tensor out from `base` (NULL: only count); *decayed gets the decayed prefix. */
static void lay_out_tensors(const trainer_dd_config_t *config, float *base, tensors_t *tensors,
                            layout_t *layout, size_t *decayed) {
    size_t width = (size_t)config->student_hidden, embed = (size_t)config->embed_dim;
    size_t key = (size_t)config->key_dim, hidden = (size_t)config->hidden;
    memset(layout, 0, sizeof *layout);
    layout->base = base;
    /* Matrices, decayed. */
    tensors->router_weight = place(layout, embed * width, INIT_FAN_IN, (int)width);
    tensors->question_in_weight =
        place(layout, hidden * (width + embed), INIT_FAN_IN, (int)(width + embed));
    tensors->question_out_weight = place(layout, key * hidden, INIT_FAN_IN, (int)hidden);
    for (int teacher = 0; teacher < config->teacher_count; teacher++) {
        teacher_tensors_t *own = &tensors->teacher[teacher];
        int dim = config->teacher_dim[teacher];
        own->key_value_weight = place(layout, 2 * key * (size_t)dim, INIT_FAN_IN, dim);
        own->output_weight = place(layout, key * key, INIT_FAN_IN, (int)key);
        own->augment_in_weight = place(layout, hidden * key, INIT_FAN_IN, (int)key);
        own->augment_out_weight = place(layout, width * hidden, INIT_FAN_IN, (int)hidden);
        own->probe_weight = NULL;
        if (has_probe(config, teacher))
            own->probe_weight =
                place(layout, (size_t)config->head_inputs[teacher] * key, INIT_FAN_IN, (int)key);
    }
    *decayed = layout->used;
    /* Tables, norms and biases, not decayed. */
    tensors->embeddings = place(layout, (size_t)config->teacher_count * embed, INIT_SMALL, 0);
    tensors->router_gamma = place(layout, width, INIT_ONE, 0);
    tensors->router_beta = place(layout, width, INIT_ZERO, 0);
    tensors->question_gamma = place(layout, width, INIT_ONE, 0);
    tensors->question_beta = place(layout, width, INIT_ZERO, 0);
    tensors->question_in_bias = place(layout, hidden, INIT_ZERO, 0);
    tensors->question_out_bias = place(layout, key, INIT_ZERO, 0);
    for (int teacher = 0; teacher < config->teacher_count; teacher++) {
        teacher_tensors_t *own = &tensors->teacher[teacher];
        size_t dim = (size_t)config->teacher_dim[teacher];
        own->norm_gamma = place(layout, dim, INIT_ONE, 0);
        own->norm_beta = place(layout, dim, INIT_ZERO, 0);
        own->positions =
            place(layout, (size_t)config->teacher_tokens[teacher] * key, INIT_SMALL, 0);
        own->output_bias = place(layout, key, INIT_ZERO, 0);
        own->augment_in_bias = place(layout, hidden, INIT_ZERO, 0);
        own->augment_out_bias = place(layout, width, INIT_ZERO, 0);
        own->probe_bias = NULL;
        if (has_probe(config, teacher))
            own->probe_bias = place(layout, (size_t)config->head_inputs[teacher], INIT_ZERO, 0);
    }
}

static void initialize_params(const layout_t *layout, uint64_t seed) {
    cm_rng_t rng;
    cm_rng_seed(&rng, seed);
    for (int index = 0; index < layout->count; index++) {
        float *tensor = layout->base + layout->tensor[index].offset;
        size_t size = layout->tensor[index].size;
        float std = 0.02f;
        switch (layout->tensor[index].init) {
        case INIT_ZERO:
            memset(tensor, 0, sizeof(float) * size);
            break;
        case INIT_ONE:
            for (size_t i = 0; i < size; i++) tensor[i] = 1.0f;
            break;
        case INIT_FAN_IN:
            std = 1.0f / sqrtf((float)layout->tensor[index].fan_in);
            /* fall through */
        case INIT_SMALL:
            for (size_t i = 0; i < size; i++) tensor[i] = std * cm_rng_normal(&rng);
            break;
        }
    }
}

/* Carves scratch from one arena: base NULL only counts.  Every buffer starts on a cache line. */
typedef struct {
    float *base;
    size_t used;
} arena_t;

static float *take(arena_t *arena, size_t count) {
    float *buffer = arena->base ? arena->base + arena->used : NULL;
    arena->used +=
        (count + FLOATS_PER_CACHE_LINE - 1) / FLOATS_PER_CACHE_LINE * FLOATS_PER_CACHE_LINE;
    return buffer;
}

static void carve_scratch(trainer_dd_t *dd, arena_t *arena) {
    const trainer_dd_config_t *config = &dd->config;
    size_t batch = (size_t)config->max_batch, teachers = (size_t)config->teacher_count;
    size_t width = (size_t)config->student_hidden, embed = (size_t)config->embed_dim;
    size_t key = (size_t)config->key_dim, hidden = (size_t)config->hidden;
    size_t classes = (size_t)config->classes, heads = (size_t)config->heads;
    size_t widest = (size_t)dd->widest_teacher, longest = (size_t)dd->longest_teacher;
    size_t norm_width = widest > width ? widest : width;
    size_t sums_width = hidden > 2 * key ? hidden : 2 * key;

    for (int teacher = 0; teacher < config->teacher_count; teacher++) {
        teacher_state_t *state = &dd->teacher[teacher];
        size_t tokens = (size_t)state->tokens;
        state->normalized = take(arena, batch * tokens * (size_t)state->dim);
        state->query_tokens = take(arena, batch * heads * (size_t)state->dim);
        state->pooled = take(arena, batch * heads * (size_t)state->dim);
        state->question_pre = take(arena, batch * hidden);
        state->question_act = take(arena, batch * hidden);
        state->question = take(arena, batch * key);
        state->attention = take(arena, batch * heads * tokens);
        state->context = take(arena, batch * key);
        state->answer = take(arena, batch * key);
        state->augment_pre = take(arena, batch * hidden);
        state->augment_act = take(arena, batch * hidden);
        state->augmented = take(arena, batch * width);
        state->probe = take(arena, batch * (size_t)state->head_inputs);
        state->probe_logits = take(arena, batch * (state->head_inputs ? classes : 0));
        state->d_probe = take(arena, batch * (size_t)state->head_inputs);
    }
    dd->router_norm = take(arena, batch * width);
    dd->router_mean = take(arena, batch);
    dd->router_rstd = take(arena, batch);
    dd->router_query = take(arena, batch * embed);
    dd->alpha = take(arena, batch * teachers);
    dd->log_alpha = take(arena, batch * teachers);
    dd->d_alpha = take(arena, batch * teachers);
    dd->d_score = take(arena, batch * teachers);
    dd->d_router_query = take(arena, batch * embed);
    dd->d_router_norm = take(arena, batch * width);

    dd->label_probs = take(arena, batch * classes);
    dd->student_soft = take(arena, classes);
    dd->teacher_soft = take(arena, batch * teachers * classes);
    dd->pair_kl = take(arena, batch * teachers);

    dd->question_norm = take(arena, batch * width);
    dd->question_mean = take(arena, batch);
    dd->question_rstd = take(arena, batch);
    dd->question_base = take(arena, batch * hidden);
    dd->teacher_bias = take(arena, hidden);
    dd->d_question_base = take(arena, batch * hidden);
    dd->d_question_norm = take(arena, batch * width);
    dd->column_sums = take(arena, sums_width);

    dd->folded_weight = take(arena, 2 * key * widest);
    dd->folded_bias = take(arena, 2 * key);
    dd->d_folded_weight = take(arena, 2 * key * widest);
    dd->token_mean = take(arena, longest);
    dd->token_rstd = take(arena, longest);
    dd->unit_gamma = take(arena, norm_width);
    dd->zero_beta = take(arena, norm_width);

    dd->knowledge = take(arena, batch * width);
    dd->knowledge_act = take(arena, batch * width);
    dd->answer_logits = take(arena, batch * classes);
    dd->answer_probs = take(arena, batch * classes);
    dd->d_answer_logits = take(arena, batch * classes);
    dd->d_knowledge_act = take(arena, batch * width);
    dd->d_knowledge = take(arena, batch * width);
    dd->align_hidden = take(arena, batch * width);
    dd->align_mean = take(arena, batch);
    dd->align_rstd = take(arena, batch);
    dd->align_knowledge = take(arena, batch * width);
    dd->align_knowledge_mean = take(arena, batch);
    dd->align_knowledge_rstd = take(arena, batch);
    dd->d_align_hidden = take(arena, batch * width);

    dd->d_augmented = take(arena, batch * width);
    dd->d_augment_act = take(arena, batch * hidden);
    dd->d_augment_pre = take(arena, batch * hidden);
    dd->d_answer = take(arena, batch * key);
    dd->d_context = take(arena, batch * key);
    dd->d_question = take(arena, batch * key);
    dd->d_question_act = take(arena, batch * hidden);
    dd->d_question_pre = take(arena, batch * hidden);
    dd->d_pooled = take(arena, batch * heads * widest);
    dd->d_query_tokens = take(arena, batch * heads * widest);
    dd->d_scores = take(arena, batch * heads * longest);
    dd->d_probe_logits = take(arena, batch * classes);
}

cm_status_t trainer_dd_new(const trainer_dd_config_t *config, uint64_t seed, trainer_dd_t **out) {
    assert(config && out);
    *out = NULL;
    cm_status_t status = check_config(config);
    if (status != CM_OK) return status;

    trainer_dd_t *dd = cm_alloc_aligned(1, sizeof *dd);
    if (!dd) goto fail;
    dd->config = *config;
    for (int teacher = 0; teacher < config->teacher_count; teacher++) {
        dd->teacher[teacher].tokens = config->teacher_tokens[teacher];
        dd->teacher[teacher].dim = config->teacher_dim[teacher];
        dd->teacher[teacher].head_inputs =
            has_probe(config, teacher) ? config->head_inputs[teacher] : 0;
        if (config->teacher_dim[teacher] > dd->widest_teacher)
            dd->widest_teacher = config->teacher_dim[teacher];
        if (config->teacher_tokens[teacher] > dd->longest_teacher)
            dd->longest_teacher = config->teacher_tokens[teacher];
    }

    layout_t layout;
    lay_out_tensors(config, NULL, &dd->param, &layout, &dd->decayed_count);
    dd->param_count = layout.used;
    dd->section_floats = (dd->param_count + FLOATS_PER_CACHE_LINE - 1) / FLOATS_PER_CACHE_LINE *
                         FLOATS_PER_CACHE_LINE;
    dd->block = cm_alloc_floats(4 * dd->section_floats);
    if (!dd->block) goto fail;
    size_t decayed;
    lay_out_tensors(config, dd->block + dd->section_floats, &dd->grad, &layout, &decayed);
    lay_out_tensors(config, dd->block, &dd->param, &layout, &decayed);
    initialize_params(&layout, seed);

    size_t batch = (size_t)config->max_batch, teachers = (size_t)config->teacher_count;
    dd->int_block = cm_alloc_aligned(batch * (teachers + 1), sizeof(int));
    dd->answer_labels = cm_alloc_aligned(batch, sizeof(int32_t));
    dd->answer_rows = cm_alloc_aligned(batch, 1);
    if (!dd->int_block || !dd->answer_labels || !dd->answer_rows) goto fail;
    for (size_t teacher = 0; teacher < teachers; teacher++)
        dd->teacher[teacher].present_rows = dd->int_block + teacher * batch;
    dd->row_teachers = dd->int_block + teachers * batch;

    arena_t arena = {0};
    carve_scratch(dd, &arena);
    arena.base = dd->arena = cm_alloc_floats(arena.used);
    if (!dd->arena) goto fail;
    arena.used = 0;
    carve_scratch(dd, &arena);
    size_t norm_width =
        (size_t)(dd->widest_teacher > config->student_hidden ? dd->widest_teacher
                                                             : config->student_hidden);
    for (size_t i = 0; i < norm_width; i++) dd->unit_gamma[i] = 1.0f;

    *out = dd;
    return CM_OK;

fail:
    trainer_dd_free(&dd);
    return cm_fail(CM_ERR_NOMEM, "out of memory building the DiverseDistill module for batch %d",
                   config->max_batch);
}

void trainer_dd_free(trainer_dd_t **dd_pointer) {
    if (!dd_pointer || !*dd_pointer) return;
    trainer_dd_t *dd = *dd_pointer;
    cm_free_aligned(dd->block);
    cm_free_aligned(dd->int_block);
    cm_free_aligned(dd->answer_labels);
    cm_free_aligned(dd->answer_rows);
    cm_free_aligned(dd->arena);
    cm_free_aligned(dd);
    *dd_pointer = NULL;
}

/* ---------------------------------------------------------------- kernels */

/* log Σ_c exp(logits[c]), max-subtracted, in double. */
static double log_sum_exp(const float *logits, int classes) {
    float max_value = logits[0];
    for (int c = 1; c < classes; c++)
        if (logits[c] > max_value) max_value = logits[c];
    double sum = 0.0;
    for (int c = 0; c < classes; c++) sum += exp((double)logits[c] - max_value);
    return max_value + log(sum);
}

/* Whether `row` has a label: labels[row] >= 0, or labelled[row] for regression. */
static int row_labelled(const trainer_dd_t *dd, const trainer_dd_batch_t *batch, int row) {
    return dd->config.task == TRAINER_TASK_REGRESSION ? batch->labelled[row] != 0
                                                      : batch->labels[row] >= 0;
}

static float dot(const float *a, const float *b, int count) {
    float sum = 0.0f;
    for (int i = 0; i < count; i++) sum += a[i] * b[i];
    return sum;
}

/* ---------------------------------------------------------------- router */

/*
 * alpha and log_alpha [rows][n] from student_hidden [rows][d_s]: a softmax of
 * <W_r·LN_r(h), e_i> / sqrt(d_e) over the teachers present in each row (present NULL: all),
 * 0 for the absent ones.  Saves LN_r(h) with its statistics and W_r·LN_r(h) for the backward.
 */
static void route_forward(trainer_dd_t *dd, const float *student_hidden, int rows,
                          const uint8_t *const *present) {
    const trainer_dd_config_t *config = &dd->config;
    int teachers = config->teacher_count, embed = config->embed_dim;
    cm_layers_layernorm_forward(dd->router_norm, dd->router_mean, dd->router_rstd, student_hidden,
                                dd->param.router_gamma, dd->param.router_beta, rows,
                                config->student_hidden);
    cm_layers_dense_forward(dd->router_query, dd->router_norm, dd->param.router_weight, NULL, rows,
                            config->student_hidden, embed);
    float scale = 1.0f / sqrtf((float)embed);
    for (int row = 0; row < rows; row++) {
        const float *query = dd->router_query + (size_t)row * embed;
        float *alpha = dd->alpha + (size_t)row * teachers;
        float *log_alpha = dd->log_alpha + (size_t)row * teachers;
        float score[TRAINER_MAX_TEACHERS] = {0}, max_score = -INFINITY;
        for (int teacher = 0; teacher < teachers; teacher++) {
            alpha[teacher] = log_alpha[teacher] = 0.0f;
            if (present && !present[teacher][row]) continue;
            score[teacher] =
                scale * dot(query, dd->param.embeddings + (size_t)teacher * embed, embed);
            if (score[teacher] > max_score) max_score = score[teacher];
        }
        if (max_score == -INFINITY) continue; /* no teacher in this row */
        double sum = 0.0;
        for (int teacher = 0; teacher < teachers; teacher++)
            if (!present || present[teacher][row]) sum += exp((double)score[teacher] - max_score);
        double log_normaliser = max_score + log(sum);
        for (int teacher = 0; teacher < teachers; teacher++) {
            if (present && !present[teacher][row]) continue;
            log_alpha[teacher] = (float)(score[teacher] - log_normaliser);
            alpha[teacher] = (float)exp(score[teacher] - log_normaliser);
        }
    }
}

void trainer_dd_route(trainer_dd_t *dd, const float *student_hidden, int rows,
                      const uint8_t *const *present, float *alpha) {
    assert(dd && student_hidden && alpha && rows >= 0 && rows <= dd->config.max_batch);
    route_forward(dd, student_hidden, rows, present);
    memcpy(alpha, dd->alpha, sizeof(float) * (size_t)rows * (size_t)dd->config.teacher_count);
}

/* The router's backward from d_score [rows][n]: adds into E, W_r, LN_r and d_hidden. */
static void route_backward(trainer_dd_t *dd, const float *student_hidden, int rows,
                           float *d_hidden) {
    const trainer_dd_config_t *config = &dd->config;
    int teachers = config->teacher_count, embed = config->embed_dim;
    float scale = 1.0f / sqrtf((float)embed);
    for (int row = 0; row < rows; row++) {
        const float *query = dd->router_query + (size_t)row * embed;
        const float *d_score = dd->d_score + (size_t)row * teachers;
        float *d_query = dd->d_router_query + (size_t)row * embed;
        memset(d_query, 0, sizeof(float) * (size_t)embed);
        for (int teacher = 0; teacher < teachers; teacher++) {
            if (d_score[teacher] == 0.0f) continue;
            float weight = scale * d_score[teacher];
            const float *embedding = dd->param.embeddings + (size_t)teacher * embed;
            float *d_embedding = dd->grad.embeddings + (size_t)teacher * embed;
            for (int e = 0; e < embed; e++) {
                d_query[e] += weight * embedding[e];
                d_embedding[e] += weight * query[e];
            }
        }
    }
    memset(dd->d_router_norm, 0, sizeof(float) * (size_t)rows * (size_t)config->student_hidden);
    cm_layers_dense_backward(dd->d_router_norm, dd->grad.router_weight, NULL, dd->d_router_query,
                             dd->router_norm, dd->param.router_weight, rows, config->student_hidden,
                             embed);
    cm_layers_layernorm_backward(d_hidden, dd->grad.router_gamma, dd->grad.router_beta,
                                 dd->d_router_norm, student_hidden, dd->param.router_gamma,
                                 dd->router_mean, dd->router_rstd, rows, config->student_hidden);
}

/* ---------------------------------------------------------------- logit terms */

/* Fills every teacher's present_rows and row_teachers; returns the rows with a teacher. */
static int index_present_pairs(trainer_dd_t *dd, const trainer_dd_batch_t *batch) {
    int rows_with_teacher = 0;
    memset(dd->row_teachers, 0, sizeof(int) * (size_t)batch->rows);
    for (int teacher = 0; teacher < dd->config.teacher_count; teacher++) {
        teacher_state_t *state = &dd->teacher[teacher];
        state->present_count = 0;
        for (int row = 0; row < batch->rows; row++)
            if (batch->teacher_present[teacher][row]) {
                state->present_rows[state->present_count++] = row;
                dd->row_teachers[row]++;
            }
    }
    for (int row = 0; row < batch->rows; row++) rows_with_teacher += dd->row_teachers[row] > 0;
    return rows_with_teacher;
}

/*
 * The importance-weighted KD term, a mean over the rows with a teacher:
 *   classification  w·T²·Σ_i sg(alpha_i)·KL(softmax(z_i/T) ‖ softmax(s/T))
 *   regression      w·Σ_i sg(alpha_i)·mean_k (s - z_i)²
 * Adds its gradient into d_logits [rows][C], leaves every present pair's KL (or squared
 * error) in pair_kl for the learnability target, returns the term.
 */
static double kd_term(trainer_dd_t *dd, const trainer_dd_batch_t *batch,
                      const float *student_logits, int rows_with_teacher, float *d_logits) {
    const trainer_dd_config_t *config = &dd->config;
    int classes = config->classes, teachers = config->teacher_count;
    float temperature = config->temperature;
    float scale = config->kd_weight / (float)rows_with_teacher;
    int regression = config->task == TRAINER_TASK_REGRESSION;
    double weighted_sum = 0.0;
    for (int teacher = 0; teacher < teachers; teacher++) {
        const teacher_state_t *state = &dd->teacher[teacher];
        for (int index = 0; index < state->present_count; index++) {
            int row = state->present_rows[index];
            size_t offset = (size_t)row * classes;
            size_t pair = (size_t)row * teachers + teacher;
            const float *teacher_logits = batch->teacher_logits[teacher] + offset;
            if (regression) {
                double squared_error =
                    trainer_method_squared_error(student_logits + offset, teacher_logits, classes);
                dd->pair_kl[pair] = (float)squared_error;
                weighted_sum += dd->alpha[pair] * squared_error;
                cm_loss_mse_backward(d_logits + offset, student_logits + offset, teacher_logits,
                                     classes, scale * dd->alpha[pair] / (float)classes);
                continue;
            }
            float *teacher_soft = dd->teacher_soft + pair * classes;
            cm_loss_softmax(teacher_soft, teacher_logits, temperature, 1, classes);
            double scaled_kl =
                cm_loss_kl_forward(dd->student_soft, student_logits + offset, teacher_soft, NULL,
                                   temperature, 1, classes); /* T²·KL */
            dd->pair_kl[pair] = (float)(scaled_kl / ((double)temperature * temperature));
            weighted_sum += dd->alpha[pair] * scaled_kl;
            cm_loss_kl_backward(d_logits + offset, dd->student_soft, teacher_soft, NULL,
                                temperature, 1, classes, scale * dd->alpha[pair]);
        }
    }
    return config->kd_weight * weighted_sum / rows_with_teacher;
}

/*
 * λ_α·KL(r ‖ alpha), a mean over the rows the router target exists for: with a teacher,
 * and labelled for the reliability target.  Adds λ_α/rows·(alpha - r) into d_score; returns
 * the term.  Reads pair_kl (learnability), so kd_term runs first.
 */
static double router_term(trainer_dd_t *dd, const trainer_dd_batch_t *batch) {
    const trainer_dd_config_t *config = &dd->config;
    int classes = config->classes, teachers = config->teacher_count;
    int reliability = config->router == TRAINER_DD_ROUTER_RELIABILITY;
    int target_rows = 0;
    for (int row = 0; row < batch->rows; row++)
        target_rows += dd->row_teachers[row] > 0 && (!reliability || row_labelled(dd, batch, row));
    if (target_rows == 0) return 0.0;

    float scale = config->router_weight / (float)target_rows;
    double inverse_tau = 1.0 / config->router_tau, sum = 0.0;
    for (int row = 0; row < batch->rows; row++) {
        if (dd->row_teachers[row] == 0 || (reliability && !row_labelled(dd, batch, row))) continue;
        double target_logit[TRAINER_MAX_TEACHERS], max_logit = -HUGE_VAL, normaliser = 0.0;
        for (int teacher = 0; teacher < teachers; teacher++) {
            if (!batch->teacher_present[teacher][row]) continue;
            const float *logits = batch->teacher_logits[teacher] + (size_t)row * classes;
            if (reliability && config->task == TRAINER_TASK_REGRESSION) {
                target_logit[teacher] =
                    -trainer_method_squared_error(logits, batch->targets + (size_t)row * classes,
                                                  classes) *
                    inverse_tau;
            } else if (reliability) {
                target_logit[teacher] =
                    (logits[batch->labels[row]] - log_sum_exp(logits, classes)) * inverse_tau;
            } else {
                target_logit[teacher] =
                    -dd->pair_kl[(size_t)row * teachers + teacher] * inverse_tau;
            }
            if (target_logit[teacher] > max_logit) max_logit = target_logit[teacher];
        }
        for (int teacher = 0; teacher < teachers; teacher++)
            if (batch->teacher_present[teacher][row])
                normaliser += exp(target_logit[teacher] - max_logit);
        double log_normaliser = max_logit + log(normaliser);
        for (int teacher = 0; teacher < teachers; teacher++) {
            if (!batch->teacher_present[teacher][row]) continue;
            size_t pair = (size_t)row * teachers + teacher;
            double log_target = target_logit[teacher] - log_normaliser;
            double target = exp(log_target);
            sum += target * (log_target - dd->log_alpha[pair]);
            dd->d_score[pair] += scale * (float)(dd->alpha[pair] - target);
        }
    }
    return config->router_weight * sum / target_rows;
}

/* ---------------------------------------------------------------- the module */

/* q_i for teacher's present rows (question_base must hold W_q1[:, :d_s]·LN_q(h)). */
static void question_forward(trainer_dd_t *dd, int teacher) {
    const trainer_dd_config_t *config = &dd->config;
    teacher_state_t *state = &dd->teacher[teacher];
    int hidden = config->hidden, embed = config->embed_dim, width = config->student_hidden;
    int in_width = width + embed, count = state->present_count;
    const float *embedding = dd->param.embeddings + (size_t)teacher * embed;
    for (int unit = 0; unit < hidden; unit++)
        dd->teacher_bias[unit] =
            dd->param.question_in_bias[unit] +
            dot(dd->param.question_in_weight + (size_t)unit * in_width + width, embedding, embed);
    for (int index = 0; index < count; index++) {
        const float *base = dd->question_base + (size_t)state->present_rows[index] * hidden;
        float *pre = state->question_pre + (size_t)index * hidden;
        for (int unit = 0; unit < hidden; unit++) pre[unit] = base[unit] + dd->teacher_bias[unit];
    }
    cm_layers_gelu_forward(state->question_act, state->question_pre, count * hidden);
    cm_layers_dense_forward(state->question, state->question_act, dd->param.question_out_weight,
                            dd->param.question_out_bias, count, hidden, config->key_dim);
}

/* From d_question [count][d_k]: adds into W_q2, b_q2, b_q1, W_q1's e-columns, e_i, and
 * scatters the rest into d_question_base [rows][hid] for the shared backward. */
static void question_backward(trainer_dd_t *dd, int teacher) {
    const trainer_dd_config_t *config = &dd->config;
    teacher_state_t *state = &dd->teacher[teacher];
    int hidden = config->hidden, embed = config->embed_dim, width = config->student_hidden;
    int in_width = width + embed, count = state->present_count;
    size_t hidden_floats = (size_t)count * hidden;
    memset(dd->d_question_act, 0, sizeof(float) * hidden_floats);
    cm_layers_dense_backward(dd->d_question_act, dd->grad.question_out_weight,
                             dd->grad.question_out_bias, dd->d_question, state->question_act,
                             dd->param.question_out_weight, count, hidden, config->key_dim);
    memset(dd->d_question_pre, 0, sizeof(float) * hidden_floats);
    cm_layers_gelu_backward(dd->d_question_pre, dd->d_question_act, state->question_pre,
                            count * hidden);
    float *unit_sums = dd->column_sums;
    memset(unit_sums, 0, sizeof(float) * (size_t)hidden);
    for (int index = 0; index < count; index++) {
        const float *d_pre = dd->d_question_pre + (size_t)index * hidden;
        float *d_base = dd->d_question_base + (size_t)state->present_rows[index] * hidden;
        for (int unit = 0; unit < hidden; unit++) {
            d_base[unit] += d_pre[unit];
            unit_sums[unit] += d_pre[unit];
        }
    }
    const float *embedding = dd->param.embeddings + (size_t)teacher * embed;
    float *d_embedding = dd->grad.embeddings + (size_t)teacher * embed;
    for (int unit = 0; unit < hidden; unit++) {
        const float *weight = dd->param.question_in_weight + (size_t)unit * in_width + width;
        float *d_weight = dd->grad.question_in_weight + (size_t)unit * in_width + width;
        dd->grad.question_in_bias[unit] += unit_sums[unit];
        for (int e = 0; e < embed; e++) {
            d_weight[e] += unit_sums[unit] * embedding[e];
            d_embedding[e] += unit_sums[unit] * weight[e];
        }
    }
}

/* folded_weight = W_KV ∘ gamma_i and folded_bias = W_KV·beta_i of teacher `teacher` (the
 * buffers are shared, so the backward folds again). */
static void fold_key_value(trainer_dd_t *dd, int teacher) {
    const teacher_tensors_t *own = &dd->param.teacher[teacher];
    int dim = dd->teacher[teacher].dim;
    for (int out = 0; out < 2 * dd->config.key_dim; out++) {
        const float *weight = own->key_value_weight + (size_t)out * dim;
        float *folded = dd->folded_weight + (size_t)out * dim;
        for (int c = 0; c < dim; c++) folded[c] = weight[c] * own->norm_gamma[c];
        dd->folded_bias[out] = dot(weight, own->norm_beta, dim);
    }
}

/*
 * Teacher `teacher`'s attention for its present rows of feature [rows][L_i][d_i], one query
 * per example and head (head_dim = d_k / heads columns of q_i and of each key and value):
 * attention [count][heads][L_i] = softmax_t((q_h·K_{t,h}) / sqrt(head_dim)) and context
 * [count][d_k] = concat_h Σ_t a_{t,h} V_{t,h}, computed in the token space (file comment).
 */
static void token_attention_forward(trainer_dd_t *dd, int teacher, const float *feature) {
    const trainer_dd_config_t *config = &dd->config;
    int key = config->key_dim, heads = config->heads, head_dim = key / heads;
    teacher_state_t *state = &dd->teacher[teacher];
    const teacher_tensors_t *own = &dd->param.teacher[teacher];
    int tokens = state->tokens, dim = state->dim, count = state->present_count;
    size_t example_floats = (size_t)tokens * dim, head_floats = (size_t)heads * dim;
    size_t score_floats = (size_t)heads * tokens;
    float scale = 1.0f / sqrtf((float)head_dim);
    for (int index = 0; index < count; index++)
        cm_layers_layernorm_forward(state->normalized + (size_t)index * example_floats,
                                    dd->token_mean, dd->token_rstd,
                                    feature + (size_t)state->present_rows[index] * example_floats,
                                    dd->unit_gamma, dd->zero_beta, tokens, dim);
    fold_key_value(dd, teacher);
    const float *value_weight = dd->folded_weight + (size_t)key * dim;
    for (int head = 0; head < heads; head++) {
        int column = head * head_dim;
        /* scores_h [count][L] = q_h·P_h^T / sqrt(head_dim), the positional part */
        cm_blas_sgemm(false, true, count, tokens, head_dim, scale, state->question + column, key,
                      own->positions + column, key, 0.0f, state->attention + head * tokens,
                      (int)score_floats);
        /* query_tokens_h [count][d_i] = q_h·W'_{K,h} / sqrt(head_dim) */
        cm_blas_sgemm(false, false, count, dim, head_dim, scale, state->question + column, key,
                      dd->folded_weight + (size_t)column * dim, dim, 0.0f,
                      state->query_tokens + (size_t)head * dim, (int)head_floats);
    }
    for (int index = 0; index < count; index++) /* scores [heads][L] += query_tokens·F̂^T */
        cm_blas_sgemm(false, true, heads, tokens, dim, 1.0f,
                      state->query_tokens + index * head_floats, dim,
                      state->normalized + index * example_floats, dim, 1.0f,
                      state->attention + index * score_floats, tokens);
    cm_loss_softmax(state->attention, state->attention, 1.0f, count * heads, tokens);
    for (int index = 0; index < count; index++) /* pooled [heads][d_i] = a·F̂ */
        cm_blas_sgemm(false, false, heads, dim, tokens, 1.0f,
                      state->attention + index * score_floats, tokens,
                      state->normalized + index * example_floats, dim, 0.0f,
                      state->pooled + index * head_floats, dim);
    for (int index = 0; index < count; index++)
        memcpy(state->context + (size_t)index * key, dd->folded_bias + key,
               sizeof(float) * (size_t)key);
    for (int head = 0; head < heads; head++) /* context_h += pooled_h·W'_{V,h}^T */
        cm_blas_sgemm(false, true, count, head_dim, dim, 1.0f, state->pooled + (size_t)head * dim,
                      (int)head_floats, value_weight + (size_t)head * head_dim * dim, dim, 1.0f,
                      state->context + head * head_dim, key);
}

/* From d_context [count][d_k]: adds into d_question, W_KV, LN_i's gamma and beta, and P_i. */
static void token_attention_backward(trainer_dd_t *dd, int teacher) {
    const trainer_dd_config_t *config = &dd->config;
    int key = config->key_dim, heads = config->heads, head_dim = key / heads;
    const teacher_state_t *state = &dd->teacher[teacher];
    const teacher_tensors_t *own = &dd->param.teacher[teacher];
    teacher_tensors_t *grad = &dd->grad.teacher[teacher];
    int tokens = state->tokens, dim = state->dim, count = state->present_count;
    size_t example_floats = (size_t)tokens * dim, head_floats = (size_t)heads * dim;
    size_t score_floats = (size_t)heads * tokens;
    float scale = 1.0f / sqrtf((float)head_dim);
    fold_key_value(dd, teacher);
    const float *value_weight = dd->folded_weight + (size_t)key * dim;
    float *d_value_weight = dd->d_folded_weight + (size_t)key * dim;
    /* The key bias W_K·beta drops out of the softmax: its gradient is 0. */
    float *out_sums = dd->column_sums;
    memset(out_sums, 0, sizeof(float) * (size_t)(2 * key));
    for (int index = 0; index < count; index++)
        cm_layers_add_forward(out_sums + key, out_sums + key, dd->d_context + (size_t)index * key,
                              key);
    for (int head = 0; head < heads; head++) {
        int column = head * head_dim;
        /* dW'_{V,h} [hd][d_i] = d_context_h^T·pooled_h;  d_pooled_h = d_context_h·W'_{V,h} */
        cm_blas_sgemm(true, false, head_dim, dim, count, 1.0f, dd->d_context + column, key,
                      state->pooled + (size_t)head * dim, (int)head_floats, 0.0f,
                      d_value_weight + (size_t)column * dim, dim);
        cm_blas_sgemm(false, false, count, dim, head_dim, 1.0f, dd->d_context + column, key,
                      value_weight + (size_t)column * dim, dim, 0.0f,
                      dd->d_pooled + (size_t)head * dim, (int)head_floats);
    }
    for (int index = 0; index < count; index++) { /* d_a [heads][L] = d_pooled·F̂^T */
        float *d_scores = dd->d_scores + index * score_floats;
        const float *weights = state->attention + index * score_floats;
        cm_blas_sgemm(false, true, heads, tokens, dim, 1.0f, dd->d_pooled + index * head_floats,
                      dim, state->normalized + index * example_floats, dim, 0.0f, d_scores, tokens);
        /* d_score[t] = a[t]·(d_a[t] - Σ_s a[s]·d_a[s]) */
        for (int head = 0; head < heads; head++) {
            float *d_row = d_scores + (size_t)head * tokens;
            const float *weight_row = weights + (size_t)head * tokens;
            float expected = dot(weight_row, d_row, tokens);
            for (int token = 0; token < tokens; token++)
                d_row[token] = weight_row[token] * (d_row[token] - expected);
        }
        /* d_query_tokens [heads][d_i] = d_scores·F̂ */
        cm_blas_sgemm(false, false, heads, dim, tokens, 1.0f, d_scores, tokens,
                      state->normalized + index * example_floats, dim, 0.0f,
                      dd->d_query_tokens + index * head_floats, dim);
    }
    for (int head = 0; head < heads; head++) {
        int column = head * head_dim;
        const float *d_scores = dd->d_scores + head * tokens;
        const float *d_query_tokens = dd->d_query_tokens + (size_t)head * dim;
        const float *question = state->question + column;
        float *d_question = dd->d_question + column;
        /* d_q_h += (d_query_tokens_h·W'_{K,h}^T + d_scores_h·P_h) / sqrt(head_dim) */
        cm_blas_sgemm(false, true, count, head_dim, dim, scale, d_query_tokens, (int)head_floats,
                      dd->folded_weight + (size_t)column * dim, dim, 1.0f, d_question, key);
        cm_blas_sgemm(false, false, count, head_dim, tokens, scale, d_scores, (int)score_floats,
                      own->positions + column, key, 1.0f, d_question, key);
        /* dW'_{K,h} = q_h^T·d_query_tokens_h / sqrt(head_dim);  dP_h += d_scores_h^T·q_h / .. */
        cm_blas_sgemm(true, false, head_dim, dim, count, scale, question, key, d_query_tokens,
                      (int)head_floats, 0.0f, dd->d_folded_weight + (size_t)column * dim, dim);
        cm_blas_sgemm(true, false, tokens, head_dim, count, scale, d_scores, (int)score_floats,
                      question, key, 1.0f, grad->positions + column, key);
    }
    for (int out = 0; out < 2 * key; out++) {
        const float *weight = own->key_value_weight + (size_t)out * dim;
        const float *d_folded = dd->d_folded_weight + (size_t)out * dim;
        float *d_weight = grad->key_value_weight + (size_t)out * dim;
        for (int c = 0; c < dim; c++) {
            d_weight[c] += d_folded[c] * own->norm_gamma[c] + out_sums[out] * own->norm_beta[c];
            grad->norm_gamma[c] += d_folded[c] * weight[c];
            grad->norm_beta[c] += out_sums[out] * weight[c];
        }
    }
}

/*
 * The whole module forward: question, keys/values, attention, answer and augmenter for every
 * teacher's present rows, then k [rows][d_s] = Σ_i alpha_i·ã_i (0 on rows without a teacher).
 * Without `answers` only the questions and the probes run (k is not needed).  The probe of
 * a teacher with a head: p_i = W_p·q_i + b_p and its frozen head's logits g_i(p_i).
 */
static void module_forward(trainer_dd_t *dd, const trainer_dd_batch_t *batch,
                           const float *student_hidden, int answers) {
    const trainer_dd_config_t *config = &dd->config;
    int rows = batch->rows, width = config->student_hidden, hidden = config->hidden;
    int key = config->key_dim, teachers = config->teacher_count;
    cm_layers_layernorm_forward(dd->question_norm, dd->question_mean, dd->question_rstd,
                                student_hidden, dd->param.question_gamma, dd->param.question_beta,
                                rows, width);
    /* question_base [rows][hid] = LN_q(h) · W_q1[:, :d_s]^T */
    cm_blas_sgemm(false, true, rows, hidden, width, 1.0f, dd->question_norm, width,
                  dd->param.question_in_weight, width + config->embed_dim, 0.0f, dd->question_base,
                  hidden);
    memset(dd->knowledge, 0, sizeof(float) * (size_t)rows * width);
    for (int teacher = 0; teacher < teachers; teacher++) {
        teacher_state_t *state = &dd->teacher[teacher];
        const teacher_tensors_t *own = &dd->param.teacher[teacher];
        int count = state->present_count;
        if (count == 0 || (!answers && !state->head_inputs)) continue;
        question_forward(dd, teacher);
        if (state->head_inputs) {
            cm_layers_dense_forward(state->probe, state->question, own->probe_weight,
                                    own->probe_bias, count, key, state->head_inputs);
            cm_layers_dense_forward(state->probe_logits, state->probe, config->head_weight[teacher],
                                    config->head_bias[teacher], count, state->head_inputs,
                                    config->classes);
        }
        if (!answers) continue;
        token_attention_forward(dd, teacher, batch->teacher_feature[teacher]);
        cm_layers_dense_forward(state->answer, state->context, own->output_weight, own->output_bias,
                                count, key, key);
        cm_layers_dense_forward(state->augment_pre, state->answer, own->augment_in_weight,
                                own->augment_in_bias, count, key, hidden);
        cm_layers_gelu_forward(state->augment_act, state->augment_pre, count * hidden);
        cm_layers_dense_forward(state->augmented, state->augment_act, own->augment_out_weight,
                                own->augment_out_bias, count, hidden, width);
        for (int index = 0; index < count; index++) {
            int row = state->present_rows[index];
            float alpha = dd->alpha[(size_t)row * teachers + teacher];
            const float *augmented = state->augmented + (size_t)index * width;
            float *knowledge = dd->knowledge + (size_t)row * width;
            for (int unit = 0; unit < width; unit++) knowledge[unit] += alpha * augmented[unit];
        }
    }
}

/*
 * The module backward from d_knowledge [rows][d_s] (when `knowledge_flows`) and every
 * probe's d_probe: adds into every module tensor and d_hidden; in end-to-end mode also turns
 * dLoss/dalpha into d_score for the router.
 */
static void module_backward(trainer_dd_t *dd, const float *student_hidden, int rows,
                            float *d_hidden, int knowledge_flows) {
    const trainer_dd_config_t *config = &dd->config;
    int width = config->student_hidden, hidden = config->hidden, key = config->key_dim;
    int teachers = config->teacher_count, embed = config->embed_dim;
    int end_to_end = config->router == TRAINER_DD_ROUTER_END_TO_END;
    memset(dd->d_question_base, 0, sizeof(float) * (size_t)rows * hidden);
    memset(dd->d_alpha, 0, sizeof(float) * (size_t)rows * teachers);
    for (int teacher = 0; teacher < teachers; teacher++) {
        const teacher_state_t *state = &dd->teacher[teacher];
        const teacher_tensors_t *own = &dd->param.teacher[teacher];
        teacher_tensors_t *grad = &dd->grad.teacher[teacher];
        int count = state->present_count;
        size_t key_floats = (size_t)count * key;
        if (count == 0 || (!knowledge_flows && !state->head_inputs)) continue;
        memset(dd->d_question, 0, sizeof(float) * key_floats);
        if (state->head_inputs) /* d_q += W_p^T·d_p; W_p, b_p get theirs */
            cm_layers_dense_backward(dd->d_question, grad->probe_weight, grad->probe_bias,
                                     state->d_probe, state->question, own->probe_weight, count, key,
                                     state->head_inputs);
        if (!knowledge_flows) {
            question_backward(dd, teacher);
            continue;
        }
        /* k = Σ alpha_i·ã_i: d_ã_i = alpha_i·d_k, and d_alpha_i = <ã_i, d_k> if alpha is live. */
        for (int index = 0; index < count; index++) {
            int row = state->present_rows[index];
            size_t pair = (size_t)row * teachers + teacher;
            const float *d_knowledge = dd->d_knowledge + (size_t)row * width;
            float *d_augmented = dd->d_augmented + (size_t)index * width;
            for (int unit = 0; unit < width; unit++)
                d_augmented[unit] = dd->alpha[pair] * d_knowledge[unit];
            if (end_to_end)
                dd->d_alpha[pair] =
                    dot(state->augmented + (size_t)index * width, d_knowledge, width);
        }
        size_t hidden_floats = (size_t)count * hidden;
        memset(dd->d_augment_act, 0, sizeof(float) * hidden_floats);
        cm_layers_dense_backward(dd->d_augment_act, grad->augment_out_weight,
                                 grad->augment_out_bias, dd->d_augmented, state->augment_act,
                                 own->augment_out_weight, count, hidden, width);
        memset(dd->d_augment_pre, 0, sizeof(float) * hidden_floats);
        cm_layers_gelu_backward(dd->d_augment_pre, dd->d_augment_act, state->augment_pre,
                                count * hidden);
        memset(dd->d_answer, 0, sizeof(float) * key_floats);
        cm_layers_dense_backward(dd->d_answer, grad->augment_in_weight, grad->augment_in_bias,
                                 dd->d_augment_pre, state->answer, own->augment_in_weight, count,
                                 key, hidden);
        memset(dd->d_context, 0, sizeof(float) * key_floats);
        cm_layers_dense_backward(dd->d_context, grad->output_weight, grad->output_bias,
                                 dd->d_answer, state->context, own->output_weight, count, key, key);
        token_attention_backward(dd, teacher);
        question_backward(dd, teacher);
    }
    /* The shared question path:
     * W_q1[:, :d_s] += d_base^T·LN_q(h);  d_LN_q(h) = d_base·W_q1[:, :d_s]. */
    cm_blas_sgemm(true, false, hidden, width, rows, 1.0f, dd->d_question_base, hidden,
                  dd->question_norm, width, 1.0f, dd->grad.question_in_weight, width + embed);
    cm_blas_sgemm(false, false, rows, width, hidden, 1.0f, dd->d_question_base, hidden,
                  dd->param.question_in_weight, width + embed, 0.0f, dd->d_question_norm, width);
    cm_layers_layernorm_backward(d_hidden, dd->grad.question_gamma, dd->grad.question_beta,
                                 dd->d_question_norm, student_hidden, dd->param.question_gamma,
                                 dd->question_mean, dd->question_rstd, rows, width);
    if (!end_to_end || !knowledge_flows) return;
    /* Softmax over the present teachers:
     * d_score_i = alpha_i·(d_alpha_i - Σ_j alpha_j·d_alpha_j). */
    for (int row = 0; row < rows; row++) {
        const float *alpha = dd->alpha + (size_t)row * teachers;
        const float *d_alpha = dd->d_alpha + (size_t)row * teachers;
        float *d_score = dd->d_score + (size_t)row * teachers;
        float expected = dot(alpha, d_alpha, teachers); /* absent: alpha = d_alpha = 0 */
        for (int teacher = 0; teacher < teachers; teacher++)
            d_score[teacher] += alpha[teacher] * (d_alpha[teacher] - expected);
    }
}

/*
 * λ_ans·CE(head(ReLU(k)), y) (regression: λ_ans·MSE(head(ReLU(k)), y)) over the labelled rows
 * with a teacher, head_weight [C][d_s], head_bias [C].  Fills d_knowledge [rows][d_s] and adds
 * into the head's gradients; sets loss->answer and (classification) answer_accuracy; returns
 * whether any gradient flows into the module.
 */
static int answer_term(trainer_dd_t *dd, const trainer_dd_batch_t *batch, const float *head_weight,
                       const float *head_bias, float *d_head_weight, float *d_head_bias,
                       trainer_dd_loss_t *loss) {
    const trainer_dd_config_t *config = &dd->config;
    int rows = batch->rows, classes = config->classes, width = config->student_hidden;
    int regression = config->task == TRAINER_TASK_REGRESSION;
    size_t knowledge_floats = (size_t)rows * width;
    cm_layers_relu_forward(dd->knowledge_act, dd->knowledge, (int)knowledge_floats);
    cm_layers_dense_forward(dd->answer_logits, dd->knowledge_act, head_weight, head_bias, rows,
                            width, classes);
    int answer_rows = 0;
    memset(dd->d_answer_logits, 0, sizeof(float) * (size_t)rows * classes);
    if (regression) {
        for (int row = 0; row < rows; row++)
            dd->answer_rows[row] = dd->row_teachers[row] > 0 && batch->labelled[row];
        loss->answer = trainer_method_regression_term(
            dd->answer_logits, batch->targets, dd->answer_rows, rows, classes,
            config->answer_weight, dd->d_answer_logits, &answer_rows);
        if (answer_rows == 0 || config->answer_weight == 0.0f) return 0;
    } else {
        for (int row = 0; row < rows; row++)
            dd->answer_labels[row] = dd->row_teachers[row] > 0 ? batch->labels[row] : -1;
        double ce_sum = cm_loss_cross_entropy_forward(
            dd->answer_probs, dd->answer_logits, dd->answer_labels, rows, classes, &answer_rows);
        if (answer_rows == 0) return 0;
        int correct = 0;
        for (int row = 0; row < rows; row++) {
            if (dd->answer_labels[row] < 0) continue;
            const float *logits = dd->answer_logits + (size_t)row * classes;
            int best = 0;
            for (int c = 1; c < classes; c++)
                if (logits[c] > logits[best]) best = c;
            correct += best == dd->answer_labels[row];
        }
        loss->answer_accuracy = (double)correct / answer_rows;
        if (config->answer_weight == 0.0f) return 0;

        loss->answer = config->answer_weight * ce_sum / answer_rows;
        cm_loss_cross_entropy_backward(dd->d_answer_logits, dd->answer_probs, dd->answer_labels,
                                       rows, classes, config->answer_weight / (float)answer_rows);
    }
    memset(dd->d_knowledge_act, 0, sizeof(float) * knowledge_floats);
    cm_layers_dense_backward(dd->d_knowledge_act, d_head_weight, d_head_bias, dd->d_answer_logits,
                             dd->knowledge_act, head_weight, rows, width, classes);
    memset(dd->d_knowledge, 0, sizeof(float) * knowledge_floats);
    cm_layers_relu_backward(dd->d_knowledge, dd->d_knowledge_act, dd->knowledge,
                            (int)knowledge_floats);
    return 1;
}

/* λ_al·‖LN(h) - LN(sg(k))‖² / d_s (plain layer norms), a mean over the rows with a teacher;
 * adds its gradient into d_hidden [rows][d_s] and returns the term. */
static double align_term(trainer_dd_t *dd, const float *student_hidden, int rows,
                         int rows_with_teacher, float *d_hidden) {
    int width = dd->config.student_hidden;
    cm_layers_layernorm_forward(dd->align_hidden, dd->align_mean, dd->align_rstd, student_hidden,
                                dd->unit_gamma, dd->zero_beta, rows, width);
    cm_layers_layernorm_forward(dd->align_knowledge, dd->align_knowledge_mean,
                                dd->align_knowledge_rstd, dd->knowledge, dd->unit_gamma,
                                dd->zero_beta, rows, width);
    float scale = dd->config.align_weight / ((float)width * (float)rows_with_teacher);
    double sum = 0.0;
    for (int row = 0; row < rows; row++) {
        size_t offset = (size_t)row * width;
        float *d_row = dd->d_align_hidden + offset;
        if (dd->row_teachers[row] == 0) {
            memset(d_row, 0, sizeof(float) * (size_t)width);
            continue;
        }
        sum += cm_loss_mse_forward(dd->align_hidden + offset, dd->align_knowledge + offset, width);
        memset(d_row, 0, sizeof(float) * (size_t)width);
        cm_loss_mse_backward(d_row, dd->align_hidden + offset, dd->align_knowledge + offset, width,
                             scale);
    }
    cm_layers_layernorm_backward(d_hidden, NULL, NULL, dd->d_align_hidden, student_hidden,
                                 dd->unit_gamma, dd->align_mean, dd->align_rstd, rows, width);
    return dd->config.align_weight * sum / ((double)width * rows_with_teacher);
}

/*
 * The interactive terms of every teacher with a head, means over the rows with a teacher:
 * λ_q·‖p_i − H_i‖²/(d_h·Var(H_i)) and λ_a·T²·KL(softmax(z_i/T) ‖ softmax(g_i(p_i)/T)).
 * Var(H_i) is the variance of all the values of H_i over the batch's present rows (a
 * constant).  Reads the pairs' softmax(z_i/T) that kd_term left.  Leaves each teacher's
 * d_probe for the module backward; adds the terms into *loss.
 */
static void probe_terms(trainer_dd_t *dd, const trainer_dd_batch_t *batch, int rows_with_teacher,
                        trainer_dd_loss_t *loss) {
    const trainer_dd_config_t *config = &dd->config;
    int classes = config->classes;
    float temperature = config->temperature;
    for (int teacher = 0; teacher < config->teacher_count; teacher++) {
        teacher_state_t *state = &dd->teacher[teacher];
        int count = state->present_count, inputs = state->head_inputs;
        if (count == 0 || inputs == 0) continue;
        const float *target = batch->teacher_head_input[teacher];
        double sum = 0.0, sum_squares = 0.0;
        for (int index = 0; index < count; index++) {
            const float *values = target + (size_t)state->present_rows[index] * inputs;
            for (int c = 0; c < inputs; c++) {
                sum += values[c];
                sum_squares += (double)values[c] * values[c];
            }
        }
        double elements = (double)count * inputs, mean = sum / elements;
        double variance = sum_squares / elements - mean * mean;
        if (!(variance > 1e-6)) variance = 1e-6; /* a constant feature: no scale to match */

        /* λ_q: d_p = 2 λ_q (p - H) / (d_h·Var·rows) */
        double match_sum = 0.0;
        float match_scale =
            (float)(2.0 * config->probe_match_weight / (inputs * variance * rows_with_teacher));
        for (int index = 0; index < count; index++) {
            const float *values = target + (size_t)state->present_rows[index] * inputs;
            const float *probe = state->probe + (size_t)index * inputs;
            float *d_probe = state->d_probe + (size_t)index * inputs;
            for (int c = 0; c < inputs; c++) {
                float difference = probe[c] - values[c];
                match_sum += (double)difference * difference;
                d_probe[c] = match_scale * difference;
            }
        }
        loss->probe_match +=
            config->probe_match_weight * match_sum / (inputs * variance * rows_with_teacher);

        /* λ_a, through the frozen head: d_p += d_g·G_i */
        double answer_sum = 0.0;
        float answer_scale = config->probe_answer_weight / (float)rows_with_teacher;
        for (int index = 0; index < count; index++) {
            size_t offset = (size_t)index * classes;
            if (config->task == TRAINER_TASK_REGRESSION) { /* mean_k (g_i(p_i) - z_i)² */
                const float *teacher_logits =
                    batch->teacher_logits[teacher] + (size_t)state->present_rows[index] * classes;
                answer_sum += trainer_method_squared_error(state->probe_logits + offset,
                                                           teacher_logits, classes);
                memset(dd->d_probe_logits + offset, 0, sizeof(float) * (size_t)classes);
                cm_loss_mse_backward(dd->d_probe_logits + offset, state->probe_logits + offset,
                                     teacher_logits, classes, answer_scale / (float)classes);
                continue;
            }
            size_t pair = (size_t)state->present_rows[index] * config->teacher_count + teacher;
            const float *teacher_soft = dd->teacher_soft + pair * classes; /* from kd_term */
            answer_sum +=
                cm_loss_kl_forward(dd->student_soft, state->probe_logits + offset, teacher_soft,
                                   NULL, temperature, 1, classes); /* T²·KL */
            memset(dd->d_probe_logits + offset, 0, sizeof(float) * (size_t)classes);
            cm_loss_kl_backward(dd->d_probe_logits + offset, dd->student_soft, teacher_soft, NULL,
                                temperature, 1, classes, answer_scale);
        }
        cm_layers_dense_backward(state->d_probe, NULL, NULL, dd->d_probe_logits, state->probe,
                                 config->head_weight[teacher], count, inputs, classes);
        loss->probe_answer += config->probe_answer_weight * answer_sum / rows_with_teacher;
    }
}

/* ---------------------------------------------------------------- the step */

void trainer_dd_loss(trainer_dd_t *dd, const trainer_dd_batch_t *batch, const float *student_logits,
                     const float *student_hidden, const float *head_weight, const float *head_bias,
                     float *d_logits, float *d_hidden, float *d_head_weight, float *d_head_bias,
                     trainer_dd_loss_t *loss) {
    assert(dd && batch && student_logits && student_hidden && head_weight && head_bias);
    assert(d_logits && d_hidden && d_head_weight && d_head_bias && loss);
    const trainer_dd_config_t *config = &dd->config;
    int rows = batch->rows, classes = config->classes, teachers = config->teacher_count;
    assert(rows >= 0 && rows <= config->max_batch);
    int regression = config->task == TRAINER_TASK_REGRESSION;
    if (regression)
        assert((batch->targets && batch->labelled) || rows == 0);
    else
        assert(batch->labels || rows == 0);
    for (int row = 0; !regression && row < rows; row++) assert(batch->labels[row] < classes);
    for (int teacher = 0; teacher < teachers; teacher++)
        assert(batch->teacher_logits[teacher] && batch->teacher_feature[teacher] &&
               batch->teacher_present[teacher] &&
               (!dd->teacher[teacher].head_inputs || batch->teacher_head_input[teacher]));

    memset(loss, 0, sizeof *loss);
    memset(d_logits, 0, sizeof(float) * (size_t)rows * classes);
    memset(d_hidden, 0, sizeof(float) * (size_t)rows * config->student_hidden);
    if (rows == 0) return;

    if (regression) {
        loss->ce = trainer_method_regression_term(student_logits, batch->targets, batch->labelled,
                                                  rows, classes, 1.0f - config->kd_weight, d_logits,
                                                  &loss->labelled);
    } else {
        double ce_sum = cm_loss_cross_entropy_forward(
            dd->label_probs, student_logits, batch->labels, rows, classes, &loss->labelled);
        if (loss->labelled > 0) {
            loss->ce = (1.0 - config->kd_weight) * ce_sum / loss->labelled;
            cm_loss_cross_entropy_backward(d_logits, dd->label_probs, batch->labels, rows, classes,
                                           (1.0f - config->kd_weight) / (float)loss->labelled);
        }
    }
    int rows_with_teacher = index_present_pairs(dd, batch);
    if (rows_with_teacher == 0) {
        loss->total = loss->ce;
        return;
    }

    route_forward(dd, student_hidden, rows, batch->teacher_present);
    memset(dd->d_score, 0, sizeof(float) * (size_t)rows * teachers);
    loss->kd = kd_term(dd, batch, student_logits, rows_with_teacher, d_logits);
    int router_learns = 0;
    if (config->router != TRAINER_DD_ROUTER_END_TO_END && config->router_weight > 0.0f) {
        loss->router = router_term(dd, batch);
        router_learns = 1;
    }
    int answers = config->answer_weight > 0.0f || config->align_weight > 0.0f;
    if (answers || config->interactive) {
        module_forward(dd, batch, student_hidden, answers);
        int knowledge_flows = answers && answer_term(dd, batch, head_weight, head_bias,
                                                     d_head_weight, d_head_bias, loss);
        if (config->interactive) probe_terms(dd, batch, rows_with_teacher, loss);
        if (knowledge_flows || config->interactive)
            module_backward(dd, student_hidden, rows, d_hidden, knowledge_flows);
        router_learns |= knowledge_flows && config->router == TRAINER_DD_ROUTER_END_TO_END;
        if (config->align_weight > 0.0f)
            loss->align = align_term(dd, student_hidden, rows, rows_with_teacher, d_hidden);
    }
    if (router_learns) route_backward(dd, student_hidden, rows, d_hidden);
    loss->total = loss->ce + loss->kd + loss->answer + loss->router + loss->align +
                  loss->probe_match + loss->probe_answer;
}

/* ---------------------------------------------------------------- own parameters */

/* The pointers stay valid until trainer_dd_free; every section holds param_count floats. */
size_t trainer_dd_param_count(const trainer_dd_t *dd) { return dd->param_count; }

float *trainer_dd_params(trainer_dd_t *dd) { return dd->block; }

float *trainer_dd_grads(trainer_dd_t *dd) { return dd->block + dd->section_floats; }

float *trainer_dd_moment1(trainer_dd_t *dd) { return dd->block + 2 * dd->section_floats; }

float *trainer_dd_moment2(trainer_dd_t *dd) { return dd->block + 3 * dd->section_floats; }

void trainer_dd_zero_grads(trainer_dd_t *dd) {
    memset(trainer_dd_grads(dd), 0, sizeof(float) * dd->param_count);
}

/* The decayed prefix (the projection matrices) with weight decay, the rest without. */
void trainer_dd_adamw_step(trainer_dd_t *dd, const cm_adamw_config_t *config, long step) {
    float *params = trainer_dd_params(dd), *grads = trainer_dd_grads(dd);
    float *moment1 = trainer_dd_moment1(dd), *moment2 = trainer_dd_moment2(dd);
    size_t decayed = dd->decayed_count, rest = dd->param_count - decayed;
    cm_adamw_update(params, grads, moment1, moment2, decayed, config, step, 1);
    cm_adamw_update(params + decayed, grads + decayed, moment1 + decayed, moment2 + decayed, rest,
                    config, step, 0);
}

/* ---------------------------------------------------------------- the method interface */

static const char *const dd_term_names[2][7] = {
    {"ce", "kd", "dd_answer", "dd_router", "dd_align", "dd_probe_match", "dd_probe_answer"},
    {"mse", "kd", "dd_answer", "dd_router", "dd_align", "dd_probe_match", "dd_probe_answer"},
};

static int feature_is_tokens(const trainer_dd_config_t *config, int teacher) {
    return config->feature_output[teacher] == TRAINER_OUTPUT_TOKENS;
}

static unsigned dd_needs(const void *self, int teacher) {
    const trainer_dd_t *dd = self;
    assert(teacher >= 0 && teacher < dd->config.teacher_count);
    unsigned needs = 1u << TRAINER_OUTPUT_LOGITS;
    needs |= feature_is_tokens(&dd->config, teacher) ? 1u << TRAINER_OUTPUT_TOKENS
                                                     : 1u << TRAINER_OUTPUT_HIDDEN;
    if (dd->teacher[teacher].head_inputs) needs |= 1u << TRAINER_OUTPUT_HIDDEN;
    return needs;
}

static const char *dd_term_name(const void *self, int term) {
    const trainer_dd_t *dd = self;
    if (term >= 7) return NULL;
    return dd_term_names[dd->config.task == TRAINER_TASK_REGRESSION][term];
}

static void dd_method_loss(void *self, const trainer_batch_t *batch,
                           const trainer_student_t *student, trainer_loss_t *loss) {
    trainer_dd_t *dd = self;
    const trainer_dd_config_t *config = &dd->config;
    trainer_dd_batch_t dd_batch = {.rows = batch->rows,
                                   .labels = batch->labels,
                                   .targets = batch->targets,
                                   .labelled = batch->labelled};
    for (int teacher = 0; teacher < config->teacher_count; teacher++) {
        dd_batch.teacher_logits[teacher] = batch->teacher_logits[teacher];
        dd_batch.teacher_present[teacher] = batch->teacher_present[teacher];
        dd_batch.teacher_feature[teacher] = feature_is_tokens(config, teacher)
                                                ? batch->teacher_tokens[teacher]
                                                : batch->teacher_hidden[teacher];
        dd_batch.teacher_head_input[teacher] = batch->teacher_hidden[teacher];
    }
    trainer_dd_loss_t terms;
    trainer_dd_loss(dd, &dd_batch, student->outputs, student->hidden, student->head_weight,
                    student->head_bias, student->d_outputs, student->d_hidden,
                    student->d_head_weight, student->d_head_bias, &terms);
    *loss = (trainer_loss_t){.total = terms.total,
                             .term = {terms.ce, terms.kd, terms.answer, terms.router, terms.align,
                                      terms.probe_match, terms.probe_answer},
                             .labelled = terms.labelled,
                             .weighted = 1};
    /* The router's mean weights over the rows that had a teacher (alpha is this batch's only
     * when some row had one: the loss routes them and no others). */
    int teachers = config->teacher_count;
    for (int row = 0; row < batch->rows; row++) {
        if (dd->row_teachers[row] == 0) continue; /* index_present_pairs counted them */
        loss->weighted_rows++;
        for (int teacher = 0; teacher < teachers; teacher++)
            loss->teacher_weight[teacher] += dd->alpha[(size_t)row * (size_t)teachers + teacher];
    }
    for (int teacher = 0; loss->weighted_rows && teacher < teachers; teacher++)
        loss->teacher_weight[teacher] /= loss->weighted_rows;
}

/* --dd-filter: the router on the student's hidden vector alone, before any teacher is asked. */
static void dd_choose(void *self, const trainer_student_t *student, int rows, uint64_t seed,
                      uint8_t *const *ask) {
    trainer_dd_t *dd = self;
    const trainer_dd_config_t *config = &dd->config;
    int teachers = config->teacher_count;
    assert(student->hidden && rows >= 0 && rows <= config->max_batch);
    route_forward(dd, student->hidden, rows, NULL);
    cm_rng_t rng;
    cm_rng_seed(&rng, seed);
    for (int row = 0; row < rows; row++) {
        const float *alpha = dd->alpha + (size_t)row * (size_t)teachers;
        int top = 0;
        for (int teacher = 1; teacher < teachers; teacher++)
            if (alpha[teacher] > alpha[top]) top = teacher;
        for (int teacher = 0; teacher < teachers; teacher++) {
            float draw = cm_rng_uniform(&rng);
            ask[teacher][row] =
                (uint8_t)(teacher == top || alpha[teacher] >= config->filter_threshold ||
                          draw < config->filter_explore);
        }
    }
}

static size_t dd_param_count(const void *self) { return trainer_dd_param_count(self); }

static float *dd_section(void *self, int which) {
    trainer_dd_t *dd = self;
    return dd->block + (size_t)which * dd->section_floats;
}

static void dd_zero_grad(void *self) { trainer_dd_zero_grads(self); }

static void dd_update(void *self, const cm_adamw_config_t *config, long step) {
    trainer_dd_adamw_step(self, config, step);
}

static void dd_free(void *self) {
    trainer_dd_t *dd = self;
    trainer_dd_free(&dd);
}

static const trainer_method_ops_t dd_ops = {
    .needs = dd_needs,
    .term_name = dd_term_name,
    .loss = dd_method_loss,
    .choose = NULL,
    .param_count = dd_param_count,
    .section = dd_section,
    .zero_grad = dd_zero_grad,
    .update = dd_update,
    .free = dd_free,
};

static const trainer_method_ops_t dd_filtering_ops = {
    .needs = dd_needs,
    .term_name = dd_term_name,
    .loss = dd_method_loss,
    .choose = dd_choose,
    .param_count = dd_param_count,
    .section = dd_section,
    .zero_grad = dd_zero_grad,
    .update = dd_update,
    .free = dd_free,
};

cm_status_t trainer_dd_method_new(const trainer_dd_config_t *config, uint64_t seed,
                                  trainer_method_t **out) {
    assert(config && out);
    *out = NULL;
    trainer_dd_t *dd = NULL;
    cm_status_t status = trainer_dd_new(config, seed, &dd);
    if (status != CM_OK) return status;
    return trainer_method_wrap(TRAINER_METHOD_DIVERSEDISTILL,
                               config->filter_threshold > 0.0f ? &dd_filtering_ops : &dd_ops, dd,
                               out);
}
