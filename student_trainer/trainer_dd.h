/*
 * trainer_dd: DiverseDistill's Distillation Module (DIVERSEDISTILL.md §2).
 *
 * Trainer-side parameters, used only while training and never saved in the
 * student checkpoint:
 *   E [n][d_e]                 teacher embeddings
 *   router: LN_r(h) (gamma, beta [d_s]), W_r [d_e][d_s]
 *       alpha = softmax_i( <W_r·LN_r(h), e_i> / sqrt(d_e) ) over the teachers present in a row
 *   question augmenter (shared): LN_q(h) (gamma, beta [d_s]),
 *       q_i = W_q2·GELU(W_q1·[LN_q(h); e_i] + b_q1) + b_q2    W_q1 [hid][d_s+d_e], W_q2 [d_k][hid]
 *   per teacher i, with F_i [L_i][d_i] its streamed feature ("tokens" or "hidden", L_i = 1):
 *       K_i = LN_i(F_i)·W_K^i^T + P_i,  V_i = LN_i(F_i)·W_V^i^T
 *           (W_K, W_V [d_k][d_i], P_i [L_i][d_k])
 *       a_i = W_O^i · MHA(q_i, K_i, V_i) + b_O^i   (heads split d_k; one query per example)
 *       ã_i = W_a2^i·GELU(W_a1^i·a_i + b_a1^i) + b_a2^i    (W_a1 [hid][d_k], W_a2 [d_s][hid])
 *   k = Σ_i alpha_i·ã_i over the teachers present in the row; alpha enters k as sg(alpha)
 *   unless the router is end-to-end, so with a target the router learns from λ_α only.
 *
 * Loss (each term a mean over the rows it exists for; λ's, T, τ, w from the config):
 *   (1-w)·CE(s, y)                                         labelled rows
 * + w·T²·Σ_i sg(alpha_i)·KL(softmax(z_i/T) ‖ softmax(s/T))  rows and teachers present
 * + λ_ans·CE(head(act(k)), y)                              labelled rows; head = the student's
 *                                                          own last layer, act = ReLU
 * + λ_α·KL(r ‖ alpha)                                      router target r per --dd-router:
 *      reliability:  r = softmax_i(-CE(z_i, y)/τ)            labelled rows
 *      learnability: r = softmax_i(-KL(softmax(z_i/T) ‖ softmax(sg(s)/T))/τ)   every row
 *      end-to-end:   no router term
 * + λ_al·‖LN(h) − LN(sg(k))‖² / d_s                        optional alignment (off at 0)
 * Interactive variant (config.interactive; DIVERSEDISTILL.md §2), for every teacher i that
 * lends its frozen head g_i(x) = G_i·x + c_i (a dense layer over its feature H_i [d_h^i],
 * e.g. "hidden"): the question projected into the teacher's feature space,
 *       p_i = W_p^i·q_i + b_p^i                              (W_p [d_h][d_k])
 * + λ_q·‖p_i − H_i‖² / (d_h·Var(H_i))                       rows and teachers present; Var
 *                                                          over the batch's present H_i
 * + λ_a·T²·KL(softmax(z_i/T) ‖ softmax(g_i(p_i)/T))        rows and teachers present
 * Gradients flow through the frozen head and the question into the student; G_i, c_i, H_i
 * and z_i never change.
 * Regression (config.task; the student's k outputs are predictions, y the targets, z_i the
 * teachers' predictions): every CE becomes the MSE of DIVERSEDISTILL.md's regression
 * counterpart and T does not apply:
 *   (1-w)·MSE(s, y);  w·Σ_i sg(alpha_i)·SE(s, z_i);  λ_ans·MSE(head(act(k)), y);
 *   reliability:  r = softmax_i(-SE(z_i, y)/τ);  learnability: r = softmax_i(-SE(sg(s), z_i)/τ);
 *   probe answer: λ_a·SE(g_i(p_i), z_i)
 * with SE(a, b) = mean_k (a_k - b_k)², a row's squared error (the analogue of a row's CE or
 * KL), and each term still a mean over its rows.  So the router's targets stay per-example
 * distributions over the teachers: reliability prefers the teacher nearest the label,
 * learnability the teacher whose prediction the student is nearest to now.
 * answer_accuracy stays 0 (there are no classes to be right about).
 * Absent (row, teacher) pairs are masked out of every sum and alpha is
 * renormalized over the present ones; a row with no teacher present gets
 * only the CE term.
 *
 * The module owns its parameters (one flat block: values, grads, AdamW
 * moments) and its scratch, sized for max_batch rows at creation; a step
 * never allocates.
 */
#ifndef TRAINER_DD_H
#define TRAINER_DD_H

#include "cm_adamw.h"
#include "cm_status.h"
#include "trainer_method.h"

#include <stddef.h>
#include <stdint.h>

typedef enum {
    TRAINER_DD_ROUTER_RELIABILITY,
    TRAINER_DD_ROUTER_LEARNABILITY,
    TRAINER_DD_ROUTER_END_TO_END
} trainer_dd_router_t;

/* "reliability", "learnability", "end-to-end". */
cm_status_t trainer_dd_router_parse(const char *text, trainer_dd_router_t *router);
const char *trainer_dd_router_name(trainer_dd_router_t router);

typedef struct trainer_dd_config {
    trainer_task_t task;                      /* classification (default) or regression */
    int teacher_count;                        /* n, 1 .. TRAINER_MAX_TEACHERS */
    int classes;                              /* C, or k regression targets */
    int student_hidden;                       /* d_s */
    int teacher_tokens[TRAINER_MAX_TEACHERS]; /* L_i (1 for a "hidden" vector) */
    int teacher_dim[TRAINER_MAX_TEACHERS];    /* d_i */
    int embed_dim;                            /* d_e, e.g. 32 */
    int key_dim;                              /* d_k, e.g. 64 */
    int heads;                                /* divides d_k, e.g. 4 */
    int hidden;                               /* augmenter width, e.g. 128 */
    float temperature;                        /* T */
    float kd_weight;                          /* w */
    float answer_weight;                      /* λ_ans */
    float router_weight;                      /* λ_α */
    float router_tau;                         /* τ */
    float align_weight;                       /* λ_al (0: off) */
    trainer_dd_router_t router;
    int max_batch;
    /* Interactive variant (off unless `interactive`). */
    int interactive;
    float probe_match_weight;                       /* λ_q */
    float probe_answer_weight;                      /* λ_a */
    int head_inputs[TRAINER_MAX_TEACHERS];          /* d_h^i; 0: teacher i lends no head */
    const float *head_weight[TRAINER_MAX_TEACHERS]; /* G_i [C][d_h^i], borrowed, frozen */
    const float *head_bias[TRAINER_MAX_TEACHERS];   /* c_i [C], borrowed, frozen */
    /* Read only by the method interface (trainer_dd_method_new). */
    int feature_output[TRAINER_MAX_TEACHERS]; /* F_i is this output: TRAINER_OUTPUT_TOKENS, or
                                                 "hidden" for any other value */
    float filter_threshold; /* --dd-filter θ in [0, 1]; 0: the method chooses no pairs */
    float filter_explore;   /* --dd-explore: share of skipped pairs still asked for */
} trainer_dd_config_t;

/* Defaults of DIVERSEDISTILL.md §2 (T=2, w=0.9, λ_ans=1, λ_α=1, τ=1, d_e=32, d_k=64,
 * 4 heads, hidden 128, learnability router, alignment off; interactive off, λ_q = λ_a = 1);
 * shapes left zero. */
trainer_dd_config_t trainer_dd_defaults(void);

/* One batch as the module sees it; absent (row, teacher) pairs hold garbage. */
typedef struct {
    int rows;
    const int32_t *labels;   /* classification [rows]; negative = unlabelled */
    const float *targets;    /* regression [rows][k] */
    const uint8_t *labelled; /* regression [rows]; 1 = labelled */
    const float *teacher_logits[TRAINER_MAX_TEACHERS];     /* [rows][C] */
    const float *teacher_feature[TRAINER_MAX_TEACHERS];    /* [rows][L_i][d_i] */
    const uint8_t *teacher_present[TRAINER_MAX_TEACHERS];  /* [rows] */
    const float *teacher_head_input[TRAINER_MAX_TEACHERS]; /* [rows][d_h^i] H_i: read only for
                                                              teachers with a head, when
                                                              interactive */
} trainer_dd_batch_t;

typedef struct {
    double total, ce, kd, answer, router, align; /* weighted terms */
    double probe_match, probe_answer;            /* weighted terms (interactive) */
    double answer_accuracy; /* accuracy of head(act(k)) on labelled rows, for monitoring */
    int labelled;
} trainer_dd_loss_t;

typedef struct trainer_dd trainer_dd_t;

cm_status_t trainer_dd_new(const trainer_dd_config_t *config, uint64_t seed, trainer_dd_t **out);
void trainer_dd_free(trainer_dd_t **dd);

/*
 * The router alone: alpha[rows][n] from the student's hidden [rows][d_s], renormalized over
 * the teachers present in each row (present may be NULL: all present).  Needs no teacher
 * output, so the trainer can decide which (example, teacher) pairs to ask for.
 */
void trainer_dd_route(trainer_dd_t *dd, const float *student_hidden, int rows,
                      const uint8_t *const *present, float *alpha);

/*
 * Loss and gradients of one batch.  OVERWRITES d_logits [rows][C] and d_hidden [rows][d_s];
 * ADDS into d_head_weight [C][d_s], d_head_bias [C] (the student's last layer, used by the
 * answer term) and into the module's own gradient block.
 */
void trainer_dd_loss(trainer_dd_t *dd, const trainer_dd_batch_t *batch, const float *student_logits,
                     const float *student_hidden, const float *head_weight, const float *head_bias,
                     float *d_logits, float *d_hidden, float *d_head_weight, float *d_head_bias,
                     trainer_dd_loss_t *loss);

/*
 * The module as a trainer_method_t (trainer_method.h), usually reached through
 * trainer_method_new with kind TRAINER_METHOD_DIVERSEDISTILL.  Needs: each teacher's logits,
 * its feature_output, and its "hidden" when it lends a head.  Terms: "ce" (or "mse"), "kd",
 * "dd_answer", "dd_router", "dd_align", "dd_probe_match", "dd_probe_answer".  The loss reads
 * F_i from the batch's teacher_tokens or teacher_hidden as feature_output says, H_i from
 * teacher_hidden, and the student's head from trainer_student_t.  With filter_threshold > 0
 * it chooses: teacher i is asked for row j if alpha_ji >= θ, or i is j's top teacher, or a
 * draw (seeded per call, one per pair in row-major order) falls below filter_explore.
 */
cm_status_t trainer_dd_method_new(const trainer_dd_config_t *config, uint64_t seed,
                                  trainer_method_t **out);

size_t trainer_dd_param_count(const trainer_dd_t *dd);
float *trainer_dd_params(trainer_dd_t *dd);
float *trainer_dd_grads(trainer_dd_t *dd);
float *trainer_dd_moment1(trainer_dd_t *dd);
float *trainer_dd_moment2(trainer_dd_t *dd);
void trainer_dd_zero_grads(trainer_dd_t *dd);
void trainer_dd_adamw_step(trainer_dd_t *dd, const cm_adamw_config_t *config, long step);

#endif
