/*
 * trainer_method: the one interface every distillation method of student-trainer
 * implements (DIVERSEDISTILL.md §3, DESIGN.md §6), and the §3 baselines behind it.
 *
 * A method says which outputs of which teachers it needs (trainer_method_needs), turns one
 * batch and the student's outputs into a loss made of named terms and the gradients of the
 * student's outputs and hidden vector (trainer_method_loss), owns its parameters (one flat
 * block of values, gradients and AdamW moments that the trainer saves in its resumable
 * state, never in the student checkpoint) with zero_grad and update, and may choose, before
 * any teacher is asked, which (row, teacher) pairs are worth asking for
 * (trainer_method_choose; only diversedistill with --dd-filter does).  The training loop
 * calls these and nothing else, so it never branches on the method:
 *
 *   next_batch; forward; trainer_method_zero_grad; trainer_method_loss; backward;
 *   student update; trainer_method_update
 *
 * Each method works for both tasks.  With classification the student's outputs are C
 * logits and a row's label an int (negative: unlabelled); with regression they are k
 * predictions and a row's label k float targets plus a labelled flag.  Terms, each a mean
 * over the rows it exists for (a teacher may be missing from some rows: policy `skip`, or
 * filtering), and each entering the total already weighted:
 *
 *   term    classification                         regression
 *   ce/mse  (1-w)·CE(s, y), labelled rows          (1-w)·MSE(s, y), labelled rows
 *   kd      w·T²·KL(target ‖ softmax(s/T))         w·MSE(s, target); T does not apply
 *   fitnet  λ_fit·MSE(P·h_s + b, h_t)              the same (a hidden-vector regression)
 *
 * MSE is always a mean over the elements of the rows it covers (rows·k, rows·width).  The
 * target per method (w = 0 and no kd term for ce):
 *   kd, fitnet  one teacher (--kd-teacher): softmax(z_t/T) | its prediction z_t
 *   avg-kd      the mean over the present teachers of softmax(z_i/T) | of z_i
 *   ca-mkd      the mixture with per-row weights softmax_i(-ℓ(z_i, y)) over the present
 *               teachers, ℓ = CE(z_i, y) | the squared error mean_k (z_i - y)²; uniform on
 *               unlabelled rows.  The weights sum to 1 on every row that has a teacher.
 * diversedistill's terms are in trainer_dd.h (its method is built here too, from a
 * trainer_dd_config_t, and runs through this same interface).
 *
 * Every method owns its scratch, sized at creation for max_batch rows, so a step never
 * allocates.
 */
#ifndef TRAINER_METHOD_H
#define TRAINER_METHOD_H

#include "cm_adamw.h"
#include "cm_status.h"
#include "trainer_cache.h"

#include <stddef.h>
#include <stdint.h>

enum { TRAINER_MAX_TEACHERS = 8, TRAINER_MAX_TERMS = 8 };

typedef enum { TRAINER_TASK_CLASSIFICATION, TRAINER_TASK_REGRESSION } trainer_task_t;

typedef enum {
    TRAINER_METHOD_CE,
    TRAINER_METHOD_KD,
    TRAINER_METHOD_AVG_KD,
    TRAINER_METHOD_CA_MKD,
    TRAINER_METHOD_FITNET,
    TRAINER_METHOD_DIVERSEDISTILL,
    TRAINER_METHOD_COUNT
} trainer_method_kind_t;

/* "ce", "kd", ... "diversedistill"; NULL for an unknown kind. */
const char *trainer_method_name(trainer_method_kind_t kind);
/* Parses a method name; CM_ERR_INVALID_ARG listing the valid names otherwise. */
cm_status_t trainer_method_parse(const char *text, trainer_method_kind_t *kind);

struct trainer_dd_config; /* trainer_dd.h */

typedef struct {
    trainer_method_kind_t kind;
    trainer_task_t task;
    int outputs;         /* the student's output width: C classes or k regression targets */
    float temperature;   /* T > 0 (classification only) */
    float kd_weight;     /* w in [0, 1] */
    int kd_teacher;      /* teacher index for kd and fitnet's kd term */
    int fitnet_teacher;  /* teacher index whose "hidden" fitnet regresses onto */
    float fitnet_weight; /* λ_fit >= 0 */
    int teacher_count;   /* 0 .. TRAINER_MAX_TEACHERS */
    int student_hidden;  /* width of the student's hidden vector (0: none) */
    int teacher_hidden[TRAINER_MAX_TEACHERS]; /* width of each teacher's "hidden" (0: not used) */
    int max_batch;
    /* diversedistill only, borrowed for the call of trainer_method_new: the module's own
     * settings; task, outputs, temperature, kd_weight, teacher_count, student_hidden and
     * max_batch above override the copies in it. */
    const struct trainer_dd_config *dd;
} trainer_method_config_t;

/*
 * One batch as a method sees it.  The label side follows the task: `labels` for
 * classification, `targets` and `labelled` for regression (the other side may be NULL).
 * Teacher rows that are not present hold garbage and are never read.  A teacher's
 * "logits" are its outputs: logits for classification, predictions for regression.
 */
typedef struct {
    int rows;
    const int32_t *labels;   /* classification: [rows]; negative = unlabelled */
    const float *targets;    /* regression: [rows][outputs] */
    const uint8_t *labelled; /* regression: [rows]; 1 = the row's targets are a label */
    const float *teacher_logits[TRAINER_MAX_TEACHERS];    /* [rows][outputs] */
    const uint8_t *teacher_present[TRAINER_MAX_TEACHERS]; /* [rows]: 1 = outputs present */
    const float *teacher_hidden[TRAINER_MAX_TEACHERS];    /* [rows][hidden width] or NULL */
    const float *teacher_tokens[TRAINER_MAX_TEACHERS];    /* [rows][L][d] or NULL */
} trainer_batch_t;

/*
 * The student of one step as a method sees it.  The method OVERWRITES d_outputs and
 * d_hidden (when the student has a hidden vector) and ADDS into d_head_weight and
 * d_head_bias (only diversedistill reads the head: its answer runs through it).  The head
 * is the dense layer that maps "hidden" to the outputs (cm_model_head).
 */
typedef struct {
    const float *outputs;     /* [rows][outputs] logits or predictions */
    const float *hidden;      /* [rows][student_hidden] the "hidden" feature, or NULL */
    const float *head_weight; /* [outputs][student_hidden], or NULL */
    const float *head_bias;   /* [outputs], or NULL */
    float *d_outputs;         /* [rows][outputs] */
    float *d_hidden;          /* [rows][student_hidden], or NULL without a hidden vector */
    float *d_head_weight;     /* [outputs][student_hidden], or NULL */
    float *d_head_bias;       /* [outputs], or NULL */
} trainer_student_t;

/* Loss of one step: term[i] is named trainer_method_term_name(method, i); each is already
 * weighted as it enters total.  labelled = rows with a label. */
typedef struct {
    double total;
    double term[TRAINER_MAX_TERMS];
    int labelled;
    /* Methods that weigh teachers per row (diversedistill's router): weighted = 1 and
     * teacher_weight[i] the mean weight of teacher i over the rows that had a teacher
     * (weighted_rows of them); 0 otherwise. */
    int weighted, weighted_rows;
    double teacher_weight[TRAINER_MAX_TEACHERS];
} trainer_loss_t;

typedef struct trainer_method trainer_method_t;

/* Builds a method; checks the config (teacher indices, widths, weights) with one sentence. */
cm_status_t trainer_method_new(const trainer_method_config_t *config, uint64_t seed,
                               trainer_method_t **out);
void trainer_method_free(trainer_method_t **method);

trainer_method_kind_t trainer_method_kind(const trainer_method_t *method);

/* The outputs the method needs of `teacher` (in [0, teacher_count)): a bit set of
 * 1u << TRAINER_OUTPUT_LOGITS / _HIDDEN / _TOKENS (trainer_cache.h); 0 = not asked at all. */
unsigned trainer_method_needs(const trainer_method_t *method, int teacher);

/* The number of loss terms and the name of each ("ce" or "mse", "kd", "fitnet", "dd_...");
 * names are static strings, NULL past the end. */
int trainer_method_term_count(const trainer_method_t *method);
const char *trainer_method_term_name(const trainer_method_t *method, int term);
/* The term called `name` in *loss, 0 if the method has none of that name. */
double trainer_method_term(const trainer_method_t *method, const trainer_loss_t *loss,
                           const char *name);

/* The loss of one batch and its gradients, as trainer_student_t says; ADDS the gradient of
 * the method's own parameters into its gradient block. */
void trainer_method_loss(trainer_method_t *method, const trainer_batch_t *batch,
                         const trainer_student_t *student, trainer_loss_t *loss);

/*
 * Whether the method chooses which (row, teacher) pairs to ask for, and the choice:
 * ask[teacher][rows] = 1 for the pairs worth a teacher's forward pass, from the student's
 * outputs and hidden vector of the rows (its forward pass on the batch) alone; `seed` makes
 * any random exploration reproducible.  Methods that do not choose leave ask untouched.
 */
int trainer_method_chooses(const trainer_method_t *method);
void trainer_method_choose(trainer_method_t *method, const trainer_student_t *student, int rows,
                           uint64_t seed, uint8_t *const *ask);

/* The method's own parameters: count (may be 0), values, gradients, moments (NULL when
 * the count is 0; otherwise valid until trainer_method_free). */
size_t trainer_method_param_count(const trainer_method_t *method);
float *trainer_method_params(trainer_method_t *method);
float *trainer_method_grads(trainer_method_t *method);
float *trainer_method_moment1(trainer_method_t *method);
float *trainer_method_moment2(trainer_method_t *method);

/* Zeroes the gradient block, and takes one AdamW step over the parameters. */
void trainer_method_zero_grad(trainer_method_t *method);
void trainer_method_update(trainer_method_t *method, const cm_adamw_config_t *config, long step);

/* Pieces the methods share (trainer_dd.c uses them too). */

/*
 * weight·MSE(predictions, targets) over the rows where rows_in[row] is 1, a mean over their
 * rows·outputs elements: ADDS its gradient weight/(used·outputs)·2(p - t) into
 * d_predictions [rows][outputs] and returns the term (0 without such rows).  *rows_used (may
 * be NULL) gets the number of rows.
 */
double trainer_method_regression_term(const float *predictions, const float *targets,
                                      const uint8_t *rows_in, int rows, int outputs, float weight,
                                      float *d_predictions, int *rows_used);

/* mean_k (prediction[k] - target[k])², the squared error of one row, in double. */
double trainer_method_squared_error(const float *prediction, const float *target, int outputs);

/*
 * How a method implements the interface; trainer_method.c holds the baselines' table,
 * trainer_dd.c diversedistill's.  `self` is the implementation's own object.  choose may be
 * NULL; param_count 0 makes section, zero_grad and update unused.
 */
typedef struct {
    unsigned (*needs)(const void *self, int teacher);
    const char *(*term_name)(const void *self, int term); /* NULL past the last term */
    void (*loss)(void *self, const trainer_batch_t *batch, const trainer_student_t *student,
                 trainer_loss_t *loss);
    void (*choose)(void *self, const trainer_student_t *student, int rows, uint64_t seed,
                   uint8_t *const *ask);
    size_t (*param_count)(const void *self);
    float *(*section)(void *self, int section); /* 0 values, 1 grads, 2 moment1, 3 moment2 */
    void (*zero_grad)(void *self);
    void (*update)(void *self, const cm_adamw_config_t *config, long step);
    void (*free)(void *self);
} trainer_method_ops_t;

/* Wraps an implementation; takes `self` (freed with ops->free, also on failure). */
cm_status_t trainer_method_wrap(trainer_method_kind_t kind, const trainer_method_ops_t *ops,
                                void *self, trainer_method_t **out);

#endif
