/*
 * trainer_method: the distillation methods of student-trainer
 * (DIVERSEDISTILL.md §3) as one loss-and-gradient step.
 *
 *   ce      (1)             cross-entropy on the labelled rows only
 *   kd      (Hinton)        (1-w)·CE + w·T²·KL(softmax(z_t/T) ‖ softmax(s/T)), one teacher
 *   avg-kd                  the same with the mean of all present teachers' softened outputs
 *   ca-mkd                  per row, teacher weights softmax_i(-CE(z_i, y)) (uniform over the
 *                           present teachers on unlabelled rows); target = weighted mixture
 *   fitnet                  kd plus λ_fit·MSE(P·h_s + b, h_t): a learned linear projection of
 *                           the student's hidden vector regressed onto a teacher's "hidden"
 *
 * Means: CE is averaged over the labelled rows of the batch, KL over the rows
 * that have the target (a teacher may be missing for some rows: policy
 * `skip`, or filtering), MSE over the elements of the rows that have it.
 *
 * A method may own parameters (the FitNet projection); they live in one flat
 * block with their gradients and AdamW moments, saved in the trainer's
 * resumable state and never in the student checkpoint.  The method owns its
 * scratch buffers, sized at creation for max_batch rows, so a step never
 * allocates.
 */
#ifndef TRAINER_METHOD_H
#define TRAINER_METHOD_H

#include "cm_adamw.h"
#include "cm_status.h"

#include <stddef.h>
#include <stdint.h>

enum { TRAINER_MAX_TEACHERS = 8 };

typedef enum {
    TRAINER_METHOD_CE,
    TRAINER_METHOD_KD,
    TRAINER_METHOD_AVG_KD,
    TRAINER_METHOD_CA_MKD,
    TRAINER_METHOD_FITNET,
    TRAINER_METHOD_COUNT
} trainer_method_kind_t;

/* "ce", "kd", ... ; NULL for an unknown kind. */
const char *trainer_method_name(trainer_method_kind_t kind);
/* Parses a method name; CM_ERR_INVALID_ARG listing the valid names otherwise. */
cm_status_t trainer_method_parse(const char *text, trainer_method_kind_t *kind);

typedef struct {
    trainer_method_kind_t kind;
    float temperature;   /* T > 0 */
    float kd_weight;     /* w in [0, 1] */
    int kd_teacher;      /* teacher index for kd and fitnet's kd term */
    int fitnet_teacher;  /* teacher index whose "hidden" fitnet regresses onto */
    float fitnet_weight; /* λ_fit >= 0 */
    int teacher_count;   /* 0 .. TRAINER_MAX_TEACHERS */
    int classes;
    int student_hidden;                       /* width of the student's hidden vector */
    int teacher_hidden[TRAINER_MAX_TEACHERS]; /* width of each teacher's "hidden" (0: not used) */
    int max_batch;
} trainer_method_config_t;

/* One batch as the method sees it.  Teacher rows that are not present hold garbage. */
typedef struct {
    int rows;
    const int32_t *labels;                                /* [rows]; negative = unlabelled */
    const float *teacher_logits[TRAINER_MAX_TEACHERS];    /* [rows][classes] */
    const uint8_t *teacher_present[TRAINER_MAX_TEACHERS]; /* [rows]: 1 = outputs present */
    const float *teacher_hidden[TRAINER_MAX_TEACHERS];    /* [rows][teacher_hidden] or NULL */
} trainer_batch_t;

/* Loss terms of one step (each already weighted as it enters the total). */
typedef struct {
    double total;
    double ce;     /* (1-w)·CE, or CE for ce */
    double kd;     /* w·T²·KL */
    double fitnet; /* λ_fit·MSE */
    int labelled;  /* labelled rows in the batch */
} trainer_loss_t;

typedef struct trainer_method trainer_method_t;

/* Builds a method; checks the config (teacher indices, widths, weights). */
cm_status_t trainer_method_new(const trainer_method_config_t *config, uint64_t seed,
                               trainer_method_t **out);
void trainer_method_free(trainer_method_t **method);

/* Which teacher outputs the method needs: logits and/or hidden of `teacher`. */
void trainer_method_needs(const trainer_method_t *method, int teacher, int *logits, int *hidden);

/*
 * The loss of one batch and its gradients: OVERWRITES d_logits [rows][classes] and
 * d_hidden [rows][student_hidden] with dLoss/d(student logits) and dLoss/d(student
 * hidden), and ADDS the gradient of the method's own parameters into its gradient
 * block.  student_logits [rows][classes], student_hidden [rows][student_hidden].
 */
void trainer_method_loss(trainer_method_t *method, const trainer_batch_t *batch,
                         const float *student_logits, const float *student_hidden, float *d_logits,
                         float *d_hidden, trainer_loss_t *loss);

/* The method's own parameters: count (may be 0), values, gradients, moments. */
size_t trainer_method_param_count(const trainer_method_t *method);
float *trainer_method_params(trainer_method_t *method);
float *trainer_method_grads(trainer_method_t *method);
float *trainer_method_moment1(trainer_method_t *method);
float *trainer_method_moment2(trainer_method_t *method);

/* Zeroes the gradient block, and takes one AdamW step over the parameters. */
void trainer_method_zero_grads(trainer_method_t *method);
void trainer_method_adamw_step(trainer_method_t *method, const cm_adamw_config_t *config,
                               long step);

#endif
